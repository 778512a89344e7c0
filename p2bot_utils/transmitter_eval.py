"""Evaluation of the Transmitter (paper Sec. 5): Hits@1 / MRR over 20 candidates, perplexity, F1 and BLEU.

Ranking shares each turn's context among its 20 candidates: the context runs ONCE and the 20 candidates run
as ONE packed row on its KV cache, each seeing only the context and itself (``rank_candidates``); ``rank_candidates_per_pair``
is the plain one-forward-per-pair reference (same numbers, used by tests and the benchmark). ``evaluate_transmitter``
goes one step further: the same context pass also feeds the beam search of the turn's reply.
``python -m p2bot_utils evaluate-transmitter`` (``cli``) calls ``evaluate_transmitter``.
"""
from __future__ import annotations

import copy
import json
import random
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from p2bot_utils import metrics
from p2bot_utils.decoding import context_lengths, generate_on_prefill, length_sorted_chunks, prefill_contexts
from p2bot_utils.episodes import episode_turns
from p2bot_utils.profile import atomic_write_text, timed_phase
from p2bot_utils.transmitter import Transmitter, candidate_batch, encode_texts, layout_batch, score_replies


def select_turns(episodes: Sequence, max_turns: int | None = None, seed: int = 0) -> list[dict]:
    """Every turn that has candidates (gold last), or a seeded subsample of ``max_turns`` of them (in order)."""
    turns = [{"episode_id": ep.episode_id, "turn": k, "persona": p, "history": h, "reply": r, "candidates": c}
             for ep in episodes for k, (p, h, r, c) in enumerate(episode_turns(ep))]
    if max_turns is not None and 0 < max_turns < len(turns):
        keep = sorted(random.Random(seed).sample(range(len(turns)), max_turns))
        turns = [turns[i] for i in keep]
    return turns


def _candidate_ids(model: Transmitter, candidates: Sequence[Sequence[str]]) -> list[list[int]]:
    cap, clf = model.config.max_reply_tokens, model.ids.clf
    return [[*encode_texts(model.tokenizer, [], [], c)[2][:cap], clf] for cands in candidates for c in cands]


@torch.no_grad()
def rank_candidates(model: Transmitter, personas, histories, candidates, lm_rows: str = "gold") -> dict:
    """Score C candidates per context with ONE pass over the context and ONE packed row of its candidates
    (``Transmitter.forward(..., candidates=...)``, the same pass that trains the NUP head; ``packing``): each
    candidate sees the context and itself only, so the numbers equal ``rank_candidates_per_pair`` (the
    reference: one full forward per pair), without padding candidates to the longest or copying the context.

    Returns ``nup`` (B, C) NUP logits (None for −Next) and ``lm_sum`` / ``lm_n`` (B, C): summed log-likelihood
    of candidate tokens + ``<clf>`` and their count, for every candidate (``lm_rows="all"``) or only the gold
    (last; ``"gold"``, other entries NaN / 0) or none of them (``"none"``: NUP ranking only)."""
    if lm_rows not in ("all", "gold", "none"):
        raise ValueError(f"rank_candidates: lm_rows must be 'all', 'gold' or 'none', got {lm_rows!r}")
    if not model.supports_cache:  # a backbone without a KV cache: score each pair in full
        return rank_candidates_per_pair(model, personas, histories, candidates, with_lm=lm_rows != "none")
    b, cache = prefill_contexts(model, personas, histories)
    return rank_on_prefill(model, b, cache, candidates, lm_rows)


@torch.no_grad()
def rank_on_prefill(model: Transmitter, b: dict, cache, candidates, lm_rows: str = "gold") -> dict:
    """``rank_candidates`` for contexts already run by ``decoding.prefill_contexts`` (``b``, and ``cache``:
    everything before the final ``<self>``, consumed): ``<self>`` runs on the cache, then the packed candidates
    (``Transmitter.candidates_on_cache``). What lets evaluation run a context once for ranking AND generation."""
    B, C = len(candidates), len(candidates[0])
    mask, pos = b["attention_mask"], b["position_ids"]
    h_last, cache = model.hidden(b["input_ids"][:, -1:], mask, pos[:, -1:], cache)  # (B, 1, H)
    labelled = [lm_rows == "all" or (lm_rows == "gold" and r % C == C - 1) for r in range(B * C)]
    cb = candidate_batch(_candidate_ids(model, candidates), model.ids.pad, labelled if lm_rows != "none" else None)
    out = model.candidates_on_cache(h_last, cache, mask, pos, {k: v.to(model.device) for k, v in cb.items()})
    nup = out["nup_logits"].view(B, C) if model.head is not None else None
    lm_sum = torch.full((B * C,), float("nan"), device=model.device)
    lm_n = torch.zeros(B * C, dtype=torch.long, device=model.device)
    if lm_rows != "none":
        tok = -F.cross_entropy(out["lm_logits"], out["lm_targets"], reduction="none")  # (M,)
        keep = torch.tensor(labelled, device=model.device)
        lm_sum[keep] = torch.zeros(B * C, device=model.device).index_add(0, out["lm_rows"], tok)[keep]
        lm_n = torch.bincount(out["lm_rows"], minlength=B * C)
    return {"nup": nup, "lm_sum": lm_sum.view(B, C), "lm_n": lm_n.view(B, C)}


def rank_candidates_per_pair(model: Transmitter, personas, histories, candidates, with_lm: bool = True) -> dict:
    """Reference for ``rank_candidates``: one full forward per (context, candidate) pair (every row's LM, or
    only the NUP logits with ``with_lm=False``)."""
    B, C = len(personas), len(candidates[0])
    rep = lambda xs: [x for x in xs for _ in range(C)]  # noqa: E731
    P, H, R = rep(personas), rep(histories), [c for cs in candidates for c in cs]
    if not with_lm:
        b = layout_batch(model, P, H, R)
        nup = model(b["input_ids"], b["attention_mask"], b["position_ids"], clf_index=b["clf_index"])["nup_logits"]
        return {"nup": nup.view(B, C), "lm_sum": None, "lm_n": None}
    lm_sum, n_tok, nup = score_replies(model, P, H, R)
    return {"nup": None if nup is None else nup.view(B, C), "lm_sum": lm_sum.view(B, C), "lm_n": n_tok.view(B, C)}


def _ranking_scores(model: Transmitter, r: dict) -> torch.Tensor:
    """NUP logit, or (−Next) the length-normalised log-likelihood (Eq. 2) of each candidate, (B, C)."""
    return r["nup"] if r["nup"] is not None else r["lm_sum"] / r["lm_n"].clamp(min=1)


def _ppl_ci(nll: np.ndarray, n: np.ndarray, seed: int, reps: int = 1000) -> tuple[float, float]:
    """Percentile bootstrap 95% CI of corpus perplexity exp(sum nll / sum n), resampling turns."""
    lo, hi = np.quantile(metrics.bootstrap_perplexities(nll, n, reps, seed), [0.025, 0.975])
    return float(lo), float(hi)


@timed_phase("ranking")
def _rank_chunk(model, b, cache, P, H, cands, lm_rows) -> dict:
    if cache is None:  # a backbone without a KV cache
        return rank_candidates_per_pair(model, P, H, cands, with_lm=lm_rows != "none")
    return rank_on_prefill(model, b, cache, cands, lm_rows)


@torch.no_grad()
def _rank_and_generate(model, turns, n_gen: int, batch_size: int, rank_all: bool, gen_kw: dict,
                       show_progress: bool) -> tuple[list, list, list, list]:
    """Per turn: the gold's rank among its candidates (``rank_all``), the gold's summed NLL and token count
    (perplexity), and for the first ``n_gen`` turns the Eq. 3 reply. Turns go in length-sorted batches
    (``decoding.length_sorted_chunks``) and each context runs ONCE (``prefill_contexts``): its KV cache feeds
    the ranking, the beam search and the re-scoring of the beams. Results come back in the turns' order."""
    P, H = [t["persona"] for t in turns], [t["history"] for t in turns]
    ranks, nll, ntok, gens = [None] * len(turns), [None] * len(turns), [None] * len(turns), [None] * n_gen
    lm_rows = "all" if rank_all and model.head is None else "gold"  # −Next ranks by LM likelihood
    for idx in tqdm(length_sorted_chunks(context_lengths(model, P, H), batch_size), desc="rank + generate",
                    disable=not show_progress, leave=False):
        cP, cH = [P[i] for i in idx], [H[i] for i in idx]
        with timed_phase("ranking"):  # the shared context pass counts as ranking
            b, cache = prefill_contexts(model, cP, cH)
        rows = [j for j, i in enumerate(idx) if i < n_gen]
        keep = copy.deepcopy(cache) if rows and cache is not None else None
        cands = [turns[i]["candidates"] if rank_all else turns[i]["candidates"][-1:] for i in idx]  # ppl: gold only
        r = _rank_chunk(model, b, cache, cP, cH, cands, lm_rows)
        scores = _ranking_scores(model, r).cpu().numpy() if rank_all else None
        for j, i in enumerate(idx):
            if scores is not None:
                ranks[i] = metrics.rank_of_gold(scores[j], len(turns[i]["candidates"]) - 1)
            nll[i], ntok[i] = -float(r["lm_sum"][j, -1]), int(r["lm_n"][j, -1])
        if not rows:
            continue
        if len(rows) < len(idx):  # only some of this batch are generation turns
            sel = torch.tensor(rows, device=b["input_ids"].device)
            b = {k: v[sel] for k, v in b.items()}
            if keep is not None:
                keep.batch_select_indices(sel)
        got = generate_on_prefill(model, b, keep, [cP[j] for j in rows], [cH[j] for j in rows], **gen_kw)
        for j, o in zip(rows, got):
            gens[idx[j]] = o
    return [x for x in ranks if x is not None], nll, ntok, gens


def _ranking_metrics(ranks, nll, ntok, seed) -> dict:
    nll_a, n_a = np.array(nll), np.array(ntok)
    out = {"ppl": metrics.perplexity(nll_a.sum(), int(n_a.sum())), "ppl_ci95": _ppl_ci(nll_a, n_a, seed),
           "n_reply_tokens": int(n_a.sum())}
    if ranks:
        h1 = [float(x == 1) for x in ranks]
        out.update(dict(zip(("hits@1", "hits@1_se"), metrics.mean_and_stderr(h1))))
        out.update(dict(zip(("mrr", "mrr_se"), metrics.mean_and_stderr([1.0 / x for x in ranks]))))
    return out


def _generation_metrics(turns, outs, jsonl_path) -> dict:
    f1 = [metrics.f1_score(o["reply"], [t["reply"]]) for o, t in zip(outs, turns)]
    bleu = [metrics.bleu_score(o["reply"], [t["reply"]]) for o, t in zip(outs, turns)]
    if jsonl_path:
        rows = [{"episode_id": t["episode_id"], "turn": t["turn"], "persona": t["persona"],
                 "history": t["history"], "gold": t["reply"], **o, "f1": f, "bleu": b}
                for t, o, f, b in zip(turns, outs, f1, bleu)]
        atomic_write_text(jsonl_path, "".join(json.dumps(r) + "\n" for r in rows))
    out = {"n_gen_turns": len(turns), "per_turn_f1": f1}
    out.update(dict(zip(("f1", "f1_se"), metrics.mean_and_stderr(f1))))
    out.update(dict(zip(("bleu", "bleu_se"), metrics.mean_and_stderr(bleu))))
    return out


def evaluate_transmitter(model: Transmitter, episodes, max_turns: int | None = None, seed: int = 0, *,
                         rank: bool = True, generate: bool = True, gen_turns: int | None = None,
                         batch_size: int = 4, gen_batch_size: int = 16, alpha: float = 0.1, num_beams: int = 2,
                         max_new_tokens: int = 32, block_ngram: int = 0, jsonl_path=None,
                         show_progress: bool = True) -> dict:
    """Hits@1 and MRR over each turn's candidates (NUP head; LM likelihood for −Next), perplexity of the gold
    reply per BPE token (reply tokens + <clf>), F1 / BLEU of the Eq. 3 beam-search reply on the first
    ``gen_turns`` of the (seeded, ``max_turns``) turn sample. Every mean comes with a standard error
    (``*_se``), perplexity with a bootstrap 95% CI; ``n_turns`` / ``n_gen_turns`` say how many turns;
    ``per_turn_rank`` / ``per_turn_f1`` / ``per_turn_nll`` + ``per_turn_ntok`` keep the per-turn values for paired
    comparisons (``paired_difference``, ``metrics.paired_perplexity_difference``).
    Each context runs once for its ranking and its reply, in batches of ``batch_size`` turns (at least
    ``gen_batch_size`` when generating; ``_rank_and_generate``)."""
    turns = select_turns(episodes, max_turns, seed)
    if not turns or (rank and any(len(t["candidates"]) < 2 for t in turns)):
        raise ValueError("evaluate_transmitter: episodes need turns with >= 2 candidates (gold last)")
    model.eval()
    out = {"n_turns": len(turns), "n_candidates": len(turns[0]["candidates"]), "seed": seed,
           "ranking": ("nup" if model.head is not None else "lm_likelihood") if rank else None,
           "tokenizer": getattr(model.lm.config, "p2bot_tokenizer", model.config.backbone),
           "backbone": model.config.backbone, "variant": _variant_name(model)}
    n_gen = (min(gen_turns, len(turns)) if gen_turns else len(turns)) if generate else 0
    gen_kw = dict(num_beams=num_beams, max_new_tokens=max_new_tokens, alpha=alpha, block_ngram=block_ngram)
    ranks, nll, ntok, gens = _rank_and_generate(model, turns, n_gen, max(batch_size, gen_batch_size) if n_gen
                                                else batch_size, rank, gen_kw, show_progress)
    out.update(_ranking_metrics(ranks, nll, ntok, seed))
    if ranks:
        out["per_turn_rank"] = [int(x) for x in ranks]
    out["per_turn_nll"], out["per_turn_ntok"] = [float(x) for x in nll], [int(x) for x in ntok]  # paired ppl
    if generate:
        out.update(_generation_metrics(turns[:n_gen], gens, jsonl_path))
        out["block_ngram"] = block_ngram
    return out


def _variant_name(model: Transmitter) -> str:
    c = model.config
    return "full" if c.use_nup_head and c.use_persona else ("no_next" if not c.use_nup_head else "no_persona")


def paired_difference(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error of a − b over the SAME turns (two systems evaluated on one turn sample): the
    error of a difference, smaller than either system's own error when the turns' difficulty is shared."""
    if len(a) != len(b) or not len(a):
        raise ValueError(f"transmitter_eval.paired_difference: need two equally long, non-empty lists, got "
                         f"{len(a)} and {len(b)}")
    return metrics.mean_and_stderr([x - y for x, y in zip(a, b)])
