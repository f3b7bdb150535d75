#!/usr/bin/env bash
# Runs every check CI runs: formatting, lints, then all tests (in parallel with nextest when it
# is installed). Builds go to the shared target directory set in .cargo/config.toml.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --all-targets -- -D warnings
echo "== build (the end-to-end tests run the tenantflow binary)"
cargo build --bins
echo "== tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast
else
  cargo test --workspace --no-fail-fast
fi
