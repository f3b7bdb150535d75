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


if __name__ == "__main__":
    main()
