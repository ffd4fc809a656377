//! `dunningd`: the dunning daemon.
//!
//! Exit codes: 0 after a clean stop, 64 when the configuration (or a channel
//! it names) is unusable, 1 for any other failure.
//!
//! What it prints has URL credentials hidden: the log (every line passes
//! through [`RedactedStderr`]), the error it exits with, and panics.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use dunningd::config::{Config, DEFAULT_CONFIG};
use dunningd::daemon::ConfigurationError;
use dunningd::redact::{self, RedactedStderr};

#[derive(Parser)]
#[command(
    name = "dunningd",
    version,
    about = "Self-hosted dunning engine: runs YAML workflows over billing events"
)]
struct Args {
    /// The daemon configuration file.
    #[arg(long, short, env = "DUNNINGD_CONFIG", default_value = DEFAULT_CONFIG)]
    config: PathBuf,
    /// Log format: "human" for a terminal, "json" for log collectors.
    /// The level comes from RUST_LOG (default: info).
    #[arg(long, env = "DUNNINGD_LOG_FORMAT", default_value = "human", value_parser = ["human", "json"])]
    log_format: String,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(RedactedStderr);
    if args.log_format == "json" {
        subscriber.json().init();
    } else {
        subscriber.init();
    }
    // Logged like everything else (so redacted, and JSON with --log-format
    // json) rather than printed raw by the default hook.
    std::panic::set_hook(Box::new(|info| {
        let (message, location) = redact::panic_parts(info);
        let backtrace = std::backtrace::Backtrace::capture();
        if backtrace.status() == std::backtrace::BacktraceStatus::Captured {
            tracing::error!(panic = %message, %location, %backtrace, "panicked");
        } else {
            tracing::error!(panic = %message, %location, "panicked");
        }
    }));

    let config = match Config::load(&args.config) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("dunningd: {}", redact::urls(&error.to_string()));
            return ExitCode::from(64);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("dunningd: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(dunningd::daemon::run(config));
    // A plugin call that hangs past the grace period holds a blocking thread
    // that cannot be cancelled; do not wait for it on the way out.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("dunningd: {}", describe(&error));
            if error.downcast_ref::<ConfigurationError>().is_some() {
                ExitCode::from(64)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// The error and its causes, each said once: libraries often repeat their
/// cause's text in their own message (`database: … refused: … refused`).
/// URL credentials are hidden (a database driver may quote its URL).
fn describe(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let part = cause.to_string();
        if !text.contains(&part) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&part);
        }
    }
    redact::urls(&text).into_owned()
}
