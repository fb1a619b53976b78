"""copsctl.data: datasets, training targets and loading.

One module per concern (import them directly; this package imports nothing, so the
numpy-only readers can be used without torch):

- :mod:`~copsctl.data.categories`: ``ClassTable`` (contiguous index <-> category id,
  names, thing flags, colours), the Cityscapes 19-class table.
- :mod:`~copsctl.data.datasets`: ``PanopticReader`` and ``open_reader(dataset, root,
  split)`` for Cityscapes, COCO and synthetic data (all in the COCO panoptic format).
- :mod:`~copsctl.data.synthetic`: ``make_synthetic`` (``copsctl make-synthetic``).
- :mod:`~copsctl.data.targets`: ``make_targets``: semantic and affinity targets and
  weights at 1/stride.
- :mod:`~copsctl.data.transforms`: scale / crop / flip, eval resize / pad, normalisation.
- :mod:`~copsctl.data.loader`: the torch ``PanopticDataset`` and ``collate_panoptic``.
- :mod:`~copsctl.data.sampler`: ``TrainSampler``, the resumable training data order.
"""
