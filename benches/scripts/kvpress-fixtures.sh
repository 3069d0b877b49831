#!/usr/bin/env bash
# Writes the kvpress fixtures (crates/runtime/tests/fixtures/kvpress.json) with the pinned
# torch, transformers and kvpress, installed once into a virtual environment in the cache
# (the same one benches/scripts/hf-fixtures.sh uses; kvpress 0.5.5 needs transformers < 5.3).
# A reference, not a dependency: CI reads the committed fixture and never runs this.
# Takes about 10 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/../.."
TRANSFORMERS=5.2.0
TORCH=2.13.0
KVPRESS=0.5.5
CACHE="${SIEVE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sieve}"
VENV="$CACHE/venv-transformers-$TRANSFORMERS"
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import transformers, torch" 2>/dev/null; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q "torch==$TORCH" "transformers==$TRANSFORMERS" safetensors
fi
if ! "$VENV/bin/python" -c "import kvpress, gguf" 2>/dev/null; then
    "$VENV/bin/pip" install -q "kvpress==$KVPRESS" gguf
fi
cargo build --release -q -p sieve-cli
target/release/sieve fetch >/dev/null
MODEL="$CACHE/models/SmolLM2-135M-Instruct.Q4_1.gguf"
DATA="${SIEVE_DATA:-../shared/data}"
"$VENV/bin/python" benches/reference/kvpress_fixtures.py "$MODEL" "$DATA/wikitext-2/wiki.test.raw" \
    crates/runtime/tests/fixtures/kvpress.json
