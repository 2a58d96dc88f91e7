//! TLS on the client port, with real `mirrorlog serve` processes on
//! 127.0.0.1: a CA, a server certificate and client certificates are made
//! at test time (rcgen); the `redis` crate (rustls) and redis-cli `--tls`
//! talk to the TLS port on both I/O modes; client certificates are
//! required when the server is given a CA (redis-cli `--cert/--key` too);
//! a plaintext client on the TLS port and a client stalling mid-handshake
//! are cut off while others keep being served; a client beyond
//! `--max-clients` reads its refusal over TLS; writes over TLS reach the
//! mirror, and TLS clients follow a planned failover.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{addr, field, free_port, info, node_args, secret, serve, tempdir, wait_for, Served};
use redis::{Commands, ConnectionLike};

/// PEM files of one test's certificates.
struct Certs {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: Vec<u8>,
    client_key: Vec<u8>,
    /// A client certificate from another CA (not to be accepted).
    stranger_cert: Vec<u8>,
    stranger_key: Vec<u8>,
}

fn write_private(path: &Path, bytes: &[u8]) {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .unwrap()
        .write_all(bytes)
        .unwrap();
}

fn ca(name: &str) -> (rcgen::Certificate, rcgen::KeyPair) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.distinguished_name
        .push(rcgen::DnType::CommonName, name.to_string());
    p.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    (p.self_signed(&key).unwrap(), key)
}

fn leaf(
    names: &[&str],
    usage: rcgen::ExtendedKeyUsagePurpose,
    ca: &(rcgen::Certificate, rcgen::KeyPair),
) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p =
        rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
    p.extended_key_usages = vec![usage];
    let cert = p.signed_by(&key, &ca.0, &ca.1).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn certs(dir: &Path) -> Certs {
    let root = ca("mirrorlog test CA");
    let other = ca("another CA");
    let (server_cert, server_key) = leaf(
        &["localhost", "127.0.0.1"],
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        &root,
    );
    let (client_cert, client_key) = leaf(
        &["client"],
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        &root,
    );
    let (stranger_cert, stranger_key) = leaf(
        &["stranger"],
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        &other,
    );
    let c = Certs {
        ca: dir.join("ca.pem"),
        server_cert: dir.join("server.pem"),
        server_key: dir.join("server.key"),
        client_cert: client_cert.into_bytes(),
        client_key: client_key.into_bytes(),
        stranger_cert: stranger_cert.into_bytes(),
        stranger_key: stranger_key.into_bytes(),
    };
    std::fs::write(&c.ca, root.0.pem()).unwrap();
    std::fs::write(&c.server_cert, server_cert).unwrap();
    write_private(&c.server_key, server_key.as_bytes());
    c
}

impl Certs {
    /// The server's `--tls-*` flags for a TLS port.
    fn flags(&self, tls_port: u16) -> Vec<String> {
        vec![
            "--tls-port".into(),
            tls_port.to_string(),
            "--tls-cert".into(),
            self.server_cert.display().to_string(),
            "--tls-key".into(),
            self.server_key.display().to_string(),
        ]
    }

    /// A `redis` crate connection over TLS (trusting the test CA), with
    /// the given client certificate and key.
    fn connect(
        &self,
        port: u16,
        client: Option<(&[u8], &[u8])>,
    ) -> redis::RedisResult<redis::Connection> {
        let c = redis::Client::build_with_tls(
            format!("rediss://127.0.0.1:{port}/"),
            redis::TlsCertificates {
                client_tls: client.map(|(cert, key)| redis::ClientTlsConfig {
                    client_cert: cert.to_vec(),
                    client_key: key.to_vec(),
                }),
                root_cert: Some(std::fs::read(&self.ca).unwrap()),
            },
        )?;
        let mut con = c.get_connection_with_timeout(Duration::from_secs(5))?;
        con.set_read_timeout(Some(Duration::from_secs(10)))?;
        // The handshake may fail only at the first read (TLS 1.3 sends
        // the client's certificate after the server's Finished).
        redis::cmd("PING").query::<String>(&mut con)?;
        Ok(con)
    }

    fn client(&self, port: u16) -> redis::Connection {
        self.connect(port, None)
            .unwrap_or_else(|e| panic!("a TLS client on port {port}: {e}"))
    }
}

/// One `serve` process and its ports.
struct Node {
    port: u16,
    tls_port: u16,
    log: PathBuf,
    served: Served,
}

impl Node {
    fn alive(&mut self) {
        if let Ok(Some(st)) = self.served.0.try_wait() {
            panic!(
                "the server exited ({st}): {}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

/// A principal and its mirror (safety full), each with a TLS port beside
/// the plaintext one, and `extra` flags; returned once synchronized.
fn start_pair(tag: &str, io: &str, extra: &[&str]) -> (PathBuf, Certs, Node, Node) {
    let dir = tempdir("tls-clients", tag);
    let c = certs(&dir);
    let s = secret(&dir);
    let partner = free_port();
    let node = |role: &str| {
        let (port, tls_port) = (free_port(), free_port());
        let mut a = node_args(&dir.join(role), &s, role, port, partner);
        a.extend(["--io".to_string(), io.to_string()]);
        a.extend(c.flags(tls_port));
        a.extend(extra.iter().map(|x| x.to_string()));
        let log = dir.join(format!("{role}.log"));
        Node {
            port,
            tls_port,
            served: serve(&a, &log),
            log,
        }
    };
    let mut p = node("principal");
    let mut m = node("mirror");
    wait_for("the mirror to synchronize", Duration::from_secs(30), || {
        p.alive();
        m.alive();
        info(p.port).contains("mirroring_state:synchronized")
    });
    (dir, c, p, m)
}

/// A principal alone (safety off), the TLS port's flags plus `extra`.
fn start_one(tag: &str, extra: &[String]) -> (Certs, Node) {
    let dir = tempdir("tls-clients", tag);
    let c = certs(&dir);
    let s = secret(&dir);
    let (port, tls_port) = (free_port(), free_port());
    let mut a = node_args(&dir.join("p"), &s, "principal", port, free_port());
    a.extend(["--safety", "off"].map(String::from));
    a.extend(c.flags(tls_port));
    a.extend(extra.iter().cloned());
    let log = dir.join("p.log");
    let mut n = Node {
        port,
        tls_port,
        served: serve(&a, &log),
        log,
    };
    wait_for("the server to answer", Duration::from_secs(20), || {
        n.alive();
        !info(port).is_empty()
    });
    (c, n)
}

fn set_get_pipelines_over_tls(io: &str) {
    let (_d, c, mut p, mut m) = start_pair(&format!("basic-{io}"), io, &[]);
    let mut con = c.client(p.tls_port);
    let _: () = con.set("tls:k", "v1").unwrap();
    assert_eq!(con.get::<_, String>("tls:k").unwrap(), "v1");
    // A pipeline of 2,000 SETs, then one of 2,000 GETs.
    let mut pipe = redis::pipe();
    for i in 0..2000 {
        pipe.cmd("SET")
            .arg(format!("tls:p{i}"))
            .arg(format!("value {i}"));
    }
    let oks: Vec<String> = pipe.query(&mut con).unwrap();
    assert_eq!(oks.len(), 2000);
    assert!(oks.iter().all(|r| r == "OK"));
    let mut pipe = redis::pipe();
    for i in 0..2000 {
        pipe.cmd("GET").arg(format!("tls:p{i}"));
    }
    let got: Vec<String> = pipe.query(&mut con).unwrap();
    for (i, v) in got.iter().enumerate() {
        assert_eq!(v, &format!("value {i}"));
    }
    // A value larger than rustls's buffers and a TLS record, both ways.
    let big: Vec<u8> = (0..3 << 20).map(|i| (i % 251) as u8).collect();
    let _: () = con.set("tls:big", &big[..]).unwrap();
    assert_eq!(con.get::<_, Vec<u8>>("tls:big").unwrap(), big);
    // Mirroring is unaffected: the writes are readable on the mirror, over
    // TLS too.
    let mut mc = c.client(m.tls_port);
    wait_for("the mirror to apply", Duration::from_secs(20), || {
        mc.get::<_, Option<String>>("tls:p1999").unwrap() == Some("value 1999".into())
    });
    assert_eq!(mc.get::<_, Vec<u8>>("tls:big").unwrap(), big);
    let e = mc.set::<_, _, ()>("tls:k", "v2").unwrap_err();
    assert_eq!(e.kind(), redis::ErrorKind::ReadOnly, "{e}");
    // The plaintext port keeps working beside the TLS one.
    let mut plain = redis::Client::open(format!("redis://127.0.0.1:{}/", p.port))
        .unwrap()
        .get_connection()
        .unwrap();
    assert_eq!(plain.get::<_, String>("tls:k").unwrap(), "v1");
    p.alive();
    m.alive();
}

#[test]
fn tls_clients_set_get_and_pipeline_epoll() {
    set_get_pipelines_over_tls("epoll");
}

#[test]
fn tls_clients_set_get_and_pipeline_threads() {
    set_get_pipelines_over_tls("threads");
}

fn have_redis_cli() -> bool {
    Command::new("redis-cli")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn redis_cli_tls_with_cacert_works() {
    if !have_redis_cli() {
        eprintln!("redis-cli not installed: the redis-cli --tls test is skipped");
        return;
    }
    let (c, mut n) = start_one("redis-cli", &[]);
    let cli = |args: &[&str]| {
        let out = Command::new("redis-cli")
            .args(["--tls", "--cacert"])
            .arg(&c.ca)
            .args(["-h", "127.0.0.1", "-p", &n.tls_port.to_string()])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        )
    };
    assert_eq!(cli(&["SET", "cli", "over tls"]), "OK");
    assert_eq!(cli(&["GET", "cli"]), "over tls");
    assert!(cli(&["INFO", "server"]).contains("redis_version"));
    // Without --tls, redis-cli on the TLS port gets no answer.
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &n.tls_port.to_string(), "PING"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("PONG"),
        "a plaintext PING on the TLS port was answered"
    );
    n.alive();
}

/// redis-cli with a client certificate, against a server that requires
/// one (`--tls-ca-cert`): with `--cert/--key` it is served, without it is
/// not.
#[test]
fn redis_cli_tls_with_a_client_certificate() {
    if !have_redis_cli() {
        eprintln!("redis-cli not installed: the redis-cli client-certificate test is skipped");
        return;
    }
    let dir = tempdir("tls-clients", "redis-cli-cert");
    let c = certs(&dir);
    let (cert, key) = (dir.join("client.pem"), dir.join("client.key"));
    std::fs::write(&cert, &c.client_cert).unwrap();
    write_private(&key, &c.client_key);
    let s = secret(&dir);
    let (port, tls_port) = (free_port(), free_port());
    let mut a = node_args(&dir.join("n"), &s, "principal", port, free_port());
    a.extend(["--safety", "off"].map(String::from));
    a.extend(c.flags(tls_port));
    a.extend(["--tls-ca-cert".to_string(), c.ca.display().to_string()]);
    let log = dir.join("n.log");
    let mut n = Node {
        port,
        tls_port,
        served: serve(&a, &log),
        log,
    };
    wait_for("the server to answer", Duration::from_secs(20), || {
        n.alive();
        !info(port).is_empty()
    });
    let cli = |with_cert: bool, args: &[&str]| {
        let mut cmd = Command::new("redis-cli");
        cmd.args(["--tls", "--cacert"]).arg(&c.ca);
        if with_cert {
            cmd.arg("--cert").arg(&cert).arg("--key").arg(&key);
        }
        let out = cmd
            .args(["-h", "127.0.0.1", "-p", &tls_port.to_string()])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        )
    };
    assert_eq!(cli(true, &["SET", "cli", "with a certificate"]), "OK");
    assert_eq!(cli(true, &["GET", "cli"]), "with a certificate");
    let without = cli(false, &["GET", "cli"]);
    assert!(
        !without.contains("with a certificate"),
        "redis-cli without a client certificate was served: {without}"
    );
    n.alive();
}

#[test]
fn client_certificates_required_with_a_ca() {
    let dir_flags = |c: &Certs, mode: Option<&str>| {
        let mut f = vec!["--tls-ca-cert".to_string(), c.ca.display().to_string()];
        if let Some(m) = mode {
            f.extend(["--tls-auth-clients".to_string(), m.to_string()]);
        }
        f
    };
    let dir = tempdir("tls-clients", "auth");
    let c2 = certs(&dir);
    // No --tls-auth-clients with a CA: yes, as Redis.
    for (mode, without_ok) in [
        (None, false),
        (Some("yes"), false),
        (Some("optional"), true),
    ] {
        let s = secret(&dir);
        let (port, tls_port) = (free_port(), free_port());
        let sub = format!("n-{}", mode.unwrap_or("default"));
        let mut a = node_args(&dir.join(&sub), &s, "principal", port, free_port());
        a.extend(["--safety", "off"].map(String::from));
        a.extend(c2.flags(tls_port));
        a.extend(dir_flags(&c2, mode));
        let log = dir.join(format!("{sub}.log"));
        let mut n = Node {
            port,
            tls_port,
            served: serve(&a, &log),
            log,
        };
        wait_for("the server to answer", Duration::from_secs(20), || {
            n.alive();
            !info(port).is_empty()
        });
        let what = mode.unwrap_or("default (yes)");
        let with = c2
            .connect(n.tls_port, Some((&c2.client_cert, &c2.client_key)))
            .unwrap_or_else(|e| panic!("{what}: a client with a CA-signed certificate: {e}"));
        drop(with);
        let without = c2.connect(n.tls_port, None);
        assert_eq!(
            without.is_ok(),
            without_ok,
            "{what}: a client without a certificate: {:?}",
            without.err()
        );
        let stranger = c2.connect(n.tls_port, Some((&c2.stranger_cert, &c2.stranger_key)));
        assert!(
            stranger.is_err(),
            "{what}: a client certificate from another CA was accepted"
        );
        // Refusals cost the server nothing: it still answers.
        let mut ok = c2
            .connect(n.tls_port, Some((&c2.client_cert, &c2.client_key)))
            .unwrap();
        let _: () = ok.set("after", "refusals").unwrap();
        assert!(field(&info(n.port), "mirrorlog_tls_handshake_failures").unwrap() >= 1);
        n.alive();
    }
}

/// Reads from a raw socket until it closes (Ok: what came) or `within`
/// passes (Err).
fn until_closed(s: &mut TcpStream, within: Duration) -> Result<Vec<u8>, Vec<u8>> {
    let t0 = Instant::now();
    let mut got = Vec::new();
    let mut b = [0u8; 4096];
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    while t0.elapsed() < within {
        match s.read(&mut b) {
            Ok(0) => return Ok(got),
            Ok(n) => got.extend_from_slice(&b[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return Ok(got),
        }
    }
    Err(got)
}

fn plaintext_on_tls_port(io: &str) {
    let (c, mut n) = start_one(&format!("plain-on-tls-{io}"), &["--io".into(), io.into()]);
    let mut keep = c.client(n.tls_port);
    for req in [&b"*1\r\n$4\r\nPING\r\n"[..], b"PING\r\n", b"GET x\r\n\r\n"] {
        let mut s = TcpStream::connect(addr(n.tls_port)).unwrap();
        s.write_all(req).unwrap();
        let got = until_closed(&mut s, Duration::from_secs(5)).unwrap_or_else(|g| {
            panic!("a plaintext client on the TLS port was not closed within 5 s (got {g:?})")
        });
        assert!(
            !String::from_utf8_lossy(&got).contains("PONG"),
            "answered in plaintext: {got:?}"
        );
        // At most a TLS alert (content type 21), nothing else.
        assert!(got.is_empty() || got[0] == 21, "not an alert: {got:?}");
    }
    // Others are still served, on both ports.
    assert_eq!(
        redis::cmd("PING").query::<String>(&mut keep).unwrap(),
        "PONG"
    );
    let _: () = c.client(n.tls_port).set("still", "served").unwrap();
    let i = info(n.port);
    assert!(
        field(&i, "mirrorlog_tls_handshake_failures").unwrap() >= 3,
        "{i}"
    );
    n.alive();
}

#[test]
fn plaintext_client_on_tls_port_fails_cleanly_epoll() {
    plaintext_on_tls_port("epoll");
}

#[test]
fn plaintext_client_on_tls_port_fails_cleanly_threads() {
    plaintext_on_tls_port("threads");
}

/// A TLS client pinging every 100 ms; the longest answer time and the
/// first error.
struct Canary {
    stop: Arc<AtomicBool>,
    worst: Arc<Mutex<(Duration, Option<String>, u64)>>,
    h: Option<std::thread::JoinHandle<()>>,
}

impl Canary {
    fn start(mut con: redis::Connection) -> Canary {
        let stop = Arc::new(AtomicBool::new(false));
        let worst = Arc::new(Mutex::new((Duration::ZERO, None, 0)));
        let (s, w) = (stop.clone(), worst.clone());
        let h = std::thread::spawn(move || {
            while !s.load(Ordering::Acquire) {
                let t = Instant::now();
                let r = redis::cmd("PING").query::<String>(&mut con);
                let took = t.elapsed();
                let mut w = w.lock().unwrap();
                w.0 = w.0.max(took);
                w.2 += 1;
                if let Err(e) = r {
                    w.1.get_or_insert(e.to_string());
                }
                drop(w);
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Canary {
            stop,
            worst,
            h: Some(h),
        }
    }

    fn finish(mut self) -> (Duration, Option<String>, u64) {
        self.stop.store(true, Ordering::Release);
        self.h.take().unwrap().join().unwrap();
        self.worst.lock().unwrap().clone()
    }
}

fn stalled_handshakes(io: &str) {
    let (c, mut n) = start_one(
        &format!("stall-{io}"),
        &["--io", io, "--command-timeout-secs", "2"].map(String::from),
    );
    let canary = Canary::start(c.client(n.tls_port));
    let t0 = Instant::now();
    // 16 connections that send nothing, 16 that send a TLS record header
    // promising a ClientHello and then a byte a second.
    let mut silent: Vec<TcpStream> = (0..16)
        .map(|_| TcpStream::connect(addr(n.tls_port)).unwrap())
        .collect();
    let mut trickle: Vec<TcpStream> = (0..16)
        .map(|_| {
            let mut s = TcpStream::connect(addr(n.tls_port)).unwrap();
            s.write_all(&[22, 3, 1, 0x02, 0x00, 1]).unwrap();
            s
        })
        .collect();
    for _ in 0..3 {
        std::thread::sleep(Duration::from_secs(1));
        for s in &mut trickle {
            let _ = s.write_all(&[3]);
        }
    }
    // The deadline is 2 s: all are closed by 2 s plus a tick or two.
    for s in silent.iter_mut().chain(trickle.iter_mut()) {
        let left = Duration::from_secs(6).saturating_sub(t0.elapsed());
        until_closed(s, left.max(Duration::from_millis(100))).unwrap_or_else(|_| {
            panic!(
                "a stalled TLS handshake was still open {:?} after it began (deadline 2 s)",
                t0.elapsed()
            )
        });
    }
    let closed_after = t0.elapsed();
    assert!(
        closed_after >= Duration::from_millis(1900),
        "closed before the deadline: {closed_after:?}"
    );
    std::thread::sleep(Duration::from_millis(500));
    let (worst, err, pings) = canary.finish();
    assert_eq!(err, None, "the canary got an error");
    assert!(pings >= 20, "the canary got only {pings} answers");
    assert!(
        worst < Duration::from_millis(500),
        "the canary waited {worst:?} for an answer during the stalled handshakes"
    );
    let i = info(n.port);
    assert!(
        field(&i, "mirrorlog_tls_handshake_timeouts").unwrap() >= 32,
        "{i}"
    );
    n.alive();
}

#[test]
fn stalled_tls_handshakes_are_cut_by_the_deadline_epoll() {
    stalled_handshakes("epoll");
}

#[test]
fn stalled_tls_handshakes_are_cut_by_the_deadline_threads() {
    stalled_handshakes("threads");
}

/// `serve` with `args` exits at start with a message containing `want`.
fn refused(args: &[String], want: &str) {
    let out = Command::new(env!("CARGO_BIN_EXE_mirrorlog"))
        .arg("serve")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started with {args:?}");
    assert!(
        err.contains(want),
        "for {args:?} expected {want:?} in:\n{err}"
    );
}

#[test]
fn tls_configuration_errors_are_clear() {
    let dir = tempdir("tls-clients", "config");
    let c = certs(&dir);
    let s = secret(&dir);
    let base = |extra: &[String]| {
        let mut a = node_args(&dir.join("n"), &s, "principal", free_port(), free_port());
        a.extend(extra.iter().cloned());
        a
    };
    let tp = free_port().to_string();
    let flag = |f: &str, v: &Path| [f.to_string(), v.display().to_string()];
    refused(&base(&["--tls-port".into(), tp.clone()]), "--tls-port");
    refused(
        &base(
            &[
                ["--tls-port".into(), tp.clone()].as_slice(),
                &flag("--tls-cert", &c.server_cert),
            ]
            .concat(),
        ),
        "needs --tls-key",
    );
    refused(&base(&["--port".into(), "0".into()]), "--port 0");
    refused(
        &base(&["--tls-auth-clients".into(), "maybe".into()]),
        "expected no, optional or yes",
    );
    let missing = dir.join("missing.pem");
    let mut a = c.flags(free_port());
    a[3] = missing.display().to_string();
    refused(&base(&a), "cannot read certificate file");
    // A key readable by others.
    let open_key = dir.join("open.key");
    std::fs::copy(&c.server_key, &open_key).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&open_key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut a = c.flags(free_port());
    a[5] = open_key.display().to_string();
    refused(&base(&a), "readable or writable by group or others");
    // A key that is not the certificate's.
    let other_key = dir.join("other.key");
    write_private(&other_key, &c.client_key);
    let mut a = c.flags(free_port());
    a[5] = other_key.display().to_string();
    refused(&base(&a), "is the key the certificate's?");
    // Not PEM at all.
    let junk = dir.join("junk.pem");
    std::fs::write(&junk, "not a certificate\n").unwrap();
    let mut a = c.flags(free_port());
    a[3] = junk.display().to_string();
    refused(&base(&a), "no certificate in it");
    // Client certificates asked for without a CA.
    let mut a = c.flags(free_port());
    a.extend(["--tls-auth-clients".into(), "yes".into()]);
    refused(&base(&a), "needs --tls-ca-cert");
    // From a config file, a TLS key's error names the key.
    let cfg = dir.join("bad.toml");
    std::fs::write(&cfg, "tls_auth_clients = \"sometimes\"\n").unwrap();
    refused(
        &base(&["--config".into(), cfg.display().to_string()]),
        "key `tls_auth_clients`",
    );
}

#[test]
fn tls_only_from_a_config_file_with_port_zero() {
    let dir = tempdir("tls-clients", "config-file");
    let c = certs(&dir);
    let s = secret(&dir);
    let tls_port = free_port();
    let cfg = dir.join("serve.toml");
    std::fs::write(
        &cfg,
        format!(
            "role = \"principal\"\ndir = \"{}\"\nsecret_file = \"{}\"\nport = 0\nsafety = \"off\"\ntls_port = {tls_port}\ntls_cert = \"{}\"\ntls_key = \"{}\"\ntls_ca_cert = \"{}\"\ntls_auth_clients = \"optional\"\n",
            dir.join("n").display(),
            s.display(),
            c.server_cert.display(),
            c.server_key.display(),
            c.ca.display()
        ),
    )
    .unwrap();
    let log = dir.join("n.log");
    let mut n = Node {
        port: 0,
        tls_port,
        served: serve(&["--config".into(), cfg.display().to_string()], &log),
        log,
    };
    let mut con = None;
    wait_for("the TLS port to answer", Duration::from_secs(20), || {
        n.alive();
        con = c.connect(tls_port, None).ok();
        con.is_some()
    });
    let mut con = con.unwrap();
    let _: () = con.set("only", "tls").unwrap();
    assert_eq!(con.get::<_, String>("only").unwrap(), "tls");
    // optional: a client certificate from another CA is still refused.
    assert!(c
        .connect(tls_port, Some((&c.stranger_cert, &c.stranger_key)))
        .is_err());
    // No plaintext port: nothing listens on the default one for this node
    // (the log names only the TLS address).
    let text = std::fs::read_to_string(&n.log).unwrap();
    assert!(
        text.contains(&format!("serving TLS clients on 127.0.0.1:{tls_port}")),
        "{text}"
    );
    assert!(!con.is_open() || con.check_connection());
}

/// With `--max-clients` connected, a TLS client is refused with the
/// error it can read (over TLS), not plaintext it would take for a
/// corrupt record; the connected client is unaffected.
fn max_clients_refusal_over_tls(io: &str) {
    let (c, mut n) = start_one(
        &format!("full-{io}"),
        &["--max-clients", "1", "--io", io].map(String::from),
    );
    let mut first = c.client(n.tls_port);
    // A raw rustls client: the `redis` crate sends CLIENT SETINFO at
    // connect and ignores its reply, which is where the refusal lands.
    use mirrorlog_engine::transport::tls::{pem_certs, provider};
    let mut roots = rustls::RootCertStore::empty();
    for cert in pem_certs("the test CA", &std::fs::read(&c.ca).unwrap()).unwrap() {
        roots.add(cert).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let tls = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let sock = TcpStream::connect(addr(n.tls_port)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut second = rustls::StreamOwned::new(tls, sock);
    second.write_all(b"PING\r\n").unwrap();
    let mut got = Vec::new();
    let _ = second.read_to_end(&mut got);
    let got = String::from_utf8_lossy(&got);
    assert_eq!(
        got, "-ERR max number of clients reached\r\n",
        "what the refused TLS client read"
    );
    assert_eq!(
        redis::cmd("PING").query::<String>(&mut first).unwrap(),
        "PONG"
    );
    n.alive();
}

#[test]
fn a_tls_client_refused_at_max_clients_reads_why_epoll() {
    max_clients_refusal_over_tls("epoll");
}

#[test]
fn a_tls_client_refused_at_max_clients_reads_why_threads() {
    max_clients_refusal_over_tls("threads");
}

/// TLS clients across a planned failover: the TLS port of each node
/// follows its role (the new principal takes writes over TLS, with every
/// write acknowledged before; the old one refuses them and mirrors).
#[test]
fn tls_clients_follow_a_failover() {
    let (_d, c, mut p, mut m) = start_pair("failover", "epoll", &[]);
    let mut before = c.client(p.tls_port);
    for i in 0..100 {
        let _: () = before.set(format!("fo:{i}"), i).unwrap();
    }
    let reply: String = redis::cmd("MIRROR")
        .arg("FAILOVER")
        .query(&mut before)
        .unwrap();
    assert!(reply.contains("handed over"), "MIRROR FAILOVER: {reply}");
    wait_for(
        "writes over TLS on the new principal",
        Duration::from_secs(30),
        || {
            c.connect(m.tls_port, None)
                .and_then(|mut con| con.set::<_, _, ()>("fo:after", "yes"))
                .is_ok()
        },
    );
    let mut after = c.client(m.tls_port);
    for i in 0..100 {
        assert_eq!(after.get::<_, i64>(format!("fo:{i}")).unwrap(), i);
    }
    let mut old = c.client(p.tls_port);
    wait_for(
        "the old principal to mirror the new one",
        Duration::from_secs(30),
        || old.get::<_, Option<String>>("fo:after").unwrap() == Some("yes".into()),
    );
    let e = old.set::<_, _, ()>("fo:late", "no").unwrap_err();
    assert_eq!(e.kind(), redis::ErrorKind::ReadOnly, "{e}");
    p.alive();
    m.alive();
}
