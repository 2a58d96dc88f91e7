//! A linearizability checker for key-value histories (Wing & Gong's
//! search with Lowe's memoization, as Porcupine does it), per key, over a
//! register with SET, GET, INCR and DEL.
//!
//! Each operation has an invoke time and an outcome. `Ok` operations have
//! a response time and an observed result; `Fail` operations definitely
//! did not happen (`-READONLY`, `-TRYAGAIN`: refused before anything was
//! logged) and are dropped; `Unknown` operations (a timeout, a lost
//! connection, "the write was not committed") may or may not have taken
//! effect, at any time after their invoke: they are pending for ever, and
//! one never linearized is one that never happened. A history is
//! linearizable iff every key's sub-history is (linearizability is local),
//! so keys are checked one by one, which keeps the search small.
//!
//! Included by path (`#[path]`) by the test crates that use it, so its
//! unit tests run once, in `linearizability_checker.rs`.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashSet};
use std::fmt;

/// A register's value: absent, or bytes (INCR reads them as an integer).
pub type Value = Option<Vec<u8>>;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    Set(Vec<u8>),
    Get,
    Incr,
    Del,
}

/// What an operation observed, when it completed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ret {
    /// SET's OK.
    Ok,
    /// GET's value (None: nil).
    Value(Value),
    /// INCR's new value.
    Int(i64),
    /// INCR refused: the value is not an integer (a read, no change).
    NotInteger,
    /// DEL's count (0 or 1).
    Deleted(i64),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok(Ret),
    Fail,
    Unknown,
}

#[derive(Clone, Debug)]
pub struct Op {
    pub client: usize,
    pub key: Vec<u8>,
    pub call: Call,
    /// Invoke and response times, in any monotonic unit (µs from a
    /// start); `ret` is ignored unless the outcome is `Ok`.
    pub invoke: u64,
    pub ret: u64,
    pub outcome: Outcome,
}

fn as_int(v: &Value) -> Option<Option<i64>> {
    match v {
        None => Some(None),
        Some(b) => std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse::<i64>().ok())
            .map(Some),
    }
}

/// The register's step: the state after `call` observed `ret` (None:
/// unknown result, anything goes) from `state`, or None if that cannot be.
fn step(state: &Value, call: &Call, ret: Option<&Ret>) -> Option<Value> {
    match (call, ret) {
        (Call::Set(v), None | Some(Ret::Ok)) => Some(Some(v.clone())),
        (Call::Get, None) => Some(state.clone()),
        (Call::Get, Some(Ret::Value(v))) => (v == state).then(|| state.clone()),
        (Call::Incr, r) => match (as_int(state), r) {
            (Some(n), None) => {
                let n = n.unwrap_or(0).checked_add(1)?;
                Some(Some(n.to_string().into_bytes()))
            }
            (Some(n), Some(Ret::Int(got))) => {
                let n = n.unwrap_or(0).checked_add(1)?;
                (n == *got).then(|| Some(n.to_string().into_bytes()))
            }
            (None, None | Some(Ret::NotInteger)) => Some(state.clone()),
            _ => None,
        },
        (Call::Del, None) => Some(None),
        (Call::Del, Some(Ret::Deleted(n))) => ((*n == 1) == state.is_some()).then_some(None),
        _ => None,
    }
}

/// One key's violation: the shortest prefix (cut at a time) of its
/// history that is already not linearizable, printed readably.
pub struct Violation {
    pub key: Vec<u8>,
    pub ops: Vec<Op>,
    pub total_ops: usize,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "key {:?}: not linearizable; the shortest failing prefix has {} of its {} operations (times in µs):",
            String::from_utf8_lossy(&self.key),
            self.ops.len(),
            self.total_ops
        )?;
        // The failure is at the prefix's end: show the operations up to it.
        const SHOWN: usize = 40;
        let skip = self.ops.len().saturating_sub(SHOWN);
        if skip > 0 {
            writeln!(
                f,
                "  ... {skip} earlier operations not shown; the last {SHOWN}:"
            )?;
        }
        let mut tail: Vec<&Op> = self.ops.iter().collect();
        tail.sort_by_key(|o| o.ret.max(o.invoke));
        for o in tail.into_iter().skip(skip) {
            let call = match &o.call {
                Call::Set(v) => format!("SET {}", String::from_utf8_lossy(v)),
                Call::Get => "GET".into(),
                Call::Incr => "INCR".into(),
                Call::Del => "DEL".into(),
            };
            let (end, out) = match &o.outcome {
                Outcome::Ok(r) => (
                    o.ret.to_string(),
                    match r {
                        Ret::Ok => "OK".into(),
                        Ret::Value(None) => "nil".into(),
                        Ret::Value(Some(v)) => format!("{:?}", String::from_utf8_lossy(v)),
                        Ret::Int(n) => n.to_string(),
                        Ret::NotInteger => "ERR not an integer".into(),
                        Ret::Deleted(n) => format!("(deleted {n})"),
                    },
                ),
                Outcome::Unknown => ("?".into(), "unknown (may take effect later)".into()),
                Outcome::Fail => ("-".into(), "failed".into()),
            };
            writeln!(
                f,
                "  client {:>2}  [{:>9} .. {:>9}]  {call:<24} -> {out}",
                o.client, o.invoke, end
            )?;
        }
        Ok(())
    }
}

impl fmt::Debug for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The result of checking a whole history.
pub struct Report {
    pub keys: usize,
    pub ops: usize,
    /// States the searches visited (memoized), summed over keys.
    pub states: u64,
    pub violations: Vec<Violation>,
}

/// Checks every key of `history`; violations come shortest first.
pub fn check(history: &[Op]) -> Report {
    let mut by_key: BTreeMap<&[u8], Vec<Op>> = BTreeMap::new();
    for o in history {
        if o.outcome != Outcome::Fail {
            by_key.entry(&o.key).or_default().push(o.clone());
        }
    }
    let mut r = Report {
        keys: by_key.len(),
        ops: history.len(),
        states: 0,
        violations: Vec::new(),
    };
    for (key, ops) in by_key {
        let (ok, states) = check_key(&ops);
        r.states += states;
        if !ok {
            r.violations.push(Violation {
                key: key.to_vec(),
                ops: shortest_failing_prefix(&ops),
                total_ops: ops.len(),
            });
        }
    }
    r.violations.sort_by_key(|v| v.ops.len());
    r
}

/// The history as it stood at time `t`: operations invoked before it;
/// those not answered by then become unknown (a read then says nothing).
fn cut(ops: &[Op], t: u64) -> Vec<Op> {
    ops.iter()
        .filter(|o| o.invoke < t)
        .filter_map(|o| {
            let mut o = o.clone();
            if matches!(o.outcome, Outcome::Ok(_)) && o.ret >= t {
                if o.call == Call::Get {
                    return None;
                }
                o.outcome = Outcome::Unknown;
            }
            Some(o)
        })
        .collect()
}

/// A prefix of a linearizable history is linearizable, so the failing
/// cut times are an up-set: binary-search the first.
fn shortest_failing_prefix(ops: &[Op]) -> Vec<Op> {
    let mut times: Vec<u64> = ops.iter().flat_map(|o| [o.invoke + 1, o.ret + 1]).collect();
    times.sort_unstable();
    times.dedup();
    let (mut lo, mut hi) = (0usize, times.len() - 1);
    if check_key(&cut(ops, times[hi])).0 {
        return ops.to_vec();
    }
    while lo < hi {
        let mid = (lo + hi) / 2;
        if check_key(&cut(ops, times[mid])).0 {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    let mut v = cut(ops, times[lo]);
    v.sort_by_key(|o| o.invoke);
    v
}

struct Entry {
    op: usize,
    is_call: bool,
    prev: usize,
    next: usize,
}

/// Wing–Gong–Lowe over one key's operations (no `Fail` among them):
/// whether they linearize, and how many states the search cached.
pub fn check_key(ops: &[Op]) -> (bool, u64) {
    const NIL: usize = usize::MAX;
    let n = ops.len();
    // Events by time: a return at t sorts at 2t, a call at 2t + 1 (an
    // operation answered at t precedes one invoked at t); an operation
    // answered at the instant it was invoked returns just after it.
    let mut events: Vec<(u64, bool, usize)> = Vec::new();
    let mut finite = 0usize;
    for (i, o) in ops.iter().enumerate() {
        events.push((2 * o.invoke + 1, true, i));
        if matches!(o.outcome, Outcome::Ok(_)) {
            assert!(
                o.ret >= o.invoke,
                "operation answered before invoked: {o:?}"
            );
            events.push(((2 * o.ret).max(2 * o.invoke + 2), false, i));
            finite += 1;
        }
    }
    events.sort_unstable();
    // A doubly-linked list with a head sentinel at index 0.
    let mut list: Vec<Entry> = vec![Entry {
        op: NIL,
        is_call: false,
        prev: NIL,
        next: NIL,
    }];
    let mut ret_entry = vec![NIL; n];
    let mut call_entry = vec![NIL; n];
    for (_, is_call, i) in &events {
        let idx = list.len();
        let prev = idx - 1;
        list[prev].next = idx;
        list.push(Entry {
            op: *i,
            is_call: *is_call,
            prev,
            next: NIL,
        });
        if *is_call {
            call_entry[*i] = idx;
        } else {
            ret_entry[*i] = idx;
        }
    }
    let lift = |list: &mut Vec<Entry>, e: usize| {
        let (p, nx) = (list[e].prev, list[e].next);
        list[p].next = nx;
        if nx != NIL {
            list[nx].prev = p;
        }
    };
    let unlift = |list: &mut Vec<Entry>, e: usize| {
        let (p, nx) = (list[e].prev, list[e].next);
        list[p].next = e;
        if nx != NIL {
            list[nx].prev = e;
        }
    };
    let words = n.div_ceil(64).max(1);
    let mut linearized = vec![0u64; words];
    let mut cache: HashSet<(Vec<u64>, Value)> = HashSet::new();
    let mut state: Value = None;
    let mut stack: Vec<(usize, Value)> = Vec::new();
    let mut remaining = finite;
    let mut entry = list[0].next;
    loop {
        if remaining == 0 {
            return (true, cache.len() as u64);
        }
        if entry == NIL {
            // Only unknown operations' calls were left: cannot happen
            // while a finite one remains (its return is in the list).
            unreachable!("list ended with {remaining} answered operations left");
        }
        let e = &list[entry];
        if e.is_call {
            let i = e.op;
            let ret = match &ops[i].outcome {
                Outcome::Ok(r) => Some(r),
                _ => None,
            };
            let mut advanced = false;
            if let Some(next) = step(&state, &ops[i].call, ret) {
                linearized[i / 64] |= 1 << (i % 64);
                if cache.insert((linearized.clone(), next.clone())) {
                    stack.push((i, std::mem::replace(&mut state, next)));
                    lift(&mut list, call_entry[i]);
                    if ret_entry[i] != NIL {
                        lift(&mut list, ret_entry[i]);
                        remaining -= 1;
                    }
                    entry = list[0].next;
                    advanced = true;
                } else {
                    linearized[i / 64] &= !(1 << (i % 64));
                }
            }
            if !advanced {
                entry = list[entry].next;
            }
        } else {
            // An answered operation not linearized yet: backtrack.
            let Some((i, prev_state)) = stack.pop() else {
                return (false, cache.len() as u64);
            };
            state = prev_state;
            linearized[i / 64] &= !(1 << (i % 64));
            if ret_entry[i] != NIL {
                unlift(&mut list, ret_entry[i]);
                remaining += 1;
            }
            unlift(&mut list, call_entry[i]);
            entry = list[call_entry[i]].next;
        }
    }
}
