//! Review regressions for the failover work: the witness framing, the Rule P
//! gate in group commit, the principal's lease keeper and shutdown, the
//! promoted mirror's hand-over, rejoin (rewind) and reseed. Each test
//! reproduced a bug a review found (all fixed; they now guard against its
//! return).

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mirrorlog_engine::apply::Applier;
use mirrorlog_engine::commit::progress::monotonic_ns;
use mirrorlog_engine::commit::{CommitOptions, GroupCommit, Level};
use mirrorlog_engine::log::frame::{encode_frame, Encoder};
use mirrorlog_engine::log::sim::SimStorage;
use mirrorlog_engine::log::{Compression, Log, LogOptions, Records, RecordsBuf};
use mirrorlog_engine::node::{Logger, Mirror, NodeConfig, Principal, Safety, WitnessLink};
use mirrorlog_engine::replication::catchup::PrincipalLog;
use mirrorlog_engine::replication::handshake::Secret;
use mirrorlog_engine::replication::session::{
    MirrorCommand, MirrorProgress, MirrorSession, MirroringState, PrincipalCommand,
    PrincipalSession, SessionConfig,
};
use mirrorlog_engine::replication::wire::Message;
use mirrorlog_engine::transport::runner::NodeIdentity;
use mirrorlog_engine::transport::TransportChoice;
use mirrorlog_engine::witness::client::WitnessClient;
use mirrorlog_engine::witness::proto::{handshake_blocking, read_frame, End, Reply, Request};
use mirrorlog_engine::witness::server::{WitnessOptions, WitnessServer};
use mirrorlog_engine::witness::LeaseConfig;

use common::nodes::{log_opts, tempdir, wait_until};

const DB: [u8; 16] = *b"review-failover1";

fn secret() -> Secret {
    Secret::new(b"review-failover-shared-secret".to_vec()).unwrap()
}

fn identity() -> NodeIdentity {
    NodeIdentity {
        database_id: DB,
        secret: secret(),
    }
}

fn quiet() -> Logger {
    Logger::new(|_| {})
}

fn config(dir: &Path) -> NodeConfig {
    let mut c = NodeConfig::new(dir, identity());
    c.log = log_opts();
    c.transport = TransportChoice::Blocking;
    c.logger = quiet();
    c
}

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn frame_at(epoch: u64, base_lsn: u64) -> Vec<u8> {
    let mut r = RecordsBuf::new();
    r.push(b"written by the new principal, not committed yet");
    let mut enc = Encoder::new(Compression::Off).unwrap();
    let p = enc.payload(&r);
    encode_frame(epoch, base_lsn, &p)
}

fn session_cfg() -> SessionConfig {
    SessionConfig {
        heartbeat_ms: 100,
        partner_timeout_ms: 1000,
        ..SessionConfig::default()
    }
}

// ---------------------------------------------------------------------------
// A scriptable witness (it knows the secret): answers claims and plain
// renewals at once, holds every exposed renewal until the test releases it.
// ---------------------------------------------------------------------------

struct FakeWitness {
    addr: SocketAddr,
    /// Receives one message per exposed renewal held.
    held: mpsc::Receiver<()>,
    /// Each send releases one held exposed renewal.
    release: mpsc::Sender<()>,
}

fn fake_witness(lease_ms: u64) -> FakeWitness {
    let l = TcpListener::bind(any_port()).unwrap();
    let addr = l.local_addr().unwrap();
    let (held_tx, held) = mpsc::channel();
    let (release, release_rx) = mpsc::channel::<()>();
    let release_rx = Arc::new(Mutex::new(release_rx));
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            let held_tx = held_tx.clone();
            let release_rx = release_rx.clone();
            std::thread::spawn(move || {
                let Ok(mut f) = handshake_blocking(End::Witness, &mut s, &secret()) else {
                    return;
                };
                while let Ok(p) = read_frame(&mut s) {
                    let Ok(body) = f.open(&p) else {
                        return;
                    };
                    let reply = match Request::decode(body).unwrap() {
                        Request::Claim { last_epoch, .. } => Reply::Granted {
                            epoch: last_epoch + 1,
                        },
                        Request::Renew { epoch, exposed, .. } => {
                            if exposed {
                                let _ = held_tx.send(());
                                let _ = release_rx.lock().unwrap().recv();
                            }
                            Reply::Lease {
                                epoch,
                                lease_ms,
                                rho_ppm: 10_000,
                            }
                        }
                        Request::Cover { epoch, .. } => Reply::Lease {
                            epoch,
                            lease_ms,
                            rho_ppm: 10_000,
                        },
                        _ => Reply::Refused {
                            code: mirrorlog_engine::witness::RefusalCode::Other,
                            why: "not scripted".into(),
                        },
                    };
                    if s.write_all(&f.seal(&reply.encode())).is_err() {
                        return;
                    }
                }
            });
        }
    });
    FakeWitness {
        addr,
        held,
        release,
    }
}

fn with_witness(dir: &Path, w: SocketAddr, partner_timeout_ms: u64) -> NodeConfig {
    let mut c = config(dir);
    c.session.partner_timeout_ms = partner_timeout_ms;
    c.safety = Safety::Off;
    c.witness = Some(WitnessLink {
        addr: w,
        name: "127.0.0.1:1".into(),
        auto_failover: false,
        tls: None,
    });
    c
}

// ---------------------------------------------------------------------------
// Group commit: Rule P gate
// ---------------------------------------------------------------------------

/// `Ticket::wait` (and `Future::poll`) take a fast path when `reached()` is
/// true and then call `self.outcome(None).expect("reached")`. For a commit
/// under Rule P (`uncovered`: level below remote-flush, lease gated),
/// `reached()` includes "the exposure lease is live". `outcome()` evaluates
/// `reached()` a second time; if the exposure lease ended in between (it
/// expired, the lease keeper revoked it to leave exposure, or a manual
/// failover closed the principal), `outcome()` returns `None` ("wait for a
/// lease") and the `expect` panics in the committer's thread. In `mirrorlog
/// serve` that thread is a client connection: it dies mid-reply (the
/// client never learns the fate of its write) and, since the panic skips
/// `clients.fetch_sub`, every such panic leaks a `--max-clients` slot.
/// Here a thread flips the exposure lease on and off while hardened
/// local-level tickets are waited on.
#[test]
fn regression_ticket_wait_panics_when_the_exposure_lease_ends_between_checks() {
    let (log, _) = Log::open_with(SimStorage::new(), LogOptions::default()).unwrap();
    let gc = GroupCommit::start(
        Arc::new(log),
        CommitOptions {
            spin: Duration::ZERO,
            ..CommitOptions::default()
        },
    )
    .unwrap();
    let progress = gc.progress().clone();
    progress.set_lease_gated(true);
    let stop = Arc::new(AtomicBool::new(false));
    let flipper = {
        let (p, stop) = (progress.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                // (Since the fix a revocation holds until allowed again.)
                p.allow_exposure_lease();
                p.set_exposure_lease(monotonic_ns() + 60_000_000_000);
                for _ in 0..10 {
                    std::hint::spin_loop();
                }
                p.revoke_exposure_lease();
                for _ in 0..10 {
                    std::hint::spin_loop();
                }
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(4);
    let mut panics = 0u64;
    let mut waited = 0u64;
    std::panic::set_hook(Box::new(|_| {}));
    while Instant::now() < deadline && panics == 0 {
        let tickets: Vec<_> = (0..200u32)
            .map(|i| gc.commit_at(&[&i.to_le_bytes()], Level::Local).unwrap())
            .collect();
        // Every batch hardened: each wait below takes the fast path
        // whenever the lease is live at its first look.
        let written = gc.log().written_lsn();
        while gc.log().hardened_lsn() < written || gc.progress().reached(Level::Local) < written {
            std::thread::sleep(Duration::from_micros(100));
        }
        for t in tickets {
            waited += 1;
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| t.wait()));
            match r {
                Ok(r) => {
                    r.unwrap();
                }
                Err(_) => panics += 1,
            }
        }
    }
    let _ = std::panic::take_hook();
    stop.store(true, Ordering::Relaxed);
    flipper.join().unwrap();
    assert_eq!(
        panics, 0,
        "{panics} of {waited} waits panicked instead of waiting for the lease"
    );
}

// ---------------------------------------------------------------------------
// Principal: shutdown and the lease keeper
// ---------------------------------------------------------------------------

/// A principal with a witness gates local-level commits on an exposure
/// lease: the ticket waits (`want_exposure`) until the lease keeper gets
/// one, or fails with `NoQuorum` once the keeper decides no lease is
/// coming. `Principal::stop` (shutdown or drop) joins the lease keeper and
/// then only sets `remote_attached = false` and `Detached::Refuse`, which
/// fail *remote-level* waiters ("commits held for one fail now instead of
/// waiting for ever"). Nobody sets `no_quorum` or fails the progress, so a
/// local-level ticket that was waiting for its lease waits for ever: a hung
/// client thread, and since the ticket holds the group commit's `Arc<Log>`
/// the directory's `LOCK` stays taken, so a role change that reopens the
/// directory (a deposed or resigned principal rejoining as mirror in
/// `mirrorlog serve`) fails. Here the witness never answers.
#[test]
fn regression_shutdown_leaves_a_lease_gated_commit_waiting_forever() {
    let dir = tempdir("review-fo", "shutdown-gated");
    // A witness that accepts connections and never says a word.
    let silent = TcpListener::bind(any_port()).unwrap();
    let w = silent.local_addr().unwrap();
    let keep = std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in silent.incoming().take(64) {
            held.push(s);
        }
    });
    drop(keep);
    // A long partner timeout: the keeper's start-up grace (no `no_quorum`
    // before it) outlasts the test.
    let p = Principal::start_in_epoch(with_witness(&dir, w, 8000), any_port(), 1).unwrap();
    let t = p.commit_at(&[b"waits for a lease"], Level::Local).unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(t.wait());
    });
    // It waits for a lease, as it should while the principal runs.
    assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
    p.shutdown();
    let r = rx.recv_timeout(Duration::from_secs(3));
    assert!(
        r.is_ok(),
        "the commit is still waiting 3 s after the principal shut down"
    );
    assert!(r.unwrap().is_err(), "acknowledged after shutdown");
}

/// `Progress::close(true)` (manual failover) revokes the exposure lease "so
/// from now on only commits the mirror hardens are acknowledged", and the
/// lease keeper stops renewing while closed. But a renewal that was already
/// in flight when `close` ran is still processed when its reply arrives:
/// `progress.set_exposure_lease(sent + L(1-ρ))` (`fetch_max` over the
/// revoked 0) re-grants the exposure lease to a closed principal. The
/// failover then drains, resigns (the witness clears `exposed` and lets the
/// mirror's promotion through without waiting out the lease) and hands
/// over, while this node holds a live exposure lease for up to `L(1-ρ)`:
/// any commit that passed the `closed` check before `close` and whose batch
/// is written after the drain is acknowledged exposed at `local` here while
/// the new principal, which never got it, also accepts commits. Here a
/// scripted witness holds the exposed renewal until after `close(true)`;
/// a local-level ticket waiting for its lease is then acknowledged by the
/// closed principal.
#[test]
fn regression_in_flight_renewal_regrants_the_exposure_lease_after_close() {
    let dir = tempdir("review-fo", "close-regrant");
    let w = fake_witness(10_000);
    let p = Principal::start_in_epoch(with_witness(&dir, w.addr, 4000), any_port(), 1).unwrap();
    let progress = p.group_commit().progress().clone();
    let t = p.commit_at(&[b"in flight"], Level::Local).unwrap();
    // Looking at the hardened ticket asks the lease keeper for exposure;
    // the witness holds the exposed renewal's reply.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        assert!(t.try_result().is_none(), "acknowledged without a lease");
        if w.held.recv_timeout(Duration::from_millis(5)).is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "no exposed renewal");
    }
    progress.close(true);
    assert!(!progress.exposure_lease_live());
    w.release.send(()).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let live = progress.exposure_lease_live();
    let acked = t.wait_timeout(Duration::from_millis(300));
    p.shutdown();
    assert!(
        !live && acked.is_err(),
        "a closed principal holds a live exposure lease ({live}, re-granted by the in-flight renewal) and acknowledged a local-level commit without the mirror: {acked:?}"
    );
}

// ---------------------------------------------------------------------------
// Rejoin: rewind at the session start
// ---------------------------------------------------------------------------

/// A node that was principal rejoins as mirror: its position says epoch 1,
/// written 8192, everything applied (its store is at 8192). The new
/// principal's epoch 1 ended at 4096, so `Start{truncate_to: 4096}`. The
/// mirror session emits `Rewind(4096)`, `Truncate(4096)` and an ack, but
/// (1) the ack is built before the runner executes the rewind: it says
/// `applied 8192` with `hardened 4096`, which the principal rejects as an
/// out-of-order acknowledgement and closes the session (every rejoin that
/// rewinds costs a failed session and a protocol error); and (2) the
/// session's `commit_lsn` was initialised from the pre-rewind applied LSN
/// (8192) and is never lowered by the cut, so once the new principal's
/// frames beyond 4096 are hardened here the mirror sets its apply limit to
/// them although the new principal published a commit LSN of 4096: the
/// state machine applies (and readers see) writes that are not committed
/// and can still be rolled back. (`ApplierThread::set_limit` never lowers
/// the limit, so the too-high limit also outlives the session.)
#[test]
fn regression_rewinding_start_acks_stale_applied_and_applies_uncommitted_frames() {
    let history = [(1u64, 0u64), (2, 4096)];
    let frame = frame_at(2, 4096);
    let end = 4096 + frame.len() as u64;
    let plog = PrincipalLog {
        history: &history,
        start_lsn: 0,
        written_lsn: end,
        epoch: 2,
        segment_end_at: None,
    };
    let mut p = PrincipalSession::new(session_cfg(), 0, end, end);
    let (mut m, first) = MirrorSession::new(
        session_cfg(),
        0,
        1,
        MirrorProgress {
            received: 8192,
            hardened: 8192,
            applied: 8192,
        },
        0,
    );
    let Some(MirrorCommand::Send(pos)) = first.into_iter().next() else {
        panic!("no position")
    };
    let out = p.on_message(1, pos, &plog);
    let start = out
        .iter()
        .find_map(|c| match c {
            PrincipalCommand::Send(m @ Message::Start { .. }) => Some(m.clone()),
            _ => None,
        })
        .expect("a start");
    assert!(matches!(
        start,
        Message::Start {
            truncate_to: Some(4096),
            ..
        }
    ));
    let commit_published = p.commit_lsn();
    let out = m.on_message(2, start);
    assert!(out.contains(&MirrorCommand::Rewind(4096)), "{out:?}");
    // The runner executes the rewind (the state machine goes back to 4096)
    // and sends the ack the session built.
    let acks = m.on_rewound(2, 4096);
    assert!(
        !out.iter()
            .any(|c| matches!(c, MirrorCommand::Send(Message::Ack { .. }))),
        "no ack before the rewind is done: {out:?}"
    );
    let ack = acks
        .iter()
        .find_map(|c| match c {
            MirrorCommand::Send(a @ Message::Ack { .. }) => Some(a.clone()),
            _ => None,
        })
        .expect("an ack");
    let refused = p
        .on_message(3, ack.clone(), &plog)
        .iter()
        .any(|c| matches!(c, PrincipalCommand::Close { .. }));
    // The new principal ships its first batch with its commit LSN.
    let out = m.on_message(
        4,
        Message::Ship {
            commit_lsn: commit_published,
            prev_lsn: 4096,
            frame,
        },
    );
    assert!(out.iter().any(|c| matches!(c, MirrorCommand::Append(_))));
    m.on_appended(5, end);
    let limit = m
        .on_synced(6, end)
        .into_iter()
        .find_map(|c| match c {
            MirrorCommand::ApplyLimit(l) => Some(l),
            _ => None,
        })
        .expect("an apply limit");
    assert!(
        !refused && limit <= commit_published.max(4096),
        "the principal closed the rejoin session on the mirror's first ack ({refused}: {ack:?}); the mirror's apply limit is {limit}, beyond the commit LSN {commit_published} the new principal published"
    );
}

// ---------------------------------------------------------------------------
// Promoted mirror: into_principal
// ---------------------------------------------------------------------------

/// Counts records and remembers the end of the last batch applied; slow.
#[derive(Clone, Default)]
struct Slow {
    applied_end: Arc<AtomicU64>,
    records: Arc<AtomicU64>,
}

impl Applier for Slow {
    fn apply(&mut self, _start: u64, end: u64, records: &Records) -> Result<(), String> {
        std::thread::sleep(Duration::from_millis(15));
        self.records
            .fetch_add(records.iter().count() as u64, Ordering::AcqRel);
        self.applied_end.store(end, Ordering::Release);
        Ok(())
    }
}

/// `Mirror::into_principal` returns the state machine and "the LSN it
/// reflects the log up to", but reads `applier.applied_lsn()` *before*
/// `applier.shutdown()`, which lets the batch in progress finish ("stops
/// the thread after the batch in progress"). With a redo queue (the usual
/// case right after a failover) the applier is mid-batch, so the state
/// handed back reflects one batch more than the LSN returned: an embedder
/// that brings its state up to the log "from there", as the API says,
/// applies that batch twice.
#[test]
fn regression_into_principal_returns_an_applied_lsn_behind_the_state() {
    let (pd, md) = (
        tempdir("review-fo", "into-p"),
        tempdir("review-fo", "into-m"),
    );
    let a = Principal::start(config(&pd), any_port()).unwrap();
    let slow = Slow::default();
    let b = Mirror::start(config(&md), a.local_addr(), slow.clone(), None).unwrap();
    wait_until("SYNCHRONIZED", Duration::from_secs(10), || {
        a.status().state == MirroringState::Synchronized
    });
    // Many small batches the mirror hardens at once and applies slowly.
    for i in 0..150u32 {
        a.commit_wait(&[&i.to_le_bytes()]).unwrap();
    }
    wait_until("the mirror hardened all", Duration::from_secs(10), || {
        b.log().hardened_lsn() == a.log().written_lsn()
    });
    let written = a.log().written_lsn();
    drop(a);
    wait_until(
        "the mirror lost its principal",
        Duration::from_secs(10),
        || b.status().state == MirroringState::Disconnected,
    );
    assert!(
        b.applier().applied_lsn() < written,
        "the redo queue drained already; the test needs one"
    );
    // No witness: forced service is this node's own word.
    let promo = b.force_service(Duration::from_secs(10)).unwrap();
    assert!(promo.forced);
    let (p, state, applied) = b.into_principal(any_port()).unwrap();
    let reflected = state.applied_end.load(Ordering::Acquire);
    drop(p);
    assert_eq!(
        applied, reflected,
        "into_principal says the state reflects the log up to {applied}, but the applier applied up to {reflected}"
    );
}

// ---------------------------------------------------------------------------
// Reseed: a mirror whose reseed was interrupted
// ---------------------------------------------------------------------------

/// Every record applied, in order; restores from a length-prefixed list.
#[derive(Clone, Default)]
struct Recs(Arc<Mutex<Vec<Vec<u8>>>>);

impl Applier for Recs {
    fn apply(&mut self, _s: u64, _e: u64, records: &Records) -> Result<(), String> {
        self.0
            .lock()
            .unwrap()
            .extend(records.iter().map(|r| r.to_vec()));
        Ok(())
    }

    fn restore(&mut self, _lsn: u64, snapshot: &[u8]) -> Result<(), String> {
        let mut out = Vec::new();
        let mut b = snapshot;
        while b.len() >= 4 {
            let n = u32::from_le_bytes(b[..4].try_into().unwrap()) as usize;
            out.push(b[4..4 + n].to_vec());
            b = &b[4 + n..];
        }
        *self.0.lock().unwrap() = out;
        Ok(())
    }
}

/// `n` bytes zstd cannot shrink, different for each `seed`.
fn noise(seed: u32, n: usize) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ u64::from(seed);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// The snapshot the principal offers: its LSN and bytes.
type Snap = Arc<Mutex<Option<(u64, Vec<u8>)>>>;

fn encode(recs: &[Vec<u8>]) -> Vec<u8> {
    let mut b = Vec::new();
    for r in recs {
        b.extend_from_slice(&(r.len() as u32).to_le_bytes());
        b.extend_from_slice(r);
    }
    b
}

/// A mirror that crashed between installing a reseed's snapshot (state at
/// `S`) and restarting its log starts with its state machine beyond its
/// log; `Mirror::start` now empties the log (`reset(0)`) and starts the
/// applier at `S`, "to be fetched again". But `serve_mirror` begins every
/// session with `reported_applied = min(applied, hardened) = 0`, then sees
/// `applier.applied_lsn() = S > 0` and calls `MirrorSession::on_applied(S)`,
/// which closes the session because `S` is beyond the log's hardened LSN
/// (0) ("the applier reached LSN S, beyond this log's hardened LSN 0").
/// That happens in the first loop round, right after the mirror sent its
/// position: unless the principal's whole reply (a new snapshot, or
/// `start`) is already buffered by then, the session is closed before it
/// arrives, and every reconnect fails the same way. With a snapshot source
/// that takes a few milliseconds (the key-value server reads its newest
/// checkpoint from disk) the mirror never catches up again and needs an
/// operator. (Without the delay the race is sometimes won after several
/// seconds of reconnects.)
#[test]
fn regression_interrupted_reseed_mirror_never_reconnects() {
    let (pd, md) = (
        tempdir("review-fo", "reseed-p"),
        tempdir("review-fo", "reseed-m"),
    );
    let snap: Snap = Arc::default();
    let mut pc = config(&pd);
    let s = snap.clone();
    pc.snapshots = Some(Arc::new(move || {
        // Reading a checkpoint file takes a moment (the key-value server
        // reads its newest one from disk).
        std::thread::sleep(Duration::from_millis(30));
        Ok(s.lock().unwrap().clone())
    }));
    let a = Principal::start(pc, any_port()).unwrap();
    for i in 0..40u32 {
        a.commit_at(&[&noise(i, 20_000)], Level::Local)
            .unwrap()
            .wait()
            .unwrap();
    }
    let s_lsn = a.log().written_lsn();
    let mut state = Vec::new();
    for v in a.log().read_from(a.log().start_lsn()).unwrap() {
        state.extend(v.unwrap().records().unwrap().iter().map(|r| r.to_vec()));
    }
    *snap.lock().unwrap() = Some((s_lsn, encode(&state)));
    assert!(a.log().delete_below(s_lsn).unwrap() > 0);
    a.commit_at(&[b"after the snapshot"], Level::Local)
        .unwrap()
        .wait()
        .unwrap();
    // The mirror's state machine holds the snapshot at S (installed by a
    // reseed), its log does not (the crash came first).
    let restored = Recs(Arc::new(Mutex::new(state)));
    let b = Mirror::start(config(&md), a.local_addr(), restored, Some(s_lsn)).unwrap();
    let target = a.log().written_lsn();
    let deadline = Instant::now() + Duration::from_secs(5);
    while b.log().hardened_lsn() < target && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let (got, sessions, why) = (
        b.log().hardened_lsn(),
        b.status().sessions,
        b.status().last_error,
    );
    drop(b);
    drop(a);
    assert_eq!(
        got, target,
        "the mirror never caught up ({sessions} sessions); last: {why:?}"
    );
}

// ---------------------------------------------------------------------------
// Witness framing
// ---------------------------------------------------------------------------

fn read_frame_bytes(s: &mut TcpStream) -> Vec<u8> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).unwrap();
    let mut p = vec![0u8; u32::from_le_bytes(len) as usize];
    s.read_exact(&mut p).unwrap();
    let mut f = len.to_vec();
    f.extend_from_slice(&p);
    f
}

/// The witness framing claims "no frame can be replayed, reflected or
/// moved to another connection", but only the witness contributes a
/// nonce, and a reply's MAC covers (nonce, direction, seq, reply body), not
/// the request it answers. Someone on the path who recorded one exchange
/// (the witness's nonce and its reply) can impersonate the witness later:
/// send the recorded nonce, read whatever the partner asks, send the
/// recorded reply; the partner's `WitnessClient` accepts it. Here an old
/// `lease{epoch 1}` answering principal `a`'s exposed renewal is replayed
/// to `a` after the witness has deposed it (epoch 2 belongs to `b`): a
/// man in the middle who drops `a`'s real renewals (so Rule W lets `b` in)
/// and replays the recorded lease keeps the deposed `a` acknowledging
/// exposed commits next to `b`. The same works for a recorded `granted`.
#[test]
fn regression_a_recorded_witness_reply_is_accepted_on_a_later_connection() {
    let wd = tempdir("review-fo", "replay-w");
    let lease = LeaseConfig {
        lease_ms: 50,
        rho: 0.01,
    };
    let w = WitnessServer::start(WitnessOptions {
        dir: wd,
        listen: any_port(),
        secret: secret(),
        database_id: DB,
        lease,
        logger: quiet(),
        tls: None,
    })
    .unwrap();
    let mut direct = WitnessClient::new(w.local_addr(), secret());
    let t = Duration::from_secs(2);
    assert_eq!(
        direct
            .call(
                &Request::Claim {
                    database_id: DB,
                    name: "a".into(),
                    last_epoch: 0,
                    claim_id: 1,
                },
                t
            )
            .unwrap(),
        Reply::Granted { epoch: 1 }
    );
    // A passive recorder on the path of one connection of `a`.
    let rec = TcpListener::bind(any_port()).unwrap();
    let rec_addr = rec.local_addr().unwrap();
    let witness_addr = w.local_addr();
    let recorder = std::thread::spawn(move || {
        let (mut c, _) = rec.accept().unwrap();
        let mut up = TcpStream::connect(witness_addr).unwrap();
        // Witness protocol 2: hellos (71 bytes) and confirmations (32)
        // both ways, then the request and its reply.
        let relay = |from: &mut TcpStream, to: &mut TcpStream, n: usize| {
            let mut b = vec![0u8; n];
            from.read_exact(&mut b).unwrap();
            to.write_all(&b).unwrap();
            b
        };
        let w_hello = relay(&mut up, &mut c, 71);
        relay(&mut c, &mut up, 71);
        let w_confirm = relay(&mut up, &mut c, 32);
        relay(&mut c, &mut up, 32);
        let req = read_frame_bytes(&mut c);
        up.write_all(&req).unwrap();
        let reply = read_frame_bytes(&mut up);
        c.write_all(&reply).unwrap();
        ([w_hello, w_confirm].concat(), reply)
    });
    let renew = Request::Renew {
        database_id: DB,
        name: "a".into(),
        epoch: 1,
        exposed: true,
    };
    let mut a = WitnessClient::new(rec_addr, secret());
    let first = a.call(&renew, t).unwrap();
    assert!(matches!(first, Reply::Lease { epoch: 1, .. }), "{first:?}");
    let (nonce, reply) = recorder.join().unwrap();
    // The witness deposes `a`: a forced promotion of `b` once the lease is
    // waited out.
    std::thread::sleep(Duration::from_millis(120));
    let granted = direct
        .call(
            &Request::Promote {
                database_id: DB,
                name: "b".into(),
                epoch: 1,
                synchronized: true,
                forced: true,
            },
            t,
        )
        .unwrap();
    assert_eq!(granted, Reply::Granted { epoch: 2 });
    assert!(matches!(
        direct.call(&renew, t).unwrap(),
        Reply::Deposed { current: 2, .. }
    ));
    // The impersonator: no secret, only the recording.
    let fake = TcpListener::bind(any_port()).unwrap();
    let fake_addr = fake.local_addr().unwrap();
    std::thread::spawn(move || {
        let (mut c, _) = fake.accept().unwrap();
        // The recorded hello and confirmation, whatever the partner says.
        let _ = c.write_all(&nonce);
        let mut theirs = [0u8; 71 + 32];
        let _ = c.read_exact(&mut theirs);
        let _ = c.write_all(&reply);
        std::thread::sleep(Duration::from_millis(500));
    });
    let mut a = WitnessClient::new(fake_addr, secret());
    let replayed = a.call(&renew, t);
    assert!(
        replayed.is_err(),
        "a replayed reply was accepted as the witness's answer: {replayed:?}"
    );
}
