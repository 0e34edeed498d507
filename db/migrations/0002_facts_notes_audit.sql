-- Migration 2: version 1 -> version 2 (issue 16: facts, dimensions, notes,
-- audit). Runs in one transaction under the migration lock.

-- The latest observed facts of each worker and when, the facts its agent
-- marks as dimensions, and an admin's note with its author and time.
ALTER TABLE workers ADD COLUMN facts JSONB NOT NULL DEFAULT '{}';
ALTER TABLE workers ADD COLUMN facts_at TIMESTAMPTZ;
ALTER TABLE workers ADD COLUMN dimensions JSONB NOT NULL DEFAULT '{}';
ALTER TABLE workers ADD COLUMN note TEXT;
ALTER TABLE workers ADD COLUMN note_by TEXT;
ALTER TABLE workers ADD COLUMN note_at TIMESTAMPTZ;

-- Holds that keep an idle worker out of matching: quarantine (admin, or
-- failed preparations in a row) and recovery (from the facts).
ALTER TABLE workers ADD COLUMN quarantine TEXT;
ALTER TABLE workers ADD COLUMN quarantine_by TEXT;
ALTER TABLE workers ADD COLUMN quarantine_at TIMESTAMPTZ;
ALTER TABLE workers ADD COLUMN recovery TEXT;
ALTER TABLE workers ADD COLUMN recovery_at TIMESTAMPTZ;

-- Every admin action, written before it runs and given its outcome after.
CREATE TABLE audit (
    id          BIGSERIAL PRIMARY KEY,
    at          TIMESTAMPTZ NOT NULL,
    actor       TEXT NOT NULL,
    actor_id    BIGINT NOT NULL,
    action      TEXT NOT NULL,
    target      TEXT NOT NULL,
    address     TEXT,
    detail      TEXT NOT NULL,
    outcome     TEXT NOT NULL CHECK (outcome IN ('pending', 'done', 'refused', 'failed')),
    message     TEXT
);
