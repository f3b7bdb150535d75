//! Two processes x one worker give byte-identical output to one process x two workers.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tenantflow_tests::tenantflow_bin;

fn job(dir: &Path) -> String {
    format!(
        r#"
[source]
type = "generator"
profile = "music"
events = 200000
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
"#,
        dir = dir.display()
    )
}

fn wait_all(children: Vec<std::process::Child>, limit: Duration) {
    let start = Instant::now();
    for mut c in children {
        loop {
            match c.try_wait() {
                Ok(Some(status)) => {
                    assert!(status.success(), "tenantflow exited with {status}");
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

    // Ports derived from the pid keep parallel test runs apart; they stay below Linux's
    // ephemeral range (32768 and up), where client sockets and mock brokers take theirs.
    let base = 12_000 + (std::process::id() % 10_000) as u16 * 2;
    let hostfile = procs.path().join("hosts");
    std::fs::write(&hostfile, format!("127.0.0.1:{}\n127.0.0.1:{}\n", base, base + 1)).expect("hostfile");
    let children: Vec<_> = (0..2)
        .map(|i| {
            Command::new(&bin)
                .args(["run", "job.toml", "--processes", "2", "--process", &i.to_string(), "--hostfile", "hosts", "--quiet"])
                .current_dir(procs.path())
                .stdout(Stdio::null())
                .spawn()
                .expect("spawn tenantflow")
        })
        .collect();
    wait_all(children, Duration::from_secs(120));

    for file in ["out.jsonl", "dead.jsonl"] {
        let a = std::fs::read_to_string(threads.path().join(file)).expect("threads output");
        let b = std::fs::read_to_string(procs.path().join(file)).expect("processes output");
        assert!(a.lines().count() > 10, "{file}: too little output to compare: {a}");
        assert!(a == b, "{file} differs between 1x2 and 2x1 ({} vs {} lines)", a.lines().count(), b.lines().count());
    }
}
