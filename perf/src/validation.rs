//! The model against reality: for configurations run on this machine after
//! the baseline (some through the bench's delay proxy, `--added-rtt-ms`),
//! the model's prediction from the baseline alone next to what was
//! measured. The measured files are in perf/data/validation/ (commands in
//! docs/capacity.md).

use serde::Serialize;

use crate::measured::{Measured, Pct};
use crate::model;
use crate::workload::Level;

/// The validation runs: (file name, contents).
pub const RUNS: &[(&str, &str)] = &[
    (
        "validation/rtt0.json",
        include_str!("../data/validation/rtt0.json"),
    ),
    (
        "validation/rtt2.json",
        include_str!("../data/validation/rtt2.json"),
    ),
    (
        "validation/rtt5.json",
        include_str!("../data/validation/rtt5.json"),
    ),
];

#[derive(Clone, Debug, Serialize)]
pub struct ValidationRow {
    pub run: String,
    pub level: Level,
    pub clients: u32,
    pub added_rtt_ms: f64,
    pub predicted_ops_per_s: f64,
    pub measured_ops_per_s: f64,
    pub predicted: Pct,
    pub measured: Pct,
}

impl ValidationRow {
    pub fn error_pct(predicted: f64, measured: f64) -> f64 {
        100.0 * (predicted - measured) / measured
    }
}

/// Predictions from `baseline` for every engine+mirror closed-loop case of
/// the validation runs. A run that does not parse is skipped (and so
/// missing from the table), never guessed.
pub fn rows(baseline: &Measured) -> Vec<ValidationRow> {
    let mut out = Vec::new();
    for (name, text) in RUNS {
        let mut run = Measured::empty();
        if run.add(name, text).is_err() {
            continue;
        }
        // The delay the proxy added on top of the run's own loopback.
        let added_us = run.added_rtt_ms * 1e3;
        for (level, cases) in &run.levels {
            for c in cases {
                let Some(p) = model::closed_loop(baseline, *level, c.clients, added_us) else {
                    continue;
                };
                out.push(ValidationRow {
                    run: name.to_string(),
                    level: *level,
                    clients: c.clients,
                    added_rtt_ms: run.added_rtt_ms,
                    predicted_ops_per_s: p.ops_per_s,
                    measured_ops_per_s: c.ops_per_s,
                    predicted: p.latency,
                    measured: c.latency,
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_is_relative_to_the_measurement() {
        assert_eq!(ValidationRow::error_pct(110.0, 100.0), 10.0);
        assert_eq!(ValidationRow::error_pct(90.0, 100.0), -10.0);
    }

    #[test]
    fn every_validation_run_parses_and_gives_rows() {
        for (name, text) in RUNS {
            let mut m = Measured::empty();
            m.add(name, text).unwrap();
            assert!(!m.levels.is_empty(), "{name}");
        }
        let rows = rows(&Measured::builtin());
        assert!(rows.len() >= 3);
        assert!(rows.iter().any(|r| r.added_rtt_ms > 0.0));
    }
}
