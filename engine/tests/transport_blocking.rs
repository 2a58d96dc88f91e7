//! Partner messages over real loopback TCP: an authenticated handshake, a
//! log shipped frame by frame (straight from the segment map) and appended
//! on the other side, hostile bytes, timeouts.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use mirrorlog_engine::log::sim::SimStorage;
use mirrorlog_engine::log::{Compression, Log, LogOptions, RecordsBuf};
use mirrorlog_engine::replication::handshake::Secret;
use mirrorlog_engine::replication::wire::{Message, Role, WireError};
use mirrorlog_engine::transport::blocking::{BlockingConn, TransportError};
use mirrorlog_engine::transport::runner::{authenticate, NodeIdentity};
use mirrorlog_engine::transport::Conn;

fn opts() -> LogOptions {
    LogOptions {
        segment_bytes: 64 * 1024,
        compression: Compression::Zstd(1),
    }
}

fn frames(log: &Log<SimStorage>) -> Vec<Vec<u8>> {
    log.read_from(0)
        .unwrap()
        .map(|v| v.unwrap().frame().to_vec())
        .collect()
}

/// Runs one side's handshake to completion over `conn`.
fn handshake(conn: &mut BlockingConn, role: Role, secret: &str, nonce: u8) -> Result<(), String> {
    let id = NodeIdentity {
        database_id: [5; 16],
        secret: Secret::new(secret.as_bytes().to_vec()).unwrap(),
    };
    authenticate(
        conn,
        role,
        &id,
        1,
        [nonce; 32],
        Duration::from_secs(5),
        1 << 20,
    )
    .map(|_| ())
}

#[test]
fn a_log_shipped_over_loopback_arrives_byte_identical() {
    let (principal, _) = Log::open_with(SimStorage::new(), opts()).unwrap();
    let mut x = 1u64;
    for i in 0..300u64 {
        let mut r = RecordsBuf::new();
        let body: Vec<u8> = (0..(i % 700) as usize)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x % 7) as u8 // compressible but not trivially
            })
            .collect();
        r.push(&body);
        principal.append(1, &r).unwrap();
    }
    principal.sync().unwrap();
    let end = principal.written_lsn();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let sender = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut conn = BlockingConn::new(stream).unwrap();
        handshake(&mut conn, Role::Principal, "shared-secret-0001", 1).unwrap();
        let mut prev = 0;
        for v in principal.read_from(0).unwrap() {
            let v = v.unwrap();
            conn.send_ships(v.lsn(), prev, &[v.frame()]).unwrap();
            prev = v.end_lsn();
        }
        conn.send(&Message::Heartbeat {
            commit_lsn: end,
            written_lsn: end,
        })
        .unwrap();
        frames(&principal)
    });
    let mut conn = BlockingConn::new(TcpStream::connect(addr).unwrap()).unwrap();
    handshake(&mut conn, Role::Mirror, "shared-secret-0001", 2).unwrap();
    let (mirror, _) = Log::open_with(SimStorage::new(), opts()).unwrap();
    loop {
        match conn
            .recv(Some(Duration::from_secs(5)), None)
            .unwrap()
            .expect("no stall")
        {
            Message::Ship { frame, .. } => {
                mirror.append_frame(&frame).unwrap();
            }
            Message::Heartbeat { written_lsn, .. } => {
                assert_eq!(written_lsn, mirror.written_lsn());
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let sent = sender.join().unwrap();
    assert_eq!(frames(&mirror), sent);
    assert_eq!(sent.len(), 300);
}

#[test]
fn a_partner_with_the_wrong_secret_gets_no_log() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let principal = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut conn = BlockingConn::new(stream).unwrap();
        handshake(&mut conn, Role::Principal, "shared-secret-0001", 1)
    });
    let mut conn = BlockingConn::new(TcpStream::connect(addr).unwrap()).unwrap();
    let mine = handshake(&mut conn, Role::Mirror, "wrong-secret-00002", 2);
    let theirs = principal.join().unwrap();
    assert!(mine.is_err() && theirs.is_err(), "{mine:?} / {theirs:?}");
    assert!(theirs.unwrap_err().contains("shared secret"));
}

#[test]
fn hostile_bytes_are_an_error_and_silence_is_a_timeout() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let mut attacker = TcpStream::connect(addr).unwrap();
    let (stream, _) = listener.accept().unwrap();
    let mut conn = BlockingConn::new(stream).unwrap();
    // Nothing sent yet: a timeout, not an error.
    assert!(conn
        .recv(Some(Duration::from_millis(50)), None)
        .unwrap()
        .is_none());
    // A length claiming 4 GiB is refused before any allocation.
    attacker
        .write_all(&[0xff, 0xff, 0xff, 0xff, 6, 1, 2, 3])
        .unwrap();
    match conn.recv(Some(Duration::from_secs(5)), None) {
        Err(TransportError::Wire(WireError::TooLong(n))) => assert_eq!(n, u32::MAX as usize),
        other => panic!("expected TooLong, got {other:?}"),
    }
    // A partner that hangs up mid-message: Closed.
    let mut attacker = TcpStream::connect(addr).unwrap();
    let (stream, _) = listener.accept().unwrap();
    let mut conn = BlockingConn::new(stream).unwrap();
    attacker.write_all(&[60, 0, 0, 0, 1, 1]).unwrap();
    drop(attacker);
    assert!(matches!(
        conn.recv(Some(Duration::from_secs(5)), None),
        Err(TransportError::Closed)
    ));
}
