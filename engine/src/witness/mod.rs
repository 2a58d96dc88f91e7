//! The witness: its decision core and the principal's lease clock (pure
//! state machines, time is an argument) as docs/design.md ("Witness
//! protocol") specifies them; `state` is its durable file, `proto` the
//! authenticated request/reply framing, `server` the service `mirrorlog
//! witness` runs and `client` what partners use to reach it.

pub mod client;
pub mod proto;
pub mod server;
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
    /// The principal of `epoch` said it may acknowledge commits its mirror
    /// does not have (safety off, running without the mirror, or a commit
    /// at a level below `remote-flush`): automatic failover is off for
    /// the rest of the epoch.
    pub exposed: bool,
    /// Witness-clock time (ms) from which the wait before a grant counts:
    /// the last renewal received for `epoch`, the grant of `epoch`, or the
    /// witness's own start (a principal may have renewed just before a
    /// witness restart, which forgot it).
    last_renewal_ms: u64,
    /// The principal of `epoch` resigned (a manual failover): it accepts
    /// no more commits and its mirror has its whole log, so a promotion
    /// need not wait out its lease. Durable (`WITNESS`): a restarted
    /// witness still knows the principal promised to stop.
    pub resigned: bool,
    /// Per node, the last claim granted to it: its name, the claim id (the
    /// node's start counter, which grows with every start) and the epoch
    /// granted. Durable: a late copy of a claim of an earlier start (a
    /// smaller id) is refused even after a witness restart.
    pub claims: Vec<Claim>,
}

/// The last claim a node was granted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Claim {
    pub name: String,
    pub claim_id: u64,
    pub epoch: u64,
}

/// The witness remembers the last claim of at most this many nodes (two
/// partners, and room for renamed ones); the oldest entry goes first.
pub const CLAIMS_MAX: usize = 16;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RenewReply {
    /// A lease of this many milliseconds.
    Lease { epoch: u64, lease_ms: u64 },
    /// That epoch is over (or the sender is not its principal): the sender
    /// is deposed; `principal` is who holds `current`.
    Deposed {
        current: u64,
        principal: Option<String>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PromoteReply {
    Granted {
        epoch: u64,
    },
    /// `code` is what callers branch on; `why` is for people.
    Refused {
        code: RefusalCode,
        why: String,
    },
}

/// Why the witness refused a claim, a promotion or a resignation: what a
/// partner decides by (never the reason's text). On the wire it is one
/// byte before the reason (docs/format.md, "Witness protocol").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RefusalCode {
    /// None of the others (a peer's code this node does not know is an
    /// error, not this: both ends speak the same protocol version).
    Other,
    /// The principal's lease may still be live: asking again later can be
    /// granted.
    LeaseLive,
    /// The principal ran exposed in this epoch: only forced service can
    /// take over.
    Exposed,
    /// The mirror was not SYNCHRONIZED when it lost the principal: only
    /// forced service can take over.
    NotSynchronized,
    /// Another node is principal: a claimant must start as its mirror.
    OtherPrincipal,
    /// The request names an epoch that is not the current one.
    StaleEpoch,
    /// The candidate already is principal of the epoch.
    AlreadyPrincipal,
    /// A claim of an earlier start of the node (a smaller claim id than
    /// its last granted one: a late copy).
    StaleClaim,
    /// A retry (or late copy) of the node's last granted claim, whose
    /// epoch is over.
    ClaimEpochOver,
    /// A resignation from a node that is not principal of that epoch.
    NotPrincipal,
    /// The request is for another database than the witness serves.
    WrongDatabase,
    /// The witness could not store its state durably; nothing changed.
    StateNotStored,
}

impl RefusalCode {
    /// Every code, in wire order (for tests and docs).
    pub const ALL: [RefusalCode; 12] = [
        RefusalCode::Other,
        RefusalCode::LeaseLive,
        RefusalCode::Exposed,
        RefusalCode::NotSynchronized,
        RefusalCode::OtherPrincipal,
        RefusalCode::StaleEpoch,
        RefusalCode::AlreadyPrincipal,
        RefusalCode::StaleClaim,
        RefusalCode::NotPrincipal,
        RefusalCode::WrongDatabase,
        RefusalCode::StateNotStored,
        RefusalCode::ClaimEpochOver,
    ];

    /// The code's byte on the wire.
    pub fn to_wire(self) -> u8 {
        match self {
            RefusalCode::Other => 0,
            RefusalCode::LeaseLive => 1,
            RefusalCode::Exposed => 2,
            RefusalCode::NotSynchronized => 3,
            RefusalCode::OtherPrincipal => 4,
            RefusalCode::StaleEpoch => 5,
            RefusalCode::AlreadyPrincipal => 6,
            RefusalCode::StaleClaim => 7,
            RefusalCode::NotPrincipal => 8,
            RefusalCode::WrongDatabase => 9,
            RefusalCode::StateNotStored => 10,
            RefusalCode::ClaimEpochOver => 11,
        }
    }

    /// The code a wire byte stands for; `None` for a byte no code has.
    pub fn from_wire(b: u8) -> Option<RefusalCode> {
        RefusalCode::ALL.into_iter().find(|c| c.to_wire() == b)
    }
}

impl WitnessCore {
    /// The witness as it starts at witness-clock time `now_ms` with its
    /// durable state.
    pub fn new(
        cfg: LeaseConfig,
        now_ms: u64,
        epoch: u64,
        principal: Option<String>,
        exposed: bool,
    ) -> WitnessCore {
        WitnessCore {
            cfg,
            epoch,
            principal,
            exposed,
            last_renewal_ms: now_ms,
            resigned: false,
            claims: Vec::new(),
        }
    }

    /// `name`, principal of `epoch`, hands over: it has stopped taking
    /// commits and its mirror hardened its whole log (so nothing it
    /// acknowledged, exposed or not, can be lost by the promotion).
    /// It must not renew again in `epoch`.
    pub fn on_resign(&mut self, epoch: u64, name: &str) -> PromoteReply {
        if epoch != self.epoch || self.principal.as_deref() != Some(name) {
            return PromoteReply::Refused {
                code: RefusalCode::NotPrincipal,
                why: format!(
                    "{name} is not principal of epoch {epoch} (current: {} of {})",
                    self.principal.as_deref().unwrap_or("none"),
                    self.epoch
                ),
            };
        }
        self.resigned = true;
        self.exposed = false;
        PromoteReply::Granted { epoch }
    }

    pub fn config(&self) -> LeaseConfig {
        self.cfg
    }

    /// How long after the last renewal the witness must wait, on its own
    /// clock, before granting a new epoch: `L·(1 + ρ)`.
    ///
    /// Plus one: the witness reads its clock in whole milliseconds (rounded
    /// down), so a measured wait can exceed the real one by almost 1 ms.
    pub fn wait_ms(&self) -> u64 {
        (self.cfg.lease_ms as f64 * (1.0 + self.cfg.rho)).ceil() as u64 + 1
    }

    /// A renewal from `name`, principal of `epoch` (witness time
    /// `now_ms`). `exposed`: it is about to acknowledge commits its mirror
    /// may lack; recorded (durably, by the caller, before the reply goes
    /// out) and kept for the rest of the epoch.
    pub fn on_renew(&mut self, now_ms: u64, epoch: u64, name: &str, exposed: bool) -> RenewReply {
        if epoch != self.epoch || self.principal.as_deref() != Some(name) {
            return RenewReply::Deposed {
                current: self.epoch,
                principal: self.principal.clone(),
            };
        }
        if self.resigned {
            // It promised to stop: a renewal now is a bug, and no lease.
            return RenewReply::Deposed {
                current: self.epoch,
                principal: None,
            };
        }
        self.last_renewal_ms = self.last_renewal_ms.max(now_ms);
        self.exposed |= exposed;
        RenewReply::Lease {
            epoch,
            lease_ms: self.cfg.lease_ms,
        }
    }

    /// A renewal that also says the mirror has hardened every commit the
    /// principal acknowledged in `epoch` (it stopped acknowledging without
    /// the mirror, then waited for the mirror to harden its whole log):
    /// the epoch is no longer exposed, and automatic failover is possible
    /// again until the principal next asks for exposure.
    pub fn on_cover(&mut self, now_ms: u64, epoch: u64, name: &str) -> RenewReply {
        let r = self.on_renew(now_ms, epoch, name, false);
        if matches!(r, RenewReply::Lease { .. }) {
            self.exposed = false;
        }
        r
    }

    /// `candidate`, mirror in `epoch`, asks to become principal (Rule W).
    /// `forced`: forced service, which may lose what the mirror lacks; it
    /// still waits out the principal's lease (two principals are never
    /// allowed), but needs neither SYNCHRONIZED nor an unexposed epoch.
    pub fn on_promote(
        &mut self,
        now_ms: u64,
        epoch: u64,
        candidate: &str,
        synchronized: bool,
        forced: bool,
    ) -> PromoteReply {
        let refuse = |code, why: String| PromoteReply::Refused { code, why };
        if epoch != self.epoch {
            return refuse(
                RefusalCode::StaleEpoch,
                format!(
                    "epoch {epoch} is not the current epoch {} (principal: {})",
                    self.epoch,
                    self.principal.as_deref().unwrap_or("none")
                ),
            );
        }
        if self.principal.as_deref() == Some(candidate) {
            return refuse(
                RefusalCode::AlreadyPrincipal,
                format!("{candidate} is already principal of epoch {epoch}"),
            );
        }
        if !forced && !synchronized {
            return refuse(
                RefusalCode::NotSynchronized,
                "the mirror was not SYNCHRONIZED when it lost the principal; only forced service can proceed"
                    .into(),
            );
        }
        if !forced && self.exposed {
            return refuse(
                RefusalCode::Exposed,
                "the principal ran exposed in this epoch (it may have acknowledged commits the mirror lacks); only forced service can proceed"
                    .into(),
            );
        }
        let waited = now_ms.saturating_sub(self.last_renewal_ms);
        if waited < self.wait_ms() && !self.resigned {
            return refuse(
                RefusalCode::LeaseLive,
                format!(
                "the principal's lease may still be live for {} ms (last renewal {waited} ms ago)",
                self.wait_ms() - waited
            ),
            );
        }
        self.grant(now_ms, self.epoch + 1, candidate);
        PromoteReply::Granted { epoch: self.epoch }
    }

    /// `name` starts as principal; its log's last epoch is `last_epoch`.
    /// Granted when it is the recorded principal (a restart: its old
    /// incarnation is gone, the log directory's lock says so) or when no
    /// principal was ever recorded. The epoch granted is above both the
    /// witness's and the node's. `claim_id` names one start: a retry, or a
    /// late copy of the request, gets the epoch already granted to it
    /// (and changes nothing), never a second one that would depose the
    /// claimant's own running epoch. Claim ids are the node's durable
    /// start counter: a claim with a smaller id than the node's last
    /// granted one is a late copy from an earlier start, and is refused.
    pub fn on_claim(
        &mut self,
        now_ms: u64,
        last_epoch: u64,
        name: &str,
        claim_id: u64,
    ) -> PromoteReply {
        if let Some(Claim {
            claim_id: id,
            epoch,
            ..
        }) = self.claims.iter().find(|c| c.name == name)
        {
            if claim_id < *id {
                // A copy of a claim of an earlier start, delayed in the
                // network: that start is over (a later one claimed).
                return PromoteReply::Refused {
                    code: RefusalCode::StaleClaim,
                    why: format!(
                        "claim {claim_id} of {name} is older than its claim {id} (a late copy of an earlier start's claim)"
                    ),
                };
            }
            if *id == claim_id {
                return if self.epoch == *epoch && self.principal.as_deref() == Some(name) {
                    PromoteReply::Granted { epoch: *epoch }
                } else {
                    PromoteReply::Refused {
                        code: RefusalCode::ClaimEpochOver,
                        why: format!(
                            "this claim was granted epoch {epoch}, which is over (current: {} of {})",
                            self.principal.as_deref().unwrap_or("none"),
                            self.epoch
                        ),
                    }
                };
            }
        }
        match self.principal.as_deref() {
            Some(p) if p != name => PromoteReply::Refused {
                code: RefusalCode::OtherPrincipal,
                why: format!(
                    "{p} is principal of epoch {}; {name} must start as its mirror",
                    self.epoch
                ),
            },
            _ => {
                self.grant(now_ms, self.epoch.max(last_epoch) + 1, name);
                self.claims.retain(|c| c.name != name);
                if self.claims.len() >= CLAIMS_MAX {
                    self.claims.remove(0);
                }
                self.claims.push(Claim {
                    name: name.to_string(),
                    claim_id,
                    epoch: self.epoch,
                });
                PromoteReply::Granted { epoch: self.epoch }
            }
        }
    }

    fn grant(&mut self, now_ms: u64, epoch: u64, name: &str) {
        self.epoch = epoch;
        self.principal = Some(name.to_string());
        self.exposed = false;
        self.resigned = false;
        // The new principal holds no lease yet; counting from the grant
        // keeps a second grant at least one lease length away anyway.
        self.last_renewal_ms = now_ms;
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

    /// Principal-clock time (ms, rounded down) until which the lease is
    /// live, if one was ever granted.
    pub fn live_until_ms(&self) -> Option<u64> {
        self.live_until_ms.map(|u| u.floor() as u64)
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
        let mut w = WitnessCore::new(cfg, 0, 3, Some("p".into()), false);
        assert!(matches!(
            w.on_renew(0, 3, "p", false),
            RenewReply::Lease { .. }
        ));
        // L·(1 + ρ) = 1010 ms, plus 1 ms for whole-millisecond readings.
        assert!(matches!(
            w.on_promote(1010, 3, "m", true, false),
            PromoteReply::Refused {
                code: RefusalCode::LeaseLive,
                ..
            }
        ));
        assert_eq!(
            w.on_promote(1011, 3, "m", true, false),
            PromoteReply::Granted { epoch: 4 }
        );
        // The old principal and the old epoch are done.
        assert_eq!(
            w.on_renew(1011, 3, "p", false),
            RenewReply::Deposed {
                current: 4,
                principal: Some("m".into())
            }
        );
        assert!(matches!(
            w.on_promote(5000, 3, "x", true, false),
            PromoteReply::Refused {
                code: RefusalCode::StaleEpoch,
                ..
            }
        ));
        // Only the principal of the epoch renews it.
        assert!(matches!(
            w.on_renew(5000, 4, "p", false),
            RenewReply::Deposed { .. }
        ));
    }

    #[test]
    fn an_exposed_principal_or_an_unsynchronized_mirror_blocks_automatic_failover() {
        let mut w = WitnessCore::new(LeaseConfig::default(), 0, 1, Some("p".into()), false);
        w.on_renew(0, 1, "p", true);
        assert!(
            matches!(w.on_promote(100_000, 1, "m", true, false), PromoteReply::Refused { code: RefusalCode::Exposed, why } if why.contains("exposed"))
        );
        // Forced service proceeds, once the lease is over.
        assert_eq!(
            w.on_promote(100_000, 1, "m", true, true),
            PromoteReply::Granted { epoch: 2 }
        );
        let mut w = WitnessCore::new(LeaseConfig::default(), 0, 1, Some("p".into()), false);
        w.on_renew(0, 1, "p", false);
        assert!(
            matches!(w.on_promote(100_000, 1, "m", false, false), PromoteReply::Refused { code: RefusalCode::NotSynchronized, why } if why.contains("SYNCHRONIZED"))
        );
        // Even forced service waits out a live lease.
        let mut w = WitnessCore::new(LeaseConfig::default(), 0, 1, Some("p".into()), false);
        w.on_renew(50_000, 1, "p", false);
        assert!(matches!(
            w.on_promote(50_100, 1, "m", false, true),
            PromoteReply::Refused {
                code: RefusalCode::LeaseLive,
                ..
            }
        ));
    }

    #[test]
    fn a_covered_epoch_allows_automatic_failover_again() {
        let mut w = WitnessCore::new(LeaseConfig::default(), 0, 2, Some("p".into()), false);
        w.on_renew(0, 2, "p", true);
        assert!(w.exposed);
        // Only the principal of the epoch can say its mirror has it all.
        assert!(matches!(w.on_cover(1, 2, "m"), RenewReply::Deposed { .. }));
        assert!(w.exposed);
        assert!(matches!(w.on_cover(1, 2, "p"), RenewReply::Lease { .. }));
        assert!(!w.exposed);
        assert_eq!(
            w.on_promote(1 + w.wait_ms(), 2, "m", true, false),
            PromoteReply::Granted { epoch: 3 }
        );
    }

    #[test]
    fn a_resigned_principal_lets_its_mirror_take_over_at_once() {
        let mut w = WitnessCore::new(LeaseConfig::default(), 0, 2, Some("p".into()), false);
        w.on_renew(100, 2, "p", true);
        assert!(matches!(
            w.on_resign(2, "m"),
            PromoteReply::Refused {
                code: RefusalCode::NotPrincipal,
                ..
            }
        ));
        assert_eq!(w.on_resign(2, "p"), PromoteReply::Granted { epoch: 2 });
        assert!(!w.exposed);
        assert!(matches!(
            w.on_renew(101, 2, "p", false),
            RenewReply::Deposed { .. }
        ));
        assert_eq!(
            w.on_promote(102, 2, "m", true, false),
            PromoteReply::Granted { epoch: 3 }
        );
    }

    #[test]
    fn a_restarted_witness_waits_a_whole_lease_before_any_grant() {
        let cfg = LeaseConfig::default();
        // Restarted at witness time 7000 with epoch 5 on disk: the
        // principal may have renewed just before the restart.
        let mut w = WitnessCore::new(cfg, 7000, 5, Some("p".into()), false);
        assert!(matches!(
            w.on_promote(7000 + w.wait_ms() - 1, 5, "m", true, false),
            PromoteReply::Refused {
                code: RefusalCode::LeaseLive,
                ..
            }
        ));
        assert_eq!(
            w.on_promote(7000 + w.wait_ms(), 5, "m", true, false),
            PromoteReply::Granted { epoch: 6 }
        );
    }

    #[test]
    fn claims_go_to_the_recorded_principal_or_to_the_first_node_only() {
        let mut w = WitnessCore::new(LeaseConfig::default(), 0, 0, None, false);
        // The first claim takes an epoch above the node's own history.
        assert_eq!(w.on_claim(0, 4, "a", 1), PromoteReply::Granted { epoch: 5 });
        assert!(
            matches!(w.on_claim(1, 9, "b", 2), PromoteReply::Refused { code: RefusalCode::OtherPrincipal, why } if why.contains("mirror"))
        );
        // A restart of the principal is a new epoch.
        assert_eq!(w.on_claim(2, 5, "a", 3), PromoteReply::Granted { epoch: 6 });
        // A retry (or a late copy) of that claim is the same grant, and
        // changes nothing.
        assert_eq!(w.on_claim(2, 5, "a", 3), PromoteReply::Granted { epoch: 6 });
        // The epoch the witness granted is the one renewals name.
        assert!(matches!(
            w.on_renew(3, 5, "a", false),
            RenewReply::Deposed { .. }
        ));
        assert!(matches!(
            w.on_renew(3, 6, "a", false),
            RenewReply::Lease { .. }
        ));
    }

    /// Each refusal of the core carries the code partners decide by: the
    /// text is for people and may change.
    #[test]
    fn every_refusal_carries_its_code() {
        let code = |r: PromoteReply| match r {
            PromoteReply::Refused { code, .. } => Some(code),
            PromoteReply::Granted { .. } => None,
        };
        let mut w = WitnessCore::new(LeaseConfig::default(), 0, 4, Some("p".into()), false);
        assert_eq!(
            code(w.on_promote(0, 3, "m", true, false)),
            Some(RefusalCode::StaleEpoch)
        );
        assert_eq!(
            code(w.on_promote(0, 4, "p", true, false)),
            Some(RefusalCode::AlreadyPrincipal)
        );
        assert_eq!(
            code(w.on_promote(0, 4, "m", false, false)),
            Some(RefusalCode::NotSynchronized)
        );
        assert_eq!(
            code(w.on_promote(0, 4, "m", true, false)),
            Some(RefusalCode::LeaseLive)
        );
        assert_eq!(code(w.on_resign(3, "p")), Some(RefusalCode::NotPrincipal));
        w.on_renew(0, 4, "p", true);
        assert_eq!(
            code(w.on_promote(100_000, 4, "m", true, false)),
            Some(RefusalCode::Exposed)
        );
        assert_eq!(
            code(w.on_claim(0, 1, "m", 1)),
            Some(RefusalCode::OtherPrincipal)
        );
        let mut w = WitnessCore::new(LeaseConfig::default(), 0, 0, None, false);
        assert_eq!(code(w.on_claim(0, 0, "a", 5)), None);
        assert_eq!(
            code(w.on_claim(0, 0, "a", 4)),
            Some(RefusalCode::StaleClaim)
        );
        assert_eq!(code(w.on_promote(100_000, 1, "b", true, false)), None);
        // The claim of start 5 was granted epoch 1, which is over.
        assert_eq!(
            code(w.on_claim(0, 0, "a", 5)),
            Some(RefusalCode::ClaimEpochOver)
        );
    }

    #[test]
    fn every_code_has_its_own_wire_byte() {
        for (i, c) in RefusalCode::ALL.into_iter().enumerate() {
            assert_eq!(c.to_wire() as usize, i);
            assert_eq!(RefusalCode::from_wire(c.to_wire()), Some(c));
        }
        for b in RefusalCode::ALL.len() as u8..=u8::MAX {
            assert_eq!(RefusalCode::from_wire(b), None);
        }
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
            let mut w = WitnessCore::new(cfg, 0, 1, Some("p".into()), false);
            let mut lease = LeaseClock::default();
            // The principal renews at real time t_s; it arrives later.
            let t_s = rnd() * 1e5;
            let t_r = t_s + rnd() * 50.0;
            let RenewReply::Lease { lease_ms, .. } = w.on_renew(w_clock(t_r) as u64, 1, "p", false)
            else {
                panic!("renewal refused")
            };
            lease.on_lease(p_clock(t_s) as u64, lease_ms, rho);
            let grants = |t: f64| {
                matches!(
                    w.clone().on_promote(w_clock(t) as u64, 1, "m", true, false),
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
