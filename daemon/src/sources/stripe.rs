//! Stripe: `Stripe-Signature` and Stripe's event objects.
//!
//! The signature is `t=<unix seconds>,v1=<hex>[,v1=<hex>…]`: HMAC-SHA256 of
//! `<t>.<body>` under the endpoint's signing secret (`whsec_…`). While a
//! secret is being rolled Stripe sends one `v1` per live secret; any match
//! accepts. `v0` (test-mode legacy) is not accepted, as Stripe's libraries
//! do. The timestamp must be within the tolerance (300 s by default).
//!
//! | Stripe event | dunningd type |
//! |---|---|
//! | `invoice.payment_failed` | `payment_failed` |
//! | `invoice.paid` | `payment_succeeded` |
//! | `payment_method.attached`, `payment_method.updated`, `payment_method.automatically_updated` | `payment_method_updated` |
//! | `customer.source.expiring` | `card_expiring` |
//! | `customer.subscription.deleted` | `subscription_canceled` |
//! | `charge.dispute.created` / `charge.dispute.closed` | `dispute_opened` / `dispute_closed` |
//!
//! `invoice.payment_succeeded` is ignored: Stripe sends `invoice.paid` for
//! the same payment (and for an invoice marked paid outside Stripe).
//!
//! Thin parts, fetched with the source's `api_key`: the decline code, the
//! failure message and the card from the invoice's PaymentIntent (or its
//! charge, on API versions that name one; since 2025-03-31 invoices name
//! neither, and the PaymentIntent comes from the invoice's payments); the phone, name, locale and time
//! zone (`metadata.timezone`) from the customer when the event lacks the
//! phone; a dispute's customer from its charge.

use axum::http::HeaderMap;
use chrono::{DateTime, Utc};
use serde_json::Value;

use super::{
    Card, Draft, Fetch, Ignored, Refusal, SourceConfig, TimedSignature, currency, id_of, text,
    unix_time,
};

const SIGNATURE: &str = "Stripe-Signature";

/// `Stripe-Signature: t=<unix seconds>,v1=<hex>[,v1=<hex>…]` over `<t>.<body>`.
const SCHEME: TimedSignature = TimedSignature {
    header: SIGNATURE,
    separator: ',',
    time_key: "t",
    signature_key: "v1",
    joiner: b".",
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
    let provider_type = payload["type"].as_str().unwrap_or("(no type)");
    let Some(id) = text(payload, "/id") else {
        return Err(Ignored::malformed(provider_type, "id"));
    };
    let object = &payload["data"]["object"];
    if !object.is_object() {
        return Err(Ignored::malformed(provider_type, "data.object"));
    }
    let event_type = match provider_type {
        "invoice.payment_failed" => "payment_failed",
        "invoice.paid" => "payment_succeeded",
        "payment_method.attached"
        | "payment_method.updated"
        | "payment_method.automatically_updated" => "payment_method_updated",
        "customer.source.expiring" => "card_expiring",
        "customer.subscription.deleted" => "subscription_canceled",
        "charge.dispute.created" => "dispute_opened",
        "charge.dispute.closed" => "dispute_closed",
        "invoice.payment_succeeded" => {
            return Err(Ignored::new(
                provider_type,
                "the same payment arrives as invoice.paid, which is mapped",
            ));
        }
        _ => {
            return Err(Ignored::new(
                provider_type,
                "not an event dunningd maps (see the README's Stripe table)",
            ));
        }
    };
    let mut draft = Draft::new(&id, event_type, provider_type, object.clone());
    draft.occurred_at = unix_time(payload, "/created");
    match object["object"].as_str() {
        Some("invoice") => invoice(&mut draft, object),
        Some("payment_method") => payment_method(&mut draft, object),
        Some("card") | Some("source") => expiring_card(&mut draft, object),
        Some("subscription") => {
            draft.customer_id = id_of(object, "/customer");
            draft.subscription = text(object, "/id");
            draft.currency = currency(object, "/currency");
        }
        Some("dispute") => dispute(&mut draft, object),
        _ => return Err(Ignored::malformed(provider_type, "data.object.object")),
    }
    // A dispute names only its charge, which names the customer; anything
    // else without a customer cannot be about one.
    let found_later = matches!(draft.event_type, "dispute_opened" | "dispute_closed")
        && !draft.fetches.is_empty();
    if draft.customer_id.is_none() && !found_later {
        return Err(Ignored::new(
            provider_type,
            "the object names no customer, so no case can be about one",
        ));
    }
    if draft.customer_id.is_some() && draft.phone.is_none() {
        let customer = draft.customer_id.clone().unwrap_or_default();
        draft.fetches.push(Fetch {
            what: "customer",
            path: format!("/v1/customers/{customer}"),
        });
    }
    Ok(draft)
}

fn invoice(draft: &mut Draft, invoice: &Value) {
    draft.invoice = text(invoice, "/id");
    draft.customer_id = id_of(invoice, "/customer");
    draft.email = text(invoice, "/customer_email");
    draft.name = text(invoice, "/customer_name");
    draft.phone = text(invoice, "/customer_phone");
    // Before API version 2025-03-31 the subscription is a field of its own;
    // since, it sits under the invoice's parent.
    draft.subscription = id_of(invoice, "/subscription")
        .or_else(|| id_of(invoice, "/parent/subscription_details/subscription"));
    draft.currency = currency(invoice, "/currency");
    draft.amount = match draft.event_type {
        "payment_succeeded" => invoice["amount_paid"].as_i64(),
        _ => invoice["amount_due"].as_i64(),
    };
    draft.attempt = invoice["attempt_count"]
        .as_u64()
        .and_then(|n| u32::try_from(n).ok());
    draft.next_retry_at = unix_time(invoice, "/next_payment_attempt");
    draft.update_url = text(invoice, "/hosted_invoice_url");
    if draft.event_type == "payment_failed" {
        if let Some(intent) = id_of(invoice, "/payment_intent") {
            draft.fetches.push(Fetch {
                what: "payment_intent",
                path: format!("/v1/payment_intents/{intent}?expand[]=latest_charge"),
            });
        } else if let Some(charge) = id_of(invoice, "/charge") {
            draft.fetches.push(Fetch {
                what: "charge",
                path: format!("/v1/charges/{charge}"),
            });
        } else if let Some(id) = &draft.invoice {
            // Since API version 2025-03-31 an invoice names neither: its
            // payments are listed, newest first, each with its PaymentIntent.
            draft.fetches.push(Fetch {
                what: "invoice_payments",
                path: format!(
                    "/v1/invoice_payments?invoice={id}&limit=1&expand[]=data.payment.payment_intent"
                ),
            });
        }
    }
}

fn card_of(card: &Value) -> Card {
    Card {
        brand: text(card, "/brand").map(|b| b.to_ascii_lowercase()),
        last4: text(card, "/last4"),
        exp_month: card["exp_month"]
            .as_u64()
            .and_then(|n| u32::try_from(n).ok()),
        exp_year: card["exp_year"]
            .as_u64()
            .and_then(|n| u32::try_from(n).ok()),
    }
}

fn payment_method(draft: &mut Draft, method: &Value) {
    draft.customer_id = id_of(method, "/customer");
    draft.email = text(method, "/billing_details/email");
    draft.name = text(method, "/billing_details/name");
    draft.phone = text(method, "/billing_details/phone");
    draft.card = card_of(&method["card"]);
}

fn expiring_card(draft: &mut Draft, card: &Value) {
    draft.customer_id = id_of(card, "/customer");
    draft.name = text(card, "/name");
    draft.card = card_of(card);
}

fn dispute(draft: &mut Draft, dispute: &Value) {
    draft.amount = dispute["amount"].as_i64();
    draft.currency = currency(dispute, "/currency");
    draft.failure_message = text(dispute, "/reason");
    // A dispute names its charge; the charge names the customer.
    match dispute.pointer("/charge") {
        Some(Value::Object(charge)) => {
            draft.customer_id = charge
                .get("customer")
                .and_then(|c| id_of(c, ""))
                .or_else(|| {
                    charge
                        .get("customer")
                        .and_then(Value::as_str)
                        .map(String::from)
                });
            draft.invoice = charge.get("invoice").and_then(|i| id_of(i, ""));
        }
        Some(Value::String(charge)) if !charge.is_empty() => draft.fetches.push(Fetch {
            what: "charge",
            path: format!("/v1/charges/{charge}"),
        }),
        _ => {}
    }
}

/// The decline, its message and the card, from a PaymentIntent's last error
/// (or, without one, its latest charge).
fn payment_intent(draft: &mut Draft, intent: &Value) {
    let error = &intent["last_payment_error"];
    draft.decline_code = text(error, "/decline_code").or_else(|| text(error, "/code"));
    draft.failure_message = text(error, "/message");
    let card = if error["payment_method"]["card"].is_object() {
        card_of(&error["payment_method"]["card"])
    } else {
        card_of(&intent["latest_charge"]["payment_method_details"]["card"])
    };
    if !card.is_empty() {
        draft.card = card;
    }
}

pub fn apply(draft: &mut Draft, fetch: &Fetch, object: &Value) {
    match fetch.what {
        "customer" => {
            draft.email = draft.email.take().or_else(|| text(object, "/email"));
            draft.name = draft.name.take().or_else(|| text(object, "/name"));
            draft.phone = draft.phone.take().or_else(|| text(object, "/phone"));
            draft.locale = draft
                .locale
                .take()
                .or_else(|| text(object, "/preferred_locales/0"));
            draft.timezone = draft
                .timezone
                .take()
                .or_else(|| text(object, "/metadata/timezone"));
        }
        "invoice_payments" => match object.pointer("/data/0/payment/payment_intent") {
            Some(intent @ Value::Object(_)) => payment_intent(draft, intent),
            Some(Value::String(intent)) if !intent.is_empty() => draft.fetches.push(Fetch {
                what: "payment_intent",
                path: format!("/v1/payment_intents/{intent}?expand[]=latest_charge"),
            }),
            _ => {}
        },
        "payment_intent" => payment_intent(draft, object),
        "charge" => {
            if draft.event_type == "payment_failed" {
                draft.decline_code =
                    text(object, "/outcome/reason").or_else(|| text(object, "/failure_code"));
                draft.failure_message = text(object, "/failure_message");
                let card = card_of(&object["payment_method_details"]["card"]);
                if !card.is_empty() {
                    draft.card = card;
                }
            } else {
                // A dispute's charge: whose it is and what it paid.
                draft.customer_id = id_of(object, "/customer");
                draft.invoice = id_of(object, "/invoice");
                if let Some(customer) = draft.customer_id.clone() {
                    draft.fetches.push(Fetch {
                        what: "customer",
                        path: format!("/v1/customers/{customer}"),
                    });
                }
            }
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
        crate::sources::test_source(Provider::Stripe, secrets)
    }

    fn signed(secret: &str, t: i64, body: &str) -> String {
        crate::sources::test_hex_signature(
            secret,
            &[t.to_string().as_bytes(), b".", body.as_bytes()],
        )
    }

    fn headers(value: &str) -> HeaderMap {
        crate::sources::test_headers(&[("stripe-signature", value)])
    }

    #[test]
    fn signatures_follow_stripes_scheme() {
        let body = r#"{"id":"evt_1"}"#;
        let t = 1_700_000_000;
        let now = Utc.timestamp_opt(t + 10, 0).unwrap();
        let good = signed("whsec_new", t, body);
        let old = signed("whsec_old", t, body);
        let one = source(&["whsec_new"]);
        let check = |source: &SourceConfig, value: &str, body: &str| {
            verify(source, &headers(value), body.as_bytes(), now)
        };
        assert_eq!(check(&one, &format!("t={t},v1={good}"), body), Ok(()));
        // Rolling: Stripe signs with both secrets; either configured accepts.
        assert_eq!(
            check(&one, &format!("t={t},v1={old},v1={good}"), body),
            Ok(())
        );
        assert_eq!(
            check(
                &source(&["whsec_old", "whsec_x"]),
                &format!("t={t},v1={old},v1={good}"),
                body
            ),
            Ok(())
        );
        let refusals = [
            (
                format!("t={t},v1={good}"),
                "{\"id\":\"evt_2\"}",
                Refusal::Mismatch(SIGNATURE),
            ),
            (
                format!("t={t},v1={old}"),
                body,
                Refusal::Mismatch(SIGNATURE),
            ),
            (
                format!("t={},v1={good}", t + 1),
                body,
                Refusal::Mismatch(SIGNATURE),
            ),
            (
                format!("t={t},v0={good}"),
                body,
                Refusal::Malformed {
                    header: SIGNATURE,
                    problem: "no v1= signature".into(),
                },
            ),
            (
                format!("v1={good}"),
                body,
                Refusal::Malformed {
                    header: SIGNATURE,
                    problem: "no t= timestamp".into(),
                },
            ),
            (
                format!("t=yesterday,v1={good}"),
                body,
                Refusal::Malformed {
                    header: SIGNATURE,
                    problem: "t= is not a Unix time".into(),
                },
            ),
            (format!("t={t},v1=zz"), body, Refusal::Mismatch(SIGNATURE)),
        ];
        for (value, body, refusal) in refusals {
            assert_eq!(check(&one, &value, body), Err(refusal), "{value}");
        }
        let late = Utc.timestamp_opt(t + 301, 0).unwrap();
        assert!(matches!(
            verify(
                &one,
                &headers(&format!("t={t},v1={good}")),
                body.as_bytes(),
                late
            ),
            Err(Refusal::TooOld { .. })
        ));
        assert_eq!(
            verify(&one, &HeaderMap::new(), body.as_bytes(), now),
            Err(Refusal::Missing(SIGNATURE))
        );
    }

    #[test]
    fn unmapped_and_malformed_events_are_ignored_with_a_reason() {
        for (payload, reason) in [
            (
                json!({"id": "evt_1", "type": "customer.created", "data": {"object": {"object": "customer"}}}),
                "not an event dunningd maps",
            ),
            (
                json!({"id": "evt_1", "type": "invoice.payment_succeeded", "data": {"object": {"object": "invoice"}}}),
                "invoice.paid",
            ),
            (
                json!({"type": "invoice.payment_failed", "data": {"object": {"object": "invoice"}}}),
                "'id'",
            ),
            (
                json!({"id": "evt_1", "type": "invoice.payment_failed", "data": {}}),
                "'data.object'",
            ),
            (
                json!({"id": "evt_1", "type": "invoice.payment_failed", "data": {"object": {"object": "invoice", "id": "in_1"}}}),
                "names no customer",
            ),
        ] {
            let ignored = map(&payload).expect_err("ignored");
            assert!(
                ignored.reason.contains(reason),
                "{ignored} should say {reason}"
            );
        }
    }

    fn fixture(name: &str) -> Value {
        let text = match name {
            "invoice.payment_failed" => {
                include_str!("../../../tests/fixtures/sources/stripe/invoice.payment_failed.json")
            }
            "invoice.paid" => {
                include_str!("../../../tests/fixtures/sources/stripe/invoice.paid.json")
            }
            "payment_method.attached" => {
                include_str!("../../../tests/fixtures/sources/stripe/payment_method.attached.json")
            }
            "customer.source.expiring" => {
                include_str!("../../../tests/fixtures/sources/stripe/customer.source.expiring.json")
            }
            "customer.subscription.deleted" => include_str!(
                "../../../tests/fixtures/sources/stripe/customer.subscription.deleted.json"
            ),
            "api.payment_intent" => {
                include_str!("../../../tests/fixtures/sources/stripe/api.payment_intent.json")
            }
            "api.customer" => {
                include_str!("../../../tests/fixtures/sources/stripe/api.customer.json")
            }
            "invoice.payment_failed.basil" => include_str!(
                "../../../tests/fixtures/sources/stripe/invoice.payment_failed.basil.json"
            ),
            "api.invoice_payments" => {
                include_str!("../../../tests/fixtures/sources/stripe/api.invoice_payments.json")
            }
            other => panic!("no fixture {other}"),
        };
        serde_json::from_str(text).expect("fixture is JSON")
    }

    #[test]
    fn stripe_events_map_field_by_field() {
        let failed = map(&fixture("invoice.payment_failed")).expect("mapped");
        let event = failed.to_json(Provider::Stripe, "billing", SubjectLevel::Invoice);
        assert_eq!(event["id"], "stripe:evt_1QdunningFailed01");
        assert_eq!(event["type"], "payment_failed");
        assert_eq!(event["subject"], "in_1QdunningFailed01");
        assert_eq!(event["occurred_at"], "2026-01-05T08:59:00+00:00");
        assert_eq!(
            event["customer"],
            json!({ "id": "cus_RdunningAda01", "email": "ada@example.com", "name": "Ada Lovelace" })
        );
        let data = &event["data"];
        for (key, value) in [
            ("provider", json!("stripe")),
            ("source", json!("billing")),
            ("provider_event_type", json!("invoice.payment_failed")),
            ("invoice", json!("in_1QdunningFailed01")),
            ("subscription", json!("sub_1QdunningPro01")),
            ("amount", json!(4900)),
            ("currency", json!("EUR")),
            ("attempt", json!(1)),
            ("next_retry_at", json!("2026-01-08T08:59:00+00:00")),
            (
                "update_url",
                json!(
                    "https://invoice.stripe.com/i/acct_1Qacme/test_YWNjdF8xUWFjbWUsX1JkdW5uaW5n0200abcdef"
                ),
            ),
        ] {
            assert_eq!(data[key], value, "data.{key}");
        }
        assert_eq!(data["object"]["number"], "ACME-0042");
        assert_eq!(
            failed.fetches,
            vec![
                Fetch {
                    what: "payment_intent",
                    path: "/v1/payment_intents/pi_3QdunningIntent01?expand[]=latest_charge".into()
                },
                Fetch {
                    what: "customer",
                    path: "/v1/customers/cus_RdunningAda01".into()
                },
            ]
        );
        // What the API adds: the decline, the card, the phone, locale and zone.
        let mut enriched = failed.clone();
        apply(
            &mut enriched,
            &failed.fetches[0],
            &fixture("api.payment_intent"),
        );
        apply(&mut enriched, &failed.fetches[1], &fixture("api.customer"));
        let event = enriched
            .to_event(Provider::Stripe, "billing", SubjectLevel::Invoice)
            .expect("passes the event checks");
        assert_eq!(event.data["decline_code"], "insufficient_funds");
        assert_eq!(
            event.data["failure_message"],
            "Your card has insufficient funds."
        );
        assert_eq!(
            event.data["card"],
            json!({ "brand": "visa", "last4": "0341", "exp_month": 12, "exp_year": 2027 })
        );
        assert_eq!(event.customer.phone.as_deref(), Some("+447700900123"));
        assert_eq!(event.customer.locale.as_deref(), Some("en-GB"));
        assert_eq!(event.customer.timezone.as_deref(), Some("Europe/London"));

        let table = [
            (
                "invoice.paid",
                "payment_succeeded",
                "in_1QdunningFailed01",
                Some(4900),
            ),
            (
                "payment_method.attached",
                "payment_method_updated",
                "cus_RdunningAda01",
                None,
            ),
            (
                "customer.source.expiring",
                "card_expiring",
                "cus_RdunningAda01",
                None,
            ),
            (
                "customer.subscription.deleted",
                "subscription_canceled",
                "sub_1QdunningPro01",
                None,
            ),
        ];
        for (name, event_type, subject, amount) in table {
            let draft = map(&fixture(name)).expect(name);
            let event = draft
                .to_event(Provider::Stripe, "billing", SubjectLevel::Invoice)
                .expect(name);
            assert_eq!(event.event_type, event_type, "{name}");
            assert_eq!(event.subject, subject, "{name}");
            assert_eq!(event.customer.id, "cus_RdunningAda01", "{name}");
            assert_eq!(event.data["amount"].as_i64(), amount, "{name}");
        }
        let expiring = map(&fixture("customer.source.expiring")).expect("mapped");
        assert_eq!(
            expiring.card,
            Card {
                brand: Some("mastercard".into()),
                last4: Some("4444".into()),
                exp_month: Some(2),
                exp_year: Some(2026)
            }
        );
        // Account-level dunning: every event is about the customer.
        let paid = map(&fixture("invoice.paid")).expect("mapped");
        assert_eq!(
            paid.subject(SubjectLevel::Customer),
            Some("cus_RdunningAda01")
        );
        assert_eq!(
            paid.subject(SubjectLevel::Subscription),
            Some("sub_1QdunningPro01")
        );
    }

    /// API versions since 2025-03-31 (basil) name no PaymentIntent on the
    /// invoice: it is found through the invoice's payments.
    #[test]
    fn newer_api_versions_find_the_decline_through_invoice_payments() {
        let draft = map(&fixture("invoice.payment_failed.basil")).expect("mapped");
        assert_eq!(draft.subscription.as_deref(), Some("sub_1QdunningPro01"));
        assert_eq!(
            draft.fetches[0],
            Fetch {
                what: "invoice_payments",
                path: "/v1/invoice_payments?invoice=in_1QdunningFailed01&limit=1&expand[]=data.payment.payment_intent".into()
            }
        );
        let mut enriched = draft.clone();
        apply(
            &mut enriched,
            &draft.fetches[0],
            &fixture("api.invoice_payments"),
        );
        assert_eq!(enriched.decline_code.as_deref(), Some("insufficient_funds"));
        assert_eq!(enriched.card.last4.as_deref(), Some("0341"));
        // Not expanded: the PaymentIntent is fetched on its own.
        let mut thin = draft.clone();
        thin.fetches.clear();
        apply(
            &mut thin,
            &draft.fetches[0],
            &json!({ "data": [{ "payment": { "type": "payment_intent", "payment_intent": "pi_2" } }] }),
        );
        assert_eq!(
            thin.fetches[0].path,
            "/v1/payment_intents/pi_2?expand[]=latest_charge"
        );
        assert_eq!(thin.decline_code, None);
    }
}
