//! The capacity model: pure functions of measured quantities (no I/O, no
//! clock). docs/capacity.md explains each formula and its uncertainty.
//!
//! Units are in the names: `_us` microseconds, `_s` seconds, `_per_s`
//! rates, `_bytes` bytes, `mb` 10^6 bytes.

use serde::Serialize;

use crate::measured::{Measured, Pct};
use crate::workload::Level;

/// Exact mean value analysis of a closed system of `n` clients, each
/// spending `z_us` in a delay (network, think time: no queueing) and `d_us`
/// in one shared FIFO service station (the group-commit pipeline's CPU and
/// disk work per commit). Returns (throughput per second, mean response
/// time in microseconds = z + time at the station).
pub fn mva(n: u32, z_us: f64, d_us: f64) -> (f64, f64) {
    assert!(n >= 1 && z_us >= 0.0 && d_us > 0.0);
    let mut queue = 0.0;
    let mut x = 0.0;
    let mut r_station = d_us;
    for k in 1..=n {
        r_station = d_us * (1.0 + queue);
        x = k as f64 / (z_us + r_station);
        queue = x * r_station;
    }
    (x * 1e6, z_us + r_station)
}

/// The extra latency an open-loop arrival rate `lambda` adds at quantile
/// `q` (0.5, 0.99) over an idle system, for an M/M/1 station serving `mu`
/// per second: the sojourn time is exponential with rate mu - lambda, so
/// the q-quantile is -ln(1-q)/(mu-lambda); minus its value at lambda = 0.
/// `None` at or beyond saturation.
pub fn mm1_excess_us(q: f64, lambda: f64, mu: f64) -> Option<f64> {
    assert!((0.0..1.0).contains(&q) && lambda >= 0.0 && mu > 0.0);
    if lambda >= mu {
        return None;
    }
    let k = -(1.0 - q).ln();
    Some(k * (1.0 / (mu - lambda) - 1.0 / mu) * 1e6)
}

/// A commit waits for the later of its two paths, the local fsync and the
/// mirror's (the round trip plus the mirror's work): principal and mirror
/// harden in parallel (docs/design.md, "Commit levels"). `remote_us` is the
/// remote path as measured at the reference round trip; `delta_rtt_us` the
/// round trip added to it.
pub fn commit_us(level: Level, local_us: f64, remote_us: f64, delta_rtt_us: f64) -> f64 {
    if level.waits_for_mirror() {
        local_us.max(remote_us + round_trips(level) * delta_rtt_us)
    } else {
        local_us
    }
}

/// Round trips to the mirror a commit at `level` waits for. remote-apply
/// waits for two: the mirror applies only up to the commit LSN the
/// principal publishes, which in safety full needs the mirror's hardened
/// acknowledgement first (docs/design.md, "Commit levels"); the validation
/// runs through the delay proxy measured about two (docs/capacity.md).
pub fn round_trips(level: Level) -> f64 {
    match level {
        Level::Local => 0.0,
        Level::RemoteWrite | Level::RemoteFlush => 1.0,
        Level::RemoteApply => 2.0,
    }
}

/// Latency prediction.
#[derive(Clone, Copy, Debug, Serialize, PartialEq)]
pub struct Predicted {
    pub ops_per_s: f64,
    pub latency: Pct,
}

/// Round trip the target adds over the measured run's: the workload's RTT
/// minus what the measured cases already had (the loopback round trip and
/// any proxy delay of that run).
pub fn delta_rtt_us(m: &Measured, rtt_ms: f64) -> f64 {
    let had = m.loopback_rtt.map_or(0.0, |r| r.p50_us) + m.added_rtt_ms * 1e3;
    (rtt_ms * 1e3 - had).max(0.0)
}

/// The service demand per commit at `level` (microseconds): the inverse of
/// the highest rate measured there.
pub fn service_us(m: &Measured, level: Level) -> Option<f64> {
    m.capacity_ops_per_s(level).map(|mu| 1e6 / mu)
}

/// Closed loop: `clients` committers, one commit each at a time, at `level`,
/// with `added_rtt_us` more round trip than the measured run had.
///
/// When the measured run has a case with `clients` clients, that case with
/// its round trip moved (`commit_us`, percentile by percentile) is the
/// prediction, and throughput is clients / mean latency. Otherwise:
/// the one-client latency is the measured one with the round trip moved;
/// the delay part of the MVA is
/// that latency minus one service time; more clients queue at the
/// measured service rate (MVA). Percentiles other than the mean keep their
/// measured distance from the mean of the nearest measured client count.
pub fn closed_loop(
    m: &Measured,
    level: Level,
    clients: u32,
    added_rtt_us: f64,
) -> Option<Predicted> {
    let one = m.single_client(level)?;
    let local = m.single_client(Level::Local)?;
    // A measured case with as many clients already has this machine's
    // queueing and batching in it: move its round trip, and Little's law
    // (no think time) gives the throughput.
    let same_local = m
        .levels
        .get(&Level::Local)?
        .iter()
        .find(|c| c.clients == clients);
    let same = m.levels.get(&level)?.iter().find(|c| c.clients == clients);
    if let (Some(same), Some(same_local)) = (same, same_local) {
        let at = |f: fn(&Pct) -> f64| {
            commit_us(
                level,
                f(&same_local.latency),
                f(&same.latency),
                added_rtt_us,
            )
        };
        let mean = at(|p| p.mean_us);
        return Some(Predicted {
            ops_per_s: clients as f64 * 1e6 / mean,
            latency: Pct {
                mean_us: mean,
                p50_us: at(|p| p.p50_us),
                p99_us: at(|p| p.p99_us),
            },
        });
    }
    let d = service_us(m, level)?;
    let shift =
        |f: fn(&Pct) -> f64| commit_us(level, f(&local.latency), f(&one.latency), added_rtt_us);
    let mean1 = shift(|p| p.mean_us);
    let z = (mean1 - d).max(0.0);
    let (x, r_mean) = mva(clients, z, d);
    let nearest = m
        .levels
        .get(&level)?
        .iter()
        .min_by_key(|c| c.clients.abs_diff(clients))?;
    let spread50 = nearest.latency.p50_us - nearest.latency.mean_us;
    let spread99 = nearest.latency.p99_us - nearest.latency.mean_us;
    Some(Predicted {
        ops_per_s: x,
        latency: Pct {
            mean_us: r_mean,
            p50_us: (r_mean + spread50).max(0.0),
            p99_us: (r_mean + spread99).max(r_mean),
        },
    })
}

/// Open loop: commits arrive at `lambda` per second from many clients, at
/// `level`, `added_rtt_us` more round trip than measured. The idle latency
/// is the measured one-client latency with the round trip moved; the load
/// adds M/M/1 queueing at the measured service rate. `None` at or beyond
/// the measured capacity (the model does not know what happens there).
pub fn open_loop(m: &Measured, level: Level, lambda: f64, added_rtt_us: f64) -> Option<Pct> {
    open_loop_at(m, level, lambda, added_rtt_us, m.capacity_ops_per_s(level)?)
}

/// [`open_loop`] with the service rate `mu` given (e.g. the measured one
/// capped by disk or link bandwidth).
pub fn open_loop_at(
    m: &Measured,
    level: Level,
    lambda: f64,
    added_rtt_us: f64,
    mu: f64,
) -> Option<Pct> {
    let one = m.single_client(level)?;
    let local = m.single_client(Level::Local)?;
    let at =
        |f: fn(&Pct) -> f64| commit_us(level, f(&local.latency), f(&one.latency), added_rtt_us);
    Some(Pct {
        mean_us: at(|p| p.mean_us) + mm1_excess_us(1.0 - (-1.0f64).exp(), lambda, mu)?,
        p50_us: at(|p| p.p50_us) + mm1_excess_us(0.5, lambda, mu)?,
        p99_us: at(|p| p.p99_us) + mm1_excess_us(0.99, lambda, mu)?,
    })
}

/// Commits in flight needed to sustain `lambda` per second at a mean
/// latency of `latency_us` (Little's law).
pub fn clients_needed(lambda: f64, latency_us: f64) -> f64 {
    lambda * latency_us / 1e6
}

/// The mirror catches up a backlog of `queue_bytes` while new log keeps
/// arriving at `log_per_s`: it gains `catch_up_per_s - log_per_s`. `None`
/// when it never catches up.
pub fn catch_up_s(queue_bytes: f64, catch_up_per_s: f64, log_per_s: f64) -> Option<f64> {
    let gain = catch_up_per_s - log_per_s;
    (gain > 0.0).then(|| queue_bytes / gain)
}

/// The effective catch-up rate: the measured one, scaled by the mirror's
/// disk bandwidth relative to the disk floor of the run that measured it
/// (when the workload gives a disk), and capped by the link.
pub fn catch_up_rate_mb(
    measured_mb: f64,
    measured_disk_floor_mb: f64,
    disk_mb: Option<f64>,
    link_mb: Option<f64>,
) -> f64 {
    let mut r = measured_mb;
    if let Some(d) = disk_mb {
        r *= d / measured_disk_floor_mb;
    }
    if let Some(l) = link_mb {
        r = r.min(l);
    }
    r
}

/// One point of the retention timeline.
#[derive(Clone, Copy, Debug, Serialize, PartialEq)]
pub struct RetentionPoint {
    pub t_s: f64,
    /// Log on the principal's disk (written LSN - log start LSN).
    pub retained_bytes: f64,
    /// Bytes written but not yet hardened by the mirror.
    pub mirror_behind_bytes: f64,
}

/// What the retention simulation found.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct RetentionRun {
    pub points: Vec<RetentionPoint>,
    /// When the principal deleted log the mirror still needed (seconds
    /// from the start), if it did: from then on the mirror needs a reseed.
    pub reseed_forced_at_s: Option<f64>,
    pub retained_max_bytes: f64,
}

/// Inputs of the retention simulation.
#[derive(Clone, Copy, Debug)]
pub struct RetentionSetup {
    pub log_per_s: f64,
    pub checkpoint_s: f64,
    pub segment_bytes: f64,
    pub retention_max_bytes: Option<f64>,
    pub outage_start_s: f64,
    pub outage_s: f64,
    /// Rate the mirror takes log at after the outage (bytes/s).
    pub catch_up_per_s: f64,
    pub horizon_s: f64,
}

/// Simulates the principal's log retention as mirrorlog serve does it
/// (tools/src/server.rs `checkpoint`): a checkpoint every `checkpoint_s`,
/// two kept; at each checkpoint the log below `min(older checkpoint,
/// mirror hardened)` is deleted, whole segments only; with a bound `M`,
/// below `min(older checkpoint, written - M)` if that is higher, and then
/// the mirror has lost log it needs and must be reseeded.
///
/// The mirror keeps up (hardened = written) except during the outage; after
/// it, it gains `catch_up_per_s - log_per_s` per second. A forced reseed
/// is not simulated further (the mirror's position stays where it was).
pub fn simulate_retention(s: &RetentionSetup) -> RetentionRun {
    assert!(s.log_per_s >= 0.0 && s.checkpoint_s > 0.0 && s.segment_bytes > 0.0);
    let steps = 2000usize;
    let dt = s.horizon_s / steps as f64;
    let mut checkpoints: Vec<f64> = Vec::new(); // LSNs, oldest first, two kept
    let mut next_checkpoint_s = s.checkpoint_s;
    let mut start_lsn = 0.0f64;
    let mut mirror = 0.0f64;
    let mut reseed_at = None;
    let mut points = Vec::with_capacity(steps + 1);
    let mut retained_max: f64 = 0.0;
    let outage_end = s.outage_start_s + s.outage_s;
    for i in 0..=steps {
        let t = i as f64 * dt;
        let written = s.log_per_s * t;
        // The mirror's hardened position.
        if reseed_at.is_some() || (t >= s.outage_start_s && t < outage_end) {
            // Stuck: down, or waiting for a reseed.
        } else if t >= outage_end && mirror < written {
            mirror = (mirror + s.catch_up_per_s * dt).min(written);
        } else {
            mirror = written;
        }
        while next_checkpoint_s <= t {
            let ckpt_lsn = s.log_per_s * next_checkpoint_s;
            checkpoints.push(ckpt_lsn);
            if checkpoints.len() > 2 {
                checkpoints.remove(0);
            }
            let oldest = checkpoints[0];
            let needed = mirror;
            let mut limit = oldest.min(needed);
            if let Some(max) = s.retention_max_bytes {
                let floor = oldest.min(written - max);
                if floor > limit {
                    limit = floor;
                }
            }
            // Whole segments below the limit go (segments at multiples of
            // segment_bytes; padding at segment ends is ignored).
            let cut = (limit / s.segment_bytes).floor() * s.segment_bytes;
            if cut > start_lsn {
                start_lsn = cut;
            }
            if start_lsn > needed && reseed_at.is_none() {
                reseed_at = Some(next_checkpoint_s);
            }
            next_checkpoint_s += s.checkpoint_s;
        }
        let retained = written - start_lsn;
        retained_max = retained_max.max(retained);
        points.push(RetentionPoint {
            t_s: t,
            retained_bytes: retained,
            mirror_behind_bytes: written - mirror,
        });
    }
    RetentionRun {
        points,
        reseed_forced_at_s: reseed_at,
        retained_max_bytes: retained_max,
    }
}

/// The longest outage certain not to force a reseed: log written during it
/// must stay below the bound (the principal checks at checkpoints, so it
/// may in fact survive up to a checkpoint interval and a segment longer).
pub fn outage_without_reseed_s(retention_max_bytes: f64, log_per_s: f64) -> f64 {
    if log_per_s <= 0.0 {
        f64::INFINITY
    } else {
        retention_max_bytes / log_per_s
    }
}

/// Reseed: the snapshot streamed at the measured send rate (capped by the
/// link), the measured restore time scaled by size, then the catch-up of the
/// log written meanwhile.
pub fn reseed_s(
    dataset_bytes: f64,
    send_mb_per_s: f64,
    restore_s_per_byte: f64,
    link_mb: Option<f64>,
    catch_up_per_s: f64,
    log_per_s: f64,
) -> Option<f64> {
    let send_rate = link_mb.map_or(send_mb_per_s, |l| send_mb_per_s.min(l)) * 1e6;
    let transfer = dataset_bytes / send_rate + dataset_bytes * restore_s_per_byte;
    let behind = transfer * log_per_s;
    Some(transfer + catch_up_s(behind, catch_up_per_s, log_per_s)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, rel: f64) -> bool {
        (a - b).abs() <= rel * b.abs().max(1e-12)
    }

    #[test]
    fn mva_with_one_client_is_one_over_the_round() {
        let (x, r) = mva(1, 900.0, 100.0);
        assert!(close(x, 1000.0, 1e-12), "{x}");
        assert!(close(r, 1000.0, 1e-12), "{r}");
    }

    #[test]
    fn mva_respects_both_asymptotic_bounds_and_saturates() {
        let (z, d) = (500.0, 20.0);
        for n in [1, 2, 8, 32, 64, 256] {
            let (x, r) = mva(n, z, d);
            let bound = (n as f64 / (z + d) * 1e6).min(1e6 / d);
            assert!(x <= bound * (1.0 + 1e-9), "n={n}: {x} > {bound}");
            // Little's law: n = X * R.
            assert!(close(n as f64, x * r / 1e6, 1e-9));
        }
        let (x, _) = mva(2000, z, d);
        assert!(close(x, 1e6 / d, 1e-3), "{x}");
    }

    #[test]
    fn mm1_excess_is_zero_idle_grows_and_refuses_saturation() {
        assert_eq!(mm1_excess_us(0.5, 0.0, 1000.0), Some(0.0));
        // At half load the sojourn time doubles: the excess is one more
        // idle quantile, ln2/mu.
        let e = mm1_excess_us(0.5, 500.0, 1000.0).unwrap();
        assert!(close(e, 2f64.ln() / 1000.0 * 1e6, 1e-9), "{e}");
        assert!(
            mm1_excess_us(0.99, 900.0, 1000.0).unwrap()
                > mm1_excess_us(0.5, 900.0, 1000.0).unwrap()
        );
        assert_eq!(mm1_excess_us(0.5, 1000.0, 1000.0), None);
    }

    #[test]
    fn a_synchronous_commit_costs_the_slower_path_not_the_sum() {
        assert_eq!(commit_us(Level::RemoteFlush, 100.0, 150.0, 0.0), 150.0);
        assert_eq!(commit_us(Level::RemoteFlush, 100.0, 150.0, 5000.0), 5150.0);
        // A remote path faster than the local fsync is hidden behind it.
        assert_eq!(commit_us(Level::RemoteWrite, 100.0, 40.0, 30.0), 100.0);
        // Local commits never wait for the mirror; remote-apply waits two
        // round trips (hardened ack, then the published commit LSN).
        assert_eq!(commit_us(Level::Local, 100.0, 150.0, 5000.0), 100.0);
        assert_eq!(commit_us(Level::RemoteApply, 100.0, 150.0, 5000.0), 10150.0);
    }

    #[test]
    fn closed_loop_with_an_added_rtt_adds_it_to_one_client_and_lowers_throughput() {
        let m = Measured::builtin();
        let base = closed_loop(&m, Level::RemoteFlush, 1, 0.0).unwrap();
        let far = closed_loop(&m, Level::RemoteFlush, 1, 2000.0).unwrap();
        assert!(close(
            far.latency.mean_us - base.latency.mean_us,
            2000.0,
            1e-9
        ));
        assert!(far.ops_per_s < base.ops_per_s / 5.0);
        // One client at the measured RTT reproduces the measured case.
        let one = m.single_client(Level::RemoteFlush).unwrap();
        assert!(close(base.latency.mean_us, one.latency.mean_us, 1e-9));
        assert!(close(base.ops_per_s, 1e6 / one.latency.mean_us, 1e-9));
        // A measured client count: that case moved by the round trip.
        let c8 = closed_loop(&m, Level::RemoteFlush, 8, 2000.0).unwrap();
        let m8 = m.levels[&Level::RemoteFlush]
            .iter()
            .find(|c| c.clients == 8)
            .unwrap();
        assert!(close(c8.latency.p99_us, m8.latency.p99_us + 2000.0, 1e-9));
        assert!(close(c8.ops_per_s, 8e6 / c8.latency.mean_us, 1e-9));
        // An unmeasured one: MVA, more clients, more throughput, never
        // beyond the capacity.
        let c12 = closed_loop(&m, Level::RemoteFlush, 12, 2000.0).unwrap();
        assert!(c12.ops_per_s > 11.0 * far.ops_per_s);
        assert!(c12.ops_per_s <= m.capacity_ops_per_s(Level::RemoteFlush).unwrap());
        // Local commits do not see the round trip.
        let l0 = closed_loop(&m, Level::Local, 1, 0.0).unwrap();
        let l2 = closed_loop(&m, Level::Local, 1, 2000.0).unwrap();
        assert_eq!(l0, l2);
    }

    #[test]
    fn open_loop_latency_rises_with_load_and_stops_at_capacity() {
        let m = Measured::builtin();
        let mu = m.capacity_ops_per_s(Level::RemoteFlush).unwrap();
        let low = open_loop(&m, Level::RemoteFlush, 0.1 * mu, 0.0).unwrap();
        let high = open_loop(&m, Level::RemoteFlush, 0.9 * mu, 0.0).unwrap();
        assert!(high.p99_us > low.p99_us && high.p50_us > low.p50_us);
        assert!(low.p99_us >= low.p50_us);
        assert!(open_loop(&m, Level::RemoteFlush, mu, 0.0).is_none());
    }

    #[test]
    fn catch_up_needs_a_rate_above_the_write_rate() {
        assert_eq!(catch_up_s(600e6, 300e6, 100e6), Some(3.0));
        assert_eq!(catch_up_s(600e6, 100e6, 100e6), None);
        assert_eq!(catch_up_rate_mb(300.0, 600.0, Some(300.0), None), 150.0);
        assert_eq!(catch_up_rate_mb(300.0, 600.0, None, Some(125.0)), 125.0);
    }

    fn setup() -> RetentionSetup {
        RetentionSetup {
            log_per_s: 1e6,
            checkpoint_s: 60.0,
            segment_bytes: 8e6,
            retention_max_bytes: None,
            outage_start_s: 600.0,
            outage_s: 1800.0,
            catch_up_per_s: 100e6,
            horizon_s: 4000.0,
        }
    }

    #[test]
    fn with_the_mirror_attached_the_log_since_the_older_checkpoint_is_kept() {
        let mut s = setup();
        s.outage_s = 0.0;
        let run = simulate_retention(&s);
        assert_eq!(run.reseed_forced_at_s, None);
        // Between one checkpoint interval and two intervals plus a segment.
        let late: Vec<_> = run.points.iter().filter(|p| p.t_s > 300.0).collect();
        assert!(late.iter().all(|p| p.retained_bytes <= 120e6 + 8e6 + 1.0));
        assert!(late.iter().all(|p| p.retained_bytes >= 60e6 - 8e6));
    }

    #[test]
    fn an_outage_keeps_all_the_log_the_mirror_needs_without_a_bound() {
        let run = simulate_retention(&setup());
        assert_eq!(run.reseed_forced_at_s, None);
        // At least the outage's log plus the log before it back to a
        // segment boundary.
        assert!(
            run.retained_max_bytes >= 1800e6,
            "{}",
            run.retained_max_bytes
        );
        // The mirror is 1800 s x 1 MB/s behind at the end of the outage,
        // and caught up about 1800e6 / 99e6 = 18 s later.
        let at_end = run.points.iter().rfind(|p| p.t_s < 2400.0).unwrap();
        assert!(close(at_end.mirror_behind_bytes, 1800e6, 0.01));
        let after = run.points.iter().find(|p| p.t_s > 2400.0 + 22.0).unwrap();
        assert_eq!(after.mirror_behind_bytes, 0.0);
    }

    #[test]
    fn a_bound_below_the_outage_log_forces_a_reseed_at_a_checkpoint() {
        let mut s = setup();
        s.retention_max_bytes = Some(500e6);
        let run = simulate_retention(&s);
        let at = run.reseed_forced_at_s.expect("reseed");
        // Not before the outage log exceeded the bound (600 + 500 s), and
        // at the first checkpoint that can delete a whole segment after.
        assert!((1100.0..=1100.0 + 60.0 + 8.0 + 1e-9).contains(&at), "{at}");
        assert_eq!(at % 60.0, 0.0);
        assert!(run.retained_max_bytes < 500e6 + 60e6 + 2.0 * 8e6 + 1e6);
        // A bound above the outage's log does not.
        s.retention_max_bytes = Some(2000e6);
        assert_eq!(simulate_retention(&s).reseed_forced_at_s, None);
        assert_eq!(outage_without_reseed_s(500e6, 1e6), 500.0);
    }

    #[test]
    fn reseed_time_is_transfer_restore_and_catch_up() {
        // 1 GB at 100 MB/s = 10 s, no restore, 1 MB/s written meanwhile:
        // 10 MB to catch up at 100 - 1 MB/s.
        let t = reseed_s(1e9, 500.0, 0.0, Some(100.0), 100e6, 1e6).unwrap();
        assert!(close(t, 10.0 + 10e6 / 99e6, 1e-9), "{t}");
        assert_eq!(reseed_s(1e9, 500.0, 0.0, None, 1e6, 1e6), None);
    }
}
