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
