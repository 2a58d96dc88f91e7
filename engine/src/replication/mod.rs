//! Mirroring between partners: the wire protocol and the handshake so far.
//!
//! Built: the partner wire messages (`wire`), the authenticated handshake
//! (`handshake`) and the catch-up rule (`catchup`: where a reconnecting
//! mirror resumes and what it must cut), all pure (no I/O, no clock) and
//! tested; and the durable epoch history the rule reads (`history`). The
//! session state machine (catch-up, streaming, acknowledgements, commit
//! LSN, heartbeats, mirroring states) and the io_uring transport are the
//! rest of the mirroring issue; the applier is in `crate::apply`.

pub mod catchup;
pub mod handshake;
pub mod history;
pub mod wire;
