//! CI smoke run of the latency suite: a short `--quick` run of the engine
//! parts (in-process local commits, and principal -> mirror over loopback
//! with the mirror in a child process) through the real binary, checking
//! that the JSON is complete and the numbers are sane. Not a performance
//! test: nothing here compares a number with a speed.

use std::path::Path;
use std::process::Command;

use base64::Engine as _;
use hdrhistogram::serialization::Deserializer;
use serde_json::Value;

fn bench() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mirrorlog-bench"))
}

const PERCENTILES: [&str; 6] = [
    "p50_us",
    "p90_us",
    "p99_us",
    "p99_9_us",
    "p99_99_us",
    "max_us",
];

fn check_latency(what: &str, l: &Value) {
    let mut last = 0.0;
    for p in PERCENTILES {
        let x = l[p]
            .as_f64()
            .unwrap_or_else(|| panic!("{what}: no {p} in {l}"));
        assert!(x > 0.0, "{what}: {p} is {x}");
        assert!(x >= last, "{what}: {p} {x} below the previous {last}");
        last = x;
    }
    assert!(l["count"].as_u64().unwrap() > 0, "{what}: no samples");
}

fn check_histogram(what: &str, text: &Value, count: u64) {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(
            text.as_str()
                .unwrap_or_else(|| panic!("{what}: no histogram")),
        )
        .unwrap_or_else(|e| panic!("{what}: histogram not base64: {e}"));
    let h: hdrhistogram::Histogram<u64> = Deserializer::new()
        .deserialize(&mut bytes.as_slice())
        .unwrap_or_else(|e| panic!("{what}: histogram does not decode: {e:?}"));
    assert_eq!(h.len(), count, "{what}: histogram count");
}

fn run_quick(dir: &Path, json: &Path) -> String {
    let out = bench()
        .args([
            "latency",
            "--quick",
            "--parts",
            "engine-local,engine-mirror",
            "--sizes",
            "100",
            "--data",
            "compressible",
            "--connections",
            "1,4",
            "--pipeline",
            "4",
            "--levels",
            "local,remote-flush",
            "--sweep",
            "0.5,1.0",
            "--repeat",
            "2",
            "--seconds",
            "0.3",
            "--warmup",
            "0.1",
            "--segment-mib",
            "8",
            "--dir",
        ])
        .arg(dir)
        .arg("--json")
        .arg(json)
        .output()
        .expect("run mirrorlog-bench");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "mirrorlog-bench failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn quick_engine_run_writes_complete_sane_json_and_compares_with_itself() {
    let tmp = std::env::temp_dir().join(format!("mirrorlog-latency-smoke-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let json_path = tmp.join("run.json");
    let table = run_quick(&tmp, &json_path);
    assert!(
        table.contains("engine+mirror remote-flush commit"),
        "{table}"
    );
    assert!(table.contains("targets:"), "{table}");

    let v: Value = serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
    assert_eq!(v["suite"], "latency");
    assert_eq!(v["format"], 1);
    for k in ["cores", "kernel", "file_system", "io_uring"] {
        assert!(!v["machine"][k].is_null(), "machine.{k} missing");
    }
    assert_eq!(v["parameters"]["repeat"], 2);
    for f in ["fdatasync_100B", "loopback_rtt"] {
        check_latency(f, &v["floors"][f]);
        check_histogram(
            f,
            &v["floors"][f]["histogram"],
            v["floors"][f]["count"].as_u64().unwrap(),
        );
    }

    let cases = v["cases"].as_array().unwrap();
    // engine-local: 2 client counts + pipelined; engine-mirror: 2 levels x 3.
    assert_eq!(cases.len(), 3 + 2 * 3, "{cases:#?}");
    let mut keys = std::collections::HashSet::new();
    for c in cases {
        let key = c["key"].as_str().unwrap();
        assert!(keys.insert(key.to_string()), "duplicate key {key}");
        assert!(
            c["ops_per_s"].as_f64().unwrap() > 0.0,
            "{key}: no throughput"
        );
        check_latency(key, &c["latency_us"]);
        check_histogram(
            key,
            &c["histogram"],
            c["latency_us"]["count"].as_u64().unwrap(),
        );
        let runs = c["runs"].as_array().unwrap();
        assert_eq!(runs.len(), 2, "{key}: --repeat 2");
        let (lo, hi) = (
            c["spread"]["ops_per_s_min"].as_f64().unwrap(),
            c["spread"]["ops_per_s_max"].as_f64().unwrap(),
        );
        let med = c["ops_per_s"].as_f64().unwrap();
        assert!(
            lo <= med && med <= hi,
            "{key}: median {med} outside [{lo}, {hi}]"
        );
        let f = c["fraction_of_physical_limit"].as_f64().unwrap();
        assert!(f > 0.0 && f.is_finite(), "{key}: fraction {f}");
        assert!(!c["durability"].as_str().unwrap().is_empty());
    }
    // Every commit level asked for, on both engine parts.
    for k in [
        "engine/local/commit/100B/compressible/p1/closed-c1",
        "engine/local/commit/100B/compressible/p4/closed-c8",
        "engine+mirror/remote-flush/commit/100B/compressible/p1/closed-c4",
        "engine+mirror/local/commit/100B/compressible/p1/closed-c1",
    ] {
        assert!(keys.contains(k), "no case {k}: {keys:?}");
    }

    let sweeps = v["sweeps"].as_array().unwrap();
    assert_eq!(sweeps.len(), 1, "one sweep: engine+mirror remote-flush");
    let points = sweeps[0]["points"].as_array().unwrap();
    assert_eq!(points.len(), 2);
    for p in points {
        assert_eq!(p["load"]["model"], "open");
        assert!(p["load"]["rate_per_s"].as_f64().unwrap() > 0.0);
        assert!(p["ops_per_s"].as_f64().unwrap() > 0.0);
        check_latency("sweep point", &p["latency_us"]);
        assert!(p["holds_target"].is_boolean());
    }
    let targets = v["targets"].as_array().unwrap();
    assert_eq!(targets.len(), 1, "engine sync-vs-async target: {targets:?}");

    // compare: a file against itself has every case in common and no
    // regression; a missing file is a clear error.
    let out = bench()
        .arg("compare")
        .arg(&json_path)
        .arg(&json_path)
        .arg("--fail-on-regression")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(&format!("{} cases in both", cases.len())),
        "{text}"
    );
    assert!(text.contains("0 regression(s)"), "{text}");
    let out = bench()
        .arg("compare")
        .arg(&json_path)
        .arg(tmp.join("missing.json"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.json"));

    std::fs::remove_dir_all(&tmp).unwrap();
}

#[test]
fn bad_options_are_refused_with_the_reason() {
    for (args, needle) in [
        (&["latency", "--parts", "disk"][..], "unknown part"),
        (&["latency", "--sweep", "0"], "--sweep"),
        (&["latency", "--p99-target-ms", "-1"], "--p99-target-ms"),
        (&["latency", "--repeat", "0"], "--repeat"),
        (&["compare", "only-one.json"], "two result files"),
    ] {
        let out = bench().args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}
