//! The report renders from a fixture result file: the HTML parses (it is
//! written as well-formed XHTML, so a strict XML parser can check it), and
//! every plot is there with its axis labels.

use mirrorlog_perf::measured::Measured;
use mirrorlog_perf::{plan, report, workload};

const FIXTURE: &str = include_str!("../data/validation/rtt2.json");

#[test]
fn a_report_renders_from_a_fixture_result_file() {
    let mut m = Measured::empty();
    m.add("fixture rtt2.json", FIXTURE).unwrap();
    m.add("failover", mirrorlog_perf::measured::BASELINE_FAILOVER)
        .unwrap();
    let w = workload::parse(include_str!("../examples/wan-20mb.toml")).unwrap();
    let p = plan::make(
        &w,
        &m,
        &plan::Options {
            compress_sample_bytes: 200_000,
        },
    )
    .unwrap();
    let dir = std::env::temp_dir().join(format!("mirrorlog-perf-render-{}", std::process::id()));
    let index = report::write(&p, &dir).unwrap();
    let html = std::fs::read_to_string(&index).unwrap();
    let xml = html.replace("<!DOCTYPE html>", "");
    let doc = roxmltree::Document::parse(&xml).expect("index.html is well-formed");
    let svgs: Vec<_> = doc
        .descendants()
        .filter(|n| n.tag_name().name() == "svg")
        .collect();
    assert_eq!(svgs.len(), 6, "six plots");
    for svg in &svgs {
        // Something is drawn: lines or shapes, and text (titles, labels).
        assert!(svg
            .descendants()
            .any(|n| matches!(n.tag_name().name(), "polyline" | "rect" | "circle" | "path")));
        assert!(svg.descendants().any(|n| n.tag_name().name() == "text"));
    }
    let text: String = doc
        .descendants()
        .filter_map(|n| n.text())
        .collect::<Vec<_>>()
        .join(" ");
    for label in [
        "commit latency (ms, log scale)",
        "commit rate (commits/s, open loop)",
        "send queue (GB, log scale)",
        "time to catch up (s, log scale)",
        "time (minutes)",
        "bandwidth (MB/s, 1 MB = 10^6 B)",
        "remote-flush p99",
        "with zstd",
        "Validation: predicted (from the baseline) vs measured",
    ] {
        assert!(text.contains(label), "missing {label:?}");
    }
    // The workload's 20 MB/s at peak with 1 Gbit/s: the link line is drawn.
    assert!(text.contains("link 125 MB/s"));
    let md = std::fs::read_to_string(dir.join("report.md")).unwrap();
    assert!(md.contains("| question | answer |"));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap();
    assert_eq!(json["workload"]["rtt_ms"], 5.0);
    assert!(json["latency"].as_array().unwrap().len() == 4);
    std::fs::remove_dir_all(&dir).unwrap();
}
