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

pub const INSPECT_USAGE: &str = "\
mirrorlog inspect-log DIR [--batches] [--records]

    Read-only check of a log directory: every segment header, every batch
    checksum, contiguity, the durable-LSN hint, and where the valid log ends
    and why. Never modifies the log (opening it for writing would cut a torn
    tail; this only reports it).

    --batches   list every batch (LSN range, epoch, records, codec, sizes)
    --records   also print each record (length and first 64 bytes, escaped)

    Exit status: 0 if the log is clean or ends in a torn tail that recovery
    would cut; 1 if it holds damage recovery would refuse (corruption below
    the durable point, gaps, bad headers); 2 on bad usage.
";

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
        } else if name != mirrorlog_engine::log::storage::LOCK_FILE
            && name != mirrorlog_engine::replication::history::HISTORY_FILE
        {
            let _ = writeln!(out, "note: ignoring {name} (not a segment; recovery removes *.tmp, *.trunc, *.spare and *.free files)");
        }
    }
    bases.sort_unstable();
    if bases.is_empty() {
        let _ = writeln!(out, "{}: no segments (an empty log)", dir.display());
        return Ok(Verdict::Clean);
    }
    let mut hint = 0u64;
    let mut segments = Vec::new();
    // Each segment's own hint: a sealed segment's says where its batches end.
    let mut seg_hints = Vec::new();
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
        seg_hints.push(h.filter(|&h| h <= base + capacity).unwrap_or(0));
        segments.push((name, base, bytes));
    }

    let mut batches = 0u64;
    let mut records = 0u64;
    let mut raw = 0u64;
    let mut stored = 0u64;
    let mut last_epoch = 0;
    let mut idx = 0;
    let mut lsn = segments[0].1;
    // Walk batches as recovery does: a position holds a batch only if a
    // frame there passes its checksum and names that position.
    let (stop_idx, stop_lsn) = loop {
        let (name, base, bytes) = &segments[idx];
        let space = &bytes[SEGMENT_HEADER_BYTES..];
        let off = (lsn - base) as usize;
        if let Some((h, payload)) =
            frame_at(space, *base, lsn).filter(|(h, _)| h.epoch >= last_epoch)
        {
            let recs = frame::decode_records(&h, payload);
            if opts.batches {
                let _ = writeln!(
                    out,
                    "  batch LSN {}..{} epoch {} records {} codec {} raw {} stored {}{}",
                    h.base_lsn,
                    h.end_lsn(),
                    h.epoch,
                    h.record_count,
                    if h.codec == Codec::Zstd {
                        "zstd"
                    } else {
                        "none"
                    },
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
                    let _ = writeln!(
                        out,
                        "  {name}: batch at LSN {lsn} passes its checksum but: {e}"
                    );
                }
            }
            batches += 1;
            records += u64::from(h.record_count);
            raw += u64::from(h.raw_bytes);
            stored += u64::from(h.stored_bytes);
            last_epoch = h.epoch;
            lsn = h.end_lsn();
            continue;
        }
        // Padding before a batch that did not fit here, or the end.
        let room = (space.len() - off.min(space.len())) as u64;
        match segments.get(idx + 1) {
            Some((_, nbase, nbytes))
                if lsn >= seg_hints[idx]
                    && frame_at(&nbytes[SEGMENT_HEADER_BYTES..], *nbase, *nbase).is_some_and(
                        |(h, _)| h.frame_bytes() as u64 > room && h.epoch >= last_epoch,
                    ) =>
            {
                idx += 1;
                lsn = *nbase;
            }
            _ => break (idx, lsn),
        }
    };
    let _ = writeln!(
        out,
        "{batches} batches, {records} records, LSN {}..{stop_lsn}, last epoch {last_epoch}, raw {raw} B stored {stored} B ({:.2}x)",
        segments[0].1,
        if stored > 0 { raw as f64 / stored as f64 } else { 1.0 }
    );
    // What lies at the end, and whether the current log wrote beyond it.
    let (name, base, bytes) = &segments[stop_idx];
    let space = &bytes[SEGMENT_HEADER_BYTES..];
    let what = describe_end(space, *base, stop_lsn, last_epoch);
    let mut beyond = Vec::new();
    for (k, (_, b, bytes)) in segments.iter().enumerate().skip(stop_idx) {
        let space = &bytes[SEGMENT_HEADER_BYTES..];
        let from = if k == stop_idx { stop_lsn } else { *b };
        let mut l = from;
        while l + FRAME_HEADER_BYTES as u64 <= b + space.len() as u64 {
            let torn_here = l == from && torn_at(space, *b, l);
            if torn_here || (l > from || k > stop_idx) && frame_at(space, *b, l).is_some() {
                beyond.push(l);
            }
            l += FRAME_ALIGN as u64;
        }
    }
    let verdict = if stop_lsn < hint {
        Verdict::Damaged(format!(
            "{name}: the log ends at LSN {stop_lsn} ({what}), below the durable point {hint}{}: recovery refuses this log",
            beyond.first().map_or(String::new(), |l| format!("; a batch of this log follows at LSN {l}"))
        ))
    } else if let Some(first) = beyond.first() {
        Verdict::TornTail {
            lsn: stop_lsn,
            reason: format!(
                "{name}: {what}; {} unacknowledged batch(es) or torn header(s) from LSN {first}",
                beyond.len()
            ),
        }
    } else {
        let _ = writeln!(out, "end of log at LSN {stop_lsn}: {what}");
        Verdict::Clean
    };
    Ok(report(out, verdict))
}

/// The valid frame at `lsn` in a segment's frame space, if any.
fn frame_at(space: &[u8], base: u64, lsn: u64) -> Option<(frame::FrameHeader, &[u8])> {
    let off = usize::try_from(lsn.checked_sub(base)?).ok()?;
    match frame::check_frame(space.get(off..)?) {
        Ok((h, p)) if h.base_lsn == lsn && off + h.frame_bytes() <= space.len() => Some((h, p)),
        _ => None,
    }
}

/// A header naming `lsn` whose batch does not pass its checksum.
fn torn_at(space: &[u8], base: u64, lsn: u64) -> bool {
    let off = (lsn - base) as usize;
    matches!(space.get(off..).map(frame::decode_header), Some(Ok(h)) if h.base_lsn == lsn)
        && frame_at(space, base, lsn).is_none()
}

fn describe_end(space: &[u8], base: u64, lsn: u64, last_epoch: u64) -> String {
    let rest = space.get((lsn - base) as usize..).unwrap_or(&[]);
    frame::describe_non_batch(rest, lsn, last_epoch)
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
