"""Supervised training of the Transmitter (paper Sec. 3.1, Eq. 1 + next-utterance prediction).

``make_examples`` turns episodes into (persona, history, reply, distractors) token ids, ``TransmitterCollator``
lays them out (each context with its gold reply first, then its distractors), ``TransmitterLoss`` is the ``loss_fn`` of
``p2bot_utils.training.train``; ``TransmitterTrainConfig`` reads a profile; ``train_variant`` trains one Table 3 variant.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from accelerate import PartialState
from tqdm.auto import tqdm

from p2bot_utils.backbones import load_causal_lm
from p2bot_utils.checkpoints import find_checkpoint
from p2bot_utils.episodes import episode_turns
from p2bot_utils.profile import RunPaths, atomic_write_json, model_folder
from p2bot_utils.training import TrainConfig, train
from p2bot_utils.transmitter import (SpecialIds, Transmitter, TransmitterConfig, build_inputs,
                                     pad_batch, shared_context_batch)

VARIANTS = {  # Table 3: P²Bot-S and its two ablations (folders: profile.model_folder("transmitter", variant))
    "full": dict(use_nup_head=True, use_persona=True),
    "no_next": dict(use_nup_head=False, use_persona=True),
    "no_persona": dict(use_nup_head=True, use_persona=False),
}
NUP_LOSSES = ("binary", "softmax")


@dataclass(frozen=True)
class TransmitterExample:
    """Token ids of one training turn; ``distractors`` are replies from OTHER episodes (never the gold)."""

    persona: tuple
    history: tuple
    reply: tuple
    distractors: tuple = ()


def make_examples(tokenizer, episodes: Sequence, seed: int = 0, n_distractors: int = 1,
                  show_progress: bool = False) -> list[TransmitterExample]:
    """One example per turn of every episode, tokenised once, with ``n_distractors`` seeded distractors
    (paper: 1; 0 for −Next), each a reply drawn from the OTHER episodes, never equal to the gold reply nor to
    another distractor of the same example."""
    if not isinstance(n_distractors, int) or n_distractors < 0:
        raise ValueError(f"transmitter_train.make_examples: n_distractors={n_distractors!r} must be an int >= 0")
    cache: dict[str, tuple] = {}
    enc = lambda t: cache.setdefault(t, tuple(tokenizer.encode(t, add_special_tokens=False)))  # noqa: E731
    pool = [(i, t.reply) for i, ep in enumerate(episodes) for t in ep.turns]
    distinct = {text for _, text in pool}
    for i, ep in enumerate(episodes if n_distractors else ()):
        own = {t.reply for t in ep.turns}
        if len(distinct) - len(own) >= n_distractors:  # enough replies no turn of this episode says
            continue
        others = {text for j, text in pool if j != i}
        fewest = min(len(others - {r}) for r in own)
        if fewest < n_distractors:
            raise ValueError(f"transmitter_train.make_examples: {n_distractors} distractor(s) per turn need as many "
                             f"distinct replies in the other episodes, other than the gold (episode "
                             f"{ep.episode_id} has {fewest}); lower n_distractors")
    rng, out = random.Random(seed), []
    for i, ep in enumerate(tqdm(episodes, desc="tokenise", disable=not show_progress, leave=False)):
        for persona, hist, reply, _ in episode_turns(ep):
            chosen: list[str] = []
            while len(chosen) < n_distractors:
                j, text = pool[rng.randrange(len(pool))]
                if j != i and text != reply and text not in chosen:
                    chosen.append(text)
            out.append(TransmitterExample(tuple(enc(s) for s in persona), tuple(enc(u) for u in hist), enc(reply),
                                          tuple(enc(t) for t in chosen)))
    return out


@dataclass
class TransmitterCollator:
    """Examples (each with K distractors, or none) -> one batch of B contexts x C = K + 1 replies, the gold
    first: (context, reply) row i·C + j, with LM labels on the gold replies only (Eq. 1) and ``nup_labels``
    1 (gold) / 0 (distractor).

    ``shared_context=True`` lays out each context once and its C replies apart (``Transmitter.forward(...,
    candidates=...)`` runs the context once and packs its replies into one row: K distractors cost little more
    than one);
    ``False`` lays out C full rows per example, for backbones without a KV cache (the reference). Both give the
    same losses (tested)."""

    ids: SpecialIds
    max_len: int = 256
    max_reply_tokens: int = 32
    use_persona: bool = True
    with_distractor: bool = True
    shared_context: bool = False

    @classmethod
    def for_model(cls, model: Transmitter) -> "TransmitterCollator":
        c = model.config
        return cls(model.ids, c.max_len, c.max_reply_tokens, c.use_persona, c.use_nup_head, model.supports_cache)

    def _layout(self, ex: TransmitterExample, reply) -> dict:
        return build_inputs(ex.persona, ex.history, reply, self.ids, max_len=self.max_len,
                            max_reply_tokens=self.max_reply_tokens, use_persona=self.use_persona)

    def __call__(self, examples: Sequence[TransmitterExample]) -> dict:
        K = len(examples[0].distractors) if self.with_distractor else 0
        if self.with_distractor and (K == 0 or any(len(ex.distractors) != K for ex in examples)):
            raise ValueError("TransmitterCollator: with_distractor=True needs the same number (>= 1) of distractors "
                             "in every example; build examples with make_examples(..., n_distractors=K)")
        replies = [r for ex in examples for r in (ex.reply, *ex.distractors)]  # row i·C + j, gold at j = 0
        gold = [j == 0 for ex in examples for j in range(K + 1)]
        if self.shared_context:
            contexts = [self._layout(ex, None)["input_ids"] for ex in examples]
            cands = [[*r[:self.max_reply_tokens], self.ids.clf] for r in replies]
            b = shared_context_batch(contexts, cands, self.ids.pad, gold)
        else:
            rows = [self._layout(ex, r) for ex, r in zip([e for e in examples for _ in range(K + 1)], replies)]
            labels = [r["labels"] if g else [-100] * len(r["labels"]) for r, g in zip(rows, gold)]
            b = pad_batch([r["input_ids"] for r in rows], self.ids.pad, "right", labels)
            b.pop("offsets")
            b["clf_index"] = torch.tensor([r["clf_index"] for r in rows])
        b["nup_labels"] = torch.tensor(gold, dtype=torch.long)
        return b


@dataclass
class TransmitterLoss:
    """L = lm_coef · L_LM (Eq. 1: mean NLL of the reply tokens and <clf>) + nup_coef · L_NUP.

    The paper does not state the coefficients; the authors' code uses 0.6 / 0.4 (our default). ``nup_loss``:
    ``"binary"`` (paper: p(y=1) = sigmoid, each row classified on its own, gold y=1, distractors y=0; mean over
    rows) or ``"softmax"`` (TransferTransfo's multiple choice: cross-entropy of the gold among its context's C
    replies). The authors' code classifies gold and distractor each on its own with a 2-way softmax, which is the
    binary family (docs/paper_vs_code.md, T3). ``nup_acc``: share of contexts whose gold scores highest.
    −Next (no head): L = L_LM."""

    lm_coef: float = 0.6
    nup_coef: float = 0.4
    nup_loss: str = "binary"

    def __post_init__(self):
        if self.nup_loss not in NUP_LOSSES:
            raise ValueError(f"TransmitterLoss.nup_loss={self.nup_loss!r}: must be one of {NUP_LOSSES}")

    def __call__(self, model, batch: dict, progress: float) -> dict:
        out = model(batch["input_ids"], batch["attention_mask"], batch["position_ids"], batch.get("labels"),
                    batch.get("clf_index"), candidates=batch.get("candidates"))
        lm = F.cross_entropy(out["lm_logits"], out["lm_targets"])  # Eq. 1, mean over reply tokens
        y = batch["nup_labels"]
        if "nup_logits" not in out or y.min() == 1:
            return {"loss": lm, "lm_loss": lm.detach()}
        C = len(y) // int(y.sum())
        logits = out["nup_logits"].view(-1, C)  # (B, C): gold in column 0
        if self.nup_loss == "binary":
            nup = F.binary_cross_entropy_with_logits(logits, y.view(-1, C).float())
        else:
            nup = F.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long, device=logits.device))
        acc = (logits[:, 0] > logits[:, 1:].max(-1).values).float().mean()
        return {"loss": self.lm_coef * lm + self.nup_coef * nup, "lm_loss": lm.detach(), "nup_loss": nup.detach(),
                "nup_acc": acc}


# --- building and training one variant --------------------------------------------------------------------
def build_transmitter(backbone: str, variant: str = "full", max_len: int = 256, max_reply_tokens: int = 32,
                      seed: int = 0, cache_dir=None, head_dropout: float = 0.1) -> Transmitter:
    """A fresh Transmitter of a Table 3 variant on top of ``backbones.load_causal_lm(backbone)``;
    ``head_dropout`` is the dropout on the ``<clf>`` state before the NUP head (GPT's 0.1 by default)."""
    if variant not in VARIANTS:
        raise ValueError(f"transmitter_train: variant must be one of {list(VARIANTS)}, got {variant!r}")
    if not 0.0 <= head_dropout < 1.0:
        raise ValueError(f"transmitter_train: head_dropout={head_dropout} must be in [0, 1)")
    lm, tok = load_causal_lm(backbone, cache_dir=cache_dir)
    cfg = TransmitterConfig(backbone=backbone, max_len=max_len, max_reply_tokens=max_reply_tokens,
                            head_dropout=head_dropout, **VARIANTS[variant])
    return Transmitter.from_backbone(lm, tok, cfg, seed=seed)


@dataclass
class TransmitterTrainConfig:
    """One Transmitter training run (Eq. 1 + NUP) besides the loop's ``TrainConfig``: the profile's
    ``transmitter_*`` keys that shape the model, its examples and its loss. ``variant_max_steps`` holds the
    step budgets of the ablations (``transmitter_<variant>_max_steps``; missing = the loop's ``max_steps``)."""

    backbone: str
    loop: TrainConfig
    mode: str = "revised"
    max_len: int = 256
    max_reply_tokens: int = 32
    head_dropout: float = 0.1
    nup_distractors: int = 1
    nup_loss: str = "binary"
    lm_coef: float = 0.6
    nup_coef: float = 0.4
    seed: int = 0
    variant_max_steps: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.nup_loss not in NUP_LOSSES:
            raise ValueError(f"transmitter_nup_loss={self.nup_loss!r}: expected one of {NUP_LOSSES}")
        if not isinstance(self.nup_distractors, int) or self.nup_distractors < 1:
            raise ValueError(f"transmitter_nup_distractors={self.nup_distractors!r}: expected an int >= 1")

    @classmethod
    def from_params(cls, params: dict) -> "TransmitterTrainConfig":
        """From a flat profile: ``transmitter_<field>`` keys and ``seed``; the loop from ``TrainConfig``."""
        own = {f.name for f in fields(cls)} - {"loop", "variant_max_steps", "seed"}
        kw = {n: params[f"transmitter_{n}"] for n in own if f"transmitter_{n}" in params}
        steps = {v: params[f"transmitter_{v}_max_steps"] for v in VARIANTS if f"transmitter_{v}_max_steps" in params}
        loop = TrainConfig.from_params(params, "transmitter_", out_dir=".")  # out_dir: per variant, see loop_for
        return cls(loop=loop, seed=params.get("seed", 0), variant_max_steps=steps, **kw)

    def loop_for(self, variant: str, paths: RunPaths, log_dir) -> TrainConfig:
        """The loop of one variant: its step budget, its training folder and its CSV log."""
        name = model_folder("transmitter", variant)
        return replace(self.loop, out_dir=str(paths.training(variant)),
                       max_steps=self.variant_max_steps.get(variant, self.loop.max_steps),
                       log_csv=str(Path(log_dir) / f"{name.replace('-', '_')}_log.csv"))

    def settings(self) -> dict:
        """What must match for a checkpoint to resume, besides the loop's fields (``variant_settings.json``)."""
        return {f"transmitter_{k}": getattr(self, k) for k in _VARIANT_KEYS}


def train_variant(config: TransmitterTrainConfig, train_episodes: Sequence, variant: str, paths: RunPaths, log_dir,
                  *, stop_after_steps: int | None = None, show_progress: bool = True):
    """Build, train (``training.train``) and save one Table 3 variant to ``paths.transmitter(variant)``.
    Returns (model, result)."""
    model = build_transmitter(config.backbone, variant, config.max_len, config.max_reply_tokens, config.seed,
                              head_dropout=config.head_dropout)
    loop = config.loop_for(variant, paths, log_dir)
    k = config.nup_distractors if model.config.use_nup_head else 0
    examples = make_examples(model.tokenizer, train_episodes, seed=config.seed, n_distractors=k,
                             show_progress=show_progress)
    loss = TransmitterLoss(config.lm_coef, config.nup_coef, config.nup_loss)
    _check_variant_settings(Path(loop.out_dir), config.settings())
    result = train(model, examples, TransmitterCollator.for_model(model), loss, loop,
                   stop_after_steps=stop_after_steps)
    model.eval()
    model.training_budget = {"optimizer_steps": result.steps}  # saved with it: Tables 1 / 3 print it
    if not result.stopped and _is_main_process():
        model.save_pretrained(paths.transmitter(variant))
    return model, result


_VARIANT_KEYS = ("backbone", "mode", "max_len", "max_reply_tokens", "head_dropout", "nup_distractors", "nup_loss",
                 "lm_coef", "nup_coef")  # what shapes a run besides its TrainConfig
SETTINGS_FILE = "variant_settings.json"


def _check_variant_settings(out_dir: Path, settings: dict) -> None:
    """A checkpoint under ``out_dir`` resumes only a run with the same ``_VARIANT_KEYS`` (``training.train``
    checks the TrainConfig fields only: a changed loss or distractor count would otherwise 'resume' a finished
    run of the old settings and silently return its model). Records the settings for the next call."""
    f = out_dir / SETTINGS_FILE
    if find_checkpoint(out_dir / "checkpoint"):
        saved = json.loads(f.read_text(encoding="utf-8")) if f.is_file() else None
        if saved is None:
            raise ValueError(f"{out_dir}: its checkpoint has no {SETTINGS_FILE} (written by an older version); "
                             f"delete {out_dir} to train afresh")
        for k, v in settings.items():
            if saved.get(k) != v:
                raise ValueError(f"{out_dir}: checkpoint was trained with {k}={saved.get(k)!r} but this run has "
                                 f"{v!r}; delete {out_dir} to train afresh")
    if _is_main_process():
        atomic_write_json(f, settings)


def _is_main_process() -> bool:
    """Rank 0 of a launch (or the only process). The first ``PartialState`` fixes accelerate's process group for
    good: made here, before ``training.train``'s ``Accelerator``, it must honour ``ACCELERATE_USE_CPU`` as the
    Accelerator would, or every CPU process of ``accelerate launch`` believes it is alone."""
    from accelerate.utils import parse_flag_from_env

    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU")).is_main_process
