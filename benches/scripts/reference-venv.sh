# Sourced by the fixture scripts: the reference implementations' virtual environment in the
# cache, with the pinned torch and transformers (and, if asked, more packages), made once.
# Sets VENV and CACHE. Usage: source benches/scripts/reference-venv.sh [EXTRA_PACKAGE...]
TRANSFORMERS=5.2.0
TORCH=2.13.0
CACHE="${SIEVE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sieve}"
VENV="$CACHE/venv-transformers-$TRANSFORMERS"
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import transformers, torch" 2>/dev/null; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q "torch==$TORCH" "transformers==$TRANSFORMERS" safetensors
fi
for package in "$@"; do
    if ! "$VENV/bin/pip" show -q "${package%%==*}" 2>/dev/null; then
        "$VENV/bin/pip" install -q "$package"
    fi
done
