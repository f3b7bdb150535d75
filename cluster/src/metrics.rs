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
use prometheus::{CounterVec, Encoder, GaugeVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};
use tenantflow_engine::host::{self, JobState};
use tenantflow_engine::TenantStats;

pub struct Exporter {
    pub registry: Arc<host::Registry>,
    pub process: usize,
    pub workers: usize,
    pub top_tenants: usize,
    pub started: Instant,
    /// From the supervisor: restarts so far and the last backoff.
    pub restarts: u64,
    pub last_backoff_ms: u64,
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

fn seconds_counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> prometheus::Result<CounterVec> {
    let c = CounterVec::new(Opts::new(name, help), labels)?;
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
    let matches = counter(&r, "pattern_matches_total", "Pattern matches emitted", &["job_id"])?;
    let timeouts = counter(&r, "pattern_timeouts_total", "Partial matches that timed out (emitted when timeouts = true)", &["job_id"])?;
    let partials = gauge(&r, "pattern_partial_matches", "Partial matches alive on this process", &["job_id"])?;
    let partials_dropped = counter(
        &r,
        "pattern_partial_matches_dropped_total",
        "Partial matches dropped at the per-key cap (max_partial_matches)",
        &["job_id"],
    )?;
    let model_labels = ["job_id", "step", "model"];
    let predictions = counter(&r, "model_predictions_total", "Rows a score step's live model scored", &model_labels)?;
    let model_defaulted =
        counter(&r, "model_features_defaulted_total", "Missing or invalid features that took the step's default", &model_labels)?;
    let model_skipped =
        counter(&r, "model_rows_skipped_total", "Rows not scored for a missing feature (on_missing = \"skip\")", &model_labels)?;
    let model_other_tenants = counter(
        &r,
        "model_rows_other_tenants_total",
        "Rows of other tenants than the model's owner, left unscored (outputs NULL)",
        &model_labels,
    )?;
    let model_errors = counter(&r, "model_errors_total", "Rows of batches the model failed on (outputs NULL)", &model_labels)?;
    let model_seconds = seconds_counter(&r, "model_seconds_total", "Time inside the model, summed over the workers", &model_labels)?;
    let model_version = gauge(&r, "model_version", "The live model version a score step uses", &model_labels)?;
    let model_swaps = counter(&r, "model_swaps_total", "Model version changes at checkpoint boundaries (per worker)", &model_labels)?;
    let drift = gauge(
        &r,
        "model_feature_psi",
        "Population stability index of a feature over the latest drift window, against the model's training distribution",
        &["job_id", "step", "model", "feature"],
    )?;
    let shadow_labels = ["job_id", "step", "model", "candidate"];
    let shadow_rows = counter(&r, "model_shadow_predictions_total", "Rows the shadow candidate also scored", &shadow_labels)?;
    let shadow_disagreements = counter(
        &r,
        "model_shadow_disagreements_total",
        "Rows where the shadow candidate disagreed (another label, or a score more than 1% away)",
        &shadow_labels,
    )?;
    let shadow_diff = seconds_counter(
        &r,
        "model_shadow_abs_difference_total",
        "Sum of |live - candidate| probability (or score) over shadow rows",
        &shadow_labels,
    )?;
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
    let bytes_in = counter(&r, "bytes_in_total", "Bytes of input read (JSON payloads and lines)", &["job_id"])?;
    let busy = seconds_counter(
        &r,
        "operator_busy_seconds_total",
        "Time spent in each operator, summed over the workers",
        &["job_id", "operator"],
    )?;
    let held = seconds_counter(
        &r,
        "backpressure_seconds_total",
        "Time sources were held back by backpressure, summed over the workers",
        &["job_id"],
    )?;
    let retries =
        counter(&r, "sink_retries_total", "Requests the sinks' clients retried (Kafka: librdkafka's produce retries)", &["job_id"])?;
    let sinks_waiting = gauge(&r, "sinks_waiting", "Sinks not open yet because their service is unreachable (the job waits)", &["job_id"])?;
    let restarts = gauge(&r, "cluster_restarts", "Times the supervisor restarted the cluster's processes", &["process"])?;
    let backoff = gauge(&r, "cluster_restart_backoff_seconds", "The wait before the last restart", &["process"])?;
    let ck_age = gauge(&r, "checkpoint_age_seconds", "Seconds since the last checkpoint was committed", &["job_id"])?;
    let alerts_received = counter(&r, "alerts_received_total", "Alerts the job's rules fired or resolved", &["job_id"])?;
    let alerts_firing = gauge(&r, "alerts_firing", "Alerts firing now", &["job_id"])?;
    let alerts_muted = gauge(&r, "alerts_muted", "Alerts muted at the last notification, by why", &["job_id", "reason"])?;
    let outbox = gauge(&r, "alert_outbox_notifications", "Notifications waiting in the outbox for delivery", &["job_id"])?;
    let notifications = counter(
        &r,
        "alert_notifications_total",
        "Notification attempts by receiver and outcome (sent, failed: dropped, retried: will be tried again)",
        &["job_id", "receiver", "outcome"],
    )?;
    let mut summaries: [(&str, &str, Vec<JobHistogram>); 2] = [
        ("tenantflow_window_emit_delay_seconds", "Processing time of a window result's emission minus the window's end", Vec::new()),
        (
            "tenantflow_sink_write_duration_seconds",
            "Duration of one write to the sinks (the rows of one timestamp and a flush)",
            Vec::new(),
        ),
    ];
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
        bytes_in.with_label_values(&[&id]).inc_by(s.bytes_in.load(Relaxed));
        for (i, op) in tenantflow_engine::stats::OPERATORS.iter().enumerate() {
            busy.with_label_values(&[id.as_str(), op]).inc_by(s.busy_ns[i].load(Relaxed) as f64 / 1e9);
        }
        held.with_label_values(&[&id]).inc_by(s.backpressure_us.load(Relaxed) as f64 / 1e6);
        retries.with_label_values(&[&id]).inc_by(s.sink_retries.load(Relaxed));
        sinks_waiting.with_label_values(&[&id]).set(s.sinks_waiting().len() as f64);
        for (k, h) in [&s.emit_delay, &s.sink_write].into_iter().enumerate() {
            if let Ok(h) = h.lock() {
                summaries[k].2.push((id.clone(), h.clone()));
            }
        }
        windows.with_label_values(&[&id]).inc_by(s.windows_fired.load(Relaxed));
        matches.with_label_values(&[&id]).inc_by(s.pattern_matches.load(Relaxed));
        timeouts.with_label_values(&[&id]).inc_by(s.pattern_timeouts.load(Relaxed));
        partials.with_label_values(&[&id]).set(s.partial_matches.load(Relaxed) as f64);
        partials_dropped.with_label_values(&[&id]).inc_by(s.partial_matches_dropped.load(Relaxed));
        if let Some(a) = s.alerts.lock().ok().and_then(|a| a.clone()) {
            alerts_received.with_label_values(&[&id]).inc_by(a.alerts_received);
            alerts_firing.with_label_values(&[&id]).set(a.alerts_firing as f64);
            alerts_muted.with_label_values(&[&id, "silenced"]).set(a.silenced as f64);
            alerts_muted.with_label_values(&[&id, "inhibited"]).set(a.inhibited as f64);
            outbox.with_label_values(&[&id]).set(a.outbox_size as f64);
            for (receiver, n) in &a.receivers {
                for (outcome, v) in [("sent", n.sent), ("failed", n.failed), ("retried", n.retried)] {
                    notifications.with_label_values(&[id.as_str(), receiver, outcome]).inc_by(v);
                }
            }
        }
        for m in s.models.iter().map(|m| m.report()) {
            let labels = [id.as_str(), m.step.as_str(), m.model.as_str()];
            predictions.with_label_values(&labels).inc_by(m.rows);
            model_defaulted.with_label_values(&labels).inc_by(m.defaulted);
            model_skipped.with_label_values(&labels).inc_by(m.skipped);
            model_errors.with_label_values(&labels).inc_by(m.errors);
            model_other_tenants.with_label_values(&labels).inc_by(m.other_tenants);
            model_seconds.with_label_values(&labels).inc_by(m.model_seconds);
            model_version.with_label_values(&labels).set(m.version as f64);
            model_swaps.with_label_values(&labels).inc_by(m.swaps);
            for (feature, psi) in &m.drift {
                drift.with_label_values(&[id.as_str(), m.step.as_str(), m.model.as_str(), feature.as_str()]).set(*psi);
            }
            if let Some(candidate) = m.shadow_version {
                let c = candidate.to_string();
                let labels = [id.as_str(), m.step.as_str(), m.model.as_str(), c.as_str()];
                shadow_rows.with_label_values(&labels).inc_by(m.shadow_rows);
                shadow_disagreements.with_label_values(&labels).inc_by(m.shadow_disagreements);
                shadow_diff.with_label_values(&labels).inc_by(m.shadow_mean_abs_diff * m.shadow_rows as f64);
            }
        }
        checkpoints.with_label_values(&[&id]).inc_by(s.checkpoints.load(Relaxed));
        if let Some(wm) = s.watermark().filter(|_| state == JobState::Running) {
            lag.with_label_values(&[&id]).set((now_us - wm) as f64 / 1e6);
        }
        if job.has_checkpoints() {
            ck_duration.with_label_values(&[&id]).set(s.checkpoint_duration_us.load(Relaxed) as f64 / 1e6);
            ck_size.with_label_values(&[&id]).set(s.checkpoint_bytes.load(Relaxed) as f64);
            ck_epoch.with_label_values(&[&id]).set(s.committed_epoch.load(Relaxed) as f64);
            let committed = s.checkpoint_committed_unix_ms.load(Relaxed);
            if committed > 0 {
                ck_age.with_label_values(&[&id]).set((now_us / 1000 - committed as i64).max(0) as f64 / 1e3);
            }
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
    restarts.with_label_values(&[&process]).set(e.restarts as f64);
    backoff.with_label_values(&[&process]).set(e.last_backoff_ms as f64 / 1e3);

    let mut families = r.gather();
    for (name, help, series) in summaries {
        families.push(summary(name, help, &series));
    }
    let mut out = Vec::new();
    TextEncoder::new().encode(&families, &mut out)?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// A job's id and one of its latency histograms (µs).
type JobHistogram = (String, hdrhistogram::Histogram<u64>);

/// An hdrhistogram per job (µs) as a Prometheus summary in seconds: quantiles 0.5, 0.9, 0.99
/// and 0.999, count and sum.
fn summary(name: &str, help: &str, series: &[JobHistogram]) -> prometheus::proto::MetricFamily {
    use prometheus::proto::{LabelPair, Metric, MetricFamily, MetricType, Quantile, Summary};
    let mut family = MetricFamily::default();
    family.set_name(name.into());
    family.set_help(help.into());
    family.set_field_type(MetricType::SUMMARY);
    for (job, h) in series {
        let mut s = Summary::default();
        s.set_sample_count(h.len());
        s.set_sample_sum(h.mean() * h.len() as f64 / 1e6);
        s.set_quantile(
            [0.5, 0.9, 0.99, 0.999]
                .iter()
                .map(|&q| {
                    let mut quantile = Quantile::default();
                    quantile.set_quantile(q);
                    quantile.set_value(h.value_at_quantile(q) as f64 / 1e6);
                    quantile
                })
                .collect(),
        );
        let mut label = LabelPair::default();
        label.set_name("job_id".into());
        label.set_value(job.clone());
        let mut metric = Metric::default();
        metric.set_label(vec![label]);
        metric.set_summary(s);
        family.mut_metric().push(metric);
    }
    family
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
