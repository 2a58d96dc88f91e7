//! Where segment files live: a directory of memory-mapped files in production
//! ([`FsStorage`]), or an in-memory model that records every write and sync
//! for crash testing (`crate::log::sim::SimStorage`).
//!
//! The log's logic is written once against these two traits, so the crash
//! tests exercise the same recovery and append code that runs in production.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use memmap2::MmapRaw;

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

    /// Copies `data` into the file at `off`.
    ///
    /// # Safety
    /// No other thread may read or write `[off, off + data.len())` while this
    /// runs, and `off + data.len() <= len()`.
    unsafe fn write(&self, off: usize, data: &[u8]);

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
pub struct FsStorage {
    dir: PathBuf,
    dir_file: File,
}

impl FsStorage {
    /// Opens `dir`, creating it (and its parents) if missing.
    pub fn open(dir: impl AsRef<Path>) -> io::Result<FsStorage> {
        let dir = dir.as_ref().to_path_buf();
        fs::create_dir_all(&dir)?;
        let dir_file = File::open(&dir)?;
        Ok(FsStorage { dir, dir_file })
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
        let mut file = OpenOptions::new()
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
        let map = MmapRaw::map_raw(&file)?;
        Ok(FsFile { map, len })
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

/// A memory-mapped segment file.
pub struct FsFile {
    map: MmapRaw,
    len: usize,
}

impl StorageFile for FsFile {
    fn len(&self) -> usize {
        self.len
    }

    unsafe fn write(&self, off: usize, data: &[u8]) {
        assert!(off
            .checked_add(data.len())
            .is_some_and(|end| end <= self.len));
        // SAFETY: the range is inside the mapping (asserted above), the
        // mapping lives as long as self, and the caller guarantees that no
        // other thread touches this range concurrently.
        unsafe {
            std::ptr::copy_nonoverlapping(
                data.as_ptr(),
                self.map.as_mut_ptr().add(off),
                data.len(),
            );
        }
    }

    fn sync(&self, off: usize, len: usize) -> io::Result<()> {
        // memmap2 rounds the start down to a page boundary; msync(MS_SYNC)
        // writes back the dirty pages of the range and, like fdatasync, the
        // metadata needed to read them back.
        self.map.flush_range(off, len)
    }

    unsafe fn bytes(&self, off: usize, len: usize) -> &[u8] {
        assert!(off.checked_add(len).is_some_and(|end| end <= self.len));
        // SAFETY: in bounds (asserted), the mapping outlives the borrow of
        // self, and the caller guarantees nobody writes the range meanwhile.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr().add(off), len) }
    }
}
