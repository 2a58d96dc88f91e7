//! An in-memory [`Storage`] that records every file operation, so tests can
//! build the disk images a crash at any point could leave behind.
//!
//! The model of a crash: bytes written but not yet covered by a sync may or
//! may not be on disk, page by page (4 KiB); a page that is being written
//! back may be torn at sector (512 B) granularity. Directory changes
//! (create, rename, remove) may or may not survive until the directory is
//! synced. Synced bytes always survive.

use std::cell::UnsafeCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::sync::{Arc, Mutex};

use crate::log::storage::{Storage, StorageFile};

pub const SIM_PAGE_BYTES: usize = 4096;
pub const SIM_SECTOR_BYTES: usize = 512;

#[derive(Clone, Debug)]
enum Op {
    Create {
        id: u64,
        name: String,
        content: Vec<u8>,
    },
    Write {
        id: u64,
        off: usize,
        data: Vec<u8>,
    },
    Sync {
        id: u64,
        off: usize,
        len: usize,
    },
    Remove {
        name: String,
    },
    Rename {
        from: String,
        to: String,
    },
    SyncDir,
}

struct FileData {
    id: u64,
    /// Byte-wise interior mutability: a writer never forms a reference to
    /// the whole file while readers hold slices of other ranges.
    bytes: Box<[UnsafeCell<u8>]>,
}

impl FileData {
    fn new(id: u64, content: Vec<u8>) -> FileData {
        FileData {
            id,
            bytes: content.into_iter().map(UnsafeCell::new).collect(),
        }
    }

    fn ptr(&self) -> *mut u8 {
        UnsafeCell::raw_get(self.bytes.as_ptr())
    }
}

// SAFETY: access to `bytes` follows the StorageFile contract: the log has a
// single writer per range and never reads a range while it is written.
unsafe impl Sync for FileData {}

struct State {
    files: BTreeMap<String, Arc<FileData>>,
    /// Files (durable, with durable names) the journal starts from.
    base: Vec<(String, u64, Vec<u8>)>,
    journal: Vec<Op>,
    next_id: u64,
    /// Syncs left before every sync fails with EIO (fault injection).
    syncs_until_failure: Option<u64>,
}

/// See the module documentation.
#[derive(Clone)]
pub struct SimStorage {
    state: Arc<Mutex<State>>,
}

impl Default for SimStorage {
    fn default() -> Self {
        SimStorage::new()
    }
}

/// Which bytes that were not yet synced reach the disk image.
#[derive(Clone, Copy, Debug)]
pub enum CrashMode {
    /// Only synced bytes and synced directory changes.
    SyncedOnly,
    /// Everything written (what a process crash leaves: the page cache survives).
    Everything,
    /// Every unsynced page except those of the last write, which keeps only
    /// its first `sectors` sectors.
    TornLastWrite { sectors: usize },
    /// Each unsynced page, and the unsynced directory state, by coin flip.
    RandomPages { seed: u64 },
}

struct FileModel {
    durable: Vec<u8>,
    current: Vec<u8>,
    dirty: BTreeSet<usize>,
}

impl FileModel {
    /// A file whose content is all on disk.
    fn clean(content: &[u8]) -> FileModel {
        FileModel {
            durable: content.to_vec(),
            current: content.to_vec(),
            dirty: BTreeSet::new(),
        }
    }
}

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl SimStorage {
    pub fn new() -> SimStorage {
        SimStorage {
            state: Arc::new(Mutex::new(State {
                files: BTreeMap::new(),
                base: Vec::new(),
                journal: Vec::new(),
                next_id: 0,
                syncs_until_failure: None,
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("sim storage lock")
    }

    /// Number of operations recorded so far: a crash point.
    pub fn ops(&self) -> usize {
        self.lock().journal.len()
    }

    /// Crash points just before each sync and each directory operation
    /// (create, rename, remove, directory sync), plus the final state.
    pub fn sync_points(&self) -> Vec<usize> {
        let st = self.lock();
        let mut points: Vec<usize> = st
            .journal
            .iter()
            .enumerate()
            .filter(|(_, op)| !matches!(op, Op::Write { .. }))
            .map(|(i, _)| i)
            .collect();
        points.push(st.journal.len());
        points
    }

    /// After `n` more successful syncs, every sync fails with EIO.
    pub fn fail_syncs_after(&self, n: u64) {
        self.lock().syncs_until_failure = Some(n);
    }

    /// Current bytes of a file (for assertions).
    pub fn file_bytes(&self, name: &str) -> Option<Vec<u8>> {
        let st = self.lock();
        st.files.get(name).map(|f| {
            // SAFETY: in bounds; tests call this while no log writes the file.
            unsafe { std::slice::from_raw_parts(f.ptr(), f.bytes.len()).to_vec() }
        })
    }

    /// Overwrites bytes of a file directly (to inject corruption), unrecorded.
    pub fn corrupt(&self, name: &str, off: usize, data: &[u8]) {
        let st = self.lock();
        let f = st.files.get(name).expect("file exists");
        // SAFETY: tests call this while no log uses the storage.
        assert!(off + data.len() <= f.bytes.len());
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), f.ptr().add(off), data.len()) }
    }

    /// The storage a crash after the first `upto` recorded operations could
    /// leave, per `mode`. The image starts a fresh journal.
    pub fn crash_image(&self, upto: usize, mode: CrashMode) -> SimStorage {
        let st = self.lock();
        assert!(upto <= st.journal.len());
        let mut files: HashMap<u64, FileModel> = HashMap::new();
        let mut dir_current: BTreeMap<String, u64> = BTreeMap::new();
        let mut dir_durable: BTreeMap<String, u64> = BTreeMap::new();
        let mut last_write: Option<(u64, usize, usize)> = None;
        for (name, id, content) in &st.base {
            files.insert(*id, FileModel::clean(content));
            dir_current.insert(name.clone(), *id);
            dir_durable.insert(name.clone(), *id);
        }
        for op in &st.journal[..upto] {
            match op {
                Op::Create { id, name, content } => {
                    files.insert(*id, FileModel::clean(content));
                    dir_current.insert(name.clone(), *id);
                }
                Op::Write { id, off, data } => {
                    let f = files.get_mut(id).expect("write to a created file");
                    f.current[*off..*off + data.len()].copy_from_slice(data);
                    for page in *off / SIM_PAGE_BYTES..(*off + data.len()).div_ceil(SIM_PAGE_BYTES)
                    {
                        f.dirty.insert(page);
                    }
                    last_write = Some((*id, *off, data.len()));
                }
                Op::Sync { id, off, len } => {
                    let f = files.get_mut(id).expect("sync of a created file");
                    for page in *off / SIM_PAGE_BYTES..(*off + *len).div_ceil(SIM_PAGE_BYTES) {
                        if f.dirty.remove(&page) {
                            let r = page * SIM_PAGE_BYTES
                                ..((page + 1) * SIM_PAGE_BYTES).min(f.current.len());
                            let cur = f.current[r.clone()].to_vec();
                            f.durable[r].copy_from_slice(&cur);
                        }
                    }
                }
                Op::Remove { name } => {
                    dir_current.remove(name);
                }
                Op::Rename { from, to } => {
                    let id = dir_current
                        .remove(from)
                        .expect("rename of an existing file");
                    dir_current.insert(to.clone(), id);
                }
                Op::SyncDir => dir_durable = dir_current.clone(),
            }
        }
        let mut rng = match mode {
            CrashMode::RandomPages { seed } => seed,
            _ => 0,
        };
        let dir = match mode {
            CrashMode::Everything => dir_current,
            CrashMode::RandomPages { .. } if splitmix(&mut rng).is_multiple_of(2) => dir_current,
            _ => dir_durable,
        };
        let mut image = State {
            files: BTreeMap::new(),
            base: Vec::new(),
            journal: Vec::new(),
            next_id: st.next_id,
            syncs_until_failure: None,
        };
        for (name, id) in dir {
            let f = &files[&id];
            let mut bytes = f.durable.clone();
            for &page in &f.dirty {
                let r = page * SIM_PAGE_BYTES..((page + 1) * SIM_PAGE_BYTES).min(bytes.len());
                let take = match mode {
                    CrashMode::SyncedOnly => false,
                    CrashMode::Everything => true,
                    CrashMode::RandomPages { .. } => splitmix(&mut rng).is_multiple_of(2),
                    CrashMode::TornLastWrite { sectors } => match last_write {
                        Some((wid, off, len))
                            if wid == id && r.start < off + len && off < r.end =>
                        {
                            // Sectors of this page inside the kept prefix of the write.
                            let kept_end = (off / SIM_SECTOR_BYTES + sectors) * SIM_SECTOR_BYTES;
                            let mut s = r.start;
                            while s < r.end {
                                if s < kept_end {
                                    let e = (s + SIM_SECTOR_BYTES).min(r.end);
                                    bytes[s..e].copy_from_slice(&f.current[s..e]);
                                }
                                s += SIM_SECTOR_BYTES;
                            }
                            false
                        }
                        _ => true,
                    },
                };
                if take {
                    bytes[r.clone()].copy_from_slice(&f.current[r]);
                }
            }
            image.base.push((name.clone(), id, bytes.clone()));
            image.files.insert(name, Arc::new(FileData::new(id, bytes)));
        }
        SimStorage {
            state: Arc::new(Mutex::new(image)),
        }
    }
}

impl Storage for SimStorage {
    type File = SimFile;

    fn list(&self) -> io::Result<Vec<String>> {
        Ok(self.lock().files.keys().cloned().collect())
    }

    fn create(&self, name: &str, prefix: &[u8], len: usize) -> io::Result<()> {
        let mut st = self.lock();
        if st.files.contains_key(name) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{name} exists"),
            ));
        }
        let mut content = vec![0u8; len];
        content[..prefix.len()].copy_from_slice(prefix);
        let id = st.next_id;
        st.next_id += 1;
        st.journal.push(Op::Create {
            id,
            name: name.to_string(),
            content: content.clone(),
        });
        st.files
            .insert(name.to_string(), Arc::new(FileData::new(id, content)));
        Ok(())
    }

    fn open(&self, name: &str) -> io::Result<SimFile> {
        let st = self.lock();
        let data =
            st.files.get(name).cloned().ok_or_else(|| {
                io::Error::new(io::ErrorKind::NotFound, format!("{name} not found"))
            })?;
        Ok(SimFile {
            data,
            storage: self.clone(),
        })
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        let mut st = self.lock();
        if st.files.remove(name).is_none() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{name} not found"),
            ));
        }
        st.journal.push(Op::Remove {
            name: name.to_string(),
        });
        Ok(())
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let mut st = self.lock();
        let f = st
            .files
            .remove(from)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{from} not found")))?;
        st.files.insert(to.to_string(), f);
        st.journal.push(Op::Rename {
            from: from.to_string(),
            to: to.to_string(),
        });
        Ok(())
    }

    fn sync_dir(&self) -> io::Result<()> {
        self.lock().journal.push(Op::SyncDir);
        Ok(())
    }

    fn describe(&self, name: &str) -> String {
        format!("sim:{name}")
    }
}

/// A file of [`SimStorage`].
pub struct SimFile {
    data: Arc<FileData>,
    storage: SimStorage,
}

impl StorageFile for SimFile {
    fn len(&self) -> usize {
        self.data.bytes.len()
    }

    unsafe fn write(&self, off: usize, data: &[u8]) -> io::Result<()> {
        let mut st = self.storage.lock();
        st.journal.push(Op::Write {
            id: self.data.id,
            off,
            data: data.to_vec(),
        });
        // SAFETY: the caller guarantees exclusive access to the range; the
        // journal lock additionally serialises writers.
        assert!(off + data.len() <= self.data.bytes.len());
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.data.ptr().add(off), data.len())
        };
        Ok(())
    }

    fn sync(&self, off: usize, len: usize) -> io::Result<()> {
        let mut st = self.storage.lock();
        if let Some(left) = st.syncs_until_failure.as_mut() {
            if *left == 0 {
                return Err(io::Error::from_raw_os_error(5));
            }
            *left -= 1;
        }
        st.journal.push(Op::Sync {
            id: self.data.id,
            off,
            len,
        });
        Ok(())
    }

    unsafe fn bytes(&self, off: usize, len: usize) -> &[u8] {
        // SAFETY: the caller guarantees nobody writes the range meanwhile.
        assert!(off + len <= self.data.bytes.len());
        unsafe { std::slice::from_raw_parts(self.data.ptr().add(off), len) }
    }
}
