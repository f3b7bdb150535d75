//! The notification log: what was last notified for each (group, receiver), persisted so that a
//! restarted job does not notify the same alerts again within `repeat_interval`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::fsutil;
use crate::AlertError;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Entry {
    pub group_key: String,
    pub receiver: String,
    pub firing: BTreeSet<u64>,
    pub resolved: BTreeSet<u64>,
    /// When the notification was decided (unix µs).
    pub sent_at: i64,
}

#[derive(Debug)]
pub(crate) struct NotificationLog {
    path: PathBuf,
    entries: BTreeMap<(String, String), Entry>,
    /// Entries recorded since the last write.
    dirty: bool,
}

impl NotificationLog {
    pub fn open(path: PathBuf) -> Result<NotificationLog, AlertError> {
        let entries = fsutil::read_json::<Vec<Entry>>(&path)?
            .unwrap_or_default()
            .into_iter()
            .map(|e| ((e.group_key.clone(), e.receiver.clone()), e))
            .collect();
        Ok(NotificationLog { path, entries, dirty: false })
    }

    pub fn get(&self, group_key: &str, receiver: &str) -> Option<&Entry> {
        self.entries.get(&(group_key.to_string(), receiver.to_string()))
    }

    /// Records a notification and writes the log.
    #[cfg(test)]
    pub fn log(&mut self, entry: Entry) -> Result<(), AlertError> {
        self.record(entry);
        self.save()
    }

    /// Records a notification in memory; [`NotificationLog::save`] writes it (once for all the
    /// groups a tick flushes: the log is rewritten whole).
    pub fn record(&mut self, entry: Entry) {
        self.entries.insert((entry.group_key.clone(), entry.receiver.clone()), entry);
        self.dirty = true;
    }

    /// Writes the log if something was recorded since the last write.
    pub fn save(&mut self) -> Result<(), AlertError> {
        if self.dirty {
            self.persist()?;
            self.dirty = false;
        }
        Ok(())
    }

    /// Drops entries older than `retention`; writes the log if any went.
    pub fn gc(&mut self, now: i64, retention: i64) -> Result<(), AlertError> {
        let before = self.entries.len();
        self.entries.retain(|_, e| e.sent_at.saturating_add(retention) > now);
        if self.entries.len() != before {
            self.persist()?;
        }
        Ok(())
    }

    fn persist(&self) -> Result<(), AlertError> {
        fsutil::write_json(&self.path, &self.entries.values().collect::<Vec<_>>())
    }
}

/// Alertmanager's decision (its `DedupStage.needsUpdate`): notify when there are firing alerts
/// not in the last notification; when every alert resolved and the last notification had
/// firing ones; when newly resolved alerts exist and the receiver wants resolved notifications;
/// otherwise only once `repeat_interval` has passed.
pub(crate) fn needs_update(
    entry: Option<&Entry>,
    firing: &BTreeSet<u64>,
    resolved: &BTreeSet<u64>,
    send_resolved: bool,
    repeat_interval: i64,
    now: i64,
) -> bool {
    let Some(entry) = entry else {
        return !firing.is_empty();
    };
    if !firing.is_subset(&entry.firing) {
        return true;
    }
    if firing.is_empty() {
        return !entry.firing.is_empty();
    }
    if send_resolved && !resolved.is_subset(&entry.resolved) {
        return true;
    }
    entry.sent_at.saturating_add(repeat_interval) <= now
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(v: &[u64]) -> BTreeSet<u64> {
        v.iter().copied().collect()
    }

    fn entry(firing: &[u64], resolved: &[u64], sent_at: i64) -> Entry {
        Entry { group_key: "g".into(), receiver: "r".into(), firing: set(firing), resolved: set(resolved), sent_at }
    }

    #[test]
    fn decisions() {
        assert!(needs_update(None, &set(&[1]), &set(&[]), false, 100, 0));
        assert!(!needs_update(None, &set(&[]), &set(&[1]), true, 100, 0));
        let e = entry(&[1, 2], &[], 0);
        assert!(needs_update(Some(&e), &set(&[1, 2, 3]), &set(&[]), false, 100, 10));
        assert!(!needs_update(Some(&e), &set(&[1, 2]), &set(&[]), false, 100, 99));
        assert!(needs_update(Some(&e), &set(&[1, 2]), &set(&[]), false, 100, 100));
        // One of two resolved: only a receiver that wants resolved notifications hears of it.
        assert!(!needs_update(Some(&e), &set(&[1]), &set(&[2]), false, 100, 10));
        assert!(needs_update(Some(&e), &set(&[1]), &set(&[2]), true, 100, 10));
        // All resolved: notify (the caller leaves resolved alerts out for other receivers).
        assert!(needs_update(Some(&e), &set(&[]), &set(&[1, 2]), false, 100, 10));
        assert!(!needs_update(Some(&entry(&[], &[1, 2], 0)), &set(&[]), &set(&[1, 2]), true, 100, 1000));
    }

    #[test]
    fn persists_and_collects() {
        let dir = std::env::temp_dir().join(format!("tf-alerts-nflog-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("nflog.json");
        let mut log = NotificationLog::open(path.clone()).expect("open");
        log.log(entry(&[1], &[], 5)).expect("log");
        let reopened = NotificationLog::open(path.clone()).expect("reopen");
        assert_eq!(reopened.get("g", "r"), Some(&entry(&[1], &[], 5)));
        log.gc(20, 10).expect("gc");
        assert_eq!(NotificationLog::open(path).expect("reopen").get("g", "r"), None);
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
