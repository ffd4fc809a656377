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
//!   expires in wall-clock time; only the lease owner may complete it.
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

use crate::model::{Case, CaseDetail, CaseFilter, CaseState, Event};

pub mod postgres;
mod rows;
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
    },
    Skipped {
        reason: String,
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
    /// whose lease expired (wall-clock time). Deliveries over `max_claims` are
    /// parked as failed instead of returned.
    async fn claim_due(
        &self,
        now: DateTime<Utc>,
        options: &ClaimOptions,
    ) -> Result<Vec<Claimed>, StoreError>;

    /// Records how claimed deliveries ended; completes cases that have no
    /// pending delivery left (`exhausted`). A delivery whose lease was lost is
    /// left alone and reported in the returned list.
    async fn complete(
        &self,
        owner: &str,
        results: Vec<(String, Completion)>,
        now: DateTime<Utc>,
    ) -> Result<Vec<String>, StoreError>;

    /// The earliest time a pending delivery of an active case becomes due.
    async fn next_due(&self) -> Result<Option<DateTime<Utc>>, StoreError>;

    /// Gives up this owner's leases at once (clean shutdown), so restarted or
    /// other daemons need not wait for them to expire. Their attempts still
    /// count.
    async fn release_leases(&self, owner: &str) -> Result<u64, StoreError>;

    async fn case_action(
        &self,
        id: &str,
        action: CaseAction,
        now: DateTime<Utc>,
    ) -> Result<Case, StoreError>;

    async fn list_cases(&self, filter: &CaseFilter) -> Result<Vec<Case>, StoreError>;
    async fn get_case(&self, id: &str) -> Result<CaseDetail, StoreError>;
    async fn case_counts(&self) -> Result<BTreeMap<CaseState, u64>, StoreError>;
    /// Open (`active` or `paused`) cases per workflow name.
    async fn open_cases_by_workflow(&self) -> Result<BTreeMap<String, u64>, StoreError>;
    /// The stored source of a workflow version, for cases whose version is no
    /// longer (or not yet) loaded from the folder.
    async fn workflow_source(&self, version: &str) -> Result<Option<String>, StoreError>;
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
