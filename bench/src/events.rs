//! Billing events and the callers that send them over the admin API.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use dunningd::proto::SendEventsRequest;
use tokio::task::JoinSet;

use crate::daemon::Daemon;

/// A `payment_failed` event for its own customer and invoice, shaped like
/// the shipped example (`examples/events/payment-failed.json`), so each one
/// starts a case of the bench workflow.
pub fn payment_failed(prefix: &str, n: u64) -> String {
    format!(
        r#"{{"id":"evt_{prefix}_{n}","type":"payment_failed","customer":{{"id":"cus_{prefix}_{n}","name":"Customer {n}","email":"c{n}@example.com","phone":"+447700900123","timezone":"Europe/London","locale":"en-GB","plan":"pro"}},"subject":"in_{prefix}_{n}","data":{{"amount":4900,"currency":"GBP","update_url":"https://billing.example.com/update/cus_{n}","attempt":1,"decline_code":"insufficient_funds"}}}}"#
    )
}

/// `events` events named `<prefix>_<n>`, `batch` per SendEvents call, sent
/// by `callers` concurrent callers (each on its own connection).
#[derive(Debug, Clone)]
pub struct Load {
    pub prefix: String,
    pub events: u64,
    pub batch: usize,
    pub callers: usize,
}

/// Sends the load and returns the wall time from the first call to the last
/// answer. Fails unless every event started exactly one case: each answer
/// means the event, its case and its delivery were committed.
pub async fn send(daemon: &Daemon, load: &Load) -> anyhow::Result<Duration> {
    let batch = load.batch.max(1) as u64;
    let batches = load.events.div_ceil(batch);
    let next = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::with_capacity(load.callers);
    for _ in 0..load.callers.max(1) {
        clients.push(daemon.client().await?);
    }
    let started = Instant::now();
    let mut callers = JoinSet::new();
    for mut client in clients {
        let next = next.clone();
        let load = load.clone();
        callers.spawn(async move {
            let mut cases = 0u64;
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= batches {
                    return Ok::<u64, anyhow::Error>(cases);
                }
                let first = index * batch;
                let last = (first + batch).min(load.events);
                let events = (first..last)
                    .map(|n| payment_failed(&load.prefix, n))
                    .collect();
                let answer = client
                    .send_events(SendEventsRequest { events })
                    .await
                    .with_context(|| format!("SendEvents of events {first}..{last}"))?
                    .into_inner();
                cases += answer
                    .results
                    .iter()
                    .map(|r| r.cases_started.len() as u64)
                    .sum::<u64>();
            }
        });
    }
    let mut cases = 0;
    while let Some(joined) = callers.join_next().await {
        cases += joined.context("a caller task failed")??;
    }
    let elapsed = started.elapsed();
    if cases != load.events {
        bail!(
            "{} events started {cases} cases, expected one each:\n{}",
            load.events,
            daemon.log_tail()
        );
    }
    Ok(elapsed)
}

/// Events per second for a load that took `elapsed`.
pub fn rate(events: u64, elapsed: Duration) -> f64 {
    events as f64 / elapsed.as_secs_f64().max(1e-9)
}
