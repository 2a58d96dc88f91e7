//! The `latency` scenario (the default): the latency suite.
//!
//! Three parts, each measured with the same load generator
//! ([`crate::loadgen`]) and reported with the same case layout
//! ([`crate::results`]):
//! * `engine-local`: the engine in this process, local commits (group
//!   commit + msync), record sizes x contents.
//! * `engine-mirror`: a principal in this process and a mirror in a child
//!   process over loopback, every commit level.
//! * `resp`: the key-value server (principal + mirror in this process) over
//!   RESP: safety off, safety full and per-connection remote-apply; SET and
//!   GET.
//!
//! Each closed-loop case runs `--repeat` times; the median throughput, the
//! spread and the merged histogram are reported. For the headline
//! synchronous and asynchronous configurations an open-loop rate sweep
//! (fractions of the closed-loop throughput) gives the latency-vs-throughput
//! curve and the highest rate that holds the p99 target. The floors
//! (pwrite+fdatasync of a 100 B record on the same file system, loopback TCP
//! round trip) are measured before and after the cases in the same run.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use mirrorlog_engine::commit::{CommitOptions, GroupCommit, Level};
use mirrorlog_engine::log::{FsStorage, Log};
use mirrorlog_engine::node::Safety;
use mirrorlog_engine::replication::session::MirroringState;
use mirrorlog_engine::transport::TransportChoice;
use serde_json::{json, Map, Value};

use crate::floor::{self, SyncKind};
use crate::loadgen::{self, Client, Load};
use crate::local_commit::{check_reached, RecordGen};
use crate::multiplex::WireConn;
use crate::progress::Progress;
use crate::report::{fmt_us, thousands, Machine};
use crate::results::{self, Case};
use crate::wires::{RespOp, RespWire};
use crate::{histo, Config, Data};

/// The parts of the suite (`--parts`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    EngineLocal,
    EngineMirror,
    Resp,
}

impl Part {
    pub const ALL: [Part; 3] = [Part::EngineLocal, Part::EngineMirror, Part::Resp];

    pub fn name(self) -> &'static str {
        match self {
            Part::EngineLocal => "engine-local",
            Part::EngineMirror => "engine-mirror",
            Part::Resp => "resp",
        }
    }

    pub fn parse(s: &str) -> Result<Part, String> {
        Part::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| {
                format!("--parts: unknown part {s:?} (expected engine-local, engine-mirror, resp)")
            })
    }
}

/// The RESP database's values (the issue's ~100-byte record).
pub const VALUE_BYTES: usize = 100;
use crate::wires::KEYS;

/// The floors of this run.
pub struct Floors {
    /// pwrite+fdatasync of a 100 B record, before and after the cases.
    pub fsync: Histogram<u64>,
    /// 64-byte loopback TCP ping-pong, before and after the cases.
    pub rtt: Histogram<u64>,
}

impl Floors {
    pub fn fsync_p50(&self) -> u64 {
        self.fsync.value_at_quantile(0.5)
    }
    pub fn rtt_p50(&self) -> u64 {
        self.rtt.value_at_quantile(0.5)
    }

    /// The least one commit at `level` can take on this machine: local =
    /// one fdatasync; remote-write = the round trip to the mirror (the
    /// local fdatasync runs alongside); remote-flush and remote-apply = the
    /// round trip plus the mirror's fdatasync.
    pub fn commit_floor(&self, level: Level) -> u64 {
        self.commit_floor_with(level, 0)
    }

    /// [`Floors::commit_floor`] with `added_rtt` ns more between the
    /// principal and the mirror.
    pub fn commit_floor_with(&self, level: Level, added_rtt: u64) -> u64 {
        let (f, r) = (self.fsync_p50(), self.rtt_p50() + added_rtt);
        match level {
            Level::Local => f,
            Level::RemoteWrite => f.max(r),
            Level::RemoteFlush | Level::RemoteApply => r + f,
        }
    }

    pub fn measure(cfg: &Config) -> Result<Floors, String> {
        let warmup = Duration::from_secs_f64(cfg.warmup);
        let timed = Duration::from_secs_f64(cfg.seconds);
        Ok(Floors {
            fsync: floor::sync_latency(
                &cfg.scratch,
                SyncKind::Preallocated,
                VALUE_BYTES,
                warmup,
                timed,
            )?
            .hist,
            rtt: crate::mirroring::loopback_rtt(warmup, timed)?,
        })
    }

    /// How the floors measured after the cases compare with these (the
    /// ones the cases' floor latencies use): one line, flagging a drift of
    /// more than a quarter (the disk or the machine changed under the run).
    pub fn drift_line(&self, after: &Floors) -> String {
        let ratio = |a: u64, b: u64| a as f64 / b.max(1) as f64;
        let f = ratio(after.fsync_p50(), self.fsync_p50());
        let r = ratio(after.rtt_p50(), self.rtt_p50());
        let flag = if (0.75..=1.25).contains(&f) && (0.75..=1.25).contains(&r) {
            ""
        } else {
            " (DRIFT: the machine changed during the run; compare with care)"
        };
        format!(
            "floors after the cases: pwrite+fdatasync p50 {} us ({f:.2}x), loopback RTT p50 {} us ({r:.2}x){flag}",
            fmt_us(after.fsync_p50()),
            fmt_us(after.rtt_p50()),
        )
    }

    pub fn to_json(&self) -> Value {
        let one = |h: &Histogram<u64>| {
            let mut v = histo::percentiles_json(h);
            v["histogram"] = json!(histo::encode(h).unwrap_or_default());
            v
        };
        json!({
            "fdatasync_100B": one(&self.fsync),
            "loopback_rtt": one(&self.rtt),
        })
    }
}

/// One open-loop rate sweep around a closed-loop case.
pub struct Sweep {
    pub base: String,
    pub base_ops_per_s: f64,
    pub p99_target_us: f64,
    pub points: Vec<Case>,
}

impl Sweep {
    /// A point holds the target if its p99 is within it and the system kept
    /// up (at least 95% of the asked rate done). Operations left unissued
    /// at the end (backlog) are in the histogram with the wait they had
    /// already accrued, so a backlog that matters shows in the p99.
    pub fn holds(&self, c: &Case) -> bool {
        let asked = match c.load {
            Load::Open { rate, .. } => rate,
            Load::Closed { .. } => return false,
        };
        c.ops_per_s() >= 0.95 * asked
            && c.merged().value_at_quantile(0.99) as f64 / 1e3 <= self.p99_target_us
    }

    /// The highest asked rate that held the target.
    pub fn max_rate_within_target(&self) -> Option<f64> {
        self.points
            .iter()
            .filter(|c| self.holds(c))
            .filter_map(|c| match c.load {
                Load::Open { rate, .. } => Some(rate),
                Load::Closed { .. } => None,
            })
            .max_by(f64::total_cmp)
    }

    pub fn to_json(&self) -> Value {
        json!({
            "base": self.base,
            "base_closed_loop_ops_per_s": self.base_ops_per_s,
            "p99_target_us": self.p99_target_us,
            "max_rate_within_target": self.max_rate_within_target(),
            "points": self.points.iter().map(|c| {
                let mut v = c.to_json();
                v["holds_target"] = json!(self.holds(c));
                v
            }).collect::<Vec<_>>(),
        })
    }
}

pub struct Suite {
    pub started: SystemTime,
    /// Measured before the cases; every case's floor latency uses these.
    pub floors: Floors,
    /// Measured again after the cases (drift check).
    pub floors_after: Floors,
    pub cases: Vec<Case>,
    pub sweeps: Vec<Sweep>,
    pub io_uring: Result<(), String>,
    pub total_seconds: f64,
}

fn durability(level: Level) -> &'static str {
    match level {
        Level::Local => "acknowledged after the principal's fdatasync (msync) of the batch",
        Level::RemoteWrite => {
            "acknowledged after the principal's fdatasync and the mirror's receipt (in memory)"
        }
        Level::RemoteFlush => {
            "acknowledged after the principal's fdatasync and the mirror's fdatasync"
        }
        Level::RemoteApply => {
            "acknowledged after both fdatasyncs and the mirror applied the record"
        }
    }
}

fn template(system: &str, mode: &str, op: &str, load: Load) -> Case {
    Case {
        system: system.into(),
        mode: mode.into(),
        durability: String::new(),
        op: op.into(),
        record_bytes: VALUE_BYTES,
        data: Data::Compressible.name().into(),
        pipeline: 1,
        load,
        floor_ns: None,
        runs: Vec::new(),
        extra: Map::new(),
    }
}

pub(crate) type Made<'a> = Box<dyn Client + Send + 'a>;

/// How a case's clients are made: blocking clients, one thread each (the
/// in-process engine), or connections for the event-driven generator
/// (network servers; see [`crate::multiplex`]).
pub(crate) enum Maker<'m, 'a> {
    Threads(&'m mut dyn FnMut(usize, u64) -> Result<Made<'a>, String>),
    Wires(&'m mut dyn FnMut(usize, u64) -> Result<WireConn, String>),
}

/// Runs `case` (its load) `repeats` times, each with fresh clients from
/// `make(client_index, seed)`.
pub(crate) fn measure(
    cfg: &Config,
    progress: &mut Progress,
    mut case: Case,
    repeats: usize,
    make: &mut Maker,
) -> Result<Case, String> {
    let label = format!("{} {}", case.label(), case.load.describe());
    progress.begin(&label);
    let warmup = Duration::from_secs_f64(cfg.warmup);
    let timed = Duration::from_secs_f64(cfg.seconds);
    for r in 0..repeats {
        crate::check_interrupted()?;
        let n = case.load.clients();
        let seed = |i: usize| (r * 1000 + i + 1) as u64;
        let mut tick = |done: f64| progress.tick((r as f64 + done) / repeats as f64);
        let out = match make {
            Maker::Threads(make) => {
                let clients = (0..n)
                    .map(|i| make(i, seed(i)))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| format!("{label}: {e}"))?;
                loadgen::run(case.load, clients, warmup, timed, &mut tick)
            }
            Maker::Wires(make) => {
                let conns = (0..n)
                    .map(|i| make(i, seed(i)))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| format!("{label}: {e}"))?;
                crate::multiplex::run(case.load, conns, cfg.gen_threads, warmup, timed, &mut tick)
            }
        }
        .map_err(|e| format!("{label}: {e}"))?;
        case.runs.push(out);
    }
    if case.pipeline > 1 {
        case.extra.insert(
            "pipelining".into(),
            json!(format!(
                "rounds: each client sends {} operations, then waits for all of them; every operation is recorded with its round's latency",
                case.pipeline
            )),
        );
    }
    case.extra.insert(
        "generator".into(),
        json!(match make {
            Maker::Threads(_) => "a blocking thread per client".to_string(),
            Maker::Wires(_) => format!(
                "event-driven: {} thread(s), nonblocking sockets + epoll",
                cfg.gen_threads.min(case.load.clients())
            ),
        }),
    );
    Ok(case)
}

/// The open-loop sweep around `base` (already measured closed loop).
fn sweep(
    cfg: &Config,
    progress: &mut Progress,
    base: &Case,
    make: &mut Maker,
) -> Result<Sweep, String> {
    let closed = base.ops_per_s();
    let clients = base.load.clients();
    let mut points = Vec::new();
    for &f in &cfg.sweep {
        let rate = (closed * f).max(1.0);
        let mut c = template(
            &base.system,
            &base.mode,
            &base.op,
            Load::Open { clients, rate },
        );
        c.durability = base.durability.clone();
        c.record_bytes = base.record_bytes;
        c.data = base.data.clone();
        c.floor_ns = base.floor_ns;
        c.extra.insert("fraction_of_closed_loop".into(), json!(f));
        points.push(measure(cfg, progress, c, 1, make)?);
    }
    Ok(Sweep {
        base: base.key(),
        base_ops_per_s: closed,
        p99_target_us: cfg.p99_target_us,
        points,
    })
}

pub(crate) fn engine_client<'a>(
    gc: &'a GroupCommit<FsStorage>,
    level: Level,
    gen: RecordGen,
    depth: usize,
) -> Made<'a> {
    let mut gen = gen;
    let mut tickets = Vec::with_capacity(depth);
    Box::new(move || {
        for _ in 0..depth {
            let r = gen.next_record();
            tickets.push(gc.commit_at(&[r], level).map_err(|e| e.to_string())?);
        }
        for t in tickets.drain(..) {
            check_reached(t.wait())?;
        }
        Ok(depth as u64)
    })
}

/// The closed-loop loads of a part: every client count one at a time,
/// and (if --pipeline > 1) 8 clients pipelining.
fn loads(cfg: &Config) -> Vec<(Load, usize)> {
    let mut v: Vec<(Load, usize)> = cfg
        .connections
        .iter()
        .map(|&c| (Load::Closed { clients: c }, 1))
        .collect();
    if cfg.pipeline > 1 {
        v.push((Load::Closed { clients: 8 }, cfg.pipeline));
    }
    v
}

fn sweep_clients(cfg: &Config) -> usize {
    cfg.connections.iter().copied().max().unwrap_or(1)
}

fn engine_local(
    cfg: &Config,
    floors: &Floors,
    progress: &mut Progress,
    out: &mut Vec<Case>,
) -> Result<(), String> {
    let mut n = 0;
    for &size in &cfg.sizes {
        for &data in &cfg.data {
            for (load, depth) in loads(cfg) {
                n += 1;
                let dir = cfg.scratch.join(format!("engine-local-{n}"));
                let (log, _) = Log::open(&dir, cfg.log_options())
                    .map_err(|e| format!("opening a log in {}: {e}", dir.display()))?;
                let mut gc = GroupCommit::start(Arc::new(log), CommitOptions::default())
                    .map_err(|e| format!("starting group commit: {e}"))?;
                let mut c = template("engine", "local", "commit", load);
                c.durability = durability(Level::Local).into();
                c.record_bytes = size;
                c.data = data.name().into();
                c.pipeline = depth;
                c.floor_ns = Some(floors.commit_floor(Level::Local));
                let r = {
                    let gc = &gc;
                    let mut make = |_, seed| {
                        Ok(engine_client(
                            gc,
                            Level::Local,
                            RecordGen::new(data, size, seed),
                            depth,
                        ))
                    };
                    measure(cfg, progress, c, cfg.repeat, &mut Maker::Threads(&mut make))
                };
                gc.shutdown();
                let _ = std::fs::remove_dir_all(&dir);
                out.push(r?);
            }
        }
    }
    Ok(())
}

fn engine_mirror(
    cfg: &Config,
    floors: &Floors,
    progress: &mut Progress,
    out: &mut Vec<Case>,
    sweeps: &mut Vec<Sweep>,
) -> Result<Map<String, Value>, String> {
    let secret = cfg.scratch.join("latency.secret");
    crate::mirroring::write_secret(&secret)?;
    let added = Duration::from_secs_f64(cfg.added_rtt_ms / 1e3);
    let (principal, child) =
        crate::mirroring::start_pair(cfg, "latency", TransportChoice::Auto, &secret, added)?;
    let mut info = Map::new();
    info.insert("added_rtt_ms".into(), json!(cfg.added_rtt_ms));
    info.insert(
        "transport".into(),
        json!(principal.status().transport.map(|t| t.to_string())),
    );
    let gc = principal.group_commit();
    let settle = || -> Result<(), String> {
        let end = principal.log().hardened_lsn();
        if crate::mirroring::wait_for(Duration::from_secs(60), || {
            let s = principal.status();
            s.mirror.applied >= end && s.state == MirroringState::Synchronized
        }) {
            Ok(())
        } else {
            Err(format!(
                "the mirror did not catch up within 60 s: {}\nmirror process: {}",
                principal.status().render(),
                child.stderr_text()
            ))
        }
    };
    let data = Data::Compressible;
    for &level in &cfg.levels {
        for (load, depth) in loads(cfg) {
            let mut c = template("engine+mirror", level.name(), "commit", load);
            c.durability = durability(level).into();
            c.pipeline = depth;
            c.floor_ns = Some(floors.commit_floor_with(level, added.as_nanos() as u64));
            if cfg.added_rtt_ms > 0.0 {
                c.extra
                    .insert("added_rtt_ms".into(), json!(cfg.added_rtt_ms));
            }
            let mut make = |_, seed| {
                Ok(engine_client(
                    gc,
                    level,
                    RecordGen::new(data, VALUE_BYTES, seed),
                    depth,
                ))
            };
            let mut make = Maker::Threads(&mut make);
            let case = measure(cfg, progress, c, cfg.repeat, &mut make)?;
            settle()?;
            if level == Level::RemoteFlush
                && depth == 1
                && load.clients() == sweep_clients(cfg)
                && !cfg.sweep.is_empty()
            {
                sweeps.push(sweep(cfg, progress, &case, &mut make)?);
                settle()?;
            }
            out.push(case);
        }
    }
    drop(principal);
    child.stop()?;
    Ok(info)
}

/// A connection for the event-driven generator to the RESP server at
/// `addr`: `depth` SETs (or GETs) of random keys a round, at the commit
/// `level` if given (per connection, `MIRROR LEVEL`).
pub(crate) fn resp_wire(
    addr: std::net::SocketAddr,
    op: RespOp,
    level: Option<Level>,
    depth: usize,
    seed: u64,
) -> Result<WireConn, String> {
    let setup: Vec<[&[u8]; 3]> = level
        .map(|l| [&b"MIRROR"[..], &b"LEVEL"[..], l.name().as_bytes()])
        .into_iter()
        .collect();
    let setup: Vec<&[&[u8]]> = setup.iter().map(|c| &c[..]).collect();
    crate::wires::resp_conn(addr, &setup, RespWire::new(op, VALUE_BYTES, depth, seed))
}

fn resp(
    cfg: &Config,
    floors: &Floors,
    progress: &mut Progress,
    out: &mut Vec<Case>,
    sweeps: &mut Vec<Sweep>,
) -> Result<(), String> {
    let rtt = floors.rtt_p50();
    // (safety of the pair, per-connection level, mode name, floor level)
    let modes = [
        (Safety::Off, None, "safety=off", Level::Local),
        (Safety::Full, None, "safety=full", Level::RemoteFlush),
        (
            Safety::Full,
            Some(Level::RemoteApply),
            "remote-apply",
            Level::RemoteApply,
        ),
    ];
    let mut pairs: Vec<(Safety, crate::resp_bench::Pair)> = Vec::new();
    for (safety, level, mode, floor_level) in modes {
        if !pairs.iter().any(|(s, _)| *s == safety) {
            // One pair at a time: drop the other safety's pair first.
            pairs.clear();
            let tag = if safety == Safety::Full {
                "full"
            } else {
                "off"
            };
            pairs.push((safety, crate::resp_bench::start_pair(cfg, safety, tag)?));
        }
        let addr = pairs[0].1.principal;
        for (load, depth) in loads(cfg) {
            if level.is_some() && depth > 1 {
                continue;
            }
            let mut c = template("mirrorlog", mode, "SET", load);
            c.durability = match safety {
                Safety::Off => {
                    "safety off: answered after the principal's fdatasync; the mirror follows"
                        .into()
                }
                Safety::Full if level.is_some() => {
                    format!("{}; per-connection MIRROR LEVEL", durability(floor_level))
                }
                Safety::Full => format!("safety full: {}", durability(Level::RemoteFlush)),
            };
            c.data = Data::Incompressible.name().into();
            c.pipeline = depth;
            c.floor_ns = Some(rtt + floors.commit_floor(floor_level));
            let mut make = |_, seed| resp_wire(addr, RespOp::Set, level, depth, seed);
            let mut make = Maker::Wires(&mut make);
            let case = measure(cfg, progress, c, cfg.repeat, &mut make)?;
            if level.is_none()
                && depth == 1
                && load.clients() == sweep_clients(cfg)
                && !cfg.sweep.is_empty()
            {
                sweeps.push(sweep(cfg, progress, &case, &mut make)?);
            }
            out.push(case);
        }
        if safety == Safety::Full && level.is_none() {
            // Reads: served from the applied state, no log write.
            for clients in [1, sweep_clients(cfg)] {
                let load = Load::Closed { clients };
                let mut c = template("mirrorlog", mode, "GET", load);
                c.durability =
                    "read from the principal's applied state (keys written by the SET cases before)"
                        .into();
                c.floor_ns = Some(rtt);
                let mut make = |_, seed| resp_wire(addr, RespOp::Get, None, 1, seed);
                out.push(measure(
                    cfg,
                    progress,
                    c,
                    cfg.repeat,
                    &mut Maker::Wires(&mut make),
                )?);
                if clients == 1 && sweep_clients(cfg) == 1 {
                    break;
                }
            }
        }
    }
    Ok(())
}

/// Steps in the progress bar: cases, sweep points and the two floors.
fn count_steps(cfg: &Config) -> usize {
    let loads = loads(cfg).len();
    let mut n = 2;
    for p in &cfg.parts {
        n += match p {
            Part::EngineLocal => cfg.sizes.len() * cfg.data.len() * loads,
            Part::EngineMirror => cfg.levels.len() * loads + cfg.sweep.len(),
            Part::Resp => 3 * loads - 1 + 2 + 2 * cfg.sweep.len(),
        };
    }
    n
}

pub fn run(cfg: &Config) -> Result<(Suite, Map<String, Value>), String> {
    let started = SystemTime::now();
    let t0 = Instant::now();
    let mut progress = Progress::new(count_steps(cfg));
    progress.begin("floors: pwrite+fdatasync 100 B and loopback round trip");
    let floors = Floors::measure(cfg)?;
    let mut cases = Vec::new();
    let mut sweeps = Vec::new();
    let mut info = Map::new();
    for part in &cfg.parts {
        match part {
            Part::EngineLocal => engine_local(cfg, &floors, &mut progress, &mut cases)?,
            Part::EngineMirror => {
                let i = engine_mirror(cfg, &floors, &mut progress, &mut cases, &mut sweeps)?;
                info.insert("engine_mirror".into(), Value::Object(i));
            }
            Part::Resp => resp(cfg, &floors, &mut progress, &mut cases, &mut sweeps)?,
        }
    }
    progress.begin("floors again (drift check)");
    let floors_after = Floors::measure(cfg)?;
    progress.finish();
    Ok((
        Suite {
            started,
            floors,
            floors_after,
            cases,
            sweeps,
            io_uring: mirrorlog_engine::transport::uring::probe(),
            total_seconds: t0.elapsed().as_secs_f64(),
        },
        info,
    ))
}

/// Synchronous mode costs at most this many times the asynchronous p50 at
/// one client.
pub const SYNC_P50_RATIO_MAX: f64 = 1.5;

pub fn targets(s: &Suite) -> Vec<(bool, String)> {
    let find = |system: &str, mode: &str, op: &str, clients: usize| {
        s.cases.iter().find(|c| {
            c.system == system
                && c.mode == mode
                && c.op == op
                && c.pipeline == 1
                && c.record_bytes == VALUE_BYTES
                && c.load == Load::Closed { clients }
        })
    };
    let mut out = Vec::new();
    for (system, sync, asy, op) in [
        ("mirrorlog", "safety=full", "safety=off", "SET"),
        ("engine+mirror", "remote-flush", "local", "commit"),
    ] {
        if let (Some(a), Some(b)) = (find(system, sync, op, 1), find(system, asy, op, 1)) {
            let (pa, pb) = (
                a.merged().value_at_quantile(0.5),
                b.merged().value_at_quantile(0.5),
            );
            let r = pa as f64 / pb.max(1) as f64;
            out.push((
                r <= SYNC_P50_RATIO_MAX,
                format!(
                    "{system} {sync} vs {asy}, 1 client: p50 {} us vs {} us = {r:.2}x (goal <= {SYNC_P50_RATIO_MAX}x)",
                    fmt_us(pa),
                    fmt_us(pb)
                ),
            ));
        }
    }
    out
}

pub fn render(cfg: &Config, s: &Suite, machine: &Machine) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "mirrorlog-bench latency: {} x {} s per case after {} s warm-up, {} cores, kernel {}, {} on {} ({}), io_uring {}",
        cfg.repeat,
        cfg.seconds,
        cfg.warmup,
        machine.nproc,
        machine.kernel,
        machine.dir,
        machine.fs_type,
        machine.device,
        match &s.io_uring {
            Ok(()) => "available".to_string(),
            Err(e) => format!("unavailable ({e})"),
        }
    );
    let _ = writeln!(
        o,
        "floors before the cases (the cases' floor latencies use these): pwrite+fdatasync 100 B p50 {} us p99 {} us; loopback RTT p50 {} us p99 {} us",
        fmt_us(s.floors.fsync_p50()),
        fmt_us(s.floors.fsync.value_at_quantile(0.99)),
        fmt_us(s.floors.rtt_p50()),
        fmt_us(s.floors.rtt.value_at_quantile(0.99)),
    );
    let _ = writeln!(o, "{}", s.floors.drift_line(&s.floors_after));
    let _ = writeln!(
        o,
        "latency in us, client-observed; spread = half the range of ops/s over the runs; /floor = p50 over the floor latency of the mode; limit = ops/s as a share of clients x pipeline / floor latency (floor: fdatasync for a local commit, + RTT per network hop; the engine's msync of a mapped segment can beat pwrite+fdatasync, so local cases can pass 100%)\n"
    );
    o.push_str(&results::table(&s.cases));
    for sw in &s.sweeps {
        let _ = writeln!(
            o,
            "\nopen-loop sweep of {} (closed loop {} ops/s), latency from each operation's intended start:",
            sw.base,
            thousands(sw.base_ops_per_s)
        );
        let _ = writeln!(
            o,
            "  {:>10} {:>10} {:>9} {:>9} {:>9} {:>9} {:>8}  p99 <= {} us",
            "asked/s", "done/s", "p50", "p99", "p99.9", "max", "backlog", sw.p99_target_us
        );
        for p in &sw.points {
            let h = p.merged();
            let asked = match p.load {
                Load::Open { rate, .. } => rate,
                Load::Closed { .. } => 0.0,
            };
            let _ = writeln!(
                o,
                "  {:>10} {:>10} {:>9} {:>9} {:>9} {:>9} {:>8}  {}",
                thousands(asked),
                thousands(p.ops_per_s()),
                fmt_us(h.value_at_quantile(0.5)),
                fmt_us(h.value_at_quantile(0.99)),
                fmt_us(h.value_at_quantile(0.999)),
                fmt_us(h.max()),
                p.backlog(),
                if sw.holds(p) { "holds" } else { "no" }
            );
        }
        let _ = writeln!(
            o,
            "  highest rate holding p99 <= {} us: {}",
            sw.p99_target_us,
            sw.max_rate_within_target()
                .map(|r| format!("{} ops/s", thousands(r)))
                .unwrap_or_else(|| "none of the rates tried".into())
        );
    }
    let _ = writeln!(o, "\ntargets:");
    for (pass, t) in targets(s) {
        let _ = writeln!(o, "  [{}] {t}", if pass { "PASS" } else { "MISS" });
    }
    let _ = writeln!(
        o,
        "\ndurability: engine local = msync of the batch; remote-flush and safety full = both machines fdatasynced; remote-write = principal fdatasynced and the mirror received. Total {:.0} s.",
        s.total_seconds
    );
    o
}

pub fn to_json(cfg: &Config, s: &Suite, machine: &Machine, info: &Map<String, Value>) -> Value {
    json!({
        "format": results::FORMAT,
        "suite": "latency",
        "started_unix": s.started.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        "command": std::env::args().collect::<Vec<_>>(),
        "parameters": {
            "parts": cfg.parts.iter().map(|p| p.name()).collect::<Vec<_>>(),
            "repeat": cfg.repeat,
            "seconds": cfg.seconds,
            "warmup_seconds": cfg.warmup,
            "clients": cfg.connections,
            "pipeline": cfg.pipeline,
            "record_bytes": cfg.sizes,
            "data": cfg.data.iter().map(|d| d.name()).collect::<Vec<_>>(),
            "levels": cfg.levels.iter().map(|l| l.name()).collect::<Vec<_>>(),
            "sweep_fractions": cfg.sweep,
            "p99_target_us": cfg.p99_target_us,
            "added_rtt_ms": cfg.added_rtt_ms,
            "segment_bytes": cfg.segment_bytes,
            "compression": crate::compression_name(cfg.compression),
            "resp_value_bytes": VALUE_BYTES,
            "resp_keys": KEYS,
            "generator_threads": cfg.gen_threads,
            "server_io": cfg.server_io.to_string(),
        },
        "machine": machine_json(machine, &s.io_uring),
        "info": Value::Object(info.clone()),
        "floors": s.floors.to_json(),
        "floors_after": s.floors_after.to_json(),
        "cases": s.cases.iter().map(Case::to_json).collect::<Vec<_>>(),
        "sweeps": s.sweeps.iter().map(Sweep::to_json).collect::<Vec<_>>(),
        "targets": targets(s).iter().map(|(p, t)| json!({"pass": p, "target": t})).collect::<Vec<_>>(),
        "total_seconds": s.total_seconds,
    })
}

pub fn machine_json(m: &Machine, io_uring: &Result<(), String>) -> Value {
    json!({
        "cores": m.nproc,
        "cpu": m.cpu,
        "kernel": m.kernel,
        "dir": m.dir,
        "file_system": m.fs_type,
        "device": m.device,
        "io_uring": io_uring.is_ok(),
        "io_uring_error": io_uring.as_ref().err(),
    })
}
