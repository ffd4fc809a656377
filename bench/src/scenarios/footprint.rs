//! Footprint with many active cases: resident memory, database size, and
//! start-up time (process spawned → admin API answers) on that store.

use std::time::Duration;

use anyhow::{Context, ensure};
use dunningd::proto::GetStatusRequest;

use super::bench_workflow;
use crate::daemon::{Backend, Daemon, with_daemon};
use crate::events::{self, Load, rate};
use crate::probe::Probe;
use crate::report::Figure;
use crate::stats::{median, percentile};
use crate::{Ctx, Measure};

const MIB: f64 = 1024.0 * 1024.0;

pub async fn run(ctx: &Ctx, backend: Backend) -> anyhow::Result<Vec<Figure>> {
    with_daemon(ctx, backend, &[bench_workflow()], async |daemon, _| {
        footprint(ctx, backend, daemon).await
    })
    .await
}

async fn footprint(
    ctx: &Ctx,
    backend: Backend,
    daemon: &mut Daemon,
) -> anyhow::Result<Vec<Figure>> {
    let cases = ctx.sizes.footprint_cases;
    let load = Load {
        prefix: "f".into(),
        events: cases,
        batch: ctx.sizes.batch,
        callers: ctx.sizes.batch_callers,
    };
    let ingest = events::send(daemon, &load).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_loaded = daemon.rss_bytes()?;
    let probe = Probe::open(daemon.store()).await?;
    let size = probe.size_bytes().await?;
    probe.close().await;

    let mut api = Vec::new();
    let mut status = Vec::new();
    let mut rss_restarted = Vec::new();
    for _ in 0..ctx.sizes.restarts {
        daemon.stop().await?;
        let startup = daemon.spawn().await?;
        api.push(startup.api.as_secs_f64() * 1000.0);
        status.push(startup.status.as_secs_f64() * 1000.0);
        tokio::time::sleep(Duration::from_secs(2)).await;
        rss_restarted.push(daemon.rss_bytes()? as f64);
    }
    let active = active_cases(daemon).await?;
    ensure!(
        active == cases,
        "{active} active cases after restarts, expected {cases}"
    );

    let b = backend.name();
    let m = Measure::Footprint.name();
    let at = format!("{cases} active cases, one pending delivery each");
    let restarts = format!("{at}; {} restarts", api.len());
    Ok(vec![
        Figure::new(
            b,
            m,
            "RSS after ingesting",
            rss_loaded as f64 / MIB,
            "MiB",
            format!("{at}; VmRSS 3 s after the last event"),
        ),
        Figure::new(
            b,
            m,
            "RSS after a restart",
            median(&rss_restarted) / MIB,
            "MiB",
            format!("{restarts}; VmRSS 2 s after start-up, median"),
        ),
        Figure::new(
            b,
            m,
            "database size",
            size as f64 / MIB,
            "MiB",
            format!(
                "{at}; {}",
                match backend {
                    Backend::Sqlite => "database file + WAL + shared memory file",
                    Backend::Postgres => "pg_database_size",
                }
            ),
        ),
        Figure::new(
            b,
            m,
            "start-up p50",
            percentile(&api, 0.5),
            "ms",
            format!("{restarts}; spawn → GetClock answers"),
        ),
        Figure::new(
            b,
            m,
            "start-up max",
            percentile(&api, 1.0),
            "ms",
            format!("{restarts}; spawn → GetClock answers"),
        ),
        Figure::new(
            b,
            m,
            "start-up to GetStatus p50",
            percentile(&status, 0.5),
            "ms",
            format!("{restarts}; spawn → GetStatus (counts cases by state) answers"),
        ),
        Figure::new(
            b,
            m,
            "ingest at scale",
            rate(cases, ingest),
            "events/s",
            format!(
                "{cases} events into a growing store, {} per call, {} callers",
                load.batch, load.callers
            ),
        ),
    ])
}

async fn active_cases(daemon: &Daemon) -> anyhow::Result<u64> {
    let status = daemon
        .client()
        .await?
        .get_status(GetStatusRequest {})
        .await
        .context("GetStatus")?
        .into_inner();
    Ok(status.cases_by_state.get("active").copied().unwrap_or(0))
}
