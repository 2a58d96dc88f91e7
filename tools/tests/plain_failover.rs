//! Role changes on the README's plain pair (no witness, one shared
//! `--partner` address) with real processes on 127.0.0.1: a failover
//! either completes (roles swapped, writes accepted on the new principal,
//! nothing lost) or is refused and leaves the old principal serving; no
//! state leaves both nodes refusing writes.

mod common;

use std::time::Duration;

use mirrorlog::client::Client;
use mirrorlog::resp::Reply;

use common::{addr, free_port, node_args, secret, serve, tempdir, wait_for};

fn call(port: u16, args: &[&[u8]]) -> Option<Reply> {
    let mut c = Client::connect(addr(port), Duration::from_secs(2)).ok()?;
    c.call(args).ok()
}

fn set_ok(port: u16, k: &str, v: &str) -> bool {
    matches!(call(port, &[b"SET", k.as_bytes(), v.as_bytes()]), Some(Reply::Simple(s)) if s == "OK")
}

fn get(port: u16, k: &str) -> Option<Vec<u8>> {
    match call(port, &[b"GET", k.as_bytes()]) {
        Some(Reply::Bulk(b)) => Some(b),
        _ => None,
    }
}

/// Before the fix: the failover said "handed over", then the promoted
/// mirror could not listen on the shared `--partner` address the old
/// principal still held ("Address already in use"), never retried, and
/// the old principal (resigned, no `--peer` to follow) stayed principal
/// refusing every write: neither node accepted writes for ever.
#[test]
fn regression_a_failover_on_the_plain_pair_swaps_roles_and_writes_go_on() {
    let d = tempdir("plain-failover", "swap");
    let s = secret(&d);
    let (pc, mc, partner) = (free_port(), free_port(), free_port());
    let _p = serve(
        &node_args(&d.join("p"), &s, "principal", pc, partner),
        &d.join("p.log"),
    );
    wait_for("the principal", Duration::from_secs(20), || {
        set_ok(pc, "k0", "v0")
    });
    let mut margs = node_args(&d.join("m"), &s, "mirror", mc, partner);
    margs.extend(["--principal-clients".into(), format!("127.0.0.1:{pc}")]);
    let _m = serve(&margs, &d.join("m.log"));
    wait_for(
        "a SYNCHRONIZED mirror",
        Duration::from_secs(20),
        || matches!(call(mc, &[b"MIRROR", b"STATUS"]), Some(Reply::Bulk(b)) if String::from_utf8_lossy(&b).contains("SYNCHRONIZED")),
    );
    assert!(set_ok(pc, "k1", "v1"));
    match call(pc, &[b"MIRROR", b"FAILOVER"]) {
        Some(Reply::Bulk(b)) => assert!(String::from_utf8_lossy(&b).contains("handed over")),
        other => panic!("failover: {other:?}"),
    }
    // The old mirror accepts writes; the old principal follows it.
    wait_for(
        "writes on the new principal",
        Duration::from_secs(30),
        || set_ok(mc, "k2", "v2"),
    );
    wait_for(
        "the old principal mirroring the new one",
        Duration::from_secs(30),
        || get(pc, "k2").as_deref() == Some(b"v2"),
    );
    assert_eq!(get(mc, "k0").as_deref(), Some(&b"v0"[..]));
    assert_eq!(get(mc, "k1").as_deref(), Some(&b"v1"[..]));
    assert!(
        !set_ok(pc, "k3", "v3"),
        "the old principal still takes writes"
    );
    // And back again: the roles swap a second time.
    wait_for(
        "a SYNCHRONIZED mirror again",
        Duration::from_secs(20),
        || matches!(call(mc, &[b"MIRROR", b"STATUS"]), Some(Reply::Bulk(b)) if String::from_utf8_lossy(&b).contains("SYNCHRONIZED")),
    );
    match call(mc, &[b"MIRROR", b"FAILOVER"]) {
        Some(Reply::Bulk(b)) => assert!(String::from_utf8_lossy(&b).contains("handed over")),
        other => panic!("second failover: {other:?}"),
    }
    wait_for(
        "writes on the first node again",
        Duration::from_secs(30),
        || set_ok(pc, "k4", "v4"),
    );
    assert_eq!(get(pc, "k2").as_deref(), Some(&b"v2"[..]));
}
