//! Moving partner messages over TCP.
//!
//! Built: `blocking`, the plain-socket path (the fallback the io_uring
//! sender will share its framing with): message framing over a `TcpStream`,
//! `ship` messages written straight from a batch view (header, then the
//! frame bytes from the segment map, no user-space copy), bounded receive
//! buffering. Still to come (mirroring issue): the io_uring sender with
//! SendZc, and the threads that run sessions over connections.

pub mod blocking;
pub mod runner;
