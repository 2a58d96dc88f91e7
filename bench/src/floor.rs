//! The floor: what the file system itself gives, measured with plain system
//! calls in the same directory and the same run as the log.
//!
//! * Sync latency: `pwrite` of one record at an advancing offset into a
//!   preallocated file (real zeros written and fdatasync'ed first, so no
//!   block allocation or unwritten-extent conversion is measured), then
//!   `fdatasync`; one sample per write+fdatasync. Also the same against a
//!   growing file (appends, so each fdatasync also commits the new size).
//! * Sequential bandwidth: 1 MiB writes with one `fdatasync` per 4 MiB,
//!   appended to a fresh file, then overwriting that same (now allocated)
//!   file in place.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::local_commit::{new_histogram, XorShift};

/// Size of the preallocated file of the sync-latency floor; writes wrap.
const PREALLOC_BYTES: u64 = 64 << 20;
pub const BW_CHUNK_BYTES: usize = 1 << 20;
pub const BW_SYNC_EVERY_BYTES: u64 = 4 << 20;

/// How a latency floor wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncKind {
    /// pwrite into a preallocated, already written file + fdatasync.
    Preallocated,
    /// write at the end of a growing file + fdatasync.
    Append,
}

impl SyncKind {
    pub fn name(self) -> &'static str {
        match self {
            SyncKind::Preallocated => "pwrite+fdatasync, preallocated file",
            SyncKind::Append => "write+fdatasync, appending (file grows)",
        }
    }

    pub fn key(self) -> &'static str {
        match self {
            SyncKind::Preallocated => "preallocated",
            SyncKind::Append => "append",
        }
    }
}

pub struct SyncFloor {
    pub kind: SyncKind,
    pub record_bytes: usize,
    pub ops: u64,
    pub seconds: f64,
    pub hist: Histogram<u64>,
}

/// How a bandwidth floor wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BwKind {
    Append,
    Overwrite,
}

impl BwKind {
    pub fn name(self) -> &'static str {
        match self {
            BwKind::Append => "1 MiB writes appended to a new file, fdatasync every 4 MiB",
            BwKind::Overwrite => "1 MiB pwrites over that written file, fdatasync every 4 MiB",
        }
    }

    pub fn key(self) -> &'static str {
        match self {
            BwKind::Append => "append",
            BwKind::Overwrite => "overwrite",
        }
    }
}

pub struct BandwidthFloor {
    pub kind: BwKind,
    /// Measured after the cases (drift check) rather than before.
    pub after: bool,
    pub bytes: u64,
    pub seconds: f64,
}

impl BandwidthFloor {
    pub fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.seconds.max(1e-9)
    }
}

fn ctx<'a>(what: &str, path: &'a Path) -> impl FnOnce(io::Error) -> String + 'a {
    let what = what.to_string();
    move |e| format!("{what} {}: {e}", path.display())
}

fn create(path: &Path) -> Result<File, String> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(ctx("creating", path))
}

/// One file to time write+fdatasync on: a record at an advancing offset.
pub struct SyncProbe {
    path: PathBuf,
    file: File,
    kind: SyncKind,
    buf: Vec<u8>,
    off: u64,
}

impl SyncProbe {
    /// Creates `path` (preallocated with real zeros and fdatasync'ed for
    /// [`SyncKind::Preallocated`], empty for [`SyncKind::Append`]).
    pub fn create(path: PathBuf, kind: SyncKind, record_bytes: usize) -> Result<SyncProbe, String> {
        let mut file = create(&path)?;
        if kind == SyncKind::Preallocated {
            let zeros = vec![0u8; 1 << 20];
            let mut done = 0u64;
            while done < PREALLOC_BYTES {
                file.write_all(&zeros)
                    .map_err(ctx("preallocating", &path))?;
                done += zeros.len() as u64;
            }
            file.sync_data().map_err(ctx("fdatasync of", &path))?;
        }
        let mut buf = vec![0u8; record_bytes];
        XorShift::new(0x5eed_f100 ^ record_bytes as u64).fill(&mut buf);
        Ok(SyncProbe {
            path,
            file,
            kind,
            buf,
            off: 0,
        })
    }

    /// One write+fdatasync; returns its latency in ns.
    pub fn op(&mut self) -> Result<u64, String> {
        let len = self.buf.len() as u64;
        if self.kind == SyncKind::Preallocated && self.off + len > PREALLOC_BYTES {
            self.off = 0;
        }
        // Vary the bytes a little so no layer can skip an identical write.
        self.buf[0] = self.buf[0].wrapping_add(1);
        let t = Instant::now();
        self.file
            .write_all_at(&self.buf, self.off)
            .map_err(ctx("writing", &self.path))?;
        self.file
            .sync_data()
            .map_err(ctx("fdatasync of", &self.path))?;
        let ns = t.elapsed().as_nanos().max(1) as u64;
        self.off += len;
        Ok(ns)
    }

    /// Closes and deletes the file.
    pub fn remove(self) -> Result<(), String> {
        drop(self.file);
        std::fs::remove_file(&self.path).map_err(ctx("removing", &self.path))
    }
}

/// Write+fdatasync latency for `record_bytes` writes at advancing offsets.
pub fn sync_latency(
    dir: &Path,
    kind: SyncKind,
    record_bytes: usize,
    warmup: Duration,
    timed: Duration,
) -> Result<SyncFloor, String> {
    let path = dir.join(format!("floor-sync-{}-{record_bytes}.dat", kind.key()));
    let mut probe = SyncProbe::create(path, kind, record_bytes)?;
    let mut hist = new_histogram();
    let mut ops = 0u64;
    let mut seconds = 0.0;
    for (timed_phase, dur) in [(false, warmup), (true, timed)] {
        let start = Instant::now();
        while start.elapsed() < dur {
            let ns = probe.op()?;
            if timed_phase {
                hist.saturating_record(ns);
                ops += 1;
            }
        }
        if timed_phase {
            seconds = start.elapsed().as_secs_f64();
        }
    }
    probe.remove()?;
    Ok(SyncFloor {
        kind,
        record_bytes,
        ops,
        seconds,
        hist,
    })
}

/// Sequential-write bandwidth: appending for `timed`, then overwriting the
/// file just written for at most as long (wrapping if it gets to the end).
pub fn bandwidth(dir: &Path, timed: Duration, after: bool) -> Result<[BandwidthFloor; 2], String> {
    let path = dir.join("floor-bandwidth.dat");
    let file = create(&path)?;
    let mut chunk = vec![0u8; BW_CHUNK_BYTES];
    XorShift::new(0xb4d_b4d).fill(&mut chunk);

    let mut run = |kind: BwKind, limit: u64| -> Result<BandwidthFloor, String> {
        let start = Instant::now();
        let mut written = 0u64;
        let mut unsynced = 0u64;
        let mut off = 0u64;
        loop {
            if start.elapsed() >= timed {
                break;
            }
            if kind == BwKind::Overwrite && off + BW_CHUNK_BYTES as u64 > limit {
                off = 0;
            }
            chunk[0] = chunk[0].wrapping_add(1);
            file.write_all_at(&chunk, off)
                .map_err(ctx("writing", &path))?;
            off += BW_CHUNK_BYTES as u64;
            written += BW_CHUNK_BYTES as u64;
            unsynced += BW_CHUNK_BYTES as u64;
            if unsynced >= BW_SYNC_EVERY_BYTES {
                file.sync_data().map_err(ctx("fdatasync of", &path))?;
                unsynced = 0;
            }
        }
        if unsynced > 0 {
            file.sync_data().map_err(ctx("fdatasync of", &path))?;
        }
        Ok(BandwidthFloor {
            kind,
            after,
            bytes: written,
            seconds: start.elapsed().as_secs_f64(),
        })
    };
    let append = run(BwKind::Append, u64::MAX)?;
    let overwrite = if append.bytes >= BW_CHUNK_BYTES as u64 {
        run(BwKind::Overwrite, append.bytes)?
    } else {
        BandwidthFloor {
            kind: BwKind::Overwrite,
            after,
            bytes: 0,
            seconds: 0.0,
        }
    };
    drop(file);
    std::fs::remove_file(&path).map_err(ctx("removing", &path))?;
    Ok([append, overwrite])
}
