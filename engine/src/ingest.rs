//! The ingest operator's logic: read a batch from the source, run the stateless steps, assign
//! event time and the watermark, judge lateness, and pre-aggregate into window partials.
//!
//! Reading, stateless steps and pre-aggregation are fused into one operator (as Flink chains
//! operators) so rows never cross a dataflow channel before they are reduced to partials.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tenantflow_connectors::sink::row_to_json;
use tenantflow_connectors::source::Empty;
use tenantflow_connectors::{Batch, DeadLetter, Poll, Source};
use tenantflow_core::job::LatePolicy;
use tenantflow_core::plan::Plan;
use tenantflow_core::{time, Value};
use tenantflow_operators::window::hash_key;
use tenantflow_operators::{Aggregates, PreAggregator};

use crate::stats::{Shared, TenantCounts, IDLE};
use crate::steps::Steps;
use crate::Msg;

struct WindowPart {
    pre: PreAggregator,
    aggs: Aggregates,
    /// Tenant position, then key positions.
    key_pos: Vec<usize>,
}

/// Rows read and processed at a time: small enough that the row buffer stays in cache.
const CHUNK: usize = 1024;

pub enum Status {
    /// More may be ready now.
    Ready,
    /// Nothing to read now; try again after a pause.
    Pending,
    /// The source is exhausted.
    Done,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct IngestState {
    source: Vec<u8>,
    max_ts: i64,
    watermark: i64,
    /// The source had ended: a restore must not read it again.
    finished: bool,
}

pub struct Ingest {
    source: Box<dyn Source>,
    batch: Batch,
    batch_size: usize,
    plan: Arc<Plan>,
    steps: Steps,
    /// A job without checkpoints: its scorers look for new model versions on their own.
    ckpt_free: bool,
    /// Scratch for chunks that go through a score step: each admitted row's time and watermark,
    /// and whether it passed the steps.
    admitted: Vec<(i64, i64)>,
    keep: Vec<bool>,
    window: Option<WindowPart>,
    /// Pattern jobs: the tenant's and key fields' row positions, which route each event.
    pattern_keys: Option<Vec<usize>>,
    /// Row positions of the output fields (jobs without a window).
    out_pos: Vec<usize>,
    input_names: Vec<String>,
    max_ts: i64,
    watermark: i64,
    /// The source has partitions with their own event time (Kafka): its watermark is the lowest
    /// of theirs (`Source::watermark_hint`), not the largest event time seen overall.
    per_partition: bool,
    tenants: TenantCounts,
    /// When `tenants` last went to the shared stats (µs).
    tenants_merged: i64,
    shared: Arc<Shared>,
    local: usize,
    idle_since: Option<Instant>,
    /// The source has ended (also in the run a checkpoint came from).
    finished: bool,
    /// Dead letters and late events, each with the watermark before its record: they are sent
    /// at that time, so where they fall among other timestamps depends on the input alone, not
    /// on how it was cut into batches (a restored run cuts it elsewhere).
    side: Vec<(i64, Msg)>,
}

impl Ingest {
    pub fn new(plan: Arc<Plan>, source: Box<dyn Source>, shared: Arc<Shared>, local: usize) -> Ingest {
        // The models loaded when the job started: a worker fails to load one only if the
        // machine changed under it (then it reads nothing and the job reports why).
        let (steps, failed) = match Steps::new(&plan.pre, &shared.models) {
            Ok(s) => (s, None),
            Err(e) => (Steps::default(), Some(e)),
        };
        let window = plan.window.as_ref().map(|w| WindowPart {
            pre: PreAggregator::new(w.kind),
            aggs: Aggregates::compile(&w.aggs, &plan.pre_schema),
            key_pos: std::iter::once(plan.tenant_pos).chain(w.key_pos.iter().copied()).collect(),
        });
        let mut ingest = Ingest {
            batch: Batch::new(plan.row_width),
            batch_size: plan.spec.runtime.batch_size,
            out_pos: plan.output.positions().to_vec(),
            input_names: plan.input.names().iter().map(|s| s.to_string()).collect(),
            steps,
            ckpt_free: plan.spec.checkpoint.is_none(),
            admitted: Vec::new(),
            keep: Vec::new(),
            window,
            pattern_keys: plan.pattern.as_ref().map(|p| std::iter::once(plan.tenant_pos).chain(p.key_pos.iter().copied()).collect()),
            source,
            max_ts: i64::MIN,
            watermark: i64::MIN,
            per_partition: matches!(plan.spec.source, tenantflow_core::job::SourceSpec::Kafka(_)),
            tenants: TenantCounts::default(),
            tenants_merged: 0,
            shared,
            local,
            idle_since: None,
            finished: false,
            side: Vec::new(),
            plan,
        };
        if let Some(e) = failed {
            ingest.shared.error(e);
            ingest.finish_source();
        }
        ingest
    }

    /// At checkpoint barrier `epoch`: score steps take the model versions of the next epoch.
    pub fn at_barrier(&mut self, epoch: u64) {
        self.steps.at_barrier(epoch);
    }

    /// This operator's state for a checkpoint: the source position and the watermark. (The
    /// pre-aggregator is empty between steps.) `None` when the source cannot be replayed.
    pub fn snapshot(&self) -> Option<Vec<u8>> {
        let state =
            IngestState { source: self.source.checkpoint()?, max_ts: self.max_ts, watermark: self.watermark, finished: self.finished };
        crate::checkpoint::encode(&state).ok()
    }

    pub fn restore(&mut self, bytes: &[u8]) -> Result<(), String> {
        let state: IngestState = crate::checkpoint::decode(bytes).map_err(|e| format!("bad ingest state: {e}"))?;
        if state.finished {
            self.finish_source();
        } else {
            self.source.restore(&state.source)?;
        }
        self.max_ts = state.max_ts;
        self.watermark = state.watermark;
        Ok(())
    }

    /// The source ended in an earlier run: this one reads nothing.
    pub fn finish_source(&mut self) {
        self.source = Box::new(Empty);
        self.finished = true;
    }

    /// The checkpoint holding `snapshot` (from [`Ingest::snapshot`]) is committed.
    pub fn committed(&mut self, snapshot: &[u8]) {
        if let Ok(state) = crate::checkpoint::decode::<IngestState>(snapshot) {
            self.source.committed(&state.source);
        }
    }

    /// How long to pause after `Status::Pending`.
    pub fn retry_after(&self) -> Duration {
        self.source.retry_after()
    }

    /// Backpressure: tells the source to stop (or resume) fetching ahead.
    pub fn pause(&mut self, paused: bool) {
        self.source.pause(paused);
    }

    /// The source's watermark: event time up to which it will send no more on-time events.
    pub fn watermark(&self) -> i64 {
        self.watermark
    }

    fn dead(&mut self, reason: String, row: &[Value], at: (&str, u64), tenant: Option<&Value>) {
        let names: Vec<&str> = self.input_names.iter().map(String::as_str).collect();
        let raw = row_to_json(&names, &row[..names.len()]);
        let mut d = DeadLetter::new(reason, at.0, at.1, raw.as_bytes());
        match tenant {
            Some(t) => {
                d.tenant = Some(t.to_string());
                self.tenants.get(t).dead_lettered += 1;
            }
            None => self.tenants.get(&Value::Null).dead_lettered += 1,
        }
        self.shared.dead_letters.fetch_add(1, Relaxed);
        self.side.push((self.watermark, Msg::Dead(d)));
    }

    /// Takes the dead letters and late events of the last step, with the watermark before each.
    pub fn take_side(&mut self) -> std::vec::Drain<'_, (i64, Msg)> {
        self.side.drain(..)
    }

    /// Dead letters of undecodable records read before row `row` of the chunk (all when `None`),
    /// at the watermark the rows before them left.
    fn undecodable(&mut self, row: Option<usize>) {
        let n = match row {
            Some(r) => self.batch.dead.iter().take_while(|(before, _)| *before <= r).count(),
            None => self.batch.dead.len(),
        };
        for (_, d) in self.batch.dead.drain(..n) {
            self.shared.dead_letters.fetch_add(1, Relaxed);
            self.tenants.get(&Value::Null).dead_lettered += 1;
            self.side.push((self.watermark, Msg::Dead(d)));
        }
    }

    /// Reads and processes up to `batch_size` records, appending messages to `out`.
    pub fn step(&mut self, out: &mut Vec<Msg>) -> Status {
        let now = time::now_micros();
        // Per-tenant counts reach the shared stats (and metrics) once a second.
        if now - self.tenants_merged >= TENANT_MERGE_US {
            self.shared.merge_tenants(std::mem::take(&mut self.tenants));
            self.tenants_merged = now;
        }
        let mut total = 0;
        let status = loop {
            // Small chunks keep the row buffer in cache; pre-aggregation spans the whole step.
            let (status, rows) = self.read_chunk(CHUNK.min(self.batch_size - total), now, out);
            total += rows;
            if !matches!(status, Poll::Ready) || rows == 0 || total >= self.batch_size {
                break status;
            }
        };
        if let Some(w) = self.window.as_mut() {
            for (p, rows) in w.pre.drain() {
                if let Some(tenant) = p.key.first() {
                    self.tenants.get(tenant).events_in += rows;
                }
                out.push(Msg::Partial(p));
            }
        }
        if !self.plan.event_time() {
            self.watermark = self.watermark.max(now);
        }
        match status {
            Poll::Done => {
                self.finished = true;
                self.publish(IDLE);
                Status::Done
            }
            // Anything consumed, even records that all became dead letters, is activity.
            _ if total > 0 => {
                self.idle_since = None;
                self.publish(self.watermark);
                if matches!(status, Poll::Ready) {
                    Status::Ready
                } else {
                    Status::Pending
                }
            }
            _ => {
                self.check_idle();
                Status::Pending
            }
        }
    }

    /// Reads up to `max` records and runs them through the stateless steps into the
    /// pre-aggregator (or out, without a window). Returns the source's status and the number of
    /// records consumed (rows and dead letters).
    ///
    /// Rows go one at a time through the checks, the steps and on, unless a step scores with a
    /// model: then the chunk's rows are checked first, go through the steps together (the model
    /// sees whole batches), then on.
    fn read_chunk(&mut self, max: usize, now: i64, out: &mut Vec<Msg>) -> (Poll, usize) {
        let status = self.source.poll(&mut self.batch, max);
        if self.batch.bytes > 0 {
            self.shared.bytes_in.fetch_add(std::mem::take(&mut self.batch.bytes), Relaxed);
        }
        let undecodable = self.batch.dead.len();
        let tenant_pos = self.plan.tenant_pos;
        let width = self.batch.width.max(1);
        let mut values = std::mem::take(&mut self.batch.values);
        let rows = values.len() / width;
        let mut late_dropped = 0;
        if self.steps.batched() {
            if self.ckpt_free {
                self.steps.poll();
            }
            let mut admitted = std::mem::take(&mut self.admitted);
            let mut chosen: Vec<&mut [Value]> = Vec::with_capacity(rows);
            for (i, row) in values.chunks_exact_mut(width).enumerate() {
                if !self.batch.dead.is_empty() {
                    self.undecodable(Some(i));
                }
                if let Some((ts, wm)) = self.admit(i, row, now) {
                    admitted.push((ts, wm));
                    chosen.push(row);
                }
            }
            let mut keep = std::mem::take(&mut self.keep);
            keep.clear();
            keep.resize(chosen.len(), true);
            let tenants = &mut self.tenants;
            self.steps.run(&mut chosen, &mut keep, |row| tenants.get(&row[tenant_pos]).events_in += 1);
            for ((row, &(ts, wm)), _) in chosen.iter_mut().zip(&admitted).zip(&keep).filter(|(_, k)| **k) {
                late_dropped += self.dispatch(row, ts, wm, out);
            }
            drop(chosen);
            admitted.clear();
            self.admitted = admitted;
            self.keep = keep;
        } else {
            for (i, row) in values.chunks_exact_mut(width).enumerate() {
                if !self.batch.dead.is_empty() {
                    self.undecodable(Some(i));
                }
                let Some((ts, wm)) = self.admit(i, row, now) else { continue };
                if !self.steps.apply(row) {
                    self.tenants.get(&row[tenant_pos]).events_in += 1;
                    continue;
                }
                late_dropped += self.dispatch(row, ts, wm, out);
            }
        }
        self.undecodable(None);
        values.clear();
        self.batch.values = values;
        self.batch.positions.clear();
        self.shared.events_in.fetch_add(rows as u64, Relaxed);
        if late_dropped > 0 {
            self.shared.late_dropped.fetch_add(late_dropped, Relaxed);
        }
        if self.plan.event_time() && self.per_partition {
            if let Some(h) = self.source.watermark_hint() {
                self.watermark = self.watermark.max(h.saturating_sub(self.plan.spec.time.max_out_of_orderness));
            }
        }
        (status, rows + undecodable)
    }

    /// Checks a row's tenant and event time (dead letters otherwise) and advances the watermark.
    /// Returns the row's time and the watermark before it, by which its lateness is judged.
    #[inline]
    fn admit(&mut self, i: usize, row: &mut [Value], now: i64) -> Option<(i64, i64)> {
        let (tenant_pos, event_time) = (self.plan.tenant_pos, self.plan.event_time());
        if row[tenant_pos].is_null() {
            let reason = format!("missing tenant field `{}`", self.plan.spec.schema.tenant.value);
            let (name, pos) = self.batch.position(i);
            let at = (name.to_string(), pos);
            self.dead(reason, row, (&at.0, at.1), None);
            return None;
        }
        let ts = if event_time {
            let time_pos = self.plan.time_pos.unwrap_or(0);
            match row[time_pos].as_i64() {
                Some(t) => t,
                None => {
                    let reason = format!("missing event time field `{}`", self.plan.input.fields()[time_pos].0);
                    let tenant = row[tenant_pos].clone();
                    let (name, pos) = self.batch.position(i);
                    let at = (name.to_string(), pos);
                    self.dead(reason, row, (&at.0, at.1), Some(&tenant));
                    return None;
                }
            }
        } else {
            now
        };
        if !(time::MIN_EVENT_TIME..=time::MAX_EVENT_TIME).contains(&ts) {
            let reason = format!("event time {ts} µs is out of range (years 1 to 9999)");
            let tenant = row[tenant_pos].clone();
            let (name, pos) = self.batch.position(i);
            let at = (name.to_string(), pos);
            self.dead(reason, row, (&at.0, at.1), Some(&tenant));
            return None;
        }
        // Lateness is judged against the watermark before this event, which is
        // deterministic for a given input order.
        let wm = self.watermark;
        if ts > self.max_ts {
            self.max_ts = ts;
            if event_time && !self.per_partition {
                self.watermark = self.watermark.max(ts.saturating_sub(self.plan.spec.time.max_out_of_orderness));
            }
        }
        Some((ts, wm))
    }

    /// Sends a row that passed the steps on: into the pre-aggregator (window jobs), to its key's
    /// worker (pattern jobs) or out. Returns 1 when the row was late and dropped.
    #[inline]
    fn dispatch(&mut self, row: &[Value], ts: i64, wm: i64, out: &mut Vec<Msg>) -> u64 {
        let tenant_pos = self.plan.tenant_pos;
        let (policy, lateness) = (self.plan.spec.time.late_policy, self.plan.spec.time.allowed_lateness);
        match self.window.as_mut() {
            Some(w) => {
                let min_end = if policy == LatePolicy::Update { wm.saturating_sub(lateness) } else { wm };
                let added = w.pre.add(&w.aggs, row, &w.key_pos, ts, min_end);
                // Only late rows (none added, or `update` adding to fired windows) need the check.
                if (added == 0 || policy == LatePolicy::Update) && w.pre.last_end(ts) <= wm {
                    if added > 0 {
                        self.shared.late_updates.fetch_add(1, Relaxed);
                    } else {
                        // Rows that reach a window are counted per tenant when partials are drained.
                        self.tenants.get(&row[tenant_pos]).events_in += 1;
                        return self.late(row, tenant_pos, wm);
                    }
                }
                0
            }
            None => match &self.pattern_keys {
                Some(keys) => {
                    self.tenants.get(&row[tenant_pos]).events_in += 1;
                    // A pattern takes each key's events in time order once: an event
                    // behind the watermark would come after events it precedes.
                    if self.plan.event_time() && ts < wm {
                        return self.late(row, tenant_pos, wm);
                    }
                    let hash = hash_key(keys.iter().map(|&p| &row[p]));
                    out.push(Msg::Event { hash, time: ts, row: row.to_vec() });
                    0
                }
                None => {
                    self.tenants.get(&row[tenant_pos]).events_in += 1;
                    out.push(Msg::Row(self.out_pos.iter().map(|&p| row[p].clone()).collect()));
                    0
                }
            },
        }
    }

    /// Counts a late row for its tenant and sends it to the late output, or returns 1 when it
    /// is dropped (the caller sums those).
    fn late(&mut self, row: &[Value], tenant_pos: usize, wm: i64) -> u64 {
        self.tenants.get(&row[tenant_pos]).late += 1;
        if self.plan.spec.time.late_policy == LatePolicy::SideOutput {
            self.shared.late_side_output.fetch_add(1, Relaxed);
            self.side.push((wm, Msg::Late(row[..self.input_names.len()].to_vec())));
            0
        } else {
            1
        }
    }

    fn publish(&self, wm: i64) {
        if let Some(slot) = self.shared.watermarks.get(self.local) {
            slot.store(wm, Relaxed);
        }
    }

    /// A source idle for longer than `idle_timeout` stops holding the watermark back: it
    /// advances to the lowest watermark of the active sources in this process.
    fn check_idle(&mut self) {
        let Some(timeout) = self.plan.spec.time.idle_timeout else {
            self.publish(self.watermark);
            return;
        };
        let since = *self.idle_since.get_or_insert_with(Instant::now);
        if since.elapsed() < Duration::from_micros(timeout as u64) {
            self.publish(self.watermark);
            return;
        }
        self.publish(IDLE);
        if let Some(active) = self.shared.watermark() {
            self.watermark = self.watermark.max(active);
        }
    }
}

/// How often per-tenant counts are merged into the shared stats while a job runs.
pub(crate) const TENANT_MERGE_US: i64 = 1_000_000;

impl Drop for Ingest {
    fn drop(&mut self) {
        self.shared.merge_tenants(std::mem::take(&mut self.tenants));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tenantflow_connectors::{Batch, Poll, Source};

    /// A source that never has anything to read (a quiet partition, a silent stdin).
    struct Stalled;

    impl Source for Stalled {
        fn poll(&mut self, _: &mut Batch, _: usize) -> Poll {
            Poll::Pending
        }
    }

    fn ingest(idle: &str, shared: &Arc<Shared>) -> Ingest {
        let text = format!(
            "[source]\ntype = \"stdin\"\n[schema]\ntenant = \"t\"\n[schema.fields]\nt = \"string\"\nts = \"timestamp\"\n[time]\nfield = \"ts\"\n{idle}\n"
        );
        let plan = tenantflow_core::plan::load("idle.toml", &text, &[]).expect("valid job");
        Ingest::new(Arc::new(plan), Box::new(Stalled), Arc::clone(shared), 0)
    }

    #[test]
    fn an_idle_source_follows_the_active_ones() {
        let shared = Arc::new(Shared::new(2));
        shared.watermarks[1].store(5_000_000, Relaxed);
        let mut idle = ingest("idle_timeout = \"5ms\"", &shared);
        let mut out = Vec::new();
        assert!(matches!(idle.step(&mut out), Status::Pending));
        assert_eq!(idle.watermark(), i64::MIN, "not idle yet");
        std::thread::sleep(Duration::from_millis(10));
        idle.step(&mut out);
        assert_eq!(idle.watermark(), 5_000_000);
        assert_eq!(shared.watermarks[0].load(Relaxed), IDLE);
    }

    #[test]
    fn without_idle_timeout_a_quiet_source_holds_the_watermark() {
        let shared = Arc::new(Shared::new(2));
        shared.watermarks[1].store(5_000_000, Relaxed);
        let mut quiet = ingest("", &shared);
        let mut out = Vec::new();
        quiet.step(&mut out);
        std::thread::sleep(Duration::from_millis(10));
        quiet.step(&mut out);
        assert_eq!(quiet.watermark(), i64::MIN);
        assert_ne!(shared.watermarks[0].load(Relaxed), IDLE);
    }

    /// A source that must not be read again: restoring a position into it fails.
    struct Replayable;

    impl Source for Replayable {
        fn poll(&mut self, _: &mut Batch, _: usize) -> Poll {
            Poll::Pending
        }

        fn restore(&mut self, state: &[u8]) -> Result<(), String> {
            if state.is_empty() {
                Err("no position".into())
            } else {
                Ok(())
            }
        }
    }

    /// A worker whose source had ended takes a checkpoint before it says so downstream (its
    /// first activation came after the checkpoint interval): restoring that checkpoint must
    /// leave it ended, not hand the ended source's empty position to the real source.
    #[test]
    fn an_ended_source_stays_ended_after_a_restore() {
        let shared = Arc::new(Shared::new(1));
        let mut ended = ingest("", &shared);
        ended.finish_source();
        let snapshot = ended.snapshot().expect("an ended source can be checkpointed");
        let mut restored = ingest("", &shared);
        restored.source = Box::new(Replayable);
        assert_eq!(restored.restore(&snapshot), Ok(()));
        assert!(matches!(restored.step(&mut Vec::new()), Status::Done));
    }
}
