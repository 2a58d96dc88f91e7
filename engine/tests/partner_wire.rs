//! Partner wire messages and the handshake: round trips, hostile bytes,
//! and every way a partner can be wrong.

mod scratch;
use mirrorlog_engine::replication::handshake::{auth_mac, Handshake, Secret, SecretError, Step};
use mirrorlog_engine::replication::wire::{
    Hello, Message, RefuseCode, Role, WireError, MESSAGE_BYTES_MAX, PROTOCOL_VERSION,
};
use proptest::prelude::*;

fn arb_role() -> impl Strategy<Value = Role> {
    prop_oneof![Just(Role::Principal), Just(Role::Mirror)]
}

fn arb_message() -> impl Strategy<Value = Message> {
    let code = prop_oneof![
        Just(RefuseCode::BadVersion),
        Just(RefuseCode::BadDatabase),
        Just(RefuseCode::BadAuth),
        Just(RefuseCode::EpochMismatch),
        Just(RefuseCode::RoleConflict),
        Just(RefuseCode::Protocol),
        Just(RefuseCode::LogPurged),
        Just(RefuseCode::Other),
    ];
    prop_oneof![
        (
            any::<u16>(),
            arb_role(),
            any::<[u8; 16]>(),
            any::<u64>(),
            any::<[u8; 32]>()
        )
            .prop_map(
                |(version, role, database_id, epoch, nonce)| Message::Hello(Hello {
                    version,
                    role,
                    database_id,
                    epoch,
                    nonce
                })
            ),
        any::<[u8; 32]>().prop_map(|mac| Message::Auth { mac }),
        (code, "[a-zA-Z0-9 éü]{0,200}").prop_map(|(code, reason)| Message::Refuse { code, reason }),
        any::<[u64; 4]>().prop_map(|[a, b, c, d]| Message::Position {
            epoch: a,
            written_lsn: b,
            hardened_lsn: c,
            applied_lsn: d
        }),
        (
            any::<u64>(),
            any::<u64>(),
            proptest::option::of(0..u64::MAX)
        )
            .prop_map(|(epoch, from_lsn, truncate_to)| {
                Message::Start {
                    epoch,
                    from_lsn,
                    truncate_to,
                }
            }),
        (
            any::<u64>(),
            any::<u64>(),
            proptest::collection::vec(any::<u8>(), 40..600)
        )
            .prop_map(|(commit_lsn, prev_lsn, frame)| Message::Ship {
                commit_lsn,
                prev_lsn,
                frame
            }),
        any::<[u64; 3]>().prop_map(|[a, b, c]| Message::Ack {
            received_lsn: a,
            hardened_lsn: b,
            applied_lsn: c
        }),
        any::<[u64; 2]>().prop_map(|[a, b]| Message::Heartbeat {
            commit_lsn: a,
            written_lsn: b
        }),
        (
            any::<[u64; 3]>(),
            any::<u32>(),
            proptest::collection::vec(any::<(u64, u64)>(), 0..20)
        )
            .prop_map(|([lsn, end, total], crc, history)| Message::SnapshotBegin {
                lsn,
                segment_end: end,
                total_bytes: total,
                crc32c: crc,
                history
            }),
        proptest::collection::vec(any::<u8>(), 1..3000)
            .prop_map(|data| Message::SnapshotChunk { data }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn every_message_round_trips_and_streams_in_pieces(msgs in proptest::collection::vec(arb_message(), 1..6), cut in any::<prop::sample::Index>()) {
        let mut buf = Vec::new();
        for m in &msgs {
            m.encode(&mut buf);
        }
        // Whole buffer: all messages back, in order.
        let mut off = 0;
        let mut got = Vec::new();
        while let Some((m, n)) = Message::decode(&buf[off..]).unwrap() {
            got.push(m);
            off += n;
        }
        prop_assert_eq!(off, buf.len());
        prop_assert_eq!(&got, &msgs);
        // Any prefix shorter than the first message is "need more", not an error.
        let first_len = { let mut b = Vec::new(); msgs[0].encode(&mut b); b.len() };
        let cut = cut.index(first_len);
        prop_assert_eq!(Message::decode(&buf[..cut]).unwrap(), None);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = Message::decode(&bytes);
    }

    #[test]
    fn arbitrary_bodies_behind_a_valid_length_never_panic(kind in 0u8..12, body in proptest::collection::vec(any::<u8>(), 0..200)) {
        let mut b = ((body.len() + 1) as u32).to_le_bytes().to_vec();
        b.push(kind);
        b.extend_from_slice(&body);
        match Message::decode(&b) {
            Ok(Some((m, n))) => {
                prop_assert_eq!(n, b.len());
                // What decodes re-encodes to the same bytes, except fields the
                // decoder normalises (unknown refuse codes).
                let mut again = Vec::new();
                m.encode(&mut again);
                if !matches!(m, Message::Refuse { .. }) {
                    prop_assert_eq!(again, b);
                }
            }
            Ok(None) => prop_assert!(false, "complete input reported as partial"),
            Err(_) => {}
        }
    }
}

#[test]
fn oversized_and_malformed_messages_get_errors() {
    let mut b = ((MESSAGE_BYTES_MAX + 1) as u32).to_le_bytes().to_vec();
    b.push(6);
    assert_eq!(
        Message::decode(&b),
        Err(WireError::TooLong(MESSAGE_BYTES_MAX + 1))
    );
    assert_eq!(Message::decode(&[0, 0, 0, 0]), Err(WireError::Empty));
    assert_eq!(
        Message::decode(&[1, 0, 0, 0, 99]),
        Err(WireError::UnknownType(99))
    );
    assert!(matches!(
        Message::decode(&[3, 0, 0, 0, 7, 1, 2]),
        Err(WireError::BadSize { .. })
    ));
    // A refuse reason that is not UTF-8.
    assert!(matches!(
        Message::decode(&[5, 0, 0, 0, 3, 1, 0, 0xff, 0xfe]),
        Err(WireError::Malformed("refuse", _))
    ));
}

fn secret(s: &str) -> Secret {
    Secret::new(s.as_bytes().to_vec()).unwrap()
}

const DB: [u8; 16] = *b"database-0000001";

/// A node's role, database id and epoch.
type Side = (Role, [u8; 16], u64);

/// Runs both sides to completion; returns each side's outcome.
fn run(
    p: (Role, [u8; 16], u64, &str),
    m: (Role, [u8; 16], u64, &str),
) -> (Result<Hello, String>, Result<Hello, String>, Vec<Message>) {
    let (mut a, hello_a) = Handshake::start(p.0, p.1, p.2, secret(p.3), [1; 32]);
    let (mut b, hello_b) = Handshake::start(m.0, m.1, m.2, secret(m.3), [2; 32]);
    let mut to_a = vec![hello_b];
    let mut to_b = vec![hello_a];
    let mut res_a = None;
    let mut res_b = None;
    let mut wire = Vec::new();
    for _ in 0..10 {
        for msg in std::mem::take(&mut to_a) {
            wire.push(msg.clone());
            if res_a.is_some() {
                continue;
            }
            match a.on_message(msg) {
                Ok(Step::Send(out)) => to_b.extend(out),
                Ok(Step::Authenticated { peer }) => res_a = Some(Ok(peer)),
                Err(e) => {
                    to_b.extend(e.refuse.clone());
                    res_a = Some(Err(e.reason));
                }
            }
        }
        for msg in std::mem::take(&mut to_b) {
            wire.push(msg.clone());
            if res_b.is_some() {
                continue;
            }
            match b.on_message(msg) {
                Ok(Step::Send(out)) => to_a.extend(out),
                Ok(Step::Authenticated { peer }) => res_b = Some(Ok(peer)),
                Err(e) => {
                    to_a.extend(e.refuse.clone());
                    res_b = Some(Err(e.reason));
                }
            }
        }
    }
    (
        res_a.expect("principal finished"),
        res_b.expect("mirror finished"),
        wire,
    )
}

#[test]
fn partners_with_the_same_secret_authenticate_each_other() {
    let (a, b, _) = run(
        (Role::Principal, DB, 3, "correct horse battery"),
        (Role::Mirror, DB, 3, "correct horse battery"),
    );
    let peer_of_a = a.unwrap();
    let peer_of_b = b.unwrap();
    assert_eq!(
        (peer_of_a.role, peer_of_a.epoch, peer_of_a.nonce),
        (Role::Mirror, 3, [2; 32])
    );
    assert_eq!(
        (peer_of_b.role, peer_of_b.version),
        (Role::Principal, PROTOCOL_VERSION)
    );
}

#[test]
fn a_wrong_secret_is_refused_on_both_sides_with_a_clear_error() {
    let (a, b, wire) = run(
        (Role::Principal, DB, 3, "correct horse battery"),
        (Role::Mirror, DB, 3, "incorrect horse battery"),
    );
    let (ea, eb) = (a.unwrap_err(), b.unwrap_err());
    assert!(
        ea.contains("does not hold the same shared secret") || ea.contains("refused"),
        "{ea}"
    );
    assert!(
        eb.contains("does not hold the same shared secret") || eb.contains("refused"),
        "{eb}"
    );
    assert!(wire.iter().any(|m| matches!(
        m,
        Message::Refuse {
            code: RefuseCode::BadAuth,
            ..
        }
    )));
    // No log position or batch was ever exchanged.
    assert!(wire.iter().all(|m| matches!(
        m,
        Message::Hello(_) | Message::Auth { .. } | Message::Refuse { .. }
    )));
}

#[test]
fn wrong_database_version_role_or_epoch_is_refused_with_the_reason() {
    let other_db = *b"database-0000002";
    let cases: Vec<(Side, Side, RefuseCode, &str)> = vec![
        (
            (Role::Principal, DB, 1),
            (Role::Mirror, other_db, 1),
            RefuseCode::BadDatabase,
            "serves database",
        ),
        (
            (Role::Principal, DB, 1),
            (Role::Principal, DB, 1),
            RefuseCode::RoleConflict,
            "both nodes claim",
        ),
        (
            (Role::Principal, DB, 1),
            (Role::Mirror, DB, 2),
            RefuseCode::EpochMismatch,
            "epoch",
        ),
    ];
    for (p, m, code, text) in cases {
        let (a, b, wire) = run(
            (p.0, p.1, p.2, "s3cret-s3cret-s3cret"),
            (m.0, m.1, m.2, "s3cret-s3cret-s3cret"),
        );
        let (ea, eb) = (a.unwrap_err(), b.unwrap_err());
        assert!(ea.contains(text) || eb.contains(text), "{ea} / {eb}");
        assert!(
            wire.iter()
                .any(|w| matches!(w, Message::Refuse { code: c, .. } if *c == code)),
            "{code:?}"
        );
        assert!(
            !wire.iter().any(|w| matches!(w, Message::Auth { .. })),
            "no MAC sent to a wrong partner"
        );
    }
    // A different protocol version.
    let (mut hs, _) =
        Handshake::start(Role::Mirror, DB, 1, secret("s3cret-s3cret-s3cret"), [1; 32]);
    let err = hs
        .on_message(Message::Hello(Hello {
            version: PROTOCOL_VERSION + 1,
            role: Role::Principal,
            database_id: DB,
            epoch: 1,
            nonce: [9; 32],
        }))
        .unwrap_err();
    assert_eq!(err.code, RefuseCode::BadVersion);
    assert!(err.reason.contains("protocol version"), "{}", err.reason);
}

#[test]
fn log_messages_before_authentication_and_reflected_macs_are_refused() {
    let s = secret("s3cret-s3cret-s3cret");
    let (mut hs, my_hello) = Handshake::start(Role::Mirror, DB, 1, s.clone(), [1; 32]);
    let err = hs
        .on_message(Message::Ship {
            commit_lsn: 0,
            prev_lsn: 0,
            frame: vec![0; 48],
        })
        .unwrap_err();
    assert_eq!(err.code, RefuseCode::Protocol);
    // After a failure nothing more is accepted.
    assert!(hs.on_message(my_hello.clone()).is_err());

    // Reflection: an attacker without the secret echoes our own MAC back.
    let (mut hs, my_hello) = Handshake::start(Role::Mirror, DB, 1, s.clone(), [1; 32]);
    let Message::Hello(me) = my_hello else {
        unreachable!()
    };
    let attacker = Hello {
        role: Role::Principal,
        nonce: [7; 32],
        ..me
    };
    let Step::Send(out) = hs.on_message(Message::Hello(attacker)).unwrap() else {
        panic!("expected our auth")
    };
    let Message::Auth { mac } = out[0].clone() else {
        panic!("auth")
    };
    assert_eq!(mac, auth_mac(&s, &me, &attacker));
    let err = hs.on_message(Message::Auth { mac }).unwrap_err();
    assert_eq!(err.code, RefuseCode::BadAuth);
}

#[test]
fn secret_files_must_be_private_and_long_enough() {
    use std::os::unix::fs::PermissionsExt;
    let dir = scratch::path("secret");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("secret");
    std::fs::write(&path, "0123456789abcdef0123\n").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = Secret::load(&path).unwrap_err();
    assert!(
        matches!(err, SecretError::Permissions { mode: 0o644, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("chmod 600"), "{err}");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let s = Secret::load(&path).unwrap();
    assert_eq!(format!("{s:?}"), "Secret(20 bytes, redacted)");
    std::fs::write(&path, "short\n").unwrap();
    assert!(matches!(
        Secret::load(&path),
        Err(SecretError::TooShort { got: 5 })
    ));
    std::fs::remove_dir_all(dir).unwrap();
}
