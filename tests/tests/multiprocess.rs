//! Two processes x one worker give byte-identical output to one process x two workers, also
//! when one of them is stopped with a savepoint and both are restored.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tenantflow_tests::tenantflow_bin;

fn job(dir: &Path) -> String {
    job_with(dir, "events = 200000", "")
}

fn job_with(dir: &Path, events: &str, extra: &str) -> String {
    format!(
        r#"
[source]
type = "generator"
profile = "music"
{events}
tenants = 12
out_of_order_fraction = 0.1
max_delay = "3s"
late_fraction = 0.01
late_delay = "2m"
malformed_fraction = 0.001

[schema]
tenant = "tenant_id"
[schema.fields]
tenant_id = "string"
user_id = "string"
track_id = "string"
event_type = "string"
duration_ms = "int"
ts = "timestamp"

[time]
field = "ts"
max_out_of_orderness = "5s"

[[steps]]
filter = "event_type IN ('play', 'skip')"

[[steps]]
window = {{ type = "sliding", size = "1m", slide = "20s" }}
key_by = ["event_type"]
aggregates = {{ n = "count(*)", users = "count_distinct(user_id)", ms = "sum(duration_ms)", top = "top_k(track_id, 3)" }}

[[sinks]]
type = "file"
path = "{dir}/out.jsonl"

[dead_letter]
path = "{dir}/dead.jsonl"

{extra}
"#,
        dir = dir.display()
    )
}

/// Each process's stderr once it exited successfully within `limit`.
fn wait_all(children: Vec<std::process::Child>, limit: Duration) -> Vec<String> {
    let start = Instant::now();
    let mut errs = Vec::new();
    for mut c in children {
        loop {
            match c.try_wait() {
                Ok(Some(status)) => {
                    let mut err = String::new();
                    if let Some(mut e) = c.stderr.take() {
                        let _ = std::io::Read::read_to_string(&mut e, &mut err);
                    }
                    assert!(status.success(), "tenantflow exited with {status}: {err}");
                    errs.push(err);
                    break;
                }
                Ok(None) if start.elapsed() < limit => std::thread::sleep(Duration::from_millis(20)),
                _ => {
                    let _ = c.kill();
                    panic!("tenantflow did not finish within {limit:?}");
                }
            }
        }
    }
    errs
}

/// Ports derived from the pid keep parallel test runs apart; they stay below Linux's
/// ephemeral range (32768 and up), where client sockets and mock brokers take theirs.
fn hostfile(dir: &Path, offset: u16) -> std::path::PathBuf {
    let base = 12_000 + (std::process::id() % 250) as u16 * 4 + offset;
    let path = dir.join("hosts");
    std::fs::write(&path, format!("127.0.0.1:{}\n127.0.0.1:{}\n", base, base + 1)).expect("hostfile");
    path
}

fn spawn_processes(dir: &Path, extra: &[&str]) -> Vec<std::process::Child> {
    (0..2)
        .map(|i| {
            Command::new(tenantflow_bin())
                .args(["run", "job.toml", "--processes", "2", "--process", &i.to_string(), "--hostfile", "hosts", "--quiet"])
                .args(extra)
                .current_dir(dir)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn tenantflow")
        })
        .collect()
}

#[test]
fn two_processes_match_two_threads() {
    let bin = tenantflow_bin();
    let threads = tempfile::tempdir().expect("tempdir");
    let procs = tempfile::tempdir().expect("tempdir");
    for d in [threads.path(), procs.path()] {
        std::fs::write(d.join("job.toml"), job(d)).expect("write job");
    }

    let one = Command::new(&bin)
        .args(["run", "job.toml", "--workers", "2", "--quiet"])
        .current_dir(threads.path())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn tenantflow");
    wait_all(vec![one], Duration::from_secs(120));

    hostfile(procs.path(), 0);
    wait_all(spawn_processes(procs.path(), &[]), Duration::from_secs(120));

    for file in ["out.jsonl", "dead.jsonl"] {
        let a = std::fs::read_to_string(threads.path().join(file)).expect("threads output");
        let b = std::fs::read_to_string(procs.path().join(file)).expect("processes output");
        assert!(a.lines().count() > 10, "{file}: too little output to compare: {a}");
        assert!(a == b, "{file} differs between 1x2 and 2x1 ({} vs {} lines)", a.lines().count(), b.lines().count());
    }
}

/// A stop request reaches one process only; its barriers carry it to the other, the two agree
/// on one savepoint epoch, both stop, and restoring both completes the run exactly.
#[test]
fn a_stop_sent_to_one_process_stops_both_with_one_savepoint() {
    let bin = tenantflow_bin();
    let events = "events = 240000\nrate = 80000";
    let reference = tempfile::tempdir().expect("tempdir");
    std::fs::write(reference.path().join("job.toml"), job_with(reference.path(), events, "")).expect("write job");
    let one = Command::new(&bin)
        .args(["run", "job.toml", "--workers", "2", "--quiet"])
        .current_dir(reference.path())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn tenantflow");
    wait_all(vec![one], Duration::from_secs(120));
    let expected = std::fs::read_to_string(reference.path().join("out.jsonl")).expect("reference output");

    let dir = tempfile::tempdir().expect("tempdir");
    let checkpoint = format!("[checkpoint]\ndir = \"{}/checkpoints\"\ninterval = \"1h\"", dir.path().display());
    std::fs::write(dir.path().join("job.toml"), job_with(dir.path(), events, &checkpoint)).expect("write job");
    hostfile(dir.path(), 2);
    let children = spawn_processes(dir.path(), &[]);
    std::thread::sleep(Duration::from_millis(1500));
    // SAFETY: sending SIGTERM to our own child.
    unsafe { libc::kill(children[1].id() as libc::pid_t, libc::SIGTERM) };
    let errs = wait_all(children, Duration::from_secs(60));
    for (i, err) in errs.iter().enumerate() {
        assert!(err.contains("stopped with savepoint 1"), "process {i}: {err}");
    }
    let partial = std::fs::read_to_string(dir.path().join("out.jsonl")).unwrap_or_default();
    assert!(partial.lines().count() < expected.lines().count(), "the job finished before it was stopped");

    wait_all(spawn_processes(dir.path(), &["--restore", "latest"]), Duration::from_secs(120));
    assert!(std::fs::read_to_string(dir.path().join("out.jsonl")).expect("output") == expected, "restored output differs");
}
