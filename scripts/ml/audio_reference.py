"""Reference audio features from librosa 0.11 for ml-ops/tests/audio.rs.

Signals: synthetic ones generated here (a 440 Hz sine, a chord, a chirp, white noise; 1 s at
22050 Hz) and a 3 s excerpt of Debian's asterisk-moh-opsound-wav (manolo_camp-morning_coffee.wav,
8 kHz mono 16-bit, CC-BY-SA 3.0), which scripts/ml/audio_reference.sh unpacks. Each signal is
written as 16-bit PCM WAV next to a JSON file of librosa's features with default parameters
(n_fft 2048, hop 512, center=True, 128 Slaney mel bands, 20 MFCCs; chroma with the tuning it
estimates, also written as `tuning`, and chroma at tuning 0 as `chroma_tuning0`).
"""

import json
import os
import sys

import librosa
import numpy as np
import soundfile as sf

OUT = sys.argv[1]
CLIP = sys.argv[2] if len(sys.argv) > 2 else None


def pcm16(y):
    return np.round(np.clip(y, -1, 1) * 32767).astype(np.int16)


def features(y, sr):
    mel = librosa.feature.melspectrogram(y=y, sr=sr)
    return {
        "sample_rate": sr,
        "samples": len(y),
        "mel": mel.tolist(),
        "mfcc": librosa.feature.mfcc(y=y, sr=sr).tolist(),
        "chroma": librosa.feature.chroma_stft(y=y, sr=sr).tolist(),
        "chroma_tuning0": librosa.feature.chroma_stft(y=y, sr=sr, tuning=0.0).tolist(),
        # What chroma_stft estimates: on the power spectrogram.
        "tuning": float(librosa.estimate_tuning(S=np.abs(librosa.stft(y)) ** 2, sr=sr, bins_per_octave=12)),
        "centroid": librosa.feature.spectral_centroid(y=y, sr=sr)[0].tolist(),
        "rolloff": librosa.feature.spectral_rolloff(y=y, sr=sr)[0].tolist(),
        "zcr": librosa.feature.zero_crossing_rate(y)[0].tolist(),
        "rms": librosa.feature.rms(y=y)[0].tolist(),
    }


def write(name, y, sr):
    y16 = pcm16(y)
    sf.write(os.path.join(OUT, f"{name}.wav"), y16, sr, subtype="PCM_16")
    # The features of exactly what the WAV holds, as float in [-1, 1).
    y = y16.astype(np.float32) / 32768.0
    with open(os.path.join(OUT, f"{name}.json"), "w") as f:
        json.dump(features(y, sr), f)


def main():
    os.makedirs(OUT, exist_ok=True)
    sr = 22050
    t = np.arange(sr) / sr
    write("sine440", 0.5 * np.sin(2 * np.pi * 440 * t), sr)
    write("chord", sum(0.2 * np.sin(2 * np.pi * f * t) for f in (261.63, 329.63, 392.0)), sr)
    write("chirp", 0.5 * librosa.chirp(fmin=110, fmax=4000, sr=sr, duration=1.0), sr)
    write("noise", 0.3 * np.random.default_rng(5).standard_normal(sr), sr)
    if CLIP:
        y, clip_sr = sf.read(CLIP, dtype="float32")
        write("moh-excerpt", y[clip_sr * 10 : clip_sr * 13], clip_sr)
    print(librosa.__version__)


if __name__ == "__main__":
    main()
