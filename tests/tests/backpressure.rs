//! Backpressure: with a deliberately slow sink, sources wait for the sink instead of buffering,
//! so peak memory stays bounded. The same job with backpressure effectively off shows the
//! difference (and proves the measurement can fail).

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};

use tenantflow_tests::tenantflow_bin;

/// Runs `tenantflow run` and returns its peak RSS in bytes (from wait4's rusage).
// The child is reaped by `wait4`, which clippy cannot see.
#[allow(clippy::zombie_processes)]
fn peak_rss(dir: &Path, job: &str) -> u64 {
    std::fs::write(dir.join("job.toml"), job).expect("write job");
    let child = Command::new(tenantflow_bin())
        .args(["run", "job.toml", "--workers", "2", "--quiet"])
        .current_dir(dir)
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn tenantflow");
    let mut status = 0;
    // SAFETY: rusage is plain data filled by the kernel; the pid is our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as libc::pid_t, "wait4 failed");
    let exit = std::process::ExitStatus::from_raw(status);
    assert!(exit.success(), "tenantflow failed: {exit}");
    usage.ru_maxrss as u64 * 1024
}

fn job(max_lead: &str) -> String {
    format!(
        r#"
[source]
type = "generator"
profile = "sequence"
events = 1000000
event_interval = "1us"

[schema]
tenant = "tenant"
[schema.fields]
tenant = "int"
user = "int"
ts = "timestamp"
value = "int"

[time]
field = "ts"

[[steps]]
filter = "value >= 0"

[[sinks]]
type = "discard"
delay_per_row = "1us"

[runtime]
max_lead = "{max_lead}"
"#
    )
}

#[test]
fn slow_sink_bounds_memory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bounded = peak_rss(dir.path(), &job("10ms"));
    let unbounded = peak_rss(dir.path(), &job("1h"));
    eprintln!("peak RSS: {} MiB with backpressure, {} MiB without", bounded >> 20, unbounded >> 20);
    assert!(bounded < 80 << 20, "peak RSS {} MiB with backpressure", bounded >> 20);
    assert!(unbounded > 2 * bounded, "without backpressure the job should buffer ({} vs {} MiB)", unbounded >> 20, bounded >> 20);
}
