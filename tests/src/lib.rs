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
