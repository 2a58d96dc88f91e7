//! Partner wire messages and the handshake: round trips, hostile bytes,
//! and every way a partner can be wrong.

mod scratch;
use mirrorlog_engine::replication::handshake::{Handshake, Secret, SecretError, Step};
use mirrorlog_engine::replication::seal::SealKeys;
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
        Just(RefuseCode::HandOver),
        Just(RefuseCode::CommitsLost),
    ];
    prop_oneof![
        (
            any::<u16>(),
            arb_role(),
            any::<[u8; 16]>(),
            any::<u64>(),
            any::<[u8; 32]>(),
            any::<u64>()
        )
            .prop_map(
                |(version, role, database_id, epoch, nonce, segment_bytes)| Message::Hello(Hello {
                    version,
                    role,
                    database_id,
                    epoch,
                    nonce,
                    segment_bytes
                })
            ),
        any::<[u8; 32]>().prop_map(|mac| Message::Confirm { mac }),
        any::<[u8; 33]>().prop_map(|msg| Message::Pake { msg }),
        (code, "[a-zA-Z0-9 éü]{0,200}").prop_map(|(code, reason)| Message::Refuse { code, reason }),
        any::<[u64; 5]>().prop_map(|[a, b, c, d, e]| Message::Position {
            epoch: a,
            written_lsn: b,
            hardened_lsn: c,
            applied_lsn: d,
            segment_end: e,
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

/// How one side's handshake ended: the peer's hello and its message keys.
type Outcome = Result<(Hello, SealKeys), String>;

/// Runs both sides to completion (seeds fixed, so runs are repeatable);
/// returns each side's outcome and every message on the wire.
fn run(
    p: (Role, [u8; 16], u64, &str),
    m: (Role, [u8; 16], u64, &str),
) -> (Outcome, Outcome, Vec<Message>) {
    let (mut a, first_a) = Handshake::start(p.0, p.1, p.2, secret(p.3), [1; 32], [11; 32]);
    let (mut b, first_b) = Handshake::start(m.0, m.1, m.2, secret(m.3), [2; 32], [12; 32]);
    let mut to_a = first_b;
    let mut to_b = first_a;
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
                Ok(Step::Authenticated { peer, keys }) => res_a = Some(Ok((peer, keys))),
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
                Ok(Step::Authenticated { peer, keys }) => res_b = Some(Ok((peer, keys))),
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
    let (a, b, wire) = run(
        (Role::Principal, DB, 3, "correct horse battery"),
        (Role::Mirror, DB, 3, "correct horse battery"),
    );
    let (peer_of_a, mut keys_a) = a.unwrap();
    let (peer_of_b, mut keys_b) = b.unwrap();
    assert_eq!(
        (peer_of_a.role, peer_of_a.epoch, peer_of_a.nonce),
        (Role::Mirror, 3, [2; 32])
    );
    assert_eq!(
        (peer_of_b.role, peer_of_b.version),
        (Role::Principal, PROTOCOL_VERSION)
    );
    // hello, pake, confirm each way.
    assert_eq!(wire.len(), 6, "{wire:?}");
    // Both sides hold the same per-direction keys, and they differ by
    // direction.
    let t = keys_a.send.seal(&[b"position"]);
    assert_eq!(keys_b.recv.open(b"position", &t), Ok(()));
    let t = keys_b.send.seal(&[b"ship"]);
    assert!(keys_b.recv.open(b"ship", &t).is_err(), "reflected");
    assert_eq!(keys_a.recv.open(b"ship", &t), Ok(()));
}

#[test]
fn a_wrong_secret_is_refused_on_both_sides_with_a_clear_error() {
    let (a, b, wire) = run(
        (Role::Principal, DB, 3, "correct horse battery"),
        (Role::Mirror, DB, 3, "incorrect horse battery"),
    );
    let (ea, eb) = (a.unwrap_err(), b.unwrap_err());
    assert!(ea.contains("does not hold the same shared secret"), "{ea}");
    assert!(eb.contains("does not hold the same shared secret"), "{eb}");
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
        Message::Hello(_) | Message::Pake { .. } | Message::Confirm { .. } | Message::Refuse { .. }
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
            !wire.iter().any(|w| matches!(w, Message::Confirm { .. })),
            "no confirmation sent to a wrong partner"
        );
    }
}

/// A node of the previous protocol (version 3: HMAC(secret) over the
/// hellos) or a newer one is refused with both versions named, before any
/// key is derived.
#[test]
fn a_partner_of_another_protocol_version_is_refused_naming_both_versions() {
    for version in [3, PROTOCOL_VERSION + 1] {
        let (mut hs, _) = Handshake::start(
            Role::Mirror,
            DB,
            1,
            secret("s3cret-s3cret-s3cret"),
            [1; 32],
            [3; 32],
        );
        let err = hs
            .on_message(Message::Hello(Hello {
                version,
                role: Role::Principal,
                database_id: DB,
                epoch: 1,
                nonce: [9; 32],
                segment_bytes: 0,
            }))
            .unwrap_err();
        assert_eq!(err.code, RefuseCode::BadVersion);
        assert!(
            err.reason.contains(&format!("protocol version {version}"))
                && err.reason.contains(&format!("version {PROTOCOL_VERSION}")),
            "{}",
            err.reason
        );
        assert!(matches!(
            err.refuse,
            Some(Message::Refuse {
                code: RefuseCode::BadVersion,
                ..
            })
        ));
    }
    // A version-3 node's hello is byte-for-byte a hello: it decodes and
    // gets the refusal, not a framing error.
    let mut b = Vec::new();
    Message::Hello(Hello {
        version: 3,
        role: Role::Principal,
        database_id: DB,
        epoch: 1,
        nonce: [9; 32],
        segment_bytes: 0,
    })
    .encode(&mut b);
    assert!(matches!(
        Message::decode(&b),
        Ok(Some((Message::Hello(Hello { version: 3, .. }), _)))
    ));
}

#[test]
fn log_messages_before_authentication_and_reflected_confirmations_are_refused() {
    let s = secret("s3cret-s3cret-s3cret");
    let (mut hs, mine) = Handshake::start(Role::Mirror, DB, 1, s.clone(), [1; 32], [3; 32]);
    let err = hs
        .on_message(Message::Ship {
            commit_lsn: 0,
            prev_lsn: 0,
            frame: vec![0; 48],
        })
        .unwrap_err();
    assert_eq!(err.code, RefuseCode::Protocol);
    // After a failure nothing more is accepted.
    assert!(hs.on_message(mine[0].clone()).is_err());

    // Reflection: an attacker without the secret echoes our own PAKE
    // message, or our own confirmation, back.
    let (mut hs, mine) = Handshake::start(Role::Mirror, DB, 1, s.clone(), [1; 32], [3; 32]);
    let Message::Hello(me) = mine[0] else {
        unreachable!()
    };
    let attacker = Hello {
        role: Role::Principal,
        nonce: [7; 32],
        ..me
    };
    hs.on_message(Message::Hello(attacker)).unwrap();
    let err = hs.on_message(mine[1].clone()).unwrap_err();
    assert!(err.reason.contains("reflected"), "{}", err.reason);

    let (mut hs, _) = Handshake::start(Role::Mirror, DB, 1, s.clone(), [1; 32], [3; 32]);
    let (_, theirs) = Handshake::start(Role::Principal, DB, 1, s.clone(), [7; 32], [4; 32]);
    hs.on_message(theirs[0].clone()).unwrap();
    let Step::Send(out) = hs.on_message(theirs[1].clone()).unwrap() else {
        panic!("expected our confirmation")
    };
    let err = hs.on_message(out[0].clone()).unwrap_err();
    assert_eq!(err.code, RefuseCode::BadAuth);
}

/// The dictionary that recovered the README's old example secret from a
/// version-3 transcript in five words.
const DICTIONARY: [&str; 5] = ["a", "shared", "secret", "of", "16+-bytes"];
const REAL: &str = "a-shared-secret-of-16+-bytes";

fn candidates() -> Vec<String> {
    // Every hyphenated sequence of up to five dictionary words, without
    // repeats: 325 guesses, the real secret among them.
    let mut out = vec![String::new()];
    let mut all = Vec::new();
    for _ in 0..5 {
        let mut next = Vec::new();
        for prefix in &out {
            for w in DICTIONARY {
                if prefix.split('-').any(|p| p == w) {
                    continue;
                }
                let c = if prefix.is_empty() {
                    w.to_string()
                } else {
                    format!("{prefix}-{w}")
                };
                next.push(c.clone());
                all.push(c);
            }
        }
        out = next;
    }
    all.retain(|c| c.len() >= 16);
    assert!(all.iter().any(|c| c == REAL));
    all
}

/// What the messages of a principal, as an attacker playing mirror
/// recorded them, let that attacker check offline. It knows its own
/// ephemeral seed, so for every candidate secret it can rebuild exactly
/// the state a mirror with that secret and that seed would have had, feed
/// it the principal's recorded hello, PAKE message and confirmation, and
/// see whether the confirmation verifies: the strongest generic offline
/// check there is (with version 3 the same dictionary recovered the secret
/// by recomputing HMAC(candidate, hellos)).
///
/// What the test proves: the principal's confirmation is no function of
/// the secret and the public transcript alone. Only a candidate equal to
/// the guess the attacker's *own PAKE message committed to* can ever
/// verify (the positive control below), so one connection tests one
/// guess, online, and the real secret is not found offline. That the
/// principal sends its confirmation before verifying the mirror's does not
/// matter: the confirmation is keyed from the exchange's output, which the
/// attacker can compute only for the password its message was made with.
#[test]
fn an_attacker_posing_as_mirror_cannot_test_guesses_offline() {
    let attacker_seed = [42; 32];
    let attacker_nonce = [6; 32];
    let offline = |guess: &str| -> Vec<String> {
        // Online: the principal holds the real secret; the attacker plays
        // mirror with `guess`.
        let (mut principal, p_first) =
            Handshake::start(Role::Principal, DB, 2, secret(REAL), [1; 32], [77; 32]);
        let (_attacker, a_first) = Handshake::start(
            Role::Mirror,
            DB,
            1,
            secret(guess),
            attacker_nonce,
            attacker_seed,
        );
        principal.on_message(a_first[0].clone()).unwrap();
        let Step::Send(p_confirm) = principal.on_message(a_first[1].clone()).unwrap() else {
            panic!("the principal confirms")
        };
        let recorded = [p_first[0].clone(), p_first[1].clone(), p_confirm[0].clone()];
        // No value the principal sent equals what version 3 sent for any
        // candidate: HMAC-SHA256(candidate, context ‖ hellos).
        for c in candidates() {
            let legacy = legacy_v3_mac(c.as_bytes(), &recorded[0], &a_first[0]);
            for m in &recorded {
                let mut b = Vec::new();
                m.encode(&mut b);
                assert!(!b.windows(32).any(|w| w == legacy), "{c}");
            }
        }
        // Offline: every candidate, replayed with the attacker's seed.
        let mut verified = Vec::new();
        for c in candidates() {
            let (mut replay, _) = Handshake::start(
                Role::Mirror,
                DB,
                1,
                secret(&c),
                attacker_nonce,
                attacker_seed,
            );
            replay.on_message(recorded[0].clone()).unwrap();
            let _ = replay.on_message(recorded[1].clone()).unwrap();
            if let Ok(Step::Authenticated { .. }) = replay.on_message(recorded[2].clone()) {
                verified.push(c);
            }
        }
        verified
    };
    // The attacker's online guess is wrong: the recording verifies no
    // candidate, the real secret included.
    assert_eq!(offline("a-shared-secret-of"), Vec::<String>::new());
    // Positive control: had its one online guess been right, the same
    // replay finds exactly that guess (so the check above can succeed).
    assert_eq!(offline(REAL), vec![REAL.to_string()]);
}

/// An eavesdropper sees both PAKE messages and both confirmations. With
/// the same secret and the same public inputs, a side's PAKE message and
/// confirmation change with its secret ephemeral seed, so nothing it sends
/// is computable from the secret and public data: a guess cannot be
/// checked against them.
#[test]
fn what_a_side_sends_depends_on_its_ephemeral_not_only_on_the_secret() {
    let sent = |seed: u8| {
        let (mut p, first) =
            Handshake::start(Role::Principal, DB, 1, secret(REAL), [1; 32], [seed; 32]);
        let (_, m_first) = Handshake::start(Role::Mirror, DB, 1, secret(REAL), [2; 32], [9; 32]);
        p.on_message(m_first[0].clone()).unwrap();
        let Step::Send(c) = p.on_message(m_first[1].clone()).unwrap() else {
            panic!()
        };
        (first[1].clone(), c[0].clone())
    };
    let (pake_1, confirm_1) = sent(1);
    let (pake_2, confirm_2) = sent(2);
    assert_ne!(pake_1, pake_2);
    assert_ne!(confirm_1, confirm_2);
    // And with another secret and the same seed the PAKE message is just
    // as different: it is no deterministic tag of the secret either.
    let (mut p, first) = Handshake::start(
        Role::Principal,
        DB,
        1,
        secret("another-secret-entirely"),
        [1; 32],
        [1; 32],
    );
    assert_ne!(first[1], pake_1);
    assert!(
        p.on_message(first[0].clone()).is_err(),
        "own hello reflected"
    );
}

/// Version 3's authenticator, kept here only to show that nothing like it
/// is sent any more.
fn legacy_v3_mac(secret: &[u8], sender: &Message, receiver: &Message) -> [u8; 32] {
    use hmac::{Hmac, KeyInit, Mac};
    let (Message::Hello(s), Message::Hello(r)) = (sender, receiver) else {
        panic!("hellos")
    };
    let mut m = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(secret).unwrap();
    m.update(b"mirrorlog-partner-auth-v1");
    for h in [s, r] {
        let mut b = Vec::new();
        Message::Hello(*h).encode(&mut b);
        m.update(&b[5..]);
    }
    m.finalize().into_bytes().into()
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
