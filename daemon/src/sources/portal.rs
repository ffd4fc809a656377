//! Stripe customer-portal links that do not go stale in a message.
//!
//! A Stripe billing-portal session (`POST /v1/billing_portal/sessions`) is
//! a short-lived URL: made when an event arrives, it would have expired by
//! the time a day-7 reminder is read. So events from a Stripe source with an
//! `api_key` carry `data.portal_url`, a link to this daemon signed for one
//! source and one customer, valid for [`LINK_LIFETIME`]; following it makes
//! a session there and then and redirects to it (303).
//!
//! The link is signed like the unsubscribe link ([`crate::links`]), over
//! the source, the customer and the expiry, so it cannot be altered to open
//! another customer's portal. A link scanner that follows it only makes a
//! session nobody uses.

use serde_json::Value;

use super::SourceConfig;
use crate::redact;

/// Makes a portal session for `customer` and returns its URL.
pub async fn session(
    client: &reqwest::Client,
    source: &SourceConfig,
    customer: &str,
) -> Result<String, String> {
    let (Some(key), Some(base)) = (source.api_key.as_deref(), source.api_base.as_deref()) else {
        return Err("the source has no api_key".into());
    };
    let mut form = vec![("customer", customer)];
    if let Some(return_url) = source.portal_return_url.as_deref() {
        form.push(("return_url", return_url));
    }
    let response = client
        .post(format!("{base}/v1/billing_portal/sessions"))
        .bearer_auth(key)
        .form(&form)
        .timeout(source.api_timeout)
        .send()
        .await
        .map_err(|e| redact::describe(&e.without_url()).replace(key, "***"))?;
    let status = response.status();
    let body: Value = response
        .json()
        .await
        .map_err(|e| format!("HTTP {status}: answer is not JSON: {e}"))?;
    if !status.is_success() {
        let message = body["error"]["message"].as_str().unwrap_or("no message");
        return Err(format!(
            "HTTP {status}: {}",
            message
                .chars()
                .take(200)
                .collect::<String>()
                .replace(key, "***")
        ));
    }
    match body["url"].as_str() {
        Some(url) if url.starts_with("https://") || url.starts_with("http://") => {
            Ok(url.to_string())
        }
        _ => Err(format!("HTTP {status} without an http(s) session url")),
    }
}
