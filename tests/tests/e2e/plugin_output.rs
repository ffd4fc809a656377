//! A plugin's answer is input like any other: the real daemon with the
//! `testkit` plugin answering what a broken or hostile plugin would (a retry
//! hint of centuries, a megabyte of error text, a receipt with terminal
//! escapes), and each answer bounded before it reaches the store.

use chrono::{DateTime, Utc};
use dunningd::proto;
use dunningd_e2e::daemon::{Setup, TestDaemon};
use dunningd_e2e::fixtures::{WORKFLOW, event};

/// The case's delivery on `channel`.
fn on(detail: &proto::CaseDetail, channel: &str) -> proto::Delivery {
    detail
        .deliveries
        .iter()
        .find(|d| d.channel == channel)
        .cloned()
        .unwrap_or_else(|| panic!("no {channel} delivery in {detail:?}"))
}

async fn now(daemon: &TestDaemon) -> DateTime<Utc> {
    let status = daemon
        .client()
        .await
        .get_status(proto::GetStatusRequest {})
        .await
        .expect("status")
        .into_inner();
    status.now.parse().expect("the daemon's clock is RFC 3339")
}

// Before the cap, a hint of 9e15 s made the retry time overflow: the
// scheduler panicked adding it to the clock and nothing was sent any more.
#[tokio::test]
async fn a_retry_hint_of_centuries_is_capped_and_a_huge_error_is_cut() {
    let setup = Setup::default()
        .workflow("payment-failed.yaml", WORKFLOW)
        .channel(
            "email",
            "{ plugin: testkit, max_attempts: 3, settings: { behaviour: retryable, \
         retry_after_secs: 9000000000000000, error: 'x', error_repeat: 1000000, \
         record: '{dir}/calls.jsonl' } }",
        );
    let daemon = TestDaemon::start(setup).await;
    let started = now(&daemon).await;
    let results = daemon
        .send_events(vec![event("e1", "payment_failed", "cus_1", "inv_1", 4900)])
        .await;
    daemon.settle().await;
    let case = &results[0].cases_started[0];

    let email = on(&daemon.case(case).await, "email");
    assert_eq!(email.status, "retrying", "{email:?}");
    assert!(
        email.last_error.chars().count() <= 1100 && email.last_error.ends_with('…'),
        "the error is cut to about 1,000 characters, not a megabyte: {} characters",
        email.last_error.len()
    );
    let planned: DateTime<Utc> = email.planned_at.parse().expect("planned_at");
    assert!(
        planned <= started + chrono::Duration::minutes(6 * 60 * 12 / 10),
        "the hint is capped at the longest backoff (6 h, ±20 %): planned {planned}"
    );
    assert_eq!(on(&daemon.case(case).await, "in_app").status, "sent");

    // The retry happens, on the engine's clock, within the cap.
    daemon.advance("8h").await;
    daemon.settle().await;
    let calls = dunningd_e2e::daemon::read_jsonl(&daemon.path("calls.jsonl"));
    assert_eq!(calls.len(), 2, "retried once within 8 hours: {calls:?}");
}

#[tokio::test]
async fn a_receipt_that_cannot_be_a_provider_id_is_not_kept() {
    let setup = Setup::default()
        .workflow("payment-failed.yaml", WORKFLOW)
        .channel(
            "email",
            "{ plugin: testkit, settings: { behaviour: ok, receipt: \"SM1\\e[2J\\n\" } }",
        );
    let daemon = TestDaemon::start(setup).await;
    let results = daemon
        .send_events(vec![event("e1", "payment_failed", "cus_1", "inv_1", 4900)])
        .await;
    daemon.settle().await;
    let email = on(&daemon.case(&results[0].cases_started[0]).await, "email");
    assert_eq!(email.status, "sent", "the send happened: {email:?}");
    assert_eq!(
        email.receipt, "",
        "a receipt with control characters is dropped"
    );
}
