//! BMDB-style liveness sessions. A session is alive while its deadline is
//! in the future; deadlines come from the database clock (`now()`), so
//! replicas with skewed clocks agree. Work locks name their session and are
//! deleted with it ([`release_work_locks`]).

use std::time::{Duration, SystemTime};

use corral_core::{SessionId, UserId, WorkerId, WorkerState};

use crate::records::{SessionRecord, WorkerRecord, millis};
use crate::workers::{CLAIM_REFUSAL, ClaimRefusal, WorkerUpsert, claim_refusal, upsert_worker_in};
use crate::{DatabaseOperation, Db, DbError, DbNow};

const SESSION_COLUMNS: &str = "id, component, name, principal, principal_id, deadline, timeout_ms";

/// A session the reaper expired, with the workers it held.
#[derive(Clone, Debug)]
pub struct ExpiredSession {
    pub session: SessionRecord,
    pub workers: Vec<WorkerId>,
    pub reason: String,
}

/// Deletes the work locks of `sessions`, which the caller's transaction
/// has just deleted. It must be a later statement than the deletion: that
/// one cleared `workers.session`, waiting for every statement that was
/// taking a lock for these sessions from a worker row, and this one's
/// snapshot sees what they committed. (`work_locks.session` has no foreign
/// key; see `schema.sql`.)
async fn release_work_locks(
    tx: &tokio_postgres::Transaction<'_>,
    sessions: &[uuid::Uuid],
) -> Result<u64, tokio_postgres::Error> {
    tx.execute(
        "WITH d AS (DELETE FROM work_locks WHERE session = ANY($1) RETURNING worker, process)
         UPDATE workers SET work = NULL FROM d WHERE workers.uuid = d.worker AND workers.work = d.process",
        &[&sessions],
    )
    .await
}

/// Inserts a session row and its `opened` history row, returning the row:
/// `$1` id, `$2` component, `$3` name, `$4` principal, `$5` timeout in
/// milliseconds, `$6` the time (`NULL`: the database clock), `$7` the
/// principal's user id.
fn open_session_sql() -> String {
    format!(
        "WITH s AS (
            INSERT INTO sessions (id, component, name, principal, principal_id, created_at, timeout_ms, deadline)
            VALUES ($1, $2, $3, $4, $7, COALESCE($6, now()), $5::bigint, COALESCE($6, now()) + $5::bigint * interval '1 millisecond')
            RETURNING *),
         h AS (INSERT INTO session_history (session, component, name, at, event, reason)
            SELECT id, component, name, created_at, 'opened', 'opened by ' || principal FROM s)
         SELECT {SESSION_COLUMNS} FROM s"
    )
}

/// An agent's registration: its session and its workers.
#[derive(Clone, Debug)]
pub struct AgentRegistration {
    pub session: SessionId,
    /// The agent's host name.
    pub agent: String,
    /// The agent user registering, by name and id.
    pub principal: String,
    pub principal_id: UserId,
    pub timeout: Duration,
    /// The session's clock ([`DbNow`]).
    pub now: DbNow,
    /// Every worker's `session` is [`AgentRegistration::session`].
    pub workers: Vec<WorkerUpsert>,
    /// The state of a worker seen for the first time.
    pub initial: WorkerState,
    /// When the workers are registered (the server's clock).
    pub at: SystemTime,
}

impl Db {
    /// Opens an agent session and registers its workers in one
    /// transaction: the claim checks ([`Db::agent_claim_refusal`]), the
    /// session row and every worker's upsert commit together, or nothing
    /// does. `Ok(Err(refusal))` when a claim is refused; then nothing
    /// changed. Returns each worker's row and whether it is new.
    pub async fn register_agent(
        &self,
        registration: &AgentRegistration,
    ) -> Result<Result<(SessionRecord, Vec<(WorkerRecord, bool)>), ClaimRefusal>, DbError> {
        let op = DatabaseOperation::OpenSession;
        let r = std::sync::Arc::new(registration.clone());
        self.run(op, move |client| {
            let r = r.clone();
            Box::pin(async move {
                let tx = client.transaction().await?;
                let claimed: Vec<uuid::Uuid> = r.workers.iter().map(|w| w.uuid.0).collect();
                let refusal = tx.query_opt(CLAIM_REFUSAL, &[&r.agent, &r.principal_id.0, &claimed]).await?;
                if let Some(row) = refusal {
                    return Ok(Err(claim_refusal(row)));
                }
                let row = tx
                    .query_one(
                        &open_session_sql(),
                        &[
                            &r.session.0,
                            &"agent",
                            &r.agent,
                            &r.principal,
                            &millis(r.timeout),
                            &r.now,
                            &Some(r.principal_id.0),
                        ],
                    )
                    .await?;
                let session = SessionRecord::from_row(op, &row)?;
                let mut workers = Vec::with_capacity(r.workers.len());
                for worker in &r.workers {
                    if worker.session != r.session {
                        return Err(
                            DbError::internal(op, format!("worker {} names another session", worker.uuid)).into()
                        );
                    }
                    workers.push(upsert_worker_in(&tx, worker, r.initial, r.at).await?);
                }
                tx.commit().await?;
                Ok(Ok((session, workers)))
            })
        })
        .await
    }

    /// Opens a session whose principal has no user id (server replicas,
    /// tools). Agents open theirs with [`Db::open_session_as`].
    pub async fn open_session(
        &self,
        id: SessionId,
        component: &str,
        name: &str,
        principal: &str,
        timeout: Duration,
        now: DbNow,
    ) -> Result<SessionRecord, DbError> {
        self.open_session_as(id, component, name, principal, None, timeout, now).await
    }

    /// Opens a session for the user `principal` (name, and id when it is a
    /// user: the id is what the session is bound to).
    #[allow(clippy::too_many_arguments)]
    pub async fn open_session_as(
        &self,
        id: SessionId,
        component: &str,
        name: &str,
        principal: &str,
        principal_id: Option<UserId>,
        timeout: Duration,
        now: DbNow,
    ) -> Result<SessionRecord, DbError> {
        let op = DatabaseOperation::OpenSession;
        let principal_id = principal_id.map(|p| p.0);
        let (component, name, principal) = (component.to_string(), name.to_string(), principal.to_string());
        let timeout_ms = millis(timeout);
        self.run(op, move |client| {
            let (component, name, principal) = (component.clone(), name.clone(), principal.clone());
            Box::pin(async move {
                let row = client
                    .query_one(
                        &open_session_sql(),
                        &[&id.0, &component, &name, &principal, &timeout_ms, &now, &principal_id],
                    )
                    .await?;
                Ok(SessionRecord::from_row(op, &row)?)
            })
        })
        .await
    }

    /// Pushes the deadline forward and marks the session's workers seen.
    /// `None` when the session is unknown or already past its deadline.
    ///
    /// A worker row that another statement holds right then (its state is
    /// changing) is skipped, and marked seen at the next heartbeat: waiting
    /// for it could deadlock with a batch of state changes that holds one
    /// of the session's workers and waits for another this statement holds
    /// (PostgreSQL breaks such a deadlock only after `deadlock_timeout`, one
    /// second).
    pub async fn heartbeat(&self, id: SessionId, now: DbNow) -> Result<Option<SystemTime>, DbError> {
        let op = DatabaseOperation::Heartbeat;
        self.run(op, move |client| {
            Box::pin(async move {
                let stmt = client
                    .prepare_cached(
                        "WITH s AS (
                            UPDATE sessions SET deadline = COALESCE($2, now()) + timeout_ms * interval '1 millisecond'
                            WHERE id = $1 AND deadline >= COALESCE($2, now())
                            RETURNING id, deadline),
                         w AS (UPDATE workers SET last_seen = COALESCE($2, now())
                            WHERE uuid IN (SELECT uuid FROM workers WHERE session IN (SELECT id FROM s)
                                FOR UPDATE SKIP LOCKED))
                         SELECT deadline FROM s",
                    )
                    .await?;
                let row = client.query_opt(&stmt, &[&id.0, &now]).await?;
                Ok(row.map(|r| r.get::<_, SystemTime>(0)))
            })
        })
        .await
    }

    /// Ends a session on request of its owner. Returns the workers it held.
    pub async fn close_session(&self, id: SessionId, reason: &str, now: DbNow) -> Result<Vec<WorkerId>, DbError> {
        let op = DatabaseOperation::CloseSession;
        let reason = reason.to_string();
        self.run(op, move |client| {
            let reason = reason.clone();
            Box::pin(async move {
                let tx = client.transaction().await?;
                let workers = tx.query("SELECT uuid FROM workers WHERE session = $1", &[&id.0]).await?;
                let deleted = tx
                    .query_opt(
                        "WITH s AS (DELETE FROM sessions WHERE id = $1 RETURNING id, component, name)
                         INSERT INTO session_history (session, component, name, at, event, reason)
                         SELECT id, component, name, COALESCE($3, now()), 'closed', $2 FROM s RETURNING session",
                        &[&id.0, &reason, &now],
                    )
                    .await?;
                release_work_locks(&tx, &[id.0]).await?;
                tx.commit().await?;
                if deleted.is_none() {
                    return Err(DbError::NotFound { op: op.as_str() }.into());
                }
                Ok(workers.iter().map(|r| WorkerId(r.get(0))).collect())
            })
        })
        .await
    }

    /// Deletes every session past its deadline (releasing its work locks)
    /// and records why. Returns them with the workers they held.
    pub async fn expire_sessions(&self, now: DbNow) -> Result<Vec<ExpiredSession>, DbError> {
        self.expire_sessions_of(None, now).await
    }

    /// Like [`Db::expire_sessions`], for one component only (`server` or
    /// `agent`), or all when `None`.
    pub async fn expire_sessions_of(
        &self,
        component: Option<&str>,
        now: DbNow,
    ) -> Result<Vec<ExpiredSession>, DbError> {
        let component = component.map(str::to_string);
        let op = DatabaseOperation::ExpireSessions;
        self.run(op, move |client| {
            let component = component.clone();
            Box::pin(async move {
                let tx = client.transaction().await?;
                let rows = tx
                    .query(
                        &format!(
                            "SELECT {SESSION_COLUMNS}, COALESCE($1, now()) AS now FROM sessions
                             WHERE deadline < COALESCE($1, now()) AND ($2::text IS NULL OR component = $2)
                             FOR UPDATE"
                        ),
                        &[&now, &component],
                    )
                    .await?;
                let mut expired = Vec::with_capacity(rows.len());
                for row in &rows {
                    let session = SessionRecord::from_row(op, row)?;
                    let at: SystemTime = row.get("now");
                    let last = session.deadline.checked_sub(session.timeout).unwrap_or(session.deadline);
                    let reason = format!(
                        "no heartbeat from {} {} since {} (timeout {})",
                        session.component,
                        session.name,
                        corral_core::time::format_rfc3339(last),
                        corral_core::time::format_duration(session.timeout),
                    );
                    let workers = tx.query("SELECT uuid FROM workers WHERE session = $1", &[&session.id.0]).await?;
                    tx.execute(
                        "INSERT INTO session_history (session, component, name, at, event, reason)
                         VALUES ($1, $2, $3, $4, 'expired', $5)",
                        &[&session.id.0, &session.component, &session.name, &at, &reason],
                    )
                    .await?;
                    tx.execute("DELETE FROM sessions WHERE id = $1", &[&session.id.0]).await?;
                    release_work_locks(&tx, &[session.id.0]).await?;
                    expired.push(ExpiredSession {
                        session,
                        workers: workers.iter().map(|r| WorkerId(r.get(0))).collect(),
                        reason,
                    });
                }
                tx.commit().await?;
                Ok(expired)
            })
        })
        .await
    }

    /// Deletes work locks whose session no longer exists and returns the
    /// worker and process of each, recording each in the worker's history
    /// (by `actor`, at `at`). Ending a session releases its locks in the
    /// same transaction, so there should be none; run at start-up and by
    /// the reconciler, this puts the invariant back if something (a
    /// database from before that rule, a hand edit) left some behind. A
    /// lock is read with its session on one snapshot, so one whose session
    /// still exists is never taken.
    pub async fn release_orphan_work_locks(
        &self,
        at: SystemTime,
        actor: &str,
    ) -> Result<Vec<(WorkerId, String)>, DbError> {
        let actor = actor.to_string();
        self.run(DatabaseOperation::ReleaseOrphanLocks, move |client| {
            let actor = actor.clone();
            Box::pin(async move {
                let rows = client
                    .query(
                        "WITH d AS (
                            DELETE FROM work_locks l WHERE NOT EXISTS (SELECT 1 FROM sessions s WHERE s.id = l.session)
                            RETURNING worker, process, session),
                         u AS (UPDATE workers SET work = NULL FROM d WHERE workers.uuid = d.worker AND workers.work = d.process),
                         h AS (
                            INSERT INTO worker_history (worker, at, from_state, to_state, actor, reason)
                            SELECT d.worker, $1::timestamptz, w.state, w.state, $2::text,
                                'released work lock ' || d.process || ' of ended session ' || d.session
                            FROM d JOIN workers w ON w.uuid = d.worker)
                         SELECT worker, process FROM d ORDER BY worker, process",
                        &[&at, &actor],
                    )
                    .await?;
                Ok(rows.iter().map(|r| (WorkerId(r.get(0)), r.get(1))).collect())
            })
        })
        .await
    }

    pub async fn live_sessions(&self) -> Result<Vec<SessionRecord>, DbError> {
        let op = DatabaseOperation::LiveSessions;
        self.run(op, move |client| {
            Box::pin(async move {
                let rows = client.query(&format!("SELECT {SESSION_COLUMNS} FROM sessions"), &[]).await?;
                Ok(rows.iter().map(|r| SessionRecord::from_row(op, r)).collect::<Result<_, _>>()?)
            })
        })
        .await
    }
}

impl Db {
    /// Makes `session` the scheduling leader if no live session leads.
    pub async fn try_lead(&self, session: SessionId, now: DbNow) -> Result<bool, DbError> {
        self.run(DatabaseOperation::Lead, move |client| {
            Box::pin(async move {
                let n = client
                    .execute(
                        "INSERT INTO leader (id, session, since) VALUES (1, $1, COALESCE($2, now()))
                         ON CONFLICT (id) DO NOTHING",
                        &[&session.0, &now],
                    )
                    .await?;
                let row = client.query_one("SELECT session FROM leader WHERE id = 1", &[]).await?;
                let leader: uuid::Uuid = row.get(0);
                let _ = n;
                Ok(leader == session.0)
            })
        })
        .await
    }

    /// Ends the other sessions of `component` named `name` (a replica that
    /// restarted replaces its dead predecessor's session at once).
    pub async fn replace_sessions_named(
        &self,
        component: &str,
        name: &str,
        keep: SessionId,
        reason: &str,
    ) -> Result<u64, DbError> {
        let (component, name, reason) = (component.to_string(), name.to_string(), reason.to_string());
        self.run(DatabaseOperation::CloseSession, move |client| {
            let (component, name, reason) = (component.clone(), name.clone(), reason.clone());
            Box::pin(async move {
                let tx = client.transaction().await?;
                let rows = tx
                    .query(
                        "WITH s AS (DELETE FROM sessions WHERE component = $1 AND name = $2 AND id <> $3
                            RETURNING id, component, name)
                         INSERT INTO session_history (session, component, name, at, event, reason)
                         SELECT id, component, name, now(), 'closed', $4 FROM s RETURNING session",
                        &[&component, &name, &keep.0, &reason],
                    )
                    .await?;
                let ended: Vec<uuid::Uuid> = rows.iter().map(|r| r.get(0)).collect();
                release_work_locks(&tx, &ended).await?;
                tx.commit().await?;
                Ok(ended.len() as u64)
            })
        })
        .await
    }

    /// The name of the replica leading now, if any.
    pub async fn leader_name(&self) -> Result<Option<String>, DbError> {
        self.run(DatabaseOperation::Lead, move |client| {
            Box::pin(async move {
                let row = client
                    .query_opt("SELECT s.name FROM leader l JOIN sessions s ON s.id = l.session WHERE l.id = 1", &[])
                    .await?;
                Ok(row.map(|r| r.get(0)))
            })
        })
        .await
    }

    /// Gives every live agent session at least one full timeout from now,
    /// as if it had just beaten, so that agents which could not be heard
    /// (the server was stopped, or its database was away) get the time to
    /// come back before their workers are failed. A session already due
    /// later keeps its deadline. Returns how many sessions it extended.
    pub async fn grace_sessions(&self, now: DbNow) -> Result<u64, DbError> {
        self.run(DatabaseOperation::GrantSessionGrace, move |client| {
            Box::pin(async move {
                Ok(client
                    .execute(
                        "UPDATE sessions SET deadline = COALESCE($1, now()) + timeout_ms * interval '1 millisecond'
                         WHERE component = 'agent'
                           AND deadline < COALESCE($1, now()) + timeout_ms * interval '1 millisecond'",
                        &[&now],
                    )
                    .await?)
            })
        })
        .await
    }
}
