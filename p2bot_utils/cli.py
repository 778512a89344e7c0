"""``python -m p2bot_utils COMMAND ...``: every command-line front-end of the project, and nothing else.

Each command is a function ``argv -> exit code`` that parses its arguments and calls the logic modules.
Errors the user can fix end in one line on stderr and exit code 2. The logic modules are imported inside
the command that needs them (marked ``# lazy:``): ``--help`` and ``notebook-params`` (run before every
notebook) would otherwise wait seconds for torch and transformers to load.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable, Sequence

import yaml
from tqdm.auto import tqdm


def _fail(command: str, error: Exception) -> int:
    print(f"{command}: {error}", file=sys.stderr)
    return 2


# --- data ----------------------------------------------------------------------------------------------
def data_stats(argv: Sequence[str]) -> int:
    """``data-stats DIR [--json]``: one row per data file; nothing is printed unless every file parses (a bad
    file gives one ``path:line: what`` line on stderr and exit code 2)."""
    from p2bot_utils import data  # lazy: see the module docstring

    ap = argparse.ArgumentParser(prog="python -m p2bot_utils data-stats", description=data_stats.__doc__)
    ap.add_argument("target", help="a data folder (files directly or under ConvAI2/) or one file")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = ap.parse_args(list(argv))
    try:
        files = data.data_files_in(Path(args.target))
        rows = [data.dataset_stats(p) for p in tqdm(files, desc="data-stats", leave=False, disable=None)]
    except (data.DataFormatError, FileNotFoundError) as e:
        return _fail("data-stats", e)
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

    ap = argparse.ArgumentParser(prog="python -m p2bot_utils notebook-params")
    ap.add_argument("profile", help="profile name or YAML path")
    ap.add_argument("notebook")
    ap.add_argument("out", help="YAML file to write (papermill -f)")
    args = ap.parse_args(list(argv))
    try:
        params = profile.load_params(args.profile)
        nb = Path(args.notebook)
        declared = {k for other in sorted(nb.parent.glob("*.ipynb")) for k in profile.notebook_parameters(other)}
        unknown = sorted(set(params) - declared)
        if unknown:
            raise ValueError(f"{args.profile}: {', '.join(unknown)} set by the profile but declared by no "
                             f"notebook's parameters cell in {nb.parent}/ (misspelt?)")
        mine = set(profile.notebook_parameters(nb))
    except (OSError, ValueError, SyntaxError) as e:
        return _fail("notebook-params", e)
    keep = {k: v for k, v in params.items() if k in mine}
    profile.atomic_write_text(args.out, yaml.safe_dump(keep, allow_unicode=True, sort_keys=False))
    return 0


# --- the Transmitter -----------------------------------------------------------------------------------
def train_transmitter(argv: Sequence[str]) -> int:
    """``train-transmitter --config PROFILE [--variant full|no_next|no_persona] [--data-dir DIR]``."""
    from p2bot_utils import profile  # lazy: see the module docstring
    from p2bot_utils.data import load_split_data
    from p2bot_utils.transmitter_train import VARIANTS, TransmitterTrainConfig, train_variant

    ap = argparse.ArgumentParser(prog="python -m p2bot_utils train-transmitter")
    ap.add_argument("--config", required=True, help="profile name or YAML file (configs/<profile>.yaml)")
    ap.add_argument("--variant", default="full", choices=list(VARIANTS))
    ap.add_argument("--data-dir", default=None, help="overrides the profile's data_dir")
    args = ap.parse_args(list(argv))
    params = profile.load_params(args.config)
    profile.set_seed(params.get("seed", 0))
    data = load_split_data(args.data_dir or params.get("data_dir") or None, mode=params["transmitter_mode"],
                           seed=params.get("seed", 0), fractions=params.get("split_fractions", (0.8, 0.1, 0.1)),
                           use_sample=params.get("use_sample", False))
    results_dir, _ = profile.output_dirs(params["profile"], data.source)
    paths = profile.RunPaths(profile.runs_dir(params["profile"], data.source))
    config = TransmitterTrainConfig.from_params(params)
    _, result = train_variant(config, data.train, args.variant, paths, results_dir)
    print(f"train-transmitter: {args.variant}: {result.steps} steps, final loss {result.final_loss:.4f}, "
          f"saved to {paths.transmitter(args.variant)}")
    return 0


def evaluate_transmitter(argv: Sequence[str]) -> int:
    """``evaluate-transmitter --model DIR [--data-dir DIR] [--mode original|revised] [--split dev|test]``."""
    from p2bot_utils.data import load_split_data  # lazy: see the module docstring
    from p2bot_utils.transmitter import Transmitter
    from p2bot_utils.transmitter_eval import evaluate_transmitter as evaluate

    ap = argparse.ArgumentParser(prog="python -m p2bot_utils evaluate-transmitter")
    ap.add_argument("--model", required=True, help="a saved Transmitter folder (Transmitter.save_pretrained)")
    ap.add_argument("--data-dir", default=None, help="PERSONA-CHAT / ConvAI2 folder; none = the shipped sample")
    ap.add_argument("--mode", default="original", choices=["original", "revised"])
    ap.add_argument("--split", default="dev", choices=["dev", "test", "all"], help="all: every episode of the "
                    "validation file, no split (the whole folder when it holds only validation files)")
    ap.add_argument("--max-turns", type=int, default=None, help="seeded subsample of turns")
    ap.add_argument("--gen-turns", type=int, default=None, help="generate replies on the first N of them")
    ap.add_argument("--alpha", type=float, default=0.1, help="Eq. 3 mixing weight (1 = Eq. 2)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-generate", action="store_true")
    ap.add_argument("--jsonl", default=None, help="write the generated replies here")
    ap.add_argument("--json", action="store_true", help="print the metrics as one JSON object")
    args = ap.parse_args(list(argv))
    if not Path(args.model).is_dir():
        ap.error(f"--model {args.model}: no such folder")
    data = load_split_data(args.data_dir, mode=args.mode, seed=args.seed, use_sample=args.data_dir is None)
    model = Transmitter.from_pretrained(args.model)
    from p2bot_utils.data_split import select_part  # lazy: see the module docstring
    res = evaluate(model, select_part(data, args.split), args.max_turns, args.seed, generate=not args.no_generate,
                   gen_turns=args.gen_turns, alpha=args.alpha, jsonl_path=args.jsonl)
    res.update({"data_source": data.source, "split": args.split, "mode": args.mode,
                "split_method": data.info.get("split_method")})
    print(json.dumps(res, indent=None if args.json else 2, default=float))
    return 0


# --- the Receiver and persona probing -------------------------------------------------------------------
def train_receiver(argv: Sequence[str]) -> int:
    """Train a Receiver on the train part of the persona-group split and save it to ``--out``."""
    from p2bot_utils.receiver import Receiver, ReceiverConfig  # lazy: see the module docstring
    from p2bot_utils.receiver_train import train_receiver as train
    from p2bot_utils.sides import build_examples, load_sides, pool_from_sides
    from p2bot_utils.training import TrainConfig

    ap = argparse.ArgumentParser(prog="python -m p2bot_utils train-receiver", description=train_receiver.__doc__)
    ap.add_argument("--out", required=True, help="folder for the saved Receiver (checkpoints under OUT/run)")
    ap.add_argument("--backbone", default="minilm-l6", help="backbones.load_encoder name")
    ap.add_argument("--data-dir", default="", help="ParlAI files folder ('' = P2BOT_DATA_DIR / ./data)")
    ap.add_argument("--use-sample", action="store_true", help="the shipped synthetic sample")
    ap.add_argument("--mode", choices=("original", "revised"), default="original")
    ap.add_argument("--released-code", action="store_true", help="the authors' code choices (see ReceiverConfig)")
    ap.add_argument("--max-length", type=int, default=32)
    ap.add_argument("--train-layers", type=int, default=-1, help="top blocks fine-tuned; -1 = all (paper)")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--max-steps", type=int, default=-1)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(list(argv))
    try:
        make = ReceiverConfig.released_code if args.released_code else ReceiverConfig
        config = make(backbone=args.backbone, max_length=args.max_length, train_layers=args.train_layers)
        split = load_sides(args.data_dir or None, args.mode, args.seed, use_sample=args.use_sample)
        examples = build_examples(split.train, pool_from_sides(split.train), config.distractor, args.seed)
        tc = TrainConfig(out_dir=str(Path(args.out) / "run"), lr=args.lr, num_epochs=args.epochs,
                         max_steps=args.max_steps, batch_size=args.batch_size, seed=args.seed)
    except (FileNotFoundError, ValueError) as e:
        return _fail("train-receiver", e)
    receiver = Receiver.from_backbone(config)
    result = train(receiver, examples, tc)
    receiver.save_pretrained(args.out)
    print(f"train-receiver: {result.steps} steps on {len(examples)} sides, final loss {result.final_loss:.4f}; "
          f"saved to {args.out}")
    return 0


def probe(argv: Sequence[str]) -> int:
    """Table 5 persona probing of one persona file's split: Random, IR and Receivers, Hits@1 and MRR."""
    from p2bot_utils import probing  # lazy: see the module docstring
    from p2bot_utils.sides import load_sides

    ap = argparse.ArgumentParser(prog="python -m p2bot_utils probe", description=probe.__doc__)
    ap.add_argument("--receiver", required=True,
                    help="a saved Receiver folder, 'zero-shot:BACKBONE', or 'none' (IR and Random only)")
    ap.add_argument("--zero-shot", default="", help="also score an untrained Receiver on this backbone name")
    ap.add_argument("--data-dir", default="", help="ParlAI files folder ('' = P2BOT_DATA_DIR / ./data)")
    ap.add_argument("--use-sample", action="store_true", help="the shipped synthetic sample")
    ap.add_argument("--mode", choices=("original", "revised"), default="original")
    ap.add_argument("--split", choices=("train", "dev", "test", "all"), default="test",
                    help="all: every dialogue side of the validation file, no split")
    ap.add_argument("--n-candidates", type=int, default=32)
    ap.add_argument("--mrr-pool", choices=("candidates", "all"), default="candidates")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = ap.parse_args(list(argv))
    try:
        split = load_sides(args.data_dir or None, args.mode, args.seed, use_sample=args.use_sample)
        items, sentences = probing.probe_setup(split, args.split, args.n_candidates, args.seed)
        scorers: dict[str, object] = {"Random": probing.RandomScorer(), "IR": probing.IRScorer(probing.ir_corpus(items))}
        for label, spec in (("Receiver (untrained)", f"zero-shot:{args.zero_shot}" if args.zero_shot else "none"),
                            ("Receiver", args.receiver)):
            scorer = probing.load_scorer(spec)
            if scorer is not None:
                scorers[label] = scorer
    except (FileNotFoundError, ValueError) as e:
        return _fail("probe", e)
    info = {"source": split.source, "part": args.split, **split.info}
    rows = [{k: v for k, v in r.items() if not k.startswith("per_item")}
            for r in probing.run_probe(items, scorers, args.mrr_pool, sentences)]
    out = {"mode": args.mode, "n_candidates": args.n_candidates, "mrr_pool": args.mrr_pool, **info, "rows": rows}
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for r in rows:
            print(f"{r['method']:<24} Hits@1 {100 * r['hits@1']:5.1f} ± {100 * r['hits@1_se']:.1f}   "
                  f"MRR {100 * r['mrr']:5.1f} ± {100 * r['mrr_se']:.1f}   n={r['n']}")
    return 0


# --- human evaluation ------------------------------------------------------------------------------------
def human_eval(argv: Sequence[str]) -> int:
    """``human-eval --key KEY SHEET [SHEET ...]``: Table 2 and Wilcoxon tests."""
    from p2bot_utils import human_eval as he  # lazy: see the module docstring

    ap = argparse.ArgumentParser(prog="python -m p2bot_utils human-eval", description=human_eval.__doc__)
    ap.add_argument("sheets", nargs="+", help="filled rating sheets (CSV)")
    ap.add_argument("--key", required=True, help="the key file written by export_rating_sheet")
    args = ap.parse_args(list(argv))
    try:
        ratings = he.import_ratings(args.sheets, args.key)
    except (ValueError, OSError) as e:
        return _fail("human-eval", e)
    print(he.rating_distribution(ratings).to_markdown(index=False, floatfmt=".2f"))
    if ratings["system"].nunique() > 1:
        print()
        print(he.pairwise_wilcoxon(ratings).to_markdown(index=False, floatfmt=".4g"))
    return 0


# --- benchmarks --------------------------------------------------------------------------------------------
def bench(argv: Sequence[str]) -> int:
    """``bench transmitter|selfplay [ARGS]``: speed measured side by side in one run (``bench`` module)."""
    argv = list(argv)
    parts = {"transmitter": _bench_transmitter_args, "selfplay": _bench_selfplay_args}
    if not argv or argv[0] not in parts:
        print(f"usage: python -m p2bot_utils bench {{{'|'.join(parts)}}} [ARGS]", file=sys.stderr)
        return 2
    from p2bot_utils import bench as b  # lazy: see the module docstring

    ap = argparse.ArgumentParser(prog=f"python -m p2bot_utils bench {argv[0]}")
    parts[argv[0]](ap)
    args = vars(ap.parse_args(argv[1:]))
    res = getattr(b, argv[0])(**args)
    width = max(map(len, res)) + 4
    for k, v in res.items():
        print(f"{k:<{width}}{v:.4g}" if isinstance(v, float) else f"{k:<{width}}{v}")
    return 0


def _bench_transmitter_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--backbone", default="smollm2-135m", help="tiny-gpt2 | smollm2-135m | hub id | folder")
    ap.add_argument("--data-dir", default=None, help="PERSONA-CHAT folder; none = the shipped sample")
    ap.add_argument("--max-len", type=int, default=256, help="layout max_len (context + reply tokens)")
    ap.add_argument("--batch-size", type=int, default=4, help="training examples per step (x2 with distractors)")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--turns", type=int, default=8, help="turns for ranking and generation")
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--device", default="auto")


def _bench_selfplay_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--backbone", default="smollm2-135m", help="Transmitter backbone when no --transmitter")
    ap.add_argument("--encoder", default="minilm-l6", help="Receiver backbone when no --receiver")
    ap.add_argument("--transmitter", dest="transmitter_dir", default="", help="saved Transmitter folder")
    ap.add_argument("--receiver", dest="receiver_dir", default="", help="saved Receiver folder")
    ap.add_argument("--lm", default="", help="R1 LM (default: --backbone)")
    ap.add_argument("--data-dir", default=None, help="PERSONA-CHAT folder; none = the shipped sample")
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

    ap = argparse.ArgumentParser(prog="python -m p2bot_utils chat", description=chat.__doc__)
    talk_cli.chat_arguments(ap)
    try:
        talk_cli.run_chat(ap.parse_args(list(argv)), talk_cli.stdin_lines(), lambda t: print(t, flush=True))
    except (OSError, ValueError) as e:
        return _fail("chat", e)
    return 0


def watch(argv: Sequence[str]) -> int:
    """``watch --model DIR --receiver DIR [--before DIR] [--turns N --seed S --html OUT]``: two Transmitters
    self-play one dialogue on a persona pair drawn with the seed; prints the transcript, R1 / R2 / R3 / R per
    turn and each side's guess of the other's persona; ``--html`` adds the Receiver's heat map after every
    utterance. ``--before`` (the supervised model) plays the same pair beside ``--model``."""
    from p2bot_utils import talk_cli  # lazy: see the module docstring

    ap = argparse.ArgumentParser(prog="python -m p2bot_utils watch", description=watch.__doc__)
    talk_cli.watch_arguments(ap)
    try:
        talk_cli.run_watch(ap.parse_args(list(argv)), lambda t: print(t, flush=True))
    except (OSError, ValueError) as e:
        return _fail("watch", e)
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
    "chat": (chat, "talk to a saved Transmitter (REPL, piped input too): --model DIR [--persona ...] [--receiver DIR]"),
    "watch": (watch, "watch two Transmitters self-play: --model DIR --receiver DIR [--before DIR] [--html OUT]"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help"}:
        print("usage: python -m p2bot_utils COMMAND [ARGS]\n\ncommands:")
        for name, (_, help_) in sorted(COMMANDS.items()):
            print(f"  {name:<24}{help_}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"p2bot_utils: unknown command {name!r}; run with --help for the list", file=sys.stderr)
        return 2
    return int(COMMANDS[name][0](rest) or 0)
