//! Machine learning for tenantflow jobs: the model registry (models by name and version, with
//! their metadata, promotion, rollback and shadow candidates) and the scorers a `score` step
//! runs: ONNX Runtime through `ort`, or the native scorers for scikit-learn's linear and
//! tree-ensemble models; and the librosa-compatible audio features an `audio` step computes.
//!
//! Nothing here knows about dataflows: a scorer takes rows of `f32` features and fills
//! [`Predictions`]; the audio extractor takes samples and returns [`audio::Features`].

pub mod audio;
pub mod model;
pub mod native;
pub mod onnx;
pub mod predict;
pub mod registry;
pub mod runtime;

pub use model::{Model, Runtime};
pub use predict::{Predictions, Task};
pub use registry::{ModelMeta, Registry};

#[derive(Debug, thiserror::Error)]
pub enum MlError {
    #[error("bad model: {0}")]
    BadModel(String),
    #[error("the native scorer does not support {0}")]
    Unsupported(String),
    #[error("{0}")]
    Runtime(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error("model registry at {path}: {source}")]
    Io { path: String, source: std::io::Error },
}
