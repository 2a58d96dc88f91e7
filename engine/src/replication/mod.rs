//! Mirroring between partners.
//!
//! Built, all pure (no I/O, no clock) and tested: the partner wire messages
//! (`wire`), the authenticated handshake (`handshake`: a PAKE, `pake`,
//! shared with the witness link, so the shared secret cannot be guessed
//! offline), the per-message tags after it (`seal`), the catch-up rule
//! (`catchup`: where a reconnecting mirror resumes and what it must cut),
//! the durable epoch history it reads (`history`), and the session state
//! machines of principal and mirror (`session`: position, start, shipping,
//! acknowledgements, commit LSN, heartbeats, partner timeout, mirroring
//! states). Still to come (mirroring issue): the transport that runs
//! sessions over TCP (io_uring with a blocking fallback), the simulator's
//! faults (message loss, disconnects, crashes of either side), end-to-end
//! tests and the benchmark.

pub mod catchup;
pub mod handshake;
pub mod history;
pub mod pake;
pub mod seal;
pub mod session;
pub mod wire;
