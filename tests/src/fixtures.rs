//! What several suites send: the payment-failed workflow they run and the
//! events that drive it.

/// Email and in-app at once, SMS after 3 days, a webhook after 14; four
/// deliveries a case unless `payment_succeeded` ends it; amounts under 500
/// start nothing.
pub const WORKFLOW: &str = r#"
name: payment-failed
description: Recover failed renewal payments
trigger:
  event: payment_failed
  when: "data.amount >= 500"
exit_on: [payment_succeeded]
steps:
  - name: first-notice
    after: 0s
    send:
      - { channel: email, template: first_email }
      - { channel: in_app, template: banner }
  - name: reminder
    after: 3d
    send:
      - { channel: sms, template: reminder_sms }
  - name: suspend
    after: 14d
    send:
      - { channel: webhook, template: suspend }
templates:
  first_email:
    subject: "Your payment of {{ data.amount | money(data.currency) }} didn't go through"
    text: "Hi {{ customer.name }}, we couldn't charge your card for invoice {{ subject }}."
  banner:
    title: "Payment failed"
    body: "Please update your payment method."
  reminder_sms:
    body: "{{ customer.name }}, your payment for {{ subject }} is still due."
  suspend:
    body: "suspend {{ customer.id }}"
"#;

/// The `i`-th of many events of one kind: id `{prefix}{i}`, customer
/// `cus_{i}`, invoice `inv_{i}`, an amount of 10.00.
pub fn numbered_event(prefix: &str, kind: &str, i: usize) -> String {
    event(
        &format!("{prefix}{i}"),
        kind,
        &format!("cus_{i}"),
        &format!("inv_{i}"),
        1000,
    )
}

/// A billing event for [`WORKFLOW`]'s customer `customer` and invoice `subject`.
pub fn event(id: &str, kind: &str, customer: &str, subject: &str, amount: u64) -> String {
    serde_json::json!({
        "id": id,
        "type": kind,
        "customer": { "id": customer, "name": format!("Name of {customer}"), "email": format!("{customer}@example.com"), "phone": "+15005550006" },
        "subject": subject,
        "data": { "amount": amount, "currency": "USD" }
    })
    .to_string()
}
