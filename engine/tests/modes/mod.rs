//! The private-mode check shared by the engine's and the tools' tests
//! (included by path, like `scratch`).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Every path under `dir` (and `dir` itself) that is not private, with its
/// mode: files must be 0600, directories 0700.
pub fn not_private(dir: &Path) -> Vec<(String, u32)> {
    let mut bad = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(p) = todo.pop() {
        let m = std::fs::symlink_metadata(&p).unwrap();
        let mode = m.permissions().mode() & 0o777;
        if m.is_dir() {
            if mode != 0o700 {
                bad.push((p.display().to_string(), mode));
            }
            for e in std::fs::read_dir(&p).unwrap() {
                todo.push(e.unwrap().path());
            }
        } else if mode != 0o600 {
            bad.push((p.display().to_string(), mode));
        }
    }
    bad
}
