//! Measured cases as the latency suite and the peer comparison report
//! them: one [`Case`] per system, mode, operation, record and load, each
//! run `--repeat` times. The JSON holds every run's numbers (so the spread
//! is visible) and the runs' merged raw histogram (so files can be merged,
//! not averaged); `compare` matches cases of two files by [`Case::key`].

use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde_json::{json, Map, Value};

use crate::histo;
use crate::loadgen::{Load, RunOut};
use crate::report::{fmt_us, thousands};

/// Version of the result file layout (`"format"` in the JSON).
pub const FORMAT: u32 = 1;

/// One measured configuration.
pub struct Case {
    /// "engine" (in-process, local commit), "engine+mirror" (principal in
    /// this process, mirror in a child over loopback), "mirrorlog" (the
    /// RESP database), "postgresql", "redis".
    pub system: String,
    /// The durability mode: a commit level, "safety=full",
    /// "synchronous_commit=on", "SET+WAIT" …
    pub mode: String,
    /// What an acknowledgement promises, in words.
    pub durability: String,
    /// "commit", "SET", "GET", "INSERT".
    pub op: String,
    pub record_bytes: usize,
    /// "compressible" or "incompressible".
    pub data: String,
    /// Operations in flight per client (1: one at a time).
    pub pipeline: usize,
    pub load: Load,
    /// The physical floor of one operation's latency for this mode, from
    /// the same run's floors (e.g. loopback RTT + fdatasync); None if the
    /// mode has none that is meaningful (reads).
    pub floor_ns: Option<u64>,
    pub runs: Vec<RunOut>,
    /// Scenario-specific numbers (send queue, catch-up time, …).
    pub extra: Map<String, Value>,
}

impl Case {
    /// Identifies the case across result files.
    pub fn key(&self) -> String {
        format!(
            "{}/{}/{}/{}B/{}/p{}/{}",
            self.system,
            self.mode,
            self.op,
            self.record_bytes,
            self.data,
            self.pipeline,
            self.load.describe().replace(' ', "-")
        )
    }

    /// Short label for tables.
    pub fn label(&self) -> String {
        // "redis SET+WAIT 1 0", not "redis SET+WAIT 1 0 SET".
        let mut s = if self.mode.starts_with(&self.op) {
            format!("{} {}", self.system, self.mode)
        } else {
            format!("{} {} {}", self.system, self.mode, self.op)
        };
        if self.record_bytes != 100 {
            let _ = write!(s, " {}", crate::report::size_name(self.record_bytes));
        }
        if self.data == "incompressible" {
            s.push_str(" incompr.");
        }
        if self.pipeline > 1 {
            let _ = write!(s, " x{}", self.pipeline);
        }
        s
    }

    pub fn merged(&self) -> Histogram<u64> {
        histo::merge(self.runs.iter().map(|r| &r.hist))
            .unwrap_or_else(|_| crate::local_commit::new_histogram())
    }

    fn per_run(&self, f: impl Fn(&RunOut) -> f64) -> Vec<f64> {
        self.runs.iter().map(f).collect()
    }

    /// Median over the runs.
    pub fn ops_per_s(&self) -> f64 {
        histo::median(&self.per_run(RunOut::ops_per_s))
    }

    /// The most this many clients could do if every operation took the
    /// floor latency: clients x pipeline / floor.
    pub fn physical_limit(&self) -> Option<f64> {
        match (self.load, self.floor_ns) {
            (Load::Closed { clients }, Some(f)) if f > 0 => {
                Some(clients as f64 * self.pipeline as f64 * 1e9 / f as f64)
            }
            _ => None,
        }
    }

    /// The median latency over the floor latency of the mode: what the
    /// system adds to the physics, as a ratio.
    pub fn p50_over_floor(&self) -> Option<f64> {
        self.floor_ns
            .filter(|&f| f > 0)
            .map(|f| self.merged().value_at_quantile(0.5) as f64 / f as f64)
    }

    pub fn backlog(&self) -> u64 {
        self.runs.iter().map(|r| r.backlog).sum()
    }

    pub fn to_json(&self) -> Value {
        let merged = self.merged();
        let rates = self.per_run(RunOut::ops_per_s);
        let p99s = self.per_run(|r| r.hist.value_at_quantile(0.99) as f64 / 1e3);
        let min = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
        let max = |v: &[f64]| v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let (model, clients, rate) = match self.load {
            Load::Closed { clients } => ("closed", clients, None),
            Load::Open { clients, rate } => ("open", clients, Some(rate)),
        };
        let lateness = histo::merge(self.runs.iter().map(|r| &r.lateness))
            .unwrap_or_else(|_| crate::local_commit::new_histogram());
        json!({
            "key": self.key(),
            "system": self.system,
            "mode": self.mode,
            "durability": self.durability,
            "op": self.op,
            "record_bytes": self.record_bytes,
            "data": self.data,
            "pipeline": self.pipeline,
            "load": {"model": model, "clients": clients, "rate_per_s": rate},
            "ops_per_s": self.ops_per_s(),
            "spread": {
                "runs": self.runs.len(),
                "ops_per_s_min": min(&rates),
                "ops_per_s_max": max(&rates),
                "p99_us_min": min(&p99s),
                "p99_us_max": max(&p99s),
            },
            "latency_us": histo::percentiles_json(&merged),
            "histogram": histo::encode(&merged).unwrap_or_default(),
            "floor_latency_us": self.floor_ns.map(|f| f as f64 / 1e3),
            "physical_limit_ops_per_s": self.physical_limit(),
            "fraction_of_physical_limit": self.physical_limit().map(|l| self.ops_per_s() / l),
            "p50_over_floor": self.p50_over_floor(),
            "open_loop": rate.map(|_| json!({
                "backlog": self.backlog(),
                "generator_lateness_us": histo::percentiles_json(&lateness),
            })),
            "runs": self.runs.iter().map(|r| json!({
                "ops": r.ops,
                "seconds": r.seconds,
                "ops_per_s": r.ops_per_s(),
                "p50_us": r.hist.value_at_quantile(0.5) as f64 / 1e3,
                "p99_us": r.hist.value_at_quantile(0.99) as f64 / 1e3,
                "max_us": r.hist.max() as f64 / 1e3,
                "backlog": r.backlog,
            })).collect::<Vec<_>>(),
            "extra": Value::Object(self.extra.clone()),
        })
    }
}

fn spread_pct(c: &Case) -> String {
    if c.runs.len() < 2 {
        return "-".into();
    }
    let rates: Vec<f64> = c.runs.iter().map(RunOut::ops_per_s).collect();
    let lo = rates.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = rates.iter().copied().fold(0.0, f64::max);
    let med = c.ops_per_s().max(1e-9);
    format!("±{:.0}%", 50.0 * (hi - lo) / med)
}

/// The numbers both tables show for a case: ops/s, spread, p50, p90, p99,
/// p99.9, max, p50 over the floor, share of the physical limit.
fn cells(c: &Case) -> [String; 9] {
    let h = c.merged();
    let q = |x: f64| fmt_us(h.value_at_quantile(x));
    [
        thousands(c.ops_per_s()),
        spread_pct(c),
        q(0.5),
        q(0.9),
        q(0.99),
        q(0.999),
        fmt_us(h.max()),
        c.p50_over_floor()
            .map(|r| format!("{r:.1}x"))
            .unwrap_or_else(|| "-".into()),
        c.physical_limit()
            .map(|l| format!("{:.0}%", 100.0 * c.ops_per_s() / l))
            .unwrap_or_else(|| "-".into()),
    ]
}

/// The terminal table: one line per case.
pub fn table(cases: &[Case]) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "  {:<50} {:>14} {:>10} {:>6} {:>8} {:>8} {:>8} {:>8} {:>9} {:>6} {:>7}",
        "case", "load", "ops/s", "spread", "p50", "p90", "p99", "p99.9", "max", "/floor", "limit"
    );
    for c in cases {
        let mut load = c.load.describe();
        if c.backlog() > 0 {
            load.push('!');
        }
        let [ops, spread, p50, p90, p99, p999, max, over, limit] = cells(c);
        let _ = writeln!(
            o,
            "  {:<50} {load:>14} {ops:>10} {spread:>6} {p50:>8} {p90:>8} {p99:>8} {p999:>8} {max:>9} {over:>6} {limit:>7}",
            c.label(),
        );
    }
    o
}

/// The same as a Markdown table.
pub fn markdown(cases: &[Case]) -> String {
    let mut o = String::from(
        "| system | mode | op | load | ops/s | spread | p50 µs | p90 µs | p99 µs | p99.9 µs | max µs | p50/floor | of limit |\n|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for c in cases {
        let pipeline = if c.pipeline > 1 {
            format!(" x{}", c.pipeline)
        } else {
            String::new()
        };
        let _ = writeln!(
            o,
            "| {} | {} | {}{pipeline} | {} | {} |",
            c.system,
            c.mode,
            c.op,
            c.load.describe(),
            cells(c).join(" | "),
        );
    }
    o
}

/// Reads a result file's cases as (key, ops/s, p50 us, p99 us).
pub fn read_cases(v: &Value) -> Result<Vec<(String, f64, f64, f64)>, String> {
    let cases = v
        .get("cases")
        .and_then(Value::as_array)
        .ok_or("no \"cases\" array: not a latency-suite or peers result file")?;
    cases
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let key = c
                .get("key")
                .and_then(Value::as_str)
                .ok_or(format!("case {i} has no key"))?;
            let num = |path: &[&str]| -> Result<f64, String> {
                let mut x = c;
                for p in path {
                    x = x
                        .get(*p)
                        .ok_or(format!("case {key}: no {}", path.join(".")))?;
                }
                x.as_f64()
                    .ok_or(format!("case {key}: {} is not a number", path.join(".")))
            };
            Ok((
                key.to_string(),
                num(&["ops_per_s"])?,
                num(&["latency_us", "p50_us"])?,
                num(&["latency_us", "p99_us"])?,
            ))
        })
        .collect()
}

/// `mirrorlog-bench compare OLD NEW`: ratios NEW/OLD per case present in
/// both, with a regression flag past `threshold` (a fraction, e.g. 0.1).
/// Returns the report and the number of regressions.
pub fn compare(old: &Value, new: &Value, threshold: f64) -> Result<(String, usize), String> {
    let a = read_cases(old).map_err(|e| format!("first file: {e}"))?;
    let b = read_cases(new).map_err(|e| format!("second file: {e}"))?;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "  {:<64} {:>10} {:>10} {:>9} {:>9} {:>9}  verdict",
        "case", "old ops/s", "new ops/s", "ops/s", "p50", "p99"
    );
    let mut regressions = 0;
    let mut matched = 0;
    for (key, ops_b, p50_b, p99_b) in &b {
        let Some((_, ops_a, p50_a, p99_a)) = a.iter().find(|(k, ..)| k == key) else {
            continue;
        };
        matched += 1;
        let r_ops = ops_b / ops_a.max(1e-9);
        let r50 = p50_b / p50_a.max(1e-9);
        let r99 = p99_b / p99_a.max(1e-9);
        let worse = r_ops < 1.0 - threshold || r50 > 1.0 + threshold || r99 > 1.0 + threshold;
        let better = r_ops > 1.0 + threshold || r50 < 1.0 - threshold || r99 < 1.0 - threshold;
        let verdict = match (worse, better) {
            (true, _) => {
                regressions += 1;
                "REGRESSION"
            }
            (false, true) => "better",
            _ => "same",
        };
        let _ = writeln!(
            o,
            "  {:<64} {:>10} {:>10} {:>8.2}x {:>8.2}x {:>8.2}x  {verdict}",
            key,
            thousands(*ops_a),
            thousands(*ops_b),
            r_ops,
            r50,
            r99
        );
    }
    let only_a = a
        .iter()
        .filter(|(k, ..)| !b.iter().any(|x| &x.0 == k))
        .count();
    let only_b = b.len() - matched;
    let _ = writeln!(
        o,
        "\n{matched} cases in both; {only_a} only in the first, {only_b} only in the second. Ratios are new/old: ops/s above 1 is faster, latency below 1 is faster. Threshold {:.0}%; {regressions} regression(s).",
        threshold * 100.0
    );
    if matched == 0 {
        return Err("the two files have no case in common".into());
    }
    Ok((o, regressions))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::local_commit::new_histogram;

    fn run(ops: u64, lat_ns: u64) -> RunOut {
        let mut h = new_histogram();
        h.record_n(lat_ns, ops).unwrap();
        RunOut {
            ops,
            seconds: 1.0,
            hist: h,
            backlog: 0,
            lateness: new_histogram(),
        }
    }

    fn case(runs: Vec<RunOut>) -> Case {
        Case {
            system: "engine".into(),
            mode: "local".into(),
            durability: "fdatasync".into(),
            op: "commit".into(),
            record_bytes: 100,
            data: "compressible".into(),
            pipeline: 1,
            load: Load::Closed { clients: 8 },
            floor_ns: Some(200_000),
            runs,
            extra: Map::new(),
        }
    }

    #[test]
    fn json_has_every_percentile_the_spread_and_a_mergeable_histogram() {
        let c = case(vec![
            run(10_000, 500_000),
            run(12_000, 400_000),
            run(11_000, 450_000),
        ]);
        let j = c.to_json();
        assert_eq!(j["ops_per_s"], 11_000.0);
        assert_eq!(j["spread"]["ops_per_s_min"], 10_000.0);
        assert_eq!(j["spread"]["ops_per_s_max"], 12_000.0);
        assert_eq!(j["spread"]["runs"], 3);
        assert_eq!(j["latency_us"]["count"], 33_000);
        for p in [
            "p50_us",
            "p90_us",
            "p99_us",
            "p99_9_us",
            "p99_99_us",
            "max_us",
        ] {
            assert!(j["latency_us"][p].as_f64().unwrap() > 0.0, "{p}");
        }
        let h = histo::decode(j["histogram"].as_str().unwrap()).unwrap();
        assert_eq!(h.len(), 33_000);
        // 8 clients / 200 us = 40,000/s; 11,000 is 27.5% of that.
        assert_eq!(j["physical_limit_ops_per_s"], 40_000.0);
        let f = j["fraction_of_physical_limit"].as_f64().unwrap();
        assert!((f - 0.275).abs() < 1e-9);
        assert_eq!(
            j["key"],
            "engine/local/commit/100B/compressible/p1/closed-c8"
        );
    }

    #[test]
    fn compare_flags_regressions_and_needs_common_cases() {
        let old = json!({"cases": [case(vec![run(10_000, 500_000)]).to_json()]});
        let slower = json!({"cases": [case(vec![run(8_000, 600_000)]).to_json()]});
        let same = json!({"cases": [case(vec![run(10_100, 500_000)]).to_json()]});
        let (text, n) = compare(&old, &slower, 0.1).unwrap();
        assert_eq!(n, 1, "{text}");
        assert!(text.contains("REGRESSION"));
        assert!(text.contains("0.80x"));
        let (_, n) = compare(&old, &same, 0.1).unwrap();
        assert_eq!(n, 0);
        let other = json!({"cases": [{"key": "x", "ops_per_s": 1.0, "latency_us": {"p50_us": 1.0, "p99_us": 1.0}}]});
        assert!(compare(&old, &other, 0.1).is_err());
        assert!(compare(&json!({}), &old, 0.1).is_err());
        let broken = json!({"cases": [{"key": "x"}]});
        assert!(compare(&broken, &old, 0.1)
            .unwrap_err()
            .contains("ops_per_s"));
    }

    #[test]
    fn tables_have_a_line_per_case() {
        let cases = vec![case(vec![run(1, 1_000)]), case(vec![run(2, 2_000)])];
        assert_eq!(table(&cases).lines().count(), 3);
        let md = markdown(&cases);
        assert_eq!(md.lines().count(), 4);
        // Every row has as many cells as the header.
        let bars: Vec<usize> = md.lines().map(|l| l.matches('|').count()).collect();
        assert!(bars.iter().all(|&n| n == bars[0]), "{md}");
    }
}
