//! The embedded SQLite backend.
//!
//! One writer connection and a small read pool: SQLite has one writer at a
//! time anyway, and a single writer connection turns contention into a queue
//! inside the process instead of `SQLITE_BUSY` errors. Every write transaction
//! starts with `BEGIN IMMEDIATE`, so it takes the write lock before it reads
//! (a deferred transaction that reads and then writes fails at once with
//! `SQLITE_BUSY`, whatever the busy timeout says). WAL journal, and
//! `synchronous = FULL`: an acknowledged event survives a power cut, not only
//! a process crash; batching keeps the fsync cost per event small.
//!
//! One database file belongs to one daemon: the store holds an exclusive
//! lock on `<file>.lock` while it is open, and a second daemon on the same
//! file refuses to start. So at start every lease and claim mark left in
//! the file belongs to a process that is gone and is released at once, and
//! only this process's scheduler claims from the file: most of its claims
//! are held in memory ([`ClaimBook`]), with one mark per batch in the file.
//!
//! The scheduler's writes (a claim, a batch of outcomes) are each one SQL
//! text run in one call to the writer connection's thread
//! ([`SqliteStore::write_in_one_call`]).

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::pool::PoolConnection;
use sqlx::query::QueryAs;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{Database, FromRow, Row, Sqlite, Transaction};

use super::batch;
use super::claim_book::ClaimBook;
use super::rows::{OutcomeRow, claimed_columns, corrupt, decode_claims};
use super::shared::{Backend, CaseStart, ClaimAt};
use super::{ClaimOptions, Claims, Completion, StoreError, hand_out, to_ms};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

pub struct SqliteStore {
    /// The one connection that writes; see the module comment.
    writer: SqlitePool,
    /// Readers for the admin API and the scheduler's claim candidates, so
    /// neither waits behind a write.
    reader: SqlitePool,
    /// Held while the store is open: this process is the file's one daemon.
    _lock: std::fs::File,
    /// The claims held in memory ([`ClaimBook`]). Locked only around
    /// in-memory work, never across an await.
    book: Mutex<ClaimBook>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database file, applies migrations and
    /// releases leases a previous process left behind.
    ///
    /// What it creates is private to the daemon's user, whatever the umask:
    /// the folder 0700, the file and its lock 0600. The file is created
    /// here, before SQLite opens it, because SQLite would create it 0644;
    /// SQLite gives the `-wal` and `-shm` files the database file's mode.
    pub async fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            crate::files::create_dir_all(parent, crate::files::PRIVATE_DIR).map_err(|e| {
                sqlx::Error::Configuration(
                    format!("cannot create '{}': {e}", parent.display()).into(),
                )
            })?;
        }
        let lock = lock_database(path)?;
        crate::files::open_private(path).map_err(|e| {
            sqlx::Error::Configuration(format!("cannot create '{}': {e}", path.display()).into())
        })?;
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10))
            // 8 MiB of page cache per connection (the default is 2 MB). Not
            // more: every commit trims the cache to the database's size
            // (`pager_end_transaction` → `pcache1TruncateUnsafe`), which
            // walks every slot the cache ever had; at 64 MiB that was an
            // eighth of SQLite's time in a drain (bench/HISTORY.md, sixth
            // sitting). A reader drops its whole cache anyway whenever the
            // writer has committed since its last read (WAL).
            .pragma("cache_size", "-8192")
            // Room for a whole claimed batch: the connection's thread stops
            // at a full row channel until the caller takes rows.
            .row_buffer_size(1024);
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            // No ping before each use: one more hand-off to the connection's
            // thread per transaction (see `write_in_one_call`); a broken
            // connection shows in the statement that follows.
            .test_before_acquire(false)
            .connect_with(options.clone())
            .await?;
        Self::migrate(&writer, &MIGRATOR).await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options.read_only(true))
            .await?;
        let store = SqliteStore {
            writer,
            reader,
            _lock: lock,
            book: Mutex::new(ClaimBook::default()),
        };
        // Leased claims a previous process left, and those it held in
        // memory: each still pending one of these counts its attempt (as a
        // leased claim counted it when taken).
        let released = sqlx::query(
            "UPDATE deliveries SET status = 'scheduled', lease_owner = NULL, lease_expires_ms = NULL
             WHERE status = 'sending'",
        )
        .execute(&store.writer)
        .await?
        .rows_affected();
        let marked: Vec<(i64, i64)> = store
            .write_in_one_call(sqlx::query_as(sql::RELEASE_MARKED_CLAIMS))
            .await?;
        let (last_mark, counted) = marked.first().copied().unwrap_or((0, 0));
        *store.book() = ClaimBook::after(last_mark);
        let released = released + counted.max(0) as u64;
        if released > 0 {
            tracing::warn!(
                deliveries = released,
                "released deliveries left in flight by a previous run; they will be sent again with the same idempotency key"
            );
        }
        Ok(store)
    }

    fn book(&self) -> MutexGuard<'_, ClaimBook> {
        self.book
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The ids claimed in memory, as the statements that leave them out
    /// bind them.
    fn in_flight(&self) -> String {
        self.book().ids_json()
    }

    /// Binds the claims held in memory as the last parameter of a read of
    /// pending rows, which leaves them out (`shared::sql_store!`).
    fn exclude_in_flight<'q, O>(
        &self,
        query: QueryAs<'q, Sqlite, O, <Sqlite as Database>::Arguments>,
    ) -> QueryAs<'q, Sqlite, O, <Sqlite as Database>::Arguments> {
        query.bind(self.in_flight())
    }

    fn reader(&self) -> &SqlitePool {
        &self.reader
    }

    /// For writes of one statement, which need no transaction of their own.
    fn writer(&self) -> &SqlitePool {
        &self.writer
    }

    async fn write_tx(&self) -> Result<Transaction<'static, Sqlite>, StoreError> {
        Ok(self.writer.begin_with("BEGIN IMMEDIATE").await?)
    }

    /// Runs a whole write transaction written as one SQL text (`BEGIN
    /// IMMEDIATE; …; COMMIT`) and returns the rows its statements return.
    ///
    /// sqlx runs each SQLite connection on a thread of its own, and every
    /// statement, `BEGIN` and `COMMIT` is a hand-off to that thread and
    /// back; on a busy machine each hand-off waits for a time slice, and a
    /// transaction of five of them took 3–6 ms where its SQL took 1.5. Here
    /// the thread runs the whole text in one go (numbered parameters `?N`
    /// are shared by all its statements). If a statement fails, the
    /// transaction is rolled back on the same connection; if that cannot be
    /// confirmed, or the caller goes away mid-way (the thread stops at the
    /// first row nobody takes), the connection is closed instead of going
    /// back to the pool inside a transaction.
    async fn write_in_one_call<'q, O>(
        &self,
        query: QueryAs<'q, Sqlite, O, <Sqlite as Database>::Arguments>,
    ) -> Result<Vec<O>, StoreError>
    where
        O: Send + Unpin + for<'r> FromRow<'r, SqliteRow>,
    {
        let mut call = OneCall {
            connection: self.writer.acquire().await?,
            finished: false,
        };
        match query.fetch_all(&mut *call.connection).await {
            Ok(rows) => {
                call.finished = true;
                Ok(rows)
            }
            Err(error) => {
                call.finished = sqlx::query("ROLLBACK")
                    .execute(&mut *call.connection)
                    .await
                    .is_ok();
                Err(error.into())
            }
        }
    }

    /// Starts the batch's cases (none is refused here: `refuse_starts` read
    /// for open cases, and this daemon is the file's only writer).
    async fn start_cases(
        tx: &mut Transaction<'static, Sqlite>,
        starts: batch::Starts<'_>,
        _refusals: &mut batch::Refusals,
    ) -> Result<BTreeMap<(usize, usize), String>, StoreError> {
        // The trigger event's body is the one just stored with the event.
        sqlx::query(
            "INSERT INTO cases (id, workflow, workflow_version, customer_id, subject, state,
                                exit_on, trigger_event_id, trigger_event, started_ms, updated_ms)
             SELECT c.value ->> '$.id', c.value ->> '$.workflow', c.value ->> '$.version',
                    c.value ->> '$.customer', c.value ->> '$.subject', 'active', json(c.value -> '$.exit_on'),
                    c.value ->> '$.event_id', e.body, ?1, ?1
             FROM jsonb_each(?2) AS c CROSS JOIN events e ON e.id = c.value ->> '$.event_id'",
        )
        .bind(starts.now_ms)
        .bind(&starts.cases)
        .execute(&mut **tx)
        .await?;
        sqlx::query(
            "INSERT INTO deliveries (id, case_id, step_index, step, channel, template, status,
                                     due_ms, planned_ms, idempotency_key, updated_ms, customer_id, critical)
             SELECT value ->> '$.id', value ->> '$.case_id', value ->> '$.step_index', value ->> '$.step',
                    value ->> '$.channel', value ->> '$.template', 'scheduled', value ->> '$.due_ms',
                    value ->> '$.planned_ms', value ->> '$.key', ?, value ->> '$.customer',
                    value ->> '$.critical'
             FROM jsonb_each(?)",
        )
        .bind(starts.now_ms)
        .bind(&starts.deliveries)
        .execute(&mut **tx)
        .await?;
        Ok(starts.ids)
    }

    /// Starts one case of an event, unless a case is already open for its
    /// workflow, customer and subject: then returns that case's id. This
    /// daemon is the file's only writer, so reading first is enough.
    async fn start_case(
        tx: &mut Transaction<'static, Sqlite>,
        case: &CaseStart<'_>,
    ) -> Result<Option<String>, StoreError> {
        let open = Self::open_case(tx, case.start, case.event).await?;
        if open.is_some() {
            return Ok(open);
        }
        Self::record_version(tx, case.start, case.now_ms).await?;
        Self::insert_case(tx, case).await?;
        Ok(None)
    }
}

/// The writer connection during [`SqliteStore::write_in_one_call`]: closed
/// when dropped unless the call is known to have ended its transaction.
struct OneCall {
    connection: PoolConnection<Sqlite>,
    finished: bool,
}

impl Drop for OneCall {
    fn drop(&mut self) {
        if !self.finished {
            self.connection.close_on_drop();
        }
    }
}

/// A fallback delivery to create with a batch's outcomes, as
/// `sql::COMPLETE` reads it from its JSON array.
#[derive(serde::Serialize)]
struct FallbackRow<'a> {
    /// The new delivery's id.
    id: String,
    /// The delivery it stands in for.
    stands_for: &'a str,
    /// 1 when that delivery's claim is held in memory.
    in_memory: i32,
    channel: &'a str,
    template: &'a str,
    due_ms: i64,
    planned_ms: i64,
}

/// Takes the exclusive lock that makes this process the database file's one
/// daemon; released when the returned file is closed (also when the process
/// dies).
fn lock_database(path: &Path) -> Result<std::fs::File, StoreError> {
    let lock_path = format!("{}.lock", path.display());
    let file = crate::files::open_private(Path::new(&lock_path)).map_err(|e| {
        sqlx::Error::Configuration(format!("cannot open '{lock_path}': {e}").into())
    })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => {
            Err(StoreError::InUse(path.display().to_string()))
        }
        Err(std::fs::TryLockError::Error(e)) => {
            Err(sqlx::Error::Configuration(format!("cannot lock '{lock_path}': {e}").into()).into())
        }
    }
}

/// Work is announced to other daemons on the same database; a SQLite file
/// has one daemon, so there is nobody to tell.
async fn announce_work(_tx: &mut Transaction<'static, Sqlite>) -> Result<(), StoreError> {
    Ok(())
}

/// An id list as SQLite binds it: a JSON array, read with `json_each`.
fn id_list<S: serde::Serialize>(ids: &[S]) -> String {
    serde_json::to_string(ids).unwrap_or_else(|_| "[]".to_string())
}

/// The pattern `sql::CASE_IDS_WITH_PREFIX` (GLOB) reads as "ids starting
/// with `prefix`" (`is_id_prefix` lets no wildcard into the prefix).
fn prefix_pattern(prefix: &str) -> String {
    format!("{prefix}*")
}

/// A case's exit event types as SQLite binds them: a JSON array.
fn exit_list(exit_on: &[String]) -> Result<String, StoreError> {
    serde_json::to_string(exit_on).map_err(|e| corrupt("cases", e))
}

#[async_trait]
impl Backend for SqliteStore {
    async fn claim_due(&self, at: ClaimAt, options: &ClaimOptions) -> Result<Claims, StoreError> {
        let (now, now_ms, wall_ms, lease_ms) = (at.now, at.now_ms, at.wall_ms, at.lease_ms);
        // Candidates are read and sorted out (caps, parking) on a reader
        // connection, so the one writer is not held while they are; the
        // write below checks again that each is still claimable. This
        // daemon is the only one that claims from its file, so what the
        // read saw can only have moved on by an outcome or an exit, which
        // that check catches.
        let mut read = self.reader.begin().await?;

        // Candidates: due deliveries not claimed in memory already, and
        // other owners' expired leases, of active cases only. (Our own
        // leases, even expired, await outcomes we have yet to record.)
        // The plan is fixed by `INDEXED BY` on the partial indexes: without
        // statistics SQLite would walk every active case instead.
        // Each candidate comes with everything needed to send it
        // (`claimed_columns!`), so claiming is this read and one write.
        let rows = sqlx::query(concat!(
            "SELECT ",
            claimed_columns!(),
            " FROM deliveries d INDEXED BY deliveries_pending JOIN cases c ON c.id = d.case_id
             WHERE d.status IN ('scheduled', 'retrying') AND d.planned_ms <= ?1 AND c.state = 'active'
               AND d.id NOT IN (SELECT value FROM json_each(?5))
             UNION ALL
             SELECT ",
            claimed_columns!(),
            " FROM deliveries d INDEXED BY deliveries_leased JOIN cases c ON c.id = d.case_id
             WHERE d.status = 'sending' AND d.lease_expires_ms <= ?2 AND d.lease_owner <> ?3
               AND c.state = 'active'
             LIMIT ?4"
        ))
        .bind(now_ms)
        .bind(wall_ms)
        .bind(&options.owner)
        .bind(options.limit as i64)
        .bind(self.in_flight())
        .fetch_all(&mut *read)
        .await?;
        if rows.is_empty() {
            read.commit().await?;
            return Ok(Claims::default());
        }
        let mut sorted = Self::sort_candidates(&mut read, &rows, now_ms, wall_ms, options).await?;
        read.commit().await?;

        // Most claims are held in memory. A candidate on a channel with a
        // frequency cap is leased in its row instead (`sending`), where
        // the caps' count of recent sends sees it; so is another owner's
        // expired lease, taken over.
        let (leased, in_memory): (Vec<_>, Vec<_>) = sorted
            .claim
            .iter()
            .zip(&sorted.claimed)
            .partition(|(_, row)| leased_claim(row, options));
        let leased: Vec<String> = leased.into_iter().map(|(id, _)| id.clone()).collect();
        let in_memory: Vec<&str> = in_memory.into_iter().map(|(id, _)| id.as_str()).collect();
        let (mark, finished) = {
            let mut book = self.book();
            (book.next_mark(), book.finished())
        };

        // The same conditions as the candidates' read, checked again under
        // the write lock. Mostly nothing is held back, parked or leased, and
        // the claim is one call to the writer's thread that writes one row.
        let marked = !in_memory.is_empty();
        let (taken, given_up): (Vec<(String,)>, _) =
            if sorted.held.is_empty() && sorted.park.is_empty() && leased.is_empty() {
                let claim = sqlx::query_as(sql::MARK_CLAIMS_IN_ONE_CALL);
                let taken = self
                    .write_in_one_call(bind_mark(claim, mark, &in_memory, now_ms, &finished))
                    .await?;
                (taken, Vec::new())
            } else {
                let mut tx = self.write_tx().await?;
                let given_up = Self::hold_and_park(&mut tx, &sorted, now_ms, options).await?;
                let mut taken = if leased.is_empty() {
                    Vec::new()
                } else {
                    let claim = sqlx::query_as(sql::CLAIM);
                    bind_claim(claim, options, lease_ms, now_ms, &leased, wall_ms)
                        .fetch_all(&mut *tx)
                        .await?
                };
                if marked {
                    let marked: Vec<(String,)> = bind_mark(
                        sqlx::query_as(sql::MARK_CLAIMS),
                        mark,
                        &in_memory,
                        now_ms,
                        &finished,
                    )
                    .fetch_all(&mut *tx)
                    .await?;
                    taken.extend(marked);
                }
                tx.commit().await?;
                (taken, given_up)
            };
        let taken: HashSet<String> = taken.into_iter().map(|(id,)| id).collect();
        if marked {
            let mut book = self.book();
            book.forget(&finished);
            book.hold(
                &options.owner,
                mark,
                in_memory.iter().copied().filter(|id| taken.contains(*id)),
            );
        }
        sorted.claimed.retain(|row| {
            row.try_get::<&str, _>("id")
                .is_ok_and(|id| taken.contains(id))
        });
        hand_out(
            self,
            &options.owner,
            decode_claims(sorted.claimed)?,
            given_up,
            now,
        )
        .await
    }

    /// The whole batch in one call to the writer's thread
    /// ([`SqliteStore::write_in_one_call`]): the fallbacks, the outcomes and
    /// the cases they exhaust, as set-wise statements of `sql::COMPLETE`.
    async fn complete(
        &self,
        owner: &str,
        results: Vec<(String, Completion)>,
        now: DateTime<Utc>,
    ) -> Result<Vec<String>, StoreError> {
        // Which claims this owner holds in memory.
        let ids: Vec<&str> = results.iter().map(|(id, _)| id.as_str()).collect();
        let in_memory: HashSet<&str> = {
            let book = self.book();
            ids.iter()
                .copied()
                .filter(|id| book.holds(owner, id))
                .collect()
        };
        let rows: Vec<OutcomeRow> = results
            .iter()
            .map(|(id, completion)| {
                let row = OutcomeRow::new(id, completion);
                if in_memory.contains(id.as_str()) {
                    row.held_in_memory()
                } else {
                    row
                }
            })
            .collect();
        let fallbacks: Vec<FallbackRow> = results
            .iter()
            .filter_map(|(id, completion)| match completion {
                Completion::Failed {
                    fallback: Some(follow),
                    ..
                }
                | Completion::Skipped {
                    fallback: Some(follow),
                    ..
                } => Some(FallbackRow {
                    id: uuid::Uuid::now_v7().to_string(),
                    stands_for: id,
                    in_memory: i32::from(in_memory.contains(id.as_str())),
                    channel: &follow.channel,
                    template: &follow.template,
                    due_ms: to_ms(follow.due_at),
                    planned_ms: to_ms(follow.planned_at),
                }),
                _ => None,
            })
            .collect();
        let fallbacks = serde_json::to_string(&fallbacks).map_err(|e| corrupt("deliveries", e))?;
        let query = sqlx::query_as(sql::COMPLETE).bind(to_ms(now)).bind(owner);
        let recorded: Vec<(String,)> = self
            .write_in_one_call(bind_outcomes(query, &rows)?.bind(fallbacks))
            .await?;
        // Recorded or not (a claim held in memory is recorded unless its
        // row is gone), these claims are over; a mark whose claims are all
        // over is deleted with the next claim.
        self.book().end(owner, &ids);
        let recorded: HashSet<&str> = recorded.iter().map(|(id,)| id.as_str()).collect();
        Ok(results
            .iter()
            .filter(|(id, _)| !recorded.contains(id.as_str()))
            .map(|(id, _)| id.clone())
            .collect())
    }

    async fn renew_leases(
        &self,
        owner: &str,
        ids: &[String],
        lease: Duration,
    ) -> Result<Vec<String>, StoreError> {
        // A claim held in memory lasts as long as this process; only leased
        // rows (capped channels) have a lease to renew.
        let (mut renewed, leased): (Vec<String>, Vec<String>) = {
            let book = self.book();
            ids.iter().cloned().partition(|id| book.holds(owner, id))
        };
        if !leased.is_empty() {
            let leases: Vec<String> = sqlx::query_scalar(sql::RENEW_LEASES)
                .bind(to_ms(Utc::now()) + lease.as_millis() as i64)
                .bind(id_list(&leased))
                .bind(owner)
                .fetch_all(&self.writer)
                .await?;
            renewed.extend(leases);
        }
        Ok(renewed)
    }

    async fn release_leases(&self, owner: &str) -> Result<u64, StoreError> {
        let (held, marks) = {
            let book = self.book();
            let held = book.ids_of(owner);
            let ids: Vec<&str> = held.iter().map(String::as_str).collect();
            let marks = book.marks_ending(owner, &ids);
            (held, marks)
        };
        let ids: Vec<&str> = held.iter().map(String::as_str).collect();
        let mut tx = self.write_tx().await?;
        let leased = Self::release_leased(&mut tx, owner).await?;
        // Claims held in memory count their attempt now, for the same reason.
        let counted = sqlx::query(sql::RELEASE_HELD_CLAIMS)
            .bind(id_list(&ids))
            .execute(&mut *tx)
            .await?
            .rows_affected();
        sqlx::query(sql::DELETE_MARKS)
            .bind(id_list(&marks))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        let mut book = self.book();
        book.end(owner, &ids);
        book.forget(&marks);
        Ok(leased + counted)
    }
}

/// Binds a claim's parameters to `sql::CLAIM`.
fn bind_claim<'q, O>(
    query: QueryAs<'q, Sqlite, O, <Sqlite as Database>::Arguments>,
    options: &'q ClaimOptions,
    lease_ms: i64,
    now_ms: i64,
    ids: &[String],
    wall_ms: i64,
) -> QueryAs<'q, Sqlite, O, <Sqlite as Database>::Arguments> {
    query
        .bind(&options.owner)
        .bind(lease_ms)
        .bind(now_ms)
        .bind(id_list(ids))
        .bind(wall_ms)
}

/// Binds a batch's mark to `sql::MARK_CLAIMS` or
/// `sql::MARK_CLAIMS_IN_ONE_CALL`: the mark's number, the ids, the time and
/// the marks to delete.
fn bind_mark<'q, O>(
    query: QueryAs<'q, Sqlite, O, <Sqlite as Database>::Arguments>,
    mark: i64,
    ids: &[&str],
    now_ms: i64,
    finished: &[i64],
) -> QueryAs<'q, Sqlite, O, <Sqlite as Database>::Arguments> {
    query
        .bind(mark)
        .bind(id_list(ids))
        .bind(now_ms)
        .bind(id_list(finished))
}

/// Whether a claim candidate is leased in its row rather than held in
/// memory: another owner's expired lease (taken over), or a delivery a
/// frequency cap counts, critical ones included (`sort_candidates` reads
/// the cap's recent sends from the rows, leased ones included).
fn leased_claim(row: &SqliteRow, options: &ClaimOptions) -> bool {
    let status: Option<&str> = row.try_get("status").ok();
    let channel: Option<&str> = row.try_get("channel").ok();
    let customer: Option<Option<&str>> = row.try_get("customer_id").ok();
    status == Some("sending")
        || (channel.is_some_and(|channel| options.caps.contains_key(channel))
            && matches!(customer, Some(Some(_))))
}

/// Binds a batch of outcomes to `sql::COMPLETE`: one JSON array.
fn bind_outcomes<'q, O>(
    query: QueryAs<'q, Sqlite, O, <Sqlite as Database>::Arguments>,
    rows: &[OutcomeRow<'q>],
) -> Result<QueryAs<'q, Sqlite, O, <Sqlite as Database>::Arguments>, StoreError> {
    let rows = serde_json::to_string(rows).map_err(|e| corrupt("deliveries", e))?;
    Ok(query.bind(rows))
}

/// Claims for one customer and channel take turns on PostgreSQL; here this
/// daemon is the only one that claims from its file.
async fn lock_cap(
    _tx: &mut Transaction<'static, Sqlite>,
    _customer: &str,
    _channel: &str,
) -> Result<(), StoreError> {
    Ok(())
}

super::shared::sql_store!(SqliteStore, Sqlite);

/// The statements of the methods written once in `shared.rs`.
mod sql {
    use super::super::rows::outcome_columns;
    pub use super::super::shared::same_sql::*;

    /// Both checks of a batch's starts, each candidate's row read once.
    pub const REFUSE_STARTS: &str = "SELECT c.value ->> '$.i' AS i, c.value ->> '$.j' AS j,
            (SELECT id FROM events INDEXED BY events_by_subject
             WHERE customer_id = c.value ->> '$.customer' AND subject = c.value ->> '$.subject'
               AND occurred_ms > c.value ->> '$.occurred_ms'
               AND type IN (SELECT value FROM json_each(c.value -> '$.exit_on'))
             ORDER BY occurred_ms DESC LIMIT 1) AS later_exit,
            (SELECT id FROM cases INDEXED BY cases_one_open
             WHERE workflow = c.value ->> '$.workflow' AND customer_id = c.value ->> '$.customer'
               AND subject = c.value ->> '$.subject' AND state IN ('active', 'paused')) AS open_case
         FROM jsonb_each(?) AS c";
    pub const OPEN_CASE: &str = "SELECT id FROM cases
         WHERE workflow = ? AND customer_id = ? AND subject = ? AND state IN ('active', 'paused')";
    pub const HAS_MIGRATIONS: &str = "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations')";
    pub const INSERT_CASE: &str =
        "INSERT INTO cases (id, workflow, workflow_version, customer_id, subject, state,
         exit_on, trigger_event_id, trigger_event, started_ms, updated_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, 'active', ?6, ?7, ?8, ?9, ?9)";
    pub const INSERT_EVENTS: &str =
        "INSERT INTO events (id, type, customer_id, subject, occurred_ms, received_ms, body)
         SELECT value ->> '$.id', value ->> '$.type', value ->> '$.customer', value ->> '$.subject',
                value ->> '$.occurred_ms', ?, value ->> '$.body'
         FROM jsonb_each(?) WHERE true
         ON CONFLICT (id) DO NOTHING RETURNING id";
    // Exits: open cases whose own workflow version lists the event type.
    // Plans are fixed (CROSS JOIN keeps the batch as the outer loop,
    // INDEXED BY the lookups): without statistics SQLite might walk
    // every open case for each event.
    pub const RECOVER_BATCH: &str = "UPDATE cases SET state = 'recovered', updated_ms = ?1, paused_ms = NULL,
         ended_reason = (SELECT 'exit event ' || (e.value ->> '$.id') || ' (' || (e.value ->> '$.type') || ')'
                         FROM jsonb_each(?2) AS e
                         WHERE e.value ->> '$.customer' = cases.customer_id
                           AND e.value ->> '$.subject' = cases.subject)
         WHERE id IN (SELECT c.id FROM jsonb_each(?2) AS e
                      CROSS JOIN cases c INDEXED BY cases_open_by_subject
                      WHERE c.customer_id = e.value ->> '$.customer' AND c.subject = e.value ->> '$.subject'
                        AND c.state IN ('active', 'paused')
                        AND EXISTS (SELECT 1 FROM json_each(c.exit_on) WHERE value = e.value ->> '$.type'))
         RETURNING id, customer_id, subject";
    pub const INSERT_VERSIONS: &str =
        "INSERT INTO workflow_versions (version, name, source, first_seen_ms)
         SELECT value ->> '$.version', value ->> '$.name', value ->> '$.source', ?
         FROM jsonb_each(?) WHERE true
         ON CONFLICT (version) DO NOTHING";
    pub const RECOVER_CASES: &str =
        "UPDATE cases SET state = 'recovered', updated_ms = ?1, paused_ms = NULL,
         ended_reason = 'exit event ' || ?2 || ' (' || ?3 || ')'
         WHERE customer_id = ?4 AND subject = ?5 AND state IN ('active', 'paused')
           AND EXISTS (SELECT 1 FROM json_each(cases.exit_on) WHERE value = ?3)
         RETURNING id";
    pub const LATER_EXIT: &str = "SELECT id FROM events
         WHERE customer_id = ? AND subject = ? AND occurred_ms > ?
         AND type IN (SELECT value FROM json_each(?))
         ORDER BY occurred_ms DESC LIMIT 1";
    pub const INSERT_VERSION: &str =
        "INSERT INTO workflow_versions (version, name, source, first_seen_ms)
         VALUES (?, ?, ?, ?) ON CONFLICT (version) DO NOTHING";
    pub const INSERT_EVENT: &str =
        "INSERT INTO events (id, type, customer_id, subject, occurred_ms, received_ms, body)
         VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING";
    pub const INSERT_DELIVERY: &str =
        "INSERT INTO deliveries (id, case_id, step_index, step, channel, template, status,
         due_ms, planned_ms, idempotency_key, updated_ms, customer_id, critical)
         VALUES (?, ?, ?, ?, ?, ?, 'scheduled', ?, ?, ?, ?, ?, ?)";
    pub const RECENT_SENDS: &str = "SELECT CASE WHEN status = 'sending' THEN ? ELSE sent_ms END FROM deliveries
         WHERE customer_id = ? AND channel = ?
             AND ((status = 'sent' AND sent_ms > ?) OR (status = 'sending' AND lease_expires_ms > ?))";
    // HOLD and PARK check the status again: the candidates were read on a
    // reader connection, and an outcome or an exit may have moved them on.
    pub const HOLD: &str = "UPDATE deliveries SET planned_ms = ?, note = ?, lease_owner = NULL, lease_expires_ms = NULL,
             updated_ms = ?, status = CASE WHEN status = 'sending' THEN 'scheduled' ELSE status END
         WHERE id = ? AND status IN ('scheduled', 'retrying', 'sending')";
    pub const PARK: &str = "UPDATE deliveries SET status = 'failed', lease_owner = NULL, lease_expires_ms = NULL,
             last_error = 'gave up after ' || attempts || ' claims without an outcome; the daemon stopped during each attempt',
             updated_ms = ?
         WHERE id IN (SELECT value FROM json_each(?)) AND status IN ('scheduled', 'retrying', 'sending')
         RETURNING channel";
    /// Leases the claim's candidates that are leased in their rows
    /// (`leased_claim`) and still claimable (the conditions of the
    /// candidates' read, checked again under the write lock): ?1 the owner,
    /// ?2 the lease's end, ?3 the time, ?4 the ids, ?5 the wall-clock time.
    pub const CLAIM: &str =
        "UPDATE deliveries SET status = 'sending', lease_owner = ?1, lease_expires_ms = ?2,
                attempts = attempts + 1, updated_ms = ?3
         WHERE id IN (SELECT value FROM json_each(?4))
           AND ((status IN ('scheduled', 'retrying') AND planned_ms <= ?3)
                OR (status = 'sending' AND lease_expires_ms <= ?5 AND lease_owner <> ?1))
           AND (SELECT c.state FROM cases c WHERE c.id = deliveries.case_id) = 'active'
         RETURNING id";
    /// A batch's claims held in memory (`claim_book`): the marks whose
    /// claims are all over deleted, the batch's mark written, and the ids
    /// still claimable under the write lock (the conditions of the
    /// candidates' read): ?1 the mark, ?2 the ids, ?3 the time, ?4 the
    /// marks to delete. The DELETE comes first: sqlx binds a parameter a
    /// statement leaves out (here ?1 to ?3) as the next positional one,
    /// counting on from what earlier statements left out, and stops at the
    /// last; so a statement that names only a late parameter is bound only
    /// while few were left out before it (`tests::every_statement_of_a_one_call_text_is_bound`).
    macro_rules! mark_claims {
        () => {
            "DELETE FROM claim_marks WHERE id IN (SELECT value FROM json_each(?4));
             INSERT INTO claim_marks (id, ids, created_ms) VALUES (?1, ?2, ?3);
             SELECT d.id FROM deliveries d
             WHERE d.id IN (SELECT value FROM json_each(?2))
               AND d.status IN ('scheduled', 'retrying') AND d.planned_ms <= ?3
               AND (SELECT c.state FROM cases c WHERE c.id = d.case_id) = 'active'"
        };
    }
    pub const MARK_CLAIMS: &str = mark_claims!();
    /// [`MARK_CLAIMS`] as a whole transaction, for `write_in_one_call`.
    pub const MARK_CLAIMS_IN_ONE_CALL: &str =
        concat!("BEGIN IMMEDIATE; ", mark_claims!(), "; COMMIT");
    /// Claims held in memory given back (the daemon stops without their
    /// outcomes): each still pending one counts its attempt.
    pub const RELEASE_HELD_CLAIMS: &str = "UPDATE deliveries SET attempts = attempts + 1
         WHERE id IN (SELECT value FROM json_each(?1)) AND status IN ('scheduled', 'retrying')";
    pub const DELETE_MARKS: &str =
        "DELETE FROM claim_marks WHERE id IN (SELECT value FROM json_each(?1))";
    /// At start: the claims a previous process held in memory, each still
    /// pending one counted as an attempt; returns the last mark's number
    /// and how many were counted; then the marks are gone.
    pub const RELEASE_MARKED_CLAIMS: &str = "BEGIN IMMEDIATE;
         UPDATE deliveries SET attempts = attempts + 1
         WHERE status IN ('scheduled', 'retrying')
           AND id IN (SELECT j.value FROM claim_marks m, json_each(m.ids) j);
         SELECT COALESCE((SELECT MAX(id) FROM claim_marks), 0), changes();
         DELETE FROM claim_marks;
         COMMIT";
    /// A batch's outcomes, as one write transaction run in one call
    /// (`write_in_one_call`): ?1 the time, ?2 the lease owner, ?3 the
    /// outcomes (`rows::OutcomeRow`), ?4 the fallbacks (`FallbackRow`),
    /// both as JSON arrays.
    ///
    /// A claim is this owner's when its row is leased to it (`sending`) or
    /// when it is held in memory (`in_memory`, which the store checked in
    /// its book): that row is still pending, or was skipped by a cancel or
    /// a recovery while in flight, and its outcome is recorded over that,
    /// as a leased row's would be.
    ///
    /// 1. Fallback deliveries, for the delivery they stand in for while it
    ///    is still this owner's claim: the UPDATE's own condition, checked
    ///    before the UPDATE moves the row on. Once per (case, step,
    ///    channel): the idempotency key is unique.
    /// 2. The outcomes, one statement keyed by the primary key, returning
    ///    what it recorded (the rest lost their lease). `RETURNING` names
    ///    its columns bare: SQLite reads only the updated table there, and
    ///    not by its alias.
    /// 3. The batch's cases whose every delivery is final, and that nobody
    ///    ended otherwise, ran all their steps without a recovery. The
    ///    unary `+` keeps `state` out of the plan: without statistics
    ///    SQLite would walk `cases_by_state` (every active case) and test
    ///    each against the batch, instead of looking up the batch's cases by
    ///    key.
    pub const COMPLETE: &str = concat!(
        "BEGIN IMMEDIATE;
         INSERT INTO deliveries (id, case_id, step_index, step, channel, template, status,
                                 due_ms, planned_ms, idempotency_key, updated_ms, fallback_for,
                                 customer_id, critical)
         SELECT f.value ->> '$.id', d.case_id, d.step_index, d.step, f.value ->> '$.channel',
                f.value ->> '$.template', 'scheduled', f.value ->> '$.due_ms',
                f.value ->> '$.planned_ms',
                'dunningd-' || d.case_id || '-' || d.step_index || '-' || (f.value ->> '$.channel'),
                ?1, d.channel, d.customer_id, d.critical
         FROM jsonb_each(?4) AS f CROSS JOIN deliveries d ON d.id = f.value ->> '$.stands_for'
         WHERE CASE WHEN f.value ->> '$.in_memory' = 1
                    THEN d.status IN ('scheduled', 'retrying', 'skipped')
                    ELSE d.lease_owner = ?2 AND d.status = 'sending' END
         ON CONFLICT (idempotency_key) DO NOTHING;
         UPDATE deliveries AS d SET ",
        outcome_columns!(),
        ", sent_ms = CASE WHEN u.status = 'sent' THEN ?1 ELSE d.sent_ms END,
           lease_owner = NULL, lease_expires_ms = NULL, updated_ms = ?1
         FROM (SELECT value ->> '$.id' AS id, value ->> '$.status' AS status,
                      value ->> '$.receipt' AS receipt, value ->> '$.text' AS text,
                      value ->> '$.planned_ms' AS planned_ms, value ->> '$.attempts' AS attempts,
                      value ->> '$.in_memory' AS in_memory
               FROM jsonb_each(?3)) AS u
         WHERE d.id = u.id
           AND CASE WHEN u.in_memory = 1 THEN d.status IN ('scheduled', 'retrying', 'skipped')
                    ELSE d.lease_owner = ?2 AND d.status = 'sending' END
         RETURNING id;
         UPDATE cases SET state = 'exhausted', ended_reason = 'all steps ran', updated_ms = ?1
         WHERE id IN (SELECT d.case_id FROM deliveries d
                      WHERE d.id IN (SELECT value ->> '$.id' FROM jsonb_each(?3)))
           AND +state = 'active'
           AND NOT EXISTS (SELECT 1 FROM deliveries p WHERE p.case_id = cases.id
                           AND p.status IN ('scheduled', 'sending', 'retrying'));
         COMMIT"
    );
    pub const SKIP_PENDING: &str =
        "UPDATE deliveries SET status = 'skipped', skip_reason = ?, lease_owner = NULL,
            lease_expires_ms = NULL, updated_ms = ?
         WHERE case_id IN (SELECT value FROM json_each(?))
           AND status IN ('scheduled', 'retrying')";
    pub const RENEW_LEASES: &str = "UPDATE deliveries SET lease_expires_ms = ?
         WHERE id IN (SELECT value FROM json_each(?)) AND lease_owner = ? AND status = 'sending'
         RETURNING id";
    // In planned order along the partial index, stopping at the first
    // delivery of an active case.
    pub const NEXT_DUE: &str = "SELECT d.planned_ms FROM deliveries d INDEXED BY deliveries_pending JOIN cases c ON c.id = d.case_id
         WHERE d.status IN ('scheduled', 'retrying') AND c.state = 'active'
           AND d.id NOT IN (SELECT value FROM json_each(?))
         ORDER BY d.planned_ms LIMIT 1";
    pub const RELEASE_LEASES: &str =
        "UPDATE deliveries SET status = 'scheduled', lease_owner = NULL, lease_expires_ms = NULL
         WHERE status = 'sending' AND lease_owner = ?";
    /// The case an operator's action reads and changes; the write
    /// transaction (`BEGIN IMMEDIATE`) already keeps every other writer out.
    pub const CASE_TO_CHANGE: &str = "SELECT * FROM cases WHERE id = ?";
    pub const PAUSE_CASE: &str =
        "UPDATE cases SET state = 'paused', paused_ms = ?1, updated_ms = ?1 WHERE id = ?2";
    pub const POSTPONE_PENDING: &str =
        "UPDATE deliveries SET due_ms = due_ms + ?1, planned_ms = planned_ms + ?1, updated_ms = ?2
         WHERE case_id = ?3 AND status IN ('scheduled', 'retrying')";
    pub const RESUME_CASE: &str =
        "UPDATE cases SET state = 'active', paused_ms = NULL, updated_ms = ? WHERE id = ?";
    pub const CANCEL_CASE: &str = "UPDATE cases SET state = 'cancelled', paused_ms = NULL, ended_reason = 'cancelled by an operator',
                updated_ms = ? WHERE id = ?";
    pub const OPT_OUT: &str = "INSERT INTO optouts (customer_id, channel, source, reason, created_ms) VALUES (?, ?, ?, ?, ?)
         ON CONFLICT (customer_id, channel) DO UPDATE
         SET source = excluded.source, reason = excluded.reason, created_ms = excluded.created_ms";
    pub const OPT_IN: &str = "DELETE FROM optouts WHERE customer_id = ?1 AND channel = ?2 AND (?3 IS NULL OR source = ?3)";
    pub const STATS: &str =
        "SELECT c.id AS case_id, c.workflow, c.state, c.started_ms, c.updated_ms,
                CAST(json_extract(c.trigger_event, '$.data.amount') AS TEXT) AS amount,
                CAST(json_extract(c.trigger_event, '$.data.currency') AS TEXT) AS currency,
                d.step_index, d.step, d.channel, d.status, d.sent_ms
         FROM cases c LEFT JOIN deliveries d ON d.case_id = c.id
         WHERE (?1 IS NULL OR c.workflow = ?1) AND (?2 IS NULL OR c.started_ms >= ?2)
           AND (?3 IS NULL OR c.started_ms < ?3)
         ORDER BY c.id";
    pub const CUSTOMERS_BY_PHONE: &str = "SELECT DISTINCT customer_id FROM cases
         WHERE json_extract(trigger_event, '$.customer.phone') = ? ORDER BY customer_id";
    pub const RECORD_REPORT: &str =
        "INSERT INTO provider_reports (channel, receipt, status, error_code, rank, updated_ms)
         VALUES (?, ?, ?, ?, ?, ?)
         ON CONFLICT (channel, receipt) DO UPDATE
         SET status = excluded.status, error_code = excluded.error_code,
             rank = excluded.rank, updated_ms = excluded.updated_ms
         WHERE excluded.rank > provider_reports.rank";
    pub const LIST_OPTOUTS: &str = "SELECT * FROM optouts WHERE (?1 IS NULL OR customer_id = ?1)
         ORDER BY created_ms DESC, customer_id, channel LIMIT ?2";
    pub const LIST_CASES: &str = "SELECT * FROM cases
         WHERE (?1 IS NULL OR workflow = ?1) AND (?2 IS NULL OR state = ?2) AND (?3 IS NULL OR customer_id = ?3)
         ORDER BY started_ms DESC, id DESC LIMIT ?4";
    pub const CASE: &str = "SELECT * FROM cases WHERE id = ?";
    pub const CASE_DELIVERIES: &str = "SELECT d.*, r.status AS report_status, r.error_code AS report_error
         FROM deliveries d LEFT JOIN provider_reports r ON r.channel = d.channel AND r.receipt = d.receipt
         WHERE d.case_id = ? ORDER BY d.step_index, d.fallback_for IS NOT NULL, d.channel";
    // GLOB, not LIKE: it is case-sensitive, so SQLite can range-scan the
    // primary key for a bound pattern with a fixed prefix (`prefix_pattern`).
    pub const CASE_IDS_WITH_PREFIX: &str =
        "SELECT id FROM cases WHERE id GLOB ?1 ORDER BY id LIMIT ?2";
    pub const WORKFLOW_SOURCE: &str = "SELECT source FROM workflow_versions WHERE version = ?";
    pub const BACKLOG: &str =
        "SELECT COUNT(*), MIN(d.planned_ms) FROM deliveries d JOIN cases c ON c.id = d.case_id
         WHERE d.status IN ('scheduled', 'retrying') AND d.planned_ms <= ? AND c.state = 'active'
           AND d.id NOT IN (SELECT value FROM json_each(?))";
}

#[cfg(test)]
mod tests {
    use super::*;

    macro_rules! opt_out {
        () => {
            "INSERT INTO optouts (customer_id, channel, source, reason, created_ms)
             VALUES ('cus_1', 'email', 'operator', 'asked', 1) RETURNING customer_id"
        };
    }
    const OPT_OUT: &str = opt_out!();

    /// sqlx binds a parameter number a statement leaves out as the next
    /// positional argument, counting on from those the text's earlier
    /// statements left out, and stops binding at the last argument: a
    /// statement whose left-out numbers run past the argument count leaves
    /// the rest of its parameters NULL, silently. Every text of several
    /// statements run in one call must stay within that count.
    #[test]
    fn every_statement_of_a_one_call_text_is_bound() {
        for (name, text) in [
            ("COMPLETE", sql::COMPLETE),
            ("MARK_CLAIMS", sql::MARK_CLAIMS),
            ("MARK_CLAIMS_IN_ONE_CALL", sql::MARK_CLAIMS_IN_ONE_CALL),
            ("RELEASE_MARKED_CLAIMS", sql::RELEASE_MARKED_CLAIMS),
        ] {
            let numbers = |statement: &str| -> Vec<usize> {
                let mut found: Vec<usize> = statement
                    .split('?')
                    .skip(1)
                    .filter_map(|rest| {
                        let digits: String =
                            rest.chars().take_while(char::is_ascii_digit).collect();
                        digits.parse().ok()
                    })
                    .collect();
                found.sort_unstable();
                found.dedup();
                found
            };
            let arguments = numbers(text).last().copied().unwrap_or(0);
            let mut left_out = 0;
            for statement in text.split(';') {
                let used = numbers(statement);
                let highest = used.last().copied().unwrap_or(0);
                left_out += highest - used.len();
                assert!(
                    left_out <= arguments,
                    "{name}: a statement's parameters go unbound: {statement}"
                );
            }
        }
    }

    /// A store in a folder of its own (kept as long as the store).
    async fn open() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(&dir.path().join("d.db"))
            .await
            .expect("open");
        (dir, store)
    }

    async fn optouts(store: &SqliteStore) -> i64 {
        sqlx::query_scalar("SELECT COUNT(*) FROM optouts")
            .fetch_one(store.reader())
            .await
            .expect("count")
    }

    /// One call's statements are one transaction: a statement that fails
    /// after another has run undoes both, and the writer goes on writing.
    #[tokio::test]
    async fn a_failed_call_is_rolled_back_and_the_writer_still_writes() {
        let (_dir, store) = open().await;
        let twice = concat!(
            "BEGIN IMMEDIATE; ",
            opt_out!(),
            "; ",
            opt_out!(),
            "; COMMIT"
        );
        let error = store
            .write_in_one_call(sqlx::query_as::<_, (String,)>(twice))
            .await
            .expect_err("the second row breaks the primary key");
        assert!(error.to_string().contains("UNIQUE"), "{error}");
        assert_eq!(optouts(&store).await, 0, "the first row was rolled back");

        let once = concat!("BEGIN IMMEDIATE; ", opt_out!(), "; COMMIT");
        let rows = store
            .write_in_one_call(sqlx::query_as::<_, (String,)>(once))
            .await
            .expect("the writer is outside any transaction");
        assert_eq!(rows, vec![("cus_1".to_string(),)]);
        assert_eq!(optouts(&store).await, 1);
    }

    /// A call given up inside its transaction (its caller went away) does
    /// not hand the connection back to the pool inside it: the next write
    /// transaction begins.
    #[tokio::test]
    async fn a_call_given_up_mid_transaction_closes_its_connection() {
        let (_dir, store) = open().await;
        {
            let mut call = OneCall {
                connection: store.writer.acquire().await.expect("writer"),
                finished: false,
            };
            sqlx::query("BEGIN IMMEDIATE; INSERT INTO optouts (customer_id, channel, source, reason, created_ms) VALUES ('cus_1', 'sms', 'operator', 'asked', 1)")
                .execute(&mut *call.connection)
                .await
                .expect("begun");
        }
        let mut tx = tokio::time::timeout(Duration::from_secs(5), store.write_tx())
            .await
            .expect("the pool gives a connection")
            .expect("a new transaction begins");
        sqlx::query(OPT_OUT)
            .execute(&mut *tx)
            .await
            .expect("insert");
        tx.commit().await.expect("commit");
        assert_eq!(optouts(&store).await, 1, "only the committed row");
    }
}
