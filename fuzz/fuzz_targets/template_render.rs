//! Any text as a template (an `html` and a `text` field), rendered for an
//! event with hostile values: output or an error, never a panic and never
//! unbounded work or output.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(template) = std::str::from_utf8(data) else {
        return;
    };
    let quoted = serde_json::to_string(template).expect("a string serializes");
    let source = format!(
        "name: fuzz\ntrigger:\n  event: payment_failed\nsteps:\n  - name: s\n    after: 0s\n    send:\n      - {{ channel: email, template: t }}\ntemplates:\n  t:\n    subject: x\n    html: {quoted}\n    text: {quoted}\n"
    );
    let Ok(workflow) =
        dunningd::workflow::Workflow::parse(std::path::Path::new("fuzz.yaml"), &source, None)
    else {
        return;
    };
    let event = dunningd::model::Event::from_json(EVENT).expect("the fixed event is valid");
    let context = dunningd::workflow::RenderContext {
        event: &event,
        case_id: "case_1",
        case_started_at: chrono::DateTime::UNIX_EPOCH,
        step: "s",
        channel: "email",
        unsubscribe_url: Some("https://example.com/u/1"),
    };
    let _ = workflow.render("t", &context);
});

const EVENT: &str = r#"{
  "id": "evt_1", "type": "payment_failed",
  "customer": { "id": "cus_1", "name": "<img src=x onerror=alert(1)>", "email": "a@example.com",
                "plan": "pro", "seats": 3, "tags": ["a", "b"] },
  "subject": "inv_1",
  "data": { "amount": 4900, "currency": "USD", "update_url": "javascript:alert(1)",
            "list": [1, 2, 3], "nested": { "deep": { "x": "y" } } }
}"#;
