#!/usr/bin/env bash
# Compressed-context perplexity of prefill policies over 12 consecutive windows of
# WikiText-2 test (2,048 context tokens + 128 scored each): the first window (the text
# `sieve bench` times) beside windows 2-12 pooled, each against the unpruned model.
# Usage, from the repository root: bash docs/results/prefill-sweep/run.sh [POLICY[@KEEP]...]
# (default: every .toml here and the presets of docs/results.md). Needs python3 for the
# arithmetic; perplexity is deterministic, so the figures repeat exactly.
set -euo pipefail
sieve=${SIEVE:-./target/release/sieve}
text=${SIEVE_DATA:-../shared/data}/wikitext-2/wiki.test.raw
here=$(dirname "$0")
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
run() { # name, then sieve perplexity's policy arguments
    local name=$1; shift
    "$sieve" perplexity --file "$text" --context 2048 --continuation 128 --windows 12 --json "$@" > "$out/$name.json"
}
run none
if [ $# -eq 0 ]; then
    set -- configs/lazy-prefill.toml@0.5 configs/lazy-prefill.toml@0.45 configs/lazy-prefill.toml@0.4 \
        configs/lazy-prefill.toml@0.35 configs/lazy-prefill.toml@0.25 configs/gemfilter.toml@0.5 \
        configs/gemfilter.toml@0.35 configs/fastkv.toml@0.5 configs/fastkv.toml@0.35 configs/novelty.toml \
        configs/snapkv.toml@0.25 configs/tova.toml@0.25 "$here"/*.toml
fi
echo "| policy | prefill computed | window 1 | windows 2-12 |"
echo "|---|---:|---:|---:|"
for spec in "$@"; do
    file=${spec%@*}
    args=(--policy "$file")
    [ "$spec" != "$file" ] && args+=(--keep "${spec##*@}")
    name=$(basename "$spec")
    run "$name" "${args[@]}"
    python3 - "$out/none.json" "$out/$name.json" "$name" <<'PY'
import json, math, sys
base, run = (json.load(open(p))["windows"] for p in sys.argv[1:3])
ppl = lambda ws: math.exp(sum(w["nll"] for w in ws) / sum(w["scored"] for w in ws))
change = lambda a, b: f"{100 * (ppl(a) / ppl(b) - 1):+.2f}%"
print(f"| {sys.argv[3]} | {100 * run[0]['computed']:.1f}% | {change(run[:1], base[:1])} | {change(run[1:], base[1:])} |")
PY
done
