#!/usr/bin/env bash
# Reproduces the evaluation tables of the README (results under bench-results/):
# compressed-context and streaming perplexity against the kept fraction for each policy
# family, the speed/memory grid with its plots, and passkey retrieval.
# Usage: bash benches/scripts/eval.sh   (takes about 45 min on 2 cores). The README's
# evaluation section quotes these files (copied to docs/results/).
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=${SIEVE_DATA:-../shared/data}
TEXT=$DATA/wikitext-2/wiki.test.raw
OUT=${OUT:-bench-results}
mkdir -p "$OUT/ppl"
cargo build --release -q -p sieve-cli
SIEVE=target/release/sieve

# 1. Speed, memory and single-window quality, each point beside `none` in the same process.
$SIEVE bench --policies snapkv,lazy-prefill,streaming,h2o,tova,knorm,pyramid \
  --keeps 1.0,0.5,0.25,0.125 --lengths 2048 --continuation 128 --decode-tokens 32 \
  --file "$TEXT" --out "$OUT/speed"

# 2. Compressed-context perplexity: 8 windows of 1,024 context + 128 scored tokens.
$SIEVE perplexity --file "$TEXT" --context 1024 --continuation 128 --windows 8 --json \
  > "$OUT/ppl/none.json"
for p in snapkv lazy-prefill streaming h2o tova knorm pyramid; do
  for k in 0.5 0.25 0.125; do
    $SIEVE perplexity --file "$TEXT" --context 1024 --continuation 128 --windows 8 --json \
      --policy "configs/$p.toml" --keep "$k" > "$OUT/ppl/$p@$k.json"
  done
done

# 3. Streaming perplexity: 1,024 tokens one at a time, the cache cut to the budget:
#    StreamingLLM (4 sinks + the most recent tokens, cut after every step), and the h2o
#    and tova presets' decode eviction with this budget.
for b in 1024 512 256 128; do
  $SIEVE perplexity --file "$TEXT" --streaming --length 1024 --budget "$b" --json \
    > "$OUT/ppl/streaming-streaming-$b.json"
  for p in h2o tova; do
    $SIEVE perplexity --file "$TEXT" --streaming --length 1024 --budget "$b" --json \
      --policy "configs/$p.toml" > "$OUT/ppl/streaming-$p-$b.json"
  done
done

# 4. Passkey retrieval, the unpruned model beside each policy.
$SIEVE passkey --lengths 512,1024,2048 --depths 0.1,0.5,0.9 --seeds 2 \
  --policies none,snapkv,streaming,tova,lazy-prefill --filler-file "$TEXT" > "$OUT/passkey.md"
