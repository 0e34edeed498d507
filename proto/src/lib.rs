//! Wire types of the corral HTTP API (`/v1`), shared by the server, the
//! agent, the CLI and the benchmarks.
//!
//! Architecture invariant: this crate depends on `corral-core` and serde
//! only; it never pulls in the database or the actor system, so the agent
//! and the CLI stay small.

pub mod agent;
pub mod audit;
pub mod boruta;
pub mod error;
pub mod events;
pub mod requests;
pub mod users;
pub mod workers;

use serde::{Deserialize, Serialize};

/// One page of a listing. `next_cursor` is opaque; pass it back as
/// `?cursor=` to get the next page. It is null on the last page.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}
