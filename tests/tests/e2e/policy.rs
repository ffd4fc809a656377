//! The sending policy, end to end through the engine clock: fallbacks after
//! a permanent SMS failure (the real twilio plugin against a
//! Twilio-compatible server), opt-outs from dunningctl, step conditions,
//! expiry, send windows across a weekend and a daylight-saving change,
//! frequency caps across workflows, failover to a backup mail provider.

use dunningd::proto;
use dunningd_e2e::daemon::{Backend, Setup, TestDaemon};
use dunningd_e2e::peers::TwilioPeer;

use dunningd_e2e::peers::{TWILIO_SID as SID, TWILIO_TOKEN as TOKEN};

/// Email first; an SMS reminder on day 3 (only for amounts of 50.00 and
/// more) that falls back to email; a final notice on day 7 that may go out
/// at most a day late.
const POLICY: &str = r#"
name: policy
trigger: { event: payment_failed }
exit_on: [payment_succeeded]
steps:
  - name: notice
    after: 0s
    send:
      - { channel: email, template: notice }
  - name: reminder
    after: 3d
    when: "data.amount >= 5000"
    send:
      - { channel: sms, template: reminder_sms, fallback: { channel: email, template: reminder_email } }
  - name: final
    after: 7d
    expires_after: 1d
    send:
      - { channel: email, template: final }
templates:
  notice: { subject: "Payment failed", text: "Hi {{ customer.name }}" }
  reminder_sms: { body: "{{ customer.name }}, {{ data.amount | money(data.currency) }} is still due." }
  reminder_email: { subject: "Still due", text: "{{ data.amount | money(data.currency) }} is still due." }
  final: { subject: "Final notice", text: "Last chance" }
"#;

fn event(id: &str, customer: &str, phone: &str, amount: u64) -> String {
    serde_json::json!({
        "id": id, "type": "payment_failed",
        "customer": { "id": customer, "name": "Ada", "email": format!("{customer}@example.com"), "phone": phone },
        "subject": format!("inv_{customer}"),
        "data": { "amount": amount, "currency": "EUR" }
    })
    .to_string()
}

async fn start_case(daemon: &TestDaemon, event: String) -> String {
    let results = daemon.send_events(vec![event]).await;
    assert_eq!(results[0].cases_started.len(), 1, "{results:?}");
    results[0].cases_started[0].clone()
}

/// `(step, channel, status, reason or error)` of every delivery of a case.
async fn timeline(daemon: &TestDaemon, id: &str) -> Vec<(String, String, String, String)> {
    daemon
        .case(id)
        .await
        .deliveries
        .iter()
        .map(|d| {
            let channel = if d.fallback_for.is_empty() {
                d.channel.clone()
            } else {
                format!("{} for {}", d.channel, d.fallback_for)
            };
            let note = format!("{}{}", d.skip_reason, d.last_error);
            (d.step.clone(), channel, d.status.clone(), note)
        })
        .collect()
}

/// Messages the log plugin wrote for one customer: (channel, subject or body).
fn sent_to(daemon: &TestDaemon, customer: &str) -> Vec<(String, String)> {
    daemon
        .deliveries()
        .iter()
        .filter(|d| d["recipient"]["customer_id"] == customer)
        .map(|d| {
            let text = d["message"]["subject"]
                .as_str()
                .or(d["message"]["body"].as_str())
                .unwrap_or("")
                .to_string();
            (d["channel"].as_str().unwrap_or("").to_string(), text)
        })
        .collect()
}

async fn policy_daemon(twilio: &TwilioPeer) -> (TestDaemon, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("twilio-token"), TOKEN).expect("token");
    let setup = Setup::default().workflow("policy.yaml", POLICY).channel(
        "sms",
        &format!(
            "{{ plugin: twilio, settings: {{ account_sid: {SID}, from: '+15005550006', base_url: '{}' }}, secrets: {{ auth_token: {{ file: '{}' }} }} }}",
            twilio.base_url(),
            dir.path().join("twilio-token").display()
        ),
    );
    (TestDaemon::start(setup).await, dir)
}

#[tokio::test]
async fn a_permanent_sms_failure_falls_back_to_email_and_conditions_and_expiry_hold() {
    let twilio = TwilioPeer::start(SID, SID, TOKEN).await;
    let (daemon, _dir) = policy_daemon(&twilio).await;
    // +15005550001 is Twilio's "invalid number": a permanent failure.
    let broken = start_case(&daemon, event("e1", "cus_broken", "+15005550001", 9900)).await;
    let fine = start_case(&daemon, event("e2", "cus_fine", "+447700900123", 9900)).await;
    let small = start_case(&daemon, event("e3", "cus_small", "+447700900124", 1200)).await;
    daemon.settle().await;
    daemon.advance("3d").await;

    let texts = twilio.messages();
    assert_eq!(texts.len(), 1, "only cus_fine's SMS went out: {texts:?}");
    assert_eq!(texts[0]["Body"], "Ada, €99.00 is still due.");
    assert_eq!(
        sent_to(&daemon, "cus_broken"),
        vec![
            ("email".to_string(), "Payment failed".to_string()),
            ("email".to_string(), "Still due".to_string())
        ],
        "the reminder reached cus_broken by email, with the email template"
    );
    let broken_timeline = timeline(&daemon, &broken).await;
    assert_eq!(broken_timeline[1].0, "reminder");
    assert_eq!(broken_timeline[1].1, "sms");
    assert_eq!(broken_timeline[1].2, "failed");
    assert!(
        broken_timeline[1].3.contains("21211"),
        "{broken_timeline:?}"
    );
    let fallback = &broken_timeline[2];
    assert_eq!(
        (
            fallback.0.as_str(),
            fallback.1.as_str(),
            fallback.2.as_str()
        ),
        ("reminder", "email for sms", "sent"),
        "{broken_timeline:?}"
    );
    // The condition kept the small debt from an SMS (and from a fallback).
    let small_timeline = timeline(&daemon, &small).await;
    assert_eq!(
        (small_timeline[1].2.as_str(), small_timeline[1].3.as_str()),
        ("skipped", "condition 'data.amount >= 5000' is false")
    );
    assert_eq!(sent_to(&daemon, "cus_small").len(), 1);

    // The daemon "was down" from day 3 to day 9: the day-7 final notice
    // may be a day late at most, so it is skipped as expired, not sent.
    daemon.advance("6d").await;
    let fine_timeline = timeline(&daemon, &fine).await;
    let final_notice = fine_timeline.last().expect("final");
    assert_eq!(final_notice.2, "skipped", "{fine_timeline:?}");
    assert!(
        final_notice.3.starts_with(
            "expired: due 2026-01-12 09:00 UTC, could go out only at 2026-01-14 09:00 UTC"
        ),
        "{final_notice:?}"
    );
    assert!(
        !sent_to(&daemon, "cus_fine")
            .iter()
            .any(|(_, text)| text == "Final notice")
    );
    assert_eq!(
        daemon.case(&fine).await.case.expect("case").state,
        "exhausted"
    );
}

#[tokio::test]
async fn an_opted_out_channel_is_skipped_with_its_reason_and_falls_back() {
    let twilio = TwilioPeer::start(SID, SID, TOKEN).await;
    let (daemon, _dir) = policy_daemon(&twilio).await;
    let id = start_case(&daemon, event("e1", "cus_1", "+447700900123", 9900)).await;
    daemon.settle().await;

    let out = daemon.ctl_ok(&[
        "optout",
        "cus_1",
        "--channel",
        "sms",
        "--reason",
        "asked by phone",
    ]);
    assert!(
        out.contains("cus_1 opted out of sms (asked by phone)"),
        "{out}"
    );
    let listed = daemon.ctl_ok(&["--json", "optouts", "--customer", "cus_1"]);
    let listed: serde_json::Value = serde_json::from_str(&listed).expect("json");
    assert_eq!(listed["optouts"][0]["source"], "operator");
    // A misspelt channel protects nobody: refused.
    let bad = daemon.ctl(&["optout", "cus_1", "--channel", "smss"]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("'smss' is not a configured channel"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );

    daemon.advance("3d").await;
    assert!(
        twilio.messages().is_empty(),
        "no SMS to an opted-out customer"
    );
    let steps = timeline(&daemon, &id).await;
    assert_eq!(
        (steps[1].2.as_str(), steps[1].3.as_str()),
        ("skipped", "opted out of sms (operator)")
    );
    assert_eq!(steps[2].1, "email for sms");
    assert_eq!(steps[2].2, "sent");

    // Opted in again: the next SMS would go out (the final notice is email).
    let out = daemon.ctl_ok(&["optin", "cus_1", "--channel", "sms"]);
    assert!(out.contains("opted in to sms again"), "{out}");
    let out = daemon.ctl_ok(&["optin", "cus_1", "--channel", "sms"]);
    assert!(out.contains("nothing changed"), "{out}");
    assert!(
        daemon.ctl_ok(&["optouts"]).lines().count() <= 1,
        "header only"
    );
}

/// Quiet hours: weekdays 09:00–17:59 in the customer's zone, and SMS only
/// until 16:00 by the daemon's channel default.
const WINDOWS: &str = r#"
name: windows
trigger: { event: payment_failed }
send_window: { cron: "* 9-17 * * Mon-Fri", timezone: customer, default_timezone: Europe/Berlin }
steps:
  - name: reminder
    after: 1d
    send:
      - { channel: email, template: mail }
      - { channel: sms, template: text }
templates:
  mail: { subject: "Still due", text: "t" }
  text: { body: "b" }
"#;

async fn set_clock(daemon: &TestDaemon, to: &str) {
    daemon
        .client()
        .await
        .advance_clock(proto::AdvanceClockRequest {
            target: Some(proto::advance_clock_request::Target::To(to.into())),
        })
        .await
        .expect("set clock");
    daemon.settle().await;
}

fn windows_setup() -> Setup {
    let mut setup = Setup::default().workflow("windows.yaml", WINDOWS);
    setup.channels.insert(
        "sms".into(),
        "{ plugin: log, settings: { path: '{dir}/deliveries.jsonl' }, send_window: { cron: '* 9-15 * * *', timezone: customer, default_timezone: Europe/Berlin } }".into(),
    );
    setup
}

#[tokio::test]
async fn a_window_moves_a_step_across_the_weekend_and_the_channel_window_narrows_it() {
    let daemon = TestDaemon::start(windows_setup()).await;
    // Friday 2026-01-09 16:30 Berlin: the reminder is due Saturday 16:30.
    set_clock(&daemon, "2026-01-09T15:30:00Z").await;
    let id = start_case(&daemon, event("e1", "cus_1", "+447700900123", 100)).await;
    let planned: Vec<(String, String, String)> = daemon
        .case(&id)
        .await
        .deliveries
        .iter()
        .map(|d| (d.channel.clone(), d.due_at.clone(), d.planned_at.clone()))
        .collect();
    assert_eq!(
        planned,
        vec![
            (
                "email".to_string(),
                "2026-01-10T15:30:00.000Z".to_string(),
                // Monday 09:00 Berlin.
                "2026-01-12T08:00:00.000Z".to_string()
            ),
            (
                "sms".to_string(),
                "2026-01-10T15:30:00.000Z".to_string(),
                "2026-01-12T08:00:00.000Z".to_string()
            ),
        ],
        "due Saturday, planned Monday morning; the timeline shows both"
    );
    // Sunday evening: nothing yet.
    set_clock(&daemon, "2026-01-11T20:00:00Z").await;
    assert!(daemon.deliveries().is_empty());
    set_clock(&daemon, "2026-01-12T08:00:00Z").await;
    assert_eq!(daemon.deliveries().len(), 2);

    // A case starting Thursday 16:30 Berlin: the reminder, due Friday
    // 16:30, is inside the workflow's window, so the email goes then; SMS
    // closes at 16:00 by the channel's default, so it waits for Monday
    // 09:00.
    set_clock(&daemon, "2026-01-15T15:30:00Z").await;
    let late = start_case(&daemon, event("e2", "cus_2", "+447700900124", 100)).await;
    let planned: Vec<(String, String)> = daemon
        .case(&late)
        .await
        .deliveries
        .iter()
        .map(|d| (d.channel.clone(), d.planned_at.clone()))
        .collect();
    assert_eq!(
        planned,
        vec![
            ("email".to_string(), "2026-01-16T15:30:00.000Z".to_string()),
            ("sms".to_string(), "2026-01-19T08:00:00.000Z".to_string()),
        ]
    );
}

#[tokio::test]
async fn windows_follow_the_customers_daylight_saving_changes() {
    let daemon = TestDaemon::start(windows_setup()).await;
    // Berlin springs forward on Sunday 29 March 2026; New York on Sunday
    // 8 March. Cases start Friday evening; the reminder is due Saturday and
    // goes out Monday 09:00 local, which is an hour earlier in UTC than the
    // week before.
    for (start, zone, want) in [
        (
            "2026-03-06T23:00:00Z",
            "America/New_York",
            "2026-03-09T13:00:00.000Z",
        ),
        (
            "2026-03-27T18:00:00Z",
            "Europe/Berlin",
            "2026-03-30T07:00:00.000Z",
        ),
        // And back in autumn: New York falls back on 1 November.
        (
            "2026-10-30T22:00:00Z",
            "America/New_York",
            "2026-11-02T14:00:00.000Z",
        ),
    ] {
        set_clock(&daemon, start).await;
        let event = serde_json::json!({
            "id": format!("e-{zone}-{start}"), "type": "payment_failed",
            "customer": { "id": format!("cus-{zone}-{start}"), "timezone": zone, "email": "a@example.com" },
            "subject": "inv", "data": { "amount": 100, "currency": "EUR" }
        })
        .to_string();
        let id = start_case(&daemon, event).await;
        let email = || async {
            daemon
                .case(&id)
                .await
                .deliveries
                .into_iter()
                .find(|d| d.channel == "email")
                .expect("email")
        };
        assert_eq!(email().await.planned_at, want, "{zone} from {start}");
        set_clock(&daemon, want).await;
        assert_eq!(email().await.status, "sent", "{zone} from {start}");
    }
}

/// Two workflows writing to the same customer: a failed payment (notice now,
/// reminder after an hour) and an expiring card (notice now, a critical
/// final notice after two hours).
const PAYMENT: &str = r#"
name: payment
trigger: { event: payment_failed }
steps:
  - { name: notice, after: 0s, send: [{ channel: email, template: notice }] }
  - { name: reminder, after: 1h, send: [{ channel: email, template: reminder }] }
templates:
  notice: { subject: "Payment notice", text: "t" }
  reminder: { subject: "Payment reminder", text: "t" }
"#;

const CARD: &str = r#"
name: card
trigger: { event: card_expiring }
steps:
  - { name: notice, after: 0s, send: [{ channel: email, template: notice }] }
  - { name: final, after: 2h, critical: true, send: [{ channel: email, template: final }] }
templates:
  notice: { subject: "Card notice", text: "t" }
  final: { subject: "Card final", text: "t" }
"#;

dunningd_e2e::on_both_backends!(a_frequency_cap_spans_workflows_and_defers_what_exceeds_it);

async fn a_frequency_cap_spans_workflows_and_defers_what_exceeds_it(backend: Backend) {
    let mut setup = Setup::default()
        .workflow("payment.yaml", PAYMENT)
        .workflow("card.yaml", CARD)
        .on(&backend);
    setup.channels.insert(
        "email".into(),
        "{ plugin: log, settings: { path: '{dir}/deliveries.jsonl' }, frequency_cap: { max: 2, per: 1d } }".into(),
    );
    let daemon = TestDaemon::start(setup).await;
    set_clock(&daemon, "2026-03-02T09:00:00Z").await;
    let payment = start_case(&daemon, event("e1", "cus_1", "+447700900123", 100)).await;
    let card = serde_json::json!({
        "id": "e2", "type": "card_expiring",
        "customer": { "id": "cus_1", "email": "cus_1@example.com" },
        "subject": "card_1", "data": {}
    });
    start_case(&daemon, card.to_string()).await;
    // Another customer is not held back by cus_1's messages.
    start_case(&daemon, event("e3", "cus_2", "+447700900124", 100)).await;
    daemon.settle().await;
    // What a customer was sent, in order of subject (deliveries due at the
    // same moment go out in any order).
    let subjects = |customer: &str| -> Vec<String> {
        let mut sent: Vec<String> = sent_to(&daemon, customer)
            .into_iter()
            .map(|(_, subject)| subject)
            .collect();
        sent.sort();
        sent
    };
    assert_eq!(subjects("cus_1"), ["Card notice", "Payment notice"]);

    // The payment reminder would be cus_1's third email today: held until
    // the first two leave the day, and the timeline says so.
    set_clock(&daemon, "2026-03-02T10:00:00Z").await;
    assert_eq!(subjects("cus_1").len(), 2);
    assert_eq!(subjects("cus_2"), ["Payment notice", "Payment reminder"]);
    let reminder = daemon
        .case(&payment)
        .await
        .deliveries
        .into_iter()
        .find(|d| d.step == "reminder")
        .expect("reminder");
    assert_eq!(
        (
            reminder.status.as_str(),
            reminder.due_at.as_str(),
            reminder.planned_at.as_str(),
            reminder.note.as_str()
        ),
        (
            "scheduled",
            "2026-03-02T10:00:00.000Z",
            "2026-03-03T09:00:00.000Z",
            "held by the email frequency cap (2 per 1d) until 2026-03-03 09:00 UTC"
        )
    );
    let shown = daemon.ctl_ok(&["cases", "show", &payment]);
    assert!(shown.contains("held by the email frequency cap"), "{shown}");

    // The critical final notice is exempt and goes on time.
    set_clock(&daemon, "2026-03-02T11:00:00Z").await;
    assert_eq!(
        subjects("cus_1"),
        ["Card final", "Card notice", "Payment notice"]
    );
    // A minute before the day is over the reminder still waits; then it
    // goes, deferred and not dropped.
    set_clock(&daemon, "2026-03-03T08:59:00Z").await;
    assert_eq!(subjects("cus_1").len(), 3);
    set_clock(&daemon, "2026-03-03T09:00:00Z").await;
    assert_eq!(
        subjects("cus_1"),
        [
            "Card final",
            "Card notice",
            "Payment notice",
            "Payment reminder"
        ]
    );
}

/// Mail through the primary provider, the backup provider when it is down.
const FAILOVER: &str = r#"
name: failover
trigger: { event: payment_failed }
steps:
  - name: notice
    after: 0s
    send:
      - { channel: email, template: mail, fallback: email_backup }
templates:
  mail: { subject: "Payment failed", text: "t" }
"#;

#[tokio::test]
async fn a_provider_that_stays_down_hands_over_to_the_backup_after_its_retries() {
    let Some(backup) = dunningd_e2e::peers::SmtpPeer::start() else {
        return;
    };
    // Nothing listens on the primary's port: every attempt fails, retryably.
    let down = dunningd_e2e::free_port();
    let mut setup = Setup::default().workflow("failover.yaml", FAILOVER);
    setup.channels.insert(
        "email".into(),
        format!("{{ plugin: smtp, settings: {{ url: 'smtp://127.0.0.1:{down}', from: billing@example.com }}, max_attempts: 3, retry_backoff: 10m }}"),
    );
    setup.channels.insert(
        "email_backup".into(),
        format!(
            "{{ plugin: smtp, settings: {{ url: '{}', from: billing@example.com }} }}",
            backup.url()
        ),
    );
    let daemon = TestDaemon::start(setup).await;
    set_clock(&daemon, "2026-03-02T09:00:00Z").await;
    let id = start_case(&daemon, event("e1", "cus_1", "+447700900123", 100)).await;
    daemon.settle().await;
    let attempts = |d: &proto::CaseDetail| {
        d.deliveries
            .iter()
            .map(|d| (d.channel.clone(), d.status.clone(), d.attempts))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        attempts(&daemon.case(&id).await),
        [("email".to_string(), "retrying".to_string(), 1)]
    );
    // Backoff doubles with ±20 % jitter: 10m, then 20m.
    set_clock(&daemon, "2026-03-02T09:13:00Z").await;
    assert_eq!(
        attempts(&daemon.case(&id).await),
        [("email".to_string(), "retrying".to_string(), 2)]
    );
    assert!(backup.messages().is_empty());
    set_clock(&daemon, "2026-03-02T09:45:00Z").await;
    let detail = daemon.case(&id).await;
    assert_eq!(
        attempts(&detail),
        [
            ("email".to_string(), "failed".to_string(), 3),
            ("email_backup".to_string(), "sent".to_string(), 1)
        ]
    );
    assert!(
        detail.deliveries[0]
            .last_error
            .starts_with("gave up after 3 attempts"),
        "{}",
        detail.deliveries[0].last_error
    );
    assert_eq!(detail.deliveries[1].fallback_for, "email");
    assert_eq!(backup.messages().len(), 1);
    assert_eq!(backup.messages()[0]["headers"]["Subject"], "Payment failed");
}
