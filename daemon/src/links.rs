//! Signed links to this daemon's webhook listener, which messages carry:
//! the unsubscribe link templates get as `unsubscribe_url` (served by
//! [`crate::http::webhooks`]) and the Stripe customer-portal link events
//! carry as `data.portal_url` (served by [`crate::http::sources`]).
//!
//! A link is signed with `webhooks.secret` (HMAC-SHA256 over a label and the
//! values the link is for), so it cannot be altered to act for another
//! customer or channel; daemons sharing a database share the secret and
//! accept each other's links.

use std::time::Duration;

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::config::WebhooksConfig;
use crate::sources::{SourceConfig, hmac_sha256};

/// Signs and checks unsubscribe links. Every daemon of one database must
/// share the secret, so that any of them accepts a link another wrote.
#[derive(Clone)]
pub struct Links {
    public_url: String,
    secret: Vec<u8>,
}

impl Links {
    pub fn new(config: &WebhooksConfig) -> Links {
        Links {
            public_url: config.public_url.clone(),
            secret: config.secret.clone(),
        }
    }

    fn mac(&self, customer: &str, channel: &str) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.secret)
            .expect("HMAC takes keys of any length");
        mac.update(b"unsubscribe\n");
        mac.update(channel.as_bytes());
        mac.update(b"\n");
        mac.update(customer.as_bytes());
        mac
    }

    /// The link that opts `customer` out of `channel`.
    pub fn unsubscribe_url(&self, customer: &str, channel: &str) -> String {
        let sig = hex::encode(self.mac(customer, channel).finalize().into_bytes());
        let query = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("customer", customer)
            .append_pair("channel", channel)
            .append_pair("sig", &sig)
            .finish();
        format!("{}/unsubscribe?{query}", self.public_url)
    }

    /// Whether `sig` is this daemon's signature for `customer` and `channel`.
    pub fn verify(&self, customer: &str, channel: &str, sig: &str) -> bool {
        let Ok(sig) = hex::decode(sig) else {
            return false;
        };
        self.mac(customer, channel).verify_slice(&sig).is_ok()
    }
}

/// How long a portal link in a message works: longer than any dunning
/// sequence runs.
pub const PORTAL_LINK_LIFETIME: Duration = Duration::from_secs(90 * 24 * 3600);

fn portal_mac(
    secret: &[u8],
    source: &str,
    customer: &str,
    expires: i64,
) -> hmac::Hmac<sha2::Sha256> {
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
pub fn portal_link(
    public_url: &str,
    source: &SourceConfig,
    secret: &[u8],
    customer: &str,
    now: DateTime<Utc>,
) -> String {
    let expires = now.timestamp() + PORTAL_LINK_LIFETIME.as_secs() as i64;
    let sig = hex::encode(
        portal_mac(secret, &source.name, customer, expires)
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
pub fn verify_portal(
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
    portal_mac(secret, &source.name, &customer, expires)
        .verify_slice(&sig)
        .ok()?;
    (now.timestamp() <= expires).then_some(customer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::Provider;
    use chrono::TimeZone;

    #[test]
    fn unsubscribe_links_are_bound_to_customer_and_channel() {
        let links = Links {
            public_url: "https://billing.example.com/dunningd".into(),
            secret: b"0123456789abcdef0123456789abcdef".to_vec(),
        };
        let url = links.unsubscribe_url("cus 1&x", "email");
        assert!(url.starts_with(
            "https://billing.example.com/dunningd/unsubscribe?customer=cus+1%26x&channel=email&sig="
        ));
        let sig = url.rsplit("sig=").next().expect("sig");
        assert!(links.verify("cus 1&x", "email", sig));
        assert!(!links.verify("cus 2", "email", sig));
        assert!(!links.verify("cus 1&x", "sms", sig));
        assert!(!links.verify("cus 1&x", "email", &sig[..sig.len() - 2]));
        assert!(!links.verify("cus 1&x", "email", "zz"));
    }

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
        let link = portal_link(
            "https://billing.example.com/d",
            &source,
            secret,
            "cus 1&x",
            now,
        );
        let (base, query) = link.split_once('?').expect("query");
        assert_eq!(base, "https://billing.example.com/d/sources/stripe/portal");
        assert_eq!(
            verify_portal(&source, secret, query, now).as_deref(),
            Some("cus 1&x")
        );
        let later = now + chrono::Duration::days(90);
        assert!(verify_portal(&source, secret, query, later).is_some());
        assert!(
            verify_portal(&source, secret, query, later + chrono::Duration::seconds(1)).is_none()
        );
        assert!(verify_portal(&other, secret, query, now).is_none());
        assert!(verify_portal(&source, b"another secret of 32 characters!", query, now).is_none());
        for (from, to) in [("cus+1", "cus+2"), ("expires=1", "expires=2")] {
            let altered = query.replace(from, to);
            assert_ne!(altered, query);
            assert!(
                verify_portal(&source, secret, &altered, now).is_none(),
                "{altered}"
            );
        }
        assert!(verify_portal(&source, secret, "customer=cus", now).is_none());
    }
}
