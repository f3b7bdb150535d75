//! Streaming anomaly detection without a model: each series (tenant and key) keeps a baseline
//! of its own past values and scores each new value against it, before learning from it.
//!
//! - **EWMA**: exponentially weighted mean and variance; the score is the z-score
//!   `(x - mean) / std`.
//! - **MAD**: the median and the median absolute deviation of the last `window` values; the score
//!   is the robust z-score `(x - median) / (1.4826 * MAD)`, which a few outliers do not move.
//! - **Seasonal**: the baseline is the mean of the values at the same phase of the last `seasons`
//!   seasons (the same hour of earlier weeks, for a period of 1 week and a bucket of 1 hour);
//!   the spread is that of the series' residuals from its baselines (exponentially weighted over
//!   all phases), since a handful of seasons says little about the spread of one phase.
//!
//! A series scores nothing (NULL) until it has `warmup` values (seasonal: `warmup` earlier
//! seasons at that phase, and 20 residuals). Every score divides by
//! `max(spread, 1e-6 * max(|baseline|, 1))` (the spread: EWMA's standard deviation,
//! `1.4826 * MAD`, or the seasonal residuals' standard deviation), so a flat series (spread 0),
//! even one flat at 0, scores a change high rather than dividing by zero.

use std::collections::{BTreeMap, HashMap, VecDeque};

use serde::{Deserialize, Serialize};
use tenantflow_core::Value;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Method {
    Ewma { alpha: f64 },
    Mad { window: usize },
    Seasonal { period: i64, bucket: i64, seasons: usize },
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
enum Series {
    #[default]
    Empty,
    Ewma {
        n: u64,
        mean: f64,
        var: f64,
    },
    Mad {
        values: VecDeque<f64>,
    },
    /// Phase -> that phase's values in earlier seasons (oldest first); the residuals' weighted
    /// variance and how many there were.
    Seasonal {
        phases: BTreeMap<i64, VecDeque<f64>>,
        resid_var: f64,
        resid_n: u64,
    },
}

/// A score: how far the value is from the baseline, in units of the series' spread.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Score {
    pub score: f64,
    pub baseline: f64,
}

/// The baselines of every series one worker owns.
#[derive(Debug, Clone)]
pub struct Detector {
    method: Method,
    warmup: usize,
    series: HashMap<Vec<Value>, Series, foldhash::fast::RandomState>,
    scratch: Vec<f64>,
}

/// What a checkpoint keeps: every series' state, sorted by key (the same bytes for the same
/// state).
pub type Snapshot = Vec<(Vec<Value>, Vec<u8>)>;

/// Weight of each new residual in the seasonal method's spread, and how many residuals it takes
/// before the spread is trusted.
const RESIDUAL_ALPHA: f64 = 0.05;
const MIN_RESIDUALS: u64 = 20;

/// The least spread a score divides by: 1e-6 of the baseline's magnitude, and never less than
/// 1e-6 (a baseline of 0 would give 0).
fn spread_floor(baseline: f64) -> f64 {
    1e-6 * baseline.abs().max(1.0)
}

impl Detector {
    pub fn new(method: Method, warmup: usize) -> Detector {
        Detector { method, warmup, series: HashMap::default(), scratch: Vec::new() }
    }

    pub fn series(&self) -> usize {
        self.series.len()
    }

    /// Scores `x` at time `t` (µs) for the series `key`, then adds it to the baseline. `None`
    /// while the series warms up.
    pub fn observe(&mut self, key: &[Value], t: i64, x: f64) -> Option<Score> {
        if !x.is_finite() {
            return None;
        }
        let state = match self.series.get_mut(key) {
            Some(s) => s,
            None => self.series.entry(key.to_vec()).or_default(),
        };
        match self.method {
            Method::Ewma { alpha } => {
                let (n, mean, var) = match state {
                    Series::Ewma { n, mean, var } => (*n, *mean, *var),
                    _ => (0, x, 0.0),
                };
                let score = (n as usize >= self.warmup && n > 0)
                    .then(|| Score { score: (x - mean) / var.sqrt().max(spread_floor(mean)), baseline: mean });
                // West's exponentially weighted update of mean and variance.
                let diff = x - mean;
                let incr = alpha * diff;
                let (mean, var) = if n == 0 { (x, 0.0) } else { (mean + incr, (1.0 - alpha) * (var + diff * incr)) };
                *state = Series::Ewma { n: n + 1, mean, var };
                score
            }
            Method::Mad { window } => {
                if !matches!(state, Series::Mad { .. }) {
                    *state = Series::Mad { values: VecDeque::with_capacity(window) };
                }
                let Series::Mad { values } = state else { return None };
                let score = (values.len() >= self.warmup.max(1)).then(|| {
                    let median = median(&mut self.scratch, values.iter().copied());
                    let mad = median_abs(&mut self.scratch, values.iter().copied(), median);
                    Score { score: (x - median) / (1.4826 * mad).max(spread_floor(median)), baseline: median }
                });
                if values.len() == window {
                    values.pop_front();
                }
                values.push_back(x);
                score
            }
            Method::Seasonal { period, bucket, seasons } => {
                if !matches!(state, Series::Seasonal { .. }) {
                    *state = Series::Seasonal { phases: BTreeMap::new(), resid_var: 0.0, resid_n: 0 };
                }
                let Series::Seasonal { phases, resid_var, resid_n } = state else { return None };
                let phase = t.rem_euclid(period) / bucket;
                let past = phases.entry(phase).or_default();
                let mut score = None;
                if past.len() >= self.warmup.max(1) {
                    let mean = past.iter().sum::<f64>() / past.len() as f64;
                    let resid = x - mean;
                    if *resid_n >= MIN_RESIDUALS {
                        score = Some(Score { score: resid / resid_var.sqrt().max(spread_floor(mean)), baseline: mean });
                    }
                    *resid_var =
                        if *resid_n == 0 { resid * resid } else { (1.0 - RESIDUAL_ALPHA) * *resid_var + RESIDUAL_ALPHA * resid * resid };
                    *resid_n += 1;
                }
                if past.len() == seasons {
                    past.pop_front();
                }
                past.push_back(x);
                score
            }
        }
    }

    pub fn snapshot(&self) -> Snapshot {
        let mut out: Snapshot = self.series.iter().map(|(k, s)| (k.clone(), bincode::serialize(s).unwrap_or_default())).collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    pub fn restore(&mut self, snapshot: Snapshot) -> Result<(), String> {
        self.series.clear();
        for (k, bytes) in snapshot {
            let s: Series = bincode::deserialize(&bytes).map_err(|e| format!("anomaly state: {e}"))?;
            self.series.insert(k, s);
        }
        Ok(())
    }
}

fn median(scratch: &mut Vec<f64>, values: impl Iterator<Item = f64>) -> f64 {
    scratch.clear();
    scratch.extend(values);
    middle(scratch)
}

fn median_abs(scratch: &mut Vec<f64>, values: impl Iterator<Item = f64>, center: f64) -> f64 {
    scratch.clear();
    scratch.extend(values.map(|v| (v - center).abs()));
    middle(scratch)
}

/// The median of a non-empty slice (the mean of the two middle values for an even length).
fn middle(v: &mut [f64]) -> f64 {
    let n = v.len();
    let mid = n / 2;
    let (_, m, _) = v.select_nth_unstable_by(mid, f64::total_cmp);
    let m = *m;
    if n % 2 == 1 {
        m
    } else {
        let lower = v[..mid].iter().copied().fold(f64::MIN, f64::max);
        (lower + m) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> Vec<Value> {
        vec![Value::Str(s.into())]
    }

    #[test]
    fn ewma_warms_up_then_scores_a_spike() {
        let mut d = Detector::new(Method::Ewma { alpha: 0.1 }, 5);
        let k = key("a");
        for (i, x) in [10.0, 11.0, 9.0, 10.0, 10.5].iter().enumerate() {
            assert_eq!(d.observe(&k, i as i64, *x), None, "warming up");
        }
        let normal = d.observe(&k, 5, 10.2).expect("scored");
        assert!(normal.score.abs() < 1.5, "{normal:?}");
        let spike = d.observe(&k, 6, 30.0).expect("scored");
        assert!(spike.score > 5.0 && (spike.baseline - 10.1).abs() < 0.5, "{spike:?}");
        // Another series has its own baseline.
        assert_eq!(d.observe(&key("b"), 7, 30.0), None);
        assert_eq!(d.series(), 2);
    }

    #[test]
    fn mad_ignores_earlier_outliers_and_flat_series_score_changes_high() {
        let mut d = Detector::new(Method::Mad { window: 7 }, 5);
        let k = key("a");
        for (i, x) in [10.0, 12.0, 500.0, 11.0, 9.0, 10.0].iter().enumerate() {
            d.observe(&k, i as i64, *x);
        }
        // Window 10, 12, 500, 11, 9, 10: median 10.5, MAD 1 -> robust z of 13 is about 1.7.
        let s = d.observe(&k, 6, 13.0).expect("scored");
        assert!((s.baseline - 10.5).abs() < 1e-9 && (s.score - 2.5 / 1.4826).abs() < 1e-9, "{s:?}");
        let mut flat = Detector::new(Method::Mad { window: 10 }, 3);
        for i in 0..3 {
            flat.observe(&k, i, 4.0);
        }
        assert_eq!(flat.observe(&k, 3, 4.0).expect("scored").score, 0.0);
        assert!(flat.observe(&k, 4, 5.0).expect("scored").score > 1e5);
    }

    /// The spread a score divides by is `max(spread, 1e-6 * max(|baseline|, 1))` (issue 17,
    /// item 11): a flat 0.5 then 0.6 scores 0.1 / 1e-6 = 1e5 (not 0.1 / (1e-6 * 0.5)), and a flat
    /// 0 then 3 scores 3e6 instead of dividing by zero.
    #[test]
    fn flat_series_divide_by_the_spread_floor() {
        for method in [Method::Ewma { alpha: 0.1 }, Method::Mad { window: 50 }] {
            for (flat, n, next, expected) in [(0.5, 20, 0.6, 1e5), (0.0, 30, 3.0, 3e6), (1e7, 20, 1e7 + 50.0, 5.0)] {
                let mut d = Detector::new(method, 10);
                let k = key("a");
                for i in 0..n {
                    d.observe(&k, i, flat);
                }
                let s = d.observe(&k, n, next).expect("scored");
                assert!((s.score - expected).abs() <= 1e-6 * expected, "{method:?} {flat} then {next}: {s:?}");
            }
        }
    }

    #[test]
    fn seasonal_compares_with_the_same_phase_of_earlier_seasons() {
        let hour = 3_600_000_000i64;
        let day = 24 * hour;
        let mut d = Detector::new(Method::Seasonal { period: day, bucket: hour, seasons: 4 }, 2);
        let k = key("a");
        // Each hour of the day has its own level (10 x hour), with a little noise. Two days warm
        // the phases up, the third (24 residuals) the spread.
        let level = |h: i64, day: i64| (10 * h) as f64 + ((h * 7 + day * 3) % 5) as f64 * 0.2;
        for n in 0..3 {
            for h in 0..24 {
                let scored = d.observe(&k, n * day + h * hour, level(h, n));
                assert!(n == 2 || scored.is_none(), "day {n} hour {h}: {scored:?}");
            }
        }
        // On day 4, hour 9 at its usual level is normal; hour 3 at hour 9's level is not.
        let busy = d.observe(&k, 3 * day + 9 * hour, level(9, 3)).expect("scored");
        let quiet = d.observe(&k, 3 * day + 3 * hour, 90.0).expect("scored");
        assert!(busy.score.abs() < 3.0 && (busy.baseline - 90.0).abs() < 1.0, "{busy:?}");
        assert!(quiet.score > 50.0 && (quiet.baseline - 30.0).abs() < 1.0, "{quiet:?}");
    }

    #[test]
    fn snapshots_restore_the_same_scores() {
        let mut a = Detector::new(Method::Ewma { alpha: 0.3 }, 2);
        for i in 0..20 {
            a.observe(&key(&format!("s{}", i % 3)), i, (i * i % 7) as f64);
        }
        let mut b = Detector::new(Method::Ewma { alpha: 0.3 }, 2);
        b.restore(a.snapshot()).expect("restore");
        assert_eq!(a.snapshot(), b.snapshot());
        for i in 20..30 {
            let k = key(&format!("s{}", i % 3));
            assert_eq!(a.observe(&k, i, i as f64), b.observe(&k, i, i as f64));
        }
    }
}
