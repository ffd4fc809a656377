//! The spine, end to end: the real `dunningd` with the real `log` and
//! `testkit` plugins, driven only through its gRPC API and `dunningctl`, with
//! the manual clock standing in for days.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use dunningd::proto;
use dunningd_e2e::daemon::{Backend, Setup, TestDaemon};
use dunningd_e2e::fixtures::{WORKFLOW, event, numbered_event};
use dunningd_e2e::on_both_backends;
use serde_json::Value;
use tonic::Code;

on_both_backends!(
    a_payment_failed_sequence_runs_fourteen_days_in_moments,
    payment_ends_the_case_and_nothing_more_is_sent,
    repeated_event_ids_and_unmatched_conditions_start_nothing,
    kill_9_between_steps_loses_nothing_and_repeats_nothing,
    kill_9_right_after_the_acknowledgement_loses_nothing,
    pause_holds_the_sequence_and_resume_continues_it,
);

fn channels_sent(deliveries: &[Value]) -> Vec<String> {
    deliveries
        .iter()
        .map(|d| d["channel"].as_str().unwrap_or("?").to_string())
        .collect()
}

fn keys(deliveries: &[Value]) -> Vec<String> {
    deliveries
        .iter()
        .map(|d| d["idempotency_key"].as_str().unwrap_or("?").to_string())
        .collect()
}

async fn a_payment_failed_sequence_runs_fourteen_days_in_moments(backend: Backend) {
    let daemon = TestDaemon::start(
        Setup::default()
            .workflow("payment-failed.yaml", WORKFLOW)
            .on(&backend),
    )
    .await;
    let results = daemon
        .send_events(vec![event("e1", "payment_failed", "cus_1", "inv_1", 4900)])
        .await;
    assert_eq!(results[0].cases_started.len(), 1, "{results:?}");
    let case_id = results[0].cases_started[0].clone();

    daemon.settle().await;
    let sent = daemon.deliveries();
    let first: BTreeSet<String> = channels_sent(&sent).into_iter().collect();
    assert_eq!(
        first,
        BTreeSet::from(["email".to_string(), "in_app".to_string()])
    );
    let email = sent
        .iter()
        .find(|d| d["channel"] == "email")
        .expect("email sent");
    assert_eq!(
        email["message"]["subject"],
        "Your payment of $49.00 didn't go through"
    );
    assert_eq!(
        email["message"]["text"],
        "Hi Name of cus_1, we couldn't charge your card for invoice inv_1."
    );
    assert_eq!(email["recipient"]["email"], "cus_1@example.com");

    // Nothing more until the reminder is due.
    daemon.advance("2d").await;
    assert_eq!(daemon.deliveries().len(), 2);
    daemon.advance("1d").await;
    let sent = daemon.deliveries();
    assert_eq!(sent.len(), 3);
    assert_eq!(sent[2]["channel"], "sms");
    assert_eq!(
        sent[2]["message"]["body"],
        "Name of cus_1, your payment for inv_1 is still due."
    );

    daemon.advance("11d").await;
    let sent = daemon.deliveries();
    assert_eq!(channels_sent(&sent)[3], "webhook");
    let unique: BTreeSet<_> = keys(&sent).into_iter().collect();
    assert_eq!(
        unique.len(),
        4,
        "every delivery has its own idempotency key"
    );

    let detail = daemon.case(&case_id).await;
    let state = detail.case.as_ref().map(|c| c.state.clone());
    assert_eq!(state.as_deref(), Some("exhausted"));
    assert!(
        detail
            .deliveries
            .iter()
            .all(|d| d.status == "sent" && d.attempts == 1),
        "{:?}",
        detail.deliveries
    );

    // The same timeline through dunningctl.
    let shown = daemon.ctl_ok(&["cases", "show", &case_id]);
    for word in ["first-notice", "reminder", "suspend", "exhausted"] {
        assert!(shown.contains(word), "cases show lacks {word}:\n{shown}");
    }
}

async fn payment_ends_the_case_and_nothing_more_is_sent(backend: Backend) {
    let daemon = TestDaemon::start(
        Setup::default()
            .workflow("payment-failed.yaml", WORKFLOW)
            .on(&backend),
    )
    .await;
    let started = daemon
        .send_events(vec![event("f1", "payment_failed", "cus_1", "inv_1", 4900)])
        .await;
    let case_id = started[0].cases_started[0].clone();
    daemon.settle().await;
    daemon.advance("1d").await;

    let paid = daemon
        .send_events(vec![event(
            "p1",
            "payment_succeeded",
            "cus_1",
            "inv_1",
            4900,
        )])
        .await;
    assert_eq!(paid[0].cases_recovered, vec![case_id.clone()]);
    daemon.advance("20d").await;

    assert_eq!(daemon.deliveries().len(), 2, "only the first step went out");
    let detail = daemon.case(&case_id).await;
    assert_eq!(
        detail.case.as_ref().map(|c| c.state.as_str()),
        Some("recovered")
    );
    let skipped: Vec<_> = detail
        .deliveries
        .iter()
        .filter(|d| d.status == "skipped")
        .collect();
    assert_eq!(skipped.len(), 2);
    assert!(skipped.iter().all(|d| d.skip_reason == "case recovered"));

    // A retried webhook of the original failure, delivered after the payment,
    // starts nothing: the payment occurred later.
    let mut stale: Value =
        serde_json::from_str(&event("f0", "payment_failed", "cus_1", "inv_1", 4900)).expect("json");
    stale["occurred_at"] = "2025-12-31T00:00:00Z".into();
    let results = daemon.send_events(vec![stale.to_string()]).await;
    assert!(results[0].cases_started.is_empty(), "{results:?}");
}

async fn repeated_event_ids_and_unmatched_conditions_start_nothing(backend: Backend) {
    let daemon = TestDaemon::start(
        Setup::default()
            .workflow("payment-failed.yaml", WORKFLOW)
            .on(&backend),
    )
    .await;
    let first = event("e1", "payment_failed", "cus_1", "inv_1", 4900);
    let results = daemon
        .send_events(vec![
            first.clone(),
            first.clone(),
            event("small", "payment_failed", "cus_2", "inv_2", 100),
        ])
        .await;
    assert_eq!(results.len(), 3);
    assert_eq!(results[0].cases_started.len(), 1);
    assert!(results[1].duplicate, "{results:?}");
    assert!(
        results[2].cases_started.is_empty(),
        "amount 100 is below the trigger condition"
    );
    let again = daemon.send_events(vec![first]).await;
    assert!(again[0].duplicate);

    // The same through dunningctl, from a JSON-lines file.
    let file = daemon.path("events.jsonl");
    std::fs::write(
        &file,
        format!(
            "{}\n{}\n",
            event("e1", "payment_failed", "cus_1", "inv_1", 4900),
            event("e9", "payment_failed", "cus_9", "inv_9", 900)
        ),
    )
    .expect("write");
    let out = daemon.ctl_ok(&[
        "--json",
        "events",
        "send",
        file.to_str().expect("utf-8 path"),
    ]);
    assert!(
        out.contains("\"duplicate\": true") || out.contains("\"duplicate\":true"),
        "{out}"
    );

    let cases = daemon
        .client()
        .await
        .list_cases(proto::ListCasesRequest::default())
        .await
        .expect("list")
        .into_inner()
        .cases;
    assert_eq!(cases.len(), 2, "cus_1 and cus_9");
}

async fn kill_9_between_steps_loses_nothing_and_repeats_nothing(backend: Backend) {
    let mut daemon = TestDaemon::start(
        Setup::default()
            .workflow("payment-failed.yaml", WORKFLOW)
            .on(&backend),
    )
    .await;
    let events = (0..20)
        .map(|i| numbered_event("e", "payment_failed", i))
        .collect();
    daemon.send_and_settle(events).await;
    assert_eq!(daemon.deliveries().len(), 40);

    daemon.kill9();
    daemon.spawn().await;
    daemon.advance("3d").await;
    daemon.kill9();
    daemon.spawn().await;
    daemon.advance("11d").await;

    let sent = daemon.deliveries();
    let unique: BTreeSet<_> = keys(&sent).into_iter().collect();
    assert_eq!(sent.len(), 80, "20 cases × 4 deliveries, each exactly once");
    assert_eq!(unique.len(), 80);
    let exhausted = daemon
        .client()
        .await
        .list_cases(proto::ListCasesRequest {
            state: "exhausted".into(),
            limit: 100,
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner()
        .cases;
    assert_eq!(exhausted.len(), 20);
}

async fn kill_9_right_after_the_acknowledgement_loses_nothing(backend: Backend) {
    // The kill may come after the first claim: on PostgreSQL the claims of
    // the killed daemon are taken over only once their lease runs out (it
    // may have been another daemon, still sending), so the lease is short.
    let mut setup = Setup::default()
        .workflow("payment-failed.yaml", WORKFLOW)
        .on(&backend);
    for channel in ["email", "sms", "in_app", "webhook", "billing"] {
        setup = setup.channel(
            channel,
            "{ plugin: log, timeout: 1s, settings: { path: '{dir}/deliveries.jsonl' } }",
        );
    }
    setup.extra_config.push_str("scheduler: { lease: 4s }\n");
    let mut daemon = TestDaemon::start(setup).await;
    let events = (0..50)
        .map(|i| numbered_event("e", "payment_failed", i))
        .collect();
    let results = daemon.send_events(events).await;
    assert_eq!(
        results
            .iter()
            .filter(|r| r.cases_started.len() == 1)
            .count(),
        50
    );
    daemon.kill9();
    daemon.spawn().await;
    daemon.settle().await;
    // At-least-once: a send interrupted by the kill may repeat, always with
    // the same idempotency key, and none may be missing.
    let unique: BTreeSet<_> = keys(&daemon.deliveries()).into_iter().collect();
    assert_eq!(
        unique.len(),
        100,
        "every acknowledged case's first step went out"
    );
}

#[tokio::test]
async fn a_panicking_plugin_fails_its_delivery_and_the_daemon_carries_on() {
    let setup = Setup::default()
        .workflow("payment-failed.yaml", WORKFLOW)
        .channel(
            "email",
            "{ plugin: testkit, settings: { behaviour: panic, record: '{dir}/calls.jsonl' } }",
        );
    let daemon = TestDaemon::start(setup).await;
    let results = daemon
        .send_events(vec![event("e1", "payment_failed", "cus_1", "inv_1", 4900)])
        .await;
    daemon.settle().await;
    let detail = daemon.case(&results[0].cases_started[0]).await;
    let email = detail
        .deliveries
        .iter()
        .find(|d| d.channel == "email")
        .expect("email delivery");
    assert_eq!(email.status, "failed");
    assert!(email.last_error.contains("panicked"), "{email:?}");
    let in_app = detail
        .deliveries
        .iter()
        .find(|d| d.channel == "in_app")
        .expect("in_app delivery");
    assert_eq!(in_app.status, "sent");
    assert_eq!(
        dunningd_e2e::daemon::read_jsonl(&daemon.path("calls.jsonl")).len(),
        1,
        "a panic is not retried"
    );
    // Still serving.
    daemon
        .client()
        .await
        .get_status(proto::GetStatusRequest {})
        .await
        .expect("status after a plugin panic");
}

#[tokio::test]
async fn a_hanging_plugin_is_bounded_by_its_deadline_and_its_concurrency() {
    let setup = Setup::default()
        .workflow("payment-failed.yaml", WORKFLOW)
        .channel("email", "{ plugin: testkit, timeout: 1s, concurrency: 1, max_attempts: 1, settings: { behaviour: hang, hang_secs: 600, record: '{dir}/calls.jsonl' } }");
    let mut daemon = TestDaemon::start(setup).await;
    let results = daemon
        .send_events(vec![
            event("e1", "payment_failed", "cus_1", "inv_1", 4900),
            event("e2", "payment_failed", "cus_2", "inv_2", 4900),
        ])
        .await;
    daemon.settle().await;

    let mut errors = Vec::new();
    for result in &results {
        let detail = daemon.case(&result.cases_started[0]).await;
        let email = detail
            .deliveries
            .iter()
            .find(|d| d.channel == "email")
            .expect("email delivery");
        assert_eq!(email.status, "failed", "{email:?}");
        errors.push(email.last_error.clone());
        let in_app = detail
            .deliveries
            .iter()
            .find(|d| d.channel == "in_app")
            .expect("in_app delivery");
        assert_eq!(in_app.status, "sent", "other channels are not held up");
    }
    // One call hung and was abandoned at its deadline (it may have sent);
    // the other never got a slot on the channel (it certainly did not).
    let has = |text: &str| errors.iter().any(|e| e.contains(text));
    assert!(
        has("gave up after 1 attempts: outcome unknown: plugin 'testkit' did not answer within 1s"),
        "{errors:?}"
    );
    assert!(
        has(
            "gave up after 1 attempts: channel 'email' is stuck: all 1 slots busy and no call returned within 1s"
        ),
        "{errors:?}"
    );
    assert_eq!(
        dunningd_e2e::daemon::read_jsonl(&daemon.path("calls.jsonl")).len(),
        1,
        "only one call reached the plugin"
    );

    daemon
        .client()
        .await
        .get_status(proto::GetStatusRequest {})
        .await
        .expect("status while a plugin thread hangs");
    let started = Instant::now();
    let status = daemon.terminate().await;
    assert!(status.success(), "{status}");
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "a hung plugin thread does not hold up the stop"
    );
}

#[tokio::test]
async fn bad_api_calls_get_clear_errors_and_change_nothing() {
    let daemon =
        TestDaemon::start(Setup::default().workflow("payment-failed.yaml", WORKFLOW)).await;
    let mut client = daemon.client().await;

    let bad_batch = vec![
        event("ok1", "payment_failed", "cus_1", "inv_1", 4900),
        r#"{"id":"x","type":"payment_failed","customer":{"id":""},"subject":"s"}"#.to_string(),
    ];
    let err = client
        .send_events(proto::SendEventsRequest { events: bad_batch })
        .await
        .expect_err("invalid event");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message() == "event 2 (x): customer.id: must not be empty",
        "{}",
        err.message()
    );
    let err = client
        .send_events(proto::SendEventsRequest {
            events: vec!["{not json".into()],
        })
        .await
        .expect_err("bad json");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().starts_with("event 1: not JSON: "),
        "{}",
        err.message()
    );

    let cases = client
        .list_cases(proto::ListCasesRequest::default())
        .await
        .expect("list")
        .into_inner()
        .cases;
    assert!(
        cases.is_empty(),
        "a refused batch stores nothing, not even its valid events"
    );

    let table: Vec<(tonic::Status, Code, &str)> = vec![
        (
            client
                .get_case(proto::GetCaseRequest { id: "nope".into() })
                .await
                .expect_err("unknown case"),
            Code::NotFound,
            "nope",
        ),
        (
            client
                .get_case(proto::GetCaseRequest { id: "".into() })
                .await
                .expect_err("empty id"),
            Code::InvalidArgument,
            "id",
        ),
        (
            client
                .list_cases(proto::ListCasesRequest {
                    state: "zombie".into(),
                    ..Default::default()
                })
                .await
                .expect_err("bad state"),
            Code::InvalidArgument,
            "zombie",
        ),
        (
            client
                .cancel_case(proto::CaseRef { id: "nope".into() })
                .await
                .expect_err("cancel unknown"),
            Code::NotFound,
            "nope",
        ),
        (
            client
                .advance_clock(proto::AdvanceClockRequest {
                    target: Some(proto::advance_clock_request::Target::By("3x".into())),
                })
                .await
                .expect_err("bad duration"),
            Code::InvalidArgument,
            "3x",
        ),
        (
            client
                .get_workflow(proto::GetWorkflowRequest {
                    name: "nope".into(),
                })
                .await
                .expect_err("unknown workflow"),
            Code::NotFound,
            "nope",
        ),
        (
            client
                .send_events(proto::SendEventsRequest { events: vec![] })
                .await
                .expect_err("empty batch"),
            Code::InvalidArgument,
            "events",
        ),
    ];
    for (status, code, mentions) in table {
        assert_eq!(status.code(), code, "{status:?}");
        assert!(
            status.message().contains(mentions),
            "{:?} should mention {mentions}",
            status.message()
        );
    }

    // A finished case refuses to resume.
    let started = daemon
        .send_events(vec![event("e1", "payment_failed", "cus_1", "inv_1", 4900)])
        .await;
    let id = started[0].cases_started[0].clone();
    client
        .cancel_case(proto::CaseRef { id: id.clone() })
        .await
        .expect("cancel");
    let err = client
        .resume_case(proto::CaseRef { id })
        .await
        .expect_err("resume cancelled");
    assert_eq!(err.code(), Code::FailedPrecondition);

    // dunningctl: one-line reason, non-zero exit.
    let out = daemon.ctl(&["cases", "show", "nope"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("dunningctl: ") && stderr.contains("nope"),
        "{stderr}"
    );
}

async fn pause_holds_the_sequence_and_resume_continues_it(backend: Backend) {
    let daemon = TestDaemon::start(
        Setup::default()
            .workflow("payment-failed.yaml", WORKFLOW)
            .on(&backend),
    )
    .await;
    let results = daemon
        .send_events(vec![event("e1", "payment_failed", "cus_1", "inv_1", 4900)])
        .await;
    let id = results[0].cases_started[0].clone();
    daemon.settle().await;
    daemon.ctl_ok(&["cases", "pause", &id]);
    daemon.advance("5d").await;
    assert_eq!(daemon.deliveries().len(), 2, "paused: the reminder waits");
    daemon.ctl_ok(&["cases", "resume", &id]);
    daemon.advance("2d").await;
    assert_eq!(
        daemon.deliveries().len(),
        2,
        "the reminder moved by the 5 paused days"
    );
    daemon.advance("1d").await;
    assert_eq!(daemon.deliveries().len(), 3);
}

#[tokio::test]
async fn sigterm_stops_cleanly() {
    let mut daemon =
        TestDaemon::start(Setup::default().workflow("payment-failed.yaml", WORKFLOW)).await;
    daemon
        .send_events(vec![event("e1", "payment_failed", "cus_1", "inv_1", 4900)])
        .await;
    daemon.settle().await;
    let status = daemon.terminate().await;
    assert!(status.success(), "exit status {status}:\n{}", daemon.log());
    assert!(daemon.log().contains("stopped"));
}
