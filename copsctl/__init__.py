"""copsctl: Combinatorial Optimization for Panoptic Segmentation (COPS).

Data flow, one module per stage::

    image -> copsctl.model (network) -> copsctl.costs (HDF5 cost cache)
          -> copsctl.solver (AMWC) -> copsctl.panoptic (COCO panoptic PNG/JSON)
          -> copsctl.metrics (exact PQ, PQ surrogate)
"""

__version__ = "0.1.0"
