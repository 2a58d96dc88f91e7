//! Data files are private to the user running the node: after a
//! principal, a mirror and a witness ran, every file under their
//! directories is 0600 and every directory 0700, including directories
//! that existed before with the old 0755/0644 modes.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mirrorlog_engine::apply::Applier;
use mirrorlog_engine::log::Records;
use mirrorlog_engine::node::{Logger, Mirror, NodeConfig, Principal, WitnessLink};
use mirrorlog_engine::replication::handshake::Secret;
use mirrorlog_engine::replication::session::MirroringState;
use mirrorlog_engine::transport::runner::NodeIdentity;
use mirrorlog_engine::transport::TransportChoice;
use mirrorlog_engine::witness::server::{WitnessOptions, WitnessServer};
use mirrorlog_engine::witness::LeaseConfig;

use common::modes::not_private;
use common::nodes::{tempdir, wait_until};

const DB: [u8; 16] = *b"file-modes-db-01";

fn secret() -> Secret {
    Secret::new(b"file-modes-shared-secret".to_vec()).unwrap()
}

struct Nothing;

impl Applier for Nothing {
    fn apply(&mut self, _: u64, _: u64, _: &Records) -> Result<(), String> {
        Ok(())
    }
}

#[test]
fn principal_mirror_and_witness_directories_hold_only_private_files() {
    let (pd, md, wd) = (
        tempdir("modes", "p"),
        tempdir("modes", "m"),
        tempdir("modes", "w"),
    );
    // The principal's directory as an older version left it.
    std::fs::set_permissions(&pd, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(pd.join("NOTES"), b"left by an operator").unwrap();
    std::fs::set_permissions(pd.join("NOTES"), std::fs::Permissions::from_mode(0o644)).unwrap();
    // The mirror's does not exist yet: it is created.
    let md = md.join("new/node");
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let l = lines.clone();
    let logger = Logger::new(move |s| l.lock().unwrap().push(s.to_string()));
    let w = WitnessServer::start(WitnessOptions {
        dir: wd.clone(),
        listen: "127.0.0.1:0".parse().unwrap(),
        secret: secret(),
        database_id: DB,
        lease: LeaseConfig {
            lease_ms: 300,
            rho: 0.01,
        },
        logger: logger.clone(),
        tls: None,
    })
    .unwrap();
    let config = |dir: &Path, name: &str| {
        let mut c = NodeConfig::new(
            dir,
            NodeIdentity {
                database_id: DB,
                secret: secret(),
            },
        );
        c.log = common::nodes::log_opts();
        c.transport = TransportChoice::Blocking;
        c.session.partner_timeout_ms = 300;
        c.session.heartbeat_ms = 30;
        c.witness = Some(WitnessLink {
            addr: w.local_addr(),
            name: name.to_string(),
            auto_failover: true,
            tls: None,
        });
        c.logger = logger.clone();
        c
    };
    let p_addr: std::net::SocketAddr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let p = Principal::start(config(&pd, &p_addr.to_string()), p_addr).unwrap();
    let m = Mirror::start(config(&md, "127.0.0.1:1"), p_addr, Nothing, None).unwrap();
    wait_until("SYNCHRONIZED", Duration::from_secs(10), || {
        p.status().state == MirroringState::Synchronized
    });
    // Enough to roll over a few segments on both sides.
    let record = vec![7u8; 4096];
    for _ in 0..200 {
        p.commit_wait(&[&record]).unwrap();
    }
    drop(m);
    drop(p);
    drop(w);
    for d in [&pd, &md, &wd] {
        let bad = not_private(d);
        assert!(bad.is_empty(), "not private: {bad:?}");
    }
    let said = lines.lock().unwrap().clone();
    assert!(
        said.iter()
            .any(|l| l.contains("readable by other users") && l.contains(&pd.display().to_string())),
        "the tightening was not logged: {said:?}"
    );
}
