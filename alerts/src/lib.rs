//! Alerts to notifications, with Alertmanager's semantics: alerts are routed through a tree of
//! routes, grouped by labels, deduplicated by fingerprint, silenced and inhibited, and a group's
//! notification is sent after `group_wait`, then at most every `group_interval`, and repeated
//! unchanged only after `repeat_interval` — as Alertmanager's notification log decides.
//!
//! Delivery is durable: a due notification is written to an outbox in the state directory before
//! it is sent, and removed only once the receiver accepted it; retryable failures are retried with
//! exponential backoff, also after a restart. The notification log is persisted too, so a
//! restarted job does not notify the same alerts again within `repeat_interval`.
//!
//! Receivers: webhook (Alertmanager's JSON, HMAC-signed), Slack incoming webhooks, PagerDuty
//! Events API v2, email over SMTP and Redis pub/sub.
//!
//! Time is unix microseconds throughout and comes from a [`Clock`], so tests drive it with a
//! [`ManualClock`].

mod alert;
mod fsutil;
mod manager;
mod matcher;
mod nflog;
mod notify;
mod outbox;
mod route;
mod silence;

pub use alert::{Alert, Clock, ManualClock, SystemClock};
pub use manager::{spawn, Manager, ManagerHandle, ReceiverStats, Stats};
pub use matcher::CompiledMatcher;
pub use notify::{sign, Notification, NotifiedAlert};
pub use silence::{Silence, SilenceState, Silences};

use std::path::PathBuf;

/// Errors of the alerting runtime.
#[derive(Debug, thiserror::Error)]
pub enum AlertError {
    /// The `[alerting]` configuration cannot be used.
    #[error("alerting configuration: {0}")]
    Config(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: invalid JSON: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("invalid silence: {0}")]
    InvalidSilence(String),
    #[error("no silence with id {0}")]
    NotFound(String),
    /// A receiver could not be reached or refused the credentials.
    #[error("receiver `{receiver}` ({kind}): {message}")]
    Connection { receiver: String, kind: &'static str, message: String },
}

impl AlertError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> AlertError {
        AlertError::Io { path: path.into(), source }
    }
}
