#!/usr/bin/env bash
# Rebuilds the audio references in ml-ops/tests/audio: unpacks Debian's asterisk-moh-opsound-wav
# (music-on-hold tracks, CC-BY-SA 3.0) without installing it, and runs
# scripts/ml/audio_reference.py with librosa 0.11 (the Python environment of scripts/ml/train.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."

. scripts/ml/venv.sh
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && { apt-get download asterisk-moh-opsound-wav >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get download asterisk-moh-opsound-wav >/dev/null; }; })
dpkg -x "$tmp"/asterisk-moh-opsound-wav_*.deb "$tmp/x"
rm -rf ml-ops/tests/audio/*
"$venv/bin/python" scripts/ml/audio_reference.py ml-ops/tests/audio "$tmp/x/usr/share/asterisk/moh/manolo_camp-morning_coffee.wav"
