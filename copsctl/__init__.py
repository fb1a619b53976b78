"""copsctl: Combinatorial Optimization for Panoptic Segmentation (COPS).

Data flow, one package per stage::

    image -> copsctl.data (datasets, targets) -> copsctl.model (network)
          -> copsctl.costs (network / synthetic costs, HDF5 cost cache)
          -> copsctl.solver (AMWC) -> copsctl.panoptic (COCO panoptic PNG/JSON)
          -> copsctl.metrics (PQ, mIoU, AP)

Training (``copsctl.train``, with the PQ surrogate) closes the loop through the solver.
"""

__version__ = "0.1.0"
