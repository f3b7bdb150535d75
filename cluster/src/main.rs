//! `tenantflow`: the command-line entry point: run, validate and demo a job in this process;
//! start a cluster (`cluster start`, whose processes are `worker`s) and drive it through its API
//! (`job ...`, `cluster status|stop`).

mod api;
mod client;
mod metrics;
mod models;
mod supervisor;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use tenantflow_connectors::kafka::DevCluster;
use tenantflow_core::job::DeadLetterSpec;
use tenantflow_core::plan;
use tenantflow_engine::{run, RestoreFrom, RunConfig, RunReport, TenantStats};

/// The quickstart job, embedded so `tenantflow demo` works from any directory.
const QUICKSTART: &str = include_str!("../../jobs/quickstart.toml");

#[derive(Parser)]
#[command(name = "tenantflow", version, about = "Multi-tenant stream analytics on Timely Dataflow")]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Worker threads per process.
    #[arg(short, long, default_value_t = 1, env = "TENANTFLOW_WORKERS")]
    workers: usize,
    /// Processes in the Timely cluster (each started with its own --process index).
    #[arg(short = 'n', long, default_value_t = 1)]
    processes: usize,
    /// This process's index, 0-based.
    #[arg(short, long, default_value_t = 0)]
    process: usize,
    /// File with one host:port per line, one line per process (default: 127.0.0.1:2101, :2102, ...).
    #[arg(long)]
    hostfile: Option<PathBuf>,
    /// Override a job setting, e.g. --set source.events=1000 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// No progress lines and no summary on stderr.
    #[arg(short, long)]
    quiet: bool,
    /// Continue from a checkpoint: `latest` (the newest complete one in the job's checkpoint
    /// directory, or a fresh start if there is none) or a checkpoint directory.
    #[arg(long, value_name = "latest|PATH")]
    restore: Option<String>,
    /// Time between checkpoints (overrides `[checkpoint] interval`), e.g. 5s.
    #[arg(long, value_name = "DURATION", value_parser = duration_arg)]
    checkpoint_interval: Option<std::time::Duration>,
    #[command(flatten)]
    models: ModelArgs,
}

/// Where score steps find their models.
#[derive(clap::Args)]
struct ModelArgs {
    /// The model registry directory (default: `models` beside the job file).
    #[arg(long, value_name = "DIR", env = "TENANTFLOW_MODELS")]
    models: Option<PathBuf>,
    /// The ONNX Runtime library (default: $TENANTFLOW_ONNXRUNTIME, else .onnxruntime/ in this
    /// directory or a parent, where scripts/setup.sh puts it).
    #[arg(long, value_name = "PATH")]
    onnxruntime: Option<PathBuf>,
}

impl ModelArgs {
    fn config(&self, job: &std::path::Path) -> tenantflow_engine::scoring::ModelConfig {
        let beside = job.parent().map(|d| d.join("models")).filter(|d| d.is_dir());
        tenantflow_engine::scoring::ModelConfig { registry: self.models.clone().or(beside), onnxruntime: self.onnxruntime.clone() }
    }
}

/// Where the cluster's API is.
#[derive(clap::Args)]
struct ApiArgs {
    /// The cluster API's address.
    #[arg(long, env = "TENANTFLOW_API", default_value = DEFAULT_API)]
    api: String,
    /// Tables for people, JSON for scripts.
    #[arg(short, long, value_enum, default_value_t = client::Output::Table)]
    output: client::Output,
}

const DEFAULT_API: &str = "127.0.0.1:8088";

/// A duration argument such as `500ms`, `10s` or `1m`.
fn duration_arg(text: &str) -> Result<std::time::Duration, String> {
    match tenantflow_core::time::parse_duration(text) {
        Some(us) if us > 0 => Ok(std::time::Duration::from_micros(us as u64)),
        _ => Err(format!("invalid duration \"{text}\" (expected e.g. \"500ms\", \"10s\")")),
    }
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Start a cluster: N processes (local, or per hostfile) with a coordinator and the API in
    /// process 0, supervised and restarted when one dies.
    Start(supervisor::Supervise),
    /// The cluster's processes, workers, uptime and restarts.
    Status {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Stop every process of the cluster (jobs continue from their checkpoints at the next start).
    Stop {
        #[command(flatten)]
        api: ApiArgs,
    },
}

#[derive(Subcommand)]
enum JobCommand {
    /// Submit a job file to the cluster.
    Submit {
        file: PathBuf,
        /// Continue from the job's latest checkpoint (e.g. after `cancel --savepoint`).
        #[arg(long)]
        restore: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// The cluster's jobs.
    List {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// A job's state, throughput, watermark, last checkpoint and last error.
    Describe {
        id: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Stop a job, optionally with a savepoint to continue from later.
    Cancel {
        id: String,
        #[arg(long)]
        savepoint: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
}

#[derive(Subcommand)]
enum SilenceCommand {
    /// Mute alerts whose labels match every matcher, e.g. `tenant="acme"` `severity=~"warning|info"`.
    Add {
        /// Matchers in Alertmanager's syntax: name=value, name!=value, name=~regex, name!~regex.
        #[arg(required = true)]
        matchers: Vec<String>,
        /// How long the silence lasts, from now.
        #[arg(long, default_value = "1h")]
        duration: String,
        #[arg(long, default_value_t = default_author())]
        author: String,
        #[arg(long, default_value = "")]
        comment: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Silences with their state (pending, active, expired).
    List {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// End a silence now.
    Expire {
        id: String,
        #[command(flatten)]
        api: ApiArgs,
    },
}

fn default_author() -> String {
    std::env::var("USER").unwrap_or_else(|_| "tenantflow".into())
}

#[derive(Subcommand)]
enum Command {
    /// A tenantflow cluster: start, status, stop.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Jobs on a running cluster: submit, list, describe, cancel.
    #[command(subcommand)]
    Job(JobCommand),
    /// Silences on a running cluster: mute alerts matching labels for a while.
    #[command(subcommand)]
    Silence(SilenceCommand),
    /// The model registry, on a running cluster or a directory: upload, list, describe,
    /// promote, rollback, shadow.
    #[command(subcommand)]
    Model(models::ModelCommand),
    /// One process of a cluster (started by `cluster start`, or by hand on each host of a
    /// hostfile); process 0 serves the API.
    Worker {
        #[arg(long)]
        process: usize,
        #[arg(long)]
        processes: usize,
        #[arg(long, default_value_t = 1)]
        workers: usize,
        #[arg(long)]
        hostfile: Option<PathBuf>,
        #[arg(long, default_value = "tenantflow-data")]
        data_dir: PathBuf,
        #[arg(long, default_value = DEFAULT_API)]
        api: String,
        /// Every process's metrics address (`/metrics`, `/status`), in process order.
        #[arg(long, value_delimiter = ',')]
        metrics: Vec<String>,
        #[arg(long, default_value_t = 20)]
        metrics_top_tenants: usize,
        /// Set by the supervisor: how often the cluster was restarted, and the last backoff.
        #[arg(long, default_value_t = 0)]
        restarts: u64,
        #[arg(long, default_value_t = 0)]
        last_backoff_ms: u64,
    },
    /// Run a job file until its sources are exhausted (forever for unbounded sources).
    Run {
        /// The job file (TOML).
        job: PathBuf,
        #[command(flatten)]
        args: RunArgs,
    },
    /// Check a job file without running it; prints every problem with file:line:column.
    Validate {
        job: PathBuf,
        /// Override a job setting, as for `run`.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        #[command(flatten)]
        models: ModelArgs,
    },
    /// Run the quickstart job on generated music-streaming events and print window results.
    Demo {
        #[command(flatten)]
        args: RunArgs,
    },
    /// Start a development Kafka cluster (librdkafka's mock brokers on 127.0.0.1) with the given
    /// topics, print its bootstrap address, write it to a file, and run until stopped.
    DevKafka {
        /// Topics to create.
        #[arg(required = true)]
        topics: Vec<String>,
        /// Number of brokers.
        #[arg(long, default_value_t = 1)]
        brokers: i32,
        /// Partitions per topic.
        #[arg(long, default_value_t = 4)]
        partitions: i32,
        /// Where to write the bootstrap address (jobs can read it with `bootstrap_file`).
        #[arg(long, default_value = "dev-kafka.bootstrap")]
        bootstrap_file: PathBuf,
    },
}

/// Logs go to stderr; `TENANTFLOW_LOG` sets the level (e.g. `info`, `tenantflow_engine=debug`).
/// Cluster processes log job lifecycle events (submitted, running, checkpointed, failed,
/// restored, cancelled) at `info` by default, one line each; single runs only warnings.
fn init_logs(format: LogFormat, default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TENANTFLOW_LOG").unwrap_or_else(|_| default.into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let cluster_process = matches!(cli.command, Command::Worker { .. } | Command::Cluster(ClusterCommand::Start(_)));
    init_logs(cli.log_format, if cluster_process { "info" } else { "warn" });
    match execute(cli.command, cli.log_format) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn execute(command: Command, log_format: LogFormat) -> anyhow::Result<ExitCode> {
    match command {
        Command::Cluster(ClusterCommand::Start(s)) => supervisor::run(&s, matches!(log_format, LogFormat::Json)),
        Command::Cluster(ClusterCommand::Status { api }) => {
            client::Client::new(&api.api).cluster_status(api.output).map(|()| ExitCode::SUCCESS)
        }
        Command::Cluster(ClusterCommand::Stop { api }) => {
            client::Client::new(&api.api).cluster_stop(api.output).map(|()| ExitCode::SUCCESS)
        }
        Command::Job(JobCommand::Submit { file, restore, api }) => {
            client::Client::new(&api.api).submit(&file, restore, api.output).map(|()| ExitCode::SUCCESS)
        }
        Command::Silence(SilenceCommand::Add { matchers, duration, author, comment, api }) => {
            client::Client::new(&api.api).silence_add(&matchers, &duration, &author, &comment, api.output).map(|()| ExitCode::SUCCESS)
        }
        Command::Silence(SilenceCommand::List { api }) => {
            client::Client::new(&api.api).silence_list(api.output).map(|()| ExitCode::SUCCESS)
        }
        Command::Silence(SilenceCommand::Expire { id, api }) => {
            client::Client::new(&api.api).silence_expire(&id, api.output).map(|()| ExitCode::SUCCESS)
        }
        Command::Model(cmd) => models::execute(cmd).map(|()| ExitCode::SUCCESS),
        Command::Job(JobCommand::List { api }) => client::Client::new(&api.api).list(api.output).map(|()| ExitCode::SUCCESS),
        Command::Job(JobCommand::Describe { id, api }) => {
            client::Client::new(&api.api).describe(&id, api.output).map(|()| ExitCode::SUCCESS)
        }
        Command::Job(JobCommand::Cancel { id, savepoint, api }) => {
            client::Client::new(&api.api).cancel(&id, savepoint, api.output).map(|()| ExitCode::SUCCESS)
        }
        Command::Worker {
            process,
            processes,
            workers,
            hostfile,
            data_dir,
            api,
            metrics: metrics_addrs,
            metrics_top_tenants,
            restarts,
            last_backoff_ms,
        } => {
            let registry = Arc::new(tenantflow_engine::host::Registry::default());
            if let Some(addr) = metrics_addrs.get(process) {
                let exporter = metrics::Exporter {
                    registry: Arc::clone(&registry),
                    process,
                    workers,
                    top_tenants: metrics_top_tenants,
                    started: std::time::Instant::now(),
                    restarts,
                    last_backoff_ms,
                };
                metrics::serve(exporter, addr)?;
            }
            let commands = if process == 0 {
                let (control, rx) = tenantflow_engine::host::Control::new(Arc::clone(&registry));
                let info = api::ClusterInfo {
                    processes,
                    workers,
                    restarts,
                    last_backoff_ms,
                    started: std::time::Instant::now(),
                    supervised: std::env::var_os("TENANTFLOW_SUPERVISED").is_some(),
                    peers: metrics_addrs.iter().skip(1).cloned().collect(),
                };
                api::serve(api::Api::open(control, data_dir.clone(), info)?, &api)?;
                Some(rx)
            } else {
                None
            };
            let models = tenantflow_engine::scoring::ModelConfig { registry: Some(data_dir.join("models")), onnxruntime: None };
            let cfg = tenantflow_engine::host::HostConfig { workers, processes, process, hostfile, models };
            tenantflow_engine::host::serve(cfg, registry, commands)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Validate { job, set, models } => {
            let name = job.display().to_string();
            let text = std::fs::read_to_string(&job).with_context(|| format!("cannot read {name}"))?;
            let checked = plan::load(&name, &text, &set).and_then(|p| {
                // Score steps: the models must exist and fit.
                match tenantflow_engine::scoring::resolve(&p, &models.config(&job), &Default::default()) {
                    Ok(_) => Ok(p),
                    Err(errors) => Err(tenantflow_core::JobErrors(errors)),
                }
            });
            match checked {
                Ok(p) => {
                    let fields: Vec<String> = p.output.fields().iter().map(|(n, t)| format!("{n} {t}")).collect();
                    println!("{name}: ok (job `{}`; output: {})", p.spec.name, fields.join(", "));
                    Ok(ExitCode::SUCCESS)
                }
                Err(errors) => {
                    eprintln!("{errors}");
                    Ok(ExitCode::from(2))
                }
            }
        }
        Command::Run { job, args } => {
            let name = job.display().to_string();
            let text = std::fs::read_to_string(&job).with_context(|| format!("cannot read {name}"))?;
            run_text(&name, &text, &args, args.models.config(&job))
        }
        Command::Demo { args } => run_text("jobs/quickstart.toml", QUICKSTART, &args, Default::default()),
        Command::DevKafka { topics, brokers, partitions, bootstrap_file } => {
            let cluster = DevCluster::start(brokers, &topics, partitions)?;
            let bootstrap = cluster.bootstrap_servers();
            std::fs::write(&bootstrap_file, format!("{bootstrap}\n"))
                .with_context(|| format!("cannot write {}", bootstrap_file.display()))?;
            println!("{bootstrap}");
            eprintln!(
                "dev-kafka: {brokers} broker(s), topics {} with {partitions} partition(s) each; bootstrap written to {}; stop with Ctrl-C",
                topics.join(", "),
                bootstrap_file.display()
            );
            // The brokers live in this process; keep it (and them) alive until it is stopped.
            loop {
                std::thread::sleep(std::time::Duration::from_secs(3600));
            }
        }
    }
}

fn run_text(name: &str, text: &str, args: &RunArgs, models: tenantflow_engine::scoring::ModelConfig) -> anyhow::Result<ExitCode> {
    let plan = match plan::load(name, text, &args.set) {
        Ok(p) => p,
        Err(errors) => {
            eprintln!("{errors}");
            return Ok(ExitCode::from(2));
        }
    };
    let dead_path = match &plan.spec.dead_letter {
        DeadLetterSpec::File { path } => path.clone(),
        DeadLetterSpec::Kafka(k) => format!("kafka topic {}", k.topic),
    };
    let restore = args.restore.as_deref().map(|r| if r == "latest" { RestoreFrom::Latest } else { RestoreFrom::Path(PathBuf::from(r)) });
    // SIGTERM or Ctrl-C stops the job: with a savepoint when it has checkpoints, else by ending
    // the sources and draining. A second one kills it.
    let flag = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register_conditional_shutdown(signal, 130, Arc::clone(&flag)).context("installing a signal handler")?;
        signal_hook::flag::register(signal, Arc::clone(&flag)).context("installing a signal handler")?;
    }
    let stop = Some(flag);
    let cfg = RunConfig {
        stop,
        workers: args.workers,
        processes: args.processes,
        process: args.process,
        hostfile: args.hostfile.clone(),
        progress: !args.quiet,
        restore,
        checkpoint_interval: args.checkpoint_interval,
        models,
    };
    let report = run(plan, &cfg)?;
    if let Some(epoch) = report.savepoint {
        eprintln!("stopped with savepoint {epoch}; continue with --restore latest");
    }
    if !args.quiet {
        summary(&report, &dead_path);
    }
    Ok(ExitCode::SUCCESS)
}

fn summary(r: &RunReport, dead_path: &str) {
    let secs = r.elapsed.as_secs_f64().max(1e-9);
    eprintln!(
        "done: {} events in {:.2}s ({:.0}/s), {} windows, {} rows out, {} late dropped, {} late to side output, {} late updates, {} dead letters{}",
        r.events_in,
        secs,
        r.events_in as f64 / secs,
        r.windows_fired,
        r.rows_out,
        r.late_dropped,
        r.late_side_output,
        r.late_updates,
        r.dead_letters,
        if r.dead_letters > 0 { format!(" (in {dead_path})") } else { String::new() }
    );
    if r.pattern_matches + r.pattern_timeouts + r.partial_matches_dropped > 0 {
        eprintln!(
            "patterns: {} matches, {} timeouts, {} partial matches dropped at the per-key cap",
            r.pattern_matches, r.pattern_timeouts, r.partial_matches_dropped
        );
    }
    for m in &r.models {
        eprintln!(
            "model {} v{} ({}): {} rows scored in {} batches, {} features defaulted, {} rows skipped, {} failed{}{}",
            m.model,
            m.version,
            m.runtime,
            m.rows,
            m.batches,
            m.defaulted,
            m.skipped,
            m.errors,
            match m.other_tenants {
                0 => String::new(),
                n => format!(", {n} rows of other tenants left unscored"),
            },
            match m.shadow_version {
                Some(v) => format!("; shadow v{v}: {} of {} rows disagree", m.shadow_disagreements, m.shadow_rows),
                None => String::new(),
            }
        );
        if m.drift_windows > 0 {
            let psi: Vec<String> = m.drift.iter().map(|(f, p)| format!("{f} {p:.3}")).collect();
            eprintln!("model {} drift (PSI, latest of {} windows): {}", m.model, m.drift_windows, psi.join(", "));
        }
    }
    // The busiest tenants first; the rest summed, so a job with many tenants stays readable.
    let mut tenants: Vec<_> = r.tenants.iter().collect();
    tenants.sort_by(|a, b| b.1.events_in.cmp(&a.1.events_in).then(a.0.cmp(b.0)));
    eprintln!("{:<24} {:>12} {:>12} {:>10} {:>14}", "tenant", "events_in", "events_out", "late", "dead_lettered");
    for (name, t) in tenants.iter().take(10) {
        eprintln!("{:<24} {:>12} {:>12} {:>10} {:>14}", name, t.events_in, t.events_out, t.late, t.dead_lettered);
    }
    if tenants.len() > 10 {
        let rest = tenants[10..].iter().fold(TenantStats::default(), |mut acc, (_, t)| {
            acc.events_in += t.events_in;
            acc.events_out += t.events_out;
            acc.late += t.late;
            acc.dead_lettered += t.dead_lettered;
            acc
        });
        let label = format!("({} more)", tenants.len() - 10);
        eprintln!("{:<24} {:>12} {:>12} {:>10} {:>14}", label, rest.events_in, rest.events_out, rest.late, rest.dead_lettered);
    }
}
