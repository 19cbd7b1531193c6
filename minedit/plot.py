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
    fig, axes = plt.subplots(1, len(names), figsize=(max(4.8, 3.2 * len(names) + 0.8), 3.4), squeeze=False)  # >= 400 px
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


def compare_curves(rows: Sequence[dict], title: str = "") -> Figure:
    """``minedit compare``: one panel per metric against T (log axis), hue = editor, style = protocol, then
    seconds per edit and KB of editor state per edit. Skipped rows are left out."""
    done = [r for r in rows if "skipped" not in r]
    frame = pd.DataFrame([{"editor": r["editor"], "T": r["T"], "protocol": r["protocol"], **r["metrics"],
                           "seconds per edit": r["seconds_per_edit"], "KB per edit": r["bytes_per_edit"] / 1024}
                          for r in done])
    metrics = [m for m in dict.fromkeys(METRICS + MULTIMODAL_METRICS) if m in frame and frame[m].notna().any()]
    panels = metrics + ["seconds per edit", "KB per edit"] if done else []
    n_rows = max(1, -(-len(panels) // 4))  # at most 4 panels a row, rows filled evenly
    cols = max(1, -(-len(panels) // n_rows))
    width = 3.2 * cols + 1.6  # inches; the last 1.6 hold the legend
    fig, axes = plt.subplots(n_rows, cols, figsize=(width, 2.8 * n_rows + 0.3), squeeze=False)
    style = "protocol" if done and frame["protocol"].nunique() > 1 else None
    for i, ax in enumerate(axes.flat):
        if i >= len(panels):
            ax.set_visible(False)
            continue
        name = panels[i]
        sns.lineplot(data=frame, x="T", y=name, hue="editor", style=style, marker="o", ax=ax, legend=i == 0)
        ax.set_xscale("log")
        ax.set(title=name, ylabel="", **({"ylim": (-0.05, 1.05)} if name in metrics else {}))
    if panels:
        handles, labels = axes.flat[0].get_legend_handles_labels()
        axes.flat[0].get_legend().remove()
        fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1 - 1.5 / width, 0.5), fontsize="small", frameon=False)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0, 1 - 1.6 / width, 1))
    return fig
