//! tenantflow's data model and job language: values and schemas, SQL expressions compiled to
//! closures, and the job file format with its validation into a [`plan::Plan`].
//!
//! Everything here is independent of the dataflow runtime, so `tenantflow validate` and the
//! operators share one definition of what a job means.

pub mod alerting;
pub mod expr;
pub mod fsutil;
pub mod job;
pub mod pattern;
pub mod plan;
pub mod schema;
pub mod template;
pub mod time;
pub mod value;

pub use job::{JobError, JobErrors, JobSpec};
pub use plan::Plan;
pub use schema::Schema;
pub use value::{DataType, Value};
