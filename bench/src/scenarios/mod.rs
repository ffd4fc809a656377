//! The measurements. Each starts its own daemons on fresh stores, so one
//! measurement's leftovers never slow the next.

mod crash;
mod drain;
mod footprint;
mod ingest;
mod lateness;
mod reload;
mod sink;

use crate::daemon::Backend;
use crate::report::Figure;
use crate::{Ctx, Measure, ceiling};

pub async fn run(measure: Measure, ctx: &Ctx, backend: Backend) -> anyhow::Result<Vec<Figure>> {
    match (measure, backend) {
        (Measure::Ceiling, Backend::Sqlite) => ceiling::sqlite(ctx).await,
        (Measure::Ceiling, Backend::Postgres) => ceiling::postgres(ctx).await,
        (Measure::Ingest, _) => ingest::run(ctx, backend).await,
        (Measure::Drain, _) => drain::run(ctx, backend).await,
        (Measure::Lateness, _) => lateness::run(ctx, backend).await,
        (Measure::Reload, _) => reload::run(ctx, backend).await,
        (Measure::Footprint, _) => footprint::run(ctx, backend).await,
        (Measure::Crash, _) => crash::run(ctx, backend).await,
    }
}

/// The workflow every measurement runs: one case per `payment_failed`
/// event, one step a day later on the `sink` channel, with a template that
/// renders like a real reminder (filters, event fields). No send window, so
/// a delivery is planned for the moment it is due.
pub fn bench_workflow() -> (String, String) {
    let yaml = r#"name: bench
description: One reminder a day after a failed payment, on the sink channel
trigger:
  event: payment_failed
exit_on: [payment_succeeded]
steps:
  - name: reminder
    after: 1d
    send:
      - { channel: sink, template: reminder }
templates:
  reminder:
    subject: "Reminder: invoice {{ subject }} is still unpaid"
    text: "Hi {{ customer.name | default('there') }}, your payment of {{ data.amount | money(data.currency) }} did not go through. Update your card: {{ data.update_url }}"
"#;
    ("bench.yaml".to_string(), yaml.to_string())
}
