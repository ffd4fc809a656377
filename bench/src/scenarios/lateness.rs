//! Timer lateness with little load: rounds of a few deliveries falling due
//! together, from the moment they fall due to the hand-off to the plugin.
//!
//! Each round sends `lateness_per_round` events, lets the daemon go idle,
//! then moves the manual clock a day at T (the deliveries become due at T);
//! the sink's own timestamps give each hand-off. The first hand-off of a
//! round is the "first-delivery lateness" of that round.

use std::time::{Duration, Instant};

use anyhow::bail;

use super::bench_workflow;
use super::sink::{SinkTail, handoff_times, unix_ms};
use crate::daemon::{Backend, Daemon, with_daemon};
use crate::events::{self, Load};
use crate::probe::Probe;
use crate::report::Figure;
use crate::stats::percentile;
use crate::{Ctx, Measure};

pub async fn run(ctx: &Ctx, backend: Backend) -> anyhow::Result<Vec<Figure>> {
    with_daemon(ctx, backend, &[bench_workflow()], async |daemon, _| {
        let probe = Probe::open(daemon.store()).await?;
        let result = rounds(ctx, backend, daemon, &probe).await;
        probe.close().await;
        result
    })
    .await
}

async fn rounds(
    ctx: &Ctx,
    backend: Backend,
    daemon: &mut Daemon,
    probe: &Probe,
) -> anyhow::Result<Vec<Figure>> {
    let per_round = ctx.sizes.lateness_per_round;
    let mut firsts = Vec::new();
    let mut all = Vec::new();
    for round in 0..ctx.sizes.lateness_rounds {
        let load = Load {
            prefix: format!("l{round}"),
            events: per_round,
            batch: per_round as usize,
            callers: 1,
        };
        events::send(daemon, &load).await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let lateness = release_round(daemon, probe, per_round).await?;
        firsts.push(percentile(&lateness, 0.0));
        all.extend(lateness);
    }
    let b = backend.name();
    let m = Measure::Lateness.name();
    let rounds = firsts.len();
    let firsts_note = format!("T → first hand-off of each round; {rounds} rounds of {per_round}");
    let all_note = format!("T → hand-off, every delivery of {rounds} rounds of {per_round}");
    Ok(vec![
        Figure::new(
            b,
            m,
            "first-delivery lateness p50",
            percentile(&firsts, 0.5),
            "ms",
            &firsts_note,
        ),
        Figure::new(
            b,
            m,
            "first-delivery lateness p99",
            percentile(&firsts, 0.99),
            "ms",
            &firsts_note,
        ),
        Figure::new(b, m, "lateness p50", percentile(&all, 0.5), "ms", &all_note),
        Figure::new(
            b,
            m,
            "lateness p99",
            percentile(&all, 0.99),
            "ms",
            &all_note,
        ),
    ])
}

/// Moves the clock to make the round due and returns each delivery's
/// lateness in ms once every outcome is committed.
async fn release_round(daemon: &mut Daemon, probe: &Probe, n: u64) -> anyhow::Result<Vec<f64>> {
    let mut tail = SinkTail::new(&daemon.deliveries_path());
    let offset = tail.offset();
    let released_ms = unix_ms();
    let released = Instant::now();
    daemon.advance("1d").await?;
    while tail.poll()? < n || probe.unfinished().await? > 0 {
        daemon.check_alive("during a lateness round")?;
        if released.elapsed() > Duration::from_secs(30) {
            bail!(
                "a round of {n} deliveries did not finish within 30 s:\n{}",
                daemon.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(handoff_times(&daemon.deliveries_path(), offset)?
        .into_iter()
        .map(|at| (at - released_ms) as f64)
        .collect())
}
