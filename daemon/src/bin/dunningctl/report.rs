//! `dunningctl report`: the figures of `dunningctl stats` as one
//! self-contained HTML page, for people who do not read terminals.
//!
//! Invariants:
//! - The page loads nothing: inline CSS, charts drawn here as inline SVG, no
//!   script, no link, no font; a Content-Security-Policy of `default-src
//!   'none'` tells the browser so too. It opens from a mail attachment or a
//!   file share as it does here, and prints.
//! - Everything that comes from workflows and events (workflow, step and
//!   channel names, currencies) reaches the page through minijinja's HTML
//!   auto-escaping; nothing is concatenated into markup by hand.
//! - Every figure carries `data-metric`, with `data-workflow` and, where
//!   they apply, `data-step`, `data-channel`, `data-currency` or
//!   `data-stage`, and its raw value in `data-value` (minor units, seconds,
//!   a rate between 0 and 1), so scripts and tests read the page as data.
//!   Amounts are exact, however large (`Money.exact`, every digit).
//! - Only figures the stats carry are drawn: the funnel's step stages are
//!   the cases contacted at each step (`StepStats.contacted`), not a guess
//!   from message counts.

use std::io::Write as _;
use std::path::Path;

use anyhow::{Context, anyhow};
use chrono::{DateTime, Utc};
use dunningd::proto;
use serde::Serialize;

use crate::output::short_time;
use crate::output::{format_rate, format_secs};

/// What the page says about how it was made.
pub struct Header {
    pub generated_at: DateTime<Utc>,
    /// The daemon asked: its socket or address.
    pub daemon: String,
    /// The `--workflow` filter, if any.
    pub workflow: Option<String>,
}

/// A figure: what a person reads and what a script reads.
#[derive(Serialize)]
struct Figure {
    text: String,
    /// Empty when there is no value (an undecided rate, no recovery yet).
    value: String,
}

#[derive(Serialize)]
struct Amount {
    currency: String,
    text: String,
    /// Minor units, every digit.
    value: String,
}

/// One bar of a chart, laid out here so the template only places it.
#[derive(Serialize)]
struct Bar {
    /// `started`, `step` or `recovered` (funnel); a case state (outcomes).
    stage: String,
    /// The step's name, for step stages.
    step: Option<String>,
    /// The label drawn, shortened to fit; `title` holds it whole.
    label: String,
    title: String,
    count: u64,
    /// Share of the cases started, as drawn beside the count.
    share: String,
    x: f64,
    y: f64,
    width: f64,
}

#[derive(Serialize)]
struct ChannelRow {
    channel: String,
    sent: u64,
    failed: u64,
    skipped: u64,
    pending: u64,
    last_touch: u64,
}

#[derive(Serialize)]
struct StepRows {
    number: u32,
    name: String,
    contacted: u64,
    channels: Vec<ChannelRow>,
}

#[derive(Serialize)]
struct WorkflowView {
    name: String,
    /// An id for the section's heading (workflow names are not ids).
    anchor: String,
    started: u64,
    rate: Figure,
    median: Figure,
    at_risk: Vec<Amount>,
    recovered_amount: Vec<Amount>,
    /// (metric, label, count) for every case state, in the order of `stats`.
    states: Vec<(&'static str, &'static str, u64)>,
    funnel: Vec<Bar>,
    funnel_height: f64,
    funnel_summary: String,
    outcomes: Vec<Bar>,
    outcomes_summary: String,
    steps: Vec<StepRows>,
}

#[derive(Serialize)]
struct Page {
    since: String,
    until: String,
    period: String,
    period_title: String,
    generated_at: String,
    generated_at_iso: String,
    daemon: String,
    workflow_filter: Option<String>,
    version: &'static str,
    workflows: Vec<WorkflowView>,
    chart: Chart,
}

/// Chart geometry, in SVG user units.
#[derive(Serialize, Clone, Copy)]
struct Chart {
    width: f64,
    label_width: f64,
    bar_width: f64,
    row: f64,
    bar_height: f64,
}

const CHART: Chart = Chart {
    width: 720.0,
    label_width: 210.0,
    bar_width: 400.0,
    row: 34.0,
    bar_height: 22.0,
};

/// Labels longer than this are shortened in the chart (whole in its title).
const LABEL_CHARS: usize = 24;

fn shorten(text: &str) -> String {
    if text.chars().count() <= LABEL_CHARS {
        return text.to_string();
    }
    let mut short: String = text.chars().take(LABEL_CHARS - 1).collect();
    short.push('…');
    short
}

fn share(count: u64, of: u64) -> String {
    if of == 0 {
        return "-".into();
    }
    format!("{:.0}%", count as f64 * 100.0 / of as f64)
}

/// A sum's exact minor units: `exact`, or `amount` from a daemon that does
/// not send `exact` yet (it had no sums beyond int64 either).
pub fn minor_units(m: &proto::Money) -> i128 {
    m.exact.parse().unwrap_or(i128::from(m.amount))
}

fn amounts(money: &[proto::Money]) -> Vec<Amount> {
    money
        .iter()
        .map(|m| {
            let minor = minor_units(m);
            Amount {
                currency: m.currency.clone(),
                text: dunningd::workflow::format_minor(minor, &m.currency),
                value: minor.to_string(),
            }
        })
        .collect()
}

/// The funnel: cases started, contacted at each step, recovered; each bar as
/// long as its share of the cases started.
fn funnel(w: &proto::WorkflowStats) -> Vec<Bar> {
    let mut stages = vec![("started", None, "Cases started".to_string(), w.started)];
    for step in &w.steps {
        stages.push((
            "step",
            Some(step.name.clone()),
            format!("{}. {}", step.index + 1, step.name),
            step.contacted,
        ));
    }
    stages.push(("recovered", None, "Recovered".to_string(), w.recovered));
    stages
        .into_iter()
        .enumerate()
        .map(|(i, (stage, step, title, count))| {
            let fraction = if w.started == 0 {
                0.0
            } else {
                (count as f64 / w.started as f64).min(1.0)
            };
            Bar {
                stage: stage.into(),
                step,
                label: shorten(&title),
                title,
                count,
                share: share(count, w.started),
                x: CHART.label_width,
                y: i as f64 * CHART.row,
                // A stage with cases stays visible, however few.
                width: if count == 0 {
                    0.0
                } else {
                    (fraction * CHART.bar_width).max(2.0)
                },
            }
        })
        .collect()
}

/// The cases by state, one segment each, side by side in one bar.
fn outcomes(states: &[(&'static str, &'static str, u64)], started: u64) -> Vec<Bar> {
    let mut x = 0.0;
    states
        .iter()
        .filter(|(_, _, count)| *count > 0)
        .map(|(state, label, count)| {
            let width = if started == 0 {
                0.0
            } else {
                *count as f64 / started as f64 * CHART.width
            };
            let bar = Bar {
                stage: (*state).into(),
                step: None,
                label: (*label).into(),
                title: format!("{label}: {count}"),
                count: *count,
                share: share(*count, started),
                x,
                y: 0.0,
                width,
            };
            x += width;
            bar
        })
        .collect()
}

fn workflow(index: usize, w: &proto::WorkflowStats) -> WorkflowView {
    let states = vec![
        ("recovered", "Recovered", w.recovered),
        ("exhausted", "Exhausted", w.exhausted),
        ("cancelled", "Cancelled", w.cancelled),
        ("active", "Active", w.active),
        ("paused", "Paused", w.paused),
    ];
    let funnel = funnel(w);
    let funnel_summary = funnel
        .iter()
        .map(|b| format!("{}: {}", b.title, b.count))
        .collect::<Vec<_>>()
        .join(", ");
    let outcomes = outcomes(&states, w.started);
    let outcomes_summary = states
        .iter()
        .map(|(_, label, count)| format!("{label}: {count}"))
        .collect::<Vec<_>>()
        .join(", ");
    WorkflowView {
        name: w.workflow.clone(),
        anchor: format!("workflow-{}", index + 1),
        started: w.started,
        rate: Figure {
            text: format_rate(w.recovery_rate),
            value: w.recovery_rate.map(|r| r.to_string()).unwrap_or_default(),
        },
        median: Figure {
            text: format_secs(w.median_time_to_recovery_secs),
            value: w
                .median_time_to_recovery_secs
                .map(|s| s.to_string())
                .unwrap_or_default(),
        },
        at_risk: amounts(&w.at_risk),
        recovered_amount: amounts(&w.recovered_amount),
        states,
        funnel_height: funnel.len() as f64 * CHART.row,
        funnel,
        funnel_summary,
        outcomes,
        outcomes_summary,
        steps: w
            .steps
            .iter()
            .map(|s| StepRows {
                number: s.index + 1,
                name: s.name.clone(),
                contacted: s.contacted,
                channels: s
                    .channels
                    .iter()
                    .map(|c| ChannelRow {
                        channel: c.channel.clone(),
                        sent: c.sent,
                        failed: c.failed,
                        skipped: c.skipped,
                        pending: c.pending,
                        last_touch: c.last_touch,
                    })
                    .collect(),
            })
            .collect(),
    }
}

/// The page for `stats`: one section per workflow, or a note that the
/// period holds no case.
pub fn render(stats: &proto::Stats, header: &Header) -> anyhow::Result<String> {
    let since = if stats.since.is_empty() {
        "the first case".to_string()
    } else {
        short_time(&stats.since)
    };
    let until = if stats.until.is_empty() {
        "now".to_string()
    } else {
        short_time(&stats.until)
    };
    let period = match (stats.since.is_empty(), stats.until.is_empty()) {
        (true, true) => "all cases".to_string(),
        (false, true) => format!("cases started since {since}"),
        (true, false) => format!("cases started before {until}"),
        (false, false) => format!("cases started {since} to {until}"),
    };
    let mut period_title = period.clone();
    period_title[..1].make_ascii_uppercase();
    let page = Page {
        since,
        until,
        period,
        period_title,
        generated_at: header.generated_at.format("%Y-%m-%d %H:%M UTC").to_string(),
        generated_at_iso: header.generated_at.to_rfc3339(),
        daemon: header.daemon.clone(),
        workflow_filter: header.workflow.clone(),
        version: env!("CARGO_PKG_VERSION"),
        workflows: stats
            .workflows
            .iter()
            .enumerate()
            .map(|(i, w)| workflow(i, w))
            .collect(),
        chart: CHART,
    };
    let mut env = minijinja::Environment::new();
    // Names and currencies come from workflow files and events: escape all.
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::Html);
    env.add_template("report.html", TEMPLATE)
        .context("report template")?;
    env.get_template("report.html")
        .and_then(|t| t.render(minijinja::value::Serde(&page)))
        .map_err(|e| anyhow!("cannot render the report: {e:#}"))
}

/// Writes `contents` to a temporary file beside `path` and renames it over
/// `path`, so a reader never sees half a page and a failed write leaves the
/// old one.
pub fn write_atomically(path: &Path, contents: &str) -> anyhow::Result<()> {
    let fail = |e: std::io::Error| anyhow!("cannot write '{}': {e}", path.display());
    let name = path
        .file_name()
        .ok_or_else(|| anyhow!("cannot write '{}': not a file name", path.display()))?;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let temp = dir.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let written = std::fs::File::create(&temp).and_then(|mut file| {
        file.write_all(contents.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&temp, path)
    });
    written.map_err(|e| {
        let _ = std::fs::remove_file(&temp);
        fail(e)
    })
}

const TEMPLATE: &str = r##"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'">
<meta name="generator" content="dunningctl {{ version }}">
<title>Recovery report · {{ period }}</title>
<style>
:root {
  --ink: #1b2130; --muted: #5d6678; --line: #e2e6ee; --paper: #ffffff; --wash: #f5f7fa;
  --bar: #3d6fd8; --recovered: #1e8a5a; --exhausted: #c4502a; --cancelled: #8b919c;
  --active: #4a90e2; --paused: #d9a21b;
}
* { box-sizing: border-box; }
html { -webkit-text-size-adjust: 100%; }
body {
  margin: 0; background: var(--wash); color: var(--ink);
  font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
  font-variant-numeric: tabular-nums;
}
.page { max-width: 960px; margin: 0 auto; padding: 32px 24px 48px; }
header.report { border-bottom: 2px solid var(--ink); padding-bottom: 16px; margin-bottom: 24px; }
header.report h1 { font-size: 28px; line-height: 1.2; margin: 0 0 4px; letter-spacing: -0.01em; }
header.report .period { font-size: 17px; color: var(--muted); margin: 0 0 12px; }
dl.meta { display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; margin: 0; font-size: 13px; }
dl.meta dt { color: var(--muted); }
dl.meta dd { margin: 0; overflow-wrap: anywhere; }
section.workflow, section.empty {
  background: var(--paper); border: 1px solid var(--line); border-radius: 10px;
  padding: 24px; margin-bottom: 24px;
}
section.workflow h2 { font-size: 22px; margin: 0 0 16px; overflow-wrap: anywhere; }
h3 { font-size: 13px; text-transform: uppercase; letter-spacing: 0.06em; color: var(--muted); margin: 28px 0 10px; }
.figures { display: grid; grid-template-columns: repeat(auto-fit, minmax(190px, 1fr)); gap: 12px; }
.figure { border: 1px solid var(--line); border-radius: 8px; padding: 12px 14px; }
.figure .label { font-size: 12px; color: var(--muted); text-transform: uppercase; letter-spacing: 0.05em; }
.figure .value { font-size: 26px; font-weight: 650; line-height: 1.25; margin-top: 2px; overflow-wrap: anywhere; }
.figure .value .amount { display: block; }
.figure .note { font-size: 12px; color: var(--muted); margin-top: 4px; }
svg { display: block; width: 100%; height: auto; overflow: visible; }
svg text { font: 13px system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; fill: var(--ink); }
svg .track { fill: var(--wash); }
svg .bar { fill: var(--bar); }
svg .bar.recovered, svg .segment.recovered { fill: var(--recovered); }
svg .segment.exhausted { fill: var(--exhausted); }
svg .segment.cancelled { fill: var(--cancelled); }
svg .segment.active { fill: var(--active); }
svg .segment.paused { fill: var(--paused); }
svg .count { font-weight: 650; }
svg .share { fill: var(--muted); }
ul.legend { list-style: none; display: flex; flex-wrap: wrap; gap: 6px 20px; padding: 0; margin: 10px 0 0; font-size: 14px; }
ul.legend li::before { content: ""; display: inline-block; width: 10px; height: 10px; border-radius: 2px; margin-right: 6px; background: var(--swatch, var(--muted)); }
ul.legend .started { --swatch: var(--ink); }
ul.legend .recovered { --swatch: var(--recovered); }
ul.legend .exhausted { --swatch: var(--exhausted); }
ul.legend .cancelled { --swatch: var(--cancelled); }
ul.legend .active { --swatch: var(--active); }
ul.legend .paused { --swatch: var(--paused); }
ul.legend strong { font-weight: 650; }
table { width: 100%; border-collapse: collapse; font-size: 14px; }
caption { text-align: left; color: var(--muted); font-size: 13px; padding-bottom: 6px; }
th, td { padding: 7px 10px; border-bottom: 1px solid var(--line); text-align: right; vertical-align: top; }
thead th { font-size: 12px; text-transform: uppercase; letter-spacing: 0.05em; color: var(--muted); border-bottom: 2px solid var(--line); }
th[scope="rowgroup"], td.channel, thead th:first-child, thead th:nth-child(2) { text-align: left; }
th[scope="rowgroup"] { font-weight: 600; overflow-wrap: anywhere; max-width: 260px; }
th[scope="rowgroup"] .contacted { display: block; font-weight: 400; font-size: 12px; color: var(--muted); }
td.channel { overflow-wrap: anywhere; }
tbody + tbody { border-top: 2px solid var(--line); }
.nothing { font-size: 17px; margin: 0; }
.nothing + p { color: var(--muted); margin: 6px 0 0; }
footer { color: var(--muted); font-size: 12px; margin-top: 8px; }
footer p { margin: 4px 0; }
@media print {
  @page { margin: 14mm; }
  body { background: #fff; font-size: 10.5pt; }
  .page { max-width: none; padding: 0; }
  section.workflow, section.empty { border: 0; border-radius: 0; padding: 0; margin-bottom: 18pt; break-before: auto; }
  section.workflow + section.workflow { break-before: page; }
  .figure, svg, tr { break-inside: avoid; }
  * { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
}
</style>
</head>
<body>
<div class="page">
<header class="report">
  <h1>Recovery report</h1>
  <p class="period" data-meta="period">{{ period_title }}</p>
  <dl class="meta">
    <dt>Cases started</dt><dd>from <span data-meta="since">{{ since }}</span> to <span data-meta="until">{{ until }}</span></dd>
    <dt>Generated</dt><dd><time datetime="{{ generated_at_iso }}" data-meta="generated_at">{{ generated_at }}</time></dd>
    <dt>Daemon</dt><dd data-meta="daemon">{{ daemon }}</dd>
    <dt>Workflows</dt><dd data-meta="workflow">{% if workflow_filter %}{{ workflow_filter }}{% else %}all{% endif %}</dd>
  </dl>
</header>
<main>
{%- if not workflows %}
<section class="empty" data-empty="true">
  <p class="nothing">Nothing to report.</p>
  <p>No case started in this period{% if workflow_filter %} for workflow {{ workflow_filter }}{% endif %}.</p>
</section>
{%- endif %}
{%- for w in workflows %}
<section class="workflow" data-workflow="{{ w.name }}" aria-labelledby="{{ w.anchor }}">
  <h2 id="{{ w.anchor }}">{{ w.name }}</h2>
  <div class="figures">
    <div class="figure">
      <div class="label">Recovery rate</div>
      <div class="value" data-metric="recovery_rate" data-workflow="{{ w.name }}" data-value="{{ w.rate.value }}">{{ w.rate.text }}</div>
      <div class="note">recovered ÷ (recovered + exhausted)</div>
    </div>
    <div class="figure">
      <div class="label">Recovered</div>
      <div class="value">{% for a in w.recovered_amount %}<span class="amount" data-metric="recovered_amount" data-workflow="{{ w.name }}" data-currency="{{ a.currency }}" data-value="{{ a.value }}">{{ a.text }}</span>{% else %}-{% endfor %}</div>
      <div class="note">from the recovered cases' events</div>
    </div>
    <div class="figure">
      <div class="label">Revenue at risk</div>
      <div class="value">{% for a in w.at_risk %}<span class="amount" data-metric="at_risk" data-workflow="{{ w.name }}" data-currency="{{ a.currency }}" data-value="{{ a.value }}">{{ a.text }}</span>{% else %}-{% endfor %}</div>
      <div class="note">over every case started</div>
    </div>
    <div class="figure">
      <div class="label">Median time to recovery</div>
      <div class="value" data-metric="median_time_to_recovery_secs" data-workflow="{{ w.name }}" data-value="{{ w.median.value }}">{{ w.median.text }}</div>
      <div class="note">from a case's start to the payment</div>
    </div>
  </div>

  <h3 id="{{ w.anchor }}-funnel">Recovery funnel</h3>
  <svg data-chart="funnel" data-workflow="{{ w.name }}" role="img" aria-labelledby="{{ w.anchor }}-funnel-title {{ w.anchor }}-funnel-desc"
       viewBox="0 0 {{ chart.width }} {{ w.funnel_height }}" preserveAspectRatio="xMinYMin meet">
    <title id="{{ w.anchor }}-funnel-title">Recovery funnel of {{ w.name }}</title>
    <desc id="{{ w.anchor }}-funnel-desc">{{ w.funnel_summary }}</desc>
    {%- for b in w.funnel %}
    <g class="stage">
      <title>{{ b.title }}: {{ b.count }} ({{ b.share }} of the cases started)</title>
      <text x="0" y="{{ b.y + chart.bar_height / 2 }}" dominant-baseline="middle">{{ b.label }}</text>
      <rect class="track" x="{{ b.x }}" y="{{ b.y }}" width="{{ chart.bar_width }}" height="{{ chart.bar_height }}" rx="3"></rect>
      <rect class="bar {{ b.stage }}" data-stage="{{ b.stage }}"{% if b.step is not none %} data-step="{{ b.step }}"{% endif %} data-value="{{ b.count }}"
            x="{{ b.x }}" y="{{ b.y }}" width="{{ b.width }}" height="{{ chart.bar_height }}" rx="3"></rect>
      <text class="count" x="{{ chart.label_width + chart.bar_width + 10 }}" y="{{ b.y + chart.bar_height / 2 }}" dominant-baseline="middle"
            data-metric="funnel" data-workflow="{{ w.name }}" data-stage="{{ b.stage }}"{% if b.step is not none %} data-step="{{ b.step }}"{% endif %} data-value="{{ b.count }}">{{ b.count }}</text>
      <text class="share" x="{{ chart.width }}" y="{{ b.y + chart.bar_height / 2 }}" dominant-baseline="middle" text-anchor="end">{{ b.share }}</text>
    </g>
    {%- endfor %}
  </svg>

  <h3>Outcomes</h3>
  <svg data-chart="outcomes" data-workflow="{{ w.name }}" role="img" aria-labelledby="{{ w.anchor }}-outcomes-title"
       viewBox="0 0 {{ chart.width }} {{ chart.bar_height }}" preserveAspectRatio="xMinYMin meet">
    <title id="{{ w.anchor }}-outcomes-title">Cases of {{ w.name }} by state: {{ w.outcomes_summary }}</title>
    {%- for b in w.outcomes %}
    <rect class="segment {{ b.stage }}" data-stage="{{ b.stage }}" data-value="{{ b.count }}" x="{{ b.x }}" y="0" width="{{ b.width }}" height="{{ chart.bar_height }}"><title>{{ b.title }} ({{ b.share }})</title></rect>
    {%- endfor %}
  </svg>
  <ul class="legend">
    <li class="started">Started <strong data-metric="started" data-workflow="{{ w.name }}" data-value="{{ w.started }}">{{ w.started }}</strong></li>
    {%- for metric, label, count in w.states %}
    <li class="{{ metric }}">{{ label }} <strong data-metric="{{ metric }}" data-workflow="{{ w.name }}" data-value="{{ count }}">{{ count }}</strong></li>
    {%- endfor %}
  </ul>

  {%- if w.steps %}
  <h3>Steps</h3>
  <table>
    <caption>Deliveries per step and channel; last touch: recoveries that followed this step's message as the last one sent.</caption>
    <thead>
      <tr><th scope="col">Step</th><th scope="col">Channel</th><th scope="col">Sent</th><th scope="col">Failed</th><th scope="col">Skipped</th><th scope="col">Pending</th><th scope="col">Last touch</th></tr>
    </thead>
    {%- for s in w.steps %}
    <tbody data-step="{{ s.name }}">
      {%- for c in s.channels %}
      <tr data-step="{{ s.name }}" data-channel="{{ c.channel }}">
        {%- if loop.first %}
        <th scope="rowgroup" rowspan="{{ s.channels | length }}">{{ s.number }}. {{ s.name }}<span class="contacted"><span data-metric="contacted" data-workflow="{{ w.name }}" data-step="{{ s.name }}" data-value="{{ s.contacted }}">{{ s.contacted }}</span> case{% if s.contacted != 1 %}s{% endif %} contacted</span></th>
        {%- endif %}
        <td class="channel">{{ c.channel }}</td>
        {%- for metric in ["sent", "failed", "skipped", "pending", "last_touch"] %}
        <td data-metric="{{ metric }}" data-workflow="{{ w.name }}" data-step="{{ s.name }}" data-channel="{{ c.channel }}" data-value="{{ c[metric] }}">{{ c[metric] }}</td>
        {%- endfor %}
      </tr>
      {%- endfor %}
    </tbody>
    {%- endfor %}
  </table>
  {%- endif %}
</section>
{%- endfor %}
</main>
<footer>
  <p>A case belongs to the period in which it started. The funnel counts cases: started, contacted at each step (sent at least one message there), recovered. Amounts are the events' <code>data.amount</code> per currency.</p>
  <p>dunningctl {{ version }} · the same figures as <code>dunningctl stats --json</code></p>
</footer>
</div>
</body>
</html>
"##;

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Header {
        Header {
            generated_at: "2026-01-19T09:30:00Z".parse().expect("time"),
            daemon: "/run/dunningd/admin.sock".into(),
            workflow: None,
        }
    }

    fn money(currency: &str, amount: i64) -> proto::Money {
        proto::Money {
            currency: currency.into(),
            amount,
            exact: amount.to_string(),
        }
    }

    fn channel(name: &str, sent: u64, last_touch: u64) -> proto::ChannelStats {
        proto::ChannelStats {
            channel: name.into(),
            sent,
            failed: 1,
            skipped: 2,
            pending: 3,
            last_touch,
        }
    }

    fn workflow(name: &str, step: &str, channel_name: &str) -> proto::WorkflowStats {
        proto::WorkflowStats {
            workflow: name.into(),
            started: 6,
            active: 1,
            paused: 0,
            recovered: 3,
            exhausted: 1,
            cancelled: 1,
            recovery_rate: Some(0.75),
            at_risk: vec![money("EUR", 4500), money("USD", 9100)],
            recovered_amount: vec![money("EUR", 3000), money("USD", 7400)],
            median_time_to_recovery_secs: Some(4 * 86_400),
            steps: vec![
                proto::StepStats {
                    index: 0,
                    name: "first-notice".into(),
                    contacted: 6,
                    channels: vec![channel("email", 6, 1), channel("in_app", 6, 1)],
                },
                proto::StepStats {
                    index: 1,
                    name: step.into(),
                    contacted: 4,
                    channels: vec![channel(channel_name, 4, 2)],
                },
            ],
        }
    }

    fn stats(workflows: Vec<proto::WorkflowStats>) -> proto::Stats {
        proto::Stats {
            since: "2026-01-01T00:00:00.000Z".into(),
            until: String::new(),
            workflows,
        }
    }

    fn render_ok(stats: &proto::Stats, header: &Header) -> String {
        render(stats, header).expect("renders")
    }

    /// What every page must never hold: anything that loads or runs.
    fn assert_self_contained(page: &str) {
        // Escaped names may hold the words (`src=x` as text), never the
        // markup: quotes and angle brackets are escaped.
        for banned in [
            "<script", "<link", "<img", "<iframe", "<object", "<embed", "<use", " src=\"",
            " href=\"", "url(", "@import",
        ] {
            assert!(!page.contains(banned), "page holds {banned:?}");
        }
        assert!(!page.contains("http://") && !page.contains("https://"));
    }

    #[test]
    fn hostile_names_are_escaped() {
        let hostile = r#"<script>alert("x")</script>"#;
        let step = r#""><img src=x onerror=alert(1)>"#;
        let channel = "sms' onmouseover='alert(2)";
        let mut w = workflow(hostile, step, channel);
        w.at_risk.push(money("<B>", 100));
        let header = Header {
            workflow: Some(hostile.into()),
            daemon: "<x>".into(),
            ..header()
        };
        let page = render_ok(&stats(vec![w]), &header);
        assert_self_contained(&page);
        assert!(page.contains("data-meta=\"daemon\">&lt;x&gt;</dd>"));
        assert!(page.contains("&lt;script&gt;alert(&quot;x&quot;)&lt;&#x2f;script&gt;"));
        assert!(page.contains("data-step=\"&quot;&gt;&lt;img src=x onerror=alert(1)&gt;\""));
        assert!(page.contains("data-channel=\"sms&#x27; onmouseover=&#x27;alert(2)\""));
        assert!(!page.contains("onmouseover='"));
        assert!(page.contains("&lt;B&gt; 1.00"), "currency escaped");
    }

    #[test]
    fn empty_stats_say_there_is_nothing_to_report() {
        let page = render_ok(&stats(vec![]), &header());
        assert_self_contained(&page);
        assert!(page.contains("Nothing to report."), "{page}");
        assert!(page.contains("data-empty=\"true\""));
        assert!(!page.contains("<svg"), "no chart without cases");
        assert!(!page.contains("data-metric"), "no figures without cases");
        let filtered = Header {
            workflow: Some("late-payment".into()),
            ..header()
        };
        let page = render_ok(&stats(vec![]), &filtered);
        assert!(page.contains("No case started in this period for workflow late-payment."));
    }

    #[test]
    fn header_names_period_time_and_daemon() {
        let page = render_ok(&stats(vec![workflow("pf", "reminder", "sms")]), &header());
        for expected in [
            "<title>Recovery report · cases started since 2026-01-01 00:00:00</title>",
            "from <span data-meta=\"since\">2026-01-01 00:00:00</span> to <span data-meta=\"until\">now</span>",
            "datetime=\"2026-01-19T09:30:00+00:00\" data-meta=\"generated_at\">2026-01-19 09:30 UTC</time>",
            "data-meta=\"daemon\">&#x2f;run&#x2f;dunningd&#x2f;admin.sock</dd>",
            "data-meta=\"workflow\">all</dd>",
        ] {
            assert!(page.contains(expected), "{expected}\n{page}");
        }
        let bounded = proto::Stats {
            until: "2026-02-01T00:00:00.000Z".into(),
            ..stats(vec![])
        };
        assert!(render_ok(&bounded, &header()).contains(
            "<title>Recovery report · cases started 2026-01-01 00:00:00 to 2026-02-01 00:00:00</title>"
        ));
    }

    #[test]
    fn figures_are_formatted_as_stats_does_and_tagged() {
        let mut w = workflow("pf", "reminder", "sms");
        w.at_risk.push(money("JPY", 1200));
        w.at_risk.push(money("KWD", 12345));
        let page = render_ok(&stats(vec![w]), &header());
        assert_self_contained(&page);
        for expected in [
            r#"data-metric="recovery_rate" data-workflow="pf" data-value="0.75">75.0%<"#,
            r#"data-metric="at_risk" data-workflow="pf" data-currency="USD" data-value="9100">$91.00<"#,
            r#"data-metric="at_risk" data-workflow="pf" data-currency="EUR" data-value="4500">€45.00<"#,
            r#"data-metric="at_risk" data-workflow="pf" data-currency="JPY" data-value="1200">¥1200<"#,
            r#"data-metric="at_risk" data-workflow="pf" data-currency="KWD" data-value="12345">KWD 12.345<"#,
            r#"data-metric="recovered_amount" data-workflow="pf" data-currency="USD" data-value="7400">$74.00<"#,
            r#"data-metric="median_time_to_recovery_secs" data-workflow="pf" data-value="345600">4d<"#,
            r#"data-metric="started" data-workflow="pf" data-value="6">6<"#,
            r#"data-metric="exhausted" data-workflow="pf" data-value="1">1<"#,
            r#"data-metric="last_touch" data-workflow="pf" data-step="reminder" data-channel="sms" data-value="2">2<"#,
            r#"data-metric="pending" data-workflow="pf" data-step="first-notice" data-channel="in_app" data-value="3">3<"#,
            r#"data-metric="contacted" data-workflow="pf" data-step="reminder" data-value="4">4<"#,
        ] {
            assert!(page.contains(expected), "{expected}");
        }
    }

    /// Regression for "safe with what customers bring": sums beyond int64
    /// show every digit (the daemon sends them in `exact`, `amount` clamped).
    #[test]
    fn sums_beyond_int64_show_every_digit() {
        let mut w = workflow("pf", "reminder", "sms");
        w.at_risk = vec![
            proto::Money {
                currency: "USD".into(),
                amount: i64::MAX,
                exact: "9907919180215090100".into(),
            },
            // From a daemon that sends no `exact`.
            proto::Money {
                currency: "EUR".into(),
                amount: 4500,
                exact: String::new(),
            },
        ];
        let page = render_ok(&stats(vec![w]), &header());
        for expected in [
            r#"data-currency="USD" data-value="9907919180215090100">$99079191802150901.00<"#,
            r#"data-currency="EUR" data-value="4500">€45.00<"#,
        ] {
            assert!(page.contains(expected), "{expected}");
        }
    }

    #[test]
    fn undecided_figures_read_as_dashes() {
        let mut w = workflow("pf", "reminder", "sms");
        w.recovery_rate = None;
        w.median_time_to_recovery_secs = None;
        w.recovered_amount.clear();
        let page = render_ok(&stats(vec![w]), &header());
        assert!(
            page.contains(r#"data-metric="recovery_rate" data-workflow="pf" data-value="">-<"#)
        );
        assert!(page.contains(
            r#"data-metric="median_time_to_recovery_secs" data-workflow="pf" data-value="">-<"#
        ));
        assert!(!page.contains(r#"data-metric="recovered_amount""#));
    }

    #[test]
    fn the_funnel_has_a_bar_per_stage_scaled_to_the_cases_started() {
        let w = workflow(
            "pf",
            "a step with a name far longer than the chart has room for",
            "sms",
        );
        let bars = funnel(&w);
        let got: Vec<(&str, u64, f64)> = bars
            .iter()
            .map(|b| (b.stage.as_str(), b.count, b.width))
            .collect();
        assert_eq!(
            got,
            [
                ("started", 6, 400.0),
                ("step", 6, 400.0),
                ("step", 4, 4.0 / 6.0 * 400.0),
                ("recovered", 3, 200.0),
            ]
        );
        assert_eq!(bars[2].label.chars().count(), LABEL_CHARS);
        assert!(bars[2].label.ends_with('…'));
        assert!(
            bars[2]
                .title
                .starts_with("2. a step with a name far longer")
        );
        let page = render_ok(&stats(vec![w]), &header());
        assert_eq!(page.matches("<rect class=\"bar ").count(), 4);
        // The outcome segments fill the bar: every case has one state.
        let segments = outcomes(
            &[
                ("recovered", "Recovered", 3),
                ("exhausted", "Exhausted", 1),
                ("paused", "Paused", 0),
            ],
            4,
        );
        let widths: Vec<(f64, f64)> = segments.iter().map(|b| (b.x, b.width)).collect();
        assert_eq!(widths, [(0.0, 540.0), (540.0, 180.0)]);
    }

    #[test]
    fn writes_replace_the_file_whole_and_name_the_path_on_failure() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("report.html");
        write_atomically(&path, "old").expect("write");
        write_atomically(&path, "new").expect("replace");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "new");
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(left, ["report.html"], "no temporary file left");

        let missing = dir.path().join("no-such-folder/report.html");
        let error = write_atomically(&missing, "x")
            .expect_err("no folder")
            .to_string();
        assert!(
            error.starts_with(&format!("cannot write '{}': ", missing.display())),
            "{error}"
        );
        // A folder in the way: the error names it, and nothing is left behind.
        let folder = dir.path().join("folder");
        std::fs::create_dir(&folder).expect("mkdir");
        let error = write_atomically(&folder, "x")
            .expect_err("a folder")
            .to_string();
        assert!(
            error.starts_with(&format!("cannot write '{}': ", folder.display())),
            "{error}"
        );
        let left = std::fs::read_dir(dir.path()).expect("list").count();
        assert_eq!(left, 2, "report.html and folder only");
    }
}
