//! Text and JSON reports of the `mirroring` scenario, with its targets.

use std::time::UNIX_EPOCH;

use serde_json::{json, Value};

use crate::local_commit::Mode;
use crate::mirroring::{MirrorCaseResult, MirrorSuite, PathRun};
use crate::report::{fmt_us, lat_json, rfc3339, size_name, thousands, Machine, Target};
use crate::{compression_name, Config};
use mirrorlog_engine::commit::Level;

fn mib(b: u64) -> String {
    format!("{:.1}", b as f64 / (1 << 20) as f64)
}

/// Queue sizes: KiB below a MiB, so small lags do not print as zero.
fn qsize(b: u64) -> String {
    if b < 1 << 20 {
        format!("{} KiB", b.div_ceil(1024))
    } else {
        format!("{} MiB", mib(b))
    }
}

fn find(
    run: &PathRun,
    level: Level,
    mode: impl Fn(Mode) -> bool,
    size: usize,
) -> impl Iterator<Item = &MirrorCaseResult> {
    run.cases
        .iter()
        .filter(move |c| c.spec.level == level && mode(c.spec.mode) && c.spec.record_bytes == size)
}

/// Lag that counts as "bounded" for asynchronous commit: the mirror stays
/// within this many bytes of the principal during the case.
pub const ASYNC_LAG_BOUND: u64 = 64 << 20;

pub fn targets(suite: &MirrorSuite) -> Vec<Target> {
    let mut out = Vec::new();
    let rtt = suite.rtt.value_at_quantile(0.5);
    for run in suite.runs.iter().filter(|r| r.skipped.is_none()) {
        let p = crate::mirroring::path_label(run);
        // remote-flush, 1 committer: p50 <= 1.3 x max(fsync, rtt + fsync).
        for &size in &[100usize, 4096] {
            let Some(fs) = suite.fsync_p50(size) else {
                continue;
            };
            let floor = fs.max(rtt + fs);
            for c in find(
                run,
                Level::RemoteFlush,
                |m| m == Mode::Blocking { threads: 1 },
                size,
            ) {
                let p50 = c.hist.value_at_quantile(0.5);
                let ratio = p50 as f64 / floor as f64;
                out.push(Target {
                    name: format!("remote-flush 1 committer p50 vs parallel-hardening floor ({p})"),
                    case: c.spec.describe(),
                    measured: p50 as f64,
                    reference: floor as f64,
                    ratio,
                    goal: "<= 1.3x".into(),
                    pass: ratio <= 1.3,
                    detail: format!(
                        "p50 {} vs max(fdatasync {}, rtt {} + fdatasync) = {}",
                        fmt_us(p50),
                        fmt_us(fs),
                        fmt_us(rtt),
                        fmt_us(floor)
                    ),
                });
            }
        }
        for c in find(
            run,
            Level::RemoteFlush,
            |m| matches!(m, Mode::Pipelined { .. }),
            100,
        ) {
            let r = c.commits_per_s();
            out.push(Target {
                name: format!("remote-flush pipelined 100 B throughput ({p})"),
                case: c.spec.describe(),
                measured: r,
                reference: 500_000.0,
                ratio: r / 500_000.0,
                goal: ">= 500,000 commits/s".into(),
                pass: r >= 500_000.0,
                detail: format!("{} commits/s", thousands(r)),
            });
        }
        for c in find(
            run,
            Level::Local,
            |m| matches!(m, Mode::Pipelined { .. }),
            100,
        ) {
            let r = c.commits_per_s();
            let bounded = c.send_queue_max <= ASYNC_LAG_BOUND;
            out.push(Target {
                name: format!("async (local) pipelined 100 B throughput, lag bounded ({p})"),
                case: c.spec.describe(),
                measured: r,
                reference: 1_000_000.0,
                ratio: r / 1_000_000.0,
                goal: format!(
                    ">= 1,000,000 commits/s, send queue <= {} MiB",
                    ASYNC_LAG_BOUND >> 20
                ),
                pass: r >= 1_000_000.0 && bounded,
                detail: format!(
                    "{} commits/s, send queue max {} MiB, mirror caught up {:.2} s after",
                    thousands(r),
                    mib(c.send_queue_max),
                    c.catch_up_seconds
                ),
            });
        }
    }
    // io_uring at least as fast as blocking, case by case: throughput for
    // pipelined and multi-committer cases, p50 for one committer.
    let uring = suite.runs.iter().find(|r| {
        r.skipped.is_none() && r.choice == mirrorlog_engine::transport::TransportChoice::IoUring
    });
    let blocking = suite.runs.iter().find(|r| {
        r.skipped.is_none() && r.choice == mirrorlog_engine::transport::TransportChoice::Blocking
    });
    if let (Some(u), Some(b)) = (uring, blocking) {
        let mut worst: Option<(f64, String)> = None;
        for cu in &u.cases {
            let Some(cb) = b.cases.iter().find(|c| c.spec == cu.spec) else {
                continue;
            };
            let ratio = if cu.spec.mode == (Mode::Blocking { threads: 1 }) {
                cb.hist.value_at_quantile(0.5) as f64 / cu.hist.value_at_quantile(0.5).max(1) as f64
            } else {
                cu.commits_per_s() / cb.commits_per_s().max(1e-9)
            };
            if worst.as_ref().is_none_or(|(w, _)| ratio < *w) {
                worst = Some((ratio, cu.spec.describe()));
            }
        }
        if let Some((ratio, case)) = worst {
            out.push(Target {
                name: "io_uring vs blocking, worst case (speed ratio; noise band 0.9)".into(),
                case,
                measured: ratio,
                reference: 1.0,
                ratio,
                goal: ">= 0.9x (as fast, within this machine's run-to-run noise)".into(),
                pass: ratio >= 0.9,
                detail: format!("{ratio:.2}x"),
            });
        }
    }
    out
}

pub fn render(cfg: &Config, machine: &Machine, suite: &MirrorSuite) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(s, "mirrorlog-bench mirroring");
    let _ = writeln!(
        s,
        "machine: {} cores, {}, kernel {}; log dir {} ({} on {})",
        machine.nproc, machine.cpu, machine.kernel, machine.dir, machine.fs_type, machine.device
    );
    let _ = writeln!(
        s,
        "principal in this process, mirror in a child process, loopback TCP; compression {}; {} s per case after {} s warm-up",
        compression_name(cfg.compression),
        cfg.seconds,
        cfg.warmup
    );
    let _ = writeln!(s, "\nfloors (same run, before and after the cases):");
    for (size, h) in &suite.fsync {
        let _ = writeln!(
            s,
            "  pwrite+fdatasync {:>7}: p50 {}  p99 {}",
            size_name(*size),
            fmt_us(h.value_at_quantile(0.5)),
            fmt_us(h.value_at_quantile(0.99))
        );
    }
    let _ = writeln!(
        s,
        "  loopback TCP round trip (64 B): p50 {}  p99 {}",
        fmt_us(suite.rtt.value_at_quantile(0.5)),
        fmt_us(suite.rtt.value_at_quantile(0.99))
    );
    for run in &suite.runs {
        let label = crate::mirroring::path_label(run);
        if let Some(why) = &run.skipped {
            let _ = writeln!(s, "\ntransport {label}: skipped ({why})");
            continue;
        }
        let _ = writeln!(s, "\ntransport {label}:");
        let _ = writeln!(
            s,
            "  {:<13} {:<24} {:>7} {:>12} {:>9} {:>9} {:>9} {:>9} {:>10} {:>9} {:>8}",
            "level",
            "clients",
            "record",
            "commits/s",
            "p50",
            "p99",
            "p99.9",
            "max",
            "sendq max",
            "redo end",
            "catch-up"
        );
        for c in &run.cases {
            let h = &c.hist;
            let _ = writeln!(
                s,
                "  {:<13} {:<24} {:>7} {:>12} {:>9} {:>9} {:>9} {:>9} {:>10} {:>9} {:>8}",
                c.spec.level.name(),
                c.spec.mode.describe(),
                size_name(c.spec.record_bytes),
                thousands(c.commits_per_s()),
                fmt_us(h.value_at_quantile(0.5)),
                fmt_us(h.value_at_quantile(0.99)),
                fmt_us(h.value_at_quantile(0.999)),
                fmt_us(h.max()),
                qsize(c.send_queue_max),
                qsize(c.redo_queue_end),
                format!("{:.2} s", c.catch_up_seconds)
            );
        }
    }
    let _ = writeln!(s, "\ntargets:");
    for t in targets(suite) {
        let _ = writeln!(
            s,
            "  [{}] {}: {} ({}; goal {})",
            if t.pass { "PASS" } else { "MISS" },
            t.name,
            t.detail,
            t.case,
            t.goal
        );
    }
    let _ = writeln!(
        s,
        "\ndurability: local = principal msync(MS_SYNC); remote-write = + received in the mirror's memory; remote-flush = + mirror msync; remote-apply = + applied on the mirror. Latency is client-observed (commit() to Ticket::wait()); sendq max is the largest send queue sampled every 10 ms during the case; catch-up is the time after the case until the mirror applied everything. Total {:.0} s.",
        suite.total_seconds
    );
    s
}

pub fn to_json(cfg: &Config, machine: &Machine, suite: &MirrorSuite) -> Value {
    let started = suite
        .started
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let runs: Vec<Value> = suite
        .runs
        .iter()
        .map(|r| {
            json!({
                "transport": crate::mirroring::path_label(r),
                "skipped": r.skipped,
                "cases": r.cases.iter().map(|c| json!({
                    "level": c.spec.level.name(),
                    "mode": c.spec.mode.key(),
                    "threads": c.spec.mode.threads(),
                    "record_bytes": c.spec.record_bytes,
                    "data": c.spec.data.name(),
                    "commits": c.commits,
                    "seconds": c.seconds,
                    "commits_per_s": c.commits_per_s(),
                    "log_bytes": c.log_bytes,
                    "latency_us": lat_json(&c.hist),
                    "send_queue_max_bytes": c.send_queue_max,
                    "send_queue_end_bytes": c.send_queue_end,
                    "redo_queue_end_bytes": c.redo_queue_end,
                    "catch_up_seconds": c.catch_up_seconds,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "scenario": "mirroring",
        "started": rfc3339(started),
        "total_seconds": suite.total_seconds,
        "machine": {
            "nproc": machine.nproc, "kernel": machine.kernel, "cpu": machine.cpu,
            "dir": machine.dir, "fs_type": machine.fs_type, "device": machine.device,
        },
        "config": {
            "seconds": cfg.seconds, "warmup": cfg.warmup,
            "compression": compression_name(cfg.compression),
            "segment_bytes": cfg.segment_bytes, "window": cfg.window,
        },
        "floors": {
            "fdatasync_us": suite.fsync.iter().map(|(size, h)| json!({
                "record_bytes": size, "latency_us": lat_json(h)
            })).collect::<Vec<_>>(),
            "loopback_rtt_us": lat_json(&suite.rtt),
        },
        "runs": runs,
        "targets": targets(suite).iter().map(|t| json!({
            "name": t.name, "case": t.case, "measured": t.measured,
            "reference": t.reference, "ratio": t.ratio, "goal": t.goal,
            "pass": t.pass, "detail": t.detail,
        })).collect::<Vec<_>>(),
    })
}
