//! All SQL of corral lives in this crate: the schema (`schema.sql` at the
//! repository root for a fresh database, the numbered migrations in
//! `db/migrations/` for an existing one, see [`migrate`]) and every
//! persistence operation. The embedded PostgreSQL cluster is launched by
//! the `corral-embedded-pg` crate, which knows no corral table.
//!
//! Architecture invariant: no other crate writes SQL. Every operation is
//! named by a [`DatabaseOperation`] (for logs and metrics), runs through
//! [`Db::run`], which retries serialization failures (SQLSTATE 40001 and
//! 40P01) in one place, and maps errors into [`DbError`], which callers
//! branch on without looking at message text.
//!
//! Timestamps of requests, workers and leases are passed in by the caller
//! (the server's clock). Session deadlines come from the database clock
//! (`now()`) unless a test clock passes a time explicitly.

mod audit;
mod batch;
mod events;
#[cfg(feature = "fault-injection")]
pub mod faults;
mod fixtures;
pub mod migrate;
mod reconcile;
mod records;
mod requests;
mod sessions;
mod users;
mod workers;

use std::future::Future;
use std::time::{Duration, Instant};

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, QueueMode, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;
use tokio_postgres::error::SqlState;

pub use audit::{AuditIntent, AuditOutcome, AuditRecord};
pub use events::{HistoryRange, HistoryRow, HistorySubject};
pub use fixtures::{ScaleFixture, ScaleFixtureLoaded};
pub use migrate::{MigrationError, SCHEMA};
pub use reconcile::{LeaseRow, ReconcileSnapshot, RequestRow, WorkerRow};
pub use records::*;
pub use requests::{BindOutcome, Idempotency, LiveLease, NewRequestRecord, RequestFilter, StartLease, Submitted};
pub use sessions::{AgentRegistration, ExpiredSession};
pub use users::{hash_token, new_token};
pub use workers::{BackoffRecord, ClaimRefusal, Hold, WorkLockRecord, WorkerTransition, WorkerUpsert};

/// Every operation the server performs on the database.
///
/// # Which operations are re-run after a dropped connection
///
/// [`Db::run`] takes another connection and runs an operation again when
/// its connection was already closed before the operation started (nothing
/// was sent). When the connection drops *after* the statements were sent,
/// the outcome is unknown: the transaction may have committed. Then only
/// the operations that [`DatabaseOperation::is_idempotent`] names are run
/// again: reads, the schema, and writes that leave the same rows and give
/// the same answer when applied twice (a heartbeat's deadline, `last_seen`,
/// taking the lead with `ON CONFLICT DO NOTHING`, deleting orphan locks or
/// a backoff), or that change nothing when re-applied and whose second
/// answer is harmless (closing a session: a second run deletes nothing and
/// answers not found, which a closing caller ignores). Every other write (inserts, guarded state transitions whose
/// second run would be refused or would write a second history row,
/// session and worker registration) fails with [`DbError::UnknownOutcome`]
/// instead; a submission settles it by reading its row back by its
/// per-call token ([`Db::submit_request`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DatabaseOperation {
    ApplySchema,
    Bootstrap,
    CreateUser,
    DeleteUser,
    ListUsers,
    UserByToken,
    OpenSession,
    Heartbeat,
    CloseSession,
    ExpireSessions,
    GrantSessionGrace,
    ReleaseOrphanLocks,
    LiveSessions,
    Lead,
    UpsertWorker,
    WorkerTransition,
    SetWorkerGroups,
    SetWorkerDrain,
    SetWorkerFacts,
    SetWorkerNote,
    SetWorkerHold,
    StartWork,
    EndWork,
    WorkLocks,
    DeleteWorker,
    LoadWorkers,
    TouchWorkers,
    RecordBackoff,
    ClearBackoff,
    InsertRequest,
    GetRequest,
    ListRequests,
    RequestHistory,
    WorkerHistory,
    UpdateRequest,
    RequestTransition,
    LoadLiveRequests,
    BindLeases,
    EndStaleLeases,
    StartLease,
    EndLease,
    Unbind,
    Prolong,
    LoadLiveLeases,
    ReconcileSnapshot,
    RecordRepairs,
    HistoryAfter,
    HistoryHeads,
    AuditBegin,
    AuditEnd,
    AuditPage,
    Ping,
}

impl DatabaseOperation {
    pub fn as_str(self) -> &'static str {
        use DatabaseOperation as O;
        match self {
            O::ApplySchema => "apply_schema",
            O::Bootstrap => "bootstrap",
            O::CreateUser => "create_user",
            O::DeleteUser => "delete_user",
            O::ListUsers => "list_users",
            O::UserByToken => "user_by_token",
            O::OpenSession => "open_session",
            O::Heartbeat => "heartbeat",
            O::CloseSession => "close_session",
            O::ExpireSessions => "expire_sessions",
            O::GrantSessionGrace => "grant_session_grace",
            O::ReleaseOrphanLocks => "release_orphan_locks",
            O::LiveSessions => "live_sessions",
            O::Lead => "lead",
            O::UpsertWorker => "upsert_worker",
            O::WorkerTransition => "worker_transition",
            O::SetWorkerGroups => "set_worker_groups",
            O::SetWorkerDrain => "set_worker_drain",
            O::SetWorkerFacts => "set_worker_facts",
            O::SetWorkerNote => "set_worker_note",
            O::SetWorkerHold => "set_worker_hold",
            O::StartWork => "start_work",
            O::EndWork => "end_work",
            O::WorkLocks => "work_locks",
            O::DeleteWorker => "delete_worker",
            O::LoadWorkers => "load_workers",
            O::TouchWorkers => "touch_workers",
            O::RecordBackoff => "record_backoff",
            O::ClearBackoff => "clear_backoff",
            O::InsertRequest => "insert_request",
            O::GetRequest => "get_request",
            O::ListRequests => "list_requests",
            O::RequestHistory => "request_history",
            O::WorkerHistory => "worker_history",
            O::UpdateRequest => "update_request",
            O::RequestTransition => "request_transition",
            O::LoadLiveRequests => "load_live_requests",
            O::BindLeases => "bind_leases",
            O::EndStaleLeases => "end_stale_leases",
            O::StartLease => "start_lease",
            O::EndLease => "end_lease",
            O::Unbind => "unbind",
            O::Prolong => "prolong",
            O::LoadLiveLeases => "load_live_leases",
            O::ReconcileSnapshot => "reconcile_snapshot",
            O::RecordRepairs => "record_repairs",
            O::HistoryAfter => "history_after",
            O::HistoryHeads => "history_heads",
            O::AuditBegin => "audit_begin",
            O::AuditEnd => "audit_end",
            O::AuditPage => "audit_page",
            O::Ping => "ping",
        }
    }

    /// Whether the operation only reads: its commit cannot add a history
    /// row, so it does not wake the event hub ([`Db::commits`]).
    pub fn is_read_only(self) -> bool {
        use DatabaseOperation as O;
        matches!(
            self,
            O::ListUsers
                | O::UserByToken
                | O::LiveSessions
                | O::LoadWorkers
                | O::WorkLocks
                | O::GetRequest
                | O::ListRequests
                | O::RequestHistory
                | O::WorkerHistory
                | O::LoadLiveRequests
                | O::LoadLiveLeases
                | O::ReconcileSnapshot
                | O::HistoryAfter
                | O::HistoryHeads
                | O::AuditPage
                | O::Ping
        )
    }

    /// Whether running the operation a second time after a first run that
    /// may have committed changes nothing and answers the same (see the
    /// enum's docs).
    pub fn is_idempotent(self) -> bool {
        use DatabaseOperation as O;
        self.is_read_only()
            || matches!(
                self,
                O::ApplySchema
                    | O::Heartbeat
                    | O::GrantSessionGrace
                    | O::Lead
                    | O::TouchWorkers
                    | O::ClearBackoff
                    | O::AuditEnd
                    | O::ReleaseOrphanLocks
                    | O::CloseSession
            )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The database cannot be reached or the pool is exhausted; retry later.
    #[error("database unavailable during {op}: {cause}")]
    Unavailable { op: &'static str, cause: String },
    /// The row was not in the expected state (someone else changed it), or a
    /// uniqueness rule would be broken.
    #[error("conflict during {op}: {what}")]
    Conflict { op: &'static str, what: String },
    /// The connection dropped after a write that is not idempotent was
    /// sent: it may or may not have committed, and it was not run again.
    #[error("outcome unknown of {op}: the database connection dropped after it was sent: {cause}")]
    UnknownOutcome { op: &'static str, cause: String },
    #[error("not found during {op}")]
    NotFound { op: &'static str },
    /// Anything else: a bug or corrupt data.
    #[error("database error during {op}: {cause}")]
    Internal { op: &'static str, cause: String },
}

impl DbError {
    /// Maps a PostgreSQL error. What it says names the SQLSTATE, the
    /// constraint, table and column, never the server's `DETAIL`, `HINT` or
    /// `WHERE` (they quote row contents: `Key (token_hash)=(...) already
    /// exists`, `Failing row contains (...)`); a constraint's message reaches
    /// clients in 409 answers, so it is not quoted either.
    fn from_pg(op: DatabaseOperation, err: &tokio_postgres::Error) -> DbError {
        let op = op.as_str();
        let Some(db) = err.as_db_error() else {
            // Connection and protocol errors carry no row contents.
            return DbError::Unavailable { op, cause: connection_failure(err) };
        };
        let mut names = String::new();
        for (what, name) in [("constraint", db.constraint()), ("table", db.table()), ("column", db.column())] {
            if let Some(name) = name {
                names.push_str(&format!(", {what} {name}"));
            }
        }
        let code = db.code().code();
        let violated = format!("the change conflicts with the stored data (SQLSTATE {code}{names})");
        let detail = format!("{} (SQLSTATE {code}{names})", db.message());
        match db.code() {
            code if *code == SqlState::UNIQUE_VIOLATION || *code == SqlState::EXCLUSION_VIOLATION => {
                DbError::Conflict { op, what: violated }
            }
            code if *code == SqlState::CHECK_VIOLATION || *code == SqlState::FOREIGN_KEY_VIOLATION => {
                DbError::Conflict { op, what: violated }
            }
            code if code.code().starts_with("08")
                || *code == SqlState::ADMIN_SHUTDOWN
                || *code == SqlState::CRASH_SHUTDOWN
                || *code == SqlState::CANNOT_CONNECT_NOW =>
            {
                DbError::Unavailable { op, cause: detail }
            }
            // The connection reached a server that no longer (or not yet)
            // accepts writes: a primary demoted by a failover, or a
            // standby. The write did not happen; writes are possible again
            // once a primary is elected.
            code if *code == SqlState::READ_ONLY_SQL_TRANSACTION => DbError::Unavailable {
                op,
                cause: format!("the database server is read-only (a standby, or a primary failing over): {detail}"),
            },
            _ => DbError::Internal { op, cause: detail },
        }
    }

    pub fn conflict(op: DatabaseOperation, what: impl Into<String>) -> DbError {
        DbError::Conflict { op: op.as_str(), what: what.into() }
    }

    pub fn internal(op: DatabaseOperation, cause: impl Into<String>) -> DbError {
        DbError::Internal { op: op.as_str(), cause: cause.into() }
    }

    pub fn is_unavailable(&self) -> bool {
        matches!(self, DbError::Unavailable { .. })
    }
}

/// What an operation closure returns before error mapping.
pub(crate) enum OpError {
    Pg(tokio_postgres::Error),
    Db(DbError),
}

impl From<tokio_postgres::Error> for OpError {
    fn from(err: tokio_postgres::Error) -> Self {
        OpError::Pg(err)
    }
}

impl From<DbError> for OpError {
    fn from(err: DbError) -> Self {
        OpError::Db(err)
    }
}

pub(crate) type OpResult<T> = Result<T, OpError>;

/// Pool settings. Every timeout is explicit: deadpool waits forever by
/// default.
#[derive(Clone, Debug)]
pub struct PoolSettings {
    pub max_size: usize,
    pub wait_timeout: Duration,
    pub connect_timeout: Duration,
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings { max_size: 32, wait_timeout: Duration::from_secs(5), connect_timeout: Duration::from_secs(5) }
    }
}

/// Observes every operation (the server feeds metrics from it).
pub trait OperationObserver: Send + Sync {
    fn observe(&self, op: DatabaseOperation, elapsed: Duration, error: Option<&DbError>);
}

/// A handle on the database; cheap to clone.
#[derive(Clone)]
pub struct Db {
    pool: Pool,
    observer: Option<std::sync::Arc<dyn OperationObserver>>,
    /// The batch writers of the hot lease statements ([`batch`]); `None`
    /// in the handle they run with, where each call is a batch of one.
    batches: Option<std::sync::Arc<Batches>>,
    /// Faults tests inject ([`faults`]); shared with the batch writers.
    #[cfg(feature = "fault-injection")]
    faults: std::sync::Arc<faults::Faults>,
    /// Notified after a write committed ([`Db::commits`]); shared with the
    /// batch writers.
    commits: std::sync::Arc<tokio::sync::Notify>,
}

/// What [`Db::describe_url`] found in a database URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DatabaseUrl {
    /// `host:port` of each host, in the order tried.
    pub hosts: Vec<String>,
    /// `target_session_attrs=read-write`: only a host that accepts writes
    /// is used.
    pub read_write: bool,
}

/// What [`Db::batch_stats`] reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchStats {
    pub calls: u64,
    pub statements: u64,
}

/// One batch writer per hot statement.
struct Batches {
    insert_request: batch::Batcher<requests::InsertRequest>,
    start_lease: batch::Batcher<StartLease>,
    end_lease: batch::Batcher<requests::EndLease>,
    worker_transition: batch::Batcher<WorkerTransition>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db").field("pool", &self.pool.status()).finish()
    }
}

const MAX_ATTEMPTS: u32 = 5;

impl Db {
    /// Connects a pool to the database named by `url` (a `postgresql://`
    /// URL or a `key=value` connection string) and checks it answers.
    pub async fn connect(url: &str, settings: &PoolSettings) -> Result<Db, DbError> {
        let op = DatabaseOperation::Ping;
        let mut config: tokio_postgres::Config =
            url.parse().map_err(|e| DbError::internal(op, format!("bad database URL: {e}")))?;
        config.connect_timeout(settings.connect_timeout);
        if config.get_application_name().is_none() {
            config.application_name("corral");
        }
        let pool = build_pool(config.clone(), settings.max_size, settings)?;
        let main = Db {
            pool,
            observer: None,
            batches: None,
            #[cfg(feature = "fault-injection")]
            faults: Default::default(),
            commits: Default::default(),
        };
        main.ping().await?;
        // The batch writers' own connections, one each and a spare. Their
        // statements read and write rows by key only, and a plan cached
        // while a table was small (a fresh database) would otherwise keep
        // scanning it whole as it grows: PostgreSQL makes a statement's
        // generic plan once per connection and keeps it until the table is
        // next analyzed. With sequential scans off, every plan they get is
        // index lookups of the batch's keys, whatever the table's size.
        let options = config.get_options().map(|o| format!("{o} ")).unwrap_or_default();
        config.options(format!("{options}-c enable_seqscan=off"));
        let writers = Db {
            pool: build_pool(config, 5, settings)?,
            observer: None,
            batches: None,
            #[cfg(feature = "fault-injection")]
            faults: main.faults.clone(),
            commits: main.commits.clone(),
        };
        let batches = Batches {
            insert_request: batch::Batcher::start(writers.clone()),
            start_lease: batch::Batcher::start(writers.clone()),
            end_lease: batch::Batcher::start(writers.clone()),
            worker_transition: batch::Batcher::start(writers),
        };
        Ok(Db { batches: Some(std::sync::Arc::new(batches)), ..main })
    }

    /// What `url` names, checked without connecting: its hosts
    /// (`host:port`, comma-separated) and whether it asks for the host
    /// that accepts writes (`target_session_attrs=read-write`), which a
    /// URL of several hosts needs so as never to write to a standby.
    pub fn describe_url(url: &str) -> Result<DatabaseUrl, DbError> {
        let config: tokio_postgres::Config =
            url.parse().map_err(|e| DbError::internal(DatabaseOperation::Ping, format!("bad database URL: {e}")))?;
        let ports = config.get_ports();
        let hosts = config
            .get_hosts()
            .iter()
            .enumerate()
            .map(|(i, host)| {
                let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
                match host {
                    tokio_postgres::config::Host::Tcp(name) => format!("{name}:{port}"),
                    tokio_postgres::config::Host::Unix(dir) => format!("{}:{port}", dir.display()),
                }
            })
            .collect();
        let read_write = config.get_target_session_attrs() == tokio_postgres::config::TargetSessionAttrs::ReadWrite;
        Ok(DatabaseUrl { hosts, read_write })
    }

    /// Runs `item` through its batch writer (`writer` picks it), or alone
    /// in the handle the writers themselves run with.
    async fn batched<T: batch::Batched>(
        &self,
        writer: fn(&Batches) -> &batch::Batcher<T>,
        item: T,
    ) -> Result<T::Output, DbError> {
        match &self.batches {
            Some(batches) => writer(batches).call(item).await,
            None => batch::run_one(self, &item).await,
        }
    }

    /// How many calls the batch writers took, and in how many statements.
    pub fn batch_stats(&self) -> BatchStats {
        let mut stats = BatchStats::default();
        if let Some(b) = &self.batches {
            for counts in
                [b.insert_request.counts(), b.start_lease.counts(), b.end_lease.counts(), b.worker_transition.counts()]
            {
                stats.calls += counts.calls.load(std::sync::atomic::Ordering::Relaxed);
                stats.statements += counts.statements.load(std::sync::atomic::Ordering::Relaxed);
            }
        }
        stats
    }

    /// The faults injected into this handle's operations (and its batch
    /// writers').
    #[cfg(feature = "fault-injection")]
    pub fn faults(&self) -> &faults::Faults {
        &self.faults
    }

    pub fn with_observer(mut self, observer: std::sync::Arc<dyn OperationObserver>) -> Db {
        self.observer = Some(observer);
        self
    }

    /// Readiness: one round trip.
    pub async fn ping(&self) -> Result<(), DbError> {
        self.run(DatabaseOperation::Ping, |client| {
            Box::pin(async move {
                client.query_one("SELECT 1", &[]).await?;
                Ok(())
            })
        })
        .await
    }

    /// Runs `f` with a pooled connection, retrying serialization failures
    /// and deadlocks with a growing delay, and maps errors. A connection
    /// found closed before `f` starts is replaced; one that drops while `f`
    /// runs is retried only for an idempotent `op`, and is otherwise
    /// [`DbError::UnknownOutcome`] (see [`DatabaseOperation`]).
    pub(crate) async fn run<T, F>(&self, op: DatabaseOperation, mut f: F) -> Result<T, DbError>
    where
        F: for<'c> FnMut(&'c mut Object) -> std::pin::Pin<Box<dyn Future<Output = OpResult<T>> + Send + 'c>>,
    {
        let started = Instant::now();
        let mut attempt = 0;
        let result = loop {
            attempt += 1;
            let mut client = match self.pool.get().await {
                Ok(client) => client,
                Err(e) => break Err(pool_error(op, e)),
            };
            #[cfg(feature = "fault-injection")]
            let fault = self.faults.take(op);
            #[cfg(feature = "fault-injection")]
            let injected = faults::before(fault, &mut client).await;
            if client.is_closed() && attempt < MAX_ATTEMPTS {
                // A pooled connection that died while idle (its server or
                // the runtime driving it went away): nothing was sent on
                // it, take another one.
                tracing::debug!(op = op.as_str(), attempt, "pooled connection closed; taking another");
                drop(client);
                continue;
            }
            #[cfg(feature = "fault-injection")]
            let outcome = match injected {
                Some(err) => Err(OpError::Pg(err)),
                None => {
                    let outcome = f(&mut client).await;
                    faults::after(fault, &mut client, outcome).await
                }
            };
            #[cfg(not(feature = "fault-injection"))]
            let outcome = f(&mut client).await;
            match outcome {
                Ok(value) => break Ok(value),
                Err(OpError::Db(e)) => break Err(e),
                Err(OpError::Pg(e)) => {
                    if connection_lost(&e) {
                        if !op.is_idempotent() {
                            tracing::warn!(op = op.as_str(), cause = %e, "connection lost with a write in flight; not re-running it");
                            break Err(DbError::UnknownOutcome { op: op.as_str(), cause: format!("{e:#}") });
                        }
                        if attempt < MAX_ATTEMPTS {
                            tracing::debug!(op = op.as_str(), attempt, "connection closed; retrying on another");
                            drop(client);
                            continue;
                        }
                    }
                    if e.code() == Some(&SqlState::READ_ONLY_SQL_TRANSACTION) {
                        // The server this connection reached is read-only
                        // now (a failover demoted it): nothing was written.
                        // Drop the connection from the pool, so that the
                        // next one goes to whichever host accepts writes
                        // (`target_session_attrs=read-write`).
                        tracing::warn!(op = op.as_str(), attempt, "the database server is read-only; reconnecting");
                        drop(Object::take(client));
                        if attempt < MAX_ATTEMPTS {
                            continue;
                        }
                        break Err(DbError::from_pg(op, &e));
                    }
                    let retryable = e.code().is_some_and(|c| {
                        *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED
                    });
                    if retryable && attempt < MAX_ATTEMPTS {
                        tracing::debug!(op = op.as_str(), attempt, "retrying after serialization failure");
                        tokio::time::sleep(Duration::from_millis(5 << attempt)).await;
                        continue;
                    }
                    break Err(DbError::from_pg(op, &e));
                }
            }
        };
        if let Some(observer) = &self.observer {
            observer.observe(op, started.elapsed(), result.as_ref().err());
        }
        if !op.is_read_only() {
            // Also after an error: a write whose outcome is unknown may
            // have committed, and a spurious wake-up costs one read.
            self.commits.notify_one();
        }
        result
    }
}

/// What a connection failure (no SQLSTATE) says, in words an operator can
/// act on: every host of the URL refused writes, or none could be reached.
fn connection_failure(err: &tokio_postgres::Error) -> String {
    let source = std::error::Error::source(err);
    let io = source.and_then(|s| s.downcast_ref::<std::io::Error>());
    // tokio-postgres does not print its cause: add it.
    let err = match source {
        Some(source) => format!("{err}: {source}"),
        None => err.to_string(),
    };
    match io.map(std::io::Error::kind) {
        // What tokio-postgres answers when `target_session_attrs=read-write`
        // found only read-only servers.
        Some(std::io::ErrorKind::PermissionDenied) => format!(
            "no host of the database URL accepts writes: each one reached is a read-only standby (a failover \
             may be under way, or the URL names no primary) ({err})"
        ),
        Some(std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::TimedOut) => {
            format!("no host of the database URL could be reached ({err})")
        }
        _ => err,
    }
}

/// An error taking a pooled connection.
fn pool_error(op: DatabaseOperation, err: deadpool_postgres::PoolError) -> DbError {
    use deadpool_postgres::{PoolError, TimeoutType};
    let cause = match err {
        PoolError::Backend(e) => return DbError::from_pg(op, &e),
        PoolError::Timeout(TimeoutType::Create) => {
            "no host of the database URL answered within the connect timeout".to_string()
        }
        PoolError::Timeout(TimeoutType::Wait) => "every pooled database connection stayed busy".to_string(),
        other => other.to_string(),
    };
    DbError::Unavailable { op: op.as_str(), cause }
}

/// Whether `err` says the connection failed while an operation was under
/// way (closed, reset, or the server ended the session), so that what was
/// sent may or may not have committed.
fn connection_lost(err: &tokio_postgres::Error) -> bool {
    if let Some(code) = err.code() {
        return code.code().starts_with("08") || *code == SqlState::ADMIN_SHUTDOWN || *code == SqlState::CRASH_SHUTDOWN;
    }
    err.is_closed() || std::error::Error::source(err).is_some_and(|s| s.is::<std::io::Error>())
}

fn build_pool(config: tokio_postgres::Config, max_size: usize, settings: &PoolSettings) -> Result<Pool, DbError> {
    let manager = Manager::from_config(config, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
    Pool::builder(manager)
        .max_size(max_size)
        // The most recently returned connection goes out first: a few
        // PostgreSQL backends stay busy and warm instead of every
        // connection the pool ever opened taking turns (measured in
        // bench/results/2026-12-01-pool-and-locks.md).
        .queue_mode(QueueMode::Lifo)
        .wait_timeout(Some(settings.wait_timeout))
        .create_timeout(Some(settings.connect_timeout))
        .recycle_timeout(Some(settings.connect_timeout))
        .runtime(Runtime::Tokio1)
        .build()
        .map_err(|e| DbError::internal(DatabaseOperation::Ping, e.to_string()))
}

/// `columns` (comma-separated) each prefixed with `table.`: a statement
/// that joins other rows returns its table's columns unambiguously.
pub(crate) fn qualified(table: &str, columns: &str) -> String {
    columns.split(',').map(|c| format!("{table}.{}", c.trim())).collect::<Vec<_>>().join(", ")
}

/// `Some(t)` is a test clock; `None` means the database's `now()`.
pub type DbNow = Option<std::time::SystemTime>;
