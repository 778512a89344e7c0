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

import argparse
import json
import sys
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from p2bot_utils.ir import WORDS_2PLUS, TfidfRanker
from p2bot_utils.metrics import mean_and_stderr
from p2bot_utils.receiver import Receiver, ReceiverExample, cumulative_score, relevance

SILENCE = "__SILENCE__"

PAPER_TABLE5 = {  # Hits@1 / MRR in %, paper Table 5 (PERSONA-CHAT test, 32 candidate personas)
    ("Random", "original"): (3.1, 0.2), ("Random", "revised"): (3.1, 0.2),
    ("IR", "original"): (67.5, 20.9), ("IR", "revised"): (9.7, 2.2),
    ("Receiver", "original"): (93.8, 37.5), ("Receiver", "revised"): (78.2, 16.6),
}


# --- dialogue sides, their persona groups and the group-disjoint split ------------------------------------
@dataclass(frozen=True)
class DialogueSide:
    """The utterances one speaker said in one dialogue, with that speaker's persona and persona group."""

    episode_id: str
    side: str  # "own" (Episode.own_persona, the replies) | "partner" (partner_persona, partner utterances)
    utterances: tuple[str, ...]
    persona: tuple[str, ...]
    group: str = ""


def dialogue_sides(episodes, groups_of: dict | None = None, originals=None) -> list[DialogueSide]:
    """Both speakers of every episode (``both`` files): the own speaker's replies against own_persona and
    the partner's utterances (without "__SILENCE__") against partner_persona; sides with no persona or
    no utterance are skipped. ``groups_of`` maps an ORIGINAL persona tuple to its group; ``originals`` are
    the same episodes read with original personas (for revised mode), else ``episodes`` themselves."""
    out = []
    for ep, oe in zip(episodes, originals if originals is not None else episodes):
        partner_utts = tuple(t.partner for t in ep.turns if t.partner.strip() and t.partner != SILENCE)
        for side, utts, persona, orig in (
                ("own", tuple(t.reply for t in ep.turns if t.reply.strip()), ep.own_persona, oe.own_persona),
                ("partner", partner_utts, ep.partner_persona, oe.partner_persona)):
            if utts and persona:
                group = (groups_of or {}).get(tuple(orig), "")
                out.append(DialogueSide(ep.episode_id, side, utts, tuple(persona), group))
    return out


@dataclass
class SideSplit:
    """Dialogue sides split by persona group: no group of ``test`` (or ``dev``) has a side in ``train``."""

    train: list[DialogueSide]
    dev: list[DialogueSide]
    test: list[DialogueSide]
    source: str
    info: dict


def _paired_parts(data, orig) -> dict[str, tuple[list, list]]:
    parts = {}
    for name in ("train", "dev", "test"):
        eps, oeps = getattr(data, name), getattr(orig, name)
        if len(eps) != len(oeps) or any(a.turns[0].reply != b.turns[0].reply for a, b in zip(eps, oeps)):
            raise ValueError(f"load_sides: the {name} part differs between the {data.info.get('mode')} and "
                             f"original files ({len(eps)} vs {len(oeps)} episodes)")
        parts[name] = (eps, oeps)
    return parts


def load_sides(data_dir=None, mode: str = "original", seed: int = 0, fractions=(0.8, 0.1, 0.1),
               use_sample: bool = False) -> SideSplit:
    """``data.load_split_data`` turned into dialogue sides, split by persona group.

    Groups come from the ORIGINAL persona lines of own AND partner personas (``data.persona_groups``), so
    both modes share them. A group belongs to the test part if a test episode's own speaker has it (then
    dev, then train): every side of that group — also a partner side inside a train episode — is probed,
    never trained on. Groups seen only as partners go to train.
    """
    from p2bot_utils.data import load_split_data, persona_groups

    data = load_split_data(data_dir or None, mode=mode, seed=seed, fractions=fractions, use_sample=use_sample)
    orig = data if mode == "original" else load_split_data(data.info["data_dir"], mode="original", seed=seed,
                                                           fractions=fractions, use_sample=use_sample)
    parts = _paired_parts(data, orig)
    personas = list(dict.fromkeys(tuple(p) for _, oeps in parts.values() for e in oeps
                                  for p in (e.own_persona, e.partner_persona) if p))
    groups_of = dict(zip(personas, persona_groups(personas)))
    part_of: dict[str, str] = {}
    for name in ("test", "dev", "train"):  # priority: a group touching test is held out
        for e in parts[name][1]:
            part_of.setdefault(groups_of[tuple(e.own_persona)], name)
    out: dict[str, list] = {"train": [], "dev": [], "test": []}
    for eps, oeps in parts.values():
        for s in dialogue_sides(eps, groups_of, oeps):
            out[part_of.get(s.group, "train")].append(s)
    info = {"data_dir": data.info["data_dir"], "mode": mode, "split_method": data.info["split_method"],
            "sides": {k: len(v) for k, v in out.items()},
            "groups": {k: len({s.group for s in v}) for k, v in out.items()}}
    return SideSplit(out["train"], out["dev"], out["test"], data.source, info)


class DistractorSampler:
    """Draws distractor personas that never come from the true persona's group. A pool entry is excluded
    when its group is the true group OR the group of any pool entry sharing a sentence with the true
    persona (so a variant of the same persona is never a distractor, with or without group ids)."""

    def __init__(self, pool, seed: int = 0):
        import random

        self.entries = [(str(e.group), tuple(e.sentences)) for e in pool if len(e.sentences)]
        if not self.entries:
            raise ValueError("DistractorSampler: the persona pool is empty")
        self.sent_groups: dict[str, set] = {}
        for g, sents in self.entries:
            for s in sents:
                self.sent_groups.setdefault(s, set()).add(g)
        self.rng = random.Random(seed)

    def excluded_groups(self, persona: Sequence[str], group: str = "") -> set:
        return ({group} if group else set()) | {g for s in persona for g in self.sent_groups.get(s, ())}

    def _other_groups(self, persona: Sequence[str], group: str = "") -> dict[str, list]:
        """Pool personas a distractor may be drawn from, by group (sorted draws keep it reproducible)."""
        bad, own = self.excluded_groups(persona, group), set(persona)
        by_group: dict[str, list] = {}
        for g, sents in self.entries:
            if g not in bad and not own.intersection(sents):
                by_group.setdefault(g, []).append(sents)
        return by_group

    def n_other_groups(self, persona: Sequence[str], group: str = "") -> int:
        """How many distinct groups a distractor for ``persona`` can come from."""
        return len(self._other_groups(persona, group))

    def personas(self, persona: Sequence[str], group: str = "", k: int = 1,
                 allow_fewer: bool = False) -> list[tuple[str, ...]]:
        """``k`` real personas of k distinct other groups, none sharing a sentence with ``persona``;
        ``allow_fewer``: as many as there are other groups (at least one) when fewer than ``k``."""
        by_group = self._other_groups(persona, group)
        if allow_fewer and by_group:
            k = min(k, len(by_group))
        if len(by_group) < k:
            raise ValueError(f"DistractorSampler: {k} distractors wanted but only {len(by_group)} other persona "
                             f"groups in the pool; use a larger pool or fewer candidates")
        groups = self.rng.sample(sorted(by_group), k)
        return [self.rng.choice(by_group[g]) for g in groups]

    def combination(self, persona: Sequence[str], group: str = "") -> tuple[str, ...]:
        """The released code's distractor: each sentence replaced by a random pool sentence from another
        group; no sentence of ``persona`` is drawn and no sentence twice."""
        bad, own = self.excluded_groups(persona, group), set(persona)
        allowed = sorted({s for g, sents in self.entries if g not in bad for s in sents} - own)
        if len(allowed) < len(persona):
            raise ValueError(f"DistractorSampler: {len(allowed)} usable pool sentences < {len(persona)} needed")
        return tuple(self.rng.sample(allowed, len(persona)))


def build_examples(sides: Sequence[DialogueSide], pool, kind: str = "persona", seed: int = 0,
                   hard_k: int = 1) -> list[ReceiverExample]:
    """One Eq. 12 triple per dialogue side; the distractor (``persona`` | ``combination``) is drawn once,
    with a fixed seed, so a resumed run sees the same examples.

    ``hard_k`` > 1 (a budget option, not the paper's: 1) draws ``hard_k`` personas of distinct other groups
    and keeps the one with the highest TF-IDF cosine to the side's utterances: fewer, harder examples (from
    fewer draws where the pool has fewer other groups, e.g. the shipped sample)."""
    sampler = DistractorSampler(pool, seed)
    if kind not in ("persona", "combination"):
        raise ValueError(f"build_examples: kind={kind!r}; expected 'persona' or 'combination'")
    if hard_k < 1 or (hard_k > 1 and kind != "persona"):
        raise ValueError(f"build_examples: hard_k={hard_k} must be >= 1, and 1 unless kind='persona'")
    if kind == "combination":
        return [ReceiverExample(s.utterances, s.persona, sampler.combination(s.persona, s.group)) for s in sides]
    draws = [sampler.personas(s.persona, s.group, hard_k, allow_fewer=True) for s in sides]
    if hard_k > 1:
        ir = IRScorer([" ".join(s.utterances) for s in sides] + [" ".join(e.sentences) for e in pool])
        draws = [[d[int(np.argmax(ir.personas(s, d)))]] for s, d in zip(sides, draws)]
    return [ReceiverExample(s.utterances, s.persona, d[0]) for s, d in zip(sides, draws)]


def pool_from_sides(sides: Sequence[DialogueSide]):
    """The distinct personas of some dialogue sides as ``data.PersonaEntry`` (group = the side's group,
    else the episode id), e.g. the training split's personas as a leak-free distractor pool."""
    from p2bot_utils.data import PersonaEntry

    seen = {}
    for s in sides:
        seen.setdefault(s.persona, PersonaEntry(s.group or f"{s.episode_id}:{s.side}", s.persona))
    return list(seen.values())


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
        self.ranker = TfidfRanker(corpus, sublinear_tf=False, token_pattern=WORDS_2PLUS)

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
        todo = list(dict.fromkeys(t for t in texts if (which, t) not in self.cache))
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


# --- the study ----------------------------------------------------------------------------------------
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
    sides = getattr(split, part)
    if allow_fewer and sides:
        sampler = DistractorSampler(pool, seed)
        n_candidates = min(n_candidates, 1 + min(sampler.n_other_groups(s.persona, s.group) for s in sides))
    items = build_probe_items(sides, pool, n_candidates, seed)
    return items, sorted({s for e in pool for s in e.sentences})


def load_scorer(spec: str):
    """``none`` -> None; ``zero-shot:BACKBONE`` -> an untrained Receiver; else a saved Receiver folder."""
    from p2bot_utils.receiver import ReceiverConfig

    if spec == "none":
        return None
    if spec.startswith("zero-shot:"):
        return ReceiverScorer(Receiver.from_backbone(ReceiverConfig(backbone=spec.split(":", 1)[1])))
    return ReceiverScorer(Receiver.from_pretrained(spec))


# --- CLI: python -m p2bot_utils probe ------------------------------------------------------------------
def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m p2bot_utils probe", description=__doc__.split("\n\n")[0])
    ap.add_argument("--receiver", required=True,
                    help="a saved Receiver folder, 'zero-shot:BACKBONE', or 'none' (IR and Random only)")
    ap.add_argument("--zero-shot", default="", help="also score an untrained Receiver on this backbone name")
    ap.add_argument("--data-dir", default="", help="ParlAI files folder ('' = P2BOT_DATA_DIR / ./data)")
    ap.add_argument("--use-sample", action="store_true", help="the shipped synthetic sample")
    ap.add_argument("--mode", choices=("original", "revised"), default="original")
    ap.add_argument("--split", choices=("train", "dev", "test"), default="test")
    ap.add_argument("--n-candidates", type=int, default=32)
    ap.add_argument("--mrr-pool", choices=("candidates", "all"), default="candidates")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = ap.parse_args(argv)
    try:
        split = load_sides(args.data_dir or None, args.mode, args.seed, use_sample=args.use_sample)
        items, sentences = probe_setup(split, args.split, args.n_candidates, args.seed)
        scorers: dict[str, object] = {"Random": RandomScorer(), "IR": IRScorer(ir_corpus(items))}
        for label, spec in (("Receiver (untrained)", f"zero-shot:{args.zero_shot}" if args.zero_shot else "none"),
                            ("Receiver", args.receiver)):
            scorer = load_scorer(spec)
            if scorer is not None:
                scorers[label] = scorer
    except (FileNotFoundError, ValueError) as e:
        print(f"probe: {e}", file=sys.stderr)
        return 2
    info = {"source": split.source, "part": args.split, **split.info}
    rows = [{k: v for k, v in r.items() if not k.startswith("per_item")}
            for r in run_probe(items, scorers, args.mrr_pool, sentences)]
    out = {"mode": args.mode, "n_candidates": args.n_candidates, "mrr_pool": args.mrr_pool, **info, "rows": rows}
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for r in rows:
            print(f"{r['method']:<24} Hits@1 {100 * r['hits@1']:5.1f} ± {100 * r['hits@1_se']:.1f}   "
                  f"MRR {100 * r['mrr']:5.1f} ± {100 * r['mrr_se']:.1f}   n={r['n']}")
    return 0
