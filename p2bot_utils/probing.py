"""Persona probing (paper Sec. 5.4, Table 5): can a model tell, from one speaker's side of a dialogue,
which persona that speaker had?

For every dialogue side of the test split: the true persona and ``n_candidates - 1`` distractor personas
(real personas of other persona groups, drawn with a fixed seed) are ranked by a score.

- **Hits@1** = 1 if the true persona is ranked first among the candidates.
- **MRR** (the paper's "given the dialogue and the complete set of profile sentences"): the candidates'
  sentences are pooled (``mrr_pool="candidates"``; ``"all"`` pools every distinct persona sentence of
  the probe pool); each sentence s gets the score of the one-sentence persona {s}; for every sentence of
  the side's own persona, its rank r is 1 + the number of *other people's* sentences scored above it
  (own sentences do not push each other down, so a perfect model scores 1); the side's MRR is the mean
  of 1/r over its own sentences; the reported MRR is the mean over sides.
- Ties are broken uniformly at random *in expectation*: a true item tied with t competitors and beaten
  by g gets Hits@1 = [g = 0] / (t + 1) and reciprocal rank mean_{r=g+1..g+t+1} 1/r. So **Random** (every
  score equal) is computed exactly, not drawn: Hits@1 = 1/n_candidates, MRR = H_M / M, M = number of
  competitors + 1.

Scorers: Random, **IR** (TF-IDF cosine between the side's utterances and a persona, scikit-learn), and
the **Receiver** (Eq. 14 cumulative score c; trained or its untrained backbone, "zero-shot").
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from p2bot_utils.data_split import select_part
from p2bot_utils.ir import PERSONA_TFIDF, TfidfRanker
from p2bot_utils.metrics import mean_and_stderr
from p2bot_utils.profile import timed_phase
from p2bot_utils.receiver import Receiver, ReceiverConfig, cumulative_score, relevance
from p2bot_utils.sides import DialogueSide, DistractorSampler, SideSplit, pool_from_sides

PAPER_TABLE5 = {  # Hits@1 / MRR in %, paper Table 5 (PERSONA-CHAT test, 32 candidate personas)
    ("Random", "original"): (3.1, 0.2), ("Random", "revised"): (3.1, 0.2),
    ("IR", "original"): (67.5, 20.9), ("IR", "revised"): (9.7, 2.2),
    ("Receiver", "original"): (93.8, 37.5), ("Receiver", "revised"): (78.2, 16.6),
}


@dataclass(frozen=True)
class ProbeItem:
    """One dialogue side with its candidate personas (the true one at ``true_index``)."""

    side: DialogueSide
    candidates: tuple[tuple[str, ...], ...]
    true_index: int


def build_probe_items(sides: Sequence[DialogueSide], pool, n_candidates: int = 32, seed: int = 0) -> list[ProbeItem]:
    """The true persona plus ``n_candidates - 1`` personas of distinct other groups, in a seeded random order."""
    sampler = DistractorSampler(pool, seed)
    items = []
    for s in sides:
        cands = sampler.personas(s.persona, s.group, n_candidates - 1) + [s.persona]
        sampler.rng.shuffle(cands)
        items.append(ProbeItem(s, tuple(cands), cands.index(s.persona)))
    return items


# --- tie-aware ranking metrics (hand-checked in tests/test_probing.py) ---------------------------------
def expected_reciprocal_rank(n_above: int, n_tied: int) -> float:
    """E[1/r] when g competitors score above and t tie: r uniform on g+1 .. g+t+1."""
    return float(np.mean(1.0 / np.arange(n_above + 1, n_above + n_tied + 2)))


def hits_at_1(scores: Sequence[float], true_index: int) -> float:
    """1 if the true candidate scores strictly highest, 1/(t+1) if it ties t others at the top, else 0."""
    s = np.asarray(scores, dtype=float)
    others = np.delete(s, true_index)
    if (others > s[true_index]).any():
        return 0.0
    return 1.0 / (1 + int((others == s[true_index]).sum()))


def own_sentences_mrr(scores: Sequence[float], is_own: Sequence[bool]) -> float:
    """Mean over own sentences of the expected 1/rank among the other people's sentences (see module doc)."""
    s, own = np.asarray(scores, dtype=float), np.asarray(is_own, dtype=bool)
    if not own.any():
        raise ValueError("own_sentences_mrr: no own sentence among the ranked sentences")
    comp = s[~own]
    return float(np.mean([expected_reciprocal_rank(int((comp > x).sum()), int((comp == x).sum())) for x in s[own]]))


# --- scorers: (side, personas) -> scores; (side, sentences) -> scores ----------------------------------
class RandomScorer:
    """Every candidate scores 0: with tie-aware metrics this is the exact Random expectation."""

    name = "Random"

    def personas(self, side: DialogueSide, personas: Sequence[Sequence[str]]) -> np.ndarray:
        return np.zeros(len(personas))

    def sentences(self, side: DialogueSide, sentences: Sequence[str]) -> np.ndarray:
        return np.zeros(len(sentences))


class IRScorer:
    """TF-IDF cosine between the side's utterances (one document) and a persona (its sentences joined).

    The same ``ir.TfidfRanker`` as Table 1's IR baseline, with scikit-learn's default weighting (raw tf,
    words of two letters or more): the settings the Receiver's hard distractors and Table 5 were made with."""

    name = "IR"

    def __init__(self, corpus: Sequence[str]):
        self.ranker = TfidfRanker(corpus, **PERSONA_TFIDF)

    def personas(self, side: DialogueSide, personas: Sequence[Sequence[str]]) -> np.ndarray:
        return self.ranker.scores(" ".join(side.utterances), [" ".join(p) for p in personas])

    def sentences(self, side: DialogueSide, sentences: Sequence[str]) -> np.ndarray:
        return self.ranker.scores(" ".join(side.utterances), sentences)


class ReceiverScorer:
    """Eq. 14 c(x, w) with the receiver's scoring tau; every text is encoded once and cached."""

    name = "Receiver"

    def __init__(self, receiver: Receiver, batch_size: int = 64):
        self.receiver, self.batch_size = receiver.eval(), batch_size
        self.cache: dict[tuple[str, str], torch.Tensor] = {}

    def warm(self, texts: Sequence[str], which: str) -> None:
        """Encode the not-yet-cached texts in batches (tqdm), keyed by (which, text)."""
        todo = sorted(dict.fromkeys(t for t in texts if (which, t) not in self.cache), key=len)  # batches pad less
        for i in tqdm(range(0, len(todo), self.batch_size), desc=f"encode {which}", disable=len(todo) < 256):
            chunk = todo[i: i + self.batch_size]
            with torch.no_grad():
                emb = self.receiver.encode_texts(chunk, which).cpu()  # (b, d)
            self.cache.update({(which, t): e for t, e in zip(chunk, emb)})

    def prepare(self, items: Sequence[ProbeItem], sentences: Sequence[str] = ()) -> None:
        """Encode every utterance and persona sentence the probe will need, in large batches."""
        self.warm([u for it in items for u in it.side.utterances], "impression")
        self.warm([*(s for it in items for p in it.candidates for s in p), *sentences], "persona")

    def _stack(self, texts: Sequence[str], which: str) -> torch.Tensor:
        self.warm(texts, which)
        return torch.stack([self.cache[(which, t)] for t in texts])  # (k, d)

    def _c(self, side: DialogueSide, personas: Sequence[Sequence[str]]) -> np.ndarray:
        H = self._stack(side.utterances, "impression")  # (n, d)
        W = torch.nn.utils.rnn.pad_sequence([self._stack(p, "persona") for p in personas], batch_first=True)
        mask = torch.nn.utils.rnn.pad_sequence([torch.ones(len(p), dtype=torch.bool) for p in personas],
                                               batch_first=True)  # (P, m)
        U = relevance(H.unsqueeze(0), W)  # (P, n, m)
        cfg = self.receiver.config
        return cumulative_score(U, self.receiver.scoring_tau(), None, mask, cfg.utterance_reduce).numpy()

    def personas(self, side: DialogueSide, personas: Sequence[Sequence[str]]) -> np.ndarray:
        return self._c(side, personas)

    def sentences(self, side: DialogueSide, sentences: Sequence[str]) -> np.ndarray:
        return self._c(side, [(s,) for s in sentences])  # c(x, {s}) = mean_i U_is


def margin_accuracy(scorer: ReceiverScorer, examples) -> tuple[float, int]:
    """Share of training-style examples (``sides.build_examples``: ``utterances``, ``persona``, ``distractor``)
    whose true persona scores above the distractor under Eq. 14 (ties count as losses), and their number."""
    if not examples:
        raise ValueError("margin_accuracy: no examples")
    scorer.warm([u for e in examples for u in e.utterances], "impression")
    scorer.warm([s for e in examples for s in (*e.persona, *e.distractor)], "persona")
    wins = [float(c[0] > c[1]) for c in (scorer.personas(e, [e.persona, e.distractor]) for e in examples)]
    return sum(wins) / len(wins), len(wins)


# --- the study ----------------------------------------------------------------------------------------
@timed_phase("probing")
def probe(items: Sequence[ProbeItem], scorer, mrr_pool: str = "candidates",
          all_sentences: Sequence[str] = ()) -> dict:
    """Hits@1 and MRR (fractions, with standard errors and the count) of one scorer over the items."""
    if mrr_pool not in ("candidates", "all"):
        raise ValueError(f"probe: mrr_pool={mrr_pool!r}; expected 'candidates' or 'all'")
    hits, rrs = [], []
    if hasattr(scorer, "prepare"):
        scorer.prepare(items, all_sentences if mrr_pool == "all" else ())
    for it in tqdm(items, desc=f"probe {scorer.name}", leave=False):
        hits.append(hits_at_1(scorer.personas(it.side, it.candidates), it.true_index))
        pool = all_sentences if mrr_pool == "all" else [s for p in it.candidates for s in p]
        sents = list(dict.fromkeys([*it.side.persona, *pool]))
        own = set(it.side.persona)
        rrs.append(own_sentences_mrr(scorer.sentences(it.side, sents), [s in own for s in sents]))
    (h, h_se), (m, m_se) = mean_and_stderr(hits), mean_and_stderr(rrs)
    return {"method": scorer.name, "hits@1": h, "hits@1_se": h_se, "mrr": m, "mrr_se": m_se, "n": len(items),
            "per_item_hits@1": hits, "per_item_mrr": rrs}


def select_score_tau(scorer: "ReceiverScorer", items: Sequence[ProbeItem],
                     grid: Sequence[float] = (0.5, 1.0, 2.0, 5.0, 10.0)) -> tuple[float, dict[float, float]]:
    """Model selection of the scoring tau (Eq. 13 at test time) on held-out items, e.g. the dev sides:
    the grid value with the best mean Hits@1 (ties: the first). Sets it on the receiver and returns
    (tau, {tau: Hits@1}). The paper scores with the final training tau (0.5); this is an option."""
    cfg = scorer.receiver.config
    scorer.prepare(items)
    hits = {}
    for tau in grid:
        cfg.score_tau = float(tau)
        hits[float(tau)] = float(np.mean([hits_at_1(scorer.personas(it.side, it.candidates), it.true_index)
                                          for it in items]))
    cfg.score_tau = max(hits, key=lambda t: (hits[t], -list(hits).index(t)))
    return cfg.score_tau, hits


def ir_corpus(items: Sequence[ProbeItem]) -> list[str]:
    """The documents the IR baseline's TF-IDF statistics come from: every side and every candidate."""
    docs = {" ".join(it.side.utterances) for it in items}
    docs |= {" ".join(p) for it in items for p in it.candidates}
    return sorted(docs)


def run_probe(items: Sequence[ProbeItem], scorers: dict[str, object], mrr_pool: str = "candidates",
              all_sentences: Sequence[str] = ()) -> list[dict]:
    """``probe`` for each named scorer -> one row per scorer (label = the dict key)."""
    rows = []
    for label, scorer in scorers.items():
        row = probe(items, scorer, mrr_pool, all_sentences)
        rows.append({**row, "method": label})
    return rows


def probe_setup(split: SideSplit, part: str = "test", n_candidates: int = 32, seed: int = 0,
                allow_fewer: bool = False) -> tuple[list[ProbeItem], list[str]]:
    """Probe items for one part (distractors: personas of every part, other groups) and the sorted list
    of every distinct persona sentence (for ``mrr_pool="all"``). ``allow_fewer`` (for the shipped sample,
    which has 10 persona groups): every item gets ``min(n_candidates, 1 + the fewest other groups any side
    can draw from)`` candidates, the same number for all; otherwise too small a pool is an error."""
    pool = pool_from_sides([*split.train, *split.dev, *split.test])
    sides = select_part(split, part)  # "all": every side of the validation file
    if allow_fewer and sides:
        sampler = DistractorSampler(pool, seed)
        n_candidates = min(n_candidates, 1 + min(sampler.n_other_groups(s.persona, s.group) for s in sides))
    items = build_probe_items(sides, pool, n_candidates, seed)
    return items, sorted({s for e in pool for s in e.sentences})


def load_scorer(spec: str):
    """``none`` -> None; ``zero-shot:BACKBONE`` -> an untrained Receiver; else a saved Receiver folder."""
    if spec == "none":
        return None
    if spec.startswith("zero-shot:"):
        return ReceiverScorer(Receiver.from_backbone(ReceiverConfig(backbone=spec.split(":", 1)[1])))
    return ReceiverScorer(Receiver.from_pretrained(spec))
