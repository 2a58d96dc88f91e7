//! The log: a directory of memory-mapped segment files holding batch frames.
//!
//! One writer appends; any number of readers read complete, checksummed
//! batches below the published *written* LSN through zero-copy views into the
//! maps. Durability is explicit: [`Log::sync`] msyncs what was written since
//! the last sync and advances the *hardened* LSN. A failed sync poisons the
//! log for good (no retry: a retried fsync can report success for data the
//! kernel already dropped).
//!
//! Invariants, asserted where they can break:
//! `start <= hardened <= written`, frames never span segments, segments are
//! contiguous (`next.base == prev.base + prev.capacity`), epochs never go
//! backwards along the log.

pub mod error;
pub mod frame;
mod recovery;
pub mod segment;
pub mod sim;
pub mod storage;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock};

pub use error::{AppendError, OpenError, ReadError, SyncError, TruncateError};
pub use frame::{Compression, FrameHeader, Records, RecordsBuf};
pub use recovery::{RecoveryReport, TailCut};
pub use storage::{FsStorage, Storage, StorageFile};

use frame::{Encoder, Payload, FRAME_HEADER_BYTES};
use segment::{encode_segment_header, segment_name, Segment, SegmentRef, SEGMENT_HEADER_BYTES};

/// Options for opening a log.
#[derive(Clone, Debug)]
pub struct LogOptions {
    /// Size of each new segment file, header included. A multiple of 4096,
    /// from 8 KiB to 4 GiB. Existing segments keep the size they were made with.
    pub segment_bytes: usize,
    /// Compression of new batches.
    pub compression: Compression,
}

impl Default for LogOptions {
    fn default() -> LogOptions {
        LogOptions {
            segment_bytes: segment::SEGMENT_BYTES_DEFAULT,
            compression: Compression::Zstd(1),
        }
    }
}

impl LogOptions {
    pub fn validate(&self) -> Result<(), OpenError> {
        let b = self.segment_bytes;
        if !b.is_multiple_of(segment::PAGE_BYTES)
            || !(segment::SEGMENT_BYTES_MIN..=segment::SEGMENT_BYTES_MAX).contains(&b)
        {
            return Err(OpenError::BadOption(format!(
                "segment_bytes must be a multiple of 4096 between {} and {}; got {b}",
                segment::SEGMENT_BYTES_MIN,
                segment::SEGMENT_BYTES_MAX
            )));
        }
        if let Compression::Zstd(level) = self.compression {
            let range = zstd::compression_level_range();
            if !range.contains(&level) {
                return Err(OpenError::BadOption(format!(
                    "zstd compression level must be in {}..={}; got {level}",
                    range.start(),
                    range.end()
                )));
            }
        }
        Ok(())
    }

    fn capacity(&self) -> u64 {
        (self.segment_bytes - SEGMENT_HEADER_BYTES) as u64
    }
}

/// Where an appended batch landed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchPos {
    pub lsn_start: u64,
    pub lsn_end: u64,
    pub epoch: u64,
    pub record_count: u32,
    /// The payload's bytes as stored (after compression; no header or
    /// alignment padding).
    pub stored_bytes: u32,
}

struct Writer {
    encoder: Encoder,
    last_epoch: u64,
}

/// A write-ahead log of batch frames in memory-mapped segment files.
pub struct Log<S: Storage = FsStorage> {
    storage: S,
    options: LogOptions,
    /// Open segments, sorted and contiguous. Readers clone the `Arc`s they
    /// need and drop the lock at once.
    segments: RwLock<Vec<SegmentRef<S::File>>>,
    writer: Mutex<Writer>,
    sync_lock: Mutex<()>,
    start: AtomicU64,
    written: AtomicU64,
    hardened: AtomicU64,
    poison: OnceLock<String>,
    /// The next segment prepared ahead of time, and retired segment files
    /// kept for reuse (see [`Log::prepare_next_segment`]).
    spares: Mutex<Spares>,
    /// Base LSN of the prepared spare (`u64::MAX`: none), readable without
    /// the lock.
    spare_base: AtomicU64,
    /// Makes free-file names unique (a retired spare and a later retired
    /// segment can have the same base).
    free_serial: AtomicU64,
    /// Truncations so far: lets group commit notice a cut under its feet.
    truncations: AtomicU64,
    /// A group commit runs on this log: truncation must go through it
    /// (`GroupCommit::truncate`), which pauses the appender and rewinds the
    /// commit watermarks.
    attached: std::sync::atomic::AtomicBool,
    /// Signalled whenever the written or hardened LSN moves (the session
    /// thread that ships this log sleeps on it); see [`Log::set_watcher`].
    watcher: std::sync::RwLock<Option<Arc<crate::wake::Wakeup>>>,
    has_watcher: std::sync::atomic::AtomicBool,
}

#[derive(Default)]
struct Spares {
    spare: Option<u64>,
    free: Vec<String>,
}

/// Retired segment files kept for reuse. Two cover a steady state (one
/// being filled, one prepared); more would only hold disk space.
const FREE_FILES_MAX: usize = 2;

fn spare_name(base: u64) -> String {
    format!("{}{}", segment_name(base), recovery::SPARE_SUFFIX)
}

fn free_name_with(old_base: u64, serial: u64) -> String {
    format!(
        "{}.{serial}{}",
        segment_name(old_base),
        recovery::FREE_SUFFIX
    )
}

impl Log<FsStorage> {
    /// Opens (or creates) the log in `dir`, recovering it: see [`Log::open_with`].
    pub fn open(
        dir: impl AsRef<Path>,
        options: LogOptions,
    ) -> Result<(Log, RecoveryReport), OpenError> {
        let dir = dir.as_ref();
        let storage = FsStorage::open(dir).map_err(|source| OpenError::Io {
            context: format!("opening log directory {}", dir.display()),
            source,
        })?;
        Log::open_with(storage, options)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a log lock means an invariant assertion fired;
    // carrying on would risk the log, so propagate it.
    m.lock().expect("log lock poisoned by a panic")
}

impl<S: Storage> Log<S> {
    /// Opens a log on `storage`: verifies every segment header and every
    /// batch checksum, cuts a torn tail (reported in the [`RecoveryReport`]),
    /// refuses a log with damage in the middle, and makes everything it kept
    /// durable. An empty directory becomes an empty log.
    pub fn open_with(
        storage: S,
        options: LogOptions,
    ) -> Result<(Log<S>, RecoveryReport), OpenError> {
        options.validate()?;
        let encoder = Encoder::new(options.compression).map_err(|source| OpenError::Io {
            context: "creating zstd compressor".into(),
            source,
        })?;
        let recovered = recovery::recover(&storage, &options)?;
        let log = Log {
            storage,
            options,
            segments: RwLock::new(recovered.segments),
            writer: Mutex::new(Writer {
                encoder,
                last_epoch: recovered.last_epoch,
            }),
            sync_lock: Mutex::new(()),
            start: AtomicU64::new(recovered.start),
            written: AtomicU64::new(recovered.end),
            hardened: AtomicU64::new(recovered.end),
            poison: OnceLock::new(),
            spares: Mutex::new(Spares::default()),
            spare_base: AtomicU64::new(u64::MAX),
            free_serial: AtomicU64::new(0),
            truncations: AtomicU64::new(0),
            attached: std::sync::atomic::AtomicBool::new(false),
            watcher: RwLock::new(None),
            has_watcher: std::sync::atomic::AtomicBool::new(false),
        };
        Ok((log, recovered.report))
    }

    pub fn options(&self) -> &LogOptions {
        &self.options
    }

    /// First LSN still in the log.
    pub fn start_lsn(&self) -> u64 {
        self.start.load(Ordering::Acquire)
    }

    /// End of the last complete batch; readers see everything below it.
    pub fn written_lsn(&self) -> u64 {
        self.written.load(Ordering::Acquire)
    }

    /// Everything below this LSN is durable on this node.
    pub fn hardened_lsn(&self) -> u64 {
        self.hardened.load(Ordering::Acquire)
    }

    /// Epoch of the last batch in the log (0 for an empty log).
    pub fn last_epoch(&self) -> u64 {
        lock(&self.writer).last_epoch
    }

    /// How many truncations cut this log since it was opened.
    pub fn truncations(&self) -> u64 {
        self.truncations.load(Ordering::Acquire)
    }

    fn free_name(&self, old_base: u64) -> String {
        free_name_with(old_base, self.free_serial.fetch_add(1, Ordering::Relaxed))
    }

    /// Why the log stopped accepting writes, if it did.
    pub fn poisoned(&self) -> Option<&str> {
        self.poison.get().map(String::as_str)
    }

    fn poison(&self, why: String) -> String {
        let _ = self.poison.set(why);
        self.poison.get().expect("just set").clone()
    }

    fn segments_snapshot(&self) -> Vec<SegmentRef<S::File>> {
        self.segments
            .read()
            .expect("segments lock poisoned")
            .clone()
    }

    fn last_segment(&self) -> SegmentRef<S::File> {
        let segs = self.segments.read().expect("segments lock poisoned");
        segs.last().expect("a log always has a segment").clone()
    }

    /// Encodes `records` as one batch of `epoch` and appends it. The batch is
    /// readable at once and durable after the next [`Log::sync`].
    pub fn append(&self, epoch: u64, records: &RecordsBuf) -> Result<BatchPos, AppendError> {
        if records.is_empty() {
            return Err(AppendError::Empty);
        }
        if records.raw_bytes() > frame::BATCH_RAW_BYTES_MAX {
            return Err(AppendError::TooLarge {
                frame_bytes: records.raw_bytes(),
                capacity: self.options.capacity(),
            });
        }
        let mut writer = lock(&self.writer);
        self.check_append(&writer, epoch)?;
        let writer = &mut *writer;
        let payload = writer.encoder.payload(records);
        let pos = self.place(epoch, &payload, None)?;
        writer.last_epoch = epoch;
        Ok(pos)
    }

    /// Appends a frame produced by another node's log (the mirror's path).
    /// The frame must pass its checksum and start exactly where this log
    /// would place it, so partners' logs stay byte-identical.
    pub fn append_frame(&self, frame_bytes: &[u8]) -> Result<BatchPos, AppendError> {
        let (header, stored) = frame::check_frame(frame_bytes)?;
        let mut writer = lock(&self.writer);
        self.check_append(&writer, header.epoch)?;
        let payload = Payload {
            codec: header.codec,
            stored,
            raw_bytes: header.raw_bytes,
            record_count: header.record_count,
        };
        let pos = self.place(header.epoch, &payload, Some(header.base_lsn))?;
        writer.last_epoch = header.epoch;
        Ok(pos)
    }

    fn check_append(&self, writer: &Writer, epoch: u64) -> Result<(), AppendError> {
        if let Some(why) = self.poisoned() {
            return Err(AppendError::Poisoned(why.to_string()));
        }
        if epoch == 0 {
            // 0 stands for "no batch" wherever epochs are compared.
            return Err(AppendError::EpochZero);
        }
        if epoch < writer.last_epoch {
            return Err(AppendError::EpochRegression {
                last: writer.last_epoch,
                got: epoch,
            });
        }
        Ok(())
    }

    /// Writes a frame at the end of the log. Caller holds the writer lock.
    fn place(
        &self,
        epoch: u64,
        payload: &Payload<'_>,
        expect_lsn: Option<u64>,
    ) -> Result<BatchPos, AppendError> {
        let frame_len = frame::frame_bytes_for(payload.stored.len());
        let mut seg = self.last_segment();
        let mut lsn = self.written.load(Ordering::Acquire);
        assert!(
            lsn >= seg.base_lsn && lsn <= seg.end_lsn(),
            "written LSN outside the last segment"
        );
        if lsn + frame_len as u64 > seg.end_lsn() {
            // The frame does not fit: the rest of this segment is padding
            // and the frame starts the next segment.
            if frame_len as u64 > self.options.capacity() {
                return Err(AppendError::TooLarge {
                    frame_bytes: frame_len,
                    capacity: self.options.capacity(),
                });
            }
            if let Some(got) = expect_lsn {
                if got != seg.end_lsn() {
                    return Err(AppendError::UnexpectedLsn {
                        expected: seg.end_lsn(),
                        got,
                    });
                }
            }
            // Make the sealed segment's tail durable before any byte lands in
            // the next one. Otherwise writeback could persist the new
            // segment's batch but not the tail, and recovery would take the
            // tail's space for padding: a log with a hole.
            // The sealed segment's own hint then says where its batches
            // end, so recovery can tell its padding from a lost tail.
            {
                let guard = lock(&self.sync_lock);
                self.sync_locked(&guard)
                    .map_err(|SyncError::Poisoned(why)| AppendError::Poisoned(why))?;
                // SAFETY: header writers hold the sync lock, which we hold.
                let sealed =
                    unsafe { seg.write_durable_hint(lsn) }.and_then(|()| seg.sync_header());
                if let Err(source) = sealed {
                    let context =
                        format!("recording the end of {}", self.storage.describe(&seg.name));
                    self.poison(format!("{context}: {source}"));
                    return Err(AppendError::Io { context, source });
                }
            }
            seg = self.roll(seg.end_lsn(), lsn)?;
            lsn = seg.base_lsn;
        } else if let Some(got) = expect_lsn {
            if got != lsn {
                return Err(AppendError::UnexpectedLsn { expected: lsn, got });
            }
        }
        let mut header = [0u8; FRAME_HEADER_BYTES];
        frame::encode_header(epoch, lsn, payload, &mut header);
        let padding = frame_len - FRAME_HEADER_BYTES - payload.stored.len();
        // SAFETY: we hold the writer lock, so we are the only writer, and
        // [lsn, lsn + frame_len) is at or beyond the published written LSN,
        // which no reader reads past. The frame fits the segment (checked).
        let written = unsafe {
            seg.write_log_bytes(lsn, &header)
                .and_then(|()| seg.write_log_bytes(lsn + FRAME_HEADER_BYTES as u64, payload.stored))
                .and_then(|()| match padding {
                    0 => Ok(()),
                    n => seg.write_log_bytes(
                        lsn + (frame_len - n) as u64,
                        &[0u8; frame::FRAME_ALIGN][..n],
                    ),
                })
        };
        if let Err(source) = written {
            let context = format!(
                "writing batch at LSN {lsn} to {}",
                self.storage.describe(&seg.name)
            );
            // The bytes past the written LSN are now unknown. Nothing below
            // it was touched and nothing was synced, so for a full disk (a
            // copy-on-write file system can need space even to overwrite)
            // zeroing the range again makes the log exactly what it was,
            // and the next append may retry there: a shorter frame must not
            // leave part of this one behind, where recovery could take it
            // for a batch. If even that fails, nothing more may be
            // appended after those bytes.
            let restored = error::is_disk_full(&source)
                // SAFETY: as for the writes above: we hold the writer lock
                // and the range lies beyond the published written LSN.
                && unsafe { seg.write_log_bytes(lsn, &vec![0u8; frame_len]) }.is_ok();
            if !restored {
                self.poison(format!("{context}: {source}"));
            }
            return Err(AppendError::Io { context, source });
        }
        let end = lsn + frame_len as u64;
        // Release: a reader that sees the new written LSN sees the bytes.
        self.written.store(end, Ordering::Release);
        self.notify_watcher();
        Ok(BatchPos {
            lsn_start: lsn,
            lsn_end: end,
            epoch,
            record_count: payload.record_count,
            stored_bytes: payload.stored.len() as u32,
        })
    }

    /// Starts the segment at `base`: the prepared spare if there is one
    /// (a rename), otherwise a new file (64 MiB of zeros by default, on the
    /// appender's time). Seals the current last segment at `data_end`.
    fn roll(&self, base: u64, data_end: u64) -> Result<SegmentRef<S::File>, AppendError> {
        let name = segment_name(base);
        // Wait for a preparation in progress rather than start a second
        // file: it is already part-way through the same work (and competing
        // with it for the disk would only make both slower).
        // The guard is held until the new segment is in the list, so a
        // preparation cannot run in between and prepare (over the claimed
        // spare's name) for the segment being rolled into.
        let mut spares = lock(&self.spares);
        let spare = spares.spare == Some(base);
        if spare {
            spares.spare = None;
            self.spare_base.store(u64::MAX, Ordering::Release);
        }
        // Once the file may exist under the segment's name, a failure leaves
        // the log unable to roll over (the name is taken) and the directory
        // in an unknown state: poison, like a failed fsync.
        let fatal = |context: String, source: std::io::Error| {
            self.poison(format!("{context}: {source}"));
            AppendError::Io { context, source }
        };
        let seg = if spare {
            // The spare's header already names `base`; its hint is no larger
            // than the hardened LSN (truncation retires spares).
            self.storage.rename(&spare_name(base), &name).map_err(|e| {
                fatal(
                    format!("renaming spare to {}", self.storage.describe(&name)),
                    e,
                )
            })?;
            self.storage
                .sync_dir()
                .map_err(|e| fatal("syncing log directory after a rollover".into(), e))?;
            let file = self.storage.open(&name).map_err(|e| {
                fatal(
                    format!("mapping segment {}", self.storage.describe(&name)),
                    e,
                )
            })?;
            Segment::new(name, base, self.options.capacity(), file)
        } else {
            let hardened = self.hardened.load(Ordering::Acquire);
            match recovery::create_segment(
                &self.storage,
                base,
                self.options.segment_bytes,
                hardened,
            ) {
                Ok(seg) => seg,
                Err(e) if e.created => return Err(fatal(e.context, e.source)),
                Err(e) => {
                    return Err(AppendError::Io {
                        context: e.context,
                        source: e.source,
                    })
                }
            }
        };
        let seg = Arc::new(seg);
        let mut segs = self.segments.write().expect("segments lock poisoned");
        segs.last()
            .expect("a log always has a segment")
            .set_data_end(data_end);
        segs.push(seg.clone());
        drop(segs);
        drop(spares);
        Ok(seg)
    }

    /// Whether the next segment is not prepared yet (cheap; for the thread
    /// that calls [`Log::prepare_next_segment`]).
    pub fn wants_next_segment(&self) -> bool {
        self.poisoned().is_none()
            && self.spare_base.load(Ordering::Acquire) != self.last_segment().end_lsn()
    }

    /// Prepares the file of the next segment ahead of time, so that the
    /// rollover on the commit path is a rename. Reuses a retired segment
    /// file when there is one (its header is rewritten; its old frames name
    /// lower LSNs and can never pass for batches of their new place), which
    /// also spares the disk from writing every log byte twice (zeros, then
    /// data). Call it from a background thread; returns whether it did work.
    pub fn prepare_next_segment(&self) -> Result<bool, AppendError> {
        if let Some(why) = self.poisoned() {
            return Err(AppendError::Poisoned(why.to_string()));
        }
        let io = |context: String| move |source| AppendError::Io { context, source };
        let mut sp = lock(&self.spares);
        let next = self.last_segment().end_lsn();
        if sp.spare == Some(next) {
            return Ok(false);
        }
        if let Some(stale) = sp.spare.take() {
            // A truncation or a rollover that could not wait overtook it.
            self.spare_base.store(u64::MAX, Ordering::Release);
            let free = self.free_name(stale);
            self.storage
                .rename(&spare_name(stale), &free)
                .map_err(io(format!("retiring stale spare {}", spare_name(stale))))?;
            sp.free.push(free);
        }
        let spare = spare_name(next);
        let capacity = (self.options.segment_bytes - SEGMENT_HEADER_BYTES) as u64;
        let header = encode_segment_header(next, capacity, self.hardened_lsn());
        let mut reused = false;
        while let Some(free) = sp.free.last().cloned() {
            // Look before taking it off the list: on an error the file is
            // still free (and still listed) for the next try.
            let file = self
                .storage
                .open(&free)
                .map_err(io(format!("opening {}", self.storage.describe(&free))))?;
            if file.len() != self.options.segment_bytes {
                self.storage
                    .remove(&free)
                    .map_err(io(format!("removing {}", self.storage.describe(&free))))?;
                sp.free.pop();
                continue;
            }
            // SAFETY: a free file is no segment of the log: no reader maps it
            // (delete_below retires only segments nobody holds) and only this
            // function, under the spares lock, writes it.
            unsafe { file.write(0, &header) }
                .and_then(|()| file.sync(0, SEGMENT_HEADER_BYTES))
                .map_err(io(format!(
                    "rewriting header of {}",
                    self.storage.describe(&free)
                )))?;
            self.storage
                .rename(&free, &spare)
                .map_err(io(format!("renaming {free} to {spare}")))?;
            sp.free.pop();
            reused = true;
            break;
        }
        if !reused {
            self.storage
                .create(&spare, &header, self.options.segment_bytes)
                .map_err(io(format!("creating {}", self.storage.describe(&spare))))?;
        }
        // Recorded as soon as the file exists under the spare's name, so a
        // failed directory sync below does not orphan it: the rollover that
        // uses it syncs the directory itself.
        sp.spare = Some(next);
        self.spare_base.store(next, Ordering::Release);
        self.storage
            .sync_dir()
            .map_err(io("syncing log directory after preparing a segment".into()))?;
        Ok(true)
    }

    /// Registers the wake-up to signal whenever the written or hardened LSN
    /// moves (at most one; `None` removes it). Signalling is one syscall
    /// and only happens while the watcher is armed.
    pub fn set_watcher(&self, watcher: Option<Arc<crate::wake::Wakeup>>) {
        let mut w = self.watcher.write().expect("watcher lock poisoned");
        self.has_watcher.store(watcher.is_some(), Ordering::Release);
        *w = watcher;
    }

    fn notify_watcher(&self) {
        if self.has_watcher.load(Ordering::Acquire) {
            if let Some(w) = &*self.watcher.read().expect("watcher lock poisoned") {
                w.signal();
            }
        }
    }

    /// Makes everything written so far durable and returns the new hardened
    /// LSN. Safe to call from another thread while appends continue.
    pub fn sync(&self) -> Result<u64, SyncError> {
        let guard = lock(&self.sync_lock);
        self.sync_locked(&guard)
    }

    fn sync_locked(&self, _sync_lock: &MutexGuard<'_, ()>) -> Result<u64, SyncError> {
        if let Some(why) = self.poisoned() {
            return Err(SyncError::Poisoned(why.to_string()));
        }
        let target = self.written.load(Ordering::Acquire);
        let from = self.hardened.load(Ordering::Acquire);
        if target <= from {
            return Ok(from);
        }
        for seg in self.segments_snapshot() {
            if seg.end_lsn() <= from || seg.base_lsn >= target {
                continue;
            }
            if let Err(e) = seg.sync_log_range(from, target) {
                let why = format!(
                    "msync of {} (LSN {from}..{target}) failed: {e}",
                    self.storage.describe(&seg.name)
                );
                return Err(SyncError::Poisoned(self.poison(why)));
            }
        }
        let prev = self.hardened.swap(target, Ordering::AcqRel);
        assert!(
            prev <= target,
            "hardened LSN went backwards: {prev} -> {target}"
        );
        self.notify_watcher();
        let seg = self.last_segment();
        // SAFETY: header writers hold the sync lock, which the caller holds.
        if let Err(e) = unsafe { seg.write_durable_hint(target) } {
            let why = format!(
                "writing durable-LSN hint of {}: {e}",
                self.storage.describe(&seg.name)
            );
            return Err(SyncError::Poisoned(self.poison(why)));
        }
        Ok(target)
    }

    /// Iterates over the batches from `lsn` (a batch boundary) to the
    /// written LSN as of this call.
    pub fn read_from(&self, lsn: u64) -> Result<BatchIter<S::File>, ReadError> {
        let segments = self.segments_snapshot();
        let end = self.written.load(Ordering::Acquire);
        let start = self.start.load(Ordering::Acquire);
        if lsn < start {
            return Err(ReadError::Purged { lsn, start });
        }
        if lsn > end {
            return Err(ReadError::BeyondEnd { lsn, end });
        }
        Ok(BatchIter {
            segments,
            end,
            pos: lsn,
            index: 0,
            failed: false,
        })
    }

    /// Deletes whole segments that end at or below `lsn` (never the last
    /// one). Returns the log's new start LSN.
    pub fn delete_below(&self, lsn: u64) -> Result<u64, TruncateError> {
        if let Some(why) = self.poisoned() {
            return Err(TruncateError::Poisoned(why.to_string()));
        }
        if lsn > self.hardened_lsn() {
            return Err(TruncateError::BadLsn {
                lsn,
                reason: format!(
                    "only hardened log may be deleted; hardened LSN is {}",
                    self.hardened_lsn()
                ),
            });
        }
        // Serialised with appends, rollovers and truncation, which index
        // into the segment list.
        let _writer = lock(&self.writer);
        let free_room = FREE_FILES_MAX.saturating_sub(lock(&self.spares).free.len());
        let mut retired = Vec::new();
        let mut segs = self.segments.write().expect("segments lock poisoned");
        while segs.len() > 1 && segs[0].end_lsn() <= lsn {
            let name = segs[0].name.clone();
            // A file can be reused only if no reader holds a view into it
            // (readers clone the Arc under the lock we hold, so the count
            // cannot grow behind our back); otherwise it is unlinked, and a
            // reader's mapping stays valid.
            let reusable = retired.len() < free_room
                && Arc::strong_count(&segs[0]) == 1
                && segs[0].file.len() == self.options.segment_bytes;
            let result = if reusable {
                let free = self.free_name(segs[0].base_lsn);
                self.storage
                    .rename(&name, &free)
                    .map(|()| retired.push(free))
            } else {
                self.storage.remove(&name)
            };
            // Oldest first, each durable before the next, so a crash part-way
            // leaves a contiguous log (never a gap at its front).
            if let Err(source) = result.and_then(|()| self.storage.sync_dir()) {
                let context = format!("deleting {}", self.storage.describe(&name));
                self.poison(format!("{context}: {source}"));
                return Err(TruncateError::Io { context, source });
            }
            segs.remove(0);
            self.start.store(segs[0].base_lsn, Ordering::Release);
        }
        let start = segs[0].base_lsn;
        drop(segs);
        // Free files are reused only after the renames above are durable.
        lock(&self.spares).free.extend(retired);
        Ok(start)
    }

    /// Where the segment that holds (or would hold) a batch starting at
    /// `lsn` ends: a mirror restarted at `lsn` must roll over where this
    /// log does, or the next shipped batch after padding lands elsewhere.
    pub fn segment_end_at(&self, lsn: u64) -> u64 {
        let segs = self.segments_snapshot();
        segs.iter()
            .find(|s| s.base_lsn <= lsn && lsn < s.end_lsn())
            .map_or(lsn + self.options.capacity(), |s| s.end_lsn())
    }

    /// Empties the log and starts it afresh at `lsn`: a reseeded mirror,
    /// whose state now comes from a snapshot at `lsn` and whose log goes on
    /// from there. Every segment is removed (newest first, each removal
    /// durable), then one is created at `lsn` that ends at `segment_end`
    /// (where the principal's segment holding `lsn` ends, so both logs roll
    /// over at the same LSNs; None: a whole segment). A crash part-way
    /// leaves a contiguous prefix of the old log, or an empty log at 0:
    /// either way a log the partner's catch-up plan handles (it reseeds
    /// again).
    pub fn reset(&self, lsn: u64, segment_end: Option<u64>) -> Result<(), TruncateError> {
        let capacity = match segment_end {
            None => self.options.capacity(),
            Some(end) => end.saturating_sub(lsn),
        };
        if capacity == 0
            || capacity > self.options.capacity()
            || capacity % frame::FRAME_ALIGN as u64 != 0
        {
            return Err(TruncateError::BadLsn {
                lsn,
                reason: format!(
                    "a first segment ending at {segment_end:?} would hold {capacity} bytes; this log's segments hold {} (partners must use the same segment size)",
                    self.options.capacity()
                ),
            });
        }
        if self.attached.load(Ordering::Acquire) {
            return Err(TruncateError::InUse);
        }
        if let Some(why) = self.poisoned() {
            return Err(TruncateError::Poisoned(why.to_string()));
        }
        let mut writer = lock(&self.writer);
        let _sync = lock(&self.sync_lock);
        let mut spares = lock(&self.spares);
        let fail = |context: String, source: std::io::Error| {
            self.poison(format!("{context}: {source}"));
            TruncateError::Io { context, source }
        };
        if let Some(stale) = spares.spare.take() {
            self.spare_base.store(u64::MAX, Ordering::Release);
            // Not log data: recovery removes a leftover spare anyway.
            let _ = self.storage.remove(&spare_name(stale));
        }
        self.truncations.fetch_add(1, Ordering::AcqRel);
        let segments = self.segments_snapshot();
        self.written.store(lsn, Ordering::Release);
        self.hardened.store(lsn, Ordering::Release);
        self.start.store(lsn, Ordering::Release);
        for seg in segments.iter().rev() {
            self.storage
                .remove(&seg.name)
                .map_err(|e| fail(format!("removing {}", self.storage.describe(&seg.name)), e))?;
            self.storage
                .sync_dir()
                .map_err(|e| fail("syncing log directory".into(), e))?;
        }
        let seg = recovery::create_segment(
            &self.storage,
            lsn,
            capacity as usize + SEGMENT_HEADER_BYTES,
            lsn,
        )
        .map_err(|e| fail(e.context, e.source))?;
        *self.segments.write().expect("segments lock poisoned") = vec![Arc::new(seg)];
        writer.last_epoch = 0;
        drop(spares);
        self.notify_watcher();
        Ok(())
    }

    /// Cuts the log back to `lsn`, which must be a batch boundary between
    /// the start and the written LSN. Everything from `lsn` on is gone, on
    /// disk too, when this returns. Readers holding views of the cut bytes
    /// keep valid (old) bytes: the segment holding `lsn` is rewritten into a
    /// new file and swapped in, never zeroed in place.
    pub fn truncate(&self, lsn: u64) -> Result<(), TruncateError> {
        if self.attached.load(Ordering::Acquire) {
            return Err(TruncateError::InUse);
        }
        self.truncate_attached(lsn)
    }

    /// Marks the log as driven by a group commit (true) or not; returns
    /// whether it already was. For `GroupCommit` only.
    pub(crate) fn set_attached(&self, attached: bool) -> bool {
        self.attached.swap(attached, Ordering::AcqRel)
    }

    /// `truncate` without the attachment check: the caller (group commit)
    /// has paused its appender.
    pub(crate) fn truncate_attached(&self, lsn: u64) -> Result<(), TruncateError> {
        if let Some(why) = self.poisoned() {
            return Err(TruncateError::Poisoned(why.to_string()));
        }
        let mut writer = lock(&self.writer);
        let sync_guard = lock(&self.sync_lock);
        // Everything kept must be durable when this returns; sync it first so
        // that the hardened LSN stays truthful.
        self.sync_locked(&sync_guard)
            .map_err(|SyncError::Poisoned(why)| TruncateError::Poisoned(why))?;
        // A prepared spare carries a durable-LSN hint from before the cut,
        // possibly above it: retire it, it would claim too much. Holding the
        // spares lock to the end keeps a new one from being prepared with
        // the old hardened LSN while the cut is under way.
        let mut spares = lock(&self.spares);
        if let Some(stale) = spares.spare.take() {
            self.spare_base.store(u64::MAX, Ordering::Release);
            let free = self.free_name(stale);
            // A spare is not log data: if it cannot be retired, forget it
            // (recovery removes leftover spares) rather than fail the cut.
            if self.storage.rename(&spare_name(stale), &free).is_ok() {
                spares.free.push(free);
            }
        }
        let written = self.written.load(Ordering::Acquire);
        let start = self.start.load(Ordering::Acquire);
        if lsn > written || lsn < start {
            return Err(TruncateError::BadLsn {
                lsn,
                reason: format!("the log holds LSN {start}..{written}"),
            });
        }
        if lsn == written {
            return Ok(());
        }
        let segments = self.segments_snapshot();
        let idx = segments
            .iter()
            .rposition(|s| s.base_lsn <= lsn)
            .expect("lsn >= start, so some segment starts at or below it");
        let seg = segments[idx].clone();
        // Find the batch boundary and the epoch of the batch before it.
        let mut last_epoch = None;
        let mut it = self
            .read_from(seg.base_lsn)
            .map_err(|e| TruncateError::BadLsn {
                lsn,
                reason: e.to_string(),
            })?;
        let mut pos = seg.base_lsn;
        while pos < lsn {
            match it.next() {
                Some(Ok(view)) if view.lsn() < seg.end_lsn() => {
                    last_epoch = Some(view.header().epoch);
                    pos = view.end_lsn();
                }
                Some(Err(e)) => {
                    return Err(TruncateError::BadLsn {
                        lsn,
                        reason: e.to_string(),
                    })
                }
                _ => break,
            }
        }
        if pos != lsn {
            return Err(TruncateError::BadLsn {
                lsn,
                reason: "not a batch boundary".into(),
            });
        }
        // Validated: from here on the log is being cut. New readers stop at
        // the cut at once; readers holding a snapshot keep the old segments
        // (and their bytes) alive.
        self.truncations.fetch_add(1, Ordering::AcqRel);
        self.written.store(lsn, Ordering::Release);
        // The hardened LSN follows at once: if a step below fails, the
        // poisoned log must still hold `hardened <= written` (everything
        // below the cut was synced above, so `lsn` is truthful). A cut that
        // left it above the written LSN broke every later user of the pair
        // (a mirror session's progress, found by the simulator).
        self.hardened.fetch_min(lsn, Ordering::AcqRel);
        let before = last_batch_in(&segments[..idx]);
        let last_epoch = last_epoch.or(before.map(|(e, _)| e)).unwrap_or(0);
        // Cutting at the very start of a segment that follows padding empties
        // that segment: remove it as well and end the log where the previous
        // segment's batches end, exactly as recovery and partners place the
        // next batch.
        let (idx, seg, lsn) = match before {
            Some((_, end)) if lsn == seg.base_lsn && idx > 0 => {
                (idx - 1, segments[idx - 1].clone(), end)
            }
            _ => (idx, seg, lsn),
        };
        // Later segments go first, last one first, each removal durable, so
        // a crash part-way leaves a contiguous log with an intact tail that a
        // retry cuts again, never a hole.
        let fail = |context: String, source: std::io::Error| {
            self.poison(format!("{context}: {source}"));
            TruncateError::Io { context, source }
        };
        for later in segments[idx + 1..].iter().rev() {
            self.storage.remove(&later.name).map_err(|e| {
                fail(
                    format!("removing {}", self.storage.describe(&later.name)),
                    e,
                )
            })?;
            self.storage
                .sync_dir()
                .map_err(|e| fail("syncing log directory".into(), e))?;
            self.segments.write().expect("segments lock poisoned").pop();
        }
        // Rewrite the segment holding `lsn` with only the bytes before it.
        let keep = (lsn - seg.base_lsn) as usize;
        let mut prefix = Vec::with_capacity(SEGMENT_HEADER_BYTES + keep);
        prefix.extend_from_slice(&encode_segment_header(seg.base_lsn, seg.capacity, lsn));
        // SAFETY: below the written LSN; we hold the writer lock, so nobody writes it.
        prefix.extend_from_slice(unsafe { seg.log_bytes(seg.base_lsn, keep) });
        let tmp = format!("{}{}", seg.name, recovery::TRUNCATE_SUFFIX);
        let file_len = seg.file.len();
        self.storage
            .create(&tmp, &prefix, file_len)
            .map_err(|e| fail(format!("writing {}", self.storage.describe(&tmp)), e))?;
        self.storage
            .rename(&tmp, &seg.name)
            .map_err(|e| fail(format!("replacing {}", self.storage.describe(&seg.name)), e))?;
        self.storage
            .sync_dir()
            .map_err(|e| fail("syncing log directory".into(), e))?;
        let file = self
            .storage
            .open(&seg.name)
            .map_err(|e| fail(format!("mapping {}", self.storage.describe(&seg.name)), e))?;
        let replacement = Arc::new(Segment::new(
            seg.name.clone(),
            seg.base_lsn,
            seg.capacity,
            file,
        ));
        {
            let mut segs = self.segments.write().expect("segments lock poisoned");
            assert_eq!(segs.len(), idx + 1);
            segs[idx] = replacement;
        }
        writer.last_epoch = last_epoch;
        self.written.store(lsn, Ordering::Release);
        // The new file's bytes were synced by create().
        self.hardened.store(lsn, Ordering::Release);
        Ok(())
    }
}

/// Epoch and end LSN of the last batch in `segments`, if they hold any.
/// Only for segments wholly below the written LSN.
fn last_batch_in<F: StorageFile>(segments: &[SegmentRef<F>]) -> Option<(u64, u64)> {
    for seg in segments.iter().rev() {
        let it = BatchIter {
            segments: vec![seg.clone()],
            end: seg.end_lsn(),
            pos: seg.base_lsn,
            index: 0,
            failed: false,
        };
        if let Some(Ok(last)) = it.take_while(|r| r.is_ok()).last() {
            return Some((last.header().epoch, last.end_lsn()));
        }
    }
    None
}

impl<S: Storage> Drop for Log<S> {
    fn drop(&mut self) {
        // Leave an exact durable-LSN hint on disk so that the next recovery
        // can tell any later damage to acknowledged data from a torn tail.
        // Best effort: a failure here only weakens that check.
        let last = match self.segments.try_read() {
            Ok(segs) => segs.last().cloned(),
            Err(_) => None, // a panic broke an invariant; leave the disk alone
        };
        if let (None, Some(seg)) = (self.poisoned(), last) {
            // SAFETY: &mut self: no other thread uses the log.
            if unsafe { seg.write_durable_hint(self.hardened_lsn()) }.is_ok() {
                let _ = seg.sync_header();
            }
        }
    }
}

/// A zero-copy view of one complete, checksummed batch in a segment map.
/// Holding it keeps the segment mapped, even if the log deletes it.
pub struct BatchView<F: StorageFile> {
    segment: SegmentRef<F>,
    header: FrameHeader,
}

impl<F: StorageFile> BatchView<F> {
    pub fn header(&self) -> &FrameHeader {
        &self.header
    }

    pub fn lsn(&self) -> u64 {
        self.header.base_lsn
    }

    pub fn end_lsn(&self) -> u64 {
        self.header.end_lsn()
    }

    /// The whole frame (header, payload, padding): exactly the bytes on
    /// disk and on the wire.
    pub fn frame(&self) -> &[u8] {
        // SAFETY: the frame lies below the written LSN at the time the view
        // was made; appends never rewrite those bytes and truncation swaps in
        // a new file instead of writing this mapping, which `segment` keeps alive.
        unsafe {
            self.segment
                .log_bytes(self.header.base_lsn, self.header.frame_bytes())
        }
    }

    /// The stored (possibly compressed) payload.
    pub fn payload(&self) -> &[u8] {
        &self.frame()[FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + self.header.stored_bytes as usize]
    }

    /// Decompresses and validates the records.
    pub fn records(&self) -> Result<Records, ReadError> {
        frame::decode_records(&self.header, self.payload()).map_err(|source| ReadError::Corrupt {
            lsn: self.lsn(),
            source,
        })
    }
}

/// Iterator over batches; see [`Log::read_from`]. Verifies each frame's
/// checksum; after an error it yields nothing more.
pub struct BatchIter<F: StorageFile> {
    segments: Vec<SegmentRef<F>>,
    end: u64,
    pos: u64,
    index: usize,
    failed: bool,
}

impl<F: StorageFile> BatchIter<F> {
    /// The LSN the next batch starts at (or the end).
    pub fn position(&self) -> u64 {
        self.pos
    }

    fn fail(&mut self, e: ReadError) -> Option<Result<BatchView<F>, ReadError>> {
        self.failed = true;
        Some(Err(e))
    }
}

impl<F: StorageFile> Iterator for BatchIter<F> {
    type Item = Result<BatchView<F>, ReadError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.failed || self.pos >= self.end {
                return None;
            }
            while self.index < self.segments.len()
                && self.segments[self.index].end_lsn() <= self.pos
            {
                self.index += 1;
            }
            let Some(seg) = self.segments.get(self.index).cloned() else {
                let e = ReadError::NotABatch {
                    lsn: self.pos,
                    reason: "no segment holds it".into(),
                };
                return self.fail(e);
            };
            let pos = self.pos;
            if pos >= seg.data_end() {
                // The rest of a sealed segment is padding (zeros, or stale
                // frames of a recycled file): the log goes on in the next one.
                match self.segments.get(self.index + 1) {
                    Some(next) if pos == seg.data_end() => {
                        self.pos = next.base_lsn;
                        continue;
                    }
                    Some(_) => {
                        let e = ReadError::NotABatch {
                            lsn: pos,
                            reason: format!("the segment's batches end at LSN {}", seg.data_end()),
                        };
                        return self.fail(e);
                    }
                    None => return None,
                }
            }
            let room = (seg.end_lsn() - pos) as usize;
            // SAFETY: pos < end (the written LSN of the snapshot), bounded by
            // the segment end; bytes below the written LSN are never
            // rewritten while a view or iterator holds the segment (appends
            // write beyond it, truncation swaps in a new file, and only
            // segments nobody holds are recycled).
            let bytes = unsafe { seg.log_bytes(pos, room.min((self.end - pos) as usize)) };
            let header = match frame::check_frame(bytes) {
                Ok((h, _)) => h,
                Err(source) => {
                    let e = if matches!(source, frame::FrameError::BadMagic(_)) {
                        ReadError::NotABatch {
                            lsn: pos,
                            reason: source.to_string(),
                        }
                    } else {
                        ReadError::Corrupt { lsn: pos, source }
                    };
                    return self.fail(e);
                }
            };
            if header.base_lsn != pos || header.end_lsn() > self.end {
                let e = ReadError::NotABatch {
                    lsn: pos,
                    reason: format!(
                        "frame claims LSN {} and ends at {}",
                        header.base_lsn,
                        header.end_lsn()
                    ),
                };
                return self.fail(e);
            }
            self.pos = header.end_lsn();
            return Some(Ok(BatchView {
                segment: seg,
                header,
            }));
        }
    }
}
