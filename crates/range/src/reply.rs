//! Protocol-neutral replies. The RESP layer (`cairn_api::redis::resp`) encodes them for RESP2
//! or RESP3; where the two differ (nulls, maps, sets, doubles, booleans) the variant says
//! what the value is and the encoder picks the form.

/// One reply to one command.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Reply {
    /// `+OK`: a status line; never contains `\r` or `\n`.
    Simple(String),
    /// `-ERR ...`: the full error line including its code (`ERR`, `WRONGTYPE`, ...). Bytes,
    /// because Redis echoes client bytes into some errors (unknown command names).
    Error(#[serde(with = "serde_bytes")] Vec<u8>),
    Int(i64),
    Bulk(#[serde(with = "serde_bytes")] Vec<u8>),
    /// A missing value: `$-1` in RESP2, `_` in RESP3.
    Null,
    /// A missing aggregate: `*-1` in RESP2, `_` in RESP3.
    NullArray,
    Array(Vec<Reply>),
    /// A flat array in RESP2, `%` in RESP3.
    Map(Vec<(Reply, Reply)>),
    /// An array in RESP2, `~` in RESP3.
    Set(Vec<Reply>),
    /// A bulk string in RESP2, `,` in RESP3.
    Double(f64),
    /// `:1`/`:0` in RESP2, `#t`/`#f` in RESP3.
    Bool(bool),
    /// Text with a three-letter format (`txt`, `mkd`): a bulk string in RESP2, `=` in RESP3.
    Verbatim {
        format: [u8; 3],
        #[serde(with = "serde_bytes")]
        text: Vec<u8>,
    },
}

impl Reply {
    pub fn ok() -> Reply {
        Reply::Simple("OK".into())
    }

    pub fn err(text: impl Into<Vec<u8>>) -> Reply {
        Reply::Error(text.into())
    }

    pub fn bulk(b: impl Into<Vec<u8>>) -> Reply {
        Reply::Bulk(b.into())
    }

    pub fn is_error(&self) -> bool {
        matches!(self, Reply::Error(_))
    }
}

/// Redis's error lines, byte for byte (Redis 7.0 `server.c`, `t_string.c`, `expire.c`,
/// `object.c`, `db.c`).
pub mod errors {
    pub const WRONGTYPE: &str = "WRONGTYPE Operation against a key holding the wrong kind of value";
    pub const SYNTAX: &str = "ERR syntax error";
    pub const NOT_INTEGER: &str = "ERR value is not an integer or out of range";
    pub const NOT_FLOAT: &str = "ERR value is not a valid float";
    pub const OVERFLOW: &str = "ERR increment or decrement would overflow";
    pub const DECR_OVERFLOW: &str = "ERR decrement would overflow";
    pub const NAN_OR_INF: &str = "ERR increment would produce NaN or Infinity";
    pub const TOO_BIG: &str = "ERR string exceeds maximum allowed size (proto-max-bulk-len)";
    pub const OFFSET_RANGE: &str = "ERR offset is out of range";
    pub const NO_SUCH_KEY: &str = "ERR no such key";
    pub const INVALID_CURSOR: &str = "ERR invalid cursor";
    pub const NX_XX_GT_LT: &str = "ERR NX and XX, GT or LT options at the same time are not compatible";
    pub const GT_LT: &str = "ERR GT and LT options at the same time are not compatible";

    /// `ERR invalid expire time in 'set' command`; `cmd` is the lower-case command name.
    pub fn invalid_expire(cmd: &str) -> String {
        format!("ERR invalid expire time in '{cmd}' command")
    }
}
