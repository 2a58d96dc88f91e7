//! Helpers shared by the tools' integration tests.
#![allow(dead_code)] // each test crate uses a different subset

#[path = "../../../engine/tests/modes/mod.rs"]
pub mod modes;
#[path = "../../../engine/tests/scratch/mod.rs"]
pub mod scratch;

pub mod hostile;

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mirrorlog::client::Client;
use mirrorlog::resp::Reply;

/// A fresh directory under the system temp dir, unique to this process.
pub fn tempdir(prefix: &str, tag: &str) -> PathBuf {
    let d = scratch::path(&format!("{prefix}-{tag}"));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A port nothing listens on right now, and never handed out before in
/// this process: tests run in parallel, and the kernel may give a port just
/// released by one `free_port` call to the next, so two servers of two
/// tests would collide (one of them then exits at start).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap();
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// A partner secret file in `dir` (mode 0600, as the server requires).
pub fn secret(dir: &Path) -> PathBuf {
    use std::os::unix::fs::OpenOptionsExt;
    let p = dir.join("secret");
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&p)
        .unwrap()
        .write_all(b"server-test-shared-secret")
        .unwrap();
    p
}

/// A child process killed (SIGKILL) when dropped.
pub struct Served(pub Child);

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

// Helpers of the tests that drive `mirrorlog serve` processes: the
// address of a port, `INFO` (all sections) as text, one numeric field of
// it, waiting for a condition, and a `serve` child with its log.

pub fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

pub fn info(port: u16) -> String {
    let Ok(mut c) = Client::connect(addr(port), Duration::from_secs(2)) else {
        return String::new();
    };
    match c.call(&[b"INFO"]) {
        Ok(Reply::Bulk(b)) => String::from_utf8_lossy(&b).into_owned(),
        _ => String::new(),
    }
}

pub fn field(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .and_then(|v| v.trim().parse().ok())
}

pub fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn serve(args: &[String], log: &Path) -> Served {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Served(
        Command::new(env!("CARGO_BIN_EXE_mirrorlog"))
            .arg("serve")
            .args(args)
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .unwrap(),
    )
}

/// A `mirrorlog witness` in `dir` on 127.0.0.1:`port` with leases of
/// `lease_ms`, its output discarded.
pub fn spawn_witness(dir: &Path, secret: &Path, port: u16, lease_ms: u64) -> Served {
    Served(
        Command::new(env!("CARGO_BIN_EXE_mirrorlog"))
            .arg("witness")
            .arg("--dir")
            .arg(dir)
            .arg("--secret-file")
            .arg(secret)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--lease-ms", &lease_ms.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// The `serve` flags every test node has: its role, directory, secret,
/// client port and the partners' address; callers add their own.
pub fn node_args(
    node_dir: &Path,
    secret: &Path,
    role: &str,
    port: u16,
    partner: u16,
) -> Vec<String> {
    [
        "--role",
        role,
        "--dir",
        &node_dir.display().to_string(),
        "--secret-file",
        &secret.display().to_string(),
        "--port",
        &port.to_string(),
        "--partner",
        &format!("127.0.0.1:{partner}"),
    ]
    .iter()
    .map(|x| x.to_string())
    .collect()
}

/// `serve` flags for a node of a reseed test: its directory `dir/sub`,
/// client port, the partners' address, 256 KiB segments and a checkpoint
/// every second (so log deletion and reseeds happen quickly).
pub fn small_node_args(
    dir: &Path,
    secret: &Path,
    role: &str,
    sub: &str,
    port: u16,
    partner: u16,
) -> Vec<String> {
    let mut a = node_args(&dir.join(sub), secret, role, port, partner);
    a.extend(["--segment-bytes", "262144", "--checkpoint-secs", "1"].map(String::from));
    a
}
