//! The key exchange both links use (partner and witness): SPAKE2 in
//! symmetric mode over Ed25519 (crate `spake2`), then a key schedule bound
//! to the whole transcript, key confirmation, and the two per-direction
//! message keys (`seal`).
//!
//! Why a PAKE: with the old challenge-response (each side sends
//! HMAC(secret, hellos)), anyone who connected got a value computable from
//! the secret and public data alone, and could test guesses offline (a
//! five-word dictionary found the README's example secret). Here each side
//! sends `X = x·B + w·S` (x a fresh random scalar, w the secret hashed to a
//! scalar, S a fixed point nobody knows the logarithm of): a uniformly
//! random point whatever w is. The key depends on w *and* on the peer's
//! ephemeral scalar, so an active attacker commits to one guess of w in the
//! message it sends and learns only whether that one guess was right; a
//! passive one learns nothing. Confirmations and message MACs are keyed
//! from the exchange's output, never from the secret directly.
//!
//! Key schedule (HMAC-SHA256 throughout; `H` is SHA-256):
//!
//! ```text
//! T     = context ‖ transcript        (both hellos and both PAKE messages,
//!                                      in a fixed order agreed by role)
//! prk   = HMAC(key = H(T), spake2_key)                  HKDF-Extract
//! k(l)  = HMAC(key = prk, l ‖ 0x01)                     HKDF-Expand, 32 bytes
//! confirm from side r = HMAC(key = k("confirm " ‖ r), H(T))
//! message key for direction d = k("mac " ‖ d)
//! ```
//!
//! Every label names its sender, so nothing one side sends can be
//! reflected back as the other's.

use std::io::Read;

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use spake2::{Ed25519Group, Identity, Password, Spake2};

use crate::replication::handshake::Secret;

/// A SPAKE2 message: a side byte (`'S'`, symmetric) and a compressed point.
pub const PAKE_BYTES: usize = 33;
/// A key-confirmation MAC.
pub const CONFIRM_BYTES: usize = 32;
/// Bytes of fresh randomness one exchange needs (the ephemeral scalar's
/// seed; never sent).
pub const SEED_BYTES: usize = 32;

/// A fresh seed from the kernel's random source.
pub fn random_seed() -> std::io::Result<[u8; SEED_BYTES]> {
    let mut seed = [0u8; SEED_BYTES];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut seed)?;
    Ok(seed)
}

/// Expands a 32-byte seed into as many bytes as SPAKE2 asks for (SHA-256
/// in counter mode). Only the ephemeral scalar comes from it, so a seed
/// from the kernel's random source makes a uniformly random scalar; tests
/// fix the seed to replay an exchange.
struct SeedRng {
    seed: [u8; SEED_BYTES],
    counter: u64,
}

impl rand_core::RngCore for SeedRng {
    fn next_u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        self.fill_bytes(&mut b);
        u32::from_le_bytes(b)
    }
    fn next_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.fill_bytes(&mut b);
        u64::from_le_bytes(b)
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for chunk in dest.chunks_mut(32) {
            let block = Sha256::new()
                .chain_update(b"mirrorlog-pake-seed")
                .chain_update(self.seed)
                .chain_update(self.counter.to_le_bytes())
                .finalize();
            self.counter += 1;
            chunk.copy_from_slice(&block[..chunk.len()]);
        }
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

// The seed is secret randomness from /dev/urandom: a CSPRNG's output
// expanded by a hash, which is what CryptoRng promises.
impl rand_core::CryptoRng for SeedRng {}

/// One side of an exchange, between sending its PAKE message and
/// receiving the peer's.
pub struct KeyExchange {
    spake: Spake2<Ed25519Group>,
    mine: [u8; PAKE_BYTES],
}

impl KeyExchange {
    /// Starts an exchange; returns it and the PAKE message to send.
    /// `context` names the protocol and its version (it goes into the
    /// SPAKE2 identity, so exchanges of different protocols never mix).
    pub fn start(secret: &Secret, context: &[u8], seed: [u8; SEED_BYTES]) -> KeyExchange {
        let (spake, msg) = Spake2::<Ed25519Group>::start_symmetric_with_rng(
            &Password::new(secret.bytes()),
            &Identity::new(context),
            SeedRng { seed, counter: 0 },
        );
        let mine: [u8; PAKE_BYTES] = msg
            .as_slice()
            .try_into()
            .expect("a SPAKE2 Ed25519 message is 33 bytes");
        KeyExchange { spake, mine }
    }

    pub fn message(&self) -> [u8; PAKE_BYTES] {
        self.mine
    }

    /// Finishes with the peer's PAKE message. `transcript` is every public
    /// byte of the handshake (both hellos, both PAKE messages) in an order
    /// both sides agree on. A malformed peer message is an error; a peer
    /// with another secret is *not* detected here (the keys just differ):
    /// the confirmations catch it.
    pub fn finish(
        self,
        peer: &[u8; PAKE_BYTES],
        context: &[u8],
        transcript: &[u8],
    ) -> Result<SessionSecrets, String> {
        if peer == &self.mine {
            // Our own message reflected back: not a peer.
            return Err("the peer reflected this node's own key-exchange message".into());
        }
        let key = self
            .spake
            .finish(peer)
            .map_err(|e| format!("the peer's key-exchange message is malformed: {e:?}"))?;
        let transcript_hash: [u8; 32] = Sha256::new()
            .chain_update(context)
            .chain_update(transcript)
            .finalize()
            .into();
        let prk = hmac(&transcript_hash, &[&key]);
        Ok(SessionSecrets {
            prk,
            transcript_hash,
        })
    }
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().into()
}

/// What an exchange produced: the root of every key of the session.
pub struct SessionSecrets {
    prk: [u8; 32],
    transcript_hash: [u8; 32],
}

impl SessionSecrets {
    /// HKDF-Expand of one 32-byte key for `label`.
    pub fn key(&self, label: &str) -> [u8; 32] {
        hmac(&self.prk, &[label.as_bytes(), &[1]])
    }

    /// The confirmation `sender` (a role name) sends.
    pub fn confirmation(&self, sender: &str) -> [u8; CONFIRM_BYTES] {
        let k = self.key(&format!("confirm {sender}"));
        hmac(&k, &[&self.transcript_hash])
    }

    /// Checks the confirmation `sender` sent (constant-time comparison).
    pub fn verify_confirmation(&self, sender: &str, got: &[u8; CONFIRM_BYTES]) -> bool {
        let k = self.key(&format!("confirm {sender}"));
        let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(&k).expect("any key length");
        m.update(&self.transcript_hash);
        m.verify_slice(got).is_ok()
    }

    /// The message keys once both confirmations verified: `send` for what
    /// `me` sends, `recv` for what `peer` sends.
    pub fn seal_keys(&self, me: &str, peer: &str) -> crate::replication::seal::SealKeys {
        crate::replication::seal::SealKeys::new(
            self.key(&format!("mac {me} to {peer}")),
            self.key(&format!("mac {peer} to {me}")),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(a: &str, b: &str, ctx: &[u8]) -> (SessionSecrets, SessionSecrets) {
        let ka = KeyExchange::start(&Secret::new(a.as_bytes().to_vec()).unwrap(), ctx, [1; 32]);
        let kb = KeyExchange::start(&Secret::new(b.as_bytes().to_vec()).unwrap(), ctx, [2; 32]);
        let (ma, mb) = (ka.message(), kb.message());
        let t = [&ma[..], &mb[..]].concat();
        (
            ka.finish(&mb, ctx, &t).unwrap(),
            kb.finish(&ma, ctx, &t).unwrap(),
        )
    }

    #[test]
    fn same_secret_same_keys_other_secret_other_keys() {
        let (a, b) = pair("0123456789abcdef!", "0123456789abcdef!", b"ctx");
        assert_eq!(a.key("x"), b.key("x"));
        assert!(b.verify_confirmation("a", &a.confirmation("a")));
        assert!(
            !b.verify_confirmation("b", &a.confirmation("a")),
            "reflected"
        );
        let (a, b) = pair("0123456789abcdef!", "0123456789abcdeF!", b"ctx");
        assert_ne!(a.key("x"), b.key("x"));
        assert!(!b.verify_confirmation("a", &a.confirmation("a")));
    }

    #[test]
    fn a_reflected_or_malformed_message_is_refused() {
        let s = Secret::new(b"0123456789abcdef!".to_vec()).unwrap();
        let k = KeyExchange::start(&s, b"ctx", [1; 32]);
        let mine = k.message();
        assert!(k.finish(&mine, b"ctx", b"").is_err());
        let k = KeyExchange::start(&s, b"ctx", [1; 32]);
        let other = KeyExchange::start(&s, b"ctx", [2; 32]);
        let mut bad = other.message();
        bad[0] = b'A';
        assert!(
            k.finish(&bad, b"ctx", b"").is_err(),
            "not a symmetric-mode message"
        );
    }
}
