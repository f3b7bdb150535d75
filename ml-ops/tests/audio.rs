//! Audio features against librosa 0.11 on the same samples: synthetic signals (sine, chord,
//! chirp, white noise at 22050 Hz) and a 3 s excerpt of a real music clip (Debian's
//! asterisk-moh-opsound-wav, 8 kHz). `scripts/ml/audio_reference.py` wrote the WAV files and
//! librosa's features beside them. Tolerances are relative to each feature's scale (the largest
//! magnitude in the clip's array), since single values near zero have no meaningful relative
//! error: librosa computes in float32, tenantflow in float64. Chroma is compared twice: with the
//! tuning estimated from the clip (librosa's default, checked exactly) and at tuning 0.

use std::path::Path;

use serde_json::Value;
use tenantflow_ml::audio::{read_wav, Extractor, Params};

/// Feature -> largest allowed |ours - librosa's| / scale.
const TOLERANCES: &[(&str, f64)] = &[
    ("mel", 1e-5),
    ("mfcc", 1e-4),
    ("chroma", 1e-4),
    ("chroma_tuning0", 1e-4),
    ("centroid", 1e-4),
    ("rolloff", 1e-9),
    ("zcr", 1e-9),
    ("rms", 1e-5),
];

fn matrix(v: &Value) -> Vec<f64> {
    match v {
        Value::Array(rows) if rows.first().is_some_and(|r| r.is_array()) => rows.iter().flat_map(matrix).collect(),
        Value::Array(values) => values.iter().filter_map(|x| x.as_f64()).collect(),
        _ => Vec::new(),
    }
}

#[test]
fn features_match_librosa() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/audio");
    let mut clips = 0;
    let mut report = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("tests/audio").flatten() {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("wav") {
            continue;
        }
        let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or("?").to_string();
        let (sr, y) = read_wav(&std::fs::read(&path).expect("wav")).expect("16-bit WAV");
        let reference: Value = serde_json::from_slice(&std::fs::read(path.with_extension("json")).expect("json")).expect("JSON");
        assert_eq!(reference["sample_rate"].as_u64(), Some(sr as u64), "{name}");
        assert_eq!(reference["samples"].as_u64(), Some(y.len() as u64), "{name}");
        let mut ex = Extractor::new(sr, Params::default());
        let f = ex.extract(&y);
        // The tuning chroma estimates: a histogram bin's edge, so any real difference is a whole
        // hundredth (the JSON number is parsed to within a few ulps).
        let tuning = reference["tuning"].as_f64().expect("tuning");
        report.push(format!("{name:12} tuning    {:+.2} (librosa {tuning:+.2})", f.tuning));
        assert!((f.tuning - tuning).abs() < 1e-9, "{name}: tuning {} vs librosa's {tuning}", f.tuning);
        let at_zero = Extractor::new(sr, Params { tuning: Some(0.0), ..Params::default() }).extract(&y);
        for (feature, tolerance) in TOLERANCES {
            let ours = match *feature {
                "mel" => &f.mel,
                "mfcc" => &f.mfcc,
                "chroma" => &f.chroma,
                "chroma_tuning0" => &at_zero.chroma,
                "centroid" => &f.centroid,
                "rolloff" => &f.rolloff,
                "zcr" => &f.zcr,
                _ => &f.rms,
            };
            let theirs = matrix(&reference[*feature]);
            assert_eq!(ours.len(), theirs.len(), "{name} {feature}: shape");
            let scale = theirs.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-12);
            let err = ours.iter().zip(&theirs).map(|(a, b)| (a - b).abs() / scale).fold(0.0, f64::max);
            report.push(format!("{name:12} {feature:9} {err:.2e}"));
            assert!(err <= *tolerance, "{name} {feature}: error {err:e} > {tolerance:e}");
        }
        clips += 1;
    }
    assert_eq!(clips, 5, "the synthetic signals and the music excerpt");
    println!("{}", report.join("\n"));
}
