//! `mirrorlog status`: a node's mirroring status over its client port, once
//! or as a live view (like SQL Server's Database Mirroring Monitor).

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use crate::client::Client;
use crate::resp::Reply;

pub const STATUS_USAGE: &str = "\
mirrorlog status [--host H] [--port N] [--password P] [--json] [--watch [SECS]]

    --host H        the node's client address (default 127.0.0.1)
    --port N        its client port (default 6379)
    --password P    if the node requires AUTH
    --json          one JSON object (role, state, LSNs, queues, latency)
    --watch [SECS]  refresh every SECS seconds (default 1) until Ctrl-C
";

struct Opts {
    addr: SocketAddr,
    password: Option<String>,
    json: bool,
    watch: Option<Duration>,
}

fn parse(args: &[String]) -> Result<Opts, String> {
    let mut host = "127.0.0.1".to_string();
    let mut port = 6379u16;
    let mut password = None;
    let mut json = false;
    let mut watch = None;
    let mut i = 0;
    while i < args.len() {
        let f = args[i].as_str();
        let value = |i: usize| args.get(i + 1).cloned().ok_or(format!("{f} needs a value"));
        match f {
            "--host" => {
                host = value(i)?;
                i += 1;
            }
            "--port" => {
                let v = value(i)?;
                port = v
                    .parse()
                    .map_err(|_| format!("--port {v:?}: expected a port number"))?;
                i += 1;
            }
            "--password" => {
                password = Some(value(i)?);
                i += 1;
            }
            "--json" => json = true,
            "--watch" => {
                let secs = match args.get(i + 1).and_then(|v| v.parse::<f64>().ok()) {
                    Some(s) => {
                        i += 1;
                        s
                    }
                    None => 1.0,
                };
                if !(0.05..=3600.0).contains(&secs) {
                    return Err(format!("--watch {secs}: expected 0.05 to 3600 seconds"));
                }
                watch = Some(Duration::from_secs_f64(secs));
            }
            other => return Err(format!("unknown option {other:?}")),
        }
        i += 1;
    }
    let addr = format!("{host}:{port}")
        .to_socket_addrs()
        .map_err(|e| format!("{host}:{port}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host}:{port}: no address"))?;
    Ok(Opts {
        addr,
        password,
        json,
        watch,
    })
}

fn fetch(o: &Opts) -> Result<String, String> {
    let mut c = Client::connect(o.addr, Duration::from_secs(3))
        .map_err(|e| format!("connecting to {}: {e}", o.addr))?;
    if let Some(p) = &o.password {
        match c
            .call(&[b"AUTH", p.as_bytes()])
            .map_err(|e| e.to_string())?
        {
            Reply::Simple(_) => {}
            other => return Err(format!("AUTH: {other:?}")),
        }
    }
    let cmd: &[&[u8]] = if o.json {
        &[b"MIRROR", b"STATUS", b"JSON"]
    } else {
        &[b"MIRROR", b"STATUS"]
    };
    match c.call(cmd).map_err(|e| e.to_string())? {
        Reply::Bulk(b) => Ok(String::from_utf8_lossy(&b).into_owned()),
        Reply::Error(e) => Err(e),
        other => Err(format!("unexpected reply {other:?}")),
    }
}

pub fn run(args: &[String]) -> Result<(), String> {
    let o = parse(args).map_err(|e| format!("{e}\n\n{STATUS_USAGE}"))?;
    match o.watch {
        None => {
            crate::outln!("{}", fetch(&o)?.trim_end());
            Ok(())
        }
        Some(every) => loop {
            if crate::out::closed() {
                // The reader went away (`--watch | head`): stop quietly.
                return Ok(());
            }
            let text = fetch(&o).unwrap_or_else(|e| format!("(unreachable: {e})"));
            if o.json {
                crate::outln!("{}", text.trim_end());
            } else {
                // Clear the screen and home the cursor, then redraw.
                crate::out!("\x1b[2J\x1b[H{} — every {:?}\n\n{}", o.addr, every, text);
            }
            std::thread::sleep(every);
        },
    }
}

/// The flags the admin commands share, after each one's first line.
macro_rules! admin_flags {
    () => {
        "
    --host H        the node's client address (default 127.0.0.1)
    --port N        its client port (default 6379)
    --password P    if the node requires AUTH
"
    };
}

pub const CHECKPOINT_USAGE: &str = concat!(
    "\
mirrorlog checkpoint [--host H] [--port N] [--password P]

    Asks a node for a checkpoint now (MIRROR CHECKPOINT) and prints where.
",
    admin_flags!()
);

pub const FAILOVER_USAGE: &str = concat!(
    "\
mirrorlog failover [--host H] [--port N] [--password P]

    Manual failover, run on the principal (MIRROR FAILOVER): it stops taking
    writes, the mirror hardens everything, and the roles swap. Refused unless
    the mirror is SYNCHRONIZED. Loses nothing.
",
    admin_flags!()
);

pub const FORCE_SERVICE_USAGE: &str = concat!(
    "\
mirrorlog force-service [--host H] [--port N] [--password P]

    Forced service, run on the mirror when the principal is gone (MIRROR
    FORCE-SERVICE): it becomes principal of a new epoch and says how much of
    what the old principal wrote may be lost.
",
    admin_flags!()
);

/// `mirrorlog checkpoint`: asks the node for a checkpoint now.
pub fn checkpoint(args: &[String]) -> Result<String, String> {
    admin(args, "checkpoint", b"CHECKPOINT", CHECKPOINT_USAGE)
}

/// `mirrorlog failover`: MIRROR FAILOVER on the principal.
pub fn failover(args: &[String]) -> Result<String, String> {
    admin(args, "failover", b"FAILOVER", FAILOVER_USAGE)
}

/// `mirrorlog force-service`: MIRROR FORCE-SERVICE on the mirror.
pub fn force_service(args: &[String]) -> Result<String, String> {
    admin(args, "force-service", b"FORCE-SERVICE", FORCE_SERVICE_USAGE)
}

/// Runs `MIRROR <sub>` on the node the flags name and returns its answer.
fn admin(args: &[String], what: &str, sub: &[u8], usage: &str) -> Result<String, String> {
    let o = parse(args).map_err(|e| format!("{e}\n\n{usage}"))?;
    if o.json || o.watch.is_some() {
        return Err(format!("{what} takes --host, --port and --password only"));
    }
    let mut c = Client::connect(o.addr, Duration::from_secs(3))
        .map_err(|e| format!("connecting to {}: {e}", o.addr))?;
    if let Some(p) = &o.password {
        match c
            .call(&[b"AUTH", p.as_bytes()])
            .map_err(|e| e.to_string())?
        {
            Reply::Simple(_) => {}
            other => return Err(format!("AUTH: {other:?}")),
        }
    }
    // A checkpoint copies the whole store, a failover drains the send
    // queue: the client's timeout allows for it.
    match c.call(&[b"MIRROR", sub]).map_err(|e| e.to_string())? {
        Reply::Bulk(b) => Ok(String::from_utf8_lossy(&b).into_owned()),
        Reply::Error(e) => Err(e),
        other => Err(format!("unexpected reply {other:?}")),
    }
}
