"""Matplotlib without pyplot: figures drawn by the Agg canvas, no global backend state.

Using :class:`matplotlib.figure.Figure` with its own Agg canvas (instead of
``pyplot``) needs no display, leaves the process-wide backend alone (a library must not
call ``matplotlib.use``) and frees each figure with its last reference.
"""

from __future__ import annotations

import os


def new_figure(figsize: tuple[float, float]):
    """A :class:`matplotlib.figure.Figure` on an Agg canvas, with constrained layout."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, path: str | os.PathLike, dpi: int = 100) -> None:
    """Write ``fig`` as PNG; no software/version metadata, so equal figures give equal files."""
    fig.savefig(path, format="png", dpi=dpi, metadata={"Software": None})
