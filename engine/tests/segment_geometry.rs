//! Segment geometry between partners. An LSN is a byte position in the log,
//! segment padding included, so partners whose segments end at different
//! LSNs place the same frames differently: before these fixes, a mirror with
//! another `--segment-bytes` failed every frame after the first rollover
//! ("frame does not continue the log") for ever, and a restart with the
//! right size kept the wrong-sized segment and failed the same way.

mod scratch;

use std::sync::Arc;

use mirrorlog_engine::log::{Log, LogOptions, RecordsBuf};
use mirrorlog_engine::replication::catchup::{CatchUpError, PrincipalLog};
use mirrorlog_engine::replication::handshake::{Handshake, Secret};
use mirrorlog_engine::replication::session::{
    MirrorCommand, MirrorProgress, MirrorSession, PrincipalCommand, PrincipalSession, SessionConfig,
};
use mirrorlog_engine::replication::wire::{Message, RefuseCode, Role};

const DB: [u8; 16] = *b"database-0000001";

fn secret() -> Secret {
    Secret::new(b"s3cret-s3cret-s3cret".to_vec()).unwrap()
}

/// Partners of 256 KiB and 1 MiB segments: each side's handshake refuses
/// the other's hello, naming both sizes and the flag, and sends the refusal
/// (so the partner's operator sees it too).
#[test]
fn regression_partners_with_different_segment_sizes_are_refused_at_the_handshake() {
    let (mut p, p_first) = Handshake::start_with_segment_bytes(
        Role::Principal,
        DB,
        1,
        secret(),
        [1; 32],
        [3; 32],
        256 << 10,
    );
    let (mut m, m_first) = Handshake::start_with_segment_bytes(
        Role::Mirror,
        DB,
        1,
        secret(),
        [2; 32],
        [4; 32],
        1 << 20,
    );
    for (hs, theirs, me, peer) in [
        (&mut p, &m_first, "principal", "mirror"),
        (&mut m, &p_first, "mirror", "principal"),
    ] {
        let err = hs.on_message(theirs[0].clone()).unwrap_err();
        assert_eq!(err.code, RefuseCode::BadConfig);
        for needle in [
            "--segment-bytes",
            &format!("the {peer} makes segments of"),
            &format!("this {me} of"),
            "262144",
            "1048576",
        ] {
            assert!(err.reason.contains(needle), "{needle}: {}", err.reason);
        }
        assert!(matches!(
            err.refuse,
            Some(Message::Refuse {
                code: RefuseCode::BadConfig,
                ..
            })
        ));
    }
    // The same sizes pass.
    let (mut p, _) = Handshake::start_with_segment_bytes(
        Role::Principal,
        DB,
        1,
        secret(),
        [1; 32],
        [3; 32],
        1 << 20,
    );
    assert!(p.on_message(m_first[0].clone()).is_ok());
    // A hello goes through the wire with its segment size.
    let mut b = Vec::new();
    m_first[0].encode(&mut b);
    let (decoded, _) = Message::decode(&b).unwrap().unwrap();
    assert!(matches!(decoded, Message::Hello(h) if h.segment_bytes == 1 << 20));
}

fn log(dir: &std::path::Path, segment_bytes: usize) -> Arc<Log> {
    let opts = LogOptions {
        segment_bytes,
        ..LogOptions::default()
    };
    Arc::new(Log::open(dir, opts).unwrap().0)
}

/// The restart case: a mirror that once made 1 MiB segments restarts with
/// the principal's 256 KiB, and its log keeps the 1 MiB segment it has.
/// Its position says where that segment ends; the principal sees that the
/// mirror's log cannot continue its own and reseeds it (whose snapshot
/// starts the mirror's log afresh on the principal's geometry), instead of
/// shipping frames the mirror refuses for ever.
#[test]
fn regression_a_mirror_whose_segment_ends_elsewhere_is_reseeded_not_shipped_to() {
    let d = scratch::path("segment-geometry-restart");
    let _ = std::fs::remove_dir_all(&d);
    let plog_dir = d.join("p");
    let mlog_dir = d.join("m");
    let principal = log(&plog_dir, 256 << 10);
    let mut records = RecordsBuf::new();
    records.push(b"x");
    principal.append(1, &records).unwrap();
    principal.sync().unwrap();
    // The mirror's log was made with 1 MiB segments, then reopened with
    // the right size: the existing segment keeps its 1 MiB.
    drop(log(&mlog_dir, 1 << 20));
    let mirror = log(&mlog_dir, 256 << 10);
    assert_eq!(mirror.segment_end_at(0), (1 << 20) - 64);
    assert_ne!(mirror.segment_end_at(0), principal.segment_end_at(0));

    let cfg = SessionConfig::default();
    let (_m, first) = MirrorSession::new_with_segment_end(
        cfg,
        0,
        0,
        MirrorProgress::default(),
        mirror.segment_end_at(0),
        0,
    );
    let [MirrorCommand::Send(position)] = &first[..] else {
        panic!("{first:?}")
    };
    let history = [(1u64, 0u64)];
    let end_at = |lsn: u64| principal.segment_end_at(lsn);
    let plog = PrincipalLog {
        history: &history,
        start_lsn: 0,
        written_lsn: principal.written_lsn(),
        epoch: 1,
        segment_end_at: Some(&end_at),
    };
    let mut p = PrincipalSession::new(cfg, 0, principal.written_lsn(), principal.hardened_lsn());
    let cmds = p.on_message(1, position.clone(), &plog);
    let why = cmds
        .iter()
        .find_map(|c| match c {
            PrincipalCommand::Reseed { why } => Some(why.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no reseed: {cmds:?}"));
    assert!(why.contains("--segment-bytes"), "{why}");
    assert!(
        !cmds
            .iter()
            .any(|c| matches!(c, PrincipalCommand::Send(Message::Start { .. }))),
        "{cmds:?}"
    );
    let expected = CatchUpError::Geometry {
        lsn: 0,
        mirror_end: (1 << 20) - 64,
        principal_end: principal.segment_end_at(0),
    };
    assert_eq!(why, expected.to_string());

    // A mirror on the principal's geometry is shipped to as before.
    let (_m, first) = MirrorSession::new_with_segment_end(
        cfg,
        0,
        0,
        MirrorProgress::default(),
        principal.segment_end_at(0),
        0,
    );
    let [MirrorCommand::Send(position)] = &first[..] else {
        panic!("{first:?}")
    };
    let mut p = PrincipalSession::new(cfg, 0, principal.written_lsn(), principal.hardened_lsn());
    let cmds = p.on_message(1, position.clone(), &plog);
    assert!(
        cmds.iter().any(|c| matches!(
            c,
            PrincipalCommand::Send(Message::Start { from_lsn: 0, .. })
        )),
        "{cmds:?}"
    );
}
