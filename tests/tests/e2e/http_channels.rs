//! The `twilio` and `webhook` plugins against real HTTP peers on loopback:
//! every outcome class through the plugin host, then whole sequences through
//! the real daemon.

use std::collections::BTreeMap;
use std::time::Duration;

use dunningd::config::ChannelSpec;
use dunningd::plugin_host::PluginHost;
use dunningd::proto;
use dunningd_e2e::daemon::{Setup, TestDaemon};
use dunningd_e2e::peers::{TwilioPeer, WebhookPeer};
use dunningd_e2e::stripe_peer::StripePeer;
use dunningd_plugin_api::wire::{DeliveryRequest, DeliveryResponse, Recipient};

use dunningd_e2e::peers::{TWILIO_SID as SID, TWILIO_TOKEN as TOKEN};

fn host(plugin: &str, settings: serde_json::Value) -> PluginHost {
    let host = PluginHost::new(dunningd_e2e::plugin_dir().to_path_buf());
    let spec = ChannelSpec {
        plugin: plugin.into(),
        settings,
        secret_keys: Vec::new(),
        timeout: Duration::from_secs(10),
        concurrency: 4,
        max_attempts: 3,
        retry_backoff: Duration::from_secs(60),
        send_window: None,
        frequency_cap: None,
    };
    host.configure(&BTreeMap::from([("ch".to_string(), spec)]))
        .expect("configure");
    host
}

fn request(phone: Option<&str>, body: &str) -> DeliveryRequest {
    DeliveryRequest {
        delivery_id: "d1".into(),
        idempotency_key: "dunningd-case-1-email".into(),
        channel: "ch".into(),
        case_id: "case".into(),
        workflow: "payment-failed".into(),
        step: "suspend".into(),
        template: "t".into(),
        attempt: 1,
        recipient: Recipient {
            customer_id: "cus_1".into(),
            phone: phone.map(String::from),
            ..Default::default()
        },
        message: BTreeMap::from([("body".to_string(), body.to_string())]),
        data: serde_json::json!({ "amount": 4900 }),
        subject: "inv_1".into(),
    }
}

#[tokio::test]
async fn twilio_outcomes_follow_twilio_error_classes() {
    let peer = TwilioPeer::start(SID, SID, TOKEN).await;
    let twilio = host(
        "twilio",
        serde_json::json!({ "account_sid": SID, "auth_token": TOKEN, "from": "+15005550006", "base_url": peer.base_url() }),
    );

    match twilio
        .send(request(Some("+447700900123"), "Your payment is due"))
        .await
    {
        DeliveryResponse::Sent { receipt: Some(sid) } => assert!(sid.starts_with("SM"), "{sid}"),
        other => panic!("expected sent, got {other:?}"),
    }
    let sent = peer.messages();
    assert_eq!(sent.len(), 1);
    assert_eq!(
        (
            sent[0]["To"].as_str(),
            sent[0]["From"].as_str(),
            sent[0]["Body"].as_str()
        ),
        ("+447700900123", "+15005550006", "Your payment is due")
    );

    let table: Vec<(Option<&str>, &str, &str)> = vec![
        (
            Some("+15005550001"),
            "Permanent",
            "Twilio error 21211 (HTTP 400)",
        ),
        (Some("+15005550009"), "Permanent", "Twilio error 21614"),
        (
            Some("+15005550004"),
            "Permanent",
            "recipient unsubscribed (replied STOP): Twilio error 21610",
        ),
        (
            Some("+15005550429"),
            "Retryable",
            "retry_after_secs: Some(7)",
        ),
        (
            Some("+15005550500"),
            "Unknown",
            "Twilio error 20500 (HTTP 500)",
        ),
        (None, "Skipped", "no phone number"),
        (
            Some("0044 7700"),
            "Permanent",
            "invalid phone number '0044 7700': not in E.164 form",
        ),
    ];
    for (phone, kind, text) in table {
        let got = format!("{:?}", twilio.send(request(phone, "hi")).await);
        assert!(
            got.starts_with(kind) && got.contains(text),
            "{phone:?}: {got}"
        );
    }
    assert_eq!(
        peer.requests(),
        6,
        "no request for a missing or malformed number"
    );

    // Wrong credentials are the operator's to fix, not a reason to retry.
    let wrong = host(
        "twilio",
        serde_json::json!({ "account_sid": SID, "auth_token": "wrong", "from": "+15005550006", "base_url": peer.base_url() }),
    );
    let got = format!(
        "{:?}",
        wrong.send(request(Some("+447700900123"), "hi")).await
    );
    assert!(
        got.starts_with("Permanent")
            && got.contains("20003")
            && got.contains("check the channel's account_sid"),
        "{got}"
    );

    // API key auth and a messaging service instead of a From number.
    let keyed_peer = TwilioPeer::start(SID, "SK0001", "key-secret").await;
    let keyed = host(
        "twilio",
        serde_json::json!({ "account_sid": SID, "api_key_sid": "SK0001", "api_key_secret": "key-secret", "messaging_service_sid": "MG0001", "base_url": keyed_peer.base_url() }),
    );
    assert!(matches!(
        keyed.send(request(Some("+447700900123"), "hi")).await,
        DeliveryResponse::Sent { .. }
    ));
    let m = &keyed_peer.messages()[0];
    assert_eq!(
        (m["MessagingServiceSid"].as_str(), m["_user"].as_str()),
        ("MG0001", "SK0001")
    );
    assert!(!m.contains_key("From"));
}

#[tokio::test]
async fn twilio_settings_are_checked_when_the_channel_opens() {
    let table = [
        (
            serde_json::json!({ "auth_token": TOKEN, "from": "+1500" }),
            "settings.account_sid: missing",
        ),
        (
            serde_json::json!({ "account_sid": SID, "from": "+1500" }),
            "give auth_token, or api_key_sid and api_key_secret",
        ),
        (
            serde_json::json!({ "account_sid": SID, "auth_token": TOKEN }),
            "exactly one of 'from' or 'messaging_service_sid'",
        ),
        (
            serde_json::json!({ "account_sid": SID, "auth_token": TOKEN, "from": "+1", "base_url": "not a url" }),
            "settings.base_url: invalid URL",
        ),
    ];
    for (settings, want) in table {
        let host = PluginHost::new(dunningd_e2e::plugin_dir().to_path_buf());
        let spec = ChannelSpec {
            plugin: "twilio".into(),
            settings,
            secret_keys: Vec::new(),
            timeout: Duration::from_secs(5),
            concurrency: 1,
            max_attempts: 1,
            retry_backoff: Duration::from_secs(1),
            send_window: None,
            frequency_cap: None,
        };
        let err = host
            .configure(&BTreeMap::from([("sms".to_string(), spec)]))
            .expect_err(want)
            .to_string();
        assert!(err.contains(want), "{err}");
    }
}

#[tokio::test]
async fn webhooks_are_signed_and_their_answers_classified() {
    let peer = WebhookPeer::start("s3cret").await;
    let webhook = host(
        "webhook",
        serde_json::json!({ "url": peer.url(), "secret": "s3cret" }),
    );

    assert_eq!(
        webhook.send(request(None, "suspend")).await,
        DeliveryResponse::Sent {
            receipt: Some("req-1".into())
        }
    );
    let got = &peer.received()[0];
    assert!(got.signature_valid, "the receiver verifies the signature");
    assert_eq!(got.idempotency_key, "dunningd-case-1-email");
    // The customer as events and templates name it: `id`, not the ABI's
    // `customer_id` (which the webhook used to forward as it was).
    assert_eq!(got.body["customer"]["id"], "cus_1", "{}", got.body);
    assert!(
        got.body["customer"].get("customer_id").is_none(),
        "{}",
        got.body
    );
    assert_eq!(got.body["data"]["amount"], 4900);
    assert_eq!(got.body["message"]["body"], "suspend");

    let table = [
        (500, "Unknown", "HTTP 500: answer 500"),
        (429, "Retryable", "retry_after_secs: Some(11)"),
        (400, "Permanent", "HTTP 400: answer 400"),
    ];
    for (status, kind, text) in table {
        peer.answer_with(status);
        let got = format!("{:?}", webhook.send(request(None, "x")).await);
        assert!(
            got.starts_with(kind) && got.contains(text),
            "{status}: {got}"
        );
    }

    // A signature made with another secret does not verify.
    let forged = host(
        "webhook",
        serde_json::json!({ "url": peer.url(), "secret": "not-the-secret" }),
    );
    peer.answer_with(200);
    forged.send(request(None, "x")).await;
    assert!(!peer.received().last().expect("received").signature_valid);

    // Nobody listening: not sent, safe to retry.
    let closed = host(
        "webhook",
        serde_json::json!({ "url": "http://127.0.0.1:9/hook", "secret": "s" }),
    );
    let got = format!("{:?}", closed.send(request(None, "x")).await);
    assert!(
        got.starts_with("Retryable") && got.contains("cannot connect"),
        "{got}"
    );
}

const SEQUENCE: &str = r#"
name: payment-failed
trigger: { event: payment_failed }
exit_on: [payment_succeeded]
steps:
  - name: reminder
    after: 0s
    send:
      - { channel: sms, template: reminder_sms }
  - name: suspend
    after: 14d
    send:
      - { channel: webhook, template: suspend }
templates:
  reminder_sms:
    body: "{{ customer.name }}, {{ data.amount | money(data.currency) }} is still due."
  suspend:
    action: suspend_account
    customer: "{{ customer.id }}"
"#;

#[tokio::test]
async fn a_sequence_texts_through_twilio_and_suspends_through_a_webhook() {
    let twilio = TwilioPeer::start(SID, SID, TOKEN).await;
    let hooks = WebhookPeer::start("hook-secret").await;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("twilio-token"), format!("{TOKEN}\n")).expect("secret file");
    std::fs::write(dir.path().join("webhook-secret"), "hook-secret").expect("secret file");
    let setup = Setup::default()
        .workflow("payment-failed.yaml", SEQUENCE)
        .channel(
            "sms",
            &format!(
                "{{ plugin: twilio, settings: {{ account_sid: {SID}, from: '+15005550006', base_url: '{}' }}, secrets: {{ auth_token: {{ file: '{}' }} }} }}",
                twilio.base_url(),
                dir.path().join("twilio-token").display()
            ),
        )
        .channel(
            "webhook",
            &format!(
                "{{ plugin: webhook, settings: {{ url: '{}' }}, secrets: {{ secret: {{ file: '{}' }} }} }}",
                hooks.url(),
                dir.path().join("webhook-secret").display()
            ),
        );
    let daemon = TestDaemon::start(setup).await;
    let event = |id: &str, customer: &str, phone: Option<&str>| {
        let mut c = serde_json::json!({ "id": customer, "name": "Ada" });
        if let Some(phone) = phone {
            c["phone"] = phone.into();
        }
        serde_json::json!({ "id": id, "type": "payment_failed", "customer": c, "subject": format!("inv_{customer}"), "data": { "amount": 4900, "currency": "EUR" } }).to_string()
    };
    let results = daemon
        .client()
        .await
        .send_events(proto::SendEventsRequest {
            events: vec![
                event("e1", "cus_ok", Some("+447700900123")),
                event("e2", "cus_stop", Some("+15005550004")),
                event("e3", "cus_nophone", None),
            ],
        })
        .await
        .expect("send")
        .into_inner()
        .results;
    daemon.settle().await;

    let texts = twilio.messages();
    assert_eq!(texts.len(), 1);
    assert_eq!(texts[0]["Body"], "Ada, €49.00 is still due.");
    let sms_of = |detail: &proto::CaseDetail| {
        detail
            .deliveries
            .iter()
            .find(|d| d.channel == "sms")
            .cloned()
            .expect("sms delivery")
    };
    let mut client = daemon.client().await;
    let mut details = Vec::new();
    for r in &results {
        details.push(
            client
                .get_case(proto::GetCaseRequest {
                    id: r.cases_started[0].clone(),
                })
                .await
                .expect("case")
                .into_inner(),
        );
    }
    let ok = sms_of(&details[0]);
    assert_eq!(
        (ok.status.as_str(), ok.receipt.as_str()),
        ("sent", texts[0]["_sid"].as_str())
    );
    let stop = sms_of(&details[1]);
    assert_eq!(stop.status, "failed");
    assert!(
        stop.last_error.contains("recipient unsubscribed"),
        "{stop:?}"
    );
    let none = sms_of(&details[2]);
    assert_eq!(
        (none.status.as_str(), none.skip_reason.as_str()),
        ("skipped", "no phone number")
    );

    daemon.advance("14d").await;
    let hooks_received = hooks.received();
    assert_eq!(
        hooks_received.len(),
        3,
        "every case reaches the suspend step"
    );
    assert!(
        hooks_received
            .iter()
            .all(|h| h.signature_valid && h.body["message"]["action"] == "suspend_account")
    );
    let customers: std::collections::BTreeSet<_> = hooks_received
        .iter()
        .map(|h| {
            h.body["message"]["customer"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    assert_eq!(customers.len(), 3);
}

#[tokio::test]
async fn webhooks_do_not_follow_redirects() {
    let peer = WebhookPeer::start("s").await;
    let webhook = host(
        "webhook",
        serde_json::json!({ "url": peer.url(), "secret": "s" }),
    );
    peer.answer_with(307);
    let got = format!("{:?}", webhook.send(request(None, "x")).await);
    assert!(
        got.starts_with("Permanent") && got.contains("HTTP 307"),
        "{got}"
    );
    assert_eq!(peer.received().len(), 1, "the redirect was not followed");
}

/// The shipped payment-failed workflow's actions: in Stripe (the `billing`
/// channel on the stripe plugin) the charge retried on day 3 and the
/// subscription cancelled on day 30; in the application (the `webhook`
/// channel) the account suspended on day 14 and the debt handed to
/// collections on day 30.
#[tokio::test]
async fn the_shipped_workflow_acts_in_stripe_and_in_the_application() {
    const STRIPE_KEY: &str = "sk_test_shipped_workflow_4711";
    let hooks = WebhookPeer::start("hook-secret").await;
    let stripe = StripePeer::start(STRIPE_KEY).await;
    stripe.put_object(
        "/v1/invoices/in_2026_0042",
        serde_json::json!({ "id": "in_2026_0042", "object": "invoice", "status": "open", "amount_due": 4900 }),
    );
    stripe.put_object(
        "/v1/subscriptions/sub_ada_pro",
        serde_json::json!({ "id": "sub_ada_pro", "object": "subscription", "status": "past_due" }),
    );
    let key_file = tempfile::NamedTempFile::new().expect("key file");
    std::fs::write(key_file.path(), STRIPE_KEY).expect("write key");
    let setup = Setup::shipped_workflows()
        .channel(
            "webhook",
            &format!(
                "{{ plugin: webhook, settings: {{ url: '{}', secret: hook-secret }} }}",
                hooks.url()
            ),
        )
        .channel(
            "billing",
            &format!(
                "{{ plugin: stripe, settings: {{ base_url: '{}' }}, secrets: {{ api_key: {{ file: '{}' }} }} }}",
                stripe.base_url(),
                key_file.path().display()
            ),
        );
    let daemon = TestDaemon::start(setup).await;
    let event = std::fs::read_to_string(
        dunningd_e2e::workspace_root().join("examples/events/payment-failed.json"),
    )
    .expect("event");
    daemon
        .client()
        .await
        .send_events(proto::SendEventsRequest {
            events: vec![event],
        })
        .await
        .expect("send");
    daemon.settle().await;
    for step in ["3d", "11d", "16d"] {
        daemon.advance(step).await;
    }
    let in_stripe: Vec<(String, String, bool)> = stripe
        .requests()
        .iter()
        .map(|r| {
            (
                r.method.clone(),
                r.path.clone(),
                r.idempotency_key.is_some(),
            )
        })
        .collect();
    assert_eq!(
        in_stripe,
        [
            (
                "POST".to_string(),
                "/v1/invoices/in_2026_0042/pay".to_string(),
                true
            ),
            (
                "DELETE".to_string(),
                "/v1/subscriptions/sub_ada_pro".to_string(),
                true
            ),
        ]
    );
    assert_eq!(
        stripe
            .object("/v1/subscriptions/sub_ada_pro")
            .expect("subscription")["status"],
        "canceled"
    );
    let actions: Vec<String> = hooks
        .received()
        .iter()
        .map(|h| {
            h.body["message"]["action"]
                .as_str()
                .unwrap_or("?")
                .to_string()
        })
        .collect();
    assert_eq!(actions, ["suspend_account", "send_to_collections"]);
    assert!(hooks.received().iter().all(|h| h.signature_valid));
    // The customer as the event gave it, under the event's own field names.
    let customer = serde_json::json!({
        "id": "cus_ada",
        "name": "Ada Lovelace",
        "email": "ada@example.com",
        "phone": "+447700900123",
        "timezone": "Europe/London",
        "locale": "en-GB",
    });
    for hook in hooks.received() {
        assert_eq!(hook.body["customer"], customer);
    }
    assert_eq!(hooks.received()[1].body["message"]["amount"], "£49.00");
}
