//! Daemon wiring: start-up and shutdown.
//!
//! Start-up is a reload from nothing (the shared state and the reload path
//! are in [`crate::state`]); file changes in the workflows folder and SIGHUP
//! ask for reloads while the daemon runs.
//!
//! Shutdown (SIGTERM, SIGINT): stop accepting API calls, stop claiming, let
//! in-flight sends finish within the grace period, record their outcomes,
//! exit 0. Deliveries not finished stay claimable.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use chrono::Utc;
use tokio::sync::{mpsc, watch};

use crate::config::{ClockKind, Config};
use crate::engine::Engine;
use crate::engine::clock::Clock;
use crate::engine::scheduler::Scheduler;
use crate::metrics::Metrics;
use crate::plugin_host::PluginHost;
use crate::state::Shared;
use crate::store::Store;
use crate::store::postgres::PostgresStore;
use crate::store::sqlite::SqliteStore;
use crate::workflow;

/// How long open admin connections may take to finish at shutdown.
const ADMIN_DRAIN: std::time::Duration = std::time::Duration::from_secs(3);

/// Opens the store the database URL names.
pub async fn open_store(config: &Config) -> anyhow::Result<Arc<dyn Store>> {
    let url = config.database.expose();
    match url.strip_prefix("sqlite://") {
        Some(path) => {
            let store = SqliteStore::open(&PathBuf::from(path))
                .await
                .with_context(|| format!("cannot open database '{}'", config.database))?;
            Ok(Arc::new(store))
        }
        None if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            let store = PostgresStore::open(url)
                .await
                .with_context(|| format!("cannot open database '{}'", config.database))?;
            Ok(Arc::new(store))
        }
        None => anyhow::bail!("unsupported database URL '{}'", config.database),
    }
}

/// A start-up failure the operator must fix in the configuration (exit 64)
/// rather than a runtime failure (exit 1).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigurationError(pub String);

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let mut signals = Signals::listen()?;
    let started_at = Utc::now();
    let store = open_store(&config).await?;
    let clock = match config.clock {
        ClockKind::System => Clock::system(),
        ClockKind::Manual { start } => {
            let start = start.unwrap_or(started_at);
            tracing::warn!(%start, "running on a manual clock: time moves only through the admin API");
            crate::files::create_dir_all(&config.state_dir, crate::files::PRIVATE_DIR)
                .with_context(|| {
                    format!("cannot create state_dir '{}'", config.state_dir.display())
                })?;
            Clock::manual_persisted(start, config.state_dir.join("manual-clock"))
        }
    };
    // Counted from the start, served only with `metrics:` configured.
    let metrics = Arc::new(Metrics::new());
    let plugins =
        Arc::new(PluginHost::new(config.plugin_dir.clone()).with_metrics(metrics.clone()));
    plugins
        .configure(&config.channels)
        .map_err(|e| ConfigurationError(format!("channels: {e}")))?;
    let engine = Arc::new(Engine::new(store.clone(), clock));
    store.listen_for_work(Box::new({
        let engine = Arc::downgrade(&engine);
        move || {
            if let Some(engine) = engine.upgrade() {
                engine.wake();
            }
        }
    }));
    let mut scheduler = Scheduler::new(engine.clone(), plugins.clone(), config.scheduler.clone())
        .with_metrics(metrics.clone());
    if let Some(webhooks) = &config.webhooks {
        scheduler = scheduler.with_unsubscribe_links(crate::links::Links::new(webhooks));
    }
    let scheduler = Arc::new(scheduler);
    let shared = Arc::new(Shared::new(
        engine.clone(),
        scheduler.clone(),
        plugins,
        metrics,
        config.clone(),
        started_at,
    ));
    // Start-up is a reload from nothing.
    shared.reload().await;

    let (reload_tx, mut reload_rx) = mpsc::channel::<()>(1);
    let _watcher = {
        let tx = reload_tx.clone();
        workflow::watch(&config.workflows_dir, move || {
            // A full queue already holds a pending reload: nothing is lost.
            let _ = tx.try_send(());
        })
        .map_err(|e| {
            tracing::error!(dir = %config.workflows_dir.display(), error = %e, "cannot watch the workflows folder; use SIGHUP or 'dunningctl reload'");
        })
        .ok()
    };
    {
        let shared = shared.clone();
        tokio::spawn(async move {
            while reload_rx.recv().await.is_some() {
                shared.reload().await;
            }
        });
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    let scheduler_task = tokio::spawn(scheduler.clone().run(stop_rx.clone()));
    // Bound before "ready": once this returns, dunningctl can connect.
    let admin = crate::admin::listen(shared.clone(), &config.admin, stop_rx.clone())
        .await
        .map_err(|e| ConfigurationError(e.to_string()))?;
    let admin_task = tokio::spawn(admin.serve);
    let webhooks_task = match config.webhooks.clone() {
        Some(webhooks) => Some(
            crate::http::webhooks::listen(shared.clone(), webhooks, stop_rx.clone())
                .await
                .map_err(ConfigurationError)?,
        ),
        None => None,
    };
    let metrics_task = match config.metrics.clone() {
        Some(metrics) => Some(
            crate::http::metrics::listen(shared.clone(), metrics, stop_rx.clone())
                .await
                .map_err(ConfigurationError)?,
        ),
        None => None,
    };
    tokio::spawn(report_store_health(
        scheduler.store_ok(),
        admin.health,
        stop_rx.clone(),
    ));
    shared.set_ready();
    crate::systemd::ready(&shared.status_line().await);
    tokio::spawn(crate::systemd::watchdog(
        scheduler.heartbeat(),
        crate::engine::scheduler::POLL_CAP,
    ));
    {
        // Refresh the status line now and then; reloads refresh it too.
        let shared = shared.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(15)).await;
                crate::systemd::status(&shared.status_line().await);
            }
        });
    }
    tracing::info!(
        version = crate::VERSION,
        socket = %config.admin.socket.display(),
        database = %config.database,
        workflows = shared.workflows().iter().count(),
        "dunningd ready"
    );

    signals.wait_for_stop(reload_tx).await;
    crate::systemd::stopping();
    tracing::info!("stopping: no new claims, waiting for in-flight sends");
    let _ = stop_tx.send(true);
    if let Err(error) = scheduler_task.await {
        tracing::error!(%error, "scheduler task failed");
    }
    // Open API connections get a moment to finish their calls; a client that
    // never hangs up must not keep the daemon from stopping.
    let admin_abort = admin_task.abort_handle();
    match tokio::time::timeout(ADMIN_DRAIN, admin_task).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(error))) => tracing::error!(%error, "admin API stopped with an error"),
        Ok(Err(error)) => tracing::error!(%error, "admin task failed"),
        Err(_) => {
            tracing::warn!(drain = ?ADMIN_DRAIN, "admin connections still open; closing them");
            admin_abort.abort();
            let _ = std::fs::remove_file(&config.admin.socket);
        }
    }
    if let Some(task) = webhooks_task
        && tokio::time::timeout(ADMIN_DRAIN, task).await.is_err()
    {
        tracing::warn!(drain = ?ADMIN_DRAIN, "webhook requests still open; closing them");
    }
    if let Some(task) = metrics_task
        && tokio::time::timeout(ADMIN_DRAIN, task).await.is_err()
    {
        tracing::warn!(drain = ?ADMIN_DRAIN, "metrics scrapes still open; closing them");
    }
    match store.release_leases(scheduler.owner()).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(deliveries = n, "released unfinished claims"),
        Err(error) => tracing::warn!(%error, "cannot release claims; they expire by themselves"),
    }
    tracing::info!("stopped");
    Ok(())
}

/// Health follows the database: NOT_SERVING while it cannot be reached (a
/// load balancer or supervisor should send events elsewhere; nothing already
/// accepted is lost), SERVING again once it answers. Stops when the daemon
/// stops, whose NOT_SERVING must stay.
async fn report_store_health(
    mut store_ok: watch::Receiver<bool>,
    health: crate::admin::Health,
    mut stop: watch::Receiver<bool>,
) {
    let stopping = stop.clone();
    loop {
        let changed = tokio::select! {
            changed = store_ok.changed() => changed.is_ok(),
            _ = async { let _ = stop.wait_for(|s| *s).await; } => false,
        };
        let ok = *store_ok.borrow_and_update();
        if !changed || *stopping.borrow() {
            return;
        }
        if ok {
            tracing::info!("database reachable again: health SERVING");
            crate::systemd::status("database reachable again");
        } else {
            tracing::error!("database unreachable: health NOT_SERVING until it answers");
            crate::systemd::status("database unreachable; retrying");
        }
        health.set_serving(ok).await;
        if *stopping.borrow() {
            // Stopped meanwhile: NOT_SERVING wins.
            health.set_serving(false).await;
            return;
        }
    }
}

/// SIGTERM, SIGINT and SIGHUP, listened for from the start: a signal that
/// arrives while the daemon is still starting (systemd may stop it right
/// after READY=1) waits here instead of killing the process.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn listen() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?,
            hup: signal(SignalKind::hangup()).context("cannot listen for SIGHUP")?,
        })
    }

    /// Waits for SIGTERM or SIGINT; SIGHUP asks for a reload meanwhile.
    async fn wait_for_stop(&mut self, reload: mpsc::Sender<()>) {
        loop {
            tokio::select! {
                _ = self.term.recv() => return,
                _ = self.int.recv() => return,
                _ = self.hup.recv() => {
                    tracing::info!("SIGHUP: reloading");
                    let _ = reload.try_send(());
                }
            }
        }
    }
}
