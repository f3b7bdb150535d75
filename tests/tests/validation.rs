//! Bad job files: each gets exactly the error expected (file, line, column, key, what was expected).

use tenantflow_core::plan;

const GOOD: &str = r#"
name = "plays"

[source]
type = "generator"
profile = "music"
events = 100

[schema]
tenant = "tenant_id"

[schema.fields]
tenant_id = "string"
event_type = "string"
duration_ms = "int"
ts = "timestamp"

[time]
field = "ts"
max_out_of_orderness = "1s"

[[steps]]
filter = "event_type = 'play' AND duration_ms >= 30000"

[[steps]]
window = { type = "tumbling", size = "1m" }
aggregates = { plays = "count(*)", total = "sum(duration_ms)" }

[[sinks]]
type = "stdout"
"#;

fn errors(text: &str) -> Vec<String> {
    match plan::load("job.toml", text, &[]) {
        Ok(_) => Vec::new(),
        Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
    }
}

/// Replaces the first occurrence of `from` in the good job.
fn with(from: &str, to: &str) -> String {
    assert!(GOOD.contains(from), "test setup: {from:?} not in the good job");
    GOOD.replacen(from, to, 1)
}

#[test]
fn the_good_job_is_valid() {
    assert_eq!(errors(GOOD), Vec::<String>::new());
}

#[test]
fn bad_jobs_get_exact_errors() {
    let cases: Vec<(String, &str)> = vec![
        (with("events = 100", "events = 100\nspeed = 3"), "job.toml:8:1: `source.speed`: unknown key `speed` (expected one of: type, profile, events, rate, seed, tenants, users, tracks, start_time, event_interval, out_of_order_fraction, max_delay, late_fraction, late_delay, malformed_fraction)"),
        (with("events = 100", "events = \"many\""), "job.toml:7:10: `source.events`: expected an integer, found a string"),
        (with("type = \"generator\"", "type = \"pulsar\""), "job.toml:5:8: `source.type`: unknown value \"pulsar\" (expected one of: generator, file, stdin, kafka)"),
        (with("duration_ms = \"int\"", "duration_ms = \"integr\""), "job.toml:15:15: `schema.fields.duration_ms`: unknown type \"integr\" (expected one of: bool, int, float, string, timestamp)"),
        (with("tenant = \"tenant_id\"", "tenant = \"customer\""), "job.toml:10:11: `schema.tenant`: unknown field `customer` (expected one of: tenant_id, event_type, duration_ms, ts)"),
        (with("duration_ms >= 30000", "durations_ms >= 30000"), "job.toml:23:35: `steps[0].filter`: unknown field `durations_ms` (expected one of: tenant_id, event_type, duration_ms, ts)"),
        (with("duration_ms >= 30000", "duration_ms >= 'long'"), "job.toml:23:35: `steps[0].filter`: type error: cannot compare int with string"),
        (with("filter = \"event_type = 'play' AND duration_ms >= 30000\"", "filter = \"duration_ms + 1\""), "job.toml:23:11: `steps[0].filter`: type error: a filter must be a bool condition, found int"),
        (with("size = \"1m\"", "size = \"1 fortnight\""), "job.toml:26:38: `steps[1].window.size`: invalid duration \"1 fortnight\" (expected e.g. \"500ms\", \"5s\", \"1m\", \"1h30m\", at most 36500d)"),
        (with("field = \"ts\"\n", ""), "job.toml:18:1: `time.field`: missing key `field` in [time] (expected the timestamp field that carries event time (or mode = \"processing\"))"),
        (with("[time]\nfield = \"ts\"\nmax_out_of_orderness = \"1s\"\n", ""), "job.toml:23:10: `steps[1].window`: a window needs a time field: add [time] with field = \"<timestamp field>\" (or mode = \"processing\")"),
        (with("sum(duration_ms)", "sum(event_type)"), "job.toml:27:45: `steps[1].aggregates.total`: type error: `sum` needs a numeric argument, found string"),
        (with("count(*)", "median(duration_ms)"), "job.toml:27:25: `steps[1].aggregates.plays`: unknown aggregate `median` (expected one of: count, sum, min, max, avg, count_distinct, approx_count_distinct, approx_percentile, p50, p95, p99, first, last, top_k)"),
        (with("type = \"stdout\"", "type = \"stdout\"\nformat = \"xml\""), "job.toml:31:10: `sinks[0].format`: unknown value \"xml\" (expected one of: table, json)"),
        (with("ts = \"timestamp\"", "ts = \"string\""), "job.toml:16:7: `schema.fields.ts`: type error: the generator produces `ts` as timestamp, not string"),
        (with("[time]\nfield = \"ts\"", "[time]\nfield = \"event_type\""), "job.toml:19:10: `time.field`: type error: the event-time field must be a timestamp, found string"),
        (with("max_out_of_orderness = \"1s\"", "max_out_of_orderness = \"1s\"\nlate_policy = \"side_output\""), "job.toml:18:1: `time.late_output`: missing key `late_output` in [time] (expected a file path for late events when late_policy = \"side_output\")"),
        (with("name = \"plays\"", "name = \"plays"), "job.toml:2:14: `(syntax)`: invalid TOML: invalid basic string, expected `\"`"),
        (with("[[sinks]]\ntype = \"stdout\"", "[[sinks]]\npath = \"x\""), "job.toml:29:1: `sinks[0].type`: missing key `type` in [sinks[0]] (expected one of: stdout, file, kafka, discard, clickhouse, redis)"),
        (with("[[sinks]]\ntype = \"stdout\"", "[[sinks]]\ntype = \"clickhouse\"\nurl = \"localhost:8123\"\ntable = \"t\""), "job.toml:31:7: `sinks[0].url`: expected an http:// or https:// URL, found \"localhost:8123\""),
        (with("[[sinks]]\ntype = \"stdout\"", "[[sinks]]\ntype = \"clickhouse\"\nurl = \"http://h:8123\"\ntable = \"a.b.c\""), "job.toml:32:9: `sinks[0].table`: expected `table` or `database.table` (letters, digits, _), found \"a.b.c\""),
    ];
    let mut failures = Vec::new();
    for (i, (job, expected)) in cases.iter().enumerate() {
        let got = errors(job);
        if got.first().map(String::as_str) != Some(*expected) {
            failures.push(format!("case {i}:\n  expected: {expected}\n  got:      {got:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn set_overrides_apply_and_report_errors() {
    let p = plan::load("job.toml", GOOD, &["source.events=5".into()]).expect("valid");
    match p.spec.source {
        tenantflow_core::job::SourceSpec::Generator(g) => assert_eq!(g.events, Some(5)),
        _ => panic!("generator expected"),
    }
    let e = plan::load("job.toml", GOOD, &["source.events=\"x\"".into()]).expect_err("invalid");
    assert_eq!(e.to_string(), "job.toml (--set source.events): expected an integer, found a string");
}

#[test]
fn several_errors_are_all_reported() {
    let job = with("events = 100", "events = -1\nbogus = 1");
    let got = errors(&job);
    assert_eq!(got.len(), 2, "{got:?}");
}

#[test]
fn every_example_job_is_valid() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../jobs");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).expect("jobs directory") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "toml") {
            let text = std::fs::read_to_string(&path).expect("read job");
            if let Err(e) = plan::load(&path.display().to_string(), &text, &[]) {
                panic!("{e}");
            }
            checked += 1;
        }
    }
    assert!(checked >= 3, "only {checked} example jobs found in {}", dir.display());
}
