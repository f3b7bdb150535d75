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
        (with("count(*)", "median(duration_ms)"), "job.toml:27:25: `steps[1].aggregates.plays`: unknown aggregate `median` (expected one of: count, sum, min, max, avg, count_distinct, approx_count_distinct, approx_percentile, p50, p95, p99, first, last, top_k, list)"),
        (with("type = \"stdout\"", "type = \"stdout\"\nformat = \"xml\""), "job.toml:31:10: `sinks[0].format`: unknown value \"xml\" (expected one of: table, json)"),
        (with("ts = \"timestamp\"", "ts = \"string\""), "job.toml:16:7: `schema.fields.ts`: type error: the generator produces `ts` as timestamp, not string"),
        (with("[time]\nfield = \"ts\"", "[time]\nfield = \"event_type\""), "job.toml:19:10: `time.field`: type error: the event-time field must be a timestamp, found string"),
        (with("max_out_of_orderness = \"1s\"", "max_out_of_orderness = \"1s\"\nlate_policy = \"side_output\""), "job.toml:18:1: `time.late_output`: missing key `late_output` in [time] (expected a file path for late events when late_policy = \"side_output\")"),
        (with("name = \"plays\"", "name = \"plays"), "job.toml:2:14: `(syntax)`: invalid TOML: invalid basic string, expected `\"`"),
        (with("[[sinks]]\ntype = \"stdout\"", "[[sinks]]\npath = \"x\""), "job.toml:29:1: `sinks[0].type`: missing key `type` in [sinks[0]] (expected one of: stdout, file, kafka, discard, clickhouse, redis)"),
        (with("[[sinks]]\ntype = \"stdout\"", "[[sinks]]\ntype = \"clickhouse\"\nurl = \"localhost:8123\"\ntable = \"t\""), "job.toml:31:7: `sinks[0].url`: expected an http:// or https:// URL, found \"localhost:8123\""),
        (with("[[sinks]]\ntype = \"stdout\"", "[[sinks]]\ntype = \"clickhouse\"\nurl = \"http://h:8123\"\ntable = \"a.b.c\""), "job.toml:32:9: `sinks[0].table`: expected `table` or `database.table` (letters, digits, _), found \"a.b.c\""),
        (with("[[sinks]]\ntype = \"stdout\"", "[[sinks]]\ntype = \"stdout\"\n\n[[sinks]]\ntype = \"stdout\""), "job.toml:32:1: `sinks[1].id`: sinks[0] has the id \"stdout\" too: give one of them its own `id` (checkpoints record each sink's progress by it)"),
        (with("[[sinks]]\ntype = \"stdout\"", "[[sinks]]\ntype = \"discard\"\nid = \"out\"\n\n[[sinks]]\ntype = \"stdout\"\nid = \"out\""), "job.toml:35:6: `sinks[1].id`: sinks[0] has the id \"out\" too: give one of them its own `id` (checkpoints record each sink's progress by it)"),
        (with("[[sinks]]\ntype = \"stdout\"", "[[sinks]]\ntype = \"stdout\"\nid = \"\""), "job.toml:31:6: `sinks[0].id`: expected a non-empty id of at most 200 characters without control characters"),
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

const PATTERN: &str = r#"
name = "churn"

[source]
type = "generator"
profile = "music"
events = 100

[schema]
tenant = "tenant_id"

[schema.fields]
tenant_id = "string"
user_id = "string"
event_type = "string"
amount = "float"
ts = "timestamp"

[time]
field = "ts"

[[steps]]
pattern = "failed{3} -> cancel"
key_by = ["user_id"]
within = "7d"
define = { failed = "event_type = 'payment_failed'", cancel = "event_type = 'cancel' AND amount > failed.amount" }
measures = { failures = "count(failed.*)", total = "sum(failed.amount)" }

[[sinks]]
type = "stdout"
"#;

#[test]
fn bad_patterns_get_exact_errors() {
    assert_eq!(errors(PATTERN), Vec::<String>::new());
    let with = |from: &str, to: &str| {
        assert!(PATTERN.contains(from), "test setup: {from:?} not in the pattern job");
        PATTERN.replacen(from, to, 1)
    };
    let cases: Vec<(String, &str)> = vec![
        (with("failed{3} -> cancel", "failed{3} => cancel"), "job.toml:23:22: `steps[0].pattern`: expected a step name (letters, digits, _), found `=`"),
        (with("failed{3} -> cancel", "failed{3,1} -> cancel"), "job.toml:23:18: `steps[0].pattern`: invalid quantifier {3,1}: expected at least one event and min <= max"),
        (with("failed{3} -> cancel", "failed -> cancel+"), "job.toml:23:22: `steps[0].pattern`: a greedy quantifier cannot end the pattern (there is no next step to stop it); make it reluctant (`cancel+?`) or add a step after it"),
        (with("failed{3} -> cancel", "!failed -> cancel"), "job.toml:23:12: `steps[0].pattern`: a pattern cannot start with a negation"),
        (with("failed{3} -> cancel", "failed -> !cancel").replacen("within = \"7d\"\n", "", 1), "job.toml:23:22: `steps[0].pattern`: a pattern that ends with `-> !step` needs `within`: the match is emitted once that time has passed without the step"),
        (with("failed{3} -> cancel", "failed? -> !cancel -> x"), "job.toml:23:23: `steps[0].pattern`: a negation cannot follow the optional step `failed` (as in Flink CEP)"),
        (with("failed{3} -> cancel", "failed -> failed"), "job.toml:23:22: `steps[0].pattern`: step `failed` appears twice; give each step its own name"),
        (with("amount > failed.amount", "amount > failure.amount"), "job.toml:26:99: `steps[0].define.cancel`: unknown field `failure.amount` (expected one of: tenant_id, user_id, event_type, amount, ts, cancel.tenant_id, cancel.user_id, cancel.event_type, cancel.amount, cancel.ts)"),
        (with("amount > failed.amount", "amount + failed.amount"), "job.toml:26:90: `steps[0].define.cancel`: AND expects bool operands, found float"),
        (with("cancel = \"event", "cancelled = \"event"), "job.toml:26:67: `steps[0].define.cancelled`: no step `cancelled` in the pattern (its steps: failed, cancel)"),
        (with("within = \"7d\"", "within = \"7d\"\nafter_match = \"skip_to_last:cancelled\""), "job.toml:26:16: `steps[0].after_match`: no step `cancelled` in the pattern (its steps: failed, cancel)"),
        (with("within = \"7d\"", "within = \"7d\"\nafter_match = \"skip_all\""), "job.toml:26:16: `steps[0].after_match`: unknown after_match \"skip_all\" (expected one of: no_skip, skip_to_next, skip_past_last_event, skip_to_first:<step>, skip_to_last:<step>)"),
        (with("within = \"7d\"", "within = \"7d\"\ncontiguity = { cancel = \"strict\" }"), "job.toml:26:26: `steps[0].contiguity.cancel`: `contiguity` applies to looping steps; `cancel` takes one event"),
        (with("within = \"7d\"", "timeouts = true"), "job.toml:23:12: `steps[0].pattern`: `timeouts = true` needs `within` (a partial match times out that long after its first event)"),
        (with("sum(failed.amount)", "sum(failed.event_type)"), "job.toml:27:53: `steps[0].measures.total`: type error: `sum` needs a numeric argument, found string"),
        (with("sum(failed.amount)", "sum(failed.amount + cancel.amount)"), "job.toml:27:53: `steps[0].measures.total`: a measure aggregates the events of one step (or of the whole match), not of several"),
        (with("key_by = [\"user_id\"]", "key_by = [\"user\"]"), "job.toml:24:12: `steps[0].key_by[0]`: unknown field `user` (expected one of: tenant_id, user_id, event_type, amount, ts)"),
        (with("[time]\nfield = \"ts\"", "[time]\nfield = \"ts\"\nallowed_lateness = \"1m\"\nlate_policy = \"update\""), "job.toml:25:12: `steps[0].pattern`: late_policy = \"update\" re-fires windows; a pattern takes events in time order once: use \"drop\" or \"side_output\""),
    ];
    for (i, (text, expected)) in cases.iter().enumerate() {
        assert_eq!(errors(text), vec![expected.to_string()], "case {i}");
    }
}
