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
use crate::workflow::{FileLimits, RawWindow, SendWindow};
use crate::yaml::strip_location;

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

/// The configuration as written in the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    workflows_dir: Option<PathBuf>,
    plugin_dir: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    database: Option<String>,
    #[serde(default)]
    admin: RawAdmin,
    clock: Option<String>,
    clock_start: Option<DateTime<Utc>>,
    #[serde(default)]
    scheduler: RawScheduler,
    #[serde(default)]
    channels: BTreeMap<String, RawChannel>,
    webhooks: Option<RawWebhooks>,
    metrics: Option<RawMetrics>,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    sources: BTreeMap<String, RawSource>,
}

/// A billing source as written (`sources:`); see [`crate::sources`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    provider: String,
    path: Option<String>,
    /// One secret source, or a list of them while a secret is rotated.
    signing_secret: Option<serde_norway::Value>,
    username: Option<String>,
    api_key: Option<SecretSource>,
    api_base: Option<String>,
    subject: Option<String>,
    tolerance: Option<String>,
    api_timeout: Option<String>,
    portal_return_url: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    /// `1MiB`, `512KiB`, `2000000` (bytes).
    workflow_file_size: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebhooks {
    listen: String,
    public_url: String,
    secret: SecretSource,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    socket: Option<PathBuf>,
    /// Also listen on TCP (e.g. `127.0.0.1:7070`); requires `token_file`
    /// unless `tls.client_ca_file` authenticates clients.
    tcp: Option<String>,
    token_file: Option<PathBuf>,
    tls: Option<RawAdminTls>,
    /// Serve plain TCP on an address other than loopback.
    #[serde(default)]
    allow_plaintext: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdminTls {
    cert_file: PathBuf,
    key_file: PathBuf,
    client_ca_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScheduler {
    lease: Option<String>,
    batch_size: Option<u32>,
    max_claims: Option<u32>,
    shutdown_grace: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawChannel {
    plugin: String,
    #[serde(default)]
    settings: serde_json::Map<String, Value>,
    #[serde(default)]
    secrets: BTreeMap<String, SecretSource>,
    timeout: Option<String>,
    concurrency: Option<usize>,
    max_attempts: Option<u32>,
    retry_backoff: Option<String>,
    send_window: Option<RawWindow>,
    frequency_cap: Option<RawCap>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCap {
    max: u32,
    per: String,
}

/// Where one secret comes from: exactly one of `file`, `env`, `credential`.
#[derive(Debug, Clone, Default)]
pub struct SecretSource {
    /// A file whose content (trailing newline removed) is the secret.
    pub file: Option<PathBuf>,
    /// An environment variable.
    pub env: Option<String>,
    /// A systemd credential: `$CREDENTIALS_DIRECTORY/<name>` (`LoadCredential=`).
    pub credential: Option<String>,
}

/// The fields of a [`SecretSource`] as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretFields {
    file: Option<PathBuf>,
    env: Option<String>,
    credential: Option<String>,
}

/// What the file says where a source was expected: serde's own message
/// would quote the value, and a value there is a secret written inline.
const INLINE_SECRET: &str = "expected one of { file: PATH }, { env: NAME } or { credential: NAME } (a secret is never written inline)";

impl<'de> Deserialize<'de> for SecretSource {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Source;

        impl<'de> serde::de::Visitor<'de> for Source {
            type Value = SecretSource;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(INLINE_SECRET)
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<SecretSource, A::Error> {
                let fields =
                    SecretFields::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(SecretSource {
                    file: fields.file,
                    env: fields.env,
                    credential: fields.credential,
                })
            }

            // Anything else is refused without repeating it.
            fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<SecretSource, E> {
                Err(E::custom(INLINE_SECRET))
            }
            fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<SecretSource, E> {
                Err(E::custom(INLINE_SECRET))
            }
            fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<SecretSource, E> {
                Err(E::custom(INLINE_SECRET))
            }
            fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<SecretSource, E> {
                Err(E::custom(INLINE_SECRET))
            }
            fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<SecretSource, E> {
                Err(E::custom(INLINE_SECRET))
            }
            fn visit_bytes<E: serde::de::Error>(self, _: &[u8]) -> Result<SecretSource, E> {
                Err(E::custom(INLINE_SECRET))
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<SecretSource, E> {
                Err(E::custom(INLINE_SECRET))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                _: A,
            ) -> Result<SecretSource, A::Error> {
                Err(serde::de::Error::custom(INLINE_SECRET))
            }
        }

        deserializer.deserialize_any(Source)
    }
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

/// A duration field, `default` when the file leaves it out.
fn duration_field(field: &str, value: Option<&str>, default: Duration) -> Result<Duration, String> {
    match value {
        None => Ok(default),
        Some(text) => duration::parse(text).map_err(|e| format!("{field}: {e}")),
    }
}

/// `database:`: a SQLite file (relative to the configuration) or a
/// PostgreSQL URL; `dunningd.db` in the state folder when left out.
fn database_url(
    raw: Option<String>,
    state_dir: &Path,
    resolve: &dyn Fn(PathBuf) -> PathBuf,
) -> Result<DatabaseUrl, String> {
    Ok(match raw {
        Some(url) if url.starts_with("sqlite://") => {
            let file = PathBuf::from(&url["sqlite://".len()..]);
            DatabaseUrl(format!("sqlite://{}", resolve(file).display()))
        }
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            if let Some(key) = unknown_postgres_parameter(&url) {
                return Err(format!(
                    "database: unsupported parameter '{key}' (known: {})",
                    POSTGRES_PARAMETERS.join(", ")
                ));
            }
            DatabaseUrl(url)
        }
        Some(url) => {
            return Err(format!(
                "database: unsupported URL '{}' (expected sqlite://PATH or postgres://USER@HOST/DB)",
                DatabaseUrl(url)
            ));
        }
        None => DatabaseUrl(format!(
            "sqlite://{}",
            state_dir.join("dunningd.db").display()
        )),
    })
}

/// `clock:` and `clock_start:`.
fn clock_kind(raw: Option<&str>, start: Option<DateTime<Utc>>) -> Result<ClockKind, String> {
    match raw {
        None | Some("system") => {
            if start.is_some() {
                return Err("clock_start: only allowed with 'clock: manual'".into());
            }
            Ok(ClockKind::System)
        }
        Some("manual") => Ok(ClockKind::Manual { start }),
        Some(other) => Err(format!(
            "clock: unknown clock '{other}' (expected 'system' or 'manual')"
        )),
    }
}

/// `scheduler:`.
fn scheduler_config(raw: &RawScheduler) -> Result<SchedulerConfig, String> {
    Ok(SchedulerConfig {
        lease: duration_field("scheduler.lease", raw.lease.as_deref(), DEFAULT_LEASE)?,
        batch_size: raw.batch_size.unwrap_or(DEFAULT_BATCH_SIZE).max(1),
        max_claims: raw.max_claims.unwrap_or(DEFAULT_MAX_CLAIMS).max(1),
        shutdown_grace: duration_field(
            "scheduler.shutdown_grace",
            raw.shutdown_grace.as_deref(),
            DEFAULT_SHUTDOWN_GRACE,
        )?,
    })
}

/// `webhooks:`, its secret read.
fn webhooks_config(
    raw: RawWebhooks,
    resolve: &dyn Fn(PathBuf) -> PathBuf,
    credentials: Option<&Path>,
) -> Result<WebhooksConfig, String> {
    let listen = raw.listen.parse().map_err(|e| {
        format!(
            "webhooks.listen: '{}': {e} (expected an address like 127.0.0.1:8788)",
            raw.listen
        )
    })?;
    let public_url = raw.public_url.trim_end_matches('/').to_string();
    if !(public_url.starts_with("https://") || public_url.starts_with("http://"))
        || public_url.contains(['?', '#'])
    {
        return Err(format!(
            "webhooks.public_url: '{}' is not an http(s) URL without query (e.g. https://billing.example.com/dunningd)",
            redact::urls(&raw.public_url)
        ));
    }
    let secret = read_secret(&raw.secret, resolve, credentials)
        .map_err(|e| format!("webhooks.secret: {e}"))?;
    if secret.len() < MIN_WEBHOOKS_SECRET {
        return Err("webhooks.secret: at least 16 characters (e.g. `openssl rand -hex 32`)".into());
    }
    Ok(WebhooksConfig {
        listen,
        public_url,
        secret: secret.into_bytes(),
    })
}

/// `metrics:`.
fn metrics_config(raw: &RawMetrics) -> Result<MetricsConfig, String> {
    Ok(MetricsConfig {
        listen: raw.listen.parse().map_err(|e| {
            format!(
                "metrics.listen: '{}': {e} (expected an address like 127.0.0.1:9464)",
                raw.listen
            )
        })?,
    })
}

/// `limits:`.
fn file_limits(raw: &RawLimits) -> Result<FileLimits, String> {
    match &raw.workflow_file_size {
        None => Ok(FileLimits::DEFAULT),
        Some(value) => {
            let field = "limits.workflow_file_size";
            let bytes = parse_size(value).map_err(|e| format!("{field}: {e}"))?;
            if bytes == 0 || bytes > MAX_WORKFLOW_FILE_SIZE {
                return Err(format!(
                    "{field}: {bytes} bytes is not between 1 and {MAX_WORKFLOW_FILE_SIZE} (16MiB, so that `dunningctl workflows show` can always show the file)"
                ));
            }
            Ok(FileLimits { max_bytes: bytes })
        }
    }
}

/// One channel of `channels:`, its secrets read and merged into its
/// settings.
fn channel_spec(
    name: &str,
    ch: RawChannel,
    webhooks: Option<&WebhooksConfig>,
    scheduler: &SchedulerConfig,
    resolve: &dyn Fn(PathBuf) -> PathBuf,
    credentials: Option<&Path>,
) -> Result<ChannelSpec, String> {
    let field = |f: &str| format!("channels.{name}.{f}");
    let mut settings = ch.settings;
    let secret_keys: Vec<String> = ch.secrets.keys().cloned().collect();
    for (key, source) in ch.secrets {
        if settings.contains_key(&key) {
            return Err(format!(
                "{}: '{key}' is given both as a setting and as a secret",
                field("secrets")
            ));
        }
        let value = read_secret(&source, resolve, credentials)
            .map_err(|e| format!("{}: {e}", field(&format!("secrets.{key}"))))?;
        settings.insert(key, Value::String(value));
    }
    // Twilio reports what became of each message to our webhook.
    if let Some(webhooks) = webhooks
        && ch.plugin == "twilio"
        && !settings.contains_key("status_callback")
    {
        settings.insert(
            "status_callback".into(),
            Value::String(format!("{}/twilio/{name}/status", webhooks.public_url)),
        );
    }
    let spec = ChannelSpec {
        plugin: ch.plugin,
        settings: Value::Object(settings),
        secret_keys,
        timeout: duration_field(
            &field("timeout"),
            ch.timeout.as_deref(),
            DEFAULT_CHANNEL_TIMEOUT,
        )?,
        concurrency: ch.concurrency.unwrap_or(DEFAULT_CONCURRENCY).max(1),
        max_attempts: ch.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS).max(1),
        retry_backoff: duration_field(
            &field("retry_backoff"),
            ch.retry_backoff.as_deref(),
            DEFAULT_RETRY_BACKOFF,
        )?,
        send_window: match &ch.send_window {
            None => None,
            Some(raw) => Some(SendWindow::parse(raw).map_err(|(key, message)| {
                format!(
                    "{}.{}: {message}",
                    field("send_window"),
                    key.trim_end_matches(':')
                )
            })?),
        },
        frequency_cap: match &ch.frequency_cap {
            None => None,
            Some(cap) => {
                if cap.max == 0 {
                    return Err(format!(
                        "{}.max: must be at least 1 (to stop a channel, remove it from the workflows)",
                        field("frequency_cap")
                    ));
                }
                let per = duration::parse(&cap.per)
                    .map_err(|e| format!("{}.per: {e}", field("frequency_cap")))?;
                if per.is_zero() {
                    return Err(format!(
                        "{}.per: must be longer than 0s",
                        field("frequency_cap")
                    ));
                }
                Some(crate::store::FrequencyCap { max: cap.max, per })
            }
        },
    };
    // A claim must outlive the call it covers, or a slow send could
    // be claimed (and sent) a second time while still running.
    if spec.timeout >= scheduler.lease {
        return Err(format!(
            "{}: {} must be shorter than scheduler.lease ({})",
            field("timeout"),
            duration::format(spec.timeout),
            duration::format(scheduler.lease)
        ));
    }
    Ok(spec)
}

/// `sources:`, each checked ([`source_config`]), no two on one path.
fn sources_config(
    raw: BTreeMap<String, RawSource>,
    has_webhooks: bool,
    resolve: &dyn Fn(PathBuf) -> PathBuf,
    credentials: Option<&Path>,
) -> Result<Vec<crate::sources::SourceConfig>, String> {
    let sources = raw
        .into_iter()
        .map(|(name, raw)| source_config(name, raw, has_webhooks, resolve, credentials))
        .collect::<Result<Vec<_>, String>>()?;
    let mut paths = BTreeMap::new();
    for source in &sources {
        if let Some(other) = paths.insert(source.path.as_str(), source.name.as_str()) {
            return Err(format!(
                "sources.{}.path: '{}' is already the path of source '{other}'",
                source.name, source.path
            ));
        }
    }
    Ok(sources)
}

/// Paths of the webhook listener that a source may not take.
const RESERVED_PATHS: [&str; 2] = ["/twilio/", "/unsubscribe"];

/// One billing source, checked and its secrets read.
fn source_config(
    name: String,
    raw: RawSource,
    has_webhooks: bool,
    resolve: &dyn Fn(PathBuf) -> PathBuf,
    credentials: Option<&Path>,
) -> Result<crate::sources::SourceConfig, String> {
    use crate::sources::{DEFAULT_TOLERANCE, Provider, SourceConfig, SubjectLevel};
    let field = |f: &str| format!("sources.{name}.{f}");
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
    {
        return Err(format!(
            "sources: '{}' is not a source name (lower-case letters, digits, '-' and '_', at most 64)",
            name.escape_debug()
        ));
    }
    if !has_webhooks {
        return Err(format!(
            "sources.{name}: sources are served on the webhooks listener; configure 'webhooks:' (listen, public_url, secret)"
        ));
    }
    let provider = Provider::parse(&raw.provider).ok_or_else(|| {
        format!(
            "{}: unknown provider '{}' (expected one of: {})",
            field("provider"),
            raw.provider.escape_debug(),
            Provider::ALL.map(Provider::as_str).join(", ")
        )
    })?;
    let path = raw.path.unwrap_or_else(|| format!("/sources/{name}"));
    if !path.starts_with('/')
        || path.len() > 200
        || !path
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/-_.".contains(c))
    {
        return Err(format!(
            "{}: '{}' is not a path (starts with '/'; letters, digits, '/', '-', '_', '.')",
            field("path"),
            path.escape_debug()
        ));
    }
    if let Some(reserved) = RESERVED_PATHS.iter().find(|r| path.starts_with(*r)) {
        return Err(format!(
            "{}: '{path}' is taken by the webhooks listener's own '{reserved}' endpoints",
            field("path")
        ));
    }
    let secret_sources: Vec<SecretSource> = match raw.signing_secret {
        None => {
            return Err(format!(
                "{}: missing (the provider's webhook signing secret, as {{ file: PATH }}, {{ env: NAME }} or {{ credential: NAME }})",
                field("signing_secret")
            ));
        }
        Some(serde_norway::Value::Sequence(list)) => list
            .into_iter()
            .map(SecretSource::deserialize)
            .collect::<Result<_, _>>()
            .map_err(|e| {
                format!(
                    "{}: {}",
                    field("signing_secret"),
                    strip_location(&e.to_string())
                )
            })?,
        Some(one) => vec![SecretSource::deserialize(one).map_err(|e| {
            format!(
                "{}: {}",
                field("signing_secret"),
                strip_location(&e.to_string())
            )
        })?],
    };
    if secret_sources.is_empty() {
        return Err(format!("{}: give at least one", field("signing_secret")));
    }
    let mut secrets = Vec::new();
    for (i, source) in secret_sources.iter().enumerate() {
        let secret = read_secret(source, resolve, credentials)
            .map_err(|e| format!("{}[{i}]: {e}", field("signing_secret")))?;
        if secret.is_empty() {
            return Err(format!("{}[{i}]: is empty", field("signing_secret")));
        }
        secrets.push(secret.into_bytes());
    }
    match (provider.uses_username(), &raw.username) {
        (true, None) => {
            return Err(format!(
                "{}: missing (the user name of the webhook's basic auth; signing_secret is its password)",
                field("username")
            ));
        }
        (false, Some(_)) => {
            return Err(format!(
                "{}: only a chargebee source has one",
                field("username")
            ));
        }
        _ => {}
    }
    let api_key = match &raw.api_key {
        None => None,
        Some(source) => Some(
            read_secret(source, resolve, credentials)
                .map_err(|e| format!("{}: {e}", field("api_key")))?,
        ),
    };
    let api_base = match raw.api_base {
        Some(base) => {
            let base = base.trim_end_matches('/').to_string();
            let shown = redact::urls(&base).into_owned();
            match url::Url::parse(&base) {
                Ok(url) if matches!(url.scheme(), "http" | "https") && url.query().is_none() => {}
                _ => {
                    return Err(format!(
                        "{}: '{shown}' is not an http(s) URL without query",
                        field("api_base")
                    ));
                }
            }
            Some(base)
        }
        None => provider.default_api_base().map(String::from),
    };
    if api_key.is_none() && provider.needs_api_key() {
        return Err(format!(
            "{}: required for {provider}: its webhooks name only ids, which the source fetches through its API",
            field("api_key")
        ));
    }
    if api_key.is_some() && api_base.is_none() {
        return Err(format!(
            "{}: required with api_key for {provider} (your site's API address)",
            field("api_base")
        ));
    }
    let subject = match raw.subject.as_deref() {
        None => SubjectLevel::default(),
        Some(text) => SubjectLevel::parse(text).ok_or_else(|| {
            format!(
                "{}: '{}' is not one of invoice, subscription, customer",
                field("subject"),
                text.escape_debug()
            )
        })?,
    };
    let duration = |f: &str, value: &Option<String>, default| match value {
        None => Ok(default),
        Some(text) => duration::parse(text).map_err(|e| format!("{}: {e}", field(f))),
    };
    let portal_return_url = match raw.portal_return_url {
        None => None,
        Some(_) if provider != Provider::Stripe => {
            return Err(format!(
                "{}: only a stripe source has a customer portal",
                field("portal_return_url")
            ));
        }
        Some(url) if url.starts_with("https://") || url.starts_with("http://") => Some(url),
        Some(url) => {
            return Err(format!(
                "{}: '{}' is not an http(s) URL",
                field("portal_return_url"),
                redact::urls(&url)
            ));
        }
    };
    Ok(SourceConfig {
        portal_return_url,
        provider,
        path,
        secrets,
        username: raw.username,
        api_key,
        api_base,
        subject,
        tolerance: duration("tolerance", &raw.tolerance, DEFAULT_TOLERANCE)?,
        api_timeout: duration("api_timeout", &raw.api_timeout, Duration::from_secs(10))?,
        name,
    })
}

/// A size in bytes: a number, or a number with a unit — `B`, `KiB`, `MiB`
/// (1024-based) or `KB`, `MB` (1000-based), e.g. `8MiB`.
fn parse_size(value: &Value) -> Result<u64, String> {
    if let Some(bytes) = value.as_u64() {
        return Ok(bytes);
    }
    let Some(text) = value.as_str() else {
        return Err(format!(
            "'{value}' is not a size (e.g. 1MiB, 512KiB, 2000000)"
        ));
    };
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let unit_size: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1024,
        "MiB" => 1024 * 1024,
        "KB" | "kB" => 1000,
        "MB" => 1000 * 1000,
        _ => {
            return Err(format!(
                "'{text}' is not a size (e.g. 1MiB, 512KiB, 2000000)"
            ));
        }
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(unit_size))
        .ok_or_else(|| format!("'{text}' is not a size (e.g. 1MiB, 512KiB, 2000000)"))
}

fn read_secret(
    source: &SecretSource,
    resolve: &dyn Fn(PathBuf) -> PathBuf,
    credentials: Option<&Path>,
) -> Result<String, String> {
    let from_file = |path: PathBuf| {
        std::fs::read_to_string(&path)
            .map(|s| s.trim_end_matches(['\n', '\r']).to_string())
            .map_err(|e| format!("cannot read '{}': {e}", path.display()))
    };
    match (&source.file, &source.env, &source.credential) {
        (Some(path), None, None) => from_file(resolve(path.clone())),
        (None, Some(var), None) => {
            std::env::var(var).map_err(|_| format!("environment variable '{var}' is not set"))
        }
        (None, None, Some(name)) => match credentials {
            Some(dir) => from_file(dir.join(name)),
            None => Err(format!(
                "credential '{name}': CREDENTIALS_DIRECTORY is not set (use LoadCredential= in the unit)"
            )),
        },
        _ => Err("give exactly one of 'file', 'env' or 'credential'".to_string()),
    }
}

/// Removes `.` and `name/..` pairs without touching the file system, so
/// paths read well in logs (`examples/../.dunningd` → `.dunningd`).
fn normalize(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                let last = out.components().next_back();
                if matches!(last, Some(Component::Normal(_))) {
                    out.pop();
                } else if !matches!(last, Some(Component::RootDir)) {
                    out.push("..");
                }
            }
            other => out.push(other),
        }
    }
    if out.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        out
    }
}

/// Checks the `admin:` section's combinations and resolves its paths. Whether
/// plain TCP listens on loopback is known only once bound: the admin module
/// checks `allow_plaintext` then.
fn admin_config(
    raw: RawAdmin,
    resolve: &dyn Fn(PathBuf) -> PathBuf,
) -> Result<AdminConfig, String> {
    let mutual_tls = raw
        .tls
        .as_ref()
        .is_some_and(|tls| tls.client_ca_file.is_some());
    if raw.tcp.is_none() {
        if raw.tls.is_some() {
            return Err("admin.tls: TLS is for the TCP listener; set admin.tcp too".into());
        }
        if raw.allow_plaintext {
            return Err("admin.allow_plaintext: there is no TCP listener (admin.tcp)".into());
        }
    } else if raw.token_file.is_none() && !mutual_tls {
        return Err("admin.tcp: a TCP listener needs admin.token_file (a bearer token clients must send) or mutual TLS (admin.tls.client_ca_file)".into());
    }
    if raw.tls.is_some() && raw.allow_plaintext {
        return Err("admin.allow_plaintext: contradicts admin.tls; remove one".into());
    }
    Ok(AdminConfig {
        socket: resolve(raw.socket.unwrap_or_else(|| DEFAULT_SOCKET.into())),
        tcp: raw.tcp,
        token_file: raw.token_file.map(resolve),
        tls: raw.tls.map(|tls| AdminTls {
            cert_file: resolve(tls.cert_file),
            key_file: resolve(tls.key_file),
            client_ca_file: tls.client_ca_file.map(resolve),
        }),
        allow_plaintext: raw.allow_plaintext,
    })
}

#[cfg(test)]
mod tests;
