//! Commit levels: when a commit is acknowledged (docs/design.md).

use std::fmt;
use std::str::FromStr;

/// How far a commit must get before it is acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Level {
    /// Hardened on the principal.
    Local = 0,
    /// And received (in memory) by the mirror.
    RemoteWrite = 1,
    /// And hardened by the mirror (safety `full`).
    RemoteFlush = 2,
    /// And applied by the mirror, so a read there sees it.
    RemoteApply = 3,
}

impl Level {
    pub const ALL: [Level; 4] = [
        Level::Local,
        Level::RemoteWrite,
        Level::RemoteFlush,
        Level::RemoteApply,
    ];
    pub const COUNT: usize = 4;

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn name(self) -> &'static str {
        match self {
            Level::Local => "local",
            Level::RemoteWrite => "remote-write",
            Level::RemoteFlush => "remote-flush",
            Level::RemoteApply => "remote-apply",
        }
    }

    /// Whether reaching this level needs a mirror.
    pub fn is_remote(self) -> bool {
        self != Level::Local
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Level {
    type Err = String;
    fn from_str(s: &str) -> Result<Level, String> {
        Level::ALL
            .into_iter()
            .find(|l| l.name() == s)
            .ok_or_else(|| format!("unknown commit level {s:?}; expected one of local, remote-write, remote-flush, remote-apply"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_say_what_is_valid() {
        for l in Level::ALL {
            assert_eq!(l.name().parse::<Level>().unwrap(), l);
        }
        let err = "remote".parse::<Level>().unwrap_err();
        assert!(err.contains("remote-flush"), "{err}");
        assert!(Level::Local < Level::RemoteApply);
    }
}
