//! The `resp` scenario: the mirrored key-value server (`mirrorlog serve`'s
//! code, run in this process: a principal and a mirror on loopback) driven
//! by our own RESP load generator, so one client measures everything:
//! SET and GET from 1, 8 and 32 connections one command at a time, and from
//! 8 connections pipelining, in safety full and safety off, against the
//! same-run floors (fdatasync, loopback round trip).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mirrorlog::client::Client;
use mirrorlog::resp::Reply;
use mirrorlog::serve::{self, ServeOptions};
use mirrorlog_engine::node::{Logger, Safety};
use mirrorlog_engine::transport::TransportChoice;
use serde_json::{json, Value};

use crate::floor::{self, SyncKind};
use crate::local_commit::{new_histogram, XorShift};
use crate::partner_tls_bench::cpu_seconds;
use crate::report::{fmt_us, lat_json, thousands};
use crate::Config;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Set,
    Get,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Case {
    pub safety: Safety,
    pub op: Op,
    pub connections: usize,
    /// Commands in flight per connection (1: one at a time).
    pub depth: usize,
}

impl Case {
    pub fn describe(&self) -> String {
        format!(
            "{} {} {} conn{}",
            match self.safety {
                Safety::Full => "safety=full",
                Safety::Off => "safety=off",
            },
            match self.op {
                Op::Set => "SET",
                Op::Get => "GET",
            },
            self.connections,
            if self.depth > 1 {
                format!(" x pipeline {}", self.depth)
            } else {
                String::new()
            }
        )
    }
}

pub struct CaseResult {
    pub case: Case,
    pub ops: u64,
    pub seconds: f64,
    pub hist: Histogram<u64>,
}

impl CaseResult {
    pub fn ops_per_s(&self) -> f64 {
        self.ops as f64 / self.seconds.max(1e-9)
    }
}

pub struct RespSuite {
    pub fsync: Histogram<u64>,
    pub rtt: Histogram<u64>,
    pub cases: Vec<CaseResult>,
    /// `--mix`: the read-barrier comparison.
    pub mix: Vec<MixResult>,
    /// `--tls`: the client port's TLS against plaintext.
    pub tls: Vec<crate::resp_tls::TlsCase>,
    pub total_seconds: f64,
}

/// One 50/50 SET/GET run (safety full) with the read barrier on or off.
pub struct MixResult {
    pub read_barrier: bool,
    pub connections: usize,
    pub seconds: f64,
    pub set_ops: u64,
    pub get_ops: u64,
    pub set: Histogram<u64>,
    pub get: Histogram<u64>,
}

/// A mix client: each command a SET or a GET (even odds) of a random key;
/// latencies go to the SET or the GET histogram.
fn mix_worker(
    addr: SocketAddr,
    seed: u64,
    phase: &AtomicU8,
) -> Result<[(u64, Histogram<u64>); 2], String> {
    let mut c = Client::connect(addr, Duration::from_secs(10)).map_err(|e| e.to_string())?;
    let mut rng = XorShift::new(seed);
    let mut out = [(0, new_histogram()), (0, new_histogram())];
    let mut value = vec![0u8; VALUE_BYTES];
    loop {
        let p = phase.load(Ordering::Acquire);
        if p == STOP {
            return Ok(out);
        }
        let r = rng.next_u64();
        let key = format!("key:{:06}", (r >> 1) % KEYS);
        let is_get = r & 1 == 1;
        rng.fill(&mut value);
        let cmd: Vec<&[u8]> = if is_get {
            vec![b"GET", key.as_bytes()]
        } else {
            vec![b"SET", key.as_bytes(), &value]
        };
        let t = Instant::now();
        let reply = c.call(&cmd).map_err(|e| e.to_string())?;
        let ns = t.elapsed().as_nanos().max(1) as u64;
        if let Reply::Error(e) = reply {
            return Err(format!("server error: {e}"));
        }
        if p == TIMED {
            let (n, h) = &mut out[is_get as usize];
            h.saturating_record(ns);
            *n += 1;
        }
    }
}

fn run_mix(
    cfg: &Config,
    addr: SocketAddr,
    read_barrier: bool,
    connections: usize,
) -> Result<MixResult, String> {
    let t = timed_clients(cfg, connections, |i, phase| {
        mix_worker(addr, i as u64 + 1, phase)
    })?;
    let mut r = MixResult {
        read_barrier,
        connections,
        seconds: t.seconds,
        set_ops: 0,
        get_ops: 0,
        set: new_histogram(),
        get: new_histogram(),
    };
    for [(so, sh), (go, gh)] in t.per_client {
        r.set_ops += so;
        r.get_ops += go;
        r.set.add(&sh).map_err(|e| format!("{e:?}"))?;
        r.get.add(&gh).map_err(|e| format!("{e:?}"))?;
    }
    Ok(r)
}

/// The read barrier's goals (issue 14), per connection count: with the
/// barrier, GET p99 no worse than SET p99, and GET throughput at least
/// 90% of the same mix without it.
pub fn mix_targets(s: &RespSuite) -> Vec<(bool, String)> {
    let mut out = Vec::new();
    for on in s.mix.iter().filter(|m| m.read_barrier) {
        let Some(off) = s
            .mix
            .iter()
            .find(|m| !m.read_barrier && m.connections == on.connections)
        else {
            continue;
        };
        let (gp, sp) = (
            on.get.value_at_quantile(0.99),
            on.set.value_at_quantile(0.99),
        );
        out.push((
            gp <= sp,
            format!(
                "barrier on, {} connections: GET p99 {} <= SET p99 {}",
                on.connections,
                fmt_us(gp),
                fmt_us(sp)
            ),
        ));
        let ratio = (on.get_ops as f64 / on.seconds) / (off.get_ops as f64 / off.seconds).max(1e-9);
        out.push((
            ratio >= 0.9,
            format!(
                "barrier on, {} connections: GET throughput {:.1}% of barrier off (goal >= 90%)",
                on.connections,
                ratio * 100.0
            ),
        ));
    }
    out
}

const VALUE_BYTES: usize = 100;
const KEYS: u64 = 100_000;

fn cases(cfg: &Config) -> Vec<Case> {
    let mut v = Vec::new();
    for safety in [Safety::Full, Safety::Off] {
        for op in [Op::Set, Op::Get] {
            for &c in &cfg.connections {
                v.push(Case {
                    safety,
                    op,
                    connections: c,
                    depth: 1,
                });
            }
            if cfg.pipeline > 1 {
                v.push(Case {
                    safety,
                    op,
                    connections: 8,
                    depth: cfg.pipeline,
                });
            }
        }
    }
    v
}

pub(crate) struct Pair {
    pub(crate) principal: SocketAddr,
    /// The principal's TLS client port, if it was given TLS files.
    pub(crate) tls: Option<SocketAddr>,
    servers: Vec<Arc<mirrorlog::server::Server>>,
}

impl Drop for Pair {
    /// Stops both servers, so one safety setting's pair does not keep
    /// running (heartbeats, threads) through the next one's cases; their
    /// nodes shut down when the serving threads let go of them.
    fn drop(&mut self) {
        for s in &self.servers {
            s.stop();
        }
    }
}

pub(crate) fn start_pair(cfg: &Config, safety: Safety, tag: &str) -> Result<Pair, String> {
    start_pair_with(cfg, safety, tag, true)
}

/// [`start_pair`] with the read barrier (`--read-barrier`) on or off.
pub(crate) fn start_pair_with(
    cfg: &Config,
    safety: Safety,
    tag: &str,
    read_barrier: bool,
) -> Result<Pair, String> {
    start_pair_opts(cfg, safety, tag, read_barrier, None)
}

/// [`start_pair_with`], the principal also listening for TLS clients
/// with `tls` (on a port of its own: [`Pair::tls`]).
pub(crate) fn start_pair_opts(
    cfg: &Config,
    safety: Safety,
    tag: &str,
    read_barrier: bool,
    tls: Option<&mirrorlog::tls::TlsFiles>,
) -> Result<Pair, String> {
    let dir = cfg.scratch.join(format!("resp-{tag}"));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let secret = dir.join("secret");
    crate::mirroring::write_secret(&secret)?;
    let partner = free_addr()?;
    let base = |principal: bool, sub: &str| ServeOptions {
        principal,
        dir: dir.join(sub),
        secret_file: secret.clone(),
        database_id: mirrorlog::serve::database_id("bench").expect("id"),
        client: "127.0.0.1:0".parse().expect("addr"),
        partner,
        principal_clients: None,
        witness: None,
        peer: None,
        peer_clients: None,
        auto_failover: false,
        partner_timeout_ms: 1000,
        safety,
        transport: TransportChoice::Auto,
        password: None,
        password_on_command_line: false,
        max_clients: 1000,
        idle_timeout: None,
        checkpoint_every: None,
        segment_bytes: None,
        retention_max_bytes: None,
        log_level: "info".into(),
        limits: mirrorlog::resp::Limits::default(),
        output: mirrorlog::server::OutputLimits::default(),
        command_timeout: None,
        read_barrier,
        client_tls: None,
        partner_tls: None,
        witness_tls_ca: None,
        witness_tls_server_name: None,
    };
    let principal_tls = |mut o: ServeOptions| {
        o.client_tls = tls.map(|files| mirrorlog::tls::ClientTls {
            files: files.clone(),
            addr: "127.0.0.1:0".parse().expect("addr"),
            plaintext_too: true,
        });
        o
    };
    let quiet = Logger::new(|_| {});
    let p = serve::start_with_io(
        &principal_tls(base(true, "principal")),
        cfg.server_io,
        quiet.clone(),
    )?;
    let (ps, paddr, ptls) = (p.server.clone(), p.client_addr, p.tls_addr);
    std::thread::spawn(move || p.serve(None, Logger::new(|_| {})));
    let m = serve::start_with_io(&base(false, "mirror"), cfg.server_io, quiet)?;
    let ms = m.server.clone();
    std::thread::spawn(move || m.serve(None, Logger::new(|_| {})));
    let deadline = Instant::now() + Duration::from_secs(20);
    while ps.status().state != mirrorlog_engine::replication::session::MirroringState::Synchronized
    {
        if Instant::now() > deadline {
            return Err("the mirror did not synchronize within 20 s".into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(Pair {
        principal: paddr,
        tls: ptls,
        servers: vec![ps, ms],
    })
}

fn free_addr() -> Result<SocketAddr, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    l.local_addr().map_err(|e| e.to_string())
}

pub(crate) const WARMUP: u8 = 0;
pub(crate) const TIMED: u8 = 1;
pub(crate) const STOP: u8 = 2;

/// What one timed run of client threads gave back.
pub(crate) struct Timed<T> {
    /// Each client's result, in client order.
    pub(crate) per_client: Vec<T>,
    /// Wall time of the timed part.
    pub(crate) seconds: f64,
    /// This process's user + system CPU over the timed part.
    pub(crate) cpu_seconds: f64,
}

/// Runs `client(i, phase)` on `connections` threads: `cfg.warmup` seconds
/// of warm-up, then `cfg.seconds` timed (`phase` is `TIMED`), then `STOP`.
/// A client that fails stops them all, and its error is the result.
pub(crate) fn timed_clients<T: Send>(
    cfg: &Config,
    connections: usize,
    client: impl Fn(usize, &AtomicU8) -> Result<T, String> + Sync,
) -> Result<Timed<T>, String> {
    let phase = AtomicU8::new(WARMUP);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..connections)
            .map(|i| {
                let (phase, client) = (&phase, &client);
                s.spawn(move || {
                    let r = client(i, phase);
                    if r.is_err() {
                        phase.store(STOP, Ordering::Release);
                    }
                    r
                })
            })
            .collect();
        std::thread::sleep(Duration::from_secs_f64(cfg.warmup));
        let _ = phase.compare_exchange(WARMUP, TIMED, Ordering::AcqRel, Ordering::Acquire);
        let (t0, cpu0) = (Instant::now(), cpu_seconds());
        let end = t0 + Duration::from_secs_f64(cfg.seconds);
        while Instant::now() < end && phase.load(Ordering::Acquire) != STOP {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = phase.compare_exchange(TIMED, STOP, Ordering::AcqRel, Ordering::Acquire);
        let (seconds, cpu_seconds) = (t0.elapsed().as_secs_f64(), cpu_seconds() - cpu0);
        let per_client = handles
            .into_iter()
            .map(|h| {
                h.join()
                    .map_err(|_| "a client thread panicked".to_string())?
            })
            .collect::<Result<Vec<T>, String>>()?;
        Ok(Timed {
            per_client,
            seconds,
            cpu_seconds,
        })
    })
}

fn worker(
    addr: SocketAddr,
    case: Case,
    seed: u64,
    phase: &AtomicU8,
) -> Result<(u64, Histogram<u64>), String> {
    let mut c = Client::connect(addr, Duration::from_secs(10)).map_err(|e| e.to_string())?;
    let mut rng = XorShift::new(seed);
    let mut hist = new_histogram();
    let mut ops = 0;
    let mut value = vec![0u8; VALUE_BYTES];
    loop {
        let p = phase.load(Ordering::Acquire);
        if p == STOP {
            return Ok((ops, hist));
        }
        let keys: Vec<String> = (0..case.depth)
            .map(|_| format!("key:{:06}", rng.next_u64() % KEYS))
            .collect();
        rng.fill(&mut value);
        let cmds: Vec<Vec<&[u8]>> = keys
            .iter()
            .map(|k| match case.op {
                Op::Set => vec![&b"SET"[..], k.as_bytes(), &value[..]],
                Op::Get => vec![&b"GET"[..], k.as_bytes()],
            })
            .collect();
        let t = Instant::now();
        let replies = c.pipeline(&cmds).map_err(|e| e.to_string())?;
        let ns = t.elapsed().as_nanos().max(1) as u64;
        for r in &replies {
            if let Reply::Error(e) = r {
                return Err(format!("server error: {e}"));
            }
        }
        if p == TIMED {
            // Each command of a pipeline waited the whole round.
            for _ in 0..replies.len() {
                hist.saturating_record(ns);
            }
            ops += replies.len() as u64;
        }
    }
}

fn run_case(cfg: &Config, addr: SocketAddr, case: Case) -> Result<CaseResult, String> {
    let t = timed_clients(cfg, case.connections, |i, phase| {
        worker(addr, case, i as u64 + 1, phase)
    })?;
    let mut hist = new_histogram();
    let mut ops = 0;
    for (o, wh) in t.per_client {
        ops += o;
        hist.add(&wh).map_err(|e| format!("{e:?}"))?;
    }
    Ok(CaseResult {
        case,
        ops,
        seconds: t.seconds,
        hist,
    })
}

pub fn run(cfg: &Config) -> Result<RespSuite, String> {
    let t0 = Instant::now();
    let specs = cases(cfg);
    let warmup = Duration::from_secs_f64(cfg.warmup);
    let timed = Duration::from_secs_f64(cfg.seconds);
    eprintln!("floors: write+fdatasync and loopback round trip");
    let fsync = floor::sync_latency(
        &cfg.scratch,
        SyncKind::Preallocated,
        VALUE_BYTES,
        warmup,
        timed,
    )?
    .hist;
    let rtt = crate::mirroring::loopback_rtt(warmup, timed)?;
    let mut results = Vec::new();
    let mut mix = Vec::new();
    if cfg.mix {
        for barrier in [false, true] {
            let tag = if barrier { "mix-on" } else { "mix-off" };
            let pair = start_pair_with(cfg, Safety::Full, tag, barrier)?;
            for &connections in &cfg.connections {
                eprintln!("[{tag}] 50/50 SET/GET, {connections} connections");
                mix.push(run_mix(cfg, pair.principal, barrier, connections)?);
            }
        }
    }
    let tls = if cfg.tls {
        crate::resp_tls::run(cfg, |files| {
            let pair = start_pair_opts(cfg, Safety::Full, "tls", true, Some(files))?;
            let tls = pair.tls.ok_or("the principal opened no TLS port")?;
            Ok((pair.principal, tls, pair))
        })?
    } else {
        Vec::new()
    };
    for safety in [Safety::Full, Safety::Off]
        .into_iter()
        .filter(|_| !cfg.mix && !cfg.tls)
    {
        let tag = if safety == Safety::Full {
            "full"
        } else {
            "off"
        };
        let pair = start_pair(cfg, safety, tag)?;
        for (i, case) in specs.iter().filter(|c| c.safety == safety).enumerate() {
            eprintln!("[{tag} {}] {}", i + 1, case.describe());
            results.push(run_case(cfg, pair.principal, *case)?);
        }
    }
    Ok(RespSuite {
        tls,
        fsync,
        rtt,
        cases: results,
        mix,
        total_seconds: t0.elapsed().as_secs_f64(),
    })
}

/// Targets from the mirrored-database issue (peers measured on this
/// machine earlier: PostgreSQL 15 synchronous_commit=on about 10,000 TPS;
/// Redis 7 SET + WAIT 1 0 about 17,000 ops/s; the peer benchmark will run
/// them in the same run).
pub fn targets(s: &RespSuite) -> Vec<(bool, String)> {
    let mut out = Vec::new();
    if let Some(c) = s.cases.iter().find(|c| {
        c.case.safety == Safety::Full
            && c.case.op == Op::Set
            && c.case.connections == 32
            && c.case.depth == 1
    }) {
        let r = c.ops_per_s();
        out.push((
            r >= 50_000.0,
            format!(
                "safety full, SET, 32 connections: {} ops/s (goal >= 50,000 = 5x PostgreSQL's ~10,000 TPS measured earlier)",
                thousands(r)
            ),
        ));
        out.push((
            r >= 51_000.0,
            format!(
                "safety full, SET, 32 connections: {} ops/s (goal >= 51,000 = 3x Redis SET+WAIT's ~17,000 measured earlier)",
                thousands(r)
            ),
        ));
    }
    out
}

pub fn render(cfg: &Config, s: &RespSuite) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let _ = writeln!(o, "mirrorlog-bench resp: the key-value server (principal + mirror on loopback, in this process), {} B values, {} keys", VALUE_BYTES, KEYS);
    let _ = writeln!(
        o,
        "{} s per case after {} s warm-up",
        cfg.seconds, cfg.warmup
    );
    let _ = writeln!(
        o,
        "floors: pwrite+fdatasync {} B p50 {}  loopback RTT p50 {}",
        VALUE_BYTES,
        fmt_us(s.fsync.value_at_quantile(0.5)),
        fmt_us(s.rtt.value_at_quantile(0.5))
    );
    if !s.cases.is_empty() {
        let _ = writeln!(
            o,
            "\n  {:<38} {:>12} {:>9} {:>9} {:>9} {:>9}",
            "case", "ops/s", "p50", "p99", "p99.9", "max"
        );
    }
    for c in &s.cases {
        let h = &c.hist;
        let _ = writeln!(
            o,
            "  {:<38} {:>12} {:>9} {:>9} {:>9} {:>9}",
            c.case.describe(),
            thousands(c.ops_per_s()),
            fmt_us(h.value_at_quantile(0.5)),
            fmt_us(h.value_at_quantile(0.99)),
            fmt_us(h.value_at_quantile(0.999)),
            fmt_us(h.max())
        );
    }
    if !s.mix.is_empty() {
        let _ = writeln!(
            o,
            "\nread barrier: 50/50 SET/GET mix, safety full, same build and run"
        );
        let _ = writeln!(
            o,
            "  {:<26} {:>11} {:>9} {:>9} {:>11} {:>9} {:>9}",
            "case", "GET ops/s", "GET p50", "GET p99", "SET ops/s", "SET p50", "SET p99"
        );
        for m in &s.mix {
            let _ = writeln!(
                o,
                "  {:<26} {:>11} {:>9} {:>9} {:>11} {:>9} {:>9}",
                format!(
                    "barrier {} conn {}",
                    if m.read_barrier { "on" } else { "off" },
                    m.connections
                ),
                thousands(m.get_ops as f64 / m.seconds),
                fmt_us(m.get.value_at_quantile(0.5)),
                fmt_us(m.get.value_at_quantile(0.99)),
                thousands(m.set_ops as f64 / m.seconds),
                fmt_us(m.set.value_at_quantile(0.5)),
                fmt_us(m.set.value_at_quantile(0.99)),
            );
        }
    }
    crate::resp_tls::render(&s.tls, &mut o);
    let _ = writeln!(o, "\ntargets:");
    for (pass, t) in targets(s)
        .into_iter()
        .chain(mix_targets(s))
        .chain(crate::resp_tls::targets(&s.tls))
    {
        let _ = writeln!(o, "  [{}] {t}", if pass { "PASS" } else { "MISS" });
    }
    let _ = writeln!(o, "\ndurability: safety full = a SET is answered after both principal and mirror fsynced it (remote-flush); safety off = after the principal's fsync. Latency is per command, client-observed (a pipelined command counts the whole round). Total {:.0} s.", s.total_seconds);
    o
}

pub fn to_json(cfg: &Config, s: &RespSuite) -> Value {
    json!({
        "scenario": "resp",
        "seconds": cfg.seconds,
        "value_bytes": VALUE_BYTES,
        "floors": {"fdatasync_us": lat_json(&s.fsync), "loopback_rtt_us": lat_json(&s.rtt)},
        "cases": s.cases.iter().map(|c| json!({
            "safety": if c.case.safety == Safety::Full { "full" } else { "off" },
            "op": if c.case.op == Op::Set { "SET" } else { "GET" },
            "connections": c.case.connections,
            "pipeline": c.case.depth,
            "ops_per_s": c.ops_per_s(),
            "latency_us": lat_json(&c.hist),
        })).collect::<Vec<_>>(),
        "read_barrier_mix": s.mix.iter().map(|m| json!({
            "read_barrier": m.read_barrier,
            "connections": m.connections,
            "get_ops_per_s": m.get_ops as f64 / m.seconds,
            "set_ops_per_s": m.set_ops as f64 / m.seconds,
            "get_latency_us": lat_json(&m.get),
            "set_latency_us": lat_json(&m.set),
        })).collect::<Vec<_>>(),
        "tls_clients": crate::resp_tls::to_json(&s.tls),
        "targets": targets(s).iter().chain(mix_targets(s).iter()).chain(crate::resp_tls::targets(&s.tls).iter()).map(|(p, t)| json!({"pass": p, "target": t})).collect::<Vec<_>>(),
        "total_seconds": s.total_seconds,
    })
}
