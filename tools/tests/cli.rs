//! The `mirrorlog` command line as a Unix user meets it: every
//! subcommand's `--help`, and output into a pipe whose reader has gone.

mod common;

use std::os::fd::{FromRawFd, OwnedFd};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{free_port, node_args, secret, serve, tempdir, wait_for};

const SUBCOMMANDS: [&str; 8] = [
    "inspect-log",
    "demo",
    "serve",
    "status",
    "checkpoint",
    "witness",
    "failover",
    "force-service",
];

fn mirrorlog(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mirrorlog"))
        .args(args)
        .output()
        .expect("running mirrorlog")
}

/// A pipe whose reading end is already closed: a write to it fails with
/// EPIPE at once, as `| head -1` does once head has its line.
fn widowed_pipe() -> OwnedFd {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid array of two ints for pipe(2) to fill.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0, "pipe(2)");
    // SAFETY: pipe(2) returned two fresh descriptors that nothing else owns.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(read);
    write
}

fn into_widowed_pipe(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mirrorlog"))
        .args(args)
        .stdout(Stdio::from(widowed_pipe()))
        .stderr(Stdio::piped())
        .output()
        .expect("running mirrorlog")
}

/// Before the fix: every subcommand answered `--help` with "unknown option
/// \"--help\"" and exit 2, and the admin commands' errors printed the usage
/// of `status`.
#[test]
fn regression_every_subcommand_help_prints_its_own_usage_and_exits_0() {
    for cmd in SUBCOMMANDS {
        for flag in ["--help", "-h"] {
            let out = mirrorlog(&[cmd, flag]);
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "mirrorlog {cmd} {flag}: {:?}\nstdout: {text}\nstderr: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                text.starts_with(&format!("mirrorlog {cmd} ")),
                "mirrorlog {cmd} {flag} printed another usage:\n{text}"
            );
            for other in SUBCOMMANDS.iter().filter(|o| **o != cmd) {
                assert!(
                    !text.contains(&format!("mirrorlog {other} ")),
                    "mirrorlog {cmd} {flag} also printed the usage of {other}:\n{text}"
                );
            }
        }
    }
    // After other flags too, and the flags before it are not acted on.
    let out = mirrorlog(&["status", "--port", "1", "--help"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("mirrorlog status "));
    // A bad flag of an admin command shows that command's usage.
    let out = mirrorlog(&["failover", "--bogus"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("mirrorlog failover [--host"), "{err}");
    assert!(!err.contains("mirrorlog status"), "{err}");
}

/// Before the fix: `mirrorlog status | head -1` panicked ("failed printing
/// to stdout: Broken pipe", exit 101), as did `--help` and `--version`.
#[test]
fn regression_output_into_a_closed_pipe_ends_quietly() {
    for args in [&["--help"][..], &["--version"], &["status", "--help"]] {
        let out = into_widowed_pipe(args);
        assert_eq!(
            out.status.code(),
            Some(0),
            "mirrorlog {args:?} into a closed pipe: stderr {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.stderr.is_empty(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let d = tempdir("cli", "epipe");
    let s = secret(&d);
    let (pc, partner) = (free_port(), free_port());
    let _p = serve(
        &node_args(&d.join("p"), &s, "principal", pc, partner),
        &d.join("p.log"),
    );
    let port = pc.to_string();
    wait_for("the principal", Duration::from_secs(20), || {
        mirrorlog(&["status", "--port", &port]).status.success()
    });
    for args in [
        &["status", "--port", &port][..],
        &["status", "--port", &port, "--json"],
        &["status", "--port", &port, "--watch", "0.05"],
    ] {
        let out = into_widowed_pipe(args);
        assert_eq!(
            out.status.code(),
            Some(0),
            "mirrorlog {args:?} into a closed pipe: stderr {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.stderr.is_empty(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
