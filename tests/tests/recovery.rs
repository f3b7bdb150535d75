//! Crash recovery: a job with checkpoints is killed with SIGKILL at several points while input
//! flows and restored each time; the file sink ends up byte-identical to a crash-free run's,
//! and the dead letters hold the same records (nothing lost, nothing doubled).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use tenantflow_tests::{run_with_kills, sorted_lines, tenantflow_bin};

fn job(dir: &Path, checkpoints: bool) -> String {
    let checkpoint = if checkpoints {
        format!("[checkpoint]\ndir = \"{}/checkpoints\"\ninterval = \"150ms\"\nretain = 2\n", dir.display())
    } else {
        String::new()
    };
    format!(
        r#"
[source]
type = "generator"
profile = "music"
events = 240000
rate = 80000
tenants = 6
out_of_order_fraction = 0.05
max_delay = "500ms"
late_fraction = 0.002
late_delay = "30s"
malformed_fraction = 0.001

[schema]
tenant = "tenant_id"
[schema.fields]
tenant_id = "string"
user_id = "string"
event_type = "string"
duration_ms = "int"
ts = "timestamp"

[time]
field = "ts"
max_out_of_orderness = "1s"

[[steps]]
filter = "event_type IN ('play', 'skip')"

[[steps]]
window = {{ type = "tumbling", size = "2s" }}
key_by = ["event_type"]
aggregates = {{ n = "count(*)", ms = "sum(duration_ms)", users = "count_distinct(user_id)" }}

[[sinks]]
type = "file"
path = "{dir}/out.jsonl"

[dead_letter]
path = "{dir}/dead.jsonl"

{checkpoint}
"#,
        dir = dir.display()
    )
}

fn spawn(dir: &Path, restore: bool) -> std::process::Child {
    let mut cmd = Command::new(tenantflow_bin());
    cmd.args(["run", "job.toml", "--workers", "2", "--quiet"]).current_dir(dir).stdout(Stdio::null()).stderr(Stdio::piped());
    // Lifecycle lines ("restored", "checkpointed") tell whether a run really resumed.
    cmd.env("TENANTFLOW_LOG", "info");
    if restore {
        cmd.args(["--restore", "latest"]);
    }
    cmd.spawn().expect("spawn tenantflow")
}

#[test]
fn killed_and_restored_runs_match_a_crash_free_run() {
    let reference = tempfile::tempdir().expect("tempdir");
    std::fs::write(reference.path().join("job.toml"), job(reference.path(), false)).expect("write job");
    let status = spawn(reference.path(), false).wait().expect("wait");
    assert!(status.success());
    let expected = std::fs::read_to_string(reference.path().join("out.jsonl")).expect("reference output");
    assert!(expected.lines().count() > 100, "too little output to compare");

    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("job.toml"), job(dir.path(), true)).expect("write job");
    // Kill points spread over the run (it takes about 3 s uninterrupted); the last run finishes.
    let (kills, err) = run_with_kills(dir.path(), &[700, 450, 900, 300, 1100, 600, 60_000]);
    assert!(err.contains("restored"), "the last run did not resume from a checkpoint: {err}");
    assert!(kills >= 3, "the job finished before it could be killed enough ({kills} kills)");

    let got = std::fs::read_to_string(dir.path().join("out.jsonl")).expect("output");
    assert_eq!(got.lines().count(), expected.lines().count(), "row count after {kills} kills");
    assert!(got == expected, "output differs from the crash-free run after {kills} kills");
    assert_eq!(sorted_lines(&dir.path().join("dead.jsonl")), sorted_lines(&reference.path().join("dead.jsonl")));
}

#[test]
fn encrypted_checkpoints_need_the_right_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("job.toml"), job(dir.path(), true)).expect("write job");
    let key = "0f".repeat(32);
    let run = |restore: bool, key: &str| {
        let mut cmd = Command::new(tenantflow_bin());
        cmd.args(["run", "job.toml", "--workers", "2", "--quiet"]).current_dir(dir.path()).env("TENANTFLOW_CHECKPOINT_KEY", key);
        if restore {
            cmd.args(["--restore", "latest"]);
        }
        cmd.stdout(Stdio::null()).stderr(Stdio::piped());
        cmd
    };
    let mut child = run(false, &key).spawn().expect("spawn");
    std::thread::sleep(Duration::from_millis(900));
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    let parts: Vec<_> = std::fs::read_dir(dir.path().join("checkpoints")).expect("checkpoints").collect();
    assert!(!parts.is_empty(), "no checkpoint was taken");

    let wrong = run(true, &"a0".repeat(32)).output().expect("run");
    assert!(!wrong.status.success());
    let err = String::from_utf8_lossy(&wrong.stderr);
    assert!(err.contains("wrong TENANTFLOW_CHECKPOINT_KEY"), "{err}");

    let right = run(true, &key).output().expect("run");
    assert!(right.status.success(), "{}", String::from_utf8_lossy(&right.stderr));
}

#[test]
fn sigterm_stops_with_a_savepoint_and_restore_completes_the_run() {
    let reference = tempfile::tempdir().expect("tempdir");
    std::fs::write(reference.path().join("job.toml"), job(reference.path(), false)).expect("write job");
    assert!(spawn(reference.path(), false).wait().expect("wait").success());
    let expected = std::fs::read_to_string(reference.path().join("out.jsonl")).expect("reference output");

    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("job.toml"), job(dir.path(), true)).expect("write job");
    // No periodic checkpoint within the run: only the savepoint.
    let child = Command::new(tenantflow_bin())
        .args(["run", "job.toml", "--workers", "2", "--quiet", "--checkpoint-interval", "1h"])
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    std::thread::sleep(Duration::from_millis(1200));
    // SAFETY: sending SIGTERM to our own child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let out = child.wait_with_output().expect("wait");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("stopped with savepoint 1"), "{err}");
    let partial = std::fs::read_to_string(dir.path().join("out.jsonl")).unwrap_or_default();
    assert!(partial.lines().count() < expected.lines().count(), "the job finished before it was stopped");

    let mut resumed = spawn(dir.path(), true);
    assert!(resumed.wait().expect("wait").success());
    assert_eq!(std::fs::read_to_string(dir.path().join("out.jsonl")).expect("output"), expected);
}
