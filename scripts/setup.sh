#!/usr/bin/env bash
# Installs what building and testing need on a fresh Debian machine (run as root): rustfmt and
# clippy for the Rust toolchain, OpenSSL headers and pkg-config (librdkafka is built with TLS
# and SASL), Debian's kcat (an external Kafka client for the Kafka tests), Prometheus (the
# dashboards test evaluates every Grafana query against it) ClickHouse and Redis (the sinks' tests),
# and ONNX Runtime's shared library (below).
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

missing=()
command -v kcat >/dev/null 2>&1 || missing+=(kcat)
command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
[ -x /usr/sbin/clickhouse-server ] || missing+=(clickhouse-server clickhouse-client)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server redis-tools)
command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
dpkg -s libssl-dev >/dev/null 2>&1 || missing+=(libssl-dev)
# pip fetches ONNX Runtime's wheel (below).
python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
if [ ${#missing[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null 2>&1 || {
    apt-get update >/dev/null
    apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null
  }
fi

# ONNX Runtime for jobs that score models with it (ml-ops): the shared library of the PyPI
# onnxruntime wheel, in .onnxruntime/ (ignored by git). tenantflow loads it at run time.
ORT_VERSION=1.31.1
ORT_LIB=".onnxruntime/libonnxruntime.so.${ORT_VERSION}"
if [ ! -f "$ORT_LIB" ]; then
  tmp=$(mktemp -d)
  python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.11 \
    --platform manylinux_2_28_x86_64 "onnxruntime==${ORT_VERSION}" -d "$tmp"
  python3 -m zipfile -e "$tmp"/onnxruntime-*.whl "$tmp/wheel"
  mkdir -p .onnxruntime
  cp "$tmp/wheel/onnxruntime/capi/libonnxruntime.so.${ORT_VERSION}" "$ORT_LIB.part"
  mv "$ORT_LIB.part" "$ORT_LIB"
  rm -rf "$tmp"
fi
