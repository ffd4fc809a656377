//! `GET /metrics` (`metrics:` in the configuration): what [`Metrics`]
//! counts, in the OpenMetrics text format.
//!
//! [`Metrics`]: crate::metrics::Metrics

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::sync::watch;

use super::serve_until_stopped;
use crate::config::MetricsConfig;
use crate::metrics::CONTENT_TYPE;
use crate::state::Shared;

/// Binds `GET /metrics`; serving stops when `stop` turns true.
pub async fn listen(
    shared: Arc<Shared>,
    config: MetricsConfig,
    stop: watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<()>, String> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| format!("metrics.listen: cannot listen on {}: {e}", config.listen))?;
    tracing::info!(address = %config.listen, "serving metrics at /metrics");
    let app = Router::new()
        .route("/metrics", get(serve_metrics))
        .with_state(shared);
    Ok(serve_until_stopped(listener, app, stop, "metrics endpoint"))
}

async fn serve_metrics(State(shared): State<Arc<Shared>>) -> Response {
    let engine = &shared.engine;
    let text = shared
        .metrics()
        .scrape(engine.store().as_ref(), || engine.clock().now())
        .await;
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response()
}
