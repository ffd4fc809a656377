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
use crate::sources::SourceConfig;

/// Signs and checks the links. Every daemon of one database must share the
/// secret, so that any of them accepts a link another wrote.
#[derive(Clone)]
pub struct Links {
    public_url: String,
    secret: Vec<u8>,
}

/// How long a portal link in a message works: longer than any dunning
/// sequence runs.
pub const PORTAL_LINK_LIFETIME: Duration = Duration::from_secs(90 * 24 * 3600);

impl Links {
    pub fn new(config: &WebhooksConfig) -> Links {
        Links {
            public_url: config.public_url.clone(),
            secret: config.secret.clone(),
        }
    }

    /// HMAC-SHA256 over the kind of link and its values, one per line: the
    /// label keeps a signature of one kind of link from passing for another.
    fn mac(&self, label: &str, values: &[&str]) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.secret)
            .expect("HMAC takes keys of any length");
        mac.update(label.as_bytes());
        for value in values {
            mac.update(b"\n");
            mac.update(value.as_bytes());
        }
        mac
    }

    /// The link that opts `customer` out of `channel`.
    pub fn unsubscribe_url(&self, customer: &str, channel: &str) -> String {
        let sig = hex::encode(
            self.mac("unsubscribe", &[channel, customer])
                .finalize()
                .into_bytes(),
        );
        let query = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("customer", customer)
            .append_pair("channel", channel)
            .append_pair("sig", &sig)
            .finish();
        format!("{}/unsubscribe?{query}", self.public_url)
    }

    /// Whether `sig` is this daemon's signature for `customer` and `channel`.
    pub(crate) fn verify(&self, customer: &str, channel: &str, sig: &str) -> bool {
        let Ok(sig) = hex::decode(sig) else {
            return false;
        };
        self.mac("unsubscribe", &[channel, customer])
            .verify_slice(&sig)
            .is_ok()
    }

    /// The signed link to `customer`'s portal through `source`, valid for
    /// [`PORTAL_LINK_LIFETIME`] from `now`.
    pub fn portal_url(&self, source: &SourceConfig, customer: &str, now: DateTime<Utc>) -> String {
        let expires = now.timestamp() + PORTAL_LINK_LIFETIME.as_secs() as i64;
        let sig = hex::encode(
            self.mac("portal", &[&source.name, customer, &expires.to_string()])
                .finalize()
                .into_bytes(),
        );
        let query = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("customer", customer)
            .append_pair("expires", &expires.to_string())
            .append_pair("sig", &sig)
            .finish();
        format!("{}{}/portal?{query}", self.public_url, source.path)
    }

    /// The customer a portal link is for, if its signature holds and it has
    /// not expired.
    pub(crate) fn verify_portal(
        &self,
        source: &SourceConfig,
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
        self.mac("portal", &[&source.name, &customer, &expires.to_string()])
            .verify_slice(&sig)
            .ok()?;
        (now.timestamp() <= expires).then_some(customer)
    }
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
        let links = Links {
            public_url: "https://billing.example.com/d".into(),
            secret: b"0123456789abcdef0123456789abcdef".to_vec(),
        };
        let another_secret = Links {
            secret: b"another secret of 32 characters!".to_vec(),
            ..links.clone()
        };
        let now = Utc.timestamp_opt(1_700_000_000, 0).unwrap();
        let link = links.portal_url(&source, "cus 1&x", now);
        let (base, query) = link.split_once('?').expect("query");
        assert_eq!(base, "https://billing.example.com/d/sources/stripe/portal");
        assert_eq!(
            links.verify_portal(&source, query, now).as_deref(),
            Some("cus 1&x")
        );
        let later = now + chrono::Duration::days(90);
        assert!(links.verify_portal(&source, query, later).is_some());
        assert!(
            links
                .verify_portal(&source, query, later + chrono::Duration::seconds(1))
                .is_none()
        );
        assert!(links.verify_portal(&other, query, now).is_none());
        assert!(another_secret.verify_portal(&source, query, now).is_none());
        for (from, to) in [("cus+1", "cus+2"), ("expires=1", "expires=2")] {
            let altered = query.replace(from, to);
            assert_ne!(altered, query);
            assert!(
                links.verify_portal(&source, &altered, now).is_none(),
                "{altered}"
            );
        }
        assert!(links.verify_portal(&source, "customer=cus", now).is_none());
    }
}
