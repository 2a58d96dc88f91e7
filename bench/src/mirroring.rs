//! The `mirroring` scenario: a principal in this process and a mirror in a
//! child process (this binary, `mirror-node`), on loopback, on each
//! transport path; every commit level, blocking committers and a pipelined
//! client, against floors measured in the same run: write+fdatasync
//! latency on the same file system and a loopback TCP round trip.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mirrorlog_engine::apply::Applier;
use mirrorlog_engine::commit::Level;
use mirrorlog_engine::log::Records;
use mirrorlog_engine::node::{Logger, Mirror, NodeConfig, Principal, Safety};
use mirrorlog_engine::replication::handshake::Secret;
use mirrorlog_engine::replication::session::MirroringState;
use mirrorlog_engine::transport::runner::NodeIdentity;
use mirrorlog_engine::transport::{TransportChoice, TransportPath};

use crate::floor::{self, SyncKind};
use crate::local_commit::{
    blocking_worker, new_histogram, pipelined_worker, Mode, RecordGen, WorkerOut, STOP, TIMED,
    WARMUP,
};
use crate::{Config, Data};

const DATABASE_ID: [u8; 16] = *b"mirrorlog-bench!";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MirrorCaseSpec {
    pub level: Level,
    pub mode: Mode,
    pub record_bytes: usize,
    pub data: Data,
}

impl MirrorCaseSpec {
    pub fn describe(&self) -> String {
        format!(
            "{} {} {} B {}",
            self.level.name(),
            self.mode.describe(),
            self.record_bytes,
            self.data.name()
        )
    }
}

pub struct MirrorCaseResult {
    pub spec: MirrorCaseSpec,
    pub commits: u64,
    pub seconds: f64,
    pub hist: Histogram<u64>,
    /// Log bytes the mirror had not received, at most during the timed
    /// period (sampled every 10 ms) and when it ended.
    pub send_queue_max: u64,
    pub send_queue_end: u64,
    /// Hardened on the mirror but not applied, when the timed period ended.
    pub redo_queue_end: u64,
    /// From the end of the case until the mirror had applied everything.
    pub catch_up_seconds: f64,
    pub log_bytes: u64,
}

impl MirrorCaseResult {
    pub fn commits_per_s(&self) -> f64 {
        self.commits as f64 / self.seconds.max(1e-9)
    }
}

/// One transport path's run.
pub struct PathRun {
    pub choice: TransportChoice,
    /// The path the session actually used (None: not run).
    pub path: Option<TransportPath>,
    /// Why it was not run, if it was not.
    pub skipped: Option<String>,
    pub cases: Vec<MirrorCaseResult>,
}

pub struct MirrorSuite {
    /// write+fdatasync per record size, before and after the cases.
    pub fsync: Vec<(usize, Histogram<u64>)>,
    /// 64-byte ping-pong over loopback TCP, before and after the cases.
    pub rtt: Histogram<u64>,
    pub runs: Vec<PathRun>,
    pub started: std::time::SystemTime,
    pub total_seconds: f64,
}

impl MirrorSuite {
    pub fn fsync_p50(&self, size: usize) -> Option<u64> {
        self.fsync
            .iter()
            .find(|(s, _)| *s == size)
            .map(|(_, h)| h.value_at_quantile(0.5))
    }
}

pub fn cases(cfg: &Config) -> Vec<MirrorCaseSpec> {
    let modes = crate::local_commit::modes(cfg);
    let mut out = Vec::new();
    for &level in &cfg.levels {
        for &mode in &modes {
            for &record_bytes in &cfg.sizes {
                for &data in &cfg.data {
                    out.push(MirrorCaseSpec {
                        level,
                        mode,
                        record_bytes,
                        data,
                    });
                }
            }
        }
    }
    out
}

/// Loopback TCP round trip of a 64-byte message (the floor of any
/// acknowledgement), measured with a thread echoing on this machine.
pub fn loopback_rtt(warmup: Duration, timed: Duration) -> Result<Histogram<u64>, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("rtt listener: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let echo = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut s, _) = listener.accept()?;
        s.set_nodelay(true)?;
        let mut buf = [0u8; 64];
        loop {
            if s.read_exact(&mut buf).is_err() {
                return Ok(());
            }
            s.write_all(&buf)?;
        }
    });
    let mut s = TcpStream::connect(addr).map_err(|e| format!("rtt connect: {e}"))?;
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    let mut hist = new_histogram();
    let mut buf = [7u8; 64];
    for (record, dur) in [(false, warmup), (true, timed)] {
        let start = Instant::now();
        while start.elapsed() < dur {
            let t = Instant::now();
            s.write_all(&buf).map_err(|e| format!("rtt: {e}"))?;
            s.read_exact(&mut buf).map_err(|e| format!("rtt: {e}"))?;
            if record {
                hist.saturating_record(t.elapsed().as_nanos().max(1) as u64);
            }
        }
    }
    drop(s);
    let _ = echo.join();
    Ok(hist)
}

fn identity(secret_file: &Path) -> Result<NodeIdentity, String> {
    Ok(NodeIdentity {
        database_id: DATABASE_ID,
        secret: Secret::load(secret_file)
            .map_err(|e| format!("secret {}: {e}", secret_file.display()))?,
    })
}

pub fn write_secret(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut rng = crate::local_commit::XorShift::new(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
            | 1,
    );
    let mut bytes = [0u8; 32];
    rng.fill(&mut bytes);
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("creating {}: {e}", path.display()))?;
    f.write_all(hex.as_bytes())
        .map_err(|e| format!("writing {}: {e}", path.display()))
}

/// The mirror process: `mirrorlog-bench mirror-node --dir D --connect ADDR
/// --secret-file F --transport T --segment-mib N`. Prints `ready`, runs
/// until its standard input closes, then shuts down cleanly.
pub fn mirror_node(args: &[String]) -> Result<(), String> {
    let mut dir = None;
    let mut connect = None;
    let mut secret = None;
    let mut transport = TransportChoice::Auto;
    let mut segment_mib = 64usize;
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().cloned().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--dir" => dir = Some(PathBuf::from(value()?)),
            "--connect" => {
                connect = Some(
                    value()?
                        .parse::<SocketAddr>()
                        .map_err(|e| format!("--connect: {e}"))?,
                )
            }
            "--secret-file" => secret = Some(PathBuf::from(value()?)),
            "--transport" => transport = value()?.parse()?,
            "--segment-mib" => {
                segment_mib = value()?
                    .parse()
                    .map_err(|e| format!("--segment-mib: {e}"))?
            }
            other => return Err(format!("mirror-node: unknown option {other:?}")),
        }
    }
    let dir = dir.ok_or("mirror-node needs --dir")?;
    let connect = connect.ok_or("mirror-node needs --connect")?;
    let secret = secret.ok_or("mirror-node needs --secret-file")?;
    let mut cfg = NodeConfig::new(&dir, identity(&secret)?);
    cfg.transport = transport;
    cfg.log.segment_bytes = segment_mib << 20;
    cfg.logger = Logger::new(|s| eprintln!("{s}"));
    let m = Mirror::start(cfg, connect, Counter::default(), None).map_err(|e| e.to_string())?;
    println!("ready");
    std::io::stdout().flush().map_err(|e| e.to_string())?;
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    m.shutdown();
    Ok(())
}

/// The mirror's state machine in the benchmark: touches every record (so
/// the applier does real decompression and iteration) and counts them.
#[derive(Default)]
struct Counter {
    records: u64,
    bytes: u64,
}

impl Applier for Counter {
    fn apply(&mut self, _start: u64, _end: u64, records: &Records) -> Result<(), String> {
        for r in records.iter() {
            self.records += 1;
            self.bytes += r.len() as u64;
        }
        Ok(())
    }
}

pub(crate) struct ChildMirror {
    child: Child,
    /// The delay proxy between the mirror and the principal, if any (it
    /// lives as long as the mirror).
    proxy: Option<crate::delay_proxy::DelayProxy>,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl ChildMirror {
    fn spawn(
        cfg: &Config,
        dir: &Path,
        secret: &Path,
        addr: SocketAddr,
        t: TransportChoice,
    ) -> Result<ChildMirror, String> {
        let exe = std::env::current_exe().map_err(|e| format!("finding this binary: {e}"))?;
        let t_name = match t {
            TransportChoice::IoUring => "io_uring",
            TransportChoice::Blocking => "blocking",
            TransportChoice::Auto => "auto",
        };
        // Its own process group: a terminal Ctrl-C stops the run between
        // cases (see peers::procs), and the mirror must outlive that case.
        let mut child = Command::new(exe)
            .process_group(0)
            .arg("mirror-node")
            .arg("--dir")
            .arg(dir)
            .arg("--connect")
            .arg(addr.to_string())
            .arg("--secret-file")
            .arg(secret)
            .arg("--transport")
            .arg(t_name)
            .arg("--segment-mib")
            .arg((cfg.segment_bytes >> 20).to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting the mirror process: {e}"))?;
        let stderr = Arc::new(Mutex::new(Vec::new()));
        if let Some(err) = child.stderr.take() {
            let lines = stderr.clone();
            std::thread::spawn(move || {
                for l in BufReader::new(err).lines().map_while(Result::ok) {
                    lines.lock().expect("stderr lines").push(l);
                }
            });
        }
        let mut out = BufReader::new(child.stdout.take().ok_or("no stdout")?);
        let mut line = String::new();
        out.read_line(&mut line)
            .map_err(|e| format!("reading the mirror process: {e}"))?;
        let m = ChildMirror {
            child,
            stderr,
            proxy: None,
        };
        if line.trim() != "ready" {
            return Err(format!(
                "the mirror process did not start: {}",
                m.stderr_text()
            ));
        }
        Ok(m)
    }

    pub(crate) fn stderr_text(&self) -> String {
        self.stderr.lock().expect("stderr lines").join("\n")
    }

    /// Closes its standard input and waits for a clean exit.
    pub(crate) fn stop(mut self) -> Result<(), String> {
        drop(self.child.stdin.take());
        let status = self.child.wait().map_err(|e| e.to_string())?;
        if !status.success() {
            return Err(format!(
                "the mirror process exited with {status}: {}",
                self.stderr_text()
            ));
        }
        Ok(())
    }
}

impl Drop for ChildMirror {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs the whole scenario.
pub fn run(cfg: &Config) -> Result<MirrorSuite, String> {
    let started = std::time::SystemTime::now();
    let t0 = Instant::now();
    let specs = cases(cfg);
    let warmup = Duration::from_secs_f64(cfg.warmup);
    let timed = Duration::from_secs_f64(cfg.seconds);
    let total = specs.len() * cfg.transports.len() + 2;
    let mut step = 0;
    let mut progress = |what: &str| {
        step += 1;
        eprintln!(
            "[{step:>3}/{total}] {what} ({:.0} s elapsed)",
            t0.elapsed().as_secs_f64()
        );
    };
    progress("floors: write+fdatasync and loopback round trip");
    let mut fsync = Vec::new();
    for &size in &cfg.sizes {
        let f = floor::sync_latency(&cfg.scratch, SyncKind::Preallocated, size, warmup, timed)?;
        fsync.push((size, f.hist));
    }
    let mut rtt = loopback_rtt(warmup, timed)?;
    let secret = cfg.scratch.join("bench.secret");
    write_secret(&secret)?;
    let mut runs = Vec::new();
    for &choice in &cfg.transports {
        if choice == TransportChoice::IoUring {
            if let Err(why) = mirrorlog_engine::transport::uring::probe() {
                eprintln!("io_uring is unavailable here ({why}): skipping that path");
                runs.push(PathRun {
                    choice,
                    path: None,
                    skipped: Some(why),
                    cases: Vec::new(),
                });
                continue;
            }
        }
        runs.push(run_path(cfg, choice, &specs, &secret, &mut progress)?);
    }
    progress("floors again (drift check)");
    for (size, h) in fsync.iter_mut() {
        let f = floor::sync_latency(&cfg.scratch, SyncKind::Preallocated, *size, warmup, timed)?;
        h.add(&f.hist).map_err(|e| format!("{e:?}"))?;
    }
    rtt.add(&loopback_rtt(warmup, timed)?)
        .map_err(|e| format!("{e:?}"))?;
    Ok(MirrorSuite {
        fsync,
        rtt,
        runs,
        started,
        total_seconds: t0.elapsed().as_secs_f64(),
    })
}

fn path_name(t: TransportChoice) -> &'static str {
    match t {
        TransportChoice::IoUring => "io_uring",
        TransportChoice::Blocking => "blocking",
        TransportChoice::Auto => "auto",
    }
}

/// A principal in this process and a mirror in a child process, attached
/// and synchronized over `choice`. `tag` names their directories.
///
/// With `added_rtt`, the mirror reaches the principal through a
/// [`crate::delay_proxy::DelayProxy`] adding half of it each way.
pub(crate) fn start_pair(
    cfg: &Config,
    tag: &str,
    choice: TransportChoice,
    secret: &Path,
    added_rtt: Duration,
) -> Result<(Principal, ChildMirror), String> {
    let pdir = cfg.scratch.join(format!("principal-{tag}"));
    let mdir = cfg.scratch.join(format!("mirror-{tag}"));
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut pcfg = NodeConfig::new(&pdir, identity(secret)?);
    pcfg.log = cfg.log_options();
    pcfg.safety = Safety::Full;
    pcfg.transport = choice;
    let l = lines.clone();
    pcfg.logger = Logger::new(move |s| l.lock().expect("lines").push(s.to_string()));
    let principal = Principal::start(pcfg, "127.0.0.1:0".parse().expect("address"))
        .map_err(|e| format!("starting the principal: {e}"))?;
    let proxy = if added_rtt > Duration::ZERO {
        Some(crate::delay_proxy::DelayProxy::start(
            principal.local_addr(),
            added_rtt / 2,
        )?)
    } else {
        None
    };
    let to = proxy
        .as_ref()
        .map(|p| p.addr())
        .unwrap_or(principal.local_addr());
    let mut child = ChildMirror::spawn(cfg, &mdir, secret, to, choice)?;
    child.proxy = proxy;
    let attached = wait_for(Duration::from_secs(10), || {
        principal.status().state == MirroringState::Synchronized
    });
    if !attached {
        return Err(format!(
            "the mirror did not attach over {} within 10 s\nprincipal: {}\nmirror: {}",
            path_name(choice),
            lines.lock().expect("lines").join("\n"),
            child.stderr_text()
        ));
    }
    Ok((principal, child))
}

fn run_path(
    cfg: &Config,
    choice: TransportChoice,
    specs: &[MirrorCaseSpec],
    secret: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<PathRun, String> {
    let name = path_name(choice);
    let (principal, child) = start_pair(cfg, name, choice, secret, Duration::ZERO)?;
    let path = principal.status().transport;
    let mut results = Vec::new();
    for spec in specs {
        progress(&format!("{name}: {}", spec.describe()));
        let r = run_case(cfg, spec, &principal).map_err(|e| {
            format!(
                "{name}: {}: {e}\nmirror process: {}",
                spec.describe(),
                child.stderr_text()
            )
        })?;
        results.push(r);
    }
    drop(principal);
    child.stop()?;
    Ok(PathRun {
        choice,
        path,
        skipped: None,
        cases: results,
    })
}

pub(crate) fn wait_for(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while !f() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}

fn run_case(
    cfg: &Config,
    spec: &MirrorCaseSpec,
    principal: &Principal,
) -> Result<MirrorCaseResult, String> {
    let gc = principal.group_commit();
    let phase = AtomicU8::new(WARMUP);
    let threads = spec.mode.threads();
    std::thread::scope(|s| {
        let mut handles = Vec::with_capacity(threads);
        for t in 0..threads {
            let gen = RecordGen::new(spec.data, spec.record_bytes, t as u64 + 1);
            let phase = &phase;
            let (mode, level) = (spec.mode, spec.level);
            let h = std::thread::Builder::new()
                .name(format!("committer-{t}"))
                .spawn_scoped(s, move || {
                    let r = match mode {
                        Mode::Blocking { .. } => blocking_worker(gc, level, phase, gen, None),
                        Mode::Pipelined { window, .. } => {
                            pipelined_worker(gc, level, phase, gen, window)
                        }
                    };
                    if r.is_err() {
                        phase.store(STOP, Ordering::Release);
                    }
                    r
                })
                .map_err(|e| format!("spawning a committer: {e}"));
            match h {
                Ok(h) => handles.push(h),
                Err(e) => {
                    phase.store(STOP, Ordering::Release);
                    return Err(e);
                }
            }
        }
        let sleep_watch = |d: Duration, max: &mut u64| {
            let end = Instant::now() + d;
            while phase.load(Ordering::Acquire) != STOP && Instant::now() < end {
                std::thread::sleep(Duration::from_millis(10));
                *max = (*max).max(principal.status().send_queue_bytes);
            }
        };
        let mut ignored = 0;
        sleep_watch(Duration::from_secs_f64(cfg.warmup), &mut ignored);
        let log_before = principal.log().written_lsn();
        let _ = phase.compare_exchange(WARMUP, TIMED, Ordering::AcqRel, Ordering::Acquire);
        let t0 = Instant::now();
        let mut send_queue_max = 0;
        sleep_watch(Duration::from_secs_f64(cfg.seconds), &mut send_queue_max);
        let _ = phase.compare_exchange(TIMED, STOP, Ordering::AcqRel, Ordering::Acquire);
        let seconds = t0.elapsed().as_secs_f64();
        let end_status = principal.status();
        let log_bytes = principal.log().written_lsn() - log_before;
        let mut hist = new_histogram();
        let mut commits = 0;
        let mut first_err = None;
        for h in handles {
            match h.join() {
                Ok(Ok(WorkerOut {
                    commits: c,
                    hist: wh,
                    ..
                })) => {
                    commits += c;
                    hist.add(&wh).map_err(|e| format!("{e:?}"))?;
                }
                Ok(Err(e)) => {
                    first_err.get_or_insert(e);
                }
                Err(_) => {
                    first_err.get_or_insert("a committer panicked".to_string());
                }
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        // Let the mirror drain before the next case, and time it.
        let drained_at = Instant::now();
        let end = principal.log().hardened_lsn();
        if !wait_for(Duration::from_secs(60), || {
            let s = principal.status();
            s.mirror.applied >= end && s.state == MirroringState::Synchronized
        }) {
            return Err(format!(
                "the mirror did not catch up within 60 s: {}",
                principal.status().render()
            ));
        }
        Ok(MirrorCaseResult {
            spec: *spec,
            commits,
            seconds,
            hist,
            send_queue_max: send_queue_max.max(end_status.send_queue_bytes),
            send_queue_end: end_status.send_queue_bytes,
            redo_queue_end: end_status.redo_queue_bytes,
            catch_up_seconds: drained_at.elapsed().as_secs_f64(),
            log_bytes,
        })
    })
}

/// The transport a run used, as reported ("io_uring", "blocking", or the
/// configured choice when it did not run).
pub fn path_label(run: &PathRun) -> String {
    match run.path {
        Some(p) => p.to_string(),
        None => path_name(run.choice).to_string(),
    }
}
