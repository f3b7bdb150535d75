//! Sources and sinks: where rows enter and leave a job (generator, files, stdin, Kafka;
//! ClickHouse and Redis as sinks).
//!
//! Sources fill a [`Batch`] of typed rows (bad records become [`DeadLetter`]s, never errors that
//! stop the job); sinks write finished rows, and a sink whose service is down is opened again
//! until it answers ([`opener`]). Each worker owns its own source instance and reads
//! its own share of the input (see each source's docs for how the input is split).

pub mod clickhouse;
pub mod generator;
pub mod json;
pub mod kafka;
pub mod opener;
pub mod redis;
mod sender;
pub mod sink;
pub mod source;

pub use opener::{Opener, Opening};
pub use sink::{DeadLetterSink, DeadLetterWriter, Sink};
pub use source::{Batch, DeadLetter, Poll, Source};

/// Errors opening a source or sink (bad paths, unreadable files).
#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    #[error("no file matches `{0}`")]
    NoMatch(String),
    #[error("invalid file pattern `{pattern}`: {message}")]
    BadPattern { pattern: String, message: String },
    #[error("kafka: {0}")]
    Kafka(String),
    /// A sink's service refused its configuration (unknown table, wrong columns, bad URL).
    #[error("{0}")]
    Sink(String),
    /// A sink's service cannot be reached (yet): opening is retried, the job waits.
    #[error("{0}")]
    Unavailable(String),
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
}
