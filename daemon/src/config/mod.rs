//! The daemon's own configuration file (`dunningd.yaml`).
//!
//! Every field has a default, so an empty file is a working configuration.
//! Relative paths are resolved against the folder of the configuration file,
//! so a config can be moved together with its workflows. Secrets are never
//! written inline: a channel's `secrets:` names a file, an environment
//! variable or a systemd credential, and the value is merged into the
//! channel's settings when the configuration is loaded.
//!
//! No error or `Debug` output of this module shows a secret: URLs are
//! printed with their credentials redacted ([`crate::redact`]), a secret
//! written inline where only its source belongs is refused without quoting
//! it, and secret values are never part of a message.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;

use crate::duration;
use crate::redact;
use crate::workflow::{FileLimits, SendWindow};
use crate::yaml::strip_location;
use raw::RawConfig;
use sections::{
    admin_config, channel_spec, clock_kind, database_url, file_limits, metrics_config, normalize,
    scheduler_config, sources_config, webhooks_config,
};

/// Where the default paths point when the daemon runs under systemd.
pub const DEFAULT_SOCKET: &str = "/run/dunningd/admin.sock";
pub const DEFAULT_CONFIG: &str = "/etc/dunningd/dunningd.yaml";

/// The largest message of the admin API, both ways: the server's and
/// `dunningctl`'s decoding and encoding limits are set from it.
pub const ADMIN_MESSAGE_LIMIT: usize = 64 * 1024 * 1024;
/// The largest `limits.workflow_file_size` ([`FileLimits::MAX`]).
pub const MAX_WORKFLOW_FILE_SIZE: u64 = FileLimits::MAX.max_bytes;
// A workflow file at the limit, with the steps and description its answer
// repeats, must fit in one admin message.
const _: () = assert!(MAX_WORKFLOW_FILE_SIZE <= (ADMIN_MESSAGE_LIMIT / 4) as u64);

/// What the file leaves out. Named, so that code needing the same value
/// (the scheduler's retry policy for a channel it does not know, tests)
/// says which default it means instead of repeating a number.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/dunningd";
pub const DEFAULT_WORKFLOWS_DIR: &str = "workflows";
pub const DEFAULT_PLUGIN_DIR: &str = "/usr/lib/dunningd/plugins";
/// `scheduler.lease`.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(120);
/// `scheduler.batch_size`.
pub const DEFAULT_BATCH_SIZE: u32 = 512;
/// `scheduler.max_claims`.
pub const DEFAULT_MAX_CLAIMS: u32 = 10;
/// `scheduler.shutdown_grace`.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(20);
/// A channel's `timeout`.
pub const DEFAULT_CHANNEL_TIMEOUT: Duration = Duration::from_secs(30);
/// A channel's `concurrency`.
pub const DEFAULT_CONCURRENCY: usize = 8;
/// A channel's `max_attempts`.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;
/// A channel's `retry_backoff`.
pub const DEFAULT_RETRY_BACKOFF: Duration = Duration::from_secs(60);
/// The shortest `webhooks.secret`: unsubscribe links are signed with it.
const MIN_WEBHOOKS_SECRET: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    Syntax {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// Which clock the engine reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClockKind {
    /// Wall-clock time: production.
    System,
    /// Time moves only when told to (`AdvanceClock`): tests and demos that
    /// run days of schedule in moments. Without `clock_start` it starts at
    /// the wall-clock time of the daemon's start (a reload that reads the
    /// same file is the same clock).
    Manual { start: Option<DateTime<Utc>> },
}

/// A database URL whose `Debug` and `Display` hide its credentials (the
/// password, and a `password=` parameter): `postgres://u:***@db/x`.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact::urls(&self.0))
    }
}

/// The connection parameters sqlx understands in a PostgreSQL URL. sqlx
/// logs any other parameter with its value (a mistyped `sslpassword` would
/// print the password), so others are refused, naming only the key.
const POSTGRES_PARAMETERS: &[&str] = &[
    "sslmode",
    "ssl-mode",
    "sslrootcert",
    "ssl-root-cert",
    "ssl-ca",
    "sslcert",
    "ssl-cert",
    "sslkey",
    "ssl-key",
    "statement-cache-capacity",
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "password",
    "application_name",
    "options",
];

/// The first query parameter of a PostgreSQL URL that sqlx does not know.
/// A URL that does not parse is left to the connection, whose error says why.
fn unknown_postgres_parameter(url: &str) -> Option<String> {
    let parsed = url::Url::parse(url).ok()?;
    parsed
        .query_pairs()
        .map(|(key, _)| key.into_owned())
        .find(|key| {
            let known = POSTGRES_PARAMETERS.contains(&key.as_str())
                || (key.starts_with("options[") && key.ends_with(']'));
            !known
        })
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DatabaseUrl({self})")
    }
}

/// A channel: a named, configured instance of a plugin.
#[derive(Clone)]
pub struct ChannelSpec {
    pub plugin: String,
    /// `settings` with the resolved secrets merged in. Never logged.
    pub settings: Value,
    /// The settings that came from `secrets:`: their values are hidden in
    /// whatever the plugin says (with those of secret-looking names, see
    /// [`redact::Redactor::for_settings`]).
    pub secret_keys: Vec<String>,
    /// Longest a single plugin call may take before its outcome is `unknown`.
    pub timeout: Duration,
    /// Most calls in flight at once on this channel.
    pub concurrency: usize,
    /// Attempts (retryable failures) before the delivery is `failed`.
    pub max_attempts: u32,
    /// First retry delay; doubles with each attempt, with jitter.
    pub retry_backoff: Duration,
    /// Quiet hours for every delivery on this channel (e.g. SMS only in the
    /// daytime), on top of any window of the workflow or step.
    pub send_window: Option<SendWindow>,
    /// At most so many deliveries per customer on this channel per period,
    /// across all workflows; more wait (critical steps excepted).
    pub frequency_cap: Option<crate::store::FrequencyCap>,
}

impl fmt::Debug for ChannelSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Settings carry secrets: show only their keys.
        let keys: Vec<&str> = match &self.settings {
            Value::Object(map) => map.keys().map(String::as_str).collect(),
            _ => Vec::new(),
        };
        f.debug_struct("ChannelSpec")
            .field("plugin", &self.plugin)
            .field("settings", &keys)
            .field("secret_keys", &self.secret_keys)
            .field("timeout", &self.timeout)
            .field("concurrency", &self.concurrency)
            .field("max_attempts", &self.max_attempts)
            .field("send_window", &self.send_window.as_ref().map(|w| &w.cron))
            .field("frequency_cap", &self.frequency_cap)
            .finish()
    }
}

/// Scheduler tuning. The defaults suit one daemon on one machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// How long a claim lasts (wall-clock) before another daemon, or this one
    /// after a restart, may take the delivery over.
    pub lease: Duration,
    /// Most deliveries claimed in one transaction.
    pub batch_size: u32,
    /// Claims of one delivery (crashes included) before it is parked as
    /// failed, so a plugin that kills the process cannot crash-loop it.
    pub max_claims: u32,
    /// How long SIGTERM waits for in-flight plugin calls.
    pub shutdown_grace: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    /// The Unix socket; access is its file permissions (owner and group).
    pub socket: PathBuf,
    /// An optional TCP listener, e.g. `127.0.0.1:7070`.
    pub tcp: Option<String>,
    /// The bearer token TCP clients must send; optional only with mutual TLS.
    pub token_file: Option<PathBuf>,
    /// TLS on the TCP listener.
    pub tls: Option<AdminTls>,
    /// Plain TCP on a non-loopback address is refused unless this is set:
    /// the token would cross the network readable by anyone on the path.
    pub allow_plaintext: bool,
}

/// The TCP listener's certificate, and the CA that signs client certificates
/// when clients must present one (mutual TLS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminTls {
    /// PEM certificate chain, the server's certificate first.
    pub cert_file: PathBuf,
    /// PEM private key of that certificate.
    pub key_file: PathBuf,
    /// PEM CA certificate(s); when set, a client without a certificate they
    /// signed is refused during the handshake.
    pub client_ca_file: Option<PathBuf>,
}

/// The daemon's inbound HTTP endpoints: providers' webhooks (Twilio's
/// incoming messages and status callbacks) and one-click unsubscribe links.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhooksConfig {
    /// Where the endpoints listen, e.g. `127.0.0.1:8788` behind a proxy.
    pub listen: std::net::SocketAddr,
    /// How providers and customers reach `listen`, without a trailing slash
    /// (e.g. `https://billing.example.com/dunningd`): the URL Twilio signs
    /// and the base of unsubscribe links.
    pub public_url: String,
    /// Signs unsubscribe links; the same on every daemon of one database.
    pub secret: Vec<u8>,
}

impl fmt::Debug for WebhooksConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhooksConfig")
            .field("listen", &self.listen)
            .field("public_url", &redact::urls(&self.public_url))
            .finish_non_exhaustive()
    }
}

/// The Prometheus endpoint (`GET /metrics`), on an address of its own:
/// metrics belong on an internal network, not behind the public proxy that
/// the webhooks sit behind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsConfig {
    /// Where `/metrics` listens, e.g. `127.0.0.1:9464`.
    pub listen: std::net::SocketAddr,
}

/// The resolved configuration the daemon runs with.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this came from, for reloads and error messages.
    pub path: Option<PathBuf>,
    pub workflows_dir: PathBuf,
    pub plugin_dir: PathBuf,
    pub state_dir: PathBuf,
    pub database: DatabaseUrl,
    pub admin: AdminConfig,
    pub clock: ClockKind,
    pub scheduler: SchedulerConfig,
    pub channels: BTreeMap<String, ChannelSpec>,
    pub webhooks: Option<WebhooksConfig>,
    /// `None`: no metrics endpoint (nothing listens).
    pub metrics: Option<MetricsConfig>,
    /// What a workflow file may cost to read and decode.
    pub limits: FileLimits,
    /// Billing sources, served on the `webhooks:` listener; reloadable.
    pub sources: Vec<crate::sources::SourceConfig>,
}

impl Config {
    /// Reads and resolves a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(path, &text)
    }

    /// Resolves `text` as if read from `path` (relative paths start there),
    /// with systemd credentials from `$CREDENTIALS_DIRECTORY`.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let credentials = std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from);
        Config::parse_with_credentials(path, text, credentials.as_deref())
    }

    /// [`Config::parse`] with the credentials folder given explicitly.
    pub fn parse_with_credentials(
        path: &Path,
        text: &str,
        credentials: Option<&Path>,
    ) -> Result<Config, ConfigError> {
        let raw: RawConfig = if text.trim().is_empty() {
            RawConfig::default()
        } else {
            serde_norway::from_str(text).map_err(|e| {
                let (line, column) = e
                    .location()
                    .map(|l| (l.line(), l.column()))
                    .unwrap_or((0, 0));
                ConfigError::Syntax {
                    path: path.to_path_buf(),
                    line,
                    column,
                    message: redact::urls(&strip_location(&e.to_string())).into_owned(),
                }
            })?
        };
        let base = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        let resolve = |p: PathBuf| normalize(&if p.is_absolute() { p } else { base.join(p) });

        let state_dir = resolve(raw.state_dir.unwrap_or_else(|| DEFAULT_STATE_DIR.into()));
        let database = database_url(raw.database, &state_dir, &resolve).map_err(invalid)?;
        let clock = clock_kind(raw.clock.as_deref(), raw.clock_start).map_err(invalid)?;
        let scheduler = scheduler_config(&raw.scheduler).map_err(invalid)?;
        let admin = admin_config(raw.admin, &resolve).map_err(invalid)?;
        let webhooks = match raw.webhooks {
            None => None,
            Some(w) => Some(webhooks_config(w, &resolve, credentials).map_err(invalid)?),
        };
        let metrics = match raw.metrics {
            None => None,
            Some(m) => Some(metrics_config(&m).map_err(invalid)?),
        };
        let limits = file_limits(&raw.limits).map_err(invalid)?;
        let mut channels = BTreeMap::new();
        for (name, ch) in raw.channels {
            let spec = channel_spec(
                &name,
                ch,
                webhooks.as_ref(),
                &scheduler,
                &resolve,
                credentials,
            )
            .map_err(invalid)?;
            channels.insert(name, spec);
        }
        let sources = sources_config(raw.sources, webhooks.is_some(), &resolve, credentials)
            .map_err(invalid)?;

        Ok(Config {
            path: Some(path.to_path_buf()),
            workflows_dir: resolve(
                raw.workflows_dir
                    .unwrap_or_else(|| DEFAULT_WORKFLOWS_DIR.into()),
            ),
            plugin_dir: resolve(raw.plugin_dir.unwrap_or_else(|| DEFAULT_PLUGIN_DIR.into())),
            state_dir,
            database,
            admin,
            clock,
            scheduler,
            channels,
            webhooks,
            metrics,
            limits,
            sources,
        })
    }
}

mod raw;
mod secrets;
mod sections;

pub use secrets::SecretSource;

#[cfg(test)]
mod tests;
