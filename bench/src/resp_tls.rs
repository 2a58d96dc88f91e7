//! `resp --tls`: what TLS on the client port costs. One principal (safety
//! full, its mirror on loopback) listens on a plaintext port and a TLS
//! port at once; SET-only clients (each `--connections` count) take turns
//! on each, plaintext then TLS, three times, so drift of the shared machine
//! hits both alike. Reported per port: SET ops/s, p50/p99, and the
//! process's CPU time per SET (user + system, from `getrusage`), which
//! counts the server's side and the load generator's alike, since both
//! run in this process and both do the TLS work (the record layer with
//! AES-GCM or ChaCha20 each way; the handshake is outside the timed
//! part). The goal (issue 13): TLS at most 1.15x plaintext's CPU per
//! write.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mirrorlog::resp::{encode_command, parse_reply, Reply};
use mirrorlog::tls::TlsFiles;
use serde_json::{json, Value};

use crate::local_commit::{new_histogram, XorShift};
use crate::report::{fmt_us, lat_json, thousands};
use crate::resp_bench::{timed_clients, STOP, TIMED};
use crate::Config;

const VALUE_BYTES: usize = 100;
const KEYS: u64 = 100_000;
const ROUNDS: usize = 3;

/// One timed run of SET clients on one port.
pub struct TlsCase {
    pub tls: bool,
    pub connections: usize,
    pub round: usize,
    pub ops: u64,
    pub seconds: f64,
    /// User + system CPU of the whole process over the timed part.
    pub cpu_seconds: f64,
    pub hist: Histogram<u64>,
}

impl TlsCase {
    pub fn ops_per_s(&self) -> f64 {
        self.ops as f64 / self.seconds.max(1e-9)
    }

    pub fn cpu_us_per_op(&self) -> f64 {
        self.cpu_seconds * 1e6 / (self.ops.max(1) as f64)
    }
}

/// A CA and a server certificate for 127.0.0.1, written under `dir`
/// (the key private, as `serve` requires); returns the files and the CA.
fn make_certs(dir: &Path) -> Result<(TlsFiles, Vec<u8>), String> {
    use std::os::unix::fs::OpenOptionsExt;
    let e = |e: rcgen::Error| format!("making test certificates: {e}");
    let ca_key = rcgen::KeyPair::generate().map_err(e)?;
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(e)?;
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "mirrorlog bench CA");
    let ca = ca.self_signed(&ca_key).map_err(e)?;
    let key = rcgen::KeyPair::generate().map_err(e)?;
    let mut leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).map_err(e)?;
    leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let leaf = leaf.signed_by(&key, &ca, &ca_key).map_err(e)?;
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let files = TlsFiles {
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
        ca: None,
        auth_clients: None,
    };
    std::fs::write(&files.cert, leaf.pem()).map_err(|e| e.to_string())?;
    let _ = std::fs::remove_file(&files.key);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&files.key)
        .and_then(|mut f| f.write_all(key.serialize_pem().as_bytes()))
        .map_err(|e| format!("writing {}: {e}", files.key.display()))?;
    Ok((files, ca.pem().into_bytes()))
}

fn client_config(ca_pem: &[u8]) -> Result<Arc<rustls::ClientConfig>, String> {
    use mirrorlog_engine::transport::tls::{pem_certs, provider};
    let mut roots = rustls::RootCertStore::empty();
    for cert in pem_certs("the bench's CA", ca_pem)? {
        roots.add(cert).map_err(|e| e.to_string())?;
    }
    Ok(Arc::new(
        rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ))
}

/// A blocking RESP client over any stream (plaintext or TLS).
struct Resp<S: Read + Write> {
    s: S,
    buf: Vec<u8>,
    out: Vec<u8>,
}

impl<S: Read + Write> Resp<S> {
    fn call(&mut self, args: &[&[u8]]) -> Result<Reply, String> {
        self.out.clear();
        encode_command(args, &mut self.out);
        self.s.write_all(&self.out).map_err(|e| e.to_string())?;
        self.s.flush().map_err(|e| e.to_string())?;
        let mut chunk = [0u8; 4096];
        loop {
            if let Some((r, used)) = parse_reply(&self.buf).map_err(|e| e.to_string())? {
                self.buf.drain(..used);
                return Ok(r);
            }
            let n = self.s.read(&mut chunk).map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("the server closed the connection".into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

fn set_loop<S: Read + Write>(
    mut c: Resp<S>,
    seed: u64,
    phase: &AtomicU8,
) -> Result<(u64, Histogram<u64>), String> {
    let mut rng = XorShift::new(seed);
    let mut hist = new_histogram();
    let mut ops = 0;
    let mut value = vec![0u8; VALUE_BYTES];
    // One command before the clock: the TLS handshake is done by then.
    c.call(&[b"PING"])?;
    loop {
        let p = phase.load(Ordering::Acquire);
        if p == STOP {
            return Ok((ops, hist));
        }
        let key = format!("key:{:06}", rng.next_u64() % KEYS);
        rng.fill(&mut value);
        let t = Instant::now();
        let r = c.call(&[b"SET", key.as_bytes(), &value])?;
        let ns = t.elapsed().as_nanos().max(1) as u64;
        if let Reply::Error(e) = r {
            return Err(format!("server error: {e}"));
        }
        if p == TIMED {
            hist.saturating_record(ns);
            ops += 1;
        }
    }
}

fn worker(
    addr: SocketAddr,
    tls: Option<&Arc<rustls::ClientConfig>>,
    seed: u64,
    phase: &AtomicU8,
) -> Result<(u64, Histogram<u64>), String> {
    let sock = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    sock.set_nodelay(true).map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    fn fresh<S: Read + Write>(s: S) -> Resp<S> {
        Resp {
            s,
            buf: Vec::new(),
            out: Vec::new(),
        }
    }
    match tls {
        None => set_loop(fresh(sock), seed, phase),
        Some(config) => {
            let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("an IP name");
            let conn =
                rustls::ClientConnection::new(config.clone(), name).map_err(|e| e.to_string())?;
            set_loop(fresh(rustls::StreamOwned::new(conn, sock)), seed, phase)
        }
    }
}

fn run_one(
    cfg: &Config,
    addr: SocketAddr,
    tls: Option<&Arc<rustls::ClientConfig>>,
    connections: usize,
    round: usize,
) -> Result<TlsCase, String> {
    let t = timed_clients(cfg, connections, |i, phase| {
        worker(addr, tls, (round * 1000 + i) as u64 + 1, phase)
    })?;
    let mut hist = new_histogram();
    let mut ops = 0;
    for (o, wh) in t.per_client {
        ops += o;
        hist.add(&wh).map_err(|e| format!("{e:?}"))?;
    }
    Ok(TlsCase {
        tls: tls.is_some(),
        connections,
        round,
        ops,
        seconds: t.seconds,
        cpu_seconds: t.cpu_seconds,
        hist,
    })
}

/// Runs every case; `started` is the pair (principal's plaintext and TLS
/// addresses) the caller started with `files`.
pub fn run(
    cfg: &Config,
    start: impl FnOnce(&TlsFiles) -> Result<(SocketAddr, SocketAddr, crate::resp_bench::Pair), String>,
) -> Result<Vec<TlsCase>, String> {
    let (files, ca) = make_certs(&cfg.scratch.join("resp-tls-certs"))?;
    let client = client_config(&ca)?;
    let (plain, tls, _pair) = start(&files)?;
    let mut out = Vec::new();
    for &connections in &cfg.connections {
        for round in 0..ROUNDS {
            for use_tls in [false, true] {
                eprintln!(
                    "[tls {}/{ROUNDS}] SET, {connections} connections, {}",
                    round + 1,
                    if use_tls { "TLS" } else { "plaintext" }
                );
                let (addr, c) = if use_tls {
                    (tls, Some(&client))
                } else {
                    (plain, None)
                };
                out.push(run_one(cfg, addr, c, connections, round)?);
            }
        }
    }
    Ok(out)
}

/// Per connection count: TLS over plaintext (sums of both rounds).
struct Ratio {
    connections: usize,
    plain: Totals,
    tls: Totals,
}

struct Totals {
    ops: u64,
    seconds: f64,
    cpu_seconds: f64,
    hist: Histogram<u64>,
}

impl Totals {
    fn of<'a>(cases: impl Iterator<Item = &'a TlsCase>) -> Totals {
        let mut t = Totals {
            ops: 0,
            seconds: 0.0,
            cpu_seconds: 0.0,
            hist: new_histogram(),
        };
        for c in cases {
            t.ops += c.ops;
            t.seconds += c.seconds;
            t.cpu_seconds += c.cpu_seconds;
            let _ = t.hist.add(&c.hist);
        }
        t
    }

    fn cpu_us_per_op(&self) -> f64 {
        self.cpu_seconds * 1e6 / (self.ops.max(1) as f64)
    }

    fn ops_per_s(&self) -> f64 {
        self.ops as f64 / self.seconds.max(1e-9)
    }
}

fn ratios(cases: &[TlsCase]) -> Vec<Ratio> {
    let mut conns: Vec<usize> = cases.iter().map(|c| c.connections).collect();
    conns.dedup();
    conns
        .into_iter()
        .map(|n| Ratio {
            connections: n,
            plain: Totals::of(cases.iter().filter(|c| c.connections == n && !c.tls)),
            tls: Totals::of(cases.iter().filter(|c| c.connections == n && c.tls)),
        })
        .collect()
}

/// The goal per connection count: TLS CPU per SET at most 1.15x.
pub fn targets(cases: &[TlsCase]) -> Vec<(bool, String)> {
    ratios(cases)
        .iter()
        .map(|r| {
            let x = r.tls.cpu_us_per_op() / r.plain.cpu_us_per_op().max(1e-9);
            (
                x <= 1.15,
                format!(
                    "TLS clients, {} connections: CPU per SET {:.2}x plaintext (goal <= 1.15x)",
                    r.connections, x
                ),
            )
        })
        .collect()
}

pub fn render(cases: &[TlsCase], o: &mut String) {
    use std::fmt::Write as _;
    if cases.is_empty() {
        return;
    }
    let _ = writeln!(
        o,
        "\nTLS on the client port: SET, safety full, one principal's plaintext and TLS ports in turn ({ROUNDS} rounds each)"
    );
    let _ = writeln!(
        o,
        "  {:<26} {:>10} {:>9} {:>9} {:>14}",
        "case", "SET ops/s", "p50", "p99", "CPU us/SET"
    );
    for c in cases {
        let _ = writeln!(
            o,
            "  {:<26} {:>10} {:>9} {:>9} {:>14.1}",
            format!(
                "{} conn {} round {}",
                if c.tls { "TLS" } else { "plaintext" },
                c.connections,
                c.round + 1
            ),
            thousands(c.ops_per_s()),
            fmt_us(c.hist.value_at_quantile(0.5)),
            fmt_us(c.hist.value_at_quantile(0.99)),
            c.cpu_us_per_op()
        );
    }
    for r in ratios(cases) {
        let _ = writeln!(
            o,
            "  {} connections, TLS / plaintext: ops/s {:.2}x, p50 {:.2}x, p99 {:.2}x, CPU per SET {:.2}x",
            r.connections,
            r.tls.ops_per_s() / r.plain.ops_per_s().max(1e-9),
            r.tls.hist.value_at_quantile(0.5) as f64
                / (r.plain.hist.value_at_quantile(0.5).max(1)) as f64,
            r.tls.hist.value_at_quantile(0.99) as f64
                / (r.plain.hist.value_at_quantile(0.99).max(1)) as f64,
            r.tls.cpu_us_per_op() / r.plain.cpu_us_per_op().max(1e-9),
        );
    }
}

pub fn to_json(cases: &[TlsCase]) -> Value {
    json!(cases
        .iter()
        .map(|c| json!({
            "tls": c.tls,
            "connections": c.connections,
            "round": c.round + 1,
            "ops_per_s": c.ops_per_s(),
            "cpu_us_per_op": c.cpu_us_per_op(),
            "latency_us": lat_json(&c.hist),
        }))
        .collect::<Vec<_>>())
}
