"""The paper's tables as pure functions over plain dicts: Table 1 (automatic metrics, original and revised
personas), Table 3 (variants against P²Bot-S, revised personas) and Table 4 (sample responses).

A *measured record* is one evaluation of one system on one persona variant::

    {"system": "P²Bot-S", "personas": "original" | "revised",
     "metrics": {"hits@1": {"mean": 0.41, "stderr": 0.03, "n": 200}, "ppl": {...}, "f1": {...}, ...},
     "split": "test (persona-group)", "candidates": "sampled", "tokenizer": "gpt2", "model": "tiny-gpt2",
     "seed": 0}

Hits@1, MRR, F1 and BLEU are fractions in [0, 1] in a record and are shown ×100 in the tables, as the paper
does (its BLEU column, e.g. 0.56, is ParlAI's sentence BLEU ×100). Several records of one system and persona
variant with different seeds are shown as mean ± std over the seeds. Cited values are carried exactly as
printed in the paper, never rescaled. Of the project it imports only ``profile`` (where each model lives) and
``metrics`` (the paired perplexity error).
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from p2bot_utils.metrics import paired_perplexity_difference
from p2bot_utils.profile import model_folder

PAPER = "Liu et al. (2020)"
PERSONAS = ("original", "revised")
PERCENT_METRICS = frozenset({"hits@1", "mrr", "f1", "bleu"})
DECIMALS = {"hits@1": 1, "mrr": 1, "ppl": 2, "f1": 2, "bleu": 2}
LABELS = {"hits@1": "Hits@1 %", "mrr": "MRR %", "ppl": "ppl", "f1": "F1 %", "bleu": "BLEU ×100"}
DASH = "–"  # the paper's "not reported"

# Table 1 of the paper: Hits@1 % / ppl / F1 %, original and revised personas; None = "–" (not reported).
CITED_TABLE1: tuple[dict, ...] = (
    {"system": "KV Profile Memory", "original": (54.8, None, 14.25), "revised": (38.1, None, 13.65)},
    {"system": "Dually Interactive Matching", "original": (78.8, None, None), "revised": (70.7, None, None)},
    {"system": "Generative Profile Memory", "original": (10.2, 35.01, 16.29), "revised": (9.9, 34.94, 15.71)},
    {"system": "Language Model", "original": (None, 50.67, 16.30), "revised": (None, 51.61, 13.59)},
    {"system": "Seq2Seq-Attn", "original": (12.5, 35.07, 16.82), "revised": (9.8, 39.54, 15.52)},
    {"system": "Lost In Conversation", "original": (17.3, None, 17.79), "revised": (16.2, None, 16.83)},
    {"system": "TransferTransfo", "original": (82.1, 17.51, 19.09), "revised": None},
    {"system": "P²Bot", "original": (81.9, 15.12, 19.77), "revised": (68.6, 18.89, 19.08)},
)
TABLE1_METRICS = ("hits@1", "ppl", "f1")

# Table 3 of the paper (revised personas): Hits@1 % / F1 % / BLEU ×100.
CITED_TABLE3: tuple[dict, ...] = (
    {"system": "P²Bot-S", "values": (68.7, 18.14, 0.56)},
    {"system": "−Persona", "values": (65.5, 17.77, 0.57)},
    {"system": "−Next", "values": (17.6, 18.11, 0.55)},
    {"system": "+RS.1", "values": (68.4, 18.32, 0.60)},
    {"system": "+RS.1+RS.2", "values": (68.6, 18.41, 0.61)},
    {"system": "+RS.1+RS.2+RS.3", "values": (68.6, 19.08, 0.75)},
)
TABLE3_METRICS = ("hits@1", "f1", "bleu")
TABLE3_BASELINE = "P²Bot-S"
PROVENANCE = ("split", "candidates", "tokenizer", "model")

# Where notebooks 01 and 03 save each system under runs/<profile>/; P²Bot (Table 1) = +RS.1+RS.2+RS.3.
SYSTEM_MODELS = {"P²Bot-S": ("transmitter", "full"), "−Persona": ("transmitter", "no_persona"),
                 "−Next": ("transmitter", "no_next"), "+RS.1": ("selfplay", "rs1"),
                 "+RS.1+RS.2": ("selfplay", "rs1_rs2"), "+RS.1+RS.2+RS.3": ("selfplay", "p2bot")}
SYSTEM_FOLDERS = {name: model_folder(*kind) for name, kind in SYSTEM_MODELS.items()}
TABLE1_ALIASES = {"+RS.1+RS.2+RS.3": "P²Bot"}
UNTRAINED, IR_SYSTEM = "untrained backbone", "IR"


# --- records -------------------------------------------------------------------------------------------
def check_record(rec: dict, where: str = "tables") -> dict:
    """Validate one measured record; raises a one-line ValueError naming the system and the bad field."""
    name = rec.get("system", "?")
    if not isinstance(rec.get("system"), str) or not rec["system"]:
        raise ValueError(f"{where}: a measured record has no 'system' name: {sorted(rec)}")
    if rec.get("personas") not in PERSONAS:
        raise ValueError(f"{where}: record {name!r}: 'personas' must be one of {PERSONAS}, got {rec.get('personas')!r}")
    for metric, summ in rec.get("metrics", {}).items():
        if not isinstance(summ, dict) or "mean" not in summ:
            raise ValueError(f"{where}: record {name!r}: metric {metric!r} must be a dict with 'mean', 'stderr', 'n'")
    return rec


def aggregate_seeds(records: Iterable[dict]) -> list[dict]:
    """One record per (system, personas): a single seed is kept as is (spread = stderr over examples); k > 1
    seeds become the mean over seeds with spread = std over seeds (ddof=1) and ``n_seeds = k``."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for rec in records:
        check_record(rec, "tables.aggregate_seeds")
        groups.setdefault((rec["system"], rec["personas"]), []).append(rec)
    out = []
    for group in groups.values():
        if len(group) == 1:
            out.append({**group[0], "n_seeds": 1})
            continue
        merged = {k: v for k, v in group[0].items() if k not in ("metrics", "seed")}
        merged["seeds"] = [g.get("seed") for g in group]
        merged["n_seeds"] = len(group)
        merged["metrics"] = {}
        for metric in group[0]["metrics"]:
            means = [g["metrics"][metric]["mean"] for g in group if metric in g["metrics"]]
            merged["metrics"][metric] = {"mean": float(np.mean(means)), "stderr": float(np.std(means, ddof=1)),
                                         "n": min(int(g["metrics"][metric].get("n", 0)) for g in group
                                                  if metric in g["metrics"]), "n_seeds": len(means)}
        out.append(merged)
    return out


def record_from_eval(result: dict, system: str, personas: str, split: str, candidates: str,
                     model: str | None = None, seed: int | None = None) -> dict:
    """A measured record from ``transmitter_eval.evaluate_transmitter``'s flat dict (``hits@1`` / ``hits@1_se``,
    ``mrr``, ``ppl`` with ``ppl_ci95``, ``f1``, ``bleu``; counts ``n_turns`` / ``n_gen_turns``) or from a dict
    that already maps metric -> {"mean", "stderr", "n"} (``ir.evaluate_ir``)."""
    metrics = {}
    for m in DECIMALS:
        if isinstance(result.get(m), dict):
            metrics[m] = dict(result[m])
        elif result.get(m) is not None:
            n = result.get("n_gen_turns" if m in ("f1", "bleu") else "n_turns")
            metrics[m] = {"mean": float(result[m]), "stderr": result.get(f"{m}_se"), "n": n}
            if m == "ppl" and result.get("ppl_ci95") is not None:
                metrics[m]["ci95"] = tuple(result["ppl_ci95"])
    rec = {"system": system, "personas": personas, "metrics": metrics, "split": split, "candidates": candidates,
           "tokenizer": result.get("tokenizer", DASH), "model": model or result.get("backbone", DASH),
           "seed": result.get("seed") if seed is None else seed}
    return check_record(rec, "tables.record_from_eval")


def display_value(metric: str, value: float | None) -> float | None:
    """A record's value on the paper's scale: fractions ×100 for Hits@1 / MRR / F1 / BLEU, ppl unchanged."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return float(value) * 100.0 if metric in PERCENT_METRICS else float(value)


def fmt_cited(metric: str, value: float | None) -> str:
    """A cited value printed with the paper's decimals (54.8, 35.01, 0.56); "–" when not reported."""
    return DASH if value is None else f"{value:.{DECIMALS[metric]}f}"


def fmt_measured(metric: str, summ: dict | None) -> str:
    """``mean ± spread (n=…)`` on the paper's scale; with k > 1 seeds ``mean ± std (k seeds, n=…)``; a
    summary with a ``ci95`` (lo, hi) and no stderr (perplexity) shows ``mean [lo, hi] (n=…)``."""
    if not summ or summ.get("mean") is None:
        return DASH
    d = DECIMALS[metric]
    mean, spread = display_value(metric, summ["mean"]), display_value(metric, summ.get("stderr"))
    text = f"{mean:.{d}f}" if spread is None else f"{mean:.{d}f} ± {spread:.{d}f}"
    if spread is None and summ.get("ci95"):
        lo, hi = (display_value(metric, v) for v in summ["ci95"])
        text += f" [{lo:.{d}f}, {hi:.{d}f}]"
    k = summ.get("n_seeds", 1)
    seeds = f"{k} seeds, " if k > 1 else ""
    return f"{text} ({seeds}n={summ.get('n', '?')})"


def relative_change(value: float | None, base: float | None) -> float:
    """Relative change in percent, 100·(value − base)/base (Table 3); NaN when either is missing or base is 0."""
    if value is None or base is None or base == 0 or any(map(math.isnan, (value, base))):
        return math.nan
    return 100.0 * (value - base) / base


def fmt_change(change: float) -> str:
    """"+5.2%" / "-4.7%" / "0.0%"; "–" for NaN."""
    return DASH if math.isnan(change) else f"{change:+.1f}%".replace("+0.0%", "0.0%").replace("-0.0%", "0.0%")


def budget_text(training: dict | None) -> str:
    """A saved model's ``training_budget`` (``Transmitter.training_budget``, ``training.json``) in words, for
    the model column of Tables 1 / 3, so that variants trained for different budgets are never compared
    silently: ``{"optimizer_steps": 100}`` -> "100 optimizer steps"; with ``selfplay_updates`` 10 and
    ``selfplay_dialogues_per_update`` 4 -> "100 optimizer steps + 10 self-play updates of 4 dialogues"."""
    training = training or {}
    parts = []
    if training.get("optimizer_steps") is not None:
        parts.append(f"{int(training['optimizer_steps'])} optimizer steps")
    if training.get("selfplay_updates") is not None:
        per = training.get("selfplay_dialogues_per_update")
        parts.append(f"{int(training['selfplay_updates'])} self-play updates" + (f" of {int(per)} dialogues" if per else ""))
    return " + ".join(parts) if parts else "training budget not recorded"


# --- Table 1 -------------------------------------------------------------------------------------------
def _cited_table1_row(row: dict) -> dict:
    out = {"system": row["system"], "kind": "cited"}
    for personas, short in (("original", "orig"), ("revised", "rev")):
        vals = row[personas] or (None,) * len(TABLE1_METRICS)
        for metric, v in zip(TABLE1_METRICS, vals):
            out[f"{short} {LABELS[metric]}"] = fmt_cited(metric, v)
    out.update({"split": "as in the paper", "candidates": "official", "tokenizer": DASH, "model": DASH,
                "source": f"cited: {PAPER}, Table 1"})
    return out


def _measured_table1_row(system: str, by_personas: dict[str, dict]) -> dict:
    out = {"system": system, "kind": "measured"}
    for personas, short in (("original", "orig"), ("revised", "rev")):
        rec = by_personas.get(personas, {})
        for metric in TABLE1_METRICS:
            out[f"{short} {LABELS[metric]}"] = fmt_measured(metric, rec.get("metrics", {}).get(metric))
    first = next(iter(by_personas.values()))
    for key in PROVENANCE:
        vals = sorted({str(r.get(key, DASH)) for r in by_personas.values()})
        out[key] = " / ".join(vals)
    k = first.get("n_seeds", 1)
    out["source"] = "measured" + (f", mean ± std over {k} seeds" if k > 1 else ", ± stderr over examples")
    return out


def build_table1(measured: Iterable[dict], cited: Sequence[dict] = CITED_TABLE1,
                 systems: Sequence[str] | None = None) -> pd.DataFrame:
    """Table 1: the paper's rows (cited exactly) followed by this project's measured rows, one row per system,
    original and revised personas side by side (Hits@1 %, ppl, F1 %). ``systems`` picks and orders the
    measured systems (default: all, in order of appearance); a named system without records is left out."""
    rows = [_cited_table1_row(r) for r in cited]
    by_system: dict[str, dict[str, dict]] = {}
    for rec in aggregate_seeds(measured):
        by_system.setdefault(rec["system"], {})[rec["personas"]] = rec
    order = list(by_system) if systems is None else [s for s in systems if s in by_system]
    rows += [_measured_table1_row(s, by_system[s]) for s in order]
    return pd.DataFrame(rows)


def evaluation_plan() -> list[tuple[str, str, tuple[str, ...]]]:
    """(folder under runs/<profile>/, personas, record names) to evaluate: the Table 1 systems (P²Bot-S and
    P²Bot) on both persona variants, every Table 3 variant on revised personas. P²Bot's records carry both
    of its names, so one evaluation serves both tables."""
    plan = []
    for name, folder in SYSTEM_FOLDERS.items():
        names = (name, TABLE1_ALIASES[name]) if name in TABLE1_ALIASES else (name,)
        in_table1 = name == "P²Bot-S" or name in TABLE1_ALIASES
        plan += [(folder, personas, names) for personas in (PERSONAS if in_table1 else ("revised",))]
    return plan


# --- Table 3 -------------------------------------------------------------------------------------------
def _table3_row(system: str, kind: str, values: dict[str, float | None], base: dict[str, float | None],
                cells: dict[str, str], extra: dict) -> dict:
    out = {"variant": system, "kind": kind}
    for metric in TABLE3_METRICS:
        out[LABELS[metric]] = cells[metric]
        out[f"Δ {LABELS[metric].split()[0]}"] = fmt_change(relative_change(values.get(metric), base.get(metric)))
    return {**out, **extra}


def build_table3(measured: Iterable[dict], cited: Sequence[dict] = CITED_TABLE3,
                 baseline: str = TABLE3_BASELINE) -> pd.DataFrame:
    """Table 3 (revised personas): each variant's measured row next to the paper's row, with the relative
    change of Hits@1, F1 and BLEU against P²Bot-S of the same kind (measured vs measured, cited vs cited).
    Only the paper's variants are shown; records of other systems are ignored."""
    recs = {r["system"]: r for r in aggregate_seeds(measured) if r["personas"] == "revised"}
    cited_vals = {c["system"]: dict(zip(TABLE3_METRICS, c["values"])) for c in cited}
    meas_vals = {s: {m: display_value(m, r["metrics"].get(m, {}).get("mean")) for m in TABLE3_METRICS}
                 for s, r in recs.items()}
    base_c, base_m = cited_vals.get(baseline, {}), meas_vals.get(baseline, {})
    order = [c["system"] for c in cited]
    rows = []
    for system in order:
        if system in recs:
            r = recs[system]
            cells = {m: fmt_measured(m, r["metrics"].get(m)) for m in TABLE3_METRICS}
            extra = {k: r.get(k, DASH) for k in PROVENANCE} | {"source": "measured"}
            rows.append(_table3_row(system, "measured", meas_vals[system], base_m, cells, extra))
        if system in cited_vals:
            cells = {m: fmt_cited(m, cited_vals[system][m]) for m in TABLE3_METRICS}
            extra = {"split": "as in the paper", "candidates": "official", "tokenizer": DASH, "model": DASH,
                     "source": f"cited: {PAPER}, Table 3"}
            rows.append(_table3_row(system, "cited", cited_vals[system], base_c, cells, extra))
    return pd.DataFrame(rows)


# --- numbers, one per row (for CSV / JSON readers) ------------------------------------------------------
def long_table(measured: Iterable[dict], include_cited: bool = True) -> pd.DataFrame:
    """Every number of Tables 1 and 3 in tidy form: table, system, kind, personas, metric, value (paper's
    scale), spread, spread_kind, ci95_low / ci95_high, n, n_seeds and provenance. Cited values are carried
    unchanged."""
    rows = []
    for rec in aggregate_seeds(measured):
        k = rec.get("n_seeds", 1)
        for metric, summ in rec["metrics"].items():
            if metric not in DECIMALS:
                continue
            rows.append({"table": "measured", "system": rec["system"], "kind": "measured",
                         "personas": rec["personas"], "metric": metric,
                         "value": display_value(metric, summ.get("mean")),
                         "spread": display_value(metric, summ.get("stderr")),
                         "spread_kind": "std over seeds" if k > 1 else "stderr over examples",
                         "ci95_low": display_value(metric, (summ.get("ci95") or (None, None))[0]),
                         "ci95_high": display_value(metric, (summ.get("ci95") or (None, None))[1]),
                         "n": summ.get("n"), "n_seeds": k, **{p: rec.get(p) for p in PROVENANCE}})
    if include_cited:
        for row in CITED_TABLE1:
            for personas in PERSONAS:
                for metric, v in zip(TABLE1_METRICS, row[personas] or (None,) * 3):
                    rows.append({"table": "Table 1", "system": row["system"], "kind": "cited",
                                 "personas": personas, "metric": metric, "value": v})
        for row in CITED_TABLE3:
            for metric, v in zip(TABLE3_METRICS, row["values"]):
                rows.append({"table": "Table 3", "system": row["system"], "kind": "cited",
                             "personas": "revised", "metric": metric, "value": v})
    return pd.DataFrame(rows)


# --- Table 4: sample responses --------------------------------------------------------------------------
def _clean(text: str) -> str:
    """One line, no Markdown table separators."""
    return " ".join(str(text).replace("|", "/").split())


def build_sample_table(samples: Iterable[dict], context_turns: int = 3) -> pd.DataFrame:
    """Table 4 layout, one text per row: for each sample its persona, the last ``context_turns`` utterances
    of the context (the last one is the partner's), the human reply and each system's reply.

    A sample is ``{"example": id, "persona": [...], "context": [...], "human": str, "replies": {system: str}}``.
    """
    rows = []
    for s in samples:
        for key in ("example", "persona", "context", "human", "replies"):
            if key not in s:
                raise ValueError(f"tables.build_sample_table: a sample lacks {key!r}: {sorted(s)}")
        ex = s["example"]
        rows.append({"example": ex, "role": "persona", "text": _clean("; ".join(s["persona"]))})
        ctx = list(s["context"])[-context_turns:]
        for back, utt in zip(range(len(ctx) - 1, -1, -1), ctx):
            speaker = "partner" if back % 2 == 0 else "self"
            rows.append({"example": ex, "role": f"context ({speaker})", "text": _clean(utt)})
        rows.append({"example": ex, "role": "human", "text": _clean(s["human"])})
        rows += [{"example": ex, "role": system, "text": _clean(reply)} for system, reply in s["replies"].items()]
    return pd.DataFrame(rows, columns=["example", "role", "text"])


# --- paired comparisons (the differences the paper draws, on the same turns) ------------------------------
PAIRED_COMPARISONS = (  # (a, b, persona variants): the table reports a − b
    ("P²Bot", "P²Bot-S", PERSONAS), ("P²Bot-S", UNTRAINED, PERSONAS),
    *((v, "P²Bot-S", ("revised",)) for v in ("−Persona", "−Next", "+RS.1", "+RS.1+RS.2", "+RS.1+RS.2+RS.3")),
)
PAIRED_METRICS = {"hits@1": "per_turn_rank", "f1": "per_turn_f1"}


def _paired_row(a: str, b: str, personas: str, metric: str, n: int, diff: float, se: float) -> dict:
    return {"comparison": f"{a} − {b}", "personas": personas, "metric": LABELS[metric], "n turns": n,
            "difference": round(diff, 2), "SE": round(se, 2), "beyond 2 SE": bool(abs(diff) > 2 * se)}


def build_paired(evaluations: Iterable[dict], comparisons=PAIRED_COMPARISONS, seed: int = 0) -> pd.DataFrame:
    """Paired differences a − b over the SAME test turns, with their standard error and whether they lie beyond
    2 SE (a difference worth the name): Hits@1 and F1 in percentage points (SE of the per-turn difference), and
    perplexity, a corpus ratio rather than a per-turn mean, as ppl_a − ppl_b with a paired bootstrap SE over
    turns (``metrics.paired_perplexity_difference``, seeded by ``seed``). ``evaluations``: notebook 04's raw
    results (``systems``, ``personas``, ``per_turn_rank`` / ``per_turn_f1`` / ``per_turn_nll`` + ``per_turn_ntok``)."""
    by = {(name, e["personas"]): e for e in evaluations for name in e["systems"]}
    rows = []
    for a, b, variants in comparisons:
        for personas in variants:
            if (a, personas) not in by or (b, personas) not in by:
                continue
            for metric, key in PAIRED_METRICS.items():
                xa, xb = by[(a, personas)].get(key), by[(b, personas)].get(key)
                if not xa or not xb:
                    continue
                if len(xa) != len(xb):
                    raise ValueError(f"tables.build_paired: {a} and {b} ({personas}) were scored on different "
                                     f"turns ({len(xa)} vs {len(xb)})")
                if key == "per_turn_rank":
                    xa, xb = [float(r == 1) for r in xa], [float(r == 1) for r in xb]
                d = 100.0 * (np.asarray(xa, dtype=float) - np.asarray(xb, dtype=float))
                se = float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else float("nan")
                rows.append(_paired_row(a, b, personas, metric, len(d), float(d.mean()), se))
            ea, eb = by[(a, personas)], by[(b, personas)]
            if ea.get("per_turn_nll") and eb.get("per_turn_nll"):
                if len(ea["per_turn_nll"]) != len(eb["per_turn_nll"]):
                    raise ValueError(f"tables.build_paired: {a} and {b} ({personas}) were scored on different "
                                     f"turns ({len(ea['per_turn_nll'])} vs {len(eb['per_turn_nll'])})")
                diff, se = paired_perplexity_difference(ea["per_turn_nll"], ea["per_turn_ntok"],
                                                        eb["per_turn_nll"], eb["per_turn_ntok"], seed=seed)
                rows.append(_paired_row(a, b, personas, "ppl", len(ea["per_turn_nll"]), diff, se))
    return pd.DataFrame(rows, columns=["comparison", "personas", "metric", "n turns", "difference", "SE",
                                       "beyond 2 SE"])
