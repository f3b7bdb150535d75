//! Alerts, their fingerprints, and the clock.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::Xxh3;

/// An alert as a rule (or an API client) pushes it. Times are unix microseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alert {
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub starts_at: i64,
    /// When the alert stops (or stopped) firing; `None` while unknown: the alert is then resolved
    /// once it has not been pushed again for `resolve_timeout`.
    pub ends_at: Option<i64>,
}

impl Alert {
    /// A firing alert with these labels since `starts_at`.
    pub fn new<K: Into<String>, V: Into<String>>(labels: impl IntoIterator<Item = (K, V)>, starts_at: i64) -> Alert {
        Alert {
            labels: labels.into_iter().map(|(k, v)| (k.into(), v.into())).collect(),
            annotations: BTreeMap::new(),
            starts_at,
            ends_at: None,
        }
    }

    /// Adds an annotation.
    pub fn annotate(mut self, name: impl Into<String>, value: impl Into<String>) -> Alert {
        self.annotations.insert(name.into(), value.into());
        self
    }

    /// The stable 64-bit identity of the alert: xxh3 of its sorted label set.
    pub fn fingerprint(&self) -> u64 {
        fingerprint(&self.labels)
    }

    /// Resolved once `ends_at` has passed.
    pub fn is_resolved(&self, now: i64) -> bool {
        self.ends_at.is_some_and(|e| e <= now)
    }
}

/// xxh3 of the sorted label set; names and values are separated by a byte UTF-8 never contains.
pub(crate) fn fingerprint(labels: &BTreeMap<String, String>) -> u64 {
    let mut h = Xxh3::new();
    for (k, v) in labels {
        h.update(k.as_bytes());
        h.update(&[0xff]);
        h.update(v.as_bytes());
        h.update(&[0xff]);
    }
    h.digest()
}

/// A fingerprint as it appears in payloads and files.
pub(crate) fn fp_hex(fp: u64) -> String {
    format!("{fp:016x}")
}

/// Where the runtime gets the time (unix µs).
pub trait Clock: Send + Sync {
    fn now(&self) -> i64;
}

/// The system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> i64 {
        tenantflow_core::time::now_micros()
    }
}

/// A clock that moves only when told to (tests).
#[derive(Debug, Default)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    pub fn new(now: i64) -> ManualClock {
        ManualClock(AtomicI64::new(now))
    }

    pub fn set(&self, now: i64) {
        self.0.store(now, Ordering::SeqCst);
    }

    pub fn advance(&self, by: i64) {
        self.0.fetch_add(by, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_depends_on_labels_only() {
        let a = Alert::new([("alertname", "A"), ("tenant", "x")], 1).annotate("summary", "s");
        let b = Alert::new([("tenant", "x"), ("alertname", "A")], 2);
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_ne!(a.fingerprint(), Alert::new([("alertname", "A"), ("tenant", "y")], 1).fingerprint());
        // Separators keep `ab=c` and `a=bc` apart.
        assert_ne!(Alert::new([("ab", "c")], 0).fingerprint(), Alert::new([("a", "bc")], 0).fingerprint());
        assert_eq!(fp_hex(0xab).len(), 16);
    }

    #[test]
    fn manual_clock_moves_when_told() {
        let c = ManualClock::new(10);
        c.advance(5);
        assert_eq!(c.now(), 15);
        c.set(3);
        assert_eq!(c.now(), 3);
    }
}
