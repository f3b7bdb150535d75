//! Running a job: Timely configuration (threads, processes), sources per worker, the worker
//! loop, and progress lines on stderr.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tenantflow_connectors::generator::Generator;
use tenantflow_connectors::json::JsonDecoder;
use tenantflow_connectors::kafka::KafkaSource;
use tenantflow_connectors::source::{expand, Empty, FileSource, StdinSource};
use tenantflow_connectors::{ConnectorError, Source};
use tenantflow_core::job::{DeadLetterSpec, SourceSpec, WindowKind};
use tenantflow_core::{time, Plan};

use crate::checkpoint::{self, CheckpointError, Crypto};
use crate::dataflow::{build, fmt_watermark, Checkpointing};
use crate::scoring::{self, ModelConfig};
use crate::stats::{RunReport, Shared};
use timely::dataflow::ProbeHandle;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Source(#[from] ConnectorError),
    #[error("cannot start workers: {0}")]
    Timely(String),
    #[error("a worker failed: {0}")]
    Worker(String),
    #[error("the job failed: {}", .0.join("; "))]
    Failed(Vec<String>),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
}

/// How to run a job.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// Worker threads per process.
    pub workers: usize,
    /// Number of processes in the Timely cluster (1 = this process only).
    pub processes: usize,
    /// This process's index in the cluster.
    pub process: usize,
    /// One `host:port` per line, one line per process.
    pub hostfile: Option<PathBuf>,
    /// Print progress lines to stderr once a second.
    pub progress: bool,
    /// Continue from a checkpoint.
    pub restore: Option<RestoreFrom>,
    /// Overrides the job's `[checkpoint] interval`.
    pub checkpoint_interval: Option<Duration>,
    /// When set (e.g. by SIGTERM), the job takes a savepoint and stops; without checkpoints its
    /// sources end and it drains (every open window fires) like a bounded job.
    pub stop: Option<Arc<AtomicBool>>,
    /// The model registry and ONNX Runtime, for jobs with score steps.
    pub models: ModelConfig,
}

/// Which checkpoint to continue from.
#[derive(Clone, Debug)]
pub enum RestoreFrom {
    /// The newest complete one (a fresh start when there is none yet).
    Latest,
    /// A checkpoint directory (`.../epoch-000042`).
    Path(PathBuf),
}

impl Default for RunConfig {
    fn default() -> Self {
        RunConfig {
            workers: 1,
            processes: 1,
            process: 0,
            hostfile: None,
            progress: false,
            restore: None,
            checkpoint_interval: None,
            stop: None,
            models: ModelConfig::default(),
        }
    }
}

/// Checkpoint settings and the checkpoint to restore, checked before any worker starts.
fn checkpointing(plan: &Plan, cfg: &RunConfig) -> Result<Option<Checkpointing>, EngineError> {
    let Some(spec) = plan.spec.checkpoint.as_ref() else {
        if cfg.restore.is_some() || cfg.checkpoint_interval.is_some() {
            return Err(EngineError::Config("checkpoints need a [checkpoint] table with `dir` in the job".into()));
        }
        return Ok(None);
    };
    if matches!(plan.spec.source, SourceSpec::Stdin) {
        return Err(EngineError::Config("checkpoints need a source that can be replayed; stdin cannot".into()));
    }
    let root = PathBuf::from(&spec.dir);
    let workers = cfg.workers * cfg.processes.max(1);
    let crypto = Crypto::from_env()?;
    let restore = match &cfg.restore {
        None => None,
        Some(RestoreFrom::Path(p)) => Some(checkpoint::open(p, crypto.as_ref())?),
        Some(RestoreFrom::Latest) => match checkpoint::latest(&root, crypto.as_ref(), |e| tracing::warn!("skipping checkpoint: {e}")) {
            Ok(r) => Some(r),
            Err(CheckpointError::NoneFound(dir)) => {
                tracing::warn!("no checkpoint in {dir} yet: starting from the beginning");
                None
            }
            Err(e) => return Err(e.into()),
        },
    };
    if let Some(r) = &restore {
        if r.manifest.workers != workers {
            return Err(EngineError::Config(format!(
                "checkpoint {} was taken with {} workers; restore it with the same number (this run has {workers})",
                r.dir.display(),
                r.manifest.workers
            )));
        }
        check_sinks(plan, r)?;
        tracing::info!(job = %plan.spec.name, epoch = r.manifest.epoch, "restored");
    }
    let interval = cfg.checkpoint_interval.unwrap_or(Duration::from_micros(spec.interval as u64));
    Ok(Some(Checkpointing {
        root,
        interval,
        retain: spec.retain,
        workers,
        job: plan.spec.name.clone(),
        restore,
        restore_requested: cfg.restore.is_some(),
        writer: checkpoint::PartWriter::start(crypto.clone())
            .map_err(|e| EngineError::Config(format!("cannot start the checkpoint writer: {e}")))?,
        crypto,
        stop: cfg.stop.clone(),
    }))
}

/// A checkpoint records each sink's progress by its id: restoring it into a job whose sinks
/// differ would start a new sink in mid-output or drop one's progress, so it is refused.
fn check_sinks(plan: &Plan, r: &checkpoint::Restore) -> Result<(), EngineError> {
    let ids: Vec<&str> = plan.spec.sinks.iter().map(|s| s.id.as_str()).collect();
    let recorded: Vec<&str> = r.manifest.sinks.iter().map(String::as_str).collect();
    let differ = |what: String| {
        EngineError::Config(format!(
            "checkpoint {} cannot be restored: {what}. Its sinks are [{}], the job's are [{}]; restore with the same sinks (a sink's settings may change, not its id) or start without --restore",
            r.dir.display(),
            recorded.join(", "),
            ids.join(", ")
        ))
    };
    if let Some((i, id)) = ids.iter().enumerate().find(|(_, id)| !recorded.contains(id)) {
        return Err(differ(format!("the job's sink `{id}` (sinks[{i}]) is not in it")));
    }
    if let Some(id) = recorded.iter().find(|id| !ids.contains(id)) {
        return Err(differ(format!("it holds the progress of sink `{id}`, which the job no longer has")));
    }
    Ok(())
}

pub(crate) fn timely_config(cfg: &RunConfig) -> Result<timely::Config, EngineError> {
    if cfg.workers == 0 {
        return Err(EngineError::Config("--workers must be at least 1".into()));
    }
    if cfg.processes <= 1 {
        return Ok(if cfg.workers == 1 { timely::Config::thread() } else { timely::Config::process(cfg.workers) });
    }
    if cfg.process >= cfg.processes {
        return Err(EngineError::Config(format!("--process {} is out of range for {} processes", cfg.process, cfg.processes)));
    }
    let addresses = match &cfg.hostfile {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| EngineError::Config(format!("hostfile {}: {e}", path.display())))?;
            let hosts: Vec<String> =
                text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(String::from).collect();
            if hosts.len() < cfg.processes {
                return Err(EngineError::Config(format!(
                    "hostfile {} lists {} hosts, expected {}",
                    path.display(),
                    hosts.len(),
                    cfg.processes
                )));
            }
            hosts.into_iter().take(cfg.processes).collect()
        }
        None => (0..cfg.processes).map(|i| format!("127.0.0.1:{}", 2101 + i)).collect(),
    };
    Ok(timely::Config {
        communication: timely::CommunicationConfig::Cluster {
            threads: cfg.workers,
            process: cfg.process,
            addresses,
            report: false,
            zerocopy: false,
        },
        worker: timely::WorkerConfig::default(),
    })
}

/// Backpressure distance: how far (event time) sources may run ahead of completed output.
fn max_lead(plan: &Plan) -> u64 {
    if let Some(l) = plan.spec.runtime.max_lead {
        return l.max(1) as u64;
    }
    let unit = match plan.window.as_ref().map(|w| w.kind) {
        Some(WindowKind::Tumbling { size }) => size,
        Some(WindowKind::Sliding { slide, .. }) => slide,
        Some(WindowKind::Session { gap }) => gap,
        None => time::MICROS_PER_SEC,
    };
    (2 * unit).max(time::MICROS_PER_SEC) as u64
}

fn open_source(plan: &Plan, worker: usize, workers: usize) -> Result<Box<dyn Source>, ConnectorError> {
    let decoder = || JsonDecoder::new(&plan.input);
    Ok(match &plan.spec.source {
        SourceSpec::Kafka(k) => {
            let time_pos = if plan.event_time() { plan.time_pos } else { None };
            let idle = plan.spec.time.idle_timeout.map(|us| Duration::from_micros(us as u64));
            // Partitions keep within the backpressure distance of each other.
            let align = time_pos.map(|_| max_lead(plan) as i64);
            Box::new(KafkaSource::open(k, worker, workers, decoder(), time_pos, idle, align)?)
        }
        SourceSpec::Generator(g) => Box::new(Generator::new(g, &plan.input, worker, workers)),
        SourceSpec::File { paths } => Box::new(FileSource::open(paths, worker, workers, decoder())?),
        SourceSpec::Stdin if worker == 0 => Box::new(StdinSource::spawn(decoder())),
        SourceSpec::Stdin => Box::new(Empty),
    })
}

/// A job set up on this process: its plan, counters and checkpointing, shared by the local
/// workers, each of which builds the job's dataflow ([`Prepared::build`]) and looks after each
/// step whether it is over ([`Prepared::poll`]). `run` hosts one job; `host` many.
pub struct Prepared {
    pub plan: Arc<Plan>,
    pub shared: Arc<Shared>,
    ckpt: Option<Arc<Checkpointing>>,
    lead: u64,
    stop: Option<Arc<AtomicBool>>,
    /// Stopped without checkpoints, the job drains instead of taking a savepoint.
    drain: bool,
    /// Setup failed on this process: the dataflow is built without input (see `host`).
    failed: bool,
    pub started: Instant,
}

/// Where a job stands after a worker step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    Running,
    /// Every source ended and every result is written.
    Finished,
    /// Stopped on request after committing its savepoint; the caller drops the dataflow.
    Savepointed,
}

impl Prepared {
    /// Checks the job's settings and checkpoints; `cfg` gives the cluster's shape.
    pub fn new(plan: Plan, cfg: &RunConfig) -> Result<Prepared, EngineError> {
        if let SourceSpec::File { paths } = &plan.spec.source {
            expand(paths)?;
        }
        if cfg.workers == 0 {
            return Err(EngineError::Config("--workers must be at least 1".into()));
        }
        let ckpt = checkpointing(&plan, cfg)?.map(Arc::new);
        let restoring = ckpt.as_ref().is_some_and(|c| c.restore.is_some());
        if cfg.process == 0 && !restoring {
            // Dead letters are written only if there are any: do not leave a previous run's file behind.
            if let DeadLetterSpec::File { path } = &plan.spec.dead_letter {
                match std::fs::remove_file(path) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(EngineError::Config(format!("cannot replace dead-letter file {path}: {e}")))
                    }
                    _ => {}
                }
            }
        }
        let lead = max_lead(&plan);
        let drain = ckpt.is_none();
        // Score steps: the versions the restored checkpoint recorded, else the registry's.
        let restored = ckpt.as_ref().and_then(|c| c.restore.as_ref()).map(|r| r.manifest.models.clone()).unwrap_or_default();
        let mut shared = Shared::new(cfg.workers);
        shared.models = scoring::resolve(&plan, &cfg.models, &restored)
            .map_err(|errors| EngineError::Config(errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n")))?;
        Ok(Prepared {
            plan: Arc::new(plan),
            shared: Arc::new(shared),
            ckpt,
            lead,
            stop: cfg.stop.clone(),
            drain,
            failed: false,
            started: Instant::now(),
        })
    }

    /// A job that could not be set up here: it reads nothing and reports `error`.
    pub fn failed(plan: Plan, cfg: &RunConfig, error: String) -> Prepared {
        let shared = Arc::new(Shared::new(cfg.workers));
        shared.error(error);
        let lead = max_lead(&plan);
        Prepared { plan: Arc::new(plan), shared, ckpt: None, lead, stop: None, drain: true, failed: true, started: Instant::now() }
    }

    pub fn has_checkpoints(&self) -> bool {
        self.ckpt.is_some()
    }

    /// Builds the job's dataflow on this worker; returns the probe that tells when it is done.
    pub fn build(&self, worker: &mut timely::worker::Worker) -> ProbeHandle<u64> {
        let (index, peers) = (worker.index(), worker.peers());
        let local = index % self.shared.watermarks.len().max(1);
        let source = match open_source(&self.plan, index, peers) {
            _ if self.failed => Box::new(Empty),
            Ok(src) => src,
            Err(e) => {
                self.shared.error(format!("worker {index}: {e}"));
                Box::new(Empty)
            }
        };
        build(worker, Arc::clone(&self.plan), source, Arc::clone(&self.shared), local, self.lead, self.ckpt.clone())
    }

    /// Called by each worker after a step.
    pub fn poll(&self, probe: &ProbeHandle<u64>) -> Progress {
        if probe.done() {
            return Progress::Finished;
        }
        let s = &self.shared;
        // Stopped without checkpoints: the sources end, and the job drains like a bounded one.
        if self.drain && self.stop.as_ref().is_some_and(|f| f.load(Ordering::SeqCst)) {
            s.end_sources.store(true, Ordering::SeqCst);
        }
        let Some(ck) = self.ckpt.as_ref() else { return Progress::Running };
        for e in ck.writer.take_errors() {
            s.error(e);
        }
        // Stopped with a savepoint: everything after it will be recomputed on restore.
        let savepoint = s.savepoint_epoch.load(Relaxed);
        if savepoint > 0 && s.committed_epoch.load(Relaxed) < savepoint {
            // Process 0 commits; the others learn of it from the manifest.
            if checkpoint::epoch_dir(&ck.root, savepoint).join("MANIFEST.json").exists() {
                s.committed_epoch.fetch_max(savepoint, Ordering::SeqCst);
            }
        }
        if savepoint > 0 && s.committed_epoch.load(Relaxed) >= savepoint {
            return Progress::Savepointed;
        }
        Progress::Running
    }

    /// This process's report, or the errors that failed the job.
    pub fn finish(&self) -> Result<RunReport, EngineError> {
        let errors = self.shared.errors();
        if !errors.is_empty() {
            return Err(EngineError::Failed(errors));
        }
        Ok(self.shared.report(self.started.elapsed()))
    }
}

/// Runs a job to completion on this process's workers and returns this process's report.
pub fn run(plan: Plan, cfg: &RunConfig) -> Result<RunReport, EngineError> {
    let config = timely_config(cfg)?;
    let job = Arc::new(Prepared::new(plan, cfg)?);
    let done = Arc::new(AtomicBool::new(false));
    let reporter = cfg.progress.then(|| spawn_progress(Arc::clone(&job.shared), Arc::clone(&done)));
    tracing::info!(job = %job.plan.spec.name, workers = cfg.workers, processes = cfg.processes, "job running");

    let j = Arc::clone(&job);
    let guards = timely::execute(config, move |worker| {
        let probe = j.build(worker);
        loop {
            worker.step_or_park(Some(Duration::from_millis(20)));
            match j.poll(&probe) {
                Progress::Running => {}
                Progress::Finished => break,
                Progress::Savepointed => {
                    // Timely would otherwise run the dataflow to its end after we return.
                    for id in worker.installed_dataflows() {
                        worker.drop_dataflow(id);
                    }
                    break;
                }
            }
        }
    })
    .map_err(EngineError::Timely)?;
    let results = guards.join();
    done.store(true, Ordering::SeqCst);
    if let Some(r) = reporter {
        let _ = r.join();
    }
    for r in results {
        r.map_err(EngineError::Worker)?;
    }
    let report = job.finish()?;
    tracing::info!(job = %job.plan.spec.name, events = report.events_in, rows = report.rows_out, "job finished");
    Ok(report)
}

fn spawn_progress(shared: Arc<Shared>, done: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut last = (Instant::now(), 0u64);
        while !done.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(100));
            if last.0.elapsed() < Duration::from_secs(1) {
                continue;
            }
            let events = shared.events_in.load(Relaxed);
            let rate = (events - last.1) as f64 / last.0.elapsed().as_secs_f64();
            last = (Instant::now(), events);
            let waiting = shared.sinks_waiting();
            let waiting = if waiting.is_empty() { String::new() } else { format!(" waiting: {}", waiting.join("; ")) };
            let _ = writeln!(
                std::io::stderr(),
                "[progress] events={events} rate={rate:.0}/s watermark={} windows={} rows_out={} late={} dead_letters={}{waiting}",
                fmt_watermark(shared.watermark()),
                shared.windows_fired.load(Relaxed),
                shared.rows_out.load(Relaxed),
                shared.late_dropped.load(Relaxed) + shared.late_side_output.load(Relaxed),
                shared.dead_letters.load(Relaxed),
            );
        }
    })
}
