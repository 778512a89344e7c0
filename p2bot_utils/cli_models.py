"""The command-line front-ends of the models: ``train-transmitter``, ``evaluate-transmitter``, ``train-receiver``
and ``probe`` (dispatched by ``cli``). Each parses its arguments and calls the logic modules, imported inside the
command (``# lazy:``: ``--help`` must not wait seconds for torch). A user error propagates to ``cli.main``,
which reports it in one line (``errors.report``).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Sequence

from p2bot_utils.errors import OneLineParser


def _at_least(low: int):
    """An argparse type: an int >= ``low`` (a negative count would silently mean "all")."""
    def parse(text: str) -> int:
        value = int(text)
        if value < low:
            raise ValueError(text)
        return value
    parse.__name__ = f"int >= {low}"
    return parse


def _say_data(split) -> None:
    """Which data a command used, on stderr (stdout may be JSON)."""
    info = split.info
    print(f"data: {info['data_dir']} ({split.source}{', found by ' + info['found_by'] if 'found_by' in info else ''}),"
          f" {info.get('mode', '')} personas", file=sys.stderr)


# --- the Transmitter -----------------------------------------------------------------------------------
def train_transmitter(argv: Sequence[str]) -> int:
    """``train-transmitter --config PROFILE [--variant full|no_next|no_persona] [--data-dir DIR]``."""
    from p2bot_utils import profile  # lazy: see the module docstring
    from p2bot_utils.data import load_split_data
    from p2bot_utils.transmitter_train import VARIANTS, TransmitterTrainConfig, train_variant

    ap = OneLineParser(prog="python -m p2bot_utils train-transmitter")
    ap.add_argument("--config", required=True, help="profile name or YAML file (configs/<profile>.yaml)")
    ap.add_argument("--variant", default="full", choices=list(VARIANTS))
    ap.add_argument("--data-dir", default=None, help="overrides the profile's data_dir (and its use_sample)")
    ap.add_argument("--runs-dir", default="", help="where the models go (default: runs/<profile>[-sample]/)")
    ap.add_argument("--results-dir", default="", help="where the CSV log goes (default: results/<profile>[-sample]/)")
    args = ap.parse_args(list(argv))
    params = profile.load_params(args.config)
    profile.set_seed(params.get("seed", 0))
    data = load_split_data(args.data_dir or params.get("data_dir") or None, mode=params["transmitter_mode"],
                           seed=params.get("seed", 0), fractions=params.get("split_fractions", (0.8, 0.1, 0.1)),
                           use_sample=params.get("use_sample", False), download=False,
                           persona_clusters=params.get("persona_clusters") or None)
    _say_data(data)
    results_dir, _ = profile.output_dirs(params["profile"], data.source, results_dir=args.results_dir,
                                         figures_dir=args.results_dir or "")
    paths = profile.RunPaths(args.runs_dir or profile.runs_dir(params["profile"], data.source))
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

    ap = OneLineParser(prog="python -m p2bot_utils evaluate-transmitter")
    ap.add_argument("--model", required=True, help="a saved Transmitter folder (Transmitter.save_pretrained)")
    ap.add_argument("--data-dir", default=None, help="PERSONA-CHAT / ConvAI2 folder (default: P2BOT_DATA_DIR, "
                    "then ./data, else the shipped sample, said on stderr)")
    ap.add_argument("--use-sample", action="store_true", help="the shipped synthetic sample")
    ap.add_argument("--mode", default="original", choices=["original", "revised"])
    ap.add_argument("--split", default="dev", choices=["dev", "test", "all"], help="all: every episode of the "
                    "validation file, no split (the whole folder when it holds only validation files)")
    ap.add_argument("--max-turns", type=_at_least(1), default=None, help="seeded subsample of turns")
    ap.add_argument("--gen-turns", type=_at_least(1), default=None, help="generate replies on the first N of them")
    ap.add_argument("--alpha", type=float, default=0.1, help="Eq. 3 mixing weight (1 = Eq. 2)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-generate", action="store_true")
    ap.add_argument("--jsonl", default=None, help="write the generated replies here")
    ap.add_argument("--json", action="store_true", help="print the metrics as one JSON object")
    args = ap.parse_args(list(argv))
    if not Path(args.model).is_dir():
        ap.error(f"--model {args.model}: no such folder")
    data = load_split_data(args.data_dir, mode=args.mode, seed=args.seed, use_sample=args.use_sample, download=False)
    _say_data(data)
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
    from p2bot_utils import profile  # lazy: see the module docstring
    from p2bot_utils.receiver import Receiver, ReceiverConfig
    from p2bot_utils.receiver_train import train_receiver as train
    from p2bot_utils.sides import build_examples, load_sides, pool_from_sides
    from p2bot_utils.training import TrainConfig

    ap = OneLineParser(prog="python -m p2bot_utils train-receiver", description=train_receiver.__doc__)
    ap.add_argument("--out", required=True, help="folder for the saved Receiver (checkpoints in OUT.train)")
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
    make = ReceiverConfig.released_code if args.released_code else ReceiverConfig
    config = make(backbone=args.backbone, max_length=args.max_length, train_layers=args.train_layers)
    split = load_sides(args.data_dir or None, args.mode, args.seed, use_sample=args.use_sample)
    _say_data(split)
    examples = build_examples(split.train, pool_from_sides(split.train), config.distractor, args.seed)
    tc = TrainConfig(out_dir=str(profile.training_dir(args.out)), lr=args.lr, num_epochs=args.epochs,
                     max_steps=args.max_steps, batch_size=args.batch_size, seed=args.seed)
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

    ap = OneLineParser(prog="python -m p2bot_utils probe", description=probe.__doc__)
    ap.add_argument("--receiver", required=True,
                    help="a saved Receiver folder, 'zero-shot:BACKBONE', or 'none' (IR and Random only)")
    ap.add_argument("--zero-shot", default="", help="also score an untrained Receiver on this backbone name")
    ap.add_argument("--data-dir", default="", help="ParlAI files folder ('' = P2BOT_DATA_DIR / ./data)")
    ap.add_argument("--use-sample", action="store_true", help="the shipped synthetic sample")
    ap.add_argument("--mode", choices=("original", "revised"), default="original")
    ap.add_argument("--split", choices=("train", "dev", "test", "all"), default="test",
                    help="all: every dialogue side of the validation file, no split")
    ap.add_argument("--n-candidates", type=_at_least(2), default=32)
    ap.add_argument("--mrr-pool", choices=("candidates", "all"), default="candidates")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = ap.parse_args(list(argv))
    split = load_sides(args.data_dir or None, args.mode, args.seed, use_sample=args.use_sample)
    _say_data(split)
    items, sentences = probing.probe_setup(split, args.split, args.n_candidates, args.seed)
    scorers: dict[str, object] = {"Random": probing.RandomScorer(), "IR": probing.IRScorer(probing.ir_corpus(items))}
    for label, spec in (("Receiver (untrained)", f"zero-shot:{args.zero_shot}" if args.zero_shot else "none"),
                        ("Receiver", args.receiver)):
        scorer = probing.load_scorer(spec)
        if scorer is not None:
            scorers[label] = scorer
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
