//! The read barrier: no client on the principal learns of a write before
//! that write is committed at the client's level.
//!
//! A write is applied to the store when it is handed to group commit (under
//! the store's write lock, so the log order is the store's order), and its
//! writer is answered once the commit reaches its level. Without a barrier
//! a reader could see the write in between and a failover could then lose
//! it: the reader saw a value that the new principal never had (Jepsen
//! calls the history non-linearizable; MySQL's AFTER_SYNC semi-sync exists
//! to prevent it). So each write records, per key it touched, its commit's
//! ticket; a read computes its reply at once from the store, and if the
//! newest commit among the keys it looked at is not yet at the reader's
//! level, the reply is held until it is (a follower ticket: the same
//! rules as the writer's acknowledgement, Rule P included). The log is one
//! sequence, so the newest such commit stands for every older one. Reads
//! of other keys do not wait; reads of the whole keyspace (DBSIZE, KEYS,
//! SCAN, INFO keyspace) wait for the newest commit. A write that fails or
//! times out leaves its effects visible to nobody until they are committed.
//!
//! Entries are swept once their commit reached the highest level any
//! client asked for (amortised: when the map doubled since the last
//! sweep), so the map holds at most one entry per key written since the
//! mirror last caught up.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use mirrorlog_engine::commit::{Level, Ticket};
use mirrorlog_engine::log::FsStorage;

use crate::kv::Effect;

/// Which keys a command's reply depends on.
pub(super) enum Seen<'a> {
    Keys(Vec<&'a [u8]>),
    /// The whole keyspace (its size, its key list).
    All,
}

/// One commit, numbered in log order (the store's order).
struct Entry {
    seq: u64,
    ticket: Ticket<FsStorage>,
}

#[derive(Default)]
struct Inner {
    keys: HashMap<Vec<u8>, Entry>,
    /// The newest FLUSHALL: every key's absence may be its doing.
    flush: Option<Entry>,
    /// The newest commit of all (for whole-keyspace reads).
    last: Option<Entry>,
    seq: u64,
    /// `keys.len()` after the last sweep.
    swept: usize,
}

pub(super) struct Barrier {
    inner: Mutex<Inner>,
    /// The highest level any connection asked for (index), so a sweep
    /// never drops an entry a reader may still have to wait for.
    level_max: AtomicUsize,
}

impl Barrier {
    pub(super) fn new() -> Barrier {
        Barrier {
            inner: Mutex::new(Inner::default()),
            level_max: AtomicUsize::new(0),
        }
    }

    /// A connection reads or writes at `level` from now on.
    pub(super) fn note_level(&self, level: Level) {
        self.level_max.fetch_max(level.index(), Ordering::AcqRel);
    }

    fn sweep_level(&self) -> Level {
        Level::ALL[self.level_max.load(Ordering::Acquire)]
    }

    /// Records a commit handed to group commit, with the effects it applied
    /// to the store. Called under the store's write lock.
    pub(super) fn record(&self, effects: &[Effect], ticket: &Ticket<FsStorage>) {
        self.note_level(ticket.level());
        let level = self.sweep_level();
        let mut inner = self.inner.lock().expect("barrier lock");
        inner.seq += 1;
        let seq = inner.seq;
        let entry = || Entry {
            seq,
            ticket: ticket.follow(Level::Local),
        };
        for e in effects {
            match e {
                Effect::Set(k, _) | Effect::Del(k) => {
                    // The key is usually new to the map only on its first
                    // pending write; replacing keeps the allocation.
                    match inner.keys.get_mut(k.as_slice()) {
                        Some(old) => *old = entry(),
                        None => {
                            inner.keys.insert(k.clone(), entry());
                        }
                    }
                }
                Effect::FlushAll => inner.flush = Some(entry()),
                Effect::Noop => {}
            }
        }
        inner.last = Some(entry());
        if inner.keys.len() > 2 * inner.swept + 256 {
            inner
                .keys
                .retain(|_, e| !e.ticket.follow(level).reached_now());
            inner.swept = inner.keys.len();
            let inner = &mut *inner;
            for slot in [&mut inner.flush, &mut inner.last] {
                if slot
                    .as_ref()
                    .is_some_and(|e| e.ticket.follow(level).reached_now())
                {
                    *slot = None;
                }
            }
        }
    }

    /// What a read that saw `seen` must wait for at `level`: a ticket for
    /// the newest commit among them that has not reached it yet, or None
    /// (answer now). Called once the reply is computed: a commit recorded
    /// since is newer than any the reply saw, and waiting for it covers
    /// them (entries go only once reached), so no store lock is needed.
    /// `level` is asked only when some such commit exists (None: do not
    /// wait), so a read with nothing pending costs one map lookup per key.
    pub(super) fn wait_for(
        &self,
        seen: &Seen<'_>,
        level: impl FnOnce() -> Option<Level>,
    ) -> Option<Ticket<FsStorage>> {
        let inner = self.inner.lock().expect("barrier lock");
        let newer = |a: Option<&'_ Entry>, b: Option<&'_ Entry>| -> bool {
            match (a, b) {
                (Some(a), Some(b)) => a.seq > b.seq,
                (Some(_), None) => true,
                _ => false,
            }
        };
        let mut newest: Option<&Entry> = inner.flush.as_ref();
        match seen {
            Seen::All => {
                if newer(inner.last.as_ref(), newest) {
                    newest = inner.last.as_ref();
                }
            }
            // Empty: the common case once the mirror keeps up.
            Seen::Keys(keys) if !inner.keys.is_empty() => {
                for k in keys {
                    let e = inner.keys.get(*k);
                    if newer(e, newest) {
                        newest = e;
                    }
                }
            }
            Seen::Keys(_) => {}
        }
        let t = newest?.ticket.follow(level()?);
        (!t.reached_now()).then_some(t)
    }

    /// Forgets everything: the node's role changed (its group commit, and
    /// the tickets' hold on its log, must go).
    /// Forgets the commits of batches newer than `hardened_batch`: they
    /// failed and their effects were taken back out of the store (see
    /// `Server::take_back_unlogged`), so a read of their keys has nothing
    /// to wait for.
    pub(super) fn forget_after(&self, hardened_batch: u64) {
        let mut inner = self.inner.lock().expect("barrier lock");
        inner.keys.retain(|_, e| e.ticket.batch() <= hardened_batch);
        inner.swept = inner.keys.len();
        let inner = &mut *inner;
        for slot in [&mut inner.flush, &mut inner.last] {
            if slot
                .as_ref()
                .is_some_and(|e| e.ticket.batch() > hardened_batch)
            {
                *slot = None;
            }
        }
    }

    pub(super) fn clear(&self) {
        *self.inner.lock().expect("barrier lock") = Inner::default();
    }

    /// Entries held (INFO).
    pub(super) fn len(&self) -> usize {
        self.inner.lock().expect("barrier lock").keys.len()
    }
}
