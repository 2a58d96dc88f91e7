//! The witness service: one thread per partner connection (a handful), a
//! [`WitnessCore`] behind a lock, and its state stored durably (file
//! `WITNESS`, `state`) before any reply that depends on a change.

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::node::Logger;
use crate::replication::handshake::{random_nonce, Secret};
use crate::transport::preauth::{
    preauth_deadline, PreAuthGate, PreAuthLimits, PreAuthSlot, NO_SOURCE,
};
use crate::transport::tls::{TlsEnd, TlsStream};
use crate::witness::proto::{
    read_frame, End, Reply, Request, WitnessHandshake, WitnessStream, HELLO_BYTES,
    PLAINTEXT_PEER_ALERT, WITNESS_CONFIRM_BYTES,
};
use crate::witness::state::{StateError, WitnessState};
use crate::witness::{LeaseConfig, PromoteReply, RefusalCode, RenewReply, WitnessCore};

/// At most this many authenticated partner connections at once (two
/// partners, their reconnects, an admin or two). Connections not yet
/// authenticated are bounded by the pre-auth gate instead.
const CONNECTIONS_MAX: usize = 64;
/// A connection silent this long is closed (partners renew far more often).
const IDLE: Duration = Duration::from_secs(60);

#[derive(Clone, Debug)]
pub struct WitnessOptions {
    /// Where `WITNESS` lives (created if missing).
    pub dir: PathBuf,
    pub listen: SocketAddr,
    pub secret: Secret,
    pub database_id: [u8; 16],
    pub lease: LeaseConfig,
    pub logger: Logger,
    /// TLS on the witness port: partners must present a certificate the
    /// configuration's CA signed (`TlsIdentity::server_config`). None:
    /// plaintext.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

struct Shared {
    core: Mutex<WitnessCore>,
    opts: WitnessOptions,
    started: Instant,
    stop: AtomicBool,
    /// Authenticated connections open.
    connections: AtomicUsize,
    /// Connections that have not authenticated yet.
    preauth: Arc<PreAuthGate>,
    /// min(lease, 2 s): the nonce and the first request come by then.
    preauth_deadline: Duration,
    /// The directory's `LOCK` (flock), held while this witness lives.
    _lock: std::fs::File,
}

/// What of the core is kept in `WITNESS`.
fn durable_state(c: &WitnessCore) -> WitnessState {
    WitnessState {
        epoch: c.epoch,
        principal: c.principal.clone(),
        exposed: c.exposed,
        resigned: c.resigned,
        claims: c.claims.clone(),
    }
}

/// Takes the exclusive lock (flock) on `LOCK` in the witness directory,
/// as `FsStorage::open` does for a log directory.
fn lock_dir(dir: &std::path::Path) -> Result<std::fs::File, String> {
    let path = dir.join(crate::log::storage::LOCK_FILE);
    let f = crate::private::file_options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| format!("opening {}: {e}", path.display()))?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(std::fs::TryLockError::WouldBlock) => Err(format!(
            "witness directory {} is in use: another witness holds its {} file",
            dir.display(),
            crate::log::storage::LOCK_FILE
        )),
        Err(std::fs::TryLockError::Error(e)) => Err(format!("locking {}: {e}", path.display())),
    }
}

/// A running witness. Dropping it stops it.
pub struct WitnessServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    thread: Option<JoinHandle<()>>,
}

impl WitnessServer {
    pub fn start(opts: WitnessOptions) -> Result<WitnessServer, String> {
        if !(opts.lease.rho >= 0.0 && opts.lease.rho < 0.5) {
            return Err(format!(
                "clock-rate bound {} is outside [0, 0.5)",
                opts.lease.rho
            ));
        }
        if opts.lease.lease_ms == 0 {
            return Err("the lease must be longer than 0 ms".into());
        }
        crate::private::create_dir_all(&opts.dir)
            .map_err(|e| format!("creating {}: {e}", opts.dir.display()))?;
        if let Some(line) = crate::private::tighten_and_say(&opts.dir, "mirrorlog[witness]") {
            opts.logger.line(&line);
        }
        // One witness per directory, like one log per log directory: two
        // witnesses on one `WITNESS` file would each grant epochs from
        // their own copy of it in memory (two principals).
        let lock = lock_dir(&opts.dir)?;
        let st = WitnessState::load(&opts.dir).map_err(|e| e.to_string())?;
        let listener = TcpListener::bind(opts.listen)
            .map_err(|e| format!("listening on {}: {e}", opts.listen))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        listener
            .set_nonblocking(true)
            .map_err(|e| format!("setting the listener non-blocking: {e}"))?;
        opts.logger.line(&format!(
            "mirrorlog[witness]: epoch {}, principal {}, exposed {}; lease {} ms, clock-rate bound {}; listening on {addr}",
            st.epoch,
            st.principal.as_deref().unwrap_or("none"),
            st.exposed,
            opts.lease.lease_ms,
            opts.lease.rho
        ));
        let started = Instant::now();
        let opts_lease_ms = opts.lease.lease_ms;
        let mut core = WitnessCore::new(opts.lease, 0, st.epoch, st.principal, st.exposed);
        core.resigned = st.resigned;
        core.claims = st.claims;
        let shared = Arc::new(Shared {
            core: Mutex::new(core),
            opts,
            started,
            stop: AtomicBool::new(false),
            connections: AtomicUsize::new(0),
            preauth: PreAuthGate::new(PreAuthLimits::default(), "mirrorlog[witness]"),
            preauth_deadline: preauth_deadline(Duration::from_millis(opts_lease_ms)),
            _lock: lock,
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("mirrorlog-witness".into())
            .spawn(move || accept_loop(&s, listener))
            .map_err(|e| format!("starting the witness thread: {e}"))?;
        Ok(WitnessServer {
            shared,
            addr,
            thread: Some(thread),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections closed before they authenticated (failed, timed out,
    /// or closed to make room during a flood).
    pub fn preauth_rejected(&self) -> u64 {
        self.shared.preauth.rejected()
    }

    /// The current epoch, principal and exposed flag.
    pub fn state(&self) -> WitnessState {
        durable_state(&self.shared.core.lock().expect("witness lock"))
    }

    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for WitnessServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Accepts partner connections, each served on its own thread. Until a
/// connection's first request authenticates it, it is in the pre-auth gate
/// (`transport::preauth`): a deadline of min(lease, 2 s), per-source and
/// total limits that close the oldest rather than refuse the newest, and
/// rate-limited warnings. So silent connections can no longer keep the
/// partners out (64 of them used to fill every slot).
fn accept_loop(sh: &Arc<Shared>, listener: TcpListener) {
    let log = &sh.opts.logger;
    while !sh.stop.load(Ordering::Acquire) {
        sh.preauth.summarize(log);
        let (stream, peer) = match listener.accept() {
            Ok(x) => x,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            Err(e) => {
                sh.preauth.warn(NO_SOURCE, log, || {
                    format!("mirrorlog[witness]: accept failed: {e}")
                });
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let mut slot = match sh.preauth.admit(&stream, peer) {
            Ok(s) => Some(s),
            Err(e) => {
                sh.preauth.warn(peer.ip(), log, || {
                    format!("mirrorlog[witness]: refused {peer} before authentication: {e}")
                });
                continue;
            }
        };
        let s = sh.clone();
        let spawned = std::thread::Builder::new()
            .name("mirrorlog-witness-conn".into())
            .spawn(move || {
                let r = serve_conn(&s, stream, &mut slot);
                match (r, slot) {
                    // Not authenticated: a pre-auth rejection (counted when
                    // the slot drops), logged rate-limited; a clean close
                    // before any request is one too.
                    (r, Some(slot)) => {
                        let why = slot.failure(match &r {
                            Err(e) if !e.is_empty() => e,
                            _ => "closed before authenticating",
                        });
                        s.preauth.warn(peer.ip(), &s.opts.logger, || {
                            format!(
                                "mirrorlog[witness]: refused {peer} before authentication: {why}"
                            )
                        });
                    }
                    (Err(e), None) if !e.is_empty() => {
                        s.opts
                            .logger
                            .line(&format!("mirrorlog[witness]: {peer}: {e}"));
                    }
                    _ => {}
                }
            });
        if let Err(e) = spawned {
            sh.preauth.warn(peer.ip(), log, || {
                format!("mirrorlog[witness]: refused {peer} before authentication: could not start a thread: {e}")
            });
        }
    }
}

/// Serves one connection until it closes. An empty error: it closed
/// normally (or went idle). `slot` is taken (the connection leaves the
/// pre-auth gate) once the first request authenticated; until then the
/// pre-auth deadline applies.
fn serve_conn(
    sh: &Shared,
    stream: TcpStream,
    slot: &mut Option<PreAuthSlot>,
) -> Result<(), String> {
    let preauth_until = Instant::now() + sh.preauth_deadline;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    // TLS first, within the same pre-auth deadline as the PAKE.
    let mut stream = match &sh.opts.tls {
        None => WitnessStream::Plain(stream),
        Some(cfg) => {
            let probe = stream.try_clone().map_err(|e| e.to_string())?;
            match TlsStream::handshake(
                stream,
                TlsEnd::Accept(cfg),
                preauth_until,
                "partner",
                "this witness requires TLS",
                &|| {
                    if let Some(s) = slot.as_ref() {
                        s.spoke()
                    }
                },
            ) {
                Ok(t) => WitnessStream::Tls(Box::new(t)),
                Err(f) => {
                    if f.plaintext_peer {
                        let _ = probe.set_nonblocking(false);
                        let _ = probe.set_write_timeout(Some(Duration::from_millis(200)));
                        let _ = (&probe).write_all(&PLAINTEXT_PEER_ALERT);
                        return Err(
                            "the partner speaks the plaintext witness protocol, but this witness requires TLS \
                             (--tls-cert, --tls-key, --tls-ca); give the partners --witness-tls-ca with \
                             --partner-tls-cert and --partner-tls-key"
                                .into(),
                        );
                    }
                    return Err(f.why);
                }
            }
        }
    };
    // Until authenticated, reads wait at most until the pre-auth deadline.
    let read_wait = |stream: &WitnessStream, authenticated: bool| {
        let wait = if authenticated {
            Duration::from_millis(200)
        } else {
            preauth_until
                .saturating_duration_since(Instant::now())
                .clamp(Duration::from_millis(1), Duration::from_millis(200))
        };
        stream
            .sock()
            .set_read_timeout(Some(wait))
            .map_err(|e| e.to_string())
    };
    stream
        .sock()
        .set_nonblocking(false)
        .map_err(|e| e.to_string())?;
    // Short reads so a stop is noticed; idleness is counted across them.
    read_wait(&stream, false)?;
    stream
        .sock()
        .set_write_timeout(Some(sh.preauth_deadline))
        .map_err(|e| e.to_string())?;
    let nonce = random_nonce().map_err(|e| format!("no randomness for a nonce: {e}"))?;
    let seed = crate::replication::pake::random_seed()
        .map_err(|e| format!("no randomness for the key exchange: {e}"))?;
    let mut hs = WitnessHandshake::start(End::Witness, &sh.opts.secret, nonce, seed);
    hs.bind_channel(stream.binding());
    stream.write_all(&hs.hello()).map_err(|e| e.to_string())?;
    // The partner's hello and confirmation, within the pre-auth deadline.
    let mut theirs = [0u8; HELLO_BYTES];
    if !read_within(
        sh,
        &mut stream,
        &mut theirs,
        "hello",
        preauth_until,
        &read_wait,
    )? {
        return Ok(());
    }
    if let Some(slot) = slot.as_ref() {
        slot.spoke();
    }
    let (confirming, confirm) = hs.on_hello(&theirs)?;
    stream.write_all(&confirm).map_err(|e| e.to_string())?;
    let mut got = [0u8; WITNESS_CONFIRM_BYTES];
    if !read_within(
        sh,
        &mut stream,
        &mut got,
        "key confirmation",
        preauth_until,
        &read_wait,
    )? {
        return Ok(());
    }
    let mut framer = confirming.on_confirm(&got)?;
    // Its key confirmation verified: the peer holds the secret.
    let mut _authenticated: Option<Authenticated> = None;
    if slot.as_ref().is_some_and(|s| s.evicted()) {
        return Err("authenticated after the gate had closed it".into());
    }
    if let Some(s) = slot.take() {
        s.passed();
        _authenticated = Some(Authenticated::enter(sh)?);
        read_wait(&stream, true)?;
        stream
            .sock()
            .set_write_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| e.to_string())?;
    }
    let mut last = Instant::now();
    loop {
        if sh.stop.load(Ordering::Acquire) {
            return Ok(());
        }
        let payload = match read_frame(&mut stream) {
            Ok(p) => p,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                // A timeout mid-frame desynchronises the stream; partners
                // send a frame in one write, so that means a broken peer.
                if slot.is_some() {
                    if Instant::now() >= preauth_until {
                        return Err(format!(
                            "no request from the partner within {:?}",
                            sh.preauth_deadline
                        ));
                    }
                    read_wait(&stream, false)?;
                } else if last.elapsed() > IDLE {
                    return Err(String::new());
                }
                continue;
            }
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e.to_string()),
        };
        last = Instant::now();
        let body = framer.open(&payload)?;
        let req = Request::decode(body)?;
        let reply = decide(sh, &req);
        stream
            .write_all(&framer.seal(&reply.encode()))
            .map_err(|e| e.to_string())?;
    }
}

/// One authenticated connection, counted while it lives.
struct Authenticated<'a>(&'a AtomicUsize);

impl<'a> Authenticated<'a> {
    fn enter(sh: &'a Shared) -> Result<Authenticated<'a>, String> {
        if sh.connections.fetch_add(1, Ordering::AcqRel) >= CONNECTIONS_MAX {
            sh.connections.fetch_sub(1, Ordering::AcqRel);
            return Err(format!(
                "closed: {CONNECTIONS_MAX} authenticated connections already open"
            ));
        }
        Ok(Authenticated(&sh.connections))
    }
}

impl Drop for Authenticated<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Fills `buf` from the partner before `until` (the pre-auth deadline).
/// Ok(false): it closed before sending anything.
fn read_within(
    sh: &Shared,
    stream: &mut WitnessStream,
    buf: &mut [u8],
    what: &str,
    until: Instant,
    read_wait: &dyn Fn(&WitnessStream, bool) -> Result<(), String>,
) -> Result<bool, String> {
    let mut got = 0;
    while got < buf.len() {
        match std::io::Read::read(stream, &mut buf[got..]) {
            Ok(0) if got == 0 => return Ok(false),
            Ok(0) => {
                return Err(format!(
                    "the partner closed the connection after {got} bytes of its {what}"
                ))
            }
            Ok(n) => got += n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if Instant::now() >= until || sh.stop.load(Ordering::Acquire) {
                    return Err(format!(
                        "no {what} from the partner within the pre-auth deadline"
                    ));
                }
                read_wait(stream, false)?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(true)
}

/// One request against the core; a change of the durable state is stored
/// before the reply is returned (if it cannot be, the change is undone and
/// the request refused).
fn decide(sh: &Shared, req: &Request) -> Reply {
    if req.database_id() != &sh.opts.database_id {
        return Reply::Refused {
            code: RefusalCode::WrongDatabase,
            why: format!(
                "this witness serves database {:?}, not {:?}",
                show_id(&sh.opts.database_id),
                show_id(req.database_id())
            ),
        };
    }
    let now_ms = sh.started.elapsed().as_millis() as u64;
    let mut core = sh.core.lock().expect("witness lock");
    let before = core.clone();
    let reply = match req {
        Request::Claim {
            name,
            last_epoch,
            claim_id,
            ..
        } => promote_reply(core.on_claim(now_ms, *last_epoch, name, *claim_id)),
        Request::Renew {
            name,
            epoch,
            exposed,
            ..
        } => match core.on_renew(now_ms, *epoch, name, *exposed) {
            RenewReply::Lease { epoch, lease_ms } => Reply::Lease {
                epoch,
                lease_ms,
                rho_ppm: (core.config().rho * 1e6).ceil() as u32,
            },
            RenewReply::Deposed { current, principal } => Reply::Deposed { current, principal },
        },
        Request::Promote {
            name,
            epoch,
            synchronized,
            forced,
            ..
        } => promote_reply(core.on_promote(now_ms, *epoch, name, *synchronized, *forced)),
        Request::Cover { name, epoch, .. } => match core.on_cover(now_ms, *epoch, name) {
            RenewReply::Lease { epoch, lease_ms } => Reply::Lease {
                epoch,
                lease_ms,
                rho_ppm: (core.config().rho * 1e6).ceil() as u32,
            },
            RenewReply::Deposed { current, principal } => Reply::Deposed { current, principal },
        },
        Request::Resign { name, epoch, .. } => {
            let r = promote_reply(core.on_resign(*epoch, name));
            if matches!(r, Reply::Granted { .. }) {
                sh.opts.logger.line(&format!(
                    "mirrorlog[witness]: {name} resigned as principal of epoch {epoch} (manual failover)"
                ));
            }
            r
        }
        Request::Query { .. } => Reply::State {
            epoch: core.epoch,
            principal: core.principal.clone(),
            exposed: core.exposed,
            lease_ms: core.config().lease_ms,
        },
    };
    let changed = core.epoch != before.epoch
        || core.principal != before.principal
        || core.exposed != before.exposed
        || core.resigned != before.resigned
        || core.claims != before.claims;
    if changed {
        let st = durable_state(&core);
        if let Err(e) = st.store(&sh.opts.dir) {
            *core = before;
            return refused_store(&e);
        }
        let log = &sh.opts.logger;
        match (req, &reply) {
            (Request::Cover { name, epoch, .. }, _) => log.line(&format!(
                "mirrorlog[witness]: {name}'s mirror has every commit of epoch {epoch}: automatic failover is possible again"
            )),
            (Request::Renew { name, epoch, .. }, _) => log.line(&format!(
                "mirrorlog[witness]: {name}, principal of epoch {epoch}, runs exposed: no automatic failover until it says its mirror has every commit again"
            )),
            (Request::Claim { name, .. }, Reply::Granted { epoch }) => log.line(&format!(
                "mirrorlog[witness]: epoch {epoch} granted to {name} (starting as principal)"
            )),
            (Request::Promote { name, forced, .. }, Reply::Granted { epoch }) => log.line(&format!(
                "mirrorlog[witness]: epoch {epoch} granted to {name} ({})",
                if *forced { "forced service" } else { "failover" }
            )),
            _ => {}
        }
    }
    reply
}

fn promote_reply(r: PromoteReply) -> Reply {
    match r {
        PromoteReply::Granted { epoch } => Reply::Granted { epoch },
        PromoteReply::Refused { code, why } => Reply::Refused { code, why },
    }
}

fn refused_store(e: &StateError) -> Reply {
    Reply::Refused {
        code: RefusalCode::StateNotStored,
        why: format!("the witness cannot store its state: {e}"),
    }
}

fn show_id(id: &[u8; 16]) -> String {
    String::from_utf8_lossy(id)
        .trim_end_matches('\0')
        .to_string()
}
