//! The runtime: turns a validated [`Plan`] into a Timely dataflow on every worker, runs it to
//! completion (or forever, for unbounded sources), and reports what happened.
//!
//! Where a record goes: [`ingest`] (source, stateless steps in [`steps`] with the models of
//! [`scoring`], watermark, pre-aggregation) ->
//! exchange by (tenant, key) -> [`dataflow`]'s window operator (merge, fire on the frontier) ->
//! exchange to worker 0 -> sink operator (file/stdout writers, dead letters, late output), where
//! [`alerting`] judges each output row by the job's alert rules.

pub mod alerting;
pub mod checkpoint;
pub mod dataflow;
pub mod host;
pub mod ingest;
pub mod run;
pub mod scoring;
pub mod stats;
pub mod steps;

use serde::{Deserialize, Serialize};
use tenantflow_connectors::DeadLetter;
use tenantflow_core::Value;
use tenantflow_operators::Partial;

pub use run::{run, EngineError, RestoreFrom, RunConfig};
pub use stats::{RunReport, TenantStats};
pub use tenantflow_core::Plan;

/// What flows between operators.
#[derive(Clone, Serialize, Deserialize)]
pub enum Msg {
    /// Pre-aggregated window state, on its way to the worker that owns its key.
    Partial(Partial),
    /// An event for a pattern step (its row after the stateless steps, and its event time), on
    /// its way to the worker that owns its key (`hash`).
    Event { hash: u64, time: i64, row: Vec<Value> },
    /// A finished output row (output schema order).
    Row(Vec<Value>),
    /// A record that could not be processed.
    Dead(DeadLetter),
    /// A late event's declared fields (late policy `side_output`).
    Late(Vec<Value>),
    /// Checkpoint barrier `epoch`, sent by every sender to every receiver `to`. Sources whose
    /// input ended before it are listed in `finished`. `stop` is the sender's savepoint
    /// proposal once it has seen a stop request (0 before).
    Barrier { epoch: u64, to: u32, finished: Vec<u32>, stop: u64 },
    /// The sender's source is exhausted: it will send no more barriers.
    End { to: u32 },
}

/// A message with the index of the worker that sent it (barrier alignment needs to know).
pub type Envelope = (u32, Msg);
