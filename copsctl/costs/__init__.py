"""copsctl.costs: the costs the solver works on, and the HDF5 file that caches them.

- :mod:`~copsctl.costs.cache`: the cost file (``CostWriter``, ``CostFile``, its schema) and
  ``solver_problem`` (grid maps -> solver arrays); numpy and h5py only.
- :mod:`~copsctl.costs.network`: the network's costs (``network_costs``, ``batch_costs``,
  ``dump_costs``: ``copsctl dump-costs``); torch.
- :mod:`~copsctl.costs.synthetic`: synthetic costs without a network (``make_problem``,
  ``write_synthetic_costs``: ``copsctl make-costs``).
- :mod:`~copsctl.costs.calibrate`: the cost calibration that maximises exact PQ
  (``fit_calibration``, ``calibrate_run``: ``copsctl calibrate``); the calibration
  record itself is :mod:`copsctl.calibration`.

The names below are re-exported here; those of ``network``, ``synthetic`` and
``calibrate`` are imported on first use, so ``import copsctl.costs`` stays free of torch and scipy.
"""

from importlib import import_module

from .cache import FORMAT, QUANTIZED, READABLE_VERSIONS, STORAGES, VERSION, CostFile, CostWriter, solver_problem

_LAZY = {
    "batch_costs": "network", "network_costs": "network", "dump_costs": "network",
    "PRESETS": "synthetic", "Preset": "synthetic", "get_preset": "synthetic",
    "SyntheticProblem": "synthetic", "make_problem": "synthetic",
    "synthetic_recipe": "synthetic", "write_synthetic_costs": "synthetic",
    "default_gt_out": "synthetic", "cityscapes_categories": "synthetic",
    "coco_like_categories": "synthetic", "tiny_categories": "synthetic",
    "CalibrationFit": "calibrate", "fit_calibration": "calibrate", "calibrate_run": "calibrate",
}

__all__ = ["FORMAT", "VERSION", "READABLE_VERSIONS", "STORAGES", "QUANTIZED", "CostFile",
           "CostWriter", "solver_problem", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
