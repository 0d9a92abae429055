//! Kubernetes resource quantities ("250m", "0.5", "128Mi", "1G", "1e3") as exact integers.
//!
//! k8s-openapi keeps a `Quantity` as its string, so the grammar of
//! `k8s.io/apimachinery/pkg/api/resource` is implemented here:
//! `[+-]? digits [. digits] (binarySI | decimalSI | [eE][+-]?digits)?`.
//! Values are computed exactly in integers and rounded up, as Kubernetes does
//! for `MilliValue()` and `Value()`, so "0.1m" CPU is 1 millicore, never 0.

use crate::error::{Error, Result};

/// A parsed quantity: `digits * 10^-fraction_digits * 10^decimal_exp * 2^binary_exp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Parsed {
    digits: u128,
    decimal_exp: i32,
    binary_exp: u32,
}

/// CPU quantity in millicores ("250m" = 250, "0.5" = 500, "2" = 2000), rounded up.
pub fn parse_cpu_millis(input: &str) -> Result<u64> {
    scaled(input, 3)
}

/// Memory (or any byte) quantity in bytes ("128Mi", "1G", "1e9"), rounded up.
pub fn parse_bytes(input: &str) -> Result<u64> {
    scaled(input, 0)
}

/// Formats millicores the way people write them: "2" for whole cores, else "250m".
pub fn format_cpu_millis(millis: u64) -> String {
    if millis % 1000 == 0 {
        format!("{}", millis / 1000)
    } else {
        format!("{millis}m")
    }
}

/// Formats bytes with the largest binary suffix that divides them exactly.
pub fn format_bytes(bytes: u64) -> String {
    const SUFFIXES: [(&str, u32); 5] = [("Pi", 50), ("Ti", 40), ("Gi", 30), ("Mi", 20), ("Ki", 10)];
    if bytes == 0 {
        return "0".into();
    }
    for (suffix, shift) in SUFFIXES {
        if bytes % (1u64 << shift) == 0 {
            return format!("{}{suffix}", bytes >> shift);
        }
    }
    bytes.to_string()
}

/// The value times `10^extra_decimal`, rounded up to an integer.
fn scaled(input: &str, extra_decimal: i32) -> Result<u64> {
    let bad = |reason| Error::Quantity {
        input: input.to_string(),
        reason,
    };
    let parsed = parse(input.trim()).map_err(bad)?;
    let mut numerator = parsed
        .digits
        .checked_mul(pow(2, parsed.binary_exp).ok_or_else(|| bad("too large"))?)
        .ok_or_else(|| bad("too large"))?;
    let exp = parsed.decimal_exp + extra_decimal;
    let value = if exp >= 0 {
        let factor = pow(10, exp as u32).ok_or_else(|| bad("too large"))?;
        numerator = numerator
            .checked_mul(factor)
            .ok_or_else(|| bad("too large"))?;
        numerator
    } else {
        // 10^39 exceeds u128: anything that small rounds up to 1 (or stays 0).
        match pow(10, exp.unsigned_abs()) {
            Some(divisor) => numerator.div_ceil(divisor),
            None => u128::from(numerator > 0),
        }
    };
    u64::try_from(value).map_err(|_| bad("too large"))
}

fn pow(base: u128, exp: u32) -> Option<u128> {
    base.checked_pow(exp)
}

fn parse(s: &str) -> std::result::Result<Parsed, &'static str> {
    if s.is_empty() {
        return Err("empty");
    }
    let s = match s.as_bytes()[0] {
        b'+' => &s[1..],
        b'-' => {
            // "-0" is a valid zero; any other negative is not a request.
            let rest = &s[1..];
            let number_end = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .unwrap_or(rest.len());
            if rest[..number_end].chars().all(|c| c == '0' || c == '.') && number_end > 0 {
                rest
            } else {
                return Err("negative quantities are not allowed");
            }
        }
        _ => s,
    };
    let number_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(number_end);
    let (whole, fraction) = match number.split_once('.') {
        Some((w, f)) => (w, f),
        None => (number, ""),
    };
    if fraction.contains('.') {
        return Err("more than one decimal point");
    }
    if whole.is_empty() && fraction.is_empty() {
        return Err("no digits");
    }
    let mut digits: u128 = 0;
    for b in whole.bytes().chain(fraction.bytes()) {
        digits = digits
            .checked_mul(10)
            .and_then(|d| d.checked_add(u128::from(b - b'0')))
            .ok_or("too many digits")?;
    }
    let fraction_digits = i32::try_from(fraction.len()).map_err(|_| "too many digits")?;
    let (decimal_exp, binary_exp) = suffix_exponents(suffix)?;
    Ok(Parsed {
        digits,
        decimal_exp: decimal_exp - fraction_digits,
        binary_exp,
    })
}

/// The decimal and binary exponents a suffix stands for.
fn suffix_exponents(suffix: &str) -> std::result::Result<(i32, u32), &'static str> {
    Ok(match suffix {
        "" => (0, 0),
        "n" => (-9, 0),
        "u" => (-6, 0),
        "m" => (-3, 0),
        "k" => (3, 0),
        "M" => (6, 0),
        "G" => (9, 0),
        "T" => (12, 0),
        "P" => (15, 0),
        "E" => (18, 0),
        "Ki" => (0, 10),
        "Mi" => (0, 20),
        "Gi" => (0, 30),
        "Ti" => (0, 40),
        "Pi" => (0, 50),
        "Ei" => (0, 60),
        _ => {
            let exp = suffix
                .strip_prefix('e')
                .or_else(|| suffix.strip_prefix('E'))
                .ok_or(
                    "unknown suffix (expected n, u, m, k, M, G, T, P, E, Ki..Ei or an exponent)",
                )?;
            let digits = exp.strip_prefix(['+', '-']).unwrap_or(exp);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err("malformed exponent");
            }
            let value: i32 = exp.parse().map_err(|_| "exponent out of range")?;
            if value.abs() > 1000 {
                return Err("exponent out of range");
            }
            (value, 0)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_quantities_become_millicores() {
        for (input, want) in [
            ("250m", 250),
            ("0.5", 500),
            ("1", 1000),
            ("2", 2000),
            ("1.5", 1500),
            (".5", 500),
            ("5.", 5000),
            ("+1", 1000),
            ("100u", 1),
            ("1n", 1),
            ("0.0001", 1),
            ("0", 0),
            ("-0", 0),
            ("1e3", 1_000_000),
            ("1E-3", 1),
            ("2k", 2_000_000),
            (" 300m ", 300),
        ] {
            assert_eq!(parse_cpu_millis(input).unwrap(), want, "{input}");
        }
    }

    #[test]
    fn memory_quantities_become_bytes() {
        for (input, want) in [
            ("128Mi", 128 << 20),
            ("1Gi", 1 << 30),
            ("1G", 1_000_000_000),
            ("1M", 1_000_000),
            ("1k", 1000),
            ("64Ki", 65536),
            ("1.5Gi", 3 << 29),
            ("0.5Ki", 512),
            ("1e9", 1_000_000_000),
            ("129e6", 129_000_000),
            ("100m", 1),
            ("1Ei", 1 << 60),
            ("123", 123),
        ] {
            assert_eq!(parse_bytes(input).unwrap(), want, "{input}");
        }
    }

    #[test]
    fn bad_quantities_are_clear_errors() {
        for input in [
            "", "abc", "1.2.3", "1K", "1mi", "1e", "1e+", "1ex", "-1", "-250m", ".", "Mi", "1 Gi",
            "1Gi2", "1e99999",
        ] {
            let err = parse_bytes(input).unwrap_err();
            assert!(matches!(err, Error::Quantity { .. }), "{input}: {err}");
            assert!(err.to_string().contains("invalid quantity"), "{err}");
        }
    }

    #[test]
    fn huge_quantities_overflow_cleanly() {
        assert!(parse_bytes("100Ei").is_err());
        assert!(parse_cpu_millis("1e17").is_err());
        assert!(parse_bytes("99999999999999999999999999999999999999999").is_err());
        assert_eq!(
            parse_bytes("16Ei").unwrap_err().to_string(),
            "invalid quantity \"16Ei\": too large"
        );
    }

    #[test]
    fn tiny_quantities_round_up() {
        assert_eq!(parse_cpu_millis("1e-100").unwrap(), 1);
        assert_eq!(parse_cpu_millis("0e-100").unwrap(), 0);
    }

    #[test]
    fn formatting_round_trips() {
        for millis in [0, 1, 250, 1000, 1500, 4000] {
            assert_eq!(
                parse_cpu_millis(&format_cpu_millis(millis)).unwrap(),
                millis
            );
        }
        for bytes in [0, 1, 1000, 1024, 128 << 20, 3 << 30, 1_000_000_000] {
            assert_eq!(parse_bytes(&format_bytes(bytes)).unwrap(), bytes);
        }
        assert_eq!(format_bytes(128 << 20), "128Mi");
        assert_eq!(format_cpu_millis(250), "250m");
    }
}
