//! The PostgreSQL backend: the same behaviour as SQLite, for several daemons
//! sharing one database.
//!
//! Differences from SQLite, all about concurrent writers:
//! - Due deliveries are claimed with `FOR UPDATE OF d SKIP LOCKED` in a short
//!   transaction, so two daemons never claim the same row and never wait for
//!   each other; the claim is a lease, not a held transaction.
//! - A second open case for the same (workflow, customer, subject), which two
//!   daemons could try to start at the same moment, is refused by the partial
//!   unique index (`ON CONFLICT … DO NOTHING`) rather than by a read first.
//! - Leases are never released at start: another daemon may own them. They
//!   expire by themselves.
//! - Work one daemon creates (new cases, resumed cases, released leases) is
//!   announced with `NOTIFY dunningd_work` in the same transaction; every
//!   daemon `LISTEN`s and looks for due work at once, instead of at its next
//!   poll.

use std::collections::{BTreeMap, HashSet};
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};
use sqlx::query::QueryAs;
use sqlx::{Database, Postgres, Transaction};

use super::batch;
use super::rows::{OutcomeRow, cases_of, claimed_columns, decode_claims};
use super::shared::{Backend, CaseStart, ClaimAt};
use super::{ClaimOptions, Claims, Completion, StoreError, hand_out, to_ms};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

pub struct PostgresStore {
    pool: PgPool,
}

impl PostgresStore {
    /// Starts the batch's cases, refusing those the partial unique index
    /// finds already open (`ON CONFLICT … DO NOTHING`).
    async fn start_cases(
        tx: &mut Transaction<'static, Postgres>,
        starts: batch::Starts<'_>,
        refusals: &mut batch::Refusals,
    ) -> Result<BTreeMap<(usize, usize), String>, StoreError> {
        let mut started = BTreeMap::new();
        let inserted_cases: HashSet<String> = sqlx::query_scalar(
            "INSERT INTO cases (id, workflow, workflow_version, customer_id, subject, state,
                                exit_on, trigger_event_id, trigger_event, started_ms, updated_ms)
             SELECT c.id, c.workflow, c.version, c.customer, c.subject, 'active', c.exit_on,
                    c.event_id, e.body, $1, $1
             FROM jsonb_to_recordset($2::jsonb)
                  AS c(id text, workflow text, version text, customer text, subject text,
                       exit_on text[], event_id text)
             JOIN events e ON e.id = c.event_id
             ON CONFLICT (workflow, customer_id, subject) WHERE state IN ('active', 'paused') DO NOTHING
             RETURNING id",
        )
        .bind(starts.now_ms)
        .bind(&starts.cases)
        .fetch_all(&mut **tx)
        .await?
        .into_iter()
        .collect();
        let inserted_ids: Vec<&String> = inserted_cases.iter().collect();
        sqlx::query(
            "INSERT INTO deliveries (id, case_id, step_index, step, channel, template, status,
                                     due_ms, planned_ms, idempotency_key, updated_ms, customer_id, critical)
             SELECT d.id, d.case_id, d.step_index, d.step, d.channel, d.template, 'scheduled',
                    d.due_ms, d.planned_ms, d.key, $1, d.customer, d.critical
             FROM jsonb_to_recordset($2::jsonb)
                  AS d(id text, case_id text, step_index int8, step text, channel text, template text,
                       due_ms int8, planned_ms int8, key text, customer text, critical int8)
             WHERE d.case_id = ANY($3)",
        )
        .bind(starts.now_ms)
        .bind(&starts.deliveries)
        .bind(&inserted_ids)
        .execute(&mut **tx)
        .await?;
        for ((i, j), case_id) in starts.ids {
            if inserted_cases.contains(&case_id) {
                started.insert((i, j), case_id);
                continue;
            }
            // A case open for the same workflow, customer and subject.
            let plan = starts.new[i];
            let open = Self::open_case(tx, &plan.starts[j], &plan.event).await?;
            refusals.already_open(starts.new, i, j, &open.unwrap_or_default());
        }
        Ok(started)
    }
    /// Connects and applies migrations (under PostgreSQL's advisory lock, so
    /// daemons starting together migrate once).
    pub async fn open(url: &str) -> Result<PostgresStore, StoreError> {
        PostgresStore::connect(PgConnectOptions::from_str(url)?).await
    }

    pub async fn connect(options: PgConnectOptions) -> Result<PostgresStore, StoreError> {
        // Every statement here is a short indexed lookup or update; a
        // just-in-time compilation (PostgreSQL compiles once a plan's
        // estimated cost passes `jit_above_cost`) costs hundreds of
        // milliseconds and never pays back.
        let options = options.options([("jit", "off")]);
        // One plain connection first: its error says what is wrong (refused,
        // authentication, no such database), where the pool's would only
        // say that it timed out.
        {
            use sqlx::Connection;
            sqlx::PgConnection::connect_with(&options)
                .await?
                .close()
                .await?;
        }
        let pool = PgPoolOptions::new()
            .max_connections(8)
            // While the database is unreachable, calls fail within seconds
            // (the API answers UNAVAILABLE, the scheduler backs off) instead
            // of hanging past the systemd watchdog.
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await?;
        Self::migrate(&pool, &MIGRATOR).await?;
        Ok(PostgresStore { pool })
    }

    /// Claims are leased rows here, which the reads of pending rows leave
    /// out by their status: nothing to bind (`shared::sql_store!`).
    fn exclude_in_flight<'q, O>(
        &self,
        query: QueryAs<'q, Postgres, O, <Postgres as Database>::Arguments>,
    ) -> QueryAs<'q, Postgres, O, <Postgres as Database>::Arguments> {
        query
    }

    /// Every daemon reads and writes through the one pool.
    fn reader(&self) -> &PgPool {
        &self.pool
    }

    fn writer(&self) -> &PgPool {
        &self.pool
    }

    async fn write_tx(&self) -> Result<Transaction<'static, Postgres>, StoreError> {
        Ok(self.pool.begin().await?)
    }

    /// Starts one case of an event, unless a case is already open for its
    /// workflow, customer and subject: then returns that case's id. Another
    /// daemon may be starting the same case right now, so the partial unique
    /// index refuses it (`ON CONFLICT … DO NOTHING`) rather than a read first.
    async fn start_case(
        tx: &mut Transaction<'static, Postgres>,
        case: &CaseStart<'_>,
    ) -> Result<Option<String>, StoreError> {
        Self::record_version(tx, case.start, case.now_ms).await?;
        let inserted = Self::insert_case(tx, case).await?;
        if inserted {
            return Ok(None);
        }
        let open = Self::open_case(tx, case.start, case.event).await?;
        Ok(Some(open.unwrap_or_default()))
    }
}

/// The channel on which daemons announce work the others may not know of.
const WORK_CHANNEL: &str = "dunningd_work";

/// Tells every listening daemon, when (and only if) the transaction commits,
/// that new deliveries may be due sooner than it thinks.
async fn announce_work(tx: &mut Transaction<'static, Postgres>) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(WORK_CHANNEL)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// An id list as PostgreSQL binds it: a `text[]`, read with `ANY`.
fn id_list<S: AsRef<str>>(ids: &[S]) -> Vec<&str> {
    ids.iter().map(AsRef::as_ref).collect()
}

/// Calls `on_work` for every announcement on [`WORK_CHANNEL`], and after a
/// lost connection (announcements may have been missed meanwhile). Runs for
/// the life of the process, reconnecting with backoff.
async fn listen(pool: PgPool, on_work: Box<dyn Fn() + Send + Sync>) {
    let mut failures = 0u32;
    loop {
        let listening = async {
            let mut listener = PgListener::connect_with(&pool).await?;
            listener.listen(WORK_CHANNEL).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        let mut listener = match listening.await {
            Ok(listener) => listener,
            Err(error) => {
                failures += 1;
                let wait = Duration::from_millis(100 * 2u64.pow(failures.min(6)));
                tracing::warn!(%error, retry_in = ?wait, "cannot listen for work announced by other daemons");
                tokio::time::sleep(wait).await;
                continue;
            }
        };
        if failures > 0 {
            tracing::info!("listening for work announced by other daemons again");
        }
        on_work();
        loop {
            match listener.try_recv().await {
                Ok(Some(_)) => on_work(),
                // Reconnected: whatever was announced meanwhile is lost.
                Ok(None) => on_work(),
                Err(error) => {
                    tracing::warn!(%error, "lost the connection listening for work announced by other daemons");
                    failures = 1;
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The pattern `sql::CASE_IDS_WITH_PREFIX` (LIKE) reads as "ids starting
/// with `prefix`" (`is_id_prefix` lets no wildcard into the prefix).
fn prefix_pattern(prefix: &str) -> String {
    format!("{prefix}%")
}

/// A case's exit event types as PostgreSQL binds them: a `text[]`.
fn exit_list(exit_on: &[String]) -> Result<&[String], StoreError> {
    Ok(exit_on)
}

#[async_trait]
impl Backend for PostgresStore {
    async fn renew_leases(
        &self,
        owner: &str,
        ids: &[String],
        lease: Duration,
    ) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar(sql::RENEW_LEASES)
            .bind(to_ms(Utc::now()) + lease.as_millis() as i64)
            .bind(ids)
            .bind(owner)
            .fetch_all(self.writer())
            .await?)
    }

    async fn release_leases(&self, owner: &str) -> Result<u64, StoreError> {
        let mut tx = self.write_tx().await?;
        let released = Self::release_leased(&mut tx, owner).await?;
        if released > 0 {
            announce_work(&mut tx).await?;
        }
        tx.commit().await?;
        Ok(released)
    }

    async fn claim_due(&self, at: ClaimAt, options: &ClaimOptions) -> Result<Claims, StoreError> {
        let (now, now_ms, wall_ms, lease_ms) = (at.now, at.now_ms, at.wall_ms, at.lease_ms);
        let mut tx = self.write_tx().await?;
        // Walk `deliveries_pending` in planned order and stop at the limit.
        // Until autovacuum has analysed freshly ingested rows the planner
        // expects a few hundred due rows and would rather collect every due
        // delivery and sort them (277 ms per claim at a 100k backlog,
        // against 2 ms); with sorting ruled out for this transaction the
        // ordered index walk is the only plan left (sorting is allowed again
        // for the rest of the claim, below).
        sqlx::query("SET LOCAL enable_sort = off")
            .execute(&mut *tx)
            .await?;
        // Rows another daemon is claiming right now are skipped, not waited
        // for. Each candidate comes with everything needed to send it
        // (`claimed_columns!`), so the claim itself is one UPDATE.
        let mut rows = sqlx::query(concat!(
            "SELECT ",
            claimed_columns!(),
            " FROM deliveries d JOIN cases c ON c.id = d.case_id
             WHERE d.status IN ('scheduled', 'retrying') AND d.planned_ms <= $1 AND c.state = 'active'
             ORDER BY d.planned_ms LIMIT $2
             FOR UPDATE OF d SKIP LOCKED"
        ))
        .bind(now_ms)
        .bind(options.limit as i64)
        .fetch_all(&mut *tx)
        .await?;
        sqlx::query("SET LOCAL enable_sort = on")
            .execute(&mut *tx)
            .await?;
        let room = options.limit as i64 - rows.len() as i64;
        if room > 0 {
            rows.extend(
                sqlx::query(concat!(
                    "SELECT ",
                    claimed_columns!(),
                    " FROM deliveries d JOIN cases c ON c.id = d.case_id
                     WHERE d.status = 'sending' AND d.lease_expires_ms <= $1 AND d.lease_owner <> $2
                       AND c.state = 'active'
                     LIMIT $3
                     FOR UPDATE OF d SKIP LOCKED"
                ))
                .bind(wall_ms)
                .bind(&options.owner)
                .bind(room)
                .fetch_all(&mut *tx)
                .await?,
            );
        }
        let sorted = Self::sort_candidates(&mut tx, &rows, now_ms, wall_ms, options).await?;
        let given_up = Self::hold_and_park(&mut tx, &sorted, now_ms, options).await?;
        if !sorted.claim.is_empty() {
            sqlx::query(
                "UPDATE deliveries SET status = 'sending', lease_owner = $1, lease_expires_ms = $2,
                        attempts = attempts + 1, updated_ms = $3
                 WHERE id = ANY($4)",
            )
            .bind(&options.owner)
            .bind(lease_ms)
            .bind(now_ms)
            .bind(&sorted.claim)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        hand_out(
            self,
            &options.owner,
            decode_claims(sorted.claimed)?,
            given_up,
            now,
        )
        .await
    }

    fn listen_for_work(&self, on_work: Box<dyn Fn() + Send + Sync>) {
        tokio::spawn(listen(self.pool.clone(), on_work));
    }

    /// The outcomes in one UPDATE, then each fallback and the exhausted
    /// cases, in one transaction. (sqlx's PostgreSQL driver runs on the
    /// async workers: each statement costs a round trip to the server, not
    /// a hand-off to a thread of the driver's, as on SQLite. The same work
    /// as one statement, one round trip, was no faster: bench/HISTORY.md,
    /// seventh sitting.)
    async fn complete(
        &self,
        owner: &str,
        results: Vec<(String, Completion)>,
        now: DateTime<Utc>,
    ) -> Result<Vec<String>, StoreError> {
        let now_ms = to_ms(now);
        let mut tx = self.write_tx().await?;
        let rows: Vec<OutcomeRow> = results
            .iter()
            .map(|(id, completion)| OutcomeRow::new(id, completion))
            .collect();
        let update = sqlx::query_as(sql::COMPLETE).bind(now_ms).bind(owner);
        let done: Vec<(String, String)> = bind_outcomes(update, &rows)?.fetch_all(&mut *tx).await?;
        let recorded: HashSet<&String> = done.iter().map(|(id, _)| id).collect();
        let mut lost = Vec::new();
        for (id, completion) in &results {
            if !recorded.contains(id) {
                lost.push(id.clone());
                continue;
            }
            if let Completion::Failed {
                fallback: Some(follow),
                ..
            }
            | Completion::Skipped {
                fallback: Some(follow),
                ..
            } = completion
            {
                // Once per (case, step, channel): the key is unique.
                sqlx::query(sql::FALLBACK)
                    .bind(uuid::Uuid::now_v7().to_string())
                    .bind(&follow.channel)
                    .bind(&follow.template)
                    .bind(to_ms(follow.due_at))
                    .bind(to_ms(follow.planned_at))
                    .bind(now_ms)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        // A case whose every delivery is final, and that nobody
        // ended otherwise, ran all its steps without a recovery.
        if !done.is_empty() {
            sqlx::query(sql::EXHAUST_CASES)
                .bind(now_ms)
                .bind(id_list(&cases_of(&done)))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(lost)
    }
}

/// Binds a batch of outcomes to `sql::COMPLETE`: one array per column.
fn bind_outcomes<'q, O>(
    query: QueryAs<'q, Postgres, O, <Postgres as Database>::Arguments>,
    rows: &[OutcomeRow<'q>],
) -> Result<QueryAs<'q, Postgres, O, <Postgres as Database>::Arguments>, StoreError> {
    Ok(query
        .bind(rows.iter().map(|r| r.id).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.status).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.receipt).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.text).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.planned_ms).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.attempts).collect::<Vec<_>>()))
}

/// Daemons claiming for the same customer and channel at once take turns,
/// so neither misses the other's sends.
async fn lock_cap(
    tx: &mut Transaction<'static, Postgres>,
    customer: &str,
    channel: &str,
) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
        .bind(format!("cap:{customer}:{channel}"))
        .execute(&mut **tx)
        .await?;
    Ok(())
}

super::shared::sql_store!(PostgresStore, Postgres);

/// The statements of the methods written once in `shared.rs`.
mod sql {
    use super::super::rows::outcome_columns;
    pub use super::super::shared::same_sql::*;

    /// Stale starts only: a case already open is refused by `start_cases`'
    /// ON CONFLICT, which also holds against another daemon's start.
    pub const REFUSE_STARTS: &str = "SELECT c.i, c.j, x.id AS later_exit, NULL::text AS open_case
         FROM jsonb_to_recordset($1::jsonb)
              AS c(i int8, j int8, customer text, subject text, occurred_ms int8, exit_on text[])
         CROSS JOIN LATERAL (SELECT id FROM events
                             WHERE customer_id = c.customer AND subject = c.subject
                               AND occurred_ms > c.occurred_ms AND type = ANY(c.exit_on)
                             ORDER BY occurred_ms DESC LIMIT 1) AS x";
    pub const OPEN_CASE: &str =
        "SELECT id FROM cases WHERE workflow = $1 AND customer_id = $2 AND subject = $3
         AND state IN ('active', 'paused')";
    pub const HAS_MIGRATIONS: &str = "SELECT to_regclass('_sqlx_migrations') IS NOT NULL";
    pub const INSERT_CASE: &str = "INSERT INTO cases (id, workflow, workflow_version, customer_id, subject, state,
         exit_on, trigger_event_id, trigger_event, started_ms, updated_ms)
         VALUES ($1, $2, $3, $4, $5, 'active', $6, $7, $8, $9, $9)
         ON CONFLICT (workflow, customer_id, subject) WHERE state IN ('active', 'paused') DO NOTHING";
    pub const INSERT_EVENTS: &str =
        "INSERT INTO events (id, type, customer_id, subject, occurred_ms, received_ms, body)
         SELECT e.id, e.type, e.customer, e.subject, e.occurred_ms, $1, e.body
         FROM jsonb_to_recordset($2::jsonb)
              AS e(id text, type text, customer text, subject text, occurred_ms int8, body text)
         ON CONFLICT (id) DO NOTHING RETURNING id";
    pub const RECOVER_BATCH: &str =
        "UPDATE cases SET state = 'recovered', updated_ms = $1, paused_ms = NULL,
         ended_reason = 'exit event ' || e.id || ' (' || e.type || ')'
         FROM jsonb_to_recordset($2::jsonb) AS e(id text, type text, customer text, subject text)
         WHERE cases.customer_id = e.customer AND cases.subject = e.subject
         AND cases.state IN ('active', 'paused') AND e.type = ANY(cases.exit_on)
         RETURNING cases.id, cases.customer_id, cases.subject";
    pub const INSERT_VERSIONS: &str =
        "INSERT INTO workflow_versions (version, name, source, first_seen_ms)
         SELECT v.version, v.name, v.source, $1
         FROM jsonb_to_recordset($2::jsonb) AS v(version text, name text, source text)
         ON CONFLICT (version) DO NOTHING";
    pub const RECOVER_CASES: &str = "UPDATE cases SET state = 'recovered', updated_ms = $1, paused_ms = NULL,
         ended_reason = 'exit event ' || $2 || ' (' || $3 || ')'
         WHERE customer_id = $4 AND subject = $5 AND state IN ('active', 'paused') AND $3 = ANY(exit_on)
         RETURNING id";
    pub const LATER_EXIT: &str = "SELECT id FROM events
         WHERE customer_id = $1 AND subject = $2 AND occurred_ms > $3 AND type = ANY($4)
         ORDER BY occurred_ms DESC LIMIT 1";
    pub const INSERT_VERSION: &str =
        "INSERT INTO workflow_versions (version, name, source, first_seen_ms)
         VALUES ($1, $2, $3, $4) ON CONFLICT (version) DO NOTHING";
    pub const INSERT_EVENT: &str =
        "INSERT INTO events (id, type, customer_id, subject, occurred_ms, received_ms, body)
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (id) DO NOTHING";
    pub const INSERT_DELIVERY: &str =
        "INSERT INTO deliveries (id, case_id, step_index, step, channel, template, status,
         due_ms, planned_ms, idempotency_key, updated_ms, customer_id, critical)
         VALUES ($1, $2, $3, $4, $5, $6, 'scheduled', $7, $8, $9, $10, $11, $12)";
    pub const RECENT_SENDS: &str = "SELECT CASE WHEN status = 'sending' THEN $1 ELSE sent_ms END FROM deliveries
         WHERE customer_id = $2 AND channel = $3
             AND ((status = 'sent' AND sent_ms > $4) OR (status = 'sending' AND lease_expires_ms > $5))";
    pub const HOLD: &str = "UPDATE deliveries SET planned_ms = $1, note = $2, lease_owner = NULL, lease_expires_ms = NULL,
             updated_ms = $3, status = CASE WHEN status = 'sending' THEN 'scheduled' ELSE status END
         WHERE id = $4";
    pub const PARK: &str = "UPDATE deliveries SET status = 'failed', lease_owner = NULL, lease_expires_ms = NULL,
             last_error = 'gave up after ' || attempts || ' claims without an outcome; the daemon stopped during each attempt',
             updated_ms = $1
         WHERE id = ANY($2)
         RETURNING channel";
    /// One statement for the whole batch, joined on the primary key (a
    /// per-row UPDATE let the planner pick the partial index of leased
    /// deliveries and walk every one in flight); the outcomes come as one
    /// array per column (`rows::OutcomeRow`).
    pub const COMPLETE: &str = concat!(
        "UPDATE deliveries d SET ",
        outcome_columns!(),
        ", sent_ms = CASE WHEN u.status = 'sent' THEN $1 ELSE d.sent_ms END,
           lease_owner = NULL, lease_expires_ms = NULL, updated_ms = $1
         FROM unnest($3::text[], $4::text[], $5::text[], $6::text[], $7::int8[], $8::int4[])
              AS u(id, status, receipt, text, planned_ms, attempts)
         WHERE d.id = u.id AND d.lease_owner = $2 AND d.status = 'sending'
         RETURNING d.id, d.case_id"
    );
    pub const FALLBACK: &str =
        "INSERT INTO deliveries (id, case_id, step_index, step, channel, template, status,
                                 due_ms, planned_ms, idempotency_key, updated_ms, fallback_for,
                                 customer_id, critical)
         SELECT $1, case_id, step_index, step, $2, $3, 'scheduled', $4, $5,
                'dunningd-' || case_id || '-' || step_index || '-' || $2, $6, channel,
                customer_id, critical
         FROM deliveries WHERE id = $7
         ON CONFLICT (idempotency_key) DO NOTHING";
    pub const EXHAUST_CASES: &str =
        "UPDATE cases SET state = 'exhausted', ended_reason = 'all steps ran', updated_ms = $1
         WHERE id = ANY($2) AND state = 'active'
           AND NOT EXISTS (SELECT 1 FROM deliveries p WHERE p.case_id = cases.id
                           AND p.status IN ('scheduled', 'sending', 'retrying'))";
    pub const SKIP_PENDING: &str =
        "UPDATE deliveries SET status = 'skipped', skip_reason = $1, lease_owner = NULL,
            lease_expires_ms = NULL, updated_ms = $2
         WHERE case_id = ANY($3) AND status IN ('scheduled', 'retrying')";
    pub const RENEW_LEASES: &str = "UPDATE deliveries SET lease_expires_ms = $1
         WHERE id = ANY($2) AND lease_owner = $3 AND status = 'sending'
         RETURNING id";
    pub const NEXT_DUE: &str =
        "SELECT d.planned_ms FROM deliveries d JOIN cases c ON c.id = d.case_id
         WHERE d.status IN ('scheduled', 'retrying') AND c.state = 'active'
         ORDER BY d.planned_ms LIMIT 1";
    pub const RELEASE_LEASES: &str =
        "UPDATE deliveries SET status = 'scheduled', lease_owner = NULL, lease_expires_ms = NULL
         WHERE status = 'sending' AND lease_owner = $1";
    /// The case an operator's action reads and changes, locked against
    /// another daemon's action or event until the transaction ends.
    pub const CASE_TO_CHANGE: &str = "SELECT * FROM cases WHERE id = $1 FOR UPDATE";
    pub const PAUSE_CASE: &str =
        "UPDATE cases SET state = 'paused', paused_ms = $1, updated_ms = $1 WHERE id = $2";
    pub const POSTPONE_PENDING: &str =
        "UPDATE deliveries SET due_ms = due_ms + $1, planned_ms = planned_ms + $1, updated_ms = $2
         WHERE case_id = $3 AND status IN ('scheduled', 'retrying')";
    pub const RESUME_CASE: &str =
        "UPDATE cases SET state = 'active', paused_ms = NULL, updated_ms = $1 WHERE id = $2";
    pub const CANCEL_CASE: &str = "UPDATE cases SET state = 'cancelled', paused_ms = NULL, ended_reason = 'cancelled by an operator',
                updated_ms = $1 WHERE id = $2";
    pub const OPT_OUT: &str = "INSERT INTO optouts (customer_id, channel, source, reason, created_ms) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (customer_id, channel) DO UPDATE
         SET source = excluded.source, reason = excluded.reason, created_ms = excluded.created_ms";
    pub const OPT_IN: &str = "DELETE FROM optouts WHERE customer_id = $1 AND channel = $2 AND ($3::TEXT IS NULL OR source = $3)";
    pub const STATS: &str =
        "SELECT c.id AS case_id, c.workflow, c.state, c.started_ms, c.updated_ms,
                (c.trigger_event::jsonb) -> 'data' ->> 'amount' AS amount,
                (c.trigger_event::jsonb) -> 'data' ->> 'currency' AS currency,
                d.step_index, d.step, d.channel, d.status, d.sent_ms
         FROM cases c LEFT JOIN deliveries d ON d.case_id = c.id
         WHERE ($1::TEXT IS NULL OR c.workflow = $1) AND ($2::BIGINT IS NULL OR c.started_ms >= $2)
           AND ($3::BIGINT IS NULL OR c.started_ms < $3)
         ORDER BY c.id";
    pub const CUSTOMERS_BY_PHONE: &str = "SELECT DISTINCT customer_id FROM cases
         WHERE ((trigger_event::jsonb) -> 'customer' ->> 'phone') = $1 ORDER BY customer_id";
    pub const RECORD_REPORT: &str =
        "INSERT INTO provider_reports (channel, receipt, status, error_code, rank, updated_ms)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (channel, receipt) DO UPDATE
         SET status = excluded.status, error_code = excluded.error_code,
             rank = excluded.rank, updated_ms = excluded.updated_ms
         WHERE excluded.rank > provider_reports.rank";
    pub const LIST_OPTOUTS: &str =
        "SELECT * FROM optouts WHERE ($1::text IS NULL OR customer_id = $1)
         ORDER BY created_ms DESC, customer_id, channel LIMIT $2";
    pub const LIST_CASES: &str = "SELECT * FROM cases
         WHERE ($1::text IS NULL OR workflow = $1) AND ($2::text IS NULL OR state = $2) AND ($3::text IS NULL OR customer_id = $3)
         ORDER BY started_ms DESC, id DESC LIMIT $4";
    pub const CASE: &str = "SELECT * FROM cases WHERE id = $1";
    pub const CASE_DELIVERIES: &str = "SELECT d.*, r.status AS report_status, r.error_code AS report_error
         FROM deliveries d LEFT JOIN provider_reports r ON r.channel = d.channel AND r.receipt = d.receipt
         WHERE d.case_id = $1 ORDER BY d.step_index, d.fallback_for IS NOT NULL, d.channel";
    pub const CASE_IDS_WITH_PREFIX: &str =
        "SELECT id FROM cases WHERE id LIKE $1 ORDER BY id LIMIT $2";
    pub const WORKFLOW_SOURCE: &str = "SELECT source FROM workflow_versions WHERE version = $1";
    pub const BACKLOG: &str =
        "SELECT COUNT(*), MIN(d.planned_ms) FROM deliveries d JOIN cases c ON c.id = d.case_id
         WHERE d.status IN ('scheduled', 'retrying') AND d.planned_ms <= $1 AND c.state = 'active'";
}
