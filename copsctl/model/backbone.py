"""ResNet backbone at output stride 8, 16 or 32, returning stride-4, -8 and final features.

The paper uses torchvision's ResNet-50 with ImageNet weights at output stride 16: the
last stage keeps stride 1 and dilates its convolutions instead (section 3.1, as in
Panoptic-DeepLab). Depths 18 and 34 exist for CPU-sized runs; torchvision refuses
dilation for their ``BasicBlock``, so :func:`_dilate_stage` does it for every depth by
editing the stage's convolutions in place, exactly as torchvision's
``replace_stride_with_dilation`` builds them for ``Bottleneck``.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
import torchvision
from torch import nn

from ..errors import InputError

__all__ = ["ResNetBackbone", "load_imagenet_state_dict"]

_DEPTHS = {18: torchvision.models.resnet18, 34: torchvision.models.resnet34,
           50: torchvision.models.resnet50, 101: torchvision.models.resnet101}
_WEIGHTS = {18: "ResNet18_Weights", 34: "ResNet34_Weights", 50: "ResNet50_Weights",
            101: "ResNet101_Weights"}


def _dilate_stage(stage: nn.Sequential, dilation: int, previous_dilation: int) -> None:
    """Turn a stride-2 ResNet stage into a stride-1 stage with dilated 3x3 convolutions.

    The first block keeps ``previous_dilation`` (its input still has the previous
    stage's sampling), the others use ``dilation``; this matches torchvision's layout so
    ImageNet weights load unchanged.
    """
    for i, block in enumerate(stage):
        d = previous_dilation if i == 0 else dilation
        for conv in block.modules():
            if not isinstance(conv, nn.Conv2d):
                continue
            conv.stride = (1, 1)
            if conv.kernel_size == (3, 3):
                conv.dilation = (d, d)
                conv.padding = (d, d)


def load_imagenet_state_dict(depth: int, pretrained: str) -> dict[str, torch.Tensor] | None:
    """The backbone weights named by ``model.pretrained``, without the classifier.

    Parameters
    ----------
    depth
        ResNet depth, one of 18, 34, 50, 101.
    pretrained
        ``"imagenet"`` (torchvision's IMAGENET1K_V1 weights, downloaded or from the torch
        hub cache), ``"none"`` (returns None) or a path to a ResNet state dict as saved by
        ``torch.save(model.state_dict())`` (optionally nested under ``"state_dict"`` or
        ``"model"``).
    """
    if pretrained == "none":
        return None
    if pretrained == "imagenet":
        weights = getattr(torchvision.models, _WEIGHTS[depth]).IMAGENET1K_V1
        try:
            state = weights.get_state_dict(progress=False)
        except Exception as exc:  # offline, proxy, corrupt cache: all mean "use a local file"
            raise InputError(
                f"`model.pretrained` = imagenet: cannot fetch torchvision's ResNet-{depth} ImageNet "
                f"weights ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                f"download {weights.url} elsewhere and pass the file: "
                f"--set model.pretrained=/path/to/{os.path.basename(weights.url)}") from None
    else:
        path = Path(pretrained)
        if not path.is_file():
            raise InputError(f"`model.pretrained` = {pretrained!r}: not imagenet, none or an existing file")
        from ..atomic import damaged_zip_member

        damaged = damaged_zip_member(path)
        if damaged is not None:
            raise InputError(f"{path}: cannot read a state dict (damaged: {damaged}); "
                             "`model.pretrained` must name a torch.save'd ResNet state dict")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise InputError(f"{path}: cannot read a state dict ({type(exc).__name__}); "
                             "`model.pretrained` must name a torch.save'd ResNet state dict") from None
        for nest in ("state_dict", "model"):
            if isinstance(state, dict) and isinstance(state.get(nest), dict):
                state = state[nest]
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise InputError(f"{path}: `model.pretrained` must hold a dict of tensors (a state dict)")
    return {k: v for k, v in state.items() if not k.startswith("fc.")}


class ResNetBackbone(nn.Module):
    """torchvision ResNet without pooling and classifier, at a chosen output stride.

    Parameters
    ----------
    depth
        18, 34, 50 or 101.
    output_stride
        8, 16 or 32; stages beyond it are dilated instead of strided.
    pretrained
        See :func:`load_imagenet_state_dict`; ``"none"`` warns that the backbone starts
        from random weights. None initialises randomly without a warning, for a caller
        that loads a whole-model checkpoint next.

    Forward
    -------
    ``images`` (B, 3, H, W) normalised float tensor -> dict with ``"res2"`` (B, C2, H/4, W/4),
    ``"res3"`` (B, C3, H/8, W/8) and ``"res5"`` (B, C5, H/s, W/s) for output stride s.
    Channel counts are in :attr:`channels`.
    """

    def __init__(self, *, depth: int = 50, output_stride: int = 16, pretrained: str | None = "imagenet"):
        super().__init__()
        if depth not in _DEPTHS:
            raise InputError(f"`depth` must be one of {sorted(_DEPTHS)}, got {depth}")
        if output_stride not in (8, 16, 32):
            raise InputError(f"`output_stride` must be 8, 16 or 32, got {output_stride}")
        net = _DEPTHS[depth](weights=None)
        state = None if pretrained is None else load_imagenet_state_dict(depth, pretrained)
        if state is None and pretrained is not None:
            warnings.warn(f"ResNet-{depth} backbone starts from random weights (model.pretrained = none)",
                          stacklevel=2)
        elif state is not None:
            missing, unexpected = net.load_state_dict(state, strict=False)
            missing = [k for k in missing if not k.startswith("fc.")]
            if missing or unexpected:
                what = f"missing {missing[0]!r}" if missing else f"unexpected {unexpected[0]!r}"
                raise InputError(f"`model.pretrained` = {pretrained!r}: not a ResNet-{depth} state dict "
                                 f"({what}; {len(missing)} missing, {len(unexpected)} unexpected keys)")
        # Dilating after loading keeps the weights: only strides, paddings and dilations change.
        if output_stride <= 16:
            _dilate_stage(net.layer4, dilation=2 if output_stride == 16 else 4,
                          previous_dilation=1 if output_stride == 16 else 2)
        if output_stride == 8:
            _dilate_stage(net.layer3, dilation=2, previous_dilation=1)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        expansion = 4 if depth >= 50 else 1
        self.channels = {"res2": 64 * expansion, "res3": 128 * expansion, "res5": 512 * expansion}
        self.output_stride = output_stride

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        res2 = self.layer1(self.stem(images))
        res3 = self.layer2(res2)
        res5 = self.layer4(self.layer3(res3))
        return {"res2": res2, "res3": res3, "res5": res5}
