//! dunningd: a self-hosted dunning engine.
//!
//! # Layout
//!
//! - [`model`]: the engine's vocabulary (event, case, delivery, their states).
//! - [`config`]: the daemon configuration file, with secrets resolved.
//! - [`duration`]: `90s`, `15m`, `3d`, one parser for every file and the API.
//! - [`workflow`]: YAML workflows: parse, validate, render, watch the folder.
//! - [`engine`]: ingest events into cases, schedule and dispatch deliveries,
//!   the clock.
//! - [`store`]: durable state behind one interface (SQLite or PostgreSQL).
//! - [`stats`]: recovery reporting (rates, revenue, last-touch attribution).
//! - [`plugin_host`]: loads channel plugins and calls them safely.
//! - [`admin`]: the gRPC admin API, the only module that knows protobuf.
//! - [`state`]: what the admin API and the endpoints share; the reload path.
//! - [`daemon`]: wiring: start-up (a reload from nothing), shutdown.
//! - [`systemd`]: the notify protocol (readiness, reloads, watchdog, status).
//! - [`http`]: the HTTP listeners: webhooks (Twilio's STOP replies and
//!   status callbacks, one-click unsubscribe links, billing sources) and
//!   `/metrics`.
//! - [`sources`]: billing systems' webhooks (Stripe, Paddle, Chargebee,
//!   Recurly, Lago) verified, mapped to events and ingested.
//! - [`metrics`]: what the daemon counts, for Prometheus.
//! - [`redact`]: secrets in output: URL credentials and secret values hidden
//!   wherever text is printed or stored.
//! - [`links`]: signed links to the webhook listener (unsubscribe, portal).
//! - [`files`]: folders and files the daemon creates, private to its user.
//! - `yaml`: YAML error messages as printed for every file read.
//!
//! The binaries are `dunningd` (the daemon) and `dunningctl` (its client).
#![deny(unsafe_code)]

pub mod admin;
pub mod config;
pub mod daemon;
pub mod duration;
pub mod engine;
pub mod files;
pub mod http;
pub mod links;
pub mod metrics;
pub mod model;
#[allow(unsafe_code)]
pub mod plugin_host;
pub mod redact;
pub mod sources;
pub mod state;
pub mod stats;
pub mod store;
pub mod systemd;
pub mod text;
pub mod workflow;
mod yaml;

/// The generated protobuf and gRPC code. Only `admin` and `dunningctl` use it.
pub mod proto {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("dunningd.v1");

    /// For gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("dunningd_descriptor");
}

/// The version every binary and the API report.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
