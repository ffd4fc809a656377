//! Hot-reload latency: a changed workflow file written into the watched
//! folder → ListWorkflows shows its new version.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use dunningd::proto::ListWorkflowsRequest;

use super::bench_workflow;
use crate::daemon::{Backend, Daemon, with_daemon};
use crate::report::Figure;
use crate::stats::percentile;
use crate::{Ctx, Measure};

const PROBE: &str = "reload-probe";

/// The probe workflow; `round` changes its content and so its version.
fn probe_workflow(round: u32) -> String {
    format!(
        "name: {PROBE}\ndescription: Round {round} of the reload measurement\ntrigger:\n  event: reload_probe\nsteps:\n  - name: only\n    after: 1d\n    send:\n      - {{ channel: sink, template: note }}\ntemplates:\n  note:\n    text: \"round {round}\"\n"
    )
}

pub async fn run(ctx: &Ctx, backend: Backend) -> anyhow::Result<Vec<Figure>> {
    let workflows = [
        bench_workflow(),
        ("reload-probe.yaml".to_string(), probe_workflow(0)),
    ];
    let latencies = with_daemon(ctx, backend, &workflows, async |daemon, _| {
        let mut latencies = Vec::new();
        for round in 1..=ctx.sizes.reloads {
            latencies.push(reload_once(daemon, round).await?);
            // Lets the watcher's debounce window close, so rounds never merge.
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        Ok(latencies)
    })
    .await?;
    let note = format!(
        "file written → ListWorkflows shows the new version (polled every 2 ms); {} reloads",
        latencies.len()
    );
    let b = backend.name();
    let m = Measure::Reload.name();
    Ok(vec![
        Figure::new(b, m, "reload p50", percentile(&latencies, 0.5), "ms", &note),
        Figure::new(
            b,
            m,
            "reload p99",
            percentile(&latencies, 0.99),
            "ms",
            &note,
        ),
    ])
}

async fn reload_once(daemon: &mut Daemon, round: u32) -> anyhow::Result<f64> {
    let before = probe_version(daemon).await?;
    let path = daemon.workflows_dir().join("reload-probe.yaml");
    let started = Instant::now();
    std::fs::write(&path, probe_workflow(round))
        .with_context(|| format!("cannot write '{}'", path.display()))?;
    loop {
        if probe_version(daemon).await? != before {
            return Ok(started.elapsed().as_secs_f64() * 1000.0);
        }
        daemon.check_alive("during a reload")?;
        if started.elapsed() > Duration::from_secs(10) {
            bail!(
                "round {round}: the new version was not serving within 10 s:\n{}",
                daemon.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn probe_version(daemon: &Daemon) -> anyhow::Result<String> {
    let workflows = daemon
        .client()
        .await?
        .list_workflows(ListWorkflowsRequest {})
        .await
        .context("ListWorkflows")?
        .into_inner()
        .workflows;
    workflows
        .into_iter()
        .find(|w| w.name == PROBE)
        .map(|w| w.version)
        .with_context(|| format!("workflow '{PROBE}' is not served"))
}
