"""Metrics: exact PQ (:mod:`.pq`), semantic mIoU (:mod:`.semantic`), instance AP
(:mod:`.instances`), all three in one pass (:mod:`.evaluation`; none imports torch), and
the differentiable PQ surrogate (:mod:`.surrogate`, torch)."""
