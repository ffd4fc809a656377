//! Fetching what a thin webhook leaves out, through the provider's API.
//!
//! A draft lists what it still needs ([`super::Fetch`]); each is one GET
//! under the source's `api_base` with its `api_key`. A fetch that fails for a
//! reason that may pass (no connection, a timeout, 429, 5xx) is tried again,
//! [`ATTEMPTS`] times in all; if it still fails the whole webhook is answered
//! 5xx and nothing is stored, so the provider delivers it again later. An
//! object the API does not have (404) is skipped: what the payload had is
//! still worth a case. A refused key (401, 403) is the operator's to fix and
//! is answered 5xx too, so no event is lost meanwhile.
//!
//! Answers are bounded ([`MAX_ANSWER`]) and parsed as JSON; no error shows
//! the API key or credentials in `api_base`.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use super::{Draft, Fetch, Provider, SourceConfig};
use crate::redact;

/// Tries per fetch, the first included.
pub const ATTEMPTS: u32 = 3;
/// The most fetches one webhook may cause (a dispute needs its charge, then
/// the charge's customer).
pub const MAX_FETCHES: usize = 6;
/// The largest API answer read.
pub const MAX_ANSWER: usize = 1024 * 1024;

/// Why a webhook cannot be completed now: answered 5xx.
#[derive(Debug, thiserror::Error)]
pub enum EnrichError {
    #[error("{what} from {api}: {problem}")]
    Unavailable {
        what: &'static str,
        api: String,
        problem: String,
    },
    #[error("{what} from {api}: the API refused the source's api_key (HTTP {status})")]
    Refused {
        what: &'static str,
        api: String,
        status: u16,
    },
}

/// One HTTP client for every source: connections are pooled per host.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .user_agent(concat!("dunningd/", env!("CARGO_PKG_VERSION")))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap_or_default()
}

impl Provider {
    /// The request with the provider's authentication and headers.
    fn authorize(self, request: reqwest::RequestBuilder, key: &str) -> reqwest::RequestBuilder {
        match self {
            Provider::Stripe => request.bearer_auth(key),
            Provider::Paddle => request.bearer_auth(key),
            Provider::Chargebee => request.basic_auth(key, None::<&str>),
            Provider::Recurly => request
                .basic_auth(key, None::<&str>)
                .header("Accept", "application/vnd.recurly.v2021-02-25+json"),
            Provider::Lago => request.bearer_auth(key),
        }
    }
}

/// Runs the draft's fetches and merges what they bring. Without an
/// `api_key` nothing is fetched (the draft keeps what the payload had).
pub async fn enrich(
    client: &reqwest::Client,
    source: &SourceConfig,
    draft: &mut Draft,
) -> Result<(), EnrichError> {
    let (Some(key), Some(base)) = (source.api_key.as_deref(), source.api_base.as_deref()) else {
        draft.fetches.clear();
        return Ok(());
    };
    let mut done = 0;
    while !draft.fetches.is_empty() && done < MAX_FETCHES {
        let fetch = draft.fetches.remove(0);
        done += 1;
        if !safe_path(&fetch.path) {
            // Ids come from the payload: one that would leave the object's
            // path (`..`, `?`, `#`, spaces) is not asked for.
            tracing::warn!(source = %source.name, what = fetch.what, "an id in the webhook is not a plain id; not fetched");
            continue;
        }
        if let Some(object) = get(client, source, key, base, &fetch).await? {
            source.provider.apply(draft, &fetch, &object);
        }
    }
    draft.fetches.clear();
    Ok(())
}

/// Whether a fetch's path (before its query) is made of plain id
/// characters and stays where it points.
fn safe_path(path: &str) -> bool {
    let bare = path.split_once('?').map_or(path, |(bare, _)| bare);
    bare.starts_with('/')
        && !bare.contains("..")
        && !bare.contains("//")
        && bare
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/_-.:@%".contains(c))
}

/// One fetch, tried [`ATTEMPTS`] times. `None`: the API has no such object.
async fn get(
    client: &reqwest::Client,
    source: &SourceConfig,
    key: &str,
    base: &str,
    fetch: &Fetch,
) -> Result<Option<Value>, EnrichError> {
    let api = redact::urls(base).into_owned();
    let hide = |text: String| text.replace(key, "***");
    let mut problem = String::new();
    for attempt in 1..=ATTEMPTS {
        if attempt > 1 {
            tokio::time::sleep(Duration::from_millis(200 * 4u64.pow(attempt - 2))).await;
        }
        let request = source
            .provider
            .authorize(client.get(format!("{base}{}", fetch.path)), key)
            .timeout(source.api_timeout);
        let response = match request.send().await {
            Ok(response) => response,
            Err(error) => {
                problem = hide(redact::describe(&error.without_url()));
                continue;
            }
        };
        let status = response.status();
        match status {
            StatusCode::NOT_FOUND | StatusCode::GONE => {
                tracing::warn!(source = %source.name, what = fetch.what, "the provider's API has no such object; continuing without it");
                return Ok(None);
            }
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                return Err(EnrichError::Refused {
                    what: fetch.what,
                    api,
                    status: status.as_u16(),
                });
            }
            s if s == StatusCode::TOO_MANY_REQUESTS || s.is_server_error() => {
                problem = format!("HTTP {}", s.as_u16());
                continue;
            }
            s if !s.is_success() => {
                // The request itself is wrong (a 400): trying again cannot
                // help, and the webhook still carries what it had.
                tracing::warn!(source = %source.name, what = fetch.what, status = s.as_u16(), "the provider's API refused the request; continuing without it");
                return Ok(None);
            }
            _ => {}
        }
        match read_bounded(response).await {
            Ok(object) => return Ok(Some(object)),
            Err(error) => problem = hide(error),
        }
    }
    Err(EnrichError::Unavailable {
        what: fetch.what,
        api,
        problem: format!("{problem} (after {ATTEMPTS} tries)"),
    })
}

/// The answer's body as JSON, read up to [`MAX_ANSWER`] bytes.
async fn read_bounded(mut response: reqwest::Response) -> Result<Value, String> {
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| redact::describe(&e.without_url()))?
    {
        if body.len() + chunk.len() > MAX_ANSWER {
            return Err(format!("answer larger than {MAX_ANSWER} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    serde_json::from_slice(&body).map_err(|e| format!("answer is not JSON: {e}"))
}

#[cfg(test)]
mod tests {
    use super::safe_path;

    #[test]
    fn fetch_paths_must_stay_plain() {
        for ok in [
            "/v1/customers/cus_1",
            "/accounts/code-ver%20ena",
            "/api/v1/invoices/1a901a90-1a90-1a90-1a90-1a901a901a90",
            "/v1/invoice_payments?invoice=in_1&expand[]=data.payment",
        ] {
            assert!(safe_path(ok), "{ok}");
        }
        for bad in [
            "/v1/customers/../charges",
            "/v1/customers/cus 1",
            "/v1/customers/cus#1",
            "//evil.example/x",
            "v1/customers",
            "/v1/customers/cus\n1",
        ] {
            assert!(!safe_path(bad), "{bad}");
        }
    }
}
