//! Review regressions for the session state machines
//! (`replication::session`). Failing tests prove bugs; passing ones pin
//! invariants.

use mirrorlog_engine::log::frame::{encode_frame, Encoder};
use mirrorlog_engine::log::{Compression, RecordsBuf};
use mirrorlog_engine::replication::catchup::PrincipalLog;
use mirrorlog_engine::replication::session::{
    MirrorCommand, MirrorProgress, MirrorSession, MirroringState, PrincipalCommand,
    PrincipalSession, SessionConfig,
};
use mirrorlog_engine::replication::wire::Message;

fn cfg() -> SessionConfig {
    SessionConfig {
        heartbeat_ms: 100,
        partner_timeout_ms: 1000,
        ..SessionConfig::default()
    }
}

fn frame_at(base_lsn: u64) -> Vec<u8> {
    let mut r = RecordsBuf::new();
    r.push(b"hostile");
    let mut enc = Encoder::new(Compression::Off).unwrap();
    let p = enc.payload(&r);
    encode_frame(1, base_lsn, &p)
}

fn closes_p(out: &[PrincipalCommand]) -> bool {
    out.iter()
        .any(|c| matches!(c, PrincipalCommand::Close { .. }))
}

fn closes_m(out: &[MirrorCommand]) -> bool {
    out.iter().any(|c| matches!(c, MirrorCommand::Close { .. }))
}

/// A mirror reconnecting with an unsynced tail (received > hardened, e.g.
/// after a network drop before its sync) is never told to sync it when the
/// principal has nothing new to ship: `Start` and heartbeats only ack, so
/// the mirror's hardened LSN, the principal's commit LSN and remote-flush
/// stay put forever while heartbeats keep the session alive, and the
/// session never becomes SYNCHRONIZED.
#[test]
fn regression_unsynced_tail_at_start_is_never_synced() {
    let history = [(1u64, 0u64)];
    let plog = PrincipalLog {
        history: &history,
        start_lsn: 0,
        written_lsn: 4096,
        epoch: 1,
        segment_end_at: None,
    };
    let mut p = PrincipalSession::new(cfg(), 0, 4096, 4096);
    let (mut m, first) = MirrorSession::new(
        cfg(),
        0,
        1,
        MirrorProgress {
            received: 4096,
            hardened: 0,
            applied: 0,
        },
        0,
    );
    let mut to_p: Vec<Message> = Vec::new();
    let mut to_m: Vec<Message> = Vec::new();
    let mut m_cmds = first;
    let mut syncs = 0;
    let mut flush = 0u64;
    let mut now = 0u64;
    while now < 5_000 {
        // Mirror commands: sends and local I/O (sync hardens everything).
        while !m_cmds.is_empty() {
            let mut next = Vec::new();
            for c in m_cmds.drain(..) {
                match c {
                    MirrorCommand::Send(msg) => to_p.push(msg),
                    MirrorCommand::Sync => {
                        syncs += 1;
                        next.extend(m.on_synced(now, 4096));
                    }
                    MirrorCommand::ApplyLimit(l) => next.extend(m.on_applied(now, l)),
                    MirrorCommand::Close { reason } => panic!("mirror closed: {reason}"),
                    _ => {}
                }
            }
            m_cmds = next;
        }
        for msg in std::mem::take(&mut to_p) {
            for c in p.on_message(now, msg, &plog) {
                match c {
                    PrincipalCommand::Send(msg) => to_m.push(msg),
                    PrincipalCommand::Advance {
                        level: mirrorlog_engine::commit::Level::RemoteFlush,
                        lsn,
                    } => flush = flush.max(lsn),
                    PrincipalCommand::Close { reason } => panic!("principal closed: {reason}"),
                    _ => {}
                }
            }
        }
        for msg in std::mem::take(&mut to_m) {
            m_cmds.extend(m.on_message(now, msg));
        }
        now += 50;
        for c in p.on_tick(now) {
            if let PrincipalCommand::Send(msg) = c {
                to_m.push(msg);
            }
        }
        m_cmds.extend(m.on_tick(now));
    }
    assert_ne!(p.state(), MirroringState::Disconnected);
    assert!(
        syncs > 0 && m.progress().hardened == 4096,
        "the mirror never synced its unsynced tail: syncs {syncs}, mirror {:?}, \
         principal commit LSN {}, remote-flush {flush}, state {:?}",
        m.progress(),
        p.commit_lsn(),
        p.state()
    );
    assert_eq!(p.state(), MirroringState::Synchronized);
    assert_eq!(p.commit_lsn(), 4096);
}

/// Same root cause, after a `Start{truncate_to}`: the cut leaves
/// `received = t > hardened`, and nothing ever syncs `[hardened, t)`.
#[test]
fn regression_truncated_start_leaves_unsynced_prefix_forever() {
    let (mut m, _) = MirrorSession::new(
        cfg(),
        0,
        1,
        MirrorProgress {
            received: 8192,
            hardened: 1024,
            applied: 0,
        },
        0,
    );
    let mut all = m.on_message(
        1,
        Message::Start {
            epoch: 2,
            from_lsn: 4096,
            truncate_to: Some(4096),
        },
    );
    for i in 0..20u64 {
        all.extend(m.on_message(
            10 + i * 100,
            Message::Heartbeat {
                commit_lsn: 4096,
                written_lsn: 4096,
            },
        ));
        all.extend(m.on_tick(60 + i * 100));
    }
    assert!(!closes_m(&all));
    assert!(
        all.iter().any(|c| matches!(c, MirrorCommand::Sync)),
        "no sync ever issued for [1024, 4096): progress {:?}, commands {:?}",
        m.progress(),
        &all[..3]
    );
}

/// SYNCHRONIZED was sticky: once the mirror's hardened LSN reached the
/// principal's, the state never returned to SYNCHRONIZING, even with the
/// mirror's hardened LSN far behind. Now it drops back when the mirror falls
/// more than `synchronized_lag_max_bytes` behind (64 KiB here; the default
/// tolerates an ack round trip under load).
#[test]
fn regression_synchronized_reported_while_mirror_far_behind() {
    let cfg = || SessionConfig {
        synchronized_lag_max_bytes: 64 << 10,
        ..SessionConfig::default()
    };
    let history = [(1u64, 0u64)];
    let plog = PrincipalLog {
        history: &history,
        start_lsn: 0,
        written_lsn: 0,
        epoch: 1,
        segment_end_at: None,
    };
    let mut p = PrincipalSession::new(cfg(), 0, 0, 0);
    p.on_message(
        0,
        Message::Position {
            epoch: 0,
            written_lsn: 0,
            hardened_lsn: 0,
            applied_lsn: 0,
            segment_end: 0,
        },
        &plog,
    );
    assert_eq!(p.state(), MirroringState::Synchronized);
    let out = p.on_local_progress(1, 1 << 20, 1 << 20);
    assert!(out
        .iter()
        .any(|c| matches!(c, PrincipalCommand::State(MirroringState::Synchronizing))));
    assert!(out
        .iter()
        .any(|c| matches!(c, PrincipalCommand::Ship { .. })));
    // The mirror received everything but hardened nothing (disk stalled).
    let out = p.on_message(
        2,
        Message::Ack {
            received_lsn: 1 << 20,
            hardened_lsn: 0,
            applied_lsn: 0,
        },
        &plog,
    );
    assert!(!closes_p(&out));
    assert_eq!(p.commit_lsn(), 0);
    assert_ne!(
        p.state(),
        MirroringState::Synchronized,
        "SYNCHRONIZED with the mirror hardened at {} and the principal at {}",
        p.mirror().hardened,
        1 << 20
    );
}

/// Same stickiness through suspend/resume: after a long suspension with a
/// 1 MiB send queue, `resume` announces SYNCHRONIZED.
#[test]
fn regression_resume_reports_synchronized_with_a_send_queue() {
    let history = [(1u64, 0u64)];
    let plog = PrincipalLog {
        history: &history,
        start_lsn: 0,
        written_lsn: 0,
        epoch: 1,
        segment_end_at: None,
    };
    let mut p = PrincipalSession::new(cfg(), 0, 0, 0);
    p.on_message(
        0,
        Message::Position {
            epoch: 0,
            written_lsn: 0,
            hardened_lsn: 0,
            applied_lsn: 0,
            segment_end: 0,
        },
        &plog,
    );
    p.suspend();
    p.on_local_progress(1, 1 << 20, 1 << 20);
    assert_eq!(p.send_queue_bytes(), 1 << 20);
    let out = p.resume(2);
    let announced: Vec<_> = out
        .iter()
        .filter_map(|c| match c {
            PrincipalCommand::State(s) => Some(*s),
            _ => None,
        })
        .collect();
    assert!(
        !announced.contains(&MirroringState::Synchronized),
        "resume announced {announced:?} with the mirror hardened at {} of {}",
        p.mirror().hardened,
        1 << 20
    );
}

/// Invariant (passes): a shipped frame whose base LSN is near `u64::MAX`
/// (hostile) is refused with a close, not a panic in `end_lsn` (the header
/// decoder rejects an end LSN that overflows).
#[test]
fn regression_ship_base_lsn_near_max_is_refused() {
    let (mut m, _) = MirrorSession::new(cfg(), 0, 0, MirrorProgress::default(), 0);
    m.on_message(
        0,
        Message::Start {
            epoch: 1,
            from_lsn: 0,
            truncate_to: None,
        },
    );
    let frame = frame_at(u64::MAX - 7);
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        m.on_message(
            1,
            Message::Ship {
                commit_lsn: 0,
                prev_lsn: 0,
                frame,
            },
        )
    }));
    match r {
        Ok(out) => assert!(closes_m(&out), "accepted: {out:?}"),
        Err(e) => panic!(
            "mirror panicked on a hostile ship: {:?}",
            e.downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
        ),
    }
}

/// Invariant (passes): a start that cuts below what is applied first has
/// the state machine put back (a `Rewind` before the `Truncate`; the
/// failover work replaced the old refusal), one that cuts at or above it
/// never lowers applied, and hardened never exceeds the cut.
#[test]
fn regression_start_truncate_respects_applied() {
    let prog = MirrorProgress {
        received: 8192,
        hardened: 8192,
        applied: 4096,
    };
    let (mut m, _) = MirrorSession::new(cfg(), 0, 1, prog, 0);
    let out = m.on_message(
        1,
        Message::Start {
            epoch: 2,
            from_lsn: 2048,
            truncate_to: Some(2048),
        },
    );
    assert!(!closes_m(&out));
    let rewind = out.iter().position(|c| *c == MirrorCommand::Rewind(2048));
    let cut = out.iter().position(|c| *c == MirrorCommand::Truncate(2048));
    assert!(
        matches!((rewind, cut), (Some(r), Some(c)) if r < c),
        "{out:?}"
    );
    let (mut m, _) = MirrorSession::new(cfg(), 0, 1, prog, 0);
    let out = m.on_message(
        1,
        Message::Start {
            epoch: 2,
            from_lsn: 6144,
            truncate_to: Some(6144),
        },
    );
    assert!(out.contains(&MirrorCommand::Truncate(6144)));
    assert_eq!(
        m.progress(),
        MirrorProgress {
            received: 6144,
            hardened: 6144,
            applied: 4096
        }
    );
    // Cut and resume at different places, or beyond the local end: refused.
    for (from, t) in [(6144, 4096), (9000, 9000)] {
        let (mut m, _) = MirrorSession::new(cfg(), 0, 1, prog, 0);
        let out = m.on_message(
            1,
            Message::Start {
                epoch: 2,
                from_lsn: from,
                truncate_to: Some(t),
            },
        );
        assert!(closes_m(&out), "start {from}/{t} accepted");
    }
}

/// Invariant (passes): whatever commit LSN a hostile heartbeat carries,
/// the apply limit never passes the mirror's hardened LSN, and hostile
/// acks (hardened > received, beyond shipped, going back) close the
/// principal's session without advancing any level.
#[test]
fn regression_hostile_values_are_bounded() {
    let (mut m, _) = MirrorSession::new(
        cfg(),
        0,
        1,
        MirrorProgress {
            received: 4096,
            hardened: 2048,
            applied: 0,
        },
        0,
    );
    m.on_message(
        0,
        Message::Start {
            epoch: 1,
            from_lsn: 4096,
            truncate_to: None,
        },
    );
    let out = m.on_message(
        1,
        Message::Heartbeat {
            commit_lsn: u64::MAX,
            written_lsn: u64::MAX,
        },
    );
    assert!(out.contains(&MirrorCommand::ApplyLimit(2048)), "{out:?}");

    let history = [(1u64, 0u64)];
    let plog = PrincipalLog {
        history: &history,
        start_lsn: 0,
        written_lsn: 4096,
        epoch: 1,
        segment_end_at: None,
    };
    for (r, h, a) in [
        (4096, 4097, 0),
        (u64::MAX, 0, 0),
        (4096, 0, 1),
        (1024, 0, 0),
    ] {
        let mut p = PrincipalSession::new(cfg(), 0, 4096, 4096);
        p.on_message(
            0,
            Message::Position {
                epoch: 1,
                written_lsn: 2048,
                hardened_lsn: 2048,
                applied_lsn: 0,
                segment_end: 0,
            },
            &plog,
        );
        let out = p.on_message(
            1,
            Message::Ack {
                received_lsn: r,
                hardened_lsn: h,
                applied_lsn: a,
            },
            &plog,
        );
        assert!(closes_p(&out), "ack {r}/{h}/{a} accepted");
        assert!(!out
            .iter()
            .any(|c| matches!(c, PrincipalCommand::Advance { .. })));
        assert!(p.commit_lsn() <= 2048);
    }
}
