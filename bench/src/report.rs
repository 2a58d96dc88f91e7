//! The readable table, the targets, and the JSON file.

use std::fmt::Write as _;
use std::path::Path;
use std::time::UNIX_EPOCH;

use hdrhistogram::Histogram;
use serde_json::{json, Value};

use crate::floor::{BwKind, SyncKind};
use crate::local_commit::{CaseResult, Mode, Suite};
use crate::{compression_name, Config, Data};

pub const DURABILITY: &str =
    "local commit = msync(MS_SYNC) of the batch before acknowledging; floor = write+fdatasync";

/// Target 1: 1-committer p50 at most this many times the fdatasync p50.
pub const P50_RATIO_MAX: f64 = 1.2;
/// Target 2: pipelined 100 B records, commits/s.
pub const PIPELINED_COMMITS_MIN: f64 = 1_000_000.0;
pub const PIPELINED_RECORD_BYTES: usize = 100;
/// Target 3: 4 KiB incompressible, fraction of raw sequential bandwidth.
pub const BANDWIDTH_FRACTION_MIN: f64 = 0.7;
pub const BANDWIDTH_RECORD_BYTES: usize = 4096;

pub fn size_name(bytes: usize) -> String {
    if bytes >= 1024 && bytes.is_multiple_of(1024) {
        format!("{} KiB", bytes / 1024)
    } else {
        format!("{bytes} B")
    }
}

/// What machine and file system the numbers come from.
pub struct Machine {
    pub nproc: usize,
    pub kernel: String,
    pub cpu: String,
    pub dir: String,
    pub fs_type: String,
    pub device: String,
}

fn read_trim(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

impl Machine {
    pub fn probe(dir: &Path) -> Machine {
        let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        // The mount with the longest mount point that is a prefix of dir.
        let (mut fs_type, mut device, mut best) = ("unknown".to_string(), String::new(), 0);
        if let Some(mounts) = read_trim("/proc/self/mounts") {
            for line in mounts.lines() {
                let f: Vec<&str> = line.split_whitespace().collect();
                if f.len() < 3 {
                    continue;
                }
                let mp = Path::new(f[1]);
                if dir.starts_with(mp) && f[1].len() >= best {
                    best = f[1].len();
                    device = f[0].to_string();
                    fs_type = f[2].to_string();
                }
            }
        }
        Machine {
            nproc: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(0),
            kernel: read_trim("/proc/sys/kernel/osrelease").unwrap_or_else(|| "unknown".into()),
            cpu,
            dir: dir.display().to_string(),
            fs_type,
            device,
        }
    }
}

fn us(ns: u64) -> f64 {
    ns as f64 / 1e3
}

struct Lat {
    p50: u64,
    p99: u64,
    p999: u64,
    max: u64,
}

fn lat(h: &Histogram<u64>) -> Lat {
    Lat {
        p50: h.value_at_quantile(0.5),
        p99: h.value_at_quantile(0.99),
        p999: h.value_at_quantile(0.999),
        max: h.max(),
    }
}

pub(crate) fn lat_json(h: &Histogram<u64>) -> Value {
    let l = lat(h);
    json!({
        "samples": h.len(),
        "mean_us": h.mean() / 1e3,
        "p50_us": us(l.p50),
        "p99_us": us(l.p99),
        "p99_9_us": us(l.p999),
        "max_us": us(l.max),
    })
}

pub(crate) fn fmt_us(ns: u64) -> String {
    let v = us(ns);
    if v >= 10_000.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

pub(crate) fn thousands(x: f64) -> String {
    let s = format!("{:.0}", x.max(0.0));
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// One evaluated target line.
pub struct Target {
    pub name: String,
    pub case: String,
    pub measured: f64,
    pub reference: f64,
    pub ratio: f64,
    pub goal: String,
    pub pass: bool,
    pub detail: String,
}

pub fn targets(suite: &Suite) -> Vec<Target> {
    let mut out = Vec::new();
    // 1. One committer: p50 within 1.2x the raw fdatasync p50 (same size).
    for c in &suite.cases {
        if c.spec.mode != (Mode::Blocking { threads: 1 }) {
            continue;
        }
        // Prefer the floor interleaved with this very case (same disk
        // weather); fall back to the before/after floors.
        let (floor, which) = match &c.paired_floor {
            Some(f) if !f.is_empty() => (f.clone(), "interleaved"),
            _ => match suite.sync_floor(c.spec.record_bytes) {
                Some(f) => (f, "before+after"),
                None => continue,
            },
        };
        let p50 = c.hist.value_at_quantile(0.5);
        let f50 = floor.value_at_quantile(0.5);
        let ratio = p50 as f64 / f50.max(1) as f64;
        out.push(Target {
            name: "1-committer p50 / fdatasync p50".into(),
            case: c.spec.describe(),
            measured: us(p50),
            reference: us(f50),
            ratio,
            goal: format!("<= {P50_RATIO_MAX}"),
            pass: ratio <= P50_RATIO_MAX,
            detail: format!(
                "commit p50 {:.1} us vs pwrite+fdatasync p50 {:.1} us ({}, {which})",
                us(p50),
                us(f50),
                size_name(c.spec.record_bytes)
            ),
        });
    }
    // 2. Pipelined 100 B: >= 1,000,000 commits/s.
    for c in &suite.cases {
        if !matches!(c.spec.mode, Mode::Pipelined { .. })
            || c.spec.record_bytes != PIPELINED_RECORD_BYTES
        {
            continue;
        }
        let cps = c.commits_per_s();
        out.push(Target {
            name: "pipelined 100 B commits/s".into(),
            case: c.spec.describe(),
            measured: cps,
            reference: PIPELINED_COMMITS_MIN,
            ratio: cps / PIPELINED_COMMITS_MIN,
            goal: ">= 1 (1,000,000/s)".into(),
            pass: cps >= PIPELINED_COMMITS_MIN,
            detail: format!("{} commits/s", thousands(cps)),
        });
    }
    // 3. 4 KiB incompressible: >= 70% of raw sequential-write bandwidth.
    //    The best case of that record kind against the best appending
    //    writer (a log must put new data in new space, and so does that
    //    writer); the ratio against overwriting an already written file,
    //    the stricter and possibly cache-flattered number, is shown too.
    let best = suite
        .cases
        .iter()
        .filter(|c| {
            c.spec.record_bytes == BANDWIDTH_RECORD_BYTES && c.spec.data == Data::Incompressible
        })
        .max_by(|a, b| a.mb_per_s().total_cmp(&b.mb_per_s()));
    if let (Some(c), Some(bw)) = (best, suite.best_bandwidth(BwKind::Append)) {
        let ratio = c.mb_per_s() / bw.mb_per_s().max(1e-9);
        let strict = suite
            .best_bandwidth(BwKind::Overwrite)
            .map(|o| {
                format!(
                    "; vs overwrite {:.1} MB/s: {:.0}%",
                    o.mb_per_s(),
                    100.0 * c.mb_per_s() / o.mb_per_s().max(1e-9)
                )
            })
            .unwrap_or_default();
        out.push(Target {
            name: "4 KiB incompressible MB/s / raw seq-write MB/s".into(),
            case: c.spec.describe(),
            measured: c.mb_per_s(),
            reference: bw.mb_per_s(),
            ratio,
            goal: format!(">= {:.2}", BANDWIDTH_FRACTION_MIN),
            pass: ratio >= BANDWIDTH_FRACTION_MIN,
            detail: format!(
                "{:.1} MB/s payload ({:.1} MB/s log) vs best append {:.1} MB/s ({} cases){strict}",
                c.mb_per_s(),
                c.log_mb_per_s(),
                bw.mb_per_s(),
                if bw.after { "after" } else { "before" }
            ),
        });
    }
    out
}

fn mode_cell(m: Mode) -> String {
    match m {
        Mode::Blocking { threads } => format!("{threads} blocking"),
        Mode::Pipelined { threads, window } => format!("pipe {threads}x{window}"),
    }
}

/// The readable report.
pub fn render(cfg: &Config, machine: &Machine, suite: &Suite) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "mirrorlog-bench local-commit");
    let _ = writeln!(
        o,
        "machine: {} cpus ({}), kernel {}; dir {} ({} on {})",
        machine.nproc, machine.cpu, machine.kernel, machine.dir, machine.fs_type, machine.device
    );
    let _ = writeln!(
        o,
        "config: {:.1} s timed + {:.1} s warm-up per case; segment {} MiB; compression {}; batch_bytes_max {} KiB; retention {}",
        cfg.seconds,
        cfg.warmup,
        cfg.segment_bytes >> 20,
        compression_name(cfg.compression),
        suite.batch_bytes_max >> 10,
        cfg.retain_bytes.map_or("keep all (every segment a new zero-filled file)".to_string(), |b| format!("{} MiB (segments recycled)", b >> 20))
    );
    let _ = writeln!(o, "durability: {DURABILITY}");
    let _ = writeln!(
        o,
        "latency: client-observed, commit() to Ticket::wait() returning; MB/s = record payload, 1 MB = 10^6 B"
    );

    let _ = writeln!(o, "\nFloor (same run, same file system):");
    let _ = writeln!(
        o,
        "  {:<46} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "write+fdatasync latency", "size", "ops", "p50 us", "p99 us", "p99.9 us", "max us"
    );
    for (when, floors) in [("", &suite.sync_before), (" [after]", &suite.sync_after)] {
        for f in floors {
            let l = lat(&f.hist);
            let _ = writeln!(
                o,
                "  {:<46} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9}",
                format!("{}{when}", f.kind.name()),
                size_name(f.record_bytes),
                f.ops,
                fmt_us(l.p50),
                fmt_us(l.p99),
                fmt_us(l.p999),
                fmt_us(l.max)
            );
        }
    }
    for c in &suite.cases {
        let Some(f) = &c.paired_floor else { continue };
        let l = lat(f);
        let _ = writeln!(
            o,
            "  {:<46} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9}",
            format!("pwrite+fdatasync, interleaved w/ {}", c.spec.data.name()),
            size_name(c.spec.record_bytes),
            f.len(),
            fmt_us(l.p50),
            fmt_us(l.p99),
            fmt_us(l.p999),
            fmt_us(l.max)
        );
    }
    let _ = writeln!(
        o,
        "  (interleaved = alternating 100 ms slices with the 1-committer case of that row, same directory)"
    );
    let _ = writeln!(o, "  sequential-write bandwidth:");
    for b in &suite.bandwidth {
        let _ = writeln!(
            o,
            "    {:<70} {:>8.1} MB/s  ({} MiB in {:.2} s)",
            format!("{}{}", b.kind.name(), if b.after { " [after]" } else { "" }),
            b.mb_per_s(),
            b.bytes >> 20,
            b.seconds
        );
    }

    let _ = writeln!(o, "\nLocal commit:");
    let _ = writeln!(
        o,
        "  {:<13} {:>7} {:<14} {:>10} {:>11} {:>8} {:>8} {:>8} {:>6} {:>8} {:>8} {:>9} {:>9}",
        "mode",
        "record",
        "data",
        "commits",
        "commits/s",
        "MB/s",
        "logMB/s",
        "c/batch",
        "compr",
        "p50 us",
        "p99 us",
        "p99.9 us",
        "max us"
    );
    for c in &suite.cases {
        let l = lat(&c.hist);
        let _ = writeln!(
            o,
            "  {:<13} {:>7} {:<14} {:>10} {:>11} {:>8.1} {:>8.1} {:>8.1} {:>5.2}x {:>8} {:>8} {:>9} {:>9}",
            mode_cell(c.spec.mode),
            size_name(c.spec.record_bytes),
            c.spec.data.name(),
            c.commits,
            thousands(c.commits_per_s()),
            c.mb_per_s(),
            c.log_mb_per_s(),
            c.commits_per_batch(),
            c.compression_ratio(),
            fmt_us(l.p50),
            fmt_us(l.p99),
            fmt_us(l.p999),
            fmt_us(l.max)
        );
    }
    let _ = writeln!(
        o,
        "  (c/batch = commits per batch, i.e. per append+msync; compr = raw record bytes / log bytes written)"
    );

    let _ = writeln!(o, "\nTargets (report only; floors are from this run):");
    let ts = targets(suite);
    if ts.is_empty() {
        let _ = writeln!(o, "  (no case of this run matches a target)");
    }
    for t in &ts {
        let _ = writeln!(
            o,
            "  {}  {}: {}\n        ratio {:.2} (goal {}); {}",
            if t.pass { "PASS" } else { "MISS" },
            t.name,
            t.case,
            t.ratio,
            t.goal,
            t.detail
        );
    }
    let _ = writeln!(o, "\ntotal run time {:.0} s", suite.total_seconds);
    o
}

/// "YYYY-MM-DDTHH:MM:SSZ" for a UNIX time in seconds.
pub(crate) fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

fn case_json(c: &CaseResult) -> Value {
    let (threads, window) = match c.spec.mode {
        Mode::Blocking { threads } => (threads, Value::Null),
        Mode::Pipelined { threads, window } => (threads, json!(window)),
    };
    json!({
        "case": c.spec.describe(),
        "mode": c.spec.mode.key(),
        "threads": threads,
        "window": window,
        "record_bytes": c.spec.record_bytes,
        "data": c.spec.data.name(),
        "compressible": c.spec.data == Data::Compressible,
        "seconds": c.seconds,
        "commits": c.commits,
        "commits_per_s": c.commits_per_s(),
        "payload_mb_per_s": c.mb_per_s(),
        "log_mb_per_s": c.log_mb_per_s(),
        "engine": {
            "commits": c.stats.commits,
            "batches": c.stats.batches,
            "raw_bytes": c.stats.raw_bytes,
            "log_bytes": c.stats.log_bytes,
            "commits_per_batch": c.commits_per_batch(),
            "compression_ratio": c.compression_ratio(),
        },
        "latency": lat_json(&c.hist),
        "interleaved_floor_latency": c.paired_floor.as_ref().map(lat_json),
    })
}

pub fn to_json(cfg: &Config, machine: &Machine, suite: &Suite) -> Value {
    let started = suite
        .started
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let sync = |floors: &[crate::floor::SyncFloor]| -> Vec<Value> {
        floors
            .iter()
            .map(|f| {
                json!({
                    "kind": f.kind.key(),
                    "description": f.kind.name(),
                    "record_bytes": f.record_bytes,
                    "ops": f.ops,
                    "seconds": f.seconds,
                    "latency": lat_json(&f.hist),
                })
            })
            .collect()
    };
    let merged: Vec<Value> = cfg
        .sizes
        .iter()
        .filter_map(|&s| {
            suite.sync_floor(s).map(|h| {
                json!({
                    "record_bytes": s,
                    "kind": SyncKind::Preallocated.key(),
                    "latency": lat_json(&h),
                })
            })
        })
        .collect();
    json!({
        "scenario": "local-commit",
        "timestamp": rfc3339(started),
        "timestamp_unix": started,
        "total_seconds": suite.total_seconds,
        "durability": DURABILITY,
        "latency_definition": "client-observed: Instant before commit() to after Ticket::wait() returns; ns histograms (HdrHistogram, 3 significant digits)",
        "machine": {
            "nproc": machine.nproc,
            "cpu": machine.cpu,
            "kernel": machine.kernel,
            "dir": machine.dir,
            "filesystem": machine.fs_type,
            "device": machine.device,
        },
        "config": {
            "seconds": cfg.seconds,
            "warmup_seconds": cfg.warmup,
            "quick": cfg.quick,
            "segment_bytes": cfg.segment_bytes,
            "retain_bytes": cfg.retain_bytes,
            "compression": compression_name(cfg.compression),
            "committers": cfg.committers,
            "record_sizes": cfg.sizes,
            "data": cfg.data.iter().map(|d| d.name()).collect::<Vec<_>>(),
            "pipelined_threads": cfg.pipelined_threads,
            "window": cfg.window,
            "batch_bytes_max": suite.batch_bytes_max,
        },
        "floor": {
            "sync_latency": sync(&suite.sync_before),
            "sync_latency_after_cases": sync(&suite.sync_after),
            "sync_latency_merged_for_targets": merged,
            "bandwidth": suite.bandwidth.iter().map(|b| json!({
                "kind": b.kind.key(),
                "description": b.kind.name(),
                "measured": if b.after { "after cases" } else { "before cases" },
                "chunk_bytes": crate::floor::BW_CHUNK_BYTES,
                "fdatasync_every_bytes": crate::floor::BW_SYNC_EVERY_BYTES,
                "bytes": b.bytes,
                "seconds": b.seconds,
                "mb_per_s": b.mb_per_s(),
            })).collect::<Vec<_>>(),
        },
        "cases": suite.cases.iter().map(case_json).collect::<Vec<_>>(),
        "targets": targets(suite).iter().map(|t| json!({
            "target": t.name,
            "case": t.case,
            "measured": t.measured,
            "reference": t.reference,
            "ratio": t.ratio,
            "goal": t.goal,
            "pass": t.pass,
            "detail": t.detail,
        })).collect::<Vec<_>>(),
    })
}

/// Writes the JSON to `path` via `path.tmp` and a rename.
pub fn write_json_value(path: &Path, value: &Value) -> Result<(), String> {
    let mut text =
        serde_json::to_string_pretty(value).map_err(|e| format!("encoding JSON: {e}"))?;
    text.push('\n');
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    std::fs::write(&tmp, text).map_err(|e| format!("writing {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .map_err(|e| format!("renaming {} to {}: {e}", tmp.display(), path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formatting_helpers() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(thousands(1234567.4), "1,234,567");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(size_name(4096), "4 KiB");
        assert_eq!(size_name(100), "100 B");
    }
}
