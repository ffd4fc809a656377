//! The Prometheus endpoint, end to end: the real daemon with `metrics:`
//! configured, driven over its API (events accepted, repeated and refused,
//! deliveries sent over the log plugin and failed by the testkit plugin,
//! reloads good and bad, a backlog that the scheduler cannot claim, a
//! delivery given up after it kept killing the daemon), scraped over HTTP and
//! parsed; and without `metrics:`, no listener at all.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use dunningd::proto;
use dunningd_e2e::daemon::{Backend, Setup, TestDaemon};
use dunningd_e2e::{free_port, on_both_backends};
use sqlx::Connection;

/// A notice by email and SMS at once, a reminder by email two days later.
const REMINDERS: &str = r#"
name: reminders
trigger: { event: payment_failed }
exit_on: [payment_succeeded]
steps:
  - name: notice
    after: 0s
    send:
      - { channel: email, template: mail }
      - { channel: sms, template: text }
  - name: reminder
    after: 2d
    send:
      - { channel: email, template: mail }
templates:
  mail: { subject: "Payment failed", text: "{{ data.amount }} is still due." }
  text: { body: "{{ data.amount }} is still due." }
"#;

/// Every SMS fails for good.
const FAILING_SMS: &str = "{ plugin: testkit, settings: { behaviour: permanent } }";

const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

fn event(id: &str, customer: &str, kind: &str) -> String {
    serde_json::json!({
        "id": id, "type": kind,
        "customer": { "id": customer, "email": format!("{customer}@example.com"), "phone": "+447700900123" },
        "subject": format!("inv_{customer}"),
        "data": { "amount": 4900 }
    })
    .to_string()
}

/// One scrape, parsed: every sample by name and labels.
struct Scrape {
    text: String,
    samples: BTreeMap<(String, BTreeMap<String, String>), f64>,
}

impl Scrape {
    /// Parses the OpenMetrics text this daemon writes: `# …` lines, then
    /// `name{label="value",…} number` (label values with `\"`, `\\`, `\n`).
    fn parse(text: String) -> Scrape {
        let mut samples = BTreeMap::new();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (series, value) = line.rsplit_once(' ').expect("a sample line");
            let value: f64 = value.parse().expect("a number");
            let (name, labels) = match series.split_once('{') {
                None => (series.to_string(), BTreeMap::new()),
                Some((name, rest)) => (
                    name.to_string(),
                    parse_labels(rest.strip_suffix('}').expect("closing brace")),
                ),
            };
            assert!(
                samples.insert((name, labels), value).is_none(),
                "a series twice in:\n{text}"
            );
        }
        Scrape { text, samples }
    }

    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.samples.get(&(name.to_string(), labels)).copied()
    }

    /// Every series of one metric, labels → value.
    fn family(&self, name: &str) -> BTreeMap<BTreeMap<String, String>, f64> {
        self.samples
            .iter()
            .filter(|((n, _), _)| n == name)
            .map(|((_, labels), value)| (labels.clone(), *value))
            .collect()
    }
}

fn parse_labels(text: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut chars = text.chars().peekable();
    while chars.peek().is_some() {
        let name: String = chars.by_ref().take_while(|&c| c != '=').collect();
        assert_eq!(chars.next(), Some('"'), "label {name} in {text}");
        let mut value = String::new();
        loop {
            match chars.next().expect("closing quote") {
                '"' => break,
                '\\' => match chars.next().expect("escaped character") {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                c => value.push(c),
            }
        }
        labels.insert(name, value);
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
    labels
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

async fn scrape(url: &str) -> Scrape {
    let response = reqwest::get(url).await.expect("scrape");
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"].to_str().expect("ascii"),
        CONTENT_TYPE
    );
    let text = response.text().await.expect("body");
    assert!(text.ends_with("# EOF\n"), "{text}");
    Scrape::parse(text)
}

/// Scrapes until `done` holds (the store is read at most once a second, and
/// reloads from the folder watcher take a moment).
async fn scrape_until(url: &str, what: &str, done: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let scrape = scrape(url).await;
        if done(&scrape) {
            return scrape;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within 20s; last scrape:\n{}",
            scrape.text
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Holds the database so that the scheduler cannot claim, while reads (the
/// metrics' own) go on: SQLite's write lock, or on PostgreSQL a table lock
/// that row locks (`FOR UPDATE`) wait for and plain reads do not.
enum ClaimBlock {
    Sqlite(sqlx::SqliteConnection),
    Postgres(sqlx::PgConnection),
}

impl ClaimBlock {
    async fn hold(daemon: &TestDaemon, backend: &Backend) -> ClaimBlock {
        match backend {
            Backend::Sqlite => {
                let options = sqlx::sqlite::SqliteConnectOptions::new()
                    .filename(daemon.path("state/dunningd.db"))
                    .busy_timeout(Duration::from_secs(10));
                let mut conn = sqlx::SqliteConnection::connect_with(&options)
                    .await
                    .expect("open the daemon's database");
                sqlx::query("BEGIN IMMEDIATE")
                    .execute(&mut conn)
                    .await
                    .expect("take the write lock");
                ClaimBlock::Sqlite(conn)
            }
            Backend::Postgres(database) => {
                let mut conn = sqlx::PgConnection::connect(database.url())
                    .await
                    .expect("connect");
                sqlx::query("BEGIN")
                    .execute(&mut conn)
                    .await
                    .expect("begin");
                sqlx::query("LOCK TABLE deliveries IN EXCLUSIVE MODE")
                    .execute(&mut conn)
                    .await
                    .expect("lock deliveries");
                ClaimBlock::Postgres(conn)
            }
        }
    }

    async fn release(self) {
        match self {
            ClaimBlock::Sqlite(mut conn) => {
                sqlx::query("ROLLBACK").execute(&mut conn).await.map(drop)
            }
            ClaimBlock::Postgres(mut conn) => {
                sqlx::query("ROLLBACK").execute(&mut conn).await.map(drop)
            }
        }
        .expect("release the lock");
    }
}

/// The TCP ports a process listens on (Linux: its socket inodes, looked up
/// in /proc/net/tcp and tcp6).
fn listening_ports(pid: u32) -> Vec<u16> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("the daemon's fds")
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter_map(|target| {
            let target = target.to_string_lossy().to_string();
            Some(
                target
                    .strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .to_string(),
            )
        })
        .collect();
    let mut ports = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        for line in std::fs::read_to_string(table)
            .unwrap_or_default()
            .lines()
            .skip(1)
        {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // local_address is ADDR:PORT in hex; state 0A is LISTEN.
            if fields.len() > 9 && fields[3] == "0A" && inodes.iter().any(|i| i == fields[9]) {
                let port = fields[1].rsplit(':').next().expect("port");
                ports.push(u16::from_str_radix(port, 16).expect("hex port"));
            }
        }
    }
    ports
}

on_both_backends!(counts_events_deliveries_reloads_and_reads_cases_and_backlog);

async fn counts_events_deliveries_reloads_and_reads_cases_and_backlog(backend: Backend) {
    let port = free_port();
    let mut setup = Setup::default()
        .workflow("reminders.yaml", REMINDERS)
        .channel("sms", FAILING_SMS)
        .on(&backend);
    setup.extra_config = format!("metrics:\n  listen: 127.0.0.1:{port}\n");
    let daemon = TestDaemon::start(setup).await;
    let url = format!("http://127.0.0.1:{port}/metrics");
    assert_eq!(listening_ports(daemon.pid()), vec![port]);

    // Before anything: the start-up reload, the build, no backlog.
    let first = scrape(&url).await;
    assert_eq!(
        first.get("dunningd_build_info", &[("version", dunningd::VERSION)]),
        Some(1.0)
    );
    assert_eq!(
        first.get("dunningd_reloads_total", &[("result", "success")]),
        Some(1.0)
    );
    assert_eq!(
        first.get("dunningd_reloads_total", &[("result", "failure")]),
        Some(0.0)
    );
    assert_eq!(first.get("dunningd_workflows_served", &[]), Some(1.0));
    assert_eq!(first.get("dunningd_backlog_deliveries", &[]), Some(0.0));
    assert_eq!(
        first.get("dunningd_backlog_oldest_age_seconds", &[]),
        Some(0.0)
    );
    assert!(first.family("dunningd_cases").is_empty(), "{}", first.text);
    assert!(first.family("dunningd_events_total").is_empty());

    // Events: two failures and an event no workflow names; one repeated; a
    // batch refused for its bad event, its good one with it; a payment.
    daemon
        .send_events(vec![
            event("e1", "cus_1", "payment_failed"),
            event("e2", "cus_2", "payment_failed"),
            event("i1", "cus_3", "invoice_created"),
        ])
        .await;
    let again = daemon
        .send_events(vec![event("e1", "cus_1", "payment_failed")])
        .await;
    assert!(again[0].duplicate);
    let refused = daemon
        .client()
        .await
        .send_events(proto::SendEventsRequest {
            events: vec![event("e3", "cus_4", "payment_failed"), "{not json".into()],
        })
        .await
        .expect_err("a batch with a bad event is refused");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    // The notices: email sent (log plugin), SMS failed (testkit).
    daemon.settle().await;
    daemon
        .send_events(vec![event("p2", "cus_2", "payment_succeeded")])
        .await;

    // Reloads: one asked for, one refused (a broken file, noticed by the
    // folder watcher; the good workflow keeps being served).
    daemon.ctl_ok(&["reload"]);
    std::fs::write(
        daemon.path("workflows/broken.yaml"),
        "name: broken\ntrigger: { event: payment_failed }\nsteps: [",
    )
    .expect("write a broken workflow");
    let scraped = scrape_until(&url, "the refused reload and the cases", |s| {
        s.get("dunningd_reloads_total", &[("result", "failure")]) == Some(1.0)
            && s.get(
                "dunningd_cases",
                &[("workflow", "reminders"), ("state", "recovered")],
            ) == Some(1.0)
    })
    .await;
    assert_eq!(
        scraped.family("dunningd_cases"),
        BTreeMap::from([
            (
                labels(&[("workflow", "reminders"), ("state", "active")]),
                1.0
            ),
            (
                labels(&[("workflow", "reminders"), ("state", "recovered")]),
                1.0
            ),
        ])
    );
    assert_eq!(
        scraped.get("dunningd_reloads_total", &[("result", "success")]),
        Some(2.0)
    );
    assert_eq!(scraped.get("dunningd_workflows_served", &[]), Some(1.0));

    // The backlog: cus_1's reminder comes due while nothing can be claimed;
    // its age grows with the clock and nothing else.
    let block = ClaimBlock::hold(&daemon, &backend).await;
    daemon.move_clock("3d").await;
    let stuck = scrape_until(&url, "the backlog", |s| {
        s.get("dunningd_backlog_deliveries", &[]) == Some(1.0)
    })
    .await;
    assert_eq!(
        stuck.get("dunningd_backlog_oldest_age_seconds", &[]),
        Some(86_400.0),
        "due at day 2, now day 3:\n{}",
        stuck.text
    );
    daemon.move_clock("1h").await;
    let later = scrape(&url).await;
    assert_eq!(later.get("dunningd_backlog_deliveries", &[]), Some(1.0));
    assert_eq!(
        later.get("dunningd_backlog_oldest_age_seconds", &[]),
        Some(90_000.0)
    );
    block.release().await;
    daemon.settle().await;
    let last = scrape_until(&url, "the backlog drained", |s| {
        s.get("dunningd_backlog_deliveries", &[]) == Some(0.0)
            && s.get(
                "dunningd_cases",
                &[("workflow", "reminders"), ("state", "exhausted")],
            ) == Some(1.0)
    })
    .await;
    assert_eq!(
        last.get("dunningd_backlog_oldest_age_seconds", &[]),
        Some(0.0)
    );

    // Every counter, exactly.
    assert_eq!(
        last.family("dunningd_events_total"),
        BTreeMap::from([
            (
                labels(&[("type", "payment_failed"), ("result", "accepted")]),
                2.0
            ),
            (
                labels(&[("type", "payment_failed"), ("result", "duplicate")]),
                1.0
            ),
            (
                labels(&[("type", "payment_failed"), ("result", "refused")]),
                1.0
            ),
            (labels(&[("type", "other"), ("result", "accepted")]), 1.0),
            (labels(&[("type", "other"), ("result", "refused")]), 1.0),
            (
                labels(&[("type", "payment_succeeded"), ("result", "accepted")]),
                1.0
            ),
        ])
    );
    let mut deliveries = BTreeMap::new();
    // Every configured channel, the test daemon's default `billing` included.
    for channel in ["email", "sms", "in_app", "webhook", "billing"] {
        for outcome in ["sent", "retry", "failed", "skipped", "deferred", "given_up"] {
            deliveries.insert(labels(&[("channel", channel), ("outcome", outcome)]), 0.0);
        }
    }
    deliveries.insert(labels(&[("channel", "email"), ("outcome", "sent")]), 3.0);
    deliveries.insert(labels(&[("channel", "sms"), ("outcome", "failed")]), 2.0);
    assert_eq!(last.family("dunningd_deliveries_total"), deliveries);
    assert_eq!(
        last.family("dunningd_plugin_call_duration_seconds_count"),
        BTreeMap::from([
            (labels(&[("channel", "email"), ("outcome", "sent")]), 3.0),
            (labels(&[("channel", "sms"), ("outcome", "permanent")]), 2.0),
        ])
    );
    let inf = last
        .get(
            "dunningd_plugin_call_duration_seconds_bucket",
            &[("le", "+Inf"), ("channel", "email"), ("outcome", "sent")],
        )
        .expect("the +Inf bucket");
    assert_eq!(inf, 3.0);
    assert_eq!(
        last.family("dunningd_reloads_total"),
        BTreeMap::from([
            (labels(&[("result", "success")]), 2.0),
            (labels(&[("result", "failure")]), 1.0),
        ])
    );
    assert_eq!(
        last.family("dunningd_cases"),
        BTreeMap::from([
            (
                labels(&[("workflow", "reminders"), ("state", "exhausted")]),
                1.0
            ),
            (
                labels(&[("workflow", "reminders"), ("state", "recovered")]),
                1.0
            ),
        ])
    );
    for family in [
        "dunningd_events",
        "dunningd_deliveries",
        "dunningd_plugin_call_duration_seconds",
        "dunningd_cases",
        "dunningd_backlog_deliveries",
        "dunningd_backlog_oldest_age_seconds",
        "dunningd_reloads",
        "dunningd_workflows_served",
        "dunningd_build",
    ] {
        let help = format!("# HELP {family} ");
        assert!(last.text.contains(&help), "{help:?} in:\n{}", last.text);
    }
    // Label values come from the configuration, never from customers.
    assert!(!last.text.contains("cus_"), "{}", last.text);
}

/// A plugin that takes the whole daemon down with it (systemd would restart
/// it): each start claims the delivery again and dies during the send.
/// After `max_claims` claims the next start gives the delivery up (failed,
/// with the reason) instead of crash-looping, sends the rest, and counts it
/// as `given_up`.
#[tokio::test]
async fn a_delivery_that_keeps_killing_the_daemon_is_given_up_and_counted() {
    let port = free_port();
    // The delay lets each start become ready (and the event be answered)
    // before the plugin aborts the process.
    let mut setup = Setup::default()
        .workflow("reminders.yaml", REMINDERS)
        .channel(
            "sms",
            "{ plugin: testkit, settings: { behaviour: abort, delay_ms: 3000, record: '{dir}/sms-calls.jsonl' } }",
        );
    setup.extra_config =
        format!("metrics:\n  listen: 127.0.0.1:{port}\nscheduler:\n  max_claims: 2\n");
    let mut daemon = TestDaemon::start(setup).await;
    let results = daemon
        .send_events(vec![event("e1", "cus_1", "payment_failed")])
        .await;
    let case_id = results[0].cases_started[0].clone();
    let record = daemon.path("sms-calls.jsonl");
    let calls = || dunningd_e2e::daemon::read_jsonl(&record).len();

    for start in 1..=2 {
        let status = daemon.exited().await;
        assert!(!status.success(), "start {start} ended with {status}");
        assert_eq!(calls(), start, "claims so far");
        daemon.spawn().await;
    }

    // The third start gives the SMS up; the email went out on the first.
    let url = format!("http://127.0.0.1:{port}/metrics");
    let last = scrape_until(&url, "the SMS given up", |s| {
        s.get(
            "dunningd_deliveries_total",
            &[("channel", "sms"), ("outcome", "given_up")],
        ) == Some(1.0)
    })
    .await;
    assert_eq!(
        last.get(
            "dunningd_deliveries_total",
            &[("channel", "sms"), ("outcome", "failed")],
        ),
        Some(0.0),
        "given up, not dispatched"
    );
    let detail = daemon.case(&case_id).await;
    let status = |channel: &str, step: &str| {
        detail
            .deliveries
            .iter()
            .find(|d| d.channel == channel && d.step == step)
            .map(|d| (d.status.clone(), d.last_error.clone()))
    };
    assert_eq!(
        status("sms", "notice"),
        Some((
            "failed".to_string(),
            "gave up after 2 claims without an outcome; the daemon stopped during each attempt"
                .to_string()
        ))
    );
    assert_eq!(status("email", "notice").map(|s| s.0), Some("sent".into()));
    assert_eq!(calls(), 2, "not called a third time");
    assert!(
        daemon
            .log()
            .contains("parking deliveries claimed too often without an outcome"),
        "{}",
        daemon.log()
    );
    assert_eq!(listening_ports(daemon.pid()), vec![port], "still running");
}

#[tokio::test]
async fn without_a_metrics_section_nothing_listens() {
    let daemon = TestDaemon::start(Setup::default()).await;
    assert_eq!(listening_ports(daemon.pid()), Vec::<u16>::new());
}

#[tokio::test]
async fn a_taken_metrics_address_is_a_start_error_naming_it() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = taken.local_addr().expect("address");
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("workflows")).expect("mkdir");
    let config = dir.path().join("dunningd.yaml");
    std::fs::write(
        &config,
        format!(
            "workflows_dir: workflows\nplugin_dir: {}\nstate_dir: state\nadmin: {{ socket: admin.sock }}\nclock: manual\nmetrics:\n  listen: {address}\n",
            dunningd_e2e::plugin_dir().display()
        ),
    )
    .expect("write config");
    let (status, stderr) = dunningd_e2e::daemon::start_refused(&config, dir.path()).await;
    assert_eq!(status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains(&format!("metrics.listen: cannot listen on {address}")),
        "{stderr}"
    );
}
