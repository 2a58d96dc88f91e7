//! Nodes: a principal or a mirror as a running service, the way an embedder
//! (or the `mirrorlog` server) uses the engine.
//!
//! * [`Principal`] opens its log directory, starts a new epoch (recorded in
//!   `EPOCHS` before the first batch: see `replication::history`), runs
//!   group commit, listens for its mirror and runs one session at a time on
//!   a sender thread (pinnable). A newly authenticated mirror connection
//!   replaces a session that is still open (the old one may be half-dead).
//!   In safety `full`, while no mirror is attached, commits are
//!   acknowledged *exposed* (hardened here only; said in the status and on
//!   each `Committed`) until an optional exposure bound is reached, after
//!   which they are held until the mirror is back.
//! * [`Mirror`] opens its log directory, runs the applier, and connects to
//!   the principal, reconnecting with backoff for as long as it runs.
//!
//! Both pick the transport path from [`NodeConfig::transport`] and say which
//! one is in use (a fallback to blocking sockets is logged once).

mod mirror;
mod principal;
mod status;

pub use mirror::Mirror;
pub use principal::Principal;
pub use status::{LatencySummary, NodeRole, Status, WitnessView};

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;

use crate::apply::ApplyOptions;
use crate::commit::{CommitOptions, Level};
use crate::log::LogOptions;
use crate::replication::session::SessionConfig;
use crate::transport::blocking::BlockingConn;
use crate::transport::runner::NodeIdentity;
use crate::transport::tls::{PartnerTls, TlsConn, WitnessTls};
use crate::transport::uring::UringConn;
use crate::transport::{Conn, SendMode, TransportChoice};
use crate::witness::RefusalCode;

/// High-safety (synchronous) or high-performance (asynchronous) mirroring.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Safety {
    /// Commits are acknowledged once the mirror hardened them too
    /// (`remote-flush`).
    #[default]
    Full,
    /// Commits are acknowledged once hardened here (`local`); the mirror
    /// follows.
    Off,
}

impl Safety {
    pub fn default_level(self) -> Level {
        match self {
            Safety::Full => Level::RemoteFlush,
            Safety::Off => Level::Local,
        }
    }
}

impl std::str::FromStr for Safety {
    type Err = String;
    fn from_str(s: &str) -> Result<Safety, String> {
        match s {
            "full" => Ok(Safety::Full),
            "off" => Ok(Safety::Off),
            _ => Err(format!("unknown safety {s:?}: expected full or off")),
        }
    }
}

/// How long a principal in safety `full` may run without its mirror
/// before commits block instead of being acknowledged exposed. Unset
/// fields do not bound; both unset: exposed for as long as it takes (what
/// database mirroring does without a witness). Either set to zero: never
/// exposed (commits wait for the mirror).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExposureLimit {
    /// Log bytes hardened here beyond what the mirror last hardened (since
    /// start, without one). Enforced by every commit: none beyond the bound
    /// is ever acknowledged exposed.
    pub max_bytes: Option<u64>,
    /// Time since the mirror was lost (or since start without one).
    pub max_duration: Option<Duration>,
}

/// Everything a node needs to run.
#[derive(Clone)]
pub struct NodeConfig {
    /// The log directory (segments, `EPOCHS`, `LOCK`).
    pub dir: PathBuf,
    pub log: LogOptions,
    /// Group commit (principal); `default_level` is set from `safety`.
    pub commit: CommitOptions,
    pub apply: ApplyOptions,
    pub session: SessionConfig,
    pub identity: NodeIdentity,
    pub safety: Safety,
    pub exposure: ExposureLimit,
    pub transport: TransportChoice,
    pub send_mode: SendMode,
    /// Pin the session (sender) thread to this core.
    pub sender_core: Option<usize>,
    /// Where log lines go (default: standard error).
    pub logger: Logger,
    /// The witness, if there is one: the principal takes its epochs and
    /// leases from it, the mirror asks it for automatic failover.
    pub witness: Option<WitnessLink>,
    /// Principal: snapshots to reseed a mirror whose log is gone here
    /// (None: such a mirror is refused, `LogPurged`).
    pub snapshots: Option<SnapshotSource>,
    /// TLS on the partner link (both partners must have it, or neither).
    /// With it, sessions use `transport::tls` over blocking sockets
    /// whatever `transport` says (there is no io_uring TLS path).
    pub partner_tls: Option<PartnerTls>,
}

/// Where a principal gets the snapshot it reseeds a mirror from: the state
/// at some LSN of its log (a batch boundary) and its bytes, which the
/// mirror's [`crate::apply::Applier::restore`] understands; None if there
/// is none yet. The key-value server hands over its newest checkpoint.
pub type SnapshotSource = Arc<dyn Fn() -> Result<Option<(u64, Vec<u8>)>, String> + Send + Sync>;

/// How a node reaches its witness, and the name it is known by there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WitnessLink {
    pub addr: SocketAddr,
    /// This node's name at the witness: the address its partner reaches
    /// it on when it is principal (so a deposed node knows whom to
    /// follow).
    pub name: String,
    /// Mirror: ask for automatic failover (safety full only).
    pub auto_failover: bool,
    /// TLS to the witness (the witness must have it too, or neither).
    pub tls: Option<WitnessTls>,
}

/// A sink for the node's log lines.
#[derive(Clone)]
pub struct Logger(Arc<dyn Fn(&str) + Send + Sync>);

impl Logger {
    pub fn new(f: impl Fn(&str) + Send + Sync + 'static) -> Logger {
        Logger(Arc::new(f))
    }

    pub fn line(&self, s: &str) {
        (self.0)(s)
    }
}

impl Default for Logger {
    fn default() -> Logger {
        Logger::new(|s| eprintln!("{s}"))
    }
}

impl std::fmt::Debug for Logger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Logger")
    }
}

impl NodeConfig {
    /// A configuration with defaults for everything but the directory and
    /// the identity.
    pub fn new(dir: impl Into<PathBuf>, identity: NodeIdentity) -> NodeConfig {
        NodeConfig {
            dir: dir.into(),
            log: LogOptions::default(),
            commit: CommitOptions::default(),
            apply: ApplyOptions::default(),
            session: SessionConfig::default(),
            identity,
            safety: Safety::Full,
            exposure: ExposureLimit::default(),
            transport: TransportChoice::Auto,
            send_mode: SendMode::Auto,
            sender_core: None,
            logger: Logger::default(),
            witness: None,
            snapshots: None,
            partner_tls: None,
        }
    }
}

/// Why a node could not start.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum NodeError {
    #[error("opening the log: {0}")]
    Log(#[from] crate::log::OpenError),
    #[error("epoch history: {0}")]
    History(#[from] crate::replication::history::HistoryError),
    #[error("starting group commit: {0}")]
    Commit(#[from] crate::commit::StartError),
    #[error("starting the applier: {0}")]
    Apply(#[from] crate::apply::ApplyError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid configuration: {0}")]
    Config(String),
    /// `refusal`: the witness's code when it refused the claim (None: it
    /// did not answer, or answered something else); what callers branch
    /// on, e.g. [`RefusalCode::OtherPrincipal`]: start as its mirror.
    #[error("the witness did not make this node principal: {why}")]
    NotPrincipal {
        refusal: Option<RefusalCode>,
        why: String,
    },
}

/// Makes an existing data directory private (0700, files 0600), as an
/// older version may have left it 0755 with 0644 files; says so if it
/// changed anything. A missing directory is created private by the log.
pub(crate) fn tighten_dir(cfg: &NodeConfig, who: &str) {
    if cfg.dir.is_dir() {
        if let Some(line) = crate::private::tighten_and_say(&cfg.dir, who) {
            cfg.logger.line(&line);
        }
    }
}

/// Wraps a connected stream in the partner transport the configuration
/// asks for: over TLS (`accept`: this end is the principal), the TLS
/// handshake runs first, by `deadline` (`spoke`: the peer's first TLS
/// flight was whole, for the pre-auth gate); the second value is a line to log
/// once (an io_uring fallback, or that TLS uses blocking sockets).
pub(crate) fn open_partner_conn(
    stream: TcpStream,
    cfg: &NodeConfig,
    accept: bool,
    deadline: std::time::Instant,
    spoke: &dyn Fn(),
) -> Result<(Box<dyn Conn>, Option<String>), String> {
    let Some(tls) = &cfg.partner_tls else {
        return open_conn(stream, cfg.transport, cfg.send_mode)
            .map(|(c, why)| {
                (
                    c,
                    why.map(|w| format!("io_uring is unavailable ({w}); using blocking sockets")),
                )
            })
            .map_err(|e| format!("cannot set up the {:?} transport: {e}", cfg.transport));
    };
    let conn = if accept {
        TlsConn::accept(stream, tls, deadline, spoke)?
    } else {
        TlsConn::connect(stream, tls, deadline)?
    };
    let note = (cfg.transport != TransportChoice::Blocking).then(|| {
        "partner TLS runs over blocking sockets (there is no io_uring TLS path)".to_string()
    });
    Ok((Box::new(conn), note))
}

/// Wraps a connected stream in the configured transport. With `Auto`, an
/// io_uring set-up failure falls back to blocking sockets, and the reason
/// is returned for the caller to log (once).
pub(crate) fn open_conn(
    stream: TcpStream,
    choice: TransportChoice,
    mode: SendMode,
) -> Result<(Box<dyn Conn>, Option<String>), std::io::Error> {
    match choice {
        TransportChoice::Blocking => Ok((Box::new(BlockingConn::new(stream)?), None)),
        TransportChoice::IoUring => Ok((Box::new(UringConn::new(stream, mode)?), None)),
        TransportChoice::Auto => {
            if let Err(why) = crate::transport::uring::probe() {
                return Ok((Box::new(BlockingConn::new(stream)?), Some(why)));
            }
            let fallback = stream.try_clone()?;
            match UringConn::new(stream, mode) {
                Ok(c) => Ok((Box::new(c), None)),
                Err(e) => Ok((Box::new(BlockingConn::new(fallback)?), Some(e.to_string()))),
            }
        }
    }
}
