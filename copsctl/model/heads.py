"""The semantic head (K class scores) and the affinity branch (one predictor per distance).

Affinity branch (section 3.1): its input is the affinity decoder's features concatenated
with the *detached* semantic node costs -- class boundaries are easier to find with them,
and detaching keeps the affinity loss from ever training the semantic branch. A shared
layer turns this into affinity features; then each distance ``d`` has its own predictor.
For ``d = 1`` the predictor reads the features directly (its 3x3 window already covers
both endpoints); for ``d > 1`` it reads the difference of the features at the two
endpoints of each edge, which is what lets it judge pixels far apart.

Output layout is the grid layout of :mod:`copsctl.solver.grid`: for distances
``(d_1, ..., d_m)`` the logits are (B, 2m, h, w), channel ``2i`` the horizontal edge
``(y, x) -> (y, x + d_i)`` and channel ``2i + 1`` the vertical edge ``(y, x) -> (y + d_i, x)``.
Positions whose partner lies outside the map carry no edge; their values are don't-care.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .decoder import separable_conv

__all__ = ["SemanticHead", "AffinityHead", "EdgePredictor", "endpoint_difference"]


class SemanticHead(nn.Module):
    """Decoder features (B, C, h, w) -> class logits (B, K, h, w).

    ``conv`` is a 5x5 separable layer, ``predictor`` the 1x1 classifier.
    """

    def __init__(self, *, in_channels: int, channels: int, num_classes: int):
        super().__init__()
        self.conv = separable_conv(in_channels, channels, 5)
        self.predictor = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.predictor(self.conv(x))


def endpoint_difference(features: torch.Tensor, distance: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Feature differences across the horizontal and vertical edges of one distance.

    Parameters
    ----------
    features
        (B, C, h, w) tensor.
    distance
        Edge length ``d >= 1`` in pixels of ``features``.

    Returns
    -------
    horizontal, vertical : (B, C, h, w) tensors
        ``horizontal[..., y, x] = features[..., y, x + d] - features[..., y, x]`` and
        ``vertical[..., y, x] = features[..., y + d, x] - features[..., y, x]``; zero where
        the partner pixel is outside the map (no edge there).
    """
    h, w = features.shape[-2:]
    d = int(distance)
    if d < w:
        horizontal = F.pad(features[..., :, d:] - features[..., :, :-d], (0, d))
    else:
        horizontal = torch.zeros_like(features)
    if d < h:
        vertical = F.pad(features[..., d:, :] - features[..., :-d, :], (0, 0, 0, d))
    else:
        vertical = torch.zeros_like(features)
    return horizontal, vertical


class EdgePredictor(nn.Module):
    """Affinity logits of one distance: (B, F, h, w) features -> (B, 2, h, w) (horizontal, vertical).

    The two directions have separate weights (grouped convolutions, two groups), so the
    horizontal logit only reads horizontal differences and likewise for vertical.
    """

    def __init__(self, *, in_channels: int, channels: int, distance: int):
        super().__init__()
        self.distance = int(distance)
        if self.distance == 1:
            self.conv = nn.Conv2d(in_channels, 2 * channels, 3, padding=1, bias=False)
        else:
            self.conv = nn.Conv2d(2 * in_channels, 2 * channels, 3, padding=1, groups=2, bias=False)
        self.norm = nn.BatchNorm2d(2 * channels)
        self.predictor = nn.Conv2d(2 * channels, 2, 1, groups=2)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.distance == 1:
            x = features
        else:
            x = torch.cat(endpoint_difference(features, self.distance), dim=1)
        return self.predictor(F.relu(self.norm(self.conv(x))))


class AffinityHead(nn.Module):
    """Affinity decoder features and semantic logits -> affinity logits in the grid layout.

    Parameters
    ----------
    in_channels
        Channels of the affinity decoder output.
    num_classes
        K, the number of semantic costs concatenated to it.
    feature_channels
        Width F of the shared affinity features.
    predictor_channels
        Hidden width of each direction of each :class:`EdgePredictor`.
    distances
        ``(d_1, ..., d_m)`` in output pixels.

    Forward
    -------
    ``features`` (B, C, h, w), ``semantic_logits`` (B, K, h, w) -> (B, 2m, h, w) logits;
    a positive logit means "same segment".
    """

    def __init__(self, *, in_channels: int, num_classes: int, feature_channels: int,
                 predictor_channels: int, distances: Sequence[int]):
        super().__init__()
        self.distances = tuple(int(d) for d in distances)
        self.features = separable_conv(in_channels + num_classes, feature_channels, 5)
        self.predictors = nn.ModuleList(
            [EdgePredictor(in_channels=feature_channels, channels=predictor_channels, distance=d)
             for d in self.distances])

    def forward(self, features: torch.Tensor, semantic_logits: torch.Tensor) -> torch.Tensor:
        # Stop-gradient: the affinity loss must not train the semantic branch (section 3.1).
        node_costs = -F.log_softmax(semantic_logits.detach().float(), dim=1).to(features.dtype)
        x = self.features(torch.cat([features, node_costs], dim=1))
        return torch.cat([predictor(x) for predictor in self.predictors], dim=1)
