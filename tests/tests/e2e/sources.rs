//! Billing sources end to end: whole Stripe events, signed by Stripe's own
//! library, posted to the real daemon's webhook listener; the thin parts
//! fetched from a Stripe-compatible API on loopback; on SQLite and
//! PostgreSQL.

use dunningd::proto;
use dunningd_e2e::daemon::{Backend, Setup, TestDaemon};
use dunningd_e2e::peers::post_webhook;
use dunningd_e2e::signers::{node_signers_available, stripe_signature};
use dunningd_e2e::stripe_peer::StripePeer;
use dunningd_e2e::{free_port, on_both_backends, workspace_root};

const SIGNING_SECRET: &str = "whsec_test_0123456789abcdefghijklmnop";
const API_KEY: &str = "sk_test_dunningd_sources_51Hx";
const LINK_SECRET: &str = "0123456789abcdef0123456789abcdef";

/// A failed payment: an email at once, on day 3 an SMS only when the card
/// was short of funds (the decline code comes from the PaymentIntent), an
/// email on day 7.
const WORKFLOW: &str = r#"
name: stripe-failed
trigger: { event: payment_failed }
exit_on: [payment_succeeded]
steps:
  - name: notice
    after: 0s
    send: [ { channel: email, template: mail } ]
  - name: funds
    after: 3d
    when: 'data.decline_code == "insufficient_funds"'
    send: [ { channel: sms, template: text } ]
  - name: final
    after: 7d
    send: [ { channel: email, template: mail } ]
templates:
  mail:
    subject: "Payment failed"
    text: "Hi {{ customer.name }}, {{ data.amount | money(data.currency) }} failed ({{ data.decline_code }} on your {{ data.card.brand }} ending {{ data.card.last4 }}). Pay: {{ data.update_url }}"
  text: { body: "{{ data.amount | money(data.currency) }} is due; try another card: {{ data.update_url }}" }
"#;

fn fixture(name: &str) -> String {
    let path = workspace_root().join(format!("tests/fixtures/sources/stripe/{name}.json"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn fixture_json(name: &str) -> serde_json::Value {
    serde_json::from_str(&fixture(name)).expect("fixture is JSON")
}

/// The Stripe API the source completes events from: the customer (with the
/// phone the invoice lacks) and the PaymentIntent (with the decline).
async fn stripe_api() -> StripePeer {
    let peer = StripePeer::start(API_KEY).await;
    peer.put_object(
        "/v1/customers/cus_RdunningAda01",
        fixture_json("api.customer"),
    );
    peer.put_object(
        "/v1/payment_intents/pi_3QdunningIntent01",
        fixture_json("api.payment_intent"),
    );
    peer
}

struct Sources {
    daemon: TestDaemon,
    /// `http://127.0.0.1:PORT`: the webhook listener.
    base: String,
    /// `http://127.0.0.1:PORT/metrics`.
    metrics: String,
    _secrets: tempfile::TempDir,
}

fn sources_yaml(secrets: &std::path::Path, api: &StripePeer, extra: &str) -> String {
    format!(
        "sources:\n  billing:\n    provider: stripe\n    signing_secret: {{ file: '{}' }}\n    api_key: {{ file: '{}' }}\n    api_base: '{}'\n{extra}",
        secrets.join("signing").display(),
        secrets.join("api-key").display(),
        api.base_url()
    )
}

async fn start(backend: &Backend, api: &StripePeer) -> Sources {
    let secrets = tempfile::tempdir().expect("tempdir");
    std::fs::write(secrets.path().join("signing"), SIGNING_SECRET).expect("secret");
    std::fs::write(secrets.path().join("api-key"), API_KEY).expect("key");
    std::fs::write(secrets.path().join("links"), LINK_SECRET).expect("links");
    let base = format!("http://127.0.0.1:{}", free_port());
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut setup = Setup::default()
        .workflow("stripe-failed.yaml", WORKFLOW)
        .on(backend);
    setup.extra_config = format!(
        "metrics: {{ listen: '{metrics}' }}\nwebhooks:\n  listen: '{}'\n  public_url: 'https://billing.example.com/hooks'\n  secret: {{ file: '{}' }}\n{}",
        base.trim_start_matches("http://"),
        secrets.path().join("links").display(),
        sources_yaml(secrets.path(), api, "")
    );
    Sources {
        daemon: TestDaemon::start(setup).await,
        base,
        metrics: format!("http://{metrics}/metrics"),
        _secrets: secrets,
    }
}

/// Posts `body` as Stripe does, with `signature` as `Stripe-Signature`.
async fn post(url: &str, body: &str, signature: Option<&str>) -> (u16, String) {
    let headers: Vec<(&str, String)> = signature
        .map(|s| ("Stripe-Signature", s.to_string()))
        .into_iter()
        .collect();
    post_webhook(url, body, &headers).await
}

/// Posts `body` signed now by Stripe's library with the source's secret.
async fn post_signed(url: &str, body: &str) -> (u16, String) {
    let now = chrono::Utc::now().timestamp();
    let signature = stripe_signature(&[SIGNING_SECRET], now, body.as_bytes());
    post(url, body, Some(&signature)).await
}

async fn source_info(daemon: &TestDaemon) -> proto::SourceInfo {
    let sources = daemon.sources().await;
    assert_eq!(sources.len(), 1, "{sources:?}");
    sources[0].clone()
}

const CUSTOMER: &str = "cus_RdunningAda01";

async fn a_signed_stripe_event_starts_one_case_with_what_the_api_adds(backend: Backend) {
    if !node_signers_available() {
        return;
    }
    let api = stripe_api().await;
    let s = start(&backend, &api).await;
    let url = format!("{}/sources/billing", s.base);
    let failed = fixture("invoice.payment_failed");

    let (status, answer) = post_signed(&url, &failed).await;
    assert_eq!(status, 200, "{answer}\n{}", s.daemon.log());
    let answer: serde_json::Value = serde_json::from_str(&answer).expect("JSON answer");
    assert_eq!(answer["event"], "stripe:evt_1QdunningFailed01");
    assert_eq!(answer["duplicate"], false);
    assert_eq!(answer["cases_started"].as_array().map(Vec::len), Some(1));

    let cases = s.daemon.cases_of(CUSTOMER).await;
    assert_eq!(cases.len(), 1);
    assert_eq!(cases[0].subject, "in_1QdunningFailed01");
    let detail = s.daemon.case(&cases[0].id).await;
    let event: serde_json::Value =
        serde_json::from_str(&detail.trigger_event_json).expect("trigger event");
    assert_eq!(event["occurred_at"], "2026-01-05T08:59:00Z");
    assert_eq!(event["customer"]["phone"], "+447700900123");
    assert_eq!(event["customer"]["timezone"], "Europe/London");
    assert_eq!(event["data"]["decline_code"], "insufficient_funds");
    assert_eq!(event["data"]["object"]["number"], "ACME-0042");

    // The API was asked with the key, for the two objects the payload lacks.
    let asked: Vec<(String, String)> = api
        .requests()
        .iter()
        .map(|r| (r.method.clone(), r.path.clone()))
        .collect();
    assert_eq!(
        asked,
        [
            (
                "GET".to_string(),
                "/v1/payment_intents/pi_3QdunningIntent01".to_string()
            ),
            (
                "GET".to_string(),
                "/v1/customers/cus_RdunningAda01".to_string()
            ),
        ]
    );

    // The portal link makes a session when followed, for that customer only.
    let portal = event["data"]["portal_url"].as_str().expect("portal_url");
    let local = portal.replace("https://billing.example.com/hooks", &s.base);
    assert!(
        local.starts_with(&format!(
            "{}/sources/billing/portal?customer=cus_RdunningAda01&expires=",
            s.base
        )),
        "{portal}"
    );
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let followed = no_redirects
        .get(&local)
        .send()
        .await
        .expect("follow the link");
    assert_eq!(followed.status().as_u16(), 303);
    let location = followed.headers()["location"].to_str().expect("location");
    assert!(
        location.starts_with("https://billing.stripe.com/p/session/test_bps_"),
        "{location}"
    );
    let session = api.requests().pop().expect("the session request");
    assert_eq!(
        (
            session.method.as_str(),
            session.path.as_str(),
            session.form.get("customer").map(String::as_str)
        ),
        ("POST", "/v1/billing_portal/sessions", Some(CUSTOMER))
    );
    let altered = local.replace("cus_RdunningAda01", "cus_SomeoneElse01");
    let refused = no_redirects.get(&altered).send().await.expect("follow");
    assert_eq!(refused.status().as_u16(), 403);
    assert_eq!(api.requests().len(), 3, "an altered link makes no session");

    s.daemon.settle().await;
    let sent = s.daemon.deliveries();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(
        sent[0]["message"]["text"],
        "Hi Ada Lovelace, €49.00 failed (insufficient_funds on your visa ending 0341). Pay: https://invoice.stripe.com/i/acct_1Qacme/test_YWNjdF8xUWFjbWUsX1JkdW5uaW5n0200abcdef"
    );
    s.daemon.advance("3d").await;
    let sent = s.daemon.deliveries();
    assert_eq!(sent.len(), 2, "the decline code's branch sends the SMS");
    assert_eq!(sent[1]["recipient"]["phone"], "+447700900123");

    // Stripe's retry of the same event (and a replay) starts nothing more.
    let (status, answer) = post_signed(&url, &failed).await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains("\"duplicate\":true"), "{answer}");
    assert_eq!(s.daemon.cases_of(CUSTOMER).await.len(), 1);

    // The payment settles the case.
    let (status, answer) = post_signed(&url, &fixture("invoice.paid")).await;
    assert_eq!(status, 200, "{answer}");
    let cases = s.daemon.cases_of(CUSTOMER).await;
    assert_eq!(cases[0].state, "recovered");

    let info = source_info(&s.daemon).await;
    assert_eq!(
        (info.provider.as_str(), info.url.as_str()),
        (
            "stripe",
            "https://billing.example.com/hooks/sources/billing"
        )
    );
    assert_eq!(
        (
            info.accepted,
            info.duplicate,
            info.ignored,
            info.refused,
            info.unavailable
        ),
        (2, 1, 0, 0, 0)
    );
    assert_eq!(info.last, "invoice.paid evt_1QdunningPaid01");
    let listed = s.daemon.ctl_ok(&["sources", "list"]);
    assert!(
        listed.contains("billing") && listed.contains("stripe"),
        "{listed}"
    );
    assert!(!s.daemon.log().contains(API_KEY) && !s.daemon.log().contains(SIGNING_SECRET));
}

async fn forged_expired_and_unsigned_webhooks_change_nothing(backend: Backend) {
    if !node_signers_available() {
        return;
    }
    let api = stripe_api().await;
    let s = start(&backend, &api).await;
    let url = format!("{}/sources/billing", s.base);
    let failed = fixture("invoice.payment_failed");
    let now = chrono::Utc::now().timestamp();
    let forged = stripe_signature(&["whsec_someone_else"], now, failed.as_bytes());
    let expired = stripe_signature(&[SIGNING_SECRET], now - 301, failed.as_bytes());
    let other_body = stripe_signature(&[SIGNING_SECRET], now, fixture("invoice.paid").as_bytes());
    for (signature, status, says) in [
        (None, 400, "no Stripe-Signature header"),
        (Some("t=1,v1=00"), 401, "does not match"),
        (Some(forged.as_str()), 401, "does not match"),
        (Some(expired.as_str()), 401, "too old"),
        (Some(other_body.as_str()), 401, "does not match"),
    ] {
        let (got, answer) = post(&url, &failed, signature).await;
        assert_eq!(
            (got, answer.contains(says)),
            (status, true),
            "{signature:?}: {answer}"
        );
    }
    assert!(s.daemon.cases_of(CUSTOMER).await.is_empty());
    assert!(
        api.requests().is_empty(),
        "nothing fetched for a refused webhook"
    );
    let info = source_info(&s.daemon).await;
    assert_eq!((info.accepted, info.refused), (0, 5));
    let scrape = reqwest::get(&s.metrics)
        .await
        .expect("scrape")
        .text()
        .await
        .expect("metrics text");
    for line in [
        "dunningd_source_events_total{source=\"billing\",result=\"refused\"} 5",
        "dunningd_source_events_total{source=\"billing\",result=\"accepted\"} 0",
    ] {
        assert!(scrape.contains(line), "{line} in:\n{scrape}");
    }
    assert!(info.last_error.contains("signature refused"), "{info:?}");
    let log = s.daemon.log();
    assert!(
        log.contains("refused a webhook") && log.contains("billing"),
        "logged with the source's name:\n{log}"
    );

    // While the secret is rolled, Stripe signs with both: accepted.
    let rolled = stripe_signature(&["whsec_old_one", SIGNING_SECRET], now, failed.as_bytes());
    let (status, answer) = post(&url, &failed, Some(&rolled)).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(s.daemon.cases_of(CUSTOMER).await.len(), 1);
    // `dunningctl sources list` says something was refused: exit 1.
    let listed = s.daemon.ctl(&["sources", "list"]);
    assert_eq!(listed.status.code(), Some(1));
}

async fn a_payment_that_arrives_first_and_unmapped_events_start_nothing(backend: Backend) {
    if !node_signers_available() {
        return;
    }
    let api = stripe_api().await;
    let s = start(&backend, &api).await;
    let url = format!("{}/sources/billing", s.base);
    // Out of order: the payment (two days later by Stripe's clock) first.
    let (status, answer) = post_signed(&url, &fixture("invoice.paid")).await;
    assert_eq!(status, 200, "{answer}");
    let (status, answer) = post_signed(&url, &fixture("invoice.payment_failed")).await;
    assert_eq!(status, 200, "{answer}");
    assert!(s.daemon.cases_of(CUSTOMER).await.is_empty(), "{answer}");

    let (status, answer) = post_signed(&url, &fixture("customer.created")).await;
    assert_eq!(status, 200, "an unmapped event must not make Stripe retry");
    assert!(answer.starts_with("ignored customer.created"), "{answer}");
    let info = source_info(&s.daemon).await;
    assert_eq!((info.accepted, info.ignored), (2, 1));
}

async fn an_unreachable_provider_api_is_answered_503_and_the_retry_succeeds(backend: Backend) {
    if !node_signers_available() {
        return;
    }
    let api = stripe_api().await;
    let mut s = start(&backend, &api).await;
    let url = format!("{}/sources/billing", s.base);
    let failed = fixture("invoice.payment_failed");
    api.fail_next(3, 500);
    let (status, _) = post_signed(&url, &failed).await;
    assert_eq!(status, 503, "{}", s.daemon.log());
    assert_eq!(api.requests().len(), 3, "three tries of the first fetch");
    assert!(s.daemon.cases_of(CUSTOMER).await.is_empty());
    assert_eq!(source_info(&s.daemon).await.unavailable, 1);

    // Stripe retries; the API answers again.
    let (status, answer) = post_signed(&url, &failed).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(s.daemon.cases_of(CUSTOMER).await.len(), 1);

    // Committed before the answer: a kill right after it loses nothing.
    let (status, _) = post_signed(&url, &fixture("customer.source.expiring")).await;
    assert_eq!(status, 200);
    s.daemon.kill9();
    s.daemon.spawn().await;
    let (status, answer) = post_signed(&url, &fixture("customer.source.expiring")).await;
    assert_eq!(status, 200, "{answer}");
    assert!(
        answer.contains("\"duplicate\":true"),
        "stored before the kill: {answer}"
    );
}

on_both_backends!(
    a_signed_stripe_event_starts_one_case_with_what_the_api_adds,
    forged_expired_and_unsigned_webhooks_change_nothing,
    a_payment_that_arrives_first_and_unmapped_events_start_nothing,
    an_unreachable_provider_api_is_answered_503_and_the_retry_succeeds,
);

/// Sources come and go with a reload, without a restart.
#[tokio::test]
async fn a_source_added_or_removed_by_reload_is_served_at_once() {
    if !node_signers_available() {
        return;
    }
    let api = stripe_api().await;
    let s = start(&Backend::Sqlite, &api).await;
    let failed = fixture("invoice.payment_failed");
    let second = format!("{}/sources/second", s.base);
    let (status, _) = post_signed(&second, &failed).await;
    assert_eq!(status, 404);

    let config = std::fs::read_to_string(&s.daemon.config).expect("config");
    let added = config.replace(
        "sources:\n",
        &format!(
            "sources:\n  second:\n    provider: stripe\n    signing_secret: {{ file: '{}' }}\n",
            s._secrets.path().join("signing").display()
        ),
    );
    std::fs::write(&s.daemon.config, &added).expect("write config");
    s.daemon.ctl_ok(&["reload"]);
    let (status, answer) = post_signed(&second, &failed).await;
    assert_eq!(status, 200, "{answer}\n{}", s.daemon.log());
    assert!(answer.contains("stripe:evt_1QdunningFailed01"), "{answer}");

    std::fs::write(&s.daemon.config, &config).expect("write config");
    s.daemon.ctl_ok(&["reload"]);
    let (status, _) = post_signed(&second, &failed).await;
    assert_eq!(status, 404);
}

/// `dunningctl sources map` shows a payload's event offline.
#[tokio::test]
async fn sources_map_prints_the_event_or_why_none() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("failed.json");
    std::fs::write(&file, fixture("invoice.payment_failed")).expect("write");
    let ctl = dunningd_e2e::binary("dunningctl");
    let run = |args: &[&str]| {
        std::process::Command::new(&ctl)
            .args(args)
            .output()
            .expect("run dunningctl")
    };
    let out = run(&["sources", "map", "stripe", file.to_str().expect("utf-8")]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("\"type\": \"payment_failed\""), "{text}");
    assert!(
        text.contains("\"subject\": \"in_1QdunningFailed01\""),
        "{text}"
    );
    assert!(
        text.contains("/v1/payment_intents/pi_3QdunningIntent01"),
        "{text}"
    );

    let out = run(&[
        "--json",
        "sources",
        "map",
        "stripe",
        file.to_str().expect("utf-8"),
        "--subject",
        "customer",
    ]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(json["event"]["subject"], CUSTOMER);

    std::fs::write(&file, fixture("customer.created")).expect("write");
    let out = run(&["sources", "map", "stripe", file.to_str().expect("utf-8")]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.starts_with("ignored"),
        "{text}"
    );

    let out = run(&["sources", "map", "square", file.to_str().expect("utf-8")]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown provider 'square'"));
}

/// The `yaml` block that follows `heading` in the README.
fn readme_yaml_after(heading: &str) -> String {
    let readme = std::fs::read_to_string(workspace_root().join("README.md")).expect("README");
    let section = &readme[readme.find(heading).expect("the README has the heading")..];
    let start = section.find("```yaml\n").expect("a yaml block") + "```yaml\n".len();
    let block = &section[start..];
    let end = block.find("```").expect("the block ends");
    // The block is indented as part of a numbered list item.
    block[..end]
        .lines()
        .map(|line| line.strip_prefix("   ").unwrap_or(line))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A user follows "Connect Stripe in five minutes" to the letter, with the
/// test peer standing for api.stripe.com: the README's `sources:` block and
/// credentials, the shipped Stripe example workflow with a `stripe`
/// channel. A signed Stripe event starts a case; Stripe's retry of the
/// charge on day 3 and its `invoice.paid` end it before the cancellation.
#[tokio::test]
async fn connect_stripe_as_the_readme_says() {
    if !node_signers_available() {
        return;
    }
    let api = stripe_api().await;
    api.put_object(
        "/v1/invoices/in_1QdunningFailed01",
        serde_json::json!({ "id": "in_1QdunningFailed01", "object": "invoice", "status": "open", "amount_due": 4900 }),
    );
    let credentials = tempfile::tempdir().expect("tempdir");
    for (name, value) in [
        ("stripe-webhook-secret", SIGNING_SECRET),
        ("stripe-api-key", API_KEY),
        ("webhooks-secret", LINK_SECRET),
    ] {
        std::fs::write(credentials.path().join(name), value).expect("credential");
    }
    let sources = readme_yaml_after("### Connect Stripe in five minutes");
    assert!(sources.starts_with("sources:\n  stripe:\n"), "{sources}");
    let base = format!("http://127.0.0.1:{}", free_port());
    let workflow = std::fs::read_to_string(
        workspace_root().join("examples/workflows/stripe-payment-failed.yaml"),
    )
    .expect("example workflow");
    let mut setup = Setup::default()
        .workflow("stripe-payment-failed.yaml", &workflow)
        .channel(
            "stripe",
            &format!(
                "{{ plugin: stripe, settings: {{ base_url: '{}' }}, secrets: {{ api_key: {{ credential: stripe-api-key }} }} }}",
                api.base_url()
            ),
        );
    setup.env = vec![(
        "CREDENTIALS_DIRECTORY".into(),
        credentials.path().display().to_string(),
    )];
    setup.extra_config = format!(
        "webhooks:\n  listen: '{}'\n  public_url: '{base}'\n  secret: {{ credential: webhooks-secret }}\n{}\n    api_base: '{}'\n",
        base.trim_start_matches("http://"),
        sources.trim_end(),
        api.base_url()
    );
    let daemon = TestDaemon::start(setup).await;
    let url = format!("{base}/sources/stripe");

    let (status, answer) = post_signed(&url, &fixture("invoice.payment_failed")).await;
    assert_eq!(status, 200, "{answer}\n{}", daemon.log());
    let cases = daemon.cases_of(CUSTOMER).await;
    assert_eq!(cases.len(), 1, "{answer}");
    daemon.settle().await;
    let sent = daemon.deliveries();
    assert_eq!(
        sent.len(),
        1,
        "insufficient funds: no new-card SMS: {sent:?}"
    );
    let text = sent[0]["message"]["text"].as_str().expect("text");
    assert!(
        text.contains("Your Visa ending in 0341 was declined for insufficient funds; we'll try again in 3 days."),
        "{text}"
    );
    // Attributes are HTML-escaped (`/` as `&#x2f;`), as browsers read them.
    let html = sent[0]["message"]["html"]
        .as_str()
        .expect("html")
        .replace("&#x2f;", "/")
        .replace("&amp;", "&");
    assert!(
        html.contains(&format!(
            "{base}/sources/stripe/portal?customer=cus_RdunningAda01"
        )),
        "{html}"
    );

    daemon.advance("3d").await;
    let paid = api
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST" && r.path == "/v1/invoices/in_1QdunningFailed01/pay")
        .count();
    assert_eq!(paid, 1, "Stripe was asked to retry the charge once");
    let case = daemon.case(&cases[0].id).await;
    let retry = case
        .deliveries
        .iter()
        .find(|d| d.channel == "stripe")
        .expect("the retry delivery");
    assert_eq!(
        (retry.status.as_str(), retry.receipt.as_str()),
        ("sent", "in_1QdunningFailed01")
    );

    // Stripe tells us the invoice is paid: the case ends, nothing is cancelled.
    let (status, answer) = post_signed(&url, &fixture("invoice.paid")).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(daemon.cases_of(CUSTOMER).await[0].state, "recovered");
    daemon.advance("27d").await;
    assert!(
        api.requests().iter().all(|r| r.method != "DELETE"),
        "a recovered case cancels nothing"
    );
}
