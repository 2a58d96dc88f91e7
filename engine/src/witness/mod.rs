//! The witness's decision core and the principal's lease clock: pure state
//! machines (time is an argument), as docs/design.md ("Witness protocol")
//! specifies them. Not wired to the network or to nodes yet (failover
//! issue); the rules and the argument that two nodes never accept commits
//! at once are checked here against drifting clocks. `state` is the
//! witness's durable state file.

pub mod state;

/// Clock-rate bound and lease length.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LeaseConfig {
    /// Lease granted per renewal, in milliseconds.
    pub lease_ms: u64,
    /// Bound on any node's clock-rate error (0.01 = 1%).
    pub rho: f64,
}

impl Default for LeaseConfig {
    fn default() -> LeaseConfig {
        LeaseConfig {
            lease_ms: 2000,
            rho: 0.01,
        }
    }
}

/// The witness's durable state and its last-renewal clock.
#[derive(Clone, Debug, PartialEq)]
pub struct WitnessCore {
    cfg: LeaseConfig,
    /// The current epoch and its principal.
    pub epoch: u64,
    pub principal: Option<String>,
    /// The principal of `epoch` said its mirror is lost: it may have
    /// acknowledged commits the mirror lacks.
    pub exposed: bool,
    /// Witness-clock time (ms) of the last renewal received for `epoch`.
    last_renewal_ms: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RenewReply {
    /// A lease of this many milliseconds.
    Lease { epoch: u64, lease_ms: u64 },
    /// That epoch is over: the sender is deposed.
    Deposed { current: u64 },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PromoteReply {
    Granted { epoch: u64 },
    Refused { why: String },
}

impl WitnessCore {
    pub fn new(cfg: LeaseConfig, epoch: u64, principal: Option<String>) -> WitnessCore {
        WitnessCore {
            cfg,
            epoch,
            principal,
            exposed: false,
            last_renewal_ms: None,
        }
    }

    /// How long after the last renewal the witness must wait, on its own
    /// clock, before granting a new epoch: `L·(1 + ρ)`.
    pub fn wait_ms(&self) -> u64 {
        (self.cfg.lease_ms as f64 * (1.0 + self.cfg.rho)).ceil() as u64
    }

    /// A renewal from the principal of `epoch` (witness time `now_ms`).
    pub fn on_renew(&mut self, now_ms: u64, epoch: u64, mirror_attached: bool) -> RenewReply {
        if epoch != self.epoch {
            return RenewReply::Deposed {
                current: self.epoch,
            };
        }
        self.last_renewal_ms = Some(now_ms);
        if !mirror_attached {
            // Recorded (durably, by the caller) before the lease that allows
            // exposed commits goes out.
            self.exposed = true;
        }
        RenewReply::Lease {
            epoch,
            lease_ms: self.cfg.lease_ms,
        }
    }

    /// The mirror of `epoch` asks to become principal (Rule W).
    pub fn on_promote(
        &mut self,
        now_ms: u64,
        epoch: u64,
        candidate: &str,
        synchronized: bool,
    ) -> PromoteReply {
        let refuse = |why: String| PromoteReply::Refused { why };
        if epoch != self.epoch {
            return refuse(format!(
                "epoch {epoch} is not the current epoch {}",
                self.epoch
            ));
        }
        if !synchronized {
            return refuse(
                "the mirror was not SYNCHRONIZED when it lost the principal; only forced service can proceed"
                    .into(),
            );
        }
        if self.exposed {
            return refuse(
                "the principal ran exposed (its commits may not be on the mirror); only forced service can proceed"
                    .into(),
            );
        }
        if let Some(last) = self.last_renewal_ms {
            let waited = now_ms.saturating_sub(last);
            if waited < self.wait_ms() {
                return refuse(format!(
                    "the principal renewed its lease {waited} ms ago; it may still be committing for {} ms",
                    self.wait_ms() - waited
                ));
            }
        }
        self.epoch += 1;
        self.principal = Some(candidate.to_string());
        self.exposed = false;
        self.last_renewal_ms = None;
        PromoteReply::Granted { epoch: self.epoch }
    }
}

/// The principal's side (Rule P): when its lease lets it acknowledge a
/// commit that does not wait for the mirror.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LeaseClock {
    /// Principal-clock time (ms) until which the lease is live.
    live_until_ms: Option<f64>,
}

impl LeaseClock {
    /// A lease of `lease_ms` answered the renewal *sent* at `sent_ms`
    /// (principal clock): live until `sent_ms + lease_ms·(1 − ρ)`.
    pub fn on_lease(&mut self, sent_ms: u64, lease_ms: u64, rho: f64) {
        let until = sent_ms as f64 + lease_ms as f64 * (1.0 - rho);
        self.live_until_ms = Some(self.live_until_ms.map_or(until, |u| u.max(until)));
    }

    pub fn live(&self, now_ms: u64) -> bool {
        self.live_until_ms.is_some_and(|u| (now_ms as f64) < u)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_only_after_the_lease_is_certainly_over_and_never_twice() {
        let cfg = LeaseConfig {
            lease_ms: 1000,
            rho: 0.01,
        };
        let mut w = WitnessCore::new(cfg, 3, Some("p".into()));
        assert!(matches!(w.on_renew(0, 3, true), RenewReply::Lease { .. }));
        assert!(matches!(
            w.on_promote(1009, 3, "m", true),
            PromoteReply::Refused { .. }
        ));
        assert_eq!(
            w.on_promote(1010, 3, "m", true),
            PromoteReply::Granted { epoch: 4 }
        );
        // The old principal and the old epoch are done.
        assert_eq!(
            w.on_renew(1011, 3, true),
            RenewReply::Deposed { current: 4 }
        );
        assert!(matches!(
            w.on_promote(5000, 3, "x", true),
            PromoteReply::Refused { .. }
        ));
    }

    #[test]
    fn an_exposed_principal_or_an_unsynchronized_mirror_blocks_automatic_failover() {
        let mut w = WitnessCore::new(LeaseConfig::default(), 1, Some("p".into()));
        w.on_renew(0, 1, false);
        assert!(
            matches!(w.on_promote(100_000, 1, "m", true), PromoteReply::Refused { why } if why.contains("exposed"))
        );
        let mut w = WitnessCore::new(LeaseConfig::default(), 1, Some("p".into()));
        w.on_renew(0, 1, true);
        assert!(
            matches!(w.on_promote(100_000, 1, "m", false), PromoteReply::Refused { why } if why.contains("SYNCHRONIZED"))
        );
    }

    /// Rule P against Rule W with clocks drifting within ρ, arbitrary clock
    /// offsets and message delays: at the first real time the witness
    /// grants a new epoch, the old principal's lease is over on its own
    /// clock (both are monotonic, so that settles every later time).
    #[test]
    fn with_drifting_clocks_the_old_lease_ends_before_any_grant() {
        let mut seed = 0x9e3779b97f4a7c15u64;
        let mut rnd = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 11) as f64 / (1u64 << 53) as f64
        };
        for _ in 0..20_000 {
            let rho = 0.01 + rnd() * 0.09;
            let cfg = LeaseConfig {
                lease_ms: 200 + (rnd() * 3000.0) as u64,
                rho,
            };
            // Clock rates within [1 − ρ, 1 + ρ] (local ms per real ms).
            let p_rate = 1.0 - rho + rnd() * 2.0 * rho;
            let w_rate = 1.0 - rho + rnd() * 2.0 * rho;
            let (p_off, w_off) = (rnd() * 1e6, rnd() * 1e6);
            let p_clock = |real: f64| p_off + real * p_rate;
            let w_clock = |real: f64| w_off + real * w_rate;
            let mut w = WitnessCore::new(cfg, 1, Some("p".into()));
            let mut lease = LeaseClock::default();
            // The principal renews at real time t_s; it arrives later.
            let t_s = rnd() * 1e5;
            let t_r = t_s + rnd() * 50.0;
            let RenewReply::Lease { lease_ms, .. } = w.on_renew(w_clock(t_r) as u64, 1, true)
            else {
                panic!("renewal refused")
            };
            lease.on_lease(p_clock(t_s) as u64, lease_ms, rho);
            let grants = |t: f64| {
                matches!(
                    w.clone().on_promote(w_clock(t) as u64, 1, "m", true),
                    PromoteReply::Granted { .. }
                )
            };
            let (mut lo, mut hi) = (t_r, t_r + 4.0 * lease_ms as f64 + 10.0);
            assert!(grants(hi));
            for _ in 0..60 {
                let mid = (lo + hi) / 2.0;
                if grants(mid) {
                    hi = mid;
                } else {
                    lo = mid;
                }
            }
            assert!(
                !lease.live(p_clock(hi) as u64),
                "granted at real time {hi} while the old lease was live (ρ {rho}, rates {p_rate}/{w_rate})"
            );
            // Not vacuous: the lease was live for most of its length.
            assert!(lease.live(p_clock(t_s + lease_ms as f64 * 0.9 * (1.0 - rho)) as u64));
        }
    }
}
