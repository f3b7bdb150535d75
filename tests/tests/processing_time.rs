//! Processing-time windows: records are stamped when read and windows close on the wall clock.

use tenantflow_core::time::now_micros;
use tenantflow_tests::{read_jsonl, run_job};

#[test]
fn processing_time_windows_count_every_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lines: Vec<String> = (0..500).map(|i| format!(r#"{{"tenant":"t{}","v":{i}}}"#, i % 3)).collect();
    std::fs::write(dir.path().join("in.jsonl"), lines.join("\n")).expect("write");
    let job = format!(
        r#"
[source]
type = "file"
path = "{dir}/in.jsonl"

[schema]
tenant = "tenant"
[schema.fields]
tenant = "string"
v = "int"

[time]
mode = "processing"

[[steps]]
window = {{ type = "tumbling", size = "1h" }}
aggregates = {{ n = "count(*)", total = "sum(v)" }}

[[sinks]]
type = "file"
path = "{dir}/out.jsonl"
"#,
        dir = dir.path().display()
    );
    let before = now_micros();
    let report = run_job(&job, 2);
    let rows = read_jsonl(&dir.path().join("out.jsonl"));
    let n: i64 = rows.iter().map(|r| r["n"].as_i64().unwrap_or(0)).sum();
    let total: i64 = rows.iter().map(|r| r["total"].as_i64().unwrap_or(0)).sum();
    assert_eq!(n, 500);
    assert_eq!(total, (0..500).sum::<i64>());
    assert_eq!(report.late_dropped, 0);
    // The windows are the wall-clock hour(s) of the run.
    let hour = 3_600_000_000i64;
    let start = tenantflow_core::time::parse_timestamp(rows[0]["window_start"].as_str().unwrap_or("")).expect("timestamp");
    assert!(start % hour == 0 && start <= before && before - start < hour, "window {start} vs now {before}");
}
