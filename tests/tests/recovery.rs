//! Crash recovery: a job with checkpoints is killed with SIGKILL at several points while input
//! flows and restored each time; its file sinks, dead letters and late events end up
//! byte-identical to a crash-free run's (nothing lost, nothing doubled, nothing reordered),
//! whatever the order of its sinks in each run.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use tenantflow_tests::tenantflow_bin;

/// Sinks of every kind that needs no service (the Redis, ClickHouse and Kafka tests mix theirs
/// with a file sink): a discard sink opens nothing, stdout keeps no position, two files do.
const SINKS: [&str; 4] = [
    "[[sinks]]\ntype = \"discard\"\n",
    "[[sinks]]\ntype = \"file\"\npath = \"{dir}/out.jsonl\"\n",
    "[[sinks]]\ntype = \"stdout\"\nformat = \"json\"\n",
    "[[sinks]]\ntype = \"file\"\npath = \"{dir}/copy.jsonl\"\n",
];

/// The sinks, starting at `first` (the list rotated): positions change, ids do not.
fn sinks(dir: &Path, first: usize) -> String {
    (0..SINKS.len()).map(|i| SINKS[(first + i) % SINKS.len()].replace("{dir}", &dir.display().to_string())).collect()
}

fn job(dir: &Path, checkpoints: bool) -> String {
    job_with_sinks(dir, checkpoints, &sinks(dir, 0))
}

fn job_with_sinks(dir: &Path, checkpoints: bool, sinks: &str) -> String {
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
late_policy = "side_output"
late_output = "{dir}/late.jsonl"

[[steps]]
filter = "event_type IN ('play', 'skip')"

[[steps]]
window = {{ type = "tumbling", size = "2s" }}
key_by = ["event_type"]
aggregates = {{ n = "count(*)", ms = "sum(duration_ms)", users = "count_distinct(user_id)" }}

{sinks}
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
    let read = |dir: &Path, file: &str| std::fs::read_to_string(dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
    let expected = read(reference.path(), "out.jsonl");
    assert!(expected.lines().count() > 100, "too little output to compare");
    assert!(read(reference.path(), "dead.jsonl").lines().count() > 50, "too few dead letters to compare");
    assert!(read(reference.path(), "late.jsonl").lines().count() > 50, "too few late events to compare");

    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    // Kill points spread over the run (it takes about 3 s uninterrupted); the last run finishes.
    // Each run lists the sinks in another order: their checkpointed progress follows their ids.
    let delays = [700, 450, 900, 300, 1100, 600, 60_000];
    let started = std::time::Instant::now();
    let mut kills = 0;
    let err = loop {
        std::fs::write(d.join("job.toml"), job_with_sinks(d, true, &sinks(d, kills))).expect("write job");
        let mut child = spawn(d, kills > 0);
        let deadline = std::time::Instant::now() + Duration::from_millis(delays[kills.min(delays.len() - 1)]);
        while child.try_wait().expect("try_wait").is_none() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if let Some(status) = child.try_wait().expect("try_wait") {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            assert!(status.success(), "run {kills} failed: {err}");
            break err;
        }
        child.kill().expect("SIGKILL");
        let _ = child.wait();
        kills += 1;
        assert!(started.elapsed() < Duration::from_secs(120), "recovery did not finish");
    };
    assert!(err.contains("restored"), "the last run did not resume from a checkpoint: {err}");
    assert!(kills >= 3, "the job finished before it could be killed enough ({kills} kills)");

    for file in ["out.jsonl", "copy.jsonl", "dead.jsonl", "late.jsonl"] {
        let (got, want) = (read(d, file), read(reference.path(), file));
        assert_eq!(got.lines().count(), want.lines().count(), "{file}: lines after {kills} kills");
        if got != want {
            let first = got.lines().zip(want.lines()).position(|(a, b)| a != b);
            panic!("{file} differs from the crash-free run after {kills} kills (first at line {first:?})");
        }
    }
}

/// A checkpoint holds each sink's progress by the sink's id: a restore into a job with other
/// sinks is refused with the sink named, instead of handing one sink another's position.
#[test]
fn restores_into_a_job_with_other_sinks_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    std::fs::write(d.join("job.toml"), job(d, true)).expect("write job");
    let mut child = spawn(d, false);
    std::thread::sleep(Duration::from_millis(900));
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    let restore = |sinks: &str| {
        std::fs::write(d.join("job.toml"), job_with_sinks(d, true, sinks)).expect("write job");
        let out = Command::new(tenantflow_bin())
            .args(["run", "job.toml", "--workers", "2", "--quiet", "--restore", "latest"])
            .current_dir(d)
            .output()
            .expect("run");
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let copy = format!("file:{}/copy.jsonl", d.display());
    let (ok, err) = restore(&format!("{}[[sinks]]\ntype = \"discard\"\nid = \"extra\"\n", sinks(d, 0)));
    assert!(!ok && err.contains("the job's sink `extra` (sinks[4]) is not in it"), "{err}");
    let removed: String = SINKS[..3].iter().map(|s| s.replace("{dir}", &d.display().to_string())).collect();
    let (ok, err) = restore(&removed);
    assert!(!ok && err.contains(&format!("it holds the progress of sink `{copy}`, which the job no longer has")), "{err}");
    // A moved file is another sink (its id is its path) unless it keeps its id.
    let moved = sinks(d, 0).replace("copy.jsonl", "moved.jsonl");
    let (ok, err) = restore(&moved);
    assert!(!ok && err.contains(&format!("file:{}/moved.jsonl", d.display())), "{err}");
    std::fs::rename(d.join("copy.jsonl"), d.join("moved.jsonl")).expect("move the file");
    let (ok, err) = restore(&moved.replace("moved.jsonl\"\n", &format!("moved.jsonl\"\nid = \"{copy}\"\n")));
    assert!(ok, "{err}");
    assert_eq!(std::fs::read_to_string(d.join("moved.jsonl")).expect("moved"), std::fs::read_to_string(d.join("out.jsonl")).expect("out"));
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
