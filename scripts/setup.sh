#!/usr/bin/env bash
# Installs what building and testing need on a fresh Debian machine (run as root): rustfmt and
# clippy for the Rust toolchain, and Debian's kcat (an external Kafka client for the Kafka tests).
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

if ! command -v kcat >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y --no-install-recommends kcat >/dev/null 2>&1 || {
    apt-get update >/dev/null
    apt-get install -y --no-install-recommends kcat >/dev/null
  }
fi
