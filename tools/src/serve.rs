//! `mirrorlog serve`: options, start-up of a principal or a mirror node, and
//! the client server on top of it.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use mirrorlog_engine::node::{Logger, Mirror, NodeConfig, Principal, Safety};
use mirrorlog_engine::replication::handshake::Secret;
use mirrorlog_engine::transport::runner::NodeIdentity;
use mirrorlog_engine::transport::TransportChoice;

use crate::kv::{Effect, KvApplier};
use crate::server::{Node, Server, ServerOptions};

pub const SERVE_USAGE: &str = "\
mirrorlog serve --role principal|mirror --dir DIR --secret-file FILE [OPTIONS]
mirrorlog serve --config FILE [OPTIONS]

    --config FILE             a TOML file of these options, keys spelled as the
                              flags without the dashes (secret_file = \"...\",
                              port = 6380, safety = \"full\"); flags given on
                              the command line win over the file

    --role principal|mirror   what this node is
    --dir DIR                 its log directory (created if missing)
    --secret-file FILE        the partners' shared secret (>= 16 bytes, mode 0600)
    --database-id ID          names the database (up to 16 bytes; both partners
                              must agree; default \"mirrorlog\")
    --port N                  client (RESP) port (default 6379)
    --bind ADDR               client address to bind (default 127.0.0.1)
    --partner ADDR:PORT       principal: where to listen for the mirror (default
                              127.0.0.1:7400); mirror: the principal's partner
                              address to connect to (required)
    --principal-clients H:P   mirror: the principal's client address, told to
                              clients that try to write here
    --safety full|off         full: commits wait for the mirror's fsync
                              (remote-flush); off: local fsync only (default full)
    --transport auto|io_uring|blocking   partner transport (default auto)
    --password P              require AUTH P from clients
    --max-clients N           default 10000
    --max-bulk-bytes N        largest value or argument a client may send
                              (default 512 MiB, as Redis)
    --max-args N              most arguments in one command (default 1048576)
    --max-inline-bytes N      longest inline (telnet-style) command (default 64 KiB)
    --idle-timeout-secs N     close idle clients (default: never)
    --segment-bytes N         size of new log segment files (default 64 MiB;
                              a multiple of 4096 from 8 KiB to 4 GiB)
    --log-level L             error, warn, info (default) or debug; RUST_LOG,
                              when set, takes precedence
    --checkpoint-secs N       checkpoint the store every N seconds when the log
                              grew (default 60; 0: only on MIRROR CHECKPOINT)
";

#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub principal: bool,
    pub dir: PathBuf,
    pub secret_file: PathBuf,
    pub database_id: [u8; 16],
    pub client: SocketAddr,
    pub partner: SocketAddr,
    pub principal_clients: Option<String>,
    pub safety: Safety,
    pub transport: TransportChoice,
    pub password: Option<String>,
    pub max_clients: usize,
    pub idle_timeout: Option<Duration>,
    pub checkpoint_every: Option<Duration>,
    pub segment_bytes: Option<usize>,
    pub log_level: String,
    pub limits: crate::resp::Limits,
}

fn resolve(flag: &str, v: &str) -> Result<SocketAddr, String> {
    v.to_socket_addrs()
        .map_err(|e| format!("{flag} {v:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("{flag} {v:?}: no address"))
}

pub fn database_id(s: &str) -> Result<[u8; 16], String> {
    if s.is_empty() || s.len() > 16 {
        return Err(format!(
            "--database-id {s:?}: must be 1 to 16 bytes (it names the database; both partners use the same)"
        ));
    }
    let mut id = [0u8; 16];
    id[..s.len()].copy_from_slice(s.as_bytes());
    Ok(id)
}

/// The options a config file may hold: exactly the flags.
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    role: Option<String>,
    dir: Option<String>,
    secret_file: Option<String>,
    database_id: Option<String>,
    port: Option<u16>,
    bind: Option<String>,
    partner: Option<String>,
    principal_clients: Option<String>,
    safety: Option<String>,
    transport: Option<String>,
    password: Option<String>,
    max_clients: Option<u64>,
    idle_timeout_secs: Option<u64>,
    segment_bytes: Option<u64>,
    checkpoint_secs: Option<u64>,
    log_level: Option<String>,
    max_bulk_bytes: Option<u64>,
    max_args: Option<u64>,
    max_inline_bytes: Option<u64>,
}

/// Reads a config file into the flags it stands for.
fn file_flags(path: &str) -> Result<Vec<(String, String)>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("--config {path}: {e}"))?;
    let c: FileConfig = toml::from_str(&text)
        .map_err(|e| format!("config file {path}: {}", e.to_string().trim()))?;
    let mut v = Vec::new();
    let mut put = |k: &str, val: Option<String>| {
        if let Some(val) = val {
            v.push((format!("--{}", k.replace('_', "-")), val));
        }
    };
    put("role", c.role);
    put("dir", c.dir);
    put("secret_file", c.secret_file);
    put("database_id", c.database_id);
    put("port", c.port.map(|p| p.to_string()));
    put("bind", c.bind);
    put("partner", c.partner);
    put("principal_clients", c.principal_clients);
    put("safety", c.safety);
    put("transport", c.transport);
    put("password", c.password);
    put("max_clients", c.max_clients.map(|n| n.to_string()));
    put(
        "idle_timeout_secs",
        c.idle_timeout_secs.map(|n| n.to_string()),
    );
    put("segment_bytes", c.segment_bytes.map(|n| n.to_string()));
    put("checkpoint_secs", c.checkpoint_secs.map(|n| n.to_string()));
    put("log_level", c.log_level);
    put("max_bulk_bytes", c.max_bulk_bytes.map(|n| n.to_string()));
    put("max_args", c.max_args.map(|n| n.to_string()));
    put(
        "max_inline_bytes",
        c.max_inline_bytes.map(|n| n.to_string()),
    );
    Ok(v)
}

/// Parses `serve`'s arguments; a `--config FILE` supplies defaults the
/// other flags override. An error names the flag, or the file and its key.
pub fn parse(args: &[String]) -> Result<ServeOptions, String> {
    let mut from_file = Vec::new();
    let mut rest = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--config" {
            let path = it.next().ok_or("--config needs a value")?;
            from_file.extend(file_flags(path)?.into_iter().map(|f| (f, path.clone())));
        } else {
            rest.push(a.clone());
        }
    }
    // Check each file value alone first, so its error can name the key.
    for ((flag, value), path) in &from_file {
        let mut probe = vec![flag.clone(), value.clone()];
        probe.extend([
            "--role".into(),
            "principal".into(),
            "--dir".into(),
            "x".into(),
            "--secret-file".into(),
            "x".into(),
        ]);
        if flag == "--role" && value == "mirror" {
            probe.extend(["--partner".into(), "127.0.0.1:1".into()]);
        }
        if let Err(e) = parse_flags(&probe) {
            return Err(format!(
                "config file {path}, key `{}`: {e}",
                flag.trim_start_matches("--").replace('-', "_")
            ));
        }
    }
    let mut all: Vec<String> = from_file
        .into_iter()
        .flat_map(|((f, v), _)| [f, v])
        .collect();
    all.extend(rest);
    parse_flags(&all)
}

fn parse_flags(args: &[String]) -> Result<ServeOptions, String> {
    let mut role = None;
    let mut dir = None;
    let mut secret = None;
    let mut db = database_id("mirrorlog")?;
    let mut port = 6379u16;
    let mut bind = "127.0.0.1".to_string();
    let mut partner = None;
    let mut principal_clients = None;
    let mut safety = Safety::Full;
    let mut transport = TransportChoice::Auto;
    let mut password = None;
    let mut max_clients = 10_000;
    let mut idle = None;
    let mut checkpoint_every = Some(Duration::from_secs(60));
    let mut segment_bytes = None;
    let mut log_level = "info".to_string();
    let mut limits = crate::resp::Limits::default();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--role" => {
                role = Some(match value()?.as_str() {
                    "principal" => true,
                    "mirror" => false,
                    v => return Err(format!("--role {v:?}: expected principal or mirror")),
                })
            }
            "--dir" => dir = Some(PathBuf::from(value()?)),
            "--secret-file" => secret = Some(PathBuf::from(value()?)),
            "--database-id" => db = database_id(&value()?)?,
            "--port" => {
                let v = value()?;
                port = v
                    .parse()
                    .map_err(|_| format!("--port {v:?}: expected a port number"))?
            }
            "--bind" => bind = value()?,
            "--partner" => partner = Some(value()?),
            "--principal-clients" => principal_clients = Some(value()?),
            "--safety" => safety = value()?.parse().map_err(|e| format!("--safety: {e}"))?,
            "--transport" => {
                transport = value()?.parse().map_err(|e| format!("--transport: {e}"))?
            }
            "--password" => password = Some(value()?),
            "--max-clients" => {
                let v = value()?;
                max_clients = v
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| format!("--max-clients {v:?}: expected a positive number"))?
            }
            "--idle-timeout-secs" => {
                let v = value()?;
                idle = Some(Duration::from_secs(v.parse().map_err(|_| {
                    format!("--idle-timeout-secs {v:?}: expected seconds")
                })?))
            }
            "--max-bulk-bytes" | "--max-args" | "--max-inline-bytes" => {
                let v = value()?;
                let n: usize = v
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| format!("{flag} {v:?}: expected a positive number"))?;
                match flag.as_str() {
                    "--max-bulk-bytes" => limits.max_bulk = n,
                    "--max-args" => limits.max_args = n,
                    _ => limits.max_inline = n,
                }
            }
            "--log-level" => {
                let v = value()?;
                if !["error", "warn", "info", "debug", "trace"].contains(&v.as_str()) {
                    return Err(format!(
                        "--log-level {v:?}: expected error, warn, info or debug"
                    ));
                }
                log_level = v;
            }
            "--segment-bytes" => {
                let v = value()?;
                segment_bytes = Some(
                    v.parse()
                        .map_err(|_| format!("--segment-bytes {v:?}: expected a byte count"))?,
                );
            }
            "--checkpoint-secs" => {
                let v = value()?;
                let n: u64 = v
                    .parse()
                    .map_err(|_| format!("--checkpoint-secs {v:?}: expected seconds"))?;
                checkpoint_every = (n > 0).then(|| Duration::from_secs(n));
            }
            other => return Err(format!("unknown option {other:?}")),
        }
    }
    let principal = role.ok_or("--role is required (principal or mirror)")?;
    let partner = match (principal, partner) {
        (true, p) => resolve("--partner", p.as_deref().unwrap_or("127.0.0.1:7400"))?,
        (false, Some(p)) => resolve("--partner", &p)?,
        (false, None) => {
            return Err(
                "a mirror needs --partner ADDR:PORT (the principal's partner address)".into(),
            )
        }
    };
    Ok(ServeOptions {
        principal,
        dir: dir.ok_or("--dir is required")?,
        secret_file: secret.ok_or("--secret-file is required")?,
        database_id: db,
        client: resolve("--bind/--port", &format!("{bind}:{port}"))?,
        partner,
        principal_clients,
        safety,
        transport,
        password,
        max_clients,
        idle_timeout: idle,
        checkpoint_every,
        segment_bytes,
        log_level,
        limits,
    })
}

/// A started server: the node, the client listener's address.
pub struct Running {
    pub server: Arc<Server>,
    pub client_addr: SocketAddr,
    pub partner_addr: SocketAddr,
    listener: Option<std::net::TcpListener>,
}

impl Running {
    /// Serves clients on this thread until stopped; checkpoints every
    /// `checkpoint_every` on another.
    pub fn serve(
        mut self,
        checkpoint_every: Option<Duration>,
        logger: Logger,
    ) -> std::io::Result<()> {
        let l = self.listener.take().expect("not served yet");
        if let Some(every) = checkpoint_every {
            let server = self.server.clone();
            std::thread::spawn(move || {
                let mut last = None;
                loop {
                    std::thread::sleep(every);
                    let written = server.status().written_lsn;
                    if last == Some(written) {
                        continue;
                    }
                    match server.checkpoint() {
                        Ok((lsn, path)) => {
                            last = Some(server.status().written_lsn);
                            logger.line(&format!(
                                "mirrorlog: checkpoint at LSN {lsn}: {}",
                                path.display()
                            ));
                        }
                        Err(e) => logger.line(&format!("mirrorlog: checkpoint failed: {e}")),
                    }
                }
            });
        }
        self.server.serve(l)
    }
}

/// Starts the node and binds the client port.
pub fn start(o: &ServeOptions, logger: Logger) -> Result<Running, String> {
    std::fs::create_dir_all(&o.dir).map_err(|e| format!("creating {}: {e}", o.dir.display()))?;
    let secret = Secret::load(&o.secret_file)
        .map_err(|e| format!("--secret-file {}: {e}", o.secret_file.display()))?;
    let id = NodeIdentity {
        database_id: o.database_id,
        secret,
    };
    let mut cfg = NodeConfig::new(&o.dir, id);
    cfg.safety = o.safety;
    if let Some(b) = o.segment_bytes {
        cfg.log.segment_bytes = b;
        cfg.log
            .validate()
            .map_err(|e| format!("--segment-bytes {b}: {e}"))?;
    }
    cfg.transport = o.transport;
    cfg.logger = logger;
    let listener = std::net::TcpListener::bind(o.client)
        .map_err(|e| format!("listening for clients on {}: {e}", o.client))?;
    let client_addr = listener.local_addr().map_err(|e| e.to_string())?;
    let opts = ServerOptions {
        max_clients: o.max_clients,
        idle_timeout: o.idle_timeout,
        password: o.password.clone(),
        principal_hint: o.principal_clients.clone(),
        node_dir: Some(o.dir.clone()),
        limits: o.limits,
    };
    let warn_logger = cfg.logger.clone();
    let checkpoint =
        crate::checkpoint::load_newest(&o.dir, |w| warn_logger.line(&format!("mirrorlog: {w}")));
    let (node, store, partner_addr) = if o.principal {
        let p = Principal::start(cfg, o.partner).map_err(|e| e.to_string())?;
        // The store: the newest checkpoint, then the log after it.
        let store = crate::kv::Shared::default();
        {
            let mut st = store.write().expect("store");
            let log = p.log();
            let from = match checkpoint {
                Some(c) => {
                    st.map = c.map;
                    st.lsn = c.lsn;
                    c.lsn
                }
                None => log.start_lsn(),
            };
            if from < log.start_lsn() || from > log.written_lsn() {
                return Err(format!(
                    "the checkpoint at LSN {from} does not fit the log ({}..{}); restore the log or remove {}",
                    log.start_lsn(),
                    log.written_lsn(),
                    crate::checkpoint::dir(&o.dir).display()
                ));
            }
            let iter = log.read_from(from).map_err(|e| e.to_string())?;
            for v in iter {
                let v = v.map_err(|e| format!("replaying the log: {e}"))?;
                let records = v.records().map_err(|e| format!("replaying the log: {e}"))?;
                for r in records.iter() {
                    let e = Effect::decode(r)
                        .map_err(|e| format!("replaying the batch at LSN {}: {e}", v.lsn()))?;
                    st.apply(&e);
                }
                st.lsn = v.end_lsn();
            }
        }
        let addr = p.local_addr();
        (Node::Principal(p), store, addr)
    } else {
        let applier = KvApplier::default();
        let store = applier.store.clone();
        let from = checkpoint.map(|c| {
            let mut st = store.write().expect("store");
            st.map = c.map;
            st.lsn = c.lsn;
            c.lsn
        });
        let m = Mirror::start(cfg, o.partner, applier, from).map_err(|e| e.to_string())?;
        (Node::Mirror(m), store, o.partner)
    };
    Ok(Running {
        server: Server::new(node, store, opts),
        client_addr,
        partner_addr,
        listener: Some(listener),
    })
}

/// Log lines with a time, a level and the message, on standard error.
pub fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// The engine's log lines as tracing events: problems as warnings, the
/// rest as information.
pub fn tracing_logger() -> Logger {
    Logger::new(|s| {
        let s = s.strip_prefix("mirrorlog").unwrap_or(s);
        let lower = s.to_ascii_lowercase();
        if [
            "refused",
            "failed",
            "unavailable",
            "torn tail",
            "bound reached",
            "unusable",
            "error",
        ]
        .iter()
        .any(|w| lower.contains(w))
        {
            tracing::warn!("{s}");
        } else {
            tracing::info!("{s}");
        }
    })
}
