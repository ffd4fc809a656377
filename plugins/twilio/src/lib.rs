//! The `twilio` channel plugin: SMS through Twilio's Messages REST API.
//!
//! Spoken directly with reqwest (rustls) rather than through the `twilio`
//! crate, which hard-codes api.twilio.com, drops Twilio's error body and so
//! cannot tell a permanent failure from a retryable one.
//!
//! Settings:
//! - `account_sid` (required).
//! - `auth_token`, or `api_key_sid` + `api_key_secret` (give secrets under
//!   `secrets:`): HTTP basic auth.
//! - `from` (a number or sender id) or `messaging_service_sid`: exactly one.
//! - `base_url` (default `https://api.twilio.com`): a regional edge
//!   (`https://api.dublin.ie1.twilio.com`) or a test server.
//! - `status_callback`: a URL Twilio calls with delivery updates.
//! - `request_timeout` (seconds, default 20).
//!
//! The message is the template's `body` field. A customer without a phone
//! number is `skipped`; a number that is not E.164 is a permanent failure
//! without a request.
//!
//! No message shows a secret: the auth token or API key secret, and any
//! credentials in `base_url`, are hidden wherever a message would quote
//! them (reqwest's errors are printed without their URL).

use std::time::Duration;

use dunningd_plugin_api::redact::{self, Redactor};
use dunningd_plugin_api::wire::{ChannelConfig, DeliveryRequest, DeliveryResponse};
use dunningd_plugin_api::{Channel, Plugin, export_plugin};
use serde::Deserialize;

pub struct Twilio;

enum Sender {
    From(String),
    MessagingService(String),
}

pub struct TwilioChannel {
    messages_url: String,
    user: String,
    password: String,
    sender: Sender,
    status_callback: Option<String>,
    client: reqwest::blocking::Client,
    /// The API's base URL as messages show it (credentials hidden).
    base: String,
    /// Hides the channel's secrets in messages.
    redactor: Redactor,
}

/// Twilio's error body: `{code, message, status, more_info}`.
#[derive(Debug, Deserialize)]
struct TwilioError {
    code: Option<u32>,
    message: Option<String>,
}

/// What a Twilio error means for the delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// 21610: the recipient replied STOP; never text them again.
    Unsubscribed,
    /// 21211, 21614, 21635, 21612, 21408: this number cannot receive it.
    BadRecipient,
    /// 20003, 20404 on the account: the operator must fix the configuration.
    Credentials,
    /// 20429 / HTTP 429: not processed; always safe to retry.
    RateLimited,
    /// 5xx: Twilio may still have created the message.
    ServerError,
    /// Any other 4xx: the request itself is wrong.
    Rejected,
}

impl ErrorClass {
    pub fn of(http_status: u16, code: Option<u32>) -> ErrorClass {
        match (http_status, code) {
            (_, Some(21610)) => ErrorClass::Unsubscribed,
            (_, Some(21211 | 21614 | 21635 | 21612 | 21408 | 21606)) => ErrorClass::BadRecipient,
            (_, Some(20003 | 20404)) | (401, _) => ErrorClass::Credentials,
            (429, _) | (_, Some(20429)) => ErrorClass::RateLimited,
            (500..=599, _) => ErrorClass::ServerError,
            _ => ErrorClass::Rejected,
        }
    }

    /// Exhaustive on purpose: a new class must decide how it is retried.
    fn response(self, error: String, retry_after_secs: Option<u64>) -> DeliveryResponse {
        match self {
            ErrorClass::Unsubscribed => DeliveryResponse::Permanent {
                error: format!("recipient unsubscribed (replied STOP): {error}"),
            },
            ErrorClass::BadRecipient => DeliveryResponse::Permanent { error },
            ErrorClass::Credentials => DeliveryResponse::Permanent {
                error: format!("{error} (check the channel's account_sid and credentials)"),
            },
            ErrorClass::RateLimited => DeliveryResponse::Retryable {
                error,
                retry_after_secs,
            },
            ErrorClass::ServerError => DeliveryResponse::Unknown { error },
            ErrorClass::Rejected => DeliveryResponse::Permanent { error },
        }
    }
}

/// `+` then 2 to 15 digits, the first not 0.
pub fn is_e164(number: &str) -> bool {
    let Some(digits) = number.strip_prefix('+') else {
        return false;
    };
    (2..=15).contains(&digits.len())
        && digits.chars().all(|c| c.is_ascii_digit())
        && !digits.starts_with('0')
}

fn setting<'a>(s: &'a serde_json::Value, key: &str) -> Option<&'a str> {
    s.get(key)
        .and_then(|v| v.as_str())
        .filter(|v| !v.is_empty())
}

impl Plugin for Twilio {
    const NAME: &'static str = "twilio";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    type Channel = TwilioChannel;

    fn open(config: ChannelConfig) -> Result<TwilioChannel, String> {
        let s = &config.settings;
        let redactor = Redactor::for_settings(s, &[]);
        let account = setting(s, "account_sid").ok_or("settings.account_sid: missing")?;
        let (user, password) = match (
            setting(s, "auth_token"),
            setting(s, "api_key_sid"),
            setting(s, "api_key_secret"),
        ) {
            (Some(token), None, None) => (account.to_string(), token.to_string()),
            (None, Some(key), Some(secret)) => (key.to_string(), secret.to_string()),
            _ => {
                return Err(
                    "settings: give auth_token, or api_key_sid and api_key_secret (as secrets)"
                        .into(),
                );
            }
        };
        let sender = match (setting(s, "from"), setting(s, "messaging_service_sid")) {
            (Some(from), None) => Sender::From(from.to_string()),
            (None, Some(sid)) => Sender::MessagingService(sid.to_string()),
            _ => {
                return Err(
                    "settings: give exactly one of 'from' or 'messaging_service_sid'".into(),
                );
            }
        };
        let base = setting(s, "base_url")
            .unwrap_or("https://api.twilio.com")
            .trim_end_matches('/');
        let shown = redact::urls(base).into_owned();
        reqwest::Url::parse(base)
            .map_err(|e| format!("settings.base_url: invalid URL '{shown}': {e}"))?;
        let timeout = s
            .get("request_timeout")
            .and_then(|v| v.as_u64())
            .unwrap_or(20);
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(timeout))
            .user_agent(concat!("dunningd-twilio/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(TwilioChannel {
            messages_url: format!("{base}/2010-04-01/Accounts/{account}/Messages.json"),
            user,
            password,
            sender,
            status_callback: setting(s, "status_callback").map(String::from),
            client,
            base: shown,
            redactor,
        })
    }
}

impl Channel for TwilioChannel {
    fn send(&self, request: &DeliveryRequest) -> DeliveryResponse {
        let Some(to) = request
            .recipient
            .phone
            .as_deref()
            .filter(|p| !p.trim().is_empty())
        else {
            return DeliveryResponse::Skipped {
                reason: "no phone number".into(),
            };
        };
        if !is_e164(to) {
            return DeliveryResponse::Permanent {
                error: format!(
                    "invalid phone number '{to}': not in E.164 form (+ and up to 15 digits)"
                ),
            };
        }
        let Some(body) = request.message.get("body") else {
            return DeliveryResponse::Permanent {
                error: format!(
                    "template '{}' has no 'body' field for SMS",
                    request.template
                ),
            };
        };
        let mut form: Vec<(&str, &str)> = vec![("To", to), ("Body", body)];
        match &self.sender {
            Sender::From(from) => form.push(("From", from)),
            Sender::MessagingService(sid) => form.push(("MessagingServiceSid", sid)),
        }
        if let Some(callback) = &self.status_callback {
            form.push(("StatusCallback", callback));
        }
        let result = self
            .client
            .post(&self.messages_url)
            .basic_auth(&self.user, Some(&self.password))
            .form(&form)
            .send();
        let hide = |text: String| self.redactor.redact(&text).into_owned();
        let response = match result {
            Ok(response) => response,
            Err(e) if e.is_connect() => {
                return DeliveryResponse::Retryable {
                    error: hide(format!(
                        "cannot connect to Twilio at {}: {}",
                        self.base,
                        redact::describe(&e.without_url())
                    )),
                    retry_after_secs: None,
                };
            }
            Err(e) => {
                return DeliveryResponse::Unknown {
                    error: hide(format!(
                        "Twilio request to {} failed after it was sent: {}",
                        self.base,
                        redact::describe(&e.without_url())
                    )),
                };
            }
        };
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("Retry-After")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let text = response.text().unwrap_or_default();
        if (200..300).contains(&status) {
            return match serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v["sid"].as_str().map(String::from))
            {
                Some(sid) => DeliveryResponse::Sent { receipt: Some(sid) },
                None => DeliveryResponse::Unknown {
                    error: format!("Twilio answered HTTP {status} without a message sid"),
                },
            };
        }
        let parsed: Option<TwilioError> = serde_json::from_str(&text).ok();
        let code = parsed.as_ref().and_then(|e| e.code);
        let message = parsed
            .and_then(|e| e.message)
            .unwrap_or_else(|| text.chars().take(200).collect());
        let error = match code {
            Some(code) => format!("Twilio error {code} (HTTP {status}): {message}"),
            None => format!("Twilio HTTP {status}: {message}"),
        };
        ErrorClass::of(status, code).response(hide(error), retry_after)
    }
}

export_plugin!(Twilio);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_checked_for_e164() {
        for ok in ["+15005550006", "+447700900123", "+491"] {
            assert!(is_e164(ok), "{ok}");
        }
        for bad in [
            "15005550006",
            "+0123",
            "+1 500 555",
            "+",
            "+1234567890123456",
            "tel:+1500",
        ] {
            assert!(!is_e164(bad), "{bad}");
        }
    }

    #[test]
    fn twilio_errors_are_classified() {
        let table = [
            (400, Some(21610), ErrorClass::Unsubscribed),
            (400, Some(21211), ErrorClass::BadRecipient),
            (400, Some(21614), ErrorClass::BadRecipient),
            (401, Some(20003), ErrorClass::Credentials),
            (429, Some(20429), ErrorClass::RateLimited),
            (429, None, ErrorClass::RateLimited),
            (503, None, ErrorClass::ServerError),
            (400, Some(21602), ErrorClass::Rejected),
        ];
        for (status, code, class) in table {
            assert_eq!(ErrorClass::of(status, code), class, "{status} {code:?}");
        }
    }
}
