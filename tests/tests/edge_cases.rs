//! Edge cases: event times before 1970, event times out of range, and float sums that must not
//! depend on how rows were split between workers.

use tenantflow_tests::run_job;

fn job(dir: &std::path::Path, aggregates: &str, size: &str) -> String {
    format!(
        r#"
[source]
type = "file"
path = "{dir}/in.jsonl"

[schema]
tenant = "tenant"
[schema.fields]
tenant = "string"
x = "float"
ts = "timestamp"

[time]
field = "ts"
max_out_of_orderness = "1s"

[[steps]]
window = {{ type = "tumbling", size = "{size}" }}
aggregates = {{ {aggregates} }}

[[sinks]]
type = "file"
path = "{dir}/out.jsonl"

[dead_letter]
path = "{dir}/dead.jsonl"
"#,
        dir = dir.display()
    )
}

#[test]
fn windows_before_1970_fire_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lines: Vec<String> = (0..30).map(|i| format!(r#"{{"tenant":"a","x":1.0,"ts":"1969-12-31T23:59:{:02}Z"}}"#, 30 + i)).collect();
    std::fs::write(dir.path().join("in.jsonl"), lines.join("\n")).expect("write");
    for workers in [1, 2] {
        run_job(&job(dir.path(), r#"n = "count(*)""#, "10s"), workers);
        let out = std::fs::read_to_string(dir.path().join("out.jsonl")).expect("output");
        assert_eq!(
            out.lines().collect::<Vec<_>>(),
            vec![
                r#"{"tenant":"a","window_start":"1969-12-31T23:59:30.000Z","window_end":"1969-12-31T23:59:40.000Z","n":10}"#,
                r#"{"tenant":"a","window_start":"1969-12-31T23:59:40.000Z","window_end":"1969-12-31T23:59:50.000Z","n":10}"#,
                r#"{"tenant":"a","window_start":"1969-12-31T23:59:50.000Z","window_end":"1970-01-01T00:00:00.000Z","n":10}"#,
            ],
            "workers = {workers}"
        );
    }
}

#[test]
fn event_times_out_of_range_are_dead_letters() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lines = [r#"{"tenant":"a","x":1,"ts":1000}"#, r#"{"tenant":"a","x":1,"ts":9223372036854775}"#, r#"{"tenant":"a","x":1,"ts":2000}"#];
    std::fs::write(dir.path().join("in.jsonl"), lines.join("\n")).expect("write");
    let report = run_job(&job(dir.path(), r#"n = "count(*)""#, "10s"), 1);
    assert_eq!(report.dead_letters, 1);
    assert_eq!(report.late_dropped, 0, "an absurd timestamp must not push the watermark");
    let dead = std::fs::read_to_string(dir.path().join("dead.jsonl")).expect("dead letters");
    assert!(dead.contains("out of range") && dead.contains(r#""position":2"#), "{dead}");
    let out = std::fs::read_to_string(dir.path().join("out.jsonl")).expect("output");
    assert!(out.contains(r#""n":2"#), "{out}");
}

#[test]
fn float_sums_do_not_depend_on_the_number_of_workers() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Values whose float sum depends on the order of additions.
    let lines: Vec<String> = (0..3000)
        .map(|i| format!(r#"{{"tenant":"t{}","x":{},"ts":{}}}"#, i % 3, [0.1, 0.2, 0.3, 1e16, -1e16, 1.0 / 3.0][i % 6], i * 7))
        .collect();
    std::fs::write(dir.path().join("in.jsonl"), lines.join("\n")).expect("write");
    let mut outputs = Vec::new();
    for workers in [1, 2, 4] {
        run_job(&job(dir.path(), r#"s = "sum(x)", a = "avg(x)""#, "5s"), workers);
        outputs.push(std::fs::read_to_string(dir.path().join("out.jsonl")).expect("output"));
    }
    assert!(outputs[0].lines().count() >= 9);
    assert_eq!(outputs[0], outputs[1]);
    assert_eq!(outputs[0], outputs[2]);
}
