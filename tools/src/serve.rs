//! `mirrorlog serve`: options, start-up of a principal or a mirror node, and
//! the client server on top of it.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use mirrorlog_engine::node::{
    Logger, Mirror, NodeConfig, NodeError, Principal, Safety, WitnessLink,
};
use mirrorlog_engine::replication::handshake::Secret;
use mirrorlog_engine::replication::session::MirroringState;
use mirrorlog_engine::transport::runner::NodeIdentity;
use mirrorlog_engine::transport::tls::{PartnerTls, WitnessTls};
use mirrorlog_engine::transport::TransportChoice;
use mirrorlog_engine::witness::client::WitnessClient;
use mirrorlog_engine::witness::proto::{Reply, Request};
use mirrorlog_engine::witness::RefusalCode;

use crate::kv::{Effect, KvApplier};
use crate::server::{IoMode, Node, Server, ServerOptions};

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
    --port N                  client (RESP) port (default 6379; 0: no plaintext
                              port, with --tls-port, as Redis)
    --bind ADDR               client address to bind (default 127.0.0.1)
    --partner ADDR:PORT       principal: where to listen for the mirror (default
                              127.0.0.1:7400); mirror: the principal's partner
                              address to connect to (required)
    --principal-clients H:P   mirror: the principal's client address, told to
                              clients that try to write here

  With a witness (automatic failover; see docs/design.md, Witness protocol):
    --witness ADDR:PORT       the witness (`mirrorlog witness`); the witness then
                              decides the role at start: the node it records as
                              principal claims a new epoch, the other follows it
                              (--role only says who starts first on a new witness)
    --partner ADDR:PORT       with --witness: this node's own partner address
                              (listened on while principal; its name at the
                              witness) (default 127.0.0.1:7400)
    --peer ADDR:PORT          with --witness: the other partner's --partner address
    --peer-clients H:P        the other partner's client address, told to clients
                              that try to write here while it is principal
    --no-auto-failover        never take over on the witness's grant by itself
                              (manual failover and forced service still work)
    --witness-tls-ca FILE     TLS to the witness: the CA that signs the witness's
                              certificate; this node presents --partner-tls-cert
                              (so the partner TLS flags are needed too)
    --witness-tls-server-name NAME   the name in the witness's certificate
                              (default: the IP address of --witness)
    --partner-timeout-ms N    how long partners wait for each other before a
                              session is declared lost; also the failover delay
                              (default 1000)
    --safety full|off         full: commits wait for the mirror's fsync
                              (remote-flush); off: local fsync only (default full)
    --transport auto|io_uring|blocking   partner transport (default auto)
    --password-file FILE      require AUTH with the password in FILE from
                              clients (mode 0600 or stricter; one trailing
                              newline ignored; empty refused)
    --password P              the same, given on the command line, where other
                              local users can read it (ps, /proc): logged as a
                              warning; prefer --password-file. In a --config
                              file, `password` needs the file to be mode 0600
    --max-clients N           default 10000
    --io epoll|epoll:N|threads   how client connections are served: one epoll
                              event loop for all of them, N event loops (the
                              first deals connections round-robin), or one
                              thread each (default epoll)
    --max-bulk-bytes N        largest value or argument a client may send
                              (default and most: the largest write the log can
                              commit, 4 MiB, or a quarter of --segment-bytes if
                              less; a command whose arguments exceed that is
                              refused at the length header that crosses it)
    --max-args N              most arguments in one command (default 1048576)
    --max-inline-bytes N      longest inline (telnet-style) command (default 64 KiB)
    --idle-timeout-secs N     close idle clients (default: never)
    --command-timeout-secs N  close a client that takes longer than N seconds to
                              send one command (slowloris; default 60, 0: none)
    --read-barrier on|off     on (default): a read on the principal waits until
                              the writes it sees are committed at the client's
                              level, so no client sees a write a failover may
                              still lose. off: reads see writes as soon as they
                              are made, as in Redis (for tests and benchmarks)
    --output-limit-hard-bytes N   close a client whose unsent replies would
                              exceed N bytes (default 64 MiB)
    --output-limit-soft-bytes N   ... or stay above N bytes (default 16 MiB)
    --output-limit-soft-secs N    ... for N seconds (default 60)
                              Before AUTH (with --password) a client may send at
                              most 10 arguments of at most 16 KiB each, and each
                              source address gets at most 10 failed AUTH answers
                              a second (a burst of 20); beyond, the connection
                              is closed.
  TLS on the partner port (rustls, mutual certificates; see README, TLS; both
  partners must have it, or neither):
    --partner-tls-cert FILE   this node's certificate chain (PEM), presented
                              both as principal (server) and as mirror (client)
    --partner-tls-key FILE    its private key (PEM; mode 0600 or stricter)
    --partner-tls-ca FILE     the CA that signs the other partner's certificate
    --partner-tls-server-name NAME   the name the mirror expects in the
                              principal's certificate (default: the host part of
                              --partner when it is a name and there is no
                              --witness; else the IP address connected to)
  TLS on the client port (rustls; see README, TLS):
    --tls-port N              a TLS-only client port (on --bind), beside the
                              plaintext --port (--port 0: TLS only)
    --tls-cert FILE           the server's certificate chain (PEM)
    --tls-key FILE            its private key (PEM; mode 0600 or stricter)
    --tls-ca-cert FILE        CA certificates that sign client certificates
    --tls-auth-clients no|optional|yes   client certificates: yes (the default
                              with --tls-ca-cert) refuses a client without one
                              signed by the CA; optional accepts a client
                              without one; no asks for none. A handshake must
                              be done within the command timeout (at most 10 s)
    --segment-bytes N         size of new log segment files (default 64 MiB;
                              a multiple of 4096 from 8 KiB to 4 GiB); both
                              partners must use the same (the handshake
                              refuses a mismatch)
    --log-level L             error, warn, info (default) or debug; RUST_LOG,
                              when set, takes precedence
    --checkpoint-secs N       checkpoint the store every N seconds when the log
                              grew (default 60; 0: only on MIRROR CHECKPOINT)
    --retention-max-bytes N   principal: keep at most N bytes of log for an
                              absent or lagging mirror; beyond that the log below
                              the older checkpoint is deleted anyway and the
                              mirror is reseeded from the newest checkpoint when
                              it returns (default: keep all it needs; MIRROR
                              STATUS and INFO show how close the bound is)
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
    pub witness: Option<SocketAddr>,
    pub peer: Option<SocketAddr>,
    pub peer_clients: Option<String>,
    pub auto_failover: bool,
    pub partner_timeout_ms: u64,
    pub safety: Safety,
    pub transport: TransportChoice,
    pub password: Option<String>,
    /// The password came from `--password` on the command line (visible to
    /// other local users): the server warns at start.
    pub password_on_command_line: bool,
    pub max_clients: usize,
    pub idle_timeout: Option<Duration>,
    pub checkpoint_every: Option<Duration>,
    pub segment_bytes: Option<usize>,
    pub retention_max_bytes: Option<u64>,
    pub log_level: String,
    pub limits: crate::resp::Limits,
    pub output: crate::server::OutputLimits,
    pub command_timeout: Option<Duration>,
    pub read_barrier: bool,
    /// TLS on the client port (None: plaintext only).
    pub client_tls: Option<crate::tls::ClientTls>,
    /// TLS on the partner link (`--partner-tls-*`; None: plaintext).
    pub partner_tls: Option<PartnerTlsFiles>,
    /// TLS to the witness: its CA and server name (`--witness-tls-*`).
    pub witness_tls_ca: Option<PathBuf>,
    pub witness_tls_server_name: Option<String>,
}

/// The partner link's TLS files and the server name a mirror expects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartnerTlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
    /// None: the IP address connected to.
    pub server_name: Option<String>,
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
    witness: Option<String>,
    peer: Option<String>,
    peer_clients: Option<String>,
    partner_timeout_ms: Option<u64>,
    safety: Option<String>,
    transport: Option<String>,
    password: Option<String>,
    password_file: Option<String>,
    max_clients: Option<u64>,
    io: Option<String>,
    idle_timeout_secs: Option<u64>,
    segment_bytes: Option<u64>,
    retention_max_bytes: Option<u64>,
    checkpoint_secs: Option<u64>,
    log_level: Option<String>,
    max_bulk_bytes: Option<u64>,
    max_args: Option<u64>,
    max_inline_bytes: Option<u64>,
    read_barrier: Option<String>,
    tls_port: Option<u16>,
    tls_cert: Option<String>,
    tls_key: Option<String>,
    tls_ca_cert: Option<String>,
    tls_auth_clients: Option<String>,
    partner_tls_cert: Option<String>,
    partner_tls_key: Option<String>,
    partner_tls_ca: Option<String>,
    partner_tls_server_name: Option<String>,
    witness_tls_ca: Option<String>,
    witness_tls_server_name: Option<String>,
}

/// Reads a config file into the flags it stands for.
fn file_flags(path: &str) -> Result<Vec<(String, String)>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("--config {path}: {e}"))?;
    let c: FileConfig = toml::from_str(&text)
        .map_err(|e| format!("config file {path}: {}", e.to_string().trim()))?;
    if c.password.is_some() {
        // The password is only as private as the file that holds it.
        let mode = private_mode(path).map_err(|e| format!("--config {path}: {e}"))?;
        if let Some(mode) = mode {
            return Err(format!(
                "config file {path} holds a password but is readable or writable by group or others (mode {mode:o}); run: chmod 600 {path} (or move the password to a password_file)"
            ));
        }
    }
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
    put("witness", c.witness);
    put("peer", c.peer);
    put("peer_clients", c.peer_clients);
    put(
        "partner_timeout_ms",
        c.partner_timeout_ms.map(|n| n.to_string()),
    );
    put("safety", c.safety);
    put("transport", c.transport);
    put("password", c.password);
    put("password_file", c.password_file);
    put("max_clients", c.max_clients.map(|n| n.to_string()));
    put("io", c.io);
    put(
        "idle_timeout_secs",
        c.idle_timeout_secs.map(|n| n.to_string()),
    );
    put("segment_bytes", c.segment_bytes.map(|n| n.to_string()));
    put("checkpoint_secs", c.checkpoint_secs.map(|n| n.to_string()));
    put(
        "retention_max_bytes",
        c.retention_max_bytes.map(|n| n.to_string()),
    );
    put("log_level", c.log_level);
    put("read_barrier", c.read_barrier);
    put("max_bulk_bytes", c.max_bulk_bytes.map(|n| n.to_string()));
    put("max_args", c.max_args.map(|n| n.to_string()));
    put(
        "max_inline_bytes",
        c.max_inline_bytes.map(|n| n.to_string()),
    );
    put("tls_port", c.tls_port.map(|p| p.to_string()));
    put("tls_cert", c.tls_cert);
    put("tls_key", c.tls_key);
    put("tls_ca_cert", c.tls_ca_cert);
    put("tls_auth_clients", c.tls_auth_clients);
    put("partner_tls_cert", c.partner_tls_cert);
    put("partner_tls_key", c.partner_tls_key);
    put("partner_tls_ca", c.partner_tls_ca);
    put("partner_tls_server_name", c.partner_tls_server_name);
    put("witness_tls_ca", c.witness_tls_ca);
    put("witness_tls_server_name", c.witness_tls_server_name);
    Ok(v)
}

/// Parses `serve`'s arguments; a `--config FILE` supplies defaults the
/// other flags override. An error names the flag, or the file and its key.
/// (`--io` is not part of [`ServeOptions`]; see [`parse_with_io`].)
pub fn parse(args: &[String]) -> Result<ServeOptions, String> {
    parse_with_io(args).map(|(o, _)| o)
}

/// [`parse`], and how client connections are to be served (`--io`).
pub fn parse_with_io(args: &[String]) -> Result<(ServeOptions, IoMode), String> {
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
    // A password on the command line wins over one in the file, of
    // either kind (`--password` or `--password-file`).
    let on_command_line = rest.iter().any(|a| a == "--password");
    if on_command_line || rest.iter().any(|a| a == "--password-file") {
        from_file.retain(|((f, _), _)| f != "--password" && f != "--password-file");
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
        if flag == "--witness" {
            probe.extend(["--peer".into(), "127.0.0.1:1".into()]);
        }
        if flag.starts_with("--partner-tls-") || flag.starts_with("--witness-tls-") {
            // These too stand only together.
            for (f, v) in [
                ("--partner-tls-cert", "x"),
                ("--partner-tls-key", "x"),
                ("--partner-tls-ca", "x"),
            ] {
                if flag != f {
                    probe.extend([f.into(), v.into()]);
                }
            }
            if flag.starts_with("--witness-tls-") {
                probe.extend([
                    "--witness".into(),
                    "127.0.0.1:1".into(),
                    "--peer".into(),
                    "127.0.0.1:1".into(),
                    "--witness-tls-ca".into(),
                    "x".into(),
                ]);
            }
        }
        if flag.starts_with("--tls-") || flag == "--port" && value == "0" {
            // TLS keys stand only together: check one with the others.
            for (f, v) in [("--tls-port", "1"), ("--tls-cert", "x"), ("--tls-key", "x")] {
                if flag != f {
                    probe.extend([f.into(), v.into()]);
                }
            }
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
    let (mut o, io) = parse_flags(&all)?;
    o.password_on_command_line = on_command_line;
    Ok((o, io))
}

/// The mode of `path` if group or others may read or write it (None: it
/// is private to its owner).
fn private_mode(path: &str) -> std::io::Result<Option<u32>> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)?.permissions().mode() & 0o777;
    Ok((mode & 0o077 != 0).then_some(mode))
}

/// Reads a client password file: private to its owner (as a secret file
/// must be), one trailing newline ignored (so `echo`-made files work),
/// not empty.
pub fn load_password(path: &str) -> Result<String, String> {
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;
    let mut f =
        std::fs::File::open(path).map_err(|e| format!("cannot read password file {path}: {e}"))?;
    let mode = f
        .metadata()
        .map_err(|e| format!("cannot read password file {path}: {e}"))?
        .permissions()
        .mode()
        & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "password file {path} is readable or writable by group or others (mode {mode:o}); run: chmod 600 {path}"
        ));
    }
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read password file {path}: {e}"))?;
    if bytes.ends_with(b"\n") {
        bytes.pop();
        if bytes.ends_with(b"\r") {
            bytes.pop();
        }
    }
    if bytes.is_empty() {
        return Err(format!(
            "password file {path} is empty; put the password clients must AUTH with in it"
        ));
    }
    String::from_utf8(bytes).map_err(|_| format!("password file {path} is not UTF-8 text"))
}

fn parse_flags(args: &[String]) -> Result<(ServeOptions, IoMode), String> {
    let mut role = None;
    let mut dir = None;
    let mut secret = None;
    let mut db = database_id("mirrorlog")?;
    let mut port = 6379u16;
    let mut bind = "127.0.0.1".to_string();
    let mut partner = None;
    let mut principal_clients = None;
    let mut witness = None;
    let mut peer = None;
    let mut peer_clients = None;
    let mut auto_failover = true;
    let mut partner_timeout_ms = 1000u64;
    let mut safety = Safety::Full;
    let mut transport = TransportChoice::Auto;
    let mut password = None;
    let mut password_file = false;
    let mut max_clients = 10_000;
    let mut io = IoMode::default();
    let mut idle = None;
    let mut checkpoint_every = Some(Duration::from_secs(60));
    let mut segment_bytes = None;
    let mut retention_max_bytes = None;
    let mut log_level = "info".to_string();
    let mut limits = crate::resp::Limits::default();
    let mut output = crate::server::OutputLimits::default();
    let mut command_timeout = Some(Duration::from_secs(60));
    let mut read_barrier = true;
    let mut soft_given = false;
    let (mut tls_port, mut tls_cert, mut tls_key, mut tls_ca, mut tls_auth) =
        (None::<u16>, None, None, None, None);
    let (mut ptls_cert, mut ptls_key, mut ptls_ca, mut ptls_name) = (None, None, None, None);
    let (mut wtls_ca, mut wtls_name) = (None, None);
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
            "--witness" => witness = Some(resolve("--witness", &value()?)?),
            "--peer" => peer = Some(resolve("--peer", &value()?)?),
            "--peer-clients" => peer_clients = Some(value()?),
            "--no-auto-failover" => auto_failover = false,
            "--partner-timeout-ms" => {
                let v = value()?;
                partner_timeout_ms = v
                    .parse()
                    .ok()
                    .filter(|&n| (50..=3_600_000).contains(&n))
                    .ok_or_else(|| {
                        format!(
                            "--partner-timeout-ms {v:?}: expected milliseconds from 50 to 3600000"
                        )
                    })?;
            }
            "--safety" => safety = value()?.parse().map_err(|e| format!("--safety: {e}"))?,
            "--transport" => {
                transport = value()?.parse().map_err(|e| format!("--transport: {e}"))?
            }
            "--password" => {
                if password_file {
                    return Err("give either --password or --password-file, not both".into());
                }
                password = Some(value()?)
            }
            "--password-file" => {
                if password.is_some() && !password_file {
                    return Err("give either --password or --password-file, not both".into());
                }
                let v = value()?;
                password = Some(load_password(&v).map_err(|e| format!("--password-file: {e}"))?);
                password_file = true;
            }
            "--max-clients" => {
                let v = value()?;
                max_clients = v
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| format!("--max-clients {v:?}: expected a positive number"))?
            }
            "--io" => io = value()?.parse().map_err(|e| format!("--io {e}"))?,
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
            "--output-limit-hard-bytes" | "--output-limit-soft-bytes" => {
                let v = value()?;
                let n: usize = v.parse().ok().filter(|&n| n >= 1024).ok_or_else(|| {
                    format!("{flag} {v:?}: expected a byte count of at least 1024")
                })?;
                if flag == "--output-limit-hard-bytes" {
                    output.hard = n;
                } else {
                    output.soft = n;
                    soft_given = true;
                }
            }
            "--output-limit-soft-secs" => {
                let v = value()?;
                output.soft_time =
                    Duration::from_secs(v.parse().map_err(|_| {
                        format!("--output-limit-soft-secs {v:?}: expected seconds")
                    })?);
            }
            "--command-timeout-secs" => {
                let v = value()?;
                let n: u64 = v.parse().map_err(|_| {
                    format!("--command-timeout-secs {v:?}: expected seconds (0: none)")
                })?;
                command_timeout = (n > 0).then(|| Duration::from_secs(n));
            }
            "--read-barrier" => {
                read_barrier = match value()?.as_str() {
                    "on" => true,
                    "off" => false,
                    v => return Err(format!("--read-barrier {v:?}: expected on or off")),
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
            "--retention-max-bytes" => {
                let v = value()?;
                retention_max_bytes =
                    Some(v.parse().map_err(|_| {
                        format!("--retention-max-bytes {v:?}: expected a byte count")
                    })?);
            }
            "--checkpoint-secs" => {
                let v = value()?;
                let n: u64 = v
                    .parse()
                    .map_err(|_| format!("--checkpoint-secs {v:?}: expected seconds"))?;
                checkpoint_every = (n > 0).then(|| Duration::from_secs(n));
            }
            "--tls-port" => {
                let v = value()?;
                tls_port = Some(v.parse().ok().filter(|&p| p > 0).ok_or_else(|| {
                    format!("--tls-port {v:?}: expected a port number (1 to 65535)")
                })?)
            }
            "--partner-tls-cert" => ptls_cert = Some(PathBuf::from(value()?)),
            "--partner-tls-key" => ptls_key = Some(PathBuf::from(value()?)),
            "--partner-tls-ca" => ptls_ca = Some(PathBuf::from(value()?)),
            "--partner-tls-server-name" => {
                let v = value()?;
                mirrorlog_engine::transport::tls::server_name(&v)
                    .map_err(|e| format!("--partner-tls-server-name: {e}"))?;
                ptls_name = Some(v)
            }
            "--witness-tls-ca" => wtls_ca = Some(PathBuf::from(value()?)),
            "--witness-tls-server-name" => {
                let v = value()?;
                mirrorlog_engine::transport::tls::server_name(&v)
                    .map_err(|e| format!("--witness-tls-server-name: {e}"))?;
                wtls_name = Some(v)
            }
            "--tls-cert" => tls_cert = Some(PathBuf::from(value()?)),
            "--tls-key" => tls_key = Some(PathBuf::from(value()?)),
            "--tls-ca-cert" => tls_ca = Some(PathBuf::from(value()?)),
            "--tls-auth-clients" => {
                tls_auth = Some(
                    value()?
                        .parse::<crate::tls::AuthClients>()
                        .map_err(|e| format!("--tls-auth-clients {e}"))?,
                )
            }
            other => return Err(format!("unknown option {other:?}")),
        }
    }
    let principal = role.ok_or("--role is required (principal or mirror)")?;
    if !soft_given {
        output.soft = output.soft.min(output.hard);
    }
    if output.soft > output.hard {
        return Err(format!(
            "--output-limit-soft-bytes {} is above --output-limit-hard-bytes {}",
            output.soft, output.hard
        ));
    }
    // The largest write the log can commit (group commit's batch bound):
    // no command may carry more, and no bulk be larger.
    let segment = segment_bytes.unwrap_or(mirrorlog_engine::log::segment::SEGMENT_BYTES_DEFAULT);
    limits.max_command = mirrorlog_engine::commit::default_batch_bytes_max(segment);
    limits.max_bulk = limits.max_bulk.min(limits.max_command);
    if witness.is_some() && peer.is_none() {
        return Err(
            "--witness needs --peer ADDR:PORT (the other partner's partner address)".into(),
        );
    }
    if witness.is_none() && peer.is_some() && !principal {
        return Err("--peer is for --witness set-ups; a mirror without a witness names its principal with --partner".into());
    }
    // The partner link's TLS: all three files or none. Without a witness a
    // mirror expects the host part of --partner in the principal's
    // certificate, if it is a name; otherwise the IP address it connects
    // to (with a witness, the principal may be either partner).
    let default_name = partner.as_deref().and_then(|p| {
        let host = p.rsplit_once(':').map_or(p, |(h, _)| h);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        (witness.is_none() && host.parse::<std::net::IpAddr>().is_err()).then(|| host.to_string())
    });
    let partner_tls = match (ptls_cert, ptls_key, ptls_ca) {
        (None, None, None) => {
            if ptls_name.is_some() {
                return Err("--partner-tls-server-name needs --partner-tls-cert, --partner-tls-key and --partner-tls-ca".into());
            }
            None
        }
        (Some(cert), Some(key), Some(ca)) => Some(PartnerTlsFiles {
            cert,
            key,
            ca,
            server_name: ptls_name.or(default_name),
        }),
        _ => {
            return Err("TLS on the partner port needs all of --partner-tls-cert FILE (this node's certificate, PEM), \
                 --partner-tls-key FILE (its key, mode 0600) and --partner-tls-ca FILE (the CA that signs the other partner's certificate)"
                .into())
        }
    };
    if wtls_ca.is_some() && witness.is_none() {
        return Err("--witness-tls-ca is for --witness set-ups".into());
    }
    if wtls_ca.is_some() && partner_tls.is_none() {
        return Err(
            "--witness-tls-ca needs --partner-tls-cert, --partner-tls-key and --partner-tls-ca: \
             this node presents its partner certificate to the witness"
                .into(),
        );
    }
    if wtls_name.is_some() && wtls_ca.is_none() {
        return Err("--witness-tls-server-name needs --witness-tls-ca".into());
    }
    let partner = match (principal || witness.is_some(), partner) {
        (true, p) => resolve("--partner", p.as_deref().unwrap_or("127.0.0.1:7400"))?,
        (false, Some(p)) => resolve("--partner", &p)?,
        (false, None) => {
            return Err(
                "a mirror needs --partner ADDR:PORT (the principal's partner address)".into(),
            )
        }
    };
    // TLS on the client port: --tls-port with a certificate and its key
    // (as Redis, a certificate alone opens no TLS port).
    let client_tls = match (tls_port, tls_cert, tls_key) {
        (None, _, _) if port == 0 => {
            return Err("--port 0 turns the plaintext client port off; give --tls-port N for a TLS one (or a --port)".into())
        }
        (None, _, _) => None,
        (Some(p), Some(cert), Some(key)) => {
            if p == port {
                return Err(format!("--tls-port {p} is also --port; give them different ports (or --port 0 for TLS only)"));
            }
            Some(crate::tls::ClientTls {
                files: crate::tls::TlsFiles {
                    cert,
                    key,
                    ca: tls_ca,
                    auth_clients: tls_auth,
                },
                addr: resolve("--bind/--tls-port", &format!("{bind}:{p}"))?,
                plaintext_too: port != 0,
            })
        }
        (Some(p), None, _) => {
            return Err(format!("--tls-port {p} needs --tls-cert FILE (the server's certificate, PEM) and --tls-key FILE"))
        }
        (Some(p), Some(_), None) => {
            return Err(format!(
                "--tls-port {p} needs --tls-key FILE (the certificate's private key, PEM)"
            ))
        }
    };
    let o = ServeOptions {
        principal,
        dir: dir.ok_or("--dir is required")?,
        secret_file: secret.ok_or("--secret-file is required")?,
        database_id: db,
        client: resolve("--bind/--port", &format!("{bind}:{port}"))?,
        partner,
        principal_clients,
        witness,
        peer,
        peer_clients,
        auto_failover,
        partner_timeout_ms,
        safety,
        transport,
        password,
        password_on_command_line: false,
        max_clients,
        idle_timeout: idle,
        checkpoint_every,
        segment_bytes,
        retention_max_bytes,
        log_level,
        limits,
        output,
        command_timeout,
        read_barrier,
        client_tls,
        partner_tls,
        witness_tls_ca: wtls_ca,
        witness_tls_server_name: wtls_name,
    };
    Ok((o, io))
}

/// A started server: the node, the client listener's address.
pub struct Running {
    pub server: Arc<Server>,
    /// The plaintext client port's address (with --port 0: the TLS one's).
    pub client_addr: SocketAddr,
    /// The TLS client port's address (--tls-port).
    pub tls_addr: Option<SocketAddr>,
    pub partner_addr: SocketAddr,
    listener: Option<std::net::TcpListener>,
    tls_listener: Option<std::net::TcpListener>,
    spec: Arc<Spec>,
}

impl Running {
    /// Serves clients on this thread until stopped; checkpoints every
    /// `checkpoint_every` on another; changes role when the node says so
    /// (a failover) on a third.
    pub fn serve(
        mut self,
        checkpoint_every: Option<Duration>,
        logger: Logger,
    ) -> std::io::Result<()> {
        let (l, tls) = (self.listener.take(), self.tls_listener.take());
        assert!(l.is_some() || tls.is_some(), "served once");
        if let Some(every) = checkpoint_every {
            let server = self.server.clone();
            let logger = logger.clone();
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
        let (server, spec) = (self.server.clone(), self.spec.clone());
        std::thread::spawn(move || watch_role(&server, &spec));
        self.server.serve_on(l, tls)
    }
}

/// What building a node (at start, or on a role change) needs.
struct Spec {
    o: ServeOptions,
    id: NodeIdentity,
    logger: Logger,
    store: crate::kv::Shared,
    /// Loaded once at start (a bad file fails the start, not a session).
    partner_tls: Option<PartnerTls>,
    witness_tls: Option<WitnessTls>,
}

/// The partner and witness TLS configurations from their files.
fn load_tls(o: &ServeOptions) -> Result<(Option<PartnerTls>, Option<WitnessTls>), String> {
    let Some(f) = &o.partner_tls else {
        return Ok((None, None));
    };
    let id = crate::tls::identity(
        [
            "--partner-tls-cert",
            "--partner-tls-key",
            "--partner-tls-ca",
        ],
        &f.cert,
        &f.key,
        &f.ca,
    )?;
    let partner = PartnerTls::new(&id, f.server_name.as_deref())?;
    let witness = match (&o.witness_tls_ca, o.witness) {
        (Some(ca), Some(addr)) => {
            let ca_pem = crate::tls::read_cert_file("--witness-tls-ca", ca)?;
            let shown = format!("--witness-tls-ca {}", ca.display());
            let wid = id.with_ca(&ca_pem, &shown)?;
            let server_name = match &o.witness_tls_server_name {
                Some(n) => mirrorlog_engine::transport::tls::server_name(n)?,
                None => rustls::pki_types::ServerName::IpAddress(addr.ip().into()),
            };
            Some(WitnessTls {
                client: wid.client_config()?,
                server_name,
            })
        }
        _ => None,
    };
    Ok((Some(partner), witness))
}

impl Spec {
    fn config(&self) -> Result<NodeConfig, String> {
        let o = &self.o;
        let mut cfg = NodeConfig::new(&o.dir, self.id.clone());
        cfg.safety = o.safety;
        if let Some(b) = o.segment_bytes {
            cfg.log.segment_bytes = b;
            cfg.log
                .validate()
                .map_err(|e| format!("--segment-bytes {b}: {e}"))?;
        }
        cfg.transport = o.transport;
        cfg.logger = self.logger.clone();
        cfg.session.partner_timeout_ms = o.partner_timeout_ms;
        cfg.session.heartbeat_ms = (o.partner_timeout_ms / 10).clamp(5, 100);
        // A mirror whose log is gone here is reseeded from the newest
        // checkpoint.
        let dir = o.dir.clone();
        cfg.snapshots = Some(Arc::new(move || crate::checkpoint::newest_raw(&dir)));
        cfg.witness = o.witness.map(|addr| WitnessLink {
            addr,
            name: o.partner.to_string(),
            auto_failover: o.auto_failover && o.safety == Safety::Full,
            tls: self.witness_tls.clone(),
        });
        cfg.partner_tls = self.partner_tls.clone();
        Ok(cfg)
    }

    /// Starts as principal (of `epoch` if granted by a failover) and
    /// brings the store up to the log: from what it reflects now (after a
    /// failover: what the mirror applied), or from the newest checkpoint.
    fn principal(&self, epoch: Option<u64>, fresh: bool) -> Result<Principal, PrincipalError> {
        let cfg = self.config().map_err(PrincipalError::Other)?;
        let p = match epoch {
            Some(e) => Principal::start_in_epoch(cfg, self.o.partner, e),
            None => Principal::start(cfg, self.o.partner),
        }
        .map_err(PrincipalError::Node)?;
        self.catch_up_store(&p, fresh)
            .map_err(PrincipalError::Other)?;
        Ok(p)
    }

    /// Brings the store up to the principal's log: from what it reflects
    /// now, or (`fresh`) from the newest checkpoint.
    fn catch_up_store(&self, p: &Principal, fresh: bool) -> Result<(), String> {
        let mut st = self.store.write().expect("store");
        if fresh {
            st.load_newest_checkpoint(&self.o.dir, p.log().start_lsn(), |w| {
                self.logger.line(&format!("mirrorlog: {w}"))
            });
        }
        let log = p.log();
        let from = st.lsn;
        if from < log.start_lsn() || from > log.written_lsn() {
            return Err(format!(
                "the store (checkpoint) at LSN {from} does not fit the log ({}..{}); restore the log or remove {}",
                log.start_lsn(),
                log.written_lsn(),
                crate::checkpoint::dir(&self.o.dir).display()
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
        Ok(())
    }

    /// Starts as mirror of the principal at `principal`: the store is the
    /// newest checkpoint (or empty), and the applier goes on from there.
    fn mirror(&self, principal: SocketAddr) -> Result<Mirror<KvApplier>, String> {
        let cfg = self.config()?;
        let from = self
            .store
            .write()
            .expect("store")
            .load_newest_checkpoint(&self.o.dir, 0, |w| {
                self.logger.line(&format!("mirrorlog: {w}"))
            });
        let applier = KvApplier {
            store: self.store.clone(),
            dir: Some(self.o.dir.clone()),
        };
        Mirror::start(cfg, principal, applier, from).map_err(|e| e.to_string())
    }
}

/// Why this node could not start as principal: the node's own error (the
/// witness's refusal among them, which the caller branches on), or the
/// configuration or the store.
#[derive(Debug)]
enum PrincipalError {
    Node(NodeError),
    Other(String),
}

impl std::fmt::Display for PrincipalError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PrincipalError::Node(e) => write!(f, "{e}"),
            PrincipalError::Other(e) => f.write_str(e),
        }
    }
}

/// With a witness: who is principal now, as the witness says (retrying
/// while it is unreachable, for up to a minute).
fn witness_says(spec: &Spec, witness: SocketAddr) -> Result<Option<String>, String> {
    let mut c =
        WitnessClient::new(witness, spec.id.secret.clone()).with_tls(spec.witness_tls.clone());
    let until = std::time::Instant::now() + Duration::from_secs(60);
    let mut said = false;
    loop {
        match c.call(
            &Request::Query {
                database_id: spec.id.database_id,
            },
            Duration::from_secs(1),
        ) {
            Ok(Reply::State { principal, .. }) => return Ok(principal),
            Ok(Reply::Refused { why, .. }) => return Err(format!("the witness refused: {why}")),
            Ok(other) => return Err(format!("the witness answered {other:?}")),
            Err(e) if std::time::Instant::now() >= until => {
                return Err(format!("no answer from the witness at {witness}: {e}"))
            }
            Err(e) => {
                if !said {
                    said = true;
                    spec.logger
                        .line(&format!("mirrorlog: waiting for the witness: {e}"));
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

/// Changes role when the node says so: a mirror the witness (or forced
/// service, or a handover) made principal starts as principal of its
/// epoch; a principal that handed over or was deposed rejoins as mirror.
fn watch_role(server: &Arc<Server>, spec: &Spec) {
    loop {
        std::thread::sleep(Duration::from_millis(2));
        let node = server.node();
        match &*node {
            Node::Mirror(m) => {
                let Some(p) = m.promoted() else { continue };
                drop(node);
                let why = format!("becoming principal of epoch {}", p.epoch);
                spec.logger.line(&format!("mirrorlog: {why}"));
                let r = server.switch(&why, None, |old| {
                    let Node::Mirror(m) = old else {
                        unreachable!("checked above")
                    };
                    // The partner address may still be held: on the plain
                    // pair the old principal listens on this very address
                    // until it has left its role. Wait for it, retrying
                    // with backoff, the attempts shown in the status.
                    wait_until_listenable(server, spec, &why);
                    let (principal, _applier, _) = m
                        .into_principal(spec.o.partner)
                        .map_err(|e| e.to_string())?;
                    spec.catch_up_store(&principal, false)?;
                    Ok(Node::Principal(principal))
                });
                match r {
                    Ok(()) => spec.logger.line(&format!(
                        "mirrorlog: serving as principal of epoch {} (clients may write here now)",
                        p.epoch
                    )),
                    Err(e) => spec
                        .logger
                        .line(&format!("mirrorlog: could not become principal: {e}")),
                }
            }
            Node::Principal(p) => {
                let deposed = p.deposed();
                if deposed.is_none() && !p.resigned() {
                    continue;
                }
                // Follow whom the witness named, else the peer; on the
                // plain pair (no witness, no peer) the new principal takes
                // over the one partner address both share, once this node
                // has let go of it.
                let plain = spec.o.witness.is_none() && spec.o.peer.is_none();
                let follow = deposed
                    .as_deref()
                    .and_then(|n| n.parse::<SocketAddr>().ok())
                    .or(spec.o.peer)
                    .or(plain.then_some(spec.o.partner));
                let Some(follow) = follow else {
                    continue;
                };
                if deposed.is_none() && p.status().state != MirroringState::Disconnected {
                    // Resigned, the handover not sent yet: wait for it.
                    continue;
                }
                if follow == spec.o.partner && deposed.is_some() {
                    // Deposed in favour of this very node: a claim of an
                    // earlier start of it, delayed in the network, was
                    // granted a newer epoch. Nobody else is principal:
                    // claim again (a new start, a new claim id).
                    drop(node);
                    let why = "claiming again (a stale claim of this node deposed it)";
                    spec.logger.line(&format!("mirrorlog: {why}"));
                    let r = server.switch(why, None, |old| {
                        drop(old);
                        spec.principal(None, true)
                            .map(Node::Principal)
                            .map_err(|e| e.to_string())
                    });
                    if let Err(e) = r {
                        spec.logger
                            .line(&format!("mirrorlog: could not claim again: {e}"));
                    }
                    continue;
                }
                drop(node);
                let why = format!("rejoining as mirror of {follow}");
                spec.logger.line(&format!("mirrorlog: {why}"));
                let hint = spec.o.peer_clients.clone().or_else(|| {
                    // The plain pair's mirror named this node's clients; this
                    // node knows its new principal's only from its flag.
                    plain.then(|| spec.o.principal_clients.clone()).flatten()
                });
                let r = server.switch(&why, hint, |old| {
                    drop(old);
                    spec.mirror(follow).map(Node::Mirror)
                });
                if let Err(e) = r {
                    spec.logger
                        .line(&format!("mirrorlog: could not rejoin as mirror: {e}"));
                }
            }
            Node::Switching(_) => {}
        }
    }
}

/// Backoff of a role change waiting for its partner address: from the
/// first to the most, doubling.
const LISTEN_RETRY_FIRST: Duration = Duration::from_millis(20);
const LISTEN_RETRY_MAX: Duration = Duration::from_secs(2);

/// Waits until this node can listen on its partner address, trying with
/// backoff; each failure is logged (the first and then every tenth) and
/// shown as the role change's reason (status `last_error`, INFO
/// `mirroring_switch`). It never gives up: the grant is taken, and the
/// only way on is to serve it (an operator can free the address, or stop
/// this node and force service elsewhere).
fn wait_until_listenable(server: &Server, spec: &Spec, why: &str) {
    let mut backoff = LISTEN_RETRY_FIRST;
    let mut attempt = 0u64;
    loop {
        attempt += 1;
        match std::net::TcpListener::bind(spec.o.partner) {
            Ok(l) => {
                drop(l);
                if attempt > 1 {
                    spec.logger.line(&format!(
                        "mirrorlog: listening on {} is possible again (attempt {attempt})",
                        spec.o.partner
                    ));
                }
                return;
            }
            Err(e) => {
                let note = format!(
                    "{why}: listening for the mirror on {} failed (attempt {attempt}: {e}); retrying in {} ms",
                    spec.o.partner,
                    backoff.as_millis()
                );
                if attempt == 1 || attempt.is_multiple_of(10) {
                    spec.logger.line(&format!("mirrorlog: {note}"));
                }
                server.note_switching(&note);
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(LISTEN_RETRY_MAX);
            }
        }
    }
}

/// Starts the node and binds the client port.
pub fn start(o: &ServeOptions, logger: Logger) -> Result<Running, String> {
    start_with_io(o, IoMode::default(), logger)
}

/// [`start`], serving clients as `io` says.
pub fn start_with_io(o: &ServeOptions, io: IoMode, logger: Logger) -> Result<Running, String> {
    if o.password_on_command_line {
        logger.line(
            "mirrorlog: warning: --password on the command line is visible to other local users (ps, /proc/PID/cmdline); use --password-file FILE (mode 0600) instead",
        );
    }
    mirrorlog_engine::private::create_dir_all(&o.dir)
        .map_err(|e| format!("creating {}: {e}", o.dir.display()))?;
    if let Some(line) = mirrorlog_engine::private::tighten_and_say(&o.dir, "mirrorlog") {
        logger.line(&line);
    }
    // Before anything else needs room: what failed checkpoints left.
    for t in crate::checkpoint::remove_temporaries(&o.dir) {
        logger.line(&format!(
            "mirrorlog: removed checkpoints/{t}, left by a checkpoint that failed or was interrupted"
        ));
    }
    let secret = Secret::load(&o.secret_file)
        .map_err(|e| format!("--secret-file {}: {e}", o.secret_file.display()))?;
    if let Some(w) = secret.entropy_warning() {
        tracing::warn!("--secret-file {}: {w}", o.secret_file.display());
    }
    let id = NodeIdentity {
        database_id: o.database_id,
        secret,
    };
    // The client listeners: plaintext unless --port 0, TLS with --tls-port
    // (its certificate and key checked before anything starts).
    let listener = match o.client_tls.as_ref().is_some_and(|t| !t.plaintext_too) {
        true => None,
        false => Some(
            std::net::TcpListener::bind(o.client)
                .map_err(|e| format!("listening for clients on {}: {e}", o.client))?,
        ),
    };
    let (tls_config, tls_listener) = match &o.client_tls {
        None => (None, None),
        Some(t) => {
            let config = crate::tls::server_config(&t.files)?;
            let l = std::net::TcpListener::bind(t.addr)
                .map_err(|e| format!("listening for TLS clients on {}: {e}", t.addr))?;
            (Some(config), Some(l))
        }
    };
    let tls_addr = match &tls_listener {
        Some(l) => Some(l.local_addr().map_err(|e| e.to_string())?),
        None => None,
    };
    let client_addr = match &listener {
        Some(l) => l.local_addr().map_err(|e| e.to_string())?,
        None => tls_addr.expect("a TLS listener without the plaintext one"),
    };
    let (partner_tls, witness_tls) = load_tls(o)?;
    let spec = Arc::new(Spec {
        o: o.clone(),
        id,
        logger,
        store: crate::kv::Shared::default(),
        partner_tls,
        witness_tls,
    });
    spec.config()?;
    // The role: with a witness, whatever it records; else the flag.
    let follow = match o.witness {
        None => (!o.principal).then_some(o.partner),
        Some(w) => {
            let me = o.partner.to_string();
            match witness_says(&spec, w)? {
                Some(p) if p == me => None,
                None if o.principal => None,
                Some(p) => Some(p.parse::<SocketAddr>().map_err(|_| {
                    format!("the witness names {p:?} as principal, which is not an address")
                })?),
                None => o.peer,
            }
        }
    };
    let (node, partner_addr, hint) = match follow {
        None => match spec.principal(None, true) {
            Ok(p) => {
                let addr = p.local_addr();
                (Node::Principal(p), addr, None)
            }
            // Another node claimed first: follow it.
            Err(
                e @ PrincipalError::Node(NodeError::NotPrincipal {
                    refusal: Some(RefusalCode::OtherPrincipal),
                    ..
                }),
            ) if o.witness.is_some() => {
                let peer = o.peer.expect("checked with --witness");
                spec.logger.line(&format!("mirrorlog: {e}"));
                (
                    Node::Mirror(spec.mirror(peer)?),
                    peer,
                    o.peer_clients.clone(),
                )
            }
            Err(e) => return Err(e.to_string()),
        },
        Some(principal) => (
            Node::Mirror(spec.mirror(principal)?),
            principal,
            if o.witness.is_some() {
                o.peer_clients.clone()
            } else {
                o.principal_clients.clone()
            },
        ),
    };
    let opts = ServerOptions {
        io,
        max_clients: o.max_clients,
        idle_timeout: o.idle_timeout,
        password: o.password.clone(),
        principal_hint: hint,
        node_dir: Some(o.dir.clone()),
        limits: o.limits,
        retention_max_bytes: o.retention_max_bytes,
        output: o.output,
        command_timeout: o.command_timeout,
        read_barrier: o.read_barrier,
        tls: tls_config,
    };
    if let Err(e) = crate::server::raise_fd_limit(o.max_clients) {
        tracing::warn!("{e}");
    }
    Ok(Running {
        server: Server::new(node, spec.store.clone(), opts),
        client_addr,
        tls_addr,
        partner_addr,
        listener,
        tls_listener,
        spec,
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
        // "mirrorlog: x" -> "x"; "mirrorlog[mirror]: x" keeps its tag.
        let s = s.strip_prefix(": ").unwrap_or(s);
        let lower = s.to_ascii_lowercase();
        if [
            "refused",
            "failed",
            "unavailable",
            "torn tail",
            "bound reached",
            "unusable",
            "error",
            "warning",
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
