//! The `testkit` plugin misbehaves on purpose, so tests can prove the daemon
//! survives plugins that panic, hang, fail or answer garbage.
//!
//! Settings:
//! - `behaviour`: `ok` (default), `panic`, `hang`, `permanent`, `retryable`,
//!   `unknown`, `skipped` or `abort` (takes the whole daemon down, as a
//!   plugin with a memory bug would: nothing can catch it). (A plugin
//!   answering bytes that are not JSON is tested in the host against a
//!   hand-built vtable: the SDK cannot emit one.)
//! - `fail_first`: answer `retryable` for the first N calls of each delivery,
//!   then behave as `behaviour`.
//! - `hang_secs`: how long `hang` sleeps (default 3600).
//! - `delay_ms`: how long every call takes before it answers (a slow
//!   provider; default 0).
//! - `record`: a file that gets one JSON line per call, written before the
//!   plugin acts, so tests can count calls (even those that hang or panic).
//! - `retry_after_secs`: the hint a `retryable` answer carries (default none).
//! - `error`: the text of a `retryable`, `permanent` or `unknown` answer,
//!   repeated `error_repeat` times (default 1): answers as large or as odd as
//!   a broken plugin's.
//! - `receipt`: the receipt an `ok` answer carries (default
//!   `testkit:<idempotency key>`).

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::sync::Mutex;
use std::time::Duration;

use dunningd_plugin_api::wire::{ChannelConfig, DeliveryRequest, DeliveryResponse};
use dunningd_plugin_api::{Channel, Plugin, export_plugin};

struct Testkit;

struct TestChannel {
    channel: String,
    behaviour: String,
    fail_first: u64,
    hang: Duration,
    delay: Duration,
    retry_after_secs: Option<u64>,
    error: Option<String>,
    receipt: Option<String>,
    record: Option<Mutex<std::fs::File>>,
    calls: Mutex<HashMap<String, u64>>,
}

const BEHAVIOURS: &[&str] = &[
    "ok",
    "panic",
    "hang",
    "permanent",
    "retryable",
    "unknown",
    "skipped",
    "abort",
];

impl Plugin for Testkit {
    const NAME: &'static str = "testkit";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    type Channel = TestChannel;

    fn open(config: ChannelConfig) -> Result<TestChannel, String> {
        let s = &config.settings;
        let behaviour = s
            .get("behaviour")
            .and_then(|v| v.as_str())
            .unwrap_or("ok")
            .to_string();
        if !BEHAVIOURS.contains(&behaviour.as_str()) {
            return Err(format!(
                "settings.behaviour: unknown behaviour '{behaviour}' (expected one of: {})",
                BEHAVIOURS.join(", ")
            ));
        }
        let record = match s.get("record").and_then(|v| v.as_str()) {
            None => None,
            Some(path) => Some(Mutex::new(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| format!("settings.record: cannot open '{path}': {e}"))?,
            )),
        };
        Ok(TestChannel {
            channel: config.channel,
            behaviour,
            fail_first: s.get("fail_first").and_then(|v| v.as_u64()).unwrap_or(0),
            hang: Duration::from_secs(s.get("hang_secs").and_then(|v| v.as_u64()).unwrap_or(3600)),
            delay: Duration::from_millis(s.get("delay_ms").and_then(|v| v.as_u64()).unwrap_or(0)),
            retry_after_secs: s.get("retry_after_secs").and_then(|v| v.as_u64()),
            error: s.get("error").and_then(|v| v.as_str()).map(|e| {
                let repeat = s.get("error_repeat").and_then(|v| v.as_u64()).unwrap_or(1);
                e.repeat(repeat as usize)
            }),
            receipt: s
                .get("receipt")
                .and_then(|v| v.as_str())
                .map(str::to_string),
            record,
            calls: Mutex::new(HashMap::new()),
        })
    }
}

impl TestChannel {
    fn record(&self, request: &DeliveryRequest) {
        if let Some(file) = &self.record {
            let line = serde_json::json!({
                "channel": self.channel,
                "behaviour": self.behaviour,
                "delivery_id": request.delivery_id,
                "idempotency_key": request.idempotency_key,
                "attempt": request.attempt,
                "message": request.message,
            });
            let mut f = file.lock().unwrap_or_else(|p| p.into_inner());
            let _ = writeln!(f, "{line}").and_then(|_| f.flush());
        }
    }
}

impl Channel for TestChannel {
    fn send(&self, request: &DeliveryRequest) -> DeliveryResponse {
        self.record(request);
        std::thread::sleep(self.delay);
        let call = {
            let mut calls = self.calls.lock().unwrap_or_else(|p| p.into_inner());
            let n = calls.entry(request.delivery_id.clone()).or_insert(0);
            *n += 1;
            *n
        };
        if call <= self.fail_first {
            return DeliveryResponse::Retryable {
                error: format!("testkit: failing call {call} of {}", self.fail_first),
                retry_after_secs: None,
            };
        }
        let error = |default: &str| self.error.clone().unwrap_or_else(|| default.to_string());
        match self.behaviour.as_str() {
            "panic" => panic!("testkit told to panic on delivery {}", request.delivery_id),
            "abort" => std::process::abort(),
            "hang" => {
                std::thread::sleep(self.hang);
                DeliveryResponse::Sent {
                    receipt: Some("testkit:late".into()),
                }
            }
            "permanent" => DeliveryResponse::Permanent {
                error: error("testkit: permanent failure"),
            },
            "retryable" => DeliveryResponse::Retryable {
                error: error("testkit: retryable failure"),
                retry_after_secs: self.retry_after_secs,
            },
            "unknown" => DeliveryResponse::Unknown {
                error: error("testkit: outcome unknown"),
            },
            "skipped" => DeliveryResponse::Skipped {
                reason: "testkit: skipped".into(),
            },
            _ => DeliveryResponse::Sent {
                receipt: Some(
                    self.receipt
                        .clone()
                        .unwrap_or_else(|| format!("testkit:{}", request.idempotency_key)),
                ),
            },
        }
    }
}

export_plugin!(Testkit);
