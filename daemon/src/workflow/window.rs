//! Send windows (quiet hours): when a delivery may go out, each window read
//! in its own zone (fixed, or the customer's), and the first instant at
//! which all of a delivery's windows are open.

use std::str::FromStr;

use chrono::{DateTime, Timelike, Utc};
use chrono_tz::Tz;
use serde::Deserialize;

use super::Workflow;
use super::source::Text;

/// A send window as written, in a workflow, a step or the daemon's channel
/// configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWindow {
    pub(super) cron: Text,
    #[serde(default = "default_window_zone")]
    pub(super) timezone: Text,
    pub(super) default_timezone: Option<Text>,
}

fn default_window_zone() -> Text {
    Text("customer".to_string())
}

/// Where send windows are evaluated.
#[derive(Debug, Clone)]
enum WindowZone {
    /// The customer's own zone, else `fallback`.
    Customer {
        fallback: Tz,
    },
    Fixed(Tz),
}

/// Quiet hours: deliveries go out only at minutes the cron expression matches.
#[derive(Debug, Clone)]
pub struct SendWindow {
    pub cron: String,
    schedule: cron::Schedule,
    zone: WindowZone,
}

/// How far ahead a window's next opening is looked for: a window that never
/// opens within a year (windows that do not overlap) means "never".
const WINDOW_HORIZON_DAYS: i64 = 366;

impl SendWindow {
    /// Parses a window as written (`cron`, `timezone`, `default_timezone`);
    /// an error names the key at fault.
    pub fn parse(raw: &RawWindow) -> Result<SendWindow, (&'static str, String)> {
        parse_window(raw)
    }

    fn zone_for(&self, customer_timezone: Option<&str>) -> Tz {
        match &self.zone {
            WindowZone::Fixed(tz) => *tz,
            WindowZone::Customer { fallback } => customer_timezone
                .and_then(|name| Tz::from_str(name).ok())
                .unwrap_or(*fallback),
        }
    }

    /// The first instant at or after `due` inside the window (`None` if the
    /// schedule never matches again).
    fn next_open(
        &self,
        due: DateTime<Utc>,
        customer_timezone: Option<&str>,
    ) -> Option<DateTime<Utc>> {
        let tz = self.zone_for(customer_timezone);
        let local = due.with_timezone(&tz);
        let minute = local
            .with_second(0)
            .and_then(|t| t.with_nanosecond(0))
            .unwrap_or(local);
        if self.schedule.includes(minute) {
            return Some(due);
        }
        self.schedule
            .after(&local)
            .next()
            .map(|t| t.with_timezone(&Utc))
    }
}

/// The first instant at or after `due` inside every one of `windows` (each
/// read in its own zone for this customer), or `None` if there is none within
/// a year. `due` itself when there are no windows.
pub fn next_open_in_all(
    windows: &[&SendWindow],
    due: DateTime<Utc>,
    customer_timezone: Option<&str>,
) -> Option<DateTime<Utc>> {
    let horizon = due + chrono::Duration::days(WINDOW_HORIZON_DAYS);
    let mut at = due;
    // Each round moves `at` to the next opening of a window that excludes
    // it; it stops when all agree.
    loop {
        let mut moved = false;
        for window in windows {
            let open = window.next_open(at, customer_timezone)?;
            if open > at {
                at = open;
                moved = true;
            }
        }
        if !moved {
            return Some(at);
        }
        if at > horizon {
            return None;
        }
    }
}

impl Workflow {
    /// The windows a delivery of step `step` on a channel must respect: the
    /// step's own window (else the workflow's) and the channel's default.
    pub fn windows<'a>(
        &'a self,
        step: usize,
        channel_window: Option<&'a SendWindow>,
    ) -> Vec<&'a SendWindow> {
        let own = self
            .steps
            .get(step)
            .and_then(|s| s.send_window.as_ref())
            .or(self.send_window.as_ref());
        own.into_iter().chain(channel_window).collect()
    }

    /// When a delivery of step `step` due at `due` goes out: the first
    /// instant inside all its windows, or `None` if they never meet within a
    /// year.
    pub fn plan(
        &self,
        step: usize,
        channel_window: Option<&SendWindow>,
        due: DateTime<Utc>,
        customer_timezone: Option<&str>,
    ) -> Option<DateTime<Utc>> {
        next_open_in_all(&self.windows(step, channel_window), due, customer_timezone)
    }

    /// The zone a step's planned time is best shown in for this customer:
    /// that of its first window, if it has any.
    pub fn window_zone(
        &self,
        step: usize,
        channel_window: Option<&SendWindow>,
        customer_timezone: Option<&str>,
    ) -> Option<Tz> {
        self.windows(step, channel_window)
            .first()
            .map(|w| w.zone_for(customer_timezone))
    }
}

fn parse_window(raw: &RawWindow) -> Result<SendWindow, (&'static str, String)> {
    let fields = raw.cron.split_whitespace().count();
    if fields != 5 {
        return Err((
            "cron:",
            format!(
                "send_window.cron '{}' has {fields} fields; write the 5 fields of cron: minute hour day-of-month month day-of-week",
                raw.cron
            ),
        ));
    }
    // The cron crate counts seconds first; windows are whole minutes.
    let schedule = cron::Schedule::from_str(&format!("0 {}", raw.cron))
        .map_err(|e| ("cron:", format!("send_window.cron '{}': {e}", raw.cron)))?;
    let zone = |name: &str, key: &'static str| {
        Tz::from_str(name).map_err(|_| {
            (
                key,
                format!("unknown time zone '{name}' (use an IANA name such as Europe/Berlin)"),
            )
        })
    };
    let zone = match raw.timezone.as_str() {
        "customer" => WindowZone::Customer {
            fallback: match &raw.default_timezone {
                Some(name) => zone(name, "default_timezone:")?,
                None => Tz::UTC,
            },
        },
        name => {
            if raw.default_timezone.is_some() {
                return Err((
                    "default_timezone:",
                    "default_timezone applies only to 'timezone: customer'".into(),
                ));
            }
            WindowZone::Fixed(zone(name, "timezone:")?)
        }
    };
    Ok(SendWindow {
        cron: raw.cron.to_string(),
        schedule,
        zone,
    })
}
