//! The measured quantities the model uses, read from benchmark result files
//! (`mirrorlog-bench latency --json`, `mirrorlog-bench failover --json`).
//!
//! Only numbers that a benchmark measured end up here; where a quantity is
//! missing the plan says "not measured" instead of inventing one.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use crate::workload::Level;

/// Built-in latency run (a copy of a `mirrorlog-bench latency` result).
pub const BASELINE_LATENCY: &str = include_str!("../data/baseline-latency.json");
/// Built-in catch-up and reseed rates: `bench/results/failover-2026-11-27b.json`,
/// copied whole.
pub const BASELINE_FAILOVER: &str = include_str!("../data/failover-2026-11-27b.json");

/// Latency percentiles in microseconds.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq)]
pub struct Pct {
    pub mean_us: f64,
    pub p50_us: f64,
    pub p99_us: f64,
}

impl Pct {
    fn from(v: &Value) -> Option<Pct> {
        Some(Pct {
            mean_us: v.get("mean_us")?.as_f64()?,
            p50_us: v.get("p50_us")?.as_f64()?,
            p99_us: v.get("p99_us")?.as_f64()?,
        })
    }
}

/// One closed-loop case of the engine+mirror part, one commit at a time per
/// client (no pipelining).
#[derive(Clone, Debug, Serialize)]
pub struct ClosedCase {
    pub key: String,
    pub clients: u32,
    pub ops_per_s: f64,
    pub latency: Pct,
}

/// One open-loop point of a sweep.
#[derive(Clone, Debug, Serialize)]
pub struct SweepPoint {
    pub offered_per_s: f64,
    pub ops_per_s: f64,
    pub latency: Pct,
}

#[derive(Clone, Debug, Serialize)]
pub struct Sweep {
    pub base: String,
    pub level: Level,
    pub points: Vec<SweepPoint>,
}

#[derive(Clone, Debug, Serialize)]
pub struct CatchUp {
    /// Mirror catch-up after a restart, MB/s of log.
    pub mb_per_s: f64,
    pub streaming_mb_per_s: f64,
    /// Append + fdatasync floor of the same run, MB/s.
    pub disk_floor_mb_per_s: f64,
    pub tcp_floor_mb_per_s: f64,
    pub source: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Reseed {
    pub send_mb_per_s: f64,
    pub snapshot_bytes: f64,
    pub restore_seconds: f64,
    pub synchronized_seconds: f64,
    pub source: String,
}

/// Everything measured that the model may use.
#[derive(Clone, Debug, Serialize)]
pub struct Measured {
    pub sources: Vec<String>,
    pub machine: String,
    /// pwrite + fdatasync of 100 B, same run as the cases.
    pub fdatasync: Option<Pct>,
    pub loopback_rtt: Option<Pct>,
    /// RTT added by a delay proxy in the run the cases come from (ms).
    pub added_rtt_ms: f64,
    /// Engine + mirror closed-loop cases per level, sorted by clients.
    pub levels: BTreeMap<Level, Vec<ClosedCase>>,
    /// Engine alone, local commits, 100 B records (no mirror process on the
    /// machine): only for reference.
    pub sweeps: Vec<Sweep>,
    pub catch_up: Option<CatchUp>,
    pub reseed: Option<Reseed>,
}

impl Measured {
    pub fn empty() -> Measured {
        Measured {
            sources: Vec::new(),
            machine: String::new(),
            fdatasync: None,
            loopback_rtt: None,
            added_rtt_ms: 0.0,
            levels: BTreeMap::new(),
            sweeps: Vec::new(),
            catch_up: None,
            reseed: None,
        }
    }

    /// The built-in results: the latency baseline and the failover run.
    pub fn builtin() -> Measured {
        let mut m = Measured::empty();
        m.add("built-in perf/data/baseline-latency.json", BASELINE_LATENCY)
            .expect("the built-in latency run parses");
        m.add(
            "built-in perf/data/failover-2026-11-27b.json",
            BASELINE_FAILOVER,
        )
        .expect("the built-in failover run parses");
        m
    }

    /// Adds one result file's measurements. Later files replace earlier
    /// values of the same kind.
    pub fn add(&mut self, name: &str, text: &str) -> Result<(), String> {
        let v: Value = serde_json::from_str(text).map_err(|e| format!("{name}: not JSON: {e}"))?;
        if v.get("suite").and_then(Value::as_str) == Some("latency") {
            self.add_latency(name, &v)?;
        } else if v.get("catch_up").is_some() || v.get("reseed").is_some() {
            self.add_failover(name, &v)?;
        } else {
            return Err(format!(
                "{name}: neither a latency result (`\"suite\": \"latency\"`) nor a failover result (`catch_up`): mirrorlog-perf reads `mirrorlog-bench latency --json` and `mirrorlog-bench failover --json` files"
            ));
        }
        self.sources.push(name.to_string());
        Ok(())
    }

    fn add_latency(&mut self, name: &str, v: &Value) -> Result<(), String> {
        if v.get("format").and_then(Value::as_u64) != Some(1) {
            return Err(format!("{name}: latency result format is not 1"));
        }
        if let Some(m) = v.get("machine") {
            self.machine = format!(
                "{} cores, {}, {} on {}, kernel {}",
                m.get("cores").and_then(Value::as_u64).unwrap_or(0),
                m.get("cpu").and_then(Value::as_str).unwrap_or("?"),
                m.get("file_system").and_then(Value::as_str).unwrap_or("?"),
                m.get("device").and_then(Value::as_str).unwrap_or("?"),
                m.get("kernel").and_then(Value::as_str).unwrap_or("?"),
            );
        }
        let floors = v.get("floors");
        self.fdatasync = floors
            .and_then(|f| f.get("fdatasync_100B"))
            .and_then(Pct::from);
        self.loopback_rtt = floors
            .and_then(|f| f.get("loopback_rtt"))
            .and_then(Pct::from);
        self.added_rtt_ms = v
            .get("parameters")
            .and_then(|p| p.get("added_rtt_ms"))
            .and_then(Value::as_f64)
            .unwrap_or(0.0);
        let cases = v
            .get("cases")
            .and_then(Value::as_array)
            .ok_or_else(|| format!("{name}: no `cases` array"))?;
        let mut levels: BTreeMap<Level, Vec<ClosedCase>> = BTreeMap::new();
        for c in cases {
            let s = |k: &str| c.get(k).and_then(Value::as_str).unwrap_or("");
            let load = c.get("load");
            let closed =
                load.and_then(|l| l.get("model")).and_then(Value::as_str) == Some("closed");
            if s("system") != "engine+mirror"
                || s("op") != "commit"
                || c.get("pipeline").and_then(Value::as_u64) != Some(1)
                || !closed
            {
                continue;
            }
            let Some(level) = Level::parse(s("mode")) else {
                continue;
            };
            let (Some(clients), Some(ops), Some(lat)) = (
                load.and_then(|l| l.get("clients")).and_then(Value::as_u64),
                c.get("ops_per_s").and_then(Value::as_f64),
                c.get("latency_us").and_then(Pct::from),
            ) else {
                return Err(format!(
                    "{name}: case {:?} lacks clients, ops_per_s or latency_us",
                    s("key")
                ));
            };
            levels.entry(level).or_default().push(ClosedCase {
                key: s("key").to_string(),
                clients: clients as u32,
                ops_per_s: ops,
                latency: lat,
            });
        }
        for cs in levels.values_mut() {
            cs.sort_by_key(|c| c.clients);
        }
        if !levels.is_empty() {
            self.levels = levels;
        }
        let mut sweeps = Vec::new();
        for s in v
            .get("sweeps")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let base = s
                .get("base")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            // Only the engine's own sweeps: the RESP server's include its
            // protocol and store, which the model does not describe.
            if !base.starts_with("engine+mirror/") {
                continue;
            }
            let Some(level) = base.split('/').nth(1).and_then(Level::parse) else {
                continue;
            };
            let mut points = Vec::new();
            for p in s
                .get("points")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let offered = p
                    .get("load")
                    .and_then(|l| l.get("rate_per_s"))
                    .and_then(Value::as_f64);
                let ops = p.get("ops_per_s").and_then(Value::as_f64);
                let lat = p.get("latency_us").and_then(Pct::from);
                if let (Some(offered), Some(ops), Some(latency)) = (offered, ops, lat) {
                    points.push(SweepPoint {
                        offered_per_s: offered,
                        ops_per_s: ops,
                        latency,
                    });
                }
            }
            if !points.is_empty() {
                sweeps.push(Sweep {
                    base,
                    level,
                    points,
                });
            }
        }
        if !sweeps.is_empty() {
            self.sweeps = sweeps;
        }
        Ok(())
    }

    fn add_failover(&mut self, name: &str, v: &Value) -> Result<(), String> {
        let f = |v: Option<&Value>| v.and_then(Value::as_f64);
        if let Some(c) = v.get("catch_up").filter(|c| !c.is_null()) {
            let disk = c
                .get("floors")
                .and_then(|f| f.get("disk"))
                .and_then(Value::as_array)
                .and_then(|d| {
                    d.iter()
                        .find(|x| x.get("kind").and_then(Value::as_str) == Some("append"))
                })
                .and_then(|x| x.get("mb_per_s"))
                .and_then(Value::as_f64);
            let tcp = f(c
                .get("floors")
                .and_then(|f| f.get("loopback_tcp"))
                .and_then(|t| t.get("mb_per_s")));
            match (f(c.get("mb_per_s")), disk) {
                (Some(mb), Some(disk)) => {
                    self.catch_up = Some(CatchUp {
                        mb_per_s: mb,
                        streaming_mb_per_s: f(c.get("streaming_mb_per_s")).unwrap_or(mb),
                        disk_floor_mb_per_s: disk,
                        tcp_floor_mb_per_s: tcp.unwrap_or(f64::NAN),
                        source: name.to_string(),
                    })
                }
                _ => {
                    return Err(format!(
                        "{name}: catch_up lacks mb_per_s or floors.disk[kind=append].mb_per_s"
                    ))
                }
            }
        }
        if let Some(r) = v.get("reseed").filter(|r| !r.is_null()) {
            if let (Some(send), Some(bytes)) =
                (f(r.get("send_mb_per_s")), f(r.get("snapshot_bytes")))
            {
                self.reseed = Some(Reseed {
                    send_mb_per_s: send,
                    snapshot_bytes: bytes,
                    restore_seconds: f(r.get("restore_seconds")).unwrap_or(0.0),
                    synchronized_seconds: f(r.get("synchronized_s")).unwrap_or(f64::NAN),
                    source: name.to_string(),
                });
            }
        }
        Ok(())
    }

    /// The closed-loop case of `level` with one client.
    pub fn single_client(&self, level: Level) -> Option<&ClosedCase> {
        self.levels.get(&level)?.iter().find(|c| c.clients == 1)
    }

    /// The highest commit rate measured at `level` without pipelining: the
    /// closed-loop cases and, where there is one, the sweep's achieved
    /// rates. A lower bound of the level's capacity on this machine.
    pub fn capacity_ops_per_s(&self, level: Level) -> Option<f64> {
        let closed = self.levels.get(&level)?.iter().map(|c| c.ops_per_s);
        let swept = self
            .sweeps
            .iter()
            .filter(|s| s.level == level)
            .flat_map(|s| s.points.iter().map(|p| p.ops_per_s));
        closed.chain(swept).reduce(f64::max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_results_have_every_level_and_the_catch_up_rate() {
        let m = Measured::builtin();
        for l in Level::ALL {
            assert!(m.single_client(l).is_some(), "{l:?}");
            assert!(m.capacity_ops_per_s(l).unwrap() > 1000.0);
        }
        assert!(m.fdatasync.unwrap().p50_us > 0.0);
        assert!(m.catch_up.as_ref().unwrap().mb_per_s > 10.0);
        assert!(m.reseed.is_some());
        assert!(!m.sweeps.is_empty());
    }

    #[test]
    fn a_file_of_another_kind_is_refused_by_name() {
        let mut m = Measured::empty();
        let e = m.add("x.json", "{\"cases\": []}").unwrap_err();
        assert!(e.starts_with("x.json: neither a latency result"), "{e}");
        let e = m.add("y.json", "not json").unwrap_err();
        assert!(e.starts_with("y.json: not JSON"), "{e}");
    }
}
