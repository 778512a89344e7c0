"""PERSONA-CHAT / ConvAI2 data: one episode model for every file format, splits, candidates, persona pool.

Data code never imports model code. Every reader raises ``DataFormatError`` naming the file and line.
Two helpers keep this module short and are re-exported here: ``data_files`` (find / download / verify
files) and ``data_split`` (persona groups, the split, sampled candidates).
"""
from __future__ import annotations

import json
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence


from p2bot_utils.episodes import MODES, SILENCE, DataFormatError, Episode, PersonaEntry, Turn
from p2bot_utils.data_files import (DATA_FILE_RE, ENV_VAR, describe_verification, find_convai2_dir,
                                    locate_data_dir, verify_file)
from p2bot_utils.data_split import (MIN_SHARED, assign_parts, check_fractions, part_facts, persona_groups,
                                    sample_candidates, split_by_group, with_candidates)

__all__ = ["DataFormatError", "Turn", "Episode", "PersonaEntry", "SplitData", "SILENCE", "MIN_SHARED",
           "read_parlai", "read_hf_json", "read_episodes", "read_persona_clusters", "persona_pool_from_episodes",
           "persona_groups", "split_by_group", "sample_candidates", "load_split_data", "sample_data_dir",
           "locate_data_dir", "verify_file", "dataset_stats", "data_files_in"]


YOUR, PARTNER = "your persona:", "partner's persona:"


@dataclass
class SplitData:
    """What ``load_split_data`` returns: three parts, where they came from, and a persona pool."""

    train: list[Episode]
    dev: list[Episode]
    test: list[Episode]
    source: str  # "real" | "sample"
    info: dict
    persona_pool: list[PersonaEntry]


def sample_data_dir() -> Path:
    """The synthetic sample shipped with the package (made-up personas and dialogues, ParlAI format)."""
    return Path(__file__).with_name("sample_data")


def _verdict(path: Path) -> str:
    """``describe_verification``, except that the shipped sample is called what it is."""
    if path.resolve().parent == sample_data_dir().resolve():
        return "shipped synthetic sample (official checksums do not apply)"
    return describe_verification(path)


# --- ParlAI text format ---------------------------------------------------------------------------------
def _text_lines(path: Path) -> list[str]:
    """Lines of a UTF-8 file (a leading BOM dropped) without line ends; a non-UTF-8 byte is a ``DataFormatError``
    at its line."""
    lines = []
    for lineno, raw in enumerate(path.read_bytes().split(b"\n"), 1):
        try:
            lines.append(raw.decode("utf-8-sig" if lineno == 1 else "utf-8").rstrip("\r"))  # a BOM is fine
        except UnicodeDecodeError as e:
            raise DataFormatError(f"{path}:{lineno}: not UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1})")
    return lines


def _parse_turn(where: str, text: str) -> Turn:
    """``partner<TAB>reply[<TAB>reward<TAB>cand1|...|cand20]`` (ParlAI's fbdialog fields), gold last."""
    if "\t" not in text:
        raise DataFormatError(f"{where}: missing tab between the partner's utterance and the reply")
    fields = text.split("\t")
    if len(fields) > 4:
        raise DataFormatError(f"{where}: {len(fields)} tab-separated fields, expected at most 4")
    partner, reply = fields[0].strip(), fields[1].strip()
    if not partner:
        raise DataFormatError(f"{where}: empty partner utterance (an opener is written {SILENCE})")
    if not reply:
        raise DataFormatError(f"{where}: empty reply")
    cands = tuple(c.strip() for c in fields[3].split("|")) if len(fields) == 4 and fields[3].strip() else ()
    if cands and cands[-1] != reply:
        raise DataFormatError(f"{where}: last candidate {cands[-1][:40]!r} is not the reply {reply[:40]!r}")
    return Turn(partner, reply, cands)


def _file_meta(path: Path) -> dict:
    m = DATA_FILE_RE.match(path.name)
    if m is None or m.group(1) is None:
        return {"file": str(path)}
    return {"file": str(path), "split": m.group(1), "personas": m.group(2), "revision": m.group(3),
            "file_candidates": m.group(4) is None}


def _make_episode(path: Path, index: int, start: int, own, partner, turns: list[tuple[int, Turn]]) -> Episode:
    if not turns:
        raise DataFormatError(f"{path}:{start}: episode has persona lines but no dialogue turns")
    with_cands = [bool(t.candidates) for _, t in turns]
    if any(with_cands) and not all(with_cands):
        lineno = turns[with_cands.index(False)][0]
        raise DataFormatError(f"{path}:{lineno}: turn without candidates in an episode whose other turns have them")
    return Episode(f"{path.stem}:{index}", tuple(own), tuple(partner), tuple(t for _, t in turns),
                   "official" if all(with_cands) else "none", {**_file_meta(path), "index": index, "line": start})


def read_parlai(path: str | Path) -> list[Episode]:
    """Parse a PERSONA-CHAT / ConvAI2 text file (any of self|other|both|none x original|revised, with or
    without candidates). Numbering restarts at 1 per episode; persona lines come before the turns."""
    path, episodes, cur, prev = Path(path), [], None, 0
    for lineno, line in enumerate(_text_lines(path), 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        num, _, text = line.partition(" ")
        if not num.isdigit():
            raise DataFormatError(f"{where}: bad numbering: line must start with a number and a space, got {line[:30]!r}")
        if int(num) == 1:
            if cur is not None:
                episodes.append(_make_episode(path, len(episodes), *cur))
            cur = (lineno, [], [], [])  # start line, own persona, partner persona, (line, Turn)
        elif cur is None or int(num) != prev + 1:
            raise DataFormatError(f"{where}: bad numbering: expected {prev + 1} (or 1 to start an episode), got {num}")
        prev = int(num)
        if text.startswith((YOUR, PARTNER)):
            if cur[3]:
                raise DataFormatError(f"{where}: persona line after the dialogue turns of the episode")
            (cur[1] if text.startswith(YOUR) else cur[2]).append(text.split(":", 1)[1].strip())
        else:
            cur[3].append((lineno, _parse_turn(where, text)))
    if cur is not None:
        episodes.append(_make_episode(path, len(episodes), *cur))
    if not episodes:
        raise DataFormatError(f"{path}:1: no episode in the file (empty?)")
    return episodes


# --- Hugging Face personachat_self_original.json ---------------------------------------------------------
def _hf_episode(path: Path, split: str, i: int, dialog) -> Episode:
    """One dialog: ``personality`` + ``utterances[j] = {history (grows by two), candidates (gold last)}``."""
    where = f"{path}:{split}[{i}]"
    if not isinstance(dialog, dict) or not isinstance(dialog.get("utterances"), list):
        raise DataFormatError(f"{where}: expected an object with 'personality' and 'utterances'")
    turns, first = [], None
    for j, u in enumerate(dialog["utterances"]):
        hist, cands = u.get("history"), u.get("candidates")
        if not hist or not cands:
            raise DataFormatError(f"{where}.utterances[{j}]: empty or missing 'history' / 'candidates'")
        first = len(hist) if first is None else first
        if len(hist) != first + 2 * j or (j and hist[-2] != turns[-1].reply):
            raise DataFormatError(f"{where}.utterances[{j}]: history must grow by the previous turn pair")
        if not str(cands[-1]).strip():
            raise DataFormatError(f"{where}.utterances[{j}]: empty reply (last candidate)")
        partner = SILENCE if hist[-1].strip() in (SILENCE, "__ SILENCE __") else hist[-1].strip()
        turns.append(Turn(partner, cands[-1].strip(), tuple(c.strip() for c in cands)))
    return Episode(f"{path.stem}:{split}:{i}", tuple(s.strip() for s in dialog.get("personality", ())), (),
                   tuple(turns), "official", {"file": str(path), "split": split, "index": i, "personas": "self",
                                              "revision": "revised" if "revised" in path.stem else "original"})


def read_hf_json(path: str | Path) -> list[Episode]:
    """Parse Hugging Face's ``personachat_self_original.json`` (``{"train": [...], "valid": [...]}``);
    error locations are ``path:line`` for JSON syntax and ``path:split[i].utterances[j]`` for structure."""
    path = Path(path)
    data = path.read_bytes()
    try:
        obj = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise DataFormatError(f"{path}:{line}: not UTF-8 (byte 0x{data[e.start]:02x})")
    except json.JSONDecodeError as e:
        raise DataFormatError(f"{path}:{e.lineno}: invalid JSON: {e.msg}")
    if not isinstance(obj, dict) or not all(isinstance(v, list) for v in obj.values()):
        raise DataFormatError(f"{path}:1: expected an object {{\"train\": [...], \"valid\": [...]}}")
    episodes = [_hf_episode(path, split, i, d) for split, dialogs in obj.items() for i, d in enumerate(dialogs)]
    if not episodes:
        raise DataFormatError(f"{path}:1: no dialog in the file")
    return episodes


def read_episodes(path: str | Path, allow_duplicates: bool = False) -> list[Episode]:
    """Dispatch on the file type: ``.json`` = Hugging Face, anything else = ParlAI text. An episode that
    appears twice (same personas and turns) is a ``DataFormatError``; ``allow_duplicates`` keeps them all
    with a warning that counts them."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such data file (or not a file)")
    episodes = read_hf_json(path) if Path(path).suffix == ".json" else read_parlai(path)
    seen: dict[tuple, Episode] = {}
    dups = []
    for e in episodes:
        key = (e.own_persona, e.partner_persona, e.meta.get("split"), tuple((t.partner, t.reply) for t in e.turns))
        if key in seen:
            dups.append((seen[key], e))
        seen.setdefault(key, e)
    if dups:
        first, again = dups[0]
        where = f"lines {first.meta.get('line')} and {again.meta.get('line')}" if "line" in first.meta else \
            f"{first.episode_id} and {again.episode_id}"
        msg = f"{path}: {len(dups)} of {len(episodes)} episodes appear more than once (e.g. {where})"
        if not allow_duplicates:
            raise DataFormatError(f"{msg}; remove the repeats (or allow_duplicates=True to keep them)")
        warnings.warn(msg + "; kept (allow_duplicates)")
    return episodes


# --- persona pool ----------------------------------------------------------------------------------------
def _as_persona_line(sentence: str) -> str:
    """Cluster sentences have no final period; ParlAI persona lines do (keep the surface form alike)."""
    s = sentence.strip()
    return s if s.endswith((".", "!", "?")) else s + "."


def read_persona_clusters(path: str | Path) -> list[PersonaEntry]:
    """``{cluster_id: [[sentence, ...], ...]}`` -> one ``PersonaEntry(cluster_id, variant)`` per variant."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataFormatError(f"{path}:{getattr(e, 'lineno', 1)}: not a UTF-8 JSON file ({e})")
    if not isinstance(obj, dict):
        raise DataFormatError(f"{path}:1: expected an object {{cluster_id: [[sentence, ...], ...]}}")
    pool = []
    for cid, variants in obj.items():
        if not isinstance(variants, list) or not all(
                isinstance(v, list) and v and all(isinstance(s, str) for s in v) for v in variants):
            raise DataFormatError(f"{path}:{cid}: expected a list of non-empty lists of sentences")
        pool.extend(PersonaEntry(str(cid), tuple(map(_as_persona_line, v))) for v in variants)
    return pool


def persona_pool_from_episodes(episodes: Sequence[Episode]) -> list[PersonaEntry]:
    """Distinct own personas of ``episodes``, grouped by ``meta["persona_group"]`` (computed when absent)."""
    groups = [e.meta.get("persona_group") for e in episodes]
    if None in groups:
        groups = persona_groups([e.own_persona for e in episodes])
    entries = (PersonaEntry(g, e.own_persona) for g, e in zip(groups, episodes) if e.own_persona)
    return list(dict.fromkeys(entries))


def _find_clusters(explicit: str | Path | None, dirs: Sequence[Path]) -> Path | None:
    """The explicit file, else ``train_persona_clusters.json`` in a data folder or in
    ``personachat-train-personas/`` beside it."""
    if explicit:
        if not Path(explicit).is_file():
            raise FileNotFoundError(f"{explicit}: persona_clusters file not found")
        return Path(explicit)
    for d in dirs:
        for cand in (d / "train_persona_clusters.json",
                     d.parent / "personachat-train-personas" / "train_persona_clusters.json"):
            if cand.is_file():
                return cand
    return None


def _persona_pool(official_train: list[Episode] | None, train_part: list[Episode], clusters: Path | None
                  ) -> tuple[list[PersonaEntry], dict]:
    """Official training split, else the persona-cluster file, else the train part (in that order)."""
    if official_train is not None:
        pool, src = persona_pool_from_episodes(official_train), "official training split"
    elif clusters is not None:
        pool, src = read_persona_clusters(clusters), f"persona clusters {clusters}"
    else:
        pool, src = persona_pool_from_episodes(train_part), "train part of the split"
    return pool, {"source": src, "entries": len(pool), "groups": len({p.group for p in pool})}


# --- load_split_data -------------------------------------------------------------------------------------
def _pick_file(d: Path, split: str, mode: str) -> Path | None:
    """Preferred file of a split: ``both`` (partner personas too) before ``self``, with candidates before
    without; then Hugging Face's ``personachat_self_<mode>.json``."""
    names = [f"{split}_{p}_{mode}{c}.txt" for p in ("both", "self") for c in ("", "_no_cands")]
    return next((d / n for n in [*names, f"personachat_self_{mode}.json"] if (d / n).is_file()), None)


def _read_files(d: Path, mode: str, allow_duplicates: bool = False
                ) -> tuple[list[Episode] | None, list[Episode], list[Episode], list[Path]]:
    """(official train or None, valid episodes of ``mode``, valid episodes with original personas, files).
    A Hugging Face JSON file holds both splits; each file is parsed once."""
    valid_f, orig_f = _pick_file(d, "valid", mode), _pick_file(d, "valid", "original")
    if valid_f is None or orig_f is None:
        raise FileNotFoundError(f"{d}: no valid_both_{mode}*.txt, valid_self_{mode}*.txt or "
                                f"personachat_self_{mode}.json (and its original counterpart)")
    cache: dict[Path, list[Episode]] = {}

    def split_of(path: Path, split: str) -> list[Episode]:
        if path not in cache:
            cache[path] = read_episodes(path, allow_duplicates)
        eps = cache[path]
        return [e for e in eps if e.meta.get("split") == split] if path.suffix == ".json" else eps

    train_f = _pick_file(d, "train", mode)
    train = None if train_f is None else (split_of(train_f, "train") or None)
    valid, orig = split_of(valid_f, "valid"), split_of(orig_f, "valid")
    if len(orig) != len(valid):
        raise DataFormatError(f"{valid_f}:1: {len(valid)} episodes but {orig_f.name} has {len(orig)}; "
                              f"original and revised files must hold the same episodes")
    files = dict.fromkeys((train_f if train else None, valid_f, orig_f))
    return train, valid, orig, [f for f in files if f is not None]


def _resolve_dir(data_dir, use_sample: bool, download: bool) -> tuple[Path, str]:
    """An explicit ``data_dir`` wins, then ``use_sample``, then ``locate_data_dir`` (P2BOT_DATA_DIR, ./data,
    download), then the sample (said loudly)."""
    if use_sample and not data_dir:
        return sample_data_dir(), "sample"
    d, found = locate_data_dir(data_dir or None, download=download)
    if d is None:
        print(f"!!! using the SHIPPED SYNTHETIC SAMPLE ({sample_data_dir()}), not PERSONA-CHAT: set {ENV_VAR}",
              file=sys.stderr)
        return sample_data_dir(), "sample"
    return d, "sample" if d.resolve() == sample_data_dir().resolve() else found


def load_split_data(data_dir: str | Path | None = None, mode: str = "original", seed: int = 0,
                    fractions: Sequence[float] = (0.8, 0.1, 0.1), use_sample: bool = False, n_candidates: int = 20,
                    *, persona_clusters: str | Path | None = None, download: bool = True,
                    official_test: str = "half", allow_duplicates: bool = False) -> SplitData:
    """Find the data (``locate_data_dir``; the shipped sample when none or ``use_sample``), read the ``both``
    file of ``mode`` (``self`` if absent), split it (official, else by persona group), give every turn
    ``n_candidates`` candidates (official, else sampled) and build the persona pool.

    ``official_test``: ``"half"`` (dev and test are the two halves of the official validation file) or
    ``"full"`` (test = the whole validation file, the set the paper and the authors' code report on)."""
    if mode not in MODES:
        raise ValueError(f"load_split_data: mode must be one of {MODES}, got {mode!r}")
    if official_test not in ("half", "full"):
        raise ValueError(f"load_split_data: official_test must be 'half' or 'full', got {official_test!r}")
    fractions = check_fractions(fractions)
    d, found = _resolve_dir(data_dir, use_sample, download)
    train, valid, orig, files = _read_files(d, mode, allow_duplicates)
    parts, split_info = assign_parts(train, valid, orig, fractions, seed, official_test)
    parts = with_candidates(parts, n_candidates, seed)
    official_train = parts["train"] if train is not None else None  # tagged with its persona groups
    pool, pool_info = _persona_pool(official_train, parts["train"], _find_clusters(persona_clusters, [d, d.parent]))
    source = "sample" if found == "sample" else "real"
    info = {"data_dir": str(d), "found_by": found, "source": source, "mode": mode, "seed": seed,
            "files": [str(f) for f in files], "verification": {f.name: _verdict(f) for f in files},
            "split_method": split_info["method"], "split_description": split_info["description"],
            "fractions": list(fractions), "n_candidates": n_candidates, "parts": part_facts(parts),
            "persona_pool": pool_info}
    return SplitData(parts["train"], parts["dev"], parts["test"], source, info, pool)


# --- statistics and the data-stats command ---------------------------------------------------------------
def dataset_stats(path: str | Path, allow_duplicates: bool = False) -> dict:
    """Counts of one file. Utterances = 2 x turn pairs minus the ``__SILENCE__`` openers (a silence is not an
    utterance). Persona groups are computed on own personas (partner personas for ``other`` files)."""
    eps = read_episodes(path, allow_duplicates)
    pairs = sum(len(e.turns) for e in eps)
    silence = sum(t.partner == SILENCE for e in eps for t in e.turns)
    personas = [e.own_persona or e.partner_persona for e in eps]
    cands = sorted({len(t.candidates) for e in eps for t in e.turns})
    return {"file": Path(path).name, "episodes": len(eps), "turn_pairs": pairs, "utterances": 2 * pairs - silence,
            "silence_openers": silence, "persona_groups": len(set(persona_groups(personas))) if any(personas) else 0,
            "candidates_per_turn": "/".join(map(str, cands)), "checksum": _verdict(Path(path))}


def data_files_in(target: Path) -> list[Path]:
    if target.is_file():
        return [target]
    d = find_convai2_dir(target)
    if d is None:
        raise FileNotFoundError(f"{target}: no PERSONA-CHAT / ConvAI2 files there or under ConvAI2/")
    return sorted(p for p in d.iterdir() if DATA_FILE_RE.match(p.name))
