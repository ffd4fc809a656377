//! Watches the workflows folder and asks for a reload after changes.
//!
//! Debounced (200 ms) so that an editor's save — often a write to a temporary
//! file and a rename — is one reload, not five. The callback only asks; the
//! reload itself takes the same path as SIGHUP.

use std::path::Path;
use std::time::Duration;

use notify::RecursiveMode;
use notify_debouncer_full::{DebounceEventResult, Debouncer, RecommendedCache, new_debouncer};

use super::WorkflowError;

/// Keeps the watch alive; dropping it stops watching.
pub struct WatchGuard {
    _debouncer: Debouncer<notify::RecommendedWatcher, RecommendedCache>,
}

pub fn watch(
    dir: &Path,
    on_change: impl Fn() + Send + Sync + 'static,
) -> Result<WatchGuard, WorkflowError> {
    let error = |e: notify::Error| WorkflowError::Watch {
        path: dir.to_path_buf(),
        message: e.to_string(),
    };
    let mut debouncer = new_debouncer(
        Duration::from_millis(200),
        None,
        move |result: DebounceEventResult| {
            match result {
                Ok(events) => {
                    let relevant = events.iter().any(|event| {
                        event.paths.iter().any(|p| {
                            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                            !name.starts_with('.')
                                && (name.ends_with(".yaml")
                                    || name.ends_with(".yml")
                                    || p.extension().is_none())
                        })
                    });
                    if relevant {
                        on_change();
                    }
                }
                Err(errors) => {
                    for e in errors {
                        tracing::warn!(error = %e, "workflow folder watch error");
                    }
                    // Something happened that the watcher could not describe: look.
                    on_change();
                }
            }
        },
    )
    .map_err(error)?;
    debouncer
        .watch(dir, RecursiveMode::NonRecursive)
        .map_err(error)?;
    Ok(WatchGuard {
        _debouncer: debouncer,
    })
}
