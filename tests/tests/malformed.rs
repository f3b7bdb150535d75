//! A file mixing good and bad lines: exact results for the good lines, one dead letter (with
//! reason and line number) per bad line, and the job carries on.

use tenantflow_tests::{read_jsonl, run_job};

const LINES: &[&str] = &[
    r#"{"tenant":"a","user":"u1","ts":"2026-01-01T00:00:01Z","ms":1000}"#,
    r#"{"tenant":"a","user":"u2","ts":"2026-01-01T00:00:02Z","ms":2000}"#,
    r#"{"tenant":"a","user":"u1","ts":"2026-01-01T00:00:03Z","ms":"#, // 3: truncated JSON
    r#"{"user":"u3","ts":"2026-01-01T00:00:04Z","ms":4000}"#,         // 4: no tenant
    r#"{"tenant":"b","user":"u3","ts":"2026-01-01T00:00:05Z","ms":"five"}"#, // 5: wrong type
    r#"{"tenant":"b","user":"u3","ms":6000}"#,                        // 6: no event time
    r#"[1,2,3]"#,                                                     // 7: not an object
    r#"{"tenant":"b","user":"u4","ts":"2026-01-01T00:00:08Z","ms":8000}"#,
    "",                                                                    // 9: blank, skipped
    r#"{"tenant":"b","user":"u4","ts":1767225609000,"ms":9000}"#,          // epoch millis = 00:00:09
    r#"{"tenant":"b","user":"u5","ts":"2026-01-01T00:00:11Z","ms":11} x"#, // 11: trailing garbage
    r#"{"tenant":"a","user":"u1","ts":"2026-01-01T00:01:00Z","ms":60000,"extra":{"ignored":[1]}}"#,
];

fn job(dir: &std::path::Path) -> String {
    format!(
        r#"
[source]
type = "file"
path = "{input}"

[schema]
tenant = "tenant"
[schema.fields]
tenant = "string"
user = "string"
ts = "timestamp"
ms = "int"

[time]
field = "ts"

[[steps]]
window = {{ type = "tumbling", size = "1m" }}
aggregates = {{ n = "count(*)", total = "sum(ms)", users = "count_distinct(user)" }}

[[sinks]]
type = "file"
path = "{out}"

[dead_letter]
path = "{dead}"
"#,
        input = dir.join("in.jsonl").display(),
        out = dir.join("out.jsonl").display(),
        dead = dir.join("dead.jsonl").display()
    )
}

#[test]
fn bad_lines_become_dead_letters_and_good_lines_count() {
    for workers in [1, 2] {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("in.jsonl"), LINES.join("\n") + "\n").expect("write input");
        let report = run_job(&job(dir.path()), workers);

        let out = std::fs::read_to_string(dir.path().join("out.jsonl")).expect("output file");
        let rows: Vec<&str> = out.lines().collect();
        assert_eq!(
            rows,
            vec![
                r#"{"tenant":"a","window_start":"2026-01-01T00:00:00.000Z","window_end":"2026-01-01T00:01:00.000Z","n":2,"total":3000,"users":2}"#,
                r#"{"tenant":"b","window_start":"2026-01-01T00:00:00.000Z","window_end":"2026-01-01T00:01:00.000Z","n":2,"total":17000,"users":1}"#,
                r#"{"tenant":"a","window_start":"2026-01-01T00:01:00.000Z","window_end":"2026-01-01T00:02:00.000Z","n":1,"total":60000,"users":1}"#,
            ],
            "workers = {workers}"
        );

        let dead = read_jsonl(&dir.path().join("dead.jsonl"));
        let mut summary: Vec<(u64, String)> =
            dead.iter().map(|d| (d["position"].as_u64().unwrap_or(0), d["reason"].as_str().unwrap_or("").to_string())).collect();
        summary.sort();
        let positions: Vec<u64> = summary.iter().map(|(p, _)| *p).collect();
        assert_eq!(positions, vec![3, 4, 5, 6, 7, 11], "workers = {workers}: {summary:?}");
        for d in &dead {
            assert!(d["source"].as_str().unwrap_or("").ends_with("in.jsonl"), "{d}");
        }
        let reasons: Vec<&str> = summary.iter().map(|(_, r)| r.as_str()).collect();
        assert!(reasons.contains(&"missing tenant field `tenant`"), "{reasons:?}");
        assert!(reasons.contains(&"missing event time field `ts`"), "{reasons:?}");
        assert!(reasons.iter().any(|r| r.starts_with("EOF while parsing a value")), "{reasons:?}");
        assert!(reasons.iter().any(|r| r.starts_with("field `ms`: expected int, found string \"five\"")), "{reasons:?}");
        assert!(reasons.iter().any(|r| r.starts_with("invalid type: sequence, expected a JSON object")), "{reasons:?}");
        assert!(reasons.iter().any(|r| r.starts_with("trailing characters")), "{reasons:?}");
        for d in &dead {
            assert!(!d["raw"].as_str().unwrap_or("").is_empty(), "dead letter without the raw record: {d}");
        }
        assert_eq!(report.dead_letters, 6);
        assert_eq!(report.rows_out, 3);
        assert_eq!(report.tenants["b"].dead_lettered, 1, "{:?}", report.tenants);
    }
}
