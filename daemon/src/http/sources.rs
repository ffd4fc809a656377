//! The HTTP side of billing sources: `POST <path>` of each configured
//! source, served on the `webhooks:` listener; what each source has heard
//! is counted in [`crate::sources::activity`].
//!
//! Sources are looked up in the configuration in force for every request,
//! so a source added, changed or removed by a reload is served (or not)
//! from the next request on, without a restart.
//!
//! Answers, and why:
//! - 200 with the event's id: committed (or a duplicate of one committed).
//! - 200 `ignored: …`: not an event any workflow can use; a retry would be
//!   ignored again, so the provider must not retry.
//! - 400/401: the signature is missing, malformed, wrong or too old.
//!   Nothing is read beyond the signature.
//! - 422: a mapped event that fails the checks every event passes (a field
//!   too long, no customer id); the reason is in the answer and the log.
//! - 503: the provider's API or the database cannot be reached; nothing was
//!   stored and the provider's retry will be accepted.
//!
//! `GET <path>/portal?…` of a Stripe source with an `api_key` is the signed
//! customer-portal link events carry as `data.portal_url` (signed by
//! [`crate::links`], the session made by [`crate::sources::portal`]).

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde_json::{Value, json};

use super::page;
use crate::config::WebhooksConfig;
use crate::links::Links;
use crate::metrics::EventResult;
use crate::sources::activity::Outcome;
use crate::sources::enrich::{self, EnrichError};
use crate::sources::{MAX_BODY, Provider, Refusal, SourceConfig, portal, shown};
use crate::state::Shared;

struct Endpoint {
    shared: Arc<Shared>,
    client: reqwest::Client,
}

/// The sources' endpoint, to serve as the webhook listener's fallback:
/// every path that is not one of its fixed routes is looked up among the
/// sources.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .fallback(handle)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(Arc::new(Endpoint {
            shared,
            client: enrich::client(),
        }))
}

fn plain(status: StatusCode, text: impl Into<String>) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        text.into(),
    )
        .into_response()
}

async fn handle(
    State(endpoint): State<Arc<Endpoint>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let config = endpoint.shared.config();
    let Some(source) = config.sources.iter().find(|s| s.path == uri.path()) else {
        if let Some(source) = uri
            .path()
            .strip_suffix("/portal")
            .and_then(|path| config.sources.iter().find(|s| s.path == path))
            .filter(|s| s.provider == Provider::Stripe && s.api_key.is_some())
            && method == Method::GET
            && let Some(webhooks) = &config.webhooks
        {
            return endpoint
                .portal(source, &Links::new(webhooks), uri.query().unwrap_or(""))
                .await;
        }
        return plain(StatusCode::NOT_FOUND, "not found");
    };
    if method != Method::POST {
        return (
            StatusCode::METHOD_NOT_ALLOWED,
            [(header::ALLOW, "POST")],
            "a source takes POST",
        )
            .into_response();
    }
    let (outcome, what, response) = endpoint
        .receive(source, config.webhooks.as_ref(), &headers, &body)
        .await;
    endpoint
        .shared
        .sources
        .record(&source.name, outcome, what, Utc::now());
    endpoint
        .shared
        .metrics()
        .source_event(&source.name, outcome);
    response
}

impl Endpoint {
    /// `GET <path>/portal?customer=…&expires=…&sig=…`: a session of the
    /// provider's customer portal, made now, for a signed link.
    async fn portal(&self, source: &SourceConfig, links: &Links, query: &str) -> Response {
        let Some(customer) = links.verify_portal(source, query, Utc::now()) else {
            tracing::warn!(source = %source.name, "refused a portal link: altered or expired");
            return page(
                StatusCode::FORBIDDEN,
                "This link is not valid any more",
                "<p>It may have expired or been copied incompletely. Use the link in our latest message, or sign in to your account.</p>",
            );
        };
        match portal::session(&self.client, source, &customer).await {
            Ok(url) => match header::HeaderValue::from_str(&url) {
                Ok(location) => (
                    StatusCode::SEE_OTHER,
                    [
                        (header::LOCATION, location),
                        (
                            header::CACHE_CONTROL,
                            header::HeaderValue::from_static("no-store"),
                        ),
                    ],
                )
                    .into_response(),
                Err(_) => page(
                    StatusCode::BAD_GATEWAY,
                    "Please try again",
                    "<p>We could not open your billing page just now.</p>",
                ),
            },
            Err(error) => {
                tracing::error!(source = %source.name, %error, "cannot open a customer-portal session");
                page(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Please try again",
                    "<p>We could not open your billing page just now. Please try again in a minute.</p>",
                )
            }
        }
    }

    async fn receive(
        &self,
        source: &SourceConfig,
        webhooks: Option<&WebhooksConfig>,
        headers: &HeaderMap,
        body: &[u8],
    ) -> (Outcome, String, Response) {
        let name = &source.name;
        if let Err(refusal) = source.provider.verify(source, headers, body, Utc::now()) {
            tracing::warn!(source = %name, provider = %source.provider, %refusal, "refused a webhook: its signature does not hold; nothing changed");
            let status = match refusal {
                Refusal::Missing(_) | Refusal::Malformed { .. } => StatusCode::BAD_REQUEST,
                Refusal::Mismatch(_) | Refusal::TooOld { .. } => StatusCode::UNAUTHORIZED,
            };
            let what = format!("signature refused: {refusal}");
            return (Outcome::Refused, what.clone(), plain(status, what));
        }
        let payload: Value = match serde_json::from_slice(body) {
            Ok(payload) => payload,
            Err(error) => {
                let what = format!("body is not JSON: {error}");
                tracing::warn!(source = %name, %what, "refused a signed webhook");
                return (
                    Outcome::Refused,
                    what.clone(),
                    plain(StatusCode::BAD_REQUEST, what),
                );
            }
        };
        let mut draft = match source.provider.map(headers, &payload) {
            Ok(draft) => draft,
            Err(ignored) => {
                tracing::info!(source = %name, provider_type = %ignored.provider_type, reason = %ignored.reason, "webhook ignored");
                let what = format!("ignored {ignored}");
                return (Outcome::Ignored, what.clone(), plain(StatusCode::OK, what));
            }
        };
        // From the payload, unchecked until `to_event`: shown escaped.
        let what = format!("{} {}", shown(&draft.provider_type), shown(&draft.id));
        if let Err(error) = enrich::enrich(&self.client, source, &mut draft).await {
            let refused_key = matches!(error, EnrichError::Refused { .. });
            tracing::error!(source = %name, event = %what, %error, refused_key, "cannot complete a webhook from the provider's API; answered 503 so the provider retries");
            return (
                Outcome::Unavailable,
                format!("{what}: {error}"),
                plain(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "cannot complete this event now; try again",
                ),
            );
        }
        // Stripe: a portal link that makes its session when followed.
        if source.provider == Provider::Stripe
            && source.api_key.is_some()
            && let (Some(customer), Some(webhooks)) = (&draft.customer_id, webhooks)
        {
            draft.portal_url = Some(Links::new(webhooks).portal_url(source, customer, Utc::now()));
        }
        let event = match draft.to_event(source.provider, name, source.subject) {
            Ok(event) => event,
            Err(error) => {
                let problem = error.problem.to_string();
                tracing::warn!(source = %name, event = %what, %problem, "refused a webhook: the event it maps to does not pass the event checks");
                return (
                    Outcome::Refused,
                    format!("{what}: {problem}"),
                    plain(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        format!("refused: {problem}"),
                    ),
                );
            }
        };
        self.commit(name, event, what).await
    }

    /// Ingests the checked event; the answer says what became of it.
    async fn commit(
        &self,
        source: &str,
        event: crate::model::Event,
        what: String,
    ) -> (Outcome, String, Response) {
        let event_type = event.event_type.clone();
        let workflows = self.shared.workflows();
        let metrics = self.shared.metrics();
        let outcome = match self.shared.engine.ingest(vec![event]).await {
            Ok(mut outcomes) if outcomes.len() == 1 => outcomes.remove(0),
            result => {
                let error = match result {
                    Err(error) => error.to_string(),
                    Ok(outcomes) => format!("{} outcomes for one event", outcomes.len()),
                };
                tracing::error!(source, event = %what, %error, "cannot store a webhook's event now; answered 503 so the provider retries");
                metrics.event(&workflows, &event_type, EventResult::Refused);
                return (
                    Outcome::Unavailable,
                    format!("{what}: not stored: {error}"),
                    plain(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "cannot record this event now; try again",
                    ),
                );
            }
        };
        let (result, counted) = if outcome.duplicate {
            (EventResult::Duplicate, Outcome::Duplicate)
        } else {
            (EventResult::Accepted, Outcome::Accepted)
        };
        metrics.event(&workflows, &event_type, result);
        tracing::info!(source, event = %outcome.event_id, r#type = %event_type, duplicate = outcome.duplicate, cases_started = outcome.cases_started.len(), cases_recovered = outcome.cases_recovered.len(), "webhook recorded");
        let answer = json!({
            "event": outcome.event_id,
            "type": event_type,
            "duplicate": outcome.duplicate,
            "cases_started": outcome.cases_started,
            "cases_recovered": outcome.cases_recovered,
            "notes": outcome.notes,
        });
        (
            counted,
            what,
            (StatusCode::OK, axum::Json(answer)).into_response(),
        )
    }
}
