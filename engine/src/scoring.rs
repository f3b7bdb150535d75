//! Score steps: a model from the registry (`tenantflow_ml`) run on rows, in batches
//! ([`Scorer`], one per worker, run by [`crate::steps::Steps`]).
//!
//! When a job starts, each score step's model is resolved in the registry ([`resolve`]): the
//! version, its ONNX file and feature mapping, checked against the step's schema. Every worker
//! then loads its own copy ([`Scorer`]: one ONNX Runtime session per worker) and scores the rows
//! of each chunk in batches of the step's `batch_size`, writing `<as>_label`, `<as>_class`,
//! `<as>_probability` and `<as>_score`.
//!
//! **Versions change at checkpoint boundaries.** At barrier `e` the first worker of the process
//! to get there reads the registry and decides the versions for the epoch after `e`; the others
//! take the same decision. The sink writes it in checkpoint `e`'s manifest, and a restore from
//! `e` starts from it, so a replay scores every row with the version it was scored with before.
//! Jobs without checkpoints look at the registry every [`POLL_WITHOUT_CHECKPOINTS`].

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use compact_str::CompactString;
use serde::{Deserialize, Serialize};
use tenantflow_core::expr::CompiledExpr;
use tenantflow_core::job::{JobError, OnMissing, ScoreRuntime};
use tenantflow_core::plan::{check_feature, PlannedKind, ScorePlan};
use tenantflow_core::{Plan, Schema, Value};
use tenantflow_ml::registry::ModelMeta;
use tenantflow_ml::{Model, Predictions, Registry, Runtime};

/// How often a job without checkpoints looks for a newly promoted version.
pub const POLL_WITHOUT_CHECKPOINTS: Duration = Duration::from_secs(5);

/// Where a job finds its models.
#[derive(Clone, Debug, Default)]
pub struct ModelConfig {
    /// The registry directory.
    pub registry: Option<PathBuf>,
    /// The ONNX Runtime library (else `tenantflow_ml::runtime::library_path`'s search).
    pub onnxruntime: Option<PathBuf>,
}

/// The versions a score step uses: the live one and the shadow candidate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Versions {
    pub live: u32,
    #[serde(default)]
    pub shadow: Option<u32>,
}

/// A score step's counters, summed over the process's workers.
#[derive(Default, Debug)]
pub struct ScoreStats {
    /// Rows scored by the live version.
    pub rows: AtomicU64,
    pub batches: AtomicU64,
    /// Features that were missing and took the step's default.
    pub defaulted: AtomicU64,
    /// Rows not scored because a feature was missing (`on_missing = "skip"`).
    pub skipped: AtomicU64,
    /// Rows whose batch the model failed on (outputs NULL).
    pub errors: AtomicU64,
    /// Rows of other tenants than the one owning the model (not scored, outputs NULL).
    pub other_tenants: AtomicU64,
    /// Nanoseconds inside the model.
    pub model_ns: AtomicU64,
    pub shadow_rows: AtomicU64,
    /// Rows where the shadow candidate disagreed: another label, or a score more than 1%
    /// (relative) away.
    pub shadow_disagreements: AtomicU64,
    /// Sum over shadow rows of |live - candidate| probability (or score), in millionths.
    pub shadow_abs_diff_micros: AtomicU64,
    /// Version changes the workers made (each worker counts its own).
    pub swaps: AtomicU64,
    /// The versions in use (0: none).
    pub live_version: AtomicU32,
    pub shadow_version: AtomicU32,
}

/// A score step's counters, for the run summary, the API and the metrics.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ModelReport {
    /// The step's key in the job file, e.g. `steps[2]`.
    pub step: String,
    pub model: String,
    pub version: u32,
    pub shadow_version: Option<u32>,
    pub runtime: String,
    pub rows: u64,
    pub batches: u64,
    pub defaulted: u64,
    pub skipped: u64,
    pub errors: u64,
    pub other_tenants: u64,
    pub model_seconds: f64,
    pub shadow_rows: u64,
    pub shadow_disagreements: u64,
    pub shadow_mean_abs_diff: f64,
    pub swaps: u64,
    /// The latest drift window's PSI per feature (features with a training distribution).
    pub drift: BTreeMap<String, f64>,
    pub drift_windows: u64,
}

/// One score step of a job on this process: the resolved model, the version decisions and the
/// counters. Shared by the workers.
pub struct ScoreModel {
    pub plan: ScorePlan,
    /// What the features are compiled against.
    schema: Schema,
    registry: Registry,
    library: Option<PathBuf>,
    pub stats: ScoreStats,
    switch: Mutex<Switch>,
    /// Versions read from the registry so far.
    cache: Mutex<HashMap<u32, Arc<Loaded>>>,
    /// `native` or `onnx`: which scorer runs the live version.
    runtime_used: Mutex<String>,
    /// Drift of the features from the live version's training distribution.
    drift: Mutex<Drift>,
    /// The latest drift window's largest PSI (f64 bits; NaN: none yet), which rows carry.
    drift_max: AtomicU64,
}

/// Bin counts of the features the workers scored since the last drift measurement, and the
/// last measurement: the population stability index per feature,
/// `sum((a - e) ln(a / e))` over the training distribution's bins (`e`) and this window's
/// (`a`); empty bins count as 1e-4 so the logarithm stays finite.
#[derive(Default)]
struct Drift {
    version: u32,
    counts: Vec<u64>,
    /// Rows scored in this window, and those of them counted in `counts`.
    rows: u64,
    sampled: u64,
    /// (feature name, PSI) of the latest window.
    psi: Vec<(String, f64)>,
    windows: u64,
}

/// A feature with a training distribution in the model's metadata: its place in the feature
/// vector, name, bin edges and the training rows' share per bin.
struct Binned {
    feature: usize,
    name: String,
    edges: Edges,
    expected: Vec<f64>,
}

type Bins = Vec<Binned>;

/// Bin edges, ascending.
enum Edges {
    /// Up to 16 (deciles and the like) as the least f32 at or above each (so that for an f32
    /// value `x >= edge` reads the same), padded with infinities: counting the edges at or
    /// below a value is then a few vector compares of fixed width, where a binary search is a
    /// chain of dependent loads.
    Few([f32; 16]),
    Many(Vec<f64>),
}

impl Edges {
    fn new(edges: &[f64]) -> Edges {
        if edges.len() > 16 {
            return Edges::Many(edges.to_vec());
        }
        let mut few = [f32::INFINITY; 16];
        for (f, e) in few.iter_mut().zip(edges) {
            let nearest = *e as f32;
            *f = if (nearest as f64) < *e { nearest.next_up() } else { nearest };
        }
        Edges::Few(few)
    }

    /// A finite value's bin: values below the first edge are bin 0, at or above the last the
    /// last.
    #[inline]
    fn bin(&self, x: f32) -> usize {
        match self {
            Edges::Few(e) => e.iter().map(|e| (*e <= x) as usize).sum(),
            Edges::Many(e) => e.partition_point(|e| *e <= x as f64),
        }
    }
}

fn bins_of(meta: &ModelMeta) -> Bins {
    meta.features
        .iter()
        .enumerate()
        .filter_map(|(feature, f)| {
            let d = meta.training.distribution.get(f)?;
            (d.fractions.len() == d.edges.len() + 1).then(|| Binned {
                feature,
                name: f.clone(),
                edges: Edges::new(&d.edges),
                expected: d.fractions.clone(),
            })
        })
        .collect()
}

/// Rows a drift window counts at the least: the bins then hold enough rows for the PSI's
/// sampling noise (about bins / rows, 0.015 for deciles) to stay far below the 0.1 that reads
/// as a shift.
const DRIFT_SAMPLE_ROWS: u64 = 625;

/// Every how many scored rows one is counted for drift: a systematic sample of at least
/// [`DRIFT_SAMPLE_ROWS`] per window, at most 1 in 16 (the default window of 10,000 rows).
/// Counting every row would cost more than a cheap model itself (a bin lookup per feature per
/// row).
fn drift_stride(window: u64) -> usize {
    (window / DRIFT_SAMPLE_ROWS).clamp(1, 16) as usize
}

/// The sample goes on across batches: given the index of the next sampled row (counted from
/// this batch's start), returns the first one in this batch of `n` rows, if any, and moves
/// `next` to the batch after.
fn sample_start(next: &mut usize, n: usize, stride: usize) -> Option<usize> {
    if *next >= n {
        *next -= n;
        return None;
    }
    let start = *next;
    *next = start + (n - start).div_ceil(stride) * stride - n;
    Some(start)
}

fn psi(expected: &[f64], counts: &[u64], rows: u64) -> f64 {
    const EMPTY: f64 = 1e-4;
    expected
        .iter()
        .zip(counts)
        .map(|(e, c)| {
            let (e, a) = (e.max(EMPTY), (*c as f64 / rows.max(1) as f64).max(EMPTY));
            (a - e) * (a / e).ln()
        })
        .sum()
}

struct Switch {
    current: Versions,
    /// Decisions made at barriers, until the checkpoint that records them is committed.
    by_epoch: BTreeMap<u64, Versions>,
    polled: Instant,
}

/// A version's metadata, ONNX bytes and feature expressions.
pub struct Loaded {
    pub meta: ModelMeta,
    bytes: Vec<u8>,
    features: Vec<String>,
}

impl ScoreModel {
    pub fn name(&self) -> &str {
        &self.plan.spec.model.value
    }

    /// The step's key in the job file, e.g. `steps[3]`.
    pub fn key(&self) -> &str {
        self.plan.origin.key.trim_end_matches(".score")
    }

    /// What checkpoints record the step's versions under: its output prefix (`as`), unique
    /// among the output fields and, unlike its position, unchanged when steps are added.
    pub fn state_id(&self) -> &str {
        &self.plan.spec.prefix
    }

    fn runtime(&self) -> Runtime {
        match self.plan.spec.runtime {
            ScoreRuntime::Auto => Runtime::Auto,
            ScoreRuntime::Native => Runtime::Native,
            ScoreRuntime::Onnx => Runtime::Onnx,
        }
    }

    /// Reads a version from the registry (once) and checks it fits the step: the feature
    /// expressions compile and number the model's input columns, and the model loads.
    fn load(&self, version: u32) -> Result<Arc<Loaded>, String> {
        if let Some(l) = self.cache.lock().map_err(|_| "poisoned")?.get(&version) {
            return Ok(Arc::clone(l));
        }
        let name = self.name();
        let meta = self.registry.describe(name, version).map_err(|e| e.to_string())?;
        if let (Some(owner), None) = (&meta.tenant, self.plan.tenant_pos) {
            return Err(format!(
                "model `{name}` version {version} belongs to tenant `{owner}` and scores only that tenant's rows, \
                 but a `select` before this step removed the tenant field: keep it"
            ));
        }
        let path = self.registry.model_path(name, version);
        let bytes = std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let features: Vec<String> = if self.plan.spec.features.is_empty() {
            meta.features.clone()
        } else {
            self.plan.spec.features.iter().map(|f| f.value.clone()).collect()
        };
        for f in &features {
            check_feature(f, &self.schema).map_err(|e| format!("model `{name}` version {version}: feature `{f}`: {}", e.message))?;
        }
        let model = Model::load(&bytes, self.runtime(), self.plan.spec.threads, self.library.as_deref())
            .map_err(|e| format!("model `{name}` version {version}: {e}"))?;
        if model.features() != features.len() {
            return Err(format!(
                "model `{name}` version {version} takes {} features and the step gives {}",
                model.features(),
                features.len()
            ));
        }
        if let Ok(mut r) = self.runtime_used.lock() {
            *r = format!("{:?}", model.runtime()).to_lowercase();
        }
        let loaded = Arc::new(Loaded { meta, bytes, features });
        self.cache.lock().map_err(|_| "poisoned")?.insert(version, Arc::clone(&loaded));
        Ok(loaded)
    }

    /// The versions the registry says now (the pinned version, if the step pins one).
    fn registry_versions(&self) -> Result<Versions, String> {
        let name = self.name();
        let state = self.registry.state(name).map_err(|e| e.to_string())?;
        let live = match self.plan.spec.version {
            Some(v) => v,
            None => self.registry.resolve(name, None).map_err(|e| e.to_string())?.version,
        };
        let shadow = state.shadow.filter(|s| self.plan.spec.shadow && *s != live);
        Ok(Versions { live, shadow })
    }

    /// The decision for the epoch after barrier `epoch`: made by the first worker to ask.
    pub fn decide(&self, epoch: u64) -> Versions {
        let Ok(mut s) = self.switch.lock() else { return self.current() };
        if let Some(v) = s.by_epoch.get(&epoch) {
            return *v;
        }
        let v = match self.registry_versions() {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(model = self.name(), "keeping version {}: {e}", s.current.live);
                s.current
            }
        };
        s.current = v;
        s.by_epoch.insert(epoch, v);
        v
    }

    /// Jobs without checkpoints: the registry's versions, read at most every
    /// [`POLL_WITHOUT_CHECKPOINTS`].
    pub fn poll(&self) -> Versions {
        let Ok(mut s) = self.switch.lock() else { return self.current() };
        if s.polled.elapsed() >= POLL_WITHOUT_CHECKPOINTS {
            s.polled = Instant::now();
            match self.registry_versions() {
                Ok(v) => s.current = v,
                Err(e) => tracing::warn!(model = self.name(), "keeping version {}: {e}", s.current.live),
            }
        }
        s.current
    }

    pub fn current(&self) -> Versions {
        self.switch.lock().map(|s| s.current).unwrap_or(Versions { live: self.stats.live_version.load(Relaxed), shadow: None })
    }

    pub fn report(&self) -> ModelReport {
        let s = &self.stats;
        let shadow_rows = s.shadow_rows.load(Relaxed);
        ModelReport {
            step: self.key().to_string(),
            model: self.name().to_string(),
            version: s.live_version.load(Relaxed),
            shadow_version: Some(s.shadow_version.load(Relaxed)).filter(|v| *v > 0),
            runtime: self.runtime_used.lock().map(|r| r.clone()).unwrap_or_default(),
            rows: s.rows.load(Relaxed),
            batches: s.batches.load(Relaxed),
            defaulted: s.defaulted.load(Relaxed),
            skipped: s.skipped.load(Relaxed),
            errors: s.errors.load(Relaxed),
            other_tenants: s.other_tenants.load(Relaxed),
            model_seconds: s.model_ns.load(Relaxed) as f64 / 1e9,
            shadow_rows,
            shadow_disagreements: s.shadow_disagreements.load(Relaxed),
            shadow_mean_abs_diff: if shadow_rows > 0 {
                s.shadow_abs_diff_micros.load(Relaxed) as f64 / 1e6 / shadow_rows as f64
            } else {
                0.0
            },
            swaps: s.swaps.load(Relaxed),
            drift: self.drift.lock().map(|d| d.psi.iter().cloned().collect()).unwrap_or_default(),
            drift_windows: self.drift.lock().map(|d| d.windows).unwrap_or(0),
        }
    }

    /// Adds one worker's bin counts of `sampled` of the `rows` rows it scored with `version`;
    /// measures the drift once the window is full.
    fn add_drift(&self, version: u32, bins: &Bins, counts: &mut [u64], rows: u64, sampled: u64) {
        let window = self.plan.spec.drift_window;
        let Ok(mut d) = self.drift.lock() else { return };
        if d.version != version || d.counts.len() != counts.len() {
            // Another version's distribution: start over.
            d.version = version;
            d.counts = vec![0; counts.len()];
            d.rows = 0;
            d.sampled = 0;
        }
        for (total, c) in d.counts.iter_mut().zip(counts.iter_mut()) {
            *total += std::mem::take(c);
        }
        d.rows += rows;
        d.sampled += sampled;
        if window == 0 || d.rows < window {
            return;
        }
        let mut at = 0;
        let mut measured = Vec::new();
        for b in bins {
            let n = b.expected.len();
            measured.push((b.name.clone(), psi(&b.expected, &d.counts[at..at + n], d.sampled)));
            at += n;
        }
        let max = measured.iter().map(|(_, p)| *p).fold(f64::NAN, f64::max);
        self.drift_max.store(max.to_bits(), Relaxed);
        d.psi = measured;
        d.windows += 1;
        d.counts.iter_mut().for_each(|c| *c = 0);
        d.rows = 0;
        d.sampled = 0;
    }

    /// The latest drift window's largest PSI, if one was measured.
    fn current_drift(&self) -> Option<f64> {
        Some(f64::from_bits(self.drift_max.load(Relaxed))).filter(|d| !d.is_nan())
    }

    /// The decision recorded for checkpoint `epoch`; older decisions are forgotten.
    pub fn take_decision(&self, epoch: u64) -> Option<Versions> {
        let mut s = self.switch.lock().ok()?;
        let v = s.by_epoch.get(&epoch).copied();
        s.by_epoch.retain(|e, _| *e > epoch);
        v
    }
}

/// The score steps of a job, resolved in the registry. `restored` holds the versions a
/// checkpoint recorded (by step key); without one the registry's current versions are used.
pub fn resolve(plan: &Plan, cfg: &ModelConfig, restored: &BTreeMap<String, Versions>) -> Result<Vec<Arc<ScoreModel>>, Vec<JobError>> {
    let mut models = Vec::new();
    let mut errors = Vec::new();
    for step in plan.pre.iter().chain(&plan.post) {
        let PlannedKind::Score(sp) = &step.kind else { continue };
        let Some(root) = cfg.registry.as_ref() else {
            errors.push(sp.error("this job scores with a model: give the model registry (--models DIR, or run it on a cluster)"));
            continue;
        };
        let model = ScoreModel {
            plan: (**sp).clone(),
            schema: step.schema.clone(),
            registry: Registry::open(root),
            library: cfg.onnxruntime.clone(),
            stats: ScoreStats::default(),
            switch: Mutex::new(Switch { current: Versions { live: 0, shadow: None }, by_epoch: BTreeMap::new(), polled: Instant::now() }),
            cache: Mutex::new(HashMap::new()),
            runtime_used: Mutex::new(String::new()),
            drift: Mutex::new(Drift::default()),
            drift_max: AtomicU64::new(f64::NAN.to_bits()),
        };
        let versions = match restored.get(model.state_id()) {
            Some(v) => Ok(*v),
            None => model.registry_versions(),
        };
        let checked = versions.and_then(|v| {
            model.load(v.live)?;
            if let Some(s) = v.shadow {
                model.load(s)?;
            }
            Ok(v)
        });
        match checked {
            Ok(v) => {
                if let Ok(mut s) = model.switch.lock() {
                    s.current = v;
                }
                model.stats.live_version.store(v.live, Relaxed);
                model.stats.shadow_version.store(v.shadow.unwrap_or(0), Relaxed);
                models.push(Arc::new(model));
            }
            Err(e) => errors.push(sp.error(e)),
        }
    }
    if errors.is_empty() {
        Ok(models)
    } else {
        Err(errors)
    }
}

/// A feature: a field read as it is (the common case, no expression call), or an expression.
enum Feature {
    Column(usize),
    Expr(CompiledExpr),
}

impl Feature {
    fn compile(text: &str, schema: &Schema) -> Result<Feature, String> {
        let expr = check_feature(text, schema).map_err(|e| e.message)?;
        Ok(match schema.lookup(text.trim()) {
            Some((pos, _)) => Feature::Column(pos),
            None => Feature::Expr(expr),
        })
    }

    /// The feature of `row`; NaN when it is missing or not a number.
    #[inline]
    fn get(&self, row: &[Value]) -> f32 {
        match self {
            Feature::Column(pos) => row.get(*pos).map_or(f32::NAN, number),
            Feature::Expr(e) => number(&e.eval(row)),
        }
    }
}

/// The fields `columns` of the rows `rows` (indexes into `all`) into `x`, `N` per row.
#[inline]
fn gather<const N: usize>(all: &[&mut [Value]], rows: &[usize], columns: [usize; N], x: &mut [f32]) {
    for (x, &r) in x.chunks_exact_mut(N).zip(rows) {
        let row = &*all[r];
        for (slot, c) in x.iter_mut().zip(columns) {
            *slot = row.get(c).map_or(f32::NAN, number);
        }
    }
}

/// Writes one output of the scored rows (`scored[j]` gets the j-th value); NULL when the model
/// gave fewer values (a regressor has no label).
#[inline]
fn fill(rows: &mut [&mut [Value]], scored: &[usize], pos: usize, values: impl ExactSizeIterator<Item = Value>) {
    if values.len() < scored.len() {
        scored.iter().for_each(|&r| rows[r][pos] = Value::Null);
        return;
    }
    for (&r, v) in scored.iter().zip(values) {
        rows[r][pos] = v;
    }
}

/// A value as a feature: floats first, the one compare the common case takes.
#[inline]
fn number(v: &Value) -> f32 {
    if let Value::Float(f) = *v {
        f as f32
    } else {
        other_number(v)
    }
}

#[cold]
fn other_number(v: &Value) -> f32 {
    match *v {
        Value::Float(f) => f as f32,
        Value::Int(i) => i as f32,
        Value::Bool(b) => b as u8 as f32,
        _ => f32::NAN,
    }
}

/// A model loaded on one worker, with its compiled features.
struct Running {
    version: u32,
    model: Model,
    /// The tenant that owns this version (it scores only that tenant's rows), if any.
    owner: Option<Owner>,
    features: Vec<Feature>,
    /// The features' field positions, when every feature is a field.
    columns: Option<Vec<usize>>,
    class_names: Vec<CompactString>,
    x: Vec<f32>,
    out: Predictions,
    /// Training distributions per feature, and this worker's bin counts since the last flush
    /// (features with a distribution, their bins in order).
    bins: Bins,
    counts: Vec<u64>,
    /// Drift counts every `stride`-th scored row; `next` is the next one's index in the batch.
    stride: usize,
    next: usize,
}

impl Running {
    fn new(loaded: &Loaded, version: u32, m: &ScoreModel) -> Result<Running, String> {
        let model = Model::load(&loaded.bytes, m.runtime(), m.plan.spec.threads, m.library.as_deref()).map_err(|e| e.to_string())?;
        let features = loaded.features.iter().map(|f| Feature::compile(f, &m.schema)).collect::<Result<Vec<_>, _>>()?;
        let columns = features.iter().map(|f| if let Feature::Column(c) = f { Some(*c) } else { None }).collect();
        let bins = bins_of(&loaded.meta);
        Ok(Running {
            version,
            model,
            owner: loaded.meta.tenant.as_deref().map(|t| Owner { name: t.into(), int: t.parse().ok() }),
            columns,
            features,
            class_names: loaded.meta.class_names.iter().map(CompactString::from).collect(),
            x: Vec::new(),
            out: Predictions::default(),
            counts: vec![0; bins.iter().map(|b| b.expected.len()).sum()],
            bins,
            stride: drift_stride(m.plan.spec.drift_window),
            next: 0,
        })
    }

    /// Counts the bins of the sampled rows among the `n` rows of features in `x`; returns how
    /// many were sampled.
    fn count_bins(&mut self, n: usize) -> u64 {
        let Some(start) = sample_start(&mut self.next, n, self.stride) else { return 0 };
        let (width, mut sampled) = (self.features.len(), 0);
        for row in self.x[start * width..n * width].chunks_exact(width).step_by(self.stride) {
            sampled += 1;
            let mut at = 0;
            for b in &self.bins {
                self.counts[at + b.edges.bin(row[b.feature])] += 1;
                at += b.expected.len();
            }
        }
        sampled
    }

    /// Fills `x` with the features of `rows` (indexes into `all`), row-major. A missing or
    /// non-finite feature takes the default, or its row is skipped (`on_missing = "skip"`:
    /// false in `ok`, and the row is left out of `x`).
    fn features(
        &mut self,
        all: &[&mut [Value]],
        rows: &[usize],
        spec: &tenantflow_core::job::ScoreSpec,
        stats: &ScoreStats,
        ok: &mut Vec<bool>,
    ) {
        let width = self.features.len();
        self.x.resize(rows.len() * width, 0.0);
        match self.columns.as_deref() {
            // Fields read as they are (the common case): no dispatch per value, and for the
            // usual widths one straight run of loads per row.
            Some(&[a]) => gather(all, rows, [a], &mut self.x),
            Some(&[a, b]) => gather(all, rows, [a, b], &mut self.x),
            Some(&[a, b, c]) => gather(all, rows, [a, b, c], &mut self.x),
            Some(&[a, b, c, d]) => gather(all, rows, [a, b, c, d], &mut self.x),
            Some(&[a, b, c, d, e]) => gather(all, rows, [a, b, c, d, e], &mut self.x),
            Some(&[a, b, c, d, e, f]) => gather(all, rows, [a, b, c, d, e, f], &mut self.x),
            Some(&[a, b, c, d, e, f, g]) => gather(all, rows, [a, b, c, d, e, f, g], &mut self.x),
            Some(&[a, b, c, d, e, f, g, h]) => gather(all, rows, [a, b, c, d, e, f, g, h], &mut self.x),
            Some(columns) => {
                for (x, &r) in self.x.chunks_exact_mut(width).zip(rows) {
                    let row = &*all[r];
                    for (slot, &c) in x.iter_mut().zip(columns) {
                        *slot = row.get(c).map_or(f32::NAN, number);
                    }
                }
            }
            None => {
                for (x, &r) in self.x.chunks_exact_mut(width).zip(rows) {
                    for (slot, f) in x.iter_mut().zip(&self.features) {
                        *slot = f.get(&all[r][..]);
                    }
                }
            }
        }
        ok.clear();
        ok.resize(rows.len(), true);
        // The common case, every feature present, is one pass over the floats: a count of
        // all-ones exponents (NaN, infinities), which vectorizes where `all` and its early exit
        // (or a fold of bools) do not.
        if self.x.iter().map(|v| (v.to_bits() & 0x7f80_0000 == 0x7f80_0000) as u32).sum::<u32>() == 0 {
            return;
        }
        let (default, skip) = (spec.default as f32, spec.on_missing == OnMissing::Skip);
        let (mut defaulted, mut at) = (0, 0);
        for (k, complete) in ok.iter_mut().enumerate() {
            let row = k * width..(k + 1) * width;
            let missing = self.x[row.clone()].iter().filter(|v| !v.is_finite()).count() as u64;
            *complete = missing == 0 || !skip;
            if *complete {
                defaulted += missing;
                self.x.copy_within(row, at);
                self.x[at..at + width].iter_mut().filter(|v| !v.is_finite()).for_each(|v| *v = default);
                at += width;
            }
        }
        self.x.truncate(at);
        if defaulted > 0 {
            stats.defaulted.fetch_add(defaulted, Relaxed);
        }
    }
}

/// The tenant owning a model version, as text and, for int tenant fields, as a number.
#[derive(Clone, PartialEq)]
struct Owner {
    name: CompactString,
    int: Option<i64>,
}

impl Owner {
    /// Whether a row whose tenant field is `tenant` belongs to this owner.
    fn owns(&self, tenant: &Value) -> bool {
        match tenant {
            Value::Str(t) => *t == self.name,
            Value::Int(t) => self.int == Some(*t),
            _ => false,
        }
    }
}

/// One worker's scorer for one score step.
pub struct Scorer {
    shared: Arc<ScoreModel>,
    live: Running,
    shadow: Option<Running>,
    /// Row indexes of the current batch, and which of them have all features.
    batch: Vec<usize>,
    ok: Vec<bool>,
    /// The batch rows the model scored, when some were skipped.
    scored: Vec<usize>,
    shadow_ok: Vec<bool>,
}

impl Scorer {
    pub fn new(shared: Arc<ScoreModel>) -> Result<Scorer, String> {
        let v = shared.current();
        let live = Running::new(&*shared.load(v.live)?, v.live, &shared)?;
        let shadow = match v.shadow {
            Some(s) => Some(Running::new(&*shared.load(s)?, s, &shared)?),
            None => None,
        };
        Ok(Scorer { shared, live, shadow, batch: Vec::new(), ok: Vec::new(), scored: Vec::new(), shadow_ok: Vec::new() })
    }

    /// At checkpoint barrier `epoch`: switch to the versions decided for the next epoch.
    pub fn at_barrier(&mut self, epoch: u64) {
        let v = self.shared.decide(epoch);
        self.switch(v);
    }

    /// Without checkpoints: follow the registry.
    pub fn poll(&mut self) {
        let v = self.shared.poll();
        self.switch(v);
    }

    fn switch(&mut self, v: Versions) {
        let m = &self.shared;
        if v.live != self.live.version {
            match m.load(v.live).and_then(|l| Running::new(&l, v.live, m)) {
                Ok(r) => {
                    tracing::info!(model = m.name(), from = self.live.version, to = v.live, "switching model version");
                    self.live = r;
                    m.stats.swaps.fetch_add(1, Relaxed);
                    m.stats.live_version.store(v.live, Relaxed);
                }
                Err(e) => tracing::warn!(model = m.name(), "keeping version {}: {e}", self.live.version),
            }
        }
        if v.shadow != self.shadow.as_ref().map(|s| s.version) {
            self.shadow = match v.shadow.map(|s| m.load(s).and_then(|l| Running::new(&l, s, m))) {
                Some(Ok(r)) => Some(r),
                Some(Err(e)) => {
                    tracing::warn!(model = m.name(), "not shadowing: {e}");
                    None
                }
                None => None,
            };
            m.stats.shadow_version.store(self.shadow.as_ref().map_or(0, |s| s.version), Relaxed);
        }
    }

    /// Scores the rows of `rows` whose `keep` is true, in batches.
    pub fn score(&mut self, rows: &mut [&mut [Value]], keep: &[bool]) {
        let p = &self.shared.plan;
        let size = p.spec.batch_size.max(1);
        let outputs = [p.label_pos, p.class_pos, p.probability_pos, p.score_pos];
        // A tenant's model scores that tenant's rows only (load checked the field is there).
        let owner = self.live.owner.clone().zip(p.tenant_pos);
        let mut other_tenants = 0;
        let mut start = 0;
        while start < rows.len() {
            self.batch.clear();
            let end = (start + size).min(rows.len());
            if owner.is_none() && keep[start..end].iter().fold(true, |all, k| all & *k) {
                // No row filtered out (the common case): the batch is a range.
                self.batch.extend(start..end);
                start = end;
            } else {
                let mut i = start;
                while i < rows.len() && self.batch.len() < size {
                    match &owner {
                        _ if !keep[i] => {}
                        Some((owner, pos)) if !owner.owns(&rows[i][*pos]) => {
                            other_tenants += 1;
                            outputs.iter().for_each(|o| rows[i][*o] = Value::Null);
                        }
                        _ => self.batch.push(i),
                    }
                    i += 1;
                }
                start = i;
            }
            if !self.batch.is_empty() {
                self.score_batch(rows);
            }
        }
        if other_tenants > 0 {
            self.shared.stats.other_tenants.fetch_add(other_tenants, Relaxed);
        }
    }

    fn score_batch(&mut self, rows: &mut [&mut [Value]]) {
        let m = &*self.shared;
        let (spec, stats) = (&m.plan.spec, &m.stats);
        self.live.features(rows, &self.batch, spec, stats, &mut self.ok);
        let n = self.ok.iter().filter(|o| **o).count();
        let skipped = self.batch.len() - n;
        if skipped > 0 {
            stats.skipped.fetch_add(skipped as u64, Relaxed);
        }
        if m.plan.spec.drift_window > 0 && !self.live.counts.is_empty() {
            let sampled = self.live.count_bins(n);
            m.add_drift(self.live.version, &self.live.bins, &mut self.live.counts, n as u64, sampled);
        }
        let drift = m.current_drift().map_or(Value::Null, Value::Float);
        let started = Instant::now();
        let result = self.live.model.predict(&self.live.x, n, &mut self.live.out);
        stats.model_ns.fetch_add(started.elapsed().as_nanos() as u64, Relaxed);
        stats.batches.fetch_add(1, Relaxed);
        if let Err(e) = &result {
            stats.errors.fetch_add(n as u64, Relaxed);
            tracing::warn!(model = m.name(), version = self.live.version, "scoring a batch of {n} rows failed: {e}");
        } else {
            stats.rows.fetch_add(n as u64, Relaxed);
        }
        let p = &m.plan;
        let [label_used, class_used, probability_used, score_used, drift_used] = p.used;
        let failed = result.is_err();
        // The rows with a prediction, the j-th for the j-th of them: all of the batch in the
        // common case. The others get NULL outputs.
        let scored = if failed {
            &[][..]
        } else if n == self.batch.len() {
            &self.batch[..]
        } else {
            self.scored.clear();
            self.scored.extend(self.batch.iter().zip(&self.ok).filter(|(_, ok)| **ok).map(|(r, _)| *r));
            &self.scored[..]
        };
        if scored.len() < self.batch.len() {
            for (&r, _) in self.batch.iter().zip(&self.ok).filter(|(_, ok)| !**ok || failed) {
                for pos in [p.label_pos, p.class_pos, p.probability_pos, p.score_pos] {
                    rows[r][pos] = Value::Null;
                }
            }
        }
        // One pass per output: each a tight loop over the rows.
        let (out, names) = (&self.live.out, &self.live.class_names[..]);
        let float = |v: f32| Value::Float(v as f64);
        if drift_used {
            self.batch.iter().for_each(|&r| rows[r][p.drift_pos] = drift.clone());
        }
        if label_used {
            fill(rows, scored, p.label_pos, out.labels.iter().map(|l| Value::Int(*l)));
        }
        if class_used {
            let name = |l: &i64| usize::try_from(*l).ok().and_then(|l| names.get(l)).map_or(Value::Null, |c| Value::Str(c.clone()));
            fill(rows, scored, p.class_pos, out.labels.iter().map(name));
        }
        if probability_used {
            fill(rows, scored, p.probability_pos, out.reported_probabilities().map(|v| v.map_or(Value::Null, float)));
        }
        if score_used {
            fill(rows, scored, p.score_pos, out.scores.iter().map(|v| float(*v)));
        }
        if result.is_ok() {
            self.shadow_batch(rows);
        }
    }

    /// Scores the batch with the shadow candidate and compares it with the live outputs
    /// (already written to the rows).
    fn shadow_batch(&mut self, rows: &[&mut [Value]]) {
        let Some(sh) = self.shadow.as_mut() else { return };
        if sh.owner.is_some() && sh.owner != self.live.owner {
            // The batch is the live version's rows; another tenant's candidate must not see them.
            return;
        }
        let m = &*self.shared;
        sh.features(rows, &self.batch, &m.plan.spec, &m.stats, &mut self.shadow_ok);
        let n = self.shadow_ok.iter().filter(|o| **o).count();
        if sh.model.predict(&sh.x, n, &mut sh.out).is_err() {
            return;
        }
        let live = &self.live.out;
        // Each model's prediction index for batch row k: rows without all features have none.
        let (mut j, mut i, mut compared, mut disagreed, mut diff) = (0, 0, 0u64, 0u64, 0f64);
        for k in 0..self.batch.len() {
            let (in_live, in_shadow) = (self.ok[k], self.shadow_ok[k]);
            let (lj, si) = (j, i);
            j += in_live as usize;
            i += in_shadow as usize;
            if !(in_live && in_shadow) {
                continue;
            }
            let value = |out: &Predictions, n: usize| out.probability(n).or_else(|| out.score(n));
            let (Some(lv), Some(sv)) = (value(live, lj), value(&sh.out, si)) else { continue };
            compared += 1;
            let d = (lv as f64 - sv as f64).abs();
            diff += d;
            let (ll, sl) = (live.label(lj), sh.out.label(si));
            if ll != sl || (sl.is_none() && d > 0.01 * (lv as f64).abs().max(1e-9)) {
                disagreed += 1;
            }
        }
        m.stats.shadow_rows.fetch_add(compared, Relaxed);
        m.stats.shadow_disagreements.fetch_add(disagreed, Relaxed);
        m.stats.shadow_abs_diff_micros.fetch_add((diff * 1e6) as u64, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drift_samples_every_stride_th_row_across_batches() {
        assert_eq!((drift_stride(200), drift_stride(10_000), drift_stride(1_000_000)), (1, 16, 16));
        let (mut next, mut sampled, mut at) = (0, Vec::new(), 0);
        for n in [5, 2, 10, 1, 7] {
            if let Some(start) = sample_start(&mut next, n, 4) {
                sampled.extend((start..n).step_by(4).map(|i| at + i));
            }
            at += n;
        }
        assert_eq!(sampled, vec![0, 4, 8, 12, 16, 20, 24]);
    }

    #[test]
    fn bins_count_edges_at_or_below() {
        let edges = Edges::new(&[1.0, 2.0, 3.0]);
        let got: Vec<usize> = [0.5f32, 1.0, 2.5, 3.0, 9.0].iter().map(|x| edges.bin(*x)).collect();
        assert_eq!(got, vec![0, 1, 2, 3, 3]);
        let sixteen = Edges::new(&(0..16).map(f64::from).collect::<Vec<_>>());
        assert_eq!((sixteen.bin(-1.0), sixteen.bin(15.0), sixteen.bin(1e30)), (0, 16, 16));
        // Edges between two f32 values, the nearest below (0.7) and above (0.1): a value is
        // in the upper bin exactly when it is at or above the f64 edge.
        let between = Edges::new(&[0.1, 0.7]);
        let got = [0.1f32.next_down(), 0.1, 0.7, 0.7f32.next_up()].map(|x| between.bin(x));
        assert_eq!(got, [0, 1, 1, 2]);
        assert!((0.7f32 as f64) < 0.7 && (0.1f32 as f64) > 0.1);
        let many = Edges::new(&(0..40).map(f64::from).collect::<Vec<_>>());
        assert_eq!((many.bin(-1.0), many.bin(10.0), many.bin(100.0)), (0, 11, 40));
    }
}
