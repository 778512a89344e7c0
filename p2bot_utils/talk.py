"""Talk to a trained Transmitter and see what the Receiver perceives of you (notebook 06, ``python -m
p2bot_utils chat``).

A ``ChatSession`` holds the bot's persona and the dialogue so far. Each bot reply comes from beam search
re-ranked by Eq. 3, and carries the two parts of its score for every beam: the length-normalised
log-likelihood (1/|y|) log p(y|s) and the NUP head's log p(y=1|s, y). After each of your utterances the
Receiver ranks candidate personas by how well everything you said so far reveals them (Eq. 14), your own
among them when you play one: what P²Bot's R3 reward is built on, seen from the other side of the table.
"""
from __future__ import annotations

import html
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from p2bot_utils import plots, transmitter as tx
from p2bot_utils.decoding import generate_replies
from p2bot_utils.profile import MODEL_FOLDERS, RunPaths
from p2bot_utils.receiver import CONFIG_NAME as RECEIVER_CONFIG, Receiver

SELFPLAY_VARIANTS = ("rs1", "rs1_rs2", "p2bot")
SUPERVISED_VARIANTS = ("full", "no_next", "no_persona")
COMMANDS_HELP = "/persona S1 | S2 | ... (or a pool number): the bot's new persona; /reset; /quit; /help"


class ModelFolderError(ValueError):
    """A model folder is missing or is not the kind of saved model expected; the message is one line."""


def _one_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"


MODEL_KINDS = {"Transmitter": (tx.CONFIG_FILE, "notebook 01 or 03, e.g. ./run_all.sh --profile smoke"),
               "Receiver": (RECEIVER_CONFIG, "notebook 02")}


def check_folder(folder: str | Path, kind: str) -> Path:
    """``folder`` if it holds a saved ``kind`` (Transmitter | Receiver), else ``ModelFolderError`` in one line.
    Cheap: callers check every folder before loading any model."""
    d = Path(folder)
    marker, trained_by = MODEL_KINDS[kind]
    if not d.is_dir():
        raise ModelFolderError(f"{d}: no such folder (a saved {kind} is expected; train one with {trained_by})")
    if not (d / marker).is_file():
        raise ModelFolderError(f"{d}: not a saved {kind} (no {marker} in it)")
    return d


def load_transmitter(folder: str | Path, device: str = "cpu") -> tx.Transmitter:
    """A saved Transmitter (``Transmitter.save_pretrained``), or ``ModelFolderError`` naming the folder."""
    d = check_folder(folder, "Transmitter")
    try:
        return tx.Transmitter.from_pretrained(d).to(device).eval()
    except Exception as e:  # a corrupt folder: say which and why, in one line
        raise ModelFolderError(f"{d}: cannot load the Transmitter ({_one_line(e)})") from e


def load_receiver(folder: str | Path, device: str = "cpu") -> Receiver:
    """A saved Receiver (``Receiver.save_pretrained``), or ``ModelFolderError`` naming the folder."""
    d = check_folder(folder, "Receiver")
    try:
        return Receiver.from_pretrained(d, device=device).eval()
    except Exception as e:
        raise ModelFolderError(f"{d}: cannot load the Receiver ({_one_line(e)})") from e


def resolve_model(spec: str, paths: RunPaths) -> Path:
    """A model name or folder -> its folder: ``p2bot`` / ``rs1`` / ``rs1_rs2`` (self-play, notebook 03),
    ``full`` (P²Bot-S) / ``no_next`` / ``no_persona`` (notebook 01) under ``paths``, else ``spec`` as a path."""
    if spec in SELFPLAY_VARIANTS:
        return paths.selfplay(spec)
    if spec in SUPERVISED_VARIANTS:
        return paths.transmitter(spec)
    return Path(spec)


def paper_label(spec: str) -> str:
    """The paper's name of a model given as in ``resolve_model`` (P²Bot-S, +RS.1, ...), else its folder name."""
    if spec in SELFPLAY_VARIANTS or spec in SUPERVISED_VARIANTS:
        return plots.paper_name(spec)
    by_folder = {folder: variant for (kind, variant), folder in MODEL_FOLDERS.items() if kind != "receiver"}
    name = Path(spec).name or spec
    return plots.paper_name(by_folder[name]) if name in by_folder else name


def parse_persona(text: str) -> tuple[str, ...]:
    """Persona sentences typed as one line (``|`` between sentences) or one sentence per line."""
    sentences = tuple(s.strip() for s in text.replace("\n", "|").split("|") if s.strip())
    if not sentences:
        raise ValueError("a persona needs at least one sentence (separate sentences with '|')")
    return sentences


@dataclass
class BotTurn:
    """One exchange: what you said, the bot's reply, every beam with its Eq. 3 parts, and the Receiver's
    ranking of the candidate personas from all you said so far (``perception``: (candidate, c) best first)."""

    user: str
    reply: str
    beams: list[str]
    lm_norm: list[float]
    nup_logp: list[float] | None
    eq3: list[float]
    chosen: int
    perception: list[tuple[int, float]] = field(default_factory=list)


class ChatSession:
    """A conversation with a Transmitter that plays ``persona``. ``receiver`` (optional) perceives your persona
    among ``candidates``; ``user_persona`` is the index of the one you play in it (None: you play none)."""

    def __init__(self, model: tx.Transmitter, persona: Sequence[str], *, receiver: Receiver | None = None,
                 candidates: Sequence[Sequence[str]] = (), user_persona: int | None = None, alpha: float = 0.1,
                 num_beams: int = 2, max_new_tokens: int = 32):
        if user_persona is not None and not 0 <= user_persona < len(candidates):
            raise ValueError(f"user_persona={user_persona}: not one of the {len(candidates)} candidates")
        self.model, self.receiver = model, receiver
        self.candidates = [tuple(c) for c in candidates]
        self.user_persona = user_persona
        self.alpha, self.num_beams = alpha, num_beams
        self.max_new_tokens = min(max_new_tokens, model.config.max_reply_tokens)
        self.set_persona(persona)

    def set_persona(self, persona: Sequence[str]) -> None:
        """A new persona for the bot; the conversation starts afresh."""
        self.persona = tuple(s.strip() for s in persona if s.strip())
        if not self.persona:
            raise ValueError("the bot's persona needs at least one sentence")
        self.reset()

    def reset(self) -> None:
        self.history: list[str] = []
        self.turns: list[BotTurn] = []

    @property
    def said(self) -> list[str]:
        """Everything you said so far (the side the Receiver reads)."""
        return [t.user for t in self.turns]

    @torch.no_grad()
    def say(self, text: str) -> BotTurn:
        """Your utterance -> the bot's reply (Eq. 3 over the beams) and the Receiver's new perception of you."""
        text = " ".join(text.split())
        if not text:
            raise ValueError("say something: the message is empty")
        self.history.append(text)
        out = generate_replies(self.model, [self.persona], [list(self.history)], num_beams=self.num_beams,
                               max_new_tokens=self.max_new_tokens, alpha=self.alpha, return_beams=True)[0]
        lm, nup = out["lm_norm"], out["nup_logp"]
        eq3 = lm if nup is None else [self.alpha * a + (1 - self.alpha) * b for a, b in zip(lm, nup)]
        self.history.append(out["reply"])
        turn = BotTurn(text, out["reply"], out["beams"], lm, nup, eq3, out["chosen"])
        self.turns.append(turn)
        turn.perception = self.perceive()
        return turn

    @torch.no_grad()
    def perceive(self) -> list[tuple[int, float]]:
        """Eq. 14: c(your utterances so far, candidate persona) for every candidate, best first."""
        if self.receiver is None or not self.candidates or not self.said:
            return []
        c = self.receiver.cumulative_scores(self.said, self.candidates).tolist()
        return sorted(enumerate(c), key=lambda kv: -kv[1])

    def your_rank(self, turn: BotTurn) -> int | None:
        """Where the persona you play stands in the Receiver's ranking after ``turn`` (1 = perceived)."""
        if self.user_persona is None or not turn.perception:
            return None
        return 1 + [i for i, _ in turn.perception].index(self.user_persona)


def _short(persona: Sequence[str], n: int = 2) -> str:
    return " ".join(persona[:n]) + (" …" if len(persona) > n else "")


def format_turn(session: ChatSession, turn: BotTurn, top: int = 3) -> str:
    """The terminal view of one exchange: the reply, each beam's Eq. 3 parts, the Receiver's top guesses."""
    lines = [f"bot: {turn.reply or '(empty reply)'}"]
    for k, beam in enumerate(turn.beams):
        nup = "n/a (−Next)" if turn.nup_logp is None else f"{turn.nup_logp[k]:.3f}"
        mark = "*" if k == turn.chosen else " "
        lines.append(f"  {mark} beam {k + 1}: Eq.3 {turn.eq3[k]:.3f} = {session.alpha:g}·lm {turn.lm_norm[k]:.3f} "
                     f"+ {1 - session.alpha:g}·NUP log p(y=1) {nup}  | {beam or '(empty)'}")
    if turn.perception:
        rank = session.your_rank(turn)
        head = f"  Receiver, from your {len(session.said)} utterance(s), among {len(session.candidates)} personas"
        lines.append(head + ("" if rank is None else f": yours ranks {rank}") + ":")
        for i, c in turn.perception[:top]:
            you = "  <- yours" if i == session.user_persona else ""
            lines.append(f"    c={c:7.3f}  #{i}: {_short(session.candidates[i])}{you}")
    return "\n".join(lines)


def turn_html(session: ChatSession, turn: BotTurn, top: int = 3) -> str:
    """The notebook view of one exchange (HTML; every text escaped)."""
    e, bold = html.escape, " style='font-weight:bold'"
    rows = "".join(
        f"<tr{bold if k == turn.chosen else ''}><td>{e(b or '(empty)')}</td>"
        f"<td>{turn.lm_norm[k]:.3f}</td><td>{'n/a' if turn.nup_logp is None else f'{turn.nup_logp[k]:.3f}'}</td>"
        f"<td>{turn.eq3[k]:.3f}</td></tr>" for k, b in enumerate(turn.beams))
    parts = [f"<div class='p2bot-you'><b>you:</b> {e(turn.user)}</div>",
             f"<div class='p2bot-bot'><b>bot:</b> <span class='p2bot-reply'>{e(turn.reply or '(empty reply)')}"
             f"</span></div>",
             "<table class='p2bot-beams' style='font-size:85%'><tr><th>beam (chosen in bold)</th>"
             "<th>(1/|y|) log p(y|s)</th><th>NUP log p(y=1)</th><th>Eq. 3 score</th></tr>" + rows + "</table>"]
    if turn.perception:
        rank = session.your_rank(turn)
        guesses = "".join(f"<li>c = {c:.3f}: #{i} {e(_short(session.candidates[i]))}"
                          f"{' <b>(yours)</b>' if i == session.user_persona else ''}</li>"
                          for i, c in turn.perception[:top])
        parts.append(f"<div class='p2bot-perception' style='font-size:85%'>Receiver's perception of you "
                     f"(Eq. 14, {len(session.candidates)} candidate personas"
                     f"{'' if rank is None else f'; yours ranks {rank}'}):<ol>{guesses}</ol></div>")
    return "<div class='p2bot-turn' style='margin-bottom:0.8em'>" + "".join(parts) + "</div>"


def run_repl(session: ChatSession, lines, write, pool: Sequence[Sequence[str]] = ()) -> int:
    """The terminal loop over ``lines`` (stdin): utterances and the commands of ``COMMANDS_HELP``. ``write``
    prints one block. Returns the number of bot replies."""
    replies = 0
    for raw in lines:
        line = raw.strip()
        if not line:
            continue
        if line in ("/quit", "/exit"):
            break
        if line == "/help":
            write(COMMANDS_HELP)
        elif line == "/reset":
            session.reset()
            write("(dialogue reset; the bot keeps its persona)")
        elif line.startswith("/persona"):
            arg = line[len("/persona"):].strip()
            try:
                persona = pool[int(arg)] if arg.isdigit() and int(arg) < len(pool) else parse_persona(arg)
                session.set_persona(persona)
                write("bot persona: " + " | ".join(session.persona) + "\n(dialogue reset)")
            except ValueError as e:
                write(f"/persona: {e}")
        elif line.startswith("/"):
            write(f"unknown command {line.split()[0]!r}; {COMMANDS_HELP}")
        else:
            write(format_turn(session, session.say(line)))
            replies += 1
    return replies


def candidate_personas(pool, n: int, seed: int = 0, first: Sequence[Sequence[str]] = ()) -> list[tuple[str, ...]]:
    """``first`` followed by personas of the pool (``PersonaEntry``) from groups none of the chosen share, up
    to ``n`` in all, drawn with ``seed``: the candidates among which the Receiver guesses a persona."""
    chosen = [tuple(p) for p in first]
    taken = {e.group for e in pool if tuple(e.sentences) in chosen}
    order = list(range(len(pool)))
    random.Random(seed).shuffle(order)
    for i in order:
        if len(chosen) >= n:
            break
        if pool[i].group not in taken:
            chosen.append(tuple(pool[i].sentences))
            taken.add(pool[i].group)
    return chosen
