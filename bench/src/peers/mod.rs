//! `mirrorlog-bench peers`: mirrorlog next to PostgreSQL 15 (one streaming
//! standby) and Redis 7 (one replica), all on 127.0.0.1, at equal
//! durability (fsync on; appendfsync always), driven by the same load
//! generator with the same workload shape: one ~100-byte record per
//! transaction, closed loop, 1/8/32 clients. The systems are interleaved
//! (every system at one client count, then the next count), so a noisy
//! neighbour hits them alike. Prints one side-by-side table and writes it as
//! JSON (the latency suite's case layout, so `compare` and `mirrorlog-perf`
//! read it) and Markdown. Everything started is stopped by PID at the end,
//! also on failure or Ctrl-C. `bench/peers/install.sh` installs the peers.

pub mod postgres;
pub mod procs;
pub mod redis;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mirrorlog_engine::commit::Level;
use mirrorlog_engine::node::Safety;
use mirrorlog_engine::transport::TransportChoice;
use serde_json::{json, Map, Value};

use crate::latency::{self, Floors, Maker};
use crate::loadgen::Load;
use crate::local_commit::RecordGen;
use crate::multiplex::WireConn;
use crate::progress::Progress;
use crate::report::{fmt_us, thousands, Machine};
use crate::results::{self, Case};
use crate::wires::{self, RespOp, RespWire};
use crate::{Config, Data};

/// The record: one value of this many bytes per transaction.
const RECORD_BYTES: usize = latency::VALUE_BYTES;

/// What a peer case drives.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Target {
    Pg(postgres::PgMode),
    Redis(redis::RedisMode),
    /// The RESP database: the pair's safety and a per-connection level.
    Mirrorlog(Safety, Option<Level>),
    /// The engine API: a principal here, the mirror in a child process.
    Engine(Level),
}

struct Mode {
    target: Target,
    system: &'static str,
    mode: String,
    op: &'static str,
    durability: &'static str,
}

fn modes() -> Vec<Mode> {
    use postgres::PgMode;
    use redis::RedisMode;
    let m = |target, system, mode: &str, op, durability| Mode {
        target,
        system,
        mode: mode.to_string(),
        op,
        durability,
    };
    vec![
        m(Target::Pg(PgMode::Local), "postgresql", "synchronous_commit=local", "INSERT",
          "primary WAL fsynced; the standby follows asynchronously"),
        m(Target::Pg(PgMode::RemoteWrite), "postgresql", "synchronous_commit=remote_write", "INSERT",
          "primary WAL fsynced; the standby wrote it to its OS (not fsynced)"),
        m(Target::Pg(PgMode::On), "postgresql", "synchronous_commit=on", "INSERT",
          "primary and standby WAL fsynced"),
        m(Target::Pg(PgMode::RemoteApply), "postgresql", "synchronous_commit=remote_apply", "INSERT",
          "primary and standby WAL fsynced, replayed on the standby"),
        m(Target::Redis(RedisMode::Set), "redis", "SET", "SET",
          "appendfsync always: the primary's AOF fsynced; the replica follows asynchronously"),
        m(Target::Redis(RedisMode::SetWait), "redis", "SET+WAIT 1 0", "SET",
          "the primary's AOF fsynced and the replica acknowledged receipt (Redis 7.0 WAIT: not its fsync)"),
        m(Target::Mirrorlog(Safety::Off, None), "mirrorlog", "safety=off", "SET",
          "the principal's log fsynced; the mirror follows asynchronously"),
        m(Target::Mirrorlog(Safety::Full, Some(Level::RemoteWrite)), "mirrorlog", "remote-write", "SET",
          "the principal's log fsynced and the mirror received it (not fsynced): like Redis's WAIT"),
        m(Target::Mirrorlog(Safety::Full, None), "mirrorlog", "safety=full", "SET",
          "principal and mirror fsynced (remote-flush)"),
        m(Target::Mirrorlog(Safety::Full, Some(Level::RemoteApply)), "mirrorlog", "remote-apply", "SET",
          "principal and mirror fsynced, applied on the mirror"),
        m(Target::Engine(Level::Local), "engine+mirror", "local", "commit",
          "the engine API: the principal's log fsynced; the mirror follows"),
        m(Target::Engine(Level::RemoteFlush), "engine+mirror", "remote-flush", "commit",
          "the engine API: principal and mirror fsynced"),
    ]
}

/// The least one operation can take: a client round trip (not for the
/// in-process engine), the primary's fsync, and for the modes that wait
/// for the other machine a round trip to it (plus its fsync if they wait
/// for that).
fn floor_ns(t: Target, f: &Floors) -> u64 {
    use postgres::PgMode;
    let (fs, rtt) = (f.fsync_p50(), f.rtt_p50());
    match t {
        Target::Pg(PgMode::Local) | Target::Redis(redis::RedisMode::Set) => rtt + fs,
        Target::Pg(PgMode::RemoteWrite) | Target::Redis(redis::RedisMode::SetWait) => {
            rtt + fs.max(rtt)
        }
        Target::Pg(PgMode::On | PgMode::RemoteApply) => 2 * rtt + fs,
        Target::Mirrorlog(safety, level) => {
            let level = level.unwrap_or(match safety {
                Safety::Full => Level::RemoteFlush,
                Safety::Off => Level::Local,
            });
            rtt + f.commit_floor(level)
        }
        Target::Engine(level) => f.commit_floor(level),
    }
}

/// A PostgreSQL session with `synchronous_commit` set to `mode`, as a bare
/// socket for the event-driven generator.
fn pg_stream(
    addr: std::net::SocketAddr,
    mode: postgres::PgMode,
) -> Result<std::net::TcpStream, String> {
    let mut conn = postgres::PgConn::connect(addr, "mirrorlog-bench")?;
    conn.execute(&format!("SET synchronous_commit = {}", mode.name()))?;
    conn.into_stream()
}

/// Which systems to run (`--systems`).
pub fn parse_system(s: &str) -> Result<&'static str, String> {
    ["postgresql", "redis", "mirrorlog", "engine"]
        .into_iter()
        .find(|x| *x == s)
        .ok_or_else(|| {
            format!(
                "--systems: unknown system {s:?} (expected postgresql, redis, mirrorlog, engine)"
            )
        })
}

fn selected(cfg: &Config, m: &Mode) -> bool {
    let name = if m.system == "engine+mirror" {
        "engine"
    } else {
        m.system
    };
    cfg.systems.iter().any(|s| s == name)
}

pub struct PeersRun {
    pub started: SystemTime,
    /// Measured before the cases; every case's floor latency uses these.
    pub floors: Floors,
    /// Measured again after the cases (drift check).
    pub floors_after: Floors,
    pub cases: Vec<Case>,
    pub versions: Map<String, Value>,
    pub settings: Map<String, Value>,
    pub total_seconds: f64,
}

fn settings_json(s: &[(String, String)]) -> Value {
    Value::Object(s.iter().map(|(k, v)| (k.clone(), json!(v))).collect())
}

pub fn run(cfg: &Config) -> Result<PeersRun, String> {
    procs::install_interrupt_handler();
    let started = SystemTime::now();
    let t0 = Instant::now();
    let modes: Vec<Mode> = modes().into_iter().filter(|m| selected(cfg, m)).collect();
    if modes.is_empty() {
        return Err("--systems selected nothing to run".into());
    }
    let total = 4 + modes.len() * cfg.connections.len();
    let mut progress = Progress::new(total);
    let want = |name: &str| cfg.systems.iter().any(|s| s == name);
    let mut versions = Map::new();
    let mut settings = Map::new();

    progress.begin("starting the systems");
    let mut pg = if want("postgresql") {
        let c = postgres::PgCluster::start(&cfg.scratch.join("pg"), &mut |s| eprintln!("  {s}"))?;
        versions.insert("postgresql".into(), json!(c.version));
        let mut set = settings_json(&c.settings);
        set["durability"] = json!(postgres::DURABILITY);
        set["primary"] = json!(c.primary.to_string());
        set["standby"] = json!(c.standby.to_string());
        set["pids"] = json!(c.servers.pids());
        set["dir"] = json!(c.dir.display().to_string());
        settings.insert("postgresql".into(), set);
        Some(c)
    } else {
        None
    };
    crate::check_interrupted()?;
    let mut rd = if want("redis") {
        let r = redis::RedisPair::start(&cfg.scratch.join("redis"), &mut |s| eprintln!("  {s}"))?;
        versions.insert("redis".into(), json!(r.version));
        let mut set = settings_json(&r.settings);
        set["durability"] = json!(redis::DURABILITY);
        set["primary"] = json!(r.primary.to_string());
        set["replica"] = json!(r.replica.to_string());
        set["pids"] = json!(r.servers.pids());
        set["dir"] = json!(r.dir.display().to_string());
        settings.insert("redis".into(), set);
        Some(r)
    } else {
        None
    };
    crate::check_interrupted()?;
    let (ml_full, ml_off) = if want("mirrorlog") {
        versions.insert(
            "mirrorlog".into(),
            json!(format!("mirrorlog {}", env!("CARGO_PKG_VERSION"))),
        );
        (
            Some(crate::resp_bench::start_pair(
                cfg,
                Safety::Full,
                "peers-full",
            )?),
            Some(crate::resp_bench::start_pair(
                cfg,
                Safety::Off,
                "peers-off",
            )?),
        )
    } else {
        (None, None)
    };
    crate::check_interrupted()?;
    let engine = if want("engine") {
        let secret = cfg.scratch.join("peers.secret");
        crate::mirroring::write_secret(&secret)?;
        Some(crate::mirroring::start_pair(
            cfg,
            "peers",
            TransportChoice::Auto,
            &secret,
            Duration::ZERO,
        )?)
    } else {
        None
    };

    progress.begin("floors: pwrite+fdatasync 100 B and loopback round trip");
    let floors = Floors::measure(cfg)?;
    let mut cases = Vec::new();
    for &clients in &cfg.connections {
        for m in &modes {
            crate::check_interrupted()?;
            // Every server still up (one that died would fail every case).
            if let Some(p) = pg.as_mut() {
                p.servers.check_running()?;
            }
            if let Some(r) = rd.as_mut() {
                r.servers.check_running()?;
            }
            let load = Load::Closed { clients };
            let c = Case {
                system: m.system.into(),
                mode: m.mode.clone(),
                durability: m.durability.into(),
                op: m.op.into(),
                record_bytes: RECORD_BYTES,
                // PostgreSQL gets printable text (a text column); the RESP
                // servers and the engine random bytes.
                data: match m.target {
                    Target::Pg(_) => "text".into(),
                    _ => Data::Incompressible.name().into(),
                },
                pipeline: 1,
                load,
                floor_ns: Some(floor_ns(m.target, &floors)),
                runs: Vec::new(),
                extra: Map::new(),
            };
            let case = match m.target {
                Target::Engine(level) => {
                    let gc = engine.as_ref().expect("started").0.group_commit();
                    let mut make = |_, seed| {
                        Ok(latency::engine_client(
                            gc,
                            level,
                            RecordGen::new(Data::Incompressible, RECORD_BYTES, seed),
                            1,
                        ))
                    };
                    latency::measure(
                        cfg,
                        &mut progress,
                        c,
                        cfg.repeat,
                        &mut Maker::Threads(&mut make),
                    )?
                }
                target => {
                    let mut make = |_, seed| -> Result<WireConn, String> {
                        match target {
                            Target::Pg(mode) => Ok(wires::conn(
                                pg_stream(pg.as_ref().expect("started").primary, mode)?,
                                wires::PgInsertWire::new(RECORD_BYTES, seed),
                            )),
                            Target::Redis(mode) => wires::resp_conn(
                                rd.as_ref().expect("started").primary,
                                &[],
                                RespWire::new(
                                    if mode == redis::RedisMode::SetWait {
                                        RespOp::SetWait
                                    } else {
                                        RespOp::Set
                                    },
                                    RECORD_BYTES,
                                    1,
                                    seed,
                                ),
                            ),
                            Target::Mirrorlog(safety, level) => {
                                let pair = if safety == Safety::Full {
                                    &ml_full
                                } else {
                                    &ml_off
                                };
                                latency::resp_wire(
                                    pair.as_ref().expect("started").principal,
                                    RespOp::Set,
                                    level,
                                    1,
                                    seed,
                                )
                            }
                            Target::Engine(_) => unreachable!("handled above"),
                        }
                    };
                    let r = latency::measure(
                        cfg,
                        &mut progress,
                        c,
                        cfg.repeat,
                        &mut Maker::Wires(&mut make),
                    );
                    // A peer that failed says why in its server logs.
                    r.map_err(|e| match target {
                        Target::Pg(_) => {
                            format!(
                                "{e}\n{}",
                                pg.as_ref().expect("started").servers.log_tails(20)
                            )
                        }
                        Target::Redis(_) => {
                            format!(
                                "{e}\n{}",
                                rd.as_ref().expect("started").servers.log_tails(20)
                            )
                        }
                        _ => e,
                    })?
                }
            };
            cases.push(case);
        }
    }
    progress.begin("floors again (drift check)");
    let floors_after = Floors::measure(cfg)?;
    progress.finish();
    drop(engine);
    drop((ml_full, ml_off));
    drop(rd);
    drop(pg);
    Ok(PeersRun {
        started,
        floors,
        floors_after,
        cases,
        versions,
        settings,
        total_seconds: t0.elapsed().as_secs_f64(),
    })
}

fn find<'a>(r: &'a PeersRun, system: &str, mode: &str, clients: usize) -> Option<&'a Case> {
    r.cases
        .iter()
        .find(|c| c.system == system && c.mode == mode && c.load == Load::Closed { clients })
}

/// The goals: mirrorlog safety full at the most clients run at least
/// 5x PostgreSQL synchronous_commit=on and 3x Redis SET+WAIT throughput,
/// with a lower p99 than both.
pub fn targets(r: &PeersRun, cfg: &Config) -> Vec<(bool, String)> {
    let mut out = Vec::new();
    let n = cfg.connections.iter().copied().max().unwrap_or(1);
    let Some(ml) = find(r, "mirrorlog", "safety=full", n) else {
        return out;
    };
    let (ml_ops, ml_p99) = (ml.ops_per_s(), ml.merged().value_at_quantile(0.99));
    for (system, mode, factor) in [
        ("postgresql", "synchronous_commit=on", 5.0),
        ("redis", "SET+WAIT 1 0", 3.0),
    ] {
        let Some(p) = find(r, system, mode, n) else {
            continue;
        };
        let ratio = ml_ops / p.ops_per_s().max(1e-9);
        out.push((
            ratio >= factor,
            format!(
                "mirrorlog safety=full vs {system} {mode}, {n} clients: {} vs {} ops/s = {ratio:.2}x (goal >= {factor}x)",
                thousands(ml_ops),
                thousands(p.ops_per_s())
            ),
        ));
        let p99 = p.merged().value_at_quantile(0.99);
        out.push((
            ml_p99 < p99,
            format!(
                "mirrorlog safety=full vs {system} {mode}, {n} clients: p99 {} us vs {} us (goal: lower)",
                fmt_us(ml_p99),
                fmt_us(p99)
            ),
        ));
    }
    // Like with like: Redis 7.0's WAIT confirms receipt, not fsync.
    if let (Some(a), Some(b)) = (
        find(r, "mirrorlog", "remote-write", n),
        find(r, "redis", "SET+WAIT 1 0", n),
    ) {
        let ratio = a.ops_per_s() / b.ops_per_s().max(1e-9);
        out.push((
            ratio >= 1.0,
            format!(
                "like with like (acknowledged when the replica has it in memory), {n} clients: mirrorlog remote-write {} ops/s p99 {} us vs Redis SET+WAIT {} ops/s p99 {} us = {ratio:.2}x (goal >= 1x)",
                thousands(a.ops_per_s()),
                fmt_us(a.merged().value_at_quantile(0.99)),
                thousands(b.ops_per_s()),
                fmt_us(b.merged().value_at_quantile(0.99)),
            ),
        ));
    }
    out
}

fn header(r: &PeersRun, cfg: &Config, machine: &Machine) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "mirrorlog-bench peers: {} x {} s per case after {} s warm-up; one {RECORD_BYTES}-byte record per transaction, closed loop; {} cores, kernel {}, {} on {}",
        cfg.repeat, cfg.seconds, cfg.warmup, machine.nproc, machine.kernel, machine.dir, machine.fs_type
    );
    let v: Vec<String> = r
        .versions
        .values()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    let _ = writeln!(o, "systems: {}", v.join("; "));
    let _ = writeln!(
        o,
        "floors before the cases (the cases' floor latencies use these): pwrite+fdatasync 100 B p50 {} us; loopback RTT p50 {} us",
        fmt_us(r.floors.fsync_p50()),
        fmt_us(r.floors.rtt_p50())
    );
    let _ = writeln!(o, "{}", r.floors.drift_line(&r.floors_after));
    o
}

pub fn render(r: &PeersRun, cfg: &Config, machine: &Machine) -> String {
    let mut o = header(r, cfg, machine);
    let _ = writeln!(
        o,
        "latency in us; /floor = p50 over the floor latency of the mode; limit = ops/s as a share of clients / floor latency\n"
    );
    o.push_str(&results::table(&r.cases));
    let _ = writeln!(o, "\ntargets:");
    for (pass, t) in targets(r, cfg) {
        let _ = writeln!(o, "  [{}] {t}", if pass { "PASS" } else { "MISS" });
    }
    let _ = writeln!(o, "\ndurability per mode:");
    let mut seen = Vec::new();
    for c in &r.cases {
        let k = format!("{} {}", c.system, c.mode);
        if !seen.contains(&k) {
            let _ = writeln!(o, "  {k}: {}", c.durability);
            seen.push(k);
        }
    }
    let _ = writeln!(o, "total {:.0} s", r.total_seconds);
    o
}

pub fn markdown(r: &PeersRun, cfg: &Config, machine: &Machine) -> String {
    let mut o = String::from("# mirrorlog vs PostgreSQL vs Redis\n\n");
    for l in header(r, cfg, machine).lines() {
        let _ = writeln!(o, "{l}  ");
    }
    o.push('\n');
    o.push_str(&results::markdown(&r.cases));
    o.push_str("\n## Targets\n\n");
    for (pass, t) in targets(r, cfg) {
        let _ = writeln!(o, "- **{}** {t}", if pass { "PASS" } else { "MISS" });
    }
    o.push_str("\n## Durability per mode\n\n");
    let mut seen = Vec::new();
    for c in &r.cases {
        let k = format!("{} {}", c.system, c.mode);
        if !seen.contains(&k) {
            let _ = writeln!(o, "- {k}: {}", c.durability);
            seen.push(k);
        }
    }
    o
}

pub fn to_json(r: &PeersRun, cfg: &Config, machine: &Machine) -> Value {
    json!({
        "format": results::FORMAT,
        "suite": "peers",
        "started_unix": r.started.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        "command": std::env::args().collect::<Vec<_>>(),
        "parameters": {
            "systems": cfg.systems,
            "repeat": cfg.repeat,
            "seconds": cfg.seconds,
            "warmup_seconds": cfg.warmup,
            "clients": cfg.connections,
            "record_bytes": RECORD_BYTES,
            "generator_threads": cfg.gen_threads,
            "server_io": cfg.server_io.to_string(),
        },
        "machine": latency::machine_json(machine, &mirrorlog_engine::transport::uring::probe()),
        "versions": Value::Object(r.versions.clone()),
        "settings": Value::Object(r.settings.clone()),
        "floors": r.floors.to_json(),
        "floors_after": r.floors_after.to_json(),
        "cases": r.cases.iter().map(Case::to_json).collect::<Vec<_>>(),
        "targets": targets(r, cfg).iter().map(|(p, t)| json!({"pass": p, "target": t})).collect::<Vec<_>>(),
        "total_seconds": r.total_seconds,
    })
}

/// Where `peers` writes its JSON and Markdown: `--json FILE` (the Markdown
/// beside it, `.md`), else `peers-<unix time>.{json,md}` in the current
/// directory.
pub fn outputs(cfg: &Config) -> (PathBuf, PathBuf) {
    let json = cfg.json.clone().unwrap_or_else(|| {
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        PathBuf::from(format!("peers-{t}.json"))
    });
    let md = json.with_extension("md");
    (json, md)
}

pub fn write_text(path: &Path, text: &str) -> Result<(), String> {
    let tmp = path.with_extension("md.tmp");
    std::fs::write(&tmp, text).map_err(|e| format!("writing {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("renaming to {}: {e}", path.display()))
}
