//! `mirrorlog witness`: runs the engine's witness service
//! (`mirrorlog_engine::witness::server`) until killed.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

use mirrorlog_engine::node::Logger;
use mirrorlog_engine::replication::handshake::Secret;
use mirrorlog_engine::witness::server::{WitnessOptions, WitnessServer};
use mirrorlog_engine::witness::LeaseConfig;

pub const WITNESS_USAGE: &str = "\
mirrorlog witness --dir DIR --secret-file FILE [--listen ADDR:PORT]
                  [--database-id ID] [--lease-ms N] [--rho R] [--log-level L]
                  [--tls-cert FILE --tls-key FILE --tls-ca FILE]

    The witness: records the current epoch and its principal durably in DIR,
    grants epochs by compare-and-set, leases the principal its right to
    commit without its mirror, and grants automatic failover only once that
    lease is certainly over (docs/design.md, Witness protocol).

    --dir DIR             where the witness keeps its state (required)
    --secret-file FILE    the partners' shared secret (required)
    --listen ADDR:PORT    where to listen (default 127.0.0.1:7500)
    --database-id ID      the database it witnesses (default \"mirrorlog\")
    --lease-ms N          the lease (default 1000, as the partners' default
                          partner timeout)
    --rho R               the bound on any clock's rate error (default 0.01)
    --log-level L         error, warn, info (default) or debug
    --tls-cert FILE       TLS on the witness port (all three flags): its
                          certificate chain (PEM)
    --tls-key FILE        its private key (PEM; mode 0600 or stricter)
    --tls-ca FILE         the CA that signs the partners' certificates (they
                          present --partner-tls-cert, with --witness-tls-ca)
";

#[derive(Clone, Debug)]
pub struct Options {
    pub dir: PathBuf,
    pub listen: SocketAddr,
    pub secret_file: PathBuf,
    pub database_id: [u8; 16],
    pub lease: LeaseConfig,
    pub log_level: String,
    /// `--tls-cert`, `--tls-key`, `--tls-ca`: TLS on the witness port,
    /// partners' certificates verified against the CA (None: plaintext).
    pub tls: Option<[PathBuf; 3]>,
}

pub fn parse(args: &[String]) -> Result<Options, String> {
    let mut dir = None;
    let mut listen = "127.0.0.1:7500".to_string();
    let mut secret = None;
    let mut db = crate::serve::database_id("mirrorlog")?;
    let mut lease = LeaseConfig {
        lease_ms: 1000,
        rho: 0.01,
    };
    let mut log_level = "info".to_string();
    let (mut tls_cert, mut tls_key, mut tls_ca) = (None, None, None);
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--dir" => dir = Some(PathBuf::from(value()?)),
            "--listen" => listen = value()?,
            "--secret-file" => secret = Some(PathBuf::from(value()?)),
            "--database-id" => db = crate::serve::database_id(&value()?)?,
            "--lease-ms" => {
                let v = value()?;
                lease.lease_ms = v
                    .parse()
                    .ok()
                    .filter(|&n| (50..=3_600_000).contains(&n))
                    .ok_or_else(|| {
                        format!("--lease-ms {v:?}: expected milliseconds from 50 to 3600000")
                    })?;
            }
            "--rho" => {
                let v = value()?;
                lease.rho = v
                    .parse()
                    .ok()
                    .filter(|r: &f64| (0.0..0.5).contains(r))
                    .ok_or_else(|| {
                        format!("--rho {v:?}: expected a clock-rate error bound from 0 to 0.5 (0.01 = 1%)")
                    })?;
            }
            "--log-level" => log_level = value()?,
            "--tls-cert" => tls_cert = Some(PathBuf::from(value()?)),
            "--tls-key" => tls_key = Some(PathBuf::from(value()?)),
            "--tls-ca" => tls_ca = Some(PathBuf::from(value()?)),
            other => return Err(format!("unknown option {other:?}")),
        }
    }
    let listen = listen
        .to_socket_addrs()
        .map_err(|e| format!("--listen {listen:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("--listen {listen:?}: no address"))?;
    let tls = match (tls_cert, tls_key, tls_ca) {
        (None, None, None) => None,
        (Some(c), Some(k), Some(a)) => Some([c, k, a]),
        _ => {
            return Err("TLS on the witness port needs all of --tls-cert FILE (its certificate, PEM), \
                 --tls-key FILE (its key, mode 0600) and --tls-ca FILE (the CA that signs the partners' certificates)"
                .into())
        }
    };
    Ok(Options {
        tls,
        dir: dir.ok_or("--dir is required (where the witness keeps its state)")?,
        listen,
        secret_file: secret.ok_or("--secret-file is required (the partners' shared secret)")?,
        database_id: db,
        lease,
        log_level,
    })
}

/// Starts the witness and serves until the process is killed.
pub fn run(o: Options, logger: Logger) -> Result<(), String> {
    let w = start(&o, logger)?;
    tracing::info!("witness serving on {}", w.local_addr());
    loop {
        std::thread::park();
    }
}

/// Starts the witness (for tests and the demo: in process).
pub fn start(o: &Options, logger: Logger) -> Result<WitnessServer, String> {
    let secret = Secret::load(&o.secret_file)
        .map_err(|e| format!("--secret-file {}: {e}", o.secret_file.display()))?;
    if let Some(w) = secret.entropy_warning() {
        tracing::warn!("--secret-file {}: {w}", o.secret_file.display());
    }
    let tls = match &o.tls {
        None => None,
        Some([cert, key, ca]) => Some(
            crate::tls::identity(["--tls-cert", "--tls-key", "--tls-ca"], cert, key, ca)?
                .server_config()?,
        ),
    };
    WitnessServer::start(WitnessOptions {
        dir: o.dir.clone(),
        listen: o.listen,
        secret,
        database_id: o.database_id,
        lease: o.lease,
        logger,
        tls,
    })
}
