//! Watches the workflows folder and asks for a reload after changes.
//!
//! Debounced (200 ms) so that an editor's save — often a write to a temporary
//! file and a rename — is one reload, not five. The callback only asks; the
//! reload itself takes the same path as SIGHUP.
//!
//! Only changes count. Reads do not: the reload itself opens every file, and
//! notify reports opens and closes on Linux, so counting them made every
//! reload ask for the next one, four times a second, for ever.

use std::path::Path;
use std::time::Duration;

use notify::{EventKind, RecursiveMode};
use notify_debouncer_full::{
    DebounceEventResult, DebouncedEvent, Debouncer, RecommendedCache, new_debouncer,
};

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
                    if events.iter().any(changes_a_workflow) {
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

/// Whether an event may have changed what the folder serves: anything but a
/// read, on a workflow file or a folder (hidden files, editors' backups and
/// the like aside).
fn changes_a_workflow(event: &DebouncedEvent) -> bool {
    let read = matches!(event.kind, EventKind::Access(_));
    !read
        && event.paths.iter().any(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            !name.starts_with('.')
                && (name.ends_with(".yaml") || name.ends_with(".yml") || p.extension().is_none())
        })
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use notify::Event;
    use notify::event::{AccessKind, AccessMode, CreateKind, DataChange, ModifyKind, RemoveKind};

    use super::*;

    /// Regression: opening the files to reload them counted as a change, so
    /// every reload asked for another one.
    #[test]
    fn reads_are_no_changes() {
        let table = [
            (
                EventKind::Access(AccessKind::Open(AccessMode::Any)),
                "a.yaml",
                false,
            ),
            (
                EventKind::Access(AccessKind::Close(AccessMode::Read)),
                "a.yaml",
                false,
            ),
            (EventKind::Access(AccessKind::Read), "a.yml", false),
            (EventKind::Create(CreateKind::File), "a.yaml", true),
            (
                EventKind::Modify(ModifyKind::Data(DataChange::Any)),
                "a.yml",
                true,
            ),
            (EventKind::Remove(RemoveKind::File), "a.yaml", true),
            (EventKind::Modify(ModifyKind::Any), "renamed-dir", true),
            (EventKind::Modify(ModifyKind::Any), ".a.yaml.swp", false),
            (EventKind::Create(CreateKind::File), "notes.txt", false),
        ];
        for (kind, file, want) in table {
            let event = DebouncedEvent::new(
                Event::new(kind).add_path(Path::new("/workflows").join(file)),
                Instant::now(),
            );
            assert_eq!(changes_a_workflow(&event), want, "{kind:?} on {file}");
        }
    }
}
