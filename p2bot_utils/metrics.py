"""Evaluation metrics with ParlAI's exact definitions (the paper's Table 1 / 3 / 5 numbers used them).

- ``normalize_answer``, ``f1_score``, ``bleu_score``: ParlAI ``parlai/core/metrics.py`` (unigram F1 of
  ConvAI2; BLEU-4 with NLTK, epsilon smoothing), re-implemented here from its definition.
- ``rank_of_gold``, ``hits_at_k``, ``mrr``: ranking metrics over candidate scores (Hits@1 of 20
  candidates, Table 1; Hits@1 and MRR of 32 candidate personas, Table 5). Ranks are 1-based.
- ``perplexity``: exp of the mean negative log-likelihood per token.
- ``mean_and_stderr``, ``bootstrap_ci``: uncertainty of a mean over examples; ``paired_perplexity_difference``:
  the difference of two systems' corpus perplexities on the same turns, with a paired bootstrap error
  (``bootstrap_perplexities``: corpus perplexity over resampled turns).
- ``distinct_n``: diversity of generated utterances (self-play logging).

This module imports nothing of the project (only the standard library, NumPy and NLTK).
"""
from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np

# ParlAI's two regular expressions: whole-word English articles, and ASCII punctuation.
# The punctuation class is  ! " # $ % & ( ) * + , - . / : ; < = > ? @ [ \ ] ^ ` { | } ~ _ '
RE_ARTICLES = re.compile(r"\b(a|an|the)\b")
RE_PUNCTUATION = re.compile(r"[!\"#$%&()*+,\-./:;<=>?@\[\]\\^`{|}~_']")


# --- text overlap ----------------------------------------------------------------------------------
def normalize_answer(s: str) -> str:
    """ParlAI's normalisation: lowercase, punctuation -> space, articles -> space, collapse whitespace.

    >>> normalize_answer("The cat's   hat, isn't it?")
    'cat s hat isn t it'
    """
    if not isinstance(s, str):
        raise TypeError(f"metrics.normalize_answer: expected str, got {type(s).__name__}")
    s = s.lower()
    s = RE_PUNCTUATION.sub(" ", s)
    s = RE_ARTICLES.sub(" ", s)
    return " ".join(s.split())


def _answers_list(answers: str | Iterable[str], where: str) -> list[str]:
    """Accept one reference string or a non-empty list of them."""
    out = [answers] if isinstance(answers, str) else list(answers)
    if not out:
        raise ValueError(f"metrics.{where}: `answers` is empty; give at least one reference string")
    return out


def _prec_recall_f1(pred: Sequence[str], gold: Sequence[str]) -> tuple[float, float, float]:
    """Unigram precision, recall and F1 with multiset (Counter) intersection; all 0 when nothing is shared."""
    num_same = sum((Counter(gold) & Counter(pred)).values())
    if num_same == 0:
        return 0.0, 0.0, 0.0
    precision = num_same / len(pred)
    recall = num_same / len(gold)
    return precision, recall, 2 * precision * recall / (precision + recall)


def f1_score(guess: str | None, answers: str | Iterable[str] | None) -> float:
    """ParlAI unigram F1: max over ``answers`` of the token F1 between normalised whitespace tokens.

    An empty guess or answer scores 0 against it; ``None`` (ParlAI: no guess) scores 0.
    """
    if guess is None or answers is None:
        return 0.0
    g_tokens = normalize_answer(guess).split()
    refs = _answers_list(answers, "f1_score")
    return max(_prec_recall_f1(g_tokens, normalize_answer(a).split())[2] for a in refs)


def bleu_score(guess: str, answers: str | Iterable[str], k: int = 4) -> float:
    """ParlAI sentence BLEU-k: NLTK ``sentence_bleu`` with uniform weights 1/k on normalised tokens split on
    single spaces (as ParlAI does), every answer a reference, ``SmoothingFunction(epsilon=1e-12).method1``."""
    from nltk.translate import bleu_score as nltkbleu

    if k < 1:
        raise ValueError(f"metrics.bleu_score: k must be >= 1, got {k}")
    refs = [normalize_answer(a).split(" ") for a in _answers_list(answers, "bleu_score")]
    hyp = normalize_answer(guess).split(" ")
    return float(nltkbleu.sentence_bleu(
        refs, hyp, weights=[1.0 / k] * k,
        smoothing_function=nltkbleu.SmoothingFunction(epsilon=1e-12).method1,
    ))


def distinct_n(texts: Iterable[str], n: int) -> float:
    """Distinct-n (Li et al., 2016): number of distinct n-grams / total n-grams over all ``texts``, on
    lowercased whitespace tokens (no other normalisation); 0.0 when the texts hold no n-gram at all."""
    if n < 1:
        raise ValueError(f"metrics.distinct_n: n must be >= 1, got {n}")
    grams: Counter = Counter()
    for text in texts:
        toks = text.lower().split()
        grams.update(tuple(toks[i:i + n]) for i in range(len(toks) - n + 1))
    total = sum(grams.values())
    return len(grams) / total if total else 0.0


# --- ranking ---------------------------------------------------------------------------------------
def rank_of_gold(scores: Sequence[float], gold_index: int) -> int:
    """1-based rank of ``scores[gold_index]`` among ``scores`` (higher score = better).

    Ties are resolved in the gold's favour: rank = (number of scores STRICTLY greater than the gold's) + 1,
    so a candidate list of all-equal scores gives rank 1. NaN scores are rejected.
    """
    if hasattr(scores, "detach"):  # a torch tensor (any device / dtype), without importing torch
        scores = scores.detach().float().cpu().tolist()
    arr = np.asarray(scores, dtype=np.float64).reshape(-1)  # (C,)
    if arr.size == 0:
        raise ValueError("metrics.rank_of_gold: `scores` is empty")
    if not -arr.size <= gold_index < arr.size:
        raise IndexError(f"metrics.rank_of_gold: gold_index {gold_index} out of range for {arr.size} scores")
    if np.isnan(arr).any():
        raise ValueError("metrics.rank_of_gold: `scores` contains NaN")
    return int((arr > arr[gold_index]).sum()) + 1


def _ranks_array(rank_or_ranks: int | Iterable[int], where: str) -> np.ndarray:
    items = [rank_or_ranks] if isinstance(rank_or_ranks, (int, np.integer)) else list(rank_or_ranks)
    ranks = np.asarray(items).reshape(-1)  # (N,)
    if ranks.size == 0:
        raise ValueError(f"metrics.{where}: no ranks given")
    if not np.issubdtype(ranks.dtype, np.integer) or (ranks < 1).any():
        raise ValueError(f"metrics.{where}: ranks must be integers >= 1 (1-based), got {ranks.tolist()[:5]}")
    return ranks


def hits_at_k(rank_or_ranks: int | Iterable[int], k: int) -> float:
    """Hits@k: 1.0 if the 1-based rank is <= k, else 0.0; for a list of ranks, the mean over them."""
    if k < 1:
        raise ValueError(f"metrics.hits_at_k: k must be >= 1, got {k}")
    return float((_ranks_array(rank_or_ranks, "hits_at_k") <= k).mean())


def mrr(rank_or_ranks: int | Iterable[int]) -> float:
    """Mean reciprocal rank: mean of 1 / rank over 1-based ranks (one rank gives 1 / rank)."""
    return float((1.0 / _ranks_array(rank_or_ranks, "mrr")).mean())


# --- language modelling ----------------------------------------------------------------------------
def perplexity(total_nll: float, n_tokens: int) -> float:
    """Perplexity = exp(total_nll / n_tokens), with ``total_nll`` the summed natural-log negative
    log-likelihood of ``n_tokens`` tokens (inf when the exponent overflows)."""
    total_nll, n_tokens = float(total_nll), int(n_tokens)  # accepts NumPy / 0-d torch scalars
    if n_tokens <= 0:
        raise ValueError(f"metrics.perplexity: n_tokens must be > 0, got {n_tokens}")
    if math.isnan(total_nll):
        raise ValueError("metrics.perplexity: total_nll is NaN")
    try:
        return math.exp(total_nll / n_tokens)
    except OverflowError:
        return math.inf


# --- uncertainty -----------------------------------------------------------------------------------
def _values_array(values: Iterable[float], where: str) -> np.ndarray:
    arr = np.asarray(list(values), dtype=np.float64).reshape(-1)  # (N,)
    if arr.size == 0:
        raise ValueError(f"metrics.{where}: `values` is empty")
    return arr


def mean_and_stderr(values: Iterable[float]) -> tuple[float, float]:
    """Mean and standard error of the mean: sample std (ddof=1) / sqrt(n); the error is NaN when n < 2."""
    arr = _values_array(values, "mean_and_stderr")
    if arr.size < 2:
        return float(arr.mean()), math.nan
    return float(arr.mean()), float(arr.std(ddof=1) / math.sqrt(arr.size))


def bootstrap_ci(values: Iterable[float], n: int = 1000, seed: int = 0,
                 alpha: float = 0.05) -> tuple[float, float]:
    """Percentile bootstrap (1 - alpha) confidence interval of the mean: ``n`` resamples with replacement
    drawn by ``numpy.random.default_rng(seed)``; returns (low, high)."""
    arr = _values_array(values, "bootstrap_ci")
    if n < 1:
        raise ValueError(f"metrics.bootstrap_ci: n must be >= 1, got {n}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"metrics.bootstrap_ci: alpha must be in (0, 1), got {alpha}")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, arr.size, size=(n, arr.size))  # (n, N)
    means = arr[idx].mean(axis=1)  # (n,)
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def bootstrap_perplexities(nll: np.ndarray, n: np.ndarray, reps: int = 1000, seed: int = 0) -> np.ndarray:
    """Corpus perplexity exp(Σ nll / Σ n) of ``reps`` resamples of the turns (with replacement), (reps,).
    ``nll[i]``: turn i's summed negative log-likelihood, ``n[i]`` its token count. The draws depend only on
    ``seed`` and the number of turns, so two systems scored on the same turns are resampled alike (paired)."""
    idx = np.random.default_rng(seed).integers(0, len(nll), size=(reps, len(nll)))  # (reps, N)
    return np.exp(nll[idx].sum(1) / n[idx].sum(1))


def paired_perplexity_difference(nll_a: Sequence[float], n_a: Sequence[int], nll_b: Sequence[float],
                                 n_b: Sequence[int], reps: int = 1000, seed: int = 0) -> tuple[float, float]:
    """ppl_a − ppl_b of two systems scored on the SAME turns, and its standard error by a paired bootstrap.

    ``nll_*[i]`` is the summed negative log-likelihood of turn i's gold reply and ``n_*[i]`` its token count.
    Corpus perplexity, exp(Σ nll / Σ n), is a ratio over turns, not a mean of per-turn values, so the error of
    the difference comes from resampling turns (the same draw for both systems, which keeps the pairing):
    the standard deviation (ddof=1) of the ``reps`` resampled differences, drawn by
    ``numpy.random.default_rng(seed)``."""
    arrs = [np.asarray(list(x), dtype=np.float64).reshape(-1) for x in (nll_a, n_a, nll_b, n_b)]
    if len({a.size for a in arrs}) != 1 or arrs[0].size == 0:
        raise ValueError(f"metrics.paired_perplexity_difference: need four equally long, non-empty lists, got "
                         f"lengths {[a.size for a in arrs]}")
    if reps < 2:
        raise ValueError(f"metrics.paired_perplexity_difference: reps must be >= 2, got {reps}")
    la, ca, lb, cb = arrs
    if (ca <= 0).any() or (cb <= 0).any():
        raise ValueError("metrics.paired_perplexity_difference: every turn needs a token count > 0")
    diff = perplexity(la.sum(), int(ca.sum())) - perplexity(lb.sum(), int(cb.sum()))
    boot = bootstrap_perplexities(la, ca, reps, seed) - bootstrap_perplexities(lb, cb, reps, seed)  # same draws
    return float(diff), float(boot.std(ddof=1))
