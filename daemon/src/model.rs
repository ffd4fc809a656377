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

/// The most an event may weigh, as JSON text: 64 KiB.
pub const MAX_EVENT_BYTES: usize = 64 * 1024;
/// The deepest nesting of arrays and objects inside a field of an event.
pub const MAX_DEPTH: usize = 32;
/// The longest `id`, `type`, `subject` and `customer` field, in characters.
pub const MAX_FIELD_CHARS: usize = 256;
/// The largest `data.amount` either way, in minor units: 2^53 - 1, the
/// largest integer every JSON reader (JavaScript's included) holds exactly.
pub const MAX_AMOUNT: i64 = (1 << 53) - 1;

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

/// Why an event was refused: which event (its place in the batch, from 1,
/// and its id once that is known to be a proper one) and what is wrong with
/// it, by field path: `event 3 (evt_42): customer.id: missing`.
#[derive(Debug, PartialEq)]
pub struct EventError {
    pub number: usize,
    pub id: Option<String>,
    pub problem: Problem,
}

impl fmt::Display for EventError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "event {}", self.number)?;
        if let Some(id) = &self.id {
            write!(f, " ({id})")?;
        }
        write!(f, ": {}", self.problem)
    }
}

impl std::error::Error for EventError {}

/// What is wrong with an event as a whole, or with one of its fields.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum Problem {
    #[error("not JSON: {0}")]
    NotJson(String),
    #[error("{0} bytes; an event may have at most {MAX_EVENT_BYTES}")]
    TooLarge(usize),
    #[error("must be a JSON object, got {0}")]
    NotObject(String),
    /// `path` is the field's path from the event: `customer.id`, `data.amount`.
    #[error("{path}: {issue}")]
    Field { path: String, issue: Issue },
}

/// What is wrong with one field. Values are quoted short and escaped
/// ([`describe`]): they come from outside and end up in terminals and logs.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum Issue {
    #[error("missing")]
    Missing,
    #[error("must not be empty")]
    Empty,
    #[error("must be a string, got {0}")]
    NotString(String),
    #[error("must be an object, got {0}")]
    NotObject(String),
    #[error("at most {MAX_FIELD_CHARS} characters, got {0}")]
    TooLong(usize),
    #[error("must not contain control characters")]
    ControlCharacters,
    #[error("nested deeper than {MAX_DEPTH} levels")]
    TooDeep,
    #[error("unknown field (expected {})", FIELDS.join(", "))]
    Unknown,
    #[error("not an RFC 3339 time: {0}")]
    NotTime(String),
    #[error("must be an integer amount in minor units, got {0}")]
    NotAmount(String),
    #[error("must be within ±{MAX_AMOUNT} minor units, got {0}")]
    AmountRange(String),
    #[error("must be a 3-letter ISO 4217 code, got {0}")]
    NotCurrency(String),
}

/// The top-level fields of an event, in the order they are checked.
const FIELDS: [&str; 6] = ["id", "type", "customer", "subject", "data", "occurred_at"];

/// The customer's fields other than free attributes; each a string if present.
const CUSTOMER_FIELDS: [&str; 5] = ["name", "email", "phone", "timezone", "locale"];

/// Longest string quoted in an error, in characters.
const QUOTE_CHARS: usize = 40;

/// A value as an error shows it: its kind and, for scalars, the value itself,
/// JSON-escaped and shortened (`string "4900"`, `number 49.5`, `an array`).
fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("boolean {b}"),
        Value::Number(n) => format!("number {n}"),
        Value::String(s) => format!("string {}", quote(s)),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
    }
}

/// A string from outside, JSON-quoted (control characters escaped) and cut
/// to [`QUOTE_CHARS`].
fn quote(s: &str) -> String {
    let mut short: String = s.chars().take(QUOTE_CHARS).collect();
    let cut = short.len() < s.len();
    short = Value::String(short).to_string();
    if cut {
        short.insert(short.len() - 1, '…');
    }
    short
}

/// Nesting of arrays and objects: 0 for a scalar. Stops counting past
/// [`MAX_DEPTH`]; serde_json's own limit (128) bounds the recursion.
fn depth(value: &Value) -> usize {
    let inner = match value {
        Value::Array(items) => items.iter().map(depth).max(),
        Value::Object(fields) => fields.values().map(depth).max(),
        _ => return 0,
    };
    1 + inner.unwrap_or(0)
}

fn field_error(path: impl Into<String>, issue: Issue) -> Problem {
    Problem::Field {
        path: path.into(),
        issue,
    }
}

/// A short text field: a string, not blank, without control characters, at
/// most [`MAX_FIELD_CHARS`]. `None` when absent or null.
fn short_text(path: &str, value: Option<Value>) -> Result<Option<String>, Problem> {
    let text = match value {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(text)) => text,
        Some(other) => return Err(field_error(path, Issue::NotString(describe(&other)))),
    };
    if text.trim().is_empty() {
        return Err(field_error(path, Issue::Empty));
    }
    let chars = text.chars().count();
    if chars > MAX_FIELD_CHARS {
        return Err(field_error(path, Issue::TooLong(chars)));
    }
    if text.chars().any(char::is_control) {
        return Err(field_error(path, Issue::ControlCharacters));
    }
    Ok(Some(text))
}

fn required_text(path: &str, value: Option<Value>) -> Result<String, Problem> {
    short_text(path, value)?.ok_or_else(|| field_error(path, Issue::Missing))
}

fn shallow(path: &str, value: &Value) -> Result<(), Problem> {
    if depth(value) > MAX_DEPTH {
        return Err(field_error(path, Issue::TooDeep));
    }
    Ok(())
}

fn customer(value: Option<Value>) -> Result<Customer, Problem> {
    let mut fields = match value {
        None => return Err(field_error("customer", Issue::Missing)),
        Some(Value::Object(fields)) => fields,
        Some(other) => return Err(field_error("customer", Issue::NotObject(describe(&other)))),
    };
    let id = required_text("customer.id", fields.remove("id"))?;
    let [name, email, phone, timezone, locale] = CUSTOMER_FIELDS.map(|f| fields.remove(f));
    let text = |field: &str, value| short_text(&format!("customer.{field}"), value);
    let (name, email, phone) = (
        text("name", name)?,
        text("email", email)?,
        text("phone", phone)?,
    );
    let (timezone, locale) = (text("timezone", timezone)?, text("locale", locale)?);
    // What is left are free attributes.
    for (name, value) in &fields {
        shallow(&format!("customer.{}", quote_path(name)), value)?;
    }
    Ok(Customer {
        id,
        name,
        email,
        phone,
        timezone,
        locale,
        attributes: fields.into_iter().collect(),
    })
}

/// `data`: an object (or absent), whose `amount` and `currency`, when
/// present, are what the `money` filter and the stats can use.
fn data(value: Option<Value>) -> Result<Value, Problem> {
    let data = match value {
        None | Some(Value::Null) => return Ok(Value::Null),
        Some(data @ Value::Object(_)) => data,
        Some(other) => return Err(field_error("data", Issue::NotObject(describe(&other)))),
    };
    shallow("data", &data)?;
    if let Some(amount) = data.get("amount") {
        let Value::Number(number) = amount else {
            return Err(field_error(
                "data.amount",
                Issue::NotAmount(describe(amount)),
            ));
        };
        match number.as_i64() {
            Some(n) if (-MAX_AMOUNT..=MAX_AMOUNT).contains(&n) => {}
            Some(_) => {
                return Err(field_error(
                    "data.amount",
                    Issue::AmountRange(number.to_string()),
                ));
            }
            None if number.is_u64() => {
                return Err(field_error(
                    "data.amount",
                    Issue::AmountRange(number.to_string()),
                ));
            }
            None => {
                return Err(field_error(
                    "data.amount",
                    Issue::NotAmount(describe(amount)),
                ));
            }
        }
    }
    if let Some(currency) = data.get("currency") {
        let code = currency
            .as_str()
            .filter(|c| c.len() == 3 && c.chars().all(|c| c.is_ascii_alphabetic()));
        if code.is_none() {
            return Err(field_error(
                "data.currency",
                Issue::NotCurrency(describe(currency)),
            ));
        }
    }
    Ok(data)
}

fn occurred_at(value: Option<Value>) -> Result<Option<DateTime<Utc>>, Problem> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => DateTime::parse_from_rfc3339(&text)
            .map(|t| Some(t.with_timezone(&Utc)))
            .map_err(|_| field_error("occurred_at", Issue::NotTime(quote(&text)))),
        Some(other) => Err(field_error("occurred_at", Issue::NotTime(describe(&other)))),
    }
}

impl Event {
    /// Parses and checks one event, the only one of its batch.
    pub fn from_json(text: &str) -> Result<Event, EventError> {
        Event::from_json_numbered(1, text)
    }

    /// Parses and checks the `number`-th event of a batch (from 1), field by
    /// field, so an error names the event and the field. Nothing else is
    /// done with a refused event.
    pub fn from_json_numbered(number: usize, text: &str) -> Result<Event, EventError> {
        let refuse = |id: Option<&str>, problem| EventError {
            number,
            id: id.map(String::from),
            problem,
        };
        // Weighed before it is parsed: the size bounds the parse's work.
        if text.len() > MAX_EVENT_BYTES {
            return Err(refuse(None, Problem::TooLarge(text.len())));
        }
        let value: Value = serde_json::from_str(text)
            .map_err(|e| refuse(None, Problem::NotJson(e.to_string())))?;
        let mut fields = match value {
            Value::Object(fields) => fields,
            other => return Err(refuse(None, Problem::NotObject(describe(&other)))),
        };
        let id = required_text("id", fields.remove("id")).map_err(|p| refuse(None, p))?;
        let checked = (|| {
            let event_type = required_text("type", fields.remove("type"))?;
            let customer = customer(fields.remove("customer"))?;
            let subject = required_text("subject", fields.remove("subject"))?;
            let data = data(fields.remove("data"))?;
            let occurred_at = occurred_at(fields.remove("occurred_at"))?;
            if let Some(unknown) = fields.keys().next() {
                return Err(field_error(quote_path(unknown), Issue::Unknown));
            }
            Ok((event_type, customer, subject, data, occurred_at))
        })();
        let (event_type, customer, subject, data, occurred_at) =
            checked.map_err(|p| refuse(Some(&id), p))?;
        Ok(Event {
            id,
            event_type,
            customer,
            subject,
            data,
            occurred_at,
        })
    }
}

/// An unknown field's name as a path: as it is when it is a plain name,
/// quoted when it could mislead (dots, spaces, control characters, length).
fn quote_path(name: &str) -> String {
    let plain = !name.is_empty()
        && name.len() <= QUOTE_CHARS
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if plain { name.to_string() } else { quote(name) }
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
    /// (or about to be handed) to a plugin; a claim SQLite holds in memory
    /// leaves its delivery `scheduled` until the outcome (`store::claim_book`).
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
    use serde_json::json;

    use super::*;

    const GOOD: &str = r#"{"id":"evt_1","type":"payment_failed","customer":{"id":"c1","plan":"pro"},"subject":"inv_1","data":{"amount":1200,"currency":"eur"},"occurred_at":"2026-01-05T09:00:00+01:00"}"#;

    /// `GOOD` with one top-level field replaced (or added); `None` removes it.
    fn with(field: &str, value: Option<Value>) -> String {
        let mut event: Value = serde_json::from_str(GOOD).expect("GOOD parses");
        let object = event.as_object_mut().expect("an object");
        match value {
            Some(value) => object.insert(field.into(), value),
            None => object.remove(field),
        };
        event.to_string()
    }

    /// `GOOD` with `data.amount` (and the rest of `data`) replaced.
    fn data(value: Value) -> String {
        with("data", Some(value))
    }

    #[test]
    fn good_events_parse() {
        let event = Event::from_json(GOOD).expect("valid event");
        assert_eq!(event.customer.attributes["plan"], "pro");
        assert_eq!(event.data["amount"], 1200);
        assert_eq!(
            event.occurred_at,
            Some("2026-01-05T08:00:00Z".parse().expect("time"))
        );
        for text in [
            data(json!({ "amount": MAX_AMOUNT, "currency": "JPY" })),
            data(json!({ "amount": -MAX_AMOUNT })),
            data(json!({ "plan": "pro" })),
            with("data", None),
            with("occurred_at", None),
            with("occurred_at", Some(Value::Null)),
            with("id", Some(json!("x".repeat(MAX_FIELD_CHARS)))),
            data(json!({ "note": "é".repeat(MAX_FIELD_CHARS * 2) })),
        ] {
            Event::from_json(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
        }
    }

    #[test]
    fn refused_events_name_the_event_and_the_field() {
        let deep = (0..=MAX_DEPTH).fold(json!(1), |inner, _| json!({ "a": inner }));
        let too_big = data(json!({ "note": "x".repeat(MAX_EVENT_BYTES) }));
        let table: Vec<(String, String)> = vec![
            // Not an event at all.
            ("{".into(), "event 1: not JSON: EOF while parsing an object at line 1 column 1".into()),
            ("42".into(), "event 1: must be a JSON object, got number 42".into()),
            (
                too_big.clone(),
                format!("event 1: {} bytes; an event may have at most 65536", too_big.len()),
            ),
            (
                format!("{}{}", "[".repeat(200), "]".repeat(200)),
                "event 1: not JSON: recursion limit exceeded at line 1 column 128".into(),
            ),
            // The id first: it names the event in every other error.
            (with("id", None), "event 1: id: missing".into()),
            (with("id", Some(json!(7))), "event 1: id: must be a string, got number 7".into()),
            (with("id", Some(json!(" "))), "event 1: id: must not be empty".into()),
            (
                with("id", Some(json!("x".repeat(MAX_FIELD_CHARS + 1)))),
                "event 1: id: at most 256 characters, got 257".into(),
            ),
            (
                with("id", Some(json!("evt\u{1b}[31m"))),
                "event 1: id: must not contain control characters".into(),
            ),
            // Every other field, by its path.
            (with("type", None), "event 1 (evt_1): type: missing".into()),
            (with("subject", Some(json!(""))), "event 1 (evt_1): subject: must not be empty".into()),
            (
                with("customer", Some(json!("c1"))),
                "event 1 (evt_1): customer: must be an object, got string \"c1\"".into(),
            ),
            (with("customer", Some(json!({}))), "event 1 (evt_1): customer.id: missing".into()),
            (
                with("customer", Some(json!({ "id": "c1", "email": 7 }))),
                "event 1 (evt_1): customer.email: must be a string, got number 7".into(),
            ),
            (
                with("customer", Some(json!({ "id": "c1", "name": "n".repeat(300) }))),
                "event 1 (evt_1): customer.name: at most 256 characters, got 300".into(),
            ),
            (
                with("customer", Some(json!({ "id": "c1", "plan": deep.clone() }))),
                "event 1 (evt_1): customer.plan: nested deeper than 32 levels".into(),
            ),
            (
                with("colour", Some(json!("red"))),
                "event 1 (evt_1): colour: unknown field (expected id, type, customer, subject, data, occurred_at)".into(),
            ),
            (
                with("occurred_at", Some(json!("yesterday"))),
                "event 1 (evt_1): occurred_at: not an RFC 3339 time: \"yesterday\"".into(),
            ),
            (
                with("occurred_at", Some(json!(1767600000))),
                "event 1 (evt_1): occurred_at: not an RFC 3339 time: number 1767600000".into(),
            ),
            (
                data(json!([1])),
                "event 1 (evt_1): data: must be an object, got an array".into(),
            ),
            (data(deep), "event 1 (evt_1): data: nested deeper than 32 levels".into()),
            // Amounts are integers in minor units, within what every JSON
            // reader holds exactly.
            (
                data(json!({ "amount": "4900" })),
                "event 1 (evt_1): data.amount: must be an integer amount in minor units, got string \"4900\"".into(),
            ),
            (
                data(json!({ "amount": "abc" })),
                "event 1 (evt_1): data.amount: must be an integer amount in minor units, got string \"abc\"".into(),
            ),
            (
                data(json!({ "amount": 49.5 })),
                "event 1 (evt_1): data.amount: must be an integer amount in minor units, got number 49.5".into(),
            ),
            (
                data(json!({ "amount": 4900.0 })),
                "event 1 (evt_1): data.amount: must be an integer amount in minor units, got number 4900.0".into(),
            ),
            (
                data(json!({ "amount": null })),
                "event 1 (evt_1): data.amount: must be an integer amount in minor units, got null".into(),
            ),
            (
                data(json!({ "amount": MAX_AMOUNT + 1 })),
                "event 1 (evt_1): data.amount: must be within ±9007199254740991 minor units, got 9007199254740992".into(),
            ),
            (
                data(json!({ "amount": -MAX_AMOUNT - 1 })),
                "event 1 (evt_1): data.amount: must be within ±9007199254740991 minor units, got -9007199254740992".into(),
            ),
            (
                data(json!({ "amount": u64::MAX })),
                "event 1 (evt_1): data.amount: must be within ±9007199254740991 minor units, got 18446744073709551615".into(),
            ),
            (
                r#"{"id":"evt_1","type":"t","customer":{"id":"c"},"subject":"s","data":{"amount":1e300}}"#.into(),
                "event 1 (evt_1): data.amount: must be an integer amount in minor units, got number 1e+300".into(),
            ),
            (
                data(json!({ "amount": 100, "currency": "dollars" })),
                "event 1 (evt_1): data.currency: must be a 3-letter ISO 4217 code, got string \"dollars\"".into(),
            ),
            (
                data(json!({ "amount": 100, "currency": 978 })),
                "event 1 (evt_1): data.currency: must be a 3-letter ISO 4217 code, got number 978".into(),
            ),
            (
                data(json!({ "currency": "€UR" })),
                "event 1 (evt_1): data.currency: must be a 3-letter ISO 4217 code, got string \"€UR\"".into(),
            ),
        ];
        let mut wrong = Vec::new();
        for (input, expected) in &table {
            let got = match Event::from_json(input) {
                Ok(_) => "accepted".to_string(),
                Err(e) => e.to_string(),
            };
            if got != *expected {
                wrong.push(format!("{:.80}\n  got:  {got}\n  want: {expected}", input));
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    #[test]
    fn values_quoted_in_errors_are_short_and_escaped() {
        let long = "x".repeat(100);
        let text = data(json!({ "amount": format!("{long}\u{1b}") }));
        let error = Event::from_json(&text).expect_err("refused").to_string();
        assert!(
            error.ends_with(&format!("got string \"{}…\"", "x".repeat(40))),
            "{error}"
        );
        let text = data(json!({ "amount": "\u{1b}[2J" }));
        let error = Event::from_json(&text).expect_err("refused").to_string();
        assert!(error.ends_with(r#"got string "\u001b[2J""#), "{error}");
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
