//! Channel plugins: find and load them, open the configured channels, and
//! call them so that no plugin can take the daemon down.
//!
//! Invariants:
//! - A library is loaded once per process and never unloaded.
//! - Calls run on each channel's own threads (`lanes`), never on the async
//!   runtime, so a plugin never touches (or blocks) the host's tokio
//!   runtime. A channel has as many lanes as its concurrency: that is its
//!   bound, and hung calls of one channel cannot take another's threads.
//! - Each call has a deadline from its start, after which the caller moves
//!   on and the outcome is `unknown` (the message may have gone out). The
//!   hung lane stays with the plugin until it returns.
//! - A panic, an error status or a response that is not the documented JSON
//!   becomes an outcome of that one delivery, with the reason. In a batch
//!   (`send_batch`), each delivery's own item of the answer is interpreted
//!   just as a single answer; a batch that fails as a whole, or whose answer
//!   is not one valid response per request, is `unknown` for each of its
//!   deliveries (any of them may have gone out).
//! - `configure` is all-or-nothing: a channel that fails to open leaves the
//!   previous channels in use.
//! - Nothing a plugin says leaves the host with a secret in it: its open
//!   error, every outcome's error or reason and its panic messages have the
//!   channel's secret values and all URL credentials hidden
//!   ([`crate::redact::Redactor`]), so neither the log, the case timeline
//!   nor `dunningctl status` can show them, whatever the plugin wrote.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use dunningd_plugin_api::wire::{ChannelConfig, DeliveryRequest, DeliveryResponse};

use crate::config::ChannelSpec;
use crate::metrics::Metrics;
use crate::redact::Redactor;

mod ffi;
mod lanes;

pub use ffi::{CallError, Library};
use lanes::{Called, Lanes};

#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("{path}: {message}")]
    Load { path: PathBuf, message: String },
    #[error("channel '{channel}': plugin '{plugin}' not found (looked for {tried})")]
    NotFound {
        channel: String,
        plugin: String,
        tried: String,
    },
    #[error("channel '{channel}': cannot start its threads: {message}")]
    Threads { channel: String, message: String },
    #[error("channel '{channel}': plugin '{plugin}' refused the configuration: {message}")]
    Open {
        channel: String,
        plugin: String,
        message: String,
    },
}

/// A loaded plugin, for `dunningctl plugins list`.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginInfo {
    pub name: String,
    pub version: String,
    pub path: PathBuf,
    pub abi_version: u32,
    /// The configured channels it serves.
    pub channels: Vec<String>,
}

/// One open channel and the limits it is called under.
struct OpenChannel {
    lanes: Lanes,
    library: &'static Library,
    concurrency: usize,
    timeout: Duration,
    /// Hides the channel's secrets in what its plugin says.
    redactor: Redactor,
}

pub struct PluginHost {
    dir: PathBuf,
    /// Every library loaded so far, by resolved path. Never shrinks.
    libraries: Mutex<BTreeMap<PathBuf, &'static Library>>,
    /// The channels in use; replaced whole by `configure`.
    channels: RwLock<Arc<BTreeMap<String, OpenChannel>>>,
    /// Where call latencies are recorded (the daemon's; none in tests that
    /// drive a host directly).
    metrics: Option<Arc<Metrics>>,
}

impl PluginHost {
    pub fn new(plugin_dir: PathBuf) -> PluginHost {
        PluginHost {
            dir: plugin_dir,
            libraries: Mutex::new(BTreeMap::new()),
            channels: RwLock::new(Arc::new(BTreeMap::new())),
            metrics: None,
        }
    }

    /// Records every plugin call's latency and answer in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> PluginHost {
        self.metrics = Some(metrics);
        self
    }

    /// The candidate files for `plugin: NAME`, in the order they are tried.
    fn candidates(&self, plugin: &str) -> Vec<PathBuf> {
        let path = Path::new(plugin);
        if path.is_absolute() || plugin.starts_with("./") || plugin.starts_with("../") {
            return vec![path.to_path_buf()];
        }
        let (prefix, suffix) = (std::env::consts::DLL_PREFIX, std::env::consts::DLL_SUFFIX);
        vec![
            self.dir
                .join(format!("{prefix}dunningd_plugin_{plugin}{suffix}")),
            self.dir.join(format!("{prefix}{plugin}{suffix}")),
            self.dir.join(format!("{plugin}{suffix}")),
        ]
    }

    fn library(&self, channel: &str, plugin: &str) -> Result<&'static Library, PluginError> {
        let candidates = self.candidates(plugin);
        let Some(path) = candidates.iter().find(|p| p.is_file()) else {
            return Err(PluginError::NotFound {
                channel: channel.to_string(),
                plugin: plugin.to_string(),
                tried: candidates
                    .iter()
                    .map(|p| format!("'{}'", p.display()))
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        };
        let mut libraries = self.libraries.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(library) = libraries.get(path) {
            return Ok(library);
        }
        let library: &'static Library = Box::leak(Box::new(Library::load(path)?));
        tracing::info!(plugin = %library.name, version = %library.version, path = %path.display(), "plugin loaded");
        libraries.insert(path.clone(), library);
        Ok(library)
    }

    /// Opens every channel of a configuration; all or nothing.
    pub fn configure(&self, channels: &BTreeMap<String, ChannelSpec>) -> Result<(), PluginError> {
        let mut opened = BTreeMap::new();
        for (name, spec) in channels {
            let library = self.library(name, &spec.plugin)?;
            let redactor = Redactor::for_settings(&spec.settings, &spec.secret_keys);
            let config = ChannelConfig {
                channel: name.clone(),
                settings: spec.settings.clone(),
            };
            let json = serde_json::to_vec(&config).map_err(|e| PluginError::Open {
                channel: name.clone(),
                plugin: spec.plugin.clone(),
                message: e.to_string(),
            })?;
            let raw = library.open(&json).map_err(|e| PluginError::Open {
                channel: name.clone(),
                plugin: spec.plugin.clone(),
                message: match e {
                    CallError::Error(m) | CallError::Panicked(m) => {
                        redactor.redact(&m).into_owned()
                    }
                    CallError::BadStatus(s) => format!("undefined status {s}"),
                    // `open` is never part of a batch.
                    CallError::BatchFailed(m) | CallError::BadBatchAnswer { reason: m, .. } => {
                        redactor.redact(&m).into_owned()
                    }
                },
            })?;
            let lanes =
                Lanes::start(name, Arc::new(raw), spec.concurrency, spec.timeout).map_err(|e| {
                    PluginError::Threads {
                        channel: name.clone(),
                        message: e.to_string(),
                    }
                })?;
            opened.insert(
                name.clone(),
                OpenChannel {
                    lanes,
                    library,
                    concurrency: spec.concurrency,
                    timeout: spec.timeout,
                    redactor,
                },
            );
        }
        match self.channels.write() {
            Ok(mut guard) => *guard = Arc::new(opened),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(opened),
        }
        Ok(())
    }

    fn current(&self) -> Arc<BTreeMap<String, OpenChannel>> {
        match self.channels.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub fn channel_names(&self) -> BTreeSet<String> {
        self.current().keys().cloned().collect()
    }

    pub fn plugins(&self) -> Vec<PluginInfo> {
        let channels = self.current();
        let libraries = self.libraries.lock().unwrap_or_else(|p| p.into_inner());
        libraries
            .values()
            .map(|library| PluginInfo {
                name: library.name.clone(),
                version: library.version.clone(),
                path: library.path.clone(),
                abi_version: library.abi_version,
                channels: channels
                    .iter()
                    .filter(|(_, ch)| std::ptr::eq(ch.library, *library))
                    .map(|(name, _)| name.clone())
                    .collect(),
            })
            .collect()
    }

    /// Sends one delivery on its channel. Never panics. Waits for a free
    /// lane for as long as the channel makes progress (some call returns
    /// within each timeout; a burst larger than the channel's concurrency
    /// is queued, not failed), then gives the call the channel's timeout.
    /// A channel whose every lane stays busy for a whole timeout is stuck
    /// (its plugin hangs): the delivery is retried later.
    pub async fn send(&self, request: DeliveryRequest) -> DeliveryResponse {
        let channel = request.channel.clone();
        match self
            .send_within(&channel, move || Ok(request), |_| true)
            .await
        {
            Sent::Answered(response) => response,
            // The request is ready: only its encoding can fail.
            Sent::NotPrepared(error) => DeliveryResponse::Permanent { error },
            // Unreachable: nothing to prepare, and every call may start.
            Sent::PrepareTimedOut(_) | Sent::Refused => DeliveryResponse::Retryable {
                error: "not sent".into(),
                retry_after_secs: None,
            },
        }
    }

    /// [`PluginHost::send`] for a claim under a lease, with the request
    /// prepared on the channel's lane (the scheduler renders the message
    /// there) within the channel's timeout: preparing and the plugin's
    /// call together get one timeout, counted from the lane's start. When
    /// the lane is about to start, `may_start` is asked whether a call as
    /// long as the channel's timeout still fits in the claim's lease (which
    /// may have been renewed while waiting); if not, nothing runs
    /// ([`Sent::Refused`]), so that no message goes out under a lease
    /// another daemon may take over.
    pub async fn send_within(
        &self,
        channel_name: &str,
        prepare: impl FnOnce() -> Result<DeliveryRequest, String> + Send + 'static,
        may_start: impl FnOnce(Duration) -> bool + Send + 'static,
    ) -> Sent {
        let channels = self.current();
        let Some(channel) = channels.get(channel_name) else {
            return Sent::Answered(DeliveryResponse::Permanent {
                error: format!("channel '{channel_name}' is not configured"),
            });
        };
        let plugin = &channel.library.name;
        let prepare = Box::new(move || {
            let request = prepare()?;
            serde_json::to_vec(&request).map_err(|e| format!("cannot encode the request: {e}"))
        });
        let (called, ran) = channel.lanes.call(prepare, Box::new(may_start)).await;
        let response = match called {
            Called::Refused => return Sent::Refused,
            Called::NotPrepared(error) => return Sent::NotPrepared(error),
            Called::PrepareTimedOut => return Sent::PrepareTimedOut(channel.timeout),
            // Not sent at all: safe to retry.
            Called::Stuck => DeliveryResponse::Retryable {
                error: format!(
                    "channel '{channel_name}' is stuck: all {} slots busy and no call returned within {}",
                    channel.concurrency,
                    crate::duration::format(channel.timeout)
                ),
                retry_after_secs: None,
            },
            Called::TimedOut => DeliveryResponse::Unknown {
                error: format!(
                    "plugin '{plugin}' did not answer within {}; the message may have gone out",
                    crate::duration::format(channel.timeout)
                ),
            },
            Called::Vanished => DeliveryResponse::Unknown {
                error: format!("plugin '{plugin}' call ended without an answer"),
            },
            Called::Returned(result) => redacted(&channel.redactor, interpret(plugin, result)),
        };
        if let Some(metrics) = &self.metrics {
            metrics.plugin_call(channel_name, &response, ran);
        }
        Sent::Answered(response)
    }
}

/// What became of a [`PluginHost::send_within`].
#[derive(Debug)]
pub enum Sent {
    /// The plugin's answer, or what stands for it: a timeout (`unknown`),
    /// a stuck channel (`retryable`, not sent), a channel not configured.
    Answered(DeliveryResponse),
    /// Preparing the request failed: the plugin was not called.
    NotPrepared(String),
    /// Preparing the request took the channel's whole timeout (given): the
    /// plugin was not called.
    PrepareTimedOut(Duration),
    /// `may_start` said no: nothing ran.
    Refused,
}

/// The longest error or skip reason kept from a plugin, in characters; the
/// rest is cut with `…`. A plugin's text ends up in the store, the timeline
/// and the log: a runaway plugin must not put megabytes into each.
pub const MAX_PLUGIN_TEXT: usize = 1024;

/// The longest provider receipt kept, in bytes. Receipts are provider ids
/// (a Twilio SID, an SMTP queue id); anything longer is not one.
pub const MAX_RECEIPT: usize = 256;

/// `response` with the channel's secrets hidden in its error or reason.
fn redacted(redactor: &Redactor, response: DeliveryResponse) -> DeliveryResponse {
    let hide = |text: String| match redactor.redact(&text) {
        std::borrow::Cow::Borrowed(_) => text,
        std::borrow::Cow::Owned(hidden) => hidden,
    };
    match response {
        DeliveryResponse::Sent { receipt } => DeliveryResponse::Sent {
            receipt: receipt.map(hide),
        },
        DeliveryResponse::Retryable {
            error,
            retry_after_secs,
        } => DeliveryResponse::Retryable {
            error: hide(error),
            retry_after_secs,
        },
        DeliveryResponse::Permanent { error } => DeliveryResponse::Permanent { error: hide(error) },
        DeliveryResponse::Unknown { error } => DeliveryResponse::Unknown { error: hide(error) },
        DeliveryResponse::Skipped { reason } => DeliveryResponse::Skipped {
            reason: hide(reason),
        },
    }
}

/// Turns a call's raw result into a delivery outcome.
fn interpret(plugin: &str, result: Result<Vec<u8>, CallError>) -> DeliveryResponse {
    match result {
        Ok(bytes) => decode_response(plugin, &bytes),
        Err(CallError::Panicked(message)) => DeliveryResponse::Permanent {
            error: format!("plugin '{plugin}': {}", bounded(&message)),
        },
        Err(CallError::Error(message)) => DeliveryResponse::Permanent {
            error: format!("plugin '{plugin}' error: {}", bounded(&message)),
        },
        Err(CallError::BadStatus(status)) => DeliveryResponse::Unknown {
            error: format!("plugin '{plugin}' returned undefined status {status}"),
        },
        // Unlike a single call's error, a batch's may come after some of its
        // items went out.
        Err(CallError::BatchFailed(message)) => DeliveryResponse::Unknown {
            error: format!(
                "plugin '{plugin}' failed the batch call this delivery was in, so it may have gone out: {}",
                bounded(&message)
            ),
        },
        // The same as a single answer that is not the documented JSON.
        Err(CallError::BadBatchAnswer { reason, excerpt }) => DeliveryResponse::Unknown {
            error: bounded(&format!(
                "plugin '{plugin}' returned an invalid response ({reason}): {excerpt:?}"
            )),
        },
    }
}

/// Decodes a plugin's answer to a send. Plugin output is input like any
/// other: an answer that is not the documented JSON becomes `unknown` (the
/// plugin ran; whether it sent is unknown), texts are bounded to
/// [`MAX_PLUGIN_TEXT`], and a receipt that cannot be a provider's id
/// (longer than [`MAX_RECEIPT`] or holding control characters) is dropped,
/// so it can never match a provider's callback.
pub fn decode_response(plugin: &str, bytes: &[u8]) -> DeliveryResponse {
    let response = match serde_json::from_slice::<DeliveryResponse>(bytes) {
        Ok(response) => response,
        Err(e) => {
            let excerpt = excerpt(bytes);
            // serde's message quotes the offending value, whole: bounded too.
            return DeliveryResponse::Unknown {
                error: bounded(&format!(
                    "plugin '{plugin}' returned an invalid response ({e}): {excerpt:?}"
                )),
            };
        }
    };
    match response {
        DeliveryResponse::Sent { receipt } => DeliveryResponse::Sent {
            receipt: receipt.filter(|r| {
                let fits = r.len() <= MAX_RECEIPT && !r.chars().any(char::is_control);
                if !fits {
                    tracing::warn!(
                        plugin,
                        length = r.len(),
                        "plugin's receipt is too long or holds control characters; it is not kept"
                    );
                }
                fits
            }),
        },
        DeliveryResponse::Retryable {
            error,
            retry_after_secs,
        } => DeliveryResponse::Retryable {
            error: bounded(&error),
            retry_after_secs,
        },
        DeliveryResponse::Permanent { error } => DeliveryResponse::Permanent {
            error: bounded(&error),
        },
        DeliveryResponse::Unknown { error } => DeliveryResponse::Unknown {
            error: bounded(&error),
        },
        DeliveryResponse::Skipped { reason } => DeliveryResponse::Skipped {
            reason: bounded(&reason),
        },
    }
}

/// The start of an answer that is not the documented JSON, quoted in its
/// outcome's error.
fn excerpt(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).chars().take(80).collect()
}

/// `text` cut to [`MAX_PLUGIN_TEXT`] characters, with `…` where it was cut.
fn bounded(text: &str) -> String {
    match text.char_indices().nth(MAX_PLUGIN_TEXT) {
        None => text.to_string(),
        Some((end, _)) => format!("{}…", &text[..end]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_answers_become_outcomes() {
        let table: Vec<(Result<Vec<u8>, CallError>, &str)> = vec![
            (Ok(br#"{"outcome":"sent","receipt":"r1"}"#.to_vec()), "Sent"),
            (Ok(b"{not json".to_vec()), "returned an invalid response"),
            (
                Ok(br#"{"outcome":"teleported"}"#.to_vec()),
                "returned an invalid response",
            ),
            (
                Err(CallError::Panicked("plugin panicked: boom".into())),
                "plugin 'p': plugin panicked: boom",
            ),
            (
                Err(CallError::Error("bad request".into())),
                "plugin 'p' error: bad request",
            ),
            (Err(CallError::BadStatus(7)), "undefined status 7"),
            (
                Ok(br#"{"outcome":"sent","receipt":"r\u001b[31m"}"#.to_vec()),
                "Sent { receipt: None }",
            ),
            // A batch that failed as a whole: unknown, whatever the status
            // (a single call's error or panic is permanent).
            (
                Err(CallError::BatchFailed("plugin panicked: boom".into())),
                r#"Unknown { error: "plugin 'p' failed the batch call this delivery was in, so it may have gone out: plugin panicked: boom" }"#,
            ),
            (
                Err(CallError::BadBatchAnswer {
                    reason: "1 responses to a batch of 2".into(),
                    excerpt: "[{}]".into(),
                }),
                r#"Unknown { error: "plugin 'p' returned an invalid response (1 responses to a batch of 2): \"[{}]\"" }"#,
            ),
        ];
        for (input, want) in table {
            let got = format!("{:?}", interpret("p", input));
            assert!(got.contains(want), "{got} should contain {want}");
        }
    }

    #[test]
    fn plugin_texts_and_receipts_are_bounded() {
        let long = "é".repeat(MAX_PLUGIN_TEXT + 500);
        let answer = serde_json::json!({ "outcome": "permanent", "error": long }).to_string();
        let DeliveryResponse::Permanent { error } = decode_response("p", answer.as_bytes()) else {
            panic!("a permanent answer stays permanent");
        };
        assert_eq!(error.chars().count(), MAX_PLUGIN_TEXT + 1);
        assert!(error.ends_with('…'));

        // Regression (found by fuzz/plugin_answer): an answer that is one
        // long JSON string was quoted whole in the "invalid response" error.
        let answer = serde_json::to_vec(&"x".repeat(100_000)).expect("json");
        let DeliveryResponse::Unknown { error } = decode_response("p", &answer) else {
            panic!("an answer that is not the schema is unknown");
        };
        assert!(
            error.chars().count() <= MAX_PLUGIN_TEXT + 1,
            "{} characters",
            error.len()
        );

        let receipt = "r".repeat(MAX_RECEIPT + 1);
        let answer = serde_json::json!({ "outcome": "sent", "receipt": receipt }).to_string();
        assert_eq!(
            decode_response("p", answer.as_bytes()),
            DeliveryResponse::Sent { receipt: None }
        );
        let answer = serde_json::json!({ "outcome": "sent", "receipt": "SM123" }).to_string();
        assert_eq!(
            decode_response("p", answer.as_bytes()),
            DeliveryResponse::Sent {
                receipt: Some("SM123".into())
            }
        );
    }

    #[test]
    fn what_plugins_say_has_the_channels_secrets_hidden() {
        let settings = serde_json::json!({
            "url": "https://hooks.example/x?token=t0ken-in-url",
            "auth_token": "tw-auth-token",
            "sender_password_file": "from-a-secret",
        });
        let redactor = Redactor::for_settings(&settings, &["sender_password_file".into()]);
        let table = [
            (
                Err(CallError::Error("refused tw-auth-token".into())),
                r#"Permanent { error: "plugin 'p' error: refused ***" }"#,
            ),
            (
                Err(CallError::Panicked("plugin panicked: from-a-secret".into())),
                r#"Permanent { error: "plugin 'p': plugin panicked: ***" }"#,
            ),
            (
                Ok(br#"{"outcome":"retryable","error":"POST https://u:pw@hooks.example/x?token=t0ken-in-url: 503"}"#.to_vec()),
                r#"Retryable { error: "POST https://u:***@hooks.example/x?token=***: 503", retry_after_secs: None }"#,
            ),
            (
                Ok(br#"{"outcome":"unknown","error":"echo t0ken-in-url"}"#.to_vec()),
                r#"Unknown { error: "echo ***" }"#,
            ),
            (
                Ok(br#"{"outcome":"skipped","reason":"no phone"}"#.to_vec()),
                r#"Skipped { reason: "no phone" }"#,
            ),
        ];
        for (input, want) in table {
            assert_eq!(
                format!("{:?}", redacted(&redactor, interpret("p", input))),
                want
            );
        }
    }
}
