//! Requests and leases: submission, listing, history, updates, state
//! transitions, and the binding of requests to workers.

use std::sync::LazyLock;
use std::time::{Duration, SystemTime};

use corral_core::request::RequestMove;
use corral_core::worker::WorkerMove;
use corral_core::{Caps, FencingToken, Groups, Priority, RequestId, RequestState, UserId, WorkerId};

pub use corral_core::records::{Idempotency, RequestFilter};

use crate::records::{FromRow, HistoryRecord, LeaseRecord, RequestRecord, caps_to_json, groups_to, millis};
use crate::{DatabaseOperation, Db, DbError};

const REQUEST_COLUMNS: &str = "id, owner, owner_id, owner_groups, state, priority, caps, created_at, valid_after, deadline, \
     lease_ms, ssh_public_key, key_type, worker, lease_expires_at, reason, updated_at";
const LEASE_COLUMNS: &str =
    "request, worker, fence, bound_at, started_at, tunnel_port, key_type, public_key, private_key";

/// The moves of core's tables that the statements below write themselves
/// (the binding, the start of a lease, the end of a lease for its worker):
/// each statement's guard requires the state the move leaves and it writes
/// the state the move enters, so what they write is what the table says.
const LEASED: WorkerMove = WorkerMove::LEASED;
const STARTED: RequestMove = RequestMove::STARTED;
const LEASE_ENDED: WorkerMove = WorkerMove::LEASE_ENDED;

/// The request history's reason for a binding, `uuid` naming the worker.
const MATCHED_REASON: &str = "'matched to worker ' || uuid || '; installing the lease key'";

/// The rows every binding writes besides the worker's move to `running`
/// (CTE `w`: uuid, session) and the lease: the worker's `lease` work lock
/// and its history row, as CTEs `lk` and `wh`. `at` is the time parameter,
/// `request` the expression naming the request, `from` what `wh` reads.
/// A submission's binding and a batch's share it, so both leave the same
/// records.
fn binding_records(at: &str, request: &str, from: &str) -> String {
    format!(
        "lk AS (
            INSERT INTO work_locks (worker, process, session, acquired_at)
            SELECT uuid, 'lease', session, {at} FROM w WHERE session IS NOT NULL
            ON CONFLICT (worker, process) DO UPDATE SET session = EXCLUDED.session,
                acquired_at = EXCLUDED.acquired_at),
         wh AS (
            INSERT INTO worker_history (worker, at, from_state, to_state, actor, reason)
            SELECT uuid, {at}, '{leaves}', '{enters}', 'matcher', 'leased to request ' || {request} FROM {from})",
        leaves = LEASED.from,
        enters = LEASED.to,
    )
}

/// The worker's move in a binding ([`LEASED`]; `at`: the time parameter):
/// its fencing token goes up by one.
fn worker_leased(at: &str) -> String {
    format!("state = '{}', fence = workers.fence + 1, state_since = {at}, reason = NULL, last_used = {at}", LEASED.to)
}

/// The guard of a binding: worker `worker`, whose fencing token is now
/// `fence`, holds no live lease row and no row with the token the binding
/// will give it (both left behind when an actor died before ending them).
/// Two probes, one per index (`leases_one_live_per_worker` and `UNIQUE
/// (worker, fence)`): written as one `OR`, PostgreSQL walks every lease the
/// worker ever had, and binding slows down as history grows.
fn worker_free(worker: &str, fence: &str) -> String {
    format!(
        "NOT EXISTS (SELECT 1 FROM leases WHERE leases.worker = {worker} AND leases.ended_at IS NULL)
         AND NOT EXISTS (SELECT 1 FROM leases WHERE leases.worker = {worker} AND leases.fence = {fence} + 1)"
    )
}

/// [`Db::insert_request`]'s statement over a batch, built once. Each
/// request gets its id first (`p`), so that its binding, lease and history
/// rows can name it; a request whose binding's guards fail (the worker not
/// idle or holding a live lease row, the session not leading) is inserted
/// unbound. Owner groups come as
/// a JSON array per request (an array of arrays must be rectangular).
static INSERT_REQUESTS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH p AS MATERIALIZED (
            SELECT nextval(pg_get_serial_sequence('requests', 'id')) AS id, p.*
            FROM unnest((SELECT $1::text[]), (SELECT $2::jsonb[]), (SELECT $3::smallint[]), (SELECT $4::jsonb[]),
                (SELECT $5::timestamptz[]), (SELECT $6::timestamptz[]), (SELECT $7::timestamptz[]),
                (SELECT $8::bigint[]), (SELECT $9::text[]), (SELECT $10::text[]), (SELECT $11::text[]),
                (SELECT $12::uuid[]), (SELECT $13::uuid[]), (SELECT $14::bigint[]), (SELECT $15::uuid[]),
                (SELECT $16::text[]), (SELECT $17::bytea[])) WITH ORDINALITY
                AS p(owner, groups, priority, caps, at, valid_after, deadline, lease_ms, public_key, actor, kind,
                    worker, leader, owner_id, token, idempotency_key, digest, call)),
         w AS (
            UPDATE workers SET {leased}
            FROM p WHERE workers.uuid = p.worker AND workers.uuid = ANY ((SELECT $12::uuid[])::uuid[])
                AND workers.state = '{idle}' AND workers.work IS NULL
                AND EXISTS (SELECT 1 FROM leader WHERE id = 1 AND session = p.leader)
                AND {free}
            RETURNING workers.uuid, workers.fence, workers.session, p.id AS request, p.at),
         r AS (
            INSERT INTO requests (id, owner, owner_id, owner_groups, state, priority, caps, created_at, valid_after,
                deadline, lease_ms, ssh_public_key, key_type, updated_at, worker, submission_token, idempotency_key,
                request_digest)
            SELECT p.id, p.owner, p.owner_id, ARRAY (SELECT jsonb_array_elements_text(p.groups)), 'waiting', p.priority,
                p.caps, p.at, p.valid_after, p.deadline, p.lease_ms, p.public_key, p.kind, p.at, w.uuid, p.token,
                p.idempotency_key, p.digest
            FROM p LEFT JOIN w ON w.request = p.id
            RETURNING {REQUEST_COLUMNS}),
         l AS (
            INSERT INTO leases (request, worker, fence, bound_at)
            SELECT request, uuid, fence, at FROM w
            RETURNING request, fence),
         {records},
         h AS (
            INSERT INTO request_history (request, at, from_state, to_state, actor, reason)
            SELECT id, at, NULL, 'waiting', actor, 'submitted' FROM p
            UNION ALL
            SELECT request, at, 'waiting', 'waiting', 'matcher', {matched} FROM w)
         SELECT r.*, l.fence AS bound_fence, p.call FROM r JOIN p ON p.id = r.id
            LEFT JOIN l ON l.request = r.id",
        leased = worker_leased("p.at"),
        idle = LEASED.from,
        free = worker_free("workers.uuid", "workers.fence"),
        records = binding_records("w.at", "w.request", "w"),
        matched = MATCHED_REASON,
    )
});

/// [`Db::bind_leases`]'s statement, built once.
static BIND_LEASES: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH ok AS (
            SELECT p.request, p.worker
            FROM unnest((SELECT $1::bigint[]), (SELECT $2::uuid[])) AS p(request, worker)
            JOIN LATERAL (SELECT state, worker FROM requests WHERE id = p.request OFFSET 0) r
                ON r.state = 'waiting' AND r.worker IS NULL
            JOIN LATERAL (SELECT state, fence, work FROM workers WHERE uuid = p.worker OFFSET 0) w
                ON w.state = '{idle}' AND w.work IS NULL
            WHERE EXISTS (SELECT 1 FROM leader WHERE id = 1 AND session = $4)
                AND NOT EXISTS (SELECT 1 FROM leases WHERE leases.request = p.request)
                AND {free}),
         w AS (
            UPDATE workers SET {leased}
            FROM ok WHERE workers.uuid = ok.worker AND workers.uuid = ANY ((SELECT $2::uuid[])::uuid[])
                AND workers.work IS NULL
            RETURNING workers.uuid, workers.fence, workers.session, ok.request),
         r AS (
            UPDATE requests SET worker = w.uuid, updated_at = $3
            FROM w WHERE requests.id = w.request AND requests.id = ANY ((SELECT $1::bigint[])::bigint[])),
         l AS (
            INSERT INTO leases (request, worker, fence, bound_at)
            SELECT request, uuid, fence, $3 FROM w
            RETURNING request, fence),
         {records},
         rh AS (
            INSERT INTO request_history (request, at, from_state, to_state, actor, reason)
            SELECT request, $3, 'waiting', 'waiting', 'matcher', {matched} FROM w)
         SELECT request, fence FROM l",
        leased = worker_leased("$3"),
        idle = LEASED.from,
        free = worker_free("p.worker", "w.fence"),
        records = binding_records("$3", "w.request", "w"),
        matched = MATCHED_REASON,
    )
});

/// [`StartLease`]'s statement over a batch, built once: each lease starts
/// if it is pending and its request waiting, both read on one snapshot.
static START_LEASES: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH ok AS (
            SELECT p.* FROM unnest((SELECT $1::bigint[]), (SELECT $2::bigint[]), (SELECT $3::timestamptz[]),
                (SELECT $4::text[]), (SELECT $5::text[]), (SELECT $6::text[]), (SELECT $7::int[]),
                (SELECT $8::timestamptz[]), (SELECT $9::text[]))
                AS p(request, fence, at, kind, public_key, private_key, port, expires_at, actor)
            JOIN LATERAL (SELECT 1 FROM leases WHERE request = p.request AND fence = p.fence
                AND ended_at IS NULL AND started_at IS NULL OFFSET 0) l ON true
            JOIN LATERAL (SELECT state FROM requests WHERE id = p.request OFFSET 0) q ON q.state = '{leaves}'),
         l AS (
            UPDATE leases SET started_at = ok.at, key_type = ok.kind, public_key = ok.public_key,
                private_key = ok.private_key, tunnel_port = ok.port
            FROM ok WHERE leases.request = ok.request AND leases.fence = ok.fence
                AND leases.request = ANY ((SELECT $1::bigint[])::bigint[])),
         r AS (
            UPDATE requests SET state = '{enters}', lease_expires_at = ok.expires_at, updated_at = ok.at,
                reason = NULL
            FROM ok WHERE requests.id = ok.request AND requests.id = ANY ((SELECT $1::bigint[])::bigint[])
            RETURNING {columns}, ok.actor AS started_by),
         h AS (INSERT INTO request_history (request, at, from_state, to_state, actor, reason)
            SELECT id, updated_at, '{leaves}', '{enters}', started_by,
                'lease started on worker ' || worker || ' until ' || lease_expires_at FROM r)
         SELECT * FROM r",
        columns = crate::qualified("requests", REQUEST_COLUMNS),
        leaves = STARTED.from,
        enters = STARTED.to,
    )
});

impl crate::batch::Batched for StartLease {
    type Output = RequestRecord;
    const OP: DatabaseOperation = DatabaseOperation::StartLease;

    fn key(&self) -> Option<u128> {
        Some(self.request.0 as u128)
    }

    async fn run(db: &Db, batch: &[StartLease]) -> Result<Vec<Result<RequestRecord, DbError>>, DbError> {
        let op = Self::OP;
        let columns: crate::batch::Columns = vec![
            Box::new(batch.iter().map(|s| s.request.0).collect::<Vec<i64>>()),
            Box::new(batch.iter().map(|s| s.fence.0).collect::<Vec<i64>>()),
            Box::new(batch.iter().map(|s| s.at).collect::<Vec<SystemTime>>()),
            Box::new(batch.iter().map(|s| s.key_type.clone()).collect::<Vec<String>>()),
            Box::new(batch.iter().map(|s| s.public_key.clone()).collect::<Vec<String>>()),
            Box::new(batch.iter().map(|s| s.private_key.clone()).collect::<Vec<Option<String>>>()),
            Box::new(batch.iter().map(|s| s.tunnel_port.map(i32::from)).collect::<Vec<Option<i32>>>()),
            Box::new(batch.iter().map(|s| s.expires_at).collect::<Vec<SystemTime>>()),
            Box::new(batch.iter().map(|s| s.actor.clone()).collect::<Vec<String>>()),
        ];
        let rows = crate::batch::query(db, op, &START_LEASES, columns).await?;
        let started = rows
            .iter()
            .map(|row| RequestRecord::from_row(op, row).map(|record| (record.id, record)))
            .collect::<Result<Vec<_>, DbError>>()?;
        Ok(crate::batch::by_key(
            batch,
            started,
            |s| s.request,
            |s| format!("lease {} of request {} is not pending", s.fence, s.request),
        ))
    }
}

/// [`Db::end_lease`]'s statement over a batch, built once. The workers are
/// named by the array of the leases' workers, not by a join, so that the
/// cached plan reads them by primary key rather than hashing a scan of the
/// table.
static END_LEASES: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH ok AS (
            SELECT p.*, l.worker FROM unnest((SELECT $1::bigint[]), (SELECT $2::bigint[]), (SELECT $3::text[]),
                (SELECT $4::text[]), (SELECT $5::timestamptz[]), (SELECT $6::text[]), (SELECT $7::text[]))
                AS p(request, fence, from_state, to_state, at, actor, why)
            JOIN LATERAL (SELECT worker FROM leases WHERE request = p.request AND fence = p.fence
                AND ended_at IS NULL OFFSET 0) l ON true
            JOIN LATERAL (SELECT state FROM requests WHERE id = p.request OFFSET 0) q ON q.state = p.from_state),
         l AS (
            UPDATE leases SET ended_at = ok.at, end_reason = ok.why, private_key = NULL
            FROM ok WHERE leases.request = ok.request AND leases.fence = ok.fence
                AND leases.request = ANY ((SELECT $1::bigint[])::bigint[])),
         r AS (
            UPDATE requests SET state = ok.to_state, updated_at = ok.at, reason = ok.why
            FROM ok WHERE requests.id = ok.request AND requests.id = ANY ((SELECT $1::bigint[])::bigint[])
            RETURNING {columns}, ok.from_state, ok.actor AS ended_by),
         h AS (INSERT INTO request_history (request, at, from_state, to_state, actor, reason)
            SELECT id, updated_at, from_state, state, ended_by, reason FROM r),
         w AS (
            UPDATE workers SET state = '{enters}', state_since = ok.at, reason = NULL
            FROM ok WHERE workers.uuid = ok.worker AND workers.uuid = ANY (ARRAY (SELECT worker FROM ok))
                AND workers.state = '{leaves}' AND workers.fence = ok.fence AND NOT workers.drain
                AND workers.work IS NULL
            RETURNING workers.uuid, workers.session, ok.request, ok.at, ok.why),
         wh AS (INSERT INTO worker_history (worker, at, from_state, to_state, actor, reason)
            SELECT uuid, at, '{leaves}', '{enters}', 'server',
                'lease of request ' || request || ' ended (' || why || '); revoking the key' FROM w),
         wd AS (DELETE FROM work_locks USING w
            WHERE work_locks.worker = w.uuid AND work_locks.process <> 'prepare'),
         wl AS (INSERT INTO work_locks (worker, process, session, acquired_at)
            SELECT uuid, 'prepare', session, at FROM w WHERE session IS NOT NULL
            ON CONFLICT (worker, process) DO UPDATE SET session = EXCLUDED.session,
                acquired_at = EXCLUDED.acquired_at)
         SELECT r.*, EXISTS (SELECT 1 FROM w WHERE w.request = r.id) AS worker_prepared FROM r",
        columns = crate::qualified("requests", REQUEST_COLUMNS),
        leaves = LEASE_ENDED.from,
        enters = LEASE_ENDED.to,
    )
});

/// One call of [`Db::end_lease`].
#[derive(Clone, Debug)]
pub(crate) struct EndLease {
    request: RequestId,
    fence: FencingToken,
    from: RequestState,
    to: RequestState,
    at: SystemTime,
    actor: String,
    reason: String,
}

impl crate::batch::Batched for EndLease {
    type Output = (RequestRecord, bool);
    const OP: DatabaseOperation = DatabaseOperation::EndLease;

    fn key(&self) -> Option<u128> {
        Some(self.request.0 as u128)
    }

    async fn run(db: &Db, batch: &[EndLease]) -> Result<Vec<Result<(RequestRecord, bool), DbError>>, DbError> {
        let op = Self::OP;
        let columns: crate::batch::Columns = vec![
            Box::new(batch.iter().map(|e| e.request.0).collect::<Vec<i64>>()),
            Box::new(batch.iter().map(|e| e.fence.0).collect::<Vec<i64>>()),
            Box::new(batch.iter().map(|e| e.from.as_str()).collect::<Vec<&'static str>>()),
            Box::new(batch.iter().map(|e| e.to.as_str()).collect::<Vec<&'static str>>()),
            Box::new(batch.iter().map(|e| e.at).collect::<Vec<SystemTime>>()),
            Box::new(batch.iter().map(|e| e.actor.clone()).collect::<Vec<String>>()),
            Box::new(batch.iter().map(|e| e.reason.clone()).collect::<Vec<String>>()),
        ];
        let rows = crate::batch::query(db, op, &END_LEASES, columns).await?;
        let ended = rows
            .iter()
            .map(|row| {
                let record = RequestRecord::from_row(op, row)?;
                let prepared: bool =
                    row.try_get("worker_prepared").map_err(|e| DbError::internal(op, e.to_string()))?;
                Ok((record.id, (record, prepared)))
            })
            .collect::<Result<Vec<_>, DbError>>()?;
        Ok(crate::batch::by_key(
            batch,
            ended,
            |e| e.request,
            |e| format!("request {} has no live lease {} while {}", e.request, e.fence, e.from),
        ))
    }
}

/// One call of [`Db::insert_request`].
#[derive(Clone, Debug)]
pub(crate) struct InsertRequest {
    new: NewRequestRecord,
    actor: String,
    bind: Option<(WorkerId, corral_core::SessionId)>,
    /// Made for the call: its row is found again by it.
    token: uuid::Uuid,
    idempotency: Option<Idempotency>,
}

impl crate::batch::Batched for InsertRequest {
    type Output = (RequestRecord, Option<FencingToken>);
    const OP: DatabaseOperation = DatabaseOperation::InsertRequest;

    fn key(&self) -> Option<u128> {
        self.bind.map(|(worker, _)| worker.0.as_u128())
    }

    async fn run(db: &Db, batch: &[InsertRequest]) -> Result<Vec<Result<Self::Output, DbError>>, DbError> {
        let op = Self::OP;
        let groups = |i: &InsertRequest| serde_json::Value::from(groups_to(&i.new.owner_groups));
        let columns: crate::batch::Columns = vec![
            Box::new(batch.iter().map(|i| i.new.owner.clone()).collect::<Vec<String>>()),
            Box::new(batch.iter().map(groups).collect::<Vec<serde_json::Value>>()),
            Box::new(batch.iter().map(|i| i16::from(i.new.priority.get())).collect::<Vec<i16>>()),
            Box::new(batch.iter().map(|i| caps_to_json(&i.new.caps)).collect::<Vec<serde_json::Value>>()),
            Box::new(batch.iter().map(|i| i.new.at).collect::<Vec<SystemTime>>()),
            Box::new(batch.iter().map(|i| i.new.valid_after).collect::<Vec<SystemTime>>()),
            Box::new(batch.iter().map(|i| i.new.deadline).collect::<Vec<SystemTime>>()),
            Box::new(batch.iter().map(|i| millis(i.new.lease)).collect::<Vec<i64>>()),
            Box::new(batch.iter().map(|i| i.new.ssh_public_key.clone()).collect::<Vec<Option<String>>>()),
            Box::new(batch.iter().map(|i| i.actor.clone()).collect::<Vec<String>>()),
            Box::new(batch.iter().map(|i| i.new.key_kind.as_str()).collect::<Vec<&'static str>>()),
            Box::new(batch.iter().map(|i| i.bind.map(|(w, _)| w.0)).collect::<Vec<Option<uuid::Uuid>>>()),
            Box::new(batch.iter().map(|i| i.bind.map(|(_, s)| s.0)).collect::<Vec<Option<uuid::Uuid>>>()),
            Box::new(batch.iter().map(|i| i.new.owner_id.0).collect::<Vec<i64>>()),
            Box::new(batch.iter().map(|i| i.token).collect::<Vec<uuid::Uuid>>()),
            Box::new(
                batch
                    .iter()
                    .map(|i| i.idempotency.as_ref().map(|k| k.key().to_string()))
                    .collect::<Vec<Option<String>>>(),
            ),
            Box::new(
                batch
                    .iter()
                    .map(|i| i.idempotency.as_ref().map(|k| k.digest().to_vec()))
                    .collect::<Vec<Option<Vec<u8>>>>(),
            ),
        ];
        let rows = crate::batch::query(db, op, &INSERT_REQUESTS, columns).await?;
        let mut inserted: Vec<Option<Self::Output>> = vec![None; batch.len()];
        for row in &rows {
            let call: i64 = row.try_get("call").map_err(|e| DbError::internal(op, e.to_string()))?;
            let fence: Option<i64> = row.try_get("bound_fence").map_err(|e| DbError::internal(op, e.to_string()))?;
            let slot = usize::try_from(call - 1).ok().and_then(|i| inserted.get_mut(i));
            let slot = slot.ok_or_else(|| DbError::internal(op, format!("no call {call} in the batch")))?;
            *slot = Some((RequestRecord::from_row(op, row)?, fence.map(FencingToken)));
        }
        Ok(inserted
            .into_iter()
            .map(|outcome| outcome.ok_or_else(|| DbError::internal(op, "a request of the batch was not inserted")))
            .collect())
    }
}

/// What [`Db::submit_request`] stored or found.
#[derive(Clone, Debug)]
pub struct Submitted {
    pub record: RequestRecord,
    /// The fencing token when the request is bound to a worker.
    pub fence: Option<FencingToken>,
    /// The request was stored by an earlier call with the same
    /// idempotency key: nothing was inserted now.
    pub replayed: bool,
}

/// A request to insert.
#[derive(Clone, Debug)]
pub struct NewRequestRecord {
    pub owner: String,
    pub owner_id: UserId,
    pub owner_groups: Groups,
    pub priority: Priority,
    pub caps: Caps,
    pub at: SystemTime,
    pub valid_after: SystemTime,
    pub deadline: SystemTime,
    pub lease: Duration,
    pub ssh_public_key: Option<String>,
    pub key_kind: corral_core::lease::KeyKind,
}

/// A running lease as the dashboard lists it ([`Db::live_leases`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LiveLease {
    pub request: RequestId,
    pub worker: WorkerId,
    pub owner: String,
    pub owner_id: UserId,
    pub expires_at: Option<SystemTime>,
}

/// How binding one request to one worker went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BindOutcome {
    Bound(FencingToken),
    /// The request or the worker was not in the state the matcher believed.
    Refused(String),
}

/// The agent installed the lease key: the lease starts. `Debug` never
/// shows the private key.
#[derive(Clone)]
pub struct StartLease {
    pub request: RequestId,
    pub fence: FencingToken,
    pub at: SystemTime,
    pub expires_at: SystemTime,
    pub key_type: String,
    pub public_key: String,
    /// None when the request brought its own public key.
    pub private_key: Option<String>,
    pub tunnel_port: Option<u16>,
    pub actor: String,
}

impl std::fmt::Debug for StartLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StartLease")
            .field("request", &self.request)
            .field("fence", &self.fence)
            .field("at", &self.at)
            .field("expires_at", &self.expires_at)
            .field("key_type", &self.key_type)
            .field("public_key", &self.public_key)
            .field("private_key", &self.private_key.as_ref().map(|_| "<redacted>"))
            .field("tunnel_port", &self.tunnel_port)
            .field("actor", &self.actor)
            .finish()
    }
}

fn one_request(
    op: DatabaseOperation,
    row: Option<tokio_postgres::Row>,
    what: String,
) -> crate::OpResult<RequestRecord> {
    match row {
        Some(row) => Ok(RequestRecord::from_row(op, &row)?),
        None => Err(DbError::conflict(op, what).into()),
    }
}

/// One statement that changes one request and writes its history row:
/// `UPDATE requests SET {set} WHERE {guard}`, then the history row whose
/// values after `request` (at, from_state, to_state, actor, reason)
/// `history` selects from the changed row `r`; it answers the changed row.
fn request_change(set: &str, guard: &str, history: &str) -> String {
    format!(
        "WITH r AS (UPDATE requests SET {set} WHERE {guard} RETURNING {REQUEST_COLUMNS}),
         h AS (INSERT INTO request_history (request, at, from_state, to_state, actor, reason)
            SELECT id, {history} FROM r)
         SELECT * FROM r"
    )
}

impl Db {
    /// Runs a [`request_change`] statement (prepared once per connection)
    /// with `params`: the changed request, or a conflict saying `refused`
    /// when the guard matched no row.
    async fn change_request(
        &self,
        op: DatabaseOperation,
        statement: &'static str,
        params: crate::batch::Columns,
        refused: String,
    ) -> Result<RequestRecord, DbError> {
        match crate::batch::query(self, op, statement, params).await?.first() {
            Some(row) => RequestRecord::from_row(op, row),
            None => Err(DbError::conflict(op, refused)),
        }
    }

    /// Inserts a request and, when `bind` names a worker and the server's
    /// leading session, binds it to that worker in the same statement (one
    /// commit): the matcher decided for it while it was being submitted.
    /// The binding has the preconditions of [`Db::bind_leases`] (the worker
    /// idle, the session leading); if they fail, the request is inserted
    /// unbound and no fencing token comes back. Calls made at the same time
    /// share one statement ([`crate::batch`]).
    ///
    /// A request's history always starts with `submitted`; its `matched`
    /// row follows in the same `INSERT` (rows are numbered in that order).
    pub async fn insert_request(
        &self,
        new: &NewRequestRecord,
        actor: &str,
        bind: Option<(WorkerId, corral_core::SessionId)>,
    ) -> Result<(RequestRecord, Option<FencingToken>), DbError> {
        let submitted = self.submit_request(new, actor, bind, None).await?;
        Ok((submitted.record, submitted.fence))
    }

    /// [`Db::insert_request`], safe to retry.
    ///
    /// With `idempotency`, the owner's request stored under the same key
    /// answers instead (`replayed`), if its digest is the same; another
    /// digest is a conflict and changes nothing. Two calls with one key at
    /// the same time make one request: the unique index refuses the second
    /// row, which then reads the first. Without a key no query is added.
    ///
    /// A statement whose connection dropped after it was sent
    /// ([`DbError::UnknownOutcome`]) is settled by reading the call's row
    /// back by its token: found, the call succeeded; absent, it runs again
    /// (the token's unique index refuses a row the first run might still
    /// commit).
    pub async fn submit_request(
        &self,
        new: &NewRequestRecord,
        actor: &str,
        bind: Option<(WorkerId, corral_core::SessionId)>,
        idempotency: Option<&Idempotency>,
    ) -> Result<Submitted, DbError> {
        if let Some(key) = idempotency
            && let Some(found) = self.stored_submission(new.owner_id, key).await?
        {
            return Ok(found);
        }
        // Time-ordered, so that the token's unique index grows at its
        // right edge instead of touching a random page per submission.
        let token = uuid::Uuid::now_v7();
        let insert = InsertRequest {
            new: new.clone(),
            actor: actor.to_string(),
            bind,
            token,
            idempotency: idempotency.cloned(),
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            let err = match self.batched(|b| &b.insert_request, insert.clone()).await {
                Ok((record, fence)) => return Ok(Submitted { record, fence, replayed: false }),
                Err(err) => err,
            };
            match err {
                DbError::UnknownOutcome { .. } => {
                    if let Some((record, fence)) = self.request_by_token(token).await? {
                        tracing::info!(request = %record.id, "submission's outcome was unknown; it had committed");
                        return Ok(Submitted { record, fence, replayed: false });
                    }
                    if attempt >= 3 {
                        return Err(err);
                    }
                    tracing::info!(attempt, "submission's outcome was unknown; it had not committed, running it again");
                }
                DbError::Conflict { .. } => {
                    // A retry that raced this one may hold the key, or a
                    // first run whose outcome was unknown the token.
                    if let Some(key) = idempotency
                        && let Some(found) = self.request_by_key(new.owner_id, key).await?
                    {
                        return replay(key, found);
                    }
                    if attempt > 1
                        && let Some((record, fence)) = self.request_by_token(token).await?
                    {
                        return Ok(Submitted { record, fence, replayed: false });
                    }
                    return Err(err);
                }
                err => return Err(err),
            }
        }
    }

    /// The answer to a retry of a submission stored under `key` by
    /// `owner`, if there is one (`replayed`); a conflict if it was stored
    /// with another body. [`Db::submit_request`] looks first too; callers
    /// ask before it when a retry must not meet checks that the first call
    /// passed (a limit it now counts towards).
    pub async fn stored_submission(&self, owner: UserId, key: &Idempotency) -> Result<Option<Submitted>, DbError> {
        match self.request_by_key(owner, key).await? {
            Some(found) => replay(key, found).map(Some),
            None => Ok(None),
        }
    }

    /// The owner's request stored under `key`, with its digest and the
    /// fencing token of its live lease.
    async fn request_by_key(
        &self,
        owner: UserId,
        key: &Idempotency,
    ) -> Result<Option<(RequestRecord, Option<FencingToken>, Vec<u8>)>, DbError> {
        let op = DatabaseOperation::GetRequest;
        let name = key.key().to_string();
        self.run(op, move |client| {
            let name = name.clone();
            Box::pin(async move {
                let stmt = client
                    .prepare_cached(&format!(
                        "SELECT {REQUEST_COLUMNS}, request_digest,
                            (SELECT fence FROM leases WHERE request = requests.id AND ended_at IS NULL) AS bound_fence
                         FROM requests WHERE owner_id = $1 AND idempotency_key = $2"
                    ))
                    .await?;
                let Some(row) = client.query_opt(&stmt, &[&owner.0, &name]).await? else {
                    return Ok(None);
                };
                let digest: Option<Vec<u8>> =
                    row.try_get("request_digest").map_err(|e| DbError::internal(op, e.to_string()))?;
                let fence: Option<i64> =
                    row.try_get("bound_fence").map_err(|e| DbError::internal(op, e.to_string()))?;
                Ok(Some((RequestRecord::from_row(op, &row)?, fence.map(FencingToken), digest.unwrap_or_default())))
            })
        })
        .await
    }

    /// The request a submission call stored, by the call's token.
    async fn request_by_token(
        &self,
        token: uuid::Uuid,
    ) -> Result<Option<(RequestRecord, Option<FencingToken>)>, DbError> {
        let op = DatabaseOperation::GetRequest;
        self.run(op, move |client| {
            Box::pin(async move {
                let row = client
                    .query_opt(
                        &format!(
                            "SELECT {REQUEST_COLUMNS},
                                (SELECT fence FROM leases WHERE request = requests.id AND ended_at IS NULL) AS bound_fence
                             FROM requests WHERE submission_token = $1"
                        ),
                        &[&token],
                    )
                    .await?;
                let Some(row) = row else { return Ok(None) };
                let fence: Option<i64> =
                    row.try_get("bound_fence").map_err(|e| DbError::internal(op, e.to_string()))?;
                Ok(Some((RequestRecord::from_row(op, &row)?, fence.map(FencingToken))))
            })
        })
        .await
    }

    pub async fn get_request(&self, id: RequestId) -> Result<Option<RequestRecord>, DbError> {
        let op = DatabaseOperation::GetRequest;
        self.run(op, move |client| {
            Box::pin(async move {
                let stmt =
                    client.prepare_cached(&format!("SELECT {REQUEST_COLUMNS} FROM requests WHERE id = $1")).await?;
                let row = client.query_opt(&stmt, &[&id.0]).await?;
                Ok(row.map(|r| RequestRecord::from_row(op, &r)).transpose()?)
            })
        })
        .await
    }

    pub async fn list_requests(&self, filter: &RequestFilter) -> Result<Vec<RequestRecord>, DbError> {
        let op = DatabaseOperation::ListRequests;
        let filter = filter.clone();
        self.run(op, move |client| {
            let f = filter.clone();
            Box::pin(async move {
                let states: Vec<&str> = f.states.iter().map(|s| s.as_str()).collect();
                let stmt = client
                    .prepare_cached(&format!(
                        "SELECT {REQUEST_COLUMNS} FROM requests
                         WHERE ($1::text IS NULL OR owner = $1)
                           AND (cardinality($2::text[]) = 0 OR state = ANY($2))
                           AND ($3::smallint IS NULL OR priority = $3)
                           AND ($4::bigint IS NULL OR id < $4)
                           AND ($6::bigint IS NULL OR owner_id = $6)
                           AND ($7::bigint[] IS NULL OR id = ANY($7))
                         ORDER BY id DESC LIMIT $5"
                    ))
                    .await?;
                let rows = client
                    .query(
                        &stmt,
                        &[
                            &f.owner,
                            &states,
                            &f.priority.map(|p| i16::from(p.get())),
                            &f.before.map(|b| b.0),
                            &i64::from(f.limit),
                            &f.owner_id.map(|o| o.0),
                            &f.ids.as_ref().map(|ids| ids.iter().map(|id| id.0).collect::<Vec<i64>>()),
                        ],
                    )
                    .await?;
                Ok(rows.iter().map(|r| RequestRecord::from_row(op, r)).collect::<Result<_, _>>()?)
            })
        })
        .await
    }

    pub async fn request_history(&self, id: RequestId) -> Result<Vec<HistoryRecord>, DbError> {
        let query =
            "SELECT at, from_state, to_state, actor, reason FROM request_history WHERE request = $1 ORDER BY id";
        self.history(DatabaseOperation::RequestHistory, query, id.0).await
    }

    /// Changes priority and schedule of a waiting request.
    pub async fn update_request(
        &self,
        id: RequestId,
        priority: Priority,
        valid_after: SystemTime,
        deadline: SystemTime,
        at: SystemTime,
        actor: &str,
    ) -> Result<RequestRecord, DbError> {
        static UPDATE: LazyLock<String> = LazyLock::new(|| {
            request_change(
                "priority = $2, valid_after = $3, deadline = $4, updated_at = $5",
                "id = $1 AND state = 'waiting' AND worker IS NULL",
                "$5, 'waiting', 'waiting', $6,
                    'updated: priority ' || priority || ', valid_after ' || valid_after || ', deadline ' || deadline",
            )
        });
        let params: crate::batch::Columns = vec![
            Box::new(id.0),
            Box::new(i16::from(priority.get())),
            Box::new(valid_after),
            Box::new(deadline),
            Box::new(at),
            Box::new(actor.to_string()),
        ];
        let refused = format!("request {id} is no longer waiting");
        self.change_request(DatabaseOperation::UpdateRequest, &UPDATE, params, refused).await
    }

    /// Moves an unbound request from `from` to `to` (cancel, timeout,
    /// invalid while waiting).
    pub async fn request_transition(
        &self,
        id: RequestId,
        from: RequestState,
        to: RequestState,
        at: SystemTime,
        actor: &str,
        reason: &str,
    ) -> Result<RequestRecord, DbError> {
        static TRANSITION: LazyLock<String> = LazyLock::new(|| {
            request_change(
                "state = $3, updated_at = $4, reason = $6",
                "id = $1 AND state = $2 AND worker IS NULL",
                "$4, $2, $3, $5, $6",
            )
        });
        let params: crate::batch::Columns = vec![
            Box::new(id.0),
            Box::new(from.as_str()),
            Box::new(to.as_str()),
            Box::new(at),
            Box::new(actor.to_string()),
            Box::new(reason.to_string()),
        ];
        let refused = format!("request {id} is not {from} and unbound");
        self.change_request(DatabaseOperation::RequestTransition, &TRANSITION, params, refused).await
    }

    /// The live (waiting or in-progress) requests of one owner.
    pub async fn live_requests_of(&self, owner: UserId) -> Result<Vec<RequestId>, DbError> {
        self.run(DatabaseOperation::ListRequests, move |client| {
            Box::pin(async move {
                let rows = client
                    .query(
                        "SELECT id FROM requests WHERE owner_id = $1 AND state IN ('waiting', 'in_progress') ORDER BY id",
                        &[&owner.0],
                    )
                    .await?;
                Ok(rows.iter().map(|r| RequestId(r.get(0))).collect())
            })
        })
        .await
    }

    /// Waiting requests in the matcher's order (priority, then id), each
    /// with its 1-based position among all waiting requests; only those of
    /// `owner` when given; positions after `after`; at most `limit`.
    pub async fn waiting_queue(
        &self,
        owner: Option<UserId>,
        after: i64,
        limit: u32,
    ) -> Result<Vec<(i64, RequestRecord)>, DbError> {
        let op = DatabaseOperation::ListRequests;
        self.run(op, move |client| {
            Box::pin(async move {
                let stmt = client
                    .prepare_cached(&format!(
                        "SELECT position, {REQUEST_COLUMNS} FROM (
                           SELECT *, row_number() OVER (ORDER BY priority, id) AS position
                           FROM requests WHERE state = 'waiting') AS queue
                         WHERE ($1::bigint IS NULL OR owner_id = $1) AND position > $2
                         ORDER BY position LIMIT $3"
                    ))
                    .await?;
                let rows = client.query(&stmt, &[&owner.map(|o| o.0), &after, &i64::from(limit)]).await?;
                rows.iter()
                    .map(|row| {
                        let position: i64 = row.try_get(0).map_err(|e| DbError::internal(op, e.to_string()))?;
                        Ok((position, RequestRecord::from_row(op, row)?))
                    })
                    .collect()
            })
        })
        .await
    }

    /// Every running lease: request, worker, owner (name and identity)
    /// and expiry, in one query (the dashboard's holder column).
    pub async fn live_leases(&self) -> Result<Vec<LiveLease>, DbError> {
        let op = DatabaseOperation::ListRequests;
        self.run(op, move |client| {
            Box::pin(async move {
                let rows = client
                    .query(
                        "SELECT id, worker, owner, owner_id, lease_expires_at FROM requests
                         WHERE state = 'in_progress' AND worker IS NOT NULL ORDER BY id",
                        &[],
                    )
                    .await?;
                let get = |e: tokio_postgres::Error| DbError::internal(op, e.to_string());
                rows.iter()
                    .map(|r| {
                        let owner_id: Option<i64> = r.try_get(3).map_err(get)?;
                        Ok(LiveLease {
                            request: RequestId(r.try_get(0).map_err(get)?),
                            worker: WorkerId(r.try_get(1).map_err(get)?),
                            owner: r.try_get(2).map_err(get)?,
                            owner_id: UserId(owner_id.unwrap_or(0)),
                            expires_at: r.try_get(4).map_err(get)?,
                        })
                    })
                    .collect()
            })
        })
        .await
    }

    /// Owner and lease expiry of each of `ids` that exists, in one query
    /// (`explain` names who holds the workers a request waits for).
    pub async fn lease_holders(
        &self,
        ids: &[RequestId],
    ) -> Result<std::collections::HashMap<RequestId, (UserId, Option<SystemTime>)>, DbError> {
        let ids: Vec<i64> = ids.iter().map(|r| r.0).collect();
        self.run(DatabaseOperation::ListRequests, move |client| {
            let ids = ids.clone();
            Box::pin(async move {
                let rows = client
                    .query("SELECT id, owner_id, lease_expires_at FROM requests WHERE id = ANY($1)", &[&ids])
                    .await?;
                Ok(rows
                    .iter()
                    .map(|r| {
                        let owner: Option<i64> = r.get(1);
                        (RequestId(r.get(0)), (UserId(owner.unwrap_or(0)), r.get(2)))
                    })
                    .collect())
            })
        })
        .await
    }

    pub async fn load_live_requests(&self) -> Result<Vec<RequestRecord>, DbError> {
        let op = DatabaseOperation::LoadLiveRequests;
        self.run(op, move |client| {
            Box::pin(async move {
                let rows = client
                    .query(
                        &format!(
                            "SELECT {REQUEST_COLUMNS} FROM requests WHERE state IN ('waiting', 'in_progress') ORDER BY id"
                        ),
                        &[],
                    )
                    .await?;
                Ok(rows.iter().map(|r| RequestRecord::from_row(op, r)).collect::<Result<_, _>>()?)
            })
        })
        .await
    }

    /// Binds requests to workers in one statement (one commit for the
    /// whole batch). Each binding needs the request waiting and unbound
    /// and the worker idle; it moves the worker to running, raises its
    /// fencing token and creates the lease row. A binding whose
    /// preconditions fail is refused without affecting the others. The
    /// batch must not name a request or a worker twice.
    ///
    /// `leader` is the binding server's session: if it no longer leads
    /// (another replica took over), nothing is bound.
    ///
    /// The guards include every rule the lease row must keep (the request
    /// has no lease row, the worker no live lease and no lease with its
    /// next fencing token), so a pair whose rows disagree with each other
    /// (an idle worker holding a live lease, left by a crashed actor) is
    /// refused like any other, instead of failing the whole statement; the
    /// refusal hands the worker to repair ([`Db::end_stale_leases`]).
    ///
    /// Each pair's rows are read by primary key only (`LATERAL ... OFFSET
    /// 0`): left free, the planner took a generic plan made while the table
    /// was small and scanned every `waiting` entry of a state index, dead
    /// ones included, at every call.
    ///
    /// The arrays are unnested through scalar subqueries so that the
    /// planner cannot see their length: with the length in sight, a plan
    /// made for the batch at hand always looked cheaper than the cached
    /// generic one, and PostgreSQL planned the statement afresh at every
    /// call (0.8 ms, as long as executing it; `pg_stat_statements` counted
    /// one plan per call). Now the cached plan is used after the first few.
    /// The updates name their rows with `= ANY` of the same arrays as well:
    /// joined to `ok` alone, the cached plan hashed a sequential scan of
    /// the whole workers table (a few hundred rows and their dead versions)
    /// at every binding.
    pub async fn bind_leases(
        &self,
        batch: &[(RequestId, WorkerId)],
        at: SystemTime,
        leader: corral_core::SessionId,
    ) -> Result<Vec<BindOutcome>, DbError> {
        let op = DatabaseOperation::BindLeases;
        let requests: Vec<i64> = batch.iter().map(|(r, _)| r.0).collect();
        let workers: Vec<uuid::Uuid> = batch.iter().map(|(_, w)| w.0).collect();
        let rows = self
            .run(op, move |client| {
                let (requests, workers) = (requests.clone(), workers.clone());
                Box::pin(async move {
                    let stmt = client.prepare_cached(&BIND_LEASES).await?;
                    Ok(client.query(&stmt, &[&requests, &workers, &at, &leader.0]).await?)
                })
            })
            .await?;
        let bound: std::collections::HashMap<i64, i64> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        Ok(batch
            .iter()
            .map(|(request, worker)| match bound.get(&request.0) {
                Some(fence) => BindOutcome::Bound(FencingToken(*fence)),
                None => BindOutcome::Refused(format!(
                    "request {request} is not waiting unbound or worker {worker} is not idle"
                )),
            })
            .collect())
    }

    /// Repair of a worker that is idle in the database yet holds a live
    /// lease row (left by an actor that died between the two changes).
    /// A stale lease whose request is over is ended here with `reason`,
    /// its private key erased, and the worker's history records it
    /// (`actor`); one whose request is still live is left to that
    /// request, which must be told it lost its lease. Does nothing unless
    /// the worker is idle. Answers each stale lease's request and fence,
    /// and whether it was ended here.
    pub async fn end_stale_leases(
        &self,
        worker: WorkerId,
        at: SystemTime,
        actor: &str,
        reason: &str,
    ) -> Result<Vec<(RequestId, FencingToken, bool)>, DbError> {
        let op = DatabaseOperation::EndStaleLeases;
        let (actor, reason) = (actor.to_string(), reason.to_string());
        let rows = self
            .run(op, move |client| {
                let (actor, reason) = (actor.clone(), reason.clone());
                Box::pin(async move {
                    Ok(client
                        .query(
                            "WITH stale AS (
                                SELECT leases.request, leases.fence, r.state IN ('waiting', 'in_progress') AS live
                                FROM leases JOIN requests r ON r.id = leases.request
                                WHERE leases.worker = $1 AND leases.ended_at IS NULL
                                    AND (SELECT state FROM workers WHERE uuid = $1) = 'idle'),
                             l AS (
                                UPDATE leases SET ended_at = $2, end_reason = $4, private_key = NULL
                                FROM stale WHERE leases.request = stale.request AND NOT stale.live
                                RETURNING leases.request),
                             h AS (
                                INSERT INTO worker_history (worker, at, from_state, to_state, actor, reason)
                                SELECT $1, $2, 'idle', 'idle', $3,
                                    'ended stale lease of request ' || request || ': ' || $4 FROM l)
                             SELECT request, fence, NOT live FROM stale",
                            &[&worker.0, &at, &actor, &reason],
                        )
                        .await?)
                })
            })
            .await?;
        Ok(rows.iter().map(|r| (RequestId(r.get(0)), FencingToken(r.get(1)), r.get(2))).collect())
    }

    /// The key is installed: the request goes in_progress. Calls made at
    /// the same time share one statement ([`crate::batch`]).
    pub async fn start_lease(&self, start: &StartLease) -> Result<RequestRecord, DbError> {
        self.batched(|b| &b.start_lease, start.clone()).await
    }

    /// Ends the lease of `request` (fencing token `fence`) and moves the
    /// request to `to`: done or failed from in_progress, cancelled from
    /// waiting (bound, key not installed yet). The private key is erased.
    ///
    /// In the same statement (one commit instead of two), the worker goes
    /// from running to prepare (SPEC §2: keys are revoked, the worker is
    /// prepared again) if it still runs this lease and no drain is pending;
    /// the second value says whether it did. Otherwise (it failed or went
    /// busy meanwhile, or it drains) the worker actor decides. The worker
    /// is named by a scalar subquery, not a join, so that the cached plan
    /// reads it by primary key rather than hashing a scan of the table.
    /// Calls made at the same time share one statement ([`crate::batch`]).
    #[allow(clippy::too_many_arguments)]
    pub async fn end_lease(
        &self,
        request: RequestId,
        fence: FencingToken,
        from: RequestState,
        to: RequestState,
        at: SystemTime,
        actor: &str,
        reason: &str,
    ) -> Result<(RequestRecord, bool), DbError> {
        let end = EndLease { request, fence, from, to, at, actor: actor.to_string(), reason: reason.to_string() };
        self.batched(|b| &b.end_lease, end).await
    }

    /// The worker was lost before the lease started: end the lease and put
    /// the request back in the queue.
    pub async fn unbind(
        &self,
        request: RequestId,
        fence: FencingToken,
        at: SystemTime,
        actor: &str,
        reason: &str,
    ) -> Result<RequestRecord, DbError> {
        static UNBIND: LazyLock<String> = LazyLock::new(|| {
            request_change(
                "worker = NULL, updated_at = $2",
                "id = $1 AND state = 'waiting'",
                "$2, 'waiting', 'waiting', $3, $4",
            )
        });
        let op = DatabaseOperation::Unbind;
        let (actor, reason) = (actor.to_string(), reason.to_string());
        self.run(op, move |client| {
            let (actor, reason) = (actor.clone(), reason.clone());
            Box::pin(async move {
                let tx = client.transaction().await?;
                // The request may be bound again and the lease table is keyed
                // by request, so the aborted lease row goes; the history rows
                // keep the record.
                let n = tx
                    .execute(
                        "DELETE FROM leases WHERE request = $1 AND fence = $2 AND ended_at IS NULL AND started_at IS NULL",
                        &[&request.0, &fence.0],
                    )
                    .await?;
                if n != 1 {
                    return Err(DbError::conflict(op, format!("request {request} has no pending lease {fence}")).into());
                }
                let reason = format!("back in the queue: {reason}");
                let stmt = tx.prepare_cached(&UNBIND).await?;
                let row = tx.query_opt(&stmt, &[&request.0, &at, &actor, &reason]).await?;
                let record = one_request(op, row, format!("request {request} is not waiting"))?;
                tx.commit().await?;
                Ok(record)
            })
        })
        .await
    }

    pub async fn prolong(
        &self,
        request: RequestId,
        expires_at: SystemTime,
        at: SystemTime,
        actor: &str,
    ) -> Result<RequestRecord, DbError> {
        static PROLONG: LazyLock<String> = LazyLock::new(|| {
            request_change(
                "lease_expires_at = $2, updated_at = $3",
                "id = $1 AND state = 'in_progress'",
                "$3, 'in_progress', 'in_progress', $4, 'lease prolonged until ' || $2",
            )
        });
        let params: crate::batch::Columns =
            vec![Box::new(request.0), Box::new(expires_at), Box::new(at), Box::new(actor.to_string())];
        let refused = format!("request {request} is not in progress");
        self.change_request(DatabaseOperation::Prolong, &PROLONG, params, refused).await
    }

    pub async fn load_live_leases(&self) -> Result<Vec<LeaseRecord>, DbError> {
        let op = DatabaseOperation::LoadLiveLeases;
        self.run(op, move |client| {
            Box::pin(async move {
                let rows = client
                    .query(&format!("SELECT {LEASE_COLUMNS} FROM leases WHERE ended_at IS NULL ORDER BY request"), &[])
                    .await?;
                Ok(rows.iter().map(|r| LeaseRecord::from_row(op, r)).collect::<Result<_, _>>()?)
            })
        })
        .await
    }
}

/// The answer to a retry with `key` that found `found` stored under it.
fn replay(key: &Idempotency, found: (RequestRecord, Option<FencingToken>, Vec<u8>)) -> Result<Submitted, DbError> {
    let (record, fence, digest) = found;
    if digest != *key.digest() {
        return Err(DbError::conflict(
            DatabaseOperation::InsertRequest,
            format!(
                "Idempotency-Key {:?} was used for request {} with another body; use a new key for a new request",
                key.key(),
                record.id
            ),
        ));
    }
    Ok(Submitted { record, fence, replayed: true })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The binding, the start and the end of a lease write the moves of
    /// core's tables, guarded by the state they leave.
    #[test]
    fn the_lease_statements_write_the_moves_of_cores_tables() {
        assert_eq!((LEASED.from.as_str(), LEASED.to.as_str()), ("idle", "running"));
        assert_eq!((STARTED.from.as_str(), STARTED.to.as_str()), ("waiting", "in_progress"));
        assert_eq!((LEASE_ENDED.from.as_str(), LEASE_ENDED.to.as_str()), ("running", "prepare"));
        for binding in [&*INSERT_REQUESTS, &*BIND_LEASES] {
            assert!(binding.contains("SET state = 'running'"), "{binding}");
            assert!(binding.contains("state = 'idle' AND w"), "{binding}");
            assert!(binding.contains("'idle', 'running', 'matcher'"), "{binding}");
        }
        assert!(START_LEASES.contains("q.state = 'waiting'"));
        assert!(START_LEASES.contains("SET state = 'in_progress'"));
        assert!(START_LEASES.contains("'waiting', 'in_progress', started_by"));
        assert!(END_LEASES.contains("SET state = 'prepare'"));
        assert!(END_LEASES.contains("workers.state = 'running'"));
        assert!(END_LEASES.contains("'running', 'prepare', 'server'"));
    }
}
