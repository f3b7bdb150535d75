//! ONNX Runtime, loaded at run time from the shared library of the `onnxruntime` wheel
//! (`scripts/setup.sh` puts it in `.onnxruntime/`). Only jobs that score with it load it.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::TensorRef;

use crate::onnx::OnnxModel;
use crate::predict::{Predictions, Task};
use crate::MlError;

/// The ONNX Runtime release the project is built and tested against.
pub const ORT_VERSION: &str = "1.31.1";
/// Where the library is looked for when neither the config nor the environment says.
pub const ENV_VAR: &str = "TENANTFLOW_ONNXRUNTIME";

static ENVIRONMENT: OnceLock<Result<ort::environment::Environment, String>> = OnceLock::new();

/// The library's path: `explicit` (from the job or cluster config), else `$TENANTFLOW_ONNXRUNTIME`,
/// else `$ORT_DYLIB_PATH`, else `.onnxruntime/libonnxruntime.so.<version>` in this directory or
/// the nearest parent that has it (a checkout of the project).
pub fn library_path(explicit: Option<&Path>) -> PathBuf {
    if let Some(p) = explicit {
        return p.to_path_buf();
    }
    for var in [ENV_VAR, "ORT_DYLIB_PATH"] {
        if let Some(p) = std::env::var_os(var).filter(|p| !p.is_empty()) {
            return PathBuf::from(p);
        }
    }
    let file = format!(".onnxruntime/libonnxruntime.so.{ORT_VERSION}");
    let mut dir = std::env::current_dir().unwrap_or_default();
    loop {
        let candidate = dir.join(&file);
        if candidate.exists() || !dir.pop() {
            return candidate;
        }
    }
}

/// Loads ONNX Runtime once per process. The error says what to run when the library is missing.
pub fn environment(explicit: Option<&Path>) -> Result<ort::environment::Environment, MlError> {
    ENVIRONMENT
        .get_or_init(|| {
            let path = library_path(explicit);
            if !path.exists() {
                return Err(format!(
                    "ONNX Runtime {ORT_VERSION} was not found at {}: run scripts/setup.sh (it fetches \
                     libonnxruntime.so.{ORT_VERSION} from the onnxruntime wheel into .onnxruntime/), or set {ENV_VAR} \
                     to the library's path, or score with runtime = \"native\"",
                    path.display()
                ));
            }
            ort::init_from(&path)
                .map_err(|e| format!("cannot load ONNX Runtime from {}: {e}", path.display()))?
                .with_name("tenantflow")
                .with_telemetry(false)
                .build()
                .map_err(|e| format!("cannot start ONNX Runtime from {}: {e}", path.display()))
        })
        .clone()
        .map_err(MlError::Runtime)
}

/// A model running in ONNX Runtime: one session, owned by one worker.
pub struct OrtModel {
    session: Session,
    input: String,
    features: usize,
    task: Task,
    /// Output names: label (classifiers), probabilities or scores.
    label_output: Option<String>,
    value_output: String,
}

fn rt<E: std::fmt::Display>(e: E) -> MlError {
    MlError::Runtime(e.to_string())
}

impl OrtModel {
    pub fn load(bytes: &[u8], model: &OnnxModel, threads: usize, library: Option<&Path>) -> Result<OrtModel, MlError> {
        let env = environment(library)?;
        let session = Session::builder(&env)
            .map_err(rt)?
            .with_optimization_level(GraphOptimizationLevel::All)
            .map_err(rt)?
            .with_intra_threads(threads.max(1))
            .map_err(rt)?
            .with_inter_threads(1)
            .map_err(rt)?
            .commit_from_memory(bytes)
            .map_err(rt)?;
        let features = model.feature_count()?;
        let label = model.outputs.iter().find(|o| o.elem_type == "int64").map(|o| o.name.clone());
        let value = model
            .outputs
            .iter()
            .find(|o| o.elem_type == "float")
            .map(|o| o.name.clone())
            .ok_or_else(|| MlError::Unsupported("the model has no float output (probabilities or scores)".into()))?;
        let task = model.task()?;
        Ok(OrtModel {
            session,
            input: model.inputs[0].name.clone(),
            features,
            task,
            label_output: label.filter(|_| matches!(task, Task::Classifier { .. })),
            value_output: value,
        })
    }

    pub fn task(&self) -> Task {
        self.task
    }

    pub fn features(&self) -> usize {
        self.features
    }

    /// Scores `rows` rows of features (row-major) into `out`.
    pub fn predict(&mut self, x: &[f32], rows: usize, out: &mut Predictions) -> Result<(), MlError> {
        out.clear();
        if rows == 0 {
            return Ok(());
        }
        let input = TensorRef::from_array_view(([rows, self.features], &x[..rows * self.features])).map_err(rt)?;
        let outputs = self.session.run(ort::inputs![self.input.as_str() => input]).map_err(rt)?;
        let (_, values) = outputs[self.value_output.as_str()].try_extract_tensor::<f32>().map_err(rt)?;
        match (&self.label_output, self.task) {
            (Some(label), Task::Classifier { .. }) => {
                let (_, labels) = outputs[label.as_str()].try_extract_tensor::<i64>().map_err(rt)?;
                if labels.len() != rows || !values.len().is_multiple_of(rows) {
                    return Err(MlError::Runtime(format!("{} labels and {} probabilities for {rows} rows", labels.len(), values.len())));
                }
                out.labels.extend_from_slice(labels);
                if values.len() == rows {
                    // One value per row beside a label is a score, not a class probability
                    // (IsolationForest: label -1 for outliers, and the decision score).
                    out.scores.extend_from_slice(values);
                } else {
                    out.probabilities.extend_from_slice(values);
                    out.classes = values.len() / rows;
                }
            }
            _ => {
                if values.len() != rows {
                    return Err(MlError::Runtime(format!("{} scores for {rows} rows", values.len())));
                }
                out.scores.extend_from_slice(values);
            }
        }
        out.rows = rows;
        Ok(())
    }
}
