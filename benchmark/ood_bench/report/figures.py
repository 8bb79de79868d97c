"""The report's figures, drawn with matplotlib's Agg canvas (no display, no global pyplot state).

Every function takes plain arrays and writes one PNG of fixed size and resolution, so the same
cache always gives the same files.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import roc_curve

from ood_bench.metrics import auroc

DPI = 110
ID_COLOUR = "0.35"


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, metadata={"Software": None})  # no version stamp: same cache, same bytes
    return path


def roc_figure(curves: Sequence[tuple[str, np.ndarray, np.ndarray]], title: str, path: Path) -> Path:
    """ROC curves (OOD positive) of several scores on one ID/OOD pair; AUROC of each in the legend.

    ``curves``: (label, ID scores, OOD scores). Labels sharing a prefix before "/" share a line style.
    """
    fig = _figure(7.2, 4.6)
    ax = fig.add_axes((0.09, 0.11, 0.52, 0.8))
    styles = ["-", "--", ":", "-."]
    groups = list(dict.fromkeys(label.split("/")[0] for label, _, _ in curves))
    colours = [f"C{i % 10}" for i in range(len(curves))]
    for (label, s_id, s_ood), colour in zip(curves, colours, strict=True):
        labels = np.concatenate([np.zeros(s_id.size), np.ones(s_ood.size)])
        fpr, tpr, _ = roc_curve(labels, np.concatenate([s_id, s_ood]))
        style = styles[groups.index(label.split("/")[0]) % len(styles)]
        ax.plot(fpr, tpr, style, color=colour, lw=1.4, label=f"{label}  {auroc(s_id, s_ood):.3f}")
    ax.plot([0, 1], [0, 1], color="0.75", lw=0.8, zorder=0)
    ax.set(xlim=(0, 1), ylim=(0, 1.005), xlabel="false-positive rate (ID flagged OOD)",
           ylabel="true-positive rate (OOD caught)", title=title)
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.03, 0.5), fontsize=8, title="score  AUROC",
              title_fontsize=8, frameon=False)
    return _save(fig, path)


def _shared_range(sets: Sequence[np.ndarray]) -> tuple[float, float]:
    """An x-range holding the central 99% of every set, so one far-off set cannot hide the others' shapes
    only when it is far off: the range is the union of per-set 0.5-99.5% quantile ranges."""
    lows = [np.quantile(s, 0.005) for s in sets]
    highs = [np.quantile(s, 0.995) for s in sets]
    lo, hi = min(lows), max(highs)
    pad = 0.03 * (hi - lo) if hi > lo else 0.5
    return lo - pad, hi + pad


def density_figure(id_label: str, s_id: np.ndarray, others: dict[str, np.ndarray], xlabel: str, title: str,
                   path: Path) -> Path:
    """Empirical densities (histograms on shared bins) of the ID scores against each other set, one
    panel per set, all panels on one x-axis; each panel names the set and its AUROC."""
    n = len(others)
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig = _figure(3.0 * cols + 0.4, 2.1 * rows + 0.8)
    axes = fig.subplots(rows, cols, sharex=True, squeeze=False)
    lo, hi = _shared_range([s_id, *others.values()])
    bins = np.linspace(lo, hi, 61)
    for ax, (label, s_ood) in zip(axes.flat, others.items(), strict=False):
        ax.hist(np.clip(s_id, lo, hi), bins=bins, density=True, color=ID_COLOUR, alpha=0.45,
                label=f"{id_label} (ID)")
        ax.hist(np.clip(s_ood, lo, hi), bins=bins, density=True, histtype="step", color="C3", lw=1.4,
                label=label)
        ax.set_title(f"{label}  (AUROC {auroc(s_id, s_ood):.3f})", fontsize=9)
        ax.set_yticks([])
        ax.tick_params(labelsize=8)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel(xlabel, fontsize=8)
    for ax in axes[:-1].flat if rows > 1 else []:
        ax.tick_params(labelbottom=True)
    handles = [axes.flat[0].patches[0], axes.flat[0].patches[-1]]
    fig.legend(handles, [f"{id_label} (ID test)", "the panel's set"], loc="upper right", fontsize=8,
               frameon=False, ncol=2)
    fig.suptitle(title, x=0.01, ha="left", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    return _save(fig, path)


def _mosaic(rows: list[np.ndarray], gap: int = 1) -> np.ndarray:
    """Stack rows of images (each (N, C, H, W) in [0, 1]) into one (H', W', C) picture with white gaps."""
    n, c, h, w = rows[0].shape
    out = np.ones((len(rows) * (h + gap) - gap, n * (w + gap) - gap, c))
    for r, images in enumerate(rows):
        for i, image in enumerate(images):
            out[r * (h + gap): r * (h + gap) + h, i * (w + gap): i * (w + gap) + w] = image.transpose(1, 2, 0)
    return out


def reconstruction_figure(panels: dict[str, tuple[np.ndarray, list[np.ndarray]]], title: str, path: Path) -> Path:
    """One panel per set: its inputs (top row) and the mean reconstruction from z_{>k} for each k below."""
    n = len(panels)
    cols = min(4, n)
    rows = math.ceil(n / cols)
    depth = len(next(iter(panels.values()))[1]) + 1
    fig = _figure(3.2 * cols + 0.3, (0.42 * depth + 0.55) * rows + 0.5)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, (label, (inputs, recons)) in zip(axes.flat, panels.items(), strict=False):
        picture = _mosaic([inputs, *recons])
        h = inputs.shape[2] + 1
        ax.imshow(picture[..., 0] if picture.shape[2] == 1 else picture, cmap="gray", vmin=0, vmax=1,
                  interpolation="nearest")
        ax.set_yticks([h * r + (h - 1) / 2 for r in range(depth)],
                      ["input", *[f"z>{k}" for k in range(depth - 1)]], fontsize=8)
        ax.set_xticks([])
        ax.set_title(label, fontsize=9)
        for spine in ax.spines.values():
            spine.set_visible(False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    fig.suptitle(title, x=0.01, ha="left", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    return _save(fig, path)


def kl_figure(kl: dict[str, np.ndarray], title: str, path: Path) -> Path:
    """Mean KL term per latent layer (nats per example) of each set, grouped by layer.

    The y-axis is symmetric-log (linear below 1 nat): collapsed layers (KL near 0) stay visible next to
    layers carrying hundreds of nats.
    """
    labels = list(kl)
    layers = len(next(iter(kl.values())))
    fig = _figure(max(6.0, 1.1 * layers * max(1, len(labels)) / 3 + 3.5), 3.8)
    ax = fig.add_axes((0.09, 0.14, 0.6, 0.74))
    width = 0.8 / len(labels)
    for i, label in enumerate(labels):
        x = np.arange(layers) + (i - (len(labels) - 1) / 2) * width
        colour = ID_COLOUR if i == 0 else f"C{(i - 1) % 10}"
        ax.bar(x, kl[label], width=width, color=colour, label=label)
    ax.set_yscale("symlog", linthresh=1.0)
    ax.axhline(0, color="0.5", lw=0.6)
    ax.set_xticks(np.arange(layers), [f"z{l + 1}" for l in range(layers)])
    ax.set(ylabel="mean KL term (nats / example)", title=title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8, frameon=False)
    return _save(fig, path)
