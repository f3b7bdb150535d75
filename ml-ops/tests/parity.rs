//! The native scorers against ONNX Runtime on the same ONNX files: every model the training
//! script writes (scripts/ml/train_models.py) scores the same random rows in both, including rows
//! whose features sit exactly on the trees' thresholds. Labels must be equal and probabilities
//! and scores within `TOLERANCE` (both compute in f32; sums differ only in order).

use std::path::{Path, PathBuf};

use tenantflow_ml::onnx::{Attrs, OnnxModel};
use tenantflow_ml::{Model, Predictions, Runtime};

const TOLERANCE: f32 = 1e-5;

fn models() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut paths: Vec<PathBuf> = std::fs::read_dir(root.join("tests/models"))
        .expect("tests/models")
        .map(|e| e.expect("entry").path())
        .chain(["../jobs/models/churn-risk/1/model.onnx", "../jobs/models/churn-risk/2/model.onnx"].map(|p| root.join(p)))
        .collect();
    paths.sort();
    paths
}

/// Deterministic rows: normal-ish values at several scales, small integers (the churn model's
/// counts), and each tree threshold of the model placed in some row.
fn rows(onnx: &OnnxModel, features: usize, n: usize) -> Vec<f32> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    let thresholds: Vec<(i64, f32)> = onnx
        .graph
        .node
        .iter()
        .flat_map(|node| {
            let a = Attrs(node);
            a.ints("nodes_featureids").into_iter().zip(a.floats("nodes_values")).collect::<Vec<_>>()
        })
        .collect();
    let mut x = Vec::with_capacity(n * features);
    for r in 0..n {
        for _ in 0..features {
            let v = match r % 3 {
                0 => (next() * 2.0 - 1.0) * 3.0,
                1 => (next() * 30.0).floor(),
                _ => (next() - 0.5) * 200.0,
            };
            x.push(v as f32);
        }
    }
    for (i, (feature, value)) in thresholds.iter().enumerate() {
        let row = (i * 7) % n;
        if (0..features as i64).contains(feature) {
            x[row * features + *feature as usize] = *value;
        }
    }
    x
}

#[test]
fn native_scorers_match_onnx_runtime() {
    let mut report = Vec::new();
    for path in models() {
        let bytes = std::fs::read(&path).expect("model file");
        let onnx = OnnxModel::parse(&bytes).expect("parse");
        let mut native = Model::load(&bytes, Runtime::Native, 1, None).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut ort = Model::load(&bytes, Runtime::Onnx, 1, None).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(native.task(), ort.task(), "{}", path.display());
        let features = native.features();
        let n = 5000;
        let x = rows(&onnx, features, n);
        let (mut a, mut b) = (Predictions::default(), Predictions::default());
        // ONNX Runtime in batches of 512, as a score step sends them.
        native.predict(&x, n, &mut a).expect("native");
        let mut max_diff = 0f32;
        for start in (0..n).step_by(512) {
            let len = 512.min(n - start);
            ort.predict(&x[start * features..(start + len) * features], len, &mut b).expect("onnx runtime");
            for r in 0..len {
                let ra = start + r;
                assert_eq!(a.label(ra), b.label(r), "{} row {ra}: labels differ", path.display());
                for (p, q) in a.probabilities(ra).iter().zip(b.probabilities(r)) {
                    max_diff = max_diff.max((p - q).abs());
                }
                if let (Some(p), Some(q)) = (a.score(ra), b.score(r)) {
                    max_diff = max_diff.max((p - q).abs() / q.abs().max(1.0));
                }
                assert_eq!(a.probabilities(ra).len(), b.probabilities(r).len(), "{}", path.display());
                assert_eq!(a.score(ra).is_some(), b.score(r).is_some(), "{}", path.display());
            }
        }
        assert!(max_diff <= TOLERANCE, "{}: max difference {max_diff}", path.display());
        report.push(format!("{}: {max_diff:e}", path.file_name().map(|f| f.to_string_lossy()).unwrap_or_default()));
    }
    assert!(report.len() >= 8, "{report:?}");
    println!("max differences: {report:#?}");
}
