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
    /// Under `Detached::Expose`, only batches ending at most this many
    /// bytes past the mirror's hardened LSN (the `remote-flush` watermark)
    /// are acknowledged exposed; later ones are held (u64::MAX: no bound).
    expose_max_bytes: AtomicU64,
    /// Bumped by every rewind (a truncation): acknowledgements a session
    /// received about the bytes before the cut must not advance the levels
    /// of the bytes written after it (see [`Progress::advance_in`]).
    generation: AtomicU64,
    /// Rule P (docs/design.md, "Witness protocol"), on when a witness is
    /// configured: see [`Progress::set_lease_gated`].
    gated: AtomicBool,
    /// Until when (ns on [`monotonic_ns`]) the exposure lease is live.
    lease_until_ns: AtomicU64,
    /// A commit waits for an exposure lease it does not have.
    exposure_wanted: AtomicBool,
    /// Neither a lease nor the prospect of one: commits that need one fail.
    no_quorum: AtomicBool,
    /// A manual failover began: no new commits (see [`Progress::close`]).
    closed: AtomicBool,
    /// The exposure lease was taken back (see
    /// [`Progress::revoke_exposure_lease`]).
    revoked: AtomicBool,
    /// Mirrors `Waiters::failed.is_some()` for lock-free polling.
    failed: AtomicBool,
    state: Mutex<Waiters>,
    /// One per level: a remote level's advance wakes only the commits
    /// waiting for that level (with 32 clients waiting at remote-flush, a
    /// single condvar woke all of them four times per batch).
    cvs: [Condvar; Level::COUNT],
}

impl Progress {
    pub(crate) fn new(start: u64) -> Progress {
        Progress {
            lsn: std::array::from_fn(|_| AtomicU64::new(start)),
            remote_attached: AtomicBool::new(false),
            detached: std::sync::atomic::AtomicU8::new(0),
            expose_max_bytes: AtomicU64::new(u64::MAX),
            generation: AtomicU64::new(0),
            gated: AtomicBool::new(false),
            lease_until_ns: AtomicU64::new(0),
            exposure_wanted: AtomicBool::new(false),
            no_quorum: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            revoked: AtomicBool::new(false),
            failed: AtomicBool::new(false),
            state: Mutex::new(Waiters {
                failed: None,
                wakers: Vec::new(),
            }),
            cvs: std::array::from_fn(|_| Condvar::new()),
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

    /// Bounds exposure in bytes: under `Detached::Expose`, a remote-level
    /// commit is acknowledged exposed only if its batch ends within
    /// `max_bytes` of the mirror's hardened LSN; otherwise it is held until a
    /// mirror reaches its level. Checked by every ticket, so no commit beyond
    /// the bound is ever acknowledged, however fast they come.
    pub fn set_exposure_max_bytes(&self, max_bytes: Option<u64>) {
        self.expose_max_bytes
            .store(max_bytes.unwrap_or(u64::MAX), Ordering::Release);
        self.notify();
    }

    /// Whether a batch ending at `lsn_end` may be acknowledged exposed.
    pub(crate) fn may_expose(&self, lsn_end: u64) -> bool {
        let max = self.expose_max_bytes.load(Ordering::Acquire);
        lsn_end <= self.reached(Level::RemoteFlush).saturating_add(max)
    }

    /// Turns Rule P on: from now, a commit whose acknowledgement does not
    /// rest on the mirror's hardened ack (a level below `remote-flush`, or
    /// acknowledged exposed) is acknowledged only while an *exposure lease*
    /// is live ([`Progress::set_exposure_lease`]); without one it waits,
    /// asks for one ([`Progress::take_exposure_wanted`]), and fails with
    /// `CommitError::NoQuorum` once [`Progress::set_no_quorum`] says none
    /// is coming. Commits the mirror hardened need no lease.
    pub fn set_lease_gated(&self, gated: bool) {
        self.gated.store(gated, Ordering::Release);
        self.notify();
    }

    pub fn lease_gated(&self) -> bool {
        self.gated.load(Ordering::Acquire)
    }

    /// The witness granted a lease that covers exposed acknowledgements,
    /// live until `until_ns` on [`monotonic_ns`] (never shortened).
    pub fn set_exposure_lease(&self, until_ns: u64) {
        {
            // Serialised with `close` and `revoke_exposure_lease`: a
            // renewal answered after either must not bring the lease back.
            let _st = self.lock();
            if self.closed.load(Ordering::Acquire) || self.revoked.load(Ordering::Acquire) {
                return;
            }
            self.lease_until_ns.fetch_max(until_ns, Ordering::AcqRel);
        }
        self.notify();
    }

    /// Takes the exposure lease back at once (the principal is about to
    /// tell the witness its mirror has everything it acknowledged).
    /// Until [`Progress::allow_exposure_lease`], renewals answered later
    /// do not bring it back either.
    pub fn revoke_exposure_lease(&self) {
        let _st = self.lock();
        self.revoked.store(true, Ordering::Release);
        self.lease_until_ns.store(0, Ordering::Release);
    }

    /// Exposure leases may be granted again (the principal asks for
    /// exposure anew).
    pub fn allow_exposure_lease(&self) {
        let _st = self.lock();
        self.revoked.store(false, Ordering::Release);
    }

    /// Whether an exposure lease is live now.
    pub fn exposure_lease_live(&self) -> bool {
        monotonic_ns() < self.lease_until_ns.load(Ordering::Acquire)
    }

    /// Whether a commit asked for an exposure lease since the last call.
    pub fn take_exposure_wanted(&self) -> bool {
        self.exposure_wanted.swap(false, Ordering::AcqRel)
    }

    pub(crate) fn want_exposure(&self) {
        self.exposure_wanted.store(true, Ordering::Release);
    }

    /// The principal has no quorum (neither its lease nor, for remote
    /// levels, its mirror): commits that need either fail now.
    pub fn set_no_quorum(&self, no_quorum: bool) {
        let was = self.no_quorum.swap(no_quorum, Ordering::AcqRel);
        if no_quorum && !was {
            self.notify();
        }
    }

    pub fn no_quorum(&self) -> bool {
        self.no_quorum.load(Ordering::Acquire)
    }

    /// A manual failover: new commits are refused (`CommitError::HandedOver`)
    /// and the exposure lease is revoked, so from now on only commits the
    /// mirror hardens are acknowledged. `false` reopens (the failover was
    /// abandoned before the witness heard of it).
    pub fn close(&self, closed: bool) {
        {
            let _st = self.lock();
            self.closed.store(closed, Ordering::Release);
            if closed {
                self.lease_until_ns.store(0, Ordering::Release);
            }
        }
        self.notify();
    }

    pub fn closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Moves `level` forward to `lsn` (never backwards) and wakes waiters.
    /// Returns whether it moved.
    pub fn advance(&self, level: Level, lsn: u64) -> bool {
        let prev = self.lsn[level.index()].fetch_max(lsn, Ordering::AcqRel);
        if lsn > prev {
            self.notify_advance(level);
        }
        lsn > prev
    }

    /// Wakes the waiters an advance of `level` may complete: for `local`
    /// everyone (every commit needs its local sync), for a remote level
    /// those waiting for it.
    fn notify_advance(&self, level: Level) {
        if level == Level::Local {
            return self.notify();
        }
        let wakers = std::mem::take(&mut self.lock().wakers);
        self.cvs[level.index()].notify_all();
        for w in wakers {
            w.wake();
        }
    }

    /// Wakes every waiter to re-check its condition.
    pub fn notify(&self) {
        // Taking the lock orders this wake-up after any waiter's check, so a
        // waiter that saw the old value is already waiting on the condvar.
        let wakers = std::mem::take(&mut self.lock().wakers);
        for cv in &self.cvs {
            cv.notify_all();
        }
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
    /// log there: nothing beyond it has reached any level any more), and
    /// starts a new generation.
    pub fn rewind(&self, lsn: u64) {
        {
            let _st = self.lock();
            self.generation.fetch_add(1, Ordering::AcqRel);
            for l in &self.lsn {
                l.fetch_min(lsn, Ordering::AcqRel);
            }
        }
        self.notify();
    }

    /// The current generation (see [`Progress::rewind`]).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// [`Progress::advance`], only if no rewind happened since `generation`
    /// was read: a session's acknowledgements describe the log as it was
    /// when the session began. Returns whether it moved.
    pub fn advance_in(&self, generation: u64, level: Level, lsn: u64) -> bool {
        let moved = {
            let _st = self.lock();
            if self.generation.load(Ordering::Acquire) != generation {
                return false;
            }
            let prev = self.lsn[level.index()].fetch_max(lsn, Ordering::AcqRel);
            lsn > prev
        };
        if moved {
            self.notify_advance(level);
        }
        moved
    }

    pub fn failure(&self) -> Option<Arc<str>> {
        self.lock().failed.clone()
    }

    pub(crate) fn wait<'a>(
        &self,
        guard: MutexGuard<'a, Waiters>,
        level: Level,
    ) -> MutexGuard<'a, Waiters> {
        self.cvs[level.index()]
            .wait(guard)
            .expect("progress lock poisoned")
    }

    pub(crate) fn wait_timeout<'a>(
        &self,
        guard: MutexGuard<'a, Waiters>,
        level: Level,
        dur: std::time::Duration,
    ) -> MutexGuard<'a, Waiters> {
        self.cvs[level.index()]
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

/// Nanoseconds on a process-wide monotonic clock (from its first use);
/// exposure leases are expressed on it.
pub fn monotonic_ns() -> u64 {
    static BASE: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    // Start at 1 s so that 0 means "never".
    BASE.get_or_init(std::time::Instant::now)
        .elapsed()
        .as_nanos() as u64
        + 1_000_000_000
}
