//! The engine's one source of time.
//!
//! Everything that asks "what time is it" or "wake me at T" goes through a
//! [`Clock`]. Production uses the system clock; tests and demos use a manual
//! clock that moves only when told to, so a 14-day sequence runs in
//! milliseconds with no sleeps. Leases are the exception: they measure whether
//! a process is alive, so they use wall-clock time (see `store`).

use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ClockError {
    #[error(
        "the clock is the system clock; only a daemon started with 'clock: manual' can move it"
    )]
    NotManual,
    #[error("cannot move the clock backwards (now {now}, asked for {to})")]
    Backwards {
        now: DateTime<Utc>,
        to: DateTime<Utc>,
    },
    #[error("cannot save the manual clock to '{path}': {message}")]
    Persist { path: PathBuf, message: String },
}

pub struct Clock {
    inner: Inner,
}

enum Inner {
    System,
    /// The current manual time; receivers wake when it moves. The time is
    /// saved to a file when given, so a restarted daemon continues from it.
    Manual(watch::Sender<DateTime<Utc>>, Option<PathBuf>),
}

impl Clock {
    pub fn system() -> Clock {
        Clock {
            inner: Inner::System,
        }
    }

    pub fn manual(start: DateTime<Utc>) -> Clock {
        Clock {
            inner: Inner::Manual(watch::Sender::new(start), None),
        }
    }

    /// A manual clock that keeps its time in `file` across restarts: it
    /// starts at the later of `start` and the saved time.
    pub fn manual_persisted(start: DateTime<Utc>, file: PathBuf) -> Clock {
        let saved = std::fs::read_to_string(&file)
            .ok()
            .and_then(|text| text.trim().parse::<DateTime<Utc>>().ok());
        let now = saved.map_or(start, |saved| saved.max(start));
        Clock {
            inner: Inner::Manual(watch::Sender::new(now), Some(file)),
        }
    }

    pub fn now(&self) -> DateTime<Utc> {
        match &self.inner {
            Inner::System => Utc::now(),
            Inner::Manual(tx, _) => *tx.borrow(),
        }
    }

    pub fn kind(&self) -> &'static str {
        match self.inner {
            Inner::System => "system",
            Inner::Manual(..) => "manual",
        }
    }

    /// Moves a manual clock forward to `to`.
    pub fn set(&self, to: DateTime<Utc>) -> Result<DateTime<Utc>, ClockError> {
        match &self.inner {
            Inner::System => Err(ClockError::NotManual),
            Inner::Manual(tx, file) => {
                let now = *tx.borrow();
                if to < now {
                    return Err(ClockError::Backwards { now, to });
                }
                if let Some(path) = file {
                    crate::files::write_private(path, to.to_rfc3339().as_bytes()).map_err(|e| {
                        ClockError::Persist {
                            path: path.clone(),
                            message: e.to_string(),
                        }
                    })?;
                }
                tx.send_replace(to);
                Ok(to)
            }
        }
    }

    pub fn advance(&self, by: Duration) -> Result<DateTime<Utc>, ClockError> {
        let by = chrono::Duration::from_std(by).unwrap_or(chrono::Duration::MAX);
        let to = self
            .now()
            .checked_add_signed(by)
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        self.set(to)
    }

    /// Resolves once the clock reads `deadline` or later, or after `cap` of
    /// real time, whichever comes first (callers re-check their work then).
    pub async fn sleep_until(&self, deadline: DateTime<Utc>, cap: Duration) {
        match &self.inner {
            Inner::System => {
                let wait = (deadline - Utc::now()).to_std().unwrap_or(Duration::ZERO);
                tokio::time::sleep(wait.min(cap)).await;
            }
            Inner::Manual(tx, _) => {
                let mut rx = tx.subscribe();
                let reached = rx.wait_for(|now| *now >= deadline);
                let _ = tokio::time::timeout(cap, reached).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_manual_clock_wakes_sleepers_when_moved() {
        let start = "2026-01-01T00:00:00Z".parse().unwrap();
        let clock = std::sync::Arc::new(Clock::manual(start));
        let sleeper = {
            let clock = clock.clone();
            tokio::spawn(async move {
                clock
                    .sleep_until(start + chrono::Duration::days(3), Duration::from_secs(30))
                    .await;
                clock.now()
            })
        };
        tokio::task::yield_now().await;
        clock.advance(Duration::from_secs(3 * 86_400)).unwrap();
        assert_eq!(sleeper.await.unwrap(), start + chrono::Duration::days(3));
        assert!(matches!(
            clock.set(start),
            Err(ClockError::Backwards { .. })
        ));
        assert_eq!(
            Clock::system().advance(Duration::from_secs(1)),
            Err(ClockError::NotManual)
        );
    }

    #[test]
    fn a_persisted_manual_clock_continues_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("clock");
        let start: DateTime<Utc> = "2026-01-01T00:00:00Z".parse().unwrap();
        let clock = Clock::manual_persisted(start, file.clone());
        clock.advance(Duration::from_secs(86_400)).unwrap();
        let restarted = Clock::manual_persisted(start, file);
        assert_eq!(restarted.now(), start + chrono::Duration::days(1));
    }
}
