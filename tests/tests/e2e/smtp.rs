//! The `smtp` plugin against a real SMTP server (aiosmtpd) on loopback: the
//! message as received (headers, both parts, personal text), a 5xx rejection,
//! a 4xx deferral, and the shipped workflow's first email through the daemon.

use std::collections::BTreeMap;
use std::time::Duration;

use dunningd::config::ChannelSpec;
use dunningd::plugin_host::PluginHost;
use dunningd::proto;
use dunningd_e2e::daemon::{Setup, TestDaemon};
use dunningd_e2e::peers::SmtpPeer;
use dunningd_plugin_api::wire::{DeliveryRequest, DeliveryResponse, Recipient};

fn host(url: &str) -> PluginHost {
    let host = PluginHost::new(dunningd_e2e::plugin_dir().to_path_buf());
    let spec = ChannelSpec {
        plugin: "smtp".into(),
        settings: serde_json::json!({ "url": url, "from": "Billing <billing@example.com>", "reply_to": "help@example.com" }),
        secret_keys: Vec::new(),
        timeout: Duration::from_secs(10),
        concurrency: 2,
        max_attempts: 3,
        retry_backoff: Duration::from_secs(60),
        send_window: None,
        frequency_cap: None,
    };
    host.configure(&BTreeMap::from([("email".to_string(), spec)]))
        .expect("configure");
    host
}

fn request(email: Option<&str>, fields: &[(&str, &str)]) -> DeliveryRequest {
    DeliveryRequest {
        delivery_id: "d1".into(),
        idempotency_key: "dunningd-case1-0-email".into(),
        channel: "email".into(),
        case_id: "case1".into(),
        workflow: "payment-failed".into(),
        step: "first-notice".into(),
        template: "first_email".into(),
        attempt: 1,
        recipient: Recipient {
            customer_id: "cus_1".into(),
            name: Some("Ada Lovelace".into()),
            email: email.map(String::from),
            ..Default::default()
        },
        message: fields
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        data: serde_json::json!({}),
        subject: "inv_1".into(),
    }
}

#[tokio::test]
async fn email_arrives_with_both_parts_and_the_right_headers() {
    let Some(peer) = SmtpPeer::start() else {
        return;
    };
    let smtp = host(&peer.url());
    let fields = [
        ("subject", "Your payment of £49.00 didn't go through"),
        ("text", "Hi Ada, please update your card."),
        (
            "html",
            "<p>Hi Ada, please <a href=\"https://pay.example.com\">update your card</a>.</p>",
        ),
        (
            "unsubscribe_url",
            "https://billing.example.com/unsubscribe/cus_1",
        ),
    ];
    match smtp.send(request(Some("ada@example.com"), &fields)).await {
        DeliveryResponse::Sent {
            receipt: Some(receipt),
        } => assert!(receipt.contains("queued as Q0001"), "{receipt}"),
        other => panic!("expected sent, got {other:?}"),
    }
    let messages = peer.messages();
    assert_eq!(messages.len(), 1);
    let m = &messages[0];
    assert_eq!(m["mail_from"], "billing@example.com");
    assert_eq!(m["rcpt_tos"], serde_json::json!(["ada@example.com"]));
    let h = &m["headers"];
    assert_eq!(h["From"], "Billing <billing@example.com>");
    assert_eq!(h["To"], "Ada Lovelace <ada@example.com>");
    assert_eq!(h["Reply-To"], "help@example.com");
    assert_eq!(h["Subject"], "Your payment of £49.00 didn't go through");
    assert_eq!(h["Message-ID"], "<dunningd-case1-0-email@example.com>");
    assert_eq!(
        h["List-Unsubscribe"],
        "<https://billing.example.com/unsubscribe/cus_1>"
    );
    assert_eq!(h["List-Unsubscribe-Post"], "List-Unsubscribe=One-Click");
    assert_eq!(
        m["parts"]["text/plain"].as_str().map(str::trim_end),
        Some("Hi Ada, please update your card.")
    );
    assert!(
        m["parts"]["text/html"]
            .as_str()
            .unwrap_or("")
            .contains("<a href=\"https://pay.example.com\">")
    );

    // The same delivery again carries the same Message-ID: recognisable as a repeat.
    smtp.send(request(Some("ada@example.com"), &fields)).await;
    assert_eq!(
        peer.messages()[1]["headers"]["Message-ID"],
        "<dunningd-case1-0-email@example.com>"
    );
}

#[tokio::test]
async fn refusals_deferrals_and_missing_addresses_are_classified() {
    let Some(peer) = SmtpPeer::start() else {
        return;
    };
    let smtp = host(&peer.url());
    let fields = [("subject", "s"), ("text", "t")];
    let table: Vec<(Option<&str>, &str, &str)> = vec![
        (Some("reject@example.com"), "Permanent", "550"),
        (Some("defer@example.com"), "Retryable", "451"),
        (None, "Skipped", "no email address"),
        (
            Some("not an address"),
            "Permanent",
            "invalid email address 'not an address'",
        ),
    ];
    for (address, kind, text) in table {
        let got = format!("{:?}", smtp.send(request(address, &fields)).await);
        assert!(
            got.starts_with(kind) && got.contains(text),
            "{address:?}: {got}"
        );
    }
    let got = format!(
        "{:?}",
        smtp.send(request(Some("ada@example.com"), &[("text", "no subject")]))
            .await
    );
    assert!(
        got.contains("template 'first_email' has no 'subject' field"),
        "{got}"
    );
    assert!(peer.messages().is_empty(), "nothing was accepted");

    // Nobody listening: not sent, safe to retry.
    let closed = host("smtp://127.0.0.1:9");
    let got = format!(
        "{:?}",
        closed.send(request(Some("ada@example.com"), &fields)).await
    );
    assert!(
        got.starts_with("Retryable") && got.contains("cannot reach the relay"),
        "{got}"
    );
}

#[tokio::test]
async fn the_shipped_payment_failed_workflow_emails_the_customer() {
    let Some(peer) = SmtpPeer::start() else {
        return;
    };
    let setup = Setup::shipped_workflows().channel(
        "email",
        &format!(
            "{{ plugin: smtp, settings: {{ url: '{}', from: 'Billing <billing@example.com>' }} }}",
            peer.url()
        ),
    );
    let daemon = TestDaemon::start(setup).await;
    let event = std::fs::read_to_string(
        dunningd_e2e::workspace_root().join("examples/events/payment-failed.json"),
    )
    .expect("event");
    let results = daemon
        .client()
        .await
        .send_events(proto::SendEventsRequest {
            events: vec![event],
        })
        .await
        .expect("send")
        .into_inner()
        .results;
    assert_eq!(results[0].cases_started.len(), 1);
    daemon.settle().await;

    let messages = peer.messages();
    assert_eq!(messages.len(), 1, "the first notice");
    let m = &messages[0];
    assert_eq!(m["headers"]["To"], "Ada Lovelace <ada@example.com>");
    assert_eq!(
        m["headers"]["Subject"],
        "Your payment of £49.00 didn't go through"
    );
    let text = m["parts"]["text/plain"].as_str().unwrap_or("");
    assert!(text.starts_with("Hi Ada Lovelace,"), "{text}");
    assert!(text.contains("invoice in_2026_0042 (£49.00)"), "{text}");
    assert!(
        text.contains("https://billing.example.com/update/cus_ada"),
        "{text}"
    );
    // The HTML part links only through `| url`, its values escaped.
    let html = m["parts"]["text/html"].as_str().unwrap_or("");
    assert!(html.starts_with("<p>Hi Ada Lovelace,</p>"), "{html}");
    assert!(
        html.contains(
            "<a href=\"https:&#x2f;&#x2f;billing.example.com&#x2f;update&#x2f;cus_ada\">Update your payment method</a>"
        ),
        "{html}"
    );
    let key = m["headers"]["Message-ID"].as_str().unwrap_or("");
    assert!(
        key.starts_with(&format!(
            "<dunningd-{}-0-email@",
            results[0].cases_started[0]
        )),
        "{key}"
    );
}

const ESCAPING: &str = r#"
name: escaping
trigger: { event: payment_failed }
steps:
  - name: first
    after: 0s
    send: [{ channel: email, template: note }]
templates:
  note:
    subject: "Hi {{ customer.name }}"
    text: "Hi {{ customer.name }}, update your card: {{ data.update_url }}"
    html: "<p>Hi {{ customer.name }}, <a href=\"{{ data.update_url | url }}\">update your card</a>.</p>{{ '<hr>' | safe }}"
"#;

/// Regression: HTML parts were rendered without escaping, so a customer
/// name (or any event value) was markup in the recipient's mail client, and
/// a `javascript:` URL from an event could be put into a link.
#[tokio::test]
async fn event_values_are_escaped_in_html_and_links_take_only_http_urls() {
    let Some(peer) = SmtpPeer::start() else {
        return;
    };
    let setup = Setup::default().workflow("escaping.yaml", ESCAPING).channel(
        "email",
        &format!(
            "{{ plugin: smtp, settings: {{ url: '{}', from: 'Billing <billing@example.com>' }} }}",
            peer.url()
        ),
    );
    let daemon = TestDaemon::start(setup).await;
    let name = "<img src=x onerror=alert(1)>";
    let event = |id: &str, customer: &str, url: &str| {
        serde_json::json!({
            "id": id, "type": "payment_failed",
            "customer": { "id": customer, "name": name, "email": format!("{customer}@example.com") },
            "subject": "inv_1", "data": { "update_url": url }
        })
        .to_string()
    };
    let results = daemon
        .send_events(vec![
            event("e1", "ada", "https://pay.example.com/u?a=1&b=\"2\""),
            event("e2", "eve", "javascript:alert(1)"),
        ])
        .await;
    daemon.settle().await;

    let messages = peer.messages();
    assert_eq!(messages.len(), 1, "only the message with an http link");
    let m = &messages[0];
    assert_eq!(m["headers"]["Subject"], format!("Hi {name}"));
    assert_eq!(
        m["parts"]["text/plain"].as_str().map(str::trim_end),
        Some(
            format!("Hi {name}, update your card: https://pay.example.com/u?a=1&b=\"2\"").as_str()
        )
    );
    assert_eq!(
        m["parts"]["text/html"].as_str().map(str::trim_end),
        Some(
            "<p>Hi &lt;img src=x onerror=alert(1)&gt;, <a href=\"https:&#x2f;&#x2f;pay.example.com&#x2f;u?a=1&amp;b=%222%22\">update your card</a>.</p><hr>"
        )
    );

    let refused = daemon.case(&results[1].cases_started[0]).await.deliveries;
    assert_eq!(refused[0].status, "failed");
    assert_eq!(
        refused[0].last_error,
        "template 'note', field 'html': url 'javascript:alert(1)' is not an http or https url"
    );
}
