//! The cluster's HTTP API, served by process 0 (the coordinator): submit, list, describe and
//! cancel jobs, cluster status, health. JSON in and out; every error is
//! `{"error": {"code", "message", ...}}` with a status that fits. Documented in docs/api.md.
//!
//! The API keeps the book of submitted jobs in `<data-dir>/jobs.json`, so that after a restart
//! of the cluster every job that was running is submitted again and continues from its latest
//! checkpoint.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tenantflow_engine::host::{Action, Control, JobState, JobStatus};

/// What `GET /api/v1/cluster` reports about the processes (set by the supervisor).
#[derive(Clone, Debug)]
pub struct ClusterInfo {
    pub processes: usize,
    pub workers: usize,
    pub restarts: u64,
    pub last_backoff_ms: u64,
    pub started: Instant,
    /// Whether a supervisor runs this process (then `cluster stop` signals it).
    pub supervised: bool,
    /// The other processes' metrics servers, whose `/status` the API sums job counters over.
    pub peers: Vec<String>,
}

/// A submitted job as the book keeps it.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct JobRecord {
    id: String,
    name: String,
    text: String,
    submitted_unix_ms: u64,
    /// The last state seen; jobs not yet ended are submitted again after a restart.
    state: Option<JobState>,
}

#[derive(Default, Serialize, Deserialize)]
struct Book {
    next: u64,
    jobs: BTreeMap<String, JobRecord>,
}

pub struct Api {
    control: Control,
    book: Mutex<Book>,
    data_dir: PathBuf,
    cluster: ClusterInfo,
    /// The other processes' job statuses, by job id, as last fetched (with the processes that
    /// answered).
    peer_statuses: Mutex<(BTreeMap<String, Vec<JobStatus>>, usize)>,
    /// Per job, recent (time, events in over all processes) samples: the current throughput.
    samples: Mutex<BTreeMap<String, std::collections::VecDeque<(Instant, u64)>>>,
    agent: ureq::Agent,
    /// The cluster's silences (`<data-dir>/silences.json`), shared with every job's alert manager.
    silences: tenantflow_alerts::Silences,
}

/// The window over which `events_per_sec` is measured.
const RATE_WINDOW: Duration = Duration::from_secs(5);

type Shared = Arc<Api>;

impl Api {
    /// Loads the book and submits again the jobs that had not ended.
    pub fn open(control: Control, data_dir: PathBuf, cluster: ClusterInfo) -> anyhow::Result<Api> {
        std::fs::create_dir_all(&data_dir)?;
        // Before any job is submitted again: every job's alert manager must see these.
        let silences = tenantflow_alerts::Silences::open(Some(data_dir.join("silences.json")))?;
        tenantflow_engine::alerting::set_silences(silences.clone());
        let path = data_dir.join("jobs.json");
        let book: Book = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Book::default(),
            Err(e) => return Err(anyhow::anyhow!("{}: {e}", path.display())),
        };
        for r in book.jobs.values().filter(|r| r.state.is_none_or(|s| !s.is_terminal())) {
            tracing::info!(job = %r.id, "job restored after a cluster restart");
            control.send(Action::Submit { id: r.id.clone(), name: r.name.clone(), text: r.text.clone(), restore: true });
            // A cancel with savepoint that the restart interrupted goes on.
            if r.state == Some(JobState::Stopping) {
                control.send(Action::Cancel { id: r.id.clone(), savepoint: true });
            }
        }
        let agent = ureq::Agent::config_builder().timeout_global(Some(Duration::from_millis(500))).build().into();
        Ok(Api {
            silences,
            control,
            book: Mutex::new(book),
            data_dir,
            cluster,
            peer_statuses: Mutex::new((BTreeMap::new(), 0)),
            samples: Mutex::new(BTreeMap::new()),
            agent,
        })
    }

    /// Writes the book atomically and durably (temporary file, fsync, rename, directory fsync).
    fn save(&self, book: &Book) -> std::io::Result<()> {
        let path = self.data_dir.join("jobs.json");
        let written = serde_json::to_vec_pretty(book)
            .map_err(std::io::Error::other)
            .and_then(|bytes| tenantflow_engine::checkpoint::write_atomic(&path, &bytes));
        if let Err(e) = &written {
            tracing::error!("cannot save {}: {e}", path.display());
        }
        written
    }

    /// Records ended jobs in the book; cancels failed ones everywhere (a failure seen here must
    /// not leave the job half-running on other processes).
    fn sync(&self) {
        let mut peers: BTreeMap<String, Vec<JobStatus>> = BTreeMap::new();
        let mut answered = 0;
        for addr in &self.cluster.peers {
            let fetched = self
                .agent
                .get(format!("http://{addr}/status"))
                .call()
                .ok()
                .and_then(|mut r| r.body_mut().read_json::<Vec<JobStatus>>().ok());
            if let Some(statuses) = fetched {
                answered += 1;
                for s in statuses {
                    peers.entry(s.id.clone()).or_default().push(s);
                }
            }
        }
        let mut statuses = self.control.registry().statuses();
        // A job that failed on another process fails everywhere.
        for s in &mut statuses {
            if peers.get(&s.id).is_some_and(|p| p.iter().any(|p| p.state == JobState::Failed)) && !s.state.is_terminal() {
                s.state = JobState::Failed;
            }
        }
        // Throughput samples, over all processes.
        if let Ok(mut samples) = self.samples.lock() {
            let now = Instant::now();
            samples.retain(|id, _| statuses.iter().any(|s| &s.id == id));
            for s in &statuses {
                let total = s.events_in + peers.get(&s.id).map_or(0, |p| p.iter().map(|p| p.events_in).sum());
                let ring = samples.entry(s.id.clone()).or_default();
                ring.push_back((now, total));
                while ring.len() > 2 && ring.front().is_some_and(|(t, _)| now.duration_since(*t) > RATE_WINDOW) {
                    ring.pop_front();
                }
            }
        }
        if let Ok(mut p) = self.peer_statuses.lock() {
            *p = (peers, answered);
        }
        let Ok(mut book) = self.book.lock() else { return };
        let mut changed = false;
        for status in statuses {
            let Some(record) = book.jobs.get_mut(&status.id) else { continue };
            if record.state != Some(status.state) {
                if status.state == JobState::Failed && record.state != Some(JobState::Failed) {
                    self.control.send(Action::Cancel { id: status.id.clone(), savepoint: false });
                }
                // A failed job stays failed once cancelled.
                if !(record.state == Some(JobState::Failed) && status.state == JobState::Cancelled) {
                    record.state = Some(status.state);
                    changed = true;
                }
            }
        }
        if changed {
            let _ = self.save(&book);
        }
    }
}

/// Serves the API on `addr` from a thread of its own; returns once it listens.
pub fn serve(api: Api, addr: &str) -> anyhow::Result<()> {
    let listener = std::net::TcpListener::bind(addr).map_err(|e| anyhow::anyhow!("API address {addr}: {e}"))?;
    listener.set_nonblocking(true)?;
    let api: Shared = Arc::new(api);
    let syncing = Arc::clone(&api);
    std::thread::Builder::new().name("api-sync".into()).spawn(move || loop {
        syncing.sync();
        std::thread::sleep(Duration::from_millis(200));
    })?;
    std::thread::Builder::new().name("api".into()).spawn(move || {
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(r) => r,
            Err(e) => {
                tracing::error!("API runtime: {e}");
                return;
            }
        };
        runtime.block_on(async move {
            let listener = match tokio::net::TcpListener::from_std(listener) {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!("API listener: {e}");
                    return;
                }
            };
            if let Err(e) = axum::serve(listener, router(api)).await {
                tracing::error!("API server: {e}");
            }
        });
    })?;
    Ok(())
}

fn router(api: Shared) -> Router {
    let models = crate::models::router(Arc::new(tenantflow_ml::Registry::open(api.data_dir.join("models"))));
    Router::new()
        .route("/api/v1/jobs", post(submit).get(list))
        .route("/api/v1/jobs/{id}", get(describe).delete(cancel))
        .route("/api/v1/silences", post(add_silence).get(list_silences))
        .route("/api/v1/silences/{id}", get(get_silence).delete(expire_silence))
        .route("/api/v1/cluster", get(cluster))
        .route("/api/v1/cluster/stop", post(stop))
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(ready))
        .with_state(api)
        .merge(models)
        .fallback(|| async { error(StatusCode::NOT_FOUND, "not_found", "no such endpoint".into()) })
}

fn error(status: StatusCode, code: &str, message: String) -> Response {
    (status, Json(json!({"error": {"code": code, "message": message}}))).into_response()
}

#[derive(Deserialize)]
struct SubmitQuery {
    /// The job file's name, for error messages.
    file: Option<String>,
    /// Continue from the job's latest checkpoint (e.g. after `cancel --savepoint`).
    restore: Option<bool>,
}

async fn submit(State(api): State<Shared>, Query(q): Query<SubmitQuery>, body: String) -> Response {
    let file = q.file.unwrap_or_else(|| "job.toml".into());
    let models = tenantflow_engine::scoring::ModelConfig { registry: Some(api.data_dir.join("models")), onnxruntime: None };
    let checked = tenantflow_core::plan::load(&file, &body, &[]).and_then(|p| {
        // Score steps: the models must be in the cluster's registry and fit the job.
        match tenantflow_engine::scoring::resolve(&p, &models, &Default::default()) {
            Ok(_) => Ok(p),
            Err(errors) => Err(tenantflow_core::JobErrors(errors)),
        }
    });
    let plan = match checked {
        Ok(p) => p,
        Err(errors) => {
            let problems: Vec<_> = errors
                .0
                .iter()
                .map(|e| json!({"file": e.file, "line": e.line, "column": e.column, "key": e.key, "message": e.message}))
                .collect();
            let body = json!({"error": {"code": "invalid_job", "message": errors.to_string(), "problems": problems}});
            return (StatusCode::UNPROCESSABLE_ENTITY, Json(body)).into_response();
        }
    };
    let name = plan.spec.name.clone();
    let record = {
        let Ok(mut book) = api.book.lock() else { return error(StatusCode::INTERNAL_SERVER_ERROR, "internal", "job book".into()) };
        book.next += 1;
        let id = format!("{}-{}", slug(&name), book.next);
        let record = JobRecord { id: id.clone(), name, text: body, submitted_unix_ms: unix_ms(), state: None };
        book.jobs.insert(id.clone(), record.clone());
        // Accepted only once it is on disk: a restart submits it again.
        if let Err(e) = api.save(&book) {
            book.jobs.remove(&id);
            return error(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("cannot save the job book: {e}"));
        }
        record
    };
    let action =
        Action::Submit { id: record.id.clone(), name: record.name.clone(), text: record.text.clone(), restore: q.restore.unwrap_or(false) };
    if !api.control.send(action) {
        if let Ok(mut book) = api.book.lock() {
            book.jobs.remove(&record.id);
            let _ = api.save(&book);
        }
        return error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "the cluster is not running".into());
    }
    tracing::info!(job = %record.id, name = %record.name, "job submitted");
    (StatusCode::CREATED, Json(view(&api, &record))).into_response()
}

async fn list(State(api): State<Shared>) -> Response {
    let records: Vec<JobRecord> = api.book.lock().map(|b| b.jobs.values().cloned().collect()).unwrap_or_default();
    Json(records.iter().map(|r| view(&api, r)).collect::<Vec<_>>()).into_response()
}

async fn describe(State(api): State<Shared>, Path(id): Path<String>) -> Response {
    match record(&api, &id) {
        Some(r) => Json(view(&api, &r)).into_response(),
        None => error(StatusCode::NOT_FOUND, "not_found", format!("no job `{id}`")),
    }
}

#[derive(Deserialize)]
struct CancelQuery {
    savepoint: Option<bool>,
}

async fn cancel(State(api): State<Shared>, Path(id): Path<String>, Query(q): Query<CancelQuery>) -> Response {
    let Some(r) = record(&api, &id) else { return error(StatusCode::NOT_FOUND, "not_found", format!("no job `{id}`")) };
    let state = api.control.registry().status(&id).map(|s| s.state).or(r.state);
    if let Some(s) = state.filter(|s| s.is_terminal()) {
        return error(StatusCode::CONFLICT, "already_ended", format!("job `{id}` has already ended ({})", state_name(Some(s))));
    }
    if !api.control.send(Action::Cancel { id: id.clone(), savepoint: q.savepoint.unwrap_or(false) }) {
        return error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "the cluster is not running".into());
    }
    tracing::info!(job = %id, savepoint = q.savepoint.unwrap_or(false), "job cancel requested");
    (StatusCode::ACCEPTED, Json(view(&api, &r))).into_response()
}

/// A silence request: matchers in Alertmanager's syntax, and either `ends_at` or `duration`.
#[derive(Deserialize)]
struct SilenceRequest {
    matchers: Vec<String>,
    /// RFC 3339; default now.
    starts_at: Option<String>,
    ends_at: Option<String>,
    /// e.g. "2h" (from `starts_at`).
    duration: Option<String>,
    #[serde(default)]
    created_by: String,
    #[serde(default)]
    comment: String,
}

fn silence_view(s: &tenantflow_alerts::Silence) -> serde_json::Value {
    let fmt = tenantflow_core::time::format_rfc3339;
    json!({
        "id": s.id,
        "matchers": s.matchers.iter().map(|m| m.to_string()).collect::<Vec<_>>(),
        "starts_at": fmt(s.starts_at),
        "ends_at": fmt(s.ends_at),
        "state": s.state(tenantflow_core::time::now_micros()),
        "created_by": s.created_by,
        "comment": s.comment,
    })
}

async fn add_silence(State(api): State<Shared>, body: String) -> Response {
    let invalid = |m: String| error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_silence", m);
    let req: SilenceRequest = match serde_json::from_str(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad_request", format!("expected a JSON silence: {e}")),
    };
    let mut matchers = Vec::new();
    for m in &req.matchers {
        match tenantflow_core::alerting::Matcher::parse(m) {
            Ok(m) => matchers.push(m),
            Err(e) => return invalid(e),
        }
    }
    let time = |s: &str| tenantflow_core::time::parse_timestamp(s).ok_or_else(|| format!("invalid time \"{s}\" (expected RFC 3339)"));
    let starts_at = match req.starts_at.as_deref().map(time).transpose() {
        Ok(t) => t.unwrap_or_else(tenantflow_core::time::now_micros),
        Err(e) => return invalid(e),
    };
    let ends_at = match (req.ends_at.as_deref(), req.duration.as_deref()) {
        (Some(e), None) => time(e),
        (None, Some(d)) => tenantflow_core::time::parse_duration(d)
            .map(|d| starts_at.saturating_add(d))
            .ok_or_else(|| format!("invalid duration \"{d}\" (expected e.g. \"2h\")")),
        _ => Err("give either ends_at or duration".to_string()),
    };
    let ends_at = match ends_at {
        Ok(t) => t,
        Err(e) => return invalid(e),
    };
    match api.silences.add(matchers, starts_at, ends_at, &req.created_by, &req.comment) {
        Ok(s) => {
            tracing::info!(silence = %s.id, matchers = ?req.matchers, "silence created");
            (StatusCode::CREATED, Json(silence_view(&s))).into_response()
        }
        Err(tenantflow_alerts::AlertError::InvalidSilence(m)) => invalid(m),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()),
    }
}

async fn list_silences(State(api): State<Shared>) -> Response {
    Json(api.silences.list().iter().map(silence_view).collect::<Vec<_>>()).into_response()
}

async fn get_silence(State(api): State<Shared>, Path(id): Path<String>) -> Response {
    match api.silences.get(&id) {
        Some(s) => Json(silence_view(&s)).into_response(),
        None => error(StatusCode::NOT_FOUND, "not_found", format!("no silence `{id}`")),
    }
}

async fn expire_silence(State(api): State<Shared>, Path(id): Path<String>) -> Response {
    let now = tenantflow_core::time::now_micros();
    match api.silences.get(&id) {
        None => return error(StatusCode::NOT_FOUND, "not_found", format!("no silence `{id}`")),
        Some(s) if s.state(now) == tenantflow_alerts::SilenceState::Expired => {
            return error(StatusCode::CONFLICT, "already_expired", format!("silence `{id}` has already expired"))
        }
        Some(_) => {}
    }
    match api.silences.expire(&id, now) {
        Ok(s) => {
            tracing::info!(silence = %id, "silence expired");
            Json(silence_view(&s)).into_response()
        }
        Err(tenantflow_alerts::AlertError::NotFound(_)) => error(StatusCode::NOT_FOUND, "not_found", format!("no silence `{id}`")),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()),
    }
}

async fn cluster(State(api): State<Shared>) -> Response {
    let c = &api.cluster;
    let statuses = api.control.registry().statuses();
    let running = statuses.iter().filter(|s| !s.state.is_terminal()).count();
    Json(json!({
        "processes": c.processes,
        "workers_per_process": c.workers,
        "workers": c.processes * c.workers,
        "uptime_secs": c.started.elapsed().as_secs_f64(),
        "restarts": c.restarts,
        "last_restart_backoff_ms": c.last_backoff_ms,
        "ready": api.control.registry().ready.load(std::sync::atomic::Ordering::SeqCst),
        "jobs_running": running,
    }))
    .into_response()
}

async fn stop(State(api): State<Shared>) -> Response {
    if !api.cluster.supervised {
        return error(StatusCode::CONFLICT, "not_supervised", "this process was not started by `tenantflow cluster start`".into());
    }
    tracing::info!("cluster stop requested");
    // The supervisor is this process's parent; it stops every process.
    // SAFETY: plain signal to our parent process.
    unsafe { libc::kill(libc::getppid(), libc::SIGTERM) };
    (StatusCode::ACCEPTED, Json(json!({"status": "stopping"}))).into_response()
}

async fn ready(State(api): State<Shared>) -> Response {
    if api.control.registry().ready.load(std::sync::atomic::Ordering::SeqCst) {
        Json(json!({"status": "ready"})).into_response()
    } else {
        error(StatusCode::SERVICE_UNAVAILABLE, "not_ready", "the Timely cluster is still connecting".into())
    }
}

fn record(api: &Api, id: &str) -> Option<JobRecord> {
    api.book.lock().ok()?.jobs.get(id).cloned()
}

fn state_name(state: Option<JobState>) -> String {
    match state {
        None => "submitted".into(),
        Some(s) => serde_json::to_value(s).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default(),
    }
}

/// A job as the API shows it: the book's record with process 0's live counters.
fn view(api: &Api, r: &JobRecord) -> serde_json::Value {
    let status: Option<JobStatus> = api.control.registry().status(&r.id).map(|mine| {
        let peers = api.peer_statuses.lock().map(|p| p.0.get(&r.id).cloned().unwrap_or_default()).unwrap_or_default();
        merge(mine, &peers)
    });
    let state = status.as_ref().map(|s| s.state).or(r.state);
    let mut v = json!({
        "id": r.id,
        "name": r.name,
        "state": state_name(state),
        "submitted_unix_ms": r.submitted_unix_ms,
    });
    if let Some(s) = status {
        let average = if s.uptime_secs > 0.0 { s.events_in as f64 / s.uptime_secs } else { 0.0 };
        // Over the last few seconds (the API samples every 200 ms); the average until then.
        let recent = api.samples.lock().ok().and_then(|samples| {
            let ring = samples.get(&r.id)?;
            let ((t0, n0), (t1, n1)) = (ring.front()?, ring.back()?);
            let secs = t1.duration_since(*t0).as_secs_f64();
            (secs >= 1.0).then(|| n1.saturating_sub(*n0) as f64 / secs)
        });
        v["events_in"] = s.events_in.into();
        v["rows_out"] = s.rows_out.into();
        v["events_per_sec"] = recent.unwrap_or(average).round().into();
        v["events_per_sec_average"] = average.round().into();
        v["dead_letters"] = s.dead_letters.into();
        v["late_events"] = s.late_events.into();
        v["windows_fired"] = s.windows_fired.into();
        v["pattern_matches"] = s.pattern_matches.into();
        v["partial_matches"] = s.partial_matches.into();
        v["models"] = serde_json::to_value(&s.models).unwrap_or_default();
        v["watermark"] = tenantflow_engine::dataflow::fmt_watermark(s.watermark_us).into();
        v["last_checkpoint"] = match s.last_checkpoint_epoch {
            Some(epoch) => json!({"epoch": epoch, "bytes": s.last_checkpoint_bytes, "duration_ms": s.last_checkpoint_duration_ms}),
            None => serde_json::Value::Null,
        };
        v["sinks_waiting"] = s.sinks_waiting.clone().into();
        v["last_error"] = s.errors.last().cloned().into();
        // Counters are partial while another process does not answer.
        v["processes_reporting"] = (1 + api.peer_statuses.lock().map_or(0, |p| p.1)).into();
    }
    v
}

/// Process 0's status of a job with the other processes' counters added: sums of counts, the
/// lowest watermark, a failure anywhere.
fn merge(mut total: JobStatus, peers: &[JobStatus]) -> JobStatus {
    for p in peers {
        total.events_in += p.events_in;
        total.rows_out += p.rows_out;
        total.dead_letters += p.dead_letters;
        total.late_events += p.late_events;
        total.windows_fired += p.windows_fired;
        total.pattern_matches += p.pattern_matches;
        total.partial_matches += p.partial_matches;
        for (t, m) in total.models.iter_mut().zip(&p.models) {
            t.rows += m.rows;
            t.batches += m.batches;
            t.defaulted += m.defaulted;
            t.skipped += m.skipped;
            t.other_tenants += m.other_tenants;
            t.errors += m.errors;
            t.model_seconds += m.model_seconds;
            t.swaps += m.swaps;
            t.shadow_mean_abs_diff = (t.shadow_mean_abs_diff * t.shadow_rows as f64 + m.shadow_mean_abs_diff * m.shadow_rows as f64)
                / (t.shadow_rows + m.shadow_rows).max(1) as f64;
            t.shadow_rows += m.shadow_rows;
            t.shadow_disagreements += m.shadow_disagreements;
        }
        total.watermark_us = match (total.watermark_us, p.watermark_us) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        total.errors.extend(p.errors.iter().cloned());
        total.sinks_waiting.extend(p.sinks_waiting.iter().cloned());
        if p.state == JobState::Failed && !total.state.is_terminal() {
            total.state = JobState::Failed;
        }
    }
    total
}

fn slug(name: &str) -> String {
    let s: String = name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '-' }).collect();
    if s.is_empty() {
        "job".into()
    } else {
        s
    }
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
