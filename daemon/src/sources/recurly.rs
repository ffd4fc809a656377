//! Recurly: `recurly-signature` and Recurly's JSON webhooks (the v3
//! notifications; the legacy XML ones are not signed and are not accepted).
//!
//! The signature is `<unix milliseconds>,<hex>[,<hex>…]`: HMAC-SHA256 of
//! `<timestamp>.<body>` under the webhook endpoint's secret key. When a key
//! is regenerated Recurly signs with the new and the previous one for 24
//! hours, so the header carries one signature per live key; any match
//! accepts. The timestamp is in MILLISECONDS and must be within the source's
//! tolerance of now, either way (five minutes by default, as Recurly's
//! libraries: `Recurly::Webhooks::DEFAULT_TOLERANCE` is `5 * 60 * 1000` ms in
//! recurly-client-ruby, `DEFAULT_WEBHOOK_TOLERANCE` five minutes in
//! recurly-client-go). This follows docs.recurly.com "Signature
//! verification" and those two libraries' `verify_signature` /
//! `VerifyWebhookSignature` and their tests.
//!
//! A notification is thin: `{id, object_type, site_id, event_type,
//! event_time}` plus `account_code` (account and billing-info notifications),
//! `uuid` (payments, subscriptions) or `invoice_number` (invoices), where
//! `id` is the id of the object in Recurly's v3 API (docs.recurly.com,
//! "Webhooks › Notifications"). Its id is the `recurly-notification-id`
//! header, which Recurly keeps across retries of one notification; without
//! that header (an offline `sources map`) it is
//! `<object_type>.<event_type>:<id>:<event_time>`.
//!
//! | Recurly notification | dunningd type |
//! |---|---|
//! | `payment.failed` | `payment_failed` |
//! | `charge_invoice.past_due` | `payment_failed` |
//! | `charge_invoice.paid` | `payment_succeeded` |
//! | `billing_info.updated` | `payment_method_updated` |
//! | `subscription.expired` | `subscription_canceled` |
//!
//! `payment.failed` carries the decline; `charge_invoice.past_due` also
//! covers a manually collected invoice that reached its net terms with no
//! payment tried. For an automatically collected invoice both arrive: both
//! are about the same invoice, so the second is recorded on the case the
//! first opened. `payment.succeeded` is ignored (the same payment arrives as
//! `charge_invoice.paid`, which also covers credit payments and invoices
//! marked paid); `subscription.canceled` is ignored (the subscription runs to
//! its term and `subscription.expired` follows); `charge_invoice.failed`
//! (Recurly's own dunning gave up) and `dunning_event.*` are ignored.
//! Recurly sends no JSON notification for an expiring card or a dispute.
//!
//! The customer id is the account's `code`, the id the user's own system
//! gave the account. Everything else is fetched from the v3 API with the
//! source's `api_key` (without one only `billing_info.updated` names a
//! customer): the transaction of a failed payment (account, invoice,
//! subscriptions, amount as a decimal, `status_code` as the decline code,
//! `customer_message` as the failure message, the card), the invoice (amount
//! `balance` due or `paid`, as decimals), the subscription, then the account
//! (email, name, `address.phone`, `preferred_locale`, `preferred_time_zone`)
//! and its billing info (the card). Credentials Recurly returns
//! (`hosted_login_token`, `gateway_token`) are dropped from what is kept.

use axum::http::HeaderMap;
use chrono::{DateTime, TimeZone, Utc};
use serde_json::Value;

use super::{
    Card, Draft, Fetch, Ignored, Refusal, SourceConfig, any_hex_signature, currency,
    decimal_to_minor, header, rfc3339, text,
};

const SIGNATURE: &str = "recurly-signature";
/// Recurly's id of one notification, the same across its retries.
const NOTIFICATION_ID: &str = "recurly-notification-id";

/// Fields of Recurly's objects that are credentials, never kept in an event.
const CREDENTIALS: [&str; 3] = [
    "hosted_login_token",
    "gateway_token",
    "billing_agreement_id",
];

pub fn verify(
    source: &SourceConfig,
    headers: &HeaderMap,
    body: &[u8],
    now: DateTime<Utc>,
) -> Result<(), Refusal> {
    let value = header(headers, SIGNATURE).ok_or(Refusal::Missing(SIGNATURE))?;
    let malformed = |problem: &str| Refusal::Malformed {
        header: SIGNATURE,
        problem: problem.into(),
    };
    // Positional, as Recurly's libraries read it: the first element is the
    // timestamp, every other one a signature.
    let mut parts = value.split(',').map(str::trim);
    let timestamp = parts.next().unwrap_or_default();
    let at_ms: i64 = timestamp
        .parse()
        .map_err(|_| malformed("the first element is not a Unix time in milliseconds"))?;
    let signatures: Vec<&str> = parts.filter(|s| !s.is_empty()).collect();
    if signatures.is_empty() {
        return Err(malformed("no signature after the timestamp"));
    }
    let signed: [&[u8]; 3] = [timestamp.as_bytes(), b".", body];
    if !any_hex_signature(&source.secrets, &signed, signatures.iter().copied()) {
        return Err(Refusal::Mismatch(SIGNATURE));
    }
    let age_ms = now.timestamp_millis().abs_diff(at_ms);
    let tolerance_ms = u64::try_from(source.tolerance.as_millis()).unwrap_or(u64::MAX);
    if age_ms > tolerance_ms {
        return Err(Refusal::TooOld {
            at: Utc
                .timestamp_millis_opt(at_ms)
                .single()
                .unwrap_or(DateTime::<Utc>::MIN_UTC),
            tolerance: source.tolerance.as_secs(),
        });
    }
    Ok(())
}

pub fn map(headers: &HeaderMap, payload: &Value) -> Result<Draft, Ignored> {
    let object_type = payload["object_type"]
        .as_str()
        .unwrap_or("(no object_type)");
    let event = payload["event_type"].as_str().unwrap_or("(no event_type)");
    let provider_type = format!("{object_type}.{event}");
    let provider_type = provider_type.as_str();
    let event_type = match provider_type {
        "payment.failed" | "charge_invoice.past_due" => "payment_failed",
        "charge_invoice.paid" => "payment_succeeded",
        "billing_info.updated" => "payment_method_updated",
        "subscription.expired" => "subscription_canceled",
        "payment.succeeded" => {
            return Err(Ignored::new(
                provider_type,
                "the same payment arrives as charge_invoice.paid, which is mapped",
            ));
        }
        "subscription.canceled" => {
            return Err(Ignored::new(
                provider_type,
                "the subscription runs to the end of its term; subscription.expired is mapped",
            ));
        }
        _ => {
            return Err(Ignored::new(
                provider_type,
                "not an event dunningd maps (see the README's Recurly table)",
            ));
        }
    };
    let Some(id) = text(payload, "/id") else {
        return Err(Ignored::malformed(provider_type, "id"));
    };
    let event_id = match header(headers, NOTIFICATION_ID).filter(|v| !v.is_empty()) {
        Some(notification) => notification.to_string(),
        None => format!(
            "{provider_type}:{id}:{}",
            payload["event_time"].as_str().unwrap_or_default()
        ),
    };
    let mut draft = Draft::new(&event_id, event_type, provider_type, payload.clone());
    draft.occurred_at = rfc3339(payload, "/event_time");
    let id = segment(&id);
    match object_type {
        "payment" => draft.fetches.push(Fetch {
            what: "transaction",
            path: format!("/transactions/{id}"),
        }),
        "charge_invoice" => {
            draft.invoice = text(payload, "/id");
            draft.fetches.push(Fetch {
                what: "invoice",
                path: format!("/invoices/{id}"),
            });
        }
        "subscription" => {
            draft.subscription = text(payload, "/id");
            draft.fetches.push(Fetch {
                what: "subscription",
                path: format!("/subscriptions/{id}"),
            });
        }
        _ => {
            let Some(code) = text(payload, "/account_code") else {
                return Err(Ignored::malformed(provider_type, "account_code"));
            };
            draft.customer_id = Some(code.clone());
            let code = segment(&code);
            draft.fetches.push(Fetch {
                what: "account",
                path: format!("/accounts/code-{code}"),
            });
            draft.fetches.push(Fetch {
                what: "billing_info",
                path: format!("/accounts/code-{code}/billing_info"),
            });
        }
    }
    Ok(draft)
}

pub fn apply(draft: &mut Draft, fetch: &Fetch, object: &Value) {
    match fetch.what {
        "transaction" => {
            from_account_mini(draft, &object["account"]);
            draft.invoice = draft.invoice.take().or_else(|| text(object, "/invoice/id"));
            draft.subscription = draft
                .subscription
                .take()
                .or_else(|| text(object, "/subscription_ids/0"));
            draft.currency = currency(object, "/currency");
            if let Some(code) = &draft.currency {
                draft.amount = decimal_to_minor(object, "/amount", code);
            }
            draft.decline_code = text(object, "/status_code");
            draft.failure_message =
                text(object, "/customer_message").or_else(|| text(object, "/status_message"));
            let card = card_of(&object["payment_method"]);
            if !card.is_empty() {
                draft.card = card;
            }
            keep(draft, "transaction", object);
            fetch_account(draft, object);
        }
        "invoice" => {
            from_account_mini(draft, &object["account"]);
            draft.invoice = draft.invoice.take().or_else(|| text(object, "/id"));
            draft.subscription = draft
                .subscription
                .take()
                .or_else(|| text(object, "/subscription_ids/0"));
            draft.currency = currency(object, "/currency");
            if let Some(code) = &draft.currency {
                draft.amount = match draft.event_type {
                    "payment_succeeded" => decimal_to_minor(object, "/paid", code)
                        .or_else(|| decimal_to_minor(object, "/total", code)),
                    _ => decimal_to_minor(object, "/balance", code),
                };
            }
            keep(draft, "invoice", object);
            fetch_account(draft, object);
        }
        "subscription" => {
            from_account_mini(draft, &object["account"]);
            draft.currency = currency(object, "/currency");
            keep(draft, "subscription", object);
            fetch_account(draft, object);
        }
        "account" => {
            draft.customer_id = draft.customer_id.take().or_else(|| text(object, "/code"));
            draft.email = draft.email.take().or_else(|| text(object, "/email"));
            draft.name = draft.name.take().or_else(|| name_of(object));
            draft.phone = draft
                .phone
                .take()
                .or_else(|| text(object, "/address/phone"));
            draft.locale = draft
                .locale
                .take()
                .or_else(|| text(object, "/preferred_locale"));
            draft.timezone = draft
                .timezone
                .take()
                .or_else(|| text(object, "/preferred_time_zone"));
        }
        "billing_info" => {
            let card = card_of(&object["payment_method"]);
            if !card.is_empty() {
                draft.card = card;
            }
            draft.name = draft.name.take().or_else(|| name_of(object));
            draft.phone = draft
                .phone
                .take()
                .or_else(|| text(object, "/address/phone"));
        }
        _ => {}
    }
}

/// The customer, as far as the account summary in a transaction, invoice or
/// subscription tells it.
fn from_account_mini(draft: &mut Draft, account: &Value) {
    draft.customer_id = draft.customer_id.take().or_else(|| text(account, "/code"));
    draft.email = draft.email.take().or_else(|| text(account, "/email"));
    draft.name = draft.name.take().or_else(|| name_of(account));
}

/// Then the whole account, by its id, for the phone, locale and time zone.
fn fetch_account(draft: &mut Draft, object: &Value) {
    if let Some(account) = text(object, "/account/id") {
        draft.fetches.push(Fetch {
            what: "account",
            path: format!("/accounts/{}", segment(&account)),
        });
    }
}

/// `first_name last_name`, or the company when there is no name.
fn name_of(object: &Value) -> Option<String> {
    let parts: Vec<String> = ["/first_name", "/last_name"]
        .iter()
        .filter_map(|p| text(object, p))
        .collect();
    if parts.is_empty() {
        text(object, "/company")
    } else {
        Some(parts.join(" "))
    }
}

fn card_of(method: &Value) -> Card {
    let number = |pointer: &str| {
        method
            .pointer(pointer)
            .and_then(Value::as_u64)
            .and_then(|n| u32::try_from(n).ok())
    };
    Card {
        brand: text(method, "/card_type").map(|b| b.to_ascii_lowercase()),
        last4: text(method, "/last_four"),
        exp_month: number("/exp_month"),
        exp_year: number("/exp_year"),
    }
}

/// Keeps the fetched object beside the notification in the event's object,
/// without the credentials Recurly includes in it.
fn keep(draft: &mut Draft, key: &str, object: &Value) {
    let mut object = object.clone();
    drop_credentials(&mut object);
    if let Some(map) = draft.object.as_object_mut() {
        map.insert(key.to_string(), object);
    }
}

fn drop_credentials(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for key in CREDENTIALS {
                map.remove(key);
            }
            map.values_mut().for_each(drop_credentials);
        }
        Value::Array(items) => items.iter_mut().for_each(drop_credentials),
        _ => {}
    }
}

/// An id or account code as one path segment: account codes are the user's
/// own and may hold `/`, `?`, spaces or `%`.
fn segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~@+".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::{Provider, SubjectLevel};
    use serde_json::json;

    fn source(secrets: &[&str]) -> SourceConfig {
        crate::sources::test_source(Provider::Recurly, secrets)
    }

    fn signed(secret: &str, t_ms: i64, body: &str) -> String {
        crate::sources::test_hex_signature(
            secret,
            &[t_ms.to_string().as_bytes(), b".", body.as_bytes()],
        )
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        crate::sources::test_headers(pairs)
    }

    #[test]
    fn recurly_client_ruby_test_vector_verifies() {
        // The fixed header, secret and body of recurly-client-ruby's
        // spec/recurly/webhooks_spec.rb ("with notification older than five
        // minutes"): right signature, too old by default.
        let secret = "354fab5bd35f5a0d50845ee7e30165244468b13c2c343f104e4e730a59326d9d";
        let body = r#"{"id":"rjxwmwedwqug","object_type":"account","site_id":"qc326l1hl8k9","event_type":"created","event_time":"2022-09-13T21:18:40Z","account_code":"adfas23zzz14123"}"#;
        let value =
            "1663103925004,ad24699f3beaa24c9af2cc7ada3ce4c835da0090194241b9d3add83d27f14bc3";
        let h = headers(&[(SIGNATURE, value)]);
        let then = Utc.timestamp_millis_opt(1_663_103_925_004 + 1_000).unwrap();
        assert_eq!(
            verify(&source(&[secret]), &h, body.as_bytes(), then),
            Ok(())
        );
        let now = Utc
            .timestamp_millis_opt(1_663_103_925_004 + 300_001)
            .unwrap();
        assert!(matches!(
            verify(&source(&[secret]), &h, body.as_bytes(), now),
            Err(Refusal::TooOld { .. })
        ));
    }

    #[test]
    fn signatures_follow_recurlys_scheme() {
        let body = r#"{"id":"ra93x2i8g69t","object_type":"payment"}"#;
        let t = 1_700_000_000_123;
        let now = Utc.timestamp_millis_opt(t + 10_000).unwrap();
        let good = signed("key_new", t, body);
        let old = signed("key_old", t, body);
        let one = source(&["key_new"]);
        let check = |source: &SourceConfig, value: &str, body: &str, now| {
            verify(
                source,
                &headers(&[(SIGNATURE, value)]),
                body.as_bytes(),
                now,
            )
        };
        let malformed = |problem: &str| Refusal::Malformed {
            header: SIGNATURE,
            problem: problem.into(),
        };
        let accepted = [
            (&one, format!("{t},{good}")),
            // Rotation: both keys sign for 24 hours, in either order.
            (&one, format!("{t},{old},{good}")),
            (&one, format!("{t},{good},{old}")),
            (&one, format!("{t}, {good}")),
            (&source(&["key_x", "key_old"]), format!("{t},{old},{good}")),
        ];
        for (source, value) in accepted {
            assert_eq!(check(source, &value, body, now), Ok(()), "{value}");
        }
        let refused = [
            (
                format!("{t},{good}"),
                r#"{"id":"other"}"#,
                Refusal::Mismatch(SIGNATURE),
            ),
            (format!("{t},{old}"), body, Refusal::Mismatch(SIGNATURE)),
            (
                format!("{},{good}", t + 1),
                body,
                Refusal::Mismatch(SIGNATURE),
            ),
            // Seconds instead of milliseconds do not sign the same text.
            (
                format!("{},{good}", t / 1000),
                body,
                Refusal::Mismatch(SIGNATURE),
            ),
            (format!("{t},zz"), body, Refusal::Mismatch(SIGNATURE)),
            (
                format!("{t}"),
                body,
                malformed("no signature after the timestamp"),
            ),
            (
                format!("{t},"),
                body,
                malformed("no signature after the timestamp"),
            ),
            (
                format!("t={t},v1={good}"),
                body,
                malformed("the first element is not a Unix time in milliseconds"),
            ),
            (
                good.clone(),
                body,
                malformed("the first element is not a Unix time in milliseconds"),
            ),
        ];
        for (value, body, refusal) in refused {
            assert_eq!(check(&one, &value, body, now), Err(refusal), "{value}");
        }
        // Milliseconds: 300 000 ms either way is in, one more is out.
        let value = format!("{t},{good}");
        for (offset, ok) in [
            (300_000, true),
            (-300_000, true),
            (300_001, false),
            (-300_001, false),
        ] {
            let at = Utc.timestamp_millis_opt(t + offset).unwrap();
            let result = check(&one, &value, body, at);
            assert_eq!(result.is_ok(), ok, "{offset} ms: {result:?}");
            if !ok {
                assert!(matches!(
                    result,
                    Err(Refusal::TooOld { tolerance: 300, .. })
                ));
            }
        }
        assert_eq!(
            verify(&one, &HeaderMap::new(), body.as_bytes(), now),
            Err(Refusal::Missing(SIGNATURE))
        );
    }

    fn fixture(name: &str) -> Value {
        let text = match name {
            "payment_failed" => {
                include_str!("../../../tests/fixtures/sources/recurly/payment_failed.json")
            }
            "charge_invoice_past_due" => {
                include_str!("../../../tests/fixtures/sources/recurly/charge_invoice_past_due.json")
            }
            "charge_invoice_paid" => {
                include_str!("../../../tests/fixtures/sources/recurly/charge_invoice_paid.json")
            }
            "billing_info_updated" => {
                include_str!("../../../tests/fixtures/sources/recurly/billing_info_updated.json")
            }
            "subscription_expired" => {
                include_str!("../../../tests/fixtures/sources/recurly/subscription_expired.json")
            }
            "transaction" => {
                include_str!("../../../tests/fixtures/sources/recurly/api_transaction.json")
            }
            "invoice" => include_str!("../../../tests/fixtures/sources/recurly/api_invoice.json"),
            "invoice_paid" => {
                include_str!("../../../tests/fixtures/sources/recurly/api_invoice_paid.json")
            }
            "subscription" => {
                include_str!("../../../tests/fixtures/sources/recurly/api_subscription.json")
            }
            "account" => include_str!("../../../tests/fixtures/sources/recurly/api_account.json"),
            "billing_info" => {
                include_str!("../../../tests/fixtures/sources/recurly/api_billing_info.json")
            }
            _ => panic!("no fixture {name}"),
        };
        serde_json::from_str(text).expect("fixture is JSON")
    }

    /// Maps a notification and answers its fetches from the API fixtures,
    /// as the fetch loop would.
    fn mapped(name: &str) -> (Draft, Vec<String>) {
        let notification = headers(&[(NOTIFICATION_ID, "d2b2c3a4-0000-4000-8000-000000000001")]);
        let mut draft = map(&notification, &fixture(name)).expect("mapped");
        let mut paths = Vec::new();
        while !draft.fetches.is_empty() {
            let fetch = draft.fetches.remove(0);
            paths.push(fetch.path.clone());
            let answer = match (name, fetch.what) {
                ("charge_invoice_paid", "invoice") => "invoice_paid",
                (_, what) => what,
            };
            apply(&mut draft, &fetch, &fixture(answer));
        }
        (draft, paths)
    }

    #[test]
    fn documented_notifications_map_to_events() {
        let table = [
            (
                "payment_failed",
                vec!["/transactions/ra93x2i8g69t", "/accounts/r3oplsj3zo7a"],
                json!({
                    "type": "payment_failed",
                    "subject": "ra8fzs41jdxd",
                    "occurred_at": "2022-07-27T00:17:45+00:00",
                    "customer": {"id": "verena", "email": "verena@example.com", "name": "Verena Example",
                        "phone": "+1 415-555-0100", "locale": "en-US", "timezone": "America/Los_Angeles"},
                    "data": {"provider": "recurly", "source": "recurly", "provider_event_type": "payment.failed",
                        "invoice": "ra8fzs41jdxd", "subscription": "ra8foq26o2dt", "amount": 4990, "currency": "USD",
                        "decline_code": "insufficient_funds",
                        "failure_message": "The transaction was declined due to insufficient funds in your account. Please use a different card or contact your bank.",
                        "card": {"brand": "visa", "last4": "0002", "exp_month": 12, "exp_year": 2027}},
                }),
            ),
            (
                "charge_invoice_past_due",
                vec!["/invoices/ra8fzs41jdxd", "/accounts/r3oplsj3zo7a"],
                json!({
                    "type": "payment_failed",
                    "subject": "ra8fzs41jdxd",
                    "occurred_at": "2022-07-27T00:17:46+00:00",
                    "customer": {"id": "verena", "email": "verena@example.com", "name": "Verena Example",
                        "phone": "+1 415-555-0100", "locale": "en-US", "timezone": "America/Los_Angeles"},
                    "data": {"provider": "recurly", "source": "recurly", "provider_event_type": "charge_invoice.past_due",
                        "invoice": "ra8fzs41jdxd", "subscription": "ra8foq26o2dt", "amount": 4990, "currency": "USD"},
                }),
            ),
            (
                "charge_invoice_paid",
                vec!["/invoices/ra8fzs41jdxd", "/accounts/r3oplsj3zo7a"],
                json!({
                    "type": "payment_succeeded",
                    "subject": "ra8fzs41jdxd",
                    "occurred_at": "2022-07-29T10:02:11+00:00",
                    "customer": {"id": "verena", "email": "verena@example.com", "name": "Verena Example",
                        "phone": "+1 415-555-0100", "locale": "en-US", "timezone": "America/Los_Angeles"},
                    "data": {"provider": "recurly", "source": "recurly", "provider_event_type": "charge_invoice.paid",
                        "invoice": "ra8fzs41jdxd", "subscription": "ra8foq26o2dt", "amount": 4990, "currency": "USD"},
                }),
            ),
            (
                "billing_info_updated",
                vec![
                    "/accounts/code-verena",
                    "/accounts/code-verena/billing_info",
                ],
                json!({
                    "type": "payment_method_updated",
                    "subject": "verena",
                    "occurred_at": "2022-07-26T21:57:05+00:00",
                    "customer": {"id": "verena", "email": "verena@example.com", "name": "Verena Example",
                        "phone": "+1 415-555-0100", "locale": "en-US", "timezone": "America/Los_Angeles"},
                    "data": {"provider": "recurly", "source": "recurly", "provider_event_type": "billing_info.updated",
                        "card": {"brand": "visa", "last4": "1111", "exp_month": 3, "exp_year": 2030}},
                }),
            ),
            (
                "subscription_expired",
                vec!["/subscriptions/ra8foq26o2dt", "/accounts/r3oplsj3zo7a"],
                json!({
                    "type": "subscription_canceled",
                    "subject": "ra8foq26o2dt",
                    "occurred_at": "2022-08-26T22:01:58+00:00",
                    "customer": {"id": "verena", "email": "verena@example.com", "name": "Verena Example",
                        "phone": "+1 415-555-0100", "locale": "en-US", "timezone": "America/Los_Angeles"},
                    "data": {"provider": "recurly", "source": "recurly", "provider_event_type": "subscription.expired",
                        "subscription": "ra8foq26o2dt", "currency": "USD"},
                }),
            ),
        ];
        for (name, paths, expected) in table {
            let (draft, fetched) = mapped(name);
            assert_eq!(fetched, paths, "{name}");
            assert_eq!(draft.id, "d2b2c3a4-0000-4000-8000-000000000001");
            let event = draft.to_json(Provider::Recurly, "recurly", SubjectLevel::Invoice);
            assert_eq!(
                event["id"], "recurly:d2b2c3a4-0000-4000-8000-000000000001",
                "{name}"
            );
            for key in ["type", "subject", "occurred_at", "customer"] {
                assert_eq!(event[key], expected[key], "{name}: {key}");
            }
            let data = event["data"].as_object().expect("data");
            for (key, value) in expected["data"].as_object().expect("data") {
                assert_eq!(&data[key], value, "{name}: data.{key}");
            }
            let extra: Vec<&String> = data
                .keys()
                .filter(|k| {
                    !expected["data"].as_object().unwrap().contains_key(*k) && *k != "object"
                })
                .collect();
            assert!(extra.is_empty(), "{name}: unexpected data fields {extra:?}");
            // The notification stays whole; credentials never do.
            assert_eq!(data["object"]["object_type"], fixture(name)["object_type"]);
            let kept = event.to_string();
            for secret in CREDENTIALS {
                assert!(!kept.contains(secret), "{name} keeps {secret}");
            }
            draft
                .to_event(Provider::Recurly, "recurly", SubjectLevel::Invoice)
                .unwrap_or_else(|e| panic!("{name}: {e:?}"));
        }
    }

    #[test]
    fn without_the_notification_id_header_the_id_is_built_from_the_payload() {
        let draft = map(&HeaderMap::new(), &fixture("payment_failed")).expect("mapped");
        assert_eq!(draft.id, "payment.failed:ra93x2i8g69t:2022-07-27T00:17:45Z");
    }

    #[test]
    fn account_codes_are_one_path_segment() {
        let payload = json!({"id": "ra8etjg1z0pr", "object_type": "billing_info", "event_type": "updated",
            "event_time": "2022-07-26T21:57:05Z", "account_code": "a/b c?d%@example.com"});
        let draft = map(&HeaderMap::new(), &payload).expect("mapped");
        assert_eq!(draft.customer_id.as_deref(), Some("a/b c?d%@example.com"));
        assert_eq!(
            draft.fetches[0].path,
            "/accounts/code-a%2Fb%20c%3Fd%25@example.com"
        );
    }

    #[test]
    fn unmapped_and_malformed_notifications_are_ignored_with_a_reason() {
        for (payload, reason) in [
            (
                json!({"id": "r1", "object_type": "account", "event_type": "created", "account_code": "a"}),
                "not an event dunningd maps",
            ),
            (
                json!({"id": "r1", "object_type": "payment", "event_type": "succeeded"}),
                "charge_invoice.paid",
            ),
            (
                json!({"id": "r1", "object_type": "subscription", "event_type": "canceled"}),
                "subscription.expired",
            ),
            (
                json!({"id": "r1", "object_type": "charge_invoice", "event_type": "failed"}),
                "not an event dunningd maps",
            ),
            (
                json!({"object_type": "payment", "event_type": "failed"}),
                "'id'",
            ),
            (
                json!({"id": "r1", "object_type": "billing_info", "event_type": "updated"}),
                "'account_code'",
            ),
            (
                json!({"type": "invoice.payment_failed"}),
                "not an event dunningd maps",
            ),
        ] {
            let ignored = map(&HeaderMap::new(), &payload).expect_err("ignored");
            assert!(
                ignored.reason.contains(reason),
                "{ignored} should say {reason}"
            );
        }
    }
}
