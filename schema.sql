-- The corral schema: what a fresh (empty) database is given, in one
-- transaction, at its first start; it is then stamped with the newest
-- migration's version. An existing database is brought to this same shape
-- by the numbered migrations in db/migrations/ instead (db/src/migrate.rs;
-- db/tests/migrations.rs compares the two catalogs). So a change here is
-- always made together with a new migration that makes the same change.
-- It aims to stay within the SQL subset CockroachDB also runs (untested:
-- CockroachDB cannot be installed here): no LISTEN/NOTIFY, no advisory
-- locks for correctness, no triggers.
--
-- Safety lives here, not only in the actors:
--   * a worker is in at most one live lease   (leases_one_live_per_worker)
--   * a request is bound to at most one worker (leases primary key)
--   * a tunnel port serves at most one live lease (leases_one_live_per_port)
--   * every lease carries the worker's fencing token, unique per worker.

CREATE TABLE users (
    name        TEXT PRIMARY KEY,
    role        TEXT NOT NULL CHECK (role IN ('user', 'admin', 'agent')),
    groups      TEXT[] NOT NULL DEFAULT '{}',
    -- SHA-256 of the bearer token; the token itself is never stored.
    token_hash  BYTEA NOT NULL UNIQUE,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- The user's identity (see "Identities" below); its name may be reused
    -- by another user later.
    id          BIGSERIAL
);
CREATE UNIQUE INDEX users_by_id ON users (id);

-- BMDB-style liveness: a component is alive while its session's deadline,
-- set from the database clock and pushed forward by heartbeats, is in the
-- future. The reaper deletes expired sessions; their work locks go in the
-- same transaction.
CREATE TABLE sessions (
    id          UUID PRIMARY KEY,
    component   TEXT NOT NULL CHECK (component IN ('agent', 'server')),
    -- agent host name, or server replica name
    name        TEXT NOT NULL,
    -- the user (role agent) whose token opened it
    principal   TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    timeout_ms  BIGINT NOT NULL CHECK (timeout_ms > 0),
    deadline    TIMESTAMPTZ NOT NULL,
    -- users.id of the principal (0: it was gone before ids existed)
    principal_id BIGINT
);

-- What happened to sessions: opened, heartbeat lost (expired), closed.
CREATE TABLE session_history (
    id          BIGSERIAL PRIMARY KEY,
    session     UUID NOT NULL,
    component   TEXT NOT NULL,
    name        TEXT NOT NULL,
    at          TIMESTAMPTZ NOT NULL,
    event       TEXT NOT NULL CHECK (event IN ('opened', 'expired', 'closed')),
    reason      TEXT NOT NULL
);

CREATE TABLE workers (
    uuid        UUID PRIMARY KEY,
    -- host name of the agent that registered it; another agent cannot
    -- claim it while it is registered.
    agent       TEXT NOT NULL,
    session     UUID REFERENCES sessions (id) ON DELETE SET NULL,
    state       TEXT NOT NULL CHECK (state IN ('maintenance', 'prepare', 'idle', 'running', 'failed', 'busy')),
    caps        JSONB NOT NULL,
    groups      TEXT[] NOT NULL DEFAULT '{}',
    ssh_addr    TEXT NOT NULL,
    ssh_user    TEXT NOT NULL,
    host_key    TEXT,
    reason      TEXT,
    state_since TIMESTAMPTZ NOT NULL,
    last_seen   TIMESTAMPTZ,
    last_used   TIMESTAMPTZ,
    -- fencing token: raised at every lease
    fence       BIGINT NOT NULL DEFAULT 0,
    -- an admin asked for maintenance after the running lease ends
    drain       BOOLEAN NOT NULL DEFAULT false,
    drain_reason TEXT,
    -- The agent principal (users.id) that registered the worker: another
    -- agent token cannot claim it (an admin hands it over).
    principal   BIGINT,
    -- The latest facts its agent observed (the interrogate hook's JSON
    -- object, bounded like caps) and when; written when they change, at
    -- most once a minute unless the dimensions changed (migration 0002).
    facts       JSONB NOT NULL DEFAULT '{}',
    facts_at    TIMESTAMPTZ,
    -- The facts the agent marks as dimensions (string -> string): merged
    -- under the configured caps into the caps requests match on.
    dimensions  JSONB NOT NULL DEFAULT '{}',
    -- An admin's note on the worker, who wrote it and when.
    note        TEXT,
    note_by     TEXT,
    note_at     TIMESTAMPTZ,
    -- Holds that keep an idle worker out of matching, each with its reason
    -- and time: quarantine (an admin, or too many failed preparations in a
    -- row; only an admin clears it) and recovery (set and cleared from the
    -- facts, e.g. a battery charging).
    quarantine  TEXT,
    quarantine_by TEXT,
    quarantine_at TIMESTAMPTZ,
    recovery    TEXT,
    recovery_at TIMESTAMPTZ,
    -- The hooks its agent says it has (NULL: an older agent that does not
    -- say), and the on-demand process running on it besides its state's
    -- own (a power cycle): statements that would start a conflicting
    -- process (a binding, entering prepare or busy, the end of a lease
    -- moving it to prepare, deregistering) require it NULL on this row, so
    -- the row lock orders them against the power cycle's start.
    hooks       TEXT[],
    work        TEXT CHECK (work IN ('power_cycle'))
);

CREATE TABLE worker_history (
    id          BIGSERIAL PRIMARY KEY,
    worker      UUID NOT NULL,
    at          TIMESTAMPTZ NOT NULL,
    from_state  TEXT,
    to_state    TEXT NOT NULL,
    actor       TEXT NOT NULL,
    reason      TEXT NOT NULL
);
CREATE INDEX worker_history_by_worker ON worker_history (worker, id);

CREATE TABLE requests (
    id               BIGSERIAL PRIMARY KEY,
    owner            TEXT NOT NULL,
    -- the owner's groups when it was submitted (matching uses them)
    owner_groups     TEXT[] NOT NULL DEFAULT '{}',
    state            TEXT NOT NULL CHECK (state IN ('waiting', 'in_progress', 'cancelled', 'timeout', 'invalid', 'done', 'failed')),
    priority         SMALLINT NOT NULL CHECK (priority BETWEEN 1 AND 16),
    caps             JSONB NOT NULL,
    created_at       TIMESTAMPTZ NOT NULL,
    valid_after      TIMESTAMPTZ NOT NULL,
    deadline         TIMESTAMPTZ NOT NULL,
    lease_ms         BIGINT NOT NULL CHECK (lease_ms > 0),
    ssh_public_key   TEXT,
    -- key pair made for the lease when it brings no public key
    key_type         TEXT NOT NULL DEFAULT 'ed25519' CHECK (key_type IN ('ed25519', 'rsa')),
    -- the worker it is bound to, from the match on (kept after the end)
    worker           UUID,
    lease_expires_at TIMESTAMPTZ,
    reason           TEXT,
    updated_at       TIMESTAMPTZ NOT NULL,
    -- users.id of the owner (0: the owner was gone before ids existed)
    owner_id         BIGINT,
    -- Idempotent submissions (issue 14): the client's Idempotency-Key,
    -- unique per owner, with the SHA-256 of what it asked for (a retry
    -- with the same key and body gets the first request back, another body
    -- gets 409); and a token made for every call, so that a submission
    -- whose answer was lost is settled by reading it back, and a second
    -- run of it can never make a second row.
    idempotency_key  TEXT,
    request_digest   BYTEA,
    submission_token UUID,
    CHECK (valid_after < deadline),
    CHECK (state <> 'in_progress' OR (worker IS NOT NULL AND lease_expires_at IS NOT NULL))
);
-- Every time a user sends is between 1970 and 9999 and a lease is at most
-- 100 years (SPEC §12; corral_core::time). The server checks first; this
-- is the last line. NOT VALID, also in a fresh database, so that it is the
-- same as an upgraded one: there, rows an older server stored are kept
-- (formatting them clamps into the range). New and updated rows are
-- checked either way.
ALTER TABLE requests ADD CONSTRAINT requests_times_in_range CHECK (
    valid_after >= TIMESTAMPTZ '1970-01-01 00:00:00+00'
    AND deadline < TIMESTAMPTZ '10000-01-01 00:00:00+00'
    AND (lease_expires_at IS NULL OR lease_expires_at < TIMESTAMPTZ '10000-01-01 00:00:00+00')
    AND lease_ms <= 3155760000000
) NOT VALID;
CREATE INDEX requests_live ON requests (id) WHERE state IN ('waiting', 'in_progress');
CREATE INDEX requests_by_owner ON requests (owner, id);
CREATE INDEX requests_by_owner_id ON requests (owner_id, id);
CREATE UNIQUE INDEX requests_by_idempotency_key ON requests (owner_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE UNIQUE INDEX requests_by_submission_token ON requests (submission_token);
-- No index on state alone: every transition would update it (no HOT
-- update), and generic plans of the per-lease statements chose it and read
-- thousands of dead entries per call. Listing by state walks the primary
-- key backwards.

CREATE TABLE request_history (
    id          BIGSERIAL PRIMARY KEY,
    request     BIGINT NOT NULL,
    at          TIMESTAMPTZ NOT NULL,
    from_state  TEXT,
    to_state    TEXT NOT NULL,
    actor       TEXT NOT NULL,
    reason      TEXT NOT NULL
);
CREATE INDEX request_history_by_request ON request_history (request, id);

-- The binding of a request to a worker. Created by the matcher (the key is
-- being installed), confirmed when the agent installed it (the request is
-- then in_progress), ended when the lease ends for any reason.
CREATE TABLE leases (
    request      BIGINT PRIMARY KEY REFERENCES requests (id),
    worker       UUID NOT NULL,
    fence        BIGINT NOT NULL,
    bound_at     TIMESTAMPTZ NOT NULL,
    started_at   TIMESTAMPTZ,
    ended_at     TIMESTAMPTZ,
    end_reason   TEXT,
    tunnel_port  INTEGER,
    key_type     TEXT,
    public_key   TEXT,
    -- erased when the lease ends
    private_key  TEXT,
    UNIQUE (worker, fence),
    CHECK (ended_at IS NULL OR private_key IS NULL)
);
CREATE UNIQUE INDEX leases_one_live_per_worker ON leases (worker) WHERE ended_at IS NULL;
CREATE UNIQUE INDEX leases_one_live_per_port ON leases (tunnel_port) WHERE ended_at IS NULL;

-- "Session S is doing process P on worker W". At most one per (worker,
-- process); removed with the session. A lock always takes its session from
-- the worker row it updates in the same statement, and deleting a session
-- first clears `workers.session` (ON DELETE SET NULL, which waits for those
-- statements), then deletes the session's locks in a later statement of its
-- transaction (and start-up releases any lock left without its session). So
-- `session` needs no foreign key: its check took a shared lock on the
-- agent's one session row at every lease and every prepare, and all of an
-- agent's backends queued on that row (multixacts).
CREATE TABLE work_locks (
    worker      UUID NOT NULL,
    process     TEXT NOT NULL CHECK (process IN ('prepare', 'lease', 'maintenance', 'health_check', 'power_cycle')),
    session     UUID NOT NULL,
    acquired_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (worker, process),
    -- Who holds it (`user:NAME` for a power cycle asked for on demand; NULL
    -- for the locks of the worker's own states, held by its agent session).
    holder      TEXT
);

-- Failure backoff for repeated work on a worker: after a failure the same
-- process is not retried before retry_after; the delay doubles per failure.
CREATE TABLE work_backoff (
    worker      UUID NOT NULL,
    process     TEXT NOT NULL,
    failures    INTEGER NOT NULL,
    retry_after TIMESTAMPTZ NOT NULL,
    last_error  TEXT NOT NULL,
    PRIMARY KEY (worker, process)
);

-- The one server replica that leads scheduling, by its session: the row
-- goes with the session, so a standby takes over when the leader's session
-- expires. Bindings check it (fencing against a deposed leader).
CREATE TABLE leader (
    id          SMALLINT PRIMARY KEY CHECK (id = 1),
    session     UUID NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    since       TIMESTAMPTZ NOT NULL
);

-- Server-wide facts that must survive restarts (first-start bootstrap done).
CREATE TABLE settings (
    key         TEXT PRIMARY KEY,
    value       TEXT NOT NULL
);

-- Identities that are not names (issue 13). A user deleted and created
-- again under the same name is another user: requests belong to their
-- owner's id (requests.owner_id), agent sessions and workers to their
-- principal's id (sessions.principal_id, workers.principal). Rows from
-- before these columns were backfilled by name (migration 0001); a request
-- whose owner was already gone got owner_id 0, which no user has, so a
-- later user of that name never inherits it. A worker without a principal
-- (it had no live session at the upgrade) is bound to the first agent
-- principal that registers it.

-- Every admin action (migration 0002): who, what, on what, from which
-- address, when, and how it ended. The row is written before the action
-- runs (outcome 'pending') and given its outcome after it: 'done', or
-- 'refused' (a 4xx answer: nothing changed), or 'failed' (a 5xx answer).
-- A row left 'pending' is an action whose outcome the server never saw (it
-- stopped meanwhile).
CREATE TABLE audit (
    id          BIGSERIAL PRIMARY KEY,
    at          TIMESTAMPTZ NOT NULL,
    -- the admin's name and users.id
    actor       TEXT NOT NULL,
    actor_id    BIGINT NOT NULL,
    -- what was done (worker.state, user.create, ...) and to what
    action      TEXT NOT NULL,
    target      TEXT NOT NULL,
    -- the peer address of the HTTP request
    address     TEXT,
    -- what was asked (the body's relevant fields), then the outcome's message
    detail      TEXT NOT NULL,
    outcome     TEXT NOT NULL CHECK (outcome IN ('pending', 'done', 'refused', 'failed')),
    message     TEXT
);
