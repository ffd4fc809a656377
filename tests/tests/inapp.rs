//! The `inapp` plugin: the inbox's HTTP API with its customer tokens, and the
//! embeddable banner in a real headless browser (Debian's chromium, driven
//! over WebDriver) on the example page.

use std::time::{Duration, Instant};

use dunningd::proto;
use dunningd_e2e::browser::Browser;
use dunningd_e2e::daemon::{Backend, Setup, TestDaemon};
use dunningd_e2e::{free_port, on_both_backends};
use hmac::{Hmac, Mac};
use sha2::Sha256;

const SECRET: &str = "inapp-test-secret";

const WORKFLOW: &str = r#"
name: payment-failed
trigger: { event: payment_failed }
exit_on: [payment_succeeded]
steps:
  - name: banner
    after: 0s
    send:
      - { channel: in_app, template: banner }
templates:
  banner:
    title: "Payment of {{ data.amount | money(data.currency) }} failed"
    body: "Please update your card for invoice {{ subject }}."
    url: "https://billing.example.com/update/{{ customer.id }}"
"#;

/// What the product's backend computes for a signed-in customer.
fn token(customer: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).expect("key");
    mac.update(customer.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// A daemon whose `in_app` channel serves the inbox on a port of its own:
/// kept in a SQLite file beside it, or on PostgreSQL in the daemons' own
/// database.
async fn start(backend: &Backend) -> (TestDaemon, String) {
    let port = free_port();
    let inbox = match backend {
        Backend::Sqlite => "'{dir}/inbox.db'".to_string(),
        Backend::Postgres(database) => format!("'{}'", database.url()),
    };
    let setup = Setup::default()
        .workflow("payment-failed.yaml", WORKFLOW)
        .on(backend)
        .channel(
            "in_app",
            &format!("{{ plugin: inapp, settings: {{ listen: '127.0.0.1:{port}', database: {inbox}, secret: {SECRET} }} }}"),
        );
    (
        TestDaemon::start(setup).await,
        format!("http://127.0.0.1:{port}"),
    )
}

async fn fail_payment(daemon: &TestDaemon, id: &str, subject: &str, amount: u64) {
    let event = serde_json::json!({
        "id": id, "type": "payment_failed",
        "customer": { "id": "cus_ada", "name": "Ada" },
        "subject": subject, "data": { "amount": amount, "currency": "GBP" }
    });
    daemon
        .client()
        .await
        .send_events(proto::SendEventsRequest {
            events: vec![event.to_string()],
        })
        .await
        .expect("send");
    daemon.settle().await;
}

on_both_backends!(the_inbox_api_needs_the_customers_token_and_tracks_read_and_dismissed);

async fn the_inbox_api_needs_the_customers_token_and_tracks_read_and_dismissed(backend: Backend) {
    let (daemon, base) = start(&backend).await;
    fail_payment(&daemon, "e1", "inv_1", 4900).await;
    let http = reqwest::Client::new();
    let inbox = format!("{base}/v1/customers/cus_ada");

    for (what, url) in [
        ("no token", format!("{inbox}/messages")),
        (
            "wrong token",
            format!("{inbox}/messages?token={}", token("cus_eve")),
        ),
        ("garbage token", format!("{inbox}/messages?token=zz")),
        ("stream without token", format!("{inbox}/stream")),
    ] {
        let response = http.get(&url).send().await.expect("request");
        assert_eq!(response.status(), 401, "{what}");
        assert_eq!(
            response.text().await.expect("body"),
            "unauthorized",
            "{what}: reveals nothing"
        );
    }

    let list: serde_json::Value = http
        .get(format!("{inbox}/messages"))
        .bearer_auth(token("cus_ada"))
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert_eq!(list[0]["title"], "Payment of £49.00 failed");
    assert_eq!(list[0]["url"], "https://billing.example.com/update/cus_ada");
    let id = list[0]["id"].as_i64().expect("id");

    let t = token("cus_ada");
    assert_eq!(
        http.post(format!("{inbox}/messages/{id}/read?token={t}"))
            .send()
            .await
            .expect("read")
            .status(),
        204
    );
    let unread = messages(&http, format!("{inbox}/messages?token={t}")).await;
    assert!(unread.is_empty());
    let all = messages(&http, format!("{inbox}/messages?status=all&token={t}")).await;
    assert_eq!((all.len(), all[0]["read"].as_bool()), (1, Some(true)));

    assert_eq!(
        http.post(format!("{inbox}/messages/{id}/dismiss?token={t}"))
            .send()
            .await
            .expect("dismiss")
            .status(),
        204
    );
    let all = messages(&http, format!("{inbox}/messages?status=all&token={t}")).await;
    assert!(all.is_empty(), "dismissed messages are gone");
    assert_eq!(
        http.post(format!("{inbox}/messages/999/dismiss?token={t}"))
            .send()
            .await
            .expect("dismiss")
            .status(),
        404
    );
    assert_eq!(
        http.get(format!("{inbox}/messages?status=bogus&token={t}"))
            .send()
            .await
            .expect("list")
            .status(),
        400
    );

    // Live updates: the stream opens with the inbox and follows changes.
    let mut stream = http
        .get(format!("{inbox}/stream?token={t}"))
        .send()
        .await
        .expect("stream");
    assert_eq!(stream.headers()["content-type"], "text/event-stream");
    let first = next_event(&mut stream).await;
    assert!(
        first.contains("event: inbox") && first.contains("data: []"),
        "{first}"
    );
    fail_payment(&daemon, "e2", "inv_2", 1200).await;
    event_containing(&mut stream, "Payment of £12.00 failed").await;
}

/// Reads inbox events until one contains `text` (10 s at most each).
/// Announcements of earlier changes may still arrive and refresh the stream
/// with what it already showed: such repeats are skipped.
async fn event_containing(stream: &mut reqwest::Response, text: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let event = next_event(stream).await;
        if event.contains(text) {
            return;
        }
        assert!(event.contains("event: inbox"), "{event}");
        assert!(
            std::time::Instant::now() < deadline,
            "no event with '{text}'; last: {event}"
        );
    }
}

/// The next chunk of a Server-Sent Events stream (10 s at most).
async fn next_event(stream: &mut reqwest::Response) -> String {
    let chunk = tokio::time::timeout(Duration::from_secs(10), stream.chunk())
        .await
        .expect("an event within 10s")
        .expect("chunk")
        .expect("data");
    String::from_utf8_lossy(&chunk).to_string()
}

async fn until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(15);
    while !check().await {
        assert!(Instant::now() < deadline, "the page never showed: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn the_banner_shows_updates_live_and_hides_when_dismissed() {
    let Some(chromium) = Browser::start().await else {
        return;
    };
    let (daemon, base) = start(&Backend::Sqlite).await;
    fail_payment(&daemon, "e1", "inv_1", 4900).await;

    let browser = chromium.client();
    let page = format!(
        "file://{}?inbox={base}&customer=cus_ada&token={}",
        dunningd_e2e::workspace_root()
            .join("examples/inapp/index.html")
            .display(),
        token("cus_ada")
    );
    browser.goto(&page).await.expect("open the example page");

    let banner = |browser: fantoccini::Client| async move {
        let state = browser
            .execute(
                "var b = document.getElementById('dunningd-banner');
                 return b ? [String(b.hidden), b.querySelector('.dunningd-title').textContent, b.querySelector('.dunningd-action').href] : null;",
                vec![],
            )
            .await
            .ok()?;
        serde_json::from_value::<(String, String, String)>(state).ok()
    };
    until("the first message", || {
        let b = browser.clone();
        async move {
            banner(b).await.is_some_and(|(hidden, title, _)| {
                hidden == "false" && title == "Payment of £49.00 failed"
            })
        }
    })
    .await;
    let (_, _, link) = banner(browser.clone()).await.expect("banner");
    assert_eq!(link, "https://billing.example.com/update/cus_ada");

    // A second message arrives while the page is open: shown without a reload.
    fail_payment(&daemon, "e2", "inv_2", 1200).await;
    until("the live update", || {
        let b = browser.clone();
        async move {
            banner(b)
                .await
                .is_some_and(|(_, title, _)| title == "Payment of £12.00 failed")
        }
    })
    .await;
    let png = browser.screenshot().await.expect("screenshot");
    std::fs::write(std::env::temp_dir().join("dunningd-banner.png"), png).expect("save screenshot");

    // Dismissed one by one: the older message comes back, then nothing.
    browser
        .find(fantoccini::Locator::Css(".dunningd-dismiss"))
        .await
        .expect("dismiss button")
        .click()
        .await
        .expect("click");
    until("the older message after a dismiss", || {
        let b = browser.clone();
        async move {
            banner(b).await.is_some_and(|(hidden, title, _)| {
                hidden == "false" && title == "Payment of £49.00 failed"
            })
        }
    })
    .await;
    browser
        .find(fantoccini::Locator::Css(".dunningd-dismiss"))
        .await
        .expect("dismiss button")
        .click()
        .await
        .expect("click");
    until("the banner hidden", || {
        let b = browser.clone();
        async move {
            banner(b)
                .await
                .is_some_and(|(hidden, _, _)| hidden == "true")
        }
    })
    .await;
    browser.close().await.expect("close the browser");
}

/// Several daemons on one PostgreSQL share one inbox: a message one daemon
/// delivered is listed by another's inbox server, and a browser streaming
/// from that other server sees it arrive live.
#[tokio::test]
async fn daemons_sharing_postgresql_share_the_inbox_and_its_live_updates() {
    let Some(backend) = Backend::postgres().await else {
        return;
    };
    let (first, _) = start(&backend).await;
    let (second, second_base) = start(&backend).await;
    let http = reqwest::Client::new();
    let t = token("cus_ada");
    let inbox = format!("{second_base}/v1/customers/cus_ada");
    let mut stream = http
        .get(format!("{inbox}/stream?token={t}"))
        .send()
        .await
        .expect("stream");
    let opening = next_event(&mut stream).await;
    assert!(opening.contains("data: []"), "{opening}");

    // The first daemon's clock is an hour ahead, so the message is due for
    // it alone: the second learns of it only through the shared inbox.
    first.advance("1h").await;
    fail_payment(&first, "e1", "inv_1", 4900).await;
    let sent_by = |daemon: &TestDaemon| daemon.log().matches("delivery sent").count();
    assert_eq!(
        (sent_by(&first), sent_by(&second)),
        (1, 0),
        "{}",
        first.log()
    );
    event_containing(&mut stream, "Payment of £49.00 failed").await;
    let list = messages(&http, format!("{inbox}/messages?token={t}")).await;
    assert_eq!(list.len(), 1, "{list:?}");
    drop(second);
}

/// The inbox's answer to a listing URL (with its token), as JSON.
async fn messages(http: &reqwest::Client, url: String) -> Vec<serde_json::Value> {
    http.get(url)
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json")
}
