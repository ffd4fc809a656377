//! Durable state behind one narrow interface.
//!
//! The engine decides *what* should happen (which workflows an event starts,
//! when each step is due); the store makes it happen atomically and durably,
//! re-checking in the same transaction everything another writer could have
//! changed (duplicate event ids, an open case for the same subject, a later
//! exit event, a case that exited before its delivery was claimed).
//!
//! Invariants every backend keeps:
//! - An event and all its effects (cases started, cases recovered, deliveries
//!   scheduled or skipped) commit together or not at all.
//! - At most one open (`active` or `paused`) case per (workflow, customer, subject).
//! - A delivery is claimed only while its case is `active`, under a lease that
//!   expires in wall-clock time; only the lease owner may complete it, and
//!   only another owner may take over an expired lease.
//! - Claiming increments `attempts`, so a delivery that crashes the process is
//!   parked as failed after `max_claims` claims instead of crash-looping.
//!
//! Times in the database are milliseconds since the Unix epoch (UTC).
//!
//! Backends: [`sqlite`] (embedded, the default) and [`postgres`] (several
//! daemons on one database); both run the same behaviour tests (`tests.rs`).

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::model::{Case, CaseDetail, CaseFilter, CaseState, Event, OptOut};
use crate::stats::{Stats, StatsFilter};

mod batch;
mod claim_book;
pub mod postgres;
mod rows;
mod shared;
pub mod sqlite;
#[cfg(test)]
mod tests;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("corrupt row in table '{table}': {message}")]
    Corrupt {
        table: &'static str,
        message: String,
    },
    #[error(
        "the database schema is at version {found}, newer than this dunningd knows (version {known}): \
         a newer dunningd has migrated it; run that version, or point this one at another database"
    )]
    SchemaTooNew { found: i64, known: i64 },
    #[error(
        "the database '{0}' is in use by another dunningd: a SQLite file has one daemon \
         (stop the other one, or use PostgreSQL to run several)"
    )]
    InUse(String),
    #[error("case '{0}' not found")]
    CaseNotFound(String),
    #[error("case '{id}' is {state}; cannot {action} it")]
    InvalidTransition {
        id: String,
        state: CaseState,
        action: &'static str,
    },
}

/// One case the engine wants started for an event, fully planned.
#[derive(Debug, Clone)]
pub struct NewCase {
    pub workflow: String,
    pub workflow_version: String,
    /// The workflow's source, stored once per version so the case can run
    /// after the file changes, and on daemons that never loaded it.
    pub workflow_source: String,
    pub exit_on: Vec<String>,
    pub deliveries: Vec<NewDelivery>,
}

#[derive(Debug, Clone)]
pub struct NewDelivery {
    pub step_index: u32,
    pub step: String,
    pub channel: String,
    pub template: String,
    pub due_at: DateTime<Utc>,
    pub planned_at: DateTime<Utc>,
    /// The step is `critical`: exempt from frequency caps.
    pub critical: bool,
}

/// An accepted event with the cases it may start.
#[derive(Debug, Clone)]
pub struct EventPlan {
    pub event: Event,
    /// `occurred_at`, or the receive time when the event has none.
    pub occurred_at: DateTime<Utc>,
    pub starts: Vec<NewCase>,
    /// What the engine noticed while planning (a condition that could not be
    /// evaluated), reported back with the outcome.
    pub notes: Vec<String>,
}

/// What one event did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IngestOutcome {
    pub event_id: String,
    pub duplicate: bool,
    pub cases_started: Vec<String>,
    pub cases_recovered: Vec<String>,
    /// Matches that started nothing, with the reason.
    pub notes: Vec<String>,
}

/// What one claim handed out, and what it gave up on instead.
#[derive(Debug, Default)]
pub struct Claims {
    /// To send, in planned order.
    pub claimed: Vec<Claimed>,
    /// The channel of each delivery failed without being sent: claimed
    /// `max_claims` times without an outcome (the daemon kept stopping
    /// during its send), or its stored row cannot be read.
    pub given_up: Vec<String>,
}

/// A delivery claimed for sending, with what is needed to render and send it.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub delivery_id: String,
    pub case_id: String,
    pub workflow: String,
    pub workflow_version: String,
    pub step_index: u32,
    pub step: String,
    pub channel: String,
    pub template: String,
    pub idempotency_key: String,
    /// This claim's number, 1 for the first.
    pub attempt: u32,
    pub due_at: DateTime<Utc>,
    pub planned_at: DateTime<Utc>,
    pub case_started_at: DateTime<Utc>,
    pub trigger_event: Event,
    /// On a fallback delivery: the channel it stands in for.
    pub fallback_for: Option<String>,
    /// Set when the customer opted out of this channel: how (`source`).
    pub opted_out: Option<String>,
}

/// A delivery on another channel that takes over when one fails for good or
/// is skipped (a step's `fallback`).
#[derive(Debug, Clone, PartialEq)]
pub struct FollowUp {
    pub channel: String,
    pub template: String,
    pub due_at: DateTime<Utc>,
    pub planned_at: DateTime<Utc>,
}

/// How a claimed delivery ended, as the engine decided from the plugin's answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Completion {
    Sent {
        receipt: Option<String>,
    },
    /// Try again at `at` (a retryable failure).
    Retry {
        error: String,
        at: DateTime<Utc>,
    },
    Failed {
        error: String,
        fallback: Option<FollowUp>,
    },
    Skipped {
        reason: String,
        fallback: Option<FollowUp>,
    },
    /// Not attempted after all (outside its send window): back to
    /// `scheduled` at `at`, and the claim does not count as an attempt.
    Defer {
        at: DateTime<Utc>,
    },
}

/// Claim parameters, from the scheduler configuration.
#[derive(Debug, Clone)]
pub struct ClaimOptions {
    pub owner: String,
    pub lease: Duration,
    pub limit: u32,
    pub max_claims: u32,
    /// Frequency caps per channel name.
    pub caps: BTreeMap<String, FrequencyCap>,
}

/// At most `max` deliveries per customer on a channel within any `per`
/// (engine time), across all workflows. Critical steps are exempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrequencyCap {
    pub max: u32,
    pub per: Duration,
}

impl FrequencyCap {
    /// Whether one more send may go at `now_ms`, given the customer's recent
    /// sends on the channel (times in ms, any order; in-flight sends count
    /// as `now_ms`). `None`: it may, and it is counted; `Some(t)`: not
    /// before `t`, when enough of the recent sends have left the period.
    pub(crate) fn next_allowed(&self, recent: &mut Vec<i64>, now_ms: i64) -> Option<i64> {
        let per = self.per.as_millis() as i64;
        recent.retain(|&t| t > now_ms - per);
        recent.sort_unstable();
        let max = self.max.max(1) as usize;
        if recent.len() < max {
            recent.push(now_ms);
            return None;
        }
        Some(recent[recent.len() - max] + per)
    }

    /// How the hold reads in a case's timeline.
    pub(crate) fn note(&self, channel: &str, until_ms: i64) -> String {
        format!(
            "held by the {channel} frequency cap ({} per {}) until {}",
            self.max,
            crate::duration::format(self.per),
            from_ms(until_ms).format("%Y-%m-%d %H:%M UTC")
        )
    }
}

/// A provider's later word on a sent message (e.g. a Twilio status callback).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderReport {
    pub channel: String,
    /// What the send returned (Twilio's message SID).
    pub receipt: String,
    pub status: String,
    pub error_code: Option<String>,
    /// How far along the message is: a report never replaces one of a
    /// higher rank, so repeated and out-of-order reports are harmless.
    pub rank: i64,
    pub at: DateTime<Utc>,
}

/// What the metrics endpoint reads from the store at scrape time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Gauges {
    /// Cases per (workflow, state), every state ever reached included.
    pub cases: BTreeMap<(String, CaseState), u64>,
    /// Deliveries waiting to be claimed: pending (`scheduled` or
    /// `retrying`, so not leased), of active cases, planned at or before
    /// `now`.
    pub backlog: u64,
    /// The earliest planned time among them: how far behind the scheduler is.
    pub oldest_planned: Option<DateTime<Utc>>,
}

/// The operator's case actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaseAction {
    Pause,
    Resume,
    Cancel,
}

impl CaseAction {
    pub fn verb(self) -> &'static str {
        match self {
            CaseAction::Pause => "pause",
            CaseAction::Resume => "resume",
            CaseAction::Cancel => "cancel",
        }
    }
}

#[async_trait]
pub trait Store: Send + Sync {
    /// Records a batch of events and applies their effects in one transaction.
    async fn ingest(
        &self,
        plans: Vec<EventPlan>,
        now: DateTime<Utc>,
    ) -> Result<Vec<IngestOutcome>, StoreError>;

    /// Claims up to `limit` deliveries that are due at `now` (engine time) or
    /// whose lease, held by another owner, expired (wall-clock time). Expired
    /// leases of `options.owner` itself are left alone: this process still
    /// owes their outcomes (e.g. while the database was away) and would
    /// otherwise send them twice. Deliveries over `max_claims`, and those
    /// whose stored rows cannot be read, are failed instead of returned
    /// (`Claims::given_up`).
    async fn claim_due(
        &self,
        now: DateTime<Utc>,
        options: &ClaimOptions,
    ) -> Result<Claims, StoreError>;

    /// Records how claimed deliveries ended; completes cases that have no
    /// pending delivery left (`exhausted`). A delivery whose lease was lost is
    /// left alone and reported in the returned list.
    async fn complete(
        &self,
        owner: &str,
        results: Vec<(String, Completion)>,
        now: DateTime<Utc>,
    ) -> Result<Vec<String>, StoreError>;

    /// Extends the leases of this owner's claims that are still in flight
    /// (being sent, or sent and awaiting their outcome's commit) to `lease`
    /// from now (wall-clock time), so that a batch that takes longer than
    /// one lease is not taken over and sent again by another daemon. Returns
    /// the ids whose lease was extended; a missing id has been lost (it
    /// expired and another owner claimed it, or its case ended).
    async fn renew_leases(
        &self,
        owner: &str,
        ids: &[String],
        lease: Duration,
    ) -> Result<Vec<String>, StoreError>;

    /// The earliest time a pending delivery of an active case becomes due.
    async fn next_due(&self) -> Result<Option<DateTime<Utc>>, StoreError>;

    /// Gives up this owner's leases at once (clean shutdown), so restarted or
    /// other daemons need not wait for them to expire. Their attempts still
    /// count.
    async fn release_leases(&self, owner: &str) -> Result<u64, StoreError>;

    /// Arranges for `on_work` to be called whenever another process may have
    /// created work due sooner than this one knows (a new case, a resumed
    /// case, released leases). Backends with a single process (SQLite) have
    /// nothing to announce and need not do anything.
    fn listen_for_work(&self, on_work: Box<dyn Fn() + Send + Sync>) {
        let _ = on_work;
    }

    async fn case_action(
        &self,
        id: &str,
        action: CaseAction,
        now: DateTime<Utc>,
    ) -> Result<Case, StoreError>;

    /// Records (or replaces) a customer's opt-out of a channel.
    async fn opt_out(&self, optout: &OptOut) -> Result<(), StoreError>;
    /// Removes an opt-out (only one recorded by `source`, if given); false if
    /// there was none.
    async fn opt_in(
        &self,
        customer_id: &str,
        channel: &str,
        source: Option<&str>,
    ) -> Result<bool, StoreError>;
    /// Recovery figures over the cases the filter selects.
    async fn stats(&self, filter: &StatsFilter) -> Result<Stats, StoreError>;
    /// The customers whose cases were started by events with this phone
    /// number (an inbound SMS names only the number).
    async fn customers_by_phone(&self, phone: &str) -> Result<Vec<String>, StoreError>;
    /// Records a provider's report on a sent message, unless a report of a
    /// later stage is already recorded.
    async fn record_report(&self, report: &ProviderReport) -> Result<(), StoreError>;
    /// A customer's opt-outs, or everyone's (newest first, at most `limit`).
    async fn list_optouts(
        &self,
        customer_id: Option<&str>,
        limit: u32,
    ) -> Result<Vec<OptOut>, StoreError>;

    async fn list_cases(&self, filter: &CaseFilter) -> Result<Vec<Case>, StoreError>;
    async fn get_case(&self, id: &str) -> Result<CaseDetail, StoreError>;
    /// The ids of at most `limit` cases whose id starts with `prefix`, in id
    /// order; none when the prefix holds a character no case id has (see
    /// [`is_id_prefix`]), so no pattern character reaches the query.
    async fn case_ids_with_prefix(
        &self,
        prefix: &str,
        limit: u32,
    ) -> Result<Vec<String>, StoreError>;
    async fn case_counts(&self) -> Result<BTreeMap<CaseState, u64>, StoreError>;
    /// Open (`active` or `paused`) cases per workflow name.
    async fn open_cases_by_workflow(&self) -> Result<BTreeMap<String, u64>, StoreError>;
    /// The stored source of a workflow version, for cases whose version is no
    /// longer (or not yet) loaded from the folder.
    async fn workflow_source(&self, version: &str) -> Result<Option<String>, StoreError>;
    /// Cases by workflow and state, and the backlog of due deliveries at
    /// `now` (engine time), for the metrics endpoint. Reads only.
    async fn gauges(&self, now: DateTime<Utc>) -> Result<Gauges, StoreError>;
}

/// Refuses a database that a newer dunningd has migrated: its rows may mean
/// things this build does not know. `applied` is the highest migration
/// version recorded in the database (`None` for a new database).
pub(crate) fn check_schema(
    applied: Option<i64>,
    migrator: &sqlx::migrate::Migrator,
) -> Result<(), StoreError> {
    let known = migrator.iter().map(|m| m.version).max().unwrap_or(0);
    match applied {
        Some(found) if found > known => Err(StoreError::SchemaTooNew { found, known }),
        _ => Ok(()),
    }
}

/// Ends a committed claim, the same for every backend: the claimed rows
/// that cannot be read (`rows::decode_claims`) are recorded as failed, with
/// the reason, instead of being sent, and given up beside those the claim
/// parked; the rest are handed out.
pub(crate) async fn hand_out<S: Store + ?Sized>(
    store: &S,
    owner: &str,
    decoded: rows::DecodedClaims,
    mut given_up: Vec<String>,
    now: DateTime<Utc>,
) -> Result<Claims, StoreError> {
    let rows::DecodedClaims {
        claimed,
        broken,
        broken_channels,
    } = decoded;
    if !broken.is_empty() {
        tracing::error!(
            deliveries = broken.len(),
            first = ?broken[0],
            "claimed deliveries whose stored rows cannot be read; they are failed, not sent"
        );
        store.complete(owner, broken, now).await?;
        given_up.extend(broken_channels);
    }
    Ok(Claims { claimed, given_up })
}

/// Whether `prefix` could begin a case id. Case ids are UUIDs (lowercase hex
/// digits and `-`); letters and digits are let through so a mistyped id is
/// simply not found, while the pattern characters of LIKE and GLOB (`%`, `_`,
/// `*`, `?`, `[`) and everything else are refused before any query.
pub(crate) fn is_id_prefix(prefix: &str) -> bool {
    !prefix.is_empty()
        && prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

pub(crate) fn to_ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

pub(crate) fn from_ms(ms: i64) -> DateTime<Utc> {
    DateTime::<Utc>::from_timestamp_millis(ms).unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// The idempotency key of a (case, step, channel) delivery: stable across
/// retries, restarts and daemons, and safe in HTTP and mail headers.
pub fn idempotency_key(case_id: &str, step_index: u32, channel: &str) -> String {
    format!("dunningd-{case_id}-{step_index}-{channel}")
}
