"""Small, generic plotting helpers shared by the notebooks (figures are saved with ``profile.save_figure``)."""
from __future__ import annotations

import textwrap
from typing import Sequence


def relevance_heatmap(matrix, row_labels: Sequence[str], col_labels: Sequence[str], ax=None,
                      title: str = "", wrap: int = 40, cmap: str = "Blues"):
    """Figure 6 style heat map of a (rows x columns) score matrix, e.g. the Receiver's relevance U (Eq. 11)
    between the utterances of one dialogue side (rows) and its persona sentences (columns). Returns the axes."""
    import matplotlib.pyplot as plt
    import numpy as np
    import seaborn as sns

    m = np.asarray(matrix, dtype=float)
    if m.shape != (len(row_labels), len(col_labels)):
        raise ValueError(f"relevance_heatmap: matrix is {m.shape} but there are {len(row_labels)} row labels "
                         f"and {len(col_labels)} column labels")
    if ax is None:
        _, ax = plt.subplots(figsize=(1.6 * len(col_labels) + 4, 0.55 * len(row_labels) + 2))
    short = lambda labels: ["\n".join(textwrap.wrap(t, wrap)) or t for t in labels]  # noqa: E731
    sns.heatmap(m, annot=True, fmt=".2f", cmap=cmap, cbar=True, ax=ax,
                xticklabels=short(col_labels), yticklabels=short(row_labels))
    ax.tick_params(axis="x", labelrotation=0, labelsize=7)
    ax.tick_params(axis="y", labelrotation=0, labelsize=7)
    ax.set(title=title, xlabel="persona sentence", ylabel="utterance")
    return ax
