//! `dunningctl events send`: events read and checked here, then sent in batches.

use std::io::Read;

use anyhow::{Context, bail};
use dunningd::model::Event;
use dunningd::proto;

use crate::Cli;
use crate::client::{Client, rpc};
use crate::output;

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
pub fn parse_events(name: &str, text: &str) -> anyhow::Result<Vec<String>> {
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

pub async fn send(cli: &Cli, client: &mut Client, file: &str) -> anyhow::Result<bool> {
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
    output::print(
        cli.json,
        &proto::SendEventsResponse { results },
        |response| {
            for r in &response.results {
                out!(
                    "{}  {}",
                    output::full(&r.event_id),
                    output::full(&event_outcome(r))
                );
                for note in &r.notes {
                    out!("  note: {}", output::full(note));
                }
            }
        },
    )?;
    Ok(true)
}

/// One event's outcome in a few words.
pub fn event_outcome(r: &proto::EventResult) -> String {
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
