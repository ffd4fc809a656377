//! The daemon's HTTP listeners: the webhook endpoints (`webhooks:` in the
//! configuration) and the metrics endpoint (`metrics:`). Without either
//! setting nothing listens on HTTP.
//!
//! - [`webhooks`]: Twilio's STOP replies and status callbacks, one-click
//!   unsubscribe links; every other path goes to [`sources`].
//! - [`sources`]: billing sources' webhooks (`POST <path>` of each source)
//!   and Stripe customer-portal links.
//! - [`metrics`]: `GET /metrics` for Prometheus.
//!
//! The endpoints act through [`crate::state::Shared`]; nothing below this
//! layer serves a request.

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio::sync::watch;

pub mod metrics;
pub mod sources;
pub mod webhooks;

/// Serves `app` on `listener` until `stop` turns true (then lets requests in
/// progress finish); shared by the webhook and metrics listeners.
pub(crate) fn serve_until_stopped(
    listener: tokio::net::TcpListener,
    app: Router,
    mut stop: watch::Receiver<bool>,
    what: &'static str,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let stopped = async move {
            let _ = stop.wait_for(|stopping| *stopping).await;
        };
        if let Err(error) = axum::serve(listener, app)
            .with_graceful_shutdown(stopped)
            .await
        {
            tracing::error!(%error, "{what} stopped");
        }
    })
}

/// A small HTML page for a person who followed a link; `title` and `body`
/// are the caller's own text, never a value from outside.
pub(crate) fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title}</title></head>\
         <body style=\"font-family: system-ui, sans-serif; max-width: 32rem; margin: 4rem auto; padding: 0 1rem\">\
         <h1>{title}</h1>{body}</body></html>"
    );
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        html,
    )
        .into_response()
}
