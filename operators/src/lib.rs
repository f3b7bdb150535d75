//! Stateful operator logic, independent of the dataflow runtime: window assignment,
//! pre-aggregation before the exchange, merged window state, the aggregate accumulators, the
//! pattern automaton and the anomaly baselines.
//!
//! Stateless steps (filter, derive, select) are compiled expressions from `tenantflow-core`;
//! the engine wires these pieces into Timely operators.

pub mod aggregate;
pub mod anomaly;
pub mod cep;
pub mod window;

pub use aggregate::{Acc, Aggregates};
pub use window::{Fired, Partial, PreAggregator, WindowStore};
