//! The key-value state machine: what a log record means, and the store it
//! builds. Principal and mirror run the same `apply`; the principal computes
//! each write's effect (INCR's new value, APPEND's result) when it runs the
//! command and logs the effect, so replay is deterministic.
//!
//! Record layout (little-endian), one effect per record; a command's
//! records go in one commit, so one batch, so they apply atomically:
//!
//! ```text
//! op u8 = 1 SET       key_len u32 · key · value (the rest)
//! op u8 = 2 DEL       key (the rest)
//! op u8 = 3 FLUSHALL  (nothing)
//! op u8 = 4 NOOP      (nothing; marks a checkpoint)
//! ```

use std::sync::{Arc, RwLock};

use mirrorlog_engine::apply::Applier;
use mirrorlog_engine::log::Records;

pub use crate::keyspace::{Keyspace, Value};

pub const OP_SET: u8 = 1;
pub const OP_DEL: u8 = 2;
pub const OP_FLUSHALL: u8 = 3;
/// Changes nothing: marks where a checkpoint was taken.
pub const OP_NOOP: u8 = 4;

/// One effect on the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    Set(Vec<u8>, Value),
    Del(Vec<u8>),
    FlushAll,
    Noop,
}

impl Effect {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Effect::Set(k, v) => {
                let mut r = Vec::with_capacity(5 + k.len() + v.len());
                r.push(OP_SET);
                r.extend_from_slice(&(k.len() as u32).to_le_bytes());
                r.extend_from_slice(k);
                r.extend_from_slice(v);
                r
            }
            Effect::Del(k) => {
                let mut r = Vec::with_capacity(1 + k.len());
                r.push(OP_DEL);
                r.extend_from_slice(k);
                r
            }
            Effect::FlushAll => vec![OP_FLUSHALL],
            Effect::Noop => vec![OP_NOOP],
        }
    }

    pub fn decode(r: &[u8]) -> Result<Effect, String> {
        match r.first() {
            Some(&OP_SET) => {
                if r.len() < 5 {
                    return Err("SET record shorter than its header".into());
                }
                let kl = u32::from_le_bytes(r[1..5].try_into().expect("4 bytes")) as usize;
                if r.len() < 5 + kl {
                    return Err(format!("SET record key of {kl} bytes exceeds the record"));
                }
                Ok(Effect::Set(
                    r[5..5 + kl].to_vec(),
                    Value::copy_from_slice(&r[5 + kl..]),
                ))
            }
            Some(&OP_DEL) => Ok(Effect::Del(r[1..].to_vec())),
            Some(&OP_FLUSHALL) if r.len() == 1 => Ok(Effect::FlushAll),
            Some(&OP_NOOP) if r.len() == 1 => Ok(Effect::Noop),
            Some(op) => Err(format!("unknown record op {op}")),
            None => Err("empty record".into()),
        }
    }
}

/// The store: keys, values, and the LSN it reflects.
#[derive(Default, Debug)]
pub struct Store {
    pub map: Keyspace,
    /// End of the last batch applied (mirror) or logged (principal).
    pub lsn: u64,
}

impl Store {
    /// Becomes the newest valid checkpoint in `node_dir` and returns its
    /// LSN, or (there is none) the empty store at `empty_lsn`. `warn` hears
    /// of every checkpoint skipped.
    pub fn load_newest_checkpoint(
        &mut self,
        node_dir: &std::path::Path,
        empty_lsn: u64,
        warn: impl FnMut(String),
    ) -> Option<u64> {
        match crate::checkpoint::load_newest(node_dir, warn) {
            Some(c) => {
                self.map = c.map;
                self.lsn = c.lsn;
                Some(c.lsn)
            }
            None => {
                self.map.clear();
                self.lsn = empty_lsn;
                None
            }
        }
    }

    pub fn apply(&mut self, e: &Effect) {
        match e {
            Effect::Set(k, v) => {
                self.map.insert(k.clone(), v.clone());
            }
            Effect::Del(k) => {
                self.map.remove(k);
            }
            Effect::FlushAll => self.map.clear(),
            Effect::Noop => {}
        }
    }
}

pub type Shared = Arc<RwLock<Store>>;

/// The `Applier` over a shared store (the mirror's, and the principal's
/// replay at start).
#[derive(Clone, Default)]
pub struct KvApplier {
    pub store: Shared,
    /// The node's directory: a rewind reloads a checkpoint from it.
    pub dir: Option<std::path::PathBuf>,
}

impl Applier for KvApplier {
    fn apply(&mut self, _start: u64, end: u64, records: &Records) -> Result<(), String> {
        // Decode the whole batch first: a damaged record applies nothing.
        let effects: Result<Vec<Effect>, String> = records.iter().map(Effect::decode).collect();
        let effects = effects?;
        let mut s = self.store.write().map_err(|_| "store lock poisoned")?;
        for e in &effects {
            s.apply(e);
        }
        s.lsn = end;
        Ok(())
    }

    /// A reseed: the snapshot is the principal's checkpoint file; it becomes
    /// this node's checkpoint (durably, before the log restarts at `lsn`)
    /// and the store.
    fn restore(&mut self, lsn: u64, snapshot: &[u8]) -> Result<(), String> {
        let Some(dir) = &self.dir else {
            return Err("this store has no directory to keep the snapshot in".into());
        };
        let map = crate::checkpoint::install_raw(dir, lsn, snapshot)?;
        let mut s = self.store.write().map_err(|_| "store lock poisoned")?;
        s.map = map;
        s.lsn = lsn;
        Ok(())
    }

    /// Back to the newest checkpoint at or below `lsn` (or the empty store
    /// at LSN 0 when there is none). Checkpoints above `lsn` describe a
    /// history that is being discarded: they move to `salvage/` beside the
    /// log, never to be loaded again.
    fn rewind(&mut self, lsn: u64) -> Result<u64, String> {
        let Some(dir) = &self.dir else {
            return Err("this store has no directory to reload a checkpoint from".into());
        };
        crate::checkpoint::set_aside_above(dir, lsn)?;
        let mut s = self.store.write().map_err(|_| "store lock poisoned")?;
        s.load_newest_checkpoint(dir, 0, |_| {});
        Ok(s.lsn)
    }
}

/// Redis's glob matching for KEYS and SCAN MATCH: `*`, `?`, `[abc]`,
/// `[^a]`, `[a-z]`, `\x`. Worst case O(pattern x subject): see [`Glob`].
pub fn glob_match(pattern: &[u8], s: &[u8]) -> bool {
    Glob::new(pattern).matches(s)
}

/// One element of a pattern.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tok {
    /// Any run of bytes (consecutive stars are one).
    Star,
    /// Any one byte.
    Any,
    Lit(u8),
    /// `[...]`: the class's bytes in the pattern, between the brackets (and
    /// after a leading `^`), and whether it is negated.
    Class {
        from: usize,
        to: usize,
        not: bool,
    },
}

/// A compiled glob pattern, matched without recursion: a mismatch after a
/// star resumes only at the most recent star, one byte further on. That is
/// enough for globs (a later star can absorb whatever an earlier one
/// would have), and bounds a match at O(pattern x subject) steps where
/// naive backtracking is exponential in the number of stars (Redis's
/// CVE-2022-36021 class: `a*a*a*...b` against a run of `a`s).
pub struct Glob<'p> {
    pat: &'p [u8],
    toks: Vec<Tok>,
}

impl<'p> Glob<'p> {
    pub fn new(pat: &'p [u8]) -> Glob<'p> {
        let mut toks = Vec::new();
        let mut i = 0;
        while i < pat.len() {
            match pat[i] {
                b'*' => {
                    if toks.last() != Some(&Tok::Star) {
                        toks.push(Tok::Star);
                    }
                    i += 1;
                }
                b'?' => {
                    toks.push(Tok::Any);
                    i += 1;
                }
                b'[' => {
                    let mut j = i + 1;
                    let not = j < pat.len() && pat[j] == b'^';
                    if not {
                        j += 1;
                    }
                    let from = j;
                    while j < pat.len() && pat[j] != b']' {
                        // The same walk as `one` makes: an escape takes
                        // two bytes, a range three (its end is literal,
                        // even a backslash).
                        j += if pat[j] == b'\\' && j + 1 < pat.len() {
                            2
                        } else if j + 2 < pat.len() && pat[j + 1] == b'-' && pat[j + 2] != b']' {
                            3
                        } else {
                            1
                        };
                    }
                    let to = j.min(pat.len());
                    toks.push(Tok::Class { from, to, not });
                    i = (j + 1).min(pat.len()).max(to);
                }
                b'\\' if i + 1 < pat.len() => {
                    toks.push(Tok::Lit(pat[i + 1]));
                    i += 2;
                }
                c => {
                    toks.push(Tok::Lit(c));
                    i += 1;
                }
            }
        }
        Glob { pat, toks }
    }

    /// Whether one (non-star) element matches byte `c`.
    fn one(&self, t: Tok, c: u8) -> bool {
        match t {
            Tok::Star => unreachable!("stars are handled by matches"),
            Tok::Any => true,
            Tok::Lit(l) => l == c,
            Tok::Class { from, to, not } => {
                let p = &self.pat[..to];
                let mut j = from;
                let mut hit = false;
                while j < to {
                    if p[j] == b'\\' && j + 1 < to {
                        hit |= p[j + 1] == c;
                        j += 2;
                    } else if j + 2 < to && p[j + 1] == b'-' {
                        let (a, b) = (p[j].min(p[j + 2]), p[j].max(p[j + 2]));
                        hit |= (a..=b).contains(&c);
                        j += 3;
                    } else {
                        hit |= p[j] == c;
                        j += 1;
                    }
                }
                hit != not
            }
        }
    }

    pub fn matches(&self, s: &[u8]) -> bool {
        let t = &self.toks;
        let (mut ti, mut si) = (0, 0);
        // The element after the most recent star, and where in `s` that
        // star's run currently ends.
        let mut resume: Option<(usize, usize)> = None;
        while si < s.len() {
            if ti < t.len() {
                if t[ti] == Tok::Star {
                    ti += 1;
                    resume = Some((ti, si));
                    continue;
                }
                if self.one(t[ti], s[si]) {
                    ti += 1;
                    si += 1;
                    continue;
                }
            }
            match resume {
                Some((rt, rs)) => {
                    ti = rt;
                    si = rs + 1;
                    resume = Some((rt, rs + 1));
                }
                None => return false,
            }
        }
        t[ti..].iter().all(|&x| x == Tok::Star)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn effects_round_trip_and_damage_is_an_error() {
        for e in [
            Effect::Set(b"k".to_vec(), Value::from_static(b"v")),
            Effect::Set(Vec::new(), Value::new()),
            Effect::Del(b"key".to_vec()),
            Effect::FlushAll,
            Effect::Noop,
        ] {
            assert_eq!(Effect::decode(&e.encode()).unwrap(), e);
        }
        assert!(Effect::decode(&[OP_SET, 9, 0, 0, 0, b'a']).is_err());
        assert!(Effect::decode(&[9]).is_err());
        assert!(Effect::decode(&[]).is_err());
    }

    #[test]
    fn globs() {
        assert!(glob_match(b"*", b"anything"));
        assert!(glob_match(b"user:*", b"user:42"));
        assert!(!glob_match(b"user:*", b"order:42"));
        assert!(glob_match(b"h?llo", b"hello"));
        assert!(glob_match(b"h[ae]llo", b"hallo"));
        assert!(!glob_match(b"h[^e]llo", b"hello"));
        assert!(glob_match(b"h[a-c]llo", b"hbllo"));
        assert!(glob_match(b"a\\*b", b"a*b"));
        assert!(!glob_match(b"a\\*b", b"axb"));
        assert!(glob_match(b"*a*b*", b"xxaxxbxx"));
        assert!(!glob_match(b"*a*b", b"xxaxxbxx"));
        assert!(glob_match(b"a**b", b"ab"));
        assert!(glob_match(b"", b""));
        assert!(!glob_match(b"", b"a"));
        assert!(glob_match(b"[\\]]x", b"]x"));
        assert!(glob_match(b"[z-a]", b"m"), "reversed ranges as Redis");
        // Found by the proptest in CI: a range ending in a backslash ends
        // there, so the `]` after it closes the class.
        assert!(!glob_match(br"*[a-\]a", b"]"));
        assert!(glob_match(br"*[a-\]a", b"]a"));
    }

    /// Exponential backtracking (CVE-2022-36021 class): Redis's own "long
    /// nested loops" regression pattern, and the issue's 15-star one,
    /// against a run of `a`s that almost matches. With the old recursive
    /// matcher the 15-star pattern took 2.6 s and each star ~4x more; here
    /// it is O(pattern x subject) steps, so these complete in microseconds
    /// (the test counts no time: it would hang for hours without the fix).
    #[test]
    fn nested_star_patterns_are_not_exponential() {
        let key = vec![b'a'; 30];
        let p15 = format!("{}b", "a*".repeat(15));
        assert!(!glob_match(p15.as_bytes(), &key));
        let p20 = format!("*{}b", "a*".repeat(20));
        assert!(!glob_match(p20.as_bytes(), &vec![b'a'; 4096]));
        let long = format!("{}a", "*".repeat(10_000));
        assert!(glob_match(long.as_bytes(), b"aaaa"));
    }

    /// The old recursive matcher, kept as the reference the linear one is
    /// checked against (same semantics, exponential worst case).
    fn reference(p: &[u8], s: &[u8]) -> bool {
        let (mut pi, mut si) = (0, 0);
        while pi < p.len() {
            match p[pi] {
                b'*' => {
                    while pi + 1 < p.len() && p[pi + 1] == b'*' {
                        pi += 1;
                    }
                    if pi + 1 == p.len() {
                        return true;
                    }
                    return (si..=s.len()).any(|k| reference(&p[pi + 1..], &s[k..]));
                }
                b'?' => {
                    if si >= s.len() {
                        return false;
                    }
                    si += 1;
                    pi += 1;
                }
                b'[' => {
                    if si >= s.len() {
                        return false;
                    }
                    let mut j = pi + 1;
                    let not = j < p.len() && p[j] == b'^';
                    if not {
                        j += 1;
                    }
                    let mut matched = false;
                    while j < p.len() && p[j] != b']' {
                        if p[j] == b'\\' && j + 1 < p.len() {
                            matched |= p[j + 1] == s[si];
                            j += 2;
                        } else if j + 2 < p.len() && p[j + 1] == b'-' && p[j + 2] != b']' {
                            let (a, b) = (p[j].min(p[j + 2]), p[j].max(p[j + 2]));
                            matched |= (a..=b).contains(&s[si]);
                            j += 3;
                        } else {
                            matched |= p[j] == s[si];
                            j += 1;
                        }
                    }
                    if matched == not {
                        return false;
                    }
                    pi = (j + 1).min(p.len());
                    si += 1;
                }
                c => {
                    let c = if c == b'\\' && pi + 1 < p.len() {
                        pi += 1;
                        p[pi]
                    } else {
                        c
                    };
                    if si >= s.len() || s[si] != c {
                        return false;
                    }
                    si += 1;
                    pi += 1;
                }
            }
        }
        si == s.len()
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(4000))]
        #[test]
        fn linear_glob_agrees_with_the_reference(
            p in proptest::collection::vec(proptest::sample::select(b"ab*?[]^-\\".to_vec()), 0..10),
            s in proptest::collection::vec(proptest::sample::select(b"ab-]".to_vec()), 0..10),
        ) {
            proptest::prop_assert_eq!(glob_match(&p, &s), reference(&p, &s), "{:?} {:?}",
                String::from_utf8_lossy(&p), String::from_utf8_lossy(&s));
        }
    }
}
