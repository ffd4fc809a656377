//! The configuration file as written: what serde reads, unknown keys
//! refused. These types stop in this module; the sections turn them into
//! the resolved [`Config`](super::Config).

use std::collections::BTreeMap;
use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;

use super::SecretSource;
use crate::workflow::RawWindow;

/// The configuration as written in the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) workflows_dir: Option<PathBuf>,
    pub(super) plugin_dir: Option<PathBuf>,
    pub(super) state_dir: Option<PathBuf>,
    pub(super) database: Option<String>,
    #[serde(default)]
    pub(super) admin: RawAdmin,
    pub(super) clock: Option<String>,
    pub(super) clock_start: Option<DateTime<Utc>>,
    #[serde(default)]
    pub(super) scheduler: RawScheduler,
    #[serde(default)]
    pub(super) channels: BTreeMap<String, RawChannel>,
    pub(super) webhooks: Option<RawWebhooks>,
    pub(super) metrics: Option<RawMetrics>,
    #[serde(default)]
    pub(super) limits: RawLimits,
    #[serde(default)]
    pub(super) sources: BTreeMap<String, RawSource>,
}

/// A billing source as written (`sources:`); see [`crate::sources`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSource {
    pub(super) provider: String,
    pub(super) path: Option<String>,
    /// One secret source, or a list of them while a secret is rotated.
    pub(super) signing_secret: Option<serde_norway::Value>,
    pub(super) username: Option<String>,
    pub(super) api_key: Option<SecretSource>,
    pub(super) api_base: Option<String>,
    pub(super) subject: Option<String>,
    pub(super) tolerance: Option<String>,
    pub(super) api_timeout: Option<String>,
    pub(super) portal_return_url: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    /// `1MiB`, `512KiB`, `2000000` (bytes).
    pub(super) workflow_file_size: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMetrics {
    pub(super) listen: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWebhooks {
    pub(super) listen: String,
    pub(super) public_url: String,
    pub(super) secret: SecretSource,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    pub(super) socket: Option<PathBuf>,
    /// Also listen on TCP (e.g. `127.0.0.1:7070`); requires `token_file`
    /// unless `tls.client_ca_file` authenticates clients.
    pub(super) tcp: Option<String>,
    pub(super) token_file: Option<PathBuf>,
    pub(super) tls: Option<RawAdminTls>,
    /// Serve plain TCP on an address other than loopback.
    #[serde(default)]
    pub(super) allow_plaintext: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdminTls {
    pub(super) cert_file: PathBuf,
    pub(super) key_file: PathBuf,
    pub(super) client_ca_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawScheduler {
    pub(super) lease: Option<String>,
    pub(super) batch_size: Option<u32>,
    pub(super) max_claims: Option<u32>,
    pub(super) shutdown_grace: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawChannel {
    pub(super) plugin: String,
    #[serde(default)]
    pub(super) settings: serde_json::Map<String, Value>,
    #[serde(default)]
    pub(super) secrets: BTreeMap<String, SecretSource>,
    pub(super) timeout: Option<String>,
    pub(super) concurrency: Option<usize>,
    pub(super) max_attempts: Option<u32>,
    pub(super) retry_backoff: Option<String>,
    pub(super) send_window: Option<RawWindow>,
    pub(super) frequency_cap: Option<RawCap>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCap {
    pub(super) max: u32,
    pub(super) per: String,
}
