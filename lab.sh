#!/usr/bin/env bash
# Open the notebooks in JupyterLab, with the project's environment as the kernel (bootstraps .venv if needed).
#   ./lab.sh                      http://127.0.0.1:8888/lab?token=... (the URL with its token is printed)
#   ./lab.sh --port 9999          another port;  P2BOT_LAB_IP=0.0.0.0 ./lab.sh  to listen on every address
# As root it adds --allow-root. On a remote machine: ssh -L 8888:127.0.0.1:8888 HOST, then ./lab.sh there and
# open the printed URL here. Extra arguments go to `jupyter lab`. Clear outputs before committing a notebook.
set -euo pipefail
# the notebooks run in notebooks/: a relative P2BOT_DATA_DIR means relative to where you typed the command
if [ -n "${P2BOT_DATA_DIR:-}" ]; then P2BOT_DATA_DIR="$(realpath -m -- "$P2BOT_DATA_DIR")"; export P2BOT_DATA_DIR; fi
cd "$(dirname "$0")"
source scripts/bootstrap.sh
unset MPLBACKEND   # bootstrap sets Agg for batch runs; in Lab the figures show inline
args=(--ServerApp.root_dir=notebooks "--ServerApp.ip=${P2BOT_LAB_IP:-127.0.0.1}" --no-browser)
[ "$(id -u)" = 0 ] && args+=(--allow-root)
exec jupyter lab "${args[@]}" "$@"
