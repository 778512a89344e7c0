"""The self-play training loop (Sec. 3.2): ⌈n_dialogues / batch_size⌉ REINFORCE updates of B (``selfplay``),
a CSV log row per update, and pickle-free checkpoints (``checkpoints``) from which a killed run resumes.
"""
from __future__ import annotations

import csv
import io
import math
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from p2bot_utils.checkpoints import find_checkpoint, load_checkpoint, run_lock, save_checkpoint
from p2bot_utils.errors import CheckpointError
from p2bot_utils.profile import atomic_write_text
from p2bot_utils.rewards import RewardModels
from p2bot_utils.selfplay import LOG_FIELDS, SelfPlayConfig, selfplay_step, step_inputs
from p2bot_utils.training import adam_impl


@dataclass
class SelfPlayResult:
    steps: int
    log: list[dict]


def _write_log(path: str, rows: list[dict]) -> None:
    if path:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=LOG_FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: r.get(k, "") for k in LOG_FIELDS} for r in rows)
        atomic_write_text(path, buf.getvalue())


RESUME_FREE = ("n_dialogues", "save_every", "out_dir", "log_csv")  # may change between a run and its resume


def _check_resumable(ckpt: Path, saved: dict, config: SelfPlayConfig) -> None:
    now = asdict(config)
    diff = [k for k in now if k not in RESUME_FREE and k in saved and _jsonish(saved[k]) != _jsonish(now[k])]
    if diff:
        raise CheckpointError(f"{ckpt}: checkpoint written with other settings ({', '.join(diff)}); delete it or "
                         f"restore those settings")


def _jsonish(v):
    return list(v) if isinstance(v, tuple) else v


def train_selfplay(learner, user, models: RewardModels, persona_pool, openings: Sequence[str],
                   config: SelfPlayConfig, stop_after_steps: int | None = None) -> SelfPlayResult:
    """Self-play fine-tuning of B (Sec. 3.2): ⌈n_dialogues / batch_size⌉ Adam updates of Eq. 5. Resumes from
    ``out_dir/checkpoint`` when one is there; ``stop_after_steps`` interrupts (tests, budgets)."""
    models.frozen()
    learner.eval()  # dropout off: the gradient is taken under the very distribution B sampled from
    trainable = [p for p in learner.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=config.lr, **adam_impl(trainable))  # fused where PyTorch has it
    ckpt = Path(config.out_dir) / "checkpoint" if config.out_dir else None
    with run_lock(config.out_dir, enabled=bool(config.out_dir)):  # one run per folder
        return _train(learner, user, models, persona_pool, openings, config, optimizer, ckpt, stop_after_steps)


def _train(learner, user, models, persona_pool, openings, config, optimizer, ckpt, stop_after_steps):
    start, log = 0, []
    if ckpt is not None and find_checkpoint(ckpt) is not None:
        state = load_checkpoint(ckpt, learner, optimizer)
        _check_resumable(ckpt, state.get("config", {}), config)
        start, log = int(state["step"]), state["log"]
    total = math.ceil(config.n_dialogues / config.batch_size)
    done = 0
    for step in tqdm(range(start, total), initial=start, total=total, desc="self-play"):
        torch.manual_seed(config.seed * 1_000_003 + step)
        pa, pb, opens = step_inputs(persona_pool, openings, config, step)
        row, _, _ = selfplay_step(learner, user, models, optimizer, pa, pb, opens, config, step)
        log.append(row)
        _write_log(config.log_csv, log)
        done += 1
        if ckpt is not None and config.save_every and (step + 1) % config.save_every == 0:
            save_checkpoint(ckpt, learner, optimizer, state={"step": step + 1, "log": log, "config": asdict(config)})
        if stop_after_steps is not None and done >= stop_after_steps:
            break
    if hasattr(learner, "training_budget"):  # saved with the policy: Tables 1 / 3 print it beside the model
        learner.training_budget = {**learner.training_budget, "selfplay_updates": start + done,
                                   "selfplay_dialogues_per_update": config.batch_size}
    return SelfPlayResult(steps=start + done, log=log)


def remove_checkpoint(config: SelfPlayConfig) -> None:
    """Delete ``out_dir/checkpoint`` (after a finished run, so that a rerun starts afresh, not resumes)."""
    if config.out_dir and Path(config.out_dir).is_dir():
        for path in Path(config.out_dir).glob("*checkpoint*"):  # checkpoint, .checkpoint.prev, .checkpoint.tmp-*, ...
            shutil.rmtree(path, ignore_errors=True)
