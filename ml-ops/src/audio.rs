//! Audio features on `rustfft`, with librosa's definitions and defaults (librosa 0.11): the
//! short-time Fourier transform (2048-sample periodic Hann frames every 512 samples, centred on
//! zero padding), power and mel spectrograms (128 Slaney-scale bands, Slaney norm), MFCC (20
//! coefficients: orthonormal DCT-II of the mel power in dB, floored 80 dB below the clip's
//! peak), chroma (12 pitch classes, the tuning estimated from the clip's spectral peaks),
//! spectral centroid and 85% rolloff (on magnitude),
//! zero-crossing rate (edge-padded frames) and RMS (zero-padded frames).
//!
//! Clips are read as `librosa.load(path, sr=None)` reads them ([`read_audio`]): WAV of every PCM
//! sample format, FLAC, Ogg Vorbis and MP3 (decoded by `symphonia`), at their own sample rate,
//! channels averaged into one.
//!
//! `ml-ops/tests/audio.rs` compares every feature with librosa's own output on synthetic signals
//! and a real music clip, and every format's samples with what `librosa.load` returns
//! (`scripts/ml/audio_reference.py` made the references).

use std::sync::Arc;

use rustfft::num_complex::Complex;
use rustfft::{Fft, FftPlanner};

/// librosa's defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Params {
    pub n_fft: usize,
    pub hop: usize,
    pub n_mels: usize,
    pub n_mfcc: usize,
    pub top_db: f64,
    pub roll_percent: f64,
    /// Chroma's deviation from A440 in fractions of a pitch class; none: estimated per clip
    /// (`librosa.estimate_tuning`, as `chroma_stft` does by default).
    pub tuning: Option<f64>,
}

impl Default for Params {
    fn default() -> Params {
        Params { n_fft: 2048, hop: 512, n_mels: 128, n_mfcc: 20, top_db: 80.0, roll_percent: 0.85, tuning: None }
    }
}

/// A clip's features, one column per frame; matrices are row-major (`rows x frames`).
#[derive(Debug, Clone, Default)]
pub struct Features {
    pub frames: usize,
    /// `n_fft / 2 + 1` x frames.
    pub power: Vec<f64>,
    /// `n_mels` x frames.
    pub mel: Vec<f64>,
    /// `n_mfcc` x frames.
    pub mfcc: Vec<f64>,
    /// 12 x frames.
    pub chroma: Vec<f64>,
    /// The tuning chroma used.
    pub tuning: f64,
    pub centroid: Vec<f64>,
    pub rolloff: Vec<f64>,
    pub zcr: Vec<f64>,
    pub rms: Vec<f64>,
}

impl Features {
    /// Row `r` of a `rows x frames` matrix.
    pub fn row<'a>(&self, m: &'a [f64], r: usize) -> &'a [f64] {
        &m[r * self.frames..(r + 1) * self.frames]
    }
}

/// Feature extraction for one sample rate; reuse it across clips (the FFT plan and the filter
/// banks are built once).
pub struct Extractor {
    sr: f64,
    p: Params,
    window: Vec<f64>,
    fft: Arc<dyn Fft<f64>>,
    /// Per mel band: first FFT bin and weights.
    mel: Vec<(usize, Vec<f64>)>,
    /// `n_mfcc x n_mels`.
    dct: Vec<f64>,
    /// `12 x bins` per tuning met so far (by its bits; estimates are whole hundredths).
    chroma: std::collections::HashMap<u64, Vec<f64>>,
    freqs: Vec<f64>,
    buf: Vec<Complex<f64>>,
    scratch: Vec<Complex<f64>>,
}

fn hz_to_mel(f: f64) -> f64 {
    // Slaney: linear below 1 kHz, logarithmic above.
    let (f_sp, min_log_hz) = (200.0 / 3.0, 1000.0);
    let min_log_mel = min_log_hz / f_sp;
    let logstep = 6.4f64.ln() / 27.0;
    if f >= min_log_hz {
        min_log_mel + (f / min_log_hz).ln() / logstep
    } else {
        f / f_sp
    }
}

fn mel_to_hz(m: f64) -> f64 {
    let (f_sp, min_log_hz) = (200.0 / 3.0, 1000.0);
    let min_log_mel = min_log_hz / f_sp;
    let logstep = 6.4f64.ln() / 27.0;
    if m >= min_log_mel {
        min_log_hz * (logstep * (m - min_log_mel)).exp()
    } else {
        f_sp * m
    }
}

impl Extractor {
    pub fn new(sample_rate: u32, p: Params) -> Extractor {
        let sr = sample_rate as f64;
        let n = p.n_fft;
        let bins = n / 2 + 1;
        let window = (0..n).map(|i| 0.5 - 0.5 * (2.0 * std::f64::consts::PI * i as f64 / n as f64).cos()).collect();
        let fft = FftPlanner::new().plan_fft_forward(n);
        let freqs: Vec<f64> = (0..bins).map(|k| k as f64 * sr / n as f64).collect();
        // Mel filter bank: triangles between consecutive mel frequencies, Slaney-normalised.
        let (lo, hi) = (hz_to_mel(0.0), hz_to_mel(sr / 2.0));
        let mel_f: Vec<f64> = (0..p.n_mels + 2).map(|i| mel_to_hz(lo + (hi - lo) * i as f64 / (p.n_mels + 1) as f64)).collect();
        let mel = (0..p.n_mels)
            .map(|m| {
                let enorm = 2.0 / (mel_f[m + 2] - mel_f[m]);
                let w: Vec<f64> = freqs
                    .iter()
                    .map(|f| {
                        let lower = (f - mel_f[m]) / (mel_f[m + 1] - mel_f[m]);
                        let upper = (mel_f[m + 2] - f) / (mel_f[m + 2] - mel_f[m + 1]);
                        // librosa keeps its filter bank in float32.
                        (lower.min(upper).max(0.0) * enorm) as f32 as f64
                    })
                    .collect();
                let first = w.iter().position(|v| *v > 0.0).unwrap_or(w.len());
                let last = w.iter().rposition(|v| *v > 0.0).map_or(first, |l| l + 1);
                (first, w[first..last].to_vec())
            })
            .collect();
        let nm = p.n_mels as f64;
        let dct = (0..p.n_mfcc)
            .flat_map(|k| {
                (0..p.n_mels).map(move |i| {
                    let scale = if k == 0 { (1.0 / nm).sqrt() } else { (2.0 / nm).sqrt() };
                    scale * (std::f64::consts::PI * k as f64 * (2 * i + 1) as f64 / (2.0 * nm)).cos()
                })
            })
            .collect();
        Extractor { chroma: Default::default(), sr, p, window, fft, mel, dct, freqs, buf: vec![Complex::default(); n], scratch: Vec::new() }
    }

    pub fn sample_rate(&self) -> f64 {
        self.sr
    }

    /// Number of frames for `samples` samples.
    pub fn frames(&self, samples: usize) -> usize {
        1 + samples / self.p.hop
    }

    /// Every feature of a clip (samples in [-1, 1]).
    pub fn extract(&mut self, y: &[f32]) -> Features {
        let (n, hop) = (self.p.n_fft, self.p.hop);
        let bins = n / 2 + 1;
        let frames = self.frames(y.len());
        let half = (n / 2) as isize;
        let mut f = Features { frames, power: vec![0.0; bins * frames], ..Features::default() };
        // Frame-major copies (`frames x bins`) for the per-frame sums below: read down the
        // bins-major arrays, each sum would stride by `frames` through memory. The sums add in
        // the same order either way.
        let mut spectrum = vec![0.0; frames * bins];
        let mut magnitude = vec![0.0; frames * bins];
        self.scratch.resize(self.fft.get_inplace_scratch_len(), Complex::default());
        for t in 0..frames {
            for (i, c) in self.buf.iter_mut().enumerate() {
                // Centred frames over zero padding.
                let at = (t * hop) as isize + i as isize - half;
                let v = if at >= 0 && (at as usize) < y.len() { y[at as usize] as f64 } else { 0.0 };
                *c = Complex::new(v * self.window[i], 0.0);
            }
            self.fft.process_with_scratch(&mut self.buf, &mut self.scratch);
            for k in 0..bins {
                let p = self.buf[k].norm_sqr();
                f.power[k * frames + t] = p;
                spectrum[t * bins + k] = p;
                magnitude[t * bins + k] = p.sqrt();
            }
        }
        // Mel power, then MFCC from its dB values (floored top_db below the clip's peak).
        f.mel = vec![0.0; self.p.n_mels * frames];
        for (m, (first, w)) in self.mel.iter().enumerate() {
            for (t, frame) in spectrum.chunks_exact(bins).enumerate() {
                f.mel[m * frames + t] = w.iter().zip(&frame[*first..]).map(|(w, p)| w * p).sum();
            }
        }
        let db: Vec<f64> = f.mel.iter().map(|v| 10.0 * v.max(1e-10).log10()).collect();
        let floor = db.iter().copied().fold(f64::MIN, f64::max) - self.p.top_db;
        // Frame-major (`frames x n_mels`), as above.
        let n_mels = self.p.n_mels;
        let mut db_frames = vec![0.0; frames * n_mels];
        for (i, band) in db.chunks_exact(frames).enumerate() {
            for (t, v) in band.iter().enumerate() {
                db_frames[t * n_mels + i] = v.max(floor);
            }
        }
        f.mfcc = vec![0.0; self.p.n_mfcc * frames];
        for k in 0..self.p.n_mfcc {
            let basis = &self.dct[k * n_mels..(k + 1) * n_mels];
            for (t, frame) in db_frames.chunks_exact(n_mels).enumerate() {
                f.mfcc[k * frames + t] = basis.iter().zip(frame).map(|(b, v)| b * v).sum();
            }
        }
        // Chroma: the filter bank for the clip's tuning on power, each frame scaled to a maximum
        // of 1.
        f.tuning = self.p.tuning.unwrap_or_else(|| estimate_tuning(&f.power, frames, self.sr, n));
        let (sr, key) = (self.sr, f.tuning.to_bits());
        let bank = self.chroma.entry(key).or_insert_with(|| chroma_filters(sr, n, f.tuning));
        f.chroma = vec![0.0; 12 * frames];
        for (t, frame) in spectrum.chunks_exact(bins).enumerate() {
            let mut max = 0.0f64;
            for c in 0..12 {
                let w = &bank[c * bins..(c + 1) * bins];
                let v: f64 = w.iter().zip(frame).map(|(w, p)| w * p).sum();
                f.chroma[c * frames + t] = v;
                max = max.max(v.abs());
            }
            if max > f64::MIN_POSITIVE {
                (0..12).for_each(|c| f.chroma[c * frames + t] /= max);
            }
        }
        // Centroid and rolloff on magnitude.
        f.centroid = vec![0.0; frames];
        f.rolloff = vec![0.0; frames];
        for (t, column) in magnitude.chunks_exact(bins).enumerate() {
            let column = column.iter().copied();
            let total: f64 = column.clone().sum();
            if total > f64::MIN_POSITIVE {
                f.centroid[t] = column.clone().zip(&self.freqs).map(|(s, fr)| s * fr).sum::<f64>() / total;
            }
            let threshold = self.p.roll_percent * total;
            let mut cumulative = 0.0;
            for (k, s) in column.enumerate() {
                cumulative += s;
                if cumulative >= threshold {
                    f.rolloff[t] = self.freqs[k];
                    break;
                }
            }
        }
        // Zero-crossing rate over edge-padded frames; RMS over zero-padded ones. Frames overlap
        // (each sample is in n / hop of them), so the per-sample work is done once: `changes[j]`
        // counts the samples before position `first + j` that differ in sign from the one
        // before them, and a frame's crossings are a difference of two counts.
        f.zcr = vec![0.0; frames];
        f.rms = vec![0.0; frames];
        let edge = |at: isize| -> f32 {
            if y.is_empty() {
                0.0
            } else {
                y[at.clamp(0, y.len() as isize - 1) as usize]
            }
        };
        // librosa treats values within 1e-10 of zero as zero, and zero as positive.
        let negative = |v: f32| v.abs() > 1e-10 && v.is_sign_negative();
        let first = -half;
        let end = ((frames - 1) * hop + n) as isize - half;
        let mut changes = Vec::with_capacity((end - first) as usize + 1);
        let (mut count, mut previous) = (0u32, negative(edge(first)));
        changes.push(0);
        for at in first..end {
            let sign = negative(edge(at));
            count += (sign != previous) as u32;
            previous = sign;
            changes.push(count);
        }
        for t in 0..frames {
            let start = (t * hop) as isize - half;
            // Sample i of the frame (i >= 1) against sample i - 1.
            let at = |p: isize| changes[(p - first) as usize];
            let crossings = at(start + n as isize) - at(start + 1);
            let inside = &y[start.clamp(0, y.len() as isize) as usize..(start + n as isize).clamp(0, y.len() as isize) as usize];
            f.zcr[t] = crossings as f64 / n as f64;
            f.rms[t] = (sum_of_squares(inside) / n as f64).sqrt();
        }
        f
    }
}

/// The sum of the squares of `v` in f64, in eight running sums (so it vectorizes; numpy, which
/// librosa uses, sums pairwise, so neither order is its exactly).
fn sum_of_squares(v: &[f32]) -> f64 {
    let mut sums = [0.0f64; 8];
    let chunks = v.chunks_exact(8);
    let rest: f64 = chunks.remainder().iter().map(|x| (*x as f64) * (*x as f64)).sum();
    for chunk in chunks {
        for (s, x) in sums.iter_mut().zip(chunk) {
            *s += (*x as f64) * (*x as f64);
        }
    }
    sums.iter().sum::<f64>() + rest
}

/// librosa's `estimate_tuning` as `chroma_stft` calls it, on the power spectrogram
/// (`bins x frames`): `piptrack`'s peaks (local maxima between 150 Hz and 4 kHz of each frame's
/// bins above a tenth of its maximum, refined by parabolic interpolation), those at or above
/// the median peak magnitude, and the most common deviation of their pitch from the equal-
/// tempered scale, in hundredths of a pitch class in [-0.5, 0.5). librosa runs this in float32,
/// and so does this (a peak or a histogram bin decided otherwise would move the estimate).
pub fn estimate_tuning(power: &[f64], frames: usize, sr: f64, n_fft: usize) -> f64 {
    let bins = n_fft / 2 + 1;
    let (fmin, fmax) = (150.0, 4000.0f64.min(sr / 2.0));
    let mut peaks: Vec<(f32, f32)> = Vec::new();
    for t in 0..frames {
        let s = |k: usize| power[k * frames + t] as f32;
        let floor = 0.1 * (0..bins).map(s).fold(0.0, f32::max);
        let gated = |k: usize| if s(k) > floor { s(k) } else { 0.0 };
        for k in 1..bins {
            let f = k as f64 * sr / n_fft as f64;
            let last = k == bins - 1;
            let local_max = gated(k) > gated(k - 1) && (last || gated(k) >= gated(k + 1));
            if !(fmin <= f && f < fmax && local_max) {
                continue;
            }
            let (shift, slope) = if last {
                (0.0, s(k) - s(k - 1))
            } else {
                // As librosa's numba stencil types it: float32 sums, float64 from the integer
                // constants on.
                let a = (s(k + 1) + s(k - 1)) as f64 - 2.0 * s(k) as f64;
                let b = (s(k + 1) - s(k - 1)) as f64 / 2.0;
                (if b.abs() >= a.abs() { 0.0 } else { (-b / a) as f32 }, (s(k + 1) - s(k - 1)) / 2.0)
            };
            let pitch = ((k as f64 + shift as f64) * sr / n_fft as f64) as f32;
            peaks.push((pitch, s(k) + 0.5 * slope * shift));
        }
    }
    if peaks.is_empty() {
        return 0.0;
    }
    let mut magnitudes: Vec<f32> = peaks.iter().map(|p| p.1).collect();
    magnitudes.sort_by(f32::total_cmp);
    let m = magnitudes.len();
    let median = if m % 2 == 1 { magnitudes[m / 2] } else { (magnitudes[m / 2 - 1] + magnitudes[m / 2]) / 2.0 };
    // The deviation histogram: 100 bins over [-0.5, 0.5], edges as numpy's linspace makes them.
    let edges: Vec<f64> = (0..=100).map(|i| if i == 100 { 0.5 } else { -0.5 + i as f64 * 0.01 }).collect();
    let mut counts = [0u32; 100];
    for (pitch, _) in peaks.iter().filter(|(p, mag)| *mag >= median && *p > 0.0) {
        let mut residual = (12.0 * (pitch / 27.5).log2()).rem_euclid(1.0);
        if residual >= 0.5 {
            residual -= 1.0;
        }
        let r = residual as f64;
        let bin = edges.partition_point(|e| *e <= r).clamp(1, 100) - 1;
        counts[bin] += 1;
    }
    let best = counts.iter().enumerate().fold(0, |best, (i, c)| if *c > counts[best] { i } else { best });
    edges[best]
}

/// librosa's chroma filter bank (`filters.chroma`): Gaussian bumps around each pitch class (A
/// at 440 Hz shifted by `tuning` pitch classes), column-normalised, weighted towards octave 5,
/// starting at C; `12 x (n_fft / 2 + 1)`.
fn chroma_filters(sr: f64, n_fft: usize, tuning: f64) -> Vec<f64> {
    let n_chroma = 12.0f64;
    let bins = n_fft / 2 + 1;
    let a440 = 440.0 * 2f64.powf(tuning / n_chroma);
    // Frequency of each FFT bin in chroma bins (12 per octave); bin 0 is made 1.5 octaves below bin 1.
    let mut frqbins: Vec<f64> = (1..n_fft).map(|k| n_chroma * (k as f64 * sr / n_fft as f64 / (a440 / 16.0)).log2()).collect();
    frqbins.insert(0, frqbins[0] - 1.5 * n_chroma);
    let mut width: Vec<f64> = frqbins.windows(2).map(|w| (w[1] - w[0]).max(1.0)).collect();
    width.push(1.0);
    let half = (n_chroma / 2.0).round();
    let mut wts = vec![0.0f64; 12 * n_fft];
    for (k, (fb, bw)) in frqbins.iter().zip(&width).enumerate() {
        for c in 0..12 {
            let d = (fb - c as f64 + half + 10.0 * n_chroma).rem_euclid(n_chroma) - half;
            wts[c * n_fft + k] = (-0.5 * (2.0 * d / bw).powi(2)).exp();
        }
    }
    for k in 0..n_fft {
        let norm = (0..12).map(|c| wts[c * n_fft + k].powi(2)).sum::<f64>().sqrt();
        let octave = (-0.5 * ((frqbins[k] / n_chroma - 5.0) / 2.0).powi(2)).exp();
        for c in 0..12 {
            let w = &mut wts[c * n_fft + k];
            if norm > f64::MIN_POSITIVE {
                *w /= norm;
            }
            *w *= octave;
        }
    }
    // Start at C (roll by -3 rows), keep the non-aliased bins, in float32 as librosa does.
    let mut out = vec![0.0; 12 * bins];
    for c in 0..12 {
        let from = (c + 3) % 12;
        for k in 0..bins {
            out[c * bins + k] = wts[from * n_fft + k] as f32 as f64;
        }
    }
    out
}

/// Why a clip could not be read.
#[derive(Debug, thiserror::Error)]
pub enum AudioError {
    #[error("cannot read {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("not base64: {0}")]
    Base64(#[from] base64::DecodeError),
    #[error("{0} bytes of 16-bit PCM: an odd count")]
    OddPcm(usize),
    #[error("not a WAV, FLAC, Ogg Vorbis or MP3 file (it starts with {0})")]
    UnknownFormat(String),
    #[error("{container} file: {message}")]
    Decode { container: Container, message: String },
    #[error("{0} file without an audio track")]
    NoTrack(Container),
    #[error("{0} file without a sample rate")]
    NoSampleRate(Container),
    #[error("{0} file whose sample rate changes from {1} Hz to {2} Hz")]
    RateChanges(Container, u32, u32),
    /// librosa refuses an empty signal too (its zero-crossing rate cannot pad it).
    #[error("the clip has no samples")]
    Empty,
}

/// The containers an audio step reads, told apart by their first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Container {
    Wav,
    Flac,
    Ogg,
    Mp3,
}

impl std::fmt::Display for Container {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Container::Wav => "WAV",
            Container::Flac => "FLAC",
            Container::Ogg => "Ogg",
            Container::Mp3 => "MP3",
        })
    }
}

/// The length of the ID3v2 tags an MP3 file may start with (header, syncsafe size, footer).
fn id3v2_len(bytes: &[u8]) -> usize {
    let mut at = 0;
    while let Some(h) = bytes.get(at..at + 10).filter(|h| h.starts_with(b"ID3")) {
        let size = h[6..10].iter().fold(0usize, |n, b| (n << 7) | (*b & 0x7f) as usize);
        at += 10 + size + if h[5] & 0x10 != 0 { 10 } else { 0 };
    }
    at.min(bytes.len())
}

/// The container of a file, from its first bytes (never its name: base64 uploads have none).
pub fn sniff(bytes: &[u8]) -> Option<Container> {
    // An MPEG audio frame header: 11 sync bits and a layer other than the reserved 00 (which
    // AAC's ADTS headers use).
    let mpeg_sync = |b: &[u8]| b.len() >= 2 && b[0] == 0xff && b[1] & 0xe0 == 0xe0 && b[1] & 0x06 != 0;
    if bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WAVE" {
        Some(Container::Wav)
    } else if bytes.starts_with(b"fLaC") {
        Some(Container::Flac)
    } else if bytes.starts_with(b"OggS") {
        Some(Container::Ogg)
    } else if bytes.starts_with(b"ID3") || mpeg_sync(bytes) {
        Some(Container::Mp3)
    } else {
        None
    }
}

/// Reads a WAV (8-bit unsigned, 16-, 24- and 32-bit integer, 32- and 64-bit float PCM, plain or
/// WAVE_FORMAT_EXTENSIBLE), FLAC, Ogg Vorbis or MP3 file as `librosa.load(path, sr=None)`
/// returns it: at its own sample rate, as float32 in [-1, 1) (integer PCM divided by
/// 2^(bits - 1), 8-bit PCM less 128 first, as libsndfile does), and with several channels
/// averaged into one (`librosa.to_mono`: their float32 sum in channel order, divided by their
/// count). MP3 encoder delay and padding are dropped when the file says how long they are (a
/// LAME tag), as libsndfile's mpg123 does. Decoding is symphonia's.
pub fn read_audio(bytes: Vec<u8>) -> Result<(u32, Vec<f32>), AudioError> {
    use symphonia::core::codecs::audio::AudioDecoderOptions;
    use symphonia::core::codecs::CodecParameters;
    use symphonia::core::errors::Error as SymphoniaError;
    use symphonia::core::formats::{FormatOptions, FormatReader, TrackType};
    use symphonia::core::io::MediaSourceStream;
    use symphonia::default::formats::{FlacReader, MpaReader, OggReader, WavReader};

    let container = sniff(&bytes).ok_or_else(|| {
        let head: Vec<String> = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect();
        AudioError::UnknownFormat(if head.is_empty() { "nothing: it is empty".into() } else { format!("bytes {}", head.join(" ")) })
    })?;
    let failed = |e: SymphoniaError| AudioError::Decode { container, message: e.to_string() };
    let bytes = match container {
        Container::Mp3 => bytes[id3v2_len(&bytes)..].to_vec(),
        _ => bytes,
    };
    let mss = MediaSourceStream::new(Box::new(std::io::Cursor::new(bytes)), Default::default());
    let opts = FormatOptions::default();
    let mut reader: Box<dyn FormatReader> = match container {
        Container::Wav => Box::new(WavReader::try_new(mss, opts).map_err(failed)?),
        Container::Flac => Box::new(FlacReader::try_new(mss, opts).map_err(failed)?),
        Container::Ogg => Box::new(OggReader::try_new(mss, opts).map_err(failed)?),
        Container::Mp3 => Box::new(MpaReader::try_new(mss, opts).map_err(failed)?),
    };
    let track = reader.default_track(TrackType::Audio).ok_or(AudioError::NoTrack(container))?;
    let (id, params) = match &track.codec_params {
        Some(CodecParameters::Audio(params)) => (track.id, params.clone()),
        _ => return Err(AudioError::NoTrack(container)),
    };
    // Gapless (the default): the decoder drops the delay and padding the container states.
    let mut decoder = symphonia::default::get_codecs().make_audio_decoder(&params, &AudioDecoderOptions::default()).map_err(failed)?;
    let mut rate = params.sample_rate.filter(|r| *r > 0);
    let (mut mono, mut interleaved) = (Vec::new(), Vec::new());
    loop {
        let packet = match reader.next_packet() {
            Ok(Some(packet)) => packet,
            Ok(None) => break,
            // A file cut short: what came before the cut, as libsndfile reads it.
            Err(SymphoniaError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(failed(e)),
        };
        if packet.track_id != id {
            continue;
        }
        let decoded = decoder.decode(&packet).map_err(failed)?;
        match (rate, decoded.spec().rate()) {
            (_, 0) => {}
            (None, r) => rate = Some(r),
            (Some(a), b) if a != b => return Err(AudioError::RateChanges(container, a, b)),
            _ => {}
        }
        let channels = decoded.spec().channels().count().max(1);
        decoded.copy_to_vec_interleaved::<f32>(&mut interleaved);
        mix_down(&interleaved, channels, &mut mono);
    }
    let rate = rate.ok_or(AudioError::NoSampleRate(container))?;
    if mono.is_empty() {
        return Err(AudioError::Empty);
    }
    Ok((rate, mono))
}

/// Appends the frames of `interleaved` (`channels` samples each) to `mono`, averaged as
/// `librosa.to_mono` (numpy's float32 mean over the channels) does: the sum in float32 in channel
/// order, then divided by the channel count in float32. One channel is kept as it is.
pub fn mix_down(interleaved: &[f32], channels: usize, mono: &mut Vec<f32>) {
    if channels <= 1 {
        mono.extend_from_slice(interleaved);
        return;
    }
    let n = channels as f32;
    mono.extend(interleaved.chunks_exact(channels).map(|frame| frame.iter().fold(0.0f32, |sum, s| sum + s) / n));
}

/// Reads a clip file of any format [`read_audio`] reads (the name is from when only 16-bit WAV
/// was read).
pub fn read_wav(bytes: &[u8]) -> Result<(u32, Vec<f32>), AudioError> {
    read_audio(bytes.to_vec())
}

/// How a row carries its clip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Clip {
    /// A path to an audio file (WAV, FLAC, Ogg Vorbis or MP3, told apart by its bytes).
    Path,
    /// An audio file, base64.
    Base64,
    /// Raw 16-bit little-endian mono PCM at the given rate, base64.
    Pcm16Base64(u32),
}

/// A clip's sample rate and samples in [-1, 1) (channels averaged), or what is wrong with it;
/// a clip without samples is an error, as it is to librosa.
pub fn decode_clip(clip: Clip, text: &str) -> Result<(u32, Vec<f32>), AudioError> {
    use base64::Engine as _;
    let b64 = |t: &str| base64::engine::general_purpose::STANDARD.decode(t.trim());
    match clip {
        Clip::Path => read_audio(std::fs::read(text).map_err(|source| AudioError::Io { path: text.to_string(), source })?),
        Clip::Base64 => read_audio(b64(text)?),
        Clip::Pcm16Base64(rate) => {
            let bytes = b64(text)?;
            if bytes.len() % 2 != 0 {
                return Err(AudioError::OddPcm(bytes.len()));
            }
            if bytes.is_empty() {
                return Err(AudioError::Empty);
            }
            Ok((rate, bytes.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]]) as f32 / 32768.0).collect()))
        }
    }
}

/// A clip's summary: the mean over frames of RMS, zero-crossing rate, centroid, rolloff, each
/// MFCC and each chroma bin.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    pub rms: f64,
    pub zcr: f64,
    pub centroid: f64,
    pub rolloff: f64,
    pub mfcc: Vec<f64>,
    pub chroma: Vec<f64>,
}

impl Features {
    pub fn summary(&self) -> Summary {
        let mean = |v: &[f64]| if v.is_empty() { 0.0 } else { v.iter().sum::<f64>() / v.len() as f64 };
        let rows = |m: &[f64]| (0..m.len() / self.frames.max(1)).map(|r| mean(self.row(m, r))).collect();
        Summary {
            rms: mean(&self.rms),
            zcr: mean(&self.zcr),
            centroid: mean(&self.centroid),
            rolloff: mean(&self.rolloff),
            mfcc: rows(&self.mfcc),
            chroma: rows(&self.chroma),
        }
    }
}
