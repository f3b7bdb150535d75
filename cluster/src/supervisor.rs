//! `tenantflow cluster start`: starts the cluster's processes (`tenantflow worker`) and keeps
//! them running. Timely cannot lose a process and go on, so when one dies the supervisor stops
//! the others and starts them all again, with exponential backoff; every job that was running
//! is then submitted again by the API and continues from its latest checkpoint. Too many
//! restarts in a short time (a crash loop) stop the cluster with a clear status.

use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

/// How the cluster is laid out and supervised (`tenantflow cluster start`).
#[derive(clap::Args)]
pub struct Supervise {
    /// Processes in the Timely cluster.
    #[arg(short = 'n', long, default_value_t = 1)]
    pub processes: usize,
    /// Worker threads per process.
    #[arg(short, long, default_value_t = 1)]
    pub workers: usize,
    /// File with one host:port per line (Timely's addresses), one line per process.
    #[arg(long)]
    pub hostfile: Option<PathBuf>,
    /// Where the cluster keeps its job book and state.
    #[arg(long, default_value = "tenantflow-data")]
    pub data_dir: PathBuf,
    /// Address the API listens on.
    #[arg(long, env = "TENANTFLOW_API", default_value = crate::DEFAULT_API)]
    pub api: String,
    /// First Timely port on 127.0.0.1 without a hostfile (one per process).
    #[arg(long, default_value_t = 2101)]
    pub port_base: u16,
    /// Process i serves /metrics on port METRICS_PORT_BASE + i (of its hostfile address).
    #[arg(long, default_value_t = 9464)]
    pub metrics_port_base: u16,
    /// Tenants per job with a metrics label of their own (the busiest); the rest are `other`.
    #[arg(long, default_value_t = 20)]
    pub metrics_top_tenants: usize,
    /// Restarts within --crash-window after which the supervisor gives up.
    #[arg(long, default_value_t = 5)]
    pub max_restarts: usize,
    /// e.g. 60s.
    #[arg(long, default_value = "60s", value_parser = crate::duration_arg)]
    pub crash_window: Duration,
}

const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

pub fn run(s: &Supervise, log_json: bool) -> anyhow::Result<std::process::ExitCode> {
    if s.processes == 0 || s.workers == 0 {
        anyhow::bail!("--processes and --workers must be at least 1");
    }
    std::fs::create_dir_all(&s.data_dir).with_context(|| format!("data dir {}", s.data_dir.display()))?;
    let hostfile = match &s.hostfile {
        Some(h) => h.clone(),
        None => {
            let path = s.data_dir.join("hosts");
            let hosts: String = (0..s.processes).map(|i| format!("127.0.0.1:{}\n", s.port_base as usize + i)).collect();
            std::fs::write(&path, hosts).with_context(|| format!("writing {}", path.display()))?;
            path
        }
    };
    std::fs::write(s.data_dir.join("supervisor.pid"), format!("{}\n", std::process::id()))?;
    let hosts = std::fs::read_to_string(&hostfile).with_context(|| format!("reading {}", hostfile.display()))?;
    let hosts: Vec<&str> = hosts.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
    if hosts.len() < s.processes {
        anyhow::bail!("hostfile {} lists {} hosts, expected {}", hostfile.display(), hosts.len(), s.processes);
    }
    let metrics: Vec<String> = (0..s.processes)
        .map(|i| {
            let host = hosts[i].rsplit_once(':').map_or(hosts[i], |(h, _)| h);
            format!("{host}:{}", s.metrics_port_base as usize + i)
        })
        .collect();
    // For a Prometheus scrape configuration.
    let file_sd = serde_json::json!([{"targets": metrics, "labels": {"cluster": "tenantflow"}}]);
    std::fs::write(s.data_dir.join("metrics-targets.json"), serde_json::to_vec_pretty(&file_sd)?)?;
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, Arc::clone(&stop)).context("installing a signal handler")?;
    }
    let exe = std::env::current_exe()?;
    // Processes at addresses of this machine are started here; those on other hosts are started
    // there (`tenantflow worker` with the same arguments, under a service manager that restarts
    // it: when one process dies, Timely ends the others).
    let local: Vec<bool> = hosts.iter().map(|h| is_local(h)).collect();
    if local.first() == Some(&false) {
        anyhow::bail!("process 0 ({}) must run on this machine: it serves the API", hosts[0]);
    }
    for (i, h) in hosts.iter().enumerate().take(s.processes).filter(|(i, _)| !local[*i]) {
        eprintln!("cluster: process {i} is on {h}; start it there with `tenantflow worker --process {i} --processes {}` and the same --hostfile, --workers and --metrics", s.processes);
    }
    let (mut restarts, mut backoff, mut recent): (u64, Duration, Vec<Instant>) = (0, Duration::ZERO, Vec::new());
    loop {
        let started = Instant::now();
        let mut children: Vec<Child> = Vec::new();
        for i in (0..s.processes).filter(|&i| local[i]) {
            let mut cmd = Command::new(&exe);
            if log_json {
                cmd.args(["--log-format", "json"]);
            }
            cmd.args(["worker", "--process", &i.to_string(), "--processes", &s.processes.to_string()])
                .args(["--workers", &s.workers.to_string(), "--hostfile"])
                .arg(&hostfile)
                .arg("--data-dir")
                .arg(&s.data_dir)
                .args(["--api", &s.api, "--restarts", &restarts.to_string(), "--last-backoff-ms", &backoff.as_millis().to_string()])
                .args(["--metrics", &metrics.join(","), "--metrics-top-tenants", &s.metrics_top_tenants.to_string()])
                .env("TENANTFLOW_SUPERVISED", "1");
            match cmd.spawn() {
                Ok(child) => children.push(child),
                Err(e) => {
                    // Leave no process of a half-started cluster behind.
                    for c in &mut children {
                        let _ = c.kill();
                        let _ = c.wait();
                    }
                    return Err(anyhow::Error::new(e).context("starting a cluster process"));
                }
            }
        }
        tracing::info!(processes = s.processes, restarts, "cluster started");
        eprintln!("cluster: {} process(es) x {} worker(s), API on http://{}", s.processes, s.workers, s.api);
        // Wait for a process to die or for a stop request.
        let died = loop {
            if stop.load(SeqCst) {
                break None;
            }
            if let Some((i, status)) = children.iter_mut().enumerate().find_map(|(i, c)| c.try_wait().ok().flatten().map(|st| (i, st))) {
                break Some((i, status));
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        // Timely cannot continue without a process: stop them all.
        for c in &mut children {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGKILL) };
            let _ = c.wait();
        }
        let Some((i, status)) = died else {
            eprintln!("cluster: stopped");
            let _ = std::fs::remove_file(s.data_dir.join("supervisor.pid"));
            return Ok(std::process::ExitCode::SUCCESS);
        };
        tracing::error!(process = i, %status, "cluster process died; restarting the cluster");
        eprintln!("cluster: process {i} exited ({status}); restarting all processes");
        // A cluster that ran for a while starts over with the shortest backoff.
        if started.elapsed() > s.crash_window {
            backoff = Duration::ZERO;
        }
        let now = Instant::now();
        recent.retain(|t| now.duration_since(*t) < s.crash_window);
        recent.push(now);
        if recent.len() > s.max_restarts {
            let message = format!(
                "crash loop: {} restarts within {:?}; the last: process {i} exited ({status}). Fix the cause and start the cluster again",
                recent.len(),
                s.crash_window
            );
            let _ = std::fs::write(
                s.data_dir.join("cluster-status.json"),
                serde_json::to_vec_pretty(&serde_json::json!({"state": "crash_loop", "restarts": restarts + 1, "message": message}))?,
            );
            tracing::error!("{message}");
            eprintln!("cluster: {message}");
            return Ok(std::process::ExitCode::from(3));
        }
        backoff = if backoff.is_zero() { BACKOFF_MIN } else { (backoff * 2).min(BACKOFF_MAX) };
        restarts += 1;
        std::thread::sleep(backoff);
        if stop.load(SeqCst) {
            return Ok(std::process::ExitCode::SUCCESS);
        }
    }
}

/// Whether `host:port`'s address belongs to this machine (it can be bound here).
fn is_local(host_port: &str) -> bool {
    let host = host_port.rsplit_once(':').map_or(host_port, |(h, _)| h);
    std::net::TcpListener::bind((host, 0)).is_ok()
}
