//! The `Store` methods whose Rust is the same for both backends, written
//! once: they differ only in SQL dialect, and each backend keeps its own
//! statements (`sql::*` constants in `sqlite.rs` and `postgres.rs`), so any
//! per-backend tuning stays visible there.
//!
//! What differs in concurrency each backend writes its own way: opening,
//! starting cases (`start_case`, `start_cases`: SQLite reads for an open
//! case first, PostgreSQL lets the partial unique index refuse it), reading
//! and taking claims ([`Backend::claim_due`]; SQLite holds most in memory,
//! PostgreSQL leases rows), renewing and releasing them, recording outcomes
//! ([`Backend::complete`]: one call to SQLite's writer thread, several
//! statements on PostgreSQL) and listening for work. SQL
//! whose text is the same in both dialects is written once too: whole
//! statements ([`same_sql`]) and what a completion sets from its outcome
//! (`rows::outcome_columns!`).
//!
//! The shared methods are stamped into each backend by [`sql_store!`]
//! rather than written generic over sqlx's `Database`: the bounds a generic
//! body needs (every bound type's `Encode`/`Decode`, executors for pools and
//! transactions, `Send` futures for `async_trait`) would outweigh the bodies.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{ClaimOptions, Claims, Completion, NewCase, StoreError, to_ms};
use crate::model::Event;

/// The `Store` methods each backend writes its own way. [`sql_store!`]
/// forwards the trait's methods of these names here.
#[async_trait]
pub(crate) trait Backend {
    /// As [`super::Store::claim_due`], at the times taken when it was called.
    async fn claim_due(&self, at: ClaimAt, options: &ClaimOptions) -> Result<Claims, StoreError>;

    /// As [`super::Store::complete`]: the outcomes, their fallbacks and the
    /// cases they exhaust in one transaction.
    async fn complete(
        &self,
        owner: &str,
        results: Vec<(String, Completion)>,
        now: DateTime<Utc>,
    ) -> Result<Vec<String>, StoreError>;

    /// As [`super::Store::renew_leases`], for a non-empty list.
    async fn renew_leases(
        &self,
        owner: &str,
        ids: &[String],
        lease: std::time::Duration,
    ) -> Result<Vec<String>, StoreError>;

    /// As [`super::Store::release_leases`].
    async fn release_leases(&self, owner: &str) -> Result<u64, StoreError>;

    /// As [`super::Store::listen_for_work`]; nothing by default.
    fn listen_for_work(&self, on_work: Box<dyn Fn() + Send + Sync>) {
        let _ = on_work;
    }
}

/// The times one claim works with, taken once as it starts.
pub(crate) struct ClaimAt {
    /// The engine's time: what is due.
    pub now: DateTime<Utc>,
    pub now_ms: i64,
    /// Wall-clock time, for leases: they measure whether a process is alive.
    pub wall_ms: i64,
    /// When the leases this claim takes run out.
    pub lease_ms: i64,
}

impl ClaimAt {
    pub fn new(now: DateTime<Utc>, options: &ClaimOptions) -> ClaimAt {
        let wall_ms = to_ms(Utc::now());
        ClaimAt {
            now,
            now_ms: to_ms(now),
            wall_ms,
            lease_ms: wall_ms + options.lease.as_millis() as i64,
        }
    }
}

/// One case an event starts, as the backend's `start_case` is given it.
pub(crate) struct CaseStart<'a> {
    pub id: &'a str,
    pub start: &'a NewCase,
    pub event: &'a Event,
    /// The event as stored: the case's trigger event.
    pub body: &'a str,
    pub now_ms: i64,
}

/// The statements whose text is the same in both dialects: each backend's
/// `sql` module takes them in (`pub use`), and may shadow one with its own
/// to tune it.
pub(crate) mod same_sql {
    pub const CASE_COUNTS: &str = "SELECT state, COUNT(*) AS n FROM cases GROUP BY state";
    pub const OPEN_CASES_BY_WORKFLOW: &str = "SELECT workflow, COUNT(*) AS n FROM cases
         WHERE state IN ('active', 'paused') GROUP BY workflow";
    pub const CASES_BY_WORKFLOW_AND_STATE: &str =
        "SELECT workflow, state, COUNT(*) AS n FROM cases GROUP BY workflow, state";
}

/// Claim candidates sorted out by `sort_candidates` (stamped by
/// [`sql_store!`]), for the backend's claim to write.
pub(crate) struct Candidates<'r, R> {
    /// To claim: their ids, and their rows.
    pub claim: Vec<String>,
    pub claimed: Vec<&'r R>,
    /// Claimed too often without an outcome: to be failed instead.
    pub park: Vec<String>,
    /// Over a frequency cap: the id, when the cap allows it, and the note
    /// saying so.
    pub held: Vec<(String, i64, String)>,
}

/// Implements `Store` for a backend's store type (`$db`: its sqlx
/// `Database`) with the shared methods below, forwarding the rest to
/// [`Backend`]; and stamps the shared helpers the backend's own methods use
/// too (`ingest_independent`, `refuse_starts`, `skip_pending`, `release_leased`,
/// `record_event`, `record_version`, `open_case`, `insert_case`,
/// `schedule_deliveries`, `migrate`, `sort_candidates`, `hold_and_park`).
///
/// Expanded inside the backend's module, where these names must resolve
/// (paths in a `macro_rules!` body resolve where the macro is used):
/// - `sql::NAME`: the backend's statements, one constant per statement, with
///   the same names and the same parameters in both backends;
/// - `self.reader()`: the pool for reads, `self.writer()`: the pool for
///   writes of one statement, `self.write_tx()`: a write transaction;
/// - `announce_work(&mut tx)`: tells other daemons that the transaction
///   creates work (nothing to do on SQLite);
/// - `id_list(&ids)`: a list of ids as the backend binds it,
///   `prefix_pattern(prefix)` the pattern of ids starting with a prefix, and
///   `exit_list(&exit_on)` a case's exit event types;
/// - `self.exclude_in_flight(query)`: binds what the scheduler's reads of
///   pending rows (`sql::NEXT_DUE`, `sql::BACKLOG`) leave out as claimed
///   already, as their last parameter: SQLite's claims held in memory
///   (`claim_book`); nothing on PostgreSQL, whose claims are leased rows;
/// - `lock_cap(tx, customer, channel)`: makes claims for the same customer
///   and channel take turns (nothing to do on SQLite);
/// - `Self::start_cases(tx, starts, refusals)`: a batch's starts that
///   `refuse_starts` left, started (refusing those already open, where the
///   backend finds them only now), and `Self::start_case(tx, &CaseStart)`
///   one case, unless one is already open: where the backends differ in
///   concurrency.
macro_rules! sql_store {
    ($store:ty, $db:ty) => {
        // A block of its own, for the imports the bodies use.
        const _: () = {
            use std::collections::hash_map::Entry;
            use std::collections::{BTreeMap, HashMap, HashSet};
            use std::time::Duration;

            use chrono::{DateTime, Utc};

            use sqlx::{Row, Transaction};
            use $crate::model::{Case, CaseDetail, CaseFilter, CaseState, OptOut};
            use $crate::stats::{Stats, StatsBuilder, StatsFilter};
            use $crate::store::rows::{
                case_from_row, corrupt, delivery_from_row, optout_from_row,
                state_counts, stats_row_from_row, workflow_counts, workflow_state_counts,
            };
            use $crate::store::batch;
            use $crate::store::shared::{Backend, CaseStart, Candidates, ClaimAt};
            use $crate::store::{
                CaseAction, ClaimOptions, Claims, Completion, EventPlan, Gauges, IngestOutcome,
                NewCase, NewDelivery, ProviderReport, Store, StoreError, check_schema, from_ms,
                idempotency_key, is_id_prefix,
                to_ms,
            };

            impl $store {
                /// Marks the still-pending deliveries of the given cases skipped.
                async fn skip_pending(
                    tx: &mut Transaction<'static, $db>,
                    case_ids: &[String],
                    reason: &str,
                    now_ms: i64,
                ) -> Result<(), StoreError> {
                    sqlx::query(sql::SKIP_PENDING)
                        .bind(reason)
                        .bind(now_ms)
                        .bind(id_list(case_ids))
                        .execute(&mut **tx)
                        .await?;
                    Ok(())
                }

                /// Gives this owner's leased claims back (a clean stop); their
                /// attempts keep counting: the plugin may have been called.
                async fn release_leased(
                    tx: &mut Transaction<'static, $db>,
                    owner: &str,
                ) -> Result<u64, StoreError> {
                    Ok(sqlx::query(sql::RELEASE_LEASES)
                        .bind(owner)
                        .execute(&mut **tx)
                        .await?
                        .rows_affected())
                }

                /// Sorts claim candidates out, in their order: those claimed
                /// too often are parked, those a frequency cap holds back
                /// are held, the rest claimed. Each customer's recent sends
                /// per capped channel (in-flight ones count as now) are read
                /// once per batch.
                async fn sort_candidates<'r>(
                    tx: &mut Transaction<'static, $db>,
                    rows: &'r [<$db as sqlx::Database>::Row],
                    now_ms: i64,
                    wall_ms: i64,
                    options: &ClaimOptions,
                ) -> Result<Candidates<'r, <$db as sqlx::Database>::Row>, StoreError> {
                    let mut sorted = Candidates {
                        claim: Vec::new(),
                        claimed: Vec::with_capacity(rows.len()),
                        park: Vec::new(),
                        held: Vec::new(),
                    };
                    let mut recent: HashMap<(String, String), Vec<i64>> = HashMap::new();
                    for row in rows {
                        let id: String = row.try_get("id")?;
                        // This claim's number: the attempts before it, plus one.
                        let attempt: i64 = row.try_get("attempts")?;
                        if attempt > options.max_claims as i64 {
                            sorted.park.push(id);
                            continue;
                        }
                        let channel: String = row.try_get("channel")?;
                        let customer: Option<String> = row.try_get("customer_id")?;
                        let critical: i64 = row.try_get("critical")?;
                        if let (Some(cap), Some(customer), 0) =
                            (options.caps.get(&channel), customer, critical)
                        {
                            let times = match recent.entry((customer, channel.clone())) {
                                Entry::Occupied(known) => known.into_mut(),
                                Entry::Vacant(first) => {
                                    let (customer, channel) = first.key();
                                    lock_cap(tx, customer, channel).await?;
                                    let times: Vec<i64> = sqlx::query_scalar(sql::RECENT_SENDS)
                                        .bind(now_ms)
                                        .bind(customer)
                                        .bind(channel)
                                        .bind(now_ms - cap.per.as_millis() as i64)
                                        .bind(wall_ms)
                                        .fetch_all(&mut **tx)
                                        .await?;
                                    first.insert(times)
                                }
                            };
                            if let Some(until) = cap.next_allowed(times, now_ms) {
                                sorted.held.push((id, until, cap.note(&channel, until)));
                                continue;
                            }
                        }
                        sorted.claim.push(id);
                        sorted.claimed.push(row);
                    }
                    Ok(sorted)
                }

                /// Moves the held candidates to when their cap allows them,
                /// and fails the parked ones; returns the parked ones'
                /// channels (`Claims::given_up`).
                async fn hold_and_park<R>(
                    tx: &mut Transaction<'static, $db>,
                    sorted: &Candidates<'_, R>,
                    now_ms: i64,
                    options: &ClaimOptions,
                ) -> Result<Vec<String>, StoreError> {
                    for (id, until, note) in &sorted.held {
                        sqlx::query(sql::HOLD)
                            .bind(until)
                            .bind(note)
                            .bind(now_ms)
                            .bind(id)
                            .execute(&mut **tx)
                            .await?;
                    }
                    if sorted.park.is_empty() {
                        return Ok(Vec::new());
                    }
                    tracing::error!(
                        deliveries = sorted.park.len(),
                        max_claims = options.max_claims,
                        "parking deliveries claimed too often without an outcome (did a plugin crash the daemon?)"
                    );
                    Ok(sqlx::query_scalar(sql::PARK)
                        .bind(now_ms)
                        .bind(id_list(&sorted.park))
                        .fetch_all(&mut **tx)
                        .await?)
                }

                /// Refuses the batch's starts whose trigger is stale (a later
                /// exit event was seen), and those whose case is already open
                /// where the backend reads that here (`sql::REFUSE_STARTS`'s
                /// `open_case`); read after the batch's exits, as event by
                /// event.
                async fn refuse_starts(
                    tx: &mut Transaction<'static, $db>,
                    new: &[&EventPlan],
                    candidates: String,
                    refusals: &mut batch::Refusals,
                ) -> Result<(), StoreError> {
                    let checks = sqlx::query(sql::REFUSE_STARTS)
                        .bind(candidates)
                        .fetch_all(&mut **tx)
                        .await?;
                    for row in &checks {
                        let (i, j): (i64, i64) = (row.try_get("i")?, row.try_get("j")?);
                        let (i, j) = (i as usize, j as usize);
                        if let Some(exit_id) = row.try_get::<Option<String>, _>("later_exit")? {
                            refusals.later_exit(new, i, j, &exit_id);
                        } else if let Some(case_id) = row.try_get::<Option<String>, _>("open_case")? {
                            refusals.already_open(new, i, j, &case_id);
                        }
                    }
                    Ok(())
                }

                /// `ingest` for a batch of independent events
                /// (`batch::independent`): the same rules as the
                /// event-by-event path, applied with a fixed handful of
                /// statements per batch instead of several per event (each
                /// statement costs a round trip). The backend refuses
                /// already open starts its own way (`sql::REFUSE_STARTS`,
                /// `start_cases`).
                async fn ingest_independent(
                    &self,
                    plans: Vec<EventPlan>,
                    now: DateTime<Utc>,
                ) -> Result<Vec<IngestOutcome>, StoreError> {
                    let now_ms = to_ms(now);
                    let events = batch::event_rows(&plans)?;
                    let mut tx = self.write_tx().await?;
                    let inserted: HashSet<String> = sqlx::query_scalar(sql::INSERT_EVENTS)
                        .bind(now_ms)
                        .bind(events)
                        .fetch_all(&mut *tx)
                        .await?
                        .into_iter()
                        .collect();
                    let new = batch::newly_recorded(&plans, &inserted);

                    let recovered = sqlx::query_as(sql::RECOVER_BATCH)
                        .bind(now_ms)
                        .bind(batch::exit_rows(&new)?)
                        .fetch_all(&mut *tx)
                        .await?;
                    let recovered = batch::Recovered::new(recovered);
                    if !recovered.ids.is_empty() {
                        Self::skip_pending(&mut tx, &recovered.ids, "case recovered", now_ms).await?;
                    }

                    let mut refusals = batch::Refusals::default();
                    if let Some(candidates) = batch::candidate_rows(&new)? {
                        Self::refuse_starts(&mut tx, &new, candidates, &mut refusals).await?;
                    }
                    let mut started = BTreeMap::new();
                    if let Some(starts) = batch::Starts::plan(&new, &refusals, now_ms)? {
                        sqlx::query(sql::INSERT_VERSIONS)
                            .bind(now_ms)
                            .bind(&starts.versions)
                            .execute(&mut *tx)
                            .await?;
                        started = Self::start_cases(&mut tx, starts, &mut refusals).await?;
                        if !started.is_empty() {
                            announce_work(&mut tx).await?;
                        }
                    }
                    tx.commit().await?;
                    Ok(batch::outcomes(
                        plans,
                        &inserted,
                        recovered.by_key,
                        refusals,
                        started,
                    ))
                }

                /// Refuses a database that a newer dunningd has migrated
                /// (`check_schema`), then applies the migrations.
                async fn migrate(
                    pool: &sqlx::Pool<$db>,
                    migrator: &sqlx::migrate::Migrator,
                ) -> Result<(), StoreError> {
                    let has_migrations: bool =
                        sqlx::query_scalar(sql::HAS_MIGRATIONS).fetch_one(pool).await?;
                    if has_migrations {
                        let applied: Option<i64> =
                            sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations")
                                .fetch_one(pool)
                                .await?;
                        check_schema(applied, migrator)?;
                    }
                    migrator.run(pool).await?;
                    Ok(())
                }

                /// The case open for a start's workflow, customer and
                /// subject, if any.
                async fn open_case(
                    tx: &mut Transaction<'static, $db>,
                    start: &NewCase,
                    event: &$crate::model::Event,
                ) -> Result<Option<String>, StoreError> {
                    Ok(sqlx::query_scalar(sql::OPEN_CASE)
                        .bind(&start.workflow)
                        .bind(&event.customer.id)
                        .bind(&event.subject)
                        .fetch_optional(&mut **tx)
                        .await?)
                }

                /// Inserts a case an event starts; false when the statement
                /// refused it (PostgreSQL's, for a case already open).
                async fn insert_case(
                    tx: &mut Transaction<'static, $db>,
                    case: &CaseStart<'_>,
                ) -> Result<bool, StoreError> {
                    let (start, event) = (case.start, case.event);
                    let inserted = sqlx::query(sql::INSERT_CASE)
                        .bind(case.id)
                        .bind(&start.workflow)
                        .bind(&start.workflow_version)
                        .bind(&event.customer.id)
                        .bind(&event.subject)
                        .bind(exit_list(&start.exit_on)?)
                        .bind(&event.id)
                        .bind(case.body)
                        .bind(case.now_ms)
                        .execute(&mut **tx)
                        .await?
                        .rows_affected();
                    Ok(inserted > 0)
                }

                /// Records one event, and starts its outcome: marked a
                /// duplicate when the event id was seen before, else with
                /// the event's stored body to start cases with.
                async fn record_event(
                    tx: &mut Transaction<'static, $db>,
                    plan: &EventPlan,
                    now_ms: i64,
                ) -> Result<(IngestOutcome, Option<String>), StoreError> {
                    let event = &plan.event;
                    let mut outcome = IngestOutcome {
                        event_id: event.id.clone(),
                        notes: plan.notes.clone(),
                        ..Default::default()
                    };
                    let body = serde_json::to_string(event).map_err(|e| corrupt("events", e))?;
                    let inserted = sqlx::query(sql::INSERT_EVENT)
                        .bind(&event.id)
                        .bind(&event.event_type)
                        .bind(&event.customer.id)
                        .bind(&event.subject)
                        .bind(to_ms(plan.occurred_at))
                        .bind(now_ms)
                        .bind(&body)
                        .execute(&mut **tx)
                        .await?
                        .rows_affected();
                    if inserted == 0 {
                        outcome.duplicate = true;
                        outcome.notes.clear();
                        return Ok((outcome, None));
                    }
                    Ok((outcome, Some(body)))
                }

                /// Records a workflow version's source, once per version.
                async fn record_version(
                    tx: &mut Transaction<'static, $db>,
                    start: &NewCase,
                    now_ms: i64,
                ) -> Result<(), StoreError> {
                    sqlx::query(sql::INSERT_VERSION)
                        .bind(&start.workflow_version)
                        .bind(&start.workflow)
                        .bind(&start.workflow_source)
                        .bind(now_ms)
                        .execute(&mut **tx)
                        .await?;
                    Ok(())
                }

                /// Schedules a new case's deliveries.
                async fn schedule_deliveries(
                    tx: &mut Transaction<'static, $db>,
                    case_id: &str,
                    customer_id: &str,
                    deliveries: &[NewDelivery],
                    now_ms: i64,
                ) -> Result<(), StoreError> {
                    for d in deliveries {
                        sqlx::query(sql::INSERT_DELIVERY)
                            .bind(uuid::Uuid::now_v7().to_string())
                            .bind(case_id)
                            .bind(d.step_index as i64)
                            .bind(&d.step)
                            .bind(&d.channel)
                            .bind(&d.template)
                            .bind(to_ms(d.due_at))
                            .bind(to_ms(d.planned_at))
                            .bind(idempotency_key(case_id, d.step_index, &d.channel))
                            .bind(now_ms)
                            .bind(customer_id)
                            .bind(i64::from(d.critical))
                            .execute(&mut **tx)
                            .await?;
                    }
                    Ok(())
                }
            }

            #[async_trait::async_trait]
            impl Store for $store {
                async fn ingest(
                    &self,
                    plans: Vec<EventPlan>,
                    now: DateTime<Utc>,
                ) -> Result<Vec<IngestOutcome>, StoreError> {
                    if batch::independent(&plans) {
                        return self.ingest_independent(plans, now).await;
                    }
                    let now_ms = to_ms(now);
                    let mut tx = self.write_tx().await?;
                    let mut outcomes = Vec::with_capacity(plans.len());
                    for plan in plans {
                        let (mut outcome, body) = Self::record_event(&mut tx, &plan, now_ms).await?;
                        let Some(body) = body else {
                            outcomes.push(outcome);
                            continue;
                        };
                        let event = &plan.event;

                        // Exits: every open case for this customer and
                        // subject whose own workflow version lists this
                        // event type in exit_on.
                        let recovered: Vec<String> = sqlx::query_scalar(sql::RECOVER_CASES)
                            .bind(now_ms)
                            .bind(&event.id)
                            .bind(&event.event_type)
                            .bind(&event.customer.id)
                            .bind(&event.subject)
                            .fetch_all(&mut *tx)
                            .await?;
                        if !recovered.is_empty() {
                            Self::skip_pending(&mut tx, &recovered, "case recovered", now_ms).await?;
                            outcome.cases_recovered = recovered;
                        }

                        for start in plan.starts {
                            // A later exit event already seen (webhooks
                            // arrive out of order) means this trigger is
                            // stale: the customer has paid.
                            let exit_on = exit_list(&start.exit_on)?;
                            let later_exit: Option<String> = sqlx::query_scalar(sql::LATER_EXIT)
                                .bind(&event.customer.id)
                                .bind(&event.subject)
                                .bind(to_ms(plan.occurred_at))
                                .bind(&exit_on)
                                .fetch_optional(&mut *tx)
                                .await?;
                            if let Some(exit_id) = later_exit {
                                outcome.notes.push(format!(
                                    "workflow '{}': no case started, exit event '{exit_id}' occurred later",
                                    start.workflow
                                ));
                                continue;
                            }
                            let case_id = uuid::Uuid::now_v7().to_string();
                            let case = CaseStart {
                                id: &case_id,
                                start: &start,
                                event,
                                body: &body,
                                now_ms,
                            };
                            let open = Self::start_case(&mut tx, &case).await?;
                            if let Some(open) = open {
                                outcome.notes.push(format!(
                                    "workflow '{}': no case started, case '{open}' is already open for this customer and subject",
                                    start.workflow
                                ));
                                continue;
                            }
                            Self::schedule_deliveries(
                                &mut tx,
                                &case_id,
                                &event.customer.id,
                                &start.deliveries,
                                now_ms,
                            )
                            .await?;
                            outcome.cases_started.push(case_id);
                        }
                        outcomes.push(outcome);
                    }
                    if outcomes.iter().any(|o| !o.cases_started.is_empty()) {
                        announce_work(&mut tx).await?;
                    }
                    tx.commit().await?;
                    Ok(outcomes)
                }

                async fn claim_due(
                    &self,
                    now: DateTime<Utc>,
                    options: &ClaimOptions,
                ) -> Result<Claims, StoreError> {
                    Backend::claim_due(self, ClaimAt::new(now, options), options).await
                }

                fn listen_for_work(&self, on_work: Box<dyn Fn() + Send + Sync>) {
                    Backend::listen_for_work(self, on_work)
                }

                async fn complete(
                    &self,
                    owner: &str,
                    results: Vec<(String, Completion)>,
                    now: DateTime<Utc>,
                ) -> Result<Vec<String>, StoreError> {
                    Backend::complete(self, owner, results, now).await
                }

                async fn renew_leases(
                    &self,
                    owner: &str,
                    ids: &[String],
                    lease: Duration,
                ) -> Result<Vec<String>, StoreError> {
                    if ids.is_empty() {
                        return Ok(Vec::new());
                    }
                    Backend::renew_leases(self, owner, ids, lease).await
                }

                async fn next_due(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
                    let next: Option<(i64,)> = self
                        .exclude_in_flight(sqlx::query_as(sql::NEXT_DUE))
                        .fetch_optional(self.reader())
                        .await?;
                    Ok(next.map(|(ms,)| from_ms(ms)))
                }

                async fn release_leases(&self, owner: &str) -> Result<u64, StoreError> {
                    Backend::release_leases(self, owner).await
                }

                async fn case_action(
                    &self,
                    id: &str,
                    action: CaseAction,
                    now: DateTime<Utc>,
                ) -> Result<Case, StoreError> {
                    let now_ms = to_ms(now);
                    let mut tx = self.write_tx().await?;
                    let row = sqlx::query(sql::CASE_TO_CHANGE)
                        .bind(id)
                        .fetch_optional(&mut *tx)
                        .await?
                        .ok_or_else(|| StoreError::CaseNotFound(id.to_string()))?;
                    let case = case_from_row(&row)?;
                    match (action, case.state) {
                        (CaseAction::Pause, CaseState::Active) => {
                            sqlx::query(sql::PAUSE_CASE)
                                .bind(now_ms)
                                .bind(id)
                                .execute(&mut *tx)
                                .await?;
                        }
                        (CaseAction::Resume, CaseState::Paused) => {
                            // The sequence continues where it stopped: pending
                            // steps move later by the time the case spent paused.
                            let paused_for =
                                (now_ms - case.paused_at.map(to_ms).unwrap_or(now_ms)).max(0);
                            sqlx::query(sql::POSTPONE_PENDING)
                                .bind(paused_for)
                                .bind(now_ms)
                                .bind(id)
                                .execute(&mut *tx)
                                .await?;
                            sqlx::query(sql::RESUME_CASE)
                                .bind(now_ms)
                                .bind(id)
                                .execute(&mut *tx)
                                .await?;
                            announce_work(&mut tx).await?;
                        }
                        (CaseAction::Cancel, CaseState::Active | CaseState::Paused) => {
                            sqlx::query(sql::CANCEL_CASE)
                                .bind(now_ms)
                                .bind(id)
                                .execute(&mut *tx)
                                .await?;
                            <$store>::skip_pending(
                                &mut tx,
                                &[id.to_string()],
                                "case cancelled",
                                now_ms,
                            )
                            .await?;
                        }
                        (CaseAction::Pause | CaseAction::Resume | CaseAction::Cancel, state) => {
                            return Err(StoreError::InvalidTransition {
                                id: id.to_string(),
                                state,
                                action: action.verb(),
                            });
                        }
                    }
                    let row = sqlx::query(sql::CASE).bind(id).fetch_one(&mut *tx).await?;
                    let updated = case_from_row(&row)?;
                    tx.commit().await?;
                    Ok(updated)
                }

                async fn opt_out(&self, optout: &OptOut) -> Result<(), StoreError> {
                    sqlx::query(sql::OPT_OUT)
                        .bind(&optout.customer_id)
                        .bind(&optout.channel)
                        .bind(&optout.source)
                        .bind(&optout.reason)
                        .bind(to_ms(optout.created_at))
                        .execute(self.writer())
                        .await?;
                    Ok(())
                }

                async fn opt_in(
                    &self,
                    customer_id: &str,
                    channel: &str,
                    source: Option<&str>,
                ) -> Result<bool, StoreError> {
                    let removed = sqlx::query(sql::OPT_IN)
                        .bind(customer_id)
                        .bind(channel)
                        .bind(source)
                        .execute(self.writer())
                        .await?
                        .rows_affected();
                    Ok(removed > 0)
                }

                async fn stats(&self, filter: &StatsFilter) -> Result<Stats, StoreError> {
                    use tokio_stream::StreamExt;
                    let mut rows = sqlx::query(sql::STATS)
                        .bind(filter.workflow.as_deref())
                        .bind(filter.since.map(to_ms))
                        .bind(filter.until.map(to_ms))
                        .fetch(self.reader());
                    let mut builder = StatsBuilder::default();
                    while let Some(row) = rows.next().await {
                        builder.add(stats_row_from_row(&row?)?);
                    }
                    Ok(builder.finish())
                }

                async fn customers_by_phone(&self, phone: &str) -> Result<Vec<String>, StoreError> {
                    Ok(sqlx::query_scalar(sql::CUSTOMERS_BY_PHONE)
                        .bind(phone)
                        .fetch_all(self.reader())
                        .await?)
                }

                async fn record_report(&self, report: &ProviderReport) -> Result<(), StoreError> {
                    sqlx::query(sql::RECORD_REPORT)
                        .bind(&report.channel)
                        .bind(&report.receipt)
                        .bind(&report.status)
                        .bind(&report.error_code)
                        .bind(report.rank)
                        .bind(to_ms(report.at))
                        .execute(self.writer())
                        .await?;
                    Ok(())
                }

                async fn list_optouts(
                    &self,
                    customer_id: Option<&str>,
                    limit: u32,
                ) -> Result<Vec<OptOut>, StoreError> {
                    let rows = sqlx::query(sql::LIST_OPTOUTS)
                        .bind(customer_id)
                        .bind(i64::from(limit))
                        .fetch_all(self.reader())
                        .await?;
                    rows.iter().map(optout_from_row).collect()
                }

                async fn list_cases(&self, filter: &CaseFilter) -> Result<Vec<Case>, StoreError> {
                    let limit = if filter.limit == 0 { 100 } else { filter.limit };
                    let rows = sqlx::query(sql::LIST_CASES)
                        .bind(filter.workflow.as_deref())
                        .bind(filter.state.map(CaseState::as_str))
                        .bind(filter.customer.as_deref())
                        .bind(limit as i64)
                        .fetch_all(self.reader())
                        .await?;
                    rows.iter().map(case_from_row).collect()
                }

                async fn get_case(&self, id: &str) -> Result<CaseDetail, StoreError> {
                    let row = sqlx::query(sql::CASE)
                        .bind(id)
                        .fetch_optional(self.reader())
                        .await?
                        .ok_or_else(|| StoreError::CaseNotFound(id.to_string()))?;
                    let case = case_from_row(&row)?;
                    let rows = sqlx::query(sql::CASE_DELIVERIES)
                        .bind(id)
                        .fetch_all(self.reader())
                        .await?;
                    let deliveries = rows
                        .iter()
                        .map(delivery_from_row)
                        .collect::<Result<_, _>>()?;
                    Ok(CaseDetail { case, deliveries })
                }

                async fn case_ids_with_prefix(
                    &self,
                    prefix: &str,
                    limit: u32,
                ) -> Result<Vec<String>, StoreError> {
                    if !is_id_prefix(prefix) {
                        return Ok(Vec::new());
                    }
                    let ids = sqlx::query_scalar(sql::CASE_IDS_WITH_PREFIX)
                        .bind(prefix_pattern(prefix))
                        .bind(i64::from(limit))
                        .fetch_all(self.reader())
                        .await?;
                    Ok(ids)
                }

                async fn case_counts(&self) -> Result<BTreeMap<CaseState, u64>, StoreError> {
                    let rows = sqlx::query(sql::CASE_COUNTS)
                        .fetch_all(self.reader())
                        .await?;
                    state_counts(&rows)
                }

                async fn open_cases_by_workflow(
                    &self,
                ) -> Result<BTreeMap<String, u64>, StoreError> {
                    let rows = sqlx::query(sql::OPEN_CASES_BY_WORKFLOW)
                        .fetch_all(self.reader())
                        .await?;
                    workflow_counts(&rows)
                }

                async fn workflow_source(
                    &self,
                    version: &str,
                ) -> Result<Option<String>, StoreError> {
                    Ok(sqlx::query_scalar(sql::WORKFLOW_SOURCE)
                        .bind(version)
                        .fetch_optional(self.reader())
                        .await?)
                }

                async fn gauges(&self, now: DateTime<Utc>) -> Result<Gauges, StoreError> {
                    let rows = sqlx::query(sql::CASES_BY_WORKFLOW_AND_STATE)
                        .fetch_all(self.reader())
                        .await?;
                    let cases = workflow_state_counts(&rows)?;
                    // What the scheduler would claim now if it could (expired
                    // leases of crashed owners aside): the lag an operator
                    // alerts on.
                    let (backlog, oldest): (i64, Option<i64>) = self
                        .exclude_in_flight(sqlx::query_as(sql::BACKLOG).bind(to_ms(now)))
                        .fetch_one(self.reader())
                        .await?;
                    Ok(Gauges {
                        cases,
                        backlog: backlog.max(0) as u64,
                        oldest_planned: oldest.map(from_ms),
                    })
                }
            }
        };
    };
}

pub(crate) use sql_store;
