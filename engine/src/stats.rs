//! Job counters shared by the workers of a process, per-tenant counts, and the final report.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use foldhash::HashMap;
use hdrhistogram::Histogram;
use tenantflow_core::Value;

/// Per-tenant counts of one job.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct TenantStats {
    pub events_in: u64,
    pub events_out: u64,
    pub late: u64,
    pub dead_lettered: u64,
}

impl TenantStats {
    fn add(&mut self, o: &TenantStats) {
        self.events_in += o.events_in;
        self.events_out += o.events_out;
        self.late += o.late;
        self.dead_lettered += o.dead_lettered;
    }
}

/// A worker's per-tenant counts, merged into [`Shared`] when the worker ends.
#[derive(Default)]
pub struct TenantCounts {
    index: HashMap<Value, usize>,
    stats: Vec<(Value, TenantStats)>,
}

impl TenantCounts {
    /// One hash lookup per call; the tenant is cloned only the first time it is seen.
    #[inline]
    pub fn get(&mut self, tenant: &Value) -> &mut TenantStats {
        let i = match self.index.get(tenant) {
            Some(&i) => i,
            None => {
                self.stats.push((tenant.clone(), TenantStats::default()));
                self.index.insert(tenant.clone(), self.stats.len() - 1);
                self.stats.len() - 1
            }
        };
        &mut self.stats[i].1
    }
}

/// Counters of one process, updated by its workers and read by the progress reporter.
pub struct Shared {
    pub events_in: AtomicU64,
    pub rows_out: AtomicU64,
    pub late_dropped: AtomicU64,
    pub late_side_output: AtomicU64,
    pub late_updates: AtomicU64,
    pub dead_letters: AtomicU64,
    pub windows_fired: AtomicU64,
    /// Pattern matches and timed-out partial matches emitted; partial matches dropped at the
    /// per-key cap; partial matches alive now (all workers of this process).
    pub pattern_matches: AtomicU64,
    pub pattern_timeouts: AtomicU64,
    pub partial_matches_dropped: AtomicU64,
    pub partial_matches: AtomicI64,
    pub checkpoints: AtomicU64,
    /// The newest committed checkpoint's epoch.
    pub committed_epoch: AtomicU64,
    /// The savepoint's epoch once every worker of every process agreed on it (0: not yet).
    pub savepoint_epoch: AtomicU64,
    /// How the workers agree on it.
    savepoint: Mutex<SavepointVotes>,
    /// The newest checkpoint epoch any source of this process started.
    pub started_epoch: AtomicU64,
    /// A stop request without checkpoints: the sources end.
    pub end_sources: AtomicBool,
    /// Size (bytes) and duration (µs, first part written to commit) of the latest checkpoint.
    pub checkpoint_bytes: AtomicU64,
    pub checkpoint_duration_us: AtomicU64,
    /// When the newest checkpoint was committed (ms since the epoch; 0: none).
    pub checkpoint_committed_unix_ms: AtomicU64,
    /// Bytes of input read (JSON payloads and lines; generated events count none).
    pub bytes_in: AtomicU64,
    /// Time spent in each operator's logic (ns), and held back by backpressure (µs).
    pub busy_ns: [AtomicU64; 3],
    pub backpressure_us: AtomicU64,
    /// Requests the sinks' clients retried (cumulative, from the sinks).
    pub sink_retries: AtomicU64,
    /// Sinks not open yet because their service is unreachable: `sink `id`: reason` each. While
    /// any is listed, nothing is written and no checkpoint commits.
    pub sinks_waiting: Mutex<Vec<String>>,
    /// The job's alert manager's counters, refreshed by the sink about once a second.
    pub alerts: Mutex<Option<tenantflow_alerts::Stats>>,
    /// Processing time at which a window's result was emitted minus the window's end (µs), and
    /// how long each write to the sinks took (µs, rows of one timestamp plus the flush).
    pub emit_delay: Mutex<Histogram<u64>>,
    pub sink_write: Mutex<Histogram<u64>>,
    /// Each local worker's source watermark (µs); `i64::MAX` marks an idle source, `i64::MIN` none yet.
    pub watermarks: Vec<AtomicI64>,
    tenants: Mutex<BTreeMap<String, TenantStats>>,
    errors: Mutex<Vec<String>>,
    /// The job's score steps (resolved when it started).
    pub models: Vec<Arc<crate::scoring::ScoreModel>>,
}

/// Stop-with-savepoint agreement across processes; see [`Shared::savepoint_target`].
#[derive(Default)]
struct SavepointVotes {
    requested: bool,
    /// This process's proposal (0: it has not seen a stop yet).
    local: u64,
    /// What each sender said: its proposal, or 0 for an ended source that never will.
    votes: BTreeMap<u32, u64>,
}

/// The operators whose busy time is counted, in `Shared::busy_ns` order.
pub const OPERATORS: [&str; 3] = ["ingest", "window", "sink"];
pub const INGEST: usize = 0;
pub const WINDOW: usize = 1;
pub const SINK: usize = 2;

/// µs from 1 to an hour, 2 significant digits (a few kB).
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 2).unwrap_or_else(|_| Histogram::new(2).expect("2 significant digits are valid"))
}

/// Adds `local` into `shared` and empties it (operators record locally, merge now and then).
pub fn merge_histogram(shared: &Mutex<Histogram<u64>>, local: &mut Histogram<u64>) {
    if local.is_empty() {
        return;
    }
    if let Ok(mut h) = shared.lock() {
        let _ = h.add(&*local);
    }
    local.reset();
}

pub const IDLE: i64 = i64::MAX;
pub const UNSET: i64 = i64::MIN;

impl Shared {
    pub fn new(local_workers: usize) -> Shared {
        Shared {
            events_in: AtomicU64::new(0),
            rows_out: AtomicU64::new(0),
            late_dropped: AtomicU64::new(0),
            late_side_output: AtomicU64::new(0),
            late_updates: AtomicU64::new(0),
            dead_letters: AtomicU64::new(0),
            windows_fired: AtomicU64::new(0),
            pattern_matches: AtomicU64::new(0),
            pattern_timeouts: AtomicU64::new(0),
            partial_matches_dropped: AtomicU64::new(0),
            partial_matches: AtomicI64::new(0),
            checkpoints: AtomicU64::new(0),
            committed_epoch: AtomicU64::new(0),
            savepoint_epoch: AtomicU64::new(0),
            savepoint: Mutex::new(SavepointVotes::default()),
            started_epoch: AtomicU64::new(0),
            end_sources: AtomicBool::new(false),
            checkpoint_bytes: AtomicU64::new(0),
            checkpoint_duration_us: AtomicU64::new(0),
            checkpoint_committed_unix_ms: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            busy_ns: [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)],
            backpressure_us: AtomicU64::new(0),
            sink_retries: AtomicU64::new(0),
            sinks_waiting: Mutex::new(Vec::new()),
            alerts: Mutex::new(None),
            emit_delay: Mutex::new(latency_histogram()),
            sink_write: Mutex::new(latency_histogram()),
            watermarks: (0..local_workers).map(|_| AtomicI64::new(UNSET)).collect(),
            tenants: Mutex::new(BTreeMap::new()),
            errors: Mutex::new(Vec::new()),
            models: Vec::new(),
        }
    }

    pub fn merge_tenants(&self, counts: TenantCounts) {
        if let Ok(mut t) = self.tenants.lock() {
            for (k, v) in counts.stats {
                let name = match k {
                    Value::Null => "(none)".to_string(),
                    other => other.to_string(),
                };
                t.entry(name).or_default().add(&v);
            }
        }
    }

    pub fn error(&self, message: String) {
        tracing::error!("{message}");
        if let Ok(mut e) = self.errors.lock() {
            e.push(message);
        }
    }

    /// Whether any error was reported (checked every step: no copy of the messages).
    pub fn has_errors(&self) -> bool {
        self.errors.lock().is_ok_and(|e| !e.is_empty())
    }

    pub fn sinks_waiting(&self) -> Vec<String> {
        self.sinks_waiting.lock().map(|w| w.clone()).unwrap_or_default()
    }

    pub fn errors(&self) -> Vec<String> {
        self.errors.lock().map(|e| e.clone()).unwrap_or_default()
    }

    /// The lowest watermark among active local sources.
    pub fn watermark(&self) -> Option<i64> {
        self.watermarks.iter().map(|w| w.load(Relaxed)).filter(|&w| w != IDLE && w != UNSET).min()
    }

    /// Whether a peer's barrier carried a stop request (this process may not have had one).
    pub fn stop_requested(&self) -> bool {
        self.savepoint.lock().is_ok_and(|v| v.requested)
    }

    /// Called by a worker that sees a stop request: returns the epoch up to which it must start
    /// checkpoints now, and this process's proposal, which its barriers carry from then on.
    ///
    /// The proposal is the epoch after the newest any local worker had started (a worker records
    /// an epoch in `started_epoch` before it looks for a stop, so none went past it). Processes
    /// propose independently; the savepoint is the largest proposal, and every worker starts
    /// epochs up to the largest it has heard of so far.
    pub fn savepoint_target(&self, mine: u64) -> (u64, u64) {
        let Ok(mut v) = self.savepoint.lock() else { return (mine, mine) };
        if v.local == 0 {
            v.local = self.started_epoch.load(SeqCst).max(mine) + 1;
        }
        let target = v.votes.values().copied().fold(v.local, u64::max);
        (v.local, target)
    }

    /// Records what a sender's barrier or end marker said (`proposal` 0: no proposal, e.g. an
    /// ended source). Once all `peers` senders have spoken, the savepoint epoch is settled.
    pub fn vote(&self, from: u32, proposal: u64, peers: usize) {
        let Ok(mut v) = self.savepoint.lock() else { return };
        if proposal > 0 {
            v.requested = true;
        }
        let entry = v.votes.entry(from).or_insert(0);
        *entry = (*entry).max(proposal);
        let proposals = v.votes.values().copied();
        if v.requested && v.votes.len() == peers && v.votes.values().any(|&p| p > 0) {
            self.savepoint_epoch.store(proposals.max().unwrap_or(0), SeqCst);
        }
    }

    pub fn report(&self, elapsed: Duration) -> RunReport {
        RunReport {
            events_in: self.events_in.load(Relaxed),
            rows_out: self.rows_out.load(Relaxed),
            late_dropped: self.late_dropped.load(Relaxed),
            late_side_output: self.late_side_output.load(Relaxed),
            late_updates: self.late_updates.load(Relaxed),
            dead_letters: self.dead_letters.load(Relaxed),
            windows_fired: self.windows_fired.load(Relaxed),
            pattern_matches: self.pattern_matches.load(Relaxed),
            pattern_timeouts: self.pattern_timeouts.load(Relaxed),
            partial_matches_dropped: self.partial_matches_dropped.load(Relaxed),
            checkpoints: self.checkpoints.load(Relaxed),
            savepoint: Some(self.savepoint_epoch.load(Relaxed)).filter(|&e| e > 0 && self.committed_epoch.load(Relaxed) >= e),
            last_checkpoint_bytes: self.checkpoint_bytes.load(Relaxed),
            last_checkpoint_duration_us: self.checkpoint_duration_us.load(Relaxed),
            elapsed,
            tenants: self.tenants.lock().map(|t| t.clone()).unwrap_or_default(),
            models: self.models.iter().map(|m| m.report()).collect(),
        }
    }
}

/// What a finished run did (this process's share, for multi-process runs).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct RunReport {
    pub events_in: u64,
    pub rows_out: u64,
    pub late_dropped: u64,
    pub late_side_output: u64,
    pub late_updates: u64,
    pub dead_letters: u64,
    pub windows_fired: u64,
    pub pattern_matches: u64,
    pub pattern_timeouts: u64,
    pub partial_matches_dropped: u64,
    /// Checkpoints this process committed, and the size and duration of the last one.
    pub checkpoints: u64,
    /// The run stopped on request after committing this checkpoint (a savepoint).
    pub savepoint: Option<u64>,
    pub last_checkpoint_bytes: u64,
    pub last_checkpoint_duration_us: u64,
    #[serde(skip)]
    pub elapsed: Duration,
    pub tenants: BTreeMap<String, TenantStats>,
    /// Each score step's model and counters.
    pub models: Vec<crate::scoring::ModelReport>,
}
