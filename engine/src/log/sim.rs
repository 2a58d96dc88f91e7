//! An in-memory [`Storage`] that records every file operation, so tests can
//! build the disk images a crash at any point could leave behind.
//!
//! The model of a crash: bytes written but not yet covered by a sync may or
//! may not be on disk, page by page (4 KiB); a page that is being written
//! back may be torn at sector (512 B) granularity. Directory changes
//! (create, rename, remove) may or may not survive until the directory is
//! synced. Synced bytes always survive.
//!
//! Faults it injects, each armed by a method and disarmed by [`SimStorage::heal`]
//! (a crash image always starts on a sound disk):
//!
//! * failed syncs (`fail_syncs_after`): EIO, nothing made durable;
//! * failed writes (`fail_writes_after`, `fail_writes_randomly`): EIO or
//!   ENOSPC; the failed write changes nothing (a real one leaves the range
//!   unknown: the log treats it so and poisons itself);
//! * failed creates and renames (`fail_creates_after`): ENOSPC (a full
//!   directory or disk); removals never fail, they free space;
//! * failed opens (`fail_opens_after`): the one read path that can fail.
//!   A file's bytes are read through the mapping (`StorageFile::bytes`),
//!   which cannot return an error, so a failed *read* of stored data is
//!   modelled as what a disk returns instead: a corrupted page
//!   (`flip_bit`, a bit flip recorded in the journal, so it is in every
//!   later crash image), which recovery must detect by checksum;
//! * a lying sync (`lie_on_syncs_after`): syncs, directory syncs and the
//!   data sync of a create report success but make nothing durable, so a
//!   crash image may drop what they "hardened" (as a volatile write cache
//!   that ignores flushes would). Nothing on this node can see the lie
//!   until a checksum, the durable-LSN hint or a partner's copy shows it.

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
    /// A bit flipped on the medium: in the durable and the current bytes.
    Flip {
        id: u64,
        off: usize,
        mask: u8,
    },
}

/// When an armed fault fires: after `left` more operations that succeed,
/// every one (or, with `per_million` below a million, each by chance).
#[derive(Clone, Copy, Debug)]
struct Trigger {
    left: u64,
    per_million: u32,
    rng: u64,
    errno: i32,
    /// Failures left before it disarms (`u64::MAX`: never disarms).
    times: u64,
}

impl Trigger {
    fn after(n: u64, errno: i32) -> Trigger {
        Trigger {
            left: n,
            per_million: 1_000_000,
            rng: 0,
            errno,
            times: u64::MAX,
        }
    }

    /// Whether this operation fails.
    fn fires(&mut self) -> bool {
        if self.left > 0 {
            self.left -= 1;
            return false;
        }
        if self.times == 0 {
            return false;
        }
        let fires = self.per_million >= 1_000_000
            || splitmix(&mut self.rng) % 1_000_000 < self.per_million as u64;
        if fires && self.times != u64::MAX {
            self.times -= 1;
        }
        fires
    }
}

/// The faults armed on a storage (see the module documentation).
#[derive(Clone, Copy, Debug, Default)]
struct Faults {
    syncs: Option<Trigger>,
    writes: Option<Trigger>,
    creates: Option<Trigger>,
    opens: Option<Trigger>,
    lies: Option<Trigger>,
}

/// errno of an I/O error.
pub const EIO: i32 = 5;
/// errno of a full disk.
pub const ENOSPC: i32 = 28;

/// What the injected faults did so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultCounts {
    pub failed_syncs: u64,
    pub failed_writes: u64,
    pub failed_creates: u64,
    pub failed_opens: u64,
    /// Syncs (file, directory, or a create's data sync) that lied.
    pub lies: u64,
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
    faults: Faults,
    counts: FaultCounts,
}

/// See the module documentation.
#[derive(Clone)]
pub struct SimStorage {
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for SimStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.lock();
        f.debug_struct("SimStorage")
            .field("files", &st.files.keys().collect::<Vec<_>>())
            .field("ops", &st.journal.len())
            .field("faults", &st.faults)
            .finish()
    }
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
                faults: Faults::default(),
                counts: FaultCounts::default(),
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

    /// After `n` more successful syncs, every sync fails with EIO
    /// (`u64::MAX`: never).
    pub fn fail_syncs_after(&self, n: u64) {
        self.lock().faults.syncs = Some(Trigger::after(n, EIO));
    }

    /// After `n` more successful writes, every write fails with `errno`
    /// ([`EIO`] or [`ENOSPC`]) and changes nothing.
    pub fn fail_writes_after(&self, n: u64, errno: i32) {
        self.lock().faults.writes = Some(Trigger::after(n, errno));
    }

    /// The next `times` writes fail with `errno` and change nothing; later
    /// ones succeed (a transient failure: a copy-on-write file system out
    /// of space for one write, then not).
    pub fn fail_next_writes(&self, times: u64, errno: i32) {
        self.lock().faults.writes = Some(Trigger {
            times,
            ..Trigger::after(0, errno)
        });
    }

    /// Each write fails with `errno` with probability `per_million` / 10^6,
    /// drawn from `seed` (so a run replays).
    pub fn fail_writes_randomly(&self, per_million: u32, seed: u64, errno: i32) {
        self.lock().faults.writes = Some(Trigger {
            left: 0,
            per_million,
            rng: seed,
            errno,
            times: u64::MAX,
        });
    }

    /// After `n` more successful creates and renames, every create and
    /// rename fails with `errno` (usually [`ENOSPC`]) and changes nothing.
    pub fn fail_creates_after(&self, n: u64, errno: i32) {
        self.lock().faults.creates = Some(Trigger::after(n, errno));
    }

    /// After `n` more successful opens, every open fails with `errno`.
    pub fn fail_opens_after(&self, n: u64, errno: i32) {
        self.lock().faults.opens = Some(Trigger::after(n, errno));
    }

    /// After `n` more honest syncs, every sync (of a file's range, of the
    /// directory, and a create's data sync) reports success and makes
    /// nothing durable.
    pub fn lie_on_syncs_after(&self, n: u64) {
        self.lock().faults.lies = Some(Trigger::after(n, 0));
    }

    /// Disarms every fault (a repaired or replaced disk).
    pub fn heal(&self) {
        self.lock().faults = Faults::default();
    }

    /// What the faults did so far (this storage only, not its images).
    pub fn fault_counts(&self) -> FaultCounts {
        self.lock().counts
    }

    /// Whether syncs have lied since this storage (or image) began.
    pub fn has_lied(&self) -> bool {
        self.lock().counts.lies > 0
    }

    /// Flips bit `bit` of byte `off` of `name` on the medium: the page now
    /// reads back wrong, in this storage and in every later crash image
    /// (a read fault; see the module documentation).
    pub fn flip_bit(&self, name: &str, off: usize, bit: u8) {
        assert!(bit < 8);
        let mut st = self.lock();
        let f = st.files.get(name).cloned().expect("file exists");
        assert!(off < f.bytes.len());
        let mask = 1u8 << bit;
        // SAFETY: in bounds (asserted); tests flip bits while no log
        // writes this byte.
        unsafe { *f.ptr().add(off) ^= mask };
        st.journal.push(Op::Flip {
            id: f.id,
            off,
            mask,
        });
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
                Op::Flip { id, off, mask } => {
                    let f = files.get_mut(id).expect("flip in a created file");
                    f.current[*off] ^= mask;
                    f.durable[*off] ^= mask;
                }
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
            faults: Faults::default(),
            counts: FaultCounts::default(),
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

impl State {
    /// Whether this sync lies (counted).
    fn lies(&mut self) -> bool {
        let lie = self.faults.lies.as_mut().is_some_and(Trigger::fires);
        if lie {
            self.counts.lies += 1;
        }
        lie
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
        if let Some(t) = st.faults.creates.as_mut() {
            if t.fires() {
                let errno = t.errno;
                st.counts.failed_creates += 1;
                return Err(io::Error::from_raw_os_error(errno));
            }
        }
        let mut content = vec![0u8; len];
        content[..prefix.len()].copy_from_slice(prefix);
        let id = st.next_id;
        st.next_id += 1;
        if st.lies() {
            // The data sync lied: the file appears with zeros, its prefix
            // only written (dirty pages a crash may drop).
            st.journal.push(Op::Create {
                id,
                name: name.to_string(),
                content: vec![0u8; len],
            });
            st.journal.push(Op::Write {
                id,
                off: 0,
                data: prefix.to_vec(),
            });
        } else {
            st.journal.push(Op::Create {
                id,
                name: name.to_string(),
                content: content.clone(),
            });
        }
        st.files
            .insert(name.to_string(), Arc::new(FileData::new(id, content)));
        Ok(())
    }

    fn open(&self, name: &str) -> io::Result<SimFile> {
        let mut st = self.lock();
        if let Some(t) = st.faults.opens.as_mut() {
            if t.fires() {
                let errno = t.errno;
                st.counts.failed_opens += 1;
                return Err(io::Error::from_raw_os_error(errno));
            }
        }
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
        if !st.files.contains_key(from) {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{from} not found"),
            ));
        }
        if let Some(t) = st.faults.creates.as_mut() {
            if t.fires() {
                let errno = t.errno;
                st.counts.failed_creates += 1;
                return Err(io::Error::from_raw_os_error(errno));
            }
        }
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
        let mut st = self.lock();
        if !st.lies() {
            st.journal.push(Op::SyncDir);
        }
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
        if let Some(t) = st.faults.writes.as_mut() {
            if t.fires() {
                let errno = t.errno;
                st.counts.failed_writes += 1;
                return Err(io::Error::from_raw_os_error(errno));
            }
        }
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
        if let Some(t) = st.faults.syncs.as_mut() {
            if t.fires() {
                st.counts.failed_syncs += 1;
                return Err(io::Error::from_raw_os_error(EIO));
            }
        }
        if st.lies() {
            return Ok(());
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
