//! Latency histograms as the suite reports and stores them: the full
//! percentile ladder, and the raw histogram as base64 of HdrHistogram's V2
//! deflate encoding (the format HdrHistogram's own tools read), so runs can
//! be merged rather than averaged.

use base64::Engine as _;
#[cfg(test)]
use hdrhistogram::serialization::Deserializer;
use hdrhistogram::serialization::{Serializer, V2DeflateSerializer};
use hdrhistogram::Histogram;
use serde_json::{json, Value};

/// The percentiles every latency in the suite reports, in this order.
pub const QUANTILES: [(f64, &str); 5] = [
    (0.5, "p50_us"),
    (0.9, "p90_us"),
    (0.99, "p99_us"),
    (0.999, "p99_9_us"),
    (0.9999, "p99_99_us"),
];

fn us(ns: u64) -> f64 {
    ns as f64 / 1e3
}

/// `{"count", "mean_us", "p50_us" … "p99_99_us", "max_us"}` of a histogram
/// recorded in nanoseconds.
pub fn percentiles_json(h: &Histogram<u64>) -> Value {
    let mut m = serde_json::Map::new();
    m.insert("count".into(), json!(h.len()));
    m.insert(
        "mean_us".into(),
        json!(if h.is_empty() { 0.0 } else { h.mean() / 1e3 }),
    );
    for (q, name) in QUANTILES {
        m.insert(name.into(), json!(us(h.value_at_quantile(q))));
    }
    m.insert("max_us".into(), json!(us(h.max())));
    Value::Object(m)
}

/// Base64 of the V2 deflate encoding (what HdrHistogram's `HistogramLogReader`
/// and `hdrhistogram::serialization::Deserializer` read).
pub fn encode(h: &Histogram<u64>) -> Result<String, String> {
    let mut bytes = Vec::new();
    V2DeflateSerializer::new()
        .serialize(h, &mut bytes)
        .map_err(|e| format!("encoding a histogram: {e:?}"))?;
    Ok(base64::engine::general_purpose::STANDARD.encode(bytes))
}

/// The inverse of [`encode`] (tests; `mirrorlog-perf` and HdrHistogram's
/// own tools read the files).
#[cfg(test)]
pub fn decode(text: &str) -> Result<Histogram<u64>, String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|e| format!("histogram is not base64: {e}"))?;
    Deserializer::new()
        .deserialize(&mut bytes.as_slice())
        .map_err(|e| format!("histogram is not an HdrHistogram V2 encoding: {e:?}"))
}

/// Adds every histogram into the first; they must share bounds.
pub fn merge<'a>(
    hists: impl IntoIterator<Item = &'a Histogram<u64>>,
) -> Result<Histogram<u64>, String> {
    let mut out = crate::local_commit::new_histogram();
    for h in hists {
        out.add(h)
            .map_err(|e| format!("merging histograms: {e:?}"))?;
    }
    Ok(out)
}

/// Median of a non-empty list (the mean of the middle two for even length).
pub fn median(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::local_commit::new_histogram;

    #[test]
    fn encoding_round_trips_and_merged_runs_equal_one_long_run() {
        let mut a = new_histogram();
        let mut b = new_histogram();
        let mut both = new_histogram();
        for i in 1..=10_000u64 {
            let v = i * 1_000 + (i % 7) * 13;
            if i <= 3_000 {
                a.record(v).unwrap();
            } else {
                b.record(v).unwrap();
            }
            both.record(v).unwrap();
        }
        let a2 = decode(&encode(&a).unwrap()).unwrap();
        assert_eq!(a2, a);
        let merged = merge([&a2, &decode(&encode(&b).unwrap()).unwrap()]).unwrap();
        assert_eq!(merged.len(), 10_000);
        for q in [0.5, 0.9, 0.99, 0.999, 0.9999, 1.0] {
            assert_eq!(
                merged.value_at_quantile(q),
                both.value_at_quantile(q),
                "quantile {q}"
            );
        }
        // Averaging the two runs' p99 would not give the merged p99.
        let avg = (a.value_at_quantile(0.99) + b.value_at_quantile(0.99)) / 2;
        assert_ne!(avg, merged.value_at_quantile(0.99));
    }

    #[test]
    fn percentiles_are_ordered_and_in_microseconds() {
        let mut h = new_histogram();
        for v in 1..=100_000u64 {
            h.record(v * 10).unwrap(); // 10 ns .. 1 ms
        }
        let j = percentiles_json(&h);
        let mut last = 0.0;
        for (_, name) in QUANTILES {
            let x = j[name].as_f64().unwrap();
            assert!(x >= last, "{name} {x} < {last}");
            last = x;
        }
        assert!((j["p50_us"].as_f64().unwrap() - 500.0).abs() < 1.0);
        assert!((j["max_us"].as_f64().unwrap() - 1000.0).abs() < 1.0);
        assert_eq!(j["count"], 100_000);
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(decode("not base64 !!").is_err());
        assert!(decode("aGVsbG8gd29ybGQ=").is_err());
    }

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
    }
}
