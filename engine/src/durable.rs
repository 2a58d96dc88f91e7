//! Small files replaced atomically and durably: written to `NAME.tmp`,
//! synced, renamed over `NAME`, and the directory synced, so a crash
//! leaves the old contents or the new, never a mix. Used for the epoch
//! history (`EPOCHS`) and the witness's state (`WITNESS`).

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

/// Replaces `dir/name` with `bytes`; the error says which step failed.
pub fn replace_file(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), (String, io::Error)> {
    let path = dir.join(name);
    let tmp = dir.join(format!("{name}.tmp"));
    let mut f = crate::private::file_options()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(|e| (format!("creating {}", tmp.display()), e))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| (format!("writing {}", tmp.display()), e))?;
    fs::rename(&tmp, &path).map_err(|e| (format!("replacing {}", path.display()), e))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| (format!("syncing {}", dir.display()), e))
}
