//! Paddle Billing: `Paddle-Signature` and Paddle's notification events
//! (not Paddle Classic, whose alerts are form posts signed with RSA).
//!
//! The signature is `ts=<unix seconds>;h1=<hex>`: HMAC-SHA256 of
//! `<ts>:<raw body>` under the notification destination's secret key
//! (`pdl_ntfset_…`). Several `h1` may be sent while a secret is being
//! rotated; any match accepts, and any of the source's secrets may match.
//! Other keys in the header are skipped. This follows Paddle's own
//! verifiers: `WebhooksValidator` in PaddleHQ/paddle-node-sdk
//! (`src/notifications/helpers/webhooks-validator.ts`) and `PaddleSignature`
//! / `Verifier` in PaddleHQ/paddle-python-sdk, and their test vectors.
//! Both SDKs allow only 5 seconds between `ts` and now; dunningd uses the
//! source's `tolerance` (300 s unless configured), since Paddle retries a
//! notification with a fresh `ts` and a queueing proxy or a slow clock
//! should not turn a genuine notification away.
//!
//! The envelope is `{event_id, event_type, occurred_at, notification_id,
//! data}`. The draft's id is `event_id`: `notification_id` differs per
//! destination and per replay, the event id does not.
//!
//! | Paddle event | dunningd type |
//! |---|---|
//! | `transaction.payment_failed` | `payment_failed` |
//! | `transaction.completed` | `payment_succeeded` (`payment_method_updated` when its origin is `subscription_payment_method_change`) |
//! | `payment_method.saved` | `payment_method_updated` |
//! | `subscription.canceled` | `subscription_canceled` |
//! | `adjustment.created` with action `chargeback` | `dispute_opened` |
//! | `adjustment.created` with action `chargeback_reverse` | `dispute_closed` |
//!
//! Ignored on purpose: `transaction.paid` (it comes before the subscription
//! and the invoice are attached — Paddle's documented example has both null
//! — and `transaction.completed` follows for the same payment),
//! `transaction.past_due` and `subscription.past_due` (the same failure
//! arrives as `transaction.payment_failed`, once per attempt),
//! `adjustment.updated` (a status change of an adjustment already heard as
//! created; mapping it would open a second dispute for one chargeback), and
//! `customer.updated` (a changed name or email is not a payment method).
//! Paddle sends nothing before a card expires, so no `card_expiring`.
//!
//! The case's invoice is the transaction id (`txn_…`): Paddle retries the
//! same transaction until it is paid, while `invoice_id` and
//! `invoice_number` only exist once it is (both stay in the object).
//! The customer id is Paddle's (`ctm_…`); Paddle has no external id field.
//!
//! Thin parts, fetched with the source's `api_key` (Bearer): the customer
//! (`/customers/{id}`: email, name, locale) for every event, since no
//! payload carries them; the saved card of `payment_method.saved`
//! (`/customers/{id}/payment-methods/{id}`); and for a failed payment
//! without a checkout URL, the subscription's
//! `management_urls.update_payment_method`.

use axum::http::HeaderMap;
use chrono::{DateTime, Utc};
use serde_json::Value;

use super::{
    Card, Draft, Fetch, Ignored, Refusal, SourceConfig, TimedSignature, currency, minor_units,
    rfc3339, text,
};

const SIGNATURE: &str = "Paddle-Signature";

/// `Paddle-Signature: ts=<unix seconds>;h1=<hex>[;h1=<hex>…]` over `<ts>:<body>`.
const SCHEME: TimedSignature = TimedSignature {
    header: SIGNATURE,
    separator: ';',
    time_key: "ts",
    signature_key: "h1",
    joiner: b":",
};

pub fn verify(
    source: &SourceConfig,
    headers: &HeaderMap,
    body: &[u8],
    now: DateTime<Utc>,
) -> Result<(), Refusal> {
    SCHEME.verify(source, headers, body, now)
}

pub fn map(payload: &Value) -> Result<Draft, Ignored> {
    let provider_type = payload["event_type"].as_str().unwrap_or("(no event_type)");
    let Some(id) = text(payload, "/event_id") else {
        return Err(Ignored::malformed(provider_type, "event_id"));
    };
    let data = &payload["data"];
    if !data.is_object() {
        return Err(Ignored::malformed(provider_type, "data"));
    }
    let event_type = match provider_type {
        "transaction.payment_failed" => "payment_failed",
        "transaction.completed" => {
            if data["origin"].as_str() == Some("subscription_payment_method_change") {
                "payment_method_updated"
            } else {
                "payment_succeeded"
            }
        }
        "payment_method.saved" => "payment_method_updated",
        "subscription.canceled" => "subscription_canceled",
        "adjustment.created" => match data["action"].as_str() {
            Some("chargeback") => "dispute_opened",
            Some("chargeback_reverse") => "dispute_closed",
            _ => {
                return Err(Ignored::new(
                    provider_type,
                    "an adjustment that is not a chargeback (refund, credit or warning)",
                ));
            }
        },
        "transaction.paid" => {
            return Err(Ignored::new(
                provider_type,
                "the same payment arrives as transaction.completed, which is mapped",
            ));
        }
        "adjustment.updated" => {
            return Err(Ignored::new(
                provider_type,
                "a change to an adjustment already mapped from adjustment.created",
            ));
        }
        "transaction.past_due" | "subscription.past_due" => {
            return Err(Ignored::new(
                provider_type,
                "each failed attempt arrives as transaction.payment_failed, which is mapped",
            ));
        }
        _ => {
            return Err(Ignored::new(
                provider_type,
                "not an event dunningd maps (see the README's Paddle table)",
            ));
        }
    };
    let mut draft = Draft::new(&id, event_type, provider_type, data.clone());
    draft.occurred_at = rfc3339(payload, "/occurred_at");
    draft.customer_id = text(data, "/customer_id");
    draft.currency = currency(data, "/currency_code");
    match provider_type.split_once('.').map(|(entity, _)| entity) {
        Some("transaction") => transaction(&mut draft, data),
        Some("subscription") => draft.subscription = text(data, "/id"),
        Some("payment_method") => {
            if let (Some(customer), Some(method)) = (&draft.customer_id, text(data, "/id")) {
                draft.fetches.push(Fetch {
                    what: "payment_method",
                    path: format!("/customers/{customer}/payment-methods/{method}"),
                });
            }
        }
        Some("adjustment") => {
            draft.invoice = text(data, "/transaction_id");
            draft.subscription = text(data, "/subscription_id");
            draft.amount = minor_units(data, "/totals/total");
            draft.failure_message = text(data, "/reason");
        }
        _ => {}
    }
    let Some(customer) = draft.customer_id.clone() else {
        return Err(Ignored::new(
            provider_type,
            "the object names no customer, so no case can be about one",
        ));
    };
    draft.fetches.insert(
        0,
        Fetch {
            what: "customer",
            path: format!("/customers/{customer}"),
        },
    );
    Ok(draft)
}

fn transaction(draft: &mut Draft, txn: &Value) {
    draft.invoice = text(txn, "/id");
    draft.subscription = text(txn, "/subscription_id");
    draft.amount = minor_units(txn, "/details/totals/grand_total");
    draft.currency = draft
        .currency
        .take()
        .or_else(|| currency(txn, "/details/totals/currency_code"));
    draft.update_url = text(txn, "/checkout/url");
    // Paddle lists a transaction's payment attempts newest first.
    let payments = txn["payments"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    if let Some(latest) = payments.first() {
        draft.card = card_of(&latest["method_details"]["card"]);
        if draft.event_type == "payment_failed" {
            draft.decline_code = text(latest, "/error_code");
        }
    }
    if draft.event_type == "payment_failed" {
        draft.attempt = u32::try_from(payments.len()).ok().filter(|n| *n > 0);
        if draft.update_url.is_none()
            && let Some(subscription) = &draft.subscription
        {
            draft.fetches.push(Fetch {
                what: "subscription",
                path: format!("/subscriptions/{subscription}"),
            });
        }
    }
}

/// Paddle's card: `{type, last4, expiry_month, expiry_year, cardholder_name}`.
fn card_of(card: &Value) -> Card {
    let number = |key: &str| card[key].as_u64().and_then(|n| u32::try_from(n).ok());
    Card {
        brand: text(card, "/type").map(|b| b.to_ascii_lowercase()),
        last4: text(card, "/last4"),
        exp_month: number("expiry_month"),
        exp_year: number("expiry_year"),
    }
}

/// Paddle's API answers `{data: {...}, meta: {...}}`.
pub fn apply(draft: &mut Draft, fetch: &Fetch, object: &Value) {
    let data = &object["data"];
    match fetch.what {
        "customer" => {
            draft.email = draft.email.take().or_else(|| text(data, "/email"));
            draft.name = draft.name.take().or_else(|| text(data, "/name"));
            draft.locale = draft.locale.take().or_else(|| text(data, "/locale"));
        }
        "payment_method" => {
            let card = card_of(&data["card"]);
            if !card.is_empty() {
                draft.card = card;
            }
        }
        "subscription" => {
            draft.update_url = draft
                .update_url
                .take()
                .or_else(|| text(data, "/management_urls/update_payment_method"));
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::{Provider, SubjectLevel};
    use chrono::TimeZone;
    use serde_json::json;

    fn source(secrets: &[&str]) -> SourceConfig {
        crate::sources::test_source(Provider::Paddle, secrets)
    }

    fn signed(secret: &str, ts: i64, body: &str) -> String {
        crate::sources::test_hex_signature(
            secret,
            &[ts.to_string().as_bytes(), b":", body.as_bytes()],
        )
    }

    fn headers(value: &str) -> HeaderMap {
        crate::sources::test_headers(&[("paddle-signature", value)])
    }

    #[test]
    fn paddles_own_test_vector_verifies() {
        // From paddle-node-sdk's webhooks-validator test: body, header and
        // secret exactly as there.
        let body = r#"{"data": ["1", "2"]}"#;
        let value =
            "ts=1698796800;h1=a300428748dce5c70e4da19bffd60769591ea969c99dea3105d0ec9612cf43f9";
        let now = Utc.timestamp_opt(1_698_796_801, 0).unwrap();
        let check = |secret: &str, body: &str| {
            verify(&source(&[secret]), &headers(value), body.as_bytes(), now)
        };
        assert_eq!(check("VALID_SECRET", body), Ok(()));
        assert_eq!(
            check("INVALID_VALID_SECRET", body),
            Err(Refusal::Mismatch(SIGNATURE))
        );
        assert_eq!(
            check("VALID_SECRET", r#"{ "data": [ "1", "2" ]}"#),
            Err(Refusal::Mismatch(SIGNATURE))
        );
    }

    #[test]
    fn signatures_follow_paddles_scheme() {
        let body = r#"{"event_id":"evt_1"}"#;
        let ts = 1_700_000_000;
        let now = Utc.timestamp_opt(ts + 10, 0).unwrap();
        let good = signed("pdl_ntfset_new", ts, body);
        let old = signed("pdl_ntfset_old", ts, body);
        let one = source(&["pdl_ntfset_new"]);
        let check = |source: &SourceConfig, value: &str, body: &str| {
            verify(source, &headers(value), body.as_bytes(), now)
        };
        assert_eq!(check(&one, &format!("ts={ts};h1={good}"), body), Ok(()));
        // Rotation: one h1 per live secret; either configured accepts.
        assert_eq!(
            check(&one, &format!("ts={ts};h1={old};h1={good}"), body),
            Ok(())
        );
        assert_eq!(
            check(
                &source(&["pdl_ntfset_x", "pdl_ntfset_old"]),
                &format!("ts={ts};h1={good};h1={old}"),
                body
            ),
            Ok(())
        );
        let malformed = |problem: &str| Refusal::Malformed {
            header: SIGNATURE,
            problem: problem.into(),
        };
        let refusals = [
            (
                format!("ts={ts};h1={good}"),
                r#"{"event_id":"evt_2"}"#,
                Refusal::Mismatch(SIGNATURE),
            ),
            (
                format!("ts={ts};h1={old}"),
                body,
                Refusal::Mismatch(SIGNATURE),
            ),
            (
                format!("ts={};h1={good}", ts + 1),
                body,
                Refusal::Mismatch(SIGNATURE),
            ),
            // Stripe's separator and prefix are not Paddle's.
            (
                format!("t={ts},v1={good}"),
                body,
                malformed("no ts= timestamp"),
            ),
            (
                format!("ts={ts};h2={good}"),
                body,
                malformed("no h1= signature"),
            ),
            (format!("h1={good}"), body, malformed("no ts= timestamp")),
            (
                format!("ts=yesterday;h1={good}"),
                body,
                malformed("ts= is not a Unix time"),
            ),
            (format!("ts={ts};h1=zz"), body, Refusal::Mismatch(SIGNATURE)),
        ];
        for (value, body, refusal) in refusals {
            assert_eq!(check(&one, &value, body), Err(refusal), "{value}");
        }
        for late in [ts - 301, ts + 301] {
            let late = Utc.timestamp_opt(late, 0).unwrap();
            assert!(matches!(
                verify(
                    &one,
                    &headers(&format!("ts={ts};h1={good}")),
                    body.as_bytes(),
                    late
                ),
                Err(Refusal::TooOld { .. })
            ));
        }
        assert_eq!(
            verify(&one, &HeaderMap::new(), body.as_bytes(), now),
            Err(Refusal::Missing(SIGNATURE))
        );
    }

    fn fixture(name: &str) -> Value {
        let text = match name {
            "transaction_payment_failed" => include_str!(
                "../../../tests/fixtures/sources/paddle/transaction_payment_failed.json"
            ),
            "transaction_completed" => {
                include_str!("../../../tests/fixtures/sources/paddle/transaction_completed.json")
            }
            "transaction_paid" => {
                include_str!("../../../tests/fixtures/sources/paddle/transaction_paid.json")
            }
            "subscription_canceled" => {
                include_str!("../../../tests/fixtures/sources/paddle/subscription_canceled.json")
            }
            "subscription_past_due" => {
                include_str!("../../../tests/fixtures/sources/paddle/subscription_past_due.json")
            }
            "payment_method_saved" => {
                include_str!("../../../tests/fixtures/sources/paddle/payment_method_saved.json")
            }
            "adjustment_created" => {
                include_str!("../../../tests/fixtures/sources/paddle/adjustment_created.json")
            }
            other => panic!("no fixture {other}"),
        };
        serde_json::from_str(text).expect("fixture is JSON")
    }

    #[test]
    fn documented_events_map_field_by_field() {
        const CTM: &str = "ctm_01hv6y1jedq4p1n0yqn5ba3ky4";
        let table = [
            (
                "transaction_payment_failed",
                json!({
                    "id": "paddle:evt_01hv8wt9wgjxyjgssyda5xfhph",
                    "type": "payment_failed",
                    "occurred_at": "2024-04-12T10:15:58.150939+00:00",
                    "subject": "txn_01hv8wptq8987qeep44cyrewp9",
                    "customer": {"id": CTM},
                    "data": {
                        "invoice": "txn_01hv8wptq8987qeep44cyrewp9",
                        "amount": 65215,
                        "currency": "USD",
                        "decline_code": "declined",
                        "attempt": 1,
                        "update_url": "https://aeroedit.com/pay?_ptxn=txn_01hv8wptq8987qeep44cyrewp9",
                        "card": {"brand": "visa", "last4": "0002", "exp_month": 1, "exp_year": 2025},
                    },
                }),
                vec![format!("/customers/{CTM}")],
            ),
            (
                "transaction_completed",
                json!({
                    "id": "paddle:evt_01hv8x2b1jy5c0m2w4x31ph4w6",
                    "type": "payment_succeeded",
                    "occurred_at": "2024-04-12T10:18:49.811463+00:00",
                    "subject": "txn_01hv8wptq8987qeep44cyrewp9",
                    "customer": {"id": CTM},
                    "data": {
                        "invoice": "txn_01hv8wptq8987qeep44cyrewp9",
                        "subscription": "sub_01hv8x29kz0t586xy6zn1a62ny",
                        "amount": 65215,
                        "currency": "USD",
                        "update_url": "https://aeroedit.com/pay?_ptxn=txn_01hv8wptq8987qeep44cyrewp9",
                        "card": {"brand": "visa", "last4": "3184", "exp_month": 1, "exp_year": 2025},
                    },
                }),
                vec![format!("/customers/{CTM}")],
            ),
            (
                "subscription_canceled",
                json!({
                    "id": "paddle:evt_01hv915jm8zgasqc4hmdjm4b5z",
                    "type": "subscription_canceled",
                    "occurred_at": "2024-04-12T11:24:55.174498+00:00",
                    "subject": "sub_01hv8x29kz0t586xy6zn1a62ny",
                    "customer": {"id": CTM},
                    "data": {"subscription": "sub_01hv8x29kz0t586xy6zn1a62ny", "currency": "USD"},
                }),
                vec![format!("/customers/{CTM}")],
            ),
            (
                "payment_method_saved",
                json!({
                    "id": "paddle:evt_01hwqfgzfay3g6zvkxas8e3ph4",
                    "type": "payment_method_updated",
                    "occurred_at": "2024-05-02T02:55:25.423867+00:00",
                    "subject": CTM,
                    "customer": {"id": CTM},
                    "data": {},
                }),
                vec![
                    format!("/customers/{CTM}"),
                    format!("/customers/{CTM}/payment-methods/paymtd_01hs8zx6x377xfsfrt2bqsevbw"),
                ],
            ),
            (
                "adjustment_created",
                json!({
                    "id": "paddle:evt_01hvgf2sgxdb9fs3yxkt8ffz9s",
                    "type": "dispute_opened",
                    "occurred_at": "2024-04-15T08:48:20.505591+00:00",
                    "subject": "txn_01hvcc93znj3mpqt1tenkjb04y",
                    "customer": {"id": CTM},
                    "data": {
                        "invoice": "txn_01hvcc93znj3mpqt1tenkjb04y",
                        "subscription": "sub_01hvccbx32q2gb40sqx7n42430",
                        "amount": 100,
                        "currency": "USD",
                        "failure_message": "fraudulent",
                    },
                }),
                vec![format!("/customers/{CTM}")],
            ),
        ];
        for (name, expected, fetches) in table {
            let payload = fixture(name);
            let draft = map(&payload).unwrap_or_else(|e| panic!("{name}: {e}"));
            let event = draft.to_json(Provider::Paddle, "paddle", SubjectLevel::Invoice);
            for key in ["id", "type", "occurred_at", "subject", "customer"] {
                assert_eq!(event[key], expected[key], "{name}: {key}");
            }
            let data = event["data"].as_object().expect("data");
            let expected_data = expected["data"].as_object().expect("data");
            for (key, value) in expected_data {
                assert_eq!(&data[key], value, "{name}: data.{key}");
            }
            for key in data.keys() {
                assert!(
                    expected_data.contains_key(key)
                        || ["provider", "source", "provider_event_type", "object"]
                            .contains(&key.as_str()),
                    "{name}: unexpected data.{key} = {}",
                    data[key]
                );
            }
            assert_eq!(data["provider"], "paddle");
            assert_eq!(data["object"], payload["data"], "{name}: the object, whole");
            let paths: Vec<_> = draft.fetches.iter().map(|f| f.path.clone()).collect();
            assert_eq!(paths, fetches, "{name}: fetches");
            draft
                .to_event(Provider::Paddle, "paddle", SubjectLevel::Invoice)
                .unwrap_or_else(|e| panic!("{name}: {}", e.problem));
        }
    }

    #[test]
    fn fetched_objects_complete_the_draft() {
        let mut draft = map(&fixture("payment_method_saved")).expect("mapped");
        let fetches = draft.fetches.clone();
        // Paddle's documented answers, `data` and `meta`.
        apply(
            &mut draft,
            &fetches[0],
            &json!({"data": {
                "id": "ctm_01hv6y1jedq4p1n0yqn5ba3ky4", "status": "active",
                "custom_data": null, "name": "Sam Miller", "email": "sam@example.com",
                "marketing_consent": false, "locale": "en", "created_at": "2024-04-11T15:57:24.813Z",
                "updated_at": "2024-04-11T15:59:56.658719Z", "import_meta": null
            }, "meta": {"request_id": "e7a6b5f0-3b7b-4b7c-9c0f-8b5a9a3b2d6b"}}),
        );
        apply(
            &mut draft,
            &fetches[1],
            &json!({"data": {
                "id": "paymtd_01hs8zx6x377xfsfrt2bqsevbw", "customer_id": "ctm_01hv6y1jedq4p1n0yqn5ba3ky4",
                "address_id": "add_01hv8gq3318ktkfengj2r75gfx", "type": "card",
                "card": {"type": "mastercard", "last4": "4444", "expiry_month": 3, "expiry_year": 2028, "cardholder_name": "Sam Miller"},
                "paypal": null, "origin": "saved_during_purchase",
                "saved_at": "2024-05-02T02:55:25.198953Z", "updated_at": "2024-05-02T02:55:25.198953Z"
            }, "meta": {"request_id": "f1c0e6f6-6a0b-4d55-9a59-3c3a4a1b6e8a"}}),
        );
        assert_eq!(draft.email.as_deref(), Some("sam@example.com"));
        assert_eq!(draft.name.as_deref(), Some("Sam Miller"));
        assert_eq!(draft.locale.as_deref(), Some("en"));
        assert_eq!(
            draft.card,
            Card {
                brand: Some("mastercard".into()),
                last4: Some("4444".into()),
                exp_month: Some(3),
                exp_year: Some(2028),
            }
        );

        // A renewal that failed without a checkout URL: the update link is
        // the subscription's.
        let mut payload = fixture("transaction_payment_failed");
        payload["data"]["checkout"] = Value::Null;
        payload["data"]["subscription_id"] = json!("sub_01hv8x29kz0t586xy6zn1a62ny");
        let mut draft = map(&payload).expect("mapped");
        let subscription = draft.fetches[1].clone();
        assert_eq!(
            subscription.path,
            "/subscriptions/sub_01hv8x29kz0t586xy6zn1a62ny"
        );
        apply(
            &mut draft,
            &subscription,
            &json!({"data": {"id": "sub_01hv8x29kz0t586xy6zn1a62ny", "management_urls": {
                "update_payment_method": "https://buyer-portal.paddle.com/subscriptions/sub_01hv8x29kz0t586xy6zn1a62ny/update-payment-method",
                "cancel": "https://buyer-portal.paddle.com/subscriptions/sub_01hv8x29kz0t586xy6zn1a62ny/cancel"
            }}}),
        );
        assert_eq!(
            draft.update_url.as_deref(),
            Some(
                "https://buyer-portal.paddle.com/subscriptions/sub_01hv8x29kz0t586xy6zn1a62ny/update-payment-method"
            )
        );
    }

    #[test]
    fn a_payment_method_change_is_not_a_payment() {
        let mut payload = fixture("transaction_completed");
        payload["data"]["origin"] = json!("subscription_payment_method_change");
        let draft = map(&payload).expect("mapped");
        assert_eq!(draft.event_type, "payment_method_updated");
        assert_eq!(draft.card.last4.as_deref(), Some("3184"));
    }

    #[test]
    fn unmapped_and_malformed_events_are_ignored_with_a_reason() {
        let mut refund = fixture("adjustment_created");
        refund["data"]["action"] = json!("refund");
        let mut reversed = fixture("adjustment_created");
        reversed["data"]["action"] = json!("chargeback_reverse");
        assert_eq!(map(&reversed).expect("mapped").event_type, "dispute_closed");
        let mut updated = fixture("adjustment_created");
        updated["event_type"] = json!("adjustment.updated");
        let mut no_customer = fixture("subscription_canceled");
        no_customer["data"]["customer_id"] = Value::Null;
        for (payload, reason) in [
            (fixture("transaction_paid"), "transaction.completed"),
            (
                fixture("subscription_past_due"),
                "transaction.payment_failed",
            ),
            (refund, "not a chargeback"),
            (updated, "adjustment.created"),
            (no_customer, "names no customer"),
            (
                json!({"event_id": "evt_1", "event_type": "customer.created", "data": {}}),
                "not an event dunningd maps",
            ),
            (
                json!({"event_type": "transaction.payment_failed", "data": {}}),
                "'event_id'",
            ),
            (
                json!({"event_id": "evt_1", "event_type": "transaction.payment_failed"}),
                "'data'",
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
