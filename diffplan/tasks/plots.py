"""Plots shared by every task: per-episode returns of several policies side by side."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def plot_returns(
    returns: dict[str, list[float]],
    path: str | Path,
    title: str = "",
    reference: tuple[str, float] | None = None,
) -> Path:
    """One column of dots per policy (its per-episode returns), the mean as a bar; an optional
    horizontal line for a reference (e.g. the behaviour data's mean return)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(returns), 3.6))
    rng = np.random.default_rng(0)
    for k, values in enumerate(returns.values()):
        v = np.asarray(values, dtype=float)
        ax.scatter(k + rng.uniform(-0.15, 0.15, len(v)), v, s=8, alpha=0.6)
        ax.hlines(v.mean(), k - 0.3, k + 0.3, color="k", lw=2)
    if reference is not None:
        ax.axhline(reference[1], color="tab:red", ls="--", lw=1, label=reference[0])
        ax.legend(fontsize=7, loc="lower right")
    ax.set_xticks(range(len(returns)))
    ax.set_xticklabels(list(returns), rotation=20, ha="right", fontsize=7)
    ax.set_ylabel("episode return")
    ax.set_title(title, fontsize=9)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path
