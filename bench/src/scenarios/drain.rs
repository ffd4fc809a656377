//! Dispatch throughput: a backlog of N due deliveries released at one
//! moment, drained to the sink.
//!
//! The backlog is built while the manual clock stands still (every case's
//! step is due a day after it started), the daemon is left idle for a
//! second, then AdvanceClock moves the clock a day at the release moment T.
//! The drain ends when the store shows no unfinished delivery: every outcome
//! committed. The same shape as the peers' benchmark (jobs due at T, workers
//! started and idle before it, T → last durable completion).

use std::time::{Duration, Instant};

use anyhow::{bail, ensure};

use super::bench_workflow;
use super::sink::{SinkTail, handoff_times, unix_ms};
use crate::daemon::{Backend, Daemon, with_daemon};
use crate::events::{self, Load, rate};
use crate::histogram::Buckets;
use crate::probe::Probe;
use crate::report::Figure;
use crate::stats::{median, percentile};
use crate::{Ctx, Measure};

/// Drains larger than this run once whatever `--reps` says.
const LARGE: u64 = 100_000;

/// One drain's figures.
#[derive(Debug, Clone)]
struct Drain {
    enqueue_per_s: f64,
    drain_per_s: f64,
    /// Rate from the first hand-off to the last commit (leaves out the
    /// first delivery's lateness).
    after_first_per_s: f64,
    first_ms: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// Last hand-off → last commit: how far the completion writer trails.
    commit_tail_ms: f64,
    /// The daemon's CPU time (all threads, the plugin's included) from T to
    /// the end of the drain, per delivery.
    cpu_us: f64,
    /// A plugin's answer → its outcome committed (the daemon's
    /// `dunningd_outcome_commit_delay_seconds`), p99 over the drain; none
    /// from a build older than that metric (`--artifacts` of another build).
    commit_delay_p99_ms: Option<f64>,
}

pub async fn run(ctx: &Ctx, backend: Backend) -> anyhow::Result<Vec<Figure>> {
    let mut figures = Vec::new();
    for &n in &ctx.sizes.drain {
        let reps = if n > LARGE { 1 } else { ctx.sizes.reps };
        let mut runs = Vec::new();
        for rep in 1..=reps {
            let run = with_daemon(ctx, backend, &[bench_workflow()], async |daemon, _| {
                drain_once(daemon, n).await
            })
            .await?;
            let commit = run
                .commit_delay_p99_ms
                .map_or("not measured by this build".into(), |ms| {
                    format!("{ms:.1} ms")
                });
            eprintln!(
                "  n={n} rep {rep}: drain {:.0}/s, first {:.0} ms, p99 {:.0} ms, {:.0} µs CPU per delivery, answer → commit p99 {commit}",
                run.drain_per_s, run.first_ms, run.p99_ms, run.cpu_us
            );
            runs.push(run);
        }
        figures.extend(summarise(backend, n, &runs));
    }
    Ok(figures)
}

async fn drain_once(daemon: &mut Daemon, n: u64) -> anyhow::Result<Drain> {
    let probe = Probe::open(daemon.store()).await?;
    let result = drain_with(daemon, &probe, n).await;
    probe.close().await;
    result
}

async fn drain_with(daemon: &mut Daemon, probe: &Probe, n: u64) -> anyhow::Result<Drain> {
    let load = Load {
        prefix: "d".into(),
        events: n,
        batch: 500,
        callers: 4,
    };
    let enqueue = events::send(daemon, &load).await?;
    probe.analyze().await?;
    // Idle before T, as the peers' workers are; the scheduler polls at least
    // once a second.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut tail = SinkTail::new(&daemon.deliveries_path());
    let start_offset = tail.offset();
    // Generous: a slow drain is a result to report, not an error; only a
    // stuck one fails.
    let deadline = Duration::from_secs(120).max(Duration::from_millis(n * 5));

    let commits_before = commit_delays(daemon).await?;
    let cpu_before = daemon.cpu_time()?;
    let released_ms = unix_ms();
    let released = Instant::now();
    daemon.advance("1d").await?;
    while tail.poll()? < n {
        daemon.check_alive("during the drain")?;
        if released.elapsed() > deadline {
            bail!(
                "only {} of {n} deliveries reached the sink within {deadline:?}:\n{}",
                tail.poll()?,
                daemon.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    while probe.unfinished().await? > 0 {
        if released.elapsed() > deadline {
            bail!("the drain's outcomes were not all committed within {deadline:?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let done = released.elapsed();
    let cpu = daemon.cpu_time()?.saturating_sub(cpu_before);
    let commits = match (commits_before, commit_delays(daemon).await?) {
        (Some(before), Some(after)) => Some(after.since(&before)),
        _ => None,
    };

    let (sent, retried) = probe.sent().await?;
    ensure!(sent == n as i64, "{sent} of {n} deliveries are sent");
    ensure!(
        retried == 0,
        "{retried} deliveries needed more than one attempt"
    );
    let lateness: Vec<f64> = handoff_times(&daemon.deliveries_path(), start_offset)?
        .into_iter()
        .map(|at| (at - released_ms) as f64)
        .collect();
    ensure!(
        lateness.len() as u64 == n,
        "the sink has {} lines for {n} deliveries",
        lateness.len()
    );
    let first_ms = percentile(&lateness, 0.0).max(0.0);
    let last_ms = percentile(&lateness, 1.0);
    let done_ms = done.as_secs_f64() * 1000.0;
    Ok(Drain {
        enqueue_per_s: rate(n, enqueue),
        drain_per_s: rate(n, done),
        after_first_per_s: n as f64 / ((done_ms - first_ms).max(1.0) / 1000.0),
        first_ms,
        p50_ms: percentile(&lateness, 0.5),
        p99_ms: percentile(&lateness, 0.99),
        commit_tail_ms: (done_ms - last_ms).max(0.0),
        cpu_us: cpu.as_secs_f64() * 1e6 / n as f64,
        commit_delay_p99_ms: commits.map(|c| c.quantile(0.99).unwrap_or(0.0) * 1000.0),
    })
}

/// The daemon's histogram of answer → commit delays, as it stands now;
/// none if the build has no such metric.
async fn commit_delays(daemon: &Daemon) -> anyhow::Result<Option<Buckets>> {
    let metrics = daemon.metrics().await?;
    if !metrics.contains(COMMIT_DELAY) {
        return Ok(None);
    }
    Buckets::parse(&metrics, COMMIT_DELAY).map(Some)
}

const COMMIT_DELAY: &str = "dunningd_outcome_commit_delay_seconds";

fn summarise(backend: Backend, n: u64, runs: &[Drain]) -> Vec<Figure> {
    let pick = |f: fn(&Drain) -> f64| median(&runs.iter().map(f).collect::<Vec<_>>());
    let spread = |f: fn(&Drain) -> f64| {
        let values: Vec<f64> = runs.iter().map(f).collect();
        if values.len() < 2 {
            String::new()
        } else {
            format!(
                " (runs: {})",
                values
                    .iter()
                    .map(|v| format!("{v:.0}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    };
    let runs_note = format!("N={n}, median of {}", runs.len());
    // One figure: the median over the runs, `what` it measures, and each
    // run's value if `each` (the figures that move most between runs).
    let figure = |name: &str, f: fn(&Drain) -> f64, unit, what: &str, each: bool| {
        let runs_shown = if each { spread(f) } else { String::new() };
        Figure::new(
            backend.name(),
            Measure::Drain.name(),
            format!("{name} N={n}"),
            pick(f),
            unit,
            format!("{what}; {runs_note}{runs_shown}"),
        )
    };
    let mut figures = vec![
        figure(
            "drain",
            |r| r.drain_per_s,
            "deliveries/s",
            "release T → last outcome committed",
            true,
        ),
        figure(
            "after first hand-off",
            |r| r.after_first_per_s,
            "deliveries/s",
            "first hand-off → last outcome committed",
            false,
        ),
        figure(
            "first-delivery lateness",
            |r| r.first_ms,
            "ms",
            "T → first hand-off to the plugin",
            true,
        ),
        figure(
            "lateness p50",
            |r| r.p50_ms,
            "ms",
            "T → hand-off, over all N deliveries",
            false,
        ),
        figure(
            "lateness p99",
            |r| r.p99_ms,
            "ms",
            "T → hand-off, over all N deliveries",
            false,
        ),
        figure(
            "commit tail",
            |r| r.commit_tail_ms,
            "ms",
            "last hand-off → last outcome committed",
            false,
        ),
        figure(
            "CPU per delivery",
            |r| r.cpu_us,
            "µs",
            "the daemon's CPU time (user + system, all threads) from T to the end ÷ N",
            true,
        ),
        figure(
            "backlog ingest",
            |r| r.enqueue_per_s,
            "events/s",
            "building the backlog: 500 per call, 4 callers",
            false,
        ),
    ];
    // Builds older than the metric do not report it.
    if runs.iter().all(|r| r.commit_delay_p99_ms.is_some()) {
        figures.push(figure(
            "answer → commit p99",
            |r| r.commit_delay_p99_ms.unwrap_or_default(),
            "ms",
            "a plugin's answer → its outcome committed (dunningd_outcome_commit_delay_seconds, interpolated in its bucket): the window a crash would send again",
            true,
        ));
    }
    figures
}
