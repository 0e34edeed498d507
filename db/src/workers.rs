//! Workers: registration by agents, state transitions with their history
//! and work locks, groups, drain, deregistration, failure backoff.

use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::{Duration, SystemTime};

use corral_core::{Caps, Groups, SessionId, UserId, WorkerId, WorkerState};

use crate::records::{FromRow, HistoryRecord, WorkerRecord, caps_to_json, groups_to};
use crate::{DatabaseOperation, Db, DbError};

const WORKER_COLUMNS: &str = "uuid, agent, principal, session, state, caps, groups, ssh_addr, ssh_user, host_key, reason, \
     state_since, last_seen, last_used, fence, drain, drain_reason, facts, facts_at, dimensions, note, note_by, note_at, \
     quarantine, quarantine_by, quarantine_at, recovery, recovery_at, hooks, work";

/// A hold that keeps a worker out of matching.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hold {
    /// By an admin, or after failed preparations in a row; only an admin
    /// lifts it.
    Quarantine,
    /// From the facts (e.g. a battery charging); lifted by the facts.
    Recovery,
}

/// A work lock: "the worker is doing `process`" (SPEC §1), held by an
/// agent session, since when, and (for an on-demand process) by whom.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkLockRecord {
    pub process: String,
    /// `user:NAME` for a power cycle asked for on demand; None for the
    /// locks of the worker's own states.
    pub holder: Option<String>,
    pub acquired_at: SystemTime,
}

/// A process's failure backoff on one worker (`work_backoff`): after
/// `failures` failures in a row it is not tried again before `retry_after`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackoffRecord {
    pub process: String,
    pub failures: u32,
    pub retry_after: SystemTime,
    pub last_error: String,
}

/// An agent's description of a worker.
#[derive(Clone, Debug)]
pub struct WorkerUpsert {
    pub uuid: WorkerId,
    pub agent: String,
    /// The agent user registering it; the worker is bound to it.
    pub principal: UserId,
    pub session: SessionId,
    pub caps: Caps,
    /// Used only when the worker is new.
    pub groups: Groups,
    pub ssh_addr: String,
    pub ssh_user: String,
    pub host_key: Option<String>,
    /// The hooks the agent says it has for it (None: it does not say).
    pub hooks: Option<Vec<String>>,
}

/// Why an agent session may not claim what it claims.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClaimRefusal {
    /// A worker or the agent name is bound to another agent user.
    OtherPrincipal(String),
    /// A worker is registered by another agent host of the same user.
    OtherAgent(String),
}

/// One state change of a worker, committed with its history row and its
/// work lock (the process the new state stands for, held by the worker's
/// agent session).
#[derive(Clone, Debug)]
pub struct WorkerTransition {
    pub uuid: WorkerId,
    pub from: WorkerState,
    pub to: WorkerState,
    pub at: SystemTime,
    /// `user:NAME`, `agent:HOST`, `matcher`, `reaper`, `server`.
    pub actor: String,
    /// Why, for the history and (for failed/busy/maintenance) shown on the
    /// worker.
    pub reason: String,
    /// Clear a pending drain (the maintenance it asked for is happening).
    pub clear_drain: bool,
}

impl WorkerTransition {
    /// The work lock a worker in `state` holds.
    fn process(state: WorkerState) -> Option<&'static str> {
        match state {
            WorkerState::Prepare => Some("prepare"),
            WorkerState::Running => Some("lease"),
            WorkerState::Busy => Some("maintenance"),
            _ => None,
        }
    }

    /// Whether the worker shows the reason while in `state`.
    fn shows_reason(state: WorkerState) -> bool {
        matches!(state, WorkerState::Failed | WorkerState::Busy | WorkerState::Maintenance)
    }
}

/// [`WorkerTransition`]'s statement over a batch, built once: each worker
/// changes state if it is still in its `from` state, with its history row
/// and its work lock (the locks of other states' processes go). Entering a
/// state whose process excludes an on-demand power cycle (prepare, busy)
/// is refused while `workers.work` says one runs: checked on the row the
/// statement updates, so a power cycle that started meanwhile is seen.
static WORKER_TRANSITIONS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH w AS (
            UPDATE workers SET state = p.to_state, state_since = p.at, reason = p.shown,
                drain = workers.drain AND NOT p.clear_drain,
                drain_reason = CASE WHEN p.clear_drain THEN NULL ELSE workers.drain_reason END
            FROM unnest((SELECT $1::uuid[]), (SELECT $2::text[]), (SELECT $3::text[]), (SELECT $4::timestamptz[]),
                (SELECT $5::text[]), (SELECT $6::text[]), (SELECT $7::text[]), (SELECT $8::bool[]),
                (SELECT $9::text[]))
                AS p(worker, from_state, to_state, at, shown, actor, why, clear_drain, process)
            WHERE workers.uuid = p.worker AND workers.state = p.from_state
                AND workers.uuid = ANY ((SELECT $1::uuid[])::uuid[])
                AND (workers.work IS NULL OR p.process IS NULL)
            RETURNING {columns}, p.from_state, p.at, p.actor, p.why, p.process),
         h AS (INSERT INTO worker_history (worker, at, from_state, to_state, actor, reason)
            SELECT uuid, at, from_state, state, actor, why FROM w),
         d AS (DELETE FROM work_locks USING w
            WHERE work_locks.worker = w.uuid AND work_locks.process IS DISTINCT FROM w.process
                AND work_locks.process <> 'power_cycle'),
         l AS (INSERT INTO work_locks (worker, process, session, acquired_at)
            SELECT uuid, process, session, at FROM w WHERE process IS NOT NULL AND session IS NOT NULL
            ON CONFLICT (worker, process) DO UPDATE SET session = EXCLUDED.session,
                acquired_at = EXCLUDED.acquired_at)
         SELECT * FROM w",
        columns = crate::qualified("workers", WORKER_COLUMNS),
    )
});

impl crate::batch::Batched for WorkerTransition {
    type Output = WorkerRecord;
    const OP: DatabaseOperation = DatabaseOperation::WorkerTransition;

    fn key(&self) -> Option<u128> {
        Some(self.uuid.0.as_u128())
    }

    async fn run(db: &Db, batch: &[WorkerTransition]) -> Result<Vec<Result<WorkerRecord, DbError>>, DbError> {
        let op = Self::OP;
        let shown = |t: &WorkerTransition| WorkerTransition::shows_reason(t.to).then(|| t.reason.clone());
        let columns: crate::batch::Columns = vec![
            Box::new(batch.iter().map(|t| t.uuid.0).collect::<Vec<uuid::Uuid>>()),
            Box::new(batch.iter().map(|t| t.from.as_str()).collect::<Vec<&'static str>>()),
            Box::new(batch.iter().map(|t| t.to.as_str()).collect::<Vec<&'static str>>()),
            Box::new(batch.iter().map(|t| t.at).collect::<Vec<SystemTime>>()),
            Box::new(batch.iter().map(shown).collect::<Vec<Option<String>>>()),
            Box::new(batch.iter().map(|t| t.actor.clone()).collect::<Vec<String>>()),
            Box::new(batch.iter().map(|t| t.reason.clone()).collect::<Vec<String>>()),
            Box::new(batch.iter().map(|t| t.clear_drain).collect::<Vec<bool>>()),
            Box::new(batch.iter().map(|t| WorkerTransition::process(t.to)).collect::<Vec<Option<&'static str>>>()),
        ];
        let rows = crate::batch::query(db, op, &WORKER_TRANSITIONS, columns).await?;
        let moved = rows
            .iter()
            .map(|row| WorkerRecord::from_row(op, row).map(|record| (record.uuid, record)))
            .collect::<Result<Vec<_>, DbError>>()?;
        Ok(crate::batch::by_key(batch, moved, |t| t.uuid, |t| format!("worker {} is not {}", t.uuid, t.from)))
    }
}

impl Db {
    /// Registers a new worker in `initial` state, or refreshes a known one
    /// (caps, SSH address, host key, session; its state and groups stay).
    /// A worker registered by another agent is a conflict.
    pub async fn upsert_worker(
        &self,
        worker: &WorkerUpsert,
        initial: WorkerState,
        at: SystemTime,
    ) -> Result<(WorkerRecord, bool), DbError> {
        let op = DatabaseOperation::UpsertWorker;
        let worker = worker.clone();
        self.run(op, move |client| {
            let w = worker.clone();
            Box::pin(async move {
                let tx = client.transaction().await?;
                let upserted = upsert_worker_in(&tx, &w, initial, at).await?;
                tx.commit().await?;
                Ok(upserted)
            })
        })
        .await
    }

    /// Why the agent user `principal` may not open a session as `agent`
    /// claiming `workers`, if it may not: one of them, or the agent name,
    /// is bound to another agent user (by a live session or a registered
    /// worker), or a worker is registered by another agent host of the
    /// same user. Read in one query, before anything changes.
    pub async fn agent_claim_refusal(
        &self,
        agent: &str,
        principal: UserId,
        workers: &[WorkerId],
    ) -> Result<Option<ClaimRefusal>, DbError> {
        let agent = agent.to_string();
        let workers: Vec<uuid::Uuid> = workers.iter().map(|w| w.0).collect();
        self.run(DatabaseOperation::UpsertWorker, move |client| {
            let (agent, workers) = (agent.clone(), workers.clone());
            Box::pin(async move {
                let row = client.query_opt(CLAIM_REFUSAL, &[&agent, &principal.0, &workers]).await?;
                Ok(row.map(claim_refusal))
            })
        })
        .await
    }

    /// An admin hands a worker in maintenance or failed over to the agent
    /// user `principal` (and, when given, to its agent host name): that
    /// principal's next session may claim it, and no other may. The
    /// worker leaves the session that held it, which comes back second.
    pub async fn hand_over_worker(
        &self,
        uuid: WorkerId,
        principal: UserId,
        agent: Option<&str>,
        actor: &str,
        reason: &str,
        at: SystemTime,
    ) -> Result<(WorkerRecord, Option<SessionId>), DbError> {
        let op = DatabaseOperation::SetWorkerGroups;
        let (agent, actor, reason) = (agent.map(str::to_string), actor.to_string(), reason.to_string());
        self.run(op, move |client| {
            let (agent, actor, reason) = (agent.clone(), actor.clone(), reason.clone());
            Box::pin(async move {
                let row = client
                    .query_opt(
                        &format!(
                            "WITH w AS (UPDATE workers SET principal = $2, agent = COALESCE($3, workers.agent),
                                    session = NULL
                                FROM (SELECT uuid, session FROM workers WHERE uuid = $1) old
                                WHERE workers.uuid = $1 AND old.uuid = $1 AND workers.state IN ('maintenance', 'failed')
                                RETURNING {columns}, old.session AS previous_session),
                             h AS (INSERT INTO worker_history (worker, at, from_state, to_state, actor, reason)
                                SELECT uuid, $5, state, state, $4, $6 FROM w)
                             SELECT * FROM w",
                            columns = crate::qualified("workers", WORKER_COLUMNS),
                        ),
                        &[&uuid.0, &principal.0, &agent, &actor, &at, &reason],
                    )
                    .await?;
                match row {
                    Some(row) => {
                        let previous: Option<uuid::Uuid> =
                            row.try_get("previous_session").map_err(|e| DbError::internal(op, e.to_string()))?;
                        Ok((WorkerRecord::from_row(op, &row)?, previous.map(SessionId)))
                    }
                    None => {
                        let exists = client.query_opt("SELECT 1 FROM workers WHERE uuid = $1", &[&uuid.0]).await?;
                        match exists {
                            Some(_) => Err(DbError::conflict(
                                op,
                                format!("worker {uuid} must be in maintenance or failed to be handed over"),
                            )
                            .into()),
                            None => Err(DbError::NotFound { op: op.as_str() }.into()),
                        }
                    }
                }
            })
        })
        .await
    }

    /// Commits one state change if the worker is still in `from`; a
    /// conflict otherwise. Entering `running` raises the fencing token.
    /// Calls made at the same time share one statement ([`crate::batch`]).
    pub async fn worker_transition(&self, t: &WorkerTransition) -> Result<WorkerRecord, DbError> {
        self.batched(|b| &b.worker_transition, t.clone()).await
    }

    pub async fn set_worker_groups(
        &self,
        uuid: WorkerId,
        groups: &Groups,
        actor: &str,
        at: SystemTime,
    ) -> Result<WorkerRecord, DbError> {
        let op = DatabaseOperation::SetWorkerGroups;
        let (groups, actor) = (groups_to(groups), actor.to_string());
        self.run(op, move |client| {
            let (groups, actor) = (groups.clone(), actor.clone());
            Box::pin(async move {
                let row = client
                    .query_opt(
                        &format!(
                            "WITH w AS (UPDATE workers SET groups = $2 WHERE uuid = $1 RETURNING {WORKER_COLUMNS}),
                             h AS (INSERT INTO worker_history (worker, at, from_state, to_state, actor, reason)
                                SELECT uuid, $4, state, state, $3, 'groups set to [' || array_to_string($2, ', ') || ']' FROM w)
                             SELECT * FROM w"
                        ),
                        &[&uuid.0, &groups, &actor, &at],
                    )
                    .await?;
                match row {
                    Some(row) => Ok(WorkerRecord::from_row(op, &row)?),
                    None => Err(DbError::NotFound { op: op.as_str() }.into()),
                }
            })
        })
        .await
    }

    /// Stores a worker's latest facts and dimensions, observed at `at`;
    /// with `history` (actor, reason), a history row in the same statement
    /// (the dimensions changed). The worker's state is not touched.
    pub async fn set_worker_facts(
        &self,
        uuid: WorkerId,
        facts: &serde_json::Map<String, serde_json::Value>,
        dimensions: &Caps,
        at: SystemTime,
        history: Option<(&str, &str)>,
    ) -> Result<(), DbError> {
        let op = DatabaseOperation::SetWorkerFacts;
        let facts = serde_json::Value::Object(facts.clone());
        let dimensions = caps_to_json(dimensions);
        let (actor, reason) = history.map(|(a, r)| (a.to_string(), r.to_string())).unzip();
        self.run(op, move |client| {
            let (facts, dimensions, actor, reason) = (facts.clone(), dimensions.clone(), actor.clone(), reason.clone());
            Box::pin(async move {
                let stmt = client
                    .prepare_cached(
                        "WITH w AS (UPDATE workers SET facts = $2, dimensions = $3, facts_at = $4 WHERE uuid = $1
                                RETURNING uuid, state),
                         h AS (INSERT INTO worker_history (worker, at, from_state, to_state, actor, reason)
                                SELECT uuid, $4, state, state, $5, $6 FROM w WHERE $5::text IS NOT NULL)
                         SELECT count(*) FROM w",
                    )
                    .await?;
                let row = client.query_one(&stmt, &[&uuid.0, &facts, &dimensions, &at, &actor, &reason]).await?;
                if row.get::<_, i64>(0) == 0 {
                    return Err(DbError::NotFound { op: op.as_str() }.into());
                }
                Ok(())
            })
        })
        .await
    }

    /// Sets (Some) or clears (None) the admin's note on a worker, with its
    /// author and time and a history row, in one statement.
    pub async fn set_worker_note(
        &self,
        uuid: WorkerId,
        note: Option<&str>,
        actor: &str,
        at: SystemTime,
    ) -> Result<WorkerRecord, DbError> {
        let op = DatabaseOperation::SetWorkerNote;
        let (note, actor) = (note.map(str::to_string), actor.to_string());
        let reason = match &note {
            Some(text) => format!("note: {}", text.chars().take(200).collect::<String>()),
            None => "note cleared".to_string(),
        };
        self.run(op, move |client| {
            let (note, actor, reason) = (note.clone(), actor.clone(), reason.clone());
            Box::pin(async move {
                let row = client
                    .query_opt(
                        &format!(
                            "WITH w AS (UPDATE workers SET note = $2,
                                    note_by = CASE WHEN $2::text IS NULL THEN NULL ELSE $3 END,
                                    note_at = CASE WHEN $2::text IS NULL THEN NULL ELSE $4::timestamptz END
                                WHERE uuid = $1 RETURNING {WORKER_COLUMNS}),
                             h AS (INSERT INTO worker_history (worker, at, from_state, to_state, actor, reason)
                                SELECT uuid, $4, state, state, $3, $5 FROM w)
                             SELECT * FROM w"
                        ),
                        &[&uuid.0, &note, &actor, &at, &reason],
                    )
                    .await?;
                match row {
                    Some(row) => Ok(WorkerRecord::from_row(op, &row)?),
                    None => Err(DbError::NotFound { op: op.as_str() }.into()),
                }
            })
        })
        .await
    }

    /// Sets (Some(reason)) or clears (None) a hold on a worker, with who
    /// and when, and a history row, in one statement.
    pub async fn set_worker_hold(
        &self,
        uuid: WorkerId,
        hold: Hold,
        reason: Option<&str>,
        actor: &str,
        at: SystemTime,
    ) -> Result<WorkerRecord, DbError> {
        let op = DatabaseOperation::SetWorkerHold;
        let (reason, actor) = (reason.map(str::to_string), actor.to_string());
        let why = match (&reason, hold) {
            (Some(r), Hold::Quarantine) => format!("quarantined: {r}"),
            (None, Hold::Quarantine) => "quarantine lifted".to_string(),
            (Some(r), Hold::Recovery) => format!("in recovery: {r}"),
            (None, Hold::Recovery) => "recovered".to_string(),
        };
        let set = match hold {
            Hold::Quarantine => {
                "quarantine = $2, quarantine_by = CASE WHEN $2::text IS NULL THEN NULL ELSE $3 END,
                 quarantine_at = CASE WHEN $2::text IS NULL THEN NULL ELSE $4::timestamptz END"
            }
            Hold::Recovery => {
                "recovery = $2, recovery_at = CASE WHEN $2::text IS NULL THEN NULL ELSE $4::timestamptz END"
            }
        };
        let statement = format!(
            "WITH w AS (UPDATE workers SET {set} WHERE uuid = $1 RETURNING {WORKER_COLUMNS}),
             h AS (INSERT INTO worker_history (worker, at, from_state, to_state, actor, reason)
                SELECT uuid, $4, state, state, $3, $5 FROM w)
             SELECT * FROM w"
        );
        self.run(op, move |client| {
            let (reason, actor, why, statement) = (reason.clone(), actor.clone(), why.clone(), statement.clone());
            Box::pin(async move {
                let row = client.query_opt(&statement, &[&uuid.0, &reason, &actor, &at, &why]).await?;
                match row {
                    Some(row) => Ok(WorkerRecord::from_row(op, &row)?),
                    None => Err(DbError::NotFound { op: op.as_str() }.into()),
                }
            })
        })
        .await
    }

    /// Starts an on-demand power cycle, asked for by `holder` (`user:NAME`,
    /// user id `holder_id`): marks the worker's row (`work`) and takes the
    /// `power_cycle` work lock for its agent session, with a history row,
    /// in one statement. Refused (a conflict; [`Db::work_locks`] says what
    /// holds the worker) unless the worker has an agent session, no other
    /// on-demand process, no `prepare` or `maintenance` lock, and is idle,
    /// in maintenance, or running a live lease of `holder_id`. The checks
    /// of its state are made on the row the statement updates, so a
    /// binding or transition that committed meanwhile is seen (and they,
    /// in turn, check `work` on the same row).
    pub async fn start_power_cycle(
        &self,
        uuid: WorkerId,
        holder_id: UserId,
        holder: &str,
        at: SystemTime,
    ) -> Result<WorkerRecord, DbError> {
        let op = DatabaseOperation::StartWork;
        let holder = holder.to_string();
        let statement = format!(
            "WITH w AS (
                UPDATE workers SET work = 'power_cycle'
                WHERE uuid = $1 AND work IS NULL AND session IS NOT NULL
                    AND (state IN ('idle', 'maintenance')
                        OR (state = 'running' AND EXISTS (
                            SELECT 1 FROM leases l JOIN requests r ON r.id = l.request
                            WHERE l.worker = $1 AND l.ended_at IS NULL AND r.owner_id = $2)))
                    AND NOT EXISTS (SELECT 1 FROM work_locks WHERE worker = $1
                        AND process IN ('prepare', 'maintenance', 'power_cycle'))
                RETURNING {WORKER_COLUMNS}),
             l AS (INSERT INTO work_locks (worker, process, session, acquired_at, holder)
                SELECT uuid, 'power_cycle', session, $4, $3 FROM w),
             h AS (INSERT INTO worker_history (worker, at, from_state, to_state, actor, reason)
                SELECT uuid, $4, state, state, $3, 'power cycle asked by ' || $3 FROM w)
             SELECT * FROM w"
        );
        self.run(op, move |client| {
            let (holder, statement) = (holder.clone(), statement.clone());
            Box::pin(async move {
                let row = client.query_opt(&statement, &[&uuid.0, &holder_id.0, &holder, &at]).await?;
                match row {
                    Some(row) => Ok(WorkerRecord::from_row(op, &row)?),
                    None => Err(DbError::conflict(op, format!("worker {uuid} cannot be power-cycled now")).into()),
                }
            })
        })
        .await
    }

    /// Ends the on-demand power cycle of a worker: its lock goes, `work` is
    /// cleared, and a history row by `actor` says how it ended (`outcome`),
    /// in one statement. NotFound when none runs.
    pub async fn end_power_cycle(
        &self,
        uuid: WorkerId,
        actor: &str,
        outcome: &str,
        at: SystemTime,
    ) -> Result<WorkerRecord, DbError> {
        let op = DatabaseOperation::EndWork;
        let (actor, outcome) = (actor.to_string(), outcome.to_string());
        let statement = format!(
            "WITH w AS (UPDATE workers SET work = NULL WHERE uuid = $1 AND work = 'power_cycle'
                RETURNING {WORKER_COLUMNS}),
             d AS (DELETE FROM work_locks USING w WHERE work_locks.worker = w.uuid
                AND work_locks.process = 'power_cycle'),
             h AS (INSERT INTO worker_history (worker, at, from_state, to_state, actor, reason)
                SELECT uuid, $3, state, state, $2, $4 FROM w)
             SELECT * FROM w"
        );
        self.run(op, move |client| {
            let (actor, outcome, statement) = (actor.clone(), outcome.clone(), statement.clone());
            Box::pin(async move {
                let row = client.query_opt(&statement, &[&uuid.0, &actor, &at, &outcome]).await?;
                match row {
                    Some(row) => Ok(WorkerRecord::from_row(op, &row)?),
                    None => Err(DbError::NotFound { op: op.as_str() }.into()),
                }
            })
        })
        .await
    }

    /// The work locks a worker holds, oldest first.
    pub async fn work_locks(&self, uuid: WorkerId) -> Result<Vec<WorkLockRecord>, DbError> {
        self.run(DatabaseOperation::WorkLocks, move |client| {
            Box::pin(async move {
                let rows = client
                    .query(
                        "SELECT process, holder, acquired_at FROM work_locks WHERE worker = $1
                         ORDER BY acquired_at, process",
                        &[&uuid.0],
                    )
                    .await?;
                Ok(rows
                    .iter()
                    .map(|r| WorkLockRecord { process: r.get(0), holder: r.get(1), acquired_at: r.get(2) })
                    .collect())
            })
        })
        .await
    }

    /// Asks for (Some(reason)) or cancels (None) maintenance after the
    /// running lease.
    pub async fn set_worker_drain(&self, uuid: WorkerId, drain: Option<&str>) -> Result<(), DbError> {
        let op = DatabaseOperation::SetWorkerDrain;
        let drain = drain.map(str::to_string);
        self.run(op, move |client| {
            let drain = drain.clone();
            Box::pin(async move {
                let n = client
                    .execute(
                        "UPDATE workers SET drain = $2::text IS NOT NULL, drain_reason = $2 WHERE uuid = $1",
                        &[&uuid.0, &drain],
                    )
                    .await?;
                if n == 0 {
                    return Err(DbError::NotFound { op: op.as_str() }.into());
                }
                Ok(())
            })
        })
        .await
    }

    /// Deregisters a worker in maintenance or failed state.
    pub async fn delete_worker(&self, uuid: WorkerId, actor: &str, at: SystemTime) -> Result<(), DbError> {
        let op = DatabaseOperation::DeleteWorker;
        let actor = actor.to_string();
        self.run(op, move |client| {
            let actor = actor.clone();
            Box::pin(async move {
                let tx = client.transaction().await?;
                let row = tx
                    .query_opt(
                        "DELETE FROM workers WHERE uuid = $1 AND state IN ('maintenance', 'failed') AND work IS NULL
                         RETURNING state",
                        &[&uuid.0],
                    )
                    .await?;
                let Some(row) = row else {
                    return Err(DbError::conflict(
                        op,
                        format!("worker {uuid} is not in maintenance or failed, or is being power-cycled"),
                    )
                    .into());
                };
                let state: String = row.get(0);
                tx.execute(
                    "INSERT INTO worker_history (worker, at, from_state, to_state, actor, reason)
                     VALUES ($1, $2, $3, 'deregistered', $4, 'deregistered')",
                    &[&uuid.0, &at, &state, &actor],
                )
                .await?;
                tx.execute("DELETE FROM work_locks WHERE worker = $1", &[&uuid.0]).await?;
                tx.execute("DELETE FROM work_backoff WHERE worker = $1", &[&uuid.0]).await?;
                tx.commit().await?;
                Ok(())
            })
        })
        .await
    }

    pub async fn load_workers(&self) -> Result<Vec<WorkerRecord>, DbError> {
        let op = DatabaseOperation::LoadWorkers;
        self.run(op, move |client| {
            Box::pin(async move {
                let rows = client.query(&format!("SELECT {WORKER_COLUMNS} FROM workers ORDER BY uuid"), &[]).await?;
                Ok(rows.iter().map(|r| WorkerRecord::from_row(op, r)).collect::<Result<_, _>>()?)
            })
        })
        .await
    }

    /// Records a failure of `process` on a worker; returns when it may be
    /// tried again (`base` doubled per consecutive failure, at most `cap`)
    /// and how many consecutive failures there were, this one included.
    pub async fn record_backoff(
        &self,
        uuid: WorkerId,
        process: &str,
        error: &str,
        at: SystemTime,
        base: Duration,
        cap: Duration,
    ) -> Result<(SystemTime, u32), DbError> {
        let op = DatabaseOperation::RecordBackoff;
        let (process, error) = (process.to_string(), error.to_string());
        let (base_ms, cap_ms) = (crate::records::millis(base), crate::records::millis(cap));
        self.run(op, move |client| {
            let (process, error) = (process.clone(), error.clone());
            Box::pin(async move {
                let row = client
                    .query_one(
                        "INSERT INTO work_backoff AS b (worker, process, failures, retry_after, last_error)
                         VALUES ($1, $2, 1, $4::timestamptz + $5::bigint * interval '1 millisecond', $3)
                         ON CONFLICT (worker, process) DO UPDATE SET
                            failures = b.failures + 1,
                            retry_after = $4::timestamptz + LEAST($6::bigint, $5::bigint * power(2, LEAST(b.failures, 30))::bigint) * interval '1 millisecond',
                            last_error = $3
                         RETURNING retry_after, failures",
                        &[&uuid.0, &process, &error, &at, &base_ms, &cap_ms],
                    )
                    .await?;
                let failures = u32::try_from(row.get::<_, i32>(1)).unwrap_or(0);
                Ok((row.get::<_, SystemTime>(0), failures))
            })
        })
        .await
    }

    pub async fn clear_backoff(&self, uuid: WorkerId, process: &str) -> Result<(), DbError> {
        let process = process.to_string();
        self.run(DatabaseOperation::ClearBackoff, move |client| {
            let process = process.clone();
            Box::pin(async move {
                client
                    .execute("DELETE FROM work_backoff WHERE worker = $1 AND process = $2", &[&uuid.0, &process])
                    .await?;
                Ok(())
            })
        })
        .await
    }

    /// Every worker's backoff rows, each worker's by process name (all
    /// workers when `worker` is None).
    pub async fn load_backoffs(
        &self,
        worker: Option<WorkerId>,
    ) -> Result<HashMap<WorkerId, Vec<BackoffRecord>>, DbError> {
        let worker = worker.map(|w| w.0);
        self.run(DatabaseOperation::LoadWorkers, move |client| {
            Box::pin(async move {
                let rows = client
                    .query(
                        "SELECT worker, process, failures, retry_after, last_error FROM work_backoff
                         WHERE $1::uuid IS NULL OR worker = $1 ORDER BY worker, process",
                        &[&worker],
                    )
                    .await?;
                let mut backoffs: HashMap<WorkerId, Vec<BackoffRecord>> = HashMap::new();
                for r in &rows {
                    backoffs.entry(WorkerId(r.get(0))).or_default().push(BackoffRecord {
                        process: r.get(1),
                        failures: u32::try_from(r.get::<_, i32>(2)).unwrap_or(0),
                        retry_after: r.get(3),
                        last_error: r.get(4),
                    });
                }
                Ok(backoffs)
            })
        })
        .await
    }
}

impl Db {
    /// A worker's transitions, oldest first.
    /// One page of a worker's history, newest first: at most `limit` rows
    /// with ids below `before` (all when `None`), each with its id (the
    /// cursor of the next page).
    pub async fn worker_history_page(
        &self,
        uuid: WorkerId,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<(i64, HistoryRecord)>, DbError> {
        let op = DatabaseOperation::WorkerHistory;
        self.run(op, move |client| {
            Box::pin(async move {
                let stmt = client
                    .prepare_cached(
                        "SELECT id, at, from_state, to_state, actor, reason FROM worker_history
                         WHERE worker = $1 AND ($2::bigint IS NULL OR id < $2) ORDER BY id DESC LIMIT $3",
                    )
                    .await?;
                let rows = client.query(&stmt, &[&uuid.0, &before, &i64::from(limit)]).await?;
                let get = |e: tokio_postgres::Error| DbError::internal(op, e.to_string());
                Ok(rows
                    .iter()
                    .map(|r| Ok((r.try_get::<_, i64>("id").map_err(get)?, HistoryRecord::from_row(op, r)?)))
                    .collect::<Result<_, DbError>>()?)
            })
        })
        .await
    }

    pub async fn worker_history(&self, uuid: WorkerId) -> Result<Vec<HistoryRecord>, DbError> {
        let query = "SELECT at, from_state, to_state, actor, reason FROM worker_history WHERE worker = $1 ORDER BY id";
        self.history(DatabaseOperation::WorkerHistory, query, uuid.0).await
    }

    pub async fn load_worker(&self, uuid: WorkerId) -> Result<Option<WorkerRecord>, DbError> {
        let op = DatabaseOperation::LoadWorkers;
        self.run(op, move |client| {
            Box::pin(async move {
                let row = client
                    .query_opt(&format!("SELECT {WORKER_COLUMNS} FROM workers WHERE uuid = $1"), &[&uuid.0])
                    .await?;
                Ok(row.map(|r| WorkerRecord::from_row(op, &r)).transpose()?)
            })
        })
        .await
    }
}

/// Registers or updates one worker of an agent session in `tx`
/// ([`Db::upsert_worker`], and every worker of an agent session's
/// registration). Returns the row and whether it is new.
pub(crate) async fn upsert_worker_in(
    tx: &tokio_postgres::Transaction<'_>,
    w: &WorkerUpsert,
    initial: WorkerState,
    at: SystemTime,
) -> crate::OpResult<(WorkerRecord, bool)> {
    let op = DatabaseOperation::UpsertWorker;
    let existing =
        tx.query_opt("SELECT agent, principal FROM workers WHERE uuid = $1 FOR UPDATE", &[&w.uuid.0]).await?;
    let caps = caps_to_json(&w.caps);
    let created = match existing {
        Some(row) => {
            let agent: String = row.get(0);
            let principal: Option<i64> = row.get(1);
            if principal.is_some_and(|p| p != w.principal.0) {
                return Err(DbError::conflict(op, format!("worker {} is bound to another agent token", w.uuid)).into());
            }
            if agent != w.agent {
                return Err(DbError::conflict(op, format!("worker {} is registered by agent {agent:?}", w.uuid)).into());
            }
            tx.execute(
                "UPDATE workers SET caps = $2, ssh_addr = $3, ssh_user = $4, host_key = $5, session = $6,
                     last_seen = $7, principal = $8, hooks = $9 WHERE uuid = $1",
                &[&w.uuid.0, &caps, &w.ssh_addr, &w.ssh_user, &w.host_key, &w.session.0, &at, &w.principal.0, &w.hooks],
            )
            .await?;
            false
        }
        None => {
            tx.execute(
                "INSERT INTO workers (uuid, agent, session, state, caps, groups, ssh_addr, ssh_user, host_key,
                     reason, state_since, last_seen, principal, hooks)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11, $12, $13)",
                &[
                    &w.uuid.0,
                    &w.agent,
                    &w.session.0,
                    &initial.as_str(),
                    &caps,
                    &groups_to(&w.groups),
                    &w.ssh_addr,
                    &w.ssh_user,
                    &w.host_key,
                    &(initial == WorkerState::Maintenance).then_some("new worker"),
                    &at,
                    &w.principal.0,
                    &w.hooks,
                ],
            )
            .await?;
            tx.execute(
                "INSERT INTO worker_history (worker, at, from_state, to_state, actor, reason)
                     VALUES ($1, $2, NULL, $3, $4, 'registered')",
                &[&w.uuid.0, &at, &initial.as_str(), &format!("agent:{}", w.agent)],
            )
            .await?;
            true
        }
    };
    let row = tx.query_one(&format!("SELECT {WORKER_COLUMNS} FROM workers WHERE uuid = $1"), &[&w.uuid.0]).await?;
    Ok((WorkerRecord::from_row(op, &row)?, created))
}

/// Why an agent user (`$2`) may not open a session as agent `$1` claiming
/// workers `$3`: one row read by [`claim_refusal`], or none.
pub(crate) const CLAIM_REFUSAL: &str = "SELECT other_principal, what FROM (
        SELECT true AS other_principal, 'worker ' || uuid || ' is bound to another agent token' AS what
        FROM workers WHERE uuid = ANY($3) AND principal IS NOT NULL AND principal <> $2
        UNION ALL
        SELECT true, 'agent name ' || $1 || ' is in use by another agent token' FROM sessions
        WHERE component = 'agent' AND name = $1 AND principal_id IS DISTINCT FROM $2
        UNION ALL
        SELECT true, 'agent name ' || $1 || ' is in use by another agent token' FROM workers
        WHERE agent = $1 AND principal IS NOT NULL AND principal <> $2
        UNION ALL
        SELECT false, 'worker ' || uuid || ' is registered by agent ' || agent FROM workers
        WHERE uuid = ANY($3) AND agent <> $1) c
     ORDER BY other_principal DESC LIMIT 1";

/// A row of [`CLAIM_REFUSAL`].
pub(crate) fn claim_refusal(row: tokio_postgres::Row) -> ClaimRefusal {
    let what: String = row.get(1);
    if row.get(0) { ClaimRefusal::OtherPrincipal(what) } else { ClaimRefusal::OtherAgent(what) }
}
