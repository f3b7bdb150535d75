//! Score steps end to end, through the `tenantflow` binary with the examples' registry (a copy
//! per test): both runtimes give the same predictions, a promoted version takes over at a
//! checkpoint while the job runs, a savepoint restores with the version it recorded (not the
//! registry's live one), shadow candidates are compared row by row, missing features follow the
//! step's policy, a tenant's model scores only its tenant's rows, and bad score steps get exact
//! errors.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tenantflow_tests::{read_jsonl, tenantflow_bin};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A copy of jobs/models in `dir/models`, so tests can promote and roll back.
fn registry(dir: &Path) -> PathBuf {
    fn copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).expect("mkdir");
        for e in std::fs::read_dir(from).expect("read_dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                copy(&p, &to.join(e.file_name()));
            } else {
                std::fs::copy(&p, to.join(e.file_name())).expect("copy");
            }
        }
    }
    let to = dir.join("models");
    copy(&repo().join("jobs/models"), &to);
    to
}

/// The ONNX Runtime library scripts/setup.sh fetched (the binary runs in temporary
/// directories, where its own search would not find it).
fn onnxruntime() -> String {
    repo().join(".onnxruntime/libonnxruntime.so.1.31.1").display().to_string()
}

fn tf(dir: &Path, args: &[&str]) -> Output {
    Command::new(tenantflow_bin())
        .args(args)
        .env("TENANTFLOW_ONNXRUNTIME", onnxruntime())
        .current_dir(dir)
        .output()
        .expect("run tenantflow")
}

fn ok(out: Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "tenantflow failed: {err}");
    err
}

/// One row per generated event, scored by `churn-risk` (features made up from the event).
fn event_job(events: u64, rate: Option<u64>, score: &str) -> String {
    let rate = rate.map(|r| format!("rate = {r}")).unwrap_or_default();
    format!(
        r#"
name = "score-events"
[source]
type = "generator"
profile = "music"
events = {events}
{rate}
tenants = 3

[schema]
tenant = "tenant_id"
[schema.fields]
tenant_id = "string"
user_id = "string"
event_type = "string"
duration_ms = "int"
ts = "timestamp"

[time]
field = "ts"

[[steps]]
score = "churn-risk"
features = ["duration_ms % 40", "duration_ms % 9", "duration_ms % 5", "if(event_type = 'payment_failed', 1, 0)", "duration_ms / 3000.0"]
as = "churn"
{score}

[[steps]]
select = ["tenant_id", "user_id", "ts", "duration_ms", "churn_label", "churn_probability"]

[[sinks]]
type = "file"
path = "out.jsonl"

[checkpoint]
dir = "ck"
interval = "200ms"
"#
    )
}

/// Each output row's probability by the row's event time (unique per generated event).
fn by_ts(path: &Path) -> BTreeMap<String, f64> {
    read_jsonl(path)
        .iter()
        .map(|r| (r["ts"].as_str().unwrap_or("").to_string(), r["churn_probability"].as_f64().unwrap_or(f64::NAN)))
        .collect()
}

/// Runs `text` with the model pinned to `version` (no rate, no checkpoints needed) and returns
/// the probabilities by event time.
fn pinned(dir: &Path, text: &str, version: u32) -> BTreeMap<String, f64> {
    let run = dir.join(format!("pinned-{version}"));
    std::fs::create_dir_all(&run).expect("mkdir");
    std::fs::write(run.join("job.toml"), text).expect("job");
    let models = dir.join("models");
    ok(tf(
        &run,
        &["run", "job.toml", "--quiet", "--models", &models.display().to_string(), "--set", &format!("steps[0].version={version}")],
    ));
    by_ts(&run.join("out.jsonl"))
}

/// Which version scored each row, in event-time order: '1', '2', or '?' when both agree.
fn versions_used(got: &BTreeMap<String, f64>, v1: &BTreeMap<String, f64>, v2: &BTreeMap<String, f64>) -> String {
    assert_eq!(got.len(), v1.len(), "every event is scored once");
    got.iter()
        .map(|(ts, p)| match (v1.get(ts), v2.get(ts)) {
            (Some(a), Some(b)) if a == b => '?',
            (Some(a), _) if a == p => '1',
            (_, Some(b)) if b == p => '2',
            _ => panic!("row at {ts}: probability {p} is neither version's"),
        })
        .filter(|c| *c != '?')
        .collect()
}

fn wait_for(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_promoted_version_takes_over_at_a_checkpoint_and_a_savepoint_restores_with_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let models = registry(d).display().to_string();
    let events = 60_000;
    let v1 = pinned(d, &event_job(events, None, ""), 1);
    let v2 = pinned(d, &event_job(events, None, ""), 2);
    assert!(v1.iter().filter(|(ts, p)| v2.get(*ts) != Some(p)).count() > events as usize / 2, "the two versions should differ");

    std::fs::write(d.join("job.toml"), event_job(events, Some(15_000), "")).expect("job");
    let child = Command::new(tenantflow_bin())
        .args(["run", "job.toml", "--quiet", "--models", &models])
        .current_dir(d)
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    wait_for(Duration::from_secs(30), "rows scored by version 1", || {
        std::fs::read_to_string(d.join("ck/epoch-000002/MANIFEST.json")).is_ok()
    });
    ok(tf(d, &["model", "promote", "churn-risk", "2", "--registry", &models]));
    // The next checkpoint records the switch.
    let recorded = |live: u64| {
        let mut newest = std::fs::read_dir(d.join("ck")).expect("ck").flatten().map(|e| e.path()).collect::<Vec<_>>();
        newest.sort();
        newest.iter().rev().find_map(|p| std::fs::read(p.join("MANIFEST.json")).ok()).is_some_and(|m| {
            let m: Value = serde_json::from_slice(&m).expect("manifest");
            m["models"]["churn"]["live"].as_u64() == Some(live)
        })
    };
    wait_for(Duration::from_secs(30), "a checkpoint recording version 2", || recorded(2));
    // SAFETY: signalling our own child: it stops with a savepoint.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let out = child.wait_with_output().expect("wait");
    assert!(String::from_utf8_lossy(&out.stderr).contains("savepoint"), "{}", String::from_utf8_lossy(&out.stderr));
    let partial = by_ts(&d.join("out.jsonl")).len();
    assert!(partial < events as usize, "the job should have stopped early ({partial} rows)");

    // Roll the registry back: the restored run must still score with the savepoint's version 2
    // (no checkpoint during the rest of the run, so no switch either).
    ok(tf(d, &["model", "rollback", "churn-risk", "--registry", &models]));
    let err = ok(tf(
        d,
        &["run", "job.toml", "--models", &models, "--restore", "latest", "--checkpoint-interval", "1h", "--set", "source.rate=0"],
    ));
    assert!(err.contains("model churn-risk v2"), "{err}");
    let used = versions_used(&by_ts(&d.join("out.jsonl")), &v1, &v2);
    let switch = used.find('2').expect("version 2 was used");
    assert!(switch > 0, "version 1 scored the first rows");
    assert!(used[switch..].chars().all(|c| c == '2'), "after the switch only version 2 scores: {}", &used[switch.saturating_sub(5)..]);
}

/// The churn example's day windows over jobs/data/user-activity.jsonl, to a file.
fn window_job(score: &str) -> String {
    let text = std::fs::read_to_string(repo().join("jobs/churn-risk.toml")).expect("example job");
    let (head, rest) = text.split_once("[source]").expect("source");
    let (_, rest) = rest.split_once("[schema]").expect("schema");
    let (middle, _) = rest.split_once("[[sinks]]").expect("sinks");
    let data = repo().join("jobs/data/user-activity.jsonl");
    let middle = middle.replace("as = \"churn\"", &format!("as = \"churn\"\n{score}"));
    format!(
        "{head}[source]\ntype = \"file\"\npath = \"{}\"\n\n[schema]{middle}[[sinks]]\ntype = \"file\"\npath = \"out.jsonl\"\n",
        data.display()
    )
}

fn run_window(d: &Path, name: &str, text: &str, extra: &[&str]) -> (Vec<Value>, String) {
    let run = d.join(name);
    std::fs::create_dir_all(&run).expect("mkdir");
    std::fs::write(run.join("job.toml"), text).expect("job");
    let models = d.join("models").display().to_string();
    let mut args = vec!["run", "job.toml", "--models", models.as_str()];
    args.extend_from_slice(extra);
    let err = ok(tf(&run, &args));
    let mut rows = read_jsonl(&run.join("out.jsonl"));
    rows.sort_by_key(|r| r["user_id"].as_str().unwrap_or("").to_string());
    (rows, err)
}

#[test]
fn native_and_onnx_runtime_scores_agree_and_shadows_are_counted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    registry(d);
    for version in [1, 2] {
        let pin = format!("version = {version}");
        let (native, err) = run_window(d, &format!("native-{version}"), &window_job(&format!("{pin}\nruntime = \"native\"")), &[]);
        assert!(err.contains(&format!("model churn-risk v{version} (native): 400 rows scored")), "{err}");
        let (onnx, err) = run_window(d, &format!("onnx-{version}"), &window_job(&format!("{pin}\nruntime = \"onnx\"")), &[]);
        assert!(err.contains(&format!("model churn-risk v{version} (onnx): 400 rows scored")), "{err}");
        assert_eq!(native.len(), 400);
        for (a, b) in native.iter().zip(&onnx) {
            assert_eq!(a["churn_label"], b["churn_label"], "{a} vs {b}");
            let (p, q) = (a["churn_probability"].as_f64().unwrap_or(-1.0), b["churn_probability"].as_f64().unwrap_or(-2.0));
            assert!((p - q).abs() <= 1e-5, "{a} vs {b}");
        }
    }
    // Shadow: version 2 beside the live version 1; disagreements are rows whose labels differ.
    let (v1, _) = run_window(d, "v1", &window_job("version = 1"), &[]);
    let (v2, _) = run_window(d, "v2", &window_job("version = 2"), &[]);
    let differ = v1.iter().zip(&v2).filter(|(a, b)| a["churn_label"] != b["churn_label"]).count();
    assert!(differ > 0, "the versions should disagree somewhere");
    ok(tf(d, &["model", "shadow", "churn-risk", "2", "--registry", "models"]));
    let (live, err) = run_window(d, "shadowed", &window_job(""), &[]);
    assert_eq!(live, v1, "the shadow candidate never changes the output");
    assert!(err.contains(&format!("shadow v2: {differ} of 400 rows disagree")), "{err}");
}

#[test]
fn missing_features_take_the_default_or_skip_the_row() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    registry(d);
    let lines = [
        r#"{"tenant_id": "a", "user_id": "u1", "plays": 10, "skips": 2, "likes": 1, "failed": 0, "minutes": 30.5, "ts": "2026-03-01T00:00:00Z"}"#,
        r#"{"tenant_id": "a", "user_id": "u2", "plays": null, "skips": 2, "likes": 1, "failed": 0, "minutes": 30.5, "ts": "2026-03-01T00:00:01Z"}"#,
        r#"{"tenant_id": "a", "user_id": "u3", "plays": 10, "skips": 2, "likes": 1, "failed": 0, "ts": "2026-03-01T00:00:02Z"}"#,
        r#"{"tenant_id": "a", "user_id": "u4", "plays": 0, "skips": 2, "likes": 1, "failed": 0, "minutes": 30.5, "ts": "2026-03-01T00:00:03Z"}"#,
        r#"{"tenant_id": "a", "user_id": "u5", "plays": "many", "ts": "2026-03-01T00:00:04Z"}"#,
    ];
    std::fs::write(d.join("in.jsonl"), lines.join("\n") + "\n").expect("input");
    let job = |policy: &str| {
        format!(
            r#"
name = "missing"
[source]
type = "file"
path = "{}"
[schema]
tenant = "tenant_id"
[schema.fields]
tenant_id = "string"
user_id = "string"
plays = "int"
skips = "int"
likes = "int"
failed = "int"
minutes = "float"
ts = "timestamp"
[time]
field = "ts"
[[steps]]
score = "churn-risk"
version = 1
features = ["plays", "skips", "likes", "failed", "minutes"]
on_missing = "{policy}"
default = 0
as = "churn"
[[steps]]
select = ["user_id", "churn_label", "churn_probability"]
[[sinks]]
type = "file"
path = "out.jsonl"
"#,
            d.join("in.jsonl").display()
        )
    };
    let (rows, err) = run_window(d, "default", &job("default"), &[]);
    // u5's "many" is not an int: a dead letter, as any malformed event.
    let users: Vec<&str> = rows.iter().filter_map(|r| r["user_id"].as_str()).collect();
    assert_eq!(users, ["u1", "u2", "u3", "u4"], "{err}");
    assert!(err.contains("4 rows scored in 1 batches, 2 features defaulted, 0 rows skipped"), "{err}");
    // A missing feature defaulted to 0 scores like an explicit 0 (u2 is u4 with plays = 0).
    assert_eq!(rows[1]["churn_probability"], rows[3]["churn_probability"]);
    assert!(err.contains("1 dead letters"), "{err}");
    let (rows, err) = run_window(d, "skip", &job("skip"), &[]);
    assert!(err.contains("2 rows scored in 1 batches, 0 features defaulted, 2 rows skipped"), "{err}");
    for r in &rows {
        let scored = !r["churn_probability"].is_null();
        assert_eq!(scored, r["user_id"] == "u1" || r["user_id"] == "u4", "{r}");
    }
}

#[test]
fn a_tenants_model_scores_only_that_tenants_rows() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    registry(d);
    // churn-risk v1 uploaded again as `churn-b`, owned by tenant b.
    let v1 = repo().join("jobs/models/churn-risk/1");
    let stored: Value = serde_json::from_str(&std::fs::read_to_string(v1.join("meta.json")).expect("meta")).expect("json");
    let mut meta = serde_json::Map::new();
    for key in ["features", "description", "class_names", "training"] {
        meta.insert(key.into(), stored[key].clone());
    }
    meta.insert("tenant".into(), "b".into());
    std::fs::write(d.join("meta-b.json"), Value::Object(meta).to_string()).expect("meta");
    let model = v1.join("model.onnx").display().to_string();
    let upload = ["model", "upload", "churn-b", model.as_str(), "--meta", "meta-b.json", "--registry", "models"];
    ok(tf(d, &upload));
    let lines = ["a", "b", "c", "b"]
        .iter()
        .enumerate()
        .map(|(i, t)| format!(r#"{{"tenant_id": "{t}", "user_id": "u{i}", "plays": 10, "ts": "2026-03-01T00:00:0{i}Z"}}"#))
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(d.join("in.jsonl"), lines + "\n").expect("input");
    let job = |select: &str| {
        format!(
            "name = \"owned\"\n[source]\ntype = \"file\"\npath = \"{}\"\n[schema]\ntenant = \"tenant_id\"\n[schema.fields]\ntenant_id = \"string\"\nuser_id = \"string\"\nplays = \"int\"\nts = \"timestamp\"\n{select}[[steps]]\nscore = \"churn-b\"\nfeatures = [\"plays\", \"1\", \"1\", \"0\", \"30\"]\nas = \"churn\"\n[[sinks]]\ntype = \"file\"\npath = \"out.jsonl\"\n",
            d.join("in.jsonl").display()
        )
    };
    let (rows, err) = run_window(d, "owned", &job(""), &[]);
    assert_eq!(rows.len(), 4, "{err}");
    for r in &rows {
        let scored = !r["churn_probability"].is_null() && !r["churn_label"].is_null();
        assert_eq!(scored, r["tenant_id"] == "b", "only tenant b's rows are scored: {r}");
    }
    assert!(
        err.contains("2 rows scored in 1 batches, 0 features defaulted, 0 rows skipped, 0 failed, 2 rows of other tenants left unscored"),
        "{err}"
    );
    // Without the tenant field the step cannot tell whose rows it scores: refused.
    std::fs::write(d.join("no-tenant.toml"), job("[[steps]]\nselect = [\"user_id\", \"plays\"]\n")).expect("job");
    let out = tf(d, &["validate", "no-tenant.toml", "--models", "models"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("no-tenant.toml:15:10: `steps[1].score`: model `churn-b` version 1 belongs to tenant `b`"), "{err}");
}

#[test]
fn bad_score_steps_get_exact_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    registry(d);
    let base = event_job(10, None, "");
    let check = |text: &str, extra: &[&str], expected: &str| {
        std::fs::write(d.join("bad.toml"), text).expect("job");
        let mut args = vec!["validate", "bad.toml"];
        args.extend_from_slice(extra);
        let out = tf(d, &args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{expected}: {err}");
        assert!(err.contains(expected), "expected {expected:?} in:\n{err}");
    };
    let models = ["--models", "models"];
    check(
        &base.replace("score = \"churn-risk\"", "score = \"nope\""),
        &models,
        "bad.toml:23:10: `steps[0].score`: no model `nope` in the registry at models",
    );
    check(&base.replace("\"duration_ms / 3000.0\"]", "\"duration_ms / 3000.0\", \"1\"]"), &models, "takes 5 features and the step gives 6");
    check(
        &base.replace("\"duration_ms % 40\"", "\"user_id\""),
        &models,
        "type error: a feature must be a number (int, float or bool), found string",
    );
    check(&base.replace("\"duration_ms % 40\"", "\"nope\""), &models, "unknown field");
    check(&base.replace("as = \"churn\"", "as = \"churn\"\nversion = 7"), &models, "model `churn-risk` has no version 7");
    check(&base.replace("as = \"churn\"", "as = \"churn\"\nruntime = \"gpu\""), &models, "`steps[0].runtime`");
    check(&base.replace("as = \"churn\"", "as = \"churn-x\""), &models, "expected a field name prefix");
    check(&base, &["--models", "no-such-dir"], "no model `churn-risk` in the registry at no-such-dir");
    check(
        &base.replace("as = \"churn\"", "as = \"churn\"\nruntime = \"onnx\""),
        &["--models", "models", "--onnxruntime", "/nonexistent/libonnxruntime.so"],
        "run scripts/setup.sh",
    );
}

#[test]
fn the_churn_example_goes_from_kafka_through_the_model_to_clickhouse_and_alerts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (_kafka, bootstrap) = tenantflow_tests::dev_kafka(d, &["music-events"]);
    let events = repo().join("jobs/data/user-activity.jsonl");
    let kcat = Command::new("kcat")
        .args(["-P", "-b", &bootstrap, "-t", "music-events", "-l"])
        .arg(&events)
        .status()
        .expect("kcat (scripts/setup.sh installs it)");
    assert!(kcat.success(), "kcat failed");
    let ch = tenantflow_tests::ClickHouse::start(24_000 + (std::process::id() % 300) as u16 * 4);
    let hook = tenantflow_tests::Webhook::start();
    let job = repo().join("jobs/churn-risk.toml").display().to_string();
    let models = repo().join("jobs/models").display().to_string();
    let sets = [
        format!("source.bootstrap_file={}", d.join("bootstrap").display()),
        "source.bounded=true".into(),
        format!("sinks[0].url={}", ch.url),
        format!("alerting.receivers[0].url={}", hook.url),
    ];
    let mut args = vec!["run", job.as_str(), "--models", models.as_str()];
    for s in &sets {
        args.extend(["--set", s.as_str()]);
    }
    let err = ok(tf(d, &args));
    assert!(err.contains("model churn-risk v1 (native): 400 rows scored"), "{err}");
    assert!(err.contains("model activity-outliers v1 (onnx): 400 rows scored"), "{err}");
    let count = ch.query("SELECT count(), countIf(churn_probability > 0.9), countIf(outlier_label = -1) FROM churn_risk").expect("query");
    let cols: Vec<&str> = count.trim().split('\t').collect();
    let (rows, risky, unusual) = (cols[0], cols[1], cols[2]);
    assert_eq!(rows, "400", "one row per user and day");
    let risky: usize = risky.parse().expect("count");
    assert!(risky > 0, "some users should be at high risk");
    let alerted = |name: &str| -> std::collections::BTreeSet<String> {
        hook.firing()
            .iter()
            .filter(|a| a["labels"]["alertname"] == name)
            .filter_map(|a| a["labels"]["user_id"].as_str().map(String::from))
            .collect()
    };
    assert_eq!(alerted("ChurnRiskHigh").len(), risky, "one alert per user at high risk");
    // The outlier model flags about 1% of ordinary users' days.
    let unusual: usize = unusual.parse().expect("count");
    assert!((1..=20).contains(&unusual), "{unusual} unusual days");
    assert_eq!(alerted("UnusualActivity").len(), unusual);
}

/// Plays per tenant and track per minute over 300 minutes: about 20 a minute with noise, and
/// one burst of 80 for `acme`/`t1` at minute 200.
fn plays_per_minute(dir: &Path) -> PathBuf {
    let mut lines = String::new();
    let mut state = 7u64;
    for minute in 0..300u64 {
        for (tenant, track) in [("acme", "t1"), ("acme", "t2"), ("globex", "t1")] {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let burst = minute == 200 && tenant == "acme" && track == "t1";
            let n = if burst { 80 } else { 18 + (state >> 60) };
            for i in 0..n {
                let secs = minute * 60 + i * 59 / n;
                lines += &format!(
                    "{{\"tenant_id\": \"{tenant}\", \"track_id\": \"{track}\", \"ts\": \"2026-03-01T{:02}:{:02}:{:02}Z\"}}\n",
                    secs / 3600,
                    secs / 60 % 60,
                    secs % 60
                );
            }
        }
    }
    let path = dir.join("plays.jsonl");
    std::fs::write(&path, lines).expect("input");
    path
}

fn anomaly_job(input: &Path, method: &str, extra: &str) -> String {
    format!(
        r#"
name = "plays-anomaly"
[source]
type = "file"
path = "{}"
[schema]
tenant = "tenant_id"
[schema.fields]
tenant_id = "string"
track_id = "string"
ts = "timestamp"
[time]
field = "ts"
[[steps]]
window = {{ type = "tumbling", size = "1m" }}
key_by = ["track_id"]
aggregates = {{ plays = "count(*)" }}
[[steps]]
anomaly = "plays"
{method}
[[steps]]
select = ["tenant_id", "track_id", "window_start", "plays", "plays_score", "plays_baseline", "plays_is_anomaly"]
[[sinks]]
type = "file"
path = "out.jsonl"
{extra}
"#,
        input.display()
    )
}

#[test]
fn anomaly_steps_flag_the_burst_and_keep_their_baselines_across_restores() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let input = plays_per_minute(d);
    for method in [
        "method = \"ewma\"\nalpha = 0.05",
        "method = \"mad\"\nhistory = 60\nwarmup = 30",
        "method = \"seasonal\"\nperiod = \"1h\"\nbucket = \"1m\"\nwarmup = 2\nthreshold = 4",
    ] {
        let (rows, _) = run_window(d, "anomaly", &anomaly_job(&input, method, ""), &[]);
        assert_eq!(rows.len(), 900, "{method}");
        let flagged: Vec<String> = rows
            .iter()
            .filter(|r| r["plays_is_anomaly"] == true)
            .map(|r| format!("{}/{} {}", r["tenant_id"].as_str().unwrap_or(""), r["track_id"].as_str().unwrap_or(""), r["window_start"]))
            .collect();
        assert_eq!(flagged, ["acme/t1 \"2026-03-01T03:20:00.000Z\""], "{method}: only the burst is an anomaly");
        // Each series warms up before it is scored.
        let first = rows.iter().find(|r| r["track_id"] == "t2" && r["window_start"] == "2026-03-01T00:00:00.000Z").expect("first row");
        assert!(first["plays_score"].is_null() && first["plays_is_anomaly"].is_null(), "{first}");
    }
    // Killed and restored runs give the crash-free output: the baselines are checkpointed.
    let text = anomaly_job(
        &input,
        "method = \"mad\"\nhistory = 60",
        "[checkpoint]\ndir = \"ck\"\ninterval = \"20ms\"\n[runtime]\nbatch_size = 64",
    );
    let (expected, _) = run_window(d, "crash-free", &text, &["--workers", "2"]);
    let run = d.join("killed");
    std::fs::create_dir_all(&run).expect("mkdir");
    std::fs::write(run.join("job.toml"), &text).expect("job");
    let (kills, _) = tenantflow_tests::run_with_kills(&run, &[120, 200, 250, 60_000]);
    let mut got = read_jsonl(&run.join("out.jsonl"));
    got.sort_by_key(|r| r["user_id"].as_str().unwrap_or("").to_string());
    let key = |r: &Value| format!("{}{}{}", r["tenant_id"], r["track_id"], r["window_start"]);
    let mut got: Vec<&Value> = got.iter().collect();
    let mut expected: Vec<&Value> = expected.iter().collect();
    got.sort_by_key(|r| key(r));
    expected.sort_by_key(|r| key(r));
    assert_eq!(got, expected, "after {kills} kills");
    assert!(kills > 0, "the job should have been killed at least once");
}

#[test]
fn bad_anomaly_steps_get_exact_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let input = plays_per_minute(d);
    let base = anomaly_job(&input, "", "");
    let check = |text: &str, expected: &str| {
        std::fs::write(d.join("bad.toml"), text).expect("job");
        let out = tf(d, &["validate", "bad.toml"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{expected}: {err}");
        assert!(err.contains(expected), "expected {expected:?} in:\n{err}");
    };
    let before_window = base.replace("[[steps]]\nwindow", "[[steps]]\nanomaly = \"1\"\n[[steps]]\nwindow");
    check(&before_window, "an anomaly step scores a series of window results: put it after a `window` step");
    check(&base.replace("anomaly = \"plays\"", "anomaly = \"track_id\""), "a feature must be a number");
    check(&base.replace("anomaly = \"plays\"", "anomaly = \"plays\"\ntime = \"plays\""), "`time` must be a timestamp field, found int");
    check(
        &base.replace("anomaly = \"plays\"", "anomaly = \"plays\"\nmethod = \"seasonal\"\nperiod = \"1h\"\nbucket = \"7m\""),
        "a `bucket` that divides `period`",
    );
    check(&base.replace("anomaly = \"plays\"", "anomaly = \"plays\"\nmethod = \"median\""), "`steps[1].method`");
    check(
        &base.replace("field = \"ts\"", "field = \"ts\"\nlate_policy = \"update\"\nallowed_lateness = \"1m\""),
        "late_policy = \"update\" sends results again",
    );
}

#[test]
fn drift_from_the_training_distribution_is_measured_and_reaches_rows() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    registry(d);
    let with = |features: &str| {
        window_job("drift_window = 200\nbatch_size = 100")
            .replace("features = [\"plays\", \"skips\", \"likes\", \"failed_payments\", \"listen_minutes\"]", features)
            .replace("\"churn_probability\", \"outlier_label\"", "\"churn_probability\", \"churn_drift\", \"outlier_label\"")
    };
    let psi = |err: &str, feature: &str| -> f64 {
        let line = err.lines().find(|l| l.contains("drift (PSI, latest of 2 windows)")).unwrap_or_else(|| panic!("no drift line:\n{err}"));
        let at = line.find(&format!("{feature} ")).unwrap_or_else(|| panic!("no {feature} in {line}"));
        line[at + feature.len() + 1..].split(',').next().and_then(|v| v.trim().parse().ok()).expect("a number")
    };
    // The example's events are drawn like the training data: little drift.
    let (rows, err) =
        run_window(d, "same", &with("features = [\"plays\", \"skips\", \"likes\", \"failed_payments\", \"listen_minutes\"]"), &[]);
    for f in ["plays", "skips", "likes", "failed_payments", "listen_minutes"] {
        assert!(psi(&err, f) < 0.2, "{f}: {err}");
    }
    // Rows scored after the first window carry its largest PSI.
    let drifts: Vec<f64> = rows.iter().filter_map(|r| r["churn_drift"].as_f64()).collect();
    assert!(!drifts.is_empty() && drifts.iter().all(|d| *d < 0.2), "{drifts:?}");
    // Three times the plays: plays (and only plays) drifts far.
    let (rows, err) =
        run_window(d, "shifted", &with("features = [\"plays * 3\", \"skips\", \"likes\", \"failed_payments\", \"listen_minutes\"]"), &[]);
    assert!(psi(&err, "plays") > 1.0, "{err}");
    assert!(psi(&err, "skips") < 0.2, "{err}");
    assert!(rows.iter().filter_map(|r| r["churn_drift"].as_f64()).all(|d| d > 1.0));
}

#[test]
fn audio_steps_summarise_clips_like_librosa_and_report_bad_ones() {
    use base64::Engine as _;
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let audio = repo().join("ml-ops/tests/audio");
    let clip = |name: &str| audio.join(format!("{name}.wav")).display().to_string();
    let mut lines = String::new();
    for name in ["sine440", "chord", "moh-excerpt"] {
        lines += &format!("{{\"tenant_id\": \"a\", \"name\": \"{name}\", \"clip\": \"{}\"}}\n", clip(name));
    }
    lines += "{\"tenant_id\": \"a\", \"name\": \"missing\", \"clip\": \"/nonexistent.wav\"}\n";
    // The sine as raw PCM (the WAV's samples after its 44-byte header), base64.
    let wav = std::fs::read(clip("sine440")).expect("wav");
    let pcm = base64::engine::general_purpose::STANDARD.encode(&wav[44..]);
    lines += &format!("{{\"tenant_id\": \"a\", \"name\": \"pcm\", \"clip\": \"{pcm}\"}}\n");
    lines += "{\"tenant_id\": \"a\", \"name\": \"garbled\", \"clip\": \"%%%\"}\n";
    std::fs::write(d.join("clips.jsonl"), lines).expect("input");
    let job = |format: &str| {
        format!(
            "name = \"clips\"\n[source]\ntype = \"file\"\npath = \"{}\"\n[schema]\ntenant = \"tenant_id\"\n[schema.fields]\ntenant_id = \"string\"\nname = \"string\"\nclip = \"string\"\n[[steps]]\naudio = \"clip\"\nformat = \"{format}\"\n[[steps]]\nfilter = \"{}\"\n[[sinks]]\ntype = \"file\"\npath = \"out.jsonl\"\n",
            d.join("clips.jsonl").display(),
            if format == "wav_path" { "name NOT IN ('pcm', 'garbled')" } else { "name IN ('pcm', 'garbled')" }
        )
    };
    let (mut rows, _) = run_window(d, "paths", &job("wav_path"), &[]);
    let (pcm_rows, _) = run_window(d, "pcm", &job("pcm16_base64"), &[]);
    rows.extend(pcm_rows);
    let mean = |v: &Value| -> Vec<f64> {
        let rows: Vec<Vec<f64>> = v
            .as_array()
            .expect("array")
            .iter()
            .map(|r| r.as_array().map_or_else(|| vec![r.as_f64().unwrap_or(0.0)], |r| r.iter().filter_map(|x| x.as_f64()).collect()))
            .collect();
        if rows.iter().all(|r| r.len() == 1) {
            let n = rows.len() as f64;
            vec![rows.iter().map(|r| r[0]).sum::<f64>() / n]
        } else {
            rows.iter().map(|r| r.iter().sum::<f64>() / r.len() as f64).collect()
        }
    };
    let mut checked = 0;
    for r in &rows {
        let name = r["name"].as_str().unwrap_or("");
        match name {
            "missing" | "garbled" => {
                assert!(r["audio_mfcc_0"].is_null() && r["audio_seconds"].is_null(), "{r}");
                let e = r["audio_error"].as_str().unwrap_or("");
                assert!(e.contains(if name == "missing" { "cannot read /nonexistent.wav" } else { "not base64" }), "{r}");
            }
            _ => {
                let reference_name = if name == "pcm" { "sine440" } else { name };
                let reference: Value =
                    serde_json::from_slice(&std::fs::read(audio.join(format!("{reference_name}.json"))).expect("json")).expect("JSON");
                assert!(r["audio_error"].is_null(), "{r}");
                for (feature, field) in [
                    ("mfcc", "mfcc_"),
                    ("chroma", "chroma_"),
                    ("centroid", "centroid"),
                    ("rolloff", "rolloff"),
                    ("zcr", "zcr"),
                    ("rms", "rms"),
                ] {
                    let expected = mean(&reference[feature]);
                    let scale = expected.iter().fold(1e-9f64, |m, v| m.max(v.abs()));
                    for (i, e) in expected.iter().enumerate() {
                        let key = if field.ends_with('_') { format!("audio_{field}{i}") } else { format!("audio_{field}") };
                        let got = r[&key].as_f64().unwrap_or(f64::NAN);
                        assert!((got - e).abs() <= 1e-4 * scale, "{name} {key}: {got} vs librosa {e}");
                    }
                }
                checked += 1;
            }
        }
    }
    assert_eq!((rows.len(), checked), (6, 4), "{rows:?}");
}

/// Issue 17, item 10: an audio step reads every format `librosa.load` reads through soundfile
/// (`ml-ops/tests/audio/formats`: WAV of every PCM width, FLAC, Ogg Vorbis, MP3; stereo and
/// three-channel clips averaged as librosa does), by path and base64, told apart by their
/// bytes, and gives librosa's frame means; an empty clip is an error row, not silence.
#[test]
fn audio_steps_read_every_format_like_librosa_load_and_refuse_empty_clips() {
    use base64::Engine as _;
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let formats = repo().join("ml-ops/tests/audio/formats");
    let mut references = BTreeMap::new();
    let (mut paths, mut uploads) = (String::new(), String::new());
    for entry in std::fs::read_dir(&formats).expect("formats").flatten() {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let reference: Value = serde_json::from_slice(&std::fs::read(&path).expect("json")).expect("JSON");
        let file = reference["file"].as_str().expect("file").to_string();
        let clip = formats.join(&file);
        paths += &format!("{{\"tenant_id\": \"a\", \"name\": \"{file}\", \"clip\": \"{}\"}}\n", clip.display());
        let b64 = base64::engine::general_purpose::STANDARD.encode(std::fs::read(&clip).expect("clip"));
        uploads += &format!("{{\"tenant_id\": \"a\", \"name\": \"{file}\", \"clip\": \"{b64}\"}}\n");
        references.insert(file, reference);
    }
    assert_eq!(references.len(), 9, "every format");
    paths += &format!("{{\"tenant_id\": \"a\", \"name\": \"empty\", \"clip\": \"{}\"}}\n", formats.join("empty.wav").display());
    uploads += "{\"tenant_id\": \"a\", \"name\": \"text\", \"clip\": \"aGVsbG8gd29ybGQ=\"}\n";
    std::fs::write(d.join("paths.jsonl"), paths).expect("input");
    std::fs::write(d.join("uploads.jsonl"), uploads).expect("input");
    std::fs::write(d.join("pcm.jsonl"), "{\"tenant_id\": \"a\", \"name\": \"empty-pcm\", \"clip\": \"\"}\n").expect("input");
    let job = |input: &str, format: &str| {
        format!(
            "name = \"clips\"\n[source]\ntype = \"file\"\npath = \"{}\"\n[schema]\ntenant = \"tenant_id\"\n[schema.fields]\ntenant_id = \"string\"\nname = \"string\"\nclip = \"string\"\n[[steps]]\naudio = \"clip\"\nformat = \"{format}\"\n[[sinks]]\ntype = \"file\"\npath = \"out.jsonl\"\n",
            d.join(input).display()
        )
    };
    let (mut rows, _) = run_window(d, "paths", &job("paths.jsonl", "wav_path"), &[]);
    let (uploaded, _) = run_window(d, "uploads", &job("uploads.jsonl", "wav_base64"), &[]);
    let (pcm, _) = run_window(d, "pcm", &job("pcm.jsonl", "pcm16_base64"), &[]);
    assert_eq!((rows.len(), uploaded.len(), pcm.len()), (10, 10, 1), "{rows:?}");
    rows.extend(uploaded);
    rows.extend(pcm);
    let mut checked = 0;
    for r in &rows {
        let name = r["name"].as_str().unwrap_or("");
        let Some(reference) = references.get(name) else {
            let expected = match name {
                "empty" | "empty-pcm" => "the clip has no samples",
                _ => "not a WAV, FLAC, Ogg Vorbis or MP3 file (it starts with bytes 68 65 6c 6c 6f 20 77 6f)",
            };
            assert_eq!(r["audio_error"].as_str(), Some(expected), "{r}");
            assert!(r["audio_seconds"].is_null() && r["audio_rms"].is_null() && r["audio_mfcc_0"].is_null(), "{r}");
            continue;
        };
        assert!(r["audio_error"].is_null(), "{r}");
        let seconds = reference["samples"].as_f64().expect("samples") / reference["sample_rate"].as_f64().expect("rate");
        assert_eq!(r["audio_seconds"].as_f64(), Some(seconds), "{name}");
        for (feature, field) in
            [("mfcc", "mfcc_"), ("chroma", "chroma_"), ("centroid", "centroid"), ("rolloff", "rolloff"), ("zcr", "zcr"), ("rms", "rms")]
        {
            let expected: Vec<f64> = match &reference[feature] {
                Value::Array(v) => v.iter().filter_map(|x| x.as_f64()).collect(),
                v => v.as_f64().into_iter().collect(),
            };
            let scale = expected.iter().fold(1e-9f64, |m, v| m.max(v.abs()));
            for (i, e) in expected.iter().enumerate() {
                let key = if field.ends_with('_') { format!("audio_{field}{i}") } else { format!("audio_{field}") };
                let got = r[&key].as_f64().unwrap_or(f64::NAN);
                assert!((got - e).abs() <= 1e-4 * scale, "{name} {key}: {got} vs librosa {e}");
            }
        }
        checked += 1;
    }
    assert_eq!(checked, 18, "every format by path and base64");
}

#[test]
fn the_genre_example_classifies_uploads_from_kafka_into_clickhouse_and_alerts_on_bad_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (_kafka, bootstrap) = tenantflow_tests::dev_kafka(d, &["audio-uploads"]);
    let events = repo().join("jobs/data/audio-uploads.jsonl");
    let kcat = Command::new("kcat").args(["-P", "-b", &bootstrap, "-t", "audio-uploads", "-l"]).arg(&events).status().expect("kcat");
    assert!(kcat.success(), "kcat failed");
    let ch = tenantflow_tests::ClickHouse::start(25_200 + (std::process::id() % 300) as u16 * 4);
    let hook = tenantflow_tests::Webhook::start();
    let sets = [
        format!("source.bootstrap_file={}", d.join("bootstrap").display()),
        "source.bounded=true".into(),
        format!("sinks[0].url={}", ch.url),
        format!("alerting.receivers[0].url={}", hook.url),
        format!("alerting.state_dir={}", d.join("alerts").display()),
        format!("dead_letter.path={}", d.join("dead.jsonl").display()),
    ];
    // The events name their clips relative to the repository.
    let mut args = vec!["run", "jobs/audio-genre.toml"];
    for s in &sets {
        args.extend(["--set", s.as_str()]);
    }
    let err = ok(tf(&repo(), &args));
    assert!(err.contains("model genre v1 (native): 8 rows scored"), "{err}");
    let expected: BTreeMap<String, String> = read_jsonl(&events)
        .iter()
        .map(|e| (e["upload_id"].as_str().unwrap_or("").to_string(), e["expected_genre"].as_str().unwrap_or("").to_string()))
        .collect();
    let table = ch.query("SELECT upload_id, genre_class, audio_error FROM upload_genres ORDER BY upload_id").expect("query");
    let mut rows = 0;
    for line in table.lines() {
        let cols: Vec<&str> = line.split('\t').collect();
        let (id, genre, error) = (cols[0], cols[1], cols[2]);
        if id == "u99" {
            assert!(genre == "\\N" && error.contains("cannot read jobs/data/uploads/missing.wav"), "{line}");
        } else {
            assert_eq!(genre, expected[id], "upload {id}");
            assert_eq!(error, "\\N", "{line}");
        }
        rows += 1;
    }
    assert_eq!(rows, 9, "{table}");
    let unreadable: Vec<_> = hook.firing().into_iter().filter(|a| a["labels"]["alertname"] == "UploadUnreadable").collect();
    assert_eq!(unreadable.len(), 1, "{unreadable:?}");
    assert_eq!(unreadable[0]["labels"]["tenant"], "acme");
}
