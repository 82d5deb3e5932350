//! Redis's number parsing and printing (`util.c`: `string2ll`, `string2ld`, `ld2string`),
//! reproduced because their accept/reject rules and output are part of the protocol: `+1`,
//! ` 1` and `01` are not integers to Redis, although Rust's `str::parse` accepts the first.

/// Redis's `string2ll`: an optional `-`, then digits with no leading zero (except `0`
/// itself), fitting in an `i64`. Nothing else, not even spaces or `+`.
pub fn parse_i64(s: &[u8]) -> Option<i64> {
    if s.is_empty() || s.len() > 20 {
        return None;
    }
    if s == b"0" {
        return Some(0);
    }
    let (neg, digits) = match s[0] {
        b'-' => (true, &s[1..]),
        _ => (false, s),
    };
    let first = *digits.first()?;
    if !(b'1'..=b'9').contains(&first) {
        return None;
    }
    let mut v: u64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    if neg {
        if v > (i64::MAX as u64) + 1 {
            return None;
        }
        Some((v as i64).wrapping_neg())
    } else {
        i64::try_from(v).ok()
    }
}

/// The longest text `string2ld` accepts (`MAX_LONG_DOUBLE_CHARS`, less its terminator).
pub const FLOAT_TEXT_MAX: usize = 5 * 1024 - 1;

/// Redis's `string2ld`: `strtold` over the whole text, no leading space, not NaN.
///
/// Redis computes in `long double` (80-bit on x86-64); cairn uses `f64`, so results agree
/// when the operands and sum are exactly representable or round the same way, and may
/// differ in the last digits otherwise (`0.1 + 0.2`). See [`format_f64`].
pub fn parse_f64(s: &[u8]) -> Option<f64> {
    if s.is_empty() || s.len() > FLOAT_TEXT_MAX {
        return None;
    }
    // strtold stops at a NUL byte, and Redis checks only that it stopped at the terminator.
    let s = match s.iter().position(|&b| b == 0) {
        Some(n) => &s[..n],
        None => s,
    };
    let text = std::str::from_utf8(s).ok()?;
    if text.is_empty() || text.starts_with(|c: char| c.is_ascii_whitespace()) {
        return None;
    }
    let lower = text.to_ascii_lowercase();
    let body = lower.trim_start_matches(['+', '-']);
    if body.starts_with("nan") || lower.len() - body.len() > 1 {
        return None;
    }
    // Rust accepts "infinity"/"inf" as strtold does; it rejects hex floats, which strtold
    // accepts (a known difference).
    let v: f64 = text.parse().ok()?;
    if v.is_nan() {
        return None;
    }
    Some(v)
}

/// Redis's `ld2string(.., LD_STR_HUMAN)`: fixed notation with at most 17 decimals, trailing
/// zeros and a trailing point removed, `-0` printed as `0`. Starts from the shortest text
/// that reads back as `v`, which is what `%.17Lf` of the 80-bit sum shows in the common
/// cases (`10.5 + 0.1` is `10.6`).
pub fn format_f64(v: f64) -> String {
    let shortest = format!("{v}");
    let mut s = match shortest.split_once('.') {
        Some((_, frac)) if frac.len() > 17 => format!("{v:.17}"),
        _ => shortest,
    };
    if s.contains('.') {
        while s.ends_with('0') {
            s.pop();
        }
        if s.ends_with('.') {
            s.pop();
        }
    }
    if s == "-0" {
        s = "0".into();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_follow_string2ll() {
        assert_eq!(parse_i64(b"0"), Some(0));
        assert_eq!(parse_i64(b"-1"), Some(-1));
        assert_eq!(parse_i64(b"9223372036854775807"), Some(i64::MAX));
        assert_eq!(parse_i64(b"-9223372036854775808"), Some(i64::MIN));
        for bad in [
            &b""[..],
            b"+1",
            b" 1",
            b"1 ",
            b"01",
            b"-0",
            b"-",
            b"1a",
            b"9223372036854775808",
            b"-9223372036854775809",
            b"99999999999999999999999",
        ] {
            assert_eq!(parse_i64(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn floats() {
        assert_eq!(parse_f64(b"1.5"), Some(1.5));
        assert_eq!(parse_f64(b"+1.5"), Some(1.5));
        assert_eq!(parse_f64(b"5e3"), Some(5000.0));
        assert_eq!(parse_f64(b"1.5\0zz"), Some(1.5));
        assert_eq!(parse_f64(b"inf"), Some(f64::INFINITY));
        for bad in [&b""[..], b" 1", b"nan", b"abc", b"1.5 ", b"--1"] {
            assert_eq!(parse_f64(bad), None);
        }
        assert_eq!(format_f64(10.5 + 0.1), "10.6");
        assert_eq!(format_f64(3.0), "3");
        assert_eq!(format_f64(-0.0), "0");
        assert_eq!(format_f64(5.0e3), "5000");
        assert_eq!(format_f64(1e-20), "0");
        assert_eq!(format_f64(1e-7), "0.0000001");
    }
}
