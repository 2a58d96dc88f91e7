//! The read barrier against real processes: with the mirror paused (SIGSTOP)
//! in safety full, a write cannot be committed; a reader of its key must
//! not see it (its reply is held) until the mirror hardened it, while a
//! reader of another key is answered at once. With `--read-barrier off` the
//! reader sees the uncommitted write: the case the barrier exists for.

mod common;

use std::time::{Duration, Instant};

use mirrorlog::client::Client;
use mirrorlog::resp::Reply;

use common::{addr, free_port, info, node_args, secret, serve, tempdir, wait_for, Served};

struct Pair {
    principal: u16,
    mirror: Served,
    _principal: Served,
}

fn pair(tag: &str, barrier: &str) -> Pair {
    let d = tempdir("read-barrier", tag);
    let s = secret(&d);
    let (pc, mc, partner) = (free_port(), free_port(), free_port());
    let extra = |mut a: Vec<String>| {
        a.extend(
            [
                "--safety",
                "full",
                "--partner-timeout-ms",
                "60000",
                "--read-barrier",
                barrier,
            ]
            .map(String::from),
        );
        a
    };
    let p = serve(
        &extra(node_args(&d.join("p"), &s, "principal", pc, partner)),
        &d.join("p.log"),
    );
    let m = serve(
        &extra(node_args(&d.join("m"), &s, "mirror", mc, partner)),
        &d.join("m.log"),
    );
    wait_for("a synchronized pair", Duration::from_secs(30), || {
        info(pc).contains("mirroring_state:synchronized")
    });
    Pair {
        principal: pc,
        mirror: m,
        _principal: p,
    }
}

fn signal(child: &Served, sig: i32) {
    // SAFETY: a signal to our own child, by PID.
    assert_eq!(unsafe { libc::kill(child.0.id() as i32, sig) }, 0);
}

fn call(c: &mut Client, args: &[&[u8]]) -> std::io::Result<Reply> {
    c.call(args)
}

/// A client whose replies may take at most `read_timeout`.
fn connect(port: u16, read_timeout: Duration) -> Client {
    Client::connect(addr(port), read_timeout).unwrap()
}

/// Writes "old" to x and y while the pair is healthy, pauses the mirror,
/// starts SET x new on a writer thread (it cannot commit), and returns what
/// a reader of x got within `patience` and how long a read of y took.
/// Also says whether the write had been acknowledged before the read of x
/// was answered (the principal may acknowledge it exposed, hardened here
/// only, if it counts the paused mirror as detached: then seeing it is
/// allowed).
fn read_during_a_pending_write(tag: &str, barrier: &str) -> (Option<Reply>, Duration, bool, Pair) {
    let p = pair(tag, barrier);
    let mut w = connect(p.principal, Duration::from_secs(30));
    for k in [b"x".as_slice(), b"y"] {
        assert_eq!(
            call(&mut w, &[b"SET", k, b"old"]).unwrap(),
            Reply::Simple("OK".into())
        );
    }
    signal(&p.mirror, libc::SIGSTOP);
    let acked = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let acked = acked.clone();
        std::thread::spawn(move || {
            let r = call(&mut w, &[b"SET", b"x", b"new"]);
            acked.store(true, std::sync::atomic::Ordering::SeqCst);
            r
        })
    };
    // The write reached the store (it is handed to group commit under the
    // store lock before its commit can complete).
    std::thread::sleep(Duration::from_millis(300));
    let mut r = connect(p.principal, Duration::from_secs(2));
    let t0 = Instant::now();
    let y = call(&mut r, &[b"GET", b"y"]).unwrap();
    let y_took = t0.elapsed();
    assert_eq!(y, Reply::Bulk(b"old".to_vec()), "a read of another key");
    let x = call(&mut r, &[b"GET", b"x"]).ok();
    let acked_before = acked.load(std::sync::atomic::Ordering::SeqCst);
    signal(&p.mirror, libc::SIGCONT);
    let committed = writer.join().unwrap().unwrap();
    assert_eq!(committed, Reply::Simple("OK".into()));
    (x, y_took, acked_before, p)
}

#[test]
fn a_read_does_not_see_a_write_before_the_mirror_hardened_it() {
    let (x, y_took, acked_before, p) = read_during_a_pending_write("on", "on");
    assert!(
        x.is_none() || acked_before,
        "the reader saw {x:?} before the write was acknowledged"
    );
    assert!(
        y_took < Duration::from_secs(1),
        "a read of another key waited {y_took:?}"
    );
    // Once committed, every reader sees it.
    let mut r = connect(p.principal, Duration::from_secs(10));
    assert_eq!(
        call(&mut r, &[b"GET", b"x"]).unwrap(),
        Reply::Bulk(b"new".to_vec())
    );
    let i = info(p.principal);
    assert!(i.contains("mirrorlog_read_barrier_keys:"), "{i}");
}

#[test]
fn without_the_barrier_a_read_sees_the_uncommitted_write() {
    let (x, _, _, _p) = read_during_a_pending_write("off", "off");
    assert_eq!(x, Some(Reply::Bulk(b"new".to_vec())));
}
