//! The store's behaviour, written once against `dyn Store` so every backend
//! runs the same checks.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::*;
use crate::model::{CaseState, Customer, DeliveryStatus, Event};
use crate::stats::{ChannelCounts, StatsFilter};
use dunningd_test_support::PgDatabase;

fn t(text: &str) -> DateTime<Utc> {
    text.parse().expect("test time")
}

fn event(id: &str, kind: &str, subject: &str, occurred: Option<&str>) -> Event {
    Event {
        id: id.into(),
        event_type: kind.into(),
        customer: Customer {
            id: "cus_1".into(),
            ..Default::default()
        },
        subject: subject.into(),
        data: serde_json::json!({ "amount": 1999 }),
        occurred_at: occurred.map(t),
    }
}

/// A two-step case: email now, sms after a day.
fn new_case(workflow: &str, start: DateTime<Utc>) -> NewCase {
    let step = |i: u32, name: &str, channel: &str, after_h: i64| NewDelivery {
        step_index: i,
        step: name.into(),
        channel: channel.into(),
        template: format!("{name}_{channel}"),
        due_at: start + chrono::Duration::hours(after_h),
        planned_at: start + chrono::Duration::hours(after_h),
        critical: false,
    };
    NewCase {
        workflow: workflow.into(),
        workflow_version: format!("{workflow}-v1"),
        workflow_source: format!("name: {workflow}"),
        exit_on: vec!["payment_succeeded".into()],
        deliveries: vec![step(0, "first", "email", 0), step(1, "reminder", "sms", 24)],
    }
}

fn plan(event: Event, starts: Vec<NewCase>) -> EventPlan {
    EventPlan {
        occurred_at: event.occurred_at.unwrap_or(t("2026-01-05T09:00:00Z")),
        event,
        starts,
        notes: vec![],
    }
}

/// Two `pf` cases (events e1, e2) for different subjects, started at `now`.
async fn ingest_two_cases(store: &dyn Store, now: DateTime<Utc>) {
    let plans = vec![
        plan(
            event("e1", "payment_failed", "inv_1", None),
            vec![new_case("pf", now)],
        ),
        plan(
            event("e2", "payment_failed", "inv_2", None),
            vec![new_case("pf", now)],
        ),
    ];
    store.ingest(plans, now).await.expect("ingest");
}

fn options(owner: &str) -> ClaimOptions {
    ClaimOptions {
        owner: owner.into(),
        lease: Duration::from_secs(60),
        limit: 100,
        max_claims: 3,
        caps: BTreeMap::new(),
    }
}

/// What a fixture returns: something to keep alive for the test (a temporary
/// folder, a database to drop) and the store.
type Fixture = Option<(Box<dyn std::any::Any>, Arc<dyn Store>)>;

async fn sqlite_store() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = crate::store::sqlite::SqliteStore::open(&dir.path().join("test.db"))
        .await
        .expect("open store");
    Some((Box::new(dir), Arc::new(store)))
}

/// A fresh database per test on the server `DUNNINGD_TEST_POSTGRES` names;
/// `None` (the suite says how to enable it) where it is not set.
async fn postgres_store() -> Fixture {
    let database = PgDatabase::create().await?;
    let store = crate::store::postgres::PostgresStore::connect(database.options())
        .await
        .expect("open store");
    Some((Box::new(database), Arc::new(store)))
}

async fn events_are_accepted_once_and_cases_are_unique(store: Arc<dyn Store>) {
    let now = t("2026-01-05T09:00:00Z");
    let first = store
        .ingest(
            vec![plan(
                event("e1", "payment_failed", "inv_1", None),
                vec![new_case("pf", now)],
            )],
            now,
        )
        .await
        .expect("ingest");
    assert_eq!(first[0].cases_started.len(), 1);
    assert!(!first[0].duplicate);

    // The same id again: acknowledged, nothing happens.
    let again = store
        .ingest(
            vec![plan(
                event("e1", "payment_failed", "inv_1", None),
                vec![new_case("pf", now)],
            )],
            now,
        )
        .await
        .expect("ingest");
    assert!(again[0].duplicate);
    assert!(again[0].cases_started.is_empty());

    // A new event for the same subject while a case is open: no second case.
    let second = store
        .ingest(
            vec![plan(
                event("e2", "payment_failed", "inv_1", None),
                vec![new_case("pf", now)],
            )],
            now,
        )
        .await
        .expect("ingest");
    assert!(second[0].cases_started.is_empty());
    assert!(
        second[0].notes[0].contains("already open"),
        "{:?}",
        second[0].notes
    );

    let cases = store
        .list_cases(&CaseFilter::default())
        .await
        .expect("list");
    assert_eq!(cases.len(), 1);
    let detail = store.get_case(&cases[0].id).await.expect("get");
    assert_eq!(detail.deliveries.len(), 2);
    assert!(
        detail
            .deliveries
            .iter()
            .all(|d| d.status == DeliveryStatus::Scheduled)
    );
    assert_eq!(detail.case.trigger_event.data["amount"], 1999);
}

async fn exit_events_recover_and_stale_triggers_start_nothing(store: Arc<dyn Store>) {
    let now = t("2026-01-05T09:00:00Z");
    let started = store
        .ingest(
            vec![plan(
                event(
                    "f1",
                    "payment_failed",
                    "inv_1",
                    Some("2026-01-05T08:00:00Z"),
                ),
                vec![new_case("pf", now)],
            )],
            now,
        )
        .await
        .expect("ingest");
    let case_id = started[0].cases_started[0].clone();
    let paid = store
        .ingest(
            vec![plan(
                event(
                    "p1",
                    "payment_succeeded",
                    "inv_1",
                    Some("2026-01-05T08:30:00Z"),
                ),
                vec![],
            )],
            now,
        )
        .await
        .expect("ingest");
    assert_eq!(paid[0].cases_recovered, vec![case_id.clone()]);
    let detail = store.get_case(&case_id).await.expect("get");
    assert_eq!(detail.case.state, CaseState::Recovered);
    assert!(
        detail
            .deliveries
            .iter()
            .all(|d| d.status == DeliveryStatus::Skipped)
    );

    // A retried webhook of a failure that happened before the payment.
    let stale = store
        .ingest(
            vec![plan(
                event(
                    "f0",
                    "payment_failed",
                    "inv_1",
                    Some("2026-01-05T07:00:00Z"),
                ),
                vec![new_case("pf", now)],
            )],
            now,
        )
        .await
        .expect("ingest");
    assert!(stale[0].cases_started.is_empty());
    assert!(
        stale[0].notes[0].contains("exit event 'p1' occurred later"),
        "{:?}",
        stale[0].notes
    );

    // A new failure after the payment starts a new case.
    let fresh = store
        .ingest(
            vec![plan(
                event(
                    "f2",
                    "payment_failed",
                    "inv_1",
                    Some("2026-01-06T07:00:00Z"),
                ),
                vec![new_case("pf", now)],
            )],
            now,
        )
        .await
        .expect("ingest");
    assert_eq!(fresh[0].cases_started.len(), 1);
}

async fn claims_follow_due_times_leases_and_case_state(store: Arc<dyn Store>) {
    let now = t("2026-01-05T09:00:00Z");
    let out = store
        .ingest(
            vec![plan(
                event("e1", "payment_failed", "inv_1", None),
                vec![new_case("pf", now)],
            )],
            now,
        )
        .await
        .expect("ingest");
    let case_id = out[0].cases_started[0].clone();
    assert_eq!(store.next_due().await.expect("next"), Some(now));

    let claimed = store
        .claim_due(now, &options("a"))
        .await
        .expect("claim")
        .claimed;
    assert_eq!(claimed.len(), 1, "only the first step is due");
    assert_eq!(claimed[0].attempt, 1);
    assert_eq!(
        claimed[0].idempotency_key,
        idempotency_key(&case_id, 0, "email")
    );
    // Claimed under a live lease: nobody else gets it.
    assert!(
        store
            .claim_due(now, &options("b"))
            .await
            .expect("claim")
            .claimed
            .is_empty()
    );

    // Only the owner completes it.
    let lost = store
        .complete(
            "b",
            vec![(
                claimed[0].delivery_id.clone(),
                Completion::Sent { receipt: None },
            )],
            now,
        )
        .await
        .expect("complete");
    assert_eq!(lost, vec![claimed[0].delivery_id.clone()]);
    let lost = store
        .complete(
            "a",
            vec![(
                claimed[0].delivery_id.clone(),
                Completion::Sent {
                    receipt: Some("r-1".into()),
                },
            )],
            now,
        )
        .await
        .expect("complete");
    assert!(lost.is_empty());

    // Paused: the next step is due but not claimed; resume shifts it by the pause.
    let later = now + chrono::Duration::hours(2);
    store
        .case_action(&case_id, CaseAction::Pause, later)
        .await
        .expect("pause");
    let day_after = now + chrono::Duration::hours(30);
    assert!(
        store
            .claim_due(day_after, &options("a"))
            .await
            .expect("claim")
            .claimed
            .is_empty()
    );
    store
        .case_action(&case_id, CaseAction::Resume, day_after)
        .await
        .expect("resume");
    assert!(
        store
            .claim_due(day_after, &options("a"))
            .await
            .expect("claim")
            .claimed
            .is_empty(),
        "shifted by 28h"
    );
    let shifted = now + chrono::Duration::hours(24 + 28);
    assert_eq!(store.next_due().await.expect("next"), Some(shifted));
    let claimed = store
        .claim_due(shifted, &options("a"))
        .await
        .expect("claim")
        .claimed;
    assert_eq!(claimed.len(), 1);

    // Retry, then a final outcome: the case has run every step.
    let id = claimed[0].delivery_id.clone();
    store
        .complete(
            "a",
            vec![(
                id.clone(),
                Completion::Retry {
                    error: "429".into(),
                    at: shifted + chrono::Duration::minutes(1),
                },
            )],
            shifted,
        )
        .await
        .expect("complete");
    let retry_at = shifted + chrono::Duration::minutes(1);
    let claimed = store
        .claim_due(retry_at, &options("a"))
        .await
        .expect("claim")
        .claimed;
    assert_eq!(claimed[0].attempt, 2);
    store
        .complete(
            "a",
            vec![(
                id,
                Completion::Failed {
                    error: "invalid number".into(),
                    fallback: None,
                },
            )],
            retry_at,
        )
        .await
        .expect("complete");
    let detail = store.get_case(&case_id).await.expect("get");
    assert_eq!(detail.case.state, CaseState::Exhausted);
    let sms = &detail.deliveries[1];
    assert_eq!(
        (sms.status, sms.attempts, sms.last_error.as_deref()),
        (DeliveryStatus::Failed, 2, Some("invalid number"))
    );
    assert_eq!(detail.deliveries[0].receipt.as_deref(), Some("r-1"));

    // Finished cases refuse operator actions.
    let err = store
        .case_action(&case_id, CaseAction::Resume, retry_at)
        .await
        .expect_err("resume exhausted");
    assert!(
        err.to_string().contains("is exhausted; cannot resume"),
        "{err}"
    );
    assert!(matches!(
        store.get_case("nope").await,
        Err(StoreError::CaseNotFound(_))
    ));
}

/// `dunningctl cases show` takes an id prefix: the store finds the cases
/// whose id starts with it, a bounded few, and never reads the prefix as a
/// pattern.
async fn case_ids_are_found_by_prefix(store: Arc<dyn Store>) {
    let now = t("2026-01-05T09:00:00Z");
    let plans = (1..=3)
        .map(|i| {
            plan(
                event(
                    &format!("e{i}"),
                    "payment_failed",
                    &format!("inv_{i}"),
                    None,
                ),
                vec![new_case("pf", now)],
            )
        })
        .collect();
    let mut ids: Vec<String> = store
        .ingest(plans, now)
        .await
        .expect("ingest")
        .into_iter()
        .flat_map(|o| o.cases_started)
        .collect();
    ids.sort();
    assert_eq!(ids.len(), 3);
    // The shortest prefix of each id that starts no other.
    let unique = |id: &String| {
        (1..=id.len())
            .map(|n| &id[..n])
            .find(|p| ids.iter().filter(|other| other.starts_with(p)).count() == 1)
            .expect("ids differ")
            .to_string()
    };
    let common: String = ids[0]
        .chars()
        .zip(ids[2].chars())
        .take_while(|(a, b)| a == b)
        .map(|(a, _)| a)
        .collect();
    let upper = ids[0].to_uppercase();
    let cases: Vec<(&str, u32, Vec<String>)> = vec![
        (&ids[1], 10, vec![ids[1].clone()]),
        (&common, 10, ids.clone()),
        (&common, 2, ids[..2].to_vec()),
        (&ids[0][..1], 10, ids.clone()),
        ("zzz", 10, vec![]),
        (&upper, 10, vec![]),
        // Pattern characters match nothing rather than everything.
        ("%", 10, vec![]),
        ("_", 10, vec![]),
        ("*", 10, vec![]),
        ("?", 10, vec![]),
        ("[0-9]", 10, vec![]),
        ("", 10, vec![]),
    ];
    for (prefix, limit, expected) in cases {
        let found = store
            .case_ids_with_prefix(prefix, limit)
            .await
            .expect("find by prefix");
        assert_eq!(found, expected, "prefix {prefix:?}, limit {limit}");
    }
    for id in &ids {
        let prefix = unique(id);
        let found = store.case_ids_with_prefix(&prefix, 10).await.expect("find");
        assert_eq!(found, std::slice::from_ref(id), "prefix {prefix:?}");
    }
}

async fn a_delivery_that_keeps_crashing_is_parked(store: Arc<dyn Store>) {
    let now = t("2026-01-05T09:00:00Z");
    store
        .ingest(
            vec![plan(
                event("e1", "payment_failed", "inv_1", None),
                vec![new_case("pf", now)],
            )],
            now,
        )
        .await
        .expect("ingest");
    let zero_lease = |owner: &str| ClaimOptions {
        lease: Duration::ZERO,
        ..options(owner)
    };
    // Each claim's lease expires at once, as if the process died mid-send
    // and the next one (another owner) took over.
    for attempt in 1..=3 {
        let owner = format!("process-{attempt}");
        let claimed = store
            .claim_due(now, &zero_lease(&owner))
            .await
            .expect("claim")
            .claimed;
        assert_eq!(claimed.len(), 1, "claim {attempt}");
        assert_eq!(claimed[0].attempt, attempt);
        // A live owner never takes back its own expired lease: it still owes
        // that delivery's outcome.
        assert!(
            store
                .claim_due(now, &zero_lease(&owner))
                .await
                .expect("claim")
                .claimed
                .is_empty(),
            "{owner} reclaimed its own lease"
        );
    }
    let fourth = store
        .claim_due(now, &zero_lease("process-4"))
        .await
        .expect("claim");
    assert_parked(&*store, &fourth).await;
}

/// The one case's first delivery was parked by the claim `fourth`, its
/// channel given up, after 3 claims without an outcome.
async fn assert_parked(store: &dyn Store, fourth: &Claims) {
    assert!(fourth.claimed.is_empty());
    assert_eq!(fourth.given_up, ["email"], "the parked delivery's channel");
    let case = &store
        .list_cases(&CaseFilter::default())
        .await
        .expect("list")[0];
    let detail = store.get_case(&case.id).await.expect("get");
    assert_eq!(detail.deliveries[0].status, DeliveryStatus::Failed);
    assert!(
        detail.deliveries[0]
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("gave up after 3 claims"),
        "{:?}",
        detail.deliveries[0].last_error
    );
}

async fn cancel_skips_what_is_left(store: Arc<dyn Store>) {
    let now = t("2026-01-05T09:00:00Z");
    let out = store
        .ingest(
            vec![plan(
                event("e1", "payment_failed", "inv_1", None),
                vec![new_case("pf", now)],
            )],
            now,
        )
        .await
        .expect("ingest");
    let case = store
        .case_action(&out[0].cases_started[0], CaseAction::Cancel, now)
        .await
        .expect("cancel");
    assert_eq!(case.state, CaseState::Cancelled);
    let detail = store.get_case(&case.id).await.expect("get");
    assert!(
        detail
            .deliveries
            .iter()
            .all(|d| d.skip_reason.as_deref() == Some("case cancelled"))
    );
    assert_eq!(store.next_due().await.expect("next"), None);
    let counts = store.case_counts().await.expect("counts");
    assert_eq!(counts.get(&CaseState::Cancelled), Some(&1));
}

/// An opt-out reaches the claim; a failed or skipped delivery with a
/// follow-up schedules it once, marked as standing in for its channel, and
/// the case is not exhausted while the fallback is pending.
async fn optouts_and_fallbacks(store: Arc<dyn Store>) {
    let now = t("2026-01-05T09:00:00Z");
    store
        .ingest(
            vec![plan(
                event("e1", "payment_failed", "inv_1", None),
                vec![new_case("pf", now)],
            )],
            now,
        )
        .await
        .expect("ingest");
    let optout = crate::model::OptOut {
        customer_id: "cus_1".into(),
        channel: "email".into(),
        source: "operator".into(),
        reason: "asked by phone".into(),
        created_at: now,
    };
    store.opt_out(&optout).await.expect("opt out");
    store
        .opt_out(&optout)
        .await
        .expect("opting out twice is fine");
    assert_eq!(
        store.list_optouts(Some("cus_1"), 10).await.expect("list"),
        vec![optout.clone()]
    );
    assert!(
        store
            .list_optouts(Some("cus_2"), 10)
            .await
            .expect("list")
            .is_empty()
    );

    let claimed = store
        .claim_due(now, &options("a"))
        .await
        .expect("claim")
        .claimed;
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].opted_out.as_deref(), Some("operator"));
    assert_eq!(claimed[0].fallback_for, None);
    let follow = FollowUp {
        channel: "sms".into(),
        template: "first_sms".into(),
        due_at: now,
        planned_at: now,
    };
    let skipped = Completion::Skipped {
        reason: "opted out of email (operator)".into(),
        fallback: Some(follow.clone()),
    };
    let lost = store
        .complete("a", vec![(claimed[0].delivery_id.clone(), skipped)], now)
        .await
        .expect("complete");
    assert!(lost.is_empty());

    let fallback = store
        .claim_due(now, &options("a"))
        .await
        .expect("claim")
        .claimed;
    assert_eq!(fallback.len(), 1, "the fallback is due at once");
    assert_eq!(fallback[0].channel, "sms");
    assert_eq!(fallback[0].template, "first_sms");
    assert_eq!(fallback[0].step_index, 0);
    assert_eq!(fallback[0].fallback_for.as_deref(), Some("email"));
    assert_eq!(fallback[0].opted_out, None, "not opted out of sms");
    assert_eq!(
        fallback[0].idempotency_key,
        idempotency_key(&fallback[0].case_id, 0, "sms")
    );
    // A failed fallback with a follow-up of its own channel adds nothing.
    store
        .complete(
            "a",
            vec![(
                fallback[0].delivery_id.clone(),
                Completion::Failed {
                    error: "invalid number".into(),
                    fallback: Some(FollowUp {
                        channel: "sms".into(),
                        ..follow
                    }),
                },
            )],
            now,
        )
        .await
        .expect("complete");
    let detail = store.get_case(&fallback[0].case_id).await.expect("get");
    assert_eq!(
        detail.deliveries.len(),
        3,
        "email, sms fallback, sms reminder"
    );
    assert_eq!(
        detail.case.state,
        CaseState::Active,
        "the reminder is pending"
    );

    assert!(store.opt_in("cus_1", "email", None).await.expect("opt in"));
    assert!(
        !store
            .opt_in("cus_1", "email", None)
            .await
            .expect("opt in twice")
    );
    assert!(store.list_optouts(None, 10).await.expect("list").is_empty());
}

/// A capped channel lets a customer's deliveries through up to the cap and
/// holds the rest (with a note) until the period allows; critical steps and
/// other customers are not held.
async fn frequency_caps_hold_what_exceeds_them(store: Arc<dyn Store>) {
    let now = t("2026-01-05T09:00:00Z");
    let case = |critical: bool| {
        let mut c = new_case("pf", now);
        c.deliveries.truncate(1);
        c.deliveries[0].channel = "sms".into();
        c.deliveries[0].critical = critical;
        c
    };
    let customer_event = |id: &str, customer: &str, subject: &str| {
        let mut e = event(id, "payment_failed", subject, None);
        e.customer.id = customer.into();
        e
    };
    let plans = vec![
        plan(customer_event("e1", "cus_1", "inv_1"), vec![case(false)]),
        plan(customer_event("e2", "cus_1", "inv_2"), vec![case(false)]),
        plan(customer_event("e3", "cus_1", "inv_3"), vec![case(true)]),
        plan(customer_event("e4", "cus_2", "inv_4"), vec![case(false)]),
    ];
    store.ingest(plans, now).await.expect("ingest");
    let capped = ClaimOptions {
        caps: BTreeMap::from([(
            "sms".to_string(),
            FrequencyCap {
                max: 1,
                per: Duration::from_secs(86_400),
            },
        )]),
        ..options("a")
    };
    let claimed = store.claim_due(now, &capped).await.expect("claim").claimed;
    let customers: Vec<&str> = claimed
        .iter()
        .map(|c| c.trigger_event.customer.id.as_str())
        .collect();
    assert_eq!(
        claimed.len(),
        3,
        "one of cus_1's two non-critical SMS is held: {customers:?}"
    );
    let results = claimed
        .iter()
        .map(|c| (c.delivery_id.clone(), Completion::Sent { receipt: None }))
        .collect();
    store.complete("a", results, now).await.expect("complete");

    let cases = store
        .list_cases(&CaseFilter::default())
        .await
        .expect("list");
    let mut held = Vec::new();
    for c in &cases {
        let detail = store.get_case(&c.id).await.expect("get");
        held.extend(
            detail
                .deliveries
                .into_iter()
                .filter(|d| d.status == DeliveryStatus::Scheduled),
        );
    }
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].planned_at, t("2026-01-06T09:00:00Z"));
    assert_eq!(held[0].due_at, now, "the due time stays as planned");
    assert_eq!(
        held[0].note.as_deref(),
        Some("held by the sms frequency cap (1 per 1d) until 2026-01-06 09:00 UTC")
    );
    // Still held a minute before the period ends; let through at its end.
    let almost = t("2026-01-06T08:59:00Z");
    assert!(
        store
            .claim_due(almost, &capped)
            .await
            .expect("claim")
            .claimed
            .is_empty()
    );
    let later = t("2026-01-06T09:00:00Z");
    let released = store
        .claim_due(later, &capped)
        .await
        .expect("claim")
        .claimed;
    assert_eq!(released.len(), 1);
    // Once sent, it no longer waits: the hold's note is gone.
    let sent = vec![(
        released[0].delivery_id.clone(),
        Completion::Sent { receipt: None },
    )];
    store.complete("a", sent, later).await.expect("complete");
    let detail = store.get_case(&released[0].case_id).await.expect("get");
    let delivery = detail
        .deliveries
        .iter()
        .find(|d| d.id == released[0].delivery_id)
        .expect("the released delivery");
    assert_eq!(delivery.status, DeliveryStatus::Sent);
    assert_eq!(delivery.note, None);
}

/// A claim in flight counts against its customer's cap: a delivery claimed
/// later for the same customer and capped channel, while the first is still
/// being sent, is held.
async fn a_cap_counts_claims_in_flight(store: Arc<dyn Store>) {
    let now = t("2026-01-05T09:00:00Z");
    let sms_case = || {
        let mut c = new_case("pf", now);
        c.deliveries.truncate(1);
        c.deliveries[0].channel = "sms".into();
        c
    };
    let capped = ClaimOptions {
        caps: BTreeMap::from([(
            "sms".to_string(),
            FrequencyCap {
                max: 1,
                per: Duration::from_secs(86_400),
            },
        )]),
        ..options("a")
    };
    let first = event("e1", "payment_failed", "inv_1", None);
    store
        .ingest(vec![plan(first, vec![sms_case()])], now)
        .await
        .expect("ingest");
    let claimed = store.claim_due(now, &capped).await.expect("claim").claimed;
    assert_eq!(claimed.len(), 1);
    // Same customer, another invoice, while the first is in flight.
    let second = event("e2", "payment_failed", "inv_2", None);
    store
        .ingest(vec![plan(second, vec![sms_case()])], now)
        .await
        .expect("ingest");
    assert!(
        store
            .claim_due(now, &capped)
            .await
            .expect("claim")
            .claimed
            .is_empty(),
        "the claim in flight counts against the cap"
    );
}

/// Inbound webhooks: customers are found by the phone number of their
/// cases' events; provider reports only move forward, whatever order they
/// come in, even before the send is recorded; an opt-in may be limited to
/// the opt-outs of one source.
async fn inbound_reports_and_phone_lookup(store: Arc<dyn Store>) {
    let now = t("2026-01-05T09:00:00Z");
    let with_phone = |id: &str, customer: &str, subject: &str, phone: &str| {
        let mut e = event(id, "payment_failed", subject, None);
        e.customer.id = customer.into();
        e.customer.phone = Some(phone.into());
        e
    };
    let mut case = new_case("pf", now);
    case.deliveries.truncate(1);
    store
        .ingest(
            vec![
                plan(
                    with_phone("e1", "cus_1", "inv_1", "+447700900123"),
                    vec![case.clone()],
                ),
                plan(
                    with_phone("e2", "cus_2", "inv_2", "+447700900123"),
                    vec![case.clone()],
                ),
                plan(
                    with_phone("e3", "cus_3", "inv_3", "+447700900999"),
                    vec![case],
                ),
            ],
            now,
        )
        .await
        .expect("ingest");
    assert_eq!(
        store
            .customers_by_phone("+447700900123")
            .await
            .expect("lookup"),
        ["cus_1", "cus_2"]
    );
    assert!(
        store
            .customers_by_phone("+15550000000")
            .await
            .expect("lookup")
            .is_empty()
    );

    let report = |receipt: &str, status: &str, rank: i64, code: Option<&str>| ProviderReport {
        channel: "email".into(),
        receipt: receipt.into(),
        status: status.into(),
        error_code: code.map(String::from),
        rank,
        at: now,
    };
    // Twilio may report before the send's outcome is recorded.
    store
        .record_report(&report("SM1", "sent", 3, None))
        .await
        .expect("report");
    let claimed = store
        .claim_due(now, &options("a"))
        .await
        .expect("claim")
        .claimed;
    assert_eq!(claimed.len(), 3);
    let results = claimed
        .iter()
        .zip(["SM1", "SM2", "SM3"])
        .map(|(c, sid)| {
            (
                c.delivery_id.clone(),
                Completion::Sent {
                    receipt: Some(sid.into()),
                },
            )
        })
        .collect();
    store.complete("a", results, now).await.expect("complete");
    for r in [
        report("SM1", "delivered", 4, None),
        report("SM1", "sent", 3, None),
        report("SM1", "queued", 1, None),
        report("SM2", "undelivered", 4, Some("30003")),
        report("SM2", "delivered", 4, None),
    ] {
        store.record_report(&r).await.expect("report");
    }
    let mut statuses = Vec::new();
    for c in &claimed {
        let detail = store.get_case(&c.case_id).await.expect("get");
        statuses.push(detail.deliveries[0].provider_status.clone());
    }
    assert_eq!(
        statuses,
        [
            Some("delivered".to_string()),
            Some("undelivered (error 30003)".to_string()),
            None
        ]
    );

    let optout = |source: &str| OptOut {
        customer_id: "cus_1".into(),
        channel: "sms".into(),
        source: source.into(),
        reason: "test".into(),
        created_at: now,
    };
    store.opt_out(&optout("operator")).await.expect("opt out");
    assert!(
        !store
            .opt_in("cus_1", "sms", Some("sms-stop"))
            .await
            .expect("opt in"),
        "START does not lift the operator's opt-out"
    );
    store.opt_out(&optout("sms-stop")).await.expect("opt out");
    assert!(
        store
            .opt_in("cus_1", "sms", Some("sms-stop"))
            .await
            .expect("opt in")
    );
}

/// The stats query runs on both backends and feeds the shared rules: the
/// recovered case's last touch is the email it was sent, its reminder was
/// skipped by the recovery, and the period filter selects by start.
async fn stats_fold_cases_and_deliveries(store: Arc<dyn Store>) {
    let now = t("2026-01-05T09:00:00Z");
    let failed = |id: &str, subject: &str| {
        let mut e = event(id, "payment_failed", subject, None);
        e.data = serde_json::json!({ "amount": 1999, "currency": "eur" });
        plan(e, vec![new_case("pf", now)])
    };
    store
        .ingest(vec![failed("f1", "inv_1"), failed("f2", "inv_2")], now)
        .await
        .expect("ingest");
    let claimed = store
        .claim_due(now, &options("a"))
        .await
        .expect("claim")
        .claimed;
    assert_eq!(claimed.len(), 2);
    let results = claimed
        .iter()
        .map(|c| (c.delivery_id.clone(), Completion::Sent { receipt: None }))
        .collect();
    store.complete("a", results, now).await.expect("complete");
    let paid_at = now + chrono::Duration::hours(1);
    let mut paid = event("p1", "payment_succeeded", "inv_1", None);
    paid.occurred_at = Some(paid_at);
    store
        .ingest(vec![plan(paid, vec![])], paid_at)
        .await
        .expect("ingest");

    let stats = store.stats(&StatsFilter::default()).await.expect("stats");
    assert_eq!(stats.workflows.len(), 1);
    let w = &stats.workflows[0];
    assert_eq!((w.workflow.as_str(), w.started), ("pf", 2));
    assert_eq!(w.by_state.get(&CaseState::Recovered), Some(&1));
    assert_eq!(w.by_state.get(&CaseState::Active), Some(&1));
    assert_eq!(w.recovery_rate, Some(1.0));
    assert_eq!(w.at_risk.get("EUR"), Some(&3998));
    assert_eq!(w.recovered_amount.get("EUR"), Some(&1999));
    assert_eq!(w.median_time_to_recovery_secs, Some(3600));
    // Both cases got the first email; the reminder went to neither.
    let contacted: Vec<(&str, u64)> = w
        .steps
        .iter()
        .map(|s| (s.name.as_str(), s.contacted))
        .collect();
    assert_eq!(contacted, [("first", 2), ("reminder", 0)]);
    let steps: Vec<(&str, &str, ChannelCounts)> = w
        .steps
        .iter()
        .flat_map(|s| {
            s.channels
                .iter()
                .map(|(c, n)| (s.name.as_str(), c.as_str(), *n))
        })
        .collect();
    assert_eq!(
        steps,
        [
            (
                "first",
                "email",
                ChannelCounts {
                    sent: 2,
                    last_touch: 1,
                    ..Default::default()
                }
            ),
            (
                "reminder",
                "sms",
                ChannelCounts {
                    skipped: 1,
                    pending: 1,
                    ..Default::default()
                }
            ),
        ]
    );
    let later = StatsFilter {
        since: Some(now + chrono::Duration::minutes(1)),
        ..Default::default()
    };
    assert!(
        store
            .stats(&later)
            .await
            .expect("stats")
            .workflows
            .is_empty()
    );
    let other = StatsFilter {
        workflow: Some("other".into()),
        until: Some(now + chrono::Duration::minutes(1)),
        ..Default::default()
    };
    assert!(
        store
            .stats(&other)
            .await
            .expect("stats")
            .workflows
            .is_empty()
    );
}

/// A renewed lease keeps another daemon off a claim still in flight; a lease
/// that ran out and was taken over cannot be renewed by its old owner.
async fn renewed_leases_are_not_taken_over(store: Arc<dyn Store>) {
    let now = t("2026-01-05T09:00:00Z");
    ingest_two_cases(&*store, now).await;
    let short = |owner: &str| ClaimOptions {
        lease: Duration::from_millis(300),
        ..options(owner)
    };
    let claimed = store
        .claim_due(now, &short("a"))
        .await
        .expect("claim")
        .claimed;
    assert_eq!(claimed.len(), 2);
    let (kept, lapsed) = (
        claimed[0].delivery_id.clone(),
        claimed[1].delivery_id.clone(),
    );
    let renewed = store
        .renew_leases("a", std::slice::from_ref(&kept), Duration::from_secs(60))
        .await
        .expect("renew");
    assert_eq!(renewed, vec![kept.clone()]);
    // Someone else's claim is not theirs to renew.
    let renewed = store
        .renew_leases("b", std::slice::from_ref(&kept), Duration::from_secs(60))
        .await
        .expect("renew");
    assert!(renewed.is_empty());

    tokio::time::sleep(Duration::from_millis(400)).await;
    let taken = store
        .claim_due(now, &short("b"))
        .await
        .expect("claim")
        .claimed;
    assert_eq!(
        taken.iter().map(|c| &c.delivery_id).collect::<Vec<_>>(),
        vec![&lapsed],
        "only the lease that was not renewed is taken over"
    );
    let renewed = store
        .renew_leases(
            "a",
            &[kept.clone(), lapsed.clone()],
            Duration::from_secs(60),
        )
        .await
        .expect("renew");
    assert_eq!(renewed, vec![kept.clone()], "a lost lease stays lost");
    let lost = store
        .complete(
            "a",
            vec![
                (kept, Completion::Sent { receipt: None }),
                (lapsed.clone(), Completion::Sent { receipt: None }),
            ],
            now,
        )
        .await
        .expect("complete");
    assert_eq!(lost, vec![lapsed]);
    assert!(
        store
            .renew_leases("a", &[], Duration::from_secs(60))
            .await
            .expect("renew nothing")
            .is_empty()
    );
}

/// The metrics endpoint's reading: cases by workflow and state, and the
/// deliveries due but not claimed (not leased ones, not those of paused or
/// ended cases) with the oldest planned time among them.
async fn gauges_count_cases_and_the_unclaimed_due_backlog(store: Arc<dyn Store>) {
    let now = t("2026-01-05T09:00:00Z");
    let hours = chrono::Duration::hours;
    let out = store
        .ingest(
            vec![
                plan(
                    event("e1", "payment_failed", "inv_1", None),
                    vec![new_case("pf", now)],
                ),
                plan(
                    event("e2", "payment_failed", "inv_2", None),
                    vec![new_case("pf", now)],
                ),
                // Planned two hours back: the oldest of the backlog.
                plan(
                    event("e3", "payment_failed", "inv_3", None),
                    vec![new_case("other", now - hours(2))],
                ),
            ],
            now,
        )
        .await
        .expect("ingest");
    let paused = out[1].cases_started[0].clone();
    let cases = |rows: &[(&str, CaseState, u64)]| -> BTreeMap<(String, CaseState), u64> {
        rows.iter()
            .map(|(workflow, state, n)| ((workflow.to_string(), *state), *n))
            .collect()
    };
    let gauges = store.gauges(now).await.expect("gauges");
    assert_eq!(
        gauges,
        Gauges {
            cases: cases(&[
                ("other", CaseState::Active, 1),
                ("pf", CaseState::Active, 2)
            ]),
            backlog: 3,
            oldest_planned: Some(now - hours(2)),
        }
    );
    // Nothing was due yet three hours earlier.
    let earlier = store.gauges(now - hours(3)).await.expect("gauges");
    assert_eq!((earlier.backlog, earlier.oldest_planned), (0, None));

    // Claimed (leased) deliveries are no backlog; a retry is, once due.
    let claimed = store
        .claim_due(now, &options("a"))
        .await
        .expect("claim")
        .claimed;
    assert_eq!(claimed.len(), 3);
    let gauges = store.gauges(now).await.expect("gauges");
    assert_eq!((gauges.backlog, gauges.oldest_planned), (0, None));
    let results = claimed
        .iter()
        .map(|c| {
            let completion = if c.workflow == "other" {
                Completion::Retry {
                    error: "429".into(),
                    at: now + hours(1),
                }
            } else {
                Completion::Sent { receipt: None }
            };
            (c.delivery_id.clone(), completion)
        })
        .collect();
    store.complete("a", results, now).await.expect("complete");
    let gauges = store.gauges(now + hours(1)).await.expect("gauges");
    assert_eq!(
        (gauges.backlog, gauges.oldest_planned),
        (1, Some(now + hours(1)))
    );

    // A paused case's deliveries wait without being backlog.
    store
        .case_action(&paused, CaseAction::Pause, now + hours(1))
        .await
        .expect("pause");
    let day_later = now + hours(25);
    let gauges = store.gauges(day_later).await.expect("gauges");
    assert_eq!(
        gauges,
        Gauges {
            cases: cases(&[
                ("other", CaseState::Active, 1),
                ("pf", CaseState::Active, 1),
                ("pf", CaseState::Paused, 1),
            ]),
            // The retry, the other case's sms (planned 22 h on) and the
            // first pf case's sms (24 h on).
            backlog: 3,
            oldest_planned: Some(now + hours(1)),
        }
    );

    // A recovered case's pending deliveries are skipped: no backlog.
    store
        .ingest(
            vec![plan(
                event("p3", "payment_succeeded", "inv_3", None),
                vec![],
            )],
            day_later,
        )
        .await
        .expect("ingest");
    let gauges = store.gauges(day_later).await.expect("gauges");
    assert_eq!(
        gauges,
        Gauges {
            cases: cases(&[
                ("other", CaseState::Recovered, 1),
                ("pf", CaseState::Active, 1),
                ("pf", CaseState::Paused, 1),
            ]),
            backlog: 1,
            oldest_planned: Some(now + hours(24)),
        }
    );
}

/// A batch whose events touch different invoices (applied set-wise by the
/// SQLite store) keeps every rule of the event-by-event path: duplicates,
/// exits, stale triggers, open cases, new cases with their deliveries.
async fn a_batch_of_independent_events_keeps_every_rule(store: Arc<dyn Store>) {
    let now = t("2026-01-05T09:00:00Z");
    let one = |e: Event, starts: Vec<NewCase>| {
        let store = store.clone();
        async move {
            store
                .ingest(vec![plan(e, starts)], now)
                .await
                .expect("ingest")
        }
    };
    one(
        event("f1", "payment_failed", "inv_1", None),
        vec![new_case("pf", now)],
    )
    .await;
    let open_2 = one(
        event("f2", "payment_failed", "inv_2", None),
        vec![new_case("pf", now)],
    )
    .await;
    one(
        event(
            "p3",
            "payment_succeeded",
            "inv_3",
            Some("2026-01-05T10:00:00Z"),
        ),
        vec![],
    )
    .await;
    let open_4 = one(
        event("f4", "payment_failed", "inv_4", None),
        vec![new_case("pf", now)],
    )
    .await;

    let out = store
        .ingest(
            vec![
                plan(
                    event("f1", "payment_failed", "inv_1", None),
                    vec![new_case("pf", now)],
                ),
                plan(event("p2", "payment_succeeded", "inv_2", None), vec![]),
                plan(
                    event(
                        "f3",
                        "payment_failed",
                        "inv_3",
                        Some("2026-01-05T09:30:00Z"),
                    ),
                    vec![new_case("pf", now)],
                ),
                plan(
                    event("f4b", "payment_failed", "inv_4", None),
                    vec![new_case("pf", now)],
                ),
                plan(
                    event("f5", "payment_failed", "inv_5", None),
                    vec![new_case("pf", now)],
                ),
            ],
            now,
        )
        .await
        .expect("ingest batch");
    let ids: Vec<&str> = out.iter().map(|o| o.event_id.as_str()).collect();
    assert_eq!(
        ids,
        ["f1", "p2", "f3", "f4b", "f5"],
        "outcomes in event order"
    );
    assert!(out[0].duplicate && out[0].cases_started.is_empty());
    assert_eq!(out[1].cases_recovered, open_2[0].cases_started);
    assert!(out[2].cases_started.is_empty());
    assert!(
        out[2].notes[0].contains("exit event 'p3' occurred later"),
        "{:?}",
        out[2].notes
    );
    assert!(out[3].cases_started.is_empty());
    assert!(
        out[3].notes[0].contains(&format!(
            "case '{}' is already open",
            open_4[0].cases_started[0]
        )),
        "{:?}",
        out[3].notes
    );
    assert_eq!(out[4].cases_started.len(), 1);
    assert!(out[4].notes.is_empty() && out[4].cases_recovered.is_empty());

    let recovered = store
        .get_case(&open_2[0].cases_started[0])
        .await
        .expect("get");
    assert_eq!(recovered.case.state, CaseState::Recovered);
    assert!(
        recovered
            .deliveries
            .iter()
            .all(|d| d.status == DeliveryStatus::Skipped)
    );
    let fresh = store.get_case(&out[4].cases_started[0]).await.expect("get");
    assert_eq!(fresh.case.state, CaseState::Active);
    assert_eq!(fresh.case.subject, "inv_5");
    assert_eq!(fresh.case.trigger_event.id, "f5");
    let planned: Vec<(u32, &str, DeliveryStatus)> = fresh
        .deliveries
        .iter()
        .map(|d| (d.step_index, d.channel.as_str(), d.status))
        .collect();
    assert_eq!(
        planned,
        [
            (0, "email", DeliveryStatus::Scheduled),
            (1, "sms", DeliveryStatus::Scheduled)
        ]
    );
    assert_eq!(
        fresh.deliveries[0].idempotency_key,
        idempotency_key(&fresh.case.id, 0, "email")
    );
    // What the batch stored is what the engine claims.
    let claimed = store
        .claim_due(now, &options("a"))
        .await
        .expect("claim")
        .claimed;
    assert!(claimed.iter().any(|c| c.case_id == fresh.case.id
        && c.trigger_event.id == "f5"
        && c.workflow_version == "pf-v1"));
    assert_eq!(
        store
            .workflow_source("pf-v1")
            .await
            .expect("source")
            .as_deref(),
        Some("name: pf")
    );
}

macro_rules! backend_tests {
    ($backend:ident = $fixture:ident: $($name:ident),+ $(,)?) => {
        mod $backend {
            $(
                #[tokio::test]
                async fn $name() {
                    let Some((_guard, store)) = super::$fixture().await else { return };
                    super::$name(store).await;
                }
            )+
        }
    };
}

backend_tests!(sqlite = sqlite_store:
    events_are_accepted_once_and_cases_are_unique,
    a_cap_counts_claims_in_flight,
    exit_events_recover_and_stale_triggers_start_nothing,
    claims_follow_due_times_leases_and_case_state,
    case_ids_are_found_by_prefix,
    cancel_skips_what_is_left,
    optouts_and_fallbacks,
    frequency_caps_hold_what_exceeds_them,
    inbound_reports_and_phone_lookup,
    stats_fold_cases_and_deliveries,
    gauges_count_cases_and_the_unclaimed_due_backlog,
    a_batch_of_independent_events_keeps_every_rule,
);

backend_tests!(postgres = postgres_store:
    events_are_accepted_once_and_cases_are_unique,
    a_cap_counts_claims_in_flight,
    exit_events_recover_and_stale_triggers_start_nothing,
    claims_follow_due_times_leases_and_case_state,
    a_delivery_that_keeps_crashing_is_parked,
    case_ids_are_found_by_prefix,
    cancel_skips_what_is_left,
    optouts_and_fallbacks,
    frequency_caps_hold_what_exceeds_them,
    inbound_reports_and_phone_lookup,
    stats_fold_cases_and_deliveries,
    renewed_leases_are_not_taken_over,
    gauges_count_cases_and_the_unclaimed_due_backlog,
    a_batch_of_independent_events_keeps_every_rule,
);

/// A claimed delivery whose stored row cannot be read (here its case's
/// trigger event is JSON but not an event) is failed with the reason instead
/// of sent, the other due deliveries are claimed as usual, and the case ends
/// once nothing is left to send. `corrupt` damages the row behind the
/// store's back, as a bad restore or a manual edit would.
async fn an_unreadable_delivery_fails_alone<F: std::future::Future<Output = ()>>(
    store: Arc<dyn Store>,
    corrupt: impl FnOnce(String) -> F,
) {
    let now = t("2026-01-05T09:00:00Z");
    let mut case_ids = Vec::new();
    for n in 1..=3 {
        let outcome = store
            .ingest(
                vec![plan(
                    event(
                        &format!("e{n}"),
                        "payment_failed",
                        &format!("inv_{n}"),
                        None,
                    ),
                    vec![new_case("pf", now)],
                )],
                now,
            )
            .await
            .expect("ingest");
        case_ids.push(outcome[0].cases_started[0].clone());
    }
    corrupt(case_ids[1].clone()).await;

    let claims = store.claim_due(now, &options("a")).await.expect("claim");
    let claimed_cases: Vec<&str> = claims.claimed.iter().map(|c| c.case_id.as_str()).collect();
    assert_eq!(claimed_cases, [&case_ids[0], &case_ids[2]]);
    assert_eq!(
        claims.given_up,
        ["email"],
        "the unreadable delivery's channel"
    );

    let again = store
        .claim_due(now, &options("b"))
        .await
        .expect("claim again")
        .claimed;
    assert!(
        again.is_empty(),
        "the unreadable delivery was handed out again"
    );
    let after_a_day = store
        .claim_due(now + chrono::Duration::days(1), &options("a"))
        .await
        .expect("claim the next day")
        .claimed;
    let next: Vec<&str> = after_a_day.iter().map(|c| c.case_id.as_str()).collect();
    assert_eq!(next, [&case_ids[0], &case_ids[2]]);
    // Its second step failed the same way; with nothing left to send, the
    // damaged case ended like any other.
    let counts = store.case_counts().await.expect("counts");
    assert_eq!(counts.get(&CaseState::Exhausted), Some(&1), "{counts:?}");
    assert_eq!(counts.get(&CaseState::Active), Some(&2), "{counts:?}");
}

#[tokio::test]
async fn sqlite_fails_an_unreadable_delivery_alone() {
    use sqlx::Connection;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("test.db");
    let store = Arc::new(
        crate::store::sqlite::SqliteStore::open(&path)
            .await
            .expect("open store"),
    );
    an_unreadable_delivery_fails_alone(store, |case_id| async move {
        let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
            .await
            .expect("connect");
        sqlx::query("UPDATE cases SET trigger_event = '{\"id\": 5}' WHERE id = ?")
            .bind(case_id)
            .execute(&mut conn)
            .await
            .expect("damage the row");
    })
    .await;
}

#[tokio::test]
async fn postgres_fails_an_unreadable_delivery_alone() {
    use sqlx::Connection;
    let Some(database) = PgDatabase::create().await else {
        return;
    };
    let store = Arc::new(
        crate::store::postgres::PostgresStore::connect(database.options())
            .await
            .expect("open store"),
    );
    let options = database.options();
    an_unreadable_delivery_fails_alone(store, |case_id| async move {
        let mut conn = sqlx::PgConnection::connect_with(&options)
            .await
            .expect("connect");
        sqlx::query("UPDATE cases SET trigger_event = '{\"id\": 5}' WHERE id = $1")
            .bind(case_id)
            .execute(&mut conn)
            .await
            .expect("damage the row");
    })
    .await;
}

/// A SQLite file has one daemon: a second store on the same file is refused
/// while the first is open, and accepted once it is closed.
#[tokio::test]
async fn a_sqlite_file_has_one_daemon() {
    use crate::store::sqlite::SqliteStore;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("test.db");
    let first = SqliteStore::open(&path).await.expect("open store");
    let second = SqliteStore::open(&path).await.err().expect("refused");
    assert!(matches!(&second, StoreError::InUse(p) if p == &path.display().to_string()));
    assert!(
        second.to_string().contains("in use by another dunningd"),
        "{second}"
    );
    drop(first);
    SqliteStore::open(&path)
        .await
        .expect("open once the first is closed");
}

/// On SQLite a claim is held in memory (`claim_book`): its row stays
/// pending, yet nothing reads it as due or claimable again; only its owner
/// renews or completes it, and its attempt is counted with its outcome.
/// A cancel while it is in flight does not hide what became of it.
#[tokio::test]
async fn sqlite_holds_claims_in_memory() {
    let Some((guard, store)) = sqlite_store().await else {
        return;
    };
    let now = t("2026-01-05T09:00:00Z");
    ingest_two_cases(&*store, now).await;
    let claimed = store
        .claim_due(now, &options("a"))
        .await
        .expect("claim")
        .claimed;
    assert_eq!(claimed.len(), 2);
    let (sent, cancelled) = (&claimed[0], &claimed[1]);
    let row = |detail: &CaseDetail, id: &str| {
        detail
            .deliveries
            .iter()
            .find(|d| d.id == id)
            .cloned()
            .expect("the delivery")
    };
    let detail = store.get_case(&sent.case_id).await.expect("get");
    let pending = row(&detail, &sent.delivery_id);
    assert_eq!(
        (pending.status, pending.attempts),
        (DeliveryStatus::Scheduled, 0)
    );
    assert!(
        store
            .claim_due(now, &options("b"))
            .await
            .expect("claim")
            .claimed
            .is_empty(),
        "a claim held in memory is nobody else's"
    );
    // The next due is each case's second step, a day later.
    assert_eq!(
        store.next_due().await.expect("next"),
        Some(now + chrono::Duration::hours(24))
    );
    assert_eq!(store.gauges(now).await.expect("gauges").backlog, 0);
    let ids = vec![sent.delivery_id.clone(), cancelled.delivery_id.clone()];
    let renewed = store
        .renew_leases("a", &ids, Duration::from_secs(60))
        .await
        .expect("renew");
    assert_eq!(renewed, ids);
    assert!(
        store
            .renew_leases("b", &ids, Duration::from_secs(60))
            .await
            .expect("renew")
            .is_empty()
    );

    store
        .case_action(&cancelled.case_id, CaseAction::Cancel, now)
        .await
        .expect("cancel");
    let outcomes = |receipt: &str| {
        ids.iter()
            .map(|id| {
                (
                    id.clone(),
                    Completion::Sent {
                        receipt: Some(receipt.into()),
                    },
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(
        store
            .complete("b", outcomes("r-b"), now)
            .await
            .expect("complete"),
        ids,
        "only the owner records"
    );
    assert!(
        store
            .complete("a", outcomes("r-a"), now)
            .await
            .expect("complete")
            .is_empty()
    );
    for claim in &claimed {
        let detail = store.get_case(&claim.case_id).await.expect("get");
        let done = row(&detail, &claim.delivery_id);
        assert_eq!(
            (done.status, done.attempts, done.receipt.as_deref()),
            (DeliveryStatus::Sent, 1, Some("r-a")),
            "{}",
            claim.delivery_id
        );
    }
    let detail = store.get_case(&cancelled.case_id).await.expect("get");
    assert_eq!(detail.case.state, CaseState::Cancelled);
    // Every claim of the batch has its outcome: its mark goes with the
    // next claim's write, or at a clean stop.
    assert_eq!(claim_marks(&*guard).await, 1);
    assert_eq!(store.release_leases("a").await.expect("release"), 0);
    assert_eq!(claim_marks(&*guard).await, 0);
}

/// The claim marks left in a closed test store's file.
async fn claim_marks(dir: &dyn std::any::Any) -> i64 {
    let dir = dir
        .downcast_ref::<tempfile::TempDir>()
        .expect("a SQLite fixture's folder");
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(dir.path().join("test.db"))
        .read_only(true);
    let pool = sqlx::SqlitePool::connect_with(options).await.expect("read");
    sqlx::query_scalar("SELECT COUNT(*) FROM claim_marks")
        .fetch_one(&pool)
        .await
        .expect("count")
}

/// A claim held in memory that a crash interrupted counts its attempt at
/// the next start (from its batch's mark), so a delivery that keeps
/// crashing the daemon is parked after `max_claims`, as a leased one is;
/// one given back at a clean stop counts its attempt too.
#[tokio::test]
async fn sqlite_counts_claims_a_crash_interrupted() {
    use crate::store::sqlite::SqliteStore;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("test.db");
    let now = t("2026-01-05T09:00:00Z");
    let store = SqliteStore::open(&path).await.expect("open");
    store
        .ingest(
            vec![plan(
                event("e1", "payment_failed", "inv_1", None),
                vec![new_case("pf", now)],
            )],
            now,
        )
        .await
        .expect("ingest");
    // A clean stop gives the claim back, its attempt counted.
    let claimed = store.claim_due(now, &options("a")).await.expect("claim");
    assert_eq!(claimed.claimed[0].attempt, 1);
    assert_eq!(store.release_leases("a").await.expect("release"), 1);
    let claimed = store.claim_due(now, &options("a")).await.expect("claim");
    assert_eq!(claimed.claimed[0].attempt, 2);
    drop(store);
    // Each start after a crash counts the claims the dead process held.
    let store = SqliteStore::open(&path).await.expect("reopen");
    let claimed = store.claim_due(now, &options("b")).await.expect("claim");
    assert_eq!(claimed.claimed[0].attempt, 3);
    drop(store);
    let store = SqliteStore::open(&path).await.expect("reopen");
    let fourth = store.claim_due(now, &options("c")).await.expect("claim");
    assert_parked(&store, &fourth).await;
}

/// A database a newer dunningd migrated is refused with a message that says
/// so, and left as it was.
#[tokio::test]
async fn sqlite_refuses_a_newer_schema() {
    use crate::store::sqlite::SqliteStore;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("test.db");
    drop(SqliteStore::open(&path).await.expect("open store"));
    {
        use sqlx::Connection;
        let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
            .await
            .expect("connect");
        // As a newer dunningd would have recorded its migration.
        sqlx::query(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
             VALUES (9999, 'from a newer dunningd', TRUE, x'00', 0)",
        )
        .execute(&mut conn)
        .await
        .expect("record a newer migration");
    }
    let error = SqliteStore::open(&path).await.err().expect("refused");
    assert_newer_schema_refused(&error);
}

#[tokio::test]
async fn postgres_refuses_a_newer_schema() {
    use crate::store::postgres::PostgresStore;
    let Some(database) = PgDatabase::create().await else {
        return;
    };
    let options = database.options();
    drop(
        PostgresStore::connect(options.clone())
            .await
            .expect("open store"),
    );
    database.record_newer_migration().await;
    let error = PostgresStore::connect(options)
        .await
        .err()
        .expect("refused");
    assert_newer_schema_refused(&error);
}

fn assert_newer_schema_refused(error: &StoreError) {
    assert!(
        matches!(error, StoreError::SchemaTooNew { found: 9999, known } if *known < 9999),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(message.contains("version 9999"), "{message}");
    assert!(message.contains("newer than this dunningd"), "{message}");
}

/// Work one daemon creates is announced to the others at once: a new case,
/// released leases and a resumed case each wake a listener on another
/// connection pool, as a second daemon would have.
#[tokio::test]
async fn postgres_announces_new_work_to_other_daemons() {
    use crate::store::postgres::PostgresStore;
    let Some(database) = PgDatabase::create().await else {
        return;
    };
    let writer = PostgresStore::connect(database.options())
        .await
        .expect("open store");
    let other = PostgresStore::connect(database.options())
        .await
        .expect("open store");
    let (tx, mut woken) = tokio::sync::mpsc::unbounded_channel();
    other.listen_for_work(Box::new(move || {
        let _ = tx.send(());
    }));
    let mut wait = async |what: &str| {
        tokio::time::timeout(Duration::from_secs(10), woken.recv())
            .await
            .unwrap_or_else(|_| panic!("no wake-up for {what}"))
            .expect("listener alive");
    };
    // The listener wakes once when it starts listening (work may predate it).
    wait("listening").await;

    let now = t("2026-01-05T09:00:00Z");
    let started = writer
        .ingest(
            vec![plan(
                event("e1", "payment_failed", "inv_1", None),
                vec![new_case("pf", now)],
            )],
            now,
        )
        .await
        .expect("ingest");
    wait("a new case").await;

    let claimed = writer
        .claim_due(now, &options("dead-daemon"))
        .await
        .expect("claim")
        .claimed;
    assert_eq!(claimed.len(), 1);
    assert_eq!(
        writer.release_leases("dead-daemon").await.expect("release"),
        1
    );
    wait("released leases").await;

    let case_id = &started[0].cases_started[0];
    writer
        .case_action(case_id, CaseAction::Pause, now)
        .await
        .expect("pause");
    writer
        .case_action(case_id, CaseAction::Resume, now)
        .await
        .expect("resume");
    wait("a resumed case").await;
    assert!(
        woken.try_recv().is_err(),
        "pausing announces nothing: it creates no work"
    );
}

/// Production databases want TLS: `sslmode=require` in the URL works (the
/// build carries rustls), and the connection is encrypted.
#[tokio::test]
async fn postgres_connects_over_tls_when_the_url_asks() {
    use sqlx::Connection;
    let Some(database) = PgDatabase::create().await else {
        return;
    };
    let mut plain = sqlx::PgConnection::connect_with(&database.options())
        .await
        .expect("connect");
    let server_has_tls: bool = sqlx::query_scalar("SELECT current_setting('ssl') = 'on'")
        .fetch_one(&mut plain)
        .await
        .expect("ssl setting");
    if !server_has_tls {
        eprintln!("TLS test not run: the PostgreSQL server has ssl = off");
        return;
    }
    let url = format!("{}?sslmode=require", database.url());
    let mut conn = sqlx::PgConnection::connect(&url)
        .await
        .expect("connect over TLS");
    let encrypted: bool =
        sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_one(&mut conn)
            .await
            .expect("pg_stat_ssl");
    assert!(encrypted, "the connection is encrypted");
    crate::store::postgres::PostgresStore::open(&url)
        .await
        .expect("the store opens over TLS");
}
