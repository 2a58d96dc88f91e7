//! The status snapshot as one JSON object (`MIRROR STATUS JSON`,
//! `mirrorlog status --json`), through serde: one typed shape per object,
//! so every string is escaped by serde_json and every field is named once.

use std::time::Duration;

use mirrorlog_engine::node::{LatencySummary, Status, WitnessView};
use serde::Serialize;

#[derive(Serialize)]
struct StatusJson<'a> {
    role: String,
    state: String,
    epoch: u64,
    written_lsn: u64,
    hardened_lsn: u64,
    commit_lsn: u64,
    mirror: MirrorJson,
    send_queue_bytes: u64,
    send_queue_age_ms: Option<f64>,
    redo_queue_bytes: u64,
    redo_queue_ms: Option<f64>,
    exposed: bool,
    commits_held: bool,
    transport: Option<String>,
    zero_copy: bool,
    bytes_sent: u64,
    /// Raw over stored bytes, `null` until something was sent.
    compression_ratio: Option<f64>,
    sessions: u64,
    last_error: Option<&'a str>,
    log_error: Option<&'a str>,
    preauth_rejected: u64,
    witness: Option<WitnessJson<'a>>,
    latency: Vec<LatencyJson>,
}

#[derive(Serialize)]
struct MirrorJson {
    received_lsn: u64,
    hardened_lsn: u64,
    applied_lsn: u64,
}

/// The node's view of its witness.
#[derive(Serialize)]
struct WitnessJson<'a> {
    addr: &'a str,
    state: &'a str,
    contacted: bool,
    connected: bool,
    lease_left_ms: Option<u64>,
    exposed: bool,
    deposed: Option<&'a str>,
    failover: Option<&'a str>,
    last_error: Option<&'a str>,
}

#[derive(Serialize)]
struct LatencyJson {
    level: &'static str,
    count: u64,
    p50_us: u64,
    p99_us: u64,
    p999_us: u64,
    max_us: u64,
}

/// Rounded to three decimals, as the text status shows them.
fn milli(x: f64) -> f64 {
    (x * 1e3).round() / 1e3
}

fn ms(d: Option<Duration>) -> Option<f64> {
    d.map(|d| milli(d.as_secs_f64() * 1e3))
}

fn witness(w: &WitnessView) -> WitnessJson<'_> {
    WitnessJson {
        addr: &w.addr,
        state: w.state(),
        contacted: w.contacted,
        connected: w.connected,
        lease_left_ms: w.lease_left_ms,
        exposed: w.exposed,
        deposed: w.deposed.as_deref(),
        failover: w.failover.as_deref(),
        last_error: w.last_error.as_deref(),
    }
}

fn latency(l: &LatencySummary) -> LatencyJson {
    LatencyJson {
        level: l.level.name(),
        count: l.count,
        p50_us: l.p50_us,
        p99_us: l.p99_us,
        p999_us: l.p999_us,
        max_us: l.max_us,
    }
}

pub fn status_json(s: &Status) -> String {
    let j = StatusJson {
        role: s.role.to_string(),
        state: format!("{:?}", s.state).to_uppercase(),
        epoch: s.epoch,
        written_lsn: s.written_lsn,
        hardened_lsn: s.hardened_lsn,
        commit_lsn: s.commit_lsn,
        mirror: MirrorJson {
            received_lsn: s.mirror.received,
            hardened_lsn: s.mirror.hardened,
            applied_lsn: s.mirror.applied,
        },
        send_queue_bytes: s.send_queue_bytes,
        send_queue_age_ms: ms(s.send_queue_age),
        redo_queue_bytes: s.redo_queue_bytes,
        redo_queue_ms: ms(s.redo_queue_time),
        exposed: s.exposed,
        commits_held: s.commits_held,
        transport: s.transport.map(|t| t.to_string()),
        zero_copy: s.zero_copy,
        bytes_sent: s.bytes_sent,
        compression_ratio: s.compression_ratio().map(milli),
        sessions: s.sessions,
        last_error: s.last_error.as_deref(),
        log_error: s.log_error.as_deref(),
        preauth_rejected: s.preauth_rejected,
        witness: s.witness.as_ref().map(witness),
        latency: s.latency.iter().map(latency).collect(),
    };
    serde_json::to_string(&j).expect("a status serializes: plain fields, string keys")
}

#[cfg(test)]
mod tests {
    use super::*;
    use mirrorlog_engine::commit::Level;
    use mirrorlog_engine::node::NodeRole;
    use mirrorlog_engine::replication::session::{MirrorProgress, MirroringState};

    fn status() -> Status {
        Status {
            role: NodeRole::Principal,
            state: MirroringState::Synchronized,
            epoch: 3,
            written_lsn: 4096,
            hardened_lsn: 4000,
            mirror: MirrorProgress {
                received: 3000,
                hardened: 2000,
                applied: 1000,
            },
            commit_lsn: 2000,
            send_queue_bytes: 96,
            send_queue_age: Some(Duration::from_micros(1_234_567)),
            redo_queue_bytes: 0,
            redo_queue_time: None,
            exposed: false,
            commits_held: false,
            exposed_for: None,
            transport: None,
            zero_copy: false,
            bytes_sent: 0,
            raw_bytes: 0,
            log_bytes: 0,
            stored_bytes: 0,
            latency: vec![LatencySummary {
                level: Level::RemoteFlush,
                count: 7,
                p50_us: 1,
                p99_us: 2,
                p999_us: 3,
                max_us: 4,
            }],
            sessions: 2,
            // Every character JSON must escape, and some it need not.
            last_error: Some("a \"quoted\" path\\ with\na newline, a tab\t and \u{1} é".into()),
            preauth_rejected: 5,
            reseed: None,
            witness: None,
            log_error: None,
        }
    }

    #[test]
    fn the_status_json_parses_back_with_every_field() {
        let s = status();
        let v: serde_json::Value = serde_json::from_str(&status_json(&s)).expect("valid JSON");
        assert_eq!(v["role"], "principal");
        assert_eq!(v["state"], "SYNCHRONIZED");
        assert_eq!(v["mirror"]["applied_lsn"], 1000);
        assert_eq!(v["send_queue_age_ms"], 1234.567);
        assert!(v["redo_queue_ms"].is_null());
        assert!(v["transport"].is_null());
        assert!(v["compression_ratio"].is_null(), "nothing sent: null");
        assert_eq!(v["last_error"], s.last_error.as_deref().unwrap());
        assert!(v["log_error"].is_null());
        assert!(v["witness"].is_null());
        assert_eq!(v["latency"][0]["level"], Level::RemoteFlush.name());
        assert_eq!(v["latency"][0]["max_us"], 4);
        assert_eq!(
            v.as_object().unwrap().len(),
            23,
            "a field was added or lost: {v}"
        );
    }
}
