//! The principal as a service: see the module above.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::commit::progress::monotonic_ns;
use crate::commit::{CommitError, Committed, Detached, GroupCommit, Level, Ticket};
use crate::log::{FsStorage, Log};
use crate::node::status::{LagClock, LatencySummary, NodeRole, Status, WitnessView};
use crate::node::{open_partner_conn, tighten_dir, NodeConfig, NodeError, Safety, WitnessLink};
use crate::replication::handshake::random_nonce;
use crate::replication::history::EpochHistory;
use crate::replication::session::MirroringState;
use crate::replication::wire::Role;
use crate::transport::preauth::{
    preauth_deadline, PreAuthGate, PreAuthLimits, PreAuthSlot, Watched, NO_SOURCE,
};
use crate::transport::runner::{authenticate, serve_principal, SessionStatus};
use crate::transport::Conn;
use crate::witness::client::WitnessClient;
use crate::witness::proto::{Reply, Request};

/// How often the supervisor looks at exposure and queue ages.
const SUPERVISE: Duration = Duration::from_millis(10);

struct Shared {
    gc: Arc<GroupCommit<FsStorage>>,
    /// The safety setting now (`Safety::Full` = 0, `Off` = 1): switchable.
    safety: std::sync::atomic::AtomicU8,
    cfg: NodeConfig,
    epoch: u64,
    history: Vec<(u64, u64)>,
    session: SessionStatus,
    /// Incoming connections not authenticated yet (and the count of those
    /// refused: the status shows it, `last_error` is the session's).
    preauth: Arc<PreAuthGate>,
    stop: AtomicBool,
    /// Supervisor state, read by `status`.
    watch: Mutex<Watch>,
    /// The lease keeper's view (None: no witness).
    witness: Option<Mutex<WitnessView>>,
    /// Where the mirror of the current (or last) session connected from:
    /// ROLE reports it as Redis reports a replica's address.
    mirror_peer: Mutex<Option<SocketAddr>>,
    /// Resigned for a manual failover: the lease keeper stops.
    resigned: AtomicBool,
    /// Started in an epoch a failover granted: its mirror is gone, so the
    /// first renewal asks for exposure at once (the first commits need it;
    /// waiting for them to ask would add a witness round trip to the
    /// failover).
    promoted: bool,
}

struct Watch {
    lag: LagClock,
    /// When this principal began running without its mirror, and its
    /// hardened LSN then.
    detached_since: Option<(Instant, u64)>,
    held: bool,
    send_queue_age: Option<Duration>,
}

impl Shared {
    fn safety(&self) -> Safety {
        if self.safety.load(Ordering::Acquire) == 1 {
            Safety::Off
        } else {
            Safety::Full
        }
    }
}

/// A running principal. Dropping it stops it (see [`Principal::shutdown`]).
pub struct Principal {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    threads: Vec<JoinHandle<()>>,
}

impl Principal {
    /// Opens (recovering) the log in `cfg.dir`, begins a new epoch, starts
    /// group commit and listens for the mirror on `listen`.
    ///
    /// With a witness, the epoch is the witness's grant (`claim`): refused
    /// with [`NodeError::NotPrincipal`] when another node is principal.
    pub fn start(cfg: NodeConfig, listen: SocketAddr) -> Result<Principal, NodeError> {
        Principal::open(cfg, listen, None, None)
    }

    /// Starts as principal of `epoch`, which the witness granted this node
    /// (a failover or forced service); it must be above every epoch in
    /// this node's log.
    pub fn start_in_epoch(
        cfg: NodeConfig,
        listen: SocketAddr,
        epoch: u64,
    ) -> Result<Principal, NodeError> {
        Principal::open(cfg, listen, Some(epoch), None)
    }

    /// `start_in_epoch` on a log a promoted mirror hands over open (no
    /// second recovery scan: a failover does not wait for one).
    pub(crate) fn open(
        mut cfg: NodeConfig,
        listen: SocketAddr,
        granted: Option<u64>,
        open_log: Option<Arc<Log<FsStorage>>>,
    ) -> Result<Principal, NodeError> {
        if let Some(core) = cfg.sender_core {
            crate::affinity::check_core("sender core", core).map_err(NodeError::Config)?;
        }
        let log = match open_log {
            Some(log) => {
                // What the mirror received but had not synced yet becomes
                // durable before this principal builds on it.
                log.sync().map_err(|e| NodeError::Io {
                    context: "syncing the promoted mirror's log".into(),
                    source: std::io::Error::other(e.to_string()),
                })?;
                log
            }
            None => {
                tighten_dir(&cfg, "mirrorlog[principal]");
                let (log, report) = Log::open(&cfg.dir, cfg.log.clone())?;
                cfg.logger.line(&format!("mirrorlog[principal]: {report}"));
                if let Some(cut) = &report.cut {
                    cfg.logger.line(&format!(
                        "mirrorlog[principal]: recovery cut a torn tail at LSN {}..{} ({}); it was never acknowledged",
                        cut.from_lsn, cut.to_lsn, cut.reason
                    ));
                }
                Arc::new(log)
            }
        };
        let mut history = EpochHistory::load(&cfg.dir)?;
        // Every incarnation is a new epoch (docs/design.md): recorded before
        // the first batch of it is written.
        let last = history.last_epoch().max(log.last_epoch());
        let epoch = match (granted, &cfg.witness) {
            (Some(e), _) if e <= last => {
                return Err(NodeError::Config(format!(
                    "epoch {e} was granted, but this log already went through epoch {last}"
                )))
            }
            (Some(e), _) => e,
            (None, Some(link)) => claim(&cfg, link, last)?,
            (None, None) => last + 1,
        };
        history.begin(epoch, log.written_lsn())?;
        cfg.commit.default_level = cfg.safety.default_level();
        let gc = GroupCommit::start(log, cfg.commit.clone())?;
        gc.set_epoch(epoch)
            .map_err(|e| NodeError::Config(format!("setting the epoch: {e}")))?;
        let exposed_ok =
            cfg.exposure.max_bytes != Some(0) && cfg.exposure.max_duration != Some(Duration::ZERO);
        gc.progress().set_detached_policy(if exposed_ok {
            Detached::Expose
        } else {
            Detached::Hold
        });
        gc.progress().set_exposure_max_bytes(cfg.exposure.max_bytes);
        // Rule P: with a witness, nothing is acknowledged without either the
        // mirror's hardened ack or a live exposure lease.
        gc.progress().set_lease_gated(cfg.witness.is_some());
        let listener = TcpListener::bind(listen).map_err(|source| NodeError::Io {
            context: format!("listening for the mirror on {listen}"),
            source,
        })?;
        let local_addr = listener.local_addr().map_err(|source| NodeError::Io {
            context: "reading the listening address".into(),
            source,
        })?;
        listener
            .set_nonblocking(true)
            .map_err(|source| NodeError::Io {
                context: "setting the listener non-blocking".into(),
                source,
            })?;
        let hardened = gc.log().hardened_lsn();
        let shared = Arc::new(Shared {
            gc: Arc::new(gc),
            safety: std::sync::atomic::AtomicU8::new(u8::from(cfg.safety == Safety::Off)),
            epoch,
            history: history.entries().to_vec(),
            session: SessionStatus::default(),
            preauth: PreAuthGate::new(PreAuthLimits::default(), "mirrorlog[principal]"),
            stop: AtomicBool::new(false),
            watch: Mutex::new(Watch {
                lag: LagClock::new(),
                detached_since: Some((Instant::now(), hardened)),
                held: !exposed_ok,
                send_queue_age: None,
            }),
            mirror_peer: Mutex::new(None),
            resigned: AtomicBool::new(false),
            promoted: granted.is_some(),
            witness: cfg.witness.as_ref().map(|w| {
                Mutex::new(WitnessView {
                    addr: w.addr.to_string(),
                    ..WitnessView::default()
                })
            }),
            cfg,
        });
        shared.cfg.logger.line(&format!(
            "mirrorlog[principal]: epoch {epoch}, log {}..{}, listening for the mirror on {local_addr}",
            shared.gc.log().start_lsn(),
            shared.gc.log().written_lsn()
        ));
        shared.session.set_logger(shared.cfg.logger.clone());
        if let Some(source) = &shared.cfg.snapshots {
            shared.session.set_snapshots(source.clone());
        }
        let (tx, rx) = mpsc::channel::<(SocketAddr, Box<dyn Conn>)>();
        let mut threads = Vec::new();
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.into())
                .spawn(f)
                .map_err(|source| NodeError::Io {
                    context: format!("starting thread {name}"),
                    source,
                })
        };
        let s = shared.clone();
        threads.push(spawn(
            "mirrorlog-accept",
            Box::new(move || accept_loop(&s, listener, tx)),
        )?);
        let s = shared.clone();
        threads.push(spawn(
            "mirrorlog-sender",
            Box::new(move || sender_loop(&s, rx)),
        )?);
        let s = shared.clone();
        threads.push(spawn(
            "mirrorlog-supervisor",
            Box::new(move || supervise(&s)),
        )?);
        if shared.witness.is_some() {
            let s = shared.clone();
            threads.push(spawn(
                "mirrorlog-lease",
                Box::new(move || lease_keeper(&s)),
            )?);
        }
        Ok(Principal {
            shared,
            local_addr,
            threads,
        })
    }

    /// Switches safety at run time: the level plain `commit`s wait for
    /// (full: remote-flush, off: local). Commits in flight keep theirs.
    pub fn set_safety(&self, safety: Safety) {
        self.shared
            .safety
            .store(u8::from(safety == Safety::Off), Ordering::Release);
        self.shared.gc.set_default_level(safety.default_level());
        self.shared.cfg.logger.line(&format!(
            "mirrorlog[principal]: safety is now {}",
            if safety == Safety::Full {
                "full"
            } else {
                "off"
            }
        ));
    }

    pub fn safety(&self) -> Safety {
        self.shared.safety()
    }

    /// Pauses shipping to the mirror (the session stays up, heartbeats go
    /// on; the state is SUSPENDED) until [`Principal::resume`]. Commits at
    /// remote levels wait meanwhile.
    pub fn suspend(&self) {
        self.shared.session.set_suspended(true);
    }

    pub fn resume(&self) {
        self.shared.session.set_suspended(false);
    }

    /// The address the mirror connects to.
    /// The address the mirror of the current (or last) session connected
    /// from (None: no mirror has attached yet).
    pub fn mirror_peer(&self) -> Option<SocketAddr> {
        *self.shared.mirror_peer.lock().expect("mirror peer")
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn epoch(&self) -> u64 {
        self.shared.epoch
    }

    pub fn group_commit(&self) -> &Arc<GroupCommit<FsStorage>> {
        &self.shared.gc
    }

    pub fn log(&self) -> &Arc<Log<FsStorage>> {
        self.shared.gc.log()
    }

    /// Commits at the level of the safety setting.
    pub fn commit(&self, records: &[&[u8]]) -> Result<Ticket<FsStorage>, CommitError> {
        self.shared.gc.commit(records)
    }

    /// Commits at `level` (per-commit durability).
    pub fn commit_at(
        &self,
        records: &[&[u8]],
        level: Level,
    ) -> Result<Ticket<FsStorage>, CommitError> {
        self.shared.gc.commit_at(records, level)
    }

    /// Commits at the default level and waits.
    pub fn commit_wait(&self, records: &[&[u8]]) -> Result<Committed, CommitError> {
        self.commit(records)?.wait()
    }

    pub fn status(&self) -> Status {
        let mut s = self.status_brief();
        s.latency = Level::ALL
            .iter()
            .map(|&l| {
                self.shared
                    .gc
                    .with_latency_ns(l, |h| LatencySummary::of(l, h))
            })
            .collect();
        s
    }

    /// [`Principal::status`] without the latency summaries (empty), which
    /// cost a scan of every level's histogram: for what is asked often
    /// (ROLE, the read barrier's level checks, client libraries polling).
    pub fn status_brief(&self) -> Status {
        let sh = &self.shared;
        let gc = &sh.gc;
        let log = gc.log();
        let snap = sh.session.snapshot();
        let stats = gc.stats();
        let (exposed_for, held, send_queue_age) = {
            let w = sh.watch.lock().expect("watch lock");
            (
                w.detached_since.map(|(t, _)| t.elapsed()),
                w.held,
                w.send_queue_age,
            )
        };
        let attached = gc.progress().remote_attached();
        let exposed = !attached && sh.safety() == Safety::Full && !held;
        let written = log.written_lsn();
        Status {
            role: NodeRole::Principal,
            state: if snap.connected {
                snap.state.unwrap_or(MirroringState::Synchronizing)
            } else {
                MirroringState::Disconnected
            },
            epoch: sh.epoch,
            written_lsn: written,
            hardened_lsn: log.hardened_lsn(),
            mirror: snap.mirror,
            commit_lsn: snap.commit_lsn,
            send_queue_bytes: written.saturating_sub(snap.mirror.received),
            send_queue_age,
            redo_queue_bytes: snap.mirror.hardened.saturating_sub(snap.mirror.applied),
            redo_queue_time: None,
            exposed,
            commits_held: !attached && held && sh.safety() == Safety::Full,
            exposed_for: if attached { None } else { exposed_for },
            transport: snap.path,
            zero_copy: snap.zero_copy,
            bytes_sent: snap.bytes_sent,
            raw_bytes: stats.raw_bytes,
            log_bytes: stats.log_bytes,
            stored_bytes: stats.stored_bytes,
            latency: Vec::new(),
            sessions: snap.sessions,
            last_error: snap.last_error,
            preauth_rejected: sh.preauth.rejected(),
            reseed: snap.reseed,
            witness: sh
                .witness
                .as_ref()
                .map(|w| w.lock().expect("witness view").clone()),
            log_error: log_error(log.poisoned(), gc.append_error()),
        }
    }

    /// Manual failover (planned, loses nothing): refused unless the mirror
    /// is SYNCHRONIZED. New commits are refused from now on (commits in
    /// flight finish once the mirror hardens them); once the mirror has
    /// hardened the whole log, the witness (if any) hears that this
    /// principal resigns, and the mirror is told to take over; it then
    /// becomes principal of the next epoch. This node is done as
    /// principal: restart it as mirror of the other. If the mirror does
    /// not drain within `timeout`, the failover is abandoned and commits
    /// are accepted again.
    pub fn failover(&self, timeout: Duration) -> Result<(), String> {
        let sh = &self.shared;
        let progress = sh.gc.progress();
        let state = sh.session.snapshot().state;
        if state != Some(MirroringState::Synchronized) {
            return Err(format!(
                "the mirror is not SYNCHRONIZED (it is {}): a manual failover could lose commits; wait for it to catch up, or stop this principal and force service on the mirror",
                state.map_or("DISCONNECTED".to_string(), |s| format!("{s:?}").to_uppercase())
            ));
        }
        if self.deposed().is_some() {
            return Err("this principal was deposed".into());
        }
        progress.close(true);
        let log = sh.gc.log();
        let until = Instant::now() + timeout;
        let drained = loop {
            let s = sh.session.snapshot();
            let written = log.written_lsn();
            if s.connected && s.mirror.hardened == written && log.hardened_lsn() >= written {
                break true;
            }
            if Instant::now() >= until || !s.connected {
                break false;
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        if !drained {
            progress.close(false);
            return Err(format!(
                "the mirror did not harden the whole log within {timeout:?}; failover abandoned, commits accepted again"
            ));
        }
        if let Some(link) = &sh.cfg.witness {
            let mut c = WitnessClient::new(link.addr, sh.cfg.identity.secret.clone())
                .with_tls(link.tls.clone());
            let req = Request::Resign {
                database_id: sh.cfg.identity.database_id,
                name: link.name.clone(),
                epoch: sh.epoch,
            };
            match c.call(
                &req,
                until
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(500)),
            ) {
                Ok(Reply::Granted { .. }) => {}
                Ok(Reply::Refused { why, .. }) => {
                    progress.close(false);
                    return Err(format!("the witness refused the handover: {why}"));
                }
                other => {
                    progress.close(false);
                    return Err(format!(
                        "the witness did not take the handover: {other:?}; failover abandoned"
                    ));
                }
            }
        }
        sh.resigned.store(true, Ordering::Release);
        // No lease will come again: whatever waits for one fails now
        // (commits the mirror hardens still complete).
        progress.set_no_quorum(true);
        sh.session.set_handover(true);
        let until = Instant::now() + timeout;
        while !sh.session.snapshot().handed_over {
            if Instant::now() >= until {
                // Resigned: the mirror takes over on its own once it
                // misses this principal for its partner timeout.
                return Err(format!(
                    "the mirror did not take the handover within {timeout:?}; this principal has resigned and accepts no commits"
                ));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        progress.set_no_quorum(true);
        sh.cfg.logger.line(&format!(
            "mirrorlog[principal]: handed over to the mirror at LSN {} (manual failover); epoch {} is over here",
            log.written_lsn(),
            sh.epoch
        ));
        Ok(())
    }

    /// Whether this principal handed over (or resigned for) a manual
    /// failover.
    pub fn resigned(&self) -> bool {
        self.shared.resigned.load(Ordering::Acquire)
    }

    /// Who deposed this principal, if the witness said it was: it then
    /// accepts no commits and should restart as mirror of that node.
    pub fn deposed(&self) -> Option<String> {
        self.shared
            .witness
            .as_ref()
            .and_then(|w| w.lock().expect("witness view").deposed.clone())
    }

    /// Stops the threads and group commit; the log is closed cleanly.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        // No mirror will come: commits held for one fail now (with
        // LevelUnavailable) instead of waiting for ever.
        let progress = self.shared.gc.progress();
        progress.set_remote_attached(false);
        progress.set_detached_policy(Detached::Refuse);
        // Nor any that waits for an exposure lease (no keeper renews now).
        progress.revoke_exposure_lease();
        progress.set_no_quorum(true);
    }
}

impl Drop for Principal {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Accepts mirror connections, authenticates each on its own thread and
/// hands it to the sender thread (which drops the session it had, if any).
/// Connections that have not authenticated yet go through the pre-auth
/// gate (`transport::preauth`): a short deadline, per-source and total
/// limits that close the oldest, rate-limited warnings, a counter instead
/// of `last_error`.
fn accept_loop(
    sh: &Arc<Shared>,
    listener: TcpListener,
    tx: mpsc::Sender<(SocketAddr, Box<dyn Conn>)>,
) {
    let log = &sh.cfg.logger;
    let fallback_logged = Arc::new(AtomicBool::new(false));
    let deadline = preauth_deadline(Duration::from_millis(sh.cfg.session.partner_timeout_ms));
    while !sh.stop.load(Ordering::Acquire) {
        sh.preauth.summarize(log);
        let (stream, peer) = match listener.accept() {
            Ok(x) => x,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            Err(e) => {
                // Out of descriptors under a flood, say: said once a period.
                sh.preauth.warn(NO_SOURCE, log, || {
                    format!("mirrorlog[principal]: accept failed: {e}")
                });
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let slot = match sh.preauth.admit(&stream, peer) {
            Ok(s) => s,
            Err(e) => {
                sh.preauth.warn(peer.ip(), log, || {
                    format!("mirrorlog[principal]: refused {peer} before authentication: {e}")
                });
                continue;
            }
        };
        // Each handshake on its own thread (at most the gate's total of
        // them wait on a peer), so a peer that connects and says nothing
        // cannot keep the real mirror waiting behind it. The transport is
        // set up there too: an io_uring ring per flood connection must not
        // slow the accepting.
        let (sh2, tx, fallback_logged) = (sh.clone(), tx.clone(), fallback_logged.clone());
        let spawned = std::thread::Builder::new()
            .name("mirrorlog-handshake".into())
            .spawn(move || handshake(&sh2, stream, slot, &tx, deadline, &fallback_logged));
        if let Err(e) = spawned {
            sh.preauth.warn(peer.ip(), log, || {
                format!("mirrorlog[principal]: refused {peer} before authentication: could not start a handshake thread: {e}")
            });
        }
    }
}

/// Authenticates one incoming connection within `deadline`. A failure is
/// a pre-auth rejection: counted by the gate, logged rate-limited, and
/// kept out of `last_error` (which is the real session's).
fn handshake(
    sh: &Shared,
    stream: TcpStream,
    slot: PreAuthSlot,
    tx: &mpsc::Sender<(SocketAddr, Box<dyn Conn>)>,
    deadline: Duration,
    fallback_logged: &AtomicBool,
) {
    let log = &sh.cfg.logger;
    let peer = slot.peer();
    let refuse = |why: &str| {
        let why = slot.failure(why);
        sh.preauth.warn(peer.ip(), log, || {
            format!("mirrorlog[principal]: refused {peer} before authentication: {why}")
        });
    };
    if let Err(e) = prepare(&stream) {
        refuse(&e.to_string());
        return;
    }
    // The TLS handshake and the PAKE share the one pre-auth deadline.
    let until = Instant::now() + deadline;
    if sh.cfg.partner_tls.is_none() && opens_with_tls(&stream, until) {
        // A mirror configured for TLS: told so in plaintext (it reads a
        // refusal where it expected a TLS record), and logged here.
        let (ours, msg) = crate::transport::tls::mismatch_refusal(false);
        let mut b = Vec::new();
        msg.encode(&mut b);
        let _ = std::io::Write::write_all(&mut &stream, &b);
        refuse(&ours);
        return;
    }
    let (mut conn, why) = match open_partner_conn(stream, &sh.cfg, true, until, &|| slot.spoke()) {
        Ok(c) => c,
        Err(e) => {
            refuse(&e);
            return;
        }
    };
    if let Some(why) = why {
        if !fallback_logged.swap(true, Ordering::AcqRel) {
            log.line(&format!("mirrorlog[principal]: {why}"));
        }
    }
    let deadline = until.saturating_duration_since(Instant::now());
    let nonce = match random_nonce() {
        Ok(n) => n,
        Err(e) => {
            log.line(&format!(
                "mirrorlog[principal]: no randomness for a nonce: {e}"
            ));
            return;
        }
    };
    // A peer that does not read cannot hold a send past the deadline
    // either (the session sets its own send timeout).
    conn.set_send_timeout(Some(deadline));
    let r = authenticate(
        &mut Watched {
            conn: conn.as_mut(),
            slot: &slot,
        },
        Role::Principal,
        &sh.cfg.identity,
        sh.epoch,
        nonce,
        deadline,
        sh.cfg.log.segment_bytes as u64,
    );
    match r {
        Ok(_) if !slot.evicted() => {
            slot.passed();
            let _ = tx.send((peer, conn));
        }
        Ok(_) => refuse("authenticated after the gate had closed it"),
        Err(e) => refuse(&e),
    }
}

/// Whether the peer's first bytes (waited for until `until`) are a TLS
/// record: a mirror with partner TLS talking to a principal without it.
/// The mirror sends its first bytes at once either way, so this costs a
/// plaintext mirror nothing.
fn opens_with_tls(stream: &TcpStream, until: Instant) -> bool {
    let mut b = [0u8; 2];
    let tls = loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            break false;
        }
        match stream.peek(&mut b) {
            Ok(0) | Err(_) => break false,
            Ok(n) => match crate::transport::tls::looks_like_tls(&b[..n]) {
                Some(tls) => break tls,
                None => std::thread::sleep(Duration::from_millis(1)),
            },
        }
    };
    // The transports set their own waits; none inherits this one.
    let _ = stream.set_read_timeout(None);
    tls
}

fn prepare(stream: &TcpStream) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_nodelay(true)
}

/// Runs sessions one at a time; a newer connection replaces the current one.
fn sender_loop(sh: &Shared, rx: mpsc::Receiver<(SocketAddr, Box<dyn Conn>)>) {
    crate::affinity::pin_current(sh.cfg.sender_core);
    let log = &sh.cfg.logger;
    let mut next: Option<(SocketAddr, Box<dyn Conn>)> = None;
    let mut repeats = SessionRepeats::default();
    while !sh.stop.load(Ordering::Acquire) {
        let (peer, mut conn) = match next.take() {
            Some(c) => c,
            None => match rx.recv_timeout(Duration::from_millis(20)) {
                Ok(c) => c,
                Err(mpsc::RecvTimeoutError::Timeout) => continue,
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            },
        };
        let path = conn.path();
        // A mirror that keeps refusing (or being refused) reconnects every
        // second or so: such quick sessions are said once, then summarised;
        // one that lasts is said once it lasted.
        let mut attach_said = !repeats.quiet();
        if attach_said {
            log.line(&format!(
                "mirrorlog[principal]: mirror at {peer} attached over {path}"
            ));
        }
        *sh.mirror_peer.lock().expect("mirror peer") = Some(peer);
        let began = Instant::now();
        let mut preempt = || -> bool {
            if !attach_said && began.elapsed() >= REPEAT_SESSION_MAX {
                attach_said = true;
                log.line(&format!(
                    "mirrorlog[principal]: mirror at {peer} attached over {path} (after {})",
                    repeats.summary()
                ));
            }
            if sh.stop.load(Ordering::Acquire) {
                return true;
            }
            match rx.try_recv() {
                Ok(c) => {
                    next = Some(c);
                    true
                }
                Err(_) => false,
            }
        };
        let why = serve_principal(
            conn.as_mut(),
            &sh.gc,
            &sh.history,
            sh.cfg.session,
            &mut preempt,
            &sh.session,
        );
        if let Some(line) = repeats.ended(&why, began.elapsed(), Instant::now()) {
            log.line(&format!("mirrorlog[principal]: {line}"));
        }
    }
}

/// Quick sessions that end the same way again and again (a mirror that
/// refuses this principal's log, say): the first is said, the repeats
/// are counted and said once a `REPEATS_SAID_EVERY`, with the count.
#[derive(Default)]
struct SessionRepeats {
    /// The reason the last quick session ended with, how many times in a
    /// row it did (after the first), how many of those are unsaid, and
    /// when the last line about it went out.
    last: Option<Repeat>,
}

struct Repeat {
    why: String,
    streak: u64,
    unsaid: u64,
    said: Instant,
}

/// A session that lasted less than this and ended as the one before it is
/// a repeat.
const REPEAT_SESSION_MAX: Duration = Duration::from_secs(1);
const REPEATS_SAID_EVERY: Duration = Duration::from_secs(60);

impl SessionRepeats {
    /// Quick sessions repeat: the next one's attachment goes unsaid
    /// unless it lasts.
    fn quiet(&self) -> bool {
        self.last.as_ref().is_some_and(|r| r.streak > 0)
    }

    /// What the repeats were, for the line of a session that lasted.
    fn summary(&self) -> String {
        match &self.last {
            Some(r) => format!("{} quick sessions that ended: {}", r.streak + 1, r.why),
            None => "nothing".into(),
        }
    }

    /// A session ended after `lasted`: the line to log, if any.
    fn ended(&mut self, why: &str, lasted: Duration, now: Instant) -> Option<String> {
        let quick = lasted < REPEAT_SESSION_MAX;
        if let Some(r) = self.last.as_mut().filter(|r| quick && r.why == why) {
            r.streak += 1;
            r.unsaid += 1;
            let since = now.duration_since(r.said);
            if since < REPEATS_SAID_EVERY {
                return None;
            }
            let line = format!(
                "mirror session ended {} more times in {:.0} s: {why}",
                r.unsaid,
                since.as_secs_f64()
            );
            r.unsaid = 0;
            r.said = now;
            return Some(line);
        }
        let line = match self.last.take() {
            Some(r) if r.unsaid > 0 => format!(
                "mirror session ended: {why} (before it, {} more ended: {})",
                r.unsaid, r.why
            ),
            _ => format!("mirror session ended: {why}"),
        };
        self.last = quick.then(|| Repeat {
            why: why.to_string(),
            streak: 0,
            unsaid: 0,
            said: now,
        });
        Some(line)
    }
}

/// Exposure bound and send-queue age, every `SUPERVISE`.
fn supervise(sh: &Shared) {
    let gc = &sh.gc;
    let log = &sh.cfg.logger;
    let limit = sh.cfg.exposure;
    while !sh.stop.load(Ordering::Acquire) {
        std::thread::sleep(SUPERVISE);
        let now = Instant::now();
        let attached = gc.progress().remote_attached();
        let snap = sh.session.snapshot();
        let mut w = sh.watch.lock().expect("watch lock");
        w.lag.record(gc.log().written_lsn(), now);
        w.send_queue_age = w.lag.age(snap.mirror.received, now);
        // Leave the held state only for a mirror that caught up: one that
        // attaches for a moment and hardens nothing must not start a new
        // exposure window.
        let caught_up = attached && snap.state == Some(MirroringState::Synchronized);
        if attached && !caught_up {
            continue;
        }
        if attached {
            if w.detached_since.take().is_some() && w.held {
                let bounded =
                    limit.max_bytes != Some(0) && limit.max_duration != Some(Duration::ZERO);
                if bounded {
                    w.held = false;
                    gc.progress().set_detached_policy(Detached::Expose);
                }
            }
            continue;
        }
        let (since, _) = *w
            .detached_since
            .get_or_insert((now, gc.log().hardened_lsn()));
        if sh.safety() != Safety::Full || w.held {
            continue;
        }
        // The same measure the tickets check (`Progress::may_expose`).
        let bytes = gc
            .log()
            .hardened_lsn()
            .saturating_sub(gc.progress().reached(Level::RemoteFlush));
        let over_bytes = limit.max_bytes.is_some_and(|m| bytes >= m);
        let over_time = limit.max_duration.is_some_and(|m| now - since >= m);
        if over_bytes || over_time {
            w.held = true;
            gc.progress().set_detached_policy(Detached::Hold);
            log.line(&format!(
                "mirrorlog[principal]: exposure bound reached ({bytes} bytes, {:.1} s without the mirror): commits now wait for the mirror",
                (now - since).as_secs_f64()
            ));
        }
    }
}

/// How long a starting principal keeps asking an unreachable witness for
/// its epoch before it gives up.
const CLAIM_TIMEOUT: Duration = Duration::from_secs(30);

/// The file holding a node's start counter (the claim id of its last
/// start as principal with a witness): `u64` LE, then its CRC32C (LE u32).
pub const STARTS_FILE: &str = "STARTS";

/// Increments the start counter in `dir` and stores it durably before it
/// is used: a claim id no earlier start had.
fn next_start(dir: &std::path::Path) -> Result<u64, NodeError> {
    let path = dir.join(STARTS_FILE);
    let last = match std::fs::read(&path) {
        Ok(b) if b.len() == 12
            && crc32c::crc32c(&b[..8]) == u32::from_le_bytes(b[8..].try_into().expect("4")) =>
        {
            u64::from_le_bytes(b[..8].try_into().expect("8 bytes"))
        }
        Ok(_) => {
            return Err(NodeError::Config(format!(
                "{} is damaged: it holds this node's start counter, which the witness requires to grow; restore it, or remove it and start this node against a new witness",
                path.display()
            )))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(source) => {
            return Err(NodeError::Io {
                context: format!("reading {}", path.display()),
                source,
            })
        }
    };
    let next = last + 1;
    let mut b = next.to_le_bytes().to_vec();
    b.extend_from_slice(&crc32c::crc32c(&b).to_le_bytes());
    crate::durable::replace_file(dir, STARTS_FILE, &b)
        .map_err(|(context, source)| NodeError::Io { context, source })?;
    Ok(next)
}

/// Asks the witness for this node's epoch as principal.
fn claim(cfg: &NodeConfig, link: &WitnessLink, last_epoch: u64) -> Result<u64, NodeError> {
    let mut c =
        WitnessClient::new(link.addr, cfg.identity.secret.clone()).with_tls(link.tls.clone());
    let deadline = Instant::now() + CLAIM_TIMEOUT;
    let mut said = false;
    // One id for this start, the same on every retry: the witness grants
    // it one epoch however many copies of the request reach it. It is the
    // node's durable start counter, so a later start's id is larger and
    // the witness refuses a late copy of an earlier start's claim.
    let claim_id = next_start(&cfg.dir)?;
    loop {
        let req = Request::Claim {
            database_id: cfg.identity.database_id,
            name: link.name.clone(),
            last_epoch,
            claim_id,
        };
        match c.call(&req, Duration::from_secs(1)) {
            Ok(Reply::Granted { epoch }) => return Ok(epoch),
            Ok(Reply::Refused { code, why }) => {
                return Err(NodeError::NotPrincipal {
                    refusal: Some(code),
                    why,
                })
            }
            Ok(other) => {
                return Err(NodeError::NotPrincipal {
                    refusal: None,
                    why: format!("the witness answered a claim with {other:?}"),
                })
            }
            Err(e) if Instant::now() >= deadline => {
                return Err(NodeError::NotPrincipal {
                    refusal: None,
                    why: format!("no answer from the witness for {CLAIM_TIMEOUT:?}: {e}"),
                })
            }
            Err(e) => {
                if !said {
                    said = true;
                    cfg.logger.line(&format!(
                        "mirrorlog[principal]: waiting for the witness to grant an epoch: {e}"
                    ));
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

/// Rule P's principal side: renews the lease every quarter lease; asks for
/// an exposure lease as soon as a commit needs one (and from then on, the
/// witness keeps the epoch exposed); says there is no quorum once the last
/// lease ran out; stops every commit if the witness says another node
/// holds a newer epoch.
fn lease_keeper(sh: &Shared) {
    let link = sh.cfg.witness.clone().expect("a witness");
    let view = sh.witness.as_ref().expect("a witness view");
    let log = &sh.cfg.logger;
    let progress = sh.gc.progress();
    let mut client =
        WitnessClient::new(link.addr, sh.cfg.identity.secret.clone()).with_tls(link.tls.clone());
    // Until a lease says otherwise, renew four times per partner timeout.
    let mut every =
        Duration::from_millis(sh.cfg.session.partner_timeout_ms / 4).max(Duration::from_millis(10));
    let mut exposed = false;
    if sh.promoted {
        progress.want_exposure();
    }
    // End (monotonic ns) of the last lease of any kind; before the first,
    // a grace of one partner timeout (the claim just reached the witness).
    let mut lease_end_ns = monotonic_ns() + sh.cfg.session.partner_timeout_ms * 1_000_000;
    let mut next = Instant::now();
    let mut last_err = String::new();
    // Leaving exposure: the exposure lease was revoked when the log ended
    // here; once the mirror hardened up to it, every commit acknowledged
    // in this epoch is on the mirror, and the witness may hear so.
    // Once the last lease of any kind ran out: no quorum (said once).
    let lapse = |lease_end_ns: u64| {
        if monotonic_ns() >= lease_end_ns && !progress.no_quorum() {
            progress.set_no_quorum(true);
            log.line("mirrorlog[principal]: the witness lease ran out: commits the mirror does not harden are refused (no quorum)");
        }
    };
    let mut clearing: Option<u64> = None;
    let mut last_want = Instant::now();
    while !sh.stop.load(Ordering::Acquire) {
        if sh.resigned.load(Ordering::Acquire) {
            return;
        }
        if progress.closed() {
            // Draining for a handover: no lease that could allow an
            // exposed acknowledgement.
            std::thread::sleep(Duration::from_millis(2));
            continue;
        }
        let want_now = progress.take_exposure_wanted();
        if want_now {
            last_want = Instant::now();
        }
        let covered_now = {
            let snap = sh.session.snapshot();
            sh.safety() == Safety::Full
                && progress.remote_attached()
                && snap.state == Some(MirroringState::Synchronized)
        };
        if clearing.is_some() && (want_now || !covered_now) {
            // Exposure is wanted again (or the mirror left): stay exposed,
            // and renew the exposure lease at once.
            clearing = None;
            progress.allow_exposure_lease();
            next = Instant::now();
        }
        if exposed
            && clearing.is_none()
            && covered_now
            && last_want.elapsed() >= Duration::from_secs(1)
        {
            // Revoked under the progress lock: no renewal answered later
            // brings it back (see Progress::set_exposure_lease).
            progress.revoke_exposure_lease();
            clearing = Some(sh.gc.log().written_lsn());
        }
        let cover = clearing.is_some_and(|w| progress.reached(Level::RemoteFlush) >= w);
        let wanted = want_now && !exposed;
        if !wanted && !cover && Instant::now() < next {
            std::thread::sleep(Duration::from_millis(2));
            lapse(lease_end_ns);
            continue;
        }
        let ask_exposed = (exposed || wanted) && clearing.is_none();
        if ask_exposed {
            progress.allow_exposure_lease();
        }
        let sent = Instant::now();
        let sent_ns = monotonic_ns();
        let req = if cover {
            Request::Cover {
                database_id: sh.cfg.identity.database_id,
                name: link.name.clone(),
                epoch: sh.epoch,
            }
        } else {
            Request::Renew {
                database_id: sh.cfg.identity.database_id,
                name: link.name.clone(),
                epoch: sh.epoch,
                exposed: ask_exposed,
            }
        };
        let r = client.call(&req, every);
        next = sent + every;
        let mut v = view.lock().expect("witness view");
        match r {
            Ok(Reply::Lease {
                epoch,
                lease_ms,
                rho_ppm,
            }) if epoch == sh.epoch => {
                let rho = f64::from(rho_ppm) / 1e6;
                let live_ns = (lease_ms as f64 * 1e6 * (1.0 - rho)) as u64;
                lease_end_ns = lease_end_ns.max(sent_ns + live_ns);
                every = Duration::from_millis((lease_ms / 4).max(1));
                next = sent + every;
                if cover {
                    exposed = false;
                    clearing = None;
                    log.line(&format!(
                        "mirrorlog[principal]: the mirror has every commit acknowledged in epoch {}: automatic failover is possible again",
                        sh.epoch
                    ));
                }
                if ask_exposed {
                    if !exposed {
                        log.line(&format!(
                            "mirrorlog[principal]: told the witness this principal runs exposed in epoch {}: automatic failover is off until its mirror has every commit again",
                            sh.epoch
                        ));
                    }
                    exposed = true;
                    progress.set_exposure_lease(sent_ns + live_ns);
                }
                progress.set_no_quorum(false);
                v.contacted = true;
                v.connected = true;
                v.exposed = exposed;
                v.last_error = None;
                last_err.clear();
            }
            Ok(Reply::Deposed { current, principal }) => {
                let who = format!(
                    "epoch {current} belongs to {}; this node (epoch {}) must rejoin as its mirror",
                    principal.as_deref().unwrap_or("another node"),
                    sh.epoch
                );
                log.line(&format!(
                    "mirrorlog[principal]: deposed by the witness: {who}"
                ));
                v.contacted = true;
                v.connected = true;
                v.deposed = Some(principal.unwrap_or_default());
                drop(v);
                // Nothing more is acknowledged here, by any path.
                progress.set_detached_policy(Detached::Refuse);
                progress.set_no_quorum(true);
                sh.session.set_suspended(true);
                return;
            }
            Ok(other) => {
                let e = format!("the witness answered a renewal with {other:?}");
                v.contacted = true;
                v.connected = true;
                if e != last_err {
                    log.line(&format!("mirrorlog[principal]: {e}"));
                }
                v.last_error = Some(e.clone());
                last_err = e;
            }
            Err(e) => {
                v.contacted = true;
                v.connected = false;
                if e != last_err {
                    log.line(&format!("mirrorlog[principal]: renewing the lease: {e}"));
                }
                v.last_error = Some(e.clone());
                last_err = e;
                // Retry soon, not only a quarter lease later.
                next = Instant::now() + Duration::from_millis(50).min(every);
            }
        }
        v.lease_left_ms = lease_end_ns
            .checked_sub(monotonic_ns())
            .map(|ns| ns / 1_000_000);
        drop(v);
        lapse(lease_end_ns);
    }
}

/// The status line for a log that refuses writes (see `Status::log_error`).
pub(crate) fn log_error(
    poisoned: Option<&str>,
    append: Option<crate::commit::CommitError>,
) -> Option<String> {
    match (poisoned, append) {
        (Some(why), _) => Some(format!(
            "POISONED, writes refused until this node is restarted (a failed sync is never retried): {why}"
        )),
        (None, Some(crate::commit::CommitError::DiskFull(why))) => Some(format!(
            "DISK FULL, writes failing ({why}); free space on the log's file system: the next write retries"
        )),
        (None, Some(e)) => Some(format!("the last write failed ({e}); the next write retries")),
        (None, None) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mirror_refusing_every_second_is_said_once_a_minute_not_every_time() {
        let mut r = SessionRepeats::default();
        let t0 = Instant::now();
        let quick = Duration::from_millis(20);
        let why = "the mirror refused: the principal's log leaves this mirror's at LSN 5";
        assert!(!r.quiet());
        assert_eq!(
            r.ended(why, quick, t0).as_deref(),
            Some(format!("mirror session ended: {why}").as_str())
        );
        // The second attachment is still said; from then on, quiet.
        assert!(!r.quiet());
        let lines: Vec<String> = (1..=120u64)
            .filter_map(|s| r.ended(why, quick, t0 + Duration::from_secs(s)))
            .collect();
        assert!(r.quiet());
        assert_eq!(
            lines,
            vec![
                format!("mirror session ended 60 more times in 60 s: {why}"),
                format!("mirror session ended 60 more times in 60 s: {why}"),
            ]
        );
        // Something else ends it: said at once, with the unsaid repeats.
        r.ended(why, quick, t0 + Duration::from_secs(121));
        let line = r
            .ended(
                "stopped",
                Duration::from_secs(30),
                t0 + Duration::from_secs(160),
            )
            .expect("a new reason is said");
        assert_eq!(
            line,
            format!("mirror session ended: stopped (before it, 1 more ended: {why})")
        );
        assert!(!r.quiet());
    }
}
