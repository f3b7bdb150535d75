//! A loaded model, run natively or by ONNX Runtime.

use std::path::Path;

use crate::native::NativeModel;
use crate::onnx::OnnxModel;
use crate::predict::{Predictions, Task};
use crate::runtime::OrtModel;
use crate::MlError;

/// Which scorer runs a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Runtime {
    /// The native scorer when it supports the model, else ONNX Runtime.
    #[default]
    Auto,
    Native,
    Onnx,
}

impl Runtime {
    pub fn parse(s: &str) -> Option<Runtime> {
        match s {
            "auto" => Some(Runtime::Auto),
            "native" => Some(Runtime::Native),
            "onnx" => Some(Runtime::Onnx),
            _ => None,
        }
    }
}

pub enum Model {
    Native(NativeModel),
    Onnx(Box<OrtModel>),
}

impl OnnxModel {
    /// Width of the model's one float input `[batch, features]`.
    pub fn feature_count(&self) -> Result<usize, MlError> {
        let [input] = self.inputs.as_slice() else {
            return Err(MlError::Unsupported(format!("{} inputs (a model takes one feature tensor)", self.inputs.len())));
        };
        match (input.elem_type.as_str(), input.shape.as_slice()) {
            ("float", [_, Some(n)]) if *n > 0 => Ok(*n as usize),
            (t, s) => Err(MlError::Unsupported(format!(
                "input `{}` of type {t} and shape {s:?} (a model takes float [batch, features])",
                input.name
            ))),
        }
    }

    /// A classifier has an int64 label output beside its probabilities.
    pub fn task(&self) -> Result<Task, MlError> {
        let label = self.outputs.iter().any(|o| o.elem_type == "int64");
        let float = self.outputs.iter().find(|o| o.elem_type == "float");
        match (label, float) {
            // One float column beside a label is a score (an outlier detector), not classes.
            (true, Some(p)) => Ok(Task::Classifier { classes: p.shape.get(1).copied().flatten().filter(|c| *c > 1).unwrap_or(0) as usize }),
            (false, Some(_)) => Ok(Task::Regressor),
            _ => Err(MlError::Unsupported("outputs other than a label, probabilities or scores".into())),
        }
    }
}

impl Model {
    /// Loads a model file's bytes with the chosen runtime; `threads` is ONNX Runtime's intra-op
    /// thread count.
    pub fn load(bytes: &[u8], runtime: Runtime, threads: usize, library: Option<&Path>) -> Result<Model, MlError> {
        let onnx = OnnxModel::parse(bytes)?;
        match runtime {
            Runtime::Native => Ok(Model::Native(NativeModel::from_onnx(&onnx)?)),
            Runtime::Onnx => Ok(Model::Onnx(Box::new(OrtModel::load(bytes, &onnx, threads, library)?))),
            Runtime::Auto => match NativeModel::from_onnx(&onnx) {
                Ok(m) => Ok(Model::Native(m)),
                Err(MlError::Unsupported(_)) => Ok(Model::Onnx(Box::new(OrtModel::load(bytes, &onnx, threads, library)?))),
                Err(e) => Err(e),
            },
        }
    }

    pub fn runtime(&self) -> Runtime {
        match self {
            Model::Native(_) => Runtime::Native,
            Model::Onnx(_) => Runtime::Onnx,
        }
    }

    pub fn features(&self) -> usize {
        match self {
            Model::Native(m) => m.features(),
            Model::Onnx(m) => m.features(),
        }
    }

    pub fn task(&self) -> Task {
        match self {
            Model::Native(m) => m.task(),
            Model::Onnx(m) => m.task(),
        }
    }

    /// Scores `rows` rows of features (row-major, `features()` per row).
    pub fn predict(&mut self, x: &[f32], rows: usize, out: &mut Predictions) -> Result<(), MlError> {
        match self {
            Model::Native(m) => {
                m.predict(x, rows, out);
                Ok(())
            }
            Model::Onnx(m) => m.predict(x, rows, out),
        }
    }
}
