//! The `log` channel plugin: writes each delivery as one JSON line.
//!
//! Settings: `path` (a file, appended to and flushed per call; its folder is
//! created) or, without it, standard output. It batches: the lines of a
//! batch are written with one write and one flush, in order, so that a
//! drain costs no syscall per line. A file it creates is 0600 and
//! a folder 0700, whatever the umask: deliveries name customers. It stands in for real channels
//! in the quick start and in tests, and answers `sent` with a receipt.

use std::fs::OpenOptions;
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
    Writer(Mutex<Box<dyn Write + Send>>),
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
                Sink::Writer(Mutex::new(Box::new(file)))
            }
            Some(other) => return Err(format!("settings.path must be a string, got {other}")),
        };
        Ok(LogChannel {
            channel: config.channel,
            sink,
        })
    }
}

impl LogChannel {
    /// One delivery's line, newline included.
    fn line(&self, request: &DeliveryRequest, at_ms: u64) -> String {
        let line = serde_json::json!({
            "logged_at_unix_ms": at_ms,
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
        text
    }

    /// Writes the lines of `requests` with one write and one flush, and
    /// answers each: a failed write is every line's failure (the file may
    /// hold some of them; they are retried, as a single line would be).
    fn write(&self, requests: &[DeliveryRequest]) -> Vec<DeliveryResponse> {
        let at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let text: String = requests
            .iter()
            .map(|request| self.line(request, at_ms))
            .collect();
        let written = match &self.sink {
            Sink::Stdout => {
                let mut out = std::io::stdout().lock();
                out.write_all(text.as_bytes()).and_then(|_| out.flush())
            }
            Sink::Writer(writer) => {
                let mut w = writer
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                w.write_all(text.as_bytes()).and_then(|_| w.flush())
            }
        };
        requests
            .iter()
            .map(|request| match &written {
                Ok(()) => DeliveryResponse::Sent {
                    receipt: Some(format!("log:{}", request.idempotency_key)),
                },
                Err(e) => DeliveryResponse::Retryable {
                    error: format!("cannot write the log line: {e}"),
                    retry_after_secs: None,
                },
            })
            .collect()
    }
}

impl Channel for LogChannel {
    /// A batch is one write and one flush instead of one per line.
    const BATCHES: bool = true;

    fn send(&self, request: &DeliveryRequest) -> DeliveryResponse {
        match self.write(std::slice::from_ref(request)).pop() {
            Some(response) => response,
            // `write` answers every request it is given.
            None => DeliveryResponse::Unknown {
                error: "the log line was not answered".into(),
            },
        }
    }

    fn send_batch(&self, requests: &[DeliveryRequest]) -> Vec<DeliveryResponse> {
        self.write(requests)
    }
}

export_plugin!(Log);

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use dunningd_plugin_api::wire::Recipient;

    use super::*;

    /// What a sink was asked to do.
    #[derive(Default)]
    struct Seen {
        bytes: Vec<u8>,
        writes: usize,
        flushes: usize,
    }

    /// A sink that records each call (or fails every write).
    struct Recorder {
        seen: Arc<Mutex<Seen>>,
        fail: bool,
    }

    impl Write for Recorder {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if self.fail {
                return Err(std::io::Error::other("disk full"));
            }
            let mut seen = self.seen.lock().unwrap();
            seen.writes += 1;
            seen.bytes.extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            self.seen.lock().unwrap().flushes += 1;
            Ok(())
        }
    }

    fn channel(fail: bool) -> (LogChannel, Arc<Mutex<Seen>>) {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let recorder = Recorder {
            seen: seen.clone(),
            fail,
        };
        let channel = LogChannel {
            channel: "log".into(),
            sink: Sink::Writer(Mutex::new(Box::new(recorder))),
        };
        (channel, seen)
    }

    fn request(n: usize) -> DeliveryRequest {
        DeliveryRequest {
            delivery_id: format!("d{n}"),
            idempotency_key: format!("k{n}"),
            channel: "log".into(),
            case_id: "c".into(),
            workflow: "w".into(),
            step: format!("step-{n}"),
            template: "t".into(),
            attempt: 1,
            recipient: Recipient {
                customer_id: "cus_ada".into(),
                ..Recipient::default()
            },
            message: [("text".to_string(), format!("line {n}\nsecond"))].into(),
            data: serde_json::Value::Null,
            subject: "s".into(),
        }
    }

    /// The lines written, each without its time (which differs by call).
    fn lines(seen: &Seen) -> Vec<serde_json::Value> {
        let text = std::str::from_utf8(&seen.bytes).unwrap();
        assert!(text.ends_with('\n'), "{text:?}");
        text.lines()
            .map(|line| {
                let mut line: serde_json::Value = serde_json::from_str(line).unwrap();
                let at = line
                    .as_object_mut()
                    .unwrap()
                    .remove("logged_at_unix_ms")
                    .unwrap();
                assert!(at.as_u64().unwrap() > 0);
                line
            })
            .collect()
    }

    #[test]
    fn a_batch_is_one_write_of_the_lines_single_sends_write() {
        let requests: Vec<DeliveryRequest> = (0..5).map(request).collect();

        let (single, one_by_one) = channel(false);
        let answers: Vec<DeliveryResponse> = requests.iter().map(|r| single.send(r)).collect();
        let (batching, at_once) = channel(false);
        assert_eq!(batching.send_batch(&requests), answers);

        let (one_by_one, at_once) = (one_by_one.lock().unwrap(), at_once.lock().unwrap());
        assert_eq!((one_by_one.writes, one_by_one.flushes), (5, 5));
        assert_eq!((at_once.writes, at_once.flushes), (1, 1));
        assert_eq!(lines(&at_once), lines(&one_by_one));
        assert_eq!(lines(&at_once).len(), 5);
        assert_eq!(lines(&at_once)[3]["idempotency_key"], "k3");
        assert_eq!(
            answers[3],
            DeliveryResponse::Sent {
                receipt: Some("log:k3".into())
            }
        );
    }

    #[test]
    fn a_failed_write_makes_every_item_retryable() {
        let (failing, _) = channel(true);
        let requests: Vec<DeliveryRequest> = (0..3).map(request).collect();
        let retryable = DeliveryResponse::Retryable {
            error: "cannot write the log line: disk full".into(),
            retry_after_secs: None,
        };
        assert_eq!(failing.send_batch(&requests), vec![retryable.clone(); 3]);
        assert_eq!(failing.send(&requests[0]), retryable);
    }
}
