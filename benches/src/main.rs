//! Window benchmark (issue #2): 50M events (tenant = i % 100, user = i % 100000, event time =
//! i µs, value = i % 1000) -> 1 s tumbling event-time window per tenant, count and sum(value)
//! -> discarding sink. Compares tenantflow's job path with a hand-written Timely dataflow and a
//! plain loop in the same run, and measures JSON-lines parsing on the same query.
//!
//! Each configuration runs in a child process (so peak RSS is its own) and prints one JSON line.
//!
//!     cargo run --release -p tenantflow-benches -- [--events N] [--only NAME]
//!
//! Kafka (issue #3), against librdkafka's mock cluster in the benchmark's process: consumption
//! by a Kafka -> window -> Kafka job vs a bare consumer (`kafka`), and produce-to-sink latency
//! of a filter-and-project job at 50k events/s (`kafka_latency`). One configuration alone:
//!
//!     cargo run --release -p tenantflow-benches -- --config kafka --workers 1
//!
//! ML scoring (issue #7): `--only score`, see `score.rs`; audio features vs librosa: `--only
//! audio`, see `audio.rs`.
//!
//! Cluster (issue #4): submit-to-running latency on a 2-process cluster (`cluster_submit`; it
//! starts target/release/tenantflow, so `cargo build --release --bins` first).

mod audio;
mod score;

use std::collections::HashMap;
use std::io::Write;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context};
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::operator::source;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Probe;
use timely::dataflow::ProbeHandle;

const CONFIGS: &[(&str, usize)] = &[
    ("plain_loop", 1),
    ("timely_handwritten", 1),
    ("timely_handwritten", 2),
    ("tenantflow_job", 1),
    ("tenantflow_job", 2),
    ("tenantflow_jsonl", 1),
    ("tenantflow_jsonl", 2),
    ("checkpoint_overhead", 1),
    ("checkpoint_overhead", 2),
    ("checkpoint_1m_keys", 2),
    ("kafka", 1),
    ("kafka", 2),
    ("kafka_latency", 1),
    ("kafka_latency", 2),
    ("cluster_submit", 1),
    ("clickhouse", 1),
    ("clickhouse", 2),
    ("redis", 1),
    ("alert_rules", 1),
    ("cep", 1),
    ("cep", 2),
    ("score", 1),
    ("audio", 1),
];

fn job(source: &str, events: u64) -> String {
    format!(
        r#"
name = "bench"
{source}

[schema]
tenant = "tenant"
[schema.fields]
tenant = "int"
user = "int"
ts = "timestamp"
value = "int"

[time]
field = "ts"

[[steps]]
window = {{ type = "tumbling", size = "1s" }}
aggregates = {{ n = "count(*)", total = "sum(value)" }}

[[sinks]]
type = "discard"

[dead_letter]
path = "/tmp/tenantflow-bench.dead-letters.jsonl"
# events: {events}
"#
    )
}

fn cpu_seconds() -> f64 {
    // SAFETY: getrusage fills a plain struct.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(u.ru_utime) + tv(u.ru_stime)
}

fn peak_rss_bytes() -> u64 {
    // SAFETY: as above.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    u.ru_maxrss as u64 * 1024
}

/// The reference: one thread, one hash map, windows flushed as event time passes them.
fn plain_loop(events: u64) -> u64 {
    let mut windows: HashMap<(u64, u64), (u64, u64), foldhash::fast::RandomState> = HashMap::default();
    let mut current = 0;
    let mut emitted = 0;
    for i in 0..events {
        let (tenant, ts, value) = (i % 100, i, i % 1000);
        let w = ts / 1_000_000;
        if w != current {
            emitted += windows.len() as u64;
            windows.clear();
            current = w;
        }
        let e = windows.entry((tenant, w)).or_insert((0, 0));
        e.0 += 1;
        e.1 += value;
    }
    emitted + windows.len() as u64
}

/// Hand-written Timely: generator -> exchange by tenant -> unary_frontier window -> probe.
fn timely_handwritten(events: u64, workers: usize) -> anyhow::Result<()> {
    let config = if workers == 1 { timely::Config::thread() } else { timely::Config::process(workers) };
    timely::execute(config, move |worker| {
        let (index, peers) = (worker.index() as u64, worker.peers() as u64);
        let probe = ProbeHandle::new();
        worker.dataflow::<u64, _, _>(|scope| {
            let stream = source::<_, timely::container::CapacityContainerBuilder<Vec<(u64, u64, u64)>>, _, _>(scope, "Gen", |cap, info| {
                let activator = scope.activator_for(info.address);
                let mut cap = Some(cap);
                let mut next = index;
                move |output| {
                    let Some(c) = cap.as_mut() else { return };
                    let mut session = output.session(&*c);
                    for _ in 0..16_384 {
                        if next >= events {
                            break;
                        }
                        session.give((next % 100, next, next % 1000));
                        next += peers;
                    }
                    drop(session);
                    if next >= events {
                        cap = None;
                    } else {
                        c.downgrade(&next);
                        activator.activate();
                    }
                }
            });
            stream
                .unary_frontier::<timely::container::CapacityContainerBuilder<Vec<(u64, u64, u64)>>, _, _, _>(
                    Exchange::new(|r: &(u64, u64, u64)| r.0.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32),
                    "Window",
                    |_, _| {
                        let mut windows: HashMap<(u64, u64), (u64, u64), foldhash::fast::RandomState> = HashMap::default();
                        let mut caps: std::collections::BTreeMap<u64, timely::dataflow::operators::Capability<u64>> = Default::default();
                        move |(input, frontier), output| {
                            input.for_each_stamp(|cap, data| {
                                for batch in data {
                                    for &(tenant, ts, value) in batch.iter() {
                                        let w = ts / 1_000_000;
                                        let e = windows.entry((tenant, w)).or_insert((0, 0));
                                        e.0 += 1;
                                        e.1 += value;
                                        let end = (w + 1) * 1_000_000;
                                        caps.entry(end).or_insert_with(|| cap.delayed(&end, 0));
                                    }
                                }
                            });
                            let upto = frontier.frontier().first().copied().unwrap_or(u64::MAX);
                            let due: Vec<u64> = caps.range(..=upto).map(|(t, _)| *t).collect();
                            for end in due {
                                if let Some(cap) = caps.remove(&end) {
                                    let w = end / 1_000_000 - 1;
                                    let mut session = output.session(&cap);
                                    windows.retain(|&(t, win), &mut (n, s)| {
                                        if win == w {
                                            session.give((t, n, s));
                                            false
                                        } else {
                                            true
                                        }
                                    });
                                }
                            }
                        }
                    },
                )
                .probe_with(&probe);
        });
        while !probe.done() {
            worker.step();
        }
    })
    .map_err(anyhow::Error::msg)?
    .join()
    .into_iter()
    .collect::<Result<Vec<_>, _>>()
    .map_err(anyhow::Error::msg)?;
    Ok(())
}

fn tenantflow(text: &str, workers: usize) -> anyhow::Result<tenantflow_engine::RunReport> {
    let plan = tenantflow_core::plan::load("bench.toml", text, &[]).map_err(|e| anyhow::anyhow!("{e}"))?;
    let report = tenantflow_engine::run(plan, &tenantflow_engine::RunConfig { workers, ..Default::default() })?;
    if report.rows_out == 0 {
        bail!("no output rows");
    }
    Ok(report)
}

fn sequence_source(events: u64, users: u64) -> String {
    format!("[source]\ntype = \"generator\"\nprofile = \"sequence\"\nevents = {events}\nusers = {users}\nevent_interval = \"1us\"\nstart_time = \"1970-01-01T00:00:00Z\"")
}

fn checkpoint_dir(tag: &str) -> String {
    format!("/var/tmp/tenantflow-bench-checkpoints-{tag}-{}", std::process::id())
}

/// A fresh checkpoint directory, every second, keeping one.
fn checkpoint_table(tag: &str) -> String {
    let dir = checkpoint_dir(tag);
    let _ = std::fs::remove_dir_all(&dir);
    format!("\n[checkpoint]\ndir = \"{dir}\"\ninterval = \"1s\"\nretain = 1\n")
}

fn jsonl_path(events: u64) -> String {
    format!("/var/tmp/tenantflow-bench-{events}.jsonl")
}

/// Writes the benchmark's events as JSON lines once (reused by later runs).
fn ensure_jsonl(events: u64) -> anyhow::Result<String> {
    let path = jsonl_path(events);
    if std::path::Path::new(&path).exists() {
        return Ok(path);
    }
    let tmp = format!("{path}.tmp");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
    for i in 0..events {
        writeln!(
            out,
            r#"{{"tenant":{},"user":{},"ts":"{}","value":{}}}"#,
            i % 100,
            i % 100_000,
            tenantflow_core::time::format_rfc3339(i as i64),
            i % 1000
        )?;
    }
    out.flush()?;
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

fn run_one(name: &str, workers: usize, events: u64) -> anyhow::Result<serde_json::Value> {
    let (start, cpu0) = (Instant::now(), cpu_seconds());
    let measured_events = match name {
        "plain_loop" => {
            std::hint::black_box(plain_loop(events));
            events
        }
        "timely_handwritten" => {
            timely_handwritten(events, workers)?;
            events
        }
        "tenantflow_job" => {
            tenantflow(&job(&sequence_source(events, 100_000), events), workers)?;
            events
        }
        // The window job, long enough for several checkpoints (4x the events).
        "checkpoint_overhead" => {
            return checkpoint_overhead(name, &job(&sequence_source(4 * events, 100_000), 4 * events), 4 * events, workers, 3);
        }
        "checkpoint_1m_keys" => {
            // 1M users keyed in 60 s windows: a checkpoint holds about 1M keys of window state.
            let n = (2 * events / 5).max(2_000_000);
            let text = job(&sequence_source(n, 1_000_000), n).replace("size = \"1s\" }", "size = \"60s\" }\nkey_by = [\"user\"]");
            // Memory-bound, so the noisiest: five rounds.
            return checkpoint_overhead(name, &text, n, workers, 5);
        }
        "tenantflow_jsonl" => {
            let n = events / 10;
            let path = jsonl_path(n);
            let (start, cpu0) = (Instant::now(), cpu_seconds());
            tenantflow(&job(&format!("[source]\ntype = \"file\"\npath = \"{path}\""), n), workers)?;
            return Ok(result(name, workers, n, start.elapsed().as_secs_f64(), cpu_seconds() - cpu0));
        }
        "kafka" => return kafka_bench((events / 50).min(1_000_000), workers),
        "kafka_latency" => return latency_bench(50_000, 10, workers),
        "cluster_submit" => return submit_bench(30, workers),
        "clickhouse" => return clickhouse_bench((events / 50).min(2_000_000), workers),
        "redis" => return redis_bench((events / 50).min(1_000_000), workers),
        "alert_rules" => return alert_bench((events / 5).min(10_000_000), workers),
        "cep" => return cep_bench((events / 5).min(10_000_000), workers),
        "score" => return score::score_bench(events),
        "audio" => {
            for line in audio::audio_bench()? {
                println!("{line}");
            }
            return Ok(serde_json::json!({"name": "audio_done"}));
        }
        other => bail!("unknown configuration {other}"),
    };
    Ok(result(name, workers, measured_events, start.elapsed().as_secs_f64(), cpu_seconds() - cpu0))
}

/// Throughput of a job with a checkpoint every second vs none: `rounds` (odd) rounds of each,
/// alternating, as the machine is shared and noisy (the 1M-key job's CPU time varied by 20%
/// between runs of the same command); the median round of each and their ratios.
fn checkpoint_overhead(name: &str, text: &str, events: u64, workers: usize, rounds: usize) -> anyhow::Result<serde_json::Value> {
    let (mut plain, mut checkpointed) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let (start, cpu0) = (Instant::now(), cpu_seconds());
        tenantflow(text, workers)?;
        plain.push(result("no_checkpoints", workers, events, start.elapsed().as_secs_f64(), cpu_seconds() - cpu0));
        let with = format!("{text}{}", checkpoint_table(name));
        let (start, cpu0) = (Instant::now(), cpu_seconds());
        let report = tenantflow(&with, workers)?;
        let mut r = result("checkpoint_every_1s", workers, events, start.elapsed().as_secs_f64(), cpu_seconds() - cpu0);
        r["checkpoints"] = report.checkpoints.into();
        r["last_checkpoint_bytes"] = report.last_checkpoint_bytes.into();
        r["last_checkpoint_ms"] = (report.last_checkpoint_duration_us as f64 / 1000.0).into();
        checkpointed.push(r);
    }
    let _ = std::fs::remove_dir_all(checkpoint_dir(name));
    let rates = |v: &[serde_json::Value]| v.iter().map(|r| r["events_per_sec"].clone()).collect::<Vec<_>>();
    let rounds = serde_json::json!({"no_checkpoints": rates(&plain), "checkpoint_every_1s": rates(&checkpointed)});
    let (plain, checkpointed) = (median(plain), median(checkpointed));
    let ratio = |key: &str| {
        let r = checkpointed[key].as_f64().unwrap_or(0.0) / plain[key].as_f64().unwrap_or(1.0);
        (r * 1000.0).round() / 1000.0
    };
    Ok(serde_json::json!({
        "name": name,
        "workers": workers,
        "events": events,
        "ratio_events_per_sec": ratio("events_per_sec"),
        "ratio_events_per_cpu_sec": ratio("events_per_cpu_sec"),
        "no_checkpoints": plain,
        "checkpoint_every_1s": checkpointed,
        "rounds_events_per_sec": rounds,
    }))
}

/// Rows/s through the ClickHouse sink (issue #5): a job without a window writes `rows` events
/// (tenant, user, ts, value) to a ClickHouse table (Debian's server, started here), vs a raw
/// RowBinary HTTP POST of the same rows, encoded beforehand, in batches of the same size, to
/// another table with the same columns; alternating, 3 rounds each, medians.
fn clickhouse_bench(rows: u64, workers: usize) -> anyhow::Result<serde_json::Value> {
    let ch = tenantflow_tests::ClickHouse::start(23_000 + (std::process::id() % 500) as u16 * 4);
    let batch = 100_000u64;
    let fields = vec![
        ("tenant".to_string(), tenantflow_core::DataType::Int),
        ("user".to_string(), tenantflow_core::DataType::Int),
        ("ts".to_string(), tenantflow_core::DataType::Timestamp),
        ("value".to_string(), tenantflow_core::DataType::Int),
    ];
    // The raw body: the same columns the sink writes (a 16-byte id, then the fields).
    let mut bodies: Vec<Vec<u8>> = Vec::new();
    for start in (0..rows).step_by(batch as usize) {
        let mut body = Vec::new();
        for g in start..(start + batch).min(rows) {
            body.extend_from_slice(&u128::from(g).to_le_bytes());
            body.extend_from_slice(&((g % 100) as i64).to_le_bytes());
            body.push(0);
            body.extend_from_slice(&((g % 100_000) as i64).to_le_bytes());
            body.push(0);
            body.extend_from_slice(&((g / 1_000_000) as u32).to_le_bytes());
            body.push(0);
            body.extend_from_slice(&((g % 1000) as i64).to_le_bytes());
        }
        bodies.push(body);
    }
    // The same rows as values, for the sink alone (no dataflow in front of it).
    let values: Vec<Vec<tenantflow_core::Value>> = (0..rows)
        .map(|g| {
            use tenantflow_core::Value;
            vec![Value::Int((g % 100) as i64), Value::Int((g % 100_000) as i64), Value::Ts(g as i64), Value::Int((g % 1000) as i64)]
        })
        .collect();
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let (mut raw, mut sink, mut alone) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..3 {
        let table = format!("default.raw_{round}");
        ch.query(&tenantflow_connectors::clickhouse::create_table_sql(&table, &fields, Some(0))).map_err(|e| anyhow::anyhow!(e))?;
        let url = format!("{}/?query=INSERT%20INTO%20{table}%20FORMAT%20RowBinary", ch.url);
        let (start, cpu0) = (Instant::now(), cpu_seconds());
        for body in &bodies {
            let status = agent.post(&url).send(&body[..])?.status();
            if !status.is_success() {
                bail!("raw insert: HTTP {status}");
            }
        }
        raw.push(result("clickhouse_raw_post", 1, rows, start.elapsed().as_secs_f64(), cpu_seconds() - cpu0));

        let spec = tenantflow_core::job::ClickHouseSinkSpec {
            url: ch.url.clone(),
            table: format!("default.alone_{round}"),
            create_table: true,
            batch_rows: batch as usize,
            batch_interval: 1_000_000,
        };
        let (start, cpu0) = (Instant::now(), cpu_seconds());
        let mut s = tenantflow_connectors::clickhouse::ClickHouseSink::open(&spec, &fields, Some(0))?;
        for row in &values {
            tenantflow_connectors::Sink::write(&mut s, row)?;
        }
        tenantflow_connectors::Sink::finish(&mut s)?;
        alone.push(result("clickhouse_sink_alone", 1, rows, start.elapsed().as_secs_f64(), cpu_seconds() - cpu0));

        let text = format!(
            "name = \"ch\"\n{}\n\n[schema]\ntenant = \"tenant\"\n[schema.fields]\ntenant = \"int\"\nuser = \"int\"\nts = \"timestamp\"\nvalue = \"int\"\n\n[time]\nfield = \"ts\"\n\n[[sinks]]\ntype = \"clickhouse\"\nurl = \"{}\"\ntable = \"default.sink_{round}\"\ncreate_table = true\nbatch_rows = {batch}\n",
            sequence_source(rows, 100_000),
            ch.url
        );
        let (start, cpu0) = (Instant::now(), cpu_seconds());
        let report = tenantflow(&text, workers)?;
        if report.rows_out != rows {
            bail!("the sink wrote {} rows of {rows}", report.rows_out);
        }
        sink.push(result("tenantflow_clickhouse_sink", workers, rows, start.elapsed().as_secs_f64(), cpu_seconds() - cpu0));
    }
    let (raw, mut sink, mut alone) = (median(raw), median(sink), median(alone));
    let vs_raw = |r: &serde_json::Value| {
        let ratio = r["events_per_sec"].as_f64().unwrap_or(0.0) / raw["events_per_sec"].as_f64().unwrap_or(1.0);
        (ratio * 1000.0).round() / 1000.0
    };
    alone["vs_raw_post"] = vs_raw(&alone).into();
    sink["name"] = "clickhouse".into();
    sink["vs_raw_post"] = vs_raw(&sink).into();
    sink["sink_alone"] = alone;
    sink["raw_post"] = raw;
    Ok(sink)
}

/// Ops/s through the Redis sink (issue #5) vs `redis-benchmark` pipelining the same command
/// (`HINCRBY key field 1`, 100 per pipeline) against the same server (Debian's, started here
/// without persistence), alternating, 3 rounds each, medians. The sink is measured alone (rows
/// written straight to it, as the ClickHouse benchmark does) and behind a job without a window.
fn redis_bench(rows: u64, workers: usize) -> anyhow::Result<serde_json::Value> {
    let redis = tenantflow_tests::Redis::start_with(25_000 + (std::process::id() % 300) as u16 * 4, false);
    let fields = vec![
        ("tenant".to_string(), tenantflow_core::DataType::Int),
        ("user".to_string(), tenantflow_core::DataType::Int),
        ("ts".to_string(), tenantflow_core::DataType::Timestamp),
        ("value".to_string(), tenantflow_core::DataType::Int),
    ];
    let located = |s: &str| tenantflow_core::job::Located { value: s.to_string(), key: String::new(), span: 0..0 };
    let spec = tenantflow_core::job::RedisSinkSpec {
        url: redis.url.clone(),
        mode: tenantflow_core::job::RedisMode::Counter,
        key: located("tf:{tenant}:by_user"),
        fields: None,
        value: Some(located("value")),
        hash_field: Some(located("{user}")),
        member: None,
        increment: true,
        keep_top: None,
        max_len: None,
        ttl: None,
        batch_rows: 10_000,
        batch_interval: 100_000,
    };
    let values: Vec<Vec<tenantflow_core::Value>> = (0..rows)
        .map(|g| {
            use tenantflow_core::Value;
            vec![Value::Int((g % 100) as i64), Value::Int((g % 100_000) as i64), Value::Ts(g as i64), Value::Int((g % 1000) as i64)]
        })
        .collect();
    let (mut bench, mut alone, mut job) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..3 {
        let before = children_cpu_seconds();
        let start = Instant::now();
        let out = Command::new("redis-benchmark")
            .args(["-p", &redis.port().to_string(), "-n", &rows.to_string(), "-P", "100", "-r", "100000", "-q"])
            .args(["hincrby", "tf:bench", "__rand_int__", "1"])
            .output()
            .context("redis-benchmark (scripts/setup.sh installs redis-tools)")?;
        let (secs, cpu) = (start.elapsed().as_secs_f64(), children_cpu_seconds() - before);
        let text = String::from_utf8_lossy(&out.stdout);
        let rps: f64 = text
            .rsplit(':')
            .find_map(|part| part.split_whitespace().next().and_then(|n| n.parse().ok()).filter(|_| part.contains("requests per second")))
            .with_context(|| format!("no requests per second in redis-benchmark's output: {text}"))?;
        let mut r = result("redis_benchmark_pipelined", 1, rows, secs, cpu);
        r["events_per_sec"] = rps.round().into();
        bench.push(r);

        let (start, cpu0) = (Instant::now(), cpu_seconds());
        let mut s = tenantflow_connectors::redis::RedisSink::open(&spec, &fields, &format!("bench{round}"), "redis", false)?;
        tenantflow_connectors::Sink::begin_time(&mut s, 1);
        for row in &values {
            tenantflow_connectors::Sink::write(&mut s, row)?;
        }
        tenantflow_connectors::Sink::finish(&mut s)?;
        alone.push(result("redis_sink_alone", 1, rows, start.elapsed().as_secs_f64(), cpu_seconds() - cpu0));

        let text = format!(
            "name = \"redis{round}\"\n{}\n\n[schema]\ntenant = \"tenant\"\n[schema.fields]\ntenant = \"int\"\nuser = \"int\"\nts = \"timestamp\"\nvalue = \"int\"\n\n[time]\nfield = \"ts\"\n\n[[sinks]]\ntype = \"redis\"\nurl = \"{}\"\nmode = \"counter\"\nkey = \"tf:{{tenant}}:by_user\"\nhash_field = \"{{user}}\"\nvalue = \"value\"\n",
            sequence_source(rows, 100_000),
            redis.url
        );
        let (start, cpu0) = (Instant::now(), cpu_seconds());
        let report = tenantflow(&text, workers)?;
        if report.rows_out != rows {
            bail!("the sink wrote {} rows of {rows}", report.rows_out);
        }
        job.push(result("tenantflow_redis_sink", workers, rows, start.elapsed().as_secs_f64(), cpu_seconds() - cpu0));
    }
    let (bench, mut alone, mut job) = (median(bench), median(alone), median(job));
    let vs = |r: &serde_json::Value| {
        let ratio = r["events_per_sec"].as_f64().unwrap_or(0.0) / bench["events_per_sec"].as_f64().unwrap_or(1.0);
        (ratio * 1000.0).round() / 1000.0
    };
    alone["vs_redis_benchmark"] = vs(&alone).into();
    job["name"] = "redis".into();
    job["vs_redis_benchmark"] = vs(&job).into();
    job["sink_alone"] = alone;
    job["redis_benchmark"] = bench;
    Ok(job)
}

/// The middle of three results by events/s.
fn median(mut v: Vec<serde_json::Value>) -> serde_json::Value {
    v.sort_by(|a, b| a["events_per_sec"].as_f64().partial_cmp(&b["events_per_sec"].as_f64()).unwrap_or(std::cmp::Ordering::Equal));
    v.swap_remove(v.len() / 2)
}

/// CPU time of finished child processes (redis-benchmark).
fn children_cpu_seconds() -> f64 {
    // SAFETY: getrusage fills a plain struct.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut u) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// The cost of alert rules (issue #5): a windowed job with 100k results per window, run
/// without rules, with two rules that never fire (a threshold, and a drop against `prev()`), and
/// with the threshold lowered so that every result fires; alternating, 3 rounds each (medians);
/// reported as extra CPU-seconds per million window results.
fn alert_bench(events: u64, workers: usize) -> anyhow::Result<serde_json::Value> {
    let hook = tenantflow_tests::Webhook::start();
    let state = std::env::temp_dir().join(format!("tenantflow-alert-bench-{}", std::process::id()));
    let base = format!(
        "name = \"alerts\"\n{}\n\n[schema]\ntenant = \"tenant\"\n[schema.fields]\ntenant = \"int\"\nuser = \"int\"\nts = \"timestamp\"\nvalue = \"int\"\n\n[time]\nfield = \"ts\"\n\n[[steps]]\nwindow = {{ type = \"tumbling\", size = \"1s\" }}\nkey_by = [\"user\"]\naggregates = {{ n = \"count(*)\", total = \"sum(value)\" }}\n\n[[sinks]]\ntype = \"discard\"\n",
        sequence_source(events, 100_000)
    );
    let rules = format!(
        "\n[[alerts]]\nname = \"Busy\"\ncondition = \"n > 1000\"\nlabels = {{ severity = \"critical\" }}\nannotations = {{ summary = \"{{n}} events for {{user}}\" }}\n\n[[alerts]]\nname = \"Dropped\"\ncondition = \"total < 0.5 * prev(total)\"\n\n[alerting]\nstate_dir = \"{}\"\n[alerting.route]\nreceiver = \"hook\"\ngroup_by = [\"alertname\", \"tenant\"]\n\n[[alerting.receivers]]\nname = \"hook\"\ntype = \"webhook\"\nurl = \"{}\"\n",
        state.display(),
        hook.url
    );
    // Every result fires: the cost of building, deduplicating and grouping alerts too.
    let firing = rules.replace("condition = \"n > 1000\"", "condition = \"n >= 1\"");
    let texts = [base.clone(), base.clone() + &rules, base + &firing];
    let mut runs: [Vec<serde_json::Value>; 3] = Default::default();
    let mut results = 0;
    for _ in 0..3 {
        for (text, out) in texts.iter().zip(runs.iter_mut()) {
            let _ = std::fs::remove_dir_all(&state);
            let (start, cpu0) = (Instant::now(), cpu_seconds());
            let report = tenantflow(text, workers)?;
            results = report.rows_out;
            out.push(result("alert_rules", workers, events, start.elapsed().as_secs_f64(), cpu_seconds() - cpu0));
        }
    }
    let _ = std::fs::remove_dir_all(&state);
    let cpu = |v: &[serde_json::Value]| {
        let mut c: Vec<f64> = v.iter().filter_map(|r| r["cpu_seconds"].as_f64()).collect();
        c.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
        c[c.len() / 2]
    };
    let per_million = |v: &[serde_json::Value]| ((cpu(v) - cpu(&runs[0])) / results as f64 * 1e6 * 1000.0).round() / 1000.0;
    let (quiet, loud) = (per_million(&runs[1]), per_million(&runs[2]));
    let [plain, quiet_runs, loud_runs] = runs;
    let (plain, quiet_runs, loud_runs) = (median(plain), median(quiet_runs), median(loud_runs));
    let ratio = |r: &serde_json::Value| {
        (r["events_per_sec"].as_f64().unwrap_or(0.0) / plain["events_per_sec"].as_f64().unwrap_or(1.0) * 1000.0).round() / 1000.0
    };
    Ok(serde_json::json!({
        "name": "alert_rules",
        "workers": workers,
        "events": events,
        "window_results": results,
        "rules": 2,
        "extra_cpu_seconds_per_million_results_none_fire": quiet,
        "extra_cpu_seconds_per_million_results_all_fire": loud,
        "ratio_events_per_sec_none_fire": ratio(&quiet_runs),
        "ratio_events_per_sec_all_fire": ratio(&loud_runs),
        "notifications": hook.received().len(),
        "without_rules": plain,
        "rules_none_fire": quiet_runs,
        "rules_all_fire": loud_runs,
    }))
}

/// The pattern step (issue #6): a 3-step pattern over 1M keys (users) against the window job
/// (1 s per tenant) and a window keyed by the same 1M users, in the same run; 3 alternating
/// rounds, medians. Then the memory a partial match costs, measured on the pattern store alone.
fn cep_bench(events: u64, workers: usize) -> anyhow::Result<serde_json::Value> {
    let with_steps = |steps: &str| {
        format!(
            "name = \"cep\"\n{}\n\n[schema]\ntenant = \"tenant\"\n[schema.fields]\ntenant = \"int\"\nuser = \"int\"\nts = \"timestamp\"\nvalue = \"int\"\n\n[time]\nfield = \"ts\"\n\n{steps}\n\n[[sinks]]\ntype = \"discard\"\n",
            sequence_source(events, 1_000_000)
        )
    };
    // User u's k-th event has ts = u + k s: its events take turns being a, b and c, so every
    // user completes a match every 3 events, and b's condition reads a's event.
    let pattern = with_steps(CEP_PATTERN);
    let window_users = with_steps("[[steps]]\nwindow = { type = \"tumbling\", size = \"3s\" }\nkey_by = [\"user\"]\naggregates = { n = \"count(*)\", total = \"sum(value)\" }");
    let window_tenants = job(&sequence_source(events, 1_000_000), events);
    let texts = [pattern, window_users, window_tenants];
    let mut runs: [Vec<serde_json::Value>; 3] = Default::default();
    let mut matches = 0;
    for _ in 0..3 {
        for (i, (text, out)) in texts.iter().zip(runs.iter_mut()).enumerate() {
            let (start, cpu0) = (Instant::now(), cpu_seconds());
            let report = tenantflow(text, workers)?;
            if i == 0 {
                matches = report.pattern_matches;
            }
            out.push(result("cep", workers, events, start.elapsed().as_secs_f64(), cpu_seconds() - cpu0));
        }
    }
    let [pattern, users, tenants] = runs.map(median);
    let per_cpu = |r: &serde_json::Value| r["events_per_cpu_sec"].as_f64().unwrap_or(0.0);
    let ratio = |a: &serde_json::Value, b: &serde_json::Value| (per_cpu(a) / per_cpu(b).max(1.0) * 1000.0).round() / 1000.0;
    let (one, two) = partial_match_bytes(1_000_000)?;
    Ok(serde_json::json!({
        "name": "cep",
        "workers": workers,
        "events": events,
        "keys": 1_000_000,
        "matches": matches,
        "events_per_cpu_sec_pattern": per_cpu(&pattern),
        "events_per_cpu_sec_window_1m_users": per_cpu(&users),
        "events_per_cpu_sec_window_tenants": per_cpu(&tenants),
        "ratio_pattern_vs_window_1m_users": ratio(&pattern, &users),
        "ratio_pattern_vs_window_tenants": ratio(&pattern, &tenants),
        "bytes_per_partial_match_1_event": one,
        "bytes_per_partial_match_2_events": two,
        "pattern": pattern,
        "window_1m_users": users,
        "window_tenants": tenants,
    }))
}

const CEP_PATTERN: &str = r#"[[steps]]
pattern = "a -> b -> c"
key_by = ["user"]
within = "10s"
[steps.define]
a = "epoch_ms(ts) / 1000 % 3 = 0"
b = "epoch_ms(ts) / 1000 % 3 = 1 AND ts > a.ts"
c = "epoch_ms(ts) / 1000 % 3 = 2"
[steps.measures]
total = "sum(value)"
"#;

/// Resident memory now (bytes), from /proc/self/statm.
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    statm.split_whitespace().nth(1).and_then(|p| p.parse::<u64>().ok()).unwrap_or(0) * 4096
}

/// Memory per active partial match: `keys` keys each holding one partial match of the
/// benchmark's pattern, first with one event (a), then with two (a, b), measured as the growth
/// of resident memory (key state, the partial match and its stored events) per partial match.
fn partial_match_bytes(keys: u64) -> anyhow::Result<(u64, u64)> {
    use tenantflow_core::Value;
    let text = format!(
        "name = \"mem\"\n[source]\ntype = \"stdin\"\n[schema]\ntenant = \"tenant\"\n[schema.fields]\ntenant = \"int\"\nuser = \"int\"\nts = \"timestamp\"\nvalue = \"int\"\n[time]\nfield = \"ts\"\n{CEP_PATTERN}\n[[sinks]]\ntype = \"discard\"\n"
    );
    let plan = tenantflow_core::plan::load("mem.toml", &text, &[]).map_err(|e| anyhow::anyhow!("{e}"))?;
    let pp = plan.pattern.as_ref().context("pattern plan")?;
    let mut cep = tenantflow_operators::cep::Cep::new(pp, plan.tenant_pos);
    let mut emitted = 0;
    let mut feed = |cep: &mut tenantflow_operators::cep::Cep, second: i64| {
        for chunk in 0..keys / 10_000 {
            for u in chunk * 10_000..(chunk + 1) * 10_000 {
                let ts = second * 1_000_000 + u as i64;
                cep.insert(ts, vec![Value::Int((u % 100) as i64), Value::Int(u as i64), Value::Ts(ts), Value::Int(7)]);
            }
            cep.advance(second * 1_000_000 + ((chunk + 1) * 10_000) as i64, &mut |_, _| emitted += 1);
        }
    };
    let before = rss_bytes();
    feed(&mut cep, 0);
    let one = rss_bytes().saturating_sub(before) / (cep.partial_matches().max(1) as u64);
    let partials = cep.partial_matches() as u64;
    feed(&mut cep, 1);
    let two = rss_bytes().saturating_sub(before) / (cep.partial_matches().max(1) as u64);
    if partials != keys || cep.partial_matches() as u64 != keys {
        bail!("expected {keys} partial matches, found {partials} and {}", cep.partial_matches());
    }
    Ok((one, two))
}

/// Submit-to-running latency (issue #4): a 2-process cluster (`tenantflow cluster start`, the
/// release binary beside this one) gets `jobs` jobs one after the other through its HTTP API;
/// each is timed from the POST until `GET /api/v1/jobs/{id}` says `running` (polled every
/// 0.5 ms), then cancelled. Also reported: the time until the POST's answer alone.
fn submit_bench(jobs: usize, workers: usize) -> anyhow::Result<serde_json::Value> {
    let exe = std::env::current_exe()?;
    let bin = exe.with_file_name("tenantflow");
    if !bin.exists() {
        bail!("{} is missing: build it with `cargo build --release --bins`", bin.display());
    }
    let dir = std::env::temp_dir().join(format!("tenantflow-submit-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let base = 21_000 + (std::process::id() % 1_000) as u16 * 8;
    let api = format!("127.0.0.1:{}", base + 3);
    let mut supervisor = Command::new(&bin)
        .args(["cluster", "start", "--processes", "2", "--workers", &workers.to_string(), "--api", &api])
        .args(["--port-base", &base.to_string(), "--metrics-port-base", &(base + 4).to_string()])
        .arg("--data-dir")
        .arg(dir.join("data"))
        .env("TENANTFLOW_LOG", "warn")
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let result = (|| -> anyhow::Result<serde_json::Value> {
        let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        let url = |path: &str| format!("http://{api}{path}");
        let start = Instant::now();
        while agent.get(url("/readyz")).call().map_or(true, |r| r.status() != 200) {
            if start.elapsed() > std::time::Duration::from_secs(30) {
                bail!("the cluster did not become ready");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        // An unbounded job (a slow generator) to a discarding sink: what matters is the start.
        let text = "name = \"submit\"\n[source]\ntype = \"generator\"\nprofile = \"music\"\nrate = 1000\n\n[schema]\ntenant = \"tenant_id\"\n[schema.fields]\ntenant_id = \"string\"\nevent_type = \"string\"\nts = \"timestamp\"\n\n[time]\nfield = \"ts\"\n\n[[steps]]\nwindow = { type = \"tumbling\", size = \"10s\" }\naggregates = { n = \"count(*)\" }\n\n[[sinks]]\ntype = \"discard\"\n";
        let mut running = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
        let mut accepted = running.clone();
        for _ in 0..jobs {
            let t0 = Instant::now();
            let job: serde_json::Value = agent.post(url("/api/v1/jobs")).send(text)?.body_mut().read_json()?;
            accepted.record(t0.elapsed().as_micros().max(1) as u64)?;
            let id = job["id"].as_str().context("no job id")?.to_string();
            loop {
                let state: serde_json::Value = agent.get(url(&format!("/api/v1/jobs/{id}"))).call()?.body_mut().read_json()?;
                if state["state"] == "running" {
                    break;
                }
                if t0.elapsed() > std::time::Duration::from_secs(30) {
                    bail!("job {id} did not start: {state}");
                }
                std::thread::sleep(std::time::Duration::from_micros(500));
            }
            running.record(t0.elapsed().as_micros().max(1) as u64)?;
            agent.delete(url(&format!("/api/v1/jobs/{id}"))).call()?;
        }
        let ms = |h: &hdrhistogram::Histogram<u64>, q: f64| (h.value_at_quantile(q) as f64 / 10.0).round() / 100.0;
        Ok(serde_json::json!({
            "name": "cluster_submit",
            "processes": 2,
            "workers": workers,
            "jobs": jobs,
            "submit_to_running_p50_ms": ms(&running, 0.5),
            "submit_to_running_p99_ms": ms(&running, 0.99),
            "submit_to_running_max_ms": (running.max() as f64 / 10.0).round() / 100.0,
            "post_answered_p50_ms": ms(&accepted, 0.5),
        }))
    })();
    // SAFETY: signalling our own child; it stops the cluster's processes.
    unsafe { libc::kill(supervisor.id() as libc::pid_t, libc::SIGTERM) };
    let _ = supervisor.wait();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Produces `events` JSON events round-robin into `partitions` partitions of topic `events`;
/// event `i` has event time `i / 100` ms (10 s of event time per million events).
fn produce_events(bootstrap: &str, events: u64, partitions: i32) -> anyhow::Result<()> {
    use rdkafka::producer::{BaseRecord, Producer};
    let producer: rdkafka::producer::BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "20")
        .set("queue.buffering.max.messages", "1000000")
        .create()?;
    let mut payload = String::new();
    for i in 0..events {
        payload.clear();
        std::fmt::Write::write_fmt(
            &mut payload,
            format_args!(r#"{{"tenant":{},"user":{},"ts":{},"value":{}}}"#, i % 100, i % 100_000, 1_767_225_600_000 + i / 100, i % 1000),
        )?;
        let mut record = BaseRecord::<(), _>::to("events").payload(&payload).partition((i % partitions as u64) as i32);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, r)) => {
                    producer.poll(std::time::Duration::from_millis(5));
                    record = r;
                }
            }
        }
    }
    producer.flush(std::time::Duration::from_secs(120))?;
    Ok(())
}

/// Kafka consumption (issue #3): the same topic on librdkafka's mock cluster (in this process)
/// read by a bare rdkafka consumer and by a tenantflow Kafka -> 1 s window -> Kafka job.
/// The mock keeps at most 100,000 records or 5 MiB per partition, hence 16 partitions.
fn kafka_bench(events: u64, workers: usize) -> anyhow::Result<serde_json::Value> {
    let partitions = 16;
    let cluster = tenantflow_connectors::kafka::DevCluster::start(1, &["events".to_string(), "results".to_string()], partitions)?;
    let bootstrap = cluster.bootstrap_servers();
    produce_events(&bootstrap, events, partitions)?;

    // Three rounds of each reader, alternating, as the machine is shared and noisy; the median
    // round of each is reported.
    let (mut bares, mut jobs) = (Vec::new(), Vec::new());
    for round in 0..3 {
        bares.push(bare_consumer(&bootstrap, partitions, events, round)?);
        jobs.push(kafka_job(&bootstrap, events, workers)?);
    }
    let (bare, mut tf) = (median(bares), median(jobs));
    let ratio = tf["events_per_sec"].as_f64().unwrap_or(0.0) / bare["events_per_sec"].as_f64().unwrap_or(1.0);
    let cpu_ratio = tf["events_per_cpu_sec"].as_f64().unwrap_or(0.0) / bare["events_per_cpu_sec"].as_f64().unwrap_or(1.0);
    tf["bare_consumer"] = bare;
    tf["vs_bare_consumer"] = ((ratio * 1000.0).round() / 1000.0).into();
    tf["per_cpu_sec_vs_bare_consumer"] = ((cpu_ratio * 1000.0).round() / 1000.0).into();
    Ok(tf)
}

/// A bare rdkafka consumer: polls every message of every partition and touches the payload.
fn bare_consumer(bootstrap: &str, partitions: i32, events: u64, round: usize) -> anyhow::Result<serde_json::Value> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
    let (start, cpu0) = (Instant::now(), cpu_seconds());
    let consumer: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", bootstrap).set("group.id", format!("bare-{round}")).create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset("events", p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    drop(tpl);
    let (mut seen, mut bytes) = (0u64, 0u64);
    while seen < events {
        if let Some(Ok(m)) = consumer.poll(std::time::Duration::from_millis(100)) {
            bytes += m.payload().map_or(0, |p| p.len() as u64);
            seen += 1;
        }
        if start.elapsed().as_secs() > 300 {
            bail!("the bare consumer read only {seen} of {events} events in 300 s");
        }
    }
    std::hint::black_box(bytes);
    Ok(result("kafka_bare_consumer", 1, events, start.elapsed().as_secs_f64(), cpu_seconds() - cpu0))
}

/// The tenantflow job: Kafka (bounded) -> 1 s tumbling window per tenant -> Kafka.
fn kafka_job(bootstrap: &str, events: u64, workers: usize) -> anyhow::Result<serde_json::Value> {
    let (start, cpu0) = (Instant::now(), cpu_seconds());
    let source = format!("[source]\ntype = \"kafka\"\nbootstrap_servers = \"{bootstrap}\"\ntopic = \"events\"\nbounded = true");
    let sink = format!("[[sinks]]\ntype = \"kafka\"\nbootstrap_servers = \"{bootstrap}\"\ntopic = \"results\"\n");
    let text = job(&source, events).replace("[[sinks]]\ntype = \"discard\"\n", &sink);
    let report = tenantflow(&text, workers)?;
    if report.events_in != events {
        bail!("the job read {} of {events} events", report.events_in);
    }
    let mut r = result("kafka_tenantflow_job", workers, events, start.elapsed().as_secs_f64(), cpu_seconds() - cpu0);
    r["rows_out"] = report.rows_out.into();
    Ok(r)
}

/// Produce-to-sink latency (issue #3): a producer sends `rate` events/s, each carrying its send
/// time (µs since the epoch), for `secs` seconds into a 16-partition topic; what sits between
/// (see [`Between`]) filters out every tenth event and passes the rest on; a reader records, for
/// each result, the time from send to receipt in an HDR histogram. All in this process, on one
/// mock cluster per run.
fn latency_bench(rate: u64, secs: u64, workers: usize) -> anyhow::Result<serde_json::Value> {
    let mut runs = Vec::new();
    for between in [Between::Nothing, Between::JobToFile, Between::BarePipe, Between::JobToKafka] {
        runs.push(latency_run(rate, secs, workers, between)?);
    }
    Ok(serde_json::json!({ "name": "kafka_latency", "workers": workers, "events_per_sec_offered": rate, "runs": runs }))
}

/// What sits between the producer and the reader of the results in a latency run.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Between {
    /// Nothing: the reader reads the events topic (one trip through the broker).
    Nothing,
    /// The filter-and-project job writing to a file that the reader tails (one trip).
    JobToFile,
    /// A bare rdkafka consumer forwarding all but the skipped events to a results topic, keyed
    /// by tenant like the job's sink, with the job's fetch wait and linger (two trips).
    BarePipe,
    /// The filter-and-project job writing to a results topic (two trips).
    JobToKafka,
}

fn latency_run(rate: u64, secs: u64, workers: usize, between: Between) -> anyhow::Result<serde_json::Value> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::producer::{BaseProducer, BaseRecord};
    use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
    use std::io::Read;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;
    let partitions = 16;
    let cluster = tenantflow_connectors::kafka::DevCluster::start(1, &["events".to_string(), "out".to_string()], partitions)?;
    let bootstrap = cluster.bootstrap_servers();
    let out_file = std::env::temp_dir().join(format!("tenantflow-latency-{}.jsonl", std::process::id()));
    std::fs::write(&out_file, "")?;
    let now_us = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64);
    let sink = if between == Between::JobToFile {
        format!("type = \"file\"\npath = \"{}\"", out_file.display())
    } else {
        format!("type = \"kafka\"\nbootstrap_servers = \"{bootstrap}\"\ntopic = \"out\"\nproperties = {{ \"linger.ms\" = 1 }}")
    };
    let text = format!(
        r#"
name = "latency"
[source]
type = "kafka"
bootstrap_servers = "{bootstrap}"
topic = "events"
start = "latest"
# librdkafka's mock broker answers a fetch that finds no new data only after the full
# fetch.wait.max.ms (500 ms by default), even when data arrives meanwhile; a real broker
# answers as soon as data arrives. A short wait stands in for that.
properties = {{ "fetch.wait.max.ms" = 5 }}

[schema]
tenant = "tenant"
[schema.fields]
tenant = "int"
user = "int"
sent_us = "int"
kind = "string"

[time]
mode = "processing"

[[steps]]
filter = "kind <> 'skip'"

[[steps]]
select = ["tenant", "user", "sent_us"]

[[sinks]]
{sink}
"#
    );
    let stop = Arc::new(AtomicBool::new(false));
    let between_thread: Option<std::thread::JoinHandle<anyhow::Result<()>>> = match between {
        Between::Nothing => None,
        Between::BarePipe => {
            let (stop, bootstrap) = (Arc::clone(&stop), bootstrap.clone());
            Some(std::thread::spawn(move || {
                let source: BaseConsumer = ClientConfig::new()
                    .set("bootstrap.servers", &bootstrap)
                    .set("group.id", "pipe")
                    .set("fetch.wait.max.ms", "5")
                    .create()?;
                let mut tpl = TopicPartitionList::new();
                for p in 0..partitions {
                    tpl.add_partition_offset("events", p, Offset::End)?;
                }
                source.assign(&tpl)?;
                let sink: BaseProducer = ClientConfig::new().set("bootstrap.servers", &bootstrap).set("linger.ms", "1").create()?;
                while !stop.load(Ordering::SeqCst) {
                    if let Some(Ok(m)) = source.poll(Duration::from_millis(1)) {
                        let payload = m.payload().unwrap_or_default();
                        if !payload.windows(13).any(|w| w == br#""kind":"skip""#) {
                            // The payload starts with `{"tenant":NN`: those digits are the key.
                            let tenant = payload.get(10..12).unwrap_or_default();
                            while sink.send(BaseRecord::to("out").payload(payload).key(tenant)).is_err() {
                                sink.poll(Duration::from_millis(1));
                            }
                        }
                    }
                    sink.poll(Duration::ZERO);
                }
                Ok(())
            }))
        }
        Between::JobToFile | Between::JobToKafka => {
            let plan = tenantflow_core::plan::load("latency.toml", &text, &[]).map_err(|e| anyhow::anyhow!("{e}"))?;
            let stop = Arc::clone(&stop);
            Some(std::thread::spawn(move || {
                let config = tenantflow_engine::RunConfig { workers, stop: Some(stop), ..Default::default() };
                tenantflow_engine::run(plan, &config).map(|_| ()).map_err(anyhow::Error::from)
            }))
        }
    };
    // The reader of the results (or, for the baseline, of the events), from the start.
    let topic = if between == Between::Nothing { "events" } else { "out" };
    let consumer: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", &bootstrap).set("group.id", "latency").set("fetch.wait.max.ms", "1").create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    drop(tpl);
    let mut file = std::fs::File::open(&out_file)?;
    let (mut tail, mut lines_read) = (Vec::new(), 0usize);
    // Give the job time to start and assign its partitions (it reads from the latest offsets).
    std::thread::sleep(Duration::from_secs(2));

    let producer: BaseProducer = ClientConfig::new().set("bootstrap.servers", &bootstrap).set("linger.ms", "5").create()?;
    let total = rate * secs;
    let mut histogram = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut record = |row: &[u8]| -> anyhow::Result<()> {
        let row: serde_json::Value = serde_json::from_slice(row)?;
        let sent_us = row["sent_us"].as_u64().unwrap_or(0);
        histogram.record(now_us().saturating_sub(sent_us).max(1))?;
        Ok(())
    };
    let expected = if between == Between::Nothing { total } else { total - total / 10 };
    let (mut sent, mut received) = (0u64, 0u64);
    let start = Instant::now();
    let mut payload = String::new();
    let deadline = Duration::from_secs(secs + 20);
    while received < expected && start.elapsed() < deadline {
        // Send what is due by now, at `rate` per second.
        let due = (start.elapsed().as_secs_f64() * rate as f64) as u64;
        while sent < due.min(total) {
            payload.clear();
            let kind = if sent % 10 == 9 { "skip" } else { "play" };
            std::fmt::Write::write_fmt(
                &mut payload,
                format_args!(r#"{{"tenant":{},"user":{},"sent_us":{},"kind":"{kind}"}}"#, sent % 100, sent % 10_000, now_us()),
            )?;
            let record = BaseRecord::<(), _>::to("events").payload(&payload).partition((sent % partitions as u64) as i32);
            if producer.send(record).is_err() {
                producer.poll(Duration::from_millis(1));
                continue;
            }
            sent += 1;
        }
        producer.poll(Duration::ZERO);
        if between == Between::JobToFile {
            file.read_to_end(&mut tail)?;
            while let Some(end) = tail[lines_read..].iter().position(|&b| b == b'\n') {
                record(&tail[lines_read..lines_read + end])?;
                lines_read += end + 1;
                received += 1;
            }
            tail.drain(..lines_read);
            lines_read = 0;
        } else {
            while let Some(Ok(m)) = consumer.poll(Duration::ZERO) {
                record(m.payload().unwrap_or_default())?;
                received += 1;
            }
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    stop.store(true, Ordering::SeqCst);
    if let Some(thread) = between_thread {
        thread.join().map_err(|_| anyhow::anyhow!("{between:?} panicked"))??;
    }
    let _ = std::fs::remove_file(&out_file);
    if received != expected {
        bail!("{between:?}: received {received} of {expected} results");
    }
    let ms = |q: f64| (histogram.value_at_quantile(q) as f64 / 10.0).round() / 100.0;
    let name = match between {
        Between::Nothing => "producer_mock_consumer",
        Between::JobToFile => "tenantflow_kafka_to_file",
        Between::BarePipe => "bare_rdkafka_pipe_kafka_to_kafka",
        Between::JobToKafka => "tenantflow_kafka_to_kafka",
    };
    Ok(serde_json::json!({
        "name": name,
        "events": total,
        "results": received,
        "p50_ms": ms(0.5),
        "p99_ms": ms(0.99),
        "p999_ms": ms(0.999),
        "max_ms": (histogram.max() as f64 / 10.0).round() / 100.0,
    }))
}

fn result(name: &str, workers: usize, events: u64, secs: f64, cpu: f64) -> serde_json::Value {
    serde_json::json!({
        "name": name,
        "events": events,
        "workers": workers,
        "seconds": (secs * 1000.0).round() / 1000.0,
        "cpu_seconds": (cpu * 1000.0).round() / 1000.0,
        "events_per_sec": (events as f64 / secs).round(),
        "events_per_cpu_sec": (events as f64 / cpu).round(),
        "peak_rss_bytes": peak_rss_bytes(),
    })
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let events: u64 = flag("--events").map(|e| e.replace('_', "").parse()).transpose()?.unwrap_or(50_000_000);
    if let Some(config) = flag("--config") {
        let workers: usize = flag("--workers").context("--workers")?.parse()?;
        println!("{}", run_one(&config, workers, events)?);
        return Ok(());
    }
    let only = flag("--only");
    ensure_jsonl(events / 10)?;
    let exe = std::env::current_exe()?;
    let mut results: Vec<serde_json::Value> = Vec::new();
    for &(name, workers) in CONFIGS {
        if only.as_deref().is_some_and(|o| o != name) {
            continue;
        }
        let out = Command::new(&exe)
            .args(["--config", name, "--workers", &workers.to_string(), "--events", &events.to_string()])
            .output()
            .with_context(|| format!("running {name}"))?;
        if !out.status.success() {
            bail!("{name} x{workers} failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        // One JSON line per configuration (some print one per case).
        for line in String::from_utf8_lossy(&out.stdout).lines().filter(|l| !l.trim().is_empty()) {
            let value: serde_json::Value = serde_json::from_str(line.trim()).with_context(|| format!("{name}: {line}"))?;
            println!("{value}");
            results.push(value);
        }
    }
    let rate =
        |name: &str, w: u64| results.iter().find(|r| r["name"] == name && r["workers"] == w).and_then(|r| r["events_per_cpu_sec"].as_f64());
    for w in [1, 2] {
        if let (Some(tf), Some(hand)) = (rate("tenantflow_job", w), rate("timely_handwritten", w)) {
            let flink = 2.7e6;
            println!(
                "{}",
                serde_json::json!({"name": "ratio", "workers": w, "tenantflow_vs_timely_handwritten": (tf / hand * 1000.0).round() / 1000.0,
                                   "tenantflow_vs_flink_reference": (tf / flink * 10.0).round() / 10.0})
            );
        }
    }
    Ok(())
}
