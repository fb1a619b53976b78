"""Recipes: every setting of copsctl, declared once, and the one place a recipe is resolved.

Every key is declared below, in code, with its default, its type and a one-line
comment. A recipe file (YAML) only overrides keys and may inherit from another file
with ``_BASE_: other.yaml`` (a path relative to the file that names it). Command-line
overrides are dotted ``key=value`` strings whose value is read by the key's declared
type: a string key takes the text as it is (``data.root=/x/syn #2``, ``data.root=123``),
other keys read it as YAML (``train.lr=5e-4``, ``data.crop_size=[128,128]``). In a file
too, a string key takes its plain (unquoted) scalar as text: ``root: 123`` is the folder
``123``. A
``_BASE_`` name not found beside the file is looked up among the packaged recipes.

Resolution order, later wins: code defaults -> the base chain, outermost base first ->
the recipe file -> ``--set`` overrides. An unknown key or a value of the wrong type is an
:class:`~copsctl.errors.InputError` naming the key and the file (or ``--set``) it came
from. The resolved :class:`Recipe` is immutable; :meth:`Recipe.dump` gives its YAML text
(saved beside every artifact) and :meth:`Recipe.hash` a stable digest used to recognise
finished stages.

Units: areas and crop sizes are in input pixels; ``model.distances`` are in pixels of
the network output, which has 1/4 of the input resolution in each dimension.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.resources
import json
import math
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import yaml

from .atomic import write_text
from .errors import InputError
from .solver import SolverOptions, option_rule

__all__ = [
    "DataConfig", "ModelConfig", "LossConfig", "SolverConfig", "CalibrationConfig", "TrainConfig",
    "FinetuneConfig",
    "Recipe", "RECIPE_SECTIONS", "FINETUNE_PARTS", "load_recipe", "recipe_from_dict", "recipe_from_text",
    "parse_override",
    "save_recipe", "recipe_names", "describe_keys",
]

#: Model parts that fine-tuning can train (see copsctl.model.panoptic_model.freeze_for_finetuning).
FINETUNE_PARTS = ("backbone", "semantic_decoder", "affinity_decoder", "semantic_decoder_last",
                  "affinity_decoder_last", "semantic_head", "affinity_head")


def _key(default, comment: str, *, choices: Sequence | None = None,
         check: Callable[[Any], str | None] | None = None):
    """Declare one recipe key: its default, a one-line comment, and optional value rules.

    ``check`` returns None for a good value and otherwise the rule it breaks, phrased to
    follow "must ...".
    """
    return field(default=default, metadata={"comment": comment, "choices": choices, "check": check})


def _positive(v) -> str | None:
    return None if v > 0 else "be > 0"


def _non_negative(v) -> str | None:
    return None if v >= 0 else "be >= 0"


def _fraction(v) -> str | None:
    return None if 0 < v <= 1 else "lie in (0, 1]"


def _probability(v) -> str | None:
    return None if 0 <= v < 1 else "lie in [0, 1)"


def _seed(v) -> str | None:
    return None if 0 <= v < 2 ** 63 else "lie in [0, 2**63) (torch's seed range)"


def _positive_items(v) -> str | None:
    return None if all(x > 0 for x in v) else "hold positive values only"


def _rates(v) -> str | None:
    return "name at least one rate" if not v else _positive_items(v)


def _perturbations(v) -> str | None:
    # the bound of the solver's integer options (its kernel's int); more is no sane count
    return None if 1 <= v <= 2 ** 31 - 1 else "lie in [1, 2**31 - 1]"


def _finite_items(v) -> str | None:
    return None if all(math.isfinite(x) for x in v) else "hold finite numbers"


def _solver_rule(name: str) -> Callable[[Any], str | None]:
    # the solver's own rule for its option ``name`` (SolverOptions checks it too)
    return lambda v: option_rule(name, v)


def _lr_factors(v) -> str | None:
    return None if all(math.isfinite(x) and x > 0 for x in v) else "hold positive finite numbers"


def _crop(v) -> str | None:
    if any(x <= 0 or x % 4 for x in v):
        return "hold positive multiples of 4 (the network output has 1/4 resolution)"
    return None


def _distances(v) -> str | None:
    if not v:
        return "name at least one distance"
    if any(d < 1 for d in v) or len(set(v)) != len(v):
        return "hold distinct positive integers"
    return None


def _parts(v) -> str | None:
    bad = [p for p in v if p not in FINETUNE_PARTS]
    if bad:
        return f"name parts among {', '.join(FINETUNE_PARTS)} (not {bad[0]!r})"
    return None


@dataclass(frozen=True)
class DataConfig:
    """Which data, and how training samples are drawn from it."""

    dataset: str = _key("synthetic",
        "reader to use: synthetic | cityscapes | coco | coco_panoptic (any COCO panoptic "
        "dataset at the paths data.train_json ... data.val_panoptic)",
        choices=("synthetic", "cityscapes", "coco", "coco_panoptic"))
    root: str = _key("",
        "dataset folder (made by `copsctl make-synthetic` for synthetic); relative to the working directory")
    train_split: str = _key("train", "split used for training (coco: as the folders name it, train2017)")
    val_split: str = _key("val", "split used for validation and cost dumps (coco: val2017)")
    train_json: str = _key("", "coco_panoptic: panoptic JSON of data.train_split (relative to the working directory)")
    train_images: str = _key("", "coco_panoptic: image folder of data.train_split")
    train_panoptic: str = _key("",
        "coco_panoptic: panoptic PNG folder of data.train_split (default: train_json without .json)")
    val_json: str = _key("", "coco_panoptic: panoptic JSON of data.val_split")
    val_images: str = _key("", "coco_panoptic: image folder of data.val_split")
    val_panoptic: str = _key("",
        "coco_panoptic: panoptic PNG folder of data.val_split (default: val_json without .json)")
    crop_size: tuple[int, int] = _key((512, 1024),
        "training crop (height, width) in input pixels", check=_crop)
    min_scale: float = _key(0.5, "smallest random rescale factor before cropping", check=_positive)
    max_scale: float = _key(2.0, "largest random rescale factor before cropping", check=_positive)
    flip: bool = _key(True, "random horizontal flip during training")
    val_size: int = _key(0,
        "if > 0, resize val images so their longer side has this many pixels (COCO: 640); 0 keeps them",
        check=_non_negative)
    num_workers: int = _key(4,
        "DataLoader worker processes (0 loads in the main process)", check=_non_negative)
    thing_area_threshold: int = _key(200,
        "thing segments smaller than this (input pixels) are rejected after solving", check=_non_negative)
    stuff_area_threshold: int = _key(2048,
        "stuff segments smaller than this (input pixels) are rejected after solving", check=_non_negative)
    small_instance_area: int = _key(64 * 64,
        "thing instances below this area (input pixels) get loss.small_instance_weight", check=_non_negative)


@dataclass(frozen=True)
class ModelConfig:
    """The network of section 3.1: ResNet backbone, two DeepLabV3+ decoders, two heads."""

    depth: int = _key(50,
        "ResNet depth: 50 as in the paper; 18 or 34 for CPU-sized runs; 101", choices=(18, 34, 50, 101))
    pretrained: str = _key("imagenet",
        "backbone init: imagenet (torchvision weights), none (random, warns) or a state-dict file")
    output_stride: int = _key(16,
        "backbone output stride; the last stage(s) are dilated to reach it", choices=(8, 16, 32))
    aspp_rates: tuple[int, ...] = _key((6, 12, 18),
        "ASPP dilation rates at output stride 16 (at least one)", check=_rates)
    aspp_channels: int = _key(256, "channels of each ASPP branch and of its projection", check=_positive)
    aspp_dropout: float = _key(0.1, "dropout after the ASPP projection during training", check=_probability)
    project_channels: tuple[int, int] = _key((32, 64),
        "1x1 projections of the stride-4 and stride-8 backbone features", check=_positive_items)
    semantic_decoder_channels: int = _key(256,
        "channels of the semantic decoder's fusion layers", check=_positive)
    semantic_head_channels: int = _key(256,
        "channels of the semantic head before the K-class predictor", check=_positive)
    affinity_decoder_channels: int = _key(128,
        "channels of the affinity decoder's fusion layers", check=_positive)
    affinity_feature_channels: int = _key(64,
        "channels of the affinity features whose endpoint differences feed the predictors", check=_positive)
    affinity_predictor_channels: int = _key(32,
        "hidden channels of each per-distance affinity predictor", check=_positive)
    distances: tuple[int, ...] = _key((1, 4, 16, 32, 64),
        "edge distances in output pixels (1/4 resolution), one predictor each", check=_distances)


@dataclass(frozen=True)
class LossConfig:
    """Pre-training losses: weighted top-k cross-entropy (Panoptic-DeepLab's hard pixel mining)."""

    semantic_weight: float = _key(1.0, "weight of the semantic loss in the total", check=_non_negative)
    semantic_top_k: float = _key(0.2,
        "fraction of the hardest valid pixels averaged in the semantic loss", check=_fraction)
    affinity_weight: float = _key(0.25,
        "weight of the affinity loss (mean over distances and directions) in the total", check=_non_negative)
    affinity_top_k: float = _key(0.25,
        "fraction of the hardest valid edges averaged per affinity predictor", check=_fraction)
    thing_edge_weight: float = _key(4.0,
        "affinity weight of edges with at least one endpoint on a thing class", check=_non_negative)
    small_instance_weight: float = _key(3.0,
        "semantic and affinity weight of pixels of small instances", check=_non_negative)
    top_k_per_image: bool = _key(False,
        "mine hard pixels per image instead of over the whole batch (Panoptic-DeepLab: batch)")


@dataclass(frozen=True)
class SolverConfig:
    """The AMWC solver used for validation, evaluation and fine-tuning (copsctl.solver)."""

    precluster_threshold: float = _key(SolverOptions.precluster_threshold,
        "edges above this cost are contracted first into superpixels")
    precluster_max_size: int = _key(SolverOptions.precluster_max_size,
        "largest superpixel of the precluster phase (1 disables it)",
        check=_solver_rule("precluster_max_size"))
    improve: bool = _key(SolverOptions.improve, "run the local improvement phase after contraction")
    max_improve_rounds: int = _key(SolverOptions.max_improve_rounds,
        "bound on improvement node visits, in multiples of the node count",
        check=_solver_rule("max_improve_rounds"))
    precluster_max_thing_size: int = _key(SolverOptions.precluster_max_thing_size,
        "largest superpixel of a partitionable (thing) class",
        check=_solver_rule("precluster_max_thing_size"))
    precluster_margin: float = _key(SolverOptions.precluster_margin,
        "pre-cluster pixels preferring one class by at least this margin (< 0: earlier rule)")
    superpixel_moves: bool = _key(SolverOptions.superpixel_moves,
        "move whole superpixels before single pixels in the improvement phase")
    piece_moves: bool = _key(SolverOptions.piece_moves,
        "move the pieces of superpixels cut by the pixel moves, then pixels again")
    boundary_moves: int = _key(SolverOptions.boundary_moves,
        "longest Kernighan-Lin sequence across a boundary of two clusters (0: none)",
        check=_solver_rule("boundary_moves"))
    segment_moves: int = _key(SolverOptions.segment_moves,
        "largest connected part of a cluster moved as a whole, last (0: none)",
        check=_solver_rule("segment_moves"))
    instance_splits: bool = _key(SolverOptions.instance_splits,
        "split thing clusters by GAEC on their pixels where the cut gains, late")
    swap_moves: int = _key(SolverOptions.swap_moves,
        "band, in local edges, of the min-cut swaps between touching clusters (0: none)",
        check=_solver_rule("swap_moves"))
    workers: int = _key(0,
        "threads solving the images of a batch concurrently (0: all cores)", check=_non_negative)

    def options(self) -> SolverOptions:
        """The solver's own options object for these settings."""
        return SolverOptions(precluster_threshold=self.precluster_threshold,
                             precluster_max_size=self.precluster_max_size,
                             improve=self.improve, max_improve_rounds=self.max_improve_rounds,
                             precluster_max_thing_size=self.precluster_max_thing_size,
                             precluster_margin=self.precluster_margin,
                             superpixel_moves=self.superpixel_moves,
                             piece_moves=self.piece_moves,
                             boundary_moves=self.boundary_moves,
                             segment_moves=self.segment_moves,
                             instance_splits=self.instance_splits,
                             swap_moves=self.swap_moves)


@dataclass(frozen=True)
class CalibrationConfig:
    """Affine calibration of the network's costs before the solver (``copsctl calibrate``).

    Applied after the network's (learned) cost transform, on every path from the network
    to the solver (validation, ``dump-costs``, fine-tuning): ``node' = node_scale * node``
    and, for the edges of distance ``d_i``, ``edge' = edge_scale[i] * edge + edge_offset[i]``.
    """

    node_scale: float = _key(1.0, "factor on every node cost", check=_positive)
    edge_scale: tuple[float, ...] = _key((),
        "factor on the edge costs, one per model.distances entry (empty: 1 for all)",
        check=_positive_items)
    edge_offset: tuple[float, ...] = _key((),
        "added to the edge costs, one per model.distances entry (empty: 0); positive attracts",
        check=_finite_items)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation of a run (pre-training and fine-tuning alike): Adam, warm-up, poly decay."""

    batch_size: int = _key(12, "images per iteration, summed over all processes", check=_positive)
    iterations: int = _key(250_000, "optimizer steps of the run", check=_positive)
    lr: float = _key(1e-3, "Adam learning rate after warm-up", check=_positive)
    weight_decay: float = _key(0.0,
        "L2 weight decay (Panoptic-DeepLab uses none with Adam)", check=_non_negative)
    warmup_iters: int = _key(1000, "iterations of linear learning-rate warm-up", check=_non_negative)
    warmup_factor: float = _key(0.001, "learning-rate factor at the first warm-up iteration", check=_fraction)
    poly_power: float = _key(0.9,
        "exponent of the poly decay lr * (1 - it / iterations) ** power", check=_non_negative)
    decay_iters: int = _key(0,
        "the poly decay is planned over this many iterations (0: train.iterations); the authors' "
        "fine-tuning plans 20000 and stops at 3000", check=_non_negative)
    amp: bool = _key(True, "mixed precision on CUDA (ignored on CPU)")
    device: str = _key("auto", "auto (CUDA when available), cpu or cuda", choices=("auto", "cpu", "cuda"))
    seed: int = _key(0, "seed of initialisation, data order and augmentation", check=_seed)
    log_every: int = _key(20, "iterations between log lines, JSONL and TensorBoard records", check=_positive)
    checkpoint_every: int = _key(5000,
        "iterations between atomic checkpoints (the last iteration always writes one)", check=_positive)
    validate_every: int = _key(10_000,
        "iterations between validations with exact PQ (0: only at the end)", check=_non_negative)
    val_images: int = _key(0, "validate on the first N val images (0: all)", check=_non_negative)


@dataclass(frozen=True)
class FinetuneConfig:
    """Fully differentiable training through the AMWC solver (section 3.3); optimisation in train.*."""

    loss: str = _key("pq_surrogate",
        "pq_surrogate (COPS) or cross_entropy (control: pre-training losses, same trainable parts)",
        choices=("pq_surrogate", "cross_entropy"))
    lambda_min: float = _key(1.0,
        "smallest interpolation range lambda, drawn uniformly per perturbation", check=_positive)
    lambda_max: float = _key(5000.0, "largest interpolation range lambda", check=_positive)
    num_perturbations: int = _key(5,
        "N: perturbed solves averaged per image in the backward pass (eq. 4)",
        check=_perturbations)
    trainable: tuple[str, ...] = _key(
        ("semantic_head", "affinity_head", "semantic_decoder_last", "affinity_decoder_last"),
        "model parts trained; all others and every batch-norm layer are frozen", check=_parts)
    lr_factors: tuple[float, ...] = _key((),
        "learning-rate factor of each `trainable` part, in its order (empty: 1 each); one Adam "
        "parameter group per part", check=_lr_factors)
    learn_cost_scale: bool = _key(False,
        "learn a positive scale of the node costs and one of the edge costs per distance")
    learn_cost_offset: bool = _key(False,
        "learn per-class node cost offsets and per-channel edge cost offsets")
    cost_lr_factor: float = _key(1.0,
        "learning-rate factor of the learned cost scales and offsets", check=_positive)
    loss_weight: float = _key(1.0,
        "factor on the surrogate loss, so on dL/dz inside the perturbation (authors: 10 on "
        "Cityscapes, 100 on COCO)", check=_positive)
    cost_dropout: float = _key(0.0,
        "dropout probability on the costs during fine-tuning",
        check=lambda v: None if 0 <= v < 1 else "lie in [0, 1)")
    surrogate_gate: str = _key("area",
        "area gate of the PQ surrogate: area (eq. 6 as printed: slope 0.1 per input pixel), "
        "official (the authors' code: slope 0.1 per cost pixel, centred at t/4 for things and "
        "t/16 for stuff) or intersection (a matched segment gated by its overlap only)",
        choices=("area", "official", "intersection"))
    surrogate_form: str = _key("complete",
        "counts of a matched pair: complete (a soft non-TP is FP and FN), paper (eq. 6: "
        "neither) or official (the authors' code: FN 1 - h, no FP)",
        choices=("complete", "paper", "official"))
    surrogate_matching: str = _key("overlapping",
        "pairs the surrogate matches per class: overlapping (those of the max-IoU assignment "
        "that overlap) or all (every pair of the assignment, as the authors' code)",
        choices=("overlapping", "all"))
    surrogate_eps: float = _key(0.0,
        "per-class smoothing (IoU sum + eps) / (denominator + eps) of the surrogate (authors: 0.1)",
        check=_non_negative)
    min_instance_size: int = _key(0,
        "predicted segments smaller than this (cost pixels) are left out of the loss (authors: 3)",
        check=_non_negative)
    gradient_weights: bool = _key(False,
        "weight the solver's gradients as the authors' code: node gradients 0 on void and "
        "crowd pixels, edge gradients times the affinity loss weights")
    keep_best: bool = _key(True,
        "keep best.pt beside checkpoint.pt: the model of the validation with the highest exact PQ")
    backward_reference: str = _key("forward",
        "what perturbed solutions are compared with: forward (Algorithm 1 as printed) or "
        "lifted (the lifted problem solved unperturbed, one more solve per image)",
        choices=("forward", "lifted"))
    two_sided: bool = _key(False,
        "central differences in the backward pass: (s(c + lambda g) - s(c - lambda g)) / "
        "(2 lambda) instead of Algorithm 1's (s(c + lambda g) - s) / lambda; no pull towards "
        "smaller costs, twice the solves (drifted faster at lambda up to 5000: "
        "docs/finetuning.md)")
    cost_norm: float = _key(0.0,
        "rescale each image's costs to this root mean square before the solver (0: off); "
        "stops the interpolation's pull towards ever smaller costs",
        check=_non_negative)
    scale_invariant: bool = _key(False,
        "divide each image's costs by their own root mean square, held constant: the costs "
        "keep their values, the gradient loses its pull towards ever smaller costs (not "
        "with cost_norm)")


@dataclass(frozen=True)
class Recipe:
    """A resolved recipe: one frozen section per concern."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Nested plain dict (sequences as lists), in declaration order."""
        return {name: {k: (list(v) if isinstance(v, tuple) else v)
                       for k, v in dataclasses.asdict(getattr(self, name)).items()}
                for name in _SECTIONS}

    def get(self, dotted: str):
        """The value of a dotted key such as ``"train.lr"``."""
        section, name = _split_key(dotted, "`key`")
        return getattr(getattr(self, section), name)

    def replace(self, overrides: Mapping[str, Any] | Sequence[str]) -> "Recipe":
        """A new recipe with dotted overrides applied: ``{"train.lr": 1e-4}`` or ``["train.lr=1e-4"]``."""
        if isinstance(overrides, Mapping):
            layer = _nest(overrides.items(), source="overrides")
            source = "overrides"
        else:
            layer = _nest((parse_override(o) for o in overrides), source="--set")
            source = "--set"
        merged = _merge(self.to_dict(), _validate_layer(layer, source))
        return _build(merged)

    def overrides(self, section: str) -> list[str]:
        """``--set`` strings (``section.key=value``) that put this recipe's ``section`` into another."""
        if section not in _SECTIONS:
            raise InputError(f"`section` must be one of {list(_SECTIONS)}, got {section!r}")
        values = getattr(self, section)
        return [f"{section}.{f.name}={_yaml_scalar(getattr(values, f.name))}"
                for f in dataclasses.fields(values)]

    def dump(self, comments: bool = True) -> str:
        """YAML text of every key; ``load_recipe`` on this text gives back an equal recipe."""
        lines = []
        for name in _SECTIONS:
            lines.append(f"{name}:")
            section = getattr(self, name)
            for f in dataclasses.fields(section):
                value = _yaml_scalar(getattr(section, f.name))
                comment = f"  # {f.metadata['comment']}" if comments else ""
                lines.append(f"  {f.name}: {value}{comment}")
        return "\n".join(lines) + "\n"

    def hash(self, sections: Sequence[str] | None = None) -> str:
        """Stable 16-hex-digit digest of the resolved values (of ``sections`` only, if given).

        Independent of key order, comments, process and platform: it hashes canonical
        JSON of the values, so equal recipes have equal hashes across runs.
        """
        d = self.to_dict()
        if sections is not None:
            unknown = [s for s in sections if s not in _SECTIONS]
            if unknown:
                raise InputError(f"`sections` must name sections among {list(_SECTIONS)}, got {unknown[0]!r}")
            d = {s: d[s] for s in sections}
        text = json.dumps(d, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


_SECTIONS: dict[str, type] = {f.name: f.default_factory for f in dataclasses.fields(Recipe)}  # type: ignore[misc]
RECIPE_SECTIONS = tuple(_SECTIONS)
"""The section names of a recipe, in declaration order."""


# ---------------------------------------------------------------------------------------
# YAML reading. PyYAML implements YAML 1.1, where "1e-3" (no dot) is a string, "010" is 8
# and "1:30" is 90; recipes are full of such learning rates, so numbers are resolved with
# the YAML 1.2 rules (decimal integers, 0o octal, 0x hex). A key given twice in one
# mapping is an error (PyYAML keeps the last: a repeated section would drop the first).


class _Loader(yaml.SafeLoader):
    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    repeated = key in seen
                    seen.add(key)
                except TypeError:  # an unhashable key: PyYAML's own error follows
                    continue
                if repeated:
                    raise yaml.constructor.ConstructorError(
                        "while reading a mapping", node.start_mark,
                        f"key {key!r} given twice", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)

    def construct_document(self, node):
        # A string key's plain scalar is its text, as --set reads it: `root: 123` is the
        # folder "123" (YAML's int was refused as one). A copy: an alias may share the node.
        if isinstance(node, yaml.MappingNode):
            for section, entries in node.value:
                if not (isinstance(section, yaml.ScalarNode) and section.value in _SECTIONS
                        and isinstance(entries, yaml.MappingNode)):
                    continue
                hints = _hints(section.value)
                for i, (key, value) in enumerate(entries.value):
                    if (isinstance(key, yaml.ScalarNode) and hints.get(key.value) is str
                            and isinstance(value, yaml.ScalarNode) and value.style is None):
                        entries.value[i] = (key, yaml.ScalarNode(
                            "tag:yaml.org,2002:str", value.value, value.start_mark,
                            value.end_mark))
        return super().construct_document(node)

    def construct_yaml_int(self, node):
        text = self.construct_scalar(node)
        sign, digits = (-1, text[1:]) if text[0] == "-" else (1, text.lstrip("+"))
        base = {"0o": 8, "0x": 16}.get(digits[:2], 10)
        try:
            return sign * int(digits[2:] if base != 10 else digits, base)
        except ValueError:  # an explicit !!int tag on something else
            raise yaml.constructor.ConstructorError(
                None, None, f"{text!r} is not an integer", node.start_mark) from None


_INT_RE = re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$")


_FLOAT_RE = re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""", re.X)
_Loader.yaml_implicit_resolvers = {
    k: [r for r in v if r[0] not in ("tag:yaml.org,2002:float", "tag:yaml.org,2002:int")]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver("tag:yaml.org,2002:int", _INT_RE, list("-+0123456789"))
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_RE, list("-+0123456789."))
_Loader.add_constructor("tag:yaml.org,2002:int", _Loader.construct_yaml_int)


def _yaml_load(text: str, source: str):
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise InputError(f"{source}: not valid YAML{where}: {problem}") from None


def _yaml_scalar(value) -> str:
    if isinstance(value, tuple):
        value = list(value)
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    return text[:-4].strip() if text.endswith("\n...") else text.removesuffix("...").strip()


# ---------------------------------------------------------------------------------------
# Validation of one layer (a file, a dict or the --set list) against the declarations.


def _split_key(dotted: str, source: str) -> tuple[str, str]:
    parts = dotted.split(".")
    if len(parts) != 2 or not all(parts):
        raise InputError(f"{source}: key {dotted!r} must have the form section.key, "
                         f"with a section among {list(_SECTIONS)}")
    section, name = parts
    if section not in _SECTIONS or name not in _fields(section):
        raise _unknown_key(dotted, source)
    return section, name


# Spellings of other trainers (detectron2, PyTorch examples) for keys copsctl names otherwise.
_KEY_SYNONYMS = {"learning_rate": "lr", "base_lr": "lr", "max_iter": "iterations",
                 "max_iters": "iterations", "ims_per_batch": "batch_size"}


def _unknown_key(dotted: str, source: str) -> InputError:
    """The error for a key no section declares, with the nearest declared keys (difflib)."""
    import difflib

    section, _, name = dotted.partition(".")
    keys = [f"{sec}.{f}" for sec in _SECTIONS for f in _fields(sec)]
    near = [k for k in keys if k.split(".")[1] == _KEY_SYNONYMS.get(name.lower(), name.lower())]
    if section in _SECTIONS:  # a near name in its own section
        near += [f"{section}.{n}" for n in
                 difflib.get_close_matches(name, list(_fields(section)), n=3, cutoff=0.6)]
    else:  # a misspelt section
        near += difflib.get_close_matches(dotted, keys, n=3, cutoff=0.6)
    near = list(dict.fromkeys(k for k in near if k != dotted))[:3]
    hint = (f"did you mean {' or '.join(repr(k) for k in near)}?" if near else
            "`copsctl recipe --keys` lists them all")
    return InputError(f"{source}: unknown recipe key {dotted!r} ({hint})")


def _fields(section: str) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(_SECTIONS[section])}


_TYPE_WORDS = {bool: ("a bool", "bools"), int: ("an int", "ints"), float: ("a number", "numbers"),
               str: ("a string", "strings")}


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_TYPE_WORDS[args[0]][1]}"
        return f"a list of {len(args)} {_TYPE_WORDS[args[0]][1]}"
    return _TYPE_WORDS[tp][0]


def _coerce(value, tp, dotted: str, source: str):
    """``value`` as type ``tp``, or InputError naming the key and where it came from."""
    def wrong(rule: str | None = None):
        shown = repr(value) if not isinstance(value, str) else f"'{value}'"
        return InputError(f"{source}: `{dotted}` must be {rule or _type_name(tp)}, got {shown} "
                          f"({type(value).__name__})")

    origin = typing.get_origin(tp)
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise wrong()
        item_tp = args[0]
        if not (len(args) == 2 and args[1] is Ellipsis) and len(value) != len(args):
            raise wrong()
        return tuple(_coerce_scalar(v, item_tp, wrong) for v in value)
    return _coerce_scalar(value, tp, wrong)


def _coerce_scalar(value, tp, wrong):
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            # inf passes range rules such as "> 0"; no recipe number means inf or NaN.
            if not math.isfinite(value):
                raise wrong("a finite number")
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    raise wrong()


# Counts and sizes (iterations, batch size, channels, pixels) beyond int32 are no sane
# setting, and some would reach a library call that takes a C integer.
_COUNT_MAX = 2 ** 31 - 1


def _is_int_key(tp) -> bool:
    return tp is int or (typing.get_origin(tp) is tuple and typing.get_args(tp)[0] is int)


def _hints(section: str) -> dict[str, Any]:
    return typing.get_type_hints(_SECTIONS[section])


def _validate_layer(layer, source: str) -> dict[str, dict[str, Any]]:
    """Check one nested layer's keys, types and value rules; return it with coerced values."""
    if layer is None:
        return {}
    if not isinstance(layer, Mapping):
        raise InputError(f"{source}: a recipe must be a mapping of sections, got {type(layer).__name__}")
    out: dict[str, dict[str, Any]] = {}
    for section, entries in layer.items():
        if section not in _SECTIONS:
            import difflib

            near = difflib.get_close_matches(str(section), list(_SECTIONS), n=1, cutoff=0.6)
            raise InputError(f"{source}: unknown recipe section {section!r} ("
                             + (f"did you mean {near[0]!r}? " if near else "")
                             + f"sections: {', '.join(_SECTIONS)})")
        if entries is None:
            continue
        if not isinstance(entries, Mapping):
            raise InputError(f"{source}: section `{section}` must be a mapping of keys, "
                             f"got {type(entries).__name__}")
        fields, hints = _fields(section), _hints(section)
        for name, value in entries.items():
            dotted = f"{section}.{name}"
            if name not in fields:
                raise _unknown_key(dotted, source)
            value = _coerce(value, hints[name], dotted, source)
            meta = fields[name].metadata
            if meta["choices"] is not None and value not in meta["choices"]:
                raise InputError(f"{source}: `{dotted}` must be one of "
                                 f"{', '.join(map(str, meta['choices']))}; got {value!r}")
            if meta["check"] is not None:
                broken = meta["check"](value)
                if broken:
                    raise InputError(f"{source}: `{dotted}` must {broken}; got {_yaml_scalar(value)}")
            if meta["check"] is not _seed and _is_int_key(hints[name]):
                items = value if isinstance(value, tuple) else (value,)
                big = next((x for x in items if abs(x) > _COUNT_MAX), None)
                if big is not None:
                    raise InputError(f"{source}: `{dotted}` must be <= 2147483647 (2**31 - 1: "
                                     f"no count or size of a recipe is larger); got {big}")
            out.setdefault(section, {})[name] = value
    return out


def _check_consistency(recipe: Recipe, source: str) -> None:
    """Rules between keys, checked on the resolved recipe."""
    if recipe.data.min_scale > recipe.data.max_scale:
        raise InputError(f"{source}: `data.min_scale` ({recipe.data.min_scale}) must not exceed "
                         f"`data.max_scale` ({recipe.data.max_scale})")
    if recipe.train.decay_iters and recipe.train.decay_iters < recipe.train.iterations:
        raise InputError(f"{source}: `train.decay_iters` ({recipe.train.decay_iters}) must be 0 "
                         f"or at least `train.iterations` ({recipe.train.iterations})")
    if recipe.finetune.lambda_min > recipe.finetune.lambda_max:
        raise InputError(f"{source}: `finetune.lambda_min` ({recipe.finetune.lambda_min}) must not "
                         f"exceed `finetune.lambda_max` ({recipe.finetune.lambda_max})")
    if recipe.train.warmup_iters > recipe.train.iterations:
        raise InputError(f"{source}: `train.warmup_iters` ({recipe.train.warmup_iters}) must not "
                         f"exceed `train.iterations` ({recipe.train.iterations})")
    f, cal, m = recipe.finetune, recipe.calibration, len(recipe.model.distances)
    if f.lr_factors and len(f.lr_factors) != len(f.trainable):
        raise InputError(f"{source}: `finetune.lr_factors` must have one factor per "
                         f"`finetune.trainable` part ({len(f.trainable)}), got {len(f.lr_factors)}")
    for name in ("edge_scale", "edge_offset"):
        n = len(getattr(cal, name))
        if n and n != m:
            raise InputError(f"{source}: `calibration.{name}` must have one entry per "
                             f"`model.distances` entry ({m}) or none, got {n}")
    if recipe.finetune.two_sided and recipe.finetune.backward_reference != "forward":
        raise InputError(f"{source}: `finetune.two_sided` compares the two "
                         "perturbed solutions with each other; it takes no "
                         "`finetune.backward_reference` other than forward")
    if recipe.finetune.cost_norm > 0 and recipe.finetune.scale_invariant:
        raise InputError(f"{source}: `finetune.cost_norm` ({recipe.finetune.cost_norm}) and "
                         "`finetune.scale_invariant` are two ways to scale the costs; set one "
                         "(cost_norm 0 or scale_invariant false)")
    if len(set(recipe.finetune.trainable)) != len(recipe.finetune.trainable):
        raise InputError(f"{source}: `finetune.trainable` must not repeat a part, "
                         f"got {list(recipe.finetune.trainable)}")


def _merge(base: dict, layer: dict) -> dict:
    out = {s: dict(v) for s, v in base.items()}
    for section, entries in layer.items():
        out.setdefault(section, {}).update(entries)
    return out


def _build(merged: Mapping[str, Mapping[str, Any]], source: str = "recipe") -> Recipe:
    sections = {name: cls(**{k: (tuple(v) if isinstance(v, list) else v)
                             for k, v in merged.get(name, {}).items()})
                for name, cls in _SECTIONS.items()}
    recipe = Recipe(**sections)
    _check_consistency(recipe, source)
    return recipe


def _nest(pairs, source: str) -> dict[str, dict[str, Any]]:
    nested: dict[str, dict[str, Any]] = {}
    for dotted, value in pairs:
        section, name = _split_key(dotted, source)
        nested.setdefault(section, {})[name] = value
    return nested


# ---------------------------------------------------------------------------------------
# Public entry points.


def parse_override(text: str) -> tuple[str, Any]:
    """``"section.key=value"`` -> ``("section.key", value)``, the value read by the key's type.

    A string key takes the text as it is (``data.root=/x/syn #2``, ``data.root=123`` and
    ``data.root=null`` are those strings; one pair of enclosing quotes is removed). Other
    keys read it as YAML (numbers, bools, ``[128, 128]``), where a ``#`` is refused
    rather than silently cutting the value short as a YAML comment.
    """
    if not isinstance(text, str) or "=" not in text:
        raise InputError(f"--set: override {text!r} must have the form section.key=value")
    dotted, raw = text.split("=", 1)
    dotted = dotted.strip()
    section, name = _split_key(dotted, "--set")
    if _hints(section)[name] is str:
        value = raw.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        return dotted, value
    if "#" in raw:
        raise InputError(f"--set {dotted}: value {raw.strip()!r} must not contain '#' (YAML would "
                         "read the rest as a comment)")
    value = _yaml_load(raw, f"--set {dotted}") if raw.strip() else ""
    return dotted, value


def _packaged_recipes():
    """The folder of shipped recipes: package ``copsctl.recipes`` once installed, else the
    repository's ``recipes/`` beside the ``copsctl`` source folder (a plain checkout)."""
    try:
        return importlib.resources.files("copsctl.recipes")
    except ModuleNotFoundError:
        return Path(__file__).resolve().parent.parent / "recipes"


def recipe_names() -> list[str]:
    """Names of the shipped recipes (without ``.yaml``), loadable by name."""
    return sorted(p.name[:-5] for p in _packaged_recipes().iterdir() if p.name.endswith(".yaml"))


def _locate(recipe: str | os.PathLike) -> Path:
    """A recipe file by path, or by name among the packaged recipes."""
    path = Path(recipe)
    if path.is_file():
        return path
    name = str(recipe)
    if os.sep not in name and "/" not in name:
        stem = name[:-5] if name.endswith(".yaml") else name
        packaged = _packaged_recipes() / f"{stem}.yaml"
        if packaged.is_file():
            return Path(str(packaged))
    if path.exists():
        raise InputError(f"recipe {str(recipe)!r} is not a file")
    raise InputError(f"recipe {str(recipe)!r} not found: give a YAML file or one of "
                     f"{', '.join(recipe_names())}")


def _read_chain(path: Path, seen: tuple[Path, ...] = ()) -> list[tuple[str, dict]]:
    """Validated layers of ``path`` and its bases, outermost base first."""
    resolved = path.resolve()
    if resolved in seen:
        chain = " -> ".join(str(p) for p in seen + (resolved,))
        raise InputError(f"{path}: `_BASE_` inheritance forms a cycle: {chain}")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read recipe: {exc.__class__.__name__}: {exc}") from None
    raw = _yaml_load(text, str(path))
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise InputError(f"{path}: a recipe must be a mapping of sections, got {type(raw).__name__}")
    raw = dict(raw)
    layers: list[tuple[str, dict]] = []
    base = raw.pop("_BASE_", None)
    if base is not None:
        if not isinstance(base, str) or not base:
            raise InputError(f"{path}: `_BASE_` must be a file name, got {base!r}")
        base_path = Path(base) if Path(base).is_absolute() else path.parent / base
        if not base_path.is_file() and "/" not in base and os.sep not in base:
            # A bare name not beside the file: a packaged recipe (a user's recipe may
            # inherit from synthetic_tiny.yaml without copying it).
            # The packaged name with or without .yaml, as --recipe takes it.
            packaged = _packaged_recipes() / (base if base.endswith(".yaml") else f"{base}.yaml")
            if packaged.is_file():
                base_path = Path(str(packaged))
        if not base_path.is_file():
            raise InputError(f"{path}: `_BASE_` file {base!r} not found (looked at {base_path} "
                             "and among the packaged recipes)")
        layers.extend(_read_chain(base_path, seen + (resolved,)))
    layers.append((str(path), _validate_layer(raw, str(path))))
    return layers


def recipe_from_dict(mapping: Mapping[str, Mapping[str, Any]] | None, source: str = "recipe") -> Recipe:
    """Resolve a nested ``{section: {key: value}}`` mapping over the code defaults."""
    layer = _validate_layer(mapping, source)
    return _build(_merge(Recipe().to_dict(), layer), source)


def recipe_from_text(text: str | None, source: str,
                     legacy_sections: Sequence[str] = ()) -> Recipe | None:
    """The recipe stored as YAML text with an artifact (:meth:`Recipe.dump`), or None.

    How a checkpoint's and a cost file's recipe are read. ``source`` names the text in
    messages; ``legacy_sections`` are top-level entries that older files kept beside the
    recipe sections, skipped. Empty text (no recipe stored) gives None; bad YAML, an
    unknown key or a wrong value is an :class:`~copsctl.errors.InputError` naming
    ``source``.
    """
    if not text or not text.strip():
        return None
    mapping = _yaml_load(text, source)
    if not isinstance(mapping, Mapping):
        raise InputError(f"{source}: a recipe must be a mapping of sections, got "
                         f"{type(mapping).__name__}")
    return recipe_from_dict({k: v for k, v in mapping.items() if k not in legacy_sections},
                            source)


def load_recipe(recipe: str | os.PathLike | None = None, overrides: Sequence[str] = ()) -> Recipe:
    """Resolve a recipe: code defaults, its ``_BASE_`` chain, the file, then ``overrides``.

    Parameters
    ----------
    recipe
        A YAML file path, or the name of a packaged recipe (``"synthetic_pretrain"``,
        with or without ``.yaml``); None gives the code defaults.
    overrides
        ``"section.key=value"`` strings, applied last (:func:`parse_override`).

    Raises
    ------
    InputError
        Unknown recipe, unreadable file, bad YAML, unknown key, wrong type or broken value
        rule, naming the key and the file (or ``--set``).
    """
    merged = Recipe().to_dict()
    source = "recipe"
    if recipe is not None:
        path = _locate(recipe)
        source = str(path)
        for layer_source, layer in _read_chain(path):
            merged = _merge(merged, layer)
    if overrides:
        if isinstance(overrides, str):
            overrides = [overrides]
        layer = _validate_layer(_nest((parse_override(o) for o in overrides), "--set"), "--set")
        merged = _merge(merged, layer)
        source = f"{source} with --set" if recipe is not None else "--set"
    return _build(merged, source)


def save_recipe(recipe: Recipe, path: str | os.PathLike, note: str = "") -> None:
    """Write the resolved recipe's YAML (with comments) atomically to ``path``; ``note``
    is one more comment line at the top."""
    head = f"# resolved copsctl recipe, hash {recipe.hash()}\n" + (f"# {note}\n" if note else "")
    write_text(path, head + recipe.dump())


def describe_keys() -> list[tuple[str, Any, str, str]]:
    """``(dotted key, default, type name, comment)`` for every declared key, in order."""
    rows = []
    for section, cls in _SECTIONS.items():
        hints = _hints(section)
        for f in dataclasses.fields(cls):
            rows.append((f"{section}.{f.name}", f.default, _type_name(hints[f.name]), f.metadata["comment"]))
    return rows
