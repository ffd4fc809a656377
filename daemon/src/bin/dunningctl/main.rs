//! `dunningctl`: the admin client of dunningd, a thin client over its gRPC API.
//!
//! Readable tables by default, `--json` for scripts. What is printed for
//! people shows data escaped and cut (`output`); `--json` is exact.
//!
//! Exit codes: 0 success; 1 an error (the daemon refused, a file is invalid,
//! the daemon is not reachable) or a workflow file refused (`status`,
//! `workflows list`, `reload` and `workflows validate` alike, each after
//! printing its answer); 2 a usage error; for `cases show`, 3 when no case
//! has the id or id prefix and 4 when a prefix names several cases.
//!
//! # Layout
//!
//! This file holds the command line and the dispatch only. `client` reaches
//! the daemon and turns its errors into one line with a hint (and an exit
//! code of its own for `cases show`); `output` is everything printed for
//! people, and the one choice between that and `--json`. One module per
//! command group: `status`, `workflows` (with `reload`), `events`, `cases`,
//! `optouts` (`optout`, `optin`, `optouts`), `stats` (with `report`, whose
//! page `report` renders), `plugins`, `sources`, `clock`, `preview`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use dunningd::config::DEFAULT_SOCKET;
use dunningd::model::CaseState;

// First: it defines `out!`, which the modules after it use.
#[macro_use]
mod output;

mod cases;
mod client;
mod clock;
mod events;
mod optouts;
mod plugins;
mod preview;
mod report;
mod sources;
mod stats;
mod status;
mod workflows;

#[cfg(test)]
mod tests;

#[derive(Parser)]
#[command(
    name = "dunningctl",
    version,
    about = "Administer a running dunningd (and check workflows offline)",
    after_help = "Exit status: 0 success, 1 an error or a refusal (a workflow file refused \
                  included), 2 a usage error; `cases show`: 3 no such case, 4 an ambiguous id prefix.\n\
                  `workflows validate`, `preview` and `sources map` work offline, without a daemon."
)]
struct Cli {
    /// Print JSON instead of tables (field names as in the gRPC API).
    #[arg(long, global = true)]
    json: bool,
    // Where the daemon is, given before the command (`dunningctl --socket …
    // reload`), as command lines written for older versions do; [`parse`]
    // merges in what the command itself was given. After `json`, or the
    // heading "Connection" would carry over to it.
    #[command(flatten)]
    connection: Connection,
    #[command(subcommand)]
    command: Command,
}

/// How to reach the daemon. Only commands that talk to it take these
/// options (see [`OFFLINE`]); every option also reads its environment
/// variable.
#[derive(clap::Args, Clone, Debug, Default, PartialEq, Eq)]
#[command(next_help_heading = "Connection")]
struct Connection {
    /// The daemon's admin socket [default: /run/dunningd/admin.sock].
    #[arg(long, env = "DUNNINGD_SOCKET", value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Talk to the daemon over TCP instead: http://HOST:PORT, or
    /// https://HOST:PORT for TLS.
    #[arg(long, env = "DUNNINGD_ADDR", value_name = "URL")]
    addr: Option<String>,
    /// A file holding the bearer token for --addr.
    #[arg(long, env = "DUNNINGD_TOKEN_FILE", value_name = "PATH")]
    token_file: Option<PathBuf>,
    /// The CA certificate (PEM) that signed the daemon's certificate, for an
    /// https:// --addr; without it, the system's trusted roots.
    #[arg(long, env = "DUNNINGD_CA_FILE", value_name = "PATH")]
    ca_file: Option<PathBuf>,
    /// This client's certificate (PEM), for a daemon that requires mutual TLS.
    #[arg(long, env = "DUNNINGD_CERT_FILE", value_name = "PATH")]
    cert_file: Option<PathBuf>,
    /// The private key (PEM) of --cert-file.
    #[arg(long, env = "DUNNINGD_KEY_FILE", value_name = "PATH")]
    key_file: Option<PathBuf>,
    /// The name the daemon's certificate must carry, when --addr reaches it
    /// by another name or an IP address.
    #[arg(long, env = "DUNNINGD_TLS_SERVER_NAME", value_name = "NAME")]
    tls_server_name: Option<String>,
}

impl Connection {
    /// Only what was typed on the command line (not environment variables).
    fn typed(matches: &clap::ArgMatches) -> Connection {
        let Ok(all) = Connection::from_arg_matches(matches) else {
            return Connection::default();
        };
        let typed =
            |id: &str| matches.value_source(id) == Some(clap::parser::ValueSource::CommandLine);
        Connection {
            socket: all.socket.filter(|_| typed("socket")),
            addr: all.addr.filter(|_| typed("addr")),
            token_file: all.token_file.filter(|_| typed("token_file")),
            ca_file: all.ca_file.filter(|_| typed("ca_file")),
            cert_file: all.cert_file.filter(|_| typed("cert_file")),
            key_file: all.key_file.filter(|_| typed("key_file")),
            tls_server_name: all.tls_server_name.filter(|_| typed("tls_server_name")),
        }
    }

    /// Each option from `self`, else from `other`.
    fn or(self, other: Connection) -> Connection {
        Connection {
            socket: self.socket.or(other.socket),
            addr: self.addr.or(other.addr),
            token_file: self.token_file.or(other.token_file),
            ca_file: self.ca_file.or(other.ca_file),
            cert_file: self.cert_file.or(other.cert_file),
            key_file: self.key_file.or(other.key_file),
            tls_server_name: self.tls_server_name.or(other.tls_server_name),
        }
    }

    fn socket(&self) -> PathBuf {
        self.socket
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET))
    }
}

/// Commands that never talk to the daemon: they take no connection options,
/// so their help does not offer any.
const OFFLINE: &[&[&str]] = &[
    &["workflows", "validate"],
    &["preview"],
    &["sources", "map"],
];

/// The connection options as clap arguments, to add to a command.
fn connection_args() -> Vec<clap::Arg> {
    Connection::augment_args(clap::Command::new("connection"))
        .get_arguments()
        .cloned()
        .collect()
}

/// The command line: [`Cli`] with the connection options added to every
/// command that connects (to a group whose commands all connect, for all of
/// them at once).
fn command() -> clap::Command {
    fn offline_below(path: &[String]) -> bool {
        OFFLINE.iter().any(|offline| {
            offline.len() >= path.len() && offline.iter().zip(path).all(|(a, b)| a == b)
        })
    }
    fn add(command: clap::Command, path: &mut Vec<String>) -> clap::Command {
        let names: Vec<String> = command
            .get_subcommands()
            .map(|sub| sub.get_name().to_string())
            .collect();
        let mut command = command;
        for name in names {
            path.push(name.clone());
            let offline = offline_below(path);
            let mut sub_path = path.clone();
            command = command.mut_subcommand(&name, |sub| {
                if !offline {
                    // Global within the group: `cases --socket … list` and
                    // `cases list --socket …` both work.
                    sub.args(connection_args().into_iter().map(|arg| arg.global(true)))
                } else {
                    add(sub, &mut sub_path)
                }
            });
            path.pop();
        }
        command
    }
    add(Cli::command(), &mut Vec::new())
}

/// Parses the command line: the options a command was given win over those
/// given before it, and both over environment variables.
fn parse<I, T>(args: I) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let matches = command().try_get_matches_from(args)?;
    let mut cli = Cli::from_arg_matches(&matches)?;
    let mut leaf = &matches;
    while let Some((_, sub)) = leaf.subcommand() {
        leaf = sub;
    }
    // Only a command that takes the options has them in its matches (and
    // asking for an id a command does not define is a programming error).
    let connection_ids: Vec<clap::Id> = connection_args()
        .iter()
        .map(|arg| arg.get_id().clone())
        .collect();
    let given_to_command =
        if !std::ptr::eq(leaf, &matches) && leaf.ids().any(|id| connection_ids.contains(id)) {
            Connection::typed(leaf)
        } else {
            Connection::default()
        };
    cli.connection = given_to_command
        .or(Connection::typed(&matches))
        .or(cli.connection);
    Ok(cli)
}

#[derive(Subcommand)]
enum Command {
    /// Version, uptime, workflows, plugins, cases and the last reload (exit 1 if a workflow file is refused).
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
    /// Billing sources: the providers' webhooks the daemon hears.
    #[command(subcommand)]
    Sources(SourcesCommand),
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
        /// The case id, or its first characters if no other case starts with them.
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
enum SourcesCommand {
    /// Each source's URL and what it has heard since the daemon started:
    /// accepted, duplicate, ignored, refused, unavailable, the last webhook.
    List,
    /// Offline: the dunningd event a provider's webhook payload becomes, or
    /// why it is ignored (no signature is checked, nothing is fetched).
    Map {
        /// stripe, paddle, chargebee, recurly or lago.
        provider: String,
        /// The webhook's body as the provider sends it (JSON), e.g. saved from its dashboard.
        file: PathBuf,
        /// What cases are about: invoice (default), subscription or customer.
        #[arg(long, default_value = "invoice")]
        subject: String,
        /// The source's name, as `data.source` shows it.
        #[arg(long)]
        name: Option<String>,
    },
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

fn main() -> ExitCode {
    let cli = match parse(std::env::args_os()) {
        Ok(cli) => cli,
        Err(error) => error.exit(),
    };
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
            // Errors quote what they refuse, which may come from an event:
            // escaped line by line, so a multi-line error stays readable.
            let text = format!("{error:#}");
            let lines: Vec<String> = text.split('\n').map(output::full).collect();
            eprintln!("dunningctl: {}", lines.join("\n"));
            error
                .downcast_ref::<client::Exit>()
                .map_or(ExitCode::FAILURE, |e| ExitCode::from(e.code))
        }
    }
}

/// Runs one command; `Ok(false)` means "done, but exit 1" (refused files).
async fn run(cli: &Cli) -> anyhow::Result<bool> {
    match &cli.command {
        Command::Workflows(WorkflowsCommand::Validate { files, config }) => {
            return workflows::validate(cli, files, config.as_deref());
        }
        Command::Preview {
            workflow,
            event,
            at,
            config,
        } => return preview::run(cli, workflow, event, at.as_deref(), config.as_deref()),
        Command::Sources(SourcesCommand::Map {
            provider,
            file,
            subject,
            name,
        }) => return sources::map(cli, provider, file, subject, name.as_deref()),
        _ => {}
    }
    let client = &mut client::connect(cli).await?;
    match &cli.command {
        Command::Status => status::show(cli, client).await,
        Command::Workflows(WorkflowsCommand::List) => workflows::list(cli, client).await,
        Command::Workflows(WorkflowsCommand::Show { name }) => {
            workflows::show(cli, client, name).await
        }
        Command::Reload => workflows::reload(cli, client).await,
        Command::Events(EventsCommand::Send { file }) => events::send(cli, client, file).await,
        Command::Cases(command) => cases::run(cli, client, command).await,
        Command::Optout {
            customer,
            channel,
            reason,
        } => optouts::optout(cli, client, customer, channel, reason.as_deref()).await,
        Command::Optin { customer, channel } => {
            optouts::optin(cli, client, customer, channel).await
        }
        Command::Optouts { customer, limit } => {
            optouts::list(cli, client, customer.as_deref(), *limit).await
        }
        Command::Stats { filter } => stats::show(cli, client, filter).await,
        Command::Report { out, filter } => stats::report(cli, client, out, filter).await,
        Command::Plugins(PluginsCommand::List) => plugins::list(cli, client).await,
        Command::Clock(command) => clock::run(cli, client, command).await,
        Command::Sources(SourcesCommand::List) => sources::list(cli, client).await,
        Command::Preview { .. }
        | Command::Workflows(WorkflowsCommand::Validate { .. })
        | Command::Sources(SourcesCommand::Map { .. }) => Ok(true),
    }
}
