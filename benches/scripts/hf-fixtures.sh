#!/usr/bin/env bash
# Writes the Hugging Face checkpoint fixtures (crates/runtime/tests/fixtures/hf/) with the
# pinned transformers and torch, installed once into a virtual environment in the cache.
# A reference, not a dependency: CI reads the committed fixtures and never runs this.
set -euo pipefail
cd "$(dirname "$0")/../.."
TRANSFORMERS=5.2.0
TORCH=2.13.0
CACHE="${SIEVE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sieve}"
VENV="$CACHE/venv-transformers-$TRANSFORMERS"
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import transformers, torch" 2>/dev/null; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q "torch==$TORCH" "transformers==$TRANSFORMERS" safetensors
fi
OUT=crates/runtime/tests/fixtures/hf
rm -rf "$OUT"
"$VENV/bin/python" benches/scripts/hf_fixtures.py "$OUT"
