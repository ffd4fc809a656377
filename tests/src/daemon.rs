//! Starting the real daemon for a test.
//!
//! [`TestDaemon::start`] writes a configuration into a scratch folder (its
//! own database, workflows folder, admin socket; every channel on the real
//! `log` plugin writing JSON lines to a file unless the test says otherwise;
//! a manual clock so days pass in milliseconds), starts the built `dunningd`
//! and waits until its admin socket answers the health check.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dunningd::proto::admin_client::AdminClient;
pub use dunningd_test_support::PgDatabase;
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint};

/// The manual clock's starting point in tests: a Monday, 09:00 UTC.
pub const CLOCK_START: &str = "2026-01-05T09:00:00Z";

/// What a test daemon runs with.
#[derive(Debug, Clone)]
pub struct Setup {
    /// File name → content, written to the workflows folder.
    pub workflows: BTreeMap<String, String>,
    /// Channel name → YAML of its configuration (`{ plugin: …, settings: … }`);
    /// `{dir}` is replaced by the scratch folder. Defaults: `email`, `sms`,
    /// `in_app`, `webhook`, `billing` on the log plugin, all writing
    /// `deliveries.jsonl`.
    pub channels: BTreeMap<String, String>,
    /// Extra top-level YAML appended to the configuration.
    pub extra_config: String,
    /// Extra environment for the daemon process (e.g. `NOTIFY_SOCKET`).
    pub env: Vec<(String, String)>,
    /// Where the daemon keeps its state: SQLite in its scratch folder, or a
    /// test's own PostgreSQL database (shared by the daemons given it).
    pub backend: Backend,
    /// The umask the daemon is started with (`None`: the test's own), to
    /// prove it sets the modes of what it creates itself.
    pub umask: Option<u32>,
    /// The admin socket, relative to the scratch folder (a folder in it is
    /// created by the daemon).
    pub admin_socket: String,
}

/// The store a test daemon runs on.
#[derive(Clone, Default)]
pub enum Backend {
    #[default]
    Sqlite,
    Postgres(Arc<PgDatabase>),
}

impl Backend {
    /// A PostgreSQL backend on a database of the test's own, or `None` where
    /// the PostgreSQL suite is not enabled (see [`PgDatabase::create`]).
    pub async fn postgres() -> Option<Backend> {
        Some(Backend::Postgres(Arc::new(PgDatabase::create().await?)))
    }
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Backend::Sqlite => f.write_str("Sqlite"),
            Backend::Postgres(db) => write!(f, "Postgres({})", db.url()),
        }
    }
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            workflows: BTreeMap::new(),
            channels: ["email", "sms", "in_app", "webhook", "billing"]
                .into_iter()
                .map(|name| {
                    (
                        name.to_string(),
                        "{ plugin: log, settings: { path: '{dir}/deliveries.jsonl' } }".to_string(),
                    )
                })
                .collect(),
            extra_config: String::new(),
            env: Vec::new(),
            backend: Backend::Sqlite,
            umask: None,
            admin_socket: "admin.sock".into(),
        }
    }
}

impl Setup {
    /// The shipped example workflows from `workflows/`.
    pub fn shipped_workflows() -> Setup {
        let mut setup = Setup::default();
        let dir = crate::workspace_root().join("workflows");
        for entry in std::fs::read_dir(&dir).expect("workflows/ exists") {
            let path = entry.expect("dir entry").path();
            if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                let name = path
                    .file_name()
                    .expect("file name")
                    .to_string_lossy()
                    .to_string();
                setup
                    .workflows
                    .insert(name, std::fs::read_to_string(&path).expect("read workflow"));
            }
        }
        setup
    }

    pub fn workflow(mut self, file: &str, yaml: &str) -> Setup {
        self.workflows.insert(file.to_string(), yaml.to_string());
        self
    }

    pub fn channel(mut self, name: &str, yaml: &str) -> Setup {
        self.channels.insert(name.to_string(), yaml.to_string());
        self
    }

    /// Starts the daemon with this file-creation mask (e.g. `0o000`).
    pub fn umask(mut self, mask: u32) -> Setup {
        self.umask = Some(mask);
        self
    }

    pub fn on(mut self, backend: &Backend) -> Setup {
        self.backend = backend.clone();
        self
    }
}

pub struct TestDaemon {
    /// The scratch folder: config, database, workflows, socket, logs.
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub config: PathBuf,
    child: Option<Child>,
    /// How many times the daemon was started (each start appends its log).
    starts: u32,
    env: Vec<(String, String)>,
    umask: Option<u32>,
    /// Keeps a PostgreSQL test database alive while the daemon may use it.
    _backend: Backend,
}

impl TestDaemon {
    pub async fn start(setup: Setup) -> TestDaemon {
        let dir = tempfile::Builder::new()
            .prefix("dunningd-e2e")
            .tempdir()
            .expect("tempdir");
        let root = dir.path();
        std::fs::create_dir_all(root.join("workflows")).expect("mkdir workflows");
        for (file, yaml) in &setup.workflows {
            std::fs::write(root.join("workflows").join(file), yaml).expect("write workflow");
        }
        // Unix socket paths are limited to ~100 bytes; tempdirs are short enough.
        let socket = root.join(&setup.admin_socket);
        let mut config = format!(
            "workflows_dir: workflows\nplugin_dir: {}\nstate_dir: state\nadmin:\n  socket: {}\nclock: manual\nclock_start: {CLOCK_START}\nchannels:\n",
            crate::plugin_dir().display(),
            setup.admin_socket
        );
        for (name, yaml) in &setup.channels {
            let yaml = yaml.replace("{dir}", &root.display().to_string());
            config.push_str(&format!("  {name}: {yaml}\n"));
        }
        if let Backend::Postgres(database) = &setup.backend {
            config.push_str(&format!("database: {}\n", database.url()));
        }
        config.push_str(&setup.extra_config);
        let config_path = root.join("dunningd.yaml");
        std::fs::write(&config_path, config).expect("write config");
        let mut daemon = TestDaemon {
            dir,
            socket,
            config: config_path,
            child: None,
            starts: 0,
            env: setup.env.clone(),
            umask: setup.umask,
            _backend: setup.backend.clone(),
        };
        daemon.spawn().await;
        daemon
    }

    /// Starts (or restarts) the process and waits until it serves.
    pub async fn spawn(&mut self) {
        assert!(self.child.is_none(), "daemon already running");
        self.starts += 1;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("dunningd.log"))
            .expect("open daemon log");
        // A umask is set by a shell that then becomes the daemon (`exec`).
        let mut command = match self.umask {
            None => Command::new(crate::binary("dunningd")),
            Some(umask) => {
                let mut shell = Command::new("sh");
                shell
                    .arg("-c")
                    .arg(format!("umask {umask:03o} && exec \"$0\" \"$@\""))
                    .arg(crate::binary("dunningd"));
                shell
            }
        };
        let child = command
            .arg("--config")
            .arg(&self.config)
            .current_dir(self.dir.path())
            .env("RUST_LOG", "info,dunningd=debug")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start dunningd");
        self.child = Some(child);
        self.wait_ready().await;
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                panic!(
                    "dunningd exited during start-up ({status}):\n{}",
                    self.log()
                );
            }
            if self.socket.exists()
                && let Ok(mut client) = self.try_client().await
                && client
                    .get_status(dunningd::proto::GetStatusRequest {})
                    .await
                    .is_ok()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "dunningd did not become ready in 30s:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The running daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("daemon running").id()
    }

    pub fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    /// The daemon's own log (stderr) so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.path("dunningd.log")).unwrap_or_default()
    }

    async fn try_client(&self) -> Result<AdminClient<Channel>, tonic::transport::Error> {
        Ok(AdminClient::new(self.try_channel().await?))
    }

    /// A raw gRPC channel on the admin socket, for the health and reflection services.
    pub async fn channel(&self) -> Channel {
        self.try_channel()
            .await
            .expect("connect to the admin socket")
    }

    async fn try_channel(&self) -> Result<Channel, tonic::transport::Error> {
        let socket = self.socket.clone();
        Endpoint::try_from("http://[::]:50051")?
            .connect_with_connector(tower::service_fn(move |_| {
                let socket = socket.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(
                        tokio::net::UnixStream::connect(socket).await?,
                    ))
                }
            }))
            .await
    }

    /// A gRPC client on the admin socket.
    pub async fn client(&self) -> AdminClient<Channel> {
        self.try_client()
            .await
            .expect("connect to the admin socket")
    }

    /// Runs `dunningctl` against this daemon.
    pub fn ctl(&self, args: &[&str]) -> Output {
        Command::new(crate::binary("dunningctl"))
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .expect("run dunningctl")
    }

    /// Runs `dunningctl` and returns its stdout, failing the test on a non-zero exit.
    pub fn ctl_ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert!(
            out.status.success(),
            "dunningctl {args:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    /// Sends billing events over the API (without waiting for their
    /// deliveries) and returns what each did.
    pub async fn send_events(&self, events: Vec<String>) -> Vec<dunningd::proto::EventResult> {
        self.client()
            .await
            .send_events(dunningd::proto::SendEventsRequest { events })
            .await
            .expect("send events")
            .into_inner()
            .results
    }

    /// Sends events and waits until what they made due has an outcome.
    pub async fn send_and_settle(&self, events: Vec<String>) {
        self.send_events(events).await;
        self.settle().await;
    }

    /// A case with its deliveries.
    pub async fn case(&self, id: &str) -> dunningd::proto::CaseDetail {
        self.client()
            .await
            .get_case(dunningd::proto::GetCaseRequest { id: id.into() })
            .await
            .expect("get case")
            .into_inner()
    }

    /// One customer's cases, newest first.
    pub async fn cases_of(&self, customer: &str) -> Vec<dunningd::proto::Case> {
        self.client()
            .await
            .list_cases(dunningd::proto::ListCasesRequest {
                customer: customer.into(),
                ..Default::default()
            })
            .await
            .expect("list cases")
            .into_inner()
            .cases
    }

    /// Every case in `state` (up to 10,000).
    pub async fn cases_in(&self, state: &str) -> Vec<dunningd::proto::Case> {
        self.client()
            .await
            .list_cases(dunningd::proto::ListCasesRequest {
                state: state.into(),
                limit: 10_000,
                ..Default::default()
            })
            .await
            .expect("list cases")
            .into_inner()
            .cases
    }

    /// The billing sources and what each has heard (`ListSources`).
    pub async fn sources(&self) -> Vec<dunningd::proto::SourceInfo> {
        self.client()
            .await
            .list_sources(dunningd::proto::ListSourcesRequest {})
            .await
            .expect("list sources")
            .into_inner()
            .sources
    }

    /// Moves the manual clock forward and waits until every delivery due by
    /// then has an outcome.
    pub async fn advance(&self, by: &str) {
        self.move_clock(by).await;
        self.settle().await;
    }

    /// Moves the manual clock forward (`"3d"`) and returns at once.
    pub async fn move_clock(&self, by: &str) {
        let mut client = self.client().await;
        client
            .advance_clock(dunningd::proto::AdvanceClockRequest {
                target: Some(dunningd::proto::advance_clock_request::Target::By(
                    by.to_string(),
                )),
            })
            .await
            .expect("advance clock");
    }

    /// Waits until no delivery is due-but-unfinished at the current engine time.
    pub async fn settle(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let pending = self.due_unfinished().await;
            if pending.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} due deliveries still unfinished after 20s, among them {:?}:\n{}",
                pending.len(),
                &pending[..pending.len().min(5)],
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The due deliveries of active cases without an outcome yet.
    async fn due_unfinished(&self) -> Vec<dunningd::proto::Delivery> {
        let mut client = self.client().await;
        let now = client
            .get_clock(dunningd::proto::GetClockRequest {})
            .await
            .expect("get clock")
            .into_inner()
            .now;
        let cases = self.cases_in("active").await;
        let mut pending = Vec::new();
        for case in cases {
            let detail = client
                .get_case(dunningd::proto::GetCaseRequest { id: case.id })
                .await
                .expect("get case")
                .into_inner();
            pending.extend(detail.deliveries.into_iter().filter(|d| {
                matches!(d.status.as_str(), "scheduled" | "retrying" | "sending")
                    && d.planned_at <= now
            }));
        }
        pending
    }

    /// Every delivery the log plugin wrote (`deliveries.jsonl` in the scratch folder).
    pub fn deliveries(&self) -> Vec<serde_json::Value> {
        read_jsonl(&self.path("deliveries.jsonl"))
    }

    /// Kills the process without warning (`kill -9`).
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits for the process to exit on its own (a plugin took it down)
    /// and returns how it ended.
    pub async fn exited(&mut self) -> std::process::ExitStatus {
        self.wait_for_exit("exit").await
    }

    /// Sends a signal (`HUP`, `TERM` …) to the daemon.
    pub fn signal(&self, name: &str) {
        let child = self.child.as_ref().expect("daemon running");
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(child.id().to_string())
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Sends SIGTERM and waits for the exit code (without blocking the
    /// test's runtime, so its connections can answer the daemon's goodbye).
    pub async fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status();
        self.wait_for_exit("stop after SIGTERM").await
    }

    /// Waits up to 30 s for the process to end (without blocking the test's
    /// runtime), killing it and failing with its log if it does not `what`.
    async fn wait_for_exit(&mut self, what: &str) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("daemon running");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                panic!("dunningd did not {what} within 30s:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Starts `dunningd --config config` in `dir` for a configuration it must
/// refuse, and returns how it exited and what it wrote to stderr. Fails the
/// test if it is still running after 30 s (it started when it should not).
pub async fn start_refused(config: &Path, dir: &Path) -> (std::process::ExitStatus, String) {
    let mut child = Command::new(crate::binary("dunningd"))
        .arg("--config")
        .arg(config)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start dunningd");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "dunningd started with {}, which it should refuse",
                config.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let stderr = std::io::read_to_string(child.stderr.take().expect("stderr")).expect("read");
    (status, stderr)
}

/// Reads a JSON-lines file; a missing file is empty. Only whole lines
/// count: a file read while a daemon appends to it may end in the part of a
/// line written so far.
pub fn read_jsonl(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let whole = text.rfind('\n').map_or("", |end| &text[..end]);
    whole
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect()
}
