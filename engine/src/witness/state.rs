//! The witness's durable state, file `WITNESS` in its directory: replaced
//! atomically (`durable::replace_file`) before any reply that depends on
//! it. Little-endian:
//!
//! ```text
//! magic          [8]  b"MLWITNS1"
//! epoch          u64  the current epoch (0: none granted yet)
//! exposed        u8   0 or 1
//! principal_len  u16  then that many bytes of UTF-8 (0: none)
//! crc32c         u32  of every byte before it
//! ```

use std::path::Path;

use thiserror::Error;

pub const WITNESS_FILE: &str = "WITNESS";
const MAGIC: &[u8; 8] = b"MLWITNS1";

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WitnessState {
    pub epoch: u64,
    pub principal: Option<String>,
    pub exposed: bool,
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
        let mut b = Vec::with_capacity(8 + 8 + 1 + 2 + name.len() + 4);
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&self.epoch.to_le_bytes());
        b.push(u8::from(self.exposed));
        b.extend_from_slice(&(name.len() as u16).to_le_bytes());
        b.extend_from_slice(name);
        let crc = crc32c::crc32c(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        b
    }

    fn decode(b: &[u8]) -> Result<WitnessState, &'static str> {
        if b.len() < 8 + 8 + 1 + 2 + 4 || &b[..8] != MAGIC {
            return Err("not a witness state file (bad magic or too short)");
        }
        let (body, crc) = b.split_at(b.len() - 4);
        if crc32c::crc32c(body) != u32::from_le_bytes(crc.try_into().expect("4 bytes")) {
            return Err("checksum mismatch");
        }
        let epoch = u64::from_le_bytes(body[8..16].try_into().expect("8 bytes"));
        let exposed = match body[16] {
            0 => false,
            1 => true,
            _ => return Err("exposed flag is neither 0 nor 1"),
        };
        let len = u16::from_le_bytes(body[17..19].try_into().expect("2 bytes")) as usize;
        if body.len() != 19 + len {
            return Err("length does not match the principal's name");
        }
        let name = std::str::from_utf8(&body[19..]).map_err(|_| "principal name is not UTF-8")?;
        Ok(WitnessState {
            epoch,
            principal: (!name.is_empty()).then(|| name.to_string()),
            exposed,
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_every_damage_is_detected() {
        let s = WitnessState {
            epoch: 7,
            principal: Some("node-a".into()),
            exposed: true,
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
