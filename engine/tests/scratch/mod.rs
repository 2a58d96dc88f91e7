//! Where integration tests put their files: one directory per test process
//! under the system temp dir (`mirrorlog-test-<pid>`), removed when the
//! process exits, pass or fail, so repeated test runs do not fill the disk
//! (they once left 40 GB behind). Set `MIRRORLOG_KEEP_TEST_DIRS=1` to keep
//! it for a post-mortem. Shared by the engine's and the tools' tests.
#![allow(dead_code)] // each test crate uses a different subset

use std::path::PathBuf;
use std::sync::OnceLock;

static ROOT: OnceLock<PathBuf> = OnceLock::new();

extern "C" fn remove_root() {
    if std::env::var_os("MIRRORLOG_KEEP_TEST_DIRS").is_none() {
        if let Some(r) = ROOT.get() {
            let _ = std::fs::remove_dir_all(r);
        }
    }
}

/// This process's scratch directory (created on first use).
pub fn root() -> &'static PathBuf {
    ROOT.get_or_init(|| {
        let r = std::env::temp_dir().join(format!("mirrorlog-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&r);
        std::fs::create_dir_all(&r).expect("creating the test scratch directory");
        // SAFETY: registers a plain `extern "C" fn()`, run once at exit
        // (libtest ends with exit(3) or a return from main; both run it).
        unsafe {
            libc::atexit(remove_root);
        }
        r
    })
}

/// `name` under the scratch directory, not created (and removed if a
/// previous use left it).
pub fn path(name: &str) -> PathBuf {
    let p = root().join(name);
    let _ = std::fs::remove_dir_all(&p);
    p
}
