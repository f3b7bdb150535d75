//! The ClickHouse sink against a real ClickHouse (Debian's 18.16, started by the test): the
//! table is created from the job's output schema, holds exactly the job's results, stays exact
//! when the same results are written again (as after a restore), and a table whose columns do
//! not fit is refused when the job starts.

use std::process::Command;

use tenantflow_tests::{tenantflow_bin, ClickHouse};

fn job(dir: &std::path::Path, url: &str, table: &str, create: bool) -> String {
    format!(
        r#"
name = "plays"
[source]
type = "generator"
profile = "music"
events = 50000
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
max_out_of_orderness = "5s"

[[steps]]
window = {{ type = "tumbling", size = "1m" }}
key_by = ["event_type"]
aggregates = {{ n = "count(*)", users = "count_distinct(user_id)" }}

[[sinks]]
type = "file"
path = "{}/out.jsonl"

[[sinks]]
type = "clickhouse"
url = "{url}"
table = "{table}"
create_table = {create}
batch_rows = 500
"#,
        dir.display()
    )
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
    let out = run(d, &job(d, &ch.url, "default.plays", true));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // The file sink's rows, as (tenant, event_type, window start in seconds, n, users).
    let mut expected: Vec<String> = tenantflow_tests::read_jsonl(&d.join("out.jsonl"))
        .iter()
        .map(|r| {
            let start = r["window_start"].as_str().unwrap_or("");
            let secs = chrono_secs(start);
            format!(
                "{}\t{}\t{secs}\t{}\t{}",
                r["tenant_id"].as_str().unwrap_or(""),
                r["event_type"].as_str().unwrap_or(""),
                r["n"],
                r["users"]
            )
        })
        .collect();
    expected.sort();
    assert!(expected.len() > 20, "too little output to compare");
    let select = "SELECT tenant_id, event_type, toUnixTimestamp(window_start), n, users FROM default.plays FINAL ORDER BY tenant_id, event_type, window_start FORMAT TabSeparated";
    let rows = |ch: &ClickHouse| {
        let mut v: Vec<String> = ch.query(select).expect("select").lines().map(String::from).collect();
        v.sort();
        v
    };
    assert_eq!(rows(&ch), expected);

    // The same results written again (as after a restore) replace themselves.
    let out = run(d, &job(d, &ch.url, "default.plays", true));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(rows(&ch), expected);

    // A table that does not fit the job is refused when the job starts, with the reason.
    ch.query("CREATE TABLE default.other (x Int64) ENGINE = MergeTree() ORDER BY x").expect("create");
    let out = run(d, &job(d, &ch.url, "default.other", false));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("default.other") && err.contains("columns are (x Int64)"), "{err}");
    let out = run(d, &job(d, &ch.url, "default.missing", false));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing"), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Seconds since the epoch of an RFC 3339 UTC timestamp as the file sink writes it
/// (`2026-01-01T00:01:00.000Z`).
fn chrono_secs(s: &str) -> i64 {
    tenantflow_core::time::parse_timestamp(s).map_or(-1, |us| us / 1_000_000)
}
