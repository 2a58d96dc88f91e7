//! The durable epoch history: survives reopen, clamps starts at each new
//! epoch, refuses going back, reports damage with the file named.

mod scratch;
use mirrorlog_engine::replication::history::{EpochHistory, HistoryError, HISTORY_FILE};

fn tempdir(tag: &str) -> std::path::PathBuf {
    let d = scratch::path(&format!("history-{tag}"));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn history_survives_reopen_and_clamps_starts_at_each_restart() {
    let dir = tempdir("clamp");
    let mut h = EpochHistory::load(&dir).unwrap();
    assert_eq!(h.entries(), &[]);
    h.begin(1, 0).unwrap();
    h.begin(2, 1000).unwrap();
    // A restart whose recovery cut the log back to 700, below epoch 2's start:
    // epoch 2 wrote nothing that survived, and it ends where epoch 3 starts.
    h.begin(3, 700).unwrap();
    assert_eq!(h.entries(), &[(1, 0), (2, 700), (3, 700)]);
    let again = EpochHistory::load(&dir).unwrap();
    assert_eq!(again.entries(), h.entries());
    assert_eq!(again.last_epoch(), 3);
    assert!(matches!(
        h.begin(3, 900),
        Err(HistoryError::NotNewer {
            last: 3,
            requested: 3
        })
    ));
    assert_eq!(
        EpochHistory::load(&dir).unwrap().entries().len(),
        3,
        "a refused begin writes nothing"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_leftover_temporary_file_is_ignored_and_damage_is_reported() {
    let dir = tempdir("damage");
    let mut h = EpochHistory::load(&dir).unwrap();
    h.begin(1, 0).unwrap();
    // A crash while writing the next version leaves only the temporary file.
    std::fs::write(dir.join(format!("{HISTORY_FILE}.tmp")), b"half written").unwrap();
    assert_eq!(EpochHistory::load(&dir).unwrap().entries(), &[(1, 0)]);
    // The next begin replaces it.
    h.begin(2, 50).unwrap();
    assert_eq!(
        EpochHistory::load(&dir).unwrap().entries(),
        &[(1, 0), (2, 50)]
    );
    // Damage to the file itself is an error that names it.
    let path = dir.join(HISTORY_FILE);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[14] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    let err = EpochHistory::load(&dir).unwrap_err();
    assert!(
        err.to_string().contains(HISTORY_FILE) && err.to_string().contains("checksum"),
        "{err}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}
