//! The engine's own vocabulary: events, cases, deliveries and their states.
//!
//! These types are what every module speaks. Protobuf types stop in `admin`,
//! YAML types stop in `workflow`, SQL rows stop in `store`; all of them convert
//! to and from the types here at their edge.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A fact from billing, as the user sends it (DESIGN.md's event JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    /// Unique per fact; a repeated id is acknowledged and ignored.
    pub id: String,
    /// `payment_failed`, `payment_succeeded`, …: matched against workflow
    /// triggers and `exit_on` lists.
    #[serde(rename = "type")]
    pub event_type: String,
    pub customer: Customer,
    /// What is being dunned, usually an invoice id. Cases are unique per
    /// (workflow, customer, subject).
    pub subject: String,
    /// Free JSON: amount (minor units), currency, update link, plan …
    #[serde(default)]
    pub data: Value,
    /// When billing says it happened; defaults to the time it was received.
    /// Used to order retried, out-of-order webhooks.
    #[serde(default)]
    pub occurred_at: Option<DateTime<Utc>>,
}

/// The person being dunned, as the event describes them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Customer {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    /// IANA zone name, used by `send_window.timezone: customer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locale: Option<String>,
    /// Free attributes (plan, segment, account manager …), usable in
    /// conditions and templates as `customer.<name>`.
    #[serde(flatten)]
    pub attributes: BTreeMap<String, Value>,
}

/// Why an event was refused. Each message names the field at fault.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum EventError {
    #[error("invalid event JSON: {0}")]
    Json(String),
    #[error("field '{0}' must not be empty")]
    Empty(&'static str),
    #[error("field 'data' must be a JSON object, got {0}")]
    DataNotObject(&'static str),
}

impl Event {
    /// Parses and checks one event. Nothing else is done with a refused event.
    pub fn from_json(text: &str) -> Result<Event, EventError> {
        let event: Event =
            serde_json::from_str(text).map_err(|e| EventError::Json(e.to_string()))?;
        event.validate()?;
        Ok(event)
    }

    pub fn validate(&self) -> Result<(), EventError> {
        if self.id.trim().is_empty() {
            return Err(EventError::Empty("id"));
        }
        if self.event_type.trim().is_empty() {
            return Err(EventError::Empty("type"));
        }
        if self.customer.id.trim().is_empty() {
            return Err(EventError::Empty("customer.id"));
        }
        if self.subject.trim().is_empty() {
            return Err(EventError::Empty("subject"));
        }
        match &self.data {
            Value::Object(_) | Value::Null => Ok(()),
            Value::Array(_) => Err(EventError::DataNotObject("an array")),
            Value::String(_) => Err(EventError::DataNotObject("a string")),
            Value::Number(_) => Err(EventError::DataNotObject("a number")),
            Value::Bool(_) => Err(EventError::DataNotObject("a boolean")),
        }
    }
}

macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($text => Ok($name::$variant),)+
                    other => Err(format!(
                        "unknown {} '{}' (expected one of: {})",
                        stringify!($name),
                        other,
                        [$($text),+].join(", ")
                    )),
                }
            }
        }
    };
}

string_enum! {
    /// Where a case is in its life. Only `active` cases have deliveries claimed.
    CaseState {
        Active => "active",
        Paused => "paused",
        Recovered => "recovered",
        Exhausted => "exhausted",
        Cancelled => "cancelled",
    }
}

impl CaseState {
    /// Finished cases never change state again.
    pub fn is_final(self) -> bool {
        match self {
            CaseState::Active | CaseState::Paused => false,
            CaseState::Recovered | CaseState::Exhausted | CaseState::Cancelled => true,
        }
    }
}

string_enum! {
    /// Where a delivery is. `sending` means claimed under a lease and handed
    /// (or about to be handed) to a plugin.
    DeliveryStatus {
        Scheduled => "scheduled",
        Sending => "sending",
        Retrying => "retrying",
        Sent => "sent",
        Failed => "failed",
        Skipped => "skipped",
    }
}

impl DeliveryStatus {
    pub fn is_final(self) -> bool {
        match self {
            DeliveryStatus::Scheduled | DeliveryStatus::Sending | DeliveryStatus::Retrying => false,
            DeliveryStatus::Sent | DeliveryStatus::Failed | DeliveryStatus::Skipped => true,
        }
    }
}

/// One customer's run through one workflow for one subject.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Case {
    pub id: String,
    pub workflow: String,
    /// The workflow version (content hash) the case started with and keeps.
    pub workflow_version: String,
    pub customer_id: String,
    pub subject: String,
    pub state: CaseState,
    /// The event that started the case; templates render from it.
    pub trigger_event: Event,
    pub started_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Set while paused; resume shifts pending deliveries by the pause length.
    pub paused_at: Option<DateTime<Utc>>,
    /// Why the case ended (exit event id, operator, all steps done).
    pub ended_reason: Option<String>,
}

/// One (case, step, channel) send.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Delivery {
    pub id: String,
    pub case_id: String,
    pub step_index: u32,
    pub step: String,
    pub channel: String,
    pub template: String,
    pub status: DeliveryStatus,
    /// When the workflow schedule says the step is due.
    pub due_at: DateTime<Utc>,
    /// When it will actually be attempted (after send windows and retries).
    pub planned_at: DateTime<Utc>,
    pub attempts: u32,
    /// Stable across attempts and daemons: providers drop duplicates by it.
    pub idempotency_key: String,
    pub receipt: Option<String>,
    pub last_error: Option<String>,
    /// For `skipped`: why (opted out, no address, case recovered …).
    pub skip_reason: Option<String>,
    pub sent_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
    /// On a fallback delivery: the channel it stands in for.
    pub fallback_for: Option<String>,
    /// Why it waited (e.g. held by a frequency cap until a time).
    pub note: Option<String>,
    /// What the provider reported later about the sent message, e.g.
    /// `delivered` or `undelivered (error 30003)`.
    pub provider_status: Option<String>,
}

/// A case with its deliveries: what `dunningctl cases show` prints.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CaseDetail {
    pub case: Case,
    pub deliveries: Vec<Delivery>,
}

/// Filters for listing cases. Empty fields match everything.
#[derive(Debug, Clone, Default)]
pub struct CaseFilter {
    pub workflow: Option<String>,
    pub state: Option<CaseState>,
    pub customer: Option<String>,
    pub limit: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_checked_field_by_field() {
        let ok = r#"{"id":"e1","type":"payment_failed","customer":{"id":"c1","plan":"pro"},"subject":"inv_1","data":{"amount":1200}}"#;
        let event = Event::from_json(ok).expect("valid event");
        assert_eq!(event.customer.attributes["plan"], "pro");
        assert_eq!(event.data["amount"], 1200);

        let cases = [
            (
                r#"{"id":"","type":"t","customer":{"id":"c"},"subject":"s"}"#,
                "field 'id' must not be empty",
            ),
            (
                r#"{"id":"e","type":"t","customer":{"id":" "},"subject":"s"}"#,
                "field 'customer.id' must not be empty",
            ),
            (
                r#"{"id":"e","type":"t","customer":{"id":"c"},"subject":"s","data":[1]}"#,
                "field 'data' must be a JSON object, got an array",
            ),
            (
                r#"{"id":"e","type":"t","customer":{"id":"c"},"subject":"s","colour":"red"}"#,
                "unknown field `colour`",
            ),
            (
                r#"{"id":"e","customer":{"id":"c"},"subject":"s"}"#,
                "missing field `type`",
            ),
        ];
        for (input, expected) in cases {
            let err = Event::from_json(input).expect_err(input).to_string();
            assert!(
                err.contains(expected),
                "{input}: got {err:?}, want {expected:?}"
            );
        }
    }

    #[test]
    fn states_round_trip_through_text() {
        for state in CaseState::ALL {
            assert_eq!(state.as_str().parse::<CaseState>(), Ok(*state));
        }
        for status in DeliveryStatus::ALL {
            assert_eq!(status.as_str().parse::<DeliveryStatus>(), Ok(*status));
        }
        assert!(
            "zombie"
                .parse::<CaseState>()
                .unwrap_err()
                .contains("expected one of")
        );
    }
}

/// A customer's request not to be contacted on a channel.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OptOut {
    pub customer_id: String,
    pub channel: String,
    /// Who recorded it: `operator`, `sms-stop`, `unsubscribe-link` …
    pub source: String,
    pub reason: String,
    pub created_at: DateTime<Utc>,
}
