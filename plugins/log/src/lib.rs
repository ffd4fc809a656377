//! The `log` channel plugin: writes each delivery as one JSON line.
//!
//! Settings: `path` (a file, appended to and flushed per line; its folder is
//! created) or, without it, standard output. A file it creates is 0600 and
//! a folder 0700, whatever the umask: deliveries name customers. It stands in for real channels
//! in the quick start and in tests, and answers `sent` with a receipt.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use dunningd_plugin_api::wire::{ChannelConfig, DeliveryRequest, DeliveryResponse};
use dunningd_plugin_api::{Channel, Plugin, export_plugin};

struct Log;

enum Sink {
    Stdout,
    /// One writer at a time, so concurrent sends never interleave lines.
    File(Mutex<File>),
}

struct LogChannel {
    channel: String,
    sink: Sink,
}

impl Plugin for Log {
    const NAME: &'static str = "log";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    type Channel = LogChannel;

    fn open(config: ChannelConfig) -> Result<LogChannel, String> {
        let sink = match config.settings.get("path") {
            None | Some(serde_json::Value::Null) => Sink::Stdout,
            Some(serde_json::Value::String(path)) => {
                let path = std::path::Path::new(path);
                // The umask can only take bits away from these modes.
                if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                    std::fs::DirBuilder::new()
                        .recursive(true)
                        .mode(0o700)
                        .create(parent)
                        .map_err(|e| {
                            format!("settings.path: cannot create '{}': {e}", parent.display())
                        })?;
                }
                let file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(|e| format!("settings.path: cannot open '{}': {e}", path.display()))?;
                Sink::File(Mutex::new(file))
            }
            Some(other) => return Err(format!("settings.path must be a string, got {other}")),
        };
        Ok(LogChannel {
            channel: config.channel,
            sink,
        })
    }
}

impl Channel for LogChannel {
    fn send(&self, request: &DeliveryRequest) -> DeliveryResponse {
        let at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let line = serde_json::json!({
            "logged_at_unix_ms": at_ms as u64,
            "channel": self.channel,
            "delivery_id": request.delivery_id,
            "idempotency_key": request.idempotency_key,
            "attempt": request.attempt,
            "case": request.case_id,
            "workflow": request.workflow,
            "step": request.step,
            "template": request.template,
            "subject": request.subject,
            "recipient": request.recipient,
            "message": request.message,
        });
        let mut text = line.to_string();
        text.push('\n');
        let written = match &self.sink {
            Sink::Stdout => {
                let mut out = std::io::stdout().lock();
                out.write_all(text.as_bytes()).and_then(|_| out.flush())
            }
            Sink::File(file) => match file.lock() {
                Ok(mut f) => f.write_all(text.as_bytes()).and_then(|_| f.flush()),
                Err(poisoned) => {
                    let mut f = poisoned.into_inner();
                    f.write_all(text.as_bytes()).and_then(|_| f.flush())
                }
            },
        };
        match written {
            Ok(()) => DeliveryResponse::Sent {
                receipt: Some(format!("log:{}", request.idempotency_key)),
            },
            Err(e) => DeliveryResponse::Retryable {
                error: format!("cannot write the log line: {e}"),
                retry_after_secs: None,
            },
        }
    }
}

export_plugin!(Log);
