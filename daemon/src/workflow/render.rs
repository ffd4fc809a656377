//! The template environment and the bounds every render runs within.
//!
//! Templates and conditions come from workflow files and see values from
//! events, neither of which the daemon controls. So:
//!
//! - Fields named `html` are HTML: every interpolated value is escaped
//!   (minijinja's auto-escape); `|safe` is the explicit way out. Every other
//!   field is text (subjects, plain text, SMS, in-app, webhook JSON values)
//!   and is not escaped.
//! - `|url` lets only absolute `http`/`https` URLs through (a `javascript:`
//!   URL stays one after escaping); anything else fails the render.
//! - A render has a budget of [`RENDER_FUEL`] instructions (minijinja's fuel,
//!   which also charges for the data a template builds) and the message an
//!   output limit of [`OUTPUT_LIMIT`] bytes over all its fields; a condition
//!   has [`CONDITION_FUEL`]. Past either, the render fails with an error that
//!   names the limit; recursion has minijinja's built-in limit.

use std::io;

use minijinja::{AutoEscape, Environment, Error, ErrorKind, UndefinedBehavior};

use super::{condition, money};

/// Instructions one render of a template field may run (minijinja's fuel:
/// one per instruction, plus one per 64 bytes of data it builds). The
/// shipped templates need a few hundred.
pub const RENDER_FUEL: u64 = 1_000_000;
/// Instructions one evaluation of a condition may run.
pub const CONDITION_FUEL: u64 = 10_000;
/// Bytes one rendered message (all its fields together) may have.
pub const OUTPUT_LIMIT: usize = 1024 * 1024;

/// Whether a template field is HTML (auto-escaped). Templates are added as
/// `<template>.<field>`.
fn is_html(name: &str) -> bool {
    name.rsplit('.').next() == Some("html")
}

/// The environment every workflow's templates are compiled in.
pub(super) fn template_environment() -> Environment<'static> {
    let mut env = Environment::new();
    // A typo like {{ custmer.name }} is an error, not an empty string.
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_auto_escape_callback(|name| {
        if is_html(name) {
            AutoEscape::Html
        } else {
            AutoEscape::None
        }
    });
    env.set_fuel(Some(RENDER_FUEL));
    env.add_filter("money", money::money);
    env.add_filter("url", url);
    env.add_function(condition::COMPARE, condition::compare);
    env
}

/// The environment conditions run in: the same, with a condition's budget.
pub(super) fn condition_environment(templates: &Environment<'static>) -> Environment<'static> {
    let mut env = templates.clone();
    env.set_fuel(Some(CONDITION_FUEL));
    env
}

/// `|url`: an absolute http or https URL, normalised (quotes, spaces and
/// the like percent-encoded); an empty string stays empty (no link);
/// anything else fails the render.
fn url(value: &str) -> Result<String, Error> {
    let trimmed = value.trim();
    if trimmed.is_empty() {
        return Ok(String::new());
    }
    match url::Url::parse(trimmed) {
        Ok(parsed) if matches!(parsed.scheme(), "http" | "https") && parsed.has_host() => {
            Ok(parsed.into())
        }
        _ => Err(Error::new(
            ErrorKind::InvalidOperation,
            format!("url '{value}' is not an http or https url"),
        )),
    }
}

/// Why a bounded render failed.
pub(super) enum Bounded {
    /// The render ran out of fuel.
    Budget,
    /// The output passed the message's limit.
    Output,
    Other(Error),
}

/// Collects a render's output, refusing to grow past what is left of the
/// message's limit.
struct Capped<'a> {
    out: &'a mut Vec<u8>,
    left: usize,
    over: bool,
}

impl io::Write for Capped<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.len() > self.left {
            self.over = true;
            return Err(io::Error::other("output limit reached"));
        }
        self.left -= buf.len();
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Renders `template` with at most `left` bytes of output (which it lowers by
/// what was written).
pub(super) fn render_capped(
    template: &minijinja::Template<'_, '_>,
    context: &minijinja::Value,
    left: &mut usize,
) -> Result<String, Bounded> {
    let mut out = Vec::new();
    let mut writer = Capped {
        out: &mut out,
        left: *left,
        over: false,
    };
    let result = template
        .render_captured_to(context.clone(), &mut writer)
        .map(drop);
    let over = writer.over;
    *left = writer.left;
    match result {
        Ok(_) => Ok(String::from_utf8(out)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())),
        Err(_) if over => Err(Bounded::Output),
        Err(e) if is_out_of_fuel(&e) => Err(Bounded::Budget),
        Err(e) => Err(Bounded::Other(e)),
    }
}

/// Whether minijinja stopped for lack of fuel (also when the error is
/// wrapped, e.g. in an include).
pub(super) fn is_out_of_fuel(error: &Error) -> bool {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = current {
        if let Some(e) = e.downcast_ref::<Error>()
            && e.kind() == ErrorKind::OutOfFuel
        {
            return true;
        }
        current = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_lets_only_http_and_https_through() {
        // (input, expected output or error)
        let table: &[(&str, Result<&str, &str>)] = &[
            (
                "https://pay.example.com/u?a=1&b=2",
                Ok("https://pay.example.com/u?a=1&b=2"),
            ),
            ("HTTP://Pay.Example.com", Ok("http://pay.example.com/")),
            (
                " https://x.example/a b\"c ",
                Ok("https://x.example/a%20b%22c"),
            ),
            ("", Ok("")),
            (
                "javascript:alert(1)",
                Err("url 'javascript:alert(1)' is not an http or https url"),
            ),
            (
                " JavaScript:alert(1)",
                Err("url ' JavaScript:alert(1)' is not an http or https url"),
            ),
            (
                "data:text/html,<script>",
                Err("url 'data:text/html,<script>' is not an http or https url"),
            ),
            (
                "//evil.example/x",
                Err("url '//evil.example/x' is not an http or https url"),
            ),
            (
                "/relative",
                Err("url '/relative' is not an http or https url"),
            ),
            (
                "mailto:a@example.com",
                Err("url 'mailto:a@example.com' is not an http or https url"),
            ),
        ];
        for (input, expected) in table {
            let got = url(input);
            match (expected, &got) {
                (Ok(want), Ok(got)) => assert_eq!(got, want, "{input}"),
                (Err(want), Err(got)) => assert_eq!(got.detail(), Some(*want), "{input}"),
                _ => panic!("{input}: expected {expected:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn runaway_templates_stop_at_their_budget_or_the_output_limit() {
        let mut env = template_environment();
        // (template, expected)
        let table = [
            (
                "{% for i in range(100000) %}{% for j in range(100000) %}.{% endfor %}{% endfor %}",
                "budget",
            ),
            (
                "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
                "other",
            ),
            (
                "{% for i in range(3000) %}{{ 'x' * 1000 }}{% endfor %}",
                "output",
            ),
            ("{{ 'x' * 1000000000 }}", "budget"),
            ("{{ range(100000) | map('string') | join(',') }}", "ok"),
        ];
        for (source, expected) in table {
            env.add_template_owned("t.text".to_string(), source.to_string())
                .expect("compiles");
            let template = env.get_template("t.text").expect("added");
            let started = std::time::Instant::now();
            let mut left = OUTPUT_LIMIT;
            let got = match render_capped(&template, &minijinja::Value::UNDEFINED, &mut left) {
                Ok(_) => "ok",
                Err(Bounded::Budget) => "budget",
                Err(Bounded::Output) => "output",
                Err(Bounded::Other(_)) => "other",
            };
            eprintln!("{source}: {got} after {:?}", started.elapsed());
            assert_eq!(got, expected, "{source}");
        }
    }

    #[test]
    fn only_html_fields_are_escaped() {
        let mut env = template_environment();
        let source = "{{ v }}|{{ v | safe }}";
        for name in [
            "t.html",
            "t.text",
            "t.subject",
            "t.body",
            "t.url",
            "x.html.text",
        ] {
            env.add_template_owned(name.to_string(), source.to_string())
                .expect("compiles");
        }
        let v = minijinja::context! { v => "<b>\"x\"</b>" };
        // (field, expected)
        let table = [
            (
                "t.html",
                "&lt;b&gt;&quot;x&quot;&lt;&#x2f;b&gt;|<b>\"x\"</b>",
            ),
            ("t.text", "<b>\"x\"</b>|<b>\"x\"</b>"),
            ("t.subject", "<b>\"x\"</b>|<b>\"x\"</b>"),
            ("t.body", "<b>\"x\"</b>|<b>\"x\"</b>"),
            ("t.url", "<b>\"x\"</b>|<b>\"x\"</b>"),
            ("x.html.text", "<b>\"x\"</b>|<b>\"x\"</b>"),
        ];
        for (name, expected) in table {
            let got = env
                .get_template(name)
                .and_then(|t| t.render(&v))
                .expect("renders");
            assert_eq!(got, expected, "{name}");
        }
    }
}
