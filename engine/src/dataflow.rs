//! The Timely dataflow of a job, built identically on every worker:
//!
//! ```text
//! Ingest (source op, per worker)  --exchange by hash(tenant, key)-->  Window (unary_frontier)
//!        --exchange to worker 0-->  Sink (unary_frontier)  --> probe
//! ```
//!
//! Timely timestamps are event-time watermarks in microseconds: a source holds a capability at
//! its watermark, so an operator's input frontier is the job's watermark and a window fires
//! when the frontier reaches its end.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::operator::source;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::{Capability, Probe};
use timely::dataflow::{ProbeHandle, Scope, Stream};
use timely::worker::Worker;

use tenantflow_connectors::kafka::KafkaDeadLetters;
use tenantflow_connectors::kafka::KafkaSink;
use tenantflow_connectors::opener::{self, Opener, Opening};
use tenantflow_connectors::sink::{file_sink, Discard, JsonLines, Table};
use tenantflow_connectors::{ConnectorError, DeadLetterSink, DeadLetterWriter, Sink, Source};
use tenantflow_core::job::{DeadLetterSpec, LatePolicy, SinkKind, SinkSpec};
use tenantflow_core::plan::Plan;
use tenantflow_core::{time, Value};
use tenantflow_operators::cep::Cep;
use tenantflow_operators::{Aggregates, WindowStore};

use crate::checkpoint::{self, Crypto, PartWriter, Restore};
use crate::ingest::{Ingest, Status};
use crate::stats::{self, Shared, TenantCounts};
use crate::steps::Steps;
use crate::{Envelope, Msg};

type Out = CapacityContainerBuilder<Vec<Envelope>>;

/// Event time (µs, signed) as a Timely timestamp: flipping the sign bit keeps the order, so
/// times before 1970 work and `i64::MIN` ("nothing yet") is Timely's minimum, 0.
pub fn to_time(t: i64) -> u64 {
    (t as u64) ^ (1 << 63)
}

pub fn from_time(t: u64) -> i64 {
    (t ^ (1 << 63)) as i64
}

/// Checkpoint settings of a run, shared by every worker of a process.
pub struct Checkpointing {
    pub root: PathBuf,
    pub interval: Duration,
    pub retain: usize,
    /// Total workers (all processes).
    pub workers: usize,
    pub job: String,
    /// The checkpoint this run continues from.
    pub restore: Option<Restore>,
    /// The run was asked to continue (`--restore`), even if no checkpoint existed yet: outputs
    /// that keep their own progress (the Redis sink's marker) keep it.
    pub restore_requested: bool,
    /// Decrypts restored part files (key from `TENANTFLOW_CHECKPOINT_KEY`).
    pub crypto: Option<Crypto>,
    /// Writes (and encrypts) this process's part files in the background.
    pub writer: PartWriter,
    /// Set to stop the job with a savepoint.
    pub stop: Option<Arc<std::sync::atomic::AtomicBool>>,
}

impl Checkpointing {
    fn first_epoch(&self) -> u64 {
        self.restore.as_ref().map_or(0, |r| r.manifest.epoch)
    }

    fn restored_part(&self, name: &str, shared: &Shared) -> Option<Vec<u8>> {
        let r = self.restore.as_ref()?;
        match r.read_part(name, self.crypto.as_ref()) {
            Ok(bytes) => Some(bytes),
            Err(e) => {
                shared.error(format!("restore: {e}"));
                None
            }
        }
    }
}

/// Builds the job's dataflow on this worker; returns the probe that tells when sinks are done.
pub fn build(
    worker: &mut Worker,
    plan: Arc<Plan>,
    source: Box<dyn Source>,
    shared: Arc<Shared>,
    local: usize,
    max_lead: u64,
    ckpt: Option<Arc<Checkpointing>>,
) -> ProbeHandle<u64> {
    let probe = ProbeHandle::new();
    let probe_for_source = probe.clone();
    worker.dataflow::<u64, _, _>(|scope| {
        let ingested = ingest(scope, Arc::clone(&plan), source, Arc::clone(&shared), local, probe_for_source, max_lead, ckpt.clone());
        let windowed = if plan.pattern.is_some() {
            pattern(ingested, Arc::clone(&plan), Arc::clone(&shared), ckpt.clone())
        } else {
            window(ingested, Arc::clone(&plan), Arc::clone(&shared), ckpt.clone())
        };
        sink(windowed, plan, shared, ckpt).probe_with(&probe);
    });
    probe
}

/// How often a source looks whether its checkpoints were committed.
const COMMIT_CHECK: Duration = Duration::from_millis(100);
/// Checkpoints a source remembers while waiting for their commit (older ones are superseded).
const MAX_UNCOMMITTED: usize = 16;

#[allow(clippy::too_many_arguments)]
fn ingest<'s>(
    scope: Scope<'s, u64>,
    plan: Arc<Plan>,
    src: Box<dyn Source>,
    shared: Arc<Shared>,
    local: usize,
    probe: ProbeHandle<u64>,
    max_lead: u64,
    ckpt: Option<Arc<Checkpointing>>,
) -> Stream<'s, u64, Vec<Envelope>> {
    let (me, peers) = (scope.index() as u32, scope.peers() as u32);
    source::<_, Out, _, _>(scope, "Ingest", move |cap, info| {
        let activator = scope.activator_for(info.address);
        let mut cap = Some(cap);
        let finished = ckpt.as_ref().and_then(|c| c.restore.as_ref()).is_some_and(|r| r.manifest.finished_sources.contains(&me));
        let mut ingest = Ingest::new(plan, src, Arc::clone(&shared), local);
        if finished {
            ingest.finish_source();
        }
        if let Some(bytes) = ckpt.as_ref().filter(|_| !finished).and_then(|c| c.restored_part(&format!("ingest-{me}"), &shared)) {
            if let Err(e) = ingest.restore(&bytes) {
                shared.error(format!("restore ingest-{me}: {e}"));
            }
            // What the source reads first must carry the timestamp it had in the run that took
            // the checkpoint (its watermark then), not the initial one: dead letters and late
            // events are written in timestamp order, so they keep their order across a restore.
            let at = to_time(ingest.watermark());
            if let Some(c) = cap.as_mut().filter(|c| at > *c.time()) {
                c.downgrade(&at);
            }
        }
        let mut epoch = ckpt.as_ref().map_or(0, |c| c.first_epoch());
        let mut next_checkpoint = ckpt.as_ref().map(|c| Instant::now() + c.interval);
        // This process's savepoint proposal, once this worker has seen a stop request.
        let mut proposal = 0;
        let mut uncommitted =
            Uncommitted { ingest, ckpt: ckpt.clone(), shared: Arc::clone(&shared), states: VecDeque::new(), checked: Instant::now() };
        let mut msgs: Vec<Envelope> = Vec::new();
        let mut held_since: Option<Instant> = None;
        move |output| {
            let _busy = Busy::new(&shared.busy_ns[stats::INGEST]);
            let Some(c) = cap.as_mut() else { return };
            uncommitted.check(false);
            let ingest = &mut uncommitted.ingest;
            // A checkpoint: record where the source is, then put a barrier behind everything it
            // sent so far, on every channel. This comes before the backpressure check: a source
            // held back must still take part, or the other sources' barriers wait for it forever.
            if let (Some(ck), Some(at)) = (ckpt.as_ref(), next_checkpoint) {
                // The epochs to start now: the next one when the interval is up; on a stop
                // request, every epoch up to the savepoint (then no more).
                let stop = ck.stop.as_ref().is_some_and(|s| s.load(SeqCst)) || shared.stop_requested();
                let upto = if stop {
                    let (mine, target) = shared.savepoint_target(epoch);
                    proposal = mine;
                    target
                } else if Instant::now() >= at {
                    shared.started_epoch.fetch_max(epoch + 1, SeqCst);
                    epoch + 1
                } else {
                    epoch
                };
                while epoch < upto {
                    epoch += 1;
                    next_checkpoint = Some(Instant::now() + ck.interval);
                    let state = ingest.snapshot();
                    match state.map(|s| ck.writer.submit(&ck.root, epoch, format!("ingest-{me}"), s.clone()).map(|()| s)) {
                        Some(Ok(s)) => {
                            if uncommitted.states.len() == MAX_UNCOMMITTED {
                                uncommitted.states.pop_front();
                            }
                            uncommitted.states.push_back((epoch, s));
                            let barriers = (0..peers).map(|to| (me, Msg::Barrier { epoch, to, finished: Vec::new(), stop: proposal }));
                            output.session(&*c).give_iterator(barriers);
                            ingest.at_barrier(epoch);
                        }
                        Some(Err(e)) => shared.error(format!("checkpoint {epoch}: writing ingest-{me}: {e}")),
                        None => shared.error("checkpoint: the source cannot be replayed".into()),
                    }
                }
            }
            // Backpressure: run at most `max_lead` of event time ahead of what sinks finished.
            let t = *c.time();
            if probe.with_frontier(|f| f.first().is_some_and(|&done| t > done.saturating_add(max_lead))) {
                ingest.pause(true);
                held_since.get_or_insert_with(Instant::now);
                activator.activate_after(Duration::from_millis(1));
                return;
            }
            ingest.pause(false);
            if let Some(since) = held_since.take() {
                shared.backpressure_us.fetch_add(since.elapsed().as_micros() as u64, Relaxed);
            }
            let mut batch = Vec::new();
            let status = if shared.end_sources.load(Relaxed) { Status::Done } else { ingest.step(&mut batch) };
            // Dead letters and late events go at the watermark before their record (never below
            // the capability): the same timestamp in every run, however the input was batched.
            let mut side = ingest.take_side().peekable();
            while let Some((wm, first)) = side.next() {
                let at = to_time(wm).max(t);
                let delayed = c.delayed(&at);
                let mut session = output.session(&delayed);
                session.give((me, first));
                while let Some((_, m)) = side.next_if(|(w, _)| to_time(*w).max(t) == at) {
                    session.give((me, m));
                }
            }
            drop(side);
            msgs.extend(batch.into_iter().map(|m| (me, m)));
            if matches!(status, Status::Done) {
                msgs.extend((0..peers).map(|to| (me, Msg::End { to })));
            }
            if !msgs.is_empty() {
                output.session(&*c).give_iterator(msgs.drain(..));
            }
            let wm = to_time(ingest.watermark());
            if wm > t {
                c.downgrade(&wm);
            }
            match status {
                Status::Ready => activator.activate(),
                Status::Pending => activator.activate_after(ingest.retry_after()),
                Status::Done => cap = None,
            }
        }
    })
}

/// The ingest logic with the source states of checkpoints not known to be committed yet
/// (oldest first). Once one is, the source publishes it (Kafka: the consumer group's offsets);
/// when the operator is dropped (stopped after a savepoint), a last look catches the savepoint.
struct Uncommitted {
    ingest: Ingest,
    ckpt: Option<Arc<Checkpointing>>,
    shared: Arc<Shared>,
    states: VecDeque<(u64, Vec<u8>)>,
    checked: Instant,
}

impl Uncommitted {
    fn check(&mut self, now: bool) {
        let Some(ck) = self.ckpt.as_ref() else { return };
        if self.states.is_empty() || !now && self.checked.elapsed() < COMMIT_CHECK {
            return;
        }
        self.checked = Instant::now();
        // Checkpoints are committed in epoch order (by worker 0 of process 0, so other processes
        // look for the manifest) and retention may have removed older ones already: the newest
        // committed epoch covers the rest.
        let committed = self.shared.committed_epoch.load(Relaxed);
        let done =
            self.states.iter().rposition(|(e, _)| committed >= *e || checkpoint::epoch_dir(&ck.root, *e).join("MANIFEST.json").exists());
        if let Some(i) = done {
            let mut done = self.states.drain(..=i);
            if let Some((_, state)) = done.next_back() {
                self.ingest.committed(&state);
            }
        }
    }
}

impl Drop for Uncommitted {
    fn drop(&mut self) {
        self.check(true);
    }
}

/// Adds the time until it is dropped to an operator's busy counter.
struct Busy<'a>(&'a std::sync::atomic::AtomicU64, Instant);

impl<'a> Busy<'a> {
    fn new(counter: &'a std::sync::atomic::AtomicU64) -> Busy<'a> {
        Busy(counter, Instant::now())
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.fetch_add(self.1.elapsed().as_nanos() as u64, Relaxed);
    }
}

fn route(m: &Envelope) -> u64 {
    match &m.1 {
        Msg::Partial(p) => p.hash,
        Msg::Event { hash, .. } => *hash,
        Msg::Barrier { to, .. } | Msg::End { to } => *to as u64,
        // Everything else goes straight to the sinks on worker 0.
        _ => 0,
    }
}

/// Barrier alignment (as in Flink): once a sender's barrier for an epoch has arrived, its later
/// messages wait until every sender's barrier has, so the snapshot holds exactly what came
/// before the barriers. Senders whose source ended count as aligned.
struct Aligner {
    arrived: Vec<bool>,
    ended: Vec<bool>,
    epoch: Option<u64>,
    finished: Vec<u32>,
    stash: VecDeque<(Capability<u64>, Envelope)>,
    /// Savepoint proposals seen (sender, proposal; 0 for an ended sender), for `Shared::vote`.
    votes: Vec<(u32, u64)>,
}

impl Aligner {
    fn new(senders: usize) -> Aligner {
        Aligner {
            arrived: vec![false; senders],
            ended: vec![false; senders],
            epoch: None,
            finished: Vec::new(),
            stash: VecDeque::new(),
            votes: Vec::new(),
        }
    }

    fn blocked(&self, from: u32) -> bool {
        self.epoch.is_some() && self.arrived.get(from as usize).copied().unwrap_or(false)
    }

    /// Takes a barrier or an end marker; returns the epoch when it completes the alignment.
    fn mark(&mut self, from: u32, msg: &Msg) -> Option<u64> {
        match msg {
            Msg::Barrier { epoch, finished, stop, .. } => {
                if *stop > 0 {
                    self.votes.push((from, *stop));
                }
                self.epoch = Some(*epoch);
                if let Some(a) = self.arrived.get_mut(from as usize) {
                    *a = true;
                }
                self.finished.extend(finished);
            }
            Msg::End { .. } => {
                self.votes.push((from, 0));
                if let Some(e) = self.ended.get_mut(from as usize) {
                    *e = true;
                }
                self.finished.push(from);
            }
            _ => return None,
        }
        let done = self.arrived.iter().zip(&self.ended).all(|(a, e)| *a || *e);
        match self.epoch {
            Some(epoch) if done => {
                self.epoch = None;
                self.arrived.fill(false);
                Some(epoch)
            }
            _ => None,
        }
    }

    /// The earliest time of a message waiting behind a barrier.
    fn stashed_min(&self) -> Option<u64> {
        self.stash.iter().map(|(cap, _)| *cap.time()).min()
    }

    fn finished(&mut self) -> Vec<u32> {
        self.finished.sort_unstable();
        self.finished.dedup();
        self.finished.clone()
    }
}

/// Feeds a message, or whatever the aligner releases, to `handle` in arrival order.
fn drive<F>(aligner: &mut Aligner, queue: &mut VecDeque<(Capability<u64>, Envelope)>, mut handle: F)
where
    F: FnMut(&Capability<u64>, u32, Msg, Option<(u64, Vec<u32>)>),
{
    while let Some((cap, (from, msg))) = queue.pop_front() {
        if aligner.blocked(from) {
            aligner.stash.push_back((cap, (from, msg)));
            continue;
        }
        if matches!(msg, Msg::Barrier { .. } | Msg::End { .. }) {
            if let Some(epoch) = aligner.mark(from, &msg) {
                let finished = aligner.finished();
                handle(&cap, from, msg, Some((epoch, finished)));
                // What waited behind the barriers goes first, in its order.
                for item in std::mem::take(&mut aligner.stash).into_iter().rev() {
                    queue.push_front(item);
                }
            }
            continue;
        }
        handle(&cap, from, msg, None);
    }
}

fn window<'s>(
    input: Stream<'s, u64, Vec<Envelope>>,
    plan: Arc<Plan>,
    shared: Arc<Shared>,
    ckpt: Option<Arc<Checkpointing>>,
) -> Stream<'s, u64, Vec<Envelope>> {
    let (me, peers) = (input.scope().index() as u32, input.scope().peers());
    input.unary_frontier::<Out, _, _, _>(Exchange::new(route), "Window", move |initial, _info| {
        let w = plan.window.clone();
        // Fired windows are kept for late updates only under the `update` policy.
        let lateness = if plan.spec.time.late_policy == LatePolicy::Update { plan.spec.time.allowed_lateness } else { 0 };
        let mut store = w.as_ref().map(|w| WindowStore::new(w.kind, lateness));
        let aggs = w.as_ref().map(|w| Aggregates::compile(&w.aggs, &plan.pre_schema));
        let mut post = post_steps(&plan, &shared);
        let mut fired_rows: Vec<(i64, Vec<Value>)> = Vec::new();
        let out_pos: Vec<usize> = plan.output.positions().to_vec();
        let out_width = plan.out_width;
        let mut caps: BTreeMap<i64, Capability<u64>> = BTreeMap::new();
        // A restored store needs capabilities for the results it still owes.
        if let (Some(store), Some(bytes)) = (store.as_mut(), ckpt.as_ref().and_then(|c| c.restored_part(&format!("window-{me}"), &shared)))
        {
            match checkpoint::decode::<(tenantflow_operators::window::StoreSnapshot, _)>(&bytes) {
                Ok((snapshot, baselines)) => {
                    for at in store.restore(snapshot) {
                        caps.insert(at, initial.delayed(&to_time(at)));
                    }
                    if let Err(e) = post.restore(baselines) {
                        shared.error(format!("restore window-{me}: {e}"));
                    }
                }
                Err(e) => shared.error(format!("restore window-{me}: {e}")),
            }
        }
        drop(initial);
        let mut aligner = Aligner::new(peers);
        let mut queue = VecDeque::new();
        let mut last_part_len = 0;
        let mut emit_delay = stats::latency_histogram();
        move |(input, frontier), output| {
            let _busy = Busy::new(&shared.busy_ns[stats::WINDOW]);
            // Arrival order matters for alignment: `for_each`, not `for_each_stamp`.
            input.for_each(|cap, data| {
                let Some(cap) = cap.retain_least(0) else { return };
                queue.extend(data.drain(..).map(|m| (cap.clone(), m)));
            });
            drive(&mut aligner, &mut queue, |cap, _from, msg, barrier| {
                if let Some((epoch, finished)) = barrier {
                    post.at_barrier(epoch);
                    if let Some(ck) = ckpt.as_ref() {
                        // The windows, and the baselines of the anomaly steps after them.
                        match store.as_ref() {
                            Some(s) => write_keyed_part(ck, epoch, me, &mut last_part_len, &(s.snapshot_ref(), post.snapshot()), &shared),
                            None => write_keyed_part(ck, epoch, me, &mut last_part_len, &(), &shared),
                        }
                    }
                    output.session(cap).give((me, Msg::Barrier { epoch, to: 0, finished, stop: 0 }));
                    return;
                }
                match (msg, store.as_mut()) {
                    (Msg::Partial(p), Some(store)) => {
                        let at = store.insert(p, from_time(*cap.time()));
                        caps.entry(at).or_insert_with(|| cap.delayed(&to_time(at)));
                    }
                    (other, _) => output.session(cap).give((me, other)),
                }
            });
            // Every worker's barriers reach every window operator: this is where a process
            // learns of a stop request another process had, and of everyone's proposal.
            for (from, proposal) in aligner.votes.drain(..) {
                shared.vote(from, proposal, peers);
            }
            let (Some(store), Some(aggs)) = (store.as_mut(), aggs.as_ref()) else { return };
            // Messages waiting behind a barrier count as not yet arrived: Timely's frontier has
            // moved past them, but their partials are not merged, so no window they touch fires.
            let upto =
                frontier.frontier().first().map_or(i64::MAX, |&f| from_time(f)).min(aligner.stashed_min().map_or(i64::MAX, from_time));
            if store.next_timer().is_none_or(|t| t > upto) {
                return;
            }
            let mut fired = 0;
            let now = time::now_micros();
            store.fire(upto, |at, f| {
                let _ = emit_delay.record(now.saturating_sub(f.end).max(1) as u64);
                // `insert` (or a restore) made a capability for every time `fire` can emit at.
                if !caps.contains_key(&at) {
                    debug_assert!(false, "no capability for window output at {at}");
                    return;
                }
                let mut row: Vec<Value> = Vec::with_capacity(out_width);
                row.extend(f.key.iter().cloned());
                row.push(Value::Ts(f.start));
                row.push(Value::Ts(f.end));
                aggs.finish(f.accs, &mut row);
                row.resize(out_width, Value::Null);
                fired += 1;
                fired_rows.push((at, row));
            });
            if ckpt.is_none() {
                post.poll();
            }
            run_post(&mut post, &mut fired_rows, &out_pos, |at, row| {
                if let Some(cap) = caps.get(&at) {
                    output.session(cap).give((me, Msg::Row(row)));
                }
            });
            shared.windows_fired.fetch_add(fired, Relaxed);
            stats::merge_histogram(&shared.emit_delay, &mut emit_delay);
            // Capabilities at or before `upto` have done their work.
            caps.retain(|&at, _| at > upto);
        }
    })
}

/// The steps after the window or pattern, with the job's models.
fn post_steps(plan: &Plan, shared: &Shared) -> Steps {
    Steps::new(&plan.post, &shared.models).unwrap_or_else(|e| {
        shared.error(e);
        Steps::default()
    })
}

/// Runs the steps after the window or pattern over the rows one activation produced (together,
/// so a score step sees them as batches), then hands each surviving row, projected to the
/// output fields, to `emit` with the time it was produced at.
fn run_post(post: &mut Steps, rows: &mut Vec<(i64, Vec<Value>)>, out_pos: &[usize], mut emit: impl FnMut(i64, Vec<Value>)) {
    if rows.is_empty() {
        return;
    }
    let mut keep = vec![true; rows.len()];
    let mut refs: Vec<&mut [Value]> = rows.iter_mut().map(|(_, r)| r.as_mut_slice()).collect();
    post.run(&mut refs, &mut keep, |_| {});
    drop(refs);
    for ((at, mut row), k) in rows.drain(..).zip(keep) {
        if k {
            emit(at, out_pos.iter().map(|&p| std::mem::take(&mut row[p])).collect());
        }
    }
}

/// Writes the keyed stage's part of checkpoint `epoch` (`window-<worker>`, windows or pattern
/// state): serialized straight from the store (no copy of it), sized like the last one, written
/// and fsynced by the process's part writer.
fn write_keyed_part<S: serde::Serialize>(ck: &Checkpointing, epoch: u64, me: u32, last_len: &mut usize, state: &S, shared: &Shared) {
    let mut bytes = ck.writer.buffer();
    bytes.reserve(*last_len + *last_len / 8);
    let encoded = checkpoint::encode_into(&mut bytes, state);
    *last_len = bytes.len();
    let written = encoded.and_then(|()| ck.writer.submit(&ck.root, epoch, format!("window-{me}"), bytes));
    if let Err(e) = written {
        shared.error(format!("checkpoint {epoch}: writing window-{me}: {e}"));
    }
}

/// The pattern operator: events of each key, in event-time order once the watermark passes
/// them, through the pattern's automaton (`operators::cep`); matches (and timeouts) pass the
/// steps after the pattern and the final projection.
fn pattern<'s>(
    input: Stream<'s, u64, Vec<Envelope>>,
    plan: Arc<Plan>,
    shared: Arc<Shared>,
    ckpt: Option<Arc<Checkpointing>>,
) -> Stream<'s, u64, Vec<Envelope>> {
    let (me, peers) = (input.scope().index() as u32, input.scope().peers());
    input.unary_frontier::<Out, _, _, _>(Exchange::new(route), "Pattern", move |initial, _info| {
        let Some(pp) = plan.pattern.as_ref() else { unreachable!("pattern operator without a pattern") };
        let mut cep = Cep::new(pp, plan.tenant_pos);
        let mut post = post_steps(&plan, &shared);
        let mut matched: Vec<(i64, Vec<Value>)> = Vec::new();
        let out_pos: Vec<usize> = plan.output.positions().to_vec();
        let out_width = plan.out_width;
        // One capability, at or before every time the store may still emit at.
        let mut held: Option<Capability<u64>> = None;
        // The keyed stage's part: `window-<worker>` whether it holds windows or a pattern.
        if let Some(bytes) = ckpt.as_ref().and_then(|c| c.restored_part(&format!("window-{me}"), &shared)) {
            match checkpoint::decode(&bytes) {
                Ok(snapshot) => held = cep.restore(snapshot).map(|t| initial.delayed(&to_time(t))),
                Err(e) => shared.error(format!("restore window-{me} (pattern state): {e}")),
            }
        }
        drop(initial);
        let mut aligner = Aligner::new(peers);
        let mut queue = VecDeque::new();
        let mut last_part_len = 0;
        let mut counted = (cep.counts, 0usize);
        move |(input, frontier), output| {
            let _busy = Busy::new(&shared.busy_ns[stats::WINDOW]);
            input.for_each(|cap, data| {
                let Some(cap) = cap.retain_least(0) else { return };
                queue.extend(data.drain(..).map(|m| (cap.clone(), m)));
            });
            drive(&mut aligner, &mut queue, |cap, _from, msg, barrier| {
                if let Some((epoch, finished)) = barrier {
                    post.at_barrier(epoch);
                    if let Some(ck) = ckpt.as_ref() {
                        write_keyed_part(ck, epoch, me, &mut last_part_len, &cep.snapshot_ref(), &shared);
                    }
                    output.session(cap).give((me, Msg::Barrier { epoch, to: 0, finished, stop: 0 }));
                    return;
                }
                match msg {
                    Msg::Event { time, row, .. } => {
                        // Sent at a watermark no later than its own time (later ones are late).
                        if held.as_ref().is_none_or(|h| h.time() > cap.time()) {
                            held = Some(cap.clone());
                        }
                        cep.insert(time, row);
                    }
                    other => output.session(cap).give((me, other)),
                }
            });
            for (from, proposal) in aligner.votes.drain(..) {
                shared.vote(from, proposal, peers);
            }
            let upto =
                frontier.frontier().first().map_or(i64::MAX, |&f| from_time(f)).min(aligner.stashed_min().map_or(i64::MAX, from_time));
            let due = cep.next_time().is_some_and(|t| t < upto || upto == i64::MAX);
            if let (true, Some(cap)) = (due, held.as_ref()) {
                cep.advance(upto, &mut |at, mut row| {
                    row.resize(out_width, Value::Null);
                    matched.push((at, row));
                });
                if ckpt.is_none() {
                    post.poll();
                }
                run_post(&mut post, &mut matched, &out_pos, |at, row| {
                    let at = to_time(at).max(*cap.time());
                    output.session(&cap.delayed(&at)).give((me, Msg::Row(row)));
                });
            }
            let c = cep.counts;
            shared.pattern_matches.fetch_add(c.matches - counted.0.matches, Relaxed);
            shared.pattern_timeouts.fetch_add(c.timeouts - counted.0.timeouts, Relaxed);
            shared.partial_matches_dropped.fetch_add(c.dropped - counted.0.dropped, Relaxed);
            let partials = cep.partial_matches();
            shared.partial_matches.fetch_add(partials as i64 - counted.1 as i64, Relaxed);
            counted = (c, partials);
            match cep.next_time() {
                Some(t) => {
                    if let Some(h) = held.as_mut() {
                        if to_time(t) > *h.time() {
                            h.downgrade(&to_time(t));
                        }
                    }
                }
                None => held = None,
            }
        }
    })
}

/// A sink as worker 0 holds it: written to once open.
type BoxedSink = Box<dyn Sink + Send>;

/// Opens one `[[sinks]]` entry; `resume` is its output length in the checkpoint restored. A
/// service that cannot be reached yet leaves the sink waiting (retried in the background).
fn open_sink(plan: &Plan, spec: &SinkSpec, resume: Option<u64>, restore_requested: bool) -> Opening<BoxedSink> {
    // Results come at the same timestamps in every run only for event-time windows without
    // late updates, and patterns; only then may the Redis sink skip what its marker says was
    // written.
    let keyed = plan.window.is_some() || plan.pattern.is_some();
    let deterministic = keyed && plan.event_time() && plan.spec.time.late_policy != LatePolicy::Update;
    let names: Vec<String> = plan.output.names().iter().map(|n| n.to_string()).collect();
    let fields = plan.output.fields().to_vec();
    let tenant = names.iter().position(|n| *n == plan.spec.schema.tenant.value);
    let id = spec.id.clone();
    let named = move |e: ConnectorError| match e {
        ConnectorError::Unavailable(m) => ConnectorError::Unavailable(format!("sink `{id}`: {m}")),
        e => ConnectorError::Sink(format!("sink `{id}`: {e}")),
    };
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    match &spec.kind {
        SinkKind::Stdout { json: false } => Opening::Open(Box::new(Table::new(std::io::stdout(), &fields))),
        SinkKind::Stdout { json: true } => Opening::Open(Box::new(JsonLines::new(std::io::stdout(), &name_refs))),
        SinkKind::Discard { delay_per_row } => Opening::Open(Box::new(Discard::new(*delay_per_row))),
        SinkKind::File { path } => match file_sink(path, &name_refs, resume) {
            Ok(s) => Opening::Open(Box::new(s)),
            Err(e) => Opening::Failed(named(ConnectorError::Io { path: path.clone(), source: e })),
        },
        SinkKind::Kafka(k) => {
            // Keyed by tenant and the window's key fields, as far as the output keeps them.
            let key_names = std::iter::once(plan.spec.schema.tenant.value.as_str()).chain(window_keys(plan));
            let key_fields = key_names.filter_map(|n| names.iter().position(|m| m == n)).collect();
            match KafkaSink::open(k, &name_refs, key_fields) {
                Ok(s) => Opening::Open(Box::new(s)),
                Err(e) => Opening::Failed(named(e)),
            }
        }
        SinkKind::ClickHouse(c) => {
            let c = c.clone();
            opener::open(move || {
                tenantflow_connectors::clickhouse::ClickHouseSink::open(&c, &fields, tenant)
                    .map(|s| Box::new(s) as BoxedSink)
                    .map_err(&named)
            })
        }
        SinkKind::Redis(r) => {
            let r = r.clone();
            let (job, id) = (plan.spec.name.clone(), spec.id.clone());
            let continue_output = restore_requested && deterministic;
            opener::open(move || {
                tenantflow_connectors::redis::RedisSink::open(&r, &fields, &job, &id, continue_output)
                    .map(|s| Box::new(s) as BoxedSink)
                    .map_err(&named)
            })
        }
    }
}

/// One `[[sinks]]` entry on worker 0, by its stable id.
struct SinkSlot {
    id: String,
    state: SlotState,
}

enum SlotState {
    Open(BoxedSink),
    /// Its service cannot be reached yet: rows wait (and the sources with them).
    Waiting(Opener<BoxedSink>),
    /// Refused for good; the job has failed.
    Failed,
}

fn window_keys(plan: &Plan) -> impl Iterator<Item = &str> {
    plan.key_names().into_iter()
}

/// Worker 0's sink state in a checkpoint: rows waiting for their timestamp, and how far each
/// rollback-able output had been written, by sink id.
#[derive(serde::Serialize, serde::Deserialize)]
struct SinkSnapshot {
    pending: Vec<(u64, Vec<Msg>)>,
    sinks: Vec<(String, Option<u64>)>,
    dead_letters: u64,
    late: Option<u64>,
    alerts: crate::alerting::RulesSnapshot,
}

/// How long the sink writes before it lets the worker's other operators run.
const SINK_SLICE: Duration = Duration::from_millis(20);
/// How often the sink looks at a batch waiting for its `batch_interval` while no rows come.
const SINK_FLUSH_CHECK: Duration = Duration::from_millis(20);
/// How often the sink looks whether a waiting sink has opened.
const OPEN_CHECK: Duration = Duration::from_millis(50);

fn sink<'s>(
    input: Stream<'s, u64, Vec<Envelope>>,
    plan: Arc<Plan>,
    shared: Arc<Shared>,
    ckpt: Option<Arc<Checkpointing>>,
) -> Stream<'s, u64, Vec<()>> {
    let (me, peers) = (input.scope().index(), input.scope().peers());
    let scope = input.scope();
    input.unary_frontier::<CapacityContainerBuilder<Vec<()>>, _, _, _>(Exchange::new(|_: &Envelope| 0), "Sink", move |initial, info| {
        let activator = scope.activator_for(info.address);
        // A capability per timestamp with rows not yet written: the sink's output frontier, which
        // the probe reports as "done" (backpressure, the end of the job), is what is written.
        let mut held: BTreeMap<u64, Capability<u64>> = BTreeMap::new();
        let tenant_out = plan.output.lookup(&plan.spec.schema.tenant.value).map(|(p, _)| p);
        let tenant_out = tenant_out.and_then(|p| plan.output.positions().iter().position(|&q| q == p));
        let mut pending: BTreeMap<u64, Vec<Msg>> = BTreeMap::new();
        // Only worker 0 writes; it opens its outputs up front (cut back to the checkpoint when
        // restoring, so rows written after it are written again exactly once).
        let mut state: Option<SinkState> = None;
        if me == 0 {
            let restored = ckpt.as_ref().and_then(|c| c.restored_part("sink-0", &shared)).and_then(|bytes| {
                checkpoint::decode::<SinkSnapshot>(&bytes).map_err(|e| shared.error(format!("restore sink-0: {e}"))).ok()
            });
            let restore_requested = ckpt.as_ref().is_some_and(|c| c.restore_requested);
            let mut st = SinkState::new(&plan, &shared, restored.as_ref(), restore_requested);
            if let Some(snap) = restored {
                pending.extend(snap.pending);
                held.extend(pending.keys().map(|&t| (t, initial.delayed(&t))));
                if let Err(e) = st.dead.resume(snap.dead_letters) {
                    shared.error(format!("restore dead letters: {e}"));
                }
            }
            state = Some(st);
        }
        let mut aligner = Aligner::new(peers);
        let mut queue = VecDeque::new();
        let mut write_latency = stats::latency_histogram();
        move |(input, frontier), _output| {
            let _busy = Busy::new(&shared.busy_ns[stats::SINK]);
            input.for_each(|cap, data| {
                let Some(cap) = cap.retain_least(0) else { return };
                queue.extend(data.drain(..).map(|m| (cap.clone(), m)));
            });
            drive(&mut aligner, &mut queue, |cap, _from, msg, barrier| match barrier {
                Some((epoch, finished)) => {
                    if let (Some(ck), Some(st)) = (ckpt.as_ref(), state.as_mut()) {
                        if let Err(e) = st.checkpoint(ck, epoch, finished, &pending) {
                            shared.error(format!("checkpoint {epoch}: {e}"));
                        }
                    }
                }
                None => {
                    held.entry(*cap.time()).or_insert_with(|| cap.clone());
                    pending.entry(*cap.time()).or_default().push(msg);
                }
            });
            // As for windows: a timestamp is complete only when nothing of it waits behind a barrier.
            aligner.votes.clear();
            // Timestamps are totally ordered: what is ready lies below the frontier's one element
            // (and below anything stashed), a prefix of `pending` (pattern jobs keep many).
            let stashed = aligner.stashed_min().unwrap_or(u64::MAX);
            let ready: Vec<u64> = match frontier.frontier().first() {
                Some(&f) => pending.range(..f.min(stashed)).map(|(t, _)| *t).collect(),
                None => pending.keys().copied().filter(|t| *t < stashed || stashed == u64::MAX).collect(),
            };
            let Some(st) = state.as_mut() else { return };
            // A sink still waiting for its service holds every row back (and, through the
            // probe, the sources): rows are written to all sinks or to none.
            if !st.open_waiting(&shared) {
                activator.activate_after(OPEN_CHECK);
                return;
            }
            if !ready.is_empty() {
                let started = Instant::now();
                for t in ready {
                    // A slow sink yields now and then, so the worker's other operators (and their
                    // checkpoint barriers) keep running; the rest is written at the next activation.
                    if started.elapsed() >= SINK_SLICE {
                        activator.activate();
                        break;
                    }
                    let Some(msgs) = pending.remove(&t) else { continue };
                    st.write_time(Some(t), msgs, tenant_out, &shared);
                    held.remove(&t);
                }
                st.flush(&shared);
                let _ = write_latency.record(started.elapsed().as_micros().max(1) as u64);
                stats::merge_histogram(&shared.sink_write, &mut write_latency);
            } else if st.pending() {
                st.flush(&shared);
            }
            // A batch waiting for its age goes out even if no more rows come.
            if st.pending() {
                activator.activate_after(SINK_FLUSH_CHECK);
            }
            // Checkpoints whose parts are still being written are committed later.
            if let Some(ck) = ckpt.as_ref() {
                if st.commit_ready(ck) {
                    activator.activate_after(Duration::from_millis(10));
                }
            }
            // All input is in: wait until every output has received it, and report what failed.
            if frontier.frontier().is_empty() && pending.is_empty() {
                if let Some(ck) = ckpt.as_ref() {
                    ck.writer.flush();
                    st.commit_ready(ck);
                }
                st.finish(&shared);
                state = None;
            }
        }
    })
}

fn open_dead_letters(plan: &Plan, shared: &Shared) -> Box<dyn DeadLetterSink> {
    match &plan.spec.dead_letter {
        DeadLetterSpec::File { path } => Box::new(DeadLetterWriter::new(path)),
        DeadLetterSpec::Kafka(spec) => match KafkaDeadLetters::open(spec) {
            Ok(k) => Box::new(k),
            Err(e) => {
                // The error stops the job; until then dead letters go to the default file.
                shared.error(format!("dead-letter topic {}: {e}", spec.topic));
                Box::new(DeadLetterWriter::new(&format!("{}.dead-letters.jsonl", plan.spec.name)))
            }
        },
    }
}

/// Worker 0's writers.
struct SinkState {
    sinks: Vec<SinkSlot>,
    dead: Box<dyn DeadLetterSink>,
    late: Option<Box<dyn Sink>>,
    tenants: TenantCounts,
    /// When `tenants` last went to the shared stats (µs).
    tenants_merged: i64,
    shared: Arc<Shared>,
    failed: bool,
    /// Checkpoints aligned here whose parts are not all written yet, oldest first.
    to_commit: VecDeque<checkpoint::Manifest>,
    /// The job's alert rules and manager.
    alerts: Option<crate::alerting::AlertRules>,
    /// When the alert manager's counters last went to the shared stats (µs).
    alerts_reported: i64,
}

impl SinkState {
    fn new(plan: &Plan, shared: &Arc<Shared>, restored: Option<&SinkSnapshot>, restore_requested: bool) -> SinkState {
        let late = plan.spec.time.late_output.as_ref().filter(|_| plan.spec.time.late_policy == LatePolicy::SideOutput).and_then(|path| {
            let names = plan.input.names();
            match file_sink(path, &names, restored.and_then(|r| r.late)) {
                Ok(s) => Some(Box::new(s) as Box<dyn Sink>),
                Err(e) => {
                    shared.error(format!("late output: {e}"));
                    None
                }
            }
        });
        let alerts = match crate::alerting::AlertRules::open(plan, restored.map(|r| &r.alerts)) {
            Ok(a) => a,
            Err(e) => {
                shared.error(format!("alerting: {e}"));
                None
            }
        };
        let mut failed = false;
        let sinks = plan
            .spec
            .sinks
            .iter()
            .map(|spec| {
                // Restores of checkpoints whose sinks differ are refused before the job starts.
                let resume = restored.and_then(|r| r.sinks.iter().find(|(id, _)| *id == spec.id)).and_then(|(_, p)| *p);
                let state = match open_sink(plan, spec, resume, restore_requested) {
                    Opening::Open(s) => SlotState::Open(s),
                    Opening::Waiting(o) => {
                        tracing::warn!(sink = %spec.id, "waiting for the sink's service: {}", o.reason());
                        SlotState::Waiting(o)
                    }
                    Opening::Failed(e) => {
                        shared.error(e.to_string());
                        failed = true;
                        SlotState::Failed
                    }
                };
                SinkSlot { id: spec.id.clone(), state }
            })
            .collect();
        SinkState {
            alerts,
            alerts_reported: 0,
            sinks,
            dead: open_dead_letters(plan, shared),
            late,
            tenants: TenantCounts::default(),
            tenants_merged: 0,
            shared: Arc::clone(shared),
            failed,
            to_commit: VecDeque::new(),
        }
    }

    /// The open sinks.
    fn open(&mut self) -> impl Iterator<Item = &mut BoxedSink> {
        self.sinks.iter_mut().filter_map(|s| match &mut s.state {
            SlotState::Open(sink) => Some(sink),
            _ => None,
        })
    }

    /// Takes the sinks that opened since the last look; true when none is waiting any more.
    /// Publishes what still waits (job status, progress line).
    fn open_waiting(&mut self, shared: &Shared) -> bool {
        if !self.sinks.iter().any(|s| matches!(s.state, SlotState::Waiting(_))) {
            return true;
        }
        let mut waiting = Vec::new();
        for slot in &mut self.sinks {
            let SlotState::Waiting(opener) = &slot.state else { continue };
            match opener.poll() {
                None => waiting.push(opener.reason()),
                Some(Ok(sink)) => {
                    tracing::info!(sink = %slot.id, "sink open");
                    slot.state = SlotState::Open(sink);
                }
                Some(Err(e)) => {
                    shared.error(e.to_string());
                    self.failed = true;
                    slot.state = SlotState::Failed;
                }
            }
        }
        let none = waiting.is_empty();
        if let Ok(mut w) = shared.sinks_waiting.lock() {
            *w = waiting;
        }
        none
    }

    /// Writes everything of one timestamp in a deterministic order, so output files do not
    /// depend on the number of workers or on thread scheduling.
    fn write_time(&mut self, msgs_time: Option<u64>, msgs: Vec<Msg>, tenant_out: Option<usize>, shared: &Shared) {
        let now = time::now_micros();
        if now - self.tenants_merged >= crate::ingest::TENANT_MERGE_US {
            self.shared.merge_tenants(std::mem::take(&mut self.tenants));
            self.tenants_merged = now;
        }
        let mut rows = Vec::new();
        let mut dead = Vec::new();
        let mut late = Vec::new();
        for m in msgs {
            match m {
                Msg::Row(r) => rows.push(r),
                Msg::Dead(d) => dead.push(d),
                Msg::Late(r) => late.push(r),
                Msg::Partial(_) | Msg::Event { .. } | Msg::Barrier { .. } | Msg::End { .. } => {}
            }
        }
        rows.sort_unstable();
        if let Some(t) = msgs_time {
            for s in self.open() {
                s.begin_time(t);
            }
        }
        dead.sort_by(|a, b| (&a.source, a.position, &a.raw).cmp(&(&b.source, b.position, &b.raw)));
        late.sort_unstable();
        shared.rows_out.fetch_add(rows.len() as u64, Relaxed);
        for r in &rows {
            if let Some(a) = self.alerts.as_mut() {
                a.eval(r);
            }
            match tenant_out {
                Some(p) => self.tenants.get(&r[p]).events_out += 1,
                None => self.tenants.get(&Value::Null).events_out += 1,
            }
            if self.failed {
                continue;
            }
            for slot in &mut self.sinks {
                if let SlotState::Open(s) = &mut slot.state {
                    if let Err(e) = s.write(r) {
                        shared.error(format!("sink `{}`: write failed: {e}", slot.id));
                        self.failed = true;
                    }
                }
            }
        }
        for d in &dead {
            if let Err(e) = self.dead.write(d) {
                shared.error(format!("dead-letter write to {} failed: {e}", self.dead.describe()));
                self.failed = true;
            }
        }
        if let Some(l) = self.late.as_mut() {
            for r in &late {
                if let Err(e) = l.write(r) {
                    shared.error(format!("late output write failed: {e}"));
                    self.failed = true;
                }
            }
        }
    }

    /// Completes checkpoint `epoch`: makes the outputs durable, writes this state, and commits
    /// the checkpoint with its manifest (every other part was written before its barrier left).
    fn checkpoint(&mut self, ck: &Checkpointing, epoch: u64, finished: Vec<u32>, pending: &BTreeMap<u64, Vec<Msg>>) -> std::io::Result<()> {
        // Rows skipped after a failed write are in no output: a checkpoint would lose them.
        if self.failed {
            return Err(std::io::Error::other("an output failed; no checkpoint is taken"));
        }
        // After any error (a source that could not open, say) the run's output may be
        // incomplete: a restore must go back to before it.
        if self.shared.has_errors() {
            tracing::warn!(epoch, "checkpoint not taken: the job has failed");
            return Ok(());
        }
        // A sink that is not open has received nothing yet: its rows wait in `pending`, and
        // committing now would let a restore take that sink's progress for granted.
        if let Some(slot) = self.sinks.iter().find(|s| !matches!(s.state, SlotState::Open(_))) {
            tracing::warn!(epoch, sink = %slot.id, "checkpoint not taken: the sink is not open yet");
            return Ok(());
        }
        let mut sinks = Vec::with_capacity(self.sinks.len());
        for slot in &mut self.sinks {
            if let SlotState::Open(s) = &mut slot.state {
                sinks.push((slot.id.clone(), s.checkpoint()?));
            }
        }
        let late = match self.late.as_mut() {
            Some(l) => l.checkpoint()?,
            None => None,
        };
        let snapshot = SinkSnapshot {
            pending: pending.iter().map(|(t, m)| (*t, m.clone())).collect(),
            sinks,
            dead_letters: self.dead.checkpoint()?,
            late,
            alerts: self.alerts.as_ref().map(|a| a.snapshot()).unwrap_or_default(),
        };
        let bytes = checkpoint::encode(&snapshot)?;
        ck.writer.submit(&ck.root, epoch, "sink-0".into(), bytes)?;
        let mut parts: Vec<String> = (0..ck.workers as u32).filter(|w| !finished.contains(w)).map(|w| format!("ingest-{w}")).collect();
        parts.extend((0..ck.workers).map(|w| format!("window-{w}")));
        parts.push("sink-0".into());
        let manifest = checkpoint::Manifest {
            format_version: checkpoint::FORMAT_VERSION,
            job: ck.job.clone(),
            epoch,
            workers: ck.workers,
            finished_sources: finished,
            parts,
            created_unix_ms: time::now_micros() / 1000,
            sinks: self.sinks.iter().map(|s| s.id.clone()).collect(),
            models: self
                .shared
                .models
                .iter()
                .map(|m| (m.state_id().to_string(), m.take_decision(epoch).unwrap_or_else(|| m.current())))
                .collect(),
        };
        self.to_commit.push_back(manifest);
        Ok(())
    }

    /// Commits, in order, the aligned checkpoints whose parts are all written; returns whether
    /// some still wait for theirs.
    fn commit_ready(&mut self, ck: &Checkpointing) -> bool {
        while let Some(manifest) = self.to_commit.front() {
            if !checkpoint::parts_written(&ck.root, manifest.epoch, &manifest.parts) {
                return true;
            }
            let epoch = manifest.epoch;
            let committed = checkpoint::commit(&ck.root, manifest, ck.retain);
            self.to_commit.pop_front();
            if let Err(e) = committed {
                // Not committed: nothing may treat it as a restore point (or a savepoint).
                self.shared.error(format!("checkpoint {epoch}: commit: {e}"));
                continue;
            }
            let (bytes, age) = checkpoint::size_and_age(&checkpoint::epoch_dir(&ck.root, epoch));
            self.shared.checkpoints.fetch_add(1, Relaxed);
            self.shared.committed_epoch.fetch_max(epoch, Relaxed);
            self.shared.checkpoint_bytes.store(bytes, Relaxed);
            self.shared.checkpoint_duration_us.store(age.as_micros() as u64, Relaxed);
            self.shared.checkpoint_committed_unix_ms.store((time::now_micros() / 1000) as u64, Relaxed);
            tracing::info!(job = %ck.job, epoch, bytes, duration_ms = age.as_millis() as u64, "checkpointed");
        }
        false
    }

    /// Some sink holds rows it sends once they are old enough.
    fn pending(&self) -> bool {
        self.sinks.iter().any(|s| matches!(&s.state, SlotState::Open(sink) if sink.pending()))
    }

    fn flush(&mut self, shared: &Shared) {
        let mut retries = 0;
        for slot in &mut self.sinks {
            if let SlotState::Open(s) = &mut slot.state {
                if let Err(e) = s.flush() {
                    shared.error(format!("sink `{}`: flush failed: {e}", slot.id));
                }
                retries += s.retries();
            }
        }
        shared.sink_retries.store(retries, Relaxed);
        let now = time::now_micros();
        if let (Some(a), true) = (self.alerts.as_ref(), now - self.alerts_reported >= crate::ingest::TENANT_MERGE_US) {
            self.alerts_reported = now;
            if let Ok(mut s) = shared.alerts.lock() {
                *s = Some(a.stats());
            }
        }
        let _ = self.dead.flush();
        if let Some(l) = self.late.as_mut() {
            let _ = l.flush();
        }
    }

    fn finish(&mut self, shared: &Shared) {
        if let Some(a) = self.alerts.take() {
            let stats = a.finish();
            if let Ok(mut s) = shared.alerts.lock() {
                *s = Some(stats);
            }
        }
        for slot in &mut self.sinks {
            if let SlotState::Open(s) = &mut slot.state {
                if let Err(e) = s.finish() {
                    shared.error(format!("sink `{}`: {e}", slot.id));
                }
            }
        }
        if let Err(e) = self.dead.finish() {
            shared.error(format!("dead letters to {}: {e}", self.dead.describe()));
        }
        if let Some(l) = self.late.as_mut() {
            if let Err(e) = l.finish() {
                shared.error(format!("late output: {e}"));
            }
        }
    }
}

impl Drop for SinkState {
    fn drop(&mut self) {
        for s in self.open() {
            let _ = s.flush();
        }
        let _ = self.dead.flush();
        self.shared.merge_tenants(std::mem::take(&mut self.tenants));
    }
}

/// Elapsed-time helper for progress lines.
pub fn fmt_watermark(wm: Option<i64>) -> String {
    match wm {
        Some(w) if w > i64::MIN / 2 => time::format_rfc3339(w),
        _ => "-".into(),
    }
}
