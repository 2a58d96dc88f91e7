//! The witness's durable state, file `WITNESS` in its directory: replaced
//! atomically (`durable::replace_file`) before any reply that depends on
//! it. Little-endian (version 2; a version-1 file, `MLWITNS1`, ends after
//! the principal's name and is read as not resigned, with no claims):
//!
//! ```text
//! magic          [8]  b"MLWITNS2"
//! epoch          u64  the current epoch (0: none granted yet)
//! exposed        u8   0 or 1
//! principal_len  u16  then that many bytes of UTF-8 (0: none)
//! resigned       u8   0 or 1: the principal of epoch resigned
//! claims         u16  then per claim (at most CLAIMS_MAX):
//!   name_len     u16  then that many bytes of UTF-8
//!   claim_id     u64  the node's start counter at its last granted claim
//!   epoch        u64  the epoch that claim was granted
//! crc32c         u32  of every byte before it
//! ```

use std::path::Path;

use thiserror::Error;

use crate::witness::{Claim, CLAIMS_MAX};

pub const WITNESS_FILE: &str = "WITNESS";
const MAGIC_V1: &[u8; 8] = b"MLWITNS1";
const MAGIC: &[u8; 8] = b"MLWITNS2";

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WitnessState {
    pub epoch: u64,
    pub principal: Option<String>,
    pub exposed: bool,
    pub resigned: bool,
    pub claims: Vec<Claim>,
}

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StateError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("witness state {path} is damaged: {reason}; a witness must not guess its epoch (restore the file, or start a new witness with the partners' agreement)")]
    Damaged { path: String, reason: String },
}

impl WitnessState {
    fn encode(&self) -> Vec<u8> {
        let name = self.principal.as_deref().unwrap_or("").as_bytes();
        let mut b = Vec::with_capacity(64 + name.len());
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&self.epoch.to_le_bytes());
        b.push(u8::from(self.exposed));
        b.extend_from_slice(&(name.len() as u16).to_le_bytes());
        b.extend_from_slice(name);
        b.push(u8::from(self.resigned));
        assert!(self.claims.len() <= CLAIMS_MAX, "claims are bounded");
        b.extend_from_slice(&(self.claims.len() as u16).to_le_bytes());
        for c in &self.claims {
            b.extend_from_slice(&(c.name.len() as u16).to_le_bytes());
            b.extend_from_slice(c.name.as_bytes());
            b.extend_from_slice(&c.claim_id.to_le_bytes());
            b.extend_from_slice(&c.epoch.to_le_bytes());
        }
        let crc = crc32c::crc32c(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        b
    }

    fn decode(b: &[u8]) -> Result<WitnessState, &'static str> {
        if b.len() < 8 + 8 + 1 + 2 + 4 {
            return Err("not a witness state file (too short)");
        }
        let v1 = &b[..8] == MAGIC_V1;
        if !v1 && &b[..8] != MAGIC {
            return Err("not a witness state file (bad magic)");
        }
        let (body, crc) = b.split_at(b.len() - 4);
        if crc32c::crc32c(body) != u32::from_le_bytes(crc.try_into().expect("4 bytes")) {
            return Err("checksum mismatch");
        }
        let mut r = Reader { b: body, at: 8 };
        let epoch = r.u64()?;
        let exposed = r.flag("exposed flag is neither 0 nor 1")?;
        let principal = r.name()?;
        let mut st = WitnessState {
            epoch,
            principal: (!principal.is_empty()).then_some(principal),
            exposed,
            ..WitnessState::default()
        };
        if !v1 {
            st.resigned = r.flag("resigned flag is neither 0 nor 1")?;
            let n = r.u16()? as usize;
            if n > CLAIMS_MAX {
                return Err("more claims than a witness keeps");
            }
            for _ in 0..n {
                let name = r.name()?;
                st.claims.push(Claim {
                    name,
                    claim_id: r.u64()?,
                    epoch: r.u64()?,
                });
            }
        }
        if r.at != body.len() {
            return Err("length does not match the contents");
        }
        Ok(st)
    }

    /// Loads the state in `dir` (the default, epoch 0, if there is none).
    pub fn load(dir: &Path) -> Result<WitnessState, StateError> {
        let path = dir.join(WITNESS_FILE);
        match std::fs::read(&path) {
            Ok(b) => WitnessState::decode(&b).map_err(|reason| StateError::Damaged {
                path: path.display().to_string(),
                reason: reason.into(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(WitnessState::default()),
            Err(source) => Err(StateError::Io {
                context: format!("reading {}", path.display()),
                source,
            }),
        }
    }

    /// Stores the state durably.
    pub fn store(&self, dir: &Path) -> Result<(), StateError> {
        crate::durable::replace_file(dir, WITNESS_FILE, &self.encode())
            .map_err(|(context, source)| StateError::Io { context, source })
    }
}

/// Reads the fields of a state file's body, each a length-checked slice.
struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], &'static str> {
        let s = self
            .b
            .get(self.at..self.at + n)
            .ok_or("length does not match the contents")?;
        self.at += n;
        Ok(s)
    }
    fn u64(&mut self) -> Result<u64, &'static str> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn u16(&mut self) -> Result<u16, &'static str> {
        Ok(u16::from_le_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }
    fn flag(&mut self, why: &'static str) -> Result<bool, &'static str> {
        match self.take(1)?[0] {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(why),
        }
    }
    fn name(&mut self) -> Result<String, &'static str> {
        let n = self.u16()? as usize;
        let s = self.take(n)?;
        std::str::from_utf8(s)
            .map(str::to_string)
            .map_err(|_| "a name is not UTF-8")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_every_damage_is_detected() {
        let s = WitnessState {
            epoch: 7,
            principal: Some("node-a".into()),
            exposed: true,
            resigned: true,
            claims: vec![Claim {
                name: "node-a".into(),
                claim_id: 9,
                epoch: 7,
            }],
        };
        let good = s.encode();
        assert_eq!(WitnessState::decode(&good), Ok(s));
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x08;
            assert!(
                WitnessState::decode(&bad).is_err(),
                "flip at byte {i} undetected"
            );
        }
        assert!(WitnessState::decode(&good[..good.len() - 1]).is_err());
        let none = WitnessState::default();
        assert_eq!(WitnessState::decode(&none.encode()), Ok(none));
    }

    #[test]
    fn a_version_1_file_reads_as_not_resigned_with_no_claims() {
        let mut v1 = b"MLWITNS1".to_vec();
        v1.extend_from_slice(&5u64.to_le_bytes());
        v1.push(1);
        v1.extend_from_slice(&1u16.to_le_bytes());
        v1.push(b'a');
        let crc = crc32c::crc32c(&v1);
        v1.extend_from_slice(&crc.to_le_bytes());
        assert_eq!(
            WitnessState::decode(&v1),
            Ok(WitnessState {
                epoch: 5,
                principal: Some("a".into()),
                exposed: true,
                ..WitnessState::default()
            })
        );
    }

    #[test]
    fn survives_a_store_and_load_in_a_directory() {
        let d =
            std::env::temp_dir().join(format!("mirrorlog-witness-state-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        assert_eq!(WitnessState::load(&d).unwrap(), WitnessState::default());
        let s = WitnessState {
            epoch: 3,
            principal: Some("mirror-b".into()),
            exposed: false,
            ..WitnessState::default()
        };
        s.store(&d).unwrap();
        assert_eq!(WitnessState::load(&d).unwrap(), s);
        std::fs::write(d.join(WITNESS_FILE), b"garbage").unwrap();
        assert!(matches!(
            WitnessState::load(&d),
            Err(StateError::Damaged { .. })
        ));
        std::fs::remove_dir_all(&d).unwrap();
    }
}
