"""The project's figures, labelled as the paper names things (imports nothing of the project).

Every figure here names its systems as the paper does (``paper_name``: P²Bot-S, −Next, +RS.1, ...), labels
every axis and colour bar, and lays out its titles without overlapping a panel (constrained layout). The
notebooks save them with ``profile.save_figure``; no function here changes a number, only how it is shown.
"""
from __future__ import annotations

import math
import textwrap
from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

# code name -> the paper's name (Table 1 / Table 3 rows)
PAPER_NAMES = {
    "full": "P²Bot-S",
    "no_next": "−Next",
    "no_persona": "−Persona",
    "rs1": "+RS.1",
    "rs1_rs2": "+RS.1+RS.2",
    "p2bot": "P²Bot (+RS.1+RS.2+RS.3)",
    "supervised (before)": "P²Bot-S (before self-play)",
}
# reward term -> what it measures (Eq. 6-10)
REWARD_LABELS = {
    "r1": "R1 language style (Eq. 6)",
    "r2": "R2 discourse coherence (Eq. 7)",
    "r3": "R3 persona perception (Eq. 8)",
    "reward": "R, total reward (Eq. 10)",
}


def paper_name(code: str) -> str:
    """The paper's name of a system or variant (unknown names are returned as they are)."""
    return PAPER_NAMES.get(code, code)


def wrap_labels(labels: Sequence[str], width: int) -> list[str]:
    """Labels wrapped to ``width`` characters a line (so tick labels side by side never overlap); a word
    longer than that (say "(+RS.1+RS.2+RS.3)") keeps its line rather than being cut in the middle."""
    return ["\n".join(textwrap.wrap(str(t), width, break_long_words=False)) or str(t) for t in labels]


def relevance_heatmap(matrix, row_labels: Sequence[str], col_labels: Sequence[str], ax=None,
                      title: str = "", wrap: int = 40, cmap: str = "Blues", col_wrap: int = 18,
                      cbar_label: str = "relevance U = H·Wᵀ/√d (Eq. 11)", col_axis: str = "persona sentence"):
    """Figure 6 style heat map of a (rows x columns) score matrix, e.g. the Receiver's relevance U (Eq. 11)
    between the utterances of one dialogue side (rows) and its persona sentences (columns). Column labels
    are wrapped to ``col_wrap`` characters so neighbours never overlap. Returns the axes."""
    m = np.asarray(matrix, dtype=float)
    if m.shape != (len(row_labels), len(col_labels)):
        raise ValueError(f"relevance_heatmap: matrix is {m.shape} but there are {len(row_labels)} row labels "
                         f"and {len(col_labels)} column labels")
    if ax is None:
        _, ax = plt.subplots(figsize=(1.6 * len(col_labels) + 4, 0.55 * len(row_labels) + 2.5),
                             layout="constrained")
    sns.heatmap(m, annot=m.size <= 200, fmt=".2f", cmap=cmap, cbar=True, ax=ax,
                cbar_kws={"label": cbar_label}, xticklabels=wrap_labels(col_labels, col_wrap),
                yticklabels=wrap_labels(row_labels, wrap))
    ax.tick_params(axis="x", labelrotation=0, labelsize=7)
    ax.tick_params(axis="y", labelrotation=0, labelsize=7)
    ax.set(xlabel=col_axis, ylabel="utterance")
    ax.set_title(title, pad=10)
    return ax


def dialogue_heatmap(matrix, utterances: Sequence[str], persona_a: Sequence[str], persona_b: Sequence[str],
                     ax=None, title: str = "", wrap: int = 48):
    """Relevance U of every utterance so far (rows, ``A1: ...``) against both personas (columns: A's
    sentences, a rule, B's sentences): Figure 6 for a whole self-play dialogue."""
    cols = [f"A: {s}" for s in persona_a] + [f"B: {s}" for s in persona_b]
    ax = relevance_heatmap(matrix, utterances, cols, ax=ax, title=title, wrap=wrap, col_wrap=16,
                           col_axis="persona sentence (A's | B's)")
    ax.axvline(len(persona_a), color="k", lw=2)
    return ax


# --- notebook 01 ---------------------------------------------------------------------------------------
def nup_chance_loss(loss: str, n_distractors: int) -> tuple[float, str]:
    """The NUP loss of a head that cannot tell the gold reply from its K distractors: the softmax
    cross-entropy over K+1 replies is ln(K+1); the binary loss at p = 1/2 is ln 2."""
    if loss == "softmax":
        return math.log(n_distractors + 1), f"chance: ln(K+1) = ln {n_distractors + 1}"
    return math.log(2.0), "chance: ln 2 (p = 1/2)"


def transmitter_loss_figure(logs: Mapping[str, pd.DataFrame], nup_loss: str, n_distractors: int, title: str = ""):
    """LM loss (Eq. 1) and NUP loss per optimizer step of each variant, the NUP panel with its chance line."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), layout="constrained")
    for variant, log in logs.items():
        axes[0].plot(log["step"], log["lm_loss"], label=paper_name(variant))
        if "nup_loss" in log:
            axes[1].plot(log["step"], log["nup_loss"], label=paper_name(variant))
    chance, chance_label = nup_chance_loss(nup_loss, n_distractors)
    axes[1].axhline(chance, color="grey", ls="--", lw=1, label=chance_label)
    axes[0].set(title="LM loss (Eq. 1) on the reply", xlabel="optimizer step", ylabel="cross-entropy (nats / token)")
    axes[1].set(title=f"NUP loss (gold vs K = {n_distractors} distractor(s))", xlabel="optimizer step",
                ylabel=f"{nup_loss} cross-entropy (nats)")
    for ax in axes:
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return fig


# --- notebook 02 ---------------------------------------------------------------------------------------
def receiver_training_figure(log: pd.DataFrame, title: str = ""):
    """Loss (Eq. 12), margin accuracy and τ (Eq. 13) per optimizer step of the Receiver."""
    panels = (("loss", "loss (Eq. 12)", "hinge + L1 loss"),
              ("margin_acc", "ranking accuracy", "share of pairs with c(true) > c(distractor)"),
              ("tau", "τ (Eq. 13)", "τ of the soft max"))
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), layout="constrained")
    for ax, (col, name, ylabel) in zip(axes, panels):
        if col in log:
            ax.plot(log["step"], log[col], marker="." if len(log) < 30 else None)
        ax.set(title=name, xlabel="optimizer step", ylabel=ylabel)
    if title:
        fig.suptitle(title)
    return fig


# --- notebook 03 ---------------------------------------------------------------------------------------
SELFPLAY_PANELS = (("reward", "total reward R (each variant's own)", "R (Eq. 10)"),
                   ("r1", "R1 language style", "R1 = log p_LM per token (nats)"),
                   ("r2", "R2 discourse coherence", "R2 = log p(y=1 | s, a)"),
                   ("r3", "R3 persona perception", "R3 (Receiver scores, Eq. 8)"),
                   ("distinct_2", "distinct-2 of B's replies", "distinct bigrams / bigrams"),
                   ("response_len", "B's reply length", "tokens"))


def selfplay_rewards_figure(logs: Mapping[str, pd.DataFrame], title: str = ""):
    """Per-update reward terms of each self-play variant: thin = the update's mini-batch, thick = a running
    mean over a fifth of the updates."""
    window = max(1, len(next(iter(logs.values()))) // 5)
    fig, axes = plt.subplots(2, 3, figsize=(13, 7), layout="constrained")
    for ax, (col, name, ylabel) in zip(axes.flat, SELFPLAY_PANELS):
        for i, (variant, log) in enumerate(logs.items()):
            y = pd.to_numeric(log[col], errors="coerce")
            ax.plot(log["dialogues"], y, alpha=0.25, color=f"C{i}")
            ax.plot(log["dialogues"], y.rolling(window, min_periods=1).mean(), color=f"C{i}", lw=2,
                    label=paper_name(variant))
        ax.set(title=name, xlabel="self-play dialogues", ylabel=ylabel)
    axes[0, 0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return fig


def selfplay_eval_figure(changes: pd.DataFrame, terms: Sequence[str], title: str = ""):
    """After − before self-play per variant and reward term, with ± 2 SE bars (``changes``: the paired table
    of notebook 03 with columns variant, metric, change, change_se)."""
    fig, axes = plt.subplots(1, len(terms), figsize=(14, 3.8), layout="constrained")
    for ax, term in zip(np.atleast_1d(axes), terms):
        sub = changes[changes.metric == term]
        names = wrap_labels([paper_name(v) for v in sub.variant], 14)
        ax.bar(names, sub.change, yerr=2 * sub.change_se, color=[f"C{i}" for i in range(len(sub))], capsize=4)
        ax.axhline(0, color="k", lw=0.8)
        ax.set(title=REWARD_LABELS.get(term, term), ylabel="after − before (± 2 SE)")
        ax.tick_params(axis="x", labelsize=8)
    if title:
        fig.suptitle(title)
    return fig
