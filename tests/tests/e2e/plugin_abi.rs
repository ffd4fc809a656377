//! The plugin host against real shared libraries: the Rust plugins built by
//! the workspace, and C plugins compiled here from `examples/plugin-c/echo.c`
//! (a working one, one that answers garbage, one claiming another ABI
//! version, one without an entry point).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use dunningd::config::ChannelSpec;
use dunningd::plugin_host::PluginHost;
use dunningd_plugin_api::wire::{DeliveryRequest, DeliveryResponse, Recipient};

/// Compiles echo.c with `defines` into `dir` as `libdunningd_plugin_<name>.so`.
fn compile_c_plugin(dir: &Path, name: &str, defines: &[&str]) -> PathBuf {
    let root = dunningd_e2e::workspace_root();
    let out = dir.join(format!("libdunningd_plugin_{name}.so"));
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let status = Command::new(cc)
        .args(["-shared", "-fPIC", "-Wall", "-Werror", "-o"])
        .arg(&out)
        .arg("-I")
        .arg(root.join("plugins/api"))
        .args(defines)
        .arg(root.join("examples/plugin-c/echo.c"))
        .status()
        .expect("run the C compiler");
    assert!(status.success(), "compiling the C plugin failed");
    out
}

fn spec(plugin: &str, timeout: Duration) -> ChannelSpec {
    ChannelSpec {
        plugin: plugin.into(),
        settings: serde_json::json!({}),
        secret_keys: Vec::new(),
        timeout,
        concurrency: 2,
        max_attempts: 3,
        retry_backoff: Duration::from_secs(60),
        send_window: None,
        frequency_cap: None,
    }
}

fn request(channel: &str) -> DeliveryRequest {
    DeliveryRequest {
        delivery_id: "d1".into(),
        idempotency_key: "k1".into(),
        channel: channel.into(),
        case_id: "c1".into(),
        workflow: "w".into(),
        step: "s".into(),
        template: "t".into(),
        attempt: 1,
        recipient: Recipient {
            customer_id: "cus_1".into(),
            ..Default::default()
        },
        message: BTreeMap::from([("body".to_string(), "hi".to_string())]),
        data: serde_json::json!({}),
        subject: "inv_1".into(),
    }
}

#[tokio::test]
async fn a_c_plugin_works_and_garbage_is_contained() {
    let dir = tempfile::tempdir().expect("tempdir");
    compile_c_plugin(dir.path(), "c_echo", &[]);
    compile_c_plugin(dir.path(), "c_garbage", &["-DGARBAGE"]);
    let host = PluginHost::new(dir.path().to_path_buf());
    let channels = BTreeMap::from([
        ("ok".to_string(), spec("c_echo", Duration::from_secs(5))),
        ("bad".to_string(), spec("c_garbage", Duration::from_secs(5))),
    ]);
    host.configure(&channels).expect("configure");

    assert_eq!(
        host.send(request("ok")).await,
        DeliveryResponse::Sent {
            receipt: Some("c-echo".into())
        }
    );
    match host.send(request("bad")).await {
        DeliveryResponse::Unknown { error } => {
            assert!(
                error.contains("plugin 'c-echo' returned an invalid response")
                    && error.contains("this is not json"),
                "{error}"
            );
        }
        other => panic!("garbage must be an unknown outcome, got {other:?}"),
    }
    assert_eq!(
        host.send(request("fax")).await,
        DeliveryResponse::Permanent {
            error: "channel 'fax' is not configured".into()
        }
    );
    let plugins = host.plugins();
    assert_eq!(plugins.len(), 2);
    assert!(
        plugins
            .iter()
            .all(|p| p.name == "c-echo" && p.abi_version == 1)
    );
}

#[tokio::test]
async fn libraries_that_are_not_plugins_of_this_abi_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    compile_c_plugin(dir.path(), "c_echo", &[]);
    compile_c_plugin(dir.path(), "c_v2", &["-DABI=2"]);
    compile_c_plugin(dir.path(), "c_none", &["-DNO_ENTRY"]);
    let host = PluginHost::new(dir.path().to_path_buf());
    host.configure(&BTreeMap::from([(
        "ok".to_string(),
        spec("c_echo", Duration::from_secs(5)),
    )]))
    .expect("configure");

    let table = [
        (
            "c_v2",
            "libdunningd_plugin_c_v2.so: plugin ABI version 2, this daemon speaks 1",
        ),
        (
            "c_none",
            "libdunningd_plugin_c_none.so: not a dunningd plugin: it does not export 'dunningd_plugin_entry_v1'",
        ),
        (
            "nowhere",
            "channel 'new': plugin 'nowhere' not found (looked for",
        ),
    ];
    for (plugin, want) in table {
        let channels = BTreeMap::from([
            ("ok".to_string(), spec("c_echo", Duration::from_secs(5))),
            ("new".to_string(), spec(plugin, Duration::from_secs(5))),
        ]);
        let err = host.configure(&channels).expect_err(plugin).to_string();
        assert!(err.contains(want), "{plugin}: {err}");
        // All or nothing: the working configuration stays.
        assert_eq!(
            host.channel_names().into_iter().collect::<Vec<_>>(),
            vec!["ok".to_string()]
        );
    }
}

#[tokio::test]
async fn a_rust_plugin_refuses_a_configuration_it_cannot_use() {
    let host = PluginHost::new(dunningd_e2e::plugin_dir().to_path_buf());
    let mut bad = spec("testkit", Duration::from_secs(5));
    bad.settings = serde_json::json!({ "behaviour": "explode" });
    let err = host
        .configure(&BTreeMap::from([("t".to_string(), bad)]))
        .expect_err("bad behaviour")
        .to_string();
    assert!(err.contains("channel 't': plugin 'testkit' refused the configuration: settings.behaviour: unknown behaviour 'explode'"), "{err}");

    let mut ok = spec("testkit", Duration::from_secs(5));
    ok.settings = serde_json::json!({ "behaviour": "permanent" });
    host.configure(&BTreeMap::from([("t".to_string(), ok)]))
        .expect("configure");
    assert_eq!(
        host.send(request("t")).await,
        DeliveryResponse::Permanent {
            error: "testkit: permanent failure".into()
        }
    );
}
