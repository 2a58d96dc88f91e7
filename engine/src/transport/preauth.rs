//! Connections that have not authenticated yet ("pre-auth"), on the
//! principal's partner port and on the witness port.
//!
//! Anyone who can reach a port can open connections to it and then say
//! nothing. Before this gate, 16 such connections (renewed as they timed
//! out) kept a restarting mirror out of its principal for as long as they
//! ran, and 64 kept every partner out of the witness. The gate bounds what
//! unauthenticated peers can hold, so that they can never keep the real
//! partner out:
//!
//! * every pre-auth connection is in one table, at most
//!   [`PreAuthLimits::per_source_max`] per source address and
//!   [`PreAuthLimits::total_max`] in all (so the table, and the per-source
//!   counts in it, are bounded too);
//! * a connection that would go over a limit is *admitted* and an older
//!   one is closed instead: the oldest of those that have not yet sent
//!   anything, or, if every one has, the oldest. Refusing the newest would
//!   let a flood that got there first keep a partner arriving later out
//!   for ever; closing the oldest means a flood can only delay a partner
//!   by as long as its handshake takes to send its first message;
//! * the caller runs each handshake on its own thread with a short
//!   deadline ([`preauth_deadline`]), so one silent connection never delays
//!   another one's handshake;
//! * failures are counted ([`PreAuthGate::rejected`], shown in the node's
//!   status) and logged through a [`WarnLimiter`]: one line per source per
//!   period and a periodic summary of what was suppressed, never one line
//!   per connection (a flood once wrote 39,025 lines in 30 s).

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::node::Logger;
use crate::replication::wire::Message;
use crate::transport::{Conn, TransportError, TransportPath};
use crate::wake::Wakeup;

/// The longest a connection may take to authenticate: a real partner needs
/// a few round trips; anything slower is a broken or hostile peer.
pub const PREAUTH_DEADLINE_MAX: Duration = Duration::from_secs(2);

/// At most this many pre-auth connections from one source address: a
/// partner, its replacement after a restart, a few witness clients.
pub const PER_SOURCE_MAX: usize = 8;

/// At most this many pre-auth connections in all.
pub const TOTAL_MAX: usize = 64;

const _: () = assert!(PER_SOURCE_MAX >= 1 && PER_SOURCE_MAX <= TOTAL_MAX);

/// How often a source's pre-auth failure is logged, and how often a
/// summary of the suppressed ones is.
pub const WARN_PERIOD: Duration = Duration::from_secs(10);

/// The handshake deadline for a partner timeout: min(timeout, 2 s).
pub fn preauth_deadline(partner_timeout: Duration) -> Duration {
    partner_timeout.min(PREAUTH_DEADLINE_MAX)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PreAuthLimits {
    pub per_source_max: usize,
    pub total_max: usize,
}

impl Default for PreAuthLimits {
    fn default() -> PreAuthLimits {
        PreAuthLimits {
            per_source_max: PER_SOURCE_MAX,
            total_max: TOTAL_MAX,
        }
    }
}

/// The table of pre-auth connections of one listening port.
pub struct PreAuthGate {
    limits: PreAuthLimits,
    table: Mutex<Table>,
    rejected: AtomicU64,
    warnings: WarnLimiter,
}

struct Table {
    next_id: u64,
    /// By admission order: the first entry is the oldest.
    live: BTreeMap<u64, Entry>,
    /// Live entries per source (no zero counts: at most `live.len()` keys).
    per_source: HashMap<IpAddr, usize>,
}

struct Entry {
    source: IpAddr,
    /// A second handle on the connection's socket, to shut it down.
    socket: TcpStream,
    state: Arc<SlotState>,
}

#[derive(Default)]
struct SlotState {
    /// The peer sent a whole message (or, for the witness, its nonce).
    spoke: AtomicBool,
    /// Closed by the gate to make room.
    evicted: AtomicBool,
}

/// One admitted pre-auth connection. Dropped without [`PreAuthSlot::passed`]
/// it counts as a rejection; either way it leaves the table.
pub struct PreAuthSlot {
    gate: Arc<PreAuthGate>,
    id: u64,
    peer: SocketAddr,
    state: Arc<SlotState>,
    passed: bool,
}

impl PreAuthGate {
    /// `what` prefixes the log lines (`mirrorlog[principal]`, say).
    pub fn new(limits: PreAuthLimits, what: &str) -> Arc<PreAuthGate> {
        assert!(limits.per_source_max >= 1 && limits.per_source_max <= limits.total_max);
        Arc::new(PreAuthGate {
            limits,
            table: Mutex::new(Table {
                next_id: 0,
                live: BTreeMap::new(),
                per_source: HashMap::new(),
            }),
            rejected: AtomicU64::new(0),
            warnings: WarnLimiter::new(what, WARN_PERIOD),
        })
    }

    /// Takes `stream` (just accepted from `peer`) into the table, closing
    /// older pre-auth connections if a limit is passed.
    pub fn admit(
        self: &Arc<Self>,
        stream: &TcpStream,
        peer: SocketAddr,
    ) -> std::io::Result<PreAuthSlot> {
        let socket = stream.try_clone()?;
        let state = Arc::new(SlotState::default());
        let source = peer.ip();
        let mut t = self.table.lock().expect("pre-auth table");
        let id = t.next_id;
        t.next_id += 1;
        t.live.insert(
            id,
            Entry {
                source,
                socket,
                state: state.clone(),
            },
        );
        *t.per_source.entry(source).or_insert(0) += 1;
        while t.per_source.get(&source).copied().unwrap_or(0) > self.limits.per_source_max {
            let Some(victim) = t.victim(id, Some(source)) else {
                break;
            };
            t.evict(victim);
        }
        while t.live.len() > self.limits.total_max {
            let Some(victim) = t.victim(id, None) else {
                break;
            };
            t.evict(victim);
        }
        debug_assert!(t.live.len() <= self.limits.total_max);
        debug_assert_eq!(t.per_source.values().sum::<usize>(), t.live.len());
        drop(t);
        Ok(PreAuthSlot {
            gate: self.clone(),
            id,
            peer,
            state,
            passed: false,
        })
    }

    /// Pre-auth connections closed without authenticating so far (failed
    /// or timed-out handshakes, and those closed to make room).
    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    /// Pre-auth connections now in the table.
    pub fn pending(&self) -> usize {
        self.table.lock().expect("pre-auth table").live.len()
    }

    /// Logs a pre-auth failure of `source`, rate-limited.
    pub fn warn(&self, source: IpAddr, logger: &Logger, line: impl FnOnce() -> String) {
        self.warnings.warn(source, logger, line);
    }

    /// Logs the summary of suppressed lines when one is due (call often).
    pub fn summarize(&self, logger: &Logger) {
        self.warnings.summarize(logger);
    }

    fn leave(&self, id: u64) {
        let mut t = self.table.lock().expect("pre-auth table");
        if let Some(e) = t.live.remove(&id) {
            t.uncount(e.source);
        }
    }
}

impl Table {
    /// The entry to close to make room (never `newest`): the oldest of
    /// those that have not spoken, else the oldest; among `source`'s
    /// entries only, if given.
    fn victim(&self, newest: u64, source: Option<IpAddr>) -> Option<u64> {
        let mut oldest = None;
        for (&id, e) in &self.live {
            if id == newest || source.is_some_and(|s| s != e.source) {
                continue;
            }
            oldest.get_or_insert(id);
            if !e.state.spoke.load(Ordering::Acquire) && !readable(&e.socket) {
                return Some(id);
            }
        }
        oldest
    }

    fn evict(&mut self, id: u64) {
        let e = self.live.remove(&id).expect("victim is live");
        self.uncount(e.source);
        e.state.evicted.store(true, Ordering::Release);
        // Wakes the connection's handshake thread, whatever it waits in
        // (poll, io_uring poll, read): its next receive fails. Counted as
        // a rejection when that thread drops its slot.
        let _ = e.socket.shutdown(Shutdown::Both);
    }

    fn uncount(&mut self, source: IpAddr) {
        match self.per_source.get_mut(&source) {
            Some(n) if *n > 1 => *n -= 1,
            Some(_) => {
                self.per_source.remove(&source);
            }
            None => unreachable!("a live entry's source is counted"),
        }
    }
}

/// Whether the peer has sent bytes not read yet (it spoke, though its
/// handshake thread has not read them).
fn readable(socket: &TcpStream) -> bool {
    let mut p = libc::pollfd {
        fd: socket.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the length given; the fd is owned by
    // `socket`, open for the duration of the call; timeout 0 never blocks.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n == 1 && p.revents & libc::POLLIN != 0
}

impl PreAuthSlot {
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// The peer sent something well-formed: close others before this one.
    pub fn spoke(&self) {
        self.state.spoke.store(true, Ordering::Release);
    }

    /// The gate closed this connection to make room for newer ones.
    pub fn evicted(&self) -> bool {
        self.state.evicted.load(Ordering::Acquire)
    }

    /// The peer authenticated: the connection leaves the table and is no
    /// longer the gate's business.
    pub fn passed(mut self) {
        self.passed = true;
    }

    /// Why a failed handshake failed, for the log: `error` or, if the gate
    /// closed the connection, that.
    pub fn failure(&self, error: &str) -> String {
        if self.evicted() {
            format!(
                "closed to make room for newer connections ({} pre-auth connections from one address or {} in all): {error}",
                self.gate.limits.per_source_max, self.gate.limits.total_max
            )
        } else {
            error.to_string()
        }
    }
}

impl Drop for PreAuthSlot {
    fn drop(&mut self) {
        self.gate.leave(self.id);
        if !self.passed {
            self.gate.rejected.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A partner connection during its handshake: tells the slot when the
/// peer has sent a whole message.
pub struct Watched<'a> {
    pub conn: &'a mut dyn Conn,
    pub slot: &'a PreAuthSlot,
}

impl Conn for Watched<'_> {
    fn send(&mut self, msg: &Message) -> Result<(), TransportError> {
        self.conn.send(msg)
    }

    fn send_ships(
        &mut self,
        commit_lsn: u64,
        prev_lsn: u64,
        frames: &[&[u8]],
    ) -> Result<(), TransportError> {
        self.conn.send_ships(commit_lsn, prev_lsn, frames)
    }

    fn recv(
        &mut self,
        timeout: Option<Duration>,
        wake: Option<&Wakeup>,
    ) -> Result<Option<Message>, TransportError> {
        let r = self.conn.recv(timeout, wake);
        if matches!(r, Ok(Some(_))) {
            self.slot.spoke();
        }
        r
    }

    fn path(&self) -> TransportPath {
        self.conn.path()
    }

    fn bytes_sent(&self) -> u64 {
        self.conn.bytes_sent()
    }

    fn set_send_timeout(&mut self, timeout: Option<Duration>) {
        self.conn.set_send_timeout(timeout)
    }

    fn set_recv_limit(&mut self, max_message_bytes: usize) {
        self.conn.set_recv_limit(max_message_bytes)
    }

    fn set_seal(&mut self, keys: crate::replication::seal::SealKeys) {
        self.conn.set_seal(keys)
    }

    fn channel_binding(&self) -> Option<[u8; crate::transport::tls::BINDING_BYTES]> {
        self.conn.channel_binding()
    }

    fn zero_copy(&self) -> bool {
        self.conn.zero_copy()
    }
}

/// Rate-limited warnings about what peers did: at most one line per source
/// per period (a table of at most [`WARN_SOURCES_MAX`] sources; sources
/// beyond it are only counted), and at most one summary per period saying
/// how many lines were left out.
pub struct WarnLimiter {
    what: String,
    period: Duration,
    inner: Mutex<Limiter>,
}

/// Sources remembered by a [`WarnLimiter`].
pub const WARN_SOURCES_MAX: usize = 256;

struct Limiter {
    last: HashMap<IpAddr, Instant>,
    suppressed: u64,
    summarized: Instant,
}

impl WarnLimiter {
    pub fn new(what: &str, period: Duration) -> WarnLimiter {
        WarnLimiter {
            what: what.to_string(),
            period,
            inner: Mutex::new(Limiter {
                last: HashMap::new(),
                suppressed: 0,
                summarized: Instant::now(),
            }),
        }
    }

    /// Logs `line()` unless `source` had a line within the period.
    pub fn warn(&self, source: IpAddr, logger: &Logger, line: impl FnOnce() -> String) {
        let now = Instant::now();
        let mut l = self.inner.lock().expect("warn limiter");
        let recent = l
            .last
            .get(&source)
            .is_some_and(|&t| now.duration_since(t) < self.period);
        if recent {
            l.suppressed += 1;
            return;
        }
        if l.last.len() >= WARN_SOURCES_MAX && !l.last.contains_key(&source) {
            let period = self.period;
            l.last.retain(|_, t| now.duration_since(*t) < period);
            if l.last.len() >= WARN_SOURCES_MAX {
                l.suppressed += 1;
                return;
            }
        }
        l.last.insert(source, now);
        drop(l);
        logger.line(&line());
    }

    /// Logs how many lines were suppressed, at most once per period.
    pub fn summarize(&self, logger: &Logger) {
        let now = Instant::now();
        let mut l = self.inner.lock().expect("warn limiter");
        if l.suppressed == 0 || now.duration_since(l.summarized) < self.period {
            return;
        }
        let (k, since) = (l.suppressed, now.duration_since(l.summarized));
        l.suppressed = 0;
        l.summarized = now;
        drop(l);
        logger.line(&format!(
            "{}: suppressed {k} similar messages about connections refused before authentication in the last {:.0} s",
            self.what,
            since.as_secs_f64()
        ));
    }
}

/// The source used for failures that have none (accept errors).
pub const NO_SOURCE: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn pair(l: &TcpListener) -> (TcpStream, TcpStream, SocketAddr) {
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, peer) = l.accept().unwrap();
        (c, s, peer)
    }

    fn closed(c: &mut TcpStream) -> bool {
        use std::io::Read;
        c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut b = [0u8; 1];
        matches!(c.read(&mut b), Ok(0) | Err(_))
    }

    #[test]
    fn over_a_limit_the_oldest_silent_connection_is_closed_not_the_newest() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let gate = PreAuthGate::new(
            PreAuthLimits {
                per_source_max: 3,
                total_max: 8,
            },
            "test",
        );
        let mut conns = Vec::new();
        let mut slots = Vec::new();
        for _ in 0..3 {
            let (c, s, peer) = pair(&l);
            slots.push(gate.admit(&s, peer).unwrap());
            conns.push((c, s));
        }
        // The oldest spoke; the second is silent: it goes first.
        slots[0].spoke();
        let (c, s, peer) = pair(&l);
        slots.push(gate.admit(&s, peer).unwrap());
        conns.push((c, s));
        assert_eq!(gate.pending(), 3);
        assert!(!slots[0].evicted());
        assert!(slots[1].evicted());
        assert!(closed(&mut conns[1].0));
        // One whose bytes wait unread counts as spoken too.
        use std::io::Write;
        conns[2].0.write_all(b"hello").unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let (c, s, peer) = pair(&l);
        slots.push(gate.admit(&s, peer).unwrap());
        conns.push((c, s));
        assert!(!slots[2].evicted());
        assert!(slots[3].evicted());
        // All left have spoken: the oldest goes.
        slots[4].spoke();
        let (c, s, peer) = pair(&l);
        slots.push(gate.admit(&s, peer).unwrap());
        conns.push((c, s));
        assert!(slots[0].evicted());
        assert!(!slots[5].evicted());
        assert_eq!(gate.pending(), 3);
        // Rejections are counted as the slots go; a passed one is not.
        let passed = slots.pop().unwrap();
        passed.passed();
        drop(slots);
        assert_eq!(gate.pending(), 0);
        assert_eq!(gate.rejected(), 5);
    }

    #[test]
    fn the_total_limit_holds_across_sources() {
        let gate = PreAuthGate::new(
            PreAuthLimits {
                per_source_max: 2,
                total_max: 4,
            },
            "test",
        );
        // Sources differ by address: connect from 127.0.0.x.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut keep = Vec::new();
        for i in 1..=10u8 {
            let sock = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
            let (s, _) = l.accept().unwrap();
            let peer = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, i)), 1000);
            keep.push((sock, s.try_clone().unwrap(), gate.admit(&s, peer).unwrap()));
            assert!(gate.pending() <= 4);
        }
        // The four newest survive.
        for (i, (_, _, slot)) in keep.iter().enumerate() {
            assert_eq!(slot.evicted(), i < 6, "{i}");
        }
        let t = gate.table.lock().unwrap();
        assert_eq!(t.per_source.len(), 4);
    }

    #[test]
    fn warnings_are_one_per_source_per_period_plus_a_summary() {
        let lines = Arc::new(Mutex::new(Vec::<String>::new()));
        let l2 = lines.clone();
        let logger = Logger::new(move |s| l2.lock().unwrap().push(s.to_string()));
        let w = WarnLimiter::new("test", Duration::from_millis(200));
        let a = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
        let b = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));
        for _ in 0..1000 {
            w.warn(a, &logger, || "from a".into());
            w.warn(b, &logger, || "from b".into());
            w.summarize(&logger);
        }
        assert_eq!(*lines.lock().unwrap(), ["from a", "from b"]);
        std::thread::sleep(Duration::from_millis(250));
        w.summarize(&logger);
        w.summarize(&logger);
        let got = lines.lock().unwrap().clone();
        assert_eq!(got.len(), 3, "{got:?}");
        assert!(got[2].contains("suppressed 1998 similar"), "{got:?}");
        // After the period a source gets a line again.
        w.warn(a, &logger, || "from a".into());
        assert_eq!(lines.lock().unwrap().len(), 4);
    }

    #[test]
    fn the_warning_table_is_bounded() {
        let logger = Logger::new(|_| {});
        let w = WarnLimiter::new("test", Duration::from_secs(60));
        for i in 0..10_000u32 {
            let ip = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i));
            w.warn(ip, &logger, String::new);
        }
        let l = w.inner.lock().unwrap();
        assert_eq!(l.last.len(), WARN_SOURCES_MAX);
        assert_eq!(l.suppressed, 10_000 - WARN_SOURCES_MAX as u64);
    }
}
