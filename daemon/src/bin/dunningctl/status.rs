//! `dunningctl status`: the daemon at a glance.

use dunningd::proto;

use crate::Cli;
use crate::client::{Client, rpc};
use crate::output::{self, short_time};

pub async fn show(cli: &Cli, client: &mut Client) -> anyhow::Result<bool> {
    let s = client
        .get_status(proto::GetStatusRequest {})
        .await
        .map_err(rpc)?
        .into_inner();
    // Like `workflows list`: a refused file is something to look at.
    let ok = s.workflows_with_errors == 0;
    output::print(cli.json, &s, print_status)?;
    Ok(ok)
}

/// The status for people: one line per subject, then the plugins and the last reload.
fn print_status(s: &proto::Status) {
    // Minutes are enough for an uptime.
    let up = std::time::Duration::from_secs(s.uptime_seconds / 60 * 60);
    out!(
        "dunningd {}, up {} (since {})",
        output::text(&s.version),
        if up.is_zero() {
            "under a minute".to_string()
        } else {
            dunningd::duration::format(up)
        },
        short_time(&s.started_at)
    );
    out!("database   {}", output::full(&s.database));
    out!(
        "clock      {} ({})",
        short_time(&s.now),
        output::text(&s.clock)
    );
    out!(
        "workflows  {} loaded, {} file errors",
        s.workflows,
        s.workflows_with_errors
    );
    let order = ["active", "paused", "recovered", "exhausted", "cancelled"];
    let cases: Vec<String> = order
        .iter()
        .map(|k| format!("{k} {}", s.cases_by_state.get(*k).copied().unwrap_or(0)))
        .collect();
    out!("cases      {}", cases.join(", "));
    for p in &s.plugins {
        out!(
            "plugin     {} {} ({})",
            output::text(&p.name),
            output::text(&p.version),
            output::full(&p.channels.join(", "))
        );
    }
    if let Some(r) = &s.last_reload {
        out!(
            "reload     {} {}, {} workflows",
            short_time(&r.at),
            if r.ok { "ok" } else { "with errors" },
            r.workflows_loaded
        );
        for e in &r.errors {
            out!("  {}", output::full(&e.display));
        }
    }
}
