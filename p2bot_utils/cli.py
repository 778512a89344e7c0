"""``python -m p2bot_utils COMMAND ...``: the command line's dispatch and error path, and the front-ends of the
data, notebook, human-evaluation and benchmark commands (the models' are in ``cli_models``).

Each command is a function ``argv -> exit code`` that parses its arguments and calls the logic modules.
Errors the user can fix end in one line on stderr and exit code 2 (``errors.report``); ``--debug`` shows the
traceback. The logic modules are imported inside
the command that needs them (marked ``# lazy:``): ``--help`` and ``notebook-params`` (run before every
notebook) would otherwise wait seconds for torch and transformers to load.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Callable, Sequence

import yaml
from tqdm.auto import tqdm

from p2bot_utils.cli_models import evaluate_transmitter, probe, train_receiver, train_transmitter
from p2bot_utils.errors import USER_ERROR_NAMES, USER_ERRORS, OneLineParser, report


# --- data ----------------------------------------------------------------------------------------------
def data_stats(argv: Sequence[str]) -> int:
    """``data-stats DIR [--json]``: one row per data file; nothing is printed unless every file parses (a bad
    file gives one ``path:line: what`` line on stderr and exit code 2)."""
    from p2bot_utils import data  # lazy: see the module docstring

    ap = OneLineParser(prog="python -m p2bot_utils data-stats", description=data_stats.__doc__)
    ap.add_argument("target", help="a data folder (files directly or under ConvAI2/) or one file")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ap.add_argument("--allow-duplicates", action="store_true", help="count repeated episodes (with a warning)")
    args = ap.parse_args(list(argv))
    files = data.data_files_in(Path(args.target))
    rows = [data.dataset_stats(p, args.allow_duplicates) for p in tqdm(files, desc="data-stats", leave=False, disable=None)]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    cols = list(rows[0]) if rows else []
    widths = [max(len(c), *(len(f"{r[c]:,}" if isinstance(r[c], int) else str(r[c])) for r in rows)) for c in cols]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
    for r in rows:
        print("  ".join((f"{r[c]:,}".rjust(w) if isinstance(r[c], int) else str(r[c]).ljust(w))
                        for c, w in zip(cols, widths)))
    print("utterances = 2 x turn pairs - __SILENCE__ openers (a silence is not an utterance)")
    return 0


def notebook_params(argv: Sequence[str]) -> int:
    """``notebook-params PROFILE NOTEBOOK OUT``: write to OUT the profile's values of the parameters NOTEBOOK
    declares (run_all.sh hands papermill only those). A profile key that no notebook beside NOTEBOOK declares
    is an error: a misspelt key would otherwise be dropped without a word."""
    from p2bot_utils import profile  # lazy: see the module docstring

    ap = OneLineParser(prog="python -m p2bot_utils notebook-params")
    ap.add_argument("profile", help="profile name or YAML path")
    ap.add_argument("notebook")
    ap.add_argument("out", help="YAML file to write (papermill -f)")
    args = ap.parse_args(list(argv))
    params = profile.load_params(args.profile, unknown_ok=True)  # an unknown key: the message below
    nb = Path(args.notebook)
    declared = {k for other in sorted(nb.parent.glob("*.ipynb")) for k in profile.notebook_parameters(other)}
    unknown = sorted(set(params) - declared)
    if unknown:
        raise ValueError(f"{args.profile}: {', '.join(unknown)} set by the profile but declared by no "
                         f"notebook's parameters cell in {nb.parent}/ (misspelt?)")
    mine = set(profile.notebook_parameters(nb))
    missing = sorted(mine - set(params))
    if missing:
        raise ValueError(f"{args.profile}: {', '.join(missing)} declared by {nb.name} but not set by the "
                         f"profile (the notebook's smoke default would be used silently)")
    keep = {k: v for k, v in params.items() if k in mine}
    profile.atomic_write_text(args.out, yaml.safe_dump(keep, allow_unicode=True, sort_keys=False))
    return 0


def notebook_error(argv: Sequence[str]) -> int:
    """``notebook-error EXECUTED_NOTEBOOK``: the error a papermill run stopped on, as one line on stderr; exit
    code 2 when it is a problem the user can fix (a file, key or folder named), 1 for anything else (a bug)."""
    ap = OneLineParser(prog="python -m p2bot_utils notebook-error", description=notebook_error.__doc__)
    ap.add_argument("notebook")
    args = ap.parse_args(list(argv))
    try:
        cells = json.loads(Path(args.notebook).read_text(encoding="utf-8"))["cells"]
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"{args.notebook}: not a readable notebook ({e})") from None
    errors = [o for c in cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    if not errors:
        print(f"{args.notebook}: no error output (see the log above)", file=sys.stderr)
        return 1
    ename, evalue = errors[0].get("ename", "Error"), (errors[0].get("evalue") or "").strip()
    print(f"{Path(args.notebook).name}: {ename}: {evalue.splitlines()[0] if evalue else ''}", file=sys.stderr)
    return 2 if ename in USER_ERROR_NAMES else 1


# --- human evaluation ------------------------------------------------------------------------------------
def human_eval(argv: Sequence[str]) -> int:
    """``human-eval --key KEY SHEET [SHEET ...]``: Table 2 and Wilcoxon tests."""
    from p2bot_utils import human_eval as he  # lazy: see the module docstring

    ap = OneLineParser(prog="python -m p2bot_utils human-eval", description=human_eval.__doc__)
    ap.add_argument("sheets", nargs="+", help="filled rating sheets (CSV)")
    ap.add_argument("--key", required=True, help="the key file written by export_rating_sheet")
    args = ap.parse_args(list(argv))
    ratings = he.import_ratings(args.sheets, args.key)
    print(he.rating_distribution(ratings).to_markdown(index=False, floatfmt=".2f"))
    if ratings["system"].nunique() > 1:
        print()
        print(he.pairwise_wilcoxon(ratings).to_markdown(index=False, floatfmt=".4g"))
    return 0


# --- benchmarks --------------------------------------------------------------------------------------------
def bench(argv: Sequence[str]) -> int:
    """``bench transmitter|selfplay|linear|alloc [ARGS]``: speed measured side by side in one run (``bench`` module)."""
    argv = list(argv)
    parts = {"transmitter": _bench_transmitter_args, "selfplay": _bench_selfplay_args, "linear": _bench_linear_args,
             "alloc": _bench_alloc_args}
    if not argv or argv[0] not in parts:
        print(f"usage: python -m p2bot_utils bench {{{'|'.join(parts)}}} [ARGS]", file=sys.stderr)
        return 2
    from p2bot_utils import bench as b  # lazy: see the module docstring

    ap = OneLineParser(prog=f"python -m p2bot_utils bench {argv[0]}")
    parts[argv[0]](ap)
    args = vars(ap.parse_args(argv[1:]))
    res = getattr(b, argv[0])(**args)
    width = max(map(len, res)) + 4
    for k, v in res.items():
        print(f"{k:<{width}}{v:.4g}" if isinstance(v, float) else f"{k:<{width}}{v}")
    return 0


def _bench_transmitter_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--backbone", default="smollm2-135m", help="tiny-gpt2 | smollm2-135m | hub id | folder")
    ap.add_argument("--data-dir", default=None, help="PERSONA-CHAT folder; none = P2BOT_DATA_DIR, ./data, else the sample")
    ap.add_argument("--max-len", type=int, default=128, help="layout max_len (context + reply tokens; demo: 128)")
    ap.add_argument("--batch-size", type=int, default=4, help="training examples per step (x2 with distractors)")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--turns", type=int, default=16, help="turns for ranking and generation")
    ap.add_argument("--max-new-tokens", type=int, default=32, help="reply cap (demo and paper: 32)")
    ap.add_argument("--rank-batch-size", type=int, default=8, help="turns per ranking batch (demo: 8)")
    ap.add_argument("--device", default="auto")


def _bench_linear_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--in-features", type=int, default=576, help="the weight's input size (SmolLM2-135M: 576)")
    ap.add_argument("--out-features", type=int, default=1536, help="its output size (SmolLM2-135M's MLP: 1536)")
    ap.add_argument("--rows", default="1,2,4,8,16,32,64,128,512", help="row counts of x, comma-separated")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--device", default="auto")


def _bench_alloc_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--backbone", default="smollm2-135m", help="tiny-gpt2 | smollm2-135m | hub id | folder")
    ap.add_argument("--data-dir", default=None, help="PERSONA-CHAT folder; none = P2BOT_DATA_DIR, ./data, else the sample")
    ap.add_argument("--max-len", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=4, help="contexts per step (each with gold + 7 distractors)")
    ap.add_argument("--steps", type=int, default=4, help="measured steps each way (medians)")


def _bench_selfplay_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--backbone", default="smollm2-135m", help="Transmitter backbone when no --transmitter")
    ap.add_argument("--encoder", default="minilm-l6", help="Receiver backbone when no --receiver")
    ap.add_argument("--transmitter", dest="transmitter_dir", default="", help="saved Transmitter folder")
    ap.add_argument("--receiver", dest="receiver_dir", default="", help="saved Receiver folder")
    ap.add_argument("--lm", default="", help="R1 LM (default: --backbone)")
    ap.add_argument("--data-dir", default=None, help="PERSONA-CHAT folder; none = P2BOT_DATA_DIR, ./data, else the sample")
    ap.add_argument("--dialogues", type=int, default=8)
    ap.add_argument("--turns", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--max-len", type=int, default=128)
    ap.add_argument("--device", default="auto")


# --- talk to P²Bot and watch it self-play (notebook 06; the set-up lives in talk_cli) ----------------------
def chat(argv: Sequence[str]) -> int:
    """``chat --model DIR [--persona "S1 | S2 ..."] [--receiver DIR]``: talk to a saved Transmitter (a REPL that
    also reads piped input). Each reply shows its Eq. 3 parts per beam; with ``--receiver`` the Receiver ranks
    candidate personas by what you said so far. Commands: /persona, /reset, /quit, /help."""
    from p2bot_utils import talk_cli  # lazy: see the module docstring

    ap = OneLineParser(prog="python -m p2bot_utils chat", description=chat.__doc__)
    talk_cli.chat_arguments(ap)
    talk_cli.run_chat(ap.parse_args(list(argv)), talk_cli.stdin_lines(), lambda t: print(t, flush=True))
    return 0


def watch(argv: Sequence[str]) -> int:
    """``watch --model DIR --receiver DIR [--before DIR] [--turns N --seed S --html OUT]``: two Transmitters
    self-play one dialogue on a persona pair drawn with the seed; prints the transcript, R1 / R2 / R3 / R per
    turn and each side's guess of the other's persona; ``--html`` adds the Receiver's heat map after every
    utterance. ``--before`` (the supervised model) plays the same pair beside ``--model``."""
    from p2bot_utils import talk_cli  # lazy: see the module docstring

    ap = OneLineParser(prog="python -m p2bot_utils watch", description=watch.__doc__)
    talk_cli.watch_arguments(ap)
    talk_cli.run_watch(ap.parse_args(list(argv)), lambda t: print(t, flush=True))
    return 0

COMMANDS: dict[str, tuple[Callable[[Sequence[str]], int], str]] = {
    "data-stats": (data_stats, "per-file episode / turn / utterance / persona-group counts"),
    "bench": (bench, "speed benchmarks: bench transmitter | bench selfplay"),
    "train-transmitter": (train_transmitter, "train a Transmitter variant (Eq. 1 + NUP): --config PROFILE [--variant]"),
    "evaluate-transmitter": (evaluate_transmitter, "Hits@1 / ppl / F1 / BLEU of a Transmitter: --model DIR --data-dir DIR --mode"),
    "train-receiver": (train_receiver, "train the Receiver (Eq. 12) on dialogue sides: --out DIR"),
    "probe": (probe, "Table 5 persona probing: --receiver DIR|zero-shot:NAME|none --mode"),
    "notebook-params": (notebook_params, "a profile's values of the parameters one notebook declares: PROFILE NOTEBOOK OUT"),
    "human-eval": (human_eval, "Table 2 from filled rating sheets: --key KEY SHEET..."),
    "notebook-error": (notebook_error, "the error an executed notebook stopped on, in one line (run_all.sh)"),
    "chat": (chat, "talk to a saved Transmitter (REPL, piped input too): --model DIR [--persona ...] [--receiver DIR]"),
    "watch": (watch, "watch two Transmitters self-play: --model DIR --receiver DIR [--before DIR] [--html OUT]"),
}


def main(argv: list[str] | None = None) -> int:
    """Run one command. A user-fixable error is one line on stderr and exit code 2; ``--debug`` (anywhere in
    the arguments) or ``P2BOT_DEBUG=1`` shows the traceback instead."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("P2BOT_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    if not argv or argv[0] in {"-h", "--help"}:
        print("usage: python -m p2bot_utils COMMAND [ARGS] [--debug]\n\ncommands:")
        for name, (_, help_) in sorted(COMMANDS.items()):
            print(f"  {name:<24}{help_}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"p2bot_utils: unknown command {name!r}; run with --help for the list", file=sys.stderr)
        return 2
    try:
        return int(COMMANDS[name][0](rest) or 0)
    except SystemExit as e:  # argparse: --help (0) or a usage mistake, already printed in one line (2)
        return e.code if isinstance(e.code, int) else int(e.code is not None)
    except (*USER_ERRORS, KeyboardInterrupt) as e:
        if debug:
            raise
        return report(name, e)
