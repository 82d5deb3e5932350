//! From an argument vector to a typed command, with Redis 7.0's checks in Redis's order:
//! unknown command or subcommand, arity (from [`table`]), then each command's own options
//! (`t_string.c` `parseExtendedStringArgumentsOrReply`, `expire.c`
//! `parseExtendedExpireArgumentsOrReply`, `db.c` `scanGenericCommand`). Errors that Redis
//! gives only after looking at the key travel inside the command (see
//! [`cairn_range::cmd::GetExTtl::Bad`]).

use cairn_range::cmd::{
    DataCmd, ExpireCond, ExpireKind, GetExTtl, ReadCmd, SetCond, SetName, SetTtl, TtlArg, TtlForm, WriteReq,
};
use cairn_range::num::parse_i64;
use cairn_range::reply::errors;
use cairn_range::{KeySpan, Reply};

use super::clients::ClientType;
use super::table::{self, CommandSpec};

/// One parsed command.
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    Write(WriteReq),
    Read(ReadCmd),
    Scan(ScanReq),
    Conn(ConnCmd),
}

/// A SCAN over the whole keyspace, with Redis's numeric cursor.
#[derive(Clone, Debug, PartialEq)]
pub struct ScanReq {
    pub cursor: u64,
    pub count: usize,
    pub pattern: Option<Vec<u8>>,
    pub kind: Option<Vec<u8>>,
}

/// Commands the connection answers itself.
#[derive(Clone, Debug, PartialEq)]
pub enum ConnCmd {
    Ping(Option<Vec<u8>>),
    Echo(Vec<u8>),
    Hello {
        proto: Option<i64>,
        auth: Option<(Vec<u8>, Vec<u8>)>,
        setname: Option<Vec<u8>>,
    },
    /// AUTH; `user` is None for the one-argument form.
    Auth {
        user: Option<Vec<u8>>,
        pass: Vec<u8>,
    },
    Select(i64),
    Quit,
    Reset,
    ClientId,
    /// CLIENT INFO: this connection's line of CLIENT LIST.
    ClientInfo,
    /// CLIENT LIST: every connection to this node, or those of one type, or those with
    /// these ids.
    ClientList(ClientFilter),
    ClientSetName(Vec<u8>),
    ClientGetName,
    Time,
    /// COMMAND with no subcommand: every command's info.
    CommandAll,
    CommandCount,
    CommandInfo(Vec<Vec<u8>>),
    CommandDocs(Vec<Vec<u8>>),
    ConfigGet(Vec<Vec<u8>>),
    /// INFO with the sections asked for (none: the default ones).
    Info(Vec<Vec<u8>>),
    Cluster(ClusterCmd),
    ReadOnly,
    ReadWrite,
    Asking,
}

/// The CLUSTER subcommands cairn answers.
#[derive(Clone, Debug, PartialEq)]
pub enum ClusterCmd {
    Slots,
    Shards,
    Nodes,
    Info,
    MyId,
    KeySlot(Vec<u8>),
}

/// The bytes a C string function would see: up to the first NUL.
fn cstr(b: &[u8]) -> &[u8] {
    match b.iter().position(|&c| c == 0) {
        Some(n) => &b[..n],
        None => b,
    }
}

/// `strcasecmp(arg, word) == 0`.
fn is(arg: &[u8], word: &str) -> bool {
    cstr(arg).eq_ignore_ascii_case(word.as_bytes())
}

/// An error line with client bytes in it, sent as they came (Redis's `%s`).
fn err_around(before: &str, arg: &[u8], after: &str) -> Reply {
    let mut msg = before.as_bytes().to_vec();
    msg.extend_from_slice(arg);
    msg.extend_from_slice(after.as_bytes());
    Reply::Error(msg)
}

fn err(s: &str) -> Reply {
    Reply::err(s)
}

fn int(arg: &[u8]) -> Result<i64, Reply> {
    parse_i64(arg).ok_or_else(|| err(errors::NOT_INTEGER))
}

/// `ERR unknown command 'foo', with args beginning with: 'a' 'b' ` (`server.c`
/// `commandCheckExistence`): at most 128 bytes of name and about 128 of arguments.
pub fn unknown_command(args: &[Vec<u8>]) -> Reply {
    let mut listed: Vec<u8> = Vec::new();
    for a in &args[1..] {
        if listed.len() >= 128 {
            break;
        }
        let room = 128 - listed.len();
        let a = cstr(a);
        listed.push(b'\'');
        listed.extend_from_slice(&a[..a.len().min(room)]);
        listed.extend_from_slice(b"' ");
    }
    let name = cstr(&args[0]);
    let mut msg = b"ERR unknown command '".to_vec();
    msg.extend_from_slice(&name[..name.len().min(128)]);
    msg.extend_from_slice(b"', with args beginning with: ");
    msg.extend_from_slice(&listed);
    Reply::Error(msg)
}

fn unknown_subcommand(args: &[Vec<u8>]) -> Reply {
    let sub = cstr(&args[1]);
    let mut msg = b"ERR unknown subcommand '".to_vec();
    msg.extend_from_slice(&sub[..sub.len().min(128)]);
    msg.extend_from_slice(b"'. Try ");
    msg.extend_from_slice(&cstr(&args[0]).to_ascii_uppercase());
    msg.extend_from_slice(b" HELP.");
    Reply::Error(msg)
}

/// `ERR wrong number of arguments for 'get' command`.
pub fn arity_error(name: &str) -> Reply {
    Reply::err(format!("ERR wrong number of arguments for '{name}' command"))
}

/// The table entry for `args`, checked for existence only (Redis's `lookupCommand`: what
/// CLIENT LIST shows as the connection's last command, even when its arity is wrong).
pub fn find_spec(args: &[Vec<u8>]) -> Result<&'static CommandSpec, Reply> {
    let Some(base) = table::lookup(&args[0]) else {
        return Err(unknown_command(args));
    };
    if args.len() > 1 && !base.subcommands.is_empty() {
        base.subcommand(&args[1]).ok_or_else(|| unknown_subcommand(args))
    } else {
        Ok(base)
    }
}

/// Redis's arity check of `args` against the command's table entry.
pub fn check_arity(spec: &CommandSpec, args: &[Vec<u8>]) -> Result<(), Reply> {
    if spec.arity_ok(args.len()) {
        Ok(())
    } else {
        Err(arity_error(spec.name))
    }
}

/// Parse one command. `args` is non-empty (the decoder skips empty commands).
pub fn parse(args: Vec<Vec<u8>>) -> Result<Command, Reply> {
    assert!(!args.is_empty(), "empty command reached the parser");
    let spec = find_spec(&args)?;
    parse_found(spec, args)
}

/// Parse one command whose table entry [`find_spec`] found.
pub fn parse_found(spec: &'static CommandSpec, args: Vec<Vec<u8>>) -> Result<Command, Reply> {
    check_arity(spec, &args)?;
    let mut args = args.into_iter();
    let _name = args.next();
    let a: Vec<Vec<u8>> = args.collect();
    let w = |c: DataCmd| Ok(Command::Write(WriteReq::Cmd(c)));
    let r = |c: ReadCmd| Ok(Command::Read(c));
    let key = || a[0].clone();
    match spec.name {
        "get" => r(ReadCmd::Get { key: key() }),
        "set" => parse_set(a),
        "setnx" => w(DataCmd::SetNx { key: key(), value: a[1].clone() }),
        "setex" | "psetex" => {
            let n = int(&a[1])?;
            let (ttl, name) =
                if spec.name == "setex" { (TtlArg::Ex(n), SetName::SetEx) } else { (TtlArg::Px(n), SetName::PSetEx) };
            Ok(Command::Write(WriteReq::Set {
                key: key(),
                value: a[2].clone(),
                cond: SetCond::Always,
                get: false,
                ttl: SetTtl::Arg(ttl),
                name,
            }))
        }
        "getset" => w(DataCmd::GetSet { key: key(), value: a[1].clone() }),
        "getdel" => w(DataCmd::GetDel { key: key() }),
        "getex" => parse_getex(a),
        "mget" => r(ReadCmd::MGet { keys: a }),
        "mset" | "msetnx" => {
            if !a.len().is_multiple_of(2) {
                return Err(arity_error(spec.name));
            }
            let pairs = a.chunks_exact(2).map(|p| (p[0].clone(), p[1].clone())).collect();
            if spec.name == "mset" {
                w(DataCmd::MSet { pairs })
            } else {
                w(DataCmd::MSetNx { pairs })
            }
        }
        "append" => w(DataCmd::Append { key: key(), value: a[1].clone() }),
        "setrange" => {
            let offset = int(&a[1])?;
            if offset < 0 {
                return Err(err(errors::OFFSET_RANGE));
            }
            w(DataCmd::SetRange { key: key(), offset: offset as u64, value: a[2].clone() })
        }
        "getrange" | "substr" => {
            let start = int(&a[1])?;
            let end = int(&a[2])?;
            r(ReadCmd::GetRange { key: key(), start, end })
        }
        "strlen" => r(ReadCmd::StrLen { key: key() }),
        "incr" => w(DataCmd::IncrBy { key: key(), by: 1 }),
        "decr" => w(DataCmd::IncrBy { key: key(), by: -1 }),
        "incrby" => w(DataCmd::IncrBy { key: key(), by: int(&a[1])? }),
        "decrby" => {
            let n = int(&a[1])?;
            if n == i64::MIN {
                return Err(err(errors::DECR_OVERFLOW));
            }
            w(DataCmd::IncrBy { key: key(), by: -n })
        }
        "incrbyfloat" => w(DataCmd::IncrByFloat { key: key(), by: a[1].clone() }),
        "del" | "unlink" => w(DataCmd::Del { keys: a }),
        "exists" => r(ReadCmd::Exists { keys: a }),
        "touch" => r(ReadCmd::Touch { keys: a }),
        "type" => r(ReadCmd::Type { key: key() }),
        "ttl" | "pttl" | "expiretime" | "pexpiretime" => r(ReadCmd::Ttl {
            key: key(),
            form: TtlForm { millis: spec.name.starts_with('p'), absolute: spec.name.ends_with("expiretime") },
        }),
        "expire" | "pexpire" | "expireat" | "pexpireat" => parse_expire(spec.name, a),
        "persist" => w(DataCmd::Persist { key: key() }),
        "rename" => w(DataCmd::Rename { from: key(), to: a[1].clone() }),
        "renamenx" => w(DataCmd::RenameNx { from: key(), to: a[1].clone() }),
        "scan" => parse_scan(a),
        "keys" => r(ReadCmd::Keys { span: KeySpan::redis(), pattern: key() }),
        "dbsize" => r(ReadCmd::DbSize { span: KeySpan::redis() }),
        "flushall" | "flushdb" => {
            if a.len() > 1 || (a.len() == 1 && !is(&a[0], "sync") && !is(&a[0], "async")) {
                return Err(err(errors::SYNTAX));
            }
            w(DataCmd::Flush { span: KeySpan::redis() })
        }
        _ => parse_conn(spec.name, a).map(Command::Conn),
    }
}

fn parse_conn(name: &str, a: Vec<Vec<u8>>) -> Result<ConnCmd, Reply> {
    Ok(match name {
        "ping" => {
            if a.len() > 1 {
                return Err(arity_error("ping"));
            }
            ConnCmd::Ping(a.into_iter().next())
        }
        "echo" => ConnCmd::Echo(a[0].clone()),
        "hello" => parse_hello(a)?,
        "auth" => match a.len() {
            1 => ConnCmd::Auth { user: None, pass: a[0].clone() },
            2 => ConnCmd::Auth { user: Some(a[0].clone()), pass: a[1].clone() },
            _ => return Err(err(errors::SYNTAX)),
        },
        "select" => {
            let n = int(&a[0])?;
            if i32::try_from(n).is_err() {
                return Err(err("ERR value is out of range, value must between -2147483648 and 2147483647"));
            }
            ConnCmd::Select(n)
        }
        "quit" => ConnCmd::Quit,
        "reset" => ConnCmd::Reset,
        "client|id" => ConnCmd::ClientId,
        "client|info" => ConnCmd::ClientInfo,
        "client|list" => parse_client_list(&a[1..])?,
        "client|getname" => ConnCmd::ClientGetName,
        "client|setname" => {
            validate_client_name(&a[1])?;
            ConnCmd::ClientSetName(a[1].clone())
        }
        "time" => ConnCmd::Time,
        "command" => ConnCmd::CommandAll,
        "command|count" => ConnCmd::CommandCount,
        "command|info" => ConnCmd::CommandInfo(a[1..].to_vec()),
        "command|docs" => ConnCmd::CommandDocs(a[1..].to_vec()),
        "config|get" => ConnCmd::ConfigGet(a[1..].to_vec()),
        "info" => ConnCmd::Info(a),
        "cluster|slots" => ConnCmd::Cluster(ClusterCmd::Slots),
        "cluster|shards" => ConnCmd::Cluster(ClusterCmd::Shards),
        "cluster|nodes" => ConnCmd::Cluster(ClusterCmd::Nodes),
        "cluster|info" => ConnCmd::Cluster(ClusterCmd::Info),
        "cluster|myid" => ConnCmd::Cluster(ClusterCmd::MyId),
        "cluster|keyslot" => ConnCmd::Cluster(ClusterCmd::KeySlot(a[1].clone())),
        "readonly" => ConnCmd::ReadOnly,
        "readwrite" => ConnCmd::ReadWrite,
        "asking" => ConnCmd::Asking,
        // A container named alone fails its arity check before this point.
        other => unreachable!("command {other} is in the table but not parsed"),
    })
}

/// Which connections CLIENT LIST shows.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientFilter {
    All,
    Type(ClientType),
    Ids(Vec<u64>),
}

/// CLIENT LIST's options after `LIST`, as `networking.c` `clientCommand` reads them: `TYPE t`
/// alone, or `ID id [id ...]`.
fn parse_client_list(a: &[Vec<u8>]) -> Result<ConnCmd, Reply> {
    let filter = match a {
        [] => ClientFilter::All,
        [opt, t] if is(opt, "type") => match ClientType::by_name(t) {
            Some(t) => ClientFilter::Type(t),
            None => return Err(err_around("ERR Unknown client type '", cstr(t), "'")),
        },
        [opt, ids @ ..] if !ids.is_empty() && is(opt, "id") => {
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                // Redis's getLongLongFromObjectOrReply: a 64-bit signed integer.
                let n = parse_i64(id).ok_or_else(|| err("ERR Invalid client ID"))?;
                // No connection has an id below 1, and none is found.
                out.push(u64::try_from(n).unwrap_or(0));
            }
            ClientFilter::Ids(out)
        }
        _ => return Err(err(errors::SYNTAX)),
    };
    Ok(ConnCmd::ClientList(filter))
}

/// `networking.c` `validateClientName`: printable ASCII without spaces.
fn validate_client_name(name: &[u8]) -> Result<(), Reply> {
    if name.iter().any(|&b| !(b'!'..=b'~').contains(&b)) {
        return Err(err("ERR Client names cannot contain spaces, newlines or special characters."));
    }
    Ok(())
}

fn parse_hello(a: Vec<Vec<u8>>) -> Result<ConnCmd, Reply> {
    let mut proto = None;
    let mut next = 0;
    if let Some(v) = a.first() {
        let v = parse_i64(v).ok_or_else(|| err("ERR Protocol version is not an integer or out of range"))?;
        if !(2..=3).contains(&v) {
            return Err(err("NOPROTO unsupported protocol version"));
        }
        proto = Some(v);
        next = 1;
    }
    let (mut auth, mut setname) = (None, None);
    let mut j = next;
    while j < a.len() {
        let more = a.len() - 1 - j;
        if is(&a[j], "auth") && more >= 2 {
            auth = Some((a[j + 1].clone(), a[j + 2].clone()));
            j += 3;
        } else if is(&a[j], "setname") && more >= 1 {
            validate_client_name(&a[j + 1])?;
            setname = Some(a[j + 1].clone());
            j += 2;
        } else {
            return Err(err_around("ERR Syntax error in HELLO option '", cstr(&a[j]), "'"));
        }
    }
    Ok(ConnCmd::Hello { proto, auth, setname })
}

/// SET's and GETEX's options, as `parseExtendedStringArgumentsOrReply` reads them.
#[derive(Default)]
struct StringOpts {
    nx: bool,
    xx: bool,
    get: bool,
    keepttl: bool,
    persist: bool,
    /// Which of EX/PX/EXAT/PXAT, and its argument.
    expire: Option<(&'static str, Vec<u8>)>,
}

fn string_opts(a: &[Vec<u8>], is_set: bool) -> Result<StringOpts, Reply> {
    let mut o = StringOpts::default();
    let mut j = 0;
    while j < a.len() {
        let opt = &a[j];
        let next = a.get(j + 1);
        let has = |o: &StringOpts, w: &str| o.expire.as_ref().is_some_and(|(k, _)| *k == w);
        if is(opt, "nx") && !o.xx && is_set {
            o.nx = true;
        } else if is(opt, "xx") && !o.nx && is_set {
            o.xx = true;
        } else if is(opt, "get") && is_set {
            o.get = true;
        } else if is(opt, "keepttl") && !o.persist && o.expire.is_none() && is_set {
            o.keepttl = true;
        } else if is(opt, "persist") && !is_set && o.expire.is_none() && !o.keepttl {
            o.persist = true;
        } else if let Some(next) = next.filter(|_| !o.keepttl && !o.persist) {
            // EX may repeat (the last wins) but never mixes with PX, EXAT or PXAT.
            let word = ["ex", "px", "exat", "pxat"]
                .into_iter()
                .find(|w| is(opt, w) && ["ex", "px", "exat", "pxat"].iter().all(|x| x == w || !has(&o, x)));
            match word {
                Some(w) => {
                    o.expire = Some((w, next.clone()));
                    j += 1;
                }
                None => return Err(err(errors::SYNTAX)),
            }
        } else {
            return Err(err(errors::SYNTAX));
        }
        j += 1;
    }
    Ok(o)
}

fn ttl_arg(word: &str, n: i64) -> TtlArg {
    match word {
        "ex" => TtlArg::Ex(n),
        "px" => TtlArg::Px(n),
        "exat" => TtlArg::ExAt(n),
        _ => TtlArg::PxAt(n),
    }
}

fn parse_set(a: Vec<Vec<u8>>) -> Result<Command, Reply> {
    let o = string_opts(&a[2..], true)?;
    let ttl = match (&o.expire, o.keepttl) {
        (Some((w, n)), _) => SetTtl::Arg(ttl_arg(w, int(n)?)),
        (None, true) => SetTtl::Keep,
        (None, false) => SetTtl::None,
    };
    let cond = if o.nx {
        SetCond::IfAbsent
    } else if o.xx {
        SetCond::IfPresent
    } else {
        SetCond::Always
    };
    let mut a = a.into_iter();
    let key = a.next().expect("arity checked");
    let value = a.next().expect("arity checked");
    Ok(Command::Write(WriteReq::Set { key, value, cond, get: o.get, ttl, name: SetName::Set }))
}

fn parse_getex(a: Vec<Vec<u8>>) -> Result<Command, Reply> {
    let o = string_opts(&a[1..], false)?;
    let ttl = match &o.expire {
        Some((w, n)) => match parse_i64(n) {
            Some(n) => GetExTtl::Arg(ttl_arg(w, n)),
            None => GetExTtl::Bad(errors::NOT_INTEGER.into()),
        },
        None if o.persist => GetExTtl::Persist,
        None => GetExTtl::None,
    };
    Ok(Command::Write(WriteReq::GetEx { key: a[0].clone(), ttl }))
}

fn parse_expire(name: &str, a: Vec<Vec<u8>>) -> Result<Command, Reply> {
    let (mut nx, mut xx, mut gt, mut lt) = (false, false, false, false);
    for opt in &a[2..] {
        if is(opt, "nx") {
            nx = true;
        } else if is(opt, "xx") {
            xx = true;
        } else if is(opt, "gt") {
            gt = true;
        } else if is(opt, "lt") {
            lt = true;
        } else {
            return Err(err_around("ERR Unsupported option ", cstr(opt), ""));
        }
    }
    if nx && (xx || gt || lt) {
        return Err(err(errors::NX_XX_GT_LT));
    }
    if gt && lt {
        return Err(err(errors::GT_LT));
    }
    let amount = int(&a[1])?;
    let kind = match name {
        "expire" => ExpireKind::Expire,
        "pexpire" => ExpireKind::PExpire,
        "expireat" => ExpireKind::ExpireAt,
        _ => ExpireKind::PExpireAt,
    };
    Ok(Command::Write(WriteReq::Expire { key: a[0].clone(), amount, kind, cond: ExpireCond { nx, xx, gt, lt } }))
}

/// SCAN's cursor as `strtoul` reads it (`db.c` `parseScanCursorOrReply`).
fn scan_cursor(arg: &[u8]) -> Option<u64> {
    let s = cstr(arg);
    if s.first().is_some_and(|b| b.is_ascii_whitespace()) {
        return None;
    }
    let (neg, digits) = match s.first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if s.is_empty() {
        return Some(0);
    }
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut v: u64 = 0;
    for d in digits {
        v = v.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    Some(if neg { v.wrapping_neg() } else { v })
}

fn parse_scan(a: Vec<Vec<u8>>) -> Result<Command, Reply> {
    let cursor = scan_cursor(&a[0]).ok_or_else(|| err(errors::INVALID_CURSOR))?;
    let mut req = ScanReq { cursor, count: 10, pattern: None, kind: None };
    let mut i = 1;
    while i < a.len() {
        let more = a.len() - i;
        if is(&a[i], "count") && more >= 2 {
            let n = int(&a[i + 1])?;
            if n < 1 {
                return Err(err(errors::SYNTAX));
            }
            req.count = usize::try_from(n).unwrap_or(usize::MAX);
        } else if is(&a[i], "match") && more >= 2 {
            req.pattern = Some(a[i + 1].clone());
        } else if is(&a[i], "type") && more >= 2 {
            req.kind = Some(a[i + 1].clone());
        } else {
            return Err(err(errors::SYNTAX));
        }
        i += 2;
    }
    Ok(Command::Scan(req))
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_range::cmd::{DataCmd, SetExpiry};

    fn p(line: &str) -> Result<Command, Reply> {
        parse(line.split(' ').map(|w| w.as_bytes().to_vec()).collect())
    }

    fn b(s: &str) -> Vec<u8> {
        s.as_bytes().to_vec()
    }

    #[test]
    fn set_options_become_a_typed_request() {
        assert_eq!(
            p("set k v nx GET px 250"),
            Ok(Command::Write(WriteReq::Set {
                key: b("k"),
                value: b("v"),
                cond: SetCond::IfAbsent,
                get: true,
                ttl: SetTtl::Arg(TtlArg::Px(250)),
                name: SetName::Set,
            }))
        );
        // The leader resolves the relative time.
        let Ok(Command::Write(req)) = p("SET k v EX 10") else { panic!() };
        assert!(matches!(req.resolve(1_000), Ok(DataCmd::Set { expiry: SetExpiry::At(11_000), .. })));
    }

    #[test]
    fn expire_getex_scan_and_decrby() {
        assert_eq!(
            p("PEXPIRE k 5 xx lt"),
            Ok(Command::Write(WriteReq::Expire {
                key: b("k"),
                amount: 5,
                kind: ExpireKind::PExpire,
                cond: ExpireCond { nx: false, xx: true, gt: false, lt: true },
            }))
        );
        assert_eq!(
            p("GETEX k EX nope"),
            Ok(Command::Write(WriteReq::GetEx { key: b("k"), ttl: GetExTtl::Bad(errors::NOT_INTEGER.into()) }))
        );
        assert_eq!(
            p("scan 7 match a* count 3 type string"),
            Ok(Command::Scan(ScanReq { cursor: 7, count: 3, pattern: Some(b("a*")), kind: Some(b("string")) }))
        );
        assert_eq!(p("DECRBY k 5"), Ok(Command::Write(WriteReq::Cmd(DataCmd::IncrBy { key: b("k"), by: -5 }))));
        assert_eq!(p("DECRBY k -9223372036854775808"), Err(Reply::err("ERR decrement would overflow")));
    }

    #[test]
    fn names_arity_and_subcommands() {
        assert_eq!(p("nosuch a"), Err(Reply::err("ERR unknown command 'nosuch', with args beginning with: 'a' ")));
        assert_eq!(p("GET"), Err(Reply::err("ERR wrong number of arguments for 'get' command")));
        assert_eq!(p("client setname"), Err(Reply::err("ERR wrong number of arguments for 'client|setname' command")));
        assert_eq!(p("Client Nope"), Err(Reply::err("ERR unknown subcommand 'Nope'. Try CLIENT HELP.")));
        assert_eq!(p("CLIENT ID"), Ok(Command::Conn(ConnCmd::ClientId)));
        assert_eq!(p("client info"), Ok(Command::Conn(ConnCmd::ClientInfo)));
        let list = |f| Ok(Command::Conn(ConnCmd::ClientList(f)));
        assert_eq!(p("CLIENT LIST"), list(ClientFilter::All));
        assert_eq!(p("CLIENT LIST type Replica"), list(ClientFilter::Type(ClientType::Replica)));
        assert_eq!(p("CLIENT LIST TYPE slave"), list(ClientFilter::Type(ClientType::Replica)));
        assert_eq!(p("CLIENT LIST ID 3 1 -2"), list(ClientFilter::Ids(vec![3, 1, 0])));
        assert_eq!(p("CLIENT LIST TYPE"), Err(Reply::err("ERR syntax error")));
        assert_eq!(p("CLIENT LIST TYPE normal x"), Err(Reply::err("ERR syntax error")));
        assert_eq!(p("CLIENT LIST ID"), Err(Reply::err("ERR syntax error")));
        assert_eq!(p("CLIENT LIST ID 1 +x"), Err(Reply::err("ERR Invalid client ID")));
        assert_eq!(p("CLIENT LIST TYPE bad"), Err(Reply::err("ERR Unknown client type 'bad'")));
        assert_eq!(p("KEYS *"), Ok(Command::Read(ReadCmd::Keys { span: KeySpan::redis(), pattern: b("*") })));
    }
}
