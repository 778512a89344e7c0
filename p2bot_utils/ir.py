"""The IR baseline: TF-IDF retrieval of the reply among the 20 candidates (the ``IR`` row of Table 1).

The query is what a retrieval model may see when the own speaker replies: its persona sentences and the
dialogue so far, ending with the partner's last utterance. Each candidate is scored by the cosine similarity
of its TF-IDF vector with the query's; the IDF statistics come from a fitting corpus (the training
utterances and personas), as in ParlAI's IR baseline. No learning, no model code.

Episodes are duck-typed (``own_persona``, ``turns`` with ``partner`` / ``reply`` / ``candidates``, gold
LAST), so this module needs nothing of ``data`` either.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from tqdm.auto import tqdm

from p2bot_utils import metrics
from p2bot_utils.episodes import SILENCE

WORDS = r"(?u)\b\w+\b"  # every word, one letter included (the IR baseline of Table 1)
WORDS_2PLUS = r"(?u)\b\w\w+\b"  # scikit-learn's default: words of two letters or more (persona probing)
# persona probing (Table 5) and the Receiver's hard distractors: scikit-learn's default weighting (raw tf)
PERSONA_TFIDF = dict(sublinear_tf=False, token_pattern=WORDS_2PLUS)


class TfidfRanker:
    """TF-IDF vectoriser fitted once on a corpus; scores candidates against a query by cosine similarity."""

    def __init__(self, corpus: Iterable[str], sublinear_tf: bool = True, token_pattern: str = WORDS):
        texts = [t for t in corpus if t and t != SILENCE]
        if not texts:
            raise ValueError("ir.TfidfRanker: the fitting corpus is empty; pass the training utterances")
        # unigrams on lowercased word tokens; sublinear tf damps repeated words in long contexts
        self.vectorizer = TfidfVectorizer(lowercase=True, sublinear_tf=sublinear_tf, token_pattern=token_pattern)
        self.vectorizer.fit(texts)

    def scores(self, query: str, candidates: Sequence[str]) -> np.ndarray:
        """Cosine similarity of each candidate with the query, shape (C,); rows are L2-normalised by sklearn."""
        if not candidates:
            raise ValueError("ir.TfidfRanker.scores: no candidates given")
        q = self.vectorizer.transform([query])  # (1, V)
        c = self.vectorizer.transform(list(candidates))  # (C, V)
        return np.asarray((c @ q.T).todense()).reshape(-1)  # (C,)


def episode_corpus(episodes: Iterable) -> list[str]:
    """Every persona sentence and utterance of ``episodes`` (the IDF corpus; use the TRAINING split)."""
    out: list[str] = []
    for ep in episodes:
        out.extend(ep.own_persona)
        for t in ep.turns:
            out.extend((t.partner, t.reply))
    return out


def build_query(persona: Sequence[str], history: Sequence[str], use_persona: bool = True) -> str:
    """The retrieval query: persona sentences (optional) and the dialogue history, silence markers dropped."""
    parts = list(persona) if use_persona else []
    parts += [u for u in history if u and u != SILENCE]
    return " ".join(parts)


def ir_candidate_scores(ranker: TfidfRanker, persona: Sequence[str], history: Sequence[str],
                        candidates: Sequence[str], use_persona: bool = True) -> np.ndarray:
    """TF-IDF cosine score of every candidate against persona + context, shape (C,); higher is better."""
    return ranker.scores(build_query(persona, history, use_persona), candidates)


def ir_rank_candidates(ranker: TfidfRanker, persona: Sequence[str], history: Sequence[str],
                       candidates: Sequence[str], use_persona: bool = True) -> list[int]:
    """Candidate indices, best first (a stable sort: on ties the earlier candidate wins)."""
    s = ir_candidate_scores(ranker, persona, history, candidates, use_persona)
    return [int(i) for i in np.argsort(-s, kind="stable")]


def turn_history(episode, turn_index: int) -> list[str]:
    """The utterances before the own speaker's reply at ``turn_index``: p0, r0, p1, r1, ..., p_t."""
    hist: list[str] = []
    for t in episode.turns[:turn_index]:
        hist.extend((t.partner, t.reply))
    hist.append(episode.turns[turn_index].partner)
    return hist


def evaluate_ir(ranker: TfidfRanker, episodes: Sequence, turns: Sequence[tuple[int, int]] | None = None,
                use_persona: bool = True) -> dict:
    """Hits@1 and MRR over the 20 candidates (gold last), and F1 / BLEU of the top candidate, for the IR row.

    ``turns``: (episode index, turn index) pairs to evaluate (the same subsample as the other systems);
    ``None`` = every turn. The gold wins ties (``metrics.rank_of_gold``). Each metric is
    ``{"mean", "stderr", "n"}`` with fractions in [0, 1].
    """
    pairs = list(turns) if turns is not None else [(i, j) for i, ep in enumerate(episodes)
                                                   for j in range(len(ep.turns))]
    ranks, f1s, bleus = [], [], []
    for i, j in tqdm(pairs, desc="IR baseline", leave=False):
        ep, turn = episodes[i], episodes[i].turns[j]
        if len(turn.candidates) < 2 or turn.candidates[-1] != turn.reply:
            raise ValueError(f"ir.evaluate_ir: episode {ep.episode_id} turn {j}: needs candidates with the gold LAST")
        s = ir_candidate_scores(ranker, ep.own_persona, turn_history(ep, j), turn.candidates, use_persona)
        ranks.append(metrics.rank_of_gold(s, len(s) - 1))
        top = turn.candidates[int(np.argmax(s))]
        f1s.append(metrics.f1_score(top, [turn.reply]))
        bleus.append(metrics.bleu_score(top, [turn.reply]))
    if not ranks:
        raise ValueError("ir.evaluate_ir: no turns to evaluate")
    hits = [float(r == 1) for r in ranks]
    out = {}
    for name, vals in (("hits@1", hits), ("mrr", [1.0 / r for r in ranks]), ("f1", f1s), ("bleu", bleus)):
        mean, se = metrics.mean_and_stderr(vals)
        out[name] = {"mean": mean, "stderr": se, "n": len(vals)}
    return out
