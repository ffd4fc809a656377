//! Property tests of the parsers that read outside input: events, workflow
//! files, durations and conditions. Each holds for every input proptest
//! generates: no panic, an error that says where, and what is accepted
//! reads back the same. (`fuzz/` runs the same entry points under
//! libFuzzer for longer.)

use std::path::Path;

use dunningd::model::{Event, MAX_AMOUNT};
use dunningd::workflow::Workflow;
use proptest::prelude::*;

const SHIPPED: &str = include_str!("../../workflows/payment-failed.yaml");

fn event_json(id: &str, customer: &str, subject: &str, amount: serde_json::Value) -> String {
    serde_json::json!({
        "id": id, "type": "payment_failed",
        "customer": { "id": customer, "name": "Ada" },
        "subject": subject,
        "data": { "amount": amount, "currency": "EUR", "x": "text" }
    })
    .to_string()
}

/// A workflow whose trigger condition is `condition`.
fn with_condition(condition: &str) -> Workflow {
    let source = format!(
        "name: typed\ntrigger:\n  event: payment_failed\n  when: {}\nsteps:\n  - name: s\n    after: 0s\n    send:\n      - {{ channel: email, template: t }}\ntemplates:\n  t:\n    text: x\n",
        serde_json::to_string(condition).expect("a string serializes")
    );
    Workflow::parse(Path::new("typed.yaml"), &source, None).expect("the condition parses")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Any text: an event or an error naming the event, never a panic.
    #[test]
    fn any_text_is_an_event_or_an_error_naming_it(text in any::<String>()) {
        if let Err(e) = Event::from_json_numbered(7, &text) {
            prop_assert!(e.to_string().starts_with("event 7"), "{e}");
        }
    }

    /// Any JSON value in any field: accepted, or refused naming the event,
    /// in a message that stays short whatever the value.
    #[test]
    fn any_field_value_is_accepted_or_named(
        field in prop::sample::select(vec!["id", "type", "subject", "customer", "data", "occurred_at"]),
        value in any_json(),
    ) {
        let mut event: serde_json::Value =
            serde_json::from_str(&event_json("evt_1", "cus_1", "inv_1", 100.into())).expect("JSON");
        event[field] = value;
        if let Err(e) = Event::from_json_numbered(1, &event.to_string()) {
            let message = e.to_string();
            prop_assert!(message.starts_with("event 1"), "{message}");
            prop_assert!(message.len() < 400, "errors stay short: {message}");
        }
    }

    /// Well-formed events are accepted and read back the same.
    #[test]
    fn proper_events_round_trip(
        id in "[a-zA-Z0-9_:.-]{1,64}",
        customer in "[a-zA-Z0-9_-]{1,64}",
        subject in "[a-zA-Z0-9_ -]{0,63}[a-zA-Z0-9]",
        amount in -MAX_AMOUNT..=MAX_AMOUNT,
    ) {
        let event = Event::from_json(&event_json(&id, &customer, &subject, amount.into()))
            .expect("a proper event is accepted");
        prop_assert_eq!(&event.id, &id);
        prop_assert_eq!(&event.data["amount"], &serde_json::json!(amount));
        let again = Event::from_json(&serde_json::to_string(&event).expect("serializes"))
            .expect("what was accepted is accepted again");
        prop_assert_eq!(again, event);
    }

    /// An amount that is not an integer of minor units within range is
    /// refused at ingest, with the field named.
    #[test]
    fn improper_amounts_are_refused_with_the_field_named(
        amount in prop_oneof![
            (MAX_AMOUNT + 1..i64::MAX).prop_map(serde_json::Value::from),
            (i64::MIN..-MAX_AMOUNT).prop_map(serde_json::Value::from),
            "[0-9a-z.]{0,12}".prop_map(serde_json::Value::from),
            (-1e6f64..1e6)
                .prop_filter("a fraction", |f| f.fract() != 0.0)
                .prop_map(serde_json::Value::from),
        ],
    ) {
        let e = Event::from_json(&event_json("evt_1", "cus_1", "inv_1", amount))
            .expect_err("refused");
        prop_assert!(e.to_string().contains("data.amount"), "{e}");
    }

    /// Any text as a workflow file: a workflow or diagnostics that point
    /// inside the file, never a panic.
    #[test]
    fn any_text_is_a_workflow_or_diagnostics_inside_it(text in any::<String>()) {
        check_diagnostics(&text)?;
    }

    /// The shipped workflow with one character removed or inserted: still a
    /// workflow, or refused with diagnostics inside the file.
    #[test]
    fn a_damaged_shipped_workflow_is_refused_inside_the_file(
        at in 0..SHIPPED.len(),
        insert in prop::option::of(prop::sample::select(
            vec![':', '-', ' ', '\n', '"', '{', '[', '&', '*', '#', '\t'],
        )),
    ) {
        let at = (0..=at).rev().find(|i| SHIPPED.is_char_boundary(*i)).unwrap_or(0);
        let mut text = SHIPPED.to_string();
        match insert {
            Some(c) => text.insert(at, c),
            None => {
                if at < text.len() {
                    text.remove(at);
                }
            }
        }
        check_diagnostics(&text)?;
    }

    /// Durations read back as they were written.
    #[test]
    fn durations_read_back_as_written(secs in 0u64..=dunningd::duration::MAX.as_secs()) {
        let d = std::time::Duration::from_secs(secs);
        let text = dunningd::duration::format(d);
        prop_assert_eq!(dunningd::duration::parse(&text).expect("a formatted duration parses"), d);
    }

    /// Redaction runs on every log line and every plugin text: any text
    /// passes without a panic, and a URL's password never survives it,
    /// whatever surrounds the URL.
    #[test]
    fn redaction_takes_any_text_and_hides_url_passwords(
        before in any::<String>(),
        password in "[A-Za-z0-9._~-]{6,20}",
        after in any::<String>(),
    ) {
        let _ = dunningd::redact::urls(&before);
        let text = format!("{before} https://user:{password}@relay.example/x {after}");
        let shown = dunningd::redact::urls(&text);
        prop_assert!(shown.contains("https://user:***@relay.example/x"), "{shown}");
    }

    /// Comparing a string with a number is an error whatever the string,
    /// never an answer by kind order.
    #[test]
    fn a_string_compared_with_a_number_is_an_error(text in any::<String>(), n in any::<i32>()) {
        let workflow = with_condition(&format!("data.x >= {n}"));
        let mut event = Event::from_json(&event_json("evt_1", "cus_1", "inv_1", 100.into()))
            .expect("event");
        event.data["x"] = serde_json::Value::String(text);
        prop_assert!(workflow.triggers_on(&event).is_err());
    }
}

fn check_diagnostics(text: &str) -> Result<(), TestCaseError> {
    if let Err(diagnostics) = Workflow::parse(Path::new("w.yaml"), text, None) {
        prop_assert!(!diagnostics.is_empty());
        let lines = text.lines().count() as u32 + 1;
        for d in diagnostics {
            prop_assert!(d.line <= lines, "{d} points past the file's {lines} lines");
            prop_assert!(!d.message.is_empty());
        }
    }
    Ok(())
}

/// Any JSON value, nested a few levels.
fn any_json() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(serde_json::Value::from),
        any::<String>().prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(4, 32, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            prop::collection::btree_map("[a-z]{1,6}", inner, 0..4)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}
