//! Lago: `X-Lago-Signature` (the `hmac` algorithm) and Lago's webhooks.
//!
//! A Lago webhook endpoint signs with one of two algorithms, chosen when the
//! endpoint is created and sent in `X-Lago-Signature-Algorithm`: `hmac` (the
//! signature is the base64 HMAC-SHA256 of the raw body under the
//! organization's HMAC key, shown in Lago under Developers › Webhooks as the
//! "HMAC signature token") or `jwt` (an RS256 JWT wrapping the body, Lago's
//! default). dunningd verifies `hmac` only and refuses `jwt` with a message
//! that says so: create the endpoint with the HMAC signature. The signature
//! carries no time, so there is no tolerance; a replayed webhook is a
//! duplicate of the event already stored. This follows getlago.com/docs
//! "Format & Signature" and lago-api's `Webhook#generate_headers` and
//! `#hmac_signature` (app/models/webhook.rb).
//!
//! The event id is `X-Lago-Unique-Key`, the id of Lago's webhook record,
//! kept across Lago's retries. Without that header (an offline `sources
//! map`) it is the hex SHA-256 of the payload in compact JSON form.
//!
//! The payload is `{webhook_type, object_type, organization_id,
//! <object_type>: {…}}` (lago-api `Webhooks::BaseService#call`).
//!
//! | Lago webhook | dunningd type |
//! |---|---|
//! | `invoice.payment_failure` | `payment_failed` |
//! | `invoice.payment_status_updated` (`payment_status` `failed`) | `payment_failed` |
//! | `invoice.payment_status_updated` (`payment_status` `succeeded`) | `payment_succeeded` |
//! | `invoice.payment_overdue` | `payment_failed` |
//! | `invoice.payment_dispute_lost` | `dispute_closed` |
//! | `subscription.terminated` | `subscription_canceled` |
//!
//! A failed charge sends both `invoice.payment_failure` (with the payment
//! provider's error) and `invoice.payment_status_updated`; both are about the
//! same invoice, so the second is recorded on the case the first opened.
//! `invoice.payment_overdue` is what an invoice without automatic payment
//! sends once its due date passes: the case dunning exists for.
//! `payment.succeeded` is ignored (the invoice's
//! `invoice.payment_status_updated` carries the same payment), as are
//! `customer.payment_provider_error` (creating the customer at the payment
//! provider failed: no payment was tried) and `dunning_campaign.finished`.
//! Lago sends no webhook for a card update, an expiring card or an opened
//! dispute.
//!
//! The customer id is `external_customer_id` / the customer's `external_id`,
//! the id the user's own system gave the customer; the subscription is the
//! subscription's `external_id` likewise; the invoice is its `lago_id`.
//! `invoice.payment_failure` names ids only: the invoice (amount due in
//! cents, currency, the customer's email, name, phone and time zone, its
//! `document_locale`, the subscription) is fetched from
//! `/api/v1/invoices/{lago_invoice_id}` with the source's `api_key` (Bearer).

use axum::http::HeaderMap;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use hmac::Mac;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{
    Draft, Fetch, Ignored, Refusal, SourceConfig, currency, header, hmac_sha256, minor_units,
    rfc3339, text,
};

const SIGNATURE: &str = "X-Lago-Signature";
const ALGORITHM: &str = "X-Lago-Signature-Algorithm";
const UNIQUE_KEY: &str = "X-Lago-Unique-Key";

pub fn verify(
    source: &SourceConfig,
    headers: &HeaderMap,
    body: &[u8],
    _now: DateTime<Utc>,
) -> Result<(), Refusal> {
    match header(headers, ALGORITHM).map(str::trim) {
        None => return Err(Refusal::Missing(ALGORITHM)),
        Some("hmac") => {}
        Some("jwt") => {
            return Err(Refusal::Malformed {
                header: ALGORITHM,
                problem: "jwt is not verified by dunningd; create the Lago webhook endpoint with the HMAC signature".into(),
            });
        }
        Some(_) => {
            return Err(Refusal::Malformed {
                header: ALGORITHM,
                problem: "not hmac, the algorithm dunningd verifies".into(),
            });
        }
    }
    let value = header(headers, SIGNATURE).ok_or(Refusal::Missing(SIGNATURE))?;
    let given = base64::engine::general_purpose::STANDARD
        .decode(value.trim())
        .map_err(|_| Refusal::Malformed {
            header: SIGNATURE,
            problem: "not base64".into(),
        })?;
    let matches = source
        .secrets
        .iter()
        .any(|secret| hmac_sha256(secret, &[body]).verify_slice(&given).is_ok());
    if !matches {
        return Err(Refusal::Mismatch(SIGNATURE));
    }
    Ok(())
}

pub fn map(headers: &HeaderMap, payload: &Value) -> Result<Draft, Ignored> {
    let provider_type = payload["webhook_type"]
        .as_str()
        .unwrap_or("(no webhook_type)");
    let Some(object_type) = text(payload, "/object_type") else {
        return Err(Ignored::malformed(provider_type, "object_type"));
    };
    let object = &payload[object_type.as_str()];
    let event_type = match provider_type {
        "invoice.payment_failure" | "invoice.payment_overdue" => "payment_failed",
        "invoice.payment_status_updated" => match object["payment_status"].as_str() {
            Some("failed") => "payment_failed",
            Some("succeeded") => "payment_succeeded",
            _ => {
                return Err(Ignored::new(
                    provider_type,
                    "payment_status is neither failed nor succeeded",
                ));
            }
        },
        "invoice.payment_dispute_lost" => "dispute_closed",
        "subscription.terminated" => "subscription_canceled",
        "payment.succeeded" => {
            return Err(Ignored::new(
                provider_type,
                "the same payment arrives as invoice.payment_status_updated, which is mapped",
            ));
        }
        _ => {
            return Err(Ignored::new(
                provider_type,
                "not an event dunningd maps (see the README's Lago table)",
            ));
        }
    };
    if !object.is_object() {
        return Err(Ignored::malformed(provider_type, &object_type));
    }
    let id = match header(headers, UNIQUE_KEY).filter(|v| !v.is_empty()) {
        Some(key) => key.to_string(),
        None => hex::encode(Sha256::digest(payload.to_string().as_bytes())),
    };
    let mut draft = Draft::new(&id, event_type, provider_type, object.clone());
    match object_type.as_str() {
        "payment_provider_invoice_payment_error" => {
            draft.customer_id = text(object, "/external_customer_id");
            draft.invoice = text(object, "/lago_invoice_id");
            draft.failure_message = text(object, "/provider_error/message");
            draft.decline_code = provider_code(&object["provider_error"]);
            if let Some(invoice) = &draft.invoice {
                draft.fetches.push(Fetch {
                    what: "invoice",
                    path: format!("/api/v1/invoices/{}", segment(invoice)),
                });
            }
        }
        "invoice" => {
            invoice(&mut draft, object);
            draft.occurred_at = rfc3339(object, "/updated_at");
        }
        "payment_dispute_lost" => {
            let disputed = &object["invoice"];
            invoice(&mut draft, disputed);
            draft.occurred_at = rfc3339(disputed, "/payment_dispute_lost_at");
            draft.failure_message = text(object, "/provider_error/message");
        }
        "subscription" => {
            draft.customer_id = text(object, "/external_customer_id");
            draft.subscription = text(object, "/external_id");
            draft.currency = currency(object, "/plan_amount_currency");
            draft.occurred_at = rfc3339(object, "/terminated_at");
            customer(&mut draft, &object["customer"]);
        }
        _ => return Err(Ignored::malformed(provider_type, "object_type")),
    }
    if draft.customer_id.is_none() {
        return Err(Ignored::malformed(provider_type, "external_customer_id"));
    }
    Ok(draft)
}

/// The error code of a payment provider's error: Stripe's `code`, or what
/// other providers name it.
fn provider_code(error: &Value) -> Option<String> {
    ["/error_code", "/code", "/decline_code"]
        .iter()
        .find_map(|p| match error.pointer(p)? {
            Value::String(s) if !s.is_empty() => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        })
}

/// What an invoice (with its customer, as Lago serializes it) tells; fields
/// already known are kept.
fn invoice(draft: &mut Draft, invoice: &Value) {
    draft.invoice = draft.invoice.take().or_else(|| text(invoice, "/lago_id"));
    draft.customer_id = draft
        .customer_id
        .take()
        .or_else(|| text(invoice, "/customer/external_id"));
    draft.currency = draft
        .currency
        .take()
        .or_else(|| currency(invoice, "/currency"));
    let amount = match draft.event_type {
        "payment_succeeded" => minor_units(invoice, "/total_paid_amount_cents")
            .filter(|n| *n > 0)
            .or_else(|| minor_units(invoice, "/total_amount_cents")),
        "dispute_closed" => minor_units(invoice, "/total_amount_cents"),
        _ => minor_units(invoice, "/total_due_amount_cents")
            .or_else(|| minor_units(invoice, "/total_amount_cents")),
    };
    draft.amount = draft.amount.or(amount);
    draft.subscription = draft
        .subscription
        .take()
        .or_else(|| text(invoice, "/subscriptions/0/external_id"));
    customer(draft, &invoice["customer"]);
}

fn customer(draft: &mut Draft, customer: &Value) {
    draft.customer_id = draft
        .customer_id
        .take()
        .or_else(|| text(customer, "/external_id"));
    draft.email = draft.email.take().or_else(|| text(customer, "/email"));
    draft.name = draft.name.take().or_else(|| {
        text(customer, "/name").or_else(|| {
            let parts: Vec<String> = ["/firstname", "/lastname"]
                .iter()
                .filter_map(|p| text(customer, p))
                .collect();
            (!parts.is_empty()).then(|| parts.join(" "))
        })
    });
    draft.phone = draft.phone.take().or_else(|| text(customer, "/phone"));
    draft.timezone = draft
        .timezone
        .take()
        .or_else(|| text(customer, "/timezone").or_else(|| text(customer, "/applicable_timezone")));
    draft.locale = draft
        .locale
        .take()
        .or_else(|| text(customer, "/billing_configuration/document_locale"));
}

pub fn apply(draft: &mut Draft, fetch: &Fetch, object: &Value) {
    if fetch.what == "invoice" {
        // Lago's API answers `{"invoice": {…}}`.
        let fetched = &object["invoice"];
        invoice(draft, fetched);
        if let Some(map) = draft.object.as_object_mut() {
            map.insert("invoice".into(), fetched.clone());
        }
    }
}

/// An id as one path segment.
fn segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
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
        crate::sources::test_source(Provider::Lago, secrets)
    }

    fn signed(secret: &str, body: &str) -> String {
        let mac = hmac_sha256(secret.as_bytes(), &[body.as_bytes()]);
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        crate::sources::test_headers(pairs)
    }

    #[test]
    fn signatures_follow_lagos_hmac_scheme() {
        let body = r#"{"webhook_type":"invoice.payment_failure","object_type":"payment_provider_invoice_payment_error"}"#;
        let now = Utc::now();
        let good = signed("hmac_key", body);
        let check = |secrets: &[&str], pairs: &[(&'static str, &str)], body: &str| {
            verify(&source(secrets), &headers(pairs), body.as_bytes(), now)
        };
        assert_eq!(
            check(
                &["hmac_key"],
                &[(ALGORITHM, "hmac"), (SIGNATURE, &good)],
                body
            ),
            Ok(())
        );
        // Rotation on dunningd's side: the old and new keys both configured.
        assert_eq!(
            check(
                &["old_key", "hmac_key"],
                &[(ALGORITHM, "hmac"), (SIGNATURE, &good)],
                body
            ),
            Ok(())
        );
        let malformed = |header, problem: &str| Refusal::Malformed {
            header,
            problem: problem.into(),
        };
        let hex_signature = hex::encode(
            hmac_sha256(b"hmac_key", &[body.as_bytes()])
                .finalize()
                .into_bytes(),
        );
        let refused = [
            (
                vec![(ALGORITHM, "hmac"), (SIGNATURE, good.as_str())],
                "{}",
                Refusal::Mismatch(SIGNATURE),
            ),
            (
                vec![(ALGORITHM, "hmac"), (SIGNATURE, "AAAA")],
                body,
                Refusal::Mismatch(SIGNATURE),
            ),
            // Hex is not what Lago sends; it does not decode to the MAC.
            (
                vec![(ALGORITHM, "hmac"), (SIGNATURE, hex_signature.as_str())],
                body,
                Refusal::Mismatch(SIGNATURE),
            ),
            (
                vec![(ALGORITHM, "hmac"), (SIGNATURE, "not base64!")],
                body,
                malformed(SIGNATURE, "not base64"),
            ),
            (vec![(ALGORITHM, "hmac")], body, Refusal::Missing(SIGNATURE)),
            (
                vec![(SIGNATURE, good.as_str())],
                body,
                Refusal::Missing(ALGORITHM),
            ),
            (
                vec![
                    (ALGORITHM, "jwt"),
                    (SIGNATURE, "eyJhbGciOiJSUzI1NiJ9.e30.sig"),
                ],
                body,
                malformed(
                    ALGORITHM,
                    "jwt is not verified by dunningd; create the Lago webhook endpoint with the HMAC signature",
                ),
            ),
            (
                vec![(ALGORITHM, "sha1"), (SIGNATURE, good.as_str())],
                body,
                malformed(ALGORITHM, "not hmac, the algorithm dunningd verifies"),
            ),
        ];
        for (pairs, body, refusal) in refused {
            assert_eq!(
                check(&["hmac_key"], &pairs, body),
                Err(refusal.clone()),
                "{pairs:?}"
            );
        }
        assert_eq!(
            check(
                &["other_key"],
                &[(ALGORITHM, "hmac"), (SIGNATURE, &good)],
                body
            ),
            Err(Refusal::Mismatch(SIGNATURE))
        );
        // No time is signed: an old webhook with a right signature is
        // accepted (and is a duplicate if it was seen).
        let long_ago = chrono::TimeZone::timestamp_opt(&Utc, 0, 0).unwrap();
        assert_eq!(
            verify(
                &source(&["hmac_key"]),
                &headers(&[(ALGORITHM, "hmac"), (SIGNATURE, &good)]),
                body.as_bytes(),
                long_ago
            ),
            Ok(())
        );
    }

    fn fixture(name: &str) -> Value {
        let text = match name {
            "invoice_payment_failure" => {
                include_str!("../../../tests/fixtures/sources/lago/invoice_payment_failure.json")
            }
            "invoice_payment_status_updated_failed" => include_str!(
                "../../../tests/fixtures/sources/lago/invoice_payment_status_updated_failed.json"
            ),
            "invoice_payment_status_updated_succeeded" => include_str!(
                "../../../tests/fixtures/sources/lago/invoice_payment_status_updated_succeeded.json"
            ),
            "invoice_payment_overdue" => {
                include_str!("../../../tests/fixtures/sources/lago/invoice_payment_overdue.json")
            }
            "invoice_payment_dispute_lost" => include_str!(
                "../../../tests/fixtures/sources/lago/invoice_payment_dispute_lost.json"
            ),
            "subscription_terminated" => {
                include_str!("../../../tests/fixtures/sources/lago/subscription_terminated.json")
            }
            "api_invoice" => include_str!("../../../tests/fixtures/sources/lago/api_invoice.json"),
            _ => panic!("no fixture {name}"),
        };
        serde_json::from_str(text).expect("fixture is JSON")
    }

    #[test]
    fn documented_webhooks_map_to_events() {
        let key = "5ec2b1a4-3a0e-4c86-9a8b-0c3f1b2e9d71";
        let customer = json!({"id": "user_1234", "email": "dinesh@piedpiper.test", "name": "Dinesh Chugtai",
            "phone": "+1 650-555-0142", "timezone": "America/Los_Angeles", "locale": "en"});
        let invoice_id = "1a901a90-1a90-1a90-1a90-1a901a901a90";
        let table = [
            (
                "invoice_payment_failure",
                vec!["/api/v1/invoices/1a901a90-1a90-1a90-1a90-1a901a901a90"],
                json!({"type": "payment_failed", "subject": invoice_id, "customer": customer,
                    "data": {"invoice": invoice_id, "subscription": "sub_1234", "amount": 12000, "currency": "USD",
                        "decline_code": "card_declined", "failure_message": "Your card was declined."}}),
            ),
            (
                "invoice_payment_status_updated_failed",
                vec![],
                json!({"type": "payment_failed", "subject": invoice_id, "customer": customer,
                    "occurred_at": "2024-06-01T10:05:12+00:00",
                    "data": {"invoice": invoice_id, "amount": 12000, "currency": "USD"}}),
            ),
            (
                "invoice_payment_status_updated_succeeded",
                vec![],
                json!({"type": "payment_succeeded", "subject": invoice_id, "customer": customer,
                    "occurred_at": "2024-06-03T08:30:00+00:00",
                    "data": {"invoice": invoice_id, "amount": 12000, "currency": "USD"}}),
            ),
            (
                "invoice_payment_overdue",
                vec![],
                json!({"type": "payment_failed", "subject": invoice_id, "customer": customer,
                    "occurred_at": "2024-07-01T00:00:05+00:00",
                    "data": {"invoice": invoice_id, "amount": 12000, "currency": "USD"}}),
            ),
            (
                "invoice_payment_dispute_lost",
                vec![],
                json!({"type": "dispute_closed", "subject": invoice_id, "customer": customer,
                    "occurred_at": "2024-06-20T14:00:00+00:00",
                    "data": {"invoice": invoice_id, "amount": 12000, "currency": "USD",
                        "failure_message": "The dispute was lost."}}),
            ),
            (
                "subscription_terminated",
                vec![],
                json!({"type": "subscription_canceled", "subject": "sub_1234", "customer": customer,
                    "occurred_at": "2024-07-15T00:00:00+00:00",
                    "data": {"subscription": "sub_1234", "currency": "USD"}}),
            ),
        ];
        for (name, paths, expected) in table {
            let payload = fixture(name);
            let mut draft = map(&headers(&[(UNIQUE_KEY, key)]), &payload).expect("mapped");
            let fetched: Vec<String> = draft.fetches.iter().map(|f| f.path.clone()).collect();
            assert_eq!(fetched, paths, "{name}");
            while !draft.fetches.is_empty() {
                let fetch = draft.fetches.remove(0);
                apply(&mut draft, &fetch, &fixture("api_invoice"));
            }
            let event = draft.to_json(Provider::Lago, "lago", SubjectLevel::Invoice);
            assert_eq!(event["id"], format!("lago:{key}"), "{name}");
            for field in ["type", "subject", "customer", "occurred_at"] {
                if field == "occurred_at" && expected.get(field).is_none() {
                    assert!(event.get(field).is_none(), "{name}: occurred_at");
                    continue;
                }
                assert_eq!(event[field], expected[field], "{name}: {field}");
            }
            let data = event["data"].as_object().expect("data");
            let wanted = expected["data"].as_object().expect("data");
            for (field, value) in wanted {
                assert_eq!(&data[field], value, "{name}: data.{field}");
            }
            for field in data.keys() {
                assert!(
                    wanted.contains_key(field)
                        || ["provider", "source", "provider_event_type", "object"]
                            .contains(&field.as_str()),
                    "{name}: unexpected data.{field}"
                );
            }
            assert_eq!(data["provider_event_type"], payload["webhook_type"]);
            let object_type = payload["object_type"].as_str().expect("object_type");
            for (field, value) in payload[object_type].as_object().expect("object") {
                assert_eq!(&data["object"][field], value, "{name}: object.{field}");
            }
            draft
                .to_event(Provider::Lago, "lago", SubjectLevel::Invoice)
                .unwrap_or_else(|e| panic!("{name}: {e:?}"));
        }
    }

    #[test]
    fn without_the_unique_key_the_id_is_the_payloads_hash() {
        let payload = fixture("invoice_payment_failure");
        let draft = map(&HeaderMap::new(), &payload).expect("mapped");
        assert_eq!(
            draft.id,
            hex::encode(Sha256::digest(payload.to_string().as_bytes()))
        );
        assert_eq!(draft.id.len(), 64);
    }

    #[test]
    fn unmapped_and_malformed_webhooks_are_ignored_with_a_reason() {
        for (payload, reason) in [
            (
                json!({"webhook_type": "invoice.created", "object_type": "invoice", "invoice": {}}),
                "not an event dunningd maps",
            ),
            (
                json!({"webhook_type": "payment.succeeded", "object_type": "payment", "payment": {}}),
                "invoice.payment_status_updated",
            ),
            (
                json!({"webhook_type": "invoice.payment_status_updated", "object_type": "invoice", "invoice": {"payment_status": "pending"}}),
                "neither failed nor succeeded",
            ),
            (
                json!({"webhook_type": "invoice.payment_failure", "object_type": "payment_provider_invoice_payment_error"}),
                "'payment_provider_invoice_payment_error'",
            ),
            (
                json!({"webhook_type": "invoice.payment_failure"}),
                "'object_type'",
            ),
            (
                json!({"webhook_type": "invoice.payment_overdue", "object_type": "invoice", "invoice": {"lago_id": "i"}}),
                "'external_customer_id'",
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
