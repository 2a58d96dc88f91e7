//! One mirroring session after the handshake, on each side: a deterministic
//! state machine. Events in (a partner message, local log progress, a clock
//! tick), commands out (send, ship log, append, sync, apply up to, advance a
//! commit level, close). No I/O, no clock of its own: time is an argument in
//! milliseconds, so tests and the simulator drive it exactly.
//!
//! ```text
//!  principal                                   mirror
//!      ◀── position{epoch of last batch, written, hardened, applied}
//!  start{epoch, from, truncate_to} ──▶         (truncate, expect `from`)
//!  ship{commit, frame} … ──▶                   append → sync → apply ≤ commit
//!      ◀── ack{received, hardened, applied}    (after each of those)
//!  heartbeat{commit, written} ──▶ when idle    ack when idle
//! ```

use crate::commit::Level;
use crate::log::frame;
use crate::replication::catchup::{plan_catch_up, CatchUpError, PrincipalLog};
use crate::replication::wire::{Message, RefuseCode};

/// Timing of a session, in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionConfig {
    /// Send a heartbeat (principal) or an ack (mirror) after this long
    /// without sending anything.
    pub heartbeat_ms: u64,
    /// Close the session after this long without hearing from the partner.
    pub partner_timeout_ms: u64,
    /// A SYNCHRONIZED session drops back to SYNCHRONIZING when the mirror's
    /// hardened LSN falls this far behind the principal's (under load the
    /// mirror is always an ack round trip behind; that is not a state change).
    pub synchronized_lag_max_bytes: u64,
}

impl Default for SessionConfig {
    fn default() -> SessionConfig {
        SessionConfig {
            heartbeat_ms: 100,
            partner_timeout_ms: 1000,
            synchronized_lag_max_bytes: 64 << 20,
        }
    }
}

/// The mirroring state, as SQL Server names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MirroringState {
    /// No session.
    Disconnected,
    /// The mirror is catching up.
    Synchronizing,
    /// The mirror caught up (hardened everything the principal had
    /// hardened) and keeps up: it stays within
    /// `SessionConfig::synchronized_lag_max_bytes` of the principal.
    Synchronized,
    /// Shipping paused by an operator.
    Suspended,
}

/// How far the mirror says it has got.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MirrorProgress {
    pub received: u64,
    pub hardened: u64,
    pub applied: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PrincipalCommand {
    Send(Message),
    /// Ship the local log's batches in `[from, to)`, each as a `ship`
    /// carrying `commit_lsn`.
    Ship {
        from: u64,
        to: u64,
        commit_lsn: u64,
    },
    /// A commit level reached `lsn` on the mirror (see `commit::Progress`).
    Advance {
        level: Level,
        lsn: u64,
    },
    State(MirroringState),
    /// The log the mirror needs is gone here: send it a snapshot
    /// (`snapshot-begin`, `snapshot-chunk`s) and end the session, or refuse
    /// with `LogPurged` if there is none. `why` says what is missing.
    Reseed {
        why: String,
    },
    /// Send nothing more and close the connection.
    Close {
        reason: String,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    AwaitPosition,
    Streaming,
    Closed,
}

/// The principal's side of a session with one mirror.
pub struct PrincipalSession {
    cfg: SessionConfig,
    phase: Phase,
    state: MirroringState,
    suspended: bool,
    /// Everything below was handed to the transport.
    shipped: u64,
    mirror: MirrorProgress,
    written: u64,
    hardened: u64,
    last_heard_ms: u64,
    last_sent_ms: u64,
    /// The highest commit LSN sent to the mirror (in a ship or heartbeat).
    published: u64,
}

impl PrincipalSession {
    /// A session whose handshake just completed; the mirror speaks first.
    pub fn new(cfg: SessionConfig, now_ms: u64, written: u64, hardened: u64) -> PrincipalSession {
        PrincipalSession {
            cfg,
            phase: Phase::AwaitPosition,
            state: MirroringState::Synchronizing,
            suspended: false,
            shipped: 0,
            mirror: MirrorProgress::default(),
            written,
            hardened,
            last_heard_ms: now_ms,
            last_sent_ms: now_ms,
            published: 0,
        }
    }

    pub fn state(&self) -> MirroringState {
        if self.phase == Phase::Closed {
            MirroringState::Disconnected
        } else if self.suspended {
            MirroringState::Suspended
        } else {
            self.state
        }
    }

    pub fn mirror(&self) -> MirrorProgress {
        self.mirror
    }

    /// The LSN the mirror may apply up to: hardened on both sides.
    pub fn commit_lsn(&self) -> u64 {
        self.hardened.min(self.mirror.hardened)
    }

    /// Bytes written here and not yet handed to the transport.
    pub fn send_queue_bytes(&self) -> u64 {
        self.written.saturating_sub(self.shipped)
    }

    fn close(&mut self, out: &mut Vec<PrincipalCommand>, code: RefuseCode, reason: String) {
        if self.phase == Phase::Closed {
            return;
        }
        out.push(PrincipalCommand::Send(Message::Refuse {
            code,
            reason: reason.clone(),
        }));
        out.push(PrincipalCommand::Close { reason });
        out.push(PrincipalCommand::State(MirroringState::Disconnected));
        self.phase = Phase::Closed;
    }

    fn ship_pending(&mut self, now_ms: u64, out: &mut Vec<PrincipalCommand>) {
        if self.phase != Phase::Streaming || self.suspended {
            return;
        }
        if self.written > self.shipped {
            out.push(PrincipalCommand::Ship {
                from: self.shipped,
                to: self.written,
                commit_lsn: self.commit_lsn(),
            });
            self.published = self.commit_lsn();
            self.shipped = self.written;
            self.last_sent_ms = now_ms;
        }
    }

    /// The commit LSN moved (the mirror's ack, or the local sync) and no
    /// ship carried it: tell the mirror at once, so remote-apply commits
    /// and readers there do not wait for the next heartbeat.
    fn publish_commit(&mut self, now_ms: u64, out: &mut Vec<PrincipalCommand>) {
        if self.phase == Phase::Streaming && self.commit_lsn() > self.published {
            out.push(self.heartbeat(now_ms));
        }
    }

    /// A message from the mirror.
    pub fn on_message(
        &mut self,
        now_ms: u64,
        msg: Message,
        log: &PrincipalLog<'_>,
    ) -> Vec<PrincipalCommand> {
        let mut out = Vec::new();
        if self.phase == Phase::Closed {
            return out;
        }
        self.last_heard_ms = now_ms;
        match (self.phase, msg) {
            (_, Message::Refuse { reason, .. }) => {
                out.push(PrincipalCommand::Close {
                    reason: format!("the mirror refused: {reason}"),
                });
                out.push(PrincipalCommand::State(MirroringState::Disconnected));
                self.phase = Phase::Closed;
            }
            (
                Phase::AwaitPosition,
                Message::Position {
                    epoch,
                    written_lsn,
                    hardened_lsn,
                    applied_lsn,
                    segment_end,
                },
            ) => {
                if hardened_lsn > written_lsn || applied_lsn > hardened_lsn {
                    self.close(&mut out, RefuseCode::Protocol, format!(
                        "inconsistent position: written {written_lsn}, hardened {hardened_lsn}, applied {applied_lsn}"
                    ));
                    return out;
                }
                // Frames are shipped byte for byte at the LSNs the
                // principal gave them, padding included: a mirror whose
                // segment at its resume point ends elsewhere (made with
                // another --segment-bytes, kept across a restart with the
                // right one) can never continue this log. Only a reseed,
                // which starts its log afresh on this log's geometry,
                // brings it back. (After a cut the mirror's geometry at
                // the cut is not known here; the next session checks it.)
                let plan = plan_catch_up(log, epoch, written_lsn).and_then(|plan| {
                    match log.segment_end_at {
                        Some(end_at)
                            if segment_end != 0
                                && plan.truncate_to.is_none()
                                && end_at(plan.from_lsn) != segment_end =>
                        {
                            Err(CatchUpError::Geometry {
                                lsn: plan.from_lsn,
                                mirror_end: segment_end,
                                principal_end: end_at(plan.from_lsn),
                            })
                        }
                        _ => Ok(plan),
                    }
                });
                match plan {
                    // The log the mirror needs is gone, or its last epoch is
                    // one this principal never had (it followed an epoch
                    // that shipped it nothing before it was promoted, and
                    // the mirror, once that epoch's principal, wrote
                    // batches nobody acknowledged through this history):
                    // either way only a reseed brings it back.
                    Err(
                        e @ (CatchUpError::Purged { .. }
                        | CatchUpError::UnknownEpoch { .. }
                        | CatchUpError::Geometry { .. }),
                    ) => {
                        // The runner sends a snapshot if there is one (and
                        // refuses otherwise), then ends the session.
                        out.push(PrincipalCommand::Reseed { why: e.to_string() });
                        out.push(PrincipalCommand::State(MirroringState::Synchronizing));
                        self.phase = Phase::Closed;
                    }
                    Err(e) => {
                        let code = match e {
                            CatchUpError::Purged { .. } => RefuseCode::LogPurged,
                            _ => RefuseCode::EpochMismatch,
                        };
                        self.close(&mut out, code, e.to_string());
                    }
                    Ok(plan) => {
                        self.written = self.written.max(log.written_lsn);
                        self.shipped = plan.from_lsn;
                        self.mirror = MirrorProgress {
                            received: plan.from_lsn,
                            hardened: hardened_lsn.min(plan.from_lsn),
                            // After a cut the mirror's state machine goes
                            // back to a checkpoint at or below it: how far
                            // is not known until it acknowledges.
                            applied: if plan.truncate_to.is_some() {
                                0
                            } else {
                                applied_lsn.min(plan.from_lsn)
                            },
                        };
                        self.phase = Phase::Streaming;
                        out.push(PrincipalCommand::Send(Message::Start {
                            epoch: log.epoch,
                            from_lsn: plan.from_lsn,
                            truncate_to: plan.truncate_to,
                        }));
                        self.last_sent_ms = now_ms;
                        out.push(PrincipalCommand::State(self.state()));
                        self.advance(&mut out);
                        self.ship_pending(now_ms, &mut out);
                    }
                }
            }
            (
                Phase::Streaming,
                Message::Ack {
                    received_lsn,
                    hardened_lsn,
                    applied_lsn,
                },
            ) => {
                let m = self.mirror;
                let sane = received_lsn >= m.received
                    && hardened_lsn >= m.hardened
                    && applied_lsn >= m.applied
                    && received_lsn <= self.shipped
                    && hardened_lsn <= received_lsn
                    && applied_lsn <= hardened_lsn;
                if !sane {
                    self.close(&mut out, RefuseCode::Protocol, format!(
                        "acknowledgement out of order: received {received_lsn}, hardened {hardened_lsn}, applied {applied_lsn} after {m:?} with {} shipped",
                        self.shipped
                    ));
                    return out;
                }
                let commit_before = self.commit_lsn();
                self.mirror = MirrorProgress {
                    received: received_lsn,
                    hardened: hardened_lsn,
                    applied: applied_lsn,
                };
                self.advance(&mut out);
                // A new commit LSN lets the mirror apply more: publish it.
                debug_assert!(self.commit_lsn() >= commit_before);
                self.publish_commit(now_ms, &mut out);
            }
            (phase, m) => {
                let expected = if phase == Phase::AwaitPosition {
                    "position"
                } else {
                    "ack"
                };
                self.close(
                    &mut out,
                    RefuseCode::Protocol,
                    format!(
                        "unexpected {} message from the mirror (expected {expected})",
                        m.kind()
                    ),
                );
            }
        }
        out
    }

    fn heartbeat(&mut self, now_ms: u64) -> PrincipalCommand {
        self.last_sent_ms = now_ms;
        self.published = self.published.max(self.commit_lsn());
        PrincipalCommand::Send(Message::Heartbeat {
            commit_lsn: self.commit_lsn(),
            written_lsn: self.written,
        })
    }

    fn advance(&mut self, out: &mut Vec<PrincipalCommand>) {
        let m = self.mirror;
        out.push(PrincipalCommand::Advance {
            level: Level::RemoteWrite,
            lsn: m.received,
        });
        out.push(PrincipalCommand::Advance {
            level: Level::RemoteFlush,
            lsn: m.hardened,
        });
        out.push(PrincipalCommand::Advance {
            level: Level::RemoteApply,
            lsn: m.applied,
        });
        self.update_state(out);
    }

    /// SYNCHRONIZING -> SYNCHRONIZED once the mirror has hardened all that
    /// is hardened here; back when it falls more than the allowed lag behind.
    fn update_state(&mut self, out: &mut Vec<PrincipalCommand>) {
        let m = self.mirror;
        let lag = self.hardened.saturating_sub(m.hardened);
        let next = match self.state {
            MirroringState::Synchronizing if m.hardened >= self.hardened => {
                MirroringState::Synchronized
            }
            MirroringState::Synchronized if lag > self.cfg.synchronized_lag_max_bytes => {
                MirroringState::Synchronizing
            }
            s => s,
        };
        if next != self.state {
            self.state = next;
            out.push(PrincipalCommand::State(self.state()));
        }
    }

    /// The local log moved: new batches written, or the local hardened LSN.
    pub fn on_local_progress(
        &mut self,
        now_ms: u64,
        written: u64,
        hardened: u64,
    ) -> Vec<PrincipalCommand> {
        let mut out = Vec::new();
        if self.phase == Phase::Closed {
            return out;
        }
        assert!(hardened <= written, "hardened beyond written");
        self.written = self.written.max(written);
        self.hardened = self.hardened.max(hardened);
        if self.phase == Phase::Streaming {
            self.update_state(&mut out);
        }
        self.ship_pending(now_ms, &mut out);
        self.publish_commit(now_ms, &mut out);
        out
    }

    /// Time passed: heartbeat when idle, close when the mirror is silent.
    pub fn on_tick(&mut self, now_ms: u64) -> Vec<PrincipalCommand> {
        let mut out = Vec::new();
        if self.phase == Phase::Closed {
            return out;
        }
        let silent = now_ms.saturating_sub(self.last_heard_ms);
        if silent > self.cfg.partner_timeout_ms {
            out.push(PrincipalCommand::Close {
                reason: format!("the mirror was silent for {silent} ms"),
            });
            out.push(PrincipalCommand::State(MirroringState::Disconnected));
            self.phase = Phase::Closed;
            return out;
        }
        if self.phase == Phase::Streaming
            && now_ms.saturating_sub(self.last_sent_ms) >= self.cfg.heartbeat_ms
        {
            out.push(self.heartbeat(now_ms));
        }
        out
    }

    pub fn is_suspended(&self) -> bool {
        self.suspended
    }

    /// Pauses shipping (heartbeats go on, so the session stays up).
    pub fn suspend(&mut self) -> Vec<PrincipalCommand> {
        self.suspended = true;
        vec![PrincipalCommand::State(self.state())]
    }

    /// Resumes shipping; the session is SYNCHRONIZING again until the
    /// mirror has caught up with what queued meanwhile.
    pub fn resume(&mut self, now_ms: u64) -> Vec<PrincipalCommand> {
        self.suspended = false;
        if self.mirror.hardened < self.hardened || self.send_queue_bytes() > 0 {
            self.state = MirroringState::Synchronizing;
        }
        let mut out = vec![PrincipalCommand::State(self.state())];
        self.ship_pending(now_ms, &mut out);
        out
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MirrorCommand {
    Send(Message),
    /// Put the state machine back to at most this LSN (before a
    /// `Truncate` below what it applied); report with `on_rewound`.
    Rewind(u64),
    /// Cut the local log back to this LSN.
    Truncate(u64),
    /// Append this frame (verifying it) to the local log.
    Append(Vec<u8>),
    /// Make the local log durable.
    Sync,
    /// The applier may apply up to here.
    ApplyLimit(u64),
    /// The principal handed over (a manual failover): this mirror, which
    /// hardened everything it wrote, is to become principal.
    HandedOver,
    /// A reseed begins: `total_bytes` of snapshot of the state at `lsn`
    /// follow; adopt `history` once it is restored.
    SnapshotBegin {
        lsn: u64,
        segment_end: u64,
        total_bytes: u64,
        crc32c: u32,
        history: Vec<(u64, u64)>,
    },
    SnapshotChunk(Vec<u8>),
    /// Every byte arrived: check the CRC, restore the state machine, empty
    /// the log and restart it at the snapshot's LSN, adopt the history.
    /// The session then closes; the next one catches up from there.
    SnapshotDone,
    Close {
        reason: String,
    },
}

/// The mirror's side of a session.
pub struct MirrorSession {
    cfg: SessionConfig,
    phase: Phase,
    /// Next LSN a shipped frame may start at (or later, after padding).
    expected: u64,
    progress: MirrorProgress,
    commit_lsn: u64,
    sync_in_flight: bool,
    last_heard_ms: u64,
    last_sent_ms: u64,
    /// The principal's written LSN as its last heartbeat said.
    principal_written: Option<u64>,
    /// A reseed in progress: its LSN, total and received bytes.
    snapshot: Option<(u64, u64, u64)>,
    /// The last batch's epoch in the local log when the session began.
    last_epoch: u64,
    /// The highest commit LSN a principal told this mirror process (in
    /// this session or an earlier one), never above what this log had
    /// hardened when it was told. See [`MirrorSession::new`].
    commit_floor: u64,
}

impl MirrorSession {
    /// A session whose handshake just completed: sends the position of the
    /// local log (epoch of its last batch, 0 if none).
    ///
    /// `commit_floor` is [`MirrorSession::commit_floor`] of the previous
    /// session of this mirror process (0 for its first, and for a node
    /// that was principal before: only what a principal *told* this
    /// process counts). A commit LSN a principal tells its mirror is
    /// hardened on both; with honest disks, while this process lives and
    /// stays mirror, the only nodes that can be principal are that one
    /// (which keeps it) and this one, so no principal ever asks it to cut
    /// below the floor. One that does lost acknowledged commits (a disk
    /// that lied about fsync, a restored or damaged log): the session
    /// refuses (`RefuseCode::CommitsLost`) and the log is kept.
    pub fn new(
        cfg: SessionConfig,
        now_ms: u64,
        last_epoch: u64,
        progress: MirrorProgress,
        commit_floor: u64,
    ) -> (MirrorSession, Vec<MirrorCommand>) {
        MirrorSession::new_with_segment_end(cfg, now_ms, last_epoch, progress, 0, commit_floor)
    }

    /// [`MirrorSession::new`] that also tells the principal where the
    /// mirror's segment holding its written LSN ends (`Log::segment_end_at`),
    /// so a mirror whose log rolls over elsewhere is reseeded rather than
    /// failing on every frame after the next rollover.
    pub fn new_with_segment_end(
        cfg: SessionConfig,
        now_ms: u64,
        last_epoch: u64,
        progress: MirrorProgress,
        segment_end: u64,
        commit_floor: u64,
    ) -> (MirrorSession, Vec<MirrorCommand>) {
        assert!(progress.hardened <= progress.received && progress.applied <= progress.hardened);
        // Nothing cuts this log below the floor while it lives: not a
        // truncation (refused below it), not a reseed (likewise).
        assert!(
            commit_floor <= progress.hardened,
            "commit floor {commit_floor} above the hardened LSN {}",
            progress.hardened
        );
        let s = MirrorSession {
            cfg,
            phase: Phase::AwaitPosition,
            expected: progress.received,
            progress,
            last_epoch,
            commit_floor,
            commit_lsn: progress.applied,
            sync_in_flight: false,
            principal_written: None,
            snapshot: None,
            last_heard_ms: now_ms,
            last_sent_ms: now_ms,
        };
        let pos = Message::Position {
            epoch: last_epoch,
            written_lsn: progress.received,
            hardened_lsn: progress.hardened,
            applied_lsn: progress.applied,
            segment_end,
        };
        (s, vec![MirrorCommand::Send(pos)])
    }

    pub fn progress(&self) -> MirrorProgress {
        self.progress
    }

    pub fn commit_lsn(&self) -> u64 {
        self.commit_lsn
    }

    /// The highest commit LSN a principal told this mirror process (the
    /// floor given to `new`, raised by every `ship` and `heartbeat`),
    /// capped at what this log had hardened then: the next session's
    /// `commit_floor`.
    pub fn commit_floor(&self) -> u64 {
        self.commit_floor
    }

    /// A principal told `commit_lsn`: hardened on both, so on this side at
    /// most what this log hardened (an honest principal never tells more:
    /// its commit LSN is the minimum with this mirror's acknowledged
    /// hardened LSN).
    fn told_commit(&mut self, commit_lsn: u64) {
        self.commit_lsn = self.commit_lsn.max(commit_lsn);
        self.commit_floor = self
            .commit_floor
            .max(commit_lsn.min(self.progress.hardened));
    }

    /// The reason of a refusal to go below the commit floor: `what` the
    /// principal asked, and what that proves.
    fn commits_lost(&self, what: &str) -> String {
        format!(
            "{what}, though it reported LSN {} committed (hardened on both) to this mirror: it lost commits it had acknowledged (a disk that lied about fsync, or a restored or damaged log). This mirror keeps its log. To go on, stop that node, make this one principal (`mirrorlog force-service` on it), then start the other again: it rejoins as this one's mirror",
            self.commit_floor
        )
    }

    /// The state as far as the mirror can tell: SYNCHRONIZED once it has
    /// hardened everything the principal said (in its last heartbeat) it
    /// had written, and nothing it received is waiting for a sync.
    pub fn state(&self) -> MirroringState {
        match (self.phase, self.principal_written) {
            (Phase::Closed, _) => MirroringState::Disconnected,
            (Phase::Streaming, Some(w))
                if self.progress.hardened >= w
                    && self.progress.received == self.progress.hardened =>
            {
                MirroringState::Synchronized
            }
            _ => MirroringState::Synchronizing,
        }
    }

    fn close(&mut self, out: &mut Vec<MirrorCommand>, code: RefuseCode, reason: String) {
        if self.phase == Phase::Closed {
            return;
        }
        out.push(MirrorCommand::Send(Message::Refuse {
            code,
            reason: reason.clone(),
        }));
        out.push(MirrorCommand::Close { reason });
        self.phase = Phase::Closed;
    }

    fn ack(&mut self, now_ms: u64) -> MirrorCommand {
        self.last_sent_ms = now_ms;
        MirrorCommand::Send(Message::Ack {
            received_lsn: self.progress.received,
            hardened_lsn: self.progress.hardened,
            applied_lsn: self.progress.applied,
        })
    }

    /// Never apply what is not hardened here, nor beyond the commit LSN.
    fn apply_limit(&self) -> MirrorCommand {
        MirrorCommand::ApplyLimit(self.commit_lsn.min(self.progress.hardened))
    }

    /// A message from the principal.
    pub fn on_message(&mut self, now_ms: u64, msg: Message) -> Vec<MirrorCommand> {
        let mut out = Vec::new();
        if self.phase == Phase::Closed {
            return out;
        }
        self.last_heard_ms = now_ms;
        match (self.phase, msg) {
            (
                _,
                Message::Refuse {
                    code: RefuseCode::HandOver,
                    reason,
                },
            ) => {
                out.push(MirrorCommand::HandedOver);
                out.push(MirrorCommand::Close {
                    reason: format!("the principal handed over: {reason}"),
                });
                self.phase = Phase::Closed;
            }
            (_, Message::Refuse { reason, .. }) => {
                out.push(MirrorCommand::Close {
                    reason: format!("the principal refused: {reason}"),
                });
                self.phase = Phase::Closed;
            }
            (
                Phase::AwaitPosition,
                Message::Start {
                    from_lsn,
                    truncate_to,
                    ..
                },
            ) => {
                let mut rewinding = false;
                if let Some(t) = truncate_to {
                    if t != from_lsn || t > self.progress.received {
                        self.close(
                            &mut out,
                            RefuseCode::Protocol,
                            format!(
                            "start cuts at {t} and resumes at {from_lsn}, with the local log at {}",
                            self.progress.received
                        ),
                        );
                        return out;
                    }
                    if t < self.commit_floor {
                        let reason = self.commits_lost(&format!(
                            "the principal's log leaves this mirror's at LSN {t} (its catch-up plan cuts there)"
                        ));
                        self.close(&mut out, RefuseCode::CommitsLost, reason);
                        return out;
                    }
                    rewinding = t < self.progress.applied;
                    if rewinding {
                        // The state machine goes back first (to a
                        // checkpoint at or below the cut); the runner
                        // reports where with `on_rewound`, which answers
                        // with the acknowledgement.
                        out.push(MirrorCommand::Rewind(t));
                    }
                    // What was committed beyond the cut was another
                    // history's: nothing past it may be applied on its word.
                    self.commit_lsn = self.commit_lsn.min(t);
                    self.progress.applied = self.progress.applied.min(t);
                    out.push(MirrorCommand::Truncate(t));
                    self.progress.received = t;
                    self.progress.hardened = self.progress.hardened.min(t);
                } else if from_lsn != self.progress.received {
                    self.close(
                        &mut out,
                        RefuseCode::Protocol,
                        format!(
                            "start resumes at {from_lsn}, but the local log ends at {}",
                            self.progress.received
                        ),
                    );
                    return out;
                }
                self.expected = from_lsn;
                self.phase = Phase::Streaming;
                // Data received in an earlier session but never synced must
                // not wait for the next shipped batch to become durable.
                self.sync_if_needed(&mut out);
                // After a rewind, `on_rewound` acknowledges (with the
                // applied LSN the state machine went back to).
                if !rewinding {
                    out.push(self.ack(now_ms));
                }
            }
            (
                Phase::Streaming,
                Message::Ship {
                    commit_lsn,
                    prev_lsn,
                    frame,
                },
            ) => {
                // The ship must follow exactly what this log holds: a batch
                // lost or reordered on the way is caught here, even where
                // the frame's own position looks valid (after padding).
                if prev_lsn != self.expected {
                    self.close(
                        &mut out,
                        RefuseCode::Protocol,
                        format!(
                            "shipped frame follows LSN {prev_lsn}, but this log ends at {}: a batch is missing or out of order",
                            self.expected
                        ),
                    );
                    return out;
                }
                let header = match frame::decode_header(&frame) {
                    Ok(h) => h,
                    Err(e) => {
                        self.close(
                            &mut out,
                            RefuseCode::Protocol,
                            format!("shipped frame is invalid: {e}"),
                        );
                        return out;
                    }
                };
                // The log places a frame at the expected LSN or, when it did
                // not fit, at the next segment's base; it verifies which.
                if header.base_lsn < self.expected {
                    self.close(
                        &mut out,
                        RefuseCode::Protocol,
                        format!(
                            "shipped frame starts at {}, before the expected LSN {}",
                            header.base_lsn, self.expected
                        ),
                    );
                    return out;
                }
                self.expected = header.end_lsn();
                self.told_commit(commit_lsn);
                out.push(MirrorCommand::Append(frame));
            }
            (
                Phase::Streaming,
                Message::Heartbeat {
                    commit_lsn,
                    written_lsn,
                },
            ) => {
                self.principal_written = Some(written_lsn);
                self.told_commit(commit_lsn);
                out.push(self.apply_limit());
                out.push(self.ack(now_ms));
            }
            (
                Phase::AwaitPosition,
                Message::SnapshotBegin {
                    lsn,
                    segment_end,
                    total_bytes,
                    crc32c,
                    history,
                },
            ) if self.snapshot.is_none() => {
                let ordered = history
                    .windows(2)
                    .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1);
                if !ordered || history.iter().any(|&(e, _)| e == 0) {
                    self.close(
                        &mut out,
                        RefuseCode::Protocol,
                        "snapshot-begin carries a history that is not ordered".into(),
                    );
                    return out;
                }
                // A reseed empties this log and restarts it at `lsn`. An
                // honest principal reseeds a mirror that was told commits
                // only when its log was purged, and then from a snapshot
                // at or beyond its own log's start, which is beyond where
                // this mirror resumes, itself at or beyond the floor. Its
                // other reason, a last epoch here that its history lacks,
                // cannot hold either: once this process was told a commit
                // it had accepted a `start` planned with that epoch in the
                // principal's history (or got later batches from it), and
                // a history only grows. Either says it lost commits.
                let unknown =
                    self.last_epoch != 0 && !history.iter().any(|&(e, _)| e == self.last_epoch);
                let why = if lsn < self.commit_floor {
                    Some(format!(
                        "the principal reseeds this mirror from a snapshot at LSN {lsn}"
                    ))
                } else if unknown && self.commit_floor > 0 {
                    Some(format!(
                        "the principal's history lacks epoch {}, of this mirror's last batch, which it held when this mirror followed it (it asks for a reseed)",
                        self.last_epoch
                    ))
                } else {
                    None
                };
                if let Some(why) = why {
                    let reason = self.commits_lost(&why);
                    self.close(&mut out, RefuseCode::CommitsLost, reason);
                    return out;
                }
                out.push(MirrorCommand::SnapshotBegin {
                    lsn,
                    segment_end,
                    total_bytes,
                    crc32c,
                    history,
                });
                self.snapshot = Some((lsn, total_bytes, 0));
                if total_bytes == 0 {
                    self.snapshot_done(&mut out, lsn);
                }
            }
            (Phase::AwaitPosition, Message::SnapshotChunk { data }) if self.snapshot.is_some() => {
                let (lsn, total, got) = self.snapshot.expect("checked");
                let got = got + data.len() as u64;
                if got > total {
                    self.close(
                        &mut out,
                        RefuseCode::Protocol,
                        format!("snapshot chunks exceed the announced {total} bytes"),
                    );
                    return out;
                }
                self.snapshot = Some((lsn, total, got));
                out.push(MirrorCommand::SnapshotChunk(data));
                if got == total {
                    self.snapshot_done(&mut out, lsn);
                }
            }
            (phase, m) => {
                let expected = if phase == Phase::AwaitPosition {
                    "start"
                } else {
                    "ship or heartbeat"
                };
                self.close(
                    &mut out,
                    RefuseCode::Protocol,
                    format!(
                        "unexpected {} message from the principal (expected {expected})",
                        m.kind()
                    ),
                );
            }
        }
        out
    }

    fn snapshot_done(&mut self, out: &mut Vec<MirrorCommand>, lsn: u64) {
        out.push(MirrorCommand::SnapshotDone);
        out.push(MirrorCommand::Close {
            reason: format!(
                "reseeded from the principal's snapshot at LSN {lsn}; reconnecting to catch up from there"
            ),
        });
        self.phase = Phase::Closed;
    }

    /// The reseed in progress: its LSN, announced and received bytes.
    pub fn snapshot_progress(&self) -> Option<(u64, u64, u64)> {
        self.snapshot
    }

    fn sync_if_needed(&mut self, out: &mut Vec<MirrorCommand>) {
        if !self.sync_in_flight && self.progress.received > self.progress.hardened {
            self.sync_in_flight = true;
            out.push(MirrorCommand::Sync);
        }
    }

    /// The state machine was put back to `applied` (a `Rewind`): the
    /// acknowledgement that says so (it replaces any not sent yet).
    pub fn on_rewound(&mut self, now_ms: u64, applied: u64) -> Vec<MirrorCommand> {
        self.progress.applied = applied;
        if self.phase == Phase::Streaming {
            vec![self.ack(now_ms)]
        } else {
            Vec::new()
        }
    }

    /// The principal's written LSN as its last heartbeat said.
    pub fn principal_written(&self) -> Option<u64> {
        self.principal_written
    }

    /// The local log accepted appended frames up to `written`.
    pub fn on_appended(&mut self, now_ms: u64, written: u64) -> Vec<MirrorCommand> {
        let mut out = Vec::new();
        if self.phase == Phase::Closed {
            return out;
        }
        self.progress.received = self.progress.received.max(written);
        self.sync_if_needed(&mut out);
        out.push(self.ack(now_ms));
        out
    }

    /// A sync finished: everything below `hardened` is durable here.
    pub fn on_synced(&mut self, now_ms: u64, hardened: u64) -> Vec<MirrorCommand> {
        let mut out = Vec::new();
        self.sync_in_flight = false;
        if self.phase == Phase::Closed {
            return out;
        }
        self.progress.hardened = self
            .progress
            .hardened
            .max(hardened.min(self.progress.received));
        out.push(self.apply_limit());
        self.sync_if_needed(&mut out);
        out.push(self.ack(now_ms));
        out
    }

    /// The applier reached `applied`.
    pub fn on_applied(&mut self, now_ms: u64, applied: u64) -> Vec<MirrorCommand> {
        if self.phase == Phase::Closed || applied <= self.progress.applied {
            return Vec::new();
        }
        if applied > self.progress.hardened {
            // The applier only ever gets limits at or below what this log
            // hardened; anything else is a bug elsewhere: stop shipping to a
            // mirror in that state rather than acknowledge it.
            let mut out = Vec::new();
            self.close(
                &mut out,
                RefuseCode::Other,
                format!(
                    "the applier reached LSN {applied}, beyond this log's hardened LSN {}",
                    self.progress.hardened
                ),
            );
            return out;
        }
        // The applier may still be working to the limit an earlier session
        // set: that limit was a commit LSN the principal published, so what
        // it applies is committed. It raises this session's commit LSN.
        self.commit_lsn = self.commit_lsn.max(applied);
        self.progress.applied = applied;
        vec![self.ack(now_ms)]
    }

    pub fn on_tick(&mut self, now_ms: u64) -> Vec<MirrorCommand> {
        let mut out = Vec::new();
        if self.phase == Phase::Closed {
            return out;
        }
        let silent = now_ms.saturating_sub(self.last_heard_ms);
        if silent > self.cfg.partner_timeout_ms {
            out.push(MirrorCommand::Close {
                reason: format!("the principal was silent for {silent} ms"),
            });
            self.phase = Phase::Closed;
            return out;
        }
        if self.phase == Phase::Streaming {
            // A safety net: nothing received stays unsynced for long.
            self.sync_if_needed(&mut out);
            if now_ms.saturating_sub(self.last_sent_ms) >= self.cfg.heartbeat_ms {
                out.push(self.ack(now_ms));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> SessionConfig {
        SessionConfig::default()
    }

    /// A mirror whose log (last epoch 1) is hardened and applied to 8192,
    /// told commits up to `floor` by an earlier session of its process.
    fn mirror(floor: u64) -> MirrorSession {
        let progress = MirrorProgress {
            received: 8192,
            hardened: 8192,
            applied: 8192,
        };
        MirrorSession::new(cfg(), 0, 1, progress, floor).0
    }

    fn start(t: u64) -> Message {
        Message::Start {
            epoch: 2,
            from_lsn: t,
            truncate_to: Some(t),
        }
    }

    fn refusal(out: &[MirrorCommand]) -> Option<String> {
        let refused = out.iter().find_map(|c| match c {
            MirrorCommand::Send(Message::Refuse {
                code: RefuseCode::CommitsLost,
                reason,
            }) => Some(reason.clone()),
            _ => None,
        });
        let touched = out.iter().any(|c| {
            matches!(
                c,
                MirrorCommand::Truncate(_)
                    | MirrorCommand::Rewind(_)
                    | MirrorCommand::SnapshotBegin { .. }
            )
        });
        assert!(
            refused.is_none() || !touched,
            "a refusal touched the log or the state: {out:?}"
        );
        let closed = out.iter().any(
            |c| matches!(c, MirrorCommand::Close { reason } if Some(reason) == refused.as_ref()),
        );
        assert_eq!(
            refused.is_some(),
            closed,
            "a refusal closes with its reason: {out:?}"
        );
        refused
    }

    #[test]
    fn mirror_a_cut_below_the_commit_it_was_told_is_refused_and_the_log_kept() {
        let mut m = mirror(6144);
        let out = m.on_message(1, start(4096));
        let why = refusal(&out).expect("refused");
        assert!(
            why.contains("LSN 4096") && why.contains("LSN 6144"),
            "{why}"
        );
        assert!(
            why.contains("lost commits") && why.contains("force-service"),
            "{why}"
        );
        assert_eq!(m.state(), MirroringState::Disconnected);
        assert_eq!(m.progress().received, 8192, "nothing cut");
        assert_eq!(
            m.commit_floor(),
            6144,
            "the floor stays for the next session"
        );
    }

    #[test]
    fn mirror_a_cut_at_or_above_the_commit_floor_truncates_as_before() {
        for t in [6144, 7168] {
            let mut m = mirror(6144);
            let out = m.on_message(1, start(t));
            assert!(out.contains(&MirrorCommand::Truncate(t)), "{out:?}");
            assert!(out.contains(&MirrorCommand::Rewind(t)), "{out:?}");
            assert_eq!(refusal(&out), None);
            assert_eq!(m.commit_floor(), 6144);
        }
        // A fresh mirror process (floor 0) takes any cut.
        let mut m = mirror(0);
        assert!(m
            .on_message(1, start(0))
            .contains(&MirrorCommand::Truncate(0)));
    }

    #[test]
    fn mirror_the_commit_floor_rises_with_what_it_is_told_capped_at_its_hardened_log() {
        let mut m = mirror(0);
        m.on_message(
            1,
            Message::Start {
                epoch: 1,
                from_lsn: 8192,
                truncate_to: None,
            },
        );
        m.on_message(
            2,
            Message::Heartbeat {
                commit_lsn: 4096,
                written_lsn: 8192,
            },
        );
        assert_eq!(m.commit_floor(), 4096);
        // A commit LSN beyond what this log hardened is not this mirror's
        // to vouch for.
        m.on_message(
            3,
            Message::Heartbeat {
                commit_lsn: 20_000,
                written_lsn: 20_000,
            },
        );
        assert_eq!(m.commit_floor(), 8192);
        // Nor does an older one lower it.
        m.on_message(
            4,
            Message::Heartbeat {
                commit_lsn: 100,
                written_lsn: 8192,
            },
        );
        assert_eq!(m.commit_floor(), 8192);
    }

    #[test]
    fn mirror_a_reseed_below_the_floor_or_of_a_lost_epoch_is_refused() {
        let begin = |lsn: u64, history: Vec<(u64, u64)>| Message::SnapshotBegin {
            lsn,
            segment_end: 16384,
            total_bytes: 10,
            crc32c: 0,
            history,
        };
        // Below the floor.
        let mut m = mirror(6144);
        let why = refusal(&m.on_message(1, begin(4096, vec![(1, 0), (3, 4096)]))).expect("refused");
        assert!(
            why.contains("snapshot at LSN 4096") && why.contains("LSN 6144"),
            "{why}"
        );
        // At or above it, but the principal lost the epoch of this log's
        // last batch (1).
        let mut m = mirror(6144);
        let why =
            refusal(&m.on_message(1, begin(12288, vec![(2, 0), (3, 4096)]))).expect("refused");
        assert!(why.contains("lacks epoch 1"), "{why}");
        // The honest reseed: a purged log, from a snapshot beyond this
        // log's end, with the epoch known.
        let mut m = mirror(6144);
        let out = m.on_message(1, begin(12288, vec![(1, 0), (3, 10_000)]));
        assert_eq!(refusal(&out), None);
        assert!(
            matches!(out[0], MirrorCommand::SnapshotBegin { lsn: 12288, .. }),
            "{out:?}"
        );
        // A fresh mirror process takes an unknown-epoch reseed (its last
        // epoch may be its own, from when it was principal).
        let mut m = mirror(0);
        let out = m.on_message(1, begin(0, vec![(2, 0)]));
        assert_eq!(refusal(&out), None);
    }
}
