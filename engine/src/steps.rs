//! The stateless steps of a job stage (before or after the window) on one worker, run over a
//! chunk of rows: compiled filters and derives, and the steps that need whole chunks or state:
//! score steps ([`crate::scoring::Scorer`]), anomaly steps (each series' baseline, checkpointed
//! with the window state) and audio steps (a clip's features).

use std::collections::HashMap;
use std::sync::Arc;

use tenantflow_core::expr::CompiledExpr;
use tenantflow_core::job::{AnomalyMethod, AudioFormat, AUDIO_CHROMA, AUDIO_MFCC};
use tenantflow_core::plan::{check_feature, AnomalyPlan, AudioPlan, PlannedKind, PlannedStep};
use tenantflow_core::{Schema, Value};
use tenantflow_ml::audio::{decode_clip, Clip, Extractor, Params as AudioParams};
use tenantflow_operators::anomaly::{Detector, Method, Snapshot as AnomalySnapshot};

use crate::scoring::{ScoreModel, Scorer};

/// An anomaly step on a worker: the series it owns and their baselines.
pub struct Anomalies {
    plan: AnomalyPlan,
    value: CompiledExpr,
    detector: Detector,
    key: Vec<Value>,
}

impl Anomalies {
    fn new(plan: &AnomalyPlan, schema: &Schema) -> Result<Anomalies, String> {
        let value = check_feature(&plan.spec.value.value, schema).map_err(|e| e.message)?;
        let method = match plan.spec.method {
            AnomalyMethod::Ewma { alpha } => Method::Ewma { alpha },
            AnomalyMethod::Mad { window } => Method::Mad { window },
            AnomalyMethod::Seasonal { period, bucket, seasons } => Method::Seasonal { period, bucket, seasons },
        };
        Ok(Anomalies { plan: plan.clone(), value, detector: Detector::new(method, plan.spec.warmup), key: Vec::new() })
    }

    /// Scores each kept row against its series' baseline, in the order given (each key's
    /// window results come in event-time order).
    fn run(&mut self, rows: &mut [&mut [Value]], keep: &[bool]) {
        let p = &self.plan;
        for (row, _) in rows.iter_mut().zip(keep).filter(|(_, k)| **k) {
            self.key.clear();
            self.key.extend(p.key_pos.iter().map(|&i| row[i].clone()));
            let t = row[p.time_pos].as_i64().unwrap_or(0);
            let scored = self.value.eval(row).as_f64().and_then(|x| self.detector.observe(&self.key, t, x));
            let (score, baseline, flag) = match scored {
                Some(s) => (Value::Float(s.score), Value::Float(s.baseline), Value::Bool(s.score.abs() >= p.spec.threshold)),
                None => (Value::Null, Value::Null, Value::Null),
            };
            row[p.score_pos] = score;
            row[p.baseline_pos] = baseline;
            row[p.flag_pos] = flag;
        }
    }
}

/// An audio step on a worker: an extractor per sample rate met so far.
pub struct Audio {
    plan: AudioPlan,
    extractors: HashMap<u32, Extractor>,
}

impl Audio {
    fn run(&mut self, rows: &mut [&mut [Value]], keep: &[bool]) {
        let p = &self.plan;
        let clip = match p.spec.format {
            AudioFormat::WavPath => Clip::Path,
            AudioFormat::WavBase64 => Clip::Base64,
            AudioFormat::Pcm16Base64 => Clip::Pcm16Base64(p.spec.sample_rate),
        };
        for (row, _) in rows.iter_mut().zip(keep).filter(|(_, k)| **k) {
            let out = p.first_out;
            let decoded = match row[p.field_pos].as_str() {
                Some(text) => decode_clip(clip, text).map_err(|e| e.to_string()),
                None => Err("no clip (the field is NULL)".to_string()),
            };
            // A clip without samples is an error (`decode_clip`), as it is to librosa: never
            // the features of silence.
            let (sr, samples) = match decoded {
                Ok(d) => d,
                Err(e) => {
                    // The row goes on with NULL features and the reason, never silently.
                    row[out..out + 2 + 4 + AUDIO_MFCC + AUDIO_CHROMA].iter_mut().for_each(|v| *v = Value::Null);
                    row[out + 1] = Value::Str(e.into());
                    continue;
                }
            };
            let extractor = self.extractors.entry(sr.max(1)).or_insert_with(|| Extractor::new(sr.max(1), AudioParams::default()));
            let s = extractor.extract(&samples).summary();
            row[out] = Value::Float(samples.len() as f64 / sr.max(1) as f64);
            row[out + 1] = Value::Null;
            for (i, v) in [s.rms, s.zcr, s.centroid, s.rolloff].into_iter().chain(s.mfcc).chain(s.chroma).enumerate() {
                row[out + 2 + i] = Value::Float(v);
            }
        }
    }
}

/// A stateless step on a worker: a compiled filter or derive, a scorer, audio features; or an
/// anomaly step, whose baselines are checkpointed with the window state.
pub enum Exec {
    Row(tenantflow_core::plan::CompiledStep),
    Score(Box<Scorer>),
    Anomaly(Box<Anomalies>),
    Audio(Box<Audio>),
}

/// The stateless steps of a job stage (before or after the window), run over a chunk of rows.
#[derive(Default)]
pub struct Steps {
    execs: Vec<Exec>,
    /// Jobs without checkpoints poll the registry this often (counted in chunks).
    chunked: bool,
}

impl Steps {
    /// Builds the steps of `planned`; score steps find their model in `models` by step key.
    pub fn new(planned: &[PlannedStep], models: &[Arc<ScoreModel>]) -> Result<Steps, String> {
        let mut execs = Vec::new();
        for s in planned {
            match &s.kind {
                PlannedKind::Anomaly(ap) => execs.push(Exec::Anomaly(Box::new(Anomalies::new(ap, &s.schema)?))),
                PlannedKind::Audio(ap) => execs.push(Exec::Audio(Box::new(Audio { plan: (**ap).clone(), extractors: HashMap::new() }))),
                PlannedKind::Score(sp) => {
                    let m = models
                        .iter()
                        .find(|m| m.plan.origin.key == sp.origin.key)
                        .ok_or_else(|| format!("score step {} has no resolved model", sp.origin.key))?;
                    execs.push(Exec::Score(Box::new(Scorer::new(Arc::clone(m))?)));
                }
                _ => execs.extend(s.compile().map(Exec::Row)),
            }
        }
        let chunked = execs.iter().any(|e| !matches!(e, Exec::Row(_)));
        Ok(Steps { execs, chunked })
    }

    /// Whether some step (score, anomaly, audio) needs whole chunks rather than single rows.
    pub fn batched(&self) -> bool {
        self.chunked
    }

    /// Applies the row steps to one row (jobs without score steps); false when filtered out.
    #[inline]
    pub fn apply(&self, row: &mut [Value]) -> bool {
        self.execs.iter().all(|e| match e {
            Exec::Row(s) => s.apply(row),
            Exec::Score(_) | Exec::Anomaly(_) | Exec::Audio(_) => true,
        })
    }

    /// Runs every step over the rows whose `keep` is true; a filtered row's `keep` turns false
    /// and `dropped` sees it.
    pub fn run(&mut self, rows: &mut [&mut [Value]], keep: &mut [bool], mut dropped: impl FnMut(&[Value])) {
        for e in &mut self.execs {
            match e {
                Exec::Row(s) => {
                    for (row, k) in rows.iter_mut().zip(keep.iter_mut()) {
                        if *k && !s.apply(row) {
                            *k = false;
                            dropped(row);
                        }
                    }
                }
                Exec::Score(s) => s.score(rows, keep),
                Exec::Anomaly(a) => a.run(rows, keep),
                Exec::Audio(a) => a.run(rows, keep),
            }
        }
    }

    /// The anomaly steps' baselines, for a checkpoint.
    /// The anomaly steps' baselines, by each step's output prefix (unique among the output
    /// fields, and unlike its position unchanged when other steps are added or removed).
    pub fn snapshot(&self) -> Vec<(String, AnomalySnapshot)> {
        self.execs
            .iter()
            .filter_map(|e| match e {
                Exec::Anomaly(a) => Some((a.plan.spec.prefix.clone(), a.detector.snapshot())),
                _ => None,
            })
            .collect()
    }

    /// Restores each anomaly step's baselines by its prefix; a step new since the checkpoint
    /// starts with none.
    pub fn restore(&mut self, mut snapshots: Vec<(String, AnomalySnapshot)>) -> Result<(), String> {
        for e in &mut self.execs {
            if let Exec::Anomaly(a) = e {
                let found = snapshots.iter().position(|(prefix, _)| *prefix == a.plan.spec.prefix);
                a.detector.restore(found.map(|i| snapshots.swap_remove(i).1).unwrap_or_default())?;
            }
        }
        Ok(())
    }

    /// At checkpoint barrier `epoch`: scorers take the versions decided for the next epoch.
    pub fn at_barrier(&mut self, epoch: u64) {
        for e in &mut self.execs {
            if let Exec::Score(s) = e {
                s.at_barrier(epoch);
            }
        }
    }

    /// Without checkpoints: scorers follow the registry.
    pub fn poll(&mut self) {
        for e in &mut self.execs {
            if let Exec::Score(s) = e {
                s.poll();
            }
        }
    }
}
