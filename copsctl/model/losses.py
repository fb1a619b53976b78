"""Pre-training losses: weighted top-k cross-entropy (hard pixel mining, section 4.2).

Following Panoptic-DeepLab (DeeperLab's hard pixel mining): per-pixel losses are
multiplied by their weights, then only the ``top_k`` fraction with the largest weighted
loss is averaged. Unlike Panoptic-DeepLab, ignored pixels (void, crowd, positions without
an edge) are excluded from the count the fraction is taken of, so images with much void
are not mined harder than others.

The semantic branch gets one such loss; every affinity predictor -- each distance and
each direction, i.e. each channel of the grid layout -- gets its own binary version, and
the affinity loss is their mean. Losses come back as a dict whose ``loss_*`` entries are
already weighted and sum to the total (:func:`total_loss`); the other entries are
detached per-distance values for logging.

Targets, as produced by :mod:`copsctl.data`, at the network's output resolution:

``semantic``         (B, h, w) int64 class ids, ``IGNORE_INDEX`` (255) on void;
``semantic_weights`` (B, h, w) float, ``small_instance_weight`` on small instances, else 1;
``affinity``         (B, 2m, h, w) float, 1 where both endpoints of the edge lie in the
                     same panoptic segment, else 0, grid layout of copsctl.solver.grid;
``affinity_weights`` (B, 2m, h, w) float, 0 where the edge is ignored (no edge at that
                     position, a void endpoint, both endpoints inside one crowd segment),
                     otherwise the product of the thing-edge and small-instance factors.

:func:`copsctl.data.targets.make_targets` documents how they are built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping, Sequence

import torch
import torch.nn.functional as F

from ..data.categories import IGNORE_INDEX
from ..errors import InputError

if TYPE_CHECKING:
    from ..config import Recipe

__all__ = ["topk_cross_entropy", "topk_binary_cross_entropy", "PretrainLoss", "pretrain_losses",
           "total_loss"]


def _topk_mean_flat(values: torch.Tensor, top_k: float) -> torch.Tensor:
    """Mean of the k = max(1, int(top_k * n)) largest entries of ``values`` (n,)."""
    n = values.numel()
    if n == 0:
        # Zero that stays connected to the graph, so every parameter still gets a gradient.
        return values.sum()
    k = max(1, int(top_k * n))
    if k >= n:
        return values.mean()
    return torch.topk(values, k, sorted=False).values.mean()


def _topk_mean(losses: torch.Tensor, valid: torch.Tensor, top_k: float, per_image: bool) -> torch.Tensor:
    if not per_image:
        return _topk_mean_flat(losses[valid], top_k)
    per = [_topk_mean_flat(losses[b][valid[b]], top_k) for b in range(losses.shape[0])]
    counted = [v for v, ok in zip(per, valid.flatten(1).any(dim=1).tolist()) if ok]
    # Images without a valid pixel contribute nothing (not a zero that would dilute the mean).
    return torch.stack(counted).mean() if counted else torch.stack(per).sum()


def topk_cross_entropy(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None, *,
                       top_k: float = 0.2, ignore_index: int = IGNORE_INDEX, per_image: bool = False) -> torch.Tensor:
    """Weighted top-k softmax cross-entropy.

    Parameters
    ----------
    logits
        (B, K, h, w) class logits.
    target
        (B, h, w) int64 class ids; ``ignore_index`` marks excluded pixels.
    weight
        (B, h, w) non-negative per-pixel weights, or None for all ones.
    top_k
        Fraction in (0, 1] of the valid pixels, with the largest weighted loss, averaged.
    per_image
        Mine each image separately and average over images, instead of over the batch.

    Returns
    -------
    0-dim float32 tensor; 0 (with a graph) when no pixel is valid.
    """
    if target.shape != logits.shape[:1] + logits.shape[2:]:
        raise InputError(f"`target` (shape {tuple(target.shape)}) must have shape (B, h, w) of "
                         f"`logits` (shape {tuple(logits.shape)})")
    losses = F.cross_entropy(logits.float(), target, reduction="none", ignore_index=ignore_index)
    if weight is not None:
        if weight.shape != target.shape:
            raise InputError(f"`weight` (shape {tuple(weight.shape)}) must have the shape of "
                             f"`target` ({tuple(target.shape)})")
        losses = losses * weight
    return _topk_mean(losses, target != ignore_index, top_k, per_image)


def topk_binary_cross_entropy(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, *,
                              top_k: float = 0.25, per_image: bool = False) -> torch.Tensor:
    """Weighted top-k binary cross-entropy on logits; positions with weight 0 are ignored.

    Parameters
    ----------
    logits
        (B, h, w) logits of the positive event ("same segment").
    target
        (B, h, w) values in {0, 1}.
    weight
        (B, h, w) non-negative weights; 0 excludes the position from the loss and from
        the count ``top_k`` is a fraction of.
    top_k, per_image
        As in :func:`topk_cross_entropy`.

    Returns
    -------
    0-dim float32 tensor.
    """
    if target.shape != logits.shape or weight.shape != logits.shape:
        raise InputError(f"`target` (shape {tuple(target.shape)}) and `weight` (shape "
                         f"{tuple(weight.shape)}) must have the shape of `logits` ({tuple(logits.shape)})")
    losses = F.binary_cross_entropy_with_logits(logits.float(), target.float(), reduction="none") * weight
    return _topk_mean(losses, weight > 0, top_k, per_image)


class PretrainLoss:
    """The pre-training objective: semantic plus mean per-predictor affinity top-k losses.

    Parameters
    ----------
    distances
        ``(d_1, ..., d_m)`` of the affinity layout (for the logging names).
    semantic_weight, semantic_top_k, affinity_weight, affinity_top_k, per_image
        See :class:`~copsctl.config.LossConfig`.
    ignore_index
        Semantic target value excluded from the loss.

    Call
    ----
    ``(outputs, targets)`` -> dict with ``loss_semantic`` and ``loss_affinity`` (weighted,
    0-dim tensors with graphs) and ``affinity_d{d}`` (detached, unweighted mean of the
    horizontal and vertical losses of distance d). ``outputs`` as returned by
    :class:`~copsctl.model.PanopticModel`, ``targets`` as described in the module docstring.
    """

    def __init__(self, *, distances: Sequence[int], semantic_weight: float = 1.0, semantic_top_k: float = 0.2,
                 affinity_weight: float = 0.25, affinity_top_k: float = 0.25, ignore_index: int = IGNORE_INDEX,
                 per_image: bool = False):
        self.distances = tuple(int(d) for d in distances)
        self.semantic_weight = float(semantic_weight)
        self.semantic_top_k = float(semantic_top_k)
        self.affinity_weight = float(affinity_weight)
        self.affinity_top_k = float(affinity_top_k)
        self.ignore_index = int(ignore_index)
        self.per_image = bool(per_image)

    @classmethod
    def from_config(cls, cfg: "Recipe") -> "PretrainLoss":
        """The loss of a resolved recipe."""
        return cls(distances=cfg.model.distances, semantic_weight=cfg.loss.semantic_weight,
                   semantic_top_k=cfg.loss.semantic_top_k, affinity_weight=cfg.loss.affinity_weight,
                   affinity_top_k=cfg.loss.affinity_top_k,
                   per_image=cfg.loss.top_k_per_image)

    def __call__(self, outputs: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        for key in ("semantic", "semantic_weights", "affinity", "affinity_weights"):
            if key not in targets:
                raise InputError(f"`targets` must contain {key!r}; got keys {sorted(targets)}")
        sem_logits, aff_logits = outputs["semantic_logits"], outputs["affinity_logits"]
        channels = 2 * len(self.distances)
        if aff_logits.shape[1] != channels:
            raise InputError(f"`affinity_logits` (shape {tuple(aff_logits.shape)}) must have {channels} "
                             f"channels for distances {list(self.distances)}")
        for key in ("affinity", "affinity_weights"):
            if targets[key].shape != aff_logits.shape:
                raise InputError(f"targets[{key!r}] (shape {tuple(targets[key].shape)}) must have the "
                                 f"shape of `affinity_logits` ({tuple(aff_logits.shape)})")
        semantic = topk_cross_entropy(sem_logits, targets["semantic"], targets["semantic_weights"],
                                      top_k=self.semantic_top_k, ignore_index=self.ignore_index,
                                      per_image=self.per_image)
        per_channel = [topk_binary_cross_entropy(aff_logits[:, c], targets["affinity"][:, c],
                                                 targets["affinity_weights"][:, c], top_k=self.affinity_top_k,
                                                 per_image=self.per_image)
                       for c in range(channels)]
        out = {"loss_semantic": self.semantic_weight * semantic,
               "loss_affinity": self.affinity_weight * torch.stack(per_channel).mean()}
        for i, d in enumerate(self.distances):
            out[f"affinity_d{d}"] = ((per_channel[2 * i] + per_channel[2 * i + 1]) / 2).detach()
        return out


def pretrain_losses(outputs: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor],
                    cfg: "Recipe") -> dict[str, torch.Tensor]:
    """Shortcut for ``PretrainLoss.from_config(cfg)(outputs, targets)``."""
    return PretrainLoss.from_config(cfg)(outputs, targets)


def total_loss(losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Sum of the ``loss_*`` entries of a loss dict (the other entries are for logging)."""
    terms = [v for k, v in losses.items() if k.startswith("loss_")]
    if not terms:
        raise InputError(f"`losses` must contain loss_* entries, got keys {sorted(losses)}")
    return torch.stack([t.float() for t in terms]).sum()
