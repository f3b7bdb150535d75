//! Kafka end to end, against librdkafka's mock cluster started by `tenantflow dev-kafka`:
//! events produced by an external client (Debian's `kcat`) are windowed and land in a Kafka
//! topic with exactly the expected results; an undecodable record becomes a dead letter.

use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tenantflow_tests::tenantflow_bin;

/// Kills the child (by PID) when dropped, so a failing test leaves no broker behind.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn kcat() -> &'static str {
    assert!(
        Command::new("kcat").arg("-V").output().is_ok_and(|o| o.status.success()),
        "kcat is missing: scripts/setup.sh installs it (apt-get install kcat)"
    );
    "kcat"
}

/// Runs a command to completion within `limit`, returning its stdout.
fn run(mut cmd: Command, stdin: Option<&str>, limit: Duration) -> String {
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() }).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn");
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().expect("stdin");
        pipe.write_all(text.as_bytes()).expect("write stdin");
    }
    let start = Instant::now();
    loop {
        match child.try_wait().expect("wait") {
            Some(_) => break,
            None if start.elapsed() > limit => {
                let _ = child.kill();
                panic!("{cmd:?} did not finish within {limit:?}");
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    let out = child.wait_with_output().expect("output");
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn start_cluster(dir: &Path) -> (Guard, String) {
    let child = Command::new(tenantflow_bin())
        .args(["dev-kafka", "events", "results", "--partitions", "3", "--bootstrap-file", "bootstrap"])
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
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
    let (_cluster, bootstrap) = start_cluster(dir.path());

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
