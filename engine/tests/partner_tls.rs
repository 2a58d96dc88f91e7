//! TLS on the partner and witness links (issue 13), with real nodes in
//! process over 127.0.0.1 and certificates made at test time (rcgen):
//! partners replicate over TLS and fail over through a TLS witness; a
//! certificate of another CA is refused with an error that says so; one
//! side with TLS and the other without gets a clear error on both sides
//! (not a loop of malformed frames); a byte flipped in transit ends the
//! session and nothing tampered reaches the mirror's log; a relay that
//! terminates TLS with certificates of the right CA still fails the PAKE
//! (its two TLS sessions export different keying material).

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mirrorlog_engine::apply::Applier;
use mirrorlog_engine::commit::Level;
use mirrorlog_engine::log::{Log, Records};
use mirrorlog_engine::node::{Logger, Mirror, NodeConfig, Principal, WitnessLink};
use mirrorlog_engine::replication::handshake::Secret;
use mirrorlog_engine::replication::session::MirroringState;
use mirrorlog_engine::transport::preauth::PER_SOURCE_MAX;
use mirrorlog_engine::transport::runner::NodeIdentity;
use mirrorlog_engine::transport::tls::{PartnerTls, TlsEnd, TlsIdentity, TlsStream, WitnessTls};
use mirrorlog_engine::transport::{TransportChoice, TransportPath};
use mirrorlog_engine::witness::server::{WitnessOptions, WitnessServer};
use mirrorlog_engine::witness::LeaseConfig;

use common::nodes::{log_opts, tempdir, wait_until};

const DB: [u8; 16] = *b"partner-tls-db01";
const TIMEOUT_MS: u64 = 400;

type Lines = Arc<Mutex<Vec<String>>>;

struct Ca {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

fn ca(name: &str) -> Ca {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.distinguished_name
        .push(rcgen::DnType::CommonName, name.to_string());
    p.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    Ca {
        cert: p.self_signed(&key).unwrap(),
        key,
    }
}

/// A node's identity: a certificate for 127.0.0.1 (server and client
/// use) signed by `signer`, trusting `trust`.
fn identity(signer: &Ca, trust: &Ca) -> TlsIdentity {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    p.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = p.signed_by(&key, &signer.cert, &signer.key).unwrap();
    TlsIdentity::from_pem(
        cert.pem().as_bytes(),
        key.serialize_pem().as_bytes(),
        trust.cert.pem().as_bytes(),
        ["cert", "key", "ca"],
    )
    .unwrap()
}

fn partner_tls(id: &TlsIdentity) -> PartnerTls {
    PartnerTls::new(id, None).unwrap()
}

fn logger(lines: &Lines) -> Logger {
    let l = lines.clone();
    Logger::new(move |s| l.lock().unwrap().push(s.to_string()))
}

fn config(dir: &Path, tls: Option<PartnerTls>, lines: &Lines) -> NodeConfig {
    let id = NodeIdentity {
        database_id: DB,
        secret: Secret::new(b"partner-tls-test-shared-secret".to_vec()).unwrap(),
    };
    let mut c = NodeConfig::new(dir, id);
    c.log = log_opts();
    c.transport = TransportChoice::Auto;
    c.session.partner_timeout_ms = TIMEOUT_MS;
    c.session.heartbeat_ms = 40;
    c.logger = logger(lines);
    c.partner_tls = tls;
    c
}

#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<Vec<u8>>>>);

impl Applier for Recorder {
    fn apply(&mut self, _: u64, _: u64, records: &Records) -> Result<(), String> {
        let mut v = self.0.lock().unwrap();
        v.extend(records.iter().map(|r| r.to_vec()));
        Ok(())
    }
}

fn log_records(dir: &Path) -> Vec<Vec<u8>> {
    let (log, _) = Log::open(dir, log_opts()).unwrap();
    log.read_from(log.start_lsn())
        .unwrap()
        .flat_map(|v| {
            let v = v.unwrap();
            v.records()
                .unwrap()
                .iter()
                .map(|r| r.to_vec())
                .collect::<Vec<_>>()
        })
        .collect()
}

fn joined(lines: &Lines) -> String {
    lines.lock().unwrap().join("\n")
}

#[test]
fn partners_over_tls_replicate_and_their_logs_match() {
    let root = ca("partner CA");
    let (pd, md) = (tempdir("ptls", "ok-p"), tempdir("ptls", "ok-m"));
    let (pl, ml): (Lines, Lines) = (Arc::default(), Arc::default());
    let p = Principal::start(
        config(&pd, Some(partner_tls(&identity(&root, &root))), &pl),
        "127.0.0.1:0".parse().unwrap(),
    )
    .unwrap();
    let applied = Recorder::default();
    let m = Mirror::start(
        config(&md, Some(partner_tls(&identity(&root, &root))), &ml),
        p.local_addr(),
        applied.clone(),
        None,
    )
    .unwrap();
    wait_until("SYNCHRONIZED", Duration::from_secs(10), || {
        p.status().state == MirroringState::Synchronized
    });
    for i in 0..300u32 {
        let value = format!("value-{i}-{}", "x".repeat(i as usize % 700));
        let c = p
            .commit_at(&[value.as_bytes()], Level::RemoteFlush)
            .unwrap()
            .wait()
            .unwrap();
        assert!(!c.exposed, "commit {i} acknowledged without the mirror");
    }
    let end = p.log().hardened_lsn();
    wait_until("the mirror applied all", Duration::from_secs(10), || {
        m.status().mirror.applied >= end
    });
    assert_eq!(p.status().transport, Some(TransportPath::Tls));
    assert_eq!(m.status().transport, Some(TransportPath::Tls));
    assert!(
        joined(&pl).contains("partner TLS runs over blocking sockets"),
        "{}",
        joined(&pl)
    );
    assert_eq!(applied.0.lock().unwrap().len(), 300);
    drop(m);
    p.shutdown();
    assert_eq!(log_records(&pd), log_records(&md));
}

/// Starts a principal and a mirror with the given TLS and waits until the
/// mirror's status has an error matching `mirror_says` and the
/// principal's log a line matching `principal_says`; no session may get
/// through, and neither says anything about malformed messages.
fn refused(
    tag: &str,
    p_tls: Option<PartnerTls>,
    m_tls: Option<PartnerTls>,
    mirror_says: &str,
    principal_says: &str,
) {
    let (pd, md) = (
        tempdir("ptls", &format!("{tag}-p")),
        tempdir("ptls", &format!("{tag}-m")),
    );
    let (pl, ml): (Lines, Lines) = (Arc::default(), Arc::default());
    let p = Principal::start(config(&pd, p_tls, &pl), "127.0.0.1:0".parse().unwrap()).unwrap();
    let m = Mirror::start(
        config(&md, m_tls, &ml),
        p.local_addr(),
        Recorder::default(),
        None,
    )
    .unwrap();
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let err = m.status().last_error.unwrap_or_default();
        if err.contains(mirror_says) && joined(&pl).contains(principal_says) {
            break;
        }
        assert!(
            Instant::now() < until,
            "mirror status: {err:?}\nmirror log:\n{}\nprincipal log:\n{}",
            joined(&ml),
            joined(&pl)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // A few retries later: still refused, never a garbage-frame error.
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(m.status().sessions, 0, "a session got through");
    assert_ne!(m.status().state, MirroringState::Synchronized);
    for l in [&pl, &ml] {
        let all = joined(l);
        assert!(!all.contains("malformed"), "{all}");
    }
    drop(m);
    p.shutdown();
}

#[test]
fn a_mirror_certificate_of_another_ca_is_refused_with_a_clear_error() {
    let root = ca("partner CA");
    let other = ca("some other CA");
    // The mirror trusts the right CA but its certificate is another's.
    refused(
        "stranger",
        Some(partner_tls(&identity(&root, &root))),
        Some(partner_tls(&identity(&other, &root))),
        "the partner refused this node's certificate",
        "invalid peer certificate: UnknownIssuer",
    );
}

#[test]
fn a_principal_certificate_of_another_ca_is_refused_by_the_mirror() {
    let root = ca("partner CA");
    let other = ca("some other CA");
    refused(
        "wrongca",
        Some(partner_tls(&identity(&other, &root))),
        Some(partner_tls(&identity(&root, &root))),
        "invalid peer certificate: UnknownIssuer",
        "TLS handshake with the mirror failed: received fatal alert: UnknownCA: the mirror refused this node's certificate",
    );
}

#[test]
fn tls_principal_and_plaintext_mirror_say_so_on_both_sides() {
    let root = ca("partner CA");
    refused(
        "tls-plain",
        Some(partner_tls(&identity(&root, &root))),
        None,
        "this principal requires TLS on its partner port",
        "the peer speaks the plaintext partner protocol, but this node requires TLS",
    );
}

#[test]
fn plaintext_principal_and_tls_mirror_say_so_on_both_sides() {
    let root = ca("partner CA");
    refused(
        "plain-tls",
        None,
        Some(partner_tls(&identity(&root, &root))),
        "the principal answered without TLS and refused this node: this principal has no TLS on its partner port",
        "the peer started a TLS handshake, but this node has no TLS on its partner port",
    );
}

/// Forwards both directions; once `armed`, flips one byte in the middle of
/// the next principal → mirror read of at least 64 bytes (a TLS record
/// carrying a ship). `flipped` counts flips.
fn flipping_proxy(
    upstream: SocketAddr,
    armed: Arc<AtomicBool>,
    flipped: Arc<AtomicU64>,
) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for down in l.incoming() {
            let Ok(down) = down else { return };
            let Ok(up) = TcpStream::connect(upstream) else {
                return;
            };
            let (d2, u2) = (down.try_clone().unwrap(), up.try_clone().unwrap());
            std::thread::spawn(move || pump(d2, u2, None));
            let (a, f) = (armed.clone(), flipped.clone());
            std::thread::spawn(move || pump(up, down, Some((&a, &f))));
        }
    });
    addr
}

fn pump(mut from: TcpStream, mut to: TcpStream, flip: Option<(&AtomicBool, &AtomicU64)>) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some((armed, flipped)) = flip {
            if n >= 64 && armed.swap(false, Ordering::AcqRel) {
                buf[n / 2] ^= 0x20;
                flipped.fetch_add(1, Ordering::AcqRel);
            }
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

/// A byte flipped inside a TLS record on the partner link: the record's
/// AEAD tag fails, the mirror ends the session with a TLS error (status
/// and log), reconnects and gets the genuine batch; its log and state hold
/// only what the principal wrote.
#[test]
fn a_byte_flipped_on_the_tls_partner_link_ends_the_session_and_reaches_no_log() {
    let root = ca("partner CA");
    let (pd, md) = (tempdir("ptls", "flip-p"), tempdir("ptls", "flip-m"));
    let (pl, ml): (Lines, Lines) = (Arc::default(), Arc::default());
    let p = Principal::start(
        config(&pd, Some(partner_tls(&identity(&root, &root))), &pl),
        "127.0.0.1:0".parse().unwrap(),
    )
    .unwrap();
    let (armed, flipped) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
    );
    let proxy = flipping_proxy(p.local_addr(), armed.clone(), flipped.clone());
    let applied = Recorder::default();
    let m = Mirror::start(
        config(&md, Some(partner_tls(&identity(&root, &root))), &ml),
        proxy,
        applied.clone(),
        None,
    )
    .unwrap();
    wait_until("SYNCHRONIZED", Duration::from_secs(10), || {
        p.status().state == MirroringState::Synchronized
    });
    let value = b"account=alice;balance=0000100;padding-to-make-the-record-long-enough";
    armed.store(true, Ordering::Release);
    let _ = p
        .commit_at(&[value], Level::RemoteFlush)
        .unwrap()
        .wait()
        .unwrap();
    assert_eq!(
        flipped.load(Ordering::Acquire),
        1,
        "the proxy flipped a byte"
    );
    let end = p.log().hardened_lsn();
    wait_until(
        "the mirror applied the batch",
        Duration::from_secs(10),
        || m.status().mirror.applied >= end,
    );
    assert!(m.status().sessions >= 2, "the tampered session ended");
    let all = joined(&ml);
    assert!(
        all.contains("TLS: ") || all.contains("TLS handshake"),
        "the mirror logged a TLS failure: {all}"
    );
    let got = applied.0.lock().unwrap().clone();
    assert_eq!(
        got,
        vec![value.to_vec()],
        "only the genuine value was applied"
    );
    drop(m);
    p.shutdown();
    let (plog, mlog) = (log_records(&pd), log_records(&md));
    assert_eq!(plog, mlog, "the mirror's log holds exactly the principal's");
}

/// A relay holding certificates of the partners' own CA terminates TLS on
/// both sides and forwards the plaintext unchanged. TLS alone would let it
/// through; the PAKE transcript binds each side's TLS exporter, which
/// differ across the relay, so the key confirmations fail and no session
/// starts.
#[test]
fn a_tls_terminating_relay_with_valid_certificates_fails_the_bound_handshake() {
    let root = ca("partner CA");
    let (pd, md) = (tempdir("ptls", "mitm-p"), tempdir("ptls", "mitm-m"));
    let (pl, ml): (Lines, Lines) = (Arc::default(), Arc::default());
    let p = Principal::start(
        config(&pd, Some(partner_tls(&identity(&root, &root))), &pl),
        "127.0.0.1:0".parse().unwrap(),
    )
    .unwrap();
    let relay_id = identity(&root, &root);
    let (server, client) = (
        relay_id.server_config().unwrap(),
        relay_id.client_config().unwrap(),
    );
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let relay = l.local_addr().unwrap();
    let upstream = p.local_addr();
    let relayed = Arc::new(AtomicU64::new(0));
    let r2 = relayed.clone();
    std::thread::spawn(move || {
        for down in l.incoming() {
            let Ok(down) = down else { return };
            let deadline = Instant::now() + Duration::from_secs(2);
            let Ok(mut a) = TlsStream::handshake(
                down,
                TlsEnd::Accept(&server),
                deadline,
                "mirror",
                "",
                &|| {},
            ) else {
                continue;
            };
            let Ok(up) = TcpStream::connect(upstream) else {
                return;
            };
            let name = rustls::pki_types::ServerName::IpAddress(upstream.ip().into());
            let Ok(mut b) = TlsStream::handshake(
                up,
                TlsEnd::Connect(&client, &name),
                deadline,
                "principal",
                "",
                &|| {},
            ) else {
                continue;
            };
            r2.fetch_add(1, Ordering::AcqRel);
            for s in [a.sock(), b.sock()] {
                s.set_read_timeout(Some(Duration::from_millis(2))).unwrap();
            }
            let mut buf = [0u8; 4096];
            let mut moved = |from: &mut TlsStream, to: &mut TlsStream| -> bool {
                match from.read(&mut buf) {
                    Ok(0) => false,
                    Ok(n) => to.write_all(&buf[..n]).is_ok(),
                    Err(e) => matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ),
                }
            };
            while moved(&mut a, &mut b) && moved(&mut b, &mut a) {}
            let _ = a.sock().shutdown(Shutdown::Both);
            let _ = b.sock().shutdown(Shutdown::Both);
        }
    });
    let m = Mirror::start(
        config(&md, Some(partner_tls(&identity(&root, &root))), &ml),
        relay,
        Recorder::default(),
        None,
    )
    .unwrap();
    let until = Instant::now() + Duration::from_secs(10);
    while !m
        .status()
        .last_error
        .unwrap_or_default()
        .contains("does not hold the same shared secret")
    {
        assert!(
            Instant::now() < until,
            "mirror: {:?}\n{}\nprincipal:\n{}",
            m.status().last_error,
            joined(&ml),
            joined(&pl)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(relayed.load(Ordering::Acquire) >= 1, "TLS was relayed");
    assert_eq!(m.status().sessions, 0, "a session got through the relay");
    assert_ne!(p.status().state, MirroringState::Synchronized);
    drop(m);
    p.shutdown();
}

fn witness(dir: &Path, tls: Option<&TlsIdentity>, lines: &Lines) -> WitnessServer {
    WitnessServer::start(WitnessOptions {
        dir: dir.to_path_buf(),
        listen: "127.0.0.1:0".parse().unwrap(),
        secret: Secret::new(b"partner-tls-test-shared-secret".to_vec()).unwrap(),
        database_id: DB,
        lease: LeaseConfig {
            lease_ms: TIMEOUT_MS,
            rho: 0.01,
        },
        logger: logger(lines),
        tls: tls.map(|id| id.server_config().unwrap()),
    })
    .unwrap()
}

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn with_witness(
    mut c: NodeConfig,
    w: SocketAddr,
    name: SocketAddr,
    tls: Option<&TlsIdentity>,
) -> NodeConfig {
    c.transport = TransportChoice::Blocking;
    c.session.heartbeat_ms = 30;
    c.witness = Some(WitnessLink {
        addr: w,
        name: name.to_string(),
        auto_failover: true,
        tls: tls.map(|id| WitnessTls {
            client: id.client_config().unwrap(),
            server_name: rustls::pki_types::ServerName::IpAddress(w.ip().into()),
        }),
    });
    c
}

/// Principal, mirror and witness all over TLS: the principal dies, the
/// witness grants the mirror the next epoch, and every acknowledged
/// commit is in the new principal's log.
#[test]
fn failover_with_the_witness_over_tls_loses_nothing() {
    let root = ca("partner CA");
    let (pd, md, wd) = (
        tempdir("ptls", "fo-p"),
        tempdir("ptls", "fo-m"),
        tempdir("ptls", "fo-w"),
    );
    let lines: Lines = Arc::default();
    let w = witness(&wd, Some(&identity(&root, &root)), &lines);
    let (a_addr, b_addr) = (free_addr(), free_addr());
    let a_id = identity(&root, &root);
    let b_id = identity(&root, &root);
    let a = Principal::start(
        with_witness(
            config(&pd, Some(partner_tls(&a_id)), &lines),
            w.local_addr(),
            a_addr,
            Some(&a_id),
        ),
        a_addr,
    )
    .unwrap();
    let e1 = a.epoch();
    assert_eq!(w.state().epoch, e1);
    let b = Mirror::start(
        with_witness(
            config(&md, Some(partner_tls(&b_id)), &lines),
            w.local_addr(),
            b_addr,
            Some(&b_id),
        ),
        a_addr,
        Recorder::default(),
        None,
    )
    .unwrap();
    wait_until("SYNCHRONIZED", Duration::from_secs(10), || {
        a.status().state == MirroringState::Synchronized
    });
    let mut acked = Vec::new();
    for i in 0..100u32 {
        let c = a.commit_wait(&[&i.to_le_bytes()]).unwrap();
        assert!(!c.exposed);
        acked.push(c.lsn_start);
    }
    drop(a);
    wait_until("the mirror to be promoted", Duration::from_secs(10), || {
        b.promoted().is_some()
    });
    let p = b.promoted().unwrap();
    assert_eq!(p.epoch, e1 + 1);
    assert!(!p.forced);
    assert_eq!(
        w.state().principal.as_deref(),
        Some(b_addr.to_string().as_str())
    );
    b.shutdown();
    let (log, _) = Log::open(&md, log_opts()).unwrap();
    let lsns: Vec<u64> = log
        .read_from(log.start_lsn())
        .unwrap()
        .map(|v| v.unwrap().lsn())
        .collect();
    for l in &acked {
        assert!(lsns.contains(l), "acknowledged commit at {l} lost");
    }
    assert!(w.preauth_rejected() == 0, "{}", joined(&lines));
}

/// A plaintext partner against a TLS witness, and a TLS partner against a
/// plaintext witness: both ends say what is wrong.
#[test]
fn witness_tls_mismatch_is_a_clear_error_on_both_ends() {
    use mirrorlog_engine::witness::client::WitnessClient;
    use mirrorlog_engine::witness::proto::Request;
    let root = ca("witness CA");
    let secret = Secret::new(b"partner-tls-test-shared-secret".to_vec()).unwrap();
    let query = Request::Query { database_id: DB };
    // TLS witness, plaintext partner.
    let lines: Lines = Arc::default();
    let w = witness(
        &tempdir("ptls", "wm-tls"),
        Some(&identity(&root, &root)),
        &lines,
    );
    let err = WitnessClient::new(w.local_addr(), secret.clone())
        .call(&query, Duration::from_secs(3))
        .unwrap_err();
    assert!(err.contains("the witness answered with TLS"), "{err}");
    wait_until("the witness logs it", Duration::from_secs(5), || {
        joined(&lines).contains(
            "the partner speaks the plaintext witness protocol, but this witness requires TLS",
        )
    });
    w.shutdown();
    // Plaintext witness, TLS partner.
    let lines: Lines = Arc::default();
    let w = witness(&tempdir("ptls", "wm-plain"), None, &lines);
    let id = identity(&root, &root);
    let err = WitnessClient::new(w.local_addr(), secret)
        .with_tls(Some(WitnessTls {
            client: id.client_config().unwrap(),
            server_name: rustls::pki_types::ServerName::IpAddress(w.local_addr().ip().into()),
        }))
        .call(&query, Duration::from_secs(3))
        .unwrap_err();
    assert!(
        err.contains("answered in plaintext: it has no TLS configured"),
        "{err}"
    );
    wait_until("the witness logs it", Duration::from_secs(5), || {
        joined(&lines).contains("speaks TLS, but this node has no TLS configured")
    });
    w.shutdown();
}

/// `n` connections to `addr`, each renewed as soon as it is closed; each
/// sends `say` and then only reads.
fn flood(addr: SocketAddr, n: usize, say: &'static [u8], stop: &Arc<AtomicBool>) -> Arc<AtomicU64> {
    let connects = Arc::new(AtomicU64::new(0));
    for _ in 0..n {
        let (stop, connects) = (stop.clone(), connects.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(500))
                else {
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                };
                connects.fetch_add(1, Ordering::Relaxed);
                if !say.is_empty() && s.write_all(say).is_err() {
                    continue;
                }
                s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
                let mut buf = [0u8; 256];
                while !stop.load(Ordering::Relaxed) {
                    match s.read(&mut buf) {
                        Ok(0) => break,
                        Ok(_) => {}
                        Err(e)
                            if matches!(
                                e.kind(),
                                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                            ) => {}
                        Err(_) => break,
                    }
                }
            }
        });
    }
    connects
}

/// The TLS handshake runs inside the pre-auth gate: 16 connections that
/// say nothing, and 16 that start a TLS record and stall (a ClientHello
/// header promising 512 bytes that never come), renewed as they are
/// closed, do not keep a restarting TLS mirror out. Both kinds alone are
/// twice the gate's per-source limit (8; the mirror shares the flood's
/// source, 127.0.0.1), so the gate is full for the whole flood; with 64
/// of each the threads' churn on 2 cores made the restart miss its 8 s
/// in one loaded full-suite run out of five.
#[test]
fn silent_and_stalled_tls_peers_do_not_keep_a_restarting_tls_mirror_out() {
    let root = ca("partner CA");
    let (pd, md) = (tempdir("ptls", "flood-p"), tempdir("ptls", "flood-m"));
    let (pl, ml): (Lines, Lines) = (Arc::default(), Arc::default());
    let with = |dir: &Path, lines: &Lines| {
        let mut c = config(dir, Some(partner_tls(&identity(&root, &root))), lines);
        // Before the pre-auth gate each silent connection held a slot
        // this long.
        c.session.partner_timeout_ms = 2000;
        c
    };
    let p = Principal::start(with(&pd, &pl), "127.0.0.1:0".parse().unwrap()).unwrap();
    let applied = Recorder::default();
    let m = Mirror::start(with(&md, &ml), p.local_addr(), applied.clone(), None).unwrap();
    wait_until("SYNCHRONIZED", Duration::from_secs(10), || {
        p.status().state == MirroringState::Synchronized
    });
    let stop = Arc::new(AtomicBool::new(false));
    let silent = flood(p.local_addr(), 2 * PER_SOURCE_MAX, b"", &stop);
    let stalled = flood(
        p.local_addr(),
        2 * PER_SOURCE_MAX,
        &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01],
        &stop,
    );
    std::thread::sleep(Duration::from_millis(500));
    drop(m);
    let restarted = Instant::now();
    let m = Mirror::start(with(&md, &ml), p.local_addr(), applied.clone(), None).unwrap();
    wait_until(
        "the restarted TLS mirror to synchronize during the flood",
        Duration::from_secs(8),
        || p.status().state == MirroringState::Synchronized,
    );
    let took = restarted.elapsed();
    for i in 0..20u32 {
        assert!(!p.commit_wait(&[&i.to_le_bytes()]).unwrap().exposed);
    }
    stop.store(true, Ordering::Relaxed);
    let s = p.status();
    eprintln!(
        "TLS mirror synchronized {took:?} after its restart; {} silent and {} stalled connections, {} refused before authentication",
        silent.load(Ordering::Relaxed),
        stalled.load(Ordering::Relaxed),
        s.preauth_rejected
    );
    assert!(silent.load(Ordering::Relaxed) >= 64 && stalled.load(Ordering::Relaxed) >= 64);
    assert!(s.preauth_rejected > 0);
    drop(m);
    p.shutdown();
}

/// The same flood against a TLS witness: a partner's TLS call still gets
/// its answer.
#[test]
fn silent_and_stalled_tls_peers_do_not_keep_a_partner_out_of_a_tls_witness() {
    use mirrorlog_engine::witness::client::WitnessClient;
    use mirrorlog_engine::witness::proto::{Reply, Request};
    let root = ca("witness CA");
    let lines: Lines = Arc::default();
    let w = witness(
        &tempdir("ptls", "wflood"),
        Some(&identity(&root, &root)),
        &lines,
    );
    let stop = Arc::new(AtomicBool::new(false));
    let silent = flood(w.local_addr(), 64, b"", &stop);
    let stalled = flood(
        w.local_addr(),
        64,
        &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01],
        &stop,
    );
    std::thread::sleep(Duration::from_millis(500));
    let id = identity(&root, &root);
    // As in the plaintext flood test: a partner retries (its lease keeper
    // and promoter do), and the flood may delay it but never keep it out.
    for _ in 0..3 {
        let asked = Instant::now();
        let mut fresh = WitnessClient::new(
            w.local_addr(),
            Secret::new(b"partner-tls-test-shared-secret".to_vec()).unwrap(),
        )
        .with_tls(Some(WitnessTls {
            client: id.client_config().unwrap(),
            server_name: rustls::pki_types::ServerName::IpAddress(w.local_addr().ip().into()),
        }));
        let answer = loop {
            match fresh.call(&Request::Query { database_id: DB }, Duration::from_secs(1)) {
                Ok(r) => break r,
                Err(e) => assert!(
                    asked.elapsed() < Duration::from_secs(3),
                    "no answer during the flood: {e}\nwitness:\n{}",
                    joined(&lines)
                ),
            }
        };
        assert!(matches!(answer, Reply::State { .. }), "{answer:?}");
        eprintln!("answered in {:?} during the flood", asked.elapsed());
        // Its authenticated connection is out of the gate: answered at once.
        let r = fresh.call(&Request::Query { database_id: DB }, Duration::from_secs(1));
        assert!(matches!(r, Ok(Reply::State { .. })), "{r:?}");
    }
    stop.store(true, Ordering::Relaxed);
    assert!(silent.load(Ordering::Relaxed) >= 64 && stalled.load(Ordering::Relaxed) >= 64);
    assert!(w.preauth_rejected() > 0);
    w.shutdown();
}
