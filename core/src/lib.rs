//! The pure core of corral: the vocabulary of the domain (ids, caps, groups,
//! priorities), the request and worker state machines, the matcher, lease
//! arithmetic, the rules applied to facts observed by agents, and what an SSH
//! public key or lab user name may be.
//!
//! Architecture invariant: this crate does no IO, spawns nothing and never
//! reads the clock. Time is always passed in by the caller, so every rule here
//! is tested without sleeping.

pub mod baseline;
pub mod caps;
pub mod facts;
pub mod health;
pub mod ids;
pub mod lease;
pub mod matcher;
pub mod priority;
pub mod records;
pub mod request;
pub mod schema;
pub mod ssh;
pub mod time;
pub mod user;
pub mod worker;

pub use caps::{Caps, Groups};
pub use ids::{FencingToken, RequestId, SessionId, UserId, WorkerId};
pub use priority::Priority;
pub use request::RequestState;
pub use user::Role;
pub use worker::WorkerState;
