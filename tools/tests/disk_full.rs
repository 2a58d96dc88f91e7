//! Disk faults degrade, never blind: a server whose log's file system fills
//! up refuses writes with a clear `MISCONF` error naming the full disk,
//! keeps answering reads, PING, INFO and MIRROR STATUS (which show the disk
//! error), shows no failed write to anyone, and takes writes again by
//! itself once space is freed; after a restart every acknowledged write is
//! there and no failed one is.
//!
//! The file system is a tmpfs of a few MiB mounted for the test (needs
//! root, or CAP_SYS_ADMIN): where mounting is not permitted the tests say
//! so and pass without running.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use mirrorlog::client::Client;
use mirrorlog::resp::Reply;

use common::{addr, free_port, info, node_args, secret, serve, tempdir, wait_for, Served};

/// A tmpfs mounted on a directory, unmounted (lazily, so that a process
/// still holding a file cannot keep it) when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// None when this process may not mount (not root, or in a container
    /// without CAP_SYS_ADMIN): the reason is printed.
    fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs(dir.to_path_buf())),
            Ok(o) => {
                eprintln!(
                    "SKIPPED: cannot mount a tmpfs on {} to fill (needs root or CAP_SYS_ADMIN): {}",
                    dir.display(),
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("SKIPPED: cannot run mount(8) to make a small file system: {e}");
                None
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn connect(port: u16) -> Client {
    Client::connect(addr(port), Duration::from_secs(5)).unwrap()
}

fn call(c: &mut Client, args: &[&[u8]]) -> Reply {
    c.call(args).unwrap()
}

fn text(r: &Reply) -> String {
    match r {
        Reply::Bulk(b) => String::from_utf8_lossy(b).into_owned(),
        Reply::Simple(s) | Reply::Error(s) => s.clone(),
        other => format!("{other:?}"),
    }
}

fn get(c: &mut Client, key: &str) -> Option<Vec<u8>> {
    match call(c, &[b"GET", key.as_bytes()]) {
        Reply::Bulk(v) => Some(v),
        Reply::Value(v) => Some(v.to_vec()),
        Reply::Nil => None,
        other => panic!("GET {key}: unexpected reply {other:?}"),
    }
}

fn value(i: usize) -> Vec<u8> {
    // Incompressible enough that the log grows by about its size.
    let mut x = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Fills `fs` to within `leave` bytes of full with one new file `name`;
/// returns its path.
fn fill_with(fs: &Path, leave: u64, name: &str) -> PathBuf {
    // SAFETY: statvfs fills the struct; the path is a valid C string.
    let free = unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        let p = std::ffi::CString::new(fs.as_os_str().as_encoded_bytes()).unwrap();
        assert_eq!(libc::statvfs(p.as_ptr(), &mut st), 0);
        st.f_bavail * st.f_frsize
    };
    let filler = fs.join(name);
    let len = free.saturating_sub(leave) as usize;
    // To the last block: a short write at the end is expected then.
    let _ = std::fs::write(&filler, vec![0xAAu8; len]);
    filler
}

fn fill(fs: &Path, leave: u64) -> PathBuf {
    fill_with(fs, leave, "filler")
}

fn temporaries(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(temporaries(&p));
        } else if p.to_string_lossy().ends_with(".tmp") {
            out.push(p);
        }
    }
    out
}

/// Writes unique keys until one fails; returns the acknowledged ones and
/// the failed key with its error.
fn write_until_full(
    c: &mut Client,
    acked: &mut BTreeMap<String, Vec<u8>>,
    first: usize,
) -> (String, String) {
    for i in first..first + 100_000 {
        let key = format!("k{i}");
        let v = value(i);
        match call(c, &[b"SET", key.as_bytes(), &v]) {
            Reply::Simple(s) if s == "OK" => {
                acked.insert(key, v);
            }
            Reply::Error(e) => return (key, e),
            other => panic!("SET {key}: unexpected reply {other:?}"),
        }
    }
    panic!("the disk never filled up");
}

fn assert_disk_full_error(e: &str) {
    assert!(
        e.starts_with("MISCONF") && e.contains("disk") && e.contains("full"),
        "a write on a full disk must say so: {e}"
    );
    assert!(
        e.contains("No space left on device"),
        "the error names the OS error: {e}"
    );
    assert!(
        e.contains("Free space") && e.contains("resume"),
        "the error says what to do: {e}"
    );
}

/// Everything a server on a full disk must still answer, and show.
fn assert_degraded(port: u16, acked: &BTreeMap<String, Vec<u8>>, failed: &str) {
    let mut c = connect(port);
    assert_eq!(text(&call(&mut c, &[b"PING"])), "PONG");
    for (k, v) in acked {
        assert_eq!(
            get(&mut c, k).as_ref(),
            Some(v),
            "acknowledged {k} must read back"
        );
    }
    assert_eq!(
        get(&mut c, failed),
        None,
        "the failed write must not be visible"
    );
    let info = text(&call(&mut c, &[b"INFO"]));
    assert!(
        info.contains("aof_last_write_status:err") && info.contains("DISK FULL"),
        "INFO must show the disk error:\n{info}"
    );
    let status = text(&call(&mut c, &[b"MIRROR", b"STATUS"]));
    assert!(
        status.contains("log error:") && status.contains("DISK FULL"),
        "MIRROR STATUS must show the disk error:\n{status}"
    );
    let json = text(&call(&mut c, &[b"MIRROR", b"STATUS", b"JSON"]));
    assert!(json.contains("\"log_error\":\"DISK FULL"), "{json}");
    let dbsize = call(&mut c, &[b"DBSIZE"]);
    assert_eq!(
        dbsize,
        Reply::Int(acked.len() as i64),
        "DBSIZE counts acknowledged keys only"
    );
}

fn stop(mut s: Served) {
    // SIGKILL: what was acknowledged must be on disk, not in a shutdown path.
    let _ = s.0.kill();
    let _ = s.0.wait();
    std::mem::forget(s);
}

#[test]
fn standalone_on_a_full_disk_refuses_writes_keeps_reads_and_resumes_when_space_returns() {
    let d = tempdir("disk-full", "standalone");
    let Some(fs) = Tmpfs::mount(&d.join("fs"), "8m") else {
        return;
    };
    let s = secret(&d);
    let node_dir = fs.0.join("node");
    let port = free_port();
    let mut args = node_args(&node_dir, &s, "principal", port, free_port());
    args.extend(
        [
            "--safety",
            "off",
            "--segment-bytes",
            "262144",
            "--checkpoint-secs",
            "0",
        ]
        .map(String::from),
    );
    let server = serve(&args, &d.join("p.log"));
    wait_for("the server", Duration::from_secs(30), || {
        !info(port).is_empty()
    });

    // Leave room for a few segments only.
    let filler = fill(&fs.0, 1 << 20);
    let mut c = connect(port);
    let mut acked = BTreeMap::new();
    let (failed, e) = write_until_full(&mut c, &mut acked, 0);
    assert_disk_full_error(&e);
    assert!(!acked.is_empty(), "some writes fit before the disk filled");
    assert_degraded(port, &acked, &failed);
    assert_eq!(
        temporaries(&node_dir),
        Vec::<PathBuf>::new(),
        "failed segment creations must not leave temporaries holding space"
    );
    // Still full: writes that need a new segment keep failing with the
    // same clear error (a small one may still fit the current segment's
    // rest), and reads work.
    for i in 0..3 {
        let again = call(&mut c, &[b"SET", failed.as_bytes(), &value(900_000 + i)]);
        assert_disk_full_error(&text(&again));
    }
    assert_degraded(port, &acked, &failed);

    // Space returns: the next write goes through, no restart.
    std::fs::remove_file(&filler).unwrap();
    let t0 = Instant::now();
    let after = call(&mut c, &[b"SET", b"after", b"space returned"]);
    assert_eq!(
        after,
        Reply::Simple("OK".into()),
        "the first write after freeing space"
    );
    acked.insert("after".into(), b"space returned".to_vec());
    assert_eq!(call(&mut c, &[b"INCR", b"counter"]), Reply::Int(1));
    acked.insert("counter".into(), b"1".to_vec());
    // Enough to roll over into new segments several times.
    for i in 1_000_000..1_000_300 {
        let key = format!("k{i}");
        let v = value(i);
        assert_eq!(
            call(&mut c, &[b"SET", key.as_bytes(), &v]),
            Reply::Simple("OK".into()),
            "{key}"
        );
        acked.insert(key, v);
    }
    let info_now = text(&call(&mut c, &[b"INFO", b"persistence"]));
    assert!(info_now.contains("aof_last_write_status:ok"), "{info_now}");
    assert!(t0.elapsed() < Duration::from_secs(60));
    drop(c);
    stop(server);

    // Restart: every acknowledged write, no failed one.
    let server = serve(&args, &d.join("p.log"));
    wait_for("the restarted server", Duration::from_secs(30), || {
        !info(port).is_empty()
    });
    let mut c = connect(port);
    for (k, v) in &acked {
        assert_eq!(get(&mut c, k).as_ref(), Some(v), "{k} after restart");
    }
    assert_eq!(
        get(&mut c, &failed),
        None,
        "{failed} failed; it must not come back"
    );
    assert_eq!(call(&mut c, &[b"DBSIZE"]), Reply::Int(acked.len() as i64));
    drop(c);
    stop(server);
}

#[test]
fn pair_principal_on_a_full_disk_degrades_and_the_mirror_gets_exactly_the_acknowledged_writes() {
    let d = tempdir("disk-full", "pair");
    let Some(fs) = Tmpfs::mount(&d.join("fs"), "8m") else {
        return;
    };
    let s = secret(&d);
    let (pc, mc, partner) = (free_port(), free_port(), free_port());
    let extra = |mut a: Vec<String>| {
        a.extend(
            [
                "--safety",
                "full",
                "--segment-bytes",
                "262144",
                "--checkpoint-secs",
                "0",
            ]
            .map(String::from),
        );
        a
    };
    let p_args = extra(node_args(&fs.0.join("p"), &s, "principal", pc, partner));
    let principal = serve(&p_args, &d.join("p.log"));
    // The mirror's disk is not the one that fills.
    let mirror = serve(
        &extra(node_args(&d.join("m"), &s, "mirror", mc, partner)),
        &d.join("m.log"),
    );
    wait_for("a synchronized pair", Duration::from_secs(30), || {
        info(pc).contains("mirroring_state:synchronized")
    });
    let filler = fill(&fs.0, 1 << 20);
    let mut c = connect(pc);
    let mut acked = BTreeMap::new();
    let (failed, e) = write_until_full(&mut c, &mut acked, 0);
    assert_disk_full_error(&e);
    assert_degraded(pc, &acked, &failed);
    std::fs::remove_file(&filler).unwrap();
    for i in 2_000_000..2_000_100 {
        let key = format!("k{i}");
        let v = value(i);
        assert_eq!(
            call(&mut c, &[b"SET", key.as_bytes(), &v]),
            Reply::Simple("OK".into()),
            "{key} after space returned"
        );
        acked.insert(key, v);
    }
    // Safety full: every acknowledged write is hardened on the mirror; it
    // applies them, and nothing else.
    let mut m = connect(mc);
    wait_for(
        "the mirror to apply everything",
        Duration::from_secs(30),
        || call(&mut m, &[b"DBSIZE"]) == Reply::Int(acked.len() as i64),
    );
    for (k, v) in &acked {
        assert_eq!(get(&mut m, k).as_ref(), Some(v), "{k} on the mirror");
    }
    assert_eq!(get(&mut m, &failed), None);
    drop((c, m));
    stop(principal);
    stop(mirror);
}

/// What one client of the concurrent history saw.
#[derive(Default)]
struct Seen {
    incr_values: Vec<i64>,
    acked: BTreeMap<String, Vec<u8>>,
    failed: Vec<String>,
}

/// `rounds` INCRs of `ctr` and big SETs of unique keys from one client,
/// stopping early once `stop_after_failures` writes failed.
fn client_history(port: u16, id: usize, rounds: usize, stop_after_failures: usize) -> Seen {
    // Unique across runs: the thread id and the first free counter value
    // are not (a second run starts its rounds at 0 again).
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut c = connect(port);
    let mut seen = Seen::default();
    for r in 0..rounds {
        if seen.failed.len() >= stop_after_failures {
            break;
        }
        match call(&mut c, &[b"INCR", b"ctr"]) {
            Reply::Int(n) => seen.incr_values.push(n),
            Reply::Error(e) if e.starts_with("MISCONF") => seen.failed.push("ctr".into()),
            other => panic!("INCR: unexpected reply {other:?}"),
        }
        let key = format!("c{id}-{run}-{r}");
        let v = value(id * 1_000_000 + r);
        match call(&mut c, &[b"SET", key.as_bytes(), &v]) {
            Reply::Simple(s) if s == "OK" => {
                seen.acked.insert(key, v);
            }
            Reply::Error(e) if e.starts_with("MISCONF") => seen.failed.push(key),
            other => panic!("SET {key}: unexpected reply {other:?}"),
        }
    }
    seen
}

/// A counter incremented by 8 clients at once while the disk fills: an
/// INCR queued behind a failed one must fail too (its value was computed
/// from the failed one's), or the acknowledged values would skip or
/// repeat. The acknowledged INCR replies must be exactly 1..=N, the
/// counter N, before and after space returns and after a restart.
#[test]
fn concurrent_writers_on_a_full_disk_see_a_counter_without_gaps_or_repeats() {
    let d = tempdir("disk-full", "concurrent");
    let Some(fs) = Tmpfs::mount(&d.join("fs"), "8m") else {
        return;
    };
    let s = secret(&d);
    let port = free_port();
    let mut args = node_args(&fs.0.join("node"), &s, "principal", port, free_port());
    args.extend(
        [
            "--safety",
            "off",
            "--segment-bytes",
            "262144",
            "--checkpoint-secs",
            "0",
        ]
        .map(String::from),
    );
    let server = serve(&args, &d.join("p.log"));
    wait_for("the server", Duration::from_secs(30), || {
        !info(port).is_empty()
    });
    let filler = fill(&fs.0, 1 << 20);
    let run = |rounds: usize, stop: usize| -> Vec<Seen> {
        let threads: Vec<_> = (0..8)
            .map(|id| std::thread::spawn(move || client_history(port, id, rounds, stop)))
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    };
    let check = |all: &[&Seen], c: &mut Client| -> usize {
        let mut values: Vec<i64> = all.iter().flat_map(|s| s.incr_values.clone()).collect();
        values.sort_unstable();
        let n = values.len();
        assert_eq!(
            values,
            (1..=n as i64).collect::<Vec<_>>(),
            "acknowledged INCR replies must be exactly 1..={n}"
        );
        assert_eq!(
            get(c, "ctr").unwrap_or_else(|| b"0".to_vec()),
            n.to_string().into_bytes(),
            "the counter holds the acknowledged increments only"
        );
        for s in all {
            for (k, v) in &s.acked {
                assert_eq!(get(c, k).as_ref(), Some(v), "{k}");
            }
            for k in s.failed.iter().filter(|k| k.as_str() != "ctr") {
                assert_eq!(get(c, k), None, "failed {k} must not be visible");
            }
        }
        n
    };
    let full = run(100_000, 5);
    assert!(
        full.iter().map(|s| s.failed.len()).sum::<usize>() >= 5,
        "the disk filled"
    );
    let mut c = connect(port);
    check(&full.iter().collect::<Vec<_>>(), &mut c);
    std::fs::remove_file(&filler).unwrap();
    // Every failure's reply came after the server had resumed the queue:
    // from now on every write succeeds.
    let after = run(40, usize::MAX);
    for s in &after {
        assert_eq!(
            s.failed,
            Vec::<String>::new(),
            "writes resume once space returns"
        );
    }
    let all: Vec<&Seen> = full.iter().chain(after.iter()).collect();
    let n = check(&all, &mut c);
    drop(c);
    stop(server);
    let server = serve(&args, &d.join("p.log"));
    wait_for("the restarted server", Duration::from_secs(30), || {
        !info(port).is_empty()
    });
    let mut c = connect(port);
    assert_eq!(check(&all, &mut c), n, "after a restart");
    drop(c);
    stop(server);
}

/// The mirror's disk fills: it cannot append shipped batches. Its session
/// ends with the disk error, visible in its status; the principal, in
/// safety full, does not acknowledge what the mirror did not harden (those
/// writes wait or time out, and are not exposed unless the principal runs
/// detached). Once space returns the mirror catches up by itself and holds
/// every acknowledged write.
#[test]
fn pair_mirror_on_a_full_disk_reports_it_and_catches_up_when_space_returns() {
    let d = tempdir("disk-full", "mirror");
    let Some(fs) = Tmpfs::mount(&d.join("fs"), "8m") else {
        return;
    };
    let s = secret(&d);
    let (pc, mc, partner) = (free_port(), free_port(), free_port());
    let extra = |mut a: Vec<String>| {
        a.extend(
            [
                "--safety",
                "full",
                "--segment-bytes",
                "262144",
                "--checkpoint-secs",
                "0",
            ]
            .map(String::from),
        );
        a
    };
    let principal = serve(
        &extra(node_args(&d.join("p"), &s, "principal", pc, partner)),
        &d.join("p.log"),
    );
    let mirror = serve(
        &extra(node_args(&fs.0.join("m"), &s, "mirror", mc, partner)),
        &d.join("m.log"),
    );
    wait_for("a synchronized pair", Duration::from_secs(30), || {
        info(pc).contains("mirroring_state:synchronized")
    });
    let filler = fill(&fs.0, 1 << 20);
    // Write from a thread: in safety full, writes past what the mirror can
    // hold wait for it (or are acknowledged exposed once it is detached).
    let writer = std::thread::spawn(move || {
        let mut c = Client::connect(addr(pc), Duration::from_secs(120)).unwrap();
        let mut acked = BTreeMap::new();
        // ~2.4 MiB: past the 1 MiB left, well within the 8 MiB freed.
        for i in 0..600 {
            let key = format!("m{i}");
            let v = value(3_000_000 + i);
            if let Reply::Simple(ok) = c.call(&[b"SET", key.as_bytes(), &v]).unwrap() {
                assert_eq!(ok, "OK");
                acked.insert(key, v);
            }
        }
        acked
    });
    wait_for(
        "the mirror to report its full disk",
        Duration::from_secs(60),
        || {
            let mut m = connect(mc);
            text(&call(&mut m, &[b"MIRROR", b"STATUS"])).contains("No space left on device")
        },
    );
    // The mirror still answers reads and monitoring.
    let mut m = connect(mc);
    assert_eq!(text(&call(&mut m, &[b"PING"])), "PONG");
    assert!(matches!(call(&mut m, &[b"DBSIZE"]), Reply::Int(_)));
    std::fs::remove_file(&filler).unwrap();
    let acked = writer.join().unwrap();
    assert!(!acked.is_empty());
    wait_for("the mirror to catch up", Duration::from_secs(60), || {
        let mut m = connect(mc);
        call(&mut m, &[b"DBSIZE"]) == Reply::Int(acked.len() as i64)
    });
    let mut m = connect(mc);
    for (k, v) in &acked {
        assert_eq!(get(&mut m, k).as_ref(), Some(v), "{k} on the mirror");
    }
    drop(m);
    stop(principal);
    stop(mirror);
}

/// A node killed while its disk is full to the last block cannot start
/// (a start writes a new epoch to the epoch history, and a principal may
/// not serve without it): it must say why and what to do, exit, and leave
/// nothing behind that keeps the disk full; once space is freed it starts
/// with every acknowledged write and takes writes.
#[test]
fn restart_on_a_full_disk_says_to_free_space_and_starts_once_there_is_some() {
    let d = tempdir("disk-full", "restart");
    let Some(fs) = Tmpfs::mount(&d.join("fs"), "8m") else {
        return;
    };
    let s = secret(&d);
    let port = free_port();
    let node_dir = fs.0.join("node");
    let mut args = node_args(&node_dir, &s, "principal", port, free_port());
    args.extend(
        [
            "--safety",
            "off",
            "--segment-bytes",
            "262144",
            "--checkpoint-secs",
            "0",
        ]
        .map(String::from),
    );
    let server = serve(&args, &d.join("p.log"));
    wait_for("the server", Duration::from_secs(30), || {
        !info(port).is_empty()
    });
    let filler = fill(&fs.0, 1 << 20);
    let mut c = connect(port);
    let mut acked = BTreeMap::new();
    let (failed, e) = write_until_full(&mut c, &mut acked, 0);
    assert_disk_full_error(&e);
    drop(c);
    stop(server);
    // Now fill the last blocks too.
    let last = fill_with(&fs.0, 0, "filler-last");

    let restart_log = d.join("p-restart.log");
    let mut refused = serve(&args, &restart_log);
    let t0 = Instant::now();
    let status = loop {
        if let Some(st) = refused.0.try_wait().unwrap() {
            break st;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "a node that cannot start on a full disk must exit, not hang"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(!status.success());
    let said = std::fs::read_to_string(&restart_log).unwrap();
    assert!(
        said.contains("No space left on device") && said.contains("free some space"),
        "the refusal says the disk is full and what to do:\n{said}"
    );
    assert_eq!(temporaries(&node_dir), Vec::<PathBuf>::new());
    drop(refused);

    std::fs::remove_file(&last).unwrap();
    std::fs::remove_file(&filler).ok();
    let server = serve(&args, &d.join("p.log"));
    wait_for(
        "the server to start once space is freed",
        Duration::from_secs(30),
        || !info(port).is_empty(),
    );
    let mut c = connect(port);
    for (k, v) in &acked {
        assert_eq!(get(&mut c, k).as_ref(), Some(v), "{k} after the restart");
    }
    assert_eq!(get(&mut c, &failed), None);
    for i in 5_000_000..5_000_200 {
        let key = format!("k{i}");
        let v = value(i);
        assert_eq!(
            call(&mut c, &[b"SET", key.as_bytes(), &v]),
            Reply::Simple("OK".into()),
            "{key}"
        );
        acked.insert(key, v);
    }
    assert_eq!(call(&mut c, &[b"DBSIZE"]), Reply::Int(acked.len() as i64));
    drop(c);
    stop(server);
}
