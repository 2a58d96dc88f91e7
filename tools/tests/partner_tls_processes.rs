//! `mirrorlog serve` partners over TLS (`--partner-tls-*`, issue 13), as
//! real processes on 127.0.0.1 with certificates made at test time
//! (rcgen): flags and config-file keys replicate a write; a plaintext
//! mirror against a TLS principal is told why in both logs; bad TLS
//! configuration stops the start with the flag named.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use mirrorlog::client::Client;
use mirrorlog::resp::Reply;

use common::{addr, free_port, info, node_args, secret, serve, tempdir, wait_for};

fn write_private(path: &Path, bytes: &[u8]) {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .unwrap()
        .write_all(bytes)
        .unwrap();
}

struct Files {
    ca: PathBuf,
    /// Per node: certificate and key.
    nodes: Vec<(PathBuf, PathBuf)>,
}

/// A CA and `n` node certificates for 127.0.0.1 (server and client use).
fn files(dir: &Path, n: usize) -> Files {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let ca = p.self_signed(&ca_key).unwrap();
    let ca_path = dir.join("ca.pem");
    std::fs::write(&ca_path, ca.pem()).unwrap();
    let nodes = (0..n)
        .map(|i| {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut p = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
            p.extended_key_usages = vec![
                rcgen::ExtendedKeyUsagePurpose::ServerAuth,
                rcgen::ExtendedKeyUsagePurpose::ClientAuth,
            ];
            let cert = p.signed_by(&key, &ca, &ca_key).unwrap();
            let (c, k) = (dir.join(format!("n{i}.pem")), dir.join(format!("n{i}.key")));
            std::fs::write(&c, cert.pem()).unwrap();
            write_private(&k, key.serialize_pem().as_bytes());
            (c, k)
        })
        .collect();
    Files { ca: ca_path, nodes }
}

fn tls_flags(f: &Files, i: usize) -> Vec<String> {
    vec![
        "--partner-tls-cert".into(),
        f.nodes[i].0.display().to_string(),
        "--partner-tls-key".into(),
        f.nodes[i].1.display().to_string(),
        "--partner-tls-ca".into(),
        f.ca.display().to_string(),
    ]
}

fn get(port: u16, key: &str) -> Option<Vec<u8>> {
    let mut c = Client::connect(addr(port), Duration::from_secs(2)).ok()?;
    match c.call(&[b"GET", key.as_bytes()]) {
        Ok(Reply::Bulk(b)) => Some(b),
        _ => None,
    }
}

fn log_text(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

#[test]
fn partners_over_tls_from_flags_and_a_config_file_replicate_a_write() {
    let dir = tempdir("ptls-proc", "ok");
    let f = files(&dir, 2);
    let s = secret(&dir);
    let partner = free_port();
    let (pp, mp) = (free_port(), free_port());
    let mut pa = node_args(&dir.join("p"), &s, "principal", pp, partner);
    pa.extend(tls_flags(&f, 0));
    let plog = dir.join("p.log");
    let _p = serve(&pa, &plog);
    // The mirror takes its TLS from a config file.
    let conf = dir.join("mirror.toml");
    std::fs::write(
        &conf,
        format!(
            "partner_tls_cert = {:?}\npartner_tls_key = {:?}\npartner_tls_ca = {:?}\npartner_tls_server_name = \"127.0.0.1\"\n",
            f.nodes[1].0.display().to_string(),
            f.nodes[1].1.display().to_string(),
            f.ca.display().to_string()
        ),
    )
    .unwrap();
    let mut ma = vec!["--config".to_string(), conf.display().to_string()];
    ma.extend(node_args(&dir.join("m"), &s, "mirror", mp, partner));
    let mlog = dir.join("m.log");
    let _m = serve(&ma, &mlog);
    wait_for(
        "the mirror to synchronize over TLS",
        Duration::from_secs(30),
        || {
            let i = info(pp);
            i.contains("mirroring_state:synchronized") && i.contains("transport:TLS")
        },
    );
    let mut c = Client::connect(addr(pp), Duration::from_secs(2)).unwrap();
    assert!(matches!(
        c.call(&[b"SET", b"tls:k", b"over-tls"]),
        Ok(Reply::Simple(_))
    ));
    wait_for(
        "the mirror to serve the write",
        Duration::from_secs(10),
        || get(mp, "tls:k").as_deref() == Some(b"over-tls"),
    );
    let ml = log_text(&mlog);
    assert!(ml.contains("over TLS"), "{ml}");
}

#[test]
fn a_plaintext_mirror_of_a_tls_principal_is_told_why_in_both_logs() {
    let dir = tempdir("ptls-proc", "mismatch");
    let f = files(&dir, 1);
    let s = secret(&dir);
    let partner = free_port();
    let (pp, mp) = (free_port(), free_port());
    let mut pa = node_args(&dir.join("p"), &s, "principal", pp, partner);
    pa.extend(tls_flags(&f, 0));
    let (plog, mlog) = (dir.join("p.log"), dir.join("m.log"));
    let _p = serve(&pa, &plog);
    let _m = serve(&node_args(&dir.join("m"), &s, "mirror", mp, partner), &mlog);
    wait_for("both logs to say why", Duration::from_secs(30), || {
        log_text(&mlog).contains("this principal requires TLS on its partner port")
            && log_text(&plog).contains("the peer speaks the plaintext partner protocol")
    });
    assert!(!info(pp).contains("mirroring_state:synchronized"));
    for l in [&plog, &mlog] {
        let t = log_text(l);
        assert!(!t.contains("malformed"), "{t}");
    }
}

fn refused(args: &[String], want: &str) {
    let out = Command::new(env!("CARGO_BIN_EXE_mirrorlog"))
        .arg("serve")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started with {args:?}");
    assert!(
        err.contains(want),
        "for {args:?} expected {want:?} in:\n{err}"
    );
}

#[test]
fn partner_tls_configuration_errors_name_the_flag() {
    let dir = tempdir("ptls-proc", "config");
    let f = files(&dir, 1);
    let s = secret(&dir);
    let base = |extra: &[String]| {
        let mut a = node_args(&dir.join("n"), &s, "principal", free_port(), free_port());
        a.extend(extra.iter().cloned());
        a
    };
    // Two of the three files.
    refused(
        &base(&tls_flags(&f, 0)[..4]),
        "needs all of --partner-tls-cert",
    );
    // A key readable by others.
    let open_key = dir.join("open.key");
    std::fs::copy(&f.nodes[0].1, &open_key).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&open_key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut a = tls_flags(&f, 0);
    a[3] = open_key.display().to_string();
    refused(&base(&a), "--partner-tls-key");
    refused(&base(&a), "readable or writable by group or others");
    // The CA file is not PEM.
    let junk = dir.join("junk.pem");
    std::fs::write(&junk, "not a certificate").unwrap();
    let mut a = tls_flags(&f, 0);
    a[5] = junk.display().to_string();
    refused(&base(&a), "--partner-tls-ca");
    // --witness-tls-ca without partner TLS.
    refused(
        &base(&[
            "--witness".into(),
            "127.0.0.1:1".into(),
            "--peer".into(),
            "127.0.0.1:2".into(),
            "--witness-tls-ca".into(),
            f.ca.display().to_string(),
        ]),
        "--witness-tls-ca needs --partner-tls-cert",
    );
}

/// A witness and two partners, every link over TLS (`mirrorlog witness
/// --tls-*`, `serve --partner-tls-* --witness-tls-ca`): the principal is
/// SIGKILLed, the mirror takes over on the witness's grant, and every
/// write the old principal acknowledged is readable on the new one.
#[test]
fn sigkill_failover_through_a_tls_witness_loses_no_acknowledged_write() {
    let dir = tempdir("ptls-proc", "failover");
    let f = files(&dir, 3);
    let s = secret(&dir);
    let wport = free_port();
    let witness_log = std::fs::File::create(dir.join("w.log")).unwrap();
    let _w = common::Served(
        Command::new(env!("CARGO_BIN_EXE_mirrorlog"))
            .arg("witness")
            .arg("--dir")
            .arg(dir.join("w"))
            .arg("--secret-file")
            .arg(&s)
            .args(["--listen", &format!("127.0.0.1:{wport}")])
            .args(["--lease-ms", "500"])
            .arg("--tls-cert")
            .arg(&f.nodes[2].0)
            .arg("--tls-key")
            .arg(&f.nodes[2].1)
            .arg("--tls-ca")
            .arg(&f.ca)
            .stdout(Stdio::null())
            .stderr(witness_log)
            .spawn()
            .unwrap(),
    );
    let (ac, ap, bc, bp) = (free_port(), free_port(), free_port(), free_port());
    let node = |i: usize, role: &str, c: u16, p: u16, oc: u16, op: u16| {
        let mut a = node_args(&dir.join(format!("n{i}")), &s, role, c, p);
        a.extend(tls_flags(&f, i));
        a.extend([
            "--peer".to_string(),
            format!("127.0.0.1:{op}"),
            "--peer-clients".into(),
            format!("127.0.0.1:{oc}"),
            "--witness".into(),
            format!("127.0.0.1:{wport}"),
            "--witness-tls-ca".into(),
            f.ca.display().to_string(),
            "--partner-timeout-ms".into(),
            "500".into(),
        ]);
        serve(&a, &dir.join(format!("n{i}.log")))
    };
    let mut a = node(0, "principal", ac, ap, bc, bp);
    let _b = node(1, "mirror", bc, bp, ac, ap);
    wait_for(
        "A principal, B synchronized over TLS",
        Duration::from_secs(30),
        || {
            let i = info(ac);
            i.contains("role:master")
                && i.contains("mirroring_state:synchronized")
                && i.contains("transport:TLS")
        },
    );
    let mut c = Client::connect(addr(ac), Duration::from_secs(2)).unwrap();
    let mut acked = Vec::new();
    for i in 0..200 {
        let (k, v) = (format!("k{i}"), format!("v{i}"));
        if matches!(
            c.call(&[b"SET", k.as_bytes(), v.as_bytes()]),
            Ok(Reply::Simple(_))
        ) {
            acked.push((k, v));
        }
    }
    assert_eq!(acked.len(), 200, "the principal acknowledged every write");
    a.0.kill().unwrap();
    a.0.wait().unwrap();
    wait_for("B to accept writes", Duration::from_secs(30), || {
        Client::connect(addr(bc), Duration::from_secs(2))
            .ok()
            .and_then(|mut c| c.call(&[b"SET", b"probe", b"1"]).ok())
            .is_some_and(|r| matches!(r, Reply::Simple(_)))
    });
    for (k, v) in &acked {
        assert_eq!(
            get(bc, k).as_deref(),
            Some(v.as_bytes()),
            "acknowledged {k} lost in the failover"
        );
    }
    let wl = log_text(&dir.join("w.log"));
    assert!(
        !wl.contains("refused"),
        "the witness refused a partner: {wl}"
    );
}
