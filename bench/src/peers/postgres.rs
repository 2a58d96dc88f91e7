//! PostgreSQL 15 as a peer: a primary with one synchronous streaming standby
//! on this machine ([`PgCluster`]), and a client that inserts one record per
//! transaction at a chosen `synchronous_commit` level ([`PgClient`]).
//!
//! The client speaks the frontend/backend protocol version 3 itself (startup,
//! trust authentication, simple query), over TCP with TCP_NODELAY, so the
//! bench needs no driver crate and no async runtime.

use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::procs::{self, Spawned};

/// Where Debian's postgresql-15 package puts the server binaries.
pub const PG_BIN_DIR: &str = "/usr/lib/postgresql/15/bin";

/// The standby's `application_name`, named in `synchronous_standby_names`.
const STANDBY_NAME: &str = "standby1";

/// The durability settings of the cluster, for reports. The level of each
/// commit is the session's [`PgMode`].
pub const DURABILITY: &str = "PostgreSQL: fsync=on, full_page_writes=on, \
     wal_sync_method=fdatasync (default), wal_level=replica, one streaming standby \
     named in synchronous_standby_names; each INSERT is its own transaction at the \
     session's synchronous_commit level";

/// Settings appended to the primary's postgresql.conf before its first
/// start; pg_basebackup copies them to the standby. Ports and socket
/// directories differ per server and are given on the command line.
const CONF: &str = "
# mirrorlog-bench peers (see bench/peers/README.md)
listen_addresses = '127.0.0.1'
fsync = on
full_page_writes = on
synchronous_commit = on
wal_level = replica
max_wal_senders = 4
synchronous_standby_names = 'standby1'
shared_buffers = 128MB
max_connections = 200
hot_standby = on
logging_collector = off
";

/// Server settings read back after start, so a report states what ran.
const REPORTED_SETTINGS: &[&str] = &[
    "fsync",
    "full_page_writes",
    "wal_sync_method",
    "wal_level",
    "synchronous_standby_names",
    "shared_buffers",
    "data_checksums",
];

/// How long the primary gets to accept connections, and the standby to
/// become a streaming synchronous standby.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a client waits for a reply. A synchronous commit waits for the
/// standby forever; this turns a dead standby into an error.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// A Unix socket path (`<dir>/.s.PGSQL.<port>`) must fit `sun_path` (108
/// bytes with its NUL); beyond this the servers listen on TCP only.
const SOCKET_DIR_BYTES_MAX: usize = 90;

/// A running primary and synchronous standby. Dropping it stops both by PID
/// (fast shutdown, then SIGKILL after 10 s); the directories stay for the
/// caller to remove.
pub struct PgCluster {
    pub primary: SocketAddr,
    pub standby: SocketAddr,
    /// `SHOW server_version`, e.g. "PostgreSQL 15.20 (Debian 15.20-0+deb12u1)".
    pub version: String,
    /// Durability-relevant settings as the primary reports them.
    pub settings: Vec<(String, String)>,
    /// Holds the data directories and the server logs.
    pub dir: PathBuf,
    /// The two server processes, stopped by PID when this is dropped, the
    /// standby first (so the primary's shutdown never waits on a walsender).
    pub servers: procs::Pair,
}

impl PgCluster {
    /// Creates `dir` if needed and a fresh `dir/pg-cluster` in it holding
    /// the primary, the standby and their logs; starts both and waits until
    /// the standby streams synchronously; creates the table `bench`.
    /// `log` receives progress lines.
    pub fn start(dir: &Path, log: &mut dyn FnMut(&str)) -> Result<PgCluster, String> {
        let t0 = Instant::now();
        let bin = find_binaries()?;
        let run_as = postgres_user()?;
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let root = dir.join("pg-cluster");
        std::fs::create_dir(&root)
            .map_err(|e| format!("creating {} (must not exist yet): {e}", root.display()))?;
        // 0755 whatever the umask: the postgres user must reach the data
        // directories below (initdb makes those 0700 itself).
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| format!("chmod 0755 {}: {e}", root.display()))?;
        if let Some(user) = run_as {
            std::os::unix::fs::chown(&root, Some(user.uid), Some(user.gid))
                .map_err(|e| format!("chown postgres {}: {e}", root.display()))?;
            check_traversable(&root, user)?;
        }
        let primary_dir = root.join("primary");
        let standby_dir = root.join("standby");
        let ports = procs::free_ports(2)?;
        let primary = SocketAddr::from(([127, 0, 0, 1], ports[0]));
        let standby = SocketAddr::from(([127, 0, 0, 1], ports[1]));

        log(&format!("postgres: initdb {}", primary_dir.display()));
        let mut initdb = pg_command(&bin.initdb, run_as, &root);
        initdb
            .arg("-D")
            .arg(&primary_dir)
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8"])
            .args(["--locale=C", "--no-instructions"]);
        run_to_end("initdb", &mut initdb)?;
        append(&primary_dir.join("postgresql.conf"), CONF)?;

        log(&format!("postgres: starting the primary on {primary}"));
        let mut primary_proc = Spawned::spawn(
            "postgres primary",
            &mut server_command(&bin.postgres, run_as, &root, &primary_dir, ports[0]),
            &root.join("primary.log"),
            libc::SIGINT,
        )?;
        let mut conn = wait_for_server(&mut primary_proc, primary)?;

        log(&format!(
            "postgres: pg_basebackup to {}",
            standby_dir.display()
        ));
        let mut basebackup = pg_command(&bin.pg_basebackup, run_as, &root);
        basebackup
            .arg("-D")
            .arg(&standby_dir)
            .arg("-d")
            .arg(format!(
                "host=127.0.0.1 port={} user=postgres application_name={STANDBY_NAME}",
                ports[0]
            ))
            .args(["-R", "-X", "stream", "-c", "fast", "--no-password"]);
        run_to_end("pg_basebackup", &mut basebackup)?;
        // -R writes primary_conninfo from the connection's parameters; say
        // application_name explicitly anyway (the last setting wins), since
        // sync_state depends on it and pg_basebackup versions differ.
        append(
            &standby_dir.join("postgresql.auto.conf"),
            &format!(
                "primary_conninfo = 'host=127.0.0.1 port={} user=postgres application_name={STANDBY_NAME}'\n",
                ports[0]
            ),
        )?;

        log(&format!("postgres: starting the standby on {standby}"));
        let mut standby_proc = Spawned::spawn(
            "postgres standby",
            &mut server_command(&bin.postgres, run_as, &root, &standby_dir, ports[1]),
            &root.join("standby.log"),
            libc::SIGINT,
        )?;
        wait_for_server(&mut standby_proc, standby)?;
        let mut servers = procs::Pair {
            secondary: standby_proc,
            primary: primary_proc,
        };
        let mut last = String::from("no row for standby1");
        let waited = procs::wait_until(
            START_TIMEOUT,
            "the standby to stream as the synchronous standby",
            || {
                servers.check_running()?;
                let rows = conn.query(&format!(
                    "SELECT state, sync_state FROM pg_stat_replication WHERE application_name = '{STANDBY_NAME}'"
                ))?;
                last = format!("pg_stat_replication: {rows:?}");
                Ok(rows.iter().any(|r| {
                    r.first().and_then(|c| c.as_deref()) == Some("streaming")
                        && r.get(1).and_then(|c| c.as_deref()) == Some("sync")
                }))
            },
        );
        if let Err(e) = waited {
            return Err(format!("{e} ({last})\n{}", servers.log_tails(15)));
        }

        // An append-only table without an index, as the log of our own
        // database. EXTERNAL storage: values are stored as given, never
        // compressed (Redis and our log do not compress them either).
        conn.execute("CREATE TABLE bench (v text)")?;
        conn.execute("ALTER TABLE bench ALTER COLUMN v SET STORAGE EXTERNAL")?;
        let version = format!("PostgreSQL {}", conn.query_one("SHOW server_version")?);
        let mut settings = Vec::with_capacity(REPORTED_SETTINGS.len());
        for name in REPORTED_SETTINGS {
            settings.push((name.to_string(), conn.query_one(&format!("SHOW {name}"))?));
        }
        for required in [("fsync", "on"), ("full_page_writes", "on")] {
            if !settings
                .iter()
                .any(|(n, v)| n == required.0 && v == required.1)
            {
                return Err(format!(
                    "postgres primary runs with {} not {}: {settings:?}",
                    required.0, required.1
                ));
            }
        }
        log(&format!(
            "postgres: {version} primary {primary} (pid {}), synchronous standby {standby} (pid {}), ready in {:.1} s",
            servers.primary.pid(),
            servers.secondary.pid(),
            t0.elapsed().as_secs_f64()
        ));
        Ok(PgCluster {
            primary,
            standby,
            version,
            settings,
            dir: root,
            servers,
        })
    }
}

struct Binaries {
    initdb: PathBuf,
    postgres: PathBuf,
    pg_basebackup: PathBuf,
}

fn find_binaries() -> Result<Binaries, String> {
    let dir = Path::new(PG_BIN_DIR);
    let find = |name: &str| {
        let p = dir.join(name);
        if p.is_file() {
            Ok(p)
        } else {
            Err(format!(
                "{} not found: PostgreSQL 15 is not installed (run bench/peers/install.sh)",
                p.display()
            ))
        }
    };
    Ok(Binaries {
        initdb: find("initdb")?,
        postgres: find("postgres")?,
        pg_basebackup: find("pg_basebackup")?,
    })
}

#[derive(Clone, Copy, Debug)]
struct User {
    uid: u32,
    gid: u32,
}

/// PostgreSQL refuses to run as root: as root, the servers and tools run as
/// the `postgres` system user (created by the Debian package). Otherwise
/// they run as we do.
fn postgres_user() -> Result<Option<User>, String> {
    // SAFETY: geteuid(2) cannot fail and touches no memory.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let name = c"postgres";
    // SAFETY: passwd is plain integers and pointers; all-zero is a valid
    // value (null pointers) that getpwnam_r overwrites.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 << 10];
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call: `name` is NUL-terminated,
    // `pwd` and `found` are ours, and `buf` is `buf.len()` bytes that the
    // strings of `pwd` point into (we copy only the integers out).
    let rc = unsafe {
        libc::getpwnam_r(
            name.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr(),
            buf.len(),
            &mut found,
        )
    };
    if rc != 0 || found.is_null() {
        return Err(
            "running as root, and PostgreSQL refuses to: it must run as the `postgres` system user, \
             which does not exist (run bench/peers/install.sh; the Debian package creates it)"
                .to_string(),
        );
    }
    Ok(Some(User {
        uid: pwd.pw_uid,
        gid: pwd.pw_gid,
    }))
}

/// Every ancestor of `dir` must let `user` search it, or initdb fails with
/// a confusing "permission denied".
fn check_traversable(dir: &Path, user: User) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let dir = dir
        .canonicalize()
        .map_err(|e| format!("resolving {}: {e}", dir.display()))?;
    for a in dir.ancestors() {
        let m = std::fs::metadata(a).map_err(|e| format!("stat {}: {e}", a.display()))?;
        let mode = m.mode();
        let ok = if m.uid() == user.uid {
            mode & 0o100 != 0
        } else if m.gid() == user.gid {
            mode & 0o010 != 0
        } else {
            mode & 0o001 != 0
        };
        if !ok {
            return Err(format!(
                "the postgres user (uid {}) cannot reach {}: {} is mode {:o}, owner uid {}; \
                 put the bench directory (--dir) under /tmp or another directory others can search",
                user.uid,
                dir.display(),
                a.display(),
                mode & 0o7777,
                m.uid()
            ));
        }
    }
    Ok(())
}

fn pg_command(bin: &Path, run_as: Option<User>, cwd: &Path) -> Command {
    let mut c = Command::new(bin);
    // A working directory the postgres user can enter; the C locale, so no
    // locale needs to be installed; and no PG* variables of ours leaking in.
    c.current_dir(cwd).env("LC_ALL", "C");
    for v in [
        "PGDATA",
        "PGOPTIONS",
        "PGAPPNAME",
        "PGSERVICE",
        "PGHOST",
        "PGPORT",
    ] {
        c.env_remove(v);
    }
    if let Some(u) = run_as {
        c.uid(u.uid).gid(u.gid);
    }
    c
}

fn server_command(
    postgres: &Path,
    run_as: Option<User>,
    root: &Path,
    data: &Path,
    port: u16,
) -> Command {
    let mut c = pg_command(postgres, run_as, root);
    let socket_dir = data.to_string_lossy().into_owned();
    // Sockets in the data directory (not /var/run/postgresql, which belongs
    // to the system's clusters); none if the path would be too long. We
    // connect over TCP either way.
    let socket_dir = if socket_dir.len() <= SOCKET_DIR_BYTES_MAX && !socket_dir.contains('\'') {
        socket_dir
    } else {
        String::new()
    };
    c.arg("-D")
        .arg(data)
        .arg("-c")
        .arg(format!("port={port}"))
        .arg("-c")
        .arg(format!("unix_socket_directories={socket_dir}"));
    c
}

/// Runs a setup tool to its end (in its own process group, like the
/// servers), with its output in the error if it fails.
fn run_to_end(name: &str, cmd: &mut Command) -> Result<(), String> {
    let t = Instant::now();
    let out = cmd
        .stdin(Stdio::null())
        .process_group(0)
        .output()
        .map_err(|e| format!("{name}: starting {:?}: {e}", cmd.get_program()))?;
    if !out.status.success() {
        return Err(format!(
            "{name} failed ({}) after {:.1} s:\n{}{}",
            out.status,
            t.elapsed().as_secs_f64(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

fn append(path: &Path, text: &str) -> Result<(), String> {
    let mut f = std::fs::File::options()
        .append(true)
        .open(path)
        .map_err(|e| format!("opening {}: {e}", path.display()))?;
    f.write_all(text.as_bytes())
        .map_err(|e| format!("writing {}: {e}", path.display()))
}

/// Waits until the server at `addr` accepts a session (not "starting up").
fn wait_for_server(p: &mut Spawned, addr: SocketAddr) -> Result<PgConn, String> {
    let mut conn = None;
    let mut last = String::from("no attempt yet");
    let what = format!("{} to accept connections on {addr}", p.name());
    let waited = procs::wait_until(START_TIMEOUT, &what, || {
        p.check_running()?;
        match PgConn::connect(addr, "mirrorlog-bench-setup") {
            Ok(c) => {
                conn = Some(c);
                Ok(true)
            }
            Err(e) => {
                last = e;
                Ok(false)
            }
        }
    });
    match (waited, conn) {
        (Ok(()), Some(c)) => Ok(c),
        (Err(e), _) => Err(format!(
            "{e} (last attempt: {last})\nlog {}:\n{}",
            p.log_path().display(),
            p.log_tail(15)
        )),
        (Ok(()), None) => unreachable!("wait_until returned Ok without a connection"),
    }
}

/// The `synchronous_commit` level of a client's session: how far a commit
/// has gone before PostgreSQL acknowledges it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PgMode {
    /// Flushed to the primary's WAL only.
    Local,
    /// Also written (not flushed) by the standby's OS.
    RemoteWrite,
    /// Also flushed to the standby's WAL.
    On,
    /// Also replayed by the standby, so visible to its queries.
    RemoteApply,
}

impl PgMode {
    #[cfg(test)]
    pub const ALL: [PgMode; 4] = [
        PgMode::Local,
        PgMode::RemoteWrite,
        PgMode::On,
        PgMode::RemoteApply,
    ];

    /// The value of `synchronous_commit`.
    pub fn name(self) -> &'static str {
        match self {
            PgMode::Local => "local",
            PgMode::RemoteWrite => "remote_write",
            PgMode::On => "on",
            PgMode::RemoteApply => "remote_apply",
        }
    }
}

#[cfg(test)]
/// One session inserting one record per transaction (see [`client`]).
pub struct PgClient {
    conn: PgConn,
    /// Printable filler the values are cut from.
    filler: Vec<u8>,
    calls: u64,
}

#[cfg(test)]
// The load generator moves each client to its own thread.
const _: fn() = || {
    fn send<T: Send>() {}
    send::<PgClient>();
};

#[cfg(test)]
/// Width of the call counter that starts each value, so values differ.
const COUNTER_DIGITS: usize = 20;

#[cfg(test)]
/// Connects to `addr` and sets the session's `synchronous_commit` to
/// `mode`. Each [`PgClient::call`] inserts one value of `record_bytes`
/// printable characters (at least 20: the call counter starts the value) as
/// its own transaction. `seed` varies the filler between clients.
pub fn client(
    addr: SocketAddr,
    mode: PgMode,
    record_bytes: usize,
    seed: u64,
) -> Result<PgClient, String> {
    let mut conn = PgConn::connect(addr, "mirrorlog-bench")?;
    conn.execute(&format!("SET synchronous_commit = {}", mode.name()))?;
    let filler_bytes = record_bytes.saturating_sub(COUNTER_DIGITS);
    Ok(PgClient {
        conn,
        filler: procs::filler(filler_bytes, seed ^ 0x9e37_79b9_7f4a_7c15),
        calls: 0,
    })
}

#[cfg(test)]
impl PgClient {
    /// One autocommit INSERT of one value; `Ok(1)` once it is committed at
    /// this session's level.
    pub fn call(&mut self) -> Result<u64, String> {
        self.calls += 1;
        let calls = self.calls;
        let filler = &self.filler;
        self.conn.send_query_with(|q| {
            q.extend_from_slice(b"INSERT INTO bench (v) VALUES ('");
            insert_value(calls, filler, q);
            q.extend_from_slice(b"')");
        })?;
        Ok(1)
    }

    /// The session, for other statements (e.g. checks in tests).
    pub fn conn(&mut self) -> &mut PgConn {
        &mut self.conn
    }
}

#[cfg(test)]
impl crate::loadgen::Client for PgClient {
    fn call(&mut self) -> Result<u64, String> {
        PgClient::call(self)
    }
}

#[cfg(test)]
/// The value of call `n`: the counter in 20 digits, then the filler. Both
/// are printable ASCII without quote or backslash, so the value is a valid
/// string literal between single quotes as it stands.
fn insert_value(n: u64, filler: &[u8], out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(format!("{n:0COUNTER_DIGITS$}").as_bytes());
    out.extend_from_slice(filler);
    debug_assert!(out[start..]
        .iter()
        .all(|&b| b.is_ascii_graphic() && b != b'\'' && b != b'\\'));
}

#[cfg(test)]
/// A string literal for `s` (single quotes doubled). Valid because the
/// session has standard_conforming_strings on ([`PgConn::connect`] checks),
/// so a backslash is an ordinary character. NUL cannot be in a text value.
pub fn quote_text_literal(s: &str) -> Result<String, String> {
    if s.contains('\0') {
        return Err("a text literal cannot contain NUL".to_string());
    }
    Ok(format!("'{}'", s.replace('\'', "''")))
}

/// A message body longer than this is refused (no allocation bombs from a
/// confused peer). Our largest replies are a few rows of status.
pub(crate) const MESSAGE_BYTES_MAX: usize = 64 << 20;

/// The protocol version in the StartupMessage: 3.0.
const PROTOCOL_VERSION_3: i32 = 3 << 16;

/// A session over the frontend/backend protocol v3: trust authentication,
/// simple queries, text results.
pub struct PgConn {
    addr: SocketAddr,
    reader: BufReader<TcpStream>,
    out: Vec<u8>,
    body: Vec<u8>,
    /// ParameterStatus values the server sent (server_version, ...).
    params: Vec<(String, String)>,
    /// Set after an I/O or protocol error: the stream's position within the
    /// message sequence is unknown, so the session is unusable.
    broken: bool,
}

/// Rows of a result in text format; `None` is SQL NULL.
pub type Rows = Vec<Vec<Option<String>>>;

impl PgConn {
    /// Connects as user `postgres` to database `postgres`. Only trust
    /// authentication is supported (the bench cluster uses it).
    pub fn connect(addr: SocketAddr, application_name: &str) -> Result<PgConn, String> {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .map_err(|e| format!("postgres {addr}: connecting: {e}"))?;
        s.set_nodelay(true)
            .map_err(|e| format!("postgres {addr}: TCP_NODELAY: {e}"))?;
        s.set_read_timeout(Some(REPLY_TIMEOUT))
            .map_err(|e| format!("postgres {addr}: read timeout: {e}"))?;
        let mut c = PgConn {
            addr,
            reader: BufReader::with_capacity(64 << 10, s),
            out: Vec::with_capacity(8 << 10),
            body: Vec::with_capacity(8 << 10),
            params: Vec::new(),
            broken: false,
        };
        encode_startup(
            &[
                ("user", "postgres"),
                ("database", "postgres"),
                ("application_name", application_name),
            ],
            &mut c.out,
        )?;
        c.write_out()?;
        loop {
            let tag = c.read_message()?;
            match tag {
                b'R' => parse_authentication(&c.body).map_err(|e| c.fail(e))?,
                b'S' => {
                    let (k, v) = parse_parameter_status(&c.body).map_err(|e| c.fail(e))?;
                    c.params.push((k, v));
                }
                b'K' | b'N' => {}
                b'E' => {
                    let e = parse_error_response(&c.body);
                    return Err(c.fail(e));
                }
                b'Z' => break,
                t => {
                    let e = format!("unexpected message {:?} during startup", t as char);
                    return Err(c.fail(e));
                }
            }
        }
        if c.parameter("standard_conforming_strings") != Some("on") {
            return Err(format!(
                "postgres {addr}: standard_conforming_strings is not on; the bench's literals need it"
            ));
        }
        Ok(c)
    }

    /// The connection itself, for a caller that speaks the protocol on its
    /// own from here (the benchmark's event-driven load generator). It keeps
    /// TCP_NODELAY and the 30 s read timeout. Refused when the session broke
    /// or bytes were read past the last message (never, between queries).
    pub fn into_stream(self) -> Result<TcpStream, String> {
        if self.broken {
            return Err(format!(
                "postgres {}: the session broke on an earlier error",
                self.addr
            ));
        }
        let unread = self.reader.buffer().len();
        if unread != 0 {
            return Err(format!(
                "postgres {}: {unread} unread bytes after ReadyForQuery",
                self.addr
            ));
        }
        Ok(self.reader.into_inner())
    }

    /// A ParameterStatus value the server reported at startup.
    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Runs `sql` (one or more statements) and returns the rows of its
    /// results; an ErrorResponse becomes `Err` with the server's message.
    pub fn query(&mut self, sql: &str) -> Result<Rows, String> {
        if sql.contains('\0') {
            return Err("a query cannot contain NUL".to_string());
        }
        let mut rows = Vec::new();
        self.send_query(|q| q.extend_from_slice(sql.as_bytes()), Some(&mut rows))?;
        Ok(rows)
    }

    /// Runs `sql` and ignores any rows.
    pub fn execute(&mut self, sql: &str) -> Result<(), String> {
        if sql.contains('\0') {
            return Err("a query cannot contain NUL".to_string());
        }
        self.send_query(|q| q.extend_from_slice(sql.as_bytes()), None)
    }

    /// The first column of every row.
    pub fn query_first_column(&mut self, sql: &str) -> Result<Vec<Option<String>>, String> {
        Ok(self
            .query(sql)?
            .into_iter()
            .map(|r| r.into_iter().next().flatten())
            .collect())
    }

    /// The first column of the only row, which must not be NULL.
    pub fn query_one(&mut self, sql: &str) -> Result<String, String> {
        let col = self.query_first_column(sql)?;
        match col.as_slice() {
            [Some(v)] => Ok(v.clone()),
            _ => Err(format!(
                "postgres {}: {sql:?} returned {col:?}, expected one non-NULL value",
                self.addr
            )),
        }
    }

    /// Sends a query whose text `build` appends (it must not add NUL) and
    /// reads to ReadyForQuery, ignoring rows.
    #[cfg(test)]
    fn send_query_with(&mut self, build: impl FnOnce(&mut Vec<u8>)) -> Result<(), String> {
        self.send_query(build, None)
    }

    fn send_query(
        &mut self,
        build: impl FnOnce(&mut Vec<u8>),
        mut rows: Option<&mut Rows>,
    ) -> Result<(), String> {
        if self.broken {
            return Err(format!(
                "postgres {}: the session broke on an earlier error",
                self.addr
            ));
        }
        // Query: 'Q', Int32 length (itself included), the text, NUL.
        self.out.clear();
        self.out.push(b'Q');
        self.out.extend_from_slice(&[0; 4]);
        build(&mut self.out);
        self.out.push(0);
        let len = i32::try_from(self.out.len() - 1)
            .map_err(|_| format!("query of {} bytes is too long", self.out.len()))?;
        self.out[1..5].copy_from_slice(&len.to_be_bytes());
        self.write_out()?;
        let mut error = None;
        loop {
            let tag = self.read_message()?;
            match tag {
                b'D' => {
                    if let Some(rows) = rows.as_deref_mut() {
                        let row = parse_data_row(&self.body).map_err(|e| self.fail(e))?;
                        rows.push(
                            row.into_iter()
                                .map(|c| c.map(|b| String::from_utf8_lossy(&b).into_owned()))
                                .collect(),
                        );
                    }
                }
                b'T' | b'C' | b'I' | b'N' | b'S' | b'A' => {}
                b'E' => {
                    // The server still ends the cycle with ReadyForQuery.
                    error.get_or_insert_with(|| parse_error_response(&self.body));
                }
                b'Z' => break,
                t => {
                    let e = format!("unexpected message {:?} after a simple query", t as char);
                    return Err(self.fail(e));
                }
            }
        }
        match error {
            Some(e) => Err(format!("postgres {}: {e}", self.addr)),
            None => Ok(()),
        }
    }

    fn write_out(&mut self) -> Result<(), String> {
        let r = self.reader.get_mut().write_all(&self.out);
        r.map_err(|e| self.fail(format!("sending: {e}")))
    }

    /// Reads one message into `self.body`; returns its type byte.
    fn read_message(&mut self) -> Result<u8, String> {
        // Every backend message: Byte1 type, Int32 length (itself
        // included, not the type), then length - 4 bytes.
        let mut head = [0u8; 5];
        if let Err(e) = self.reader.read_exact(&mut head) {
            return Err(self.fail(format!("reading: {e}")));
        }
        let len = i32::from_be_bytes([head[1], head[2], head[3], head[4]]);
        let body_len = match usize::try_from(len) {
            Ok(n) if (4..=MESSAGE_BYTES_MAX).contains(&n) => n - 4,
            _ => {
                let e = format!("message {:?} has bad length {len}", head[0] as char);
                return Err(self.fail(e));
            }
        };
        self.body.clear();
        self.body.resize(body_len, 0);
        if let Err(e) = self.reader.read_exact(&mut self.body) {
            return Err(self.fail(format!("reading: {e}")));
        }
        Ok(head[0])
    }

    /// Marks the session broken and names the server in `e`.
    fn fail(&mut self, e: String) -> String {
        self.broken = true;
        format!("postgres {}: {e}", self.addr)
    }
}

/// StartupMessage: Int32 length (itself included), Int32 protocol version
/// 196608 (3.0), then name NUL value NUL pairs, then a final NUL. No type
/// byte.
fn encode_startup(params: &[(&str, &str)], out: &mut Vec<u8>) -> Result<(), String> {
    out.clear();
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&PROTOCOL_VERSION_3.to_be_bytes());
    for (k, v) in params {
        if k.contains('\0') || v.contains('\0') {
            return Err(format!("startup parameter {k:?} contains NUL"));
        }
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        out.extend_from_slice(v.as_bytes());
        out.push(0);
    }
    out.push(0);
    let len = i32::try_from(out.len()).map_err(|_| "startup message too long".to_string())?;
    out[..4].copy_from_slice(&len.to_be_bytes());
    Ok(())
}

/// Authentication ('R'): Int32 code; 0 is AuthenticationOk. Anything else
/// asks for a method we do not implement.
fn parse_authentication(body: &[u8]) -> Result<(), String> {
    let code = match body.get(..4) {
        Some(b) => i32::from_be_bytes([b[0], b[1], b[2], b[3]]),
        None => return Err("short authentication message".to_string()),
    };
    let method = match code {
        0 => return Ok(()),
        2 => "Kerberos V5",
        3 => "cleartext password",
        5 => "MD5 password",
        7 => "GSSAPI",
        9 => "SSPI",
        10 => "SASL (scram-sha-256)",
        _ => "an unknown method",
    };
    Err(format!(
        "the server asks for {method} authentication (code {code}); this client supports \
         only trust (the bench cluster's pg_hba.conf)"
    ))
}

/// ParameterStatus ('S'): name NUL value NUL.
fn parse_parameter_status(body: &[u8]) -> Result<(String, String), String> {
    let mut parts = body.split(|&b| b == 0);
    match (parts.next(), parts.next()) {
        (Some(k), Some(v)) => Ok((
            String::from_utf8_lossy(k).into_owned(),
            String::from_utf8_lossy(v).into_owned(),
        )),
        _ => Err("malformed ParameterStatus".to_string()),
    }
}

/// ErrorResponse ('E'): fields of Byte1 code and a NUL-terminated string,
/// ending with a 0 code. Becomes "SEVERITY: message (SQLSTATE code)", plus
/// the detail and hint when present. Never fails: whatever is malformed is
/// shown as it is.
pub(crate) fn parse_error_response(body: &[u8]) -> String {
    let (mut severity, mut message, mut code, mut detail, mut hint) =
        (None, None, None, None, None);
    let mut rest = body;
    while let Some((&field, after)) = rest.split_first() {
        if field == 0 {
            break;
        }
        let end = after.iter().position(|&b| b == 0).unwrap_or(after.len());
        let text = String::from_utf8_lossy(&after[..end]).into_owned();
        match field {
            // 'V' is the untranslated severity (9.6+); 'S' may be localised.
            b'V' => severity = Some(text),
            b'S' => {
                severity.get_or_insert(text);
            }
            b'M' => message = Some(text),
            b'C' => code = Some(text),
            b'D' => detail = Some(text),
            b'H' => hint = Some(text),
            _ => {}
        }
        rest = after.get(end + 1..).unwrap_or(&[]);
    }
    let mut s = format!(
        "{}: {}",
        severity.as_deref().unwrap_or("ERROR"),
        message.as_deref().unwrap_or("(no message)")
    );
    if let Some(c) = code {
        s.push_str(&format!(" (SQLSTATE {c})"));
    }
    if let Some(d) = detail {
        s.push_str(&format!("; detail: {d}"));
    }
    if let Some(h) = hint {
        s.push_str(&format!("; hint: {h}"));
    }
    s
}

/// DataRow ('D'): Int16 column count, then per column Int32 length (-1 for
/// NULL) and that many bytes.
fn parse_data_row(body: &[u8]) -> Result<Vec<Option<Vec<u8>>>, String> {
    let short = || "DataRow shorter than its lengths say".to_string();
    let n = body.get(..2).ok_or_else(short)?;
    let n = i16::from_be_bytes([n[0], n[1]]);
    let n = usize::try_from(n).map_err(|_| format!("DataRow with {n} columns"))?;
    let mut pos = 2;
    let mut cols = Vec::with_capacity(n);
    for _ in 0..n {
        let l = body.get(pos..pos + 4).ok_or_else(short)?;
        let l = i32::from_be_bytes([l[0], l[1], l[2], l[3]]);
        pos += 4;
        if l == -1 {
            cols.push(None);
            continue;
        }
        let l = usize::try_from(l).map_err(|_| format!("DataRow column of length {l}"))?;
        let v = body.get(pos..pos + l).ok_or_else(short)?;
        cols.push(Some(v.to_vec()));
        pos += l;
    }
    if pos != body.len() {
        return Err(format!(
            "DataRow has {} bytes after its last column",
            body.len() - pos
        ));
    }
    Ok(cols)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![tag];
        m.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    #[test]
    fn startup_message_is_length_version_then_pairs() {
        let mut out = Vec::new();
        encode_startup(&[("user", "postgres"), ("database", "db")], &mut out).expect("encodes");
        let mut want = Vec::new();
        want.extend_from_slice(&35i32.to_be_bytes());
        want.extend_from_slice(&[0, 3, 0, 0]);
        want.extend_from_slice(b"user\0postgres\0database\0db\0\0");
        assert_eq!(want.len(), 35);
        assert_eq!(out, want);
        assert!(encode_startup(&[("user", "a\0b")], &mut out).is_err());
    }

    #[test]
    fn error_response_becomes_severity_message_and_sqlstate() {
        let body = b"SERROR\0VERROR\0C42P01\0Mrelation \"nope\" does not exist\0P15\0\0";
        assert_eq!(
            parse_error_response(body),
            "ERROR: relation \"nope\" does not exist (SQLSTATE 42P01)"
        );
        let body = b"SFATAL\0C53300\0Msorry, too many clients already\0Dmax 200\0Htry later\0\0";
        assert_eq!(
            parse_error_response(body),
            "FATAL: sorry, too many clients already (SQLSTATE 53300); detail: max 200; hint: try later"
        );
        // Truncated fields are shown as far as they go.
        assert_eq!(parse_error_response(b"Mhalf"), "ERROR: half");
        assert_eq!(parse_error_response(b""), "ERROR: (no message)");
    }

    #[test]
    fn data_row_reads_values_and_nulls_and_refuses_short_rows() {
        let mut body = vec![0, 3];
        body.extend_from_slice(&4i32.to_be_bytes());
        body.extend_from_slice(b"sync");
        body.extend_from_slice(&(-1i32).to_be_bytes());
        body.extend_from_slice(&0i32.to_be_bytes());
        assert_eq!(
            parse_data_row(&body).expect("parses"),
            vec![Some(b"sync".to_vec()), None, Some(Vec::new())]
        );
        for cut in 0..body.len() {
            assert!(parse_data_row(&body[..cut]).is_err(), "cut at {cut}");
        }
        body.push(7);
        assert!(parse_data_row(&body).is_err(), "trailing byte");
        assert!(parse_data_row(&[0xff, 0xff]).is_err(), "negative count");
    }

    #[test]
    fn parsers_refuse_arbitrary_bytes_without_panicking() {
        let mut x = 0x1234_5678_9abc_def0u64;
        for len in 0..2000 {
            let bytes: Vec<u8> = (0..len % 64)
                .map(|_| {
                    x = procs::xorshift(x);
                    x as u8
                })
                .collect();
            let _ = parse_data_row(&bytes);
            let _ = parse_error_response(&bytes);
            let _ = parse_authentication(&bytes);
            let _ = parse_parameter_status(&bytes);
        }
    }

    #[test]
    fn authentication_other_than_ok_is_a_clear_error() {
        assert!(parse_authentication(&0i32.to_be_bytes()).is_ok());
        let e = parse_authentication(&10i32.to_be_bytes()).expect_err("SASL");
        assert!(e.contains("scram-sha-256") && e.contains("trust"), "{e}");
        assert!(parse_authentication(&[0, 0]).is_err());
    }

    #[test]
    fn text_literals_double_quotes_and_refuse_nul() {
        assert_eq!(quote_text_literal("it's").expect("ok"), "'it''s'");
        assert_eq!(quote_text_literal(r"a\b").expect("ok"), r"'a\b'");
        assert!(quote_text_literal("a\0b").is_err());
    }

    #[test]
    fn insert_values_differ_per_call_and_are_plain_literals() {
        let f = procs::filler(100 - COUNTER_DIGITS, 1);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        insert_value(1, &f, &mut a);
        insert_value(2, &f, &mut b);
        assert_eq!(a.len(), 100);
        assert_ne!(a, b);
        let s = String::from_utf8(a).expect("ascii");
        assert_eq!(quote_text_literal(&s).expect("ok"), format!("'{s}'"));
    }

    #[test]
    fn a_directory_the_postgres_user_cannot_search_is_named_in_the_error() {
        use std::os::unix::fs::MetadataExt;
        let closed = std::env::temp_dir().join(format!("mirrorlog-pg-0700-{}", std::process::id()));
        let inner = closed.join("scratch");
        std::fs::create_dir_all(&inner).expect("mkdir");
        std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        let owner = std::fs::metadata(&closed).expect("stat").uid();
        // Someone who is neither the owner nor in the group.
        let stranger = User {
            uid: owner.wrapping_add(4242),
            gid: 4242,
        };
        let e = check_traversable(&inner, stranger).expect_err("0700 is closed to others");
        assert!(
            e.contains(&format!("{} is mode 700", closed.display())),
            "{e}"
        );
        std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        check_traversable(&inner, stranger).expect("0755 is open");
        std::fs::remove_dir_all(&closed).expect("cleanup");
    }

    #[test]
    fn modes_are_synchronous_commit_values() {
        let names: Vec<&str> = PgMode::ALL.iter().map(|m| m.name()).collect();
        assert_eq!(names, ["local", "remote_write", "on", "remote_apply"]);
    }

    fn read_query(s: &mut TcpStream) -> String {
        let mut head = [0u8; 5];
        s.read_exact(&mut head).expect("query head");
        assert_eq!(head[0], b'Q');
        let n = i32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let mut q = vec![0u8; n - 4];
        s.read_exact(&mut q).expect("query");
        String::from_utf8(q).expect("utf8")
    }

    /// A canned server: startup, one query with a row, one failing query.
    #[test]
    fn client_session_against_a_canned_server() {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        let server = std::thread::spawn(move || {
            let (mut s, _) = l.accept().expect("accept");
            let mut len = [0u8; 4];
            s.read_exact(&mut len).expect("startup length");
            let mut rest = vec![0u8; i32::from_be_bytes(len) as usize - 4];
            s.read_exact(&mut rest).expect("startup");
            assert_eq!(&rest[..4], &[0, 3, 0, 0]);
            let mut out = msg(b'R', &0i32.to_be_bytes());
            out.extend(msg(b'S', b"standard_conforming_strings\0on\0"));
            out.extend(msg(b'S', b"server_version\x0015.20\0"));
            out.extend(msg(b'K', &[0, 0, 0, 1, 0, 0, 0, 2]));
            out.extend(msg(b'Z', b"I"));
            s.write_all(&out).expect("write");
            assert_eq!(read_query(&mut s), "SELECT sync_state FROM x\0");
            let mut row = vec![0, 1];
            row.extend_from_slice(&4i32.to_be_bytes());
            row.extend_from_slice(b"sync");
            let mut out = msg(b'T', b"(ignored)");
            out.extend(msg(b'D', &row));
            out.extend(msg(b'C', b"SELECT 1\0"));
            out.extend(msg(b'Z', b"I"));
            s.write_all(&out).expect("write");
            assert_eq!(read_query(&mut s), "SELECT nope\0");
            let mut out = msg(b'E', b"SERROR\0C42703\0Mcolumn \"nope\" does not exist\0\0");
            out.extend(msg(b'Z', b"I"));
            s.write_all(&out).expect("write");
        });
        let mut c = PgConn::connect(addr, "test").expect("connects");
        assert_eq!(c.parameter("server_version"), Some("15.20"));
        assert_eq!(
            c.query_first_column("SELECT sync_state FROM x")
                .expect("query"),
            vec![Some("sync".to_string())]
        );
        let e = c.execute("SELECT nope").expect_err("fails");
        assert!(
            e.contains("column \"nope\" does not exist (SQLSTATE 42703)"),
            "{e}"
        );
        server.join().expect("server thread");
    }

    #[test]
    fn password_request_fails_the_connection_with_a_clear_error() {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        let server = std::thread::spawn(move || {
            let (mut s, _) = l.accept().expect("accept");
            let mut buf = [0u8; 256];
            let _ = s.read(&mut buf);
            let mut md5 = 5i32.to_be_bytes().to_vec();
            md5.extend_from_slice(b"salt");
            s.write_all(&msg(b'R', &md5)).expect("write");
        });
        let e = PgConn::connect(addr, "test").err().expect("refused");
        assert!(e.contains("MD5 password"), "{e}");
        server.join().expect("server thread");
    }

    /// Needs PostgreSQL 15 (bench/peers/install.sh). Run with
    /// `cargo test -p mirrorlog-bench --bin mirrorlog-bench peers -- --ignored`.
    #[test]
    #[ignore]
    fn real_cluster_commits_every_mode_and_the_standby_has_every_row() {
        let dir = std::env::temp_dir().join(format!("mirrorlog-peers-pg-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let t = Instant::now();
        let mut cluster = PgCluster::start(&dir, &mut |l| eprintln!("{l}")).expect("starts");
        eprintln!(
            "start: {:.2} s, {}",
            t.elapsed().as_secs_f64(),
            cluster.version
        );
        eprintln!("settings: {:?}", cluster.settings);
        assert!(
            cluster.version.starts_with("PostgreSQL 15"),
            "{}",
            cluster.version
        );
        let pids = cluster.servers.pids();
        let mut inserted = 0;
        for (i, mode) in PgMode::ALL.into_iter().enumerate() {
            let mut c = client(cluster.primary, mode, 4096, i as u64).expect("client");
            assert_eq!(
                c.conn().query_one("SHOW synchronous_commit").expect("show"),
                mode.name()
            );
            let start = Instant::now();
            let mut slowest = Duration::ZERO;
            for _ in 0..100 {
                let t = Instant::now();
                assert_eq!(c.call().expect("insert"), 1);
                slowest = slowest.max(t.elapsed());
            }
            inserted += 100;
            eprintln!(
                "{:>12}: 100 inserts in {:.1} ms, the slowest {:.1} ms",
                mode.name(),
                start.elapsed().as_secs_f64() * 1e3,
                slowest.as_secs_f64() * 1e3
            );
        }
        cluster.servers.check_running().expect("both servers run");
        // The last commits were remote_apply: every earlier row has been
        // replayed on the standby too.
        let mut s = PgConn::connect(cluster.standby, "test").expect("standby");
        assert_eq!(s.query_one("SELECT pg_is_in_recovery()").expect("q"), "t");
        assert_eq!(
            s.query_one("SELECT count(*) FROM bench").expect("count"),
            inserted.to_string()
        );
        assert_eq!(
            s.query_one("SELECT min(length(v)) || ' ' || max(length(v)) FROM bench")
                .expect("lengths"),
            "4096 4096"
        );
        let e = s
            .execute("INSERT INTO bench VALUES ('x')")
            .expect_err("read-only");
        assert!(e.contains("read-only transaction"), "{e}");
        let mut p = PgConn::connect(cluster.primary, "test").expect("primary");
        assert_eq!(
            p.query_one("SELECT count(DISTINCT v) FROM bench")
                .expect("distinct"),
            inserted.to_string()
        );
        let t = Instant::now();
        drop((s, p));
        drop(cluster);
        eprintln!("stop: {:.2} s", t.elapsed().as_secs_f64());
        for pid in pids {
            assert!(
                !Path::new(&format!("/proc/{pid}")).exists(),
                "pid {pid} still runs"
            );
        }
        std::fs::remove_dir_all(&dir).expect("removing the cluster directory");
    }
}
