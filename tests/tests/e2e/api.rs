//! The admin API works with generic gRPC tooling: the standard health service
//! and server reflection, as grpcurl and grpcui use them; and it refuses
//! events it cannot use, naming the event and the field.

use dunningd::proto;
use dunningd_e2e::daemon::{Setup, TestDaemon};
use dunningd_e2e::fixtures::{WORKFLOW, event};
use serde_json::{Value, json};
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

#[tokio::test]
async fn health_and_reflection_answer_generic_clients() {
    let daemon = TestDaemon::start(Setup::default()).await;

    let mut health = HealthClient::new(daemon.channel().await);
    for service in ["", "dunningd.v1.Admin"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("health check")
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "service {service:?}");
    }

    let mut reflection = ServerReflectionClient::new(daemon.channel().await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .expect("reflection")
        .into_inner();
    let response = responses
        .message()
        .await
        .expect("a reflection answer")
        .expect("not empty");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("expected a service list, got {response:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"dunningd.v1.Admin".to_string()),
        "{names:?}"
    );
    assert!(
        names.contains(&"grpc.health.v1.Health".to_string()),
        "{names:?}"
    );
}

#[tokio::test]
async fn sighup_reloads_the_configuration_too() {
    const PUSH: &str = "name: push-only\ntrigger: { event: payment_failed }\nsteps:\n  - name: ping\n    after: 0s\n    send: [{ channel: push, template: ping }]\ntemplates:\n  ping: { body: hi }\n";
    let daemon = TestDaemon::start(Setup::default().workflow("push.yaml", PUSH)).await;
    let list = daemon.ctl(&["workflows", "list"]);
    let stderr = String::from_utf8_lossy(&list.stderr);
    assert!(
        stderr.contains("push.yaml:6:14: step 'ping': unknown channel 'push'"),
        "{stderr}"
    );

    // Configure the channel and tell the daemon with SIGHUP (the config file
    // is not watched).
    let mut config = std::fs::read_to_string(&daemon.config).expect("config");
    config = config.replace(
        "channels:\n",
        &format!(
            "channels:\n  push: {{ plugin: log, settings: {{ path: '{}/push.jsonl' }} }}\n",
            daemon.dir.path().display()
        ),
    );
    std::fs::write(&daemon.config, config).expect("write config");
    daemon.signal("HUP");

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let out = daemon.ctl(&["workflows", "list"]);
        if out.status.success() && String::from_utf8_lossy(&out.stdout).contains("push-only") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "SIGHUP did not apply the new channel:\n{}",
            daemon.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let plugins = daemon.ctl_ok(&["plugins", "list"]);
    assert!(plugins.contains("push"), "{plugins}");
}

/// `payment_failed` for invoice `inv_1` with one top-level field replaced.
fn event_with(id: &str, field: &str, value: Value) -> String {
    let mut event: Value =
        serde_json::from_str(&event(id, "payment_failed", "cus_1", "inv_1", 4900)).expect("JSON");
    event[field] = value;
    event.to_string()
}

/// Regression for "safe with what customers bring": a bad event used to be
/// refused with a bare serde message (`events[1]: invalid event JSON:
/// invalid type: …`), and amounts the `money` filter cannot show (`"4900"`,
/// `49.5`, 2^63) were stored and started cases. Now the whole batch is
/// refused naming the event and the field, and nothing starts.
#[tokio::test]
async fn refused_events_name_the_event_and_the_field_and_start_nothing() {
    let daemon = TestDaemon::start(Setup::default().workflow("pf.yaml", WORKFLOW)).await;
    let mut client = daemon.client().await;
    let good = |id: &str| event(id, "payment_failed", "cus_2", "inv_2", 4900);
    let huge = event_with("evt_1", "data", json!({ "note": "x".repeat(70_000) }));

    let api: Vec<(Vec<String>, String)> = vec![
        (
            vec![
                good("evt_1"),
                event_with("evt_2", "data", json!({ "amount": "4900", "currency": "USD" })),
            ],
            r#"event 2 (evt_2): data.amount: must be an integer amount in minor units, got string "4900""#.into(),
        ),
        (
            vec![event_with("evt_1", "data", json!({ "amount": 49.5 }))],
            "event 1 (evt_1): data.amount: must be an integer amount in minor units, got number 49.5".into(),
        ),
        (
            vec![event_with("evt_1", "data", json!({ "amount": i64::MAX }))],
            "event 1 (evt_1): data.amount: must be within ±9007199254740991 minor units, got 9223372036854775807".into(),
        ),
        (
            vec![event_with("evt_1", "data", json!({ "amount": 100, "currency": "dollars" }))],
            r#"event 1 (evt_1): data.currency: must be a 3-letter ISO 4217 code, got string "dollars""#.into(),
        ),
        (
            vec![good("evt_1"), r#"{"type":"payment_failed"}"#.into()],
            "event 2: id: missing".into(),
        ),
        (
            vec![event_with("evt_9", "occurred_at", json!("yesterday"))],
            r#"event 1 (evt_9): occurred_at: not an RFC 3339 time: "yesterday""#.into(),
        ),
        (
            vec![good("evt_1"), good("evt_2"), event_with("evt_42", "customer", json!({}))],
            "event 3 (evt_42): customer.id: missing".into(),
        ),
        (
            vec![huge.clone()],
            format!("event 1: {} bytes; an event may have at most 65536", huge.len()),
        ),
    ];
    for (batch, message) in api {
        let status = client
            .send_events(proto::SendEventsRequest { events: batch })
            .await
            .expect_err(&message);
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert_eq!(status.message(), message);
    }

    // `dunningctl events send` checks the same before sending, and says
    // where in the file.
    let lines = format!(
        "{}\n\n{}\n",
        good("evt_1"),
        event_with("evt_7", "data", json!({ "amount": "abc" }))
    );
    let cli = [
        (
            "lines.jsonl",
            lines,
            r#"lines.jsonl:3: event 2 (evt_7): data.amount: must be an integer amount in minor units, got string "abc""#,
        ),
        (
            "broken.jsonl",
            format!("{}\n{{\"id\": evt_2}}\n", good("evt_1")),
            "broken.jsonl:2:8: not JSON: expected value",
        ),
        (
            "array.json",
            format!(
                "[{}, {}]",
                good("evt_1"),
                event_with("evt_2", "data", json!({ "amount": 1e20 }))
            ),
            "array.json: event 2 (evt_2): data.amount: must be an integer amount in minor units, got number 1e+20",
        ),
    ];
    for (file, content, expected) in cli {
        std::fs::write(daemon.path(file), content).expect("write events");
        let out = daemon.ctl(&["events", "send", file]);
        assert!(!out.status.success(), "{file}: {out:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stderr).trim_end(),
            format!("dunningctl: {expected}"),
            "{file}"
        );
    }

    let cases = client
        .list_cases(proto::ListCasesRequest::default())
        .await
        .expect("list")
        .into_inner()
        .cases;
    assert!(cases.is_empty(), "refused batches start nothing: {cases:?}");
    // The same events, made right, are taken.
    let results = daemon.send_events(vec![good("evt_1")]).await;
    assert_eq!(results[0].cases_started.len(), 1, "{results:?}");
}
