//! mirrorlog-bench: latency and throughput benchmarks for mirrorlog.
//!
//! Scenarios:
//! * `local-commit` (the default): group commit on one machine, many
//!   committers and a pipelined client, against the floor of the same file
//!   system (raw write+fdatasync latency and sequential-write bandwidth),
//!   measured in the same run and the same directory.
//! * `mirroring`, `resp`, `failover`: see `--help`.
//!
//! Run `mirrorlog-bench --help` for the options.

mod delay_proxy;
mod failover_bench;
mod floor;
mod histo;
mod latency;
mod loadgen;
mod local_commit;
mod mirroring;
mod mirroring_report;
mod multiplex;
mod partner_tls_bench;
mod peers;
mod progress;
mod report;
mod resp_bench;
mod resp_tls;
mod results;
mod wires;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use mirrorlog_engine::commit::Level;
use mirrorlog_engine::log::{Compression, LogOptions};
use mirrorlog_engine::transport::TransportChoice;

const HELP: &str = "\
mirrorlog-bench: latency and throughput benchmarks for mirrorlog

USAGE:
    mirrorlog-bench [SCENARIO] [OPTIONS]
    mirrorlog-bench compare OLD.json NEW.json [--threshold PCT] [--fail-on-regression]

SCENARIOS:
    latency         (default) The latency suite. Parts (--parts): engine-local
                    (the engine in this process, local commits; every
                    --sizes x --data), engine-mirror (a principal here and a
                    mirror in a child process over loopback; every
                    --levels), resp (the key-value server, principal +
                    mirror; safety off, safety full, per-connection
                    remote-apply; SET, and GET). Closed loop at every
                    --connections count and 8 clients pipelining --pipeline
                    deep (rounds: send N, wait for all N; each operation
                    counts the round's latency); each case --repeat times (median ops/s, spread,
                    merged histogram). Open-loop sweeps (--sweep fractions of
                    the closed-loop rate at the most clients; latency timed
                    from each operation's intended start, so coordinated
                    omission is corrected, as wrk2 does) for engine
                    remote-flush and RESP safety full and off, with the
                    highest rate holding --p99-target-ms. Floors in the same
                    run: pwrite+fdatasync of 100 B and a loopback round trip,
                    before the cases (each case shows its p50 over its floor
                    latency and its ops/s as a share of clients x pipeline /
                    floor latency) and after them (drift check). Target: safety
                    full costs at most 1.5x the safety-off p50 at 1 client.
                    Default run about 7 minutes; --quick about 1.
    peers           mirrorlog next to PostgreSQL 15 (one streaming standby,
                    synchronous_commit local / remote_write / on /
                    remote_apply; INSERT into an append-only table) and
                    Redis 7 (one replica, appendfsync always; SET, and SET
                    + WAIT 1 0), all on 127.0.0.1 and started here (install
                    them first: bench/peers/install.sh), and the engine API;
                    one 100-byte record per transaction, closed loop at
                    every --connections count, systems interleaved. Prints
                    one side-by-side table and writes it as JSON and Markdown
                    (--json FILE, Markdown beside it; default
                    peers-<time>.json in the current directory). Targets:
                    safety full at the most clients >= 5x PostgreSQL
                    synchronous_commit=on and >= 3x Redis SET+WAIT ops/s,
                    with a lower p99 than both. Everything it started is
                    stopped by PID at the end, on failure and on Ctrl-C.
    local-commit    Group commit on this machine: 1, 8 and 64
                    concurrent committers and a pipelined client (many
                    commits in flight per thread), records of 100 B and
                    4 KiB, compressible and incompressible. Reports
                    commits/s, MB/s and client-observed latency
                    (p50/p99/p99.9/max), next to the floor measured in the
                    same run on the same file system: raw write+fdatasync
                    latency (before and after the cases, and interleaved
                    in 100 ms slices with each 1-committer case) and raw
                    sequential-write bandwidth (1 MiB writes, fdatasync
                    every 4 MiB; appending, and overwriting). Ends with
                    the targets: 1-committer p50 within 1.2x the
                    interleaved fdatasync p50; pipelined 100 B >= 1,000,000
                    commits/s; 4 KiB incompressible >= 70% of the
                    appending raw bandwidth. Targets are reported as
                    PASS/MISS; the exit code is 0 either way unless
                    something failed.
    mirroring       A principal in this process and a mirror in a child
                    process (this binary), on loopback, once per transport
                    path (io_uring, then blocking sockets). For each commit
                    level (local, remote-write, remote-flush, remote-apply),
                    1, 8 and 64 committers and a pipelined client, 100 B
                    and 4 KiB compressible records: commits/s, latency
                    percentiles, the send queue (largest during the case),
                    the redo queue at the end and the time the mirror took
                    to catch up. Floors measured in the same run:
                    pwrite+fdatasync latency on the same file system and a
                    loopback TCP round trip. Targets: remote-flush 1
                    committer p50 <= 1.3x max(fdatasync, rtt + fdatasync);
                    remote-flush pipelined 100 B >= 500,000 commits/s;
                    local (async) pipelined 100 B >= 1,000,000 commits/s
                    with the send queue <= 64 MiB; io_uring as fast as
                    blocking in every case.
    partner-tls     TLS on the partner link against plaintext in the same
                    run, safety full (remote-flush): a principal and a
                    mirror in this process, once each as plaintext over
                    blocking sockets, plaintext over the default path
                    (io_uring where available), TLS (per-message seal off,
                    the default), TLS with the seal kept; 1 and 16
                    committers of 100 B and 4 KiB records. Commits/s,
                    p50/p99 commit latency and CPU per commit (user + system
                    of the process / commits) with each mode's ratio to
                    plaintext. Two passes (the second in reverse order),
                    merged; --quick one. Goal: TLS <= 1.15x the CPU per
                    commit of plaintext on the same (blocking) path.
    resp            The key-value server (a principal and a mirror on
                    loopback, in this process) driven by our own RESP load
                    generator: SET and GET of 100 B values from 1, 8 and 32
                    connections one command at a time, and 8 connections
                    pipelining 32 deep, in safety full and off, next to the
                    fdatasync and loopback round-trip floors. Target: safety
                    full, SET, 32 connections >= 50,000 ops/s (5x PostgreSQL
                    synchronous_commit=on, 3x Redis SET+WAIT as measured on
                    this machine before).
    failover        Real processes on 127.0.0.1: `mirrorlog witness` and two
                    `mirrorlog serve` partners (safety full; the binary next
                    to this one, see --mirrorlog). (1) --runs times, each on
                    fresh directories and a fresh witness: 4 clients SET
                    continuously, the principal is SIGKILLed, and the
                    failover time is from the kill to the first SET the new
                    principal acknowledges (p50/p99/max over the runs, with
                    the witness's and the new principal's log lines as a
                    timeline); every acknowledged write is read back from
                    the new principal and none may be lost (a loss fails
                    the run and the exit code). (2) Catch-up: the mirror is
                    SIGKILLed, --catchup-mb of 16 KiB values are written to
                    the principal (running exposed), the mirror restarts,
                    and MB/s of log until the principal reports it hardened
                    up to the written LSN, next to floors of the same run:
                    a loopback TCP copy of as many bytes and sequential
                    write+fdatasync bandwidth (--seconds each) on the same
                    file system. (3) Reseed: not implemented, not measured.
                    Target: failover p99 within the partner timeout +
                    500 ms (PASS/MISS).
    compare         Reads two result files (latency or peers --json) and
                    prints, per case in both, new/old ratios of ops/s, p50
                    and p99, flagging changes past --threshold (default 10%)
                    as REGRESSION or better; --fail-on-regression exits 1
                    when there is one.
    help            Print this help.

OPTIONS:
    --dir DIR              Directory to benchmark in. A scratch directory is
                           created inside it (a fresh log directory per case)
                           and removed at the end. Default: a new directory
                           under the system temp dir ($TMPDIR or /tmp).
    --seconds S            Timed seconds per case and per floor measurement
                           (default 2 for latency and peers, else 3;
                           local-commit's 1-committer cases take twice as
                           long, half of it spent on the interleaved floor).
    --warmup S             Untimed warm-up seconds before each case and floor
                           (default 0.5).
    --quick                Smoke run: --seconds 1 (latency, peers: 0.5,
                           --repeat 1) --warmup 0.2 unless given.
    --json FILE            Also write all results, floors, targets and machine
                           information as JSON to FILE (via FILE.tmp + rename).
    --committers LIST      Blocking committer thread counts (default 1,8,64);
                           `none` runs only the pipelined mode.
    --sizes LIST           Record sizes in bytes; k/KiB suffixes allowed
                           (default 100,4096).
    --data LIST            Record contents: compressible,incompressible
                           (default both).
    --pipelined-threads N  Threads in the pipelined mode; 0 skips it
                           (default 1).
    --window N             Commits in flight per pipelined thread (default
                           1024).
    --segment-mib N        Log segment size in MiB (default 64).
    --retain-mib N         Keep only about N MiB of hardened log: a thread
                           deletes older segments as a checkpointing database
                           would, so rollovers reuse retired segment files
                           (steady state). Default: keep everything (every
                           segment is a new file of zeros: worst case).
    --compression C        zstd:LEVEL or off (default zstd:1).
    --levels LIST          mirroring: commit levels (default
                           local,remote-write,remote-flush,remote-apply).
    --connections LIST     latency, peers, resp: clients (default 1,8,32).
    --pipeline N           latency, resp: depth of the pipelined mode (default
                           32; 1 skips it).
    --mix                  resp: instead of the cases above, a 50/50 SET/GET mix
                           (safety full, each --connections count) on a pair
                           with --read-barrier off, then one with on (same
                           build, same run): GET and SET ops/s and p99 each.
    --tls                  resp: instead, SETs (safety full, each --connections
                           count) on one principal's plaintext and TLS client
                           ports in turn, 3 times: ops/s, p50/p99 and CPU per
                           SET, TLS over plaintext (goal <= 1.15x CPU).
    --transports LIST      mirroring: io_uring,blocking (default both; an
                           unavailable io_uring is reported and skipped).
    --runs N               failover: SIGKILL failovers to measure (default 20;
                           --quick: 3).
    --partner-timeout-ms N failover: the partners' --partner-timeout-ms and the
                           witness's --lease-ms (default 1000).
    --catchup-mb N         failover: MB (10^6 B) of values written while the
                           mirror is down (default 200; --quick: 20; 0 skips
                           the catch-up).
    --parts LIST           latency: engine-local,engine-mirror,resp (default all).
    --repeat N             latency, peers: runs per case (default 3; --quick 1).
    --sweep LIST           latency: open-loop rates as fractions of the
                           closed-loop ops/s (default
                           0.1,0.25,0.5,0.75,0.9,1.0,1.2; none skips).
    --p99-target-ms X      latency: the sweep's p99 target (default 2).
    --gen-threads N        latency, peers: threads of the event-driven load
                           generator that drives every network client (RESP,
                           PostgreSQL) over nonblocking sockets (default 1;
                           the in-process engine clients are threads).
    --server-io MODE       latency, peers, resp: how the mirrorlog servers started
                           here serve clients, as `mirrorlog serve --io`:
                           epoll, epoll:N (N event loops) or threads (default
                           epoll).
    --added-rtt-ms X       latency: the engine-mirror part's mirror connects
                           through a proxy on 127.0.0.1 that delays each
                           direction by X/2 ms (a mirror X ms away; bandwidth
                           not limited). Default 0: direct.
    --systems LIST         peers: postgresql,redis,mirrorlog,engine (default all).
    --mirrorlog PATH       failover: the mirrorlog binary (default: $MIRRORLOG_BIN,
                           else `mirrorlog` next to this binary; build it with
                           cargo build --release -p mirrorlog and the same
                           target directory).
    -h, --help             Print this help.

DURABILITY:
    local commit = msync(MS_SYNC) of the batch before acknowledging;
    floor = write+fdatasync. Latency is client-observed: from before commit()
    to after Ticket::wait() returns. MB/s counts record payload bytes
    (1 MB = 10^6 bytes).

EXAMPLES:
    mirrorlog-bench
    mirrorlog-bench --quick --json /tmp/quick.json
    mirrorlog-bench latency --json new.json && mirrorlog-bench compare old.json new.json
    bench/peers/install.sh && mirrorlog-bench peers --json /tmp/peers.json
    mirrorlog-bench local-commit --json /tmp/bench-local.json
    mirrorlog-bench mirroring --json /tmp/bench-mirroring.json
    mirrorlog-bench failover --runs 20 --partner-timeout-ms 1000 --json /tmp/bench-failover.json
    mirrorlog-bench --quick --committers 1 --sizes 100 --data compressible
";

/// What kind of bytes the records hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Data {
    /// Repeated text with a counter: zstd shrinks it a lot.
    Compressible,
    /// Fresh pseudo-random bytes per record: zstd cannot shrink it.
    Incompressible,
}

impl Data {
    pub fn name(self) -> &'static str {
        match self {
            Data::Compressible => "compressible",
            Data::Incompressible => "incompressible",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    Latency,
    Peers,
    LocalCommit,
    Mirroring,
    Resp,
    Failover,
    PartnerTls,
}

/// Everything the command line decides.
#[derive(Clone, Debug)]
pub struct Config {
    pub scenario: Scenario,
    /// latency: the parts to run, runs per case, the open-loop sweep's
    /// rates as fractions of the closed-loop throughput, and its p99 target.
    pub parts: Vec<latency::Part>,
    pub repeat: usize,
    pub sweep: Vec<f64>,
    pub p99_target_us: f64,
    /// latency: extra round-trip time between principal and mirror in the
    /// engine-mirror part (a delaying proxy), in ms.
    pub added_rtt_ms: f64,
    /// Threads of the event-driven generator that drives network clients
    /// (latency's resp part, peers).
    pub gen_threads: usize,
    /// How the key-value servers the benchmark starts serve clients
    /// (`mirrorlog serve --io`).
    pub server_io: mirrorlog::server::IoMode,
    /// peers: which systems to run (postgresql, redis, mirrorlog, engine).
    pub systems: Vec<String>,
    /// mirroring: levels and transport paths to run.
    pub levels: Vec<Level>,
    pub transports: Vec<TransportChoice>,
    /// resp: client connection counts, and the pipelined mode's depth.
    pub connections: Vec<usize>,
    pub pipeline: usize,
    /// resp: run only the read-barrier comparison instead (a 50/50
    /// SET/GET mix, safety full, --read-barrier off and on).
    pub mix: bool,
    /// resp: run only the TLS client port comparison instead.
    pub tls: bool,
    /// failover: runs, the partner timeout (= witness lease), MB written
    /// while the mirror is down, and the mirrorlog binary to run.
    pub runs: usize,
    pub partner_timeout_ms: u64,
    pub catchup_mb: u64,
    pub mirrorlog_bin: Option<PathBuf>,
    /// Scratch directory for this run (created by main, removed at the end).
    pub scratch: PathBuf,
    /// The directory the user pointed at (or the temp dir).
    pub base_dir: PathBuf,
    pub seconds: f64,
    pub warmup: f64,
    pub quick: bool,
    pub json: Option<PathBuf>,
    pub committers: Vec<usize>,
    pub sizes: Vec<usize>,
    pub data: Vec<Data>,
    pub pipelined_threads: usize,
    pub window: usize,
    pub segment_bytes: usize,
    pub compression: Compression,
    /// Hardened log bytes to keep (older segments are deleted); None keeps all.
    pub retain_bytes: Option<u64>,
}

impl Config {
    pub fn log_options(&self) -> LogOptions {
        LogOptions {
            segment_bytes: self.segment_bytes,
            compression: self.compression,
        }
    }
}

pub fn compression_name(c: Compression) -> String {
    match c {
        Compression::Off => "off".into(),
        Compression::Zstd(level) => format!("zstd:{level}"),
    }
}

enum Parsed {
    Help,
    Run(Box<Config>),
}

fn parse_f64(flag: &str, v: &str) -> Result<f64, String> {
    let x: f64 = v
        .parse()
        .map_err(|_| format!("{flag} expects a number of seconds, got {v:?}"))?;
    if !x.is_finite() || x < 0.0 {
        return Err(format!(
            "{flag} expects a non-negative number of seconds, got {v:?}"
        ));
    }
    Ok(x)
}

fn parse_usize(flag: &str, v: &str, min: usize) -> Result<usize, String> {
    let x: usize = v
        .parse()
        .map_err(|_| format!("{flag} expects a whole number, got {v:?}"))?;
    if x < min {
        return Err(format!("{flag} must be at least {min}, got {x}"));
    }
    Ok(x)
}

fn parse_size(flag: &str, v: &str) -> Result<usize, String> {
    let lower = v.trim().to_ascii_lowercase();
    let (digits, mult) = if let Some(d) = lower
        .strip_suffix("kib")
        .or_else(|| lower.strip_suffix("kb"))
        .or_else(|| lower.strip_suffix('k'))
    {
        (d, 1024)
    } else if let Some(d) = lower.strip_suffix('b') {
        (d, 1)
    } else {
        (lower.as_str(), 1)
    };
    let n: usize = digits
        .trim()
        .parse()
        .map_err(|_| format!("{flag} expects sizes like 100 or 4k, got {v:?}"))?;
    let bytes = n
        .checked_mul(mult)
        .filter(|&b| (1..=1 << 20).contains(&b))
        .ok_or_else(|| format!("{flag}: record size must be 1 B to 1 MiB, got {v:?}"))?;
    Ok(bytes)
}

fn parse_list<T>(
    flag: &str,
    v: &str,
    item: impl Fn(&str) -> Result<T, String>,
) -> Result<Vec<T>, String> {
    let out: Vec<T> = v
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(item)
        .collect::<Result<_, _>>()?;
    if out.is_empty() {
        return Err(format!("{flag} expects a comma-separated list, got {v:?}"));
    }
    Ok(out)
}

fn parse_data(v: &str) -> Result<Data, String> {
    match v {
        "compressible" | "c" => Ok(Data::Compressible),
        "incompressible" | "i" => Ok(Data::Incompressible),
        _ => Err(format!(
            "--data: unknown record content {v:?}; expected compressible or incompressible"
        )),
    }
}

fn parse_compression(v: &str) -> Result<Compression, String> {
    if v == "off" || v == "none" {
        return Ok(Compression::Off);
    }
    let level = v
        .strip_prefix("zstd:")
        .or_else(|| v.strip_prefix("zstd="))
        .map(|l| {
            l.parse::<i32>()
                .map_err(|_| format!("--compression: zstd level must be a number, got {l:?}"))
        });
    match (v, level) {
        ("zstd", _) => Ok(Compression::Zstd(1)),
        (_, Some(l)) => Ok(Compression::Zstd(l?)),
        _ => Err(format!(
            "--compression expects zstd:LEVEL or off, got {v:?}"
        )),
    }
}

fn parse_args(args: Vec<String>) -> Result<Parsed, String> {
    let mut seconds = None;
    let mut warmup = None;
    let mut quick = false;
    let mut mix = false;
    let mut tls = false;
    let mut dir = None;
    let mut json = None;
    let mut committers = vec![1, 8, 64];
    let mut sizes = vec![100, 4096];
    let mut data = vec![Data::Compressible, Data::Incompressible];
    let mut pipelined_threads = 1;
    let mut window = 1024;
    let mut segment_mib = 64;
    let mut retain_mib = None;
    let mut compression = Compression::Zstd(1);
    let mut scenario: Option<String> = None;
    let mut levels = Level::ALL.to_vec();
    let mut transports = vec![TransportChoice::IoUring, TransportChoice::Blocking];
    let mut data_given = false;
    let mut connections = vec![1, 8, 32];
    let mut pipeline = 32;
    let mut runs = None;
    let mut partner_timeout_ms = 1000u64;
    let mut catchup_mb = None;
    let mut mirrorlog_bin = None;
    let mut parts = latency::Part::ALL.to_vec();
    let mut repeat = None;
    let mut sweep = vec![0.1, 0.25, 0.5, 0.75, 0.9, 1.0, 1.2];
    let mut p99_target_ms = 2.0;
    let mut added_rtt_ms = 0.0;
    let mut gen_threads = 1;
    let mut server_io = mirrorlog::server::IoMode::default();
    let mut systems: Vec<String> = ["postgresql", "redis", "mirrorlog", "engine"]
        .map(String::from)
        .to_vec();

    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        if !arg.starts_with('-') {
            match (arg.as_str(), &scenario) {
                ("help", None) => return Ok(Parsed::Help),
                ("latency" | "peers" | "local-commit" | "mirroring" | "resp" | "failover"
                | "partner-tls", None) => {
                    scenario = Some(arg)
                }
                (_, None) => {
                    return Err(format!(
                        "unknown scenario {arg:?}; the scenarios are: latency, peers, local-commit, mirroring, resp, failover (and the commands compare, help)"
                    ))
                }
                (_, Some(_)) => return Err(format!("unexpected argument {arg:?}")),
            }
            continue;
        }
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let takes_value = !matches!(
            flag.as_str(),
            "-h" | "--help" | "--quick" | "--mix" | "--tls"
        );
        if !takes_value && inline.is_some() {
            return Err(format!("{flag} takes no value"));
        }
        let mut value = || -> Result<String, String> {
            match &inline {
                Some(v) => Ok(v.clone()),
                None => it.next().ok_or_else(|| format!("{flag} needs a value")),
            }
        };
        match flag.as_str() {
            "-h" | "--help" => return Ok(Parsed::Help),
            "--quick" => quick = true,
            "--mix" => mix = true,
            "--tls" => tls = true,
            "--seconds" => {
                let s = parse_f64(&flag, &value()?)?;
                if s <= 0.0 {
                    return Err("--seconds must be greater than 0".into());
                }
                seconds = Some(s);
            }
            "--warmup" => warmup = Some(parse_f64(&flag, &value()?)?),
            "--dir" => dir = Some(PathBuf::from(value()?)),
            "--json" => json = Some(PathBuf::from(value()?)),
            "--committers" => {
                let v = value()?;
                committers = if v == "none" {
                    Vec::new()
                } else {
                    parse_list(&flag, &v, |s| parse_usize(&flag, s, 1))?
                };
                if let Some(&big) = committers.iter().find(|&&n| n > 4096) {
                    return Err(format!("--committers: at most 4096 threads, got {big}"));
                }
            }
            "--sizes" => {
                let v = value()?;
                sizes = parse_list(&flag, &v, |s| parse_size(&flag, s))?;
            }
            "--data" => {
                data = parse_list(&flag, &value()?, parse_data)?;
                data_given = true;
            }
            "--connections" => {
                connections = parse_list(&flag, &value()?, |s| parse_usize(&flag, s, 1))?;
                if connections.iter().any(|&c| c > 1000) {
                    return Err("--connections: at most 1000".into());
                }
            }
            "--pipeline" => pipeline = parse_usize(&flag, &value()?, 1)?,
            "--runs" => {
                let n = parse_usize(&flag, &value()?, 1)?;
                if n > 10_000 {
                    return Err("--runs: at most 10000".into());
                }
                runs = Some(n);
            }
            "--partner-timeout-ms" => {
                let n = parse_usize(&flag, &value()?, 50)?;
                if n > 600_000 {
                    return Err("--partner-timeout-ms: from 50 to 600000".into());
                }
                partner_timeout_ms = n as u64;
            }
            "--catchup-mb" => {
                let n = parse_usize(&flag, &value()?, 0)?;
                if n > 1_000_000 {
                    return Err("--catchup-mb: at most 1000000".into());
                }
                catchup_mb = Some(n as u64);
            }
            "--mirrorlog" => mirrorlog_bin = Some(PathBuf::from(value()?)),
            "--systems" => {
                systems = parse_list(&flag, &value()?, |x| {
                    peers::parse_system(x).map(String::from)
                })?
            }
            "--parts" => parts = parse_list(&flag, &value()?, latency::Part::parse)?,
            "--repeat" => {
                let n = parse_usize(&flag, &value()?, 1)?;
                if n > 100 {
                    return Err("--repeat: at most 100".into());
                }
                repeat = Some(n);
            }
            "--sweep" => {
                let v = value()?;
                sweep = if v == "none" {
                    Vec::new()
                } else {
                    parse_list(&flag, &v, |x| {
                        let f: f64 = x.parse().map_err(|_| {
                            format!("--sweep expects fractions like 0.5,0.9,1.1 or none, got {x:?}")
                        })?;
                        if !(f.is_finite() && f > 0.0 && f <= 10.0) {
                            return Err(format!("--sweep: fractions must be in (0, 10], got {x}"));
                        }
                        Ok(f)
                    })?
                };
            }
            "--server-io" => {
                server_io = value()?.parse().map_err(|e| format!("--server-io {e}"))?
            }
            "--gen-threads" => {
                gen_threads = parse_usize(&flag, &value()?, 1)?;
                if gen_threads > 64 {
                    return Err("--gen-threads: at most 64".into());
                }
            }
            "--added-rtt-ms" => {
                let v = value()?;
                let x: f64 = v
                    .parse()
                    .map_err(|_| format!("--added-rtt-ms expects milliseconds, got {v:?}"))?;
                if !(x.is_finite() && (0.0..=10_000.0).contains(&x)) {
                    return Err(format!("--added-rtt-ms must be from 0 to 10000, got {v:?}"));
                }
                added_rtt_ms = x;
            }
            "--p99-target-ms" => {
                let v = value()?;
                let x: f64 = v
                    .parse()
                    .map_err(|_| format!("--p99-target-ms expects milliseconds, got {v:?}"))?;
                if !(x.is_finite() && x > 0.0) {
                    return Err(format!("--p99-target-ms must be positive, got {v:?}"));
                }
                p99_target_ms = x;
            }
            "--levels" => levels = parse_list(&flag, &value()?, |s| s.parse::<Level>())?,
            "--transports" => {
                transports = parse_list(&flag, &value()?, |s| match s {
                    "io_uring" | "io-uring" => Ok(TransportChoice::IoUring),
                    "blocking" => Ok(TransportChoice::Blocking),
                    _ => Err(format!(
                        "--transports: unknown path {s:?} (expected io_uring, blocking)"
                    )),
                })?
            }
            "--pipelined-threads" => {
                pipelined_threads = parse_usize(&flag, &value()?, 0)?;
                if pipelined_threads > 1024 {
                    return Err("--pipelined-threads: at most 1024".into());
                }
            }
            "--window" => window = parse_usize(&flag, &value()?, 1)?,
            "--segment-mib" => {
                segment_mib = parse_usize(&flag, &value()?, 1)?;
                if segment_mib > 4096 {
                    return Err(format!(
                        "--segment-mib must be between 1 and 4096, got {segment_mib}"
                    ));
                }
            }
            "--compression" => compression = parse_compression(&value()?)?,
            "--retain-mib" => retain_mib = Some(parse_usize(&flag, &value()?, 1)? as u64),
            _ => {
                return Err(format!(
                    "unknown option {flag:?} (see mirrorlog-bench --help)"
                ))
            }
        }
    }
    dedup(&mut committers);
    dedup(&mut sizes);
    let scenario = match scenario.as_deref() {
        Some("local-commit") => Scenario::LocalCommit,
        Some("peers") => Scenario::Peers,
        Some("mirroring") => Scenario::Mirroring,
        Some("resp") => Scenario::Resp,
        Some("failover") => Scenario::Failover,
        Some("partner-tls") => Scenario::PartnerTls,
        _ => Scenario::Latency,
    };
    if scenario == Scenario::Mirroring && !data_given {
        // Mirroring ships what the log holds; compressible records are the
        // common case and keep the run short (--data adds the other).
        data = vec![Data::Compressible];
    }
    dedup(&mut data);
    dedup(&mut levels);
    dedup(&mut parts);
    dedup(&mut transports);

    let latency = matches!(scenario, Scenario::Latency | Scenario::Peers);
    let seconds = seconds.unwrap_or(match (latency, quick) {
        (true, true) => 0.5,
        (true, false) => 2.0,
        (false, true) => 1.0,
        (false, false) => 3.0,
    });
    let warmup = warmup.unwrap_or(if quick { 0.2 } else { 0.5 });
    let base_dir = dir.unwrap_or_else(std::env::temp_dir);
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let scratch = base_dir.join(format!(
        "mirrorlog-bench-{}-{:x}",
        std::process::id(),
        stamp
    ));
    Ok(Parsed::Run(Box::new(Config {
        scenario,
        parts,
        repeat: repeat.unwrap_or(if quick { 1 } else { 3 }),
        sweep,
        p99_target_us: p99_target_ms * 1000.0,
        systems,
        added_rtt_ms,
        gen_threads,
        server_io,
        levels,
        transports,
        connections,
        pipeline,
        mix,
        tls,
        runs: runs.unwrap_or(if quick { 3 } else { 20 }),
        partner_timeout_ms,
        catchup_mb: catchup_mb.unwrap_or(if quick { 20 } else { 200 }),
        mirrorlog_bin,
        scratch,
        base_dir,
        seconds,
        warmup,
        quick,
        json,
        committers,
        sizes,
        data,
        pipelined_threads,
        window,
        segment_bytes: segment_mib << 20,
        compression,
        retain_bytes: retain_mib.map(|m| m << 20),
    })))
}

fn dedup<T: PartialEq + Copy>(v: &mut Vec<T>) {
    let mut out: Vec<T> = Vec::with_capacity(v.len());
    for x in v.iter() {
        if !out.contains(x) {
            out.push(*x);
        }
    }
    *v = out;
}

/// Removes the scratch directory when the run ends, however it ends.
struct Scratch<'a>(&'a Path);

impl Drop for Scratch<'_> {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(self.0) {
            if e.kind() != std::io::ErrorKind::NotFound {
                eprintln!(
                    "warning: could not remove scratch directory {}: {e}",
                    self.0.display()
                );
            }
        }
    }
}

fn check_json_target(path: &Path) -> Result<(), String> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !parent.is_dir() {
        return Err(format!(
            "--json {}: directory {} does not exist",
            path.display(),
            parent.display()
        ));
    }
    if path.is_dir() {
        return Err(format!("--json {}: is a directory", path.display()));
    }
    Ok(())
}

fn run(cfg: &Config) -> Result<(), String> {
    if let Some(json) = &cfg.json {
        check_json_target(json)?;
    }
    cfg.log_options()
        .validate()
        .map_err(|e| format!("--segment-mib/--compression: {e}"))?;
    if !cfg.base_dir.is_dir() {
        return Err(format!(
            "--dir {}: not an existing directory",
            cfg.base_dir.display()
        ));
    }
    std::fs::create_dir(&cfg.scratch)
        .map_err(|e| format!("creating scratch directory {}: {e}", cfg.scratch.display()))?;
    let _cleanup = Scratch(&cfg.scratch);
    let machine = report::Machine::probe(&cfg.base_dir);
    if machine.fs_type == "tmpfs" || machine.fs_type == "ramfs" {
        eprintln!(
            "warning: {} is on {}: fdatasync and msync do nothing there, so these numbers say nothing about durable commits (use --dir on a real disk)",
            cfg.base_dir.display(),
            machine.fs_type
        );
    }
    match cfg.scenario {
        Scenario::Latency => {
            peers::procs::install_interrupt_handler();
            let (suite, info) = latency::run(cfg)?;
            print!("{}", latency::render(cfg, &suite, &machine));
            if let Some(path) = &cfg.json {
                report::write_json_value(path, &latency::to_json(cfg, &suite, &machine, &info))?;
                eprintln!("wrote {}", path.display());
            }
        }
        Scenario::Peers => {
            let (json_path, md_path) = peers::outputs(cfg);
            check_json_target(&json_path)?;
            let r = peers::run(cfg)?;
            print!("{}", peers::render(&r, cfg, &machine));
            report::write_json_value(&json_path, &peers::to_json(&r, cfg, &machine))?;
            peers::write_text(&md_path, &peers::markdown(&r, cfg, &machine))?;
            eprintln!("wrote {} and {}", json_path.display(), md_path.display());
        }
        Scenario::LocalCommit => {
            let suite = local_commit::run(cfg)?;
            print!("{}", report::render(cfg, &machine, &suite));
            if let Some(path) = &cfg.json {
                report::write_json_value(path, &report::to_json(cfg, &machine, &suite))?;
                eprintln!("wrote {}", path.display());
            }
        }
        Scenario::Resp => {
            let suite = resp_bench::run(cfg)?;
            print!("{}", resp_bench::render(cfg, &suite));
            if let Some(path) = &cfg.json {
                report::write_json_value(path, &resp_bench::to_json(cfg, &suite))?;
                eprintln!("wrote {}", path.display());
            }
        }
        Scenario::Failover => {
            let suite = failover_bench::run(cfg)?;
            print!("{}", failover_bench::render(cfg, &machine, &suite));
            if let Some(path) = &cfg.json {
                report::write_json_value(path, &failover_bench::to_json(cfg, &machine, &suite))?;
                eprintln!("wrote {}", path.display());
            }
            if let Some(why) = suite.failure() {
                return Err(why);
            }
        }
        Scenario::PartnerTls => {
            let suite = partner_tls_bench::run(cfg)?;
            print!("{}", partner_tls_bench::render(cfg, &machine, &suite));
            if let Some(path) = &cfg.json {
                report::write_json_value(path, &partner_tls_bench::to_json(cfg, &machine, &suite))?;
                eprintln!("wrote {}", path.display());
            }
        }
        Scenario::Mirroring => {
            let suite = mirroring::run(cfg)?;
            print!("{}", mirroring_report::render(cfg, &machine, &suite));
            if let Some(path) = &cfg.json {
                report::write_json_value(path, &mirroring_report::to_json(cfg, &machine, &suite))?;
                eprintln!("wrote {}", path.display());
            }
        }
    }
    Ok(())
}

/// Err once Ctrl-C (SIGINT) or SIGTERM arrived, so a long run stops
/// between steps and its guards clean up what it started.
pub fn check_interrupted() -> Result<(), String> {
    if peers::procs::interrupted() {
        Err("interrupted".into())
    } else {
        Ok(())
    }
}

/// `mirrorlog-bench compare OLD.json NEW.json [--threshold PCT] [--fail-on-regression]`
fn compare_command(args: &[String]) -> Result<ExitCode, String> {
    let mut files = Vec::new();
    let mut threshold = 0.10;
    let mut fail = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--threshold" => {
                let v = it.next().ok_or("--threshold needs a percentage")?;
                let x: f64 = v
                    .trim_end_matches('%')
                    .parse()
                    .map_err(|_| format!("--threshold expects a percentage like 10, got {v:?}"))?;
                if !(x.is_finite() && (0.0..100.0).contains(&x)) {
                    return Err(format!("--threshold must be from 0 to 100, got {v:?}"));
                }
                threshold = x / 100.0;
            }
            "--fail-on-regression" => fail = true,
            f if f.starts_with('-') => return Err(format!("compare: unknown option {f:?}")),
            f => files.push(PathBuf::from(f)),
        }
    }
    let [old, new] = files.as_slice() else {
        return Err(
            "compare needs two result files: mirrorlog-bench compare OLD.json NEW.json".into(),
        );
    };
    let read = |p: &Path| -> Result<serde_json::Value, String> {
        let text = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
        serde_json::from_str(&text).map_err(|e| format!("{}: not JSON: {e}", p.display()))
    };
    let (text, regressions) = results::compare(&read(old)?, &read(new)?, threshold)?;
    println!(
        "comparing {} (old) with {} (new)",
        old.display(),
        new.display()
    );
    print!("{text}");
    Ok(if fail && regressions > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("compare") {
        return match compare_command(&args[1..]) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("mirrorlog-bench compare: {e}");
                ExitCode::from(2)
            }
        };
    }
    if args.first().map(String::as_str) == Some("mirror-node") {
        // The mirror process of the mirroring scenario (not for users).
        return match mirroring::mirror_node(&args[1..]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("mirrorlog-bench mirror-node: error: {e}");
                ExitCode::FAILURE
            }
        };
    }
    match parse_args(args) {
        Ok(Parsed::Help) => {
            print!("{HELP}");
            ExitCode::SUCCESS
        }
        Ok(Parsed::Run(cfg)) => match run(&cfg) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("mirrorlog-bench: error: {e}");
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            eprintln!("mirrorlog-bench: {e}\nRun mirrorlog-bench --help for usage.");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Parsed, String> {
        parse_args(args.iter().map(|s| s.to_string()).collect())
    }

    fn cfg(args: &[&str]) -> Config {
        match parse(args) {
            Ok(Parsed::Run(c)) => *c,
            Ok(Parsed::Help) => panic!("help"),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn defaults_and_scenario() {
        let c = cfg(&[]);
        assert_eq!(c.scenario, Scenario::Latency);
        assert_eq!((c.seconds, c.repeat, c.gen_threads), (2.0, 3, 1));
        assert_eq!(c.connections, vec![1, 8, 32]);
        assert_eq!(c.parts, latency::Part::ALL.to_vec());
        let c = cfg(&["--quick"]);
        assert_eq!((c.seconds, c.repeat, c.warmup), (0.5, 1, 0.2));
        let c = cfg(&["peers", "--systems", "redis,mirrorlog"]);
        assert_eq!(c.scenario, Scenario::Peers);
        assert_eq!(c.systems, vec!["redis", "mirrorlog"]);
        let c = cfg(&["latency", "--sweep", "none", "--added-rtt-ms", "5"]);
        assert!(c.sweep.is_empty());
        assert_eq!(c.added_rtt_ms, 5.0);
        let c = cfg(&["local-commit"]);
        assert_eq!(c.committers, vec![1, 8, 64]);
        assert_eq!(c.sizes, vec![100, 4096]);
        assert_eq!(c.seconds, 3.0);
        assert_eq!(c.segment_bytes, 64 << 20);
        assert_eq!(c.compression, Compression::Zstd(1));
        let c = cfg(&[
            "local-commit",
            "--quick",
            "--sizes=100,4k",
            "--seconds",
            "2",
        ]);
        assert_eq!(c.seconds, 2.0);
        assert_eq!(c.warmup, 0.2);
        assert_eq!(c.sizes, vec![100, 4096]);
        let c = cfg(&["failover"]);
        assert_eq!(c.scenario, Scenario::Failover);
        assert_eq!(
            (c.runs, c.partner_timeout_ms, c.catchup_mb),
            (20, 1000, 200)
        );
        let c = cfg(&["failover", "--quick", "--partner-timeout-ms=300"]);
        assert_eq!((c.runs, c.partner_timeout_ms, c.catchup_mb), (3, 300, 20));
        assert!(matches!(parse(&["--help"]), Ok(Parsed::Help)));
        assert!(matches!(parse(&["help"]), Ok(Parsed::Help)));
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        for args in [
            &["--seconds", "abc"][..],
            &["--seconds"],
            &["--bogus"],
            &["remote-commit"],
            &["--committers", "1,x"],
            &["--committers", "0"],
            &["--sizes", "0"],
            &["--data", "zeros"],
            &["--compression", "lz4"],
            &["--compression", "zstd:x"],
            &["--quick=yes"],
            &["--window", "-3"],
            &["--seconds", "NaN"],
            &["failover", "--runs", "0"],
            &["failover", "--partner-timeout-ms", "10"],
            &["peers", "--systems", "mysql"],
            &["latency", "--added-rtt-ms", "-1"],
            &["latency", "--gen-threads", "0"],
        ] {
            assert!(parse(args).is_err(), "{args:?} should be refused");
        }
    }
}
