//! Integrity after the handshake: every message either way carries a tag,
//! a BLAKE3 keyed hash (`blake3::keyed_hash`) of a per-direction sequence
//! number and the message's bytes, keyed with that direction's session key
//! (`pake::SessionSecrets::seal_keys`).
//!
//! ```text
//! tag = BLAKE3-keyed(key_direction, M[21..] ‖ M[..21] ‖ seq u64 LE)
//!       (M the message's bytes: length, type, body; a message shorter
//!        than 21 bytes is hashed whole, then seq)
//! ```
//!
//! `seq` counts the messages sent in that direction since the handshake,
//! from 0, so a message dropped, repeated, reordered, moved to the other
//! direction or to another connection fails its check. The tag is not part
//! of the message: the sender computes it over the bytes it sends (for a
//! `ship`, over its header and the frame straight in the segment map, so
//! zero-copy sending stays zero-copy) and sends it after them as one more
//! small buffer; the receiver checks it before decoding the message.
//!
//! BLAKE3 rather than HMAC-SHA256: it is a keyed MAC by design (no
//! nested hashing), and on this machine (AVX-512) it hashes large frames
//! several times faster than SHA-256 with SHA-NI (measured by the test
//! `seal_tag_throughput` below, run with `--ignored --nocapture`).

use thiserror::Error;

/// Bytes of a tag.
pub const TAG_BYTES: usize = 32;
/// The hashed message is rotated by this much: a `ship`'s header.
pub const ROTATE_BYTES: usize = crate::replication::wire::SHIP_HEADER_BYTES;
const _: () = assert!(ROTATE_BYTES == 21);

/// One direction's key and the sequence number of its next message.
pub struct SealKey {
    key: [u8; 32],
    seq: u64,
}

impl SealKey {
    fn new(key: [u8; 32]) -> SealKey {
        SealKey { key, seq: 0 }
    }

    /// The tag of the message made of `parts` (concatenated), for the
    /// current sequence number, without advancing it.
    ///
    /// What is hashed is the message rotated left by [`ROTATE_BYTES`]
    /// (its bytes from there on, then its first bytes), then `seq`: BLAKE3
    /// compresses 1 KiB chunks in parallel (SIMD) only when they line up
    /// with its input, and a `ship`'s frame, the bulk, starts 21 bytes into
    /// the message. Hashed in wire order (or with `seq` first), a 4 KiB
    /// ship hashed at 0.7 GB/s instead of 2.5 here. A rotation by a fixed
    /// amount is a bijection, and the message's own length field says
    /// where it ends, so the input stays unambiguous.
    pub fn tag_of(&self, parts: &[&[u8]]) -> [u8; TAG_BYTES] {
        let mut h = blake3::Hasher::new_keyed(&self.key);
        let mut head = [0u8; ROTATE_BYTES];
        let mut head_len = 0;
        for p in parts {
            let take = (ROTATE_BYTES - head_len).min(p.len());
            head[head_len..head_len + take].copy_from_slice(&p[..take]);
            head_len += take;
            h.update(&p[take..]);
        }
        h.update(&head[..head_len]);
        h.update(&self.seq.to_le_bytes());
        *h.finalize().as_bytes()
    }

    /// Tags the next message and advances the sequence number.
    pub fn seal(&mut self, parts: &[&[u8]]) -> [u8; TAG_BYTES] {
        let t = self.tag_of(parts);
        self.seq += 1;
        t
    }

    /// Checks the next message's tag (constant time) and advances.
    pub fn open(&mut self, msg: &[u8], tag: &[u8; TAG_BYTES]) -> Result<(), IntegrityError> {
        let want = blake3::Hash::from(self.tag_of(&[msg]));
        // `blake3::Hash`'s equality is constant-time.
        if want != blake3::Hash::from(*tag) {
            return Err(IntegrityError {
                seq: self.seq,
                kind: msg.get(4).copied(),
            });
        }
        self.seq += 1;
        Ok(())
    }

    /// Messages sealed or opened so far.
    pub fn seq(&self) -> u64 {
        self.seq
    }
}

/// The keys of one side of a session: what it sends, what it receives.
pub struct SealKeys {
    pub send: SealKey,
    pub recv: SealKey,
}

impl SealKeys {
    pub fn new(send: [u8; 32], recv: [u8; 32]) -> SealKeys {
        SealKeys {
            send: SealKey::new(send),
            recv: SealKey::new(recv),
        }
    }
}

impl std::fmt::Debug for SealKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SealKeys(send seq {}, recv seq {}, keys redacted)",
            self.send.seq, self.recv.seq
        )
    }
}

/// A message whose tag did not verify: altered, dropped, replayed or
/// reordered on the way, or sent by someone without the session key.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error(
    "integrity check failed on message {seq} from the partner (type {}): it was altered, dropped, replayed or reordered on the way; the session is closed and nothing of it was used",
    kind.map_or("unknown".to_string(), |k| k.to_string())
)]
pub struct IntegrityError {
    pub seq: u64,
    /// The message's type byte as received (itself unauthenticated).
    pub kind: Option<u8>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (SealKeys, SealKeys) {
        (
            SealKeys::new([1; 32], [2; 32]),
            SealKeys::new([2; 32], [1; 32]),
        )
    }

    #[test]
    fn tags_check_in_order_and_only_in_order() {
        let (mut a, mut b) = pair();
        let t0 = a.send.seal(&[b"hel", b"lo"]);
        let t1 = a.send.seal(&[b"world"]);
        assert_eq!(b.recv.open(b"hello", &t0), Ok(()));
        assert_eq!(b.recv.open(b"world", &t1), Ok(()));
        // Replay of message 1 as message 2.
        assert!(b.recv.open(b"world", &t1).is_err());

        let (mut a, mut b) = pair();
        let _t0 = a.send.seal(&[b"one"]);
        let t1 = a.send.seal(&[b"two"]);
        assert!(b.recv.open(b"two", &t1).is_err(), "a dropped message");

        let (mut a, mut b) = pair();
        let t0 = a.send.seal(&[b"one"]);
        assert!(a.recv.open(b"one", &t0).is_err(), "reflected");
        let mut bad = *b"one";
        bad[1] ^= 1;
        assert!(b.recv.open(&bad, &t0).is_err(), "tampered");
        assert_eq!(
            b.recv.open(b"one", &t0),
            Ok(()),
            "the failed check did not advance"
        );
    }

    /// A message split anywhere into parts gets the same tag.
    #[test]
    fn the_tag_does_not_depend_on_how_the_message_is_split() {
        let k = SealKey::new([5; 32]);
        let msg: Vec<u8> = (0..200u8).collect();
        let whole = k.tag_of(&[&msg]);
        for cut in [0, 1, 20, 21, 22, 100, 200] {
            assert_eq!(k.tag_of(&[&msg[..cut], &msg[cut..]]), whole, "{cut}");
        }
        assert_eq!(k.tag_of(&[&msg[..3], &msg[3..10], &msg[10..]]), whole);
        let short = b"0123456789";
        assert_eq!(k.tag_of(&[&short[..4], &short[4..]]), k.tag_of(&[short]));
    }

    /// Not a benchmark of record (see bench/): a quick look at what the
    /// MAC costs per byte, BLAKE3 against HMAC-SHA256, on a ship-shaped
    /// message (21-byte header, then the frame).
    #[test]
    #[ignore]
    fn seal_tag_throughput() {
        use hmac::{Hmac, KeyInit, Mac};
        use sha2::Sha256;
        for size in [64usize, 4096, 65536, 1 << 20] {
            let buf = vec![7u8; size];
            let n = (256usize << 20) / size;
            let k = SealKey::new([3; 32]);
            let header = [9u8; ROTATE_BYTES];
            let t = std::time::Instant::now();
            for _ in 0..n {
                std::hint::black_box(k.tag_of(&[&header, &buf]));
            }
            let b3 = (n * size) as f64 / t.elapsed().as_secs_f64() / 1e9;
            let t = std::time::Instant::now();
            for _ in 0..n {
                let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(&[3; 32]).unwrap();
                m.update(&header);
                m.update(&buf);
                std::hint::black_box(m.finalize());
            }
            let hs = (n * size) as f64 / t.elapsed().as_secs_f64() / 1e9;
            println!("{size:>8} B: blake3 {b3:.2} GB/s, hmac-sha256 {hs:.2} GB/s");
        }
    }
}
