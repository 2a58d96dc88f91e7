//! Where segment files live: a directory of memory-mapped files in production
//! ([`FsStorage`]), or an in-memory model that records every write and sync
//! for crash testing (`crate::log::sim::SimStorage`).
//!
//! The log's logic is written once against these two traits, so the crash
//! tests exercise the same recovery and append code that runs in production.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use std::os::unix::fs::FileExt;

use memmap2::{MmapOptions, MmapRaw};

/// A directory of segment files.
pub trait Storage: Send + Sync + 'static {
    type File: StorageFile;

    /// Names of the files in the directory (not sorted).
    fn list(&self) -> io::Result<Vec<String>>;

    /// Creates `name` with `len` bytes: `prefix` followed by zeros, with the
    /// file's data durable before it appears under `name`. The directory entry
    /// is durable only after [`Storage::sync_dir`]. Fails if `name` exists.
    fn create(&self, name: &str, prefix: &[u8], len: usize) -> io::Result<()>;

    /// Opens (maps) an existing file for reading and writing.
    fn open(&self, name: &str) -> io::Result<Self::File>;

    fn remove(&self, name: &str) -> io::Result<()>;

    /// Atomically replaces `to` with `from`.
    fn rename(&self, from: &str, to: &str) -> io::Result<()>;

    /// Makes creations, renames and removals durable.
    fn sync_dir(&self) -> io::Result<()>;

    /// A human-readable location for error messages.
    fn describe(&self, name: &str) -> String;
}

/// One mapped file of fixed length.
pub trait StorageFile: Send + Sync + 'static {
    fn len(&self) -> usize;

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Copies `data` into the file at `off`. A failure (EIO, ENOSPC) leaves
    /// the range in an unknown state.
    ///
    /// # Safety
    /// No other thread may read or write `[off, off + data.len())` while this
    /// runs, and `off + data.len() <= len()`.
    unsafe fn write(&self, off: usize, data: &[u8]) -> io::Result<()>;

    /// Makes `[off, off + len)` durable (msync on the mapping).
    fn sync(&self, off: usize, len: usize) -> io::Result<()>;

    /// Borrows `[off, off + len)` of the file.
    ///
    /// # Safety
    /// No thread may write that range while the returned slice is alive, and
    /// `off + len <= len()`.
    unsafe fn bytes(&self, off: usize, len: usize) -> &[u8];
}

/// Segment files in a directory, memory-mapped with memmap2.
///
/// Opening takes an exclusive lock (flock) on the file `LOCK` in the
/// directory for as long as the storage lives: two logs appending to the
/// same files would silently overwrite each other's acknowledged batches.
pub struct FsStorage {
    dir: PathBuf,
    dir_file: File,
    _lock: File,
}

/// The lock file's name; recovery leaves it alone like any foreign file.
pub const LOCK_FILE: &str = "LOCK";

impl FsStorage {
    /// Opens `dir`, creating it (and its parents) if missing, and locks it.
    pub fn open(dir: impl AsRef<Path>) -> io::Result<FsStorage> {
        let dir = dir.as_ref().to_path_buf();
        crate::private::create_dir_all(&dir)?;
        let dir_file = File::open(&dir)?;
        let lock = crate::private::file_options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join(LOCK_FILE))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(io::Error::new(
                    io::ErrorKind::WouldBlock,
                    format!(
                        "log directory {} is in use: another process (or another Log in this one) holds its {LOCK_FILE} file",
                        dir.display()
                    ),
                ))
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(e),
        }
        Ok(FsStorage {
            dir,
            dir_file,
            _lock: lock,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Zeros are written in chunks of this size when a file is created. Writing
/// real zeros (rather than fallocate) matters: on ext4 and XFS a first write
/// into a fallocated, "unwritten" extent turns every later fdatasync into a
/// journal commit, which roughly doubles commit latency.
const ZERO_CHUNK_BYTES: usize = 1 << 20;

impl Storage for FsStorage {
    type File = FsFile;

    fn list(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            if let Ok(name) = entry.file_name().into_string() {
                names.push(name);
            }
        }
        Ok(names)
    }

    fn create(&self, name: &str, prefix: &[u8], len: usize) -> io::Result<()> {
        assert!(prefix.len() <= len);
        let final_path = self.dir.join(name);
        if final_path.exists() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} already exists", final_path.display()),
            ));
        }
        // Build the file under a temporary name so a crash never leaves a
        // half-written file under a segment's name.
        let tmp = self.dir.join(format!("{name}.tmp"));
        let built = (|| {
            let mut file = crate::private::file_options()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)?;
            file.write_all(prefix)?;
            let zeros = vec![0u8; ZERO_CHUNK_BYTES.min(len)];
            let mut written = prefix.len();
            while written < len {
                let n = (len - written).min(zeros.len());
                file.write_all(&zeros[..n])?;
                written += n;
            }
            file.sync_data()?;
            fs::rename(&tmp, &final_path)
        })();
        if built.is_err() {
            // A half-built temporary holds disk space, and the usual cause
            // is a full disk: leaving it would keep the disk full for every
            // retry (recovery removes one left by a crash). Best effort: the
            // original error is the one to report.
            let _ = fs::remove_file(&tmp);
        }
        built
    }

    fn open(&self, name: &str) -> io::Result<FsFile> {
        let path = self.dir.join(name);
        let file = OpenOptions::new().read(true).write(true).open(&path)?;
        let len = file.metadata()?.len();
        let len =
            usize::try_from(len).map_err(|_| io::Error::other("file larger than address space"))?;
        if len == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "file is empty"));
        }
        // Read-only mapping: appends go through pwrite (see FsFile).
        let map = MmapOptions::new().len(len).map_raw_read_only(&file)?;
        Ok(FsFile { map, file, len })
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        fs::remove_file(self.dir.join(name))
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        fs::rename(self.dir.join(from), self.dir.join(to))
    }

    fn sync_dir(&self) -> io::Result<()> {
        self.dir_file.sync_all()
    }

    fn describe(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

/// A segment file: read through a shared read-only mapping (zero-copy
/// views), written with `pwrite`.
///
/// Why not store through the mapping: on current kernels the page cache of
/// a file written in large chunks uses large folios (up to 1 MiB on ext4),
/// and the first store after a writeback marks every block of the folio
/// dirty, so each msync wrote ~326 KiB for a 144-byte batch and commit
/// latency doubled (measured with block tracing; see docs/design.md).
/// `pwrite` dirties only the blocks it touches, and the mapping sees the
/// bytes through the same page cache.
pub struct FsFile {
    map: MmapRaw,
    file: File,
    len: usize,
}

impl StorageFile for FsFile {
    fn len(&self) -> usize {
        self.len
    }

    unsafe fn write(&self, off: usize, data: &[u8]) -> io::Result<()> {
        assert!(off
            .checked_add(data.len())
            .is_some_and(|end| end <= self.len));
        // No memory is touched here: the kernel copies into the page cache.
        // The caller's exclusivity promise is what keeps readers of the
        // mapping from looking at a half-written range.
        self.file.write_all_at(data, off as u64)
    }

    fn sync(&self, off: usize, len: usize) -> io::Result<()> {
        // msync(MS_SYNC) of the range: like fdatasync (data and the metadata
        // needed to read it back) but limited to these pages, so the
        // durable-LSN hint dirtied in the header page does not cost a second
        // block write on every commit. memmap2 rounds the start down to a
        // page boundary.
        self.map.flush_range(off, len)
    }

    unsafe fn bytes(&self, off: usize, len: usize) -> &[u8] {
        assert!(off.checked_add(len).is_some_and(|end| end <= self.len));
        // SAFETY: in bounds (asserted), the mapping outlives the borrow of
        // self, and the caller guarantees nobody writes the range meanwhile.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr().add(off), len) }
    }
}
