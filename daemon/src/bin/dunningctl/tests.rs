//! Unit tests of `dunningctl`: the command line, reading events, output
//! helpers, and the offline commands on the shipped workflows and examples.
//! Commands that need a daemon are tested end to end in `tests/`.

use clap::error::ErrorKind;

use std::path::Path;

use dunningd::model::Event;
use dunningd::proto;

use super::*;
use crate::client::{Exit, case_lookup, rpc};
use crate::events::{event_outcome, parse_events};
use crate::output::{Col, LONG_WIDTH, WIDTH, full, render_table, short_time, shown, text};
use crate::workflows::validate;

/// The repository root (the daemon crate is one level down).
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn files(dir: &str, ext: &str) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(repo().join(dir))
        .expect("read dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    found.sort();
    found
}

#[test]
fn the_command_line_is_consistent() {
    command().debug_assert();
}

/// Every command and subcommand answers `--help` (and so does the top).
#[test]
fn help_everywhere() {
    fn walk(command: &clap::Command, path: &mut Vec<String>, seen: &mut usize) {
        let mut args = vec!["dunningctl".to_string()];
        args.extend(path.iter().cloned());
        args.push("--help".into());
        let error = parse(&args)
            .err()
            .unwrap_or_else(|| panic!("{args:?} parsed"));
        assert_eq!(error.kind(), ErrorKind::DisplayHelp, "{args:?}");
        assert!(
            error.to_string().contains("Usage: dunningctl"),
            "{args:?}: {error}"
        );
        *seen += 1;
        for sub in command.get_subcommands() {
            if sub.get_name() == "help" {
                continue;
            }
            path.push(sub.get_name().to_string());
            walk(sub, path, seen);
            path.pop();
        }
    }
    let mut seen = 0;
    walk(&command(), &mut Vec::new(), &mut seen);
    // top, status, workflows (+3), reload, events (+1), cases (+5), preview,
    // optout, optin, optouts, stats, report, plugins (+1), sources (+2),
    // clock (+3)
    assert_eq!(seen, 30);
}

/// Connection options go where they were always accepted (before the
/// command, after it, after its group), the command's own win over those
/// before it; offline commands take none.
#[test]
fn connection_options() {
    let table: &[(&[&str], Option<&str>)] = &[
        (&["status"], None),
        (&["--socket", "/a.sock", "status"], Some("/a.sock")),
        (&["status", "--socket", "/b.sock"], Some("/b.sock")),
        (
            &["--socket", "/a.sock", "status", "--socket", "/b.sock"],
            Some("/b.sock"),
        ),
        (&["cases", "--socket", "/c.sock", "list"], Some("/c.sock")),
        (
            &["workflows", "list", "--socket", "/d.sock"],
            Some("/d.sock"),
        ),
        (
            &["--socket", "/e.sock", "workflows", "validate", "x.yaml"],
            Some("/e.sock"),
        ),
    ];
    for (args, socket) in table {
        let cli = parse(std::iter::once("dunningctl").chain(args.iter().copied()))
            .unwrap_or_else(|e| panic!("{args:?}: {e}"));
        assert_eq!(
            cli.connection.socket.as_deref(),
            socket.map(Path::new),
            "{args:?}"
        );
    }
    let cli = parse([
        "dunningctl",
        "status",
        "--addr",
        "https://a:1",
        "--ca-file",
        "ca.pem",
        "--cert-file",
        "c.pem",
        "--key-file",
        "k.pem",
    ])
    .expect("tls");
    assert_eq!(cli.connection.ca_file.as_deref(), Some(Path::new("ca.pem")));
    assert_eq!(cli.connection.key_file.as_deref(), Some(Path::new("k.pem")));

    for offline in [
        &["workflows", "validate", "x.yaml", "--socket", "/s"][..],
        &["preview", "w.yaml", "e.json", "--addr", "http://a:1"],
        &["preview", "w.yaml", "e.json", "--ca-file", "ca.pem"],
    ] {
        let error = parse(std::iter::once("dunningctl").chain(offline.iter().copied()))
            .err()
            .unwrap_or_else(|| panic!("{offline:?} parsed"));
        assert_eq!(error.kind(), ErrorKind::UnknownArgument, "{offline:?}");
    }
}

#[test]
fn usage_errors_exit_2() {
    let bad: &[&[&str]] = &[
        &[],
        &["bogus"],
        &["cases", "list", "--state", "zombie"],
        &["cases", "list", "--limit", "0"],
        &["cases", "list", "--limit", "10001"],
        &["cases", "list", "--limit", "-1"],
        &["cases", "show"],
        &["cases", "pause"],
        &["workflows", "validate"],
        &["workflows", "show"],
        &["events", "send"],
        &["preview", "only-one.yaml"],
        &["clock", "advance"],
        &["clock", "set"],
        &["report"],
        &["report", "--since", "30d"],
    ];
    for args in bad {
        let argv = std::iter::once("dunningctl").chain(args.iter().copied());
        match parse(argv) {
            Ok(_) => panic!("{args:?} parsed"),
            Err(e) => assert_eq!(e.exit_code(), 2, "{args:?}: {e}"),
        }
    }
}

#[test]
fn arguments_parse() {
    let cli = parse([
        "dunningctl",
        "cases",
        "list",
        "--state",
        "paused",
        "--limit",
        "5",
        "--json",
        "--socket",
        "/tmp/x.sock",
    ])
    .expect("parses");
    assert!(cli.json);
    assert_eq!(cli.connection.socket(), Path::new("/tmp/x.sock"));
    match cli.command {
        Command::Cases(CasesCommand::List {
            state,
            limit,
            workflow,
            customer,
        }) => {
            assert_eq!(state.as_deref(), Some("paused"));
            assert_eq!(limit, 5);
            assert_eq!((workflow, customer), (None, None));
        }
        _ => panic!("wrong command"),
    }
    // Every state the daemon knows is accepted.
    for state in CaseState::ALL {
        parse(["dunningctl", "cases", "list", "--state", state.as_str()])
            .unwrap_or_else(|e| panic!("{state}: {e}"));
    }
}

/// `stats` and `report` take the same filter, parsed by the same code.
#[test]
fn stats_and_report_share_their_filter() {
    let filter = StatsFilter {
        workflow: Some("payment-failed".into()),
        since: Some("30d".into()),
        until: Some("2026-02-01".into()),
    };
    let flags = [
        "--workflow",
        "payment-failed",
        "--since",
        "30d",
        "--until",
        "2026-02-01",
    ];
    let stats = parse(["dunningctl", "stats"].into_iter().chain(flags)).expect("stats parses");
    let Command::Stats { filter: parsed } = stats.command else {
        panic!("wrong command")
    };
    assert_eq!(parsed, filter);
    let report = parse(
        ["dunningctl", "report", "-o", "r.html"]
            .into_iter()
            .chain(flags),
    )
    .expect("report parses");
    let Command::Report {
        out,
        filter: parsed,
    } = report.command
    else {
        panic!("wrong command")
    };
    assert_eq!((out, parsed), (PathBuf::from("r.html"), filter));
}

const EVENT: &str =
    r#"{"id":"e1","type":"payment_failed","customer":{"id":"cus_1"},"subject":"inv_1"}"#;

#[test]
fn events_are_read_in_every_shape() {
    let pretty = "{\n  \"id\": \"e1\",\n  \"type\": \"payment_failed\",\n  \"customer\": { \"id\": \"cus_1\" },\n  \"subject\": \"inv_1\"\n}\n";
    let e2 = EVENT.replace("e1", "e2");
    let lines = format!("{EVENT}\n\n{e2}\n");
    let array = format!("[\n{EVENT},\n{e2}\n]");
    let ok: [(&str, &str, &[&str]); 4] = [
        ("one line", EVENT, &["e1"]),
        ("pretty", pretty, &["e1"]),
        ("lines", &lines, &["e1", "e2"]),
        ("array", &array, &["e1", "e2"]),
    ];
    for (what, text, ids) in ok {
        let events = parse_events("f.json", text).unwrap_or_else(|e| panic!("{what}: {e:#}"));
        let got: Vec<String> = events
            .iter()
            .map(|e| Event::from_json(e).expect("valid").id)
            .collect();
        assert_eq!(got, *ids, "{what}");
    }
}

#[test]
fn bad_events_name_file_line_event_and_field() {
    let no_customer = EVENT.replace("cus_1", "").replace("e1", "evt_42");
    let string_amount = EVENT.replace(r#""subject""#, r#""data":{"amount":"4900"},"subject""#);
    let cases = [
        ("", "f.json: no events"),
        ("\n  \n", "f.json: no events"),
        ("[]", "f.json: no events"),
        (
            &format!("{EVENT}\n{{\"id\": \n"),
            "f.json:2:7: not JSON: EOF while parsing a value",
        ),
        (
            &format!("{EVENT}\n\n{EVENT}\n{EVENT}\n{EVENT}\n{EVENT}\nnot json\n"),
            "f.json:7:2: not JSON: expected ident",
        ),
        (
            "{\n  \"id\": \"e1\",\n  \"type\": oops\n}\n",
            "f.json:3:11: not JSON: expected value",
        ),
        (
            &format!("{EVENT}\n\n{no_customer}\n"),
            "f.json:3: event 2 (evt_42): customer.id: must not be empty",
        ),
        (
            &format!("[{EVENT}, {EVENT}, {no_customer}]"),
            "f.json: event 3 (evt_42): customer.id: must not be empty",
        ),
        (
            &string_amount,
            r#"f.json:1: event 1 (e1): data.amount: must be an integer amount in minor units, got string "4900""#,
        ),
        (
            r#"{"type":"payment_failed"}"#,
            "f.json:1: event 1: id: missing",
        ),
        (
            "42",
            "f.json:1: event 1: must be a JSON object, got number 42",
        ),
    ];
    for (text, expected) in cases {
        let error = parse_events("f.json", text).expect_err(text).to_string();
        assert_eq!(error, expected, "{text:?}");
    }
}

#[test]
fn event_outcomes_read_as_words() {
    let result = |duplicate, started: &[&str], recovered: &[&str]| proto::EventResult {
        event_id: "e1".into(),
        duplicate,
        cases_started: started.iter().map(|s| s.to_string()).collect(),
        cases_recovered: recovered.iter().map(|s| s.to_string()).collect(),
        notes: vec![],
    };
    let cases = [
        (
            result(true, &[], &[]),
            "duplicate: already received, ignored",
        ),
        (
            result(false, &[], &[]),
            "accepted: no case started or ended",
        ),
        (
            result(false, &["c1", "c2"], &[]),
            "accepted: started c1, c2",
        ),
        (
            result(false, &["c3"], &["c1"]),
            "accepted: started c3; recovered c1",
        ),
    ];
    for (r, expected) in cases {
        assert_eq!(event_outcome(&r), expected);
    }
}

#[test]
fn tables_align_without_trailing_spaces() {
    let rows = vec![
        vec!["c1".to_string(), "payment-failed".into(), "".into()],
        vec!["c22".to_string(), "é".into(), "x".into()],
    ];
    assert_eq!(
        render_table(
            &[Col::Id("CASE"), Col::Text("WORKFLOW"), Col::Long("NOTE")],
            &rows
        ),
        "CASE  WORKFLOW        NOTE\n\
         c1    payment-failed\n\
         c22   é               x\n"
    );
    // A row longer than the header does not panic.
    assert_eq!(
        render_table(&[Col::Text("A")], &[vec!["1".into(), "2".into()]]),
        "A\n1  2\n"
    );
    assert_eq!(
        render_table(&[Col::Text("A"), Col::Text("B")], &[]),
        "A  B\n"
    );
}

/// What customers bring is shown, not obeyed: control characters and the
/// characters that reorder text are escaped, long values cut.
#[test]
fn values_are_escaped_for_the_terminal() {
    let cases: &[(&str, &str)] = &[
        ("Ada Lovelace", "Ada Lovelace"),
        ("\x1b[31mred\x1b[0m", "\\x1b[31mred\\x1b[0m"),
        ("two\nlines\r\n", "two\\nlines\\r\\n"),
        ("a\tb", "a\\tb"),
        ("nul\0bell\x07del\x7f", "nul\\x00bell\\x07del\\x7f"),
        // C1: the 8-bit CSI, and NEL (a line break to some terminals).
        ("\u{9b}31m\u{85}", "\\u{9b}31m\\u{85}"),
        // Bidi overrides, embeddings, isolates and marks.
        ("invoice\u{202e}fdp.exe", "invoice\\u{202e}fdp.exe"),
        (
            "\u{202a}\u{202b}\u{202c}\u{202d}",
            "\\u{202a}\\u{202b}\\u{202c}\\u{202d}",
        ),
        (
            "\u{2066}\u{2067}\u{2068}\u{2069}",
            "\\u{2066}\\u{2067}\\u{2068}\\u{2069}",
        ),
        ("\u{200e}\u{200f}\u{61c}", "\\u{200e}\\u{200f}\\u{61c}"),
        ("line\u{2028}para\u{2029}", "line\\u{2028}para\\u{2029}"),
        // Text is text, in any script, backslashes included.
        ("Zoë Ødegård 李 🙂 C:\\x", "Zoë Ødegård 李 🙂 C:\\x"),
        ("", ""),
    ];
    for (input, expected) in cases {
        assert_eq!(full(input), *expected, "{input:?}");
        assert_eq!(text(input), *expected, "{input:?}");
    }
}

#[test]
fn long_values_are_cut_with_an_ellipsis() {
    let long = "x".repeat(500);
    let cases: &[(&str, Option<usize>, String)] = &[
        ("abcdef", Some(6), "abcdef".into()),
        ("abcdefg", Some(6), "abcde…".into()),
        (&long, Some(WIDTH), format!("{}…", "x".repeat(WIDTH - 1))),
        (
            &long,
            Some(LONG_WIDTH),
            format!("{}…", "x".repeat(LONG_WIDTH - 1)),
        ),
        (&long, None, long.clone()),
        // The limit counts escaped characters; an escape is never split.
        ("ab\x1bcdef", Some(6), "ab…".into()),
        ("ab\ncd", Some(6), "ab\\ncd".into()),
        ("ééééééé", Some(6), "ééééé…".into()),
    ];
    for (input, limit, expected) in cases {
        let got = shown(input, *limit);
        assert_eq!(&got, expected, "{input:?} at {limit:?}");
        if let Some(limit) = limit {
            assert!(got.chars().count() <= *limit);
        }
    }
}

/// Every cell of a table is shown through the same function: ids whole,
/// text at WIDTH, errors at LONG_WIDTH; nothing raw gets through.
#[test]
fn table_cells_are_escaped_and_cut_by_their_column() {
    let name = format!("\x1b[31mEvil\nCorp{}", "y".repeat(500));
    let id = format!("cus_{}", "9".repeat(100));
    let rendered = render_table(
        &[Col::Id("CUSTOMER"), Col::Text("NAME"), Col::Long("ERROR")],
        &[vec![id.clone(), name.clone(), name.clone()]],
    );
    assert!(!rendered.contains('\x1b'), "{rendered}");
    let row = rendered.lines().nth(1).expect("a row");
    assert!(row.starts_with(&id), "ids are never cut: {row}");
    assert!(row.contains(&shown(&name, Some(WIDTH))), "{row}");
    assert!(row.ends_with(&shown(&name, Some(LONG_WIDTH))), "{row}");
    assert_eq!(rendered.lines().count(), 2, "a newline in data ends no row");
}

#[test]
fn short_times() {
    for (input, expected) in [
        ("2026-01-05T09:00:00.000Z", "2026-01-05 09:00:00"),
        ("2026-01-05T09:00:00.250Z", "2026-01-05 09:00:00"),
        ("2026-01-05T09:00:00Z", "2026-01-05 09:00:00"),
        ("", "-"),
    ] {
        assert_eq!(short_time(input), expected);
    }
}

#[test]
fn grpc_errors_print_the_message() {
    let cases = [
        (
            tonic::Status::not_found("case 'x' not found"),
            "case 'x' not found",
        ),
        (
            tonic::Status::unauthenticated("missing or wrong bearer token"),
            "missing or wrong bearer token (is --token-file or DUNNINGD_TOKEN_FILE right?)",
        ),
        (
            tonic::Status::new(tonic::Code::Internal, ""),
            "Internal error",
        ),
    ];
    for (status, expected) in cases {
        assert_eq!(rpc(status).to_string(), expected);
    }
}

fn cli(args: &[&str]) -> Cli {
    parse(std::iter::once("dunningctl").chain(args.iter().copied())).expect("parses")
}

#[test]
fn shipped_workflows_validate_offline() {
    let workflows = files("workflows", "yaml");
    assert!(!workflows.is_empty(), "no shipped workflows");
    let config = repo().join("examples/dunningd.yaml");
    for json in ["", "--json"] {
        let args: Vec<&str> = [json, "workflows", "validate", "x.yaml"]
            .into_iter()
            .filter(|a| !a.is_empty())
            .collect();
        let cli = cli(&args);
        assert!(validate(&cli, &workflows, None).expect("runs"), "{json}");
        assert!(
            validate(&cli, &workflows, Some(&config)).expect("runs"),
            "{json} with --config"
        );
    }
}

#[test]
fn broken_workflows_fail_validation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "name: x\ntrigger: { event: a }\nsteps:\n  - name: s\n    after: 3 days\n    send: [{ channel: email, template: t }]\n",
    )
    .expect("write");
    let cli = cli(&["workflows", "validate", "x.yaml"]);
    assert!(!validate(&cli, &[bad], None).expect("runs"));
    let missing = dir.path().join("missing.yaml");
    assert!(!validate(&cli, &[missing], None).expect("runs"));
}

#[test]
fn shipped_examples_preview_offline() {
    let workflows = files("workflows", "yaml");
    let events = files("examples/events", "json");
    assert!(!events.is_empty(), "no example events");
    for json in [false, true] {
        let cli = if json {
            cli(&["--json", "status"])
        } else {
            cli(&["status"])
        };
        for workflow in &workflows {
            for event in &events {
                let config = repo().join("examples/dunningd.yaml");
                let ok = preview::run(
                    &cli,
                    workflow,
                    event,
                    Some("2026-01-05T09:00:00Z"),
                    Some(&config),
                )
                .unwrap_or_else(|e| {
                    panic!("{} with {}: {e:#}", workflow.display(), event.display())
                });
                assert!(ok);
            }
        }
    }
}

#[test]
fn preview_refuses_bad_input() {
    let workflow = repo().join("workflows/payment-failed.yaml");
    let event = repo().join("examples/events/payment-failed.json");
    let cli = cli(&["status"]);
    let error = preview::run(&cli, &workflow, &event, Some("tomorrow"), None)
        .expect_err("bad --at")
        .to_string();
    assert!(
        error.starts_with("--at: invalid RFC 3339 time 'tomorrow'"),
        "{error}"
    );
    let error = preview::run(&cli, &workflow, Path::new("/nonexistent.json"), None, None)
        .expect_err("no event")
        .to_string();
    assert!(
        error.starts_with("cannot read '/nonexistent.json'"),
        "{error}"
    );
}

/// `cases show` tells "no such case" and "ambiguous prefix" apart by exit
/// code; every other error exits 1.
#[test]
fn case_lookup_errors_have_their_own_exit_codes() {
    let cases = [
        (tonic::Status::not_found("case 'x' not found"), Some(3)),
        (
            tonic::Status::failed_precondition("case id prefix '01' is ambiguous: it starts a, b"),
            Some(4),
        ),
        (tonic::Status::unavailable("database: gone"), None),
        (
            tonic::Status::invalid_argument("id: must not be empty"),
            None,
        ),
    ];
    for (status, code) in cases {
        let message = status.message().to_string();
        let error = case_lookup(status);
        assert_eq!(
            error.downcast_ref::<Exit>().map(|e| e.code),
            code,
            "{message}"
        );
        assert_eq!(error.to_string(), message);
    }
}
