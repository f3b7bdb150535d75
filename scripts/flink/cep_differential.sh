#!/usr/bin/env bash
# Opt-in differential test of the `pattern` step against Flink: SQL's MATCH_RECOGNIZE through
# PyFlink, and Flink CEP's Java API for what SQL cannot express (docs/cep.md, "Checked against
# Flink"). Needs a JDK 17+ (javac compiles CepDifferential.java) and a ~850 MB Python venv with
# apache-flink (created on first use, outside the repository).
#
#   scripts/flink/cep_differential.sh [--events N] [--seed S] [--only CASE,...] [--no-sql] [--no-cep]
#
# FLINK_VENV (default /var/tmp/tenantflow-flink-venv): the venv; WORK (default
# /var/tmp/tenantflow-cep-differential): events, jobs, Flink's queries and both outputs;
# TENANTFLOW_BIN: a tenantflow binary to test instead of building one.
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
venv=${FLINK_VENV:-/var/tmp/tenantflow-flink-venv}
work=${WORK:-/var/tmp/tenantflow-cep-differential}
mkdir -p "$work"

if ! java -version 2>&1 | grep -Eq 'version "(1[7-9]|[2-9][0-9])' || ! command -v javac >/dev/null; then
    echo "needs a JDK 17 or newer with javac (Debian: apt-get install -y openjdk-17-jdk-headless)" >&2
    exit 2
fi

if ! "$venv/bin/python" -c 'import pyflink' 2>/dev/null; then
    echo "creating $venv with apache-flink (~850 MB, a few minutes)" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q apache-flink
fi

if [ -z "${TENANTFLOW_BIN:-}" ]; then
    target=$(cd "$repo" && cargo metadata --format-version 1 --no-deps |
        "$venv/bin/python" -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
    # The target directory may be shared with other checkouts, whose builds replace
    # debug/tenantflow: copy it right after building this one.
    (cd "$repo" && cargo build -q --bin tenantflow) && cp "$target/debug/tenantflow" "$work/tenantflow"
    TENANTFLOW_BIN=$work/tenantflow
fi

exec "$venv/bin/python" "$repo/scripts/flink/cep_differential.py" --tenantflow "$TENANTFLOW_BIN" --work "$work" "$@"
