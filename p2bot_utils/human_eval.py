"""Human-evaluation kit for the paper's Table 2 (responses rated on a 1–4 scale).

1. ``export_rating_sheet``: a blind CSV of sampled test responses from several systems, rows shuffled, system
   names replaced by opaque row ids; the key (row id → system, example) goes to a separate file that raters
   never see.
2. Raters fill the ``rating`` column with 1, 2, 3 or 4 (see ``SCALE``); ``import_ratings`` reads one or more
   filled sheets with the key and stops at the first bad rating with ``file: line N (row id …): …``.
3. ``rating_distribution`` (share of each score and the average per system, as in Table 2) and
   ``wilcoxon_pair`` / ``pairwise_wilcoxon`` (paired Wilcoxon signed-rank test per example, SciPy).

A *sample* is the dict that ``tables.build_sample_table`` takes: ``{"example", "persona", "context",
"human", "replies": {system: reply}}``. Imports nothing of the project.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import itertools
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from p2bot_utils.profile import atomic_write_text

SCALE = {
    4: "Excellent: fluent, fits the conversation, and naturally shows (or asks about) a persona trait.",
    3: "Good: fluent and on topic, but generic; it would suit almost any speaker.",
    2: "Fair: understandable, but partly off topic, repetitive or awkward.",
    1: "Poor: ungrammatical, incoherent, or contradicts the speaker's persona or the conversation.",
}
RATINGS = tuple(sorted(SCALE))
SHEET_COLUMNS = ("row_id", "persona", "context", "response", "rating", "comment", "export_id")
KEY_COLUMNS = ("row_id", "example", "system", "export_id")
HUMAN = "human"


def instructions_text() -> str:
    """The rater instructions (Markdown) written next to a sheet."""
    lines = ["# Rating instructions", "",
             "Each row shows the persona of a speaker, the last turns of a conversation, and the speaker's next",
             "response. Rate the RESPONSE alone, in the `rating` column, with one whole number:", ""]
    lines += [f"- **{k}** — {SCALE[k]}" for k in sorted(SCALE, reverse=True)]
    lines += ["", "Rows come from different systems (and people) in random order; judge each row on its own.",
              "The `comment` column is optional."]
    return "\n".join(lines) + "\n"


def _context_text(context: Sequence[str], turns: int) -> str:
    """The last ``turns`` utterances, newest last, labelled from the replying speaker's side."""
    ctx = list(context)[-turns:]
    labels = ["partner" if back % 2 == 0 else "speaker" for back in range(len(ctx) - 1, -1, -1)]
    return "\n".join(f"{who}: {utt}" for who, utt in zip(labels, ctx))


def build_rating_rows(samples: Iterable[dict], include_human: bool = True,
                      context_turns: int = 3) -> list[dict]:
    """One unshuffled row per (sample, system): persona, context, response and the (secret) system."""
    rows = []
    for s in samples:
        for key in ("example", "persona", "context", "replies"):
            if key not in s:
                raise ValueError(f"human_eval.build_rating_rows: a sample lacks {key!r}: {sorted(s)}")
        replies = dict(s["replies"])
        if include_human:
            replies[HUMAN] = s["human"]
        for system, reply in replies.items():
            rows.append({"example": s["example"], "system": system, "persona": "\n".join(s["persona"]),
                         "context": _context_text(s["context"], context_turns), "response": reply})
    if not rows:
        raise ValueError("human_eval.build_rating_rows: no samples given")
    return rows


def export_id(rows: Sequence[dict], seed: int) -> str:
    """What identifies one export: a hash of its rows and seed. Written into the sheet and the key, so that a
    sheet is only ever joined with the key it was exported with."""
    text = json.dumps([rows, seed], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def _write_csv(path: Path, columns: Sequence[str], rows: Iterable[dict]) -> Path:
    """Write a CSV atomically (``profile.atomic_write_text``)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return atomic_write_text(path, buf.getvalue())


def export_rating_sheet(samples: Iterable[dict], sheet_path: str | os.PathLike, key_path: str | os.PathLike,
                        seed: int = 0, include_human: bool = True, context_turns: int = 3) -> tuple[Path, Path]:
    """Write the blind sheet (rows shuffled with ``default_rng(seed)``, ids R001… given AFTER shuffling, so
    neither order nor id reveals a system), the key file and ``rating_instructions.md`` beside the sheet."""
    sheet_path, key_path = Path(sheet_path), Path(key_path)
    if sheet_path.resolve() == key_path.resolve():
        raise ValueError(f"human_eval.export_rating_sheet: sheet and key must be different files ({sheet_path})")
    rows = build_rating_rows(samples, include_human, context_turns)
    order = np.random.default_rng(seed).permutation(len(rows))
    width = max(3, len(str(len(rows))))
    export = export_id(rows, seed)
    shuffled = [{**rows[i], "row_id": f"R{k + 1:0{width}d}", "rating": "", "comment": "", "export_id": export}
                for k, i in enumerate(order)]
    _write_csv(sheet_path, SHEET_COLUMNS, shuffled)
    _write_csv(key_path, KEY_COLUMNS, shuffled)
    atomic_write_text(sheet_path.parent / "rating_instructions.md", instructions_text())
    return sheet_path, key_path


# --- import ---------------------------------------------------------------------------------------------
def _parse_rating(raw: str, where: str) -> int:
    text = (raw or "").strip()
    if text not in {str(r) for r in RATINGS}:
        shown = "empty" if not text else repr(text)
        raise ValueError(f"{where}: rating {shown} is not one of {', '.join(map(str, RATINGS))}")
    return int(text)


def read_rating_sheet(path: str | os.PathLike, rater: str | None = None) -> pd.DataFrame:
    """A filled sheet as rows (row_id, rating, rater); ``rater`` defaults to the file's stem. Every row must
    hold a rating 1–4; errors name the file, the CSV line and the row id."""
    path = Path(path)
    with path.open(encoding="utf-8-sig", newline="") as f:  # a spreadsheet program may add a BOM
        reader = csv.DictReader(f)
        missing = {"row_id", "rating"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: line 1: the header lacks column(s) {sorted(missing)}")
        out, seen = [], set()
        for row in reader:
            rid = (row.get("row_id") or "").strip()
            where = f"{path}: line {reader.line_num} (row id {rid or '?'})"
            if not rid or rid in seen:
                raise ValueError(f"{where}: row id is {'empty' if not rid else 'repeated'}")
            seen.add(rid)
            out.append({"row_id": rid, "rating": _parse_rating(row.get("rating"), where),
                        "rater": rater or path.stem, "export_id": (row.get("export_id") or "").strip()})
    if not out:
        raise ValueError(f"{path}: the sheet has no rows")
    return pd.DataFrame(out)


def read_key(path: str | os.PathLike) -> pd.DataFrame:
    """The key file: row_id → example, system."""
    key = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    if "export_id" not in key.columns:  # a key exported before export ids existed
        key["export_id"] = ""
    missing = set(KEY_COLUMNS) - set(key.columns)
    if missing:
        raise ValueError(f"{path}: line 1: the key lacks column(s) {sorted(missing)}")
    return key[list(KEY_COLUMNS)]


def import_ratings(sheet_paths: Iterable[str | os.PathLike], key_path: str | os.PathLike) -> pd.DataFrame:
    """All filled sheets joined with the key: rows (row_id, example, system, rating, rater). Each sheet must
    rate exactly the key's rows."""
    key = read_key(key_path)
    known, export = set(key["row_id"]), set(key["export_id"])
    frames, seen = [], {}
    for p in sheet_paths:
        sheet = read_rating_sheet(p)
        ids = set(sheet["export_id"])
        if ids != export:
            raise ValueError(f"{p}: export id {', '.join(sorted(ids)) or '(none)'} does not match the key {key_path} "
                             f"({', '.join(sorted(export)) or '(none)'}): the sheet comes from another export")
        content = hashlib.sha256(Path(p).read_bytes()).hexdigest()
        if Path(p).resolve() in seen or content in seen.values():
            raise ValueError(f"{p}: the same sheet is given twice (each rater's sheet counts once)")
        seen[Path(p).resolve()] = content
        unknown = sorted(set(sheet["row_id"]) - known)
        absent = sorted(known - set(sheet["row_id"]))
        if unknown:
            raise ValueError(f"{p}: row id {unknown[0]} is not in the key {key_path} ({len(unknown)} unknown)")
        if absent:
            raise ValueError(f"{p}: {len(absent)} row(s) of the key are missing from the sheet, e.g. {absent[0]}")
        frames.append(sheet.drop(columns="export_id").merge(key.drop(columns="export_id"), on="row_id", how="left"))
    if not frames:
        raise ValueError("human_eval.import_ratings: no sheets given")
    return pd.concat(frames, ignore_index=True)[["row_id", "example", "system", "rating", "rater"]]


# --- analysis -------------------------------------------------------------------------------------------
def rating_distribution(ratings: pd.DataFrame) -> pd.DataFrame:
    """Table 2 layout: per system the number of ratings, the share (%) of each score 1–4, the average and
    its standard error over ratings."""
    rows = []
    for system, grp in ratings.groupby("system", sort=True):
        r = grp["rating"].to_numpy(dtype=float)  # (N,)
        row = {"system": system, "n": int(r.size)}
        row |= {f"{k} (%)": 100.0 * float((r == k).mean()) for k in RATINGS}
        row["average"] = float(r.mean())
        row["stderr"] = float(r.std(ddof=1) / math.sqrt(r.size)) if r.size > 1 else math.nan
        rows.append(row)
    return pd.DataFrame(rows).sort_values("average", ascending=False, kind="stable").reset_index(drop=True)


def _per_example(ratings: pd.DataFrame, system: str) -> pd.Series:
    """The mean rating of ``system`` per example (averaged over raters)."""
    sub = ratings[ratings["system"] == system]
    if sub.empty:
        raise ValueError(f"human_eval: no ratings for system {system!r}; have {sorted(ratings['system'].unique())}")
    return sub.groupby("example")["rating"].mean()


def wilcoxon_pair(ratings: pd.DataFrame, system_a: str, system_b: str) -> dict:
    """Two-sided Wilcoxon signed-rank test of A vs B, paired by example (ratings averaged over raters first).
    Pairs with equal ratings are dropped (SciPy's ``zero_method="wilcox"``); if all are equal, p = 1."""
    from scipy.stats import wilcoxon

    a, b = _per_example(ratings, system_a), _per_example(ratings, system_b)
    common = a.index.intersection(b.index)
    if len(common) == 0:
        raise ValueError(f"human_eval.wilcoxon_pair: {system_a!r} and {system_b!r} share no rated example")
    x, y = a.loc[common].to_numpy(), b.loc[common].to_numpy()  # (E,), (E,)
    out = {"system_a": system_a, "system_b": system_b, "n_examples": int(len(common)),
           "mean_a": float(x.mean()), "mean_b": float(y.mean()), "n_nonzero": int((x != y).sum())}
    if out["n_nonzero"] == 0:
        return out | {"statistic": math.nan, "p_value": 1.0}
    res = wilcoxon(x, y, zero_method="wilcox", alternative="two-sided")
    return out | {"statistic": float(res.statistic), "p_value": float(res.pvalue)}


def pairwise_wilcoxon(ratings: pd.DataFrame, systems: Sequence[str] | None = None) -> pd.DataFrame:
    """``wilcoxon_pair`` for every pair of ``systems`` (default: all rated systems, sorted)."""
    systems = sorted(ratings["system"].unique()) if systems is None else list(systems)
    return pd.DataFrame([wilcoxon_pair(ratings, a, b) for a, b in itertools.combinations(systems, 2)])
