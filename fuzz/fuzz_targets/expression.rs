//! Any text as a condition (`trigger.when`), evaluated against an event
//! whose fields have every JSON kind: true, false or an error, never a panic
//! and never unbounded work.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(condition) = std::str::from_utf8(data) else {
        return;
    };
    let source = format!(
        "name: fuzz\ntrigger:\n  event: payment_failed\n  when: {}\nsteps:\n  - name: s\n    after: 0s\n    send:\n      - {{ channel: email, template: t }}\ntemplates:\n  t:\n    text: x\n",
        serde_json::to_string(condition).expect("a string serializes")
    );
    let Ok(workflow) =
        dunningd::workflow::Workflow::parse(std::path::Path::new("fuzz.yaml"), &source, None)
    else {
        return;
    };
    let event = dunningd::model::Event::from_json(EVENT).expect("the fixed event is valid");
    let _ = workflow.triggers_on(&event);
    let _ = workflow.step_applies(0, &event);
});

const EVENT: &str = r#"{
  "id": "evt_1", "type": "payment_failed",
  "customer": { "id": "cus_1", "name": "<img src=x onerror=alert(1)>", "email": "a@example.com",
                "plan": "pro", "seats": 3, "vip": true, "tags": ["a", "b"], "meta": { "k": null } },
  "subject": "inv_1",
  "data": { "amount": 4900, "currency": "USD", "update_url": "javascript:alert(1)",
            "count": 2, "ratio": 0.5, "list": [1, 2, 3], "nested": { "deep": { "x": "y" } } }
}"#;
