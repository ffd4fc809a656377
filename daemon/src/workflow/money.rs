//! The `money(currency)` template filter: minor units to a readable amount.
//!
//! Amounts in events are integers in the currency's minor unit, as Stripe,
//! Adyen and most billing systems send them: `4900` with `USD` is `$49.00`,
//! `4900` with `JPY` is `¥4900`.

use minijinja::{Error, ErrorKind, Value};

/// ISO 4217 currencies whose minor unit is not 1/100.
pub(crate) fn exponent(code: &str) -> u32 {
    match code {
        "BIF" | "CLP" | "DJF" | "GNF" | "ISK" | "JPY" | "KMF" | "KRW" | "PYG" | "RWF" | "UGX"
        | "UYI" | "VND" | "VUV" | "XAF" | "XOF" | "XPF" => 0,
        "BHD" | "IQD" | "JOD" | "KWD" | "LYD" | "OMR" | "TND" => 3,
        _ => 2,
    }
}

fn symbol(code: &str) -> Option<&'static str> {
    Some(match code {
        "USD" => "$",
        "EUR" => "€",
        "GBP" => "£",
        "JPY" => "¥",
        "INR" => "₹",
        "CAD" => "CA$",
        "AUD" => "A$",
        "NZD" => "NZ$",
        "BRL" => "R$",
        _ => return None,
    })
}

pub fn money(amount: Value, currency: Option<String>) -> Result<String, Error> {
    let minor: i64 = match amount.as_i64() {
        Some(n) => n,
        None => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!(
                    "money: amount must be a whole number of minor units (e.g. 4900 for 49.00), got {amount}"
                ),
            ));
        }
    };
    let code = currency
        .unwrap_or_else(|| "USD".to_string())
        .to_ascii_uppercase();
    if code.len() != 3 || !code.chars().all(|c| c.is_ascii_alphabetic()) {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            format!("money: currency must be a 3-letter ISO 4217 code, got '{code}'"),
        ));
    }
    Ok(format_minor(minor, &code))
}

/// `minor` units of the currency `code` (upper case), e.g. `€49.00`. Takes
/// an event's amount or a sum of them (`i128`, so sums need no rounding).
pub fn format_minor(minor: impl Into<i128>, code: &str) -> String {
    let minor: i128 = minor.into();
    let exp = exponent(code);
    let sign = if minor < 0 { "-" } else { "" };
    let abs = minor.unsigned_abs();
    let number = if exp == 0 {
        abs.to_string()
    } else {
        let scale = 10u128.pow(exp);
        format!(
            "{}.{:0width$}",
            abs / scale,
            abs % scale,
            width = exp as usize
        )
    };
    match symbol(code) {
        Some(symbol) => format!("{sign}{symbol}{number}"),
        None => format!("{sign}{code} {number}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_minor_units_per_currency() {
        let table = [
            (4900, "USD", "$49.00"),
            (4905, "eur", "€49.05"),
            (199, "GBP", "£1.99"),
            (4900, "JPY", "¥4900"),
            (12345, "KWD", "KWD 12.345"),
            (-250, "CHF", "-CHF 2.50"),
            (7, "SEK", "SEK 0.07"),
        ];
        for (amount, currency, want) in table {
            assert_eq!(
                money(Value::from(amount), Some(currency.into())).unwrap(),
                want
            );
        }
        assert!(
            money(Value::from(49.5), Some("USD".into()))
                .unwrap_err()
                .to_string()
                .contains("whole number")
        );
        assert!(
            money(Value::from(1), Some("dollars".into()))
                .unwrap_err()
                .to_string()
                .contains("ISO 4217")
        );
    }
}
