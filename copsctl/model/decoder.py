"""DeepLabV3+ decoder as in Panoptic-DeepLab: ASPP on the last features, then two top-down
fusions with projected stride-8 and stride-4 backbone features, output at 1/4 resolution.

COPS uses two of these, one for the semantic branch and one for the affinity branch
(section 3.1). The last fusion layer is exposed as :attr:`DeepLabV3PlusDecoder.last_layer`
because fine-tuning trains it and freezes the rest (section 4.2).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ASPP", "DeepLabV3PlusDecoder", "conv_bn_relu", "separable_conv"]


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int = 1, dilation: int = 1) -> nn.Sequential:
    """Conv (no bias, 'same' padding) -> BatchNorm -> ReLU."""
    pad = dilation * (kernel_size - 1) // 2
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=pad, dilation=dilation, bias=False),
        nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


def separable_conv(in_channels: int, out_channels: int, kernel_size: int = 5) -> nn.Sequential:
    """Depthwise kxk conv -> BN -> ReLU -> pointwise 1x1 conv -> BN -> ReLU.

    Panoptic-DeepLab's fusion layer: a 5x5 receptive field at a fraction of a dense 5x5
    convolution's cost, which matters at 1/4 resolution.
    """
    pad = (kernel_size - 1) // 2
    return nn.Sequential(
        nn.Conv2d(in_channels, in_channels, kernel_size, padding=pad, groups=in_channels, bias=False),
        nn.BatchNorm2d(in_channels), nn.ReLU(inplace=True),
        nn.Conv2d(in_channels, out_channels, 1, bias=False),
        nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: a 1x1 branch, one 3x3 branch per rate, image pooling.

    Forward: (B, C_in, h, w) -> (B, channels, h, w).
    """

    def __init__(self, *, in_channels: int, channels: int = 256, rates: Sequence[int] = (6, 12, 18),
                 dropout: float = 0.1):
        super().__init__()
        self.branches = nn.ModuleList([conv_bn_relu(in_channels, channels, 1)] +
                                      [conv_bn_relu(in_channels, channels, 3, dilation=r) for r in rates])
        # No BatchNorm after global pooling: with batch size 1 it would see a single value
        # per channel, and Panoptic-DeepLab does the same.
        self.pooling = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(in_channels, channels, 1),
                                     nn.ReLU(inplace=True))
        self.project = conv_bn_relu(channels * (len(rates) + 2), channels, 1)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [branch(x) for branch in self.branches]
        pooled = self.pooling(x)
        outs.append(pooled.expand(-1, -1, x.shape[2], x.shape[3]))
        return self.dropout(self.project(torch.cat(outs, dim=1)))


class DeepLabV3PlusDecoder(nn.Module):
    """ASPP on ``res5``, then fuse with projected ``res3`` (stride 8) and ``res2`` (stride 4).

    Parameters
    ----------
    in_channels
        Backbone channels ``{"res2": C2, "res3": C3, "res5": C5}``.
    aspp_channels, aspp_rates, aspp_dropout
        See :class:`ASPP`.
    project_channels
        ``(P4, P8)``: 1x1 projection widths of the stride-4 and stride-8 features; narrow,
        so the low-level features refine the ASPP output without dominating it.
    channels
        Width of the two fusion layers and of the output.

    Forward
    -------
    ``features`` dict from :class:`~copsctl.model.backbone.ResNetBackbone` ->
    (B, channels, h4, w4) at the resolution of ``res2``.
    """

    def __init__(self, *, in_channels: dict[str, int], aspp_channels: int = 256,
                 aspp_rates: Sequence[int] = (6, 12, 18), aspp_dropout: float = 0.1,
                 project_channels: Sequence[int] = (32, 64), channels: int = 256):
        super().__init__()
        p4, p8 = project_channels
        self.aspp = ASPP(in_channels=in_channels["res5"], channels=aspp_channels, rates=aspp_rates,
                         dropout=aspp_dropout)
        self.project8 = conv_bn_relu(in_channels["res3"], p8, 1)
        self.fuse8 = separable_conv(aspp_channels + p8, channels, 5)
        self.project4 = conv_bn_relu(in_channels["res2"], p4, 1)
        self.fuse4 = separable_conv(channels + p4, channels, 5)
        self.out_channels = channels

    @property
    def last_layer(self) -> nn.Module:
        """The final fusion layer (trained during fine-tuning)."""
        return self.fuse4

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        x = self.aspp(features["res5"])
        for key, project, fuse in (("res3", self.project8, self.fuse8), ("res2", self.project4, self.fuse4)):
            skip = project(features[key])
            x = F.interpolate(x, size=skip.shape[2:], mode="bilinear", align_corners=False)
            x = fuse(torch.cat([x, skip], dim=1))
        return x
