//! `mirrorlog demo`: the whole story on this machine, in about half a minute.
//!
//! Starts a witness, a principal and a mirror (`mirrorlog witness` and
//! `mirrorlog serve`, as child processes) on 127.0.0.1 in a temporary
//! directory, in safety full; drives a write workload from several clients
//! and records every acknowledged write; SIGKILLs the principal while they
//! write; the mirror takes over on its own once the witness grants it the
//! next epoch, and the clients carry on there; the old principal restarts
//! with its original command and rejoins as mirror; then every
//! acknowledged write is read back from the new principal and from the
//! rejoined mirror. Cleans up at the end, and on Ctrl-C.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::client::Client;
use crate::resp::Reply;

pub const DEMO_USAGE: &str = "\
mirrorlog demo [--seconds N] [--clients N] [--keep]

    --seconds N   how long the workload runs before the principal is killed
                  (default 5)
    --clients N   concurrent clients (default 8)
    --keep        keep the temporary directory (its path is printed)
";

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn interrupted() -> Result<(), String> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        Err("interrupted".into())
    } else {
        Ok(())
    }
}

struct Opts {
    seconds: f64,
    clients: usize,
    keep: bool,
}

fn parse(args: &[String]) -> Result<Opts, String> {
    let mut o = Opts {
        seconds: 5.0,
        clients: 8,
        keep: false,
    };
    let mut it = args.iter();
    while let Some(f) = it.next() {
        match f.as_str() {
            "--seconds" => {
                let v = it.next().ok_or("--seconds needs a value")?;
                o.seconds = v
                    .parse()
                    .ok()
                    .filter(|s: &f64| *s > 0.0 && *s <= 3600.0)
                    .ok_or_else(|| format!("--seconds {v:?}: expected 0 < N <= 3600"))?;
            }
            "--clients" => {
                let v = it.next().ok_or("--clients needs a value")?;
                o.clients = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=1024).contains(n))
                    .ok_or_else(|| format!("--clients {v:?}: expected 1 to 1024"))?;
            }
            "--keep" => o.keep = true,
            other => return Err(format!("unknown option {other:?}")),
        }
    }
    Ok(o)
}

/// A `mirrorlog serve` child process.
struct Node {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Node {
    fn start(name: &'static str, dir: &Path, args: &[String]) -> Result<Node, String> {
        Node::spawn(name, dir, "serve", args)
    }

    fn spawn(name: &'static str, dir: &Path, cmd: &str, args: &[String]) -> Result<Node, String> {
        let exe = std::env::current_exe().map_err(|e| format!("finding this binary: {e}"))?;
        let log = dir.join(format!("{}.log", name.replace(' ', "-")));
        let out = mirrorlog_engine::private::file_options()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| format!("{}: {e}", log.display()))?;
        let child = Command::new(exe)
            .arg(cmd)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out.try_clone().map_err(|e| e.to_string())?)
            .stderr(out)
            .spawn()
            .map_err(|e| format!("starting the {name}: {e}"))?;
        Ok(Node { name, child, log })
    }

    fn kill(&mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A free port, never one this process handed out before (the kernel may
/// give a just-released port again, and the demo's nodes must not share).
fn free_port() -> Result<u16, String> {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().map_err(|_| "port list lock poisoned")?;
    loop {
        let l = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        let port = l.local_addr().map_err(|e| e.to_string())?.port();
        if !given.contains(&port) {
            given.push(port);
            return Ok(port);
        }
    }
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn wait_for(
    what: &str,
    timeout: Duration,
    node: &Node,
    mut f: impl FnMut() -> bool,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    while !f() {
        interrupted()?;
        if Instant::now() >= deadline {
            return Err(format!(
                "timed out waiting for {what}; the {}'s output:\n{}",
                node.name,
                node.output()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// The demo's client password (the servers require AUTH, as a real
/// deployment should).
static PASSWORD: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Connects and authenticates.
fn connect(port: u16, timeout: Duration) -> std::io::Result<Client> {
    let mut c = Client::connect(addr(port), timeout)?;
    if let Some(p) = PASSWORD.get() {
        match c.call(&[b"AUTH", p.as_bytes()])? {
            Reply::Simple(_) => {}
            other => return Err(std::io::Error::other(format!("AUTH: {other:?}"))),
        }
    }
    Ok(c)
}

fn info_field(port: u16, field: &str) -> Option<String> {
    let mut c = connect(port, Duration::from_secs(2)).ok()?;
    let Reply::Bulk(b) = c.call(&[b"INFO", b"replication"]).ok()? else {
        return None;
    };
    let text = String::from_utf8_lossy(&b).into_owned();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")).map(|v| v.to_string()))
}

fn status_text(port: u16) -> String {
    match connect(port, Duration::from_secs(2)).and_then(|mut c| c.call(&[b"MIRROR", b"STATUS"])) {
        Ok(Reply::Bulk(b)) => String::from_utf8_lossy(&b).into_owned(),
        other => format!("(no status: {other:?})"),
    }
}

pub fn run(args: &[String]) -> Result<(), String> {
    let o = parse(args).map_err(|e| format!("{e}\n\n{DEMO_USAGE}"))?;
    // SAFETY: installs a handler that only stores to an atomic.
    unsafe {
        libc::signal(
            libc::SIGINT,
            on_sigint as extern "C" fn(libc::c_int) as *const () as libc::sighandler_t,
        );
    }
    let dir = std::env::temp_dir().join(format!("mirrorlog-demo-{}", std::process::id()));
    mirrorlog_engine::private::create_dir_all(&dir)
        .map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let result = demo(&o, &dir);
    if o.keep {
        eprintln!("kept {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

fn secret_file(dir: &Path) -> Result<PathBuf, String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join("secret");
    let mut seed = [0u8; 24];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut seed))
        .map_err(|e| format!("reading /dev/urandom: {e}"))?;
    let hex: String = seed.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .and_then(|mut f| f.write_all(hex.as_bytes()))
        .map_err(|e| format!("writing {}: {e}", path.display()))?;
    Ok(path)
}

/// Reads every acknowledged write back from the node on `port`; returns
/// how many are missing (printing the first few).
fn check(port: u16, acked: &[(String, String)]) -> Result<usize, String> {
    let mut latest = std::collections::HashMap::new();
    for (k, v) in acked {
        latest.insert(k.as_str(), v.as_str());
    }
    let mut c = connect(port, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    let keys: Vec<&str> = latest.keys().copied().collect();
    let mut missing = 0;
    for chunk in keys.chunks(1000) {
        interrupted()?;
        let cmds: Vec<Vec<&[u8]>> = chunk
            .iter()
            .map(|k| vec![&b"GET"[..], k.as_bytes()])
            .collect();
        let replies = c.pipeline(&cmds).map_err(|e| e.to_string())?;
        for (k, r) in chunk.iter().zip(replies) {
            if r != Reply::Bulk(latest[k].as_bytes().to_vec()) {
                missing += 1;
                if missing <= 5 {
                    crate::outln!("   MISSING {k}: expected {:?}, got {r:?}", latest[k]);
                }
            }
        }
    }
    Ok(missing)
}

fn demo(o: &Opts, dir: &Path) -> Result<(), String> {
    let secret = secret_file(dir)?;
    // A client password of its own (not derived from the partner secret).
    let mut pw = [0u8; 8];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut pw))
        .map_err(|e| format!("reading /dev/urandom: {e}"))?;
    let password = pw.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let password = PASSWORD.get_or_init(|| password).clone();
    // In a file, not on the command line (where other users could read it).
    let password_file = dir.join("password");
    {
        use std::io::Write;
        mirrorlog_engine::private::file_options()
            .write(true)
            .create_new(true)
            .open(&password_file)
            .and_then(|mut f| f.write_all(password.as_bytes()))
            .map_err(|e| format!("writing {}: {e}", password_file.display()))?;
    }
    const TIMEOUT_MS: u64 = 1000;
    let (w_port, a_port, b_port, a_partner, b_partner) = (
        free_port()?,
        free_port()?,
        free_port()?,
        free_port()?,
        free_port()?,
    );
    let args =
        |role: &str, sub: &str, port: u16, me: u16, peer: u16, peer_port: u16| -> Vec<String> {
            [
                "--role",
                role,
                "--dir",
                &dir.join(sub).display().to_string(),
                "--secret-file",
                &secret.display().to_string(),
                "--port",
                &port.to_string(),
                "--database-id",
                "demo",
                "--password-file",
                &password_file.display().to_string(),
                "--witness",
                &format!("127.0.0.1:{w_port}"),
                "--partner",
                &format!("127.0.0.1:{me}"),
                "--peer",
                &format!("127.0.0.1:{peer}"),
                "--peer-clients",
                &format!("127.0.0.1:{peer_port}"),
                "--partner-timeout-ms",
                &TIMEOUT_MS.to_string(),
            ]
            .iter()
            .map(|s| s.to_string())
            .collect()
        };
    crate::outln!(
        "mirrorlog demo: a witness, a principal (A) and a mirror (B) on 127.0.0.1, safety full"
    );
    crate::outln!("  (a write is acknowledged once both partners have it on disk; partner timeout {TIMEOUT_MS} ms)");
    let _witness = Node::spawn(
        "witness",
        dir,
        "witness",
        &[
            "--dir".to_string(),
            dir.join("witness").display().to_string(),
            "--secret-file".into(),
            secret.display().to_string(),
            "--listen".into(),
            format!("127.0.0.1:{w_port}"),
            "--database-id".into(),
            "demo".into(),
            "--lease-ms".into(),
            TIMEOUT_MS.to_string(),
        ],
    )?;
    let a_args = args("principal", "a", a_port, a_partner, b_partner, b_port);
    let mut a = Node::start("node A", dir, &a_args)?;
    let _b = Node::start(
        "node B",
        dir,
        &args("mirror", "b", b_port, b_partner, a_partner, a_port),
    )?;
    wait_for("B to synchronize", Duration::from_secs(30), &a, || {
        info_field(a_port, "mirroring_state").as_deref() == Some("synchronized")
    })?;
    crate::outln!(
        "  A: redis-cli -p {a_port} -a {password}      B: redis-cli -p {b_port} -a {password}"
    );
    crate::outln!(
        "\n1. {} clients write for {} s; every acknowledged write is recorded",
        o.clients,
        o.seconds
    );
    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let count = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let errors: Arc<Mutex<Vec<String>>> = Arc::default();
    // Which node the clients last found writable (0: A, 1: B).
    let ports = [a_port, b_port];
    let workers: Vec<_> = (0..o.clients)
        .map(|c| {
            let (acked, count, stop, errors) =
                (acked.clone(), count.clone(), stop.clone(), errors.clone());
            std::thread::spawn(move || {
                let mut target = 0usize;
                let mut client: Option<Client> = None;
                let mut i = 0u64;
                while !stop.load(Ordering::Acquire) {
                    let cl = match &mut client {
                        Some(cl) => cl,
                        None => match connect(ports[target], Duration::from_secs(2)) {
                            Ok(cl) => client.insert(cl),
                            Err(_) => {
                                target = 1 - target;
                                std::thread::sleep(Duration::from_millis(20));
                                continue;
                            }
                        },
                    };
                    let (k, v) = (
                        format!("user:{c}:{i}"),
                        format!("balance={}", i * 7 + c as u64),
                    );
                    match cl.call(&[b"SET", k.as_bytes(), v.as_bytes()]) {
                        Ok(Reply::Simple(s)) if s == "OK" => {
                            acked.lock().expect("acked").push((k, v));
                            count.fetch_add(1, Ordering::Relaxed);
                            i += 1;
                        }
                        // Not the principal (READONLY), changing role
                        // (TRYAGAIN), or no quorum: not acknowledged; try
                        // the other node.
                        Ok(Reply::Error(e))
                            if e.starts_with("READONLY")
                                || e.starts_with("TRYAGAIN")
                                || e.contains("quorum")
                                || e.contains("handing over") =>
                        {
                            client = None;
                            target = 1 - target;
                            std::thread::sleep(Duration::from_millis(10));
                        }
                        Ok(other) => {
                            errors.lock().expect("errors").push(format!("{other:?}"));
                            return;
                        }
                        // The node died mid-request: not acknowledged.
                        Err(_) => {
                            client = None;
                            target = 1 - target;
                        }
                    }
                }
            })
        })
        .collect();
    let progress = |secs: f64| -> Result<(), String> {
        let began = Instant::now();
        let start_n = count.load(Ordering::Relaxed);
        while began.elapsed().as_secs_f64() < secs {
            interrupted()?;
            std::thread::sleep(Duration::from_millis(250));
            let n = count.load(Ordering::Relaxed);
            let done = (began.elapsed().as_secs_f64() / secs).min(1.0);
            let bar = "#".repeat((done * 30.0) as usize);
            eprint!(
                "\r   [{bar:<30}] {n} writes acknowledged, {:.0}/s   ",
                (n - start_n) as f64 / began.elapsed().as_secs_f64()
            );
        }
        eprintln!();
        Ok(())
    };
    let finish = |workers: Vec<std::thread::JoinHandle<()>>| {
        stop.store(true, Ordering::Release);
        for w in workers {
            let _ = w.join();
        }
    };
    if let Err(e) = progress(o.seconds) {
        finish(workers);
        return Err(e);
    }
    crate::outln!("\n2. A (the principal) is killed with SIGKILL while the clients are writing");
    let before = count.load(Ordering::Relaxed);
    let killed = Instant::now();
    a.kill();
    let took = loop {
        interrupted()?;
        if info_field(b_port, "role").as_deref() == Some("master")
            && count.load(Ordering::Relaxed) > before
        {
            break killed.elapsed();
        }
        if killed.elapsed() > Duration::from_secs(30) {
            finish(workers);
            return Err(format!(
                "B did not take over within 30 s; its output:\n{}",
                _b.output()
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let epoch = info_field(b_port, "mirroring_epoch").unwrap_or_default();
    crate::outln!(
        "   B took over automatically: principal of epoch {epoch}, first write acknowledged {:.0} ms after A died\n   (the witness granted the epoch once A's lease was certainly over; {} writes acknowledged by A)",
        took.as_secs_f64() * 1e3,
        before
    );
    crate::outln!("\n3. the clients carry on against B; A restarts with its original command and rejoins as B's mirror");
    let _a2 = Node::start("node A", dir, &a_args)?;
    let rejoined = wait_for(
        "A to rejoin and synchronize",
        Duration::from_secs(60),
        &_a2,
        || info_field(b_port, "mirroring_state").as_deref() == Some("synchronized"),
    );
    if let Err(e) = rejoined {
        finish(workers);
        return Err(e);
    }
    if let Err(e) = progress(o.seconds.min(3.0)) {
        finish(workers);
        return Err(e);
    }
    finish(workers);
    if let Some(e) = errors.lock().expect("errors").first() {
        return Err(format!("a client got an unexpected reply: {e}"));
    }
    let acked = std::mem::take(&mut *acked.lock().expect("acked"));
    crate::outln!("   {} writes had been acknowledged in all", acked.len());
    crate::outln!(
        "\n4. every acknowledged write is read back from B, the new principal (port {b_port})"
    );
    let missing = check(b_port, &acked)?;
    crate::outln!(
        "   {} of {} acknowledged writes present{}",
        acked.len() - missing,
        acked.len(),
        if missing == 0 { ": nothing lost" } else { "" }
    );
    crate::outln!("\n5. ... and from A, now B's mirror, once it applied everything");
    wait_for(
        "A to apply everything",
        Duration::from_secs(60),
        &_a2,
        || {
            let written = info_field(b_port, "master_repl_offset");
            written.is_some() && written == info_field(b_port, "mirror_applied_lsn")
        },
    )?;
    let missing_a = check(a_port, &acked)?;
    crate::outln!(
        "   {} of {} present on A",
        acked.len() - missing_a,
        acked.len()
    );
    crate::outln!("\n6. B's status:\n");
    for l in status_text(b_port).lines() {
        crate::outln!("   {l}");
    }
    if missing + missing_a > 0 {
        return Err(format!(
            "{} acknowledged writes were lost",
            missing.max(missing_a)
        ));
    }
    Ok(())
}
