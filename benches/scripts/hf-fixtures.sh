#!/usr/bin/env bash
# Writes the Hugging Face checkpoint fixtures (crates/runtime/tests/fixtures/hf/) with the
# pinned transformers and torch, installed once into a virtual environment in the cache.
# A reference, not a dependency: CI reads the committed fixtures and never runs this.
set -euo pipefail
cd "$(dirname "$0")/../.."
source benches/scripts/reference-venv.sh
OUT=crates/runtime/tests/fixtures/hf
rm -rf "$OUT"
"$VENV/bin/python" benches/scripts/hf_fixtures.py "$OUT"
