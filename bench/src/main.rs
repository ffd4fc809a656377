//! `dunningd-bench`: how fast the real daemon is on this machine.
//!
//! Every figure comes from the built `dunningd` binary (release build) with
//! the real `log` plugin as its only channel, driven over the admin API the
//! way billing code drives it. The store is read directly only to see when
//! work is finished and how big it got, never to create work. Beside the
//! daemon's figures the harness measures what the database itself can insert
//! on the same machine, so each figure can be read as a share of that
//! ceiling. BENCHMARKS.md explains each figure and the commands behind the
//! published numbers.

mod ceiling;
mod daemon;
mod events;
mod histogram;
mod machine;
mod probe;
mod report;
mod scenarios;
mod stats;
mod store;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};

use crate::daemon::Backend;
use crate::report::Report;

#[derive(Parser, Debug)]
#[command(
    name = "dunningd-bench",
    about = "Measures the real dunningd: ingestion, dispatch, lateness, reloads, footprint, start-up and the database's insert ceiling"
)]
struct Cli {
    /// Which stores to measure.
    #[arg(long, value_enum, default_value_t = BackendChoice::Both)]
    backend: BackendChoice,
    /// `quick` runs in about two minutes; `full` uses the published sizes.
    #[arg(long, value_enum, default_value_t = Scale::Quick)]
    scale: Scale,
    /// Only these measurements (comma-separated); all by default.
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Measure>,
    /// Backlog sizes for the drain, overriding the scale's (comma-separated).
    #[arg(long, value_delimiter = ',')]
    drain_sizes: Vec<u64>,
    /// Repetitions of each drain of at most 100,000 deliveries (the median is
    /// reported; larger backlogs run once), overriding the scale's.
    #[arg(long)]
    reps: Option<u32>,
    /// Active cases for the footprint and start-up measurement, overriding the scale's.
    #[arg(long)]
    footprint_cases: Option<u64>,
    /// The daemon's `RUST_LOG` (default `info`, the daemon's own default).
    #[arg(long, default_value = "info")]
    daemon_log: String,
    /// `concurrency` of the sink channel (the daemon's default is 8).
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// A PostgreSQL role that may create databases. Each daemon gets a
    /// database of its own (`dunningd_bench_…`), dropped afterwards.
    #[arg(
        long,
        env = "DUNNINGD_BENCH_POSTGRES",
        default_value = "postgres://root@127.0.0.1:5432/test"
    )]
    postgres: String,
    /// Folder holding the built `dunningd` and `libdunningd_plugin_log.so`
    /// (default: this workspace's target/release).
    #[arg(long, env = "DUNNINGD_BENCH_ARTIFACTS")]
    artifacts: Option<PathBuf>,
    /// Print the figures as one JSON document instead of a table.
    #[arg(long)]
    json: bool,
    /// Also write the JSON document here, rewritten after every measurement,
    /// so a run that is interrupted keeps what it measured.
    #[arg(long)]
    save: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum BackendChoice {
    Sqlite,
    Postgres,
    Both,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Scale {
    Quick,
    Full,
}

/// One measurement; each starts daemons of its own on fresh stores.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Measure {
    /// The database's own insert rate, no daemon involved.
    Ceiling,
    /// Events per second through SendEvents, single and batched.
    Ingest,
    /// A backlog of due deliveries released at one moment, to the sink.
    Drain,
    /// Due → handed to the plugin, in small rounds (little load).
    Lateness,
    /// A changed workflow file → the new version serving.
    Reload,
    /// Memory, database size and start-up time with many active cases.
    Footprint,
    /// `kill -9` at random moments of drains: deliveries handed over twice.
    Crash,
}

impl Measure {
    pub const ALL: [Measure; 7] = [
        Measure::Ceiling,
        Measure::Ingest,
        Measure::Drain,
        Measure::Lateness,
        Measure::Reload,
        Measure::Footprint,
        Measure::Crash,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Measure::Ceiling => "ceiling",
            Measure::Ingest => "ingest",
            Measure::Drain => "drain",
            Measure::Lateness => "lateness",
            Measure::Reload => "reload",
            Measure::Footprint => "footprint",
            Measure::Crash => "crash",
        }
    }
}

/// How much work each measurement does.
#[derive(Debug, Clone)]
pub struct Sizes {
    /// Events sent one per call, by one caller and by `single_callers`.
    pub single_events: u64,
    pub single_callers: usize,
    /// Events sent `batch` per call by `batch_callers` callers at once.
    pub batched_events: u64,
    pub batch: usize,
    pub batch_callers: usize,
    pub drain: Vec<u64>,
    pub reps: u32,
    pub lateness_rounds: u32,
    pub lateness_per_round: u64,
    pub reloads: u32,
    pub footprint_cases: u64,
    pub restarts: u32,
    /// The drain each `kill -9` interrupts, and how many kills.
    pub crash_deliveries: u64,
    pub crash_kills: u32,
    /// Rows for the batched ceilings; single-row ceilings use `ceiling_single_rows`.
    pub ceiling_rows: u64,
    pub ceiling_single_rows: u64,
}

impl Sizes {
    fn for_scale(scale: Scale) -> Sizes {
        let quick = Sizes {
            single_events: 1_000,
            single_callers: 16,
            batched_events: 20_000,
            batch: 500,
            batch_callers: 4,
            drain: vec![10_000],
            reps: 1,
            lateness_rounds: 30,
            lateness_per_round: 100,
            reloads: 20,
            footprint_cases: 50_000,
            restarts: 3,
            crash_deliveries: 20_000,
            crash_kills: 3,
            ceiling_rows: 100_000,
            ceiling_single_rows: 2_000,
        };
        match scale {
            Scale::Quick => quick,
            Scale::Full => Sizes {
                single_events: 5_000,
                batched_events: 500_000,
                footprint_cases: 1_000_000,
                drain: vec![10_000, 100_000, 1_000_000],
                reps: 3,
                lateness_rounds: 50,
                crash_kills: 5,
                ceiling_rows: 1_000_000,
                ceiling_single_rows: 10_000,
                ..quick
            },
        }
    }
}

/// Everything a measurement needs to know about this run.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub artifacts: PathBuf,
    pub postgres: String,
    pub daemon_log: String,
    pub concurrency: usize,
    pub sizes: Sizes,
}

impl Ctx {
    fn from_cli(cli: &Cli) -> anyhow::Result<Ctx> {
        let mut sizes = Sizes::for_scale(cli.scale);
        if !cli.drain_sizes.is_empty() {
            sizes.drain = cli.drain_sizes.clone();
        }
        if let Some(reps) = cli.reps {
            sizes.reps = reps.max(1);
        }
        if let Some(cases) = cli.footprint_cases {
            sizes.footprint_cases = cases;
        }
        let artifacts = match &cli.artifacts {
            Some(dir) => dir.clone(),
            None => Path::new(env!("CARGO_MANIFEST_DIR"))
                .parent()
                .context("bench/ lives inside the workspace")?
                .join("target")
                .join("release"),
        };
        check_artifacts(&artifacts)?;
        Ok(Ctx {
            artifacts,
            postgres: cli.postgres.clone(),
            daemon_log: cli.daemon_log.clone(),
            concurrency: cli.concurrency.max(1),
            sizes,
        })
    }

    pub fn binary(&self, name: &str) -> PathBuf {
        self.artifacts
            .join(format!("{name}{}", std::env::consts::EXE_SUFFIX))
    }
}

/// Fails early, with the command that fixes it, when the release build is missing.
fn check_artifacts(dir: &Path) -> anyhow::Result<()> {
    let plugin = format!(
        "{}dunningd_plugin_log{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    );
    for file in [format!("dunningd{}", std::env::consts::EXE_SUFFIX), plugin] {
        if !dir.join(&file).is_file() {
            bail!(
                "'{}' is missing: build it with `cargo build --release -p dunningd -p dunningd-plugin-log` (or point --artifacts at the folder holding it)",
                dir.join(&file).display()
            );
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("dunningd-bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: &Cli) -> anyhow::Result<()> {
    let ctx = Ctx::from_cli(cli)?;
    let backends: &[Backend] = match cli.backend {
        BackendChoice::Sqlite => &[Backend::Sqlite],
        BackendChoice::Postgres => &[Backend::Postgres],
        BackendChoice::Both => &[Backend::Sqlite, Backend::Postgres],
    };
    let measures: Vec<Measure> = if cli.only.is_empty() {
        Measure::ALL.to_vec()
    } else {
        Measure::ALL
            .into_iter()
            .filter(|m| cli.only.contains(m))
            .collect()
    };
    let machine = machine::describe(&ctx, backends).await;
    let mut report = Report::new(machine, format!("{:?}", cli.scale).to_lowercase());
    for &backend in backends {
        for &measure in &measures {
            eprintln!("[{}] {} …", backend.name(), measure.name());
            let figures = scenarios::run(measure, &ctx, backend)
                .await
                .with_context(|| format!("{} on {}", measure.name(), backend.name()))?;
            report.extend(figures);
            if let Some(path) = &cli.save {
                std::fs::write(path, report.json()?)
                    .with_context(|| format!("cannot write '{}'", path.display()))?;
            }
        }
    }
    if cli.json {
        println!("{}", report.json()?);
    } else {
        print!("{}", report.table());
    }
    Ok(())
}
