//! The durable outbox: one file per notification that is due and not yet accepted.

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_64;

use crate::fsutil;
use crate::notify::Notification;
use crate::AlertError;

const BACKOFF_MIN: i64 = 1_000_000;
const BACKOFF_MAX: i64 = 300_000_000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct OutboxEntry {
    pub notification: Notification,
    /// Failed attempts so far.
    pub attempts: u32,
    /// Not to be tried before (unix µs).
    pub next_attempt_at: i64,
}

#[derive(Debug)]
pub(crate) struct Outbox {
    dir: PathBuf,
    pub entries: BTreeMap<String, OutboxEntry>,
}

impl Outbox {
    pub fn open(dir: PathBuf) -> Result<Outbox, AlertError> {
        fs::create_dir_all(&dir).map_err(|e| AlertError::io(&dir, e))?;
        let mut entries = BTreeMap::new();
        for item in fs::read_dir(&dir).map_err(|e| AlertError::io(&dir, e))? {
            let path = item.map_err(|e| AlertError::io(&dir, e))?.path();
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            if name.starts_with('.') && name.ends_with(".tmp") {
                // A write that did not finish: its notification was never due.
                let _ = fs::remove_file(&path);
                continue;
            }
            let Some(id) = name.strip_suffix(".json") else { continue };
            match fsutil::read_json::<OutboxEntry>(&path) {
                Ok(Some(e)) if e.notification.id == id => {
                    entries.insert(id.to_string(), e);
                }
                Ok(_) => tracing::warn!(path = %path.display(), "outbox file does not hold its notification; left alone"),
                Err(e) => tracing::warn!("outbox file unreadable, left alone: {e}"),
            }
        }
        Ok(Outbox { dir, entries })
    }

    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// Writes an entry (new or updated) durably.
    pub fn put(&mut self, entry: OutboxEntry) -> Result<(), AlertError> {
        fsutil::write_json(&self.path(&entry.notification.id), &entry)?;
        self.entries.insert(entry.notification.id.clone(), entry);
        Ok(())
    }

    pub fn remove(&mut self, id: &str) -> Result<(), AlertError> {
        self.entries.remove(id);
        let path = self.path(id);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(AlertError::io(path, e)),
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }
}

/// The wait after the `attempts`-th failure: 1 s doubling up to 5 min, plus up to 10% jitter
/// derived from the notification id (so entries failing together spread out, and tests can
/// still bound the wait).
pub(crate) fn backoff(id: &str, attempts: u32) -> i64 {
    let base = BACKOFF_MIN.saturating_mul(1i64 << attempts.saturating_sub(1).min(20)).min(BACKOFF_MAX);
    let h = xxh3_64(format!("{id}/{attempts}").as_bytes());
    base + base / 10 * (h % 1000) as i64 / 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_five_minutes_with_bounded_jitter() {
        for (attempts, base) in [(1, 1_000_000), (2, 2_000_000), (3, 4_000_000), (9, 256_000_000), (10, 300_000_000), (60, 300_000_000)] {
            let b = backoff("x", attempts);
            assert!(b >= base && b < base + base / 10, "attempt {attempts}: {b}");
        }
        assert_ne!(backoff("a", 3), backoff("b", 3), "jitter differs per notification");
    }
}
