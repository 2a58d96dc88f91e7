//! Real-process crash test: a child process commits in a loop from several
//! threads and prints every acknowledged commit; the parent SIGKILLs it at a
//! random moment, reopens the log, and checks that every acknowledged record
//! is there, at the LSN range its acknowledgement named. Several rounds run
//! on the same log, so each child also recovers what the last one left.
//!
//! The child is this test binary itself, re-run with an environment variable
//! that selects `child_commit_loop` (ignored in normal runs).

mod scratch;
use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mirrorlog_engine::commit::{CommitOptions, GroupCommit};
use mirrorlog_engine::log::{Compression, Log, LogOptions};

const DIR_ENV: &str = "MIRRORLOG_CRASH_CHILD_DIR";
const ROUND_ENV: &str = "MIRRORLOG_CRASH_CHILD_ROUND";
const THREADS: usize = 4;

fn log_opts() -> LogOptions {
    LogOptions {
        segment_bytes: 256 * 1024,
        compression: Compression::Zstd(1),
    }
}

fn record(round: u32, thread: usize, i: u64) -> Vec<u8> {
    // Half compressible text, half varying bytes, ~100 bytes.
    let mut r = format!("r{round}-t{thread}-c{i}-").into_bytes();
    r.extend((0..64u64).map(|k| (i.wrapping_mul(31).wrapping_add(k * 7) % 251) as u8));
    r
}

/// The child: commits until killed, printing `ack round thread i lsn_start lsn_end`.
#[test]
#[ignore = "run by process_crash_keeps_every_acknowledged_commit as a child process"]
fn child_commit_loop() {
    let Ok(dir) = std::env::var(DIR_ENV) else {
        return;
    };
    let round: u32 = std::env::var(ROUND_ENV)
        .expect("round")
        .parse()
        .expect("round number");
    let (log, _) = Log::open(&dir, log_opts()).expect("child opens log");
    let gc = Arc::new(GroupCommit::start(Arc::new(log), CommitOptions::default()).expect("start"));
    let out = Arc::new(std::sync::Mutex::new(std::io::stdout()));
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let gc = gc.clone();
            let out = out.clone();
            std::thread::spawn(move || {
                for i in 0.. {
                    let rec = record(round, t, i);
                    let c = gc.commit(&[&rec]).expect("commit").wait().expect("wait");
                    let mut o = out.lock().expect("stdout lock");
                    writeln!(o, "ack {round} {t} {i} {} {}", c.lsn_start, c.lsn_end)
                        .expect("print");
                    o.flush().expect("flush");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("committer");
    }
}

struct Ack {
    round: u32,
    thread: usize,
    i: u64,
    lsn_start: u64,
    lsn_end: u64,
}

fn parse_ack(line: &str) -> Option<Ack> {
    let mut it = line.strip_prefix("ack ")?.split(' ');
    Some(Ack {
        round: it.next()?.parse().ok()?,
        thread: it.next()?.parse().ok()?,
        i: it.next()?.parse().ok()?,
        lsn_start: it.next()?.parse().ok()?,
        lsn_end: it.next()?.parse().ok()?,
    })
}

#[test]
fn process_crash_keeps_every_acknowledged_commit() {
    let dir = scratch::path("proc-crash");
    let _ = std::fs::remove_dir_all(&dir);
    let exe = std::env::current_exe().expect("test binary path");
    let mut acks: Vec<Ack> = Vec::new();
    let mut seed = 0x9E37_79B9u64 ^ u64::from(std::process::id());
    let rounds = 6;
    for round in 0..rounds {
        let mut child = Command::new(&exe)
            .args([
                "child_commit_loop",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(DIR_ENV, &dir)
            .env(ROUND_ENV, round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().expect("piped stdout");
        let reader = std::thread::spawn(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .filter_map(|l| parse_ack(&l))
                .collect::<Vec<_>>()
        });
        // Wait for the first acknowledgements, then kill at a random moment.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let delay = Duration::from_millis(100 + seed % 400);
        std::thread::sleep(delay);
        child.kill().expect("SIGKILL child");
        child.wait().expect("reap child");
        let got = reader.join().expect("reader");
        assert!(
            !got.is_empty(),
            "round {round}: child acknowledged nothing in {delay:?}"
        );
        acks.extend(got);

        // Reopen: every acknowledged record is there, where its ack said.
        let began = Instant::now();
        let (log, report) = Log::open(&dir, log_opts()).expect("recovery after SIGKILL");
        let mut batches: BTreeMap<u64, (u64, Vec<Vec<u8>>)> = BTreeMap::new();
        for v in log.read_from(log.start_lsn()).expect("read") {
            let v = v.expect("valid batch");
            let recs = v
                .records()
                .expect("records")
                .iter()
                .map(|r| r.to_vec())
                .collect();
            batches.insert(v.lsn(), (v.end_lsn(), recs));
        }
        let present: HashSet<&Vec<u8>> = batches.values().flat_map(|(_, r)| r.iter()).collect();
        for a in &acks {
            let rec = record(a.round, a.thread, a.i);
            assert!(
                present.contains(&rec),
                "round {round}: acknowledged record r{}-t{}-c{} lost ({report})",
                a.round,
                a.thread,
                a.i
            );
            let (end, recs) = batches
                .get(&a.lsn_start)
                .unwrap_or_else(|| panic!("no batch at acked LSN {}", a.lsn_start));
            assert_eq!(*end, a.lsn_end);
            assert!(recs.contains(&rec));
        }
        // Each thread's commits are in order and never duplicated.
        let mut last: BTreeMap<(u32, usize), u64> = BTreeMap::new();
        for (_, recs) in batches.values() {
            for r in recs {
                let text = String::from_utf8_lossy(&r[..r.len() - 64]).to_string();
                let parts: Vec<&str> = text.trim_end_matches('-').split('-').collect();
                let key = (
                    parts[0][1..].parse().unwrap(),
                    parts[1][1..].parse().unwrap(),
                );
                let i: u64 = parts[2][1..].parse().unwrap();
                if let Some(prev) = last.insert(key, i) {
                    assert_eq!(i, prev + 1, "thread {key:?}: commit {i} after {prev}");
                }
            }
        }
        eprintln!(
            "round {round}: killed after {delay:?}, {} acks so far, recovery {:?}: {report}",
            acks.len(),
            began.elapsed()
        );
    }
    std::fs::remove_dir_all(&dir).expect("cleanup");
}
