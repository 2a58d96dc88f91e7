//! The `failover` scenario: real processes on 127.0.0.1 — a witness
//! (`mirrorlog witness`) and two partners (`mirrorlog serve`, safety full) —
//! driven over their client ports, as an operator would see them.
//!
//! 1. Automatic failover, repeated `--runs` times, each run on fresh
//!    directories and a fresh witness: a few client connections write
//!    continuously; the principal is SIGKILLed; the failover time is from
//!    just before the kill to the first SET the new principal acknowledges
//!    (`+OK` received by a client). Every acknowledged write is then read
//!    back from the new principal: none may be lost.
//! 2. Catch-up after an outage: the mirror is SIGKILLed, a known amount of
//!    values is written to the principal (which runs exposed), the mirror is
//!    restarted with the same flags, and the time until the principal
//!    reports the mirror hardened up to its written LSN gives MB/s of log,
//!    next to the floors measured in the same run: a loopback TCP copy of
//!    the same number of bytes, and sequential write+fdatasync bandwidth on
//!    the same file system.
//! 3. Reseed rate: with a retention bound the principal deletes the log its
//!    absent mirror needs; the mirror restarts and is reseeded from the
//!    newest checkpoint over the partner connection; the snapshot's transfer
//!    rate, the mirror's restore, and the time to SYNCHRONIZED, against the
//!    loopback TCP floor of the same bytes.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mirrorlog::client::Client;
use mirrorlog::resp::Reply;
use serde_json::{json, Value};

use crate::floor::{self, BandwidthFloor};
use crate::local_commit::XorShift;
use crate::report::{rfc3339, thousands, Machine};
use crate::Config;

/// Client connections writing during a failover run.
const WRITERS: usize = 4;
/// Value size of the failover writers' SETs.
const FAILOVER_VALUE_BYTES: usize = 100;
/// Acknowledged writes (and time) before the principal is killed.
const ACKS_BEFORE_KILL: u64 = 2_000;
const WRITE_BEFORE_KILL: Duration = Duration::from_millis(500);
/// How long the writers go on after the new principal's first
/// acknowledgement (so the check covers writes on the new principal too).
const WRITE_AFTER_FAILOVER: Duration = Duration::from_millis(300);
/// Writers retry a refused SET (READONLY, no quorum) after this long; it is
/// the resolution of the failover time.
const RETRY_PAUSE: Duration = Duration::from_millis(2);
/// Refusals in a row on one connection before a writer tries the other
/// partner.
const REFUSALS_BEFORE_SWITCH: u32 = 10;
/// Catch-up: value size, connections and pipeline depth of the writes made
/// while the mirror is down, and how many distinct keys they overwrite
/// (keeps the store, and any checkpoint, small).
const CATCHUP_VALUE_BYTES: usize = 16 << 10;
const CATCHUP_CONNECTIONS: usize = 4;
const CATCHUP_PIPELINE: usize = 8;
const CATCHUP_KEYS: u64 = 256;
/// Checkpoint interval given to the servers (their default).
const CHECKPOINT_SECS: u64 = 60;
/// How long a cluster may take to start and synchronize.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// The principal's retention bound in the reseed measurement.
const RESEED_RETENTION_BYTES: u64 = 8_000_000;

/// One failover run.
pub struct FailoverRun {
    pub run: usize,
    /// Kill to the first SET acknowledged by the new principal.
    pub failover_ms: Option<f64>,
    /// From the nodes' log lines (wall clock, relative to the kill): the
    /// mirror saw its session end, the witness granted the new epoch, the
    /// new principal served, and told the witness it runs exposed.
    pub session_end_ms: Option<f64>,
    pub grant_ms: Option<f64>,
    pub serving_ms: Option<f64>,
    pub exposed_ms: Option<f64>,
    pub acked_before_kill: u64,
    pub acked_after_kill: u64,
    pub checked: u64,
    pub lost: u64,
    /// Refusals the writers got while the failover was going on, by kind.
    pub refusals: BTreeMap<String, u64>,
    /// Log lines of the new principal and the witness after the kill, with
    /// their time relative to it.
    pub timeline: Vec<(f64, String, String)>,
    /// WARN lines of every process of the run (timestamps cut).
    pub warnings: Vec<String>,
    pub error: Option<String>,
}

pub struct CatchUp {
    pub value_bytes: u64,
    /// Log bytes the mirror had to catch up (written LSN at the restart
    /// minus what the mirror had hardened before it was killed).
    pub log_bytes: u64,
    pub write_seconds: f64,
    pub write_refusals: BTreeMap<String, u64>,
    pub exposed: bool,
    /// From the restart of the mirror process.
    pub first_progress_s: f64,
    pub hardened_s: f64,
    pub applied_s: Option<f64>,
    pub synchronized_s: Option<f64>,
    /// Log bytes left when the first progress was seen.
    pub streamed_bytes: u64,
    pub mirror_log: Vec<String>,
    pub tcp: TcpCopy,
    pub disk: Vec<BandwidthFloor>,
}

impl CatchUp {
    pub fn mb_per_s(&self) -> f64 {
        self.log_bytes as f64 / 1e6 / self.hardened_s.max(1e-9)
    }

    pub fn streaming_mb_per_s(&self) -> f64 {
        self.streamed_bytes as f64 / 1e6 / (self.hardened_s - self.first_progress_s).max(1e-9)
    }
}

pub struct Reseed {
    /// Key-value bytes written while the mirror was down.
    pub value_bytes: u64,
    /// The snapshot sent (a checkpoint file) and its LSN.
    pub snapshot_bytes: u64,
    pub snapshot_lsn: u64,
    /// The principal's own account: seconds to send it.
    pub send_seconds: f64,
    /// The mirror's own account: from the first byte to the state restored.
    pub restore_seconds: Option<f64>,
    /// From the mirror's restart to SYNCHRONIZED with everything applied.
    pub synchronized_s: f64,
    pub tcp: TcpCopy,
    pub lines: Vec<String>,
}

impl Reseed {
    pub fn send_mb_per_s(&self) -> f64 {
        self.snapshot_bytes as f64 / 1e6 / self.send_seconds.max(1e-9)
    }
}

pub struct TcpCopy {
    pub bytes: u64,
    pub seconds: f64,
}

impl TcpCopy {
    pub fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.seconds.max(1e-9)
    }
}

pub struct FailoverSuite {
    pub binary: PathBuf,
    pub binary_modified: Option<u64>,
    pub runs: Vec<FailoverRun>,
    pub catch_up: Result<Option<CatchUp>, String>,
    pub reseed: Result<Option<Reseed>, String>,
    pub started: SystemTime,
    pub total_seconds: f64,
}

impl FailoverSuite {
    pub fn times(&self) -> Vec<f64> {
        let mut v: Vec<f64> = self.runs.iter().filter_map(|r| r.failover_ms).collect();
        v.sort_by(f64::total_cmp);
        v
    }

    pub fn lost(&self) -> u64 {
        self.runs.iter().map(|r| r.lost).sum()
    }

    pub fn checked(&self) -> u64 {
        self.runs.iter().map(|r| r.checked).sum()
    }

    pub fn failed_runs(&self) -> usize {
        self.runs
            .iter()
            .filter(|r| r.error.is_some() || r.lost > 0)
            .count()
    }

    /// Why the scenario must exit non-zero, if it must.
    pub fn failure(&self) -> Option<String> {
        let mut why = Vec::new();
        if self.lost() > 0 {
            why.push(format!(
                "{} acknowledged writes lost in failover",
                self.lost()
            ));
        }
        let errors = self.runs.iter().filter(|r| r.error.is_some()).count();
        if errors > 0 {
            why.push(format!("{errors} failover runs failed"));
        }
        if let Err(e) = &self.catch_up {
            why.push(format!("catch-up failed: {e}"));
        }
        if let Err(e) = &self.reseed {
            why.push(format!("reseed failed: {e}"));
        }
        (!why.is_empty()).then(|| why.join("; "))
    }
}

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

/// The `mirrorlog` binary: `--mirrorlog`, else `$MIRRORLOG_BIN`, else next
/// to this benchmark's own binary (same target directory and profile).
fn find_binary(cfg: &Config) -> Result<PathBuf, String> {
    if let Some(p) = &cfg.mirrorlog_bin {
        return if p.is_file() {
            Ok(p.clone())
        } else {
            Err(format!("--mirrorlog {}: no such file", p.display()))
        };
    }
    if let Some(p) = std::env::var_os("MIRRORLOG_BIN") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!("MIRRORLOG_BIN={}: no such file", p.display()))
        };
    }
    let exe = std::env::current_exe().map_err(|e| format!("finding this binary: {e}"))?;
    let sibling = exe.with_file_name("mirrorlog");
    if sibling.is_file() {
        return Ok(sibling);
    }
    Err(format!(
        "no mirrorlog binary next to {} (build it with the same target directory: cargo build --release -p mirrorlog; or pass --mirrorlog PATH)",
        exe.display()
    ))
}

/// Ports handed out in this process (never twice).
fn free_port() -> Result<u16, String> {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut given = GIVEN.lock().expect("ports");
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("finding a free port: {e}"))?
            .port();
        if !given.contains(&port) {
            given.push(port);
            return Ok(port);
        }
    }
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A child process, SIGKILLed (by its PID, `Child::kill`) when dropped.
struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn kill(&mut self) -> Result<(), String> {
        if self.child.try_wait().ok().flatten().is_none() {
            self.child
                .kill()
                .map_err(|e| format!("killing {}: {e}", self.child.id()))?;
        }
        self.child
            .wait()
            .map_err(|e| format!("waiting for {}: {e}", self.child.id()))?;
        Ok(())
    }

    fn exited(&mut self) -> bool {
        self.child.try_wait().ok().flatten().is_some()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

fn log_text(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn tail(path: &Path, lines: usize) -> String {
    let t = log_text(path);
    let v: Vec<&str> = t.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

/// One partner's addresses and directory.
#[derive(Clone)]
struct Partner {
    name: &'static str,
    dir: PathBuf,
    client: u16,
    partner: u16,
}

/// A witness and two partners, A (started as principal) and B.
struct Cluster {
    bin: PathBuf,
    dir: PathBuf,
    secret: PathBuf,
    timeout_ms: u64,
    witness_port: u16,
    a: Partner,
    b: Partner,
    witness: Option<Proc>,
    pa: Option<Proc>,
    pb: Option<Proc>,
    /// Extra `serve` flags for both partners.
    extra: Vec<String>,
}

impl Cluster {
    fn new(cfg: &Config, bin: &Path, dir: PathBuf, secret: &Path) -> Result<Cluster, String> {
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let partner = |name: &'static str| -> Result<Partner, String> {
            Ok(Partner {
                name,
                dir: dir.join(name),
                client: free_port()?,
                partner: free_port()?,
            })
        };
        Ok(Cluster {
            bin: bin.to_path_buf(),
            secret: secret.to_path_buf(),
            timeout_ms: cfg.partner_timeout_ms,
            witness_port: free_port()?,
            a: partner("a")?,
            b: partner("b")?,
            dir,
            witness: None,
            pa: None,
            pb: None,
            extra: Vec::new(),
        })
    }

    fn open_log(&self, name: &str) -> Result<(std::fs::File, PathBuf), String> {
        let path = self.dir.join(format!("{name}.log"));
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| format!("creating {}: {e}", path.display()))?;
        Ok((f, path))
    }

    fn spawn_witness(&mut self) -> Result<(), String> {
        let (log, path) = self.open_log("witness")?;
        let child = Command::new(&self.bin)
            .args(["witness", "--dir"])
            .arg(self.dir.join("w"))
            .arg("--secret-file")
            .arg(&self.secret)
            .args(["--listen", &addr(self.witness_port).to_string()])
            .args(["--lease-ms", &self.timeout_ms.to_string()])
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("starting {} witness: {e}", self.bin.display()))?;
        self.witness = Some(Proc { child, log: path });
        Ok(())
    }

    /// Starts partner A or B with the same flags every time (the witness
    /// decides the role; `--role` only matters on a new witness).
    fn spawn_partner(&mut self, a: bool) -> Result<(), String> {
        let (me, other, role) = if a {
            (&self.a, &self.b, "principal")
        } else {
            (&self.b, &self.a, "mirror")
        };
        let (log, path) = self.open_log(me.name)?;
        let child = Command::new(&self.bin)
            .args(["serve", "--role", role, "--dir"])
            .arg(&me.dir)
            .arg("--secret-file")
            .arg(&self.secret)
            .args(["--port", &me.client.to_string()])
            .args(["--partner", &addr(me.partner).to_string()])
            .args(["--peer", &addr(other.partner).to_string()])
            .args(["--peer-clients", &addr(other.client).to_string()])
            .args(["--witness", &addr(self.witness_port).to_string()])
            .args(["--partner-timeout-ms", &self.timeout_ms.to_string()])
            .args(["--checkpoint-secs", &CHECKPOINT_SECS.to_string()])
            .args(["--safety", "full"])
            .args(&self.extra)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("starting {} serve: {e}", self.bin.display()))?;
        let p = Proc { child, log: path };
        if a {
            self.pa = Some(p);
        } else {
            self.pb = Some(p);
        }
        Ok(())
    }

    /// All three processes, until A is principal with B synchronized.
    fn start(&mut self) -> Result<(), String> {
        self.spawn_witness()?;
        let w = addr(self.witness_port);
        wait_until(Duration::from_secs(10), || {
            TcpStream::connect_timeout(&w, Duration::from_millis(200)).is_ok()
        })
        .then_some(())
        .ok_or_else(|| self.failed("the witness did not listen within 10 s"))?;
        self.spawn_partner(true)?;
        self.spawn_partner(false)?;
        let a = self.a.client;
        let ok = wait_until(START_TIMEOUT, || {
            if self.any_exited() {
                return true;
            }
            let i = info(a);
            i.contains("role:master") && i.contains("mirroring_state:synchronized")
        });
        if !ok || self.any_exited() {
            return Err(self.failed(&format!(
                "A principal with B synchronized within {} s",
                START_TIMEOUT.as_secs()
            )));
        }
        Ok(())
    }

    fn any_exited(&mut self) -> bool {
        [&mut self.witness, &mut self.pa, &mut self.pb]
            .into_iter()
            .flatten()
            .any(|p| p.exited())
    }

    /// An error with the tail of every process's log.
    fn failed(&self, what: &str) -> String {
        format!("no {what}{}", self.log_tails())
    }

    fn log_tails(&self) -> String {
        let mut s = String::new();
        for (name, p) in [("witness", &self.witness), ("A", &self.pa), ("B", &self.pb)] {
            if let Some(p) = p {
                s.push_str(&format!("\n--- {name} log:\n{}", tail(&p.log, 15)));
            }
        }
        s
    }

    fn logs(&self) -> Vec<PathBuf> {
        ["witness", "a", "b"]
            .iter()
            .map(|n| self.dir.join(format!("{n}.log")))
            .collect()
    }

    /// Stops every process and removes the directory.
    fn finish(mut self) {
        for p in [&mut self.pa, &mut self.pb, &mut self.witness]
            .into_iter()
            .flatten()
        {
            let _ = p.kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts a cluster, retrying with fresh ports when a process could not
/// start (another program may take a port between the probe and the bind).
fn start_cluster(cfg: &Config, bin: &Path, dir: &Path, secret: &Path) -> Result<Cluster, String> {
    let mut last = String::new();
    for attempt in 0..3 {
        let d = dir.with_file_name(format!(
            "{}-{attempt}",
            dir.file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("cluster")
        ));
        let mut c = Cluster::new(cfg, bin, d, secret)?;
        match c.start() {
            Ok(()) => return Ok(c),
            Err(e) => {
                let exited = c.any_exited();
                last = e;
                c.finish();
                if !exited {
                    break;
                }
                eprintln!("  a process exited at start (port taken?); retrying with new ports");
            }
        }
    }
    Err(last)
}

fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn info(port: u16) -> String {
    Client::connect(addr(port), Duration::from_secs(2))
        .ok()
        .and_then(|mut c| c.call(&[b"INFO", b"replication"]).ok())
        .map(info_text)
        .unwrap_or_default()
}

fn info_text(r: Reply) -> String {
    match r {
        Reply::Bulk(b) => String::from_utf8_lossy(&b).into_owned(),
        _ => String::new(),
    }
}

fn field<'a>(info: &'a str, key: &str) -> Option<&'a str> {
    info.lines().find_map(|l| {
        l.strip_prefix(key)
            .and_then(|r| r.strip_prefix(':'))
            .map(str::trim)
    })
}

fn field_u64(info: &str, key: &str) -> Option<u64> {
    field(info, key).and_then(|v| v.parse().ok())
}

/// The first word of a refusal (`READONLY`, `TRYAGAIN`, ...), for counting.
fn refusal_kind(e: &str) -> String {
    e.split_whitespace()
        .next()
        .unwrap_or("(empty)")
        .trim_end_matches(':')
        .to_string()
}

/// Parses the time at the start of a log line
/// (`2026-11-27T20:27:51.420152Z`) to seconds since the UNIX epoch.
pub fn line_time(line: &str) -> Option<f64> {
    let ts = line.split_whitespace().next()?.strip_suffix('Z')?;
    let (date, time) = ts.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let mut t = time.split(':');
    let (hh, mm) = (
        t.next()?.parse::<i64>().ok()?,
        t.next()?.parse::<i64>().ok()?,
    );
    let ss: f64 = t.next()?.parse().ok()?;
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) {
        return None;
    }
    // Howard Hinnant's days_from_civil.
    let yy = if m <= 2 { y - 1 } else { y };
    let era = yy.div_euclid(400);
    let yoe = yy - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + hh * 3600 + mm * 60) as f64 + ss)
}

fn unix_secs(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// A log line without its timestamp and level.
fn message(line: &str) -> &str {
    let mut rest = line.trim_start();
    for _ in 0..2 {
        rest = rest
            .find(char::is_whitespace)
            .map_or("", |i| rest[i..].trim_start());
    }
    rest
}

/// WARN (and ERROR) lines of the given logs, numbers replaced by `#` so
/// the same warning of different runs counts as one kind.
fn warnings(logs: &[PathBuf]) -> Vec<String> {
    let mut out = Vec::new();
    for p in logs {
        let who = p
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("?")
            .to_string();
        for l in log_text(p).lines() {
            let level = l.split_whitespace().nth(1).unwrap_or("");
            if level == "WARN" || level == "ERROR" {
                let mut norm = String::new();
                let mut in_num = false;
                for ch in message(l).chars() {
                    if ch.is_ascii_digit() {
                        if !in_num {
                            norm.push('#');
                        }
                        in_num = true;
                    } else {
                        in_num = false;
                        norm.push(ch);
                    }
                }
                out.push(format!("{who} {level}: {norm}"));
            }
        }
    }
    out
}

/// State shared by the failover writers and the driver.
struct Shared {
    base: Instant,
    stop: AtomicBool,
    acked: AtomicU64,
    /// ns since `base` just before the kill (MAX before).
    kill_ns: AtomicU64,
    /// ns since `base` of the first acknowledgement by B after the kill.
    first_new_ns: AtomicU64,
}

struct WriterOut {
    /// (index, acknowledged by B, ns since base) of every acknowledged SET.
    acks: Vec<(u64, bool, u64)>,
    refusals: BTreeMap<String, u64>,
}

fn key(run: usize, w: usize, i: u64) -> String {
    format!("run{run}-w{w}-k{i}")
}

fn value(run: usize, w: usize, i: u64) -> String {
    format!(
        "{:0>width$}",
        format!("r{run}w{w}i{i}"),
        width = FAILOVER_VALUE_BYTES
    )
}

/// A writer: SETs its own keys on whichever partner accepts them, one at a
/// time, and records every acknowledgement. A refused SET is retried (same
/// key and value) after [`RETRY_PAUSE`]; a lost connection, or
/// [`REFUSALS_BEFORE_SWITCH`] refusals in a row, sends it to the other
/// partner.
fn writer(run: usize, w: usize, ports: [u16; 2], sh: &Shared) -> WriterOut {
    let mut out = WriterOut {
        acks: Vec::new(),
        refusals: BTreeMap::new(),
    };
    let mut i = 0u64;
    let mut target = 0usize;
    let mut refused = 0u32;
    let mut conn: Option<Client> = None;
    while !sh.stop.load(Ordering::Acquire) {
        let c = match &mut conn {
            Some(c) => c,
            None => match Client::connect(addr(ports[target]), Duration::from_secs(5)) {
                Ok(c) => conn.insert(c),
                Err(_) => {
                    target = 1 - target;
                    std::thread::sleep(RETRY_PAUSE);
                    continue;
                }
            },
        };
        let (k, v) = (key(run, w, i), value(run, w, i));
        match c.call(&[b"SET", k.as_bytes(), v.as_bytes()]) {
            Ok(Reply::Simple(s)) if s == "OK" => {
                let ns = sh.base.elapsed().as_nanos() as u64;
                let on_b = target == 1;
                if on_b && ns > sh.kill_ns.load(Ordering::Acquire) {
                    sh.first_new_ns.fetch_min(ns, Ordering::AcqRel);
                }
                out.acks.push((i, on_b, ns));
                sh.acked.fetch_add(1, Ordering::Relaxed);
                i += 1;
                refused = 0;
            }
            Ok(Reply::Error(e)) => {
                *out.refusals.entry(refusal_kind(&e)).or_default() += 1;
                refused += 1;
                if refused >= REFUSALS_BEFORE_SWITCH {
                    refused = 0;
                    conn = None;
                    target = 1 - target;
                }
                std::thread::sleep(RETRY_PAUSE);
            }
            Ok(other) => {
                *out.refusals
                    .entry(format!("unexpected reply {other:?}"))
                    .or_default() += 1;
                conn = None;
                target = 1 - target;
            }
            Err(_) => {
                conn = None;
                refused = 0;
                target = 1 - target;
            }
        }
    }
    out
}

/// Reads every acknowledged key back from `port`: (checked, lost).
fn check(port: u16, run: usize, acks: &[(usize, u64)]) -> Result<(u64, u64), String> {
    let mut c = Client::connect(addr(port), Duration::from_secs(10))
        .map_err(|e| format!("connecting to the new principal to check: {e}"))?;
    let mut lost = 0;
    for chunk in acks.chunks(500) {
        let keys: Vec<String> = chunk.iter().map(|&(w, i)| key(run, w, i)).collect();
        let cmds: Vec<Vec<&[u8]>> = keys
            .iter()
            .map(|k| vec![&b"GET"[..], k.as_bytes()])
            .collect();
        let replies = c
            .pipeline(&cmds)
            .map_err(|e| format!("reading back acknowledged writes: {e}"))?;
        for (&(w, i), r) in chunk.iter().zip(replies) {
            if r != Reply::Bulk(value(run, w, i).into_bytes()) {
                lost += 1;
            }
        }
    }
    Ok((acks.len() as u64, lost))
}

fn failover_run(cfg: &Config, bin: &Path, secret: &Path, run: usize) -> FailoverRun {
    let mut r = FailoverRun {
        run,
        failover_ms: None,
        session_end_ms: None,
        grant_ms: None,
        serving_ms: None,
        exposed_ms: None,
        acked_before_kill: 0,
        acked_after_kill: 0,
        checked: 0,
        lost: 0,
        refusals: BTreeMap::new(),
        timeline: Vec::new(),
        warnings: Vec::new(),
        error: None,
    };
    let dir = cfg.scratch.join(format!("failover-{run}"));
    let mut cluster = match start_cluster(cfg, bin, &dir, secret) {
        Ok(c) => c,
        Err(e) => {
            r.error = Some(e);
            return r;
        }
    };
    if let Err(e) = drive_failover(cfg, &mut cluster, run, &mut r) {
        r.error = Some(e);
    }
    r.warnings = warnings(&cluster.logs());
    cluster.finish();
    r
}

fn drive_failover(
    cfg: &Config,
    cl: &mut Cluster,
    run: usize,
    r: &mut FailoverRun,
) -> Result<(), String> {
    let sh = Shared {
        base: Instant::now(),
        stop: AtomicBool::new(false),
        acked: AtomicU64::new(0),
        kill_ns: AtomicU64::new(u64::MAX),
        first_new_ns: AtomicU64::new(u64::MAX),
    };
    let ports = [cl.a.client, cl.b.client];
    let timeout = Duration::from_millis(cfg.partner_timeout_ms) * 3 + Duration::from_secs(30);
    let mut kill_wall = SystemTime::now();
    let outs = std::thread::scope(|s| -> Result<Vec<WriterOut>, String> {
        let handles: Vec<_> = (0..WRITERS)
            .map(|w| {
                let sh = &sh;
                s.spawn(move || writer(run, w, ports, sh))
            })
            .collect();
        let result = (|| -> Result<(), String> {
            let t0 = Instant::now();
            let ok = wait_until(Duration::from_secs(30), || {
                sh.acked.load(Ordering::Relaxed) >= ACKS_BEFORE_KILL
                    && t0.elapsed() >= WRITE_BEFORE_KILL
            });
            if !ok {
                return Err(cl.failed(&format!(
                    "{ACKS_BEFORE_KILL} writes acknowledged by A within 30 s"
                )));
            }
            // SIGKILL the principal under load.
            let pa = cl.pa.as_mut().expect("A runs");
            kill_wall = SystemTime::now();
            sh.kill_ns
                .store(sh.base.elapsed().as_nanos() as u64, Ordering::Release);
            pa.kill()?;
            let ok = wait_until(timeout, || {
                sh.first_new_ns.load(Ordering::Acquire) != u64::MAX
            });
            if !ok {
                return Err(cl.failed(&format!(
                    "write acknowledged by B within {} s of the kill",
                    timeout.as_secs()
                )));
            }
            std::thread::sleep(WRITE_AFTER_FAILOVER);
            Ok(())
        })();
        sh.stop.store(true, Ordering::Release);
        let mut outs = Vec::new();
        for h in handles {
            outs.push(h.join().map_err(|_| "a writer panicked".to_string())?);
        }
        result.map(|()| outs)
    })?;
    let kill_ns = sh.kill_ns.load(Ordering::Acquire);
    let first = sh.first_new_ns.load(Ordering::Acquire);
    r.failover_ms = Some((first - kill_ns) as f64 / 1e6);
    let mut acks = Vec::new();
    for (w, o) in outs.iter().enumerate() {
        for &(i, _on_b, ns) in &o.acks {
            if ns <= kill_ns {
                r.acked_before_kill += 1;
            } else {
                r.acked_after_kill += 1;
            }
            acks.push((w, i));
        }
        for (k, n) in &o.refusals {
            *r.refusals.entry(k.clone()).or_default() += n;
        }
    }
    let i = info(cl.b.client);
    if !i.contains("role:master") {
        return Err(format!("B is not principal after the failover:\n{i}"));
    }
    let (checked, lost) = check(cl.b.client, run, &acks)?;
    r.checked = checked;
    r.lost = lost;
    // The timeline, from the log lines of B and the witness.
    let kill = unix_secs(kill_wall);
    for (who, path) in [
        ("B", cl.dir.join("b.log")),
        ("witness", cl.dir.join("witness.log")),
    ] {
        for l in log_text(&path).lines() {
            let Some(t) = line_time(l) else { continue };
            let ms = (t - kill) * 1e3;
            if ms < -5.0 {
                continue;
            }
            let msg = message(l).to_string();
            let first = |slot: &mut Option<f64>, needle: &str| {
                if slot.is_none() && msg.contains(needle) {
                    *slot = Some(ms);
                }
            };
            first(&mut r.session_end_ms, "session ended");
            if who == "witness" && msg.contains("(failover)") {
                first(&mut r.grant_ms, "granted");
            }
            first(&mut r.serving_ms, "serving as principal");
            first(
                &mut r.exposed_ms,
                "told the witness this principal runs exposed",
            );
            r.timeline.push((ms, who.to_string(), msg));
        }
    }
    r.timeline.sort_by(|a, b| a.0.total_cmp(&b.0));
    Ok(())
}

/// Copies `bytes` over a loopback TCP connection (1 MiB writes, a reader
/// thread that discards and answers one byte at the end).
pub fn tcp_copy(bytes: u64) -> Result<TcpCopy, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("tcp floor: {e}"))?;
    let a = listener.local_addr().map_err(|e| e.to_string())?;
    let reader = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut s, _) = listener.accept()?;
        let mut buf = vec![0u8; 1 << 20];
        let mut got = 0u64;
        while got < bytes {
            let n = s.read(&mut buf)?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            got += n as u64;
        }
        s.write_all(&[1])
    });
    let mut s = TcpStream::connect(a).map_err(|e| format!("tcp floor: {e}"))?;
    let mut chunk = vec![0u8; 1 << 20];
    XorShift::new(0x7c9).fill(&mut chunk);
    let t = Instant::now();
    let mut sent = 0u64;
    while sent < bytes {
        let n = (bytes - sent).min(chunk.len() as u64) as usize;
        s.write_all(&chunk[..n])
            .map_err(|e| format!("tcp floor: {e}"))?;
        sent += n as u64;
    }
    let mut one = [0u8; 1];
    s.read_exact(&mut one)
        .map_err(|e| format!("tcp floor: {e}"))?;
    let seconds = t.elapsed().as_secs_f64();
    reader
        .join()
        .map_err(|_| "tcp floor reader panicked".to_string())?
        .map_err(|e| format!("tcp floor: {e}"))?;
    Ok(TcpCopy { bytes, seconds })
}

/// Writes `total` bytes of 16 KiB incompressible values to the principal
/// from a few pipelining connections; returns the value bytes acknowledged
/// and the refusals by kind.
fn write_values(port: u16, total: u64) -> Result<(u64, BTreeMap<String, u64>), String> {
    let per_conn = total.div_ceil(CATCHUP_CONNECTIONS as u64);
    let refusals = Mutex::new(BTreeMap::<String, u64>::new());
    let bytes = std::thread::scope(|s| {
        let handles: Vec<_> = (0..CATCHUP_CONNECTIONS)
            .map(|t| {
                let refusals = &refusals;
                s.spawn(move || -> Result<u64, String> {
                    let mut c = Client::connect(addr(port), Duration::from_secs(30))
                        .map_err(|e| format!("connecting to the principal: {e}"))?;
                    // Distinct streams per connection (XorShift::new sets the low
                    // bit, so seeds must differ above it).
                    let mut rng = XorShift::new(0xca7c_0000 ^ ((t as u64 + 1) << 32));
                    let mut values = vec![vec![0u8; CATCHUP_VALUE_BYTES]; CATCHUP_PIPELINE];
                    let mut done = 0u64;
                    let mut j = 0u64;
                    let give_up = Instant::now() + Duration::from_secs(120);
                    while done < per_conn {
                        let keys: Vec<String> = (0..CATCHUP_PIPELINE as u64)
                            .map(|x| format!("c{t}-{}", (j + x) % CATCHUP_KEYS))
                            .collect();
                        for v in values.iter_mut() {
                            rng.fill(v);
                        }
                        let cmds: Vec<Vec<&[u8]>> = keys
                            .iter()
                            .zip(&values)
                            .map(|(k, v)| vec![&b"SET"[..], k.as_bytes(), &v[..]])
                            .collect();
                        let replies = c
                            .pipeline(&cmds)
                            .map_err(|e| format!("writing to the principal: {e}"))?;
                        let mut ok = 0u64;
                        for r in replies {
                            match r {
                                Reply::Simple(s) if s == "OK" => ok += 1,
                                Reply::Error(e) => {
                                    *refusals
                                        .lock()
                                        .expect("refusals")
                                        .entry(refusal_kind(&e))
                                        .or_default() += 1;
                                }
                                other => return Err(format!("unexpected reply {other:?}")),
                            }
                        }
                        if ok < CATCHUP_PIPELINE as u64 {
                            if Instant::now() > give_up {
                                return Err("the principal kept refusing writes for 120 s".into());
                            }
                            std::thread::sleep(Duration::from_millis(10));
                        }
                        done += ok * CATCHUP_VALUE_BYTES as u64;
                        j += CATCHUP_PIPELINE as u64;
                    }
                    Ok(done)
                })
            })
            .collect();
        let mut bytes = 0;
        for h in handles {
            bytes += h
                .join()
                .map_err(|_| "a catch-up writer panicked".to_string())??;
        }
        Ok::<u64, String>(bytes)
    })?;
    Ok((bytes, refusals.into_inner().expect("refusals")))
}

fn catch_up(cfg: &Config, bin: &Path, secret: &Path) -> Result<CatchUp, String> {
    let total = cfg.catchup_mb * 1_000_000;
    eprintln!(
        "catch-up: floors (sequential write+fdatasync, {:.1} s each way)",
        cfg.seconds
    );
    let disk = floor::bandwidth(&cfg.scratch, Duration::from_secs_f64(cfg.seconds), false)?;
    eprintln!(
        "catch-up: start, kill the mirror, write {} MB",
        cfg.catchup_mb
    );
    let mut cl = start_cluster(cfg, bin, &cfg.scratch.join("catchup"), secret)?;
    let r = drive_catch_up(&mut cl, total, disk);
    let r = r.map_err(|e| format!("{e}{}", cl.log_tails()));
    cl.finish();
    r
}

fn drive_catch_up(
    cl: &mut Cluster,
    total: u64,
    disk: [BandwidthFloor; 2],
) -> Result<CatchUp, String> {
    let a = cl.a.client;
    let before = info(a);
    let h0 = field_u64(&before, "mirror_hardened_lsn").ok_or("no mirror_hardened_lsn in INFO")?;
    cl.pb.as_mut().expect("B runs").kill()?;
    let t = Instant::now();
    let (value_bytes, write_refusals) = write_values(a, total)?;
    let write_seconds = t.elapsed().as_secs_f64();
    let after = info(a);
    let written = field_u64(&after, "master_repl_offset").ok_or("no master_repl_offset in INFO")?;
    let exposed = field(&after, "mirroring_exposed") == Some("1");
    let log_bytes = written.saturating_sub(h0);
    eprintln!(
        "catch-up: {} MB of log to catch up; loopback TCP copy of as many bytes",
        log_bytes / 1_000_000
    );
    let tcp = tcp_copy(log_bytes)?;
    eprintln!("catch-up: restart the mirror");
    let mut poll = Client::connect(addr(a), Duration::from_secs(5))
        .map_err(|e| format!("connecting to the principal: {e}"))?;
    let t0 = Instant::now();
    cl.spawn_partner(false)?;
    let (mut first, mut hardened_at, mut applied_at, mut sync_at) = (None, None, None, None);
    let mut streamed = log_bytes;
    let deadline = t0 + Duration::from_secs(300);
    while applied_at.is_none() || sync_at.is_none() || hardened_at.is_none() {
        if Instant::now() > deadline {
            break;
        }
        let i = match poll.call(&[b"INFO", b"replication"]) {
            Ok(r) => info_text(r),
            Err(e) => return Err(format!("polling the principal: {e}")),
        };
        let now = t0.elapsed().as_secs_f64();
        let h = field_u64(&i, "mirror_hardened_lsn").unwrap_or(0);
        let ap = field_u64(&i, "mirror_applied_lsn").unwrap_or(0);
        if first.is_none() && h > h0 {
            first = Some(now);
            streamed = written.saturating_sub(h);
        }
        if hardened_at.is_none() && h >= written {
            hardened_at = Some(now);
            first.get_or_insert(now);
        }
        if applied_at.is_none() && ap >= written {
            applied_at = Some(now);
        }
        if sync_at.is_none() && field(&i, "mirroring_state") == Some("synchronized") {
            sync_at = Some(now);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let hardened_s = hardened_at.ok_or("the mirror did not harden everything within 300 s")?;
    let mirror_log = log_text(&cl.dir.join("b.log"))
        .lines()
        .map(|l| message(l).to_string())
        .collect::<Vec<_>>();
    // Only the restarted process's lines (the log file is appended to).
    let restart = mirror_log
        .iter()
        .rposition(|l| l.contains("recovered"))
        .unwrap_or(0);
    Ok(CatchUp {
        value_bytes,
        log_bytes,
        write_seconds,
        write_refusals,
        exposed,
        first_progress_s: first.unwrap_or(hardened_s),
        hardened_s,
        applied_s: applied_at,
        synchronized_s: sync_at,
        streamed_bytes: streamed,
        mirror_log: mirror_log[restart..].to_vec(),
        tcp,
        disk: disk.into_iter().collect(),
    })
}

fn reseed(cfg: &Config, bin: &Path, secret: &Path) -> Result<Reseed, String> {
    // The snapshot is the whole store: at most 100 MB of values.
    let total = cfg.catchup_mb.min(100) * 1_000_000;
    eprintln!(
        "reseed: start (retention bound {RESEED_RETENTION_BYTES} bytes, 8 MiB segments, checkpoints every second), kill the mirror, write {} MB",
        total / 1_000_000
    );
    let dir = cfg.scratch.join("reseed");
    let mut last = String::new();
    let mut cl = None;
    for attempt in 0..3 {
        let mut c = Cluster::new(
            cfg,
            bin,
            dir.with_file_name(format!("reseed-{attempt}")),
            secret,
        )?;
        c.extra = vec![
            "--retention-max-bytes".into(),
            RESEED_RETENTION_BYTES.to_string(),
            "--checkpoint-secs".into(),
            "1".into(),
            // Whole segments are deleted: small ones, so the bound bites.
            "--segment-bytes".into(),
            "8388608".into(),
        ];
        match c.start() {
            Ok(()) => {
                cl = Some(c);
                break;
            }
            Err(e) => {
                last = e;
                c.finish();
            }
        }
    }
    let mut cl = cl.ok_or(last)?;
    let r = drive_reseed(&mut cl, total);
    let r = r.map_err(|e| format!("{e}{}", cl.log_tails()));
    cl.finish();
    r
}

fn drive_reseed(cl: &mut Cluster, total: u64) -> Result<Reseed, String> {
    let a = cl.a.client;
    let h0 = field_u64(&info(a), "mirror_hardened_lsn").ok_or("no mirror_hardened_lsn in INFO")?;
    cl.pb.as_mut().expect("B runs").kill()?;
    let (value_bytes, _) = write_values(a, total)?;
    // A checkpoint past the bound deletes the log the mirror needs.
    let gone = wait_until(Duration::from_secs(120), || {
        let i = Client::connect(addr(a), Duration::from_secs(2))
            .ok()
            .and_then(|mut c| c.call(&[b"INFO", b"persistence"]).ok())
            .map(info_text)
            .unwrap_or_default();
        field_u64(&i, "mirrorlog_log_start_lsn").is_some_and(|s| s > h0)
    });
    if !gone {
        return Err(
            "the principal did not delete the log past the retention bound within 120 s".into(),
        );
    }
    eprintln!("reseed: the log the mirror needs is gone; restart the mirror");
    let t0 = Instant::now();
    cl.spawn_partner(false)?;
    let done = wait_until(Duration::from_secs(300), || {
        let i = info(a);
        i.contains("mirroring_state:synchronized")
            && field_u64(&i, "mirror_applied_lsn") == field_u64(&i, "master_repl_offset")
    });
    let synchronized_s = t0.elapsed().as_secs_f64();
    if !done {
        return Err("the reseeded mirror did not synchronize within 300 s".into());
    }
    let plog: Vec<String> = log_text(&cl.dir.join("a.log"))
        .lines()
        .map(|l| message(l).to_string())
        .collect();
    let mlog: Vec<String> = log_text(&cl.dir.join("b.log"))
        .lines()
        .map(|l| message(l).to_string())
        .collect();
    // "reseeded the mirror from the snapshot at LSN {lsn} ({mb} MB in {s} s, ..."
    let sent = plog
        .iter()
        .rev()
        .find(|l| l.contains("reseeded the mirror from the snapshot at LSN"))
        .ok_or("the principal never said it reseeded the mirror")?;
    let num_after = |text: &str, key: &str| -> Option<f64> {
        let rest = &text[text.find(key)? + key.len()..];
        let end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        rest[..end].parse().ok()
    };
    let snapshot_lsn = num_after(sent, "at LSN ").ok_or("no LSN in the reseed line")? as u64;
    let send_seconds = num_after(sent, " MB in ").ok_or("no time in the reseed line")?;
    let begin = plog
        .iter()
        .rev()
        .find(|l| l.contains("reseeding the mirror from the snapshot at LSN"))
        .ok_or("the principal never said it began a reseed")?;
    let snapshot_bytes = num_after(begin, &format!("LSN {snapshot_lsn} ("))
        .ok_or("no size in the reseed line")? as u64;
    let restore_seconds = mlog
        .iter()
        .rev()
        .find(|l| l.contains("reseeded: state restored at LSN"))
        .and_then(|l| num_after(l, " MB in "));
    let tcp = tcp_copy(snapshot_bytes)?;
    let lines = plog
        .iter()
        .filter(|l| l.contains("retention bound") || l.contains("reseed"))
        .take(3)
        .chain(mlog.iter().filter(|l| l.contains("reseed")).take(8))
        .cloned()
        .collect();
    Ok(Reseed {
        value_bytes,
        snapshot_bytes,
        snapshot_lsn,
        send_seconds,
        restore_seconds,
        synchronized_s,
        tcp,
        lines,
    })
}

pub fn run(cfg: &Config) -> Result<FailoverSuite, String> {
    let started = SystemTime::now();
    let t0 = Instant::now();
    let bin = find_binary(cfg)?;
    let binary_modified = std::fs::metadata(&bin)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_secs());
    eprintln!("failover: using {}", bin.display());
    let secret = cfg.scratch.join("failover.secret");
    crate::mirroring::write_secret(&secret)?;
    let mut runs = Vec::new();
    for run in 1..=cfg.runs {
        let r = failover_run(cfg, &bin, &secret, run);
        eprintln!(
            "[{run:>3}/{}] failover {}; {} acknowledged, {} lost{} ({:.0} s elapsed)",
            cfg.runs,
            r.failover_ms
                .map_or("-".to_string(), |ms| format!("{ms:.1} ms")),
            r.checked,
            r.lost,
            r.error.as_ref().map_or(String::new(), |e| format!(
                "; ERROR: {}",
                e.lines().next().unwrap_or("")
            )),
            t0.elapsed().as_secs_f64()
        );
        runs.push(r);
    }
    let catch_up = if cfg.catchup_mb == 0 {
        Ok(None)
    } else {
        catch_up(cfg, &bin, &secret).map(Some)
    };
    let reseed = if cfg.catchup_mb == 0 {
        Ok(None)
    } else {
        reseed(cfg, &bin, &secret).map(Some)
    };
    Ok(FailoverSuite {
        binary: bin,
        binary_modified,
        runs,
        catch_up,
        reseed,
        started,
        total_seconds: t0.elapsed().as_secs_f64(),
    })
}

fn ms(v: Option<f64>) -> String {
    v.map_or("-".to_string(), |x| format!("{x:.1}"))
}

/// Failover time target: within the partner timeout + 500 ms.
pub fn target_ms(cfg: &Config) -> f64 {
    cfg.partner_timeout_ms as f64 + 500.0
}

pub fn render(cfg: &Config, machine: &Machine, s: &FailoverSuite) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let _ = writeln!(o, "mirrorlog-bench failover");
    let _ = writeln!(
        o,
        "machine: {} cpus ({}), kernel {}; dirs under {} ({} on {})",
        machine.nproc, machine.cpu, machine.kernel, machine.dir, machine.fs_type, machine.device
    );
    let _ = writeln!(
        o,
        "processes: `mirrorlog witness` + two `mirrorlog serve` (safety full) on 127.0.0.1; binary {} (modified {})",
        s.binary.display(),
        s.binary_modified.map_or("?".to_string(), rfc3339)
    );
    let _ = writeln!(
        o,
        "partner timeout {} ms (--partner-timeout-ms), witness lease {} ms (= the partner timeout), checkpoint every {} s",
        cfg.partner_timeout_ms, cfg.partner_timeout_ms, CHECKPOINT_SECS
    );

    let _ = writeln!(
        o,
        "\n1. Automatic failover: principal SIGKILLed while {WRITERS} clients SET {FAILOVER_VALUE_BYTES} B values one at a time ({} runs, fresh directories and witness each)",
        s.runs.len()
    );
    let _ = writeln!(
        o,
        "   failover time = kill -> first SET acknowledged by the new principal (client-observed; writers retry every {} ms)",
        RETRY_PAUSE.as_millis()
    );
    let _ = writeln!(
        o,
        "   log columns (wall clock of the nodes' log lines, ms after the kill): mirror saw its session end, witness granted the epoch, new principal serving, new principal told the witness it runs exposed"
    );
    let _ = writeln!(
        o,
        "\n  {:>4} {:>10} {:>9} {:>9} {:>9} {:>9} {:>11} {:>9} {:>6}  refusals seen by writers",
        "run", "failover", "sess.end", "grant", "serving", "exposed", "acked/kill", "after", "lost"
    );
    for r in &s.runs {
        let refusals = r
            .refusals
            .iter()
            .map(|(k, n)| format!("{k} x{n}"))
            .collect::<Vec<_>>()
            .join(", ");
        let _ = writeln!(
            o,
            "  {:>4} {:>10} {:>9} {:>9} {:>9} {:>9} {:>11} {:>9} {:>6}  {}",
            r.run,
            ms(r.failover_ms),
            ms(r.session_end_ms),
            ms(r.grant_ms),
            ms(r.serving_ms),
            ms(r.exposed_ms),
            thousands(r.acked_before_kill as f64),
            thousands(r.acked_after_kill as f64),
            r.lost,
            refusals
        );
        if let Some(e) = &r.error {
            let _ = writeln!(o, "       ERROR: {}", e.replace('\n', "\n       "));
        }
    }
    let times = s.times();
    let target = target_ms(cfg);
    let (p50, p99, max) = (
        percentile(&times, 0.5),
        percentile(&times, 0.99),
        times.last().copied(),
    );
    let _ = writeln!(
        o,
        "\n  failover time over {} runs (ms): p50 {}  p99 {}  max {}  (min {}; nearest rank)",
        times.len(),
        ms(p50),
        ms(p99),
        ms(max),
        ms(times.first().copied())
    );
    let _ = writeln!(
        o,
        "  acknowledged writes read back from the new principal: {}, lost: {}{}",
        thousands(s.checked() as f64),
        s.lost(),
        if s.lost() > 0 { "  <-- FAILURE" } else { "" }
    );
    // The timeline of the slowest run.
    if let Some(slow) = s
        .runs
        .iter()
        .filter(|r| r.failover_ms.is_some())
        .max_by(|a, b| {
            a.failover_ms
                .unwrap_or(0.0)
                .total_cmp(&b.failover_ms.unwrap_or(0.0))
        })
    {
        let _ = writeln!(
            o,
            "\n  log lines after the kill, slowest run ({}; failover {} ms):",
            slow.run,
            ms(slow.failover_ms)
        );
        for (t, who, msg) in slow.timeline.iter().take(20) {
            let _ = writeln!(o, "    {t:>8.1} ms  {who:<7} {msg}");
        }
    }
    let mut warn_counts: BTreeMap<&str, usize> = BTreeMap::new();
    for r in &s.runs {
        for w in &r.warnings {
            *warn_counts.entry(w.as_str()).or_default() += 1;
        }
    }
    if !warn_counts.is_empty() {
        let _ = writeln!(
            o,
            "\n  WARN lines over all runs (a = old principal, b = mirror/new principal; numbers as #):"
        );
        for (w, n) in &warn_counts {
            let _ = writeln!(o, "    {n:>4} x {w}");
        }
    }

    let _ = writeln!(o, "\n2. Catch-up after an outage of the mirror");
    match &s.catch_up {
        Ok(None) => {
            let _ = writeln!(o, "  not run (--catchup-mb 0)");
        }
        Err(e) => {
            let _ = writeln!(o, "  FAILED: {}", e.replace('\n', "\n    "));
        }
        Ok(Some(c)) => {
            let _ = writeln!(
                o,
                "  mirror SIGKILLed; {:.1} MB of {} KiB incompressible values written to the principal ({} connections x pipeline {}) in {:.2} s (exposed: {}){}",
                c.value_bytes as f64 / 1e6,
                CATCHUP_VALUE_BYTES >> 10,
                CATCHUP_CONNECTIONS,
                CATCHUP_PIPELINE,
                c.write_seconds,
                if c.exposed { "yes" } else { "no" },
                if c.write_refusals.is_empty() {
                    String::new()
                } else {
                    format!(
                        "; refusals: {}",
                        c.write_refusals
                            .iter()
                            .map(|(k, n)| format!("{k} x{n}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                }
            );
            let _ = writeln!(
                o,
                "  mirror restarted with the same flags; {:.1} MB of log to catch up (written LSN - LSN the mirror had hardened)",
                c.log_bytes as f64 / 1e6
            );
            let _ = writeln!(
                o,
                "    first progress seen on the principal after {:.3} s; hardened up to the written LSN after {:.3} s; applied after {}; synchronized after {}",
                c.first_progress_s,
                c.hardened_s,
                c.applied_s.map_or("-".to_string(), |x| format!("{x:.3} s")),
                c.synchronized_s.map_or("-".to_string(), |x| format!("{x:.3} s")),
            );
            let floor = c
                .disk
                .iter()
                .map(|b| b.mb_per_s())
                .fold(c.tcp.mb_per_s(), f64::min);
            let _ = writeln!(
                o,
                "  catch-up rate: {:.1} MB/s of log from the restart ({:.1} MB/s from the first progress)",
                c.mb_per_s(),
                c.streaming_mb_per_s()
            );
            let _ = writeln!(o, "  floors (same run):");
            let _ = writeln!(
                o,
                "    loopback TCP copy of the same {:.1} MB: {:.1} MB/s ({:.3} s)",
                c.tcp.bytes as f64 / 1e6,
                c.tcp.mb_per_s(),
                c.tcp.seconds
            );
            for b in &c.disk {
                let _ = writeln!(
                    o,
                    "    {}: {:.1} MB/s ({} MiB in {:.2} s)",
                    b.kind.name(),
                    b.mb_per_s(),
                    b.bytes >> 20,
                    b.seconds
                );
            }
            let _ = writeln!(
                o,
                "  catch-up / lowest floor: {:.0}% (from the restart), {:.0}% (from the first progress)",
                100.0 * c.mb_per_s() / floor.max(1e-9),
                100.0 * c.streaming_mb_per_s() / floor.max(1e-9)
            );
            if c.streaming_mb_per_s() > floor {
                let _ = writeln!(
                    o,
                    "  (above the disk floor: the floor fdatasyncs every {} MiB, the mirror hardens larger groups, and the kernel writes dirty pages back meanwhile)",
                    crate::floor::BW_SYNC_EVERY_BYTES >> 20
                );
            }
            let _ = writeln!(o, "  the restarted mirror's log:");
            for l in c.mirror_log.iter().take(12) {
                let _ = writeln!(o, "    {l}");
            }
        }
    }

    let _ = writeln!(o, "\n3. Reseed: the principal (retention bound {RESEED_RETENTION_BYTES} bytes, 8 MiB segments, a checkpoint every second) deletes the log its absent mirror needs; the mirror restarts");
    match &s.reseed {
        Ok(None) => {
            let _ = writeln!(o, "  skipped (--catchup-mb 0)");
        }
        Err(e) => {
            let _ = writeln!(o, "  FAILED: {e}");
        }
        Ok(Some(r)) => {
            let _ = writeln!(
                o,
                "  {:.1} MB of values written while the mirror was down; snapshot (the newest checkpoint) {:.1} MB at LSN {}",
                r.value_bytes as f64 / 1e6,
                r.snapshot_bytes as f64 / 1e6,
                r.snapshot_lsn
            );
            let _ = writeln!(
                o,
                "  sent in {:.3} s: {:.0} MB/s (loopback TCP copy of the same bytes, same run: {:.0} MB/s, {:.0}%)",
                r.send_seconds,
                r.send_mb_per_s(),
                r.tcp.mb_per_s(),
                100.0 * r.send_mb_per_s() / r.tcp.mb_per_s().max(1e-9)
            );
            let _ = writeln!(
                o,
                "  restored on the mirror {}; SYNCHRONIZED with everything applied {:.3} s after its restart",
                r.restore_seconds
                    .map_or("(no line)".to_string(), |s| format!("in {s:.3} s from its first byte")),
                r.synchronized_s
            );
            for l in &r.lines {
                let _ = writeln!(o, "    {l}");
            }
        }
    }

    let _ = writeln!(o, "\ntargets:");
    match p99 {
        Some(p99) => {
            let _ = writeln!(
                o,
                "  [{}] failover p99 {:.1} ms within the partner timeout + 500 ms = {:.0} ms (p50 {}, max {})",
                if p99 <= target { "PASS" } else { "MISS" },
                p99,
                target,
                ms(p50),
                ms(max)
            );
        }
        None => {
            let _ = writeln!(o, "  [MISS] failover: no run completed");
        }
    }
    let _ = writeln!(
        o,
        "  [{}] no acknowledged write lost: {} lost of {}",
        if s.lost() == 0 { "PASS" } else { "FAIL" },
        s.lost(),
        thousands(s.checked() as f64)
    );
    if let Some(why) = s.failure() {
        let _ = writeln!(o, "\nFAILED: {why}");
    }
    let _ = writeln!(
        o,
        "\ndurability: safety full (a SET is acknowledged once principal and mirror fsynced it, or, with the mirror gone, once the principal fsynced it after telling the witness it runs exposed). MB/s: 1 MB = 10^6 bytes. Total {:.0} s.",
        s.total_seconds
    );
    o
}

pub fn to_json(cfg: &Config, machine: &Machine, s: &FailoverSuite) -> Value {
    let started = s
        .started
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let times = s.times();
    let target = target_ms(cfg);
    let p99 = percentile(&times, 0.99);
    let catch_up = match &s.catch_up {
        Ok(None) => Value::Null,
        Err(e) => json!({ "error": e }),
        Ok(Some(c)) => json!({
            "values_written_bytes": c.value_bytes,
            "value_size": CATCHUP_VALUE_BYTES,
            "connections": CATCHUP_CONNECTIONS,
            "pipeline": CATCHUP_PIPELINE,
            "write_seconds": c.write_seconds,
            "principal_exposed": c.exposed,
            "write_refusals": c.write_refusals,
            "log_bytes": c.log_bytes,
            "first_progress_seconds": c.first_progress_s,
            "hardened_seconds": c.hardened_s,
            "applied_seconds": c.applied_s,
            "synchronized_seconds": c.synchronized_s,
            "mb_per_s": c.mb_per_s(),
            "streaming_mb_per_s": c.streaming_mb_per_s(),
            "floors": {
                "loopback_tcp": {
                    "bytes": c.tcp.bytes, "seconds": c.tcp.seconds, "mb_per_s": c.tcp.mb_per_s(),
                },
                "disk": c.disk.iter().map(|b| json!({
                    "kind": b.kind.key(),
                    "description": b.kind.name(),
                    "bytes": b.bytes,
                    "seconds": b.seconds,
                    "mb_per_s": b.mb_per_s(),
                })).collect::<Vec<_>>(),
            },
            "mirror_log": c.mirror_log,
        }),
    };
    json!({
        "scenario": "failover",
        "started": rfc3339(started),
        "total_seconds": s.total_seconds,
        "machine": {
            "nproc": machine.nproc, "kernel": machine.kernel, "cpu": machine.cpu,
            "dir": machine.dir, "fs_type": machine.fs_type, "device": machine.device,
        },
        "binary": s.binary.display().to_string(),
        "binary_modified": s.binary_modified.map(rfc3339),
        "config": {
            "runs": cfg.runs,
            "partner_timeout_ms": cfg.partner_timeout_ms,
            "lease_ms": cfg.partner_timeout_ms,
            "safety": "full",
            "checkpoint_secs": CHECKPOINT_SECS,
            "writers": WRITERS,
            "value_bytes": FAILOVER_VALUE_BYTES,
            "writer_retry_ms": RETRY_PAUSE.as_millis() as u64,
            "catchup_mb": cfg.catchup_mb,
            "floor_seconds": cfg.seconds,
        },
        "failover": {
            "definition": "SIGKILL of the principal (while clients write) to the first SET acknowledged by the new principal, client-observed",
            "runs": s.runs.iter().map(|r| json!({
                "run": r.run,
                "failover_ms": r.failover_ms,
                "session_end_ms": r.session_end_ms,
                "grant_ms": r.grant_ms,
                "serving_ms": r.serving_ms,
                "exposed_ms": r.exposed_ms,
                "acked_before_kill": r.acked_before_kill,
                "acked_after_kill": r.acked_after_kill,
                "checked": r.checked,
                "lost": r.lost,
                "refusals": r.refusals,
                "warnings": r.warnings,
                "error": r.error,
            })).collect::<Vec<_>>(),
            "completed_runs": times.len(),
            "p50_ms": percentile(&times, 0.5),
            "p99_ms": p99,
            "max_ms": times.last(),
            "min_ms": times.first(),
            "checked": s.checked(),
            "lost": s.lost(),
        },
        "catch_up": catch_up,
        "reseed": match &s.reseed {
            Ok(None) => json!(null),
            Err(e) => json!({ "error": e }),
            Ok(Some(r)) => json!({
                "retention_max_bytes": RESEED_RETENTION_BYTES,
                "value_bytes": r.value_bytes,
                "snapshot_bytes": r.snapshot_bytes,
                "snapshot_lsn": r.snapshot_lsn,
                "send_seconds": r.send_seconds,
                "send_mb_per_s": r.send_mb_per_s(),
                "restore_seconds": r.restore_seconds,
                "synchronized_s": r.synchronized_s,
                "tcp_floor_mb_per_s": r.tcp.mb_per_s(),
            }),
        },
        "targets": [
            {
                "name": "failover p99 within the partner timeout + 500 ms",
                "goal_ms": target,
                "measured_ms": p99,
                "pass": p99.is_some_and(|p| p <= target),
            },
            {
                "name": "no acknowledged write lost",
                "measured": s.lost(),
                "pass": s.lost() == 0,
            },
        ],
        "failed_runs": s.failed_runs(),
        "failure": s.failure(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_times_and_percentiles() {
        let t = line_time("2026-11-27T20:27:51.420152Z  INFO [witness]: epoch 2").unwrap();
        let secs = t.floor() as u64;
        assert_eq!(rfc3339(secs), "2026-11-27T20:27:51Z");
        assert!((t.fract() - 0.420152).abs() < 1e-5);
        assert_eq!(line_time("2000-02-29T00:00:00Z x"), Some(951_782_400.0));
        assert_eq!(line_time("garbage"), None);
        assert_eq!(
            message("2026-11-27T20:27:51.420191Z  INFO [mirror]: this node"),
            "[mirror]: this node"
        );
        let v: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), Some(10.0));
        assert_eq!(percentile(&v, 0.99), Some(20.0));
        assert_eq!(percentile(&[], 0.5), None);
        assert_eq!(refusal_kind("READONLY You can't write"), "READONLY");
        assert_eq!(
            field("a:1\r\nmirror_hardened_lsn:56\r\n", "mirror_hardened_lsn"),
            Some("56")
        );
    }
}
