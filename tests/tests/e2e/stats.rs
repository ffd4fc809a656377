//! Recovery reporting end to end: cases run through the engine clock, then
//! `dunningctl stats` (table and JSON) and the gRPC API agree with what
//! happened.

use dunningd::proto;
use dunningd_e2e::daemon::{Backend, Setup, TestDaemon};
use dunningd_e2e::fixtures::{WORKFLOW, event};
use dunningd_e2e::on_both_backends;

use crate::recoveries::{CASE_STATES, Recoveries, refuses_yesterday};

on_both_backends!(
    stats_report_recoveries_revenue_and_last_touch,
    sums_of_the_largest_amounts_are_exact
);

async fn stats_report_recoveries_revenue_and_last_touch(backend: Backend) {
    let daemon =
        TestDaemon::start(Setup::default().workflow("pf.yaml", WORKFLOW).on(&backend)).await;
    // cus_1 and cus_2 pay, cus_4 is cancelled, cus_3 runs to the end.
    Recoveries::default().run(&daemon).await;
    daemon.advance("14d").await;

    let json: serde_json::Value =
        serde_json::from_str(&daemon.ctl_ok(&["stats", "--json"])).expect("stats JSON");
    let w = &json["workflows"][0];
    assert_eq!(w["workflow"], "payment-failed");
    let counts: Vec<u64> = CASE_STATES
        .iter()
        .map(|k| w[k].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(counts, [4, 0, 0, 2, 1, 1], "{w}");
    // Two of the three cases that ran their course paid.
    let rate = w["recovery_rate"].as_f64().expect("a rate");
    assert!((rate - 2.0 / 3.0).abs() < 1e-9, "{rate}");
    let money = |key: &str| {
        w[key]
            .as_array()
            .expect("amounts")
            .iter()
            .map(|m| {
                (
                    m["currency"].as_str().unwrap_or("").to_string(),
                    m["amount"].as_str().and_then(|a| a.parse::<i64>().ok()),
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(
        money("at_risk"),
        [("USD".to_string(), Some(4900 + 2500 + 1000 + 700))]
    );
    assert_eq!(
        money("recovered_amount"),
        [("USD".to_string(), Some(4900 + 2500))]
    );

    // Per step and channel: what was sent, and what each recovery followed.
    let stats = daemon
        .client()
        .await
        .get_stats(proto::GetStatsRequest::default())
        .await
        .expect("stats")
        .into_inner();
    let w = &stats.workflows[0];
    // 1 day and 4 days: the median of two is the lower.
    assert_eq!(w.median_time_to_recovery_secs, Some(86_400));
    let rows: Vec<(String, String, [u64; 5])> = w
        .steps
        .iter()
        .flat_map(|s| {
            s.channels.iter().map(|c| {
                (
                    s.name.clone(),
                    c.channel.clone(),
                    [c.sent, c.failed, c.skipped, c.pending, c.last_touch],
                )
            })
        })
        .collect();
    let row = |step: &str, channel: &str, counts: [u64; 5]| {
        (step.to_string(), channel.to_string(), counts)
    };
    assert_eq!(
        rows,
        [
            // The email and the banner went at once: both are cus_1's
            // last touch.
            row("first-notice", "email", [4, 0, 0, 0, 1]),
            row("first-notice", "in_app", [4, 0, 0, 0, 1]),
            // Sent on day 3 to all but cus_1, who had paid.
            row("reminder", "sms", [3, 0, 1, 0, 1]),
            row("suspend", "webhook", [1, 0, 3, 0, 0]),
        ]
    );

    // Cases written to at each step: once each, though the first notice
    // went by email and in-app.
    let contacted: Vec<(&str, u64)> = w
        .steps
        .iter()
        .map(|s| (s.name.as_str(), s.contacted))
        .collect();
    assert_eq!(
        contacted,
        [("first-notice", 4), ("reminder", 3), ("suspend", 1)]
    );

    let table = daemon.ctl_ok(&["stats"]);
    assert!(table.contains("payment-failed"), "{table}");
    assert!(
        table.contains(
            "recovery rate 66.7% · at risk $91.00 · recovered $74.00 · median time to recovery 1d"
        ),
        "{table}"
    );

    // A period that starts after the cases did holds none; bad bounds are refused.
    let later = daemon.ctl_ok(&["stats", "--since", "2026-01-06"]);
    assert!(later.contains("no cases"), "{later}");
    let filtered = daemon.ctl_ok(&["stats", "--since", "30d", "--workflow", "payment-failed"]);
    assert!(filtered.contains("started 4"), "{filtered}");
    refuses_yesterday(&daemon, &["stats"]);
    let reversed = daemon.ctl(&["stats", "--since", "2026-02-01", "--until", "2026-01-01"]);
    assert!(!reversed.status.success());
}

/// Nothing is sent before 30 days, so cases stay quiet until they recover.
const QUIET: &str = r#"
name: quiet
trigger: { event: payment_failed }
exit_on: [payment_succeeded]
steps:
  - name: much-later
    after: 30d
    send: [{ channel: email, template: t }]
templates:
  t: { subject: "due", text: "{{ data.amount | money(data.currency) }}" }
"#;

/// The largest amount an event may carry (2^53 - 1 minor units).
const MAX_AMOUNT: u64 = (1 << 53) - 1;

/// Regression for "safe with what customers bring": 1100 recovered cases of
/// the largest amount ingest accepts sum beyond i64 (the stats builder's
/// sum overflowed). The totals are exact in `stats --json` (a string of
/// digits), in `stats`, in the report, and the metrics still scrape.
async fn sums_of_the_largest_amounts_are_exact(backend: Backend) {
    const CASES: u64 = 1100;
    let port = dunningd_e2e::free_port();
    let mut setup = Setup::default().workflow("quiet.yaml", QUIET).on(&backend);
    setup.extra_config = format!("metrics:\n  listen: 127.0.0.1:{port}\n");
    let daemon = TestDaemon::start(setup).await;
    let events = |kind: &str, prefix: &str| -> Vec<String> {
        (0..CASES)
            .map(|i| {
                let (customer, invoice) = (format!("cus_{i}"), format!("inv_{i}"));
                event(
                    &format!("{prefix}{i}"),
                    kind,
                    &customer,
                    &invoice,
                    MAX_AMOUNT,
                )
            })
            .collect()
    };
    daemon.send_events(events("payment_failed", "f")).await;
    daemon.advance("1d").await;
    daemon.send_events(events("payment_succeeded", "p")).await;

    let total = u128::from(CASES) * u128::from(MAX_AMOUNT);
    assert!(total > i64::MAX as u128, "the test must pass i64");
    let json: serde_json::Value =
        serde_json::from_str(&daemon.ctl_ok(&["stats", "--json"])).expect("stats JSON");
    let w = &json["workflows"][0];
    assert_eq!(w["recovered"], CASES, "{w}");
    for key in ["at_risk", "recovered_amount"] {
        assert_eq!(
            w[key],
            serde_json::json!([{ "currency": "USD", "amount": total.to_string() }]),
            "{key}"
        );
    }
    // $99079191802150901.00: the total in dollars and cents.
    let dollars = format!("${}.{:02}", total / 100, total % 100);
    let text = daemon.ctl_ok(&["stats"]);
    assert!(
        text.contains(&format!("at risk {dollars} · recovered {dollars}")),
        "{text}"
    );
    daemon.ctl_ok(&["report", "--out", "report.html"]);
    let page = std::fs::read_to_string(daemon.path("report.html")).expect("report");
    assert!(
        page.contains(&format!(
            r#"data-metric="recovered_amount" data-workflow="quiet" data-currency="USD" data-value="{total}">{dollars}<"#
        )),
        "{page}"
    );
    let metrics = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .expect("scrape");
    assert!(metrics.status().is_success());
    let metrics = metrics.text().await.expect("metrics text");
    assert!(
        metrics.contains(&format!(
            "dunningd_cases{{workflow=\"quiet\",state=\"recovered\"}} {CASES}"
        )),
        "{metrics}"
    );
}
