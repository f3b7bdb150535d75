//! Values read and written exactly (issue 17): impossible timestamps are dead letters instead
//! of rolling over into valid ones (and dragging the watermark days ahead), `avg` of ints is
//! rounded once, floats are read to the nearest double and written in their shortest form.

use std::path::Path;

use tenantflow_tests::{read_jsonl, run_job};

fn job(dir: &Path, fields: &str, aggregates: &str) -> String {
    format!(
        r#"
[source]
type = "file"
path = "{input}"

[schema]
tenant = "tenant"
[schema.fields]
tenant = "string"
ts = "timestamp"
{fields}

[time]
field = "ts"
max_out_of_orderness = "5s"

[[steps]]
window = {{ type = "tumbling", size = "1m" }}
aggregates = {{ {aggregates} }}

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

fn run(lines: &[&str], fields: &str, aggregates: &str) -> (tempfile::TempDir, Vec<serde_json::Value>) {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("in.jsonl"), lines.join("\n") + "\n").expect("write input");
    run_job(&job(dir.path(), fields, aggregates), 1);
    let rows = read_jsonl(&dir.path().join("out.jsonl"));
    (dir, rows)
}

#[test]
fn impossible_dates_are_dead_letters_and_do_not_move_the_watermark() {
    let lines = [
        r#"{"tenant":"a","ts":"2026-02-30T00:00:00Z","v":1}"#,
        r#"{"tenant":"a","ts":"2026-02-27T00:00:10Z","v":1}"#,
        r#"{"tenant":"a","ts":"2026-02-27T00:00:11Z","v":0}"#,
        r#"{"tenant":"a","ts":"2025-02-29T00:00:12Z","v":1}"#,
        r#"{"tenant":"a","ts":"2026-02-27T00:00:59.5Z","v":1}"#,
        r#"{"tenant":"a","ts":"2026-02-27T23:59:60Z","v":1}"#,
    ];
    let (dir, rows) = run(&lines, "v = \"int\"", "n = \"count(*)\"");
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["window_start"], "2026-02-27T00:00:00.000Z");
    assert_eq!(rows[0]["n"], 3);
    let dead = read_jsonl(&dir.path().join("dead.jsonl"));
    let positions: Vec<_> = dead.iter().map(|d| d["position"].as_u64().unwrap_or(0)).collect();
    assert_eq!(positions, [1, 4, 6], "{dead:?}");
    assert!(dead[0]["reason"].as_str().unwrap_or("").contains("2026-02-30T00:00:00Z\" (not RFC 3339)"), "{dead:?}");
}

#[test]
fn int_averages_are_exact_and_floats_round_trip() {
    let lines = [
        r#"{"tenant":"a","ts":"2026-02-27T00:00:01Z","i":9007199254740993,"x":3.5e+199,"y":1e-300}"#,
        r#"{"tenant":"a","ts":"2026-02-27T00:00:02Z","i":-9007199254740992,"x":9007199254740993.0,"y":0.1}"#,
    ];
    let (_dir, rows) =
        run(&lines, "i = \"int\"\nx = \"float\"\ny = \"float\"", "a = \"avg(i)\", big = \"max(x)\", small = \"min(y)\", lo = \"min(x)\"");
    assert_eq!(rows.len(), 1, "{rows:?}");
    // Converted to floats one by one the two ints cancel to 0.
    assert_eq!(rows[0]["a"], 0.5);
    assert_eq!(rows[0]["big"].as_f64(), Some(3.5e199));
    assert_eq!(rows[0]["lo"].as_f64(), Some(9_007_199_254_740_992.0));
    assert_eq!(rows[0]["small"].as_f64(), Some(1e-300));
    let text = std::fs::read_to_string(_dir.path().join("out.jsonl")).expect("output");
    assert!(text.contains("\"big\":3.5e199") && text.contains("\"small\":1e-300"), "not the shortest form: {text}");
    assert!(text.contains("\"lo\":9007199254740992,") || text.contains("\"lo\":9007199254740992}"), "{text}");
}
