"""Reading self-play: summaries of the training logs, and a fixed, paired evaluation of policies before and
after self-play (the same persona pairs, openings and sampling seeds for every policy compared).
"""
from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import asdict

import pandas as pd
import torch
from tqdm.auto import tqdm

from p2bot_utils import rewards as rw
from p2bot_utils.metrics import mean_and_stderr
from p2bot_utils.rewards import RewardModels, compute_rewards
from p2bot_utils.selfplay import SelfPlayConfig, draw_persona_pairs, rollout


SUMMARY_METRICS = ("reward", "r1", "r2", "r3", "distinct_1", "distinct_2", "response_len")


def summarise_logs(logs: dict, frac: float = 0.2):
    """Per variant and metric: the mean of the first and of the last ``frac`` of the updates, and the change."""
    rows = []
    for variant, log in logs.items():
        log = pd.DataFrame(log)
        k = max(1, int(round(len(log) * frac)))
        for m in SUMMARY_METRICS:
            y = pd.to_numeric(log[m], errors="coerce") if m in log else pd.Series(dtype=float)
            if y.notna().any():
                start, end = float(y.iloc[:k].mean()), float(y.iloc[-k:].mean())
                rows.append({"variant": variant, "metric": m, "start": start, "end": end, "change": end - start,
                             "updates": len(log), "window": k})
    return pd.DataFrame(rows)


# --- a fixed, paired evaluation of policies (before / after self-play) --------------------------------------
EVAL_TERMS = ("r1", "r2", "r3", "reward")


def eval_inputs(persona_pool, openings: Sequence[str], n_dialogues: int, seed: int):
    """``n_dialogues`` (persona_A, persona_B, opening) drawn with ``seed`` alone — the same for every policy
    evaluated, and apart from the training draws when ``seed`` differs from the training seed."""
    rng = random.Random(f"selfplay-eval-{seed}")
    pairs = draw_persona_pairs(persona_pool, n_dialogues, rng)
    opens = [rng.choice(list(openings)) for _ in pairs]
    return [a for a, _ in pairs], [b for _, b in pairs], opens


@torch.no_grad()
def evaluate_policy(learner, user, models: RewardModels, persona_pool, openings: Sequence[str],
                    config: SelfPlayConfig, n_dialogues: int, seed: int, batch_size: int | None = None,
                    show_progress: bool = True):
    """Self-play ``n_dialogues`` fixed dialogues (``eval_inputs``) with ``learner`` as B, sampling as in
    training from the same torch seed per batch (common random numbers, so two policies are compared on the
    same draws), and score every a^B_n with ALL reward terms -> DataFrame, one row per dialogue: the mean over
    B's turns of r1, r2, r3 and of ``reward`` = Eq. 10 with all three terms (the full P²Bot objective, whatever
    ``config.rewards`` says), plus B's reply length."""
    models.frozen()
    learner.eval()
    full = SelfPlayConfig(**{**asdict(config), "rewards": rw.REWARD_NAMES, "log_all_rewards": True,
                             "repetition_penalty": 0.0})
    pa, pb, opens = eval_inputs(persona_pool, openings, n_dialogues, seed)
    bs, rows = batch_size or config.batch_size, []
    for start in tqdm(range(0, n_dialogues, bs), desc="self-play eval", disable=not show_progress, leave=False):
        sl = slice(start, start + bs)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed * 1_000_003 + start)
            ro = rollout(learner, user, pa[sl], pb[sl], opens[sl], full)
        comps = compute_rewards(ro, models, full)
        for i in range(len(ro.agent)):
            rows.append({"dialogue": start + i, **{k: float(comps[k][i].mean()) for k in EVAL_TERMS},
                         "response_len": float(ro.reply_tokens[i].mean())})
    return pd.DataFrame(rows)


def paired_change(before, after, terms: Sequence[str] = EVAL_TERMS):
    """Per term: mean before, mean after, the mean paired difference (after − before, dialogue by dialogue) and
    its standard error; ``significant`` when |change| > 2 SE. ``before`` / ``after``: ``evaluate_policy`` frames
    of the same dialogues."""
    if list(before["dialogue"]) != list(after["dialogue"]):
        raise ValueError("selfplay.paired_change: before and after must be evaluations of the same dialogues")
    rows = []
    for t in terms:
        mean, se = mean_and_stderr(after[t].to_numpy() - before[t].to_numpy())
        rows.append({"metric": t, "before": float(before[t].mean()), "after": float(after[t].mean()),
                     "change": mean, "change_se": se, "n_dialogues": len(after),
                     "significant": bool(abs(mean) > 2 * se)})  # False when se is NaN (one dialogue)
    return pd.DataFrame(rows)
