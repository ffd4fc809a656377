-- dunningd schema, version 1 (PostgreSQL). Same tables and meaning as the
-- SQLite schema; times are milliseconds since the Unix epoch, UTC.

CREATE TABLE events (
    id          TEXT PRIMARY KEY,
    type        TEXT NOT NULL,
    customer_id TEXT NOT NULL,
    subject     TEXT NOT NULL,
    occurred_ms BIGINT NOT NULL,
    received_ms BIGINT NOT NULL,
    body        TEXT NOT NULL
);
CREATE INDEX events_by_subject ON events (customer_id, subject, type, occurred_ms);

CREATE TABLE workflow_versions (
    version       TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    source        TEXT NOT NULL,
    first_seen_ms BIGINT NOT NULL
);

CREATE TABLE cases (
    id               TEXT PRIMARY KEY,
    workflow         TEXT NOT NULL,
    workflow_version TEXT NOT NULL REFERENCES workflow_versions (version),
    customer_id      TEXT NOT NULL,
    subject          TEXT NOT NULL,
    state            TEXT NOT NULL CHECK (state IN ('active', 'paused', 'recovered', 'exhausted', 'cancelled')),
    exit_on          TEXT[] NOT NULL,
    trigger_event_id TEXT NOT NULL,
    trigger_event    TEXT NOT NULL,
    started_ms       BIGINT NOT NULL,
    updated_ms       BIGINT NOT NULL,
    paused_ms        BIGINT,
    ended_reason     TEXT
);
CREATE UNIQUE INDEX cases_one_open ON cases (workflow, customer_id, subject) WHERE state IN ('active', 'paused');
CREATE INDEX cases_open_by_subject ON cases (customer_id, subject) WHERE state IN ('active', 'paused');
CREATE INDEX cases_by_state ON cases (state, workflow);
CREATE INDEX cases_by_customer ON cases (customer_id);

CREATE TABLE deliveries (
    id               TEXT PRIMARY KEY,
    case_id          TEXT NOT NULL REFERENCES cases (id),
    step_index       BIGINT NOT NULL,
    step             TEXT NOT NULL,
    channel          TEXT NOT NULL,
    template         TEXT NOT NULL,
    status           TEXT NOT NULL CHECK (status IN ('scheduled', 'sending', 'retrying', 'sent', 'failed', 'skipped')),
    due_ms           BIGINT NOT NULL,
    planned_ms       BIGINT NOT NULL,
    attempts         BIGINT NOT NULL DEFAULT 0,
    idempotency_key  TEXT NOT NULL UNIQUE,
    lease_owner      TEXT,
    lease_expires_ms BIGINT,
    receipt          TEXT,
    last_error       TEXT,
    skip_reason      TEXT,
    sent_ms          BIGINT,
    updated_ms       BIGINT NOT NULL
);
CREATE INDEX deliveries_pending ON deliveries (planned_ms) WHERE status IN ('scheduled', 'retrying');
CREATE INDEX deliveries_leased ON deliveries (lease_expires_ms) WHERE status = 'sending';
CREATE INDEX deliveries_by_case ON deliveries (case_id, step_index);
