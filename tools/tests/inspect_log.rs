//! `mirrorlog inspect-log` on real logs: clean, torn tail, damaged, bad usage.

#[path = "../../engine/tests/scratch/mod.rs"]
mod scratch;
use std::process::Command;

use mirrorlog_engine::log::segment::{segment_name, SEGMENT_HEADER_BYTES};
use mirrorlog_engine::log::{Log, LogOptions, RecordsBuf};

fn mirrorlog(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_mirrorlog"))
        .args(args)
        .output()
        .expect("run mirrorlog");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn make_log(tag: &str, n: usize) -> (std::path::PathBuf, Vec<mirrorlog_engine::log::BatchPos>) {
    let dir = scratch::path(&format!("inspect-{tag}"));
    let _ = std::fs::remove_dir_all(&dir);
    let (log, _) = Log::open(
        &dir,
        LogOptions {
            segment_bytes: 16384,
            ..LogOptions::default()
        },
    )
    .unwrap();
    let mut pos = Vec::new();
    for i in 0..n {
        let mut r = RecordsBuf::new();
        r.push(format!("key{i}=value{i}").as_bytes());
        r.push(&[0u8, 1, 2, 255]);
        pos.push(log.append(1 + i as u64 / 10, &r).unwrap());
    }
    log.sync().unwrap();
    (dir, pos)
}

#[test]
fn clean_log_lists_batches_and_records_and_exits_zero() {
    let (dir, pos) = make_log("clean", 30);
    let (code, out, err) = mirrorlog(&["inspect-log", dir.to_str().unwrap(), "--records"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("30 batches, 60 records"), "{out}");
    assert!(
        out.contains(&format!(
            "batch LSN {}..{} epoch 1",
            pos[0].lsn_start, pos[0].lsn_end
        )),
        "{out}"
    );
    assert!(out.contains("key7=value7"), "{out}");
    assert!(out.contains("\\x00\\x01\\x02\\xff"), "{out}");
    assert!(out.contains("verdict: clean"), "{out}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn damage_below_the_durable_point_exits_one_and_names_the_lsn() {
    let (dir, pos) = make_log("damaged", 30);
    let path = dir.join(segment_name(0));
    let before = std::fs::read(&path).unwrap();
    let mut data = before.clone();
    data[SEGMENT_HEADER_BYTES + pos[3].lsn_start as usize + 45] ^= 1;
    std::fs::write(&path, &data).unwrap();
    let (code, out, _) = mirrorlog(&["inspect-log", dir.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("DAMAGED"), "{out}");
    assert!(out.contains(&format!("LSN {}", pos[3].lsn_start)), "{out}");
    // Read-only: the file is exactly as the damage left it.
    assert_eq!(std::fs::read(&path).unwrap(), data);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn torn_unsynced_tail_is_reported_as_cuttable() {
    let (dir, _) = make_log("torn", 5);
    let last = {
        let (log, _) = Log::open(
            &dir,
            LogOptions {
                segment_bytes: 16384,
                ..LogOptions::default()
            },
        )
        .unwrap();
        let mut r = RecordsBuf::new();
        r.push(b"never synced");
        log.append(1, &r).unwrap()
    };
    let path = dir.join(segment_name(0));
    let mut data = std::fs::read(&path).unwrap();
    data[SEGMENT_HEADER_BYTES + last.lsn_start as usize + 42] ^= 1;
    std::fs::write(&path, &data).unwrap();
    let (code, out, _) = mirrorlog(&["inspect-log", dir.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("torn tail from LSN {}", last.lsn_start)),
        "{out}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn bad_usage_exits_two_with_help() {
    let (code, _, err) = mirrorlog(&["inspect-log"]);
    assert_eq!(code, 2);
    assert!(err.contains("missing DIR"), "{err}");
    let (code, _, err) = mirrorlog(&["inspect-log", "/tmp", "--bogus"]);
    assert_eq!(code, 2);
    assert!(err.contains("unknown option \"--bogus\""), "{err}");
    let (code, _, err) = mirrorlog(&["frobnicate"]);
    assert_eq!(code, 2);
    assert!(err.contains("unknown command"), "{err}");
    let (code, out, _) = mirrorlog(&["--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("inspect-log DIR"));
}

#[test]
fn recycled_segment_with_stale_frames_is_clean() {
    let dir = scratch::path("inspect-recycled");
    let _ = std::fs::remove_dir_all(&dir);
    let opts = LogOptions {
        segment_bytes: 16384,
        ..LogOptions::default()
    };
    let (log, _) = Log::open(&dir, opts.clone()).unwrap();
    let record = |i: usize| -> Vec<u8> { (0..300).map(|k| (i * 131 + k * 17) as u8).collect() };
    let mut last = None;
    for i in 0..200 {
        let mut r = RecordsBuf::new();
        r.push(&record(i));
        last = Some(log.append(1, &r).unwrap());
    }
    log.sync().unwrap();
    log.delete_below(log.hardened_lsn()).unwrap();
    // Roll into recycled files (full of stale frames) a few times.
    for i in 200..400 {
        if i % 20 == 0 {
            log.sync().unwrap();
            log.delete_below(log.hardened_lsn()).unwrap();
        }
        if log.wants_next_segment() {
            log.prepare_next_segment().unwrap();
        }
        let mut r = RecordsBuf::new();
        r.push(&record(i));
        last = Some(log.append(1, &r).unwrap());
    }
    log.sync().unwrap();
    drop(log);
    let (code, out, err) = mirrorlog(&["inspect-log", dir.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("verdict: clean"), "{out}");
    assert!(
        out.contains(&format!("end of log at LSN {}", last.unwrap().lsn_end)),
        "{out}"
    );
    assert!(
        out.contains("stale batch"),
        "the last segment is a recycled file: {out}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}
