//! Signed links to this daemon's webhook listener, which messages carry:
//! the unsubscribe link templates get as `unsubscribe_url` (served by
//! [`crate::http::webhooks`]).
//!
//! A link is signed with `webhooks.secret` (HMAC-SHA256 over a label and the
//! values the link is for), so it cannot be altered to act for another
//! customer or channel; daemons sharing a database share the secret and
//! accept each other's links.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::config::WebhooksConfig;

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
