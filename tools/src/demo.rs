//! `mirrorlog demo`: the whole story on this machine, in about half a minute.
//!
//! Starts a principal and a mirror (`mirrorlog serve`, as child processes)
//! on 127.0.0.1 in a temporary directory, in safety full; drives a write
//! workload from several clients and records every acknowledged write;
//! SIGKILLs the principal; fails over by hand (the witness and automatic
//! failover are still to come): the mirror is stopped and restarted as the
//! principal of a new epoch on its own log; then reads every acknowledged
//! write back from it and says whether any is missing. Cleans up at the
//! end, and on Ctrl-C.

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
        let exe = std::env::current_exe().map_err(|e| format!("finding this binary: {e}"))?;
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let child = Command::new(exe)
            .arg("serve")
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
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
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

fn demo(o: &Opts, dir: &Path) -> Result<(), String> {
    let secret = secret_file(dir)?;
    // A client password of its own (not derived from the partner secret).
    let mut pw = [0u8; 8];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut pw))
        .map_err(|e| format!("reading /dev/urandom: {e}"))?;
    let password = pw.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let password = PASSWORD.get_or_init(|| password).clone();
    let (p_port, m_port, partner) = (free_port()?, free_port()?, free_port()?);
    let common = |role: &str, sub: &str, port: u16| -> Vec<String> {
        vec![
            "--role".into(),
            role.into(),
            "--dir".into(),
            dir.join(sub).display().to_string(),
            "--secret-file".into(),
            secret.display().to_string(),
            "--port".into(),
            port.to_string(),
            "--database-id".into(),
            "demo".into(),
            "--password".into(),
            password.clone(),
        ]
    };
    println!("mirrorlog demo: a principal and a mirror on 127.0.0.1, safety full (a write is acknowledged once both have it on disk)");
    let mut p_args = common("principal", "principal", p_port);
    p_args.extend(["--partner".into(), format!("127.0.0.1:{partner}")]);
    let mut principal = Node::start("principal", dir, &p_args)?;
    let mut m_args = common("mirror", "mirror", m_port);
    m_args.extend([
        "--partner".into(),
        format!("127.0.0.1:{partner}"),
        "--principal-clients".into(),
        format!("127.0.0.1:{p_port}"),
    ]);
    let mut mirror = Node::start("mirror", dir, &m_args)?;
    wait_for(
        "the mirror to synchronize",
        Duration::from_secs(20),
        &principal,
        || info_field(p_port, "mirroring_state").as_deref() == Some("synchronized"),
    )?;
    println!(
        "  principal: redis-cli -p {p_port} -a {password}      mirror (read-only): redis-cli -p {m_port} -a {password}"
    );
    println!(
        "\n1. {} clients write for {} s; every acknowledged write is recorded",
        o.clients, o.seconds
    );
    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let count = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let errors: Arc<Mutex<Vec<String>>> = Arc::default();
    let workers: Vec<_> = (0..o.clients)
        .map(|c| {
            let (acked, count, stop, errors) =
                (acked.clone(), count.clone(), stop.clone(), errors.clone());
            std::thread::spawn(move || {
                let mut client = match connect(p_port, Duration::from_secs(5)) {
                    Ok(cl) => cl,
                    Err(e) => {
                        errors.lock().expect("errors").push(e.to_string());
                        return;
                    }
                };
                let mut i = 0u64;
                while !stop.load(Ordering::Acquire) {
                    let (k, v) = (
                        format!("user:{c}:{i}"),
                        format!("balance={}", i * 7 + c as u64),
                    );
                    match client.call(&[b"SET", k.as_bytes(), v.as_bytes()]) {
                        Ok(Reply::Simple(s)) if s == "OK" => {
                            acked.lock().expect("acked").push((k, v));
                            count.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(other) => {
                            errors.lock().expect("errors").push(format!("{other:?}"));
                            return;
                        }
                        // The principal died mid-request: not acknowledged.
                        Err(_) => return,
                    }
                    i += 1;
                }
            })
        })
        .collect();
    let began = Instant::now();
    let run_for = Duration::from_secs_f64(o.seconds);
    while began.elapsed() < run_for {
        if interrupted().is_err() {
            stop.store(true, Ordering::Release);
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
        let n = count.load(Ordering::Relaxed);
        let done = (began.elapsed().as_secs_f64() / o.seconds).min(1.0);
        let bar = "#".repeat((done * 30.0) as usize);
        eprint!(
            "\r   [{bar:<30}] {n} writes acknowledged, {:.0}/s   ",
            n as f64 / began.elapsed().as_secs_f64()
        );
    }
    eprintln!();
    interrupted()?;
    println!("\n2. the principal is killed (SIGKILL) while the clients are still writing");
    principal.kill();
    stop.store(true, Ordering::Release);
    for w in workers {
        let _ = w.join();
    }
    if let Some(e) = errors.lock().expect("errors").first() {
        return Err(format!("a client got an unexpected reply: {e}"));
    }
    let acked = std::mem::take(&mut *acked.lock().expect("acked"));
    println!("   {} writes had been acknowledged", acked.len());
    println!(
        "\n3. failover (manual; automatic failover with a witness is not built yet): the mirror\n   is stopped and restarted as principal of a new epoch on its own log"
    );
    mirror.kill();
    let new_port = free_port()?;
    let mut np_args = common("principal", "mirror", new_port);
    np_args.extend(["--partner".into(), format!("127.0.0.1:{}", free_port()?)]);
    let new_principal = Node::start("new principal", dir, &np_args)?;
    wait_for(
        "the new principal",
        Duration::from_secs(20),
        &new_principal,
        || info_field(new_port, "role").as_deref() == Some("master"),
    )?;
    println!("\n4. every acknowledged write is read back from the new principal (port {new_port})");
    let mut c = connect(new_port, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    let mut missing = 0;
    for (k, v) in &acked {
        interrupted()?;
        match c.call(&[b"GET", k.as_bytes()]).map_err(|e| e.to_string())? {
            Reply::Bulk(got) if got == v.as_bytes() => {}
            other => {
                missing += 1;
                if missing <= 5 {
                    println!("   MISSING {k}: expected {v:?}, got {other:?}");
                }
            }
        }
    }
    println!(
        "   {} of {} acknowledged writes present{}",
        acked.len() - missing,
        acked.len(),
        if missing == 0 { ": nothing lost" } else { "" }
    );
    println!("\n5. the new principal's status (it runs exposed: its mirror is gone):\n");
    for l in status_text(new_port).lines() {
        println!("   {l}");
    }
    if missing > 0 {
        return Err(format!("{missing} acknowledged writes were lost"));
    }
    Ok(())
}
