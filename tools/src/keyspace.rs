//! The keyspace: keys to values, ordered by a keyed hash of the key so
//! that `SCAN` can walk it with a numeric cursor in O(log n + COUNT) per
//! call, whatever is inserted or deleted between calls.
//!
//! Entries live in a B-tree keyed by `SipHash(seed, key)` (the seed is
//! random per process, so a client cannot aim keys at one bucket). The
//! order is a function of the key alone and never changes while the
//! process runs: unlike a hash table it has no rehash that could reorder
//! it, so a cursor (the hash to resume at) keeps its meaning across any
//! writes. That gives Redis's guarantee: every key present for the whole
//! iteration is returned (exactly once, in fact); keys added or removed
//! meanwhile may or may not be. Two keys with the same 64-bit hash share a
//! bucket, returned whole by one call.
//!
//! Values are [`Value`]s (reference-counted bytes): a read hands out a
//! reference, not a copy, so replies waiting to be sent cost no memory of
//! their own until they are encoded.

use std::collections::btree_map::{self, BTreeMap};
use std::hash::{BuildHasher, RandomState};

/// A stored value: immutable, reference-counted bytes.
pub type Value = bytes::Bytes;

type Entry = (Vec<u8>, Value);

#[derive(Clone, Debug)]
enum Bucket {
    One(Entry),
    /// Keys whose hashes collide (rare: 64-bit hashes).
    Many(Vec<Entry>),
}

impl Bucket {
    fn entries(&self) -> &[Entry] {
        match self {
            Bucket::One(e) => std::slice::from_ref(e),
            Bucket::Many(kv) => kv,
        }
    }

    fn get(&self, key: &[u8]) -> Option<&Value> {
        self.entries()
            .iter()
            .find(|(k, _)| k.as_slice() == key)
            .map(|(_, v)| v)
    }
}

/// Keys to values in an order fixed by a keyed hash (see the module docs).
#[derive(Clone)]
pub struct Keyspace {
    seed: RandomState,
    tree: BTreeMap<u64, Bucket>,
    len: usize,
}

impl Default for Keyspace {
    fn default() -> Keyspace {
        Keyspace::new()
    }
}

impl std::fmt::Debug for Keyspace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl PartialEq for Keyspace {
    fn eq(&self, other: &Keyspace) -> bool {
        self.len == other.len && self.iter().all(|(k, v)| other.get(k) == Some(v))
    }
}

impl Eq for Keyspace {}

impl Keyspace {
    pub fn new() -> Keyspace {
        Keyspace {
            seed: RandomState::new(),
            tree: BTreeMap::new(),
            len: 0,
        }
    }

    fn hash(&self, key: &[u8]) -> u64 {
        self.seed.hash_one(key)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn get(&self, key: &[u8]) -> Option<&Value> {
        self.tree.get(&self.hash(key))?.get(key)
    }

    pub fn contains_key(&self, key: &[u8]) -> bool {
        self.get(key).is_some()
    }

    /// Sets `key` to `value`; the value it had.
    pub fn insert(&mut self, key: Vec<u8>, value: Value) -> Option<Value> {
        let h = self.hash(&key);
        match self.tree.entry(h) {
            btree_map::Entry::Vacant(e) => {
                e.insert(Bucket::One((key, value)));
                self.len += 1;
                None
            }
            btree_map::Entry::Occupied(mut e) => {
                let b = e.get_mut();
                if let Bucket::One((k, v)) = b {
                    if *k == key {
                        return Some(std::mem::replace(v, value));
                    }
                    let one = (std::mem::take(k), v.clone());
                    *b = Bucket::Many(vec![one]);
                }
                let Bucket::Many(kv) = b else {
                    unreachable!("made Many above")
                };
                if let Some((_, v)) = kv.iter_mut().find(|(k, _)| *k == key) {
                    return Some(std::mem::replace(v, value));
                }
                kv.push((key, value));
                self.len += 1;
                None
            }
        }
    }

    /// Removes `key`; the value it had.
    pub fn remove(&mut self, key: &[u8]) -> Option<Value> {
        let h = self.hash(key);
        let btree_map::Entry::Occupied(mut e) = self.tree.entry(h) else {
            return None;
        };
        let old = match e.get_mut() {
            Bucket::One((k, _)) if k.as_slice() == key => match e.remove() {
                Bucket::One((_, v)) => v,
                Bucket::Many(_) => unreachable!("matched One"),
            },
            Bucket::One(_) => return None,
            Bucket::Many(kv) => {
                let i = kv.iter().position(|(k, _)| k.as_slice() == key)?;
                let (_, v) = kv.swap_remove(i);
                if kv.is_empty() {
                    e.remove();
                }
                v
            }
        };
        self.len -= 1;
        Some(old)
    }

    pub fn clear(&mut self) {
        self.tree.clear();
        self.len = 0;
    }

    /// Every entry, in cursor order.
    pub fn iter(&self) -> impl Iterator<Item = (&Vec<u8>, &Value)> {
        self.tree
            .values()
            .flat_map(|b| b.entries().iter().map(|(k, v)| (k, v)))
    }

    pub fn keys(&self) -> impl Iterator<Item = &Vec<u8>> {
        self.iter().map(|(k, _)| k)
    }

    /// One step of a SCAN: calls `each` for the keys from `cursor` on,
    /// whole buckets at a time, until at least `count` keys were visited
    /// (a bucket of colliding keys may take it beyond `count`) or the end;
    /// returns the cursor to resume at, 0 when the walk is over. A cursor
    /// no call returned (a client's invention) simply resumes at the next
    /// hash above it.
    pub fn scan(&self, cursor: u64, count: usize, mut each: impl FnMut(&[u8], &Value)) -> u64 {
        let mut visited = 0;
        for (&h, b) in self.tree.range(cursor..) {
            if visited >= count.max(1) {
                return h;
            }
            for (k, v) in b.entries() {
                each(k, v);
            }
            visited += b.entries().len();
        }
        0
    }
}

impl FromIterator<(Vec<u8>, Value)> for Keyspace {
    fn from_iter<I: IntoIterator<Item = (Vec<u8>, Value)>>(it: I) -> Keyspace {
        let mut ks = Keyspace::new();
        for (k, v) in it {
            ks.insert(k, v);
        }
        ks
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeSet, HashMap};

    fn v(s: &str) -> Value {
        Value::copy_from_slice(s.as_bytes())
    }

    /// Every key: a full SCAN walk from cursor 0 with `count`.
    fn walk(ks: &Keyspace, count: usize) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut cur = 0;
        loop {
            cur = ks.scan(cur, count, |k, _| out.push(k.to_vec()));
            if cur == 0 {
                return out;
            }
        }
    }

    #[test]
    fn behaves_as_a_map() {
        let mut ks = Keyspace::new();
        let mut model = HashMap::new();
        // A small deterministic mix of inserts, overwrites and removes.
        let mut x = 7u64;
        for _ in 0..20_000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let key = format!("k{}", (x >> 33) % 500).into_bytes();
            if (x >> 20).is_multiple_of(3) {
                assert_eq!(ks.remove(&key), model.remove(&key));
            } else {
                let val = v(&format!("{x}"));
                assert_eq!(ks.insert(key.clone(), val.clone()), model.insert(key, val));
            }
            assert_eq!(ks.len(), model.len());
        }
        for (k, val) in &model {
            assert_eq!(ks.get(k), Some(val));
        }
        let mut keys: Vec<_> = ks.keys().cloned().collect();
        keys.sort();
        let mut want: Vec<_> = model.keys().cloned().collect();
        want.sort();
        assert_eq!(keys, want);
        ks.clear();
        assert!(ks.is_empty() && ks.get(b"k1").is_none());
    }

    #[test]
    fn colliding_hashes_share_a_bucket() {
        // Force collisions by putting entries in one bucket by hand.
        let mut ks = Keyspace::new();
        ks.tree.insert(
            5,
            Bucket::Many(vec![(b"a".to_vec(), v("1")), (b"b".to_vec(), v("2"))]),
        );
        ks.len = 2;
        let mut seen = Vec::new();
        assert_eq!(ks.scan(0, 1, |k, _| seen.push(k.to_vec())), 0);
        assert_eq!(seen, vec![b"a".to_vec(), b"b".to_vec()], "whole bucket");
        assert_eq!(ks.iter().count(), 2);
    }

    #[test]
    fn scan_returns_every_key_once_at_any_count() {
        let ks: Keyspace = (0..5_000)
            .map(|i| (format!("key:{i}").into_bytes(), v("x")))
            .collect();
        for count in [1, 10, 97, 10_000] {
            let got = walk(&ks, count);
            assert_eq!(got.len(), 5_000, "count {count}");
            let set: BTreeSet<_> = got.into_iter().collect();
            assert_eq!(set.len(), 5_000, "no key twice at count {count}");
        }
        assert!(walk(&Keyspace::new(), 10).is_empty());
    }

    /// Redis's SCAN guarantee under writes: a key present for the whole
    /// iteration is returned, whatever is added and removed between calls.
    #[test]
    fn scan_keeps_its_guarantee_while_keys_come_and_go() {
        let mut ks: Keyspace = (0..2_000)
            .map(|i| (format!("stay:{i}").into_bytes(), v("x")))
            .collect();
        let mut seen = BTreeSet::new();
        let mut cur = 0;
        let mut round = 0u64;
        loop {
            cur = ks.scan(cur, 10, |k, _| {
                seen.insert(k.to_vec());
            });
            // Churn: 50 new keys in, 40 older churn keys out, each round.
            for j in 0..50 {
                ks.insert(format!("churn:{round}:{j}").into_bytes(), v("y"));
            }
            if round > 0 {
                for j in 0..40 {
                    ks.remove(format!("churn:{}:{j}", round - 1).as_bytes());
                }
            }
            round += 1;
            if cur == 0 {
                break;
            }
        }
        for i in 0..2_000 {
            assert!(seen.contains(format!("stay:{i}").as_bytes()), "stay:{i}");
        }
    }
}
