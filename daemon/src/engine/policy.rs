//! The sending policy: whether a claimed delivery goes out now.
//!
//! A pure function of the delivery's facts (its step's condition, the
//! customer's opt-out, when its send windows open, its `expires_after`, the
//! time): no store, no clock, no plugin. The scheduler gathers the facts,
//! asks [`judge`], and acts on the [`Decision`]; only a [`Decision::Send`]
//! goes on to rendering and the plugin.
//!
//! The checks run in a fixed order, the first that says no wins: a step
//! whose condition is false is skipped even for an opted-out customer, and a
//! delivery whose window opens only after its deadline has expired rather
//! than been deferred.

use std::time::Duration;

use chrono::{DateTime, Utc};

/// The step's `when` condition, as evaluated for this delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition<'a> {
    /// The step has none: it always applies.
    Absent,
    /// The condition holds.
    Holds,
    /// The condition, as written in the workflow, is false.
    False { when: &'a str },
    /// The condition could not be evaluated (out of budget, a type error…).
    Unevaluable { error: &'a str },
}

/// What the scheduler knows about one claimed delivery before it renders it.
#[derive(Debug, Clone)]
pub struct Facts<'a> {
    pub condition: Condition<'a>,
    /// Where the customer's opt-out from this channel came from, if they
    /// opted out.
    pub opted_out: Option<&'a str>,
    pub channel: &'a str,
    /// The first instant at or after `now` inside all the delivery's send
    /// windows (`now` itself without windows); `None` if they do not open
    /// together within a year.
    pub opens: Option<DateTime<Utc>>,
    /// The step's `expires_after`, counted from `due_at`.
    pub expires_after: Option<Duration>,
    pub due_at: DateTime<Utc>,
    pub now: DateTime<Utc>,
}

/// What becomes of the delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Render it and send it.
    Send,
    /// Not sent, for `reason`. With `hand_over` the step's fallback takes
    /// over: the customer may still be reached through another channel
    /// (opted out of this one, or its windows never open); without it the
    /// step itself does not apply, so neither does its fallback.
    Skip { reason: String, hand_over: bool },
    /// Outside its send windows: claimable again at `until`.
    Defer { until: DateTime<Utc> },
    /// Past its `expires_after`. Never handed over: a stale message is worse
    /// than none, on any channel.
    Expire { reason: String },
}

/// Applies the sending policy to one delivery's facts.
pub fn judge(facts: &Facts) -> Decision {
    match facts.condition {
        Condition::Absent | Condition::Holds => {}
        Condition::False { when } => {
            return Decision::Skip {
                reason: format!("condition '{when}' is false"),
                hand_over: false,
            };
        }
        Condition::Unevaluable { error } => {
            return Decision::Skip {
                reason: format!("cannot evaluate the step's condition: {error}"),
                hand_over: false,
            };
        }
    }
    if let Some(source) = facts.opted_out {
        return Decision::Skip {
            reason: format!("opted out of {} ({source})", facts.channel),
            hand_over: true,
        };
    }
    let deadline = facts.expires_after.map(|after| {
        facts.due_at + chrono::Duration::from_std(after).unwrap_or(chrono::Duration::MAX)
    });
    let expired = |when: &str| Decision::Expire {
        reason: format!(
            "expired: due {}, {when}, past its expires_after of {}",
            facts.due_at.format("%Y-%m-%d %H:%M UTC"),
            crate::duration::format(facts.expires_after.unwrap_or_default())
        ),
    };
    let now = facts.now;
    // Retries, resumed cases and reloads can fall outside a window.
    match facts.opens {
        None => {
            return Decision::Skip {
                reason: "its send windows do not open together within a year".into(),
                hand_over: true,
            };
        }
        Some(opens) if opens > now && deadline.is_some_and(|deadline| opens > deadline) => {
            return expired(&format!(
                "the send window opens only at {}",
                opens.format("%Y-%m-%d %H:%M UTC")
            ));
        }
        Some(opens) if opens > now => return Decision::Defer { until: opens },
        Some(_) => {}
    }
    if deadline.is_some_and(|deadline| now > deadline) {
        return expired(&format!(
            "could go out only at {}",
            now.format("%Y-%m-%d %H:%M UTC")
        ));
    }
    Decision::Send
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_else(|e| panic!("bad time {s}: {e}"))
    }

    /// (what, condition, opted out, windows open at, expires_after, now,
    /// decision)
    type Row<'a> = (
        &'a str,
        Condition<'a>,
        Option<&'a str>,
        Option<&'a str>,
        Option<Duration>,
        &'a str,
        Decision,
    );

    #[test]
    fn each_branch_of_the_policy() {
        const DUE: &str = "2026-03-02T09:00:00Z";
        const HOUR: Duration = Duration::from_secs(3600);
        let skip = |reason: &str, hand_over| Decision::Skip {
            reason: reason.into(),
            hand_over,
        };
        let expire = |reason: &str| Decision::Expire {
            reason: reason.into(),
        };
        #[rustfmt::skip]
        let table: Vec<Row> = vec![
            ("no condition, window open, no expiry",
             Condition::Absent, None, Some(DUE), None, DUE, Decision::Send),
            ("condition holds",
             Condition::Holds, None, Some(DUE), None, DUE, Decision::Send),
            ("condition false",
             Condition::False { when: "amount > 10" }, None, Some(DUE), None, DUE,
             skip("condition 'amount > 10' is false", false)),
            ("condition false wins over an opt-out",
             Condition::False { when: "amount > 10" }, Some("unsubscribe link"), Some(DUE), None, DUE,
             skip("condition 'amount > 10' is false", false)),
            ("condition cannot be evaluated",
             Condition::Unevaluable { error: "out of fuel" }, None, Some(DUE), None, DUE,
             skip("cannot evaluate the step's condition: out of fuel", false)),
            ("opted out hands over to the fallback",
             Condition::Holds, Some("unsubscribe link"), Some(DUE), None, DUE,
             skip("opted out of email (unsubscribe link)", true)),
            ("windows never open together",
             Condition::Absent, None, None, None, DUE,
             skip("its send windows do not open together within a year", true)),
            ("window opens later: deferred",
             Condition::Absent, None, Some("2026-03-02T12:00:00Z"), None, DUE,
             Decision::Defer { until: at("2026-03-02T12:00:00Z") }),
            ("window opens later, before the deadline: deferred",
             Condition::Absent, None, Some("2026-03-02T12:00:00Z"), Some(4 * HOUR), DUE,
             Decision::Defer { until: at("2026-03-02T12:00:00Z") }),
            ("window opens only after the deadline: expired",
             Condition::Absent, None, Some("2026-03-02T12:00:00Z"), Some(2 * HOUR), DUE,
             expire("expired: due 2026-03-02 09:00 UTC, the send window opens only at 2026-03-02 12:00 UTC, past its expires_after of 2h")),
            ("window open, past the deadline: expired",
             Condition::Absent, None, Some("2026-03-02T12:00:00Z"), Some(2 * HOUR), "2026-03-02T12:00:00Z",
             expire("expired: due 2026-03-02 09:00 UTC, could go out only at 2026-03-02 12:00 UTC, past its expires_after of 2h")),
            ("window open, exactly at the deadline: sent",
             Condition::Absent, None, Some("2026-03-02T11:00:00Z"), Some(2 * HOUR), "2026-03-02T11:00:00Z",
             Decision::Send),
            ("expiry without windows, in time",
             Condition::Holds, None, Some("2026-03-02T10:00:00Z"), Some(2 * HOUR), "2026-03-02T10:00:00Z",
             Decision::Send),
        ];
        for (what, condition, opted_out, opens, expires_after, now, want) in table {
            let facts = Facts {
                condition,
                opted_out,
                channel: "email",
                opens: opens.map(at),
                expires_after,
                due_at: at(DUE),
                now: at(now),
            };
            assert_eq!(judge(&facts), want, "{what}");
        }
    }
}
