//! The model registry: models by name and version in a directory, with their metadata, which
//! version is live, an optional shadow candidate, and the history that rollback walks back.
//!
//! ```text
//! <root>/<name>/<version>/model.onnx
//! <root>/<name>/<version>/meta.json   ModelMeta
//! <root>/<name>/state.json            live, shadow, previous live versions
//! ```
//! Every file is replaced atomically, so a job reading the registry while the API writes it sees
//! the old state or the new one. A running job re-reads `state.json` at each checkpoint.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tenantflow_core::fsutil::write_atomic;

use crate::onnx::{OnnxModel, TensorInfo};
use crate::predict::Task;
use crate::MlError;

/// Per-feature training distribution, for drift monitoring: bin edges and the share of
/// training rows in each of the `edges.len() + 1` bins.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Distribution {
    pub edges: Vec<f64>,
    pub fractions: Vec<f64>,
}

/// Where a model came from and how well it did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Training {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u64>,
    #[serde(default)]
    pub metrics: BTreeMap<String, f64>,
    /// Feature name -> training distribution.
    #[serde(default)]
    pub distribution: BTreeMap<String, Distribution>,
}

/// What an upload says about a model; the registry adds the rest.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UploadMeta {
    /// Feature i of the model's input is this SQL expression over the scored row's fields
    /// (an event's or a window result's), in order.
    pub features: Vec<String>,
    #[serde(default)]
    pub description: String,
    /// Names of the class labels 0, 1, ... (classifiers).
    #[serde(default)]
    pub class_names: Vec<String>,
    #[serde(default)]
    pub training: Training,
    /// The tenant that owns the model; none for a model every tenant's jobs may use.
    #[serde(default)]
    pub tenant: Option<String>,
    // The training script writes these too; the registry assigns its own.
    #[serde(default, skip_serializing)]
    pub name: Option<String>,
    #[serde(default, skip_serializing)]
    pub version: Option<u32>,
}

/// A registered model version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelMeta {
    pub name: String,
    pub version: u32,
    pub description: String,
    pub features: Vec<String>,
    pub class_names: Vec<String>,
    #[serde(flatten)]
    pub task: Task,
    pub inputs: Vec<TensorInfo>,
    pub outputs: Vec<TensorInfo>,
    pub training: Training,
    pub tenant: Option<String>,
    /// SHA-256 of model.onnx, hex.
    pub sha256: String,
    pub size_bytes: u64,
    /// RFC 3339.
    pub created: String,
}

/// Which versions of a model are in use.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelState {
    pub live: Option<u32>,
    /// A candidate scored beside the live version; jobs report their disagreement.
    pub shadow: Option<u32>,
    /// Earlier live versions, most recent last: what `rollback` returns to.
    pub history: Vec<u32>,
}

/// One model in a listing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSummary {
    pub name: String,
    pub versions: Vec<u32>,
    #[serde(flatten)]
    pub state: ModelState,
    pub tenant: Option<String>,
    pub description: String,
}

pub struct Registry {
    root: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> MlError + '_ {
    move |source| MlError::Io { path: path.display().to_string(), source }
}

/// Model names are directory names: keep them to a safe alphabet.
pub fn check_name(name: &str) -> Result<(), MlError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && !name.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(MlError::Invalid(format!("model name `{name}`: expected 1 to 64 letters, digits, `-` or `_`, not starting with `-`")))
    }
}

impl Registry {
    pub fn open(root: impl Into<PathBuf>) -> Registry {
        Registry { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn model_dir(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// Path of a version's ONNX file.
    pub fn model_path(&self, name: &str, version: u32) -> PathBuf {
        self.model_dir(name).join(version.to_string()).join("model.onnx")
    }

    /// Adds a new version of `name` (1 for a new model). The ONNX file is checked (it must
    /// decode, take one float `[batch, n]` input with `n` = the number of features, and give a
    /// label and probabilities or a score). The first version of a model becomes live; later
    /// ones wait for `promote`.
    pub fn upload(&self, name: &str, bytes: &[u8], meta: UploadMeta, created: String) -> Result<ModelMeta, MlError> {
        check_name(name)?;
        let onnx = OnnxModel::parse(bytes)?;
        let width = onnx.feature_count()?;
        let task = onnx.task()?;
        if meta.features.len() != width {
            return Err(MlError::Invalid(format!(
                "the model takes {width} features and the metadata maps {}: `features` must list one expression per model input column",
                meta.features.len()
            )));
        }
        if let Task::Classifier { classes } = task {
            if !meta.class_names.is_empty() && classes > 0 && meta.class_names.len() != classes {
                return Err(MlError::Invalid(format!(
                    "the model has {classes} classes and `class_names` lists {}",
                    meta.class_names.len()
                )));
            }
        }
        let versions = self.versions(name)?;
        let version = versions.last().copied().unwrap_or(0) + 1;
        let model = ModelMeta {
            name: name.to_string(),
            version,
            description: meta.description,
            features: meta.features,
            class_names: meta.class_names,
            task,
            inputs: onnx.inputs,
            outputs: onnx.outputs,
            training: meta.training,
            tenant: meta.tenant,
            sha256: hex(&Sha256::digest(bytes)),
            size_bytes: bytes.len() as u64,
            created,
        };
        let dir = self.model_dir(name).join(version.to_string());
        let json = serde_json::to_vec_pretty(&model).map_err(|e| MlError::Invalid(e.to_string()))?;
        // The ONNX file first: a version exists once its meta.json does.
        write_atomic(&dir.join("model.onnx"), &[bytes]).map_err(io(&dir))?;
        write_atomic(&dir.join("meta.json"), &[&json]).map_err(io(&dir))?;
        if versions.is_empty() {
            self.write_state(name, &ModelState { live: Some(version), ..ModelState::default() })?;
        }
        Ok(model)
    }

    /// Versions of a model that have metadata, ascending.
    pub fn versions(&self, name: &str) -> Result<Vec<u32>, MlError> {
        let dir = self.model_dir(name);
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(&dir)(e)),
        };
        let mut versions: Vec<u32> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
            .filter(|v: &u32| dir.join(v.to_string()).join("meta.json").exists())
            .collect();
        versions.sort_unstable();
        Ok(versions)
    }

    pub fn state(&self, name: &str) -> Result<ModelState, MlError> {
        let path = self.model_dir(name).join("state.json");
        match fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| MlError::Invalid(format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ModelState::default()),
            Err(e) => Err(io(&path)(e)),
        }
    }

    fn write_state(&self, name: &str, state: &ModelState) -> Result<(), MlError> {
        let path = self.model_dir(name).join("state.json");
        let json = serde_json::to_vec_pretty(state).map_err(|e| MlError::Invalid(e.to_string()))?;
        write_atomic(&path, &[&json]).map_err(io(&path))
    }

    pub fn describe(&self, name: &str, version: u32) -> Result<ModelMeta, MlError> {
        check_name(name)?;
        let path = self.model_dir(name).join(version.to_string()).join("meta.json");
        match fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| MlError::Invalid(format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(MlError::NotFound(format!("model `{name}` has no version {version}")))
            }
            Err(e) => Err(io(&path)(e)),
        }
    }

    /// The version a job uses: `pinned`, else the live one.
    pub fn resolve(&self, name: &str, pinned: Option<u32>) -> Result<ModelMeta, MlError> {
        check_name(name)?;
        let version = match pinned {
            Some(v) => v,
            None => {
                let state = self.state(name)?;
                match state.live {
                    Some(v) => v,
                    None if self.versions(name)?.is_empty() => {
                        return Err(MlError::NotFound(format!("no model `{name}` in the registry at {}", self.root.display())))
                    }
                    None => return Err(MlError::NotFound(format!("model `{name}` has no live version: promote one"))),
                }
            }
        };
        self.describe(name, version)
    }

    pub fn list(&self) -> Result<Vec<ModelSummary>, MlError> {
        let entries = match fs::read_dir(&self.root) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(&self.root)(e)),
        };
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str().map(String::from))
            .filter(|n| check_name(n).is_ok())
            .collect();
        names.sort();
        let mut out = Vec::new();
        for name in names {
            let versions = self.versions(&name)?;
            let Some(&latest) = versions.last() else { continue };
            let state = self.state(&name)?;
            let meta = self.describe(&name, state.live.unwrap_or(latest))?;
            out.push(ModelSummary { name, versions, state, tenant: meta.tenant, description: meta.description });
        }
        Ok(out)
    }

    fn require(&self, name: &str, version: u32) -> Result<(), MlError> {
        self.describe(name, version).map(|_| ())
    }

    /// Makes `version` live. The previous live version goes on the rollback history; a shadow
    /// candidate that is promoted stops shadowing.
    pub fn promote(&self, name: &str, version: u32) -> Result<ModelState, MlError> {
        self.require(name, version)?;
        let mut state = self.state(name)?;
        if state.live == Some(version) {
            return Ok(state);
        }
        if let Some(old) = state.live {
            state.history.push(old);
        }
        state.live = Some(version);
        if state.shadow == Some(version) {
            state.shadow = None;
        }
        self.write_state(name, &state)?;
        Ok(state)
    }

    /// Returns to the version that was live before the current one.
    pub fn rollback(&self, name: &str) -> Result<ModelState, MlError> {
        check_name(name)?;
        let mut state = self.state(name)?;
        let previous =
            state.history.pop().ok_or_else(|| MlError::Invalid(format!("model `{name}` has no earlier live version to roll back to")))?;
        state.live = Some(previous);
        self.write_state(name, &state)?;
        Ok(state)
    }

    /// Sets (or with `None` clears) the shadow candidate.
    pub fn shadow(&self, name: &str, version: Option<u32>) -> Result<ModelState, MlError> {
        check_name(name)?;
        if let Some(v) = version {
            self.require(name, v)?;
        }
        let mut state = self.state(name)?;
        if version.is_some() && version == state.live {
            return Err(MlError::Invalid(format!("version {} of `{name}` is already live", version.unwrap_or(0))));
        }
        state.shadow = version;
        self.write_state(name, &state)?;
        Ok(state)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(name: &str) -> Vec<u8> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/models").join(format!("{name}.onnx"));
        fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    fn meta(n: usize) -> UploadMeta {
        UploadMeta { features: (0..n).map(|i| format!("f{i}")).collect(), ..UploadMeta::default() }
    }

    #[test]
    fn versions_promote_rollback_and_shadow() {
        let dir = std::env::temp_dir().join(format!("tf-registry-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let reg = Registry::open(&dir);
        assert!(reg.list().expect("empty list").is_empty());
        let v1 = reg.upload("churn", &model("logreg-multiclass"), meta(6), "t1".into()).expect("upload 1");
        assert_eq!((v1.version, v1.task, v1.features.len()), (1, Task::Classifier { classes: 3 }, 6));
        assert_eq!(v1.sha256.len(), 64);
        assert_eq!(v1.inputs[0].shape, vec![None, Some(6)]);
        // The first version is live; the second waits.
        let v2 = reg.upload("churn", &model("forest-multiclass"), meta(6), "t2".into()).expect("upload 2");
        assert_eq!(v2.version, 2);
        assert_eq!(reg.resolve("churn", None).expect("live").version, 1);
        assert_eq!(reg.resolve("churn", Some(2)).expect("pinned").version, 2);
        let s = reg.shadow("churn", Some(2)).expect("shadow");
        assert_eq!((s.live, s.shadow), (Some(1), Some(2)));
        let s = reg.promote("churn", 2).expect("promote");
        assert_eq!((s.live, s.shadow, s.history.clone()), (Some(2), None, vec![1]));
        let s = reg.rollback("churn").expect("rollback");
        assert_eq!((s.live, s.history.clone()), (Some(1), vec![]));
        assert!(matches!(reg.rollback("churn"), Err(MlError::Invalid(_))));
        let listed = reg.list().expect("list");
        assert_eq!(listed.len(), 1);
        assert_eq!((listed[0].versions.clone(), listed[0].state.live), (vec![1, 2], Some(1)));
        // A reopened registry sees the same.
        assert_eq!(Registry::open(&dir).state("churn").expect("state").live, Some(1));
        fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn bad_uploads_and_lookups_say_what_is_wrong() {
        let dir = std::env::temp_dir().join(format!("tf-registry-bad-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let reg = Registry::open(&dir);
        let err = |r: Result<ModelMeta, MlError>| r.expect_err("should fail").to_string();
        assert!(err(reg.upload("x", b"not onnx", meta(6), String::new())).contains("not an ONNX model"));
        assert!(err(reg.upload("x", &model("logreg-multiclass"), meta(5), String::new())).contains("takes 6 features"));
        let mut names = meta(6);
        names.class_names = vec!["a".into(), "b".into()];
        assert!(err(reg.upload("x", &model("logreg-multiclass"), names, String::new())).contains("3 classes"));
        assert!(err(reg.upload("../etc", &model("logreg-multiclass"), meta(6), String::new())).contains("model name"));
        assert!(matches!(reg.resolve("missing", None), Err(MlError::NotFound(_))));
        reg.upload("x", &model("logreg-multiclass"), meta(6), String::new()).expect("upload");
        assert!(matches!(reg.describe("x", 9), Err(MlError::NotFound(_))));
        assert!(matches!(reg.promote("x", 9), Err(MlError::NotFound(_))));
        assert!(matches!(reg.shadow("x", Some(1)), Err(MlError::Invalid(_))));
        fs::remove_dir_all(&dir).expect("cleanup");
    }
}
