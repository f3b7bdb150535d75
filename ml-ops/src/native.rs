//! Native scorers for the models scikit-learn exports through skl2onnx: linear models
//! (`LinearClassifier`, `LinearRegressor`) and tree ensembles (`TreeEnsembleClassifier`,
//! `TreeEnsembleRegressor`) of the `ai.onnx.ml` domain. They read the same `.onnx` file as ONNX
//! Runtime and follow its arithmetic (f32 scores, the same post transforms and binary-class
//! rules), so a job can score without the ONNX Runtime library; `tests/parity.rs` checks them
//! against ONNX Runtime on the same models.

use crate::onnx::{Attrs, NodeProto, OnnxModel};
use crate::predict::{Predictions, Task};
use crate::MlError;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Post {
    None,
    Logistic,
    Softmax,
    SoftmaxZero,
}

impl Post {
    fn parse(node: &Attrs) -> Result<Post, MlError> {
        Ok(match node.string("post_transform").as_deref().unwrap_or("NONE") {
            "NONE" => Post::None,
            "LOGISTIC" => Post::Logistic,
            "SOFTMAX" => Post::Softmax,
            "SOFTMAX_ZERO" => Post::SoftmaxZero,
            other => return Err(MlError::Unsupported(format!("post_transform {other}"))),
        })
    }

    /// Transforms a row of scores in place as ONNX Runtime's `write_scores` does.
    fn apply(self, s: &mut [f32]) {
        match self {
            Post::None => {}
            Post::Logistic => s.iter_mut().for_each(|v| *v = logistic(*v)),
            Post::Softmax | Post::SoftmaxZero => {
                let max = s.iter().copied().fold(f32::MIN, f32::max);
                let mut sum = 0.0;
                for v in s.iter_mut() {
                    if self == Post::SoftmaxZero && *v == 0.0 {
                        continue;
                    }
                    *v = (*v - max).exp();
                    sum += *v;
                }
                for v in s.iter_mut() {
                    if !(self == Post::SoftmaxZero && *v == 0.0) {
                        *v /= sum;
                    }
                }
            }
        }
    }
}

/// MLAS's logistic, `x p(x²) / q(x²) + 0.5`: the coefficients of `p` and `q` as it writes them
/// (rounded to f32 alike).
#[allow(clippy::excessive_precision)]
const LOGISTIC_P: [f32; 5] = [4.37031012579801e-11, 1.15627324459942e-07, 6.08574864600143e-05, 8.51377133304701e-03, 2.48287947061529e-01];
#[allow(clippy::excessive_precision)]
const LOGISTIC_Q: [f32; 6] =
    [6.10247389755681e-13, 5.76102136993427e-09, 6.29106785017040e-06, 1.70198817374094e-03, 1.16817656904453e-01, 9.93151921023180e-01];

/// ONNX Runtime's batched logistic (MLAS's `MlasComputeLogistic`, the rational approximation
/// Eigen uses, clamped to [0, 1]): what its `LinearClassifier` applies to two or more score
/// columns. No `exp`, so the loop vectorizes.
fn logistic_batch(v: &mut [f32]) {
    for x in v {
        *x = (logistic_odd(*x) + 0.5).clamp(0.0, 1.0);
    }
}

/// MLAS's logistic less its 0.5: odd in `x`, so `-x` gives exactly the negation.
#[inline(always)]
fn logistic_odd(x: f32) -> f32 {
    let value = x.clamp(-18.0, 18.0);
    let sq = value * value;
    let (a, b) = (LOGISTIC_P, LOGISTIC_Q);
    let p = (((a[0] * sq + a[1]) * sq + a[2]) * sq + a[3]) * sq + a[4];
    let q = ((((b[0] * sq + b[1]) * sq + b[2]) * sq + b[3]) * sq + b[4]) * sq + b[5];
    p * value / q
}

/// ONNX Runtime's logistic: computed on |x| so that both halves are exact complements.
#[inline]
fn logistic(x: f32) -> f32 {
    let v = 1.0 / (1.0 + (-x.abs()).exp());
    if x < 0.0 {
        1.0 - v
    } else {
        v
    }
}

/// A model the native scorer runs.
#[derive(Debug, Clone)]
pub struct NativeModel {
    features: usize,
    kind: Kind,
    /// A `Normalizer` on the probabilities (skl2onnx's multinomial logistic regression).
    normalize: Option<Norm>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Norm {
    Max,
    L1,
    L2,
}

impl Norm {
    fn apply(self, s: &mut [f32]) {
        let d = match self {
            Norm::Max => s.iter().copied().fold(f32::MIN, f32::max),
            Norm::L1 => s.iter().map(|v| v.abs()).sum(),
            Norm::L2 => s.iter().map(|v| v * v).sum::<f32>().sqrt(),
        };
        if d != 0.0 {
            s.iter_mut().for_each(|v| *v /= d);
        }
    }
}

#[derive(Debug, Clone)]
enum Kind {
    Linear(Linear),
    Trees(Trees),
}

#[derive(Debug, Clone)]
struct Linear {
    /// targets x features, row-major.
    coef: Vec<f32>,
    intercepts: Vec<f32>,
    targets: usize,
    post: Post,
    /// Class labels (classifiers).
    labels: Option<Vec<i64>>,
    /// A binary classifier as skl2onnx writes it, with a logistic: the first score column's
    /// coefficients and intercept are the second's negated, so one column gives both.
    mirrored: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    Leq,
    Lt,
    Gte,
    Gt,
    Eq,
    Neq,
    Leaf,
}

#[derive(Debug, Clone, Copy)]
struct Node {
    mode: Mode,
    feature: u32,
    threshold: f32,
    if_true: u32,
    if_false: u32,
    missing_true: bool,
    /// Range of this leaf's weights in `Trees::weights`.
    weights: (u32, u32),
}

#[derive(Debug, Clone)]
struct Trees {
    nodes: Vec<Node>,
    roots: Vec<u32>,
    /// (target or class index, weight) of each leaf, grouped by leaf.
    weights: Vec<(u32, f32)>,
    targets: usize,
    base_values: Vec<f32>,
    post: Post,
    labels: Option<Vec<i64>>,
    average: bool,
    /// Two classes, but the leaves only weigh the first (gradient boosting): that sum is the
    /// positive class's score, as in ONNX Runtime's `binary_case_`.
    binary_single: bool,
    weights_all_positive: bool,
    /// Each tree's depth: the most comparisons from its root to a leaf.
    depths: Vec<u32>,
    /// Set when every comparison is `x <= threshold` with no missing-value track, as
    /// scikit-learn's exports are: see [`Trees::walk`].
    steps: Option<Vec<Step>>,
}

/// A node for [`Trees::walk`]: its children by the comparison's outcome, `next[(x <= threshold)
/// as usize]`. A leaf is its own child, so a walk can take a fixed number of steps.
#[derive(Debug, Clone, Copy)]
struct Step {
    feature: u32,
    threshold: f32,
    next: [u32; 2],
}

impl NativeModel {
    /// Reads a model the native scorer can run: one of the four operators, optionally
    /// followed by `Identity` nodes. Anything else is `Unsupported` (score it with ONNX Runtime).
    pub fn from_onnx(model: &OnnxModel) -> Result<NativeModel, MlError> {
        let features = model.feature_count()?;
        let mut main: Option<&NodeProto> = None;
        let mut normalize = None;
        for node in &model.graph.node {
            match node.op_type.as_deref().unwrap_or("") {
                "Identity" => {}
                "Normalizer" if main.is_some() && normalize.is_none() => {
                    normalize = Some(match Attrs(node).string("norm").as_deref() {
                        Some("MAX") => Norm::Max,
                        Some("L1") => Norm::L1,
                        Some("L2") => Norm::L2,
                        other => return Err(MlError::BadModel(format!("Normalizer norm {other:?}"))),
                    })
                }
                "LinearClassifier" | "LinearRegressor" | "TreeEnsembleClassifier" | "TreeEnsembleRegressor" if main.is_none() => {
                    main = Some(node)
                }
                other => {
                    return Err(MlError::Unsupported(format!(
                        "operator {other} (the native scorer runs one linear or tree-ensemble operator)"
                    )))
                }
            }
        }
        let node = main.ok_or_else(|| MlError::Unsupported("no linear or tree-ensemble operator".into()))?;
        let a = Attrs(node);
        let kind = match node.op_type.as_deref().unwrap_or("") {
            "LinearClassifier" | "LinearRegressor" => Kind::Linear(Linear::read(&a, features)?),
            _ => Kind::Trees(Trees::read(&a, features)?),
        };
        Ok(NativeModel { features, kind, normalize })
    }

    pub fn task(&self) -> Task {
        let labels = match &self.kind {
            Kind::Linear(l) => &l.labels,
            Kind::Trees(t) => &t.labels,
        };
        match labels {
            Some(l) => Task::Classifier { classes: l.len() },
            None => Task::Regressor,
        }
    }

    pub fn features(&self) -> usize {
        self.features
    }

    /// Scores `rows` rows of `features` values each (row-major) into `out`.
    pub fn predict(&self, x: &[f32], rows: usize, out: &mut Predictions) {
        out.clear();
        match &self.kind {
            Kind::Linear(l) => l.predict(&x[..rows * self.features], self.features, out),
            Kind::Trees(t) => t.predict(&x[..rows * self.features], self.features, out),
        }
        if let (Some(norm), c) = (self.normalize, out.classes) {
            if c > 0 {
                out.probabilities.chunks_exact_mut(c).for_each(|p| norm.apply(p));
            }
        }
        out.rows = rows;
    }
}

impl Linear {
    fn read(a: &Attrs, features: usize) -> Result<Linear, MlError> {
        let coef = a.floats("coefficients");
        if features == 0 || coef.is_empty() || !coef.len().is_multiple_of(features) {
            return Err(MlError::BadModel(format!("{} coefficients for {features} features", coef.len())));
        }
        let targets = coef.len() / features;
        let mut intercepts = a.floats("intercepts");
        intercepts.resize(targets, 0.0);
        let labels = if a.0.op_type.as_deref() == Some("LinearClassifier") {
            if !a.strings("classlabels_strings").is_empty() {
                return Err(MlError::Unsupported("string class labels (train with integer labels)".into()));
            }
            let labels = a.ints("classlabels_ints");
            if labels.len() != targets || targets < 2 {
                return Err(MlError::Unsupported(format!("{} class labels for {targets} score columns", labels.len())));
            }
            Some(labels)
        } else {
            None
        };
        let post = Post::parse(a)?;
        let (first, second) = coef.split_at(features.min(coef.len()));
        let mirrored = labels.is_some()
            && targets == 2
            && post == Post::Logistic
            && first.iter().zip(second).all(|(a, b)| *a == -*b)
            && intercepts[0] == -intercepts[1];
        Ok(Linear { coef, intercepts, targets, post, labels, mirrored })
    }

    /// Score columns `targets` (coefficient rows and intercepts), column-major into `s`
    /// (`s[j * rows + r]`), each `sum(w * x) + b` summed in feature order; `N` features per row.
    /// A block of rows is first turned into columns so that each dot product runs down the
    /// rows in vector lanes: row by row, it would be a chain of dependent scalar adds.
    fn columns<const N: usize>(x: &[f32], coef: &[f32], intercepts: &[f32], s: &mut [f32]) {
        const BLOCK: usize = 64;
        let rows = x.len() / N;
        let mut columns = [[0f32; BLOCK]; N];
        for (k, block) in x.chunks(N * BLOCK).enumerate() {
            let (start, n) = (k * BLOCK, block.len() / N);
            for (r, row) in block.chunks_exact(N).enumerate() {
                for (column, v) in columns.iter_mut().zip(row) {
                    column[r] = *v;
                }
            }
            for ((out, b), w) in s.chunks_exact_mut(rows.max(1)).zip(intercepts).zip(coef.chunks_exact(N)) {
                let out = &mut out[start..start + n];
                out.fill(0.0);
                for (column, w) in columns.iter().zip(w) {
                    out.iter_mut().zip(&column[..n]).for_each(|(a, x)| *a += w * x);
                }
                out.iter_mut().for_each(|a| *a += b);
            }
        }
    }

    /// [`Linear::columns`] for any width.
    fn columns_any(x: &[f32], features: usize, coef: &[f32], intercepts: &[f32], s: &mut [f32]) {
        let rows = x.len() / features;
        for ((out, b), w) in s.chunks_exact_mut(rows.max(1)).zip(intercepts).zip(coef.chunks_exact(features)) {
            for (v, row) in out.iter_mut().zip(x.chunks_exact(features)) {
                *v = w.iter().zip(row).fold(0.0, |dot, (w, x)| dot + w * x) + b;
            }
        }
    }

    /// Scores a batch (row-major, `features` per row): all score columns first, then the
    /// labels and the post transform over the whole batch, as ONNX Runtime does.
    fn predict(&self, x: &[f32], features: usize, out: &mut Predictions) {
        let (t, rows) = (self.targets, x.len() / features);
        // A mirrored model's first column is the second's negation: only the second is computed.
        let (coef, intercepts) =
            if self.mirrored { (&self.coef[features..], &self.intercepts[1..]) } else { (&self.coef[..], &self.intercepts[..]) };
        let mut s = std::mem::take(&mut out.scratch);
        s.clear();
        s.resize(rows * intercepts.len(), 0.0);
        match features {
            // The usual widths, known to the compiler.
            1 => Self::columns::<1>(x, coef, intercepts, &mut s),
            2 => Self::columns::<2>(x, coef, intercepts, &mut s),
            3 => Self::columns::<3>(x, coef, intercepts, &mut s),
            4 => Self::columns::<4>(x, coef, intercepts, &mut s),
            5 => Self::columns::<5>(x, coef, intercepts, &mut s),
            6 => Self::columns::<6>(x, coef, intercepts, &mut s),
            7 => Self::columns::<7>(x, coef, intercepts, &mut s),
            8 => Self::columns::<8>(x, coef, intercepts, &mut s),
            _ => Self::columns_any(x, features, coef, intercepts, &mut s),
        }
        if let (true, Some(labels)) = (self.mirrored, &self.labels) {
            // Binary: the second class when its score is higher than the first's, which is its
            // negation. The probabilities are 0.5 -/+ the logistic's odd part: exactly what the
            // logistic gives on each column.
            let (first, second) = (labels[0], labels[1]);
            out.labels.extend(s.iter().map(|v| if *v > 0.0 { second } else { first }));
            out.probabilities.resize(2 * rows, 0.0);
            for (p, v) in out.probabilities.chunks_exact_mut(2).zip(&s) {
                let a = logistic_odd(*v);
                p[0] = (0.5 - a).clamp(0.0, 1.0);
                p[1] = (a + 0.5).clamp(0.0, 1.0);
            }
            out.classes = 2;
            out.scratch = s;
            return;
        }
        // Row-major from here, as the post transforms work on rows.
        let mut by_row = std::mem::take(&mut out.probabilities);
        by_row.resize(rows * t, 0.0);
        for (j, column) in s.chunks_exact(rows.max(1)).enumerate() {
            by_row.iter_mut().skip(j).step_by(t).zip(column).for_each(|(v, c)| *v = *c);
        }
        match (&self.labels, t) {
            // Binary: the second class when its score is higher (a tie goes to the first).
            (Some(labels), 2) => out.labels.extend(by_row.chunks_exact(2).map(|p| labels[(p[1] > p[0]) as usize])),
            (Some(labels), _) => out.labels.extend(by_row.chunks_exact(t).map(|row| labels[argmax(row)])),
            (None, _) => {}
        }
        match self.post {
            Post::Logistic if t > 1 => logistic_batch(&mut by_row),
            post => by_row.chunks_exact_mut(t).for_each(|row| post.apply(row)),
        }
        if self.labels.is_some() {
            out.classes = t;
        } else {
            out.scores.extend(by_row.iter().step_by(t));
            by_row.clear();
        }
        out.probabilities = by_row;
        out.scratch = s;
    }
}

fn argmax(s: &[f32]) -> usize {
    let mut best = 0;
    for (i, v) in s.iter().enumerate() {
        if *v > s[best] {
            best = i;
        }
    }
    best
}

/// The most comparisons from `root` to a leaf, level by level; a model whose tree loops back
/// on itself is refused (a walk down it would never end).
fn depth(nodes: &[Node], root: u32) -> Result<u32, MlError> {
    let (mut level, mut next, mut depth) = (vec![root], Vec::new(), 0u32);
    loop {
        next.clear();
        for &i in &level {
            let n = &nodes[i as usize];
            if n.mode != Mode::Leaf {
                next.extend([n.if_true, n.if_false]);
            }
        }
        if next.is_empty() {
            return Ok(depth);
        }
        next.sort_unstable();
        next.dedup();
        depth += 1;
        if depth as usize > nodes.len() {
            return Err(MlError::BadModel(format!("the tree rooted at node {root} has a cycle")));
        }
        std::mem::swap(&mut level, &mut next);
    }
}

impl Trees {
    fn read(a: &Attrs, features: usize) -> Result<Trees, MlError> {
        let classifier = a.0.op_type.as_deref() == Some("TreeEnsembleClassifier");
        if a.has("nodes_values_as_tensor") || a.has("base_values_as_tensor") {
            return Err(MlError::Unsupported("double-precision tree thresholds".into()));
        }
        let tree_ids = a.ints("nodes_treeids");
        let node_ids = a.ints("nodes_nodeids");
        let feature_ids = a.ints("nodes_featureids");
        let values = a.floats("nodes_values");
        let modes = a.strings("nodes_modes");
        let trues = a.ints("nodes_truenodeids");
        let falses = a.ints("nodes_falsenodeids");
        let missing = a.ints("nodes_missing_value_tracks_true");
        let n = tree_ids.len();
        if [node_ids.len(), feature_ids.len(), values.len(), modes.len(), trues.len(), falses.len()].iter().any(|&l| l != n) {
            return Err(MlError::BadModel("tree node attributes of different lengths".into()));
        }
        // (tree, node id) -> index in `nodes`.
        let mut index = std::collections::HashMap::with_capacity(n);
        for i in 0..n {
            index.insert((tree_ids[i], node_ids[i]), i as u32);
        }
        let lookup =
            |tree: i64, id: i64| index.get(&(tree, id)).copied().ok_or_else(|| MlError::BadModel(format!("tree {tree} has no node {id}")));
        let mut nodes = Vec::with_capacity(n);
        let mut roots: Vec<u32> = Vec::new();
        for i in 0..n {
            let mode = match modes[i].as_str() {
                "BRANCH_LEQ" => Mode::Leq,
                "BRANCH_LT" => Mode::Lt,
                "BRANCH_GTE" => Mode::Gte,
                "BRANCH_GT" => Mode::Gt,
                "BRANCH_EQ" => Mode::Eq,
                "BRANCH_NEQ" => Mode::Neq,
                "LEAF" => Mode::Leaf,
                other => return Err(MlError::BadModel(format!("node mode {other}"))),
            };
            let feature = feature_ids[i];
            if mode != Mode::Leaf && !(0..features as i64).contains(&feature) {
                return Err(MlError::BadModel(format!("node reads feature {feature} of {features}")));
            }
            let (if_true, if_false) =
                if mode == Mode::Leaf { (0, 0) } else { (lookup(tree_ids[i], trues[i])?, lookup(tree_ids[i], falses[i])?) };
            if roots.last().map(|&r| tree_ids[r as usize]) != Some(tree_ids[i]) {
                roots.push(i as u32);
            }
            nodes.push(Node {
                mode,
                feature: feature.max(0) as u32,
                threshold: values[i],
                if_true,
                if_false,
                missing_true: missing.get(i).copied().unwrap_or(0) != 0,
                weights: (0, 0),
            });
        }
        // Roots are each tree's first node in file order; check every tree got exactly one.
        let mut tree_set: Vec<i64> = tree_ids.clone();
        tree_set.sort_unstable();
        tree_set.dedup();
        if tree_set.len() != roots.len() {
            return Err(MlError::Unsupported("tree nodes not grouped by tree".into()));
        }
        let prefix = if classifier { "class" } else { "target" };
        let w_trees = a.ints(&format!("{prefix}_treeids"));
        let w_nodes = a.ints(&format!("{prefix}_nodeids"));
        let w_ids = a.ints(&format!("{prefix}_ids"));
        let w_values = a.floats(&format!("{prefix}_weights"));
        if [w_nodes.len(), w_ids.len(), w_values.len()].iter().any(|&l| l != w_trees.len()) {
            return Err(MlError::BadModel("leaf weight attributes of different lengths".into()));
        }
        let (labels, targets) = if classifier {
            if !a.strings("classlabels_strings").is_empty() {
                return Err(MlError::Unsupported("string class labels (train with integer labels)".into()));
            }
            let labels = a.ints("classlabels_int64s");
            let n = labels.len();
            (Some(labels), n)
        } else {
            (None, a.int("n_targets").unwrap_or(1).max(1) as usize)
        };
        let mut leaf_weights: Vec<Vec<(u32, f32)>> = vec![Vec::new(); n];
        let mut used = vec![false; targets.max(1)];
        for j in 0..w_trees.len() {
            let leaf = lookup(w_trees[j], w_nodes[j])? as usize;
            let t = w_ids[j];
            if !(0..targets as i64).contains(&t) {
                return Err(MlError::BadModel(format!("leaf weight for target {t} of {targets}")));
            }
            used[t as usize] = true;
            leaf_weights[leaf].push((t as u32, w_values[j]));
        }
        let mut weights = Vec::with_capacity(w_trees.len());
        for (node, w) in nodes.iter_mut().zip(leaf_weights) {
            node.weights = (weights.len() as u32, (weights.len() + w.len()) as u32);
            weights.extend(w);
        }
        let binary_single = classifier && targets == 2 && !used[1];
        if binary_single && !used[0] {
            return Err(MlError::BadModel("a classifier without leaf weights".into()));
        }
        let weights_all_positive = w_values.iter().all(|w| *w >= 0.0);
        let aggregate = a.string("aggregate_function").unwrap_or_else(|| "SUM".into());
        let average = match aggregate.as_str() {
            "SUM" => false,
            "AVERAGE" => true,
            other => return Err(MlError::Unsupported(format!("aggregate_function {other}"))),
        };
        if classifier && targets < 2 {
            return Err(MlError::Unsupported("a classifier with fewer than two classes".into()));
        }
        let depths = roots.iter().map(|&r| depth(&nodes, r)).collect::<Result<Vec<_>, _>>()?;
        let simple = nodes.iter().all(|n| n.mode == Mode::Leaf || (n.mode == Mode::Leq && !n.missing_true));
        let steps = simple.then(|| {
            let step = |(i, n): (usize, &Node)| match n.mode {
                Mode::Leaf => Step { feature: 0, threshold: 0.0, next: [i as u32; 2] },
                _ => Step { feature: n.feature, threshold: n.threshold, next: [n.if_false, n.if_true] },
            };
            nodes.iter().enumerate().map(step).collect()
        });
        Ok(Trees {
            nodes,
            roots,
            weights,
            targets,
            base_values: a.floats("base_values"),
            post: Post::parse(a)?,
            labels,
            average,
            binary_single,
            weights_all_positive,
            depths,
            steps,
        })
    }

    /// Scores a batch (row-major, `features` per row): every row's sums over the trees, then
    /// each row's labels and post transform.
    fn predict(&self, x: &[f32], features: usize, out: &mut Predictions) {
        let width = self.targets.max(1);
        let mut sums = std::mem::take(&mut out.scratch);
        sums.clear();
        sums.resize(x.len() / features * width, 0.0);
        match &self.steps {
            Some(steps) => self.walk(steps, x, features, &mut sums),
            None => {
                for (row, s) in x.chunks_exact(features).zip(sums.chunks_exact_mut(width)) {
                    for &root in &self.roots {
                        self.add_leaf(Self::leaf(&self.nodes, root, row), s);
                    }
                }
            }
        }
        for s in sums.chunks_exact_mut(width) {
            self.finish(s, out);
        }
        out.scratch = sums;
    }

    /// Adds a leaf's weights to a row's sums.
    #[inline]
    fn add_leaf(&self, leaf: u32, s: &mut [f32]) {
        let (from, to) = self.nodes[leaf as usize].weights;
        for &(t, w) in &self.weights[from as usize..to as usize] {
            s[t as usize] += w;
        }
    }

    /// The sums of trees whose nodes all compare `x <= threshold`: tree by tree, a block of
    /// rows walks down together, each a tree's depth of steps with the child picked by the
    /// comparison's outcome rather than by a branch. Row by row, every node is a branch
    /// mispredicted half the time. Each row still adds the trees in order, so the sums are
    /// the same to the bit.
    fn walk(&self, steps: &[Step], x: &[f32], features: usize, sums: &mut [f32]) {
        const LANES: usize = 8;
        let width = self.targets.max(1);
        for (&root, &depth) in self.roots.iter().zip(&self.depths) {
            for (block, s) in x.chunks(features * LANES).zip(sums.chunks_mut(width * LANES)) {
                // A short last block repeats its last row in the spare lanes.
                let last = (block.len() / features).saturating_sub(1);
                let mut at = [root; LANES];
                for _ in 0..depth {
                    for (lane, node) in at.iter_mut().enumerate() {
                        let step = &steps[*node as usize];
                        let v = block[lane.min(last) * features + step.feature as usize];
                        *node = step.next[(v <= step.threshold) as usize];
                    }
                }
                for (&leaf, s) in at.iter().zip(s.chunks_exact_mut(width)) {
                    self.add_leaf(leaf, s);
                }
            }
        }
    }

    #[inline]
    fn leaf(nodes: &[Node], mut i: u32, x: &[f32]) -> u32 {
        loop {
            let n = &nodes[i as usize];
            let v = x[n.feature as usize];
            let go = match n.mode {
                Mode::Leaf => return i,
                Mode::Leq => v <= n.threshold,
                Mode::Lt => v < n.threshold,
                Mode::Gte => v >= n.threshold,
                Mode::Gt => v > n.threshold,
                Mode::Eq => v == n.threshold,
                Mode::Neq => v != n.threshold,
            } || (n.missing_true && v.is_nan());
            i = if go { n.if_true } else { n.if_false };
        }
    }

    /// A row's predictions from its sums over the trees.
    fn finish(&self, s: &mut [f32], out: &mut Predictions) {
        if self.average {
            let n = self.roots.len() as f32;
            s.iter_mut().for_each(|v| *v /= n);
        }
        let Some(labels) = &self.labels else {
            for (v, b) in s.iter_mut().zip(&self.base_values) {
                *v += b;
            }
            self.post.apply(s);
            out.push_score(s[0]);
            return;
        };
        if self.binary_single {
            // One score for the positive class (ONNX Runtime's binary case).
            let mut score = s[0] + self.base_values.first().copied().unwrap_or(0.0);
            let label = if self.weights_all_positive { score > 0.5 } else { score > 0.0 };
            let mut pair = match self.post {
                Post::Logistic => {
                    score = logistic(score);
                    [1.0 - score, score]
                }
                _ => [if self.weights_all_positive { 1.0 - score } else { -score }, score],
            };
            if self.post == Post::Softmax || self.post == Post::SoftmaxZero {
                self.post.apply(&mut pair);
            }
            out.push_class(labels[label as usize], &pair);
            return;
        }
        for (v, b) in s.iter_mut().zip(&self.base_values) {
            *v += b;
        }
        let best = argmax(s);
        self.post.apply(s);
        out.push_class(labels[best], s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The mirrored path (one column, both probabilities from it) gives exactly what computing
    /// both columns and the logistic on each gives, labels included, at every width.
    #[test]
    fn mirrored_binary_equals_both_columns_bit_for_bit() {
        for features in [1, 5, 8, 11] {
            let w: Vec<f32> = (0..features).map(|f| (f as f32 * 0.37 - 1.1) * if f % 2 == 0 { 1.0 } else { -0.013 }).collect();
            let coef: Vec<f32> = w.iter().map(|v| -v).chain(w.iter().copied()).collect();
            let model = |mirrored| Linear {
                coef: coef.clone(),
                intercepts: vec![-0.0, 0.0],
                targets: 2,
                post: Post::Logistic,
                labels: Some(vec![3, 7]),
                mirrored,
            };
            // 200 rows (more than a block); the first, all zeros, is exactly on the boundary.
            let x: Vec<f32> =
                (0..200 * features).map(|i| if i < features { 0.0 } else { ((i * 7919) % 2003) as f32 / 97.0 - 10.0 }).collect();
            let (mut a, mut b) = (Predictions::default(), Predictions::default());
            model(true).predict(&x, features, &mut a);
            model(false).predict(&x, features, &mut b);
            assert_eq!(a.labels, b.labels, "{features} features");
            assert_eq!((a.classes, a.probabilities.len()), (2, 400));
            let bits = |p: &Predictions| p.probabilities.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&a), bits(&b), "{features} features");
            assert!(a.labels.contains(&3) && a.labels.contains(&7));
            // A batch whose rows were all skipped.
            for mirrored in [true, false] {
                let mut none = Predictions::default();
                model(mirrored).predict(&[], features, &mut none);
                assert!(none.labels.is_empty() && none.probabilities.is_empty());
            }
        }
    }

    /// The churn example's 100-tree gradient boosting walks its trees in blocks of rows, and
    /// gives exactly the sums of the walk node by node, on rows with values on thresholds and
    /// NaN; a partial last block included.
    #[test]
    fn tree_walk_equals_node_by_node_bit_for_bit() {
        let bytes =
            std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../jobs/models/churn-risk/2/model.onnx")).expect("the example model");
        let model = NativeModel::from_onnx(&OnnxModel::parse(&bytes).expect("parses")).expect("loads");
        let Kind::Trees(trees) = &model.kind else { panic!("a tree ensemble") };
        let steps = trees.steps.as_ref().expect("scikit-learn's trees take the walk");
        let features = model.features;
        let thresholds: Vec<f32> = trees.nodes.iter().filter(|n| n.mode != Mode::Leaf).map(|n| n.threshold).collect();
        let x: Vec<f32> = (0..203 * features)
            .map(|i| match i % 7 {
                0 => thresholds[i % thresholds.len()],
                3 if i % 5 == 0 => f32::NAN,
                _ => ((i * 7919) % 1009) as f32 / 10.0,
            })
            .collect();
        let width = trees.targets.max(1);
        let mut walked = vec![0.0; 203 * width];
        trees.walk(steps, &x, features, &mut walked);
        let mut by_node = vec![0.0f32; 203 * width];
        for (row, s) in x.chunks_exact(features).zip(by_node.chunks_exact_mut(width)) {
            for &root in &trees.roots {
                trees.add_leaf(Trees::leaf(&trees.nodes, root, row), s);
            }
        }
        let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&walked), bits(&by_node));
        assert!(trees.depths.iter().all(|d| (1..=3).contains(d)), "{:?}", trees.depths);
    }

    #[test]
    fn a_tree_that_loops_is_refused() {
        let node = |if_true, if_false| Node {
            mode: Mode::Leq,
            feature: 0,
            threshold: 0.0,
            if_true,
            if_false,
            missing_true: false,
            weights: (0, 0),
        };
        let leaf = Node { mode: Mode::Leaf, ..node(0, 0) };
        assert_eq!(depth(&[node(1, 2), leaf, leaf], 0).ok(), Some(1));
        let err = depth(&[node(1, 2), node(0, 2), leaf], 0).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("cycle"), "{err}");
    }
}
