//! RESP framing: the request decoder and the reply encoder.
//!
//! Hand-written rather than taken from a RESP crate (redis-protocol was considered) because a
//! server's request side is narrower and stricter than general RESP and its errors are part
//! of the protocol: Redis reads only arrays of bulk strings (`*`) or inline lines, does not
//! check the CRLF after a bulk, caps each header at 64 KiB, and answers each fault with one
//! exact line (`ERR Protocol error: invalid bulk length`) before closing the connection. A
//! general decoder would accept frames Redis refuses and word its errors differently. This
//! mirrors `networking.c` (`processInlineBuffer`, `processMultibulkBuffer`) and `sds.c`
//! (`sdssplitargs`) of Redis 7.0.
//!
//! The decoder is incremental: a half-received command keeps its finished arguments, so a
//! large argument arriving in pieces is not re-parsed from its start.

use bytes::{Buf, BytesMut};
use cairn_range::Reply;

/// Sizes the decoder accepts. Defaults are Redis's.
#[derive(Clone, Debug)]
pub struct Limits {
    /// `proto-max-bulk-len`: the longest bulk argument.
    pub bulk_bytes_max: usize,
    /// `PROTO_INLINE_MAX_SIZE`: the longest inline command and the longest `*`/`$` header.
    pub inline_bytes_max: usize,
    /// The most arguments in one command (Redis allows `INT_MAX`; cairn allows fewer).
    pub args_max: usize,
    /// `client-query-buffer-limit`: the most bytes one command's arguments may hold; past
    /// it the connection is closed without a reply, as Redis does.
    pub query_bytes_max: usize,
    /// The most commands run from one read before their replies are written, so that a
    /// client pipelining without reading cannot grow the reply buffer without bound.
    pub pipeline_commands_max: usize,
    /// `maxclients`: the most connections open at once on this node; past it a new one is
    /// answered `-ERR max number of clients reached` and closed.
    pub clients_max: usize,
    /// `maxmemory-clients`: the most bytes the node's connections may hold together (read
    /// buffers, commands being run, replies); past it the connections holding the most are
    /// evicted (closed), as Redis 7 evicts clients. 0: no limit (Redis's default; cairn's is
    /// 2 GiB, so that `maxclients` connections each at `client-query-buffer-limit` cannot
    /// take the machine's memory).
    pub clients_memory_max: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            bulk_bytes_max: 512 * 1024 * 1024,
            inline_bytes_max: 64 * 1024,
            args_max: 1024 * 1024,
            query_bytes_max: 1024 * 1024 * 1024,
            pipeline_commands_max: 1024,
            clients_max: 10_000,
            clients_memory_max: 2 * 1024 * 1024 * 1024,
        }
    }
}

/// Why the decoder stopped. After either, the connection is closed.
#[derive(Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// Reply with this error line (`ERR Protocol error: ...`), then close.
    Protocol(Vec<u8>),
    /// The command outgrew `query_bytes_max`: close without a reply.
    QueryTooBig,
}

fn protocol(msg: &str) -> DecodeError {
    DecodeError::Protocol(format!("ERR Protocol error: {msg}").into_bytes())
}

#[derive(Debug, Default)]
struct Partial {
    remaining: usize,
    args: Vec<Vec<u8>>,
    bulk_len: Option<usize>,
    bytes: usize,
}

/// Splits a byte stream into commands (argument vectors).
#[derive(Debug)]
pub struct Decoder {
    limits: Limits,
    partial: Option<Partial>,
    /// Whether the client may send large commands: Redis allows a client that must still
    /// authenticate at most [`UNAUTHENTICATED_ARGS_MAX`] arguments of at most
    /// [`UNAUTHENTICATED_BULK_MAX`] bytes each (CVE-2021-32675: else every connection could
    /// make the server hold a 1 GB command before it proved who it is).
    authenticated: bool,
}

/// What an argument costs beyond its bytes, as counted against the query and batch limits:
/// its buffer (an empty argument is not free; Redis counts its `$0` header in the query buffer).
pub const ARG_OVERHEAD_BYTES: usize = std::mem::size_of::<Vec<u8>>();

/// The most arguments of a command from a client that has not authenticated (Redis's).
pub const UNAUTHENTICATED_ARGS_MAX: i64 = 10;
/// The longest argument from a client that has not authenticated (Redis's).
pub const UNAUTHENTICATED_BULK_MAX: usize = 16 * 1024;

impl Decoder {
    pub fn new(limits: Limits) -> Decoder {
        Decoder { limits, partial: None, authenticated: true }
    }

    /// Whether the client has authenticated (or needs not). Before, it may send at most
    /// [`UNAUTHENTICATED_ARGS_MAX`] arguments of at most [`UNAUTHENTICATED_BULK_MAX`] bytes.
    pub fn set_authenticated(&mut self, yes: bool) {
        self.authenticated = yes;
    }

    /// The next complete command in `buf`, consuming its bytes; `Ok(None)` when more bytes
    /// are needed. Empty commands (`*0`, a blank line) are skipped, as Redis does.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Vec<Vec<u8>>>, DecodeError> {
        loop {
            if self.partial.is_none() {
                if buf.is_empty() {
                    return Ok(None);
                }
                if buf[0] != b'*' {
                    match self.inline(buf)? {
                        None => return Ok(None),
                        Some(args) if args.is_empty() => continue,
                        Some(args) => return Ok(Some(args)),
                    }
                }
                let Some(n) = self.header(buf, "too big mbulk count string")? else {
                    return Ok(None);
                };
                // Redis's checks in its order: the count, then the client's authentication,
                // then cairn's own limit on arguments.
                let n = match n {
                    Some(n) if n <= i32::MAX as i64 => n,
                    _ => return Err(protocol("invalid multibulk length")),
                };
                if n > UNAUTHENTICATED_ARGS_MAX && !self.authenticated {
                    return Err(protocol("unauthenticated multibulk length"));
                }
                if n > self.limits.args_max as i64 {
                    return Err(protocol("invalid multibulk length"));
                }
                if n <= 0 {
                    continue;
                }
                self.partial = Some(Partial {
                    remaining: n as usize,
                    // Capacity grows with the arguments that arrive, not with the claim.
                    args: Vec::with_capacity((n as usize).min(64)),
                    ..Partial::default()
                });
            }
            return self.multibulk(buf);
        }
    }

    /// Parse a `*n`/`$n` header at the start of `buf`: `Ok(None)` if incomplete,
    /// `Ok(Some(None))` if not an integer.
    fn header(&self, buf: &mut BytesMut, too_big: &str) -> Result<Option<Option<i64>>, DecodeError> {
        // Redis reads 16 KiB at a time and checks the limit after each read, so in practice a
        // header longer than the limit is refused even when its end is in the buffer; refusing
        // it here regardless also makes the outcome independent of how the bytes arrive.
        let Some(cr) = find_c(buf, b'\r').filter(|&cr| cr <= self.limits.inline_bytes_max) else {
            if buf.len() > self.limits.inline_bytes_max {
                return Err(protocol(too_big));
            }
            return Ok(None);
        };
        // Redis needs one byte after the '\r' and skips it without looking.
        if cr + 1 >= buf.len() {
            return Ok(None);
        }
        let n = cairn_range::num::parse_i64(&buf[1..cr]);
        buf.advance(cr + 2);
        Ok(Some(n))
    }

    fn multibulk(&mut self, buf: &mut BytesMut) -> Result<Option<Vec<Vec<u8>>>, DecodeError> {
        loop {
            let partial = self.partial.as_mut().expect("multibulk without a partial command");
            if partial.remaining == 0 {
                let done = self.partial.take().expect("checked above");
                return Ok(Some(done.args));
            }
            let len = match partial.bulk_len {
                Some(len) => len,
                None => {
                    if buf.is_empty() {
                        return Ok(None);
                    }
                    match find_c(buf, b'\r') {
                        Some(cr) if cr <= self.limits.inline_bytes_max => {
                            // Like Redis, wait for the byte after '\r' before judging.
                            if cr + 1 >= buf.len() {
                                return Ok(None);
                            }
                        }
                        _ => {
                            if buf.len() > self.limits.inline_bytes_max {
                                return Err(protocol("too big bulk count string"));
                            }
                            return Ok(None);
                        }
                    }
                    if buf[0] != b'$' {
                        // The byte goes out as it came (`%c`), whatever it is.
                        let mut msg = b"ERR Protocol error: expected '$', got '".to_vec();
                        msg.extend_from_slice(&[buf[0], b'\'']);
                        return Err(DecodeError::Protocol(msg));
                    }
                    let bulk_max = self.limits.bulk_bytes_max;
                    let Some(n) = self.header(buf, "too big bulk count string")? else {
                        return Ok(None);
                    };
                    let len = match n {
                        Some(n) if n >= 0 && n as u64 <= bulk_max as u64 => n as usize,
                        _ => return Err(protocol("invalid bulk length")),
                    };
                    if len > UNAUTHENTICATED_BULK_MAX && !self.authenticated {
                        return Err(protocol("unauthenticated bulk length"));
                    }
                    let partial = self.partial.as_mut().expect("checked above");
                    partial.bytes = partial.bytes.saturating_add(len + ARG_OVERHEAD_BYTES);
                    if partial.bytes > self.limits.query_bytes_max {
                        return Err(DecodeError::QueryTooBig);
                    }
                    partial.bulk_len = Some(len);
                    len
                }
            };
            if buf.len() < len + 2 {
                buf.reserve(len + 2 - buf.len());
                return Ok(None);
            }
            let arg = buf.split_to(len).to_vec();
            // Redis skips the two bytes after a bulk without checking that they are CRLF.
            buf.advance(2);
            let partial = self.partial.as_mut().expect("checked above");
            partial.args.push(arg);
            partial.remaining -= 1;
            partial.bulk_len = None;
        }
    }

    /// One inline command line, `Ok(None)` if its newline has not arrived.
    fn inline(&self, buf: &mut BytesMut) -> Result<Option<Vec<Vec<u8>>>, DecodeError> {
        // As for headers: a line longer than the limit is refused even if its end is here.
        let Some(nl) = find_c(buf, b'\n').filter(|&nl| nl <= self.limits.inline_bytes_max) else {
            if buf.len() > self.limits.inline_bytes_max {
                return Err(protocol("too big inline request"));
            }
            return Ok(None);
        };
        let end = if nl > 0 && buf[nl - 1] == b'\r' { nl - 1 } else { nl };
        let args = split_args(&buf[..end]);
        buf.advance(nl + 1);
        args.ok_or_else(|| protocol("unbalanced quotes in request")).map(Some)
    }
}

/// Where `strchr` would find `byte`: Redis searches its query buffer as a C string, so a NUL
/// byte hides everything after it (the command then waits until the buffer outgrows the
/// header limit).
fn find_c(buf: &[u8], byte: u8) -> Option<usize> {
    buf.iter().position(|&b| b == byte || b == 0).filter(|&i| buf[i] == byte)
}

/// Redis's `sdssplitargs`: split an inline command line into arguments, honouring double
/// quotes (with `\n`, `\xHH` escapes) and single quotes. `None` for unbalanced quotes.
pub fn split_args(line: &[u8]) -> Option<Vec<Vec<u8>>> {
    // The C code works on a NUL-terminated string.
    let line = match line.iter().position(|&b| b == 0) {
        Some(n) => &line[..n],
        None => line,
    };
    let at = |i: usize| line.get(i).copied().unwrap_or(0);
    let is_space = |b: u8| matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c);
    let mut args = Vec::new();
    let mut p = 0;
    loop {
        while at(p) != 0 && is_space(at(p)) {
            p += 1;
        }
        if at(p) == 0 {
            return Some(args);
        }
        let (mut inq, mut insq, mut done) = (false, false, false);
        let mut current = Vec::new();
        while !done {
            let c = at(p);
            if inq {
                if c == b'\\' && at(p + 1) == b'x' && at(p + 2).is_ascii_hexdigit() && at(p + 3).is_ascii_hexdigit() {
                    let hex = |b: u8| (b as char).to_digit(16).unwrap_or(0) as u8;
                    current.push(hex(at(p + 2)) * 16 + hex(at(p + 3)));
                    p += 3;
                } else if c == b'\\' && at(p + 1) != 0 {
                    p += 1;
                    current.push(match at(p) {
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'b' => 0x08,
                        b'a' => 0x07,
                        other => other,
                    });
                } else if c == b'"' {
                    if at(p + 1) != 0 && !is_space(at(p + 1)) {
                        return None;
                    }
                    done = true;
                } else if c == 0 {
                    return None;
                } else {
                    current.push(c);
                }
            } else if insq {
                if c == b'\\' && at(p + 1) == b'\'' {
                    p += 1;
                    current.push(b'\'');
                } else if c == b'\'' {
                    if at(p + 1) != 0 && !is_space(at(p + 1)) {
                        return None;
                    }
                    done = true;
                } else if c == 0 {
                    return None;
                } else {
                    current.push(c);
                }
            } else {
                match c {
                    b' ' | b'\n' | b'\r' | b'\t' | 0 => done = true,
                    b'"' => inq = true,
                    b'\'' => insq = true,
                    other => current.push(other),
                }
            }
            if at(p) != 0 {
                p += 1;
            }
        }
        args.push(current);
    }
}

/// RESP2 or RESP3, as chosen with HELLO.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Resp2,
    Resp3,
}

/// Append the encoding of `reply` to `out`.
pub fn encode(reply: &Reply, proto: Proto, out: &mut Vec<u8>) {
    let resp3 = proto == Proto::Resp3;
    match reply {
        Reply::Simple(s) => line(out, b'+', s.as_bytes()),
        Reply::Error(s) => line(out, b'-', s),
        Reply::Int(n) => header(out, b':', *n),
        Reply::Bulk(b) => bulk(out, b),
        Reply::Null if resp3 => out.extend_from_slice(b"_\r\n"),
        Reply::Null => out.extend_from_slice(b"$-1\r\n"),
        Reply::NullArray if resp3 => out.extend_from_slice(b"_\r\n"),
        Reply::NullArray => out.extend_from_slice(b"*-1\r\n"),
        Reply::Array(items) => {
            header(out, b'*', items.len() as i64);
            for r in items {
                encode(r, proto, out);
            }
        }
        Reply::Set(items) => {
            header(out, if resp3 { b'~' } else { b'*' }, items.len() as i64);
            for r in items {
                encode(r, proto, out);
            }
        }
        Reply::Map(pairs) => {
            if resp3 {
                header(out, b'%', pairs.len() as i64);
            } else {
                header(out, b'*', 2 * pairs.len() as i64);
            }
            for (k, v) in pairs {
                encode(k, proto, out);
                encode(v, proto, out);
            }
        }
        Reply::Double(d) => {
            let text = format_double(*d);
            if resp3 {
                line(out, b',', text.as_bytes());
            } else {
                bulk(out, text.as_bytes());
            }
        }
        Reply::Bool(b) if resp3 => out.extend_from_slice(if *b { b"#t\r\n" } else { b"#f\r\n" }),
        Reply::Bool(b) => header(out, b':', i64::from(*b)),
        Reply::Verbatim { format, text } if resp3 => {
            header(out, b'=', (text.len() + 4) as i64);
            out.extend_from_slice(format);
            out.push(b':');
            out.extend_from_slice(text);
            out.extend_from_slice(b"\r\n");
        }
        Reply::Verbatim { text, .. } => bulk(out, text),
    }
}

/// Doubles as Redis 7.0 prints them: `inf`, `-inf`, otherwise C's `%.17g` (17 significant
/// digits, exponent form below 1e-4 or from 1e17, trailing zeros dropped). Rust's `{:e}`
/// formatting is exactly rounded, so the digits are printf's.
pub fn format_double(d: f64) -> String {
    if d.is_infinite() {
        return if d > 0.0 { "inf" } else { "-inf" }.to_string();
    }
    if d.is_nan() {
        return "nan".to_string();
    }
    if d == 0.0 {
        return if d.is_sign_negative() { "-0" } else { "0" }.to_string();
    }
    let sci = format!("{d:.16e}");
    let (mantissa, exp) = sci.split_once('e').expect("{:e} has an exponent");
    let exp: i32 = exp.parse().expect("{:e} exponent is an integer");
    let trim = |s: String| -> String {
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        }
    };
    if (-4..17).contains(&exp) {
        trim(format!("{d:.prec$}", prec = (16 - exp) as usize))
    } else {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{}e{sign}{:02}", trim(mantissa.to_string()), exp.abs())
    }
}

/// A status or error line. Redis replaces CR and LF inside one with spaces so that the
/// reply stays one line; so does this.
fn line(out: &mut Vec<u8>, kind: u8, text: &[u8]) {
    out.push(kind);
    out.extend(text.iter().map(|&b| if b == b'\r' || b == b'\n' { b' ' } else { b }));
    out.extend_from_slice(b"\r\n");
}

fn header(out: &mut Vec<u8>, kind: u8, n: i64) {
    out.push(kind);
    out.extend_from_slice(n.to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
}

fn bulk(out: &mut Vec<u8>, b: &[u8]) {
    header(out, b'$', b.len() as i64);
    out.extend_from_slice(b);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(input: &[u8], limits: Limits) -> (Vec<Vec<Vec<u8>>>, Option<DecodeError>) {
        let mut d = Decoder::new(limits);
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        loop {
            match d.decode(&mut buf) {
                Ok(Some(args)) => out.push(args),
                Ok(None) => return (out, None),
                Err(e) => return (out, Some(e)),
            }
        }
    }

    fn v(args: &[&str]) -> Vec<Vec<u8>> {
        args.iter().map(|a| a.as_bytes().to_vec()).collect()
    }

    #[test]
    fn pipelined_frames_and_inline() {
        let (cmds, err) = all(
            b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\nPING\r\n\r\n*0\r\nset a \"b c\\x41\"\r\n*1\r\n$4\r\nPI",
            Limits::default(),
        );
        assert_eq!(err, None);
        assert_eq!(cmds, vec![v(&["GET", "k"]), v(&["PING"]), v(&["set", "a", "b cA"])]);
    }

    #[test]
    fn byte_at_a_time_gives_the_same_commands() {
        let input = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nhello\r\necho 'it\\'s'\r\n";
        let mut d = Decoder::new(Limits::default());
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for &b in input.iter() {
            buf.extend_from_slice(&[b]);
            while let Some(args) = d.decode(&mut buf).unwrap_or_else(|e| panic!("{e:?}")) {
                out.push(args);
            }
        }
        assert_eq!(out, vec![v(&["SET", "k", "hello"]), v(&["echo", "it's"])]);
        // 'it''s' is unbalanced for Redis: a closing quote must be followed by a space.
        let (_, err) = all(b"echo 'it''s'\r\n", Limits::default());
        assert_eq!(err, Some(DecodeError::Protocol(b"ERR Protocol error: unbalanced quotes in request".to_vec())));
    }

    #[test]
    fn protocol_errors_are_redis_lines() {
        let err = |input: &[u8], limits| match all(input, limits).1 {
            Some(DecodeError::Protocol(s)) => String::from_utf8(s).unwrap(),
            other => panic!("{other:?}"),
        };
        let d = Limits::default;
        assert_eq!(err(b"*1\r\n$-5\r\n", d()), "ERR Protocol error: invalid bulk length");
        assert_eq!(err(b"*x\r\n", d()), "ERR Protocol error: invalid multibulk length");
        assert_eq!(err(b"*1\r\n:5\r\n", d()), "ERR Protocol error: expected '$', got ':'");
        assert_eq!(err(b"set a \"b\r\n", d()), "ERR Protocol error: unbalanced quotes in request");
        let small = Limits { inline_bytes_max: 8, bulk_bytes_max: 4, args_max: 2, ..d() };
        assert_eq!(err(b"aaaaaaaaaaaa", small.clone()), "ERR Protocol error: too big inline request");
        assert_eq!(err(b"*1111111111111", small.clone()), "ERR Protocol error: too big mbulk count string");
        assert_eq!(err(b"*3\r\n", small.clone()), "ERR Protocol error: invalid multibulk length");
        assert_eq!(err(b"*1\r\n$5\r\nhello\r\n", small.clone()), "ERR Protocol error: invalid bulk length");
        assert_eq!(err(b"*1\r\n$1111111111111", small), "ERR Protocol error: too big bulk count string");
        let tiny_query = Limits { query_bytes_max: 3, ..d() };
        assert_eq!(all(b"*2\r\n$2\r\nab\r\n$2\r\n", tiny_query).1, Some(DecodeError::QueryTooBig));
    }

    /// Redis 7's limits on a client that must still authenticate, and its error lines
    /// (checked against redis-server 7.0.15 with `requirepass`).
    #[test]
    fn a_client_that_has_not_authenticated_sends_only_small_commands() {
        let unauthenticated = |input: &[u8]| {
            let mut d = Decoder::new(Limits::default());
            d.set_authenticated(false);
            let mut buf = BytesMut::from(input);
            d.decode(&mut buf)
        };
        let line = |s: &str| Err(DecodeError::Protocol(s.as_bytes().to_vec()));
        assert_eq!(unauthenticated(b"*11\r\n"), line("ERR Protocol error: unauthenticated multibulk length"));
        assert_eq!(unauthenticated(b"*1\r\n$16385\r\n"), line("ERR Protocol error: unauthenticated bulk length"));
        // Redis's own checks come first.
        assert_eq!(unauthenticated(b"*1\r\n$-1\r\n"), line("ERR Protocol error: invalid bulk length"));
        assert_eq!(unauthenticated(b"*2147483648\r\n"), line("ERR Protocol error: invalid multibulk length"));
        // Within the limits, as for anyone.
        let ten = format!("*10\r\n$16384\r\n{}\r\n", "x".repeat(16384));
        let mut d = Decoder::new(Limits::default());
        d.set_authenticated(false);
        let mut buf = BytesMut::from(ten.as_bytes());
        assert_eq!(d.decode(&mut buf), Ok(None), "a large argument still arriving");
        assert_eq!(unauthenticated(b"*2\r\n$4\r\nAUTH\r\n$1\r\np\r\n"), Ok(Some(v(&["AUTH", "p"]))));
        // Authenticated, the usual limits.
        let (cmds, err) = all(b"*11\r\n$1\r\na\r\n$1\r\na\r\n$1\r\na\r\n$1\r\na\r\n$1\r\na\r\n$1\r\na\r\n$1\r\na\r\n$1\r\na\r\n$1\r\na\r\n$1\r\na\r\n$1\r\na\r\n", Limits::default());
        assert_eq!((cmds.len(), err), (1, None));
    }

    #[test]
    fn a_nul_hides_the_line_end_as_in_redis() {
        let (cmds, err) = all(b"set a\x00b v\r\n", Limits::default());
        assert_eq!((cmds.len(), err), (0, None));
        let small = Limits { inline_bytes_max: 8, ..Limits::default() };
        assert_eq!(
            all(b"set a\x00b v\r\n", small).1,
            Some(DecodeError::Protocol(b"ERR Protocol error: too big inline request".to_vec()))
        );
    }

    #[test]
    fn doubles_print_as_percent_17g() {
        for (d, want) in [
            (1.5, "1.5"),
            (0.1, "0.10000000000000001"),
            (3.0, "3"),
            (-2.25, "-2.25"),
            (1e17, "1e+17"),
            (1e16, "10000000000000000"),
            (123456789012345678.0, "1.2345678901234568e+17"),
            (1e-5, "1.0000000000000001e-05"),
            (0.0001, "0.0001"),
            (1e300, "1.0000000000000001e+300"),
            (-0.0, "-0"),
            (f64::INFINITY, "inf"),
        ] {
            assert_eq!(format_double(d), want, "{d}");
        }
    }

    #[test]
    fn replies_by_protocol() {
        let enc = |r: &Reply, p| {
            let mut out = Vec::new();
            encode(r, p, &mut out);
            String::from_utf8(out).unwrap()
        };
        use Proto::*;
        assert_eq!(enc(&Reply::Null, Resp2), "$-1\r\n");
        assert_eq!(enc(&Reply::Null, Resp3), "_\r\n");
        assert_eq!(enc(&Reply::NullArray, Resp2), "*-1\r\n");
        let m = Reply::Map(vec![(Reply::bulk("a"), Reply::Int(1))]);
        assert_eq!(enc(&m, Resp2), "*2\r\n$1\r\na\r\n:1\r\n");
        assert_eq!(enc(&m, Resp3), "%1\r\n$1\r\na\r\n:1\r\n");
        assert_eq!(enc(&Reply::Double(1.5), Resp3), ",1.5\r\n");
        assert_eq!(enc(&Reply::Double(1.5), Resp2), "$3\r\n1.5\r\n");
        assert_eq!(enc(&Reply::Bool(true), Resp3), "#t\r\n");
        assert_eq!(enc(&Reply::Double(f64::NEG_INFINITY), Resp3), ",-inf\r\n");
        assert_eq!(enc(&Reply::Set(vec![]), Resp3), "~0\r\n");
        let v = Reply::Verbatim { format: *b"txt", text: b"a\r\n".to_vec() };
        assert_eq!(enc(&v, Resp3), "=7\r\ntxt:a\r\n\r\n");
        assert_eq!(enc(&v, Resp2), "$3\r\na\r\n\r\n");
        assert_eq!(enc(&Reply::err("ERR a\r\nb"), Resp2), "-ERR a  b\r\n");
    }
}
