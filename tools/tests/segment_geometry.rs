//! Partners with different `--segment-bytes`, as real processes: refused at
//! the handshake with a clear error, and a restart with the right size
//! recovers (the mirror's leftover wrong-sized segment gets it reseeded).

mod common;

use std::time::Duration;

use mirrorlog::client::Client;
use mirrorlog::resp::Reply;

use common::{addr, free_port, node_args, secret, serve, tempdir, wait_for};

fn call(port: u16, args: &[&[u8]]) -> Option<Reply> {
    let mut c = Client::connect(addr(port), Duration::from_secs(2)).ok()?;
    c.call(args).ok()
}

fn status(port: u16) -> String {
    match call(port, &[b"MIRROR", b"STATUS"]) {
        Some(Reply::Bulk(b)) => String::from_utf8_lossy(&b).into_owned(),
        _ => String::new(),
    }
}

fn set(port: u16, k: &str, v: &[u8]) {
    match call(port, &[b"SET", k.as_bytes(), v]) {
        Some(Reply::Simple(s)) if s == "OK" => {}
        other => panic!("SET {k}: {other:?}"),
    }
}

/// Before the fix: the mirror (1 MiB segments) of a principal with 256 KiB
/// ones failed every frame after the first rollover with "frame does not
/// continue the log", for ever, and a restart with 256 KiB did not recover.
#[test]
fn regression_a_segment_size_mismatch_is_refused_clearly_and_a_restart_with_the_right_size_recovers(
) {
    let d = tempdir("segment-geometry", "mismatch");
    let s = secret(&d);
    let (pc, mc, partner) = (free_port(), free_port(), free_port());
    let mut pargs = node_args(&d.join("p"), &s, "principal", pc, partner);
    pargs.extend(["--segment-bytes", "262144", "--checkpoint-secs", "1"].map(String::from));
    // Commits do not wait for the refused mirror.
    pargs.extend(["--safety", "off"].map(String::from));
    let _p = serve(&pargs, &d.join("p.log"));
    wait_for("the principal", Duration::from_secs(20), || {
        matches!(call(pc, &[b"PING"]), Some(Reply::Simple(_)))
    });
    let value = vec![b'v'; 1000];
    for i in 0..100 {
        set(pc, &format!("k{i}"), &value);
    }
    let margs = |segment_bytes: &str| {
        let mut a = node_args(&d.join("m"), &s, "mirror", mc, partner);
        a.extend(["--segment-bytes", segment_bytes].map(String::from));
        a
    };
    let mut m = serve(&margs("1048576"), &d.join("m.log"));
    wait_for(
        "the mirror to say why it is refused",
        Duration::from_secs(20),
        || status(mc).contains("--segment-bytes"),
    );
    let text = status(mc);
    assert!(
        text.contains("262144") && text.contains("1048576"),
        "{text}"
    );
    assert!(!text.contains("does not continue"), "{text}");
    let plog = std::fs::read_to_string(d.join("p.log")).unwrap();
    assert!(
        plog.contains("--segment-bytes"),
        "the principal's log:\n{plog}"
    );

    // The operator restarts the mirror with the principal's size. Its log
    // directory still holds the 1 MiB segment the first start made.
    m.0.kill().unwrap();
    m.0.wait().unwrap();
    let _m = serve(&margs("262144"), &d.join("m.log"));
    wait_for("a SYNCHRONIZED mirror", Duration::from_secs(60), || {
        status(mc).contains("SYNCHRONIZED")
    });
    // Past several rollovers of the principal's log (100 KiB a round).
    for round in 0..8 {
        for i in 0..100 {
            set(pc, &format!("r{round}-{i}"), &value);
        }
    }
    let written = |port: u16| {
        status(port)
            .lines()
            .find_map(|l| l.strip_prefix("log:         written "))
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
    };
    wait_for("the mirror to catch up", Duration::from_secs(60), || {
        written(mc).is_some() && written(mc) == written(pc)
    });
    let text = status(mc);
    assert!(text.contains("SYNCHRONIZED"), "{text}");
    assert!(!text.contains("does not continue"), "{text}");
    let mlog = std::fs::read_to_string(d.join("m.log")).unwrap();
    assert!(
        mlog.contains("reseeded from the principal's snapshot"),
        "the mirror's log:\n{mlog}"
    );
    for k in ["k0", "k99", "r0-0", "r7-99"] {
        assert_eq!(
            call(mc, &[b"GET", k.as_bytes()]),
            Some(Reply::Bulk(value.clone())),
            "{k} on the mirror"
        );
    }
}
