-- Claims held in memory (one daemon per SQLite file): one row per claimed
-- batch, written before any of it is sent and deleted by the next claim's
-- write (or a clean stop) once every claim of it has its outcome. A start
-- that finds rows here follows a crash: each still
-- pending delivery they list counts one attempt, so one that keeps crashing
-- the daemon is parked like a leased one (store::claim_book).
CREATE TABLE claim_marks (
    id         INTEGER PRIMARY KEY,
    ids        TEXT NOT NULL,      -- JSON array of delivery ids
    created_ms INTEGER NOT NULL
);
