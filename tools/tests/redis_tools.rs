//! Smoke test with the real redis-cli and redis-benchmark, when installed
//! (Debian's redis-tools; `.ci/run` installs it when it can). Without them
//! the test says so and passes.

#[path = "../../engine/tests/scratch/mod.rs"]
mod scratch;
use std::io::Write;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Served(Child);

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn redis_cli_and_redis_benchmark_work_against_principal_and_mirror() {
    if !have("redis-cli") || !have("redis-benchmark") {
        eprintln!("redis-cli/redis-benchmark not installed: smoke test skipped");
        return;
    }
    let dir = scratch::path("tools");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let secret = dir.join("secret");
    {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&secret)
            .unwrap()
            .write_all(b"redis-tools-smoke-secret")
            .unwrap();
    }
    let (p, m, partner) = (free_port(), free_port(), free_port());
    let serve = |role: &str, port: u16| {
        Served(
            Command::new(env!("CARGO_BIN_EXE_mirrorlog"))
                .args(["serve", "--role", role, "--dir"])
                .arg(dir.join(role))
                .arg("--secret-file")
                .arg(&secret)
                .args(["--port", &port.to_string()])
                .args(["--partner", &format!("127.0.0.1:{partner}")])
                .args(["--principal-clients", &format!("127.0.0.1:{p}")])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )
    };
    let _p = serve("principal", p);
    let _m = serve("mirror", m);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cli(p, &["info", "replication"]).contains("mirroring_state:synchronized") {
        assert!(Instant::now() < deadline, "never synchronized");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(cli(p, &["set", "hello", "world"]), "OK");
    assert_eq!(cli(p, &["mirror", "level", "remote-apply"]), "OK");
    assert_eq!(cli(p, &["get", "hello"]), "world");
    assert!(cli(m, &["set", "x", "y"]).contains("READONLY"));
    let out = Command::new("redis-benchmark")
        .args([
            "-p",
            &p.to_string(),
            "-t",
            "set,get",
            "-n",
            "2000",
            "-c",
            "8",
            "-q",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("SET:") && text.contains("GET:"), "{text}");
    assert!(!text.contains("ERR"), "{text}");
    // Everything the benchmark wrote reached the mirror.
    let size: u64 = cli(p, &["dbsize"]).parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while cli(m, &["dbsize"]).parse::<u64>().unwrap_or(0) != size {
        assert!(Instant::now() < deadline, "the mirror never caught up");
        std::thread::sleep(Duration::from_millis(20));
    }
}
