"""Several replies of one context in ONE row: what makes ranking 20 candidates and training on K distractors
cost little more than the replies' own tokens (``Transmitter.forward(..., candidates=...)``).

The context runs once and keeps its KV cache; its C replies are laid end to end in a single row whose
attention mask lets each reply token see the context and the earlier tokens of ITS OWN reply only, with
positions restarting after the context for every reply. That is exactly the computation of C separate
(context, reply) rows (tested), without padding every reply to the longest and without copying the
context's cache C times. ``length_buckets`` does the same job for an encoder's batch of short texts (the
Receiver): length-sorted groups, each cut to its own longest. Pure tensor code: no model, no tokenizer.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch


def pack_rows(input_ids: torch.Tensor, attention_mask: torch.Tensor, C: int, labels: torch.Tensor | None = None) -> dict:
    """B·C right-padded reply rows (row i·C + j = reply j of context i) -> B packed rows: ``input_ids``,
    ``labels`` (when given), ``offsets`` (position inside its reply), ``segment`` (its reply's j, -1 on
    padding), all (B, Tp), and ``clf`` (B, C), each reply's last real position."""
    lens = attention_mask.sum(-1).tolist()
    return pack_lists([input_ids[r, :n].tolist() for r, n in enumerate(lens)], C,
                      None if labels is None else [labels[r, :n].tolist() for r, n in enumerate(lens)],
                      device=input_ids.device)


def pack_lists(replies: Sequence[Sequence[int]], C: int, labels: Sequence[Sequence[int]] | None = None,
               pad: int = 0, device=None) -> dict:
    """``pack_rows`` from id lists (reply r = j of context r // C)."""
    if not replies or len(replies) % C:
        raise ValueError(f"packing: {len(replies)} replies do not split evenly into contexts of {C}")
    B = len(replies) // C
    Tp = max(sum(len(replies[i * C + j]) for j in range(C)) for i in range(B))
    ids = torch.full((B, Tp), pad, dtype=torch.long)
    lab = torch.full((B, Tp), -100, dtype=torch.long)
    offsets = torch.zeros((B, Tp), dtype=torch.long)
    segment = torch.full((B, Tp), -1, dtype=torch.long)
    clf = torch.zeros((B, C), dtype=torch.long)
    for i in range(B):
        at = 0
        for j in range(C):
            r = replies[i * C + j]
            if not r:
                raise ValueError(f"packing: reply {i * C + j} is empty (a reply ends with <clf> at least)")
            ids[i, at:at + len(r)] = torch.tensor(r, dtype=torch.long)
            if labels is not None:
                lab[i, at:at + len(r)] = torch.tensor(labels[i * C + j], dtype=torch.long)
            offsets[i, at:at + len(r)] = torch.arange(len(r))
            segment[i, at:at + len(r)] = j
            at += len(r)
            clf[i, j] = at - 1
    out = {"input_ids": ids, "offsets": offsets, "segment": segment, "clf": clf}
    if labels is not None:
        out["labels"] = lab
    return {k: v.to(device) for k, v in out.items()} if device is not None else out


def packed_attention_mask(ctx_mask: torch.Tensor, segment: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive 4-D mask (B, 1, Tp, Tc + Tp): a reply token sees the real context tokens and the earlier
    tokens of its own reply, never another reply; a padding query sees the context only."""
    Tp = segment.shape[1]
    causal = torch.ones(Tp, Tp, dtype=torch.bool, device=segment.device).tril()  # (Tp, Tp)
    same = (segment[:, :, None] == segment[:, None, :]) & (segment[:, None, :] >= 0) & causal  # (B, Tp, Tp)
    see = torch.cat([ctx_mask.bool()[:, None, :].expand(-1, Tp, -1), same], -1)  # (B, Tp, Tc + Tp)
    return torch.zeros(see.shape, dtype=dtype, device=see.device).masked_fill(~see, torch.finfo(dtype).min)[:, None]


def length_buckets(lengths: torch.Tensor, mask: torch.Tensor, min_rows: int = 16,
                   max_buckets: int = 4) -> list[torch.Tensor]:
    """Row indices of (N,) ``lengths`` in at most ``max_buckets`` groups of similar length (sorted, equal
    counts, at least ``min_rows`` rows each so every encoder call keeps a large matmul). One group when the
    batch is small or not right-padded (cutting columns would then drop real tokens)."""
    n = int(lengths.numel())
    k = min(max_buckets, n // min_rows)
    right_padded = bool((mask.bool() == (torch.arange(mask.shape[1], device=mask.device) < lengths[:, None])).all())
    if k <= 1 or not right_padded:
        return [torch.arange(n, device=lengths.device)]
    order = torch.argsort(lengths, stable=True)
    return [chunk for chunk in torch.tensor_split(order, k) if chunk.numel()]
