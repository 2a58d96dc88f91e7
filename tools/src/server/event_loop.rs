//! The event-loop client server ([`IoMode::Epoll`](super::IoMode)): one
//! thread, or a few, serve every connection with epoll. With several loops
//! the first accepts and deals connections round-robin (a channel and the
//! receiving loop's eventfd); a connection then stays on its loop.
//!
//! Each connection keeps its input, the outcomes of the commands it sent
//! (in order) and its output. A write's commit in flight is a [`Ticket`]
//! polled as a future: the loop's waker signals an eventfd in the epoll
//! set, and on waking the loop polls the connections whose first pending
//! reply is a commit. Replies are encoded strictly in order, so a pipeline
//! keeps its order; a connection stops being read while it has much output
//! unsent or many replies pending (back-pressure).
//!
//! A TLS connection (accepted on the TLS listener) carries a rustls
//! [`ServerConnection`]: what the socket gives goes through `read_tls` and
//! `process_new_packets`, its plaintext into the same input buffer; output
//! is encoded into the same `out` and handed to rustls (which holds at
//! most 64 KiB of records) as the socket takes it, so the output limits
//! and the command timeout bound a TLS client as a plaintext one. The
//! handshake never blocks the loop, and one not done within
//! `Server::tls_handshake_time` closes the connection. Plaintext
//! connections take the same path as before (no layer, no extra copy).
//!
//! Commands that may block for long (WAIT, MIRROR FAILOVER, FORCE-SERVICE
//! and CHECKPOINT, and any command that would wait for a role change in
//! progress) run on a helper thread once every earlier reply of their
//! connection is resolved; the connection's state goes with them and comes
//! back with the reply through a channel and the eventfd, and nothing more
//! is read from it meanwhile.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use mirrorlog_engine::wake::Wakeup;
use rustls::ServerConnection;

use super::{Conn, Outcome, Server};
use crate::resp::{Parser, Reply};

const LISTENER: u64 = 0;
const WAKE: u64 = 1;
/// The TLS-only listener (connection ids start after it).
const TLS_LISTENER: u64 = 2;
/// Longest sleep in `epoll_wait`: how soon a stop or an idle timeout is
/// noticed.
const TICK_MS: i32 = 100;
use super::OUT_HIGH;
/// Unresolved replies beyond which a connection's further commands wait.
const PENDING_MAX: usize = 1024;
/// Bytes read from one connection per readiness event (fairness).
const READ_CHUNK: usize = 64 << 10;

struct Epoll(OwnedFd);

impl Epoll {
    fn new() -> io::Result<Epoll> {
        // SAFETY: plain syscall; the result is checked.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor we own.
        Ok(Epoll(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    fn ctl(&self, op: i32, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event { events, u64: token };
        // SAFETY: valid descriptors and a valid event struct.
        if unsafe { libc::epoll_ctl(self.0.as_raw_fd(), op, fd, &mut ev) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn wait(&self, evs: &mut [libc::epoll_event], timeout_ms: i32) -> io::Result<usize> {
        // SAFETY: `evs` is valid for `evs.len()` events.
        let n = unsafe {
            libc::epoll_wait(
                self.0.as_raw_fd(),
                evs.as_mut_ptr(),
                evs.len() as i32,
                timeout_ms,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok(0);
            }
            return Err(e);
        }
        Ok(n as usize)
    }
}

/// The loop's waker: a commit's progress signals the eventfd (only while
/// the loop is armed, i.e. about to sleep; it re-polls before sleeping).
struct LoopWake(Wakeup);

impl Wake for LoopWake {
    fn wake(self: Arc<Self>) {
        self.0.signal();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.signal();
    }
}

struct Client {
    sock: TcpStream,
    /// TLS over `sock` (None: plaintext).
    tls: Option<Box<ServerConnection>>,
    /// A TLS handshake not done by then closes the connection.
    handshake_until: Option<Instant>,
    /// None while a helper thread runs a command for this connection.
    conn: Option<Conn>,
    buf: Vec<u8>,
    /// Takes commands from `buf` as they arrive (keeps a partial one).
    parser: Parser,
    /// Since when the command now arriving has been arriving (None:
    /// between commands): bounded by `command_timeout`.
    cmd_since: Option<Instant>,
    /// Outcomes not yet encoded, in order, with the protocol to encode in.
    pending: VecDeque<(Outcome, u8)>,
    out: Vec<u8>,
    out_pos: usize,
    /// A command to run on a helper thread once `pending` is empty.
    blocked: Option<Vec<Vec<u8>>>,
    /// QUIT or a protocol error: close once the replies are out.
    closing: bool,
    /// The client closed its side: close once what it sent is answered.
    eof: bool,
    /// The last parse found no complete command left in `buf`.
    exhausted: bool,
    idle_since: Instant,
    /// Since when unsent output has been above the soft limit.
    soft_since: Option<Instant>,
    /// Events registered in epoll (None: not registered).
    events: Option<u32>,
}

impl Client {
    fn unsent(&self) -> usize {
        self.out.len() - self.out_pos
    }

    /// Everything encoded reached the socket (nor does rustls hold any
    /// record back).
    fn all_sent(&self) -> bool {
        self.unsent() == 0 && !self.tls.as_ref().is_some_and(|t| t.wants_write())
    }
}

/// A command that can block its thread for long inside `Server::command`
/// (a role change in progress is caught by `command_opt`).
fn blocks(conn: &Conn, args: &[Vec<u8>]) -> bool {
    if conn.multi.is_some() {
        // Queued or refused at once (EXEC waits for nothing but commits).
        return false;
    }
    if args[0].eq_ignore_ascii_case(b"WAIT") {
        return true;
    }
    args[0].eq_ignore_ascii_case(b"MIRROR")
        && args.get(1).is_some_and(|s| {
            s.eq_ignore_ascii_case(b"FAILOVER")
                || s.eq_ignore_ascii_case(b"FORCE-SERVICE")
                || s.eq_ignore_ascii_case(b"CHECKPOINT")
        })
}

/// Another loop: where to deal it a connection (with whether it came
/// through the TLS listener), and its waker.
type Peer = (Sender<(TcpStream, bool)>, Arc<LoopWake>);

struct Loop<'a> {
    server: &'a Arc<Server>,
    ep: Epoll,
    wake: Arc<LoopWake>,
    waker: Waker,
    clients: HashMap<u64, Client>,
    next_id: u64,
    /// Connections whose first pending outcome is a commit in flight.
    waiting: HashSet<u64>,
    done_tx: Sender<(u64, Conn, Reply)>,
    done_rx: Receiver<(u64, Conn, Reply)>,
    chunk: Vec<u8>,
    /// Connections another loop accepted for this one (and whether they
    /// came through the TLS listener).
    inbox: Receiver<(TcpStream, bool)>,
    /// The other loops (the accepting loop deals connections round-robin).
    peers: Vec<Peer>,
    next_peer: usize,
    /// Set when any loop ends, so the others end too.
    quit: &'a AtomicBool,
    /// Accepting is paused until then (out of descriptors).
    accept_paused: Option<Instant>,
}

/// Serves clients on `listeners` (each with whether it is the TLS one)
/// until [`Server::stop`], with `loops` event loops: the first accepts and
/// deals connections round-robin to all of them (itself included); each
/// then serves its connections alone.
pub(super) fn serve(
    server: &Arc<Server>,
    listeners: Vec<(TcpListener, bool)>,
    loops: usize,
) -> io::Result<()> {
    for (l, _) in &listeners {
        l.set_nonblocking(true)?;
    }
    let listening: Vec<(u64, &TcpListener)> = listeners
        .iter()
        .map(|(l, tls)| (if *tls { TLS_LISTENER } else { LISTENER }, l))
        .collect();
    let quit = AtomicBool::new(false);
    let mut peers = Vec::new();
    let mut others = Vec::new();
    for _ in 1..loops.max(1) {
        let (tx, rx) = channel();
        let wake = Arc::new(LoopWake(Wakeup::new()?));
        peers.push((tx, wake.clone()));
        others.push((rx, wake));
    }
    std::thread::scope(|s| {
        let quit = &quit;
        let mut handles = Vec::new();
        let mut spawn_error = None;
        for (i, (rx, wake)) in others.into_iter().enumerate() {
            let h = std::thread::Builder::new()
                .name(format!("mirrorlog-loop-{}", i + 1))
                .spawn_scoped(s, move || {
                    let r = run_loop(server, &[], wake, rx, Vec::new(), quit);
                    quit.store(true, Ordering::Release);
                    r
                });
            match h {
                Ok(h) => handles.push(h),
                Err(e) => {
                    spawn_error = Some(e);
                    break;
                }
            }
        }
        let r = match spawn_error {
            Some(e) => Err(e),
            None => {
                let (_, inbox) = channel();
                Wakeup::new().and_then(|w| {
                    run_loop(
                        server,
                        &listening,
                        Arc::new(LoopWake(w)),
                        inbox,
                        peers,
                        quit,
                    )
                })
            }
        };
        quit.store(true, Ordering::Release);
        let mut first = r;
        for h in handles {
            let r = h
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("an event loop panicked")));
            if first.is_ok() {
                first = r;
            }
        }
        first
    })
}

fn run_loop(
    server: &Arc<Server>,
    listeners: &[(u64, &TcpListener)],
    wake: Arc<LoopWake>,
    inbox: Receiver<(TcpStream, bool)>,
    peers: Vec<Peer>,
    quit: &AtomicBool,
) -> io::Result<()> {
    let ep = Epoll::new()?;
    for &(token, l) in listeners {
        ep.ctl(
            libc::EPOLL_CTL_ADD,
            l.as_raw_fd(),
            libc::EPOLLIN as u32,
            token,
        )?;
    }
    ep.ctl(libc::EPOLL_CTL_ADD, wake.0.fd(), libc::EPOLLIN as u32, WAKE)?;
    let (done_tx, done_rx) = channel();
    let mut l = Loop {
        server,
        ep,
        waker: Waker::from(wake.clone()),
        wake,
        clients: HashMap::new(),
        next_id: TLS_LISTENER + 1,
        waiting: HashSet::new(),
        done_tx,
        done_rx,
        chunk: vec![0u8; READ_CHUNK],
        inbox,
        peers,
        next_peer: 0,
        quit,
        accept_paused: None,
    };
    let r = l.run(listeners);
    let ids: Vec<u64> = l.clients.keys().copied().collect();
    for id in ids {
        l.close(id);
    }
    // Connections dealt to this loop that it never took on were counted.
    while l.inbox.try_recv().is_ok() {
        server.clients.fetch_sub(1, Ordering::AcqRel);
    }
    r
}

impl Loop<'_> {
    fn run(&mut self, listeners: &[(u64, &TcpListener)]) -> io::Result<()> {
        let mut evs = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
        let mut last_tick = Instant::now();
        loop {
            if self.server.stop.load(Ordering::Acquire) || self.quit.load(Ordering::Acquire) {
                return Ok(());
            }
            let n = self.ep.wait(&mut evs, TICK_MS)?;
            for ev in &evs[..n] {
                let (token, events) = (ev.u64, ev.events);
                match token {
                    LISTENER | TLS_LISTENER => {
                        if let Some(&(_, l)) = listeners.iter().find(|(t, _)| *t == token) {
                            if self.accept(l, token == TLS_LISTENER) {
                                self.pause_accepting(listeners);
                            }
                        }
                    }
                    WAKE => self.wake.0.drain(),
                    id => self.on_event(id, events),
                }
            }
            // Armed before re-checking: a wake-up from here on makes the
            // eventfd readable, so nothing is missed while asleep.
            self.wake.0.arm();
            while let Ok((stream, tls)) = self.inbox.try_recv() {
                self.add(stream, tls);
            }
            while let Ok((id, conn, reply)) = self.done_rx.try_recv() {
                self.back_from_helper(id, conn, reply);
            }
            let waiting: Vec<u64> = self.waiting.iter().copied().collect();
            for id in waiting {
                self.drive(id);
            }
            if last_tick.elapsed() >= Duration::from_millis(TICK_MS as u64) {
                last_tick = Instant::now();
                self.close_idle();
            }
            if let Some(until) = self.accept_paused {
                if Instant::now() >= until {
                    self.accept_paused = None;
                    for &(token, l) in listeners {
                        self.ep.ctl(
                            libc::EPOLL_CTL_ADD,
                            l.as_raw_fd(),
                            libc::EPOLLIN as u32,
                            token,
                        )?;
                    }
                }
            }
        }
    }

    /// Accepting pauses briefly: the listeners leave the epoll set (or
    /// level-triggered readiness would spin) until `accept_paused`.
    fn pause_accepting(&mut self, listeners: &[(u64, &TcpListener)]) {
        if self.accept_paused.is_some() {
            return;
        }
        for &(token, l) in listeners {
            let _ = self.ep.ctl(libc::EPOLL_CTL_DEL, l.as_raw_fd(), 0, token);
        }
        self.accept_paused = Some(Instant::now() + super::ACCEPT_PAUSE);
    }

    /// Accepts what is waiting (`tls`: on the TLS listener). An accept
    /// error never ends serving: out of descriptors, the newest connection
    /// is refused with an error (through the spare descriptor) and the
    /// caller pauses accepting (true); other errors are a connection gone
    /// before it was taken.
    fn accept(&mut self, listener: &TcpListener, tls: bool) -> bool {
        loop {
            let (stream, _) = match listener.accept() {
                Ok(x) => x,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    if self.server.accept_failed(listener, &e) {
                        return true;
                    }
                    continue;
                }
            };
            let server = self.server;
            if server.clients.load(Ordering::Acquire) >= server.opts.max_clients {
                server.refuse_full(stream, tls);
                continue;
            }
            if stream.set_nonblocking(true).is_err() || stream.set_nodelay(true).is_err() {
                continue;
            }
            server.clients.fetch_add(1, Ordering::AcqRel);
            server.stats.connections.fetch_add(1, Ordering::Relaxed);
            // Deal it: this loop, then each other loop in turn.
            let turn = self.next_peer % (self.peers.len() + 1);
            self.next_peer = self.next_peer.wrapping_add(1);
            if turn == 0 {
                self.add(stream, tls);
                continue;
            }
            let (tx, wake) = &self.peers[turn - 1];
            match tx.send((stream, tls)) {
                Ok(()) => wake.0.signal(),
                Err(_) => {
                    // That loop has ended (the server is stopping).
                    server.clients.fetch_sub(1, Ordering::AcqRel);
                }
            }
        }
    }

    /// Takes on a connection accepted (and counted) for this loop (`tls`:
    /// from the TLS listener; its handshake starts with its first bytes).
    fn add(&mut self, stream: TcpStream, tls: bool) {
        let server = self.server;
        let tls = match server.opts.tls.as_ref().filter(|_| tls) {
            None => None,
            Some(config) => match ServerConnection::new(config.clone()) {
                Ok(t) => Some(Box::new(t)),
                Err(e) => {
                    server.tls_handshake_failed(false, &e);
                    server.clients.fetch_sub(1, Ordering::AcqRel);
                    return;
                }
            },
        };
        let id = self.next_id;
        self.next_id += 1;
        let peer = stream.peer_addr().ok().map(|a| a.ip());
        let c = Client {
            handshake_until: tls
                .as_ref()
                .map(|_| Instant::now() + server.tls_handshake_time()),
            tls,
            sock: stream,
            conn: Some(server.new_conn(peer)),
            buf: Vec::new(),
            parser: Parser::default(),
            cmd_since: None,
            pending: VecDeque::new(),
            out: Vec::new(),
            out_pos: 0,
            blocked: None,
            closing: false,
            eof: false,
            exhausted: true,
            idle_since: Instant::now(),
            soft_since: None,
            events: None,
        };
        self.clients.insert(id, c);
        self.update_interest(id);
    }

    fn on_event(&mut self, id: u64, events: u32) {
        let Some(c) = self.clients.get_mut(&id) else {
            return;
        };
        if c.conn.is_none() {
            // Left the epoll set for a helper after this event was taken.
            return;
        }
        if events & (libc::EPOLLERR | libc::EPOLLHUP) as u32 != 0 {
            self.close(id);
            return;
        }
        if events & libc::EPOLLIN as u32 != 0 && c.tls.is_some() {
            match read_tls(c, &mut self.chunk) {
                Ok(()) => {}
                Err(e) => {
                    if c.tls.as_ref().is_some_and(|t| t.is_handshaking()) {
                        self.server.tls_handshake_failed(false, &e);
                    }
                    // The alert rustls queued, if any, goes out first.
                    let _ = flush(c);
                    self.close(id);
                    return;
                }
            }
        } else if events & libc::EPOLLIN as u32 != 0 {
            match c.sock.read(&mut self.chunk) {
                Ok(0) => c.eof = true,
                Ok(n) => {
                    c.buf.extend_from_slice(&self.chunk[..n]);
                    c.exhausted = false;
                    c.idle_since = Instant::now();
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) => {}
                Err(_) => {
                    self.close(id);
                    return;
                }
            }
        }
        self.drive(id);
    }

    /// Moves a connection on as far as it goes without blocking: resolves
    /// its pending replies in order, runs more of its commands, hands a
    /// blocking one to a helper, writes what it can, closes it when done.
    fn drive(&mut self, id: u64) {
        let server = self.server;
        let waker = self.waker.clone();
        let mut cx = Context::from_waker(&waker);
        loop {
            let Some(c) = self.clients.get_mut(&id) else {
                self.waiting.remove(&id);
                return;
            };
            // Resolve what is ready, in order; encode no further while
            // much is unsent (what waits is references to stored values,
            // not copies), and never beyond the hard output limit.
            let mut over = None;
            let mut broken = false;
            while !c.pending.is_empty() {
                if c.unsent() >= OUT_HIGH {
                    // Out first; encode more only once the socket took it.
                    if flush(c).is_err() {
                        broken = true;
                        break;
                    }
                    if c.unsent() >= OUT_HIGH {
                        break;
                    }
                    continue;
                }
                let (o, _) = c.pending.front_mut().expect("not empty");
                let result = match o {
                    Outcome::Now(_) => None,
                    Outcome::After(ticket, _) => match Pin::new(ticket).poll(&mut cx) {
                        Poll::Ready(r) => Some(r),
                        Poll::Pending => break,
                    },
                };
                let (o, proto) = c.pending.pop_front().expect("front");
                let reply = match (o, result) {
                    (Outcome::Now(r), _) => r,
                    (Outcome::After(t, r), Some(result)) => {
                        let conn = c.conn.as_mut().expect("pending replies keep the conn");
                        server.settle(result, r, conn, t.is_follower())
                    }
                    (Outcome::After(..), None) => unreachable!("polled ready"),
                };
                let len = reply.encoded_len(proto);
                if c.unsent() + len > server.opts.output.hard {
                    over = Some(c.unsent() + len);
                    break;
                }
                reply.encode_proto(&mut c.out, proto);
            }
            if broken {
                self.close(id);
                return;
            }
            if let Some(bytes) = over {
                server.output_limit_reached(bytes, "hard");
                self.close(id);
                return;
            }
            if !c.pending.is_empty() || c.conn.is_none() {
                break;
            }
            if let Some(args) = c.blocked.take() {
                let conn = c.conn.take().expect("checked");
                // What is already encoded goes out before the helper runs.
                if flush(c).is_err() {
                    self.close(id);
                    return;
                }
                self.run_on_helper(id, conn, args);
                return;
            }
            if c.closing || c.eof && c.exhausted {
                break;
            }
            // Out first, so a pause for unsent output ends as soon as the
            // socket takes it.
            if flush(c).is_err() {
                self.close(id);
                return;
            }
            if !self.parse(id) {
                break;
            }
        }
        let Some(c) = self.clients.get_mut(&id) else {
            return;
        };
        if flush(c).is_err() {
            self.close(id);
            return;
        }
        // The output limits count what the client has been answered and
        // not read: unsent bytes and the replies waiting to be encoded
        // (held as references, so they cost little memory, but Redis
        // counts them, and a client that never reads must not hold a
        // connection for ever). Only summed while output is backing up.
        let owed = if c.unsent() == 0 {
            0
        } else {
            c.unsent()
                + c.pending
                    .iter()
                    .map(|(o, p)| match o {
                        Outcome::Now(r) | Outcome::After(_, r) => r.encoded_len(*p),
                    })
                    .sum::<usize>()
        };
        if owed > server.opts.output.hard {
            server.output_limit_reached(owed, "hard");
            self.close(id);
            return;
        }
        if owed > server.opts.output.soft {
            c.soft_since.get_or_insert_with(Instant::now);
        } else {
            c.soft_since = None;
        }
        let done = c.pending.is_empty()
            && c.conn.is_some()
            && c.blocked.is_none()
            && (c.closing || c.eof && c.exhausted);
        if done && c.all_sent() {
            if let Some(t) = c.tls.as_deref_mut() {
                // A TLS client is told the end (close_notify) first.
                if !t.is_handshaking() {
                    t.send_close_notify();
                }
                let _ = flush(c);
            }
            self.close(id);
            return;
        }
        if matches!(c.pending.front(), Some((Outcome::After(..), _))) {
            self.waiting.insert(id);
        } else {
            self.waiting.remove(&id);
        }
        self.update_interest(id);
    }

    /// Runs the connection's buffered commands until one must wait
    /// (blocking, back-pressure, QUIT, an error) or none is left; whether
    /// anything was consumed.
    fn parse(&mut self, id: u64) -> bool {
        let server = self.server;
        let c = self.clients.get_mut(&id).expect("caller checked");
        let conn = c.conn.as_mut().expect("caller checked");
        let mut used = 0;
        let mut progressed = false;
        while !c.closing
            && c.blocked.is_none()
            && c.out.len() - c.out_pos < OUT_HIGH
            && c.pending.len() < PENDING_MAX
        {
            let limits = server.limits_for(conn);
            match c.parser.parse(&c.buf[used..], &limits) {
                Ok((n, Some(args))) => {
                    used += n;
                    progressed = true;
                    c.cmd_since = None;
                    if args.is_empty() {
                        continue;
                    }
                    server.stats.commands.fetch_add(1, Ordering::Relaxed);
                    if args[0].eq_ignore_ascii_case(b"QUIT") {
                        c.pending.push_back((Outcome::Now(Reply::ok()), conn.proto));
                        c.closing = true;
                        break;
                    }
                    if blocks(conn, &args) {
                        c.blocked = Some(args);
                        break;
                    }
                    match server.command_opt(conn, &args, false) {
                        Some(o) => {
                            c.pending.push_back((o, conn.proto));
                            if conn.close {
                                c.closing = true;
                                break;
                            }
                        }
                        None => {
                            c.blocked = Some(args);
                            break;
                        }
                    }
                }
                Ok((n, None)) => {
                    used += n;
                    c.exhausted = true;
                    break;
                }
                Err(e) => {
                    c.pending
                        .push_back((Outcome::Now(Reply::err(format!("ERR {e}"))), conn.proto));
                    c.closing = true;
                    progressed = true;
                    break;
                }
            }
        }
        c.buf.drain(..used);
        if c.cmd_since.is_none() && c.parser.mid_command(&c.buf) {
            c.cmd_since = Some(Instant::now());
        }
        if c.exhausted && !c.closing && c.buf.len() > server.query_cap() {
            c.pending.push_back((
                Outcome::Now(Reply::err(
                    "ERR Protocol error: client query buffer exceeds the limit",
                )),
                conn.proto,
            ));
            c.closing = true;
            progressed = true;
        }
        progressed
    }

    fn run_on_helper(&mut self, id: u64, mut conn: Conn, args: Vec<Vec<u8>>) {
        // Out of the epoll set meanwhile (it reads nothing; a hang-up is
        // seen when it is back).
        self.set_events(id, None);
        self.waiting.remove(&id);
        let server = self.server.clone();
        let tx = self.done_tx.clone();
        let wake = self.wake.clone();
        let spawned = std::thread::Builder::new()
            .name("mirrorlog-client-helper".into())
            .spawn(move || {
                let o = server.command(&mut conn, &args);
                let reply = server.resolve(o, &mut conn);
                if tx.send((id, conn, reply)).is_ok() {
                    wake.0.force();
                }
            });
        if spawned.is_err() {
            self.close(id);
        }
    }

    fn back_from_helper(&mut self, id: u64, conn: Conn, reply: Reply) {
        let Some(c) = self.clients.get_mut(&id) else {
            return;
        };
        c.pending.push_back((Outcome::Now(reply), conn.proto));
        c.conn = Some(conn);
        self.drive(id);
    }

    /// Closes the connections idle beyond the idle timeout, those that
    /// took longer than the command timeout to send one command
    /// (slowloris), and those whose output stayed above the soft limit
    /// for its time (a client that does not read its replies).
    fn close_idle(&mut self) {
        let opts = &self.server.opts;
        let mut slow = Vec::new();
        let mut soft = Vec::new();
        let mut idle = Vec::new();
        let mut handshakes = Vec::new();
        let now = Instant::now();
        for (&id, c) in &self.clients {
            if c.conn.is_none() {
                continue;
            }
            if c.handshake_until.is_some_and(|u| now >= u)
                && c.tls.as_ref().is_some_and(|t| t.is_handshaking())
            {
                handshakes.push(id);
            } else if opts
                .command_timeout
                .is_some_and(|t| c.cmd_since.is_some_and(|s| s.elapsed() >= t))
            {
                slow.push(id);
            } else if c
                .soft_since
                .is_some_and(|s| s.elapsed() >= opts.output.soft_time)
            {
                soft.push(id);
            } else if opts.idle_timeout.is_some_and(|t| {
                c.pending.is_empty()
                    && c.blocked.is_none()
                    && c.unsent() == 0
                    && c.cmd_since.is_none()
                    && c.idle_since.elapsed() >= t
            }) {
                idle.push(id);
            }
        }
        for id in handshakes {
            self.server
                .tls_handshake_failed(true, &"not done within the handshake deadline");
            self.close(id);
        }
        for id in slow {
            if let Some(c) = self.clients.get_mut(&id) {
                match c.tls.as_deref_mut() {
                    None => {
                        let _ = c.sock.write(super::COMMAND_TIMEOUT_REPLY);
                    }
                    Some(t) => {
                        let _ = t.writer().write(super::COMMAND_TIMEOUT_REPLY);
                        let _ = t.write_tls(&mut c.sock);
                    }
                }
            }
            self.server.command_timed_out();
            self.close(id);
        }
        for id in soft {
            let unsent = self.clients.get(&id).map_or(0, |c| c.unsent());
            self.server.output_limit_reached(unsent, "soft");
            self.close(id);
        }
        for id in idle {
            self.close(id);
        }
    }

    /// The events the connection wants now, registered.
    fn update_interest(&mut self, id: u64) {
        let Some(c) = self.clients.get(&id) else {
            return;
        };
        if c.conn.is_none() {
            return self.set_events(id, None);
        }
        let read = c.conn.is_some()
            && c.blocked.is_none()
            && !c.closing
            && !c.eof
            && c.unsent() < OUT_HIGH
            && c.pending.len() < PENDING_MAX;
        let mut ev = 0u32;
        if read {
            ev |= libc::EPOLLIN as u32;
        }
        if !c.all_sent() {
            ev |= libc::EPOLLOUT as u32;
        }
        self.set_events(id, Some(ev));
    }

    fn set_events(&mut self, id: u64, want: Option<u32>) {
        let Some(c) = self.clients.get_mut(&id) else {
            return;
        };
        if c.events == want {
            return;
        }
        let fd = c.sock.as_raw_fd();
        let r = match (c.events, want) {
            (None, Some(ev)) => self.ep.ctl(libc::EPOLL_CTL_ADD, fd, ev, id),
            (Some(_), Some(ev)) => self.ep.ctl(libc::EPOLL_CTL_MOD, fd, ev, id),
            (Some(_), None) => self.ep.ctl(libc::EPOLL_CTL_DEL, fd, 0, id),
            (None, None) => Ok(()),
        };
        c.events = want;
        if r.is_err() {
            self.close(id);
        }
    }

    fn close(&mut self, id: u64) {
        if let Some(c) = self.clients.remove(&id) {
            if c.events.is_some() {
                let _ = self.ep.ctl(libc::EPOLL_CTL_DEL, c.sock.as_raw_fd(), 0, id);
            }
            self.server.clients.fetch_sub(1, Ordering::AcqRel);
        }
        self.waiting.remove(&id);
    }
}

/// Takes what the socket has for a TLS connection: records into rustls,
/// their plaintext into `buf` (all of it: rustls must not sit on
/// plaintext that no readiness event would bring back).
fn read_tls(c: &mut Client, chunk: &mut [u8]) -> io::Result<()> {
    let t = c.tls.as_deref_mut().expect("a TLS connection");
    match t.read_tls(&mut c.sock) {
        Ok(0) => c.eof = true,
        Ok(_) => {
            c.idle_since = Instant::now();
            t.process_new_packets()
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        }
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
            ) => {}
        Err(e) => return Err(e),
    }
    loop {
        match t.reader().read(chunk) {
            // close_notify.
            Ok(0) => {
                c.eof = true;
                break;
            }
            Ok(n) => {
                c.buf.extend_from_slice(&chunk[..n]);
                c.exhausted = false;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            // Closed without close_notify: the end all the same.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                c.eof = true;
                break;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Writes what the socket takes now (for TLS: what rustls has queued, then
/// more of `out` through it).
fn flush(c: &mut Client) -> io::Result<()> {
    if let Some(t) = c.tls.as_deref_mut() {
        'socket: loop {
            while t.wants_write() {
                match t.write_tls(&mut c.sock) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break 'socket,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            if c.out_pos == c.out.len() {
                break;
            }
            match t.writer().write(&c.out[c.out_pos..])? {
                0 => break,
                n => c.out_pos += n,
            }
        }
        compact(c);
        return Ok(());
    }
    while c.out_pos < c.out.len() {
        match c.sock.write(&c.out[c.out_pos..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => c.out_pos += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    compact(c);
    Ok(())
}

/// Drops what was sent from `out` (all of it, or a large head).
fn compact(c: &mut Client) {
    if c.out_pos == c.out.len() {
        c.out.clear();
        c.out_pos = 0;
    } else if c.out_pos > OUT_HIGH {
        c.out.drain(..c.out_pos);
        c.out_pos = 0;
    }
}
