//! Partner messages over an io_uring ring: the preferred path (see the
//! module above).
//!
//! # What is submitted
//!
//! Each [`UringConn`] owns one small ring (16 SQEs, 256 CQEs) and its
//! `TcpStream`. Besides one NOP at set-up (to check that `io_uring_enter`
//! is allowed), four kinds of request ever go into it:
//!
//! * **Sends.** `send_ships` builds the 21-byte `ship` headers and, after
//!   the handshake, their 32-byte tags (`replication::seal`, computed over
//!   header and frame where they lie) in `Vec`s it owns, and one `iovec`
//!   list of header / frame / tag, where each frame
//!   iovec points straight into the caller's slice (the segment map): no
//!   user-space copy of frame bytes. Up to 510 iovecs (170 frames) go into
//!   one `IORING_OP_SENDMSG` (or `IORING_OP_SENDMSG_ZC`, see below), so one
//!   ring enter submits the send and waits for it. `send` encodes a control
//!   message into a scratch `Vec` and sends it the same way (always plain).
//!   Sends carry `MSG_WAITALL` (the kernel keeps retrying a stream send until
//!   all of it is queued) and `MSG_NOSIGNAL` (a dead peer is an `EPIPE`
//!   error, not a `SIGPIPE`); a short completion is still handled by
//!   advancing the iovecs and submitting the remainder.
//! * **A poll on the socket** (`IORING_OP_POLL_ADD`, one-shot, `POLLIN`).
//!   Received bytes are read with a plain non-blocking `recv(2)` into
//!   [`RecvBuf::spare`] *after* the poll says the socket is readable, and
//!   decoded by [`RecvBuf::decode`]. The poll stays armed across calls (it
//!   references no memory and the socket is owned by the connection, so its
//!   completion can only ever mean "this socket became readable"), which
//!   saves re-arming it on every wait.
//! * **A poll on the wake-up eventfd**, when `recv` is given a [`Wakeup`].
//!   It is armed for one `recv` call only: before `recv` returns it is
//!   either completed (the wake-up fired: the eventfd is drained and `recv`
//!   returns `Ok(None)`) or cancelled with `IORING_OP_ASYNC_CANCEL` and its
//!   completion reaped, so a completion can never be attributed to a later
//!   call or to another `Wakeup` that reuses the descriptor number.
//! * **Cancels** of that wake-up poll, and of the socket poll when the
//!   connection is dropped (the poll holds a reference to the socket, which
//!   would otherwise close only when the kernel tears the ring down).
//!
//! Waiting uses `io_uring_enter` with `IORING_ENTER_EXT_ARG` and a timespec
//! (the wait's timeout, no timeout SQE to reap), so socket data, the
//! wake-up and the timeout are waited on in one ring wait. Every request's
//! `user_data` carries a tag (and, for sends and wake-up polls, a sequence
//! number), so a stale completion is never taken for a current one.
//!
//! # Ordering and buffer lifetimes
//!
//! At most one send is in flight per connection: the next one (or the
//! remainder of a short one) is submitted only after the previous send's
//! completion has been reaped, so the bytes on the socket are in call
//! order. Big iovec lists keep this from costing throughput: a single SQE
//! carries up to 170 frames.
//!
//! The kernel never *writes* memory of ours: sends only read (headers,
//! frames, `msghdr`, `iovec`s), polls and cancels reference no memory, the
//! wait timespec is read during the enter call, and the only writes into
//! [`RecvBuf`] are our own synchronous `recv(2)` calls. The `msghdr` and
//! `iovec`s are consumed when the SQE is submitted (the ring is required to
//! have `IORING_FEAT_SUBMIT_STABLE`) and are anyway kept alive until the
//! send's completion is reaped; the frames are borrowed for the whole
//! `send_ships` call, which returns only after every send completion and,
//! for zero-copy sends, every notification CQE (`IORING_CQE_F_NOTIF`):
//! after that the kernel holds no reference to the caller's pages, so the
//! caller may drop or unmap them. If an enter fails for a reason other
//! than `EINTR`/`EBUSY`/`EAGAIN`, the connection is marked broken and never
//! submits again (an SQE left in the queue must not be submitted after the
//! memory it names is gone); every later call fails with
//! [`TransportError::Uring`].
//!
//! # Zero-copy sends
//!
//! `SendMsgZc` pins the user pages instead of copying them into socket
//! buffers, and posts a second CQE (the notification) once the network
//! stack has released them. That pays off for large payloads going out
//! through a real NIC. On loopback the kernel has to copy the pages anyway
//! when the data is delivered locally, later and more expensively (it
//! measured 1.5 vs 3.5 GB/s at 1 MiB here, see docs/design.md), so with
//! [`SendMode::Auto`] a connection whose peer is a loopback address
//! (127.0.0.0/8, `::1`, or an IPv4-mapped loopback) or the connection's own
//! local address (same host: also routed over `lo`) uses plain sends; any
//! other peer gets `SendMsgZc` for each send SQE carrying at least
//! [`ZC_BYTES_MIN`] bytes and plain sends below that. [`SendMode::ZeroCopy`]
//! always uses `SendMsgZc` for ships, [`SendMode::Copy`] never does. Control
//! messages (`send`) are always plain sends: they are small and copied into
//! a scratch buffer anyway. With `Auto`, a kernel without
//! `IORING_OP_SENDMSG_ZC` (before 6.1) just means plain sends; with
//! `ZeroCopy` it is a set-up error.
//!
//! # Socket mode
//!
//! The socket is put in *blocking* mode with `TCP_NODELAY` (the other path
//! leaves it non-blocking; `new` sets the mode either way). Blocking mode is
//! the conventional set-up for io_uring sockets: io_uring never blocks the
//! thread on them (it tries each send without waiting and arms its own
//! internal poll when the socket buffer is full), and with `MSG_WAITALL` it
//! keeps going until the whole send is queued. Our own reads pass
//! `MSG_DONTWAIT` explicitly, so they never block either.

use std::io;
use std::net::{IpAddr, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use io_uring::{cqueue, opcode, squeue, types, IoUring, Probe};

use crate::replication::seal::{SealKey, SealKeys, TAG_BYTES};
use crate::replication::wire::{ship_headers, Message, SHIP_HEADER_BYTES};
use crate::transport::blocking::{ship_tags, RecvBuf, TransportError};
use crate::transport::{Conn, SendMode, TransportPath};
use crate::wake::Wakeup;

/// Submission queue size: at most a send, two polls and a cancel are ever
/// queued at once.
const SQ_ENTRIES: u32 = 16;
/// Completion queue size: room for the notifications of many zero-copy
/// sends that have not been released yet (the kernel keeps overflowing
/// CQEs anyway: `IORING_FEAT_NODROP` is required).
const CQ_ENTRIES: u32 = 256;
/// At most this many iovecs per send SQE (IOV_MAX is 1024 on Linux).
const IOVECS_MAX: usize = 512;
/// Ships per send SQE: header, frame and tag each.
const SHIPS_PER_SEND: usize = IOVECS_MAX / 3;
/// With [`SendMode::Auto`] to a remote peer, a send SQE carrying at least
/// this many bytes goes out as a zero-copy send.
pub const ZC_BYTES_MIN: usize = 64 << 10;
/// `user_data` layout: a tag in the top byte, a sequence number below.
const TAG_MASK: u64 = 0xff << 56;
const SEQ_MASK: u64 = !TAG_MASK;
const TAG_NOP: u64 = 1 << 56;
const TAG_SEND: u64 = 2 << 56;
const TAG_SOCK_POLL: u64 = 3 << 56;
const TAG_WAKE_POLL: u64 = 4 << 56;
const TAG_CANCEL: u64 = 5 << 56;

/// How often a busy ring (`EBUSY`/`EAGAIN` from enter) is retried, 1 ms
/// apart, before the connection gives up.
const BUSY_RETRIES: u32 = 1000;

/// Whether io_uring is usable in this process (a ring can be set up and
/// entered and has every opcode and feature this path needs), and if not,
/// why. Checked once and cached.
pub fn probe() -> Result<(), String> {
    static PROBE: OnceLock<Result<(), String>> = OnceLock::new();
    PROBE
        .get_or_init(|| setup_ring().map(|_| ()).map_err(|e| e.to_string()))
        .clone()
}

/// The value of the `kernel.io_uring_disabled` sysctl, if it exists and is
/// not 0 (1: only for members of `kernel.io_uring_group`, 2: for nobody).
fn disabled_sysctl() -> Option<String> {
    let v = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled").ok()?;
    let v = v.trim();
    (v != "0").then(|| v.to_string())
}

/// An error from ring set-up, with what failed and the likely reason.
fn setup_error(what: &str, e: io::Error) -> io::Error {
    let mut why = match e.raw_os_error() {
        Some(libc::ENOSYS) => " (the kernel has no io_uring: too old, built without it, or the \
                               syscall is filtered by seccomp)"
            .to_string(),
        Some(libc::EPERM) | Some(libc::EACCES) => " (not permitted: the kernel.io_uring_disabled \
                                                   sysctl or a seccomp/LSM policy forbids it)"
            .to_string(),
        Some(libc::ENOMEM) => {
            " (out of memory, or RLIMIT_MEMLOCK too low on kernels before 5.12)".to_string()
        }
        Some(libc::EINVAL) => " (the kernel does not support what was asked: too old)".to_string(),
        _ => String::new(),
    };
    if let Some(v) = disabled_sysctl() {
        why.push_str(&format!("; /proc/sys/kernel/io_uring_disabled is {v}"));
    }
    io::Error::new(e.kind(), format!("io_uring: {what} failed: {e}{why}"))
}

fn unsupported(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::Unsupported, format!("io_uring: {msg}"))
}

/// Sets up a ring and checks that it can be used: the features and opcodes
/// this path needs, and that `io_uring_enter` works (a seccomp filter may
/// allow the set-up and refuse the enter). Returns the ring and whether it
/// supports `IORING_OP_SENDMSG_ZC`.
fn setup_ring() -> io::Result<(IoUring, bool)> {
    let mut ring: IoUring = IoUring::builder()
        .setup_cqsize(CQ_ENTRIES)
        .build(SQ_ENTRIES)
        .map_err(|e| setup_error("io_uring_setup", e))?;
    let p = ring.params();
    for (ok, name, why) in [
        (
            p.is_feature_nodrop(),
            "IORING_FEAT_NODROP",
            "completions could be lost",
        ),
        (
            p.is_feature_submit_stable(),
            "IORING_FEAT_SUBMIT_STABLE",
            "send headers must be consumed at submission",
        ),
        (
            p.is_feature_ext_arg(),
            "IORING_FEAT_EXT_ARG",
            "waits need a timeout argument",
        ),
    ] {
        if !ok {
            return Err(unsupported(format!(
                "the kernel's rings lack {name} ({why}; Linux 5.11 or later is needed)"
            )));
        }
    }
    let mut probe = Probe::new();
    ring.submitter()
        .register_probe(&mut probe)
        .map_err(|e| setup_error("IORING_REGISTER_PROBE", e))?;
    let missing: Vec<&str> = [
        (opcode::Nop::CODE, "NOP"),
        (opcode::SendMsg::CODE, "SENDMSG"),
        (opcode::PollAdd::CODE, "POLL_ADD"),
        (opcode::AsyncCancel::CODE, "ASYNC_CANCEL"),
    ]
    .into_iter()
    .filter(|(code, _)| !probe.is_supported(*code))
    .map(|(_, name)| name)
    .collect();
    if !missing.is_empty() {
        return Err(unsupported(format!(
            "the kernel lacks required opcodes: IORING_OP_{}",
            missing.join(", IORING_OP_")
        )));
    }
    let zc = probe.is_supported(opcode::SendMsgZc::CODE);
    // One round trip through the ring.
    let nop = opcode::Nop::new().build().user_data(TAG_NOP);
    // SAFETY: a NOP references no memory.
    unsafe { ring.submission().push(&nop) }
        .map_err(|_| unsupported("a fresh submission queue is full".into()))?;
    loop {
        match ring.submit_and_wait(1) {
            Ok(_) => break,
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => {
                if !ring.completion().is_empty() {
                    break;
                }
            }
            Err(e) => return Err(setup_error("io_uring_enter", e)),
        }
    }
    match ring.completion().next() {
        Some(c) if c.user_data() == TAG_NOP && c.result() >= 0 => {}
        Some(c) => {
            return Err(setup_error(
                "a NOP request",
                io::Error::from_raw_os_error(-c.result()),
            ))
        }
        None => return Err(unsupported("a NOP request did not complete".into())),
    }
    Ok((ring, zc))
}

/// Whether `peer` is this host as seen from a connection bound to `local`:
/// traffic to it goes over the loopback device.
fn is_local_peer(peer: IpAddr, local: Option<IpAddr>) -> bool {
    let loopback = match peer {
        IpAddr::V4(a) => a.is_loopback(),
        IpAddr::V6(a) => a.is_loopback() || a.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
    };
    loopback || local == Some(peer)
}

/// Drops the first `n` bytes of `iov[first..]` (a short send): emptied
/// iovecs get length 0, a partly sent one is moved forward. Returns the
/// index of the first iovec with bytes left (`iov.len()` if none).
fn advance(iov: &mut [libc::iovec], mut first: usize, mut n: usize) -> usize {
    while first < iov.len() {
        let v = &mut iov[first];
        if n < v.iov_len {
            // The new base stays inside the same buffer (n < iov_len);
            // wrapping_add keeps this pointer arithmetic safe code.
            v.iov_base = v.iov_base.cast::<u8>().wrapping_add(n).cast();
            v.iov_len -= n;
            break;
        }
        n -= v.iov_len;
        v.iov_len = 0;
        first += 1;
    }
    first
}

/// What the completions reaped so far say.
#[derive(Default)]
struct RingState {
    /// Sequence number of the send in flight (or of the last one).
    send_seq: u64,
    /// Result of the send `send_seq`, once its (first) completion is reaped.
    send_result: Option<i32>,
    /// Zero-copy notifications announced (`IORING_CQE_F_MORE`) and not yet
    /// reaped. Signed: a notification is never expected before its send's
    /// completion, but a miscount must not underflow.
    notifs_pending: i64,
    /// A poll on the socket is in the kernel.
    sock_poll_armed: bool,
    /// The socket may have data (the poll fired, or the last read filled
    /// bytes); false after a read found nothing.
    sock_ready: bool,
    /// A socket poll failed with this (negative) result.
    sock_poll_error: Option<i32>,
    /// Sequence number of the current wake-up poll.
    wake_seq: u64,
    /// The wake-up poll `wake_seq` is in the kernel.
    wake_armed: bool,
    /// The wake-up poll `wake_seq` fired.
    wake_fired: bool,
    /// Which `Wakeup` (by `Wakeup::id`) the wake-up poll watches.
    wake_id: u64,
    /// A wake-up poll failed with this (negative) result.
    wake_poll_error: Option<i32>,
    /// Cancels submitted and not yet completed.
    cancels_pending: u32,
}

impl RingState {
    fn on_cqe(&mut self, user_data: u64, res: i32, flags: u32) {
        let seq = user_data & SEQ_MASK;
        match user_data & TAG_MASK {
            TAG_SEND => {
                if cqueue::notif(flags) {
                    self.notifs_pending -= 1;
                    return;
                }
                if cqueue::more(flags) {
                    self.notifs_pending += 1;
                }
                if seq == self.send_seq & SEQ_MASK {
                    self.send_result = Some(res);
                }
            }
            TAG_SOCK_POLL => {
                self.sock_poll_armed = false;
                if res < 0 && res != -libc::ECANCELED {
                    self.sock_poll_error = Some(res);
                }
                // Readable, hung up or in error: a read will tell which.
                self.sock_ready = true;
            }
            // Only the current wake-up poll counts (an older one cannot
            // be outstanding: each is reaped before its `recv` returns).
            TAG_WAKE_POLL if seq == self.wake_seq & SEQ_MASK => {
                self.wake_armed = false;
                if res > 0 {
                    self.wake_fired = true;
                } else if res < 0 && res != -libc::ECANCELED {
                    self.wake_poll_error = Some(res);
                }
            }
            TAG_CANCEL => self.cancels_pending = self.cancels_pending.saturating_sub(1),
            _ => {}
        }
    }
}

/// One partner connection on the io_uring path.
pub struct UringConn {
    // Declared first so it is dropped (the ring closed) before the socket
    // and the buffers; `Drop::drop` has cancelled the socket poll first.
    ring: IoUring,
    stream: TcpStream,
    fd: RawFd,
    /// Ship payloads may go out as zero-copy sends...
    zc: bool,
    /// ...when one send SQE carries at least this many bytes.
    zc_bytes_min: usize,
    rx: RecvBuf,
    scratch: Vec<u8>,
    /// `ship` headers of the current `send_ships` call (reused allocation).
    headers: Vec<[u8; SHIP_HEADER_BYTES]>,
    /// Their tags, likewise (empty before the handshake).
    tags: Vec<[u8; TAG_BYTES]>,
    /// After the handshake: the key that tags every message sent.
    seal: Option<SealKey>,
    sent: u64,
    send_timeout: Option<Duration>,
    st: RingState,
    /// Set when the ring failed in a way that leaves requests unaccounted
    /// for: nothing is submitted any more.
    broken: Option<String>,
}

impl UringConn {
    /// Sets up a ring for this (connected) stream. Fails, leaving the
    /// stream untouched, when io_uring cannot be used here (`ENOSYS`,
    /// `EPERM`, `kernel.io_uring_disabled`, seccomp, or an opcode or feature
    /// missing); the error says what failed, for the caller to log before
    /// falling back to blocking sockets.
    pub fn new(stream: TcpStream, mode: SendMode) -> io::Result<UringConn> {
        let (ring, zc_supported) = setup_ring()?;
        if mode == SendMode::ZeroCopy && !zc_supported {
            return Err(unsupported(
                "send mode zc needs IORING_OP_SENDMSG_ZC (Linux 6.1 or later), which this \
                 kernel lacks"
                    .into(),
            ));
        }
        let zc = match mode {
            SendMode::ZeroCopy => true,
            SendMode::Copy => false,
            SendMode::Auto => {
                // An unknown peer is treated as local: plain sends, the
                // default that is never badly wrong.
                let local = stream.local_addr().ok().map(|a| a.ip());
                zc_supported
                    && stream
                        .peer_addr()
                        .is_ok_and(|p| !is_local_peer(p.ip(), local))
            }
        };
        let sockopt = |what: &str, e: io::Error| {
            io::Error::new(e.kind(), format!("io_uring transport: {what} failed: {e}"))
        };
        // Small control messages must not wait for Nagle.
        stream
            .set_nodelay(true)
            .map_err(|e| sockopt("setting TCP_NODELAY", e))?;
        // See "Socket mode" above.
        stream
            .set_nonblocking(false)
            .map_err(|e| sockopt("making the socket blocking", e))?;
        let fd = stream.as_raw_fd();
        Ok(UringConn {
            ring,
            stream,
            fd,
            zc,
            zc_bytes_min: if mode == SendMode::ZeroCopy {
                0
            } else {
                ZC_BYTES_MIN
            },
            rx: RecvBuf::default(),
            scratch: Vec::new(),
            headers: Vec::new(),
            tags: Vec::new(),
            seal: None,
            sent: 0,
            send_timeout: None,
            st: RingState::default(),
            broken: None,
        })
    }

    /// Whether ship payloads currently go out as zero-copy sends (for
    /// [`SendMode::Auto`]: only sends of at least [`ZC_BYTES_MIN`] bytes).
    pub fn zero_copy(&self) -> bool {
        self.zc
    }

    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    fn check_broken(&self) -> Result<(), TransportError> {
        match &self.broken {
            Some(why) => Err(TransportError::Uring(format!(
                "the ring failed earlier and is unusable: {why}"
            ))),
            None => Ok(()),
        }
    }

    fn fail(&mut self, why: String) -> TransportError {
        self.broken = Some(why.clone());
        TransportError::Uring(why)
    }

    /// Processes every completion in the queue.
    fn reap(&mut self) {
        let st = &mut self.st;
        for c in self.ring.completion() {
            st.on_cqe(c.user_data(), c.result(), c.flags());
        }
    }

    /// Queues one request.
    ///
    /// # Safety
    ///
    /// Whatever memory `entry` names must stay valid until its completion
    /// is reaped (or, if the connection breaks first, until the ring is
    /// dropped: it is never submitted again).
    unsafe fn push(&mut self, entry: &squeue::Entry) -> Result<(), TransportError> {
        // SAFETY: the caller's contract.
        if unsafe { self.ring.submission().push(entry) }.is_ok() {
            return Ok(());
        }
        // Full: hand the queued requests to the kernel and retry.
        self.enter(0, None)?;
        // SAFETY: the caller's contract.
        if unsafe { self.ring.submission().push(entry) }.is_ok() {
            return Ok(());
        }
        Err(self.fail("the submission queue stays full".into()))
    }

    /// Submits what is queued, waits for `want` completions (at most
    /// `timeout`), then reaps. Returns early (Ok) on a timeout or a signal:
    /// callers loop on the state they wait for.
    fn enter(&mut self, want: usize, timeout: Option<Duration>) -> Result<(), TransportError> {
        let mut busy = 0;
        loop {
            let r = match timeout {
                None => self.ring.submit_and_wait(want),
                Some(t) => {
                    let ts = types::Timespec::from(t);
                    let args = types::SubmitArgs::new().timespec(&ts);
                    // The timespec is read during this call only.
                    self.ring.submitter().submit_with_args(want, &args)
                }
            };
            match r {
                Ok(_) => break,
                Err(e) => match e.raw_os_error() {
                    Some(libc::ETIME) | Some(libc::EINTR) => break,
                    // Completion queue overflowing or the kernel short of
                    // memory for a request: make room and retry.
                    Some(libc::EBUSY) | Some(libc::EAGAIN) if busy < BUSY_RETRIES => {
                        busy += 1;
                        self.reap();
                        if busy > 1 {
                            std::thread::sleep(Duration::from_millis(1));
                        }
                    }
                    _ => return Err(self.fail(format!("io_uring_enter failed: {e}"))),
                },
            }
        }
        self.reap();
        Ok(())
    }

    /// Sends all bytes `iov` names, in order, one SQE in flight at a time.
    /// Advances `iov` as bytes are accepted.
    fn send_iov(&mut self, iov: &mut [libc::iovec], zc: bool) -> Result<(), TransportError> {
        let mut first = 0;
        loop {
            while first < iov.len() && iov[first].iov_len == 0 {
                first += 1;
            }
            if first == iov.len() {
                return Ok(());
            }
            let rest = &mut iov[first..];
            // SAFETY: an all-zero msghdr is a valid "no name, no control"
            // header.
            let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
            msg.msg_iov = rest.as_mut_ptr();
            msg.msg_iovlen = rest.len() as _;
            let flags = (libc::MSG_NOSIGNAL | libc::MSG_WAITALL) as u32;
            self.st.send_seq += 1;
            self.st.send_result = None;
            let ud = TAG_SEND | (self.st.send_seq & SEQ_MASK);
            let fd = types::Fd(self.fd);
            let entry = if zc {
                opcode::SendMsgZc::new(fd, &msg).flags(flags).build()
            } else {
                opcode::SendMsg::new(fd, &msg).flags(flags).build()
            }
            .user_data(ud);
            // SAFETY: the entry names `msg`, the iovecs `rest` and the
            // bytes they point at. `msg` and `rest` live until this loop
            // iteration ends, which is after the send's completion has been
            // reaped below (or after the connection broke, when nothing is
            // submitted again); the kernel reads them at submission anyway
            // (IORING_FEAT_SUBMIT_STABLE, checked at set-up). The bytes are
            // the caller's headers, frames and tags, borrowed for the whole
            // `send_ships`/`send` call, which also waits for zero-copy
            // notifications before returning. The kernel only reads them.
            unsafe { self.push(&entry)? };
            let deadline = self.send_timeout.map(|t| Instant::now() + t);
            while self.st.send_result.is_none() {
                let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
                if left.is_some_and(|l| l.is_zero()) {
                    // The partner stopped reading. Shut the socket down so
                    // the send completes (with an error) at once, reap it
                    // (the kernel is then done with `msg` and the bytes),
                    // and give up on this connection.
                    // SAFETY: shutdown on our own socket.
                    unsafe { libc::shutdown(self.fd, libc::SHUT_RDWR) };
                    while self.st.send_result.is_none() {
                        self.enter(1, None)?;
                    }
                    self.st.send_result = None;
                    self.wait_notifs()?;
                    self.broken = Some("a send timed out".into());
                    return Err(crate::transport::blocking::send_timed_out(
                        self.send_timeout,
                    ));
                }
                self.enter(1, left)?;
            }
            let res = self.st.send_result.take().unwrap_or(0);
            if res < 0 {
                let errno = -res;
                if errno == libc::EINTR || errno == libc::EAGAIN {
                    continue;
                }
                return Err(TransportError::Io(io::Error::from_raw_os_error(errno)));
            }
            let n = res as usize;
            if n == 0 {
                // Nothing accepted though bytes remain: the peer is gone.
                return Err(TransportError::Closed);
            }
            self.sent += n as u64;
            first = advance(iov, first, n);
        }
    }

    /// Waits until every zero-copy notification has arrived: the kernel no
    /// longer references any page we sent from.
    fn wait_notifs(&mut self) -> Result<(), TransportError> {
        while self.st.notifs_pending > 0 {
            self.enter(1, None)?;
        }
        Ok(())
    }

    /// One non-blocking read into the receive buffer. Ok(true): bytes
    /// arrived; Ok(false): none available.
    fn read_some(&mut self) -> Result<bool, TransportError> {
        let fd = self.fd;
        loop {
            let spare = self.rx.spare();
            // SAFETY: `spare` is a writable buffer of `spare.len()` bytes
            // for the duration of this synchronous call.
            let n = unsafe {
                libc::recv(
                    fd,
                    spare.as_mut_ptr().cast(),
                    spare.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            let err = (n < 0).then(io::Error::last_os_error);
            self.rx.filled(n.max(0) as usize);
            match err {
                None if n == 0 => return Err(TransportError::Closed),
                None => return Ok(true),
                Some(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Some(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Some(e) => return Err(e.into()),
            }
        }
    }

    fn poll_errors(&mut self) -> Result<(), TransportError> {
        if let Some(res) = self.st.sock_poll_error.take() {
            return Err(self.fail(format!(
                "poll on the socket failed: {}",
                io::Error::from_raw_os_error(-res)
            )));
        }
        if let Some(res) = self.st.wake_poll_error.take() {
            return Err(self.fail(format!(
                "poll on the wake-up eventfd failed: {}",
                io::Error::from_raw_os_error(-res)
            )));
        }
        Ok(())
    }

    fn recv_inner(
        &mut self,
        deadline: Option<Instant>,
        wake: Option<&Wakeup>,
    ) -> Result<Option<Message>, TransportError> {
        loop {
            if let Some(msg) = self.rx.decode()? {
                return Ok(Some(msg));
            }
            self.reap();
            self.poll_errors()?;
            // (A call without a wake-up leaves a fired one for the next
            // call that has it.)
            if let (true, Some(w)) = (self.st.wake_fired, wake) {
                self.st.wake_fired = false;
                w.drain();
                return Ok(None);
            }
            // An armed poll that has not fired means no data arrived since
            // it was armed: skip the read that would find nothing.
            if self.st.sock_ready || !self.st.sock_poll_armed {
                let got = self.read_some()?;
                self.st.sock_ready = got;
                if got {
                    continue;
                }
            }
            let left = match deadline {
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Ok(None);
                    }
                    Some(left)
                }
                None => None,
            };
            if !self.st.sock_poll_armed {
                let e = opcode::PollAdd::new(types::Fd(self.fd), libc::POLLIN as u32)
                    .build()
                    .user_data(TAG_SOCK_POLL);
                // SAFETY: a poll references no memory; the socket is ours
                // for as long as the ring lives (cancelled in Drop).
                unsafe { self.push(&e)? };
                self.st.sock_poll_armed = true;
            }
            if let (Some(w), false) = (wake, self.st.wake_armed) {
                self.st.wake_seq += 1;
                self.st.wake_id = w.id();
                let e = opcode::PollAdd::new(types::Fd(w.fd()), libc::POLLIN as u32)
                    .build()
                    .user_data(TAG_WAKE_POLL | (self.st.wake_seq & SEQ_MASK));
                // SAFETY: a poll references no memory. It may stay armed
                // after this `recv` returns (the next one with the same
                // wake-up reuses it, saving a cancel per wait): the kernel
                // holds its own reference to the eventfd's file, so a
                // closed or reused fd number cannot confuse it, and a recv
                // with another wake-up cancels it first (`wake_id`).
                unsafe { self.push(&e)? };
                self.st.wake_armed = true;
            }
            self.enter(1, left)?;
        }
    }

    /// Cancels the wake-up poll if it is still in the kernel and reaps it.
    /// A wake-up that fired meanwhile is left in the eventfd (not drained),
    /// so the next wait sees it.
    fn disarm_wake(&mut self) -> Result<(), TransportError> {
        if !self.st.wake_armed {
            self.st.wake_fired = false;
            return Ok(());
        }
        let target = TAG_WAKE_POLL | (self.st.wake_seq & SEQ_MASK);
        let e = opcode::AsyncCancel::new(target)
            .build()
            .user_data(TAG_CANCEL);
        // SAFETY: a cancel references no memory.
        unsafe { self.push(&e)? };
        self.st.cancels_pending += 1;
        while self.st.wake_armed || self.st.cancels_pending > 0 {
            self.enter(1, None)?;
        }
        self.st.wake_fired = false;
        self.poll_errors()
    }
}

impl Conn for UringConn {
    fn send(&mut self, msg: &Message) -> Result<(), TransportError> {
        self.check_broken()?;
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        msg.encode(&mut scratch);
        if let Some(seal) = self.seal.as_mut() {
            let tag = seal.seal(&[&scratch]);
            scratch.extend_from_slice(&tag);
        }
        let mut iov = [libc::iovec {
            iov_base: scratch.as_ptr() as *mut libc::c_void,
            iov_len: scratch.len(),
        }];
        // `scratch` is neither moved nor freed until the send completed
        // (plain send: no notification to wait for).
        let r = self.send_iov(&mut iov, false);
        self.scratch = scratch;
        r
    }

    fn send_ships(
        &mut self,
        commit_lsn: u64,
        prev_lsn: u64,
        frames: &[&[u8]],
    ) -> Result<(), TransportError> {
        self.check_broken()?;
        let mut headers = std::mem::take(&mut self.headers);
        headers.clear();
        headers.extend(ship_headers(commit_lsn, prev_lsn, frames));
        // Tags are computed over the frames where they lie (the segment
        // map) and go out as their own small iovecs: zero-copy sends stay
        // zero-copy.
        let mut tags = std::mem::take(&mut self.tags);
        ship_tags(self.seal.as_mut(), &headers, frames, &mut tags);
        let mut iov: Vec<libc::iovec> = Vec::with_capacity(IOVECS_MAX.min(frames.len() * 3));
        let mut result = Ok(());
        for (i, (hs, fs)) in headers
            .chunks(SHIPS_PER_SEND)
            .zip(frames.chunks(SHIPS_PER_SEND))
            .enumerate()
        {
            iov.clear();
            let mut bytes = 0usize;
            for (j, (h, f)) in hs.iter().zip(fs).enumerate() {
                iov.push(libc::iovec {
                    iov_base: h.as_ptr() as *mut libc::c_void,
                    iov_len: h.len(),
                });
                iov.push(libc::iovec {
                    iov_base: f.as_ptr() as *mut libc::c_void,
                    iov_len: f.len(),
                });
                bytes += h.len() + f.len();
                if let Some(t) = tags.get(i * SHIPS_PER_SEND + j) {
                    iov.push(libc::iovec {
                        iov_base: t.as_ptr() as *mut libc::c_void,
                        iov_len: t.len(),
                    });
                    bytes += t.len();
                }
            }
            let zc = self.zc && bytes >= self.zc_bytes_min;
            result = self.send_iov(&mut iov, zc);
            if result.is_err() {
                break;
            }
        }
        // Even after a failed send: the headers' and frames' pages must be
        // released by the kernel before they are reused or unmapped.
        if self.broken.is_none() {
            let waited = self.wait_notifs();
            result = result.and(waited);
        }
        // The tags' memory, like the headers', outlived every send and
        // notification above.
        self.headers = headers;
        self.tags = tags;
        result
    }

    fn recv(
        &mut self,
        timeout: Option<Duration>,
        wake: Option<&Wakeup>,
    ) -> Result<Option<Message>, TransportError> {
        self.check_broken()?;
        // A timeout too large to represent is no limit.
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        // A poll armed for another wake-up (an earlier session's) goes
        // first; one for this wake-up stays armed across calls.
        if let Some(w) = wake {
            if self.st.wake_armed && self.st.wake_id != w.id() {
                self.disarm_wake()?;
            } else if !self.st.wake_armed && self.st.wake_id != w.id() {
                self.st.wake_fired = false;
            }
        }
        self.recv_inner(deadline, wake)
    }

    fn path(&self) -> TransportPath {
        TransportPath::IoUring
    }

    fn bytes_sent(&self) -> u64 {
        self.sent
    }

    fn set_send_timeout(&mut self, timeout: Option<Duration>) {
        self.send_timeout = timeout;
    }

    fn set_recv_limit(&mut self, max_message_bytes: usize) {
        self.rx.set_limit(max_message_bytes);
    }

    fn set_seal(&mut self, keys: SealKeys) {
        self.seal = Some(keys.send);
        self.rx.set_seal(keys.recv);
    }

    fn zero_copy(&self) -> bool {
        UringConn::zero_copy(self)
    }
}

impl Drop for UringConn {
    /// Cancels the socket poll and waits (briefly) for it, so the socket is
    /// closed when the stream is dropped rather than whenever the kernel
    /// tears the ring down (the poll holds a reference to the socket).
    fn drop(&mut self) {
        if self.broken.is_some() || !self.st.sock_poll_armed {
            return;
        }
        let e = opcode::AsyncCancel::new(TAG_SOCK_POLL)
            .build()
            .user_data(TAG_CANCEL);
        // SAFETY: a cancel references no memory.
        if unsafe { self.push(&e) }.is_err() {
            return;
        }
        self.st.cancels_pending += 1;
        let deadline = Instant::now() + Duration::from_millis(100);
        while self.st.sock_poll_armed || self.st.cancels_pending > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || self.enter(1, Some(left)).is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iovs(bufs: &[&[u8]]) -> Vec<libc::iovec> {
        bufs.iter()
            .map(|b| libc::iovec {
                iov_base: b.as_ptr() as *mut libc::c_void,
                iov_len: b.len(),
            })
            .collect()
    }

    /// The bytes `iov[first..]` still names.
    fn left(iov: &[libc::iovec], first: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for v in &iov[first..] {
            // SAFETY: every iovec points into a live test buffer.
            out.extend_from_slice(unsafe {
                std::slice::from_raw_parts(v.iov_base.cast::<u8>(), v.iov_len)
            });
        }
        out
    }

    #[test]
    fn a_short_send_leaves_exactly_the_rest() {
        let (a, b, c) = (b"header", b"", b"frame bytes");
        let all: Vec<u8> = [&a[..], b, c].concat();
        for split in [
            vec![1],
            vec![6],
            vec![7, 3],
            vec![2, 2, 2, 2, 2, 2, 2, 2, 1],
        ] {
            let mut iov = iovs(&[a, b, c]);
            let mut first = 0;
            let mut done = 0;
            for n in split {
                first = advance(&mut iov, first, n);
                done += n;
                assert_eq!(left(&iov, first), all[done..], "after {done}");
            }
        }
        let mut iov = iovs(&[a, b, c]);
        assert_eq!(advance(&mut iov, 0, all.len()), 3);
        assert_eq!(advance(&mut iov, 3, 0), 3);
    }

    #[test]
    fn loopback_and_same_host_peers_are_local() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(is_local_peer(ip("127.0.0.1"), None));
        assert!(is_local_peer(ip("127.3.2.1"), Some(ip("127.0.0.1"))));
        assert!(is_local_peer(ip("::1"), None));
        assert!(is_local_peer(ip("::ffff:127.0.0.1"), None));
        assert!(is_local_peer(ip("10.0.0.5"), Some(ip("10.0.0.5"))));
        assert!(!is_local_peer(ip("10.0.0.6"), Some(ip("10.0.0.5"))));
        assert!(!is_local_peer(ip("2001:db8::1"), Some(ip("2001:db8::2"))));
    }
}
