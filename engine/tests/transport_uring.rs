//! The io_uring transport over real loopback TCP: a log shipped with plain
//! and zero-copy sends arriving byte-identical at both kinds of receiver,
//! control messages both ways, timeouts, wake-ups, a closing or hostile
//! peer.
//!
//! io_uring is expected to work on the machines these tests run on: when it
//! does not, the tests fail, unless MIRRORLOG_NO_URING=1 is set, in which
//! case they print why and pass without running.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mirrorlog_engine::log::sim::SimStorage;
use mirrorlog_engine::log::{Compression, Log, LogOptions, RecordsBuf};
use mirrorlog_engine::replication::handshake::Secret;
use mirrorlog_engine::replication::wire::{
    Hello, Message, RefuseCode, Role, WireError, PROTOCOL_VERSION, SHIP_HEADER_BYTES,
};
use mirrorlog_engine::transport::blocking::{BlockingConn, TransportError};
use mirrorlog_engine::transport::runner::{authenticate, NodeIdentity};
use mirrorlog_engine::transport::uring::{probe, UringConn};
use mirrorlog_engine::transport::{Conn, SendMode, TransportPath};
use mirrorlog_engine::wake::Wakeup;

/// Whether to run an io_uring test: true when io_uring works; panics when
/// it does not, unless MIRRORLOG_NO_URING=1 (then false, with a line saying
/// so).
fn uring_here(test: &str) -> bool {
    match probe() {
        Ok(()) => true,
        Err(why) if std::env::var("MIRRORLOG_NO_URING").as_deref() == Ok("1") => {
            println!("skipping {test}: io_uring is unavailable ({why}) and MIRRORLOG_NO_URING=1");
            false
        }
        Err(why) => panic!(
            "io_uring is unavailable: {why} (set MIRRORLOG_NO_URING=1 to skip the io_uring \
             tests on a machine without it)"
        ),
    }
}

/// A connected loopback pair: (connecting side, accepted side).
fn pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    (client, server)
}

fn uring(stream: TcpStream, mode: SendMode) -> UringConn {
    UringConn::new(stream, mode).expect("io_uring probed fine, so set-up must work")
}

#[derive(Clone, Copy, Debug)]
enum Receiver {
    Blocking,
    Uring,
}

fn receiver(kind: Receiver, stream: TcpStream) -> Box<dyn Conn> {
    match kind {
        Receiver::Blocking => Box::new(BlockingConn::new(stream).unwrap()),
        Receiver::Uring => Box::new(uring(stream, SendMode::Copy)),
    }
}

fn opts(compression: Compression) -> LogOptions {
    LogOptions {
        segment_bytes: 4 << 20,
        compression,
    }
}

fn frames(log: &Log<SimStorage>) -> Vec<Vec<u8>> {
    log.read_from(0)
        .unwrap()
        .map(|v| v.unwrap().frame().to_vec())
        .collect()
}

fn noise(x: &mut u64, n: usize) -> Vec<u8> {
    (0..n)
        .map(|_| {
            *x ^= *x << 13;
            *x ^= *x >> 7;
            *x ^= *x << 17;
            *x as u8
        })
        .collect()
}

/// A log of 700 small batches (many of them in one `send_ships` call, more
/// than one send SQE's worth of iovecs) followed by large ones: incompressible
/// 300 KiB, 1 MiB and 70 KiB records, stored uncompressed.
fn source_log() -> Log<SimStorage> {
    let (log, _) = Log::open_with(SimStorage::new(), opts(Compression::Off)).unwrap();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..700usize {
        let mut r = RecordsBuf::new();
        r.push(&noise(&mut x, i % 300));
        log.append(1, &r).unwrap();
    }
    for n in [300 << 10, 1 << 20, 70 << 10, 5, 2 << 20] {
        let mut r = RecordsBuf::new();
        r.push(&noise(&mut x, n));
        log.append(1, &r).unwrap();
    }
    log.sync().unwrap();
    log
}

/// Ships a log over a `UringConn` in `mode` to an `rx` receiver, which
/// appends what it gets to a mirror log; checks the mirror's frames, the
/// commit LSNs and the byte count.
fn ship_log(mode: SendMode, rx: Receiver) {
    let log = source_log();
    let end = log.written_lsn();
    let sent = frames(&log);
    assert_eq!(sent.len(), 705);
    let big = sent.iter().map(|f| f.len()).max().unwrap();
    assert!(
        big > 2 << 20,
        "frames larger than 256 KiB, up to 2 MiB: {big}"
    );

    let (a, b) = pair();
    let sender = std::thread::spawn(move || {
        let mut conn = uring(a, mode);
        assert_eq!(conn.path(), TransportPath::IoUring);
        assert_eq!(conn.zero_copy(), mode == SendMode::ZeroCopy);
        let views: Vec<_> = log.read_from(0).unwrap().map(|v| v.unwrap()).collect();
        let slices: Vec<&[u8]> = views.iter().map(|v| v.frame()).collect();
        // 700 small frames in one call (more than 256 frames = 512 iovecs
        // per send SQE), then the large ones in two calls.
        conn.send_ships(7, 0, &slices[..700]).unwrap();
        conn.send_ships(8, views[699].end_lsn(), &slices[700..702])
            .unwrap();
        conn.send_ships(9, views[701].end_lsn(), &slices[702..])
            .unwrap();
        conn.send_ships(9, end, &[]).unwrap();
        let hb = Message::Heartbeat {
            commit_lsn: end,
            written_lsn: end,
        };
        conn.send(&hb).unwrap();
        let mut hb_bytes = Vec::new();
        hb.encode(&mut hb_bytes);
        let expected: u64 = slices
            .iter()
            .map(|f| SHIP_HEADER_BYTES as u64 + f.len() as u64)
            .sum::<u64>()
            + hb_bytes.len() as u64;
        assert_eq!(conn.bytes_sent(), expected);
        // Keep the views (the mapped frames) until here: send_ships has
        // returned, so dropping them now is allowed.
        drop(slices);
        drop(views);
        // Wait for the receiver's "done" so the connection outlives it.
        let done = conn.recv(Some(Duration::from_secs(20)), None).unwrap();
        assert_eq!(
            done,
            Some(Message::Heartbeat {
                commit_lsn: 0,
                written_lsn: 0
            })
        );
    });

    let mut conn = receiver(rx, b);
    let (mirror, _) = Log::open_with(SimStorage::new(), opts(Compression::Off)).unwrap();
    let mut commits = Vec::new();
    loop {
        match conn
            .recv(Some(Duration::from_secs(20)), None)
            .unwrap()
            .expect("no stall")
        {
            Message::Ship {
                commit_lsn,
                prev_lsn,
                frame,
            } => {
                // Each ship names the end of the batch before it.
                assert_eq!(prev_lsn, mirror.written_lsn());
                commits.push(commit_lsn);
                mirror.append_frame(&frame).unwrap();
            }
            Message::Heartbeat { written_lsn, .. } => {
                assert_eq!(written_lsn, mirror.written_lsn());
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    conn.send(&Message::Heartbeat {
        commit_lsn: 0,
        written_lsn: 0,
    })
    .unwrap();
    sender.join().unwrap();
    let got = frames(&mirror);
    assert_eq!(got.len(), sent.len());
    assert!(
        got == sent,
        "the mirror's frames differ from the principal's"
    );
    let mut want = vec![7u64; 700];
    want.extend([8, 8, 9, 9, 9]);
    assert_eq!(commits, want);
}

#[test]
fn probe_says_io_uring_works_here() {
    if std::env::var("MIRRORLOG_NO_URING").as_deref() == Ok("1") {
        println!("skipping probe_says_io_uring_works_here: MIRRORLOG_NO_URING=1");
        return;
    }
    assert_eq!(probe(), Ok(()));
    // Cached: the same answer again.
    assert_eq!(probe(), Ok(()));
}

#[test]
fn a_log_shipped_with_plain_sends_arrives_byte_identical_at_a_blocking_receiver() {
    if uring_here("plain_to_blocking") {
        ship_log(SendMode::Copy, Receiver::Blocking);
    }
}

#[test]
fn a_log_shipped_with_plain_sends_arrives_byte_identical_at_a_uring_receiver() {
    if uring_here("plain_to_uring") {
        ship_log(SendMode::Copy, Receiver::Uring);
    }
}

#[test]
fn a_log_shipped_with_zero_copy_sends_arrives_byte_identical_at_a_blocking_receiver() {
    if uring_here("zc_to_blocking") {
        ship_log(SendMode::ZeroCopy, Receiver::Blocking);
    }
}

#[test]
fn a_log_shipped_with_zero_copy_sends_arrives_byte_identical_at_a_uring_receiver() {
    if uring_here("zc_to_uring") {
        ship_log(SendMode::ZeroCopy, Receiver::Uring);
    }
}

#[test]
fn send_mode_picks_zero_copy_only_when_told_or_off_loopback() {
    if !uring_here("send_mode") {
        return;
    }
    for (mode, zc) in [
        (SendMode::Auto, false), // loopback peer: plain sends
        (SendMode::Copy, false),
        (SendMode::ZeroCopy, true),
    ] {
        let (a, _b) = pair();
        assert_eq!(uring(a, mode).zero_copy(), zc, "{mode:?}");
    }
    // IPv6 loopback too, where the machine has it.
    if let Ok(listener) = TcpListener::bind("[::1]:0") {
        let a = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        assert!(!uring(a, SendMode::Auto).zero_copy());
    }
}

fn sample_messages() -> Vec<Message> {
    vec![
        Message::Hello(Hello {
            version: PROTOCOL_VERSION,
            role: Role::Mirror,
            database_id: [3; 16],
            epoch: 42,
            nonce: [9; 32],
            segment_bytes: 1 << 20,
        }),
        Message::Confirm { mac: [0xa5; 32] },
        Message::Pake { msg: [0x5a; 33] },
        Message::Position {
            epoch: 42,
            written_lsn: 1 << 40,
            hardened_lsn: 1 << 39,
            applied_lsn: 17,
            segment_end: 0,
        },
        Message::Start {
            epoch: 42,
            from_lsn: 4096,
            truncate_to: Some(8192),
        },
        Message::Start {
            epoch: 43,
            from_lsn: 0,
            truncate_to: None,
        },
        Message::Ack {
            received_lsn: 5,
            hardened_lsn: 4,
            applied_lsn: 3,
        },
        Message::Heartbeat {
            commit_lsn: u64::MAX - 1,
            written_lsn: u64::MAX,
        },
        Message::Refuse {
            code: RefuseCode::EpochMismatch,
            reason: "épöch 41 is behind".into(),
        },
    ]
}

fn round_trip(from: &mut dyn Conn, to: &mut dyn Conn) {
    let msgs = sample_messages();
    for m in &msgs {
        from.send(m).unwrap();
    }
    for m in &msgs {
        let got = to
            .recv(Some(Duration::from_secs(5)), None)
            .unwrap()
            .expect("no stall");
        assert_eq!(&got, m);
    }
    // Nothing more.
    assert_eq!(
        to.recv(Some(Duration::from_millis(20)), None).unwrap(),
        None
    );
}

#[test]
fn control_messages_round_trip_between_uring_and_blocking_both_ways() {
    if !uring_here("control_messages") {
        return;
    }
    let (a, b) = pair();
    let mut u = uring(a, SendMode::Auto);
    let mut bl = BlockingConn::new(b).unwrap();
    round_trip(&mut u, &mut bl);
    round_trip(&mut bl, &mut u);
    // And uring to uring.
    let (a, b) = pair();
    let mut u1 = uring(a, SendMode::ZeroCopy);
    let mut u2 = uring(b, SendMode::Copy);
    round_trip(&mut u1, &mut u2);
    round_trip(&mut u2, &mut u1);
}

#[test]
fn a_real_handshake_works_between_uring_and_blocking() {
    if !uring_here("handshake") {
        return;
    }
    let id = || NodeIdentity {
        database_id: [5; 16],
        secret: Secret::new(b"shared-secret-0001".to_vec()).unwrap(),
    };
    let (a, b) = pair();
    let t = std::thread::spawn(move || {
        let mut conn = BlockingConn::new(b).unwrap();
        authenticate(
            &mut conn,
            Role::Mirror,
            &id(),
            1,
            [2; 32],
            Duration::from_secs(5),
            1 << 20,
        )
    });
    let mut conn = uring(a, SendMode::Auto);
    let mine = authenticate(
        &mut conn,
        Role::Principal,
        &id(),
        1,
        [1; 32],
        Duration::from_secs(5),
        1 << 20,
    );
    // Each side learns the other's epoch.
    assert_eq!(mine, Ok(1));
    assert_eq!(t.join().unwrap(), Ok(1));
}

#[test]
fn a_buffered_message_is_returned_without_waiting() {
    if !uring_here("buffered") {
        return;
    }
    let (mut raw, b) = pair();
    let mut conn = uring(b, SendMode::Auto);
    let msgs = sample_messages();
    let mut bytes = Vec::new();
    for m in &msgs[..3] {
        m.encode(&mut bytes);
    }
    raw.write_all(&bytes).unwrap(); // three messages in one write
    assert_eq!(
        conn.recv(Some(Duration::from_secs(5)), None).unwrap(),
        Some(msgs[0].clone())
    );
    // The rest arrived with the first read: no wait needed, even with a
    // zero timeout.
    assert_eq!(
        conn.recv(Some(Duration::ZERO), None).unwrap(),
        Some(msgs[1].clone())
    );
    assert_eq!(
        conn.recv(Some(Duration::ZERO), None).unwrap(),
        Some(msgs[2].clone())
    );
    assert_eq!(conn.recv(Some(Duration::ZERO), None).unwrap(), None);
    // A message split across writes is reassembled.
    let mut one = Vec::new();
    msgs[0].encode(&mut one);
    raw.write_all(&one[..7]).unwrap();
    assert_eq!(
        conn.recv(Some(Duration::from_millis(30)), None).unwrap(),
        None
    );
    raw.write_all(&one[7..]).unwrap();
    assert_eq!(
        conn.recv(Some(Duration::from_secs(5)), None).unwrap(),
        Some(msgs[0].clone())
    );
}

#[test]
fn silence_is_a_timeout_after_the_timeout() {
    if !uring_here("timeout") {
        return;
    }
    let (_peer, b) = pair();
    let mut conn = uring(b, SendMode::Auto);
    for t in [Duration::from_millis(150), Duration::from_millis(20)] {
        let start = Instant::now();
        assert_eq!(conn.recv(Some(t), None).unwrap(), None);
        let took = start.elapsed();
        assert!(
            took >= t,
            "returned after {took:?}, before the {t:?} timeout"
        );
    }
    // With a wake-up that nobody signals: still the full timeout.
    let w = Wakeup::new().unwrap();
    w.arm();
    let t = Duration::from_millis(120);
    let start = Instant::now();
    assert_eq!(conn.recv(Some(t), Some(&w)).unwrap(), None);
    assert!(start.elapsed() >= t, "{:?}", start.elapsed());
}

#[test]
fn a_wake_up_from_another_thread_ends_the_wait_promptly() {
    if !uring_here("wake") {
        return;
    }
    let (mut peer, b) = pair();
    let mut conn = uring(b, SendMode::Auto);
    let w = Arc::new(Wakeup::new().unwrap());

    // Signalled by another thread while we wait (it arms, then signals).
    let w2 = Arc::clone(&w);
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        w2.arm();
        w2.signal();
    });
    let start = Instant::now();
    assert_eq!(
        conn.recv(Some(Duration::from_secs(10)), Some(&w)).unwrap(),
        None
    );
    let took = start.elapsed();
    t.join().unwrap();
    assert!(took < Duration::from_secs(3), "woke after {took:?}");

    // The signal was consumed: the next wait runs to its timeout.
    let start = Instant::now();
    let t = Duration::from_millis(100);
    assert_eq!(conn.recv(Some(t), Some(&w)).unwrap(), None);
    assert!(start.elapsed() >= t);

    // A signal already pending when recv starts returns at once.
    w.arm();
    w.signal();
    let start = Instant::now();
    assert_eq!(
        conn.recv(Some(Duration::from_secs(10)), Some(&w)).unwrap(),
        None
    );
    assert!(start.elapsed() < Duration::from_secs(3));

    // A message arriving while a wake-up is armed is returned, and the
    // wake-up poll it leaves behind (cancelled) causes no early return
    // later; a real signal after that still wakes.
    let hb = Message::Heartbeat {
        commit_lsn: 1,
        written_lsn: 2,
    };
    let mut bytes = Vec::new();
    hb.encode(&mut bytes);
    let writer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(30));
        peer.write_all(&bytes).unwrap();
        peer
    });
    w.arm();
    assert_eq!(
        conn.recv(Some(Duration::from_secs(10)), Some(&w)).unwrap(),
        Some(hb)
    );
    let _peer = writer.join().unwrap();
    let start = Instant::now();
    let t = Duration::from_millis(80);
    assert_eq!(conn.recv(Some(t), None).unwrap(), None);
    assert_eq!(conn.recv(Some(t), Some(&w)).unwrap(), None);
    assert!(start.elapsed() >= 2 * t);
    w.signal(); // still armed from before the message
    let start = Instant::now();
    assert_eq!(
        conn.recv(Some(Duration::from_secs(10)), Some(&w)).unwrap(),
        None
    );
    assert!(start.elapsed() < Duration::from_secs(3));
}

#[test]
fn a_closing_peer_is_closed() {
    if !uring_here("closed") {
        return;
    }
    // Hangs up with nothing sent.
    let (peer, b) = pair();
    let mut conn = uring(b, SendMode::Auto);
    drop(peer);
    assert!(matches!(
        conn.recv(Some(Duration::from_secs(5)), None),
        Err(TransportError::Closed)
    ));
    // Hangs up mid-message, while we are already waiting.
    let (mut peer, b) = pair();
    let mut conn = uring(b, SendMode::Auto);
    let t = std::thread::spawn(move || {
        peer.write_all(&[60, 0, 0, 0, 1, 1]).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        peer.shutdown(Shutdown::Both).unwrap();
    });
    let w = Wakeup::new().unwrap();
    assert!(matches!(
        conn.recv(Some(Duration::from_secs(5)), Some(&w)),
        Err(TransportError::Closed)
    ));
    t.join().unwrap();
}

#[test]
fn hostile_bytes_are_a_wire_error() {
    if !uring_here("hostile") {
        return;
    }
    let cases: [(&[u8], WireError); 4] = [
        // A length claiming 4 GiB is refused before any allocation.
        (
            &[0xff, 0xff, 0xff, 0xff, 6, 1, 2, 3],
            WireError::TooLong(u32::MAX as usize),
        ),
        (&[1, 0, 0, 0, 0xee], WireError::UnknownType(0xee)),
        (&[0, 0, 0, 0], WireError::Empty),
        (
            &[3, 0, 0, 0, 7, 1, 2],
            WireError::BadSize {
                kind: "ack",
                got: 2,
                expected: 24,
            },
        ),
    ];
    for (bytes, want) in cases {
        let (mut peer, b) = pair();
        let mut conn = uring(b, SendMode::Auto);
        peer.write_all(bytes).unwrap();
        match conn.recv(Some(Duration::from_secs(5)), None) {
            Err(TransportError::Wire(e)) => assert_eq!(e, want, "{bytes:?}"),
            other => panic!("{bytes:?}: expected {want:?}, got {other:?}"),
        }
    }
}

#[test]
fn sending_to_a_peer_that_hung_up_is_an_error_not_a_signal() {
    if !uring_here("send_to_closed") {
        return;
    }
    for mode in [SendMode::Copy, SendMode::ZeroCopy] {
        let (peer, b) = pair();
        let mut conn = uring(b, mode);
        drop(peer);
        let frame = vec![0u8; 64 << 10];
        let start = Instant::now();
        let err = loop {
            if let Err(e) = conn.send_ships(1, 0, &[&frame, &frame]) {
                break e;
            }
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "{mode:?}: sends keep succeeding"
            );
            std::thread::sleep(Duration::from_millis(5));
        };
        assert!(
            matches!(err, TransportError::Io(_) | TransportError::Closed),
            "{mode:?}: {err:?}"
        );
    }
}

#[test]
fn dropping_the_connection_closes_the_socket() {
    if !uring_here("drop") {
        return;
    }
    let (mut peer, b) = pair();
    let mut conn = uring(b, SendMode::Auto);
    // Leaves a poll on the socket in the ring.
    assert_eq!(
        conn.recv(Some(Duration::from_millis(10)), None).unwrap(),
        None
    );
    drop(conn);
    peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 8];
    let start = Instant::now();
    assert_eq!(peer.read(&mut buf).unwrap(), 0, "expected end of stream");
    assert!(start.elapsed() < Duration::from_secs(2));
}

#[test]
fn send_ships_returns_only_when_the_kernel_is_done_with_the_frames() {
    if !uring_here("frames_released") {
        return;
    }
    for mode in [SendMode::ZeroCopy, SendMode::Copy] {
        let (a, b) = pair();
        let mut x = 77u64;
        let mut bufs: Vec<Vec<u8>> = (0..24).map(|_| noise(&mut x, 256 << 10)).collect();
        let want = bufs.clone();
        let reader = std::thread::spawn(move || {
            let mut conn = BlockingConn::new(b).unwrap();
            // Let the sender fill the socket buffers first.
            std::thread::sleep(Duration::from_millis(100));
            let mut got = Vec::new();
            while got.len() < 24 {
                match conn.recv(Some(Duration::from_secs(10)), None).unwrap() {
                    Some(Message::Ship { frame, .. }) => got.push(frame),
                    other => panic!("unexpected {other:?}"),
                }
            }
            got
        });
        let mut conn = uring(a, mode);
        let slices: Vec<&[u8]> = bufs.iter().map(|b| b.as_slice()).collect();
        conn.send_ships(3, 0, &slices).unwrap();
        // The kernel no longer needs the pages: scribbling over them must
        // not change what the reader gets.
        for b in &mut bufs {
            b.fill(0xee);
        }
        let got = reader.join().unwrap();
        assert!(
            got == want,
            "{mode:?}: frames changed after send_ships returned"
        );
    }
}
