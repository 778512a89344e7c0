"""Persona groups, the split by persona group, sampled response candidates (no file I/O, no model code).

Works on ``episodes.Episode`` objects (only reads fields and uses ``dataclasses.replace``); ``data`` re-exports
the public names, so callers import them from ``p2bot_utils.data``.
"""
from __future__ import annotations

import random
from collections import Counter, defaultdict
from dataclasses import replace
from typing import Sequence

from tqdm.auto import tqdm

from p2bot_utils.episodes import Episode

MIN_SHARED = 3  # episodes whose own personas share >= 3 sentences belong to one persona group
PARTS = ("train", "dev", "test")


# --- persona groups and the split ------------------------------------------------------------------------
def norm_sentence(sentence: str) -> str:
    """Lowercase, collapse spaces, drop a final period: how persona sentences and replies are compared."""
    return " ".join(sentence.lower().split()).rstrip(" .")


def persona_groups(personas: Sequence[Sequence[str]], min_shared: int = MIN_SHARED, prefix: str = "pg") -> list[str]:
    """Group id per persona: personas sharing >= ``min_shared`` sentences (after lowercasing and dropping the
    final period) are joined, transitively (union-find). Ids ``pg0000``... in order of first appearance."""
    keys = [frozenset(map(norm_sentence, p)) for p in personas]
    uniq = list(dict.fromkeys(keys))  # identical personas are one group already
    parent = list(range(len(uniq)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    by_sentence: dict[str, list[int]] = defaultdict(list)
    for i, k in enumerate(uniq):
        shared = Counter(j for s in k for j in by_sentence[s])  # sentences in common with earlier personas
        for j, n in shared.items():
            if n >= min_shared:
                parent[find(i)] = find(j)
        for s in k:
            by_sentence[s].append(i)
    index = {k: i for i, k in enumerate(uniq)}
    label: dict[int, str] = {}
    return [label.setdefault(find(index[k]), f"{prefix}{len(label):04d}") for k in keys]


def check_fractions(fractions: Sequence[float]) -> tuple[float, ...]:
    fr = tuple(float(f) for f in fractions)
    if not fr or min(fr) < 0 or abs(sum(fr) - 1.0) > 1e-6:
        raise ValueError(f"split fractions must be >= 0 and sum to 1, got {list(fractions)}")
    return fr


def split_by_group(groups: Sequence[str], fractions: Sequence[float], seed: int = 0) -> list[int]:
    """Part index per episode. Groups are shuffled with ``seed`` and laid end to end; a group goes to the part
    whose cumulative episode-count boundary its middle falls before, so the fractions are hit in episode
    counts and no group straddles two parts. A part left empty takes a group from the part with the most."""
    fr, sizes = check_fractions(fractions), Counter(groups)
    order = sorted(sizes)
    random.Random(seed).shuffle(order)
    bounds = [sum(fr[:k + 1]) * len(groups) for k in range(len(fr))]
    part_of, cum = {}, 0
    for g in order:
        mid = cum + sizes[g] / 2
        part_of[g] = next((k for k, b in enumerate(bounds) if mid < b), len(fr) - 1)
        cum += sizes[g]
    for k in range(len(fr)):
        members = Counter(part_of.values())
        donor = max(range(len(fr)), key=lambda p: members[p])
        if fr[k] > 0 and members[k] == 0 and members[donor] > 1:
            part_of[min((g for g in order if part_of[g] == donor), key=lambda g: sizes[g])] = k
    return [part_of[g] for g in groups]


# --- response candidates ---------------------------------------------------------------------------------
def _draw_distractors(rng: random.Random, pool: list[tuple[int, str | None, str]], own: int, group: str | None,
                      gold: str, k: int, extra: Sequence[str]) -> tuple[list[str], bool]:
    """``k`` distinct replies of episodes other than ``own``, none equal to the gold. Sources in order: other
    persona groups of the part (a same-persona episode says near-copies of the gold), then ``extra`` (replies
    of the other parts, only when the part is too small), then same-group episodes. -> (distractors, topped_up)"""
    chosen, seen = [], {norm_sentence(gold)}
    for _ in range(20 * k if pool else 0):  # rejection sampling: cheap when the part is large
        j, g, text = pool[rng.randrange(len(pool))]
        if len(chosen) == k:
            break
        if j != own and (group is None or g != group) and norm_sentence(text) not in seen:
            chosen.append(text)
            seen.add(norm_sentence(text))
    topped_up = False
    for from_extra in range(3):
        if len(chosen) == k:
            break
        source = ([t for j, g, t in pool if j != own and (group is None or g != group)], list(extra),
                  [t for j, g, t in pool if j != own and group is not None and g == group])[from_extra]
        rng.shuffle(source)  # a seeded pass over all the rest of this source
        for text in source:
            if len(chosen) < k and norm_sentence(text) not in seen:
                chosen.append(text)
                seen.add(norm_sentence(text))
                topped_up |= from_extra == 1
    if len(chosen) < k:
        raise ValueError(f"only {len(chosen)} distinct replies of other episodes for {k} distractors")
    return chosen, topped_up


def sample_candidates(episodes: Sequence[Episode], n: int = 20, seed: int = 0,
                      extra_replies: Sequence[str] = ()) -> list[Episode]:
    """ConvAI2's procedure for files without candidates: gold + ``n - 1`` distractors drawn (seeded per
    episode) from the replies of OTHER episodes in ``episodes`` (other persona groups first, see
    ``_draw_distractors``), never equal to the gold; gold LAST. Episodes with official candidates are
    returned unchanged."""
    pool = [(i, e.meta.get("persona_group"), t.reply) for i, e in enumerate(episodes) for t in e.turns]
    out = []
    for i, e in enumerate(tqdm(episodes, desc="sampling candidates", disable=len(episodes) < 2000)):
        if e.candidate_source == "official":
            out.append(e)
            continue
        # keyed by split + index (not the file name) so original and revised files draw the same candidates
        key = f"{seed}:{e.meta.get('split', '')}:{e.meta.get('index', e.episode_id)}"
        rng, turns, topped = random.Random(key), [], False
        for t in e.turns:
            distractors, up = _draw_distractors(rng, pool, i, e.meta.get("persona_group"), t.reply, n - 1,
                                                extra_replies)
            turns.append(replace(t, candidates=(*distractors, t.reply)))
            topped |= up
        meta = {**e.meta, "candidate_pool": "topped up from other parts" if topped else "same part"}
        out.append(replace(e, turns=tuple(turns), candidate_source="sampled", meta=meta))
    return out


# --- assigning the parts (used by data.load_split_data) ---------------------------------------------
def tag_part(episodes: Sequence[Episode], part: str, groups: Sequence[str]) -> list[Episode]:
    return [replace(e, meta={**e.meta, "part": part, "persona_group": g}) for e, g in zip(episodes, groups)]


def _subset(episodes: Sequence[Episode], groups: Sequence[str], idx: Sequence[int], k: int, name: str):
    keep = [i for i, part in enumerate(idx) if part == k]
    return tag_part([episodes[i] for i in keep], name, [groups[i] for i in keep])


def assign_parts(train, valid, orig, fractions, seed, official_test) -> tuple[dict[str, list[Episode]], dict]:
    """Official: train file + the valid file halved by persona group into dev / test (``official_test="full"``:
    test = the whole valid file, so dev is inside test). Otherwise the valid episodes are split by persona
    group. Groups always come from the ORIGINAL persona lines, so both modes get the same partition."""
    if train is not None:
        groups = persona_groups([e.own_persona for e in orig], prefix="valid:pg")
        idx = split_by_group(groups, (0.5, 0.5), seed)
        parts = {"train": tag_part(train, "train", persona_groups([e.own_persona for e in train], prefix="train:pg")),
                 "dev": _subset(valid, groups, idx, 0, "dev"), "test": _subset(valid, groups, idx, 1, "test")}
        how = "official: train = training file; dev/test = the official validation file halved by persona group"
        if official_test == "full":
            parts["test"] = tag_part(valid, "test", groups)
            how += "; test = the WHOLE validation file (what the paper and the authors' code report on)"
        return parts, {"method": "official", "description": how}
    groups = persona_groups([e.own_persona for e in orig])
    idx = split_by_group(groups, fractions, seed)
    parts = {name: _subset(valid, groups, idx, k, name) for k, name in enumerate(PARTS)}
    how = (f"persona-group: no training file, so the validation episodes are split {list(fractions)} by persona "
           f"group (own personas sharing >= {MIN_SHARED} sentences; seeded shuffle of groups)")
    return parts, {"method": "persona-group", "description": how}


def select_part(split, part: str) -> list:
    """One part of a split (``SplitData`` or ``sides.SideSplit``): ``train`` / ``dev`` / ``test``, or ``all``, every
    item of the validation file with no split: train + dev + test when the folder holds only validation files
    (the whole folder), dev + test, the official validation file, when it also holds a training file. The
    paper's Table 1 is "evaluated on the dev set", the whole ConvAI2 validation file: ``eval_split: all``."""
    if part != "all":
        if part not in PARTS:
            raise ValueError(f"select_part: part must be one of {(*PARTS, 'all')}, got {part!r}")
        return getattr(split, part)
    names = ("dev", "test") if split.info.get("split_method") == "official" else PARTS
    return [item for name in names for item in getattr(split, name)]


def with_candidates(parts: dict[str, list[Episode]], n: int, seed: int) -> dict[str, list[Episode]]:
    """Official candidates where the file has them, else sampled within the part (``sample_candidates``)."""
    out = {}
    for k, (name, eps) in enumerate(parts.items()):
        if all(e.candidate_source == "official" for e in eps):
            out[name] = eps
            continue
        extra = [t.reply for other, oe in parts.items() if other != name for e in oe for t in e.turns]
        out[name] = sample_candidates(eps, n=n, seed=seed + k, extra_replies=extra)
    return out


def part_facts(parts: dict[str, list[Episode]]) -> dict:
    return {name: {"episodes": len(eps), "turn_pairs": sum(len(e.turns) for e in eps),
                   "persona_groups": len({e.meta["persona_group"] for e in eps}),
                   "candidate_source": "/".join(sorted({e.candidate_source for e in eps})) or "none",
                   "candidates_per_turn": sorted({len(t.candidates) for e in eps for t in e.turns}),
                   "candidates_topped_up_from_other_parts": sum(
                       e.meta.get("candidate_pool") == "topped up from other parts" for e in eps)}
            for name, eps in parts.items()}
