//! The durable epoch history of a node's log: every epoch the log went
//! through and the LSN it started at, kept in the file `EPOCHS` beside the
//! segments. `catchup::plan_catch_up` reads it.
//!
//! Frames carry their epoch, but the frames alone cannot give the history
//! the catch-up rule needs: an epoch whose batches a crash lost entirely
//! leaves no frame, and retention deletes old ones. So a node records
//! `(epoch, start LSN)` here, durably, *before* it writes the first batch
//! of a new epoch; every batch's epoch is then in the history.
//!
//! When an incarnation starts at recovered end `R`, every earlier start is
//! clamped to at most `R` (what those epochs wrote beyond `R` is gone)
//! before `(epoch, R)` is appended.
//!
//! File layout (little-endian):
//!
//! ```text
//! offset size field
//!      0    8 magic   b"MLEPOCH1"
//!      8    4 count   number of entries
//!     12 16*n entries (epoch u64, start_lsn u64), epochs strictly increasing, > 0
//!      .    4 crc32c  of every byte before it
//! ```
//!
//! It is replaced atomically (`durable::replace_file`): written to
//! `EPOCHS.tmp`, synced, renamed over `EPOCHS`, and the directory synced.
//! Where it lives is a [`ReplaceDir`]: the log's directory on the real
//! filesystem for a node ([`EpochHistory::load`]), or the log's simulated
//! storage for the simulator ([`EpochHistory::load_from`]), whose crash
//! images and disk faults then reach the history too.

use std::io;
use std::path::Path;

use thiserror::Error;

use crate::durable::{FsDir, ReplaceDir};

pub const HISTORY_FILE: &str = "EPOCHS";
const MAGIC: &[u8; 8] = b"MLEPOCH1";
/// Far more epochs than failovers and restarts a log will see; bounds what
/// a damaged count can make the loader allocate.
const ENTRIES_MAX: usize = 1 << 20;

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum HistoryError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("epoch history {path} is damaged: {reason}; restore it from the partner or a backup")]
    Damaged { path: String, reason: String },
    #[error("epoch {requested} does not come after the last recorded epoch {last}")]
    NotNewer { last: u64, requested: u64 },
}

/// See the module documentation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EpochHistory<D: ReplaceDir = FsDir> {
    dir: D,
    entries: Vec<(u64, u64)>,
}

impl EpochHistory<FsDir> {
    /// Loads the history of the log in `dir` (empty if there is none yet).
    pub fn load(dir: impl AsRef<Path>) -> Result<EpochHistory, HistoryError> {
        EpochHistory::load_from(FsDir(dir.as_ref().to_path_buf()))
    }

    /// The log directory this history belongs to.
    pub fn dir(&self) -> &Path {
        &self.dir.0
    }
}

impl<D: ReplaceDir> EpochHistory<D> {
    /// Loads the history kept in `dir` (empty if there is none yet).
    pub fn load_from(dir: D) -> Result<EpochHistory<D>, HistoryError> {
        let bytes = match dir.read(HISTORY_FILE) {
            Ok(Some(b)) => b,
            Ok(None) => {
                return Ok(EpochHistory {
                    dir,
                    entries: Vec::new(),
                })
            }
            Err(source) => {
                return Err(HistoryError::Io {
                    context: format!("reading {}", dir.describe(HISTORY_FILE)),
                    source,
                })
            }
        };
        let entries = decode(&bytes).map_err(|reason| HistoryError::Damaged {
            path: dir.describe(HISTORY_FILE),
            reason: reason.to_string(),
        })?;
        Ok(EpochHistory { dir, entries })
    }

    /// Where the history is kept.
    pub fn store(&self) -> &D {
        &self.dir
    }

    pub fn entries(&self) -> &[(u64, u64)] {
        &self.entries
    }

    /// The newest recorded epoch (0 if none).
    pub fn last_epoch(&self) -> u64 {
        self.entries.last().map_or(0, |&(e, _)| e)
    }

    /// Records, durably, that `epoch` starts at `start_lsn` (the log's end
    /// now). Call before writing any batch of `epoch`.
    pub fn begin(&mut self, epoch: u64, start_lsn: u64) -> Result<(), HistoryError> {
        if epoch <= self.last_epoch() {
            return Err(HistoryError::NotNewer {
                last: self.last_epoch(),
                requested: epoch,
            });
        }
        let mut next = self.entries.clone();
        for e in next.iter_mut() {
            e.1 = e.1.min(start_lsn);
        }
        next.push((epoch, start_lsn));
        self.write(&next)?;
        self.entries = next;
        Ok(())
    }

    /// Adopts `entries` whole (a reseeded mirror takes its principal's
    /// history: its own log is gone). They must be ordered as a history is.
    pub fn replace(&mut self, entries: &[(u64, u64)]) -> Result<(), HistoryError> {
        let ordered = entries
            .windows(2)
            .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1)
            && entries.iter().all(|&(e, _)| e > 0);
        if !ordered {
            return Err(HistoryError::Damaged {
                path: self.dir.describe(HISTORY_FILE),
                reason: "the history to adopt is not ordered".into(),
            });
        }
        self.write(entries)?;
        self.entries = entries.to_vec();
        Ok(())
    }

    fn write(&self, entries: &[(u64, u64)]) -> Result<(), HistoryError> {
        self.dir
            .replace(HISTORY_FILE, &encode(entries))
            .map_err(|(context, source)| HistoryError::Io { context, source })
    }
}

fn encode(entries: &[(u64, u64)]) -> Vec<u8> {
    let mut b = Vec::with_capacity(16 + 16 * entries.len());
    b.extend_from_slice(MAGIC);
    b.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for &(e, s) in entries {
        b.extend_from_slice(&e.to_le_bytes());
        b.extend_from_slice(&s.to_le_bytes());
    }
    let crc = crc32c::crc32c(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}

fn decode(b: &[u8]) -> Result<Vec<(u64, u64)>, &'static str> {
    if b.len() < 16 || &b[..8] != MAGIC {
        return Err("not an epoch history file (bad magic or too short)");
    }
    let count = u32::from_le_bytes(b[8..12].try_into().expect("4 bytes")) as usize;
    if count > ENTRIES_MAX || b.len() != 12 + 16 * count + 4 {
        return Err("length does not match the entry count");
    }
    let (body, crc) = b.split_at(b.len() - 4);
    if crc32c::crc32c(body) != u32::from_le_bytes(crc.try_into().expect("4 bytes")) {
        return Err("checksum mismatch");
    }
    let entries: Vec<(u64, u64)> = body[12..]
        .chunks_exact(16)
        .map(|c| {
            (
                u64::from_le_bytes(c[..8].try_into().expect("8 bytes")),
                u64::from_le_bytes(c[8..].try_into().expect("8 bytes")),
            )
        })
        .collect();
    if entries.iter().any(|&(e, _)| e == 0) || entries.windows(2).any(|w| w[0].0 >= w[1].0) {
        return Err("epochs are not strictly increasing from 1");
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_damage_to_the_file_is_detected() {
        let good = encode(&[(1, 0), (3, 4096)]);
        assert_eq!(decode(&good), Ok(vec![(1, 0), (3, 4096)]));
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x20;
            assert!(decode(&bad).is_err(), "flip at byte {i} undetected");
        }
        assert!(decode(&good[..good.len() - 1]).is_err());
        assert!(
            decode(&encode(&[(2, 0), (2, 9)])).is_err(),
            "epochs must increase"
        );
        assert!(decode(&encode(&[(0, 0)])).is_err(), "epoch 0 is no epoch");
    }
}
