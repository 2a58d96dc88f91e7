//! `mirrorlog serve`: the RESP key-value server on a principal or a mirror.
//!
//! Clients are served either by event loops (epoll, [`IoMode::Epoll`],
//! see `event_loop`) or by one thread per client ([`IoMode::Threads`]);
//! both bounded by `max_clients`. A client's pipelined commands are parsed
//! together; writes go to group commit in arrival order and their replies
//! are sent, in order, once each reached the connection's commit level, so
//! a pipeline becomes a few batches, not one per command.
//!
//! On the principal a write takes the store's write lock, computes its
//! effects, hands them to group commit and applies them to the store before
//! releasing the lock, so the log order is the store's order. A read that
//! sees a write not yet committed at the reader's level is answered only
//! once it is (the read barrier, `barrier`; `--read-barrier off` answers at
//! once, as Redis does). On the mirror the applier builds the same store from the log,
//! never beyond the commit LSN; writes are refused with `-READONLY`.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mirrorlog_engine::commit::{CommitError, Level, Ticket};
use mirrorlog_engine::log::FsStorage;
use mirrorlog_engine::node::{Mirror, Principal, Status};
use mirrorlog_engine::replication::session::MirroringState;

use crate::kv::{glob_match, Effect, Glob, Keyspace, KvApplier, Shared, Store, Value};
use crate::resp::{Limits, Parser, Reply};

mod barrier;
mod commands;
mod event_loop;
mod status_json;

use commands::{is_monitoring, is_write, queueable, seen_by, waits_for_switch};

pub use status_json::status_json;

use barrier::{Barrier, Seen};

/// How long a command waits for a role change in progress before it is
/// answered `-TRYAGAIN`.
const SWITCH_WAIT_MAX: Duration = Duration::from_secs(5);

pub enum Node {
    Principal(Principal),
    Mirror(Mirror<KvApplier>),
    /// Between roles (a failover): commands get `-TRYAGAIN`; the reason.
    Switching(String),
}

/// How client connections are served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoMode {
    /// `loops` event-loop threads (epoll; the first accepts and deals
    /// connections round-robin); each serves its connections alone, a
    /// commit in flight wakes it through an eventfd; commands that may
    /// block for long (WAIT, MIRROR FAILOVER / FORCE-SERVICE / CHECKPOINT,
    /// anything during a role change) run on a helper thread of their own.
    Epoll { loops: usize },
    /// One thread per connection, which sleeps while its commits are in
    /// flight.
    Threads,
}

/// What a client that took longer than the command timeout is told.
pub(crate) const COMMAND_TIMEOUT_REPLY: &[u8] =
    b"-ERR Protocol error: the command took too long to arrive\r\n";
/// How long accepting pauses when the process is out of descriptors.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);
/// Unsent output beyond which a connection's replies wait to be encoded
/// (and its further commands to be read).
pub(crate) const OUT_HIGH: usize = 1 << 20;

/// Client output buffer limits (Redis's client-output-buffer-limit for
/// normal clients): a client whose unsent replies would exceed `hard`
/// bytes, or stay above `soft` bytes for `soft_time`, is closed. Replies
/// are encoded only while less than 1 MiB is unsent, so a client's output
/// memory is bounded by 1 MiB plus its largest reply, and a reply larger
/// than `hard` closes it before any of it is copied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutputLimits {
    pub hard: usize,
    pub soft: usize,
    pub soft_time: Duration,
}

impl Default for OutputLimits {
    fn default() -> OutputLimits {
        OutputLimits {
            hard: 64 << 20,
            soft: 16 << 20,
            soft_time: Duration::from_secs(60),
        }
    }
}

/// Failed AUTH attempts answered per second per source address (a burst
/// of `AUTH_FAIL_BURST`); beyond that, a wrong guess closes the connection
/// unanswered.
const AUTH_FAIL_RATE: f64 = 10.0;
const AUTH_FAIL_BURST: f64 = 20.0;
/// Source addresses the AUTH limiter remembers (oldest forgotten first).
const AUTH_SOURCES_MAX: usize = 4096;

/// Longest a TLS handshake may take (the command timeout, if shorter).
const TLS_HANDSHAKE_MAX: Duration = Duration::from_secs(10);

/// Most event loops `--io epoll:N` takes.
pub const EVENT_LOOPS_MAX: usize = 64;

impl Default for IoMode {
    fn default() -> IoMode {
        IoMode::Epoll { loops: 1 }
    }
}

impl std::str::FromStr for IoMode {
    type Err = String;
    fn from_str(s: &str) -> Result<IoMode, String> {
        match s {
            "epoll" => Ok(IoMode::Epoll { loops: 1 }),
            "threads" => Ok(IoMode::Threads),
            _ => match s.strip_prefix("epoll:").map(str::parse::<usize>) {
                Some(Ok(n)) if (1..=EVENT_LOOPS_MAX).contains(&n) => Ok(IoMode::Epoll { loops: n }),
                Some(_) => Err(format!(
                    "{s:?}: the number of event loops must be 1 to {EVENT_LOOPS_MAX}"
                )),
                None => Err(format!(
                    "{s:?}: expected epoll, epoll:N (N event loops) or threads"
                )),
            },
        }
    }
}

impl std::fmt::Display for IoMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IoMode::Epoll { loops: 1 } => f.write_str("epoll"),
            IoMode::Epoll { loops } => write!(f, "epoll:{loops}"),
            IoMode::Threads => f.write_str("threads"),
        }
    }
}

#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// How client connections are served.
    pub io: IoMode,
    pub limits: Limits,
    pub max_clients: usize,
    /// Close clients idle this long (None: never).
    pub idle_timeout: Option<Duration>,
    pub password: Option<String>,
    /// Where clients reach the principal (told to clients that write to a
    /// mirror).
    pub principal_hint: Option<String>,
    /// The node's directory (checkpoints go in its `checkpoints/`).
    pub node_dir: Option<std::path::PathBuf>,
    /// Principal: most log bytes kept for an absent or lagging mirror;
    /// beyond it, log below the older checkpoint is deleted anyway and the
    /// mirror is reseeded from a checkpoint when it returns (None: keep
    /// whatever the mirror needs).
    pub retention_max_bytes: Option<u64>,
    /// Client output buffer limits.
    pub output: OutputLimits,
    /// Longest time a client may take to send one command, from its first
    /// byte (or the end of the one before) to its last (None: no bound).
    pub command_timeout: Option<Duration>,
    /// Reads on the principal wait for the commits of the writes they see
    /// (false: they see writes at once, as in Redis).
    pub read_barrier: bool,
    /// TLS for the connections accepted on the TLS listener (see
    /// [`Server::serve_on`]); its handshake must complete within
    /// [`Server::tls_handshake_time`].
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl Default for ServerOptions {
    fn default() -> ServerOptions {
        ServerOptions {
            io: IoMode::default(),
            limits: Limits::default(),
            max_clients: 10_000,
            idle_timeout: None,
            password: None,
            principal_hint: None,
            node_dir: None,
            retention_max_bytes: None,
            output: OutputLimits::default(),
            command_timeout: Some(Duration::from_secs(60)),
            read_barrier: true,
            tls: None,
        }
    }
}

pub struct Server {
    /// Swapped whole on a role change (see [`Server::switch`]).
    node: std::sync::RwLock<Arc<Node>>,
    /// The status before a switch began, shown while it runs.
    last_status: Mutex<Option<Status>>,
    /// Where clients reach the principal when this node is a mirror.
    principal_hint: std::sync::RwLock<Option<String>>,
    store: Shared,
    opts: ServerOptions,
    clients: AtomicUsize,
    stop: AtomicBool,
    /// A commit was lost after its effects reached the store (a truncation
    /// under a running group commit): the store may be ahead of the log in
    /// ways no undo record covers; refuse every command that touches data
    /// (monitoring still answers). A failed append or a poisoned log does
    /// not come here: the effects of every commit not in the log are taken
    /// back from the store (`unlogged`).
    broken: Mutex<Option<String>>,
    /// The undo records of the commits whose effects are in the store but
    /// whose batch is not yet durable in the log, oldest first, each with
    /// its batch's serial (`Ticket::batch`). Appended under the store's
    /// write lock, so in store order, which is also the queue's order.
    /// Only written under the store's write lock.
    unlogged: Mutex<std::collections::VecDeque<(u64, Vec<Undo>)>>,
    /// Commits whose effects are in the store but not yet acknowledged
    /// (see `barrier`).
    barrier: Barrier,
    stats: Stats,
    started: Instant,
    /// A descriptor kept free, so that a process out of descriptors can
    /// still accept the newest connection to refuse it.
    spare_fd: Mutex<Option<std::fs::File>>,
    /// Rate-limited WARN lines (accept errors, output limits).
    warned: Mutex<HashMap<&'static str, (Option<Instant>, u64)>>,
    /// TLS clients being refused (max clients reached) over TLS, so that
    /// they can read why: bounded, as each costs a thread and a handshake.
    refusing_tls: Arc<AtomicUsize>,
    /// Failed AUTH token buckets per source address.
    auth_fails: Mutex<HashMap<std::net::IpAddr, (f64, Instant)>>,
}

#[derive(Default)]
struct Stats {
    connections: AtomicU64,
    commands: AtomicU64,
    rejected: AtomicU64,
    accept_errors: AtomicU64,
    output_limit_closed: AtomicU64,
    command_timeouts: AtomicU64,
    auth_failures: AtomicU64,
    auth_rate_limited: AtomicU64,
    tls_handshake_failures: AtomicU64,
    tls_handshake_timeouts: AtomicU64,
}

/// A command's outcome: a reply now, or one once a commit is acknowledged.
enum Outcome {
    Now(Reply),
    After(Ticket<FsStorage>, Reply),
}

impl Server {
    /// A server over a started node whose store is `store` (for a mirror:
    /// the store its applier fills).
    pub fn new(node: Node, store: Shared, opts: ServerOptions) -> Arc<Server> {
        Arc::new(Server {
            node: std::sync::RwLock::new(Arc::new(node)),
            last_status: Mutex::new(None),
            principal_hint: std::sync::RwLock::new(opts.principal_hint.clone()),
            store,
            opts,
            clients: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            broken: Mutex::new(None),
            unlogged: Mutex::new(std::collections::VecDeque::new()),
            barrier: Barrier::new(),
            stats: Stats::default(),
            started: Instant::now(),
            spare_fd: Mutex::new(std::fs::File::open("/dev/null").ok()),
            warned: Mutex::new(HashMap::new()),
            refusing_tls: Arc::new(AtomicUsize::new(0)),
            auth_fails: Mutex::new(HashMap::new()),
        })
    }

    /// The request limits for a connection: Redis's smaller pre-AUTH
    /// bounds until it has authenticated.
    fn limits_for(&self, conn: &Conn) -> Limits {
        if conn.authed {
            self.opts.limits
        } else {
            self.opts.limits.unauthenticated()
        }
    }

    /// A WARN line at most every 10 s per `what`, with how many were
    /// suppressed since the last.
    fn warn_limited(&self, what: &'static str, line: impl FnOnce() -> String) {
        let mut w = self.warned.lock().expect("warned");
        let now = Instant::now();
        // When `what` was last logged (None: never), and lines suppressed
        // since. (No "long ago" instant: `now - 1 h` panics on a machine up
        // for less than an hour.)
        let e = w.entry(what).or_insert((None, 0));
        if e.0
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(10))
        {
            let suppressed = std::mem::take(&mut e.1);
            e.0 = Some(now);
            let more = if suppressed > 0 {
                format!(" ({suppressed} more like it suppressed)")
            } else {
                String::new()
            };
            tracing::warn!("{}{more}", line());
        } else {
            e.1 += 1;
        }
    }

    /// An accept error (the listener stays open, serving goes on). Out of
    /// descriptors: the spare one is let go to accept the newest
    /// connection and refuse it with an error, and the caller pauses
    /// accepting for a moment (true).
    fn accept_failed(&self, listener: &TcpListener, e: &std::io::Error) -> bool {
        self.stats.accept_errors.fetch_add(1, Ordering::Relaxed);
        let out_of_fds = matches!(
            e.raw_os_error(),
            Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
        );
        if !out_of_fds {
            // ECONNABORTED and the like: that connection is gone.
            return false;
        }
        self.warn_limited("accept", || {
            format!("accepting a client failed: {e}; refusing new clients until descriptors free up (connected: {}, raise `ulimit -n` or lower --max-clients)", self.clients.load(Ordering::Relaxed))
        });
        let mut spare = self.spare_fd.lock().expect("spare");
        spare.take();
        if let Ok((mut s, _)) = listener.accept() {
            self.stats.rejected.fetch_add(1, Ordering::Relaxed);
            let _ = s.set_nonblocking(true);
            let _ = s.write(b"-ERR max number of clients reached (out of file descriptors)\r\n");
        }
        *spare = std::fs::File::open("/dev/null").ok();
        true
    }

    /// Refuses a client because `--max-clients` are connected. A TLS
    /// client would read plaintext as a corrupt record, so it gets the
    /// error over TLS after a short handshake, on a thread of its own;
    /// at most `REFUSING_TLS_MAX` at a time (beyond, a flood of them is
    /// closed at once: the error is a courtesy, not worth a thread each).
    pub(crate) fn refuse_full(&self, mut stream: TcpStream, tls: bool) {
        const REFUSING_TLS_MAX: usize = 4;
        const REFUSAL: &[u8] = b"-ERR max number of clients reached\r\n";
        self.stats.rejected.fetch_add(1, Ordering::Relaxed);
        let Some(config) = self.opts.tls.as_ref().filter(|_| tls) else {
            let _ = stream.write_all(REFUSAL);
            return;
        };
        let busy = self.refusing_tls.clone();
        if busy.fetch_add(1, Ordering::AcqRel) >= REFUSING_TLS_MAX {
            busy.fetch_sub(1, Ordering::AcqRel);
            return;
        }
        let config = config.clone();
        let spawned = std::thread::Builder::new()
            .name("refuse-tls".into())
            .spawn(move || {
                let refuse = || -> std::io::Result<()> {
                    stream.set_nonblocking(false)?;
                    stream.set_read_timeout(Some(Duration::from_millis(100)))?;
                    stream.set_write_timeout(Some(Duration::from_millis(500)))?;
                    let tls =
                        rustls::ServerConnection::new(config).map_err(std::io::Error::other)?;
                    let mut s = crate::tls::TlsStream { tls, sock: stream };
                    let never = AtomicBool::new(false);
                    s.handshake(Instant::now() + Duration::from_secs(1), &never)?;
                    s.write_all(REFUSAL)?;
                    s.tls.send_close_notify();
                    s.flush()?;
                    // Closing with the client's first command unread would
                    // reset the connection, and the reset can reach the
                    // client before the error: end our side, then take
                    // what it sends until it closes (a second at most).
                    s.sock.shutdown(std::net::Shutdown::Write)?;
                    let until = Instant::now() + Duration::from_secs(1);
                    let mut sink = [0u8; 4096];
                    while Instant::now() < until {
                        match s.sock.read(&mut sink) {
                            Ok(0) => break,
                            Ok(_) => {}
                            Err(e)
                                if e.kind() == std::io::ErrorKind::WouldBlock
                                    || e.kind() == std::io::ErrorKind::TimedOut => {}
                            Err(_) => break,
                        }
                    }
                    Ok(())
                };
                let _ = refuse();
                busy.fetch_sub(1, Ordering::AcqRel);
            });
        if spawned.is_err() {
            self.refusing_tls.fetch_sub(1, Ordering::AcqRel);
        }
    }

    fn output_limit_reached(&self, bytes: usize, which: &str) {
        self.stats
            .output_limit_closed
            .fetch_add(1, Ordering::Relaxed);
        let o = self.opts.output;
        self.warn_limited("output", || {
            format!("closed a client for overcoming its {which} output buffer limit ({bytes} bytes unsent; hard {}, soft {} for {} s)", o.hard, o.soft, o.soft_time.as_secs())
        });
    }

    /// How long a TLS client may take to complete its handshake: the
    /// command timeout, at most 10 s (a client stalling mid-handshake
    /// holds a connection no longer than one sending a command slowly).
    pub(crate) fn tls_handshake_time(&self) -> Duration {
        self.opts
            .command_timeout
            .map_or(TLS_HANDSHAKE_MAX, |t| t.min(TLS_HANDSHAKE_MAX))
    }

    /// A TLS handshake failed (`timed_out`: it took too long).
    pub(crate) fn tls_handshake_failed(&self, timed_out: bool, why: &dyn std::fmt::Display) {
        if timed_out {
            self.stats
                .tls_handshake_timeouts
                .fetch_add(1, Ordering::Relaxed);
        } else {
            self.stats
                .tls_handshake_failures
                .fetch_add(1, Ordering::Relaxed);
        }
        self.warn_limited("tls-handshake", || {
            format!("a client's TLS handshake failed: {why}")
        });
    }

    fn command_timed_out(&self) {
        self.stats.command_timeouts.fetch_add(1, Ordering::Relaxed);
        self.warn_limited("command-timeout", || {
            format!(
                "closed a client that took over {} s to send one command",
                self.opts.command_timeout.map_or(0, |t| t.as_secs())
            )
        });
    }

    /// Whether a failed AUTH from `peer` may still be answered: a token
    /// bucket per source address (AUTH_FAIL_RATE per second). A guess
    /// beyond it closes the connection unanswered, so guessing is bounded
    /// however many connections a source opens.
    fn auth_failure_allowed(&self, peer: Option<std::net::IpAddr>) -> bool {
        self.stats.auth_failures.fetch_add(1, Ordering::Relaxed);
        let Some(ip) = peer else {
            return true;
        };
        let mut m = self.auth_fails.lock().expect("auth limiter");
        let now = Instant::now();
        if m.len() >= AUTH_SOURCES_MAX && !m.contains_key(&ip) {
            // Forget the sources whose buckets are full again; if none,
            // the oldest.
            m.retain(|_, (t, at)| {
                *t + now.duration_since(*at).as_secs_f64() * AUTH_FAIL_RATE < AUTH_FAIL_BURST
            });
            if m.len() >= AUTH_SOURCES_MAX {
                if let Some(k) = m.iter().min_by_key(|(_, (_, at))| *at).map(|(k, _)| *k) {
                    m.remove(&k);
                }
            }
        }
        let (tokens, at) = m.entry(ip).or_insert((AUTH_FAIL_BURST, now));
        *tokens =
            (*tokens + now.duration_since(*at).as_secs_f64() * AUTH_FAIL_RATE).min(AUTH_FAIL_BURST);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            self.stats.auth_rate_limited.fetch_add(1, Ordering::Relaxed);
            self.warn_limited("auth", || {
                format!(
                    "too many failed AUTH attempts from {ip}; closing its connections unanswered"
                )
            });
            false
        }
    }

    pub fn status(&self) -> Status {
        let st = match &*self.node() {
            Node::Principal(p) => p.status(),
            Node::Mirror(m) => m.status(),
            Node::Switching(why) => {
                // The node as it was, with the role change's progress as
                // its last error (a failed or retrying change is visible).
                if let Some(mut s) = self.last_status.lock().expect("status").clone() {
                    s.last_error = Some(format!("changing role: {why}"));
                    return s;
                }
                unreachable!("a switch records the status first")
            }
        };
        st
    }

    /// The node now (a role change swaps it).
    /// [`Server::status`] without the commit latency summaries (cheap).
    pub fn status_brief(&self) -> Status {
        match &*self.node() {
            Node::Principal(p) => p.status_brief(),
            _ => self.status(),
        }
    }

    pub fn node(&self) -> Arc<Node> {
        self.node.read().expect("node lock").clone()
    }

    /// During a role change: replaces its reason (a retrying change says
    /// what it waits for). No effect on a node not switching.
    pub fn note_switching(&self, why: &str) {
        let mut n = self.node.write().expect("node lock");
        if matches!(&**n, Node::Switching(_)) {
            *n = Arc::new(Node::Switching(why.to_string()));
        }
    }

    /// Changes role: puts `Node::Switching(why)` in place, waits until no
    /// command holds the old node, and hands it to `change`, whose result
    /// becomes the node (on an error, the node stays `Switching` with the
    /// error as its reason, and the error is returned).
    pub fn switch(
        &self,
        why: &str,
        hint: Option<String>,
        change: impl FnOnce(Node) -> Result<Node, String>,
    ) -> Result<(), String> {
        *self.last_status.lock().expect("status") = Some(self.status());
        let mut old = std::mem::replace(
            &mut *self.node.write().expect("node lock"),
            Arc::new(Node::Switching(why.to_string())),
        );
        let old = loop {
            match Arc::try_unwrap(old) {
                Ok(n) => break n,
                Err(again) => {
                    old = again;
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        };
        // No write can run now; the old node's tickets must not outlive it.
        self.barrier.clear();
        // Batch serials are the old group commit's; a new one counts afresh.
        self.unlogged.lock().expect("unlogged lock").clear();
        match change(old) {
            Ok(new) => {
                *self.principal_hint.write().expect("hint") = hint;
                *self.node.write().expect("node lock") = Arc::new(new);
                Ok(())
            }
            Err(e) => {
                *self.node.write().expect("node lock") =
                    Arc::new(Node::Switching(format!("{why} failed: {e}")));
                Err(e)
            }
        }
    }

    /// Serves clients on `listener` until [`Server::stop`].
    pub fn serve(self: &Arc<Server>, listener: TcpListener) -> std::io::Result<()> {
        self.serve_on(Some(listener), None)
    }

    /// Serves plaintext clients on `plain` and TLS clients on `tls` (which
    /// needs [`ServerOptions::tls`]) until [`Server::stop`].
    pub fn serve_on(
        self: &Arc<Server>,
        plain: Option<TcpListener>,
        tls: Option<TcpListener>,
    ) -> std::io::Result<()> {
        if tls.is_some() && self.opts.tls.is_none() {
            return Err(std::io::Error::other(
                "a TLS listener needs a TLS configuration",
            ));
        }
        let listeners: Vec<(TcpListener, bool)> = plain
            .map(|l| (l, false))
            .into_iter()
            .chain(tls.map(|l| (l, true)))
            .collect();
        if listeners.is_empty() {
            return Err(std::io::Error::other("no client listener to serve"));
        }
        if let IoMode::Epoll { loops } = self.opts.io {
            return event_loop::serve(self, listeners, loops);
        }
        for (l, _) in &listeners {
            l.set_nonblocking(true)?;
        }
        let mut turn = 0usize;
        while !self.stop.load(Ordering::Acquire) {
            // Each listener in turn, so a busy one starves neither.
            turn = turn.wrapping_add(1);
            let mut accepted = None;
            for k in 0..listeners.len() {
                let (listener, is_tls) = &listeners[(turn + k) % listeners.len()];
                match listener.accept() {
                    Ok((s, _)) => {
                        accepted = Some((s, *is_tls));
                        break;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => {
                        // Never the end of serving (see event_loop's accept).
                        if self.accept_failed(listener, &e) {
                            std::thread::sleep(ACCEPT_PAUSE);
                        }
                    }
                }
            }
            let Some((stream, is_tls)) = accepted else {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            };
            if self.clients.load(Ordering::Acquire) >= self.opts.max_clients {
                self.refuse_full(stream, is_tls);
                continue;
            }
            self.clients.fetch_add(1, Ordering::AcqRel);
            self.stats.connections.fetch_add(1, Ordering::Relaxed);
            let me = self.clone();
            std::thread::spawn(move || {
                let _ = me.client(stream, is_tls);
                me.clients.fetch_sub(1, Ordering::AcqRel);
            });
        }
        Ok(())
    }

    /// Stops accepting clients and closes every client connection (within
    /// its 200 ms read timeout, or the event loop's 100 ms wait); `serve`
    /// returns.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
    }

    fn client(&self, s: TcpStream, tls: bool) -> std::io::Result<()> {
        s.set_nonblocking(false)?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_millis(200)))?;
        // A client that reads nothing blocks this thread's writes; for no
        // longer than the soft output limit's time.
        s.set_write_timeout(Some(self.opts.output.soft_time.max(Duration::from_secs(1))))?;
        let peer = s.peer_addr().ok().map(|a| a.ip());
        let Some(config) = self.opts.tls.as_ref().filter(|_| tls) else {
            // Plaintext: the socket itself, no layer between.
            return self.client_io(s, peer);
        };
        let tls = rustls::ServerConnection::new(config.clone()).map_err(std::io::Error::other)?;
        let mut s = crate::tls::TlsStream { tls, sock: s };
        if let Err(e) = s.handshake(Instant::now() + self.tls_handshake_time(), &self.stop) {
            if e.kind() != std::io::ErrorKind::Interrupted {
                self.tls_handshake_failed(e.kind() == std::io::ErrorKind::TimedOut, &e);
            }
            return Err(e);
        }
        self.client_io(s, peer)
    }

    /// Serves one client over `s` (a socket, or TLS over one, whose reads
    /// time out every 200 ms so that stops and deadlines are seen).
    fn client_io<S: Read + Write>(
        &self,
        mut s: S,
        peer: Option<std::net::IpAddr>,
    ) -> std::io::Result<()> {
        let mut conn = self.new_conn(peer);
        let cap = self.query_cap();
        let mut parser = Parser::default();
        let mut buf: Vec<u8> = Vec::new();
        let mut chunk = vec![0u8; 64 << 10];
        let mut out = Vec::new();
        let mut idle_since = Instant::now();
        let mut cmd_since: Option<Instant> = None;
        loop {
            if self.stop.load(Ordering::Acquire) {
                return Ok(());
            }
            if let (Some(t), Some(since)) = (self.opts.command_timeout, cmd_since) {
                if since.elapsed() >= t {
                    self.command_timed_out();
                    let _ = s.write_all(COMMAND_TIMEOUT_REPLY);
                    return Ok(());
                }
            }
            let n = match s.read(&mut chunk) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    if cmd_since.is_none()
                        && self
                            .opts
                            .idle_timeout
                            .is_some_and(|t| idle_since.elapsed() >= t)
                    {
                        return Ok(());
                    }
                    continue;
                }
                Err(e) => return Err(e),
            };
            idle_since = Instant::now();
            buf.extend_from_slice(&chunk[..n]);
            let mut used = 0;
            let mut outcomes = Vec::new();
            let mut quit = false;
            loop {
                let limits = self.limits_for(&conn);
                match parser.parse(&buf[used..], &limits) {
                    Ok((n, Some(args))) => {
                        used += n;
                        cmd_since = None;
                        if args.is_empty() {
                            continue;
                        }
                        self.stats.commands.fetch_add(1, Ordering::Relaxed);
                        if args[0].eq_ignore_ascii_case(b"QUIT") {
                            outcomes.push(Outcome::Now(Reply::ok()));
                            quit = true;
                            break;
                        }
                        if args[0].eq_ignore_ascii_case(b"WAIT") && conn.multi.is_none() {
                            // WAIT counts the writes before it in this
                            // pipeline: resolve them first.
                            for o in outcomes.iter_mut() {
                                if matches!(o, Outcome::After(..)) {
                                    let done = std::mem::replace(o, Outcome::Now(Reply::Nil));
                                    *o = Outcome::Now(self.resolve(done, &mut conn));
                                }
                            }
                        }
                        outcomes.push(self.command(&mut conn, &args));
                        if conn.close {
                            quit = true;
                            break;
                        }
                        // Replies go out as they accumulate: what waits
                        // unsent stays under 1 MiB plus one reply.
                        if (outcomes.len() >= 64 || out.len() >= OUT_HIGH)
                            && !self.send_outcomes(&mut s, &mut outcomes, &mut out, &mut conn)?
                        {
                            return Ok(());
                        }
                    }
                    Ok((n, None)) => {
                        used += n;
                        break;
                    }
                    Err(e) => {
                        outcomes.push(Outcome::Now(Reply::err(format!("ERR {e}"))));
                        quit = true;
                        break;
                    }
                }
            }
            buf.drain(..used);
            if cmd_since.is_none() && parser.mid_command(&buf) {
                cmd_since = Some(Instant::now());
            }
            if buf.len() > cap {
                outcomes.push(Outcome::Now(Reply::err(
                    "ERR Protocol error: client query buffer exceeds the limit",
                )));
                quit = true;
            }
            if !self.send_outcomes(&mut s, &mut outcomes, &mut out, &mut conn)? || quit {
                return Ok(());
            }
        }
    }

    /// Resolves and sends `outcomes` in order through `out`, written
    /// whenever it reaches 1 MiB; false if a reply beyond the hard output
    /// limit closed the connection.
    fn send_outcomes<S: Write>(
        &self,
        s: &mut S,
        outcomes: &mut Vec<Outcome>,
        out: &mut Vec<u8>,
        conn: &mut Conn,
    ) -> std::io::Result<bool> {
        for o in outcomes.drain(..) {
            let r = self.resolve(o, conn);
            let len = r.encoded_len(conn.proto);
            if out.len() + len > self.opts.output.hard {
                self.output_limit_reached(out.len() + len, "hard");
                return Ok(false);
            }
            r.encode_proto(out, conn.proto);
            if out.len() >= OUT_HIGH {
                s.write_all(out)?;
                out.clear();
            }
        }
        s.write_all(out)?;
        out.clear();
        Ok(true)
    }

    /// A new connection's state.
    fn new_conn(&self, peer: Option<std::net::IpAddr>) -> Conn {
        Conn {
            level: None,
            authed: self.opts.password.is_none(),
            multi: None,
            multi_dirty: false,
            proto: 2,
            multi_bytes: 0,
            last_write_end: 0,
            name: None,
            peer,
            close: false,
        }
    }

    /// Most unparsed bytes a client may have buffered.
    fn query_cap(&self) -> usize {
        self.opts.limits.max_bulk + self.opts.limits.max_inline + 1024
    }

    fn resolve(&self, o: Outcome, conn: &mut Conn) -> Reply {
        match o {
            Outcome::Now(r) => r,
            Outcome::After(ticket, r) => {
                let read = ticket.is_follower();
                self.settle(ticket.wait(), r, conn, read)
            }
        }
    }

    /// The reply to a write whose commit ended with `result`, or (`read`)
    /// to a read held by the barrier for the commit it saw.
    fn settle(
        &self,
        result: Result<mirrorlog_engine::commit::Committed, CommitError>,
        r: Reply,
        conn: &mut Conn,
        read: bool,
    ) -> Reply {
        match result {
            Ok(c) => {
                if !read {
                    conn.last_write_end = conn.last_write_end.max(c.lsn_end);
                }
                r
            }
            Err(e) => {
                match &e {
                    CommitError::Lost(_) => {
                        *self.broken.lock().expect("broken lock") = Some(e.to_string());
                    }
                    CommitError::Poisoned(_)
                    | CommitError::Append(_)
                    | CommitError::DiskFull(_)
                    | CommitError::Halted(_) => self.take_back_unlogged(None),
                    _ => {}
                }
                if read {
                    Reply::err(format!(
                        "ERR the read saw a write that was not committed ({e}); the write was taken back: retry the read"
                    ))
                } else {
                    write_refused(&e)
                }
            }
        }
    }

    /// After an append failed (the group commit is halted) or the log was
    /// poisoned: takes the effects of every commit whose batch is not
    /// durable back out of the store, newest first, so that the store is
    /// exactly the log again and reads go on answering from it; forgets
    /// their read-barrier entries; and, unless the log is poisoned, resumes
    /// the group commit so that the next write retries the disk.
    ///
    /// Why this is exact: batches are appended in serial order, each made
    /// durable before the next is taken, and after a failed one every
    /// batch fails until the resume. So when the group commit is halted
    /// the commits not in the log are precisely those of a batch newer
    /// than `hardened_batch`, and none of them can still succeed; the
    /// store write lock keeps new commits from joining until the resume,
    /// after which the queue starts a fresh batch. When it is not halted
    /// (another thread already did this) there is nothing to do: commits
    /// newer than `hardened_batch` may then be in flight and succeed.
    ///
    /// `held`: the store's write lock if the caller already holds it.
    fn take_back_unlogged(&self, held: Option<&mut Store>) {
        let node = self.node();
        let Node::Principal(p) = &*node else {
            return;
        };
        let gc = p.group_commit();
        let mut guard;
        let st = match held {
            Some(st) => st,
            None => {
                guard = self.store.write().expect("store");
                &mut *guard
            }
        };
        let poisoned = gc.log().poisoned().is_some();
        if !gc.halted() && !poisoned {
            return;
        }
        let hardened = gc.hardened_batch();
        let mut unlogged = self.unlogged.lock().expect("unlogged lock");
        let mut undone = 0usize;
        while unlogged.back().is_some_and(|(batch, _)| *batch > hardened) {
            let (_, undo) = unlogged.pop_back().expect("checked");
            Journal {
                effects: Vec::new(),
                undo,
            }
            .roll_back(st);
            undone += 1;
        }
        drop(unlogged);
        st.lsn = st.lsn.min(p.log().written_lsn());
        self.barrier.forget_after(hardened);
        if !poisoned {
            gc.resume();
        }
        if undone > 0 {
            tracing::warn!(
                "took {undone} failed writes back out of the store ({}); {}",
                gc.append_error()
                    .map_or_else(|| "log poisoned".to_string(), |e| e.to_string()),
                if poisoned {
                    "the log is poisoned: writes are refused until restart"
                } else {
                    "the next write retries"
                }
            );
        }
    }

    fn command(&self, conn: &mut Conn, args: &[Vec<u8>]) -> Outcome {
        self.command_opt(conn, args, true)
            .expect("a command that may wait always has an outcome")
    }

    /// Runs a command; with `may_wait` false it returns None, having done
    /// nothing, instead of waiting for a role change in progress.
    fn command_opt(&self, conn: &mut Conn, args: &[Vec<u8>], may_wait: bool) -> Option<Outcome> {
        let name = String::from_utf8_lossy(&args[0]).to_ascii_uppercase();
        if !conn.authed && !matches!(name.as_str(), "AUTH" | "HELLO" | "QUIT") {
            return Some(Outcome::Now(Reply::err("NOAUTH Authentication required.")));
        }
        if !is_monitoring(&name) {
            if let Some(why) = self.broken.lock().expect("broken lock").clone() {
                return Some(Outcome::Now(Reply::err(format!(
                    "ERR this server's log failed ({why}); restart it"
                ))));
            }
        }
        if let Node::Switching(_) = &*self.node() {
            if waits_for_switch(&name) {
                if !may_wait {
                    return None;
                }
                // A role change takes milliseconds: the command waits for
                // it (plain Redis clients do not retry TRYAGAIN), then runs
                // on the node as it is (a write on a new mirror gets
                // READONLY with the principal's address).
                let until = Instant::now() + SWITCH_WAIT_MAX;
                while matches!(&*self.node(), Node::Switching(_)) && Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(1));
                }
                if let Node::Switching(why) = &*self.node() {
                    return Some(Outcome::Now(Reply::err(format!(
                        "TRYAGAIN this node is changing role ({why}); retry shortly"
                    ))));
                }
            }
        }
        Some(self.run(conn, name, args))
    }

    fn run(&self, conn: &mut Conn, name: String, args: &[Vec<u8>]) -> Outcome {
        let now = Outcome::Now;
        if let Some(q) = &mut conn.multi {
            match name.as_str() {
                "EXEC" => {
                    let queued = conn.multi.take().expect("in multi");
                    let dirty = std::mem::take(&mut conn.multi_dirty);
                    conn.multi_bytes = 0;
                    if dirty {
                        return now(Reply::err(
                            "EXECABORT Transaction discarded because of previous errors.",
                        ));
                    }
                    return self.exec_multi(conn, queued);
                }
                "DISCARD" => {
                    conn.multi = None;
                    conn.multi_dirty = false;
                    conn.multi_bytes = 0;
                    return now(Reply::ok());
                }
                "MULTI" => return now(Reply::err("ERR MULTI calls can not be nested")),
                "WATCH" => return now(Reply::err("ERR WATCH inside MULTI is not allowed")),
                _ => {
                    // As Redis: a command refused while queuing gets its
                    // error, the transaction stays open and EXEC discards
                    // it whole; the rest keep answering QUEUED.
                    let refused = if !queueable(&name) {
                        Some(unknown_or_unqueueable(&name, args))
                    } else if let Err(e) = check_arity(&name, args.len()) {
                        Some(e)
                    } else {
                        let bytes: usize = args.iter().map(|a| a.len() + 16).sum();
                        conn.multi_bytes += bytes;
                        (conn.multi_bytes > self.opts.limits.max_bulk).then(|| {
                            "ERR the transaction's queued commands exceed the size limit"
                                .to_string()
                        })
                    };
                    if let Some(e) = refused {
                        conn.multi_dirty = true;
                        return now(Reply::err(e));
                    }
                    q.push(args.to_vec());
                    return now(Reply::Simple("QUEUED".into()));
                }
            }
        }
        if let Err(e) = check_arity(&name, args.len()) {
            return now(Reply::err(e));
        }
        match name.as_str() {
            "PING" => now(match args.get(1) {
                Some(m) => Reply::bulk(m.clone()),
                None => Reply::Simple("PONG".into()),
            }),
            "ECHO" => now(Reply::bulk(args[1].clone())),
            "AUTH" => {
                // AUTH password, or AUTH username password: the one user is
                // Redis's `default` (any other name is a wrong pair).
                let (user, given) = match args.len() {
                    2 => (None, &args[1]),
                    3 => (Some(&args[1]), &args[2]),
                    _ => return now(Reply::err("ERR syntax error")),
                };
                let default_user = user.is_none_or(|u| u.as_slice() == b"default");
                match &self.opts.password {
                    None if user.is_none() => now(Reply::err("ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?")),
                    None if default_user => now(Reply::ok()),
                    Some(p) if default_user && same_secret(p.as_bytes(), given) => {
                        conn.authed = true;
                        now(Reply::ok())
                    }
                    _ => now(self.wrong_pass(conn)),
                }
            }
            "HELLO" => now(self.hello(conn, args)),
            "SELECT" => now(if args[1] == b"0" {
                Reply::ok()
            } else {
                Reply::err("ERR DB index is out of range")
            }),
            "CLIENT" => now(self.client_cmd(conn, args)),
            "COMMAND" => now(commands::command_cmd(args)),
            "CONFIG" => now(config_cmd(args)),
            "MULTI" => {
                conn.multi = Some(Vec::new());
                now(Reply::ok())
            }
            "EXEC" => now(Reply::err("ERR EXEC without MULTI")),
            "DISCARD" => now(Reply::err("ERR DISCARD without MULTI")),
            "INFO" => {
                // `INFO keyspace` is a read of the whole keyspace and is
                // held like DBSIZE. The default and `all` replies are not:
                // monitoring must answer while a commit cannot complete
                // (mirror gone in safety full), so their key count may
                // include writes not yet committed.
                let keyspace = args
                    .get(1)
                    .is_some_and(|s| s.eq_ignore_ascii_case(b"keyspace"));
                let reply = Reply::bulk(self.info(args.get(1)));
                if keyspace {
                    self.held(conn, &Seen::All, reply)
                } else {
                    now(reply)
                }
            }
            "ROLE" => now(self.role()),
            "WAIT" => now(self.wait(conn, args)),
            "MIRROR" => now(self.mirror_cmd(conn, args)),
            _ if is_write(&name) => self.write_one(conn, &name, args),
            _ => {
                let st = self.store.read().expect("store");
                match read_cmd(&st, &name, args) {
                    Some(reply) => self.held(conn, &seen_by(&name, args), reply),
                    None => now(unknown(&name, args)),
                }
            }
        }
    }

    /// Writes a checkpoint of the store and deletes the log below what is
    /// still needed: below the older of the two kept checkpoints, and on a
    /// principal also never beyond what its mirror has hardened (nothing is
    /// deleted while no mirror is attached: it may need that log).
    pub fn checkpoint(&self) -> Result<(u64, std::path::PathBuf), String> {
        let dir = self
            .opts
            .node_dir
            .as_deref()
            .ok_or("this server has no directory")?;
        let (lsn, map) = match &*self.node() {
            Node::Principal(p) => {
                // Under the write lock no write can join the marker's batch
                // after it: the store is exactly the log up to its end.
                let mut st = self.store.write().expect("store");
                let t = p
                    .commit_at(&[&Effect::Noop.encode()], Level::Local)
                    .map_err(|e| e.to_string())?;
                // Hardened here is all a checkpoint's position needs; it
                // acknowledges nothing to anyone (so needs no lease).
                let (_, end) = match t.wait_hardened() {
                    Ok(hardened) => hardened,
                    Err(e) => {
                        // A full disk halted the group commit on the
                        // marker: resume it, or the next write would fail
                        // behind it for nothing.
                        self.take_back_unlogged(Some(&mut st));
                        return Err(e.to_string());
                    }
                };
                (end, st.map.clone())
            }
            Node::Mirror(_) => {
                let st = self.store.read().expect("store");
                (st.lsn, st.map.clone())
            }
            Node::Switching(why) => return Err(format!("role change in progress ({why})")),
        };
        let path = crate::checkpoint::write(dir, lsn, &map)?;
        let oldest = crate::checkpoint::list(dir).into_iter().min().unwrap_or(0);
        let (log, limit) = match &*self.node() {
            Node::Principal(p) => {
                let s = p.status();
                let needed = self.needed_by_mirror(&s);
                let mut limit = oldest.min(needed);
                if let Some(max) = self.opts.retention_max_bytes {
                    let floor = oldest.min(s.written_lsn.saturating_sub(max));
                    if floor > limit {
                        tracing::warn!(
                            "retention bound reached: {} bytes kept for the mirror (bound {max}); deleting the log below LSN {floor}, which the mirror (at {needed}) still needs: it will be reseeded from a checkpoint",
                            s.written_lsn.saturating_sub(needed)
                        );
                        limit = floor;
                    }
                }
                (p.log().clone(), limit)
            }
            Node::Mirror(m) => (m.log().clone(), oldest),
            Node::Switching(why) => return Err(format!("role change in progress ({why})")),
        };
        if limit > log.start_lsn() {
            log.delete_below(limit)
                .map_err(|e| format!("deleting the log below {limit}: {e}"))?;
        }
        Ok((lsn, path))
    }

    /// Where the mirror resumes, as far as this principal knows: what it
    /// last hardened (attached or not); before any mirror was seen since
    /// this start, nothing can be let go.
    fn needed_by_mirror(&self, s: &Status) -> u64 {
        if s.sessions > 0 {
            s.mirror.hardened
        } else {
            0
        }
    }

    /// Principal: log bytes kept for the mirror, and the bound.
    fn retention(&self) -> Option<(u64, Option<u64>)> {
        let node = self.node();
        let Node::Principal(p) = &*node else {
            return None;
        };
        let s = p.status();
        let kept = s.written_lsn
            - self
                .needed_by_mirror(&s)
                .max(p.log().start_lsn())
                .min(s.written_lsn);
        Some((kept, self.opts.retention_max_bytes))
    }

    fn log_start(&self) -> u64 {
        match &*self.node() {
            Node::Principal(p) => p.log().start_lsn(),
            Node::Mirror(m) => m.log().start_lsn(),
            Node::Switching(_) => 0,
        }
    }

    /// HELLO [protover [AUTH username password] [SETNAME name]].
    fn hello(&self, conn: &mut Conn, args: &[Vec<u8>]) -> Reply {
        let proto = match args.get(1).map(|v| v.as_slice()) {
            None => conn.proto,
            Some(b"2") => 2,
            Some(b"3") => 3,
            Some(_) => return Reply::err("NOPROTO unsupported protocol version"),
        };
        let mut i = 2;
        while i < args.len() {
            let opt = String::from_utf8_lossy(&args[i]).to_ascii_uppercase();
            match (opt.as_str(), args.get(i + 1), args.get(i + 2)) {
                ("AUTH", Some(user), Some(pass)) => {
                    if user.as_slice() != b"default" {
                        return self.wrong_pass(conn);
                    }
                    match &self.opts.password {
                        Some(p) if same_secret(p.as_bytes(), pass) => conn.authed = true,
                        Some(_) => return self.wrong_pass(conn),
                        None => conn.authed = true,
                    }
                    i += 3;
                }
                ("SETNAME", Some(name), _) => {
                    conn.name = Some(name.clone());
                    i += 2;
                }
                _ => return Reply::err("ERR syntax error in HELLO option"),
            }
        }
        if !conn.authed {
            return Reply::err("NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time");
        }
        conn.proto = proto;
        Reply::Map(vec![
            (Reply::bulk("server"), Reply::bulk("mirrorlog")),
            (
                Reply::bulk("version"),
                Reply::bulk(env!("CARGO_PKG_VERSION")),
            ),
            (Reply::bulk("proto"), Reply::Int(i64::from(proto))),
            (Reply::bulk("id"), Reply::Int(1)),
            (Reply::bulk("mode"), Reply::bulk("standalone")),
            (Reply::bulk("role"), Reply::bulk(self.redis_role())),
            (Reply::bulk("modules"), Reply::Array(Vec::new())),
        ])
    }

    /// The reply to a wrong password, rate-limited per source address.
    fn wrong_pass(&self, conn: &mut Conn) -> Reply {
        if self.auth_failure_allowed(conn.peer) {
            Reply::err("WRONGPASS invalid username-password pair or user is disabled.")
        } else {
            conn.close = true;
            Reply::err(
                "ERR too many failed AUTH attempts from this address; closing the connection",
            )
        }
    }

    fn redis_role(&self) -> &'static str {
        match &*self.node() {
            Node::Principal(_) => "master",
            Node::Mirror(_) | Node::Switching(_) => "replica",
        }
    }

    fn readonly(&self) -> Reply {
        let hint = self
            .principal_hint
            .read()
            .expect("hint")
            .as_deref()
            .map(|h| format!(" The principal is at {h}."))
            .unwrap_or_default();
        Reply::err(format!(
            "READONLY You can't write against a read only replica.{hint}"
        ))
    }

    fn write_one(&self, conn: &mut Conn, name: &str, args: &[Vec<u8>]) -> Outcome {
        let node = self.node();
        let Node::Principal(p) = &*node else {
            return Outcome::Now(self.readonly());
        };
        let mut st = self.store.write().expect("store");
        let mut journal = Journal::default();
        let reply = write_cmd(&mut st, name, args, &mut journal);
        self.commit(p, conn, &mut st, journal, reply, &seen_by(name, args))
    }

    /// A reply already computed from the store that depends on `seen`: held until the newest commit among them reached
    /// the connection's level (see `barrier`).
    fn held(&self, conn: &Conn, seen: &Seen<'_>, reply: Reply) -> Outcome {
        if !self.opts.read_barrier {
            return Outcome::Now(reply);
        }
        // Only a principal's commits are recorded (and a role change clears
        // them), so the node is looked up only when one is pending.
        let level = || match &*self.node() {
            Node::Principal(p) => Some(conn.level.unwrap_or(p.group_commit().default_level())),
            _ => None,
        };
        match self.barrier.wait_for(seen, level) {
            Some(t) => Outcome::After(t, reply),
            None => Outcome::Now(reply),
        }
    }

    /// Logs the journal's effects (already applied to `st`) in one commit,
    /// under the store lock so the log order is the store's order. A
    /// commit refused outright (too large, no mirror for its level) takes
    /// the effects back out of the store.
    fn commit(
        &self,
        p: &Principal,
        conn: &Conn,
        st: &mut Store,
        journal: Journal,
        reply: Reply,
        seen: &Seen<'_>,
    ) -> Outcome {
        if journal.effects.is_empty() {
            // Nothing to log, but the reply still tells of the keys' state
            // (SET NX refused, DEL of an absent key): a read.
            return self.held(conn, seen, reply);
        }
        let records: Vec<Vec<u8>> = journal.effects.iter().map(Effect::encode).collect();
        let refs: Vec<&[u8]> = records.iter().map(|r| r.as_slice()).collect();
        let level = conn.level.unwrap_or(p.group_commit().default_level());
        match p.commit_at(&refs, level) {
            Ok(t) => {
                st.lsn = st.lsn.max(p.log().written_lsn());
                if self.opts.read_barrier {
                    self.barrier.record(&journal.effects, &t);
                }
                let hardened = p.group_commit().hardened_batch();
                let mut unlogged = self.unlogged.lock().expect("unlogged lock");
                while unlogged
                    .front()
                    .is_some_and(|(batch, _)| *batch <= hardened)
                {
                    unlogged.pop_front();
                }
                unlogged.push_back((t.batch(), journal.undo));
                Outcome::After(t, reply)
            }
            Err(e) => {
                // Nothing was logged: nothing may stay in the store.
                journal.roll_back(st);
                Outcome::Now(write_refused(&e))
            }
        }
    }

    fn exec_multi(&self, conn: &mut Conn, queued: Vec<Vec<Vec<u8>>>) -> Outcome {
        let any_write = queued
            .iter()
            .any(|a| is_write(&String::from_utf8_lossy(&a[0]).to_ascii_uppercase()));
        if any_write {
            let node = self.node();
            let Node::Principal(p) = &*node else {
                return Outcome::Now(Reply::err(
                    "EXECABORT Transaction discarded because of previous errors: READONLY You can't write against a read only replica.",
                ));
            };
            let mut st = self.store.write().expect("store");
            let mut journal = Journal::default();
            let mut replies = Vec::new();
            for a in &queued {
                let n = String::from_utf8_lossy(&a[0]).to_ascii_uppercase();
                let r = if is_write(&n) {
                    write_cmd(&mut st, &n, a, &mut journal)
                } else {
                    read_cmd(&st, &n, a).unwrap_or_else(|| unknown(&n, a))
                };
                replies.push(r);
            }
            let seen = seen_by_all(&queued);
            self.commit(p, conn, &mut st, journal, Reply::Array(replies), &seen)
        } else {
            let st = self.store.read().expect("store");
            let replies = queued
                .iter()
                .map(|a| {
                    let n = String::from_utf8_lossy(&a[0]).to_ascii_uppercase();
                    read_cmd(&st, &n, a).unwrap_or_else(|| unknown(&n, a))
                })
                .collect();
            self.held(conn, &seen_by_all(&queued), Reply::Array(replies))
        }
    }

    fn client_cmd(&self, conn: &mut Conn, args: &[Vec<u8>]) -> Reply {
        let sub = String::from_utf8_lossy(&args[1]).to_ascii_uppercase();
        match (sub.as_str(), args.len()) {
            ("SETNAME", 3) => {
                conn.name = Some(args[2].clone());
                Reply::ok()
            }
            ("GETNAME", 2) => conn.name.clone().map_or(Reply::Nil, Reply::Bulk),
            ("SETINFO", 4) => Reply::ok(),
            ("ID", 2) => Reply::Int(1),
            _ => Reply::err(format!(
                "ERR unknown subcommand or wrong number of arguments for '{}'. Try CLIENT HELP.",
                String::from_utf8_lossy(&args[1])
            )),
        }
    }

    fn mirror_cmd(&self, conn: &mut Conn, args: &[Vec<u8>]) -> Reply {
        let sub = String::from_utf8_lossy(&args[1]).to_ascii_uppercase();
        match (sub.as_str(), args.len()) {
            ("STATUS", 2) => {
                let mut text = self.status().render();
                if let Some((kept, bound)) = self.retention() {
                    text.push_str(&match bound {
                        Some(b) => format!(
                            "retention:   {kept} bytes kept for the mirror, bound {b} ({}%)\n",
                            (kept * 100).checked_div(b).unwrap_or(100)
                        ),
                        None => format!("retention:   {kept} bytes kept for the mirror (no bound)\n"),
                    });
                }
                Reply::bulk(text)
            }
            ("STATUS", 3) if args[2].eq_ignore_ascii_case(b"JSON") => {
                Reply::bulk(status_json(&self.status()))
            }
            ("SAFETY", 3) => {
                let node = self.node();
                let Node::Principal(p) = &*node else {
                    return Reply::err("ERR MIRROR SAFETY is set on the principal");
                };
                match String::from_utf8_lossy(&args[2]).parse::<mirrorlog_engine::node::Safety>() {
                    Ok(s) => {
                        p.set_safety(s);
                        Reply::ok()
                    }
                    Err(e) => Reply::err(format!("ERR {e}")),
                }
            }
            ("SUSPEND" | "RESUME", 2) => {
                let node = self.node();
                let Node::Principal(p) = &*node else {
                    return Reply::err("ERR MIRROR SUSPEND and RESUME are for the principal");
                };
                if sub == "SUSPEND" {
                    p.suspend();
                } else {
                    p.resume();
                }
                Reply::ok()
            }
            ("FAILOVER", 2) => {
                let node = self.node();
                let Node::Principal(p) = &*node else {
                    return Reply::err("ERR MIRROR FAILOVER is run on the principal");
                };
                match p.failover(Duration::from_secs(10)) {
                    Ok(()) => Reply::bulk(format!(
                        "handed over at LSN {}: the mirror is principal of epoch {}; this node becomes its mirror",
                        p.log().written_lsn(),
                        p.epoch() + 1
                    )),
                    Err(e) => Reply::err(format!("ERR failover refused: {e}")),
                }
            }
            ("FORCE-SERVICE", 2) => {
                let node = self.node();
                let Node::Mirror(m) = &*node else {
                    return Reply::err("ERR MIRROR FORCE-SERVICE is run on the mirror");
                };
                match m.force_service(Duration::from_secs(30)) {
                    Ok(p) => Reply::bulk(format!(
                        "principal of epoch {} by forced service; {}",
                        p.epoch,
                        match p.loss_bound_bytes {
                            Some(0) => "the old principal had written nothing this node lacks, as far as it last said".to_string(),
                            Some(b) => format!("up to {b} bytes of log the old principal wrote may be lost"),
                            None => "how much the old principal wrote beyond this node's log is unknown (it never said)".to_string(),
                        }
                    )),
                    Err(e) => Reply::err(format!("ERR forced service refused: {e}")),
                }
            }
            ("CHECKPOINT", 2) => match self.checkpoint() {
                Ok((lsn, path)) => Reply::bulk(format!("checkpoint at LSN {lsn}: {}", path.display())),
                Err(e) => Reply::err(format!("ERR checkpoint failed: {e}")),
            },
            ("LEVEL", 3) => match String::from_utf8_lossy(&args[2]).parse::<Level>() {
                Ok(l) => {
                    conn.level = Some(l);
                    self.barrier.note_level(l);
                    Reply::ok()
                }
                Err(e) => Reply::err(format!("ERR {e}")),
            },
            ("LEVEL", 2) => {
                let l = match (&*self.node(), conn.level) {
                    (_, Some(l)) => l,
                    (Node::Principal(p), None) => p.group_commit().default_level(),
                    (Node::Mirror(_) | Node::Switching(_), None) => Level::Local,
                };
                Reply::bulk(l.name())
            }
            _ => Reply::err("ERR unknown MIRROR subcommand; try MIRROR STATUS [JSON], LEVEL [local|remote-write|remote-flush|remote-apply], SAFETY full|off, SUSPEND, RESUME, FAILOVER, FORCE-SERVICE or CHECKPOINT"),
        }
    }

    /// WAIT numreplicas timeout: how many mirrors received every write
    /// this connection made (0 or 1), waiting up to `timeout` ms (0: no
    /// limit) for `numreplicas` of them.
    fn wait(&self, conn: &Conn, args: &[Vec<u8>]) -> Reply {
        if !matches!(&*self.node(), Node::Principal(_)) {
            return Reply::err("ERR WAIT cannot be used with replica instances. Please also note that since Redis 4.0 if a replica is configured to be writable (which is not the default) writes to replicas are just local and are not propagated.");
        }
        let (Some(want), Some(timeout)) = (int_arg(&args[1]), int_arg(&args[2])) else {
            return Reply::err("ERR value is not an integer or out of range");
        };
        if timeout < 0 {
            return Reply::err("ERR timeout is negative");
        }
        // The node is looked up afresh each time: a WAIT must never hold
        // it, or a role change (which waits for every holder) would wait
        // for the WAIT. After a role change the answer is 0.
        let reached = || match &*self.node() {
            Node::Principal(p) => {
                let s = p.status();
                s.state != MirroringState::Disconnected && s.mirror.received >= conn.last_write_end
            }
            _ => false,
        };
        let deadline =
            (timeout > 0).then(|| Instant::now() + Duration::from_millis(timeout as u64));
        while want > 0 && !reached() {
            if deadline.is_some_and(|d| Instant::now() >= d)
                || self.stop.load(Ordering::Acquire)
                || !matches!(&*self.node(), Node::Principal(_))
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Reply::Int(i64::from(reached()))
    }

    fn role(&self) -> Reply {
        let s = self.status_brief();
        match &*self.node() {
            Node::Principal(p) => {
                // As Redis: [ip, port, offset] per replica. The port is the
                // one the mirror's partner connection comes from (a mirror
                // announces no port of its own).
                let mirrors = match p.mirror_peer() {
                    Some(peer) if s.state != MirroringState::Disconnected => {
                        vec![Reply::Array(vec![
                            Reply::bulk(peer.ip().to_string()),
                            Reply::bulk(peer.port().to_string()),
                            Reply::bulk(s.mirror.received.to_string()),
                        ])]
                    }
                    _ => Vec::new(),
                };
                Reply::Array(vec![
                    Reply::bulk("master"),
                    Reply::Int(s.written_lsn as i64),
                    Reply::Array(mirrors),
                ])
            }
            Node::Switching(why) => Reply::err(format!("TRYAGAIN role change in progress ({why})")),
            Node::Mirror(m) => {
                // The principal's client address if known (what a Redis
                // client would connect to), else its partner address.
                let (host, port) = self
                    .principal_hint
                    .read()
                    .expect("hint")
                    .as_deref()
                    .and_then(|h| h.rsplit_once(':'))
                    .and_then(|(h, p)| Some((h.to_string(), p.parse::<i64>().ok()?)))
                    .unwrap_or_else(|| {
                        let a = m.principal_addr();
                        (a.ip().to_string(), i64::from(a.port()))
                    });
                Reply::Array(vec![
                    Reply::bulk("slave"),
                    Reply::bulk(host),
                    Reply::Int(port),
                    Reply::bulk(if s.state == MirroringState::Disconnected {
                        "connect"
                    } else {
                        "connected"
                    }),
                    Reply::Int(s.mirror.applied as i64),
                ])
            }
        }
    }

    fn info(&self, section: Option<&Vec<u8>>) -> String {
        let want = section.map(|s| String::from_utf8_lossy(s).to_ascii_lowercase());
        let show = |name: &str| {
            want.as_deref()
                .is_none_or(|w| w == "all" || w == "everything" || w == "default" || w == name)
        };
        let s = self.status_brief();
        let mut out = String::new();
        if show("server") {
            out.push_str(&format!(
                "# Server\r\nredis_version:7.0.0\r\nmirrorlog_version:{}\r\nredis_mode:standalone\r\nprocess_id:{}\r\nuptime_in_seconds:{}\r\n\r\n",
                env!("CARGO_PKG_VERSION"),
                std::process::id(),
                self.started.elapsed().as_secs()
            ));
        }
        if show("clients") {
            out.push_str(&format!(
                "# Clients\r\nconnected_clients:{}\r\nmaxclients:{}\r\n\r\n",
                self.clients.load(Ordering::Relaxed),
                self.opts.max_clients
            ));
        }
        if show("persistence") {
            out.push_str(&format!(
                "# Persistence\r\nloading:0\r\naof_enabled:1\r\naof_last_write_status:{}\r\nmirrorlog_log_error:{}\r\nmirrorlog_log_start_lsn:{}\r\nmirrorlog_written_lsn:{}\r\nmirrorlog_hardened_lsn:{}\r\nmirrorlog_checkpoints:{}\r\nmirrorlog_retained_for_mirror_bytes:{}\r\nmirrorlog_retention_max_bytes:{}\r\n\r\n",
                if s.log_error.is_some() { "err" } else { "ok" },
                s.log_error.as_deref().unwrap_or("none").replace(['\r', '\n'], " "),
                self.log_start(),
                s.written_lsn,
                s.hardened_lsn,
                self.opts.node_dir.as_deref().map_or(0, |d| crate::checkpoint::list(d).len()),
                self.retention().map_or(0, |(k, _)| k),
                self.opts.retention_max_bytes.map_or("none".to_string(), |b| b.to_string()),
            ));
        }
        if show("stats") {
            out.push_str(&format!(
                "# Stats\r\ntotal_connections_received:{}\r\ntotal_commands_processed:{}\r\nrejected_connections:{}\r\nclient_output_buffer_limit_disconnections:{}\r\nmirrorlog_accept_errors:{}\r\nmirrorlog_command_timeouts:{}\r\nmirrorlog_auth_failures:{}\r\nmirrorlog_auth_rate_limited:{}\r\nmirrorlog_tls_handshake_failures:{}\r\nmirrorlog_tls_handshake_timeouts:{}\r\nmirrorlog_read_barrier_keys:{}\r\n\r\n",
                self.stats.connections.load(Ordering::Relaxed),
                self.stats.commands.load(Ordering::Relaxed),
                self.stats.rejected.load(Ordering::Relaxed),
                self.stats.output_limit_closed.load(Ordering::Relaxed),
                self.stats.accept_errors.load(Ordering::Relaxed),
                self.stats.command_timeouts.load(Ordering::Relaxed),
                self.stats.auth_failures.load(Ordering::Relaxed),
                self.stats.auth_rate_limited.load(Ordering::Relaxed),
                self.stats.tls_handshake_failures.load(Ordering::Relaxed),
                self.stats.tls_handshake_timeouts.load(Ordering::Relaxed),
                self.barrier.len(),
            ));
        }
        if show("replication") {
            let state = format!("{:?}", s.state).to_lowercase();
            match &*self.node() {
                Node::Principal(_) => out.push_str(&format!(
                    "# Replication\r\nrole:master\r\nconnected_slaves:{}\r\nmaster_repl_offset:{}\r\nmirroring_state:{state}\r\nmirroring_safety:{}\r\nmirroring_epoch:{}\r\nmirroring_exposed:{}\r\nmirroring_witness_exposed:{}\r\nmirror_received_lsn:{}\r\nmirror_hardened_lsn:{}\r\nmirror_applied_lsn:{}\r\ncommit_lsn:{}\r\nsend_queue_bytes:{}\r\ntransport:{}\r\n\r\n",
                    u8::from(s.state != MirroringState::Disconnected),
                    s.written_lsn,
                    match &*self.node() {
                        Node::Principal(p) if p.safety() == mirrorlog_engine::node::Safety::Off => "off",
                        _ => "full",
                    },
                    s.epoch,
                    u8::from(s.exposed),
                    // Told the witness it ran exposed, not yet covered: no
                    // automatic failover until it is.
                    u8::from(s.witness.as_ref().is_some_and(|w| w.exposed)),
                    s.mirror.received,
                    s.mirror.hardened,
                    s.mirror.applied,
                    s.commit_lsn,
                    s.send_queue_bytes,
                    s.transport.map_or("none".to_string(), |t| t.to_string()),
                )),
                Node::Switching(why) => out.push_str(&format!(
                    "# Replication\r\nrole:slave\r\nmirroring_state:switching\r\nmirroring_switch:{why}\r\n\r\n"
                )),
                Node::Mirror(_) => out.push_str(&format!(
                    "# Replication\r\nrole:slave\r\nmaster_link_status:{}\r\nslave_repl_offset:{}\r\nmirroring_state:{state}\r\nmirroring_epoch:{}\r\ncommit_lsn:{}\r\nredo_queue_bytes:{}\r\n\r\n",
                    if s.state == MirroringState::Disconnected { "down" } else { "up" },
                    s.mirror.applied,
                    s.epoch,
                    s.commit_lsn,
                    s.redo_queue_bytes,
                )),
            }
        }
        out
    }
}

struct Conn {
    level: Option<Level>,
    authed: bool,
    multi: Option<Vec<Vec<Vec<u8>>>>,
    /// A command queued in this MULTI was refused: EXEC discards it all.
    multi_dirty: bool,
    /// RESP version the client chose with HELLO (2 or 3).
    proto: u8,
    /// Bytes of the queued commands (bounded like one command's bulk).
    multi_bytes: usize,
    /// End LSN of this connection's last acknowledged write (for WAIT).
    last_write_end: u64,
    name: Option<Vec<u8>>,
    /// The client's address (the AUTH limiter's key).
    peer: Option<std::net::IpAddr>,
    /// Close the connection once this reply is out (too many failed AUTH).
    close: bool,
}

/// The keys a transaction's replies depend on.
fn seen_by_all(queued: &[Vec<Vec<u8>>]) -> Seen<'_> {
    let mut all = Vec::new();
    for a in queued {
        let n = String::from_utf8_lossy(&a[0]).to_ascii_uppercase();
        match seen_by(&n, a) {
            Seen::All => return Seen::All,
            Seen::Keys(k) => all.extend(k),
        }
    }
    Seen::Keys(all)
}

/// Raises the soft limit on open descriptors towards the hard limit, to
/// what `max_clients` needs (as Redis does at start); returns the soft
/// limit in force and, when it is short of that, says so.
pub fn raise_fd_limit(max_clients: usize) -> Result<u64, String> {
    let want = max_clients as u64 + 128;
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid rlimit struct for the call to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return Err(std::io::Error::last_os_error().to_string());
    }
    if r.rlim_cur < want {
        let raised = libc::rlimit {
            rlim_cur: want.min(r.rlim_max),
            rlim_max: r.rlim_max,
        };
        // SAFETY: as above; lowering nothing, at most up to the hard limit.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            r.rlim_cur = raised.rlim_cur;
        }
    }
    if r.rlim_cur < want {
        return Err(format!(
            "the open-file limit is {} (hard limit {}), below the {want} that --max-clients {max_clients} needs; beyond it new clients are refused (raise `ulimit -n` or lower --max-clients)",
            r.rlim_cur, r.rlim_max
        ));
    }
    Ok(r.rlim_cur)
}

/// Compares a password in time that does not depend on where it differs
/// (it still depends on the length, which a client learns nothing useful
/// from).
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn unknown_or_unqueueable(name: &str, args: &[Vec<u8>]) -> String {
    if commands::lookup(name).is_some() {
        format!(
            "ERR {} is not allowed inside MULTI",
            name.to_ascii_lowercase()
        )
    } else {
        match unknown(name, args) {
            Reply::Error(e) => e,
            _ => unreachable!("unknown() is an error"),
        }
    }
}

fn check_arity(name: &str, n: usize) -> Result<(), String> {
    let Some(c) = commands::lookup(name) else {
        return Ok(()); // unknown: reported when run
    };
    if c.arity_ok(n) {
        Ok(())
    } else {
        Err(format!(
            "ERR wrong number of arguments for '{}' command",
            name.to_ascii_lowercase()
        ))
    }
}

/// CONFIG GET for the parameters clients and redis-benchmark probe (the
/// values describe mirrorlog truthfully: no RDB snapshots, the log is
/// always on); CONFIG SET is refused.
fn config_cmd(args: &[Vec<u8>]) -> Reply {
    let sub = String::from_utf8_lossy(&args[1]).to_ascii_uppercase();
    match (sub.as_str(), args.len()) {
        ("GET", 3) => {
            let known = [
                ("save", ""),
                ("appendonly", "yes"),
                ("appendfsync", "always"),
                ("databases", "1"),
                ("maxmemory", "0"),
            ];
            let pat = &args[2];
            Reply::Array(
                known
                    .iter()
                    .filter(|(k, _)| glob_match(&pat.to_ascii_lowercase(), k.as_bytes()))
                    .flat_map(|(k, v)| [Reply::bulk(*k), Reply::bulk(*v)])
                    .collect(),
            )
        }
        ("SET", _) => {
            Reply::err("ERR CONFIG SET is not supported by mirrorlog; use mirrorlog serve flags")
        }
        _ => Reply::err("ERR unknown CONFIG subcommand; only CONFIG GET is supported"),
    }
}

fn unknown(name: &str, args: &[Vec<u8>]) -> Reply {
    let rest: Vec<String> = args[1..]
        .iter()
        .take(3)
        .map(|a| format!("'{}'", String::from_utf8_lossy(a)))
        .collect();
    Reply::err(format!(
        "ERR unknown command '{}', with args beginning with: {}",
        name.to_ascii_lowercase(),
        rest.join(" ")
    ))
}

fn int_arg(b: &[u8]) -> Option<i64> {
    std::str::from_utf8(b).ok()?.parse().ok()
}

/// A read command over the store; None if `name` is not one.
fn read_cmd(st: &Store, name: &str, args: &[Vec<u8>]) -> Option<Reply> {
    let get = |k: &[u8]| st.map.get(k).cloned().map_or(Reply::Nil, Reply::Value);
    Some(match name {
        "GET" => get(&args[1]),
        "MGET" => Reply::Array(args[1..].iter().map(|k| get(k)).collect()),
        "EXISTS" => Reply::Int(args[1..].iter().filter(|k| st.map.contains_key(k)).count() as i64),
        "STRLEN" => Reply::Int(st.map.get(&args[1]).map_or(0, |v| v.len()) as i64),
        "DBSIZE" => Reply::Int(st.map.len() as i64),
        "KEYS" => {
            let glob = Glob::new(&args[1]);
            let mut keys: Vec<&Vec<u8>> = st.map.keys().filter(|k| glob.matches(k)).collect();
            keys.sort();
            Reply::Array(keys.into_iter().map(|k| Reply::Bulk(k.clone())).collect())
        }
        "SCAN" => scan(st, args),
        "PING" => Reply::Simple("PONG".into()),
        _ => return None,
    })
}

/// SCAN cursor [MATCH pattern] [COUNT n]: walks the keyspace in its hash
/// order (see `keyspace`), O(log n + COUNT) per call; every key present
/// for the whole walk is returned, whatever is written meanwhile.
fn scan(st: &Store, args: &[Vec<u8>]) -> Reply {
    let Some(cursor) = std::str::from_utf8(&args[1])
        .ok()
        .and_then(|c| c.parse::<u64>().ok())
    else {
        return Reply::err("ERR invalid cursor");
    };
    let mut pattern: Option<Glob> = None;
    let mut count = 10usize;
    let mut i = 2;
    while i < args.len() {
        let opt = String::from_utf8_lossy(&args[i]).to_ascii_uppercase();
        match (opt.as_str(), args.get(i + 1)) {
            ("MATCH", Some(p)) => pattern = Some(Glob::new(p)),
            ("COUNT", Some(c)) => match int_arg(c) {
                Some(c) if c >= 1 => count = c as usize,
                Some(_) => return Reply::err("ERR syntax error"),
                None => return Reply::err("ERR value is not an integer or out of range"),
            },
            _ => return Reply::err("ERR syntax error"),
        }
        i += 2;
    }
    let mut page = Vec::new();
    let next = st.map.scan(cursor, count, |k, _| {
        if pattern.as_ref().is_none_or(|p| p.matches(k)) {
            page.push(Reply::Bulk(k.to_vec()));
        }
    });
    Reply::Array(vec![Reply::bulk(next.to_string()), Reply::Array(page)])
}

/// The reply to a write whose commit failed with `e`. Disk problems get
/// Redis's `MISCONF` prefix (what Redis answers when it cannot persist),
/// naming the disk and what to do; reads keep working in every case.
fn write_refused(e: &CommitError) -> Reply {
    Reply::err(match e {
        CommitError::DiskFull(why) => format!(
            "MISCONF the write was not committed: the disk of this server's log is full ({why}). \
             Free space on the log's file system: writes resume by themselves; reads keep working"
        ),
        CommitError::Halted(why) => format!(
            "MISCONF the write was not committed: an earlier write failed ({why}) and this one \
             was queued behind it; retry it (reads keep working)"
        ),
        CommitError::Append(why) => format!(
            "MISCONF the write was not committed: this server could not write its log ({why}); \
             the next write retries (reads keep working)"
        ),
        CommitError::Poisoned(why) => format!(
            "MISCONF the write was not committed (if it was in flight it may or may not survive a \
             restart): this server's log failed to sync to disk ({why}), and a failed sync is never \
             retried. Writes are refused until this server is restarted (fix the disk first); reads \
             keep working"
        ),
        e => format!("ERR the write was not committed: {e}"),
    })
}

/// Effects applied to the store but not yet committed, and how to take
/// them back if the commit is refused (a batch too large, say).
#[derive(Default)]
struct Journal {
    effects: Vec<Effect>,
    undo: Vec<Undo>,
}

enum Undo {
    /// The key's value before (None: absent).
    Key(Vec<u8>, Option<Value>),
    /// The whole map before a FLUSHALL.
    All(Keyspace),
}

impl Journal {
    /// Takes every effect back, newest first.
    fn roll_back(self, st: &mut Store) {
        for u in self.undo.into_iter().rev() {
            match u {
                Undo::Key(k, Some(v)) => {
                    st.map.insert(k, v);
                }
                Undo::Key(k, None) => {
                    st.map.remove(&k);
                }
                Undo::All(m) => st.map = m,
            }
        }
    }
}

/// A write command: computes its effects, applies them to `st` (so later
/// commands of a MULTI see them) and records them, with their undo, in
/// `journal`.
fn write_cmd(st: &mut Store, name: &str, args: &[Vec<u8>], journal: &mut Journal) -> Reply {
    let mut put = |st: &mut Store, e: Effect| {
        journal.undo.push(match &e {
            Effect::Set(k, _) | Effect::Del(k) => Undo::Key(k.clone(), st.map.get(k).cloned()),
            Effect::FlushAll => Undo::All(st.map.clone()),
            Effect::Noop => return,
        });
        st.apply(&e);
        journal.effects.push(e);
    };
    match name {
        "SET" => {
            let (mut nx, mut xx, mut get) = (false, false, false);
            for o in &args[3..] {
                match String::from_utf8_lossy(o).to_ascii_uppercase().as_str() {
                    "NX" => nx = true,
                    "XX" => xx = true,
                    "GET" => get = true,
                    "EX" | "PX" | "EXAT" | "PXAT" | "KEEPTTL" => {
                        return Reply::err("ERR expiry is not supported by mirrorlog")
                    }
                    _ => return Reply::err("ERR syntax error"),
                }
            }
            if nx && xx {
                return Reply::err("ERR syntax error");
            }
            let old = st.map.get(&args[1]).cloned();
            let ok = !(nx && old.is_some() || xx && old.is_none());
            if ok {
                put(
                    st,
                    Effect::Set(args[1].clone(), Value::from(args[2].clone())),
                );
            }
            match (get, ok) {
                (true, _) => old.map_or(Reply::Nil, Reply::Value),
                (false, true) => Reply::ok(),
                (false, false) => Reply::Nil,
            }
        }
        "SETNX" => {
            if st.map.contains_key(&args[1]) {
                Reply::Int(0)
            } else {
                put(
                    st,
                    Effect::Set(args[1].clone(), Value::from(args[2].clone())),
                );
                Reply::Int(1)
            }
        }
        "GETSET" => {
            let old = st.map.get(&args[1]).cloned();
            put(
                st,
                Effect::Set(args[1].clone(), Value::from(args[2].clone())),
            );
            old.map_or(Reply::Nil, Reply::Value)
        }
        "MSET" => {
            if args.len().is_multiple_of(2) {
                return Reply::err("ERR wrong number of arguments for 'mset' command");
            }
            for kv in args[1..].chunks(2) {
                put(st, Effect::Set(kv[0].clone(), Value::from(kv[1].clone())));
            }
            Reply::ok()
        }
        "DEL" | "UNLINK" => {
            let mut n = 0;
            for k in &args[1..] {
                if st.map.contains_key(k) {
                    put(st, Effect::Del(k.clone()));
                    n += 1;
                }
            }
            Reply::Int(n)
        }
        "GETDEL" => match st.map.get(&args[1]).cloned() {
            Some(v) => {
                put(st, Effect::Del(args[1].clone()));
                Reply::Value(v)
            }
            None => Reply::Nil,
        },
        "INCR" | "DECR" | "INCRBY" | "DECRBY" => {
            let by = match name {
                "INCR" => Some(1),
                "DECR" => Some(-1),
                "INCRBY" => int_arg(&args[2]),
                _ => int_arg(&args[2]).and_then(|v| v.checked_neg()),
            };
            let Some(by) = by else {
                return Reply::err("ERR value is not an integer or out of range");
            };
            let cur = match st.map.get(&args[1]) {
                None => 0,
                Some(v) => match int_arg(v) {
                    Some(i) => i,
                    None => return Reply::err("ERR value is not an integer or out of range"),
                },
            };
            let Some(next) = cur.checked_add(by) else {
                return Reply::err("ERR increment or decrement would overflow");
            };
            put(
                st,
                Effect::Set(args[1].clone(), Value::from(next.to_string())),
            );
            Reply::Int(next)
        }
        "APPEND" => {
            let old = st.map.get(&args[1]).map_or(&[][..], |v| &v[..]);
            let mut v = Vec::with_capacity(old.len() + args[2].len());
            v.extend_from_slice(old);
            v.extend_from_slice(&args[2]);
            let n = v.len();
            put(st, Effect::Set(args[1].clone(), Value::from(v)));
            Reply::Int(n as i64)
        }
        "FLUSHALL" | "FLUSHDB" => {
            put(st, Effect::FlushAll);
            Reply::ok()
        }
        _ => unknown(name, args),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_by_content_and_length() {
        assert!(same_secret(b"hunter22", b"hunter22"));
        assert!(!same_secret(b"hunter22", b"hunter23"));
        assert!(!same_secret(b"hunter22", b"hunter2"));
        assert!(!same_secret(b"", b"x"));
        assert!(same_secret(b"", b""));
    }

    #[test]
    fn io_modes_parse_and_print_back() {
        for (text, mode) in [
            ("epoll", IoMode::Epoll { loops: 1 }),
            ("epoll:2", IoMode::Epoll { loops: 2 }),
            ("epoll:64", IoMode::Epoll { loops: 64 }),
            ("threads", IoMode::Threads),
        ] {
            assert_eq!(text.parse::<IoMode>(), Ok(mode));
            assert_eq!(mode.to_string(), text);
        }
        assert_eq!(IoMode::default(), IoMode::Epoll { loops: 1 });
        for bad in ["epoll:0", "epoll:65", "epoll:x", "epoll:", "poll", ""] {
            let e = bad.parse::<IoMode>().unwrap_err();
            assert!(e.contains(bad), "{bad}: {e}");
        }
    }
}
