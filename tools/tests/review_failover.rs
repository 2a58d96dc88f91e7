//! Review regressions for failover and reseed with real `mirrorlog serve`
//! processes. Each test reproduced a bug a review found (fixed; it now
//! guards against its return).

mod common;

use std::time::{Duration, Instant};

use mirrorlog::client::Client;
use mirrorlog::resp::Reply;

use common::{addr, field, free_port, info, secret, serve, small_node_args, tempdir, wait_for};

/// `n` pipelined SETs of 4 KB values zstd cannot shrink much.
fn put_many(c: &mut Client, from: u32, n: u32) {
    let vals: Vec<(String, String)> = (from..from + n)
        .map(|i| {
            let v: String = (0..4096u32)
                .map(|j| {
                    let x = (i.wrapping_mul(2_654_435_761) ^ j.wrapping_mul(40_503))
                        .wrapping_mul(2_246_822_519);
                    char::from(b'!' + ((x >> 13) % 90) as u8)
                })
                .collect();
            (format!("key{i}"), v)
        })
        .collect();
    for chunk in vals.chunks(50) {
        let cmds: Vec<Vec<&[u8]>> = chunk
            .iter()
            .map(|(k, v)| vec![&b"SET"[..], k.as_bytes(), v.as_bytes()])
            .collect();
        for r in c.pipeline(&cmds).unwrap() {
            assert_eq!(r, Reply::Simple("OK".into()));
        }
    }
}

/// A mirror that crashed while being reseeded, after `KvApplier::restore`
/// installed the principal's checkpoint (LSN `S`) as its only checkpoint
/// and before its log restarted at `S`, is started again: `Spec::mirror`
/// loads that checkpoint and starts the engine mirror at `S`, which empties
/// the old log ("a reseed was interrupted; the log is emptied and fetched
/// again"). Every session then ends in its first round, before the
/// principal's new snapshot can arrive: `serve_mirror` reports the
/// applier's LSN `S` to a session whose log is hardened to 0, which closes
/// it ("the applier reached LSN S, beyond this log's hardened LSN 0"). The
/// mirror never catches up again. The disk image of the interrupted reseed
/// is built here by copying the principal's newest checkpoint into the
/// mirror's empty directory.
#[test]
fn regression_mirror_restarted_after_an_interrupted_reseed_never_catches_up() {
    let d = tempdir("review-fo-proc", "interrupted");
    let s = secret(&d);
    let (pport, mport, partner) = (free_port(), free_port(), free_port());
    let common =
        |role: &str, sub: &str, port: u16| small_node_args(&d, &s, role, sub, port, partner);
    let mut pargs = common("principal", "p", pport);
    pargs.extend(["--retention-max-bytes".into(), "100000".into()]);
    let _p = serve(&pargs, &d.join("p.log"));
    wait_for("the principal", Duration::from_secs(10), || {
        info(pport).contains("role:master")
    });
    let mut c = Client::connect(addr(pport), Duration::from_secs(5)).unwrap();
    put_many(&mut c, 0, 1000);
    // Checkpoints, and the log below them deleted (retention bound).
    wait_for("the log deleted", Duration::from_secs(10), || {
        field(&info(pport), "mirrorlog_log_start_lsn").is_some_and(|s| s > 1_000_000)
    });
    // The interrupted reseed's disk image: the principal's newest
    // checkpoint installed as the mirror's only one, no log.
    let pck = d.join("p").join("checkpoints");
    let newest = std::fs::read_dir(&pck)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("ckpt-") && n.ends_with(".kv"))
        .max()
        .unwrap();
    let mck = d.join("m").join("checkpoints");
    std::fs::create_dir_all(&mck).unwrap();
    std::fs::copy(pck.join(&newest), mck.join(&newest)).unwrap();
    let _m = serve(&common("mirror", "m", mport), &d.join("m.log"));
    let t0 = Instant::now();
    let mut last = String::new();
    while t0.elapsed() < Duration::from_secs(5) {
        last = info(pport);
        if last.contains("mirroring_state:synchronized")
            && field(&last, "mirror_hardened_lsn") == field(&last, "master_repl_offset")
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mtext = std::fs::read_to_string(d.join("m.log")).unwrap_or_default();
    assert!(
        last.contains("mirroring_state:synchronized"),
        "the mirror never caught up after the interrupted reseed; its log says:\n{}",
        mtext
            .lines()
            .filter(|l| l.contains("interrupted") || l.contains("session ended"))
            .take(4)
            .collect::<Vec<_>>()
            .join("\n")
    );
}
