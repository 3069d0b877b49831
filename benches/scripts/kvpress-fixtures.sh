#!/usr/bin/env bash
# Writes the kvpress fixture (crates/runtime/tests/fixtures/kvpress.json) with the pinned
# torch, transformers and kvpress, installed once into a virtual environment in the cache
# (the one benches/scripts/hf-fixtures.sh uses; kvpress 0.5.5 needs transformers < 5.3).
# A reference, not a dependency: CI reads the committed fixture and never runs this.
# Takes about 5 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/../.."
source benches/scripts/reference-venv.sh kvpress==0.5.5 gguf
cargo build --release -q -p sieve-cli
target/release/sieve fetch >/dev/null
MODEL="$CACHE/models/SmolLM2-135M-Instruct.Q4_1.gguf"
DATA="${SIEVE_DATA:-../shared/data}"
"$VENV/bin/python" benches/reference/kvpress_fixtures.py "$MODEL" "$DATA/wikitext-2/wiki.test.raw" \
    crates/runtime/tests/fixtures/kvpress.json
