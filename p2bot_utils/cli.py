"""``python -m p2bot_utils COMMAND ...``: one entry point for every command-line tool of the project.

Each command lives next to its logic; this table only names where. A command module exposes
``main(argv: list[str]) -> int``. Errors the user can fix end in one line on stderr and exit code 2.
"""
from __future__ import annotations

import importlib
import sys

COMMANDS = {
    # name: (module, function, one-line help)
    "data-stats": ("p2bot_utils.data", "stats_main", "per-file episode / turn / utterance / persona-group counts"),
    "bench": ("p2bot_utils.bench", "main", "speed benchmarks: bench transmitter | bench selfplay"),
    "train-transmitter": ("p2bot_utils.transmitter_train", "train_main", "train a Transmitter variant (Eq. 1 + NUP): --config PROFILE [--variant]"),
    "evaluate-transmitter": ("p2bot_utils.transmitter_eval", "evaluate_main", "Hits@1 / ppl / F1 / BLEU of a Transmitter: --model DIR --data-dir DIR --mode"),
    "train-receiver": ("p2bot_utils.receiver", "main", "train the Receiver (Eq. 12) on dialogue sides: --out DIR"),
    "probe": ("p2bot_utils.probing", "main", "Table 5 persona probing: --receiver DIR|zero-shot:NAME|none --mode"),
    "notebook-params": ("p2bot_utils.profile", "notebook_params_main", "a profile's values of the parameters one notebook declares: PROFILE NOTEBOOK OUT"),
    "human-eval": ("p2bot_utils.human_eval", "main", "Table 2 from filled rating sheets: --key KEY SHEET..."),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help"}:
        print("usage: python -m p2bot_utils COMMAND [ARGS]\n\ncommands:")
        for name, (_, _, help_) in sorted(COMMANDS.items()):
            print(f"  {name:<24}{help_}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"p2bot_utils: unknown command {name!r}; run with --help for the list", file=sys.stderr)
        return 2
    module, func, _ = COMMANDS[name]
    return int(getattr(importlib.import_module(module), func)(rest) or 0)
