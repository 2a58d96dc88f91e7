//! The README's main command, `mirrorlog demo`, end to end (shortened):
//! it must kill the principal, fail over automatically, rejoin the old
//! principal as mirror and find every acknowledged write on both.

use std::process::Command;

#[test]
fn the_demo_fails_over_and_loses_nothing() {
    let out = Command::new(env!("CARGO_BIN_EXE_mirrorlog"))
        .args(["demo", "--seconds", "1", "--clients", "3"])
        .output()
        .expect("run the demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("nothing lost"), "{stdout}");
    // It really wrote something before the kill.
    let acked: u64 = stdout
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_suffix(" writes had been acknowledged in all")
        })
        .and_then(|n| n.trim().parse().ok())
        .expect("the demo reports its acknowledged writes");
    assert!(acked > 100, "only {acked} writes acknowledged");
    assert!(
        stdout.contains("B took over automatically: principal of epoch 2"),
        "the mirror takes over in a new epoch:\n{stdout}"
    );
    assert!(stdout.contains("present on A"), "{stdout}");
}

#[test]
fn bad_demo_options_are_refused_with_the_usage() {
    let out = Command::new(env!("CARGO_BIN_EXE_mirrorlog"))
        .args(["demo", "--clients", "0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--clients"));
}
