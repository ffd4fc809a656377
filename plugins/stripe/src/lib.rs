//! The `stripe` channel plugin: a step's message is an action on Stripe —
//! retry an invoice's payment, give up on it, pause or cancel the
//! subscription — so a workflow acts on the billing system without any code
//! of the operator's.
//!
//! Spoken directly with reqwest (rustls), like the `twilio` plugin: Stripe's
//! error body is what tells a declined card from a rate limit.
//!
//! Settings:
//! - `api_key` (required; give it under `secrets:`): a secret key (`sk_…`)
//!   or a restricted key (`rk_…`) allowed to write invoices and
//!   subscriptions. Sent as `Authorization: Bearer`.
//! - `base_url` (default `https://api.stripe.com`): a test server.
//! - `stripe_account`: a connected account (`acct_…`) to act on, sent as
//!   `Stripe-Account` (Connect).
//! - `api_version`: pins Stripe's API version, sent as `Stripe-Version`
//!   (else the account's default applies).
//! - `request_timeout` (seconds, default 20).
//!
//! Message fields (the rendered template): `action` (required), one of
//! - `retry_payment`: `POST /v1/invoices/{invoice}/pay` (optional
//!   `off_session`: `true`/`false`);
//! - `mark_uncollectible`: `POST /v1/invoices/{invoice}/mark_uncollectible`;
//! - `void_invoice`: `POST /v1/invoices/{invoice}/void`;
//! - `cancel_subscription`: `DELETE /v1/subscriptions/{subscription}`
//!   (optional `invoice_now`, `prorate`: `true`/`false`; sent in the query
//!   string, as Stripe's own libraries send a DELETE's parameters);
//! - `pause_subscription`: `POST /v1/subscriptions/{subscription}` with
//!   `pause_collection[behavior]` = field `behavior` (`void`, the default,
//!   `keep_as_draft` or `mark_uncollectible`);
//! - `resume_subscription`: `POST /v1/subscriptions/{subscription}` with an
//!   empty `pause_collection`, which Stripe reads as "unset".
//!
//! `invoice` defaults to the delivery's subject (the event's `subject`, an
//! invoice id); `subscription` must be given (`"{{ data.subscription }}"`).
//! A field rendered empty counts as absent. Ids are checked before any
//! request (letters, digits and `_`, at most 255): a template that renders
//! something else fails permanently without touching Stripe.
//!
//! Idempotency: every request carries `Idempotency-Key`, derived from the
//! delivery's idempotency key (stable across retries and restarts) and the
//! action, so a retried delivery — after a timeout, a 5xx, a crash — is
//! answered by Stripe with the first attempt's result instead of charging or
//! cancelling twice. Stripe allows 255 characters; a longer key is replaced
//! by its SHA-256.
//!
//! Outcomes ([`ErrorClass`]): 2xx is `sent`, the receipt the object's `id`.
//! A declined card (402 `card_error`), an invoice that is no longer open or
//! an object that does not exist (`resource_missing`), rejected credentials
//! (401/403), a reused idempotency key (`idempotency_error`) and any other
//! 4xx are permanent; 429 is retried (after `Retry-After` if given); a 5xx
//! (`api_error`) or a failure after the request was sent is `unknown` — it
//! may have taken effect, and the retry reuses the idempotency key; a failed
//! connection is retried.
//!
//! No message shows the API key: it and any credentials in `base_url` are
//! hidden wherever a message would quote them (reqwest's errors are printed
//! without their URL), and answers are read up to [`MAX_ANSWER`] bytes.

use std::io::Read;
use std::time::Duration;

use dunningd_plugin_api::redact::{self, Redactor};
use dunningd_plugin_api::wire::{ChannelConfig, DeliveryRequest, DeliveryResponse};
use dunningd_plugin_api::{Channel, Plugin, export_plugin};
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// The most of an answer read: Stripe's objects are a few kilobytes; more is
/// not Stripe, and must not exhaust the daemon's memory.
pub const MAX_ANSWER: u64 = 1024 * 1024;

/// Stripe's limit on an id (and on an idempotency key).
pub const MAX_ID: usize = 255;

/// The longest receipt kept (the object's id).
const MAX_RECEIPT: usize = 256;

pub struct Stripe;

pub struct StripeChannel {
    /// `base_url` without a trailing `/`.
    base: reqwest::Url,
    api_key: String,
    stripe_account: Option<String>,
    api_version: Option<String>,
    client: reqwest::blocking::Client,
    /// The API's base URL as messages show it (credentials hidden).
    shown: String,
    /// Hides the channel's secrets in messages.
    redactor: Redactor,
}

/// What a step asks of Stripe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    RetryPayment,
    MarkUncollectible,
    VoidInvoice,
    CancelSubscription,
    PauseSubscription,
    ResumeSubscription,
}

impl Action {
    pub const ALL: [Action; 6] = [
        Action::RetryPayment,
        Action::MarkUncollectible,
        Action::VoidInvoice,
        Action::CancelSubscription,
        Action::PauseSubscription,
        Action::ResumeSubscription,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Action::RetryPayment => "retry_payment",
            Action::MarkUncollectible => "mark_uncollectible",
            Action::VoidInvoice => "void_invoice",
            Action::CancelSubscription => "cancel_subscription",
            Action::PauseSubscription => "pause_subscription",
            Action::ResumeSubscription => "resume_subscription",
        }
    }

    pub fn parse(name: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.name() == name)
    }
}

/// The HTTP methods the actions use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Post,
    Delete,
}

/// One request to Stripe, planned from a delivery before anything is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub action: Action,
    pub method: Method,
    /// Below the base URL, e.g. `/v1/invoices/in_1/pay`.
    pub path: String,
    /// Form fields for a POST, query parameters for a DELETE.
    pub params: Vec<(String, String)>,
    pub idempotency_key: String,
}

/// Whether `id` can be put in a Stripe URL as it is: Stripe's ids are
/// letters, digits and `_` (`in_1MtHbELkdIwHu7ixl4OzzPMv`). `what` names
/// where it came from (`field 'invoice'`, `settings.stripe_account`).
pub fn check_id(what: &str, id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err(format!("{what} is empty"));
    }
    if id.len() > MAX_ID {
        return Err(format!(
            "{what}: id of {} characters, Stripe's are at most {MAX_ID}",
            id.len()
        ));
    }
    if let Some(bad) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_'))
    {
        return Err(format!(
            "{what}: invalid Stripe id '{}': {bad:?} is not a letter, digit or '_'",
            id.escape_debug()
        ));
    }
    Ok(())
}

/// The `Idempotency-Key` for one action of one delivery: the delivery's key
/// (stable across its attempts) and the action, or their SHA-256 where that
/// would be longer than Stripe allows or not a plain header value.
pub fn idempotency_key(delivery_key: &str, action: Action) -> String {
    let plain = format!("dunningd:{}:{delivery_key}", action.name());
    if plain.len() <= MAX_ID && plain.bytes().all(|b| b.is_ascii_graphic()) {
        return plain;
    }
    let digest = Sha256::digest(delivery_key.as_bytes());
    format!("dunningd:{}:sha256:{}", action.name(), hex::encode(digest))
}

/// A message field, trimmed; empty counts as absent (a template variable
/// that was not in the event renders empty).
fn field<'a>(request: &'a DeliveryRequest, name: &str) -> Option<&'a str> {
    request
        .message
        .get(name)
        .map(|v| v.trim())
        .filter(|v| !v.is_empty())
}

fn flag(request: &DeliveryRequest, name: &str) -> Result<Option<(String, String)>, String> {
    match field(request, name) {
        None => Ok(None),
        Some(v @ ("true" | "false")) => Ok(Some((name.to_string(), v.to_string()))),
        Some(other) => Err(format!(
            "field '{name}': expected 'true' or 'false', got '{}'",
            other.escape_debug()
        )),
    }
}

/// Plans the request a delivery asks for, or says why there is none.
pub fn plan(request: &DeliveryRequest) -> Result<Call, String> {
    let name = field(request, "action").ok_or_else(|| {
        format!(
            "template '{}' has no 'action' field (one of {})",
            request.template,
            allowed()
        )
    })?;
    let action = Action::parse(name).ok_or_else(|| {
        format!(
            "unknown action '{}' (one of {})",
            name.escape_debug(),
            allowed()
        )
    })?;
    let invoice = || -> Result<String, String> {
        let id = field(request, "invoice").unwrap_or(request.subject.trim());
        check_id("field 'invoice'", id).map_err(|e| {
            match request.message.contains_key("invoice") {
                true => e,
                false => format!("{e} (no 'invoice' field: the event's subject is used)"),
            }
        })?;
        Ok(id.to_string())
    };
    let subscription = || -> Result<String, String> {
        let id =
            field(request, "subscription").ok_or("field 'subscription' is missing or empty")?;
        check_id("field 'subscription'", id)?;
        Ok(id.to_string())
    };
    let mut params = Vec::new();
    let (method, path) = match action {
        Action::RetryPayment => {
            params.extend(flag(request, "off_session")?);
            (Method::Post, format!("/v1/invoices/{}/pay", invoice()?))
        }
        Action::MarkUncollectible => (
            Method::Post,
            format!("/v1/invoices/{}/mark_uncollectible", invoice()?),
        ),
        Action::VoidInvoice => (Method::Post, format!("/v1/invoices/{}/void", invoice()?)),
        Action::CancelSubscription => {
            params.extend(flag(request, "invoice_now")?);
            params.extend(flag(request, "prorate")?);
            (
                Method::Delete,
                format!("/v1/subscriptions/{}", subscription()?),
            )
        }
        Action::PauseSubscription => {
            let behavior = field(request, "behavior").unwrap_or("void");
            if !matches!(behavior, "void" | "keep_as_draft" | "mark_uncollectible") {
                return Err(format!(
                    "field 'behavior': unknown '{}' (one of void, keep_as_draft, mark_uncollectible)",
                    behavior.escape_debug()
                ));
            }
            params.push(("pause_collection[behavior]".into(), behavior.into()));
            (
                Method::Post,
                format!("/v1/subscriptions/{}", subscription()?),
            )
        }
        Action::ResumeSubscription => {
            // Stripe unsets a field given as the empty string.
            params.push(("pause_collection".into(), String::new()));
            (
                Method::Post,
                format!("/v1/subscriptions/{}", subscription()?),
            )
        }
    };
    Ok(Call {
        action,
        method,
        path,
        params,
        idempotency_key: idempotency_key(&request.idempotency_key, action),
    })
}

fn allowed() -> String {
    Action::ALL.map(Action::name).join(", ")
}

/// Stripe's error body: `{"error": {"type", "code", "decline_code", "message"}}`.
#[derive(Debug, Default, Deserialize)]
pub struct StripeError {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub code: Option<String>,
    pub decline_code: Option<String>,
    pub message: Option<String>,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: StripeError,
}

/// What a Stripe error means for the delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// 402 `card_error`: the charge was declined; the workflow's later steps
    /// decide what happens next, not a retry of this one.
    Declined,
    /// `resource_missing`, `invoice_not_open`, "already paid": the object is
    /// gone or past this action; there is nothing left to do.
    Settled,
    /// 401/403, `authentication_error`/`permission_error`: the operator must
    /// fix the channel's key.
    Credentials,
    /// `idempotency_error` (or 409): the key was used with other parameters,
    /// or a request with it is still running.
    Idempotency,
    /// 429: not processed; always safe to retry.
    RateLimited,
    /// 5xx, `api_error`: Stripe may have acted.
    ServerError,
    /// Any other 4xx: the request itself is wrong.
    Rejected,
}

impl ErrorClass {
    pub fn of(http_status: u16, error: &StripeError) -> ErrorClass {
        let kind = error.kind.as_deref();
        let code = error.code.as_deref();
        let message = error.message.as_deref().unwrap_or("").to_ascii_lowercase();
        let already = message.contains("already paid")
            || message.contains("already been paid")
            || message.contains("already canceled")
            || message.contains("already voided");
        match (http_status, kind, code) {
            (402, ..) | (_, Some("card_error"), _) => ErrorClass::Declined,
            (401 | 403, ..) | (_, Some("authentication_error" | "permission_error"), _) => {
                ErrorClass::Credentials
            }
            (409, ..) | (_, Some("idempotency_error"), _) => ErrorClass::Idempotency,
            (429, ..) | (_, Some("rate_limit_error"), _) | (_, _, Some("rate_limit")) => {
                ErrorClass::RateLimited
            }
            (500..=599, ..) | (_, Some("api_error"), _) => ErrorClass::ServerError,
            (_, _, Some("resource_missing" | "invoice_not_open")) => ErrorClass::Settled,
            (400, Some("invalid_request_error"), _) if already => ErrorClass::Settled,
            _ => ErrorClass::Rejected,
        }
    }

    /// Exhaustive on purpose: a new class must decide how it is retried.
    fn response(
        self,
        error: String,
        detail: &StripeError,
        retry_after_secs: Option<u64>,
    ) -> DeliveryResponse {
        match self {
            ErrorClass::Declined => {
                let why = detail
                    .decline_code
                    .as_deref()
                    .or(detail.code.as_deref())
                    .unwrap_or("no decline code");
                DeliveryResponse::Permanent {
                    error: format!("card declined ({}): {error}", bounded(why, 64)),
                }
            }
            ErrorClass::Settled => DeliveryResponse::Permanent {
                error: format!("nothing to do, already settled or gone: {error}"),
            },
            ErrorClass::Credentials => DeliveryResponse::Permanent {
                error: format!("{error} (check the channel's api_key and its permissions)"),
            },
            ErrorClass::Idempotency => DeliveryResponse::Permanent {
                error: format!("idempotency key refused: {error}"),
            },
            ErrorClass::RateLimited => DeliveryResponse::Retryable {
                error,
                retry_after_secs,
            },
            ErrorClass::ServerError => DeliveryResponse::Unknown {
                error: format!(
                    "{error} (Stripe may have acted; the retry reuses the idempotency key)"
                ),
            },
            ErrorClass::Rejected => DeliveryResponse::Permanent { error },
        }
    }
}

/// `text` cut to `max` characters.
fn bounded(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_string(),
    }
}

fn setting<'a>(s: &'a serde_json::Value, key: &str) -> Option<&'a str> {
    s.get(key)
        .and_then(|v| v.as_str())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

impl Plugin for Stripe {
    const NAME: &'static str = "stripe";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    type Channel = StripeChannel;

    fn open(config: ChannelConfig) -> Result<StripeChannel, String> {
        let s = &config.settings;
        let redactor = Redactor::for_settings(s, &[]);
        let api_key = setting(s, "api_key").ok_or("settings.api_key: missing")?;
        // The key itself is never quoted, not even a prefix of it.
        if !(api_key.starts_with("sk_") || api_key.starts_with("rk_")) {
            return Err(
                "settings.api_key: not a secret key (sk_…) or restricted key (rk_…)".into(),
            );
        }
        if !api_key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("settings.api_key: contains spaces or non-ASCII characters".into());
        }
        let stripe_account = setting(s, "stripe_account");
        if let Some(account) = stripe_account {
            check_id("settings.stripe_account", account)?;
        }
        let api_version = setting(s, "api_version");
        if let Some(version) = api_version
            && !version
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        {
            return Err(format!(
                "settings.api_version: invalid '{}' (e.g. 2025-03-31.basil)",
                version.escape_debug()
            ));
        }
        let base = setting(s, "base_url")
            .unwrap_or("https://api.stripe.com")
            .trim_end_matches('/');
        let shown = redact::urls(base).into_owned();
        let base_url = reqwest::Url::parse(base)
            .map_err(|e| format!("settings.base_url: invalid URL '{shown}': {e}"))?;
        let timeout = s
            .get("request_timeout")
            .and_then(|v| v.as_u64())
            .unwrap_or(20);
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(timeout))
            .user_agent(concat!("dunningd-stripe/", env!("CARGO_PKG_VERSION")))
            // Stripe does not redirect; following one would resend the key.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(StripeChannel {
            base: base_url,
            api_key: api_key.to_string(),
            stripe_account: stripe_account.map(String::from),
            api_version: api_version.map(String::from),
            client,
            shown,
            redactor,
        })
    }
}

impl StripeChannel {
    fn url(&self, call: &Call) -> reqwest::Url {
        let mut url = self.base.clone();
        let path = format!("{}{}", url.path().trim_end_matches('/'), call.path);
        url.set_path(&path);
        if call.method == Method::Delete && !call.params.is_empty() {
            url.query_pairs_mut().extend_pairs(&call.params);
        }
        url
    }
}

impl Channel for StripeChannel {
    fn send(&self, request: &DeliveryRequest) -> DeliveryResponse {
        let call = match plan(request) {
            Ok(call) => call,
            Err(error) => return DeliveryResponse::Permanent { error },
        };
        let url = self.url(&call);
        let mut builder = match call.method {
            Method::Post => self.client.post(url).form(&call.params),
            Method::Delete => self.client.delete(url),
        };
        builder = builder
            .bearer_auth(&self.api_key)
            .header("Idempotency-Key", &call.idempotency_key);
        if let Some(account) = &self.stripe_account {
            builder = builder.header("Stripe-Account", account);
        }
        if let Some(version) = &self.api_version {
            builder = builder.header("Stripe-Version", version);
        }
        let hide = |text: String| self.redactor.redact(&text).into_owned();
        let what = format!("{} {}", call.action.name(), call.path);
        let response = match builder.send() {
            Ok(response) => response,
            Err(e) if e.is_connect() => {
                return DeliveryResponse::Retryable {
                    error: hide(format!(
                        "{what}: cannot connect to Stripe at {}: {}",
                        self.shown,
                        redact::describe(&e.without_url())
                    )),
                    retry_after_secs: None,
                };
            }
            Err(e) => {
                return DeliveryResponse::Unknown {
                    error: hide(format!(
                        "{what}: Stripe request to {} failed after it was sent: {}",
                        self.shown,
                        redact::describe(&e.without_url())
                    )),
                };
            }
        };
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("Retry-After")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let mut body = Vec::new();
        if let Err(e) = response.take(MAX_ANSWER).read_to_end(&mut body) {
            // The status is in, so Stripe did answer; only its body is lost.
            let error = hide(format!(
                "{what}: reading Stripe's answer (HTTP {status}) failed: {}",
                redact::describe(&e)
            ));
            return match (200..300).contains(&status) {
                true => DeliveryResponse::Unknown { error },
                false => DeliveryResponse::Retryable {
                    error,
                    retry_after_secs: retry_after,
                },
            };
        }
        if (200..300).contains(&status) {
            return match serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["id"].as_str().map(|id| bounded(id, MAX_RECEIPT)))
            {
                Some(id) => DeliveryResponse::Sent { receipt: Some(id) },
                None => DeliveryResponse::Unknown {
                    error: format!("{what}: Stripe answered HTTP {status} without an object id"),
                },
            };
        }
        let detail = serde_json::from_slice::<ErrorBody>(&body)
            .map(|b| b.error)
            .unwrap_or_default();
        let message = match &detail.message {
            Some(message) => bounded(message, 300),
            None => bounded(&String::from_utf8_lossy(&body), 200),
        };
        let label = match (&detail.kind, &detail.code) {
            (Some(kind), Some(code)) => format!("{kind} {code}"),
            (Some(kind), None) => kind.clone(),
            (None, Some(code)) => code.clone(),
            (None, None) => "error".into(),
        };
        let error = format!(
            "{what}: Stripe {} (HTTP {status}): {message}",
            bounded(&label, 80)
        );
        ErrorClass::of(status, &detail).response(hide(error), &detail, retry_after)
    }
}

export_plugin!(Stripe);

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use dunningd_plugin_api::wire::Recipient;

    use super::*;

    fn request(fields: &[(&str, &str)]) -> DeliveryRequest {
        DeliveryRequest {
            delivery_id: "d1".into(),
            idempotency_key: "dunningd-case-1-retry".into(),
            channel: "stripe".into(),
            case_id: "case".into(),
            workflow: "payment-failed".into(),
            step: "retry".into(),
            template: "t".into(),
            attempt: 1,
            recipient: Recipient::default(),
            message: fields
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
            data: serde_json::Value::Null,
            subject: "in_subject".into(),
        }
    }

    fn error(kind: Option<&str>, code: Option<&str>, message: &str) -> StripeError {
        StripeError {
            kind: kind.map(String::from),
            code: code.map(String::from),
            decline_code: None,
            message: Some(message.into()),
        }
    }

    #[test]
    fn stripe_errors_are_classified() {
        let inv = Some("invalid_request_error");
        let table = [
            (
                402,
                Some("card_error"),
                Some("card_declined"),
                "Your card was declined.",
                ErrorClass::Declined,
            ),
            (
                400,
                inv,
                Some("invoice_not_open"),
                "This invoice isn't open.",
                ErrorClass::Settled,
            ),
            (
                400,
                inv,
                None,
                "Invoice is already paid",
                ErrorClass::Settled,
            ),
            (
                404,
                inv,
                Some("resource_missing"),
                "No such invoice: 'in_1'",
                ErrorClass::Settled,
            ),
            (
                404,
                inv,
                None,
                "Unrecognized request URL (POST: /v1/x)",
                ErrorClass::Rejected,
            ),
            (
                401,
                Some("authentication_error"),
                None,
                "Invalid API Key provided",
                ErrorClass::Credentials,
            ),
            (
                403,
                Some("permission_error"),
                None,
                "restricted key",
                ErrorClass::Credentials,
            ),
            (
                409,
                Some("idempotency_error"),
                None,
                "in progress",
                ErrorClass::Idempotency,
            ),
            (
                400,
                Some("idempotency_error"),
                None,
                "other parameters",
                ErrorClass::Idempotency,
            ),
            (
                429,
                inv,
                Some("rate_limit"),
                "Too many requests",
                ErrorClass::RateLimited,
            ),
            (
                429,
                inv,
                Some("lock_timeout"),
                "locked",
                ErrorClass::RateLimited,
            ),
            (
                500,
                Some("api_error"),
                None,
                "Something went wrong",
                ErrorClass::ServerError,
            ),
            (503, None, None, "", ErrorClass::ServerError),
            (
                400,
                inv,
                Some("parameter_invalid_empty"),
                "bad",
                ErrorClass::Rejected,
            ),
        ];
        for (status, kind, code, message, class) in table {
            assert_eq!(
                ErrorClass::of(status, &error(kind, code, message)),
                class,
                "{status} {kind:?} {code:?} {message}"
            );
        }
    }

    #[test]
    fn ids_are_checked() {
        for ok in [
            "in_1MtHbELkdIwHu7ixl4OzzPMv",
            "sub_1",
            "x",
            &"a".repeat(255),
        ] {
            assert_eq!(check_id("field 'invoice'", ok), Ok(()), "{ok}");
        }
        let table = [
            ("", "field 'invoice' is empty"),
            ("in_1/../customers", "'/' is not a letter"),
            ("in_1?expand=x", "'?' is not a letter"),
            ("in 1", "' ' is not a letter"),
            ("in_ü", "'ü' is not a letter"),
            (&"a".repeat(256), "id of 256 characters"),
        ];
        for (bad, want) in table {
            let err = check_id("field 'invoice'", bad).expect_err(bad);
            assert!(err.contains(want), "{bad}: {err}");
        }
    }

    #[test]
    fn idempotency_keys_fit_stripe_and_differ_by_action() {
        let short = idempotency_key("dunningd-case-1-retry", Action::RetryPayment);
        assert_eq!(short, "dunningd:retry_payment:dunningd-case-1-retry");
        assert_ne!(
            short,
            idempotency_key("dunningd-case-1-retry", Action::VoidInvoice)
        );
        for long in ["k".repeat(250), "k".repeat(10_000), "with space".into()] {
            let key = idempotency_key(&long, Action::ResumeSubscription);
            assert!(key.len() <= MAX_ID, "{} characters", key.len());
            assert!(key.bytes().all(|b| b.is_ascii_graphic()), "{key}");
            assert_eq!(key, idempotency_key(&long, Action::ResumeSubscription));
        }
        assert_ne!(
            idempotency_key(&"k".repeat(300), Action::RetryPayment),
            idempotency_key(&"k".repeat(301), Action::RetryPayment)
        );
    }

    #[test]
    fn deliveries_are_planned_into_requests() {
        // (fields, Ok((method, path, params)) or Err(part of the error))
        type Planned<'a> = Result<(&'a str, &'a str, Vec<(&'a str, &'a str)>), &'a str>;
        let table: Vec<(Vec<(&str, &str)>, Planned)> = vec![
            (
                vec![("action", "retry_payment")],
                Ok(("POST", "/v1/invoices/in_subject/pay", vec![])),
            ),
            (
                vec![
                    ("action", "retry_payment"),
                    ("invoice", "in_2"),
                    ("off_session", "true"),
                ],
                Ok((
                    "POST",
                    "/v1/invoices/in_2/pay",
                    vec![("off_session", "true")],
                )),
            ),
            (
                vec![("action", " mark_uncollectible "), ("invoice", "")],
                Ok(("POST", "/v1/invoices/in_subject/mark_uncollectible", vec![])),
            ),
            (
                vec![("action", "void_invoice")],
                Ok(("POST", "/v1/invoices/in_subject/void", vec![])),
            ),
            (
                vec![
                    ("action", "cancel_subscription"),
                    ("subscription", "sub_1"),
                    ("prorate", "false"),
                ],
                Ok((
                    "DELETE",
                    "/v1/subscriptions/sub_1",
                    vec![("prorate", "false")],
                )),
            ),
            (
                vec![("action", "pause_subscription"), ("subscription", "sub_1")],
                Ok((
                    "POST",
                    "/v1/subscriptions/sub_1",
                    vec![("pause_collection[behavior]", "void")],
                )),
            ),
            (
                vec![("action", "resume_subscription"), ("subscription", "sub_1")],
                Ok((
                    "POST",
                    "/v1/subscriptions/sub_1",
                    vec![("pause_collection", "")],
                )),
            ),
            (
                vec![],
                Err("has no 'action' field (one of retry_payment, mark_uncollectible"),
            ),
            (
                vec![("action", "refund")],
                Err("unknown action 'refund' (one of retry_payment"),
            ),
            (
                vec![("action", "cancel_subscription")],
                Err("field 'subscription' is missing or empty"),
            ),
            (
                vec![("action", "void_invoice"), ("invoice", "in_1/x")],
                Err("field 'invoice': invalid Stripe id 'in_1/x'"),
            ),
            (
                vec![("action", "retry_payment"), ("off_session", "yes")],
                Err("field 'off_session': expected 'true' or 'false', got 'yes'"),
            ),
            (
                vec![
                    ("action", "pause_subscription"),
                    ("subscription", "sub_1"),
                    ("behavior", "stop"),
                ],
                Err("field 'behavior': unknown 'stop'"),
            ),
        ];
        for (fields, want) in table {
            let got = plan(&request(&fields));
            match (got, want) {
                (Ok(call), Ok((method, path, params))) => {
                    let method_name = match call.method {
                        Method::Post => "POST",
                        Method::Delete => "DELETE",
                    };
                    let got_params: Vec<(&str, &str)> = call
                        .params
                        .iter()
                        .map(|(k, v)| (k.as_str(), v.as_str()))
                        .collect();
                    assert_eq!(
                        (method_name, call.path.as_str(), got_params),
                        (method, path, params),
                        "{fields:?}"
                    );
                }
                (Err(err), Err(want)) => assert!(err.contains(want), "{fields:?}: {err}"),
                (got, want) => panic!("{fields:?}: got {got:?}, want {want:?}"),
            }
        }
        // The subject is used only where no invoice field is given.
        let err = plan(&DeliveryRequest {
            subject: "inv 1".into(),
            ..request(&[("action", "retry_payment")])
        })
        .expect_err("a subject that is no id");
        assert!(err.contains("the event's subject is used"), "{err}");
    }
}
