//! Per-level LSN watermarks and the waiting on them.
//!
//! Whoever advances a level (the appender for `local`, the replication layer
//! for the remote levels) calls [`Progress::advance`]; commits wait until the
//! level they asked for reaches the end of their batch. Blocking waiters use a
//! condition variable, async waiters register a `Waker`. A failure (poisoned
//! log) wakes everyone with an error.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::Waker;

use crate::commit::level::Level;

pub(crate) struct Waiters {
    pub failed: Option<Arc<str>>,
    wakers: Vec<Waker>,
}

/// What commits at a remote level do while no mirror is attached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Detached {
    /// Refused (new ones) or failed (waiting ones) with
    /// `CommitError::LevelUnavailable`: for an embedder that runs its own
    /// policy.
    #[default]
    Refuse,
    /// Accepted and acknowledged once hardened locally, marked `exposed`:
    /// the principal runs *exposed* (safety full without its mirror, as a
    /// database mirroring principal without a witness does).
    Expose,
    /// Accepted and held until a mirror attaches and reaches their level
    /// (an exposure bound was reached, or the operator wants no exposure).
    Hold,
}

impl Detached {
    fn from_u8(v: u8) -> Detached {
        match v {
            1 => Detached::Expose,
            2 => Detached::Hold,
            _ => Detached::Refuse,
        }
    }

    fn to_u8(self) -> u8 {
        match self {
            Detached::Refuse => 0,
            Detached::Expose => 1,
            Detached::Hold => 2,
        }
    }
}

pub struct Progress {
    lsn: [AtomicU64; Level::COUNT],
    remote_attached: AtomicBool,
    detached: std::sync::atomic::AtomicU8,
    /// Mirrors `Waiters::failed.is_some()` for lock-free polling.
    failed: AtomicBool,
    state: Mutex<Waiters>,
    cv: Condvar,
}

impl Progress {
    pub(crate) fn new(start: u64) -> Progress {
        Progress {
            lsn: std::array::from_fn(|_| AtomicU64::new(start)),
            remote_attached: AtomicBool::new(false),
            detached: std::sync::atomic::AtomicU8::new(0),
            failed: AtomicBool::new(false),
            state: Mutex::new(Waiters {
                failed: None,
                wakers: Vec::new(),
            }),
            cv: Condvar::new(),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Waiters> {
        self.state.lock().expect("progress lock poisoned")
    }

    /// Highest LSN below which every batch has reached `level`.
    pub fn reached(&self, level: Level) -> u64 {
        self.lsn[level.index()].load(Ordering::Acquire)
    }

    /// Whether a mirror is attached, so remote levels can be reached.
    pub fn remote_attached(&self) -> bool {
        self.remote_attached.load(Ordering::Acquire)
    }

    /// Called by the replication layer when a mirror attaches or detaches.
    pub fn set_remote_attached(&self, attached: bool) {
        self.remote_attached.store(attached, Ordering::Release);
        self.notify();
    }

    /// What remote-level commits do while no mirror is attached.
    pub fn detached_policy(&self) -> Detached {
        Detached::from_u8(self.detached.load(Ordering::Acquire))
    }

    /// Changes that policy; waiting commits re-check at once.
    pub fn set_detached_policy(&self, policy: Detached) {
        self.detached.store(policy.to_u8(), Ordering::Release);
        self.notify();
    }

    /// Moves `level` forward to `lsn` (never backwards) and wakes waiters.
    /// Returns whether it moved.
    pub fn advance(&self, level: Level, lsn: u64) -> bool {
        let prev = self.lsn[level.index()].fetch_max(lsn, Ordering::AcqRel);
        if lsn > prev {
            self.notify();
        }
        lsn > prev
    }

    /// Wakes every waiter to re-check its condition.
    pub fn notify(&self) {
        // Taking the lock orders this wake-up after any waiter's check, so a
        // waiter that saw the old value is already waiting on the condvar.
        let wakers = std::mem::take(&mut self.lock().wakers);
        self.cv.notify_all();
        for w in wakers {
            w.wake();
        }
    }

    /// Fails every pending and future wait.
    pub fn fail(&self, why: &str) {
        {
            let mut st = self.lock();
            if st.failed.is_none() {
                st.failed = Some(Arc::from(why));
            }
            self.failed.store(true, Ordering::Release);
        }
        self.notify();
    }

    /// Whether [`Progress::fail`] was called (lock-free).
    pub fn has_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// Moves every level back to at most `lsn` (after a truncation cut the
    /// log there: nothing beyond it has reached any level any more).
    pub fn rewind(&self, lsn: u64) {
        for l in &self.lsn {
            l.fetch_min(lsn, Ordering::AcqRel);
        }
        self.notify();
    }

    pub fn failure(&self) -> Option<Arc<str>> {
        self.lock().failed.clone()
    }

    pub(crate) fn wait<'a>(&self, guard: MutexGuard<'a, Waiters>) -> MutexGuard<'a, Waiters> {
        self.cv.wait(guard).expect("progress lock poisoned")
    }

    pub(crate) fn wait_timeout<'a>(
        &self,
        guard: MutexGuard<'a, Waiters>,
        dur: std::time::Duration,
    ) -> MutexGuard<'a, Waiters> {
        self.cv
            .wait_timeout(guard, dur)
            .expect("progress lock poisoned")
            .0
    }

    pub(crate) fn register(guard: &mut MutexGuard<'_, Waiters>, waker: &Waker) {
        if !guard.wakers.iter().any(|w| w.will_wake(waker)) {
            guard.wakers.push(waker.clone());
        }
    }
}
