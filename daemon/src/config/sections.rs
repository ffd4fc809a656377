//! One function per section of the file: each turns its part of the file
//! as written ([`super::raw`]) into the resolved configuration, or says
//! what is wrong as `section.key: message`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::raw::*;
use super::secrets::read_secret;
use super::*;

/// A duration field, `default` when the file leaves it out.
fn duration_field(field: &str, value: Option<&str>, default: Duration) -> Result<Duration, String> {
    match value {
        None => Ok(default),
        Some(text) => duration::parse(text).map_err(|e| format!("{field}: {e}")),
    }
}

/// `database:`: a SQLite file (relative to the configuration) or a
/// PostgreSQL URL; `dunningd.db` in the state folder when left out.
pub(super) fn database_url(
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
pub(super) fn clock_kind(
    raw: Option<&str>,
    start: Option<DateTime<Utc>>,
) -> Result<ClockKind, String> {
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
pub(super) fn scheduler_config(raw: &RawScheduler) -> Result<SchedulerConfig, String> {
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
pub(super) fn webhooks_config(
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
pub(super) fn metrics_config(raw: &RawMetrics) -> Result<MetricsConfig, String> {
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
pub(super) fn file_limits(raw: &RawLimits) -> Result<FileLimits, String> {
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
pub(super) fn channel_spec(
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
pub(super) fn sources_config(
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

/// Removes `.` and `name/..` pairs without touching the file system, so
/// paths read well in logs (`examples/../.dunningd` → `.dunningd`).
pub(super) fn normalize(path: &Path) -> PathBuf {
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
pub(super) fn admin_config(
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
