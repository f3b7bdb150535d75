//! A batch of predictions, in the layout every scorer fills.

/// What a model predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "task", rename_all = "snake_case")]
pub enum Task {
    /// A label per row and a probability per class.
    Classifier { classes: usize },
    /// One score per row.
    Regressor,
}

/// Predictions for `rows` rows. Buffers are reused from batch to batch.
#[derive(Debug, Clone, Default)]
pub struct Predictions {
    pub rows: usize,
    /// Classifiers: each row's label.
    pub labels: Vec<i64>,
    /// Classifiers: `classes` probabilities per row, row-major.
    pub probabilities: Vec<f32>,
    pub classes: usize,
    /// Regressors, and classifiers that give one score per row beside their label (outlier
    /// detectors): each row's score.
    pub scores: Vec<f32>,
    /// One row's scores, reused by the native scorer.
    pub(crate) scratch: Vec<f32>,
}

impl Predictions {
    pub fn clear(&mut self) {
        self.rows = 0;
        self.labels.clear();
        self.probabilities.clear();
        self.scores.clear();
    }

    pub fn push_class(&mut self, label: i64, probabilities: &[f32]) {
        self.labels.push(label);
        self.classes = probabilities.len();
        self.probabilities.extend_from_slice(probabilities);
    }

    pub fn push_score(&mut self, score: f32) {
        self.scores.push(score);
    }

    /// Row `r`'s label, if the model is a classifier.
    #[inline]
    pub fn label(&self, r: usize) -> Option<i64> {
        self.labels.get(r).copied()
    }

    /// Row `r`'s class probabilities.
    pub fn probabilities(&self, r: usize) -> &[f32] {
        self.probabilities.get(r * self.classes..(r + 1) * self.classes).unwrap_or(&[])
    }

    /// The probability a job reports: of the second class for a binary classifier (the
    /// positive one: churns, fraud, anomalous), else of the predicted class.
    #[inline]
    pub fn probability(&self, r: usize) -> Option<f32> {
        let c = self.classes;
        (c > 0).then(|| self.probabilities.get(r * c..(r + 1) * c)).flatten().and_then(reported)
    }

    /// [`Predictions::probability`] of every row, in order (none for a model without
    /// probabilities).
    #[inline]
    pub fn reported_probabilities(&self) -> impl ExactSizeIterator<Item = Option<f32>> + '_ {
        self.probabilities.chunks_exact(self.classes.max(1)).map(reported)
    }

    /// Row `r`'s score, if the model is a regressor.
    #[inline]
    pub fn score(&self, r: usize) -> Option<f32> {
        self.scores.get(r).copied()
    }
}

/// The probability reported from one row's class probabilities (see
/// [`Predictions::probability`]).
#[inline]
fn reported(p: &[f32]) -> Option<f32> {
    match *p {
        [_, positive] => Some(positive),
        _ => p.iter().copied().reduce(f32::max),
    }
}
