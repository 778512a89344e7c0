#!/usr/bin/env bash
# The main job: bootstrap the environment if needed, then run every notebook in numeric order with papermill.
#   ./run_all.sh [--profile smoke|demo|paper|paper-dryrun] [--only NN]
# Executed copies go to build/notebooks/<profile>/; tables to results/<profile>/, figures to figures/<profile>/.
set -euo pipefail
# the notebooks run in notebooks/: a relative P2BOT_DATA_DIR means relative to where you typed the command
if [ -n "${P2BOT_DATA_DIR:-}" ]; then P2BOT_DATA_DIR="$(realpath -m -- "$P2BOT_DATA_DIR")"; export P2BOT_DATA_DIR; fi
cd "$(dirname "$0")"
PROFILE=demo
ONLY=""
while [ $# -gt 0 ]; do
    case "$1" in
        --profile) PROFILE="${2:?--profile needs smoke, demo, paper or paper-dryrun}"; shift 2 ;;
        --profile=*) PROFILE="${1#*=}"; shift ;;
        --only) ONLY="${2:?--only needs a notebook number, e.g. 01}"; shift 2 ;;
        --only=*) ONLY="${1#*=}"; shift ;;
        -h|--help) sed -n '2,4p' "$0"; exit 0 ;;
        *) echo "run_all.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
    esac
done
PARAMS="configs/$PROFILE.yaml"
# paper-dryrun: the paper's architectures (openai-gpt, bert-base-uncased) with RANDOM weights, no hub (paper_backbones)
if [ "$PROFILE" = paper-dryrun ]; then export P2BOT_BACKBONE_WEIGHTS=random; fi
[ -f "$PARAMS" ] || { echo "run_all.sh: no profile '$PROFILE' ($PARAMS missing; profiles: smoke, demo, paper, paper-dryrun)" >&2; exit 2; }

source scripts/bootstrap.sh

OUTDIR="build/notebooks/$PROFILE"
mkdir -p "$OUTDIR"
shopt -s nullglob
notebooks=(notebooks/[0-9][0-9]_*.ipynb)
[ ${#notebooks[@]} -gt 0 ] || { echo "run_all.sh: no notebooks under notebooks/" >&2; exit 1; }
ran=0
for nb in "${notebooks[@]}"; do
    name="$(basename "$nb")"
    if [ -n "$ONLY" ] && [[ "$name" != "$ONLY"* ]]; then continue; fi
    echo "=== [$PROFILE] $name ==="
    start=$SECONDS
    # only the parameters this notebook declares (no "unknown parameter" noise; a misspelt key stops the run)
    python -m p2bot_utils notebook-params "$PARAMS" "$nb" "$OUTDIR/${name%.ipynb}.params.yaml"
    if ! papermill "$nb" "$OUTDIR/$name" -f "$OUTDIR/${name%.ipynb}.params.yaml" --cwd notebooks --log-output --no-progress-bar -k python3; then
        rc=0
        python -m p2bot_utils notebook-error "$OUTDIR/$name" || rc=$?   # the error in one line; 2 = yours to fix
        echo "run_all.sh: FAILED in $nb (profile $PROFILE); the executed copy with the error is $OUTDIR/$name" >&2
        exit $(( rc == 2 ? 2 : 1 ))
    fi
    echo "=== $name done in $((SECONDS - start)) s ==="
    ran=$((ran + 1))
done
[ "$ran" -gt 0 ] || { echo "run_all.sh: --only $ONLY matched no notebook" >&2; exit 2; }
echo "run_all.sh: $ran notebook(s) ran with profile $PROFILE; executed copies in $OUTDIR/"
