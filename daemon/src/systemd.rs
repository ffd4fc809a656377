//! The systemd notify protocol: readiness, reloads, stopping, status lines
//! and the watchdog. Outside systemd (no `NOTIFY_SOCKET`) every call is a
//! no-op, so the daemon behaves the same under any supervisor.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sd_notify::NotifyState;
use tokio::sync::watch;

fn send(states: &[NotifyState<'_>]) {
    if let Err(error) = sd_notify::notify(states) {
        tracing::debug!(%error, "cannot notify systemd");
    }
}

/// The store is migrated, workflows and plugins are loaded and the admin
/// socket listens.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// A reload begins. systemd 253+ needs the monotonic timestamp with it.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(error) => {
            tracing::debug!(%error, "cannot read the monotonic clock");
            send(&[NotifyState::Reloading]);
        }
    }
}

pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

pub fn status(line: &str) {
    send(&[NotifyState::Status(line)]);
}

/// Pings the watchdog at half its interval, but only while the scheduler's
/// heartbeat moves: a stuck scheduler stops the pings and systemd restarts
/// the daemon. Returns at once when systemd asked for no watchdog.
///
/// The scheduler goes round at least every `loop_period` even when idle, so
/// its heartbeat counts as stale only past the larger of the watchdog
/// interval and a few loop periods.
pub async fn watchdog(mut heartbeat: watch::Receiver<DateTime<Utc>>, loop_period: Duration) {
    let Some(interval) = sd_notify::watchdog_enabled() else {
        return;
    };
    let period = interval / 2;
    let stale_after = chrono::Duration::from_std(interval.max(loop_period * 3))
        .unwrap_or(chrono::Duration::seconds(30));
    tracing::info!(interval = ?interval, "systemd watchdog enabled");
    loop {
        tokio::time::sleep(period.max(Duration::from_millis(10))).await;
        let last = *heartbeat.borrow_and_update();
        if Utc::now() - last <= stale_after {
            send(&[NotifyState::Watchdog]);
        } else {
            tracing::error!(last_round = %last, "scheduler loop is stuck; withholding the watchdog ping");
        }
    }
}
