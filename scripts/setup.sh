#!/usr/bin/env bash
# Installs what building and testing need on a fresh Debian machine (run as root). Today that
# is only a Rust toolchain with rustfmt and clippy; later issues add services here.
set -euo pipefail

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo is not installed: install Rust (rustup) first" >&2
  exit 1
fi
for component in rustfmt clippy; do
  if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
    rustup component add "$component"
  fi
done
