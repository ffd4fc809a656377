//! The recovery timeline the stats and report tests both read, and the
//! checks both make of it: one scenario, so that what `dunningctl stats`
//! says and what the report shows are proven on the same cases.

use dunningd_e2e::daemon::TestDaemon;
use dunningd_e2e::fixtures::event;

/// The case counts `stats --json` gives for each workflow, in its order.
pub const CASE_STATES: [&str; 6] = [
    "started",
    "active",
    "paused",
    "recovered",
    "exhausted",
    "cancelled",
];

/// Failed payments on [`dunningd_e2e::fixtures::WORKFLOW`] at 2026-01-05
/// 09:00 and what follows: `cus_1` ($49.00) pays a day later, after the
/// first email and banner; `cus_2` ($25.00) pays on day 4, after the SMS
/// reminder of day 3; `cus_4`'s case ($7.00) is cancelled by an operator on
/// day 4; `cus_3`'s ($10.00) runs on. Events added with
/// [`Recoveries::at_start`] go with the first failed payments, those added
/// with [`Recoveries::on_day_four`] with `cus_2`'s payment.
#[derive(Default)]
pub struct Recoveries {
    at_start: Vec<String>,
    on_day_four: Vec<String>,
}

impl Recoveries {
    pub fn at_start(mut self, event: String) -> Recoveries {
        self.at_start.push(event);
        self
    }

    pub fn on_day_four(mut self, event: String) -> Recoveries {
        self.on_day_four.push(event);
        self
    }

    /// Runs the timeline up to day 4, `cus_4`'s case cancelled; the test
    /// advances the clock to the end it wants.
    pub async fn run(self, daemon: &TestDaemon) {
        let mut failed = vec![
            event("f1", "payment_failed", "cus_1", "inv_1", 4900),
            event("f2", "payment_failed", "cus_2", "inv_2", 2500),
            event("f3", "payment_failed", "cus_3", "inv_3", 1000),
            event("f4", "payment_failed", "cus_4", "inv_4", 700),
        ];
        failed.extend(self.at_start);
        daemon.send_and_settle(failed).await;
        daemon.advance("1d").await;
        let paid = event("p1", "payment_succeeded", "cus_1", "inv_1", 4900);
        daemon.send_and_settle(vec![paid]).await;
        daemon.advance("3d").await;
        let mut day_four = vec![event("p2", "payment_succeeded", "cus_2", "inv_2", 2500)];
        day_four.extend(self.on_day_four);
        daemon.send_and_settle(day_four).await;
        let cases = daemon.cases_of("cus_4").await;
        let case = cases.first().expect("cus_4's case");
        daemon.ctl_ok(&["cases", "cancel", &case.id]);
    }
}

/// Runs `dunningctl` with `args` and a period since "yesterday", and checks
/// that it is refused, the message naming the value and the forms a time
/// takes (the bounds of `stats` and `report` are parsed alike).
pub fn refuses_yesterday(daemon: &TestDaemon, args: &[&str]) {
    let args = [args, &["--since", "yesterday"]].concat();
    let refused = daemon.ctl(&args);
    assert!(!refused.status.success(), "{args:?} was accepted");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains(
            "since: 'yesterday' is no RFC 3339 time, date (2026-01-31) or duration (30d)"
        ),
        "{stderr}"
    );
}
