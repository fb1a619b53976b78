"""copsctl.visualize: pictures of what the model sees (matplotlib, PNG, no display needed).

One module per picture (import them directly):

- :mod:`~copsctl.visualize.overlay`: NumPy only: panoptic colour overlays, class-colour
  maps, the argmin of node costs and cut probabilities of edge costs.
- :mod:`~copsctl.visualize.image`: one image's input, ground truth, prediction, semantic
  argmin and per-distance cut probabilities (``copsctl visualize image``).
- :mod:`~copsctl.visualize.curves`: a run's training curves, and for fine-tuning the
  surrogate against the exact PQ (``copsctl visualize run``).
- :mod:`~copsctl.visualize.pipeline`: the pipeline diagram (``copsctl visualize
  pipeline``, committed as ``docs/pipeline.png``, drawn with ``--out docs/pipeline.png``).
"""
