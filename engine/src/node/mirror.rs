//! The mirror as a service: see the module above.

use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::apply::{Applier, ApplierThread};
use crate::log::{FsStorage, Log};
use crate::node::status::{NodeRole, Status};
use crate::node::{open_conn, NodeConfig, NodeError};
use crate::replication::handshake::random_nonce;
use crate::replication::history::EpochHistory;
use crate::replication::session::MirroringState;
use crate::replication::wire::Role;
use crate::transport::runner::{authenticate, serve_mirror, SessionStatus};

/// Reconnection backoff: doubles from the first to the last.
const BACKOFF_FIRST: Duration = Duration::from_millis(20);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

struct Shared<A: Applier> {
    log: Arc<Log<FsStorage>>,
    applier: ApplierThread<A>,
    cfg: NodeConfig,
    principal: SocketAddr,
    session: SessionStatus,
    stop: AtomicBool,
}

/// A running mirror. Dropping it stops it.
pub struct Mirror<A: Applier> {
    /// `None` only after `shutdown` took it.
    shared: Option<Arc<Shared<A>>>,
    thread: Option<JoinHandle<EpochHistory>>,
}

impl<A: Applier> Mirror<A> {
    /// Opens (recovering) the log in `cfg.dir`, starts `applier` at
    /// `applied_from` (what its state already reflects; `None`: the start
    /// of the log, for a state machine rebuilt from the log) and connects
    /// to the principal at `principal`, for as long as it runs.
    pub fn start(
        cfg: NodeConfig,
        principal: SocketAddr,
        applier: A,
        applied_from: Option<u64>,
    ) -> Result<Mirror<A>, NodeError> {
        let (log, report) = Log::open(&cfg.dir, cfg.log.clone())?;
        cfg.logger.line(&format!("mirrorlog[mirror]: {report}"));
        if let Some(cut) = &report.cut {
            cfg.logger.line(&format!(
                "mirrorlog[mirror]: recovery cut a torn tail at LSN {}..{} ({})",
                cut.from_lsn, cut.to_lsn, cut.reason
            ));
        }
        let history = EpochHistory::load(&cfg.dir)?;
        let log = Arc::new(log);
        let from = applied_from.unwrap_or(log.start_lsn());
        if from < log.start_lsn() || from > log.written_lsn() {
            return Err(NodeError::Config(format!(
                "the applier starts at LSN {from}, outside the log ({}..{})",
                log.start_lsn(),
                log.written_lsn()
            )));
        }
        let applier = ApplierThread::start(log.clone(), applier, from, cfg.apply.clone())?;
        let shared = Arc::new(Shared {
            log,
            applier,
            cfg,
            principal,
            session: SessionStatus::default(),
            stop: AtomicBool::new(false),
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("mirrorlog-receiver".into())
            .spawn(move || connect_loop(&s, history))
            .map_err(|source| NodeError::Io {
                context: "starting the receiver thread".into(),
                source,
            })?;
        Ok(Mirror {
            shared: Some(shared),
            thread: Some(thread),
        })
    }

    pub fn log(&self) -> &Arc<Log<FsStorage>> {
        &self.sh().log
    }

    pub fn applier(&self) -> &ApplierThread<A> {
        &self.sh().applier
    }

    pub fn status(&self) -> Status {
        let sh = self.sh();
        let snap = sh.session.snapshot();
        let redo = sh.applier.redo_queue();
        let applied = sh.applier.applied_lsn();
        Status {
            role: NodeRole::Mirror,
            state: if snap.connected {
                snap.state.unwrap_or(MirroringState::Synchronizing)
            } else {
                MirroringState::Disconnected
            },
            epoch: sh.log.last_epoch(),
            written_lsn: sh.log.written_lsn(),
            hardened_lsn: sh.log.hardened_lsn(),
            mirror: crate::replication::session::MirrorProgress {
                received: sh.log.written_lsn(),
                hardened: sh.log.hardened_lsn(),
                applied,
            },
            commit_lsn: snap.commit_lsn,
            send_queue_bytes: 0,
            send_queue_age: None,
            redo_queue_bytes: sh.log.hardened_lsn().saturating_sub(applied),
            redo_queue_time: redo.seconds.map(Duration::from_secs_f64),
            exposed: false,
            commits_held: false,
            exposed_for: None,
            transport: snap.path,
            zero_copy: snap.zero_copy,
            bytes_sent: snap.bytes_sent,
            raw_bytes: 0,
            log_bytes: 0,
            latency: Vec::new(),
            sessions: snap.sessions,
            last_error: snap.last_error,
        }
    }

    /// Stops the receiver and the applier; returns the applier.
    pub fn shutdown(mut self) -> A {
        self.stop();
        let shared = self.shared.take().expect("running");
        match Arc::try_unwrap(shared) {
            Ok(s) => s.applier.shutdown(),
            Err(_) => {
                unreachable!("the receiver thread was joined and held the only other reference")
            }
        }
    }

    fn sh(&self) -> &Shared<A> {
        self.shared.as_ref().expect("running")
    }

    fn stop(&mut self) {
        if let Some(sh) = &self.shared {
            sh.stop.store(true, Ordering::Release);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl<A: Applier> Drop for Mirror<A> {
    fn drop(&mut self) {
        self.stop();
    }
}

fn connect_loop<A: Applier>(sh: &Shared<A>, mut history: EpochHistory) -> EpochHistory {
    crate::affinity::pin_current(sh.cfg.sender_core);
    let log = &sh.cfg.logger;
    let mut backoff = BACKOFF_FIRST;
    let mut fallback_logged = false;
    let mut last_said = String::new();
    while !sh.stop.load(Ordering::Acquire) {
        let began = Instant::now();
        let why = (|| -> String {
            let stream = match TcpStream::connect_timeout(&sh.principal, Duration::from_secs(1)) {
                Ok(s) => s,
                Err(e) => return format!("connecting to the principal at {}: {e}", sh.principal),
            };
            let (mut conn, fell_back) = match open_conn(stream, sh.cfg.transport, sh.cfg.send_mode)
            {
                Ok(c) => c,
                Err(e) => return format!("setting up the {:?} transport: {e}", sh.cfg.transport),
            };
            if let (Some(why), false) = (fell_back, fallback_logged) {
                fallback_logged = true;
                log.line(&format!(
                    "mirrorlog[mirror]: io_uring is unavailable ({why}); using blocking sockets"
                ));
            }
            let nonce = match random_nonce() {
                Ok(n) => n,
                Err(e) => return format!("no randomness for a nonce: {e}"),
            };
            if let Err(e) = authenticate(
                conn.as_mut(),
                Role::Mirror,
                &sh.cfg.identity,
                sh.log.last_epoch(),
                nonce,
                Duration::from_millis(sh.cfg.session.partner_timeout_ms),
            ) {
                return format!("handshake with the principal failed: {e}");
            }
            log.line(&format!(
                "mirrorlog[mirror]: connected to the principal at {} over {}",
                sh.principal,
                conn.path()
            ));
            let why = serve_mirror(
                conn.as_mut(),
                &sh.log,
                &sh.applier,
                Some(&mut history),
                sh.cfg.session,
                &mut || sh.stop.load(Ordering::Acquire),
                &sh.session,
            );
            format!("session ended: {why}")
        })();
        if sh.stop.load(Ordering::Acquire) {
            break;
        }
        sh.session.update(|s| s.last_error = Some(why.clone()));
        // A session that lasted a while resets the backoff.
        if began.elapsed() > BACKOFF_MAX {
            backoff = BACKOFF_FIRST;
        }
        if why != last_said {
            log.line(&format!("mirrorlog[mirror]: {why}; retrying"));
            last_said = why;
        }
        let until = Instant::now() + backoff;
        while Instant::now() < until && !sh.stop.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(5));
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
    history
}
