//! `dunningctl stats` and `report`: what each workflow recovered, as text
//! here or as an HTML page (`report.rs`).

use std::path::Path;

use dunningd::proto;

use crate::client::{Client, daemon_name, rpc};
use crate::output::{self, Col, format_rate, format_secs, short_time, table};
use crate::{Cli, StatsFilter, report};

/// `stats`.
pub async fn show(cli: &Cli, client: &mut Client, filter: &StatsFilter) -> anyhow::Result<bool> {
    let stats = get_stats(client, filter).await?;
    output::print(cli.json, &stats, print_stats)?;
    Ok(true)
}

/// `report --out FILE`.
pub async fn report(
    cli: &Cli,
    client: &mut Client,
    out: &Path,
    filter: &StatsFilter,
) -> anyhow::Result<bool> {
    let stats = get_stats(client, filter).await?;
    let page = report::render(
        &stats,
        &report::Header {
            generated_at: chrono::Utc::now(),
            daemon: daemon_name(cli),
            workflow: filter.workflow.clone(),
        },
    )?;
    report::write_atomically(out, &page)?;
    let answer = serde_json::json!({
        "out": out,
        "workflows": stats.workflows.len(),
    });
    output::print(cli.json, &answer, |_| {
        out!(
            "wrote {} ({} workflow{})",
            output::full(&out.display().to_string()),
            stats.workflows.len(),
            if stats.workflows.len() == 1 { "" } else { "s" }
        );
    })?;
    Ok(true)
}

/// The figures `stats` and `report` show, for the cases `filter` selects.
async fn get_stats(client: &mut Client, filter: &StatsFilter) -> anyhow::Result<proto::Stats> {
    let request = proto::GetStatsRequest {
        workflow: filter.workflow.clone().unwrap_or_default(),
        since: filter.since.clone().unwrap_or_default(),
        until: filter.until.clone().unwrap_or_default(),
    };
    Ok(client.get_stats(request).await.map_err(rpc)?.into_inner())
}

/// Amounts per currency, e.g. `€1200.00 + $300.00`.
fn amounts(money: &[proto::Money]) -> String {
    if money.is_empty() {
        return "-".into();
    }
    money
        .iter()
        .map(|m| dunningd::workflow::format_minor(report::minor_units(m), &m.currency))
        .collect::<Vec<_>>()
        .join(" + ")
}

fn print_stats(stats: &proto::Stats) {
    let bound = |t: &str| {
        if t.is_empty() {
            "…".to_string()
        } else {
            short_time(t)
        }
    };
    out!(
        "cases started {} to {}",
        bound(&stats.since),
        bound(&stats.until)
    );
    if stats.workflows.is_empty() {
        out!("no cases");
    }
    for w in &stats.workflows {
        out!();
        out!("{}", output::text(&w.workflow));
        out!(
            "  started {} · active {} · paused {} · recovered {} · exhausted {} · cancelled {}",
            w.started,
            w.active,
            w.paused,
            w.recovered,
            w.exhausted,
            w.cancelled
        );
        let rate = format_rate(w.recovery_rate);
        let median = format_secs(w.median_time_to_recovery_secs);
        out!(
            "  recovery rate {rate} · at risk {} · recovered {} · median time to recovery {median}",
            output::full(&amounts(&w.at_risk)),
            output::full(&amounts(&w.recovered_amount))
        );
        let rows: Vec<Vec<String>> = w
            .steps
            .iter()
            .flat_map(|step| {
                step.channels.iter().map(move |c| {
                    vec![
                        step.name.clone(),
                        c.channel.clone(),
                        c.sent.to_string(),
                        c.failed.to_string(),
                        c.skipped.to_string(),
                        c.pending.to_string(),
                        c.last_touch.to_string(),
                    ]
                })
            })
            .collect();
        if !rows.is_empty() {
            out!();
            table(
                &[
                    Col::Text("STEP"),
                    Col::Text("CHANNEL"),
                    Col::Text("SENT"),
                    Col::Text("FAILED"),
                    Col::Text("SKIPPED"),
                    Col::Text("PENDING"),
                    Col::Text("LAST TOUCH"),
                ],
                &rows,
            );
        }
    }
}
