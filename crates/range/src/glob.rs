//! Redis's glob matcher (`util.c` `stringmatchlen`), ported line by line because KEYS, SCAN
//! MATCH and CONFIG GET must select exactly the keys Redis would: glob crates differ on
//! `[^...]`, reversed ranges (`[z-a]`), a trailing backslash and unterminated classes.

/// Patterns nested deeper than this (one level per `*`) match nothing, as in Redis.
const NESTING_MAX: u32 = 1000;

/// Whether `string` matches the glob `pattern`.
pub fn matches(pattern: &[u8], string: &[u8], nocase: bool) -> bool {
    let mut skip_longer = false;
    match_impl(pattern, string, nocase, &mut skip_longer, 0)
}

/// The byte at `i`, or 0 past the end: Redis's strings are NUL-terminated and the C code
/// reads the terminator in a few places.
fn at(s: &[u8], i: usize) -> u8 {
    s.get(i).copied().unwrap_or(0)
}

fn lower(b: u8) -> u8 {
    b.to_ascii_lowercase()
}

fn match_impl(pat: &[u8], s: &[u8], nocase: bool, skip_longer: &mut bool, nesting: u32) -> bool {
    if nesting > NESTING_MAX {
        return false;
    }
    let (mut p, mut plen) = (0usize, pat.len());
    let (mut i, mut slen) = (0usize, s.len());
    while plen > 0 && slen > 0 {
        match pat[p] {
            b'*' => {
                while plen > 0 && at(pat, p + 1) == b'*' {
                    p += 1;
                    plen -= 1;
                }
                if plen == 1 {
                    return true;
                }
                while slen > 0 {
                    if match_impl(&pat[p + 1..p + plen], &s[i..i + slen], nocase, skip_longer, nesting + 1) {
                        return true;
                    }
                    if *skip_longer {
                        return false;
                    }
                    i += 1;
                    slen -= 1;
                }
                *skip_longer = true;
                return false;
            }
            b'?' => {
                i += 1;
                slen -= 1;
            }
            b'[' => {
                p += 1;
                plen -= 1;
                let not = at(pat, p) == b'^' && plen > 0;
                if not {
                    p += 1;
                    plen -= 1;
                }
                let mut matched = false;
                loop {
                    if at(pat, p) == b'\\' && plen >= 2 {
                        p += 1;
                        plen -= 1;
                        if pat[p] == s[i] {
                            matched = true;
                        }
                    } else if plen > 0 && pat[p] == b']' {
                        break;
                    } else if plen == 0 {
                        p -= 1;
                        plen += 1;
                        break;
                    } else if plen >= 3 && pat[p + 1] == b'-' {
                        // C compares `char`, which is signed on the platforms Redis ships for.
                        let (mut start, mut end, mut c) =
                            (pat[p] as i8 as i32, pat[p + 2] as i8 as i32, s[i] as i8 as i32);
                        if start > end {
                            std::mem::swap(&mut start, &mut end);
                        }
                        if nocase {
                            start = lower_i(start);
                            end = lower_i(end);
                            c = lower_i(c);
                        }
                        p += 2;
                        plen -= 2;
                        if c >= start && c <= end {
                            matched = true;
                        }
                    } else if (!nocase && pat[p] == s[i]) || (nocase && lower(pat[p]) == lower(s[i])) {
                        matched = true;
                    }
                    p += 1;
                    plen -= 1;
                }
                if not {
                    matched = !matched;
                }
                if !matched {
                    return false;
                }
                i += 1;
                slen -= 1;
            }
            c => {
                let mut c = c;
                if c == b'\\' && plen >= 2 {
                    p += 1;
                    plen -= 1;
                    c = pat[p];
                }
                let equal = if nocase { lower(c) == lower(s[i]) } else { c == s[i] };
                if !equal {
                    return false;
                }
                i += 1;
                slen -= 1;
            }
        }
        p += 1;
        plen -= 1;
        if slen == 0 {
            while plen > 0 && pat[p] == b'*' {
                p += 1;
                plen -= 1;
            }
            break;
        }
    }
    plen == 0 && slen == 0
}

fn lower_i(c: i32) -> i32 {
    if (i32::from(b'A')..=i32::from(b'Z')).contains(&c) {
        c + 32
    } else {
        c
    }
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn redis_globs() {
        let m = |p: &str, s: &str| matches(p.as_bytes(), s.as_bytes(), false);
        // Redis's matcher refuses "" for "*" (KEYS and SCAN skip it for that pattern).
        assert!(!m("*", ""));
        assert!(m("a*", "a"));
        assert!(m("*", "abc"));
        assert!(m("h?llo", "hello"));
        assert!(!m("h?llo", "hllo"));
        assert!(m("h*llo", "heeeello"));
        assert!(m("h[ae]llo", "hallo"));
        assert!(!m("h[ae]llo", "hillo"));
        assert!(m("h[^e]llo", "hallo"));
        assert!(!m("h[^e]llo", "hello"));
        assert!(m("h[a-b]llo", "hbllo"));
        assert!(m("h[b-a]llo", "hallo"));
        assert!(m("h\\*llo", "h*llo"));
        assert!(!m("h\\*llo", "hello"));
        assert!(m("a*b*c", "axxbyyc"));
        assert!(!m("a*b*c", "axxbyy"));
        assert!(m("abc*", "abc"));
        assert!(m("[abc", "a"));
        assert!(!m("", "a"));
        assert!(m("", ""));
        assert!(matches(b"HELLO", b"hello", true));
        // A pathological pattern ends quickly thanks to skipLongerMatches.
        let start = std::time::Instant::now();
        assert!(!m(&"*a".repeat(40), &("a".repeat(50) + "b")));
        assert!(start.elapsed() < std::time::Duration::from_secs(1));
    }
}
