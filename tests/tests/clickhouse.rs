//! The ClickHouse sink against a real ClickHouse (Debian's 18.16, started by the test): the
//! table is created from the job's output schema, holds exactly the job's results, stays exact
//! when the same results are written again (as after a restore), and a table whose columns do
//! not fit is refused when the job starts.

use std::process::Command;

use tenantflow_tests::{tenantflow_bin, ClickHouse};

/// What varies between the tests' jobs.
struct Shape {
    /// Source settings after `profile`.
    source: &'static str,
    window: &'static str,
    create_table: bool,
    checkpoints: bool,
}

/// Quick: 50k events, 1 minute windows.
const QUICK: Shape = Shape { source: "events = 50000", window: "1m", create_table: true, checkpoints: false };
/// Slow: 200k events at 50k/s, 2 s windows, small and frequent batches.
const SLOW: Shape = Shape { source: "events = 200000\nrate = 50000", window: "2s", create_table: true, checkpoints: false };

/// A windowed music job writing to a file and to ClickHouse `table`.
fn job(dir: &std::path::Path, url: &str, table: &str, shape: Shape) -> String {
    let checkpoint = if shape.checkpoints {
        format!("[checkpoint]\ndir = \"{}/checkpoints\"\ninterval = \"150ms\"\n", dir.display())
    } else {
        String::new()
    };
    format!(
        r#"
name = "plays"
[source]
type = "generator"
profile = "music"
{source}
tenants = 4

[schema]
tenant = "tenant_id"
[schema.fields]
tenant_id = "string"
user_id = "string"
event_type = "string"
ts = "timestamp"

[time]
field = "ts"
max_out_of_orderness = "2s"

[[steps]]
window = {{ type = "tumbling", size = "{window}" }}
key_by = ["event_type"]
aggregates = {{ n = "count(*)", users = "count_distinct(user_id)" }}

[[sinks]]
type = "file"
path = "{dir}/out.jsonl"

[[sinks]]
type = "clickhouse"
url = "{url}"
table = "{table}"
create_table = {create}
batch_rows = 200
batch_interval = "100ms"

{checkpoint}
"#,
        source = shape.source,
        window = shape.window,
        dir = dir.display(),
        create = shape.create_table,
    )
}

/// The file sink's rows as ClickHouse returns them in [`table_rows`], sorted.
fn file_rows(dir: &std::path::Path) -> Vec<String> {
    let mut rows: Vec<String> = tenantflow_tests::read_jsonl(&dir.join("out.jsonl"))
        .iter()
        .map(|r| {
            let start = tenantflow_core::time::parse_timestamp(r["window_start"].as_str().unwrap_or("")).map_or(-1, |us| us / 1_000_000);
            let (tenant, kind) = (r["tenant_id"].as_str().unwrap_or(""), r["event_type"].as_str().unwrap_or(""));
            format!("{tenant}\t{kind}\t{start}\t{}\t{}", r["n"], r["users"])
        })
        .collect();
    rows.sort();
    rows
}

fn run(dir: &std::path::Path, text: &str) -> std::process::Output {
    std::fs::write(dir.join("job.toml"), text).expect("write job");
    Command::new(tenantflow_bin()).args(["run", "job.toml", "--workers", "2", "--quiet"]).current_dir(dir).output().expect("run")
}

#[test]
fn results_land_in_clickhouse_exactly_once() {
    let ch = ClickHouse::start(22_000 + (std::process::id() % 300) as u16 * 4);
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let out = run(d, &job(d, &ch.url, "default.plays", QUICK));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let expected = file_rows(d);
    assert!(expected.len() > 20, "too little output to compare");
    assert_eq!(table_rows(&ch, "default.plays"), expected);

    // The same results written again (as after a restore) replace themselves.
    let out = run(d, &job(d, &ch.url, "default.plays", QUICK));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(table_rows(&ch, "default.plays"), expected);

    // A table that does not fit the job is refused when the job starts, with the reason.
    ch.query("CREATE TABLE default.other (x Int64) ENGINE = MergeTree() ORDER BY x").expect("create");
    let out = run(d, &job(d, &ch.url, "default.other", Shape { create_table: false, ..QUICK }));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("default.other") && err.contains("columns are (x Int64)"), "{err}");
    let out = run(d, &job(d, &ch.url, "default.missing", Shape { create_table: false, ..QUICK }));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing"), "{}", String::from_utf8_lossy(&out.stderr));
}

fn table_rows(ch: &ClickHouse, table: &str) -> Vec<String> {
    let sql = format!("SELECT tenant_id, event_type, toUnixTimestamp(window_start), n, users FROM {table} FINAL FORMAT TabSeparated");
    let mut v: Vec<String> = ch.query(&sql).expect("select").lines().map(String::from).collect();
    v.sort();
    v
}

/// SIGKILLed at several points while results flow and restored each time, the job leaves in
/// ClickHouse exactly the results of a crash-free run (`FINAL` folds rows written twice).
#[test]
fn killed_and_restored_runs_leave_exactly_the_crash_free_results() {
    let ch = ClickHouse::start(22_000 + (std::process::id() % 300) as u16 * 4 + 1_200);
    let reference = tempfile::tempdir().expect("tempdir");
    let out = run(reference.path(), &job(reference.path(), &ch.url, "default.reference", SLOW));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let expected = table_rows(&ch, "default.reference");
    assert!(expected.len() > 50, "too little output to compare");

    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    // The file sink last here (first in the other tests): checkpoints follow sink ids, not positions.
    let file_sink = format!("[[sinks]]\ntype = \"file\"\npath = \"{}/out.jsonl\"\n", d.display());
    let text = job(d, &ch.url, "default.crashed", Shape { checkpoints: true, ..SLOW });
    assert!(text.contains(&file_sink), "test setup: the file sink moved");
    let text = text.replacen(&file_sink, "", 1) + "\n" + &file_sink;
    std::fs::write(d.join("job.toml"), text).expect("write job");
    let (kills, _) = tenantflow_tests::run_with_kills(d, &[900, 600, 1100, 500, 60_000]);
    assert!(kills >= 3, "the job finished before it could be killed enough ({kills} kills)");
    assert_eq!(table_rows(&ch, "default.crashed"), expected, "ClickHouse results after {kills} kills differ from a crash-free run");
}

/// ClickHouse stopped for 10 s mid-run and started again: the job waits (retrying), resumes, and
/// ClickHouse ends up with every result once.
#[test]
fn a_clickhouse_outage_makes_the_job_wait_and_loses_nothing() {
    use std::time::Duration;
    let mut ch = ClickHouse::start(22_000 + (std::process::id() % 300) as u16 * 4 + 2_400);
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    std::fs::write(d.join("job.toml"), job(d, &ch.url, "default.outage", SLOW)).expect("write job");
    let mut child = Command::new(tenantflow_bin())
        .args(["run", "job.toml", "--workers", "2", "--quiet"])
        .current_dir(d)
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    std::thread::sleep(Duration::from_millis(1200));
    ch.stop();
    std::thread::sleep(Duration::from_secs(10));
    assert!(child.try_wait().expect("try_wait").is_none(), "the job ended while ClickHouse was down");
    ch.restart();
    let (status, _) = tenantflow_tests::wait_exit(&mut child, Duration::from_secs(60), "the job did not finish after ClickHouse came back");
    assert!(status.success());
    let expected = file_rows(d);
    assert!(expected.len() > 50, "too little output to compare");
    assert_eq!(table_rows(&ch, "default.outage"), expected);
}

/// ClickHouse killed mid-run, tenantflow SIGKILLed during the outage and restored at once while
/// ClickHouse is still down: the restored job waits for it and, once it is back, the table holds
/// exactly the results (issue 17: 3316 of 4011 rows were missing).
#[test]
fn a_restore_while_clickhouse_is_down_waits_for_it_and_loses_nothing() {
    let ch = std::cell::RefCell::new(ClickHouse::start(28_400 + (std::process::id() % 300) as u16 * 4));
    let url = ch.borrow().url.clone();
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let shape = Shape { source: "events = 200000\nrate = 40000", checkpoints: true, ..SLOW };
    std::fs::write(d.join("job.toml"), job(d, &url, "default.restored", shape)).expect("write job");
    tenantflow_tests::restore_during_outage(d, || ch.borrow_mut().kill(), || ch.borrow_mut().restart());
    let expected = file_rows(d);
    assert!(expected.len() > 50, "too little output to compare");
    assert_eq!(table_rows(&ch.borrow(), "default.restored"), expected);
}
