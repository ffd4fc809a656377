//! Typed comparisons in conditions (`trigger.when`, a step's `when`).
//!
//! minijinja orders values of different kinds by their kind (every number
//! sorts below every string), so `data.amount >= 500` would hold for the
//! string "4900" — and for "abc". A condition is therefore parsed and printed
//! back with every comparison (`==`, `!=`, `<`, `<=`, `>`, `>=`) turned into
//! a call of [`compare`], which refuses operands of different kinds. The rest
//! of the expression is printed as it was, fully parenthesised, so `and`,
//! `or` and `if … else` still short-circuit: `data.amount is defined and
//! data.amount >= 500` never compares an undefined amount.
//!
//! What compares: numbers with numbers and strings with strings (every
//! operator); booleans, lists and maps with their own kind (`==`, `!=`);
//! `none` with anything (`==`, `!=`). An undefined value compares with
//! nothing (write `is defined`). `in` and `not in` are left as they are.

use minijinja::machinery::ast::{BinOpKind, CallArg, CompareOpKind, Expr, UnaryOpKind};
use minijinja::value::{Value, ValueKind};
use minijinja::{Error, ErrorKind};

/// The function comparisons become; no template variable has this name.
pub(super) const COMPARE: &str = "__dunningd_compare";

/// `source` with every comparison made typed, or the parse error.
pub(super) fn typed(source: &str) -> Result<String, Error> {
    let expr = minijinja::machinery::parse_expr(source)?;
    let mut out = String::with_capacity(source.len() * 2);
    print(&expr, &mut out)?;
    Ok(out)
}

/// The function behind [`COMPARE`]: `left op right`, or an error naming both
/// values when their kinds do not compare.
pub(super) fn compare(left: Value, op: &str, right: Value) -> Result<bool, Error> {
    use ValueKind as K;
    let ordering = matches!(op, "<" | "<=" | ">" | ">=");
    let comparable = match (left.kind(), right.kind()) {
        (K::Undefined, _) | (_, K::Undefined) => false,
        (K::Number, K::Number) | (K::String, K::String) => true,
        (K::None, _) | (_, K::None) => !ordering,
        (K::Bool, K::Bool) | (K::Seq, K::Seq) | (K::Map, K::Map) => !ordering,
        _ => false,
    };
    if !comparable {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            format!(
                "cannot compare {} with {} ({op})",
                describe(&left),
                describe(&right)
            ),
        ));
    }
    Ok(match op {
        "==" => left == right,
        "!=" => left != right,
        "<" => left < right,
        "<=" => left <= right,
        ">" => left > right,
        ">=" => left >= right,
        other => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("unknown comparison '{other}'"),
            ));
        }
    })
}

/// `string "4900"`, `number 500`, `undefined`: a value as an error shows it.
fn describe(value: &Value) -> String {
    let shown = |text: String| {
        if text.chars().count() > 60 {
            format!("{}…", text.chars().take(60).collect::<String>())
        } else {
            text
        }
    };
    match value.kind() {
        ValueKind::Undefined => "undefined".into(),
        ValueKind::None => "none".into(),
        ValueKind::String => format!(
            "string {}",
            shown(format!("{:?}", value.as_str().unwrap_or("")))
        ),
        ValueKind::Number => format!("number {value}"),
        ValueKind::Bool => format!("boolean {}", value.is_true()),
        ValueKind::Seq => format!("list {}", shown(format!("{value:?}"))),
        ValueKind::Map => format!("map {}", shown(format!("{value:?}"))),
        other => format!("{other} {}", shown(format!("{value:?}"))),
    }
}

fn unsupported(what: &str) -> Error {
    Error::new(
        ErrorKind::SyntaxError,
        format!("{what} is not supported in a condition"),
    )
}

fn compare_op(op: &str) -> Option<&'static str> {
    Some(match op {
        "==" => "==",
        "!=" => "!=",
        "<" => "<",
        "<=" => "<=",
        ">" => ">",
        ">=" => ">=",
        _ => return None,
    })
}

fn binop_text(op: BinOpKind) -> &'static str {
    match op {
        BinOpKind::Eq => "==",
        BinOpKind::Ne => "!=",
        BinOpKind::Lt => "<",
        BinOpKind::Lte => "<=",
        BinOpKind::Gt => ">",
        BinOpKind::Gte => ">=",
        BinOpKind::ScAnd => "and",
        BinOpKind::ScOr => "or",
        BinOpKind::Add => "+",
        BinOpKind::Sub => "-",
        BinOpKind::Mul => "*",
        BinOpKind::Div => "/",
        BinOpKind::FloorDiv => "//",
        BinOpKind::Rem => "%",
        BinOpKind::Pow => "**",
        BinOpKind::Concat => "~",
        BinOpKind::In => "in",
    }
}

fn compare_kind_text(op: CompareOpKind) -> &'static str {
    match op {
        CompareOpKind::Eq => "==",
        CompareOpKind::Ne => "!=",
        CompareOpKind::Lt => "<",
        CompareOpKind::Lte => "<=",
        CompareOpKind::Gt => ">",
        CompareOpKind::Gte => ">=",
        CompareOpKind::In => "in",
        CompareOpKind::NotIn => "not in",
    }
}

/// `left op right`, typed where `op` orders or equates.
fn print_comparison(
    left: &Expr<'_>,
    op: &str,
    right: &Expr<'_>,
    out: &mut String,
) -> Result<(), Error> {
    match compare_op(op) {
        Some(op) => {
            out.push_str(COMPARE);
            out.push('(');
            print(left, out)?;
            out.push_str(", \"");
            out.push_str(op);
            out.push_str("\", ");
            print(right, out)?;
            out.push(')');
        }
        None => {
            out.push('(');
            print(left, out)?;
            out.push(' ');
            out.push_str(op);
            out.push(' ');
            print(right, out)?;
            out.push(')');
        }
    }
    Ok(())
}

fn print_args(args: &[CallArg<'_>], out: &mut String) -> Result<(), Error> {
    out.push('(');
    for (i, arg) in args.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        match arg {
            CallArg::Pos(e) => print(e, out)?,
            CallArg::Kwarg(name, e) => {
                out.push_str(name);
                out.push('=');
                print(e, out)?;
            }
            CallArg::PosSplat(e) => {
                out.push('*');
                print(e, out)?;
            }
            CallArg::KwargSplat(e) => {
                out.push_str("**");
                print(e, out)?;
            }
        }
    }
    out.push(')');
    Ok(())
}

fn print_list(items: &[Expr<'_>], out: &mut String) -> Result<(), Error> {
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        print(item, out)?;
    }
    Ok(())
}

/// Prints an expression back as source. Every compound form is wrapped in
/// its own parentheses, so precedence never depends on the context.
fn print(expr: &Expr<'_>, out: &mut String) -> Result<(), Error> {
    match expr {
        Expr::Var(var) => out.push_str(var.id),
        Expr::Const(c) => constant(&c.value, out)?,
        Expr::Slice(slice) => {
            print(&slice.expr, out)?;
            out.push('[');
            if let Some(start) = &slice.start {
                print(start, out)?;
            }
            out.push(':');
            if let Some(stop) = &slice.stop {
                print(stop, out)?;
            }
            if let Some(step) = &slice.step {
                out.push(':');
                print(step, out)?;
            }
            out.push(']');
        }
        Expr::UnaryOp(unary) => {
            out.push_str(match unary.op {
                UnaryOpKind::Not => "(not ",
                UnaryOpKind::Neg => "(-",
            });
            print(&unary.expr, out)?;
            out.push(')');
        }
        Expr::BinOp(binop) => {
            print_comparison(&binop.left, binop_text(binop.op), &binop.right, out)?
        }
        Expr::Compare(chain) => {
            // `a < b < c` is `a < b and b < c`.
            out.push('(');
            let mut left = &chain.expr;
            for (i, op) in chain.ops.iter().enumerate() {
                if i > 0 {
                    out.push_str(" and ");
                }
                print_comparison(left, compare_kind_text(op.op), &op.expr, out)?;
                left = &op.expr;
            }
            out.push(')');
        }
        Expr::IfExpr(if_expr) => {
            out.push('(');
            print(&if_expr.true_expr, out)?;
            out.push_str(" if ");
            print(&if_expr.test_expr, out)?;
            if let Some(otherwise) = &if_expr.false_expr {
                out.push_str(" else ");
                print(otherwise, out)?;
            }
            out.push(')');
        }
        Expr::Filter(filter) => {
            let Some(value) = &filter.expr else {
                return Err(unsupported("a filter block"));
            };
            out.push('(');
            print(value, out)?;
            out.push_str(" | ");
            out.push_str(filter.name);
            if !filter.args.is_empty() {
                print_args(&filter.args, out)?;
            }
            out.push(')');
        }
        Expr::Test(test) => {
            out.push('(');
            print(&test.expr, out)?;
            out.push_str(" is ");
            out.push_str(test.name);
            if !test.args.is_empty() {
                print_args(&test.args, out)?;
            }
            out.push(')');
        }
        Expr::GetAttr(get) => {
            print(&get.expr, out)?;
            out.push('.');
            out.push_str(get.name);
        }
        Expr::GetItem(get) => {
            print(&get.expr, out)?;
            out.push('[');
            print(&get.subscript_expr, out)?;
            out.push(']');
        }
        Expr::Call(call) => {
            print(&call.expr, out)?;
            print_args(&call.args, out)?;
        }
        Expr::List(list) => {
            out.push('[');
            print_list(&list.items, out)?;
            out.push(']');
        }
        Expr::Tuple(tuple) => {
            out.push('(');
            print_list(&tuple.items, out)?;
            out.push_str(",)");
        }
        Expr::Map(map) => {
            out.push('{');
            for (i, (key, value)) in map.keys.iter().zip(&map.values).enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                print(key, out)?;
                out.push_str(": ");
                print(value, out)?;
            }
            out.push('}');
        }
    }
    Ok(())
}

/// A constant as a literal that parses back to the same value.
fn constant(value: &Value, out: &mut String) -> Result<(), Error> {
    match value.kind() {
        ValueKind::None => out.push_str("none"),
        ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
        ValueKind::Number => {
            let text = match i64::try_from(value.clone()) {
                Ok(int) => int.to_string(),
                Err(_) => match f64::try_from(value.clone()) {
                    Ok(float) => format!("{float:?}"),
                    Err(_) => value.to_string(),
                },
            };
            if text.starts_with('-') {
                out.push('(');
                out.push_str(&text);
                out.push(')');
            } else {
                out.push_str(&text);
            }
        }
        ValueKind::String => {
            let text = value.as_str().unwrap_or("");
            out.push_str(&serde_json::to_string(text).map_err(|_| unsupported("this string"))?);
        }
        ValueKind::Seq => {
            out.push('[');
            let items = value.try_iter()?;
            for (i, item) in items.enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                constant(&item, out)?;
            }
            out.push(']');
        }
        ValueKind::Map => {
            out.push('{');
            let keys = value.try_iter()?;
            for (i, key) in keys.enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                constant(&key, out)?;
                out.push_str(": ");
                constant(&value.get_item(&key)?, out)?;
            }
            out.push('}');
        }
        other => return Err(unsupported(&format!("a constant of kind {other}"))),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use minijinja::Environment;

    use super::*;

    fn environment() -> Environment<'static> {
        let mut env = Environment::new();
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        env.add_function(COMPARE, compare);
        env
    }

    /// (condition, data, expected: Ok(result) or Err(part of the message))
    #[test]
    fn comparisons_are_typed_and_the_rest_means_what_it_meant() {
        let table: &[(&str, serde_json::Value, Result<bool, &str>)] = &[
            (
                "data.amount >= 500",
                serde_json::json!({"amount": 4900}),
                Ok(true),
            ),
            (
                "data.amount >= 500",
                serde_json::json!({"amount": 400}),
                Ok(false),
            ),
            (
                "data.amount >= 500",
                serde_json::json!({"amount": 499.5}),
                Ok(false),
            ),
            (
                "data.amount >= 500",
                serde_json::json!({"amount": "4900"}),
                Err("cannot compare string \"4900\" with number 500 (>=)"),
            ),
            (
                "data.amount >= 500",
                serde_json::json!({"amount": "abc"}),
                Err("cannot compare string \"abc\" with number 500 (>=)"),
            ),
            (
                "data.amount < 500",
                serde_json::json!({"amount": true}),
                Err("cannot compare boolean true with number 500 (<)"),
            ),
            (
                "data.amount >= 500",
                serde_json::json!({"amount": null}),
                Err("cannot compare none with number 500 (>=)"),
            ),
            (
                "data.amount >= 500",
                serde_json::json!({}),
                Err("cannot compare undefined with number 500 (>=)"),
            ),
            (
                "data.amount == 500",
                serde_json::json!({"amount": "500"}),
                Err("cannot compare string \"500\" with number 500 (==)"),
            ),
            (
                "data.amount != 500",
                serde_json::json!({"amount": "500"}),
                Err("cannot compare string \"500\" with number 500 (!=)"),
            ),
            (
                "data.plan == none",
                serde_json::json!({"plan": null}),
                Ok(true),
            ),
            (
                "data.plan != none",
                serde_json::json!({"plan": "pro"}),
                Ok(true),
            ),
            (
                "data.plan == 'pro'",
                serde_json::json!({"plan": "pro"}),
                Ok(true),
            ),
            (
                "data.plan > 'a'",
                serde_json::json!({"plan": "pro"}),
                Ok(true),
            ),
            (
                "data.flag == true",
                serde_json::json!({"flag": true}),
                Ok(true),
            ),
            (
                "data.tags == ['a']",
                serde_json::json!({"tags": ["a"]}),
                Ok(true),
            ),
            (
                "'a' in data.tags",
                serde_json::json!({"tags": ["a"]}),
                Ok(true),
            ),
            (
                "'b' not in data.tags",
                serde_json::json!({"tags": ["a"]}),
                Ok(true),
            ),
            // Short-circuits: the guarded comparison is never made.
            (
                "data.amount is defined and data.amount >= 500",
                serde_json::json!({}),
                Ok(false),
            ),
            (
                "data.amount is not defined or data.amount >= 500",
                serde_json::json!({}),
                Ok(true),
            ),
            (
                "data.amount >= 500 if data.amount is number else false",
                serde_json::json!({"amount": "x"}),
                Ok(false),
            ),
            // Chains, arithmetic, filters, precedence.
            (
                "1 < data.amount < 10",
                serde_json::json!({"amount": 5}),
                Ok(true),
            ),
            (
                "1 < data.amount < 10",
                serde_json::json!({"amount": 50}),
                Ok(false),
            ),
            (
                "data.amount * 2 - 1 >= -3",
                serde_json::json!({"amount": -1}),
                Ok(true),
            ),
            (
                "data.amount | int >= 500",
                serde_json::json!({"amount": "4900"}),
                Ok(true),
            ),
            (
                "data.name | lower == \"ada \\\"x\\\"\"",
                serde_json::json!({"name": "ADA \"X\""}),
                Ok(true),
            ),
            (
                "not data.amount >= 500",
                serde_json::json!({"amount": 1}),
                Ok(true),
            ),
            (
                "data['amount'] >= 5.5",
                serde_json::json!({"amount": 6}),
                Ok(true),
            ),
            (
                "(data.amount >= 500) == true",
                serde_json::json!({"amount": 600}),
                Ok(true),
            ),
            (
                "data.items | length > 1",
                serde_json::json!({"items": [1, 2]}),
                Ok(true),
            ),
            ("data.amount", serde_json::json!({"amount": 1}), Ok(true)),
        ];
        let env = environment();
        for (condition, data, expected) in table {
            let typed = typed(condition).unwrap_or_else(|e| panic!("{condition}: {e}"));
            let got = env
                .compile_expression(&typed)
                .and_then(|expr| {
                    expr.eval(minijinja::context! { data => minijinja::Value::from(minijinja::value::Serde(data)) })
                })
                .map(|v| v.is_true())
                .map_err(|e| e.detail().unwrap_or("").to_string());
            match (expected, &got) {
                (Ok(want), Ok(got)) => assert_eq!(got, want, "{condition} ({typed}) with {data}"),
                (Err(want), Err(got)) => {
                    assert_eq!(got, want, "{condition} ({typed}) with {data}")
                }
                _ => {
                    panic!("{condition} ({typed}) with {data}: expected {expected:?}, got {got:?}")
                }
            }
        }
    }

    #[test]
    fn a_condition_that_does_not_parse_is_an_error() {
        assert!(typed("data.amount >=").is_err());
        assert!(typed("data.amount >= 500 500").is_err());
    }
}
