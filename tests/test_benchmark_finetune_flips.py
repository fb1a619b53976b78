"""The flip classification of copsctl.benchmarks.finetune_flips."""

from __future__ import annotations

import numpy as np

from copsctl.benchmarks.finetune_flips import _flip_counts


def test_flips_are_classified_against_the_ground_truth():
    # 5 pixels, 3 classes; gradient rows +1/λ at the perturbed class, -1/λ at the reference.
    ref = np.array([0, 1, 2, 0, 1])
    gt = np.array([0, 2, 1, 255, 1])
    grad = np.zeros((5, 3))
    moves = {0: 1, 1: 2, 2: 0, 3: 2}   # pixel -> perturbed class; pixel 4 unchanged
    for v, new in moves.items():
        grad[v, new] += 0.5
        grad[v, ref[v]] -= 0.5
    to_gt, away, other = _flip_counts([(grad, None)], [ref], [gt])
    # pixel 0: right -> wrong (away); 1: wrong -> gt (to gt); 2: wrong -> wrong (other);
    # 3: void (other); 4: unchanged.
    assert (to_gt, away, other) == (1, 1, 2)
