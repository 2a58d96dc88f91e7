//! Failover with real processes on 127.0.0.1: a witness and two
//! `mirrorlog serve` partners. Clients write under load and record every
//! acknowledged write; the principal is SIGKILLed; the mirror takes over
//! on the witness's grant; the old principal restarts, rejoins as mirror
//! and converges; then a manual failover swaps the roles back. A history
//! check reads every acknowledged write back from the principal of the
//! moment: nothing is lost.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mirrorlog::client::Client;
use mirrorlog::resp::Reply;

use common::{free_port, secret, spawn_witness, tempdir, Served};

const TIMEOUT_MS: u64 = 500;

struct Partner {
    dir: std::path::PathBuf,
    client: u16,
    partner: u16,
}

fn spawn(me: &Partner, other: &Partner, role: &str, s: &Path, witness: u16) -> Served {
    let log = std::fs::File::create(me.dir.with_extension("log")).unwrap();
    Served(
        Command::new(env!("CARGO_BIN_EXE_mirrorlog"))
            .args(["serve", "--role", role, "--dir"])
            .arg(&me.dir)
            .arg("--secret-file")
            .arg(s)
            .args(["--port", &me.client.to_string()])
            .args(["--partner", &format!("127.0.0.1:{}", me.partner)])
            .args(["--peer", &format!("127.0.0.1:{}", other.partner)])
            .args(["--peer-clients", &format!("127.0.0.1:{}", other.client)])
            .args(["--witness", &format!("127.0.0.1:{witness}")])
            .args(["--partner-timeout-ms", &TIMEOUT_MS.to_string()])
            .args(["--checkpoint-secs", "1"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    )
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
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

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
    t0.elapsed()
}

/// Writers: each SETs its own keys on whichever partner is principal and
/// records every acknowledged write (key, value).
fn writers(
    ports: [u16; 2],
    stop: &Arc<AtomicBool>,
    acked: &Arc<Mutex<Vec<(String, String)>>>,
) -> Vec<std::thread::JoinHandle<()>> {
    (0..4)
        .map(|w| {
            let (stop, acked) = (stop.clone(), acked.clone());
            std::thread::spawn(move || {
                let mut i = 0u64;
                let mut target = 0;
                let mut conn: Option<Client> = None;
                while !stop.load(Ordering::Acquire) {
                    let c = match &mut conn {
                        Some(c) => c,
                        None => {
                            match Client::connect(addr(ports[target]), Duration::from_secs(2)) {
                                Ok(c) => conn.insert(c),
                                Err(_) => {
                                    target = 1 - target;
                                    std::thread::sleep(Duration::from_millis(20));
                                    continue;
                                }
                            }
                        }
                    };
                    let (k, v) = (format!("w{w}-k{i}"), format!("v{i}-{}", i * 7));
                    match c.call(&[b"SET", k.as_bytes(), v.as_bytes()]) {
                        Ok(Reply::Simple(s)) if s == "OK" => {
                            acked.lock().unwrap().push((k, v));
                            i += 1;
                        }
                        // READONLY, TRYAGAIN, no quorum: try the other one.
                        Ok(Reply::Error(_)) => {
                            conn = None;
                            target = 1 - target;
                            std::thread::sleep(Duration::from_millis(5));
                        }
                        Ok(other) => panic!("unexpected reply {other:?}"),
                        Err(_) => {
                            conn = None;
                            target = 1 - target;
                        }
                    }
                }
            })
        })
        .collect()
}

/// Every acknowledged write, read back from `port`: the latest value of
/// each key is there.
fn check_history(port: u16, acked: &[(String, String)]) {
    let mut latest = std::collections::HashMap::new();
    for (k, v) in acked {
        latest.insert(k.clone(), v.clone());
    }
    let mut c = Client::connect(addr(port), Duration::from_secs(5)).unwrap();
    let keys: Vec<&String> = latest.keys().collect();
    let mut missing = 0;
    for chunk in keys.chunks(500) {
        let cmds: Vec<Vec<&[u8]>> = chunk
            .iter()
            .map(|k| vec![&b"GET"[..], k.as_bytes()])
            .collect();
        for (k, r) in chunk.iter().zip(c.pipeline(&cmds).unwrap()) {
            if r != Reply::Bulk(latest[*k].clone().into_bytes()) {
                missing += 1;
            }
        }
    }
    assert_eq!(
        missing,
        0,
        "{missing} of {} acknowledged writes lost",
        latest.len()
    );
}

#[test]
fn sigkill_failover_rejoin_and_manual_failover_lose_no_acknowledged_write() {
    let d = tempdir("fo-proc", "main");
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
    let mut pa = spawn(&a, &b, "principal", &s, wport);
    let _pb = spawn(&b, &a, "mirror", &s, wport);
    wait_for(
        "A principal, B synchronized",
        Duration::from_secs(30),
        || {
            info(a.client).contains("mirroring_state:synchronized")
                && info(a.client).contains("role:master")
        },
    );
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let ws = writers([a.client, b.client], &stop, &acked);
    wait_for("writes", Duration::from_secs(10), || {
        acked.lock().unwrap().len() > 2000
    });
    // SIGKILL the principal under load.
    let before = acked.lock().unwrap().len();
    pa.0.kill().unwrap();
    pa.0.wait().unwrap();
    let took = wait_for("B to accept writes", Duration::from_secs(30), || {
        matches!(
            call(b.client, &[b"SET", b"probe", b"1"]),
            Some(Reply::Simple(_))
        )
    });
    eprintln!(
        "failover: B accepted a write {took:?} after A's death (partner timeout {TIMEOUT_MS} ms)"
    );
    wait_for("writes on B", Duration::from_secs(10), || {
        acked.lock().unwrap().len() > before + 2000
    });
    // A restarts with the same flags and rejoins as B's mirror.
    let pa2 = spawn(&a, &b, "principal", &s, wport);
    wait_for(
        "A to rejoin as mirror, synchronized",
        Duration::from_secs(30),
        || {
            let i = info(b.client);
            i.contains("role:master") && i.contains("mirroring_state:synchronized")
        },
    );
    assert!(info(a.client).contains("role:slave"));
    // Manual failover back to A, still under load.
    match call(b.client, &[b"MIRROR", b"FAILOVER"]) {
        Some(Reply::Bulk(_)) => {}
        other => panic!("MIRROR FAILOVER: {other:?}"),
    }
    wait_for("A to accept writes", Duration::from_secs(30), || {
        matches!(
            call(a.client, &[b"SET", b"probe2", b"1"]),
            Some(Reply::Simple(_))
        )
    });
    wait_for("B to rejoin as mirror", Duration::from_secs(30), || {
        info(a.client).contains("mirroring_state:synchronized")
    });
    let n = acked.lock().unwrap().len();
    wait_for("writes on A", Duration::from_secs(10), || {
        acked.lock().unwrap().len() > n + 1000
    });
    stop.store(true, Ordering::Release);
    for w in ws {
        w.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    check_history(a.client, &acked);
    // The mirror converges to the same data (reads there never pass the
    // commit LSN, so wait until it applied everything).
    wait_for("B to apply everything", Duration::from_secs(30), || {
        let i = info(a.client);
        let lsn = |key: &str, text: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        let written = lsn("master_repl_offset:", &i);
        written.is_some() && written == lsn("mirror_applied_lsn:", &i)
    });
    check_history(b.client, &acked);
    drop(pa2);
}
