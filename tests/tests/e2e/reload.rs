//! Workflows are hot-reloaded from the folder: changed, broken, duplicated
//! and deleted files, against the real daemon and its real watcher.

use std::time::{Duration, Instant};

use dunningd::proto;
use dunningd_e2e::daemon::{Setup, TestDaemon};

const V1: &str = r#"
name: card-expiring
trigger: { event: card_expiring }
exit_on: [payment_method_updated]
steps:
  - name: heads-up
    after: 0s
    send:
      - { channel: email, template: heads_up }
templates:
  heads_up:
    subject: "Version one for {{ customer.name }}"
    text: "Your card expires soon."
"#;

fn event(id: &str, customer: &str) -> String {
    serde_json::json!({
        "id": id, "type": "card_expiring",
        "customer": { "id": customer, "name": "Grace", "email": "grace@example.com" },
        "subject": format!("card_of_{customer}"), "data": {}
    })
    .to_string()
}

async fn workflows(daemon: &TestDaemon) -> proto::ListWorkflowsResponse {
    daemon
        .client()
        .await
        .list_workflows(proto::ListWorkflowsRequest {})
        .await
        .expect("list workflows")
        .into_inner()
}

/// Polls until `check` holds; the watcher debounces, so this takes a moment.
async fn eventually<F>(daemon: &TestDaemon, what: &str, check: F) -> proto::ListWorkflowsResponse
where
    F: Fn(&proto::ListWorkflowsResponse) -> bool,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let list = workflows(daemon).await;
        if check(&list) {
            return list;
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within 10s; last: {list:?}\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn start_case(daemon: &TestDaemon, id: &str, customer: &str) -> Vec<String> {
    let results = daemon
        .client()
        .await
        .send_events(proto::SendEventsRequest {
            events: vec![event(id, customer)],
        })
        .await
        .expect("send")
        .into_inner()
        .results;
    results[0].cases_started.clone()
}

#[tokio::test]
async fn edits_apply_broken_files_keep_the_last_good_version_and_deletes_remove() {
    let daemon = TestDaemon::start(Setup::default().workflow("card-expiring.yaml", V1)).await;
    let file = daemon.path("workflows/card-expiring.yaml");
    let v1 = workflows(&daemon).await.workflows[0].version.clone();

    // A running case keeps its version across the edit.
    let old_case = start_case(&daemon, "e1", "cus_1").await;
    assert_eq!(old_case.len(), 1);

    std::fs::write(&file, V1.replace("Version one", "Version two")).expect("edit");
    let list = eventually(&daemon, "the edit", |l| {
        l.workflows.first().is_some_and(|w| w.version != v1)
    })
    .await;
    let v2 = list.workflows[0].version.clone();
    assert!(list.errors.is_empty(), "{:?}", list.errors);

    start_case(&daemon, "e2", "cus_2").await;
    daemon.settle().await;
    let subjects: Vec<String> = daemon
        .deliveries()
        .iter()
        .map(|d| d["message"]["subject"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(
        subjects.contains(&"Version one for Grace".to_string()),
        "{subjects:?}"
    );
    assert!(
        subjects.contains(&"Version two for Grace".to_string()),
        "{subjects:?}"
    );

    // Broken: the last good version keeps serving and the error says where.
    std::fs::write(&file, V1.replace("after: 0s", "after: soon")).expect("break");
    let list = eventually(&daemon, "the error report", |l| !l.errors.is_empty()).await;
    assert_eq!(list.workflows.len(), 1);
    assert_eq!(list.workflows[0].version, v2, "the last good version stays");
    let error = &list.errors[0];
    assert!(error.path.ends_with("card-expiring.yaml"), "{error:?}");
    assert!(error.line > 0, "the error has a line: {error:?}");
    assert!(error.message.contains("soon"), "{error:?}");
    assert_eq!(
        start_case(&daemon, "e3", "cus_3").await.len(),
        1,
        "still starting cases"
    );

    let status = daemon.ctl(&["status"]);
    assert_eq!(
        status.status.code(),
        Some(1),
        "status exits 1 on a refused file"
    );
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.contains("card-expiring.yaml:"),
        "status shows the error:\n{status}"
    );
    let out = daemon.ctl(&["reload"]);
    assert!(
        !out.status.success(),
        "reload reports the refused file with a non-zero exit"
    );

    // A second file claiming the same name: refused, the first stays.
    std::fs::write(&file, V1).expect("fix");
    std::fs::write(
        daemon.path("workflows/copy.yaml"),
        V1.replace("Version one", "Copy"),
    )
    .expect("dup");
    let list = eventually(&daemon, "the duplicate report", |l| {
        l.errors.iter().any(|e| e.path.ends_with("copy.yaml"))
    })
    .await;
    assert_eq!(list.workflows.len(), 1);
    assert!(list.workflows[0].path.ends_with("card-expiring.yaml"));
    assert!(
        list.errors
            .iter()
            .any(|e| e.message.contains("card-expiring")),
        "{:?}",
        list.errors
    );

    // Deleted: the workflow is gone and starts nothing; cases already running go on.
    std::fs::remove_file(daemon.path("workflows/copy.yaml")).expect("rm copy");
    std::fs::remove_file(&file).expect("rm");
    eventually(&daemon, "the removal", |l| {
        l.workflows.is_empty() && l.errors.is_empty()
    })
    .await;
    assert!(start_case(&daemon, "e4", "cus_4").await.is_empty());
    let active = daemon
        .client()
        .await
        .get_case(proto::GetCaseRequest {
            id: old_case[0].clone(),
        })
        .await
        .expect("old case");
    assert!(active.into_inner().case.is_some());
}
