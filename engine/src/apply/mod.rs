//! The applier: redoes the log into an embedder's state machine, in LSN
//! order, on its own (pinnable) thread, never beyond a limit.
//!
//! On a mirror the limit is the commit LSN the principal publishes, so a
//! reader there never sees a write that could still be rolled back; on a
//! principal it is its own commit LSN. The distance between what the log
//! holds (up to the limit) and what is applied is the redo queue.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::log::{Log, Records, Storage};

/// An embedder's state machine.
pub trait Applier: Send + 'static {
    /// Applies the records of the batch at `[lsn_start, lsn_end)`, in order.
    /// Batches arrive in LSN order, each exactly once per applier run. An
    /// error stops the applier; the batch counts as not applied.
    fn apply(&mut self, lsn_start: u64, lsn_end: u64, records: &Records) -> Result<(), String>;

    /// The log is about to be cut at `lsn`, below what this state machine
    /// reflects (a node that was principal rejoins as mirror and its
    /// divergent tail goes). Put the state back to what it was at some
    /// batch boundary at or below `lsn` (a checkpoint, say) and return
    /// that LSN; batches from there are applied again. The default cannot,
    /// and the mirror is then refused (it needs a reseed).
    fn rewind(&mut self, lsn: u64) -> Result<u64, String> {
        Err(format!(
            "this state machine cannot be put back to LSN {lsn} (its Applier has no rewind)"
        ))
    }

    /// Reseed: replace the whole state with `snapshot`, the state at `lsn`
    /// that the principal's [`crate::node::SnapshotSource`] produced (for
    /// the key-value server, a checkpoint file). Make it durable before
    /// returning if the state machine keeps state on disk: the log is
    /// emptied and restarted at `lsn` right after. The default cannot, and
    /// a mirror whose log the principal no longer has is then refused.
    fn restore(&mut self, lsn: u64, snapshot: &[u8]) -> Result<(), String> {
        let _ = snapshot;
        Err(format!(
            "this state machine cannot be restored from a snapshot at LSN {lsn} (its Applier has no restore)"
        ))
    }
}

/// Options for [`ApplierThread::start`].
#[derive(Clone, Debug, Default)]
pub struct ApplyOptions {
    /// Pin the applier thread to this core.
    pub core: Option<usize>,
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ApplyError {
    #[error("invalid apply option: {0}")]
    BadOption(String),
    #[error("the applier stopped at LSN {applied_lsn}: {reason}")]
    Stopped { applied_lsn: u64, reason: String },
    #[error("could not start the applier thread: {0}")]
    Thread(String),
}

/// How far behind the applier is.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RedoQueue {
    /// Log bytes below the limit (and written) that are not applied yet.
    pub bytes: u64,
    /// Recent apply rate, bytes of log per second (0 before any work).
    pub bytes_per_s: f64,
    /// `bytes / bytes_per_s`: how long the queue takes to drain at that rate.
    pub seconds: Option<f64>,
}

struct State {
    limit: u64,
    stop: bool,
    /// A rewind asked for, and its outcome (see [`ApplierThread::rewind`]).
    rewind: Option<u64>,
    /// A restore asked for (see [`ApplierThread::restore`]).
    restore: Option<(u64, Arc<Vec<u8>>)>,
    rewound: Option<Result<u64, String>>,
    failed: Option<String>,
    /// Exponentially weighted apply rate (bytes/s).
    rate: f64,
}

struct Shared {
    state: Mutex<State>,
    /// Set with `State::stop`; read between batches without the lock.
    stopping: std::sync::atomic::AtomicBool,
    /// Wakes the applier (new limit, stop) and waiters (progress, failure).
    cv: Condvar,
    applied: AtomicU64,
    /// Signalled after each round that applied something (the mirror's
    /// session thread sleeps on it to acknowledge applied LSNs promptly).
    watcher: Mutex<Option<Arc<crate::wake::Wakeup>>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("applier lock poisoned")
    }
}

/// The applier thread; see the module documentation.
pub struct ApplierThread<A: Applier> {
    shared: Arc<Shared>,
    written: Box<dyn Fn() -> u64 + Send + Sync>,
    handle: Option<JoinHandle<A>>,
}

impl<A: Applier> ApplierThread<A> {
    /// Starts applying `log` from `from_lsn` (a batch boundary: what the
    /// state machine already reflects, e.g. a checkpoint's LSN). Nothing is
    /// applied until [`ApplierThread::set_limit`] allows it.
    pub fn start<S: Storage>(
        log: Arc<Log<S>>,
        applier: A,
        from_lsn: u64,
        options: ApplyOptions,
    ) -> Result<ApplierThread<A>, ApplyError> {
        if let Some(core) = options.core {
            crate::affinity::check_core("applier core", core).map_err(ApplyError::BadOption)?;
        }
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                limit: from_lsn,
                stop: false,
                rewind: None,
                restore: None,
                rewound: None,
                failed: None,
                rate: 0.0,
            }),
            cv: Condvar::new(),
            stopping: std::sync::atomic::AtomicBool::new(false),
            applied: AtomicU64::new(from_lsn),
            watcher: Mutex::new(None),
        });
        let for_thread = shared.clone();
        let log_for_thread = log.clone();
        let handle = std::thread::Builder::new()
            .name("mirrorlog-applier".into())
            .spawn(move || {
                crate::affinity::pin_current(options.core);
                apply_loop(&for_thread, &log_for_thread, applier)
            })
            .map_err(|e| ApplyError::Thread(e.to_string()))?;
        Ok(ApplierThread {
            shared,
            written: Box::new(move || log.written_lsn()),
            handle: Some(handle),
        })
    }

    /// Registers the wake-up signalled whenever the applied LSN moves
    /// (`None` removes it).
    pub fn set_watcher(&self, watcher: Option<Arc<crate::wake::Wakeup>>) {
        *self.shared.watcher.lock().expect("watcher lock poisoned") = watcher;
    }

    /// Allows applying every batch that ends at or below `lsn`. The limit
    /// never moves back.
    pub fn set_limit(&self, lsn: u64) {
        let mut st = self.shared.lock();
        if lsn > st.limit {
            st.limit = lsn;
            self.shared.cv.notify_all();
        }
    }

    pub fn limit(&self) -> u64 {
        self.shared.lock().limit
    }

    /// End of the last applied batch.
    pub fn applied_lsn(&self) -> u64 {
        self.shared.applied.load(Ordering::Acquire)
    }

    /// Why the applier stopped, if it did.
    pub fn failure(&self) -> Option<String> {
        self.shared.lock().failed.clone()
    }

    pub fn redo_queue(&self) -> RedoQueue {
        let st = self.shared.lock();
        let target = st.limit.min((self.written)());
        let bytes = target.saturating_sub(self.applied_lsn());
        RedoQueue {
            bytes,
            bytes_per_s: st.rate,
            seconds: (st.rate > 0.0).then(|| bytes as f64 / st.rate),
        }
    }

    /// Waits until everything below `lsn` is applied; false on timeout.
    /// An applier that stopped with an error returns that error.
    pub fn wait_applied(&self, lsn: u64, timeout: Duration) -> Result<bool, ApplyError> {
        let deadline = Instant::now() + timeout;
        let mut st = self.shared.lock();
        loop {
            if self.applied_lsn() >= lsn {
                return Ok(true);
            }
            if let Some(reason) = &st.failed {
                return Err(ApplyError::Stopped {
                    applied_lsn: self.applied_lsn(),
                    reason: reason.clone(),
                });
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(false);
            }
            st = self
                .shared
                .cv
                .wait_timeout(st, deadline - now)
                .expect("applier lock poisoned")
                .0;
        }
    }

    /// Has the state machine put back to at most `lsn` ([`Applier::rewind`]),
    /// on the applier thread between batches; the limit drops to what it
    /// returns, and applying resumes from there once the limit rises.
    pub fn rewind(&self, lsn: u64) -> Result<u64, String> {
        let mut st = self.shared.lock();
        st.rewind = Some(lsn);
        st.rewound = None;
        self.shared.cv.notify_all();
        loop {
            if let Some(r) = st.rewound.take() {
                return r;
            }
            if let Some(f) = &st.failed {
                return Err(format!("the applier stopped: {f}"));
            }
            if st.stop {
                return Err("the applier is stopping".into());
            }
            st = self.shared.cv.wait(st).expect("applier lock poisoned");
        }
    }

    /// Has the state machine replaced by `snapshot`, the state at `lsn`
    /// ([`Applier::restore`]), on the applier thread between batches; the
    /// applied LSN and the limit become `lsn`.
    pub fn restore(&self, lsn: u64, snapshot: Arc<Vec<u8>>) -> Result<(), String> {
        let mut st = self.shared.lock();
        st.restore = Some((lsn, snapshot));
        st.rewound = None;
        self.shared.cv.notify_all();
        loop {
            if let Some(r) = st.rewound.take() {
                return r.map(|_| ());
            }
            if let Some(f) = &st.failed {
                return Err(format!("the applier stopped: {f}"));
            }
            if st.stop {
                return Err("the applier is stopping".into());
            }
            st = self.shared.cv.wait(st).expect("applier lock poisoned");
        }
    }

    /// Stops the thread after the batch in progress and hands the state
    /// machine back.
    pub fn shutdown(mut self) -> A {
        match self
            .stop_and_join()
            .expect("the applier thread runs until shutdown")
        {
            Ok(applier) => applier,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }

    /// [`ApplierThread::shutdown`], also returning the LSN the state
    /// machine reflects once the batch in progress finished.
    pub fn shutdown_at(mut self) -> (A, u64) {
        let a = match self
            .stop_and_join()
            .expect("the applier thread runs until shutdown")
        {
            Ok(applier) => applier,
            Err(panic) => std::panic::resume_unwind(panic),
        };
        (a, self.shared.applied.load(Ordering::Acquire))
    }

    fn stop_and_join(&mut self) -> Option<std::thread::Result<A>> {
        self.shared.lock().stop = true;
        self.shared.stopping.store(true, Ordering::Release);
        self.shared.cv.notify_all();
        Some(self.handle.take()?.join())
    }
}

impl<A: Applier> Drop for ApplierThread<A> {
    fn drop(&mut self) {
        // Panics in `apply` are caught and reported as failures; the thread
        // itself only panics on a broken invariant, which `shutdown`
        // re-raises. Dropping never panics.
        let _ = self.stop_and_join();
    }
}

fn apply_loop<S: Storage, A: Applier>(shared: &Shared, log: &Log<S>, mut applier: A) -> A {
    // The limit at which the last round applied nothing because the next
    // batch ends beyond it: wait for a new limit instead of retrying.
    let mut blocked_at: Option<u64> = None;
    loop {
        let limit = {
            let mut st = shared.lock();
            loop {
                if st.stop || st.failed.is_some() {
                    return applier;
                }
                if let Some((lsn, snapshot)) = st.restore.take() {
                    let r = applier.restore(lsn, &snapshot).map(|()| lsn);
                    if r.is_ok() {
                        shared.applied.store(lsn, Ordering::Release);
                        st.limit = lsn;
                        blocked_at = None;
                    }
                    st.rewound = Some(r);
                    shared.cv.notify_all();
                    continue;
                }
                if let Some(lsn) = st.rewind.take() {
                    let applied = shared.applied.load(Ordering::Acquire);
                    let r = if lsn >= applied {
                        Ok(applied)
                    } else {
                        applier.rewind(lsn).and_then(|to| {
                            if to > lsn {
                                Err(format!("rewind to {lsn} returned LSN {to}, beyond it"))
                            } else {
                                Ok(to)
                            }
                        })
                    };
                    if let Ok(to) = r {
                        shared.applied.store(to, Ordering::Release);
                        st.limit = st.limit.min(to);
                        blocked_at = None;
                    }
                    st.rewound = Some(r);
                    shared.cv.notify_all();
                    continue;
                }
                let applied = shared.applied.load(Ordering::Acquire);
                // Only what is written (and below the limit) can be applied.
                let target = st.limit.min(log.written_lsn());
                if target > applied && blocked_at != Some(st.limit) {
                    break (target, st.limit);
                }
                st = if st.limit > applied && blocked_at != Some(st.limit) {
                    // The limit runs ahead of the log (a mirror learns the
                    // commit LSN before the batches): re-check the log now
                    // and then rather than wiring a notification into appends.
                    shared
                        .cv
                        .wait_timeout(st, Duration::from_millis(5))
                        .expect("applier lock poisoned")
                        .0
                } else {
                    // Caught up to the limit, or stuck on a batch that ends
                    // past it: only a new limit (or a stop) changes that.
                    shared.cv.wait(st).expect("applier lock poisoned")
                };
            }
        };
        let (limit, round_limit) = limit;
        let began = Instant::now();
        let from = shared.applied.load(Ordering::Acquire);
        let result = apply_range(shared, log, &mut applier, from, limit);
        let done = shared.applied.load(Ordering::Acquire) - from;
        let mut st = shared.lock();
        // Nothing applied yet no error: the next batch ends past the limit
        // (as it stood when this round began; a newer one retries at once).
        blocked_at = (done == 0 && result.is_ok()).then_some(round_limit);
        let secs = began.elapsed().as_secs_f64();
        if done > 0 && secs > 0.0 {
            let now = done as f64 / secs;
            st.rate = if st.rate == 0.0 {
                now
            } else {
                0.8 * st.rate + 0.2 * now
            };
        }
        if let Err(reason) = result {
            st.failed = Some(reason);
        }
        shared.cv.notify_all();
        drop(st);
        if done > 0 {
            if let Some(w) = &*shared.watcher.lock().expect("watcher lock poisoned") {
                w.signal();
            }
        }
    }
}

/// Applies whole batches in `[from, limit)`, stopping early on shutdown; a
/// batch that ends beyond the limit waits for a later limit. A panic in the
/// embedder's `apply` is caught and reported as the applier's failure.
fn apply_range<S: Storage, A: Applier>(
    shared: &Shared,
    log: &Log<S>,
    applier: &mut A,
    from: u64,
    limit: u64,
) -> Result<(), String> {
    let iter = log.read_from(from).map_err(|e| e.to_string())?;
    for view in iter {
        if shared.stopping.load(Ordering::Acquire) {
            return Ok(());
        }
        let view = view.map_err(|e| e.to_string())?;
        if view.end_lsn() > limit {
            break;
        }
        let records = view.records().map_err(|e| e.to_string())?;
        let (start, end) = (view.lsn(), view.end_lsn());
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            applier.apply(start, end, &records)
        }));
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(reason)) => return Err(reason),
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "non-string panic".into());
                return Err(format!(
                    "apply panicked at the batch at LSN {start}: {what}"
                ));
            }
        }
        // Batches follow each other, or the previous one ended before a
        // segment's padding: the applied LSN only moves forward.
        let prev = shared.applied.swap(end, Ordering::AcqRel);
        assert!(prev <= start, "applied LSN went backwards");
    }
    Ok(())
}
