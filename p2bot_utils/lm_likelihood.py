"""Log-likelihood of utterances under a plain causal LM (no persona, no history): the core of reward R1
(language style, Eq. 6) and of ``transmitter.lm_log_likelihood`` for a plain LM.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch


def _lm_inputs(tokenizer, texts: Sequence[str], max_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``[start] text [end]`` token ids, right-padded, and a mask of the tokens that are scored
    (the text tokens and the end token; the start token is only context)."""
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    end = tokenizer.eos_token_id
    if start is None or end is None:
        raise ValueError("lm_likelihood._lm_inputs: the R1 tokenizer needs a bos or eos token to frame an utterance")
    seqs = [[start] + tokenizer.encode(t, add_special_tokens=False)[:max_tokens] + [end] for t in texts]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), end, dtype=torch.long)  # (N, T); padding value never scored
    scored = torch.zeros((len(seqs), width), dtype=torch.bool)  # (N, T)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        scored[i, 1 : len(s)] = True
    return ids, scored


@torch.no_grad()
def utterance_log_likelihood(lm, tokenizer, texts: Sequence[str], length_normalised: bool = True,
                             max_tokens: int = 64) -> torch.Tensor:
    """(1/|a|) Σ_t log p_LM(a_t | a_<t) of each text under a plain causal LM (the core of Eq. 6).

    The end token is scored too, so an empty utterance gets the (low) score log p(end | start) instead of
    the undefined 0/0 (the released code maps that NaN to 0, the best possible score). Returns (N,).
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
    total = (logp * mask).sum(-1)  # (N,)
    return (total / mask.sum(-1) if length_normalised else total).cpu()
