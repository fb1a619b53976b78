"""The COPS pipeline as a picture: ``copsctl visualize pipeline`` (the repository's
``docs/pipeline.png`` is drawn with ``--out docs/pipeline.png``; the default is
``pipeline.png`` in the current folder).

Forward path, left to right: image -> network -> costs (HDF5 cost file) -> AMWC solver ->
panoptic PNG + JSON -> exact PQ, each box labelled with the ``copsctl`` command that runs
the stage. Below it, the fine-tuning backward path (section 3.3 of the paper): the PQ
surrogate of the solver's segmentation, Algorithm 1's perturbed solves, and the cost
gradients flowing back into the network's last layers.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import InputError

__all__ = ["pipeline_figure"]

# (x centre, title, detail, command) of the forward boxes; y is shared.
_FORWARD = (
    (1.0, "image", "RGB, H x W", "make-synthetic\n(or Cityscapes / COCO)"),
    (3.25, "network", "ResNet + semantic and\naffinity DeepLabV3+ heads", "pretrain\nfinetune"),
    (5.5, "costs (HDF5)", "node costs (K, h, w)\nedge costs (2m, h, w)", "dump-costs"),
    (7.75, "AMWC solver", "asymmetric multiway cut:\nclasses + instances", "solve"),
    (10.0, "panoptic\nPNG + JSON", "COCO panoptic format", "solve"),
    (12.25, "PQ", "exact, vs ground truth", "evaluate"),
)
_BOX_W, _BOX_H, _Y = 1.8, 1.25, 3.0


def pipeline_figure(out: str | os.PathLike, *, dpi: int = 100) -> dict:
    """Draw the pipeline diagram to a PNG; return ``{"out": path, "bytes": size}``."""
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    from ..atomic import atomic_path
    from ._mpl import new_figure, save_figure

    out = Path(out)
    if out.suffix.lower() != ".png":
        raise InputError(f"--out {out}: must be a .png file")
    fig = new_figure(figsize=(13.5, 4.6))
    ax = fig.add_subplot(1, 1, 1)
    ax.set_xlim(-0.1, 13.35)
    ax.set_ylim(-0.35, 4.55)
    ax.axis("off")

    def box(x, y, title, detail, command, color, w=_BOX_W, h=_BOX_H):
        ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h,
                                    boxstyle="round,pad=0.02,rounding_size=0.12",
                                    facecolor=color, edgecolor="#333333", lw=1.2))
        ax.text(x, y + 0.22, title, ha="center", va="center", fontsize=10.5, weight="bold")
        ax.text(x, y - 0.33, detail, ha="center", va="center", fontsize=7.5, color="#333333")
        if command:
            ax.text(x, y + h / 2 + 0.12, "\n".join(f"copsctl {c}" if not c.startswith("(")
                                                   else c for c in command.split("\n")),
                    ha="center", va="bottom", fontsize=7.5, family="monospace",
                    color="#1f4e9c")

    def arrow(x0, y0, x1, y1, color="#333333", style="-|>", ls="-", text=None, rad=0.0):
        ax.add_patch(FancyArrowPatch((x0, y0), (x1, y1), arrowstyle=style, mutation_scale=14,
                                     color=color, lw=1.6, linestyle=ls,
                                     connectionstyle=f"arc3,rad={rad}"))
        if text:
            ax.text((x0 + x1) / 2, (y0 + y1) / 2 + 0.12, text, ha="center", va="bottom",
                    fontsize=7.5, color=color)

    colors = ("#f2f2f2", "#dbe8f7", "#fdf1d6", "#e3f2df", "#f2f2f2", "#f6e0e0")
    for (x, title, detail, command), color in zip(_FORWARD, colors):
        box(x, _Y, title, detail, command, color)
    for (x0, *_), (x1, *_) in zip(_FORWARD, _FORWARD[1:]):
        arrow(x0 + _BOX_W / 2, _Y, x1 - _BOX_W / 2, _Y)

    # Backward path of fine-tuning (copsctl finetune), drawn in red, dashed.
    red = "#b22222"
    yb = 0.75
    xs, xa = 10.6, 7.2  # PQ surrogate, Algorithm 1
    box(xs, yb, "PQ surrogate (6)", "soft matching, soft\nrejection vs ground truth", None,
        "#fbe3e3")
    box(xa, yb, "Algorithm 1", "N perturbed solves,\nλ ~ U[λ_min, λ_max]", None, "#fbe3e3")
    arrow(7.75 + 0.4, _Y - _BOX_H / 2, xs - 0.4, yb + _BOX_H / 2, color=red)
    ax.text(9.55, 1.95, "segmentation", ha="left", va="center", fontsize=7.5, color=red)
    arrow(xs - _BOX_W / 2, yb, xa + _BOX_W / 2, yb, color=red, ls="--",
          text="∂L/∂segmentation")
    arrow(xa - _BOX_W / 2, yb, 5.5, _Y - _BOX_H / 2, color=red, ls="--", rad=-0.2)
    ax.text(5.3, 1.3, "∂L/∂costs", ha="right", va="center", fontsize=7.5, color=red)
    arrow(5.5 - _BOX_W / 2 + 0.1, _Y - _BOX_H / 2, 3.25 + 0.3, _Y - _BOX_H / 2, color=red,
          ls="--", rad=-0.5)
    ax.text(3.25, 1.95, "backprop into the heads\nand last decoder layers", ha="center",
            va="top", fontsize=7.5, color=red)
    ax.text(13.3, yb, "copsctl finetune:\nfine-tuning through\nthe solver (backward\npath dashed)",
            ha="right", va="center", fontsize=8, color=red, family="monospace")
    with atomic_path(out, suffix=".png") as tmp:
        save_figure(fig, tmp, dpi=dpi)
    return {"out": str(out), "bytes": out.stat().st_size}
