//! Redis 7 as a peer: a primary and one replica on this machine, both with
//! an append-only file fsynced on every write ([`RedisPair`]), and a client
//! that writes one key per call, optionally waiting for the replica
//! ([`RedisClient`]). It speaks RESP through `mirrorlog::client::Client`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use mirrorlog::client::Client;
use mirrorlog::resp::Reply;

use super::procs::{self, Spawned};

/// The durability settings of the pair, for reports.
pub const DURABILITY: &str = "Redis: appendonly yes, appendfsync always (an fsync of the \
     AOF before each reply) on the primary and the replica, no RDB snapshots; set+wait \
     also waits for WAIT 1 0, the replica's acknowledgement that it processed the write \
     (Redis 7.0 does not promise the replica's fsync; WAITAOF came in 7.2)";

#[cfg(test)]
/// How many distinct keys the clients write.
const KEYS: u64 = 100_000;

/// How long the servers get to accept connections and the replica to sync.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a client waits for a reply. `WAIT 1 0` waits for the replica
/// forever; this turns a dead replica into an error.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// Settings read back after start, so a report states what ran.
const REPORTED_SETTINGS: &[&str] = &["appendonly", "appendfsync", "save"];

/// A running primary and replica. Dropping it stops both by PID (SIGTERM,
/// then SIGKILL after 10 s); the directories stay for the caller to remove.
pub struct RedisPair {
    pub primary: SocketAddr,
    pub replica: SocketAddr,
    /// e.g. "Redis 7.0.15".
    pub version: String,
    /// Durability-relevant settings as the primary reports them.
    pub settings: Vec<(String, String)>,
    /// Holds `redis-primary/` and `redis-replica/`, each a server's working
    /// directory with its AOF and its log `redis.log`.
    pub dir: PathBuf,
    /// The two server processes, stopped by PID when this is dropped, the
    /// replica first.
    pub servers: procs::Pair,
}

impl RedisPair {
    /// Creates `dir` if needed and fresh `dir/redis-primary` and
    /// `dir/redis-replica`; starts both servers and waits until the replica's
    /// link is up. `log` receives progress lines.
    pub fn start(dir: &Path, log: &mut dyn FnMut(&str)) -> Result<RedisPair, String> {
        let t0 = Instant::now();
        let bin = find_binary()?;
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let ports = procs::free_ports(2)?;
        let primary = SocketAddr::from(([127, 0, 0, 1], ports[0]));
        let replica = SocketAddr::from(([127, 0, 0, 1], ports[1]));

        log(&format!("redis: starting the primary on {primary}"));
        let mut primary_proc = spawn_server(&bin, dir, "primary", ports[0], None)?;
        let mut p = wait_for_server(&mut primary_proc, primary)?;
        log(&format!("redis: starting the replica on {replica}"));
        let mut replica_proc = spawn_server(&bin, dir, "replica", ports[1], Some(ports[0]))?;
        let mut r = wait_for_server(&mut replica_proc, replica)?;
        let mut servers = procs::Pair {
            secondary: replica_proc,
            primary: primary_proc,
        };

        let mut last = String::new();
        let waited = procs::wait_until(
            START_TIMEOUT,
            "the replica to sync with the primary",
            || {
                servers.check_running()?;
                let link = info_field(&mut r, "replication", "master_link_status")?;
                let slaves = info_field(&mut p, "replication", "connected_slaves")?;
                // After the initial sync the replica rewrites its AOF from
                // the loaded data in the background; until that ends its
                // AOF is incomplete and it refuses to shut down ("Writing
                // initial AOF, can't exit"). Both servers must be past it.
                let (r_aof, p_aof) = (aof_idle(&mut r)?, aof_idle(&mut p)?);
                last = format!(
                    "replica master_link_status={link:?} AOF idle={r_aof}, \
                     primary connected_slaves={slaves:?} AOF idle={p_aof}"
                );
                Ok(link.as_deref() == Some("up")
                    && slaves.as_deref() == Some("1")
                    && r_aof
                    && p_aof)
            },
        );
        if let Err(e) = waited {
            return Err(format!("{e} ({last})\n{}", servers.log_tails(15)));
        }

        let version = match info_field(&mut p, "server", "redis_version")? {
            Some(v) => format!("Redis {v}"),
            None => return Err("redis primary: INFO server has no redis_version".to_string()),
        };
        let mut settings = Vec::with_capacity(REPORTED_SETTINGS.len());
        for name in REPORTED_SETTINGS {
            settings.push((name.to_string(), config_get(&mut p, name)?));
        }
        // Equal durability on both servers is the premise of the comparison.
        for c in [&mut p, &mut r] {
            for (name, want) in [("appendonly", "yes"), ("appendfsync", "always")] {
                let got = config_get(c, name)?;
                if got != want {
                    return Err(format!("redis runs with {name} {got}, not {want}"));
                }
            }
        }
        log(&format!(
            "redis: {version} primary {primary} (pid {}), replica {replica} (pid {}), ready in {:.1} s",
            servers.primary.pid(),
            servers.secondary.pid(),
            t0.elapsed().as_secs_f64()
        ));
        Ok(RedisPair {
            primary,
            replica,
            version,
            settings,
            dir: dir.to_path_buf(),
            servers,
        })
    }
}

fn find_binary() -> Result<PathBuf, String> {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain([PathBuf::from("/usr/bin")])
        .map(|d| d.join("redis-server"))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            "redis-server not found on PATH or in /usr/bin: Redis is not installed \
             (run bench/peers/install.sh)"
                .to_string()
        })
}

/// Starts one server in a fresh `dir/redis-<role>`, logging to `redis.log`
/// there; a replica of 127.0.0.1:`primary_port` when given.
fn spawn_server(
    bin: &Path,
    dir: &Path,
    role: &str,
    port: u16,
    primary_port: Option<u16>,
) -> Result<Spawned, String> {
    let home = dir.join(format!("redis-{role}"));
    std::fs::create_dir(&home)
        .map_err(|e| format!("creating {} (must not exist yet): {e}", home.display()))?;
    let mut cmd = Command::new(bin);
    cmd.current_dir(&home)
        .arg("--port")
        .arg(port.to_string())
        .args([
            "--bind",
            "127.0.0.1",
            "--protected-mode",
            "no",
            "--daemonize",
            "no",
        ])
        .arg("--dir")
        .arg(&home)
        .args([
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--save",
            "",
        ]);
    if let Some(p) = primary_port {
        cmd.args(["--replicaof", "127.0.0.1"]).arg(p.to_string());
    } else {
        // The primary syncs a new replica at once instead of waiting 5 s
        // (the default) for more replicas to share the transfer.
        cmd.args(["--repl-diskless-sync-delay", "0"]);
    }
    Spawned::spawn(
        &format!("redis {role}"),
        &mut cmd,
        &home.join("redis.log"),
        libc::SIGTERM,
    )
}

fn wait_for_server(p: &mut Spawned, addr: SocketAddr) -> Result<Client, String> {
    let mut conn = None;
    let mut last = String::from("no attempt yet");
    let what = format!("{} to answer PING on {addr}", p.name());
    let waited = procs::wait_until(START_TIMEOUT, &what, || {
        p.check_running()?;
        let attempt = Client::connect(addr, REPLY_TIMEOUT).and_then(|mut c| {
            let r = c.call(&[b"PING"])?;
            Ok((c, r))
        });
        match attempt {
            Ok((c, Reply::Simple(s))) if s == "PONG" => {
                conn = Some(c);
                Ok(true)
            }
            Ok((_, r)) => {
                last = format!("PING replied {r:?}");
                Ok(false)
            }
            Err(e) => {
                last = e.to_string();
                Ok(false)
            }
        }
    });
    match (waited, conn) {
        (Ok(()), Some(c)) => Ok(c),
        (Err(e), _) => Err(format!(
            "{e} (last attempt: {last})\nlog {}:\n{}",
            p.log_path().display(),
            p.log_tail(15)
        )),
        (Ok(()), None) => unreachable!("wait_until returned Ok without a connection"),
    }
}

/// A `field:value` line of `INFO section`.
fn info_field(c: &mut Client, section: &str, field: &str) -> Result<Option<String>, String> {
    let reply = c
        .call(&[b"INFO", section.as_bytes()])
        .map_err(|e| format!("redis INFO {section}: {e}"))?;
    let Reply::Bulk(text) = reply else {
        return Err(format!("redis INFO {section} replied {reply:?}"));
    };
    Ok(parse_info_field(&String::from_utf8_lossy(&text), field))
}

fn parse_info_field(info: &str, field: &str) -> Option<String> {
    info.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k == field).then(|| v.trim().to_string())
    })
}

/// No AOF rewrite running or scheduled, and the last one (if any) fine.
fn aof_idle(c: &mut Client) -> Result<bool, String> {
    let reply = c
        .call(&[b"INFO", b"persistence"])
        .map_err(|e| format!("redis INFO persistence: {e}"))?;
    let Reply::Bulk(text) = reply else {
        return Err(format!("redis INFO persistence replied {reply:?}"));
    };
    let info = String::from_utf8_lossy(&text);
    let field = |f: &str| parse_info_field(&info, f);
    if let Some(status) = field("aof_last_bgrewrite_status") {
        if status != "ok" {
            return Err(format!(
                "redis AOF rewrite failed: aof_last_bgrewrite_status:{status}"
            ));
        }
    }
    Ok(field("aof_enabled").as_deref() == Some("1")
        && field("aof_rewrite_in_progress").as_deref() == Some("0")
        && field("aof_rewrite_scheduled").as_deref() == Some("0"))
}

/// `CONFIG GET name`: a [name, value] array (a map in RESP3).
fn config_get(c: &mut Client, name: &str) -> Result<String, String> {
    let reply = c
        .call(&[b"CONFIG", b"GET", name.as_bytes()])
        .map_err(|e| format!("redis CONFIG GET {name}: {e}"))?;
    let value = match &reply {
        Reply::Array(items) => match items.as_slice() {
            [_, Reply::Bulk(v)] => Some(v.clone()),
            _ => None,
        },
        Reply::Map(pairs) => match pairs.as_slice() {
            [(_, Reply::Bulk(v))] => Some(v.clone()),
            _ => None,
        },
        _ => None,
    };
    value
        .map(|v| String::from_utf8_lossy(&v).into_owned())
        .ok_or_else(|| format!("redis CONFIG GET {name} replied {reply:?}"))
}

/// What a [`RedisClient::call`] waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RedisMode {
    /// `SET`: acknowledged once in the primary's AOF (fsynced).
    Set,
    /// `SET` and `WAIT 1 0` pipelined: also acknowledged by the replica.
    SetWait,
}

#[cfg(test)]
impl RedisMode {
    pub const ALL: [RedisMode; 2] = [RedisMode::Set, RedisMode::SetWait];

    pub fn name(self) -> &'static str {
        match self {
            RedisMode::Set => "set",
            RedisMode::SetWait => "set+wait",
        }
    }
}

#[cfg(test)]
/// Width of the call counter that starts each value, so values differ.
const COUNTER_DIGITS: usize = 20;

#[cfg(test)]
/// One connection writing one random key per call (see [`client`]).
pub struct RedisClient {
    c: Client,
    mode: RedisMode,
    /// xorshift state choosing the keys.
    rng: u64,
    key: Vec<u8>,
    /// The value: the call counter, then printable filler.
    value: Vec<u8>,
    calls: u64,
}

#[cfg(test)]
// The load generator moves each client to its own thread.
const _: fn() = || {
    fn send<T: Send>() {}
    send::<RedisClient>();
};

#[cfg(test)]
/// Connects to `addr`. Each [`RedisClient::call`] sets one of 100,000 keys
/// (chosen at random from `seed`) to a value of `record_bytes` printable
/// bytes (at least 20: the call counter starts the value).
pub fn client(
    addr: SocketAddr,
    mode: RedisMode,
    record_bytes: usize,
    seed: u64,
) -> Result<RedisClient, String> {
    let c = Client::connect(addr, REPLY_TIMEOUT)
        .map_err(|e| format!("redis {addr}: connecting: {e}"))?;
    let mut value = vec![b'0'; COUNTER_DIGITS];
    value.extend(procs::filler(
        record_bytes.saturating_sub(COUNTER_DIGITS),
        seed ^ 0x2545_f491_4f6c_dd1d,
    ));
    Ok(RedisClient {
        c,
        mode,
        rng: procs::seed_state(seed ^ 0x6a09_e667_f3bc_c908),
        key: Vec::with_capacity(16),
        value,
        calls: 0,
    })
}

#[cfg(test)]
impl RedisClient {
    /// One SET (and, in [`RedisMode::SetWait`], `WAIT 1 0` in the same
    /// write); `Ok(1)` when every reply is in and says the write is done.
    pub fn call(&mut self) -> Result<u64, String> {
        self.calls += 1;
        self.rng = procs::xorshift(self.rng);
        self.key.clear();
        self.key
            .extend_from_slice(format!("key:{:06}", self.rng % KEYS).as_bytes());
        self.value[..COUNTER_DIGITS]
            .copy_from_slice(format!("{:0COUNTER_DIGITS$}", self.calls).as_bytes());
        let set: Vec<&[u8]> = vec![b"SET", &self.key, &self.value];
        match self.mode {
            RedisMode::Set => {
                let r = self.c.call(&set).map_err(|e| format!("redis SET: {e}"))?;
                check_set(&r)?;
            }
            RedisMode::SetWait => {
                let wait: Vec<&[u8]> = vec![b"WAIT", b"1", b"0"];
                let replies = self
                    .c
                    .pipeline(&[set, wait])
                    .map_err(|e| format!("redis SET + WAIT: {e}"))?;
                let [set_reply, wait_reply] = replies.as_slice() else {
                    return Err(format!("redis SET + WAIT: {} replies", replies.len()));
                };
                check_set(set_reply)?;
                check_wait(wait_reply)?;
            }
        }
        Ok(1)
    }

    /// The key and value of the last call.
    pub fn last_write(&self) -> (&[u8], &[u8]) {
        (&self.key, &self.value)
    }
}

#[cfg(test)]
impl crate::loadgen::Client for RedisClient {
    fn call(&mut self) -> Result<u64, String> {
        RedisClient::call(self)
    }
}

#[cfg(test)]
fn check_set(r: &Reply) -> Result<(), String> {
    match r {
        Reply::Simple(s) if s == "OK" => Ok(()),
        Reply::Error(e) => Err(format!("redis SET: {e}")),
        r => Err(format!("redis SET replied {r:?}")),
    }
}

#[cfg(test)]
fn check_wait(r: &Reply) -> Result<(), String> {
    match r {
        Reply::Int(1) => Ok(()),
        Reply::Int(n) => Err(format!(
            "redis WAIT 1 0 replied {n}: the replica did not confirm the write"
        )),
        Reply::Error(e) => Err(format!("redis WAIT: {e}")),
        r => Err(format!("redis WAIT replied {r:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_fields_are_found_by_exact_name() {
        let info = "# Replication\r\nrole:slave\r\nmaster_link_status:up\r\nmaster_link_down_since_seconds:-1\r\n";
        assert_eq!(
            parse_info_field(info, "master_link_status").as_deref(),
            Some("up")
        );
        assert_eq!(parse_info_field(info, "master_link"), None);
        assert_eq!(parse_info_field(info, "role").as_deref(), Some("slave"));
    }

    #[test]
    fn replies_that_do_not_confirm_are_errors() {
        assert!(check_set(&Reply::ok()).is_ok());
        assert!(check_set(&Reply::err(
            "READONLY You can't write against a read only replica."
        ))
        .is_err());
        assert!(check_wait(&Reply::Int(1)).is_ok());
        let e = check_wait(&Reply::Int(0)).expect_err("no replica");
        assert!(e.contains("did not confirm"), "{e}");
        assert!(check_wait(&Reply::Nil).is_err());
    }

    /// Needs Redis 7 (bench/peers/install.sh). Run with
    /// `cargo test -p mirrorlog-bench --bin mirrorlog-bench peers -- --ignored`.
    #[test]
    #[ignore]
    fn real_pair_writes_in_both_modes_and_the_replica_has_them() {
        let dir =
            std::env::temp_dir().join(format!("mirrorlog-peers-redis-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let t = Instant::now();
        let mut pair = RedisPair::start(&dir, &mut |l| eprintln!("{l}")).expect("starts");
        eprintln!(
            "start: {:.2} s, {}",
            t.elapsed().as_secs_f64(),
            pair.version
        );
        eprintln!("settings: {:?}", pair.settings);
        assert!(pair.version.starts_with("Redis 7"), "{}", pair.version);
        let pids = pair.servers.pids();
        let mut last = (Vec::new(), Vec::new());
        for (i, mode) in RedisMode::ALL.into_iter().enumerate() {
            let mut c = client(pair.primary, mode, 4096, i as u64).expect("client");
            let start = Instant::now();
            let mut slowest = Duration::ZERO;
            for _ in 0..100 {
                let t = Instant::now();
                assert_eq!(c.call().expect("write"), 1);
                slowest = slowest.max(t.elapsed());
            }
            eprintln!(
                "{:>9}: 100 writes in {:.1} ms, the slowest {:.1} ms",
                mode.name(),
                start.elapsed().as_secs_f64() * 1e3,
                slowest.as_secs_f64() * 1e3
            );
            let (k, v) = c.last_write();
            last = (k.to_vec(), v.to_vec());
        }
        pair.servers.check_running().expect("both servers run");
        // The last writes waited for the replica, so it has processed
        // everything the primary has.
        let mut p = Client::connect(pair.primary, REPLY_TIMEOUT).expect("primary");
        let mut r = Client::connect(pair.replica, REPLY_TIMEOUT).expect("replica");
        let size = |c: &mut Client| match c.call(&[b"DBSIZE"]).expect("DBSIZE") {
            Reply::Int(n) => n,
            other => panic!("DBSIZE replied {other:?}"),
        };
        let n = size(&mut p);
        assert!(
            n > 150 && n <= 200,
            "{n} keys after 200 writes to 100,000 keys"
        );
        assert_eq!(size(&mut r), n);
        assert_eq!(
            r.call(&[b"GET", &last.0]).expect("GET"),
            Reply::Bulk(last.1.clone())
        );
        assert_eq!(last.1.len(), 4096);
        match r.call(&[b"SET", b"k", b"v"]).expect("SET on the replica") {
            Reply::Error(e) => assert!(e.starts_with("READONLY"), "{e}"),
            other => panic!("the replica accepted a write: {other:?}"),
        }
        let t = Instant::now();
        drop((p, r));
        drop(pair);
        eprintln!("stop: {:.2} s", t.elapsed().as_secs_f64());
        for pid in pids {
            assert!(
                !Path::new(&format!("/proc/{pid}")).exists(),
                "pid {pid} still runs"
            );
        }
        std::fs::remove_dir_all(&dir).expect("removing the redis directories");
    }
}
