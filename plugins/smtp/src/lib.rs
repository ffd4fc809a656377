//! The `smtp` channel plugin: email through an SMTP relay, with lettre.
//!
//! Settings:
//! - `url` (required): `smtp://host:25` (plain, for a relay on loopback),
//!   `smtp://host:587?tls=required` (STARTTLS, or `tls=opportunistic`),
//!   `smtps://host:465` (implicit TLS).
//! - `username`, and `password` under `secrets:`: SMTP AUTH.
//! - `from` (required), `reply_to`: addresses, `"Billing <billing@example.com>"`.
//! - `message_id_domain`: the right side of `Message-ID` (default: the `from` domain).
//! - `request_timeout` (seconds, default 20).
//!
//! The template's `subject` is required; `text` and `html` make a
//! multipart/alternative message when both are given. An `unsubscribe_url`
//! field adds `List-Unsubscribe` and one-click `List-Unsubscribe-Post`.
//! `Message-ID` is `<idempotency key@domain>`, the same for every attempt, so
//! a repeated send is recognisable. Connections are pooled.
//!
//! Outcomes: the relay's 2xx → sent (receipt: its reply, e.g. the queue id);
//! 4xx → retryable; 5xx → permanent with the relay's reply (often the relay's
//! own policy — authentication, sender — rather than the recipient: the
//! message says which it was); connection and TLS failures → retryable;
//! a timeout → unknown (the relay may have accepted it).
//!
//! No message shows a secret: the relay's URL is printed with its password
//! hidden, and the password (in the URL or the `password` secret) is hidden
//! wherever a message would quote it, the relay's replies included.

use std::time::Duration;

use dunningd_plugin_api::redact::{self, Redactor};
use dunningd_plugin_api::wire::{ChannelConfig, DeliveryRequest, DeliveryResponse};
use dunningd_plugin_api::{Channel, Plugin, export_plugin};
use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{Message, SmtpTransport, Transport};

pub struct Smtp;

pub struct SmtpChannel {
    transport: SmtpTransport,
    from: Mailbox,
    reply_to: Option<Mailbox>,
    message_id_domain: String,
    /// The relay's URL as messages show it (password hidden).
    relay: String,
    /// Hides the channel's secrets in messages.
    redactor: Redactor,
}

fn setting<'a>(s: &'a serde_json::Value, key: &str) -> Option<&'a str> {
    s.get(key)
        .and_then(|v| v.as_str())
        .filter(|v| !v.is_empty())
}

impl Plugin for Smtp {
    const NAME: &'static str = "smtp";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    type Channel = SmtpChannel;

    fn open(config: ChannelConfig) -> Result<SmtpChannel, String> {
        let s = &config.settings;
        let redactor = Redactor::for_settings(s, &[]);
        let url = setting(s, "url")
            .ok_or("settings.url: missing (e.g. smtp://relay.example.com:587?tls=required)")?;
        let relay = redact::urls(url).into_owned();
        let mut builder = SmtpTransport::from_url(url).map_err(|e| {
            redactor
                .redact(&format!("settings.url: '{relay}': {e}"))
                .into_owned()
        })?;
        match (setting(s, "username"), setting(s, "password")) {
            (Some(user), Some(password)) => {
                builder = builder.credentials(Credentials::new(user.into(), password.into()))
            }
            (None, None) => {}
            _ => {
                return Err(
                    "settings: give both username and password (as a secret), or neither".into(),
                );
            }
        }
        let timeout = s
            .get("request_timeout")
            .and_then(|v| v.as_u64())
            .unwrap_or(20);
        let transport = builder.timeout(Some(Duration::from_secs(timeout))).build();
        let from: Mailbox = setting(s, "from")
            .ok_or("settings.from: missing")?
            .parse()
            .map_err(|e| format!("settings.from: {e}"))?;
        let reply_to = match setting(s, "reply_to") {
            None => None,
            Some(text) => Some(
                text.parse()
                    .map_err(|e| format!("settings.reply_to: {e}"))?,
            ),
        };
        let message_id_domain = setting(s, "message_id_domain")
            .map(String::from)
            .unwrap_or_else(|| from.email.domain().to_string());
        Ok(SmtpChannel {
            transport,
            from,
            reply_to,
            message_id_domain,
            relay,
            redactor,
        })
    }
}

impl SmtpChannel {
    fn build(&self, request: &DeliveryRequest, to: Mailbox) -> Result<Message, String> {
        let field = |name: &str| request.message.get(name).filter(|v| !v.is_empty());
        let subject = field("subject").ok_or_else(|| {
            format!(
                "template '{}' has no 'subject' field for email",
                request.template
            )
        })?;
        let mut builder = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(subject)
            .message_id(Some(format!(
                "<{}@{}>",
                request.idempotency_key, self.message_id_domain
            )));
        if let Some(reply_to) = &self.reply_to {
            builder = builder.reply_to(reply_to.clone());
        }
        if let Some(url) = field("unsubscribe_url") {
            builder = builder
                .raw_header(HeaderValue::new(
                    HeaderName::new_from_ascii_str("List-Unsubscribe"),
                    format!("<{url}>"),
                ))
                .raw_header(HeaderValue::new(
                    HeaderName::new_from_ascii_str("List-Unsubscribe-Post"),
                    "List-Unsubscribe=One-Click".to_string(),
                ));
        }
        let result = match (field("text"), field("html")) {
            (Some(text), Some(html)) => builder.multipart(MultiPart::alternative_plain_html(
                text.clone(),
                html.clone(),
            )),
            (Some(text), None) => builder.singlepart(
                SinglePart::builder()
                    .header(ContentType::TEXT_PLAIN)
                    .body(text.clone()),
            ),
            (None, Some(html)) => builder.singlepart(
                SinglePart::builder()
                    .header(ContentType::TEXT_HTML)
                    .body(html.clone()),
            ),
            (None, None) => {
                return Err(format!(
                    "template '{}' has neither 'text' nor 'html' for email",
                    request.template
                ));
            }
        };
        result.map_err(|e| format!("cannot build the message: {e}"))
    }
}

impl Channel for SmtpChannel {
    fn send(&self, request: &DeliveryRequest) -> DeliveryResponse {
        let Some(address) = request
            .recipient
            .email
            .as_deref()
            .filter(|a| !a.trim().is_empty())
        else {
            return DeliveryResponse::Skipped {
                reason: "no email address".into(),
            };
        };
        let to = match address.parse::<lettre::Address>() {
            Ok(address) => Mailbox::new(request.recipient.name.clone(), address),
            Err(e) => {
                return DeliveryResponse::Permanent {
                    error: format!("invalid email address '{address}': {e}"),
                };
            }
        };
        let message = match self.build(request, to) {
            Ok(message) => message,
            Err(error) => return DeliveryResponse::Permanent { error },
        };
        match self.transport.send(&message) {
            Ok(response) => {
                let reply: Vec<&str> = response.message().collect();
                DeliveryResponse::Sent {
                    receipt: Some(
                        format!("{} {}", response.code(), reply.join(" "))
                            .trim()
                            .to_string(),
                    ),
                }
            }
            Err(e) => {
                let hide = |text: String| self.redactor.redact(&text).into_owned();
                let relay = &self.relay;
                if e.is_permanent() {
                    DeliveryResponse::Permanent {
                        error: hide(format!("the relay {relay} refused the message: {e}")),
                    }
                } else if e.is_transient() {
                    DeliveryResponse::Retryable {
                        error: hide(format!("the relay {relay} deferred the message: {e}")),
                        retry_after_secs: None,
                    }
                } else if e.is_timeout() {
                    DeliveryResponse::Unknown {
                        error: hide(format!(
                            "SMTP timed out; the relay {relay} may have accepted the message: {e}"
                        )),
                    }
                } else {
                    DeliveryResponse::Retryable {
                        error: hide(format!("cannot reach the relay {relay}: {e}")),
                        retry_after_secs: None,
                    }
                }
            }
        }
    }
}

export_plugin!(Smtp);
