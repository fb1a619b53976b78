"""Metrics, none of which imports torch: exact PQ (:mod:`.pq`), semantic mIoU
(:mod:`.semantic`), instance AP (:mod:`.instances`), and all three in one pass
(:mod:`.evaluation`). The differentiable PQ surrogate that fine-tuning minimises lives
beside the training code, in :mod:`copsctl.train.surrogate`."""
