//! The corral agent: runs on a hardware host (or simulates one), registers
//! the host's workers with the server, keeps its session alive with
//! heartbeats that carry each worker's observed facts, long-polls for
//! commands and executes them through a [`Backend`].
//!
//! Only the agent opens connections. It survives server restarts and
//! network loss: it retries with backoff, keeps its session through blips
//! shorter than the session timeout, and opens a new session (registering
//! its workers again) when the old one is gone.

pub mod backend;
pub mod client;
pub mod config;
#[cfg(feature = "fault-injection")]
pub mod faults;
pub mod host;
pub mod report;
pub mod runtime;
pub mod simulated;
/// TLS of the HTTP clients, shared with the CLI (it lives in `corral-client`).
pub use corral_client::tls;

pub use backend::{Backend, Outcome};
pub use client::{AgentClient, ClientError};
pub use config::{AgentConfig, ConfigError};
pub use host::Host;
pub use runtime::{AgentOptions, run};
pub use simulated::{SimFaults, Simulated, Times};
pub use tls::{ClientTls, TlsError};
