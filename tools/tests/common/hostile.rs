//! The hostile-client harness: a principal and a mirror started as real
//! `mirrorlog serve` processes (safety full) on 127.0.0.1, watched while an
//! attack runs by
//!
//! * a canary per node: its own connection, opened before the attack, that
//!   PINGs every 100 ms and records each round trip;
//! * a writer: acknowledged SETs of unique keys on the principal, every one
//!   of which is read back from both nodes at the end ("no acknowledged
//!   write lost");
//! * an RSS sampler per node (`/proc/PID/status` VmRSS every 50 ms, the
//!   maximum kept), and the server's CPU time (`/proc/PID/stat`);
//!
//! and judged after it: both processes alive, canary p99 and max under
//! their bounds, RSS under its bound, a fresh client served, every
//! acknowledged write on both nodes. Checks are collected rather than
//! asserted one by one, so a failing attack reports every symptom with its
//! numbers (RSS, p99, CPU) in one panic message.
//!
//! Nothing here is specific to the client port: the same canary, samplers
//! and raw connections serve attacks on the partner port.

use std::collections::HashSet;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{free_port, node_args, secret, Served};

/// The canary's period.
pub const CANARY_EVERY: Duration = Duration::from_millis(100);
/// How long the canary waits for one PONG before it declares its node
/// stuck (and stops: its connection is out of step from there).
pub const CANARY_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// The writer's period: a few acknowledged SETs per 100 ms.
pub const WRITER_EVERY: Duration = Duration::from_millis(30);
/// The RSS sampler's period.
pub const RSS_EVERY: Duration = Duration::from_millis(50);

/// Canary round-trip p99 while an attack runs. A PING on loopback takes
/// well under 1 ms; this box is a shared, noisy 2-core machine running a
/// debug build with the attacker, the mirror and the samplers on the same
/// cores, so the bound is generous: it catches a server whose event loop
/// is held for a whole attack, not scheduler noise.
pub const CANARY_P99_MAX: Duration = Duration::from_millis(250);
/// Canary worst round trip while an attack runs: one stall of a second
/// means every other client of that loop stalled as long.
pub const CANARY_MAX: Duration = Duration::from_millis(1000);
/// Server RSS while an attack runs. An idle node of a debug build holds
/// a few tens of MB (the store, the log's mapped pages, thread stacks);
/// 300 MB leaves room for the attacks that load a keyspace (200,000 keys)
/// while still catching a server that buffers an attacker's gigabytes.
pub const RSS_MAX_BYTES: u64 = 300 << 20;
/// How long a fresh client may take to be served after an attack (it may
/// have to wait for the server to recover file descriptors).
pub const FRESH_CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the mirror may take to show every acknowledged write.
pub const MIRROR_CATCH_UP_TIMEOUT: Duration = Duration::from_secs(15);

/// Attacks are timing-sensitive on a 2-core box: one runs at a time, so
/// one attack's load is not another's canary latency.
static SERIAL: Mutex<()> = Mutex::new(());

pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------
// /proc readers.

/// The resident set of `pid` in bytes (VmRSS), None once it is gone.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = s
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb << 10)
}

/// User plus system CPU time of `pid` (all its threads) in seconds, from
/// /proc/PID/stat fields 14 and 15 (utime, stime, in clock ticks).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces.
    let rest = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): utime is field 14, stime 15.
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions; it reads a constant.
    let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    assert!(tck > 0, "sysconf(_SC_CLK_TCK) = {tck}");
    Some((utime + stime) as f64 / tck as f64)
}

/// How many file descriptors `pid` holds open.
pub fn fd_count(pid: u32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
}

// ---------------------------------------------------------------------
// Raw RESP.

/// One RESP reply, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resp {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Vec<u8>),
    Nil,
    Array(Vec<Resp>),
}

impl Resp {
    /// A short rendering for failure messages (bulks cut at 80 bytes).
    pub fn show(&self) -> String {
        match self {
            Resp::Simple(s) => format!("+{s}"),
            Resp::Error(s) => format!("-{s}"),
            Resp::Int(n) => format!(":{n}"),
            Resp::Nil => "(nil)".into(),
            Resp::Bulk(b) if b.len() > 80 => format!(
                "${} bytes: {:?}...",
                b.len(),
                String::from_utf8_lossy(&b[..80])
            ),
            Resp::Bulk(b) => format!("${:?}", String::from_utf8_lossy(b)),
            Resp::Array(v) if v.len() > 8 => format!("[{} items]", v.len()),
            Resp::Array(v) => format!(
                "[{}]",
                v.iter().map(Resp::show).collect::<Vec<_>>().join(", ")
            ),
        }
    }
}

/// One command as a RESP array of bulk strings.
pub fn encode(args: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_into(args, &mut out);
    out
}

pub fn encode_into(args: &[&[u8]], out: &mut Vec<u8>) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

/// How a connection ended when we waited for its end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// The server closed it (EOF) after sending this many more bytes.
    Closed(u64),
    /// The server reset it after sending this many more bytes.
    Reset(u64),
    /// Still open at the deadline, this many bytes received meanwhile.
    Open(u64),
    /// The server kept sending: this many bytes received, still open.
    Flooding(u64),
}

impl End {
    pub fn closed(&self) -> bool {
        matches!(self, End::Closed(_) | End::Reset(_))
    }
}

/// A raw client connection: whatever bytes the test wants, replies parsed.
pub struct Raw {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl Raw {
    /// Connects once (no retry), with read and write timeouts of `timeout`.
    pub fn connect(port: u16, timeout: Duration) -> io::Result<Raw> {
        let s = TcpStream::connect_timeout(&super::addr(port), timeout)?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))?;
        Ok(Raw {
            r: BufReader::with_capacity(64 << 10, s.try_clone()?),
            w: s,
        })
    }

    /// Connects, AUTHs with `password` if given, and checks a PING, until
    /// `deadline` (a server still starting is retried, not a failure).
    pub fn ready(port: u16, password: Option<&str>, deadline: Instant) -> Result<Raw, String> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let attempt = || -> Result<Raw, String> {
                let mut c = Raw::connect(port, left.max(Duration::from_millis(200)))
                    .map_err(|e| format!("connect: {e}"))?;
                if let Some(p) = password {
                    match c.call(&[b"AUTH", p.as_bytes()]) {
                        Ok(Resp::Simple(s)) if s == "OK" => {}
                        r => return Err(format!("AUTH: {}", show_result(&r))),
                    }
                }
                match c.call(&[b"PING"]) {
                    Ok(Resp::Simple(s)) if s == "PONG" => Ok(c),
                    r => Err(format!("PING: {}", show_result(&r))),
                }
            };
            match attempt() {
                Ok(c) => return Ok(c),
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(_) => {}
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stream(&self) -> &TcpStream {
        &self.w
    }

    pub fn set_read_timeout(&self, t: Duration) {
        self.w.set_read_timeout(Some(t)).unwrap();
    }

    pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.w.write_all(bytes)
    }

    pub fn send(&mut self, args: &[&[u8]]) -> io::Result<()> {
        self.w.write_all(&encode(args))
    }

    pub fn call(&mut self, args: &[&[u8]]) -> io::Result<Resp> {
        self.send(args)?;
        self.reply()
    }

    /// A command of text words.
    pub fn cmd(&mut self, words: &[&str]) -> io::Result<Resp> {
        let args: Vec<&[u8]> = words.iter().map(|w| w.as_bytes()).collect();
        self.call(&args)
    }

    /// One line of a reply, CRLF removed (for a test that must not parse
    /// what follows, e.g. a huge array).
    pub fn line(&mut self) -> io::Result<String> {
        let mut l = Vec::new();
        let n = self.r.read_until(b'\n', &mut l)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed by the server",
            ));
        }
        if l.len() < 2 || l[l.len() - 2] != b'\r' || l[l.len() - 1] != b'\n' {
            return Err(io::Error::other(format!(
                "reply line not ended by CRLF: {:?}",
                String::from_utf8_lossy(&l)
            )));
        }
        l.truncate(l.len() - 2);
        String::from_utf8(l).map_err(io::Error::other)
    }

    /// One reply.
    pub fn reply(&mut self) -> io::Result<Resp> {
        let l = self.line()?;
        let bad = || io::Error::other(format!("bad reply line {l:?}"));
        let (kind, rest) = (l.as_bytes().first().copied().ok_or_else(bad)?, &l[1..]);
        Ok(match kind {
            b'+' => Resp::Simple(rest.into()),
            b'-' => Resp::Error(rest.into()),
            b':' => Resp::Int(rest.parse().map_err(|_| bad())?),
            b'$' => {
                let n: i64 = rest.parse().map_err(|_| bad())?;
                if n < 0 {
                    return Ok(Resp::Nil);
                }
                let mut v = vec![0u8; n as usize + 2];
                self.r.read_exact(&mut v)?;
                v.truncate(n as usize);
                Resp::Bulk(v)
            }
            b'*' => {
                let n: i64 = rest.parse().map_err(|_| bad())?;
                if n < 0 {
                    return Ok(Resp::Nil);
                }
                let mut items = Vec::with_capacity(n.min(1 << 16) as usize);
                for _ in 0..n {
                    items.push(self.reply()?);
                }
                Resp::Array(items)
            }
            _ => return Err(bad()),
        })
    }

    /// Reads and discards until the server closes the connection, the
    /// deadline passes, or more than `flood_bytes` arrive.
    pub fn wait_end(&mut self, timeout: Duration, flood_bytes: u64) -> End {
        let deadline = Instant::now() + timeout;
        let mut got = self.r.buffer().len() as u64;
        self.r.consume(self.r.buffer().len());
        let mut buf = vec![0u8; 256 << 10];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return End::Open(got);
            }
            if got > flood_bytes {
                return End::Flooding(got);
            }
            self.w
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .unwrap();
            match self.r.get_mut().read(&mut buf) {
                Ok(0) => return End::Closed(got),
                Ok(n) => got += n as u64,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) => {}
                Err(_) => return End::Reset(got),
            }
        }
    }
}

pub fn show_result(r: &io::Result<Resp>) -> String {
    match r {
        Ok(v) => v.show(),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            "no reply (read timed out)".into()
        }
        Err(e) => format!("error: {e}"),
    }
}

/// Reads one reply within `timeout`, timing it: (how long, what came).
pub fn timed_reply(c: &mut Raw, timeout: Duration) -> (Duration, io::Result<Resp>) {
    c.set_read_timeout(timeout);
    let t0 = Instant::now();
    let r = c.reply();
    (t0.elapsed(), r)
}

// ---------------------------------------------------------------------
// Processes.

/// How a pair is started.
#[derive(Clone, Default)]
pub struct PairOptions {
    /// `--io` for both nodes.
    pub io: Option<String>,
    /// `--password` for both nodes (the canaries and the writer AUTH).
    pub password: Option<String>,
    /// RLIMIT_NOFILE (soft = hard) for the principal's process.
    pub principal_nofile: Option<u64>,
    /// More `serve` flags for both nodes.
    pub extra: Vec<String>,
}

pub struct Node {
    pub role: &'static str,
    pub port: u16,
    pub log: PathBuf,
    pub served: Served,
}

impl Node {
    pub fn pid(&self) -> u32 {
        self.served.0.id()
    }

    /// Err with the exit status and the end of its log once it has exited.
    pub fn alive(&mut self) -> Result<(), String> {
        match self.served.0.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(format!(
                "the {} exited ({status}); its log ends:\n{}",
                self.role,
                log_tail(&self.log)
            )),
            Err(e) => Err(format!("the {}: wait: {e}", self.role)),
        }
    }
}

/// The first line of a log file (where a refused flag is named, above the
/// usage text) and its last lines.
pub fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(8).max(1);
    let mut shown: Vec<&str> = lines.iter().take(1).copied().collect();
    if from > 1 {
        shown.push("...");
    }
    shown.extend(lines.iter().skip(from).copied());
    shown
        .iter()
        .map(|l| format!("    | {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn spawn(args: &[String], log: &Path, nofile: Option<u64>) -> Served {
    use std::os::unix::process::CommandExt;
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mirrorlog"));
    cmd.arg("serve")
        .args(args)
        .stdout(Stdio::null())
        .stderr(out);
    if let Some(n) = nofile {
        // SAFETY: the closure runs in the forked child before exec; it
        // calls only setrlimit(2), which is async-signal-safe, on a
        // stack-allocated struct, and allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                let lim = libc::rlimit {
                    rlim_cur: n as libc::rlim_t,
                    rlim_max: n as libc::rlim_t,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    Served(cmd.spawn().unwrap())
}

pub struct Pair {
    pub dir: PathBuf,
    pub principal: Node,
    pub mirror: Node,
    pub password: Option<String>,
}

impl Pair {
    /// Starts a principal and a mirror (safety full) and waits until the
    /// mirror is synchronized. Err (with the nodes' logs) if either does not
    /// come up: a flag today's binary does not know ends up here.
    pub fn start(tag: &str, o: &PairOptions) -> Result<Pair, String> {
        let dir = super::tempdir("hostile", tag);
        let secret = secret(&dir);
        let (p_port, m_port, partner) = (free_port(), free_port(), free_port());
        let args = |role: &str, port: u16| {
            let mut a = node_args(&dir.join(role), &secret, role, port, partner);
            a.extend(["--safety", "full", "--checkpoint-secs", "0"].map(String::from));
            if role == "mirror" {
                a.extend(["--principal-clients".into(), format!("127.0.0.1:{p_port}")]);
            }
            if let Some(io) = &o.io {
                a.extend(["--io".into(), io.clone()]);
            }
            if let Some(p) = &o.password {
                a.extend(["--password".into(), p.clone()]);
            }
            a.extend(o.extra.iter().cloned());
            a
        };
        let p_log = dir.join("principal.log");
        let m_log = dir.join("mirror.log");
        let mut pair = Pair {
            principal: Node {
                role: "principal",
                port: p_port,
                served: spawn(&args("principal", p_port), &p_log, o.principal_nofile),
                log: p_log,
            },
            mirror: Node {
                role: "mirror",
                port: m_port,
                served: spawn(&args("mirror", m_port), &m_log, None),
                log: m_log,
            },
            dir: dir.clone(),
            password: o.password.clone(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        let pw = pair.password.clone();
        for node in [&mut pair.principal, &mut pair.mirror] {
            loop {
                node.alive().map_err(|e| format!("at start: {e}"))?;
                match Raw::ready(
                    node.port,
                    pw.as_deref(),
                    Instant::now() + Duration::from_millis(300),
                ) {
                    Ok(_) => break,
                    Err(e) if Instant::now() > deadline => {
                        return Err(format!("the {} never answered: {e}", node.role))
                    }
                    Err(_) => {}
                }
            }
        }
        let mut c = Raw::ready(p_port, pw.as_deref(), deadline)?;
        loop {
            let state = match c.cmd(&["INFO", "replication"]) {
                Ok(Resp::Bulk(b)) => String::from_utf8_lossy(&b).lines().find_map(|l| {
                    l.strip_prefix("mirroring_state:")
                        .map(|s| s.trim().to_string())
                }),
                _ => None,
            };
            if state.as_deref() == Some("synchronized") {
                return Ok(pair);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "the mirror never synchronized (state {state:?}); principal log:\n{}\nmirror log:\n{}",
                    log_tail(&pair.principal.log),
                    log_tail(&pair.mirror.log)
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

// ---------------------------------------------------------------------
// Watchers.

fn stop_and_join(stop: &AtomicBool, h: &mut Option<JoinHandle<()>>) {
    stop.store(true, Ordering::Release);
    if let Some(h) = h.take() {
        let _ = h.join();
    }
}

/// Sleeps until `until` or until `stop` is set (checked every 10 ms).
fn nap(stop: &AtomicBool, until: Instant) {
    while !stop.load(Ordering::Acquire) {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        std::thread::sleep(left.min(Duration::from_millis(10)));
    }
}

/// Round-trip statistics of the canary.
#[derive(Debug, Clone, Copy, Default)]
pub struct Latency {
    pub count: usize,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
}

impl std::fmt::Display for Latency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} pings, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            self.count,
            self.p50.as_secs_f64() * 1e3,
            self.p99.as_secs_f64() * 1e3,
            self.max.as_secs_f64() * 1e3
        )
    }
}

/// A PING every [`CANARY_EVERY`] on one connection opened at start.
pub struct Canary {
    pub node: &'static str,
    samples: Arc<Mutex<Vec<(Instant, Duration)>>>,
    error: Arc<Mutex<Option<String>>>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Canary {
    pub fn start(node: &'static str, port: u16, password: Option<&str>) -> Result<Canary, String> {
        let mut c = Raw::ready(port, password, Instant::now() + Duration::from_secs(10))
            .map_err(|e| format!("{node} canary: {e}"))?;
        c.set_read_timeout(CANARY_READ_TIMEOUT);
        let samples = Arc::new(Mutex::new(Vec::new()));
        let error = Arc::new(Mutex::new(None));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, e, st) = (samples.clone(), error.clone(), stop.clone());
        let handle = std::thread::spawn(move || {
            let start = Instant::now();
            let mut next = start;
            while !st.load(Ordering::Acquire) {
                let t0 = Instant::now();
                let r = c.call(&[b"PING"]);
                let rtt = t0.elapsed();
                s.lock().unwrap().push((t0, rtt));
                match r {
                    Ok(Resp::Simple(p)) if p == "PONG" => {}
                    r => {
                        *e.lock().unwrap() = Some(format!(
                            "PING {:.1} s after the canary started: {} (round trip {:.0} ms)",
                            (t0 - start).as_secs_f64(),
                            show_result(&r),
                            rtt.as_secs_f64() * 1e3
                        ));
                        return;
                    }
                }
                next += CANARY_EVERY;
                if next < Instant::now() {
                    next = Instant::now();
                }
                nap(&st, next);
            }
        });
        Ok(Canary {
            node,
            samples,
            error,
            stop,
            handle: Some(handle),
        })
    }

    /// Round trips of the PINGs sent since `t0`.
    pub fn since(&self, t0: Instant) -> Latency {
        let mut v: Vec<Duration> = self
            .samples
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, _)| *t >= t0)
            .map(|(_, d)| *d)
            .collect();
        if v.is_empty() {
            return Latency::default();
        }
        v.sort();
        let at = |q: f64| v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1];
        Latency {
            count: v.len(),
            p50: at(0.50),
            p99: at(0.99),
            max: *v.last().unwrap(),
        }
    }

    pub fn error(&self) -> Option<String> {
        self.error.lock().unwrap().clone()
    }

    pub fn stop(&mut self) {
        stop_and_join(&self.stop, &mut self.handle);
    }
}

impl Drop for Canary {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

/// The largest VmRSS of a process seen since the last reset.
pub struct RssSampler {
    max: Arc<AtomicU64>,
    last: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl RssSampler {
    pub fn start(pid: u32) -> RssSampler {
        let max = Arc::new(AtomicU64::new(rss_bytes(pid).unwrap_or(0)));
        let last = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (m, l, st) = (max.clone(), last.clone(), stop.clone());
        let handle = std::thread::spawn(move || {
            while !st.load(Ordering::Acquire) {
                let Some(r) = rss_bytes(pid) else { return };
                m.fetch_max(r, Ordering::AcqRel);
                l.store(r, Ordering::Release);
                nap(&st, Instant::now() + RSS_EVERY);
            }
        });
        RssSampler {
            max,
            last,
            stop,
            handle: Some(handle),
        }
    }

    pub fn max(&self) -> u64 {
        self.max.load(Ordering::Acquire)
    }

    pub fn last(&self) -> u64 {
        self.last.load(Ordering::Acquire)
    }

    /// Starts a new maximum from the latest sample.
    pub fn reset(&self) {
        self.max.store(self.last(), Ordering::Release);
    }

    pub fn stop(&mut self) {
        stop_and_join(&self.stop, &mut self.handle);
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

/// Acknowledged SETs of unique keys `{prefix}:{n}` (value `v{n}`), one
/// every [`WRITER_EVERY`].
pub struct Writer {
    acked: Arc<Mutex<Vec<(Instant, u64)>>>,
    error: Arc<Mutex<Option<String>>>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
    prefix: String,
}

impl Writer {
    pub fn start(port: u16, password: Option<&str>, prefix: &str) -> Result<Writer, String> {
        let mut c = Raw::ready(port, password, Instant::now() + Duration::from_secs(10))
            .map_err(|e| format!("writer: {e}"))?;
        c.set_read_timeout(Duration::from_secs(10));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let error = Arc::new(Mutex::new(None));
        let stop = Arc::new(AtomicBool::new(false));
        let (a, e, st, pre) = (
            acked.clone(),
            error.clone(),
            stop.clone(),
            prefix.to_string(),
        );
        let handle = std::thread::spawn(move || {
            let mut n = 0u64;
            while !st.load(Ordering::Acquire) {
                let t0 = Instant::now();
                let key = format!("{pre}:{n}");
                let r = c.call(&[b"SET", key.as_bytes(), format!("v{n}").as_bytes()]);
                match r {
                    Ok(Resp::Simple(s)) if s == "OK" => a.lock().unwrap().push((t0, n)),
                    r => {
                        *e.lock().unwrap() = Some(format!("SET {key}: {}", show_result(&r)));
                        return;
                    }
                }
                n += 1;
                nap(&st, t0 + WRITER_EVERY);
            }
        });
        Ok(Writer {
            acked,
            error,
            stop,
            handle: Some(handle),
            prefix: prefix.to_string(),
        })
    }

    pub fn acked_since(&self, t0: Instant) -> usize {
        self.acked
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, _)| *t >= t0)
            .count()
    }

    pub fn error(&self) -> Option<String> {
        self.error.lock().unwrap().clone()
    }

    pub fn stop(&mut self) {
        stop_and_join(&self.stop, &mut self.handle);
    }

    /// The acknowledged keys absent (or wrong) on the node at `port`,
    /// retried until none are missing or `timeout` passes.
    pub fn missing_on(
        &self,
        port: u16,
        password: Option<&str>,
        timeout: Duration,
    ) -> Result<Vec<String>, String> {
        let acked: Vec<u64> = self.acked.lock().unwrap().iter().map(|(_, n)| *n).collect();
        let deadline = Instant::now() + timeout;
        let mut c = Raw::ready(port, password, Instant::now() + FRESH_CLIENT_TIMEOUT)?;
        c.set_read_timeout(Duration::from_secs(10));
        let mut todo: Vec<u64> = acked;
        loop {
            let mut still = Vec::new();
            for chunk in todo.chunks(500) {
                let keys: Vec<String> = chunk
                    .iter()
                    .map(|n| format!("{}:{n}", self.prefix))
                    .collect();
                let mut args: Vec<&[u8]> = vec![b"MGET"];
                args.extend(keys.iter().map(|k| k.as_bytes()));
                let vals = match c.call(&args) {
                    Ok(Resp::Array(v)) if v.len() == chunk.len() => v,
                    r => return Err(format!("MGET: {}", show_result(&r))),
                };
                for (n, v) in chunk.iter().zip(vals) {
                    if v != Resp::Bulk(format!("v{n}").into_bytes()) {
                        still.push(*n);
                    }
                }
            }
            todo = still;
            if todo.is_empty() || Instant::now() > deadline {
                return Ok(todo
                    .iter()
                    .map(|n| format!("{}:{n}", self.prefix))
                    .collect());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

// ---------------------------------------------------------------------
// The harness.

/// What an attack must stay under (defaults: the constants above).
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    pub canary_p99: Duration,
    pub canary_max: Duration,
    pub rss_bytes: u64,
}

impl Default for Bounds {
    fn default() -> Bounds {
        Bounds {
            canary_p99: CANARY_P99_MAX,
            canary_max: CANARY_MAX,
            rss_bytes: RSS_MAX_BYTES,
        }
    }
}

pub struct Harness {
    pub name: String,
    pub pair: Pair,
    pub canaries: Vec<Canary>,
    pub writer: Writer,
    /// RSS of the principal, then of the mirror.
    pub rss: Vec<RssSampler>,
    pub attack_t0: Instant,
    pub rss_before: u64,
    failures: Vec<String>,
    notes: Vec<String>,
    /// Nodes whose exit was already reported (principal, mirror).
    exit_reported: [bool; 2],
    // Last: released after the processes are killed.
    _serial: MutexGuard<'static, ()>,
}

impl Harness {
    /// Starts the pair and its watchers; panics (naming the attack) if the
    /// pair does not come up.
    pub fn start(name: &str, o: PairOptions) -> Harness {
        let serial = serial();
        let pair = Pair::start(name, &o).unwrap_or_else(|e| {
            panic!(
                "{name}: the pair did not start (serve flags {:?}): {e}",
                o.extra
            )
        });
        let pw = o.password.as_deref();
        let canaries = vec![
            Canary::start("principal", pair.principal.port, pw).unwrap(),
            Canary::start("mirror", pair.mirror.port, pw).unwrap(),
        ];
        let writer = Writer::start(pair.principal.port, pw, "hostile-writer").unwrap();
        let rss = vec![
            RssSampler::start(pair.principal.pid()),
            RssSampler::start(pair.mirror.pid()),
        ];
        // Let the watchers take a few samples of the calm before.
        std::thread::sleep(Duration::from_millis(300));
        let rss_before = rss_bytes(pair.principal.pid()).unwrap_or(0);
        Harness {
            name: name.to_string(),
            pair,
            canaries,
            writer,
            rss,
            attack_t0: Instant::now(),
            rss_before,
            failures: Vec::new(),
            notes: Vec::new(),
            exit_reported: [false; 2],
            _serial: serial,
        }
    }

    pub fn p_port(&self) -> u16 {
        self.pair.principal.port
    }

    pub fn p_pid(&self) -> u32 {
        self.pair.principal.pid()
    }

    pub fn password(&self) -> Option<&str> {
        self.pair.password.as_deref()
    }

    /// A connection to the principal, authenticated, ready for an attack.
    pub fn client(&self) -> Raw {
        self.try_client(Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("{}: no client connection: {e}", self.name))
    }

    /// The same, for a server that may be stuck: Err after `timeout`.
    pub fn try_client(&self, timeout: Duration) -> Result<Raw, String> {
        Raw::ready(self.p_port(), self.password(), Instant::now() + timeout)
    }

    /// The attack starts now: canary statistics and the RSS maximum count
    /// from here.
    pub fn begin_attack(&mut self) {
        for r in &self.rss {
            r.reset();
        }
        self.rss_before = rss_bytes(self.p_pid()).unwrap_or(0);
        self.attack_t0 = Instant::now();
    }

    /// A measurement worth printing, failing or not.
    pub fn note(&mut self, s: impl Into<String>) {
        let s = s.into();
        eprintln!("[{}] {s}", self.name);
        self.notes.push(s);
    }

    pub fn fail(&mut self, s: impl Into<String>) {
        let s = s.into();
        eprintln!("[{}] FAIL: {s}", self.name);
        self.failures.push(s);
    }

    pub fn check(&mut self, ok: bool, s: impl Into<String>) {
        if !ok {
            self.fail(s);
        }
    }

    /// Both processes alive right now (a failure is recorded with `when`).
    pub fn check_alive(&mut self, when: &str) -> bool {
        let mut ok = true;
        let mut errs = Vec::new();
        for (i, n) in [&mut self.pair.principal, &mut self.pair.mirror]
            .into_iter()
            .enumerate()
        {
            if let Err(e) = n.alive() {
                ok = false;
                if !self.exit_reported[i] {
                    self.exit_reported[i] = true;
                    errs.push(format!("{when}: {e}"));
                }
            }
        }
        for e in errs {
            self.fail(e);
        }
        ok
    }

    /// The standard checks after an attack, then a panic listing every
    /// failure (with the measurements) if there was any.
    pub fn finish(self) {
        self.finish_with(Bounds::default())
    }

    pub fn finish_with(mut self, b: Bounds) {
        let attack = self.attack_t0.elapsed();
        let alive = self.check_alive("after the attack");
        for c in &mut self.canaries {
            c.stop();
        }
        let t0 = self.attack_t0;
        let mut lines = Vec::new();
        for c in &self.canaries {
            let l = c.since(t0);
            lines.push((c.node, l, c.error()));
        }
        for (node, l, err) in lines {
            self.note(format!("{node} canary during the attack: {l}"));
            if let Some(e) = err {
                self.fail(format!("{node} canary: {e}"));
            }
            self.check(
                l.p99 < b.canary_p99,
                format!(
                    "{node} canary p99 {:.1} ms >= bound {} ms ({l})",
                    l.p99.as_secs_f64() * 1e3,
                    b.canary_p99.as_millis()
                ),
            );
            self.check(
                l.max < b.canary_max,
                format!(
                    "{node} canary max {:.1} ms >= bound {} ms ({l})",
                    l.max.as_secs_f64() * 1e3,
                    b.canary_max.as_millis()
                ),
            );
        }
        for r in &mut self.rss {
            r.stop();
        }
        let (p_rss, m_rss) = (self.rss[0].max(), self.rss[1].max());
        self.note(format!(
            "RSS: principal {} before, max {} during; mirror max {} (bound {})",
            mib(self.rss_before),
            mib(p_rss),
            mib(m_rss),
            mib(b.rss_bytes)
        ));
        self.check(
            p_rss < b.rss_bytes,
            format!(
                "principal RSS max {} >= bound {}",
                mib(p_rss),
                mib(b.rss_bytes)
            ),
        );
        self.check(
            m_rss < b.rss_bytes,
            format!(
                "mirror RSS max {} >= bound {}",
                mib(m_rss),
                mib(b.rss_bytes)
            ),
        );
        // A fresh client, on each node.
        let pw = self.pair.password.clone();
        let mut answering = [false, false];
        for (i, (role, port)) in [
            ("principal", self.pair.principal.port),
            ("mirror", self.pair.mirror.port),
        ]
        .into_iter()
        .enumerate()
        {
            let t = Instant::now();
            match Raw::ready(port, pw.as_deref(), Instant::now() + FRESH_CLIENT_TIMEOUT) {
                Ok(_) => {
                    answering[i] = true;
                    self.note(format!(
                        "a fresh client of the {role} was served after {:.0} ms",
                        t.elapsed().as_secs_f64() * 1e3
                    ));
                }
                Err(e) => self.fail(format!(
                    "a fresh client of the {role} was not served within {} s: {e}",
                    FRESH_CLIENT_TIMEOUT.as_secs()
                )),
            }
        }
        // No acknowledged write lost.
        self.writer.stop();
        if let Some(e) = self.writer.error() {
            self.fail(format!("writer: {e}"));
        }
        let during = self.writer.acked_since(t0);
        self.note(format!(
            "writer: {during} SETs acknowledged during the attack ({:.1} s)",
            attack.as_secs_f64()
        ));
        for (i, (role, port, timeout)) in [
            (
                "principal",
                self.pair.principal.port,
                Duration::from_secs(2),
            ),
            ("mirror", self.pair.mirror.port, MIRROR_CATCH_UP_TIMEOUT),
        ]
        .into_iter()
        .enumerate()
        {
            if !answering[i] {
                self.fail(format!(
                    "acknowledged writes not checked on the {role}: it does not answer"
                ));
                continue;
            }
            match self.writer.missing_on(port, pw.as_deref(), timeout) {
                Ok(m) if m.is_empty() => {}
                Ok(m) => self.fail(format!(
                    "{} acknowledged writes missing on the {role}, e.g. {:?}",
                    m.len(),
                    &m[..m.len().min(5)]
                )),
                Err(e) => self.fail(format!(
                    "reading acknowledged writes back from the {role}: {e}"
                )),
            }
        }
        if !alive {
            self.note("(a node had exited: see its log above)");
        }
        if !self.failures.is_empty() {
            panic!(
                "{}: {} check(s) failed:\n  - {}\nmeasurements:\n  {}",
                self.name,
                self.failures.len(),
                self.failures.join("\n  - "),
                self.notes.join("\n  ")
            );
        }
    }
}

/// The set of keys a SCAN iteration returned (cursor from "0" back to
/// "0"), or why it stopped: a non-array reply, or `deadline`.
pub fn scan_all(
    c: &mut Raw,
    count: usize,
    pattern: Option<&[u8]>,
    deadline: Instant,
    mut between: impl FnMut(),
) -> Result<(HashSet<Vec<u8>>, usize), String> {
    let mut seen = HashSet::new();
    let mut cursor = b"0".to_vec();
    let mut calls = 0usize;
    let count = count.to_string();
    loop {
        let mut args: Vec<&[u8]> = vec![b"SCAN", &cursor];
        if let Some(p) = pattern {
            args.extend([b"MATCH".as_slice(), p]);
        }
        args.extend([b"COUNT".as_slice(), count.as_bytes()]);
        let r = c.call(&args);
        calls += 1;
        match r {
            Ok(Resp::Array(v)) if v.len() == 2 => {
                let mut v = v.into_iter();
                let (Some(Resp::Bulk(next)), Some(Resp::Array(keys))) = (v.next(), v.next()) else {
                    return Err(format!("SCAN call {calls}: reply is not [cursor, keys]"));
                };
                for k in keys {
                    let Resp::Bulk(k) = k else {
                        return Err(format!("SCAN call {calls}: a key that is not a bulk"));
                    };
                    seen.insert(k);
                }
                if next == b"0" {
                    return Ok((seen, calls));
                }
                cursor = next;
            }
            r => return Err(format!("SCAN call {calls}: {}", show_result(&r))),
        }
        if Instant::now() > deadline {
            return Err(format!(
                "SCAN iteration unfinished at the deadline after {calls} calls ({} keys seen)",
                seen.len()
            ));
        }
        between();
    }
}
