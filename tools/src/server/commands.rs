//! The command table: one row per command the server knows, with what the
//! rest of the server asks of a command (its arity as Redis declares it,
//! whether it writes, may be queued in MULTI, answers while the store
//! cannot be trusted or while the role changes, and where its keys are),
//! in the shape Redis and Valkey use, so that `COMMAND`, `COMMAND INFO`,
//! `COMMAND COUNT`, `COMMAND LIST` and `COMMAND GETKEYS` come from the
//! same place as the server's own decisions. Dispatch (what a command
//! does) is still the `match` in `Server::command_opt` and `write_cmd`.

use crate::resp::Reply;

use super::barrier::Seen;

/// Changes the keyspace: goes to group commit.
pub(crate) const WRITE: u16 = 1;
/// Reads the keyspace only.
pub(crate) const READONLY: u16 = 1 << 1;
/// May be queued inside MULTI (the data commands and PING).
pub(crate) const QUEUEABLE: u16 = 1 << 2;
/// Answers even when the store cannot be trusted (`Server::broken`):
/// connection handling and monitoring, no data.
pub(crate) const MONITORING: u16 = 1 << 3;
/// Answers at once during a role change instead of waiting for its end.
pub(crate) const DURING_SWITCH: u16 = 1 << 4;
/// Its reply depends on every key (DBSIZE, KEYS, SCAN, FLUSHALL): the
/// read barrier waits for the newest commit of all.
pub(crate) const ALL_KEYS: u16 = 1 << 5;
/// Allowed before AUTH.
pub(crate) const NO_AUTH: u16 = 1 << 6;
/// Administrative (CONFIG, MIRROR).
pub(crate) const ADMIN: u16 = 1 << 7;
/// Constant-time or logarithmic, as Redis's `fast`.
pub(crate) const FAST: u16 = 1 << 8;

/// One command. Key positions as Redis's COMMAND reports them: the first
/// key's argument index (0: no keys), the last's (negative: from the end,
/// -1 the last argument), and the step between keys.
pub(crate) struct Spec {
    pub(crate) name: &'static str,
    /// Exact argument count including the name (positive) or the least
    /// (negative).
    pub(crate) arity: i32,
    pub(crate) flags: u16,
    pub(crate) first_key: i32,
    pub(crate) last_key: i32,
    pub(crate) step: i32,
}

impl Spec {
    pub(crate) fn has(&self, flag: u16) -> bool {
        self.flags & flag != 0
    }

    /// Whether `n` arguments (the name included) fit the arity.
    pub(crate) fn arity_ok(&self, n: usize) -> bool {
        if self.arity >= 0 {
            n == self.arity as usize
        } else {
            n >= self.arity.unsigned_abs() as usize
        }
    }

    /// The key arguments of one call (`args[0]` is the name).
    pub(crate) fn keys<'a>(&self, args: &'a [Vec<u8>]) -> Vec<&'a [u8]> {
        if self.first_key <= 0 || args.len() <= self.first_key as usize {
            return Vec::new();
        }
        let last = if self.last_key < 0 {
            args.len() as i64 + i64::from(self.last_key)
        } else {
            i64::from(self.last_key)
        };
        let last = last.min(args.len() as i64 - 1);
        let step = self.step.max(1) as usize;
        (self.first_key as usize..=last.max(0) as usize)
            .step_by(step)
            .map(|i| args[i].as_slice())
            .collect()
    }

    /// Redis's flag names for `COMMAND INFO`.
    fn flag_names(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        for (flag, name) in [
            (WRITE, "write"),
            (READONLY, "readonly"),
            (ADMIN, "admin"),
            (FAST, "fast"),
            (NO_AUTH, "no_auth"),
        ] {
            if self.has(flag) {
                v.push(name);
            }
        }
        // Every command runs on a mirror (writes are refused there with
        // READONLY) and while loading, as Redis's `stale` and `loading`.
        if !self.has(WRITE) {
            v.extend(["loading", "stale"]);
        }
        v
    }

    /// The `COMMAND INFO` entry (Redis 7's ten fields).
    fn info(&self) -> Reply {
        let categories: Vec<Reply> = [
            (WRITE, "@write"),
            (READONLY, "@read"),
            (ADMIN, "@admin"),
            (FAST, "@fast"),
        ]
        .into_iter()
        .filter(|(f, _)| self.has(*f))
        .map(|(_, c)| Reply::Simple(c.into()))
        .collect();
        Reply::Array(vec![
            Reply::bulk(self.name.to_ascii_lowercase()),
            Reply::Int(i64::from(self.arity)),
            Reply::Array(
                self.flag_names()
                    .into_iter()
                    .map(|f| Reply::Simple(f.into()))
                    .collect(),
            ),
            Reply::Int(i64::from(self.first_key)),
            Reply::Int(i64::from(self.last_key)),
            Reply::Int(i64::from(self.step)),
            Reply::Array(categories),
            Reply::Array(Vec::new()),
            Reply::Array(Vec::new()),
            Reply::Array(Vec::new()),
        ])
    }
}

const fn spec(name: &'static str, arity: i32, flags: u16, keys: (i32, i32, i32)) -> Spec {
    Spec {
        name,
        arity,
        flags,
        first_key: keys.0,
        last_key: keys.1,
        step: keys.2,
    }
}

const NONE: (i32, i32, i32) = (0, 0, 0);
const ONE: (i32, i32, i32) = (1, 1, 1);
const ALL_ARGS: (i32, i32, i32) = (1, -1, 1);
const PAIRS: (i32, i32, i32) = (1, -1, 2);

const W: u16 = WRITE | QUEUEABLE;
const R: u16 = READONLY | QUEUEABLE;
const CONN: u16 = MONITORING | DURING_SWITCH | FAST;

/// Every command, by name (upper case). Sorted for `COMMAND LIST`.
pub(crate) static COMMANDS: &[Spec] = &[
    spec("APPEND", 3, W, ONE),
    spec("AUTH", -2, CONN | NO_AUTH, NONE),
    spec("CLIENT", -2, CONN, NONE),
    spec("COMMAND", -1, CONN, NONE),
    spec("CONFIG", -2, MONITORING | ADMIN, NONE),
    spec("DBSIZE", 1, R | ALL_KEYS | FAST, NONE),
    spec("DECR", 2, W | FAST, ONE),
    spec("DECRBY", 3, W | FAST, ONE),
    spec("DEL", -2, W, ALL_ARGS),
    spec("DISCARD", 1, FAST, NONE),
    spec("ECHO", 2, MONITORING | FAST, NONE),
    spec("EXEC", 1, 0, NONE),
    spec("EXISTS", -2, R | FAST, ALL_ARGS),
    spec("FLUSHALL", -1, W | ALL_KEYS, NONE),
    spec("FLUSHDB", -1, W | ALL_KEYS, NONE),
    spec("GET", 2, R | FAST, ONE),
    spec("GETDEL", 2, W | FAST, ONE),
    spec("GETSET", 3, W | FAST, ONE),
    spec("HELLO", -1, CONN | NO_AUTH, NONE),
    spec("INCR", 2, W | FAST, ONE),
    spec("INCRBY", 3, W | FAST, ONE),
    spec("INFO", -1, CONN & !FAST, NONE),
    spec("KEYS", 2, R | ALL_KEYS, NONE),
    spec("MGET", -2, R | FAST, ALL_ARGS),
    spec("MIRROR", -2, CONN & !FAST | ADMIN, NONE),
    spec("MSET", -3, W, PAIRS),
    spec("MULTI", 1, FAST, NONE),
    spec("PING", -1, CONN | QUEUEABLE, NONE),
    spec("QUIT", 1, MONITORING | NO_AUTH | FAST, NONE),
    spec("ROLE", 1, CONN, NONE),
    spec("SCAN", -2, R | ALL_KEYS, NONE),
    spec("SELECT", 2, MONITORING | FAST, NONE),
    spec("SET", -3, W, ONE),
    spec("SETNX", 3, W | FAST, ONE),
    spec("STRLEN", 2, R | FAST, ONE),
    spec("UNLINK", -2, W, ALL_ARGS),
    spec("WAIT", 3, 0, NONE),
];

/// The row of `name` (upper case), if the server knows it.
pub(crate) fn lookup(name: &str) -> Option<&'static Spec> {
    COMMANDS
        .binary_search_by(|c| c.name.cmp(name))
        .ok()
        .map(|i| &COMMANDS[i])
}

/// Whether a command waits for a role change in progress to end.
pub(crate) fn waits_for_switch(name: &str) -> bool {
    lookup(name).is_none_or(|c| !c.has(DURING_SWITCH))
}

pub(crate) fn is_write(name: &str) -> bool {
    lookup(name).is_some_and(|c| c.has(WRITE))
}

/// Commands that may run inside MULTI/EXEC.
pub(crate) fn queueable(name: &str) -> bool {
    lookup(name).is_some_and(|c| c.has(QUEUEABLE))
}

/// Commands that touch no data and answer even when the store cannot be
/// trusted (see `Server::broken`).
pub(crate) fn is_monitoring(name: &str) -> bool {
    lookup(name).is_some_and(|c| c.has(MONITORING))
}

/// The keys a command's reply depends on (for a write: the keys it may
/// touch, whose state its reply may tell of even when it changes nothing).
pub(crate) fn seen_by<'a>(name: &str, args: &'a [Vec<u8>]) -> Seen<'a> {
    match lookup(name) {
        Some(c) if c.has(ALL_KEYS) => Seen::All,
        Some(c) => Seen::Keys(c.keys(args)),
        None => Seen::Keys(Vec::new()),
    }
}

/// `COMMAND [COUNT | LIST | INFO name… | DOCS name… | GETKEYS cmd args…]`.
pub(crate) fn command_cmd(args: &[Vec<u8>]) -> Reply {
    let Some(sub) = args.get(1) else {
        return Reply::Array(COMMANDS.iter().map(Spec::info).collect());
    };
    let upper = |b: &[u8]| String::from_utf8_lossy(b).to_ascii_uppercase();
    match upper(sub).as_str() {
        "COUNT" if args.len() == 2 => Reply::Int(COMMANDS.len() as i64),
        "LIST" if args.len() == 2 => Reply::Array(
            COMMANDS
                .iter()
                .map(|c| Reply::bulk(c.name.to_ascii_lowercase()))
                .collect(),
        ),
        "INFO" if args.len() == 2 => Reply::Array(COMMANDS.iter().map(Spec::info).collect()),
        "INFO" => Reply::Array(
            args[2..]
                .iter()
                .map(|n| lookup(&upper(n)).map_or(Reply::Nil, Spec::info))
                .collect(),
        ),
        // No documentation is kept; clients (redis-cli's hints) take an
        // empty answer as "none known".
        "DOCS" => Reply::Array(Vec::new()),
        "GETKEYS" if args.len() >= 3 => {
            let call = &args[2..];
            match lookup(&upper(&call[0])) {
                None => Reply::err("ERR Invalid command specified"),
                Some(c) if !c.arity_ok(call.len()) => {
                    Reply::err("ERR Invalid number of arguments specified for command")
                }
                Some(c) => {
                    let keys = c.keys(call);
                    if keys.is_empty() {
                        Reply::err("ERR The command has no key arguments")
                    } else {
                        Reply::Array(keys.into_iter().map(Reply::bulk).collect())
                    }
                }
            }
        }
        _ => Reply::err(format!(
            "ERR unknown subcommand or wrong number of arguments for '{}'. Try COMMAND HELP.",
            String::from_utf8_lossy(sub)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_sorted_and_names_are_unique_and_upper_case() {
        for w in COMMANDS.windows(2) {
            assert!(w[0].name < w[1].name, "{} before {}", w[0].name, w[1].name);
        }
        for c in COMMANDS {
            assert_eq!(c.name, c.name.to_ascii_uppercase());
            assert!(std::ptr::eq(lookup(c.name).unwrap(), c));
            // A write is never a monitoring command nor answered during
            // a role change (it would run on the wrong node).
            if c.has(WRITE) {
                assert!(!c.has(MONITORING) && !c.has(DURING_SWITCH) && !c.has(READONLY));
            }
        }
        assert!(lookup("NOSUCH").is_none());
    }

    fn args(a: &[&str]) -> Vec<Vec<u8>> {
        a.iter().map(|s| s.as_bytes().to_vec()).collect()
    }

    #[test]
    fn key_positions_give_each_commands_keys() {
        let keys = |a: &[&str]| {
            let a = args(a);
            let c = lookup(
                &a[0]
                    .to_ascii_uppercase()
                    .iter()
                    .map(|&b| b as char)
                    .collect::<String>(),
            )
            .unwrap();
            c.keys(&a).iter().map(|k| k.to_vec()).collect::<Vec<_>>()
        };
        assert_eq!(keys(&["GET", "k"]), args(&["k"]));
        assert_eq!(keys(&["SET", "k", "v", "EX", "10"]), args(&["k"]));
        assert_eq!(keys(&["MSET", "a", "1", "b", "2"]), args(&["a", "b"]));
        assert_eq!(keys(&["MGET", "a", "b", "c"]), args(&["a", "b", "c"]));
        assert_eq!(keys(&["DEL", "a"]), args(&["a"]));
        assert!(keys(&["PING", "hello"]).is_empty());
        assert!(keys(&["ECHO", "k"]).is_empty());
        // Fewer arguments than the arity (refused elsewhere): no panic.
        assert!(keys(&["GET"]).is_empty());
        assert!(keys(&["MSET"]).is_empty());
    }

    #[test]
    fn command_subcommands_answer_from_the_table() {
        let run = |a: &[&str]| command_cmd(&args(a));
        assert_eq!(
            run(&["COMMAND", "COUNT"]),
            Reply::Int(COMMANDS.len() as i64)
        );
        let Reply::Array(info) = run(&["COMMAND", "INFO", "get", "nosuch"]) else {
            panic!("INFO is an array")
        };
        assert_eq!(info[1], Reply::Nil);
        let Reply::Array(get) = &info[0] else {
            panic!("an entry is an array")
        };
        assert_eq!(get.len(), 10);
        assert_eq!(get[0], Reply::bulk("get"));
        assert_eq!(get[1], Reply::Int(2));
        assert_eq!(
            run(&["COMMAND", "GETKEYS", "MSET", "a", "1", "b", "2"]),
            Reply::Array(vec![Reply::bulk("a"), Reply::bulk("b")])
        );
        assert!(matches!(
            run(&["COMMAND", "GETKEYS", "PING"]),
            Reply::Error(_)
        ));
        assert!(matches!(
            run(&["COMMAND", "GETKEYS", "GET"]),
            Reply::Error(_)
        ));
        assert!(matches!(run(&["COMMAND", "NOSUCH"]), Reply::Error(_)));
    }
}
