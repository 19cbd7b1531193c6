"""Seaborn figures of a lifelong run. Functions draw on ``ax`` (a new pyplot figure when omitted) and return the figure."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pandas as pd
import seaborn as sns
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from .metrics import METRICS, MULTIMODAL_METRICS


def edit_curves(rows: Sequence[dict], title: str = "", window: int = 10, ax=None) -> Figure:
    """Each metric per edit (rolling mean over ``window`` edits) against the edit's position in the sequence."""
    frame = pd.DataFrame(rows)
    present = [m for m in dict.fromkeys(METRICS + MULTIMODAL_METRICS) if m in frame and frame[m].notna().any()]
    long = frame.melt(id_vars="index", value_vars=present, var_name="metric", value_name="score").dropna()
    long["score"] = long.groupby("metric")["score"].transform(lambda s: s.rolling(window, min_periods=1).mean())
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 3.5))
    fig = ax.figure
    sns.lineplot(data=long, x="index", y="score", hue="metric", ax=ax)
    ax.set(xlabel="edit index (order of application)", ylabel=f"score (rolling mean, {window} edits)", ylim=(-0.05, 1.05), title=title)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize="small", frameon=False)
    fig.tight_layout()
    return fig


def save_figure(fig: Figure, path: "str | Path") -> Path:
    """Save and close ``fig`` (a long CLI run should not keep figures alive)."""
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def accuracy_matrices(results: dict) -> Figure:
    """One heatmap per continual learner: accuracy (%) on each task (columns) after each task (rows)."""
    names = list(results["learners"])
    tasks = results["tasks"]
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names) + 0.8, 3.4), squeeze=False)
    for ax, name in zip(axes[0], names):
        r = results["learners"][name]
        rows = ["all tasks"] if len(r["matrix"]) == 1 else [f"after {t}" for t in tasks]
        frame = pd.DataFrame([[100 * a for a in row] for row in r["matrix"]], index=rows, columns=tasks)
        sns.heatmap(frame, vmin=0, vmax=100, annot=True, fmt=".0f", cmap="viridis", cbar=False, ax=ax,
                    annot_kws={"fontsize": 7})
        ax.set_title(f"{name}: Last {100 * r['last']:.0f}" + (f", BWT {100 * r['bwt']:+.0f}" if "bwt" in r else ""),
                     fontsize=9)
        ax.tick_params(labelsize=7)
        ax.set_xticklabels(ax.get_xticklabels(), rotation=45, ha="right")
        if ax is not axes[0][0]:
            ax.set_yticklabels([])
    fig.tight_layout()
    return fig
