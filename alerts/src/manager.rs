//! The manager: routing, grouping, silencing, inhibition, the notification log and delivery.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tenantflow_core::alerting::AlertingSpec;

use crate::alert::{Alert, Clock};
use crate::matcher::{all_match, compile_all, CompiledMatcher};
use crate::nflog::{self, NotificationLog};
use crate::notify::{Notification, Receiver, SendError};
use crate::outbox::{backoff, Outbox, OutboxEntry};
use crate::route::Route;
use crate::silence::Silences;
use crate::AlertError;

/// Notification-log entries are kept at least this long (Alertmanager's default retention).
const NFLOG_RETENTION: i64 = 120 * 3_600_000_000;
/// How long expired silences are kept (listed as expired) before they are forgotten.
const SILENCE_RETENTION: i64 = 120 * 3_600_000_000;
/// A notification still undelivered after this long is given up (logged and counted as
/// failed): its news is stale, and the group's next notification says where things stand.
const OUTBOX_MAX_AGE: i64 = 24 * 3_600_000_000;
/// How long one delivery pass may go on before `tick` returns to grouping.
const DELIVER_BUDGET: Duration = Duration::from_secs(2);
/// How often the spawned manager ticks.
const TICK: Duration = Duration::from_millis(100);
/// How long dropping a handle waits for the final tick.
const STOP_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug)]
struct StoredAlert {
    alert: Alert,
    updated_at: i64,
    /// Keys of the groups holding it; the alert is forgotten when none does.
    groups: BTreeSet<String>,
}

#[derive(Debug)]
struct Group {
    labels: BTreeMap<String, String>,
    receiver: String,
    group_interval: i64,
    repeat_interval: i64,
    alerts: BTreeSet<u64>,
    next_flush: i64,
    flushed: bool,
}

struct InhibitRule {
    source: Vec<CompiledMatcher>,
    target: Vec<CompiledMatcher>,
    equal: Vec<String>,
}

#[derive(Default)]
struct ReceiverCounters {
    sent: AtomicU64,
    failed: AtomicU64,
    retried: AtomicU64,
}

#[derive(Default)]
struct StatsInner {
    alerts_received: AtomicU64,
    alerts_firing: AtomicU64,
    silenced: AtomicU64,
    inhibited: AtomicU64,
    outbox_size: AtomicU64,
    receivers: BTreeMap<String, ReceiverCounters>,
}

/// Counters of one receiver.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReceiverStats {
    /// Notifications the receiver accepted.
    pub sent: u64,
    /// Notifications dropped because the receiver refused them.
    pub failed: u64,
    /// Failed attempts that will be retried.
    pub retried: u64,
}

/// A snapshot of the manager's counters. `alerts_firing`, `silenced` and `inhibited` are as of
/// the last flush; `outbox_size` as of the last tick.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub alerts_received: u64,
    pub alerts_firing: u64,
    pub silenced: u64,
    pub inhibited: u64,
    pub outbox_size: u64,
    pub receivers: BTreeMap<String, ReceiverStats>,
}

impl StatsInner {
    fn snapshot(&self) -> Stats {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Stats {
            alerts_received: get(&self.alerts_received),
            alerts_firing: get(&self.alerts_firing),
            silenced: get(&self.silenced),
            inhibited: get(&self.inhibited),
            outbox_size: get(&self.outbox_size),
            receivers: self
                .receivers
                .iter()
                .map(|(n, c)| (n.clone(), ReceiverStats { sent: get(&c.sent), failed: get(&c.failed), retried: get(&c.retried) }))
                .collect(),
        }
    }

    fn receiver(&self, name: &str, f: impl FnOnce(&ReceiverCounters) -> &AtomicU64) {
        if let Some(c) = self.receivers.get(name) {
            f(c).fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Why an alert is muted at a flush.
#[derive(Default)]
struct Mutes {
    silenced: HashSet<u64>,
    inhibited: HashSet<u64>,
}

impl Mutes {
    fn muted(&self, fp: u64) -> bool {
        self.silenced.contains(&fp) || self.inhibited.contains(&fp)
    }
}

/// Turns a job's alerts into notifications. Single-threaded: call [`Manager::push`] and
/// [`Manager::tick`] directly (tests, with a [`crate::ManualClock`]) or hand it to [`spawn`].
pub struct Manager {
    job: String,
    clock: Arc<dyn Clock>,
    silences: Silences,
    root: Route,
    receivers: BTreeMap<String, Receiver>,
    inhibit_rules: Vec<InhibitRule>,
    resolve_timeout: i64,
    alerts: HashMap<u64, StoredAlert>,
    groups: BTreeMap<String, Group>,
    nflog: NotificationLog,
    nflog_retention: i64,
    last_gc: i64,
    outbox: Outbox,
    stats: Arc<StatsInner>,
}

fn format_labels(labels: &BTreeMap<String, String>) -> String {
    let mut s = String::from("{");
    for (i, (k, v)) in labels.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let _ = write!(s, "{k}={v:?}");
    }
    s.push('}');
    s
}

impl Manager {
    /// Validates the configuration, compiles routes and matchers, and loads the notification log
    /// and the outbox from `state_dir` (created if missing).
    pub fn new(spec: &AlertingSpec, job: &str, silences: Silences, clock: Arc<dyn Clock>, state_dir: &Path) -> Result<Manager, AlertError> {
        let mut receivers = BTreeMap::new();
        for r in &spec.receivers {
            if receivers.insert(r.name.clone(), Receiver::new(r, job)?).is_some() {
                return Err(AlertError::Config(format!("receiver `{}` is defined twice", r.name)));
            }
        }
        let root = Route::compile(&spec.route)?;
        let mut all = Vec::new();
        root.walk(&mut all);
        for r in &all {
            if !receivers.contains_key(&r.receiver) {
                return Err(AlertError::Config(format!("route {} uses receiver `{}`, which is not defined", r.key, r.receiver)));
            }
        }
        let max_repeat = all.iter().map(|r| r.repeat_interval.saturating_add(r.group_interval)).max().unwrap_or(0);
        if spec.resolve_timeout <= 0 {
            return Err(AlertError::Config("resolve_timeout must be positive".into()));
        }
        let inhibit_rules = spec
            .inhibit_rules
            .iter()
            .map(|r| Ok(InhibitRule { source: compile_all(&r.source)?, target: compile_all(&r.target)?, equal: r.equal.clone() }))
            .collect::<Result<Vec<_>, AlertError>>()?;
        std::fs::create_dir_all(state_dir).map_err(|e| AlertError::io(state_dir, e))?;
        let nflog = NotificationLog::open(state_dir.join("nflog.json"))?;
        let mut outbox = Outbox::open(state_dir.join("outbox"))?;
        let stale: Vec<String> =
            outbox.entries.iter().filter(|(_, e)| !receivers.contains_key(&e.notification.receiver)).map(|(id, _)| id.clone()).collect();
        for id in stale {
            tracing::warn!(job, id, "outbox notification for a receiver no longer configured; dropped");
            outbox.remove(&id)?;
        }
        if outbox.len() > 0 {
            tracing::info!(job, pending = outbox.len(), "outbox holds notifications from an earlier run; delivering them");
        }
        let stats =
            StatsInner { receivers: receivers.keys().map(|n| (n.clone(), ReceiverCounters::default())).collect(), ..Default::default() };
        stats.outbox_size.store(outbox.len() as u64, Ordering::Relaxed);
        Ok(Manager {
            job: job.to_string(),
            last_gc: clock.now(),
            clock,
            silences,
            root,
            receivers,
            inhibit_rules,
            resolve_timeout: spec.resolve_timeout,
            alerts: HashMap::new(),
            groups: BTreeMap::new(),
            nflog,
            nflog_retention: NFLOG_RETENTION.max(max_repeat),
            outbox,
            stats: Arc::new(stats),
        })
    }

    pub fn silences(&self) -> &Silences {
        &self.silences
    }

    pub fn stats(&self) -> Stats {
        self.stats.snapshot()
    }

    /// Connects to the SMTP and Redis receivers (authenticating where credentials are set), so
    /// that refused credentials show up when a job starts. The error names the receiver.
    pub fn check_connections(&self) -> Result<(), AlertError> {
        self.receivers.values().try_for_each(Receiver::check_connection)
    }

    /// Takes in an alert: the same labels update the alert already held.
    pub fn push(&mut self, alert: Alert) {
        let now = self.clock.now();
        self.stats.alerts_received.fetch_add(1, Ordering::Relaxed);
        let fp = alert.fingerprint();
        let starts_at = alert.starts_at;
        let mut routes = Vec::new();
        self.root.matching(&alert.labels, &mut routes);
        let keys: Vec<(String, BTreeMap<String, String>, &Route)> = routes
            .into_iter()
            .map(|r| {
                let labels = r.group_labels(&alert.labels);
                (format!("{}:{}", r.key, format_labels(&labels)), labels, r)
            })
            .collect();
        let stored = match self.alerts.get_mut(&fp) {
            Some(s) => {
                if s.alert.is_resolved(now) && alert.starts_at > s.alert.starts_at {
                    // Fires again after it had resolved.
                    s.alert = alert;
                } else {
                    s.alert.starts_at = s.alert.starts_at.min(alert.starts_at);
                    s.alert.annotations = alert.annotations;
                    s.alert.ends_at = alert.ends_at;
                }
                s.updated_at = now;
                s
            }
            None => self.alerts.entry(fp).or_insert(StoredAlert { alert, updated_at: now, groups: BTreeSet::new() }),
        };
        for (key, labels, route) in keys {
            stored.groups.insert(key.clone());
            let group = self.groups.entry(key).or_insert_with(|| Group {
                labels,
                receiver: route.receiver.clone(),
                group_interval: route.group_interval,
                repeat_interval: route.repeat_interval,
                alerts: BTreeSet::new(),
                next_flush: now.saturating_add(route.group_wait),
                flushed: false,
            });
            group.alerts.insert(fp);
            // As in Alertmanager: an alert that started more than group_wait ago does not wait.
            if !group.flushed && starts_at.saturating_add(route.group_wait) < now {
                group.next_flush = group.next_flush.min(now);
            }
        }
    }

    /// Makes every group due now and ticks: a bounded job that ends sends what it found
    /// without waiting out `group_wait` (which would outlive it).
    pub fn flush_now(&mut self) {
        let now = self.clock.now();
        for g in self.groups.values_mut() {
            g.next_flush = g.next_flush.min(now);
        }
        self.tick();
    }

    /// Resolves timed-out alerts, flushes the groups that are due, and delivers the outbox.
    pub fn tick(&mut self) {
        let now = self.clock.now();
        let mut firing = 0;
        for s in self.alerts.values_mut() {
            if s.alert.ends_at.is_none() && s.updated_at.saturating_add(self.resolve_timeout) <= now {
                s.alert.ends_at = Some(s.updated_at + self.resolve_timeout);
            }
            firing += u64::from(!s.alert.is_resolved(now));
        }
        self.stats.alerts_firing.store(firing, Ordering::Relaxed);
        let due: Vec<String> = self.groups.iter().filter(|(_, g)| g.next_flush <= now).map(|(k, _)| k.clone()).collect();
        if !due.is_empty() {
            let mutes = self.mutes(now);
            self.stats.silenced.store(mutes.silenced.len() as u64, Ordering::Relaxed);
            self.stats.inhibited.store(mutes.inhibited.len() as u64, Ordering::Relaxed);
            for key in due {
                self.flush(&key, &mutes, now);
            }
        }
        // Written before anything is delivered: a notification that reached its receiver is
        // always in the log a restart reads. If it cannot be written, delivery waits.
        if let Err(e) = self.nflog.save() {
            tracing::error!(job = %self.job, "notification log: {e}");
            return;
        }
        if now.saturating_sub(self.last_gc) >= 600_000_000 {
            self.last_gc = now;
            if let Err(e) = self.nflog.gc(now, self.nflog_retention) {
                tracing::error!(job = %self.job, "notification log: {e}");
            }
            if let Err(e) = self.silences.prune(now, SILENCE_RETENTION) {
                tracing::error!(job = %self.job, "silences: {e}");
            }
        }
        self.deliver();
    }

    /// Which alerts silences and inhibition rules mute now.
    fn mutes(&self, now: i64) -> Mutes {
        let mut m = Mutes::default();
        for (fp, s) in &self.alerts {
            if self.silences.silenced_by(&s.alert.labels, now).is_some() {
                m.silenced.insert(*fp);
            }
        }
        let values = |rule: &InhibitRule, a: &Alert| -> Vec<String> {
            rule.equal.iter().map(|n| a.labels.get(n).cloned().unwrap_or_default()).collect()
        };
        for rule in &self.inhibit_rules {
            // Firing sources by their values of the `equal` labels.
            let mut sources: HashMap<Vec<String>, Vec<(u64, bool)>> = HashMap::new();
            for (fp, s) in &self.alerts {
                if !s.alert.is_resolved(now) && all_match(&rule.source, &s.alert.labels) {
                    sources.entry(values(rule, &s.alert)).or_default().push((*fp, all_match(&rule.target, &s.alert.labels)));
                }
            }
            if sources.is_empty() {
                continue;
            }
            for (fp, s) in &self.alerts {
                if !all_match(&rule.target, &s.alert.labels) {
                    continue;
                }
                // An alert matching both sides is muted only by sources that are not targets too.
                let two_sided = all_match(&rule.source, &s.alert.labels);
                if sources
                    .get(&values(rule, &s.alert))
                    .is_some_and(|list| list.iter().any(|&(src, src_is_target)| src != *fp && !(two_sided && src_is_target)))
                {
                    m.inhibited.insert(*fp);
                }
            }
        }
        m
    }

    fn flush(&mut self, key: &str, mutes: &Mutes, now: i64) {
        let Some(group) = self.groups.get(key) else { return };
        let Some(receiver) = self.receivers.get(&group.receiver) else { return };
        let mut firing = BTreeSet::new();
        let mut resolved = BTreeSet::new();
        let mut resolved_all = Vec::new();
        let mut alerts = Vec::new();
        for fp in &group.alerts {
            let Some(s) = self.alerts.get(fp) else { continue };
            let is_resolved = s.alert.is_resolved(now);
            if is_resolved {
                resolved_all.push(*fp);
            }
            if mutes.muted(*fp) {
                continue;
            }
            if is_resolved {
                resolved.insert(*fp);
            } else {
                firing.insert(*fp);
            }
            if !is_resolved || receiver.send_resolved {
                alerts.push(Notification::alert(&s.alert, *fp, now));
            }
        }
        let entry = self.nflog.get(key, &group.receiver);
        if nflog::needs_update(entry, &firing, &resolved, receiver.send_resolved, group.repeat_interval, now) {
            // The newest notification of a group tells its whole state: older undelivered ones
            // for the same receiver are superseded, and the resolutions they carried (whose
            // alerts have left the group) are carried forward.
            let superseded: Vec<String> = self
                .outbox
                .entries
                .iter()
                .filter(|(_, e)| e.notification.group_key == key && e.notification.receiver == group.receiver)
                .map(|(id, _)| id.clone())
                .collect();
            for id in &superseded {
                for a in self.outbox.entries.get(id).map(|e| e.notification.alerts.as_slice()).unwrap_or_default() {
                    if !a.firing() && !alerts.iter().any(|b| b.fingerprint == a.fingerprint) {
                        alerts.push(a.clone());
                    }
                }
            }
            if !alerts.is_empty() {
                let n = Notification::new(&group.receiver, key, group.labels.clone(), alerts, now);
                let id = n.id.clone();
                if let Err(e) = self.outbox.put(OutboxEntry { notification: n, attempts: 0, next_attempt_at: now }) {
                    // Not logged as sent: the next flush tries again.
                    tracing::error!(job = %self.job, group = key, "cannot write the outbox: {e}");
                    if let Some(g) = self.groups.get_mut(key) {
                        g.next_flush = now.saturating_add(g.group_interval);
                    }
                    return;
                }
                tracing::debug!(job = %self.job, group = key, receiver = %group.receiver, id, firing = firing.len(), "notification due");
                for old in superseded {
                    tracing::info!(job = %self.job, group = key, id = old, "undelivered notification superseded by a newer one");
                    if let Err(e) = self.outbox.remove(&old) {
                        tracing::error!(job = %self.job, "outbox: {e}");
                    }
                }
            }
            let entry = nflog::Entry { group_key: key.to_string(), receiver: group.receiver.clone(), firing, resolved, sent_at: now };
            self.nflog.record(entry);
        }
        // The flush handled the resolved alerts: they leave the group.
        let Some(group) = self.groups.get_mut(key) else { return };
        for fp in resolved_all {
            group.alerts.remove(&fp);
            if let Some(s) = self.alerts.get_mut(&fp) {
                s.groups.remove(key);
                if s.groups.is_empty() {
                    self.alerts.remove(&fp);
                }
            }
        }
        group.flushed = true;
        group.next_flush = group.next_flush.saturating_add(group.group_interval);
        if group.next_flush <= now {
            group.next_flush = now.saturating_add(group.group_interval);
        }
        if group.alerts.is_empty() {
            self.groups.remove(key);
        }
    }

    /// Attempts the outbox entries that are due. A receiver that fails with a retryable error is
    /// not tried again in the same pass.
    pub fn deliver(&mut self) {
        let now = self.clock.now();
        let started = Instant::now();
        let stale: Vec<(String, String)> = self
            .outbox
            .entries
            .values()
            .filter(|e| e.notification.created_at.saturating_add(OUTBOX_MAX_AGE) <= now)
            .map(|e| (e.notification.id.clone(), e.notification.receiver.clone()))
            .collect();
        for (id, name) in stale {
            tracing::error!(job = %self.job, receiver = name, id, "notification undelivered for 24 h, given up");
            self.stats.receiver(&name, |c| &c.failed);
            if let Err(e) = self.outbox.remove(&id) {
                tracing::error!(job = %self.job, "outbox: {e}");
            }
        }
        let mut due: Vec<(i64, String)> = self
            .outbox
            .entries
            .values()
            .filter(|e| e.next_attempt_at <= now)
            .map(|e| (e.notification.created_at, e.notification.id.clone()))
            .collect();
        due.sort();
        let mut down: HashSet<String> = HashSet::new();
        for (_, id) in due {
            if started.elapsed() > DELIVER_BUDGET {
                break;
            }
            let Some(mut entry) = self.outbox.entries.get(&id).cloned() else { continue };
            let name = entry.notification.receiver.clone();
            if down.contains(&name) {
                continue;
            }
            let Some(receiver) = self.receivers.get_mut(&name) else { continue };
            match receiver.send(&entry.notification) {
                Ok(()) => {
                    tracing::info!(job = %self.job, receiver = name, id, attempts = entry.attempts + 1, "notification delivered");
                    self.stats.receiver(&name, |c| &c.sent);
                    if let Err(e) = self.outbox.remove(&id) {
                        tracing::error!(job = %self.job, "outbox (the notification may be sent again): {e}");
                    }
                }
                Err(SendError::Retryable(msg)) => {
                    entry.attempts += 1;
                    let wait = backoff(&id, entry.attempts);
                    entry.next_attempt_at = now.saturating_add(wait);
                    tracing::warn!(job = %self.job, receiver = name, id, attempts = entry.attempts, retry_in_ms = wait / 1000, "notification failed: {msg}");
                    self.stats.receiver(&name, |c| &c.retried);
                    down.insert(name);
                    if let Err(e) = self.outbox.put(entry) {
                        tracing::error!(job = %self.job, "outbox: {e}");
                    }
                }
                Err(SendError::Permanent(msg)) => {
                    tracing::error!(job = %self.job, receiver = name, id, "notification refused, dropped: {msg}");
                    self.stats.receiver(&name, |c| &c.failed);
                    if let Err(e) = self.outbox.remove(&id) {
                        tracing::error!(job = %self.job, "outbox: {e}");
                    }
                }
            }
        }
        self.stats.outbox_size.store(self.outbox.len() as u64, Ordering::Relaxed);
    }
}

enum Msg {
    Alert(Box<Alert>),
    FlushNow,
    Stop,
}

/// A manager running on its own thread, ticking every 100 ms. Dropping it runs a final tick
/// and stops the thread, waiting a bounded time.
pub struct ManagerHandle {
    tx: mpsc::SyncSender<Msg>,
    done: mpsc::Receiver<()>,
    thread: Option<std::thread::JoinHandle<()>>,
    stats: Arc<StatsInner>,
    silences: Silences,
}

/// Alerts waiting for the manager's thread, at most: beyond, `push` waits (backpressure), so a
/// flood of alerts while a receiver is slow cannot take all memory.
const QUEUE: usize = 10_000;

/// Runs `manager` on its own thread; pushing to the handle waits for delivery only while
/// [`QUEUE`] alerts are already waiting.
pub fn spawn(mut manager: Manager) -> ManagerHandle {
    let (tx, rx) = mpsc::sync_channel::<Msg>(QUEUE);
    let (done_tx, done) = mpsc::channel();
    let stats = manager.stats.clone();
    let silences = manager.silences.clone();
    let name = format!("alerts-{}", manager.job);
    let run = move || {
        let mut last = Instant::now();
        loop {
            match rx.recv_timeout(TICK.saturating_sub(last.elapsed())) {
                Ok(Msg::Alert(a)) => manager.push(*a),
                Ok(Msg::FlushNow) => {
                    manager.flush_now();
                    last = Instant::now();
                }
                Ok(Msg::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
            if last.elapsed() >= TICK {
                manager.tick();
                last = Instant::now();
            }
        }
        while let Ok(Msg::Alert(a)) = rx.try_recv() {
            manager.push(*a);
        }
        manager.tick();
        let _ = done_tx.send(());
    };
    let thread = match std::thread::Builder::new().name(name).spawn(run) {
        Ok(t) => Some(t),
        Err(e) => {
            tracing::error!("cannot start the alert manager's thread: {e}");
            None
        }
    };
    ManagerHandle { tx, done, thread, stats, silences }
}

impl ManagerHandle {
    pub fn push(&self, alert: Alert) {
        if self.tx.send(Msg::Alert(Box::new(alert))).is_err() {
            tracing::error!("the alert manager has stopped; alert dropped");
        }
    }

    pub fn stats(&self) -> Stats {
        self.stats.snapshot()
    }

    pub fn silences(&self) -> &Silences {
        &self.silences
    }

    /// Asks for [`Manager::flush_now`] (the job's input has ended).
    pub fn flush_now(&self) {
        let _ = self.tx.send(Msg::FlushNow);
    }
}

impl ManagerHandle {
    /// Stops the manager after a final tick (bounded wait) and returns its counters then.
    pub fn close(mut self) -> Stats {
        self.stop();
        self.stats.snapshot()
    }

    fn stop(&mut self) {
        let _ = self.tx.send(Msg::Stop);
        let Some(thread) = self.thread.take() else { return };
        match self.done.recv_timeout(STOP_WAIT) {
            Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                let _ = thread.join();
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                tracing::warn!("the alert manager did not stop within {STOP_WAIT:?}; left to finish on its own");
            }
        }
    }
}

impl Drop for ManagerHandle {
    fn drop(&mut self) {
        self.stop();
    }
}
