//! PostgreSQL as operators run it: several daemons sharing one database, one
//! of them killed mid-run, and the database going away for a while.
//!
//! Every test here needs `DUNNINGD_TEST_POSTGRES` (`.ci/run` sets it); without
//! it each says how to enable it and returns.

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dunningd::proto;
use dunningd_e2e::daemon::{Backend, PgDatabase, Setup, TestDaemon};
use dunningd_e2e::fixtures::{WORKFLOW, event, numbered_event};
use dunningd_e2e::peers::TcpProxy;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// Channels on the log plugin with a short timeout, and a lease short enough
/// that a killed daemon's claims pass to the others within seconds. (A batch
/// that takes longer than one lease keeps it by renewal; see
/// `a_batch_that_outlasts_its_lease_is_not_sent_twice`.)
fn setup(backend: &Backend) -> Setup {
    let mut setup = Setup::default()
        .workflow("payment-failed.yaml", WORKFLOW)
        .on(backend);
    for yaml in setup.channels.values_mut() {
        *yaml = "{ plugin: log, timeout: 1s, settings: { path: '{dir}/deliveries.jsonl' } }".into();
    }
    setup.extra_config = "scheduler:\n  lease: 4s\n".into();
    setup
}

/// Every delivery the given daemons' log plugins recorded, by idempotency
/// key: how many times, and by which daemons.
fn sent_by_key(daemons: &[&TestDaemon]) -> BTreeMap<String, Vec<usize>> {
    let mut sent: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, daemon) in daemons.iter().enumerate() {
        for delivery in daemon.deliveries() {
            let key = delivery["idempotency_key"]
                .as_str()
                .expect("idempotency key")
                .to_string();
            sent.entry(key).or_default().push(i);
        }
    }
    sent
}

/// Waits until the daemons have sent `expected` distinct deliveries.
async fn wait_for_sent(daemons: &[&TestDaemon], expected: usize, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let sent = sent_by_key(daemons).len();
        if sent >= expected {
            assert_eq!(sent, expected, "{what}: more deliveries than due");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {sent} of {expected} deliveries sent after 120s:\n{}",
            daemons
                .iter()
                .map(|d| d.log())
                .collect::<Vec<_>>()
                .join("\n---\n")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const CASES: usize = 2_000;

#[tokio::test]
async fn three_daemons_share_the_work_and_survive_one_killed_mid_run() {
    let Some(backend) = Backend::postgres().await else {
        return;
    };
    let mut daemons = Vec::new();
    for i in 0..3 {
        let mut setup = setup(&backend);
        if i == 1 {
            // The daemon to be killed: its SMS provider never answers, so it
            // dies holding claims (after its 3s timeout it would have given
            // up on them itself).
            setup = setup.channel(
                "sms",
                "{ plugin: testkit, timeout: 3s, settings: { behaviour: hang, record: '{dir}/sms-calls.jsonl' } }",
            );
        }
        daemons.push(TestDaemon::start(setup).await);
    }

    // Events arrive at every daemon, in batches; every tenth batch also goes
    // to a second daemon at the same time (a client retrying elsewhere).
    let batches: Vec<Vec<String>> = (0..CASES)
        .collect::<Vec<_>>()
        .chunks(100)
        .map(|chunk| {
            chunk
                .iter()
                .map(|i| numbered_event("f", "payment_failed", *i))
                .collect()
        })
        .collect();
    let mut sends = tokio::task::JoinSet::new();
    for (n, batch) in batches.into_iter().enumerate() {
        let mut targets = vec![n % 3];
        if n % 10 == 0 {
            targets.push((n + 1) % 3);
        }
        for target in targets {
            let client = daemons[target].client().await;
            let batch = batch.clone();
            sends.spawn(async move {
                let mut client = client;
                client
                    .send_events(proto::SendEventsRequest { events: batch })
                    .await
                    .expect("send events")
                    .into_inner()
                    .results
            });
        }
    }
    let mut started = 0;
    let mut duplicates = 0;
    while let Some(results) = sends.join_next().await {
        for result in results.expect("send task") {
            started += result.cases_started.len();
            duplicates += usize::from(result.duplicate);
        }
    }
    assert_eq!(
        started, CASES,
        "one case per event, however many daemons got it"
    );
    assert_eq!(duplicates, 2 * 100, "two batches of 100 sent twice");

    // First step: email + in-app for every case, shared among the daemons.
    let all: Vec<&TestDaemon> = daemons.iter().collect();
    wait_for_sent(&all, 2 * CASES, "first step").await;
    let sent = sent_by_key(&all);
    assert!(
        sent.values().all(|by| by.len() == 1),
        "without failures each delivery goes out exactly once"
    );
    let per_daemon: Vec<usize> = (0..3)
        .map(|i| sent.values().filter(|by| by[0] == i).count())
        .collect();
    assert!(
        per_daemon.iter().all(|n| *n > 0),
        "every daemon dispatched some of the work: {per_daemon:?}"
    );
    // A plugin's record can come a moment before its outcome is committed:
    // let every first-step delivery leave `sending` before looking for what
    // the second daemon claims on day 3.
    for daemon in &daemons {
        daemon.settle().await;
    }

    // Every tenth customer pays (told to the third daemon).
    let paid: Vec<String> = (0..CASES)
        .step_by(10)
        .map(|i| numbered_event("p", "payment_succeeded", i))
        .collect();
    let recovered: usize = daemons[2]
        .send_events(paid)
        .await
        .iter()
        .map(|r| r.cases_recovered.len())
        .sum();
    assert_eq!(recovered, CASES / 10);

    // Day 3: the reminders fall due first on the second daemon's clock; it
    // claims some and is killed while sending them.
    daemons[1].move_clock("3d").await;
    let Backend::Postgres(database) = &backend else {
        unreachable!("a PostgreSQL backend")
    };
    let held = keys_being_sent(database).await;
    daemons[1].kill9();
    for daemon in [&daemons[0], &daemons[2]] {
        daemon.move_clock("3d").await;
    }
    let all: Vec<&TestDaemon> = daemons.iter().collect();
    let unpaid = CASES - CASES / 10;
    wait_for_sent(&all, 2 * CASES + unpaid, "reminders after the kill").await;
    // What the killed daemon held when it died was sent by the others once
    // its leases expired.
    let sent = sent_by_key(&all);
    for key in &held {
        let by = sent.get(key).map(Vec::as_slice).unwrap_or_default();
        assert!(
            by.len() == 1 && by[0] != 1,
            "{key}, claimed by the killed daemon, sent by {by:?}"
        );
    }

    // Day 14: the survivors finish the sequence.
    for daemon in [&daemons[0], &daemons[2]] {
        daemon.move_clock("11d").await;
    }
    wait_for_sent(&all, 2 * CASES + 2 * unpaid, "final step").await;

    let sent = sent_by_key(&all);
    let twice: Vec<(&String, &Vec<usize>)> = sent.iter().filter(|(_, by)| by.len() > 1).collect();
    assert!(twice.is_empty(), "sent more than once: {twice:?}");
    for (i, daemon) in daemons.iter().enumerate() {
        assert!(
            daemon.log().matches("panicked").count() == 0,
            "daemon {i} panicked:\n{}",
            daemon.log()
        );
    }
    // The plugins' records can come a moment before the outcomes are committed.
    daemons[0].settle().await;
    daemons[2].settle().await;
    assert_eq!(daemons[0].cases_in("exhausted").await.len(), unpaid);
    assert_eq!(daemons[0].cases_in("recovered").await.len(), CASES / 10);
    assert!(daemons[2].cases_in("active").await.is_empty());
    eprintln!(
        "three daemons: {} deliveries, {} taken over from the killed daemon, first step split {per_daemon:?}",
        sent.len(),
        held.len()
    );
}

/// A daemon that claims more than it can send within one lease (a slow
/// provider, one connection) keeps renewing the lease while the claims wait
/// for the channel, so the other daemon never takes over and sends the same
/// messages again, and the claiming daemon never has to hand any back.
#[tokio::test]
async fn a_batch_that_outlasts_its_lease_is_not_sent_twice() {
    let Some(backend) = Backend::postgres().await else {
        return;
    };
    const SLOW: &str = r#"
name: slow-provider
trigger: { event: payment_failed }
exit_on: [payment_succeeded]
steps:
  - name: notice
    after: 0s
    send:
      - { channel: email, template: notice }
templates:
  notice: { subject: "Payment failed", text: "Please update your card." }
"#;
    const CASES: usize = 6;
    let mut daemons = Vec::new();
    for _ in 0..2 {
        let mut setup = setup(&backend);
        setup.workflows.clear();
        let setup = setup
            .workflow("slow.yaml", SLOW)
            .channel(
                "email",
                "{ plugin: testkit, timeout: 1s, concurrency: 1, settings: { delay_ms: 500, record: '{dir}/calls.jsonl' } }",
            );
        // Six sends of 500 ms one at a time take 3 s: one and a half leases.
        let setup = Setup {
            extra_config: "scheduler:\n  lease: 2s\n".into(),
            ..setup
        };
        daemons.push(TestDaemon::start(setup).await);
    }
    let events = (0..CASES)
        .map(|i| numbered_event("e", "payment_failed", i))
        .collect();
    let started: usize = daemons[0]
        .send_events(events)
        .await
        .iter()
        .map(|r| r.cases_started.len())
        .sum();
    assert_eq!(started, CASES);

    let calls = || {
        let mut by_key: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (i, daemon) in daemons.iter().enumerate() {
            for call in dunningd_e2e::daemon::read_jsonl(&daemon.path("calls.jsonl")) {
                let key = call["idempotency_key"].as_str().unwrap_or_default();
                by_key.entry(key.to_string()).or_default().push(i);
            }
        }
        by_key
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while calls().len() < CASES {
        assert!(
            Instant::now() < deadline,
            "{} of {CASES} sent after 60s:\n{}\n---\n{}",
            calls().len(),
            daemons[0].log(),
            daemons[1].log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for daemon in &daemons {
        daemon.settle().await;
    }
    assert_eq!(daemons[1].cases_in("exhausted").await.len(), CASES);
    let calls = calls();
    let twice: Vec<_> = calls.iter().filter(|(_, by)| by.len() > 1).collect();
    assert!(
        twice.is_empty(),
        "sent more than once (by daemon): {twice:?}\n{}\n---\n{}",
        daemons[0].log(),
        daemons[1].log()
    );
    let per_daemon: Vec<usize> = (0..2)
        .map(|i| calls.values().filter(|by| by[0] == i).count())
        .collect();
    assert!(
        per_daemon.contains(&CASES),
        "one daemon claimed the batch and sent all of it: {per_daemon:?}"
    );
    for daemon in &daemons {
        assert!(
            !daemon.log().contains("handing it back"),
            "a renewed lease leaves room for every call:\n{}",
            daemon.log()
        );
    }
}

/// Waits until some deliveries are claimed and being sent, and returns their
/// idempotency keys (read from the shared database, as an operator would).
async fn keys_being_sent(database: &PgDatabase) -> Vec<String> {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect_with(&database.options())
        .await
        .expect("connect to the test database");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let keys: Vec<String> = sqlx::query_scalar(
            "SELECT idempotency_key FROM deliveries WHERE status = 'sending' ORDER BY idempotency_key",
        )
        .fetch_all(&mut conn)
        .await
        .expect("query deliveries");
        if !keys.is_empty() {
            return keys;
        }
        assert!(Instant::now() < deadline, "nothing claimed in 20s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn health(daemon: &TestDaemon) -> Option<ServingStatus> {
    let mut client = HealthClient::new(daemon.channel().await);
    let response = client
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .ok()?;
    ServingStatus::try_from(response.into_inner().status).ok()
}

async fn wait_for_health(daemon: &TestDaemon, wanted: ServingStatus) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while health(daemon).await != Some(wanted) {
        assert!(
            Instant::now() < deadline,
            "health never became {wanted:?}:\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn losing_the_database_makes_the_daemon_unhealthy_until_it_recovers_by_itself() {
    let Some(database) = PgDatabase::create().await else {
        return;
    };
    let database = Arc::new(database);
    let options = database.options();
    let upstream: SocketAddr = (options.get_host(), options.get_port())
        .to_socket_addrs()
        .expect("resolve the PostgreSQL host")
        .next()
        .expect("an address for the PostgreSQL host");
    let proxy = TcpProxy::start(upstream).await;
    let mut url = url::Url::parse(database.url()).expect("database URL");
    url.set_host(Some("127.0.0.1")).expect("set host");
    url.set_port(Some(proxy.addr.port())).expect("set port");
    // The daemon reaches PostgreSQL only through the proxy.
    let mut setup = setup(&Backend::Sqlite);
    setup.extra_config.push_str(&format!("database: {url}\n"));
    let daemon = TestDaemon::start(setup).await;

    let events = |prefix: &str| -> Vec<String> {
        (0..10)
            .map(|i| {
                event(
                    &format!("{prefix}{i}"),
                    "payment_failed",
                    &format!("cus_{prefix}{i}"),
                    &format!("inv_{prefix}{i}"),
                    1000,
                )
            })
            .collect()
    };
    daemon.send_events(events("a")).await;
    wait_for_sent(&[&daemon], 20, "before the outage").await;
    assert_eq!(health(&daemon).await, Some(ServingStatus::Serving));

    proxy.cut().await;
    wait_for_health(&daemon, ServingStatus::NotServing).await;
    let refused = daemon
        .client()
        .await
        .send_events(proto::SendEventsRequest {
            events: events("b"),
        })
        .await
        .expect_err("no event is accepted while the database is away");
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    // Time passes meanwhile: the reminders fall due during the outage.
    daemon.move_clock("3d").await;

    proxy.restore().await;
    wait_for_health(&daemon, ServingStatus::Serving).await;
    wait_for_sent(&[&daemon], 30, "reminders due during the outage").await;
    // The refused events can be sent again, and start their cases now.
    let results = daemon.send_events(events("b")).await;
    assert!(
        results.iter().all(|r| r.cases_started.len() == 1),
        "{results:?}"
    );
    wait_for_sent(&[&daemon], 50, "after the outage").await;
    let sent = sent_by_key(&[&daemon]);
    let twice: Vec<_> = sent.iter().filter(|(_, by)| by.len() > 1).collect();
    assert!(twice.is_empty(), "sent twice: {twice:?}\n{}", daemon.log());
    let log = daemon.log();
    assert!(log.contains("database unreachable"), "{log}");
    assert!(log.contains("database reachable again"), "{log}");
}

/// Runs `dunningd` on a configuration to completion (for start-up failures).
fn run_to_exit(config: &std::path::Path) -> std::process::Output {
    std::process::Command::new(dunningd_e2e::binary("dunningd"))
        .arg("--config")
        .arg(config)
        .current_dir(config.parent().expect("config folder"))
        .output()
        .expect("run dunningd")
}

#[tokio::test]
async fn a_database_it_cannot_use_stops_the_start_and_says_why() {
    let Some(backend) = Backend::postgres().await else {
        return;
    };
    let mut daemon = TestDaemon::start(setup(&backend)).await;
    assert!(daemon.terminate().await.success());

    // A newer dunningd migrated the database meanwhile.
    let Backend::Postgres(database) = &backend else {
        unreachable!("a PostgreSQL backend")
    };
    database.record_newer_migration().await;
    let out = run_to_exit(&daemon.config);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("schema is at version 9999, newer than this dunningd knows"),
        "{stderr}"
    );

    // Nothing listens where the configuration points.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let config = std::fs::read_to_string(&daemon.config)
        .expect("config")
        .replace(
            database.url(),
            &format!("postgres://dunningd:s3cret@127.0.0.1:{closed}/dunning"),
        );
    std::fs::write(&daemon.config, config).expect("write config");
    let out = run_to_exit(&daemon.config);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "cannot open database 'postgres://dunningd:***@127.0.0.1:{closed}/dunning'"
        )) && stderr.contains("Connection refused"),
        "{stderr}"
    );
    assert!(!stderr.contains("s3cret"), "the password stays hidden");
}

/// A case runs the workflow version it started with, on whichever daemon
/// sends it: here on a daemon whose folder holds a newer version, and on one
/// that has no such workflow at all.
#[tokio::test]
async fn a_case_runs_its_own_version_on_daemons_that_never_loaded_it() {
    let Some(backend) = Backend::postgres().await else {
        return;
    };
    let starter = TestDaemon::start(setup(&backend)).await;
    let mut newer = setup(&backend);
    newer.workflows.insert(
        "payment-failed.yaml".into(),
        WORKFLOW.replace("is still due.", "is still due (version two)."),
    );
    let newer = TestDaemon::start(newer).await;
    let mut empty = setup(&backend);
    empty.workflows.clear();
    let empty = TestDaemon::start(empty).await;

    // Started on the first daemon, whose clock then stands still.
    let results = starter
        .send_events(vec![event("e1", "payment_failed", "cus_1", "inv_1", 4900)])
        .await;
    assert_eq!(results[0].cases_started.len(), 1, "{results:?}");
    let all = [&starter, &newer, &empty];
    wait_for_sent(&all, 2, "first step").await;

    // Day 3 comes only for the daemon with the newer version…
    newer.move_clock("3d").await;
    wait_for_sent(&all, 3, "reminder").await;
    let reminder = newer
        .deliveries()
        .into_iter()
        .find(|d| d["channel"] == "sms")
        .expect("the newer daemon sent the reminder");
    assert_eq!(
        reminder["message"]["body"],
        "Name of cus_1, your payment for inv_1 is still due."
    );
    // …and day 14 only for the one without the workflow.
    empty.move_clock("14d").await;
    wait_for_sent(&all, 4, "final step").await;
    assert!(
        empty.deliveries().iter().any(|d| d["channel"] == "webhook"),
        "the daemon without the workflow sent the last step"
    );
    // The plugin's record can come a moment before the outcome is committed.
    empty.settle().await;
    assert_eq!(empty.cases_in("exhausted").await.len(), 1);
}
