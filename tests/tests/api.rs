//! The admin API works with generic gRPC tooling: the standard health service
//! and server reflection, as grpcurl and grpcui use them.

use dunningd_e2e::daemon::{Setup, TestDaemon};
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
