"""The terminal side of notebook 06: arguments and set-up of ``python -m p2bot_utils chat`` and ``watch``
(``cli`` parses and reports; the conversation is ``talk``, the watching ``watch``). A missing or wrong model
folder, data folder or persona number raises ``ValueError`` / ``OSError`` with one line naming it."""
from __future__ import annotations

import argparse
import sys
from typing import Callable, Iterable

from tqdm.auto import tqdm

from p2bot_utils import rewards, selfplay, talk, watch
from p2bot_utils.backbones import load_causal_lm
from p2bot_utils.data import SplitData, load_split_data


def stdin_lines() -> Iterable[str]:
    """Lines typed at a ``you> `` prompt on a terminal; piped input line by line, without prompts."""
    if not sys.stdin.isatty():
        yield from sys.stdin
        return
    while True:
        try:
            yield input("you> ")
        except EOFError:
            return


def load_pool(data_dir: str | None, seed: int) -> SplitData:
    """Personas and openings of a data folder, or of the shipped sample when none is given (nothing downloaded)."""
    return load_split_data(data_dir, seed=seed, use_sample=data_dir is None, download=False)


def chat_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--model", required=True, help="a saved Transmitter folder, e.g. runs/demo/selfplay-p2bot")
    ap.add_argument("--persona", default="", help="the bot's persona: sentences separated by '|'")
    ap.add_argument("--persona-index", type=int, default=0, help="or its number in the persona pool (default 0)")
    ap.add_argument("--receiver", default="", help="a saved Receiver folder: show its perception of your persona")
    ap.add_argument("--you", type=int, default=-1, help="pool number of the persona you play (-1: none)")
    ap.add_argument("--candidates", type=int, default=8, help="personas the Receiver chooses among")
    ap.add_argument("--data-dir", default=None, help="persona pool of this data folder (default: the shipped sample)")
    ap.add_argument("--alpha", type=float, default=0.1, help="Eq. 3's α (1 = Eq. 2)")
    ap.add_argument("--beams", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)


def chat_session(args: argparse.Namespace) -> tuple[talk.ChatSession, list[tuple[str, ...]], list]:
    """(session, pool personas, the persona you play or []) from ``chat_arguments``; folders checked first."""
    talk.check_folder(args.model, "Transmitter")
    if args.receiver:
        talk.check_folder(args.receiver, "Receiver")
    model = talk.load_transmitter(args.model)
    receiver = talk.load_receiver(args.receiver) if args.receiver else None
    entries = load_pool(args.data_dir, args.seed).persona_pool
    pool = [tuple(e.sentences) for e in entries]
    if not 0 <= args.persona_index < len(pool) or not -1 <= args.you < len(pool):
        raise ValueError(f"--persona-index {args.persona_index} / --you {args.you}: the persona pool has "
                         f"{len(pool)} personas (0..{len(pool) - 1}; --you -1 = none)")
    persona = talk.parse_persona(args.persona) if args.persona else pool[args.persona_index]
    you = [pool[args.you]] if args.you >= 0 else []
    session = talk.ChatSession(model, persona, receiver=receiver,
                               candidates=talk.candidate_personas(entries, args.candidates, args.seed, you),
                               user_persona=0 if you else None, alpha=args.alpha, num_beams=args.beams,
                               max_new_tokens=args.max_new_tokens)
    return session, pool, you


def run_chat(args: argparse.Namespace, lines: Iterable[str], write: Callable[[str], None]) -> int:
    """Set up (errors raised before anything is printed), then the REPL. Returns the number of replies."""
    session, pool, you = chat_session(args)
    write("bot persona: " + " | ".join(session.persona))
    if you:
        write("you play: " + " | ".join(you[0]))
    write(talk.COMMANDS_HELP)
    return talk.run_repl(session, lines, write, pool)


def watch_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--model", required=True, help="the Transmitter watched as B, e.g. runs/demo/selfplay-p2bot")
    ap.add_argument("--receiver", required=True, help="a saved Receiver folder (R3, heat maps, guesses)")
    ap.add_argument("--before", default="", help="the supervised Transmitter: plays A, judges R2 and is watched as "
                                                "B beside --model (default: --model plays every part)")
    ap.add_argument("--lm", default="", help="R1's language model (default: the Transmitter's backbone name)")
    ap.add_argument("--turns", type=int, default=3, help="N: B's turns (paper: 3)")
    ap.add_argument("--seed", type=int, default=0, help="draws the persona pair, the opening and the candidates")
    ap.add_argument("--sample", action="store_true", help="B samples (seeded) as in training instead of greedy")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--candidates", type=int, default=8, help="personas each side's guess is chosen among")
    ap.add_argument("--data-dir", default=None, help="personas and openings of this data folder (default: sample)")
    ap.add_argument("--html", default="", help="write a self-contained HTML transcript with the heat maps here")


def run_watch(args: argparse.Namespace, write: Callable[[str], None]) -> list[watch.Watched]:
    """Load everything (errors raised before any play), play and judge, print; ``--html`` writes the page."""
    if args.turns < 1:
        raise ValueError(f"--turns {args.turns}: must be >= 1")
    for folder, kind in ((args.model, "Transmitter"), (args.before, "Transmitter"), (args.receiver, "Receiver")):
        if folder:
            talk.check_folder(folder, kind)
    model = talk.load_transmitter(args.model)
    before = talk.load_transmitter(args.before) if args.before else model
    receiver = talk.load_receiver(args.receiver)
    split = load_pool(args.data_dir, args.seed)
    lm, tokenizer = load_causal_lm(args.lm or before.config.backbone)
    config = selfplay.SelfPlayConfig.variant("p2bot", n_turns=args.turns, n_dialogues=1, batch_size=1, seed=args.seed,
                                             max_new_tokens=min(args.max_new_tokens, model.config.max_reply_tokens))
    setup = watch.draw_setup(split.persona_pool, selfplay.opening_utterances(split.train), args.seed, args.candidates)
    judges = rewards.RewardModels(lm, tokenizer, before, receiver).frozen()
    players = [(f"before: {talk.paper_label(args.before)}", before)] if args.before else []
    players.append((("after: " if args.before else "") + talk.paper_label(args.model), model))
    watched = [watch.watch_dialogue(name, policy, before, judges, setup, config, sample=args.sample)
               for name, policy in tqdm(players, desc="watch", leave=False, disable=None)]
    for d in watched:
        write(d.transcript())
        write(d.rewards.drop(columns="a^B_n").to_string(index=False, float_format="%.3f"))
        write(d.guesses[["guesser", "of", "correct", "true persona rank", "candidates"]].to_string(index=False) + "\n")
    if args.html:
        write(f"watch: transcript with heat maps written to {watch.write_html(args.html, watched)}")
    return watched
