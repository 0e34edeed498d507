-- Migration 3: version 2 -> version 3 (issue 16: power cycle on demand,
-- work locks that exclude). Runs in one transaction under the migration lock.

-- The hooks its agent says it has for the worker (NULL: an older agent that
-- does not say), and the on-demand process running on it besides its
-- state's own (a power cycle). Statements that would start a conflicting
-- process (a binding, entering prepare or busy, the end of a lease moving
-- it to prepare, deregistering) require `work` NULL on the worker's own row,
-- so the row lock orders them against the power cycle's start, on one
-- server or several.
ALTER TABLE workers ADD COLUMN hooks TEXT[];
ALTER TABLE workers ADD COLUMN work TEXT CHECK (work IN ('power_cycle'));

-- Who holds a work lock (`user:NAME` for a power cycle asked for on demand;
-- NULL for the locks of the worker's own states, held by its agent session).
ALTER TABLE work_locks ADD COLUMN holder TEXT;
