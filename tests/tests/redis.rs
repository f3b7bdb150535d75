//! The Redis sink against a real Redis (Debian's redis-server, started by the test): every mode
//! holds exactly the job's results, counters and streams stay exact across SIGKILLs with
//! restores and across a Redis restart mid-run, and configuration errors stop the job at start.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use redis::Commands;
use tenantflow_tests::{read_jsonl, tenantflow_bin, Redis};

fn port(offset: u16) -> u16 {
    24_000 + (std::process::id() % 300) as u16 * 4 + offset
}

/// A windowed music job writing to a file and to Redis in every mode but pub/sub (`extra` adds
/// sinks); `source` follows `profile`.
fn job(dir: &Path, url: &str, source: &str, checkpoints: bool, extra: &str) -> String {
    let checkpoint =
        if checkpoints { format!("[checkpoint]\ndir = \"{}/checkpoints\"\ninterval = \"150ms\"\n", dir.display()) } else { String::new() };
    format!(
        r#"
name = "plays"
[source]
type = "generator"
profile = "music"
{source}
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
max_out_of_orderness = "2s"

[[steps]]
window = {{ type = "tumbling", size = "2s" }}
key_by = ["event_type"]
aggregates = {{ n = "count(*)", users = "count_distinct(user_id)" }}

[[sinks]]
type = "file"
path = "{dir}/out.jsonl"

[[sinks]]
type = "redis"
url = "{url}"
mode = "hash"
key = "tf:{{tenant_id}}:w:{{event_type}}:{{window_start}}"
fields = ["n", "users"]
ttl = "1h"
batch_rows = 50

[[sinks]]
type = "redis"
url = "{url}"
mode = "counter"
key = "tf:{{tenant_id}}:plays"
hash_field = "{{event_type}}"
value = "n"
batch_rows = 50

[[sinks]]
type = "redis"
url = "{url}"
mode = "leaderboard"
key = "tf:{{tenant_id}}:top"
member = "{{event_type}}"
value = "n"
batch_rows = 50

[[sinks]]
type = "redis"
url = "{url}"
mode = "stream"
key = "tf:{{tenant_id}}:results"
fields = ["event_type", "window_start", "n"]
max_len = 1000000
batch_rows = 50
{extra}
{checkpoint}
"#,
        dir = dir.display(),
    )
}

fn run(dir: &Path, text: &str) -> std::process::Output {
    std::fs::write(dir.join("job.toml"), text).expect("write job");
    Command::new(tenantflow_bin()).args(["run", "job.toml", "--workers", "2", "--quiet"]).current_dir(dir).output().expect("run")
}

/// What every mode should hold, from the file sink's rows: (hashes, counters, stream entries).
type Expected = (BTreeMap<String, (i64, i64)>, BTreeMap<(String, String), i64>, Vec<String>);

fn expected(rows: &[serde_json::Value]) -> Expected {
    let mut hashes = BTreeMap::new();
    let mut counters = BTreeMap::new();
    let mut entries = Vec::new();
    for r in rows {
        let s = |k: &str| r[k].as_str().unwrap_or_default().to_string();
        let n = r["n"].as_i64().expect("n");
        hashes
            .insert(format!("tf:{}:w:{}:{}", s("tenant_id"), s("event_type"), s("window_start")), (n, r["users"].as_i64().expect("users")));
        *counters.entry((s("tenant_id"), s("event_type"))).or_insert(0) += n;
        entries.push(format!("{} {} {} {n}", s("tenant_id"), s("event_type"), s("window_start")));
    }
    entries.sort();
    (hashes, counters, entries)
}

/// Checks Redis against the file sink's rows: every hash, counter, leaderboard score and stream
/// entry, nothing missing and nothing twice.
fn check(redis: &Redis, rows: &[serde_json::Value]) {
    let mut c = redis.conn();
    let (hashes, counters, entries) = expected(rows);
    assert!(hashes.len() > 20, "too little output to compare");
    for (key, (n, users)) in &hashes {
        let got: (Option<i64>, Option<i64>) = redis::cmd("HMGET").arg(key).arg("n").arg("users").query(&mut c).expect("HMGET");
        assert_eq!(got, (Some(*n), Some(*users)), "{key}");
    }
    let stored: Vec<String> = c.keys("tf:*:w:*").expect("KEYS");
    assert_eq!(stored.len(), hashes.len(), "hash keys");
    let ttl: i64 = redis::cmd("PTTL").arg(&stored[0]).query(&mut c).expect("PTTL");
    assert!(ttl > 3_000_000 && ttl <= 3_600_000, "hash keys expire after the ttl (1h), PTTL {ttl}");
    for ((tenant, kind), n) in &counters {
        let got: i64 = c.hget(format!("tf:{tenant}:plays"), kind).expect("HGET");
        assert_eq!(got, *n, "counter {tenant}/{kind}");
        let score: f64 = c.zscore(format!("tf:{tenant}:top"), kind).expect("ZSCORE");
        assert_eq!(score, *n as f64, "leaderboard {tenant}/{kind}");
    }
    let mut got = Vec::new();
    let tenants: std::collections::BTreeSet<&String> = counters.keys().map(|(t, _)| t).collect();
    for t in tenants {
        let stream: Vec<(String, Vec<String>)> =
            redis::cmd("XRANGE").arg(format!("tf:{t}:results")).arg("-").arg("+").query(&mut c).expect("XRANGE");
        for (_, fields) in stream {
            let map: BTreeMap<&str, &str> = fields.chunks(2).map(|kv| (kv[0].as_str(), kv[1].as_str())).collect();
            got.push(format!("{t} {} {} {}", map["event_type"], map["window_start"], map["n"]));
        }
    }
    got.sort();
    assert_eq!(got, entries, "stream entries");
}

#[test]
fn every_mode_holds_exactly_the_results_and_config_errors_stop_the_job_at_start() {
    let redis = Redis::start(port(0));
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();

    // A subscriber sees every result on its tenant's channel.
    let url = redis.url.clone();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let subscriber = std::thread::spawn(move || {
        let mut conn = redis::Client::open(url.as_str()).and_then(|c| c.get_connection()).expect("connect");
        let mut ps = conn.as_pubsub();
        ps.psubscribe("tf:*:live").expect("PSUBSCRIBE");
        ps.set_read_timeout(Some(std::time::Duration::from_secs(10))).expect("timeout");
        ready_tx.send(()).expect("ready");
        let mut got = Vec::new();
        while let Ok(msg) = ps.get_message() {
            let body: String = msg.get_payload().expect("payload");
            let v: serde_json::Value = serde_json::from_str(&body).expect("JSON message");
            got.push((msg.get_channel_name().to_string(), v));
        }
        got
    });
    ready_rx.recv().expect("subscriber ready");
    let pubsub = format!("[[sinks]]\ntype = \"redis\"\nurl = \"{}\"\nmode = \"pubsub\"\nchannel = \"tf:{{tenant_id}}:live\"\n", redis.url);
    let out = run(d, &job(d, &redis.url, "events = 50000", false, &pubsub));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows = read_jsonl(&d.join("out.jsonl"));
    check(&redis, &rows);
    let published = subscriber.join().expect("subscriber");
    assert_eq!(published.len(), rows.len(), "one message per result");
    for (channel, v) in &published {
        assert_eq!(channel, &format!("tf:{}:live", v["tenant_id"].as_str().unwrap_or_default()));
        assert!(rows.contains(v), "published {v} is not a result");
    }

    // A run without restore starts the output afresh: counters count this run only.
    let mut c = redis.conn();
    let _: () = redis::cmd("FLUSHALL").query(&mut c).expect("FLUSHALL");
    let out = run(d, &job(d, &redis.url, "events = 50000", false, ""));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    check(&redis, &rows);

    // Configuration errors surface when the job starts or is validated, never mid-stream.
    let bad_password = job(d, &format!("redis://:wrong@127.0.0.1:{}", port(0)), "events = 1000", false, "");
    let out = run(d, &bad_password);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("sink `redis:tf:{tenant_id}:plays`: redis") && err.contains("***@127.0.0.1") && !err.contains("wrong"), "{err}");
    let no_tenant = job(d, &redis.url, "events = 1000", false, "").replace("tf:{tenant_id}:plays", "plays");
    std::fs::write(d.join("job.toml"), no_tenant).expect("write");
    let out = Command::new(tenantflow_bin()).args(["validate", "job.toml"]).current_dir(d).output().expect("validate");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("job.toml:") && err.contains("sinks[2].key") && err.contains("must contain the tenant field"), "{err}");
}

/// SIGKILLed at several points and restored each time, the job leaves in Redis exactly what a
/// crash-free run would: increments and stream entries are neither lost nor doubled.
#[test]
fn killed_and_restored_runs_leave_exact_counters_and_streams() {
    let redis = Redis::start(port(1));
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    // The file sink last here (first in the other tests): checkpoints follow sink ids, not positions.
    let file_sink = format!("[[sinks]]\ntype = \"file\"\npath = \"{}/out.jsonl\"\n", d.display());
    let text = job(d, &redis.url, "events = 200000\nrate = 50000", true, "");
    assert!(text.contains(&file_sink), "test setup: the file sink moved");
    let text = text.replacen(&file_sink, "", 1) + "\n" + &file_sink;
    std::fs::write(d.join("job.toml"), text).expect("write job");
    let (kills, _) = tenantflow_tests::run_with_kills(d, &[900, 600, 1100, 500, 60_000]);
    assert!(kills >= 3, "the job finished before it could be killed enough ({kills} kills)");
    check(&redis, &read_jsonl(&d.join("out.jsonl")));

    // Asked to restore with no checkpoint left (as after a crash before the first one), the job
    // starts over and skips what the marker says was written: nothing is added twice.
    std::fs::remove_dir_all(d.join("checkpoints")).expect("remove checkpoints");
    let out = Command::new(tenantflow_bin())
        .args(["run", "job.toml", "--workers", "2", "--quiet", "--restore", "latest"])
        .current_dir(d)
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    check(&redis, &read_jsonl(&d.join("out.jsonl")));
}

/// Redis stopped for 5 s mid-run and started again: the job waits (retrying), resumes, and Redis
/// ends up with every result once.
#[test]
fn a_redis_restart_makes_the_job_wait_and_loses_nothing() {
    use std::time::Duration;
    let mut redis = Redis::start(port(2));
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    std::fs::write(d.join("job.toml"), job(d, &redis.url, "events = 200000\nrate = 50000", false, "")).expect("write job");
    let mut child = Command::new(tenantflow_bin())
        .args(["run", "job.toml", "--workers", "2", "--quiet"])
        .current_dir(d)
        .env("TENANTFLOW_LOG", "warn")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    std::thread::sleep(Duration::from_millis(1200));
    redis.stop();
    std::thread::sleep(Duration::from_secs(5));
    assert!(child.try_wait().expect("try_wait").is_none(), "the job ended while Redis was down");
    redis.restart();
    let (status, err) = tenantflow_tests::wait_exit(&mut child, Duration::from_secs(60), "the job did not finish after Redis came back");
    assert!(status.success(), "{err}");
    assert!(err.contains("redis write failed"), "the outage went unnoticed: {err}");
    check(&redis, &read_jsonl(&d.join("out.jsonl")));
}

/// Redis killed mid-run, tenantflow SIGKILLed during the outage and restored at once while
/// Redis is still down: the restored job waits for Redis (it neither runs on without the sink
/// nor commits checkpoints past rows Redis never got) and, once Redis is back, Redis holds
/// every result exactly once (issue 17: 3236 of 4066 keys were missing).
#[test]
fn a_restore_while_redis_is_down_waits_for_it_and_loses_nothing() {
    let redis = std::cell::RefCell::new(Redis::start(27_000 + (std::process::id() % 300) as u16 * 4));
    let url = redis.borrow().url.clone();
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    std::fs::write(d.join("job.toml"), job(d, &url, "events = 200000\nrate = 40000", true, "")).expect("write job");
    tenantflow_tests::restore_during_outage(d, || redis.borrow_mut().kill(), || redis.borrow_mut().restart());
    check(&redis.borrow(), &read_jsonl(&d.join("out.jsonl")));
}

/// A batch below `batch_rows` goes out after `batch_interval` even when no more rows come (an
/// idle stream), not only at the next row or checkpoint.
#[test]
fn a_partial_batch_goes_out_while_the_input_is_idle() {
    use std::io::Write;
    use std::time::{Duration, Instant};
    let redis = Redis::start(port(3));
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let text = format!(
        "name = \"idle\"\n[source]\ntype = \"stdin\"\n[schema]\ntenant = \"tenant_id\"\n[schema.fields]\ntenant_id = \"string\"\nn = \"int\"\n\n[[sinks]]\ntype = \"redis\"\nurl = \"{}\"\nmode = \"counter\"\nkey = \"tf:{{tenant_id}}:n\"\nvalue = \"n\"\nbatch_rows = 1000\nbatch_interval = \"100ms\"\n",
        redis.url
    );
    std::fs::write(d.join("job.toml"), text).expect("write job");
    let mut child = Command::new(tenantflow_bin())
        .args(["run", "job.toml", "--quiet"])
        .current_dir(d)
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(b"{\"tenant_id\": \"acme\", \"n\": 2}\n{\"tenant_id\": \"acme\", \"n\": 3}\n").expect("write");
    stdin.flush().expect("flush");
    let mut c = redis.conn();
    let start = Instant::now();
    loop {
        let n: Option<i64> = c.get("tf:acme:n").expect("GET");
        if n == Some(5) {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "the rows never left the sink while the input was idle (got {n:?})");
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(stdin);
    assert!(child.wait().expect("wait").success());
}
