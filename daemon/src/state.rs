//! The daemon's shared state and its reload path.
//!
//! [`Shared`] is what the admin API, the HTTP endpoints and the signal
//! handlers share: the engine, the scheduler, the plugins, the metrics, the
//! sources' activity and the configuration in force.
//!
//! File changes in the workflows folder, SIGHUP and the `Reload` API call
//! all take the same path ([`Shared::reload`]): read the configuration and
//! every workflow, validate all of it, and only then swap it in. A broken
//! configuration changes nothing; a broken workflow file keeps its last good
//! version.

use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};

use chrono::{DateTime, Utc};

use crate::config::{Config, ConfigError};
use crate::engine::Engine;
use crate::engine::scheduler::Scheduler;
use crate::metrics::Metrics;
use crate::plugin_host::PluginHost;
use crate::workflow::{Diagnostic, WorkflowSet};

/// What a reload did, for logs, `dunningctl status` and the API.
#[derive(Debug, Clone)]
pub struct ReloadReport {
    pub at: DateTime<Utc>,
    /// False when the configuration or any workflow file was refused.
    pub ok: bool,
    pub errors: Vec<Diagnostic>,
    pub workflows_loaded: u32,
    /// Workflow names added, changed or removed.
    pub changed: Vec<String>,
}

/// Everything the admin API and the signal handlers share.
pub struct Shared {
    pub engine: Arc<Engine>,
    pub scheduler: Arc<Scheduler>,
    plugins: Arc<PluginHost>,
    /// What the daemon counts; served at `/metrics` when configured.
    metrics: Arc<Metrics>,
    /// What each billing source has heard since start.
    pub sources: Arc<crate::sources::activity::Activity>,
    /// The configuration in force; replaced only by a reload that succeeded.
    config: RwLock<Config>,
    last_reload: RwLock<ReloadReport>,
    /// One reload at a time: the watcher, SIGHUP and the API may ask at once.
    reloading: tokio::sync::Mutex<()>,
    /// Set once start-up is done: only later reloads are announced to systemd.
    ready: std::sync::atomic::AtomicBool,
    started_at: DateTime<Utc>,
}

fn read<T: Clone>(lock: &RwLock<T>) -> T {
    match lock.read() {
        Ok(guard) => guard.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    }
}

fn write<T>(lock: &RwLock<T>, value: T) {
    match lock.write() {
        Ok(mut guard) => *guard = value,
        Err(poisoned) => *poisoned.into_inner() = value,
    }
}

impl Shared {
    /// The state of a daemon starting now: no reload done yet, not ready.
    pub(crate) fn new(
        engine: Arc<Engine>,
        scheduler: Arc<Scheduler>,
        plugins: Arc<PluginHost>,
        metrics: Arc<Metrics>,
        config: Config,
        started_at: DateTime<Utc>,
    ) -> Shared {
        Shared {
            engine,
            scheduler,
            plugins,
            metrics,
            sources: Arc::default(),
            config: RwLock::new(config),
            last_reload: RwLock::new(ReloadReport {
                at: started_at,
                ok: true,
                errors: Vec::new(),
                workflows_loaded: 0,
                changed: Vec::new(),
            }),
            reloading: tokio::sync::Mutex::new(()),
            ready: std::sync::atomic::AtomicBool::new(false),
            started_at,
        }
    }

    /// Start-up is done: later reloads are announced to systemd.
    pub(crate) fn set_ready(&self) {
        self.ready.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn workflows(&self) -> Arc<WorkflowSet> {
        self.engine.workflows()
    }

    pub fn plugins(&self) -> &Arc<PluginHost> {
        &self.plugins
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn started_at(&self) -> DateTime<Utc> {
        self.started_at
    }

    pub fn config(&self) -> Config {
        read(&self.config)
    }

    /// The database in use, password hidden.
    pub fn database(&self) -> String {
        read(&self.config).database.to_string()
    }

    pub fn last_reload(&self) -> ReloadReport {
        read(&self.last_reload)
    }

    /// Re-reads the configuration and the workflows folder and applies what
    /// validates. Returns once applied or refused.
    pub async fn reload(&self) -> ReloadReport {
        let _one_at_a_time = self.reloading.lock().await;
        let announce = self.ready.load(std::sync::atomic::Ordering::SeqCst);
        if announce {
            crate::systemd::reloading();
        }
        let current = self.config();
        let report = match current.path.as_deref().map(Config::load) {
            None => self.apply(current.clone(), &current),
            Some(Ok(new)) => self.apply(new, &current),
            Some(Err(error)) => ReloadReport {
                at: Utc::now(),
                ok: false,
                errors: vec![config_diagnostic(&error)],
                workflows_loaded: self.workflows().iter().count() as u32,
                changed: Vec::new(),
            },
        };
        log_report(&report);
        self.metrics.reloaded(
            report.ok,
            report.workflows_loaded,
            self.config().channels.keys(),
        );
        self.metrics
            .sources_configured(self.config().sources.iter().map(|s| s.name.as_str()));
        write(&self.last_reload, report.clone());
        if announce {
            crate::systemd::ready(&self.status_line().await);
        }
        report
    }

    /// One line for `systemctl status`: what the daemon is doing.
    pub async fn status_line(&self) -> String {
        let active = match self.engine.case_counts().await {
            Ok(counts) => counts
                .get(&crate::model::CaseState::Active)
                .copied()
                .unwrap_or(0)
                .to_string(),
            Err(_) => "?".to_string(),
        };
        let reload = self.last_reload();
        format!(
            "{active} active cases, {} workflows; last reload {} at {}",
            reload.workflows_loaded,
            if reload.ok {
                "ok"
            } else {
                "refused some files"
            },
            reload.at.format("%Y-%m-%d %H:%M:%S UTC")
        )
    }

    fn apply(&self, new: Config, current: &Config) -> ReloadReport {
        let at = Utc::now();
        let config_path = new.path.clone().unwrap_or_default();
        for (what, changed) in [
            ("database", new.database != current.database),
            ("state_dir", new.state_dir != current.state_dir),
            ("admin", new.admin != current.admin),
            ("clock", new.clock != current.clock),
            ("workflows_dir", new.workflows_dir != current.workflows_dir),
            ("scheduler", new.scheduler != current.scheduler),
            ("webhooks", new.webhooks != current.webhooks),
            ("metrics", new.metrics != current.metrics),
        ] {
            if changed {
                tracing::warn!(
                    setting = what,
                    "configuration change takes effect at the next restart"
                );
            }
        }
        if let Err(error) = self.plugins.configure(&new.channels) {
            return ReloadReport {
                at,
                ok: false,
                errors: vec![Diagnostic {
                    path: config_path,
                    line: 0,
                    column: 0,
                    message: error.to_string(),
                }],
                workflows_loaded: self.workflows().iter().count() as u32,
                changed: Vec::new(),
            };
        }
        self.scheduler.set_channels(&new.channels);
        self.engine.set_channel_windows(
            new.channels
                .iter()
                .filter_map(|(name, spec)| Some((name.clone(), spec.send_window.clone()?)))
                .collect(),
        );
        let channels: BTreeSet<String> = new.channels.keys().cloned().collect();
        let previous = self.workflows();
        // The folder stays the one the daemon started with (the watcher watches it).
        let set = WorkflowSet::load_dir(&current.workflows_dir, &channels, &previous, new.limits);
        let changed = set.changes_from(&previous);
        let errors = set.errors().to_vec();
        let loaded = set.iter().count() as u32;
        self.engine.set_workflows(Arc::new(set));
        let mut kept = new;
        kept.workflows_dir = current.workflows_dir.clone();
        write(&self.config, kept);
        ReloadReport {
            at,
            ok: errors.is_empty(),
            errors,
            workflows_loaded: loaded,
            changed,
        }
    }
}

fn log_report(report: &ReloadReport) {
    for error in &report.errors {
        tracing::error!(%error, "refused; the last good version stays in use");
    }
    tracing::info!(
        ok = report.ok,
        workflows = report.workflows_loaded,
        changed = ?report.changed,
        "reloaded"
    );
}

fn config_diagnostic(error: &ConfigError) -> Diagnostic {
    match error {
        ConfigError::Syntax {
            path,
            line,
            column,
            message,
        } => Diagnostic {
            path: path.clone(),
            line: *line as u32,
            column: *column as u32,
            message: message.clone(),
        },
        ConfigError::Read { path, .. } | ConfigError::Invalid { path, .. } => Diagnostic {
            path: path.clone(),
            line: 0,
            column: 0,
            message: match error {
                ConfigError::Read { source, .. } => format!("cannot read: {source}"),
                ConfigError::Invalid { message, .. } => message.clone(),
                ConfigError::Syntax { message, .. } => message.clone(),
            },
        },
    }
}
