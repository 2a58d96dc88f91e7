//! Linearizability of real-process histories: a witness and two
//! `mirrorlog serve` partners (safety full, automatic failover), 8 clients
//! doing a random SET/GET/INCR/DEL mix on 5 keys (unique SET values; two
//! of the clients only read), following the principal. Faults during the run: SIGSTOP/SIGCONT of
//! either node, partitions of both witness links and of the partner link
//! (through stalling proxies), and a SIGKILL of the principal while the
//! partner link is stalled, so writes are in flight (visible on the
//! principal unless the read barrier holds them) when it dies; the mirror
//! takes over, the old principal restarts and rejoins. The history is
//! then checked with `common/linearizability.rs`. A client's read counts
//! only if `ROLE` said master just before and just after it (pipelined
//! with it): a mirror's reads are stale by design, as a Redis replica's.
//!
//! With `--read-barrier on` the checker must find nothing; with `off` it
//! must find the read of a write the failover lost (proving that the
//! scenario and the checker can fail).

mod common;
#[path = "common/linearizability.rs"]
mod linearizability;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mirrorlog::client::Client;
use mirrorlog::resp::Reply;

use common::{addr, free_port, secret, spawn_witness, tempdir, wait_for, Served};
use linearizability::{Call, Op, Outcome, Ret};

const TIMEOUT_MS: u64 = 1000;
const CLIENTS: usize = 8;
const KEYS: usize = 5;

/// A TCP proxy that can be partitioned: while blocked it forwards
/// nothing (bytes are held, as by a dead link) and refuses new
/// connections; healing cuts every connection it carried.
struct Proxy {
    addr: SocketAddr,
    blocked: Arc<AtomicBool>,
    generation: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    fn start(upstream: SocketAddr) -> Proxy {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let p = Proxy {
            addr: l.local_addr().unwrap(),
            blocked: Arc::new(AtomicBool::new(false)),
            generation: Arc::new(AtomicU64::new(0)),
            stop: Arc::new(AtomicBool::new(false)),
        };
        let (blocked, generation, stop) = (p.blocked.clone(), p.generation.clone(), p.stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Acquire) {
                let Ok((down, _)) = l.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                if blocked.load(Ordering::Acquire) {
                    continue; // dropped: refused
                }
                let Ok(up) = TcpStream::connect_timeout(&upstream, Duration::from_secs(1)) else {
                    continue;
                };
                let _ = down.set_nonblocking(false);
                let g = generation.load(Ordering::Acquire);
                for (from, to) in [
                    (down.try_clone().unwrap(), up.try_clone().unwrap()),
                    (up, down),
                ] {
                    let (blocked, generation, stop) =
                        (blocked.clone(), generation.clone(), stop.clone());
                    std::thread::spawn(move || pump(from, to, g, &blocked, &generation, &stop));
                }
            }
        });
        p
    }

    fn block(&self) {
        self.blocked.store(true, Ordering::Release);
    }

    /// Ends a partition: the connections it held are cut (their held
    /// bytes lost, as a reset), new ones pass.
    fn heal(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.blocked.store(false, Ordering::Release);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }
}

fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    g: u64,
    blocked: &AtomicBool,
    generation: &AtomicU64,
    stop: &AtomicBool,
) {
    let _ = from.set_read_timeout(Some(Duration::from_millis(20)));
    let mut buf = vec![0u8; 64 << 10];
    let live = || generation.load(Ordering::Acquire) == g && !stop.load(Ordering::Acquire);
    'outer: while live() {
        if blocked.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(_) => break,
        };
        // Bytes read while a partition began are held until it ends.
        while blocked.load(Ordering::Acquire) {
            if !live() {
                break 'outer;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        if !live() || to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

struct Partner {
    dir: std::path::PathBuf,
    client: u16,
    partner: u16,
}

/// A partner whose --peer and --witness go through the given proxies.
fn spawn(
    me: &Partner,
    other: &Partner,
    role: &str,
    s: &Path,
    peer: SocketAddr,
    witness: SocketAddr,
    barrier: &str,
) -> Served {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(me.dir.with_extension("log"))
        .unwrap();
    Served(
        Command::new(env!("CARGO_BIN_EXE_mirrorlog"))
            .args(["serve", "--role", role, "--dir"])
            .arg(&me.dir)
            .arg("--secret-file")
            .arg(s)
            .args(["--port", &me.client.to_string()])
            .args(["--partner", &format!("127.0.0.1:{}", me.partner)])
            .args(["--peer", &peer.to_string()])
            .args(["--peer-clients", &format!("127.0.0.1:{}", other.client)])
            .args(["--witness", &witness.to_string()])
            .args(["--partner-timeout-ms", &TIMEOUT_MS.to_string()])
            .args(["--read-barrier", barrier])
            .args(["--checkpoint-secs", "2"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    )
}

fn call(port: u16, args: &[&[u8]]) -> Option<Reply> {
    let mut c = Client::connect(addr(port), Duration::from_secs(2)).ok()?;
    c.call(args).ok()
}

fn info(port: u16) -> String {
    match call(port, &[b"INFO", b"replication"]) {
        Some(Reply::Bulk(b)) => String::from_utf8_lossy(&b).into_owned(),
        _ => String::new(),
    }
}

/// Principal, mirror SYNCHRONIZED, and the witness not told it runs
/// exposed (after a partition of the partner link the principal tells the
/// witness it is covered again only a second later; until then the
/// witness rightly refuses an automatic failover).
fn synchronized_principal(port: u16) -> bool {
    let i = info(port);
    i.contains("role:master")
        && i.contains("mirroring_state:synchronized")
        && i.contains("mirroring_witness_exposed:0")
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {pid}");
}

fn pause(pid: u32, d: Duration) {
    signal(pid, "-STOP");
    std::thread::sleep(d);
    signal(pid, "-CONT");
}

/// One client: a random mix on the shared keys, following the principal,
/// recording every operation.
fn client(
    id: usize,
    ports: [u16; 2],
    t0: Instant,
    stop: Arc<AtomicBool>,
    held: Arc<AtomicBool>,
    out: Arc<Mutex<Vec<Op>>>,
) {
    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ (id as u64 + 1).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut target = 0;
    let mut conn: Option<Client> = None;
    let mut seq = 0u64;
    let now = || t0.elapsed().as_micros() as u64;
    while !stop.load(Ordering::Acquire) {
        if held.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        let c = match &mut conn {
            Some(c) => c,
            None => match Client::connect(addr(ports[target]), Duration::from_secs(3)) {
                Ok(c) => conn.insert(c),
                Err(_) => {
                    target = 1 - target;
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
            },
        };
        let key = format!("k{}", rnd() as usize % KEYS);
        // Two clients only read: when the partner link stalls, every
        // writer soon waits on a write, and the readers go on reading the
        // keys those writes are pending on.
        let mix = if id % 4 == 3 {
            3 + rnd() % 3
        } else {
            rnd() % 8
        };
        let (call, args): (Call, Vec<Vec<u8>>) = match mix {
            0..=2 => {
                seq += 1;
                // Unique values: the client in the high digits.
                let v = format!("{}{:07}", id + 1, seq).into_bytes();
                (
                    Call::Set(v.clone()),
                    vec![b"SET".to_vec(), key.clone().into(), v],
                )
            }
            3..=5 => (Call::Get, vec![b"GET".to_vec(), key.clone().into()]),
            6 => (Call::Incr, vec![b"INCR".to_vec(), key.clone().into()]),
            _ => (Call::Del, vec![b"DEL".to_vec(), key.clone().into()]),
        };
        let refs: Vec<&[u8]> = args.iter().map(|a| a.as_slice()).collect();
        let invoke = now();
        // A read is sandwiched between two ROLEs: a mirror's reads are
        // stale by design (as a Redis replica's), so a read counts only
        // if the node was principal before and after it. Reads have no
        // effects, so leaving one out of the history is sound.
        let r = if matches!(call, Call::Get) {
            let role: Vec<&[u8]> = vec![b"ROLE"];
            match c.pipeline(&[role.clone(), refs.clone(), role]) {
                Ok(mut replies) if replies.len() == 3 => {
                    let master = |r: &Reply| {
                        matches!(r, Reply::Array(a)
                            if matches!(a.first(), Some(Reply::Bulk(b)) if b == b"master"))
                    };
                    if !(master(&replies[0]) && master(&replies[2])) {
                        conn = None;
                        target = 1 - target;
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                    Ok(replies.swap_remove(1))
                }
                Ok(_) => Err(std::io::Error::other("short pipeline reply")),
                Err(e) => Err(e),
            }
        } else {
            c.call(&refs)
        };
        let ret = now();
        let outcome = match (&call, r) {
            (_, Err(_)) => {
                conn = None;
                target = 1 - target;
                Outcome::Unknown
            }
            (_, Ok(Reply::Error(e))) if e.starts_with("READONLY") || e.starts_with("TRYAGAIN") => {
                conn = None;
                target = 1 - target;
                std::thread::sleep(Duration::from_millis(5));
                Outcome::Fail
            }
            (Call::Incr, Ok(Reply::Error(e))) if e.contains("not an integer") => {
                Outcome::Ok(Ret::NotInteger)
            }
            // "the write was not committed", no quorum: may have happened.
            (_, Ok(Reply::Error(_))) => {
                std::thread::sleep(Duration::from_millis(5));
                Outcome::Unknown
            }
            (Call::Set(_), Ok(Reply::Simple(s))) if s == "OK" => Outcome::Ok(Ret::Ok),
            (Call::Get, Ok(Reply::Bulk(b))) => Outcome::Ok(Ret::Value(Some(b))),
            (Call::Get, Ok(Reply::Nil)) => Outcome::Ok(Ret::Value(None)),
            (Call::Incr, Ok(Reply::Int(n))) => Outcome::Ok(Ret::Int(n)),
            (Call::Del, Ok(Reply::Int(n))) => Outcome::Ok(Ret::Deleted(n)),
            (call, Ok(other)) => panic!("{call:?}: unexpected reply {other:?}"),
        };
        if id % 4 == 3 {
            // Unthrottled, the readers' history alone takes the checker
            // minutes; a read every 2 ms still covers every stall.
            std::thread::sleep(Duration::from_millis(2));
        }
        out.lock().unwrap().push(Op {
            client: id,
            key: key.into_bytes(),
            call,
            invoke,
            ret,
            outcome,
        });
    }
}

/// The run; returns the checker's report.
fn history_under_faults(tag: &str, barrier: &str) -> linearizability::Report {
    let d = tempdir("linearizable", tag);
    let s = secret(&d);
    let wport = free_port();
    let a = Partner {
        dir: d.join("a"),
        client: free_port(),
        partner: free_port(),
    };
    let b = Partner {
        dir: d.join("b"),
        client: free_port(),
        partner: free_port(),
    };
    let _w = spawn_witness(&d.join("w"), &s, wport, TIMEOUT_MS);
    let wa = Proxy::start(addr(wport));
    let wb = Proxy::start(addr(wport));
    // B follows its --peer (this proxy) because it starts first, before
    // the witness names anyone; A's --peer is used only if deposed.
    let link = Proxy::start(addr(a.partner));
    let pb = spawn(&b, &a, "mirror", &s, link.addr, wb.addr, barrier);
    std::thread::sleep(Duration::from_millis(300));
    let mut pa = spawn(&a, &b, "principal", &s, addr(b.partner), wa.addr, barrier);
    wait_for(
        "A principal, B synchronized",
        Duration::from_secs(30),
        || synchronized_principal(a.client),
    );

    let t0 = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let held = Arc::new(AtomicBool::new(false));
    let hist = Arc::new(Mutex::new(Vec::new()));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let (stop, held, hist) = (stop.clone(), held.clone(), hist.clone());
            let ports = [a.client, b.client];
            std::thread::spawn(move || client(i, ports, t0, stop, held, hist))
        })
        .collect();
    let settle = |port: u16, what: &str| {
        wait_for(what, Duration::from_secs(30), || {
            synchronized_principal(port)
        });
        std::thread::sleep(Duration::from_millis(300));
    };
    std::thread::sleep(Duration::from_millis(500));
    // Pauses of either node, shorter than the partner timeout.
    pause(pa.0.id(), Duration::from_millis(300));
    pause(pb.0.id(), Duration::from_millis(300));
    settle(a.client, "A synchronized after the pauses");
    // Each witness link, then the partner link, partitioned for longer
    // than the timeout (A runs exposed during the last one).
    for (p, what) in [(&wa, "A-witness"), (&wb, "B-witness"), (&link, "partner")] {
        p.block();
        std::thread::sleep(Duration::from_millis(1500));
        p.heal();
        settle(
            a.client,
            &format!("A synchronized after the {what} partition"),
        );
    }
    // The partner link stalls: writes wait for B's ack, visible on A
    // unless the barrier holds reads; then A dies before it could tell
    // the witness, and B takes over without them.
    link.block();
    std::thread::sleep(Duration::from_millis(400));
    // The clients pause (those waiting on A stay waiting until it dies),
    // so that after the failover the first operation on every key is the
    // harness's read of it on B: a lost write that a reader saw on A is
    // then always caught, not only when a reader reaches the key on B
    // before a writer overwrites it.
    held.store(true, Ordering::Release);
    pa.0.kill().unwrap();
    pa.0.wait().unwrap();
    link.heal();
    wait_for("B to take over", Duration::from_secs(30), || {
        info(b.client).contains("role:master")
    });
    for k in 0..KEYS {
        let key = format!("k{k}");
        let invoke = t0.elapsed().as_micros() as u64;
        let got = call(b.client, &[b"GET", key.as_bytes()]);
        let ret = t0.elapsed().as_micros() as u64;
        let value = match got {
            Some(Reply::Bulk(v)) => Some(v),
            Some(Reply::Nil) => None,
            other => panic!("the harness's read of {key} on B: {other:?}"),
        };
        hist.lock().unwrap().push(Op {
            client: CLIENTS,
            key: key.into_bytes(),
            call: Call::Get,
            invoke,
            ret,
            outcome: Outcome::Ok(Ret::Value(value)),
        });
    }
    held.store(false, Ordering::Release);
    std::thread::sleep(Duration::from_millis(500));
    // A restarts and rejoins (following the witness's name for B, direct).
    pa = spawn(&a, &b, "principal", &s, addr(b.partner), wa.addr, barrier);
    settle(b.client, "A to rejoin B, synchronized");
    pause(pb.0.id(), Duration::from_millis(300));
    pause(pa.0.id(), Duration::from_millis(300));
    std::thread::sleep(Duration::from_millis(700));
    stop.store(true, Ordering::Release);
    for c in clients {
        c.join().unwrap();
    }
    let h = hist.lock().unwrap().clone();
    let oks = h
        .iter()
        .filter(|o| matches!(o.outcome, Outcome::Ok(_)))
        .count();
    let unknown = h.iter().filter(|o| o.outcome == Outcome::Unknown).count();
    eprintln!(
        "barrier {barrier}: {} operations ({oks} ok, {unknown} unknown) in {:?}",
        h.len(),
        t0.elapsed()
    );
    assert!(
        oks > 500,
        "too few operations completed ({oks}) for the history to say anything"
    );
    drop(pa);
    drop(pb);
    let t = Instant::now();
    let r = linearizability::check(&h);
    eprintln!(
        "checked {} keys, {} states in {:?}",
        r.keys,
        r.states,
        t.elapsed()
    );
    r
}

/// The two tests share the machine's 2 cores: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

#[test]
fn with_the_read_barrier_no_client_sees_a_write_the_failover_loses() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let r = history_under_faults("on", "on");
    for v in &r.violations {
        eprintln!("{v}");
    }
    assert!(
        r.violations.is_empty(),
        "{} keys not linearizable; first:\n{}",
        r.violations.len(),
        r.violations[0]
    );
}

#[test]
fn without_the_read_barrier_the_checker_finds_the_read_of_a_lost_write() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let r = history_under_faults("off", "off");
    for v in r.violations.iter().take(1) {
        eprintln!("the violation found, as expected:\n{v}");
    }
    assert!(
        !r.violations.is_empty(),
        "barrier off: no violation found; the scenario or the checker cannot fail"
    );
}
