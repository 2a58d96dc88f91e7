//! The report: one self-contained HTML page with SVG plots (index.html),
//! the same numbers as Markdown (report.md) and JSON (report.json).

mod plots;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::measured::Pct;
use crate::plan::Plan;
use crate::validation::ValidationRow;

/// The tables of the report, shared by the HTML and Markdown forms.
struct Table {
    title: String,
    note: String,
    head: Vec<String>,
    rows: Vec<Vec<String>>,
}

fn ms(us: f64) -> String {
    if us >= 10_000.0 {
        format!("{:.1} ms", us / 1e3)
    } else {
        format!("{:.2} ms", us / 1e3)
    }
}

fn bytes(b: f64) -> String {
    if b >= 1e9 {
        format!("{:.2} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.1} MB", b / 1e6)
    } else {
        format!("{:.0} kB", b / 1e3)
    }
}

fn secs(s: Option<f64>) -> String {
    match s {
        None => "never (catch-up rate <= log rate, or not measured)".into(),
        Some(s) if s < 1.0 => format!("{:.0} ms", s * 1e3),
        Some(s) if s < 120.0 => format!("{s:.1} s"),
        Some(s) => format!("{:.1} min", s / 60.0),
    }
}

fn pct_err(p: f64, m: f64) -> String {
    format!("{:+.0}%", ValidationRow::error_pct(p, m))
}

fn tables(plan: &Plan) -> Vec<Table> {
    let w = &plan.workload;
    let mut out = Vec::new();
    let b = &plan.bandwidth;
    let lvl = plan.latency.iter().find(|l| l.level == w.level);
    let mut answers = vec![
        vec![
            format!("commit latency at peak ({})", w.level.name()),
            match lvl.and_then(|l| l.at_peak) {
                Some(p) => format!(
                    "p50 {}, p99 {} (target {} ms: {})",
                    ms(p.p50_us),
                    ms(p.p99_us),
                    w.p99_target_ms,
                    if lvl.is_some_and(|l| l.meets_target) {
                        "met"
                    } else {
                        "MISSED"
                    }
                ),
                None => "beyond the measured capacity: not predicted".into(),
            },
        ],
        vec![
            "commits in flight needed at peak".into(),
            match lvl.and_then(|l| l.clients_needed_at_peak) {
                Some(n) => format!(
                    "{n:.1} (workload has {}{})",
                    w.clients,
                    if n > w.clients as f64 {
                        ": TOO FEW, the rate cannot be reached"
                    } else {
                        ""
                    }
                ),
                None => "-".into(),
            },
        ],
        vec![
            "bandwidth to the mirror, peak".into(),
            format!(
                "{:.2} MB/s with zstd, {:.2} MB/s without{}",
                b.log_peak_mb_per_s_zstd,
                b.log_peak_mb_per_s_plain,
                match (b.link_utilisation_peak_zstd, b.link_utilisation_peak_plain) {
                    (Some(z), Some(p)) =>
                        format!(" ({:.0}% / {:.0}% of the link)", z * 100.0, p * 100.0),
                    _ => String::new(),
                }
            ),
        ],
        vec![
            "bandwidth to the mirror, average".into(),
            format!(
                "{:.2} MB/s with zstd, {:.2} MB/s without",
                b.log_average_mb_per_s_zstd, b.log_average_mb_per_s_plain
            ),
        ],
        vec![
            "cores compressing at peak".into(),
            format!(
                "{:.3} (zstd:1 at {:.0} MB/s per core, measured here)",
                b.compress_cores_peak, b.compression_peak.encode_mb_per_s
            ),
        ],
    ];
    if let Some(o) = w
        .outage_minutes
        .iter()
        .copied()
        .find(|&m| (m - 30.0).abs() < 1e-9)
        .or(w.outage_minutes.last().copied())
    {
        if let Some(r) = plan.outages.iter().find(|r| r.minutes == o) {
            answers.push(vec![
                format!("catch-up after a {o} min outage"),
                format!(
                    "{} ({} behind)",
                    secs(r.catch_up_s),
                    bytes(r.send_queue_bytes_zstd)
                ),
            ]);
        }
    }
    answers.push(vec![
        "log kept on the principal, mirror attached".into(),
        format!(
            "{} to {} (the log since the older of two checkpoints)",
            bytes(plan.retention.steady_min_bytes),
            bytes(plan.retention.steady_max_bytes)
        ),
    ]);
    answers.push(vec![
        "longest outage without a reseed".into(),
        match plan.retention.outage_without_reseed_s {
            Some(s) => format!(
                "{} (retention bound {}; certain reseed after about one checkpoint interval more)",
                secs(Some(s)),
                bytes(w.retention_max_bytes.unwrap_or(0) as f64)
            ),
            None => {
                "any: no retention bound, the principal keeps all the mirror needs (see disk below)"
                    .into()
            }
        },
    ]);
    answers.push(vec![
        "reseed time".into(),
        format!(
            "{} for a {} dataset (send + restore + catch-up)",
            secs(plan.retention.reseed_s),
            bytes(w.dataset_bytes as f64)
        ),
    ]);
    out.push(Table {
        title: "Answers".into(),
        note: format!(
            "Workload: {:.1} MB/s average, {:.1} MB/s peak of record payload; mean record {:.0} B ({:.0} commits/s average, {:.0} at peak); {}; mirror RTT {} ms; {} commits in flight.",
            w.average_mb_per_s, w.peak_mb_per_s, plan.rates.mean_record_bytes, plan.rates.average_ops_per_s, plan.rates.peak_ops_per_s,
            w.level.name(), w.rtt_ms, w.clients
        ),
        head: vec!["question".into(), "answer".into()],
        rows: answers,
    });
    out.push(Table {
        title: "Commit latency per level".into(),
        note: format!(
            "Open loop at the workload's RTT ({} ms, {:.0} us more than measured). Capacity: the highest commit rate measured at that level (100 B records), capped by disk and link bandwidth for this workload's log per commit.",
            w.rtt_ms, plan.delta_rtt_us
        ),
        head: ["level", "idle p50", "idle p99", "peak p50", "peak p99", "capacity (commits/s)", "peak / capacity", "in flight needed"]
            .map(String::from)
            .to_vec(),
        rows: plan
            .latency
            .iter()
            .map(|l| {
                let (p50, p99) = l.at_peak.map_or(("beyond capacity".into(), "-".into()), |p| (ms(p.p50_us), ms(p.p99_us)));
                vec![
                    l.level.name().to_string(),
                    ms(l.idle.p50_us),
                    ms(l.idle.p99_us),
                    p50,
                    p99,
                    format!("{:.0}", l.capacity_ops_per_s),
                    format!("{:.0}%", 100.0 * plan.rates.peak_ops_per_s / l.capacity_ops_per_s),
                    l.clients_needed_at_peak.map_or("-".into(), |n| format!("{n:.1}")),
                ]
            })
            .collect(),
    });
    let c = &b.compression_peak;
    let a = &b.compression_average;
    out.push(Table {
        title: "Bandwidth and compression".into(),
        note: format!(
            "Measured by mirrorlog-perf on this machine with the engine's own batch encoder (zstd level 1 per batch, kept only when smaller) on synthetic {} records of the workload's sizes: {} records per batch on average, {} at peak (commits arriving during one local commit). Real data compresses differently: measure with your own records when it matters.",
            match w.content { crate::workload::Content::Compressible => "text-like (compressible)", crate::workload::Content::Incompressible => "random (incompressible)" },
            a.records_per_batch, c.records_per_batch
        ),
        head: ["", "payload MB/s", "log MB/s, zstd", "log MB/s, no compression", "log bytes per payload byte (zstd / none)"].map(String::from).to_vec(),
        rows: vec![
            vec!["average".into(), format!("{:.2}", b.payload_average_mb_per_s), format!("{:.2}", b.log_average_mb_per_s_zstd), format!("{:.2}", b.log_average_mb_per_s_plain), format!("{:.3} / {:.3}", a.log_per_payload_zstd, a.log_per_payload_plain)],
            vec!["peak".into(), format!("{:.2}", b.payload_peak_mb_per_s), format!("{:.2}", b.log_peak_mb_per_s_zstd), format!("{:.2}", b.log_peak_mb_per_s_plain), format!("{:.3} / {:.3}", c.log_per_payload_zstd, c.log_per_payload_plain)],
        ],
    });
    out.push(Table {
        title: "Outages".into(),
        note: format!(
            "The send queue grows at the average log rate during the outage; the mirror then gains (catch-up rate - log rate). Catch-up rate {}. Log on the principal simulated with checkpoints every {} s (two kept), {} segments{}.",
            plan.catch_up_mb_per_s.map_or("not measured".into(), |c| format!("{c:.0} MB/s")),
            w.checkpoint_secs,
            bytes(w.segment_bytes as f64),
            w.retention_max_bytes.map_or(", no retention bound".into(), |b| format!(", --retention-max-bytes {}", bytes(b as f64)))
        ),
        head: ["outage", "send queue, zstd", "send queue, none", "catch-up, zstd", "catch-up, none", "log on principal (max)", "reseed forced"].map(String::from).to_vec(),
        rows: plan
            .outages
            .iter()
            .map(|r| {
                vec![
                    format!("{} min", r.minutes),
                    bytes(r.send_queue_bytes_zstd),
                    bytes(r.send_queue_bytes_plain),
                    secs(r.catch_up_s),
                    secs(r.catch_up_s_plain),
                    bytes(r.retained_max_bytes),
                    r.reseed_forced_after_s.map_or("no".into(), |t| format!("yes, {:.1} min into the outage", t / 60.0)),
                ]
            })
            .collect(),
    });
    let m = &plan.measured;
    let p = |x: Option<Pct>| {
        x.map_or("not measured".into(), |p| {
            format!("p50 {:.1} us, p99 {:.1} us", p.p50_us, p.p99_us)
        })
    };
    let mut inputs = vec![
        vec!["machine".into(), m.machine.clone()],
        vec!["pwrite + fdatasync, 100 B".into(), p(m.fdatasync)],
        vec!["loopback round trip".into(), p(m.loopback_rtt)],
    ];
    for (level, cases) in &m.levels {
        for c in cases {
            inputs.push(vec![
                format!(
                    "engine+mirror {} closed loop, {} client(s)",
                    level.name(),
                    c.clients
                ),
                format!(
                    "{:.0} commits/s, p50 {:.1} us, p99 {:.1} us",
                    c.ops_per_s, c.latency.p50_us, c.latency.p99_us
                ),
            ]);
        }
    }
    if let Some(c) = &m.catch_up {
        inputs.push(vec![
            "mirror catch-up after restart".into(),
            format!(
                "{:.0} MB/s (streaming {:.0} MB/s; disk floor {:.0} MB/s) from {}",
                c.mb_per_s, c.streaming_mb_per_s, c.disk_floor_mb_per_s, c.source
            ),
        ]);
    }
    if let Some(r) = &m.reseed {
        inputs.push(vec![
            "reseed".into(),
            format!(
                "snapshot of {} sent at {:.0} MB/s, restored in {:.2} s, from {}",
                bytes(r.snapshot_bytes),
                r.send_mb_per_s,
                r.restore_seconds,
                r.source
            ),
        ]);
    }
    out.push(Table {
        title: "Measured inputs".into(),
        note: format!("From: {}.", m.sources.join(", ")),
        head: vec!["quantity".into(), "value".into()],
        rows: inputs,
    });
    out.push(Table {
        title: "Validation: predicted (from the baseline) vs measured".into(),
        note: "Closed-loop runs on this machine after the baseline, some through mirrorlog-bench's delay proxy (--added-rtt-ms); the prediction uses only the baseline and the configuration (level, clients, added RTT). Error = (predicted - measured) / measured. Files and commands: perf/data/validation/, docs/capacity.md.".into(),
        head: ["run", "level", "clients", "added RTT", "ops/s pred / meas (err)", "p50 pred / meas (err)", "p99 pred / meas (err)"].map(String::from).to_vec(),
        rows: plan
            .validation
            .iter()
            .map(|r| {
                vec![
                    r.run.clone(),
                    r.level.name().into(),
                    r.clients.to_string(),
                    format!("{} ms", r.added_rtt_ms),
                    format!("{:.0} / {:.0} ({})", r.predicted_ops_per_s, r.measured_ops_per_s, pct_err(r.predicted_ops_per_s, r.measured_ops_per_s)),
                    format!("{:.0} / {:.0} us ({})", r.predicted.p50_us, r.measured.p50_us, pct_err(r.predicted.p50_us, r.measured.p50_us)),
                    format!("{:.0} / {:.0} us ({})", r.predicted.p99_us, r.measured.p99_us, pct_err(r.predicted.p99_us, r.measured.p99_us)),
                ]
            })
            .collect(),
    });
    out
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const CSS: &str = "body{font-family:sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;color:#222;line-height:1.4}\
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #bbb;padding:4px 8px;text-align:left;vertical-align:top}\
th{background:#eee}figure{margin:1em 0 2em}figcaption{color:#555;font-size:.9em}.warn{background:#fff6dd;border-left:4px solid #e0a000;padding:.5em 1em}\
h1{font-size:1.6em}code{background:#f3f3f3;padding:0 3px}";

/// The HTML page (well-formed XHTML, so an XML parser can check it).
pub fn html(plan: &Plan) -> Result<String, String> {
    let w = &plan.workload;
    let plot = |f: fn(&Plan) -> Result<String, Box<dyn std::error::Error>>,
                what: &str|
     -> Result<String, String> {
        f(plan).map_err(|e| format!("drawing the {what} plot: {e}"))
    };
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html xmlns=\"http://www.w3.org/1999/xhtml\" lang=\"en\">\n<head>\n<meta charset=\"utf-8\"/>\n<title>mirrorlog capacity plan: {}</title>\n<style>{CSS}</style>\n</head>\n<body>\n<h1>mirrorlog capacity plan: {}</h1>\n<p>Made by <code>mirrorlog-perf</code> from measured benchmark results; the model and its limits are in <code>docs/capacity.md</code>. Every number below is a model output from measured inputs, not a measurement of this workload.</p>\n",
        esc(&w.name),
        esc(&w.name)
    );
    let tabs = tables(plan);
    let emit_table = |h: &mut String, t: &Table| {
        let _ = write!(
            h,
            "<h2>{}</h2>\n<p>{}</p>\n<table>\n<tr>",
            esc(&t.title),
            esc(&t.note)
        );
        for c in &t.head {
            let _ = write!(h, "<th>{}</th>", esc(c));
        }
        h.push_str("</tr>\n");
        for r in &t.rows {
            h.push_str("<tr>");
            for c in r {
                let _ = write!(h, "<td>{}</td>", esc(c));
            }
            h.push_str("</tr>\n");
        }
        h.push_str("</table>\n");
    };
    emit_table(&mut h, &tabs[0]);
    if !plan.extrapolations.is_empty() {
        h.push_str("<div class=\"warn\"><p><b>Where this plan extrapolates beyond measured data:</b></p>\n<ul>\n");
        for e in &plan.extrapolations {
            let _ = writeln!(h, "<li>{}</li>", esc(e));
        }
        h.push_str("</ul></div>\n");
    }
    emit_table(&mut h, &tabs[1]);
    let fig = |h: &mut String, svg: String, cap: &str| {
        let _ = write!(
            h,
            "<figure>\n{svg}\n<figcaption>{}</figcaption>\n</figure>\n",
            esc(cap)
        );
    };
    fig(&mut h, plot(plots::latency_vs_rate, "latency")?, "Model: commit latency (p50 solid, p99 dashed) against the commit rate for each commit level at the workload's round trip. Curves end at 98% of the level's capacity; beyond it latency is unbounded.");
    fig(&mut h, plot(plots::sweep_check, "sweep")?, "The model at the measured round trip against the measured open-loop sweep of the baseline run: how well the queueing part fits.");
    emit_table(&mut h, &tabs[2]);
    fig(
        &mut h,
        plot(plots::bandwidth, "bandwidth")?,
        "Log bytes to ship per second (frames: headers, length prefixes, padding included).",
    );
    emit_table(&mut h, &tabs[3]);
    fig(&mut h, plot(plots::outages, "outage")?, "Left: bytes the mirror is behind when it returns. Right: time until it has caught up, while the principal keeps writing at the average rate.");
    fig(&mut h, plot(plots::retention, "retention")?, "Simulated log retention on the principal (mirrorlog serve's rule), through the longest planned outage.");
    emit_table(&mut h, &tabs[5]);
    fig(&mut h, plot(plots::validation, "validation")?, "Each point: one configuration run on this machine. On the grey line the prediction was exact.");
    emit_table(&mut h, &tabs[4]);
    h.push_str("</body>\n</html>\n");
    Ok(h)
}

/// The same tables as Markdown.
pub fn markdown(plan: &Plan) -> String {
    let mut m = format!(
        "# mirrorlog capacity plan: {}\n\nMade by `mirrorlog-perf` from measured benchmark results; the model and its limits are in `docs/capacity.md`. The plots are in index.html.\n\n",
        plan.workload.name
    );
    let tabs = tables(plan);
    for (i, t) in tabs.iter().enumerate() {
        let _ = write!(
            m,
            "## {}\n\n{}\n\n| {} |\n|{}\n",
            t.title,
            t.note,
            t.head.join(" | "),
            "---|".repeat(t.head.len())
        );
        for r in &t.rows {
            let _ = writeln!(
                m,
                "| {} |",
                r.iter()
                    .map(|c| c.replace('|', "\\|"))
                    .collect::<Vec<_>>()
                    .join(" | ")
            );
        }
        m.push('\n');
        if i == 0 && !plan.extrapolations.is_empty() {
            m.push_str("**Where this plan extrapolates beyond measured data:**\n\n");
            for e in &plan.extrapolations {
                let _ = writeln!(m, "- {e}");
            }
            m.push('\n');
        }
    }
    m
}

/// Writes index.html, report.md and report.json into `dir`.
pub fn write(plan: &Plan, dir: &Path) -> Result<PathBuf, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let put = |name: &str, body: &str| -> Result<PathBuf, String> {
        let p = dir.join(name);
        let tmp = dir.join(format!("{name}.tmp"));
        std::fs::write(&tmp, body).map_err(|e| format!("writing {}: {e}", tmp.display()))?;
        std::fs::rename(&tmp, &p)
            .map_err(|e| format!("renaming {} to {}: {e}", tmp.display(), p.display()))?;
        Ok(p)
    };
    let index = put("index.html", &html(plan)?)?;
    put("report.md", &markdown(plan))?;
    let json =
        serde_json::to_string_pretty(plan).map_err(|e| format!("encoding report.json: {e}"))?;
    put("report.json", &json)?;
    Ok(index)
}
