//! Where a reconnecting mirror resumes: the rule of docs/design.md ("open
//! design point"): every principal incarnation is a new epoch, and the
//! mirror's bytes past the end of its last batch's epoch in the principal's
//! history were written by an incarnation that no longer exists.
//!
//! Pure: the principal's epoch history and positions in, a decision out.

use thiserror::Error;

/// Where the mirror must resume, and whether it must first cut its log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CatchUp {
    /// The principal ships batches from here.
    pub from_lsn: u64,
    /// The mirror first truncates its log to this LSN (a tail the
    /// principal's current history does not contain).
    pub truncate_to: Option<u64>,
}

/// Why a mirror cannot simply catch up.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CatchUpError {
    #[error(
        "the mirror's last batch is from epoch {mirror_epoch}, newer than this principal's epoch \
         {principal_epoch}: this principal is stale and must not serve it"
    )]
    MirrorAhead {
        mirror_epoch: u64,
        principal_epoch: u64,
    },
    #[error(
        "the mirror's last batch is from epoch {mirror_epoch}, which this principal's history \
         does not contain (it holds epochs {known:?}); rejoining after a failover is needed"
    )]
    UnknownEpoch { mirror_epoch: u64, known: Vec<u64> },
    #[error(
        "the mirror needs the log from LSN {needed_lsn}, but this principal's log starts at \
         {log_start}: the mirror must be reseeded from a checkpoint"
    )]
    Purged { needed_lsn: u64, log_start: u64 },
    #[error(
        "the mirror's log segment at LSN {lsn} ends at {mirror_end}, this principal's at \
         {principal_end}: its segments were made with another --segment-bytes, so shipped frames \
         cannot continue its log; it must be reseeded from a checkpoint"
    )]
    Geometry {
        lsn: u64,
        mirror_end: u64,
        principal_end: u64,
    },
}

/// The principal's side of the decision.
#[derive(Clone)]
pub struct PrincipalLog<'a> {
    /// `(epoch, start LSN)` of every epoch the principal's log went
    /// through, in epoch order, including epochs none of whose batches
    /// survived. When an incarnation starts at recovered end `R`, every
    /// earlier start is first clamped to at most `R` (what those epochs
    /// wrote beyond `R` is gone), then `(new epoch, R)` is appended. This
    /// needs durable keeping: recovery's history (from surviving frames)
    /// lacks epochs whose batches were all lost, and with it a mirror of
    /// such an epoch is refused as unknown rather than served wrongly.
    pub history: &'a [(u64, u64)],
    /// First LSN still in the principal's log.
    pub start_lsn: u64,
    /// End of the principal's log.
    pub written_lsn: u64,
    /// The epoch the principal writes in now.
    pub epoch: u64,
    /// Where the principal's segment holding (or that would hold) a batch
    /// at an LSN ends (`Log::segment_end_at`); None: geometry not checked.
    pub segment_end_at: Option<&'a dyn Fn(u64) -> u64>,
}

impl std::fmt::Debug for PrincipalLog<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrincipalLog")
            .field("history", &self.history)
            .field("start_lsn", &self.start_lsn)
            .field("written_lsn", &self.written_lsn)
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

/// Decides where a mirror whose log ends at `mirror_written` with a last
/// batch of epoch `mirror_epoch` (0 for an empty log) resumes.
pub fn plan_catch_up(
    p: &PrincipalLog<'_>,
    mirror_epoch: u64,
    mirror_written: u64,
) -> Result<CatchUp, CatchUpError> {
    debug_assert!(p
        .history
        .windows(2)
        .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1));
    if mirror_epoch > p.epoch {
        return Err(CatchUpError::MirrorAhead {
            mirror_epoch,
            principal_epoch: p.epoch,
        });
    }
    // Where the mirror's history stops agreeing with the principal's: the
    // end of the mirror's last epoch in the principal's log.
    let agreed_end = if mirror_epoch == 0 {
        // A mirror log without batches agrees with the principal's up to
        // its own end, but never past the principal's (epoch 0 is no epoch:
        // the log refuses batches of epoch 0).
        mirror_written.min(p.written_lsn)
    } else {
        let Some(i) = p.history.iter().position(|&(e, _)| e == mirror_epoch) else {
            return Err(CatchUpError::UnknownEpoch {
                mirror_epoch,
                known: p.history.iter().map(|&(e, _)| e).collect(),
            });
        };
        p.history
            .get(i + 1)
            .map_or(p.written_lsn, |&(_, start)| start)
    };
    let (from_lsn, truncate_to) = if mirror_written > agreed_end {
        (agreed_end, Some(agreed_end))
    } else {
        (mirror_written, None)
    };
    if from_lsn < p.start_lsn {
        return Err(CatchUpError::Purged {
            needed_lsn: from_lsn,
            log_start: p.start_lsn,
        });
    }
    Ok(CatchUp {
        from_lsn,
        truncate_to,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // Epoch 1 from 0, epoch 2 (a restart) from 1000, epoch 4 (another) from 5000.
    const HISTORY: &[(u64, u64)] = &[(1, 0), (2, 1000), (4, 5000)];

    fn principal() -> PrincipalLog<'static> {
        PrincipalLog {
            history: HISTORY,
            start_lsn: 0,
            written_lsn: 8000,
            epoch: 4,
            segment_end_at: None,
        }
    }

    #[test]
    fn a_mirror_behind_in_the_current_epoch_just_continues() {
        assert_eq!(
            plan_catch_up(&principal(), 4, 6000),
            Ok(CatchUp {
                from_lsn: 6000,
                truncate_to: None
            })
        );
        assert_eq!(plan_catch_up(&principal(), 4, 8000).unwrap().from_lsn, 8000);
    }

    #[test]
    fn a_tail_written_by_a_dead_incarnation_is_cut_at_its_epoch_end() {
        // The mirror holds epoch-2 batches up to 6000, but the principal's
        // epoch 2 ended at 5000, where a restart (epoch 4) began writing:
        // the mirror's bytes from 5000 on came from the dead incarnation.
        assert_eq!(
            plan_catch_up(&principal(), 2, 6000),
            Ok(CatchUp {
                from_lsn: 5000,
                truncate_to: Some(5000)
            })
        );
        // Beyond the principal's end in the current epoch: never acknowledged.
        assert_eq!(
            plan_catch_up(&principal(), 4, 9000),
            Ok(CatchUp {
                from_lsn: 8000,
                truncate_to: Some(8000)
            })
        );
        // Within its epoch's span the mirror's bytes are the principal's.
        assert_eq!(
            plan_catch_up(&principal(), 1, 700).unwrap().truncate_to,
            None
        );
    }

    #[test]
    fn stale_principals_unknown_epochs_and_purged_logs_are_refused() {
        assert!(matches!(
            plan_catch_up(&principal(), 5, 100),
            Err(CatchUpError::MirrorAhead {
                mirror_epoch: 5,
                principal_epoch: 4
            })
        ));
        let err = plan_catch_up(&principal(), 3, 100).unwrap_err();
        assert!(
            err.to_string().contains("rejoining after a failover"),
            "{err}"
        );
        let trimmed = PrincipalLog {
            start_lsn: 2000,
            ..principal()
        };
        assert_eq!(
            plan_catch_up(&trimmed, 2, 1500),
            Err(CatchUpError::Purged {
                needed_lsn: 1500,
                log_start: 2000
            })
        );
        // An empty mirror needs everything from the start.
        assert_eq!(plan_catch_up(&principal(), 0, 0).unwrap().from_lsn, 0);
        assert!(matches!(
            plan_catch_up(&trimmed, 0, 0),
            Err(CatchUpError::Purged { .. })
        ));
    }
}
