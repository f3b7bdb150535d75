//! Kafka end to end, against librdkafka's mock cluster started by `tenantflow dev-kafka`:
//! events produced by an external client (Debian's `kcat`) are windowed and land in a Kafka
//! topic with exactly the expected results; an undecodable record becomes a dead letter.

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tenantflow_tests::{dev_kafka, tenantflow_bin};

/// Kills the child (by PID) when dropped, so a failing test leaves no broker behind.
fn kcat() -> &'static str {
    assert!(
        Command::new("kcat").arg("-V").output().is_ok_and(|o| o.status.success()),
        "kcat is missing: scripts/setup.sh installs it (apt-get install kcat)"
    );
    "kcat"
}

/// Runs a command to completion within `limit`, returning its stdout. Its output is read while
/// it runs: a consumer printing more than a pipe holds would otherwise block forever.
fn run(mut cmd: Command, stdin: Option<&str>, limit: Duration) -> String {
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() }).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn");
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().expect("stdin");
        pipe.write_all(text.as_bytes()).expect("write stdin");
    }
    let pid = child.id() as libc::pid_t;
    let done = Arc::new(AtomicBool::new(false));
    let watchdog = {
        let done = Arc::clone(&done);
        std::thread::spawn(move || {
            let start = Instant::now();
            while !done.load(Ordering::SeqCst) {
                if start.elapsed() > limit {
                    // SAFETY: signalling our own child, which has not been reaped yet.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                    return true;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            false
        })
    };
    let out = child.wait_with_output().expect("output");
    done.store(true, Ordering::SeqCst);
    assert!(!watchdog.join().expect("watchdog"), "{cmd:?} did not finish within {limit:?}");
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const JOB: &str = r#"
[source]
type = "kafka"
bootstrap_file = "bootstrap"
topic = "events"
bounded = true

[schema]
tenant = "tenant"
[schema.fields]
tenant = "string"
ms = "int"
ts = "timestamp"

[time]
field = "ts"
max_out_of_orderness = "5s"

[[steps]]
window = { type = "tumbling", size = "10s" }
aggregates = { n = "count(*)", ms = "sum(ms)" }

[[sinks]]
type = "kafka"
bootstrap_file = "bootstrap"
topic = "results"
"#;

#[test]
fn kcat_events_are_windowed_into_a_topic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_cluster, bootstrap) = dev_kafka(dir.path(), &["events", "results"]);

    // 300 events over 3 tenants and 60 s of event time, slightly out of order, plus one bad record.
    let mut lines: Vec<String> = (0..300)
        .map(|i: i64| format!(r#"{{"tenant":"t{}","ms":{},"ts":{}}}"#, i % 3, i, 1_767_225_600_000 + i * 200 - (i % 7) * 300))
        .collect();
    lines.insert(100, "not json".into());
    let mut produce = Command::new(kcat());
    produce.args(["-P", "-b", &bootstrap, "-t", "events"]);
    run(produce, Some(&(lines.join("\n") + "\n")), Duration::from_secs(30));

    std::fs::write(dir.path().join("job.toml"), JOB).expect("write job");
    let mut job = Command::new(tenantflow_bin());
    job.args(["run", "job.toml", "--workers", "2", "--quiet"]).current_dir(dir.path());
    run(job, None, Duration::from_secs(60));

    let mut consume = Command::new(kcat());
    consume.args(["-C", "-b", &bootstrap, "-t", "results", "-e", "-q", "-f", "%k %s\\n"]);
    let out = run(consume, None, Duration::from_secs(30));
    let mut got: Vec<&str> = out.lines().collect();
    got.sort();

    // Expected: tumbling 10 s windows per tenant, computed directly.
    let mut windows: std::collections::BTreeMap<(i64, i64), (i64, i64)> = std::collections::BTreeMap::new();
    for i in 0..300i64 {
        let ts = 1_767_225_600_000 + i * 200 - (i % 7) * 300;
        let w = windows.entry((i % 3, ts.div_euclid(10_000))).or_default();
        w.0 += 1;
        w.1 += i;
    }
    let fmt = |ms: i64| tenantflow_core::time::format_rfc3339(ms * 1000);
    let mut expected: Vec<String> = windows
        .iter()
        .map(|((t, w), (n, ms))| {
            format!(
                r#"t{t} {{"tenant":"t{t}","window_start":"{}","window_end":"{}","n":{n},"ms":{ms}}}"#,
                fmt(w * 10_000),
                fmt((w + 1) * 10_000)
            )
        })
        .collect();
    expected.sort();
    assert_eq!(got, expected);

    let dead = std::fs::read_to_string(dir.path().join("job.dead-letters.jsonl")).expect("dead letters");
    assert_eq!(dead.lines().count(), 1, "{dead}");
    assert!(dead.contains(r#""raw":"not json""#) && dead.contains(r#""source":"events["#), "{dead}");
}

fn windowed_job(topic: &str, checkpoints: bool) -> String {
    let checkpoint = if checkpoints { "[checkpoint]\ndir = \"checkpoints\"\ninterval = \"100ms\"\n" } else { "" };
    JOB.replace("topic = \"results\"", &format!("topic = \"{topic}\"")) + checkpoint
}

/// Payloads of a topic; with `dedupe`, one per `tenantflow-id` header.
fn consume(bootstrap: &str, topic: &str, dedupe: bool) -> Vec<String> {
    let mut consume = Command::new(kcat());
    consume.args(["-C", "-b", bootstrap, "-t", topic, "-e", "-q", "-f", "%h\\t%s\\n"]);
    let out = run(consume, None, Duration::from_secs(60));
    let mut seen = std::collections::HashSet::new();
    let mut payloads: Vec<String> = out
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .filter(|(id, _)| !dedupe || seen.insert(id.to_string()))
        .map(|(_, p)| p.to_string())
        .collect();
    payloads.sort();
    payloads
}

#[test]
fn killed_kafka_job_yields_each_result_once_by_id() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_cluster, bootstrap) = dev_kafka(dir.path(), &["events", "results", "reference"]);
    let lines: Vec<String> = (0..200_000i64)
        .map(|i| format!(r#"{{"tenant":"t{}","ms":{},"ts":{}}}"#, i % 5, i % 1000, 1_767_225_600_000 + i * 3 - (i % 11) * 40))
        .collect();
    let input = dir.path().join("events.jsonl");
    std::fs::write(&input, lines.join("\n") + "\n").expect("write events");
    let mut produce = Command::new(kcat());
    produce.args(["-P", "-b", &bootstrap, "-t", "events", "-l"]).arg(&input);
    run(produce, None, Duration::from_secs(60));

    // The crash-free reference.
    std::fs::write(dir.path().join("reference.toml"), windowed_job("reference", false)).expect("write job");
    let mut reference = Command::new(tenantflow_bin());
    reference.args(["run", "reference.toml", "--workers", "2", "--quiet"]).current_dir(dir.path());
    let started = Instant::now();
    run(reference, None, Duration::from_secs(120));
    let clean_run = started.elapsed();
    let expected = consume(&bootstrap, "reference", false);
    assert!(expected.len() > 100);

    // The same job with checkpoints, killed with SIGKILL at several points, restored each time.
    std::fs::write(dir.path().join("job.toml"), windowed_job("results", true)).expect("write job");
    let mut kills = 0;
    for attempt in 0..8u32 {
        let mut cmd = Command::new(tenantflow_bin());
        cmd.args(["run", "job.toml", "--workers", "2", "--quiet"]).current_dir(dir.path()).stdout(Stdio::null()).stderr(Stdio::piped());
        cmd.env("TENANTFLOW_LOG", "info");
        if attempt > 0 {
            cmd.args(["--restore", "latest"]);
        }
        let mut child = cmd.spawn().expect("spawn");
        let kill_at = Instant::now() + clean_run.mul_f64([0.4, 0.3, 0.5, 0.35][attempt as usize % 4]);
        let done = loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut e, &mut err);
                }
                assert!(status.success(), "run {attempt} failed: {err}");
                break true;
            }
            if attempt < 4 && Instant::now() >= kill_at {
                break false;
            }
            if Instant::now() >= kill_at + Duration::from_secs(120) {
                let _ = child.kill();
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut e, &mut err);
                }
                let tail: Vec<&str> = err.lines().rev().take(15).collect();
                panic!("run {attempt} did not finish: {tail:?}");
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        if done {
            break;
        }
        child.kill().expect("SIGKILL");
        let _ = child.wait();
        kills += 1;
    }
    assert!(kills >= 2, "only {kills} kills landed");
    let got = consume(&bootstrap, "results", true);
    let missing: Vec<&String> = expected.iter().filter(|e| !got.contains(e)).take(3).collect();
    let extra: Vec<&String> = got.iter().filter(|g| !expected.contains(g)).take(3).collect();
    assert!(
        got == expected,
        "after {kills} kills: {} results vs {} expected; missing {missing:?}; extra {extra:?}",
        got.len(),
        expected.len()
    );
}
