"""Cost calibration: the affine map of the network's costs that maximises exact PQ.

A network trained with cross-entropy predicts node costs (negative log-probabilities)
and edge costs (affinity logits) on scales that are right for the losses, not for the
solver, which weighs one against the other. The authors' code learns a scale of the node
costs and a scale and an offset of the edge costs per distance in front of the solver;
this module fits the same numbers directly, with solver calls only (no gradient): on a
cost file and its ground truth, a coordinate search over

    node' = node_scale * node,   edge' = edge_scale[i] * edge + edge_offset[i]   (distance d_i)

maximises the exact PQ of the solver's panoptic output, post-processed as ``copsctl solve``
does (the search: :mod:`copsctl.costs.calibrate`). The result is the recipe's ``calibration`` section
(:class:`~copsctl.config.CalibrationConfig`); the network applies it after its learned
cost transform (:class:`~copsctl.model.CostTransform`), so it travels with the recipe of
every run, cost file and prediction folder.

"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from .atomic import write_text
from .errors import InputError

__all__ = ["Calibration", "load_calibration", "calibration_for", "CALIBRATION_NAME"]

CALIBRATION_NAME = "calibration.yaml"
"""The file ``copsctl calibrate --run RUN`` writes into the run folder; ``dump-costs``,
``finetune`` and ``predict`` pick it up beside a run's checkpoint."""


_FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass(frozen=True)
class Calibration:
    """One calibration: ``node_scale`` and, per distance, ``edge_scale`` and ``edge_offset``."""

    node_scale: float = 1.0
    edge_scale: tuple[float, ...] = ()
    edge_offset: tuple[float, ...] = ()

    @classmethod
    def identity(cls, m: int) -> "Calibration":
        return cls(1.0, (1.0,) * m, (0.0,) * m)

    @classmethod
    def from_section(cls, section, m: int) -> "Calibration":
        """From a recipe's ``calibration`` section (a CalibrationConfig or its dict), full length ``m``."""
        get = (section.get if isinstance(section, dict) else
               lambda k, d=None: getattr(section, k, d)) if section is not None else (lambda k, d=None: d)
        scale = tuple(float(v) for v in (get("edge_scale", ()) or ())) or (1.0,) * m
        offset = tuple(float(v) for v in (get("edge_offset", ()) or ())) or (0.0,) * m
        node = float(get("node_scale", 1.0) if get("node_scale", 1.0) is not None else 1.0)
        if len(scale) != m or len(offset) != m:
            raise InputError(f"calibration: edge_scale and edge_offset must have {m} entries "
                             f"(one per distance), got {len(scale)} and {len(offset)}")
        return cls(node, scale, offset)

    def check(self, m: int, source: str) -> "Calibration":
        """Self for ``m`` distances, an empty ``edge_scale`` or ``edge_offset`` filled (1
        and 0 for all, as in a recipe), after checking the lengths and values."""
        scale = self.edge_scale or (1.0,) * (len(self.edge_offset) or m)
        cal = Calibration(self.node_scale, scale, self.edge_offset or (0.0,) * len(scale))
        if len(cal.edge_scale) != m or len(cal.edge_offset) != m:
            raise InputError(f"{source}: calibration has {len(cal.edge_scale)} edge scales and "
                             f"{len(cal.edge_offset)} edge offsets, the costs {m} distances")
        nums = (cal.node_scale, *cal.edge_scale, *cal.edge_offset)
        if not all(math.isfinite(v) and abs(v) < _FLOAT32_MAX for v in nums) or \
                cal.node_scale <= 0 or min(cal.edge_scale) <= 0:
            raise InputError(f"{source}: calibration scales must be positive and every value "
                             "finite in float32 (the costs' type)")
        return cal

    def apply(self, node_costs: np.ndarray, edge_maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The calibrated cost maps of one image: (K, h, w) and (2m, h, w), grid layout."""
        scale = np.repeat(np.asarray(self.edge_scale, np.float32), 2)[:, None, None]
        offset = np.repeat(np.asarray(self.edge_offset, np.float32), 2)[:, None, None]
        return (node_costs * np.float32(self.node_scale)).astype(np.float32, copy=False), \
            (edge_maps * scale + offset).astype(np.float32, copy=False)

    def then(self, after: "Calibration") -> "Calibration":
        """The calibration that applies ``self`` first, then ``after``."""
        return Calibration(self.node_scale * after.node_scale,
                           tuple(a * b for a, b in zip(self.edge_scale, after.edge_scale)),
                           tuple(a * o + p for a, o, p in zip(after.edge_scale, self.edge_offset,
                                                              after.edge_offset)))

    def relative_to(self, base: "Calibration") -> "Calibration":
        """``r`` with ``base.then(r) == self``: what to apply to costs already calibrated by ``base``."""
        scale = tuple(s / b for s, b in zip(self.edge_scale, base.edge_scale))
        return Calibration(self.node_scale / base.node_scale, scale,
                           tuple(o - r * bo for o, r, bo in zip(self.edge_offset, scale,
                                                                base.edge_offset)))

    def is_identity(self) -> bool:
        return self.node_scale == 1 and all(v == 1 for v in self.edge_scale) and \
            all(v == 0 for v in self.edge_offset)

    def to_section(self) -> dict:
        """The recipe's ``calibration`` section (plain values, rounded to 6 digits)."""
        r = lambda v: float(f"{v:.6g}")  # noqa: E731
        return {"node_scale": r(self.node_scale), "edge_scale": [r(v) for v in self.edge_scale],
                "edge_offset": [r(v) for v in self.edge_offset]}

    def to_overrides(self) -> list[str]:
        """``--set`` strings that put this calibration into a recipe."""
        s = self.to_section()
        return [f"calibration.node_scale={s['node_scale']}",
                f"calibration.edge_scale={s['edge_scale']}",
                f"calibration.edge_offset={s['edge_offset']}"]

    def save(self, path: str | os.PathLike, comment: str = "") -> None:
        """Write the calibration as a recipe fragment (``calibration:`` section), atomically."""
        head = "".join(f"# {line}\n" for line in comment.splitlines())
        write_text(path, head + yaml.safe_dump({"calibration": self.to_section()},
                                                sort_keys=False, default_flow_style=None))


def calibration_for(weights: str | os.PathLike, calibration: "str | os.PathLike | bool | None"
                    ) -> Path | None:
    """The calibration file to apply with a checkpoint: ``calibration`` when it is a path,
    none when it is False, else ``calibration.yaml`` beside ``weights`` if it exists."""
    if calibration is False:
        return None
    if calibration is not None and calibration is not True:
        return Path(calibration)
    beside = Path(weights).parent / CALIBRATION_NAME
    return beside if beside.is_file() else None


def load_calibration(path: str | os.PathLike) -> Calibration:
    """Read a calibration file written by :meth:`Calibration.save` (or any recipe with a
    ``calibration`` section); lengths are checked where it is applied."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"--calibration {path}: is a folder; pass the calibration file "
                         f"(copsctl calibrate writes {CALIBRATION_NAME})")
    if not path.is_file():
        raise InputError(f"--calibration {path}: file does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise InputError(f"--calibration {path}: not YAML ({exc.__class__.__name__})") from None
    section = data.get("calibration") if isinstance(data, dict) else None
    if not isinstance(section, dict):
        raise InputError(f"--calibration {path}: must hold a `calibration:` mapping")
    unknown = sorted(set(section) - {"node_scale", "edge_scale", "edge_offset"})
    if unknown:
        raise InputError(f"--calibration {path}: unknown key `calibration.{unknown[0]}`")
    try:
        node = float(section.get("node_scale", 1.0))
        scale = tuple(float(v) for v in section.get("edge_scale") or ())
        offset = tuple(float(v) for v in section.get("edge_offset") or ())
    except (TypeError, ValueError):
        raise InputError(f"--calibration {path}: node_scale must be a number, edge_scale and "
                         "edge_offset lists of numbers") from None
    if len(scale) != len(offset) and scale and offset:
        raise InputError(f"--calibration {path}: edge_scale and edge_offset must have the same "
                         "length")
    m = max(len(scale), len(offset))
    return Calibration(node, scale or (1.0,) * m, offset or (0.0,) * m)
