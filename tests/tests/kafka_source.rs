//! The Kafka source against librdkafka's mock cluster in this process: dead letters go to a
//! topic with their origin in headers, the consumer group's offsets follow committed
//! checkpoints, and a slow sink stops the consumer from reading ahead.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use tenantflow_connectors::kafka::{partition_positions, DevCluster, PartitionPosition};
use tenantflow_engine::{run, RunConfig};
use tenantflow_tests::{plan, run_job};

const BASE_MS: i64 = 1_767_225_600_000;

/// Produces `(partition, payload)` records and waits for their delivery.
fn produce(bootstrap: &str, topic: &str, records: impl IntoIterator<Item = (i32, String)>) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("queue.buffering.max.messages", "1000000")
        .set("linger.ms", "20")
        .create()
        .expect("producer");
    for (partition, payload) in records {
        let mut record = BaseRecord::<(), String>::to(topic).partition(partition).payload(&payload);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, r)) => {
                    producer.poll(Duration::from_millis(10));
                    record = r;
                }
            }
        }
    }
    producer.flush(Duration::from_secs(30)).expect("flush");
}

fn event(i: i64, tenant: i64) -> String {
    format!(r#"{{"tenant":"t{tenant}","ms":{},"ts":{}}}"#, i % 1000, BASE_MS + i)
}

fn kafka_job(bootstrap: &str, group: &str, extra: &str) -> String {
    format!(
        r#"
[source]
type = "kafka"
bootstrap_servers = "{bootstrap}"
topic = "events"
group_id = "{group}"
{extra}

[schema]
tenant = "tenant"
[schema.fields]
tenant = "string"
ms = "int"
ts = "timestamp"

[time]
field = "ts"
"#
    )
}

#[test]
fn dead_letters_go_to_a_topic_with_their_origin() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = DevCluster::start(1, &["events".to_string(), "dead".to_string()], 2).expect("mock cluster");
    let bootstrap = cluster.bootstrap_servers();
    let bad_type = r#"{"tenant":"t1","ms":"x","ts":1767225600000}"#;
    produce(
        &bootstrap,
        "events",
        [(0, event(0, 0)), (0, "not json".into()), (0, event(2, 0)), (1, event(3, 1)), (1, event(4, 1)), (1, bad_type.into())],
    );
    let job = kafka_job(&bootstrap, "dead-letters", "bounded = true")
        + &format!(
            r#"
[[sinks]]
type = "file"
path = "{dir}/out.jsonl"

[dead_letter]
type = "kafka"
bootstrap_servers = "{bootstrap}"
topic = "dead"
"#,
            dir = dir.path().display()
        );
    let report = run_job(&job, 2);
    assert_eq!((report.events_in, report.dead_letters), (4, 2));
    assert_eq!(std::fs::read_to_string(dir.path().join("out.jsonl")).expect("output").lines().count(), 4);

    let consumer: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", &bootstrap).set("group.id", "reader").create().expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..2 {
        tpl.add_partition_offset("dead", p, Offset::Beginning).expect("partition");
    }
    consumer.assign(&tpl).expect("assign");
    drop(tpl);
    let mut got = Vec::new();
    let start = Instant::now();
    while got.len() < 2 && start.elapsed() < Duration::from_secs(20) {
        let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) else { continue };
        let headers: HashMap<String, String> = m
            .headers()
            .map(|h| h.iter().map(|h| (h.key.to_string(), String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned())).collect())
            .unwrap_or_default();
        let payload = String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned();
        got.push((payload, headers));
    }
    got.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(got.len(), 2, "dead letters in the topic: {got:?}");
    let expect = [("not json", "0", "1", ""), (bad_type, "1", "2", "field `ms`")];
    for ((payload, headers), (raw, partition, offset, reason)) in got.iter().zip(expect) {
        assert_eq!(payload, raw);
        assert_eq!(headers.get("tenantflow-source").map(String::as_str), Some("events"), "{headers:?}");
        assert_eq!(headers.get("tenantflow-partition").map(String::as_str), Some(partition), "{headers:?}");
        assert_eq!(headers.get("tenantflow-offset").map(String::as_str), Some(offset), "{headers:?}");
        assert!(headers.get("tenantflow-error").is_some_and(|e| !e.is_empty() && e.contains(reason)), "{headers:?}");
        assert!(headers.get("tenantflow-id").is_some_and(|id| id.len() == 32), "{headers:?}");
    }
}

/// The consumer group's committed offsets of `topic`'s partitions (-1 where none).
fn committed(bootstrap: &str, group: &str, topic: &str, partitions: i32) -> Vec<i64> {
    let consumer: BaseConsumer = ClientConfig::new().set("bootstrap.servers", bootstrap).set("group.id", group).create().expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let got = consumer.committed_offsets(tpl, Duration::from_secs(5)).expect("committed offsets");
    let offsets = (0..partitions)
        .map(|p| match got.find_partition(topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => o,
            _ => -1,
        })
        .collect();
    // A list from the consumer must go before the consumer does (rust-rdkafka#453).
    drop(got);
    offsets
}

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn group_offsets_follow_committed_checkpoints() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = DevCluster::start(1, &["events".to_string()], 2).expect("mock cluster");
    let bootstrap = cluster.bootstrap_servers();
    produce(&bootstrap, "events", (0..10_000).map(|i| ((i % 2) as i32, event(i, i % 3))));
    let job = kafka_job(&bootstrap, "offsets", "")
        + &format!(
            "[[sinks]]\ntype = \"file\"\npath = \"{dir}/out.jsonl\"\n\n[checkpoint]\ndir = \"{dir}/checkpoints\"\ninterval = \"100ms\"\n",
            dir = dir.path().display()
        );
    let stop = Arc::new(AtomicBool::new(false));
    let config = RunConfig { workers: 2, stop: Some(Arc::clone(&stop)), ..RunConfig::default() };
    let runner = std::thread::spawn(move || run(plan(&job), &config));

    // While the job runs, its group's offsets reach the end of what was produced, and follow
    // what is produced next.
    wait_for("offsets 5000", Duration::from_secs(30), || committed(&bootstrap, "offsets", "events", 2) == [5000, 5000]);
    produce(&bootstrap, "events", (10_000..12_000).map(|i| ((i % 2) as i32, event(i, i % 3))));
    wait_for("offsets 6000", Duration::from_secs(30), || committed(&bootstrap, "offsets", "events", 2) == [6000, 6000]);
    assert!(!runner.is_finished(), "the job should still be running");
    // librdkafka's statistics (every second) show the same offsets.
    wait_for("statistics", Duration::from_secs(10), || {
        let positions: Vec<PartitionPosition> = partition_positions().into_iter().filter(|p| p.group == "offsets").collect();
        positions.len() == 2 && positions.iter().all(|p| p.committed == 6000 && p.consumed == 6000 && p.end == 6000)
    });

    stop.store(true, Ordering::SeqCst);
    let report = runner.join().expect("job thread").expect("job");
    assert_eq!(report.events_in, 12_000);
    assert!(report.savepoint.is_some());
    assert_eq!(committed(&bootstrap, "offsets", "events", 2), [6000, 6000]);
}

/// Peak resident memory of this process while `f` runs, above what it was before, and what
/// `sample` saw of the job's partitions every 20 ms.
fn during<T: Send>(f: impl FnOnce() -> T + Send, mut sample: impl FnMut(&[PartitionPosition])) -> (T, u64) {
    let rss = || {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let kb = status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.trim().trim_end_matches(" kB").parse::<u64>().ok());
        kb.unwrap_or(0) * 1024
    };
    let before = rss();
    std::thread::scope(|s| {
        let job = s.spawn(f);
        let mut peak = before;
        while !job.is_finished() {
            peak = peak.max(rss());
            sample(&partition_positions());
            std::thread::sleep(Duration::from_millis(20));
        }
        (job.join().expect("job thread"), peak.saturating_sub(before))
    })
}

/// A job reading `events` from 8 partitions through a filter into a sink that takes `delay`
/// per row, with `max_lead` of backpressure.
fn slow_job(bootstrap: &str, group: &str, source: &str, delay: &str, max_lead: &str) -> String {
    kafka_job(bootstrap, group, &format!("bounded = true\n{source}"))
        + &format!(
            "[[steps]]\nfilter = \"ms >= 0\"\n\n[[sinks]]\ntype = \"discard\"\ndelay_per_row = \"{delay}\"\n\n[runtime]\nmax_lead = \"{max_lead}\"\n"
        )
}

/// The mock broker keeps at most 100,000 records or 5 MiB per partition: 8 partitions of
/// 50,000 small records stay within that.
fn eight_partitions(events: i64) -> (DevCluster, String) {
    let cluster = DevCluster::start(1, &["events".to_string()], 8).expect("mock cluster");
    let bootstrap = cluster.bootstrap_servers();
    produce(&bootstrap, "events", (0..events).map(|i| ((i % 8) as i32, event(i, i % 5))));
    (cluster, bootstrap)
}

#[test]
fn slow_sink_bounds_read_ahead_and_memory() {
    let events = 400_000i64;
    let (_cluster, bootstrap) = eight_partitions(events);
    // At most 256 KiB queued per partition, fetched 256 KiB at a time: 4 MiB for 8 partitions
    // of a 22 MB topic.
    let limits =
        "properties = { \"statistics.interval.ms\" = 20, \"queued.max.messages.kbytes\" = 256, \"max.partition.fetch.bytes\" = 262144 }";
    let (mut samples, mut max_queued, mut max_ahead) = (0, 0u64, 0i64);
    let (report, grew) = during(
        || run_job(&slow_job(&bootstrap, "slow", limits, "5us", "10ms"), 2),
        |positions| {
            let mine: Vec<_> = positions.iter().filter(|p| p.group == "slow").collect();
            // Mid-run: sampled only while every partition still has records to read.
            if mine.len() == 8 && mine.iter().all(|p| p.consumed > 0 && p.consumed < p.end * 3 / 4) {
                samples += 1;
                max_queued = max_queued.max(mine.iter().map(|p| p.fetch_queue_bytes).sum());
                max_ahead = max_ahead.max(mine.iter().map(|p| p.fetch_offset - p.consumed).max().unwrap_or(0));
            }
        },
    );
    assert_eq!(report.events_in, events as u64);
    eprintln!(
        "backpressure: {samples} samples, at most {max_queued} bytes queued, {max_ahead} records fetched ahead, RSS +{} MiB in {:?}",
        grew >> 20,
        report.elapsed
    );
    assert!(samples >= 5, "too few samples while the job was slow: {samples}");
    assert!(max_queued <= 6 << 20, "librdkafka queued {max_queued} bytes ahead of the job");
    assert!(max_ahead <= 20_000, "a partition was fetched {max_ahead} records ahead of the job");
    assert!(grew < 80 << 20, "RSS grew by {} MiB", grew >> 20);

    // Without backpressure the same job buffers what the sink has not written.
    let (_, grew_unbounded) = during(|| run_job(&slow_job(&bootstrap, "fast", limits, "5us", "1h"), 2), |_| {});
    eprintln!("without backpressure: RSS +{} MiB", grew_unbounded >> 20);
    assert!(grew_unbounded > grew + (32 << 20), "without backpressure: +{} MiB vs +{} MiB", grew_unbounded >> 20, grew >> 20);
}

#[test]
fn a_long_wait_pauses_partitions() {
    let events = 40_000i64;
    let (_cluster, bootstrap) = eight_partitions(events);
    // Held back for 2 ms, the source pauses its partitions (and resumes them after).
    let source = "pause_after = \"2ms\"\nproperties = { \"statistics.interval.ms\" = 20 }";
    let (mut paused, mut unpaused) = (0, 0);
    let (report, _) = during(
        || run_job(&slow_job(&bootstrap, "stalled", source, "20us", "10ms"), 2),
        |positions| {
            for p in positions.iter().filter(|p| p.group == "stalled") {
                *(if p.paused { &mut paused } else { &mut unpaused }) += 1;
            }
        },
    );
    assert_eq!(report.events_in, events as u64);
    assert!(paused > 0 && unpaused > 0, "paused {paused} times, unpaused {unpaused} times");
}
