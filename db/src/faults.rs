//! Database fault injection for tests (the `fault-injection` feature; off
//! in release builds, where none of this is compiled).
//!
//! A test queues faults per [`DatabaseOperation`] on the [`Faults`] handle
//! of a [`crate::Db`] (`db.faults().inject(op, Fault::Serialization)`).
//! Each attempt of that operation in [`crate::Db::run`] (batched calls
//! included: a batch statement is one attempt) takes the next queued fault
//! and suffers it for real, on its own pooled connection, so that the
//! production error paths run unchanged:
//!
//! - [`Fault::Serialization`]: PostgreSQL itself raises SQLSTATE 40001
//!   before the operation's statements run; `Db::run` retries it as it
//!   would any serialization failure.
//! - [`Fault::DropBeforeSend`]: the connection's backend is terminated
//!   before anything of the operation is sent; `Db::run` finds it closed
//!   and takes another.
//! - [`Fault::DropAfterCommit`]: the operation runs and commits, then its
//!   backend is terminated before the caller reads the answer: an
//!   idempotent operation is run again, any other write fails with
//!   [`crate::DbError::UnknownOutcome`].
//! - [`Fault::Latency`]: the operation waits that long before it starts.
//!
//! Faults are consumed in the order queued, one per attempt, so a test
//! knows exactly how many attempts fail; [`Faults::fired`] counts those
//! that did.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use deadpool_postgres::Object;

use crate::{DatabaseOperation, OpError, OpResult};

/// One injected fault (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    Serialization,
    DropBeforeSend,
    DropAfterCommit,
    Latency(Duration),
}

/// The faults waiting to hit each operation, and those that did.
#[derive(Debug, Default)]
pub struct Faults {
    pending: Mutex<HashMap<DatabaseOperation, VecDeque<Fault>>>,
    fired: Mutex<HashMap<DatabaseOperation, u64>>,
}

impl Faults {
    /// The next attempt of `op` suffers `fault`.
    pub fn inject(&self, op: DatabaseOperation, fault: Fault) {
        self.inject_times(op, fault, 1);
    }

    /// The next `times` attempts of `op` suffer `fault`.
    pub fn inject_times(&self, op: DatabaseOperation, fault: Fault, times: usize) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending.entry(op).or_default().extend(std::iter::repeat_n(fault, times));
    }

    /// How many faults hit `op` so far.
    pub fn fired(&self, op: DatabaseOperation) -> u64 {
        self.fired.lock().unwrap_or_else(|e| e.into_inner()).get(&op).copied().unwrap_or(0)
    }

    /// How many faults still wait for `op`.
    pub fn pending(&self, op: DatabaseOperation) -> usize {
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).get(&op).map_or(0, VecDeque::len)
    }

    /// Forgets every fault not fired yet.
    pub fn clear(&self) {
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// The fault for this attempt of `op`, if one is queued.
    pub(crate) fn take(&self, op: DatabaseOperation) -> Option<Fault> {
        let fault = self.pending.lock().unwrap_or_else(|e| e.into_inner()).get_mut(&op)?.pop_front()?;
        *self.fired.lock().unwrap_or_else(|e| e.into_inner()).entry(op).or_default() += 1;
        tracing::info!(op = op.as_str(), ?fault, "injecting a database fault");
        Some(fault)
    }
}

/// Bounds the waits for a terminated connection to show as closed.
const CLOSE_POLLS: usize = 100;
const CLOSE_POLL: Duration = Duration::from_millis(10);

/// What `fault` does before the operation runs on `client`: the error the
/// attempt fails with instead of running, if any.
pub(crate) async fn before(fault: Option<Fault>, client: &mut Object) -> Option<tokio_postgres::Error> {
    match fault? {
        Fault::Latency(delay) => {
            tokio::time::sleep(delay).await;
            None
        }
        Fault::Serialization => client
            .batch_execute(
                "DO $$ BEGIN RAISE EXCEPTION 'injected serialization failure' USING ERRCODE = 'serialization_failure'; END $$",
            )
            .await
            .err(),
        Fault::DropBeforeSend => {
            let _ = terminate(client).await;
            for _ in 0..CLOSE_POLLS {
                if client.is_closed() {
                    break;
                }
                tokio::time::sleep(CLOSE_POLL).await;
            }
            None
        }
        Fault::DropAfterCommit => None,
    }
}

/// What `fault` does after the operation ran on `client` with `outcome`:
/// after a commit, [`Fault::DropAfterCommit`] drops the connection and the
/// caller sees that error instead of the answer.
pub(crate) async fn after<T>(fault: Option<Fault>, client: &mut Object, outcome: OpResult<T>) -> OpResult<T> {
    if fault != Some(Fault::DropAfterCommit) || outcome.is_err() {
        return outcome;
    }
    match terminate(client).await {
        Some(err) => Err(OpError::Pg(err)),
        None => {
            tracing::warn!("the injected connection drop did not take; the answer goes through");
            outcome
        }
    }
}

/// Terminates the connection's backend; answers the error its client then
/// gets.
async fn terminate(client: &mut Object) -> Option<tokio_postgres::Error> {
    if let Err(err) = client.batch_execute("SELECT pg_terminate_backend(pg_backend_pid())").await {
        return Some(err);
    }
    for _ in 0..CLOSE_POLLS {
        if let Err(err) = client.batch_execute("SELECT 1").await {
            return Some(err);
        }
        tokio::time::sleep(CLOSE_POLL).await;
    }
    None
}
