//! The crash window: `kill -9` at a random moment of a busy drain, a
//! restart, and every hand-off counted per delivery. Nothing may be lost;
//! what reaches the plugin twice is what the crash caught in flight or
//! sent and not yet committed.
//!
//! Each kill runs on a fresh daemon: a backlog of N is released as in the
//! drain, the daemon is killed once a random share (10–90 %) of it has
//! reached the sink, started again on the same store, and left to finish.
//! On PostgreSQL the dead process's claims are taken over when their lease
//! runs out, so the configuration shortens the lease to
//! [`LEASE`] (the sink's timeout must stay below it).

use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use rand::Rng;

use super::bench_workflow;
use super::sink::{SinkTail, handoffs_per_delivery};
use crate::daemon::{Backend, Daemon, with_configured_daemon};
use crate::events::{self, Load};
use crate::probe::Probe;
use crate::report::Figure;
use crate::stats::median;
use crate::{Ctx, Measure};

/// The lease of this measurement's daemons (the sink's timeout, 10 s, is
/// below it).
const LEASE: &str = "scheduler:\n  lease: 20s\n";

/// One kill's counts.
struct Kill {
    /// Hand-offs the sink had when the process was killed.
    at: u64,
    /// Hand-offs beyond one per delivery.
    duplicates: u64,
}

pub async fn run(ctx: &Ctx, backend: Backend) -> anyhow::Result<Vec<Figure>> {
    let n = ctx.sizes.crash_deliveries;
    let mut kills = Vec::new();
    for round in 1..=ctx.sizes.crash_kills {
        let kill = with_configured_daemon(
            ctx,
            backend,
            &[bench_workflow()],
            LEASE,
            async |daemon, _| kill_once(daemon, n).await,
        )
        .await?;
        eprintln!(
            "  kill {round}: after {} of {n} hand-offs; {} handed again",
            kill.at, kill.duplicates
        );
        kills.push(kill);
    }
    let duplicates: Vec<f64> = kills.iter().map(|k| k.duplicates as f64).collect();
    let worst = duplicates.iter().copied().fold(0.0, f64::max);
    let each = duplicates
        .iter()
        .map(|d| format!("{d:.0}"))
        .collect::<Vec<_>>()
        .join(", ");
    let b = backend.name();
    let m = Measure::Crash.name();
    let note = format!(
        "kill -9 at a random moment of a drain of {n}, restart, every hand-off counted; {} kills (each: {each}); nothing lost",
        kills.len()
    );
    Ok(vec![
        Figure::new(
            b,
            m,
            format!("handed again, worst N={n}"),
            worst,
            "deliveries",
            note.clone(),
        ),
        Figure::new(
            b,
            m,
            format!("handed again, median N={n}"),
            median(&duplicates),
            "deliveries",
            note,
        ),
    ])
}

async fn kill_once(daemon: &mut Daemon, n: u64) -> anyhow::Result<Kill> {
    let load = Load {
        prefix: "k".into(),
        events: n,
        batch: 500,
        callers: 4,
    };
    events::send(daemon, &load).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut tail = SinkTail::new(&daemon.deliveries_path());
    let start_offset = tail.offset();
    let target = (n as f64 * rand::rng().random_range(0.1..0.9)) as u64;
    let deadline = Duration::from_secs(120).max(Duration::from_millis(n * 5));

    let released = Instant::now();
    daemon.advance("1d").await?;
    loop {
        if tail.poll()? >= target {
            break;
        }
        daemon.check_alive("during the drain")?;
        if released.elapsed() > deadline {
            bail!("only {} of {n} hand-offs within {deadline:?}", tail.poll()?);
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    daemon.kill9();
    let at = tail.poll()?;

    daemon.spawn().await.context("restarting after kill -9")?;
    let probe = Probe::open(daemon.store()).await?;
    let restarted = Instant::now();
    let finished = async {
        while probe.unfinished().await? > 0 {
            if restarted.elapsed() > deadline {
                bail!("the drain did not finish within {deadline:?} of the restart");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        probe.sent().await
    }
    .await;
    probe.close().await;
    let (sent, _) = finished?;
    ensure!(
        sent == n as i64,
        "{sent} of {n} deliveries are sent after the restart"
    );

    let counts = handoffs_per_delivery(&daemon.deliveries_path(), start_offset)?;
    ensure!(
        counts.len() as u64 == n,
        "{} of {n} deliveries reached the plugin: {} lost",
        counts.len(),
        n.saturating_sub(counts.len() as u64)
    );
    let total: u64 = counts.values().map(|&c| u64::from(c)).sum();
    Ok(Kill {
        at,
        duplicates: total - n,
    })
}
