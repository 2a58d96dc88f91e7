//! `mirrorlog inspect-log`: a read-only walk over a log directory.
//!
//! It reads segment files with plain reads (no mapping for write, no
//! recovery), so it is safe to run on the log of a live node or on a copy
//! an operator is salvaging.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use mirrorlog_engine::log::frame::{self, Codec, FRAME_ALIGN, FRAME_HEADER_BYTES};
use mirrorlog_engine::log::segment::{
    decode_durable_hint, decode_segment_header, parse_segment_name, SEGMENT_HEADER_BYTES,
    SEGMENT_SUFFIX,
};

pub struct Options {
    pub dir: PathBuf,
    pub batches: bool,
    pub records: bool,
}

pub fn parse_args(args: &[String]) -> Result<Options, String> {
    let mut dir = None;
    let mut batches = false;
    let mut records = false;
    for a in args {
        match a.as_str() {
            "--batches" => batches = true,
            "--records" => {
                batches = true;
                records = true
            }
            flag if flag.starts_with('-') => return Err(format!("unknown option {flag:?}")),
            path if dir.is_none() => dir = Some(PathBuf::from(path)),
            extra => return Err(format!("unexpected argument {extra:?} (one DIR only)")),
        }
    }
    let dir = dir.ok_or("missing DIR: the log directory to inspect")?;
    Ok(Options {
        dir,
        batches,
        records,
    })
}

/// What the walk concluded.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Clean,
    /// Damage at or above the durable hint: recovery would cut it.
    TornTail {
        lsn: u64,
        reason: String,
    },
    /// Damage recovery refuses.
    Damaged(String),
}

fn escape(bytes: &[u8]) -> String {
    let mut s = String::new();
    for &b in bytes.iter().take(64) {
        if b.is_ascii_graphic() || b == b' ' {
            s.push(b as char);
        } else {
            let _ = write!(s, "\\x{b:02x}");
        }
    }
    if bytes.len() > 64 {
        s.push('…');
    }
    s
}

pub fn run(opts: &Options) -> ExitCode {
    match inspect(&opts.dir, opts, &mut std::io::stdout()) {
        Ok(Verdict::Damaged(_)) => ExitCode::from(1),
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mirrorlog inspect-log: {e}");
            ExitCode::from(1)
        }
    }
}

fn inspect(dir: &Path, opts: &Options, out: &mut impl std::io::Write) -> Result<Verdict, String> {
    let entries = fs::read_dir(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    let mut bases = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| format!("reading {}: {e}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().to_string();
        if let Some(base) = parse_segment_name(&name) {
            bases.push(base);
        } else if name.ends_with(SEGMENT_SUFFIX) {
            return Ok(report(
                out,
                Verdict::Damaged(format!("{name}: not a valid segment file name")),
            ));
        } else {
            let _ = writeln!(out, "note: ignoring {name} (not a segment; recovery removes *.tmp and *.trunc leftovers)");
        }
    }
    bases.sort_unstable();
    if bases.is_empty() {
        let _ = writeln!(out, "{}: no segments (an empty log)", dir.display());
        return Ok(Verdict::Clean);
    }
    let mut hint = 0u64;
    let mut segments = Vec::new();
    let mut expected_base = None;
    for base in bases {
        let name = mirrorlog_engine::log::segment::segment_name(base);
        let bytes = fs::read(dir.join(&name)).map_err(|e| format!("reading {name}: {e}"))?;
        let (hbase, capacity) = match decode_segment_header(&bytes) {
            Ok(x) => x,
            Err(reason) => return Ok(report(out, Verdict::Damaged(format!("{name}: {reason}")))),
        };
        if hbase != base || capacity as usize + SEGMENT_HEADER_BYTES != bytes.len() {
            return Ok(report(
                out,
                Verdict::Damaged(format!(
                    "{name}: header (base {hbase}, capacity {capacity}) does not match the file"
                )),
            ));
        }
        if let Some(exp) = expected_base {
            if exp != base {
                return Ok(report(
                    out,
                    Verdict::Damaged(format!("gap: {name} starts at {base}, expected {exp}")),
                ));
            }
        }
        expected_base = Some(base + capacity);
        let h = decode_durable_hint(&bytes);
        if let Some(h) = h.filter(|&h| h <= base + capacity) {
            hint = hint.max(h);
        }
        let _ = writeln!(
            out,
            "segment {name}: LSN {base}..{}, {} KiB, durable hint {}",
            base + capacity,
            capacity / 1024,
            h.map_or("unreadable".to_string(), |h| h.to_string())
        );
        segments.push((name, base, bytes));
    }

    let mut batches = 0u64;
    let mut records = 0u64;
    let mut raw = 0u64;
    let mut stored = 0u64;
    let mut last_epoch = 0;
    let mut end = segments[0].1;
    let mut stop: Option<(u64, String)> = None;
    'segments: for (i, (name, base, bytes)) in segments.iter().enumerate() {
        let space = &bytes[SEGMENT_HEADER_BYTES..];
        let mut off = 0usize;
        while off < space.len() {
            let lsn = base + off as u64;
            let rest = &space[off..];
            if rest[..rest.len().min(FRAME_HEADER_BYTES)]
                .iter()
                .all(|&b| b == 0)
            {
                if let Some(nz) = rest.iter().position(|&b| b != 0) {
                    stop = Some((
                        lsn,
                        format!(
                            "{name}: unexpected bytes at LSN {} after zeroed space",
                            lsn + nz as u64
                        ),
                    ));
                    break 'segments;
                }
                if i + 1 == segments.len() {
                    break 'segments;
                }
                continue 'segments; // padding to the next segment
            }
            match frame::check_frame(rest) {
                Ok((h, payload)) if h.base_lsn == lsn && h.epoch >= last_epoch => {
                    let recs = frame::decode_records(&h, payload);
                    if opts.batches {
                        let _ =
                            writeln!(
                            out,
                            "  batch LSN {}..{} epoch {} records {} codec {} raw {} stored {}{}",
                            h.base_lsn,
                            h.end_lsn(),
                            h.epoch,
                            h.record_count,
                            if h.codec == Codec::Zstd { "zstd" } else { "none" },
                            h.raw_bytes,
                            h.stored_bytes,
                            if recs.is_ok() { "" } else { " RECORDS INVALID" }
                        );
                    }
                    match recs {
                        Ok(recs) if opts.records => {
                            for (k, r) in recs.iter().enumerate() {
                                let _ = writeln!(out, "    [{k}] {} bytes: {}", r.len(), escape(r));
                            }
                        }
                        Ok(_) => {}
                        Err(e) => {
                            stop = Some((lsn, format!("{name}: batch at LSN {lsn}: {e}")));
                            break 'segments;
                        }
                    }
                    batches += 1;
                    records += u64::from(h.record_count);
                    raw += u64::from(h.raw_bytes);
                    stored += u64::from(h.stored_bytes);
                    last_epoch = h.epoch;
                    end = h.end_lsn();
                    off += h.frame_bytes();
                }
                Ok((h, _)) if h.base_lsn != lsn => {
                    stop = Some((
                        lsn,
                        format!(
                            "{name}: batch at LSN {lsn} claims LSN {} (stale or misplaced)",
                            h.base_lsn
                        ),
                    ));
                    break 'segments;
                }
                Ok((h, _)) => {
                    stop = Some((
                        lsn,
                        format!(
                            "{name}: batch at LSN {lsn} has epoch {} after epoch {last_epoch}",
                            h.epoch
                        ),
                    ));
                    break 'segments;
                }
                Err(e) => {
                    stop = Some((
                        lsn,
                        format!("{name}: torn or corrupt batch at LSN {lsn}: {e}"),
                    ));
                    break 'segments;
                }
            }
            debug_assert_eq!(off % FRAME_ALIGN, 0);
        }
    }
    let _ = writeln!(
        out,
        "{batches} batches, {records} records, LSN {}..{end}, last epoch {last_epoch}, raw {raw} B stored {stored} B ({:.2}x)",
        segments[0].1,
        if stored > 0 { raw as f64 / stored as f64 } else { 1.0 }
    );
    let verdict = match stop {
        None => Verdict::Clean,
        Some((lsn, reason)) if lsn >= hint => Verdict::TornTail { lsn, reason },
        Some((lsn, reason)) => Verdict::Damaged(format!(
            "{reason}; below the durable point {hint}: recovery refuses this log (LSN {lsn})"
        )),
    };
    Ok(report(out, verdict))
}

fn report(out: &mut impl std::io::Write, verdict: Verdict) -> Verdict {
    let _ = match &verdict {
        Verdict::Clean => writeln!(out, "verdict: clean"),
        Verdict::TornTail { lsn, reason } => writeln!(
            out,
            "verdict: torn tail from LSN {lsn} ({reason}); never acknowledged, recovery will cut it"
        ),
        Verdict::Damaged(why) => writeln!(out, "verdict: DAMAGED: {why}"),
    };
    verdict
}
