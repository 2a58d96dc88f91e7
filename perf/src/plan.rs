//! The capacity plan: the model applied to one workload and one set of
//! measurements. Everything the report shows is in `Plan` (and so in
//! report.json).

use serde::Serialize;

use crate::compress::{self, Compressed};
use crate::measured::{Measured, Pct};
use crate::model::{self, Predicted, RetentionRun, RetentionSetup};
use crate::validation::{self, ValidationRow};
use crate::workload::{Level, Workload};

#[derive(Clone, Debug, Serialize)]
pub struct Rates {
    pub mean_record_bytes: f64,
    pub average_ops_per_s: f64,
    pub peak_ops_per_s: f64,
    /// Commits per group-commit batch at peak: arrivals during one local
    /// commit, at most the clients in flight.
    pub peak_records_per_batch: u32,
    pub average_records_per_batch: u32,
}

#[derive(Clone, Debug, Serialize)]
pub struct Bandwidth {
    pub compression_average: Compressed,
    pub compression_peak: Compressed,
    pub payload_average_mb_per_s: f64,
    pub payload_peak_mb_per_s: f64,
    pub log_average_mb_per_s_zstd: f64,
    pub log_peak_mb_per_s_zstd: f64,
    pub log_average_mb_per_s_plain: f64,
    pub log_peak_mb_per_s_plain: f64,
    /// Peak log over the link's bandwidth (with zstd), if the link is known.
    pub link_utilisation_peak_zstd: Option<f64>,
    pub link_utilisation_peak_plain: Option<f64>,
    /// Cores busy compressing at peak (payload MB/s over encoder MB/s).
    pub compress_cores_peak: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct LevelLatency {
    pub level: Level,
    /// Commit rate this level sustained here with 100 B records (lower bound).
    pub measured_capacity_ops_per_s: f64,
    /// That capacity, capped by the disk and link bandwidth for the
    /// workload's log bytes per commit.
    pub capacity_ops_per_s: f64,
    /// One commit alone, at the workload's RTT.
    pub idle: Pct,
    /// At the workload's peak rate (open loop); None past capacity.
    pub at_peak: Option<Pct>,
    /// Commits in flight needed at peak (Little's law).
    pub clients_needed_at_peak: Option<f64>,
    pub meets_target: bool,
    /// Latency vs rate at the workload's RTT (for the plot): (ops/s, pct).
    pub curve: Vec<(f64, Pct)>,
}

#[derive(Clone, Debug, Serialize)]
pub struct OutageRow {
    pub minutes: f64,
    pub send_queue_bytes_zstd: f64,
    pub send_queue_bytes_plain: f64,
    pub catch_up_s: Option<f64>,
    pub catch_up_s_plain: Option<f64>,
    /// Log on the principal's disk at most (simulated).
    pub retained_max_bytes: f64,
    /// Seconds after the outage began when the retention bound deleted log
    /// the mirror needed.
    pub reseed_forced_after_s: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Retention {
    pub steady_min_bytes: f64,
    pub steady_max_bytes: f64,
    pub outage_without_reseed_s: Option<f64>,
    pub reseed_s: Option<f64>,
    pub timeline_outage_minutes: f64,
    pub timeline: RetentionRun,
    pub timeline_outage_start_s: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct SweepCheck {
    pub level: Level,
    pub offered_per_s: f64,
    pub measured: Pct,
    pub predicted: Option<Pct>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Plan {
    pub workload: Workload,
    pub measured: Measured,
    pub delta_rtt_us: f64,
    pub rates: Rates,
    pub bandwidth: Bandwidth,
    pub catch_up_mb_per_s: Option<f64>,
    pub latency: Vec<LevelLatency>,
    pub outages: Vec<OutageRow>,
    pub retention: Retention,
    pub sweep_check: Vec<SweepCheck>,
    pub validation: Vec<ValidationRow>,
    /// Where the plan leaves measured ground, in words.
    pub extrapolations: Vec<String>,
}

/// Payload bytes encoded to measure compression: enough batches for a
/// stable ratio, small enough for a test in debug builds.
pub struct Options {
    pub compress_sample_bytes: usize,
}

pub fn make(w: &Workload, m: &Measured, opts: &Options) -> Result<Plan, String> {
    let one_local = m.single_client(Level::Local).ok_or(
        "the results have no engine+mirror local commit case with 1 client (run mirrorlog-bench latency with --parts engine-mirror)",
    )?;
    if m.single_client(w.level).is_none() {
        return Err(format!(
            "the results have no engine+mirror {} case with 1 client (run mirrorlog-bench latency --parts engine-mirror --levels {})",
            w.level.name(),
            w.level.name()
        ));
    }
    let mut extrapolations = Vec::new();
    let mean_bytes = w.mean_record_bytes();
    let avg_ops = w.average_mb_per_s * 1e6 / mean_bytes;
    let peak_ops = w.peak_mb_per_s * 1e6 / mean_bytes;
    let per_batch = |ops: f64| -> u32 {
        (ops * one_local.latency.mean_us / 1e6)
            .round()
            .clamp(1.0, w.clients as f64) as u32
    };
    let rates = Rates {
        mean_record_bytes: mean_bytes,
        average_ops_per_s: avg_ops,
        peak_ops_per_s: peak_ops,
        peak_records_per_batch: per_batch(peak_ops),
        average_records_per_batch: per_batch(avg_ops),
    };
    let c_avg = compress::measure(
        w,
        rates.average_records_per_batch,
        opts.compress_sample_bytes,
    );
    let c_peak = compress::measure(w, rates.peak_records_per_batch, opts.compress_sample_bytes);
    let link_util = |mb: f64| w.link_mb_per_s.map(|l| mb / l);
    let bandwidth = Bandwidth {
        payload_average_mb_per_s: w.average_mb_per_s,
        payload_peak_mb_per_s: w.peak_mb_per_s,
        log_average_mb_per_s_zstd: w.average_mb_per_s * c_avg.log_per_payload_zstd,
        log_peak_mb_per_s_zstd: w.peak_mb_per_s * c_peak.log_per_payload_zstd,
        log_average_mb_per_s_plain: w.average_mb_per_s * c_avg.log_per_payload_plain,
        log_peak_mb_per_s_plain: w.peak_mb_per_s * c_peak.log_per_payload_plain,
        link_utilisation_peak_zstd: link_util(w.peak_mb_per_s * c_peak.log_per_payload_zstd),
        link_utilisation_peak_plain: link_util(w.peak_mb_per_s * c_peak.log_per_payload_plain),
        compress_cores_peak: w.peak_mb_per_s / c_peak.encode_mb_per_s,
        compression_average: c_avg,
        compression_peak: c_peak,
    };

    // Latency per level at the workload's RTT.
    let delta = model::delta_rtt_us(m, w.rtt_ms);
    let measured_rtt_us = m.loopback_rtt.map_or(0.0, |r| r.p50_us) + m.added_rtt_ms * 1e3;
    if w.rtt_ms * 1e3 > measured_rtt_us * 1.5 && w.level.waits_for_mirror() {
        extrapolations.push(format!(
            "Round trip: the cases were measured at {:.0} us; the workload's {:.2} ms is added as a constant delay (no jitter, no loss, TCP windows assumed large enough for the bandwidth-delay product).",
            measured_rtt_us,
            w.rtt_ms
        ));
    }
    let log_per_op = mean_bytes * bandwidth.compression_peak.log_per_payload_zstd;
    let disk_mb = w
        .disk_mb_per_s
        .or(m.catch_up.as_ref().map(|c| c.disk_floor_mb_per_s));
    if mean_bytes > 150.0 {
        extrapolations.push(format!(
            "Record size: the latency cases used 100 B records; the workload's mean is {mean_bytes:.0} B. The commit-rate capacity is taken as measured and capped by disk and link bandwidth for the larger log per commit."
        ));
    }
    let mut latency = Vec::new();
    for level in Level::ALL {
        let (Some(mu_measured), Some(_)) = (m.capacity_ops_per_s(level), m.single_client(level))
        else {
            continue;
        };
        let mut mu = mu_measured;
        if let Some(d) = disk_mb {
            mu = mu.min(d * 1e6 / log_per_op);
        }
        if let Some(l) = w.link_mb_per_s {
            mu = mu.min(l * 1e6 / log_per_op);
        }
        // The model's curves use the capped capacity.
        let open = |lambda: f64| model::open_loop_at(m, level, lambda, delta, mu);
        let idle = open(0.0).expect("idle latency");
        let at_peak = open(peak_ops);
        let curve: Vec<(f64, Pct)> = (0..=60)
            .map(|i| mu * (i as f64 / 60.0) * 0.98)
            .filter_map(|x| open(x).map(|p| (x.max(1.0), p)))
            .collect();
        let meets_target = at_peak.is_some_and(|p| p.p99_us <= w.p99_target_ms * 1e3);
        latency.push(LevelLatency {
            level,
            measured_capacity_ops_per_s: mu_measured,
            capacity_ops_per_s: mu,
            idle,
            at_peak,
            clients_needed_at_peak: at_peak.map(|p| model::clients_needed(peak_ops, p.mean_us)),
            meets_target,
            curve,
        });
    }
    if let Some(l) = latency.iter().find(|l| l.level == w.level) {
        if peak_ops > 0.8 * l.capacity_ops_per_s {
            extrapolations.push(format!(
                "Load: the peak ({peak_ops:.0} commits/s) is {:.0}% of the measured capacity at {}; queueing there is the M/M/1 formula, not a measurement.",
                100.0 * peak_ops / l.capacity_ops_per_s,
                w.level.name()
            ));
        }
    }

    // Outages: the send queue grows with the log rate (average), the
    // mirror catches up at the measured rate.
    let catch_up_mb = m.catch_up.as_ref().map(|c| {
        model::catch_up_rate_mb(
            c.mb_per_s,
            c.disk_floor_mb_per_s,
            w.disk_mb_per_s,
            w.link_mb_per_s,
        )
    });
    if catch_up_mb.is_none() {
        extrapolations.push("Catch-up: no failover result with a catch-up rate was given; catch-up times are missing.".into());
    }
    let log_avg = bandwidth.log_average_mb_per_s_zstd * 1e6;
    let log_avg_plain = bandwidth.log_average_mb_per_s_plain * 1e6;
    let setup = |outage_s: f64, horizon_s: f64| RetentionSetup {
        log_per_s: log_avg,
        checkpoint_s: w.checkpoint_secs,
        segment_bytes: w.segment_bytes as f64,
        retention_max_bytes: w.retention_max_bytes.map(|b| b as f64),
        outage_start_s: 4.0 * w.checkpoint_secs,
        outage_s,
        catch_up_per_s: catch_up_mb.unwrap_or(f64::INFINITY) * 1e6,
        horizon_s,
    };
    let mut outages = Vec::new();
    for &minutes in &w.outage_minutes {
        let s = minutes * 60.0;
        let q = log_avg * s;
        let q_plain = log_avg_plain * s;
        let catch_up = catch_up_mb.and_then(|c| model::catch_up_s(q, c * 1e6, log_avg));
        let catch_up_plain =
            catch_up_mb.and_then(|c| model::catch_up_s(q_plain, c * 1e6, log_avg_plain));
        let st = setup(
            s,
            4.0 * w.checkpoint_secs + s + catch_up.unwrap_or(0.0) + 3.0 * w.checkpoint_secs,
        );
        let run = model::simulate_retention(&st);
        outages.push(OutageRow {
            minutes,
            send_queue_bytes_zstd: q,
            send_queue_bytes_plain: q_plain,
            catch_up_s: catch_up,
            catch_up_s_plain: catch_up_plain,
            retained_max_bytes: run.retained_max_bytes,
            reseed_forced_after_s: run.reseed_forced_at_s.map(|t| t - st.outage_start_s),
        });
    }
    let longest = w.outage_minutes.iter().cloned().fold(0.0, f64::max);
    let longest_catch_up = outages
        .iter()
        .find(|o| o.minutes == longest)
        .and_then(|o| o.catch_up_s)
        .unwrap_or(0.0);
    let st = setup(
        longest * 60.0,
        4.0 * w.checkpoint_secs + longest * 60.0 + longest_catch_up + 4.0 * w.checkpoint_secs,
    );
    let timeline = model::simulate_retention(&st);
    let steady = model::simulate_retention(&RetentionSetup {
        outage_s: 0.0,
        horizon_s: 10.0 * w.checkpoint_secs,
        ..st
    });
    let settled: Vec<f64> = steady
        .points
        .iter()
        .filter(|p| p.t_s > 3.0 * w.checkpoint_secs)
        .map(|p| p.retained_bytes)
        .collect();
    let reseed_s = match (&m.reseed, catch_up_mb) {
        (Some(r), Some(c)) => model::reseed_s(
            w.dataset_bytes as f64,
            r.send_mb_per_s,
            r.restore_seconds / r.snapshot_bytes,
            w.link_mb_per_s,
            c * 1e6,
            log_avg,
        ),
        _ => None,
    };
    if m.reseed.is_some()
        && w.dataset_bytes as f64 > 10.0 * m.reseed.as_ref().map_or(0.0, |r| r.snapshot_bytes)
    {
        extrapolations.push(format!(
            "Reseed: measured with a {:.1} MB snapshot; the workload's {:.1} GB dataset is scaled linearly.",
            m.reseed.as_ref().map_or(0.0, |r| r.snapshot_bytes) / 1e6,
            w.dataset_bytes as f64 / 1e9
        ));
    }
    if let Some(c) = &m.catch_up {
        extrapolations.push(format!(
            "Catch-up: measured on loopback ({:.0} MB/s from a restart, {:.0} MB/s once streaming, disk floor {:.0} MB/s); a real link's rate is taken as min(measured x disk/disk floor, link).",
            c.mb_per_s, c.streaming_mb_per_s, c.disk_floor_mb_per_s
        ));
    }
    let retention = Retention {
        steady_min_bytes: settled.iter().cloned().fold(f64::INFINITY, f64::min),
        steady_max_bytes: settled.iter().cloned().fold(0.0, f64::max),
        outage_without_reseed_s: w
            .retention_max_bytes
            .map(|b| model::outage_without_reseed_s(b as f64, log_avg)),
        reseed_s,
        timeline_outage_minutes: longest,
        timeline_outage_start_s: st.outage_start_s,
        timeline,
    };

    // The model against the measured sweeps (same RTT as measured).
    let mut sweep_check = Vec::new();
    for s in &m.sweeps {
        for p in &s.points {
            sweep_check.push(SweepCheck {
                level: s.level,
                offered_per_s: p.offered_per_s,
                measured: p.latency,
                predicted: model::open_loop(m, s.level, p.offered_per_s, 0.0),
            });
        }
    }
    Ok(Plan {
        workload: w.clone(),
        measured: m.clone(),
        delta_rtt_us: delta,
        rates,
        bandwidth,
        catch_up_mb_per_s: catch_up_mb,
        latency,
        outages,
        retention,
        sweep_check,
        validation: validation::rows(m),
        extrapolations,
    })
}

/// Convenience for the validation: the model's closed-loop prediction.
pub fn predict_closed(
    m: &Measured,
    level: Level,
    clients: u32,
    added_rtt_us: f64,
) -> Option<Predicted> {
    model::closed_loop(m, level, clients, added_rtt_us)
}
