//! Mirroring between partners: the wire protocol and the handshake so far.
//!
//! Built: the partner wire messages (`wire`) and the authenticated
//! handshake (`handshake`), both pure (no I/O, no clock) and tested. The
//! session state machine (catch-up, streaming, acknowledgements, commit
//! LSN, heartbeats, mirroring states) and the io_uring transport are the
//! rest of the mirroring issue; the applier is in `crate::apply`.

pub mod handshake;
pub mod wire;
