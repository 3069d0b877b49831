#!/usr/bin/env bash
# The prepared GPU check (issue #19), for a machine with an NVIDIA GPU, the CUDA 13 libraries
# and no Rust: the `cuda` build of sieve that `cargo xtask build-cuda` left in
# target/gpu-check/sieve.gz runs `sieve device-check` on cuda:0. It writes to $OUT (default
# ./gpu-check-out): device-check.md and .json (the conformance suite on CUDA; logits and kept
# positions of every preset against the CPU in f32, f16 and bf16; the speed table at 2k, 8k
# and 32k tokens, f32 and bf16, with model FLOP/s against the H200's bf16 peak), the log,
# and nvidia-smi's view of the GPU. About 3 minutes on an H200.
#
# With the device tool, from the repository root:
#   run(command="bash scripts/gpu-check.sh", carry=["target/gpu-check"], timeout_s=420)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu-check-out}"
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu-check.log") 2>&1

bundle=target/gpu-check/sieve.gz
[ -f "$bundle" ] || { echo "error: $bundle is missing: run cargo xtask build-cuda first"; exit 1; }
bin=$(mktemp -d)/sieve
gunzip -c "$bundle" > "$bin" && chmod +x "$bin"

# The CUDA 13 libraries (cuBLAS, cuBLASLt, NVRTC, cuRAND, the runtime): the Python
# environment's nvidia/*/lib folders, or a toolkit's lib64. The driver (libcuda) is the system's.
libs=""
for py in python3 /opt/torch/.venv/bin/python3; do
    site=$("$py" -c 'import site; print(" ".join(site.getsitepackages()))' 2>/dev/null) || continue
    for s in $site; do
        for d in "$s"/nvidia/*/lib; do
            [ -d "$d" ] && libs="$libs:$d"
        done
    done
    [ -n "$libs" ] && break
done
for d in /usr/local/cuda/lib64 /usr/local/nvidia/lib64; do [ -d "$d" ] && libs="$libs:$d"; done
path="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export LD_LIBRARY_PATH="${path#:}"
echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
if ldd "$bin" | grep "not found"; then
    echo "error: libraries the binary needs are not on LD_LIBRARY_PATH"
    exit 1
fi

timeout 400 "$bin" device-check --device cuda:0 --dtypes f32,bf16 \
    --lengths 2048,8192,32768 --decode-tokens 64 --out "$OUT"
status=$?
echo "device-check exit status: $status"
exit $status
