//! The `webhook` channel plugin: POSTs each delivery as signed JSON to a URL
//! in the user's own systems — the way to run actions (retry the charge,
//! suspend the account, open a collections ticket).
//!
//! Settings:
//! - `url` (required): `https://…` (or `http://` for loopback and private
//!   networks the operator trusts).
//! - `secret` (required, give it under `secrets:`): the HMAC-SHA256 key.
//! - `request_timeout` (seconds, default 20): keep it below the channel's
//!   `timeout`, so the plugin answers before the host gives up on it.
//!
//! Every request carries `Idempotency-Key` (stable across retries) and
//! `Dunningd-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`,
//! which the receiver verifies with the shared secret (and rejects when `t`
//! is too old, against replays). The body names the customer's id `id`, as
//! events and templates do. Outcomes:
//! 2xx → sent (receipt: the `X-Request-Id` header, else the status);
//! 408, 425, 429 (with `Retry-After`), connection failures → retryable;
//! 5xx and timeouts → unknown (the action may have run; retried with the same
//! key); any other status, redirects included (they are not followed), →
//! permanent, with the receiver's answer.
//!
//! No message shows a secret: the URL is printed with its credentials
//! (`user:password@`, a `token=`-like parameter) hidden, reqwest's errors
//! without their URL, and the signing secret never.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dunningd_plugin_api::redact::{self, Redactor};
use dunningd_plugin_api::wire::{ChannelConfig, DeliveryRequest, DeliveryResponse, Recipient};
use dunningd_plugin_api::{Channel, Plugin, export_plugin};
use hmac::{Hmac, Mac};
use sha2::Sha256;

pub struct Webhook;

pub struct WebhookChannel {
    url: String,
    /// The URL as messages show it (credentials hidden).
    shown: String,
    /// Hides the channel's secrets in messages (the receiver's answer may
    /// quote what it was sent).
    redactor: Redactor,
    secret: Vec<u8>,
    /// Blocking client: it runs its own small runtime, invisible to the host's.
    client: reqwest::blocking::Client,
}

/// The signature header value for a body sent at `t` (unix seconds).
pub fn signature(secret: &[u8], t: u64, body: &[u8]) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// The customer as events and templates name it: `id` (the ABI's
/// `customer_id`), `name`, `email`, `phone`, `locale`, `timezone`, those the
/// event did not give left out. Built from the recipient's own serialisation,
/// so a field the ABI adds later is forwarded too.
fn customer(recipient: &Recipient) -> serde_json::Value {
    let mut customer = serde_json::to_value(recipient).unwrap_or_default();
    if let Some(fields) = customer.as_object_mut()
        && let Some(id) = fields.remove("customer_id")
    {
        fields.insert("id".to_string(), id);
    }
    customer
}

impl Plugin for Webhook {
    const NAME: &'static str = "webhook";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    type Channel = WebhookChannel;

    fn open(config: ChannelConfig) -> Result<WebhookChannel, String> {
        let s = &config.settings;
        let url = s
            .get("url")
            .and_then(|v| v.as_str())
            .ok_or("settings.url: missing (the endpoint to POST to)")?;
        let shown = redact::urls(url).into_owned();
        let parsed = reqwest::Url::parse(url)
            .map_err(|e| format!("settings.url: invalid URL '{shown}': {e}"))?;
        if !matches!(parsed.scheme(), "https" | "http") {
            return Err(format!(
                "settings.url: scheme '{}' is not http or https",
                parsed.scheme()
            ));
        }
        let secret = s
            .get("secret")
            .and_then(|v| v.as_str())
            .filter(|v| !v.is_empty())
            .ok_or("settings.secret: missing (give the signing key under secrets:, e.g. { credential: webhook-secret })")?;
        let timeout = s
            .get("request_timeout")
            .and_then(|v| v.as_u64())
            .unwrap_or(20);
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(timeout))
            // A redirect would re-send a signed action to a URL nobody configured.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("dunningd-webhook/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(WebhookChannel {
            url: url.to_string(),
            shown,
            redactor: Redactor::for_settings(s, &[]),
            secret: secret.as_bytes().to_vec(),
            client,
        })
    }
}

impl Channel for WebhookChannel {
    fn send(&self, request: &DeliveryRequest) -> DeliveryResponse {
        let body = serde_json::json!({
            "id": request.delivery_id,
            "idempotency_key": request.idempotency_key,
            "workflow": request.workflow,
            "step": request.step,
            "template": request.template,
            "case_id": request.case_id,
            "channel": request.channel,
            "attempt": request.attempt,
            "customer": customer(&request.recipient),
            "subject": request.subject,
            "data": request.data,
            "message": request.message,
        });
        let body = match serde_json::to_vec(&body) {
            Ok(body) => body,
            Err(e) => {
                return DeliveryResponse::Permanent {
                    error: format!("cannot encode the webhook body: {e}"),
                };
            }
        };
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let result = self
            .client
            .post(&self.url)
            .header("Content-Type", "application/json")
            .header("Idempotency-Key", &request.idempotency_key)
            .header("Dunningd-Signature", signature(&self.secret, t, &body))
            .body(body)
            .send();
        let hide = |text: String| self.redactor.redact(&text).into_owned();
        let response = match result {
            Ok(response) => response,
            Err(e) if e.is_timeout() => {
                return DeliveryResponse::Unknown {
                    error: format!(
                        "POST {}: timed out; the receiver may have acted",
                        self.shown
                    ),
                };
            }
            Err(e) if e.is_connect() => {
                return DeliveryResponse::Retryable {
                    error: hide(format!(
                        "POST {}: cannot connect: {}",
                        self.shown,
                        redact::describe(&e.without_url())
                    )),
                    retry_after_secs: None,
                };
            }
            Err(e) => {
                return DeliveryResponse::Unknown {
                    error: hide(format!(
                        "POST {}: {}",
                        self.shown,
                        redact::describe(&e.without_url())
                    )),
                };
            }
        };
        let status = response.status();
        let retry_after = response
            .headers()
            .get("Retry-After")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let request_id = response
            .headers()
            .get("X-Request-Id")
            .and_then(|v| v.to_str().ok())
            .map(String::from);
        let text: String = response
            .text()
            .unwrap_or_default()
            .chars()
            .take(300)
            .collect();
        let what = hide(format!(
            "POST {}: HTTP {}{}",
            self.shown,
            status.as_u16(),
            if text.is_empty() {
                String::new()
            } else {
                format!(": {text}")
            }
        ));
        match status.as_u16() {
            200..=299 => DeliveryResponse::Sent {
                receipt: Some(request_id.unwrap_or_else(|| format!("http-{}", status.as_u16()))),
            },
            408 | 425 | 429 => DeliveryResponse::Retryable {
                error: what,
                retry_after_secs: retry_after,
            },
            500..=599 => DeliveryResponse::Unknown { error: what },
            _ => DeliveryResponse::Permanent { error: what },
        }
    }
}

export_plugin!(Webhook);

#[cfg(test)]
mod tests {
    #[test]
    fn signatures_follow_the_documented_recipe() {
        // HMAC-SHA256("secret", "1700000000.{}"), computed independently with Python's hmac module.
        assert_eq!(
            super::signature(b"secret", 1_700_000_000, b"{}"),
            "t=1700000000,v1=b8569b78799ff9e3cbff0fc2d63a33a2b57f3282abd07c37ae5e8e7d79a5f163"
        );
    }
}
