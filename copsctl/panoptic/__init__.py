"""copsctl.panoptic: from a solver solution to COCO panoptic PNG/JSON.

One module per step (import them directly; this package imports nothing):

- :mod:`~copsctl.panoptic.format`: the COCO panoptic format (``Category``, ``Segment``,
  ``Annotation``, ``PanopticSet``, id PNGs, ``load_panoptic_json``, and ``PanopticWriter``,
  the one writer of panoptic sets).
- :mod:`~copsctl.panoptic.postprocess`: solver labels -> segments at full size (nearest
  upsampling, small-segment rejection, segment scores).
- :mod:`~copsctl.panoptic.solve`: a cost file through the solver to a prediction folder
  (``solve_costs``: ``copsctl solve``).
- :mod:`~copsctl.panoptic.images`: plain images through network, solver and
  post-processing (``predict_images``: ``copsctl predict``).
"""
