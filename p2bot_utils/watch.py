"""Watch two Transmitters self-play and see what the Receiver perceives (notebook 06, ``python -m p2bot_utils
watch``).

One dialogue x^A_1, a^B_1, ..., x^A_N, a^B_N is played exactly as in self-play (``selfplay.rollout``: A opens
with an utterance from the data and answers with beam search, B is the policy), then judged as self-play
judges it: R1, R2, R3 and R of every a^B_n (``rewards.compute_rewards``, Eq. 6-10), the Receiver's relevance
U (Eq. 11) of every utterance so far against both personas after each utterance (Figure 6 for a whole
dialogue), and, at the end, the persona each side "guessed" for the other: the candidate persona that the
Receiver finds best revealed (Eq. 14) by the other side's utterances. ``write_html`` renders one or more
watched dialogues (before / after self-play, side by side) as one self-contained HTML file.
"""
from __future__ import annotations

import base64
import html
import io
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from p2bot_utils import plots
from p2bot_utils import rewards as rw
from p2bot_utils import selfplay as sp
from p2bot_utils.profile import atomic_write_text
from p2bot_utils.talk import candidate_personas


@dataclass
class Setup:
    """What both watched dialogues share: the persona pair, A's opening and the candidate personas."""

    persona_a: tuple[str, ...]
    persona_b: tuple[str, ...]
    opening: str
    candidates: list[tuple[str, ...]]  # persona_a and persona_b first
    seed: int


def draw_setup(pool, openings: Sequence[str], seed: int, n_candidates: int = 8) -> Setup:
    """A persona pair from two persona groups, an opening and ``n_candidates`` candidate personas (the pair
    among them), all drawn with ``seed``."""
    rng = random.Random(seed)
    (pa, pb), = sp.draw_persona_pairs(pool, 1, rng)
    opening = rng.choice(list(openings))
    return Setup(pa, pb, opening, candidate_personas(pool, max(n_candidates, 2), seed, first=(pa, pb)), seed)


@dataclass
class Watched:
    """One judged self-play dialogue. ``utterances`` alternate A, B; ``rewards`` has one row per B turn;
    ``relevance`` is U (T, |persona_a| + |persona_b|); ``guesses`` one row per guessing side."""

    name: str
    setup: Setup
    utterances: list[tuple[str, str]]
    rewards: pd.DataFrame
    relevance: np.ndarray
    guesses: pd.DataFrame

    def labels(self, upto: int | None = None) -> list[str]:
        """``A1: text`` row labels of the first ``upto`` utterances."""
        counts: dict[str, int] = {}
        out = []
        for who, text in self.utterances[:upto]:
            counts[who] = counts.get(who, 0) + 1
            out.append(f"{who}{counts[who]}: {text or '(empty)'}")
        return out

    def transcript(self) -> str:
        lines = [f"[{self.name}]", f"A persona: {' | '.join(self.setup.persona_a)}",
                 f"B persona: {' | '.join(self.setup.persona_b)}"]
        return "\n".join(lines + [f"  {label}" for label in self.labels()])


@torch.no_grad()
def watch_dialogue(name: str, policy, user, judges: rw.RewardModels, setup: Setup, config: sp.SelfPlayConfig,
                   sample: bool = False) -> Watched:
    """Play one dialogue (B = ``policy``, A = ``user``; B decodes greedily, or samples from torch seed
    ``setup.seed`` with ``sample``) and judge it as self-play does."""
    torch.manual_seed(setup.seed)
    ro = sp.rollout(policy, user, [setup.persona_a], [setup.persona_b], [setup.opening], config,
                    agent_greedy=not sample)
    comps = rw.compute_rewards(ro, judges, config)
    utterances = [(who, text) for x, a in zip(ro.user[0], ro.agent[0]) for who, text in (("A", x), ("B", a))]
    rows = [{"turn n": n + 1, "a^B_n": ro.agent[0][n],
             **{k: float(comps[k][0, n]) for k in ("r1", "r2", "r3", "reward") if k in comps}}
            for n in range(config.n_turns)]
    receiver = judges.receiver
    texts = [t for _, t in utterances]
    U = torch.cat([receiver.relevance_matrix(texts, setup.persona_a),
                   receiver.relevance_matrix(texts, setup.persona_b)], dim=1).numpy()  # (T, m_a + m_b)
    return Watched(name, setup, utterances, pd.DataFrame(rows), U, guesses(receiver, utterances, setup))


def guesses(receiver, utterances: Sequence[tuple[str, str]], setup: Setup) -> pd.DataFrame:
    """Which persona each side "guessed" for the other: the candidate whose Eq. 14 score c against the other
    side's utterances is highest, and where the true persona ranks."""
    rows = []
    for guesser, other, truth in (("B", "A", 0), ("A", "B", 1)):
        said = [t for who, t in utterances if who == other]
        c = receiver.cumulative_scores(said, setup.candidates)  # (P,)
        order = c.argsort(descending=True).tolist()
        best = order[0]
        rows.append({"guesser": guesser, "of": f"{other}'s persona", "guess": " | ".join(setup.candidates[best]),
                     "correct": best == truth, "true persona rank": 1 + order.index(truth),
                     "candidates": len(setup.candidates), "c(guess)": float(c[best]), "c(true)": float(c[truth])})
    return pd.DataFrame(rows)


def heatmap_figure(watched: Sequence[Watched], upto: int | None = None):
    """The relevance heat maps of the first ``upto`` utterances, one panel per watched dialogue."""
    T = len(watched[0].utterances) if upto is None else upto
    m = watched[0].relevance.shape[1]
    fig, axes = plt.subplots(1, len(watched), figsize=((0.7 * m + 4.5) * len(watched), 0.55 * T + 3),
                             layout="constrained", squeeze=False)
    for ax, w in zip(axes[0], watched):
        plots.dialogue_heatmap(w.relevance[:T], w.labels(T), w.setup.persona_a, w.setup.persona_b, ax=ax,
                               title=f"{w.name}: relevance U after {T} utterance(s)", wrap=30)
    return fig


def png_bytes(fig, dpi: int = 90) -> bytes:
    """A figure as PNG bytes, closed afterwards (shown the same under any matplotlib backend)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return buf.getvalue()


def _png(fig) -> str:
    return base64.b64encode(png_bytes(fig)).decode("ascii")


def render_html(watched: Sequence[Watched], title: str = "P²Bot self-play, watched") -> str:
    """One self-contained page: the personas, each dialogue side by side, the rewards per turn, the guesses and
    the heat map after every utterance (PNG embedded as base64)."""
    e = html.escape
    s = watched[0].setup
    cols = "".join(f"<td style='vertical-align:top;padding:0 1em'><h3>{e(w.name)}</h3>"
                   + "".join(f"<p><b>{e(label.split(':', 1)[0])}:</b>{e(label.split(':', 1)[1])}</p>"
                             for label in w.labels())
                   + "<h4>Rewards of B's turns (Eq. 6-10)</h4>" + w.rewards.to_html(index=False, float_format="%.3f")
                   + "<h4>Persona guesses (Receiver, Eq. 14)</h4>" + w.guesses.to_html(index=False, float_format="%.3f")
                   + "</td>" for w in watched)
    maps = "".join(f"<h4>after utterance {t}</h4><img alt='relevance heat map after utterance {t}' "
                   f"src='data:image/png;base64,{_png(heatmap_figure(watched, t))}'>"
                   for t in range(1, len(watched[0].utterances) + 1))
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{e(title)}</title>"
            "<style>body{font-family:sans-serif;max-width:100em;margin:1em auto}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:2px 6px;font-size:90%}img{max-width:100%}</style></head><body>"
            f"<h1>{e(title)}</h1><p><b>A's persona:</b> {e(' | '.join(s.persona_a))}<br>"
            f"<b>B's persona:</b> {e(' | '.join(s.persona_b))}<br><b>seed:</b> {s.seed}</p>"
            f"<table><tr>{cols}</tr></table><h2>What the Receiver perceives, utterance by utterance "
            f"(Eq. 11)</h2>{maps}</body></html>\n")


def write_html(path: str | Path, watched: Sequence[Watched], title: str = "P²Bot self-play, watched") -> Path:
    """``render_html`` written atomically to ``path``."""
    return atomic_write_text(path, render_html(watched, title))
