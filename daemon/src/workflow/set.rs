//! The folder: the set of workflows served (`WorkflowSet`), loaded from a
//! directory with each refused file keeping its last good version, what
//! changed between two loads, and offline validation of files.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::source::{self, FileLimits};
use super::{Diagnostic, Workflow, locate};

/// The workflows served right now, with the errors of refused files.
#[derive(Debug, Default)]
pub struct WorkflowSet {
    workflows: BTreeMap<String, Arc<Workflow>>,
    errors: Vec<Diagnostic>,
    /// Workflow name → the error of its file, when a broken file's last good
    /// version is what is served.
    stale: BTreeMap<String, Diagnostic>,
}

impl WorkflowSet {
    pub fn empty() -> WorkflowSet {
        WorkflowSet::default()
    }

    /// Loads every `*.yaml`/`*.yml` of `dir` (not recursive, hidden files
    /// ignored), each within `limits`. A refused file keeps the workflow it
    /// held in `previous`.
    pub fn load_dir(
        dir: &Path,
        channels: &BTreeSet<String>,
        previous: &WorkflowSet,
        limits: FileLimits,
    ) -> WorkflowSet {
        let mut set = WorkflowSet::default();
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) => {
                set.errors.push(Diagnostic {
                    path: dir.to_path_buf(),
                    line: 0,
                    column: 0,
                    message: format!("cannot read the workflows folder: {e}"),
                });
                return set;
            }
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| is_workflow_file(p))
            .collect();
        files.sort();

        // Name → candidates (path, workflow), in path order.
        let mut candidates: BTreeMap<String, Vec<Arc<Workflow>>> = BTreeMap::new();
        for path in &files {
            let parsed = source::read(path, limits)
                .map_err(|d| vec![d])
                .and_then(|source| Workflow::parse_within(path, &source, Some(channels), limits));
            match parsed {
                Ok(workflow) => candidates
                    .entry(workflow.name.clone())
                    .or_default()
                    .push(Arc::new(workflow)),
                Err(diagnostics) => {
                    if let Some(last_good) = previous.workflows.values().find(|w| &w.path == path) {
                        set.stale
                            .insert(last_good.name.clone(), diagnostics[0].clone());
                        candidates
                            .entry(last_good.name.clone())
                            .or_default()
                            .push(last_good.clone());
                    }
                    set.errors.extend(diagnostics);
                }
            }
        }
        for (name, mut list) in candidates {
            // The file that held the name before keeps it; else the first path.
            let held = previous.workflows.get(&name).map(|w| w.path.clone());
            let winner = list
                .iter()
                .position(|w| Some(&w.path) == held.as_ref())
                .unwrap_or(0);
            let chosen = list.remove(winner);
            for loser in list {
                let (line, column) = locate::find(&loser.source, &["name:"]);
                set.errors.push(Diagnostic {
                    path: loser.path.clone(),
                    line,
                    column,
                    message: format!(
                        "workflow name '{name}' is already defined in '{}'",
                        chosen.path.display()
                    ),
                });
            }
            set.workflows.insert(name, chosen);
        }
        set
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Workflow>> {
        self.workflows.get(name)
    }

    /// Sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Workflow>> {
        self.workflows.values()
    }

    pub fn errors(&self) -> &[Diagnostic] {
        &self.errors
    }

    pub fn error_for(&self, name: &str) -> Option<&Diagnostic> {
        self.stale.get(name)
    }

    /// Names added, changed or removed since `previous`, sorted.
    pub fn changes_from(&self, previous: &WorkflowSet) -> Vec<String> {
        let mut names: BTreeSet<String> = BTreeSet::new();
        for (name, workflow) in &self.workflows {
            if previous
                .workflows
                .get(name)
                .is_none_or(|old| old.version != workflow.version)
            {
                names.insert(name.clone());
            }
        }
        for name in previous.workflows.keys() {
            if !self.workflows.contains_key(name) {
                names.insert(name.clone());
            }
        }
        names.into_iter().collect()
    }
}

fn is_workflow_file(path: &Path) -> bool {
    let hidden = path
        .file_name()
        .and_then(|n| n.to_str())
        .is_none_or(|n| n.starts_with('.'));
    let yaml = path.extension().is_some_and(|e| e == "yaml" || e == "yml");
    !hidden && yaml && path.is_file()
}

/// Validates files offline, within `limits` as the daemon would: every
/// diagnostic of every file, including duplicate names across the given
/// files.
pub fn validate_files(
    paths: &[PathBuf],
    channels: Option<&BTreeSet<String>>,
    limits: FileLimits,
) -> Vec<Diagnostic> {
    let mut diagnostics = Vec::new();
    let mut names: BTreeMap<String, PathBuf> = BTreeMap::new();
    for path in paths {
        let source = match source::read(path, limits) {
            Ok(source) => source,
            Err(diagnostic) => {
                diagnostics.push(diagnostic);
                continue;
            }
        };
        match Workflow::parse_within(path, &source, channels, limits) {
            Ok(workflow) => {
                if let Some(first) = names.get(&workflow.name) {
                    let (line, column) = locate::find(&source, &["name:"]);
                    diagnostics.push(Diagnostic {
                        path: path.clone(),
                        line,
                        column,
                        message: format!(
                            "workflow name '{}' is already defined in '{}'",
                            workflow.name,
                            first.display()
                        ),
                    });
                } else {
                    names.insert(workflow.name.clone(), path.clone());
                }
            }
            Err(errors) => diagnostics.extend(errors),
        }
    }
    diagnostics
}
