//! Kafka through rdkafka (librdkafka): a source of JSON records and a sink of JSON rows.
//!
//! Partitions are assigned by tenantflow, not by a consumer-group rebalance: worker `w` of `n`
//! reads the partitions `p` with `p % n == w`, so assignment is immediate and deterministic.
//! Partitions added to the topic later are picked up by the periodic metadata refresh and go to
//! the worker the same rule names.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::base_consumer::PartitionQueue;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::BorrowedMessage;
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::statistics::Statistics;
use rdkafka::ClientContext;
use rdkafka::{Offset, TopicPartitionList};
use tenantflow_core::job::{KafkaSinkSpec, KafkaSourceSpec};
use tenantflow_core::Value;

use crate::json::JsonDecoder;
use crate::sink::{DeadLetterSink, JsonLines, Sink};
use crate::source::{Batch, DeadLetter, Poll, Source};
use crate::ConnectorError;

const METADATA_TIMEOUT: Duration = Duration::from_secs(10);
const REFRESH_EVERY: Duration = Duration::from_secs(10);

fn kafka_error(context: &str, e: KafkaError) -> ConnectorError {
    ConnectorError::Kafka(format!("{context}: {e}"))
}

/// Where a consumed partition stands, from librdkafka's statistics (refreshed every
/// `statistics.interval.ms`, 1 s unless the job sets it, whenever the source polls).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PartitionPosition {
    /// The consumer group (`group_id`), which names the job's consumer.
    pub group: String,
    pub topic: String,
    pub partition: i32,
    /// Next offset to hand to tenantflow: everything before it was read by the source.
    pub consumed: i64,
    /// Next offset librdkafka will fetch from the broker.
    pub fetch_offset: i64,
    /// Bytes fetched from the broker and not yet read by the source.
    pub fetch_queue_bytes: u64,
    /// The offset last committed to the consumer group (-1001 when none).
    pub committed: i64,
    /// The partition's end (high watermark).
    pub end: i64,
    /// Paused by backpressure: librdkafka fetches nothing and drops what it had queued.
    pub paused: bool,
}

type PositionKey = (String, String, i32);

/// The positions of every Kafka source partition in this process, for metrics and tests.
static POSITIONS: Mutex<BTreeMap<PositionKey, PartitionPosition>> = Mutex::new(BTreeMap::new());

/// Every consumed partition's position, ordered by group, topic and partition.
pub fn partition_positions() -> Vec<PartitionPosition> {
    POSITIONS.lock().map(|p| p.values().cloned().collect()).unwrap_or_default()
}

fn position<'a>(
    positions: &'a mut BTreeMap<PositionKey, PartitionPosition>,
    group: &str,
    topic: &str,
    partition: i32,
) -> &'a mut PartitionPosition {
    positions.entry((group.to_string(), topic.to_string(), partition)).or_insert_with(|| PartitionPosition {
        group: group.to_string(),
        topic: topic.to_string(),
        partition,
        ..PartitionPosition::default()
    })
}

/// The consumer's context: records statistics into [`POSITIONS`].
struct PositionStats {
    group: String,
}

impl ClientContext for PositionStats {
    fn stats(&self, stats: Statistics) {
        let Ok(mut positions) = POSITIONS.lock() else { return };
        for (name, topic) in &stats.topics {
            // Partition -1 is librdkafka's internal "unassigned" queue.
            for p in topic.partitions.values().filter(|p| p.partition >= 0 && p.desired) {
                let pos = position(&mut positions, &self.group, name, p.partition);
                pos.consumed = p.app_offset;
                pos.fetch_offset = p.next_offset;
                pos.fetch_queue_bytes = p.fetchq_size;
                pos.committed = p.committed_offset;
                pos.end = p.hi_offset;
            }
        }
    }
}

impl ConsumerContext for PositionStats {}

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
    /// Largest event time seen, for the per-partition watermark (`i64::MIN` before the first).
    max_ts: i64,
    last_record: Instant,
}

impl Partition {
    fn finished(&self) -> bool {
        self.end.is_some_and(|e| self.next >= e)
    }
}

/// Reads JSON records from the partitions of one topic that belong to this worker.
///
/// Each partition has its own librdkafka queue, read in turn, so one partition cannot crowd out
/// the others, and a partition whose event time runs more than `align` ahead of the slowest
/// one is left alone until the rest catch up (Flink's watermark alignment): its queue fills
/// and librdkafka stops fetching it. Without this, a partition far behind would hold the
/// watermark back while the others were read, and buffered, without bound.
pub struct KafkaSource {
    consumer: Arc<BaseConsumer<PositionStats>>,
    spec: KafkaSourceSpec,
    decoder: JsonDecoder,
    worker: usize,
    workers: usize,
    partitions: Vec<Partition>,
    /// The partitions' own queues, by the same index (`None` where librdkafka has none).
    queues: Vec<Option<PartitionQueue<PositionStats>>>,
    /// The partition read first on the next poll, so each gets its turn.
    turn: usize,
    last_refresh: Instant,
    paused: bool,
    /// Since when backpressure holds the source back.
    held_since: Option<Instant>,
    /// Row position of the event-time field, for per-partition watermarks.
    time_pos: Option<usize>,
    idle_timeout: Option<Duration>,
    /// How far (µs of event time) a partition may run ahead of the slowest.
    align: Option<i64>,
}

/// What to do with one message: decode it into the batch (or a dead letter) and move its
/// partition on.
fn take(decoder: &mut JsonDecoder, time_pos: Option<usize>, part: &mut Partition, batch: &mut Batch, m: &BorrowedMessage<'_>) {
    let offset = m.offset();
    let origin = *part.origin.get_or_insert_with(|| batch.origin(&part.name));
    let payload = m.payload().unwrap_or_default();
    batch.bytes += payload.len() as u64;
    let row = batch.push_row(origin, offset as u64);
    match decoder.decode(payload, row) {
        Ok(()) => {
            if let Some(t) = time_pos.and_then(|p| row[p].as_i64()) {
                part.max_ts = part.max_ts.max(t);
            }
        }
        Err(reason) => {
            batch.pop_row();
            batch.push_dead(DeadLetter::new(reason, &part.name, offset as u64, payload));
        }
    }
    part.next = offset + 1;
    part.last_record = Instant::now();
}

impl KafkaSource {
    /// Opens the consumer of worker `worker` of `workers`. `align` is how far (µs of event
    /// time) one partition may read ahead of the slowest; `None` reads all alike.
    #[allow(clippy::too_many_arguments)]
    pub fn open(
        spec: &KafkaSourceSpec,
        worker: usize,
        workers: usize,
        decoder: JsonDecoder,
        time_pos: Option<usize>,
        idle_timeout: Option<Duration>,
        align: Option<i64>,
    ) -> Result<KafkaSource, ConnectorError> {
        let bootstrap = spec.bootstrap.resolve().map_err(|e| ConnectorError::Kafka(format!("bootstrap file: {e}")))?;
        let group = spec.group_id.as_deref().unwrap_or("tenantflow");
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", group)
            .set("statistics.interval.ms", "1000")
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            // Bounded read-ahead: librdkafka queues at most this much per partition while
            // the source does not read it...
            .set("queued.max.messages.kbytes", "1024")
            // ...and fetches again 10 ms after its queue was full (1 s by default, which
            // stalls a partition for that long after every wait).
            .set("fetch.queue.backoff.ms", "10");
        for (k, v) in &spec.properties {
            config.set(k, v);
        }
        let consumer: BaseConsumer<PositionStats> =
            config.create_with_context(PositionStats { group: group.to_string() }).map_err(|e| kafka_error("creating the consumer", e))?;
        let mut source = KafkaSource {
            consumer: Arc::new(consumer),
            spec: spec.clone(),
            decoder,
            worker,
            workers,
            partitions: Vec::new(),
            queues: Vec::new(),
            turn: 0,
            last_refresh: Instant::now(),
            paused: false,
            held_since: None,
            time_pos,
            idle_timeout,
            align,
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
            self.assign().map_err(ConnectorError::Kafka)?;
        }
        Ok(())
    }

    /// Assigns the partitions at their next offsets and gives each its own queue (an
    /// assignment ends the queues of the one before).
    fn assign(&mut self) -> Result<(), String> {
        let mut tpl = TopicPartitionList::new();
        for p in &self.partitions {
            tpl.add_partition_offset(&self.spec.topic, p.id, Offset::Offset(p.next)).map_err(|e| format!("assigning: {e}"))?;
        }
        self.consumer.assign(&tpl).map_err(|e| format!("assigning partitions: {e}"))?;
        self.queues = self.partitions.iter().map(|p| self.consumer.split_partition_queue(&self.spec.topic, p.id)).collect();
        if self.paused {
            self.paused = false;
            self.pause_partitions(true);
        }
        Ok(())
    }

    fn all_done(&self) -> bool {
        self.spec.bounded && self.partitions.iter().all(Partition::finished)
    }

    /// The event time below which every partition that has records to give has come: the
    /// slowest partition's largest event time, leaving out partitions that are finished
    /// (bounded runs) or idle for longer than `idle_timeout`.
    fn slowest(&self) -> Option<i64> {
        let active = self.partitions.iter().filter(|p| {
            let idle = self.idle_timeout.is_some_and(|t| p.last_record.elapsed() >= t);
            !p.finished() && !idle
        });
        active.map(|p| p.max_ts).min()
    }

    fn pause_partitions(&mut self, paused: bool) {
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
        if let Ok(mut positions) = POSITIONS.lock() {
            for p in &self.partitions {
                position(&mut positions, &self.consumer.context().group, &self.spec.topic, p.id).paused = self.paused;
            }
        }
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
        let mut n = 0;
        // The consumer's own queue serves librdkafka's events (statistics, commit results); it
        // may also hold records fetched before a partition's queue was split off.
        while n < max {
            match self.consumer.poll(Duration::ZERO) {
                None => break,
                // librdkafka retries broker errors itself; they are worth a log line, not a stop.
                Some(Err(e)) => tracing::warn!("kafka consumer: {e}"),
                Some(Ok(m)) => {
                    if let Some(part) = self.partitions.iter_mut().find(|p| p.id == m.partition()) {
                        take(&mut self.decoder, self.time_pos, part, batch, &m);
                        n += 1;
                    }
                }
            }
        }
        // Partitions that have started and run ahead of the slowest wait; a partition not yet
        // seen (`i64::MIN`) never holds the others back.
        let bound = match (self.align, self.slowest().filter(|&t| t > i64::MIN)) {
            (Some(lead), Some(slowest)) => slowest.saturating_add(lead),
            _ => i64::MAX,
        };
        let count = self.partitions.len();
        for k in 0..count {
            let i = (self.turn + k) % count;
            let part = &mut self.partitions[i];
            let Some(queue) = self.queues[i].as_ref() else { continue };
            if part.finished() || part.max_ts > bound {
                continue;
            }
            // An even share of what is left, so every partition gets read.
            let quota = n + (max - n).div_ceil(count - k);
            while n < quota && !part.finished() {
                match queue.poll(Duration::ZERO) {
                    None => break,
                    Some(Err(e)) => {
                        tracing::warn!("kafka consumer: {e}");
                        break;
                    }
                    Some(Ok(m)) => {
                        take(&mut self.decoder, self.time_pos, part, batch, &m);
                        n += 1;
                    }
                }
            }
        }
        self.turn = (self.turn + 1) % count.max(1);
        if self.all_done() {
            Poll::Done
        } else if n == 0 {
            Poll::Pending
        } else {
            Poll::Ready
        }
    }

    fn watermark_hint(&self) -> Option<i64> {
        self.slowest()
    }

    /// Each partition's next offset and largest event time.
    fn checkpoint(&self) -> Option<Vec<u8>> {
        let parts: Vec<(i32, i64, i64)> = self.partitions.iter().map(|p| (p.id, p.next, p.max_ts)).collect();
        crate::source::encode(&parts)
    }

    /// Commits a committed checkpoint's offsets to the consumer group (asynchronously), so lag
    /// tools see progress. A restore uses the checkpoint's offsets, never the group's.
    fn committed(&mut self, state: &[u8]) {
        let Ok(parts) = crate::source::decode::<Vec<(i32, i64, i64)>>(state) else { return };
        let mut tpl = TopicPartitionList::new();
        for (id, next, _) in parts {
            let _ = tpl.add_partition_offset(&self.spec.topic, id, Offset::Offset(next));
        }
        if tpl.count() > 0 {
            if let Err(e) = self.consumer.commit(&tpl, CommitMode::Async) {
                tracing::warn!("kafka offset commit: {e}");
            }
        }
    }

    fn restore(&mut self, state: &[u8]) -> Result<(), String> {
        let parts: Vec<(i32, i64, i64)> = crate::source::decode(state)?;
        for (id, next, max_ts) in parts {
            if let Some(p) = self.partitions.iter_mut().find(|p| p.id == id) {
                p.next = next;
                p.max_ts = max_ts;
            }
        }
        self.assign().map_err(|e| format!("kafka: restoring offsets: {e}"))
    }

    fn retry_after(&self) -> Duration {
        Duration::from_millis(1)
    }

    /// Held back briefly, the source just stops polling: librdkafka's per-partition queue
    /// (`queued.max.messages.kbytes`) bounds what is read ahead. Held back for longer than
    /// `pause_after` (1 s by default: a stalled sink), the partitions are paused, so nothing more is fetched and
    /// the queues are dropped. Pausing at once would drop and fetch the queues again on every
    /// short wait, which is most of them, and each resume costs a fetch round trip.
    fn pause(&mut self, hold: bool) {
        let paused = match (hold, self.held_since) {
            (false, _) => {
                self.held_since = None;
                false
            }
            (true, None) => {
                self.held_since = Some(Instant::now());
                return;
            }
            (true, Some(since)) => since.elapsed().as_micros() >= self.spec.pause_after as u128,
        };
        self.pause_partitions(paused);
    }
}

impl Drop for KafkaSource {
    fn drop(&mut self) {
        // The queues go before the consumer they hold on to.
        self.queues.clear();
        if let Ok(mut positions) = POSITIONS.lock() {
            let group = &self.consumer.context().group;
            positions.retain(|(g, t, p), _| !(g == group && *t == self.spec.topic && self.partitions.iter().any(|q| q.id == *p)));
        }
    }
}

/// Collects delivery failures (after librdkafka's own retries) so the sink can report them, and
/// the requests librdkafka retried (from its statistics, for metrics).
#[derive(Clone, Default)]
struct DeliveryErrors(Arc<Mutex<Vec<String>>>, Arc<std::sync::atomic::AtomicU64>);

impl ClientContext for DeliveryErrors {
    fn stats(&self, stats: Statistics) {
        let retries: u64 = stats.brokers.values().map(|b| b.txretries).sum();
        self.1.store(retries, std::sync::atomic::Ordering::Relaxed);
    }
}

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

/// An idempotent producer to one topic that keeps delivery failures for `flush` to report.
struct Output {
    producer: BaseProducer<DeliveryErrors>,
    errors: DeliveryErrors,
    topic: String,
}

impl Output {
    fn open(spec: &KafkaSinkSpec) -> Result<Output, ConnectorError> {
        let bootstrap = spec.bootstrap.resolve().map_err(|e| ConnectorError::Kafka(format!("bootstrap file: {e}")))?;
        let mut config = ClientConfig::new();
        // Statistics once a second give the retry count (metrics).
        config
            .set("bootstrap.servers", &bootstrap)
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .set("statistics.interval.ms", "1000");
        for (k, v) in &spec.properties {
            config.set(k, v);
        }
        let errors = DeliveryErrors::default();
        let producer = config.create_with_context(errors.clone()).map_err(|e| kafka_error("creating the producer", e))?;
        Ok(Output { producer, errors, topic: spec.topic.clone() })
    }

    fn send(&self, key: Option<&[u8]>, payload: &[u8], headers: OwnedHeaders) -> std::io::Result<()> {
        let mut record = BaseRecord::to(&self.topic).payload(payload).headers(headers);
        record.key = key;
        loop {
            match self.producer.send(record) {
                Ok(()) => break,
                // The local queue is full: deliver some, then retry.
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    self.producer.poll(Duration::from_millis(10));
                    record = r;
                }
                Err((e, _)) => return Err(std::io::Error::other(format!("kafka produce to {}: {e}", self.topic))),
            }
        }
        self.producer.poll(Duration::ZERO);
        Ok(())
    }

    /// Serves delivery reports without waiting, and reports deliveries that failed so far.
    fn poll(&self) -> std::io::Result<()> {
        self.producer.poll(Duration::ZERO);
        self.failures()
    }

    /// Waits for every delivery (librdkafka retries transient errors until message.timeout.ms)
    /// and reports those that failed.
    fn flush(&self) -> std::io::Result<()> {
        self.producer.flush(Duration::from_secs(60)).map_err(|e| std::io::Error::other(format!("kafka flush to {}: {e}", self.topic)))?;
        self.failures()
    }

    /// Produce requests librdkafka retried so far.
    fn retries(&self) -> u64 {
        self.errors.1.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn failures(&self) -> std::io::Result<()> {
        let failed = self.errors.0.lock().map(|mut e| std::mem::take(&mut *e)).unwrap_or_default();
        match failed.first() {
            Some(first) => Err(std::io::Error::other(format!("{} deliveries to {} failed, first: {first}", failed.len(), self.topic))),
            None => Ok(()),
        }
    }
}

/// Writes rows as JSON to a topic, keyed by the values of `key_fields` (tenant, then window key).
/// The producer is idempotent, so its retries never duplicate a row. Each record carries a
/// deterministic id (`tenantflow-id` header: a 128-bit hash of the row and its rank among equal
/// rows): after a restore, rows produced again carry the ids they had, so readers that
/// deduplicate by id see every result exactly once.
pub struct KafkaSink {
    /// The timestamp whose rows are being written: ids hash it with the row.
    time: u64,
    last_hash: u128,
    rank: u32,
    out: Output,
    json: JsonLines<Vec<u8>>,
    key_fields: Vec<usize>,
    key: String,
}

impl KafkaSink {
    pub fn open(spec: &KafkaSinkSpec, names: &[&str], key_fields: Vec<usize>) -> Result<KafkaSink, ConnectorError> {
        Ok(KafkaSink {
            time: 0,
            last_hash: 0,
            rank: 0,
            out: Output::open(spec)?,
            json: JsonLines::new(Vec::new(), names),
            key_fields,
            key: String::new(),
        })
    }
}

impl Sink for KafkaSink {
    fn retries(&self) -> u64 {
        self.out.retries()
    }

    fn begin_time(&mut self, t: u64) {
        self.time = t;
        self.last_hash = 0;
        self.rank = 0;
    }

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
        let hash = xxhash_rust::xxh3::xxh3_128_with_seed(&payload, self.time);
        self.rank = if hash == self.last_hash { self.rank + 1 } else { 0 };
        self.last_hash = hash;
        let id = format!("{hash:032x}-{}", self.rank);
        let headers = OwnedHeaders::new().insert(Header { key: ID_HEADER, value: Some(id.as_bytes()) });
        let sent = self.out.send(Some(self.key.as_bytes()), &payload, headers);
        payload.clear();
        *self.json.get_mut() = payload;
        sent
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.poll()
    }

    fn finish(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }

    /// Waits until every row produced so far is delivered.
    fn checkpoint(&mut self) -> std::io::Result<Option<u64>> {
        self.out.flush().map(|()| None)
    }
}

/// Dead letters to a topic: the record as read is the payload (and the tenant, when known, the
/// key); headers carry `tenantflow-error`, `tenantflow-source` (topic or file),
/// `tenantflow-partition` (Kafka only), `tenantflow-offset` (Kafka offset, or line number) and a
/// deterministic `tenantflow-id`, so a replay after a restore can be deduplicated like results.
pub struct KafkaDeadLetters {
    out: Output,
    describe: String,
}

impl KafkaDeadLetters {
    pub fn open(spec: &KafkaSinkSpec) -> Result<KafkaDeadLetters, ConnectorError> {
        Ok(KafkaDeadLetters { out: Output::open(spec)?, describe: format!("kafka topic {}", spec.topic) })
    }
}

impl DeadLetterSink for KafkaDeadLetters {
    fn write(&mut self, d: &DeadLetter) -> std::io::Result<()> {
        let (source, partition) = match d.kafka_origin() {
            Some((topic, p)) => (topic, Some(p.to_string())),
            None => (d.source.as_str(), None),
        };
        let position = d.position.to_string();
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        for part in [d.source.as_bytes(), &d.position.to_le_bytes(), d.raw.as_bytes(), d.reason.as_bytes()] {
            h.update(&(part.len() as u64).to_le_bytes());
            h.update(part);
        }
        let id = format!("{:032x}", h.digest128());
        let mut headers = OwnedHeaders::new()
            .insert(Header { key: "tenantflow-error", value: Some(d.reason.as_bytes()) })
            .insert(Header { key: "tenantflow-source", value: Some(source.as_bytes()) });
        if let Some(p) = &partition {
            headers = headers.insert(Header { key: "tenantflow-partition", value: Some(p.as_bytes()) });
        }
        headers = headers
            .insert(Header { key: "tenantflow-offset", value: Some(position.as_bytes()) })
            .insert(Header { key: ID_HEADER, value: Some(id.as_bytes()) });
        self.out.send(d.tenant.as_deref().map(str::as_bytes), d.raw.as_bytes(), headers)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.poll()
    }

    fn finish(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }

    fn checkpoint(&mut self) -> std::io::Result<u64> {
        self.out.flush().map(|()| 0)
    }

    fn resume(&mut self, _position: u64) -> std::io::Result<()> {
        Ok(())
    }

    fn describe(&self) -> &str {
        &self.describe
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
