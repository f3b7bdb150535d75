//! Helpers for tenantflow's end-to-end tests (the tests themselves are in `tests/tests/`).

use std::path::{Path, PathBuf};

use tenantflow_core::plan;
use tenantflow_engine::{run, RunConfig, RunReport};

/// Loads a job from text, panicking with the validation errors if it is invalid.
pub fn plan(text: &str) -> tenantflow_core::Plan {
    plan::load("test.toml", text, &[]).unwrap_or_else(|e| panic!("job should be valid:\n{e}"))
}

/// Runs a job in-process with `workers` threads.
pub fn run_job(text: &str, workers: usize) -> RunReport {
    run(plan(text), &RunConfig { workers, ..RunConfig::default() }).unwrap_or_else(|e| panic!("job failed: {e}"))
}

/// Reads a JSON-lines file into values.
pub fn read_jsonl(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}"))).collect()
}

/// A file's lines, sorted (outputs whose order may differ between runs), empty if missing.
pub fn sorted_lines(path: &Path) -> Vec<String> {
    let mut lines: Vec<String> = std::fs::read_to_string(path).unwrap_or_default().lines().map(String::from).collect();
    lines.sort();
    lines
}

/// The `tenantflow` binary built alongside the tests (target/<profile>/tenantflow).
pub fn tenantflow_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(Path::parent).expect("target directory");
    let bin = dir.join("tenantflow");
    assert!(bin.exists(), "{} is missing: build it first with `cargo build --bins`", bin.display());
    bin
}

/// Kills and reaps a child process when dropped.
pub struct Guard(pub std::process::Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `tenantflow dev-kafka TOPICS` (3 partitions each) in `dir`; returns it and the
/// bootstrap address, which it also wrote to `dir/bootstrap`.
pub fn dev_kafka(dir: &Path, topics: &[&str]) -> (Guard, String) {
    use std::time::{Duration, Instant};
    let child = std::process::Command::new(tenantflow_bin())
        .arg("dev-kafka")
        .args(topics)
        .args(["--partitions", "3", "--bootstrap-file", "bootstrap"])
        .current_dir(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn dev-kafka");
    let guard = Guard(child);
    let start = Instant::now();
    loop {
        if let Ok(b) = std::fs::read_to_string(dir.join("bootstrap")) {
            if b.ends_with('\n') {
                return (guard, b.trim().to_string());
            }
        }
        assert!(start.elapsed() < Duration::from_secs(20), "dev-kafka wrote no bootstrap file");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A ClickHouse server (Debian's `clickhouse-server`) in a temporary directory, on ports derived
/// from `port`; stopped by PID when dropped.
pub struct ClickHouse {
    child: std::process::Child,
    pub url: String,
    _dir: tempfile::TempDir,
}

impl ClickHouse {
    pub fn start(port: u16) -> ClickHouse {
        let server = "/usr/sbin/clickhouse-server";
        assert!(Path::new(server).exists(), "clickhouse-server is missing: scripts/setup.sh installs it");
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path().display().to_string();
        let config = format!(
            "<?xml version=\"1.0\"?><yandex><logger><level>warning</level><log>{d}/server.log</log><errorlog>{d}/error.log</errorlog></logger>\
             <listen_host>127.0.0.1</listen_host><http_port>{port}</http_port><tcp_port>{}</tcp_port><interserver_http_port>{}</interserver_http_port>\
             <path>{d}/data/</path><tmp_path>{d}/tmp/</tmp_path><user_files_path>{d}/user_files/</user_files_path>\
             <format_schema_path>{d}/format_schemas/</format_schema_path><users_config>{d}/users.xml</users_config>\
             <default_profile>default</default_profile><default_database>default</default_database><mark_cache_size>104857600</mark_cache_size></yandex>",
            port + 1,
            port + 2
        );
        let users = "<?xml version=\"1.0\"?><yandex><profiles><default></default></profiles><users><default><password></password>\
                     <networks><ip>127.0.0.1</ip><ip>::1</ip></networks><profile>default</profile><quota>default</quota></default></users>\
                     <quotas><default></default></quotas></yandex>";
        std::fs::write(dir.path().join("config.xml"), config).expect("config");
        std::fs::write(dir.path().join("users.xml"), users).expect("users");
        let child = Self::spawn(&d);
        let mut ch = ClickHouse { child, url: format!("http://127.0.0.1:{port}"), _dir: dir };
        ch.wait_ready();
        ch
    }

    fn spawn(dir: &str) -> std::process::Child {
        std::process::Command::new("/usr/sbin/clickhouse-server")
            .arg(format!("--config-file={dir}/config.xml"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start clickhouse-server")
    }

    fn wait_ready(&mut self) {
        let start = std::time::Instant::now();
        while self.query("SELECT 1").is_err() {
            assert!(start.elapsed() < std::time::Duration::from_secs(30), "clickhouse did not answer within 30 s");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// Stops the server (SIGTERM, waits); its data stays for [`ClickHouse::restart`].
    pub fn stop(&mut self) {
        // SAFETY: signalling our own child; SIGTERM lets it shut down cleanly.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let _ = self.child.wait();
    }

    /// Kills the server (SIGKILL, as a crash would); its data stays for [`ClickHouse::restart`].
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the server again on the same data and ports.
    pub fn restart(&mut self) {
        self.child = Self::spawn(&self._dir.path().display().to_string());
        self.wait_ready();
    }

    /// Runs a query over HTTP; the body on success.
    pub fn query(&self, sql: &str) -> Result<String, String> {
        let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        let mut r = agent.post(&self.url).send(sql).map_err(|e| e.to_string())?;
        let body = r.body_mut().read_to_string().map_err(|e| e.to_string())?;
        if r.status().is_success() {
            Ok(body)
        } else {
            Err(format!("HTTP {}: {body}", r.status().as_u16()))
        }
    }
}

impl Drop for ClickHouse {
    fn drop(&mut self) {
        // SAFETY: signalling our own child; SIGTERM lets it shut down cleanly.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// A Redis server (Debian's `redis-server`) in a temporary directory with an append-only file
/// synced on every write, so its data survives [`Redis::stop`] and [`Redis::restart`]; stopped
/// by PID when dropped.
pub struct Redis {
    child: std::process::Child,
    port: u16,
    persistent: bool,
    pub url: String,
    dir: tempfile::TempDir,
}

impl Redis {
    pub fn start(port: u16) -> Redis {
        Redis::start_with(port, true)
    }

    /// Without `persistent`, nothing is written to disk (benchmarks).
    pub fn start_with(port: u16, persistent: bool) -> Redis {
        assert!(Path::new("/usr/bin/redis-server").exists(), "redis-server is missing: scripts/setup.sh installs it");
        let dir = tempfile::tempdir().expect("tempdir");
        let child = Self::spawn(dir.path(), port, persistent);
        let r = Redis { child, port, persistent, url: format!("redis://127.0.0.1:{port}"), dir };
        r.wait_ready();
        r
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    fn spawn(dir: &Path, port: u16, persistent: bool) -> std::process::Child {
        std::process::Command::new("/usr/bin/redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--save", ""])
            .args(if persistent {
                ["--appendonly", "yes", "--appendfsync", "always"]
            } else {
                ["--appendonly", "no", "--appendfsync", "no"]
            })
            .arg("--dir")
            .arg(dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start redis-server")
    }

    fn wait_ready(&self) {
        let start = std::time::Instant::now();
        loop {
            if let Ok(mut c) = self.try_connect() {
                if redis::cmd("PING").query::<String>(&mut c).is_ok() {
                    return;
                }
            }
            assert!(start.elapsed() < std::time::Duration::from_secs(20), "redis did not answer within 20 s");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    fn try_connect(&self) -> redis::RedisResult<redis::Connection> {
        redis::Client::open(self.url.as_str())?.get_connection()
    }

    pub fn conn(&self) -> redis::Connection {
        self.try_connect().expect("connect to redis")
    }

    /// Stops the server (SIGTERM, waits); its data stays for [`Redis::restart`].
    pub fn stop(&mut self) {
        // SAFETY: signalling our own child; SIGTERM lets it shut down cleanly.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let _ = self.child.wait();
    }

    /// Kills the server (SIGKILL, as a crash would); with the append-only file synced on every
    /// write its data stays for [`Redis::restart`].
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the server again on the same data and port.
    pub fn restart(&mut self) {
        self.child = Self::spawn(self.dir.path(), self.port, self.persistent);
        self.wait_ready();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs `tenantflow run job.toml --workers 2 --quiet` in `dir` (with `TENANTFLOW_LOG=info`, so
/// lifecycle lines such as "restored" show), SIGKILLs it after each of `delays_ms` and runs it
/// again with `--restore latest`, until a run finishes (the last delay should outlast a run).
/// Returns how often it was killed and the finishing run's stderr; panics if a run fails.
pub fn run_with_kills(dir: &Path, delays_ms: &[u64]) -> (usize, String) {
    use std::time::{Duration, Instant};
    let started = Instant::now();
    // Every run before the finishing one was killed: the attempt number counts the kills.
    for (attempt, &delay) in delays_ms.iter().enumerate() {
        let mut cmd = std::process::Command::new(tenantflow_bin());
        cmd.args(["run", "job.toml", "--workers", "2", "--quiet"]).current_dir(dir).env("TENANTFLOW_LOG", "info");
        if attempt > 0 {
            cmd.args(["--restore", "latest"]);
        }
        let mut child = cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped()).spawn().expect("spawn tenantflow");
        let deadline = Instant::now() + Duration::from_millis(delay);
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut e, &mut err);
                }
                assert!(status.success(), "run {attempt} failed: {err}");
                return (attempt, err);
            }
            if Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        child.kill().expect("SIGKILL");
        let _ = child.wait();
        assert!(started.elapsed() < Duration::from_secs(120), "recovery did not finish");
    }
    panic!("the job was still running after the last delay");
}

/// The outage of issue 17: runs `tenantflow run job.toml --workers 2` in `dir` (a job with
/// checkpoints), kills the sink's service with `kill_service` mid-run, SIGKILLs tenantflow
/// during the outage and restarts it at once with `--restore latest` while the service is
/// still down; checks that the restored job waits (it must not finish or run on without the
/// sink), then brings the service back with `start_service` and waits for the job to finish.
/// Returns the restored run's stderr (`TENANTFLOW_LOG=warn`, progress lines); panics if it
/// fails.
pub fn restore_during_outage(dir: &Path, kill_service: impl FnOnce(), start_service: impl FnOnce()) -> String {
    use std::time::Duration;
    let spawn = |restore: bool| {
        let mut cmd = std::process::Command::new(tenantflow_bin());
        cmd.args(["run", "job.toml", "--workers", "2"]).current_dir(dir).env("TENANTFLOW_LOG", "warn");
        // The restored run prints progress lines: they must name the sink it waits for.
        if restore {
            cmd.args(["--restore", "latest"]);
        } else {
            cmd.arg("--quiet");
        }
        cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped()).spawn().expect("spawn tenantflow")
    };
    let mut first = spawn(false);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(first.try_wait().expect("try_wait").is_none(), "the job finished before the outage");
    kill_service();
    std::thread::sleep(Duration::from_millis(500));
    first.kill().expect("SIGKILL");
    let _ = first.wait();
    assert!(dir.join("checkpoints").exists(), "no checkpoint was taken before the kill");

    let mut restored = spawn(true);
    std::thread::sleep(Duration::from_secs(4));
    assert!(restored.try_wait().expect("try_wait").is_none(), "the restored job ended while its sink's service was down");
    start_service();
    let (status, err) = wait_exit(&mut restored, Duration::from_secs(90), "the job did not finish after the service came back");
    assert!(status.success(), "the restored run failed: {err}");
    assert!(err.contains("waiting for the sink's service"), "the restored run did not say it waits for the sink: {err}");
    assert!(
        err.lines().any(|l| l.starts_with("[progress]") && l.contains("waiting: sink `")),
        "no progress line names the sink the job waits for: {err}"
    );
    err
}

/// Waits up to `limit` for `child` to exit (panics with `what` after that); returns its status
/// and its stderr, when piped.
pub fn wait_exit(child: &mut std::process::Child, limit: std::time::Duration, what: &str) -> (std::process::ExitStatus, String) {
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        assert!(start.elapsed() < limit, "{what}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut err);
    }
    (status, err)
}

/// A received webhook call: headers (names lowercased) and JSON body.
pub type Received = (std::collections::BTreeMap<String, String>, serde_json::Value);

/// An HTTP receiver on 127.0.0.1 for alert webhooks: records each POST's headers (names
/// lowercased) and JSON body, and answers 200.
pub struct Webhook {
    pub url: String,
    received: std::sync::Arc<std::sync::Mutex<Vec<Received>>>,
}

impl Webhook {
    pub fn start() -> Webhook {
        use std::io::{BufRead, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}/alerts", listener.local_addr().expect("addr"));
        let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let store = std::sync::Arc::clone(&received);
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let Ok(read_half) = conn.try_clone() else { continue };
                let mut reader = std::io::BufReader::new(read_half);
                let mut headers = std::collections::BTreeMap::new();
                let mut line = String::new();
                let _ = reader.read_line(&mut line);
                loop {
                    line.clear();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
                        break;
                    }
                    if let Some((k, v)) = line.split_once(':') {
                        headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
                    }
                }
                let len = headers.get("content-length").and_then(|l| l.parse().ok()).unwrap_or(0);
                let mut body = vec![0; len];
                if reader.read_exact(&mut body).is_err() {
                    continue;
                }
                let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
                if let Ok(mut r) = store.lock() {
                    r.push((headers, json));
                }
                let mut conn = conn;
                let _ = conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            }
        });
        Webhook { url, received }
    }

    /// What was received so far: (headers, body).
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// The firing alerts' labels over every notification received.
    pub fn firing(&self) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        for (_, body) in self.received() {
            for a in body["alerts"].as_array().into_iter().flatten() {
                if a["status"] == "firing" {
                    out.push(a.clone());
                }
            }
        }
        out
    }
}
