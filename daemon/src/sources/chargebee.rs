//! Chargebee: basic auth on the webhook URL and Chargebee's events.
//!
//! Chargebee does not sign its webhooks: the webhook's settings take a user
//! name and a password ("Protect webhook URL with basic authentication"),
//! sent as `Authorization: Basic base64(user:password)` on every call, as
//! `basicAuthValidator` in chargebee/chargebee-node
//! (`src/resources/webhook/auth.ts`) reads it. The source's `username` is
//! the user name and its `signing_secret` the password (several while the
//! password is changed: any accepts). Both are compared in constant time.
//! There is no signed timestamp, so no tolerance applies: a replay of a
//! captured request is a duplicate by its event id and changes nothing.
//!
//! The envelope is `{id, occurred_at (Unix seconds), source, object:
//! "event", api_version, content: {…}, event_type}`; `content` holds the
//! resources the event is about, whole (`transaction`, `invoice`,
//! `customer`, `subscription`, `card`, `payment_source`). Only API
//! version v2 is read.
//!
//! | Chargebee event | dunningd type |
//! |---|---|
//! | `payment_failed` | `payment_failed` |
//! | `payment_succeeded` | `payment_succeeded` |
//! | `payment_source_added`, `payment_source_updated` | `payment_method_updated` |
//! | `card_expiry_reminder`, `card_expired` | `card_expiring` |
//! | `subscription_cancelled` | `subscription_canceled` |
//!
//! `card_expired` maps to `card_expiring` too: the card's expiry (in the
//! event) says it has passed, and the customer must still replace it before
//! the next renewal fails. Ignored on purpose: `card_added` and
//! `card_updated` (the same change arrives as `payment_source_added` /
//! `payment_source_updated`), `payment_source_expiring` /
//! `payment_source_expired` (the same card arrives as `card_expiry_reminder`
//! / `card_expired`). Chargebee's event list has no dispute events.
//!
//! The customer id is Chargebee's `customer.id`, which the merchant may set
//! to its own id when creating the customer. The case's invoice is the
//! Chargebee invoice id. Amounts are in minor units already. The attempt is
//! the number of the invoice's `dunning_attempts`; the next retry is its
//! `next_retry_at`. Chargebee's hosted pages to update a card must be created
//! by a POST, so no update URL is given. Every event carries the customer,
//! so nothing is fetched; `api_base` (`https://{site}.chargebee.com/api/v2`)
//! and `api_key` are accepted for a later need.

use axum::http::HeaderMap;
use base64::Engine;
use chrono::{DateTime, Utc};
use hmac::Mac;
use serde_json::Value;

use super::{
    Card, Draft, Fetch, Ignored, Refusal, SourceConfig, currency, header, hmac_sha256, text,
    unix_time,
};

const AUTHORIZATION: &str = "Authorization";

pub fn verify(
    source: &SourceConfig,
    headers: &HeaderMap,
    body: &[u8],
    now: DateTime<Utc>,
) -> Result<(), Refusal> {
    // Basic auth covers the request, not the body, and carries no time.
    let _ = (body, now);
    let value = header(headers, AUTHORIZATION).ok_or(Refusal::Missing(AUTHORIZATION))?;
    let malformed = |problem: &str| Refusal::Malformed {
        header: AUTHORIZATION,
        problem: problem.into(),
    };
    let encoded = match value.trim().split_once(' ') {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("basic") => rest.trim(),
        _ => return Err(malformed("not Basic credentials")),
    };
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|_| malformed("credentials are not base64"))?;
    let colon = decoded.iter().position(|&b| b == b':').ok_or(malformed(
        "credentials have no ':' between user and password",
    ))?;
    let (user, password) = (&decoded[..colon], &decoded[colon + 1..]);
    let expected_user = source.username.as_deref().unwrap_or_default().as_bytes();
    // Both compared whatever the first gives, so the time tells nothing.
    let user_ok = same(user, expected_user);
    let password_ok = source
        .secrets
        .iter()
        .fold(false, |ok, secret| same(password, secret) | ok);
    if user_ok & password_ok {
        Ok(())
    } else {
        Err(Refusal::Mismatch(AUTHORIZATION))
    }
}

/// Constant-time equality of two byte strings of any lengths: their MACs
/// under one key are compared, which takes the same time whatever the
/// contents and reveals neither length.
fn same(given: &[u8], expected: &[u8]) -> bool {
    const KEY: &[u8] = b"dunningd chargebee basic auth";
    let tag = hmac_sha256(KEY, &[expected]).finalize().into_bytes();
    hmac_sha256(KEY, &[given]).verify_slice(&tag).is_ok()
}

pub fn map(payload: &Value) -> Result<Draft, Ignored> {
    let provider_type = payload["event_type"].as_str().unwrap_or("(no event_type)");
    let Some(id) = text(payload, "/id") else {
        return Err(Ignored::malformed(provider_type, "id"));
    };
    let content = &payload["content"];
    if !content.is_object() {
        return Err(Ignored::malformed(provider_type, "content"));
    }
    if let Some(version) = text(payload, "/api_version")
        && version != "v2"
    {
        return Err(Ignored::new(
            provider_type,
            format!("api_version '{version}': set the webhook's API version to v2"),
        ));
    }
    let (event_type, main) = match provider_type {
        "payment_failed" => ("payment_failed", "transaction"),
        "payment_succeeded" => ("payment_succeeded", "transaction"),
        "payment_source_added" | "payment_source_updated" => {
            ("payment_method_updated", "payment_source")
        }
        "card_expiry_reminder" | "card_expired" => ("card_expiring", "card"),
        "subscription_cancelled" => ("subscription_canceled", "subscription"),
        "card_added" | "card_updated" => {
            return Err(Ignored::new(
                provider_type,
                "the same change arrives as payment_source_added/updated, which is mapped",
            ));
        }
        "payment_source_expiring" | "payment_source_expired" => {
            return Err(Ignored::new(
                provider_type,
                "the same card arrives as card_expiry_reminder/card_expired, which is mapped",
            ));
        }
        _ => {
            return Err(Ignored::new(
                provider_type,
                "not an event dunningd maps (see the README's Chargebee table)",
            ));
        }
    };
    let object = &content[main];
    if !object.is_object() {
        return Err(Ignored::malformed(
            provider_type,
            &format!("content.{main}"),
        ));
    }
    // The event's resources, whole: the transaction alone would lose the
    // invoice's dunning state, the customer and the card.
    let mut draft = Draft::new(&id, event_type, provider_type, content.clone());
    draft.occurred_at = unix_time(payload, "/occurred_at");
    let customer = &content["customer"];
    draft.customer_id = text(customer, "/id").or_else(|| text(object, "/customer_id"));
    draft.email = text(customer, "/email");
    let name = [text(customer, "/first_name"), text(customer, "/last_name")]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(" ");
    draft.name = (!name.is_empty()).then_some(name);
    draft.phone = text(customer, "/phone");
    draft.locale = text(customer, "/locale");
    draft.subscription = text(&content["subscription"], "/id")
        .or_else(|| text(object, "/subscription_id"))
        .or_else(|| text(&content["invoice"], "/subscription_id"));
    draft.currency = currency(object, "/currency_code")
        .or_else(|| currency(customer, "/preferred_currency_code"));
    match main {
        "transaction" => payment(&mut draft, content),
        "payment_source" => draft.card = payment_source_card(&object["card"]),
        "card" => draft.card = card_of(object),
        _ => {}
    }
    if draft.customer_id.is_none() {
        return Err(Ignored::new(
            provider_type,
            "the event names no customer, so no case can be about one",
        ));
    }
    Ok(draft)
}

fn payment(draft: &mut Draft, content: &Value) {
    let transaction = &content["transaction"];
    let invoice = &content["invoice"];
    draft.invoice =
        text(invoice, "/id").or_else(|| text(transaction, "/linked_invoices/0/invoice_id"));
    draft.amount = transaction["amount"]
        .as_i64()
        .or_else(|| invoice["amount_due"].as_i64());
    if draft.event_type == "payment_failed" {
        draft.decline_code = text(transaction, "/error_code");
        draft.failure_message = text(transaction, "/error_text");
        draft.attempt = invoice["dunning_attempts"]
            .as_array()
            .and_then(|a| u32::try_from(a.len()).ok())
            .filter(|n| *n > 0);
        draft.next_retry_at = unix_time(invoice, "/next_retry_at");
    }
    draft.card = card_of(&content["card"]);
}

/// Chargebee's `card` resource: `card_type`, `last4`, `expiry_month`,
/// `expiry_year`.
fn card_of(card: &Value) -> Card {
    Card {
        brand: text(card, "/card_type"),
        ..payment_source_card(card)
    }
}

/// A payment source's `card`, which names the brand `brand`.
fn payment_source_card(card: &Value) -> Card {
    let number = |key: &str| card[key].as_u64().and_then(|n| u32::try_from(n).ok());
    Card {
        brand: text(card, "/brand"),
        last4: text(card, "/last4"),
        exp_month: number("expiry_month"),
        exp_year: number("expiry_year"),
    }
}

/// Nothing is fetched for Chargebee (every event carries its customer).
pub fn apply(draft: &mut Draft, fetch: &Fetch, object: &Value) {
    let _ = (draft, fetch, object);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::{Provider, SubjectLevel};
    use chrono::TimeZone;
    use serde_json::json;

    fn source(username: &str, passwords: &[&str]) -> SourceConfig {
        SourceConfig {
            username: Some(username.into()),
            ..crate::sources::test_source(Provider::Chargebee, passwords)
        }
    }

    fn basic(user: &str, password: &str) -> String {
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        format!("Basic {encoded}")
    }

    fn headers(value: &str) -> HeaderMap {
        crate::sources::test_headers(&[("authorization", value)])
    }

    #[test]
    fn basic_auth_is_checked_as_chargebee_sends_it() {
        let body = br#"{"id":"ev_1"}"#;
        // No timestamp: a day late is as good as now.
        let now = Utc.timestamp_opt(1_700_000_000, 0).unwrap();
        let one = source("dunningd", &["s3cret:with:colons"]);
        let rotating = source("dunningd", &["old-pass", "new-pass"]);
        let check = |source: &SourceConfig, value: &str| verify(source, &headers(value), body, now);
        let malformed = |problem: &str| Refusal::Malformed {
            header: AUTHORIZATION,
            problem: problem.into(),
        };
        let table = [
            (&one, basic("dunningd", "s3cret:with:colons"), Ok(())),
            (
                &one,
                basic("dunningd", "s3cret:with:colons").replace("Basic", "basic"),
                Ok(()),
            ),
            (&rotating, basic("dunningd", "old-pass"), Ok(())),
            (&rotating, basic("dunningd", "new-pass"), Ok(())),
            (
                &one,
                basic("dunningd", "wrong"),
                Err(Refusal::Mismatch(AUTHORIZATION)),
            ),
            (
                &one,
                basic("someone", "s3cret:with:colons"),
                Err(Refusal::Mismatch(AUTHORIZATION)),
            ),
            (
                &one,
                basic("dunningd", "s3cret:with:colon"),
                Err(Refusal::Mismatch(AUTHORIZATION)),
            ),
            (&one, basic("", ""), Err(Refusal::Mismatch(AUTHORIZATION))),
            (
                &one,
                "Bearer s3cret".to_string(),
                Err(malformed("not Basic credentials")),
            ),
            (
                &one,
                "Basic !!!".to_string(),
                Err(malformed("credentials are not base64")),
            ),
            (
                &one,
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode("no-colon")
                ),
                Err(malformed(
                    "credentials have no ':' between user and password",
                )),
            ),
        ];
        for (source, value, expected) in table {
            assert_eq!(check(source, &value), expected, "{value}");
        }
        assert_eq!(
            verify(&one, &HeaderMap::new(), body, now),
            Err(Refusal::Missing(AUTHORIZATION))
        );
        let later = Utc.timestamp_opt(1_800_000_000, 0).unwrap();
        assert_eq!(
            verify(
                &one,
                &headers(&basic("dunningd", "s3cret:with:colons")),
                body,
                later
            ),
            Ok(())
        );
    }

    fn fixture(name: &str) -> Value {
        let text = match name {
            "payment_failed" => {
                include_str!("../../../tests/fixtures/sources/chargebee/payment_failed.json")
            }
            "payment_succeeded" => {
                include_str!("../../../tests/fixtures/sources/chargebee/payment_succeeded.json")
            }
            "payment_source_updated" => include_str!(
                "../../../tests/fixtures/sources/chargebee/payment_source_updated.json"
            ),
            "payment_source_added" => {
                include_str!("../../../tests/fixtures/sources/chargebee/payment_source_added.json")
            }
            "card_expiry_reminder" => {
                include_str!("../../../tests/fixtures/sources/chargebee/card_expiry_reminder.json")
            }
            "card_expired" => {
                include_str!("../../../tests/fixtures/sources/chargebee/card_expired.json")
            }
            "subscription_cancelled" => include_str!(
                "../../../tests/fixtures/sources/chargebee/subscription_cancelled.json"
            ),
            other => panic!("no fixture {other}"),
        };
        serde_json::from_str(text).expect("fixture is JSON")
    }

    #[test]
    fn documented_events_map_field_by_field() {
        let customer = json!({
            "id": "__test__8asukSOXdvg4PD",
            "email": "richard@acme.com",
            "name": "Richard Fox",
            "phone": "+1 415 555 0148",
            "locale": "fr-FR",
        });
        let sub = "__test__8asukSOXdvliPO";
        let visa = json!({"brand": "visa", "last4": "1111", "exp_month": 12, "exp_year": 2026});
        let mastercard =
            json!({"brand": "mastercard", "last4": "4444", "exp_month": 3, "exp_year": 2029});
        let table = [
            (
                "payment_failed",
                "payment_failed",
                "2023-12-15T13:06:41+00:00",
                "__demo_inv__42",
                json!({
                    "invoice": "__demo_inv__42",
                    "subscription": sub,
                    "amount": 1000,
                    "currency": "USD",
                    "decline_code": "card_declined",
                    "failure_message": "Your card was declined.",
                    "attempt": 2,
                    "next_retry_at": "2023-12-18T13:06:40+00:00",
                    "card": visa,
                }),
            ),
            (
                "payment_succeeded",
                "payment_succeeded",
                "2023-12-15T13:06:41+00:00",
                "__demo_inv__42",
                json!({
                    "invoice": "__demo_inv__42",
                    "subscription": sub,
                    "amount": 1000,
                    "currency": "USD",
                    "card": visa,
                }),
            ),
            (
                "payment_source_updated",
                "payment_method_updated",
                "2023-12-15T13:08:20+00:00",
                "__test__8asukSOXdvg4PD",
                json!({"currency": "USD", "card": mastercard}),
            ),
            (
                "payment_source_added",
                "payment_method_updated",
                "2023-12-15T13:08:20+00:00",
                "__test__8asukSOXdvg4PD",
                json!({"currency": "USD", "card": mastercard}),
            ),
            (
                "card_expiry_reminder",
                "card_expiring",
                "2023-12-15T13:10:00+00:00",
                "__test__8asukSOXdvg4PD",
                json!({"currency": "USD", "card": {"brand": "visa", "last4": "1111", "exp_month": 1, "exp_year": 2024}}),
            ),
            (
                "card_expired",
                "card_expiring",
                "2023-12-15T13:11:40+00:00",
                "__test__8asukSOXdvg4PD",
                json!({"currency": "USD", "card": {"brand": "visa", "last4": "1111", "exp_month": 11, "exp_year": 2023}}),
            ),
            (
                "subscription_cancelled",
                "subscription_canceled",
                "2023-12-18T13:06:40+00:00",
                sub,
                json!({"subscription": sub, "currency": "USD"}),
            ),
        ];
        for (name, event_type, occurred_at, subject, expected_data) in table {
            let payload = fixture(name);
            let draft = map(&payload).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(draft.fetches.is_empty(), "{name}: nothing to fetch");
            let event = draft.to_json(Provider::Chargebee, "chargebee", SubjectLevel::Invoice);
            assert_eq!(
                event["id"],
                format!("chargebee:{}", payload["id"].as_str().unwrap_or_default()),
                "{name}"
            );
            assert_eq!(event["type"], event_type, "{name}");
            assert_eq!(event["occurred_at"], occurred_at, "{name}");
            assert_eq!(event["subject"], subject, "{name}");
            assert_eq!(event["customer"], customer, "{name}: customer");
            let data = event["data"].as_object().expect("data");
            let expected = expected_data.as_object().expect("data");
            for (key, value) in expected {
                assert_eq!(&data[key], value, "{name}: data.{key}");
            }
            for key in data.keys() {
                assert!(
                    expected.contains_key(key)
                        || ["provider", "source", "provider_event_type", "object"]
                            .contains(&key.as_str()),
                    "{name}: unexpected data.{key} = {}",
                    data[key]
                );
            }
            assert_eq!(
                data["object"], payload["content"],
                "{name}: the content, whole"
            );
            draft
                .to_event(Provider::Chargebee, "chargebee", SubjectLevel::Invoice)
                .unwrap_or_else(|e| panic!("{name}: {}", e.problem));
        }
    }

    #[test]
    fn unmapped_and_malformed_events_are_ignored_with_a_reason() {
        let mut v1 = fixture("payment_failed");
        v1["api_version"] = json!("v1");
        let mut card_added = fixture("card_expiry_reminder");
        card_added["event_type"] = json!("card_added");
        let mut expiring = fixture("payment_source_updated");
        expiring["event_type"] = json!("payment_source_expiring");
        let mut no_customer = fixture("subscription_cancelled");
        no_customer["content"]["customer"] = Value::Null;
        no_customer["content"]["subscription"]["customer_id"] = Value::Null;
        let mut no_transaction = fixture("payment_failed");
        no_transaction["content"]["transaction"] = Value::Null;
        for (payload, reason) in [
            (v1, "set the webhook's API version to v2"),
            (card_added, "payment_source_added/updated"),
            (expiring, "card_expiry_reminder"),
            (no_customer, "names no customer"),
            (no_transaction, "'content.transaction'"),
            (
                json!({"id": "ev_1", "event_type": "customer_created", "content": {}}),
                "not an event dunningd maps",
            ),
            (
                json!({"event_type": "payment_failed", "content": {}}),
                "'id'",
            ),
            (
                json!({"id": "ev_1", "event_type": "payment_failed"}),
                "'content'",
            ),
        ] {
            let ignored = map(&payload).expect_err("ignored");
            assert!(
                ignored.reason.contains(reason),
                "{ignored} should say {reason}"
            );
        }
    }
}
