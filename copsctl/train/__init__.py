"""copsctl.train: pre-training, fine-tuning through the solver, and what they share.

Import the modules directly (this package imports nothing, so ``copsctl.train`` stays
cheap to import):

Shared pieces
    - :mod:`~copsctl.train.schedule`: ``WarmupPolySchedule``, warm-up then poly decay,
      a pure function of the iteration.
    - :mod:`~copsctl.train.loop`: ``TrainLoop``, the generic loop around a step function
      (AMP, log windows, checkpoint and validation cadence, clean stop on Ctrl-C).
    - :mod:`~copsctl.train.checkpoint`: atomic checkpoints, random state, ``load_model``.
    - :mod:`~copsctl.train.logging`: ``MetricsLogger``, ``metrics.jsonl`` and TensorBoard.
    - :mod:`~copsctl.train.distributed`: torchrun process group and devices.
    - :mod:`~copsctl.train.data`: recipe -> datasets and resumable loaders.
    - :mod:`~copsctl.train.validate`: exact PQ through the AMWC solver during training.

Runs
    - :mod:`~copsctl.train.pretrain`: ``copsctl pretrain`` (cross-entropy losses).
    - :mod:`~copsctl.train.amwc_layer`, :mod:`~copsctl.train.surrogate` and
      :mod:`~copsctl.train.finetune`: ``copsctl finetune`` (the PQ surrogate through
      the solver).
"""
