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
    body: "{{ customer.name }}, please update your card for invoice {{ subject }}."
    url: "{{ data.link }}"
"#;

/// What the product's backend computes for a signed-in customer: a token
/// valid for an hour.
fn token(customer: &str) -> String {
    token_until(customer, unix_now() + 3600)
}

/// A customer's token that expires at `expires` (Unix seconds):
/// `<expires>.<hex HMAC-SHA256(secret, "inapp:<expires>:<customer>")>`.
fn token_until(customer: &str, expires: u64) -> String {
    format!("{expires}.{}", mac(&format!("inapp:{expires}:{customer}")))
}

fn mac(message: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).expect("key");
    mac.update(message.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

/// A daemon whose `in_app` channel serves the inbox on a port of its own:
/// kept in a SQLite file beside it, or on PostgreSQL in the daemons' own
/// database.
async fn start(backend: &Backend) -> (TestDaemon, String) {
    start_with(backend, "", Setup::default()).await
}

/// [`start`] with more channel settings (YAML, after a comma) on a given
/// setup.
async fn start_with(backend: &Backend, more: &str, setup: Setup) -> (TestDaemon, String) {
    let port = free_port();
    let inbox = match backend {
        Backend::Sqlite => "'{dir}/inbox.db'".to_string(),
        Backend::Postgres(database) => format!("'{}'", database.url()),
    };
    let setup = setup
        .workflow("payment-failed.yaml", WORKFLOW)
        .on(backend)
        .channel(
            "in_app",
            &format!("{{ plugin: inapp, settings: {{ listen: '127.0.0.1:{port}', database: {inbox}, secret: {SECRET}{more} }} }}"),
        );
    (
        TestDaemon::start(setup).await,
        format!("http://127.0.0.1:{port}"),
    )
}

async fn fail_payment(daemon: &TestDaemon, id: &str, subject: &str, amount: u64) {
    let link = "https://billing.example.com/update/cus_ada";
    deliver(
        daemon,
        &[failure(id, "cus_ada", "Ada", subject, amount, link)],
    )
    .await;
}

/// A `payment_failed` event: what the billing system (and, through it, the
/// customer) controls is the name and the link.
fn failure(id: &str, customer: &str, name: &str, subject: &str, amount: u64, link: &str) -> String {
    serde_json::json!({
        "id": id, "type": "payment_failed",
        "customer": { "id": customer, "name": name },
        "subject": subject,
        "data": { "amount": amount, "currency": "GBP", "link": link }
    })
    .to_string()
}

/// Sends events and waits until their in-app messages are stored.
async fn deliver(daemon: &TestDaemon, events: &[String]) {
    daemon
        .client()
        .await
        .send_events(proto::SendEventsRequest {
            events: events.to_vec(),
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

    let now = unix_now();
    let hour_later = token_until("cus_ada", now + 3600);
    let signature = hour_later.split_once('.').expect("a dot").1;
    for (what, url) in [
        ("no token", format!("{inbox}/messages")),
        (
            "wrong token",
            format!("{inbox}/messages?token={}", token("cus_eve")),
        ),
        ("garbage token", format!("{inbox}/messages?token=zz")),
        ("stream without token", format!("{inbox}/stream")),
        // Tokens of old never expired: one that leaked worked for ever.
        (
            "a token without expiry",
            format!("{inbox}/messages?token={}", mac("cus_ada")),
        ),
        (
            "an expired token",
            format!("{inbox}/messages?token={}", token_until("cus_ada", now - 1)),
        ),
        (
            "an expired token on the stream",
            format!("{inbox}/stream?token={}", token_until("cus_ada", now - 1)),
        ),
        (
            "a later expiry on an earlier token",
            format!("{inbox}/messages?token={}.{signature}", now + 7200),
        ),
        (
            "a token twice",
            format!("{inbox}/messages?token={hour_later}&token={hour_later}"),
        ),
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

    // The stream ends when its token expires (the browser must come back
    // with a fresh one).
    let mut brief = http
        .get(format!(
            "{inbox}/stream?token={}",
            token_until("cus_ada", unix_now() + 2)
        ))
        .send()
        .await
        .expect("stream");
    assert_eq!(brief.status(), 200);
    let opening = next_event(&mut brief).await;
    assert!(opening.contains("event: inbox"), "{opening}");
    let ended = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            match brief.chunk().await {
                Ok(Some(_keep_alive_or_change)) => continue,
                _ => return,
            }
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "the stream outlived its token by 13s and more"
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

    // (not displayed, title, link): displayed is what the customer sees,
    // whatever the `hidden` attribute says.
    let banner = |browser: fantoccini::Client| async move {
        let state = browser
            .execute(
                "var b = document.getElementById('dunningd-banner');
                 return b ? [String(getComputedStyle(b).display === 'none'), b.querySelector('.dunningd-title').textContent, b.querySelector('.dunningd-action').href] : null;",
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

/// What a page shows of the banner, read in the browser.
#[derive(Debug, serde::Deserialize)]
struct Shown {
    /// The banner's computed `display` is not `none`.
    shown: bool,
    /// How many unread messages the last inbox event had (`data-unread`).
    unread: Option<String>,
    title: String,
    body: String,
    /// The call to action's computed `display` is not `none`.
    link_shown: bool,
    /// The call to action's `href` attribute.
    href: Option<String>,
    /// Every `href` in the document, resolved, whose scheme is not http(s).
    unsafe_hrefs: Vec<String>,
    /// Elements inside the banner (its own five and no more: nothing parsed
    /// from a message).
    elements: usize,
    /// Set by any script a message managed to run.
    pwned: Option<serde_json::Value>,
}

const SHOWN: &str = "var b = document.getElementById('dunningd-banner');
    if (!b) return null;
    var a = b.querySelector('.dunningd-action');
    var bad = [];
    document.querySelectorAll('[href]').forEach(function (e) {
      var p; try { p = new URL(e.href).protocol; } catch (_) { p = 'unparsable:'; }
      if (p !== 'http:' && p !== 'https:') bad.push(e.getAttribute('href'));
    });
    return {
      shown: getComputedStyle(b).display !== 'none',
      unread: b.getAttribute('data-unread'),
      title: b.querySelector('.dunningd-title').textContent,
      body: b.querySelector('.dunningd-body').textContent,
      link_shown: getComputedStyle(a).display !== 'none',
      href: a.getAttribute('href'),
      unsafe_hrefs: bad,
      elements: b.querySelectorAll('*').length,
      pwned: window.__pwned === undefined ? null : window.__pwned
    };";

/// The banner's state on the open page, once it exists.
async fn shown(browser: &fantoccini::Client) -> Option<Shown> {
    let state = browser.execute(SHOWN, vec![]).await.ok()?;
    serde_json::from_value(state).ok()
}

/// Waits until the banner's state passes `check`, and returns it.
async fn shown_when(
    browser: &fantoccini::Client,
    what: &str,
    check: impl Fn(&Shown) -> bool,
) -> Shown {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let state = shown(browser).await;
        if let Some(state) = state.filter(|s| check(s)) {
            return state;
        }
        assert!(
            Instant::now() < deadline,
            "the page never showed {what}: {:?}",
            shown(browser).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Opens the example product page for a customer, its banner talking to
/// the inbox at `base`.
async fn open_page(browser: &fantoccini::Client, base: &str, customer: &str) {
    let page = format!(
        "file://{}?inbox={base}&customer={customer}&token={}",
        dunningd_e2e::workspace_root()
            .join("examples/inapp/index.html")
            .display(),
        token(customer)
    );
    browser.goto(&page).await.expect("open the example page");
}

/// Clicks the call to action the way a script can even when it is not
/// displayed, gives whatever it starts a moment to run, and returns what
/// any script a message smuggled in left behind.
async fn click_action(browser: &fantoccini::Client) -> serde_json::Value {
    browser
        .execute_async(
            "var done = arguments[arguments.length - 1];
             var a = document.querySelector('#dunningd-banner .dunningd-action');
             if (a) a.click();
             setTimeout(function () { done(window.__pwned === undefined ? null : window.__pwned); }, 300);",
            vec![],
        )
        .await
        .expect("click the call to action")
}

/// Links and names from events that must never run as script: each is a
/// customer's `data.link`, and what the inbox API answers for it.
const HOSTILE_LINKS: &[(&str, &str, &str)] = &[
    ("javascript", "javascript:void(window.__pwned='link')", ""),
    ("mixed case", "JaVaScRiPt:void(window.__pwned='link')", ""),
    (
        "leading space and controls",
        " \u{1}\u{10}javascript:void(window.__pwned='link')",
        "",
    ),
    (
        "tab and newline inside",
        "java\tscr\nipt:void(window.__pwned='link')",
        "",
    ),
    (
        "data",
        "data:text/html,<script>window.__pwned='link'</script>",
        "",
    ),
    ("vbscript", "vbscript:msgbox(1)", ""),
    // Not a scheme at all (no HTML decoding happens anywhere): a relative
    // path, kept, and harmless.
    (
        "entity instead of a colon",
        "javascript&colon;void(window.__pwned='link')",
        "javascript&colon;void(window.__pwned='link')",
    ),
];

/// What a customer sees of the banner in a real browser, one customer per
/// case, all on one daemon: a message with its link; nothing when there are
/// no messages; nothing once dismissed; text (never markup) and no link at
/// all when the event carried a script URL — with the inbox API answering
/// no such link either.
#[tokio::test]
async fn the_banner_shows_text_and_only_web_links_and_nothing_when_empty_or_dismissed() {
    let Some(chromium) = Browser::start().await else {
        return;
    };
    let (daemon, base) = start(&Backend::Sqlite).await;
    let browser = chromium.client();
    let http = reqwest::Client::new();
    let html_name = "<img src=x onerror=\"window.__pwned='name'\">";
    let mut events = vec![
        failure(
            "e-visible",
            "cus_visible",
            "Ada",
            "inv_1",
            4900,
            "https://billing.example.com/update/cus_visible",
        ),
        failure(
            "e-markup",
            "cus_markup",
            html_name,
            "inv_2",
            4900,
            "http://billing.example.com/update",
        ),
        failure(
            "e-dismiss",
            "cus_dismiss",
            "Bo",
            "inv_3",
            4900,
            "https://billing.example.com/update",
        ),
    ];
    for (i, (_, link, _)) in HOSTILE_LINKS.iter().enumerate() {
        events.push(failure(
            &format!("e-hostile-{i}"),
            &format!("cus_hostile_{i}"),
            "Eve",
            "inv_4",
            4900,
            link,
        ));
    }
    deliver(&daemon, &events).await;
    // Script links never reach the inbox's database: dropped on delivery,
    // and the operator told.
    let refused = HOSTILE_LINKS
        .iter()
        .filter(|(_, _, answered)| answered.is_empty())
        .count();
    assert_eq!(
        daemon
            .log()
            .matches("which is not http(s) or relative; the message is stored without it")
            .count(),
        refused,
        "{}",
        daemon.log()
    );

    // Visible: the message and its web link.
    open_page(&browser, &base, "cus_visible").await;
    let visible = shown_when(&browser, "the message", |s| {
        s.title == "Payment of £49.00 failed"
    })
    .await;
    assert!(visible.shown && visible.link_shown, "{visible:?}");
    assert_eq!(
        visible.href.as_deref(),
        Some("https://billing.example.com/update/cus_visible")
    );
    let banner = browser
        .find(fantoccini::Locator::Id("dunningd-banner"))
        .await
        .expect("banner");
    assert!(banner.is_displayed().await.expect("displayed"));

    // Markup in a name is shown as the text it is.
    open_page(&browser, &base, "cus_markup").await;
    let markup = shown_when(&browser, "the message", |s| s.title.starts_with("Payment")).await;
    assert_eq!(
        markup.body,
        format!("{html_name}, please update your card for invoice inv_2.")
    );
    assert_eq!((markup.elements, &markup.pwned), (5, &None), "{markup:?}");

    // Hidden: no messages, no banner — from the moment it is on the page.
    open_page(&browser, &base, "cus_nobody").await;
    let attached = shown_when(&browser, "the banner element", |_| true).await;
    assert!(
        !attached.shown,
        "an empty banner is displayed: {attached:?}"
    );
    let empty = shown_when(&browser, "the empty inbox", |s| {
        s.unread.as_deref() == Some("0")
    })
    .await;
    assert!(!empty.shown, "{empty:?}");
    assert!(!banner_displayed(&browser).await);

    // Dismissed: gone at once, and still gone once the inbox confirms it.
    open_page(&browser, &base, "cus_dismiss").await;
    shown_when(&browser, "the message", |s| {
        s.shown && s.title.starts_with("Payment")
    })
    .await;
    browser
        .find(fantoccini::Locator::Css(".dunningd-dismiss"))
        .await
        .expect("dismiss button")
        .click()
        .await
        .expect("click");
    let dismissed = shown(&browser).await.expect("banner");
    assert!(
        !dismissed.shown,
        "a dismissed banner is displayed: {dismissed:?}"
    );
    let confirmed = shown_when(&browser, "the inbox without it", |s| {
        s.unread.as_deref() == Some("0")
    })
    .await;
    assert!(!confirmed.shown, "{confirmed:?}");
    assert!(!banner_displayed(&browser).await);

    // Hostile links: the message shows, the link is nowhere and runs nothing.
    for (i, (what, _, answered)) in HOSTILE_LINKS.iter().enumerate() {
        let customer = format!("cus_hostile_{i}");
        let list = messages(
            &http,
            format!(
                "{base}/v1/customers/{customer}/messages?token={}",
                token(&customer)
            ),
        )
        .await;
        assert_eq!(
            list[0]["url"], *answered,
            "{what}: the inbox API answered {list:?}"
        );
        open_page(&browser, &base, &customer).await;
        let state = shown_when(&browser, "the message", |s| s.title.starts_with("Payment")).await;
        assert!(state.shown, "{what}: {state:?}");
        assert!(state.unsafe_hrefs.is_empty(), "{what}: {state:?}");
        assert!(!state.link_shown, "{what}: a link is shown: {state:?}");
        assert_eq!(
            click_action(&browser).await,
            serde_json::Value::Null,
            "{what}: clicking ran a script"
        );
    }
    browser.close().await.expect("close the browser");
}

async fn banner_displayed(browser: &fantoccini::Client) -> bool {
    browser
        .find(fantoccini::Locator::Id("dunningd-banner"))
        .await
        .expect("banner")
        .is_displayed()
        .await
        .expect("displayed")
}

/// The banner refuses script links and markup on its own, whatever inbox
/// feeds it (an older inbox's rows, another server): here a stand-in inbox
/// that serves the real banner.js and hostile messages.
#[tokio::test]
async fn the_banner_refuses_script_links_from_any_inbox() {
    let Some(chromium) = Browser::start().await else {
        return;
    };
    let (_daemon, real) = start(&Backend::Sqlite).await;
    let banner_js = reqwest::get(format!("{real}/banner.js"))
        .await
        .expect("banner.js")
        .text()
        .await
        .expect("banner.js text");
    let markup = "<img src=x onerror=\"window.__pwned='title'\">";
    let feed = serve_feed(banner_js, markup).await;
    let browser = chromium.client();
    for (i, (what, link, _)) in HOSTILE_LINKS.iter().enumerate() {
        FEED_LINKS
            .lock()
            .expect("links")
            .insert(format!("cus_{i}"), link.to_string());
        open_page(&browser, &feed, &format!("cus_{i}")).await;
        let state = shown_when(&browser, "the message as text", |s| s.title == markup).await;
        assert!(state.shown && state.elements == 5, "{what}: {state:?}");
        assert!(state.unsafe_hrefs.is_empty(), "{what}: {state:?}");
        assert!(!state.link_shown, "{what}: a link is shown: {state:?}");
        assert_eq!(
            click_action(&browser).await,
            serde_json::Value::Null,
            "{what}: clicking ran a script"
        );
    }
    browser.close().await.expect("close the browser");
}

/// Customer → the link the stand-in inbox serves them.
static FEED_LINKS: std::sync::Mutex<std::collections::BTreeMap<String, String>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

/// A stand-in inbox on a port of its own: the given banner.js, and for each
/// customer a stream with one message titled `title` linking to their entry
/// in [`FEED_LINKS`].
async fn serve_feed(banner_js: String, title: &str) -> String {
    use axum::extract::Path;
    use axum::routing::get;
    let title = title.to_string();
    let app = axum::Router::new()
        .route(
            "/banner.js",
            get(move || async move { ([("content-type", "text/javascript")], banner_js) }),
        )
        .route(
            "/v1/customers/{customer}/stream",
            get(move |Path(customer): Path<String>| {
                let title = title.clone();
                async move {
                    let url = FEED_LINKS
                        .lock()
                        .expect("links")
                        .get(&customer)
                        .cloned()
                        .unwrap_or_default();
                    let messages = serde_json::json!([{
                        "id": 1, "title": title, "body": "", "url": url,
                        "workflow": "w", "step": "s", "created_at_ms": 0, "read": false
                    }]);
                    (
                        [
                            ("content-type", "text/event-stream"),
                            ("access-control-allow-origin", "*"),
                        ],
                        format!("event: inbox\ndata: {messages}\n\n"),
                    )
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}")
}

/// What the inbox API gives away to whoever asks: without the customer's
/// token nothing at all (not even which part of a request was malformed);
/// with it, no other customer's messages, no database detail, nothing a
/// shared cache may keep; and it reads no request bodies.
#[tokio::test]
async fn the_inbox_api_tells_strangers_nothing_and_reads_no_bodies() {
    let (daemon, base) = start(&Backend::Sqlite).await;
    fail_payment(&daemon, "e1", "inv_1", 4900).await;
    let http = reqwest::Client::new();
    let ada = format!("{base}/v1/customers/cus_ada");
    let t = token("cus_ada");
    let list = messages(&http, format!("{ada}/messages?token={t}")).await;
    let id = list[0]["id"].as_i64().expect("id");

    // (what, method, URL, status, body): strangers learn nothing but 401.
    let eve = token("cus_eve");
    let cases: Vec<(&str, &str, String, u16, &str)> = vec![
        (
            "a malformed id, no token",
            "POST",
            format!("{ada}/messages/abc/read"),
            401,
            "unauthorized",
        ),
        (
            "an unknown action, no token",
            "POST",
            format!("{ada}/messages/{id}/explode"),
            401,
            "unauthorized",
        ),
        (
            "an unknown status, no token",
            "GET",
            format!("{ada}/messages?status=bogus"),
            401,
            "unauthorized",
        ),
        (
            "a repeated parameter, no token",
            "GET",
            format!("{ada}/messages?status=all&status=all"),
            401,
            "unauthorized",
        ),
        (
            "another customer's token",
            "POST",
            format!("{ada}/messages/{id}/dismiss?token={eve}"),
            401,
            "unauthorized",
        ),
        (
            "another customer's message, own token",
            "POST",
            format!("{base}/v1/customers/cus_eve/messages/{id}/dismiss?token={eve}"),
            404,
            "no such message",
        ),
        (
            "a malformed id",
            "POST",
            format!("{ada}/messages/abc/read?token={t}"),
            400,
            "message id: not a number: 'abc'",
        ),
        (
            "an unknown action",
            "POST",
            format!("{ada}/messages/{id}/explode?token={t}"),
            404,
            "unknown action 'explode' (expected read or dismiss)",
        ),
    ];
    for (what, method, url, status, body) in cases {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let response = http.request(method, &url).send().await.expect("request");
        assert_eq!(response.status(), status, "{what}");
        assert_eq!(response.text().await.expect("body"), body, "{what}");
    }
    let all = messages(&http, format!("{ada}/messages?status=all&token={t}")).await;
    assert_eq!(all.len(), 1, "nobody else could dismiss it: {all:?}");

    // Private answers: never cached by a proxy, never sniffed as a page.
    for what in ["messages", "stream", "messages/abc/read"] {
        let response = http
            .request(
                if what.ends_with("read") {
                    reqwest::Method::POST
                } else {
                    reqwest::Method::GET
                },
                format!("{ada}/{what}?token={t}"),
            )
            .send()
            .await
            .expect("request");
        let headers = response.headers();
        assert_eq!(headers["cache-control"], "no-store", "{what}");
        assert_eq!(headers["x-content-type-options"], "nosniff", "{what}");
    }

    // No request bodies: the API has no use for one.
    for (what, method, url) in [
        (
            "mark read",
            reqwest::Method::POST,
            format!("{ada}/messages/{id}/read?token={t}"),
        ),
        (
            "list",
            reqwest::Method::GET,
            format!("{ada}/messages?token={t}"),
        ),
        (
            "mark read without a token",
            reqwest::Method::POST,
            format!("{ada}/messages/{id}/read"),
        ),
    ] {
        let response = http
            .request(method, &url)
            .body(vec![b'x'; 64 * 1024])
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 413, "{what}");
    }
    let unread = messages(&http, format!("{ada}/messages?token={t}")).await;
    assert_eq!(
        unread.len(),
        1,
        "a refused request changed nothing: {unread:?}"
    );

    // A script link stored before links were checked (by an older version)
    // is served as no link at all.
    let inbox =
        sqlx::SqlitePool::connect(&format!("sqlite://{}", daemon.path("inbox.db").display()))
            .await
            .expect("open the inbox");
    sqlx::query(
        "INSERT INTO messages (idempotency_key, customer_id, workflow, step, title, body, url, created_ms)
         VALUES ('old', 'cus_old', 'w', 's', 'Old', '', ' JavaScript:void(window.__pwned=1)', 0)",
    )
    .execute(&inbox)
    .await
    .expect("an old row");
    let old = messages(
        &http,
        format!(
            "{base}/v1/customers/cus_old/messages?token={}",
            token("cus_old")
        ),
    )
    .await;
    assert_eq!(
        (&old[0]["title"], &old[0]["url"]),
        (&"Old".into(), &"".into())
    );

    // A broken database is the operator's to read about, not the browser's.
    sqlx::query("ALTER TABLE messages RENAME TO gone")
        .execute(&inbox)
        .await
        .expect("break the inbox");
    let response = http
        .get(format!("{ada}/messages?token={t}"))
        .send()
        .await
        .expect("list");
    assert_eq!(response.status(), 503);
    assert_eq!(response.text().await.expect("body"), "inbox unavailable");
}

/// With `allowed_origins` set, only those pages may read the inbox, and
/// the answer says it varies by origin (so no cache hands one page's
/// permission to another).
#[tokio::test]
async fn the_inbox_answers_only_allowed_origins_and_says_it_varies_by_origin() {
    let (daemon, base) = start_with(
        &Backend::Sqlite,
        ", allowed_origins: ['https://app.example.com']",
        Setup::default(),
    )
    .await;
    fail_payment(&daemon, "e1", "inv_1", 4900).await;
    let http = reqwest::Client::new();
    let url = format!(
        "{base}/v1/customers/cus_ada/messages?token={}",
        token("cus_ada")
    );
    // (origin, the Access-Control-Allow-Origin answered)
    for (origin, allowed) in [
        ("https://app.example.com", Some("https://app.example.com")),
        ("https://evil.example.com", None),
        ("null", None),
    ] {
        for method in [reqwest::Method::GET, reqwest::Method::OPTIONS] {
            let response = http
                .request(method.clone(), &url)
                .header("origin", origin)
                .send()
                .await
                .expect("request");
            let headers = response.headers();
            assert_eq!(
                headers
                    .get("access-control-allow-origin")
                    .map(|v| v.to_str().expect("ascii")),
                allowed,
                "{method} from {origin}"
            );
            assert_eq!(
                headers.get("vary").map(|v| v.to_str().expect("ascii")),
                Some("origin"),
                "{method} from {origin}"
            );
        }
    }
}

/// What the inbox creates on disk is the daemon user's alone, even when the
/// daemon starts with a umask that would share it with everyone: the
/// folder it makes for the file, the SQLite file, and SQLite's -wal and
/// -shm files beside it.
#[tokio::test]
async fn the_inbox_files_are_private_whatever_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    let port = free_port();
    let setup = Setup::default()
        .workflow("payment-failed.yaml", WORKFLOW)
        .umask(0o000)
        .channel(
            "in_app",
            &format!("{{ plugin: inapp, settings: {{ listen: '127.0.0.1:{port}', database: '{{dir}}/inbox/messages.db', secret: {SECRET} }} }}"),
        );
    let daemon = TestDaemon::start(setup).await;
    fail_payment(&daemon, "e1", "inv_1", 4900).await;
    for (path, mode) in [
        ("inbox", 0o700),
        ("inbox/messages.db", 0o600),
        ("inbox/messages.db-wal", 0o600),
        ("inbox/messages.db-shm", 0o600),
    ] {
        let meta = std::fs::metadata(daemon.path(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(
            meta.permissions().mode() & 0o777,
            mode,
            "{path}: mode {:o}",
            meta.permissions().mode() & 0o777
        );
    }
}

/// One customer's token opens at most 16 streams at once (each costs the
/// inbox a task and a query per change); a stream the client closes frees
/// its place.
#[tokio::test]
async fn a_customer_keeps_at_most_16_streams_open() {
    let (_daemon, base) = start(&Backend::Sqlite).await;
    let http = reqwest::Client::new();
    let open = |customer: &str| {
        http.get(format!(
            "{base}/v1/customers/{customer}/stream?token={}",
            token(customer)
        ))
        .send()
    };
    let mut streams = Vec::new();
    for _ in 0..16 {
        let stream = open("cus_ada").await.expect("stream");
        assert_eq!(stream.status(), 200);
        streams.push(stream);
    }
    let refused = open("cus_ada").await.expect("stream");
    assert_eq!(refused.status(), 429);
    assert_eq!(
        refused.text().await.expect("body"),
        "too many open streams (at most 16 per customer)"
    );
    assert_eq!(
        open("cus_bo").await.expect("stream").status(),
        200,
        "another customer's"
    );

    drop(streams.pop());
    let started = Instant::now();
    loop {
        let again = open("cus_ada").await.expect("stream");
        if again.status() == 200 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "a closed stream's place was never freed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
