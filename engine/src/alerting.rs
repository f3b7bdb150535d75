//! Alert rules on the job's output rows, evaluated where the rows are written (worker 0's
//! sink), feeding the job's alert manager (`tenantflow-alerts`).
//!
//! A rule's series is the tenant plus the window's key fields: a row whose condition holds
//! fires the series' alert; the series' next row whose condition does not hold resolves it.
//! `prev(field)` is the field in the series' previous row. What the rules remember (previous
//! rows, which series fire) is part of the sink's checkpoint, so a restored job judges the
//! replayed rows as the first run did; the manager's notification log keeps it from notifying
//! the same alerts twice.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use foldhash::HashMap;
use tenantflow_alerts::{Alert, ManagerHandle, Silences, SystemClock};
use tenantflow_core::expr::{self, CompiledExpr};
use tenantflow_core::job::WindowKind;
use tenantflow_core::template::{BoundTemplate, Template};
use tenantflow_core::{time, Plan, Value};

/// The process's silences: the cluster's store when the API set one, else per job in its
/// alert state directory.
static SILENCES: OnceLock<Silences> = OnceLock::new();

/// Makes every job of this process use `silences` (the cluster API's store).
pub fn set_silences(silences: Silences) {
    let _ = SILENCES.set(silences);
}

struct Rule {
    name: String,
    /// The rule's identity in checkpoints: its name and condition text (names may repeat, with
    /// other labels; positions change when rules are added or removed).
    id: (String, String),
    condition: CompiledExpr,
    labels: Vec<(String, String)>,
    annotations: Vec<(String, BoundTemplate)>,
}

/// Window periods without a result after which a series that fires nothing is forgotten (its
/// `prev()` is NULL if it comes back).
const FORGET_AFTER_PERIODS: i64 = 10;

/// What the rules remember of one series.
struct Series {
    /// The series' previous row, for `prev()`.
    prev: Vec<Value>,
    /// Which rules fire (bit i: rule i).
    firing: u64,
    /// When its firing alerts were last pushed (µs; not checkpointed: a restore pushes again).
    pushed_at: i64,
}

/// What rules remember, for checkpoints: per series, its previous row and the rules that fire,
/// by (name, condition).
pub type RulesSnapshot = Vec<(Vec<Value>, Vec<Value>, Vec<(String, String)>)>;

pub struct AlertRules {
    rules: Vec<Rule>,
    /// Per series (tenant and window key): the previous row and which rules fire. One lookup
    /// per row serves every rule.
    series: HashMap<Vec<Value>, Series>,
    /// A series that keeps firing is pushed again this often (wall clock, µs), well within
    /// `resolve_timeout`; in between only changes (fired, resolved) are pushed.
    refresh_every: i64,
    /// Windowed jobs forget series that fire nothing and have had no result for a while (event
    /// time), so high-cardinality keys do not grow the map (and checkpoints) forever:
    /// (position of `window_end` in the row, how long, the last boundary swept: `window_end /
    /// how long`).
    forget: Option<(usize, i64, i64)>,
    manager: ManagerHandle,
    job: String,
    /// Output positions of the series' fields (tenant first) and their label names.
    series_pos: Vec<usize>,
    series_labels: Vec<String>,
    /// The row followed by the series' previous row: what conditions see.
    scratch: Vec<Value>,
    key: Vec<Value>,
    text: String,
}

/// Where a job's notification log and outbox live unless `[alerting] state_dir` says.
pub fn state_dir(plan: &Plan) -> PathBuf {
    match plan.spec.alerting.as_ref().and_then(|a| a.state_dir.as_ref()) {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(".tenantflow/alerts").join(&plan.spec.name),
    }
}

impl AlertRules {
    /// Compiles the rules and starts the job's alert manager (checking that receivers with a
    /// connection, SMTP and Redis, accept it); `None` for a job without rules.
    pub fn open(plan: &Plan, restored: Option<&RulesSnapshot>) -> Result<Option<AlertRules>, String> {
        let Some(alerting) = plan.spec.alerting.as_ref() else { return Ok(None) };
        if plan.spec.alerts.is_empty() {
            return Ok(None);
        }
        let schema = plan.alert_schema();
        let names = schema.names();
        let mut rules = Vec::new();
        for r in &plan.spec.alerts {
            let condition = expr::compile(&r.condition.value, &schema).map_err(|e| format!("alert {}: {}", r.name, e.message))?;
            let annotations = r
                .annotations
                .iter()
                .map(|(k, t)| Template::parse(&t.value).and_then(|p| p.bind(&names)).map(|b| (k.clone(), b)))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("alert {}: {e}", r.name))?;
            let mut labels = r.labels.clone();
            if !labels.iter().any(|(k, _)| k == "severity") {
                labels.push(("severity".into(), "warning".into()));
            }
            rules.push(Rule { name: r.name.clone(), id: (r.name.clone(), r.condition.value.clone()), condition, labels, annotations });
        }
        if rules.len() > tenantflow_core::plan::MAX_ALERT_RULES {
            return Err(format!("a job has at most {} alert rules", tenantflow_core::plan::MAX_ALERT_RULES));
        }
        // A checkpoint of a job whose output has since changed shape holds rows that no longer
        // fit: those series start over.
        let width = plan.output.len();
        let series = restored
            .map(|s| {
                s.iter()
                    .filter(|(_, prev, _)| prev.len() == width)
                    .map(|(k, prev, firing)| {
                        let firing =
                            rules.iter().enumerate().filter(|(_, r)| firing.contains(&r.id)).fold(0u64, |bits, (i, _)| bits | 1 << i);
                        (k.clone(), Series { prev: prev.clone(), firing, pushed_at: 0 })
                    })
                    .collect()
            })
            .unwrap_or_default();
        let out_names = plan.output.names();
        let tenant = plan.spec.schema.tenant.value.as_str();
        let mut series_pos = Vec::new();
        let mut series_labels = Vec::new();
        for name in std::iter::once(tenant).chain(plan.key_names()) {
            if let Some(p) = out_names.iter().position(|n| *n == name) {
                series_pos.push(p);
                series_labels.push(if name == tenant { "tenant".to_string() } else { name.to_string() });
            }
        }
        let dir = state_dir(plan);
        let silences = match SILENCES.get() {
            Some(s) => s.clone(),
            None => Silences::open(Some(dir.join("silences.json"))).map_err(|e| e.to_string())?,
        };
        // A firing series is refreshed only when a result comes: it must not time out between
        // two results (a window period, in event time; live, about as long in wall time).
        let mut alerting = alerting.clone();
        let mut forget = None;
        if let Some(w) = &plan.window {
            let period = match w.kind {
                WindowKind::Tumbling { size } => size,
                WindowKind::Sliding { slide, .. } => slide,
                WindowKind::Session { gap } => gap,
            };
            alerting.resolve_timeout = alerting.resolve_timeout.max(period.saturating_mul(3));
            let end = out_names.iter().position(|n| *n == "window_end");
            forget = end.map(|p| (p, period.saturating_mul(FORGET_AFTER_PERIODS), i64::MIN));
        } else if let Some(p) = &plan.pattern {
            // A pattern's period is its `within` (an hour without one): keys that matched once
            // and went quiet must not stay in memory for good.
            let period = p.within.unwrap_or(3600 * time::MICROS_PER_SEC);
            let end = out_names.iter().position(|n| *n == "match_end");
            forget = end.map(|e| (e, period.saturating_mul(FORGET_AFTER_PERIODS), i64::MIN));
        }
        let manager = tenantflow_alerts::Manager::new(&alerting, &plan.spec.name, silences, Arc::new(SystemClock), &dir)
            .map_err(|e| e.to_string())?;
        manager.check_connections().map_err(|e| e.to_string())?;
        Ok(Some(AlertRules {
            rules,
            series,
            refresh_every: (alerting.resolve_timeout / 3).max(1),
            manager: tenantflow_alerts::spawn(manager),
            job: plan.spec.name.clone(),
            series_pos,
            series_labels,
            forget,
            scratch: Vec::new(),
            key: Vec::new(),
            text: String::new(),
        }))
    }

    /// Judges one output row by every rule.
    pub fn eval(&mut self, row: &[Value]) {
        self.key.clear();
        self.key.extend(self.series_pos.iter().map(|&p| row[p].clone()));
        let state = self.series.get_mut(&self.key);
        self.scratch.clear();
        self.scratch.extend_from_slice(row);
        match &state {
            Some(s) => self.scratch.extend_from_slice(&s.prev),
            None => self.scratch.resize(row.len() * 2, Value::Null),
        }
        let was = state.as_ref().map_or(0, |s| s.firing);
        let now = time::now_micros();
        let refresh = state.as_ref().is_none_or(|s| now - s.pushed_at >= self.refresh_every);
        let mut firing = 0u64;
        for (i, rule) in self.rules.iter().enumerate() {
            let holds = rule.condition.eval_bool(&self.scratch);
            firing |= u64::from(holds) << i;
            let fired_before = was & (1 << i) != 0;
            // News (fired, resolved), or a refresh that keeps a firing alert from timing out.
            if holds != fired_before || (holds && refresh) {
                self.manager.push(alert(rule, &self.job, &self.series_labels, &self.key, &self.scratch, holds, &mut self.text));
            }
        }
        let pushed_at = |before: i64| if refresh && firing != 0 { now } else { before };
        match state {
            Some(s) => {
                s.prev.clone_from_slice(row);
                s.firing = firing;
                s.pushed_at = pushed_at(s.pushed_at);
            }
            None => {
                self.series.insert(self.key.clone(), Series { prev: row.to_vec(), firing, pushed_at: pushed_at(0) });
            }
        }
        // Swept at fixed event-time boundaries, so a restored run forgets exactly what the
        // first run did (sweeping twice at one boundary changes nothing).
        if let Some((pos, after, swept)) = &mut self.forget {
            if let Some(Value::Ts(end)) = row.get(*pos) {
                let boundary = end.div_euclid(*after);
                if boundary > *swept {
                    let horizon = boundary.saturating_sub(1).saturating_mul(*after);
                    let p = *pos;
                    self.series.retain(|_, s| s.firing != 0 || matches!(s.prev.get(p), Some(Value::Ts(t)) if *t >= horizon));
                    *swept = boundary;
                }
            }
        }
    }

    pub fn snapshot(&self) -> RulesSnapshot {
        self.series
            .iter()
            .map(|(k, s)| {
                let firing = self.rules.iter().enumerate().filter(|(i, _)| s.firing & (1 << i) != 0).map(|(_, r)| r.id.clone()).collect();
                (k.clone(), s.prev.clone(), firing)
            })
            .collect()
    }

    pub fn stats(&self) -> tenantflow_alerts::Stats {
        self.manager.stats()
    }

    /// The input has ended: notifies what is pending without waiting out `group_wait`, stops
    /// the manager once it has delivered what it can, and returns its final counters.
    pub fn finish(self) -> tenantflow_alerts::Stats {
        self.manager.flush_now();
        self.manager.close()
    }
}

/// The alert of `rule` for a series: firing when the condition `holds`, else resolved now.
fn alert(rule: &Rule, job: &str, names: &[String], key: &[Value], scratch: &[Value], holds: bool, text: &mut String) -> Alert {
    let now = time::now_micros();
    let mut labels = BTreeMap::new();
    // The rule's labels first: the identity labels (name, job, series) must win, or two
    // series could share a fingerprint.
    for (k, v) in &rule.labels {
        labels.insert(k.clone(), v.clone());
    }
    for (name, v) in names.iter().zip(key) {
        labels.insert(name.clone(), label_value(v));
    }
    labels.insert("alertname".to_string(), rule.name.clone());
    labels.insert("job".to_string(), job.to_string());
    let mut alert = Alert::new(labels, now);
    for (k, t) in &rule.annotations {
        t.render_into(scratch, text);
        alert = alert.annotate(k, text.as_str());
    }
    if !holds {
        alert.ends_at = Some(now);
    }
    alert
}

fn label_value(v: &Value) -> String {
    match v {
        Value::Str(s) => s.to_string(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}
