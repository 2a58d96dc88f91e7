//! Files and directories that hold a node's data are private to the user
//! running it: files 0600, directories 0700. The log holds every record
//! the database ever committed, checkpoints the whole state, `EPOCHS` and
//! `WITNESS` the failover history; none of it is for other local users.
//!
//! New files and directories are created with these modes (the umask can
//! only take bits away). A data directory made by an older version (0755,
//! files 0644) is tightened when a node starts on it ([`tighten`]): the
//! directory to 0700 and the files directly in it to 0600, and the caller
//! says so in its log.

use std::fs::{self, DirBuilder, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// The mode of every data file.
pub const FILE_MODE: u32 = 0o600;
/// The mode of every data directory.
pub const DIR_MODE: u32 = 0o700;

/// Group and other bits.
const SHARED_BITS: u32 = 0o077;

/// `OpenOptions` that create a file with [`FILE_MODE`].
pub fn file_options() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.mode(FILE_MODE);
    o
}

/// `fs::create_dir_all` with [`DIR_MODE`] for every directory it creates
/// (existing ones are left as they are: see [`tighten`]).
pub fn create_dir_all(path: &Path) -> io::Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(path)
}

/// Takes group and other permissions away from `dir` and from the files
/// directly in it and in its subdirectories (one level: `checkpoints/`,
/// `salvage/`). Returns how many it changed (0: all were private already).
/// Symbolic links are not followed.
pub fn tighten(dir: &Path) -> io::Result<usize> {
    let mut changed = usize::from(restrict(dir, DIR_MODE)?);
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let ty = entry.file_type()?;
        let path = entry.path();
        if ty.is_file() {
            changed += usize::from(restrict(&path, FILE_MODE)?);
        } else if ty.is_dir() {
            changed += usize::from(restrict(&path, DIR_MODE)?);
            for inner in fs::read_dir(&path)? {
                let inner = inner?;
                if inner.file_type()?.is_file() {
                    changed += usize::from(restrict(&inner.path(), FILE_MODE)?);
                }
            }
        }
    }
    Ok(changed)
}

/// Clears the group and other bits of `path` (keeping the owner's, adding
/// those `private` gives the owner); true if it changed anything.
fn restrict(path: &Path, private: u32) -> io::Result<bool> {
    let mode = fs::symlink_metadata(path)?.permissions().mode() & 0o7777;
    if mode & SHARED_BITS == 0 {
        return Ok(false);
    }
    let new = (mode & !SHARED_BITS & 0o700) | private;
    fs::set_permissions(path, fs::Permissions::from_mode(new))?;
    Ok(true)
}

/// [`tighten`], with the line a node logs when it changed something (an
/// error is a line too: a node still starts in a directory it cannot
/// chmod, say one owned by another user that it may write).
pub fn tighten_and_say(dir: &Path, who: &str) -> Option<String> {
    match tighten(dir) {
        Ok(0) => None,
        Ok(n) => Some(format!(
            "{who}: {} was readable by other users (made by an older version?): {n} files and directories made private (0600 files, 0700 directories)",
            dir.display()
        )),
        Err(e) => Some(format!(
            "{who}: could not make {} private (0700, files 0600): {e}",
            dir.display()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_files_and_directories_are_private_and_old_ones_are_tightened() {
        let d = std::env::temp_dir().join(format!("mirrorlog-private-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        create_dir_all(&d.join("a/b")).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&d), 0o700);
        assert_eq!(mode(&d.join("a/b")), 0o700);
        file_options()
            .write(true)
            .create(true)
            .truncate(true)
            .open(d.join("f"))
            .unwrap();
        assert_eq!(mode(&d.join("f")), 0o600);
        assert_eq!(tighten(&d).unwrap(), 0);
        // As an older version left them.
        fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).unwrap();
        fs::set_permissions(d.join("f"), fs::Permissions::from_mode(0o644)).unwrap();
        fs::set_permissions(d.join("a"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(d.join("a/g"), b"x").unwrap();
        fs::set_permissions(d.join("a/g"), fs::Permissions::from_mode(0o664)).unwrap();
        assert_eq!(tighten(&d).unwrap(), 4);
        assert_eq!(mode(&d), 0o700);
        assert_eq!(mode(&d.join("f")), 0o600);
        assert_eq!(mode(&d.join("a")), 0o700);
        assert_eq!(mode(&d.join("a/g")), 0o600);
        assert!(tighten_and_say(&d, "test").is_none());
        fs::remove_dir_all(&d).unwrap();
    }
}
