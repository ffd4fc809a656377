//! The store's behaviour, written once against `dyn Store` so every backend
//! runs the same checks.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::*;
use crate::model::{CaseState, Customer, DeliveryStatus, Event};

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

fn options(owner: &str) -> ClaimOptions {
    ClaimOptions {
        owner: owner.into(),
        lease: Duration::from_secs(60),
        limit: 100,
        max_claims: 3,
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

/// The environment variable naming a PostgreSQL server (and a role that may
/// create databases) for the PostgreSQL suite.
const POSTGRES_ENV: &str = "DUNNINGD_TEST_POSTGRES";

/// Drops the test's own database when the test ends.
struct PgDatabase {
    admin: sqlx::postgres::PgConnectOptions,
    name: String,
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let (admin, name) = (self.admin.clone(), self.name.clone());
        // Drop cannot await; a small runtime on its own thread can.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                use sqlx::Connection;
                if let Ok(mut conn) = sqlx::PgConnection::connect_with(&admin).await {
                    let drop = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
                    let _ = sqlx::query(sqlx::AssertSqlSafe(drop))
                        .execute(&mut conn)
                        .await;
                }
            });
        })
        .join();
    }
}

/// A fresh database per test on the server `DUNNINGD_TEST_POSTGRES` names;
/// `None` (the suite says how to enable it) where it is not set.
async fn postgres_store() -> Fixture {
    use std::str::FromStr;

    use sqlx::Connection;
    let Ok(url) = std::env::var(POSTGRES_ENV) else {
        assert!(
            std::env::var_os("CI").is_none(),
            "{POSTGRES_ENV} must be set in CI (.ci/run sets it)"
        );
        eprintln!(
            "PostgreSQL store tests not run: set {POSTGRES_ENV}=postgres://USER@HOST:5432/DB (a role that may create databases)"
        );
        return None;
    };
    let admin = sqlx::postgres::PgConnectOptions::from_str(&url).expect("a PostgreSQL URL");
    let name = format!("dunningd_test_{}", uuid::Uuid::new_v4().simple());
    let mut conn = sqlx::PgConnection::connect_with(&admin)
        .await
        .expect("connect to PostgreSQL");
    let create = format!("CREATE DATABASE \"{name}\"");
    sqlx::query(sqlx::AssertSqlSafe(create))
        .execute(&mut conn)
        .await
        .expect("create database");
    let guard = PgDatabase {
        admin: admin.clone(),
        name: name.clone(),
    };
    let store = crate::store::postgres::PostgresStore::connect(admin.database(&name))
        .await
        .expect("open store");
    Some((Box::new(guard), Arc::new(store)))
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

    let claimed = store.claim_due(now, &options("a")).await.expect("claim");
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
            .is_empty(),
        "shifted by 28h"
    );
    let shifted = now + chrono::Duration::hours(24 + 28);
    assert_eq!(store.next_due().await.expect("next"), Some(shifted));
    let claimed = store
        .claim_due(shifted, &options("a"))
        .await
        .expect("claim");
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
        .expect("claim");
    assert_eq!(claimed[0].attempt, 2);
    store
        .complete(
            "a",
            vec![(
                id,
                Completion::Failed {
                    error: "invalid number".into(),
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
    let zero_lease = ClaimOptions {
        lease: Duration::ZERO,
        ..options("a")
    };
    // Each claim's lease expires at once, as if the process died mid-send.
    for attempt in 1..=3 {
        let claimed = store.claim_due(now, &zero_lease).await.expect("claim");
        assert_eq!(claimed.len(), 1, "claim {attempt}");
        assert_eq!(claimed[0].attempt, attempt);
    }
    assert!(
        store
            .claim_due(now, &zero_lease)
            .await
            .expect("claim")
            .is_empty()
    );
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
            .contains("gave up after 3 claims")
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
    exit_events_recover_and_stale_triggers_start_nothing,
    claims_follow_due_times_leases_and_case_state,
    a_delivery_that_keeps_crashing_is_parked,
    cancel_skips_what_is_left,
);

backend_tests!(postgres = postgres_store:
    events_are_accepted_once_and_cases_are_unique,
    exit_events_recover_and_stale_triggers_start_nothing,
    claims_follow_due_times_leases_and_case_state,
    a_delivery_that_keeps_crashing_is_parked,
    cancel_skips_what_is_left,
);
