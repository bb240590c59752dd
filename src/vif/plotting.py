"""One figure style for the book, and the plots every chapter shares."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
from matplotlib.ticker import FixedFormatter, FixedLocator, NullFormatter, NullLocator

from .metrics import correlations

__all__ = ["use_style", "scatter_vs_loo", "error_by_size", "save_figure", "runtime_plot", "group_size_plot"]

PALETTE = sns.color_palette("colorblind")


def use_style() -> None:
    """Set the book's matplotlib/seaborn style: readable at book width (about 7 inches)."""
    sns.set_theme(context="notebook", style="whitegrid", palette=PALETTE, font_scale=0.95)
    plt.rcParams.update({
        "figure.figsize": (7.0, 4.2),
        "figure.dpi": 110,
        "savefig.dpi": 160,
        "savefig.bbox": "tight",
        "axes.titlesize": "medium",
        "legend.frameon": True,
        "legend.framealpha": 0.9,
    })


def _numpy(values: torch.Tensor | np.ndarray) -> np.ndarray:
    return values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)


def scatter_vs_loo(
    ax: plt.Axes,
    predicted: torch.Tensor | np.ndarray,
    actual: torch.Tensor | np.ndarray,
    *,
    label: str = "VIF",
    xlabel: str = "actual change (leave-one-out refit)",
    ylabel: str = "predicted change",
    color: object | None = None,
    size: float = 14.0,
    hollow: bool = False,
) -> plt.Axes:
    """Scatter predicted against actual changes with the diagonal and Pearson's r in the legend.

    Called again on the same axes (a second estimate), it redraws the one diagonal to span both. The points
    are rasterized in vector output, so a PDF of 10^5 points stays small and fast to write.

    Args:
        ax: axes to draw on.
        predicted: estimates, any shape; flattened (all units and targets pooled in the plot).
        actual: actual LOO changes, same shape.
        label: legend label of the estimate; Pearson's r of the pooled points is appended.
        xlabel, ylabel: axis labels (state the target and its units).
        color: marker colour (default: the palette's first).
        size: marker size.
        hollow: open markers (outline only), so that an estimate drawn over another that nearly coincides
            with it leaves the first visible.
    """
    x, y = _numpy(actual).ravel(), _numpy(predicted).ravel()
    r = correlations(y, x).pearson if x.size >= 3 else float("nan")
    color = color or PALETTE[0]
    style = (dict(facecolors="none", edgecolors=color, linewidths=0.8, s=size * 2.5) if hollow
             else dict(color=color, edgecolor="none", alpha=0.7, s=size))
    ax.scatter(x, y, rasterized=True, label=f"{label} (pooled Pearson r = {r:.3f})", **style)
    low, high = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
    for line in [line for line in ax.lines if line.get_gid() == "diagonal"]:  # one diagonal spanning every estimate
        low, high = min(low, line.get_xdata()[0]), max(high, line.get_xdata()[1])
        line.remove()
    pad = 0.05 * (high - low or 1.0)
    low, high = low - pad, high + pad
    (diagonal,) = ax.plot([low, high], [low, high], color="0.3", lw=1, ls="--", label="y = x")
    diagonal.set_gid("diagonal")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(loc="upper left")
    return ax


def error_by_size(
    ax: plt.Axes,
    predicted: dict[str, torch.Tensor | np.ndarray],
    actual: torch.Tensor | np.ndarray,
    *,
    xlabel: str = "|actual change| (leave-one-out refit), bin median",
    bins: int = 10,
) -> plt.Axes:
    """Mean absolute prediction error within bins of the actual change's size, one line per estimate.

    Estimates are compared on the same points without drawing one cloud over another: the pooled
    ``(unit, target)`` pairs are sorted by ``|actual|`` into ``bins`` bins of equal count; each line gives,
    per bin, the median ``|actual|`` (x) and the mean ``|predicted - actual|`` (y), both on log scales.

    Args:
        ax: axes to draw on.
        predicted: label -> estimates of the same shape as ``actual``; flattened and pooled. The legend gives
            each estimate's overall mean absolute error.
        actual: actual LOO changes.
        xlabel: the x axis label (state the target).
        bins: number of equal-count bins.
    """
    x = _numpy(actual).ravel()
    order = np.argsort(np.abs(x))
    groups = [group for group in np.array_split(order, bins) if len(group)]
    centres = [float(np.median(np.abs(x[group]))) for group in groups]
    markers = ["o", "s", "^", "D"]
    for index, (color, (label, values)) in enumerate(zip(PALETTE, predicted.items())):
        error = np.abs(_numpy(values).ravel() - x)
        ax.plot(centres, [float(error[group].mean()) for group in groups], marker=markers[index % len(markers)],
                color=color, label=f"{label} (mean |error| = {error.mean():.2g})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("mean |predicted \u2212 actual|")
    ax.legend(loc="upper left")
    return ax


def runtime_plot(
    ax: plt.Axes,
    sizes: Sequence[float],
    seconds: dict[str, Sequence[float]],
    *,
    xlabel: str = "training units n",
) -> plt.Axes:
    """Log-log runtime against problem size, one line per method (``seconds[name]`` aligned with ``sizes``).

    The x ticks are the measured sizes written out in full (no overlapping minor-tick labels); the legend
    sits outside the axes, right of them, so no line is hidden.
    """
    for (name, values), color in zip(seconds.items(), PALETTE):
        ax.plot(sizes, values, marker="o", color=color, label=name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.xaxis.set_major_locator(FixedLocator(list(sizes)))
    ax.xaxis.set_major_formatter(FixedFormatter([f"{int(size):,}" for size in sizes]))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel(xlabel)
    ax.set_ylabel("wall-clock time (s)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return ax


def group_size_plot(
    ax: plt.Axes,
    frame: pd.DataFrame,
    case: str,
    *,
    predictors: Sequence[str],
    shown: Sequence[str] | None = None,
    metric: str = "pearson",
) -> plt.Axes:
    """``metric`` against group size for one case: one colour per predictor, random groups solid, local dashed.

    Args:
        ax: axes to draw on.
        frame: long table with columns ``case``, ``family`` (``"random"`` / ``"local"``), ``size``, ``predictor``
            and ``metric`` (as :func:`vif.experiments.groups.table` returns).
        case: the case drawn (also the title).
        predictors: every predictor, in the order that fixes its colour (the same in every panel).
        shown: the predictors drawn (default all).
        metric: the column on the y axis.
    """
    for colour, predictor in zip(PALETTE, predictors):
        if shown is not None and predictor not in shown:
            continue
        for family, style in (("random", "-"), ("local", "--")):
            part = frame[(frame.case == case) & (frame.family == family) & (frame.predictor == predictor)]
            if len(part):
                ax.plot(part["size"], part[metric], style, marker="o", color=colour, markersize=3,
                        label=f"{predictor} ({family})")
    ax.set_xscale("log")
    sizes_seen = sorted(set(frame[frame.case == case]["size"]))
    ax.set_xticks(sizes_seen, [str(size) for size in sizes_seen])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("group size")
    ax.set_title(case)
    return ax


def save_figure(fig: plt.Figure, out_dir: str | os.PathLike, name: str) -> list[Path]:
    """Write ``fig`` to ``out_dir/name.png`` and ``out_dir/name.pdf``; returns the two paths."""
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{name}.png", folder / f"{name}.pdf"]
    for path in paths:
        fig.savefig(path)
    return paths
