//! The principal as a service: see the module above.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::commit::{CommitError, Committed, Detached, GroupCommit, Level, Ticket};
use crate::log::{FsStorage, Log};
use crate::node::status::{LagClock, LatencySummary, NodeRole, Status};
use crate::node::{open_conn, NodeConfig, NodeError, Safety};
use crate::replication::handshake::random_nonce;
use crate::replication::history::EpochHistory;
use crate::replication::session::MirroringState;
use crate::replication::wire::Role;
use crate::transport::runner::{authenticate, serve_principal, SessionStatus};
use crate::transport::Conn;

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
    stop: AtomicBool,
    /// The newest authenticated connection, handed to the sender thread.
    /// Supervisor state, read by `status`.
    watch: Mutex<Watch>,
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
    pub fn start(mut cfg: NodeConfig, listen: SocketAddr) -> Result<Principal, NodeError> {
        if let Some(core) = cfg.sender_core {
            crate::affinity::check_core("sender core", core).map_err(NodeError::Config)?;
        }
        let (log, report) = Log::open(&cfg.dir, cfg.log.clone())?;
        cfg.logger.line(&format!("mirrorlog[principal]: {report}"));
        if let Some(cut) = &report.cut {
            cfg.logger.line(&format!(
                "mirrorlog[principal]: recovery cut a torn tail at LSN {}..{} ({}); it was never acknowledged",
                cut.from_lsn, cut.to_lsn, cut.reason
            ));
        }
        let mut history = EpochHistory::load(&cfg.dir)?;
        // Every incarnation is a new epoch (docs/design.md): recorded before
        // the first batch of it is written.
        let epoch = history.last_epoch().max(log.last_epoch()) + 1;
        history.begin(epoch, log.written_lsn())?;
        cfg.commit.default_level = cfg.safety.default_level();
        let gc = GroupCommit::start(Arc::new(log), cfg.commit.clone())?;
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
            stop: AtomicBool::new(false),
            watch: Mutex::new(Watch {
                lag: LagClock::new(),
                detached_since: Some((Instant::now(), hardened)),
                held: !exposed_ok,
                send_queue_age: None,
            }),
            cfg,
        });
        shared.cfg.logger.line(&format!(
            "mirrorlog[principal]: epoch {epoch}, log {}..{}, listening for the mirror on {local_addr}",
            shared.gc.log().start_lsn(),
            shared.gc.log().written_lsn()
        ));
        let (tx, rx) = mpsc::channel::<Box<dyn Conn>>();
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
            latency: Level::ALL
                .iter()
                .map(|&l| LatencySummary::of(l, &gc.latency_ns(l)))
                .collect(),
            sessions: snap.sessions,
            last_error: snap.last_error,
        }
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
    }
}

impl Drop for Principal {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Accepts mirror connections, authenticates them and hands each to the
/// sender thread (which drops the session it had, if any).
fn accept_loop(sh: &Arc<Shared>, listener: TcpListener, tx: mpsc::Sender<Box<dyn Conn>>) {
    let handshakes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let log = &sh.cfg.logger;
    let mut fallback_logged = false;
    while !sh.stop.load(Ordering::Acquire) {
        let (stream, peer) = match listener.accept() {
            Ok(x) => x,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            Err(e) => {
                log.line(&format!("mirrorlog[principal]: accept failed: {e}"));
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        if let Err(e) = prepare(&stream) {
            log.line(&format!(
                "mirrorlog[principal]: connection from {peer}: {e}"
            ));
            continue;
        }
        let (conn, why) = match open_conn(stream, sh.cfg.transport, sh.cfg.send_mode) {
            Ok(c) => c,
            Err(e) => {
                log.line(&format!(
                    "mirrorlog[principal]: connection from {peer}: cannot set up the {:?} transport: {e}",
                    sh.cfg.transport
                ));
                continue;
            }
        };
        if let (Some(why), false) = (why, fallback_logged) {
            fallback_logged = true;
            log.line(&format!(
                "mirrorlog[principal]: io_uring is unavailable ({why}); using blocking sockets"
            ));
        }
        // Each handshake on its own thread, so a peer that connects and
        // says nothing cannot keep the real mirror waiting behind it.
        if handshakes.load(Ordering::Acquire) >= HANDSHAKES_MAX {
            log.line(&format!(
                "mirrorlog[principal]: refused {peer}: {HANDSHAKES_MAX} handshakes already in progress"
            ));
            continue;
        }
        handshakes.fetch_add(1, Ordering::AcqRel);
        let (sh, tx, handshakes) = (sh.clone(), tx.clone(), handshakes.clone());
        let spawned = std::thread::Builder::new()
            .name("mirrorlog-handshake".into())
            .spawn(move || {
                handshake(&sh, conn, peer, &tx);
                handshakes.fetch_sub(1, Ordering::AcqRel);
            });
        if spawned.is_err() {
            log.line("mirrorlog[principal]: could not start a handshake thread");
        }
    }
}

/// At most this many partner handshakes run at once; more connections are
/// closed at once.
const HANDSHAKES_MAX: usize = 16;

fn handshake(
    sh: &Shared,
    mut conn: Box<dyn Conn>,
    peer: std::net::SocketAddr,
    tx: &mpsc::Sender<Box<dyn Conn>>,
) {
    let log = &sh.cfg.logger;
    let nonce = match random_nonce() {
        Ok(n) => n,
        Err(e) => {
            log.line(&format!(
                "mirrorlog[principal]: no randomness for a nonce: {e}"
            ));
            return;
        }
    };
    match authenticate(
        conn.as_mut(),
        Role::Principal,
        &sh.cfg.identity,
        sh.epoch,
        nonce,
        Duration::from_millis(sh.cfg.session.partner_timeout_ms),
    ) {
        Ok(()) => {
            let _ = tx.send(conn);
        }
        Err(e) => {
            log.line(&format!("mirrorlog[principal]: refused {peer}: {e}"));
            sh.session
                .update(|s| s.last_error = Some(format!("refused {peer}: {e}")));
        }
    }
}

fn prepare(stream: &TcpStream) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_nodelay(true)
}

/// Runs sessions one at a time; a newer connection replaces the current one.
fn sender_loop(sh: &Shared, rx: mpsc::Receiver<Box<dyn Conn>>) {
    crate::affinity::pin_current(sh.cfg.sender_core);
    let log = &sh.cfg.logger;
    let mut next: Option<Box<dyn Conn>> = None;
    while !sh.stop.load(Ordering::Acquire) {
        let mut conn = match next.take() {
            Some(c) => c,
            None => match rx.recv_timeout(Duration::from_millis(20)) {
                Ok(c) => c,
                Err(mpsc::RecvTimeoutError::Timeout) => continue,
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            },
        };
        let path = conn.path();
        log.line(&format!(
            "mirrorlog[principal]: mirror attached over {path}"
        ));
        let preempt = || -> bool {
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
        let mut preempt = preempt;
        let why = serve_principal(
            conn.as_mut(),
            &sh.gc,
            &sh.history,
            sh.cfg.session,
            &mut preempt,
            &sh.session,
        );
        log.line(&format!(
            "mirrorlog[principal]: mirror session ended: {why}"
        ));
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
