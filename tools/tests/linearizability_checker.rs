//! The linearizability checker's own tests: hand-made histories it must
//! accept and known anomalies it must reject, with unknown outcomes, and a
//! search-size sanity case (counted in states, not timed).

#[path = "common/linearizability.rs"]
mod linearizability;

use linearizability::{check, Call, Op, Outcome, Ret};

fn op(client: usize, call: Call, invoke: u64, ret: u64, outcome: Outcome) -> Op {
    Op {
        client,
        key: b"k".to_vec(),
        call,
        invoke,
        ret,
        outcome,
    }
}
fn set(c: usize, v: &str, a: u64, b: u64) -> Op {
    op(c, Call::Set(v.into()), a, b, Outcome::Ok(Ret::Ok))
}
fn set_unknown(c: usize, v: &str, a: u64) -> Op {
    op(c, Call::Set(v.into()), a, 0, Outcome::Unknown)
}
fn get(c: usize, v: Option<&str>, a: u64, b: u64) -> Op {
    let v = v.map(|s| s.as_bytes().to_vec());
    op(c, Call::Get, a, b, Outcome::Ok(Ret::Value(v)))
}
fn incr(c: usize, n: i64, a: u64, b: u64) -> Op {
    op(c, Call::Incr, a, b, Outcome::Ok(Ret::Int(n)))
}
fn del(c: usize, n: i64, a: u64, b: u64) -> Op {
    op(c, Call::Del, a, b, Outcome::Ok(Ret::Deleted(n)))
}

fn linearizable(h: &[Op]) -> bool {
    let r = check(h);
    for v in &r.violations {
        eprintln!("{v}");
    }
    r.violations.is_empty()
}

#[test]
fn sequential_and_overlapping_histories_are_accepted() {
    assert!(linearizable(&[
        get(0, None, 0, 1),
        set(0, "1", 2, 3),
        get(1, Some("1"), 4, 5),
        incr(1, 2, 6, 7),
        del(0, 1, 8, 9),
        del(0, 0, 10, 11),
        get(1, None, 12, 13),
    ]));
    // A read overlapping a write may see either value.
    assert!(linearizable(&[
        set(0, "1", 0, 1),
        set(1, "2", 2, 10),
        get(2, Some("2"), 3, 4),
        get(3, Some("2"), 5, 6),
    ]));
    assert!(linearizable(&[
        set(0, "1", 0, 1),
        set(1, "2", 2, 10),
        get(2, Some("1"), 3, 4),
        get(3, Some("2"), 5, 6),
    ]));
    // Concurrent INCRs in either order.
    assert!(linearizable(&[
        incr(0, 2, 0, 10),
        incr(1, 1, 0, 10),
        get(2, Some("2"), 11, 12),
    ]));
}

#[test]
fn a_stale_read_after_a_completed_write_is_rejected() {
    let r = check(&[
        set(0, "1", 0, 1),
        set(0, "2", 2, 3),
        get(1, Some("1"), 4, 5),
    ]);
    assert_eq!(r.violations.len(), 1);
    let shown = r.violations[0].to_string();
    assert!(
        shown.contains("SET 2") && shown.contains("\"1\""),
        "{shown}"
    );
}

#[test]
fn a_read_of_a_value_never_written_is_rejected() {
    assert!(!linearizable(&[set(0, "1", 0, 1), get(1, Some("7"), 2, 3)]));
    // A failed write definitely did not happen.
    assert!(!linearizable(&[
        op(0, Call::Set("7".into()), 0, 1, Outcome::Fail),
        get(1, Some("7"), 2, 3),
    ]));
}

#[test]
fn a_lost_write_observed_then_unobserved_is_rejected() {
    // The failover shape: SET 2's outcome is unknown (its principal died),
    // a reader saw 2, a later reader sees 1 again.
    assert!(!linearizable(&[
        set(0, "1", 0, 1),
        set_unknown(1, "2", 2),
        get(2, Some("2"), 3, 4),
        get(3, Some("1"), 10, 11),
    ]));
    // Without the first read, the write may simply never have happened.
    assert!(linearizable(&[
        set(0, "1", 0, 1),
        set_unknown(1, "2", 2),
        get(3, Some("1"), 10, 11),
    ]));
}

#[test]
fn unknown_writes_may_take_effect_late() {
    // Invoked at 2, seen first at 100, after a read at 50 did not see it.
    assert!(linearizable(&[
        set(0, "1", 0, 1),
        set_unknown(1, "2", 2),
        get(2, Some("1"), 50, 51),
        get(3, Some("2"), 100, 101),
        get(3, Some("2"), 102, 103),
    ]));
    // An unknown INCR that took effect later.
    assert!(linearizable(&[
        set(0, "10", 0, 1),
        op(1, Call::Incr, 2, 0, Outcome::Unknown),
        get(2, Some("10"), 5, 6),
        get(2, Some("11"), 7, 8),
    ]));
    // ... but not before it was invoked.
    assert!(!linearizable(&[
        set(0, "1", 0, 1),
        get(2, Some("2"), 2, 3),
        set_unknown(1, "2", 4),
    ]));
}

#[test]
fn incr_anomalies_are_rejected() {
    // Two INCRs both answering 1: one increment lost.
    assert!(!linearizable(&[incr(0, 1, 0, 10), incr(1, 1, 0, 10)]));
    // INCR skipping a value.
    assert!(!linearizable(&[set(0, "5", 0, 1), incr(0, 7, 2, 3)]));
    // INCR after DEL starts from nothing.
    assert!(linearizable(&[
        set(0, "5", 0, 1),
        del(0, 1, 2, 3),
        incr(1, 1, 4, 5)
    ]));
    assert!(!linearizable(&[
        set(0, "5", 0, 1),
        del(0, 1, 2, 3),
        incr(1, 6, 4, 5)
    ]));
    // A non-integer makes INCR fail without changing the value.
    assert!(linearizable(&[
        set(0, "x", 0, 1),
        op(1, Call::Incr, 2, 3, Outcome::Ok(Ret::NotInteger)),
        get(2, Some("x"), 4, 5),
    ]));
}

#[test]
fn keys_are_checked_apart_and_the_shortest_failing_key_is_named() {
    let mut h = vec![set(0, "1", 0, 1), get(1, Some("1"), 2, 3)];
    let mut bad = vec![
        set(0, "a", 0, 1),
        set(0, "b", 2, 3),
        get(1, Some("a"), 4, 5),
    ];
    for o in &mut bad {
        o.key = b"other".to_vec();
    }
    h.append(&mut bad);
    let r = check(&h);
    assert_eq!(r.keys, 2);
    assert_eq!(r.violations.len(), 1);
    assert_eq!(r.violations[0].key, b"other");
}

/// A deterministic random linearizable history: `clients` threads doing
/// a mix on one key, each op taking effect at a random instant inside its
/// interval, some writes unknown.
fn random_history(seed: u64, ops: usize, clients: usize) -> Vec<Op> {
    let mut x = seed;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    // Effect instants: a global sequence; each client's ops are laid out
    // in time with intervals overlapping the other clients'.
    let mut state: Option<Vec<u8>> = None;
    let mut next_free = vec![0u64; clients];
    let mut out = Vec::new();
    for (i, t) in (0..ops as u64).map(|i| (i, i * 10 + 5)).collect::<Vec<_>>() {
        let c = (rnd() as usize) % clients;
        let invoke = next_free[c].max(t.saturating_sub(rnd() % 60)).min(t);
        let ret = t + rnd() % 60;
        next_free[c] = ret + 1;
        let (call, r) = match rnd() % 4 {
            0 => {
                let v = format!("{}", 1_000_000 * (i + 1));
                state = Some(v.clone().into_bytes());
                (Call::Set(v.into_bytes()), Ret::Ok)
            }
            1 => (Call::Get, Ret::Value(state.clone())),
            2 => {
                let n: i64 = state
                    .as_deref()
                    .map_or(0, |b| std::str::from_utf8(b).unwrap().parse().unwrap())
                    + 1;
                state = Some(n.to_string().into_bytes());
                (Call::Incr, Ret::Int(n))
            }
            _ => {
                let n = state.take().is_some() as i64;
                (Call::Del, Ret::Deleted(n))
            }
        };
        let unknown = !matches!(call, Call::Get) && rnd() % 50 == 0;
        out.push(op(
            c,
            call,
            invoke,
            ret,
            if unknown {
                Outcome::Unknown
            } else {
                Outcome::Ok(r)
            },
        ));
    }
    out
}

#[test]
fn hundreds_of_concurrent_operations_per_key_stay_a_small_search() {
    for seed in 1..=5u64 {
        let h = random_history(seed * 0x9e37_79b9, 600, 8);
        let t0 = std::time::Instant::now();
        let r = check(&h);
        assert!(r.violations.is_empty(), "{:?}", r.violations);
        eprintln!(
            "seed {seed}: {} ops, {} states, {:?}",
            h.len(),
            r.states,
            t0.elapsed()
        );
        // Memoization bounds the search: a small multiple of the ops.
        assert!(r.states < 200 * h.len() as u64, "{} states", r.states);
    }
    // The same history with one read corrupted is rejected.
    let mut h = random_history(77, 150, 8);
    let i = h.iter().rposition(|o| o.call == Call::Get).unwrap();
    h[i].outcome = Outcome::Ok(Ret::Value(Some(b"never-written".to_vec())));
    assert_eq!(check(&h).violations.len(), 1);
}
