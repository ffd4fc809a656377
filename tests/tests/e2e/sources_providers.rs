//! Paddle, Chargebee, Recurly and Lago sources end to end: each provider's
//! whole payloads, signed (or authenticated) as the provider does, posted to
//! the real daemon's webhook listener; the thin parts fetched from a
//! provider-compatible API on loopback; on SQLite and PostgreSQL.
//!
//! One scenario per provider: the failed payment starts one case with the
//! mapped fields, its retry is a duplicate, forged (and for Paddle and
//! Recurly, stale) signatures change nothing, the payment recovers the
//! case, and an event the provider module does not map is ignored with 200.

use dunningd::proto;
use dunningd_e2e::daemon::{Backend, Setup, TestDaemon};
use dunningd_e2e::peers::post_webhook as post;
use dunningd_e2e::signers::{
    chargebee_authorization, lago_signature, node_signers_available, paddle_signature,
    recurly_signature,
};
use dunningd_e2e::stripe_peer::StripePeer;
use dunningd_e2e::{free_port, on_both_backends, workspace_root};
use serde_json::{Value, json};

const SECRET: &str = "provider_signing_secret_0123456789abcdef";
const WRONG_SECRET: &str = "provider_signing_secret_someone_else";
const API_KEY: &str = "provider_api_key_dunningd_e2e_51Hx";
const LINK_SECRET: &str = "0123456789abcdef0123456789abcdef";
/// Chargebee's Basic user name; `SECRET` is its password.
const CHARGEBEE_USER: &str = "dunningd-hooks";

/// An email at once and one a week later, so the case is still active when
/// the payment arrives.
const WORKFLOW: &str = r#"
name: provider-failed
trigger: { event: payment_failed }
exit_on: [payment_succeeded]
steps:
  - name: notice
    after: 0s
    send: [ { channel: email, template: mail } ]
  - name: final
    after: 7d
    send: [ { channel: email, template: mail } ]
templates:
  mail:
    subject: "Payment failed"
    text: "{{ data.amount | money(data.currency) }} failed ({{ data.decline_code }})"
"#;

fn fixture(provider: &str, name: &str) -> String {
    let path = workspace_root().join(format!("tests/fixtures/sources/{provider}/{name}.json"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn fixture_json(provider: &str, name: &str) -> Value {
    serde_json::from_str(&fixture(provider, name)).expect("fixture is JSON")
}

/// The headers a provider sends with `body`, signed with `secret` as of
/// `age` seconds ago; `key` names the notification (its id across retries).
type Sign = fn(secret: &str, body: &str, age: i64, key: &str) -> Vec<(&'static str, String)>;

fn paddle_headers(secret: &str, body: &str, age: i64, _key: &str) -> Vec<(&'static str, String)> {
    let at = chrono::Utc::now().timestamp() - age;
    vec![(
        "Paddle-Signature",
        paddle_signature(secret, at, body.as_bytes()),
    )]
}

fn chargebee_headers(
    secret: &str,
    _body: &str,
    _age: i64,
    _key: &str,
) -> Vec<(&'static str, String)> {
    vec![(
        "Authorization",
        chargebee_authorization(CHARGEBEE_USER, secret),
    )]
}

fn recurly_headers(secret: &str, body: &str, age: i64, key: &str) -> Vec<(&'static str, String)> {
    let at_ms = chrono::Utc::now().timestamp_millis() - age * 1000;
    vec![
        (
            "recurly-signature",
            recurly_signature(secret, at_ms, body.as_bytes()),
        ),
        ("recurly-notification-id", format!("notification-{key}")),
    ]
}

fn lago_headers(secret: &str, body: &str, _age: i64, key: &str) -> Vec<(&'static str, String)> {
    vec![
        ("X-Lago-Signature", lago_signature(secret, body.as_bytes())),
        ("X-Lago-Signature-Algorithm", "hmac".to_string()),
        ("X-Lago-Unique-Key", format!("unique-{key}")),
    ]
}

/// One provider's scenario: its payloads, how it signs, and what the
/// failed payment must map to.
struct Scenario {
    provider: &'static str,
    sign: Sign,
    /// Lines added to the source's YAML (Chargebee's user name).
    source_extra: String,
    /// Whether the source fetches from the API (Chargebee never does).
    api: bool,
    failed: String,
    paid: String,
    unmapped: String,
    customer: &'static str,
    subject: &'static str,
    /// (JSON pointer into the trigger event, expected value; null: absent).
    mapped: Vec<(&'static str, Value)>,
    /// The API paths fetched for the failed payment, in order.
    fetched: Vec<String>,
    /// Whether a signature older than the tolerance is refused.
    dated: bool,
}

async fn source_info(daemon: &TestDaemon) -> proto::SourceInfo {
    let sources = daemon.sources().await;
    assert_eq!(sources.len(), 1, "{sources:?}");
    sources[0].clone()
}

async fn run(backend: Backend, scenario: Scenario, api: StripePeer) {
    let secrets = tempfile::tempdir().expect("tempdir");
    std::fs::write(secrets.path().join("signing"), SECRET).expect("secret");
    std::fs::write(secrets.path().join("api-key"), API_KEY).expect("key");
    std::fs::write(secrets.path().join("links"), LINK_SECRET).expect("links");
    let api_yaml = if scenario.api {
        format!(
            "    api_key: {{ file: '{}' }}\n    api_base: '{}'\n",
            secrets.path().join("api-key").display(),
            api.base_url()
        )
    } else {
        String::new()
    };
    let base = format!("http://127.0.0.1:{}", free_port());
    let mut setup = Setup::default()
        .workflow("provider-failed.yaml", WORKFLOW)
        .on(&backend);
    setup.extra_config = format!(
        "webhooks:\n  listen: '{}'\n  public_url: 'https://billing.example.com/hooks'\n  secret: {{ file: '{}' }}\nsources:\n  billing:\n    provider: {}\n    signing_secret: {{ file: '{}' }}\n{api_yaml}{}",
        base.trim_start_matches("http://"),
        secrets.path().join("links").display(),
        scenario.provider,
        secrets.path().join("signing").display(),
        scenario.source_extra,
    );
    let daemon = TestDaemon::start(setup).await;
    let url = format!("{base}/sources/billing");
    let sign = scenario.sign;
    let provider = scenario.provider;

    // Forged (and stale) signatures first: nothing is fetched or started.
    let mut refusals = vec![(
        sign(WRONG_SECRET, &scenario.failed, 0, "failed"),
        "does not match",
    )];
    if scenario.dated {
        refusals.push((sign(SECRET, &scenario.failed, 301, "failed"), "too old"));
    }
    for (headers, says) in &refusals {
        let (status, answer) = post(&url, &scenario.failed, headers).await;
        assert_eq!(
            (status, answer.contains(says)),
            (401, true),
            "{provider}: {headers:?}: {answer}"
        );
    }
    assert!(daemon.cases_of(scenario.customer).await.is_empty());
    assert!(
        api.requests().is_empty(),
        "{provider}: fetched when refused"
    );

    // The failed payment starts one case, with what the API adds.
    let (status, answer) = post(
        &url,
        &scenario.failed,
        &sign(SECRET, &scenario.failed, 0, "failed"),
    )
    .await;
    assert_eq!(status, 200, "{provider}: {answer}\n{}", daemon.log());
    let answer: Value = serde_json::from_str(&answer).expect("JSON answer");
    assert_eq!(answer["duplicate"], false, "{provider}: {answer}");
    assert_eq!(
        answer["cases_started"].as_array().map(Vec::len),
        Some(1),
        "{provider}: {answer}"
    );
    let cases = daemon.cases_of(scenario.customer).await;
    assert_eq!(cases.len(), 1, "{provider}");
    assert_eq!(cases[0].subject, scenario.subject, "{provider}");
    let detail = daemon.case(&cases[0].id).await;
    let event: Value = serde_json::from_str(&detail.trigger_event_json).expect("trigger event");
    assert_eq!(event["type"], "payment_failed", "{provider}: {event}");
    assert_eq!(event["data"]["provider"], provider);
    for (pointer, expected) in &scenario.mapped {
        assert_eq!(
            event.pointer(pointer).unwrap_or(&Value::Null),
            expected,
            "{provider}: {pointer} in {event}"
        );
    }
    let fetched: Vec<(String, String)> = api
        .requests()
        .iter()
        .map(|r| (r.method.clone(), r.path.clone()))
        .collect();
    let expected: Vec<(String, String)> = scenario
        .fetched
        .iter()
        .map(|p| ("GET".to_string(), p.clone()))
        .collect();
    assert_eq!(fetched, expected, "{provider}");
    daemon.settle().await;
    assert_eq!(daemon.deliveries().len(), 1, "{provider}: the first email");

    // The provider's retry of the same notification: a duplicate.
    let (status, answer) = post(
        &url,
        &scenario.failed,
        &sign(SECRET, &scenario.failed, 0, "failed"),
    )
    .await;
    assert_eq!(status, 200, "{provider}: {answer}");
    assert!(
        answer.contains("\"duplicate\":true"),
        "{provider}: {answer}"
    );
    assert_eq!(daemon.cases_of(scenario.customer).await.len(), 1);

    // The payment recovers the case.
    let (status, answer) = post(
        &url,
        &scenario.paid,
        &sign(SECRET, &scenario.paid, 0, "paid"),
    )
    .await;
    assert_eq!(status, 200, "{provider}: {answer}\n{}", daemon.log());
    let cases = daemon.cases_of(scenario.customer).await;
    assert_eq!(cases.len(), 1, "{provider}");
    assert_eq!(cases[0].state, "recovered", "{provider}: {answer}");

    // An event the module does not map: 200, so the provider does not retry.
    let (status, answer) = post(
        &url,
        &scenario.unmapped,
        &sign(SECRET, &scenario.unmapped, 0, "unmapped"),
    )
    .await;
    assert_eq!(status, 200, "{provider}: {answer}");
    assert!(answer.starts_with("ignored "), "{provider}: {answer}");

    let info = source_info(&daemon).await;
    assert_eq!(info.provider, provider);
    assert_eq!(
        (info.accepted, info.duplicate, info.ignored, info.refused),
        (2, 1, 1, refusals.len() as u64),
        "{provider}: {info:?}"
    );
    let log = daemon.log();
    assert!(
        !log.contains(SECRET) && !log.contains(API_KEY),
        "{provider}: a secret in the log"
    );
}

async fn paddle_failed_paid_forged_and_ignored(backend: Backend) {
    if !node_signers_available() {
        return;
    }
    const CUSTOMER: &str = "ctm_01hv6y1jedq4p1n0yqn5ba3ky4";
    let api = StripePeer::start(API_KEY).await;
    // Paddle's `GET /customers/{id}` answer: no payload carries the email.
    api.put_object(
        &format!("/customers/{CUSTOMER}"),
        json!({
            "data": {
                "id": CUSTOMER, "status": "active", "name": "Michael McGovern",
                "email": "michael@example.com", "locale": "en", "marketing_consent": false,
            },
            "meta": { "request_id": "b2b6f9d4-0d1e-4d5c-9f4c-0c8a1c1f3e7a" }
        }),
    );
    let scenario = Scenario {
        provider: "paddle",
        sign: paddle_headers,
        source_extra: String::new(),
        api: true,
        failed: fixture("paddle", "transaction_payment_failed"),
        paid: fixture("paddle", "transaction_completed"),
        unmapped: fixture("paddle", "transaction_paid"),
        customer: CUSTOMER,
        subject: "txn_01hv8wptq8987qeep44cyrewp9",
        mapped: vec![
            ("/id", json!("paddle:evt_01hv8wt9wgjxyjgssyda5xfhph")),
            ("/customer/email", json!("michael@example.com")),
            ("/customer/name", json!("Michael McGovern")),
            ("/data/amount", json!(65215)),
            ("/data/currency", json!("USD")),
            ("/data/decline_code", json!("declined")),
            ("/data/card/brand", json!("visa")),
            ("/data/card/last4", json!("0002")),
            (
                "/data/update_url",
                json!("https://aeroedit.com/pay?_ptxn=txn_01hv8wptq8987qeep44cyrewp9"),
            ),
        ],
        fetched: vec![format!("/customers/{CUSTOMER}")],
        dated: true,
    };
    run(backend, scenario, api).await;
}

async fn chargebee_failed_paid_forged_and_ignored(backend: Backend) {
    let scenario = Scenario {
        provider: "chargebee",
        sign: chargebee_headers,
        source_extra: format!("    username: '{CHARGEBEE_USER}'\n"),
        api: false,
        failed: fixture("chargebee", "payment_failed"),
        paid: fixture("chargebee", "payment_succeeded"),
        unmapped: json!({
            "id": "ev___test__8asukSOXdvcustomer",
            "occurred_at": 1702645601,
            "source": "admin_console",
            "object": "event",
            "api_version": "v2",
            "event_type": "customer_created",
            "content": { "customer": { "id": "__test__8asukSOXdvg4PD" } }
        })
        .to_string(),
        customer: "__test__8asukSOXdvg4PD",
        subject: "__demo_inv__42",
        mapped: vec![
            ("/id", json!("chargebee:ev___test__8asukSOXdvr1P")),
            ("/customer/email", json!("richard@acme.com")),
            ("/customer/name", json!("Richard Fox")),
            ("/data/amount", json!(1000)),
            ("/data/currency", json!("USD")),
            ("/data/decline_code", json!("card_declined")),
            ("/data/failure_message", json!("Your card was declined.")),
        ],
        fetched: vec![],
        dated: false,
    };
    run(backend, scenario, StripePeer::start(API_KEY).await).await;
}

async fn recurly_failed_paid_forged_and_ignored(backend: Backend) {
    let api = StripePeer::start(API_KEY).await;
    for (path, name) in [
        ("/transactions/ra93x2i8g69t", "api_transaction"),
        ("/invoices/ra8fzs41jdxd", "api_invoice_paid"),
        ("/accounts/r3oplsj3zo7a", "api_account"),
    ] {
        api.put_object(path, fixture_json("recurly", name));
    }
    let scenario = Scenario {
        provider: "recurly",
        sign: recurly_headers,
        source_extra: String::new(),
        api: true,
        failed: fixture("recurly", "payment_failed"),
        paid: fixture("recurly", "charge_invoice_paid"),
        unmapped: json!({
            "id": "ra8foq26o2dt",
            "object_type": "subscription",
            "site_id": "qc326l1hl8k9",
            "event_type": "canceled",
            "event_time": "2022-07-27T00:20:00Z"
        })
        .to_string(),
        customer: "verena",
        subject: "ra8fzs41jdxd",
        mapped: vec![
            ("/id", json!("recurly:notification-failed")),
            ("/customer/email", json!("verena@example.com")),
            ("/data/amount", json!(4990)),
            ("/data/currency", json!("USD")),
            ("/data/decline_code", json!("insufficient_funds")),
            ("/data/card/brand", json!("visa")),
            ("/data/card/last4", json!("0002")),
            ("/data/subscription", json!("ra8foq26o2dt")),
            // Recurly's credentials are not kept in the event.
            (
                "/data/object/transaction/payment_method/gateway_token",
                Value::Null,
            ),
        ],
        fetched: vec![
            "/transactions/ra93x2i8g69t".into(),
            "/accounts/r3oplsj3zo7a".into(),
        ],
        dated: true,
    };
    run(backend, scenario, api).await;
}

async fn lago_failed_paid_forged_and_ignored(backend: Backend) {
    const INVOICE: &str = "1a901a90-1a90-1a90-1a90-1a901a901a90";
    let api = StripePeer::start(API_KEY).await;
    api.put_object(
        &format!("/api/v1/invoices/{INVOICE}"),
        fixture_json("lago", "api_invoice"),
    );
    let scenario = Scenario {
        provider: "lago",
        sign: lago_headers,
        source_extra: String::new(),
        api: true,
        failed: fixture("lago", "invoice_payment_failure"),
        paid: fixture("lago", "invoice_payment_status_updated_succeeded"),
        unmapped: fixture("lago", "invoice_payment_dispute_lost").replace(
            "\"invoice.payment_dispute_lost\"",
            "\"invoice.payment_dispute_pending\"",
        ),
        customer: "user_1234",
        subject: INVOICE,
        mapped: vec![
            ("/id", json!("lago:unique-failed")),
            ("/customer/email", json!("dinesh@piedpiper.test")),
            ("/customer/timezone", json!("America/Los_Angeles")),
            ("/data/amount", json!(12000)),
            ("/data/currency", json!("USD")),
            ("/data/decline_code", json!("card_declined")),
            ("/data/failure_message", json!("Your card was declined.")),
        ],
        fetched: vec![format!("/api/v1/invoices/{INVOICE}")],
        dated: false,
    };
    run(backend, scenario, api).await;
}

on_both_backends!(
    paddle_failed_paid_forged_and_ignored,
    chargebee_failed_paid_forged_and_ignored,
    recurly_failed_paid_forged_and_ignored,
    lago_failed_paid_forged_and_ignored,
);
