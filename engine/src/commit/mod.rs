//! Group commit: many threads commit concurrently, one appender thread turns
//! whatever is waiting into one batch, one append and one sync.
//!
//! There is no timer. While the appender is busy syncing batch *n*, commits
//! pile up in the queue and become batch *n+1*; at low load a batch holds one
//! commit and is written at once, at high load batches grow until a sync is
//! amortised over thousands of commits.
//!
//! A commit returns a [`Ticket`] at once; waiting on it (blocking with
//! [`Ticket::wait`], or `.await` since it is a `Future`) completes when the
//! commit's batch has reached the requested [`Level`]. The appender advances
//! `local`; the replication layer advances the remote levels through
//! [`GroupCommit::progress`], so adding a mirror changes nothing here.

mod group;
pub mod level;
pub mod progress;

pub use group::{
    default_batch_bytes_max, CommitOptions, CommitStats, Committed, GroupCommit, Ticket,
};
pub use level::Level;
pub use progress::{Detached, Progress};

use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;

/// Why a commit was refused or did not complete.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CommitError {
    #[error("the log is poisoned and accepts no more commits: {0}")]
    Poisoned(Arc<str>),
    #[error("commit level {0} needs a mirror, and none is attached; commit at level local or attach a mirror")]
    LevelUnavailable(Level),
    #[error("a commit holds at least one record")]
    Empty,
    #[error("commit of {bytes} bytes exceeds the batch limit of {max} bytes (batch_bytes_max)")]
    TooLarge { bytes: usize, max: usize },
    #[error("the appender failed to write the batch: {0}")]
    Append(Arc<str>),
    #[error("the disk is full: {0}; nothing was written, and the next commit retries once space is freed")]
    DiskFull(Arc<str>),
    #[error("not written: an earlier commit failed ({0}), and this one may depend on it")]
    Halted(Arc<str>),
    #[error("group commit is shut down")]
    ShutDown,
    #[error("commit lost: {0}")]
    Lost(Arc<str>),
    #[error("epoch {requested} is older than the current epoch {current}; epochs never go back")]
    EpochRegression { current: u64, requested: u64 },
    #[error("no quorum: this principal has lost its mirror and its witness (or was deposed) and may not acknowledge commits; the commit may or may not be durable")]
    NoQuorum,
    #[error("this principal is handing over to its mirror (manual failover): retry on the new principal")]
    HandedOver,
    #[error("not acknowledged at level {level} within {timeout:?}; the commit may still complete")]
    Timeout { level: Level, timeout: Duration },
}

/// Why group commit could not start.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StartError {
    #[error("invalid commit option: {0}")]
    BadOption(String),
    #[error("could not start the appender thread: {0}")]
    Thread(#[from] std::io::Error),
}
