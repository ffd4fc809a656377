//! `dunningctl` against the real daemon: what customers bring is shown
//! escaped (and exact in `--json`), `cases show` takes an id prefix, and the
//! exit codes agree across commands.

use std::process::Output;

use dunningd_e2e::daemon::{Backend, Setup, TestDaemon};
use dunningd_e2e::fixtures::event;
use dunningd_e2e::on_both_backends;

const WORKFLOW: &str = r#"
name: payment-failed
trigger: { event: payment_failed }
exit_on: [payment_succeeded]
steps:
  - name: reminder
    after: 0s
    send:
      - { channel: sms, template: reminder }
  - name: later
    after: 3d
    send:
      - { channel: email, template: later }
templates:
  reminder:
    body: "Hi {{ customer.name }}"
  later:
    subject: "Still due"
    text: "Hi {{ customer.name }}"
"#;

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Regression: `cases list` and `cases show` printed what they were given as
/// it came, so a provider's error could recolour the terminal, move the
/// cursor or break the table's rows, and a long value pushed every column off
/// the screen. Events may no longer carry control characters in their ids,
/// subject or customer fields (ingest refuses them), but plugins' and
/// providers' texts still can, and old rows may.
#[tokio::test]
async fn what_customers_bring_is_shown_escaped_and_json_stays_exact() {
    // An ANSI colour, a newline, a bidi override, and 500 characters more.
    let nasty = format!("\x1b[31merror\nline two\u{202e}{}", "z".repeat(500));
    // The longest subject an event may have: cut in tables, whole in JSON.
    let subject = format!("inv_{}", "z".repeat(250));
    let setup = Setup::default()
        .workflow("payment-failed.yaml", WORKFLOW)
        .channel(
            "sms",
            &format!(
                "{{ plugin: testkit, settings: {{ behaviour: permanent, error: {} }} }}",
                serde_json::to_string(&nasty).expect("a string serializes")
            ),
        );
    let daemon = TestDaemon::start(setup).await;
    let event = serde_json::json!({
        "id": "evt_1", "type": "payment_failed",
        "customer": { "id": "cus_1", "name": "Ada", "phone": "+15005550006" },
        "subject": subject, "data": { "amount": 4900, "currency": "EUR" }
    });
    let started = daemon.send_events(vec![event.to_string()]).await;
    let case_id = started[0].cases_started[0].clone();
    daemon.settle().await;

    let list = daemon.ctl_ok(&["cases", "list"]);
    let show = daemon.ctl_ok(&["cases", "show", &case_id]);
    for (command, output) in [("cases list", &list), ("cases show", &show)] {
        assert!(!output.contains('\x1b'), "{command}: a raw ESC:\n{output}");
        assert!(!output.contains('\u{202e}'), "{command}: a raw U+202E");
        assert!(
            output.contains("inv_zz"),
            "{command}: the subject:\n{output}"
        );
        assert!(output.contains("zz…"), "{command}: cut:\n{output}");
        assert!(
            !output.contains(&"z".repeat(200)),
            "{command}: a long value printed whole:\n{output}"
        );
    }
    assert_eq!(list.lines().count(), 2, "a header and one row:\n{list}");
    // The plugin's error: escaped and cut.
    assert!(
        show.contains("\\x1b[31merror\\nline two\\u{202e}zz"),
        "{show}"
    );
    let timeline: Vec<&str> = show
        .lines()
        .skip_while(|l| !l.starts_with("STEP"))
        .collect();
    assert_eq!(timeline.len(), 3, "a header and two rows:\n{show}");

    // --json: every value exact and whole.
    let json: serde_json::Value =
        serde_json::from_str(&daemon.ctl_ok(&["cases", "list", "--json"])).expect("JSON");
    assert_eq!(json["cases"][0]["subject"], subject.as_str());
    let json: serde_json::Value =
        serde_json::from_str(&daemon.ctl_ok(&["cases", "show", &case_id, "--json"])).expect("JSON");
    assert_eq!(json["case"]["subject"], subject.as_str());
    let error = json["deliveries"][0]["last_error"].as_str().expect("error");
    assert!(error.contains(&nasty), "{error}");
}

on_both_backends!(cases_show_takes_a_unique_id_prefix);

/// `cases show` takes the first characters of an id, like git: one case's
/// prefix shows it, a prefix of several says so and lists them, none is
/// "not found"; each with an exit code of its own.
async fn cases_show_takes_a_unique_id_prefix(backend: Backend) {
    let daemon = TestDaemon::start(
        Setup::default()
            .workflow("payment-failed.yaml", WORKFLOW)
            .on(&backend),
    )
    .await;
    let events = (1..=3)
        .map(|i| {
            event(
                &format!("e{i}"),
                "payment_failed",
                &format!("cus_{i}"),
                &format!("inv_{i}"),
                4900,
            )
        })
        .collect();
    let mut ids: Vec<String> = daemon
        .send_events(events)
        .await
        .into_iter()
        .flat_map(|r| r.cases_started)
        .collect();
    ids.sort();
    assert_eq!(ids.len(), 3);
    // Cases started together share a long prefix (UUIDv7: time first).
    let common: String = ids[0]
        .chars()
        .zip(ids[2].chars())
        .take_while(|(a, b)| a == b)
        .map(|(a, _)| a)
        .collect();
    let unique = |id: &str| {
        (1..=id.len())
            .map(|n| id[..n].to_string())
            .find(|p| ids.iter().filter(|other| other.starts_with(p)).count() == 1)
            .expect("ids differ")
    };

    // (argument, exit code, what stdout or stderr says)
    let mut table: Vec<(String, i32, Vec<String>)> = vec![
        (ids[1].clone(), 0, vec![format!("case {}", ids[1])]),
        (common.clone(), 4, {
            let mut said = vec![format!("case id prefix '{common}' is ambiguous")];
            said.extend(ids.iter().cloned());
            said
        }),
        ("zzzz".into(), 3, vec!["case 'zzzz' not found".into()]),
        ("%".into(), 3, vec!["case '%' not found".into()]),
        (format!("{common}_"), 3, vec!["not found".into()]),
    ];
    for id in &ids {
        table.push((unique(id), 0, vec![format!("case {id}"), "reminder".into()]));
    }
    for (arg, code, said) in table {
        let out = daemon.ctl(&["cases", "show", &arg]);
        let text = format!("{}{}", stdout(&out), stderr(&out));
        assert_eq!(out.status.code(), Some(code), "cases show {arg}: {text}");
        for words in said {
            assert!(
                text.contains(&words),
                "cases show {arg}: lacks {words}:\n{text}"
            );
        }
    }
    // A prefix is for reading; actions take the whole id.
    let out = daemon.ctl(&["cases", "cancel", &unique(&ids[0])]);
    assert!(!out.status.success(), "{}", stdout(&out));
}

/// Regression: with a workflow file refused, `workflows list` exited 1 and
/// `status` 0. Both now exit 1 while any file is refused (a new broken file,
/// or a broken edit of a served one kept at its last good version), in
/// tables and in `--json` alike, and 0 once none is.
#[tokio::test]
async fn status_and_workflows_list_agree_on_refused_files() {
    let daemon = TestDaemon::start(
        Setup::default()
            .workflow("payment-failed.yaml", WORKFLOW)
            .workflow("broken.yaml", "name: broken\ntrigger: [\n"),
    )
    .await;
    let commands: [&[&str]; 4] = [
        &["status"],
        &["workflows", "list"],
        &["status", "--json"],
        &["workflows", "list", "--json"],
    ];
    let expect = |state: &str, code: i32| {
        for args in commands {
            let out = daemon.ctl(args);
            assert_eq!(
                out.status.code(),
                Some(code),
                "{state}: dunningctl {args:?}:\n{}{}",
                stdout(&out),
                stderr(&out)
            );
        }
    };
    expect("a new broken file", 1);

    std::fs::remove_file(daemon.path("workflows/broken.yaml")).expect("rm");
    daemon.ctl(&["reload"]);
    expect("no refused file", 0);

    let served = daemon.path("workflows/payment-failed.yaml");
    std::fs::write(&served, WORKFLOW.replace("after: 3d", "after: soon")).expect("break");
    let reload = daemon.ctl(&["reload"]);
    assert_eq!(reload.status.code(), Some(1), "{}", stderr(&reload));
    expect("a served file broken", 1);
    let list = daemon.ctl(&["workflows", "list"]);
    assert!(
        stdout(&list).contains("last good version"),
        "{}",
        stdout(&list)
    );
}
