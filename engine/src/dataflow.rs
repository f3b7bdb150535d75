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

use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::operator::source;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::{Capability, Probe};
use timely::dataflow::{ProbeHandle, Scope, Stream};
use timely::worker::Worker;

use tenantflow_connectors::kafka::KafkaSink;
use tenantflow_connectors::sink::{file_sink, Discard, JsonLines, Table};
use tenantflow_connectors::{DeadLetterWriter, Sink, Source};
use tenantflow_core::job::{LatePolicy, SinkSpec, Step};
use tenantflow_core::plan::{CompiledStep, Plan};
use tenantflow_core::{time, Value};
use tenantflow_operators::{Aggregates, WindowStore};

use crate::ingest::{Ingest, Status};
use crate::stats::{Shared, TenantCounts};
use crate::Msg;

type Out = CapacityContainerBuilder<Vec<Msg>>;

/// Event time (µs, signed) as a Timely timestamp: flipping the sign bit keeps the order, so
/// times before 1970 work and `i64::MIN` ("nothing yet") is Timely's minimum, 0.
pub fn to_time(t: i64) -> u64 {
    (t as u64) ^ (1 << 63)
}

pub fn from_time(t: u64) -> i64 {
    (t ^ (1 << 63)) as i64
}

/// Builds the job's dataflow on this worker; returns the probe that tells when sinks are done.
pub fn build(
    worker: &mut Worker,
    plan: Arc<Plan>,
    source: Box<dyn Source>,
    shared: Arc<Shared>,
    local: usize,
    max_lead: u64,
) -> ProbeHandle<u64> {
    let probe = ProbeHandle::new();
    let probe_for_source = probe.clone();
    worker.dataflow::<u64, _, _>(|scope| {
        let ingested = ingest(scope, Arc::clone(&plan), source, Arc::clone(&shared), local, probe_for_source, max_lead);
        let windowed = window(ingested, Arc::clone(&plan), Arc::clone(&shared));
        sink(windowed, plan, shared).probe_with(&probe);
    });
    probe
}

fn ingest<'s>(
    scope: Scope<'s, u64>,
    plan: Arc<Plan>,
    src: Box<dyn Source>,
    shared: Arc<Shared>,
    local: usize,
    probe: ProbeHandle<u64>,
    max_lead: u64,
) -> Stream<'s, u64, Vec<Msg>> {
    source::<_, Out, _, _>(scope, "Ingest", move |cap, info| {
        let activator = scope.activator_for(info.address);
        let mut cap = Some(cap);
        let mut ingest = Ingest::new(plan, src, Arc::clone(&shared), local);
        let mut msgs = Vec::new();
        move |output| {
            let Some(c) = cap.as_mut() else { return };
            // Backpressure: run at most `max_lead` of event time ahead of what sinks finished.
            let t = *c.time();
            if probe.with_frontier(|f| f.first().is_some_and(|&done| t > done.saturating_add(max_lead))) {
                ingest.pause(true);
                activator.activate_after(Duration::from_millis(1));
                return;
            }
            ingest.pause(false);
            let status = ingest.step(&mut msgs);
            if !msgs.is_empty() {
                output.session(&*c).give_iterator(msgs.drain(..));
            }
            let wm = to_time(ingest.watermark());
            if wm > t {
                c.downgrade(&wm);
            }
            match status {
                Status::Ready => activator.activate(),
                Status::Pending => activator.activate_after(Duration::from_millis(5)),
                Status::Done => cap = None,
            }
        }
    })
}

fn route(m: &Msg) -> u64 {
    match m {
        Msg::Partial(p) => p.hash,
        // Everything else goes straight to the sinks on worker 0.
        _ => 0,
    }
}

fn window<'s>(input: Stream<'s, u64, Vec<Msg>>, plan: Arc<Plan>, shared: Arc<Shared>) -> Stream<'s, u64, Vec<Msg>> {
    input.unary_frontier::<Out, _, _, _>(Exchange::new(route), "Window", move |_cap, _info| {
        let w = plan.window.clone();
        // Fired windows are kept for late updates only under the `update` policy.
        let lateness = if plan.spec.time.late_policy == LatePolicy::Update { plan.spec.time.allowed_lateness } else { 0 };
        let mut store = w.as_ref().map(|w| WindowStore::new(w.kind, lateness));
        let aggs = w.as_ref().map(|w| Aggregates::compile(&w.aggs, &plan.pre_schema));
        let post: Vec<CompiledStep> = Plan::compile_steps(&plan.post);
        let out_pos: Vec<usize> = plan.output.positions().to_vec();
        let out_width = plan.out_width;
        let mut caps: BTreeMap<i64, Capability<u64>> = BTreeMap::new();
        move |(input, frontier), output| {
            input.for_each_stamp(|cap, data| {
                let Some(&t) = cap.least() else { return };
                for batch in data {
                    for msg in batch.drain(..) {
                        match (msg, store.as_mut()) {
                            (Msg::Partial(p), Some(store)) => {
                                let at = store.insert(p, from_time(t));
                                caps.entry(at).or_insert_with(|| cap.delayed(&to_time(at), 0));
                            }
                            (other, _) => output.session(&cap).give(other),
                        }
                    }
                }
            });
            let (Some(store), Some(aggs)) = (store.as_mut(), aggs.as_ref()) else { return };
            let upto = frontier.frontier().first().map_or(i64::MAX, |&f| from_time(f));
            if store.next_timer().is_none_or(|t| t > upto) {
                return;
            }
            let mut fired = 0;
            store.fire(upto, |at, f| {
                // `insert` made a capability for every time `fire` can emit at.
                let Some(cap) = caps.get(&at) else {
                    debug_assert!(false, "no capability for window output at {at}");
                    return;
                };
                let mut row: Vec<Value> = Vec::with_capacity(out_width);
                row.extend(f.key.iter().cloned());
                row.push(Value::Ts(f.start));
                row.push(Value::Ts(f.end));
                aggs.finish(f.accs, &mut row);
                row.resize(out_width, Value::Null);
                fired += 1;
                if post.iter().all(|s| s.apply(&mut row)) {
                    let projected = out_pos.iter().map(|&p| std::mem::take(&mut row[p])).collect();
                    output.session(cap).give(Msg::Row(projected));
                }
            });
            shared.windows_fired.fetch_add(fired, Relaxed);
            // Capabilities at or before `upto` have done their work.
            caps.retain(|&at, _| at > upto);
        }
    })
}

fn open_sinks(plan: &Plan, shared: &Shared) -> Vec<Box<dyn Sink>> {
    let names = plan.output.names();
    let mut sinks: Vec<Box<dyn Sink>> = Vec::new();
    for spec in &plan.spec.sinks {
        match spec {
            SinkSpec::Stdout { json: false } => sinks.push(Box::new(Table::new(std::io::stdout(), plan.output.fields()))),
            SinkSpec::Stdout { json: true } => sinks.push(Box::new(JsonLines::new(std::io::stdout(), &names))),
            SinkSpec::File { path } => match file_sink(path, &names) {
                Ok(s) => sinks.push(Box::new(s)),
                Err(e) => shared.error(format!("file sink: {e}")),
            },
            SinkSpec::Kafka(k) => {
                // Keyed by tenant and the window's key fields, as far as the output keeps them.
                let key_names = std::iter::once(plan.spec.schema.tenant.value.as_str()).chain(window_keys(plan));
                let key_fields = key_names.filter_map(|n| names.iter().position(|m| *m == n)).collect();
                match KafkaSink::open(k, &names, key_fields) {
                    Ok(s) => sinks.push(Box::new(s)),
                    Err(e) => shared.error(format!("kafka sink: {e}")),
                }
            }
            SinkSpec::Discard { delay_per_row: 0.0 } => {}
            SinkSpec::Discard { delay_per_row } => sinks.push(Box::new(Discard::new(*delay_per_row))),
        }
    }
    sinks
}

fn window_keys(plan: &Plan) -> impl Iterator<Item = &str> {
    plan.spec
        .steps
        .iter()
        .filter_map(|s| if let Step::Window(w) = s { Some(w) } else { None })
        .flat_map(|w| w.key_by.iter().map(|k| k.value.as_str()))
}

fn sink<'s>(input: Stream<'s, u64, Vec<Msg>>, plan: Arc<Plan>, shared: Arc<Shared>) -> Stream<'s, u64, Vec<()>> {
    input.unary_frontier::<CapacityContainerBuilder<Vec<()>>, _, _, _>(Exchange::new(|_: &Msg| 0), "Sink", move |_cap, _info| {
        // Only worker 0 receives data; the others never open files.
        let mut state: Option<SinkState> = None;
        let tenant_out = plan.output.lookup(&plan.spec.schema.tenant.value).map(|(p, _)| p);
        let tenant_out = tenant_out.and_then(|p| plan.output.positions().iter().position(|&q| q == p));
        let mut pending: BTreeMap<u64, Vec<Msg>> = BTreeMap::new();
        move |(input, frontier), _output| {
            input.for_each_stamp(|cap, data| {
                let Some(&t) = cap.least() else { return };
                let slot = pending.entry(t).or_default();
                for batch in data {
                    slot.append(batch);
                }
            });
            let ready: Vec<u64> = pending.keys().copied().filter(|t| !frontier.frontier().less_equal(t)).collect();
            if ready.is_empty() {
                return;
            }
            let st = state.get_or_insert_with(|| SinkState::new(&plan, &shared));
            for t in ready {
                let Some(msgs) = pending.remove(&t) else { continue };
                st.write_time(msgs, tenant_out, &shared);
            }
            st.flush(&shared);
        }
    })
}

/// Worker 0's writers.
struct SinkState {
    sinks: Vec<Box<dyn Sink>>,
    dead: DeadLetterWriter,
    late: Option<Box<dyn Sink>>,
    tenants: TenantCounts,
    shared: Arc<Shared>,
    failed: bool,
}

impl SinkState {
    fn new(plan: &Plan, shared: &Arc<Shared>) -> SinkState {
        let late = plan.spec.time.late_output.as_ref().filter(|_| plan.spec.time.late_policy == LatePolicy::SideOutput).and_then(|path| {
            let names = plan.input.names();
            match file_sink(path, &names) {
                Ok(s) => Some(Box::new(s) as Box<dyn Sink>),
                Err(e) => {
                    shared.error(format!("late output: {e}"));
                    None
                }
            }
        });
        SinkState {
            sinks: open_sinks(plan, shared),
            dead: DeadLetterWriter::new(&plan.spec.dead_letter_path),
            late,
            tenants: TenantCounts::default(),
            shared: Arc::clone(shared),
            failed: false,
        }
    }

    /// Writes everything of one timestamp in a deterministic order, so output files do not
    /// depend on the number of workers or on thread scheduling.
    fn write_time(&mut self, msgs: Vec<Msg>, tenant_out: Option<usize>, shared: &Shared) {
        let mut rows = Vec::new();
        let mut dead = Vec::new();
        let mut late = Vec::new();
        for m in msgs {
            match m {
                Msg::Row(r) => rows.push(r),
                Msg::Dead(d) => dead.push(d),
                Msg::Late(r) => late.push(r),
                Msg::Partial(_) => {}
            }
        }
        rows.sort_unstable();
        dead.sort_by(|a, b| (&a.source, a.position, &a.raw).cmp(&(&b.source, b.position, &b.raw)));
        late.sort_unstable();
        shared.rows_out.fetch_add(rows.len() as u64, Relaxed);
        for r in &rows {
            match tenant_out {
                Some(p) => self.tenants.get(&r[p]).events_out += 1,
                None => self.tenants.get(&Value::Null).events_out += 1,
            }
            if self.failed {
                continue;
            }
            for s in &mut self.sinks {
                if let Err(e) = s.write(r) {
                    shared.error(format!("sink write failed: {e}"));
                    self.failed = true;
                }
            }
        }
        for d in &dead {
            if let Err(e) = self.dead.write(d) {
                shared.error(format!("dead-letter write to {} failed: {e}", self.dead.path()));
            }
        }
        if let Some(l) = self.late.as_mut() {
            for r in &late {
                if let Err(e) = l.write(r) {
                    shared.error(format!("late output write failed: {e}"));
                }
            }
        }
    }

    fn flush(&mut self, shared: &Shared) {
        for s in &mut self.sinks {
            if let Err(e) = s.flush() {
                shared.error(format!("sink flush failed: {e}"));
            }
        }
        let _ = self.dead.flush();
        if let Some(l) = self.late.as_mut() {
            let _ = l.flush();
        }
    }
}

impl Drop for SinkState {
    fn drop(&mut self) {
        for s in &mut self.sinks {
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
