-- Migration 1: any corral database made before the schema was versioned
-- (by the schema.sql of any commit before this file) -> version 1.
--
-- Before versioning, schema.sql ran at every start, idempotently, and
-- carried its own upgrade patches. This file is that last schema.sql with
-- everything an older one lacked added idempotently: every CREATE is
-- IF NOT EXISTS, every added column ADD COLUMN IF NOT EXISTS, and the
-- patches (a dropped foreign key and index, a CHECK added NOT VALID, the
-- backfills of the id columns) run here once, no longer at every start.
-- It runs in one transaction, under the migration lock (db/src/migrate.rs).

CREATE TABLE IF NOT EXISTS users (
    name        TEXT PRIMARY KEY,
    role        TEXT NOT NULL CHECK (role IN ('user', 'admin', 'agent')),
    groups      TEXT[] NOT NULL DEFAULT '{}',
    -- SHA-256 of the bearer token; the token itself is never stored.
    token_hash  BYTEA NOT NULL UNIQUE,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- BMDB-style liveness: a component is alive while its session's deadline,
-- set from the database clock and pushed forward by heartbeats, is in the
-- future. The reaper deletes expired sessions; their work locks go in the
-- same transaction.
CREATE TABLE IF NOT EXISTS sessions (
    id          UUID PRIMARY KEY,
    component   TEXT NOT NULL CHECK (component IN ('agent', 'server')),
    -- agent host name, or server replica name
    name        TEXT NOT NULL,
    -- the user (role agent) whose token opened it
    principal   TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    timeout_ms  BIGINT NOT NULL CHECK (timeout_ms > 0),
    deadline    TIMESTAMPTZ NOT NULL
);

-- What happened to sessions: opened, heartbeat lost (expired), closed.
CREATE TABLE IF NOT EXISTS session_history (
    id          BIGSERIAL PRIMARY KEY,
    session     UUID NOT NULL,
    component   TEXT NOT NULL,
    name        TEXT NOT NULL,
    at          TIMESTAMPTZ NOT NULL,
    event       TEXT NOT NULL CHECK (event IN ('opened', 'expired', 'closed')),
    reason      TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS workers (
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
    drain_reason TEXT
);

CREATE TABLE IF NOT EXISTS worker_history (
    id          BIGSERIAL PRIMARY KEY,
    worker      UUID NOT NULL,
    at          TIMESTAMPTZ NOT NULL,
    from_state  TEXT,
    to_state    TEXT NOT NULL,
    actor       TEXT NOT NULL,
    reason      TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS worker_history_by_worker ON worker_history (worker, id);

CREATE TABLE IF NOT EXISTS requests (
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
    CHECK (valid_after < deadline),
    CHECK (state <> 'in_progress' OR (worker IS NOT NULL AND lease_expires_at IS NOT NULL))
);
-- Dropped here and added again at the end, after the backfills: an UPDATE
-- checks the new row against a NOT VALID constraint too, and a row an older
-- server stored outside the range would make the backfill fail.
ALTER TABLE requests DROP CONSTRAINT IF EXISTS requests_times_in_range;
-- Added inside CREATE TABLE by 150fdfa without an ALTER: databases
-- created by 94fc90d lack it (their requests were all ed25519).
ALTER TABLE requests ADD COLUMN IF NOT EXISTS key_type TEXT NOT NULL DEFAULT 'ed25519'
    CHECK (key_type IN ('ed25519', 'rsa'));
CREATE INDEX IF NOT EXISTS requests_live ON requests (id) WHERE state IN ('waiting', 'in_progress');
CREATE INDEX IF NOT EXISTS requests_by_owner ON requests (owner, id);
-- No index on state alone: every transition would update it (no HOT
-- update), and generic plans of the per-lease statements chose it and read
-- thousands of dead entries per call. Listing by state walks the primary
-- key backwards.
DROP INDEX IF EXISTS requests_by_state;

CREATE TABLE IF NOT EXISTS request_history (
    id          BIGSERIAL PRIMARY KEY,
    request     BIGINT NOT NULL,
    at          TIMESTAMPTZ NOT NULL,
    from_state  TEXT,
    to_state    TEXT NOT NULL,
    actor       TEXT NOT NULL,
    reason      TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS request_history_by_request ON request_history (request, id);

-- The binding of a request to a worker. Created by the matcher (the key is
-- being installed), confirmed when the agent installed it (the request is
-- then in_progress), ended when the lease ends for any reason.
CREATE TABLE IF NOT EXISTS leases (
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
CREATE UNIQUE INDEX IF NOT EXISTS leases_one_live_per_worker ON leases (worker) WHERE ended_at IS NULL;
CREATE UNIQUE INDEX IF NOT EXISTS leases_one_live_per_port ON leases (tunnel_port) WHERE ended_at IS NULL;

-- "Session S is doing process P on worker W". At most one per (worker,
-- process); removed with the session. A lock always takes its session from
-- the worker row it updates in the same statement, and deleting a session
-- first clears `workers.session` (ON DELETE SET NULL, which waits for those
-- statements), then deletes the session's locks in a later statement of its
-- transaction (and start-up releases any lock left without its session). So
-- `session` needs no foreign key: its check took a shared lock on the
-- agent's one session row at every lease and every prepare, and all of an
-- agent's backends queued on that row (multixacts).
CREATE TABLE IF NOT EXISTS work_locks (
    worker      UUID NOT NULL,
    process     TEXT NOT NULL CHECK (process IN ('prepare', 'lease', 'maintenance', 'health_check', 'power_cycle')),
    session     UUID NOT NULL,
    acquired_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (worker, process)
);
-- Databases created before the foreign key was dropped.
ALTER TABLE work_locks DROP CONSTRAINT IF EXISTS work_locks_session_fkey;

-- Failure backoff for repeated work on a worker: after a failure the same
-- process is not retried before retry_after; the delay doubles per failure.
CREATE TABLE IF NOT EXISTS work_backoff (
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
CREATE TABLE IF NOT EXISTS leader (
    id          SMALLINT PRIMARY KEY CHECK (id = 1),
    session     UUID NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    since       TIMESTAMPTZ NOT NULL
);

-- Server-wide facts that must survive restarts (first-start bootstrap done).
CREATE TABLE IF NOT EXISTS settings (
    key         TEXT PRIMARY KEY,
    value       TEXT NOT NULL
);

-- Identities that are not names (issue 13). A user deleted and created
-- again under the same name is another user: requests belong to their
-- owner's id, agent sessions and workers to their principal's id. Rows
-- from before these columns are backfilled once by name; a request whose
-- owner was already gone gets owner_id 0, which no user has, so a later
-- user of that name never inherits it. A worker without a principal (it
-- had no live session at the upgrade) is bound to the first agent
-- principal that registers it.
-- (A named sequence rather than BIGSERIAL: ADD COLUMN IF NOT EXISTS with
-- a serial type made a new sequence at every start on some versions.)
CREATE SEQUENCE IF NOT EXISTS users_id_seq;
ALTER TABLE users ADD COLUMN IF NOT EXISTS id BIGINT NOT NULL DEFAULT nextval('users_id_seq');
-- Databases of 7c67b92 made the sequence with BIGSERIAL (owned by the
-- column); later ones without an owner. The column owns it in every
-- database from version 1 on (as BIGSERIAL in schema.sql does).
ALTER SEQUENCE users_id_seq OWNED BY users.id;
CREATE UNIQUE INDEX IF NOT EXISTS users_by_id ON users (id);
ALTER TABLE requests ADD COLUMN IF NOT EXISTS owner_id BIGINT;
UPDATE requests SET owner_id = COALESCE((SELECT u.id FROM users u WHERE u.name = requests.owner), 0)
    WHERE owner_id IS NULL;
CREATE INDEX IF NOT EXISTS requests_by_owner_id ON requests (owner_id, id);
ALTER TABLE sessions ADD COLUMN IF NOT EXISTS principal_id BIGINT;
UPDATE sessions SET principal_id = COALESCE((SELECT u.id FROM users u WHERE u.name = sessions.principal), 0)
    WHERE principal_id IS NULL;
-- The agent principal (users.id) that registered the worker: another
-- agent token cannot claim it (an admin hands it over).
ALTER TABLE workers ADD COLUMN IF NOT EXISTS principal BIGINT;
UPDATE workers SET principal = (SELECT s.principal_id FROM sessions s WHERE s.id = workers.session)
    WHERE principal IS NULL AND session IS NOT NULL;

-- Idempotent submissions (issue 14). A submission may carry the client's
-- Idempotency-Key, unique per owner, with the SHA-256 of what it asked
-- for: a retry with the same key and body gets the first request back,
-- another body gets 409. Every submission also stores a token made for
-- the call, so that one whose answer was lost (the connection dropped
-- after the INSERT was sent) is settled by reading it back, and a second
-- run of it can never make a second row.
ALTER TABLE requests ADD COLUMN IF NOT EXISTS idempotency_key TEXT;
ALTER TABLE requests ADD COLUMN IF NOT EXISTS request_digest BYTEA;
ALTER TABLE requests ADD COLUMN IF NOT EXISTS submission_token UUID;
CREATE UNIQUE INDEX IF NOT EXISTS requests_by_idempotency_key ON requests (owner_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE UNIQUE INDEX IF NOT EXISTS requests_by_submission_token ON requests (submission_token);

-- Every time a user sends is between 1970 and 9999 and a lease is at most
-- 100 years (SPEC §12; corral_core::time). NOT VALID: new and updated rows
-- are checked, rows an older server stored are kept (formatting them
-- clamps into the range). Added last (dropped above, as databases of 5907659
-- and later have it), so that the backfills above can update old rows.
ALTER TABLE requests ADD CONSTRAINT requests_times_in_range CHECK (
    valid_after >= TIMESTAMPTZ '1970-01-01 00:00:00+00'
    AND deadline < TIMESTAMPTZ '10000-01-01 00:00:00+00'
    AND (lease_expires_at IS NULL OR lease_expires_at < TIMESTAMPTZ '10000-01-01 00:00:00+00')
    AND lease_ms <= 3155760000000
) NOT VALID;
