//! The mirror as a service: see the module above.

use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::apply::{Applier, ApplierThread};
use crate::log::{FsStorage, Log};
use crate::node::status::{NodeRole, Status, WitnessView};
use crate::node::{open_partner_conn, tighten_dir, NodeConfig, NodeError};
use crate::replication::handshake::random_nonce;
use crate::replication::history::EpochHistory;
use crate::replication::session::MirroringState;
use crate::replication::wire::Role;
use crate::transport::preauth::preauth_deadline;
use crate::transport::runner::{authenticate, serve_mirror, SessionStatus};
use crate::witness::client::WitnessClient;
use crate::witness::proto::{Reply, Request};
use crate::witness::RefusalCode;

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
    /// The principal's epoch, as its last handshake said (0: never met).
    principal_epoch: AtomicU64,
    witness: Option<Mutex<WitnessView>>,
    /// Set once this mirror was made principal; the receiver has stopped.
    promoted: Mutex<Option<Promotion>>,
    force: Mutex<Force>,
}

/// This mirror became principal of `epoch`: shut it down and start a
/// [`crate::node::Principal`] on the same directory with
/// [`crate::node::Principal::start_in_epoch`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Promotion {
    pub epoch: u64,
    /// Forced service: commits the old principal acknowledged may be lost.
    pub forced: bool,
    /// Forced service: log bytes the old principal had written beyond what
    /// this mirror hardened, as far as its last heartbeat told (None: it
    /// never told). Automatic failover loses nothing acknowledged.
    pub loss_bound_bytes: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Force {
    None,
    Asked,
    Refused(String),
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
        tighten_dir(&cfg, "mirrorlog[mirror]");
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
        let ahead = from > log.written_lsn();
        if ahead {
            // The state machine is ahead of the whole log: only a reseed
            // does that (it installs the snapshot, then restarts the log at
            // its LSN), interrupted before the log restarted. The old log
            // is of no use: empty it; the principal ships from its start
            // (the applier resumes at `from` once the log passes it) or
            // reseeds again.
            log.reset(0, None).map_err(|e| {
                NodeError::Config(format!("emptying the log after an interrupted reseed: {e}"))
            })?;
            cfg.logger.line(&format!(
                "mirrorlog[mirror]: the state machine is at LSN {from}, beyond the log: a reseed was interrupted; the log is emptied and fetched again"
            ));
        }
        if from < log.start_lsn() || (from > log.written_lsn() && !ahead) {
            return Err(NodeError::Config(format!(
                "the applier starts at LSN {from}, outside the log ({}..{})",
                log.start_lsn(),
                log.written_lsn()
            )));
        }
        let applier = ApplierThread::start(log.clone(), applier, from, cfg.apply.clone())?;
        let cfg_for_view = cfg.witness.clone();
        let shared = Arc::new(Shared {
            log,
            applier,
            cfg,
            principal,
            session: SessionStatus::default(),
            stop: AtomicBool::new(false),
            principal_epoch: AtomicU64::new(0),
            witness: cfg_witness_view(&cfg_for_view),
            promoted: Mutex::new(None),
            force: Mutex::new(Force::None),
        });
        shared.session.set_logger(shared.cfg.logger.clone());
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

    /// The principal's partner address this mirror connects to.
    pub fn principal_addr(&self) -> SocketAddr {
        self.sh().principal
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
            stored_bytes: 0,
            latency: Vec::new(),
            sessions: snap.sessions,
            last_error: snap.last_error,
            preauth_rejected: 0,
            reseed: snap.reseed,
            witness: sh
                .witness
                .as_ref()
                .map(|w| w.lock().expect("witness view").clone()),
            log_error: crate::node::principal::log_error(sh.log.poisoned(), None),
        }
    }

    /// Set once the witness (or forced service) made this mirror
    /// principal: it no longer receives; see [`Promotion`].
    pub fn promoted(&self) -> Option<Promotion> {
        self.sh().promoted.lock().expect("promoted").clone()
    }

    /// Forced service: makes this mirror principal of a new epoch while
    /// its principal is gone, accepting the loss of whatever the principal
    /// acknowledged that this mirror lacks (the returned promotion says
    /// how much that may be). With a witness the new epoch is its grant
    /// (it still waits out the old principal's lease, so the two never
    /// accept commits at once); without one it is this node's own word,
    /// and the operator answers for the old principal being down.
    /// Refused while the principal is connected (use a manual failover).
    pub fn force_service(&self, timeout: Duration) -> Result<Promotion, String> {
        let sh = self.sh();
        if sh.session.snapshot().connected {
            return Err(
                "the principal is connected: forced service is for when it is gone (a manual failover loses nothing)"
                    .into(),
            );
        }
        *sh.force.lock().expect("force") = Force::Asked;
        let until = Instant::now() + timeout;
        loop {
            if let Some(p) = self.promoted() {
                return Ok(p);
            }
            if let Force::Refused(why) = &*sh.force.lock().expect("force") {
                return Err(why.clone());
            }
            if Instant::now() >= until {
                *sh.force.lock().expect("force") = Force::None;
                return Err(format!("no grant within {timeout:?}"));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// After a [`Promotion`]: stops the receiver and the applier and starts
    /// a principal of the granted epoch on the same log, handed over open
    /// (no second recovery scan), listening for a mirror on `listen`.
    /// Returns it and the state machine, which reflects the log up to
    /// `applier_lsn` (the principal applies nothing: bring the state up to
    /// the log's end from there).
    pub fn into_principal(
        mut self,
        listen: SocketAddr,
    ) -> Result<(crate::node::Principal, A, u64), NodeError> {
        let p = self
            .promoted()
            .ok_or_else(|| NodeError::Config("this mirror was not promoted".into()))?;
        self.stop();
        let shared = self.shared.take().expect("running");
        let Ok(sh) = Arc::try_unwrap(shared) else {
            unreachable!("the receiver thread was joined and held the only other reference")
        };
        // Stopped first: the batch in progress finishes, then the LSN is
        // read (reading it before could name one batch too few).
        let (applier, applied) = sh.applier.shutdown_at();
        let principal = crate::node::Principal::open(sh.cfg, listen, Some(p.epoch), Some(sh.log))?;
        Ok((principal, applier, applied))
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
    let mut promote = Promoter::new(sh);
    // The highest commit LSN a principal told this mirror, over all its
    // sessions (`MirrorSession::new`): in memory only, so a new start (and
    // a deposed principal that rejoins as mirror) begins at 0.
    let mut commit_floor = 0u64;
    while !sh.stop.load(Ordering::Acquire) {
        if promote.uncertain {
            if let Some(p) = promote.settle(sh, &history) {
                log.line(&format!(
                    "mirrorlog[mirror]: the witness had granted this node epoch {} (its answer was lost): now principal",
                    p.epoch
                ));
                *sh.promoted.lock().expect("promoted") = Some(p);
                return history;
            }
            if promote.uncertain {
                // Not settled: follow nobody yet.
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        }
        let began = Instant::now();
        let why = (|| -> String {
            let stream = match TcpStream::connect_timeout(&sh.principal, Duration::from_secs(1)) {
                Ok(s) => s,
                Err(e) => return format!("connecting to the principal at {}: {e}", sh.principal),
            };
            // The TLS handshake and the PAKE share the principal's
            // pre-auth deadline.
            let until = Instant::now()
                + preauth_deadline(Duration::from_millis(sh.cfg.session.partner_timeout_ms));
            let (mut conn, note) = match open_partner_conn(stream, &sh.cfg, false, until, &|| {}) {
                Ok(c) => c,
                Err(e) => return format!("connecting to the principal at {}: {e}", sh.principal),
            };
            if let (Some(note), false) = (note, fallback_logged) {
                fallback_logged = true;
                log.line(&format!("mirrorlog[mirror]: {note}"));
            }
            let nonce = match random_nonce() {
                Ok(n) => n,
                Err(e) => return format!("no randomness for a nonce: {e}"),
            };
            match authenticate(
                conn.as_mut(),
                Role::Mirror,
                &sh.cfg.identity,
                sh.log.last_epoch(),
                nonce,
                // The principal closes a connection that has not
                // authenticated by then; waiting longer is pointless.
                until.saturating_duration_since(Instant::now()),
                sh.cfg.log.segment_bytes as u64,
            ) {
                Ok(epoch) => sh.principal_epoch.store(epoch, Ordering::Release),
                Err(e) => return format!("handshake with the principal failed: {e}"),
            }
            if matches!(*sh.force.lock().expect("force"), Force::Asked) {
                *sh.force.lock().expect("force") =
                    Force::Refused("the principal came back: forced service was not needed".into());
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
                &mut commit_floor,
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
            if promote.due(sh) {
                if let Some(p) = promote.attempt(sh, &history) {
                    log.line(&format!(
                        "mirrorlog[mirror]: this node is now principal of epoch {} ({})",
                        p.epoch,
                        if p.forced {
                            match p.loss_bound_bytes {
                                Some(b) => format!("forced service: up to {b} bytes the old principal wrote may be lost"),
                                None => "forced service: the old principal never said how far it wrote; what it acknowledged beyond this node's log is lost".into(),
                            }
                        } else {
                            "automatic failover: nothing acknowledged is lost".into()
                        }
                    ));
                    *sh.promoted.lock().expect("promoted") = Some(p);
                    return history;
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
    history
}

fn cfg_witness_view(link: &Option<crate::node::WitnessLink>) -> Option<Mutex<WitnessView>> {
    link.as_ref().map(|w| {
        Mutex::new(WitnessView {
            addr: w.addr.to_string(),
            ..WitnessView::default()
        })
    })
}

/// How often a mirror that may take over asks the witness.
const PROMOTE_EVERY: Duration = Duration::from_millis(50);

/// The mirror's failover attempts while its principal is gone.
struct Promoter {
    client: Option<WitnessClient>,
    /// When the last session ended (None: connected, or never was).
    lost_since: Option<Instant>,
    last_try: Option<Instant>,
    last_said: String,
    /// A promotion request got no answer: it may have been granted.
    uncertain: bool,
    /// Sessions counted when the loss was last timed.
    seen_sessions: u64,
}

impl Promoter {
    fn new<A: Applier>(sh: &Shared<A>) -> Promoter {
        Promoter {
            client: sh.cfg.witness.as_ref().map(|w| {
                WitnessClient::new(w.addr, sh.cfg.identity.secret.clone()).with_tls(w.tls.clone())
            }),
            lost_since: None,
            last_try: None,
            last_said: String::new(),
            // A mirror that starts with a witness first asks it whether
            // it is principal: a grant whose answer a crash (or a failed
            // hand-over) lost would otherwise be forgotten, and it would
            // follow the old principal again.
            uncertain: sh.cfg.witness.is_some(),
            seen_sessions: 0,
        }
    }

    /// Whether to ask now: forced service was asked for, or automatic
    /// failover applies (a witness, the last session ended SYNCHRONIZED,
    /// and the principal has been gone for the partner timeout).
    fn due<A: Applier>(&mut self, sh: &Shared<A>) -> bool {
        let snap = sh.session.snapshot();
        if snap.connected {
            self.lost_since = None;
            return false;
        }
        // The loss is timed from the end of the latest session (this is
        // only called while disconnected, so a new session shows as a new
        // count).
        if snap.sessions > 0 && snap.sessions != self.seen_sessions {
            self.seen_sessions = snap.sessions;
            self.lost_since = Some(Instant::now());
        }
        if self.last_try.is_some_and(|t| t.elapsed() < PROMOTE_EVERY) {
            return false;
        }
        if matches!(*sh.force.lock().expect("force"), Force::Asked) || snap.handed_over {
            return true;
        }
        let auto = sh.cfg.witness.as_ref().is_some_and(|w| w.auto_failover);
        let timeout = Duration::from_millis(sh.cfg.session.partner_timeout_ms);
        auto && snap.ended_synchronized && self.lost_since.is_some_and(|t| t.elapsed() >= timeout)
    }

    fn attempt<A: Applier>(&mut self, sh: &Shared<A>, history: &EpochHistory) -> Option<Promotion> {
        self.last_try = Some(Instant::now());
        let snap = sh.session.snapshot();
        let forced = matches!(*sh.force.lock().expect("force"), Force::Asked) && !snap.handed_over;
        let loss = (snap.principal_written > 0)
            .then(|| snap.principal_written.saturating_sub(sh.log.hardened_lsn()));
        let promotion = |epoch| Promotion {
            epoch,
            forced,
            loss_bound_bytes: if forced { loss } else { Some(0) },
        };
        let last_local = history.last_epoch().max(sh.log.last_epoch());
        let principal_epoch = sh.principal_epoch.load(Ordering::Acquire).max(last_local);
        let (Some(client), Some(link)) = (self.client.as_mut(), sh.cfg.witness.as_ref()) else {
            // No witness: a handover or forced service is this node's own
            // word.
            return (forced || snap.handed_over).then(|| promotion(principal_epoch + 1));
        };
        let db = sh.cfg.identity.database_id;
        let timeout = Duration::from_millis(sh.cfg.session.partner_timeout_ms);
        // A grant whose reply was lost shows as this node being principal.
        let current = match client.call(&Request::Query { database_id: db }, timeout) {
            Ok(Reply::State {
                epoch, principal, ..
            }) => {
                if principal.as_deref() == Some(link.name.as_str()) && epoch > last_local {
                    return Some(promotion(epoch));
                }
                epoch
            }
            Ok(other) => {
                self.say(sh, format!("the witness answered a query with {other:?}"));
                return None;
            }
            Err(e) => {
                self.say(sh, e);
                return None;
            }
        };
        // Automatic failover is for the epoch this mirror followed; forced
        // service takes over whatever epoch is current.
        let epoch = if forced { current } else { principal_epoch };
        let req = Request::Promote {
            database_id: db,
            name: link.name.clone(),
            epoch,
            synchronized: snap.ended_synchronized,
            forced,
        };
        match client.call(&req, timeout) {
            Ok(Reply::Granted { epoch: granted }) => {
                let mut p = promotion(granted);
                // The bound holds only for the principal this mirror last
                // streamed from: if the epoch replaced is another one (this
                // node restarted, or followed an older epoch), what that
                // principal wrote is not known here.
                if forced && epoch != sh.principal_epoch.load(Ordering::Acquire) {
                    p.loss_bound_bytes = None;
                }
                Some(p)
            }
            Ok(Reply::Refused { code, why }) => {
                // A live lease only delays forced service: it asks again.
                if forced && code != RefusalCode::LeaseLive {
                    *sh.force.lock().expect("force") = Force::Refused(why.clone());
                }
                self.say(sh, format!("the witness refused the failover: {why}"));
                None
            }
            Ok(other) => {
                self.say(
                    sh,
                    format!("the witness answered a promotion with {other:?}"),
                );
                None
            }
            Err(e) => {
                // The witness may have granted it and the reply been lost:
                // until a query settles that, this mirror follows nobody.
                self.uncertain = true;
                self.say(sh, e);
                None
            }
        }
    }

    /// After a promotion whose answer was lost: asks the witness whether
    /// it was granted. `Some`: it was; `None` and still `uncertain`: the
    /// witness did not answer (do not follow the old principal meanwhile).
    fn settle<A: Applier>(&mut self, sh: &Shared<A>, history: &EpochHistory) -> Option<Promotion> {
        let (Some(client), Some(link)) = (self.client.as_mut(), sh.cfg.witness.as_ref()) else {
            self.uncertain = false;
            return None;
        };
        let last_local = history.last_epoch().max(sh.log.last_epoch());
        let timeout = Duration::from_millis(sh.cfg.session.partner_timeout_ms);
        match client.call(
            &Request::Query {
                database_id: sh.cfg.identity.database_id,
            },
            timeout,
        ) {
            Ok(Reply::State {
                epoch, principal, ..
            }) => {
                self.uncertain = false;
                if let Some(v) = &sh.witness {
                    let mut v = v.lock().expect("witness view");
                    v.contacted = true;
                    v.connected = true;
                }
                (principal.as_deref() == Some(link.name.as_str()) && epoch > last_local).then_some(
                    Promotion {
                        epoch,
                        forced: false,
                        loss_bound_bytes: None,
                    },
                )
            }
            Ok(_) => {
                self.uncertain = false;
                None
            }
            Err(e) => {
                self.say(sh, e);
                None
            }
        }
    }

    fn say<A: Applier>(&mut self, sh: &Shared<A>, what: String) {
        if let Some(v) = &sh.witness {
            let mut v = v.lock().expect("witness view");
            v.contacted = true;
            v.connected =
                !what.contains("witness at") && !what.contains("reading from the witness");
            v.failover = Some(what.clone());
        }
        // The lease countdown changes every attempt; say each new reason
        // once, not every 50 ms.
        let key: String = what.chars().filter(|c| !c.is_ascii_digit()).collect();
        if key != self.last_said {
            sh.cfg.logger.line(&format!("mirrorlog[mirror]: {what}"));
            self.last_said = key;
        }
    }
}
