//! Alert rules in a job file, end to end: `tenantflow run` judges every window result by the
//! rules, and the in-process alert manager notifies a real HTTP receiver with exactly the
//! alerts the results call for; configuration mistakes are reported with file, line and key,
//! and receivers that cannot be reached stop the job when it starts.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use tenantflow_tests::{read_jsonl, tenantflow_bin, Webhook};

const BUSY: i64 = 300;

fn job(dir: &Path, receiver: &str) -> String {
    format!(
        r#"
name = "alerting"
[source]
type = "generator"
profile = "music"
events = 50000
tenants = 4

[schema]
tenant = "tenant_id"
[schema.fields]
tenant_id = "string"
event_type = "string"
ts = "timestamp"

[time]
field = "ts"

[[steps]]
window = {{ type = "tumbling", size = "2s" }}
key_by = ["event_type"]
aggregates = {{ n = "count(*)" }}

[[sinks]]
type = "file"
path = "{dir}/out.jsonl"

[[alerts]]
name = "BusyWindow"
condition = "n >= {BUSY}"
labels = {{ severity = "critical" }}
annotations = {{ summary = "{{n}} {{event_type}} events for {{tenant_id}} by {{window_end}}" }}

[[alerts]]
name = "Dropped"
condition = "n < 0.5 * prev(n)"
annotations = {{ summary = "{{event_type}}: {{n}}, was {{prev(n)}}" }}

[alerting]
state_dir = "{dir}/alerts"
[alerting.route]
receiver = "hook"
group_by = ["alertname", "tenant"]
group_wait = "1h"
group_interval = "1h"
repeat_interval = "1h"

{receiver}
"#,
        dir = dir.display()
    )
}

fn run(dir: &Path, text: &str) -> std::process::Output {
    std::fs::write(dir.join("job.toml"), text).expect("write job");
    Command::new(tenantflow_bin()).args(["run", "job.toml", "--workers", "2", "--quiet"]).current_dir(dir).output().expect("run")
}

/// Per (alertname, tenant): the series (event types) whose last result matched the rule, with
/// the summaries of every result of the series that matched, computed from the job's output.
fn expected(rows: &[serde_json::Value]) -> BTreeMap<(String, String), BTreeMap<String, BTreeSet<String>>> {
    let mut series: BTreeMap<(String, String), Vec<&serde_json::Value>> = BTreeMap::new();
    for r in rows {
        let key = (r["tenant_id"].as_str().unwrap_or_default().to_string(), r["event_type"].as_str().unwrap_or_default().to_string());
        series.entry(key).or_default().push(r);
    }
    let mut out: BTreeMap<(String, String), BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for ((tenant, kind), mut rs) in series {
        rs.sort_by_key(|r| r["window_end"].as_str().unwrap_or_default().to_string());
        let n = |r: &serde_json::Value| r["n"].as_i64().expect("n");
        let busy: BTreeSet<String> = rs
            .iter()
            .filter(|r| n(r) >= BUSY)
            .map(|r| format!("{} {kind} events for {tenant} by {}", n(r), r["window_end"].as_str().unwrap_or_default()))
            .collect();
        let dropped: BTreeSet<String> = rs
            .windows(2)
            .filter(|w| (n(w[1]) as f64) < 0.5 * n(w[0]) as f64)
            .map(|w| format!("{kind}: {}, was {}", n(w[1]), n(w[0])))
            .collect();
        let last = rs.len() - 1;
        if n(rs[last]) >= BUSY {
            out.entry(("BusyWindow".into(), tenant.clone())).or_default().insert(kind.clone(), busy);
        }
        if last >= 1 && (n(rs[last]) as f64) < 0.5 * n(rs[last - 1]) as f64 {
            out.entry(("Dropped".into(), tenant.clone())).or_default().insert(kind, dropped);
        }
    }
    out
}

#[test]
fn window_results_fire_exactly_the_alerts_they_call_for() {
    let hook = Webhook::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let receiver = format!("[[alerting.receivers]]\nname = \"hook\"\ntype = \"webhook\"\nurl = \"{}\"\nsecret = \"s3cret\"\n", hook.url);
    let out = run(d, &job(d, &receiver));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows = read_jsonl(&d.join("out.jsonl"));
    let want = expected(&rows);
    // Some series end above the threshold and some below: the rule discriminates.
    let busy_series: usize = want.iter().filter(|((a, _), _)| a == "BusyWindow").map(|(_, s)| s.len()).sum();
    let all_series: BTreeSet<(String, String)> = rows
        .iter()
        .map(|r| (r["tenant_id"].as_str().unwrap_or_default().to_string(), r["event_type"].as_str().unwrap_or_default().to_string()))
        .collect();
    assert!(busy_series > 0 && busy_series < all_series.len(), "threshold {BUSY} does not split {} series", all_series.len());

    // The run is over long before group_wait: when its input ends, each group is notified once,
    // with exactly the alerts firing at the end.
    let received = hook.received();
    assert_eq!(received.len(), want.len(), "one notification per group: {received:#?}");
    let mut last: BTreeMap<(String, String), BTreeMap<String, String>> = BTreeMap::new();
    for (headers, body) in &received {
        assert!(headers.get("x-tenantflow-signature").is_some_and(|s| s.starts_with("sha256=")), "unsigned: {headers:?}");
        assert!(headers.contains_key("idempotency-key"), "{headers:?}");
        assert_eq!(body["version"], "4", "{body}");
        let group = &body["groupLabels"];
        let key = (group["alertname"].as_str().unwrap_or_default().to_string(), group["tenant"].as_str().unwrap_or_default().to_string());
        let firing: BTreeMap<String, String> = body["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|a| a["status"] == "firing")
            .map(|a| {
                assert_eq!(a["labels"]["job"], "alerting");
                let severity = if key.0 == "BusyWindow" { "critical" } else { "warning" };
                assert_eq!(a["labels"]["severity"], severity, "{a}");
                (
                    a["labels"]["event_type"].as_str().unwrap_or_default().to_string(),
                    a["annotations"]["summary"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect();
        last.insert(key, firing);
    }
    last.retain(|_, firing| !firing.is_empty());
    let got: Vec<_> = last.iter().map(|(k, v)| (k, v.keys().collect::<Vec<_>>())).collect();
    let wanted: Vec<_> = want.iter().map(|(k, v)| (k, v.keys().collect::<Vec<_>>())).collect();
    assert_eq!(got, wanted, "the last notification per group differs from the alerts the results call for");
    // Annotations are filled from a result that matched (the one current when the group was
    // last notified: a changed annotation alone is not news, as in Alertmanager).
    for (group, alerts) in &last {
        for (kind, summary) in alerts {
            assert!(want[group][kind].contains(summary), "{group:?} {kind}: {summary:?} is no matching result's summary");
        }
    }

    // Run again on the same state (as a restarted job would): the same alerts are not notified
    // twice within repeat_interval.
    let out = run(d, &job(d, &receiver));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(hook.received().len(), received.len(), "a rerun notified the same alerts again");
}

#[test]
fn alerting_mistakes_are_reported_with_file_line_and_key_and_dead_receivers_stop_the_job_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let good = "[[alerting.receivers]]\nname = \"hook\"\ntype = \"webhook\"\nurl = \"http://127.0.0.1:9/x\"\n";
    let validate = |text: String| {
        std::fs::write(d.join("job.toml"), text).expect("write");
        let out = Command::new(tenantflow_bin()).args(["validate", "job.toml"]).current_dir(d).output().expect("validate");
        assert!(!out.status.success(), "an invalid job validated");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = validate(job(d, good).replace("receiver = \"hook\"", "receiver = \"pager\""));
    assert!(err.contains("job.toml:") && err.contains("alerting.route.receiver") && err.contains("unknown receiver \"pager\""), "{err}");
    let err = validate(job(d, good).replace("n >= 300", "event_type"));
    assert!(err.contains("alerts[0].condition") && err.contains("must be a boolean"), "{err}");
    let err = validate(job(d, good).replace("{{prev(n)}}", "{{previous}}").replace("{prev(n)}", "{previous}"));
    assert!(err.contains("alerts[1].annotations.summary") && err.contains("unknown field `previous`"), "{err}");
    let err = validate(job(d, &good.replace("http://127.0.0.1:9/x", "ftp://x")));
    assert!(err.contains("alerting.receivers[0].url") && err.contains("http://"), "{err}");
    let err = validate(job(d, good).replace("group_by = [\"alertname\", \"tenant\"]", "matchers = [\"severity=~\\\"(\\\"\"]"));
    assert!(err.contains("alerting.route.matchers") && err.contains("unknown key"), "{err}");

    // A secret from an environment variable that is not set: the job stops when it starts.
    let out = run(d, &job(d, &good.replace("url = ", "secret_env = \"TF_TEST_UNSET_SECRET\"\nurl = ")));
    assert!(!out.status.success(), "a job without its secret ran");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("receiver `hook`") && err.contains("`TF_TEST_UNSET_SECRET` is not set"), "{err}");

    // An SMTP server that is not there: the job stops when it starts, naming the receiver.
    let mail = "[[alerting.receivers]]\nname = \"hook\"\ntype = \"email\"\nsmtp = \"127.0.0.1:9\"\nfrom = \"tf@example.com\"\nto = [\"ops@example.com\"]\nstarttls = false\n";
    let out = run(d, &job(d, mail));
    assert!(!out.status.success(), "a job with an unreachable SMTP server ran");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("alerting") && err.contains("receiver `hook` (email)"), "{err}");
}

/// A series that fires nothing and has no result for ten window periods is forgotten: when it
/// comes back, `prev()` is NULL (and the map of series does not grow forever).
#[test]
fn quiet_series_are_forgotten_after_ten_windows() {
    let hook = Webhook::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    // t1 has a result (one event) every 2 s window; t2 one event at 0 s and two at 40 s (20
    // windows later). The rule fires for a series seen for the first time with two events.
    let mut events: Vec<(u32, &str)> = (0..50).step_by(2).map(|s| (s, "t1")).collect();
    events.extend([(0, "t2"), (40, "t2"), (41, "t2")]);
    events.sort();
    let events: String =
        events.iter().map(|(s, t)| format!("{{\"tenant_id\": \"{t}\", \"ts\": \"2026-01-01T00:00:{s:02}Z\"}}\n")).collect();
    std::fs::write(d.join("events.jsonl"), events).expect("events");
    let text = format!(
        r#"
name = "forget"
[source]
type = "file"
path = "{dir}/events.jsonl"
[schema]
tenant = "tenant_id"
[schema.fields]
tenant_id = "string"
ts = "timestamp"
[time]
field = "ts"
[[steps]]
window = {{ type = "tumbling", size = "2s" }}
aggregates = {{ n = "count(*)" }}
[[sinks]]
type = "file"
path = "{dir}/out.jsonl"
[[alerts]]
name = "NewSeries"
condition = "prev(n) IS NULL AND n >= 2"
[alerting]
state_dir = "{dir}/alerts"
[alerting.route]
receiver = "hook"
group_by = ["tenant"]
group_wait = "1h"
[[alerting.receivers]]
name = "hook"
type = "webhook"
url = "{url}"
"#,
        dir = d.display(),
        url = hook.url
    );
    let out = run(d, &text);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let tenants: BTreeSet<String> = hook.firing().iter().map(|a| a["labels"]["tenant"].as_str().unwrap_or_default().to_string()).collect();
    assert_eq!(tenants, BTreeSet::from(["t2".to_string()]), "t2 should come back as a new series");
}
