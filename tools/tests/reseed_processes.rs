//! Reseed with real processes: a principal with a retention bound keeps
//! writing while its mirror is down, deletes the log the mirror needs once
//! the bound is passed, and reseeds the returning mirror from its newest
//! checkpoint over the partner connection; the mirror then holds every
//! acknowledged write, and survives a restart without another reseed.

mod common;

use std::time::Duration;

use mirrorlog::client::Client;
use mirrorlog::resp::Reply;

use common::{addr, field, free_port, info, secret, serve, small_node_args, tempdir, wait_for};

#[test]
fn a_mirror_whose_log_was_deleted_is_reseeded_and_holds_every_write() {
    let d = tempdir("reseed-proc", "main");
    let s = secret(&d);
    let (pport, mport, partner) = (free_port(), free_port(), free_port());
    let common =
        |role: &str, sub: &str, port: u16| small_node_args(&d, &s, role, sub, port, partner);
    let mut pargs = common("principal", "p", pport);
    pargs.extend(["--retention-max-bytes".into(), "400000".into()]);
    let _p = serve(&pargs, &d.join("p.log"));
    let margs = common("mirror", "m", mport);
    let mut m = serve(&margs, &d.join("m.log"));
    wait_for("SYNCHRONIZED", Duration::from_secs(30), || {
        info(pport).contains("mirroring_state:synchronized")
    });
    let mut c = Client::connect(addr(pport), Duration::from_secs(5)).unwrap();
    let mut acked = Vec::new();
    let mut put = |c: &mut Client, i: u32| {
        // Values zstd cannot shrink much, so the log grows past segments.
        let v: String = (0..1500u32)
            .map(|j| {
                char::from(b'a' + ((i.wrapping_mul(2654435761) ^ j.wrapping_mul(40503)) % 26) as u8)
            })
            .collect();
        let k = format!("key{i}");
        assert_eq!(
            c.call(&[b"SET", k.as_bytes(), v.as_bytes()]).unwrap(),
            Reply::Simple("OK".into())
        );
        acked.push((k, v));
    };
    for i in 0..100 {
        put(&mut c, i);
    }
    // The mirror goes down; the principal runs exposed and keeps writing.
    m.0.kill().unwrap();
    m.0.wait().unwrap();
    for i in 100..2500 {
        put(&mut c, i);
    }
    // Checkpoints delete the log the mirror needs once the bound is passed.
    wait_for(
        "the log to be deleted past the mirror",
        Duration::from_secs(30),
        || {
            let i = info(pport);
            field(&i, "mirrorlog_log_start_lsn").is_some_and(|s| s > 300_000)
        },
    );
    let text = std::fs::read_to_string(d.join("p.log")).unwrap();
    assert!(text.contains("retention bound reached"), "{text}");
    for i in 2500..2600 {
        put(&mut c, i);
    }
    // The mirror returns and is reseeded.
    let m2 = serve(&margs, &d.join("m.log"));
    wait_for(
        "the mirror to apply everything",
        Duration::from_secs(60),
        || {
            let i = info(pport);
            i.contains("mirroring_state:synchronized")
                && field(&i, "mirror_applied_lsn") == field(&i, "master_repl_offset")
        },
    );
    let ptext = std::fs::read_to_string(d.join("p.log")).unwrap();
    assert!(
        ptext.contains("reseeding the mirror from the snapshot"),
        "{ptext}"
    );
    let mtext = std::fs::read_to_string(d.join("m.log")).unwrap();
    assert!(mtext.contains("reseeded: state restored at LSN"), "{mtext}");
    let check = |port: u16| {
        let mut c = Client::connect(addr(port), Duration::from_secs(5)).unwrap();
        let mut missing = 0;
        for chunk in acked.chunks(500) {
            let cmds: Vec<Vec<&[u8]>> = chunk
                .iter()
                .map(|(k, _)| vec![&b"GET"[..], k.as_bytes()])
                .collect();
            for ((_, v), r) in chunk.iter().zip(c.pipeline(&cmds).unwrap()) {
                if r != Reply::Bulk(v.clone().into_bytes()) {
                    missing += 1;
                }
            }
        }
        missing
    };
    assert_eq!(check(mport), 0, "writes missing on the reseeded mirror");
    // A restart of the reseeded mirror catches up without another reseed.
    drop(m2);
    let mut c = Client::connect(addr(pport), Duration::from_secs(5)).unwrap();
    assert_eq!(
        c.call(&[b"SET", b"late", b"1"]).unwrap(),
        Reply::Simple("OK".into())
    );
    let _m3 = serve(&margs, &d.join("m.log"));
    wait_for(
        "the restarted mirror to catch up",
        Duration::from_secs(60),
        || {
            let i = info(pport);
            i.contains("mirroring_state:synchronized")
                && field(&i, "mirror_applied_lsn") == field(&i, "master_repl_offset")
        },
    );
    assert_eq!(check(mport), 0);
    let ptext = std::fs::read_to_string(d.join("p.log")).unwrap();
    assert_eq!(
        ptext
            .matches("reseeding the mirror from the snapshot")
            .count(),
        1,
        "{ptext}"
    );
}
