//! Checkpoints of the key-value store: a snapshot of every key and value
//! with the LSN it reflects, so a restart loads it and replays only the log
//! after it, and the log below it can be deleted.
//!
//! File `checkpoints/ckpt-<20-digit LSN>.kv` in the node's directory,
//! written to a `.tmp` file, synced, renamed and the directory synced, so a
//! crash leaves either the whole checkpoint or none. Layout (little-endian):
//!
//! ```text
//! magic   [8]  b"MLKVCKP1"
//! lsn     u64  the store equals the log replayed up to here (a batch end)
//! count   u64  entries
//! entries      key_len u32 · value_len u32 · key · value, `count` times
//! crc32c  u32  of every byte before it
//! ```
//!
//! A checkpoint that fails its checksum (or is cut short) is reported and
//! skipped: the previous one is used. The two newest are kept.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::kv::{Keyspace, Value};

const MAGIC: &[u8; 8] = b"MLKVCKP1";
const KEEP: usize = 2;

pub fn dir(node_dir: &Path) -> PathBuf {
    node_dir.join("checkpoints")
}

fn name(lsn: u64) -> String {
    format!("ckpt-{lsn:020}.kv")
}

fn parse_name(n: &str) -> Option<u64> {
    let d = n.strip_prefix("ckpt-")?.strip_suffix(".kv")?;
    (d.len() == 20 && d.bytes().all(|b| b.is_ascii_digit()))
        .then(|| d.parse().ok())
        .flatten()
}

fn sync_dir(d: &Path) -> std::io::Result<()> {
    File::open(d)?.sync_all()
}

/// Writes a checkpoint of `map` at `lsn` durably; removes all but the
/// newest `KEEP`. Returns its path.
pub fn write(node_dir: &Path, lsn: u64, map: &Keyspace) -> Result<PathBuf, String> {
    let d = dir(node_dir);
    mirrorlog_engine::private::create_dir_all(&d)
        .map_err(|e| format!("creating {}: {e}", d.display()))?;
    let path = d.join(name(lsn));
    let tmp = d.join(format!("{}{TMP_SUFFIX}", name(lsn)));
    // A failed attempt takes its temporary with it: a node retrying a
    // checkpoint on a full disk would otherwise leave one per attempt (each
    // at its own LSN) until nothing, not even a restart, has room.
    write_tmp(&tmp, lsn, map).inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })?;
    fs::rename(&tmp, &path).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        format!("renaming {}: {e}", tmp.display())
    })?;
    sync_dir(&d).map_err(|e| format!("syncing {}: {e}", d.display()))?;
    // Older ones beyond the newest KEEP go.
    let mut all = list(node_dir);
    all.sort_unstable();
    if all.len() > KEEP {
        for old in &all[..all.len() - KEEP] {
            let _ = fs::remove_file(d.join(name(*old)));
        }
        let _ = sync_dir(&d);
    }
    Ok(path)
}

/// The suffix of a checkpoint being written; such a file is never a
/// checkpoint (only the rename makes one) and is removed on failure and at
/// start ([`remove_temporaries`]).
const TMP_SUFFIX: &str = ".tmp";

/// Removes what failed or interrupted checkpoint writes left behind (files
/// ending in `.tmp` in the checkpoint directory); returns their names.
/// `mirrorlog serve` calls it at start, before anything else needs disk
/// space.
pub fn remove_temporaries(node_dir: &Path) -> Vec<String> {
    let Ok(rd) = fs::read_dir(dir(node_dir)) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for e in rd.filter_map(|e| e.ok()) {
        let Ok(n) = e.file_name().into_string() else {
            continue;
        };
        if n.ends_with(TMP_SUFFIX) && fs::remove_file(e.path()).is_ok() {
            removed.push(n);
        }
    }
    if !removed.is_empty() {
        let _ = sync_dir(&dir(node_dir));
    }
    removed
}

/// Writes and syncs the checkpoint's bytes to `tmp`.
fn write_tmp(tmp: &Path, lsn: u64, map: &Keyspace) -> Result<(), String> {
    let ctx = |what: &str, e: std::io::Error| format!("{what} {}: {e}", tmp.display());
    let f = mirrorlog_engine::private::file_options()
        .write(true)
        .create(true)
        .truncate(true)
        .open(tmp)
        .map_err(|e| ctx("creating", e))?;
    let mut w = BufWriter::with_capacity(1 << 20, f);
    let mut crc = 0u32;
    let mut put = |w: &mut BufWriter<File>, b: &[u8]| -> std::io::Result<()> {
        crc = crc32c::crc32c_append(crc, b);
        w.write_all(b)
    };
    (|| -> std::io::Result<()> {
        put(&mut w, MAGIC)?;
        put(&mut w, &lsn.to_le_bytes())?;
        put(&mut w, &(map.len() as u64).to_le_bytes())?;
        for (k, v) in map.iter() {
            put(&mut w, &(k.len() as u32).to_le_bytes())?;
            put(&mut w, &(v.len() as u32).to_le_bytes())?;
            put(&mut w, k)?;
            put(&mut w, v)?;
        }
        Ok(())
    })()
    .map_err(|e| ctx("writing", e))?;
    w.write_all(&crc.to_le_bytes())
        .map_err(|e| ctx("writing", e))?;
    let f = w.into_inner().map_err(|e| ctx("writing", e.into_error()))?;
    f.sync_all().map_err(|e| ctx("syncing", e))
}

/// LSNs of the checkpoint files present (valid or not).
pub fn list(node_dir: &Path) -> Vec<u64> {
    let Ok(rd) = fs::read_dir(dir(node_dir)) else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(parse_name))
        .collect()
}

/// The newest checkpoint that verifies, as its file's bytes (what a
/// principal sends a mirror it reseeds), with its LSN.
pub fn newest_raw(node_dir: &Path) -> Result<Option<(u64, Vec<u8>)>, String> {
    let mut all = list(node_dir);
    all.sort_unstable_by(|a, b| b.cmp(a));
    for lsn in all {
        let path = dir(node_dir).join(name(lsn));
        let Ok(bytes) = fs::read(&path) else { continue };
        if matches!(decode(&bytes), Ok(l) if l.lsn == lsn) {
            return Ok(Some((lsn, bytes)));
        }
    }
    Ok(None)
}

/// A reseed: checks `bytes` (a checkpoint file from the principal) and
/// installs them durably as this node's only checkpoint, at `lsn`; older
/// ones go (the log they went with is being replaced). Returns the map.
pub fn install_raw(node_dir: &Path, lsn: u64, bytes: &[u8]) -> Result<Keyspace, String> {
    let loaded = decode(bytes).map_err(|e| format!("the snapshot is not a checkpoint: {e}"))?;
    if loaded.lsn != lsn {
        return Err(format!(
            "the snapshot says LSN {}, the principal announced {lsn}",
            loaded.lsn
        ));
    }
    let d = dir(node_dir);
    mirrorlog_engine::private::create_dir_all(&d)
        .map_err(|e| format!("creating {}: {e}", d.display()))?;
    let n = name(lsn);
    crate::checkpoint::replace(&d, &n, bytes)?;
    for old in list(node_dir) {
        if old != lsn {
            let _ = fs::remove_file(d.join(name(old)));
        }
    }
    sync_dir(&d).map_err(|e| format!("syncing {}: {e}", d.display()))?;
    Ok(loaded.map)
}

fn replace(d: &Path, n: &str, bytes: &[u8]) -> Result<(), String> {
    let tmp = d.join(format!("{n}{TMP_SUFFIX}"));
    let ctx = |what: &str, e: std::io::Error| format!("{what} {}: {e}", tmp.display());
    (|| {
        let mut f = mirrorlog_engine::private::file_options()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(|e| ctx("creating", e))?;
        f.write_all(bytes).map_err(|e| ctx("writing", e))?;
        f.sync_all().map_err(|e| ctx("syncing", e))?;
        fs::rename(&tmp, d.join(n)).map_err(|e| ctx("renaming", e))
    })()
    .inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })?;
    sync_dir(d).map_err(|e| format!("syncing {}: {e}", d.display()))
}

/// Moves every checkpoint above `lsn` to `salvage/` in the node directory
/// (the log is being cut at `lsn`; they describe the discarded history).
pub fn set_aside_above(node_dir: &Path, lsn: u64) -> Result<(), String> {
    let above: Vec<u64> = list(node_dir).into_iter().filter(|&l| l > lsn).collect();
    if above.is_empty() {
        return Ok(());
    }
    let to = node_dir.join("salvage");
    mirrorlog_engine::private::create_dir_all(&to)
        .map_err(|e| format!("creating {}: {e}", to.display()))?;
    for l in above {
        let from = dir(node_dir).join(name(l));
        fs::rename(&from, to.join(name(l)))
            .map_err(|e| format!("moving {} to {}: {e}", from.display(), to.display()))?;
    }
    sync_dir(&dir(node_dir)).map_err(|e| format!("syncing {}: {e}", dir(node_dir).display()))?;
    sync_dir(&to).map_err(|e| format!("syncing {}: {e}", to.display()))
}

/// A loaded checkpoint.
pub struct Loaded {
    pub lsn: u64,
    pub map: Keyspace,
}

fn decode(bytes: &[u8]) -> Result<Loaded, String> {
    if bytes.len() < 8 + 8 + 8 + 4 || &bytes[..8] != MAGIC {
        return Err("not a checkpoint (bad magic or too short)".into());
    }
    let (body, tail) = bytes.split_at(bytes.len() - 4);
    let want = u32::from_le_bytes(tail.try_into().expect("4 bytes"));
    if crc32c::crc32c(body) != want {
        return Err("checksum mismatch".into());
    }
    let u64_at = |o: usize| u64::from_le_bytes(body[o..o + 8].try_into().expect("8 bytes"));
    let lsn = u64_at(8);
    let count = u64_at(16);
    let mut map = Keyspace::new();
    let mut p = 24;
    for _ in 0..count {
        if p + 8 > body.len() {
            return Err("entries run past the end".into());
        }
        let kl = u32::from_le_bytes(body[p..p + 4].try_into().expect("4")) as usize;
        let vl = u32::from_le_bytes(body[p + 4..p + 8].try_into().expect("4")) as usize;
        p += 8;
        if p + kl + vl > body.len() {
            return Err("entries run past the end".into());
        }
        map.insert(
            body[p..p + kl].to_vec(),
            Value::copy_from_slice(&body[p + kl..p + kl + vl]),
        );
        p += kl + vl;
    }
    if p != body.len() {
        return Err("bytes after the last entry".into());
    }
    Ok(Loaded { lsn, map })
}

/// The newest checkpoint that verifies, if any; `warn` is told about each
/// one skipped and why.
pub fn load_newest(node_dir: &Path, mut warn: impl FnMut(String)) -> Option<Loaded> {
    let mut all = list(node_dir);
    all.sort_unstable_by(|a, b| b.cmp(a));
    for lsn in all {
        let path = dir(node_dir).join(name(lsn));
        match fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|b| decode(&b))
        {
            Ok(l) if l.lsn == lsn => return Some(l),
            Ok(l) => warn(format!(
                "checkpoint {} names LSN {} inside: skipped",
                path.display(),
                l.lsn
            )),
            Err(e) => warn(format!(
                "checkpoint {} is unusable ({e}): skipped, using an older one",
                path.display()
            )),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("mirrorlog-ckpt-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn round_trip_keep_two_and_fall_back_over_damage() {
        let d = tempdir("rt");
        let mut m = Keyspace::new();
        for i in 0..1000u32 {
            m.insert(
                format!("k{i}").into_bytes(),
                Value::from(vec![i as u8; (i % 50) as usize]),
            );
        }
        write(&d, 100, &m).unwrap();
        m.insert(b"later".to_vec(), Value::from_static(b"x"));
        write(&d, 200, &m).unwrap();
        write(&d, 300, &m).unwrap();
        let mut lsns = list(&d);
        lsns.sort();
        assert_eq!(lsns, vec![200, 300], "the two newest are kept");
        let l = load_newest(&d, |w| panic!("{w}")).unwrap();
        assert_eq!(l.lsn, 300);
        assert_eq!(l.map, m);
        // Flip one byte in the newest: it is skipped with a warning.
        let p = dir(&d).join(name(300));
        let mut b = fs::read(&p).unwrap();
        let mid = b.len() / 2;
        b[mid] ^= 1;
        fs::write(&p, &b).unwrap();
        let mut warned = Vec::new();
        let l = load_newest(&d, |w| warned.push(w)).unwrap();
        assert_eq!(l.lsn, 200);
        assert!(warned[0].contains("checksum"), "{warned:?}");
        // Cut short: skipped too; none left valid -> None.
        let p = dir(&d).join(name(200));
        let b = fs::read(&p).unwrap();
        fs::write(&p, &b[..b.len() - 3]).unwrap();
        assert!(load_newest(&d, |_| {}).is_none());
        fs::remove_dir_all(&d).unwrap();
    }

    fn tmp_files(d: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir(d))
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        v.sort();
        v
    }

    /// Issue 14: every failed checkpoint left its `.tmp`; retries piled
    /// them up until the disk was full and the node could not restart.
    #[test]
    fn regression_a_failed_checkpoint_leaves_no_temporary_file() {
        let d = tempdir("fail");
        let mut m = Keyspace::new();
        m.insert(b"k".to_vec(), Value::from_static(b"v"));
        // The final names are taken by non-empty directories: the rename
        // (the last step, after every byte was written) fails.
        for lsn in [10u64, 20, 30] {
            let blocker = dir(&d).join(name(lsn));
            fs::create_dir_all(blocker.join("x")).unwrap();
            let e = write(&d, lsn, &m).unwrap_err();
            assert!(e.contains("renaming"), "{e}");
            assert_eq!(tmp_files(&d), Vec::<String>::new(), "after LSN {lsn}");
        }
        // The reseed path's writer too.
        fs::create_dir_all(dir(&d).join(name(40)).join("x")).unwrap();
        assert!(replace(&dir(&d), &name(40), b"bytes").is_err());
        assert_eq!(tmp_files(&d), Vec::<String>::new());
        fs::remove_dir_all(&d).unwrap();
    }

    /// Issue 14: temporaries from a crash (or an older version) are
    /// removed at start, before they can keep a full disk full.
    #[test]
    fn regression_leftover_checkpoint_temporaries_are_removed_at_start() {
        let d = tempdir("start");
        let mut m = Keyspace::new();
        m.insert(b"k".to_vec(), Value::from_static(b"v"));
        write(&d, 100, &m).unwrap();
        for lsn in [200u64, 300] {
            fs::write(dir(&d).join(format!("{}.tmp", name(lsn))), b"half").unwrap();
        }
        assert_eq!(tmp_files(&d).len(), 2);
        let removed = remove_temporaries(&d);
        assert_eq!(removed.len(), 2, "{removed:?}");
        assert_eq!(tmp_files(&d), Vec::<String>::new());
        assert_eq!(list(&d), vec![100], "the checkpoint itself stays");
        assert_eq!(load_newest(&d, |w| panic!("{w}")).unwrap().lsn, 100);
        fs::remove_dir_all(&d).unwrap();
    }
}
