"""Pre-training losses: weighted top-k cross-entropy checked against hand computations."""

from __future__ import annotations

import math

import pytest
import torch

from copsctl.config import load_recipe
from copsctl.errors import InputError
from copsctl.model.losses import (PretrainLoss, pretrain_losses, topk_binary_cross_entropy,
                                  topk_cross_entropy, total_loss)

IGNORE = 255


def ce(logits: list[float], k: int) -> float:
    return -logits[k] + math.log(sum(math.exp(v) for v in logits))


def bce(logit: float, t: float) -> float:
    p = 1 / (1 + math.exp(-logit))
    return -(t * math.log(p) + (1 - t) * math.log(1 - p))


# One image, 3 classes, 1x4 pixels; pixel 2 is void.
LOGITS = [[2.0, 0.0, -1.0], [0.5, 0.5, 0.0], [9.0, 0.0, 0.0], [-1.0, 1.0, 3.0]]
TARGET = [0, 2, IGNORE, 0]
WEIGHT = [1.0, 3.0, 5.0, 0.5]


def as_tensors():
    logits = torch.tensor(LOGITS).T.reshape(1, 3, 1, 4)
    return logits, torch.tensor([TARGET]).reshape(1, 1, 4), torch.tensor([WEIGHT]).reshape(1, 1, 4)


def test_topk_cross_entropy_by_hand():
    logits, target, weight = as_tensors()
    per_pixel = [WEIGHT[i] * ce(LOGITS[i], TARGET[i]) for i in (0, 1, 3)]  # void excluded
    # k = int(0.7 * 3) = 2 of the 3 valid pixels, the two largest weighted losses.
    expected = sum(sorted(per_pixel)[-2:]) / 2
    got = topk_cross_entropy(logits, target, weight, top_k=0.7, ignore_index=IGNORE)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # top_k = 1: the plain weighted mean over valid pixels (void not in the denominator).
    got = topk_cross_entropy(logits, target, weight, top_k=1.0, ignore_index=IGNORE)
    assert got.item() == pytest.approx(sum(per_pixel) / 3, rel=1e-6)
    # Tiny fractions still keep one pixel.
    got = topk_cross_entropy(logits, target, weight, top_k=0.01, ignore_index=IGNORE)
    assert got.item() == pytest.approx(max(per_pixel), rel=1e-6)
    # No weights: all ones.
    got = topk_cross_entropy(logits, target, None, top_k=1.0, ignore_index=IGNORE)
    assert got.item() == pytest.approx(sum(ce(LOGITS[i], TARGET[i]) for i in (0, 1, 3)) / 3, rel=1e-6)


def test_topk_gradient_reaches_only_mined_pixels():
    logits, target, weight = as_tensors()
    logits.requires_grad_(True)
    topk_cross_entropy(logits, target, weight, top_k=0.34, ignore_index=IGNORE).backward()  # k = 1
    per_pixel = {i: WEIGHT[i] * ce(LOGITS[i], TARGET[i]) for i in (0, 1, 3)}
    hardest = max(per_pixel, key=per_pixel.get)
    touched = logits.grad.abs().sum(dim=1)[0, 0] > 0
    assert touched.tolist() == [i == hardest for i in range(4)]


def test_topk_per_image_versus_batch():
    # Image 0 has losses {4, 2}, image 1 {1, 1} (constructed through the weights).
    logits = torch.zeros(2, 2, 1, 2)
    target = torch.zeros(2, 1, 2, dtype=torch.long)
    ln2 = math.log(2)
    weight = torch.tensor([[[4.0, 2.0]], [[1.0, 1.0]]]) / ln2
    batch = topk_cross_entropy(logits, target, weight, top_k=0.5)  # top 2 of 4: 4, 2
    assert batch.item() == pytest.approx(3.0, rel=1e-6)
    per_image = topk_cross_entropy(logits, target, weight, top_k=0.5, per_image=True)  # (4 + 1) / 2
    assert per_image.item() == pytest.approx(2.5, rel=1e-6)
    # An image with no valid pixel does not dilute the per-image mean.
    target[1] = IGNORE
    per_image = topk_cross_entropy(logits, target, weight, top_k=0.5, per_image=True)
    assert per_image.item() == pytest.approx(4.0, rel=1e-6)


def test_topk_binary_cross_entropy_by_hand():
    logits = torch.tensor([[[1.0, -2.0, 0.5, 3.0, 0.0]]])
    target = torch.tensor([[[1.0, 1.0, 0.0, 0.0, 1.0]]])
    weight = torch.tensor([[[4.0, 1.0, 0.0, 3.0, 12.0]]])  # position 2 ignored
    per = [weight[0, 0, i].item() * bce(logits[0, 0, i].item(), target[0, 0, i].item()) for i in (0, 1, 3, 4)]
    got = topk_binary_cross_entropy(logits, target, weight, top_k=0.5)  # k = 2 of 4 valid
    assert got.item() == pytest.approx(sum(sorted(per)[-2:]) / 2, rel=1e-6)
    got = topk_binary_cross_entropy(logits, target, weight, top_k=1.0)
    assert got.item() == pytest.approx(sum(per) / 4, rel=1e-6)


def test_nothing_valid_gives_zero_with_a_graph():
    logits = torch.randn(1, 3, 2, 2, requires_grad=True)
    target = torch.full((1, 2, 2), IGNORE)
    loss = topk_cross_entropy(logits, target, torch.ones(1, 2, 2), top_k=0.2)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))
    aff = torch.randn(1, 2, 2, requires_grad=True)
    loss = topk_binary_cross_entropy(aff, torch.ones(1, 2, 2), torch.zeros(1, 2, 2), top_k=0.25, per_image=True)
    assert loss.item() == 0.0
    loss.backward()


def test_shape_mismatches_are_input_errors():
    with pytest.raises(InputError, match="`target`"):
        topk_cross_entropy(torch.zeros(1, 3, 2, 2), torch.zeros(1, 2, 3, dtype=torch.long))
    with pytest.raises(InputError, match="`weight`"):
        topk_cross_entropy(torch.zeros(1, 3, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long), torch.ones(2, 2))
    with pytest.raises(InputError, match="`target`"):
        topk_binary_cross_entropy(torch.zeros(1, 2, 2), torch.zeros(1, 2), torch.ones(1, 2, 2))


def _outputs_and_targets(distances=(1, 2), seed=0):
    g = torch.Generator().manual_seed(seed)
    m = 2 * len(distances)
    outputs = {"semantic_logits": torch.randn(2, 4, 3, 5, generator=g, requires_grad=True),
               "affinity_logits": torch.randn(2, m, 3, 5, generator=g, requires_grad=True)}
    targets = {"semantic": torch.randint(0, 4, (2, 3, 5), generator=g),
               "semantic_weights": torch.rand(2, 3, 5, generator=g) + 0.5,
               "affinity": torch.randint(0, 2, (2, m, 3, 5), generator=g).float(),
               "affinity_weights": torch.randint(0, 3, (2, m, 3, 5), generator=g).float()}
    return outputs, targets


def test_pretrain_loss_combines_per_predictor_losses():
    outputs, targets = _outputs_and_targets()
    loss = PretrainLoss(distances=(1, 2), semantic_weight=2.0, semantic_top_k=0.2, affinity_weight=0.25,
                        affinity_top_k=0.5)
    got = loss(outputs, targets)
    assert sorted(got) == ["affinity_d1", "affinity_d2", "loss_affinity", "loss_semantic"]
    sem = topk_cross_entropy(outputs["semantic_logits"], targets["semantic"], targets["semantic_weights"], top_k=0.2)
    per = [topk_binary_cross_entropy(outputs["affinity_logits"][:, c], targets["affinity"][:, c],
                                     targets["affinity_weights"][:, c], top_k=0.5) for c in range(4)]
    torch.testing.assert_close(got["loss_semantic"], 2.0 * sem)
    torch.testing.assert_close(got["loss_affinity"], 0.25 * sum(per) / 4)
    torch.testing.assert_close(got["affinity_d2"], (per[2] + per[3]) / 2)
    assert not got["affinity_d1"].requires_grad
    torch.testing.assert_close(total_loss(got), got["loss_semantic"] + got["loss_affinity"])
    total_loss(got).backward()
    assert outputs["affinity_logits"].grad.abs().sum() > 0


def test_pretrain_loss_from_recipe_and_bad_targets():
    cfg = load_recipe("synthetic_tiny", ["model.distances=[1, 2]", "loss.affinity_weight=0.5"])
    outputs, targets = _outputs_and_targets()
    got = pretrain_losses(outputs, targets, cfg)
    direct = PretrainLoss(distances=(1, 2), affinity_weight=0.5, affinity_top_k=cfg.loss.affinity_top_k,
                          semantic_top_k=cfg.loss.semantic_top_k)(outputs, targets)
    for key in direct:
        torch.testing.assert_close(got[key], direct[key])
    with pytest.raises(InputError, match="'affinity_weights'"):
        pretrain_losses(outputs, {k: v for k, v in targets.items() if k != "affinity_weights"}, cfg)
    with pytest.raises(InputError, match="6 channels"):
        PretrainLoss(distances=(1, 2, 4))(outputs, targets)
    with pytest.raises(InputError, match="loss_"):
        total_loss({"affinity_d1": torch.zeros(())})


def test_targets_of_copsctl_data_feed_the_loss_and_a_perfect_prediction_scores_low():
    """The loss reads exactly what copsctl.data.targets builds (keys, shapes, layout, ignore).

    A hand-made scene: stuff class 0 on the left, two touching thing instances of class 1
    on the right, void in one corner. Logits that encode the targets with a large margin
    must give near-zero losses; flipped affinities a large one.
    """
    import numpy as np

    from copsctl.data.targets import make_targets

    pan = np.full((32, 32), 1, dtype=np.int64)       # stuff segment 1 (class 0)
    pan[:, 16:24] = 1001                             # thing instance 1001 (class 1)
    pan[:, 24:] = 1002                               # touching instance 1002 (class 1)
    pan[:4, :4] = 0                                  # void
    distances = (1, 2)
    t = make_targets(pan, segment_ids=np.array([1, 1001, 1002]), segment_classes=np.array([0, 1, 1]),
                     segment_iscrowd=np.zeros(3, bool), thing_classes=np.array([False, True]),
                     distances=distances, stride=4)
    targets = {k: torch.from_numpy(getattr(t, k))[None] for k in
               ("semantic", "semantic_weights", "affinity", "affinity_weights")}
    sem = targets["semantic"][0]
    valid_sem = sem != IGNORE
    sem_logits = torch.zeros(1, 2, 8, 8)
    sem_logits[0, 0][valid_sem & (sem == 0)] = 20.0
    sem_logits[0, 1][valid_sem & (sem == 1)] = 20.0
    aff_logits = (targets["affinity"] * 2 - 1) * 20.0
    loss = PretrainLoss(distances=distances)
    good = loss({"semantic_logits": sem_logits, "affinity_logits": aff_logits}, targets)
    assert good["loss_semantic"].item() < 1e-6 and good["loss_affinity"].item() < 1e-6
    bad = loss({"semantic_logits": sem_logits, "affinity_logits": -aff_logits}, targets)
    assert bad["loss_affinity"].item() > 1.0
    # The boundary between the two instances (output column 5 -> 6) is a "cut" target.
    assert targets["affinity"][0, 0, 3, 5] == 0 and targets["affinity_weights"][0, 0, 3, 5] > 0
