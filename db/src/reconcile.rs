//! What the reconciler reads and writes: one consistent snapshot of the
//! rows it compares with the live actors, and the history rows of repairs
//! that change no row (an actor restarted from its row). The repairs that
//! change rows use the same statements as the actors (`unbind`,
//! `end_lease`, worker and request transitions), named with the actor
//! `reconciler`.

use std::time::SystemTime;

use corral_core::{FencingToken, RequestId, RequestState, SessionId, WorkerId, WorkerState};

use crate::records::parse;
use crate::{DatabaseOperation, Db, DbError};

/// A worker's row, as far as the reconciler compares it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerRow {
    pub uuid: WorkerId,
    pub state: WorkerState,
    /// The agent session holding it (`None` once that session ended).
    pub session: Option<SessionId>,
    pub fence: FencingToken,
}

/// A request's row, as far as the reconciler compares it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestRow {
    pub id: RequestId,
    pub state: RequestState,
    pub worker: Option<WorkerId>,
    pub deadline: SystemTime,
}

/// A live (not ended) lease row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseRow {
    pub request: RequestId,
    pub worker: WorkerId,
    pub fence: FencingToken,
    pub bound_at: SystemTime,
    pub started: bool,
}

/// The rows of one reconciler pass, read on one snapshot.
#[derive(Clone, Debug, Default)]
pub struct ReconcileSnapshot {
    pub workers: Vec<WorkerRow>,
    /// Live requests, the requests of live leases, and the requests asked
    /// about (whatever their state; one asked about that does not exist is
    /// absent).
    pub requests: Vec<RequestRow>,
    pub leases: Vec<LeaseRow>,
    /// Live agent sessions.
    pub agent_sessions: Vec<SessionId>,
    /// Work locks whose session no longer exists: worker and process.
    pub orphan_locks: Vec<(WorkerId, String)>,
}

impl Db {
    /// Reads what a reconciler pass compares, on one snapshot (one
    /// read-only repeatable-read transaction, one statement per table),
    /// with the states of `requests` (the requests that have an actor)
    /// whatever they are. `None` when the session `leader` does not lead
    /// scheduling: a replica that does not lead must not repair anything.
    pub async fn reconcile_snapshot(
        &self,
        leader: SessionId,
        requests: &[RequestId],
    ) -> Result<Option<ReconcileSnapshot>, DbError> {
        let op = DatabaseOperation::ReconcileSnapshot;
        let asked: Vec<i64> = requests.iter().map(|r| r.0).collect();
        self.run(op, move |client| {
            let asked = asked.clone();
            Box::pin(async move {
                let get = |e: tokio_postgres::Error| DbError::internal(op, e.to_string());
                let tx = client
                    .build_transaction()
                    .read_only(true)
                    .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead);
                let tx = tx.start().await?;
                if tx.query_opt("SELECT 1 FROM leader WHERE id = 1 AND session = $1", &[&leader.0]).await?.is_none() {
                    return Ok(None);
                }
                let mut snapshot = ReconcileSnapshot::default();
                for row in tx.query("SELECT uuid, state, session, fence FROM workers ORDER BY uuid", &[]).await? {
                    snapshot.workers.push(WorkerRow {
                        uuid: WorkerId(row.try_get(0).map_err(get)?),
                        state: parse(op, row.try_get(1).map_err(get)?)?,
                        session: row.try_get::<_, Option<uuid::Uuid>>(2).map_err(get)?.map(SessionId),
                        fence: FencingToken(row.try_get(3).map_err(get)?),
                    });
                }
                let leases = tx
                    .query(
                        "SELECT request, worker, fence, bound_at, started_at IS NOT NULL FROM leases
                         WHERE ended_at IS NULL ORDER BY request",
                        &[],
                    )
                    .await?;
                for row in leases {
                    snapshot.leases.push(LeaseRow {
                        request: RequestId(row.try_get(0).map_err(get)?),
                        worker: WorkerId(row.try_get(1).map_err(get)?),
                        fence: FencingToken(row.try_get(2).map_err(get)?),
                        bound_at: row.try_get(3).map_err(get)?,
                        started: row.try_get(4).map_err(get)?,
                    });
                }
                let requests = tx
                    .query(
                        "SELECT id, state, worker, deadline FROM requests
                         WHERE state IN ('waiting', 'in_progress') OR id = ANY($1)
                            OR id IN (SELECT request FROM leases WHERE ended_at IS NULL)
                         ORDER BY id",
                        &[&asked],
                    )
                    .await?;
                for row in requests {
                    snapshot.requests.push(RequestRow {
                        id: RequestId(row.try_get(0).map_err(get)?),
                        state: parse(op, row.try_get(1).map_err(get)?)?,
                        worker: row.try_get::<_, Option<uuid::Uuid>>(2).map_err(get)?.map(WorkerId),
                        deadline: row.try_get(3).map_err(get)?,
                    });
                }
                for row in tx.query("SELECT id FROM sessions WHERE component = 'agent'", &[]).await? {
                    snapshot.agent_sessions.push(SessionId(row.try_get(0).map_err(get)?));
                }
                let orphans = tx
                    .query(
                        "SELECT worker, process FROM work_locks l
                         WHERE NOT EXISTS (SELECT 1 FROM sessions s WHERE s.id = l.session) ORDER BY worker, process",
                        &[],
                    )
                    .await?;
                for row in orphans {
                    snapshot.orphan_locks.push((WorkerId(row.try_get(0).map_err(get)?), row.try_get(1).map_err(get)?));
                }
                tx.commit().await?;
                Ok(Some(snapshot))
            })
        })
        .await
    }

    /// Records repairs that changed no row of the entity (its actor was
    /// restarted or re-read its row): one history row each, from and to
    /// the state the row is in, by `actor` with the given reason. One
    /// statement for all of them.
    pub async fn record_repairs(
        &self,
        at: SystemTime,
        actor: &str,
        requests: &[(RequestId, String)],
        workers: &[(WorkerId, String)],
    ) -> Result<(), DbError> {
        if requests.is_empty() && workers.is_empty() {
            return Ok(());
        }
        let op = DatabaseOperation::RecordRepairs;
        let actor = actor.to_string();
        let (request_ids, request_reasons): (Vec<i64>, Vec<String>) =
            requests.iter().map(|(id, why)| (id.0, why.clone())).unzip();
        let (worker_ids, worker_reasons): (Vec<uuid::Uuid>, Vec<String>) =
            workers.iter().map(|(id, why)| (id.0, why.clone())).unzip();
        self.run(op, move |client| {
            let actor = actor.clone();
            let (request_ids, request_reasons) = (request_ids.clone(), request_reasons.clone());
            let (worker_ids, worker_reasons) = (worker_ids.clone(), worker_reasons.clone());
            Box::pin(async move {
                client
                    .execute(
                        "WITH rh AS (
                            INSERT INTO request_history (request, at, from_state, to_state, actor, reason)
                            SELECT r.id, $1::timestamptz, r.state, r.state, $2::text, p.why
                            FROM unnest($3::bigint[], $4::text[]) AS p(id, why) JOIN requests r ON r.id = p.id)
                         INSERT INTO worker_history (worker, at, from_state, to_state, actor, reason)
                         SELECT w.uuid, $1::timestamptz, w.state, w.state, $2::text, p.why
                         FROM unnest($5::uuid[], $6::text[]) AS p(id, why) JOIN workers w ON w.uuid = p.id",
                        &[&at, &actor, &request_ids, &request_reasons, &worker_ids, &worker_reasons],
                    )
                    .await?;
                Ok(())
            })
        })
        .await
    }
}
