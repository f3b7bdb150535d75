//! Score benchmark (issue #7): predictions per CPU-second through the score operator (features
//! read from rows, batches, the model, outputs written into rows) vs calling ONNX Runtime
//! directly on the same batches, in the same process, interleaved chunk by chunk, for the churn
//! example's logistic regression (v1) and 100-tree gradient boosting (v2); and the added
//! latency per event (how long a chunk of rows waits for its scoring).
//!
//!     cargo run --release -p tenantflow-benches -- --only score

use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::TensorRef;
use tenantflow_core::Value;
use tenantflow_engine::scoring::{self, ModelConfig};
use tenantflow_engine::steps::Steps;

/// Rows per chunk, as ingest reads them.
const CHUNK: usize = 1024;
/// Rows the benchmark cycles through: one chunk, in cache as ingest's chunk is right after the
/// source wrote it (a table of millions of rows would measure memory bandwidth instead).
const DISTINCT: usize = CHUNK;
const FEATURES: usize = 5;

fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

fn job(version: u32, runtime: &str, batch: usize) -> String {
    format!(
        r#"
name = "score-bench"
[source]
type = "file"
path = "/dev/null"
[schema]
tenant = "tenant"
[schema.fields]
tenant = "int"
f0 = "float"
f1 = "float"
f2 = "float"
f3 = "float"
f4 = "float"
[[steps]]
score = "churn-risk"
version = {version}
runtime = "{runtime}"
batch_size = {batch}
features = ["f0", "f1", "f2", "f3", "f4"]
as = "churn"
[[steps]]
select = ["tenant", "churn_label", "churn_probability"]
[[sinks]]
type = "discard"
"#
    )
}

/// Feature values like the training data's (counts and minutes), deterministic.
fn feature(row: usize, f: usize) -> f32 {
    let h = (row as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(f as u32 * 13);
    let u = (h >> 40) as f32 / (1u64 << 24) as f32;
    [40.0, 8.0, 6.0, 2.0, 120.0][f] * u
}

struct Case {
    steps: Steps,
    width: usize,
    rows: Vec<Value>,
    /// The rows as ingest hands them to the steps (outputs NULL), see [`ingest`].
    fresh: Vec<Value>,
    features: Vec<f32>,
    session: Session,
    input: String,
    batch: usize,
    /// Rows scored per measurement.
    n: usize,
    label_pos: usize,
    probability_pos: usize,
    /// The step's model, for its counters (time inside the model).
    model: std::sync::Arc<scoring::ScoreModel>,
}

fn case(version: u32, runtime: &str, batch: usize, n: usize) -> anyhow::Result<Case> {
    let plan = tenantflow_core::plan::load("score-bench.toml", &job(version, runtime, batch), &[]).map_err(|e| anyhow::anyhow!("{e}"))?;
    // The checkout's ONNX Runtime, wherever the benchmark is started from.
    let library = repo().join(format!(".onnxruntime/libonnxruntime.so.{}", tenantflow_ml::runtime::ORT_VERSION));
    let cfg = ModelConfig { registry: Some(repo().join("jobs/models")), onnxruntime: Some(library).filter(|l| l.exists()) };
    let models = scoring::resolve(&plan, &cfg, &Default::default())
        .map_err(|e| anyhow::anyhow!("{}", e.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n")))?;
    let steps = Steps::new(&plan.pre, &models).map_err(|e| anyhow::anyhow!(e))?;
    let width = plan.row_width;
    let mut rows = Vec::with_capacity(DISTINCT * width);
    let mut features = Vec::with_capacity(DISTINCT * FEATURES);
    for r in 0..DISTINCT {
        rows.push(Value::Int((r % 100) as i64));
        for f in 0..FEATURES {
            rows.push(Value::Float(feature(r, f) as f64));
            features.push(feature(r, f));
        }
        rows.resize((r + 1) * width, Value::Null);
    }
    let env = tenantflow_ml::runtime::environment(None)?;
    let bytes = std::fs::read(repo().join(format!("jobs/models/churn-risk/{version}/model.onnx"))).context("model file")?;
    let session = Session::builder(&env)?
        .with_optimization_level(GraphOptimizationLevel::All)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .with_intra_threads(1)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .commit_from_memory(&bytes)?;
    let input = session.inputs()[0].name().to_string();
    let model = models.first().cloned().context("a model")?;
    let (label_pos, probability_pos) = match &plan.pre[0].kind {
        tenantflow_core::plan::PlannedKind::Score(sp) => (sp.label_pos, sp.probability_pos),
        _ => anyhow::bail!("the first step scores"),
    };
    Ok(Case { steps, width, fresh: rows.clone(), rows, features, session, input, batch, n, label_pos, probability_pos, model })
}

/// This thread's CPU time in seconds: fine-grained enough to time one chunk, and blind to the
/// other threads of the process.
fn thread_cpu() -> f64 {
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime fills a plain struct.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
}

/// Ingest's last write before the steps run (not timed): it fills chunk `i`'s rows, so they are
/// in cache as they are in a job. Every way that reads rows starts from this state. Without it
/// the direct loop, run right after the operator on the same rows, found them in cache where
/// the operator did not: the native operator measured 0.83 of it, and 0.94 with this.
fn ingest(c: &mut Case, i: usize) {
    let at = (i * CHUNK) % DISTINCT * c.width;
    c.rows[at..at + CHUNK * c.width].clone_from_slice(&c.fresh[at..at + CHUNK * c.width]);
}

/// The score step over chunk `i` as ingest runs it, on the rows ingest collected (that work is
/// ingest's, with or without a score step, and is not timed); returns its CPU seconds.
fn operator_chunk(c: &mut Case, i: usize, keep: &mut Vec<bool>) -> f64 {
    let at = (i * CHUNK) % DISTINCT * c.width;
    let chunk = &mut c.rows[at..at + CHUNK * c.width];
    let mut rows: Vec<&mut [Value]> = chunk.chunks_exact_mut(c.width).collect();
    keep.clear();
    keep.resize(rows.len(), true);
    let t0 = thread_cpu();
    c.steps.run(&mut rows, keep, |_| {});
    thread_cpu() - t0
}

/// ONNX Runtime called directly on the operator's batches of chunk `i`; returns a checksum.
/// With `from_rows`, a hand-written loop does the operator's work for this one job: it copies
/// each batch's feature fields out of the same rows and writes the label and probability back
/// into them. Without, the features are ready-made f32 tensors and the outputs are only read
/// (the model's cost alone).
fn direct_chunk(c: &mut Case, i: usize, from_rows: bool, x: &mut Vec<f32>) -> anyhow::Result<f64> {
    let mut checksum = 0.0f64;
    let chunk = (i * CHUNK) % DISTINCT;
    let end = chunk + CHUNK;
    for start in (chunk..end).step_by(c.batch) {
        let len = c.batch.min(end - start);
        let x = if from_rows {
            x.clear();
            for row in c.rows[start * c.width..(start + len) * c.width].chunks_exact(c.width) {
                x.extend(row[1..=FEATURES].iter().map(|v| match *v {
                    Value::Float(f) => f as f32,
                    Value::Int(i) => i as f32,
                    _ => 0.0,
                }));
            }
            &x[..]
        } else {
            &c.features[start * FEATURES..(start + len) * FEATURES]
        };
        let outputs = c.session.run(ort::inputs![c.input.as_str() => TensorRef::from_array_view(([len, FEATURES], x))?])?;
        let (_, p) = outputs["probabilities"].try_extract_tensor::<f32>()?;
        let (_, l) = outputs["label"].try_extract_tensor::<i64>()?;
        if from_rows {
            let rows = c.rows[start * c.width..(start + len) * c.width].chunks_exact_mut(c.width);
            for ((row, p), l) in rows.zip(p.chunks_exact(2)).zip(l) {
                row[c.label_pos] = Value::Int(*l);
                row[c.probability_pos] = Value::Float(p[1] as f64);
            }
        }
        checksum += p[1] as f64 + l[0] as f64;
    }
    Ok(checksum)
}

/// CPU seconds of one pass over `n` rows by each way, interleaved chunk by chunk so that all
/// four see the same machine (a shared host's speed moves within a second): the operator with
/// ONNX Runtime, the direct loop from rows, ONNX Runtime on ready tensors, the operator with
/// the native scorer. Their order rotates from chunk to chunk: a way right after another that
/// ran the same session found it in cache, and one after the native operator found it cold
/// (in a fixed order the operator through ONNX Runtime measured 0.66-0.68 or 0.81-0.84 of the
/// direct loop by its place).
/// The operator's per-chunk times go to `latency` (µs).
fn round(onnx: &mut Case, native: &mut Case, latency: &mut hdrhistogram::Histogram<u64>) -> anyhow::Result<[f64; 4]> {
    let (mut keep, mut x, mut cpu, mut checksum) = (Vec::new(), Vec::with_capacity(onnx.batch * FEATURES), [0.0; 4], 0.0);
    for i in 0..onnx.n / CHUNK {
        for k in 0..4 {
            let way = (i + k) % 4;
            match way {
                0 => {
                    ingest(onnx, i);
                    let started = Instant::now();
                    cpu[0] += operator_chunk(onnx, i, &mut keep);
                    let _ = latency.record(started.elapsed().as_micros().max(1) as u64);
                }
                1 | 2 => {
                    ingest(onnx, i);
                    let t = thread_cpu();
                    checksum += direct_chunk(onnx, i, way == 1, &mut x)?;
                    cpu[way] += thread_cpu() - t;
                }
                _ => {
                    ingest(native, i);
                    cpu[3] += operator_chunk(native, i, &mut keep);
                }
            }
        }
    }
    std::hint::black_box(checksum);
    Ok(cpu)
}

fn median_of(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn rate(n: usize, cpu: f64) -> f64 {
    (n as f64 / cpu.max(1e-9)).round()
}

pub fn score_bench(events: u64) -> anyhow::Result<serde_json::Value> {
    let mut out = Vec::new();
    for (model, version, n) in
        [("logistic_regression", 1, (events as usize).min(4_000_000)), ("gradient_boosting_100", 2, (events as usize / 20).min(400_000))]
    {
        for batch in [256, 1024] {
            let mut onnx = case(version, "onnx", batch, n)?;
            let mut native = case(version, "native", batch, n)?;
            let mut latency = hdrhistogram::Histogram::<u64>::new(3)?;
            let mut rounds = Vec::new();
            for _ in 0..5 {
                rounds.push(round(&mut onnx, &mut native, &mut latency)?);
            }
            let inside = onnx.model.report();
            // Each way's median over the rounds, and the median of the per-round ratio.
            let m = |k: usize| median_of(rounds.iter().map(|r| r[k]).collect());
            let (op, dir, model_only, nat) = (m(0), m(1), m(2), m(3));
            let ratio = |k: usize| median_of(rounds.iter().map(|r| r[k] / r[0]).collect());
            let native_inside = native.model.report();
            let line = serde_json::json!({
                "name": "score_operator",
                "model": model,
                "batch_size": batch,
                "rows": n,
                "operator_onnx_predictions_per_cpu_sec": rate(n, op),
                "direct_onnx_predictions_per_cpu_sec": rate(n, dir),
                "operator_vs_direct": (ratio(1) * 1000.0).round() / 1000.0,
                "onnx_on_ready_tensors_predictions_per_cpu_sec": rate(n, model_only),
                "operator_vs_ready_tensors": (ratio(2) * 1000.0).round() / 1000.0,
                "operator_native_predictions_per_cpu_sec": rate(n, nat),
                "operator_native_vs_direct": (median_of(rounds.iter().map(|r| r[1] / r[3]).collect()) * 1000.0).round() / 1000.0,
                "operator_onnx_ns_per_row_inside_model": (inside.model_seconds * 1e9 / inside.rows.max(1) as f64).round(),
                "operator_native_ns_per_row_inside_model": (native_inside.model_seconds * 1e9 / native_inside.rows.max(1) as f64).round(),
                "added_latency_us_p50": latency.value_at_quantile(0.5),
                "added_latency_us_p99": latency.value_at_quantile(0.99),
                "chunk_rows": CHUNK,
            });
            println!("{line}");
            out.push(line);
        }
    }
    // The per-case lines are the results; this one sums up the headline ratios.
    let ratios: Vec<_> = out
        .iter()
        .map(|l| serde_json::json!([l["model"], l["batch_size"], l["operator_vs_direct"], l["operator_native_vs_direct"]]))
        .collect();
    Ok(serde_json::json!({"name": "score_summary", "operator_onnx_and_native_vs_direct": ratios}))
}
