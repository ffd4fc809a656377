//! `dunningctl workflows` and `reload`: the workflows the daemon serves,
//! and the offline check of workflow files.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::anyhow;
use dunningd::config::Config;
use dunningd::proto;
use dunningd::workflow;

use crate::Cli;
use crate::client::{Client, rpc};
use crate::output::{self, Col, table};

/// `workflows list`: exit 1 if a workflow file is refused.
pub async fn list(cli: &Cli, client: &mut Client) -> anyhow::Result<bool> {
    let list = client
        .list_workflows(proto::ListWorkflowsRequest {})
        .await
        .map_err(rpc)?
        .into_inner();
    output::print(cli.json, &list, |list| {
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
    })?;
    Ok(list.errors.is_empty())
}

/// `workflows show NAME`: its trigger, steps and channels.
pub async fn show(cli: &Cli, client: &mut Client, name: &str) -> anyhow::Result<bool> {
    let detail = client
        .get_workflow(proto::GetWorkflowRequest {
            name: name.to_string(),
        })
        .await
        .map_err(rpc)?
        .into_inner();
    output::print(cli.json, &detail, |detail| {
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
    })?;
    Ok(true)
}

/// `reload`: exit 1 if anything was refused.
pub async fn reload(cli: &Cli, client: &mut Client) -> anyhow::Result<bool> {
    let result = client
        .reload(proto::ReloadRequest {})
        .await
        .map_err(rpc)?
        .into_inner();
    output::print(cli.json, &result, |result| {
        let changed = if result.changed.is_empty() {
            "nothing changed".to_string()
        } else {
            format!("changed: {}", output::full(&result.changed.join(", ")))
        };
        out!("{} workflows loaded; {changed}", result.workflows_loaded);
        print_file_errors(&result.errors);
    })?;
    Ok(result.ok)
}

fn print_file_errors(errors: &[proto::FileError]) {
    if !errors.is_empty() {
        eprintln!("refused (the last good version, if any, stays in use):");
        for e in errors {
            eprintln!("  {}", output::full(&e.display));
        }
    }
}

/// `workflows validate`: offline; exit 1 if a file is refused.
pub fn validate(cli: &Cli, files: &[PathBuf], config: Option<&Path>) -> anyhow::Result<bool> {
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
    let answer = serde_json::json!({
        "ok": problems.is_empty(),
        "files": files,
        "channels_checked": channels.is_some(),
        "errors": problems,
    });
    output::print(cli.json, &answer, |_| {
        if problems.is_empty() {
            out!("{} file(s) valid", files.len());
        } else {
            for p in &problems {
                out!("{}", output::full(&p.to_string()));
            }
        }
    })?;
    Ok(problems.is_empty())
}
