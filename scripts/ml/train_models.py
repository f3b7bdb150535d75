"""Trains the example models on data generated here (fixed seeds, so the models are
reproducible) and writes each as an upload bundle: <out>/<name>/<version>/model.onnx and
meta.json (features, class names, training metrics, training distribution per feature for drift
monitoring). scripts/ml/train.sh uploads the bundles into the examples' registry, jobs/models.

Also writes the ONNX models of the native scorers' parity tests (ml-ops/tests/models) and the
churn example's events (jobs/data/user-activity.jsonl). docs/ml.md describes each model.
"""

import json
import os
import sys
import time

import numpy as np
from skl2onnx import to_onnx
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, roc_auc_score
from sklearn.model_selection import train_test_split

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
OUT = sys.argv[1]
OPSETS = {"": 17, "ai.onnx.ml": 3}

# Features of the churn model: one user's activity over a day, as the churn-risk job's window
# computes them.
CHURN_FEATURES = ["plays", "skips", "likes", "failed_payments", "listen_minutes"]


def churn_data(n, rng):
    """Users with a latent engagement; churners play less, skip more and fail payments."""
    engaged = rng.gamma(2.0, 1.0, n)
    plays = rng.poisson(3 + 12 * engaged)
    skips = rng.poisson(1 + 4 * (1 / (0.5 + engaged)))
    likes = rng.poisson(0.3 + 1.5 * engaged)
    failed = rng.poisson(0.05 + 0.6 * (engaged < 0.6))
    minutes = plays * rng.uniform(1.5, 4.0, n)
    logit = 1.5 - 1.2 * engaged + 0.25 * skips + 1.4 * failed - 0.2 * likes
    churned = rng.random(n) < 1 / (1 + np.exp(-logit))
    x = np.column_stack([plays, skips, likes, failed, minutes]).astype(np.float32)
    return x, churned.astype(np.int64)


def training_distribution(x, names):
    """Decile edges and the share of training rows per bin, per feature (for PSI)."""
    out = {}
    for i, name in enumerate(names):
        edges = sorted(set(np.quantile(x[:, i], np.linspace(0.1, 0.9, 9)).round(6).tolist()))
        counts = np.histogram(x[:, i], bins=[-np.inf] + edges + [np.inf])[0]
        out[name] = {"edges": edges, "fractions": (counts / counts.sum()).round(6).tolist()}
    return out


def save(name, version, model, x_train, x_test, y_test, features, description, extra_metrics=None):
    onx = to_onnx(model, x_train[:1], options={id(model): {"zipmap": False}}, target_opset=OPSETS)
    d = os.path.join(OUT, name, str(version))
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "model.onnx"), "wb") as f:
        f.write(onx.SerializeToString())
    p = model.predict_proba(x_test)[:, 1]
    metrics = {"accuracy": round(float(accuracy_score(y_test, p > 0.5)), 4), "auc": round(float(roc_auc_score(y_test, p)), 4)}
    metrics.update(extra_metrics or {})
    meta = {
        "name": name,
        "version": version,
        "description": description,
        "features": features,
        "class_names": ["stays", "churns"],
        "training": {
            "script": "scripts/ml/train_models.py",
            "rows": int(len(x_train)),
            "metrics": metrics,
            "distribution": training_distribution(x_train, features),
        },
    }
    with open(os.path.join(d, "meta.json"), "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")
    print(f"{name} v{version}: {metrics}")


def parity_models(out):
    """Models that cover each native scorer path, for the parity tests against ONNX Runtime."""
    from sklearn.ensemble import GradientBoostingRegressor, RandomForestClassifier
    from sklearn.linear_model import LinearRegression

    rng = np.random.default_rng(11)
    x = rng.normal(size=(3000, 6)).astype(np.float32)
    y3 = (x[:, 0] + x[:, 1] * 0.5 > 0).astype(np.int64) + (x[:, 2] > 0.8).astype(np.int64)
    yr = (x[:, 0] * 2 - x[:, 3] + rng.normal(scale=0.1, size=3000)).astype(np.float32)
    models = {
        "logreg-multiclass": LogisticRegression(max_iter=1000).fit(x, y3),
        "forest-binary": RandomForestClassifier(n_estimators=20, max_depth=5, random_state=1).fit(x, y3 > 0),
        "forest-multiclass": RandomForestClassifier(n_estimators=20, max_depth=5, random_state=1).fit(x, y3),
        "boosting-multiclass": GradientBoostingClassifier(n_estimators=30, max_depth=3, random_state=1).fit(x, y3),
        "linear-regression": LinearRegression().fit(x, yr),
        "boosting-regression": GradientBoostingRegressor(n_estimators=50, max_depth=3, random_state=1).fit(x, yr),
    }
    os.makedirs(out, exist_ok=True)
    for name, model in models.items():
        options = {id(model): {"zipmap": False}} if hasattr(model, "predict_proba") else None
        onx = to_onnx(model, x[:1], options=options, target_opset=OPSETS)
        with open(os.path.join(out, f"{name}.onnx"), "wb") as f:
            f.write(onx.SerializeToString())


def activity_events(path):
    """One day of events for 400 users of two tenants, drawn like the training data: the
    churn-risk job windows them per user and day and scores each user."""
    rng = np.random.default_rng(23)
    x, _ = churn_data(400, rng)
    day = 1772323200  # 2026-03-01T00:00:00Z
    lines = []
    for u, (plays, skips, likes, failed, minutes) in enumerate(x):
        tenant = "acme" if u % 3 else "globex"
        kinds = ["play"] * int(plays) + ["skip"] * int(skips) + ["like"] * int(likes) + ["payment_failed"] * int(failed)
        per_play = int(minutes * 60000 / max(plays, 1))
        for k in kinds:
            ts = day + int(rng.integers(0, 86400))
            duration = per_play if k == "play" else 0
            lines.append((ts, u, f'{{"tenant_id": "{tenant}", "user_id": "u{u}", "event_type": "{k}", "duration_ms": {duration}, '
                              f'"ts": "{time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))}"}}'))
    lines.sort()
    with open(path, "w") as f:
        for _, _, line in lines:
            f.write(line + "\n")


# Features of the genre model: the summaries an audio step adds (docs/ml.md), as named with
# `as = "audio"`.
GENRE_FEATURES = ["audio_rms", "audio_zcr", "audio_centroid", "audio_rolloff"] + [f"audio_mfcc_{i}" for i in range(13)]
GENRES = ["ambient", "rock", "electronic", "classical"]
GENRE_SR = 8000


def genre_clip(genre, rng, seconds=1.0):
    """A synthetic clip with a genre's character: ambient = soft low drones, rock = loud
    distorted power chords with noise, electronic = square-wave bass and bright hi-hat clicks,
    classical = a clean triad with overtones."""
    sr = GENRE_SR
    t = np.arange(int(sr * seconds)) / sr
    root = rng.uniform(90, 180)
    if genre == "ambient":
        y = sum(rng.uniform(0.05, 0.15) * np.sin(2 * np.pi * root * k * t + rng.uniform(0, 6)) for k in (1, 1.5, 2))
        y *= 0.6 + 0.4 * np.sin(2 * np.pi * rng.uniform(0.2, 0.8) * t)
    elif genre == "rock":
        y = np.tanh(4 * sum(np.sin(2 * np.pi * root * k * t) for k in (1, 1.5, 2))) * 0.5
        y += rng.normal(0, 0.08, t.size)
    elif genre == "electronic":
        y = 0.3 * np.sign(np.sin(2 * np.pi * root / 2 * t))
        clicks = (np.arange(t.size) % int(sr / rng.uniform(6, 10))) < 40
        y += clicks * rng.normal(0, 0.4, t.size)
    else:
        y = sum(0.15 / k * np.sin(2 * np.pi * f * k * t) for f in (root * 2, root * 2.52, root * 3) for k in (1, 2, 3))
        y *= np.minimum(1, t * 8)
    return np.clip(y * rng.uniform(0.7, 1.2), -1, 1).astype(np.float32)


def clip_features(y):
    """What an audio step computes for a clip (librosa's defaults, means over frames)."""
    import librosa

    y = (np.round(y * 32767) / 32768).astype(np.float32)  # as read back from 16-bit PCM
    sr = GENRE_SR
    mean = lambda a: a.mean(axis=-1)
    mfcc = mean(librosa.feature.mfcc(y=y, sr=sr))
    return np.concatenate([
        [mean(librosa.feature.rms(y=y)[0]), mean(librosa.feature.zero_crossing_rate(y)[0]),
         mean(librosa.feature.spectral_centroid(y=y, sr=sr)[0]), mean(librosa.feature.spectral_rolloff(y=y, sr=sr)[0])],
        mfcc[:13],
    ]).astype(np.float32)


def genre_model(out, uploads):
    """A genre classifier over audio features of generated clips; also writes example uploads
    (WAV files) and the events that announce them."""
    import soundfile as sf
    from sklearn.ensemble import RandomForestClassifier

    rng = np.random.default_rng(31)
    xs, ys = [], []
    for i in range(600):
        g = i % len(GENRES)
        xs.append(clip_features(genre_clip(GENRES[g], rng)))
        ys.append(g)
    x, y = np.array(xs), np.array(ys, dtype=np.int64)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=7)
    model = RandomForestClassifier(n_estimators=50, max_depth=8, random_state=7).fit(x_train, y_train)
    onx = to_onnx(model, x_train[:1], options={id(model): {"zipmap": False}}, target_opset=OPSETS)
    d = os.path.join(out, "genre", "1")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "model.onnx"), "wb") as f:
        f.write(onx.SerializeToString())
    metrics = {"accuracy": round(float(accuracy_score(y_test, model.predict(x_test))), 4)}
    meta = {
        "description": "Genre of an uploaded clip from its audio features (random forest, 50 trees)",
        "features": GENRE_FEATURES,
        "class_names": GENRES,
        "training": {"script": "scripts/ml/train_models.py", "rows": int(len(x_train)), "metrics": metrics,
                     "distribution": training_distribution(x_train, GENRE_FEATURES)},
    }
    with open(os.path.join(d, "meta.json"), "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")
    print(f"genre v1: {metrics}")
    # Example uploads: two clips per genre, new draws.
    os.makedirs(uploads, exist_ok=True)
    events = []
    for i in range(8):
        g = GENRES[i % len(GENRES)]
        name = f"upload-{i:02d}.wav"
        sf.write(os.path.join(uploads, name), genre_clip(g, rng), GENRE_SR, subtype="PCM_16")
        events.append({"tenant_id": "acme" if i % 2 else "globex", "upload_id": f"u{i:02d}", "artist_id": f"a{i % 3}",
                       "path": f"jobs/data/uploads/{name}", "expected_genre": g, "ts": f"2026-03-01T10:00:{i:02d}Z"})
    events.append({"tenant_id": "acme", "upload_id": "u99", "artist_id": "a1", "path": "jobs/data/uploads/missing.wav",
                   "expected_genre": "", "ts": "2026-03-01T10:00:30Z"})
    with open(os.path.join(ROOT, "jobs", "data", "audio-uploads.jsonl"), "w") as f:
        for e in events:
            f.write(json.dumps(e) + "\n")


def outlier_model(out):
    """Unusual accounts: an IsolationForest over the churn model's daily activity features of
    ordinary users (its label is -1 for an outlier, its score below 0 for one). It has no
    native scorer: jobs run it in ONNX Runtime."""
    from sklearn.ensemble import IsolationForest

    rng = np.random.default_rng(41)
    x, _ = churn_data(20_000, rng)
    model = IsolationForest(n_estimators=50, max_samples=128, contamination=0.01, random_state=7).fit(x)
    onx = to_onnx(model, x[:1], target_opset=OPSETS)
    d = os.path.join(out, "activity-outliers", "1")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "model.onnx"), "wb") as f:
        f.write(onx.SerializeToString())
    farmed = np.array([[400, 0, 0, 0, 1200]], dtype=np.float32)  # a stream farm's day
    metrics = {"outlier_share": round(float((model.predict(x) == -1).mean()), 4), "stream_farm_score": round(float(model.decision_function(farmed)[0]), 4)}
    meta = {
        "description": "Unusual daily activity of an account (IsolationForest, 50 trees): label -1 is an outlier",
        "features": CHURN_FEATURES,
        "training": {"script": "scripts/ml/train_models.py", "rows": int(len(x)), "metrics": metrics,
                     "distribution": training_distribution(x, CHURN_FEATURES)},
    }
    with open(os.path.join(d, "meta.json"), "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")
    print(f"activity-outliers v1: {metrics}")


def main():
    rng = np.random.default_rng(7)
    x, y = churn_data(40_000, rng)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=7)
    lr = LogisticRegression(max_iter=1000).fit(x_train, y_train)
    save("churn-risk", 1, lr, x_train, x_test, y_test, CHURN_FEATURES,
         "Churn risk of a user from one day of activity (logistic regression)")
    gb = GradientBoostingClassifier(n_estimators=100, max_depth=3, random_state=7).fit(x_train, y_train)
    save("churn-risk", 2, gb, x_train, x_test, y_test, CHURN_FEATURES,
         "Churn risk of a user from one day of activity (100-tree gradient boosting)")
    parity_models(os.path.join(ROOT, "ml-ops", "tests", "models"))
    activity_events(os.path.join(ROOT, "jobs", "data", "user-activity.jsonl"))
    genre_model(OUT, os.path.join(ROOT, "jobs", "data", "uploads"))
    outlier_model(OUT)


if __name__ == "__main__":
    main()
