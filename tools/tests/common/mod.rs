//! Helpers shared by the tools' integration tests.
#![allow(dead_code)] // each test crate uses a different subset

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Child;

/// A fresh directory under the system temp dir, unique to this process.
pub fn tempdir(prefix: &str, tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mirrorlog-{prefix}-{tag}-{}", std::process::id()));
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
