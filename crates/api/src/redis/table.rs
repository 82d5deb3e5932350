//! The command table: what COMMAND COUNT/INFO/DOCS report and what the parser checks arity
//! against. Names, arity, flags, key positions, ACL categories, tips and docs fields are
//! Redis 7.0's, read from a real `redis-server` (`COMMAND INFO`/`COMMAND DOCS`) when this
//! table was written; `tests/redis_differential.rs` compares them with the running server.
//! Argument docs (COMMAND DOCS `arguments`) are not reported yet.

/// One command or subcommand.
#[derive(Debug)]
pub struct CommandSpec {
    /// Lower case; a subcommand is `container|sub`.
    pub name: &'static str,
    /// Redis's arity: `n` exactly n arguments (the name included), `-n` at least n.
    pub arity: i64,
    pub flags: &'static [&'static str],
    pub first_key: i64,
    pub last_key: i64,
    pub step: i64,
    pub acl: &'static [&'static str],
    pub tips: &'static [&'static str],
    pub summary: &'static str,
    pub since: &'static str,
    pub group: &'static str,
    pub complexity: &'static str,
    pub key_specs: &'static [KeySpec],
    pub subcommands: &'static [&'static CommandSpec],
}

/// Where a command's keys are, as COMMAND INFO reports it. Every supported command finds its
/// keys by index and range (Redis also has keyword and keynum searches).
#[derive(Debug)]
pub struct KeySpec {
    /// Empty when Redis reports no notes.
    pub notes: &'static str,
    pub flags: &'static [&'static str],
    /// begin_search index: the first key's argument position.
    pub index: i64,
    /// find_keys range: the last key relative to the first (-1: the last argument).
    pub last_key: i64,
    pub key_step: i64,
    pub limit: i64,
}

impl CommandSpec {
    /// Whether `argc` arguments (the name included) fit the arity.
    pub fn arity_ok(&self, argc: usize) -> bool {
        let argc = argc as i64;
        if self.arity >= 0 {
            argc == self.arity
        } else {
            argc >= -self.arity
        }
    }

    pub fn subcommand(&self, name: &[u8]) -> Option<&'static CommandSpec> {
        self.subcommands.iter().copied().find(|s| {
            let sub = s.name.split_once('|').map_or("", |(_, sub)| sub);
            sub.as_bytes().eq_ignore_ascii_case(name)
        })
    }
}

/// The top-level command named `name` (any case).
pub fn lookup(name: &[u8]) -> Option<&'static CommandSpec> {
    COMMANDS.iter().find(|c| c.name.as_bytes().eq_ignore_ascii_case(name))
}

static CLIENT_SETNAME: CommandSpec = CommandSpec {
    name: "client|setname",
    arity: 3,
    flags: &["noscript", "loading", "stale"],
    first_key: 0,
    last_key: 0,
    step: 0,
    acl: &["@slow", "@connection"],
    tips: &[],
    summary: "Set the current connection name",
    since: "2.6.9",
    group: "connection",
    complexity: "O(1)",
    key_specs: &[],
    subcommands: &[],
};
static CLIENT_GETNAME: CommandSpec = CommandSpec {
    name: "client|getname",
    arity: 2,
    flags: &["noscript", "loading", "stale"],
    first_key: 0,
    last_key: 0,
    step: 0,
    acl: &["@slow", "@connection"],
    tips: &[],
    summary: "Get the current connection name",
    since: "2.6.9",
    group: "connection",
    complexity: "O(1)",
    key_specs: &[],
    subcommands: &[],
};
/// CLUSTER's subcommands that cairn answers (Redis 7.0's COMMAND INFO and DOCS).
macro_rules! cluster_sub {
    ($id:ident, $name:literal, $arity:literal, $tips:expr, $summary:literal, $complexity:literal) => {
        static $id: CommandSpec = CommandSpec {
            name: $name,
            arity: $arity,
            flags: &["stale"],
            first_key: 0,
            last_key: 0,
            step: 0,
            acl: &["@slow"],
            tips: $tips,
            summary: $summary,
            since: "3.0.0",
            group: "cluster",
            complexity: $complexity,
            key_specs: &[],
            subcommands: &[],
        };
    };
}
cluster_sub!(
    CLUSTER_SLOTS,
    "cluster|slots",
    2,
    &["nondeterministic_output"],
    "Get array of Cluster slot to node mappings",
    "O(N) where N is the total number of Cluster nodes"
);
cluster_sub!(
    CLUSTER_NODES,
    "cluster|nodes",
    2,
    &["nondeterministic_output"],
    "Get Cluster config for the node",
    "O(N) where N is the total number of Cluster nodes"
);
cluster_sub!(
    CLUSTER_INFO,
    "cluster|info",
    2,
    &["nondeterministic_output"],
    "Provides info about Redis Cluster node state",
    "O(1)"
);
cluster_sub!(CLUSTER_MYID, "cluster|myid", 2, &[], "Return the node id", "O(1)");
cluster_sub!(
    CLUSTER_KEYSLOT,
    "cluster|keyslot",
    3,
    &[],
    "Returns the hash slot of the specified key",
    "O(N) where N is the number of bytes in the key"
);
static CLUSTER_SHARDS: CommandSpec = CommandSpec {
    name: "cluster|shards",
    arity: 2,
    flags: &["stale"],
    first_key: 0,
    last_key: 0,
    step: 0,
    acl: &["@slow"],
    tips: &["nondeterministic_output"],
    summary: "Get array of cluster slots to node mappings",
    since: "7.0.0",
    group: "cluster",
    complexity: "O(N) where N is the total number of cluster nodes",
    key_specs: &[],
    subcommands: &[],
};
static CLIENT_INFO: CommandSpec = CommandSpec {
    name: "client|info",
    arity: 2,
    flags: &["noscript", "loading", "stale"],
    first_key: 0,
    last_key: 0,
    step: 0,
    acl: &["@slow", "@connection"],
    tips: &["nondeterministic_output"],
    summary: "Returns information about the current client connection.",
    since: "6.2.0",
    group: "connection",
    complexity: "O(1)",
    key_specs: &[],
    subcommands: &[],
};
static CLIENT_LIST: CommandSpec = CommandSpec {
    name: "client|list",
    arity: -2,
    flags: &["admin", "noscript", "loading", "stale"],
    first_key: 0,
    last_key: 0,
    step: 0,
    acl: &["@admin", "@slow", "@dangerous", "@connection"],
    tips: &["nondeterministic_output"],
    summary: "Get the list of client connections",
    since: "2.4.0",
    group: "connection",
    complexity: "O(N) where N is the number of client connections",
    key_specs: &[],
    subcommands: &[],
};
static CLIENT_ID: CommandSpec = CommandSpec {
    name: "client|id",
    arity: 2,
    flags: &["noscript", "loading", "stale"],
    first_key: 0,
    last_key: 0,
    step: 0,
    acl: &["@slow", "@connection"],
    tips: &[],
    summary: "Returns the client ID for the current connection",
    since: "5.0.0",
    group: "connection",
    complexity: "O(1)",
    key_specs: &[],
    subcommands: &[],
};
static COMMAND_COUNT: CommandSpec = CommandSpec {
    name: "command|count",
    arity: 2,
    flags: &["loading", "stale"],
    first_key: 0,
    last_key: 0,
    step: 0,
    acl: &["@slow", "@connection"],
    tips: &[],
    summary: "Get total number of Redis commands",
    since: "2.8.13",
    group: "server",
    complexity: "O(1)",
    key_specs: &[],
    subcommands: &[],
};
static COMMAND_DOCS: CommandSpec = CommandSpec {
    name: "command|docs",
    arity: -2,
    flags: &["loading", "stale"],
    first_key: 0,
    last_key: 0,
    step: 0,
    acl: &["@slow", "@connection"],
    tips: &["nondeterministic_output_order"],
    summary: "Get array of specific Redis command documentation",
    since: "7.0.0",
    group: "server",
    complexity: "O(N) where N is the number of commands to look up",
    key_specs: &[],
    subcommands: &[],
};
static COMMAND_INFO: CommandSpec = CommandSpec {
    name: "command|info",
    arity: -2,
    flags: &["loading", "stale"],
    first_key: 0,
    last_key: 0,
    step: 0,
    acl: &["@slow", "@connection"],
    tips: &["nondeterministic_output_order"],
    summary: "Get array of specific Redis command details, or all when no argument is given.",
    since: "2.8.13",
    group: "server",
    complexity: "O(N) where N is the number of commands to look up",
    key_specs: &[],
    subcommands: &[],
};
static CONFIG_GET: CommandSpec = CommandSpec {
    name: "config|get",
    arity: -3,
    flags: &["admin", "noscript", "loading", "stale"],
    first_key: 0,
    last_key: 0,
    step: 0,
    acl: &["@admin", "@slow", "@dangerous"],
    tips: &[],
    summary: "Get the values of configuration parameters",
    since: "2.0.0",
    group: "server",
    complexity: "O(N) when N is the number of configuration parameters provided",
    key_specs: &[],
    subcommands: &[],
};

/// Every supported top-level command.
pub static COMMANDS: &[CommandSpec] = &[
    CommandSpec { name: "get", arity: 2, flags: &["readonly", "fast"], first_key: 1, last_key: 1, step: 1, acl: &["@read", "@string", "@fast"], tips: &[], summary: "Get the value of a key", since: "1.0.0", group: "string", complexity: "O(1)", key_specs: &[KeySpec { notes: "", flags: &["RO", "access"], index: 1, last_key: 0, key_step: 1, limit: 0 }], subcommands: &[] },
    CommandSpec { name: "set", arity: -3, flags: &["write", "denyoom"], first_key: 1, last_key: 1, step: 1, acl: &["@write", "@string", "@slow"], tips: &[], summary: "Set the string value of a key", since: "1.0.0", group: "string", complexity: "O(1)", key_specs: &[KeySpec { notes: "RW and ACCESS due to the optional `GET` argument", flags: &["RW", "access", "update", "variable_flags"], index: 1, last_key: 0, key_step: 1, limit: 0 }], subcommands: &[] },
    CommandSpec { name: "setnx", arity: 3, flags: &["write", "denyoom", "fast"], first_key: 1, last_key: 1, step: 1, acl: &["@write", "@string", "@fast"], tips: &[], summary: "Set the value of a key, only if the key does not exist", since: "1.0.0", group: "string", complexity: "O(1)", key_specs: &[KeySpec { notes: "", flags: &["OW", "insert"], index: 1, last_key: 0, key_step: 1, limit: 0 }], subcommands: &[] },
    CommandSpec { name: "setex", arity: 4, flags: &["write", "denyoom"], first_key: 1, last_key: 1, step: 1, acl: &["@write", "@string", "@slow"], tips: &[], summary: "Set the value and expiration of a key", since: "2.0.0", group: "string", complexity: "O(1)", key_specs: &[KeySpec { notes: "", flags: &["OW", "update"], index: 1, last_key: 0, key_step: 1, limit: 0 }], subcommands: &[] },
    CommandSpec { name: "psetex", arity: 4, flags: &["write", "denyoom"], first_key: 1, last_key: 1, step: 1, acl: &["@write", "@string", "@slow"], tips: &[], summary: "Set the value and expiration in milliseconds of a key", since: "2.6.0", group: "string", complexity: "O(1)", key_specs: &[KeySpec { notes: "", flags: &["OW", "update"], index: 1, last_key: 0, key_step: 1, limit: 0 }], subcommands: &[] },
    CommandSpec { name: "getset", arity: 3, flags: &["write", "denyoom", "fast"], first_key: 1, last_key: 1, step: 1, acl: &["@write", "@string", "@fast"], tips: &[], summary: "Set the string value of a key and return its old value", since: "1.0.0", group: "string", complexity: "O(1)", key_specs: &[KeySpec { notes: "", flags: &["RW", "access", "update"], index: 1, last_key: 0, key_step: 1, limit: 0 }], subcommands: &[] },
    CommandSpec { name: "getdel", arity: 2, flags: &["write", "fast"], first_key: 1, last_key: 1, step: 1, acl: &["@write", "@string", "@fast"], tips: &[], summary: "Get the value of a key and delete the key", since: "6.2.0", group: "string", complexity: "O(1)", key_specs: &[KeySpec { notes: "", flags: &["RW", "access", "delete"], index: 1, last_key: 0, key_step: 1, limit: 0 }], subcommands: &[] },
    CommandSpec { name: "getex", arity: -2, flags: &["write", "fast"], first_key: 1, last_key: 1, step: 1, acl: &["@write", "@string", "@fast"], tips: &[], summary: "Get the value of a key and optionally set its expiration", since: "6.2.0", group: "string", complexity: "O(1)", key_specs: &[KeySpec { notes: "RW and UPDATE because it changes the TTL", flags: &["RW", "access", "update"], index: 1, last_key: 0, key_step: 1, limit: 0 }], subcommands: &[] },
    CommandSpec { name: "mget", arity: -2, flags: &["readonly", "fast"], first_key: 1, last_key: -1, step: 1, acl: &["@read", "@string", "@fast"], tips: &["request_policy:multi_shard"], summary: "Get the values of all the given keys", since: "1.0.0", group: "string", complexity: "O(N) where N is the number of keys to retrieve.", key_specs: &[KeySpec { notes: "", flags: &["RO", "access"], index: 1, last_key: -1, key_step: 1, limit: 0 }], subcommands: &[] },
    CommandSpec { name: "mset", arity: -3, flags: &["write", "denyoom"], first_key: 1, last_key: -1, step: 2, acl: &["@write", "@string", "@slow"], tips: &["request_policy:multi_shard", "response_policy:all_succeeded"], summary: "Set multiple keys to multiple values", since: "1.0.1", group: "string", complexity: "O(N) where N is the number of keys to set.", key_specs: &[KeySpec { notes: "", flags: &["OW", "update"], index: 1, last_key: -1, key_step: 2, limit: 0 }], subcommands: &[] },
    CommandSpec { name: "msetnx", arity: -3, flags: &["write", "denyoom"], first_key: 1, last_key: -1, step: 2, acl: &["@write", "@string", "@slow"], tips: &["request_policy:multi_shard", "response_policy:agg_min"], summary: "Set multiple keys to multiple values, only if none of the keys exist", since: "1.0.1", group: "string", complexity: "O(N) where N is the number of keys to set.", key_specs: &[KeySpec { notes: "", flags: &["OW", "insert"], index: 1, last_key: -1, key_step: 2, limit: 0 }], subcommands: &[] },
    CommandSpec { name: "append", arity: 3, flags: &["write", "denyoom", "fast"], first_key: 1, last_key: 1, step: 1, acl: &["@write", "@string", "@fast"], tips: &[], summary: "Append a value to a key", since: "2.0.0", group: "string", complexity: "O(1). The amortized time complexity is O(1) assuming the appended value is small and the already present value is of any size, since the dynamic string library used by Redis will double the free space available on every reallocation.", key_specs: &[KeySpec { notes: "", flags: &["RW", "insert"], index: 1, last_key: 0, key_step: 1, limit: 0 }], subcommands: &[] },
    CommandSpec { name: "setrange", arity: 4, flags: &["write", "denyoom"], first_key: 1, last_key: 1, step: 1, acl: &["@write", "@string", "@slow"], tips: &[], summary: "Overwrite part of a string at key starting at the specified offset", since: "2.2.0", group: "string", complexity: "O(1), not counting the time taken to copy the new string in place. Usually, this string is very small so the amortized complexity is O(1). Otherwise, complexity is O(M) with M being the length of the value argument.", key_specs: &[KeySpec { notes: "", flags: &["RW", "update"], index: 1, last_key: 0, key_step: 1, limit: 0 }], subcommands: &[] },
    CommandSpec { name: "getrange", arity: 4, flags: &["readonly"], first_key: 1, last_key: 1, step: 1, acl: &["@read", "@string", "@slow"], tips: &[], summary: "Get a substring of the string stored at a key", since: "2.4.0", group: "string", complexity: "O(N) where N is the length of the returned string. The complexity is ultimately determined by the returned length, but because creating a substring from an existing string is very cheap, it can be considered O(1) for small strings.", key_specs: &[KeySpec { notes: "", flags: &["RO", "access"], index: 1, last_key: 0, key_step: 1, limit: 0 }], subcommands: &[] },
    CommandSpec { name: "substr", arity: 4, flags: &["readonly"], first_key: 1, last_key: 1, step: 1, acl: &["@read", "@string", "@slow"], tips: &[], summary: "Get a substring of the string stored at a key", since: "1.0.0", group: "string", complexity: "O(N) where N is the length of the returned string. The complexity is ultimately determined by the returned length, but because creating a substring from an existing string is very cheap, it can be considered O(1) for small strings.", key_specs: &[KeySpec { notes: "", flags: &["RO", "access"], index: 1, last_key: 0, key_step: 1, limit: 0 }], subcommands: &[] },
    CommandSpec { name: "strlen", arity: 2, flags: &["readonly", "fast"], first_key: 1, last_key: 1, step: 1, acl: &["@read", "@string", "@fast"], tips: &[], summary: "Get the length of the value stored in a key", since: "2.2.0", group: "string", complexity: "O(1)", key_specs: &[KeySpec { notes: "", flags: &["RO"], index: 1, last_key: 0, key_step: 1, limit: 0 }], subcommands: &[] },
    CommandSpec { name: "incr", arity: 2, flags: &["write", "denyoom", "fast"], first_key: 1, last_key: 1, step: 1, acl: &["@write", "@string", "@fast"], tips: &[], summary: "Increment the integer value of a key by one", since: "1.0.0", group: "string", complexity: "O(1)", key_specs: &[KeySpec { notes: "", flags: &["RW", "access", "update"], index: 1, last_key: 0, key_step: 1, limit: 0 }], subcommands: &[] },
    CommandSpec { name: "decr", arity: 2, flags: &["write", "denyoom", "fast"], first_key: 1, last_key: 1, step: 1, acl: &["@write", "@string", "@fast"], tips: &[], summary: "Decrement the integer value of a key by one", since: "1.0.0", group: "string", complexity: "O(1)", key_specs: &[KeySpec { notes: "", flags: &["RW", "access", "update"], index: 1, last_key: 0, key_step: 1, limit: 0 }], subcommands: &[] },
    CommandSpec { name: "incrby", arity: 3, flags: &["write", "denyoom", "fast"], first_key: 1, last_key: 1, step: 1, acl: &["@write", "@string", "@fast"], tips: &[], summary: "Increment the integer value of a key by the given amount", since: "1.0.0", group: "string", complexity: "O(1)", key_specs: &[KeySpec { notes: "", flags: &["RW", "access", "update"], index: 1, last_key: 0, key_step: 1, limit: 0 }], subcommands: &[] },
    CommandSpec { name: "decrby", arity: 3, flags: &["write", "denyoom", "fast"], first_key: 1, last_key: 1, step: 1, acl: &["@write", "@string", "@fast"], tips: &[], summary: "Decrement the integer value of a key by the given number", since: "1.0.0", group: "string", complexity: "O(1)", key_specs: &[KeySpec { notes: "", flags: &["RW", "access", "update"], index: 1, last_key: 0, key_step: 1, limit: 0 }], subcommands: &[] },
    CommandSpec { name: "incrbyfloat", arity: 3, flags: &["write", "denyoom", "fast"], first_key: 1, last_key: 1, step: 1, acl: &["@write", "@string", "@fast"], tips: &[], summary: "Increment the float value of a key by the given amount", since: "2.6.0", group: "string", complexity: "O(1)", key_specs: &[KeySpec { notes: "", flags: &["RW", "access", "update"], index: 1, last_key: 0, key_step: 1, limit: 0 }], subcommands: &[] },
    CommandSpec { name: "del", arity: -2, flags: &["write"], first_key: 1, last_key: -1, step: 1, acl: &["@keyspace", "@write", "@slow"], tips: &["request_policy:multi_shard", "response_policy:agg_sum"], summary: "Delete a key", since: "1.0.0", group: "generic", complexity: "O(N) where N is the number of keys that will be removed. When a key to remove holds a value other than a string, the individual complexity for this key is O(M) where M is the number of elements in the list, set, sorted set or hash. Removing a single key that holds a string value is O(1).", key_specs: &[KeySpec { notes: "", flags: &["RM", "delete"], index: 1, last_key: -1, key_step: 1, limit: 0 }], subcommands: &[] },
    CommandSpec { name: "unlink", arity: -2, flags: &["write", "fast"], first_key: 1, last_key: -1, step: 1, acl: &["@keyspace", "@write", "@fast"], tips: &["request_policy:multi_shard", "response_policy:agg_sum"], summary: "Delete a key asynchronously in another thread. Otherwise it is just as DEL, but non blocking.", since: "4.0.0", group: "generic", complexity: "O(1) for each key removed regardless of its size. Then the command does O(N) work in a different thread in order to reclaim memory, where N is the number of allocations the deleted objects where composed of.", key_specs: &[KeySpec { notes: "", flags: &["RM", "delete"], index: 1, last_key: -1, key_step: 1, limit: 0 }], subcommands: &[] },
    CommandSpec { name: "exists", arity: -2, flags: &["readonly", "fast"], first_key: 1, last_key: -1, step: 1, acl: &["@keyspace", "@read", "@fast"], tips: &["request_policy:multi_shard", "response_policy:agg_sum"], summary: "Determine if a key exists", since: "1.0.0", group: "generic", complexity: "O(N) where N is the number of keys to check.", key_specs: &[KeySpec { notes: "", flags: &["RO"], index: 1, last_key: -1, key_step: 1, limit: 0 }], subcommands: &[] },
    CommandSpec { name: "type", arity: 2, flags: &["readonly", "fast"], first_key: 1, last_key: 1, step: 1, acl: &["@keyspace", "@read", "@fast"], tips: &[], summary: "Determine the type stored at key", since: "1.0.0", group: "generic", complexity: "O(1)", key_specs: &[KeySpec { notes: "", flags: &["RO"], index: 1, last_key: 0, key_step: 1, limit: 0 }], subcommands: &[] },
    CommandSpec { name: "ttl", arity: 2, flags: &["readonly", "fast"], first_key: 1, last_key: 1, step: 1, acl: &["@keyspace", "@read", "@fast"], tips: &["nondeterministic_output"], summary: "Get the time to live for a key in seconds", since: "1.0.0", group: "generic", complexity: "O(1)", key_specs: &[KeySpec { notes: "", flags: &["RO", "access"], index: 1, last_key: 0, key_step: 1, limit: 0 }], subcommands: &[] },
    CommandSpec { name: "pttl", arity: 2, flags: &["readonly", "fast"], first_key: 1, last_key: 1, step: 1, acl: &["@keyspace", "@read", "@fast"], tips: &["nondeterministic_output"], summary: "Get the time to live for a key in milliseconds", since: "2.6.0", group: "generic", complexity: "O(1)", key_specs: &[KeySpec { notes: "", flags: &["RO", "access"], index: 1, last_key: 0, key_step: 1, limit: 0 }], subcommands: &[] },
    CommandSpec { name: "expiretime", arity: 2, flags: &["readonly", "fast"], first_key: 1, last_key: 1, step: 1, acl: &["@keyspace", "@read", "@fast"], tips: &[], summary: "Get the expiration Unix timestamp for a key", since: "7.0.0", group: "generic", complexity: "O(1)", key_specs: &[KeySpec { notes: "", flags: &["RO", "access"], index: 1, last_key: 0, key_step: 1, limit: 0 }], subcommands: &[] },
    CommandSpec { name: "pexpiretime", arity: 2, flags: &["readonly", "fast"], first_key: 1, last_key: 1, step: 1, acl: &["@keyspace", "@read", "@fast"], tips: &[], summary: "Get the expiration Unix timestamp for a key in milliseconds", since: "7.0.0", group: "generic", complexity: "O(1)", key_specs: &[KeySpec { notes: "", flags: &["RO", "access"], index: 1, last_key: 0, key_step: 1, limit: 0 }], subcommands: &[] },
    CommandSpec { name: "expire", arity: -3, flags: &["write", "fast"], first_key: 1, last_key: 1, step: 1, acl: &["@keyspace", "@write", "@fast"], tips: &[], summary: "Set a key's time to live in seconds", since: "1.0.0", group: "generic", complexity: "O(1)", key_specs: &[KeySpec { notes: "", flags: &["RW", "update"], index: 1, last_key: 0, key_step: 1, limit: 0 }], subcommands: &[] },
    CommandSpec { name: "pexpire", arity: -3, flags: &["write", "fast"], first_key: 1, last_key: 1, step: 1, acl: &["@keyspace", "@write", "@fast"], tips: &[], summary: "Set a key's time to live in milliseconds", since: "2.6.0", group: "generic", complexity: "O(1)", key_specs: &[KeySpec { notes: "", flags: &["RW", "update"], index: 1, last_key: 0, key_step: 1, limit: 0 }], subcommands: &[] },
    CommandSpec { name: "expireat", arity: -3, flags: &["write", "fast"], first_key: 1, last_key: 1, step: 1, acl: &["@keyspace", "@write", "@fast"], tips: &[], summary: "Set the expiration for a key as a UNIX timestamp", since: "1.2.0", group: "generic", complexity: "O(1)", key_specs: &[KeySpec { notes: "", flags: &["RW", "update"], index: 1, last_key: 0, key_step: 1, limit: 0 }], subcommands: &[] },
    CommandSpec { name: "pexpireat", arity: -3, flags: &["write", "fast"], first_key: 1, last_key: 1, step: 1, acl: &["@keyspace", "@write", "@fast"], tips: &[], summary: "Set the expiration for a key as a UNIX timestamp specified in milliseconds", since: "2.6.0", group: "generic", complexity: "O(1)", key_specs: &[KeySpec { notes: "", flags: &["RW", "update"], index: 1, last_key: 0, key_step: 1, limit: 0 }], subcommands: &[] },
    CommandSpec { name: "persist", arity: 2, flags: &["write", "fast"], first_key: 1, last_key: 1, step: 1, acl: &["@keyspace", "@write", "@fast"], tips: &[], summary: "Remove the expiration from a key", since: "2.2.0", group: "generic", complexity: "O(1)", key_specs: &[KeySpec { notes: "", flags: &["RW", "update"], index: 1, last_key: 0, key_step: 1, limit: 0 }], subcommands: &[] },
    CommandSpec { name: "rename", arity: 3, flags: &["write"], first_key: 1, last_key: 2, step: 1, acl: &["@keyspace", "@write", "@slow"], tips: &[], summary: "Rename a key", since: "1.0.0", group: "generic", complexity: "O(1)", key_specs: &[KeySpec { notes: "", flags: &["RW", "access", "delete"], index: 1, last_key: 0, key_step: 1, limit: 0 }, KeySpec { notes: "", flags: &["OW", "update"], index: 2, last_key: 0, key_step: 1, limit: 0 }], subcommands: &[] },
    CommandSpec { name: "renamenx", arity: 3, flags: &["write", "fast"], first_key: 1, last_key: 2, step: 1, acl: &["@keyspace", "@write", "@fast"], tips: &[], summary: "Rename a key, only if the new key does not exist", since: "1.0.0", group: "generic", complexity: "O(1)", key_specs: &[KeySpec { notes: "", flags: &["RW", "access", "delete"], index: 1, last_key: 0, key_step: 1, limit: 0 }, KeySpec { notes: "", flags: &["OW", "insert"], index: 2, last_key: 0, key_step: 1, limit: 0 }], subcommands: &[] },
    CommandSpec { name: "touch", arity: -2, flags: &["readonly", "fast"], first_key: 1, last_key: -1, step: 1, acl: &["@keyspace", "@read", "@fast"], tips: &["request_policy:multi_shard", "response_policy:agg_sum"], summary: "Alters the last access time of a key(s). Returns the number of existing keys specified.", since: "3.2.1", group: "generic", complexity: "O(N) where N is the number of keys that will be touched.", key_specs: &[KeySpec { notes: "", flags: &["RO"], index: 1, last_key: -1, key_step: 1, limit: 0 }], subcommands: &[] },
    CommandSpec { name: "scan", arity: -2, flags: &["readonly"], first_key: 0, last_key: 0, step: 0, acl: &["@keyspace", "@read", "@slow"], tips: &["nondeterministic_output", "request_policy:special"], summary: "Incrementally iterate the keys space", since: "2.8.0", group: "generic", complexity: "O(1) for every call. O(N) for a complete iteration, including enough command calls for the cursor to return back to 0. N is the number of elements inside the collection.", key_specs: &[], subcommands: &[] },
    CommandSpec { name: "keys", arity: 2, flags: &["readonly"], first_key: 0, last_key: 0, step: 0, acl: &["@keyspace", "@read", "@slow", "@dangerous"], tips: &["request_policy:all_shards", "nondeterministic_output_order"], summary: "Find all keys matching the given pattern", since: "1.0.0", group: "generic", complexity: "O(N) with N being the number of keys in the database, under the assumption that the key names in the database and the given pattern have limited length.", key_specs: &[], subcommands: &[] },
    CommandSpec { name: "dbsize", arity: 1, flags: &["readonly", "fast"], first_key: 0, last_key: 0, step: 0, acl: &["@keyspace", "@read", "@fast"], tips: &["request_policy:all_shards", "response_policy:agg_sum"], summary: "Return the number of keys in the selected database", since: "1.0.0", group: "server", complexity: "O(1)", key_specs: &[], subcommands: &[] },
    CommandSpec { name: "flushall", arity: -1, flags: &["write"], first_key: 0, last_key: 0, step: 0, acl: &["@keyspace", "@write", "@slow", "@dangerous"], tips: &["request_policy:all_shards", "response_policy:all_succeeded"], summary: "Remove all keys from all databases", since: "1.0.0", group: "server", complexity: "O(N) where N is the total number of keys in all databases", key_specs: &[], subcommands: &[] },
    CommandSpec { name: "flushdb", arity: -1, flags: &["write"], first_key: 0, last_key: 0, step: 0, acl: &["@keyspace", "@write", "@slow", "@dangerous"], tips: &["request_policy:all_shards", "response_policy:all_succeeded"], summary: "Remove all keys from the current database", since: "1.0.0", group: "server", complexity: "O(N) where N is the number of keys in the selected database", key_specs: &[], subcommands: &[] },
    CommandSpec { name: "ping", arity: -1, flags: &["fast"], first_key: 0, last_key: 0, step: 0, acl: &["@fast", "@connection"], tips: &["request_policy:all_shards", "response_policy:all_succeeded"], summary: "Ping the server", since: "1.0.0", group: "connection", complexity: "O(1)", key_specs: &[], subcommands: &[] },
    CommandSpec { name: "echo", arity: 2, flags: &["loading", "stale", "fast"], first_key: 0, last_key: 0, step: 0, acl: &["@fast", "@connection"], tips: &[], summary: "Echo the given string", since: "1.0.0", group: "connection", complexity: "O(1)", key_specs: &[], subcommands: &[] },
    CommandSpec { name: "hello", arity: -1, flags: &["noscript", "loading", "stale", "fast", "no_auth", "allow_busy"], first_key: 0, last_key: 0, step: 0, acl: &["@fast", "@connection"], tips: &[], summary: "Handshake with Redis", since: "6.0.0", group: "connection", complexity: "O(1)", key_specs: &[], subcommands: &[] },
    CommandSpec { name: "select", arity: 2, flags: &["loading", "stale", "fast"], first_key: 0, last_key: 0, step: 0, acl: &["@fast", "@connection"], tips: &[], summary: "Change the selected database for the current connection", since: "1.0.0", group: "connection", complexity: "O(1)", key_specs: &[], subcommands: &[] },
    CommandSpec { name: "quit", arity: -1, flags: &["noscript", "loading", "stale", "fast", "no_auth", "allow_busy"], first_key: 0, last_key: 0, step: 0, acl: &["@fast", "@connection"], tips: &[], summary: "Close the connection", since: "1.0.0", group: "connection", complexity: "O(1)", key_specs: &[], subcommands: &[] },
    CommandSpec { name: "reset", arity: 1, flags: &["noscript", "loading", "stale", "fast", "no_auth", "allow_busy"], first_key: 0, last_key: 0, step: 0, acl: &["@fast", "@connection"], tips: &[], summary: "Reset the connection", since: "6.2.0", group: "connection", complexity: "O(1)", key_specs: &[], subcommands: &[] },
    CommandSpec { name: "client", arity: -2, flags: &[], first_key: 0, last_key: 0, step: 0, acl: &["@slow"], tips: &[], summary: "A container for client connection commands", since: "2.4.0", group: "connection", complexity: "Depends on subcommand.", key_specs: &[], subcommands: &[&CLIENT_SETNAME, &CLIENT_GETNAME, &CLIENT_ID, &CLIENT_INFO, &CLIENT_LIST] },
    CommandSpec { name: "cluster", arity: -2, flags: &[], first_key: 0, last_key: 0, step: 0, acl: &["@slow"], tips: &[], summary: "A container for cluster commands", since: "3.0.0", group: "cluster", complexity: "Depends on subcommand.", key_specs: &[], subcommands: &[&CLUSTER_KEYSLOT, &CLUSTER_SLOTS, &CLUSTER_NODES, &CLUSTER_SHARDS, &CLUSTER_INFO, &CLUSTER_MYID] },
    CommandSpec { name: "readonly", arity: 1, flags: &["loading", "stale", "fast"], first_key: 0, last_key: 0, step: 0, acl: &["@fast", "@connection"], tips: &[], summary: "Enables read queries for a connection to a cluster replica node", since: "3.0.0", group: "cluster", complexity: "O(1)", key_specs: &[], subcommands: &[] },
    CommandSpec { name: "readwrite", arity: 1, flags: &["loading", "stale", "fast"], first_key: 0, last_key: 0, step: 0, acl: &["@fast", "@connection"], tips: &[], summary: "Disables read queries for a connection to a cluster replica node", since: "3.0.0", group: "cluster", complexity: "O(1)", key_specs: &[], subcommands: &[] },
    CommandSpec { name: "asking", arity: 1, flags: &["fast"], first_key: 0, last_key: 0, step: 0, acl: &["@fast", "@connection"], tips: &[], summary: "Sent by cluster clients after an -ASK redirect", since: "3.0.0", group: "cluster", complexity: "O(1)", key_specs: &[], subcommands: &[] },
    CommandSpec { name: "time", arity: 1, flags: &["loading", "stale", "fast"], first_key: 0, last_key: 0, step: 0, acl: &["@fast"], tips: &["nondeterministic_output"], summary: "Return the current server time", since: "2.6.0", group: "server", complexity: "O(1)", key_specs: &[], subcommands: &[] },
    CommandSpec { name: "command", arity: -1, flags: &["loading", "stale"], first_key: 0, last_key: 0, step: 0, acl: &["@slow", "@connection"], tips: &["nondeterministic_output_order"], summary: "Get array of Redis command details", since: "2.8.13", group: "server", complexity: "O(N) where N is the total number of Redis commands", key_specs: &[], subcommands: &[&COMMAND_COUNT, &COMMAND_DOCS, &COMMAND_INFO] },
    CommandSpec { name: "config", arity: -2, flags: &[], first_key: 0, last_key: 0, step: 0, acl: &["@slow"], tips: &[], summary: "A container for server configuration commands", since: "2.0.0", group: "server", complexity: "Depends on subcommand.", key_specs: &[], subcommands: &[&CONFIG_GET] },
    CommandSpec { name: "auth", arity: -2, flags: &["noscript", "loading", "stale", "fast", "no_auth", "allow_busy"], first_key: 0, last_key: 0, step: 0, acl: &["@fast", "@connection"], tips: &[], summary: "Authenticate to the server", since: "1.0.0", group: "connection", complexity: "O(N) where N is the number of passwords defined for the user", key_specs: &[], subcommands: &[] },
    CommandSpec { name: "info", arity: -1, flags: &["loading", "stale"], first_key: 0, last_key: 0, step: 0, acl: &["@slow", "@dangerous"], tips: &["nondeterministic_output", "request_policy:all_shards", "response_policy:special"], summary: "Get information and statistics about the server", since: "1.0.0", group: "server", complexity: "O(1)", key_specs: &[], subcommands: &[] },
];
