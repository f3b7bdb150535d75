//! Audio features benchmark (issue #7): seconds of audio turned into every feature (STFT, mel,
//! MFCC, chroma, centroid, rolloff, zero-crossing rate, RMS) per CPU-second, by tenantflow's
//! extractor and by librosa 0.11 on the same samples, in the same run. librosa gets its best
//! case: one STFT shared by every spectral feature (its feature functions called one by one
//! would compute four). It runs in the Python environment of scripts/ml/train.sh
//! (`TENANTFLOW_ML_VENV`, default /var/tmp/tenantflow-ml-venv); without it only tenantflow is
//! measured.
//!
//!     cargo run --release -p tenantflow-benches -- --only audio

use std::path::Path;
use std::process::Command;

use tenantflow_ml::audio::{read_wav, Extractor, Params};

use crate::cpu_seconds;

const LIBROSA: &str = r#"
import sys, time, numpy as np, librosa, soundfile as sf
y, sr = sf.read(sys.argv[1], dtype="float32")
times = []
for _ in range(3):
    t = time.process_time()
    S = np.abs(librosa.stft(y))
    P = S ** 2
    mel = librosa.feature.melspectrogram(S=P, sr=sr)
    mfcc = librosa.feature.mfcc(S=librosa.power_to_db(mel), sr=sr)
    chroma = librosa.feature.chroma_stft(S=P, sr=sr)
    centroid = librosa.feature.spectral_centroid(S=S, sr=sr)
    rolloff = librosa.feature.spectral_rolloff(S=S, sr=sr)
    zcr = librosa.feature.zero_crossing_rate(y)
    rms = librosa.feature.rms(y=y)
    times.append(time.process_time() - t)
print(sorted(times)[1])
"#;

/// `copies` copies of a test clip end to end, as one clip.
fn long_clip(name: &str, copies: usize) -> anyhow::Result<(u32, Vec<f32>)> {
    let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../ml-ops/tests/audio")).join(format!("{name}.wav"));
    let (sr, y) = read_wav(&std::fs::read(&path)?).map_err(|e| anyhow::anyhow!(e))?;
    Ok((sr, y.iter().copied().cycle().take(y.len() * copies).collect()))
}

fn write_wav(path: &Path, sr: u32, y: &[f32]) -> anyhow::Result<()> {
    let spec = hound::WavSpec { channels: 1, sample_rate: sr, bits_per_sample: 16, sample_format: hound::SampleFormat::Int };
    let mut w = hound::WavWriter::create(path, spec)?;
    for s in y {
        w.write_sample((s * 32768.0).round().clamp(-32768.0, 32767.0) as i16)?;
    }
    w.finalize()?;
    Ok(())
}

pub fn audio_bench() -> anyhow::Result<Vec<serde_json::Value>> {
    let venv = std::env::var("TENANTFLOW_ML_VENV").unwrap_or_else(|_| "/var/tmp/tenantflow-ml-venv".into());
    let python = Path::new(&venv).join("bin/python");
    let mut out = Vec::new();
    // 60 s of music at 8 kHz (the music-on-hold excerpt), 60 s of a chord at 22.05 kHz.
    for (name, copies) in [("moh-excerpt", 20), ("chord", 60)] {
        let (sr, y) = long_clip(name, copies)?;
        let seconds = y.len() as f64 / sr as f64;
        let mut ex = Extractor::new(sr, Params::default());
        let mut rounds = Vec::new();
        for _ in 0..3 {
            let cpu0 = cpu_seconds();
            std::hint::black_box(ex.extract(&y));
            rounds.push(cpu_seconds() - cpu0);
        }
        rounds.sort_by(f64::total_cmp);
        let ours = rounds[1];
        let wav = std::env::temp_dir().join(format!("tenantflow-audio-bench-{name}.wav"));
        write_wav(&wav, sr, &y)?;
        let librosa = if python.exists() {
            let o = Command::new(&python).arg("-c").arg(LIBROSA).arg(&wav).output()?;
            String::from_utf8_lossy(&o.stdout).trim().parse::<f64>().ok()
        } else {
            None
        };
        let _ = std::fs::remove_file(&wav);
        let rate = |cpu: f64| (seconds / cpu * 10.0).round() / 10.0;
        out.push(serde_json::json!({
            "name": "audio_features",
            "clip": name,
            "sample_rate": sr,
            "audio_seconds": seconds,
            "tenantflow_audio_seconds_per_cpu_sec": rate(ours),
            "librosa_audio_seconds_per_cpu_sec": librosa.map(rate),
            "tenantflow_vs_librosa": librosa.map(|l| (l / ours * 100.0).round() / 100.0),
            "librosa": if librosa.is_some() { "0.11, one shared STFT" } else { "not measured: run scripts/ml/train.sh to make its environment" },
        }));
    }
    Ok(out)
}
