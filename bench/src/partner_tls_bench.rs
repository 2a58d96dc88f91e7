//! The `partner-tls` scenario: what TLS costs on the partner link, in
//! safety full (every commit waits for the mirror's fsync), against
//! plaintext in the same run.
//!
//! A principal and a mirror both in this process on loopback (so one
//! `getrusage` covers both nodes and the committers), once per mode:
//! plaintext over blocking sockets and over the default path (io_uring
//! where it can be set up), both sealed per message as plaintext always
//! is; TLS (sealing off, the default under TLS); TLS with the seal kept.
//! Cases: 1 and 16 committers of 100 B and 4 KiB records at remote-flush.
//! Reported per case: commits/s, p50/p99 commit latency, and CPU per
//! commit (user + system of the whole process over the timed period,
//! divided by the commits), with each TLS mode's ratio to plaintext
//! blocking and to plaintext default. Certificates are made at start
//! (rcgen).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
use mirrorlog_engine::transport::tls::{PartnerTls, TlsIdentity};
use mirrorlog_engine::transport::TransportChoice;
use serde_json::{json, Value};

use crate::local_commit::new_histogram;
use crate::Config;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsMode {
    PlainBlocking,
    PlainDefault,
    Tls,
    TlsSealed,
}

impl TlsMode {
    pub const ALL: [TlsMode; 4] = [
        TlsMode::PlainBlocking,
        TlsMode::PlainDefault,
        TlsMode::Tls,
        TlsMode::TlsSealed,
    ];

    pub fn name(self) -> &'static str {
        match self {
            TlsMode::PlainBlocking => "plaintext blocking",
            TlsMode::PlainDefault => "plaintext default",
            TlsMode::Tls => "TLS",
            TlsMode::TlsSealed => "TLS + seal",
        }
    }
}

pub struct TlsCase {
    pub mode: TlsMode,
    pub committers: usize,
    pub record_bytes: usize,
    pub commits: u64,
    pub seconds: f64,
    pub cpu_seconds: f64,
    pub hist: Histogram<u64>,
    /// The path the session used, as the principal's status says.
    pub path: String,
}

impl TlsCase {
    pub fn commits_per_s(&self) -> f64 {
        self.commits as f64 / self.seconds.max(1e-9)
    }
    pub fn cpu_us_per_commit(&self) -> f64 {
        self.cpu_seconds * 1e6 / (self.commits.max(1) as f64)
    }
}

pub struct TlsSuite {
    pub cases: Vec<TlsCase>,
}

/// User + system CPU of this process so far, in seconds.
pub(crate) fn cpu_seconds() -> f64 {
    // SAFETY: getrusage writes one rusage into the zeroed struct we own.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_SELF is valid.
    let r = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    assert_eq!(r, 0, "getrusage(RUSAGE_SELF) cannot fail");
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn identity() -> Result<TlsIdentity, String> {
    let e = |e: rcgen::Error| e.to_string();
    let ca_key = rcgen::KeyPair::generate().map_err(e)?;
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(e)?;
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let ca = ca.self_signed(&ca_key).map_err(e)?;
    let key = rcgen::KeyPair::generate().map_err(e)?;
    let mut p = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).map_err(e)?;
    p.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = p.signed_by(&key, &ca, &ca_key).map_err(e)?;
    TlsIdentity::from_pem(
        cert.pem().as_bytes(),
        key.serialize_pem().as_bytes(),
        ca.pem().as_bytes(),
        ["cert", "key", "ca"],
    )
}

struct Discard;

impl Applier for Discard {
    fn apply(&mut self, _: u64, _: u64, _: &Records) -> Result<(), String> {
        Ok(())
    }
}

fn node_config(
    cfg: &Config,
    dir: &std::path::Path,
    mode: TlsMode,
    tls: &PartnerTls,
    lines: &Arc<Mutex<Vec<String>>>,
) -> Result<NodeConfig, String> {
    let id = NodeIdentity {
        database_id: *b"mirrorlog-bench!",
        secret: Secret::new(b"partner-tls-bench-shared-secret!".to_vec())
            .map_err(|e| e.to_string())?,
    };
    let mut c = NodeConfig::new(dir, id);
    c.log = cfg.log_options();
    c.safety = Safety::Full;
    c.transport = match mode {
        TlsMode::PlainDefault => TransportChoice::Auto,
        _ => TransportChoice::Blocking,
    };
    c.partner_tls = match mode {
        TlsMode::PlainBlocking | TlsMode::PlainDefault => None,
        TlsMode::Tls => Some(tls.clone()),
        TlsMode::TlsSealed => Some(PartnerTls {
            seal: true,
            ..tls.clone()
        }),
    };
    let l = lines.clone();
    c.logger = Logger::new(move |s| l.lock().expect("lines").push(s.to_string()));
    Ok(c)
}

pub fn run(cfg: &Config) -> Result<TlsSuite, String> {
    let id = identity()?;
    let tls = PartnerTls::new(&id, None)?;
    let mut cases = Vec::new();
    let shapes: Vec<(usize, usize)> = [1usize, 16]
        .iter()
        .flat_map(|&c| [100usize, 4096].map(|b| (c, b)))
        .collect();
    // Two passes, the second in reverse mode order, so drift (page cache,
    // other load) falls on every mode alike; the passes are merged.
    let passes: Vec<Vec<TlsMode>> = if cfg.quick {
        vec![TlsMode::ALL.to_vec()]
    } else {
        vec![
            TlsMode::ALL.to_vec(),
            TlsMode::ALL.iter().rev().copied().collect(),
        ]
    };
    for (pass, modes) in passes.iter().enumerate() {
        for &mode in modes {
            crate::check_interrupted()?;
            let tag = format!("{}-{pass}", mode.name().replace([' ', '+'], "-"));
            let lines = Arc::new(Mutex::new(Vec::new()));
            let pdir = cfg.scratch.join(format!("tls-p-{tag}"));
            let mdir = cfg.scratch.join(format!("tls-m-{tag}"));
            let p = Principal::start(
                node_config(cfg, &pdir, mode, &tls, &lines)?,
                "127.0.0.1:0".parse().expect("address"),
            )
            .map_err(|e| format!("{}: starting the principal: {e}", mode.name()))?;
            let m = Mirror::start(
                node_config(cfg, &mdir, mode, &tls, &lines)?,
                p.local_addr(),
                Discard,
                None,
            )
            .map_err(|e| format!("{}: starting the mirror: {e}", mode.name()))?;
            let until = Instant::now() + Duration::from_secs(10);
            while p.status().state != MirroringState::Synchronized {
                if Instant::now() > until {
                    return Err(format!(
                        "{}: the mirror did not attach within 10 s:\n{}",
                        mode.name(),
                        lines.lock().expect("lines").join("\n")
                    ));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let path = p
                .status()
                .transport
                .map(|t| t.to_string())
                .unwrap_or_default();
            for &(committers, record_bytes) in &shapes {
                eprintln!(
                    "partner-tls: {} ({path}), {committers} committers, {record_bytes} B",
                    mode.name()
                );
                let mut case = run_case(cfg, &p, committers, record_bytes)?;
                case.mode = mode;
                case.path = path.clone();
                merge(&mut cases, case);
            }
            drop(m);
            p.shutdown();
            let _ = std::fs::remove_dir_all(&pdir);
            let _ = std::fs::remove_dir_all(&mdir);
        }
    }
    Ok(TlsSuite { cases })
}

fn merge(cases: &mut Vec<TlsCase>, c: TlsCase) {
    match cases.iter_mut().find(|x| {
        x.mode == c.mode && x.committers == c.committers && x.record_bytes == c.record_bytes
    }) {
        Some(x) => {
            x.commits += c.commits;
            x.seconds += c.seconds;
            x.cpu_seconds += c.cpu_seconds;
            x.hist.add(&c.hist).expect("same bounds");
        }
        None => cases.push(c),
    }
}

fn run_case(
    cfg: &Config,
    p: &Principal,
    committers: usize,
    record_bytes: usize,
) -> Result<TlsCase, String> {
    let timing = AtomicBool::new(false);
    let stop = AtomicBool::new(false);
    let commits = AtomicU64::new(0);
    let failed = Mutex::new(None::<String>);
    let hists = Mutex::new(Vec::new());
    let mut window = (0.0, 0.0, Duration::ZERO);
    std::thread::scope(|s| {
        for t in 0..committers {
            let (timing, stop, commits, failed, hists) =
                (&timing, &stop, &commits, &failed, &hists);
            s.spawn(move || {
                let mut h = new_histogram();
                let mut rec = vec![0u8; record_bytes];
                let mut i = 0u64;
                while !stop.load(Ordering::Acquire) {
                    i += 1;
                    rec[..8].copy_from_slice(&(i ^ ((t as u64) << 48)).to_le_bytes());
                    let began = Instant::now();
                    let r = p
                        .commit_at(&[&rec], Level::RemoteFlush)
                        .map_err(|e| e.to_string())
                        .and_then(|t| t.wait().map_err(|e| e.to_string()));
                    match r {
                        Ok(c) if !c.exposed => {}
                        Ok(_) => {
                            *failed.lock().expect("failed") = Some(
                                "a commit was acknowledged exposed (the mirror detached)".into(),
                            );
                            return;
                        }
                        Err(e) => {
                            *failed.lock().expect("failed") = Some(e);
                            return;
                        }
                    }
                    if timing.load(Ordering::Acquire) {
                        let us = began.elapsed().as_micros().max(1) as u64;
                        let _ = h.record(us);
                        commits.fetch_add(1, Ordering::Relaxed);
                    }
                }
                hists.lock().expect("hists").push(h);
            });
        }
        std::thread::sleep(Duration::from_secs_f64(cfg.warmup));
        let (c0, t0) = (cpu_seconds(), Instant::now());
        timing.store(true, Ordering::Release);
        std::thread::sleep(Duration::from_secs_f64(cfg.seconds));
        timing.store(false, Ordering::Release);
        window = (c0, cpu_seconds(), t0.elapsed());
        stop.store(true, Ordering::Release);
    });
    if let Some(e) = failed.into_inner().expect("failed") {
        return Err(format!("a commit failed: {e}"));
    }
    let mut hist = new_histogram();
    for h in hists.into_inner().expect("hists") {
        hist.add(&h).expect("same bounds");
    }
    Ok(TlsCase {
        mode: TlsMode::PlainBlocking,
        committers,
        record_bytes,
        commits: commits.load(Ordering::Acquire),
        seconds: window.2.as_secs_f64(),
        cpu_seconds: window.1 - window.0,
        hist,
        path: String::new(),
    })
}

fn base<'a>(s: &'a TlsSuite, c: &TlsCase, mode: TlsMode) -> Option<&'a TlsCase> {
    s.cases.iter().find(|x| {
        x.mode == mode && x.committers == c.committers && x.record_bytes == c.record_bytes
    })
}

pub fn render(cfg: &Config, machine: &crate::report::Machine, s: &TlsSuite) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "partner-tls: TLS on the partner link vs plaintext, safety full (remote-flush), {:.1} s per case{}\n",
        cfg.seconds,
        if cfg.quick { "" } else { " x 2 passes (merged)" }
    ));
    out.push_str(&format!(
        "machine: {} cpus ({}), kernel {}; dir {} ({} on {})\n",
        machine.nproc, machine.cpu, machine.kernel, machine.dir, machine.fs_type, machine.device
    ));
    out.push_str("principal and mirror in one process on 127.0.0.1; CPU = user+sys of the process / commits\n\n");
    out.push_str(&format!(
        "{:<20} {:>4} {:>6} {:>11} {:>9} {:>9} {:>12} {:>10} {:>10}  path\n",
        "mode",
        "thr",
        "bytes",
        "commits/s",
        "p50 us",
        "p99 us",
        "CPU us/commit",
        "vs plain-b",
        "vs plain-d"
    ));
    for c in &s.cases {
        let ratio = |m| {
            base(s, c, m)
                .map(|b| {
                    format!(
                        "{:.3}x",
                        c.cpu_us_per_commit() / b.cpu_us_per_commit().max(1e-9)
                    )
                })
                .unwrap_or_default()
        };
        out.push_str(&format!(
            "{:<20} {:>4} {:>6} {:>11.0} {:>9} {:>9} {:>12.1} {:>10} {:>10}  {}\n",
            c.mode.name(),
            c.committers,
            c.record_bytes,
            c.commits_per_s(),
            c.hist.value_at_quantile(0.5),
            c.hist.value_at_quantile(0.99),
            c.cpu_us_per_commit(),
            ratio(TlsMode::PlainBlocking),
            ratio(TlsMode::PlainDefault),
            c.path
        ));
    }
    out.push_str("\ngoal: TLS <= 1.15x the CPU per commit of plaintext (the same transport, blocking sockets):\n");
    for c in s.cases.iter().filter(|c| c.mode == TlsMode::Tls) {
        if let Some(b) = base(s, c, TlsMode::PlainBlocking) {
            let r = c.cpu_us_per_commit() / b.cpu_us_per_commit().max(1e-9);
            out.push_str(&format!(
                "  {} committers, {} B: {:.3}x {}\n",
                c.committers,
                c.record_bytes,
                r,
                if r <= 1.15 { "PASS" } else { "MISS" }
            ));
        }
    }
    out
}

pub fn to_json(cfg: &Config, machine: &crate::report::Machine, s: &TlsSuite) -> Value {
    json!({
        "scenario": "partner-tls",
        "safety": "full",
        "level": "remote-flush",
        "seconds_per_case": cfg.seconds,
        "passes": if cfg.quick { 1 } else { 2 },
        "machine": {
            "nproc": machine.nproc, "kernel": machine.kernel, "cpu": machine.cpu,
            "dir": machine.dir, "fs_type": machine.fs_type, "device": machine.device,
        },
        "cases": s.cases.iter().map(|c| json!({
            "mode": c.mode.name(),
            "path": c.path,
            "committers": c.committers,
            "record_bytes": c.record_bytes,
            "commits": c.commits,
            "seconds": c.seconds,
            "commits_per_s": c.commits_per_s(),
            "cpu_us_per_commit": c.cpu_us_per_commit(),
            "latency_us": crate::histo::percentiles_json(&c.hist),
        })).collect::<Vec<_>>(),
    })
}
