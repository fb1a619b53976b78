"""The COPS network (section 3.1) and the conversion of its outputs to solver costs.

Data flow::

    images (B, 3, H, W)
      -> ResNetBackbone -> {res2, res3, res5}
      -> semantic decoder -> SemanticHead              -> semantic_logits (B, K, H/4, W/4)
      -> affinity decoder -> AffinityHead(+ detached semantic costs)
                                                       -> affinity_logits (B, 2m, H/4, W/4)

Sign convention of the costs handed to the solver (:mod:`copsctl.solver`), stated here
once for the network side:

* node cost ``c_V(i, k) = -log softmax(semantic_logits)[k]`` at pixel ``i``: the negative
  log-probability of class ``k``, paid for the class chosen (lower is more likely);
* edge cost ``c_E(e) = affinity_logits[e]``: the logit of "both endpoints lie in the same
  segment". The solver pays an edge cost when the edge is cut, so a positive logit is
  attractive (cutting costs) and a negative one repulsive. ``sigmoid(logit)`` is the
  predicted probability of "same segment", which is what the affinity loss trains.

An optional :class:`CostTransform` (learnable positive scales and offsets, identity by
default, frozen except in fine-tuning when the recipe asks) is applied by
:meth:`PanopticModel.costs`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..errors import InputError
from .backbone import ResNetBackbone
from .decoder import DeepLabV3PlusDecoder
from .heads import AffinityHead, SemanticHead

if TYPE_CHECKING:
    from ..config import Recipe

__all__ = ["PanopticModel", "CostTransform", "node_costs_from_logits", "edge_costs_from_logits",
           "freeze_for_finetuning", "finetuning_groups", "part_modules",
           "trainable_parameter_names"]

def node_costs_from_logits(semantic_logits: torch.Tensor) -> torch.Tensor:
    """(B, K, h, w) class logits -> (B, K, h, w) node costs ``-log_softmax`` (float32)."""
    return -F.log_softmax(semantic_logits.float(), dim=1)


def edge_costs_from_logits(affinity_logits: torch.Tensor) -> torch.Tensor:
    """(B, 2m, h, w) affinity logits -> (B, 2m, h, w) edge costs (float32); positive = attractive."""
    return affinity_logits.float()


class CostTransform(nn.Module):
    """Affine maps of the costs: the learned one, then the recipe's calibration.

    Learned (fine-tuning, when the recipe asks): ``node' = s_V * node + b_V[k]`` and, for
    grid channel ``c`` of distance ``d(c)``, ``edge' = s_E[d(c)] * edge + b_E[c]``. The
    scales are stored as logarithms so they stay positive (a negative scale would swap
    attraction and repulsion). A common offset of all classes would not change the AMWC
    solution, hence one node offset per class ``k``; edge scales are per distance (as in
    the authors' code), edge offsets per channel (distance and direction). Identity at
    initialisation; frozen except in fine-tuning.

    Calibration (:class:`~copsctl.config.CalibrationConfig`, fitted by ``copsctl
    calibrate``), applied after the learned map: ``node'' = a * node'`` and ``edge'' =
    e[d] * edge' + o[d]``. It is a fixed buffer set from the recipe
    (:meth:`set_calibration`), not part of the state dict: the recipe that travels with a
    checkpoint, a cost file or an export says which calibration applies.
    """

    def __init__(self, *, num_classes: int, num_edge_channels: int):
        super().__init__()
        m = num_edge_channels // 2
        self.log_node_scale = nn.Parameter(torch.zeros(()))
        self.node_offset = nn.Parameter(torch.zeros(num_classes))
        self.log_edge_scale = nn.Parameter(torch.zeros(m))
        self.edge_offset = nn.Parameter(torch.zeros(num_edge_channels))
        self.register_buffer("calib_node_scale", torch.ones(()), persistent=False)
        self.register_buffer("calib_edge_scale", torch.ones(m), persistent=False)
        self.register_buffer("calib_edge_offset", torch.zeros(m), persistent=False)
        # Trained only in fine-tuning, and only when the recipe asks (freeze_for_finetuning).
        for p in self.parameters():
            p.requires_grad_(False)

    def set_calibration(self, node_scale: float = 1.0, edge_scale: Sequence[float] = (),
                        edge_offset: Sequence[float] = ()) -> None:
        """Set the calibration (empty ``edge_scale`` / ``edge_offset``: 1 / 0 for all distances)."""
        m = self.calib_edge_scale.numel()
        for name, v in (("edge_scale", edge_scale), ("edge_offset", edge_offset)):
            if len(v) not in (0, m):
                raise InputError(f"`{name}` must have one entry per distance ({m}) or none, "
                                 f"got {len(v)}")
        with torch.no_grad():
            self.calib_node_scale.fill_(float(node_scale))
            self.calib_edge_scale.copy_(torch.as_tensor(list(edge_scale) or [1.0] * m))
            self.calib_edge_offset.copy_(torch.as_tensor(list(edge_offset) or [0.0] * m))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Checkpoints before per-distance edge scales stored one scalar.
        key = prefix + "log_edge_scale"
        if key in state_dict and state_dict[key].dim() == 0:
            state_dict[key] = state_dict[key].expand(self.log_edge_scale.shape).clone()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, node_costs: torch.Tensor, edge_costs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        per_channel = lambda v: v.repeat_interleave(2).view(1, -1, 1, 1)  # noqa: E731
        node = node_costs * (self.log_node_scale.exp() * self.calib_node_scale) \
            + (self.node_offset * self.calib_node_scale).view(1, -1, 1, 1)
        edge = edge_costs * per_channel(self.log_edge_scale.exp()) + self.edge_offset.view(1, -1, 1, 1)
        edge = edge * per_channel(self.calib_edge_scale) + per_channel(self.calib_edge_offset)
        return node, edge


class PanopticModel(nn.Module):
    """Backbone, semantic and affinity decoders and heads; outputs at 1/4 input resolution.

    Every argument is explicit so the model works without a recipe;
    :meth:`from_config` is the one translation from a recipe. See
    :class:`~copsctl.config.ModelConfig` for the meaning of each argument.

    Forward
    -------
    ``images``: (B, 3, H, W) float RGB normalised with the ImageNet statistics, as
    :mod:`copsctl.data` delivers them (``copsctl.data.transforms.normalize_image``); H and
    W multiples of 4. Returns a dict with
    ``semantic_logits`` (B, K, H/4, W/4) and ``affinity_logits`` (B, 2m, H/4, W/4) in the
    grid layout of :mod:`copsctl.solver.grid` for ``distances``.
    """

    def __init__(self, *, num_classes: int, distances: Sequence[int], depth: int = 50,
                 pretrained: str | None = "imagenet", output_stride: int = 16,
                 aspp_rates: Sequence[int] = (6, 12, 18), aspp_channels: int = 256,
                 aspp_dropout: float = 0.1, project_channels: Sequence[int] = (32, 64),
                 semantic_decoder_channels: int = 256, semantic_head_channels: int = 256,
                 affinity_decoder_channels: int = 128, affinity_feature_channels: int = 64,
                 affinity_predictor_channels: int = 32):
        super().__init__()
        if num_classes < 1:
            raise InputError(f"`num_classes` must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.distances = tuple(int(d) for d in distances)
        if not self.distances or any(d < 1 for d in self.distances) or len(set(self.distances)) != len(self.distances):
            raise InputError(f"`distances` must be distinct positive integers, got {list(distances)}")
        # ASPP rates are specified at output stride 16; keep their reach in pixels elsewhere.
        rates = tuple(max(1, round(r * 16 / output_stride)) for r in aspp_rates)
        self.backbone = ResNetBackbone(depth=depth, output_stride=output_stride, pretrained=pretrained)
        decoder_args = dict(in_channels=self.backbone.channels, aspp_channels=aspp_channels,
                            aspp_rates=rates, aspp_dropout=aspp_dropout, project_channels=project_channels)
        self.semantic_decoder = DeepLabV3PlusDecoder(channels=semantic_decoder_channels, **decoder_args)
        self.affinity_decoder = DeepLabV3PlusDecoder(channels=affinity_decoder_channels, **decoder_args)
        self.semantic_head = SemanticHead(in_channels=semantic_decoder_channels,
                                          channels=semantic_head_channels, num_classes=num_classes)
        self.affinity_head = AffinityHead(in_channels=affinity_decoder_channels, num_classes=num_classes,
                                          feature_channels=affinity_feature_channels,
                                          predictor_channels=affinity_predictor_channels,
                                          distances=self.distances)
        self.cost_transform = CostTransform(num_classes=num_classes, num_edge_channels=2 * len(self.distances))
        self.batchnorm_frozen = False

    @classmethod
    def from_config(cls, cfg: "Recipe", num_classes: int, *, from_checkpoint: bool = False) -> "PanopticModel":
        """The model of a resolved recipe; ``num_classes`` (K) comes from the dataset.

        ``from_checkpoint=True`` skips ``model.pretrained`` (no download, no warning)
        because the caller loads a whole-model state dict right after.
        """
        m, cal = cfg.model, cfg.calibration
        model = cls(num_classes=num_classes, distances=m.distances, depth=m.depth,
                    pretrained=None if from_checkpoint else m.pretrained,
                    output_stride=m.output_stride, aspp_rates=m.aspp_rates, aspp_channels=m.aspp_channels,
                    aspp_dropout=m.aspp_dropout, project_channels=m.project_channels,
                    semantic_decoder_channels=m.semantic_decoder_channels,
                    semantic_head_channels=m.semantic_head_channels,
                    affinity_decoder_channels=m.affinity_decoder_channels,
                    affinity_feature_channels=m.affinity_feature_channels,
                    affinity_predictor_channels=m.affinity_predictor_channels)
        model.cost_transform.set_calibration(cal.node_scale, cal.edge_scale, cal.edge_offset)
        return model

    def _check_images(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise InputError(f"`images` (shape {tuple(images.shape)}) must have shape (B, 3, H, W)")
        if images.shape[2] % 4 or images.shape[3] % 4:
            raise InputError(f"`images` (shape {tuple(images.shape)}) must have height and width "
                             "divisible by 4 (outputs have 1/4 resolution)")
        if not images.is_floating_point():
            raise InputError(f"`images` must be a normalised float tensor, got {images.dtype}")
        return images

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.backbone(self._check_images(images))
        semantic_logits = self.semantic_head(self.semantic_decoder(features))
        affinity_logits = self.affinity_head(self.affinity_decoder(features), semantic_logits)
        return {"semantic_logits": semantic_logits, "affinity_logits": affinity_logits}

    def costs(self, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Solver costs from :meth:`forward`'s outputs, through :attr:`cost_transform`.

        Returns ``node_costs`` (B, K, h, w) and ``edge_costs`` (B, 2m, h, w), float32, with
        the sign convention of the module docstring; differentiable.
        """
        node = node_costs_from_logits(outputs["semantic_logits"])
        edge = edge_costs_from_logits(outputs["affinity_logits"])
        node, edge = self.cost_transform(node, edge)
        return {"node_costs": node, "edge_costs": edge}

    def train(self, mode: bool = True) -> "PanopticModel":
        super().train(mode)
        if self.batchnorm_frozen:
            # Frozen statistics must stay frozen whatever the training loop toggles.
            for m in self.modules():
                if isinstance(m, _BatchNorm):
                    m.eval()
        return self


def part_modules(model: PanopticModel) -> dict[str, nn.Module]:
    """The named parts that ``finetune.trainable`` selects from (see copsctl.config.FINETUNE_PARTS)."""
    return {
        "backbone": model.backbone,
        "semantic_decoder": model.semantic_decoder,
        "affinity_decoder": model.affinity_decoder,
        "semantic_decoder_last": model.semantic_decoder.last_layer,
        "affinity_decoder_last": model.affinity_decoder.last_layer,
        "semantic_head": model.semantic_head,
        "affinity_head": model.affinity_head,
    }


def freeze_for_finetuning(model: PanopticModel, *, trainable: Sequence[str] = (
        "semantic_head", "affinity_head", "semantic_decoder_last", "affinity_decoder_last"),
        learn_cost_scale: bool = False, learn_cost_offset: bool = False,
        freeze_batchnorm: bool = True) -> list[str]:
    """Freeze everything but ``trainable`` parts (section 4.2); return the trainable names.

    Parameters
    ----------
    model
        The network, modified in place.
    trainable
        Part names among :func:`part_modules`; the default is the paper's choice: the
        semantic and affinity heads (the classifiers) and the last layer of each decoder.
    learn_cost_scale, learn_cost_offset
        Also train the scales, respectively the offsets, of :class:`CostTransform`.
    freeze_batchnorm
        Keep every BatchNorm layer in eval mode (running statistics fixed, also across
        later ``model.train()`` calls) and freeze its affine parameters, even inside
        trainable parts.

    Returns
    -------
    list of str
        Names (as in ``model.named_parameters()``) of the parameters left trainable.
    """
    parts = part_modules(model)
    unknown = [p for p in trainable if p not in parts]
    if unknown:
        raise InputError(f"`trainable` must name parts among {', '.join(parts)}, got {unknown[0]!r}")
    for p in model.parameters():
        p.requires_grad_(False)
    for name in trainable:
        for p in parts[name].parameters():
            p.requires_grad_(True)
    ct = model.cost_transform
    ct.log_node_scale.requires_grad_(learn_cost_scale)
    ct.log_edge_scale.requires_grad_(learn_cost_scale)
    ct.node_offset.requires_grad_(learn_cost_offset)
    ct.edge_offset.requires_grad_(learn_cost_offset)
    model.batchnorm_frozen = bool(freeze_batchnorm)
    if freeze_batchnorm:
        for m in model.modules():
            if isinstance(m, _BatchNorm):
                for p in m.parameters():
                    p.requires_grad_(False)
        model.train(model.training)
    return trainable_parameter_names(model)


def finetuning_groups(model: PanopticModel, trainable: Sequence[str],
                      lr_factors: Sequence[float] = (), cost_lr_factor: float = 1.0
                      ) -> list[tuple[list[nn.Parameter], float]] | None:
    """Optimizer groups of fine-tuning: one per ``trainable`` part at its learning-rate
    factor, then the learned cost transform at ``cost_lr_factor``; only parameters left
    trainable by :func:`freeze_for_finetuning`, each in the first group that names it.

    Returns None when every factor is 1 (one group of all trainable parameters).
    """
    if not lr_factors and cost_lr_factor == 1.0:
        return None
    factors = list(lr_factors) or [1.0] * len(trainable)
    if len(factors) != len(trainable):
        raise InputError(f"`lr_factors` (length {len(factors)}) must have one factor per "
                         f"`trainable` part ({len(trainable)})")
    parts = part_modules(model)
    seen: set[int] = set()
    groups = []

    def claim(params) -> list[nn.Parameter]:
        out = [p for p in params if p.requires_grad and id(p) not in seen]
        seen.update(id(p) for p in out)
        return out

    for name, f in zip(trainable, factors):
        groups.append((claim(parts[name].parameters()), float(f)))
    groups.append((claim(model.cost_transform.parameters()), float(cost_lr_factor)))
    rest = claim(model.parameters())
    if rest:
        groups.append((rest, 1.0))
    return groups


def trainable_parameter_names(model: nn.Module) -> list[str]:
    """Names of the parameters with ``requires_grad``, in ``named_parameters`` order."""
    return [n for n, p in model.named_parameters() if p.requires_grad]
