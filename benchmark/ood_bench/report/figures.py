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
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
from sklearn.metrics import roc_curve

from ood_bench.files import write_atomic
from ood_bench.metrics import auroc

DPI = 110
ID_COLOUR = "0.35"


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path, crop: bool = False) -> Path:
    """Write the PNG; ``crop`` trims the margins to the drawn content (figures with outside legends)."""
    # No version stamp in the file: the same cache gives the same bytes.
    return write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=DPI, metadata={"Software": None},
                                                    bbox_inches="tight" if crop else None, pad_inches=0.15))


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
    return _save(fig, path, crop=True)


def _shared_axis(s_id: np.ndarray, sets: Sequence[np.ndarray], log: bool) -> tuple[float, float]:
    """An x-range (in log10 units when ``log``) holding the central 99% of every set, but no wider than
    the ID set's central 99% plus three times its width on each side: one far-off set (uniform noise)
    must not squeeze the others into a few bins. What falls outside is counted, not drawn."""

    def q(values: np.ndarray, p: float) -> float:
        return float(np.quantile(np.log10(values) if log else values, p))

    id_lo, id_hi = q(s_id, 0.005), q(s_id, 0.995)
    width = id_hi - id_lo or 1.0
    lo = max(min(q(v, 0.005) for v in [s_id, *sets]), id_lo - 3 * width)
    hi = min(max(q(v, 0.995) for v in [s_id, *sets]), id_hi + 3 * width)
    pad = 0.03 * (hi - lo)
    return lo - pad, hi + pad


def _histogram(ax, values: np.ndarray, edges: np.ndarray, **style) -> tuple[float, float]:
    """Density histogram of ``values`` whose area is the fraction inside ``edges``; returns the fractions
    below and above the edges."""
    inside = (values >= edges[0]) & (values <= edges[-1])
    heights, _ = np.histogram(values[inside], bins=edges)
    ax.stairs(heights / (values.size * np.diff(edges)), edges, **style)
    return float((values < edges[0]).mean()), float((values > edges[-1]).mean())


def _beyond_text(below: float, above: float) -> str:
    def pct(x: float) -> str:
        return "<0.1%" if x < 0.001 else f"{x:.1%}" if x < 0.1 else f"{x:.0%}"

    parts = ([f"{pct(below)} left of the axis"] if below > 0 else []) + (
        [f"{pct(above)} right of the axis"] if above > 0 else [])
    return ", ".join(parts)


def _log_ticks(decades: float) -> tuple[float, ...]:
    """Mantissas to label on a log axis spanning ``decades`` (at least one): readable, and not crowded."""
    return (1.0, 2.0, 5.0) if decades < 3 else (1.0,)


def density_figure(id_label: str, s_id: np.ndarray, others: dict[str, np.ndarray], xlabel: str, title: str,
                   path: Path, log: bool = False) -> Path:
    """Empirical densities of the ID scores against each other set, one panel per set, all panels on one
    x-axis (logarithmic when ``log`` and the axis spans a decade or more); each panel names the set and
    its AUROC and says how much of the set lies beyond the axis."""
    n = len(others)
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig = _figure(3.0 * cols + 0.4, 2.2 * rows + 0.8)
    axes = fig.subplots(rows, cols, sharex=True, squeeze=False)
    lo, hi = _shared_axis(s_id, list(others.values()), log)
    if log and hi - lo < 1:  # under a decade a linear axis reads better
        log = False
        lo, hi = _shared_axis(s_id, list(others.values()), log)
    if log:
        xlabel += " (log axis)"
    edges = np.logspace(lo, hi, 61) if log else np.linspace(lo, hi, 61)
    for ax, (label, s_ood) in zip(axes.flat, others.items(), strict=False):
        _histogram(ax, s_id, edges, fill=True, color=ID_COLOUR, alpha=0.45)
        text = _beyond_text(*_histogram(ax, s_ood, edges, color="C3", lw=1.4))
        if text:
            ax.text(0.98, 0.96, text, transform=ax.transAxes, ha="right", va="top", fontsize=7, color="C3")
        ax.set_title(f"{label}  (AUROC {auroc(s_id, s_ood):.3f})", fontsize=9)
        ax.set_yticks([])
        ax.tick_params(labelsize=8, labelbottom=True)
        ax.margins(y=0.18)
        if log:
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(LogLocator(subs=_log_ticks(hi - lo)))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(NullFormatter())
    axes.flat[0].set_xlim(edges[0], edges[-1])
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    for ax in axes.flat[max(0, n - cols):n]:
        ax.set_xlabel(xlabel, fontsize=8)
    handles = axes.flat[0].patches[:2]
    fig.legend(handles, [f"{id_label} (ID test)", "the panel's set"], loc="upper right", fontsize=8,
               frameon=False, ncol=2)
    fig.suptitle(f"{title}   (higher = more OOD)", x=0.01, ha="left", fontsize=10)
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
    first_inputs, first_recons = next(iter(panels.values()))
    depth, examples = len(first_recons) + 1, first_inputs.shape[0]
    fig = _figure(3.2 * cols + 0.3, (2.7 * depth / examples + 0.6) * rows + 0.35)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, (label, (inputs, recons)) in zip(axes.flat, panels.items(), strict=False):
        picture = _mosaic([inputs, *recons])
        h = inputs.shape[2] + 1
        ax.imshow(picture[..., 0] if picture.shape[2] == 1 else picture, cmap="gray", vmin=0, vmax=1,
                  interpolation="nearest")
        ax.set_yticks([h * r + (h - 1) / 2 for r in range(depth)],
                      ["input", *[f"z>{k}" for k in range(depth - 1)]], fontsize=8)
        ax.set_xticks([])
        ax.tick_params(length=0)
        ax.set_title(label, fontsize=9)
        for spine in ax.spines.values():
            spine.set_visible(False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    fig.suptitle(title, x=0.01, ha="left", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.3 / fig.get_figheight()))
    return _save(fig, path)


def kl_figure(kl: dict[str, np.ndarray], title: str, path: Path) -> Path:
    """Mean KL term per latent layer (nats per example) of each set, grouped by layer.

    The y-axis is symmetric-log (linear below 1 nat): collapsed layers (KL near 0) stay visible next to
    layers carrying hundreds of nats.
    """
    labels = list(kl)
    layers = len(next(iter(kl.values())))
    fig = _figure(min(12.0, max(4.0, 0.22 * layers * len(labels) + 1.5)) + 2.5, 3.8)
    ax = fig.add_axes((0.1, 0.14, 0.62, 0.74))
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
    return _save(fig, path, crop=True)
