//! `mirrorlog serve --config FILE`: a TOML file of the flags; command-line
//! flags win; a bad file is refused with its path and the key named, and
//! nothing starts.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::modes::not_private;
use common::{free_port, secret};

fn dir(tag: &str) -> std::path::PathBuf {
    common::tempdir("config", tag)
}

fn serve_err(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_mirrorlog"))
        .arg("serve")
        .args(args)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "a bad config is a usage error");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_config_file_starts_a_node_and_flags_override_it() {
    let d = dir("ok");
    let s = secret(&d);
    let (file_port, flag_port) = (free_port(), free_port());
    let cfg = d.join("principal.toml");
    std::fs::write(
        &cfg,
        format!(
            "role = \"principal\"\ndir = \"{}\"\nsecret_file = \"{}\"\nport = {file_port}\npartner = \"127.0.0.1:{}\"\nsafety = \"off\"\ncheckpoint_secs = 0\n",
            d.join("p").display(),
            s.display(),
            free_port()
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_mirrorlog"))
        .args(["serve", "--config"])
        .arg(&cfg)
        .args(["--port", &flag_port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        let out = Command::new(env!("CARGO_BIN_EXE_mirrorlog"))
            .args(["status", "--json", "--port", &flag_port.to_string()])
            .output()
            .unwrap();
        if out.status.success() {
            break String::from_utf8_lossy(&out.stdout).into_owned();
        }
        assert!(
            Instant::now() < deadline,
            "the node never came up on the flag's port"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(status.contains("\"role\":\"principal\""), "{status}");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", file_port)).is_err(),
        "the file's port was used although the flag overrode it"
    );
}

#[test]
fn bad_config_files_name_the_file_and_the_key() {
    let d = dir("bad");
    let write = |name: &str, text: &str| {
        let p = d.join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let unknown = write("unknown.toml", "role = \"principal\"\nprot = 6379\n");
    let e = serve_err(&["--config", &unknown]);
    assert!(e.contains("unknown.toml") && e.contains("prot"), "{e}");
    let bad_value = write("value.toml", "safety = \"sometimes\"\n");
    let e = serve_err(&["--config", &bad_value]);
    assert!(
        e.contains("value.toml") && e.contains("`safety`") && e.contains("full or off"),
        "{e}"
    );
    let bad_type = write("type.toml", "port = \"sixty\"\n");
    let e = serve_err(&["--config", &bad_type]);
    assert!(e.contains("type.toml") && e.contains("port"), "{e}");
    let e = serve_err(&["--config", "/nonexistent/mirrorlog.toml"]);
    assert!(e.contains("/nonexistent/mirrorlog.toml"), "{e}");
}

#[test]
fn client_limits_are_configurable_and_enforced() {
    let d = dir("limits");
    let s = secret(&d);
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_mirrorlog"))
        .args(["serve", "--role", "principal", "--dir"])
        .arg(d.join("p"))
        .arg("--secret-file")
        .arg(&s)
        .args(["--port", &port.to_string()])
        .args(["--partner", &format!("127.0.0.1:{}", free_port())])
        .args(["--max-bulk-bytes", "64", "--max-args", "4"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let connect = || loop {
        if let Ok(c) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            return c;
        }
        assert!(Instant::now() < deadline, "the server never came up");
        std::thread::sleep(Duration::from_millis(20));
    };
    let talk = |bytes: &[u8]| {
        use std::io::Read;
        let mut c = connect();
        c.write_all(bytes).unwrap();
        let mut out = Vec::new();
        let _ = c.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    };
    let big = format!(
        "*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$65\r\n{}\r\n",
        "x".repeat(65)
    );
    assert!(
        talk(big.as_bytes()).starts_with("-ERR Protocol error"),
        "a 65-byte value passed a 64-byte limit"
    );
    let many = "*5\r\n$4\r\nMGET\r\n$1\r\na\r\n$1\r\nb\r\n$1\r\nc\r\n$1\r\nd\r\n";
    assert!(talk(many.as_bytes()).starts_with("-ERR Protocol error"));
    // Within the limits: served.
    let ok = format!(
        "*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$64\r\n{}\r\n*1\r\n$4\r\nQUIT\r\n",
        "x".repeat(64)
    );
    assert!(talk(ok.as_bytes()).starts_with("+OK"));
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn a_served_node_keeps_its_log_and_checkpoints_private() {
    use mirrorlog::client::Client;
    use mirrorlog::resp::Reply;
    let d = dir("private");
    let s = secret(&d);
    let node = d.join("p");
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_mirrorlog"))
        .args(["serve", "--role", "principal", "--dir"])
        .arg(&node)
        .arg("--secret-file")
        .arg(&s)
        .args(["--port", &port.to_string()])
        .args(["--partner", &format!("127.0.0.1:{}", free_port())])
        .args(["--safety", "off", "--checkpoint-secs", "0"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut c = loop {
        if let Ok(c) = Client::connect(common::addr(port), Duration::from_secs(20)) {
            break c;
        }
        assert!(Instant::now() < deadline, "the server never came up");
        std::thread::sleep(Duration::from_millis(20));
    };
    for i in 0..50 {
        let k = format!("k{i}");
        assert_eq!(
            c.call(&[b"SET", k.as_bytes(), b"v"]).unwrap(),
            Reply::Simple("OK".into())
        );
    }
    match c.call(&[b"MIRROR", b"CHECKPOINT"]).unwrap() {
        Reply::Simple(s) => assert!(s.contains("checkpoint at LSN"), "{s}"),
        Reply::Bulk(b) => assert!(String::from_utf8_lossy(&b).contains("checkpoint at LSN")),
        other => panic!("MIRROR CHECKPOINT: {other:?}"),
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(node.join("checkpoints").is_dir());
    let bad = not_private(&node);
    assert!(bad.is_empty(), "not private: {bad:?}");
}

/// Writes `text` to `dir/name` with `mode`; returns its path.
fn file_with_mode(dir: &std::path::Path, name: &str, text: &str, mode: u32) -> String {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    p.display().to_string()
}

fn parse(args: &[&str]) -> Result<mirrorlog::serve::ServeOptions, String> {
    let mut all: Vec<String> = [
        "--role",
        "principal",
        "--dir",
        "/tmp/x",
        "--secret-file",
        "s",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    all.extend(args.iter().map(|s| s.to_string()));
    mirrorlog::serve::parse(&all)
}

#[test]
fn password_files_are_mode_checked_and_command_line_passwords_are_flagged() {
    let d = dir("pwparse");
    let good = file_with_mode(&d, "pw", "s3cret pass\n", 0o600);
    let o = parse(&["--password-file", &good]).unwrap();
    assert_eq!(
        o.password.as_deref(),
        Some("s3cret pass"),
        "one newline ignored"
    );
    assert!(!o.password_on_command_line);
    let crlf = file_with_mode(&d, "pw-crlf", "abc\r\n", 0o400);
    assert_eq!(
        parse(&["--password-file", &crlf])
            .unwrap()
            .password
            .as_deref(),
        Some("abc")
    );
    let two = file_with_mode(&d, "pw-two", "abc\n\n", 0o600);
    assert_eq!(
        parse(&["--password-file", &two])
            .unwrap()
            .password
            .as_deref(),
        Some("abc\n")
    );
    // Readable by others: refused, with the fix.
    for mode in [0o644, 0o640, 0o602] {
        let open = file_with_mode(&d, "pw-open", "x", mode);
        let e = parse(&["--password-file", &open]).unwrap_err();
        assert!(
            e.contains(&open)
                && e.contains(&format!("mode {mode:o}"))
                && e.contains(&format!("chmod 600 {open}")),
            "{e}"
        );
    }
    for text in ["", "\n"] {
        let empty = file_with_mode(&d, "pw-empty", text, 0o600);
        let e = parse(&["--password-file", &empty]).unwrap_err();
        assert!(e.contains("empty"), "{e}");
    }
    let e = parse(&["--password-file", "/nonexistent/pw"]).unwrap_err();
    assert!(e.contains("/nonexistent/pw"), "{e}");
    let e = parse(&["--password", "a", "--password-file", &good]).unwrap_err();
    assert!(e.contains("not both"), "{e}");
    // On the command line: accepted, and flagged for the warning.
    let o = parse(&["--password", "visible"]).unwrap();
    assert_eq!(o.password.as_deref(), Some("visible"));
    assert!(o.password_on_command_line);
    // In a config file: only if the file is private.
    let open_cfg = file_with_mode(&d, "open.toml", "password = \"in-file\"\n", 0o644);
    let e = parse(&["--config", &open_cfg]).unwrap_err();
    assert!(
        e.contains(&open_cfg)
            && e.contains("password")
            && e.contains(&format!("chmod 600 {open_cfg}")),
        "{e}"
    );
    let cfg = file_with_mode(&d, "private.toml", "password = \"in-file\"\n", 0o600);
    let o = parse(&["--config", &cfg]).unwrap();
    assert_eq!(o.password.as_deref(), Some("in-file"));
    assert!(
        !o.password_on_command_line,
        "a config file is not the command line"
    );
    // A config file without a password may be world-readable.
    let pf_cfg = file_with_mode(
        &d,
        "pf.toml",
        &format!("password_file = \"{good}\"\n"),
        0o644,
    );
    let o = parse(&["--config", &pf_cfg]).unwrap();
    assert_eq!(o.password.as_deref(), Some("s3cret pass"));
    // A bad password_file in the config names the key.
    let bad_cfg = file_with_mode(
        &d,
        "bad.toml",
        "password_file = \"/nonexistent/pw\"\n",
        0o644,
    );
    let e = parse(&["--config", &bad_cfg]).unwrap_err();
    assert!(
        e.contains("password_file") && e.contains("/nonexistent/pw"),
        "{e}"
    );
    // The command line wins over the file, whichever kind either is.
    let o = parse(&["--config", &pf_cfg, "--password", "cli"]).unwrap();
    assert_eq!(o.password.as_deref(), Some("cli"));
    assert!(o.password_on_command_line);
}

#[test]
fn a_server_started_with_a_password_file_requires_auth_with_that_password() {
    use mirrorlog::client::Client;
    use mirrorlog::resp::Reply;
    let d = dir("pwfile");
    let s = secret(&d);
    let pw = file_with_mode(&d, "password", "from-the-file\n", 0o600);
    let start = |password: &[&str], log: &str| {
        let port = free_port();
        let err = std::fs::File::create(d.join(log)).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_mirrorlog"))
            .args(["serve", "--role", "principal", "--dir"])
            .arg(d.join(log.replace(".log", "")))
            .arg("--secret-file")
            .arg(&s)
            .args(["--port", &port.to_string()])
            .args(["--partner", &format!("127.0.0.1:{}", free_port())])
            .args(["--safety", "off", "--checkpoint-secs", "0"])
            .args(password)
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        // Up once it answers (NOAUTH counts): a connection accepted while
        // the node is still starting may be dropped if the start fails.
        let c = loop {
            if let Ok(mut c) = Client::connect(common::addr(port), Duration::from_secs(20)) {
                if c.call(&[b"PING"]).is_ok() {
                    break c;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the server never came up: {}",
                std::fs::read_to_string(d.join(log)).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        (common::Served(child), c)
    };
    let (served, mut c) = start(&["--password-file", &pw], "file.log");
    let err = |r: Reply| match r {
        Reply::Error(e) => e,
        other => panic!("expected an error, got {other:?}"),
    };
    assert!(err(c.call(&[b"SET", b"k", b"v"]).unwrap()).starts_with("NOAUTH"));
    assert!(err(c.call(&[b"AUTH", b"from-the-file\n"]).unwrap()).starts_with("WRONGPASS"));
    assert!(err(c.call(&[b"AUTH", b"wrong"]).unwrap()).starts_with("WRONGPASS"));
    assert_eq!(
        c.call(&[b"AUTH", b"from-the-file"]).unwrap(),
        Reply::Simple("OK".into())
    );
    assert_eq!(
        c.call(&[b"SET", b"k", b"v"]).unwrap(),
        Reply::Simple("OK".into())
    );
    drop(served);
    let log = std::fs::read_to_string(d.join("file.log")).unwrap();
    assert!(!log.contains("visible to other local users"), "{log}");
    // --password still works, with a warning.
    let (served, mut c) = start(&["--password", "on-the-line"], "line.log");
    assert_eq!(
        c.call(&[b"AUTH", b"on-the-line"]).unwrap(),
        Reply::Simple("OK".into())
    );
    drop(served);
    let log = std::fs::read_to_string(d.join("line.log")).unwrap();
    assert!(
        log.contains("WARN")
            && log.contains("visible to other local users")
            && log.contains("--password-file"),
        "{log}"
    );
}
