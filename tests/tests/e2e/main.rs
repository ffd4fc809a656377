//! The end-to-end suite, as one test binary: each module starts the real
//! `dunningd` (and `dunningctl`, the plugins, the peers on loopback) for one
//! area. One binary links once instead of once per file, which on a 2-core
//! machine is minutes of the suite; the binaries and plugins under test are
//! built once per run (`dunningd_e2e::plugin_dir`).
//!
//! Run one area with a filter: `cargo test -p dunningd-e2e sources::`.

mod admin_transport;
mod api;
mod crash;
mod ctl;
mod http_channels;
mod inapp;
mod limits;
mod metrics;
mod package;
mod plugin_abi;
mod plugin_output;
mod policy;
mod postgres;
mod recoveries;
mod reload;
mod report;
mod repository;
mod secrets;
mod signers;
mod smtp;
mod sources;
mod sources_providers;
mod spine;
mod stats;
mod stripe_plugin;
mod systemd;
mod webhooks;
