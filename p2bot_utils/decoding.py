"""Decoding with a Transmitter (paper Sec. 3.1 and 3.2): beam search re-ranked by Eq. 3 for evaluation and
for the user A in self-play, and token-by-token sampling with per-token log-probs for the learner B
(REINFORCE, Eq. 5). Beam search is transformers' ``generate()``; a reply ends at ``<clf>``.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import GenerationConfig, LogitsProcessorList

from p2bot_utils.cpu_linear import transposed_copies
from p2bot_utils.profile import timed_phase
from p2bot_utils.transmitter import (
    Transmitter,
    build_inputs,
    encode_texts,
    eq3_scores,
    layout_batch,
    pad_batch,
    score_replies,
)


def banned_ids(model: Transmitter) -> list[int]:
    """Tokens a reply may never contain: the layout's markers and padding (``<clf>`` ends the reply)."""
    return sorted({model.ids.persona, model.ids.self_, model.ids.partner, model.ids.pad} - {model.ids.clf})


def _split_reply(model: Transmitter, seq: Sequence[int]) -> list[int]:
    """Generated ids up to and including the first ``<clf>`` (padding after it dropped)."""
    out = []
    for t in map(int, seq):
        if t == model.ids.pad and t != model.ids.clf:
            continue
        out.append(t)
        if t == model.ids.clf:
            break
    return out


def _decode(model: Transmitter, ids: Sequence[int]) -> str:
    return model.tokenizer.decode([t for t in ids if t != model.ids.clf], skip_special_tokens=True).strip()


def reply_ngram_bans(reply_ids: Sequence[int], n: int) -> set[int]:
    """Tokens that would repeat an n-gram already in the reply so far (the released code's
    ``no_repeat_ngram_size``): the last n−1 tokens followed by t must not occur earlier in ``reply_ids``."""
    if n < 1 or len(reply_ids) < n - 1:
        return set()
    if n == 1:
        return set(map(int, reply_ids))
    prefix = tuple(reply_ids[len(reply_ids) - (n - 1):])
    return {int(reply_ids[i + n - 1]) for i in range(len(reply_ids) - n + 1)
            if tuple(reply_ids[i:i + n - 1]) == prefix}


class NoRepeatNGramInReply:
    """``generate()`` logits processor: ban n-gram repeats WITHIN the generated reply. (transformers'
    ``no_repeat_ngram_size`` also counts the prompt, which for a decoder-only model is the persona and the
    history: it would forbid "i like dogs" to a persona that says "i like dogs".)"""

    def __init__(self, n: int, prompt_len: int):
        self.n, self.prompt_len = n, prompt_len

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        for row, seq in enumerate(input_ids[:, self.prompt_len:].tolist()):
            banned = reply_ngram_bans(seq, self.n)
            if banned:
                scores[row, list(banned)] = -float("inf")
        return scores


def context_lengths(model: Transmitter, personas, histories) -> list[int]:
    """Tokens of each laid-out context (through ``<self>``): what batching sorts by."""
    c = model.config
    return [len(build_inputs(*encode_texts(model.tokenizer, p, h)[:2], None, model.ids, max_len=c.max_len,
                             max_reply_tokens=c.max_reply_tokens, use_persona=c.use_persona)["input_ids"])
            for p, h in zip(personas, histories)]


def length_sorted_chunks(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices in chunks of ``batch_size``, longest first, so that a batch pads to similar lengths (and the
    slowest batch shows early in a progress bar). Callers put results back in the original order."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[lo:lo + batch_size] for lo in range(0, len(order), batch_size)]


def prefill_contexts(model: Transmitter, personas, histories):
    """Left-padded contexts and the KV cache of everything before their final ``<self>`` (computed ONCE per
    context: beam search and the Eq. 3 re-scoring of its beams both start from it). The cache is None for a
    backbone that keeps none (e.g. GPT-1 as Hugging Face ships it; ours gets one from ``openai_gpt``)."""
    b = layout_batch(model, personas, histories, None, side="left")  # every row ends with <self>
    if not model.supports_cache:
        return b, None
    _, cache = model.hidden(b["input_ids"][:, :-1], b["attention_mask"][:, :-1], b["position_ids"][:, :-1],
                            use_cache=True)
    return b, cache


def _beam_search(model: Transmitter, b: dict, cache, num_beams: int, max_new_tokens: int, block_ngram: int):
    """``generate()`` beam search from a prefilled context (``cache``: consumed) -> B lists of beam id lists."""
    B, ids = b["input_ids"].shape[0], b["input_ids"]
    cfg = GenerationConfig(num_beams=num_beams, num_return_sequences=num_beams, do_sample=False,
                           max_new_tokens=max_new_tokens, min_new_tokens=1, eos_token_id=model.ids.clf,
                           pad_token_id=model.ids.pad, suppress_tokens=banned_ids(model), early_stopping=True,
                           length_penalty=1.0)
    procs = LogitsProcessorList([NoRepeatNGramInReply(block_ngram, ids.shape[1])] if block_ngram else [])
    kw = {}
    if cache is not None:  # generate() expands the inputs to B*K rows but not a cache: expand it here
        cache.batch_repeat_interleave(num_beams)
        kw["cache"] = cache
    with transposed_copies(model.lm):  # few-row products on a CPU (cpu_linear); the weights are fixed here
        gen = model.lm.generate(input_ids=ids, attention_mask=b["attention_mask"], generation_config=cfg,
                                logits_processor=procs, **kw)
    new = gen[:, ids.shape[1]:].tolist()  # (B*K, L)
    return [[_split_reply(model, new[i * num_beams + k]) for k in range(num_beams)] for i in range(B)]


def beam_candidates(model: Transmitter, personas, histories, num_beams: int = 2, max_new_tokens: int = 32,
                    block_ngram: int = 0):
    """Every beam of a beam search through ``generate()``: B lists of ``num_beams`` reply id lists.
    ``block_ngram`` = n > 0 forbids repeating any n-gram inside a reply (released code: 2; paper: 0 = off)."""
    b, cache = prefill_contexts(model, personas, histories)
    return _beam_search(model, b, cache, num_beams, max_new_tokens, block_ngram)


def score_on_context(model: Transmitter, b: dict, cache, reply_ids: Sequence[Sequence[int]]):
    """Summed log-likelihood (reply tokens + ``<clf>``), token count and NUP logit of R = B·K replies, reply
    r continuing context r // K, from the contexts' prefilled ``cache`` (``prefill_contexts``; consumed):
    only ``<self>`` + reply + ``<clf>`` run per reply. Equals ``transmitter.score_replies`` on full rows."""
    B, R = b["input_ids"].shape[0], len(reply_ids)
    K, clf, cap = R // B, model.ids.clf, model.config.max_reply_tokens
    rows = [[model.ids.self_, *[t for t in r if t != clf][:cap], clf] for r in reply_ids]
    cb = pad_batch(rows, model.ids.pad, "right", [[-100, *row[1:]] for row in rows])
    cb = {k: v.to(model.device) for k, v in cb.items()}
    cache.batch_repeat_interleave(K)
    mask = torch.cat([b["attention_mask"][:, :-1].repeat_interleave(K, 0), cb["attention_mask"]], -1)
    pos = b["position_ids"][:, -1:].repeat_interleave(K, 0) + cb["position_ids"]  # <self> keeps its position
    h, _ = model.hidden(cb["input_ids"], mask, pos, cache)  # (R, Tr, H)
    sel = cb["labels"][:, 1:] != -100  # position t predicts token t + 1
    tok = -F.cross_entropy(model.lm_logits(h[:, :-1][sel]).float(), cb["labels"][:, 1:][sel], reduction="none")
    lm_rows = sel.nonzero()[:, 0]
    lm_sum = torch.zeros(R, device=tok.device).index_add(0, lm_rows, tok)
    n_tok = torch.bincount(lm_rows, minlength=R)
    nup = model.nup_logit(h, cb["attention_mask"].sum(-1) - 1) if model.head is not None else None
    return lm_sum, n_tok, nup


@torch.no_grad()
@timed_phase("generation")
def generate_replies(model: Transmitter, personas, histories, *, num_beams: int = 2, max_new_tokens: int = 32,
                     alpha: float = 0.1, batch_size: int = 16, return_beams: bool = False,
                     show_progress: bool = False, block_ngram: int = 0):
    """Beam search (size 2, up to 32 tokens), every beam re-scored, the reply chosen by Eq. 3:
    alpha · (1/|y|) log p(y|s) + (1 − alpha) · log p(y=1|s, y) (alpha = 1, or −Next, gives Eq. 2).
    Returns texts; with ``return_beams`` dicts holding every beam with its two scores. ``block_ngram``: see
    ``beam_candidates`` (0 = paper).

    Speed without changing a result: contexts are batched longest first (less padding), each context runs
    once (its KV cache feeds the beam search and the re-scoring of its beams; ``prefill_contexts``), and a
    beam is re-scored from that cache (``score_on_context``) rather than as a full (context, reply) row."""
    out = [None] * len(personas)
    chunks = length_sorted_chunks(context_lengths(model, personas, histories), batch_size)
    for idx in tqdm(chunks, disable=not show_progress, desc="generate", leave=False):
        P, H = [personas[i] for i in idx], [histories[i] for i in idx]
        b, cache = prefill_contexts(model, P, H)
        got = generate_on_prefill(model, b, cache, P, H, num_beams=num_beams, max_new_tokens=max_new_tokens,
                                  alpha=alpha, block_ngram=block_ngram)
        for i, o in zip(idx, got):
            out[i] = o if return_beams else o["reply"]
    return out


@torch.no_grad()
@timed_phase("generation")
def generate_on_prefill(model: Transmitter, b: dict, cache, personas, histories, *, num_beams: int = 2,
                        max_new_tokens: int = 32, alpha: float = 0.1, block_ngram: int = 0) -> list[dict]:
    """``generate_replies`` for one batch whose contexts already ran (``prefill_contexts``: ``b`` and its
    ``cache``, consumed; None for a backbone without one, which then scores full rows of ``personas`` and
    ``histories``): one dict per row with the chosen ``reply``, every beam and its two Eq. 3 scores."""
    K = num_beams
    if cache is None:
        beams = _beam_search(model, b, None, K, max_new_tokens, block_ngram)
        flat = [r for bs in beams for r in bs]
        lm_sum, n_tok, logit = score_replies(model, [p for p in personas for _ in range(K)],
                                             [h for h in histories for _ in range(K)], reply_ids=flat)
    else:
        beams = _beam_search(model, b, copy.deepcopy(cache), K, max_new_tokens, block_ngram)
        lm_sum, n_tok, logit = score_on_context(model, b, cache, [r for bs in beams for r in bs])
    lm_norm = (lm_sum / n_tok.clamp(min=1)).view(-1, K)  # (B, K)
    nup = None if logit is None else F.logsigmoid(logit).view(-1, K)
    best = eq3_scores(lm_norm, nup, alpha).argmax(-1).tolist()
    return [{"reply": _decode(model, bs[best[i]]), "beams": [_decode(model, r) for r in bs],
             "lm_norm": lm_norm[i].tolist(), "nup_logp": None if nup is None else nup[i].tolist(), "chosen": best[i]}
            for i, bs in enumerate(beams)]


def sampling_log_probs(logits: torch.Tensor, temperature: float, top_k: int, banned: Sequence[int],
                       first: torch.Tensor, clf: int) -> torch.Tensor:
    """log of the distribution actually sampled from, (N, V): logits / temperature, markers banned, ``<clf>``
    banned on a reply's first token (``first`` (N,) bool: no empty replies), optional top-k."""
    if temperature <= 0:
        raise ValueError(f"transmitter: temperature must be > 0, got {temperature}")
    logits = logits.float() / temperature  # (N, V)
    ban = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
    ban[list(banned)] = True
    ban = ban.expand_as(logits).clone()
    ban[:, clf] |= first
    logits = logits.masked_fill(ban, float("-inf"))
    if top_k and top_k > 0:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]  # (N, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return logits.log_softmax(-1)


@dataclass
class SampledReplies:
    """Sampled replies: texts, token ids (ending with ``<clf>`` when the reply finished) and the per-token
    log-probs (no grad) of the distribution actually sampled from."""

    texts: list
    token_ids: list
    log_probs: list


@torch.no_grad()
def sample_replies(model: Transmitter, personas, histories, max_new_tokens: int = 32, temperature: float = 1.0,
                   top_k: int = 0, generator: torch.Generator | None = None) -> SampledReplies:
    """Multinomial sampling for self-play (batched, KV cache). Run in ``eval()`` mode so that
    ``sequence_log_probs`` (same mode) recomputes exactly these log-probs with gradient."""
    if max_new_tokens > model.config.max_reply_tokens:
        raise ValueError(f"transmitter.sample_replies: max_new_tokens={max_new_tokens} exceeds the layout's "
                         f"max_reply_tokens={model.config.max_reply_tokens}")
    b = layout_batch(model, personas, histories, None, side="left")
    mask, clf, pad = b["attention_mask"], model.ids.clf, model.ids.pad
    ids, h, cache = b["input_ids"], *model.hidden(b["input_ids"], mask, b["position_ids"], use_cache=True)
    pos = b["position_ids"][:, -1:]  # (B, 1)
    done = torch.zeros(len(personas), dtype=torch.bool, device=mask.device)
    toks, lps, banned = [], [], banned_ids(model)
    with transposed_copies(model.lm):  # few-row products on a CPU (cpu_linear); the weights are fixed here
        for step in range(max_new_tokens):
            logp = sampling_log_probs(model.lm_logits(h[:, -1]), temperature, top_k, banned,
                                      torch.full_like(done, step == 0), clf)  # (B, V)
            tok = torch.multinomial(logp.exp(), 1, generator=generator).squeeze(-1).masked_fill(done, pad)  # (B,)
            toks.append(tok)
            lps.append(logp.gather(-1, tok[:, None]).squeeze(-1))
            done = done | (tok == clf)
            if bool(done.all()):
                break
            mask, pos = torch.cat([mask, torch.ones_like(mask[:, :1])], -1), pos + 1
            ids = torch.cat([ids, tok[:, None]], -1)  # (B, T + step + 1), for backbones without a KV cache
            h, cache = model.hidden(tok[:, None], mask, pos, cache) if cache is not None else model.hidden(ids, mask)
    T, L = torch.stack(toks, 1).tolist(), torch.stack(lps, 1)  # (B, S)
    ids = [_split_reply(model, row) for row in T]
    return SampledReplies([_decode(model, r) for r in ids], ids, [L[i, :len(r)] for i, r in enumerate(ids)])


def sequence_log_probs(model: Transmitter, personas, histories, reply_ids, temperature: float = 1.0,
                       top_k: int = 0) -> list:
    """Per-token log-probs (WITH gradient) of given replies (e.g. ``SampledReplies.token_ids``) under the
    same sampling distribution as ``sample_replies`` (REINFORCE, Eq. 5). One 1-D tensor per reply."""
    b = layout_batch(model, personas, histories, reply_ids=reply_ids)
    out = model(b["input_ids"], b["attention_mask"], b["position_ids"], b["labels"])
    rows = out["lm_rows"]  # (M,), sorted by row, then position
    first = torch.ones_like(rows, dtype=torch.bool)
    first[1:] = rows[1:] != rows[:-1]
    logp = sampling_log_probs(out["lm_logits"], temperature, top_k, banned_ids(model), first, model.ids.clf)
    tok_lp = logp.gather(-1, out["lm_targets"][:, None]).squeeze(-1)  # (M,)
    per_row = list(torch.split(tok_lp, torch.bincount(rows, minlength=len(reply_ids)).tolist()))
    # a reply cut at max_new_tokens has no <clf>: drop the <clf> target the layout appended
    return [lp if (r and r[-1] == model.ids.clf) else lp[:-1] for lp, r in zip(per_row, reply_ids)]


def decoding_params(params: dict) -> dict:
    """Decoding settings from a profile, for ``generate_replies`` / ``transmitter_eval.evaluate_transmitter``:
    Eq. 3's α (``transmitter_alpha``: the one α of every notebook; 1.0 = Eq. 2), the beam size
    (``transmitter_num_beams``) and the reply cap in tokens (``transmitter_max_new_tokens``)."""
    alpha = float(params["transmitter_alpha"])
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"transmitter_alpha={alpha}: Eq. 3's α must lie in [0, 1]")
    return dict(alpha=alpha, num_beams=int(params["transmitter_num_beams"]),
                max_new_tokens=int(params["transmitter_max_new_tokens"]))
