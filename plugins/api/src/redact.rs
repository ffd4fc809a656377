//! Hiding secrets in text that is about to be printed: errors, logs, the
//! case timeline, status answers.
//!
//! Two kinds of secret are hidden, each replaced by [`MASK`]:
//!
//! - **Credentials inside URLs**, wherever a URL appears in the text
//!   ([`urls`]): the password of `scheme://user:password@host` (the user
//!   name stays: it says which account was used) and the value of every
//!   query parameter whose name says it is secret ([`is_secret_name`]:
//!   `password`, `token`, `sig`, `secret`, `key`, …), so
//!   `postgres://dunning:s3cret@db/x?sslmode=require&password=s3cret` prints
//!   as `postgres://dunning:***@db/x?sslmode=require&password=***`.
//! - **Known secret values** ([`Redactor`]): a channel's secrets (its
//!   `secrets:` and any setting whose name says it is secret), found anywhere
//!   in the text, e.g. a provider's answer that quotes the token it refused.
//!
//! Redaction happens at the edge where text is printed or stored, not where
//! the secret is used: the plugins' messages, the plugin host's outcomes,
//! configuration errors and the daemon's log writer all pass through here.
//! A URL's extent is taken as RFC 3986 has it: a password containing an
//! unencoded `/`, `?` or `#` ends the URL's authority early and cannot be
//! found (such a URL does not parse anywhere else either).

use std::borrow::Cow;

/// What a hidden secret is printed as.
pub const MASK: &str = "***";

/// Whether a query parameter or setting named `name` holds a secret.
///
/// Names are compared case-insensitively: the usual names of passwords,
/// tokens, signatures and keys (`password`, `sslpassword`, `auth_token`,
/// `access_token`, `api_key`, `apikey`, `key`, `sig`, `X-Amz-Signature`,
/// `X-Amz-Credential`, `client_secret` …). Names that merely mention a key
/// file (`sslkey`) are not secret: they hold a path.
pub fn is_secret_name(name: &str) -> bool {
    let name = name.trim().to_ascii_lowercase();
    const EXACT: &[&str] = &["pass", "pwd", "passwd", "key", "sig", "auth", "jwt"];
    const WITHIN: &[&str] = &[
        "password",
        "secret",
        "token",
        "signature",
        "credential",
        "apikey",
    ];
    EXACT.contains(&name.as_str())
        || WITHIN.iter().any(|w| name.contains(w))
        || name.ends_with("_key")
        || name.ends_with("-key")
        || name.ends_with("_sig")
}

/// Characters that end a URL inside free text: whitespace, quotes, angle
/// brackets and a closing parenthesis (`… for url (https://…)`).
fn ends_url(c: char) -> bool {
    c.is_whitespace() || matches!(c, '"' | '\'' | '`' | '<' | '>' | ')')
}

/// The byte ranges of `text` that hold URL credentials.
fn url_secrets(text: &str) -> Vec<(usize, usize)> {
    let mut ranges = Vec::new();
    let mut search = 0;
    while let Some(found) = text[search..].find("://") {
        let separator = search + found;
        search = separator + 3;
        // A scheme is a letter followed by letters, digits, '+', '-' or '.'.
        let scheme_start = text[..separator]
            .char_indices()
            .rev()
            .take_while(|(_, c)| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
            .last()
            .map(|(i, _)| i);
        let Some(scheme_start) = scheme_start else {
            continue;
        };
        if !text[scheme_start..].starts_with(|c: char| c.is_ascii_alphabetic()) {
            continue;
        }
        let start = separator + 3;
        let end = text[start..]
            .find(ends_url)
            .map_or(text.len(), |i| start + i);
        // Prose punctuation after a URL (`POST https://…/x?token=t: 503`)
        // is not part of it.
        let end = start
            + text[start..end]
                .trim_end_matches(['.', ',', ':', ';', '!', '?'])
                .len();
        let url = &text[start..end];
        let authority_end = url.find(['/', '?', '#']).unwrap_or(url.len());
        let authority = &url[..authority_end];
        if let Some(at) = authority.rfind('@')
            && let Some(colon) = authority[..at].find(':')
            && colon + 1 < at
        {
            ranges.push((start + colon + 1, start + at));
        }
        if let Some(question) = url[authority_end..].find('?') {
            let query_start = authority_end + question + 1;
            let query_end = url[query_start..]
                .find('#')
                .map_or(url.len(), |i| query_start + i);
            let mut offset = query_start;
            for pair in url[query_start..query_end].split(['&', ';']) {
                if let Some(equals) = pair.find('=')
                    && equals + 1 < pair.len()
                    && is_secret_name(&pair[..equals])
                {
                    ranges.push((start + offset + equals + 1, start + offset + pair.len()));
                }
                offset += pair.len() + 1;
            }
        }
        // A URL may carry another in its query (`?next=https://…`): the
        // search goes on inside this one.
    }
    ranges
}

/// Replaces the given byte ranges of `text` with [`MASK`] (overlapping
/// ranges are merged).
fn mask(text: &str, mut ranges: Vec<(usize, usize)>) -> Cow<'_, str> {
    if ranges.is_empty() {
        return Cow::Borrowed(text);
    }
    ranges.sort_unstable();
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for (start, end) in ranges {
        if end <= last {
            continue;
        }
        out.push_str(&text[last..start.max(last)]);
        if start >= last {
            out.push_str(MASK);
        }
        last = end;
    }
    out.push_str(&text[last..]);
    Cow::Owned(out)
}

/// `text` with the credentials of every URL in it hidden (see the module
/// header): `smtp://mailer:hunter2@relay:587` → `smtp://mailer:***@relay:587`,
/// `https://h/x?token=abc&page=2` → `https://h/x?token=***&page=2`.
pub fn urls(text: &str) -> Cow<'_, str> {
    if !text.contains("://") {
        return Cow::Borrowed(text);
    }
    let ranges = url_secrets(text);
    mask(text, ranges)
}

/// An error and its causes, each said once (libraries often repeat their
/// cause's text), joined with `: `, with URL credentials hidden.
pub fn describe(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let part = cause.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = cause.source();
    }
    urls(&text).into_owned()
}

/// Hides known secret values and URL credentials in text.
///
/// Values shorter than [`Redactor::MIN_LEN`] characters are not searched
/// for: no real secret is that short, and hiding every `abc` would garble
/// the message around it.
#[derive(Clone, Default)]
pub struct Redactor {
    /// Longest first, so that a secret containing another is hidden whole.
    values: Vec<String>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Redactor({} values)", self.values.len())
    }
}

impl Redactor {
    /// The shortest value searched for.
    pub const MIN_LEN: usize = 6;

    /// A redactor for the given secret values.
    pub fn new<S: Into<String>>(values: impl IntoIterator<Item = S>) -> Redactor {
        let mut redactor = Redactor::default();
        for value in values {
            redactor.add(value.into());
        }
        redactor
    }

    /// A redactor for a channel's settings: the values of `secret_keys`
    /// (the channel's `secrets:`), of every setting whose name is secret
    /// ([`is_secret_name`], at any depth), and the credentials inside every
    /// URL-valued setting (so that they are hidden even where a message
    /// quotes them outside a URL).
    pub fn for_settings(settings: &serde_json::Value, secret_keys: &[String]) -> Redactor {
        let mut redactor = Redactor::default();
        if let serde_json::Value::Object(map) = settings {
            for key in secret_keys {
                if let Some(serde_json::Value::String(value)) = map.get(key) {
                    redactor.add(value.clone());
                }
            }
        }
        redactor.collect(settings, false);
        redactor
    }

    fn collect(&mut self, value: &serde_json::Value, secret: bool) {
        match value {
            serde_json::Value::String(text) => {
                if secret {
                    self.add(text.clone());
                }
                for (start, end) in url_secrets(text) {
                    self.add(text[start..end].to_string());
                }
            }
            serde_json::Value::Array(items) => {
                for item in items {
                    self.collect(item, secret);
                }
            }
            serde_json::Value::Object(map) => {
                for (key, item) in map {
                    self.collect(item, secret || is_secret_name(key));
                }
            }
            serde_json::Value::Number(_) | serde_json::Value::Bool(_) | serde_json::Value::Null => {
            }
        }
    }

    /// Adds one secret value.
    pub fn add(&mut self, value: String) {
        if value.chars().count() < Redactor::MIN_LEN || self.values.contains(&value) {
            return;
        }
        let at = self
            .values
            .iter()
            .position(|v| v.len() < value.len())
            .unwrap_or(self.values.len());
        self.values.insert(at, value);
    }

    /// `text` with every known secret value and every URL credential hidden.
    pub fn redact<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let mut out = Cow::Borrowed(text);
        for value in &self.values {
            if out.contains(value.as_str()) {
                out = Cow::Owned(out.replace(value.as_str(), MASK));
            }
        }
        match out {
            Cow::Borrowed(text) => urls(text),
            Cow::Owned(text) => Cow::Owned(urls(&text).into_owned()),
        }
    }
}

/// A panic's message and `file:line`, for a panic hook that prints it
/// through [`urls`] (the daemon's and every plugin's hook).
pub fn panic_parts<'a>(info: &'a std::panic::PanicHookInfo<'_>) -> (&'a str, String) {
    let payload = info.payload();
    let message = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)");
    let location = info
        .location()
        .map(|l| format!("{}:{}", l.file(), l.line()))
        .unwrap_or_default();
    (message, location)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_credentials_are_hidden_wherever_a_url_is_printed() {
        let table = [
            // (text, printed)
            ("https://user:pass@host/x", "https://user:***@host/x"),
            (
                "smtp://mailer:hunter2@relay.example.com:587?tls=required",
                "smtp://mailer:***@relay.example.com:587?tls=required",
            ),
            (
                "cannot open database 'postgres://dunning:s3cret@db:5432/x': refused",
                "cannot open database 'postgres://dunning:***@db:5432/x': refused",
            ),
            (
                "postgresql://u@db/x?sslmode=require&password=s3cret",
                "postgresql://u@db/x?sslmode=require&password=***",
            ),
            (
                "error sending request for url (https://h.example/hook?token=abc&page=2)",
                "error sending request for url (https://h.example/hook?token=***&page=2)",
            ),
            (
                "https://acct.blob.example/c?sv=2020&sig=Zm9vYmFy%3D&se=1#frag",
                "https://acct.blob.example/c?sv=2020&sig=***&se=1#frag",
            ),
            (
                "https://s3.example/o?X-Amz-Credential=AKIA&X-Amz-Signature=f00",
                "https://s3.example/o?X-Amz-Credential=***&X-Amz-Signature=***",
            ),
            (
                "https://h/x?api_key=k1;auth=k2",
                "https://h/x?api_key=***;auth=***",
            ),
            // A password with '@' in it: the last '@' ends the user info.
            ("http://u:p@ss@h:80/", "http://u:***@h:80/"),
            // Two URLs, and one inside the other's query.
            (
                "a http://a:b@x b https://y/?next=https://c:d@z/%3Ftoken=1",
                "a http://a:***@x b https://y/?next=https://c:***@z/%3Ftoken=1",
            ),
            ("\"wss://u:secret@h\"", "\"wss://u:***@h\""),
            // Punctuation after a URL is prose, and hiding is idempotent.
            (
                "POST https://h/x?token=abc: HTTP 503, see https://u:p@h.",
                "POST https://h/x?token=***: HTTP 503, see https://u:***@h.",
            ),
            (
                "POST https://h/x?token=***: 503",
                "POST https://h/x?token=***: 503",
            ),
            // Nothing secret: unchanged.
            (
                "postgres://dunning@db/x?sslmode=require",
                "postgres://dunning@db/x?sslmode=require",
            ),
            (
                "https://h/x?to=a@b.example&page=2",
                "https://h/x?to=a@b.example&page=2",
            ),
            ("http://[::1]:8080/x", "http://[::1]:8080/x"),
            ("http://u:@h/", "http://u:@h/"),
            ("https://h/x?token=", "https://h/x?token="),
            ("no url here: a://", "no url here: a://"),
            (":// at the start", ":// at the start"),
            ("9p://u:p@h", "9p://u:p@h"),
            ("", ""),
        ];
        for (text, printed) in table {
            assert_eq!(urls(text), printed, "{text}");
        }
    }

    #[test]
    fn secret_names_are_recognised() {
        for secret in [
            "password",
            "sslpassword",
            "PASSWORD",
            "pass",
            "token",
            "auth_token",
            "access_token",
            "secret",
            "client_secret",
            "api_key_secret",
            "api_key",
            "apikey",
            "key",
            "sig",
            "X-Amz-Signature",
            "X-Amz-Credential",
            "stripe_key",
        ] {
            assert!(is_secret_name(secret), "{secret}");
        }
        for plain in [
            "sslmode",
            "sslkey",
            "sslrootcert",
            "url",
            "account_sid",
            "api_key_sid",
            "username",
            "from",
            "page",
            "tls",
            "monkey",
        ] {
            assert!(!is_secret_name(plain), "{plain}");
        }
    }

    #[test]
    fn known_values_are_hidden_anywhere() {
        let settings = serde_json::json!({
            "url": "smtp://mailer:relay-pass@relay:587",
            "username": "mailer",
            "password": "hunter22",
            "nested": { "auth_token": "tok-123456" },
            "odd_name": "from-secrets-file",
            "short": "abc",
            "status_callback": "https://h/cb?x=1",
        });
        let redactor = Redactor::for_settings(&settings, &["odd_name".into(), "short".into()]);
        let table = [
            ("535 bad password hunter22", "535 bad password ***"),
            ("echo tok-123456 and relay-pass", "echo *** and ***"),
            ("from-secrets-file leaked", "*** leaked"),
            // Too short to search for.
            ("abc", "abc"),
            ("user mailer at relay", "user mailer at relay"),
            ("see https://h/cb?x=1", "see https://h/cb?x=1"),
            ("smtp://other:pw@h", "smtp://other:***@h"),
        ];
        for (text, printed) in table {
            assert_eq!(redactor.redact(text), printed, "{text}");
        }
        assert_eq!(format!("{redactor:?}"), "Redactor(4 values)");
    }

    #[test]
    fn a_secret_containing_another_is_hidden_whole() {
        let redactor = Redactor::new(["secret", "secret-and-more"]);
        assert_eq!(redactor.redact("x secret-and-more y secret"), "x *** y ***");
    }
}
