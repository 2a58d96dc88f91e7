//! The catch-up rule against a model of principal restarts: whatever prefix
//! of whichever incarnation's log a mirror copied, cutting it where
//! `plan_catch_up` says and shipping from `from_lsn` makes the mirror's log
//! identical to the principal's.

use mirrorlog_engine::replication::catchup::{plan_catch_up, CatchUp, PrincipalLog};
use proptest::prelude::*;

/// A batch: (start LSN, end LSN, epoch, content id unique to its writer).
type Batch = (u64, u64, u64, u64);

/// One incarnation: how many unsynced batches the crash before it lost, and
/// how many batches (of which sizes) it writes.
#[derive(Debug, Clone)]
struct Incarnation {
    lost: usize,
    sizes: Vec<u64>,
}

fn arb_incarnations() -> impl Strategy<Value = Vec<Incarnation>> {
    proptest::collection::vec(
        (0usize..4, proptest::collection::vec(1u64..50, 1..8))
            .prop_map(|(lost, sizes)| Incarnation { lost, sizes }),
        1..6,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn cutting_and_shipping_as_planned_makes_the_logs_identical(
        incarnations in arb_incarnations(),
        copy_at in any::<prop::sample::Index>(),
        copy_len in any::<prop::sample::Index>(),
    ) {
        // Run the principal, keeping every state its log passed through.
        let mut log: Vec<Batch> = Vec::new();
        let mut history: Vec<(u64, u64)> = Vec::new();
        let mut states: Vec<Vec<Batch>> = Vec::new();
        let mut content = 0u64;
        for (k, inc) in incarnations.iter().enumerate() {
            let epoch = k as u64 + 1;
            // The crash before this incarnation lost an unsynced tail.
            let keep = log.len().saturating_sub(inc.lost);
            log.truncate(keep);
            let mut lsn = log.last().map_or(0, |b| b.1);
            // The history keeps every epoch, batches or not, but no epoch
            // can start beyond the recovered end any more: what it wrote
            // there is gone.
            for h in history.iter_mut() {
                h.1 = h.1.min(lsn);
            }
            history.push((epoch, lsn));
            for &size in &inc.sizes {
                content += 1;
                log.push((lsn, lsn + size, epoch, content));
                lsn += size;
                states.push(log.clone());
            }
        }
        // The mirror copied some prefix of some past state of the log.
        let state = &states[copy_at.index(states.len())];
        let n = copy_len.index(state.len() + 1);
        let mut mirror: Vec<Batch> = state[..n].to_vec();
        let mirror_epoch = mirror.last().map_or(0, |b| b.2);
        let mirror_written = mirror.last().map_or(0, |b| b.1);
        let written = log.last().map_or(0, |b| b.1);
        let p = PrincipalLog {
            history: &history,
            start_lsn: 0,
            written_lsn: written,
            epoch: incarnations.len() as u64,
            segment_end_at: None,
        };
        let CatchUp { from_lsn, truncate_to } = plan_catch_up(&p, mirror_epoch, mirror_written)
            .map_err(|e| TestCaseError::fail(format!("{e}; history {history:?}")))?;
        if let Some(t) = truncate_to {
            prop_assert!(mirror.iter().any(|b| b.1 == t) || t == 0, "cut at {t} is a batch boundary of the mirror");
            mirror.retain(|b| b.1 <= t);
        }
        prop_assert_eq!(mirror.last().map_or(0, |b| b.1), from_lsn);
        prop_assert!(log.iter().any(|b| b.0 == from_lsn) || from_lsn == written, "shipping starts at a batch");
        // What the mirror kept is exactly the principal's (same writer).
        prop_assert_eq!(&mirror[..], &log[..mirror.len()]);
        mirror.extend(log.iter().filter(|b| b.0 >= from_lsn).copied());
        prop_assert_eq!(mirror, log);
    }
}
