//! What a node says about itself is true: its status line for the witness,
//! the role it logs at start, its ROLE reply, and its compression figure
//! (real processes on 127.0.0.1).

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use mirrorlog::client::Client;
use mirrorlog::resp::Reply;

use common::{addr, free_port, node_args, secret, serve, spawn_witness, tempdir, wait_for, Served};

fn call(port: u16, args: &[&[u8]]) -> Option<Reply> {
    let mut c = Client::connect(addr(port), Duration::from_secs(2)).ok()?;
    c.call(args).ok()
}

fn status(port: u16, json: bool) -> String {
    let args: &[&[u8]] = if json {
        &[b"MIRROR", b"STATUS", b"JSON"]
    } else {
        &[b"MIRROR", b"STATUS"]
    };
    match call(port, args) {
        Some(Reply::Bulk(b)) => String::from_utf8_lossy(&b).into_owned(),
        _ => String::new(),
    }
}

fn synchronized(port: u16) -> bool {
    status(port, false).contains("SYNCHRONIZED")
}

struct Partner {
    dir: std::path::PathBuf,
    client: u16,
    partner: u16,
}

fn spawn_witnessed(me: &Partner, other: &Partner, role: &str, s: &Path, witness: u16) -> Served {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(me.dir.with_extension("log"))
        .unwrap();
    Served(
        Command::new(env!("CARGO_BIN_EXE_mirrorlog"))
            .args(["serve", "--role", role, "--dir"])
            .arg(&me.dir)
            .arg("--secret-file")
            .arg(s)
            .args(["--port", &me.client.to_string()])
            .args(["--partner", &format!("127.0.0.1:{}", me.partner)])
            .args(["--peer", &format!("127.0.0.1:{}", other.partner)])
            .args(["--peer-clients", &format!("127.0.0.1:{}", other.client)])
            .args(["--witness", &format!("127.0.0.1:{witness}")])
            .args(["--partner-timeout-ms", "500"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    )
}

/// Before the fix: a SYNCHRONIZED mirror said `witness ... UNREACHABLE`
/// (it asks the witness only to take over, and a successful ask never
/// marked it answered), and `MIRROR STATUS JSON` had no witness field.
#[test]
fn regression_a_healthy_mirror_does_not_call_its_witness_unreachable() {
    let d = tempdir("status-truths", "witness");
    let s = secret(&d);
    let wport = free_port();
    let a = Partner {
        dir: d.join("a"),
        client: free_port(),
        partner: free_port(),
    };
    let b = Partner {
        dir: d.join("b"),
        client: free_port(),
        partner: free_port(),
    };
    let _w = spawn_witness(&d.join("w"), &s, wport, 500);
    let _a = spawn_witnessed(&a, &b, "principal", &s, wport);
    let _b = spawn_witnessed(&b, &a, "mirror", &s, wport);
    wait_for("a SYNCHRONIZED mirror", Duration::from_secs(30), || {
        synchronized(b.client)
    });
    // Give the mirror time to have asked (or not) whatever it asks.
    std::thread::sleep(Duration::from_millis(500));
    let text = status(b.client, false);
    let line = text
        .lines()
        .find(|l| l.starts_with("witness:"))
        .unwrap_or_else(|| panic!("no witness line in the mirror's status:\n{text}"));
    assert!(
        !line.contains("UNREACHABLE"),
        "a healthy mirror, its witness running: {line}"
    );
    let json = status(b.client, true);
    assert!(
        json.contains(&format!("\"witness\":{{\"addr\":\"127.0.0.1:{wport}\"")),
        "{json}"
    );
    assert!(!json.contains("\"state\":\"UNREACHABLE\""), "{json}");
    // The principal, which renews its lease, says connected.
    let pj = status(a.client, true);
    assert!(pj.contains("\"connected\":true"), "{pj}");
    // And a node without a witness says null.
    let d2 = tempdir("status-truths", "no-witness");
    let s2 = secret(&d2);
    let pc = free_port();
    let _p = serve(
        &node_args(&d2.join("p"), &s2, "principal", pc, free_port()),
        &d2.join("p.log"),
    );
    wait_for("a lone principal", Duration::from_secs(20), || {
        status(pc, true).contains("\"witness\":null")
    });
}

/// Before the fix: a node started with `--role principal` that the witness
/// demoted (it records the other node as principal) logged "serving
/// principal clients" while it served as mirror.
#[test]
fn regression_a_node_demoted_at_start_logs_the_role_it_serves() {
    let d = tempdir("status-truths", "demoted");
    let s = secret(&d);
    let wport = free_port();
    let a = Partner {
        dir: d.join("a"),
        client: free_port(),
        partner: free_port(),
    };
    let b = Partner {
        dir: d.join("b"),
        client: free_port(),
        partner: free_port(),
    };
    let _w = spawn_witness(&d.join("w"), &s, wport, 500);
    let _a = spawn_witnessed(&a, &b, "principal", &s, wport);
    let mut pb = spawn_witnessed(&b, &a, "mirror", &s, wport);
    wait_for("a SYNCHRONIZED mirror", Duration::from_secs(30), || {
        synchronized(b.client)
    });
    pb.0.kill().unwrap();
    pb.0.wait().unwrap();
    let log_path = b.dir.with_extension("log");
    let before = std::fs::read_to_string(&log_path).unwrap().len();
    // B restarts claiming to be principal; the witness records A.
    let _b = spawn_witnessed(&b, &a, "principal", &s, wport);
    wait_for("B mirroring A again", Duration::from_secs(30), || {
        synchronized(b.client)
    });
    let log = std::fs::read_to_string(&log_path).unwrap();
    let line = log[before..]
        .lines()
        .find(|l| l.contains("clients on"))
        .unwrap_or_else(|| panic!("no serving line in B's log:\n{}", &log[before..]))
        .to_string();
    assert!(line.contains("serving mirror clients"), "{line}");
}

/// Before the fix: ROLE on the principal put "mirror" where Redis puts the
/// replica's IP (and the principal's own partner port where Redis puts the
/// replica's); on a mirror without `--principal-clients` it gave an empty
/// host and port 0.
#[test]
fn regression_role_has_redis_shape_with_the_partners_real_addresses() {
    let d = tempdir("status-truths", "role");
    let s = secret(&d);
    let (pc, mc, partner) = (free_port(), free_port(), free_port());
    let _p = serve(
        &node_args(&d.join("p"), &s, "principal", pc, partner),
        &d.join("p.log"),
    );
    let _m = serve(
        &node_args(&d.join("m"), &s, "mirror", mc, partner),
        &d.join("m.log"),
    );
    wait_for("a SYNCHRONIZED mirror", Duration::from_secs(30), || {
        synchronized(mc)
    });
    match call(pc, &[b"ROLE"]) {
        Some(Reply::Array(top)) => {
            assert_eq!(top[0], Reply::Bulk(b"master".to_vec()));
            assert!(matches!(top[1], Reply::Int(_)), "{top:?}");
            let Reply::Array(replicas) = &top[2] else {
                panic!("{top:?}")
            };
            let Reply::Array(r) = &replicas[0] else {
                panic!("{top:?}")
            };
            assert_eq!(r[0], Reply::Bulk(b"127.0.0.1".to_vec()), "{top:?}");
            let Reply::Bulk(port) = &r[1] else {
                panic!("{top:?}")
            };
            let port: u16 = String::from_utf8_lossy(port).parse().expect("a port");
            assert!(port != 0 && port != partner, "{top:?}");
            assert!(matches!(&r[2], Reply::Bulk(_)), "{top:?}");
        }
        other => panic!("ROLE on the principal: {other:?}"),
    }
    match call(mc, &[b"ROLE"]) {
        Some(Reply::Array(top)) => {
            assert_eq!(
                top[..4],
                [
                    Reply::Bulk(b"slave".to_vec()),
                    Reply::Bulk(b"127.0.0.1".to_vec()),
                    Reply::Int(i64::from(partner)),
                    Reply::Bulk(b"connected".to_vec()),
                ],
                "{top:?}"
            );
            assert!(matches!(top[4], Reply::Int(_)), "{top:?}");
        }
        other => panic!("ROLE on the mirror: {other:?}"),
    }
}

fn compression(text: &str) -> String {
    text.split("compression ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or("")
        .to_string()
}

/// Before the fix: a lone principal that had sent nothing showed
/// `compression 0.26x` after a few tiny writes (frame headers counted as
/// compressed bytes).
#[test]
fn regression_compression_is_n_a_until_something_is_sent_and_never_below_1_for_tiny_writes() {
    let d = tempdir("status-truths", "compression");
    let s = secret(&d);
    let (pc, mc, partner) = (free_port(), free_port(), free_port());
    let mut pargs = node_args(&d.join("p"), &s, "principal", pc, partner);
    pargs.extend(["--safety".into(), "off".into()]);
    let _p = serve(&pargs, &d.join("p.log"));
    wait_for("the principal", Duration::from_secs(20), || {
        matches!(call(pc, &[b"SET", b"k", b"v"]), Some(Reply::Simple(_)))
    });
    for i in 0..20 {
        let k = format!("k{i}");
        assert!(matches!(
            call(pc, &[b"SET", k.as_bytes(), b"v"]),
            Some(Reply::Simple(_))
        ));
    }
    let text = status(pc, false);
    assert!(text.contains("sent 0 bytes"), "{text}");
    assert_eq!(compression(&text), "n/a", "{text}");
    assert!(
        status(pc, true).contains("\"compression_ratio\":null"),
        "{}",
        status(pc, true)
    );
    let _m = serve(
        &node_args(&d.join("m"), &s, "mirror", mc, partner),
        &d.join("m.log"),
    );
    wait_for("a SYNCHRONIZED mirror", Duration::from_secs(30), || {
        synchronized(mc)
    });
    let text = status(pc, false);
    let c = compression(&text);
    let ratio: f64 = c
        .strip_suffix('x')
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("compression {c:?} after shipping:\n{text}"));
    assert!(ratio >= 1.0, "tiny writes cannot expand: {text}");
}
