"""The Receiver (paper Sec. 4, Eq. 11-15): how well do a speaker's utterances reveal their persona?

An *impression encoder* embeds each utterance x_i of one speaker, a *persona encoder* embeds each persona
sentence w_j (both BERT-style, masked mean pooling over real tokens). Then

    U = H Wᵀ / √d                                         (Eq. 11, relevance matrix, n x m)
    Agg(U_i) = Σ_j softmax_j(U_ij / tau) · U_ij           (Eq. 13, tau annealed 10 -> 0.5)
    c(x, w) = (1/n) Σ_i Agg(U_i)                          (Eq. 14, cumulative score)
    L = max(0, m + c(x, Z) - c(x, A)) + beta · |U|_1      (Eq. 12, A true persona, Z a distractor)
    score(x, w) = Agg(U_x)  for one utterance x           (Eq. 15, the self-play reward R3)

Options reproducing the authors' released code (``ReceiverConfig.released_code()``; the paper is the
default): ``shared_encoder`` (one BERT for both sides), ``utterance_reduce="sum"`` (sum over utterances),
``score_agg="max"`` (hard max over persona sentences when scoring), margin 0.5 and beta 1e-2.
"""
from __future__ import annotations

import copy
import json
import math
import os
from collections import OrderedDict
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModel, AutoTokenizer

from p2bot_utils.backbones import load_encoder
from p2bot_utils.errors import CheckpointError
from p2bot_utils.packing import length_buckets
from p2bot_utils.profile import atomic_write_json, staged_dir

CONFIG_NAME, WEIGHTS_NAME = "receiver_config.json", "model.safetensors"


@dataclass
class ReceiverConfig:
    """Everything that defines a Receiver; saved next to its weights."""

    backbone: str = "minilm-l6"         # backbones.load_encoder name (paper: bert-base-uncased)
    shared_encoder: bool = False        # paper: two encoders; released code: one shared BERT
    max_length: int = 32                # tokens per utterance / persona sentence (CPU budget)
    utterance_reduce: str = "mean"      # Eq. 14 mean over utterances; released code: "sum"
    score_agg: str = "agg"              # Eq. 13/15 Agg at scoring time; released code: "max"
    score_tau: float = 0.5              # tau when scoring = the end of the training schedule
    margin: float = 0.4                 # Eq. 12 m (released code: 0.5)
    l1_beta: float = 1e-4               # Eq. 12 beta (released code: 1e-2)
    tau_start: float = 10.0             # Sec. 4: tau annealed linearly from 10 ...
    tau_end: float = 0.5                # ... to 0.5 over training
    distractor: str = "persona"         # "persona" (a real persona of another group) | "combination"
    train_layers: int = -1              # top transformer layers fine-tuned per encoder; -1 = all (paper);
                                        # fewer (embeddings and lower layers frozen) is a CPU-budget option

    def __post_init__(self) -> None:
        checks = {"utterance_reduce": ("mean", "sum"), "score_agg": ("agg", "max"),
                  "distractor": ("persona", "combination")}
        for name, allowed in checks.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"ReceiverConfig.{name}={getattr(self, name)!r}: expected one of {allowed}")
        for name in ("score_tau", "tau_start", "tau_end", "max_length"):
            if getattr(self, name) <= 0:
                raise ValueError(f"ReceiverConfig.{name}={getattr(self, name)!r}: must be > 0")

    @classmethod
    def released_code(cls, **overrides) -> "ReceiverConfig":
        """The authors' released-code choices (SivilTaram/Persona-Dialogue-Generation) instead of the paper's."""
        kw = dict(shared_encoder=True, utterance_reduce="sum", score_agg="max", margin=0.5, l1_beta=1e-2,
                  distractor="combination")
        return cls(**{**kw, **overrides})

    @classmethod
    def from_dict(cls, d: dict) -> "ReceiverConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


# --- the equations as pure functions ------------------------------------------------------------------
def masked_mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sec. 4 mean pooling over real tokens only: (B, T, H), (B, T) -> (B, H); padding never enters."""
    m = mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)


def relevance(H: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """Eq. 11: U = H Wᵀ / √d.  H (..., n, d), W (..., m, d) -> U (..., n, m)."""
    return H @ W.transpose(-1, -2) / math.sqrt(H.shape[-1])


def agg(U: torch.Tensor, tau: float, persona_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 13: Agg(U_i) = Σ_j softmax_j(U_ij / tau) U_ij over the real persona sentences j.

    U (..., n, m), persona_mask (..., m) bool -> (..., n). Large tau -> plain mean, small tau -> max.
    """
    if tau <= 0:
        raise ValueError(f"agg: tau={tau} must be > 0")
    logits = U / tau
    if persona_mask is not None:
        pm = persona_mask.unsqueeze(-2)  # (..., 1, m)
        logits = logits.masked_fill(~pm, float("-inf"))
        U = U.masked_fill(~pm, 0.0)
    return (torch.softmax(logits, dim=-1) * U).sum(-1)


def hard_max(U: torch.Tensor, persona_mask: torch.Tensor | None = None) -> torch.Tensor:
    """The released code's scoring: max_j U_ij (the tau -> 0 limit of Eq. 13). (..., n, m) -> (..., n)."""
    if persona_mask is not None:
        U = U.masked_fill(~persona_mask.unsqueeze(-2), float("-inf"))
    return U.max(dim=-1).values


def cumulative_score(U: torch.Tensor, tau: float | None, utterance_mask: torch.Tensor | None = None,
                     persona_mask: torch.Tensor | None = None, reduce: str = "mean") -> torch.Tensor:
    """Eq. 14: c(x, w) = (1/n) Σ_i Agg(U_i) over the real utterances i ("sum": the released code's Σ_i).

    U (B, n, m) -> (B,). ``tau=None`` uses the hard max instead of Agg (released code, scoring time).
    """
    per_utt = hard_max(U, persona_mask) if tau is None else agg(U, tau, persona_mask)  # (B, n)
    if utterance_mask is None:
        utterance_mask = torch.ones(per_utt.shape, dtype=torch.bool, device=U.device)
    per_utt = per_utt.masked_fill(~utterance_mask, 0.0)
    total = per_utt.sum(-1)  # (B,)
    if reduce == "sum":
        return total
    return total / utterance_mask.sum(-1).clamp(min=1)


def l1_penalty(U: torch.Tensor, utterance_mask: torch.Tensor, persona_mask: torch.Tensor) -> torch.Tensor:
    """Eq. 12 sparsity term |U|_1: Σ_ij |U_ij| over real (utterance, sentence) pairs. (B, n, m) -> (B,)."""
    pair = utterance_mask.unsqueeze(-1) & persona_mask.unsqueeze(-2)  # (B, n, m)
    return (U.abs() * pair).sum((-1, -2))


def margin_loss(c_true: torch.Tensor, c_distractor: torch.Tensor, margin: float) -> torch.Tensor:
    """Eq. 12 hinge: max(0, m + c(x, Z) - c(x, A)), elementwise (B,)."""
    return F.relu(margin + c_distractor - c_true)


def tau_at(progress: float, start: float = 10.0, end: float = 0.5) -> float:
    """Sec. 4: tau annealed linearly from ``start`` (progress 0) to ``end`` (progress 1)."""
    p = min(max(float(progress), 0.0), 1.0)
    return start + (end - start) * p


def receiver_loss(out: dict, config: ReceiverConfig, progress: float) -> dict[str, torch.Tensor]:
    """Eq. 12 on a batch from ``Receiver.forward``: mean over the batch of hinge + beta·|U_A|_1.

    The L1 term is taken on U of the true persona A (the U of Eq. 11); also returns the margin accuracy
    (fraction with c_A > c_Z) and tau for the training log.
    """
    tau = tau_at(progress, config.tau_start, config.tau_end)
    red = config.utterance_reduce
    c_a = cumulative_score(out["U_true"], tau, out["utt_mask"], out["true_mask"], red)  # (B,)
    c_z = cumulative_score(out["U_distractor"], tau, out["utt_mask"], out["distractor_mask"], red)  # (B,)
    hinge = margin_loss(c_a, c_z, config.margin).mean()
    l1 = l1_penalty(out["U_true"], out["utt_mask"], out["true_mask"]).mean()
    loss = hinge + config.l1_beta * l1
    return {"loss": loss, "hinge": hinge.detach(), "l1": l1.detach(),
            "margin_acc": (c_a > c_z).float().mean().detach(), "tau": torch.tensor(tau)}


# --- packing texts: groups of sentences -> one flat tokenised batch + an index to unflatten -------------
def pack_texts(tokenizer, groups: Sequence[Sequence[str]], max_length: int) -> dict[str, torch.Tensor]:
    """Tokenise B groups of texts at once: ``ids``/``mask`` (N, T) for the N texts, ``index`` (B, L) with
    the row of each group's l-th text in the flat batch (-1 = padding)."""
    flat = [t for g in groups for t in g]
    if not flat:
        raise ValueError("pack_texts: every group is empty; nothing to encode")
    enc = tokenizer(flat, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    L = max(len(g) for g in groups)
    index = torch.full((len(groups), L), -1, dtype=torch.long)
    row = 0
    for b, g in enumerate(groups):
        index[b, : len(g)] = torch.arange(row, row + len(g))
        row += len(g)
    return {"ids": enc["input_ids"], "mask": enc["attention_mask"], "index": index}


def unpack(flat: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, d) flat embeddings + (B, L) index -> (B, L, d) zero-padded and a (B, L) bool mask."""
    mask = index >= 0
    out = flat[index.clamp(min=0)] * mask.unsqueeze(-1).to(flat.dtype)  # (B, L, d)
    return out, mask


# --- the model ---------------------------------------------------------------------------------------
def _freeze_lower_layers(encoder: nn.Module, train_layers: int) -> None:
    """Keep only the top ``train_layers`` transformer blocks trainable (-1 = everything, the paper)."""
    if train_layers < 0:
        return
    layers = getattr(getattr(encoder, "encoder", None), "layer", None)
    if layers is None:
        raise ValueError(f"ReceiverConfig.train_layers={train_layers}: {type(encoder).__name__} has no "
                         f".encoder.layer blocks; use -1 (train everything)")
    encoder.requires_grad_(False)
    for block in list(layers)[len(layers) - train_layers:] if train_layers else []:
        block.requires_grad_(True)


def _drop_pooler(encoder: nn.Module) -> nn.Module:
    """Mean pooling replaces BERT's [CLS] pooler: remove it so no parameter goes untrained."""
    if getattr(encoder, "pooler", None) is not None:
        encoder.pooler = None
    return encoder


class Receiver(nn.Module):
    """Impression encoder + persona encoder (Sec. 4). ``forward`` takes a packed training batch."""

    def __init__(self, config: ReceiverConfig, impression_encoder: nn.Module, tokenizer,
                 persona_encoder: nn.Module | None = None):
        super().__init__()
        if config.shared_encoder and persona_encoder is not None:
            raise ValueError("Receiver: shared_encoder=True takes no separate persona_encoder")
        self.config, self.tokenizer = config, tokenizer
        self.impression_encoder = _drop_pooler(impression_encoder)
        if not config.shared_encoder:
            other = persona_encoder if persona_encoder is not None else copy.deepcopy(impression_encoder)
            self._persona_encoder = _drop_pooler(other)
        for enc in {id(e): e for e in (self.impression_encoder, self.persona_encoder)}.values():
            _freeze_lower_layers(enc, config.train_layers)
        self._cache: OrderedDict = OrderedDict()  # persona tuple -> (m, d) embeddings; see clear_cache

    @property
    def persona_encoder(self) -> nn.Module:
        return self.impression_encoder if self.config.shared_encoder else self._persona_encoder

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dim(self) -> int:
        return int(self.impression_encoder.config.hidden_size)

    def encode_tokens(self, ids: torch.Tensor, mask: torch.Tensor, which: str) -> torch.Tensor:
        """(N, T) token ids -> (N, d) masked-mean-pooled embeddings from the impression / persona encoder.

        The texts are encoded in length buckets (``packing.length_buckets``), each cut to its own longest text, so a
        batch of short persona sentences does not pay for one long utterance; the result is the same as one
        padded call (padding is masked out of attention and pooling), up to float rounding."""
        enc = {"impression": self.impression_encoder, "persona": self.persona_encoder}[which]
        lengths = mask.sum(1)
        buckets = length_buckets(lengths, mask)
        if len(buckets) == 1:
            hidden = enc(input_ids=ids, attention_mask=mask).last_hidden_state  # (N, T, d)
            return masked_mean_pool(hidden, mask)
        parts = []
        for rows in buckets:
            t = int(lengths[rows].max())
            hidden = enc(input_ids=ids[rows, :t], attention_mask=mask[rows, :t]).last_hidden_state
            parts.append(masked_mean_pool(hidden, mask[rows, :t]))
        order = torch.cat(buckets)
        return torch.cat(parts)[torch.argsort(order)]  # back to the input order

    def encode_packed(self, packed: dict, which: str) -> tuple[torch.Tensor, torch.Tensor]:
        """A ``pack_texts`` dict -> (B, L, d) embeddings and (B, L) mask."""
        dev = self.device
        flat = self.encode_tokens(packed["ids"].to(dev), packed["mask"].to(dev), which)  # (N, d)
        return unpack(flat, packed["index"].to(dev))

    def encode_texts(self, texts: Sequence[str], which: str) -> torch.Tensor:
        """A list of strings -> (N, d)."""
        packed = pack_texts(self.tokenizer, [list(texts)], self.config.max_length)
        return self.encode_packed(packed, which)[0][0]

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        """Eq. 11 for a training batch (see ``collate_examples``): U of the utterances against the true
        persona and against the distractor, with masks."""
        H, utt_mask = self.encode_packed(batch["utterances"], "impression")  # (B, n, d)
        W_a, a_mask = self.encode_packed(batch["true"], "persona")  # (B, m, d)
        W_z, z_mask = self.encode_packed(batch["distractor"], "persona")  # (B, m', d)
        return {"U_true": relevance(H, W_a), "U_distractor": relevance(H, W_z), "utt_mask": utt_mask,
                "true_mask": a_mask, "distractor_mask": z_mask}

    # --- scoring (no gradient) ---
    def scoring_tau(self) -> float | None:
        """tau used outside training: ``score_tau``, or None (hard max) for ``score_agg="max"``."""
        return None if self.config.score_agg == "max" else self.config.score_tau

    @torch.no_grad()
    def relevance_matrix(self, utterances: Sequence[str], persona: Sequence[str]) -> torch.Tensor:
        """Eq. 11 for one dialogue side: U (n, m) on the CPU (Figure 6)."""
        H = self.encode_texts(utterances, "impression")
        W = self.encode_texts(persona, "persona")
        return relevance(H, W).cpu()

    @torch.no_grad()
    def cumulative_scores(self, utterances: Sequence[str], personas: Sequence[Sequence[str]]) -> torch.Tensor:
        """Eq. 14 of one dialogue side against each of P candidate personas -> (P,) on the CPU."""
        H = self.encode_texts(utterances, "impression")  # (n, d)
        W, w_mask = self.encode_packed(pack_texts(self.tokenizer, personas, self.config.max_length), "persona")
        U = relevance(H.unsqueeze(0), W)  # (P, n, m)
        return cumulative_score(U, self.scoring_tau(), None, w_mask, self.config.utterance_reduce).cpu()

    def clear_cache(self) -> None:
        """Forget cached persona embeddings (call after changing the weights)."""
        self._cache.clear()

    def train(self, mode: bool = True):
        self.clear_cache()
        return super().train(mode)

    # --- persistence: one folder, safetensors + JSON config + tokenizer ---
    def save_pretrained(self, out_dir: str | os.PathLike) -> Path:
        """Write ``receiver_config.json`` (with the encoder's config), ``model.safetensors`` and the tokenizer,
        the folder whole (``profile.staged_dir``)."""
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        with staged_dir(out_dir) as tmp:
            save_file(state, str(tmp / WEIGHTS_NAME))
            self.tokenizer.save_pretrained(str(tmp))
            atomic_write_json(tmp / CONFIG_NAME, {"receiver": asdict(self.config),
                                                  "encoder": self.impression_encoder.config.to_dict()})
        return Path(out_dir)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, device: str | None = None) -> "Receiver":
        """Rebuild a saved Receiver (no network, no pickles); a missing, foreign or damaged folder is a
        ``CheckpointError`` naming it."""
        path = Path(path)
        cfg_file = path / CONFIG_NAME
        if not cfg_file.is_file():
            other = " (it holds a Transmitter)" if (path / "transmitter_config.json").is_file() else ""
            raise CheckpointError(f"{path}: not a saved Receiver{other}: {CONFIG_NAME} missing")
        try:
            meta = json.loads(cfg_file.read_text(encoding="utf-8"))
            config = ReceiverConfig.from_dict(meta["receiver"])
            enc_cfg = dict(meta["encoder"])
            enc_config = AutoConfig.for_model(enc_cfg.pop("model_type"), **enc_cfg)
            model = cls(config, AutoModel.from_config(enc_config), AutoTokenizer.from_pretrained(str(path)),
                        None if config.shared_encoder else AutoModel.from_config(enc_config))
            res = model.load_state_dict(load_file(str(path / WEIGHTS_NAME)), strict=False)
        except (OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError) as e:
            raise CheckpointError(f"{path}: damaged Receiver folder ({type(e).__name__}: "
                                  f"{str(e).splitlines()[0] if str(e) else 'no detail'})") from None
        if res.missing_keys or res.unexpected_keys:
            raise CheckpointError(f"{path / WEIGHTS_NAME}: weights do not match the saved config: "
                                  f"missing {res.missing_keys[:3]}, unexpected {res.unexpected_keys[:3]}")
        return model.to(device or "cpu").eval()

    @classmethod
    def from_backbone(cls, config: ReceiverConfig, cache_dir: str | None = None) -> "Receiver":
        """A fresh (untrained) Receiver: both encoders initialised from ``config.backbone``."""
        encoder, tokenizer = load_encoder(config.backbone, cache_dir=cache_dir)
        return cls(config, encoder, tokenizer)


# --- the self-play scoring API (Eq. 15) ---------------------------------------------------------------
@torch.no_grad()
def score_utterances(receiver: Receiver, utterances: Sequence[str], personas: Sequence[Sequence[str]],
                     persona_cache: dict | None = None, cache_size: int = 4096) -> torch.Tensor:
    """Eq. 15: score(x_k, w_k) = Agg(U of x_k against its own persona w_k) for every k -> (K,) on the
    receiver's device. One encoder call for all utterances; each distinct persona is encoded once and
    kept in ``persona_cache`` (default: the receiver's LRU of ``cache_size`` personas; weights assumed
    frozen — ``receiver.clear_cache()`` after changing them)."""
    if len(utterances) != len(personas):
        raise ValueError(f"score_utterances: {len(utterances)} utterances but {len(personas)} personas")
    if not utterances:
        return torch.zeros(0, device=receiver.device)
    cache = receiver._cache if persona_cache is None else persona_cache
    keys = [tuple(p) for p in personas]
    missing = list(dict.fromkeys(k for k in keys if k not in cache))
    if missing:
        W, w_mask = receiver.encode_packed(pack_texts(receiver.tokenizer, missing, receiver.config.max_length),
                                           "persona")  # (P, m, d)
        for i, k in enumerate(missing):
            cache[k] = W[i, w_mask[i]]  # (m_k, d)
    rows = [cache[k] for k in keys]
    if persona_cache is None:
        for k in keys:
            receiver._cache.move_to_end(k)
        while len(receiver._cache) > cache_size:
            receiver._cache.popitem(last=False)
    W = nn.utils.rnn.pad_sequence(rows, batch_first=True)  # (K, m, d)
    w_mask = nn.utils.rnn.pad_sequence([torch.ones(len(r), dtype=torch.bool, device=W.device) for r in rows],
                                       batch_first=True)  # (K, m)
    H = receiver.encode_texts(list(utterances), "impression").unsqueeze(1)  # (K, 1, d)
    U = relevance(H, W)  # (K, 1, m)
    return cumulative_score(U, receiver.scoring_tau(), None, w_mask, "mean")  # (K,)


# --- a training batch of Eq. 12 triples (``sides.ReceiverExample``) ------------------------------------
def collate_examples(examples: Sequence, tokenizer, max_length: int) -> dict:
    """A batch for ``Receiver.forward``: three ``pack_texts`` dicts (utterances, true, distractor)."""
    return {"utterances": pack_texts(tokenizer, [e.utterances for e in examples], max_length),
            "true": pack_texts(tokenizer, [e.persona for e in examples], max_length),
            "distractor": pack_texts(tokenizer, [e.distractor for e in examples], max_length)}
