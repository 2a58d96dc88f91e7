//! Mirroring between partners: the wire protocol and the handshake so far.
//!
//! Built: the partner wire messages (`wire`) and the authenticated
//! handshake (`handshake`), both pure (no I/O, no clock) and tested. The
//! session state machine (catch-up, streaming, acknowledgements, commit
//! LSN, heartbeats, mirroring states), the io_uring transport and the
//! applier are the rest of the mirroring issue.

pub mod handshake;
pub mod wire;
