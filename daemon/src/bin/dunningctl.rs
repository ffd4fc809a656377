//! `dunningctl`: the admin client of dunningd, a thin client over its gRPC API.
//!
//! Readable tables by default, `--json` for scripts. Exit codes: 0 success,
//! 1 an error (the daemon refused, a file is invalid, the daemon is not
//! reachable), 2 a usage error.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, anyhow, bail};
use clap::{Parser, Subcommand};
use dunningd::config::{Config, DEFAULT_SOCKET};
use dunningd::model::{CaseState, Event};
use dunningd::proto::{self, admin_client::AdminClient};
use dunningd::workflow::{self, Workflow};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

/// `println!` that ignores a closed stdout (`dunningctl … | head`) instead of
/// panicking.
macro_rules! out {
    ($($arg:tt)*) => {{
        #[cfg(not(test))]
        {
            use std::io::Write as _;
            let _ = writeln!(std::io::stdout(), $($arg)*);
        }
        // The test harness captures only the print macros.
        #[cfg(test)]
        println!($($arg)*);
    }};
}

#[derive(Parser)]
#[command(
    name = "dunningctl",
    version,
    about = "Administer a running dunningd (and check workflows offline)",
    after_help = "Exit status: 0 success, 1 an error or a refusal, 2 a usage error.\n\
                  `workflows validate` and `preview` work offline, without a daemon."
)]
struct Cli {
    /// The daemon's admin socket.
    #[arg(long, global = true, env = "DUNNINGD_SOCKET", default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Talk to the daemon over TCP instead (e.g. http://127.0.0.1:7070).
    #[arg(long, global = true, env = "DUNNINGD_ADDR")]
    addr: Option<String>,
    /// A file holding the bearer token for --addr.
    #[arg(long, global = true, env = "DUNNINGD_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// Print JSON instead of tables (field names as in the gRPC API).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Version, uptime, workflows, plugins, cases and the last reload.
    Status,
    /// Workflows served by the daemon, or checked offline.
    #[command(subcommand)]
    Workflows(WorkflowsCommand),
    /// Re-read the configuration and workflows (like SIGHUP); exit 1 if anything was refused.
    Reload,
    /// Billing events.
    #[command(subcommand)]
    Events(EventsCommand),
    /// Cases: one customer's run through one workflow.
    #[command(subcommand)]
    Cases(CasesCommand),
    /// Offline: what a workflow would send for an event, when, rendered.
    Preview {
        /// The workflow file (YAML).
        workflow: PathBuf,
        /// One event (JSON).
        event: PathBuf,
        /// When the case would start (RFC 3339, e.g. 2026-01-05T09:00:00Z); default now.
        #[arg(long)]
        at: Option<String>,
        /// The daemon configuration, to apply its channels' send windows too.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Stop contacting a customer on a channel: their deliveries there are
    /// skipped (and the step's fallback channel used, if any).
    Optout {
        /// The customer id, as in events.
        customer: String,
        /// A configured channel, e.g. sms.
        #[arg(long)]
        channel: String,
        /// Why, for the record (e.g. "asked by phone").
        #[arg(long)]
        reason: Option<String>,
    },
    /// Undo an opt-out.
    Optin {
        /// The customer id, as in events.
        customer: String,
        /// The channel to contact them on again.
        #[arg(long)]
        channel: String,
    },
    /// Opt-outs, newest first: one customer's, or everyone's.
    Optouts {
        /// Only this customer's.
        #[arg(long)]
        customer: Option<String>,
        /// At most this many (default 100).
        #[arg(long)]
        limit: Option<u32>,
    },
    /// What each workflow recovered: cases by state, recovery rate, revenue
    /// at risk and recovered, time to recovery, and per step and channel the
    /// deliveries and the recoveries they were the last touch before.
    Stats {
        #[command(flatten)]
        filter: StatsFilter,
    },
    /// The figures of `stats` as one self-contained HTML page: per workflow
    /// the recovery funnel, the headline figures and the per-step table.
    Report {
        /// Where to write the page (replaced whole, never half-written).
        #[arg(long, short)]
        out: PathBuf,
        #[command(flatten)]
        filter: StatsFilter,
    },
    /// Channel plugins loaded by the daemon.
    #[command(subcommand)]
    Plugins(PluginsCommand),
    /// The engine clock (moving it works only on daemons run with `clock: manual`).
    #[command(subcommand)]
    Clock(ClockCommand),
}

/// Which cases `stats` and `report` cover; the daemon parses the bounds.
#[derive(clap::Args, Debug, Clone, Default, PartialEq, Eq)]
struct StatsFilter {
    /// Only this workflow.
    #[arg(long)]
    workflow: Option<String>,
    /// Cases started since: an RFC 3339 time, a date (2026-01-31) or a
    /// duration back from now (30d).
    #[arg(long)]
    since: Option<String>,
    /// Cases started before (same forms as --since).
    #[arg(long)]
    until: Option<String>,
}

#[derive(Subcommand)]
enum WorkflowsCommand {
    /// The workflows in use, and the files refused right now (exit 1 if any).
    List,
    /// One workflow: its trigger, steps and channels.
    Show {
        /// The workflow's name (not its file name).
        name: String,
    },
    /// Offline: check files; exit 1 with file:line:col errors.
    Validate {
        /// Workflow files (YAML).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// The daemon configuration, to check channel names too (unchecked without it).
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum EventsCommand {
    /// Send events from a file or `-` (stdin): one JSON event, JSON lines, or a JSON array.
    ///
    /// Every event is checked before any is sent. Prints, per event, whether it
    /// was accepted or a duplicate, and the cases it started or recovered.
    Send {
        /// The file, or `-` for stdin.
        file: String,
    },
}

/// Case states, as `--state` accepts them.
fn case_states() -> clap::builder::PossibleValuesParser {
    clap::builder::PossibleValuesParser::new(CaseState::ALL.iter().map(|s| s.as_str()))
}

#[derive(Subcommand)]
enum CasesCommand {
    /// Cases, newest first.
    List {
        /// Only this workflow's cases.
        #[arg(long)]
        workflow: Option<String>,
        /// Only cases in this state.
        #[arg(long, value_parser = case_states())]
        state: Option<String>,
        /// Only this customer's cases (the customer id from the events).
        #[arg(long)]
        customer: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        limit: u32,
    },
    /// A case's timeline: steps, deliveries, errors.
    Show {
        /// The case id.
        id: String,
    },
    /// Stop sending for a case until it is resumed; the schedule shifts by the pause.
    Pause {
        /// The case id.
        id: String,
    },
    /// Resume a paused case.
    Resume {
        /// The case id.
        id: String,
    },
    /// End a case for good; nothing more is sent.
    Cancel {
        /// The case id.
        id: String,
    },
}

#[derive(Subcommand)]
enum PluginsCommand {
    /// Loaded plugins, their ABI version and the channels they serve.
    List,
}

#[derive(Subcommand)]
enum ClockCommand {
    /// The engine's current time, and whether it is the system or a manual clock.
    Show,
    /// Move a manual clock forward by a duration (e.g. 3d, 90s); for daemons run with `clock: manual`.
    Advance {
        /// How far: 90s, 15m, 3d, 1d12h …
        by: String,
    },
    /// Move a manual clock forward to a time; for daemons run with `clock: manual`.
    Set {
        /// An RFC 3339 time, not earlier than the clock's now.
        to: String,
    },
}

/// Adds the bearer token to every call when one is configured.
#[derive(Clone)]
struct Auth(Option<MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Auth {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(token) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", token.clone());
        }
        Ok(request)
    }
}

type Client = AdminClient<InterceptedService<Channel, Auth>>;

async fn connect(cli: &Cli) -> anyhow::Result<Client> {
    let (channel, auth) = match &cli.addr {
        Some(addr) => {
            let token = match &cli.token_file {
                None => None,
                Some(path) => Some(read_token(path)?),
            };
            let endpoint = Endpoint::from_shared(addr.clone()).map_err(|_| {
                anyhow!("invalid --addr '{addr}' (expected e.g. http://127.0.0.1:7070)")
            })?;
            let channel = endpoint.connect().await.map_err(|e| {
                anyhow!(
                    "cannot connect to {addr}: {}; is dunningd listening there (admin.tcp)?",
                    root_cause(&e)
                )
            })?;
            (channel, Auth(token))
        }
        None => {
            let socket = cli.socket.clone();
            // The URI is a placeholder: the connector below ignores it.
            let channel = Endpoint::from_static("http://[::]:50051")
                .connect_with_connector(tower::service_fn(move |_| {
                    let socket = socket.clone();
                    async move {
                        let stream = tokio::net::UnixStream::connect(socket).await?;
                        Ok::<_, std::io::Error>(TokioIo::new(stream))
                    }
                }))
                .await
                .map_err(|e| {
                    anyhow!(
                        "cannot connect to '{}': {}; is dunningd running? is --socket (or DUNNINGD_SOCKET) right?",
                        cli.socket.display(),
                        root_cause(&e)
                    )
                })?;
            (channel, Auth(None))
        }
    };
    // The daemon's own limit: whatever it accepts, it can show.
    Ok(AdminClient::with_interceptor(channel, auth)
        .max_decoding_message_size(dunningd::config::ADMIN_MESSAGE_LIMIT)
        .max_encoding_message_size(dunningd::config::ADMIN_MESSAGE_LIMIT))
}

fn read_token(path: &Path) -> anyhow::Result<MetadataValue<tonic::metadata::Ascii>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read token file '{}'", path.display()))?;
    let token = text.trim();
    if token.is_empty() {
        bail!("token file '{}' is empty", path.display());
    }
    format!("Bearer {token}").parse().map_err(|_| {
        anyhow!(
            "token file '{}' holds characters not allowed in a header",
            path.display()
        )
    })
}

/// The innermost error: for a refused connection, "No such file or directory
/// (os error 2)" says more than tonic's "transport error".
fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut error = error;
    while let Some(source) = error.source() {
        error = source;
    }
    error.to_string()
}

/// A gRPC error as the one line a user needs: the daemon's own message, with
/// a hint where the fix is on this side.
fn rpc(status: tonic::Status) -> anyhow::Error {
    let message = if status.message().is_empty() {
        status.code().description()
    } else {
        status.message()
    };
    match status.code() {
        tonic::Code::Unauthenticated => {
            anyhow!("{message} (is --token-file or DUNNINGD_TOKEN_FILE right?)")
        }
        tonic::Code::Unavailable if message.contains("transport") => {
            anyhow!("the daemon is not reachable: {message}")
        }
        _ => anyhow!("{message}"),
    }
}

fn print_json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    out!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Amounts per currency, e.g. `€1200.00 + $300.00`.
fn amounts(money: &[proto::Money]) -> String {
    if money.is_empty() {
        return "-".into();
    }
    money
        .iter()
        .map(|m| dunningd::workflow::format_minor(m.amount, &m.currency))
        .collect::<Vec<_>>()
        .join(" + ")
}

/// A recovery rate as a percentage with one decimal, `-` when undecided.
fn format_rate(rate: Option<f64>) -> String {
    rate.map_or("-".to_string(), |r| format!("{:.1}%", r * 100.0))
}

/// A time to recovery as a duration (`1d`, `4h30m`), `-` when none.
fn format_secs(secs: Option<i64>) -> String {
    secs.map_or("-".to_string(), |s| {
        dunningd::duration::format(std::time::Duration::from_secs(s.max(0) as u64))
    })
}

fn print_stats(stats: &proto::Stats) {
    let bound = |t: &str| {
        if t.is_empty() {
            "…".to_string()
        } else {
            short_time(t)
        }
    };
    out!(
        "cases started {} to {}",
        bound(&stats.since),
        bound(&stats.until)
    );
    if stats.workflows.is_empty() {
        out!("no cases");
    }
    for w in &stats.workflows {
        out!();
        out!("{}", w.workflow);
        out!(
            "  started {} · active {} · paused {} · recovered {} · exhausted {} · cancelled {}",
            w.started,
            w.active,
            w.paused,
            w.recovered,
            w.exhausted,
            w.cancelled
        );
        let rate = format_rate(w.recovery_rate);
        let median = format_secs(w.median_time_to_recovery_secs);
        out!(
            "  recovery rate {rate} · at risk {} · recovered {} · median time to recovery {median}",
            amounts(&w.at_risk),
            amounts(&w.recovered_amount)
        );
        let rows: Vec<Vec<String>> = w
            .steps
            .iter()
            .flat_map(|step| {
                step.channels.iter().map(move |c| {
                    vec![
                        step.name.clone(),
                        c.channel.clone(),
                        c.sent.to_string(),
                        c.failed.to_string(),
                        c.skipped.to_string(),
                        c.pending.to_string(),
                        c.last_touch.to_string(),
                    ]
                })
            })
            .collect();
        if !rows.is_empty() {
            out!();
            table(
                &[
                    "STEP",
                    "CHANNEL",
                    "SENT",
                    "FAILED",
                    "SKIPPED",
                    "PENDING",
                    "LAST TOUCH",
                ],
                &rows,
            );
        }
    }
}

/// Prints aligned columns.
fn table(headers: &[&str], rows: &[Vec<String>]) {
    out!("{}", render_table(headers, rows).trim_end_matches('\n'));
}

/// Aligned columns, two spaces apart, no trailing spaces; widths count
/// characters, as `format!` pads by them.
fn render_table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            match widths.get_mut(i) {
                Some(w) => *w = (*w).max(cell.chars().count()),
                None => widths.push(cell.chars().count()),
            }
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[&str]| {
        let mut text = String::new();
        for (cell, width) in cells.iter().zip(&widths) {
            text.push_str(&format!("{cell:<width$}  "));
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(headers);
    for row in rows {
        line(&row.iter().map(String::as_str).collect::<Vec<_>>());
    }
    out
}

/// `2026-01-05T09:00:00.000Z` → `2026-01-05 09:00:00`: seconds are plenty
/// for a person; `--json` keeps the milliseconds.
fn short_time(t: &str) -> String {
    if t.is_empty() {
        return "-".into();
    }
    let t = t.trim_end_matches('Z');
    let t = t.split_once('.').map_or(t, |(whole, _)| whole);
    t.replacen('T', " ", 1)
}

fn dash(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s.to_string()
    }
}

#[path = "dunningctl/report.rs"]
mod report;

#[cfg(test)]
#[path = "dunningctl/tests.rs"]
mod tests;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("dunningctl: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(&cli)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("dunningctl: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs one command; `Ok(false)` means "done, but exit 1" (refused files).
async fn run(cli: &Cli) -> anyhow::Result<bool> {
    match &cli.command {
        Command::Workflows(WorkflowsCommand::Validate { files, config }) => {
            return validate(cli, files, config.as_deref());
        }
        Command::Preview {
            workflow,
            event,
            at,
            config,
        } => return preview(cli, workflow, event, at.as_deref(), config.as_deref()),
        _ => {}
    }
    let mut client = connect(cli).await?;
    match &cli.command {
        Command::Status => status(cli, &mut client).await,
        Command::Workflows(WorkflowsCommand::List) => {
            let list = client
                .list_workflows(proto::ListWorkflowsRequest {})
                .await
                .map_err(rpc)?
                .into_inner();
            if cli.json {
                print_json(&list)?;
            } else {
                let rows: Vec<Vec<String>> = list
                    .workflows
                    .iter()
                    .map(|w| {
                        vec![
                            w.name.clone(),
                            w.version.clone(),
                            w.trigger.clone(),
                            w.steps.to_string(),
                            w.active_cases.to_string(),
                            if w.error.is_some() {
                                "last good version (file has errors)".into()
                            } else {
                                "ok".into()
                            },
                        ]
                    })
                    .collect();
                table(
                    &["NAME", "VERSION", "TRIGGER", "STEPS", "OPEN CASES", "STATE"],
                    &rows,
                );
                print_file_errors(&list.errors);
            }
            Ok(list.errors.is_empty())
        }
        Command::Workflows(WorkflowsCommand::Show { name }) => {
            let detail = client
                .get_workflow(proto::GetWorkflowRequest { name: name.clone() })
                .await
                .map_err(rpc)?
                .into_inner();
            if cli.json {
                print_json(&detail)?;
            } else {
                if let Some(s) = &detail.summary {
                    out!("{} (version {}) from {}", s.name, s.version, s.path);
                    if !s.description.is_empty() {
                        out!("{}", s.description);
                    }
                    let when = if s.condition.is_empty() {
                        String::new()
                    } else {
                        format!(" when {}", s.condition)
                    };
                    out!(
                        "trigger: {}{when}; exits on: {}",
                        s.trigger,
                        s.exit_on.join(", ")
                    );
                    out!();
                }
                let rows: Vec<Vec<String>> = detail
                    .steps
                    .iter()
                    .map(|s| vec![s.name.clone(), s.after.clone(), s.channels.join(", ")])
                    .collect();
                table(&["STEP", "AFTER", "CHANNELS"], &rows);
            }
            Ok(true)
        }
        Command::Reload => {
            let result = client
                .reload(proto::ReloadRequest {})
                .await
                .map_err(rpc)?
                .into_inner();
            if cli.json {
                print_json(&result)?;
            } else {
                let changed = if result.changed.is_empty() {
                    "nothing changed".to_string()
                } else {
                    format!("changed: {}", result.changed.join(", "))
                };
                out!("{} workflows loaded; {changed}", result.workflows_loaded);
                print_file_errors(&result.errors);
            }
            Ok(result.ok)
        }
        Command::Events(EventsCommand::Send { file }) => send_events(cli, &mut client, file).await,
        Command::Cases(command) => cases(cli, &mut client, command).await,
        Command::Optout {
            customer,
            channel,
            reason,
        } => {
            let record = client
                .opt_out(proto::OptOutRequest {
                    customer_id: customer.clone(),
                    channel: channel.clone(),
                    reason: reason.clone().unwrap_or_default(),
                })
                .await
                .map_err(rpc)?
                .into_inner();
            if cli.json {
                print_json(&record)?;
            } else {
                out!(
                    "{} opted out of {} ({})",
                    record.customer_id,
                    record.channel,
                    record.reason
                );
            }
            Ok(true)
        }
        Command::Optin { customer, channel } => {
            let response = client
                .opt_in(proto::OptInRequest {
                    customer_id: customer.clone(),
                    channel: channel.clone(),
                })
                .await
                .map_err(rpc)?
                .into_inner();
            if cli.json {
                print_json(&response)?;
            } else if response.removed {
                out!("{customer} opted in to {channel} again");
            } else {
                out!("{customer} had not opted out of {channel}; nothing changed");
            }
            Ok(true)
        }
        Command::Optouts { customer, limit } => {
            let list = client
                .list_opt_outs(proto::ListOptOutsRequest {
                    customer_id: customer.clone().unwrap_or_default(),
                    limit: limit.unwrap_or(0),
                })
                .await
                .map_err(rpc)?
                .into_inner();
            if cli.json {
                print_json(&list)?;
            } else {
                let rows: Vec<Vec<String>> = list
                    .optouts
                    .iter()
                    .map(|o| {
                        vec![
                            o.customer_id.clone(),
                            o.channel.clone(),
                            o.source.clone(),
                            short_time(&o.created_at),
                            o.reason.clone(),
                        ]
                    })
                    .collect();
                table(&["CUSTOMER", "CHANNEL", "SOURCE", "SINCE", "REASON"], &rows);
            }
            Ok(true)
        }
        Command::Stats { filter } => {
            let stats = get_stats(&mut client, filter).await?;
            if cli.json {
                print_json(&stats)?;
            } else {
                print_stats(&stats);
            }
            Ok(true)
        }
        Command::Report { out, filter } => {
            let stats = get_stats(&mut client, filter).await?;
            let page = report::render(
                &stats,
                &report::Header {
                    generated_at: chrono::Utc::now(),
                    daemon: daemon_name(cli),
                    workflow: filter.workflow.clone(),
                },
            )?;
            report::write_atomically(out, &page)?;
            if cli.json {
                print_json(&serde_json::json!({
                    "out": out,
                    "workflows": stats.workflows.len(),
                }))?;
            } else {
                out!(
                    "wrote {} ({} workflow{})",
                    out.display(),
                    stats.workflows.len(),
                    if stats.workflows.len() == 1 { "" } else { "s" }
                );
            }
            Ok(true)
        }
        Command::Plugins(PluginsCommand::List) => {
            let list = client
                .list_plugins(proto::ListPluginsRequest {})
                .await
                .map_err(rpc)?
                .into_inner();
            if cli.json {
                print_json(&list)?;
            } else {
                let rows: Vec<Vec<String>> = list
                    .plugins
                    .iter()
                    .map(|p| {
                        vec![
                            p.name.clone(),
                            p.version.clone(),
                            p.abi_version.to_string(),
                            p.channels.join(", "),
                            p.path.clone(),
                        ]
                    })
                    .collect();
                table(&["PLUGIN", "VERSION", "ABI", "CHANNELS", "PATH"], &rows);
            }
            Ok(true)
        }
        Command::Clock(command) => {
            use proto::advance_clock_request::Target;
            let clock = match command {
                ClockCommand::Show => client.get_clock(proto::GetClockRequest {}).await,
                ClockCommand::Advance { by } => {
                    client
                        .advance_clock(proto::AdvanceClockRequest {
                            target: Some(Target::By(by.clone())),
                        })
                        .await
                }
                ClockCommand::Set { to } => {
                    client
                        .advance_clock(proto::AdvanceClockRequest {
                            target: Some(Target::To(to.clone())),
                        })
                        .await
                }
            }
            .map_err(rpc)?
            .into_inner();
            if cli.json {
                print_json(&clock)?;
            } else {
                out!("{} ({} clock)", short_time(&clock.now), clock.kind);
            }
            Ok(true)
        }
        Command::Preview { .. } | Command::Workflows(WorkflowsCommand::Validate { .. }) => Ok(true),
    }
}

/// The figures `stats` and `report` show, for the cases `filter` selects.
async fn get_stats(client: &mut Client, filter: &StatsFilter) -> anyhow::Result<proto::Stats> {
    let request = proto::GetStatsRequest {
        workflow: filter.workflow.clone().unwrap_or_default(),
        since: filter.since.clone().unwrap_or_default(),
        until: filter.until.clone().unwrap_or_default(),
    };
    Ok(client.get_stats(request).await.map_err(rpc)?.into_inner())
}

/// The daemon talked to, as the user named it.
fn daemon_name(cli: &Cli) -> String {
    match &cli.addr {
        Some(addr) => addr.clone(),
        None => cli.socket.display().to_string(),
    }
}

fn print_file_errors(errors: &[proto::FileError]) {
    if !errors.is_empty() {
        eprintln!("refused (the last good version, if any, stays in use):");
        for e in errors {
            eprintln!("  {}", e.display);
        }
    }
}

async fn status(cli: &Cli, client: &mut Client) -> anyhow::Result<bool> {
    let s = client
        .get_status(proto::GetStatusRequest {})
        .await
        .map_err(rpc)?
        .into_inner();
    if cli.json {
        print_json(&s)?;
        return Ok(true);
    }
    // Minutes are enough for an uptime.
    let up = std::time::Duration::from_secs(s.uptime_seconds / 60 * 60);
    out!(
        "dunningd {}, up {} (since {})",
        s.version,
        if up.is_zero() {
            "under a minute".to_string()
        } else {
            dunningd::duration::format(up)
        },
        short_time(&s.started_at)
    );
    out!("database   {}", s.database);
    out!("clock      {} ({})", short_time(&s.now), s.clock);
    out!(
        "workflows  {} loaded, {} file errors",
        s.workflows,
        s.workflows_with_errors
    );
    let order = ["active", "paused", "recovered", "exhausted", "cancelled"];
    let cases: Vec<String> = order
        .iter()
        .map(|k| format!("{k} {}", s.cases_by_state.get(*k).copied().unwrap_or(0)))
        .collect();
    out!("cases      {}", cases.join(", "));
    for p in &s.plugins {
        out!(
            "plugin     {} {} ({})",
            p.name,
            p.version,
            p.channels.join(", ")
        );
    }
    if let Some(r) = &s.last_reload {
        out!(
            "reload     {} {}, {} workflows",
            short_time(&r.at),
            if r.ok { "ok" } else { "with errors" },
            r.workflows_loaded
        );
        for e in &r.errors {
            out!("  {}", e.display);
        }
    }
    Ok(true)
}

/// Reads events from a file or `-` (stdin); see [`parse_events`].
fn read_events(file: &str) -> anyhow::Result<Vec<String>> {
    let (name, text) = if file == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read stdin")?;
        ("<stdin>".to_string(), text)
    } else {
        (
            file.to_string(),
            std::fs::read_to_string(file).with_context(|| format!("cannot read '{file}'"))?,
        )
    };
    parse_events(&name, &text)
}

/// Splits one JSON object, a JSON array, or JSON lines into events, each
/// checked here first, so an error names the file and line (or position in
/// the array) before anything is sent.
fn parse_events(name: &str, text: &str) -> anyhow::Result<Vec<String>> {
    // (line, event); line 0 for array elements, which have no line of their own.
    let mut events: Vec<(usize, serde_json::Value)> = Vec::new();
    let whole = serde_json::from_str::<serde_json::Value>(text);
    match whole {
        Ok(serde_json::Value::Array(all)) => events.extend(all.into_iter().map(|v| (0, v))),
        Ok(one) => events.push((1, one)),
        Err(whole_error) => {
            for (i, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                match serde_json::from_str(line) {
                    Ok(value) => events.push((i + 1, value)),
                    // One object spread over several lines, broken somewhere:
                    // the error over the whole text says where.
                    Err(e) if events.is_empty() && e.is_eof() => {
                        bail!(
                            "{name}:{}:{}: invalid JSON: {}",
                            whole_error.line(),
                            whole_error.column(),
                            json_message(&whole_error)
                        );
                    }
                    Err(e) => bail!(
                        "{name}:{}:{}: invalid JSON: {}",
                        i + 1,
                        e.column(),
                        json_message(&e)
                    ),
                }
            }
        }
    }
    if events.is_empty() {
        bail!("{name}: no events");
    }
    let mut out = Vec::with_capacity(events.len());
    for (index, (line, value)) in events.into_iter().enumerate() {
        let text = value.to_string();
        if let Err(e) = Event::from_json(&text) {
            let at = if line > 0 {
                format!("{name}:{line}")
            } else {
                format!("{name}: event {}", index + 1)
            };
            bail!("{at}: {e}");
        }
        out.push(text);
    }
    Ok(out)
}

/// serde_json's message without its " at line L column C" suffix, which we
/// print as `file:line:col` instead.
fn json_message(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.rfind(" at line ") {
        Some(at) => text[..at].to_string(),
        None => text,
    }
}

/// Events per call: well under the daemon's limit, and small enough that one
/// call stays quick.
const BATCH: usize = 500;

async fn send_events(cli: &Cli, client: &mut Client, file: &str) -> anyhow::Result<bool> {
    let events = read_events(file)?;
    let mut results = Vec::with_capacity(events.len());
    for (n, batch) in events.chunks(BATCH).enumerate() {
        let first = n * BATCH;
        let response = client
            .send_events(proto::SendEventsRequest {
                events: batch.to_vec(),
            })
            .await
            .map_err(rpc)
            .map_err(|e| {
                // A refused batch is refused whole; earlier batches are stored.
                let range = format!("events {}-{}", first + 1, first + batch.len());
                if first == 0 {
                    e.context(range)
                } else {
                    e.context(format!("{range} (events 1-{first} were accepted)"))
                }
            })?;
        results.extend(response.into_inner().results);
    }
    if cli.json {
        print_json(&proto::SendEventsResponse { results })?;
        return Ok(true);
    }
    for r in &results {
        out!("{}  {}", r.event_id, event_outcome(r));
        for note in &r.notes {
            out!("  note: {note}");
        }
    }
    Ok(true)
}

/// One event's outcome in a few words.
fn event_outcome(r: &proto::EventResult) -> String {
    if r.duplicate {
        return "duplicate: already received, ignored".into();
    }
    let mut parts = Vec::new();
    if !r.cases_started.is_empty() {
        parts.push(format!("started {}", r.cases_started.join(", ")));
    }
    if !r.cases_recovered.is_empty() {
        parts.push(format!("recovered {}", r.cases_recovered.join(", ")));
    }
    if parts.is_empty() {
        parts.push("no case started or ended".into());
    }
    format!("accepted: {}", parts.join("; "))
}

async fn cases(cli: &Cli, client: &mut Client, command: &CasesCommand) -> anyhow::Result<bool> {
    let case = match command {
        CasesCommand::List {
            workflow,
            state,
            customer,
            limit,
        } => {
            let list = client
                .list_cases(proto::ListCasesRequest {
                    workflow: workflow.clone().unwrap_or_default(),
                    state: state.clone().unwrap_or_default(),
                    customer: customer.clone().unwrap_or_default(),
                    limit: *limit,
                })
                .await
                .map_err(rpc)?
                .into_inner();
            if cli.json {
                print_json(&list)?;
            } else {
                let rows: Vec<Vec<String>> = list
                    .cases
                    .iter()
                    .map(|c| {
                        vec![
                            c.id.clone(),
                            c.workflow.clone(),
                            c.customer_id.clone(),
                            c.subject.clone(),
                            c.state.clone(),
                            short_time(&c.started_at),
                        ]
                    })
                    .collect();
                table(
                    &[
                        "CASE", "WORKFLOW", "CUSTOMER", "SUBJECT", "STATE", "STARTED",
                    ],
                    &rows,
                );
            }
            return Ok(true);
        }
        CasesCommand::Show { id } => {
            let detail = client
                .get_case(proto::GetCaseRequest { id: id.clone() })
                .await
                .map_err(rpc)?
                .into_inner();
            if cli.json {
                print_json(&detail)?;
            } else if let Some(c) = &detail.case {
                out!("case {} — {}", c.id, c.state);
                out!("workflow   {} (version {})", c.workflow, c.workflow_version);
                out!("customer   {}, subject {}", c.customer_id, c.subject);
                out!(
                    "started    {} by event {}",
                    short_time(&c.started_at),
                    c.trigger_event_id
                );
                if !c.ended_reason.is_empty() {
                    out!(
                        "ended      {}: {}",
                        short_time(&c.updated_at),
                        c.ended_reason
                    );
                }
                out!();
                let rows: Vec<Vec<String>> = detail
                    .deliveries
                    .iter()
                    .map(|d| {
                        let note = [
                            d.last_error.as_str(),
                            d.skip_reason.as_str(),
                            d.note.as_str(),
                        ]
                        .iter()
                        .filter(|s| !s.is_empty())
                        .copied()
                        .collect::<Vec<_>>()
                        .join("; ");
                        let channel = if d.fallback_for.is_empty() {
                            d.channel.clone()
                        } else {
                            format!("{} (for {})", d.channel, d.fallback_for)
                        };
                        vec![
                            d.step.clone(),
                            channel,
                            if d.provider_status.is_empty() {
                                d.status.clone()
                            } else {
                                format!("{}, {}", d.status, d.provider_status)
                            },
                            short_time(&d.due_at),
                            short_time(&d.planned_at),
                            d.attempts.to_string(),
                            dash(&d.receipt),
                            dash(&note),
                        ]
                    })
                    .collect();
                table(
                    &[
                        "STEP",
                        "CHANNEL",
                        "STATUS",
                        "DUE",
                        "PLANNED",
                        "ATTEMPTS",
                        "RECEIPT",
                        "ERROR / REASON",
                    ],
                    &rows,
                );
            }
            return Ok(true);
        }
        CasesCommand::Pause { id } => client.pause_case(proto::CaseRef { id: id.clone() }).await,
        CasesCommand::Resume { id } => client.resume_case(proto::CaseRef { id: id.clone() }).await,
        CasesCommand::Cancel { id } => client.cancel_case(proto::CaseRef { id: id.clone() }).await,
    }
    .map_err(rpc)?
    .into_inner();
    if cli.json {
        print_json(&case)?;
    } else {
        out!("case {} is {}", case.id, case.state);
    }
    Ok(true)
}

fn validate(cli: &Cli, files: &[PathBuf], config: Option<&Path>) -> anyhow::Result<bool> {
    let (channels, limits): (Option<BTreeSet<String>>, _) = match config {
        None => {
            if !cli.json {
                eprintln!(
                    "note: channel names not checked (pass --config dunningd.yaml to check them)"
                );
            }
            (None, workflow::FileLimits::DEFAULT)
        }
        Some(path) => {
            let config = Config::load(path).map_err(|e| anyhow!("{e}"))?;
            (
                Some(config.channels.keys().cloned().collect()),
                config.limits,
            )
        }
    };
    let problems = workflow::validate_files(files, channels.as_ref(), limits);
    if cli.json {
        print_json(&serde_json::json!({
            "ok": problems.is_empty(),
            "files": files,
            "channels_checked": channels.is_some(),
            "errors": problems,
        }))?;
    } else if problems.is_empty() {
        out!("{} file(s) valid", files.len());
    } else {
        for p in &problems {
            out!("{p}");
        }
    }
    Ok(problems.is_empty())
}

fn preview(
    cli: &Cli,
    workflow_path: &Path,
    event_path: &Path,
    at: Option<&str>,
    config: Option<&Path>,
) -> anyhow::Result<bool> {
    let source = std::fs::read_to_string(workflow_path)
        .with_context(|| format!("cannot read '{}'", workflow_path.display()))?;
    let workflow = Workflow::parse(workflow_path, &source, None).map_err(|errors| {
        anyhow!(
            "{}",
            errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        )
    })?;
    let text = std::fs::read_to_string(event_path)
        .with_context(|| format!("cannot read '{}'", event_path.display()))?;
    let event = Event::from_json(&text).map_err(|e| anyhow!("{}: {e}", event_path.display()))?;
    let start = match at {
        None => chrono::Utc::now(),
        Some(at) => at
            .parse()
            .map_err(|e| anyhow!("--at: invalid RFC 3339 time '{at}': {e}"))?,
    };
    let channel_windows = match config {
        None => BTreeMap::new(),
        Some(path) => Config::load(path)
            .map_err(|e| anyhow!("{e}"))?
            .channels
            .into_iter()
            .filter_map(|(name, spec)| Some((name, spec.send_window?)))
            .collect(),
    };
    let plan = workflow::preview::preview(&workflow, &event, start, &channel_windows)?;
    if cli.json {
        print_json(&plan)?;
        return Ok(true);
    }
    out!(
        "workflow {} (version {}), event {}",
        plan.workflow,
        plan.version,
        plan.event_id
    );
    if !plan.triggered {
        out!(
            "no case would start: {}",
            plan.reason.as_deref().unwrap_or("")
        );
        return Ok(true);
    }
    out!("case starts {}", plan.start.format("%Y-%m-%d %H:%M UTC"));
    for step in &plan.steps {
        out!();
        let mut notes = Vec::new();
        if let Some(condition) = &step.condition {
            notes.push(format!("when {condition}"));
        }
        if let Some(expires) = &step.expires_after {
            notes.push(format!("expires after {expires}"));
        }
        if step.critical {
            notes.push("critical".to_string());
        }
        let notes = if notes.is_empty() {
            String::new()
        } else {
            format!(" [{}]", notes.join(", "))
        };
        out!(
            "step {} (after {}): due {}{notes}",
            step.name,
            step.after,
            step.due_at.format("%Y-%m-%d %H:%M UTC"),
        );
        for send in &step.sends {
            let fallback = send
                .fallback
                .as_deref()
                .map(|f| format!(", fallback {f}"))
                .unwrap_or_default();
            let when = match (&send.skipped, send.planned_at) {
                (Some(reason), _) => format!("skipped: {reason}"),
                (None, Some(at)) => {
                    let local = send
                        .planned_local
                        .as_deref()
                        .map(|l| format!(" ({l})"))
                        .unwrap_or_default();
                    format!("sent {}{local}", at.format("%Y-%m-%d %H:%M UTC"))
                }
                (None, None) => "not sent".to_string(),
            };
            out!("  {} [{}{fallback}]: {when}", send.channel, send.template);
            if let Some(message) = &send.message
                && send.skipped.is_none()
            {
                for (field, text) in message {
                    let mut lines = text.lines();
                    out!("    {field}: {}", lines.next().unwrap_or("").trim_end());
                    for line in lines {
                        // Blank lines stay blank: no trailing spaces.
                        let line = format!("    {:width$}  {line}", "", width = field.len());
                        out!("{}", line.trim_end());
                    }
                }
            }
            if let Some(error) = &send.error {
                out!("    error: {error}");
            }
        }
    }
    Ok(true)
}
