#!/usr/bin/env bash
# Trains the example models and rebuilds the examples' model registry (jobs/models) from them.
# Makes a Python environment with scikit-learn and skl2onnx under /var/tmp (override with
# TENANTFLOW_ML_VENV). The models are deterministic; their provenance is in docs/ml.md.
set -euo pipefail
cd "$(dirname "$0")/../.."

. scripts/ml/venv.sh

bundles=$(mktemp -d)
trap 'rm -rf "$bundles"' EXIT
"$venv/bin/python" scripts/ml/train_models.py "$bundles"

cargo build --quiet --release --bin tenantflow
tf="${CARGO_TARGET_DIR:-$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')}/release/tenantflow"
rm -rf jobs/models
for model in "$bundles"/*/; do
  name=$(basename "$model")
  for version in $(ls "$model" | sort -n); do
    "$tf" model upload "$name" "$model/$version/model.onnx" --meta "$model/$version/meta.json" --registry jobs/models --output json >/dev/null
  done
done
"$tf" model list --registry jobs/models
