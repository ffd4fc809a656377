use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::*;
use crate::model::{Customer, Event};
use std::collections::BTreeMap;

const GOOD: &str = r#"name: payment-failed
description: test
trigger:
  event: payment_failed
  when: "data.amount >= 500"
exit_on: [payment_succeeded]
send_window:
  cron: "* 9-19 * * Mon-Sat"
  timezone: customer
  default_timezone: Europe/Berlin
steps:
  - name: first
    after: 0s
    send:
      - { channel: email, template: first_email }
  - name: reminder
    after: 3d
    send:
      - { channel: sms, template: reminder_sms, fallback: email }
templates:
  first_email:
    subject: "Your payment of {{ data.amount | money(data.currency) }} failed"
    text: "Hi {{ customer.name }}, invoice {{ subject }}. {% if data.update_url is defined %}{{ data.update_url }}{% endif %}"
  reminder_sms:
    body: "{{ customer.name }}: still due ({{ case.id }}, {{ step }})"
"#;

fn channels() -> BTreeSet<String> {
    ["email", "sms", "in_app", "webhook", "billing"]
        .into_iter()
        .map(String::from)
        .collect()
}

fn t(text: &str) -> DateTime<Utc> {
    text.parse().expect("time")
}

fn event(kind: &str, amount: i64, tz: Option<&str>) -> Event {
    Event {
        id: "e1".into(),
        event_type: kind.into(),
        customer: Customer {
            id: "c1".into(),
            name: Some("Ada".into()),
            timezone: tz.map(String::from),
            ..Default::default()
        },
        subject: "inv_1".into(),
        data: serde_json::json!({ "amount": amount, "currency": "EUR" }),
        occurred_at: None,
    }
}

fn parse(source: &str) -> Result<Workflow, Vec<Diagnostic>> {
    Workflow::parse(Path::new("wf.yaml"), source, Some(&channels()))
}

#[test]
fn every_problem_is_reported_with_file_line_and_column() {
    let table: Vec<(String, &str)> = vec![
        (
            GOOD.replace("trigger:\n  event", "trigger:\n  evnt"),
            "wf.yaml:4:3: trigger: unknown field `evnt`",
        ),
        (
            GOOD.replace("exit_on:", "exits:"),
            "wf.yaml:6:1: unknown field `exits`",
        ),
        (
            GOOD.replace("after: 3d", "after: 3 days"),
            "wf.yaml:17:5: step 'reminder': after: invalid duration '3 days'",
        ),
        (
            GOOD.replace("after: 3d", "after: soon"),
            "wf.yaml:17:5: step 'reminder': after: invalid duration 'soon'",
        ),
        (
            GOOD.replace("after: 0s", "after: 5d"),
            "wf.yaml:17:5: step 'reminder': after 3d comes before the previous step's 5d",
        ),
        (
            GOOD.replace("channel: sms", "channel: fax"),
            "wf.yaml:19:11: step 'reminder': unknown channel 'fax'",
        ),
        (
            GOOD.replace("template: reminder_sms", "template: nope"),
            "wf.yaml:19:25: step 'reminder': unknown template 'nope'",
        ),
        (
            GOOD.replace("fallback: email", "fallback: sms"),
            "wf.yaml:19:49: step 'reminder': fallback 'sms' is the channel itself",
        ),
        (
            GOOD.replace(
                "      - { channel: sms, template: reminder_sms, fallback: email }",
                "      - { channel: sms, template: reminder_sms, fallback: email }\n      - { channel: email, template: first_email }",
            ),
            "step 'reminder': fallback 'email' is already a channel of this step, so it could never be sent",
        ),
        (
            GOOD.replace("fallback: email", "fallback: pigeon"),
            "step 'reminder': unknown fallback channel 'pigeon'",
        ),
        (
            GOOD.replace(
                "fallback: email",
                "fallback: { channel: email, template: nope }",
            ),
            "wf.yaml:19:49: step 'reminder': fallback: unknown template 'nope'",
        ),
        (
            GOOD.replace("    after: 3d\n", "    after: 3d\n    when: \"data.amount >\"\n"),
            "wf.yaml:18:5: step 'reminder': condition 'data.amount >': syntax error",
        ),
        (
            GOOD.replace("    after: 3d\n", "    after: 3d\n    expires_after: a while\n"),
            "wf.yaml:18:5: step 'reminder': expires_after: invalid duration 'a while'",
        ),
        (
            GOOD.replace("    after: 3d\n", "    after: 3d\n    expires_after: 0s\n"),
            "wf.yaml:18:5: step 'reminder': expires_after must be longer than 0s",
        ),
        (
            GOOD.replace(
                "    after: 3d\n",
                "    after: 3d\n    send_window: { cron: \"* 9-17 * * Mon-Fri\", timezone: Mars/Base }\n",
            ),
            "step 'reminder': unknown time zone 'Mars/Base'",
        ),
        (
            GOOD.replace("    after: 3d\n", "    after: 3d\n    critical: maybe\n"),
            "wf.yaml:18:15: steps[1].critical: invalid type",
        ),
        (
            GOOD.replace("* 9-19 * * Mon-Sat", "* 9-19 * *"),
            "wf.yaml:8:3: send_window.cron '* 9-19 * *' has 4 fields",
        ),
        (
            GOOD.replace("* 9-19 * * Mon-Sat", "* 9-25 * * Mon-Sat"),
            "wf.yaml:8:3: send_window.cron '* 9-25 * * Mon-Sat'",
        ),
        (
            GOOD.replace("Europe/Berlin", "Mars/Olympus"),
            "wf.yaml:10:3: unknown time zone 'Mars/Olympus'",
        ),
        (
            GOOD.replace("data.amount >= 500", "data.amount >= >= 500"),
            "wf.yaml:5:3: trigger condition 'data.amount >= >= 500': syntax error",
        ),
        (
            GOOD.replace("{{ customer.name }}: still", "{{ customer.name }: still"),
            "wf.yaml:25:5: template 'reminder_sms', field 'body': syntax error",
        ),
        (
            GOOD.replace("name: payment-failed", "name: Payment Failed"),
            "wf.yaml:1:1: name 'Payment Failed' must be lowercase",
        ),
        (
            GOOD.replace("  - name: reminder", "  - name: first"),
            "wf.yaml:16:5: step 'first' is defined twice",
        ),
        ("name: x\nsteps: [\n".to_string(), "wf.yaml:3:1: "),
        ("name: x\n".to_string(), "missing field `trigger`"),
    ];
    for (source, want) in table {
        let errors = parse(&source).expect_err(want);
        let shown: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert!(
            shown.iter().any(|e| e.contains(want)),
            "want {want:?} in {shown:#?}"
        );
    }
}

#[test]
fn the_shipped_workflows_validate() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../workflows");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("workflows/")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 3,
        "payment-failed, card-expired, card-expiring: {files:?}"
    );
    let problems = validate_files(&files, Some(&channels()), FileLimits::DEFAULT);
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn triggers_respect_type_and_condition() {
    let wf = parse(GOOD).expect("valid");
    assert!(
        wf.triggers_on(&event("payment_failed", 4900, None))
            .expect("eval")
    );
    assert!(
        !wf.triggers_on(&event("payment_failed", 100, None))
            .expect("eval")
    );
    assert!(
        !wf.triggers_on(&event("card_expired", 4900, None))
            .expect("eval")
    );
    let mut no_amount = event("payment_failed", 0, None);
    no_amount.data = serde_json::json!({});
    assert!(
        wf.triggers_on(&no_amount).is_err(),
        "a missing field is an error, not false"
    );
    assert!(wf.is_exit_event("payment_succeeded"));
}

#[test]
fn renders_with_money_and_refuses_typos() {
    let wf = parse(GOOD).expect("valid");
    let ev = event("payment_failed", 4900, None);
    let ctx = RenderContext {
        event: &ev,
        case_id: "case-1",
        case_started_at: t("2026-01-05T09:00:00Z"),
        step: "reminder",
        channel: "sms",
        unsubscribe_url: None,
    };
    let email = wf.render("first_email", &ctx).expect("render");
    assert_eq!(email["subject"], "Your payment of €49.00 failed");
    assert_eq!(email["text"], "Hi Ada, invoice inv_1. ");
    assert_eq!(
        wf.render("reminder_sms", &ctx).expect("render")["body"],
        "Ada: still due (case-1, reminder)"
    );

    let typo = parse(&GOOD.replace("{{ customer.name }}: still", "{{ custmer.name }}: still"))
        .expect("compiles");
    let err = typo
        .render("reminder_sms", &ctx)
        .expect_err("undefined")
        .to_string();
    assert!(
        err.starts_with("template 'reminder_sms', field 'body': undefined value"),
        "{err}"
    );
}

#[test]
fn send_windows_move_deliveries_to_the_next_opening() {
    let wf = parse(GOOD).expect("valid");
    let table = [
        // Inside the window (Monday 10:30 Berlin): unchanged.
        ("2026-01-05T09:30:00Z", None, "2026-01-05T09:30:00Z"),
        // Monday 06:00 Berlin → 09:00 Berlin.
        ("2026-01-05T05:00:00Z", None, "2026-01-05T08:00:00Z"),
        // Saturday 21:00 Berlin → Monday 09:00 Berlin (Sunday is closed).
        ("2026-01-10T20:00:00Z", None, "2026-01-12T08:00:00Z"),
        // The customer's own zone: 03:00 in New York → 09:00 New York.
        (
            "2026-01-05T08:00:00Z",
            Some("America/New_York"),
            "2026-01-05T14:00:00Z",
        ),
        // DST spring-forward in Berlin (Sun 29 March 2026): Sunday closed,
        // Monday 09:00 is now UTC+2.
        ("2026-03-28T19:00:00Z", None, "2026-03-30T07:00:00Z"),
    ];
    for (due, tz, want) in table {
        assert_eq!(
            wf.plan(0, None, t(due), tz),
            Some(t(want)),
            "due {due} in {tz:?}"
        );
    }
    let no_window = parse(&GOOD.replace("send_window:\n  cron: \"* 9-19 * * Mon-Sat\"\n  timezone: customer\n  default_timezone: Europe/Berlin\n", "")).expect("valid");
    assert_eq!(
        no_window.plan(0, None, t("2026-01-10T20:00:00Z"), None),
        Some(t("2026-01-10T20:00:00Z"))
    );
}

#[test]
fn a_folder_keeps_last_good_versions_refuses_duplicates_and_forgets_deleted_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("pf.yaml");
    std::fs::write(&file, GOOD).expect("write");
    std::fs::write(dir.path().join(".hidden.yaml"), "garbage: [").expect("write");
    std::fs::write(dir.path().join("notes.txt"), "not a workflow").expect("write");
    let first = WorkflowSet::load_dir(
        dir.path(),
        &channels(),
        &WorkflowSet::empty(),
        FileLimits::DEFAULT,
    );
    assert!(first.errors().is_empty(), "{:?}", first.errors());
    assert_eq!(
        first.changes_from(&WorkflowSet::empty()),
        vec!["payment-failed"]
    );
    let v1 = first.get("payment-failed").expect("loaded").version.clone();

    std::fs::write(&file, GOOD.replace("after: 3d", "after: later")).expect("break");
    let broken = WorkflowSet::load_dir(dir.path(), &channels(), &first, FileLimits::DEFAULT);
    assert_eq!(broken.get("payment-failed").expect("kept").version, v1);
    assert!(broken.error_for("payment-failed").is_some());
    assert!(broken.changes_from(&first).is_empty());

    std::fs::write(&file, GOOD.replace("description: test", "description: new")).expect("fix");
    std::fs::write(dir.path().join("a-copy.yaml"), GOOD).expect("dup");
    let fixed = WorkflowSet::load_dir(dir.path(), &channels(), &broken, FileLimits::DEFAULT);
    assert_eq!(
        fixed.get("payment-failed").expect("loaded").path,
        file,
        "the file that held the name keeps it"
    );
    assert_eq!(fixed.errors().len(), 1);
    assert!(
        fixed.errors()[0]
            .to_string()
            .contains("a-copy.yaml:1:1: workflow name 'payment-failed' is already defined in")
    );

    std::fs::remove_file(&file).expect("rm");
    std::fs::remove_file(dir.path().join("a-copy.yaml")).expect("rm");
    let gone = WorkflowSet::load_dir(dir.path(), &channels(), &fixed, FileLimits::DEFAULT);
    assert!(gone.get("payment-failed").is_none());
    assert_eq!(gone.changes_from(&fixed), vec!["payment-failed"]);
}

#[test]
fn the_watcher_fires_after_a_write() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (tx, rx) = std::sync::mpsc::channel();
    let _guard = watch(dir.path(), move || {
        let _ = tx.send(());
    })
    .expect("watch");
    std::fs::write(dir.path().join("new.yaml"), GOOD).expect("write");
    assert!(
        rx.recv_timeout(Duration::from_secs(5)).is_ok(),
        "no change reported"
    );
}

#[test]
fn preview_plans_and_renders_every_step() {
    let wf = parse(GOOD).expect("valid");
    let start = t("2026-01-05T05:00:00Z");
    let plan = preview::preview(
        &wf,
        &event("payment_failed", 4900, Some("Europe/London")),
        start,
        &BTreeMap::new(),
    )
    .expect("preview");
    assert!(plan.triggered);
    assert_eq!(plan.steps.len(), 2);
    assert_eq!(
        plan.steps[0].sends[0].planned_at,
        Some(t("2026-01-05T09:00:00Z"))
    );
    assert_eq!(
        plan.steps[0].sends[0].planned_local.as_deref(),
        Some("Mon 2026-01-05 09:00 Europe/London")
    );
    assert_eq!(plan.steps[1].due_at, t("2026-01-08T05:00:00Z"));
    let body = &plan.steps[0].sends[0].message.as_ref().expect("rendered")["subject"];
    assert_eq!(body, "Your payment of €49.00 failed");

    let small = preview::preview(
        &wf,
        &event("payment_failed", 1, None),
        start,
        &BTreeMap::new(),
    )
    .expect("preview");
    assert!(!small.triggered);
    assert!(small.reason.as_deref().unwrap_or("").contains("condition"));
}

/// The case's step conditions, expiry and windows as a workflow states them.
const POLICY: &str = r#"name: policy
trigger: { event: payment_failed }
send_window: { cron: "* 9-19 * * Mon-Fri", timezone: customer, default_timezone: Europe/Berlin }
steps:
  - name: notice
    after: 0s
    send:
      - { channel: email, template: mail, fallback: { channel: sms, template: text } }
  - name: big-ones
    after: 1d
    when: "data.amount >= 5000"
    expires_after: 1d
    critical: true
    send_window: { cron: "* 12-13 * * *", timezone: America/New_York }
    send:
      - { channel: sms, template: text, fallback: email }
templates:
  mail: { subject: "s", text: "t" }
  text: { body: "b" }
"#;

#[test]
fn steps_carry_conditions_expiry_windows_and_fallbacks() {
    let wf = parse(POLICY).expect("valid");
    let notice = &wf.steps[0];
    assert_eq!(
        notice.send[0].fallback,
        Some(Fallback {
            channel: "sms".into(),
            template: "text".into()
        })
    );
    let big = &wf.steps[1];
    assert_eq!(big.when.as_deref(), Some("data.amount >= 5000"));
    assert_eq!(big.expires_after, Some(Duration::from_secs(86_400)));
    assert!(big.critical && !notice.critical);
    // `fallback: email` keeps the send's own template.
    assert_eq!(
        big.send[0].fallback,
        Some(Fallback {
            channel: "email".into(),
            template: "text".into()
        })
    );
    assert!(
        !wf.step_applies(1, &event("payment_failed", 4900, None))
            .expect("evaluates")
    );
    assert!(
        wf.step_applies(1, &event("payment_failed", 5000, None))
            .expect("evaluates")
    );
    assert!(
        wf.step_applies(0, &event("payment_failed", 1, None))
            .expect("no condition")
    );

    // The step's own window replaces the workflow's: 12:00–13:59 New York,
    // any day. Saturday 10:00 UTC (05:00 New York) → 12:00 New York.
    assert_eq!(
        wf.plan(1, None, t("2026-01-10T10:00:00Z"), None),
        Some(t("2026-01-10T17:00:00Z"))
    );
    // The workflow's window: Saturday → Monday 09:00 Berlin.
    assert_eq!(
        wf.plan(0, None, t("2026-01-10T10:00:00Z"), None),
        Some(t("2026-01-12T08:00:00Z"))
    );
}

fn window(cron: &str, timezone: &str) -> SendWindow {
    SendWindow::parse(&RawWindow {
        cron: cron.into(),
        timezone: timezone.into(),
        default_timezone: None,
    })
    .expect("valid window")
}

#[test]
fn a_channel_window_applies_on_top_of_the_workflows() {
    let wf = parse(POLICY).expect("valid");
    // SMS only 09:00–19:59 in the customer's zone (here New York).
    let sms = window("* 9-19 * * *", "customer");
    let tz = Some("America/New_York");
    // Both windows are read in the customer's zone. Monday 14:00 UTC =
    // 09:00 New York: inside both.
    assert_eq!(
        wf.plan(0, Some(&sms), t("2026-01-05T14:00:00Z"), tz),
        Some(t("2026-01-05T14:00:00Z"))
    );
    // Saturday 02:00 UTC = Friday 21:00 New York: SMS closed until 09:00,
    // and the workflow's window is closed all weekend → Monday 09:00 New
    // York.
    assert_eq!(
        wf.plan(0, Some(&sms), t("2026-01-10T02:00:00Z"), tz),
        Some(t("2026-01-12T14:00:00Z"))
    );
    // Windows that never meet: nothing plannable.
    let nights = window("* 0-3 * * *", "America/New_York");
    assert_eq!(
        wf.plan(1, Some(&nights), t("2026-01-05T14:00:00Z"), tz),
        None
    );
}

#[test]
fn windows_follow_daylight_saving_in_both_directions_and_zones() {
    let daytime = window("* 9-19 * * *", "customer");
    let windows = [&daytime];
    let table = [
        // Berlin spring forward (29 March 2026, 02:00 → 03:00): Sunday 05:00
        // UTC is 07:00 CEST → 09:00 CEST = 07:00 UTC.
        (
            "2026-03-29T05:00:00Z",
            "Europe/Berlin",
            "2026-03-29T07:00:00Z",
        ),
        // Berlin fall back (25 October 2026): Sunday 06:00 UTC is 07:00 CET
        // → 09:00 CET = 08:00 UTC.
        (
            "2026-10-25T06:00:00Z",
            "Europe/Berlin",
            "2026-10-25T08:00:00Z",
        ),
        // New York spring forward (8 March 2026): 10:00 UTC is 06:00 EDT →
        // 09:00 EDT = 13:00 UTC.
        (
            "2026-03-08T10:00:00Z",
            "America/New_York",
            "2026-03-08T13:00:00Z",
        ),
        // New York fall back (1 November 2026): 10:00 UTC is 05:00 EST →
        // 09:00 EST = 14:00 UTC.
        (
            "2026-11-01T10:00:00Z",
            "America/New_York",
            "2026-11-01T14:00:00Z",
        ),
        // The evening before fall back: 20:00 EDT is closed → next morning
        // 09:00 EST.
        (
            "2026-11-01T00:00:00Z",
            "America/New_York",
            "2026-11-01T14:00:00Z",
        ),
    ];
    for (due, tz, want) in table {
        assert_eq!(
            next_open_in_all(&windows, t(due), Some(tz)),
            Some(t(want)),
            "due {due} in {tz}"
        );
    }
}
