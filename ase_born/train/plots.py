"""Parity plots (per species) and training curves, written as PNG with matplotlib's Agg canvas.

No pyplot and no global backend switch: figures are drawn on a
:class:`matplotlib.backends.backend_agg.FigureCanvasAgg` directly.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from ase.data import chemical_symbols

_DIAG = np.eye(3, dtype=bool)


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def parity_plot(
    pred: np.ndarray,
    target: np.ndarray,
    numbers: np.ndarray,
    path: str | os.PathLike,
    *,
    title: str = "",
) -> Path:
    """One panel per species: predicted vs reference Z* components (diagonal / off-diagonal).

    Parameters
    ----------
    pred, target : numpy.ndarray, shape=(n_atoms, 3, 3)
        Sum-rule-corrected prediction and reference, e.
    numbers : numpy.ndarray, shape=(n_atoms,)
    path : path-like
        PNG file.
    """
    pred, target, numbers = np.asarray(pred), np.asarray(target), np.asarray(numbers)
    species = sorted(set(numbers.tolist()))
    ncol = min(len(species), 3)
    nrow = math.ceil(len(species) / ncol)
    fig = _figure(4.0 * ncol, 3.8 * nrow)
    for k, z in enumerate(species):
        ax = fig.add_subplot(nrow, ncol, k + 1)
        sel = numbers == z
        p, t = pred[sel], target[sel]
        for mask, label, color in (
            (_DIAG, "diagonal", "tab:blue"),
            (~_DIAG, "off-diagonal", "tab:orange"),
        ):
            pp, tt = p[:, mask].ravel(), t[:, mask].ravel()
            mae = float(np.abs(pp - tt).mean()) if pp.size else math.nan
            ax.scatter(tt, pp, s=6, alpha=0.6, color=color, label=f"{label} (MAE {mae:.4f} e)")
        lo = float(min(p.min(), t.min()))
        hi = float(max(p.max(), t.max()))
        pad = 0.05 * (hi - lo + 1e-9)
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], "k-", lw=0.8)
        ax.set_xlim(lo - pad, hi + pad)
        ax.set_ylim(lo - pad, hi + pad)
        ax.set_aspect("equal")
        ax.set_title(f"{chemical_symbols[int(z)]} ({int(sel.sum())} atoms)")
        ax.set_xlabel("reference Z* (e)")
        ax.set_ylabel("predicted Z* (e)")
        ax.legend(fontsize=7, loc="upper left")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def training_curve(
    history: Sequence[Mapping[str, Any]], path: str | os.PathLike, *, title: str = ""
) -> Path:
    """Training loss and validation MAE/RMSE per epoch (log scale), learning rate below."""
    epochs = np.array([h["epoch"] for h in history], dtype=float)

    def col(key: str) -> np.ndarray:
        return np.array([np.nan if h.get(key) is None else float(h[key]) for h in history])

    fig = _figure(6.5, 6.0)
    ax = fig.add_subplot(2, 1, 1)
    for key, label in (
        ("train_loss", "train loss"),
        ("val_mae", "val MAE (e)"),
        ("val_rmse", "val RMSE (e)"),
    ):
        y = col(key)
        ok = np.isfinite(y) & (y > 0)
        if ok.any():
            ax.plot(epochs[ok], y[ok], label=label)
    best = [h["epoch"] for h in history if h.get("best")]
    if best:
        ax.axvline(best[-1], color="grey", ls="--", lw=0.8, label=f"best epoch {best[-1]}")
    ax.set_yscale("log")
    ax.set_ylabel("error")
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    ax2 = fig.add_subplot(2, 1, 2, sharex=ax)
    lr = col("lr")
    ok = np.isfinite(lr)
    if ok.any():
        ax2.plot(epochs[ok], lr[ok], color="tab:green")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("learning rate")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


__all__ = ["parity_plot", "training_curve"]
