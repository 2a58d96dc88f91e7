//! Moving partner messages over TCP.
//!
//! Two paths behind one trait, [`Conn`]:
//!
//! * `uring`: an io_uring ring per connection (crate `io-uring`). Ships go
//!   from the segment map to the socket with no user-space copy, as plain
//!   sends or zero-copy sends (`SendZc`) depending on [`SendMode`]; receives
//!   and the local-progress wake-up are waited on in one ring wait.
//! * `blocking`: plain sockets and `poll(2)`, the fallback when io_uring
//!   cannot be set up (disabled by sysctl or seccomp, old kernel) or when
//!   configured. Same framing, same zero-user-space-copy vectored writes.
//!
//! [`connect`] picks the path from a [`TransportChoice`] and says (in the
//! returned [`TransportPath`] and in the status) which one is in use.

pub mod blocking;
pub mod preauth;
pub mod runner;
pub mod tls;
pub mod uring;

use std::fmt;
use std::time::Duration;

use crate::replication::seal::SealKeys;
use crate::replication::wire::Message;
use crate::wake::Wakeup;

pub use blocking::TransportError;

/// Which path a connection uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransportPath {
    IoUring,
    Blocking,
    /// TLS over blocking sockets (`transport::tls`).
    Tls,
}

impl fmt::Display for TransportPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TransportPath::IoUring => "io_uring",
            TransportPath::Blocking => "blocking",
            TransportPath::Tls => "TLS (blocking sockets)",
        })
    }
}

/// The configuration switch for the path.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TransportChoice {
    /// io_uring when it can be set up, else blocking sockets (logged).
    #[default]
    Auto,
    /// io_uring or an error.
    IoUring,
    /// Always blocking sockets.
    Blocking,
}

impl std::str::FromStr for TransportChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(TransportChoice::Auto),
            "io_uring" | "io-uring" | "uring" => Ok(TransportChoice::IoUring),
            "blocking" => Ok(TransportChoice::Blocking),
            _ => Err(format!(
                "unknown transport {s:?}: expected auto, io_uring or blocking"
            )),
        }
    }
}

/// How the io_uring path sends ship payloads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SendMode {
    /// Zero-copy sends for large payloads to a non-loopback peer; plain
    /// sends otherwise (on loopback the kernel copies anyway, later and
    /// slower: see docs/design.md).
    #[default]
    Auto,
    /// Always `SendZc`.
    ZeroCopy,
    /// Always plain sends.
    Copy,
}

impl std::str::FromStr for SendMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(SendMode::Auto),
            "zc" => Ok(SendMode::ZeroCopy),
            "copy" => Ok(SendMode::Copy),
            _ => Err(format!(
                "unknown send mode {s:?}: expected auto, zc or copy"
            )),
        }
    }
}

/// One authenticated-or-not partner connection, on either path.
pub trait Conn: Send {
    /// Sends one message (control messages: small, copied).
    fn send(&mut self, msg: &Message) -> Result<(), TransportError>;

    /// Sends one `ship` per frame, in order, each carrying `commit_lsn`;
    /// the first follows `prev_lsn` (the end of the batch before it in the
    /// log), each next one the frame before it. Frames are consecutive
    /// batches of one log. Frame bytes go from `frames[i]` (the segment
    /// map) to the socket without a user-space copy. Returns once the
    /// kernel no longer needs the frames' memory (for zero-copy sends:
    /// after their notifications).
    fn send_ships(
        &mut self,
        commit_lsn: u64,
        prev_lsn: u64,
        frames: &[&[u8]],
    ) -> Result<(), TransportError>;

    /// The next message. Waits at most `timeout` (`None`: no limit) and
    /// returns `Ok(None)` when it passes, or earlier once `wake` is
    /// signalled (the signal is consumed). A whole message already
    /// buffered is returned without waiting.
    fn recv(
        &mut self,
        timeout: Option<Duration>,
        wake: Option<&Wakeup>,
    ) -> Result<Option<Message>, TransportError>;

    fn path(&self) -> TransportPath;

    /// Payload bytes handed to the kernel so far (all messages).
    fn bytes_sent(&self) -> u64;

    /// The longest a send may wait for the partner to make room (it stopped
    /// reading): past it the send fails with `TimedOut` and the connection
    /// is unusable. `None`: no limit. The session runners set the partner
    /// timeout, so a stalled partner cannot wedge a sender thread.
    fn set_send_timeout(&mut self, timeout: Option<Duration>);

    /// Refuses any message longer than `max_message_bytes` as soon as its
    /// length arrives (0: only the protocol's bound). The handshake sets a
    /// small limit, so an unauthenticated peer cannot make a node buffer a
    /// 64 MiB message.
    fn set_recv_limit(&mut self, max_message_bytes: usize);

    /// Turns on integrity once the handshake authenticated the partner:
    /// from the next message on, every message sent carries a tag under
    /// `keys.send` and every message received must carry a valid one under
    /// `keys.recv`, checked before it is decoded (a failure is
    /// [`TransportError::Integrity`] and the connection is done). No
    /// default: a connection that forgot this would accept anything.
    fn set_seal(&mut self, keys: SealKeys);

    /// Whether ship payloads go out as zero-copy sends (`SendZc`).
    fn zero_copy(&self) -> bool {
        false
    }

    /// Over TLS: the session's exported keying material, which the
    /// handshake binds into its transcript (so a relay terminating TLS on
    /// both sides fails it). None on a plaintext connection.
    fn channel_binding(&self) -> Option<[u8; tls::BINDING_BYTES]> {
        None
    }
}
