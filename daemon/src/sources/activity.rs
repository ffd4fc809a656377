//! What each billing source has heard since the daemon started, for
//! `dunningctl sources list` and the metrics: the outcome of every webhook
//! and the last one.

use std::collections::BTreeMap;
use std::sync::Mutex;

use chrono::{DateTime, Utc};

/// What became of one webhook, as counted per source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Committed as a new event.
    Accepted,
    /// Its event id was already stored: nothing changed.
    Duplicate,
    /// Not mapped to any event type: answered 2xx.
    Ignored,
    /// Signature or event refused: answered 4xx.
    Refused,
    /// The provider's API or the database did not answer: 5xx, retried by
    /// the provider.
    Unavailable,
}

impl Outcome {
    pub const ALL: [Outcome; 5] = [
        Outcome::Accepted,
        Outcome::Duplicate,
        Outcome::Ignored,
        Outcome::Refused,
        Outcome::Unavailable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Accepted => "accepted",
            Outcome::Duplicate => "duplicate",
            Outcome::Ignored => "ignored",
            Outcome::Refused => "refused",
            Outcome::Unavailable => "unavailable",
        }
    }
}

/// What one source has heard since the daemon started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceActivity {
    pub accepted: u64,
    pub duplicate: u64,
    pub ignored: u64,
    pub refused: u64,
    pub unavailable: u64,
    /// When the last webhook arrived, whatever became of it.
    pub last_at: Option<DateTime<Utc>>,
    /// The last webhook: its provider type and id, or what refused it.
    pub last: Option<String>,
    /// The last refusal or failure, with when it happened.
    pub last_error: Option<(DateTime<Utc>, String)>,
}

/// Every source's activity, by source name; kept in memory (per daemon,
/// since its start). The metrics keep the same counts for history.
#[derive(Debug, Default)]
pub struct Activity {
    by_source: Mutex<BTreeMap<String, SourceActivity>>,
}

impl Activity {
    pub fn record(&self, source: &str, outcome: Outcome, what: String, at: DateTime<Utc>) {
        let mut by_source = match self.by_source.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        let activity = by_source.entry(source.to_string()).or_default();
        match outcome {
            Outcome::Accepted => activity.accepted += 1,
            Outcome::Duplicate => activity.duplicate += 1,
            Outcome::Ignored => activity.ignored += 1,
            Outcome::Refused => activity.refused += 1,
            Outcome::Unavailable => activity.unavailable += 1,
        }
        if matches!(outcome, Outcome::Refused | Outcome::Unavailable) {
            activity.last_error = Some((at, what.clone()));
        }
        activity.last_at = Some(at);
        activity.last = Some(what);
    }

    /// The activity of `source` (all zero if it has heard nothing).
    pub fn of(&self, source: &str) -> SourceActivity {
        let by_source = match self.by_source.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        by_source.get(source).cloned().unwrap_or_default()
    }
}
