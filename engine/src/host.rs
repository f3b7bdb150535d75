//! Many jobs in one long-running Timely cluster, submitted and cancelled while it runs.
//!
//! Timely requires every worker to build the same dataflows in the same order. Commands
//! therefore enter at one place only, process 0's worker 0 (fed by the API), and reach every
//! worker through a control dataflow (`broadcast`); a worker applies a command once the control
//! frontier has passed its timestamp, in sequence order, so all workers build and drop job
//! dataflows in the same order. A job whose setup fails on some process (a missing input file,
//! an unreadable checkpoint) is still built there, with no input, and reported failed: skipping
//! it would shift the channel identifiers of every later dataflow on that process.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::operators::{Input, Inspect, Probe};
use timely::dataflow::ProbeHandle;

use crate::run::{timely_config, Prepared, Progress};
use crate::{EngineError, RestoreFrom, RunConfig};

/// A control command, sequenced by process 0.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Command {
    pub seq: u64,
    pub action: Action,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Action {
    /// Start a job (its text was validated by the API). `restore`: continue from the job's
    /// latest checkpoint (after a cluster restart).
    Submit { id: String, name: String, text: String, restore: bool },
    /// Stop a job: with a savepoint if it has checkpoints and `savepoint` is set, else at once.
    Cancel { id: String, savepoint: bool },
}

/// A job's lifecycle on this process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Running,
    Finished,
    Failed,
    /// Cancelling with a savepoint: running until it is committed.
    Stopping,
    Cancelled,
    /// Cancelled after committing a savepoint; a later submit with `restore` continues it.
    Savepointed,
}

impl JobState {
    pub fn is_terminal(self) -> bool {
        matches!(self, JobState::Finished | JobState::Failed | JobState::Cancelled | JobState::Savepointed)
    }
}

/// One job hosted on this process, as the API and metrics see it.
pub struct HostedJob {
    pub id: String,
    pub name: String,
    pub job: Arc<Prepared>,
    pub state: JobState,
    pub submitted: SystemTime,
    stop: Arc<AtomicBool>,
    /// Local workers that are done with the job's dataflow.
    workers_done: AtomicUsize,
}

/// The jobs of this process, shared by its workers and the API.
#[derive(Default)]
pub struct Registry {
    jobs: Mutex<BTreeMap<String, Arc<Mutex<HostedJob>>>>,
    /// Set once the Timely cluster is connected and the control dataflow is built.
    pub ready: AtomicBool,
}

/// A job's state and counters on this process.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JobStatus {
    pub id: String,
    pub name: String,
    pub state: JobState,
    pub submitted_unix_ms: u64,
    pub uptime_secs: f64,
    pub events_in: u64,
    pub rows_out: u64,
    pub dead_letters: u64,
    pub late_events: u64,
    pub windows_fired: u64,
    /// Pattern jobs: matches emitted, and partial matches alive now.
    #[serde(default)]
    pub pattern_matches: u64,
    #[serde(default)]
    pub partial_matches: i64,
    /// Score steps: model, version in use, rows scored, shadow disagreements.
    #[serde(default)]
    pub models: Vec<crate::scoring::ModelReport>,
    /// The lowest watermark of this process's sources (µs since the epoch).
    pub watermark_us: Option<i64>,
    pub checkpoints: u64,
    pub last_checkpoint_epoch: Option<u64>,
    pub last_checkpoint_bytes: u64,
    pub last_checkpoint_duration_ms: f64,
    /// Sinks not open yet, with why (`sink `id`: reason`): the job waits for them.
    #[serde(default)]
    pub sinks_waiting: Vec<String>,
    pub errors: Vec<String>,
}

impl Registry {
    pub fn statuses(&self) -> Vec<JobStatus> {
        let jobs: Vec<_> = self.jobs.lock().map(|j| j.values().cloned().collect()).unwrap_or_default();
        jobs.iter().filter_map(|j| j.lock().ok().map(|j| status(&j))).collect()
    }

    pub fn status(&self, id: &str) -> Option<JobStatus> {
        let job = self.jobs.lock().ok()?.get(id).cloned()?;
        let job = job.lock().ok()?;
        Some(status(&job))
    }

    /// Every job on this process with its state, for metrics.
    pub fn jobs(&self) -> Vec<(String, String, JobState, Arc<Prepared>)> {
        let jobs: Vec<_> = self.jobs.lock().map(|j| j.values().cloned().collect()).unwrap_or_default();
        jobs.iter().filter_map(|j| j.lock().ok().map(|j| (j.id.clone(), j.name.clone(), j.state, Arc::clone(&j.job)))).collect()
    }
}

fn status(j: &HostedJob) -> JobStatus {
    use std::sync::atomic::Ordering::Relaxed;
    let s = &j.job.shared;
    let committed = s.committed_epoch.load(Relaxed);
    JobStatus {
        id: j.id.clone(),
        name: j.name.clone(),
        state: j.state,
        submitted_unix_ms: j.submitted.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
        uptime_secs: j.job.started.elapsed().as_secs_f64(),
        events_in: s.events_in.load(Relaxed),
        rows_out: s.rows_out.load(Relaxed),
        dead_letters: s.dead_letters.load(Relaxed),
        late_events: s.late_dropped.load(Relaxed) + s.late_side_output.load(Relaxed) + s.late_updates.load(Relaxed),
        windows_fired: s.windows_fired.load(Relaxed),
        pattern_matches: s.pattern_matches.load(Relaxed),
        partial_matches: s.partial_matches.load(Relaxed),
        models: s.models.iter().map(|m| m.report()).collect(),
        watermark_us: s.watermark(),
        checkpoints: s.checkpoints.load(Relaxed),
        last_checkpoint_epoch: (committed > 0).then_some(committed),
        last_checkpoint_bytes: s.checkpoint_bytes.load(Relaxed),
        last_checkpoint_duration_ms: s.checkpoint_duration_us.load(Relaxed) as f64 / 1000.0,
        sinks_waiting: s.sinks_waiting(),
        errors: s.errors(),
    }
}

/// The cluster's shape (as for `run`).
#[derive(Clone, Debug)]
pub struct HostConfig {
    pub workers: usize,
    pub processes: usize,
    pub process: usize,
    pub hostfile: Option<std::path::PathBuf>,
    /// The cluster's model registry.
    pub models: crate::scoring::ModelConfig,
}

/// A job dataflow on one worker.
struct OnWorker {
    id: String,
    dataflow: usize,
    probe: ProbeHandle<u64>,
    job: Arc<Mutex<HostedJob>>,
}

/// Runs this process's part of the cluster until the process exits. `commands` is given on
/// process 0 only: its worker 0 sequences and broadcasts them.
pub fn serve(cfg: HostConfig, registry: Arc<Registry>, commands: Option<mpsc::Receiver<Action>>) -> Result<(), EngineError> {
    let run_cfg = RunConfig {
        workers: cfg.workers,
        processes: cfg.processes,
        process: cfg.process,
        hostfile: cfg.hostfile.clone(),
        models: cfg.models.clone(),
        ..Default::default()
    };
    let config = timely_config(&run_cfg)?;
    let commands = Arc::new(Mutex::new(commands));
    let guards = timely::execute(config, move |worker| {
        let rx = if worker.index() == 0 { commands.lock().ok().and_then(|mut c| c.take()) } else { None };
        let inbox: Rc<RefCell<Vec<(u64, Command)>>> = Rc::new(RefCell::new(Vec::new()));
        let sink = Rc::clone(&inbox);
        let control_probe = ProbeHandle::new();
        let input = worker.dataflow::<u64, _, _>(|scope| {
            let (input, stream) = scope.new_input::<Vec<Command>>();
            stream
                .broadcast()
                .inspect_core(move |event| {
                    if let Ok((stamp, batch)) = event {
                        let t = stamp.iter().copied().min().unwrap_or(0);
                        sink.borrow_mut().extend(batch.iter().map(|c| (t, c.clone())));
                    }
                })
                .probe_with(&control_probe);
            input
        });
        // Only worker 0 sends; the others close their input so the frontier can advance.
        let mut input = if rx.is_some() {
            Some(input)
        } else {
            input.close();
            None
        };
        registry.ready.store(true, SeqCst);
        let (mut seq, mut epoch) = (0u64, 0u64);
        let mut running: Vec<OnWorker> = Vec::new();
        loop {
            if let (Some(rx), Some(input)) = (rx.as_ref(), input.as_mut()) {
                let mut sent = false;
                while let Ok(action) = rx.try_recv() {
                    seq += 1;
                    input.send(Command { seq, action });
                    sent = true;
                }
                if sent {
                    epoch += 1;
                    input.advance_to(epoch);
                }
            }
            worker.step_or_park(Some(Duration::from_millis(20)));
            // Commands whose timestamp every worker has passed, in sequence order.
            let ready: Vec<Command> = {
                let mut inbox = inbox.borrow_mut();
                let complete = |t: &u64| control_probe.with_frontier(|f| !f.less_equal(t));
                let (mut done, waiting): (Vec<_>, Vec<_>) = inbox.drain(..).partition(|(t, _)| complete(t));
                *inbox = waiting;
                done.sort_by_key(|(_, c)| c.seq);
                done.into_iter().map(|(_, c)| c).collect()
            };
            for command in ready {
                apply(worker, &registry, &run_cfg, &mut running, command);
            }
            running.retain(|on| poll(worker, on));
        }
    })
    .map_err(EngineError::Timely)?;
    for r in guards.join() {
        r.map_err(EngineError::Worker)?;
    }
    Ok(())
}

fn apply(worker: &mut timely::worker::Worker, registry: &Registry, cfg: &RunConfig, running: &mut Vec<OnWorker>, command: Command) {
    match command.action {
        Action::Submit { id, name, text, restore } => {
            // The first local worker to get here sets the job up for the process.
            let job = {
                // A poisoned lock (a panic elsewhere) must not make this worker skip the build.
                let mut jobs = registry.jobs.lock().unwrap_or_else(PoisonError::into_inner);
                Arc::clone(jobs.entry(id.clone()).or_insert_with(|| Arc::new(Mutex::new(prepare(&id, &name, &text, restore, cfg)))))
            };
            let dataflow = worker.next_dataflow_index();
            let prepared = Arc::clone(&job.lock().unwrap_or_else(PoisonError::into_inner).job);
            let probe = prepared.build(worker);
            if worker.index() == 0 {
                tracing::info!(job = %id, name = %name, restore, "job running");
            }
            running.push(OnWorker { id, dataflow, probe, job });
        }
        Action::Cancel { id, savepoint } => {
            let Some(pos) = running.iter().position(|r| r.id == id) else { return };
            let mut job = running[pos].job.lock().unwrap_or_else(PoisonError::into_inner);
            // Decided from the job file, the same on every process (a process whose setup failed
            // has no checkpointing of its own, but must take the same path as the others).
            if savepoint && job.job.plan.spec.checkpoint.is_some() {
                job.stop.store(true, SeqCst);
                job.state = JobState::Stopping;
                return;
            }
            drop(job);
            let on = running.swap_remove(pos);
            worker.drop_dataflow(on.dataflow);
            on.job.lock().unwrap_or_else(PoisonError::into_inner).state = JobState::Cancelled;
            if worker.index() == 0 {
                tracing::info!(job = %id, "job cancelled");
            }
        }
    }
}

/// Sets a job up on this process. A job that cannot start here (e.g. its input file is
/// missing on this host) is still built, without input, and reported failed.
fn prepare(id: &str, name: &str, text: &str, restore: bool, cfg: &RunConfig) -> HostedJob {
    let stop = Arc::new(AtomicBool::new(false));
    let cfg = RunConfig { restore: restore.then_some(RestoreFrom::Latest), stop: Some(Arc::clone(&stop)), ..cfg.clone() };
    // Process 0 validated the text with the same code, so the plan loads everywhere.
    let plan = match tenantflow_core::plan::load(name, text, &[]) {
        Ok(p) => p,
        Err(e) => panic!("job {id} passed validation on process 0 but not here: {e}"),
    };
    let job = match Prepared::new(plan.clone(), &cfg) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(job = %id, "job failed to start: {e}");
            Prepared::failed(plan, &cfg, e.to_string())
        }
    };
    let state = if job.shared.has_errors() { JobState::Failed } else { JobState::Running };
    HostedJob {
        id: id.to_string(),
        name: name.to_string(),
        job: Arc::new(job),
        state,
        submitted: SystemTime::now(),
        stop,
        workers_done: AtomicUsize::new(0),
    }
}

/// Looks after a job's dataflow on this worker after a step; false once this worker is done
/// with it.
fn poll(worker: &mut timely::worker::Worker, on: &OnWorker) -> bool {
    let mut job = on.job.lock().unwrap_or_else(PoisonError::into_inner);
    let progress = job.job.poll(&on.probe);
    if progress == Progress::Running {
        if job.state == JobState::Running && job.job.shared.has_errors() {
            job.state = JobState::Failed;
            tracing::error!(job = %on.id, errors = ?job.job.shared.errors(), "job failed");
        }
        return true;
    }
    if progress == Progress::Savepointed {
        worker.drop_dataflow(on.dataflow);
    }
    let local = job.job.shared.watermarks.len();
    if job.workers_done.fetch_add(1, SeqCst) + 1 == local {
        job.state = match progress {
            _ if job.job.shared.has_errors() => JobState::Failed,
            Progress::Savepointed => JobState::Savepointed,
            _ => JobState::Finished,
        };
        tracing::info!(job = %on.id, state = ?job.state, "job ended");
    }
    false
}

/// Submits and cancels jobs: process 0's API holds one. Commands go to worker 0 of process 0.
#[derive(Clone)]
pub struct Control {
    tx: mpsc::Sender<Action>,
    registry: Arc<Registry>,
}

impl Control {
    pub fn new(registry: Arc<Registry>) -> (Control, mpsc::Receiver<Action>) {
        let (tx, rx) = mpsc::channel();
        (Control { tx, registry }, rx)
    }

    pub fn send(&self, action: Action) -> bool {
        self.tx.send(action).is_ok()
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }
}
