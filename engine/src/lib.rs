//! mirrorlog-engine: an embeddable log-transport and mirroring engine.
//!
//! * [`log`]: the write-ahead log: memory-mapped, preallocated segment files
//!   of checksummed (and zstd-compressed when that pays) batch frames, with
//!   crash recovery.
//! * [`commit`]: group commit: many committers, one appender thread, one sync
//!   per batch, commit levels from `local` to `remote-apply`.
//!
//! * [`apply`]: the applier thread that redoes the log into an embedder's
//!   state machine, never beyond a limit (the commit LSN).
//! * [`replication`]: partner wire messages, the authenticated handshake
//!   (a PAKE, bound to TLS when the link has it), the pure session state
//!   machines of principal and mirror, the catch-up rule and the durable
//!   epoch history.
//! * [`transport`]: partner messages over TCP: the io_uring path, the
//!   blocking fallback, TLS (rustls), the pre-authentication gate, and the
//!   session runners that execute what the sessions decide.
//! * [`node`]: `Principal` and `Mirror`, the nodes an embedder runs.
//! * [`witness`]: the witness's pure decision core, its server and client.
//!
//! See docs/design.md for the architecture and docs/format.md for every byte.

mod affinity;
pub mod apply;
pub mod commit;
mod durable;
pub mod log;
pub mod node;
pub mod private;
pub mod replication;
pub mod transport;
pub mod wake;
pub mod witness;
