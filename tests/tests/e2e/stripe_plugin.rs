//! The `stripe` plugin against a Stripe-compatible peer on loopback: each
//! action's request and its effect, every error class, ids refused before a
//! request, idempotency across a retried delivery, the key never shown; then
//! a workflow that retries a payment and cancels the subscription through the
//! real daemon.

use std::collections::BTreeMap;
use std::time::Duration;

use dunningd::config::ChannelSpec;
use dunningd::plugin_host::PluginHost;
use dunningd_e2e::daemon::{Setup, TestDaemon};
use dunningd_e2e::stripe_peer::StripePeer;
use dunningd_plugin_api::wire::{DeliveryRequest, DeliveryResponse, Recipient};
use serde_json::json;

const KEY: &str = "sk_test_51Dunningd0000SecretKey";

fn spec(settings: serde_json::Value) -> ChannelSpec {
    ChannelSpec {
        plugin: "stripe".into(),
        settings,
        secret_keys: Vec::new(),
        timeout: Duration::from_secs(10),
        concurrency: 4,
        max_attempts: 3,
        retry_backoff: Duration::from_secs(60),
        send_window: None,
        frequency_cap: None,
    }
}

fn host(settings: serde_json::Value) -> PluginHost {
    let host = PluginHost::new(dunningd_e2e::plugin_dir().to_path_buf());
    host.configure(&BTreeMap::from([("ch".to_string(), spec(settings))]))
        .expect("configure");
    host
}

fn request(key: &str, fields: &[(&str, &str)]) -> DeliveryRequest {
    DeliveryRequest {
        delivery_id: "d1".into(),
        idempotency_key: key.into(),
        channel: "ch".into(),
        case_id: "case".into(),
        workflow: "payment-failed".into(),
        step: "retry".into(),
        template: "t".into(),
        attempt: 1,
        recipient: Recipient {
            customer_id: "cus_1".into(),
            ..Default::default()
        },
        message: fields
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        data: json!({ "subscription": "sub_1" }),
        subject: "in_1".into(),
    }
}

fn open_invoice(peer: &StripePeer, id: &str) {
    peer.put_object(
        &format!("/v1/invoices/{id}"),
        json!({ "id": id, "object": "invoice", "status": "open", "amount_due": 4900, "amount_paid": 0 }),
    );
}

fn active_subscription(peer: &StripePeer, id: &str) {
    peer.put_object(
        &format!("/v1/subscriptions/{id}"),
        json!({ "id": id, "object": "subscription", "status": "past_due", "pause_collection": null }),
    );
}

#[tokio::test]
async fn each_action_sends_its_request_and_takes_effect() {
    let peer = StripePeer::start(KEY).await;
    let stripe = host(json!({
        "api_key": KEY, "base_url": peer.base_url(),
        "stripe_account": "acct_1Connected", "api_version": "2025-03-31.basil",
    }));
    for id in ["in_1", "in_2", "in_3"] {
        open_invoice(&peer, id);
    }
    active_subscription(&peer, "sub_1");

    // (fields, method, path, query, form, object to look at, its field, its value)
    type Row<'a> = (
        Vec<(&'a str, &'a str)>,
        &'a str,
        &'a str,
        &'a str,
        Vec<(&'a str, &'a str)>,
        &'a str,
        &'a str,
        serde_json::Value,
    );
    let table: Vec<Row> = vec![
        (
            vec![("action", "retry_payment"), ("off_session", "true")],
            "POST",
            "/v1/invoices/in_1/pay",
            "",
            vec![("off_session", "true")],
            "/v1/invoices/in_1",
            "status",
            json!("paid"),
        ),
        (
            vec![("action", "mark_uncollectible"), ("invoice", "in_2")],
            "POST",
            "/v1/invoices/in_2/mark_uncollectible",
            "",
            vec![],
            "/v1/invoices/in_2",
            "status",
            json!("uncollectible"),
        ),
        (
            vec![("action", "void_invoice"), ("invoice", "in_3")],
            "POST",
            "/v1/invoices/in_3/void",
            "",
            vec![],
            "/v1/invoices/in_3",
            "status",
            json!("void"),
        ),
        (
            vec![
                ("action", "pause_subscription"),
                ("subscription", "sub_1"),
                ("behavior", "keep_as_draft"),
            ],
            "POST",
            "/v1/subscriptions/sub_1",
            "",
            vec![("pause_collection[behavior]", "keep_as_draft")],
            "/v1/subscriptions/sub_1",
            "pause_collection",
            json!({ "behavior": "keep_as_draft", "resumes_at": null }),
        ),
        (
            vec![("action", "resume_subscription"), ("subscription", "sub_1")],
            "POST",
            "/v1/subscriptions/sub_1",
            "",
            vec![("pause_collection", "")],
            "/v1/subscriptions/sub_1",
            "pause_collection",
            serde_json::Value::Null,
        ),
        (
            vec![
                ("action", "cancel_subscription"),
                ("subscription", "sub_1"),
                ("invoice_now", "true"),
                ("prorate", "false"),
            ],
            "DELETE",
            "/v1/subscriptions/sub_1",
            "invoice_now=true&prorate=false",
            vec![],
            "/v1/subscriptions/sub_1",
            "status",
            json!("canceled"),
        ),
    ];
    for (i, (fields, method, path, query, form, object, field, value)) in
        table.into_iter().enumerate()
    {
        let key = format!("dunningd-case-1-step-{i}");
        let got = stripe.send(request(&key, &fields)).await;
        let id = path.split('/').nth(3).expect("an id in the path");
        assert_eq!(
            got,
            DeliveryResponse::Sent {
                receipt: Some(id.to_string())
            },
            "{fields:?}"
        );
        let seen = peer.requests().pop().expect("a request");
        let form: BTreeMap<String, String> = form
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let action = fields[0].1;
        assert_eq!(
            (
                seen.method.as_str(),
                seen.path.as_str(),
                seen.query.as_str(),
                &seen.form
            ),
            (method, path, query, &form),
            "{fields:?}"
        );
        assert_eq!(
            seen.idempotency_key,
            Some(format!("dunningd:{action}:{key}"))
        );
        assert_eq!(seen.stripe_account.as_deref(), Some("acct_1Connected"));
        let now = peer.object(object).expect("the object");
        assert_eq!(now[field], value, "{fields:?}: {now}");
    }
    assert_eq!(peer.requests().len(), 6);
}

#[tokio::test]
async fn stripe_errors_become_outcomes_and_the_key_is_never_shown() {
    let peer = StripePeer::start(KEY).await;
    let stripe = host(json!({ "api_key": KEY, "base_url": peer.base_url() }));
    open_invoice(&peer, "in_1");
    peer.put_object(
        "/v1/invoices/in_declined",
        json!({ "id": "in_declined", "status": "open", "amount_due": 4900, "_decline_code": "insufficient_funds" }),
    );
    peer.put_object(
        "/v1/invoices/in_paid",
        json!({ "id": "in_paid", "status": "paid", "amount_due": 4900 }),
    );
    let mut errors = Vec::new();

    // (fields, status the peer fails the next request with, outcome, text)
    type Row<'a> = (Vec<(&'a str, &'a str)>, Option<u16>, &'a str, &'a str);
    let table: Vec<Row> = vec![
        (
            vec![("action", "retry_payment"), ("invoice", "in_declined")],
            None,
            "Permanent",
            "card declined (insufficient_funds): retry_payment /v1/invoices/in_declined/pay: Stripe card_error card_declined (HTTP 402): Your card has insufficient funds.",
        ),
        (
            vec![("action", "retry_payment"), ("invoice", "in_paid")],
            None,
            "Permanent",
            "nothing to do, already settled or gone: retry_payment /v1/invoices/in_paid/pay: Stripe invalid_request_error (HTTP 400): Invoice is already paid",
        ),
        (
            vec![("action", "void_invoice"), ("invoice", "in_paid")],
            None,
            "Permanent",
            "nothing to do, already settled or gone: void_invoice /v1/invoices/in_paid/void: Stripe invalid_request_error invoice_not_open (HTTP 400)",
        ),
        (
            vec![("action", "retry_payment"), ("invoice", "in_gone")],
            None,
            "Permanent",
            "nothing to do, already settled or gone: retry_payment /v1/invoices/in_gone/pay: Stripe invalid_request_error resource_missing (HTTP 404): No such invoice: 'in_gone'",
        ),
        (
            vec![
                ("action", "cancel_subscription"),
                ("subscription", "sub_gone"),
            ],
            None,
            "Permanent",
            "resource_missing (HTTP 404): No such subscription: 'sub_gone'",
        ),
        (
            vec![("action", "retry_payment")],
            Some(402),
            "Permanent",
            "card declined (generic_decline)",
        ),
        (
            vec![("action", "retry_payment")],
            Some(403),
            "Permanent",
            "Stripe permission_error (HTTP 403): The provided key does not have the required permissions for this endpoint (check the channel's api_key and its permissions)",
        ),
        (
            vec![("action", "retry_payment")],
            Some(409),
            "Permanent",
            "idempotency key refused: retry_payment /v1/invoices/in_1/pay: Stripe idempotency_error (HTTP 409)",
        ),
        (
            vec![("action", "retry_payment")],
            Some(429),
            "Retryable",
            "retry_after_secs: Some(2)",
        ),
        (
            vec![("action", "retry_payment")],
            Some(500),
            "Unknown",
            "Stripe api_error (HTTP 500): Something went wrong on Stripe's end (Stripe may have acted; the retry reuses the idempotency key)",
        ),
        (
            vec![("action", "retry_payment")],
            Some(503),
            "Unknown",
            "Stripe api_error (HTTP 503)",
        ),
    ];
    for (i, (fields, fail, kind, text)) in table.into_iter().enumerate() {
        if let Some(status) = fail {
            peer.fail_next(1, status);
        }
        let got = format!(
            "{:?}",
            stripe.send(request(&format!("errors-{i}"), &fields)).await
        );
        assert!(
            got.starts_with(kind) && got.contains(text),
            "{fields:?} {fail:?}: {got}"
        );
        errors.push(got);
    }
    let before = peer.requests().len();
    assert_eq!(
        peer.object("/v1/invoices/in_1").expect("in_1")["status"],
        "open",
        "no failed request paid the invoice"
    );

    // Refused before any request: bad ids, unknown actions, bad flags.
    let table: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (
            vec![
                ("action", "retry_payment"),
                ("invoice", "in_1/../../v1/customers"),
            ],
            "field 'invoice': invalid Stripe id 'in_1/../../v1/customers': '/' is not a letter, digit or '_'",
        ),
        (
            vec![
                ("action", "cancel_subscription"),
                ("subscription", "sub_1?prorate=true"),
            ],
            "field 'subscription': invalid Stripe id 'sub_1?prorate=true'",
        ),
        (
            vec![("action", "cancel_subscription")],
            "field 'subscription' is missing or empty",
        ),
        (
            vec![("action", "refund_everything")],
            "unknown action 'refund_everything' (one of retry_payment, mark_uncollectible, void_invoice, cancel_subscription, pause_subscription, resume_subscription)",
        ),
        (
            vec![
                ("action", "cancel_subscription"),
                ("subscription", "sub_1"),
                ("prorate", "maybe"),
            ],
            "field 'prorate': expected 'true' or 'false', got 'maybe'",
        ),
    ];
    for (fields, text) in table {
        let got = format!("{:?}", stripe.send(request("refused", &fields)).await);
        assert!(
            got.starts_with("Permanent") && got.contains(text),
            "{fields:?}: {got}"
        );
        errors.push(got);
    }
    assert_eq!(
        peer.requests().len(),
        before,
        "nothing refused reached Stripe"
    );

    // A wrong key: the operator's to fix. The peer quotes the key it refused
    // (Stripe shows its last four characters); the plugin hides it.
    let wrong_key = "sk_test_WrongKeyWrongKey0000";
    let wrong = host(json!({ "api_key": wrong_key, "base_url": peer.base_url() }));
    let got = format!(
        "{:?}",
        wrong
            .send(request("wrong", &[("action", "retry_payment")]))
            .await
    );
    assert!(
        got.starts_with("Permanent")
            && got.contains("authentication_error (HTTP 401): Invalid API Key provided: ***")
            && got.contains("check the channel's api_key"),
        "{got}"
    );
    assert!(!got.contains(wrong_key), "{got}");

    // Nobody listening: nothing was sent, safe to retry.
    let closed = host(json!({ "api_key": KEY, "base_url": "http://127.0.0.1:9" }));
    let got = format!(
        "{:?}",
        closed
            .send(request("closed", &[("action", "retry_payment")]))
            .await
    );
    assert!(
        got.starts_with("Retryable")
            && got.contains("cannot connect to Stripe at http://127.0.0.1:9"),
        "{got}"
    );
    errors.push(got);

    // A peer that takes the request and never answers: it may have acted.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let silent_url = format!("http://{}", silent.local_addr().expect("addr"));
    let held = std::thread::spawn(move || silent.accept().map(|(stream, _)| stream));
    let slow = host(json!({ "api_key": KEY, "base_url": silent_url, "request_timeout": 1 }));
    let got = format!(
        "{:?}",
        slow.send(request("slow", &[("action", "retry_payment")]))
            .await
    );
    assert!(
        got.starts_with("Unknown") && got.contains("failed after it was sent"),
        "{got}"
    );
    drop(held.join());
    errors.push(got);

    for error in &errors {
        assert!(!error.contains(KEY), "the key in: {error}");
    }
}

#[tokio::test]
async fn a_delivery_sent_again_acts_once() {
    let peer = StripePeer::start(KEY).await;
    let stripe = host(json!({ "api_key": KEY, "base_url": peer.base_url() }));
    open_invoice(&peer, "in_1");
    active_subscription(&peer, "sub_1");
    let pay = request("dunningd-case-7-retry", &[("action", "retry_payment")]);

    // The first attempt's answer is lost to a 500; Stripe may have acted, so
    // the delivery is unknown and retried with the same key.
    peer.fail_next(1, 500);
    assert!(matches!(
        stripe.send(pay.clone()).await,
        DeliveryResponse::Unknown { .. }
    ));
    let sent = DeliveryResponse::Sent {
        receipt: Some("in_1".into()),
    };
    assert_eq!(stripe.send(pay.clone()).await, sent);
    // Sent again (a crash before the outcome was stored): Stripe answers the
    // first answer again instead of "already paid".
    assert_eq!(stripe.send(pay).await, sent);
    let keys: Vec<Option<String>> = peer
        .requests()
        .into_iter()
        .map(|r| r.idempotency_key)
        .collect();
    assert_eq!(
        keys,
        vec![Some("dunningd:retry_payment:dunningd-case-7-retry".to_string()); 3]
    );

    let cancel = request(
        "dunningd-case-7-cancel",
        &[("action", "cancel_subscription"), ("subscription", "sub_1")],
    );
    let cancelled = DeliveryResponse::Sent {
        receipt: Some("sub_1".into()),
    };
    assert_eq!(stripe.send(cancel.clone()).await, cancelled);
    let first = peer.object("/v1/subscriptions/sub_1").expect("sub_1")["canceled_at"].clone();
    assert_eq!(
        stripe.send(cancel).await,
        cancelled,
        "not 'no such subscription'"
    );
    assert_eq!(
        peer.object("/v1/subscriptions/sub_1").expect("sub_1")["canceled_at"],
        first
    );

    // Another delivery is another key: the invoice is paid by now.
    let other = format!(
        "{:?}",
        stripe
            .send(request(
                "dunningd-case-8-retry",
                &[("action", "retry_payment")]
            ))
            .await
    );
    assert!(other.contains("already settled"), "{other}");
}

#[tokio::test]
async fn settings_are_checked_when_the_channel_opens() {
    let table = [
        (json!({}), "settings.api_key: missing"),
        (
            json!({ "api_key": "pk_test_Publishable" }),
            "settings.api_key: not a secret key (sk_…) or restricted key (rk_…)",
        ),
        (
            json!({ "api_key": KEY, "base_url": "not a url" }),
            "settings.base_url: invalid URL",
        ),
        (
            json!({ "api_key": KEY, "stripe_account": "acct 1" }),
            "settings.stripe_account: invalid Stripe id 'acct 1'",
        ),
        (
            json!({ "api_key": KEY, "api_version": "2025 03" }),
            "settings.api_version: invalid",
        ),
    ];
    for (settings, want) in table {
        let host = PluginHost::new(dunningd_e2e::plugin_dir().to_path_buf());
        let err = host
            .configure(&BTreeMap::from([("billing".to_string(), spec(settings))]))
            .expect_err(want)
            .to_string();
        assert!(err.contains(want), "{err}");
        assert!(!err.contains("pk_test_Publishable"), "{err}");
    }
}

const WORKFLOW: &str = r#"
name: payment-failed
trigger: { event: payment_failed }
steps:
  - name: retry
    after: 0s
    send:
      - { channel: billing, template: retry }
  - name: cancel
    after: 30d
    send:
      - { channel: billing, template: cancel }
templates:
  retry:
    action: retry_payment
  cancel:
    action: cancel_subscription
    subscription: "{{ data.subscription }}"
"#;

#[tokio::test]
async fn a_workflow_retries_the_payment_then_cancels_the_subscription() {
    let peer = StripePeer::start(KEY).await;
    open_invoice(&peer, "in_ada");
    active_subscription(&peer, "sub_ada");
    let dir = tempfile::tempdir().expect("tempdir");
    let key_file = dir.path().join("stripe-key");
    std::fs::write(&key_file, format!("{KEY}\n")).expect("secret file");
    let setup = Setup::default()
        .workflow("payment-failed.yaml", WORKFLOW)
        .channel(
            "billing",
            &format!(
                "{{ plugin: stripe, settings: {{ base_url: '{}' }}, secrets: {{ api_key: {{ file: '{}' }} }} }}",
                peer.base_url(),
                key_file.display()
            ),
        );
    let daemon = TestDaemon::start(setup).await;
    let event = json!({
        "id": "evt_1", "type": "payment_failed",
        "customer": { "id": "cus_ada", "name": "Ada" },
        "subject": "in_ada",
        "data": { "amount": 4900, "currency": "EUR", "subscription": "sub_ada" }
    });
    let results = daemon.send_events(vec![event.to_string()]).await;
    let case_id = results[0].cases_started[0].clone();
    daemon.settle().await;
    assert_eq!(
        peer.object("/v1/invoices/in_ada").expect("invoice")["status"],
        "paid"
    );
    daemon.advance("30d").await;

    let seen: Vec<(String, String)> = peer
        .requests()
        .into_iter()
        .map(|r| (r.method, r.path))
        .collect();
    assert_eq!(
        seen,
        [
            ("POST".to_string(), "/v1/invoices/in_ada/pay".to_string()),
            (
                "DELETE".to_string(),
                "/v1/subscriptions/sub_ada".to_string()
            ),
        ]
    );
    assert_eq!(
        peer.object("/v1/subscriptions/sub_ada")
            .expect("subscription")["status"],
        "canceled"
    );
    let detail = daemon.case(&case_id).await;
    let receipts: Vec<(&str, &str)> = detail
        .deliveries
        .iter()
        .map(|d| (d.status.as_str(), d.receipt.as_str()))
        .collect();
    assert_eq!(receipts, [("sent", "in_ada"), ("sent", "sub_ada")]);
    let show = daemon.ctl_ok(&["cases", "show", &case_id]);
    assert!(
        show.contains("in_ada") && show.contains("sub_ada"),
        "{show}"
    );
    assert!(!show.contains(KEY) && !daemon.log().contains(KEY));
}

/// The peer itself, as other suites use it to stand in for Stripe: objects
/// put in answer GETs (query ignored), with Bearer or basic auth; anything
/// else is Stripe's error.
#[tokio::test]
async fn the_peer_answers_objects_as_stripe_does() {
    let peer = StripePeer::start(KEY).await;
    peer.put_object(
        "/v1/customers/cus_1",
        json!({ "id": "cus_1", "object": "customer", "_switch": 1 }),
    );
    let client = reqwest::Client::new();
    let url = format!(
        "{}/v1/customers/cus_1?expand[]=subscriptions",
        peer.base_url()
    );
    let get = |request: reqwest::RequestBuilder| async move {
        let response = request.send().await.expect("GET");
        let status = response.status().as_u16();
        let body: serde_json::Value = response.json().await.expect("JSON");
        (status, body)
    };
    let bearer = get(client.get(&url).bearer_auth(KEY)).await;
    assert_eq!(
        bearer,
        (200, json!({ "id": "cus_1", "object": "customer" }))
    );
    let basic = get(client.get(&url).basic_auth(KEY, None::<&str>)).await;
    assert_eq!(basic, bearer);
    let (status, body) = get(client.get(&url).bearer_auth("sk_test_other")).await;
    assert_eq!(
        (status, &body["error"]["type"]),
        (401, &json!("authentication_error"))
    );
    let (status, body) = get(client.get(&url)).await;
    assert_eq!(
        (status, &body["error"]["type"]),
        (401, &json!("authentication_error"))
    );
    let missing = format!("{}/v1/customers/cus_2", peer.base_url());
    let (status, body) = get(client.get(&missing).bearer_auth(KEY)).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (404, &json!("resource_missing"))
    );
    let (status, body) = get(client
        .post(format!("{}/v1/invoices/in_1/pay", peer.base_url()))
        .bearer_auth(KEY)
        .header("Content-Type", "application/json")
        .body("{}"))
    .await;
    assert_eq!(
        (status, &body["error"]["type"]),
        (400, &json!("invalid_request_error"))
    );
    let seen = peer.requests();
    assert_eq!(seen.len(), 6, "refused requests are recorded too");
    assert_eq!(seen[0].query, "expand[]=subscriptions");
}
