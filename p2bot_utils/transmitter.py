"""The Transmitter (paper Sec. 3.1, Eq. 1-3): input layout, causal LM + next-utterance head, scoring, decoding.

One sequence per (persona, history, reply), built by ``build_inputs`` from token ids::

    <persona> p_1 ... p_k  <partner> x_1  <self> a_1  ...  <partner> x_n  <self> y_1 ... y_m  <clf>

Segments are told apart by marker tokens (no ``token_type_ids``), so any causal LM works, Llama-style ones
included. ``<clf>`` ends the reply (the LM learns to emit it, so it doubles as the end-of-reply token) and its
final hidden state feeds the next-utterance prediction (NUP) head: p(y=1 | context, reply) = sigmoid(w·h).
Decoding (beam search with Eq. 3, sampling) lives in ``decoding``; training code (examples, collate, loss) in
``transmitter_train``; evaluation in ``transmitter_eval``.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer

from p2bot_utils import cpu_linear
from p2bot_utils.episodes import is_silence
from p2bot_utils.errors import CheckpointError
from p2bot_utils.lm_likelihood import utterance_log_likelihood
from p2bot_utils.openai_gpt import with_kv_cache
from p2bot_utils.packing import pack_rows, packed_attention_mask
from p2bot_utils.profile import staged_dir

SPECIAL_TOKENS = {"persona": "<persona>", "self": "<self>", "partner": "<partner>", "clf": "<clf>"}
HEAD_FILE, CONFIG_FILE, TRAINING_FILE = "nup_head.safetensors", "transmitter_config.json", "training.json"


@dataclass(frozen=True)
class SpecialIds:
    """Token ids of the layout's markers and of padding."""

    persona: int
    self_: int
    partner: int
    clf: int
    pad: int


# --- Layout --------------------------------------------------------------------------------------------
def build_inputs(persona: Sequence[Sequence[int]], history: Sequence[Sequence[int]],
                 reply: Sequence[int] | None, ids: SpecialIds, *, max_len: int = 256,
                 max_reply_tokens: int = 32, use_persona: bool = True) -> dict:
    """The Transmitter's input layout for one example (pure function on token ids).

    ``history`` is oldest first and ends with the partner's last utterance (speakers alternate backwards
    from there); ``reply=None`` gives a generation prompt ending in ``<self>``. The reply is capped at
    ``max_reply_tokens`` and followed by ``<clf>``. Over ``max_len``, the OLDEST history utterances go
    first (room for a full-length reply is always kept, so a context is laid out the same way whether its
    reply is known or about to be generated); the persona is never dropped (``use_persona=False`` is
    Table 3's −Persona: no persona at all).
    Returns ``input_ids``, ``labels`` (-100 except reply tokens and ``<clf>``: Eq. 1's targets),
    ``clf_index`` (position of ``<clf>``, -1 without reply) and ``reply_start``.
    """
    pers = [ids.persona, *[t for s in persona for t in s]] if use_persona and persona else []
    tail = [ids.self_] + ([*reply[:max_reply_tokens], ids.clf] if reply is not None else [])
    turns = [[ids.partner if (len(history) - i) % 2 == 1 else ids.self_, *u] for i, u in enumerate(history)]
    budget = max_len - len(pers) - (max_reply_tokens + 2)  # room for the longest reply, known or not
    if budget < 0:
        raise ValueError(f"transmitter.build_inputs: persona ({len(pers)} tokens) + reply ({max_reply_tokens + 2}) "
                         f"exceed max_len={max_len}; raise max_len")
    while turns and sum(map(len, turns)) > budget:
        if len(turns) == 1:  # the partner's last utterance alone is too long: keep its end
            turns[0] = [turns[0][0], *turns[0][len(turns[0]) - budget + 1:]] if budget > 1 else []
            turns = [t for t in turns if t]
            break
        turns.pop(0)
    context = pers + [t for u in turns for t in u]
    input_ids = context + tail
    n_ctx = len(context) + 1  # up to and including <self>
    labels = [-100] * n_ctx + input_ids[n_ctx:]
    clf_index = len(input_ids) - 1 if reply is not None else -1
    return {"input_ids": input_ids, "labels": labels, "clf_index": clf_index, "reply_start": n_ctx}


def encode_texts(tokenizer, persona: Sequence[str], history: Sequence[str], reply: str | None = None):
    """Tokenise persona sentences, history utterances (``__SILENCE__`` dropped) and the reply, no specials."""
    enc = lambda text: tokenizer.encode(text, add_special_tokens=False)  # noqa: E731
    hist = [enc(u) for u in history if not is_silence(u)]
    return [enc(s) for s in persona], hist, (None if reply is None else enc(reply))


def pad_batch(seqs: Sequence[Sequence[int]], pad: int, side: str = "right", label_seqs=None):
    """Pad id lists to ``(B, T)``; returns ``input_ids``, ``attention_mask``, ``position_ids`` (counting only
    real tokens, so left padding keeps positions right), ``labels`` (when given) and ``offsets`` (B,) (how
    far each row was shifted right by left padding)."""
    if side not in ("left", "right"):
        raise ValueError(f"transmitter.pad_batch: side must be 'left' or 'right', got {side!r}")
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    labels = torch.full((len(seqs), T), -100, dtype=torch.long) if label_seqs is not None else None
    offsets = torch.zeros(len(seqs), dtype=torch.long)
    for i, s in enumerate(seqs):
        lo = T - len(s) if side == "left" else 0
        ids[i, lo:lo + len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, lo:lo + len(s)] = 1
        offsets[i] = lo
        if labels is not None:
            labels[i, lo:lo + len(s)] = torch.tensor(label_seqs[i], dtype=torch.long)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    out = {"input_ids": ids, "attention_mask": mask, "position_ids": pos, "offsets": offsets}
    if labels is not None:
        out["labels"] = labels
    return out


# --- Model ---------------------------------------------------------------------------------------------
@dataclass
class TransmitterConfig:
    """Layout settings and variant switches; saved next to the weights (``transmitter_config.json``)."""

    backbone: str = ""
    use_nup_head: bool = True     # False = Table 3's −Next (no head, no NUP loss; rank by LM likelihood)
    use_persona: bool = True      # False = Table 3's −Persona
    max_len: int = 256            # tokens of context + reply; oldest history turns are dropped first
    max_reply_tokens: int = 32    # the paper decodes up to 32 tokens
    head_dropout: float = 0.1
    special_tokens: dict = field(default_factory=lambda: dict(SPECIAL_TOKENS))


class Transmitter(nn.Module):
    """A causal LM backbone plus the NUP head (a linear map of the ``<clf>`` token's final hidden state)."""

    def __init__(self, lm, tokenizer, config: TransmitterConfig):
        super().__init__()
        self.lm, self.tokenizer, self.config = with_kv_cache(lm), tokenizer, config  # openai-gpt: a KV cache
        cpu_linear.install(self.lm)  # decoding on a CPU: few-row products with a transposed weight copy (same sums)
        self.training_budget: dict = {}  # how it was trained (optimizer steps, self-play updates): training.json
        hidden = lm.config.get_text_config().hidden_size
        self.head = nn.Sequential(nn.Dropout(config.head_dropout), nn.Linear(hidden, 1)) \
            if config.use_nup_head else None
        missing = [t for t in config.special_tokens.values() if t not in tokenizer.get_vocab()]
        if missing:
            raise ValueError(f"transmitter: tokenizer lacks the layout tokens {missing}; build with from_backbone")
        tid = tokenizer.convert_tokens_to_ids
        st = config.special_tokens
        self.ids = SpecialIds(tid(st["persona"]), tid(st["self"]), tid(st["partner"]), tid(st["clf"]),
                              tokenizer.pad_token_id)

    @classmethod
    def from_backbone(cls, lm, tokenizer, config: TransmitterConfig | None = None, seed: int = 0):
        """Add the layout's special tokens to ``tokenizer``, resize ``lm``'s embeddings, add a fresh head."""
        config = config or TransmitterConfig()
        config.backbone = config.backbone or getattr(lm.config, "p2bot_backbone", lm.config.name_or_path)
        tokenizer.add_tokens(list(config.special_tokens.values()), special_tokens=True)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            lm.resize_token_embeddings(len(tokenizer))
            model = cls(lm, tokenizer, config)
            model._init_clf_from_eos()
            if model.head is not None:
                nn.init.normal_(model.head[1].weight, std=0.02)
                nn.init.zeros_(model.head[1].bias)
        return model

    @torch.no_grad()
    def _init_clf_from_eos(self) -> None:
        """Start ``<clf>``'s embedding (input and output rows) as a copy of the backbone's end-of-text token, so
        that the pretrained LM already predicts the end of a reply where it would end a text. A fresh row (the
        mean of the old ones) is predicted with log p ≈ −9 at the reply's end even after 100 fine-tuning steps,
        and replies then run on to the token limit. Backbones without an end token (openai-gpt) keep the fresh row."""
        eos = self.tokenizer.eos_token_id
        if eos is None or eos == self.ids.clf:
            return
        inp, out = self.lm.get_input_embeddings(), self.lm.get_output_embeddings()
        for emb in {id(e): e for e in (inp, out) if e is not None}.values():  # once when tied
            emb.weight[self.ids.clf] = emb.weight[eos]
        if out is not None and getattr(out, "bias", None) is not None:
            out.bias[self.ids.clf] = out.bias[eos]

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def hidden(self, input_ids, attention_mask, position_ids=None, cache=None, use_cache=False):
        """Final hidden states (B, T, H) of the backbone (after its last norm) and its KV cache."""
        if position_ids is None:
            position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)[:, -input_ids.shape[1]:]
        kw = dict(cache=cache, use_cache=use_cache or cache is not None) if self.supports_cache else {}
        out = self.lm.base_model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **kw)
        return out.last_hidden_state, getattr(out, "cache", None)

    @property
    def supports_cache(self) -> bool:
        """Whether the backbone keeps a KV cache (GPT-2, Llama, openai-gpt through ``openai_gpt``: yes; a model
        without one is scored and decoded by recomputing full rows)."""
        import inspect

        return "cache" in inspect.signature(self.lm.base_model.forward).parameters

    def lm_logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.lm.get_output_embeddings()(h)  # (..., V)

    def nup_logit(self, h: torch.Tensor, clf_index: torch.Tensor) -> torch.Tensor:
        """Logit of p(y=1) from the hidden state at ``<clf>``: (B, T, H), (B,) -> (B,)."""
        if self.head is None:
            raise ValueError("transmitter: this model has no NUP head (variant −Next)")
        h_clf = h[torch.arange(h.shape[0], device=h.device), clf_index]  # (B, H)
        return self.head(h_clf).squeeze(-1).float()

    def forward(self, input_ids, attention_mask, position_ids=None, labels=None, clf_index=None, candidates=None):
        """``lm_logits`` (M, V) and ``lm_targets`` (M,) at the M labelled positions only (the LM head over
        the whole vocabulary is computed where Eq. 1 needs it), ``lm_rows`` (M,) the row of each, and
        ``nup_logits`` (B,) when asked.

        With ``candidates`` (``shared_context_batch``; ``_forward_shared``) the inputs are B contexts, each shared by C
        candidate replies: the same outputs for the B·C (context, candidate) rows, the context computed once and
        the replies packed into one row per context (``packing``)."""
        if candidates is not None:
            return self._forward_shared(input_ids, attention_mask, position_ids, candidates)
        h, _ = self.hidden(input_ids, attention_mask, position_ids)  # (B, T, H)
        out = {}
        if labels is not None:
            sel = labels[:, 1:] != -100  # (B, T-1): position t predicts token t+1
            out["lm_logits"] = self.lm_logits(h[:, :-1][sel]).float()  # (M, V)
            out["lm_targets"] = labels[:, 1:][sel]  # (M,)
            out["lm_rows"] = sel.nonzero()[:, 0]  # (M,) which example each target belongs to
        if clf_index is not None and self.head is not None:
            out["nup_logits"] = self.nup_logit(h, clf_index)
        return out

    def _forward_shared(self, input_ids, attention_mask, position_ids, candidates: dict) -> dict:
        """B left-padded contexts (ending with ``<self>``) run once; the C replies of each (rows i·C + j of
        ``candidates``: ``input_ids`` / ``attention_mask`` (B·C, Tk) right-padded by ``pad_batch``, each ending
        with ``<clf>``, optional ``labels``: the reply's ids where its LM log-likelihood is wanted, else -100)
        run as ONE packed row on the context's KV cache (``packing``): each reply sees the context and itself
        only, exactly as if laid out alone. A reply's first token is predicted from the context's last
        position, token j > 0 from reply position j − 1. Outputs are ordered as for the B·C rows."""
        if not self.supports_cache:
            raise ValueError("transmitter: this backbone keeps no KV cache; lay out full (context, reply) rows")
        B, BC = input_ids.shape[0], candidates["input_ids"].shape[0]
        if BC % B:
            raise ValueError(f"transmitter: {BC} candidate rows do not split evenly over {B} contexts")
        h_ctx, cache = self.hidden(input_ids, attention_mask, position_ids, use_cache=True)  # (B, Tc, H)
        return self.candidates_on_cache(h_ctx[:, -1:], cache, attention_mask, position_ids, candidates)

    def candidates_on_cache(self, h_last, cache, attention_mask, position_ids, candidates: dict) -> dict:
        """The packed-candidates half of ``forward(..., candidates=...)`` from a context already run: its KV
        ``cache`` (consumed) and ``h_last`` (B, 1, H), the hidden state of its final ``<self>``."""
        B, C = h_last.shape[0], candidates["input_ids"].shape[0] // h_last.shape[0]
        pk = pack_rows(candidates["input_ids"], candidates["attention_mask"], C, candidates.get("labels"))
        if position_ids is None:
            position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        pos = position_ids[:, -1:] + 1 + pk["offsets"]  # (B, Tp): every reply starts right after <self>
        mask = packed_attention_mask(attention_mask, pk["segment"], h_last.dtype)
        h, _ = self.hidden(pk["input_ids"], mask, pos, cache)  # (B, Tp, H)
        out = {}
        if "labels" in pk:
            prev = torch.cat([h_last, h[:, :-1]], 1)  # (B, Tp, H): what predicts each token ...
            pred = torch.where((pk["offsets"] == 0)[..., None], h_last.expand_as(h), prev)  # ... <self> first
            sel = pk["labels"] != -100
            out["lm_logits"] = self.lm_logits(pred[sel]).float()
            out["lm_targets"] = pk["labels"][sel]
            out["lm_rows"] = (torch.arange(B, device=h.device)[:, None] * C + pk["segment"])[sel]
        if self.head is not None:
            h_clf = h[torch.arange(B, device=h.device)[:, None], pk["clf"]]  # (B, C, H)
            out["nup_logits"] = self.head(h_clf).squeeze(-1).float().reshape(-1)  # (B·C,)
        return out

    # --- one folder: backbone + tokenizer + head + layout settings (safetensors, no pickles) ---
    def save_pretrained(self, out_dir) -> Path:
        """Write the folder whole (``profile.staged_dir``: a kill never leaves a half model that looks whole),
        with ``training_budget`` as ``training.json`` when set (Tables 1 / 3 print it beside the model)."""
        with staged_dir(out_dir) as tmp:
            self.lm.save_pretrained(tmp)
            self.tokenizer.save_pretrained(tmp)
            if self.head is not None:
                save_file({k: v.detach().cpu().contiguous() for k, v in self.head.state_dict().items()},
                          str(tmp / HEAD_FILE))
            (tmp / CONFIG_FILE).write_text(json.dumps(asdict(self.config), indent=2) + "\n", encoding="utf-8")
            if self.training_budget:
                (tmp / TRAINING_FILE).write_text(json.dumps(self.training_budget, indent=2) + "\n", encoding="utf-8")
        return Path(out_dir)

    @classmethod
    def from_pretrained(cls, model_dir, dtype=torch.float32) -> "Transmitter":
        """A saved Transmitter; a missing, foreign or damaged folder is a ``CheckpointError`` naming it."""
        d = Path(model_dir)
        if not (d / CONFIG_FILE).is_file():
            other = " (it holds a Receiver)" if (d / "receiver_config.json").is_file() else ""
            raise CheckpointError(f"{d}: not a saved Transmitter{other}: {CONFIG_FILE} missing")
        try:
            config = TransmitterConfig(**json.loads((d / CONFIG_FILE).read_text(encoding="utf-8")))
            lm = AutoModelForCausalLM.from_pretrained(d, dtype=dtype)
            model = cls(lm, AutoTokenizer.from_pretrained(d), config)
            if model.head is not None:
                model.head.load_state_dict(load_file(str(d / HEAD_FILE)))
            if (d / TRAINING_FILE).is_file():
                model.training_budget = dict(json.loads((d / TRAINING_FILE).read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError, RuntimeError, SafetensorError) as e:
            raise CheckpointError(f"{d}: damaged Transmitter folder ({type(e).__name__}: "
                                  f"{str(e).splitlines()[0] if str(e) else 'no detail'})") from None
        return model.eval()


# --- Batched scoring -----------------------------------------------------------------------------------
def layout_batch(model: Transmitter, personas, histories, replies=None, side="right", reply_ids=None):
    """Tokenise and lay out B examples (texts, or ``reply_ids`` already tokenised) and pad them."""
    c = model.config
    rows = []
    for i, (p, h) in enumerate(zip(personas, histories)):
        r = None if replies is None else replies[i]
        pi, hi, ri = encode_texts(model.tokenizer, p, h, r)
        if reply_ids is not None:
            ri = [t for t in reply_ids[i] if t != model.ids.clf]
        rows.append(build_inputs(pi, hi, ri, model.ids, max_len=c.max_len, max_reply_tokens=c.max_reply_tokens,
                                 use_persona=c.use_persona))
    batch = pad_batch([r["input_ids"] for r in rows], model.ids.pad, side, [r["labels"] for r in rows])
    batch["clf_index"] = torch.tensor([r["clf_index"] for r in rows]) + batch["offsets"]
    return {k: v.to(model.device) for k, v in batch.items()}


def candidate_batch(candidates: Sequence[Sequence[int]], pad: int, labelled: Sequence[bool] | None = None) -> dict:
    """Candidate replies (ids + ``<clf>``) right-padded for ``Transmitter.forward(..., candidates=...)``; rows
    with ``labelled[r]`` carry LM labels (their own ids), the others -100 (no labels at all when None)."""
    labels = None if labelled is None else [list(c) if keep else [-100] * len(c)
                                            for c, keep in zip(candidates, labelled, strict=True)]
    out = pad_batch(candidates, pad, "right", labels)
    out.pop("offsets")
    return out


def shared_context_batch(contexts: Sequence[Sequence[int]], candidates: Sequence[Sequence[int]], pad: int,
                         labelled: Sequence[bool] | None = None) -> dict:
    """B contexts (``build_inputs(..., reply=None)`` ids, ending with ``<self>``) left-padded, plus their B·C
    candidates (row i·C + j for context i, ``candidate_batch``): ``Transmitter.forward``'s inputs."""
    ctx = pad_batch(contexts, pad, "left")
    ctx.pop("offsets")
    return {**ctx, "candidates": candidate_batch(candidates, pad, labelled)}


def score_replies(model: Transmitter, personas, histories, replies=None, reply_ids=None):
    """Per example: summed reply log-likelihood (reply tokens + ``<clf>``), token count, and the NUP logit
    (None for −Next). One full forward per (context, reply) pair; gradients flow if enabled."""
    b = layout_batch(model, personas, histories, replies, reply_ids=reply_ids)
    out = model(b["input_ids"], b["attention_mask"], b["position_ids"], b["labels"], b["clf_index"])
    tok_lp = -F.cross_entropy(out["lm_logits"], out["lm_targets"], reduction="none")  # (M,)
    n = len(personas)
    lm_sum = torch.zeros(n, device=tok_lp.device).index_add(0, out["lm_rows"], tok_lp)
    n_tok = torch.bincount(out["lm_rows"], minlength=n)
    return lm_sum, n_tok, out.get("nup_logits")


def lm_log_likelihood(model, personas, histories, replies, length_normalised: bool = True,
                      tokenizer=None) -> torch.Tensor:
    """(1/|y|) log p(y | context) (Eq. 2) per example, (B,). A plain ``AutoModelForCausalLM`` (give its
    ``tokenizer``) scores the reply alone, ignoring persona and history: that is reward R1's language model,
    so it delegates to ``lm_likelihood.utterance_log_likelihood`` (end token scored: an empty reply is not a free 0)."""
    if isinstance(model, Transmitter):
        lm_sum, n_tok, _ = score_replies(model, personas, histories, replies)
        return lm_sum / n_tok.clamp(min=1) if length_normalised else lm_sum
    if tokenizer is None:
        raise ValueError("transmitter.lm_log_likelihood: a plain causal LM needs its tokenizer=")
    return utterance_log_likelihood(model, tokenizer, list(replies), length_normalised=length_normalised)


def nup_log_prob(model: Transmitter, personas, histories, replies) -> torch.Tensor:
    """log p(y=1 | persona, history, reply) from the NUP head, (B,) (reward R2, Eq. 7)."""
    _, _, logit = score_replies(model, personas, histories, replies)
    if logit is None:
        raise ValueError("transmitter.nup_log_prob: the model has no NUP head (variant −Next)")
    return F.logsigmoid(logit)


def eq3_scores(lm_norm: torch.Tensor, nup_logp: torch.Tensor | None, alpha: float) -> torch.Tensor:
    """Eq. 3: alpha · (1/|y|) log p(y|s) + (1 − alpha) · log p(y=1|s, y); alpha = 1 (or no head) is Eq. 2."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"transmitter.eq3_scores: alpha must be in [0, 1], got {alpha}")
    if nup_logp is None or alpha == 1.0:
        return lm_norm
    return alpha * lm_norm + (1.0 - alpha) * nup_logp
