//! Helpers for the tests that run nodes (`node_e2e`, `mirroring_processes`,
//! `fault_proxy`).

use std::path::PathBuf;
use std::time::{Duration, Instant};

/// A fresh directory under the system temp dir, unique to this process.
pub fn tempdir(prefix: &str, tag: &str) -> PathBuf {
    let d = super::scratch::path(&format!("{prefix}-{tag}"));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Small segments, so a test's log spans several of them.
pub fn log_opts() -> mirrorlog_engine::log::LogOptions {
    mirrorlog_engine::log::LogOptions {
        segment_bytes: 256 * 1024,
        ..Default::default()
    }
}

/// Waits for `f`, failing the test after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Runs a test body `fn name(TransportChoice)` once per transport path, as
/// two tests `name::io_uring` and `name::blocking`. The io_uring run fails
/// where io_uring is unavailable unless MIRRORLOG_NO_URING=1 is set.
#[macro_export]
macro_rules! on_both_paths {
    ($name:ident) => {
        mod $name {
            #[test]
            fn io_uring() {
                if std::env::var("MIRRORLOG_NO_URING").as_deref() == Ok("1") {
                    eprintln!("MIRRORLOG_NO_URING=1: io_uring run skipped");
                    return;
                }
                super::$name(mirrorlog_engine::transport::TransportChoice::IoUring)
            }
            #[test]
            fn blocking() {
                super::$name(mirrorlog_engine::transport::TransportChoice::Blocking)
            }
        }
    };
}
