//! Every cluster process serves `/metrics` (Prometheus text format) and `/status` (its jobs'
//! counters as JSON, which process 0's API sums over the processes).
//!
//! The engine counts with atomics on its hot paths; this module reads them when scraped and
//! builds the exposition then, so metrics cost nothing between scrapes. Tenant labels are
//! bounded: the `top_tenants` busiest tenants of each job keep their own label, the others are
//! summed under `tenant="other"`. Jobs are labelled `job_id` (Prometheus keeps `job` for the
//! scrape job).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use prometheus::{Encoder, GaugeVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};
use tenantflow_engine::host::{self, JobState};
use tenantflow_engine::TenantStats;

pub struct Exporter {
    pub registry: Arc<host::Registry>,
    pub process: usize,
    pub workers: usize,
    pub top_tenants: usize,
    pub started: Instant,
}

/// Serves `/metrics` and `/status` on `addr` from a thread of its own.
pub fn serve(exporter: Exporter, addr: &str) -> anyhow::Result<()> {
    let listener = std::net::TcpListener::bind(addr).map_err(|e| anyhow::anyhow!("metrics address {addr}: {e}"))?;
    listener.set_nonblocking(true)?;
    let exporter = Arc::new(exporter);
    std::thread::Builder::new().name("metrics".into()).spawn(move || {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
        runtime.block_on(async move {
            let Ok(listener) = tokio::net::TcpListener::from_std(listener) else { return };
            let app = Router::new().route("/metrics", get(metrics)).route("/status", get(status)).with_state(exporter);
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!("metrics server: {e}");
            }
        });
    })?;
    Ok(())
}

async fn status(State(e): State<Arc<Exporter>>) -> Response {
    Json(e.registry.statuses()).into_response()
}

async fn metrics(State(e): State<Arc<Exporter>>) -> Response {
    match render(&e) {
        Ok(text) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response(),
        Err(err) => (StatusCode::INTERNAL_SERVER_ERROR, format!("metrics: {err}")).into_response(),
    }
}

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> prometheus::Result<IntCounterVec> {
    let c = IntCounterVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(c.clone()))?;
    Ok(c)
}

fn gauge(r: &Registry, name: &str, help: &str, labels: &[&str]) -> prometheus::Result<GaugeVec> {
    let g = GaugeVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(g.clone()))?;
    Ok(g)
}

/// The exposition, built from the current counters (a fresh registry per scrape: the values
/// are snapshots of the engine's own counters).
fn render(e: &Exporter) -> prometheus::Result<String> {
    let r = Registry::new_custom(Some("tenantflow".into()), None)?;
    let process = e.process.to_string();
    let events_in = counter(&r, "events_in_total", "Events read by the job's sources", &["job_id", "tenant"])?;
    let events_out = counter(&r, "events_out_total", "Result rows written to the sinks", &["job_id", "tenant"])?;
    let late =
        counter(&r, "events_late_total", "Events behind the watermark (dropped, side output or late update)", &["job_id", "tenant"])?;
    let dead = counter(&r, "events_dead_lettered_total", "Events sent to the dead-letter output", &["job_id", "tenant"])?;
    let dropped = counter(&r, "events_dropped_total", "Late events dropped", &["job_id"])?;
    let windows = counter(&r, "windows_fired_total", "Window results emitted", &["job_id"])?;
    let checkpoints = counter(&r, "checkpoints_total", "Checkpoints committed", &["job_id"])?;
    let lag = gauge(&r, "watermark_lag_seconds", "Wall clock minus the job's event-time watermark on this process", &["job_id"])?;
    let ck_duration = gauge(&r, "checkpoint_duration_seconds", "Last checkpoint, first part to commit", &["job_id"])?;
    let ck_size = gauge(&r, "checkpoint_size_bytes", "Size of the last committed checkpoint", &["job_id"])?;
    let ck_epoch = gauge(&r, "checkpoint_last_epoch", "Epoch of the last committed checkpoint", &["job_id"])?;
    let jobs = IntGaugeVec::new(Opts::new("jobs", "Jobs on this process by state"), &["state"])?;
    r.register(Box::new(jobs.clone()))?;
    let kafka_lag = gauge(
        &r,
        "kafka_consumer_lag_messages",
        "Partition end offset minus the next offset the source reads",
        &["group", "topic", "partition"],
    )?;
    let kafka_queued =
        gauge(&r, "kafka_fetch_queue_bytes", "Bytes fetched from Kafka and not yet read by the source", &["group", "topic", "partition"])?;
    let kafka_paused =
        gauge(&r, "kafka_partition_paused", "1 while backpressure has paused the partition", &["group", "topic", "partition"])?;
    let memory = gauge(&r, "process_resident_memory_bytes", "Resident memory of this process", &["process"])?;
    let workers = gauge(&r, "workers", "Timely worker threads in this process", &["process"])?;
    let uptime = gauge(&r, "process_uptime_seconds", "Seconds since this process started", &["process"])?;

    let now_us = tenantflow_core::time::now_micros();
    for state in ["running", "finished", "failed", "stopping", "cancelled", "savepointed"] {
        jobs.with_label_values(&[state]).set(0);
    }
    for (id, _name, state, job) in e.registry.jobs() {
        if let Some(s) = serde_json::to_value(state).ok().and_then(|v| v.as_str().map(String::from)) {
            jobs.with_label_values(&[&s]).inc();
        }
        let s = &job.shared;
        let report = s.report(Duration::ZERO);
        for (tenant, t) in bounded(report.tenants.into_iter().collect(), e.top_tenants) {
            events_in.with_label_values(&[&id, &tenant]).inc_by(t.events_in);
            events_out.with_label_values(&[&id, &tenant]).inc_by(t.events_out);
            late.with_label_values(&[&id, &tenant]).inc_by(t.late);
            dead.with_label_values(&[&id, &tenant]).inc_by(t.dead_lettered);
        }
        dropped.with_label_values(&[&id]).inc_by(s.late_dropped.load(Relaxed));
        windows.with_label_values(&[&id]).inc_by(s.windows_fired.load(Relaxed));
        checkpoints.with_label_values(&[&id]).inc_by(s.checkpoints.load(Relaxed));
        if let Some(wm) = s.watermark().filter(|_| state == JobState::Running) {
            lag.with_label_values(&[&id]).set((now_us - wm) as f64 / 1e6);
        }
        if job.has_checkpoints() {
            ck_duration.with_label_values(&[&id]).set(s.checkpoint_duration_us.load(Relaxed) as f64 / 1e6);
            ck_size.with_label_values(&[&id]).set(s.checkpoint_bytes.load(Relaxed) as f64);
            ck_epoch.with_label_values(&[&id]).set(s.committed_epoch.load(Relaxed) as f64);
        }
    }
    for p in tenantflow_connectors::kafka::partition_positions() {
        let labels = [p.group.as_str(), p.topic.as_str(), &p.partition.to_string()];
        if p.end >= 0 && p.consumed >= 0 {
            kafka_lag.with_label_values(&labels).set((p.end - p.consumed).max(0) as f64);
        }
        kafka_queued.with_label_values(&labels).set(p.fetch_queue_bytes as f64);
        kafka_paused.with_label_values(&labels).set(if p.paused { 1.0 } else { 0.0 });
    }
    memory.with_label_values(&[&process]).set(resident_bytes() as f64);
    workers.with_label_values(&[&process]).set(e.workers as f64);
    uptime.with_label_values(&[&process]).set(e.started.elapsed().as_secs_f64());

    let mut out = Vec::new();
    TextEncoder::new().encode(&r.gather(), &mut out)?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// The `top` busiest tenants by events in, and the rest summed as `other`.
fn bounded(mut tenants: Vec<(String, TenantStats)>, top: usize) -> Vec<(String, TenantStats)> {
    tenants.sort_by(|a, b| b.1.events_in.cmp(&a.1.events_in).then_with(|| a.0.cmp(&b.0)));
    if tenants.len() <= top {
        return tenants;
    }
    let rest = tenants.split_off(top);
    let mut other = TenantStats::default();
    for (_, t) in rest {
        other.events_in += t.events_in;
        other.events_out += t.events_out;
        other.late += t.late;
        other.dead_lettered += t.dead_lettered;
    }
    tenants.push(("other".into(), other));
    tenants
}

fn resident_bytes() -> u64 {
    // /proc/self/statm: size resident ... in pages.
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(0) as u64;
    pages * page
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenants_beyond_the_top_share_one_label() {
        let t = |n| TenantStats { events_in: n, events_out: n, late: 0, dead_lettered: 1 };
        let tenants = vec![("a".into(), t(5)), ("b".into(), t(50)), ("c".into(), t(1)), ("d".into(), t(20))];
        let out = bounded(tenants, 2);
        let names: Vec<&str> = out.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["b", "d", "other"]);
        assert_eq!(out[2].1.events_in, 6);
        assert_eq!(out[2].1.dead_lettered, 2);
    }
}
