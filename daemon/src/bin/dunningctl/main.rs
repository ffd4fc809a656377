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

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, anyhow, bail};
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use dunningd::config::{Config, DEFAULT_SOCKET};
use dunningd::model::{CaseState, Event};
use dunningd::proto::{self, admin_client::AdminClient};
use dunningd::workflow::{self, Workflow};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

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
    let conn = &cli.connection;
    let (channel, auth) = match &conn.addr {
        Some(addr) => {
            let token = match &conn.token_file {
                None => None,
                Some(path) => Some(read_token(path)?),
            };
            let mut endpoint = Endpoint::from_shared(addr.clone()).map_err(|_| {
                anyhow!("invalid --addr '{addr}' (expected e.g. http://127.0.0.1:7070 or https://admin.example.com:7070)")
            })?;
            match endpoint.uri().scheme_str() {
                Some("https") => endpoint = endpoint.tls_config(client_tls(conn)?)?,
                Some("http") => {
                    if conn.ca_file.is_some() || conn.cert_file.is_some() || conn.key_file.is_some()
                    {
                        bail!(
                            "--ca-file, --cert-file and --key-file are for TLS: use an https:// --addr, not '{addr}'"
                        );
                    }
                    // A plain client speaking to a TLS listener reads the
                    // TLS alert as a broken HTTP/2 frame.
                    let _ =
                        TLS_HINT.set("if the daemon's admin.tls is set, use an https:// --addr");
                }
                _ => bail!(
                    "invalid --addr '{addr}' (expected http:// or https://, e.g. https://admin.example.com:7070)"
                ),
            }
            let channel = endpoint.connect().await.map_err(|e| {
                anyhow!(
                    "cannot connect to {addr}: {}; is dunningd listening there (admin.tcp)?",
                    root_cause(&e)
                )
            })?;
            (channel, Auth(token))
        }
        None => {
            let socket = conn.socket();
            let path = socket.clone();
            // The URI is a placeholder: the connector below ignores it.
            let channel = Endpoint::from_static("http://[::]:50051")
                .connect_with_connector(tower::service_fn(move |_| {
                    let path = path.clone();
                    async move {
                        let stream = tokio::net::UnixStream::connect(path).await?;
                        Ok::<_, std::io::Error>(TokioIo::new(stream))
                    }
                }))
                .await
                .map_err(|e| {
                    anyhow!(
                        "cannot connect to '{}': {}; is dunningd running? is --socket (or DUNNINGD_SOCKET) right?",
                        socket.display(),
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

/// Why a TLS connection may close under the first call. The daemon checks a
/// client certificate after the handshake, so a refusal reaches the call as
/// "connection closed"; `connect` sets this for `rpc` to add.
static TLS_HINT: std::sync::OnceLock<&str> = std::sync::OnceLock::new();

/// TLS for an https:// address: the daemon's CA (or the system's roots), and
/// this client's certificate where the daemon requires mutual TLS.
fn client_tls(conn: &Connection) -> anyhow::Result<ClientTlsConfig> {
    let read = |what: &str, path: &Path| {
        std::fs::read(path).with_context(|| format!("cannot read {what} '{}'", path.display()))
    };
    let mut tls = ClientTlsConfig::new();
    tls = match &conn.ca_file {
        Some(path) => tls.ca_certificate(Certificate::from_pem(read("--ca-file", path)?)),
        None => tls.with_native_roots(),
    };
    match (&conn.cert_file, &conn.key_file) {
        (Some(cert), Some(key)) => {
            tls = tls.identity(Identity::from_pem(
                read("--cert-file", cert)?,
                read("--key-file", key)?,
            ));
            let _ = TLS_HINT.set(
                "if the daemon requires mutual TLS, is --cert-file signed by its admin.tls.client_ca_file?",
            );
        }
        (None, None) => {
            let _ =
                TLS_HINT.set("if the daemon requires mutual TLS, give --cert-file and --key-file");
        }
        (Some(_), None) => bail!("--cert-file needs --key-file (the certificate's private key)"),
        (None, Some(_)) => bail!("--key-file needs --cert-file (the certificate it belongs to)"),
    }
    if let Some(name) = &conn.tls_server_name {
        tls = tls.domain_name(name.clone());
    }
    Ok(tls)
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
    // A connection that failed under the call (a TLS alert, a reset) says
    // why only in the status' source.
    let cause = std::error::Error::source(&status).map(root_cause);
    let mut message = match &cause {
        Some(cause) if cause != message => format!("{message}: {cause}"),
        _ => message.to_string(),
    };
    if cause.is_some()
        && let Some(hint) = TLS_HINT.get()
    {
        message = format!("{message} ({hint})");
    }
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

/// An error that exits with a code of its own (see the module header);
/// every other error exits 1.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
struct Exit {
    code: u8,
    message: String,
}

/// `cases show`'s lookup errors, told apart by their exit code: 3 when no
/// case has the id or prefix, 4 when a prefix names several (the daemon
/// answers FAILED_PRECONDITION, listing a few).
fn case_lookup(status: tonic::Status) -> anyhow::Error {
    let code = match status.code() {
        tonic::Code::NotFound => 3,
        tonic::Code::FailedPrecondition => 4,
        _ => return rpc(status),
    };
    Exit {
        code,
        message: rpc(status).to_string(),
    }
    .into()
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
        .map(|m| dunningd::workflow::format_minor(report::minor_units(m), &m.currency))
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
        out!("{}", output::text(&w.workflow));
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
            output::full(&amounts(&w.at_risk)),
            output::full(&amounts(&w.recovered_amount))
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
                    Col::Text("STEP"),
                    Col::Text("CHANNEL"),
                    Col::Text("SENT"),
                    Col::Text("FAILED"),
                    Col::Text("SKIPPED"),
                    Col::Text("PENDING"),
                    Col::Text("LAST TOUCH"),
                ],
                &rows,
            );
        }
    }
}

mod output;
use output::{Col, dash, short_time, table};

mod report;

mod sources;

#[cfg(test)]
mod tests;

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
                .downcast_ref::<Exit>()
                .map_or(ExitCode::FAILURE, |e| ExitCode::from(e.code))
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
        Command::Sources(SourcesCommand::Map {
            provider,
            file,
            subject,
            name,
        }) => return sources::map(cli, provider, file, subject, name.as_deref()),
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
                    &[
                        Col::Text("NAME"),
                        Col::Id("VERSION"),
                        Col::Text("TRIGGER"),
                        Col::Text("STEPS"),
                        Col::Text("OPEN CASES"),
                        Col::Text("STATE"),
                    ],
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
                    out!(
                        "{} (version {}) from {}",
                        output::text(&s.name),
                        output::full(&s.version),
                        output::full(&s.path)
                    );
                    if !s.description.is_empty() {
                        out!("{}", output::full(&s.description));
                    }
                    let when = if s.condition.is_empty() {
                        String::new()
                    } else {
                        format!(" when {}", output::full(&s.condition))
                    };
                    out!(
                        "trigger: {}{when}; exits on: {}",
                        output::text(&s.trigger),
                        output::full(&s.exit_on.join(", "))
                    );
                    out!();
                }
                let rows: Vec<Vec<String>> = detail
                    .steps
                    .iter()
                    .map(|s| vec![s.name.clone(), s.after.clone(), s.channels.join(", ")])
                    .collect();
                table(
                    &[Col::Text("STEP"), Col::Text("AFTER"), Col::Long("CHANNELS")],
                    &rows,
                );
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
                    format!("changed: {}", output::full(&result.changed.join(", ")))
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
                    output::full(&record.customer_id),
                    output::text(&record.channel),
                    output::text(&record.reason)
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
            } else {
                let (customer, channel) = (output::full(customer), output::text(channel));
                if response.removed {
                    out!("{customer} opted in to {channel} again");
                } else {
                    out!("{customer} had not opted out of {channel}; nothing changed");
                }
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
                table(
                    &[
                        Col::Id("CUSTOMER"),
                        Col::Text("CHANNEL"),
                        Col::Text("SOURCE"),
                        Col::Text("SINCE"),
                        Col::Long("REASON"),
                    ],
                    &rows,
                );
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
                    output::full(&out.display().to_string()),
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
                table(
                    &[
                        Col::Text("PLUGIN"),
                        Col::Text("VERSION"),
                        Col::Text("ABI"),
                        Col::Text("CHANNELS"),
                        Col::Id("PATH"),
                    ],
                    &rows,
                );
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
                out!(
                    "{} ({} clock)",
                    short_time(&clock.now),
                    output::text(&clock.kind)
                );
            }
            Ok(true)
        }
        Command::Sources(SourcesCommand::List) => sources::list(cli, &mut client).await,
        Command::Preview { .. }
        | Command::Workflows(WorkflowsCommand::Validate { .. })
        | Command::Sources(SourcesCommand::Map { .. }) => Ok(true),
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
    match &cli.connection.addr {
        Some(addr) => addr.clone(),
        None => cli.connection.socket().display().to_string(),
    }
}

fn print_file_errors(errors: &[proto::FileError]) {
    if !errors.is_empty() {
        eprintln!("refused (the last good version, if any, stays in use):");
        for e in errors {
            eprintln!("  {}", output::full(&e.display));
        }
    }
}

async fn status(cli: &Cli, client: &mut Client) -> anyhow::Result<bool> {
    let s = client
        .get_status(proto::GetStatusRequest {})
        .await
        .map_err(rpc)?
        .into_inner();
    // Like `workflows list`: a refused file is something to look at.
    let ok = s.workflows_with_errors == 0;
    if cli.json {
        print_json(&s)?;
        return Ok(ok);
    }
    // Minutes are enough for an uptime.
    let up = std::time::Duration::from_secs(s.uptime_seconds / 60 * 60);
    out!(
        "dunningd {}, up {} (since {})",
        output::text(&s.version),
        if up.is_zero() {
            "under a minute".to_string()
        } else {
            dunningd::duration::format(up)
        },
        short_time(&s.started_at)
    );
    out!("database   {}", output::full(&s.database));
    out!(
        "clock      {} ({})",
        short_time(&s.now),
        output::text(&s.clock)
    );
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
            output::text(&p.name),
            output::text(&p.version),
            output::full(&p.channels.join(", "))
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
            out!("  {}", output::full(&e.display));
        }
    }
    Ok(ok)
}

/// A file's text, refused past `limit` bytes without reading further (the
/// event checks would refuse it anyway, after reading all of it).
fn read_bounded(path: &Path, limit: u64) -> anyhow::Result<String> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot read '{}'", path.display()))?;
    let mut text = String::new();
    file.take(limit + 1)
        .read_to_string(&mut text)
        .with_context(|| format!("cannot read '{}'", path.display()))?;
    if text.len() as u64 > limit {
        bail!("{}: larger than {limit} bytes", path.display());
    }
    Ok(text)
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
/// checked here first with the daemon's own checks, so an error names the
/// file, the line (for JSON lines and a single object), the event and the
/// field before anything is sent: `events.jsonl:7: event 3 (evt_42):
/// customer.id: missing`, `events.jsonl:7:2: not JSON: expected value`.
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
                            "{name}:{}:{}: not JSON: {}",
                            whole_error.line(),
                            whole_error.column(),
                            json_message(&whole_error)
                        );
                    }
                    Err(e) => bail!(
                        "{name}:{}:{}: not JSON: {}",
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
        if let Err(e) = Event::from_json_numbered(index + 1, &text) {
            if line > 0 {
                bail!("{name}:{line}: {e}");
            }
            bail!("{name}: {e}");
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
        out!(
            "{}  {}",
            output::full(&r.event_id),
            output::full(&event_outcome(r))
        );
        for note in &r.notes {
            out!("  note: {}", output::full(note));
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
                        Col::Id("CASE"),
                        Col::Text("WORKFLOW"),
                        Col::Id("CUSTOMER"),
                        Col::Text("SUBJECT"),
                        Col::Text("STATE"),
                        Col::Text("STARTED"),
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
                .map_err(case_lookup)?
                .into_inner();
            if cli.json {
                print_json(&detail)?;
            } else if let Some(c) = &detail.case {
                out!("case {} — {}", output::full(&c.id), output::text(&c.state));
                out!(
                    "workflow   {} (version {})",
                    output::text(&c.workflow),
                    output::full(&c.workflow_version)
                );
                out!(
                    "customer   {}, subject {}",
                    output::full(&c.customer_id),
                    output::text(&c.subject)
                );
                out!(
                    "started    {} by event {}",
                    short_time(&c.started_at),
                    output::full(&c.trigger_event_id)
                );
                if !c.ended_reason.is_empty() {
                    out!(
                        "ended      {}: {}",
                        short_time(&c.updated_at),
                        output::full(&c.ended_reason)
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
                        Col::Text("STEP"),
                        Col::Text("CHANNEL"),
                        Col::Text("STATUS"),
                        Col::Text("DUE"),
                        Col::Text("PLANNED"),
                        Col::Text("ATTEMPTS"),
                        Col::Id("RECEIPT"),
                        Col::Long("ERROR / REASON"),
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
        out!(
            "case {} is {}",
            output::full(&case.id),
            output::text(&case.state)
        );
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
            out!("{}", output::full(&p.to_string()));
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
    // The daemon's own limits: a file it would refuse is refused here too.
    let config = config
        .map(|path| Config::load(path).map_err(|e| anyhow!("{e}")))
        .transpose()?;
    let limits = config
        .as_ref()
        .map_or(workflow::FileLimits::DEFAULT, |c| c.limits);
    let source = workflow::read_file(workflow_path, limits).map_err(|d| anyhow!("{d}"))?;
    let workflow =
        Workflow::parse_within(workflow_path, &source, None, limits).map_err(|errors| {
            anyhow!(
                "{}",
                errors
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("\n")
            )
        })?;
    let text = read_bounded(event_path, dunningd::model::MAX_EVENT_BYTES as u64)?;
    let event = Event::from_json(&text).map_err(|e| anyhow!("{}: {e}", event_path.display()))?;
    let start = match at {
        None => chrono::Utc::now(),
        Some(at) => at
            .parse()
            .map_err(|e| anyhow!("--at: invalid RFC 3339 time '{at}': {e}"))?,
    };
    let channel_windows = match config {
        None => BTreeMap::new(),
        Some(config) => config
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
        output::text(&plan.workflow),
        output::full(&plan.version),
        output::full(&plan.event_id)
    );
    if !plan.triggered {
        out!(
            "no case would start: {}",
            output::full(plan.reason.as_deref().unwrap_or(""))
        );
        return Ok(true);
    }
    out!("case starts {}", plan.start.format("%Y-%m-%d %H:%M UTC"));
    for step in &plan.steps {
        out!();
        let mut notes = Vec::new();
        if let Some(condition) = &step.condition {
            notes.push(format!("when {}", output::full(condition)));
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
            output::text(&step.name),
            output::text(&step.after),
            step.due_at.format("%Y-%m-%d %H:%M UTC"),
        );
        for send in &step.sends {
            let fallback = send
                .fallback
                .as_deref()
                .map(|f| format!(", fallback {}", output::text(f)))
                .unwrap_or_default();
            let when = match (&send.skipped, send.planned_at) {
                (Some(reason), _) => format!("skipped: {}", output::full(reason)),
                (None, Some(at)) => {
                    let local = send
                        .planned_local
                        .as_deref()
                        .map(|l| format!(" ({})", output::full(l)))
                        .unwrap_or_default();
                    format!("sent {}{local}", at.format("%Y-%m-%d %H:%M UTC"))
                }
                (None, None) => "not sent".to_string(),
            };
            out!(
                "  {} [{}{fallback}]: {when}",
                output::text(&send.channel),
                output::text(&send.template)
            );
            if let Some(message) = &send.message
                && send.skipped.is_none()
            {
                for (field, rendered) in message {
                    // Line by line: the message's own line breaks are kept,
                    // anything else that is not text is escaped.
                    let field = output::text(field);
                    let mut lines = rendered.lines().map(|l| output::full(l.trim_end()));
                    out!("    {field}: {}", lines.next().unwrap_or_default());
                    for line in lines {
                        // Blank lines stay blank: no trailing spaces.
                        let width = field.chars().count();
                        let line = format!("    {:width$}  {line}", "");
                        out!("{}", line.trim_end());
                    }
                }
            }
            if let Some(error) = &send.error {
                out!("    error: {}", output::full(error));
            }
        }
    }
    Ok(true)
}
