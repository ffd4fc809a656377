//! Event ingestion through SendEvents: one event per call (by one caller,
//! then by many at once) and batched. Every answer means the event, its
//! case and its delivery were committed.

use super::bench_workflow;
use crate::daemon::{Backend, Daemon, with_daemon};
use crate::events::{self, Load, rate};
use crate::report::Figure;
use crate::{Ctx, Measure};

pub async fn run(ctx: &Ctx, backend: Backend) -> anyhow::Result<Vec<Figure>> {
    with_daemon(ctx, backend, &[bench_workflow()], async |daemon, _| {
        ingest(ctx, backend, daemon).await
    })
    .await
}

async fn ingest(ctx: &Ctx, backend: Backend, daemon: &mut Daemon) -> anyhow::Result<Vec<Figure>> {
    let s = &ctx.sizes;
    // Warms the connection pools and the workflow's first version row.
    events::send(daemon, &load("warm", 100, 100, 1)).await?;
    let loads = [
        ("single, 1 caller", load("s1", s.single_events, 1, 1)),
        (
            "single, concurrent callers",
            load("sn", s.single_events, 1, s.single_callers),
        ),
        (
            "batched",
            load("b", s.batched_events, s.batch, s.batch_callers),
        ),
    ];
    let mut figures = Vec::new();
    for (name, load) in loads {
        let elapsed = events::send(daemon, &load).await?;
        let per_s = rate(load.events, elapsed);
        eprintln!("  {name}: {per_s:.0} events/s");
        figures.push(Figure::new(
            backend.name(),
            Measure::Ingest.name(),
            name,
            per_s,
            "events/s",
            format!(
                "{} events, {} per SendEvents call, {} caller(s); each committed with its case and delivery",
                load.events, load.batch, load.callers
            ),
        ));
    }
    Ok(figures)
}

fn load(prefix: &str, events: u64, batch: usize, callers: usize) -> Load {
    Load {
        prefix: prefix.to_string(),
        events,
        batch,
        callers,
    }
}
