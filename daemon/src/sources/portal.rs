//! Stripe customer-portal links that do not go stale in a message.
//!
//! A Stripe billing-portal session (`POST /v1/billing_portal/sessions`) is
//! a short-lived URL: made when an event arrives, it would have expired by
//! the time a day-7 reminder is read. So events from a Stripe source with an
//! `api_key` carry `data.portal_url`, a link to this daemon signed for one
//! source and one customer, valid for [`LINK_LIFETIME`]; following it makes
//! a session there and then and redirects to it (303).
//!
//! The link is signed with `webhooks.secret` (HMAC-SHA256 over a label, the
//! source, the customer and the expiry), so it cannot be altered to open
//! another customer's portal; daemons sharing a database share the secret
//! and accept each other's links. A link scanner that follows it only makes
//! a session nobody uses.

use std::time::Duration;

use chrono::{DateTime, Utc};
use hmac::Mac;
use serde_json::Value;

use super::{SourceConfig, hmac_sha256};
use crate::redact;

/// How long a portal link in a message works: longer than any dunning
/// sequence runs.
pub const LINK_LIFETIME: Duration = Duration::from_secs(90 * 24 * 3600);

fn mac(secret: &[u8], source: &str, customer: &str, expires: i64) -> hmac::Hmac<sha2::Sha256> {
    hmac_sha256(
        secret,
        &[
            b"portal\n",
            source.as_bytes(),
            b"\n",
            customer.as_bytes(),
            b"\n",
            expires.to_string().as_bytes(),
        ],
    )
}

/// The signed link to `customer`'s portal through `source`.
pub fn link(
    public_url: &str,
    source: &SourceConfig,
    secret: &[u8],
    customer: &str,
    now: DateTime<Utc>,
) -> String {
    let expires = now.timestamp() + LINK_LIFETIME.as_secs() as i64;
    let sig = hex::encode(
        mac(secret, &source.name, customer, expires)
            .finalize()
            .into_bytes(),
    );
    let query = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("customer", customer)
        .append_pair("expires", &expires.to_string())
        .append_pair("sig", &sig)
        .finish();
    format!("{public_url}{}/portal?{query}", source.path)
}

/// The customer a link is for, if its signature holds and it has not
/// expired.
pub fn verify(
    source: &SourceConfig,
    secret: &[u8],
    query: &str,
    now: DateTime<Utc>,
) -> Option<String> {
    let mut customer = None;
    let mut expires = None;
    let mut sig = None;
    for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
        match key.as_ref() {
            "customer" => customer = Some(value.into_owned()),
            "expires" => expires = value.parse::<i64>().ok(),
            "sig" => sig = hex::decode(value.as_bytes()).ok(),
            _ => {}
        }
    }
    let (customer, expires, sig) = (customer?, expires?, sig?);
    mac(secret, &source.name, &customer, expires)
        .verify_slice(&sig)
        .ok()?;
    (now.timestamp() <= expires).then_some(customer)
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::Provider;
    use chrono::TimeZone;

    #[test]
    fn links_are_bound_to_source_customer_and_time() {
        let source = SourceConfig {
            api_key: Some("sk".into()),
            ..crate::sources::test_source(Provider::Stripe, &["whsec"])
        };
        let other = SourceConfig {
            name: "stripe-eu".into(),
            ..source.clone()
        };
        let secret = b"0123456789abcdef0123456789abcdef";
        let now = Utc.timestamp_opt(1_700_000_000, 0).unwrap();
        let link = link(
            "https://billing.example.com/d",
            &source,
            secret,
            "cus 1&x",
            now,
        );
        let (base, query) = link.split_once('?').expect("query");
        assert_eq!(base, "https://billing.example.com/d/sources/stripe/portal");
        assert_eq!(
            verify(&source, secret, query, now).as_deref(),
            Some("cus 1&x")
        );
        let later = now + chrono::Duration::days(90);
        assert!(verify(&source, secret, query, later).is_some());
        assert!(verify(&source, secret, query, later + chrono::Duration::seconds(1)).is_none());
        assert!(verify(&other, secret, query, now).is_none());
        assert!(verify(&source, b"another secret of 32 characters!", query, now).is_none());
        for (from, to) in [("cus+1", "cus+2"), ("expires=1", "expires=2")] {
            let altered = query.replace(from, to);
            assert_ne!(altered, query);
            assert!(
                verify(&source, secret, &altered, now).is_none(),
                "{altered}"
            );
        }
        assert!(verify(&source, secret, "customer=cus", now).is_none());
    }
}
