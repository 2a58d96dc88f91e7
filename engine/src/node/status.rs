//! The status snapshot a node gives embedders and the CLI.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::commit::Level;
use crate::replication::session::{MirrorProgress, MirroringState};
use crate::transport::TransportPath;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeRole {
    Principal,
    Mirror,
}

impl std::fmt::Display for NodeRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NodeRole::Principal => "principal",
            NodeRole::Mirror => "mirror",
        })
    }
}

/// Commit latency at one level, from submit to acknowledgement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LatencySummary {
    pub level: Level,
    pub count: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

impl LatencySummary {
    pub(crate) fn of(level: Level, h: &Histogram<u64>) -> LatencySummary {
        let us = |ns: u64| ns.div_ceil(1000);
        LatencySummary {
            level,
            count: h.len(),
            p50_us: us(h.value_at_quantile(0.50)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
        }
    }
}

/// A node's state at one instant. LSNs are byte positions in the log.
#[derive(Clone, Debug, PartialEq)]
pub struct Status {
    pub role: NodeRole,
    /// The mirroring state of the session (DISCONNECTED without one).
    pub state: MirroringState,
    /// The principal's epoch (on a mirror: the epoch of its last batch).
    pub epoch: u64,
    /// Written and hardened in this node's own log.
    pub written_lsn: u64,
    pub hardened_lsn: u64,
    /// The mirror's received, hardened and applied LSNs (on the principal:
    /// as acknowledged; on the mirror: its own).
    pub mirror: MirrorProgress,
    /// Hardened on both partners (safety full) / as published to the mirror.
    pub commit_lsn: u64,
    /// Principal: log bytes not yet received by the mirror, and how long
    /// the oldest of them has waited (None: nothing queued, or unknown).
    pub send_queue_bytes: u64,
    pub send_queue_age: Option<Duration>,
    /// Mirror: log bytes hardened but not applied, and how long they take
    /// to apply at the recent rate.
    pub redo_queue_bytes: u64,
    pub redo_queue_time: Option<Duration>,
    /// Principal in safety full without a mirror: commits are acknowledged
    /// hardened here only.
    pub exposed: bool,
    /// The exposure bound was reached: remote-level commits wait for the mirror.
    pub commits_held: bool,
    /// How long this principal has been running without its mirror.
    pub exposed_for: Option<Duration>,
    pub transport: Option<TransportPath>,
    /// Ship payloads go out as zero-copy sends (io_uring `SendZc`).
    pub zero_copy: bool,
    /// Payload bytes sent to the partner over every session.
    pub bytes_sent: u64,
    /// Records' bytes committed, the log bytes they took (frames and
    /// padding), and their payloads as stored (after zstd).
    pub raw_bytes: u64,
    pub log_bytes: u64,
    pub stored_bytes: u64,
    /// Commit latency per level (principal).
    pub latency: Vec<LatencySummary>,
    /// Sessions established so far, and why the last one ended.
    pub sessions: u64,
    pub last_error: Option<String>,
    /// Principal: incoming partner connections closed before they
    /// authenticated (failed or timed-out handshakes, and those closed to
    /// make room during a flood). Kept out of `last_error`, which is the
    /// real session's.
    pub preauth_rejected: u64,
    /// A reseed in progress: snapshot bytes sent (principal) or received
    /// (mirror), of the total.
    pub reseed: Option<(u64, u64)>,
    /// The node's view of its witness (None: no witness configured).
    pub witness: Option<WitnessView>,
    /// Why this node's log refuses writes, if it does: poisoned by a failed
    /// sync (only a restart clears it), or the last append failed (a full
    /// disk: the next write retries). None: the log is healthy.
    pub log_error: Option<String>,
}

/// What a node knows of its witness.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WitnessView {
    pub addr: String,
    /// This node has asked the witness something. A mirror asks only at
    /// start and when it may take over, so on a healthy mirror this is
    /// false, and `connected` says nothing.
    pub contacted: bool,
    /// The last request was answered.
    pub connected: bool,
    /// Principal: how long its lease has left (None: none live).
    pub lease_left_ms: Option<u64>,
    /// Principal: it told the witness it runs exposed in this epoch
    /// (no automatic failover until its mirror has every commit again).
    pub exposed: bool,
    /// The witness says another node holds a newer epoch: this principal
    /// was deposed and accepts no commits.
    pub deposed: Option<String>,
    /// Mirror: what its failover attempts came to (the witness's reason
    /// for a refusal, say).
    pub failover: Option<String>,
    pub last_error: Option<String>,
}

impl WitnessView {
    /// What this node knows of the link: "connected", "UNREACHABLE", or
    /// "not contacted" (a mirror asks the witness only at start and when
    /// it may take over; the principal holds the lease).
    pub fn state(&self) -> &'static str {
        match (self.contacted, self.connected) {
            (false, _) => "not contacted by this node",
            (true, true) => "connected",
            (true, false) => "UNREACHABLE",
        }
    }
}

impl Status {
    /// What compression achieved on the batches shipped: raw record bytes
    /// over their payloads as stored (frame headers and padding are not
    /// compression's doing: counting them made tiny writes show 0.26x).
    /// None ("n/a") while nothing was sent to a partner or committed.
    pub fn compression_ratio(&self) -> Option<f64> {
        if self.bytes_sent == 0 || self.stored_bytes == 0 {
            None
        } else {
            Some(self.raw_bytes as f64 / self.stored_bytes as f64)
        }
    }

    /// A few human-readable lines (what `mirrorlog status` prints).
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let state = format!("{:?}", self.state).to_uppercase();
        let _ = writeln!(s, "role:        {}  (epoch {})", self.role, self.epoch);
        let _ = writeln!(
            s,
            "state:       {state}{}{}",
            if self.exposed {
                "  EXPOSED (commits hardened on this node only)"
            } else {
                ""
            },
            if self.commits_held {
                "  COMMITS HELD (exposure bound reached)"
            } else {
                ""
            }
        );
        let _ = writeln!(
            s,
            "log:         written {}  hardened {}  commit {}",
            self.written_lsn, self.hardened_lsn, self.commit_lsn
        );
        if let Some(e) = &self.log_error {
            let _ = writeln!(s, "log error:   {e}");
        }
        let m = self.mirror;
        let _ = writeln!(
            s,
            "mirror:      received {}  hardened {}  applied {}",
            m.received, m.hardened, m.applied
        );
        let age = |d: Option<Duration>| {
            d.map_or("-".to_string(), |d| {
                format!("{:.1} ms", d.as_secs_f64() * 1e3)
            })
        };
        match self.role {
            NodeRole::Principal => {
                let _ = writeln!(
                    s,
                    "send queue:  {} bytes, oldest {}",
                    self.send_queue_bytes,
                    age(self.send_queue_age)
                );
            }
            NodeRole::Mirror => {
                let _ = writeln!(
                    s,
                    "redo queue:  {} bytes, {} to apply",
                    self.redo_queue_bytes,
                    age(self.redo_queue_time)
                );
            }
        }
        let _ = writeln!(
            s,
            "transport:   {}{}  sent {} bytes  compression {}  sessions {}",
            self.transport.map_or("none".to_string(), |p| p.to_string()),
            if self.zero_copy {
                " (zero-copy sends)"
            } else {
                ""
            },
            self.bytes_sent,
            self.compression_ratio()
                .map_or("n/a".to_string(), |r| format!("{r:.2}x")),
            self.sessions
        );
        for l in &self.latency {
            if l.count > 0 {
                let _ = writeln!(
                    s,
                    "latency {:<13} n={} p50={}us p99={}us p99.9={}us max={}us",
                    l.level.name(),
                    l.count,
                    l.p50_us,
                    l.p99_us,
                    l.p999_us,
                    l.max_us
                );
            }
        }
        if let Some(e) = &self.last_error {
            let _ = writeln!(s, "last session ended: {e}");
        }
        if self.preauth_rejected > 0 {
            let _ = writeln!(
                s,
                "pre-auth:    {} connections refused before authentication",
                self.preauth_rejected
            );
        }
        if let Some((done, total)) = self.reseed {
            let _ = writeln!(
                s,
                "RESEEDING:   {done} of {total} snapshot bytes ({}%)",
                (done * 100).checked_div(total).unwrap_or(100)
            );
        }
        if let Some(w) = &self.witness {
            let _ = writeln!(
                s,
                "witness:     {} {}{}{}",
                w.addr,
                w.state(),
                w.lease_left_ms
                    .map_or(String::new(), |l| format!("  lease {l} ms left")),
                if w.exposed {
                    "  (told: exposed this epoch, no automatic failover)"
                } else {
                    ""
                }
            );
            if let Some(d) = &w.deposed {
                let _ = writeln!(s, "DEPOSED:     {d}");
            }
            if let Some(f) = &w.failover {
                let _ = writeln!(s, "failover:    {f}");
            }
            if let Some(e) = &w.last_error {
                let _ = writeln!(s, "witness err: {e}");
            }
        }
        s
    }
}

/// When each LSN was written, sampled, so a queue's age can be told:
/// the age of the oldest byte not yet past a consumer's LSN.
pub(crate) struct LagClock {
    samples: VecDeque<(u64, Instant)>,
}

/// Samples kept (one per supervisor tick at most): minutes of history.
const SAMPLES_MAX: usize = 1 << 14;

impl LagClock {
    pub(crate) fn new() -> LagClock {
        LagClock {
            samples: VecDeque::new(),
        }
    }

    /// The producer's LSN is `lsn` at `now`.
    pub(crate) fn record(&mut self, lsn: u64, now: Instant) {
        if self.samples.back().is_some_and(|&(l, _)| l >= lsn) {
            return;
        }
        if self.samples.len() == SAMPLES_MAX {
            // Keep the oldest (the age must not be underestimated): thin
            // out the newest half instead.
            let keep = SAMPLES_MAX / 2;
            let newest: Vec<_> = self.samples.drain(keep..).step_by(2).collect();
            self.samples.extend(newest);
        }
        self.samples.push_back((lsn, now));
    }

    /// The consumer reached `lsn`: how long ago the first byte beyond it
    /// was produced (None if nothing is beyond it).
    pub(crate) fn age(&mut self, consumer: u64, now: Instant) -> Option<Duration> {
        // A sample (l, t) says: by t the producer was at l. Bytes up to l
        // were produced by t. The oldest unconsumed byte is consumer+1,
        // produced by the first sample with l > consumer; the sample before
        // it is kept so that the age is bounded below by its time.
        while self.samples.len() >= 2 && self.samples[1].0 <= consumer {
            self.samples.pop_front();
        }
        let first_beyond = self.samples.iter().find(|&&(l, _)| l > consumer)?;
        // The byte was produced after the previous sample (l <= consumer)
        // and by first_beyond's time: use the later bound, so the age is
        // never overstated by more than one sampling interval.
        Some(now.saturating_duration_since(first_beyond.1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_clock_ages_the_oldest_unconsumed_byte() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut c = LagClock::new();
        c.record(100, ms(0));
        c.record(200, ms(10));
        c.record(300, ms(20));
        assert_eq!(c.age(50, ms(30)), Some(Duration::from_millis(30)));
        assert_eq!(c.age(150, ms(30)), Some(Duration::from_millis(20)));
        // Consumption is monotonic; older samples are dropped.
        assert_eq!(c.age(250, ms(40)), Some(Duration::from_millis(20)));
        c.record(250, ms(50)); // not newer: ignored
        assert_eq!(c.age(300, ms(60)), None);
    }

    #[test]
    fn lag_clock_stays_bounded_and_keeps_the_oldest_sample() {
        let t0 = Instant::now();
        let mut c = LagClock::new();
        for i in 1..=(3 * SAMPLES_MAX as u64) {
            c.record(i, t0 + Duration::from_millis(i));
        }
        assert!(c.samples.len() <= SAMPLES_MAX);
        let now = t0 + Duration::from_millis(10 * SAMPLES_MAX as u64);
        assert_eq!(c.age(0, now), Some(now - (t0 + Duration::from_millis(1))));
    }
}
