//! Running one session over one blocking connection: the glue between the
//! pure session machines, the logs, group commit and the applier.
//!
//! This is the simple first runner: one thread per side, which polls its
//! socket with a short timeout so that it also notices local log progress.
//! The io_uring sender replaces the polling on the principal's side.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::apply::{Applier, ApplierThread};
use crate::commit::GroupCommit;
use crate::log::{Log, Storage};
use crate::replication::catchup::PrincipalLog;
use crate::replication::handshake::{Handshake, Secret, Step};
use crate::replication::session::{
    MirrorCommand, MirrorProgress, MirrorSession, PrincipalCommand, PrincipalSession, SessionConfig,
};
use crate::replication::wire::{Role, NONCE_BYTES};
use crate::transport::blocking::{BlockingConn, TransportError};

/// Identity and secrets of a node for the handshake.
#[derive(Clone, Debug)]
pub struct NodeIdentity {
    pub database_id: [u8; 16],
    pub secret: Secret,
}

/// How often a runner looks at its socket and its local log.
const POLL: Duration = Duration::from_millis(1);

/// Runs this side's handshake over `conn` until the partner is
/// authenticated or refused (a refusal is sent to the partner too).
pub fn authenticate(
    conn: &mut BlockingConn,
    role: Role,
    id: &NodeIdentity,
    epoch: u64,
    nonce: [u8; NONCE_BYTES],
    timeout: Duration,
) -> Result<(), String> {
    let (mut hs, hello) = Handshake::start(role, id.database_id, epoch, id.secret.clone(), nonce);
    conn.send(&hello).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err("handshake timed out".into());
        }
        let Some(msg) = conn.recv(Some(left)).map_err(|e| e.to_string())? else {
            continue;
        };
        match hs.on_message(msg) {
            Ok(Step::Send(out)) => {
                for m in out {
                    conn.send(&m).map_err(|e| e.to_string())?;
                }
            }
            Ok(Step::Authenticated { .. }) => return Ok(()),
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
pub fn run_principal<S: Storage>(
    mut conn: BlockingConn,
    gc: &GroupCommit<S>,
    history: &[(u64, u64)],
    id: &NodeIdentity,
    cfg: SessionConfig,
    nonce: [u8; NONCE_BYTES],
    stop: &std::sync::atomic::AtomicBool,
) -> String {
    let log = gc.log();
    let epoch = gc.epoch();
    if let Err(e) = authenticate(
        &mut conn,
        Role::Principal,
        id,
        epoch,
        nonce,
        Duration::from_millis(cfg.partner_timeout_ms),
    ) {
        return e;
    }
    let t0 = Instant::now();
    let mut session = PrincipalSession::new(cfg, 0, log.written_lsn(), log.hardened_lsn());
    gc.progress().set_remote_attached(true);
    let reason = 'run: loop {
        if stop.load(std::sync::atomic::Ordering::Acquire) {
            break "stopped".to_string();
        }
        let mut cmds = Vec::new();
        match conn.recv(Some(POLL)) {
            Ok(Some(msg)) => {
                let plog = PrincipalLog {
                    history,
                    start_lsn: log.start_lsn(),
                    written_lsn: log.written_lsn(),
                    epoch,
                };
                cmds.extend(session.on_message(millis(t0), msg, &plog));
            }
            Ok(None) => {}
            Err(e) => break e.to_string(),
        }
        cmds.extend(session.on_local_progress(millis(t0), log.written_lsn(), log.hardened_lsn()));
        cmds.extend(session.on_tick(millis(t0)));
        for c in cmds {
            if let Err(e) = execute_principal(&mut conn, gc, c) {
                break 'run e;
            }
        }
    };
    gc.progress().set_remote_attached(false);
    reason
}

fn execute_principal<S: Storage>(
    conn: &mut BlockingConn,
    gc: &GroupCommit<S>,
    c: PrincipalCommand,
) -> Result<(), String> {
    let err = |e: TransportError| e.to_string();
    match c {
        PrincipalCommand::Send(m) => conn.send(&m).map_err(err),
        PrincipalCommand::Ship {
            from,
            to,
            commit_lsn,
        } => {
            let views = gc.log().read_from(from).map_err(|e| e.to_string())?;
            for v in views {
                let v = v.map_err(|e| e.to_string())?;
                if v.lsn() >= to {
                    break;
                }
                conn.send_ship(commit_lsn, v.frame()).map_err(err)?;
            }
            Ok(())
        }
        PrincipalCommand::Advance { level, lsn } => {
            gc.progress().advance(level, lsn);
            Ok(())
        }
        PrincipalCommand::State(_) => Ok(()),
        PrincipalCommand::Close { reason } => Err(reason),
    }
}

/// Runs the mirror's side of one session until it closes; returns why.
pub fn run_mirror<S: Storage, A: Applier>(
    mut conn: BlockingConn,
    log: &Arc<Log<S>>,
    applier: &ApplierThread<A>,
    id: &NodeIdentity,
    cfg: SessionConfig,
    nonce: [u8; NONCE_BYTES],
    stop: &std::sync::atomic::AtomicBool,
) -> String {
    if let Err(e) = authenticate(
        &mut conn,
        Role::Mirror,
        id,
        log.last_epoch(),
        nonce,
        Duration::from_millis(cfg.partner_timeout_ms),
    ) {
        return e;
    }
    let t0 = Instant::now();
    let progress = MirrorProgress {
        received: log.written_lsn(),
        hardened: log.hardened_lsn(),
        applied: applier.applied_lsn().min(log.hardened_lsn()),
    };
    let (mut session, first) = MirrorSession::new(cfg, 0, log.last_epoch(), progress);
    let mut pending: std::collections::VecDeque<MirrorCommand> = first.into();
    let mut reported_applied = progress.applied;
    loop {
        if stop.load(std::sync::atomic::Ordering::Acquire) {
            return "stopped".into();
        }
        while let Some(c) = pending.pop_front() {
            let now = millis(t0);
            let more = match c {
                MirrorCommand::Send(m) => match conn.send(&m) {
                    Ok(()) => Vec::new(),
                    Err(e) => return e.to_string(),
                },
                MirrorCommand::Truncate(t) => match log.truncate(t) {
                    Ok(()) => Vec::new(),
                    Err(e) => return format!("truncating the mirror's log: {e}"),
                },
                MirrorCommand::Append(frame) => match log.append_frame(&frame) {
                    Ok(_) => session.on_appended(now, log.written_lsn()),
                    Err(e) => return format!("appending a shipped batch: {e}"),
                },
                MirrorCommand::Sync => match log.sync() {
                    Ok(h) => session.on_synced(now, h),
                    Err(e) => return format!("syncing the mirror's log: {e}"),
                },
                MirrorCommand::ApplyLimit(l) => {
                    applier.set_limit(l);
                    Vec::new()
                }
                MirrorCommand::Close { reason } => return reason,
            };
            pending.extend(more);
        }
        let applied = applier.applied_lsn();
        if applied > reported_applied {
            reported_applied = applied;
            pending.extend(session.on_applied(millis(t0), applied));
        }
        match conn.recv(Some(POLL)) {
            Ok(Some(msg)) => pending.extend(session.on_message(millis(t0), msg)),
            Ok(None) => {}
            Err(e) => return e.to_string(),
        }
        pending.extend(session.on_tick(millis(t0)));
    }
}
