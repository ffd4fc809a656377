//! `dunningctl sources`: what the daemon's billing sources have heard, and
//! an offline check of what a provider's payload becomes.

use std::io::Read;
use std::path::Path;

use anyhow::{Context, anyhow};
use axum::http::HeaderMap;
use dunningd::proto;
use dunningd::sources::{MAX_BODY, Provider, SubjectLevel};

use crate::Cli;
use crate::client::{Client, rpc};
use crate::output::{self, Col, dash, short_time, table};

/// `sources list`: one row per source; exit 1 if any source refused or
/// could not complete a webhook since the daemon started.
pub async fn list(cli: &Cli, client: &mut Client) -> anyhow::Result<bool> {
    let list = client
        .list_sources(proto::ListSourcesRequest {})
        .await
        .map_err(rpc)?
        .into_inner();
    output::print(cli.json, &list, |list| {
        if list.sources.is_empty() {
            out!("no sources configured (see `sources:` in the README)");
        } else {
            let rows: Vec<Vec<String>> = list
                .sources
                .iter()
                .map(|s| {
                    vec![
                        s.name.clone(),
                        s.provider.clone(),
                        s.accepted.to_string(),
                        s.duplicate.to_string(),
                        s.ignored.to_string(),
                        s.refused.to_string(),
                        s.unavailable.to_string(),
                        dash(&short_time(&s.last_at)),
                        dash(&s.last),
                        s.url.clone(),
                    ]
                })
                .collect();
            table(
                &[
                    Col::Text("SOURCE"),
                    Col::Text("PROVIDER"),
                    Col::Text("ACCEPTED"),
                    Col::Text("DUPLICATE"),
                    Col::Text("IGNORED"),
                    Col::Text("REFUSED"),
                    Col::Text("UNAVAILABLE"),
                    Col::Text("LAST"),
                    Col::Text("LAST WEBHOOK"),
                    Col::Id("URL"),
                ],
                &rows,
            );
            for s in list.sources.iter().filter(|s| !s.last_error.is_empty()) {
                out!(
                    "{}: last error at {}: {}",
                    output::text(&s.name),
                    short_time(&s.last_error_at),
                    output::text(&s.last_error)
                );
            }
        }
    })?;
    Ok(list
        .sources
        .iter()
        .all(|s| s.refused == 0 && s.unavailable == 0))
}

/// `sources map PROVIDER FILE`: prints the event, or why none; exit 1 if
/// the event would be refused by the checks every event passes.
pub fn map(
    cli: &Cli,
    provider: &str,
    file: &Path,
    subject: &str,
    name: Option<&str>,
) -> anyhow::Result<bool> {
    let provider = Provider::parse(provider).ok_or_else(|| {
        anyhow!(
            "unknown provider '{}' (expected one of: {})",
            output::text(provider),
            Provider::ALL.map(Provider::as_str).join(", ")
        )
    })?;
    let level = SubjectLevel::parse(subject).ok_or_else(|| {
        anyhow!(
            "--subject: '{}' is not one of invoice, subscription, customer",
            output::text(subject)
        )
    })?;
    let shown = file.display().to_string();
    let mut body = Vec::new();
    std::fs::File::open(file)
        .with_context(|| format!("cannot read '{}'", output::full(&shown)))?
        .take(MAX_BODY as u64 + 1)
        .read_to_end(&mut body)
        .with_context(|| format!("cannot read '{}'", output::full(&shown)))?;
    if body.len() > MAX_BODY {
        return Err(anyhow!(
            "{}: larger than {MAX_BODY} bytes, which a source refuses",
            output::full(&shown)
        ));
    }
    let payload: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| anyhow!("{}: not JSON: {e}", output::full(&shown)))?;
    let draft = match provider.map(&HeaderMap::new(), &payload) {
        Ok(draft) => draft,
        Err(ignored) => {
            let answer = serde_json::json!({
                "ignored": { "provider_type": ignored.provider_type, "reason": ignored.reason }
            });
            output::print(cli.json, &answer, |_| {
                out!(
                    "ignored (answered 200, nothing stored): {}",
                    output::text(&ignored.to_string())
                );
            })?;
            return Ok(true);
        }
    };
    let source = name.unwrap_or(provider.as_str());
    let event = draft.to_json(provider, source, level);
    let checked = draft.to_event(provider, source, level);
    let fetches: Vec<serde_json::Value> = draft
        .fetches
        .iter()
        .map(|f| serde_json::json!({ "what": f.what, "path": f.path }))
        .collect();
    let answer = serde_json::json!({
        "event": event,
        "fetches": fetches,
        "refused": checked.as_ref().err().map(|e| e.problem.to_string()),
    });
    output::print(cli.json, &answer, |_| {
        // `{:#}` is serde_json's pretty form, as `--json` prints.
        out!("{event:#}");
        if !draft.fetches.is_empty() {
            out!("\nwith an api_key, the source first fetches:");
            for fetch in &draft.fetches {
                out!("  {:<16} {}", fetch.what, output::text(&fetch.path));
            }
        }
    })?;
    match checked {
        Ok(_) => Ok(true),
        Err(error) => Err(anyhow!(
            "this event would be refused (answered 422): {}",
            error.problem
        )),
    }
}
