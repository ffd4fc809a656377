//! `dunningctl report` end to end: cases run through the engine clock, the
//! page is written, opened from its file in headless chromium, and every
//! figure the browser shows (read through the page's `data-*` hooks) equals
//! what `dunningctl stats --json` says; the page loads nothing.

use std::collections::BTreeMap;

use dunningd_e2e::browser::Browser;
use dunningd_e2e::daemon::{Backend, Setup, TestDaemon};
use dunningd_e2e::fixtures::{WORKFLOW, event};
use dunningd_e2e::on_both_backends;
use serde_json::Value;

use crate::recoveries::{CASE_STATES, Recoveries, refuses_yesterday};

/// A step name that would run as a script if the page did not escape it.
const HOSTILE_STEP: &str = r#"reminder <script>document.title="pwned"</script> & co"#;

fn euros(id: &str, kind: &str, customer: &str, subject: &str, amount: u64) -> String {
    event(id, kind, customer, subject, amount).replace("\"USD\"", "\"EUR\"")
}

/// A figure's identity on the page: metric, workflow, step, channel,
/// currency, funnel stage.
type Key = (
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
);

/// A figure's raw value (`data-value`) and the text a person reads.
type Shown = (String, String);

fn key(metric: &str, workflow: &str) -> Key {
    (metric.into(), workflow.into(), None, None, None, None)
}

/// Every figure the page should show, computed from `stats --json`.
fn expected_figures(stats: &Value) -> BTreeMap<Key, Shown> {
    let mut figures = BTreeMap::new();
    let count = |n: &Value| {
        let n = n.as_u64().unwrap_or(0).to_string();
        (n.clone(), n)
    };
    for w in stats["workflows"].as_array().expect("workflows") {
        let name = w["workflow"].as_str().expect("name");
        for state in CASE_STATES {
            figures.insert(key(state, name), count(&w[state]));
        }
        let rate = w["recovery_rate"].as_f64();
        figures.insert(
            key("recovery_rate", name),
            (
                rate.map(|r| r.to_string()).unwrap_or_default(),
                rate.map_or("-".into(), |r| format!("{:.1}%", r * 100.0)),
            ),
        );
        let median = w["median_time_to_recovery_secs"].as_i64();
        figures.insert(
            key("median_time_to_recovery_secs", name),
            (
                median.map(|s| s.to_string()).unwrap_or_default(),
                median.map_or("-".into(), |s| {
                    dunningd::duration::format(std::time::Duration::from_secs(s as u64))
                }),
            ),
        );
        for metric in ["at_risk", "recovered_amount"] {
            for m in w[metric].as_array().expect("amounts") {
                let currency = m["currency"].as_str().expect("currency");
                // A string of digits: exact however large.
                let amount: i128 = m["amount"]
                    .as_str()
                    .and_then(|a| a.parse().ok())
                    .expect("amount");
                let mut k = key(metric, name);
                k.4 = Some(currency.into());
                figures.insert(
                    k,
                    (
                        amount.to_string(),
                        dunningd::workflow::format_minor(amount, currency),
                    ),
                );
            }
        }
        let mut stage = |stage: &str, step: Option<&str>, n: &Value| {
            let mut k = key("funnel", name);
            k.2 = step.map(Into::into);
            k.5 = Some(stage.into());
            figures.insert(k, count(n));
        };
        stage("started", None, &w["started"]);
        for s in w["steps"].as_array().expect("steps") {
            stage("step", s["name"].as_str(), &s["contacted"]);
        }
        stage("recovered", None, &w["recovered"]);
        for s in w["steps"].as_array().expect("steps") {
            let step = s["name"].as_str().expect("step name");
            let mut k = key("contacted", name);
            k.2 = Some(step.into());
            figures.insert(k, count(&s["contacted"]));
            for c in s["channels"].as_array().expect("channels") {
                for metric in ["sent", "failed", "skipped", "pending", "last_touch"] {
                    let mut k = key(metric, name);
                    k.2 = Some(step.into());
                    k.3 = c["channel"].as_str().map(Into::into);
                    figures.insert(k, count(&c[metric]));
                }
            }
        }
    }
    figures
}

/// What the browser shows: every `[data-metric]` element, and facts about
/// the page as loaded.
const READ_PAGE: &str = r#"
const attr = (e, name) => e.getAttribute('data-' + name);
return {
  figures: Array.from(document.querySelectorAll('[data-metric]')).map(e => [
    attr(e, 'metric'), attr(e, 'workflow'), attr(e, 'step'), attr(e, 'channel'),
    attr(e, 'currency'), attr(e, 'stage'), attr(e, 'value'), e.textContent
  ]),
  resources: performance.getEntriesByType('resource').length,
  scripts: document.scripts.length,
  title: document.title,
  funnels: Array.from(document.querySelectorAll('svg[data-chart="funnel"]')).map(svg => ({
    workflow: attr(svg, 'workflow'),
    bars: svg.querySelectorAll('rect[data-stage]').length,
    label: svg.getAttribute('aria-labelledby').split(' ')
      .map(id => document.getElementById(id).textContent).join(' '),
    width: svg.getBoundingClientRect().width
  })),
  empty: document.querySelector('[data-empty]') !== null,
  text: document.body.innerText
};
"#;

/// One funnel chart as the browser drew it.
struct Funnel {
    workflow: String,
    bars: u64,
    /// Its accessible name: the SVG's title and description.
    label: String,
    width: f64,
}

/// The page as the browser loaded it (see [`READ_PAGE`]).
struct Page {
    figures: BTreeMap<Key, Shown>,
    resources: u64,
    scripts: u64,
    title: String,
    funnels: Vec<Funnel>,
    empty: bool,
    text: String,
}

impl Page {
    fn from_browser(facts: &Value) -> Page {
        let text = |v: &Value| v.as_str().map(str::to_string);
        let mut figures = BTreeMap::new();
        for f in facts["figures"].as_array().expect("figures") {
            let key = (
                text(&f[0]).unwrap_or_default(),
                text(&f[1]).unwrap_or_default(),
                text(&f[2]),
                text(&f[3]),
                text(&f[4]),
                text(&f[5]),
            );
            let shown = (
                text(&f[6]).unwrap_or_default(),
                text(&f[7]).unwrap_or_default(),
            );
            assert!(
                figures.insert(key.clone(), shown).is_none(),
                "two figures for {key:?}"
            );
        }
        Page {
            figures,
            resources: facts["resources"].as_u64().expect("resources"),
            scripts: facts["scripts"].as_u64().expect("scripts"),
            title: text(&facts["title"]).unwrap_or_default(),
            funnels: facts["funnels"]
                .as_array()
                .expect("funnels")
                .iter()
                .map(|f| Funnel {
                    workflow: text(&f["workflow"]).unwrap_or_default(),
                    bars: f["bars"].as_u64().expect("bars"),
                    label: text(&f["label"]).unwrap_or_default(),
                    width: f["width"].as_f64().expect("width"),
                })
                .collect(),
            empty: facts["empty"].as_bool().expect("empty"),
            text: text(&facts["text"]).unwrap_or_default(),
        }
    }
}

async fn open(browser: &fantoccini::Client, path: &std::path::Path) -> Page {
    browser
        .goto(&format!("file://{}", path.display()))
        .await
        .expect("open the report");
    let facts = browser.execute(READ_PAGE, vec![]).await.expect("read page");
    Page::from_browser(&facts)
}

on_both_backends!(the_report_shows_what_stats_says_and_loads_nothing);

async fn the_report_shows_what_stats_says_and_loads_nothing(backend: Backend) {
    let Some(chromium) = Browser::start().await else {
        return;
    };
    let workflow = WORKFLOW.replace("name: reminder", &format!("name: '{HOSTILE_STEP}'"));
    let daemon =
        TestDaemon::start(Setup::default().workflow("pf.yaml", &workflow).on(&backend)).await;
    // The stats tests' timeline, with a customer paying in euros (cus_5,
    // failed at the start, paid on day 4) and a new case on day 4 (cus_6),
    // still running at the end.
    Recoveries::default()
        .at_start(euros("f5", "payment_failed", "cus_5", "inv_5", 3000))
        .on_day_four(euros("p5", "payment_succeeded", "cus_5", "inv_5", 3000))
        .on_day_four(euros("f6", "payment_failed", "cus_6", "inv_6", 1500))
        .run(&daemon)
        .await;
    daemon.advance("11d").await;

    let stats: Value =
        serde_json::from_str(&daemon.ctl_ok(&["stats", "--json"])).expect("stats JSON");
    let w = &stats["workflows"][0];
    let counts: Vec<u64> = ["started", "active", "recovered", "exhausted", "cancelled"]
        .iter()
        .map(|k| w[k].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(counts, [6, 1, 3, 1, 1], "the timeline as planned: {w}");
    assert_eq!(w["at_risk"].as_array().map(Vec::len), Some(2), "{w}");

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("report.html");
    let out = path.display().to_string();
    let said = daemon.ctl_ok(&["report", "--out", &out]);
    assert_eq!(said.trim(), format!("wrote {out} (1 workflow)"));

    let browser = chromium.client();
    let page = open(&browser, &path).await;
    // For a person to look at: the whole page.
    browser
        .set_window_size(1000, 2600)
        .await
        .expect("window size");
    let png = browser.screenshot().await.expect("screenshot");
    let backend_name = match &backend {
        Backend::Sqlite => "sqlite",
        Backend::Postgres(_) => "postgres",
    };
    let shots = dunningd_e2e::workspace_root().join("target/test-screenshots");
    std::fs::create_dir_all(&shots).expect("screenshot folder");
    std::fs::write(shots.join(format!("report-{backend_name}.png")), png).expect("save screenshot");

    // Every figure on the page, and only those, as the JSON says.
    let expected = expected_figures(&stats);
    let shown = &page.figures;
    let differ: Vec<_> = expected
        .iter()
        .filter(|(k, v)| shown.get(*k) != Some(*v))
        .map(|(k, v)| format!("{k:?}: expected {v:?}, page shows {:?}", shown.get(k)))
        .chain(
            shown
                .keys()
                .filter(|k| !expected.contains_key(*k))
                .map(|k| format!("{k:?}: on the page only")),
        )
        .collect();
    assert!(differ.is_empty(), "{}", differ.join("\n"));
    // The spot checks a reader would make.
    for (figure, text) in [
        (key("recovery_rate", "payment-failed"), "75.0%"),
        (key("median_time_to_recovery_secs", "payment-failed"), "4d"),
    ] {
        assert_eq!(shown[&figure].1, text);
    }
    let mut euros_recovered = key("recovered_amount", "payment-failed");
    euros_recovered.4 = Some("EUR".into());
    assert_eq!(shown[&euros_recovered], ("3000".into(), "€30.00".into()));

    // Self-contained: nothing fetched, nothing run; the hostile step name
    // shows as text.
    assert_eq!(page.resources, 0, "the page loaded resources");
    assert_eq!(page.scripts, 0);
    assert!(page.title.starts_with("Recovery report"), "{}", page.title);
    assert!(page.text.contains(HOSTILE_STEP), "{}", page.text);
    // One funnel bar per stage: started, each step, recovered.
    let steps = w["steps"].as_array().map_or(0, Vec::len) as u64;
    assert_eq!(page.funnels.len(), 1);
    let funnel = &page.funnels[0];
    assert_eq!(funnel.workflow, "payment-failed");
    assert_eq!(funnel.bars, steps + 2);
    assert!(
        funnel
            .label
            .starts_with("Recovery funnel of payment-failed Cases started: 6, 1. first-notice: 6"),
        "{}",
        funnel.label
    );
    assert!(funnel.width > 100.0, "the chart is drawn: {}", funnel.width);
    assert!(!page.empty);

    // A period without cases: a page that says so, not an empty chart.
    let empty = dir.path().join("empty.html");
    daemon.ctl_ok(&[
        "report",
        "--since",
        "2026-03-01",
        "--out",
        &empty.display().to_string(),
    ]);
    let page = open(&browser, &empty).await;
    assert!(page.empty, "{}", page.text);
    assert!(page.text.contains("Nothing to report."), "{}", page.text);
    assert!(page.funnels.is_empty() && page.figures.is_empty());
    assert_eq!(page.resources, 0);
    browser.close().await.expect("close the browser");

    // Refusals: the bounds are parsed as for `stats`; an unwritable path is named.
    refuses_yesterday(&daemon, &["report", "--out", &out]);
    let nowhere = dir.path().join("missing/report.html");
    let bad = daemon.ctl(&["report", "--out", &nowhere.display().to_string()]);
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.starts_with(&format!(
            "dunningctl: cannot write '{}': ",
            nowhere.display()
        )),
        "{stderr}"
    );
}
