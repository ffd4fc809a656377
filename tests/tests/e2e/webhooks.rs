//! The daemon's inbound webhooks, end to end: a Twilio-compatible server
//! that signs its incoming-message webhooks and status callbacks as Twilio
//! does, and a real SMTP server whose messages carry the one-click
//! unsubscribe link.

use dunningd::proto;
use dunningd_e2e::daemon::{Setup, TestDaemon};
use dunningd_e2e::free_port;
use dunningd_e2e::peers::{SmtpPeer, TwilioPeer, post_as_twilio};

use dunningd_e2e::peers::{TWILIO_SID as SID, TWILIO_TOKEN as TOKEN};
const SECRET: &str = "0123456789abcdef0123456789abcdef";

/// An SMS now that falls back to email, and another in three days.
const REMINDERS: &str = r#"
name: reminders
trigger: { event: payment_failed }
exit_on: [payment_succeeded]
steps:
  - name: notice
    after: 0s
    send:
      - { channel: sms, template: text, fallback: { channel: email, template: mail } }
  - name: reminder
    after: 3d
    send:
      - { channel: sms, template: text, fallback: { channel: email, template: mail } }
templates:
  text: { body: "{{ data.amount | money(data.currency) }} is still due." }
  mail:
    subject: "Payment failed"
    text: "{{ data.amount | money(data.currency) }} is still due.{% if unsubscribe_url is defined %} Unsubscribe: {{ unsubscribe_url }}{% endif %}"
"#;

fn event(id: &str, customer: &str, phone: &str) -> String {
    serde_json::json!({
        "id": id, "type": "payment_failed",
        "customer": { "id": customer, "name": "Ada", "email": format!("{customer}@example.com"), "phone": phone },
        "subject": format!("inv_{customer}"),
        "data": { "amount": 4900, "currency": "EUR" }
    })
    .to_string()
}

/// A daemon whose `sms` and `sms_backup` channels use the twilio plugin
/// against `twilio`, with its webhooks on a port of their own; returns the
/// daemon, the webhooks' base URL and the folder holding the secrets.
async fn start(twilio: &TwilioPeer, email: &str) -> (TestDaemon, String, tempfile::TempDir) {
    let secrets = tempfile::tempdir().expect("tempdir");
    std::fs::write(secrets.path().join("twilio-token"), TOKEN).expect("token");
    std::fs::write(secrets.path().join("webhook-secret"), SECRET).expect("secret");
    let base = format!("http://127.0.0.1:{}", free_port());
    let twilio_channel = format!(
        "{{ plugin: twilio, settings: {{ account_sid: {SID}, from: '+15005550006', base_url: '{}' }}, secrets: {{ auth_token: {{ file: '{}' }} }} }}",
        twilio.base_url(),
        secrets.path().join("twilio-token").display()
    );
    let mut setup = Setup::default()
        .workflow("reminders.yaml", REMINDERS)
        .channel("sms", &twilio_channel)
        .channel("sms_backup", &twilio_channel)
        .channel("email", email);
    setup.extra_config = format!(
        "webhooks:\n  listen: '{}'\n  public_url: '{base}/'\n  secret: {{ file: '{}' }}\n",
        base.trim_start_matches("http://"),
        secrets.path().join("webhook-secret").display()
    );
    (TestDaemon::start(setup).await, base, secrets)
}

const LOG_EMAIL: &str = "{ plugin: log, settings: { path: '{dir}/deliveries.jsonl' } }";

/// The id of the customer's one case.
async fn case_of(daemon: &TestDaemon, customer: &str) -> String {
    let cases = daemon
        .client()
        .await
        .list_cases(proto::ListCasesRequest {
            customer: customer.into(),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner()
        .cases;
    assert_eq!(cases.len(), 1, "{cases:?}");
    cases[0].id.clone()
}

async fn deliveries(daemon: &TestDaemon, customer: &str) -> Vec<proto::Delivery> {
    let id = case_of(daemon, customer).await;
    daemon
        .client()
        .await
        .get_case(proto::GetCaseRequest { id })
        .await
        .expect("case")
        .into_inner()
        .deliveries
}

/// `(customer, channel, source)` of every opt-out.
async fn optouts(daemon: &TestDaemon) -> Vec<(String, String, String)> {
    let mut rows: Vec<(String, String, String)> = daemon
        .client()
        .await
        .list_opt_outs(proto::ListOptOutsRequest::default())
        .await
        .expect("list opt-outs")
        .into_inner()
        .optouts
        .into_iter()
        .map(|o| (o.customer_id, o.channel, o.source))
        .collect();
    rows.sort();
    rows
}

#[tokio::test]
async fn stop_opts_every_customer_of_the_number_out_of_sms_and_start_lifts_it() {
    let twilio = TwilioPeer::start(SID, SID, TOKEN).await;
    let (daemon, base, _secrets) = start(&twilio, LOG_EMAIL).await;
    // Two accounts share a phone (a family); a third customer does not.
    daemon
        .send_and_settle(vec![
            event("e1", "cus_1", "+447700900123"),
            event("e2", "cus_2", "+447700900123"),
            event("e3", "cus_3", "+447700900999"),
        ])
        .await;
    assert_eq!(twilio.messages().len(), 3);
    let inbound = format!("{base}/twilio/sms/inbound");

    // Forged, unsigned and misaddressed requests change nothing.
    let stop = [
        ("MessageSid", "SMx"),
        ("From", "+447700900123"),
        ("To", "+15005550006"),
        ("Body", "STOP"),
    ];
    let (status, body) = post_as_twilio(&inbound, Some("not-the-token"), &stop).await;
    assert_eq!((status, body.as_str()), (403, "invalid X-Twilio-Signature"));
    assert_eq!(post_as_twilio(&inbound, None, &stop).await.0, 403);
    let elsewhere = format!("{base}/twilio/email/inbound");
    assert_eq!(
        post_as_twilio(&elsewhere, Some(TOKEN), &stop).await.0,
        404,
        "email is no twilio channel"
    );
    assert_eq!(optouts(&daemon).await, []);
    assert!(daemon.log().contains("refused a Twilio webhook"));

    // A chatty reply is no keyword.
    let (status, _) = twilio
        .incoming(&inbound, "+447700900123", "I paid yesterday")
        .await;
    assert_eq!(status, 200);
    assert_eq!(optouts(&daemon).await, []);

    let (status, body) = twilio.incoming(&inbound, "+447700900123", " Stop ").await;
    assert_eq!(status, 200);
    assert!(body.contains("<Response></Response>"), "{body}");
    let stopped = |customer: &str, channel: &str| {
        (
            customer.to_string(),
            channel.to_string(),
            "sms-stop".to_string(),
        )
    };
    assert_eq!(
        optouts(&daemon).await,
        [
            stopped("cus_1", "sms"),
            stopped("cus_1", "sms_backup"),
            stopped("cus_2", "sms"),
            stopped("cus_2", "sms_backup"),
        ],
        "every twilio channel, for both customers of the number"
    );

    // The reminders: cus_1 and cus_2 by email instead, cus_3 by SMS.
    daemon.advance("3d").await;
    assert_eq!(twilio.messages().len(), 4);
    assert_eq!(twilio.messages()[3]["To"], "+447700900999");
    let reminder = deliveries(&daemon, "cus_1").await;
    let reminder: Vec<(String, String, String)> = reminder
        .iter()
        .filter(|d| d.step == "reminder")
        .map(|d| {
            (
                d.channel.clone(),
                d.status.clone(),
                format!("{}{}", d.skip_reason, d.fallback_for),
            )
        })
        .collect();
    assert_eq!(
        reminder,
        [
            (
                "sms".to_string(),
                "skipped".to_string(),
                "opted out of sms (sms-stop)".to_string()
            ),
            ("email".to_string(), "sent".to_string(), "sms".to_string()),
        ]
    );

    // START lifts what STOP recorded, never an operator's opt-out.
    daemon.ctl_ok(&[
        "optout",
        "cus_2",
        "--channel",
        "sms",
        "--reason",
        "disputed",
    ]);
    let (status, _) = twilio.incoming(&inbound, "+447700900123", "start").await;
    assert_eq!(status, 200);
    assert_eq!(
        optouts(&daemon).await,
        [(
            "cus_2".to_string(),
            "sms".to_string(),
            "operator".to_string()
        )]
    );
}

#[tokio::test]
async fn status_callbacks_show_what_became_of_each_message() {
    let twilio = TwilioPeer::start(SID, SID, TOKEN).await;
    let (daemon, base, _secrets) = start(&twilio, LOG_EMAIL).await;
    daemon
        .send_and_settle(vec![
            event("e1", "cus_1", "+447700900123"),
            event("e2", "cus_2", "+15005550030"),
        ])
        .await;
    let messages = twilio.messages();
    assert_eq!(messages.len(), 2);
    let callback = format!("{base}/twilio/sms/status");
    assert_eq!(messages[0]["StatusCallback"], callback);

    // Twilio's callbacks ("sent", then the outcome) may come before the
    // daemon has recorded the send: wait for all four to be answered.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while twilio.callbacks().len() < 4 {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            twilio.callbacks()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(
        twilio.callbacks().iter().all(|(_, answer)| *answer == 204),
        "{:?}",
        twilio.callbacks()
    );
    // A late, repeated "sent" does not undo "delivered".
    let first_sid = messages[0]["_sid"].clone();
    let (status, _) = post_as_twilio(
        &callback,
        Some(TOKEN),
        &[("MessageSid", &first_sid), ("MessageStatus", "sent")],
    )
    .await;
    assert_eq!(status, 204);
    // A forged report is refused.
    let (status, _) = post_as_twilio(
        &callback,
        Some("forged"),
        &[("MessageSid", &first_sid), ("MessageStatus", "failed")],
    )
    .await;
    assert_eq!(status, 403);

    let provider_status = |deliveries: Vec<proto::Delivery>| {
        deliveries
            .iter()
            .find(|d| d.step == "notice" && d.channel == "sms")
            .map(|d| (d.status.clone(), d.provider_status.clone()))
    };
    assert_eq!(
        provider_status(deliveries(&daemon, "cus_1").await),
        Some(("sent".to_string(), "delivered".to_string()))
    );
    assert_eq!(
        provider_status(deliveries(&daemon, "cus_2").await),
        Some(("sent".to_string(), "undelivered (error 30003)".to_string()))
    );
    let case_id = case_of(&daemon, "cus_2").await;
    let shown = daemon.ctl_ok(&["cases", "show", &case_id]);
    assert!(shown.contains("sent, undelivered (error 30003)"), "{shown}");
}

#[tokio::test]
async fn the_email_unsubscribe_link_opts_out_in_one_click() {
    let Some(smtp) = SmtpPeer::start() else {
        return;
    };
    let twilio = TwilioPeer::start(SID, SID, TOKEN).await;
    let email = format!(
        "{{ plugin: smtp, settings: {{ url: '{}', from: 'Billing <billing@example.com>' }} }}",
        smtp.url()
    );
    let (daemon, base, _secrets) = start(&twilio, &email).await;
    // +15005550001 is an invalid number: the notice falls back to email.
    daemon
        .send_and_settle(vec![event("e1", "cus_1", "+15005550001")])
        .await;
    let messages = smtp.messages();
    assert_eq!(messages.len(), 1);
    let header = messages[0]["headers"]["List-Unsubscribe"]
        .as_str()
        .expect("List-Unsubscribe")
        .to_string();
    assert_eq!(
        messages[0]["headers"]["List-Unsubscribe-Post"],
        "List-Unsubscribe=One-Click"
    );
    let link = header.trim_matches(['<', '>']).to_string();
    assert!(
        link.starts_with(&format!(
            "{base}/unsubscribe?customer=cus_1&channel=email&sig="
        )),
        "{link}"
    );
    let text = messages[0]["parts"]["text/plain"].as_str().unwrap_or("");
    assert!(
        text.contains(&format!("Unsubscribe: {link}")),
        "templates get the same link: {text}"
    );

    let http = reqwest::Client::new();
    // Following the link (as a scanner would) only shows the question.
    let page = http.get(&link).send().await.expect("get");
    assert_eq!(page.status(), 200);
    assert!(
        page.text()
            .await
            .expect("page")
            .contains("<form method=\"post\">")
    );
    assert_eq!(optouts(&daemon).await, []);
    // A link for another customer, or tampered with, is refused.
    for forged in [
        link.replace("cus_1", "cus_2"),
        link.replace("channel=email", "channel=sms"),
        format!("{}0", &link[..link.len() - 1]),
        format!("{base}/unsubscribe?customer=cus_1"),
    ] {
        let answer = http
            .post(&forged)
            .form(&[("List-Unsubscribe", "One-Click")])
            .send()
            .await
            .expect("post");
        assert_eq!(answer.status(), 403, "{forged}");
    }
    assert_eq!(optouts(&daemon).await, []);

    // The mail client's one-click POST (RFC 8058).
    let answer = http
        .post(&link)
        .form(&[("List-Unsubscribe", "One-Click")])
        .send()
        .await
        .expect("post");
    assert_eq!(answer.status(), 200);
    assert_eq!(
        optouts(&daemon).await,
        [(
            "cus_1".to_string(),
            "email".to_string(),
            "unsubscribe-link".to_string()
        )]
    );
    // The reminder's SMS fails again; its email fallback is now skipped.
    daemon.advance("3d").await;
    assert_eq!(smtp.messages().len(), 1);
    let fallback = deliveries(&daemon, "cus_1")
        .await
        .into_iter()
        .find(|d| d.step == "reminder" && d.channel == "email")
        .expect("the reminder's fallback");
    assert_eq!(
        (fallback.status.as_str(), fallback.skip_reason.as_str()),
        ("skipped", "opted out of email (unsubscribe-link)")
    );
}
