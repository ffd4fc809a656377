//! What a workflow file and an event may cost the daemon, against the real
//! binaries: rendering budgets (instructions and output), the workflow file
//! size limit and YAML alias expansion, one size limit for what the daemon
//! accepts and what `dunningctl` can show, and typed comparisons in
//! conditions.

use std::time::{Duration, Instant};

use dunningd::proto;
use dunningd_e2e::daemon::{Setup, TestDaemon};

/// One step, three channels: a template that loops for ever, one whose
/// output is huge, and an ordinary one.
const EXPENSIVE: &str = r#"
name: expensive
trigger: { event: payment_failed }
steps:
  - name: first
    after: 0s
    send:
      - { channel: email, template: first_email }
      - { channel: sms, template: huge_sms }
      - { channel: in_app, template: banner }
templates:
  first_email:
    subject: "hello"
    text: "{% for i in range(100000) %}{% for j in range(100000) %}{% for k in range(100000) %}.{% endfor %}{% endfor %}{% endfor %}"
  huge_sms:
    body: "{% for i in range(3000) %}{{ 'x' * 1000 }}{% endfor %}"
  banner:
    title: "Payment failed"
    body: "Hi {{ customer.name }}"
"#;

fn payment_failed(id: &str, data: serde_json::Value) -> String {
    serde_json::json!({
        "id": id, "type": "payment_failed",
        "customer": { "id": "cus_1", "name": "Ada", "email": "ada@example.com", "phone": "+15550100" },
        "subject": format!("inv_{id}"), "data": data
    })
    .to_string()
}

/// Adds a top-level line to the daemon's configuration.
trait Config {
    fn config(self, line: &str) -> Self;
}

impl Config for Setup {
    fn config(mut self, line: &str) -> Setup {
        self.extra_config.push_str(line);
        self.extra_config.push('\n');
        self
    }
}

async fn deliveries(daemon: &TestDaemon, case: &str) -> Vec<proto::Delivery> {
    daemon.case(case).await.deliveries
}

/// Regression: a template with nested loops rendered for hours on an async
/// worker, and a template could produce any amount of output.
#[tokio::test]
async fn a_render_past_its_budget_fails_that_delivery_and_the_others_go_out() {
    let daemon = TestDaemon::start(Setup::default().workflow("expensive.yaml", EXPENSIVE)).await;
    let results = daemon
        .send_events(vec![payment_failed("e1", serde_json::json!({}))])
        .await;
    let case = results[0].cases_started[0].clone();
    daemon.settle().await;

    let by_channel = |channel: &str, list: &[proto::Delivery]| {
        list.iter()
            .find(|d| d.channel == channel)
            .cloned()
            .unwrap_or_else(|| panic!("no {channel} delivery in {list:?}"))
    };
    let list = deliveries(&daemon, &case).await;
    // (channel, status, what the error must say)
    let expected = [
        (
            "email",
            "failed",
            "template 'first_email', field 'text': rendering exceeded its budget of 1000000 instructions",
        ),
        (
            "sms",
            "failed",
            "template 'huge_sms', field 'body': the output exceeded its limit of 1048576 bytes",
        ),
        ("in_app", "sent", ""),
    ];
    for (channel, status, error) in expected {
        let d = by_channel(channel, &list);
        assert_eq!(d.status, status, "{channel}: {d:?}");
        assert_eq!(d.last_error, error, "{channel}: {d:?}");
        assert_eq!(d.attempts, 1, "{channel}: failed for good, not retried");
    }
    let sent = daemon.deliveries();
    assert_eq!(sent.len(), 1, "only the banner went out: {sent:?}");
    assert_eq!(sent[0]["message"]["body"], "Hi Ada");
}

/// Regression: SIGTERM waited for a render that would never end.
#[tokio::test]
async fn the_daemon_stops_promptly_while_an_expensive_render_runs() {
    let mut daemon = TestDaemon::start(
        Setup::default()
            .workflow("expensive.yaml", EXPENSIVE)
            .config("scheduler: { shutdown_grace: 2s }"),
    )
    .await;
    daemon
        .send_events(vec![payment_failed("e1", serde_json::json!({}))])
        .await;
    let asked = Instant::now();
    let status = daemon.terminate().await;
    let took = asked.elapsed();
    assert!(status.success(), "{status:?}\n{}", daemon.log());
    assert!(
        took < Duration::from_secs(6),
        "stopping took {took:?}\n{}",
        daemon.log()
    );
}

const SMALL: &str = r#"
name: small
trigger: { event: payment_failed }
steps:
  - name: first
    after: 0s
    send: [{ channel: email, template: t }]
templates:
  t: { subject: "version one", text: "hello" }
"#;

/// A workflow whose one template holds `size` bytes of text.
fn sized(size: usize) -> String {
    let head = SMALL.replace("text: \"hello\"", "text: \"");
    let head = head.trim_end().trim_end_matches(" }").to_string();
    let filler = size.saturating_sub(head.len() + 4);
    format!("{head}{}\" }}\n", "y".repeat(filler))
}

/// A file under the size limit whose aliases expand to gigabytes.
fn laughs() -> String {
    let mut yaml = SMALL.replace(
        "  t: { subject: \"version one\", text: \"hello\" }\n",
        &format!(
            "  t:\n    subject: \"version two\"\n    text: &a \"{}\"\n",
            "z".repeat(200 * 1024)
        ),
    );
    for i in 0..50_000 {
        yaml.push_str(&format!("    f{i}: *a\n"));
    }
    yaml
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

async fn reload(daemon: &TestDaemon) -> proto::ReloadResult {
    daemon
        .client()
        .await
        .reload(proto::ReloadRequest {})
        .await
        .expect("reload")
        .into_inner()
}

async fn version(daemon: &TestDaemon) -> String {
    daemon
        .client()
        .await
        .list_workflows(proto::ListWorkflowsRequest {})
        .await
        .expect("list")
        .into_inner()
        .workflows[0]
        .version
        .clone()
}

/// Regression: a file of any size was read whole and served.
#[tokio::test]
async fn a_file_over_the_size_limit_is_refused_and_the_last_good_version_runs() {
    let daemon = TestDaemon::start(Setup::default().workflow("small.yaml", SMALL)).await;
    let good = version(&daemon).await;
    let file = daemon.path("workflows/small.yaml");

    let big = sized(1024 * 1024 + 1);
    std::fs::write(&file, &big).expect("write");
    let report = reload(&daemon).await;
    assert!(!report.ok);
    let error = &report.errors[0];
    assert!(error.path.ends_with("small.yaml"), "{error:?}");
    assert!(error.line > 0, "the error has a line: {error:?}");
    assert_eq!(
        error.message,
        "the file is larger than the limit of 1048576 bytes (limits.workflow_file_size)"
    );
    assert_eq!(version(&daemon).await, good, "the last good version stays");

    // `dunningctl workflows validate` applies the same limit.
    let path = daemon.path("big.yaml");
    std::fs::write(&path, &big).expect("write");
    let out = daemon.ctl(&["workflows", "validate", path.to_str().expect("utf-8")]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stdout.contains("big.yaml:") && stdout.contains("limits.workflow_file_size"),
        "{stdout}"
    );

    // So does `dunningctl preview`, for the workflow and for the event.
    let event = daemon.path("event.json");
    std::fs::write(&event, payment_failed("e1", serde_json::json!({}))).expect("write");
    let (big, event) = (
        path.to_str().expect("utf-8"),
        event.to_str().expect("utf-8"),
    );
    let out = daemon.ctl(&["preview", big, event]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("limits.workflow_file_size"), "{stderr}");
    let huge_event = daemon.path("huge.json");
    std::fs::write(&huge_event, " ".repeat(100_000)).expect("write");
    let small = daemon.path("small-copy.yaml");
    std::fs::write(&small, SMALL).expect("write");
    let out = daemon.ctl(&[
        "preview",
        small.to_str().expect("utf-8"),
        huge_event.to_str().expect("utf-8"),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("larger than 65536 bytes"), "{stderr}");
}

/// Regression: YAML aliases expanded without bound (a 1 MB file decoded to
/// gigabytes).
#[tokio::test]
async fn a_file_of_aliases_is_refused_without_growing_the_daemon() {
    let daemon = TestDaemon::start(Setup::default().workflow("small.yaml", SMALL)).await;
    let good = version(&daemon).await;
    let file = daemon.path("workflows/small.yaml");

    let yaml = laughs();
    assert!(yaml.len() < 1024 * 1024, "under the size limit");
    let before = rss_kib(daemon.pid());
    std::fs::write(&file, &yaml).expect("write");
    let report = reload(&daemon).await;
    let after = rss_kib(daemon.pid());
    eprintln!("peak RSS before the reload {before} KiB, after {after} KiB");
    assert!(!report.ok);
    let error = &report.errors[0];
    assert!(error.line > 0, "the error has a line: {error:?}");
    assert!(
        error
            .message
            .contains("expands to more than 4194304 bytes (4 times limits.workflow_file_size)"),
        "{error:?}"
    );
    assert_eq!(version(&daemon).await, good, "the last good version stays");
    assert!(
        after < before + 128 * 1024,
        "the daemon's peak memory grew from {before} KiB to {after} KiB"
    );

    // `dunningctl workflows validate` applies the same bound.
    let path = daemon.path("laughs.yaml");
    std::fs::write(&path, &yaml).expect("write");
    let out = daemon.ctl(&["workflows", "validate", path.to_str().expect("utf-8")]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(stdout.contains("limits.workflow_file_size"), "{stdout}");
}

/// Regression: a 5 MB workflow was accepted but `dunningctl workflows show`
/// refused the answer (over the gRPC client's 4 MiB default).
#[tokio::test]
async fn what_the_daemon_accepts_dunningctl_can_show() {
    let daemon = TestDaemon::start(
        Setup::default()
            .workflow("small.yaml", &sized(5_000_000))
            .config("limits: { workflow_file_size: 8MiB }"),
    )
    .await;
    let shown = daemon.ctl_ok(&["--json", "workflows", "show", "small"]);
    let detail: serde_json::Value = serde_json::from_str(&shown).expect("JSON");
    let source = detail["source"].as_str().unwrap_or("");
    assert_eq!(source.len(), 5_000_000);
    assert!(source.contains(&"y".repeat(1000)));

    std::fs::write(
        daemon.path("workflows/small.yaml"),
        sized(8 * 1024 * 1024 + 1),
    )
    .expect("write");
    let report = reload(&daemon).await;
    assert!(!report.ok);
    assert_eq!(
        report.errors[0].message,
        "the file is larger than the limit of 8388608 bytes (limits.workflow_file_size)"
    );
}

/// Regression: `data.tier >= 2` was true for the string "3" (and for "abc"):
/// minijinja orders values of different kinds by kind. (An amount given as
/// a string no longer gets this far: ingest refuses it.)
#[tokio::test]
async fn a_condition_comparing_a_string_with_a_number_is_an_error_in_the_outcome() {
    let workflow = SMALL.replace(
        "trigger: { event: payment_failed }",
        "trigger: { event: payment_failed, when: \"data.tier >= 2\" }",
    );
    let daemon = TestDaemon::start(Setup::default().workflow("small.yaml", &workflow)).await;
    let results = daemon
        .send_events(vec![
            payment_failed("e1", serde_json::json!({ "tier": "3" })),
            payment_failed("e2", serde_json::json!({ "tier": 3 })),
            payment_failed("e3", serde_json::json!({ "tier": 1 })),
        ])
        .await;
    let started: Vec<usize> = results.iter().map(|r| r.cases_started.len()).collect();
    assert_eq!(started, [0, 1, 0]);
    assert_eq!(
        results[0].notes,
        [
            "workflow 'small': no case started, trigger condition cannot be evaluated: condition 'data.tier >= 2': cannot compare string \"3\" with number 2 (>=)"
        ]
    );
    assert!(results[2].notes.is_empty(), "{:?}", results[2].notes);
}
