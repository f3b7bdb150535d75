//! Broker faults through librdkafka's mock cluster (in this process, so the test can inject
//! them): a broker going down and up, failing fetches, slow round trips. The job survives and
//! its results stay exact.

use std::process::{Command, Stdio};
use std::time::Duration;

use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use tenantflow_connectors::kafka::DevCluster;
use tenantflow_tests::{read_jsonl, run_job};

#[test]
fn results_stay_exact_through_broker_faults() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = DevCluster::start(2, &["events".to_string()], 4).expect("mock cluster");
    let bootstrap = cluster.bootstrap_servers();

    let events = 60_000i64;
    let lines: Vec<String> =
        (0..events).map(|i| format!(r#"{{"tenant":"t{}","ms":{},"ts":{}}}"#, i % 4, i % 100, 1_767_225_600_000 + i * 10)).collect();
    let input = dir.path().join("events.jsonl");
    std::fs::write(&input, lines.join("\n") + "\n").expect("write");
    let status =
        Command::new("kcat").args(["-P", "-b", &bootstrap, "-t", "events", "-l"]).arg(&input).stderr(Stdio::null()).status().expect("kcat");
    assert!(status.success(), "kcat failed to produce");

    let job = format!(
        r#"
[source]
type = "kafka"
bootstrap_servers = "{bootstrap}"
topic = "events"
bounded = true

[schema]
tenant = "tenant"
[schema.fields]
tenant = "string"
ms = "int"
ts = "timestamp"

[time]
field = "ts"

[[steps]]
window = {{ type = "tumbling", size = "30s" }}
aggregates = {{ n = "count(*)", ms = "sum(ms)" }}

[[sinks]]
type = "file"
path = "{dir}/out.jsonl"

[dead_letter]
path = "{dir}/dead.jsonl"
"#,
        dir = dir.path().display()
    );

    // Faults while the job reads: slow round trips, failing fetches, then a broker down and up.
    let faults = std::thread::scope(|s| {
        let runner = s.spawn(|| run_job(&job, 2));
        let mock = cluster.mock();
        for broker in 1..=2 {
            mock.broker_round_trip_time(broker, Duration::from_millis(30)).expect("rtt");
        }
        mock.request_errors(RDKafkaApiKey::Fetch, &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION; 5]);
        std::thread::sleep(Duration::from_millis(300));
        mock.broker_down(1).expect("broker down");
        std::thread::sleep(Duration::from_millis(1500));
        mock.broker_up(1).expect("broker up");
        for broker in 1..=2 {
            mock.broker_round_trip_time(broker, Duration::ZERO).expect("rtt");
        }
        runner.join().expect("job thread")
    });
    assert_eq!(faults.dead_letters, 0);

    let mut expected = std::collections::BTreeMap::new();
    for i in 0..events {
        let window = (1_767_225_600_000 + i * 10) / 30_000;
        let e = expected.entry((format!("t{}", i % 4), window)).or_insert((0i64, 0i64));
        e.0 += 1;
        e.1 += i % 100;
    }
    let got: std::collections::BTreeMap<(String, i64), (i64, i64)> = read_jsonl(&dir.path().join("out.jsonl"))
        .iter()
        .map(|r| {
            let start = tenantflow_core::time::parse_timestamp(r["window_start"].as_str().unwrap_or("")).unwrap_or(0) / 1000;
            (
                (r["tenant"].as_str().unwrap_or("").to_string(), start / 30_000),
                (r["n"].as_i64().unwrap_or(0), r["ms"].as_i64().unwrap_or(0)),
            )
        })
        .collect();
    assert_eq!(got, expected);
}
