//! Starting and stopping the real `dunningd` for a measurement.
//!
//! Each [`Daemon`] gets a scratch folder (configuration, workflows folder,
//! admin socket, log) and a fresh store: a SQLite file in that folder or a
//! PostgreSQL database of its own. The clock is manual, so a backlog can be
//! built while nothing is due and released at one chosen moment; the only
//! channel, `sink`, is the real `log` plugin writing JSON lines to a file,
//! which records the wall-clock moment of each hand-off.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use dunningd::proto::admin_client::AdminClient;
use dunningd::proto::{AdvanceClockRequest, GetClockRequest, GetStatusRequest};
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint};

use crate::Ctx;
use crate::store::{PgDatabase, Store};

/// Where the engine's clock starts: a Monday, 09:00 UTC.
const CLOCK_START: &str = "2026-01-05T09:00:00Z";
/// How long a start-up or a stop may take before the measurement fails.
const PROCESS_DEADLINE: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// How long a start took, from spawning the process.
#[derive(Debug, Clone, Copy)]
pub struct Startup {
    /// Until the admin API answered a call (GetClock).
    pub api: Duration,
    /// Until GetStatus (which counts cases by state) answered.
    pub status: Duration,
}

pub struct Daemon {
    dir: tempfile::TempDir,
    config: PathBuf,
    socket: PathBuf,
    /// Where the daemon's Prometheus endpoint listens.
    metrics: SocketAddr,
    binary: PathBuf,
    log_level: String,
    child: Option<Child>,
    store: Store,
}

impl Daemon {
    /// Writes the configuration (with `extra`, top-level YAML sections,
    /// added) and `workflows` (file name → YAML) into a scratch folder,
    /// creates the store and starts the daemon.
    pub async fn start(
        ctx: &Ctx,
        backend: Backend,
        workflows: &[(String, String)],
        extra: &str,
    ) -> anyhow::Result<(Daemon, Startup)> {
        let dir = tempfile::Builder::new()
            .prefix("dunningd-bench")
            .tempdir()
            .context("cannot create a scratch folder")?;
        let root = dir.path();
        std::fs::create_dir_all(root.join("workflows"))
            .context("cannot create the workflows folder")?;
        for (file, yaml) in workflows {
            std::fs::write(root.join("workflows").join(file), yaml)
                .with_context(|| format!("cannot write workflow {file}"))?;
        }
        let store = match backend {
            Backend::Sqlite => Store::Sqlite(root.join("state").join("dunningd.db")),
            Backend::Postgres => Store::Postgres(PgDatabase::create(&ctx.postgres).await?),
        };
        let metrics = free_port()?;
        let config = root.join("dunningd.yaml");
        let yaml = format!(
            "{}metrics:\n  listen: {metrics}\n{extra}",
            config_yaml(ctx, root, &store)
        );
        std::fs::write(&config, yaml).context("cannot write the configuration")?;
        let mut daemon = Daemon {
            socket: root.join("admin.sock"),
            metrics,
            dir,
            config,
            binary: ctx.binary("dunningd"),
            log_level: ctx.daemon_log.clone(),
            child: None,
            store,
        };
        match daemon.spawn().await {
            Ok(startup) => Ok((daemon, startup)),
            Err(error) => {
                daemon.finish().await?;
                Err(error)
            }
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn workflows_dir(&self) -> PathBuf {
        self.dir.path().join("workflows")
    }

    /// The JSON lines the sink (the `log` plugin) writes, one per hand-off.
    pub fn deliveries_path(&self) -> PathBuf {
        self.dir.path().join("deliveries.jsonl")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("dunningd.log")
    }

    /// The last lines of the daemon's own log, for error messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Starts the process and waits until its admin API answers.
    pub async fn spawn(&mut self) -> anyhow::Result<Startup> {
        if self.child.is_some() {
            bail!("the daemon is already running");
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .context("cannot open the daemon's log file")?;
        let started = Instant::now();
        let child = Command::new(&self.binary)
            .arg("--config")
            .arg(&self.config)
            .current_dir(self.dir.path())
            .env("RUST_LOG", &self.log_level)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start '{}'", self.binary.display()))?;
        self.child = Some(child);
        let api = self.wait_until_answering(started).await?;
        let mut client = self.client().await?;
        client
            .get_status(GetStatusRequest {})
            .await
            .context("GetStatus after start-up")?;
        Ok(Startup {
            api,
            status: started.elapsed(),
        })
    }

    async fn wait_until_answering(&mut self, started: Instant) -> anyhow::Result<Duration> {
        loop {
            self.check_alive("during start-up")?;
            if self.socket.exists()
                && let Ok(mut client) = self.client().await
                && client.get_clock(GetClockRequest {}).await.is_ok()
            {
                return Ok(started.elapsed());
            }
            if started.elapsed() > PROCESS_DEADLINE {
                bail!(
                    "dunningd did not answer within {PROCESS_DEADLINE:?}:\n{}",
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Fails, with the daemon's last log lines, if the process has exited.
    pub fn check_alive(&mut self, when: &str) -> anyhow::Result<()> {
        let Some(child) = self.child.as_mut() else {
            bail!("the daemon is not running ({when})");
        };
        if let Some(status) = child.try_wait().context("cannot poll the daemon process")? {
            self.child = None;
            bail!("dunningd exited {when} ({status}):\n{}", self.log_tail());
        }
        Ok(())
    }

    /// A gRPC client on the admin socket (one connection each).
    pub async fn client(&self) -> anyhow::Result<AdminClient<Channel>> {
        let socket = self.socket.clone();
        let channel = Endpoint::try_from("http://[::]:50051")?
            .connect_with_connector(tower::service_fn(move |_| {
                let socket = socket.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(
                        tokio::net::UnixStream::connect(socket).await?,
                    ))
                }
            }))
            .await
            .with_context(|| format!("cannot connect to '{}'", self.socket.display()))?;
        Ok(AdminClient::new(channel))
    }

    /// Moves the manual clock forward (`"1d"`); returns once it has moved.
    pub async fn advance(&self, by: &str) -> anyhow::Result<()> {
        self.client()
            .await?
            .advance_clock(AdvanceClockRequest {
                target: Some(dunningd::proto::advance_clock_request::Target::By(
                    by.to_string(),
                )),
            })
            .await
            .with_context(|| format!("AdvanceClock by {by}"))?;
        Ok(())
    }

    /// The process's resident memory (VmRSS), in bytes.
    pub fn rss_bytes(&self) -> anyhow::Result<u64> {
        let child = self.child.as_ref().context("the daemon is not running")?;
        let path = format!("/proc/{}/status", child.id());
        let status =
            std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
        let line = status
            .lines()
            .find(|line| line.starts_with("VmRSS:"))
            .with_context(|| format!("{path} has no VmRSS line"))?;
        let kib: u64 = line
            .split_whitespace()
            .nth(1)
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("cannot read the VmRSS line '{line}'"))?;
        Ok(kib * 1024)
    }

    /// CPU time the process has used so far, all its threads (those that
    /// ended included), user and system.
    pub fn cpu_time(&self) -> anyhow::Result<Duration> {
        let child = self.child.as_ref().context("the daemon is not running")?;
        let path = format!("/proc/{}/stat", child.id());
        let stat = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
        cpu_ticks(&stat)
            .map(|ticks| Duration::from_secs_f64(ticks as f64 / clock_ticks_per_second()))
            .with_context(|| format!("cannot read utime and stime from {path}"))
    }

    /// The daemon's metrics, as its Prometheus endpoint serves them.
    pub async fn metrics(&self) -> anyhow::Result<String> {
        let url = format!("http://{}/metrics", self.metrics);
        let response = reqwest::get(&url)
            .await
            .with_context(|| format!("GET {url}"))?
            .error_for_status()
            .with_context(|| format!("GET {url}"))?;
        response.text().await.with_context(|| format!("GET {url}"))
    }

    /// Kills the process with SIGKILL (no chance to record anything) and
    /// waits for it to be gone; the store stays for the next start.
    pub fn kill9(&mut self) {
        self.kill();
    }

    /// Sends SIGTERM and waits for the process to exit; returns how long
    /// the stop took.
    pub async fn stop(&mut self) -> anyhow::Result<Duration> {
        let Some(mut child) = self.child.take() else {
            return Ok(Duration::ZERO);
        };
        let started = Instant::now();
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status()
            .context("cannot run kill")?;
        if !status.success() {
            bail!("kill -TERM {} failed ({status})", child.id());
        }
        loop {
            if child
                .try_wait()
                .context("cannot poll the daemon process")?
                .is_some()
            {
                return Ok(started.elapsed());
            }
            if started.elapsed() > PROCESS_DEADLINE {
                let _ = child.kill();
                let _ = child.wait();
                bail!("dunningd did not stop within {PROCESS_DEADLINE:?} of SIGTERM");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Stops the daemon and removes its store (a PostgreSQL database is dropped).
    pub async fn finish(mut self) -> anyhow::Result<()> {
        if let Err(error) = self.stop().await {
            eprintln!("warning: {error:#}");
            self.kill();
        }
        if let Store::Postgres(database) = &self.store {
            database.drop_database().await?;
        }
        Ok(())
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Daemon {
    /// A measurement that failed half-way never leaves a daemon behind.
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs `body` on a fresh daemon and always cleans up after it (the
/// process stopped, a PostgreSQL database dropped), whatever `body` returned.
pub async fn with_daemon<T>(
    ctx: &Ctx,
    backend: Backend,
    workflows: &[(String, String)],
    body: impl AsyncFnOnce(&mut Daemon, Startup) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    with_configured_daemon(ctx, backend, workflows, "", body).await
}

/// [`with_daemon`] with `extra` (top-level YAML sections) in the
/// daemon's configuration.
pub async fn with_configured_daemon<T>(
    ctx: &Ctx,
    backend: Backend,
    workflows: &[(String, String)],
    extra: &str,
    body: impl AsyncFnOnce(&mut Daemon, Startup) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let (mut daemon, startup) = Daemon::start(ctx, backend, workflows, extra).await?;
    let result = body(&mut daemon, startup).await;
    let finished = daemon.finish().await;
    let value = result?;
    finished?;
    Ok(value)
}

/// A loopback address with a port nobody listens on right now.
fn free_port() -> anyhow::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .context("cannot find a free port for the metrics endpoint")?;
    Ok(listener.local_addr()?)
}

/// utime + stime (fields 14 and 15) of a `/proc/<pid>/stat` line, in clock
/// ticks. The command name (field 2) may hold spaces and parentheses: the
/// fields are counted from the last `)`.
fn cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): utime is field 14, stime 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// The kernel's clock ticks per second for `/proc` times (`getconf
/// CLK_TCK`, asked once; 100 on every Linux architecture in use).
fn clock_ticks_per_second() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

fn config_yaml(ctx: &Ctx, root: &Path, store: &Store) -> String {
    let mut config = format!(
        "workflows_dir: workflows\nplugin_dir: {plugins}\nstate_dir: state\nadmin:\n  socket: admin.sock\nclock: manual\nclock_start: {CLOCK_START}\nchannels:\n  sink: {{ plugin: log, settings: {{ path: '{log}' }}, concurrency: {concurrency}, timeout: 10s }}\n",
        plugins = ctx.artifacts.display(),
        log = root.join("deliveries.jsonl").display(),
        concurrency = ctx.concurrency,
    );
    if let Store::Postgres(database) = store {
        config.push_str(&format!("database: {}\n", database.url()));
    }
    config
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_are_read_after_the_command_name() {
        let stat = "4242 (dunningd (x) y) S 1 4242 4242 0 -1 4194560 5000 0 0 0 1234 567 0 0 20 0 9 0 100 0 0";
        assert_eq!(cpu_ticks(stat), Some(1234 + 567));
        assert_eq!(cpu_ticks("4242 (dunningd) S 1"), None);
    }
}
