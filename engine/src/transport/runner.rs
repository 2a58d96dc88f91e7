//! Running one session over one connection: the glue between the pure
//! session machines, the logs, group commit and the applier.
//!
//! Each side runs its session on one thread that sleeps in a single wait on
//! "the partner sent something" or "something local moved" (the log's
//! written/hardened LSN on the principal, the applied LSN on the mirror),
//! through a [`Wakeup`]; there is no polling timer on the data path. A
//! coarse tick (`TICK`) drives heartbeats, timeouts and stop requests.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::apply::{Applier, ApplierThread};
use crate::commit::GroupCommit;
use crate::log::{frame, Log, Storage};
use crate::replication::catchup::PrincipalLog;
use crate::replication::handshake::{Handshake, Secret, Step};
use crate::replication::history::EpochHistory;
use crate::replication::session::{
    MirrorCommand, MirrorProgress, MirrorSession, MirroringState, PrincipalCommand,
    PrincipalSession, SessionConfig,
};
use crate::replication::wire::{Message, RefuseCode, Role, NONCE_BYTES};
use crate::transport::{Conn, TransportPath};
use crate::wake::Wakeup;

/// Identity and secrets of a node for the handshake.
#[derive(Clone, Debug)]
pub struct NodeIdentity {
    pub database_id: [u8; 16],
    pub secret: Secret,
}

/// The longest a session thread sleeps without looking at its clock.
const TICK: Duration = Duration::from_millis(10);

/// The mirror acknowledges (and syncs) at least every this many bytes
/// received.
const DRAIN_BYTES_MAX: u64 = 8 << 20;

/// At most this many bytes of batches go to the transport per call, so
/// acknowledgements are read in between during a long catch-up.
const SHIP_CHUNK_BYTES: usize = 4 << 20;

/// What a session runner publishes about itself, for status snapshots.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionSnapshot {
    /// A partner is authenticated and the session runs.
    pub connected: bool,
    pub state: Option<MirroringState>,
    /// On the principal: what the mirror acknowledged. On the mirror: its
    /// own received, hardened and applied LSNs.
    pub mirror: MirrorProgress,
    /// The commit LSN (principal: computed; mirror: as published to it).
    pub commit_lsn: u64,
    pub path: Option<TransportPath>,
    /// Ship payloads go out as zero-copy sends.
    pub zero_copy: bool,
    /// Bytes sent over every session so far.
    pub bytes_sent: u64,
    /// Sessions that got past the handshake so far.
    pub sessions: u64,
    /// Why the last session (or attempt) ended.
    pub last_error: Option<String>,
    /// Mirror: the principal's written LSN as its last heartbeat said.
    pub principal_written: u64,
    /// Mirror: the last session was SYNCHRONIZED when it ended.
    pub ended_synchronized: bool,
    /// The session ended in a handover (manual failover): on the
    /// principal, it sent it; on the mirror, it received it.
    pub handed_over: bool,
    /// A reseed in progress: bytes of snapshot sent (principal) or
    /// received (mirror), of the total.
    pub reseed: Option<(u64, u64)>,
}

/// Shared between a runner and whoever reads its status.
#[derive(Default)]
pub struct SessionStatus {
    inner: Mutex<SessionSnapshot>,
    /// An operator asked to pause shipping (the principal's runner acts
    /// on it within a tick).
    suspend: AtomicBool,
    /// Where the runner's notable events go (a salvaged tail, say).
    logger: Mutex<Option<crate::node::Logger>>,
    /// A manual failover asked for: once the mirror hardened everything,
    /// the principal's runner hands over and ends the session.
    handover: AtomicBool,
    /// Principal: where a reseed's snapshot comes from.
    snapshots: Mutex<Option<crate::node::SnapshotSource>>,
}

impl SessionStatus {
    pub fn set_suspended(&self, suspended: bool) {
        self.suspend.store(suspended, Ordering::Release);
    }

    /// Principal: the source of snapshots for reseeding a mirror whose log
    /// is gone here.
    pub fn set_snapshots(&self, source: crate::node::SnapshotSource) {
        *self.snapshots.lock().expect("status lock poisoned") = Some(source);
    }

    pub fn set_handover(&self, handover: bool) {
        self.handover.store(handover, Ordering::Release);
    }

    pub fn handover_requested(&self) -> bool {
        self.handover.load(Ordering::Acquire)
    }

    pub fn suspend_requested(&self) -> bool {
        self.suspend.load(Ordering::Acquire)
    }

    /// Sends the runner's notable events to `logger`.
    pub fn set_logger(&self, logger: crate::node::Logger) {
        *self.logger.lock().expect("status lock poisoned") = Some(logger);
    }

    fn note(&self, line: &str) {
        if let Some(l) = &*self.logger.lock().expect("status lock poisoned") {
            l.line(line);
        }
    }

    pub fn snapshot(&self) -> SessionSnapshot {
        self.inner.lock().expect("status lock poisoned").clone()
    }

    pub fn update(&self, f: impl FnOnce(&mut SessionSnapshot)) {
        f(&mut self.inner.lock().expect("status lock poisoned"));
    }
}

/// Runs this side's handshake over `conn` until the partner is
/// authenticated or refused (a refusal is sent to the partner too). On
/// success the connection carries the session's message keys: every later
/// message either way is tagged and checked (`replication::seal`).
#[allow(clippy::too_many_arguments)]
pub fn authenticate(
    conn: &mut dyn Conn,
    role: Role,
    id: &NodeIdentity,
    epoch: u64,
    nonce: [u8; NONCE_BYTES],
    timeout: Duration,
    segment_bytes: u64,
) -> Result<u64, String> {
    let seed = crate::replication::pake::random_seed()
        .map_err(|e| format!("no randomness for the key exchange: {e}"))?;
    let (mut hs, first) = Handshake::start_with_segment_bytes(
        role,
        id.database_id,
        epoch,
        id.secret.clone(),
        nonce,
        seed,
        segment_bytes,
    );
    if let Some(b) = conn.channel_binding() {
        hs.bind_channel(b);
    }
    // Until the partner is authenticated, only handshake-sized messages.
    conn.set_recv_limit(HANDSHAKE_MESSAGE_BYTES_MAX);
    let r = handshake_loop(conn, &mut hs, first, timeout);
    conn.set_recv_limit(0);
    r
}

/// The largest message accepted before authentication (a hello is 69
/// bytes, a pake 38, a confirm 37, a refusal at most about 1 KiB).
const HANDSHAKE_MESSAGE_BYTES_MAX: usize = 4096;

fn handshake_loop(
    conn: &mut dyn Conn,
    hs: &mut Handshake,
    first: Vec<Message>,
    timeout: Duration,
) -> Result<u64, String> {
    for m in &first {
        conn.send(m).map_err(|e| e.to_string())?;
    }
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err("handshake timed out".into());
        }
        let Some(msg) = conn.recv(Some(left), None).map_err(|e| e.to_string())? else {
            continue;
        };
        match hs.on_message(msg) {
            Ok(Step::Send(out)) => {
                for m in out {
                    conn.send(&m).map_err(|e| e.to_string())?;
                }
            }
            Ok(Step::Authenticated { peer, keys }) => {
                // Before anything more is read or sent: the next message
                // either way is the first tagged one.
                conn.set_seal(keys);
                return Ok(peer.epoch);
            }
            Err(e) => {
                if let Some(r) = e.refuse {
                    let _ = conn.send(&r);
                }
                return Err(e.reason);
            }
        }
    }
}

fn millis(since: Instant) -> u64 {
    since.elapsed().as_millis() as u64
}

/// Runs the principal's side of one session until it closes; returns why.
/// Remote commit levels of `gc` advance with the mirror's acknowledgements.
#[allow(clippy::too_many_arguments)]
pub fn run_principal<S: Storage>(
    conn: &mut dyn Conn,
    gc: &GroupCommit<S>,
    history: &[(u64, u64)],
    id: &NodeIdentity,
    cfg: SessionConfig,
    nonce: [u8; NONCE_BYTES],
    stop: &AtomicBool,
    status: &SessionStatus,
) -> String {
    if let Err(e) = authenticate(
        conn,
        Role::Principal,
        id,
        gc.epoch(),
        nonce,
        Duration::from_millis(cfg.partner_timeout_ms),
        gc.log().options().segment_bytes as u64,
    ) {
        return e;
    }
    serve_principal(
        conn,
        gc,
        history,
        cfg,
        &mut || stop.load(Ordering::Acquire),
        status,
    )
}

/// The principal's session on an authenticated connection, until it
/// closes or `stop()` says so (asked every loop, at least every `TICK`).
pub fn serve_principal<S: Storage>(
    conn: &mut dyn Conn,
    gc: &GroupCommit<S>,
    history: &[(u64, u64)],
    cfg: SessionConfig,
    stop: &mut dyn FnMut() -> bool,
    status: &SessionStatus,
) -> String {
    let log = gc.log();
    let epoch = gc.epoch();
    conn.set_send_timeout(Some(Duration::from_millis(cfg.partner_timeout_ms)));
    let sent_before = conn.bytes_sent();
    let base_sent = status.snapshot().bytes_sent;
    let wake = match Wakeup::new() {
        Ok(w) => Arc::new(w),
        Err(e) => return format!("creating the session's eventfd: {e}"),
    };
    log.set_watcher(Some(wake.clone()));
    let t0 = Instant::now();
    let mut session = PrincipalSession::new(cfg, 0, log.written_lsn(), log.hardened_lsn());
    let (path, zero_copy) = (conn.path(), conn.zero_copy());
    status.update(|s| {
        s.connected = true;
        s.sessions += 1;
        s.path = Some(path);
        s.zero_copy = zero_copy;
        s.state = Some(session.state());
    });
    gc.progress().set_remote_attached(true);
    // Acknowledgements only count for the log as it is now: a truncation
    // (a new generation) ends the session, and the next one catches up.
    let generation = gc.progress().generation();
    let mut backlog = std::collections::VecDeque::new();
    let segment_end_at = |lsn: u64| log.segment_end_at(lsn);
    let reason = 'run: loop {
        if stop() {
            break "stopped".to_string();
        }
        if gc.progress().generation() != generation {
            break "the log was truncated under the session; reconnecting to catch up".to_string();
        }
        // Arm before looking at the LSNs: a move after this look signals
        // the eventfd and the wait below returns at once.
        wake.arm();
        // Hardened first: it never passes what was written before it (a
        // truncation in between can, hence the min).
        let hardened = log.hardened_lsn();
        let written = log.written_lsn();
        let mut cmds = session.on_local_progress(millis(t0), written, hardened.min(written));
        let want = status.suspend_requested();
        if want != session.is_suspended() {
            cmds.extend(if want {
                session.suspend()
            } else {
                session.resume(millis(t0))
            });
        }
        cmds.extend(session.on_tick(millis(t0)));
        if status.handover_requested()
            && backlog.is_empty()
            && session.mirror().hardened == written
            && hardened >= written
        {
            let m = Message::Refuse {
                code: RefuseCode::HandOver,
                reason: format!("epoch {epoch} ends at LSN {written}; take over"),
            };
            if let Err(e) = conn.send(&m) {
                break 'run format!("sending the handover: {e}");
            }
            status.update(|s| s.handed_over = true);
            break "handed over to the mirror (manual failover)".to_string();
        }
        // Sleep only when there was nothing to do; either way, read every
        // acknowledgement that has arrived.
        let mut wait = if cmds.is_empty() {
            TICK
        } else {
            Duration::ZERO
        };
        for c in cmds {
            if let Err(e) =
                execute_principal(conn, gc, c, generation, &mut backlog, history, status)
            {
                break 'run e;
            }
        }
        // One chunk of log per round, then the acknowledgements.
        if let Err(e) = ship_some(conn, gc, &mut backlog) {
            break 'run e;
        }
        if !backlog.is_empty() {
            wait = Duration::ZERO;
        }
        loop {
            let msg = match conn.recv(Some(wait), Some(&wake)) {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(e) => break 'run e.to_string(),
            };
            wait = Duration::ZERO;
            let plog = PrincipalLog {
                history,
                start_lsn: log.start_lsn(),
                written_lsn: log.written_lsn(),
                epoch,
                segment_end_at: Some(&segment_end_at),
            };
            for c in session.on_message(millis(t0), msg, &plog) {
                if let Err(e) =
                    execute_principal(conn, gc, c, generation, &mut backlog, history, status)
                {
                    break 'run e;
                }
            }
        }
        let (state, mirror, commit) = (session.state(), session.mirror(), session.commit_lsn());
        let sent = base_sent + conn.bytes_sent() - sent_before;
        status.update(|s| {
            s.state = Some(state);
            s.mirror = mirror;
            s.commit_lsn = commit;
            s.bytes_sent = sent;
        });
    };
    gc.progress().set_remote_attached(false);
    log.set_watcher(None);
    status.update(|s| {
        s.connected = false;
        s.ended_synchronized = s.state == Some(MirroringState::Synchronized);
        s.state = Some(MirroringState::Disconnected);
        s.last_error = Some(reason.clone());
    });
    reason
}

/// Log to ship: batches in `[from, to)`, the first following `prev`.
struct ShipRange {
    from: u64,
    to: u64,
    prev: u64,
    commit_lsn: u64,
}

/// Sends up to `SHIP_CHUNK_BYTES` of the backlog.
fn ship_some<S: Storage>(
    conn: &mut dyn Conn,
    gc: &GroupCommit<S>,
    backlog: &mut std::collections::VecDeque<ShipRange>,
) -> Result<(), String> {
    let Some(r) = backlog.front_mut() else {
        return Ok(());
    };
    let mut views = Vec::new();
    let mut bytes = 0;
    for v in gc.log().read_from(r.from).map_err(|e| e.to_string())? {
        let v = v.map_err(|e| e.to_string())?;
        if v.lsn() >= r.to {
            break;
        }
        bytes += v.frame().len();
        views.push(v);
        if bytes >= SHIP_CHUNK_BYTES {
            break;
        }
    }
    if let Some(last) = views.last() {
        let frames: Vec<&[u8]> = views.iter().map(|v| v.frame()).collect();
        conn.send_ships(r.commit_lsn, r.prev, &frames)
            .map_err(|e| e.to_string())?;
        r.prev = last.end_lsn();
        r.from = last.end_lsn();
    }
    if views.is_empty() || r.from >= r.to {
        backlog.pop_front();
    }
    Ok(())
}

fn execute_principal<S: Storage>(
    conn: &mut dyn Conn,
    gc: &GroupCommit<S>,
    c: PrincipalCommand,
    generation: u64,
    backlog: &mut std::collections::VecDeque<ShipRange>,
    history: &[(u64, u64)],
    status: &SessionStatus,
) -> Result<(), String> {
    match c {
        PrincipalCommand::Reseed { why } => Err(reseed(conn, gc.log(), history, status, &why)),
        PrincipalCommand::Send(m) => conn.send(&m).map_err(|e| e.to_string()),
        PrincipalCommand::Ship {
            from,
            to,
            commit_lsn,
        } => {
            // Queued, and sent a chunk at a time by `ship_some` between
            // reads of the mirror's acknowledgements.
            match backlog.back_mut() {
                Some(last) if last.to == from => {
                    last.to = to;
                    last.commit_lsn = last.commit_lsn.max(commit_lsn);
                }
                _ => backlog.push_back(ShipRange {
                    from,
                    to,
                    prev: from,
                    commit_lsn,
                }),
            }
            Ok(())
        }
        PrincipalCommand::Advance { level, lsn } => {
            if !gc.progress().advance_in(generation, level, lsn)
                && gc.progress().generation() != generation
            {
                return Err(
                    "the log was truncated under the session; reconnecting to catch up".into(),
                );
            }
            Ok(())
        }
        PrincipalCommand::State(_) => Ok(()),
        PrincipalCommand::Close { reason } => Err(reason),
    }
}

/// The mirror's runner state between commands.
struct MirrorRun<'a, S: Storage, A: Applier> {
    log: &'a Arc<Log<S>>,
    applier: &'a ApplierThread<A>,
    history: Option<&'a mut EpochHistory>,
    session: MirrorSession,
    t0: Instant,
    /// The latest acknowledgement not sent yet (acks are coalesced while
    /// there are messages to read).
    ack: Option<Message>,
    /// A sync was asked for; it runs once the socket is drained, so one
    /// sync covers every batch that arrived meanwhile.
    sync: bool,
    status: &'a SessionStatus,
    /// A reseed being received: LSN, CRC, history to adopt, bytes so far,
    /// total, when it began.
    snapshot: Option<Incoming>,
}

struct Incoming {
    lsn: u64,
    segment_end: u64,
    crc32c: u32,
    history: Vec<(u64, u64)>,
    bytes: Vec<u8>,
    total: u64,
    began: Instant,
    told: u64,
}

impl<S: Storage, A: Applier> MirrorRun<'_, S, A> {
    fn execute(&mut self, cmds: Vec<MirrorCommand>, conn: &mut dyn Conn) -> Result<(), String> {
        let mut pending: std::collections::VecDeque<MirrorCommand> = cmds.into();
        while let Some(c) = pending.pop_front() {
            let now = millis(self.t0);
            let more = match c {
                MirrorCommand::Send(m @ Message::Ack { .. }) => {
                    self.ack = Some(m);
                    Vec::new()
                }
                MirrorCommand::Send(m) => {
                    conn.send(&m).map_err(|e| e.to_string())?;
                    Vec::new()
                }
                MirrorCommand::SnapshotBegin {
                    lsn,
                    segment_end,
                    total_bytes,
                    crc32c,
                    history,
                } => {
                    self.status.note(&format!(
                        "mirrorlog[mirror]: the principal no longer has the log this mirror needs: reseeding from its snapshot at LSN {lsn} ({total_bytes} bytes)"
                    ));
                    self.status.update(|s| s.reseed = Some((0, total_bytes)));
                    self.snapshot = Some(Incoming {
                        lsn,
                        segment_end,
                        crc32c,
                        history,
                        // Grown as chunks come: the announced size is the
                        // principal's word, not yet backed by bytes.
                        bytes: Vec::with_capacity(total_bytes.min(64 << 20) as usize),
                        total: total_bytes,
                        began: Instant::now(),
                        told: 0,
                    });
                    Vec::new()
                }
                MirrorCommand::SnapshotChunk(data) => {
                    let inc = self
                        .snapshot
                        .as_mut()
                        .ok_or("a snapshot chunk without its beginning")?;
                    inc.bytes.extend_from_slice(&data);
                    let (got, total) = (inc.bytes.len() as u64, inc.total);
                    if total > 0 && got * 4 / total > inc.told {
                        inc.told = got * 4 / total;
                        self.status.note(&format!(
                            "mirrorlog[mirror]: reseed: {got} of {total} bytes received ({}%)",
                            got * 100 / total
                        ));
                    }
                    self.status.update(|s| s.reseed = Some((got, total)));
                    Vec::new()
                }
                MirrorCommand::SnapshotDone => {
                    let inc = self
                        .snapshot
                        .take()
                        .ok_or("a snapshot end without its beginning")?;
                    self.restore_snapshot(inc)?;
                    Vec::new()
                }
                MirrorCommand::HandedOver => {
                    self.status.update(|s| s.handed_over = true);
                    Vec::new()
                }
                MirrorCommand::Rewind(t) => {
                    let to = self.applier.rewind(t).map_err(|e| {
                        format!("the principal cuts this log at LSN {t}, below what is applied here, and the state machine cannot go back: {e}")
                    })?;
                    self.status.note(&format!(
                        "mirrorlog[mirror]: state machine put back to LSN {to} for a cut at {t}"
                    ));
                    self.session.on_rewound(now, to)
                }
                MirrorCommand::Truncate(t) => {
                    if let Some(h) = self.history.as_deref() {
                        if let Some(path) = salvage(self.log, h.dir(), t)? {
                            self.status.note(&format!(
                                "mirrorlog[mirror]: the principal's history diverges from this log at LSN {t}; the discarded tail ({} bytes, whole frames with their epochs and LSNs) was saved to {}",
                                self.log.written_lsn() - t,
                                path.display()
                            ));
                        }
                    }
                    self.log
                        .truncate(t)
                        .map_err(|e| format!("truncating the mirror's log: {e}"))?;
                    Vec::new()
                }
                MirrorCommand::Append(frame_bytes) => {
                    self.record_epoch(&frame_bytes)?;
                    self.log
                        .append_frame(&frame_bytes)
                        .map_err(|e| format!("appending a shipped batch: {e}"))?;
                    self.session.on_appended(now, self.log.written_lsn())
                }
                MirrorCommand::Sync => {
                    self.sync = true;
                    Vec::new()
                }
                MirrorCommand::ApplyLimit(l) => {
                    self.applier.set_limit(l);
                    Vec::new()
                }
                MirrorCommand::Close { reason } => return Err(reason),
            };
            pending.extend(more);
        }
        Ok(())
    }

    /// The whole snapshot arrived: checks it, restores the state machine
    /// from it (durably, if the applier keeps state on disk), empties the
    /// log and restarts it at the snapshot's LSN, and adopts the
    /// principal's epoch history.
    fn restore_snapshot(&mut self, inc: Incoming) -> Result<(), String> {
        let lsn = inc.lsn;
        if crc32c::crc32c(&inc.bytes) != inc.crc32c {
            self.status.update(|s| s.reseed = None);
            return Err(format!(
                "the snapshot at LSN {lsn} failed its checksum; nothing was changed, retrying"
            ));
        }
        // This log's last epoch unknown to the principal: its batches of
        // that epoch were never acknowledged through the principal's
        // history. Saved before the log goes, as a cut saves a tail.
        let mine = self.log.last_epoch();
        if mine > 0 && !inc.history.iter().any(|&(e, _)| e == mine) {
            if let Some(h) = self.history.as_deref() {
                let from = h
                    .entries()
                    .iter()
                    .find(|&&(e, _)| e == mine)
                    .map_or(self.log.start_lsn(), |&(_, s)| s)
                    .max(self.log.start_lsn());
                if let Some(path) = salvage(self.log, h.dir(), from)? {
                    self.status.note(&format!(
                        "mirrorlog[mirror]: this log's epoch {mine} is unknown to the principal; its batches from LSN {from} were saved to {} before the reseed",
                        path.display()
                    ));
                }
            }
        }
        let n = inc.bytes.len();
        self.applier
            .restore(lsn, Arc::new(inc.bytes))
            .map_err(|e| format!("restoring the snapshot at LSN {lsn}: {e}"))?;
        self.log
            .reset(lsn, Some(inc.segment_end))
            .map_err(|e| format!("restarting the log at LSN {lsn} after the snapshot: {e}"))?;
        if let Some(h) = self.history.as_deref_mut() {
            h.replace(&inc.history)
                .map_err(|e| format!("adopting the principal's epoch history: {e}"))?;
        }
        self.session.on_rewound(millis(self.t0), lsn);
        self.status.update(|s| s.reseed = None);
        let secs = inc.began.elapsed().as_secs_f64();
        self.status.note(&format!(
            "mirrorlog[mirror]: reseeded: state restored at LSN {lsn} from {:.1} MB in {secs:.2} s ({:.0} MB/s); the log restarts there",
            n as f64 / 1e6,
            n as f64 / 1e6 / secs.max(1e-9)
        ));
        Ok(())
    }

    /// A frame of an epoch this log has not seen yet: record where the
    /// epoch starts here, durably, before its first batch (see
    /// `replication::history`).
    fn record_epoch(&mut self, frame_bytes: &[u8]) -> Result<(), String> {
        let Some(h) = self.history.as_deref_mut() else {
            return Ok(());
        };
        let header = frame::decode_header(frame_bytes)
            .map_err(|e| format!("shipped frame is invalid: {e}"))?;
        if header.epoch > h.last_epoch() {
            h.begin(header.epoch, self.log.written_lsn())
                .map_err(|e| format!("recording epoch {}: {e}", header.epoch))?;
        }
        Ok(())
    }

    /// Sends the pending ack, then runs a pending sync (and acks it).
    fn flush(&mut self, conn: &mut dyn Conn) -> Result<(), String> {
        loop {
            if let Some(m) = self.ack.take() {
                conn.send(&m).map_err(|e| e.to_string())?;
            }
            if !std::mem::take(&mut self.sync) {
                return Ok(());
            }
            let h = self
                .log
                .sync()
                .map_err(|e| format!("syncing the mirror's log: {e}"))?;
            let cmds = self.session.on_synced(millis(self.t0), h);
            self.execute(cmds, conn)?;
        }
    }
}

/// Runs the mirror's side of one session until it closes; returns why.
/// With `history`, every new epoch seen in the stream is recorded in it
/// before its first batch is appended.
#[allow(clippy::too_many_arguments)]
pub fn run_mirror<S: Storage, A: Applier>(
    conn: &mut dyn Conn,
    log: &Arc<Log<S>>,
    applier: &ApplierThread<A>,
    history: Option<&mut EpochHistory>,
    id: &NodeIdentity,
    cfg: SessionConfig,
    nonce: [u8; NONCE_BYTES],
    stop: &AtomicBool,
    status: &SessionStatus,
) -> String {
    if let Err(e) = authenticate(
        conn,
        Role::Mirror,
        id,
        log.last_epoch(),
        nonce,
        Duration::from_millis(cfg.partner_timeout_ms),
        log.options().segment_bytes as u64,
    ) {
        return e;
    }
    // One session: no principal told this one anything before it.
    let mut commit_floor = 0;
    serve_mirror(
        conn,
        log,
        applier,
        history,
        cfg,
        &mut commit_floor,
        &mut || stop.load(Ordering::Acquire),
        status,
    )
}

/// The mirror's session on an authenticated connection, until it closes
/// or `stop()` says so. `commit_floor` is the highest commit LSN a
/// principal told this mirror process, kept by the caller across its
/// sessions (0 before the first; see `MirrorSession::new`): the session
/// starts from it and leaves it raised to what it was told.
#[allow(clippy::too_many_arguments)]
pub fn serve_mirror<S: Storage, A: Applier>(
    conn: &mut dyn Conn,
    log: &Arc<Log<S>>,
    applier: &ApplierThread<A>,
    history: Option<&mut EpochHistory>,
    cfg: SessionConfig,
    commit_floor: &mut u64,
    stop: &mut dyn FnMut() -> bool,
    status: &SessionStatus,
) -> String {
    conn.set_send_timeout(Some(Duration::from_millis(cfg.partner_timeout_ms)));
    let sent_before = conn.bytes_sent();
    let base_sent = status.snapshot().bytes_sent;
    let wake = match Wakeup::new() {
        Ok(w) => Arc::new(w),
        Err(e) => return format!("creating the session's eventfd: {e}"),
    };
    applier.set_watcher(Some(wake.clone()));
    let progress = MirrorProgress {
        received: log.written_lsn(),
        hardened: log.hardened_lsn(),
        applied: applier.applied_lsn().min(log.hardened_lsn()),
    };
    let (session, first) = MirrorSession::new_with_segment_end(
        cfg,
        0,
        log.last_epoch(),
        progress,
        log.segment_end_at(progress.received),
        *commit_floor,
    );
    let mut run = MirrorRun {
        log,
        applier,
        history,
        session,
        t0: Instant::now(),
        ack: None,
        sync: false,
        status,
        snapshot: None,
    };
    let (path, zero_copy) = (conn.path(), conn.zero_copy());
    status.update(|s| {
        s.connected = true;
        s.sessions += 1;
        // A handover belongs to the session that received it.
        s.handed_over = false;
        s.path = Some(path);
        s.zero_copy = zero_copy;
        s.state = Some(MirroringState::Synchronizing);
    });
    let mut reported_applied = progress.applied;
    let result = (|| -> Result<(), String> {
        run.execute(first, conn)?;
        loop {
            if stop() {
                return Err("stopped".into());
            }
            // Drain what already arrived, then ack once and sync once; but
            // never more than DRAIN_BYTES_MAX between acks, or a catch-up
            // that keeps the socket full would leave the principal without
            // an ack past its partner timeout.
            let drained_from = run.log.written_lsn();
            // (A cut while draining moves the written LSN back.)
            while run.log.written_lsn().saturating_sub(drained_from) < DRAIN_BYTES_MAX {
                let Some(msg) = conn
                    .recv(Some(Duration::ZERO), None)
                    .map_err(|e| e.to_string())?
                else {
                    break;
                };
                let cmds = run.session.on_message(millis(run.t0), msg);
                run.execute(cmds, conn)?;
            }
            run.flush(conn)?;
            wake.arm();
            // Never past what is hardened here (after an interrupted reseed
            // the state machine is ahead of an emptied log).
            let applied = applier.applied_lsn().min(run.log.hardened_lsn());
            // A rewind moves it back.
            reported_applied = reported_applied.min(applied);
            if applied > reported_applied {
                reported_applied = applied;
                let cmds = run.session.on_applied(millis(run.t0), applied);
                run.execute(cmds, conn)?;
            }
            let cmds = run.session.on_tick(millis(run.t0));
            run.execute(cmds, conn)?;
            run.flush(conn)?;
            let p = run.session.progress();
            let commit = run.session.commit_lsn();
            let state = run.session.state();
            let sent = base_sent + conn.bytes_sent() - sent_before;
            let principal_written = run.session.principal_written();
            status.update(|s| {
                s.state = Some(state);
                s.mirror = p;
                s.commit_lsn = commit;
                s.bytes_sent = sent;
                if let Some(w) = principal_written {
                    s.principal_written = w;
                }
            });
            if let Some(msg) = conn
                .recv(Some(TICK), Some(&wake))
                .map_err(|e| e.to_string())?
            {
                let cmds = run.session.on_message(millis(run.t0), msg);
                run.execute(cmds, conn)?;
            }
        }
    })();
    applier.set_watcher(None);
    *commit_floor = run.session.commit_floor();
    let reason = result.err().unwrap_or_default();
    status.update(|s| {
        s.connected = false;
        s.ended_synchronized = s.state == Some(MirroringState::Synchronized);
        s.state = Some(MirroringState::Disconnected);
        s.last_error = Some(reason.clone());
    });
    reason
}

/// Before a cut at `lsn`, saves the frames beyond it, exactly as the log
/// holds them, to `dir/salvage/salvage-<lsn>-<end>.frames` (written, synced,
/// renamed): an operator can recover what the divergent history had.
/// Returns the file's path, or None if there is nothing beyond `lsn`.
fn salvage<S: Storage>(
    log: &Log<S>,
    dir: &std::path::Path,
    lsn: u64,
) -> Result<Option<std::path::PathBuf>, String> {
    let end = log.written_lsn();
    if end <= lsn {
        return Ok(None);
    }
    let mut bytes = Vec::with_capacity((end - lsn) as usize);
    let iter = log
        .read_from(lsn)
        .map_err(|e| format!("reading the tail to salvage at LSN {lsn}: {e}"))?;
    for v in iter {
        let v = v.map_err(|e| format!("reading the tail to salvage: {e}"))?;
        bytes.extend_from_slice(v.frame());
    }
    let sdir = dir.join("salvage");
    crate::private::create_dir_all(&sdir)
        .map_err(|e| format!("creating {}: {e}", sdir.display()))?;
    let name = format!("salvage-{lsn}-{end}.frames");
    crate::durable::replace_file(&sdir, &name, &bytes)
        .map_err(|(ctx, e)| format!("saving the divergent tail: {ctx}: {e}"))?;
    Ok(Some(sdir.join(name)))
}

/// Sends the mirror a snapshot (`snapshot-begin`, then `snapshot-chunk`s)
/// of the state at an LSN this log still holds, or refuses it with
/// `LogPurged` when there is none; either way the session ends (the
/// returned reason). The mirror restores it, restarts its log there and
/// reconnects.
fn reseed<S: Storage>(
    conn: &mut dyn Conn,
    log: &Log<S>,
    history: &[(u64, u64)],
    status: &SessionStatus,
    why: &str,
) -> String {
    let refuse = |conn: &mut dyn Conn, reason: String| {
        let _ = conn.send(&Message::Refuse {
            code: RefuseCode::LogPurged,
            reason: reason.clone(),
        });
        reason
    };
    let source = status
        .snapshots
        .lock()
        .expect("status lock poisoned")
        .clone();
    let Some(source) = source else {
        return refuse(
            conn,
            format!("{why}; this principal has no snapshot source to reseed it from"),
        );
    };
    let (lsn, bytes) = match source() {
        Ok(Some(s)) => s,
        Ok(None) => {
            return refuse(
                conn,
                format!("{why}; there is no snapshot to reseed it from yet (take a checkpoint)"),
            )
        }
        Err(e) => return refuse(conn, format!("{why}; reading the snapshot failed: {e}")),
    };
    if lsn < log.start_lsn() || lsn > log.written_lsn() {
        return refuse(
            conn,
            format!(
                "{why}; the newest snapshot (LSN {lsn}) is outside this log ({}..{}); take a checkpoint",
                log.start_lsn(),
                log.written_lsn()
            ),
        );
    }
    if history.len() > crate::replication::wire::SNAPSHOT_HISTORY_MAX {
        return refuse(
            conn,
            format!("{why}; the epoch history is too long to send"),
        );
    }
    let began = Instant::now();
    let total = bytes.len() as u64;
    status.note(&format!(
        "mirrorlog[principal]: {why}: reseeding the mirror from the snapshot at LSN {lsn} ({total} bytes)"
    ));
    status.update(|s| s.reseed = Some((0, total)));
    let begin = Message::SnapshotBegin {
        lsn,
        segment_end: log.segment_end_at(lsn),
        total_bytes: total,
        crc32c: crc32c::crc32c(&bytes),
        history: history.to_vec(),
    };
    if let Err(e) = conn.send(&begin) {
        return format!("sending the snapshot: {e}");
    }
    let mut sent = 0u64;
    let mut told = 0u64;
    for chunk in bytes.chunks(crate::replication::wire::SNAPSHOT_CHUNK_BYTES) {
        if let Err(e) = conn.send(&Message::SnapshotChunk {
            data: chunk.to_vec(),
        }) {
            status.update(|s| s.reseed = None);
            return format!("sending the snapshot at byte {sent} of {total}: {e}");
        }
        sent += chunk.len() as u64;
        status.update(|s| s.reseed = Some((sent, total)));
        // Progress in quarters.
        if total > 0 && sent * 4 / total > told {
            told = sent * 4 / total;
            status.note(&format!(
                "mirrorlog[principal]: reseed: {sent} of {total} bytes sent ({}%)",
                sent * 100 / total
            ));
        }
    }
    status.update(|s| s.reseed = None);
    let secs = began.elapsed().as_secs_f64();
    format!(
        "reseeded the mirror from the snapshot at LSN {lsn} ({:.1} MB in {secs:.2} s, {:.0} MB/s); it reconnects to catch up from there",
        total as f64 / 1e6,
        total as f64 / 1e6 / secs.max(1e-9)
    )
}
