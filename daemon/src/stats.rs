//! Recovery reporting: what each workflow and step recovered, over a period.
//!
//! The stores stream one row per (case, delivery) — cases started in the
//! period, ordered by case — into a [`StatsBuilder`], so a report over
//! millions of cases needs memory only per workflow and step, and both
//! backends share every rule below.
//!
//! Definitions (also in the README):
//! - A case belongs to the period in which it *started*.
//! - Recovery rate: recovered ÷ (recovered + exhausted): of the cases that
//!   ran their course, the share that paid. Active, paused and cancelled
//!   cases are left out (undecided, or ended by an operator).
//! - Revenue at risk: the sum of the trigger events' `data.amount` (minor
//!   units) per `data.currency`, over every case; revenue recovered: the same
//!   over recovered cases. Events without a numeric amount count nowhere.
//!   Sums are `i128`: ingest bounds an amount to ±(2^53 - 1), so no number
//!   of cases a store can hold makes them overflow (that would take 2^74).
//! - Time to recovery: from the case's start to the event that recovered it.
//! - Last touch: the step of the last message sent before the recovery; each
//!   of that step's channels that had sent by then is credited (a step that
//!   writes by email and in-app at once credits both, so the channels'
//!   counts may add up to more than the recoveries). A case recovered
//!   before any message has no touch.
//! - Contacted (per step): the cases sent at least one message at that step,
//!   on any of its channels (fallbacks included); a case counts once per
//!   step, however many channels wrote. The channels' `sent` counts
//!   messages, so they cannot give this figure.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use crate::model::{CaseState, DeliveryStatus};

/// Which cases a report covers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatsFilter {
    pub workflow: Option<String>,
    /// Cases started at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Cases started before this time.
    pub until: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stats {
    pub workflows: Vec<WorkflowStats>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct WorkflowStats {
    pub workflow: String,
    pub started: u64,
    pub by_state: BTreeMap<CaseState, u64>,
    /// `None` until a case has recovered or exhausted.
    pub recovery_rate: Option<f64>,
    /// Minor units per currency; exact (see the module header).
    pub at_risk: BTreeMap<String, i128>,
    pub recovered_amount: BTreeMap<String, i128>,
    pub median_time_to_recovery_secs: Option<i64>,
    pub steps: Vec<StepStats>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct StepStats {
    pub index: u32,
    pub name: String,
    /// Cases sent at least one message at this step.
    pub contacted: u64,
    pub channels: BTreeMap<String, ChannelCounts>,
}

/// One step's deliveries on one channel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChannelCounts {
    pub sent: u64,
    pub failed: u64,
    pub skipped: u64,
    /// Scheduled, retrying or sending.
    pub pending: u64,
    /// Recoveries whose last touch this was.
    pub last_touch: u64,
}

/// One row of a store's stats query: a case (repeated for each of its
/// deliveries) and one delivery, if it has any.
#[derive(Debug, Clone)]
pub struct StatsRow {
    pub case_id: String,
    pub workflow: String,
    pub state: CaseState,
    pub started_ms: i64,
    /// When the case last changed: for a finished case, when it finished.
    pub updated_ms: i64,
    /// `data.amount` as stored (any JSON scalar, as text).
    pub amount: Option<String>,
    pub currency: Option<String>,
    pub delivery: Option<StatsDelivery>,
}

#[derive(Debug, Clone)]
pub struct StatsDelivery {
    pub step_index: u32,
    pub step: String,
    pub channel: String,
    pub status: DeliveryStatus,
    pub sent_ms: Option<i64>,
}

/// Minor units from a JSON scalar: `4900`, `"4900"`, `4900.0`.
fn minor_units(amount: &str) -> Option<i64> {
    let amount = amount.trim().trim_matches('"');
    amount.parse::<i64>().ok().or_else(|| {
        amount
            .parse::<f64>()
            .ok()
            .filter(|f| f.is_finite() && f.fract() == 0.0 && f.abs() < 9.0e15)
            .map(|f| f as i64)
    })
}

#[derive(Default)]
struct Building {
    stats: WorkflowStats,
    recovery_secs: Vec<i64>,
    steps: BTreeMap<u32, StepStats>,
}

/// Folds [`StatsRow`]s, given grouped by case, into [`Stats`].
#[derive(Default)]
pub struct StatsBuilder {
    workflows: BTreeMap<String, Building>,
    current: Option<StatsRow>,
    touches: Vec<StatsDelivery>,
}

impl StatsBuilder {
    pub fn add(&mut self, mut row: StatsRow) {
        let delivery = row.delivery.take();
        if self.current.as_ref().map(|c| &c.case_id) != Some(&row.case_id) {
            self.finish_case();
            self.current = Some(row);
        }
        self.touches.extend(delivery);
    }

    fn finish_case(&mut self) {
        let Some(case) = self.current.take() else {
            return;
        };
        // Taken for the borrow, given back (emptied) to keep its allocation.
        let mut deliveries = std::mem::take(&mut self.touches);
        let building = self
            .workflows
            .entry(case.workflow.clone())
            .or_insert_with(|| Building {
                stats: WorkflowStats {
                    workflow: case.workflow.clone(),
                    ..Default::default()
                },
                ..Default::default()
            });
        let w = &mut building.stats;
        w.started += 1;
        *w.by_state.entry(case.state).or_default() += 1;
        let recovered = case.state == CaseState::Recovered;
        if let (Some(amount), Some(currency)) = (
            case.amount.as_deref().and_then(minor_units).map(i128::from),
            case.currency.as_deref(),
        ) {
            let currency = currency.to_uppercase();
            if recovered {
                *w.recovered_amount.entry(currency.clone()).or_default() += amount;
            }
            *w.at_risk.entry(currency).or_default() += amount;
        }
        if recovered {
            building
                .recovery_secs
                .push((case.updated_ms - case.started_ms).max(0) / 1000);
        }
        let before_recovery = |d: &&StatsDelivery| {
            d.status == DeliveryStatus::Sent && d.sent_ms.is_some_and(|t| t <= case.updated_ms)
        };
        let last_step = deliveries
            .iter()
            .filter(before_recovery)
            .max_by_key(|d| (d.sent_ms, d.step_index))
            .map(|d| d.step_index)
            .filter(|_| recovered);
        for (i, d) in deliveries.iter().enumerate() {
            let step = building
                .steps
                .entry(d.step_index)
                .or_insert_with(|| StepStats {
                    index: d.step_index,
                    name: d.step.clone(),
                    contacted: 0,
                    channels: BTreeMap::new(),
                });
            // Once per case and step: only the step's first sent delivery counts.
            if d.status == DeliveryStatus::Sent
                && !deliveries[..i]
                    .iter()
                    .any(|e| e.step_index == d.step_index && e.status == DeliveryStatus::Sent)
            {
                step.contacted += 1;
            }
            let counts = step.channels.entry(d.channel.clone()).or_default();
            match d.status {
                DeliveryStatus::Sent => counts.sent += 1,
                DeliveryStatus::Failed => counts.failed += 1,
                DeliveryStatus::Skipped => counts.skipped += 1,
                DeliveryStatus::Scheduled | DeliveryStatus::Retrying | DeliveryStatus::Sending => {
                    counts.pending += 1
                }
            }
            if last_step == Some(d.step_index) && before_recovery(&d) {
                counts.last_touch += 1;
            }
        }
        deliveries.clear();
        self.touches = deliveries;
    }

    pub fn finish(mut self) -> Stats {
        self.finish_case();
        let workflows = self
            .workflows
            .into_values()
            .map(|mut b| {
                let recovered = b.stats.by_state.get(&CaseState::Recovered).copied();
                let exhausted = b.stats.by_state.get(&CaseState::Exhausted).copied();
                let decided = recovered.unwrap_or(0) + exhausted.unwrap_or(0);
                b.stats.recovery_rate =
                    (decided > 0).then(|| recovered.unwrap_or(0) as f64 / decided as f64);
                b.stats.median_time_to_recovery_secs = median(&mut b.recovery_secs);
                b.stats.steps = b.steps.into_values().collect();
                b.stats
            })
            .collect();
        Stats { workflows }
    }
}

/// The median (the lower middle of an even count).
fn median(values: &mut [i64]) -> Option<i64> {
    if values.is_empty() {
        return None;
    }
    let middle = (values.len() - 1) / 2;
    Some(*values.select_nth_unstable(middle).1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(
        case: &str,
        state: CaseState,
        amount: &str,
        delivery: Option<StatsDelivery>,
    ) -> StatsRow {
        StatsRow {
            case_id: case.into(),
            workflow: "pf".into(),
            state,
            started_ms: 0,
            updated_ms: 3_600_000,
            amount: Some(amount.into()),
            currency: Some("eur".into()),
            delivery,
        }
    }

    fn sent(step: u32, channel: &str, at_ms: i64) -> Option<StatsDelivery> {
        Some(StatsDelivery {
            step_index: step,
            step: format!("step{step}"),
            channel: channel.into(),
            status: DeliveryStatus::Sent,
            sent_ms: Some(at_ms),
        })
    }

    #[test]
    fn rates_amounts_medians_and_last_touch() {
        let mut b = StatsBuilder::default();
        // Recovered after the SMS and in-app of step 1 (the email of step 2
        // came later).
        b.add(row("c1", CaseState::Recovered, "4900", sent(0, "email", 0)));
        b.add(row(
            "c1",
            CaseState::Recovered,
            "4900",
            sent(1, "sms", 1_000),
        ));
        b.add(row(
            "c1",
            CaseState::Recovered,
            "4900",
            sent(1, "in_app", 1_000),
        ));
        b.add(row(
            "c1",
            CaseState::Recovered,
            "4900",
            sent(2, "email", 7_200_000),
        ));
        // Recovered before any message: no touch.
        b.add(row("c2", CaseState::Recovered, "100.0", None));
        b.add(row(
            "c3",
            CaseState::Exhausted,
            "\"250\"",
            sent(0, "email", 0),
        ));
        b.add(row("c4", CaseState::Cancelled, "n/a", None));
        b.add(row("c5", CaseState::Active, "1", None));
        let stats = b.finish();
        assert_eq!(stats.workflows.len(), 1);
        let w = &stats.workflows[0];
        assert_eq!((w.workflow.as_str(), w.started), ("pf", 5));
        assert_eq!(w.by_state[&CaseState::Recovered], 2);
        assert_eq!(w.recovery_rate, Some(2.0 / 3.0));
        assert_eq!(w.at_risk["EUR"], 4900 + 100 + 250 + 1);
        assert_eq!(w.recovered_amount["EUR"], 5000);
        assert_eq!(w.median_time_to_recovery_secs, Some(3600));
        let counts = |step: usize, channel: &str| w.steps[step].channels[channel];
        assert_eq!(counts(0, "email").sent, 2);
        assert_eq!(counts(0, "email").last_touch, 0);
        assert_eq!(counts(1, "sms").last_touch, 1);
        assert_eq!(counts(1, "in_app").last_touch, 1);
        assert_eq!(counts(2, "email").last_touch, 0, "sent after the recovery");
        // c1 and c3 got step 0's email; c1 got step 1 on two channels but
        // counts once.
        let contacted: Vec<u64> = w.steps.iter().map(|s| s.contacted).collect();
        assert_eq!(contacted, [2, 1, 1]);
    }

    #[test]
    fn contacted_counts_cases_not_messages() {
        let delivery = |step: u32, channel: &str, status| {
            Some(StatsDelivery {
                step_index: step,
                step: format!("step{step}"),
                channel: channel.into(),
                status,
                sent_ms: (status == DeliveryStatus::Sent).then_some(0),
            })
        };
        let mut b = StatsBuilder::default();
        // The email failed and the SMS fallback of the same step went out;
        // step 1 was skipped.
        for d in [
            delivery(0, "email", DeliveryStatus::Failed),
            delivery(0, "sms", DeliveryStatus::Sent),
            delivery(1, "sms", DeliveryStatus::Skipped),
        ] {
            b.add(row("c1", CaseState::Exhausted, "1", d));
        }
        // Two channels of step 0 wrote: one case.
        for d in [
            delivery(0, "email", DeliveryStatus::Sent),
            delivery(0, "in_app", DeliveryStatus::Sent),
            delivery(1, "sms", DeliveryStatus::Scheduled),
        ] {
            b.add(row("c2", CaseState::Active, "1", d));
        }
        let stats = b.finish();
        let contacted: Vec<u64> = stats.workflows[0]
            .steps
            .iter()
            .map(|s| s.contacted)
            .collect();
        assert_eq!(contacted, [2, 0]);
    }

    /// Regression for "safe with what customers bring": the sums were i64
    /// and overflowed past 1024 cases of the largest amount ingest accepts.
    #[test]
    fn sums_of_the_largest_amounts_are_exact() {
        let max = crate::model::MAX_AMOUNT;
        let mut b = StatsBuilder::default();
        for i in 0..2000 {
            let state = if i % 2 == 0 {
                CaseState::Recovered
            } else {
                CaseState::Exhausted
            };
            b.add(row(&format!("c{i}"), state, &max.to_string(), None));
        }
        b.add(row(
            "refund",
            CaseState::Exhausted,
            &(-max).to_string(),
            None,
        ));
        let w = &b.finish().workflows[0];
        assert_eq!(w.at_risk["EUR"].to_string(), "18005391310227241009");
        assert_eq!(w.at_risk["EUR"], 1999 * i128::from(max));
        assert_eq!(w.recovered_amount["EUR"], 1000 * i128::from(max));
    }

    #[test]
    fn amounts_are_minor_units() {
        assert_eq!(minor_units("4900"), Some(4900));
        assert_eq!(minor_units("\"4900\""), Some(4900));
        assert_eq!(minor_units("4900.0"), Some(4900));
        assert_eq!(minor_units("49.5"), None);
        assert_eq!(minor_units("abc"), None);
    }

    #[test]
    fn median_is_the_lower_middle() {
        assert_eq!(median(&mut []), None);
        assert_eq!(median(&mut [5]), Some(5));
        assert_eq!(median(&mut [9, 1, 5]), Some(5));
        assert_eq!(median(&mut [9, 1, 5, 7]), Some(5));
    }
}
