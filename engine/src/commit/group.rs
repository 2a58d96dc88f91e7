//! The appender thread, the commit queue and tickets.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::commit::level::Level;
use crate::commit::progress::{Detached, Progress, Waiters};
use crate::commit::{CommitError, StartError};
use crate::log::frame::{RecordsBuf, BATCH_RAW_BYTES_MAX, FRAME_HEADER_BYTES};
use crate::log::{AppendError, BatchPos, Log, Storage};

/// Options for [`GroupCommit::start`].
#[derive(Clone, Debug)]
pub struct CommitOptions {
    /// Most raw record bytes in one batch. Commits arriving while a full
    /// batch waits block until the appender takes it (back-pressure).
    /// `None`: 4 MiB, or a quarter of a segment if that is less (a batch that
    /// does not fit the rest of a segment leaves the rest as padding).
    pub batch_bytes_max: Option<usize>,
    /// Pin the appender thread to this core (see `core_affinity`).
    pub appender_core: Option<usize>,
    /// How long an idle appender, and one waiting committer at a time,
    /// busy-poll before sleeping. A futex wake-up costs 5-30 µs on a VM, and
    /// a commit pays two (committer to appender and back), which is a large
    /// share of a 50 µs fdatasync. Polling trades CPU for that latency;
    /// `Duration::ZERO` disables it. On machines with fewer than
    /// `SPIN_REMOTE_CORES_MIN` cores nobody polls while a mirror is attached
    /// (the idle appender) or for a remote level (committers): the session
    /// thread and the mirror need those cores, and measured, polling there
    /// tripled remote-flush latency on 2 cores.
    pub spin: Duration,
    /// Level a commit waits for unless it asks for another.
    pub default_level: Level,
}

impl Default for CommitOptions {
    fn default() -> CommitOptions {
        CommitOptions {
            batch_bytes_max: None,
            appender_core: None,
            spin: Duration::from_micros(200),
            default_level: Level::Local,
        }
    }
}

/// What an acknowledged commit got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Committed {
    /// LSN range of the batch holding the commit.
    pub lsn_start: u64,
    pub lsn_end: u64,
    pub epoch: u64,
    /// Index of the commit's first record within the batch, and its count.
    pub first_record: u32,
    pub records: u32,
    /// The level that was asked for.
    pub level: Level,
    /// Acknowledged while no mirror was attached, with the detached policy
    /// `Expose`: hardened here only, not at `level`.
    pub exposed: bool,
}

/// Counters since start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CommitStats {
    pub commits: u64,
    pub batches: u64,
    pub raw_bytes: u64,
    pub log_bytes: u64,
    /// The batches' payloads as stored (after zstd; `log_bytes` less frame
    /// headers, alignment and segment padding): `raw_bytes / stored_bytes`
    /// is what compression achieved.
    pub stored_bytes: u64,
    /// Next segments prepared in the background, and failures doing so
    /// (after a failure the rollover creates the file itself, and reports
    /// an error if that fails too).
    pub segments_prepared: u64,
    pub segment_prepare_errors: u64,
}

/// One batch in the making; shared by the tickets of its commits.
struct BatchSlot {
    /// Batches are numbered from 1 in the order they are taken (see
    /// [`Ticket::batch`]).
    serial: u64,
    placed: OnceLock<Result<BatchPos, CommitError>>,
    /// Set once the appender's own sync covered this batch. Completion at
    /// any level requires it: an LSN comparison alone could be fooled by a
    /// watermark from before a truncation, or by a remote level racing
    /// ahead of the local sync (levels are cumulative).
    hardened: AtomicBool,
    /// Set if the batch was placed but is no longer in the log (a
    /// truncation cut it before the appender's sync covered it).
    lost: OnceLock<CommitError>,
}

struct Queue {
    records: RecordsBuf,
    submitted: Vec<Instant>,
    slot: Arc<BatchSlot>,
    shutdown: bool,
    /// The appender is (about to be) blocked on `work` and needs a wake-up.
    appender_sleeping: bool,
}

struct Shared<S: Storage> {
    log: Arc<Log<S>>,
    options: CommitOptions,
    /// The level `commit` waits for (index into `Level::ALL`); starts as
    /// `options.default_level`, changed by `set_default_level`.
    default_level: std::sync::atomic::AtomicUsize,
    batch_bytes_max: usize,
    epoch: AtomicU64,
    queue: Mutex<Queue>,
    /// Signalled when the queue becomes non-empty (or on shutdown).
    work: Condvar,
    /// Signalled when the appender takes the queue (room again).
    room: Condvar,
    progress: Arc<Progress>,
    latency_ns: Mutex<Vec<Histogram<u64>>>,
    /// Records are queued (the appender polls this while spinning).
    pending: AtomicBool,
    /// Committers currently busy-polling in `Ticket::wait`.
    spinners: AtomicUsize,
    /// Committers currently blocked in `Ticket::wait`.
    sleepers: AtomicUsize,
    /// Held by the appender while it writes a batch, and by
    /// `GroupCommit::truncate` while it cuts the log.
    maintenance: Mutex<()>,
    /// Shutdown has begun (the idle appender polls this while spinning).
    stopping: AtomicBool,
    prepare: PrepareSignal,
    segments_prepared: AtomicU64,
    segment_prepare_errors: AtomicU64,
    /// Batches with a serial up to this fail unwritten: `u64::MAX` after an
    /// append failed without poisoning the log (later commits may depend
    /// on the failed one's effects, see [`GroupCommit::resume`]), the
    /// last batch failed by the resume after it, 0 at start.
    fail_through: AtomicU64,
    /// Serial of the newest batch the appender's sync made durable.
    hardened_batch: AtomicU64,
    /// Why the last append failed, until an append succeeds again.
    append_error: Mutex<Option<CommitError>>,
    has_append_error: AtomicBool,
    commits: AtomicU64,
    batches: AtomicU64,
    raw_bytes: AtomicU64,
    log_bytes: AtomicU64,
    stored_bytes: AtomicU64,
}

impl<S: Storage> Shared<S> {
    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().expect("commit queue lock poisoned")
    }
}

/// See the module documentation of [`crate::commit`].
pub struct GroupCommit<S: Storage> {
    shared: Arc<Shared<S>>,
    appender: Option<JoinHandle<()>>,
    preparer: Option<JoinHandle<()>>,
}

/// Wakes the segment preparer: (wanted, stop).
struct PrepareSignal {
    state: Mutex<(bool, bool)>,
    cv: Condvar,
}

impl PrepareSignal {
    fn set(&self, wanted: bool, stop: bool) {
        let mut st = self.state.lock().expect("preparer lock poisoned");
        st.0 |= wanted;
        st.1 |= stop;
        self.cv.notify_one();
    }
}

fn new_slot(serial: u64) -> Arc<BatchSlot> {
    Arc::new(BatchSlot {
        serial,
        placed: OnceLock::new(),
        hardened: AtomicBool::new(false),
        lost: OnceLock::new(),
    })
}

fn new_histogram() -> Histogram<u64> {
    // 1 ns .. 100 s at 3 significant digits.
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("static histogram bounds are valid")
}

/// The batch bound group commit uses unless told otherwise
/// ([`CommitOptions::batch_bytes_max`] `None`) for a log of `segment_bytes`
/// segments: 4 MiB, or a quarter of a segment's capacity if that is less.
/// The largest write such a log can commit.
pub fn default_batch_bytes_max(segment_bytes: usize) -> usize {
    let capacity = segment_bytes.saturating_sub(crate::log::segment::SEGMENT_HEADER_BYTES);
    (4 << 20).min(capacity / 4)
}

impl<S: Storage> GroupCommit<S> {
    /// Starts the appender thread for `log`. Batches are written with the
    /// log's last epoch (at least 1) until [`GroupCommit::set_epoch`].
    pub fn start(log: Arc<Log<S>>, options: CommitOptions) -> Result<GroupCommit<S>, StartError> {
        let capacity = log.options().segment_bytes - crate::log::segment::SEGMENT_HEADER_BYTES;
        let max = BATCH_RAW_BYTES_MAX.min(capacity - FRAME_HEADER_BYTES);
        let batch_bytes_max = match options.batch_bytes_max {
            None => default_batch_bytes_max(log.options().segment_bytes),
            Some(b) if b == 0 || b > max => {
                return Err(StartError::BadOption(format!(
                    "batch_bytes_max must be between 1 and {max} (a batch must fit one segment); got {b}"
                )))
            }
            Some(b) => b,
        };
        if options.spin > SPIN_MAX {
            return Err(StartError::BadOption(format!(
                "spin must be at most {SPIN_MAX:?} (it is a busy-wait); got {:?}",
                options.spin
            )));
        }
        if let Some(core) = options.appender_core {
            crate::affinity::check_core("appender_core", core).map_err(StartError::BadOption)?;
        }
        if log.set_attached(true) {
            return Err(StartError::BadOption(
                "a group commit already runs on this log".into(),
            ));
        }
        let hardened = log.hardened_lsn();
        let options_default_index = options.default_level.index();
        let shared = Arc::new(Shared {
            epoch: AtomicU64::new(log.last_epoch().max(1)),
            batch_bytes_max,
            queue: Mutex::new(Queue {
                records: RecordsBuf::with_capacity(batch_bytes_max),
                submitted: Vec::new(),
                slot: new_slot(1),
                shutdown: false,
                appender_sleeping: false,
            }),
            work: Condvar::new(),
            room: Condvar::new(),
            progress: Arc::new(Progress::new(hardened)),
            latency_ns: Mutex::new((0..Level::COUNT).map(|_| new_histogram()).collect()),
            pending: AtomicBool::new(false),
            spinners: AtomicUsize::new(0),
            sleepers: AtomicUsize::new(0),
            maintenance: Mutex::new(()),
            stopping: AtomicBool::new(false),
            prepare: PrepareSignal {
                state: Mutex::new((true, false)),
                cv: Condvar::new(),
            },
            segments_prepared: AtomicU64::new(0),
            segment_prepare_errors: AtomicU64::new(0),
            fail_through: AtomicU64::new(0),
            hardened_batch: AtomicU64::new(0),
            append_error: Mutex::new(None),
            has_append_error: AtomicBool::new(false),
            commits: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            raw_bytes: AtomicU64::new(0),
            log_bytes: AtomicU64::new(0),
            stored_bytes: AtomicU64::new(0),
            log,
            options,
            default_level: std::sync::atomic::AtomicUsize::new(options_default_index),
        });
        if let Some(why) = shared.log.poisoned() {
            shared.progress.fail(why);
        }
        let for_thread = shared.clone();
        let preparer = std::thread::Builder::new()
            .name("mirrorlog-segment-preparer".into())
            .spawn(move || preparer_loop(for_thread));
        let preparer = match preparer {
            Ok(p) => p,
            Err(e) => {
                shared.log.set_attached(false);
                return Err(e.into());
            }
        };
        let for_thread = shared.clone();
        let appender = std::thread::Builder::new()
            .name("mirrorlog-appender".into())
            .spawn(move || appender_loop(for_thread));
        let appender = match appender {
            Ok(a) => a,
            Err(e) => {
                shared.prepare.set(false, true);
                let _ = preparer.join();
                shared.log.set_attached(false);
                return Err(e.into());
            }
        };
        Ok(GroupCommit {
            shared,
            appender: Some(appender),
            preparer: Some(preparer),
        })
    }

    pub fn log(&self) -> &Arc<Log<S>> {
        &self.shared.log
    }

    /// The watermarks commits wait on; the replication layer advances the
    /// remote levels here.
    pub fn progress(&self) -> &Arc<Progress> {
        &self.shared.progress
    }

    /// The batch size limit in force (see [`CommitOptions::batch_bytes_max`]).
    pub fn batch_bytes_max(&self) -> usize {
        self.shared.batch_bytes_max
    }

    pub fn epoch(&self) -> u64 {
        self.shared.epoch.load(Ordering::Acquire)
    }

    /// Batches taken after this call carry `epoch`. Epochs never go back:
    /// a lower one is refused and changes nothing.
    pub fn set_epoch(&self, epoch: u64) -> Result<(), CommitError> {
        let prev = self.shared.epoch.fetch_max(epoch, Ordering::AcqRel);
        if epoch < prev {
            return Err(CommitError::EpochRegression {
                current: prev,
                requested: epoch,
            });
        }
        Ok(())
    }

    /// The level [`GroupCommit::commit`] waits for.
    pub fn default_level(&self) -> Level {
        Level::ALL[self.shared.default_level.load(Ordering::Acquire)]
    }

    /// Changes the level [`GroupCommit::commit`] waits for (switching
    /// safety at run time); commits already made keep theirs.
    pub fn set_default_level(&self, level: Level) {
        self.shared
            .default_level
            .store(level.index(), Ordering::Release);
    }

    /// Commits `records` as one unit at the default level.
    pub fn commit(&self, records: &[&[u8]]) -> Result<Ticket<S>, CommitError> {
        self.commit_at(records, self.default_level())
    }

    /// Commits `records` as one unit (they land in the same batch, in order)
    /// and returns a ticket that completes at `level`.
    pub fn commit_at(&self, records: &[&[u8]], level: Level) -> Result<Ticket<S>, CommitError> {
        let shared = &self.shared;
        if records.is_empty() {
            return Err(CommitError::Empty);
        }
        if level.is_remote()
            && !shared.progress.remote_attached()
            && shared.progress.detached_policy() == Detached::Refuse
        {
            return Err(CommitError::LevelUnavailable(level));
        }
        if shared.progress.closed() {
            return Err(CommitError::HandedOver);
        }
        // Refused before it is written, where that is knowable now.
        if shared.progress.no_quorum()
            && !shared.progress.exposure_lease_live()
            && (level < Level::RemoteFlush || !shared.progress.remote_attached())
        {
            return Err(CommitError::NoQuorum);
        }
        let bytes: usize = records.iter().map(|r| RecordsBuf::cost(r)).sum();
        let max = shared.batch_bytes_max;
        if bytes > max {
            return Err(CommitError::TooLarge { bytes, max });
        }
        let submitted = Instant::now();
        let mut q = shared.queue();
        loop {
            if q.shutdown {
                return Err(CommitError::ShutDown);
            }
            if let Some(why) = shared.log.poisoned() {
                return Err(CommitError::Poisoned(Arc::from(why)));
            }
            if q.records.raw_bytes() + bytes <= max {
                break;
            }
            q = shared.room.wait(q).expect("commit queue lock poisoned");
        }
        let first_record = q.records.count();
        for r in records {
            q.records.push(r);
        }
        q.submitted.push(submitted);
        shared.pending.store(true, Ordering::Release);
        let slot = q.slot.clone();
        let wake = std::mem::take(&mut q.appender_sleeping);
        drop(q);
        if wake {
            shared.work.notify_one();
        }
        Ok(Ticket {
            shared: shared.clone(),
            slot,
            first_record,
            records: records.len() as u32,
            level,
            submitted: Instant::now(),
            recorded: AtomicBool::new(false),
        })
    }

    /// Commit latency (submit to level reached, in nanoseconds) per level.
    pub fn latency_ns(&self, level: Level) -> Histogram<u64> {
        self.with_latency_ns(level, Histogram::clone)
    }

    /// `f` of a level's latency histogram, read in place: no copy, and the
    /// lock the commit path records under is held only for `f`.
    pub fn with_latency_ns<R>(&self, level: Level, f: impl FnOnce(&Histogram<u64>) -> R) -> R {
        f(&self.shared.latency_ns.lock().expect("latency lock")[level.index()])
    }

    /// Records the latency of a remote level (for the replication layer).
    pub fn record_latency_ns(&self, level: Level, ns: u64) {
        self.shared.latency_ns.lock().expect("latency lock")[level.index()]
            .saturating_record(ns.max(1));
    }

    pub fn reset_latency(&self) {
        for h in self
            .shared
            .latency_ns
            .lock()
            .expect("latency lock")
            .iter_mut()
        {
            h.reset();
        }
    }

    pub fn stats(&self) -> CommitStats {
        let s = &self.shared;
        CommitStats {
            commits: s.commits.load(Ordering::Relaxed),
            batches: s.batches.load(Ordering::Relaxed),
            raw_bytes: s.raw_bytes.load(Ordering::Relaxed),
            log_bytes: s.log_bytes.load(Ordering::Relaxed),
            stored_bytes: s.stored_bytes.load(Ordering::Relaxed),
            segments_prepared: s.segments_prepared.load(Ordering::Relaxed),
            segment_prepare_errors: s.segment_prepare_errors.load(Ordering::Relaxed),
        }
    }

    /// Stops taking commits, lets the appender finish what is queued, and
    /// waits for it.
    pub fn shutdown(&mut self) {
        {
            let mut q = self.shared.queue();
            q.shutdown = true;
            q.appender_sleeping = false;
        }
        self.shared.stopping.store(true, Ordering::Release);
        self.shared.work.notify_all();
        self.shared.room.notify_all();
        // Stop both threads before re-raising a panic of either, so neither
        // outlives the group commit (the preparer holds the log and its LOCK).
        let appender = self.appender.take().map(|h| h.join());
        self.shared.prepare.set(false, true);
        let preparer = self.preparer.take().map(|h| h.join());
        if appender.is_some() {
            self.shared.log.set_attached(false);
        }
        for joined in [appender, preparer].into_iter().flatten() {
            // The threads only panic on a broken invariant; re-raise it.
            if let Err(panic) = joined {
                std::panic::resume_unwind(panic);
            }
        }
    }

    /// Serial of the newest batch made durable here (0: none yet). A
    /// commit whose [`Ticket::batch`] is at most this is in the log.
    pub fn hardened_batch(&self) -> u64 {
        self.shared.hardened_batch.load(Ordering::Acquire)
    }

    /// Whether an append failed without poisoning the log (a full disk,
    /// say) and every commit since fails unwritten, until
    /// [`GroupCommit::resume`].
    pub fn halted(&self) -> bool {
        self.shared.fail_through.load(Ordering::Acquire) == u64::MAX
    }

    /// Why the last append failed, while no append has succeeded since
    /// (None when the last one did, or none failed).
    pub fn append_error(&self) -> Option<CommitError> {
        if !self.shared.has_append_error.load(Ordering::Acquire) {
            return None;
        }
        self.shared
            .append_error
            .lock()
            .expect("append error lock")
            .clone()
    }

    /// Takes commits again after an append failure halted the queue.
    ///
    /// Why a halt at all: a committer typically applies its effects to
    /// some state (a store) before committing, so a commit queued after a
    /// failed one may carry values computed from the failed one's effects
    /// (an INCR after an INCR). Those must fail too. So after a failed
    /// append every batch fails unwritten with [`CommitError::Halted`]
    /// until the owner has taken back the effects of every commit in a
    /// batch newer than [`GroupCommit::hardened_batch`] and calls this.
    /// Commits submitted before this call (still queued) fail as well;
    /// those submitted after it are appended normally (the next append
    /// retries the disk). No effect if the queue is not halted.
    pub fn resume(&self) {
        let shared = &self.shared;
        let mut q = shared.queue();
        if shared.fail_through.load(Ordering::Acquire) != u64::MAX {
            return;
        }
        // Everything queued now was submitted during the halt: fail it here
        // and start a fresh batch, so commits after this call are not
        // failed along with it.
        let serial = q.slot.serial;
        let why = halted_error(shared);
        let _ = q.slot.placed.set(Err(why));
        q.records.clear();
        q.submitted.clear();
        q.slot = new_slot(serial + 1);
        shared.pending.store(false, Ordering::Release);
        shared.fail_through.store(serial, Ordering::Release);
        drop(q);
        shared.room.notify_all();
        shared.progress.notify();
    }

    /// Cuts the log back to `lsn` (see `Log::truncate`), with the appender
    /// paused, and moves every commit level back to the new end: nothing
    /// beyond it has reached any level any more. Commits queued meanwhile
    /// land after the cut. The way to truncate a log a group commit runs on.
    pub fn truncate(&self, lsn: u64) -> Result<(), crate::log::TruncateError> {
        let _m = self
            .shared
            .maintenance
            .lock()
            .expect("maintenance lock poisoned");
        self.shared.log.truncate_attached(lsn)?;
        self.shared.progress.rewind(self.shared.log.written_lsn());
        Ok(())
    }
}

/// Keeps the next segment file ready, off the commit path (see
/// `Log::prepare_next_segment`): a rollover is then a rename instead of
/// writing a whole segment of zeros while commits wait.
fn preparer_loop<S: Storage>(shared: Arc<Shared<S>>) {
    loop {
        {
            let mut st = shared.prepare.state.lock().expect("preparer lock poisoned");
            while !st.0 && !st.1 {
                st = shared.prepare.cv.wait(st).expect("preparer lock poisoned");
            }
            if st.1 {
                return;
            }
            st.0 = false;
        }
        match shared.log.prepare_next_segment() {
            Ok(true) => {
                shared.segments_prepared.fetch_add(1, Ordering::Relaxed);
            }
            Ok(false) => {}
            Err(_) => {
                shared
                    .segment_prepare_errors
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

impl<S: Storage> Drop for GroupCommit<S> {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            self.shutdown();
        }
    }
}

fn appender_loop<S: Storage>(shared: Arc<Shared<S>>) {
    crate::affinity::pin_current(shared.options.appender_core);
    let mut records = RecordsBuf::with_capacity(shared.batch_bytes_max);
    let mut submitted = Vec::new();
    loop {
        if !shared.pending.load(Ordering::Acquire) && shared.may_spin(Level::Local) {
            spin_until(shared.options.spin, || {
                shared.pending.load(Ordering::Acquire) || shared.stopping.load(Ordering::Acquire)
            });
        }
        let slot = {
            let mut q = shared.queue();
            while q.records.is_empty() && !q.shutdown {
                // Committers read this flag under the lock we hold, so the
                // one that fills the queue next will wake us.
                q.appender_sleeping = true;
                q = shared.work.wait(q).expect("commit queue lock poisoned");
            }
            q.appender_sleeping = false;
            if q.records.is_empty() {
                return; // shut down and drained
            }
            shared.pending.store(false, Ordering::Release);
            std::mem::swap(&mut q.records, &mut records);
            std::mem::swap(&mut q.submitted, &mut submitted);
            let next = q.slot.serial + 1;
            std::mem::replace(&mut q.slot, new_slot(next))
        };
        shared.room.notify_all();
        {
            let _m = shared
                .maintenance
                .lock()
                .expect("maintenance lock poisoned");
            write_batch(&shared, &records, &submitted, &slot);
        }
        if shared.log.wants_next_segment() {
            shared.prepare.set(true, false);
        }
        records.clear();
        submitted.clear();
    }
}

/// Appends and syncs one batch, then completes its tickets.
fn write_batch<S: Storage>(
    shared: &Shared<S>,
    records: &RecordsBuf,
    submitted: &[Instant],
    slot: &BatchSlot,
) {
    if slot.serial <= shared.fail_through.load(Ordering::Acquire) {
        // An earlier batch failed to append; see `GroupCommit::resume`.
        let _ = slot.placed.set(Err(halted_error(shared)));
        shared.progress.notify();
        return;
    }
    let epoch = shared.epoch.load(Ordering::Acquire);
    let truncations = shared.log.truncations();
    let pos = match shared.log.append(epoch, records) {
        Ok(pos) => pos,
        Err(AppendError::Poisoned(why)) => {
            let _ = slot
                .placed
                .set(Err(CommitError::Poisoned(Arc::from(why.as_str()))));
            shared.progress.fail(&why);
            return;
        }
        Err(e) => {
            let why: Arc<str> = Arc::from(e.to_string());
            let err = if e.is_disk_full() {
                CommitError::DiskFull(why)
            } else {
                CommitError::Append(why)
            };
            let poisoned = shared.log.poisoned();
            if poisoned.is_none() {
                // Nothing was written, but later commits may depend on this
                // one: halt until the owner has undone them (`resume`).
                // Set before the tickets learn of the failure, so that an
                // owner reacting to it finds the queue halted.
                shared.fail_through.store(u64::MAX, Ordering::Release);
            }
            *shared.append_error.lock().expect("append error lock") = Some(err.clone());
            shared.has_append_error.store(true, Ordering::Release);
            let _ = slot.placed.set(Err(err));
            match poisoned {
                // The failure poisoned the log: every later commit fails too.
                Some(why) => shared.progress.fail(why),
                None => shared.progress.notify(),
            }
            return;
        }
    };
    if shared.has_append_error.load(Ordering::Acquire) {
        *shared.append_error.lock().expect("append error lock") = None;
        shared.has_append_error.store(false, Ordering::Release);
    }
    assert!(slot.placed.set(Ok(pos)).is_ok(), "a batch is placed once");
    match shared.log.sync() {
        Ok(hardened) if hardened < pos.lsn_end || shared.log.truncations() != truncations => {
            // Someone truncated the log under a running group commit (the
            // failover layer must stop it first): whatever this sync made
            // durable, it may not be this batch.
            let _ = slot.lost.set(CommitError::Lost(Arc::from(format!(
                "the log was truncated while the batch at LSN {}..{} was being made durable",
                pos.lsn_start, pos.lsn_end
            ))));
            shared.progress.notify();
        }
        Ok(hardened) => {
            slot.hardened.store(true, Ordering::Release);
            shared.hardened_batch.store(slot.serial, Ordering::Release);
            let now = Instant::now();
            {
                let mut h = shared.latency_ns.lock().expect("latency lock");
                let local = &mut h[Level::Local.index()];
                for t in submitted {
                    local.saturating_record((now - *t).as_nanos().max(1) as u64);
                }
            }
            shared
                .commits
                .fetch_add(submitted.len() as u64, Ordering::Relaxed);
            shared.batches.fetch_add(1, Ordering::Relaxed);
            shared
                .raw_bytes
                .fetch_add(records.raw_bytes() as u64, Ordering::Relaxed);
            shared
                .log_bytes
                .fetch_add(pos.lsn_end - pos.lsn_start, Ordering::Relaxed);
            shared
                .stored_bytes
                .fetch_add(u64::from(pos.stored_bytes), Ordering::Relaxed);
            // Waiters judge by the slot flag set above; make sure they look
            // even if the watermark did not move (it never moves back).
            if !shared.progress.advance(Level::Local, hardened) {
                shared.progress.notify();
            }
        }
        Err(e) => shared.progress.fail(&e.to_string()),
    }
}

/// What a batch taken during a halt fails with (see `GroupCommit::resume`).
fn halted_error<S: Storage>(shared: &Shared<S>) -> CommitError {
    let cause = shared
        .append_error
        .lock()
        .expect("append error lock")
        .as_ref()
        .map_or_else(|| "an append failed".to_string(), |e| e.to_string());
    CommitError::Halted(Arc::from(cause))
}

/// Below this many cores, polling is off while a mirror is attached (see
/// `CommitOptions::spin`).
pub const SPIN_REMOTE_CORES_MIN: usize = 4;

fn cores() -> usize {
    static CORES: OnceLock<usize> = OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

impl<S: Storage> Shared<S> {
    /// Whether busy-polling for `level` is worth a core now.
    fn may_spin(&self, level: Level) -> bool {
        cores() >= SPIN_REMOTE_CORES_MIN || (!level.is_remote() && !self.progress.remote_attached())
    }
}

/// The longest busy-wait `CommitOptions::spin` may ask for.
const SPIN_MAX: Duration = Duration::from_secs(1);

/// No committer polls while this many are blocked (see `Ticket::wait`).
const SPIN_SLEEPERS_MAX: usize = 4;

/// Busy-polls `done` for at most `budget`; returns whether it became true.
fn spin_until(budget: Duration, mut done: impl FnMut() -> bool) -> bool {
    if budget.is_zero() {
        return done();
    }
    let Some(deadline) = Instant::now().checked_add(budget) else {
        return done();
    };
    loop {
        for _ in 0..64 {
            if done() {
                return true;
            }
            std::hint::spin_loop();
        }
        if Instant::now() >= deadline {
            return done();
        }
    }
}

/// A commit in flight. Wait with [`Ticket::wait`] or `.await`.
pub struct Ticket<S: Storage> {
    shared: Arc<Shared<S>>,
    slot: Arc<BatchSlot>,
    first_record: u32,
    records: u32,
    level: Level,
    /// For the remote levels' latency histograms (the appender records
    /// `local` per batch).
    submitted: Instant,
    /// Its latency was recorded (once, however often it is looked at).
    recorded: AtomicBool,
}

impl<S: Storage> Ticket<S> {
    /// Records a remote-level commit's latency once its outcome is known
    /// (exposed commits did not reach their level and are not recorded).
    fn finish(&self, r: Result<Committed, CommitError>) -> Result<Committed, CommitError> {
        if let Ok(c) = &r {
            if self.level.is_remote() && !c.exposed && !self.recorded.swap(true, Ordering::AcqRel) {
                let ns = self.submitted.elapsed().as_nanos().max(1) as u64;
                self.shared.latency_ns.lock().expect("latency lock")[self.level.index()]
                    .saturating_record(ns);
            }
        }
        r
    }

    pub fn level(&self) -> Level {
        self.level
    }

    /// Serial of the batch this commit joined: batches are taken, and
    /// succeed or fail, in serial order (see [`GroupCommit::hardened_batch`]).
    pub fn batch(&self) -> u64 {
        self.slot.serial
    }

    /// A ticket that completes when this commit's batch reaches `level`,
    /// by the same rules as an acknowledgement (Rule P, the detached
    /// policy, failures). It is for a *read* that saw this commit's
    /// effects before they were acknowledged: answering it only then means
    /// no client learns of a write that a failover may still lose. Its
    /// `Committed` has `records == 0`, and it records no latency.
    pub fn follow(&self, level: Level) -> Ticket<S> {
        Ticket {
            shared: self.shared.clone(),
            slot: self.slot.clone(),
            first_record: self.first_record,
            records: 0,
            level,
            submitted: self.submitted,
            recorded: AtomicBool::new(true),
        }
    }

    /// Whether this is a [`Ticket::follow`] ticket (a read's), not a commit.
    pub fn is_follower(&self) -> bool {
        self.records == 0
    }

    /// Whether the commit reached its level, from atomics alone (no lock):
    /// a cheap check that may say `false` for a commit whose outcome is in
    /// fact known (failed, or acknowledged as exposed).
    pub fn reached_now(&self) -> bool {
        self.reached()
    }

    /// The outcome if it is known, without waiting. The level is checked
    /// before any failure: a batch hardened before the log was poisoned
    /// stays acknowledged.
    fn outcome(&self, failed: Option<&Arc<str>>) -> Option<Result<Committed, CommitError>> {
        match self.slot.placed.get() {
            Some(Ok(pos)) if self.reached() => {
                return Some(Ok(self.committed(pos, false)));
            }
            Some(Err(e)) => return Some(Err(e.clone())),
            Some(Ok(_)) | None => {}
        }
        if let Some(e) = self.slot.lost.get() {
            return Some(Err(e.clone()));
        }
        if let Some(why) = failed {
            return Some(Err(CommitError::Poisoned(why.clone())));
        }
        let progress = &self.shared.progress;
        let detached = self.level.is_remote() && !progress.remote_attached();
        if progress.no_quorum() && (self.uncovered() || detached) && !progress.exposure_lease_live()
        {
            return Some(Err(CommitError::NoQuorum));
        }
        if detached {
            match progress.detached_policy() {
                Detached::Refuse => return Some(Err(CommitError::LevelUnavailable(self.level))),
                Detached::Expose => {
                    if let Some(Ok(pos)) = self.slot.placed.get() {
                        if self.slot.hardened.load(Ordering::Acquire)
                            && progress.may_expose(pos.lsn_end)
                        {
                            if !progress.lease_gated() || progress.exposure_lease_live() {
                                return Some(Ok(self.committed(pos, true)));
                            }
                            progress.want_exposure();
                        }
                    }
                }
                Detached::Hold => {}
            }
        } else if self.uncovered() && self.slot.hardened.load(Ordering::Acquire) {
            // Reached its level but not acknowledgeable without a lease.
            progress.want_exposure();
        }
        None
    }

    /// Rule P applies to this commit: its level does not wait for the
    /// mirror's hardened ack, and a witness is configured.
    fn uncovered(&self) -> bool {
        self.level < Level::RemoteFlush && self.shared.progress.lease_gated()
    }

    fn committed(&self, pos: &BatchPos, exposed: bool) -> Committed {
        Committed {
            lsn_start: pos.lsn_start,
            lsn_end: pos.lsn_end,
            epoch: pos.epoch,
            first_record: self.first_record,
            records: self.records,
            level: self.level,
            exposed,
        }
    }

    fn outcome_locked(&self, st: &Waiters) -> Option<Result<Committed, CommitError>> {
        self.outcome(st.failed.as_ref())
    }

    /// The outcome if already known.
    pub fn try_result(&self) -> Option<Result<Committed, CommitError>> {
        // Fast path without the lock: most tickets of a pipelined client are
        // complete by the time it looks.
        if self.reached() {
            return self.outcome(None).map(|r| self.finish(r));
        }
        let st = self.shared.progress.lock();
        let r = self.outcome_locked(&st);
        drop(st);
        r.map(|r| self.finish(r))
    }

    /// Whether the commit reached its level, judged from atomics only:
    /// hardened here by the appender's own sync, and for a remote level
    /// also past that level's watermark (levels are cumulative).
    fn reached(&self) -> bool {
        self.slot.hardened.load(Ordering::Acquire)
            && (self.level == Level::Local
                || matches!(self.slot.placed.get(), Some(Ok(pos)) if self.shared.progress.reached(self.level) >= pos.lsn_end))
            && (!self.uncovered() || self.shared.progress.exposure_lease_live())
    }

    /// Blocks until the commit reaches its level or fails.
    pub fn wait(self) -> Result<Committed, CommitError> {
        // `reached` then `outcome` look twice: an exposure lease can end in
        // between (then the slow path below decides).
        if self.reached() {
            if let Some(r) = self.outcome(None) {
                return self.finish(r);
            }
        }
        // One committer at a time polls instead of sleeping (see
        // CommitOptions::spin); more would only steal CPU from the appender.
        let shared = &self.shared;
        // Under heavy load (many committers already asleep) a wake-up is
        // amortised over a large batch and polling would only take a core
        // from the appender and the other committers.
        let crowded = shared.sleepers.load(Ordering::Acquire) >= SPIN_SLEEPERS_MAX
            || !shared.may_spin(self.level);
        if !shared.options.spin.is_zero()
            && !crowded
            && shared.spinners.fetch_add(1, Ordering::AcqRel) == 0
        {
            spin_until(shared.options.spin, || {
                self.reached()
                    || (self.level.is_remote() && !shared.progress.remote_attached())
                    || matches!(self.slot.placed.get(), Some(Err(_)))
                    || self.slot.lost.get().is_some()
                    || shared.progress.has_failed()
            });
            shared.spinners.fetch_sub(1, Ordering::AcqRel);
            if self.reached() {
                if let Some(r) = self.outcome(None) {
                    return self.finish(r);
                }
            }
        } else if !shared.options.spin.is_zero() && !crowded {
            shared.spinners.fetch_sub(1, Ordering::AcqRel);
        }
        let progress = &self.shared.progress;
        let mut st = progress.lock();
        shared.sleepers.fetch_add(1, Ordering::AcqRel);
        let result = loop {
            if let Some(r) = self.outcome_locked(&st) {
                break r;
            }
            st = progress.wait(st, self.level);
        };
        shared.sleepers.fetch_sub(1, Ordering::AcqRel);
        drop(st);
        self.finish(result)
    }

    /// Waits until the batch is hardened on this node, whatever the
    /// ticket's level, and returns its LSN range. This is *not* an
    /// acknowledgement (Rule P does not apply, nothing is marked exposed):
    /// it is for markers an embedder writes for itself, such as the LSN a
    /// checkpoint stands for, which no client is told about.
    pub fn wait_hardened(self) -> Result<(u64, u64), CommitError> {
        let progress = &self.shared.progress;
        let mut st = progress.lock();
        loop {
            match self.slot.placed.get() {
                Some(Ok(pos)) if self.slot.hardened.load(Ordering::Acquire) => {
                    return Ok((pos.lsn_start, pos.lsn_end))
                }
                Some(Err(e)) => return Err(e.clone()),
                _ => {}
            }
            if let Some(e) = self.slot.lost.get() {
                return Err(e.clone());
            }
            if let Some(why) = &st.failed {
                return Err(CommitError::Poisoned(why.clone()));
            }
            st = progress.wait(st, Level::Local);
        }
    }

    /// Like [`Ticket::wait`], giving up after `timeout` (the commit may
    /// still complete later; that is not knowable here).
    pub fn wait_timeout(self, timeout: Duration) -> Result<Committed, CommitError> {
        let deadline = Instant::now() + timeout;
        let progress = &self.shared.progress;
        let mut st = progress.lock();
        loop {
            if let Some(r) = self.outcome_locked(&st) {
                drop(st);
                return self.finish(r);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(CommitError::Timeout {
                    level: self.level,
                    timeout,
                });
            }
            st = progress.wait_timeout(st, self.level, deadline - now);
        }
    }
}

impl<S: Storage> Future for Ticket<S> {
    type Output = Result<Committed, CommitError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if self.reached() {
            if let Some(r) = self.outcome(None) {
                return Poll::Ready(self.finish(r));
            }
        }
        let mut st = self.shared.progress.lock();
        if let Some(r) = self.outcome_locked(&st) {
            drop(st);
            return Poll::Ready(self.finish(r));
        }
        // Registered under the lock that notify() takes, so no wake-up is lost.
        Progress::register(&mut st, cx.waker());
        Poll::Pending
    }
}
