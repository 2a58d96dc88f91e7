//! The `local-commit` scenario: group commit on this machine, against the
//! floor of the same file system.
//!
//! Each case gets a fresh log directory, opens a [`Log`], starts
//! [`GroupCommit`], runs a warm-up and then a timed period, and shuts down.
//! Client-observed latency (before `commit()` to after `wait()` returns) is
//! recorded per thread in its own histogram and merged at the end; only
//! commits submitted during the timed period count.
//!
//! The 1-committer cases also measure the floor they are compared with: the
//! committer alternates 100 ms slices of commits with 100 ms slices of raw
//! pwrite+fdatasync of the same record size on a preallocated file in the
//! same directory, so both see the same (noisy) disk. Those cases run twice
//! as long, and their commits/s count only the commit slices.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mirrorlog_engine::commit::{CommitOptions, CommitStats, GroupCommit, Level, Ticket};
use mirrorlog_engine::log::frame::RECORD_PREFIX_BYTES;
use mirrorlog_engine::log::{FsStorage, Log};

use crate::floor::{self, BandwidthFloor, SyncFloor, SyncKind, SyncProbe};
use crate::{Config, Data};

/// 1 ns .. 100 s at 3 significant digits, like the engine's own.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("static histogram bounds are valid")
}

/// xorshift64*: fast, good enough that zstd finds nothing to shrink.
pub struct XorShift(u64);

impl XorShift {
    /// Nearby seeds (clients 0, 1, 2, ...) give unrelated sequences: the
    /// seed goes through splitmix64's finaliser (`seed | 1` made seeds 2k
    /// and 2k+1 the same stream, so two clients wrote identical records).
    pub fn new(seed: u64) -> XorShift {
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        XorShift(z.max(1))
    }

    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut chunks = buf.chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        let last = self.next_u64().to_le_bytes();
        let n = rest.len();
        rest.copy_from_slice(&last[..n]);
    }
}

/// Makes one record after another, reusing one buffer.
pub struct RecordGen {
    data: Data,
    buf: Vec<u8>,
    rng: XorShift,
    counter: u64,
}

const TEXT: &[u8] = b"INSERT INTO orders (id, customer, item, qty, status) VALUES \
(?, 'customer-0042', 'widget-blue-large', 3, 'shipped'); -- mirrorlog bench row\n";

impl RecordGen {
    pub fn new(data: Data, size: usize, seed: u64) -> RecordGen {
        let mut buf = vec![0u8; size];
        if data == Data::Compressible {
            for (i, b) in buf.iter_mut().enumerate() {
                *b = TEXT[i % TEXT.len()];
            }
        }
        RecordGen {
            data,
            buf,
            rng: XorShift::new(seed),
            counter: seed << 40,
        }
    }

    pub fn next_record(&mut self) -> &[u8] {
        self.counter += 1;
        match self.data {
            Data::Compressible => {
                // A 16-hex-digit counter at the front; the rest repeats text.
                let digits = b"0123456789abcdef";
                let n = self.buf.len().min(16);
                for i in 0..n {
                    let shift = 4 * (15 - i);
                    self.buf[i] = digits[((self.counter >> shift) & 0xf) as usize];
                }
            }
            Data::Incompressible => self.rng.fill(&mut self.buf),
        }
        &self.buf
    }
}

/// How the clients commit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `threads` threads, each commits one record and waits for it.
    Blocking { threads: usize },
    /// `threads` threads, each keeps up to `window` commits in flight,
    /// waiting on the oldest when the window is full.
    Pipelined { threads: usize, window: usize },
}

impl Mode {
    pub fn threads(self) -> usize {
        match self {
            Mode::Blocking { threads } | Mode::Pipelined { threads, .. } => threads,
        }
    }

    pub fn key(self) -> &'static str {
        match self {
            Mode::Blocking { .. } => "blocking",
            Mode::Pipelined { .. } => "pipelined",
        }
    }

    pub fn describe(self) -> String {
        match self {
            Mode::Blocking { threads: 1 } => "1 committer".into(),
            Mode::Blocking { threads } => format!("{threads} committers"),
            Mode::Pipelined { threads, window } => {
                format!("pipelined {threads}x{window}")
            }
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct CaseSpec {
    pub mode: Mode,
    pub record_bytes: usize,
    pub data: Data,
}

impl CaseSpec {
    pub fn describe(&self) -> String {
        format!(
            "{}, {} {}",
            self.mode.describe(),
            crate::report::size_name(self.record_bytes),
            self.data.name()
        )
    }
}

pub struct CaseResult {
    pub spec: CaseSpec,
    /// Commits submitted in the timed period (all acknowledged).
    pub commits: u64,
    pub seconds: f64,
    /// Engine counters over the timed period.
    pub stats: CommitStats,
    /// Client-observed latency, ns.
    pub hist: Histogram<u64>,
    /// 1-committer cases: pwrite+fdatasync latency of the same record size
    /// in the same directory, interleaved with the commits in 100 ms slices.
    pub paired_floor: Option<Histogram<u64>>,
}

impl CaseResult {
    pub fn commits_per_s(&self) -> f64 {
        self.commits as f64 / self.seconds.max(1e-9)
    }

    /// Record payload MB/s (10^6 bytes).
    pub fn mb_per_s(&self) -> f64 {
        self.commits_per_s() * self.spec.record_bytes as f64 / 1e6
    }

    /// Log bytes (frames as written) MB/s.
    pub fn log_mb_per_s(&self) -> f64 {
        self.stats.log_bytes as f64 / 1e6 / self.seconds.max(1e-9)
    }

    pub fn commits_per_batch(&self) -> f64 {
        self.stats.commits as f64 / self.stats.batches.max(1) as f64
    }

    /// Raw record bytes (with length prefixes) per log byte.
    pub fn compression_ratio(&self) -> f64 {
        self.stats.raw_bytes as f64 / self.stats.log_bytes.max(1) as f64
    }
}

pub struct Suite {
    /// Write+fdatasync latency, before the cases (preallocated and append).
    pub sync_before: Vec<SyncFloor>,
    /// The preallocated sync floor again, after the cases (drift check).
    pub sync_after: Vec<SyncFloor>,
    pub bandwidth: Vec<BandwidthFloor>,
    pub cases: Vec<CaseResult>,
    /// The batch limit group commit chose for these segments.
    pub batch_bytes_max: usize,
    pub started: std::time::SystemTime,
    pub total_seconds: f64,
}

impl Suite {
    /// The preallocated sync floor for `size`, before and after merged.
    pub fn sync_floor(&self, size: usize) -> Option<Histogram<u64>> {
        let mut merged: Option<Histogram<u64>> = None;
        for f in self.sync_before.iter().chain(&self.sync_after) {
            if f.kind == SyncKind::Preallocated && f.record_bytes == size {
                match &mut merged {
                    None => merged = Some(f.hist.clone()),
                    Some(m) => m.add(&f.hist).ok()?,
                }
            }
        }
        merged
    }

    /// The best (highest) bandwidth floor of `kind`, before or after the cases.
    pub fn best_bandwidth(&self, kind: floor::BwKind) -> Option<&BandwidthFloor> {
        self.bandwidth
            .iter()
            .filter(|b| b.kind == kind && b.seconds > 0.0)
            .max_by(|a, b| a.mb_per_s().total_cmp(&b.mb_per_s()))
    }
}

/// The client modes the command line asks for: each blocking committer
/// count, then the pipelined client if any.
pub fn modes(cfg: &Config) -> Vec<Mode> {
    let mut modes: Vec<Mode> = cfg
        .committers
        .iter()
        .map(|&threads| Mode::Blocking { threads })
        .collect();
    if cfg.pipelined_threads > 0 {
        modes.push(Mode::Pipelined {
            threads: cfg.pipelined_threads,
            window: cfg.window,
        });
    }
    modes
}

pub fn cases(cfg: &Config) -> Vec<CaseSpec> {
    let modes = modes(cfg);
    let mut out = Vec::new();
    for &mode in &modes {
        for &record_bytes in &cfg.sizes {
            for &data in &cfg.data {
                out.push(CaseSpec {
                    mode,
                    record_bytes,
                    data,
                });
            }
        }
    }
    out
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

/// Opens a throwaway log with the run's options before anything is timed,
/// so that a bad option or a record too large for a batch fails at once.
/// Returns the batch limit group commit chose.
fn preflight(cfg: &Config) -> Result<usize, String> {
    let dir = cfg.scratch.join("preflight");
    let (log, _report) = Log::open(&dir, cfg.log_options())
        .map_err(|e| format!("opening a log in {}: {e}", dir.display()))?;
    let gc = GroupCommit::start(Arc::new(log), CommitOptions::default())
        .map_err(|e| format!("starting group commit: {e}"))?;
    let max = gc.batch_bytes_max();
    drop(gc);
    std::fs::remove_dir_all(&dir).map_err(|e| format!("removing {}: {e}", dir.display()))?;
    if let Some(&big) = cfg.sizes.iter().find(|&&s| s + RECORD_PREFIX_BYTES > max) {
        return Err(format!(
            "--sizes: a {big}-byte record does not fit group commit's batch limit of {max} bytes with {} MiB segments (raise --segment-mib)",
            cfg.segment_bytes >> 20
        ));
    }
    Ok(max)
}

/// Runs the whole scenario: floors, cases, floors again.
pub fn run(cfg: &Config) -> Result<Suite, String> {
    let started = std::time::SystemTime::now();
    let t0 = Instant::now();
    let specs = cases(cfg);
    let floor_steps = cfg.sizes.len() * 3 + 2;
    let total = specs.len() + floor_steps;
    let mut step = 0;
    let mut progress = |what: &str| {
        step += 1;
        eprintln!(
            "[{step}/{total}] {what} ... ({:.0} s elapsed)",
            t0.elapsed().as_secs_f64()
        );
    };
    let batch_bytes_max = preflight(cfg)?;
    let floor_dir = cfg.scratch.join("floor");
    std::fs::create_dir(&floor_dir)
        .map_err(|e| format!("creating {}: {e}", floor_dir.display()))?;

    let mut sync_before = Vec::new();
    for kind in [SyncKind::Preallocated, SyncKind::Append] {
        for &size in &cfg.sizes {
            progress(&format!(
                "floor: {}, {}",
                kind.name(),
                crate::report::size_name(size)
            ));
            let f =
                floor::sync_latency(&floor_dir, kind, size, secs(cfg.warmup), secs(cfg.seconds))?;
            eprintln!(
                "      p50 {:.1} us",
                f.hist.value_at_quantile(0.5) as f64 / 1e3
            );
            sync_before.push(f);
        }
    }
    progress("floor: sequential-write bandwidth");
    let bandwidth = floor::bandwidth(&floor_dir, secs(cfg.seconds), false)?;
    for b in &bandwidth {
        eprintln!("      {}: {:.0} MB/s", b.kind.key(), b.mb_per_s());
    }

    let mut results = Vec::new();
    for (i, spec) in specs.iter().enumerate() {
        progress(&spec.describe());
        let dir = cfg.scratch.join(format!("case-{i:02}"));
        let r = run_case(cfg, spec, &dir)?;
        eprintln!(
            "      {:.0} commits/s, {:.1} MB/s, p50 {:.1} us, p99 {:.1} us, {:.1} commits/batch",
            r.commits_per_s(),
            r.mb_per_s(),
            r.hist.value_at_quantile(0.5) as f64 / 1e3,
            r.hist.value_at_quantile(0.99) as f64 / 1e3,
            r.commits_per_batch()
        );
        if let Some(f) = &r.paired_floor {
            eprintln!(
                "      interleaved pwrite+fdatasync p50 {:.1} us",
                f.value_at_quantile(0.5) as f64 / 1e3
            );
        }
        results.push(r);
        std::fs::remove_dir_all(&dir).map_err(|e| format!("removing {}: {e}", dir.display()))?;
    }

    let mut sync_after = Vec::new();
    for &size in &cfg.sizes {
        progress(&format!(
            "floor again (drift check): {}, {}",
            SyncKind::Preallocated.name(),
            crate::report::size_name(size)
        ));
        let f = floor::sync_latency(
            &floor_dir,
            SyncKind::Preallocated,
            size,
            secs(cfg.warmup),
            secs(cfg.seconds),
        )?;
        eprintln!(
            "      p50 {:.1} us",
            f.hist.value_at_quantile(0.5) as f64 / 1e3
        );
        sync_after.push(f);
    }
    progress("floor again (drift check): sequential-write bandwidth");
    let bandwidth_after = floor::bandwidth(&floor_dir, secs(cfg.seconds), true)?;
    for b in &bandwidth_after {
        eprintln!("      {}: {:.0} MB/s", b.kind.key(), b.mb_per_s());
    }
    Ok(Suite {
        sync_before,
        sync_after,
        bandwidth: bandwidth.into_iter().chain(bandwidth_after).collect(),
        cases: results,
        batch_bytes_max,
        started,
        total_seconds: t0.elapsed().as_secs_f64(),
    })
}

pub(crate) const WARMUP: u8 = 0;
pub(crate) const TIMED: u8 = 1;
pub(crate) const STOP: u8 = 2;

pub(crate) struct WorkerOut {
    pub(crate) commits: u64,
    pub(crate) hist: Histogram<u64>,
    /// Paired mode: time spent committing (the rest went to the floor).
    engine_seconds: Option<f64>,
    /// Paired mode: write+fdatasync latency interleaved with the commits.
    floor: Option<Histogram<u64>>,
}

type Gc = GroupCommit<FsStorage>;

fn ns_since(t: Instant) -> u64 {
    t.elapsed().as_nanos().max(1) as u64
}

/// In the 1-committer case the committer alternates slices of this length
/// between commits and raw write+fdatasync on a file in the same directory,
/// so that both see the same disk weather.
const PAIR_SLICE: Duration = Duration::from_millis(100);

pub(crate) fn blocking_worker(
    gc: &Gc,
    level: Level,
    phase: &AtomicU8,
    mut gen: RecordGen,
    mut probe: Option<SyncProbe>,
) -> Result<WorkerOut, String> {
    let mut hist = new_histogram();
    let mut commits = 0;
    let mut floor = probe.as_ref().map(|_| new_histogram());
    let mut engine = Duration::ZERO;
    let mut slice_start = Instant::now();
    let mut on_floor = false;
    let mut prev = WARMUP;
    loop {
        let p = phase.load(Ordering::Acquire);
        if p == STOP {
            break;
        }
        if let (Some(probe), Some(floor), TIMED) = (probe.as_mut(), floor.as_mut(), p) {
            let now = Instant::now();
            if prev != TIMED {
                slice_start = now;
            } else if now - slice_start >= PAIR_SLICE {
                if !on_floor {
                    engine += now - slice_start;
                }
                on_floor = !on_floor;
                slice_start = now;
            }
            prev = p;
            if on_floor {
                floor.saturating_record(probe.op()?);
                continue;
            }
        }
        let record = gen.next_record();
        let t = Instant::now();
        let ticket = gc.commit_at(&[record], level).map_err(|e| e.to_string())?;
        check_reached(ticket.wait())?;
        if p == TIMED {
            hist.saturating_record(ns_since(t));
            commits += 1;
        }
    }
    if probe.is_some() && prev == TIMED && !on_floor {
        engine += slice_start.elapsed();
    }
    Ok(WorkerOut {
        commits,
        hist,
        engine_seconds: probe.as_ref().map(|_| engine.as_secs_f64()),
        floor,
    })
}

pub(crate) fn pipelined_worker(
    gc: &Gc,
    level: Level,
    phase: &AtomicU8,
    mut gen: RecordGen,
    window: usize,
) -> Result<WorkerOut, String> {
    let mut hist = new_histogram();
    let mut commits = 0;
    let mut in_flight: VecDeque<(Instant, bool, Ticket<FsStorage>)> =
        VecDeque::with_capacity(window);
    let mut finish = |(t, timed, ticket): (Instant, bool, Ticket<FsStorage>)| {
        check_reached(ticket.wait())?;
        if timed {
            hist.saturating_record(ns_since(t));
            commits += 1;
        }
        Ok::<(), String>(())
    };
    loop {
        let p = phase.load(Ordering::Acquire);
        if p == STOP {
            break;
        }
        if in_flight.len() >= window {
            if let Some(oldest) = in_flight.pop_front() {
                finish(oldest)?;
            }
        }
        let record = gen.next_record();
        let t = Instant::now();
        let ticket = gc.commit_at(&[record], level).map_err(|e| e.to_string())?;
        in_flight.push_back((t, p == TIMED, ticket));
    }
    for item in in_flight.drain(..) {
        finish(item)?;
    }
    Ok(WorkerOut {
        commits,
        hist,
        engine_seconds: None,
        floor: None,
    })
}

/// A commit's outcome; one acknowledged *exposed* (the mirror was lost
/// mid-case) did not reach its level and would flatter the numbers.
pub(crate) fn check_reached(
    r: Result<mirrorlog_engine::commit::Committed, mirrorlog_engine::commit::CommitError>,
) -> Result<(), String> {
    match r {
        Ok(c) if c.exposed => Err(format!(
            "a commit at {} was acknowledged exposed: the mirror was lost during the case",
            c.level.name()
        )),
        Ok(_) => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

fn stats_delta(a: CommitStats, b: CommitStats) -> CommitStats {
    CommitStats {
        commits: b.commits - a.commits,
        batches: b.batches - a.batches,
        raw_bytes: b.raw_bytes - a.raw_bytes,
        log_bytes: b.log_bytes - a.log_bytes,
        stored_bytes: b.stored_bytes - a.stored_bytes,
        segments_prepared: b.segments_prepared - a.segments_prepared,
        segment_prepare_errors: b.segment_prepare_errors - a.segment_prepare_errors,
    }
}

fn run_case(cfg: &Config, spec: &CaseSpec, dir: &Path) -> Result<CaseResult, String> {
    let (log, _report) = Log::open(dir, cfg.log_options())
        .map_err(|e| format!("opening log in {}: {e}", dir.display()))?;
    let mut gc = GroupCommit::start(Arc::new(log), CommitOptions::default())
        .map_err(|e| format!("starting group commit: {e}"))?;
    let phase = AtomicU8::new(WARMUP);
    let threads = spec.mode.threads();
    let paired = spec.mode == (Mode::Blocking { threads: 1 });
    let mut probe = if paired {
        let path = dir.join("floor-paired.dat");
        Some(SyncProbe::create(
            path,
            SyncKind::Preallocated,
            spec.record_bytes,
        )?)
    } else {
        None
    };
    // Paired cases spend about half of the timed period on the floor.
    let timed = if paired {
        2.0 * cfg.seconds
    } else {
        cfg.seconds
    };

    let outcome = std::thread::scope(|s| {
        if let Some(retain) = cfg.retain_bytes {
            // Retention, as a checkpointing database does it: delete whole
            // segments more than `retain` bytes behind the hardened LSN.
            let log = gc.log();
            let phase = &phase;
            s.spawn(move || {
                while phase.load(Ordering::Acquire) != STOP {
                    let hardened = log.hardened_lsn();
                    if hardened > retain {
                        let _ = log.delete_below(hardened - retain);
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            });
        }
        let mut handles = Vec::with_capacity(threads);
        for t in 0..threads {
            let gen = RecordGen::new(spec.data, spec.record_bytes, t as u64 + 1);
            let gc = &gc;
            let phase = &phase;
            let mode = spec.mode;
            let probe = probe.take();
            let h = std::thread::Builder::new()
                .name(format!("committer-{t}"))
                .spawn_scoped(s, move || {
                    let r = match mode {
                        Mode::Blocking { .. } => {
                            blocking_worker(gc, Level::Local, phase, gen, probe)
                        }
                        Mode::Pipelined { window, .. } => {
                            pipelined_worker(gc, Level::Local, phase, gen, window)
                        }
                    };
                    if r.is_err() {
                        phase.store(STOP, Ordering::Release);
                    }
                    r
                });
            match h {
                Ok(h) => handles.push(h),
                Err(e) => {
                    phase.store(STOP, Ordering::Release);
                    for h in handles {
                        let _ = h.join();
                    }
                    return Err(format!("spawning committer thread: {e}"));
                }
            }
        }
        // Sleep in small steps so a failing worker ends the case early.
        let sleep = |d: Duration| {
            let end = Instant::now() + d;
            while phase.load(Ordering::Acquire) != STOP {
                let now = Instant::now();
                if now >= end {
                    break;
                }
                std::thread::sleep((end - now).min(Duration::from_millis(20)));
            }
        };
        sleep(secs(cfg.warmup));
        gc.reset_latency();
        let before = gc.stats();
        let _ = phase.compare_exchange(WARMUP, TIMED, Ordering::AcqRel, Ordering::Acquire);
        let t0 = Instant::now();
        sleep(secs(timed));
        let _ = phase.compare_exchange(TIMED, STOP, Ordering::AcqRel, Ordering::Acquire);
        let mut seconds = t0.elapsed().as_secs_f64();
        let after = gc.stats();
        let mut hist = new_histogram();
        let mut paired_floor = None;
        let mut commits = 0;
        let mut first_err = None;
        for h in handles {
            match h.join() {
                Ok(Ok(out)) => {
                    commits += out.commits;
                    if let Some(engine) = out.engine_seconds {
                        seconds = engine;
                    }
                    if out.floor.is_some() {
                        paired_floor = out.floor;
                    }
                    hist.add(&out.hist)
                        .map_err(|e| format!("merging histograms: {e:?}"))?;
                }
                Ok(Err(e)) => {
                    first_err.get_or_insert(e);
                }
                Err(_) => {
                    first_err.get_or_insert("a committer thread panicked".to_string());
                }
            }
        }
        if let Some(e) = first_err {
            return Err(format!("{}: commit failed: {e}", spec.describe()));
        }
        Ok(CaseResult {
            spec: *spec,
            commits,
            seconds,
            stats: stats_delta(before, after),
            hist,
            paired_floor,
        })
    });
    gc.shutdown();
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regression_neighbouring_seeds_give_different_streams() {
        let first: Vec<u64> = (0..64).map(|seed| XorShift::new(seed).next_u64()).collect();
        for (i, a) in first.iter().enumerate() {
            for b in &first[i + 1..] {
                assert_ne!(a, b, "two of seeds 0..64 start alike");
            }
        }
        let mut a = RecordGen::new(Data::Incompressible, 100, 2);
        let mut b = RecordGen::new(Data::Incompressible, 100, 3);
        assert_ne!(a.next_record().to_vec(), b.next_record().to_vec());
    }

    #[test]
    fn records_have_the_size_and_content_asked_for() {
        let mut c = RecordGen::new(Data::Compressible, 100, 1);
        let a = c.next_record().to_vec();
        let b = c.next_record().to_vec();
        assert_eq!(a.len(), 100);
        assert_ne!(a, b);
        assert!(a[16..].iter().all(|x| x.is_ascii()));
        let mut i = RecordGen::new(Data::Incompressible, 4096, 1);
        let a = i.next_record().to_vec();
        let b = i.next_record().to_vec();
        assert_eq!(a.len(), 4096);
        assert_ne!(a, b);
        let mut odd = RecordGen::new(Data::Incompressible, 13, 9);
        assert_eq!(odd.next_record().len(), 13);
    }
}
