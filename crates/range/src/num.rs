//! Redis's number parsing and printing (`util.c`: `string2ll`, `string2ld`, `ld2string`),
//! reproduced because their accept/reject rules and output are part of the protocol: `+1`,
//! ` 1` and `01` are not integers to Redis, although Rust's `str::parse` accepts the first.

use num_bigint::BigUint;
use rustc_apfloat::ieee::X87DoubleExtended;
use rustc_apfloat::{Float, Round, Status};

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

/// Redis's `long double` on x86-64: the x87 80-bit format. INCRBYFLOAT's results depend on
/// it (`0.1 + 0.2` prints `0.3` there, `0.30000000000000004` in `f64`), so cairn computes in
/// a software 80-bit float (rustc_apfloat, the Rust port of LLVM's APFloat) rather than `f64`.
pub type LongDouble = X87DoubleExtended;

const RNE: Round = Round::NearestTiesToEven;

/// Redis's `string2ld`: the whole text is one `strtold` number, with no leading space, not
/// NaN, and not out of range (overflow, or underflow to zero).
pub fn parse_long_double(s: &[u8]) -> Option<LongDouble> {
    if s.is_empty() || s.len() > FLOAT_TEXT_MAX {
        return None;
    }
    // strtold stops at a NUL byte, and Redis checks only that it stopped at the terminator.
    let s = match s.iter().position(|&b| b == 0) {
        Some(n) => &s[..n],
        None => s,
    };
    let text = strtold_syntax(s)?;
    let parsed = match text {
        Strtold::Inf(neg) => {
            let inf = LongDouble::INFINITY;
            return Some(if neg { -inf } else { inf });
        }
        Strtold::Number(t) => LongDouble::from_str_r(&t, RNE).ok()?,
    };
    let v = parsed.value;
    let out_of_range =
        parsed.status.contains(Status::OVERFLOW) || (parsed.status.contains(Status::UNDERFLOW) && v.is_zero());
    (!v.is_nan() && !out_of_range).then_some(v)
}

enum Strtold {
    Inf(bool),
    /// Text APFloat reads the way strtold reads it.
    Number(String),
}

/// Check `s` against the grammar strtold accepts as a whole, and turn it into text that
/// APFloat parses to the same value: APFloat is looser (it takes `1e`) and stricter (hex
/// needs an exponent, no `infinity`).
fn strtold_syntax(s: &[u8]) -> Option<Strtold> {
    let (neg, body) = match s.first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    if body.eq_ignore_ascii_case(b"inf") || body.eq_ignore_ascii_case(b"infinity") {
        return Some(Strtold::Inf(neg));
    }
    let sign = if neg { "-" } else { "" };
    let hex = body.len() > 2 && body[0] == b'0' && (body[1] | 0x20) == b'x';
    let (digits, exp_char): (fn(&u8) -> bool, u8) =
        if hex { (u8::is_ascii_hexdigit, b'p') } else { (u8::is_ascii_digit, b'e') };
    let rest = if hex { &body[2..] } else { body };
    let int_len = rest.iter().take_while(|b| digits(b)).count();
    let mut i = int_len;
    let mut frac_len = 0;
    if rest.get(i) == Some(&b'.') {
        i += 1;
        frac_len = rest[i..].iter().take_while(|b| digits(b)).count();
        i += frac_len;
    }
    if int_len + frac_len == 0 {
        return None;
    }
    let mut has_exp = false;
    if rest.get(i).is_some_and(|b| (b | 0x20) == exp_char) {
        let mut j = i + 1;
        if matches!(rest.get(j), Some(b'+' | b'-')) {
            j += 1;
        }
        let n = rest[j..].iter().take_while(|b| b.is_ascii_digit()).count();
        if n == 0 {
            // strtold stops before the 'e' and Redis sees the rest as garbage.
            return None;
        }
        i = j + n;
        has_exp = true;
    }
    if i != rest.len() {
        return None;
    }
    let text = std::str::from_utf8(body).ok()?;
    Some(Strtold::Number(if hex && !has_exp { format!("{sign}{text}p0") } else { format!("{sign}{text}") }))
}

/// Why INCRBYFLOAT failed.
#[derive(Debug, PartialEq, Eq)]
pub enum FloatError {
    NotFloat,
    NanOrInfinity,
}

/// INCRBYFLOAT's arithmetic: `current` (the stored text, or none) plus `by`, printed as Redis
/// prints it.
pub fn incr_by_float(current: Option<&[u8]>, by: &[u8]) -> Result<Vec<u8>, FloatError> {
    let value = match current {
        Some(text) => parse_long_double(text).ok_or(FloatError::NotFloat)?,
        None => LongDouble::ZERO,
    };
    let by = parse_long_double(by).ok_or(FloatError::NotFloat)?;
    let sum = value.add_r(by, RNE).value;
    if sum.is_nan() || sum.is_infinite() {
        return Err(FloatError::NanOrInfinity);
    }
    Ok(format_long_double(sum).into_bytes())
}

/// Redis's `ld2string(.., LD_STR_HUMAN)` for a finite value: `%.17Lf` (exact, rounded half
/// to even as glibc does), then trailing zeros and a trailing point removed, `-0` as `0`.
pub fn format_long_double(v: LongDouble) -> String {
    assert!(!v.is_nan() && !v.is_infinite(), "format of a non-finite value");
    let bits = v.to_bits();
    let negative = (bits >> 79) & 1 == 1;
    let biased = ((bits >> 64) & 0x7fff) as i64;
    let mantissa = bits as u64;
    // value = mantissa * 2^shift; denormals use the smallest normal exponent.
    let shift = biased.max(1) - 16383 - 63;
    let scaled = BigUint::from(mantissa) * BigUint::from(10u32).pow(17);
    let n = if shift >= 0 {
        scaled << (shift as u64)
    } else {
        let s = (-shift) as u64;
        let q = &scaled >> s;
        let r = &scaled - (&q << s);
        let half = BigUint::from(1u32) << (s - 1);
        if r > half || (r == half && q.bit(0)) {
            q + 1u32
        } else {
            q
        }
    };
    let digits = format!("{n:0>18}");
    let (int, frac) = digits.split_at(digits.len() - 17);
    let mut s = format!("{}{int}.{frac}", if negative { "-" } else { "" });
    while s.ends_with('0') {
        s.pop();
    }
    if s.ends_with('.') {
        s.pop();
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

    fn incr(cur: Option<&str>, by: &str) -> Result<String, FloatError> {
        incr_by_float(cur.map(str::as_bytes), by.as_bytes()).map(|v| String::from_utf8(v).unwrap())
    }

    // Expected values are what Redis 7 on x86-64 answers.
    #[test]
    fn long_double_arithmetic_prints_as_redis() {
        assert_eq!(incr(Some("10.50"), "0.1").unwrap(), "10.6");
        assert_eq!(incr(Some("0.1"), "0.2").unwrap(), "0.3");
        assert_eq!(incr(Some("5.0e3"), "2.0e2").unwrap(), "5200");
        assert_eq!(incr(None, "3").unwrap(), "3");
        assert_eq!(incr(Some("3"), "-3").unwrap(), "0");
        assert_eq!(incr(Some("-0"), "0").unwrap(), "0");
        assert_eq!(incr(None, "0x1p3").unwrap(), "8");
        assert_eq!(incr(None, "0x10").unwrap(), "16");
        assert_eq!(incr(None, "1e-20").unwrap(), "0");
        assert_eq!(incr(None, "-1e-20").unwrap(), "0");
        assert_eq!(
            incr(None, "1e400").unwrap(),
            "10000000000000000000281880683947586514586453433629052038625910693539685534008629862039363994848324160522094053927317616200295822777259255734023828976593340661017797447434546173917862448116674971723778943824391593338047470675026246684401359237513603830343735485505244955964979021825038280091068414947402456898653040951017512658092615827588920183472511643316591362664138176309734806343732497430221946880"
        );
        assert_eq!(incr(None, "inf"), Err(FloatError::NanOrInfinity));
        assert_eq!(incr(None, "-Infinity"), Err(FloatError::NanOrInfinity));
        for bad in ["", " 1", "1 ", "nan", "abc", "1e", "1e+", "--1", "1,5", "1e5000", "1e-5000", "0x", "."] {
            assert_eq!(incr(None, bad), Err(FloatError::NotFloat), "{bad:?}");
        }
        assert_eq!(incr(Some("x"), "1"), Err(FloatError::NotFloat));
        assert_eq!(incr(None, "1.5\0zz").unwrap(), "1.5");
    }
}
