//! Small files replaced atomically and durably: written to `NAME.tmp`,
//! synced, renamed over `NAME`, and the directory synced, so a crash
//! leaves the old contents or the new, never a mix. Used for the epoch
//! history (`EPOCHS`) and the witness's state (`WITNESS`).
//!
//! [`ReplaceDir`] is the same protocol over the real filesystem or over a
//! log [`Storage`], so the simulator keeps the epoch history on its
//! simulated disk.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::log::storage::{Storage, StorageFile};

/// Replaces `dir/name` with `bytes`; the error says which step failed.
pub fn replace_file(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), (String, io::Error)> {
    let path = dir.join(name);
    let tmp = dir.join(format!("{name}.tmp"));
    let written = (|| {
        let mut f = crate::private::file_options()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(|e| (format!("creating {}", tmp.display()), e))?;
        f.write_all(bytes)
            .and_then(|()| f.sync_all())
            .map_err(|e| (format!("writing {}", tmp.display()), e))?;
        fs::rename(&tmp, &path).map_err(|e| (format!("replacing {}", path.display()), e))
    })();
    if written.is_err() {
        // Usually a full disk: the temporary would keep it full. `name`
        // itself is untouched (the old contents stay).
        let _ = fs::remove_file(&tmp);
    }
    written?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| (format!("syncing {}", dir.display()), e))
}

/// Where small atomically replaced files live: a directory of the real
/// filesystem ([`FsDir`], what the node uses) or any [`Storage`] (the
/// simulator's `SimStorage`, whose crash images then hold these files and
/// whose injected faults reach them).
pub trait ReplaceDir: Send + Sync + 'static {
    /// The file's bytes, or `None` if there is no such file.
    fn read(&self, name: &str) -> io::Result<Option<Vec<u8>>>;

    /// Replaces `name` with `bytes`, atomically and durably; the error says
    /// which step failed. After a failure the file holds the old bytes or
    /// the new ones (a crash decides which), never a mix.
    fn replace(&self, name: &str, bytes: &[u8]) -> Result<(), (String, io::Error)>;

    /// A human-readable location for error messages.
    fn describe(&self, name: &str) -> String;
}

/// A directory of the real filesystem: [`replace_file`] and `fs::read`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FsDir(pub PathBuf);

impl ReplaceDir for FsDir {
    fn read(&self, name: &str) -> io::Result<Option<Vec<u8>>> {
        match fs::read(self.0.join(name)) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn replace(&self, name: &str, bytes: &[u8]) -> Result<(), (String, io::Error)> {
        replace_file(&self.0, name, bytes)
    }

    fn describe(&self, name: &str) -> String {
        self.0.join(name).display().to_string()
    }
}

/// The same protocol on a [`Storage`]: `NAME.tmp` created with its data
/// durable (`Storage::create`), renamed over `NAME`, the directory synced.
/// A leftover `NAME.tmp` of a failed replacement is removed first (log
/// recovery removes it too: it ends in `.tmp`).
impl<S: Storage> ReplaceDir for S {
    fn read(&self, name: &str) -> io::Result<Option<Vec<u8>>> {
        if !self.list()?.iter().any(|n| n == name) {
            return Ok(None);
        }
        let file = self.open(name)?;
        // SAFETY: in bounds; files replaced this way are only ever created
        // whole, never written through `StorageFile::write`.
        Ok(Some(unsafe { file.bytes(0, file.len()) }.to_vec()))
    }

    fn replace(&self, name: &str, bytes: &[u8]) -> Result<(), (String, io::Error)> {
        let tmp = format!("{name}.tmp");
        if self.list().is_ok_and(|names| names.contains(&tmp)) {
            self.remove(&tmp)
                .map_err(|e| (format!("removing {}", self.describe(&tmp)), e))?;
        }
        self.create(&tmp, bytes, bytes.len())
            .map_err(|e| (format!("writing {}", self.describe(&tmp)), e))?;
        self.rename(&tmp, name)
            .map_err(|e| (format!("replacing {}", self.describe(name)), e))?;
        self.sync_dir().map_err(|e| {
            (
                format!("syncing the directory of {}", self.describe(name)),
                e,
            )
        })
    }

    fn describe(&self, name: &str) -> String {
        Storage::describe(self, name)
    }
}
