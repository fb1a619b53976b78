"""The COPS network: ResNet backbone, two DeepLabV3+ decoders, semantic and affinity heads,
and the pre-training losses. See :mod:`copsctl.model.panoptic_model` for the cost sign
convention."""

from .losses import PretrainLoss, pretrain_losses, topk_binary_cross_entropy, topk_cross_entropy, total_loss
from .panoptic_model import (CostTransform, PanopticModel, edge_costs_from_logits, freeze_for_finetuning,
                             finetuning_groups, node_costs_from_logits, part_modules, trainable_parameter_names)

__all__ = ["PanopticModel", "CostTransform", "node_costs_from_logits", "edge_costs_from_logits",
           "freeze_for_finetuning", "finetuning_groups", "part_modules", "trainable_parameter_names",
           "PretrainLoss", "pretrain_losses", "topk_cross_entropy", "topk_binary_cross_entropy", "total_loss"]
