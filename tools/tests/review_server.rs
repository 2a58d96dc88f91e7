//! Adversarial review of `mirrorlog serve`: each test demonstrates a bug
//! and fails against the code as reviewed.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, secret, Served};

fn tempdir(tag: &str) -> std::path::PathBuf {
    common::tempdir("review", tag)
}

fn serve(dir: &Path, secret: &Path, role: &str, port: u16, partner: u16) -> Served {
    Served(
        Command::new(env!("CARGO_BIN_EXE_mirrorlog"))
            .arg("serve")
            .args([
                "--role",
                role,
                "--dir",
                &dir.join(role).display().to_string(),
                "--secret-file",
                &secret.display().to_string(),
                "--port",
                &port.to_string(),
                "--partner",
                &format!("127.0.0.1:{partner}"),
                "--segment-bytes",
                "65536",
                "--checkpoint-secs",
                "0",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// A raw RESP connection.
struct Raw(TcpStream);

impl Raw {
    fn connect(port: u16) -> Raw {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(s) = TcpStream::connect(("127.0.0.1", port)) {
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let mut r = Raw(s);
                r.send(&[&["PING"]]);
                // A server still starting (or a reset) is retried, not a failure.
                if r.try_line().is_ok_and(|l| l == "+PONG") {
                    return r;
                }
            }
            assert!(Instant::now() < deadline, "no server on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends all `cmds` in one write (a pipeline).
    fn send(&mut self, cmds: &[&[&str]]) {
        let mut out = Vec::new();
        for c in cmds {
            out.extend_from_slice(format!("*{}\r\n", c.len()).as_bytes());
            for a in *c {
                out.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
            }
        }
        self.0.write_all(&out).unwrap();
    }

    fn try_line(&mut self) -> std::io::Result<String> {
        let mut l = Vec::new();
        let mut b = [0u8; 1];
        loop {
            self.0.read_exact(&mut b)?;
            if b[0] == b'\n' {
                break;
            }
            l.push(b[0]);
        }
        if l.pop() != Some(b'\r') {
            return Err(std::io::Error::other("reply line without CR"));
        }
        String::from_utf8(l).map_err(std::io::Error::other)
    }

    fn line(&mut self) -> String {
        let mut l = Vec::new();
        let mut b = [0u8; 1];
        loop {
            self.0.read_exact(&mut b).expect("reply line");
            if b[0] == b'\n' {
                break;
            }
            l.push(b[0]);
        }
        assert_eq!(l.pop(), Some(b'\r'));
        String::from_utf8(l).unwrap()
    }

    /// One reply, flattened to text (arrays as `[a, b]`).
    fn reply(&mut self) -> String {
        let l = self.line();
        match l.as_bytes()[0] {
            b'$' => {
                let n: i64 = l[1..].parse().unwrap();
                if n < 0 {
                    return "(nil)".into();
                }
                let mut v = vec![0u8; n as usize + 2];
                self.0.read_exact(&mut v).unwrap();
                v.truncate(n as usize);
                format!("${}", String::from_utf8_lossy(&v))
            }
            b'*' => {
                let n: i64 = l[1..].parse().unwrap();
                if n < 0 {
                    return "(nil array)".into();
                }
                let items: Vec<String> = (0..n).map(|_| self.reply()).collect();
                format!("[{}]", items.join(", "))
            }
            _ => l,
        }
    }

    fn cmd(&mut self, c: &[&str]) -> String {
        self.send(&[c]);
        self.reply()
    }
}

fn info_field(r: &mut Raw, field: &str) -> Option<String> {
    let text = r.cmd(&["INFO", "replication"]);
    text.split("\r\n").find_map(|l| {
        l.strip_prefix(&format!("{field}:"))
            .map(|v| v.trim().to_string())
    })
}

/// A principal alone (it runs exposed, no mirror).
fn principal_alone(tag: &str) -> (PathBuf, Served, u16) {
    let dir = tempdir(tag);
    let s = secret(&dir);
    let port = free_port();
    let p = serve(&dir, &s, "principal", port, free_port());
    (dir, p, port)
}

/// Redis semantics: a command that fails to queue inside MULTI (here: wrong
/// arity) makes the transaction fail at EXEC with EXECABORT, and the
/// commands queued after it are queued, not run. mirrorlog instead drops
/// the MULTI state at the bad command (server.rs, `command`: the
/// `check_arity` failure branch sets `conn.multi = None` and replies
/// EXECABORT immediately), so every later command of the transaction runs
/// at once, outside any transaction, and is committed - writes the client
/// meant to be discarded (or to be atomic with the rest) are applied, and
/// the replies no longer match what the client expects (`QUEUED`...,
/// then EXEC's error) - a client library sees `+OK`/`:1` where it waits
/// for `+QUEUED`. Fix: on a queueing error, reply the error for that
/// command, keep `conn.multi` but mark it dirty, keep replying QUEUED, and
/// make EXEC answer EXECABORT (and discard) when dirty.
#[test]
fn multi_arity_error_runs_the_rest_of_the_transaction_outside_it() {
    let (_dir, _p, port) = principal_alone("multi-arity");
    let mut c = Raw::connect(port);
    c.send(&[
        &["MULTI"],
        &["SET", "a"],
        &["INCR", "counter"],
        &["EXEC"],
        &["GET", "counter"],
    ]);
    let replies: Vec<String> = (0..5).map(|_| c.reply()).collect();
    assert_eq!(replies[0], "+OK");
    assert!(replies[1].starts_with("-"), "{replies:?}");
    assert_eq!(
        replies[2], "+QUEUED",
        "the INCR after a queueing error must still be queued: {replies:?}"
    );
    assert!(
        replies[3].starts_with("-EXECABORT"),
        "EXEC must fail the whole transaction: {replies:?}"
    );
    assert_eq!(
        replies[4], "(nil)",
        "the INCR of a discarded transaction was committed: {replies:?}"
    );
}

/// WAIT counts the mirrors that received this connection's writes, using
/// `conn.last_write_end`, which is only updated in `resolve` (server.rs,
/// `resolve`: `conn.last_write_end = ...max(c.lsn_end)`), i.e. after the
/// whole pipelined read buffer has been executed. A pipeline
/// `SET k v` + `WAIT 1 300` runs WAIT with the LSN of the connection's
/// *previous* write (0 here), so WAIT answers 1 although the mirror
/// (shipping suspended) never received the SET. A client relying on WAIT
/// for durability on the mirror is told its write is there when it is
/// not. Fix: record the ticket's LSN when the write is handed to group
/// commit (e.g. have `commit` set `last_write_end` from the ticket, or
/// resolve earlier outcomes before running WAIT).
#[test]
fn wait_pipelined_after_a_write_ignores_that_write() {
    let dir = tempdir("wait-pipe");
    let s = secret(&dir);
    let (p_port, m_port, partner) = (free_port(), free_port(), free_port());
    let _p = serve(&dir, &s, "principal", p_port, partner);
    let _m = serve(&dir, &s, "mirror", m_port, partner);
    let mut c = Raw::connect(p_port);
    let deadline = Instant::now() + Duration::from_secs(20);
    while info_field(&mut c, "mirroring_state").as_deref() != Some("synchronized") {
        assert!(Instant::now() < deadline, "the mirror never synchronized");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(c.cmd(&["MIRROR", "LEVEL", "local"]), "+OK");
    assert_eq!(c.cmd(&["MIRROR", "SUSPEND"]), "+OK");
    let deadline = Instant::now() + Duration::from_secs(10);
    while info_field(&mut c, "mirroring_state").as_deref() != Some("suspended") {
        assert!(Instant::now() < deadline, "never suspended");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Sanity: the same two commands sent one at a time give 0.
    assert_eq!(c.cmd(&["SET", "k1", "v"]), "+OK");
    assert_eq!(
        c.cmd(&["WAIT", "1", "300"]),
        ":0",
        "the mirror cannot have k1"
    );
    // A fresh connection (last_write_end 0), pipelined: WAIT must say 0 too.
    let mut d = Raw::connect(p_port);
    assert_eq!(d.cmd(&["MIRROR", "LEVEL", "local"]), "+OK");
    d.send(&[&["SET", "k2", "v"], &["WAIT", "1", "300"]]);
    assert_eq!(d.reply(), "+OK");
    assert_eq!(
        d.reply(),
        ":0",
        "WAIT claims the suspended mirror received the pipelined SET"
    );
}
