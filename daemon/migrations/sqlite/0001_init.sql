-- dunningd schema, version 1 (SQLite).
-- Times are milliseconds since the Unix epoch, UTC.

-- Every accepted event, once: the primary key is what makes a repeated id a no-op.
CREATE TABLE events (
    id          TEXT PRIMARY KEY,
    type        TEXT NOT NULL,
    customer_id TEXT NOT NULL,
    subject     TEXT NOT NULL,
    occurred_ms INTEGER NOT NULL,
    received_ms INTEGER NOT NULL,
    body        TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX events_by_subject ON events (customer_id, subject, type, occurred_ms);

-- Each workflow version a case ever started with, so the case can run after
-- the file changes or on a daemon that never loaded that version.
CREATE TABLE workflow_versions (
    version       TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    source        TEXT NOT NULL,
    first_seen_ms INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE cases (
    id               TEXT PRIMARY KEY,
    workflow         TEXT NOT NULL,
    workflow_version TEXT NOT NULL REFERENCES workflow_versions (version),
    customer_id      TEXT NOT NULL,
    subject          TEXT NOT NULL,
    state            TEXT NOT NULL CHECK (state IN ('active', 'paused', 'recovered', 'exhausted', 'cancelled')),
    exit_on          TEXT NOT NULL,           -- JSON array of event types, from the case's own version
    trigger_event_id TEXT NOT NULL,
    trigger_event    TEXT NOT NULL,           -- the event JSON templates render from
    started_ms       INTEGER NOT NULL,
    updated_ms       INTEGER NOT NULL,
    paused_ms        INTEGER,
    ended_reason     TEXT
);
-- At most one open case per (workflow, customer, subject).
CREATE UNIQUE INDEX cases_one_open ON cases (workflow, customer_id, subject) WHERE state IN ('active', 'paused');
CREATE INDEX cases_open_by_subject ON cases (customer_id, subject) WHERE state IN ('active', 'paused');
CREATE INDEX cases_by_state ON cases (state, workflow);
CREATE INDEX cases_by_customer ON cases (customer_id);

CREATE TABLE deliveries (
    id               TEXT PRIMARY KEY,
    case_id          TEXT NOT NULL REFERENCES cases (id),
    step_index       INTEGER NOT NULL,
    step             TEXT NOT NULL,
    channel          TEXT NOT NULL,
    template         TEXT NOT NULL,
    status           TEXT NOT NULL CHECK (status IN ('scheduled', 'sending', 'retrying', 'sent', 'failed', 'skipped')),
    due_ms           INTEGER NOT NULL,
    planned_ms       INTEGER NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    idempotency_key  TEXT NOT NULL UNIQUE,
    lease_owner      TEXT,
    lease_expires_ms INTEGER,                 -- wall-clock time
    receipt          TEXT,
    last_error       TEXT,
    skip_reason      TEXT,
    sent_ms          INTEGER,
    updated_ms       INTEGER NOT NULL
);
CREATE INDEX deliveries_pending ON deliveries (planned_ms) WHERE status IN ('scheduled', 'retrying');
CREATE INDEX deliveries_leased ON deliveries (lease_expires_ms) WHERE status = 'sending';
CREATE INDEX deliveries_by_case ON deliveries (case_id, step_index);
