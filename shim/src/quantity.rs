//! Kubernetes-style quantities of bytes ("256Mi", "1G", "1.5Gi", "1048576", "1e9").

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
#[error("{value:?} is not a memory quantity ({reason}); use e.g. 256Mi, 2Gi or 1G")]
pub struct QuantityError {
    pub value: String,
    pub reason: &'static str,
}

/// Parses a quantity into bytes, as Kubernetes reads resource quantities: an optional `+`,
/// binary (Ki, Mi, Gi, Ti, Pi, Ei) and decimal (n, u, m, k, M, G, T, P, E) suffixes, or a
/// decimal exponent (`1e9`, `5E-3`); fractions of a byte round up.
pub fn parse_bytes(value: &str) -> Result<u64, QuantityError> {
    let err = |reason| QuantityError { value: value.to_string(), reason };
    let s = value.trim();
    let s = s.strip_prefix('+').unwrap_or(s);
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (number, suffix) = s.split_at(split);
    // The value is number × numerator / denominator.
    let (numerator, denominator): (u128, u128) = match suffix {
        "" => (1, 1),
        "n" => (1, 10u128.pow(9)),
        "u" => (1, 10u128.pow(6)),
        "m" => (1, 10u128.pow(3)),
        "Ki" => (1 << 10, 1),
        "Mi" => (1 << 20, 1),
        "Gi" => (1 << 30, 1),
        "Ti" => (1 << 40, 1),
        "Pi" => (1 << 50, 1),
        "Ei" => (1 << 60, 1),
        "k" => (10u128.pow(3), 1),
        "M" => (10u128.pow(6), 1),
        "G" => (10u128.pow(9), 1),
        "T" => (10u128.pow(12), 1),
        "P" => (10u128.pow(15), 1),
        "E" => (10u128.pow(18), 1),
        _ => {
            let exponent = suffix.strip_prefix(['e', 'E']).ok_or_else(|| err("unknown suffix"))?;
            let digits = exponent.strip_prefix(['+', '-']).unwrap_or(exponent);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(err("unknown suffix"));
            }
            let power = digits.parse().ok().and_then(|digits| 10u128.checked_pow(digits));
            match (exponent.starts_with('-'), power) {
                (false, Some(power)) => (power, 1),
                (true, Some(power)) => (1, power),
                // Beyond u128: anything but 0 is a fraction of a byte, which rounds up.
                (true, None) => (1, u128::MAX),
                (false, None) => return Err(err("too large")),
            }
        }
    };
    if number.is_empty() {
        return Err(err("no number"));
    }
    let (whole, frac) = match number.split_once('.') {
        Some((w, f)) => (w, f),
        None => (number, ""),
    };
    if whole.is_empty() && frac.is_empty() || frac.contains('.') || frac.len() > 9 {
        return Err(err("malformed number"));
    }
    let whole: u128 = if whole.is_empty() { 0 } else { whole.parse().map_err(|_| err("malformed number"))? };
    let frac_value: u128 = if frac.is_empty() { 0 } else { frac.parse().map_err(|_| err("malformed number"))? };
    let frac_scale = 10u128.pow(frac.len() as u32);
    // (whole + frac_value / frac_scale) × numerator / denominator, rounded up.
    let scaled = whole
        .checked_mul(frac_scale)
        .and_then(|n| n.checked_add(frac_value))
        .and_then(|n| n.checked_mul(numerator))
        .ok_or_else(|| err("too large"))?;
    let bytes = match frac_scale.checked_mul(denominator) {
        Some(divisor) => scaled.div_ceil(divisor),
        // Past u128: a fraction of a byte, or none.
        None => u128::from(scaled > 0),
    };
    u64::try_from(bytes).map_err(|_| err("too large"))
}

/// Renders bytes compactly for messages: "256Mi", "1Gi", or plain bytes.
pub fn format_bytes(bytes: u64) -> String {
    for (suffix, unit) in [("Ti", 1u64 << 40), ("Gi", 1 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)] {
        if bytes >= unit && bytes.is_multiple_of(unit) {
            return format!("{}{}", bytes / unit, suffix);
        }
    }
    bytes.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_binary_and_decimal_suffixes() {
        assert_eq!(parse_bytes("256Mi"), Ok(256 << 20));
        assert_eq!(parse_bytes("2Gi"), Ok(2 << 30));
        assert_eq!(parse_bytes("1Ki"), Ok(1024));
        assert_eq!(parse_bytes("1G"), Ok(1_000_000_000));
        assert_eq!(parse_bytes("500k"), Ok(500_000));
        assert_eq!(parse_bytes("1048576"), Ok(1 << 20));
        assert_eq!(parse_bytes("1.5Gi"), Ok(3 << 29));
        assert_eq!(parse_bytes(" 64Mi "), Ok(64 << 20));
        assert_eq!(parse_bytes("1Pi"), Ok(1 << 50));
        assert_eq!(parse_bytes("2E"), Ok(2_000_000_000_000_000_000));
        assert_eq!(parse_bytes("1e9"), Ok(1_000_000_000));
        assert_eq!(parse_bytes("1.5E3"), Ok(1500));
        assert_eq!(parse_bytes("12e+2"), Ok(1200));
        assert_eq!(parse_bytes("5e-1"), Ok(1), "a fraction of a byte rounds up");
        assert_eq!(parse_bytes("4096e-3"), Ok(5));
        assert_eq!(parse_bytes("1e-39"), Ok(1));
        assert_eq!(parse_bytes("0.1e-38"), Ok(1));
        assert_eq!(parse_bytes("0e-99999"), Ok(0));
        assert_eq!(parse_bytes("1e-999999999999"), Ok(1));
        assert_eq!(parse_bytes("1500m"), Ok(2));
        assert_eq!(parse_bytes("+1Ki"), Ok(1024));
    }

    #[test]
    fn refuses_malformed_values() {
        for bad in [
            "",
            "Mi",
            "abc",
            "12XB",
            "1.2.3Mi",
            "-5Mi",
            "1e",
            "1e+",
            "1e9Mi",
            "20Ei",
            "1e99",
            "99999999999999999999Ti",
            ".",
        ] {
            assert!(parse_bytes(bad).is_err(), "{bad:?} should be refused");
        }
        let e = parse_bytes("12XB").unwrap_err();
        assert!(e.to_string().contains("12XB"));
    }

    #[test]
    fn formats_round_units() {
        assert_eq!(format_bytes(256 << 20), "256Mi");
        assert_eq!(format_bytes(1 << 30), "1Gi");
        assert_eq!(format_bytes(1000), "1000");
    }
}
