//! The JSON payloads that cross the plugin boundary.
//!
//! The C ABI carries opaque UTF-8 JSON buffers; these types are their schema.
//! Fields are only ever added (with `#[serde(default)]`), never renamed or
//! removed, so an older plugin keeps working with a newer host and the other
//! way round. `ABI.md` documents the same schema for plugins in other languages.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One message for one recipient on one channel: what the host asks a plugin
/// to send.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliveryRequest {
    /// The delivery's id in the daemon's store.
    pub delivery_id: String,
    /// Stable across retries, restarts and daemons. Providers that support it
    /// should receive it (an `Idempotency-Key` header, a `Message-ID`) so they
    /// can drop the rare duplicate of an at-least-once send.
    pub idempotency_key: String,
    /// The configured channel name (`email`, `sms` …), not the plugin name.
    pub channel: String,
    pub case_id: String,
    pub workflow: String,
    pub step: String,
    pub template: String,
    /// 1 for the first attempt.
    pub attempt: u32,
    pub recipient: Recipient,
    /// The rendered template: each template field (`subject`, `text`, `html`,
    /// `title`, `body`, `url` …) rendered to a string.
    pub message: BTreeMap<String, String>,
    /// The triggering event's `data`, for plugins that forward structure
    /// (webhook) rather than text.
    #[serde(default)]
    pub data: Value,
    /// The triggering event's subject (an invoice id, usually).
    #[serde(default)]
    pub subject: String,
}

/// Who the message is for, taken from the event that started the case.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Recipient {
    pub customer_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locale: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
}

/// What became of a send, as the plugin reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum DeliveryResponse {
    /// The provider accepted the message. `receipt` is its id for it
    /// (SMTP queue id, Twilio message SID …).
    Sent {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        receipt: Option<String>,
    },
    /// Not sent, and trying again later may work (rate limit, 4xx, provider
    /// down). `retry_after_secs` is the provider's hint, if it gave one.
    Retryable {
        error: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after_secs: Option<u64>,
    },
    /// Not sent, and trying again will not help (invalid number, recipient
    /// unsubscribed, 5xx from the relay).
    Permanent { error: String },
    /// The plugin cannot tell whether the provider took the message (a
    /// timeout after the request was written). Retried with the same
    /// idempotency key.
    Unknown { error: String },
    /// Deliberately not sent (e.g. no address for this channel).
    Skipped { reason: String },
}

/// What the host hands a plugin when it opens a channel: the channel's name
/// and its `settings` from the daemon configuration, with secrets already
/// resolved from files or the environment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChannelConfig {
    pub channel: String,
    #[serde(default)]
    pub settings: Value,
}
