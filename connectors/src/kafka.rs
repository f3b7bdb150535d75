//! Kafka through rdkafka (librdkafka): a source of JSON records and a sink of JSON rows.
//!
//! Partitions are assigned by tenantflow, not by a consumer-group rebalance: worker `w` of `n`
//! reads the partitions `p` with `p % n == w`, so assignment is immediate and deterministic.
//! Partitions added to the topic later are picked up by the periodic metadata refresh and go to
//! the worker the same rule names.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::ClientContext;
use rdkafka::{Offset, TopicPartitionList};
use tenantflow_core::job::{KafkaSinkSpec, KafkaSourceSpec};
use tenantflow_core::Value;

use crate::json::JsonDecoder;
use crate::sink::{JsonLines, Sink};
use crate::source::{Batch, DeadLetter, Poll, Source};
use crate::ConnectorError;

const METADATA_TIMEOUT: Duration = Duration::from_secs(10);
const REFRESH_EVERY: Duration = Duration::from_secs(10);

fn kafka_error(context: &str, e: KafkaError) -> ConnectorError {
    ConnectorError::Kafka(format!("{context}: {e}"))
}

struct Partition {
    id: i32,
    /// `topic[partition]`, for dead letters and row origins.
    name: String,
    /// Index of this partition's name in the batch's origins.
    origin: Option<u32>,
    /// Bounded runs stop at this offset (exclusive).
    end: Option<i64>,
    /// Next offset to read.
    next: i64,
    /// Largest event time seen, for the per-partition watermark.
    max_ts: i64,
    last_record: Instant,
}

/// Reads JSON records from the partitions of one topic that belong to this worker.
pub struct KafkaSource {
    consumer: BaseConsumer,
    spec: KafkaSourceSpec,
    decoder: JsonDecoder,
    worker: usize,
    workers: usize,
    partitions: Vec<Partition>,
    last_refresh: Instant,
    paused: bool,
    /// Row position of the event-time field, for per-partition watermarks.
    time_pos: Option<usize>,
    idle_timeout: Option<Duration>,
}

impl KafkaSource {
    pub fn open(
        spec: &KafkaSourceSpec,
        worker: usize,
        workers: usize,
        decoder: JsonDecoder,
        time_pos: Option<usize>,
        idle_timeout: Option<Duration>,
    ) -> Result<KafkaSource, ConnectorError> {
        let bootstrap = spec.bootstrap.resolve().map_err(|e| ConnectorError::Kafka(format!("bootstrap file: {e}")))?;
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", spec.group_id.as_deref().unwrap_or("tenantflow"))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            // Bounded prefetch: with the source paused by backpressure, librdkafka holds at most
            // this much per partition.
            .set("queued.max.messages.kbytes", "4096");
        for (k, v) in &spec.properties {
            config.set(k, v);
        }
        let consumer: BaseConsumer = config.create().map_err(|e| kafka_error("creating the consumer", e))?;
        let mut source = KafkaSource {
            consumer,
            spec: spec.clone(),
            decoder,
            worker,
            workers,
            partitions: Vec::new(),
            last_refresh: Instant::now(),
            paused: false,
            time_pos,
            idle_timeout,
        };
        source.refresh()?;
        Ok(source)
    }

    /// Assigns this worker's partitions that are not assigned yet.
    fn refresh(&mut self) -> Result<(), ConnectorError> {
        self.last_refresh = Instant::now();
        let metadata =
            self.consumer.fetch_metadata(Some(&self.spec.topic), METADATA_TIMEOUT).map_err(|e| kafka_error("fetching metadata", e))?;
        let Some(topic) = metadata.topics().iter().find(|t| t.name() == self.spec.topic) else {
            return Err(ConnectorError::Kafka(format!("topic `{}` not found", self.spec.topic)));
        };
        if let Some(e) = topic.error() {
            return Err(ConnectorError::Kafka(format!("topic `{}`: {:?}", self.spec.topic, RDKafkaErrorCode::from(e))));
        }
        let mut added = false;
        for p in topic.partitions() {
            let id = p.id();
            if id as usize % self.workers != self.worker || self.partitions.iter().any(|q| q.id == id) {
                continue;
            }
            let (low, high) =
                self.consumer.fetch_watermarks(&self.spec.topic, id, METADATA_TIMEOUT).map_err(|e| kafka_error("fetching offsets", e))?;
            let start = if self.spec.from_earliest { low } else { high };
            self.partitions.push(Partition {
                id,
                name: format!("{}[{id}]", self.spec.topic),
                origin: None,
                end: self.spec.bounded.then_some(high),
                next: start,
                max_ts: i64::MIN,
                last_record: Instant::now(),
            });
            added = true;
        }
        if added {
            let mut tpl = TopicPartitionList::new();
            for p in &self.partitions {
                tpl.add_partition_offset(&self.spec.topic, p.id, Offset::Offset(p.next)).map_err(|e| kafka_error("assigning", e))?;
            }
            self.consumer.assign(&tpl).map_err(|e| kafka_error("assigning partitions", e))?;
        }
        Ok(())
    }

    fn all_done(&self) -> bool {
        self.spec.bounded && self.partitions.iter().all(|p| p.end.is_some_and(|e| p.next >= e))
    }
}

impl Source for KafkaSource {
    fn poll(&mut self, batch: &mut Batch, max: usize) -> Poll {
        if self.all_done() {
            return Poll::Done;
        }
        if !self.spec.bounded && self.last_refresh.elapsed() >= REFRESH_EVERY {
            if let Err(e) = self.refresh() {
                tracing::warn!("kafka metadata refresh failed: {e}");
            }
        }
        for n in 0..max {
            // When nothing is queued yet, wait up to 1 ms for the next fetch: much shorter than
            // a trip through the scheduler's pause, and the worker has nothing else from here.
            let wait = if n == 0 { Duration::from_millis(1) } else { Duration::ZERO };
            let message = match self.consumer.poll(wait) {
                None => return if n == 0 { Poll::Pending } else { Poll::Ready },
                Some(Err(e)) => {
                    // librdkafka retries broker errors itself; they are worth a log line, not a stop.
                    tracing::warn!("kafka consumer: {e}");
                    return Poll::Pending;
                }
                Some(Ok(m)) => m,
            };
            let Some(slot) = self.partitions.iter().position(|p| p.id == message.partition()) else { continue };
            let offset = message.offset();
            let part = &mut self.partitions[slot];
            let origin = *part.origin.get_or_insert_with(|| batch.origin(&part.name));
            let payload = message.payload().unwrap_or_default();
            let row = batch.push_row(origin, offset as u64);
            match self.decoder.decode(payload, row) {
                Ok(()) => {
                    if let Some(t) = self.time_pos.and_then(|p| row[p].as_i64()) {
                        let p = &mut self.partitions[slot];
                        p.max_ts = p.max_ts.max(t);
                    }
                }
                Err(reason) => {
                    batch.pop_row();
                    batch.dead.push(DeadLetter::new(reason, &self.partitions[slot].name, offset as u64, payload));
                }
            }
            let p = &mut self.partitions[slot];
            p.next = offset + 1;
            p.last_record = Instant::now();
            if self.all_done() {
                return Poll::Done;
            }
        }
        Poll::Ready
    }

    fn watermark_hint(&self) -> Option<i64> {
        // The source's event time is the lowest of its partitions', leaving out partitions that
        // are finished (bounded runs) or idle for longer than `idle_timeout`.
        let active = self.partitions.iter().filter(|p| {
            let finished = p.end.is_some_and(|e| p.next >= e);
            let idle = self.idle_timeout.is_some_and(|t| p.last_record.elapsed() >= t);
            !finished && !idle
        });
        active.map(|p| p.max_ts).min()
    }

    /// Each partition's next offset and largest event time. The offsets are also committed to
    /// the consumer group (asynchronously), so lag tools see progress; a restore uses the
    /// checkpoint's offsets, not the group's.
    fn checkpoint(&self) -> Option<Vec<u8>> {
        let parts: Vec<(i32, i64, i64)> = self.partitions.iter().map(|p| (p.id, p.next, p.max_ts)).collect();
        let mut tpl = TopicPartitionList::new();
        for p in &self.partitions {
            let _ = tpl.add_partition_offset(&self.spec.topic, p.id, Offset::Offset(p.next));
        }
        if tpl.count() > 0 {
            if let Err(e) = self.consumer.commit(&tpl, CommitMode::Async) {
                tracing::warn!("kafka offset commit: {e}");
            }
        }
        crate::source::encode(&parts)
    }

    fn restore(&mut self, state: &[u8]) -> Result<(), String> {
        let parts: Vec<(i32, i64, i64)> = crate::source::decode(state)?;
        let mut tpl = TopicPartitionList::new();
        for (id, next, max_ts) in parts {
            if let Some(p) = self.partitions.iter_mut().find(|p| p.id == id) {
                p.next = next;
                p.max_ts = max_ts;
            }
        }
        for p in &self.partitions {
            tpl.add_partition_offset(&self.spec.topic, p.id, Offset::Offset(p.next)).map_err(|e| e.to_string())?;
        }
        self.consumer.assign(&tpl).map_err(|e| format!("kafka: assigning restored offsets: {e}"))
    }

    fn retry_after(&self) -> Duration {
        Duration::from_millis(1)
    }

    fn pause(&mut self, paused: bool) {
        if paused == self.paused || self.partitions.is_empty() {
            return;
        }
        let mut tpl = TopicPartitionList::new();
        for p in &self.partitions {
            tpl.add_partition(&self.spec.topic, p.id);
        }
        let result = if paused { self.consumer.pause(&tpl) } else { self.consumer.resume(&tpl) };
        match result {
            Ok(()) => self.paused = paused,
            Err(e) => tracing::warn!("kafka pause/resume: {e}"),
        }
    }
}

/// Collects delivery failures (after librdkafka's own retries) so the sink can report them.
#[derive(Clone, Default)]
struct DeliveryErrors(Arc<Mutex<Vec<String>>>);

impl ClientContext for DeliveryErrors {}

impl ProducerContext for DeliveryErrors {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            if let Ok(mut errors) = self.0.lock() {
                errors.push(e.to_string());
            }
        }
    }
}

/// Header carrying a record's deterministic id.
pub const ID_HEADER: &str = "tenantflow-id";

/// Writes rows as JSON to a topic, keyed by the values of `key_fields` (tenant, then window key).
/// The producer is idempotent, so its retries never duplicate a row. Each record carries a
/// deterministic id (`tenantflow-id` header: a 128-bit hash of the row and its rank among equal
/// rows): after a restore, rows produced again carry the ids they had, so readers that
/// deduplicate by id see every result exactly once.
pub struct KafkaSink {
    last_hash: u128,
    rank: u32,
    producer: BaseProducer<DeliveryErrors>,
    errors: DeliveryErrors,
    topic: String,
    json: JsonLines<Vec<u8>>,
    key_fields: Vec<usize>,
    key: String,
}

impl KafkaSink {
    pub fn open(spec: &KafkaSinkSpec, names: &[&str], key_fields: Vec<usize>) -> Result<KafkaSink, ConnectorError> {
        let bootstrap = spec.bootstrap.resolve().map_err(|e| ConnectorError::Kafka(format!("bootstrap file: {e}")))?;
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &bootstrap).set("enable.idempotence", "true").set("linger.ms", "5");
        for (k, v) in &spec.properties {
            config.set(k, v);
        }
        let errors = DeliveryErrors::default();
        let producer: BaseProducer<DeliveryErrors> =
            config.create_with_context(errors.clone()).map_err(|e| kafka_error("creating the producer", e))?;
        Ok(KafkaSink {
            last_hash: 0,
            rank: 0,
            producer,
            errors,
            topic: spec.topic.clone(),
            json: JsonLines::new(Vec::new(), names),
            key_fields,
            key: String::new(),
        })
    }
}

impl Sink for KafkaSink {
    fn write(&mut self, row: &[Value]) -> std::io::Result<()> {
        self.json.write(row)?;
        let mut payload = std::mem::take(self.json.get_mut());
        payload.pop(); // the newline
        self.key.clear();
        for (i, &f) in self.key_fields.iter().enumerate() {
            if i > 0 {
                self.key.push('|');
            }
            self.key.push_str(&row[f].to_string());
        }
        // Equal rows come out next to each other (the sink sorts each timestamp's rows), so the
        // rank among equal rows is deterministic too.
        let hash = xxhash_rust::xxh3::xxh3_128(&payload);
        self.rank = if hash == self.last_hash { self.rank + 1 } else { 0 };
        self.last_hash = hash;
        let id = format!("{hash:032x}-{}", self.rank);
        loop {
            let headers = OwnedHeaders::new().insert(Header { key: ID_HEADER, value: Some(id.as_bytes()) });
            let record = BaseRecord::to(&self.topic).key(self.key.as_bytes()).payload(&payload).headers(headers);
            match self.producer.send(record) {
                Ok(()) => break,
                // The local queue is full: deliver some, then retry.
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => self.producer.poll(Duration::from_millis(10)),
                Err((e, _)) => return Err(std::io::Error::other(format!("kafka produce to {}: {e}", self.topic))),
            }
        }
        payload.clear();
        *self.json.get_mut() = payload;
        self.producer.poll(Duration::ZERO);
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        // Waits for every delivery (librdkafka retries transient errors until message.timeout.ms).
        self.producer.flush(Duration::from_secs(60)).map_err(|e| std::io::Error::other(format!("kafka flush to {}: {e}", self.topic)))?;
        let failed = self.errors.0.lock().map(|mut e| std::mem::take(&mut *e)).unwrap_or_default();
        match failed.first() {
            Some(first) => Err(std::io::Error::other(format!("{} deliveries to {} failed, first: {first}", failed.len(), self.topic))),
            None => Ok(()),
        }
    }
}

/// A development Kafka cluster: librdkafka's mock cluster, living as long as the value.
pub struct DevCluster {
    cluster: rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
}

impl DevCluster {
    /// Starts `brokers` mock brokers on 127.0.0.1 and creates `topics` with `partitions` each.
    pub fn start(brokers: i32, topics: &[String], partitions: i32) -> Result<DevCluster, ConnectorError> {
        let cluster = rdkafka::mocking::MockCluster::new(brokers).map_err(|e| kafka_error("starting the mock cluster", e))?;
        for t in topics {
            cluster.create_topic(t, partitions, 1).map_err(|e| kafka_error(&format!("creating topic {t}"), e))?;
        }
        Ok(DevCluster { cluster })
    }

    pub fn bootstrap_servers(&self) -> String {
        self.cluster.bootstrap_servers()
    }

    /// The mock cluster, for fault injection in tests.
    pub fn mock(&self) -> &rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext> {
        &self.cluster
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tenantflow_core::job::Bootstrap;
    use tenantflow_core::{DataType, Schema};

    /// Security settings are handed through to librdkafka, which is built with TLS and SASL:
    /// creating the client accepts them (no broker here speaks TLS, so nothing connects).
    #[test]
    fn sasl_ssl_settings_are_accepted() {
        let props =
            [("security.protocol", "SASL_SSL"), ("sasl.mechanisms", "SCRAM-SHA-512"), ("sasl.username", "u"), ("sasl.password", "p")];
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", "127.0.0.1:9").set("group.id", "t");
        for (k, v) in props {
            config.set(k, v);
        }
        let consumer: Result<BaseConsumer, _> = config.create();
        assert!(consumer.is_ok(), "{:?}", consumer.err());
        let sink = KafkaSinkSpec {
            bootstrap: Bootstrap::Servers("127.0.0.1:9".into()),
            topic: "t".into(),
            properties: props.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        };
        let schema = Schema::new(vec![("tenant".into(), DataType::String)]);
        assert!(KafkaSink::open(&sink, &schema.names(), vec![0]).is_ok());
    }
}
