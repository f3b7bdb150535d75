"""Reference audio features from librosa 0.11 for ml-ops/tests/audio.rs.

Signals: synthetic ones generated here (a 440 Hz sine, a chord, a chirp, white noise; 1 s at
22050 Hz) and a 3 s excerpt of Debian's asterisk-moh-opsound-wav (manolo_camp-morning_coffee.wav,
8 kHz mono 16-bit, CC-BY-SA 3.0), which scripts/ml/audio_reference.sh unpacks. Each signal is
written as 16-bit PCM WAV next to a JSON file of librosa's features with default parameters
(n_fft 2048, hop 512, center=True, 128 Slaney mel bands, 20 MFCCs; chroma with the tuning it
estimates, also written as `tuning`, and chroma at tuning 0 as `chroma_tuning0`).

In `OUT/formats`: the same short stereo clip (0.4 sin 440 Hz left, 0.3 sin 660 Hz right, 0.2 s)
in every container and sample format `librosa.load` reads through soundfile (WAV 8-bit unsigned,
16-, 24- and 32-bit integer, float32 with a third channel as WAVE_FORMAT_EXTENSIBLE, float64;
FLAC, Ogg Vorbis, MP3), written by soundfile (libsndfile), and beside each a JSON file of what
`librosa.load(path, sr=None)` returns (the channels averaged: `librosa.to_mono`): its sample
rate and length, the SHA-256 of its float32 samples, and the frame means an audio step outputs.
For the lossy formats the samples themselves are kept too (`<file>.f32`, little-endian float32),
so the test can measure how far another decoder is from libsndfile's. `empty.wav` has no samples.
"""

import hashlib
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


def summary(y, sr):
    """The frame means an audio step outputs, and the frames of RMS and centroid."""
    f = {
        "rms": librosa.feature.rms(y=y)[0],
        "zcr": librosa.feature.zero_crossing_rate(y)[0],
        "centroid": librosa.feature.spectral_centroid(y=y, sr=sr)[0],
        "rolloff": librosa.feature.spectral_rolloff(y=y, sr=sr)[0],
    }
    out = {k: float(v.mean()) for k, v in f.items()}
    out["mfcc"] = librosa.feature.mfcc(y=y, sr=sr).mean(axis=1).tolist()
    out["chroma"] = librosa.feature.chroma_stft(y=y, sr=sr).mean(axis=1).tolist()
    out["rms_frames"] = f["rms"].tolist()
    out["centroid_frames"] = f["centroid"].tolist()
    return out


def formats(out):
    """The stereo clip in every format librosa.load reads, and what librosa.load returns."""
    os.makedirs(out, exist_ok=True)
    clips = [
        # name, sample rate, channels, soundfile format, subtype, lossy
        ("stereo-u8.wav", 22050, 2, "WAV", "PCM_U8", False),
        ("stereo-pcm16.wav", 22050, 2, "WAV", "PCM_16", False),
        ("stereo-pcm24.wav", 22050, 2, "WAV", "PCM_24", False),
        ("stereo-pcm32.wav", 22050, 2, "WAV", "PCM_32", False),
        ("three-float32-extensible.wav", 22050, 3, "WAVEX", "FLOAT", False),
        ("mono-float64.wav", 16000, 1, "WAV", "DOUBLE", False),
        ("stereo.flac", 22050, 2, "FLAC", "PCM_24", False),
        ("stereo.ogg", 22050, 2, "OGG", "VORBIS", True),
        ("stereo.mp3", 44100, 2, "MP3", "MPEG_LAYER_III", True),
    ]
    for name, sr, channels, fmt, subtype, lossy in clips:
        t = np.arange(int(0.2 * sr)) / sr
        y = np.stack([0.4 * np.sin(2 * np.pi * 440 * t), 0.3 * np.sin(2 * np.pi * 660 * t), 0.2 * np.sin(2 * np.pi * 880 * t)][:channels], axis=1)
        path = os.path.join(out, name)
        sf.write(path, y if channels > 1 else y[:, 0], sr, format=fmt, subtype=subtype)
        loaded, loaded_sr = librosa.load(path, sr=None)
        ref = {
            "file": name,
            "sample_rate": int(loaded_sr),
            "channels": channels,
            "samples": len(loaded),
            "lossy": lossy,
            "sha256": hashlib.sha256(loaded.astype("<f4").tobytes()).hexdigest(),
        }
        ref.update(summary(loaded, loaded_sr))
        if lossy:
            loaded.astype("<f4").tofile(path + ".f32")
        with open(path + ".json", "w") as f:
            json.dump(ref, f)
    sf.write(os.path.join(out, "empty.wav"), np.zeros(0, dtype=np.int16), 22050, subtype="PCM_16")


def issue17_stereo(out):
    """Issue 17's stereo example (1 s at 22050 Hz, 0.4 sin 440 Hz left, 0.3 sin 660 Hz right) as
    16- and 24-bit integers (rounded half to even from the sine times 2^(bits - 1) - 1) and as
    float32: librosa's RMS and centroid means of the channels averaged and of the left channel
    alone. ml-ops/tests/audio.rs writes the same samples itself."""
    sr = 22050
    t = np.arange(sr) / sr
    y = np.stack([0.4 * np.sin(2 * np.pi * 440 * t), 0.3 * np.sin(2 * np.pi * 660 * t)], axis=1)
    ref = {}
    path = os.path.join(out, "issue17.wav")
    for name, data, subtype in [
        ("pcm16", np.round(y * 32767).astype(np.int16), "PCM_16"),
        # libsndfile writes an int32's top 24 bits.
        ("pcm24", np.round(y * 8388607).astype(np.int32) * 256, "PCM_24"),
        ("float32", y.astype(np.float32), "FLOAT"),
    ]:
        sf.write(path, data, sr, subtype=subtype)
        mono, _ = librosa.load(path, sr=None)
        left = sf.read(path, dtype="float32")[0][:, 0]
        ref[name] = {
            "rms": float(librosa.feature.rms(y=mono).mean()),
            "centroid": float(librosa.feature.spectral_centroid(y=mono, sr=sr).mean()),
            "rms_left": float(librosa.feature.rms(y=left).mean()),
            "centroid_left": float(librosa.feature.spectral_centroid(y=left, sr=sr).mean()),
        }
    os.remove(path)
    with open(os.path.join(out, "issue17-stereo.json"), "w") as f:
        json.dump(ref, f, indent=1)


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
    formats(os.path.join(OUT, "formats"))
    issue17_stereo(OUT)
    print(librosa.__version__, sf.__libsndfile_version__)


if __name__ == "__main__":
    main()
