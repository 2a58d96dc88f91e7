//! `mirrorlog-perf`: see `--help`.

use std::path::PathBuf;
use std::process::ExitCode;

use mirrorlog_perf::{measured::Measured, plan, report, workload};

const HELP: &str = "\
mirrorlog-perf: capacity planning for a mirrored mirrorlog workload, from
measured benchmark results

USAGE:
    mirrorlog-perf [--workload FILE.toml] [--results FILE.json]... [--out DIR]

With no arguments: the built-in default workload (perf/examples/default.toml)
against the built-in benchmark run (perf/data/baseline-latency.json, a
`mirrorlog-bench latency` result, and perf/data/failover-2026-11-27b.json for
catch-up and reseed rates); writes report/index.html, report/report.md and
report/report.json and prints where. Nothing is opened.

The report answers: commit latency per commit level at the workload's round
trip and rate (p50/p99, and the commits in flight needed); bandwidth to the
mirror with and without zstd; send queue and catch-up time per outage length;
log kept on the principal and when a reseed is forced; reseed time. With
plots (self-contained SVG in the HTML) and a validation section (the model's
predictions against runs measured on this machine). The model, its inputs,
its uncertainty and where it extrapolates: docs/capacity.md.

OPTIONS:
    --workload FILE   the workload (TOML, keys below; default: built-in)
    --results FILE    a benchmark result to use instead of the built-in one
                      of its kind; repeatable. Accepted:
                      `mirrorlog-bench latency --json` (floors, engine+mirror
                      closed-loop cases per level, open-loop sweeps) and
                      `mirrorlog-bench failover --json` (catch-up and reseed
                      rates). A latency file must contain the engine-mirror
                      part (local and the workload's commit level, 1 client).
    --out DIR         where to write index.html, report.md and report.json
                      (default: report)
    --compress-sample-mb N   MB of synthetic records encoded to measure the
                      compression ratio and speed (default 8)
    -h, --help        this text

";

fn run() -> Result<(), String> {
    let mut workload_path: Option<PathBuf> = None;
    let mut results: Vec<PathBuf> = Vec::new();
    let mut out = PathBuf::from("report");
    let mut sample_mb = 8.0f64;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .ok_or(format!("{name} needs a value (see --help)"))
        };
        match a.as_str() {
            "-h" | "--help" | "help" => {
                print!("{HELP}{}", workload::WORKLOAD_KEYS);
                return Ok(());
            }
            "--workload" => workload_path = Some(value("--workload")?.into()),
            "--results" => results.push(value("--results")?.into()),
            "--out" => out = value("--out")?.into(),
            "--compress-sample-mb" => {
                let v = value("--compress-sample-mb")?;
                sample_mb = v
                    .parse::<f64>()
                    .ok()
                    .filter(|x| x.is_finite() && *x > 0.0 && *x <= 1024.0)
                    .ok_or(format!(
                        "--compress-sample-mb {v:?}: expected MB from 0 to 1024"
                    ))?;
            }
            other => return Err(format!("unknown argument {other:?} (see --help)")),
        }
    }
    let w = match &workload_path {
        None => workload::parse(workload::DEFAULT_WORKLOAD)
            .map_err(|e| format!("built-in workload: {e}"))?,
        Some(p) => {
            let text =
                std::fs::read_to_string(p).map_err(|e| format!("reading {}: {e}", p.display()))?;
            workload::parse(&text).map_err(|e| format!("{}: {e}", p.display()))?
        }
    };
    let mut m = Measured::builtin();
    if !results.is_empty() {
        // Given files replace the built-in ones of their kind.
        let mut given = Measured::empty();
        for p in &results {
            let text =
                std::fs::read_to_string(p).map_err(|e| format!("reading {}: {e}", p.display()))?;
            given.add(&p.display().to_string(), &text)?;
        }
        let had_latency = !given.levels.is_empty();
        let had_failover = given.catch_up.is_some() || given.reseed.is_some();
        if !had_latency {
            given.levels = m.levels.clone();
            given.sweeps = m.sweeps.clone();
            given.fdatasync = m.fdatasync;
            given.loopback_rtt = m.loopback_rtt;
            given.added_rtt_ms = m.added_rtt_ms;
            given.machine = m.machine.clone();
            given.sources.insert(0, m.sources[0].clone());
        }
        if !had_failover {
            given.catch_up = m.catch_up.clone();
            given.reseed = m.reseed.clone();
            given.sources.push(m.sources[1].clone());
        }
        m = given;
    }
    let opts = plan::Options {
        compress_sample_bytes: (sample_mb * 1e6) as usize,
    };
    let p = plan::make(&w, &m, &opts)?;
    let index = report::write(&p, &out)?;
    let shown = std::fs::canonicalize(&index).unwrap_or(index);
    println!(
        "wrote {} (and report.md, report.json beside it)",
        shown.display()
    );
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mirrorlog-perf: {e}");
            ExitCode::from(2)
        }
    }
}
