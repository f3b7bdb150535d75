//! The `tenantflow` command line: validate's exit codes and messages, a job reading stdin, help.

use std::io::Write;
use std::process::{Command, Stdio};

use tenantflow_tests::tenantflow_bin;

const JOB: &str = r#"
[source]
type = "stdin"

[schema]
tenant = "tenant"
[schema.fields]
tenant = "string"
ms = "int"
ts = "timestamp"

[time]
field = "ts"

[[steps]]
window = { type = "tumbling", size = "10s" }
aggregates = { n = "count(*)", ms = "sum(ms)" }

[[sinks]]
type = "stdout"
format = "json"
"#;

#[test]
fn validate_reports_ok_and_errors_with_exit_codes() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("good.toml"), JOB).expect("write");
    std::fs::write(dir.path().join("bad.toml"), JOB.replace("sum(ms)", "sum(tenant)")).expect("write");

    let ok = Command::new(tenantflow_bin()).args(["validate", "good.toml"]).current_dir(dir.path()).output().expect("run");
    assert!(ok.status.success());
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(stdout.starts_with("good.toml: ok"), "{stdout}");
    assert!(stdout.contains("window_start timestamp"), "{stdout}");

    let bad = Command::new(tenantflow_bin()).args(["validate", "bad.toml"]).current_dir(dir.path()).output().expect("run");
    assert_eq!(bad.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(stderr.trim(), "bad.toml:17:38: `steps[0].aggregates.ms`: type error: `sum` needs a numeric argument, found string");

    let missing = Command::new(tenantflow_bin()).args(["validate", "nope.toml"]).current_dir(dir.path()).output().expect("run");
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("cannot read nope.toml"));
}

#[test]
fn run_reads_stdin_to_the_end_and_exits_zero() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("job.toml"), JOB).expect("write");
    let mut child = Command::new(tenantflow_bin())
        .args(["run", "job.toml", "--workers", "2", "--quiet"])
        .current_dir(dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stdin = child.stdin.take().expect("stdin");
    writeln!(stdin, r#"{{"tenant":"a","ms":5,"ts":"2026-01-01T00:00:01Z"}}"#).expect("write");
    writeln!(stdin, r#"{{"tenant":"a","ms":7,"ts":"2026-01-01T00:00:02Z"}}"#).expect("write");
    writeln!(stdin, "not json").expect("write");
    writeln!(stdin, r#"{{"tenant":"b","ms":1,"ts":"2026-01-01T00:00:12Z"}}"#).expect("write");
    drop(stdin);
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        vec![
            r#"{"tenant":"a","window_start":"2026-01-01T00:00:00.000Z","window_end":"2026-01-01T00:00:10.000Z","n":2,"ms":12}"#,
            r#"{"tenant":"b","window_start":"2026-01-01T00:00:10.000Z","window_end":"2026-01-01T00:00:20.000Z","n":1,"ms":1}"#,
        ]
    );
    let dead = std::fs::read_to_string(dir.path().join("job.dead-letters.jsonl")).expect("dead letters");
    assert!(dead.contains(r#""source":"stdin","position":3"#), "{dead}");
}

#[test]
fn every_command_has_help() {
    for cmd in [vec!["--help"], vec!["run", "--help"], vec!["validate", "--help"], vec!["demo", "--help"]] {
        let out = Command::new(tenantflow_bin()).args(&cmd).output().expect("run");
        assert!(out.status.success(), "{cmd:?}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("Usage"), "{cmd:?}");
    }
}
