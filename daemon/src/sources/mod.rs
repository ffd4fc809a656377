//! Billing sources: the webhooks of Stripe, Paddle Billing, Chargebee,
//! Recurly and Lago, heard directly (`sources:` in the configuration).
//!
//! A source is one provider account: where its webhooks arrive (a path on the
//! `webhooks:` HTTP server), the secret that signs them, and optionally an
//! API key to fetch what a thin payload leaves out. A request goes through
//! the same steps whatever the provider ([`crate::http::sources`]):
//!
//! 1. **Verify** the signature by the provider's own scheme, before the body
//!    is parsed ([`Provider::verify`]). A missing, wrong, too old or
//!    unknown-key signature is refused with 4xx and changes nothing.
//! 2. **Map** the provider's event to a [`Draft`] of a dunningd event
//!    ([`Provider::map`]), or say why it is ignored (answered 2xx, so the
//!    provider does not retry for days).
//! 3. **Enrich**: fetch what the payload lacks through the provider's API
//!    ([`enrich`]); if the API cannot be reached, answer 5xx so the provider
//!    retries. Nothing is stored before this step succeeds.
//! 4. **Check and ingest**: the draft becomes a [`crate::model::Event`]
//!    through the same checks as every event from the API, and is committed
//!    before the answer. Its id is the provider's event id with the
//!    provider's prefix (`stripe:evt_…`), so a retry or a replay is a
//!    duplicate; its `occurred_at` is the provider's creation time, so a
//!    payment that arrives before the failure it settles starts no case.
//!
//! Mapping is pure (no clock, no network), so `dunningctl sources map` runs
//! it offline on a saved payload.
//!
//! Invariants:
//! - No secret (signing secret, API key) appears in any answer, log line or
//!   error: errors name the source and the header, never a value.
//! - Provider data is hostile: every field is checked again as an event
//!   (lengths, control characters, amounts), bodies are bounded
//!   ([`MAX_BODY`]), the provider's object is trimmed to fit an event.

pub mod activity;
pub mod chargebee;
pub mod enrich;
pub mod lago;
pub mod paddle;
pub mod portal;
pub mod recurly;
pub mod stripe;

use std::fmt;
use std::time::Duration;

use axum::http::HeaderMap;
use chrono::{DateTime, TimeZone, Utc};
use hmac::{Hmac, Mac};
use serde_json::{Map, Value, json};
use sha2::Sha256;

use crate::model::{Event, EventError, MAX_EVENT_BYTES};

/// The largest webhook body a source reads: providers' events are far
/// smaller (Stripe's are tens of kilobytes).
pub const MAX_BODY: usize = 1024 * 1024;

/// How old a signed timestamp may be by default: Stripe's libraries' five
/// minutes. Paddle's SDKs allow only five seconds, which a proxy's queue or
/// a clock a little off exceeds; `tolerance` sets it per source.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);

/// A billing system whose webhooks dunningd understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Provider {
    Stripe,
    Paddle,
    Chargebee,
    Recurly,
    Lago,
}

impl Provider {
    pub const ALL: [Provider; 5] = [
        Provider::Stripe,
        Provider::Paddle,
        Provider::Chargebee,
        Provider::Recurly,
        Provider::Lago,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Stripe => "stripe",
            Provider::Paddle => "paddle",
            Provider::Chargebee => "chargebee",
            Provider::Recurly => "recurly",
            Provider::Lago => "lago",
        }
    }

    pub fn parse(name: &str) -> Option<Provider> {
        Provider::ALL.into_iter().find(|p| p.as_str() == name)
    }

    /// Where the provider's API lives when `api_base` is not given.
    /// Chargebee's depends on the site, so it has none.
    pub fn default_api_base(self) -> Option<&'static str> {
        match self {
            Provider::Stripe => Some("https://api.stripe.com"),
            Provider::Paddle => Some("https://api.paddle.com"),
            Provider::Chargebee => None,
            Provider::Recurly => Some("https://v3.recurly.com"),
            Provider::Lago => Some("https://api.getlago.com"),
        }
    }

    /// Whether the source authenticates with a user name and password
    /// (basic auth) rather than a signature.
    pub fn uses_username(self) -> bool {
        match self {
            Provider::Stripe => false,
            Provider::Paddle => false,
            Provider::Chargebee => true,
            Provider::Recurly => false,
            Provider::Lago => false,
        }
    }

    /// Whether the provider's webhooks carry too little to be events without
    /// its API (Recurly's name only ids), so a source needs an `api_key`.
    pub fn needs_api_key(self) -> bool {
        match self {
            Provider::Recurly => true,
            Provider::Stripe | Provider::Paddle | Provider::Chargebee | Provider::Lago => false,
        }
    }

    /// Checks that the request was signed by the provider with one of the
    /// source's secrets, within the source's tolerance of `now`.
    pub fn verify(
        self,
        source: &SourceConfig,
        headers: &HeaderMap,
        body: &[u8],
        now: DateTime<Utc>,
    ) -> Result<(), Refusal> {
        match self {
            Provider::Stripe => stripe::verify(source, headers, body, now),
            Provider::Paddle => paddle::verify(source, headers, body, now),
            Provider::Chargebee => chargebee::verify(source, headers, body, now),
            Provider::Recurly => recurly::verify(source, headers, body, now),
            Provider::Lago => lago::verify(source, headers, body, now),
        }
    }

    /// The provider's event as a draft of a dunningd event, or why it is not
    /// one. `headers` may be empty (an offline `sources map`).
    pub fn map(self, headers: &HeaderMap, payload: &Value) -> Result<Draft, Ignored> {
        match self {
            Provider::Stripe => stripe::map(payload),
            Provider::Paddle => paddle::map(payload),
            Provider::Chargebee => chargebee::map(payload),
            Provider::Recurly => recurly::map(headers, payload),
            Provider::Lago => lago::map(headers, payload),
        }
    }

    /// Merges an object fetched for `fetch` into the draft.
    pub fn apply(self, draft: &mut Draft, fetch: &Fetch, object: &Value) {
        match self {
            Provider::Stripe => stripe::apply(draft, fetch, object),
            Provider::Paddle => paddle::apply(draft, fetch, object),
            Provider::Chargebee => chargebee::apply(draft, fetch, object),
            Provider::Recurly => recurly::apply(draft, fetch, object),
            Provider::Lago => lago::apply(draft, fetch, object),
        }
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a source's events are about, so which cases they start and end:
/// the invoice (one case per unpaid invoice), the subscription, or the
/// customer (account-level dunning: any payment or card update ends it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SubjectLevel {
    #[default]
    Invoice,
    Subscription,
    Customer,
}

impl SubjectLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            SubjectLevel::Invoice => "invoice",
            SubjectLevel::Subscription => "subscription",
            SubjectLevel::Customer => "customer",
        }
    }

    pub fn parse(text: &str) -> Option<SubjectLevel> {
        match text {
            "invoice" => Some(SubjectLevel::Invoice),
            "subscription" => Some(SubjectLevel::Subscription),
            "customer" => Some(SubjectLevel::Customer),
            _ => None,
        }
    }
}

/// One source, resolved from the configuration (secrets read).
#[derive(Clone, PartialEq, Eq)]
pub struct SourceConfig {
    /// Its name under `sources:`: in logs, metrics and `sources list`.
    pub name: String,
    pub provider: Provider,
    /// The path its webhooks are posted to, e.g. `/sources/stripe`.
    pub path: String,
    /// Signing secrets; more than one while a secret is being rotated.
    /// Chargebee's is the password of the webhook's basic auth.
    pub secrets: Vec<Vec<u8>>,
    /// Chargebee's basic-auth user name.
    pub username: Option<String>,
    /// The key for the provider's API; without it nothing is fetched.
    pub api_key: Option<String>,
    /// The API's base URL, without a trailing slash.
    pub api_base: Option<String>,
    pub subject: SubjectLevel,
    /// How old a signed timestamp may be.
    pub tolerance: Duration,
    /// The longest one API request may take.
    pub api_timeout: Duration,
    /// Stripe: where the customer portal sends the customer back to
    /// (`None`: the portal configuration's default).
    pub portal_return_url: Option<String>,
}

impl fmt::Debug for SourceConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SourceConfig")
            .field("name", &self.name)
            .field("provider", &self.provider)
            .field("path", &self.path)
            .field("secrets", &self.secrets.len())
            .field("api_key", &self.api_key.as_ref().map(|_| "***"))
            .field(
                "api_base",
                &self.api_base.as_deref().map(crate::redact::urls),
            )
            .field("subject", &self.subject)
            .finish_non_exhaustive()
    }
}

/// Why a request was refused before its body was read as an event. Never
/// carries a secret or a header's value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("no {0} header")]
    Missing(&'static str),
    #[error("{header} header is malformed: {problem}")]
    Malformed {
        header: &'static str,
        problem: String,
    },
    #[error("signature made at {at}, more than {tolerance}s from now: too old (or a clock is off)")]
    TooOld { at: DateTime<Utc>, tolerance: u64 },
    #[error("{0} does not match any of the source's secrets")]
    Mismatch(&'static str),
}

/// Why a provider event starts nothing: answered 2xx and counted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ignored {
    /// The provider's event type, as sent (bounded, for logs and counts).
    pub provider_type: String,
    pub reason: String,
}

impl fmt::Display for Ignored {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.provider_type, self.reason)
    }
}

impl Ignored {
    pub fn new(provider_type: &str, reason: impl Into<String>) -> Ignored {
        Ignored {
            provider_type: shown(provider_type),
            reason: reason.into(),
        }
    }

    /// A payload that is not the provider's event at all (a field missing or
    /// of the wrong type): still answered 2xx, since a retry cannot fix it.
    pub fn malformed(provider_type: &str, field: &str) -> Ignored {
        Ignored::new(
            provider_type,
            format!("'{field}' is missing or not what the provider documents"),
        )
    }
}

/// Something to fetch through the provider's API to complete a draft.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetch {
    /// What it is for, for logs and `sources map`: `customer`, `payment_intent`.
    pub what: &'static str,
    /// The path and query under the API base, e.g. `/v1/customers/cus_1`.
    pub path: String,
}

/// The card of a payment or of an expiry notice.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Card {
    pub brand: Option<String>,
    pub last4: Option<String>,
    pub exp_month: Option<u32>,
    pub exp_year: Option<u32>,
}

impl Card {
    fn is_empty(&self) -> bool {
        *self == Card::default()
    }
}

/// A dunningd event being built from a provider's, before its checks.
#[derive(Debug, Clone, PartialEq)]
pub struct Draft {
    /// The provider's own event id, without the provider prefix.
    pub id: String,
    /// One of the dunningd event types ([`EVENT_TYPES`]).
    pub event_type: &'static str,
    /// The provider's type, e.g. `invoice.payment_failed`.
    pub provider_type: String,
    pub occurred_at: Option<DateTime<Utc>>,
    pub customer_id: Option<String>,
    pub email: Option<String>,
    pub name: Option<String>,
    pub phone: Option<String>,
    pub timezone: Option<String>,
    pub locale: Option<String>,
    pub invoice: Option<String>,
    pub subscription: Option<String>,
    /// In the currency's minor units.
    pub amount: Option<i64>,
    /// ISO 4217, upper case.
    pub currency: Option<String>,
    pub decline_code: Option<String>,
    pub failure_message: Option<String>,
    pub attempt: Option<u32>,
    pub next_retry_at: Option<DateTime<Utc>>,
    /// Where the customer pays or updates their card (the provider's page).
    pub update_url: Option<String>,
    /// A link to the provider's customer portal through this daemon
    /// ([`portal`]); set by the endpoint, which holds the signing secret.
    pub portal_url: Option<String>,
    pub card: Card,
    /// The provider's object the event is about, whole.
    pub object: Value,
    /// What the API must still be asked for.
    pub fetches: Vec<Fetch>,
}

/// The event types sources produce; workflows trigger and exit on them.
pub const EVENT_TYPES: [&str; 7] = [
    "payment_failed",
    "payment_succeeded",
    "payment_method_updated",
    "card_expiring",
    "subscription_canceled",
    "dispute_opened",
    "dispute_closed",
];

impl Draft {
    pub fn new(id: &str, event_type: &'static str, provider_type: &str, object: Value) -> Draft {
        debug_assert!(EVENT_TYPES.contains(&event_type));
        Draft {
            id: id.to_string(),
            event_type,
            provider_type: provider_type.to_string(),
            occurred_at: None,
            customer_id: None,
            email: None,
            name: None,
            phone: None,
            timezone: None,
            locale: None,
            invoice: None,
            subscription: None,
            amount: None,
            currency: None,
            decline_code: None,
            failure_message: None,
            attempt: None,
            next_retry_at: None,
            update_url: None,
            portal_url: None,
            card: Card::default(),
            object,
            fetches: Vec::new(),
        }
    }

    /// The case subject at `level`: falls back to the next wider thing the
    /// event has (an invoice without a subscription is its own subject).
    pub fn subject(&self, level: SubjectLevel) -> Option<&str> {
        let invoice = self.invoice.as_deref();
        let subscription = self.subscription.as_deref();
        let customer = self.customer_id.as_deref();
        match level {
            SubjectLevel::Invoice => invoice.or(subscription).or(customer),
            SubjectLevel::Subscription => subscription.or(invoice).or(customer),
            SubjectLevel::Customer => customer,
        }
    }

    /// The event as JSON, before its checks: what `sources map` prints.
    /// The provider's object is trimmed (largest fields first, their names
    /// listed in `data.object_trimmed`) so the event fits [`MAX_EVENT_BYTES`].
    pub fn to_json(&self, provider: Provider, source: &str, level: SubjectLevel) -> Value {
        let mut customer = Map::new();
        let text = |v: &Option<String>| v.clone().map(Value::String);
        for (key, value) in [
            ("id", &self.customer_id),
            ("email", &self.email),
            ("name", &self.name),
            ("phone", &self.phone),
            ("timezone", &self.timezone),
            ("locale", &self.locale),
        ] {
            if let Some(value) = text(value) {
                customer.insert(key.into(), value);
            }
        }
        let mut data = Map::new();
        data.insert("provider".into(), provider.as_str().into());
        data.insert("source".into(), source.into());
        data.insert(
            "provider_event_type".into(),
            self.provider_type.clone().into(),
        );
        let mut put = |key: &str, value: Option<Value>| {
            if let Some(value) = value {
                data.insert(key.into(), value);
            }
        };
        put("invoice", text(&self.invoice));
        put("subscription", text(&self.subscription));
        put("amount", self.amount.map(Value::from));
        put("currency", text(&self.currency));
        put("decline_code", text(&self.decline_code));
        put("failure_message", text(&self.failure_message));
        put("attempt", self.attempt.map(Value::from));
        put(
            "next_retry_at",
            self.next_retry_at.map(|t| Value::String(t.to_rfc3339())),
        );
        put("update_url", text(&self.update_url));
        put("portal_url", text(&self.portal_url));
        if !self.card.is_empty() {
            let mut card = Map::new();
            if let Some(brand) = &self.card.brand {
                card.insert("brand".into(), brand.clone().into());
            }
            if let Some(last4) = &self.card.last4 {
                card.insert("last4".into(), last4.clone().into());
            }
            if let Some(month) = self.card.exp_month {
                card.insert("exp_month".into(), month.into());
            }
            if let Some(year) = self.card.exp_year {
                card.insert("exp_year".into(), year.into());
            }
            put("card", Some(Value::Object(card)));
        }
        let mut event = json!({
            "id": format!("{provider}:{}", self.id),
            "type": self.event_type,
            "customer": customer,
            "subject": self.subject(level),
            "data": data,
        });
        if let Some(at) = self.occurred_at {
            event["occurred_at"] = at.to_rfc3339().into();
        }
        event["data"]["object"] = self.object.clone();
        trim_object(&mut event);
        event
    }

    /// The checked event, or why it cannot be one (a field too long, a
    /// customer id missing …), by the rules of every event.
    pub fn to_event(
        &self,
        provider: Provider,
        source: &str,
        level: SubjectLevel,
    ) -> Result<Event, EventError> {
        Event::from_json(&self.to_json(provider, source, level).to_string())
    }
}

/// A source for the providers' unit tests: `provider`'s defaults, these
/// signing secrets, no API.
#[cfg(test)]
pub(crate) fn test_source(provider: Provider, secrets: &[&str]) -> SourceConfig {
    SourceConfig {
        name: provider.as_str().into(),
        provider,
        path: format!("/sources/{provider}"),
        secrets: secrets.iter().map(|s| s.as_bytes().to_vec()).collect(),
        username: None,
        api_key: None,
        api_base: None,
        subject: SubjectLevel::Invoice,
        tolerance: DEFAULT_TOLERANCE,
        api_timeout: Duration::from_secs(10),
        portal_return_url: None,
    }
}

/// Headers of a test request.
#[cfg(test)]
pub(crate) fn test_headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in pairs {
        headers.insert(*name, value.parse().expect("a header value"));
    }
    headers
}

/// The hex HMAC-SHA256 of `parts` under `secret`, as the providers that
/// sign in hex compute it.
#[cfg(test)]
pub(crate) fn test_hex_signature(secret: &str, parts: &[&[u8]]) -> String {
    hex::encode(
        hmac_sha256(secret.as_bytes(), parts)
            .finalize()
            .into_bytes(),
    )
}

/// Removes the largest fields of `data.object` until the event fits.
fn trim_object(event: &mut Value) {
    let mut trimmed = Vec::new();
    while event.to_string().len() > MAX_EVENT_BYTES {
        let Some(object) = event["data"]["object"].as_object_mut() else {
            break;
        };
        let largest = object
            .iter()
            .max_by_key(|(_, v)| v.to_string().len())
            .map(|(k, _)| k.clone());
        match largest {
            Some(key) => {
                object.remove(&key);
                trimmed.push(Value::String(key));
            }
            None => break,
        }
        event["data"]["object_trimmed"] = Value::Array(trimmed.clone());
    }
}

/// A signature header of `key=value` items: a Unix time in seconds and one
/// or more hex HMAC-SHA256 signatures of `<time><joiner><body>`, one per
/// live secret while a secret is rolled (Stripe's `t=…,v1=…,v1=…`,
/// Paddle's `ts=…;h1=…`). Items of other keys are skipped.
pub(crate) struct TimedSignature {
    pub header: &'static str,
    pub separator: char,
    pub time_key: &'static str,
    pub signature_key: &'static str,
    pub joiner: &'static [u8],
}

impl TimedSignature {
    /// Checks the signatures first, then the time, as the providers'
    /// libraries do.
    pub(crate) fn verify(
        &self,
        source: &SourceConfig,
        headers: &HeaderMap,
        body: &[u8],
        now: DateTime<Utc>,
    ) -> Result<(), Refusal> {
        let value = header(headers, self.header).ok_or(Refusal::Missing(self.header))?;
        let mut timestamp = None;
        let mut signatures = Vec::new();
        for item in value.split(self.separator) {
            match item.trim().split_once('=') {
                Some((key, time)) if key == self.time_key => timestamp = Some(time),
                Some((key, sig)) if key == self.signature_key => signatures.push(sig),
                _ => {}
            }
        }
        let malformed = |problem: String| Refusal::Malformed {
            header: self.header,
            problem,
        };
        let timestamp =
            timestamp.ok_or_else(|| malformed(format!("no {}= timestamp", self.time_key)))?;
        let at: i64 = timestamp
            .parse()
            .map_err(|_| malformed(format!("{}= is not a Unix time", self.time_key)))?;
        if signatures.is_empty() {
            return Err(malformed(format!("no {}= signature", self.signature_key)));
        }
        let parts: [&[u8]; 3] = [timestamp.as_bytes(), self.joiner, body];
        if !any_hex_signature(&source.secrets, &parts, signatures.iter().copied()) {
            return Err(Refusal::Mismatch(self.header));
        }
        within_tolerance(at, now, source.tolerance)
    }
}

/// The longest text from a payload that logs and `sources list` show.
pub const SHOWN_CHARS: usize = 100;

/// Text from a payload (a type, an id) as logs and `sources list` show it:
/// escaped ([`crate::text::shown`]), so it cannot forge a log line, and cut
/// after [`SHOWN_CHARS`]. Plain short text stays as it is.
pub fn shown(text: &str) -> String {
    crate::text::shown(text, Some(SHOWN_CHARS + 1))
}

/// A header's value as text (`None` if absent or not visible ASCII).
pub(crate) fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// HMAC-SHA256 of the parts, one after the other, keyed with `secret`.
pub(crate) fn hmac_sha256(secret: &[u8], parts: &[&[u8]]) -> Hmac<Sha256> {
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC takes keys of any length");
    for part in parts {
        mac.update(part);
    }
    mac
}

/// Whether any of `candidates` (hex) is the HMAC-SHA256 of `parts` under any
/// of the secrets; compared in constant time.
pub(crate) fn any_hex_signature<'a>(
    secrets: &[Vec<u8>],
    parts: &[&[u8]],
    candidates: impl IntoIterator<Item = &'a str> + Clone,
) -> bool {
    secrets.iter().any(|secret| {
        candidates.clone().into_iter().any(|given| {
            hex::decode(given.trim())
                .is_ok_and(|given| hmac_sha256(secret, parts).verify_slice(&given).is_ok())
        })
    })
}

/// Checks a signed Unix time (seconds) against `now` within `tolerance`,
/// either way (a clock a little ahead is as wrong as one behind).
pub(crate) fn within_tolerance(
    at_secs: i64,
    now: DateTime<Utc>,
    tolerance: Duration,
) -> Result<(), Refusal> {
    let at = Utc
        .timestamp_opt(at_secs, 0)
        .single()
        .unwrap_or(DateTime::<Utc>::MIN_UTC);
    let age = (now - at).num_seconds().unsigned_abs();
    if age > tolerance.as_secs() {
        return Err(Refusal::TooOld {
            at,
            tolerance: tolerance.as_secs(),
        });
    }
    Ok(())
}

/// A short text field of a provider object (`None` if absent, null, empty
/// or not a string).
pub(crate) fn text(value: &Value, pointer: &str) -> Option<String> {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(String::from)
}

/// An id that may be given as a string or as an expanded object with `id`
/// (Stripe expands `customer`, `subscription`, … on request).
pub(crate) fn id_of(value: &Value, pointer: &str) -> Option<String> {
    match value.pointer(pointer)? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Object(o) => o.get("id").and_then(Value::as_str).map(String::from),
        _ => None,
    }
}

/// A Unix time in seconds as a time.
pub(crate) fn unix_time(value: &Value, pointer: &str) -> Option<DateTime<Utc>> {
    let secs = value.pointer(pointer)?.as_i64()?;
    Utc.timestamp_opt(secs, 0).single()
}

/// An RFC 3339 time field.
pub fn rfc3339(value: &Value, pointer: &str) -> Option<DateTime<Utc>> {
    let text = value.pointer(pointer)?.as_str()?;
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// An ISO 4217 code in upper case, if it is three letters.
pub(crate) fn currency(value: &Value, pointer: &str) -> Option<String> {
    let code = value.pointer(pointer)?.as_str()?;
    (code.len() == 3 && code.chars().all(|c| c.is_ascii_alphabetic()))
        .then(|| code.to_ascii_uppercase())
}

/// An amount in minor units given as a JSON integer or as a string of
/// digits (Paddle's totals).
pub fn minor_units(value: &Value, pointer: &str) -> Option<i64> {
    match value.pointer(pointer)? {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// A decimal amount in major units (`"49.90"`, `49.9`) in the minor units of
/// `currency`, exactly: the decimal text is shifted, never multiplied as a
/// float. `None` if it has more decimals than the currency has.
pub fn decimal_to_minor(value: &Value, pointer: &str, currency: &str) -> Option<i64> {
    let text = match value.pointer(pointer)? {
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.trim().to_string(),
        _ => return None,
    };
    let exponent = crate::workflow::money::exponent(currency) as usize;
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.as_str()),
    };
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    let fraction = fraction.trim_end_matches('0');
    if whole.is_empty() && fraction.is_empty()
        || !whole.chars().all(|c| c.is_ascii_digit())
        || !fraction.chars().all(|c| c.is_ascii_digit())
        || fraction.len() > exponent
    {
        return None;
    }
    let padded = format!("{whole}{fraction:0<exponent$}");
    if padded.len() > 18 {
        return None;
    }
    let minor: i64 = padded.trim_start_matches('0').parse().unwrap_or(0);
    Some(if negative { -minor } else { minor })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_become_minor_units_by_the_currency_exponent() {
        let table = [
            (json!("49.90"), "USD", Some(4990)),
            (json!(49.9), "USD", Some(4990)),
            (json!("49"), "USD", Some(4900)),
            (json!("0.05"), "EUR", Some(5)),
            (json!("1500"), "JPY", Some(1500)),
            (json!("1500.5"), "JPY", None),
            (json!("1.234"), "KWD", Some(1234)),
            (json!("1.2345"), "KWD", None),
            (json!("-3.10"), "USD", Some(-310)),
            (json!("4.999"), "USD", None),
            (json!("abc"), "USD", None),
            (json!("."), "USD", None),
            (json!(true), "USD", None),
            (json!("99999999999999999999"), "USD", None),
        ];
        for (value, currency, expected) in table {
            let doc = json!({ "a": value });
            assert_eq!(
                decimal_to_minor(&doc, "/a", currency),
                expected,
                "{value} {currency}"
            );
        }
    }

    #[test]
    fn payload_text_is_shown_escaped_and_short() {
        assert_eq!(shown("invoice.paid"), "invoice.paid");
        assert_eq!(shown("evt_1\nforged line"), "evt_1\\nforged line");
        let long = "x".repeat(SHOWN_CHARS + 5);
        assert_eq!(shown(&long).chars().count(), SHOWN_CHARS + 1);
        assert!(shown(&long).ends_with('…'));
    }

    #[test]
    fn the_subject_falls_back_to_what_the_event_has() {
        let mut draft = Draft::new("e", "payment_failed", "x", Value::Null);
        draft.customer_id = Some("cus".into());
        assert_eq!(draft.subject(SubjectLevel::Invoice), Some("cus"));
        draft.subscription = Some("sub".into());
        assert_eq!(draft.subject(SubjectLevel::Invoice), Some("sub"));
        draft.invoice = Some("in".into());
        assert_eq!(draft.subject(SubjectLevel::Invoice), Some("in"));
        assert_eq!(draft.subject(SubjectLevel::Subscription), Some("sub"));
        assert_eq!(draft.subject(SubjectLevel::Customer), Some("cus"));
    }

    #[test]
    fn a_large_object_is_trimmed_to_fit_an_event() {
        let mut draft = Draft::new(
            "evt_1",
            "payment_failed",
            "invoice.payment_failed",
            json!({ "id": "in_1", "lines": { "data": ["x".repeat(70_000)] }, "small": 1 }),
        );
        draft.customer_id = Some("cus_1".into());
        draft.invoice = Some("in_1".into());
        let event = draft
            .to_event(Provider::Stripe, "stripe", SubjectLevel::Invoice)
            .expect("fits once trimmed");
        assert_eq!(event.id, "stripe:evt_1");
        assert_eq!(event.data["object"]["id"], "in_1");
        assert!(event.data["object"].get("lines").is_none());
        assert_eq!(event.data["object_trimmed"], json!(["lines"]));
    }

    #[test]
    fn signed_times_are_checked_both_ways() {
        let now = Utc.timestamp_opt(1_700_000_000, 0).unwrap();
        let tolerance = DEFAULT_TOLERANCE;
        assert!(within_tolerance(1_700_000_000 - 300, now, tolerance).is_ok());
        assert!(within_tolerance(1_700_000_000 + 300, now, tolerance).is_ok());
        assert!(within_tolerance(1_700_000_000 - 301, now, tolerance).is_err());
        assert!(within_tolerance(1_700_000_000 + 301, now, tolerance).is_err());
        assert!(within_tolerance(i64::MIN, now, tolerance).is_err());
        assert!(within_tolerance(i64::MAX, now, tolerance).is_err());
    }
}
