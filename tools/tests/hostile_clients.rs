//! Hostile clients against `mirrorlog serve` (issue 13): a principal and a
//! mirror (safety full) as real processes on 127.0.0.1, a canary PINGing
//! each node, a writer whose acknowledged SETs are read back from both, and
//! the nodes' RSS and CPU sampled (tests/common/hostile.rs) while one attack
//! at a time runs. Each attack asserts the behaviour of the fixed server:
//! alive, canary p99 and max under their bounds, RSS under its bound, a
//! fresh client served, no acknowledged write lost, plus what is particular
//! to the attack.
//!
//! Against the binary of commit 675b649 (before the fixes; debug build,
//! `cargo test -p mirrorlog --test hostile_clients`):
//!
//! * `attack_fd_exhaustion_epoll`: FAILS. The principal (RLIMIT_NOFILE 256,
//!   17 fds at start) exits with status 1 after ~245 idle connections: its
//!   log ends "ERROR serving clients failed: Too many open files (os error
//!   24)"; canary and writer connections closed; no fresh client (connection
//!   refused).
//! * `attack_fd_exhaustion_threads`: FAILS the same way (~284 connections,
//!   exit status 1, "Too many open files").
//! * `attack_keys_exponential_glob`: FAILS. `KEYS a*a*...a*b` (15 `a*`)
//!   against a 30-byte key of 'a's gets no reply within 2 s; the event loop
//!   is held: the principal canary's PING times out (5 s), the writer's SET
//!   too, no fresh client served. The other patterns are not tried.
//! * `attack_scan_large_keyspace`: FAILS. 239 ms of server CPU per
//!   SCAN COUNT 10 over 200,000 keys (stopped after 10 calls at 2.4 s; bound
//!   1 s for 500); the full iteration (COUNT 10000, 22 calls) missed 18,961
//!   of the 200,000 keys present throughout while 20,000 other keys were
//!   deleted; principal canary p99 459 ms.
//! * `attack_trickled_huge_command`: FAILS. 7.5 s of server CPU (bound 3 s)
//!   for the 7 MB command in 100-byte writes, answered (`-ERR unknown
//!   command 'a'`) after 7.9 s; principal canary p99 ~254 ms (bound 250),
//!   RSS 69 MiB.
//! * `attack_trickled_slow_command`: PASSES (canary p99 0.7 ms).
//! * `attack_pipelined_big_gets`, `attack_big_mget_reply`: FAIL at start:
//!   `mirrorlog serve: unknown option "--output-limit-hard-bytes"`. (Run
//!   without the flag: 3,000 pipelined GETs of 1 MiB drive the principal to
//!   2,059 MiB RSS and a 2.2 s canary stall, the client is never
//!   disconnected; an MGET of 300 x 1 MiB to 589 MiB.)
//! * `attack_unauthenticated_big_requests`: FAILS. No reply within 2 s to an
//!   unauthenticated `*11`, `*1 $16385` or a SET declaring 500 MiB, and the
//!   connections stay open; the 500 MiB pushed after the header is buffered
//!   (principal RSS 509 MiB, bound 100 MB).
//! * `attack_auth_bruteforce`: FAILS. All 200,000 wrong AUTHs answered
//!   (WRONGPASS), the last 0.55 s after the first write (bound: fewer than
//!   1,000 in 2 s); a correct AUTH afterwards succeeds at once.
//! * `attack_oversized_write_header`: FAILS. No reply within 2 s to the
//!   512 MiB bulk header, connection left open; the 512 MiB pushed after it
//!   is buffered (principal RSS 521 MiB, bound 100 MB).
//! * `attack_slowloris`: FAILS at start: `mirrorlog serve: unknown option
//!   "--command-timeout-secs"`. (Run without the flag: the 1 byte/s client
//!   is still connected after 5 s.)
//!
//! The whole file took 73 s on this 2-core box (attacks run one at a time:
//! see `common::hostile::serial`). Run with `--nocapture` to see every
//! measurement of a passing attack too.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::hostile::{
    cpu_seconds, fd_count, mib, scan_all, show_result, timed_reply, Bounds, End, Harness,
    PairOptions, Raw, Resp,
};

fn opts(extra: &[&str]) -> PairOptions {
    PairOptions {
        extra: extra.iter().map(|s| s.to_string()).collect(),
        ..PairOptions::default()
    }
}

fn cpu(h: &Harness) -> f64 {
    cpu_seconds(h.p_pid()).unwrap_or(f64::NAN)
}

// ---------------------------------------------------------------------
// 1. File descriptors.

/// RLIMIT_NOFILE of the attacked principal: a few tens of descriptors go
/// to the log, the partner socket, epoll and eventfds; the rest to clients.
const FD_LIMIT: u64 = 256;
/// Idle connections opened against it: well beyond the limit.
const IDLE_CONNECTIONS: usize = 400;
/// How long the idle connections are held while the canary runs.
const FD_HOLD: Duration = Duration::from_secs(2);

fn fd_exhaustion(io: &str) {
    let mut h = Harness::start(
        &format!("attack_fd_exhaustion_{io}"),
        PairOptions {
            io: Some(io.to_string()),
            principal_nofile: Some(FD_LIMIT),
            ..PairOptions::default()
        },
    );
    let pid = h.p_pid();
    let fds_before = fd_count(pid).unwrap_or(0);
    h.begin_attack();
    let addr = common::addr(h.p_port());
    let mut idle: Vec<TcpStream> = Vec::new();
    let mut refused = 0usize;
    let mut last_err = String::new();
    for _ in 0..IDLE_CONNECTIONS {
        // Once the server stops accepting, the backlog fills and SYNs are
        // dropped: a short timeout, and a few misses end the opening.
        match TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
            Ok(s) => idle.push(s),
            Err(e) => {
                refused += 1;
                last_err = e.to_string();
                if refused >= 5 {
                    break;
                }
            }
        }
    }
    let fds_open = match h.pair.principal.alive() {
        Ok(()) => fd_count(pid).map_or("?".into(), |n| n.to_string()),
        Err(_) => "none (it had exited)".into(),
    };
    h.note(format!(
        "opened {} idle connections ({refused} failed{}); principal fds {fds_before} before, {} with them open (limit {FD_LIMIT})",
        idle.len(),
        if refused > 0 { format!(", last: {last_err}") } else { String::new() },
        fds_open
    ));
    std::thread::sleep(FD_HOLD);
    h.check_alive("with the idle connections open");
    drop(idle);
    // The fresh client of `finish` must be served once they are closed.
    h.finish();
}

#[test]
fn attack_fd_exhaustion_epoll() {
    fd_exhaustion("epoll");
}

#[test]
fn attack_fd_exhaustion_threads() {
    fd_exhaustion("threads");
}

// ---------------------------------------------------------------------
// 2. Glob patterns.

/// How long KEYS or a SCAN iteration with a pathological pattern over one
/// or two keys may take: a matcher without backtracking blow-up answers in
/// microseconds; 500 ms allows for a loaded box.
const GLOB_REPLY_MAX: Duration = Duration::from_millis(500);
/// How long we wait for such an answer at all before calling it stuck.
const GLOB_WAIT: Duration = Duration::from_secs(2);

#[test]
fn attack_keys_exponential_glob() {
    let mut h = Harness::start("attack_keys_exponential_glob", PairOptions::default());
    let mut c = h.client();
    let short_key = "a".repeat(30);
    let long_key = "a".repeat(100);
    for k in [&short_key, &long_key] {
        assert_eq!(c.cmd(&["SET", k, "1"]).unwrap(), Resp::Simple("OK".into()));
    }
    // Each `*` may match any run of the key's 'a's and the final 'b' never
    // matches: a backtracking matcher tries C(n, k) splits.
    let patterns = [
        format!("{}b", "a*".repeat(15)),
        // Redis's "long nested loops" regression (keyspace.tcl).
        format!("{}b", "a*".repeat(20)),
        format!("*{}b", "a*".repeat(20)),
    ];
    h.begin_attack();
    let mut stuck = 0;
    for p in &patterns {
        for how in ["KEYS", "SCAN"] {
            if stuck >= 2 {
                h.fail(format!(
                    "{how} {p}: not tried, the server was stuck twice already"
                ));
                continue;
            }
            let mut c = match h.try_client(GLOB_WAIT) {
                Ok(c) => c,
                Err(e) => {
                    stuck += 1;
                    h.fail(format!(
                        "{how} {p}: no connection served within {} s: {e}",
                        GLOB_WAIT.as_secs()
                    ));
                    continue;
                }
            };
            c.set_read_timeout(GLOB_WAIT);
            let t0 = Instant::now();
            let r: Result<usize, String> = if how == "KEYS" {
                match c.cmd(&["KEYS", p]) {
                    Ok(Resp::Array(v)) => Ok(v.len()),
                    r => Err(show_result(&r)),
                }
            } else {
                scan_all(
                    &mut c,
                    100,
                    Some(p.as_bytes()),
                    Instant::now() + GLOB_WAIT,
                    || {},
                )
                .map(|(seen, _)| seen.len())
            };
            let took = t0.elapsed();
            h.note(format!(
                "{how} {p}: {:?} after {:.1} ms",
                r,
                took.as_secs_f64() * 1e3
            ));
            match r {
                Ok(0) => h.check(
                    took < GLOB_REPLY_MAX,
                    format!(
                        "{how} {p}: answered after {:.0} ms (bound {} ms)",
                        took.as_secs_f64() * 1e3,
                        GLOB_REPLY_MAX.as_millis()
                    ),
                ),
                Ok(n) => h.fail(format!("{how} {p}: {n} keys matched, expected none")),
                Err(e) => {
                    stuck += 1;
                    h.fail(format!(
                        "{how} {p}: no answer within {} s ({e})",
                        GLOB_WAIT.as_secs()
                    ))
                }
            }
        }
    }
    h.finish();
}

// ---------------------------------------------------------------------
// 3. SCAN over a large keyspace.

const SCAN_KEYS: usize = 200_000;
/// SCAN COUNT 10 calls measured.
const SCAN_CALLS: usize = 500;
/// Server CPU for those 500 calls. A call that walks ten entries of the
/// table costs microseconds; one that sorts 200,000 keys costs tens of ms
/// (500 of them: tens of seconds). 1 s covers the writer, the canaries and
/// the mirror shipping meanwhile.
const SCAN_CPU_MAX_S: f64 = 1.0;
/// Keys of the churner (other keys, inserted and deleted meanwhile).
const CHURN_KEYS: usize = 20_000;
/// The full iteration runs COUNT 10000 (22 round trips) rather than
/// COUNT 10 (22,000 round trips, tens of seconds of a debug build even
/// when each is cheap) to keep the file under two minutes; the guarantee
/// does not depend on COUNT, and with 22 calls today's sort-per-call SCAN
/// finishes too, so the test shows its misses rather than only its cost.
const SCAN_FULL_COUNT: usize = 10_000;
/// Churn keys deleted between two calls of the full iteration (the scanner
/// waits for the churner, so the interleaving does not depend on speed):
/// all of them are gone by the end.
const CHURN_PER_CALL: u64 = 1000;
/// How long the full iteration may take at all.
const SCAN_FULL_DEADLINE: Duration = Duration::from_secs(30);

/// MSETs of `keys` in pipelined batches of 1000 keys, 20 commands a write.
fn load(c: &mut Raw, keys: impl Iterator<Item = String>) {
    let keys: Vec<String> = keys.collect();
    for group in keys.chunks(20_000) {
        let mut out = Vec::new();
        let mut n = 0;
        for batch in group.chunks(1000) {
            let mut args: Vec<&[u8]> = vec![b"MSET"];
            for k in batch {
                args.push(k.as_bytes());
                args.push(b"x");
            }
            common::hostile::encode_into(&args, &mut out);
            n += 1;
        }
        c.send_raw(&out).unwrap();
        for _ in 0..n {
            let r = c.reply();
            assert!(
                matches!(&r, Ok(Resp::Simple(s)) if s == "OK"),
                "MSET: {}",
                show_result(&r)
            );
        }
    }
}

fn stable_key(i: usize) -> String {
    format!("k:{i:06}")
}

#[test]
fn attack_scan_large_keyspace() {
    let mut h = Harness::start("attack_scan_large_keyspace", PairOptions::default());
    let mut c = h.client();
    c.set_read_timeout(Duration::from_secs(30));
    let t = Instant::now();
    load(&mut c, (0..SCAN_KEYS).map(stable_key));
    // Churn keys sort before the stable ones: deleting them moves every
    // stable key of a sorted order, which a cursor must not depend on.
    load(&mut c, (0..CHURN_KEYS).map(|i| format!("c:{i:06}")));
    h.note(format!(
        "loaded {} keys in {:.1} s",
        SCAN_KEYS + CHURN_KEYS,
        t.elapsed().as_secs_f64()
    ));
    h.begin_attack();

    // (a) Each SCAN COUNT 10 is cheap.
    c.set_read_timeout(Duration::from_secs(10));
    let cpu0 = cpu(&h);
    let t0 = Instant::now();
    let mut cursor = b"0".to_vec();
    let mut calls = 0;
    let mut over = false;
    while calls < SCAN_CALLS {
        match c.call(&[b"SCAN", &cursor, b"COUNT", b"10"]) {
            Ok(Resp::Array(v)) if v.len() == 2 => match &v[0] {
                Resp::Bulk(next) => cursor = next.clone(),
                other => panic!("SCAN cursor {}", other.show()),
            },
            r => {
                h.fail(format!("SCAN call {calls}: {}", show_result(&r)));
                break;
            }
        }
        calls += 1;
        // Stop early once the bound is already exceeded (today each call
        // sorts every key: 500 of them would take minutes).
        if calls % 10 == 0 && cpu(&h) - cpu0 > SCAN_CPU_MAX_S {
            over = true;
            break;
        }
    }
    let used = cpu(&h) - cpu0;
    h.note(format!(
        "{calls} SCAN COUNT 10 calls: server CPU {used:.3} s, wall {:.2} s",
        t0.elapsed().as_secs_f64()
    ));
    h.check(
        !over && used < SCAN_CPU_MAX_S,
        format!(
            "SCAN COUNT 10 over {SCAN_KEYS} keys: {used:.3} s of server CPU for {calls} calls \
             ({:.2} ms a call; bound {SCAN_CPU_MAX_S} s for {SCAN_CALLS}){}",
            used * 1e3 / calls.max(1) as f64,
            if over { ", stopped early" } else { "" }
        ),
    );

    // (b) A full iteration while another client deletes the churn keys and
    // inserts others: every key present throughout is returned.
    let stop = Arc::new(AtomicBool::new(false));
    let churned = Arc::new(AtomicU64::new(0));
    // How far the churner may go: the scanner raises it between calls.
    let allowed = Arc::new(AtomicU64::new(0));
    let mut churner = h.client();
    let (st, ch, al) = (stop.clone(), churned.clone(), allowed.clone());
    let churn = std::thread::spawn(move || {
        churner.set_read_timeout(Duration::from_secs(30));
        let mut i = 0;
        while !st.load(Ordering::Acquire) && i < CHURN_KEYS {
            if i as u64 >= al.load(Ordering::Acquire) {
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            let dels: Vec<String> = (i..(i + 100).min(CHURN_KEYS))
                .map(|j| format!("c:{j:06}"))
                .collect();
            let adds: Vec<String> = (i..i + 50).map(|j| format!("n:{j:06}")).collect();
            let mut del: Vec<&[u8]> = vec![b"DEL"];
            del.extend(dels.iter().map(|k| k.as_bytes()));
            let mut mset: Vec<&[u8]> = vec![b"MSET"];
            for k in &adds {
                mset.extend([k.as_bytes(), b"y".as_slice()]);
            }
            if churner.call(&del).is_err() || churner.call(&mset).is_err() {
                return;
            }
            i += 100;
            ch.store(i as u64, Ordering::Release);
        }
    });
    let mut c = h.client();
    c.set_read_timeout(Duration::from_secs(30));
    let t0 = Instant::now();
    let mut want = 0u64;
    let ch = churned.clone();
    let r = scan_all(
        &mut c,
        SCAN_FULL_COUNT,
        None,
        Instant::now() + SCAN_FULL_DEADLINE,
        || {
            want = (want + CHURN_PER_CALL).min(CHURN_KEYS as u64);
            allowed.store(want, Ordering::Release);
            let t = Instant::now();
            while ch.load(Ordering::Acquire) < want && t.elapsed() < Duration::from_secs(2) {
                std::thread::sleep(Duration::from_millis(1));
            }
        },
    );
    stop.store(true, Ordering::Release);
    let _ = churn.join();
    match r {
        Ok((seen, calls)) => {
            let missing: Vec<String> = (0..SCAN_KEYS)
                .map(stable_key)
                .filter(|k| !seen.contains(k.as_bytes()))
                .collect();
            h.note(format!(
                "full SCAN COUNT {SCAN_FULL_COUNT}: {calls} calls, {} distinct keys, {:.1} s, \
                 {} churn keys deleted meanwhile",
                seen.len(),
                t0.elapsed().as_secs_f64(),
                churned.load(Ordering::Acquire)
            ));
            h.check(
                missing.is_empty(),
                format!(
                    "the full SCAN missed {} of the {SCAN_KEYS} keys present throughout, e.g. {:?}",
                    missing.len(),
                    &missing[..missing.len().min(3)]
                ),
            );
        }
        Err(e) => h.fail(format!("full SCAN: {e}")),
    }
    h.finish();
}

// ---------------------------------------------------------------------
// 4. Trickled commands.

/// Arguments of the trickled command.
const TRICKLE_ARGS: usize = 1_000_000;
/// Bytes a write.
const TRICKLE_WRITE: usize = 100;
/// Server CPU for parsing the 7 MB command: a parser that resumes where it
/// stopped does it in well under a second; one that re-parses the buffer
/// on every read is quadratic.
const TRICKLE_CPU_MAX_S: f64 = 3.0;
/// When we give up on the trickle altogether.
const TRICKLE_DEADLINE: Duration = Duration::from_secs(30);

#[test]
fn attack_trickled_huge_command() {
    let mut h = Harness::start("attack_trickled_huge_command", PairOptions::default());
    let mut c = h.client();
    let mut w = c.stream().try_clone().unwrap();
    w.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut cmd = format!("*{TRICKLE_ARGS}\r\n").into_bytes();
    for _ in 0..TRICKLE_ARGS {
        cmd.extend_from_slice(b"$1\r\na\r\n");
    }
    let total = cmd.len();
    h.begin_attack();
    let cpu0 = cpu(&h);
    let t0 = Instant::now();
    let sent = Arc::new(AtomicU64::new(0));
    let s = sent.clone();
    let sender = std::thread::spawn(move || {
        for chunk in cmd.chunks(TRICKLE_WRITE) {
            if t0.elapsed() > TRICKLE_DEADLINE || w.write_all(chunk).is_err() {
                return;
            }
            s.fetch_add(chunk.len() as u64, Ordering::Release);
        }
    });
    let (_, r) = timed_reply(&mut c, TRICKLE_DEADLINE + Duration::from_secs(2));
    let took = t0.elapsed();
    let used = cpu(&h) - cpu0;
    let _ = sender.join();
    h.note(format!(
        "trickled {} of {total} bytes in {TRICKLE_WRITE}-byte writes: reply {} after {:.2} s; server CPU {used:.2} s",
        sent.load(Ordering::Acquire),
        show_result(&r),
        took.as_secs_f64()
    ));
    h.check(
        matches!(r, Ok(Resp::Error(_))),
        format!(
            "the command of {TRICKLE_ARGS} 'a's got {} (an error was expected: unknown command)",
            show_result(&r)
        ),
    );
    h.check(
        used < TRICKLE_CPU_MAX_S,
        format!("server CPU for the trickled command {used:.2} s >= bound {TRICKLE_CPU_MAX_S} s"),
    );
    h.finish();
}

/// The slow variant: a byte every 10 ms for 2 s of a command that never
/// ends.
#[test]
fn attack_trickled_slow_command() {
    let mut h = Harness::start("attack_trickled_slow_command", PairOptions::default());
    let mut c = h.client();
    let mut cmd = b"*2\r\n$4\r\nECHO\r\n$100000\r\n".to_vec();
    cmd.resize(400, b'x');
    h.begin_attack();
    let cpu0 = cpu(&h);
    let t0 = Instant::now();
    let mut sent = 0;
    for b in cmd.chunks(1) {
        if t0.elapsed() >= Duration::from_secs(2) {
            break;
        }
        if let Err(e) = c.send_raw(b) {
            h.fail(format!(
                "the trickle's write failed after {sent} bytes: {e}"
            ));
            break;
        }
        sent += 1;
        std::thread::sleep(Duration::from_millis(10));
    }
    h.note(format!(
        "trickled {sent} bytes at 1 per 10 ms; server CPU {:.3} s",
        cpu(&h) - cpu0
    ));
    drop(c);
    h.finish();
}

// ---------------------------------------------------------------------
// 5. Output buffers.

/// `--output-limit-hard-bytes`: a client whose unsent output exceeds this
/// is disconnected.
const OUTPUT_LIMIT: u64 = 8 << 20;
const BIG_VALUE: usize = 1 << 20;
const PIPELINED_GETS: usize = 3000;
const MGET_KEYS: usize = 4000;
/// More than this read from the attacker's socket and it is still open:
/// the limit did not apply (8 MiB of buffer plus the socket buffers is far
/// less).
const FLOOD_BYTES: u64 = 64 << 20;
/// How long the attacker does not read (the server's buffer grows).
const NOT_READING: Duration = Duration::from_secs(2);

fn big_value_pair(name: &str) -> (Harness, Raw) {
    let h = Harness::start(
        name,
        opts(&["--output-limit-hard-bytes", &OUTPUT_LIMIT.to_string()]),
    );
    let mut c = h.client();
    let v = vec![b'v'; BIG_VALUE];
    assert_eq!(
        c.call(&[b"SET", b"big", &v]).unwrap(),
        Resp::Simple("OK".into())
    );
    (h, c)
}

#[test]
fn attack_pipelined_big_gets() {
    let (mut h, mut c) = big_value_pair("attack_pipelined_big_gets");
    let mut out = Vec::new();
    for _ in 0..PIPELINED_GETS {
        common::hostile::encode_into(&[b"GET", b"big"], &mut out);
    }
    h.begin_attack();
    if let Err(e) = c.send_raw(&out) {
        h.note(format!("sending the pipeline: {e}"));
    }
    std::thread::sleep(NOT_READING);
    let end = c.wait_end(Duration::from_secs(5), FLOOD_BYTES);
    h.note(format!(
        "{PIPELINED_GETS} pipelined GETs of a {} value, not read for {} s: {end:?}; principal RSS max {}",
        mib(BIG_VALUE as u64),
        NOT_READING.as_secs(),
        mib(h.rss[0].max())
    ));
    h.check(
        end.closed(),
        format!(
            "the client whose output exceeded {} was not disconnected: {end:?}",
            mib(OUTPUT_LIMIT)
        ),
    );
    h.finish();
}

#[test]
fn attack_big_mget_reply() {
    let (mut h, mut c) = big_value_pair("attack_big_mget_reply");
    let mut args: Vec<&[u8]> = vec![b"MGET"];
    args.extend(std::iter::repeat_n(b"big".as_slice(), MGET_KEYS));
    h.begin_attack();
    if let Err(e) = c.send(&args) {
        h.note(format!("sending the MGET: {e}"));
    }
    std::thread::sleep(NOT_READING);
    // Either an error reply, or the connection closed before the 4 GB
    // reply is sent. Only the first line is parsed (a reply's array header
    // and first bulk header): the rest is counted and dropped, never held.
    c.set_read_timeout(Duration::from_secs(2));
    let first = c.line();
    let first_line = match &first {
        Ok(l) => format!("{:?}", &l[..l.len().min(120)]),
        Err(e) => format!("({e})"),
    };
    let errored = first.as_ref().is_ok_and(|l| l.starts_with('-'));
    let end = c.wait_end(Duration::from_secs(5), FLOOD_BYTES);
    h.note(format!(
        "MGET of {MGET_KEYS} x {}: first reply {first_line}, then {end:?}; principal RSS max {}",
        mib(BIG_VALUE as u64),
        mib(h.rss[0].max())
    ));
    h.check(
        errored || end.closed(),
        format!(
            "MGET of a {} reply: neither an error nor the client closed: {end:?}",
            mib((MGET_KEYS * BIG_VALUE) as u64)
        ),
    );
    h.finish();
}

// ---------------------------------------------------------------------
// 6. Unauthenticated clients.

const PASSWORD: &str = "hostile-test-password";
/// How long a refusal at a header may take.
const REFUSAL_WAIT: Duration = Duration::from_secs(2);
/// RSS bound of the attacks refused at a header: the payload is never
/// taken in, so the node stays near its idle size (about 8 MiB); 100 MB
/// catches a server that buffers the hundreds of MiB pushed after it.
const RSS_HEADER_ATTACK_MAX_BYTES: u64 = 100 << 20;

fn header_bounds() -> Bounds {
    Bounds {
        rss_bytes: RSS_HEADER_ATTACK_MAX_BYTES,
        ..Bounds::default()
    }
}

fn with_password() -> PairOptions {
    PairOptions {
        password: Some(PASSWORD.into()),
        ..PairOptions::default()
    }
}

/// Sends `header`, expects the error `expected` (a prefix) within
/// [`REFUSAL_WAIT`] and the connection closed; then pushes up to `push`
/// bytes anyway (within 5 s; the payload the header declared), to see
/// whether the server buffers it, and notes how far it got.
fn refused_at_header(h: &mut Harness, what: &str, header: &[u8], expected: &str, push: usize) {
    let mut c = Raw::connect(h.p_port(), Duration::from_secs(5)).unwrap();
    c.send_raw(header).unwrap();
    let (took, r) = timed_reply(&mut c, REFUSAL_WAIT);
    h.note(format!(
        "{what}: {} after {:.0} ms",
        show_result(&r),
        took.as_secs_f64() * 1e3
    ));
    match &r {
        Ok(Resp::Error(e)) if e.starts_with(expected) => {}
        r => h.fail(format!(
            "{what}: expected -{expected}... at the header, got {}",
            show_result(r)
        )),
    }
    let end = c.wait_end(Duration::from_secs(2), 1 << 20);
    h.check(
        end.closed(),
        format!("{what}: the connection was not closed after the refusal: {end:?}"),
    );
    if push > 0 {
        let mut w = c.stream().try_clone().unwrap();
        w.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
        let chunk = vec![b'z'; 1 << 20];
        let t0 = Instant::now();
        let mut pushed = 0usize;
        while pushed < push && t0.elapsed() < Duration::from_secs(5) {
            if w.write_all(&chunk).is_err() {
                break;
            }
            pushed += chunk.len();
        }
        // Let the server take in what the socket holds.
        std::thread::sleep(Duration::from_millis(300));
        h.note(format!(
            "{what}: pushed {} of payload after the header; principal RSS max so far {}",
            mib(pushed as u64),
            mib(h.rss[0].max())
        ));
    }
}

#[test]
fn attack_unauthenticated_big_requests() {
    let mut h = Harness::start("attack_unauthenticated_big_requests", with_password());
    h.begin_attack();
    refused_at_header(
        &mut h,
        "unauthenticated *11",
        b"*11\r\n",
        "ERR Protocol error: unauthenticated multibulk length",
        0,
    );
    refused_at_header(
        &mut h,
        "unauthenticated $16385",
        b"*1\r\n$16385\r\n",
        "ERR Protocol error: unauthenticated bulk length",
        0,
    );
    refused_at_header(
        &mut h,
        "unauthenticated SET of 500 MiB",
        format!("*3\r\n$3\r\nSET\r\n$1\r\nk\r\n${}\r\n", 500u64 << 20).as_bytes(),
        "ERR Protocol error: unauthenticated bulk length",
        500 << 20,
    );
    h.finish_with(header_bounds());
}

// ---------------------------------------------------------------------
// 7. AUTH brute force.

const GUESSES: usize = 200_000;
/// How long we count answers to wrong guesses.
const GUESS_WINDOW: Duration = Duration::from_secs(2);
/// Answers to wrong guesses allowed in that window: a limit of about 100
/// failures a second per source gives ~200; today all 200,000 are
/// answered in well under a second.
const GUESSES_ANSWERED_MAX: usize = 1000;
/// A correct AUTH on a new connection after the attack may be delayed by
/// the limiter, by at most this.
const AUTH_AFTER_MAX: Duration = Duration::from_secs(5);

#[test]
fn attack_auth_bruteforce() {
    let mut h = Harness::start("attack_auth_bruteforce", with_password());
    let mut c = Raw::connect(h.p_port(), Duration::from_secs(5)).unwrap();
    let mut out = Vec::new();
    for i in 0..GUESSES {
        common::hostile::encode_into(&[b"AUTH", format!("x{i}").as_bytes()], &mut out);
    }
    let mut w = c.stream().try_clone().unwrap();
    w.set_write_timeout(Some(GUESS_WINDOW)).unwrap();
    h.begin_attack();
    let t0 = Instant::now();
    let sender = std::thread::spawn(move || {
        let _ = w.write_all(&out);
    });
    let mut wrong = 0usize;
    let mut last_answer = Duration::ZERO;
    let mut other = String::new();
    let mut ended = String::new();
    while t0.elapsed() < GUESS_WINDOW {
        c.set_read_timeout(
            GUESS_WINDOW
                .saturating_sub(t0.elapsed())
                .max(Duration::from_millis(1)),
        );
        match c.reply() {
            Ok(Resp::Error(e)) if e.starts_with("WRONGPASS") => {
                wrong += 1;
                last_answer = t0.elapsed();
            }
            Ok(r) => {
                if other.is_empty() {
                    other = r.show();
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => {
                ended = format!(
                    "connection ended after {:.2} s: {e}",
                    t0.elapsed().as_secs_f64()
                );
                break;
            }
        }
    }
    let window = t0.elapsed();
    drop(c);
    let _ = sender.join();
    h.note(format!(
        "{GUESSES} pipelined wrong AUTHs: {wrong} WRONGPASS answers in a {:.2} s window, the last at {:.3} s{}{}",
        window.as_secs_f64(),
        last_answer.as_secs_f64(),
        if other.is_empty() { String::new() } else { format!(", other reply: {other}") },
        if ended.is_empty() { String::new() } else { format!(", {ended}") }
    ));
    h.check(
        wrong < GUESSES_ANSWERED_MAX,
        format!(
            "{wrong} wrong guesses answered in {:.2} s (bound: fewer than {GUESSES_ANSWERED_MAX} in {} s)",
            window.as_secs_f64(),
            GUESS_WINDOW.as_secs()
        ),
    );
    // The rightful client, on a new connection.
    let t = Instant::now();
    let r = Raw::ready(h.p_port(), Some(PASSWORD), Instant::now() + AUTH_AFTER_MAX);
    h.note(format!(
        "correct AUTH on a new connection afterwards: {} after {:.0} ms",
        if r.is_ok() {
            "+OK".to_string()
        } else {
            format!("{:?}", r.as_ref().err())
        },
        t.elapsed().as_secs_f64() * 1e3
    ));
    h.check(
        r.is_ok() && t.elapsed() < AUTH_AFTER_MAX,
        format!(
            "a correct AUTH after the attack did not succeed within {} s: {:?}",
            AUTH_AFTER_MAX.as_secs(),
            r.err()
        ),
    );
    h.finish();
}

// ---------------------------------------------------------------------
// 8. A write larger than any batch.

/// The log's batch limit (engine commit: 4 MiB, or a quarter of a segment
/// if less; the default 64 MiB segments leave it at 4 MiB).
const BATCH_LIMIT: u64 = 4 << 20;

#[test]
fn attack_oversized_write_header() {
    let mut h = Harness::start("attack_oversized_write_header", PairOptions::default());
    h.begin_attack();
    let mut c = h.client();
    let header = format!("*3\r\n$3\r\nSET\r\n$1\r\nk\r\n${}\r\n", 512u64 << 20);
    c.send_raw(header.as_bytes()).unwrap();
    let (took, r) = timed_reply(&mut c, REFUSAL_WAIT);
    h.note(format!(
        "SET k with a 512 MiB bulk header: {} after {:.0} ms",
        show_result(&r),
        took.as_secs_f64() * 1e3
    ));
    match &r {
        Ok(Resp::Error(e))
            if e.contains(&BATCH_LIMIT.to_string()) || e.contains("4 MiB") || e.contains("4MiB") => {}
        r => h.fail(format!(
            "expected, at the header, an error naming the largest committable write ({BATCH_LIMIT} bytes), got {}",
            show_result(r)
        )),
    }
    let end = c.wait_end(Duration::from_secs(2), 1 << 20);
    h.check(
        end.closed(),
        format!("the connection was not closed after the refusal: {end:?}"),
    );
    // Push the payload anyway: the server must not be holding it.
    let mut w = c.stream().try_clone().unwrap();
    w.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
    let chunk = vec![b'z'; 1 << 20];
    let t0 = Instant::now();
    let mut pushed = 0u64;
    while pushed < 512 << 20 && t0.elapsed() < Duration::from_secs(10) {
        if w.write_all(&chunk).is_err() {
            break;
        }
        pushed += chunk.len() as u64;
    }
    let (_, after) = timed_reply(&mut c, REFUSAL_WAIT);
    h.note(format!(
        "pushed {} of payload after the header; then {}; principal RSS max {}",
        mib(pushed),
        show_result(&after),
        mib(h.rss[0].max())
    ));
    h.finish_with(header_bounds());
}

// ---------------------------------------------------------------------
// 9. Slowloris.

/// `--command-timeout-secs`: the longest a client may take to send one
/// command once it has started it.
const COMMAND_TIMEOUT_S: u64 = 2;
/// A client trickling one never-ending command must be gone by then
/// (the timeout plus a second of timer granularity and load).
const SLOWLORIS_CLOSE_MAX: Duration = Duration::from_millis(3500);
/// How long the other client idles between two commands (well beyond the
/// command timeout, which must not apply to it).
const IDLE_BETWEEN: Duration = Duration::from_secs(5);

#[test]
fn attack_slowloris() {
    let mut h = Harness::start(
        "attack_slowloris",
        opts(&["--command-timeout-secs", &COMMAND_TIMEOUT_S.to_string()]),
    );
    let mut idle = h.client();
    let mut slow = h.client();
    h.begin_attack();
    let body = b"*2\r\n$4\r\nECHO\r\n$100000\r\n"
        .iter()
        .chain(std::iter::repeat(&b'x'));
    let t0 = Instant::now();
    let mut sent = 0usize;
    let mut end = None;
    for b in body {
        if t0.elapsed() > IDLE_BETWEEN {
            break;
        }
        if slow.send_raw(&[*b]).is_err() {
            end = Some(format!("write failed after {sent} bytes"));
            break;
        }
        sent += 1;
        // One byte a second; the wait doubles as the check for a close.
        match slow.wait_end(Duration::from_secs(1), 1 << 20) {
            End::Open(0) => {}
            e => {
                end = Some(format!("{e:?} after {sent} bytes"));
                break;
            }
        }
    }
    let closed_after = t0.elapsed();
    h.note(format!(
        "slowloris at 1 byte/s: {} at {:.1} s",
        end.as_deref().unwrap_or("still open"),
        closed_after.as_secs_f64()
    ));
    h.check(
        end.is_some() && closed_after < SLOWLORIS_CLOSE_MAX,
        format!(
            "the slowloris client was not disconnected within {:.1} s (--command-timeout-secs {COMMAND_TIMEOUT_S}): {} at {:.1} s",
            SLOWLORIS_CLOSE_MAX.as_secs_f64(),
            end.as_deref().unwrap_or("still open"),
            closed_after.as_secs_f64()
        ),
    );
    // The idle client (it sent its PING before the attack began, in
    // `client`) has been idle all along; it is still served.
    let left = IDLE_BETWEEN.saturating_sub(t0.elapsed());
    std::thread::sleep(left);
    let r = idle.cmd(&["PING"]);
    h.check(
        matches!(&r, Ok(Resp::Simple(s)) if s == "PONG"),
        format!(
            "a client idle {} s between commands was affected by the command timeout: {}",
            IDLE_BETWEEN.as_secs(),
            show_result(&r)
        ),
    );
    h.finish();
}
