//! Process lifecycle for the peers comparison: the servers we start
//! (PostgreSQL, Redis) are owned by [`Spawned`] guards that stop them by PID
//! when dropped, whichever way the run ends; Ctrl-C only raises a flag
//! ([`interrupted`]) so the run can stop between cases and let those guards
//! clean up.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How long a stopped server gets to shut down cleanly before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// How much of the end of a log file [`Spawned::log_tail`] reads.
const LOG_TAIL_BYTES_MAX: u64 = 16 << 10;

/// A child process that is stopped when the guard is dropped: `stop_signal`
/// by PID, up to [`STOP_GRACE`] to exit, then SIGKILL by PID; always reaped.
///
/// The child runs in a process group of its own, so a Ctrl-C typed in the
/// terminal (delivered to the foreground process group) reaches only the
/// benchmark, which then stops the child in order through this guard.
pub struct Spawned {
    name: String,
    /// `None` once reaped.
    child: Option<Child>,
    pid: u32,
    log_path: PathBuf,
    stop_signal: libc::c_int,
}

impl Spawned {
    /// Starts `cmd` with stdout and stderr appended to `log_path` (created if
    /// missing) and stdin from /dev/null. `name` appears in messages, e.g.
    /// "postgres primary". `stop_signal` is what asks this program for a
    /// clean, prompt shutdown (SIGTERM for Redis; SIGINT, "fast shutdown",
    /// for PostgreSQL, whose SIGTERM waits for clients to disconnect).
    pub fn spawn(
        name: &str,
        cmd: &mut Command,
        log_path: &Path,
        stop_signal: libc::c_int,
    ) -> Result<Spawned, String> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(log_path)
            .map_err(|e| format!("{name}: creating log file {}: {e}", log_path.display()))?;
        let log_err = log
            .try_clone()
            .map_err(|e| format!("{name}: duplicating log file handle: {e}"))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .process_group(0)
            .spawn()
            .map_err(|e| format!("{name}: starting {:?}: {e}", cmd.get_program()))?;
        let pid = child.id();
        Ok(Spawned {
            name: name.to_string(),
            child: Some(child),
            pid,
            log_path: log_path.to_path_buf(),
            stop_signal,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The last `lines` lines of the child's log (stdout and stderr), for
    /// error messages. Never fails: a log that cannot be read says so.
    pub fn log_tail(&self, lines: usize) -> String {
        read_tail(&self.log_path, lines)
    }

    /// `Ok(())` while the child runs; an error naming its exit status and
    /// quoting its log once it has exited (a server that dies at start-up).
    pub fn check_running(&mut self) -> Result<(), String> {
        match self.try_exited()? {
            None => Ok(()),
            Some(status) => Err(format!(
                "{} (pid {}) exited with {status}; the end of its log {}:\n{}",
                self.name,
                self.pid,
                self.log_path.display(),
                self.log_tail(20)
            )),
        }
    }

    /// The exit status if the child has exited (and is now reaped).
    pub fn try_exited(&mut self) -> Result<Option<ExitStatus>, String> {
        let Some(child) = self.child.as_mut() else {
            return Err(format!(
                "{} (pid {}) was already stopped",
                self.name, self.pid
            ));
        };
        match child.try_wait() {
            Ok(Some(status)) => {
                self.child = None;
                Ok(Some(status))
            }
            Ok(None) => Ok(None),
            Err(e) => Err(format!("{} (pid {}): waiting: {e}", self.name, self.pid)),
        }
    }

    /// Stops the child now (what `Drop` does) and says how it went.
    pub fn stop(&mut self) -> Result<(), String> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let pid = self.pid;
        let name = &self.name;
        if let Ok(Some(_)) = child.try_wait() {
            return Ok(());
        }
        // The child is not reaped yet (we hold it), so `pid` still names our
        // child and cannot have been reused by another process.
        // The signal is repeated every second: a server may refuse a
        // shutdown it cannot do yet and not retry it by itself (Redis while
        // it writes its initial AOF). Repeating SIGTERM to Redis or SIGINT
        // (fast shutdown) to PostgreSQL changes nothing else.
        let start = Instant::now();
        let mut signals_sent = 0;
        while start.elapsed() < STOP_GRACE {
            if start.elapsed() >= Duration::from_secs(signals_sent) {
                signal(pid, self.stop_signal);
                signals_sent += 1;
            }
            match child.try_wait() {
                Ok(Some(_)) => return Ok(()),
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => return Err(format!("{name} (pid {pid}): waiting: {e}")),
            }
        }
        // `Child::kill` is SIGKILL to this PID.
        let killed = child.kill();
        let reaped = child.wait();
        match (killed, reaped) {
            (_, Err(e)) => Err(format!("{name} (pid {pid}): reaping after SIGKILL: {e}")),
            (Err(e), Ok(_)) => Err(format!("{name} (pid {pid}): SIGKILL: {e}")),
            (Ok(()), Ok(_)) => Err(format!(
                "{name} (pid {pid}) did not stop within {} s of signal {}; killed it (SIGKILL); \
                 the end of its log {}:\n{}",
                STOP_GRACE.as_secs(),
                self.stop_signal,
                self.log_path.display(),
                self.log_tail(10)
            )),
        }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("warning: {e}");
        }
    }
}

fn signal(pid: u32, sig: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // A PID of 0 or below would signal a whole process group (or every
    // process we may signal); a child's PID is always positive.
    assert!(pid > 0, "signalling pid {pid}");
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    // Failure (ESRCH: the child exited just now) is handled by the caller's
    // wait loop.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// A primary and its standby or replica. Fields drop in declaration
/// order: the secondary stops first, so the primary's shutdown never waits
/// on it.
pub struct Pair {
    pub secondary: Spawned,
    pub primary: Spawned,
}

impl Pair {
    /// The PIDs, primary first.
    pub fn pids(&self) -> Vec<u32> {
        vec![self.primary.pid(), self.secondary.pid()]
    }

    /// An error, quoting its log, if either server has exited.
    pub fn check_running(&mut self) -> Result<(), String> {
        self.primary.check_running()?;
        self.secondary.check_running()
    }

    /// The last `lines` lines of both servers' logs, primary first.
    pub fn log_tails(&self, lines: usize) -> String {
        [&self.primary, &self.secondary]
            .iter()
            .map(|p| {
                format!(
                    "{} log {}:\n{}",
                    p.name(),
                    p.log_path().display(),
                    p.log_tail(lines)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// The last `lines` lines of a text file (at most its last 16 KiB).
pub fn read_tail(path: &Path, lines: usize) -> String {
    let read = || -> std::io::Result<String> {
        let mut f = File::open(path)?;
        let len = f.metadata()?.len();
        let start = len.saturating_sub(LOG_TAIL_BYTES_MAX);
        f.seek(SeekFrom::Start(start))?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    };
    match read() {
        Ok(text) => tail_lines(&text, lines),
        Err(e) => format!("(could not read {}: {e})", path.display()),
    }
}

fn tail_lines(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    let from = all.len().saturating_sub(lines);
    all[from..].join("\n")
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(signal: libc::c_int) {
    // Only async-signal-safe work here: an atomic swap, signal(2), write(2).
    if INTERRUPTED.swap(true, Ordering::SeqCst) {
        // A second Ctrl-C: the default action from now on, so a third one
        // ends the run at once (the servers' guards do not run then).
        // SAFETY: signal(2) is async-signal-safe.
        unsafe {
            libc::signal(signal, libc::SIG_DFL);
        }
        let msg = b"\ninterrupted again: press Ctrl-C once more to end at once (servers may be left running)\n";
        // SAFETY: as below.
        unsafe {
            libc::write(2, msg.as_ptr().cast(), msg.len());
        }
    } else {
        let msg = b"\ninterrupted: stopping after the current case, then stopping the servers\n";
        // SAFETY: `msg` is a valid buffer of `msg.len()` bytes; write(2) is
        // async-signal-safe. A failed write only loses the message.
        unsafe {
            libc::write(2, msg.as_ptr().cast(), msg.len());
        }
    }
}

/// Makes SIGINT and SIGTERM set the flag [`interrupted`] reads instead of
/// ending the process, so the run stops between cases and the [`Spawned`]
/// guards stop the servers. Blocking calls restart (SA_RESTART): the current
/// operation finishes normally.
pub fn install_interrupt_handler() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: `action` is zero-initialised (a valid sigaction: empty
        // mask, no flags) and then given a handler of the type sigaction(2)
        // expects when SA_SIGINFO is not set; the handler only does
        // async-signal-safe work.
        let rc = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_interrupt as extern "C" fn(libc::c_int) as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(sig, &action, std::ptr::null_mut())
        };
        // sigaction fails only for an invalid signal or pointer.
        assert_eq!(rc, 0, "sigaction({sig}) failed");
    }
}

/// Whether SIGINT or SIGTERM arrived since [`install_interrupt_handler`].
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

#[cfg(test)]
/// A TCP port on 127.0.0.1 that was free a moment ago (the kernel picks it
/// for a listener we then close). Another process could take it before the
/// server binds it; the server then fails to start and says so in its log.
pub fn free_port() -> Result<u16, String> {
    let l = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .map_err(|e| format!("finding a free port on 127.0.0.1: {e}"))?;
    let port = l
        .local_addr()
        .map_err(|e| format!("finding a free port on 127.0.0.1: {e}"))?
        .port();
    Ok(port)
}

/// `n` distinct free ports (see [`free_port`]): the listeners are held until
/// all are chosen, so the kernel cannot hand out the same port twice.
pub fn free_ports(n: usize) -> Result<Vec<u16>, String> {
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        let l = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .map_err(|e| format!("finding a free port on 127.0.0.1: {e}"))?;
        held.push(l);
    }
    held.iter()
        .map(|l| {
            l.local_addr()
                .map(|a| a.port())
                .map_err(|e| format!("finding a free port on 127.0.0.1: {e}"))
        })
        .collect()
}

/// Calls `f` until it returns `Ok(true)`, backing off from 10 ms to 200 ms
/// between calls. `Err` from `f` (e.g. the server exited) ends the wait at
/// once; so do the deadline and Ctrl-C, with an error naming `what`.
pub fn wait_until(
    timeout: Duration,
    what: &str,
    mut f: impl FnMut() -> Result<bool, String>,
) -> Result<(), String> {
    let start = Instant::now();
    let mut pause = Duration::from_millis(10);
    loop {
        if f()? {
            return Ok(());
        }
        if interrupted() {
            return Err(format!("interrupted while waiting for {what}"));
        }
        let waited = start.elapsed();
        if waited >= timeout {
            return Err(format!(
                "timed out after {:.1} s waiting for {what}",
                waited.as_secs_f64()
            ));
        }
        std::thread::sleep(pause.min(timeout - waited));
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

#[cfg(test)]
/// A filler of printable ASCII from a xorshift generator, so values neither
/// compress (PostgreSQL compresses large text values, pglz) nor need quoting
/// (no quote, backslash or control character).
pub fn filler(bytes: usize, seed: u64) -> Vec<u8> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut x = seed_state(seed);
    (0..bytes)
        .map(|_| {
            x = xorshift(x);
            ALPHABET[(x >> 58) as usize]
        })
        .collect()
}

#[cfg(test)]
/// A non-zero xorshift state for `seed` (splitmix64's finaliser): nearby
/// seeds (clients 0, 1, 2, ...) give unrelated sequences.
pub fn seed_state(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    if z == 0 {
        1
    } else {
        z
    }
}

/// xorshift64: a fast, seedable generator for keys and fillers.
#[cfg(test)]
pub fn xorshift(mut x: u64) -> u64 {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "mirrorlog-procs-{name}-{}-{:?}",
            std::process::id(),
            Instant::now()
        ));
        std::fs::create_dir_all(&d).expect("creating a temp dir");
        d
    }

    #[test]
    fn spawned_child_is_stopped_by_pid_and_reaped_on_drop() {
        let d = scratch("drop");
        let log = d.join("sleep.log");
        let s = Spawned::spawn(
            "sleeper",
            Command::new("sh").args(["-c", "echo started; exec sleep 60"]),
            &log,
            libc::SIGTERM,
        )
        .expect("spawning sh");
        let pid = s.pid();
        wait_until(Duration::from_secs(5), "the child's first line", || {
            Ok(s.log_tail(5).contains("started"))
        })
        .expect("log line");
        let t = Instant::now();
        drop(s);
        assert!(t.elapsed() < Duration::from_secs(5), "SIGTERM was enough");
        assert!(!Path::new(&format!("/proc/{pid}")).exists(), "reaped");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn child_that_exits_is_reported_with_its_log() {
        let d = scratch("exit");
        let log = d.join("fail.log");
        let mut s = Spawned::spawn(
            "failing server",
            Command::new("sh").args(["-c", "echo 'FATAL: no such thing' >&2; exit 3"]),
            &log,
            libc::SIGTERM,
        )
        .expect("spawning sh");
        let e = wait_until(Duration::from_secs(5), "never", || {
            s.check_running().map(|()| false)
        })
        .expect_err("the child exits");
        assert!(e.contains("failing server"), "{e}");
        assert!(e.contains("FATAL: no such thing"), "{e}");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn wait_until_times_out_naming_what_it_waited_for() {
        let e =
            wait_until(Duration::from_millis(30), "the moon", || Ok(false)).expect_err("times out");
        assert!(e.contains("the moon"), "{e}");
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail_lines("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail_lines("a", 5), "a");
    }

    #[test]
    fn free_ports_are_distinct() {
        let p = free_ports(3).expect("ports");
        assert!(p[0] != p[1] && p[1] != p[2] && p[0] != p[2], "{p:?}");
        assert!(free_port().expect("port") > 0);
    }

    #[test]
    fn filler_is_printable_and_needs_no_quoting() {
        let f = filler(4096, 7);
        assert_eq!(f.len(), 4096);
        assert!(f
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_'));
        // Every pair of nearby seeds differs (seed | 1 once made 2k and
        // 2k+1 equal, so two clients wrote the same values).
        for seed in 0..64 {
            assert_ne!(filler(64, seed), filler(64, seed + 1), "seed {seed}");
        }
    }
}
