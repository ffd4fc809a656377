//! `kill -9` at random moments of a busy drain: nothing is lost, and what
//! reaches the plugin twice is at most what the kill caught between the
//! start of a dispatch and its outcome's commit (the channel's
//! `concurrency` × `engine::scheduler::IN_FLIGHT_PER_SLOT`), never a whole
//! claimed batch sent and unrecorded.
//!
//! The kill moments are drawn from a seed printed by the test; set
//! `DUNNINGD_TEST_SEED` to repeat a run.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use dunningd::engine::scheduler::IN_FLIGHT_PER_SLOT;
use dunningd_e2e::daemon::{Backend, Setup, TestDaemon, read_jsonl};
use dunningd_e2e::fixtures::numbered_event;
use dunningd_e2e::on_both_backends;
use rand::{Rng, SeedableRng};

on_both_backends!(kills_during_a_drain_lose_nothing_and_resend_only_what_was_in_flight);

/// One step a day after the trigger, on a channel of the `log` plugin.
const DRAIN: &str = r#"
name: drain
trigger:
  event: payment_failed
steps:
  - name: reminder
    after: 1d
    send:
      - { channel: sink, template: reminder }
templates:
  reminder:
    text: "Hi {{ customer.name }}, invoice {{ subject }} is still unpaid."
"#;

const CASES: usize = 4_000;
/// What a crash can leave sent and unrecorded on the `sink` channel (its
/// default `concurrency` of 8).
const IN_FLIGHT: usize = 8 * IN_FLIGHT_PER_SLOT;
const KILLS: usize = 3;

async fn kills_during_a_drain_lose_nothing_and_resend_only_what_was_in_flight(backend: Backend) {
    let seed = std::env::var("DUNNINGD_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random());
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    // Where the kills fall: shares of the drain, in order.
    let mut shares: Vec<f64> = (0..KILLS).map(|_| rng.random_range(0.05..0.9)).collect();
    shares.sort_by(f64::total_cmp);
    eprintln!(
        "kill -9 test on {backend:?}: DUNNINGD_TEST_SEED={seed}, kills at {shares:.2?} of the drain"
    );

    // On PostgreSQL a dead process's claims are taken over once their lease
    // runs out: a short one keeps the test short.
    // (Every channel's timeout must be shorter than the lease.)
    let mut setup = Setup::default().workflow("drain.yaml", DRAIN).on(&backend);
    for channel in ["sink", "email", "sms", "in_app", "webhook", "billing"] {
        setup = setup.channel(
            channel,
            "{ plugin: log, timeout: 1s, settings: { path: '{dir}/deliveries.jsonl' } }",
        );
    }
    setup.extra_config.push_str("scheduler: { lease: 4s }\n");
    let mut daemon = TestDaemon::start(setup).await;
    let events: Vec<String> = (0..CASES)
        .map(|i| numbered_event("k", "payment_failed", i))
        .collect();
    for batch in events.chunks(500) {
        let results = daemon.send_events(batch.to_vec()).await;
        assert!(results.iter().all(|r| r.cases_started.len() == 1));
    }
    daemon.move_clock("1d").await;

    let sink = daemon.path("deliveries.jsonl");
    // The sink's length at each kill: where each restart's hand-offs begin.
    let mut kills = Vec::new();
    for share in shares {
        let target = (CASES as f64 * share) as usize;
        let deadline = Instant::now() + Duration::from_secs(60);
        while read_jsonl(&sink).len() < target {
            assert!(
                Instant::now() < deadline,
                "fewer than {target} of {CASES} hand-offs after 60s:\n{}",
                daemon.log()
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        daemon.kill9();
        kills.push(read_jsonl(&sink).len());
        daemon.spawn().await;
    }

    // The drain finishes after the last restart.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let exhausted = daemon.cases_in("exhausted").await.len();
        if exhausted == CASES {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{exhausted} of {CASES} cases finished 120s after the last restart:\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let lines = read_jsonl(&sink);
    // Each hand-off of a delivery after its first is charged to the first
    // kill after the hand-off before it; without a kill in between it would
    // be a send repeated by a live daemon.
    let mut last_seen: BTreeMap<&str, usize> = BTreeMap::new();
    let mut per_kill = vec![0usize; kills.len()];
    for (at, line) in lines.iter().enumerate() {
        let id = line["delivery_id"].as_str().expect("delivery_id");
        if let Some(before) = last_seen.insert(id, at) {
            let kill = kills
                .iter()
                .position(|&offset| offset > before && offset <= at)
                .unwrap_or_else(|| {
                    panic!("{id} was handed over at lines {before} and {at} with no kill between")
                });
            per_kill[kill] += 1;
        }
    }
    assert_eq!(last_seen.len(), CASES, "every delivery reached the plugin");
    for (kill, sent_again) in per_kill.iter().enumerate() {
        assert!(
            *sent_again <= IN_FLIGHT,
            "kill {} (after {} hand-offs) sent {sent_again} deliveries again, more than the {IN_FLIGHT} a crash can leave between dispatch and commit",
            kill + 1,
            kills[kill]
        );
    }
    eprintln!(
        "kill -9 test on {backend:?}: {CASES} deliveries, nothing lost; sent again per kill: {per_kill:?}"
    );
}
