//! The workload description a capacity plan is made for (TOML).
//!
//! Every key is documented in `mirrorlog-perf --help` (the `WORKLOAD_KEYS`
//! text below) and in `perf/examples/`. Unknown keys are errors: a typo such
//! as `rtt_msec` must not silently fall back to a default.

use serde::Deserialize;

/// The TOML keys, for `--help`.
pub const WORKLOAD_KEYS: &str = "\
WORKLOAD FILE (TOML; every key optional unless marked required):
    name = \"orders\"                  shown in the report's title
    [records]
    sizes = [[100, 0.7], [4096, 0.3]]  required: record sizes in bytes with
                                       their share of records (shares > 0;
                                       normalised to sum 1)
    content = \"compressible\"         \"compressible\" (text-like) or
                                       \"incompressible\" (random bytes): what
                                       the records look like to zstd
    [rate]
    average_mb_per_s = 5.0             required: record payload written, MB/s
                                       (1 MB = 10^6 bytes), averaged over a day
    peak_mb_per_s = 20.0               required: the same at peak (>= average)
    [mirroring]
    commit_level = \"remote-flush\"    local | remote-write | remote-flush
                                       (= safety full) | remote-apply
    rtt_ms = 5.0                       round trip to the mirror (default 0:
                                       same rack, loopback as measured)
    clients = 64                       commits in flight at once at peak
                                       (default 32)
    p99_target_ms = 10.0               commit latency target (default 2 + rtt)
    [outages]
    minutes = [1, 5, 30, 120]          mirror outage lengths to plan for
                                       (default [1, 5, 30, 120])
    [retention]
    max_bytes = 10_000_000_000         the principal's --retention-max-bytes
                                       (default: none, keep all the mirror needs)
    checkpoint_secs = 60               --checkpoint-secs (default 60)
    segment_bytes = 67108864           --segment-bytes (default 64 MiB)
    dataset_bytes = 2_000_000_000      size of the database (a snapshot),
                                       for the reseed time (default 1 GB)
    [hardware]
    link_mb_per_s = 125.0              network bandwidth to the mirror, MB/s
                                       (default: unknown, not a limit)
    disk_mb_per_s = 400.0              the mirror's sequential write
                                       bandwidth, MB/s (default: as measured
                                       here)
";

/// Commit levels, in the words of docs/design.md.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub enum Level {
    #[serde(rename = "local")]
    Local,
    #[serde(rename = "remote-write")]
    RemoteWrite,
    #[serde(rename = "remote-flush")]
    RemoteFlush,
    #[serde(rename = "remote-apply")]
    RemoteApply,
}

impl Level {
    pub const ALL: [Level; 4] = [
        Level::Local,
        Level::RemoteWrite,
        Level::RemoteFlush,
        Level::RemoteApply,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Level::Local => "local",
            Level::RemoteWrite => "remote-write",
            Level::RemoteFlush => "remote-flush",
            Level::RemoteApply => "remote-apply",
        }
    }

    pub fn parse(s: &str) -> Option<Level> {
        match s {
            "local" | "safety=off" => Some(Level::Local),
            "remote-write" => Some(Level::RemoteWrite),
            "remote-flush" | "safety=full" => Some(Level::RemoteFlush),
            "remote-apply" => Some(Level::RemoteApply),
            _ => None,
        }
    }

    /// Whether a commit at this level waits for the mirror (and so for the
    /// round trip to it).
    pub fn waits_for_mirror(self) -> bool {
        self != Level::Local
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Content {
    Compressible,
    Incompressible,
}

/// A validated workload.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Workload {
    pub name: String,
    /// (record bytes, share of records); shares sum to 1.
    pub sizes: Vec<(u64, f64)>,
    pub content: Content,
    pub average_mb_per_s: f64,
    pub peak_mb_per_s: f64,
    pub level: Level,
    pub rtt_ms: f64,
    pub clients: u32,
    pub p99_target_ms: f64,
    pub outage_minutes: Vec<f64>,
    pub retention_max_bytes: Option<u64>,
    pub checkpoint_secs: f64,
    pub segment_bytes: u64,
    pub dataset_bytes: u64,
    pub link_mb_per_s: Option<f64>,
    pub disk_mb_per_s: Option<f64>,
}

impl Workload {
    /// Mean record size in bytes (payload only).
    pub fn mean_record_bytes(&self) -> f64 {
        self.sizes.iter().map(|&(b, w)| b as f64 * w).sum()
    }
}

/// The built-in default workload (used when no `--workload` is given).
pub const DEFAULT_WORKLOAD: &str = include_str!("../examples/default.toml");

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    name: Option<String>,
    records: Option<Records>,
    rate: Option<Rate>,
    mirroring: Option<Mirroring>,
    outages: Option<Outages>,
    retention: Option<Retention>,
    hardware: Option<Hardware>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Records {
    sizes: Option<Vec<(f64, f64)>>,
    content: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Rate {
    average_mb_per_s: Option<f64>,
    peak_mb_per_s: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Mirroring {
    commit_level: Option<String>,
    rtt_ms: Option<f64>,
    clients: Option<i64>,
    p99_target_ms: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Outages {
    minutes: Option<Vec<f64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Retention {
    max_bytes: Option<i64>,
    checkpoint_secs: Option<f64>,
    segment_bytes: Option<i64>,
    dataset_bytes: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Hardware {
    link_mb_per_s: Option<f64>,
    disk_mb_per_s: Option<f64>,
}

fn positive(key: &str, v: f64) -> Result<f64, String> {
    if v.is_finite() && v > 0.0 {
        Ok(v)
    } else {
        Err(format!("{key} = {v}: must be a number > 0"))
    }
}

fn non_negative(key: &str, v: f64) -> Result<f64, String> {
    if v.is_finite() && v >= 0.0 {
        Ok(v)
    } else {
        Err(format!("{key} = {v}: must be a number >= 0"))
    }
}

fn positive_int(key: &str, v: i64) -> Result<u64, String> {
    if v > 0 {
        Ok(v as u64)
    } else {
        Err(format!("{key} = {v}: must be an integer > 0"))
    }
}

/// Parses and checks a workload file's text. Errors name the key (with
/// its table, e.g. `rate.peak_mb_per_s`) and say what was expected.
pub fn parse(text: &str) -> Result<Workload, String> {
    let f: File = toml::from_str(text).map_err(|e| {
        // toml's message already names the key and shows the line.
        e.to_string().trim_end().to_string()
    })?;
    let records = f
        .records
        .ok_or("missing table [records] (required: records.sizes)")?;
    let raw_sizes = records
        .sizes
        .ok_or("missing key records.sizes (e.g. sizes = [[100, 0.7], [4096, 0.3]])")?;
    if raw_sizes.is_empty() {
        return Err("records.sizes is empty: give at least one [bytes, share] pair".into());
    }
    let mut sizes = Vec::new();
    for (i, &(bytes, share)) in raw_sizes.iter().enumerate() {
        if !(bytes.is_finite() && bytes >= 1.0 && bytes.fract() == 0.0 && bytes <= 64e6) {
            return Err(format!(
                "records.sizes[{i}]: record size {bytes} must be a whole number of bytes from 1 to 64000000"
            ));
        }
        if !(share.is_finite() && share > 0.0) {
            return Err(format!(
                "records.sizes[{i}]: share {share} must be a number > 0"
            ));
        }
        sizes.push((bytes as u64, share));
    }
    let total: f64 = sizes.iter().map(|s| s.1).sum();
    for s in &mut sizes {
        s.1 /= total;
    }
    let content = match records.content.as_deref() {
        None | Some("compressible") => Content::Compressible,
        Some("incompressible") => Content::Incompressible,
        Some(other) => {
            return Err(format!(
                "records.content = {other:?}: expected \"compressible\" or \"incompressible\""
            ))
        }
    };
    let rate = f
        .rate
        .ok_or("missing table [rate] (required: rate.average_mb_per_s, rate.peak_mb_per_s)")?;
    let average = positive(
        "rate.average_mb_per_s",
        rate.average_mb_per_s
            .ok_or("missing key rate.average_mb_per_s (MB/s of record payload)")?,
    )?;
    let peak = positive(
        "rate.peak_mb_per_s",
        rate.peak_mb_per_s
            .ok_or("missing key rate.peak_mb_per_s (MB/s of record payload at peak)")?,
    )?;
    if peak < average {
        return Err(format!(
            "rate.peak_mb_per_s = {peak} is below rate.average_mb_per_s = {average}: the peak must be at least the average"
        ));
    }
    let m = f.mirroring.unwrap_or(Mirroring {
        commit_level: None,
        rtt_ms: None,
        clients: None,
        p99_target_ms: None,
    });
    let level = match m.commit_level.as_deref() {
        None => Level::RemoteFlush,
        Some(s) => Level::parse(s).ok_or_else(|| {
            format!(
                "mirroring.commit_level = {s:?}: expected \"local\", \"remote-write\", \"remote-flush\" or \"remote-apply\""
            )
        })?,
    };
    let rtt_ms = non_negative("mirroring.rtt_ms", m.rtt_ms.unwrap_or(0.0))?;
    if rtt_ms > 10_000.0 {
        return Err(format!(
            "mirroring.rtt_ms = {rtt_ms}: a round trip over 10 s is not a mirror link"
        ));
    }
    let clients = positive_int("mirroring.clients", m.clients.unwrap_or(32))?;
    if clients > 1_000_000 {
        return Err(format!("mirroring.clients = {clients}: at most 1000000"));
    }
    let p99_target_ms = positive(
        "mirroring.p99_target_ms",
        m.p99_target_ms.unwrap_or(2.0 + rtt_ms),
    )?;
    let outage_minutes = f
        .outages
        .and_then(|o| o.minutes)
        .unwrap_or_else(|| vec![1.0, 5.0, 30.0, 120.0]);
    if outage_minutes.is_empty() {
        return Err("outages.minutes is empty: give at least one outage length".into());
    }
    for (i, &m) in outage_minutes.iter().enumerate() {
        positive(&format!("outages.minutes[{i}]"), m)?;
    }
    let r = f.retention.unwrap_or(Retention {
        max_bytes: None,
        checkpoint_secs: None,
        segment_bytes: None,
        dataset_bytes: None,
    });
    let retention_max_bytes = match r.max_bytes {
        None => None,
        Some(v) => Some(positive_int("retention.max_bytes", v)?),
    };
    let checkpoint_secs = positive(
        "retention.checkpoint_secs",
        r.checkpoint_secs.unwrap_or(60.0),
    )?;
    let segment_bytes = positive_int(
        "retention.segment_bytes",
        r.segment_bytes.unwrap_or(64 << 20),
    )?;
    if !segment_bytes.is_multiple_of(4096) || !(8192..=4 << 30).contains(&segment_bytes) {
        return Err(format!(
            "retention.segment_bytes = {segment_bytes}: must be a multiple of 4096 from 8192 to 4294967296 (as mirrorlog serve --segment-bytes)"
        ));
    }
    let dataset_bytes = positive_int(
        "retention.dataset_bytes",
        r.dataset_bytes.unwrap_or(1_000_000_000),
    )?;
    let h = f.hardware.unwrap_or(Hardware {
        link_mb_per_s: None,
        disk_mb_per_s: None,
    });
    let link_mb_per_s = match h.link_mb_per_s {
        None => None,
        Some(v) => Some(positive("hardware.link_mb_per_s", v)?),
    };
    let disk_mb_per_s = match h.disk_mb_per_s {
        None => None,
        Some(v) => Some(positive("hardware.disk_mb_per_s", v)?),
    };
    Ok(Workload {
        name: f.name.unwrap_or_else(|| "workload".into()),
        sizes,
        content,
        average_mb_per_s: average,
        peak_mb_per_s: peak,
        level,
        rtt_ms,
        clients: clients as u32,
        p99_target_ms,
        outage_minutes,
        retention_max_bytes,
        checkpoint_secs,
        segment_bytes,
        dataset_bytes,
        link_mb_per_s,
        disk_mb_per_s,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &str = "[records]\nsizes = [[100, 3], [4096, 1]]\n[rate]\naverage_mb_per_s = 5\npeak_mb_per_s = 20\n";

    fn err(text: &str) -> String {
        parse(text).expect_err("should be refused")
    }

    #[test]
    fn a_minimal_file_gets_the_documented_defaults() {
        let w = parse(OK).unwrap();
        assert_eq!(w.sizes, vec![(100, 0.75), (4096, 0.25)]);
        assert_eq!(w.level, Level::RemoteFlush);
        assert_eq!(w.rtt_ms, 0.0);
        assert_eq!(w.clients, 32);
        assert_eq!(w.p99_target_ms, 2.0);
        assert_eq!(w.segment_bytes, 64 << 20);
        assert_eq!(w.retention_max_bytes, None);
        assert!((w.mean_record_bytes() - (75.0 + 1024.0)).abs() < 1e-9);
    }

    #[test]
    fn the_built_in_default_workload_parses() {
        parse(DEFAULT_WORKLOAD).unwrap();
    }

    #[test]
    fn the_example_workload_parses() {
        parse(include_str!("../examples/wan-20mb.toml")).unwrap();
    }

    #[test]
    fn an_unknown_key_is_named() {
        let e = err(&format!("{OK}[mirroring]\nrtt_msec = 5\n"));
        assert!(e.contains("rtt_msec"), "{e}");
        assert!(e.contains("unknown field"), "{e}");
    }

    #[test]
    fn a_wrong_type_names_the_key() {
        let e = err("[records]\nsizes = [[100, 1]]\n[rate]\naverage_mb_per_s = \"fast\"\npeak_mb_per_s = 20\n");
        assert!(e.contains("average_mb_per_s"), "{e}");
    }

    #[test]
    fn missing_required_keys_are_named() {
        assert!(err("[rate]\naverage_mb_per_s = 1\npeak_mb_per_s = 2\n").contains("[records]"));
        assert!(err("[records]\nsizes = [[100, 1]]\n").contains("[rate]"));
        let e = err("[records]\nsizes = [[100, 1]]\n[rate]\naverage_mb_per_s = 1\n");
        assert!(e.contains("rate.peak_mb_per_s"), "{e}");
    }

    #[test]
    fn a_peak_below_the_average_is_refused() {
        let e = err(
            "[records]\nsizes = [[100, 1]]\n[rate]\naverage_mb_per_s = 20\npeak_mb_per_s = 5\n",
        );
        assert!(e.contains("rate.peak_mb_per_s = 5"), "{e}");
        assert!(e.contains("rate.average_mb_per_s = 20"), "{e}");
    }

    #[test]
    fn bad_values_name_their_key_and_index() {
        let e = err("[records]\nsizes = [[100, 1], [0, 1]]\n[rate]\naverage_mb_per_s = 1\npeak_mb_per_s = 2\n");
        assert!(e.starts_with("records.sizes[1]"), "{e}");
        let e = err(
            "[records]\nsizes = [[100, -1]]\n[rate]\naverage_mb_per_s = 1\npeak_mb_per_s = 2\n",
        );
        assert!(e.starts_with("records.sizes[0]: share -1"), "{e}");
        let e = err(&format!("{OK}[mirroring]\ncommit_level = \"full\"\n"));
        assert!(e.starts_with("mirroring.commit_level = \"full\""), "{e}");
        let e = err(&format!("{OK}[mirroring]\nrtt_ms = -3\n"));
        assert!(e.starts_with("mirroring.rtt_ms = -3"), "{e}");
        let e = err(&format!("{OK}[outages]\nminutes = [5, 0]\n"));
        assert!(e.starts_with("outages.minutes[1] = 0"), "{e}");
        let e = err(&format!("{OK}[retention]\nsegment_bytes = 5000\n"));
        assert!(e.starts_with("retention.segment_bytes = 5000"), "{e}");
        let e = err(&format!("{OK}[records.x]\n"));
        assert!(e.contains("x"), "{e}");
    }

    #[test]
    fn safety_words_are_commit_levels() {
        let w = parse(&format!("{OK}[mirroring]\ncommit_level = \"safety=off\"\n")).unwrap();
        assert_eq!(w.level, Level::Local);
    }
}
