"""Dialogue sides (one speaker's utterances with that speaker's persona), their persona-group split, and
distractor personas: the data of the Receiver's training (Eq. 12) and of persona probing (Table 5).

No model code: the hard distractors of ``build_examples`` are chosen by TF-IDF (``ir``).
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from p2bot_utils.data import load_split_data, persona_groups
from p2bot_utils.episodes import SILENCE, PersonaEntry
from p2bot_utils.ir import PERSONA_TFIDF, TfidfRanker


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


@dataclass(frozen=True)
class ReceiverExample:
    """Eq. 12 training triple: utterances x, true persona A, distractor persona Z."""

    utterances: tuple[str, ...]
    persona: tuple[str, ...]
    distractor: tuple[str, ...]


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
        ranker = TfidfRanker([" ".join(s.utterances) for s in sides] + [" ".join(e.sentences) for e in pool],
                             **PERSONA_TFIDF)  # the settings of probing.IRScorer
        draws = [[d[int(np.argmax(ranker.scores(" ".join(s.utterances), [" ".join(p) for p in d])))]]
                 for s, d in zip(sides, draws)]
    return [ReceiverExample(s.utterances, s.persona, d[0]) for s, d in zip(sides, draws)]


def pool_from_sides(sides: Sequence[DialogueSide]):
    """The distinct personas of some dialogue sides as ``data.PersonaEntry`` (group = the side's group,
    else the episode id), e.g. the training split's personas as a leak-free distractor pool."""
    seen = {}
    for s in sides:
        seen.setdefault(s.persona, PersonaEntry(s.group or f"{s.episode_id}:{s.side}", s.persona))
    return list(seen.values())
