//! The seam through which the live system reports what it times, for
//! metrics, without depending on a metrics library (the api crate's
//! `Metrics` implements [`Observer`]). What the database layer times
//! (`corral_db::OperationObserver`) comes through here too
//! ([`Observer::database_operation`]), so the api crate needs no database
//! type to measure it.
//!
//! Every call is made where an actor already knows the times (its own
//! record, the clock it just read): observing reads no table and sends no
//! message. Implementations must be cheap and must not block (they run
//! inside actors).

use std::time::Duration;

use corral_core::RequestState;
use corral_proto::agent::ActionKind;

/// What the actors report. Every method does nothing by default.
pub trait Observer: Send + Sync {
    /// A request was bound to a worker after waiting `waited` in the queue
    /// (from submission, or from `valid_after` when that is later).
    fn queue_wait(&self, _waited: Duration) {}

    /// A lease started (the agent installed its key) `elapsed` after the
    /// request entered the queue (same start as [`Observer::queue_wait`]).
    fn time_to_lease(&self, _elapsed: Duration) {}

    /// A lease that had started ended after `length`.
    fn lease_length(&self, _length: Duration) {}

    /// A request reached the terminal state `state`.
    fn request_ended(&self, _state: RequestState) {}

    /// One pass of the matcher made `decisions` (at least one) in `elapsed`.
    fn matcher_pass(&self, _elapsed: Duration, _decisions: u64) {}

    /// The matcher started committing a batch of `size` decisions.
    fn matcher_batch(&self, _size: usize) {}

    /// An agent's heartbeat came `lag` later than the heartbeat interval
    /// after its previous one (zero when on time).
    fn heartbeat_lag(&self, _lag: Duration) {}

    /// A command to an agent was not answered within its timeout.
    fn command_timed_out(&self, _kind: ActionKind) {}

    /// A database operation (named as in `corral_db::DatabaseOperation`)
    /// took `elapsed`; `error` is the kind of its failure (`conflict`,
    /// `not_found`, `unavailable`, `unknown_outcome`, `internal`).
    fn database_operation(&self, _operation: &'static str, _elapsed: Duration, _error: Option<&'static str>) {}
}

/// Passes what the database layer times on to an [`Observer`], so that
/// whoever measures the actors measures the database through one seam.
pub(crate) struct DatabaseObserver(pub(crate) std::sync::Arc<dyn Observer>);

impl corral_db::OperationObserver for DatabaseObserver {
    fn observe(&self, op: corral_db::DatabaseOperation, elapsed: Duration, error: Option<&corral_db::DbError>) {
        self.0.database_operation(op.as_str(), elapsed, error.map(error_kind));
    }
}

fn error_kind(error: &corral_db::DbError) -> &'static str {
    use corral_db::DbError;
    match error {
        DbError::Conflict { .. } => "conflict",
        DbError::NotFound { .. } => "not_found",
        DbError::Unavailable { .. } => "unavailable",
        DbError::UnknownOutcome { .. } => "unknown_outcome",
        DbError::Internal { .. } => "internal",
    }
}

/// The observer of a system nobody measures.
#[derive(Debug, Default)]
pub struct Unobserved;

impl Observer for Unobserved {}

/// Time from `start` to `end`, zero when the clock went back.
pub(crate) fn between(start: std::time::SystemTime, end: std::time::SystemTime) -> Duration {
    end.duration_since(start).unwrap_or_default()
}
