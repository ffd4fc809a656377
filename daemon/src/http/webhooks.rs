//! The daemon's inbound HTTP endpoints (`webhooks:` in the configuration):
//! what providers and customers tell us back.
//!
//! - `POST /twilio/{channel}/inbound`: Twilio's incoming-message webhook.
//!   STOP (and Twilio's other opt-out keywords) opts the sender's customers
//!   out of SMS; START opts them back in. Set it as the number's "A message
//!   comes in" webhook.
//! - `POST /twilio/{channel}/status`: Twilio's status callbacks (set on every
//!   message automatically): `delivered`, `undelivered` with its error code…,
//!   shown with the delivery in `dunningctl cases show`.
//! - `GET|POST /unsubscribe?customer=…&channel=…&sig=…`: the signed link
//!   templates get as `unsubscribe_url` and email carries in
//!   `List-Unsubscribe`. POST (RFC 8058 one-click, or the button of the page
//!   GET shows) opts the customer out; GET alone changes nothing, since link
//!   scanners follow links.
//!
//! Twilio's requests are checked against `X-Twilio-Signature`, computed over
//! `public_url` plus the request's path, so `public_url` must be the address
//! Twilio is given. Anything unsigned or wrongly signed is refused with 403
//! and changes nothing.
//!
//! An opt-out covers every channel of the same plugin: a customer who texted
//! STOP gets no SMS from a second Twilio channel either (not even as a
//! fallback), and one who unsubscribed gets no email from the backup
//! provider.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha1::Sha1;
use tokio::sync::watch;

use super::{page, serve_until_stopped};
use crate::config::WebhooksConfig;
use crate::links::Links;
use crate::state::Shared;
use crate::store::ProviderReport;

/// The opt-out source of a STOP reply.
pub const SMS_STOP: &str = "sms-stop";
/// The opt-out source of an unsubscribe link.
pub const UNSUBSCRIBE_LINK: &str = "unsubscribe-link";

/// What Twilio's `X-Twilio-Signature` must be for a request: base64 of
/// HMAC-SHA1 keyed with the auth token over the full URL followed by every
/// POST parameter sorted by name, name then value.
fn twilio_signature_valid(
    auth_token: &str,
    url: &str,
    params: &[(String, String)],
    given: &str,
) -> bool {
    let Ok(given) = base64::engine::general_purpose::STANDARD.decode(given.trim()) else {
        return false;
    };
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort();
    let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(auth_token.as_bytes())
        .expect("HMAC takes keys of any length");
    mac.update(url.as_bytes());
    for (name, value) in sorted {
        mac.update(name.as_bytes());
        mac.update(value.as_bytes());
    }
    mac.verify_slice(&given).is_ok()
}

/// What an incoming SMS asks for, by Twilio's default keywords (the whole
/// message, any case, surrounding spaces and punctuation ignored).
#[derive(Debug, PartialEq, Eq)]
enum Keyword {
    OptOut,
    OptIn,
}

fn keyword(body: &str) -> Option<Keyword> {
    let word = body
        .trim()
        .trim_matches(|c: char| c.is_ascii_punctuation())
        .to_ascii_uppercase();
    match word.as_str() {
        "STOP" | "STOPALL" | "STOP ALL" | "UNSUBSCRIBE" | "CANCEL" | "END" | "QUIT" | "OPTOUT"
        | "REVOKE" => Some(Keyword::OptOut),
        "START" | "YES" | "UNSTOP" => Some(Keyword::OptIn),
        _ => None,
    }
}

/// How far along a Twilio message is; reports never move back.
fn twilio_rank(status: &str) -> i64 {
    match status {
        "accepted" | "scheduled" | "queued" => 1,
        "sending" => 2,
        "sent" => 3,
        "delivered" | "undelivered" | "failed" | "canceled" => 4,
        "read" => 5,
        _ => 0,
    }
}

struct Hooks {
    shared: Arc<Shared>,
    config: WebhooksConfig,
    links: Links,
}

/// Binds the endpoints; serving stops when `stop` turns true.
pub async fn listen(
    shared: Arc<Shared>,
    config: WebhooksConfig,
    stop: watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<()>, String> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| format!("webhooks.listen: cannot listen on {}: {e}", config.listen))?;
    let hooks = Arc::new(Hooks {
        links: Links::new(&config),
        shared,
        config,
    });
    let sources = super::sources::router(hooks.shared.clone());
    let app = Router::new()
        .route("/twilio/{channel}/inbound", post(twilio_inbound))
        .route("/twilio/{channel}/status", post(twilio_status))
        .route("/unsubscribe", get(unsubscribe_page).post(unsubscribe))
        .with_state(hooks)
        // Every other path may be a billing source's (see `sources`).
        .fallback_service(sources);
    Ok(serve_until_stopped(
        listener,
        app,
        stop,
        "webhook endpoints",
    ))
}

fn plain(status: StatusCode, text: impl Into<String>) -> Response {
    (status, text.into()).into_response()
}

impl Hooks {
    /// `channel` and every other configured channel of its plugin (what an
    /// inbound opt-out covers); `None` if `channel` is not configured.
    fn kin(&self, channel: &str) -> Option<Vec<String>> {
        let channels = self.shared.config().channels;
        let plugin = &channels.get(channel)?.plugin;
        Some(
            channels
                .iter()
                .filter(|(_, spec)| &spec.plugin == plugin)
                .map(|(name, _)| name.clone())
                .collect(),
        )
    }

    /// Checks a Twilio request and returns its parameters, or the answer
    /// that refuses it.
    fn twilio_request(
        &self,
        channel: &str,
        uri: &Uri,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<Vec<(String, String)>, (StatusCode, String)> {
        let config = self.shared.config();
        let Some(spec) = config
            .channels
            .get(channel)
            .filter(|spec| spec.plugin == "twilio")
        else {
            return Err((
                StatusCode::NOT_FOUND,
                format!("no twilio channel '{channel}'"),
            ));
        };
        let Some(auth_token) = spec.settings.get("auth_token").and_then(|v| v.as_str()) else {
            tracing::error!(
                channel,
                "cannot check Twilio's signature: the channel has no auth_token (give it under secrets)"
            );
            return Err((StatusCode::FORBIDDEN, "signature cannot be checked".into()));
        };
        let params: Vec<(String, String)> = url::form_urlencoded::parse(body)
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        let url = format!(
            "{}{}",
            self.config.public_url,
            uri.path_and_query().map_or("", |p| p.as_str())
        );
        let given = headers
            .get("x-twilio-signature")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !twilio_signature_valid(auth_token, &url, &params, given) {
            tracing::warn!(
                channel,
                %url,
                "refused a Twilio webhook: X-Twilio-Signature missing or wrong (is webhooks.public_url the URL Twilio calls?)"
            );
            return Err((StatusCode::FORBIDDEN, "invalid X-Twilio-Signature".into()));
        }
        Ok(params)
    }
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .filter(|v| !v.is_empty())
}

fn internal(error: impl std::fmt::Display) -> Response {
    tracing::error!(%error, "webhook not recorded");
    plain(
        StatusCode::SERVICE_UNAVAILABLE,
        "cannot record this now; try again",
    )
}

async fn twilio_inbound(
    State(hooks): State<Arc<Hooks>>,
    Path(channel): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let params = match hooks.twilio_request(&channel, &uri, &headers, &body) {
        Ok(params) => params,
        Err(refused) => return refused.into_response(),
    };
    let (Some(from), Some(text)) = (param(&params, "From"), param(&params, "Body")) else {
        return plain(StatusCode::BAD_REQUEST, "From and Body are required");
    };
    let Some(keyword) = keyword(text) else {
        tracing::info!(
            channel,
            "incoming SMS is no opt-out or opt-in keyword; ignored"
        );
        return twiml();
    };
    let engine = &hooks.shared.engine;
    let customers = match engine.store().customers_by_phone(from).await {
        Ok(customers) => customers,
        Err(error) => return internal(error),
    };
    if customers.is_empty() {
        tracing::warn!(
            channel,
            ?keyword,
            "incoming SMS from a number no case knows; nothing to change"
        );
    }
    let reason = format!("replied '{}' to {}", text.trim(), channel);
    let kin = hooks.kin(&channel).unwrap_or_default();
    for customer in &customers {
        for kin in &kin {
            let done = match keyword {
                Keyword::OptOut => engine
                    .opt_out(customer, kin, SMS_STOP, &reason)
                    .await
                    .map(|_| ()),
                Keyword::OptIn => engine
                    .opt_in(customer, kin, Some(SMS_STOP))
                    .await
                    .map(|_| ()),
            };
            if let Err(error) = done {
                return internal(error);
            }
        }
    }
    twiml()
}

/// An empty TwiML answer: Twilio sends its own STOP/START confirmations.
fn twiml() -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/xml")],
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response></Response>",
    )
        .into_response()
}

async fn twilio_status(
    State(hooks): State<Arc<Hooks>>,
    Path(channel): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let params = match hooks.twilio_request(&channel, &uri, &headers, &body) {
        Ok(params) => params,
        Err(refused) => return refused.into_response(),
    };
    let (Some(sid), Some(status)) = (
        param(&params, "MessageSid"),
        param(&params, "MessageStatus").or(param(&params, "SmsStatus")),
    ) else {
        return plain(
            StatusCode::BAD_REQUEST,
            "MessageSid and MessageStatus are required",
        );
    };
    let report = ProviderReport {
        channel,
        receipt: sid.to_string(),
        status: status.to_string(),
        error_code: param(&params, "ErrorCode").map(String::from),
        rank: twilio_rank(status),
        at: hooks.shared.engine.clock().now(),
    };
    match hooks.shared.engine.store().record_report(&report).await {
        Ok(()) => {
            tracing::debug!(channel = %report.channel, receipt = %report.receipt, status, "provider report");
            StatusCode::NO_CONTENT.into_response()
        }
        Err(error) => internal(error),
    }
}

#[derive(Debug, Deserialize)]
struct UnsubscribeQuery {
    customer: String,
    channel: String,
    sig: String,
}

fn invalid_link() -> Response {
    page(
        StatusCode::FORBIDDEN,
        "This link is not valid",
        "<p>It may have been copied incompletely. Use the link from the message as it is.</p>",
    )
}

type LinkQuery = Result<Query<UnsubscribeQuery>, axum::extract::rejection::QueryRejection>;

impl Hooks {
    /// A validly signed link for a configured channel: its query and the
    /// channels it opts out of.
    fn checked_link(&self, query: LinkQuery) -> Option<(UnsubscribeQuery, Vec<String>)> {
        let Query(q) = query.ok()?;
        if !self.links.verify(&q.customer, &q.channel, &q.sig) {
            return None;
        }
        let kin = self.kin(&q.channel)?;
        Some((q, kin))
    }
}

/// Following the link only asks; the button posts back to the same URL.
async fn unsubscribe_page(State(hooks): State<Arc<Hooks>>, query: LinkQuery) -> Response {
    if hooks.checked_link(query).is_none() {
        return invalid_link();
    }
    page(
        StatusCode::OK,
        "Unsubscribe",
        "<p>Stop receiving these messages about your account?</p>\
         <form method=\"post\"><input type=\"hidden\" name=\"List-Unsubscribe\" value=\"One-Click\">\
         <button type=\"submit\">Unsubscribe</button></form>",
    )
}

/// RFC 8058 one-click unsubscribe (and the page's button).
async fn unsubscribe(State(hooks): State<Arc<Hooks>>, query: LinkQuery) -> Response {
    let Some((q, kin)) = hooks.checked_link(query) else {
        return invalid_link();
    };
    for kin in &kin {
        if let Err(error) = hooks
            .shared
            .engine
            .opt_out(
                &q.customer,
                kin,
                UNSUBSCRIBE_LINK,
                &format!("unsubscribed by the link of {}", q.channel),
            )
            .await
        {
            tracing::error!(%error, "unsubscribe not recorded");
            return page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Please try again",
                "<p>We could not record this just now. Please try again in a minute.</p>",
            );
        }
    }
    page(
        StatusCode::OK,
        "You are unsubscribed",
        "<p>You will not receive these messages any more.</p>",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Twilio's own documented example.
    #[test]
    fn twilio_signatures_match_twilios_example() {
        let params: Vec<(String, String)> = [
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+14158675310"),
            ("Digits", "1234"),
            ("From", "+14158675310"),
            ("To", "+18005551212"),
        ]
        .iter()
        .rev()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let url = "https://mycompany.com/myapp.php?foo=1&bar=2";
        assert!(twilio_signature_valid(
            "12345",
            url,
            &params,
            "GvWf1cFY/Q7PnoempGyD5oXAezc="
        ));
        for (token, url, signature) in [
            ("12346", url, "GvWf1cFY/Q7PnoempGyD5oXAezc="),
            (
                "12345",
                "http://mycompany.com/myapp.php?foo=1&bar=2",
                "GvWf1cFY/Q7PnoempGyD5oXAezc=",
            ),
            ("12345", url, "GvWf1cFY/Q7PnoempGyD5oXAezd="),
            ("12345", url, ""),
            ("12345", url, "not base64!"),
        ] {
            assert!(
                !twilio_signature_valid(token, url, &params, signature),
                "{token} {url} {signature}"
            );
        }
    }

    #[test]
    fn keywords_are_twilios_defaults() {
        for text in [
            "STOP",
            "stop",
            " Stop. ",
            "unsubscribe",
            "STOPALL",
            "quit",
            "End",
        ] {
            assert_eq!(keyword(text), Some(Keyword::OptOut), "{text}");
        }
        for text in ["START", "yes", "Unstop!"] {
            assert_eq!(keyword(text), Some(Keyword::OptIn), "{text}");
        }
        for text in ["please stop", "stopp", "", "HELP", "I paid"] {
            assert_eq!(keyword(text), None, "{text}");
        }
    }

    #[test]
    fn reports_rank_final_states_last() {
        assert!(twilio_rank("queued") < twilio_rank("sent"));
        assert!(twilio_rank("sent") < twilio_rank("delivered"));
        assert_eq!(twilio_rank("delivered"), twilio_rank("undelivered"));
        assert_eq!(twilio_rank("something new"), 0);
    }
}
