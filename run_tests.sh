#!/usr/bin/env bash
# Every test: bootstrap the environment if needed, then the unit tests, then every notebook under nbval with
# the smoke parameters. Extra arguments go to the unit-test pytest run (e.g. ./run_tests.sh -k metrics).
# Tests needing the real data read P2BOT_DATA_DIR and are skipped when it is unset.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/bootstrap.sh

echo "=== unit tests ==="
python -m pytest tests "$@"

echo "=== notebooks under nbval (smoke parameters) ==="
NBDIR="build/nbval"
rm -rf "$NBDIR"; mkdir -p "$NBDIR"
shopt -s nullglob
for nb in notebooks/[0-9][0-9]_*.ipynb; do
    # papermill injects the smoke parameters without executing; nbval then runs the copies in order
    papermill "$nb" "$NBDIR/$(basename "$nb")" -f configs/smoke.yaml --prepare-only --no-progress-bar -k python3 2>/dev/null
done
if compgen -G "$NBDIR/*.ipynb" >/dev/null; then
    (cd "$NBDIR" && python -m pytest --nbval-lax -p no:cacheprovider --rootdir . -q *.ipynb)
else
    echo "no notebooks yet"
fi
