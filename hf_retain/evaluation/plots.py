"""Figures shared by the reports: one learning-vs-forgetting scatter and one way to open and save a figure.

`RetentionReport`, `Comparison` and `RetentionMatrix` all plot learning (x) against forgetting (y); they differ only in
their points and axis labels, so they share `scatter_learning_forgetting`.

Example:
    >>> import tempfile, os
    >>> from hf_retain.evaluation.plots import scatter_learning_forgetting
    >>> path = os.path.join(tempfile.mkdtemp(), "lf.png")
    >>> out = scatter_learning_forgetting([("plain", 0.47, 0.56), ("replay", 0.50, -0.04)], path)
    >>> out.name, out.stat().st_size > 0
    ('lf.png', True)
"""

from __future__ import annotations

import contextlib
import math
import os
import textwrap
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

__all__ = ["report_figure", "scatter_learning_forgetting"]


@contextlib.contextmanager
def report_figure(
    path: str | os.PathLike[str], *, figsize: tuple[float, float] = (6.4, 4.4)
) -> Iterator[tuple[Any, Any]]:
    """``(fig, ax)`` on matplotlib's file-only Agg backend (reports run on headless machines); saved to ``path`` with
    a tight layout when the block ends, and closed either way."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=figsize, dpi=120)
    try:
        yield fig, ax
        fig.tight_layout()
        fig.savefig(Path(path))
    finally:
        plt.close(fig)


def scatter_learning_forgetting(
    points: Sequence[tuple[str, float, float]], path: str | os.PathLike[str], *,
    xlabel: str = "learning: domain loss decrease (nats/token)",
    ylabel: str = "forgetting: general loss increase (nats/token)", title: str | None = None,
) -> Path:
    """One labelled point per ``(label, learning, forgetting)``: down-right is good, up-left is bad. Points with a NaN
    coordinate are left out (a task not yet measured)."""
    with report_figure(path) as (_fig, ax):
        for label, x, y in points:
            if math.isnan(x) or math.isnan(y):
                continue
            ax.scatter(x, y, s=60)
            ax.annotate(label, (x, y), textcoords="offset points", xytext=(6, 4))
        ax.axhline(0.0, color="grey", linewidth=0.8)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if title:
            ax.set_title(textwrap.fill(title, 70), fontsize=9)
        ax.grid(alpha=0.3)
    return Path(path)
