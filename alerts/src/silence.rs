//! Silences: label matchers that mute alerts for a time, shared with the cluster API.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use tenantflow_core::alerting::Matcher;
use xxhash_rust::xxh3::xxh3_64;

use crate::fsutil;
use crate::matcher::{all_match, compile_all, CompiledMatcher};
use crate::AlertError;

/// A silence mutes the alerts all its matchers match while `starts_at <= now < ends_at`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Silence {
    pub id: String,
    pub matchers: Vec<Matcher>,
    pub starts_at: i64,
    pub ends_at: i64,
    pub created_by: String,
    pub comment: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SilenceState {
    Pending,
    Active,
    Expired,
}

impl Silence {
    pub fn state(&self, now: i64) -> SilenceState {
        if now < self.starts_at {
            SilenceState::Pending
        } else if now < self.ends_at {
            SilenceState::Active
        } else {
            SilenceState::Expired
        }
    }
}

#[derive(Debug)]
struct Inner {
    path: Option<PathBuf>,
    silences: Vec<(Silence, Vec<CompiledMatcher>)>,
}

/// The silences of a job. Cheap to clone: clones share one set. Optionally persisted to a JSON
/// file, rewritten atomically on every change.
#[derive(Debug, Clone)]
pub struct Silences {
    inner: Arc<Mutex<Inner>>,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(0);

impl Silences {
    /// Silences kept in memory only.
    pub fn in_memory() -> Silences {
        Silences { inner: Arc::new(Mutex::new(Inner { path: None, silences: Vec::new() })) }
    }

    /// Loads the silences persisted at `path` (none if the file does not exist yet).
    pub fn open(path: Option<PathBuf>) -> Result<Silences, AlertError> {
        let mut silences = Vec::new();
        if let Some(p) = &path {
            for s in fsutil::read_json::<Vec<Silence>>(p)?.unwrap_or_default() {
                let compiled = compile_all(&s.matchers)?;
                silences.push((s, compiled));
            }
        }
        Ok(Silences { inner: Arc::new(Mutex::new(Inner { path, silences })) })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic elsewhere while holding the lock leaves the list consistent: every change is
        // one push or one field update.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a silence. At least one matcher is needed, and one that does not match the empty
    /// string (else it would silence everything); `ends_at` must be after `starts_at`.
    pub fn add(
        &self,
        matchers: Vec<Matcher>,
        starts_at: i64,
        ends_at: i64,
        created_by: &str,
        comment: &str,
    ) -> Result<Silence, AlertError> {
        if matchers.is_empty() {
            return Err(AlertError::InvalidSilence("at least one matcher is needed".into()));
        }
        if ends_at <= starts_at {
            return Err(AlertError::InvalidSilence("ends_at must be after starts_at".into()));
        }
        let compiled = compile_all(&matchers).map_err(|e| AlertError::InvalidSilence(e.to_string()))?;
        if compiled.iter().all(|m| m.matches_value("")) {
            return Err(AlertError::InvalidSilence(
                "at least one matcher must not match the empty string (it would silence every alert)".into(),
            ));
        }
        let seed = format!(
            "{}|{starts_at}|{ends_at}|{created_by}|{comment}|{:?}|{}|{}",
            matchers.iter().map(|m| m.to_string()).collect::<Vec<_>>().join(","),
            std::time::SystemTime::now(),
            std::process::id(),
            NEXT_ID.fetch_add(1, Ordering::Relaxed)
        );
        let silence = Silence {
            id: format!("{:016x}", xxh3_64(seed.as_bytes())),
            matchers,
            starts_at,
            ends_at,
            created_by: created_by.to_string(),
            comment: comment.to_string(),
        };
        let mut inner = self.lock();
        inner.silences.push((silence.clone(), compiled));
        if let Err(e) = persist(&inner) {
            inner.silences.pop();
            return Err(e);
        }
        tracing::info!(id = %silence.id, created_by, "silence added");
        Ok(silence)
    }

    /// Ends a silence now (a pending one never becomes active).
    pub fn expire(&self, id: &str, now: i64) -> Result<Silence, AlertError> {
        let mut inner = self.lock();
        let i = inner.silences.iter().position(|(s, _)| s.id == id).ok_or_else(|| AlertError::NotFound(id.to_string()))?;
        let before = inner.silences[i].0.clone();
        if before.state(now) == SilenceState::Expired {
            return Ok(before);
        }
        {
            let s = &mut inner.silences[i].0;
            s.ends_at = now;
            s.starts_at = s.starts_at.min(now);
        }
        if let Err(e) = persist(&inner) {
            inner.silences[i].0 = before;
            return Err(e);
        }
        tracing::info!(id, "silence expired");
        Ok(inner.silences[i].0.clone())
    }

    /// Forgets silences that expired more than `retention` ago (Alertmanager keeps them 120 h).
    pub fn prune(&self, now: i64, retention: i64) -> Result<usize, AlertError> {
        let mut inner = self.lock();
        let before = inner.silences.len();
        inner.silences.retain(|(s, _)| s.ends_at.saturating_add(retention) > now);
        let pruned = before - inner.silences.len();
        if pruned > 0 {
            persist(&inner)?;
        }
        Ok(pruned)
    }

    pub fn list(&self) -> Vec<Silence> {
        self.lock().silences.iter().map(|(s, _)| s.clone()).collect()
    }

    pub fn get(&self, id: &str) -> Option<Silence> {
        self.lock().silences.iter().find(|(s, _)| s.id == id).map(|(s, _)| s.clone())
    }

    /// The id of an active silence that mutes these labels.
    pub fn silenced_by(&self, labels: &BTreeMap<String, String>, now: i64) -> Option<String> {
        self.lock().silences.iter().find(|(s, m)| s.state(now) == SilenceState::Active && all_match(m, labels)).map(|(s, _)| s.id.clone())
    }
}

fn persist(inner: &Inner) -> Result<(), AlertError> {
    match &inner.path {
        Some(p) => fsutil::write_json(p, &inner.silences.iter().map(|(s, _)| s).collect::<Vec<_>>()),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn states_validation_and_matching() {
        let s = Silences::in_memory();
        let m = vec![Matcher::parse("tenant=acme").expect("m")];
        assert!(matches!(s.add(vec![], 0, 10, "me", ""), Err(AlertError::InvalidSilence(_))));
        assert!(matches!(s.add(m.clone(), 10, 10, "me", ""), Err(AlertError::InvalidSilence(_))));
        assert!(matches!(s.add(vec![Matcher::parse("x=~\".*\"").expect("m")], 0, 10, "me", ""), Err(AlertError::InvalidSilence(_))));
        let sil = s.add(m, 100, 200, "me", "maintenance").expect("add");
        assert_eq!(sil.state(99), SilenceState::Pending);
        assert_eq!(sil.state(100), SilenceState::Active);
        assert_eq!(sil.state(200), SilenceState::Expired);
        let acme = labels(&[("tenant", "acme"), ("alertname", "A")]);
        assert_eq!(s.silenced_by(&acme, 50), None);
        assert_eq!(s.silenced_by(&acme, 150), Some(sil.id.clone()));
        assert_eq!(s.silenced_by(&labels(&[("tenant", "other")]), 150), None);
        let expired = s.expire(&sil.id, 160).expect("expire");
        assert_eq!(expired.ends_at, 160);
        assert_eq!(s.silenced_by(&acme, 160), None);
        assert!(matches!(s.expire("nope", 0), Err(AlertError::NotFound(_))));
        // Clones share the set.
        assert_eq!(s.clone().list().len(), 1);
        // Expired silences are kept for the retention, then forgotten.
        assert_eq!(s.prune(160 + 99, 100).expect("prune"), 0);
        assert_eq!(s.prune(160 + 100, 100).expect("prune"), 1);
        assert!(s.list().is_empty());
    }
}
