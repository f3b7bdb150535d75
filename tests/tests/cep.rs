//! Pattern jobs end to end (docs/cep.md): the example jobs in `jobs/` find exactly the cases
//! planted in their data; matches do not depend on input order (within the watermark bound) or
//! on the number of workers; a job killed in the middle of partial matches and restored from
//! its checkpoints writes exactly what a run without crashes writes.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use tenantflow_tests::{read_jsonl, run_job, run_with_kills, sorted_lines};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// An example job with its data path made absolute and its stdout sink replaced by a file.
fn example(name: &str, out: &Path) -> String {
    let text = std::fs::read_to_string(repo().join("jobs").join(name)).expect("example job");
    let data = repo().join("jobs/data");
    let text = text.replace("path = \"jobs/data/", &format!("path = \"{}/", data.display()));
    let sink = "[[sinks]]\ntype = \"stdout\"";
    assert!(text.contains(sink), "{name} should end with a stdout sink");
    text.replace(sink, &format!("[[sinks]]\ntype = \"file\"\npath = \"{}\"", out.display()))
}

fn run_example(name: &str) -> Vec<Value> {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out.jsonl");
    run_job(&example(name, &out), 2);
    read_jsonl(&out)
}

#[test]
fn churn_signal_finds_three_failures_then_a_cancel_within_7_days() {
    let rows = run_example("churn-signal.toml");
    let users: Vec<(&str, &str, i64)> = rows
        .iter()
        .map(|r| (r["tenant_id"].as_str().unwrap_or(""), r["user_id"].as_str().unwrap_or(""), r["failures"].as_i64().unwrap_or(0)))
        .collect();
    // acme/u2 cancels on day 8 (outside 7 days), globex/u9 never failed; globex/u1 failed four
    // times but gets one signal (skip past the last event).
    let mut expected = vec![("acme", "u1", 3), ("acme", "u3", 3), ("globex", "u1", 3)];
    let mut got = users.clone();
    got.sort();
    expected.sort();
    assert_eq!(got, expected, "{rows:?}");
    let u1 = rows.iter().find(|r| r["tenant_id"] == "acme" && r["user_id"] == "u1").expect("acme u1");
    assert_eq!(u1["first_failure"], "2026-03-01T09:00:00.000Z");
    assert_eq!(u1["cancelled_at"], "2026-03-06T10:00:00.000Z");
    assert_eq!(u1["match_start"], "2026-03-01T09:00:00.000Z");
    assert!((u1["amount_failed"].as_f64().unwrap_or(0.0) - 29.97).abs() < 1e-9);
    let globex = rows.iter().find(|r| r["tenant_id"] == "globex").expect("globex u1");
    assert_eq!(globex["first_failure"], "2026-03-02T12:00:00.000Z", "the earliest three failures");
}

#[test]
fn skip_burst_after_a_release() {
    let rows = run_example("skip-burst-after-release.toml");
    assert_eq!(
        rows,
        vec![
            json!({"tenant_id": "acme", "track_id": "t100", "released_at": "2026-03-02T12:00:00.000Z", "skippers": 5, "seconds_to_burst": 200})
        ]
    );
}

#[test]
fn account_sharing_three_countries_within_an_hour() {
    let rows = run_example("account-sharing.toml");
    let got: Vec<(String, String, String)> = rows
        .iter()
        .map(|r| (r["tenant_id"].to_string(), r["user_id"].to_string(), r["countries"].as_str().unwrap_or("").to_string()))
        .collect();
    let mut got = got;
    got.sort();
    assert_eq!(
        got,
        vec![
            ("\"acme\"".into(), "\"u1\"".into(), r#"["SE","BR","US"]"#.into()),
            ("\"globex\"".into(), "\"u1\"".into(), r#"["DE","FR","GB"]"#.into()),
        ]
    );
}

#[test]
fn stream_farming_by_a_new_account() {
    let rows = run_example("stream-farming.toml");
    assert_eq!(
        rows,
        vec![json!({
            "tenant_id": "acme", "user_id": "u9", "signed_up_at": "2026-03-02T12:16:40.000Z", "track_id": "t5", "plays": 6,
            "match_end": "2026-03-02T12:26:20.000Z"
        })]
    );
}

/// Plays of 300 users over two hours, each user hopping between a few countries.
fn plays(seed: u64) -> Vec<(i64, String)> {
    let mut x = seed;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let countries = ["SE", "BR", "US", "DE", "GB"];
    let mut out = Vec::new();
    for i in 0..6000i64 {
        let t = i * 1_200; // ms: 1.2 s apart
        let user = next() % 300;
        let country = countries[(next() % if user % 3 == 0 { 5 } else { 2 }) as usize];
        let line = format!(
            r#"{{"tenant_id":"t{}","user_id":"u{user}","event_type":"play","country":"{country}","ts":{}}}"#,
            user % 4,
            1_772_452_800_000 + t
        );
        out.push((t, line));
    }
    out
}

fn sharing_job(input: &Path, out: &Path, ooo: &str) -> String {
    format!(
        r#"
name = "sharing-order"
[source]
type = "file"
path = "{input}"
[schema]
tenant = "tenant_id"
[schema.fields]
tenant_id = "string"
user_id = "string"
event_type = "string"
country = "string"
ts = "timestamp"
[time]
field = "ts"
max_out_of_orderness = "{ooo}"
[[steps]]
pattern = "first -> second -> third"
key_by = ["user_id"]
within = "10m"
timeouts = true
[steps.define]
second = "country <> first.country"
third = "country <> first.country AND country <> second.country"
[steps.measures]
countries = "list(country)"
[[sinks]]
type = "file"
path = "{out}"
"#,
        input = input.display(),
        out = out.display()
    )
}

#[test]
fn out_of_order_input_within_the_bound_gives_the_same_matches() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let ordered = plays(0x9e37_79b9_7f4a_7c15);
    // Shuffled in blocks of 20 events (24 s of event time), well inside the 1 minute bound.
    let mut shuffled = ordered.clone();
    let mut seed = 12345u64;
    for block in shuffled.chunks_mut(20) {
        for i in (1..block.len()).rev() {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            block.swap(i, (seed >> 33) as usize % (i + 1));
        }
    }
    assert_ne!(ordered, shuffled);
    let write = |name: &str, events: &[(i64, String)]| {
        let lines: Vec<&str> = events.iter().map(|(_, l)| l.as_str()).collect();
        std::fs::write(d.join(name), lines.join("\n")).expect("write input");
    };
    write("ordered.jsonl", &ordered);
    write("shuffled.jsonl", &shuffled);
    let mut results = Vec::new();
    for (input, workers) in [("ordered.jsonl", 1), ("shuffled.jsonl", 1), ("shuffled.jsonl", 2)] {
        let out = d.join(format!("out-{input}-{workers}.jsonl"));
        let report = run_job(&sharing_job(&d.join(input), &out, "1m"), workers);
        assert_eq!(report.late_dropped, 0);
        results.push(sorted_lines(&out));
    }
    let matches = results[0].iter().filter(|l| l.contains("\"timed_out\":false")).count();
    let timeouts = results[0].iter().filter(|l| l.contains("\"timed_out\":true")).count();
    assert!(matches > 50 && timeouts > 50, "{matches} matches, {timeouts} timeouts");
    assert_eq!(results[0], results[1], "shuffled input, 1 worker");
    assert_eq!(results[0], results[2], "shuffled input, 2 workers");
}

fn recovery_job(dir: &Path, checkpoints: bool) -> String {
    let checkpoint = if checkpoints {
        format!("[checkpoint]\ndir = \"{}/checkpoints\"\ninterval = \"150ms\"\nretain = 2\n", dir.display())
    } else {
        String::new()
    };
    format!(
        r#"
name = "cep-recovery"
[source]
type = "generator"
profile = "music"
events = 200000
rate = 60000
tenants = 3
users = 400
out_of_order_fraction = 0.05
max_delay = "300ms"

[schema]
tenant = "tenant_id"
[schema.fields]
tenant_id = "string"
user_id = "string"
event_type = "string"
ts = "timestamp"

[time]
field = "ts"
max_out_of_orderness = "1s"

[[steps]]
pattern = "play -> skip+ -> like"
key_by = ["user_id"]
within = "3s"
timeouts = true

[steps.define]
play = "event_type = 'play'"
skip = "event_type = 'skip'"
like = "event_type = 'like'"

[steps.measures]
events = "list(event_type)"
skips = "count(skip.*)"

[[sinks]]
type = "file"
path = "{dir}/out.jsonl"

{checkpoint}
"#,
        dir = dir.display()
    )
}

#[test]
fn restore_in_the_middle_of_partial_matches_loses_and_doubles_nothing() {
    let expected_dir = tempfile::tempdir().expect("tempdir");
    run_job(&recovery_job(expected_dir.path(), false), 2);
    let expected = sorted_lines(&expected_dir.path().join("out.jsonl"));
    assert!(expected.len() > 1000, "{} rows", expected.len());
    assert!(expected.iter().any(|l| l.contains("\"timed_out\":true")) && expected.iter().any(|l| l.contains("\"timed_out\":false")));

    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    std::fs::write(d.join("job.toml"), recovery_job(d, true)).expect("job file");
    let (kills, stderr) = run_with_kills(d, &[900, 700, 1100, 60_000]);
    assert!(kills >= 2, "killed {kills} times: {stderr}");
    assert!(stderr.contains("restored"), "the last run did not resume from a checkpoint: {stderr}");
    let got = sorted_lines(&d.join("out.jsonl"));
    assert_eq!(got.len(), expected.len(), "rows after {kills} kills");
    assert!(got == expected, "the restored runs' output differs from a run without crashes");
}

#[test]
fn matches_feed_alert_rules() {
    let hook = tenantflow_tests::Webhook::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out.jsonl");
    let rules = format!(
        r#"
[[alerts]]
name = "ChurnRisk"
condition = "amount_failed > 20"
annotations = {{ summary = "{{user_id}} cancelled after {{failures}} failed payments" }}

[alerting]
state_dir = "{}/alerts"
[alerting.route]
receiver = "hook"
group_by = ["alertname", "tenant"]

[[alerting.receivers]]
name = "hook"
type = "webhook"
url = "{}"
"#,
        dir.path().display(),
        hook.url
    );
    run_job(&(example("churn-signal.toml", &out) + &rules), 2);
    // acme/u3's failures add up to 14.97: its match is written but fires nothing.
    let mut fired: Vec<(String, String, String)> = hook
        .firing()
        .iter()
        .map(|a| {
            let l = &a["labels"];
            let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
            (s(&l["tenant"]), s(&l["user_id"]), s(&a["annotations"]["summary"]))
        })
        .collect();
    fired.sort();
    assert_eq!(
        fired,
        vec![
            ("acme".into(), "u1".into(), "u1 cancelled after 3 failed payments".into()),
            ("globex".into(), "u1".into(), "u1 cancelled after 3 failed payments".into()),
        ]
    );
    assert_eq!(read_jsonl(&out).len(), 3);
}

/// Issue 17's inputs for items 8 and 9 as jobs (file source, two tenants with the same events):
/// a greedy bounded loop at its maximum keeps play(15) from the next step, and `?` tries both
/// branches, as Flink SQL's MATCH_RECOGNIZE does (docs/cep.md, "Quantifiers").
#[test]
fn flink_sql_answers_for_greedy_bounds_and_optional_steps() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run = |name: &str, events: &[(&str, f64)], pattern: &str, define: &str| -> Vec<Value> {
        let data = dir.path().join(format!("{name}.jsonl"));
        let mut lines = String::new();
        for (i, (kind, price)) in events.iter().enumerate() {
            for tenant in ["acme", "globex"] {
                let ts = 1_772_452_800_000i64 + i as i64 * 10_000;
                lines.push_str(&format!(r#"{{"tenant_id":"{tenant}","user_id":"u1","event_type":"{kind}","price":{price},"ts":{ts}}}"#));
                lines.push('\n');
            }
        }
        std::fs::write(&data, lines).expect("events");
        let out = dir.path().join(format!("{name}.out.jsonl"));
        let job = format!(
            r#"
name = "{name}"
[source]
type = "file"
path = "{data}"
[schema]
tenant = "tenant_id"
[schema.fields]
tenant_id = "string"
user_id = "string"
event_type = "string"
price = "float"
ts = "timestamp"
[time]
field = "ts"
[[steps]]
pattern = "{pattern}"
key_by = ["user_id"]
{define}
[steps.measures]
plays = "list(price)"
[[sinks]]
type = "file"
path = "{out}"
"#,
            data = data.display(),
            out = out.display()
        );
        run_job(&job, 2);
        let mut rows = read_jsonl(&out);
        rows.sort_by_key(|r| r["tenant_id"].to_string());
        rows
    };
    let plays = [("login", 5.0), ("play", 3.0), ("play", 4.0), ("play", 5.0), ("play", 6.0), ("play", 15.0)];
    let define =
        "contiguity = { b = \"strict\" }\ndefine = { a = \"event_type = 'login'\", b = \"event_type = 'play'\", c = \"price > 10\" }";
    assert_eq!(run("upto4", &plays, "a b{2,4} c", define), Vec::<Value>::new());
    assert_eq!(run("upto3", &plays, "a b{,3} c", define), Vec::<Value>::new());
    let define = "define = { a = \"event_type = 'login'\", b = \"event_type IN ('pause', 'play')\", c = \"event_type = 'play' AND price > coalesce(b.price, a.price)\" }";
    let rows = run("optional", &[("login", 5.0), ("play", 6.0), ("play", 4.0)], "a b? c", define);
    let got: Vec<(&str, &str)> = rows.iter().map(|r| (r["tenant_id"].as_str().unwrap_or(""), r["plays"].as_str().unwrap_or(""))).collect();
    assert_eq!(got, [("acme", "[5.0,6.0]"), ("globex", "[5.0,6.0]")], "{rows:?}");
}
