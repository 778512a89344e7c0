"""Log-likelihood of utterances under a plain causal LM (no persona, no history): the core of reward R1
(language style, Eq. 6) and of ``transmitter.lm_log_likelihood`` for a plain LM.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch


def _lm_inputs(tokenizer, texts: Sequence[str], max_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``[start] text [end]`` token ids, right-padded, and a mask of the tokens that are scored.

    Position 0 is only context, never scored: the start marker (bos, else eos), or, for a tokenizer with
    neither (GPT-1's ``OpenAIGPTTokenizer``), the utterance's first token. The end marker (eos) is scored
    when the tokenizer has one; without it the utterance ends at its last token. So a GPT-1-style R1 is
    normalised by |a| - 1 (its tokens after the first), a GPT-2-style one by |a| + 1 (its tokens and eos)."""
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    end = tokenizer.eos_token_id
    head, tail = ([start] if start is not None else []), ([end] if end is not None else [])
    seqs = [head + tokenizer.encode(t, add_special_tokens=False)[:max_tokens] + tail for t in texts]
    width = max(1, max(len(s) for s in seqs))
    pad = end if end is not None else (getattr(tokenizer, "pad_token_id", None) or 0)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)  # (N, T); padding value never scored
    scored = torch.zeros((len(seqs), width), dtype=torch.bool)  # (N, T)
    for i, s in enumerate(seqs):
        if s:
            ids[i, : len(s)] = torch.tensor(s)
        scored[i, 1 : len(s)] = True
    return ids, scored


@torch.no_grad()
def utterance_log_likelihood(lm, tokenizer, texts: Sequence[str], length_normalised: bool = True,
                             max_tokens: int = 64) -> torch.Tensor:
    """(1/|a|) Σ_t log p_LM(a_t | a_<t) of each text under a plain causal LM (the core of Eq. 6).

    The end token is scored too, so an empty utterance gets the (low) score log p(end | start) instead of
    the undefined 0/0 (the released code maps that NaN to 0, the best possible score). A tokenizer without
    start and end markers (GPT-1) scores an utterance's tokens after its first (``_lm_inputs``); an utterance
    with nothing to score (empty or one token) then gets -log |V| per token, the score of knowing nothing.
    Returns (N,).
    """
    if len(texts) == 0:
        return torch.zeros(0)
    device = next(lm.parameters()).device
    ids, scored = _lm_inputs(tokenizer, texts, max_tokens)
    ids, scored = ids.to(device), scored.to(device)
    attn = torch.ones_like(ids)  # right padding: causal attention never looks at later (padded) positions
    logits = lm(input_ids=ids, attention_mask=attn).logits.float()  # (N, T, V)
    logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)  # (N, T-1)
    mask = scored[:, 1:].float()  # (N, T-1)
    total, n = (logp * mask).sum(-1), mask.sum(-1)  # (N,), (N,)
    if bool((n == 0).any()):  # only without start and end markers: nothing to score in this utterance
        uniform = -torch.log(torch.tensor(float(logits.shape[-1]), device=total.device))
        total, n = torch.where(n == 0, uniform, total), n.clamp(min=1)
    return (total / n if length_normalised else total).cpu()
