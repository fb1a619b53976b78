"""Augmentation geometry, normalisation, the torch dataset, collate and the sampler."""

import numpy as np
import pytest
import torch

from copsctl.data.datasets import open_reader
from copsctl.data.loader import PanopticDataset, collate_panoptic
from copsctl.data.sampler import TrainSampler
from copsctl.data.transforms import (IMAGENET_MEAN, IMAGENET_STD, PAD_COLOR, Placement,
                                     apply_placement, eval_placement, normalize_image,
                                     sample_placement)
from copsctl.errors import InputError
from panoptic_fixtures import write_coco


def _pair(h=6, w=8):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    pan = (np.arange(h * w).reshape(h, w) + 1).astype(np.int64)
    return image, pan


def test_identity_placement_returns_the_input():
    image, pan = _pair()
    img2, pan2 = apply_placement(image, pan, Placement((6, 8), (0, 0), (6, 8)))
    assert (img2 == image).all() and (pan2 == pan).all()


def test_crop_pad_and_flip_are_one_mapping():
    image, pan = _pair()
    # Crop rows 1..4, columns 2..7 of the unscaled image.
    img2, pan2 = apply_placement(image, pan, Placement((6, 8), (1, 2), (4, 6)))
    assert (pan2 == pan[1:5, 2:8]).all() and (img2 == image[1:5, 2:8]).all()
    # Canvas larger than the image, image placed at (2, 1): the rest is void / mean colour.
    p = Placement((6, 8), (-2, -1), (10, 12), flip=True)
    img3, pan3 = apply_placement(image, pan, p)
    assert p.valid_box() == (2, 8, 1, 9)
    unflipped = pan3[:, ::-1]
    assert (unflipped[2:8, 1:9] == pan).all()
    assert (unflipped[:2] == 0).all() and (unflipped[:, 9:] == 0).all()
    assert (img3[:, ::-1][0, 0] == PAD_COLOR).all()


def test_upscaling_labels_is_nearest_and_image_is_bilinear():
    image, pan = _pair(4, 4)
    img2, pan2 = apply_placement(image, pan, Placement((8, 8), (0, 0), (8, 8)))
    assert (pan2 == pan.repeat(2, 0).repeat(2, 1)).all()
    assert img2.shape == (8, 8, 3)
    # Bilinear values stay within the range of their neighbours.
    assert img2.min() >= image.min() and img2.max() <= image.max()
    # A crop of the scaled image equals the same crop of the full scaled image.
    img3, pan3 = apply_placement(image, pan, Placement((8, 8), (3, 2), (4, 5)))
    assert (pan3 == pan2[3:7, 2:7]).all()
    assert np.abs(img3.astype(int) - img2[3:7, 2:7].astype(int)).max() <= 1


def test_sample_placement_ranges_and_reproducibility():
    for seed in range(20):
        p = sample_placement(np.random.default_rng(seed), image_size=(100, 200),
                             crop_size=(64, 64), scale_range=(0.5, 2.0))
        sh, sw = p.scaled_size
        assert 50 <= sh <= 200 and 100 <= sw <= 400
        assert min(0, sh - 64) <= p.offset[0] <= max(0, sh - 64)
        assert 0 <= p.offset[1] <= sw - 64
        again = sample_placement(np.random.default_rng(seed), image_size=(100, 200),
                                 crop_size=(64, 64), scale_range=(0.5, 2.0))
        assert again == p
    # Image smaller than the crop: it is placed inside.
    p = sample_placement(np.random.default_rng(1), image_size=(10, 10), crop_size=(32, 32),
                         scale_range=(1.0, 1.0), flip=False)
    assert -22 <= p.offset[0] <= 0 and not p.flip
    with pytest.raises(InputError, match="`scale_range`"):
        sample_placement(np.random.default_rng(0), image_size=(10, 10), crop_size=(8, 8),
                         scale_range=(2.0, 1.0))
    with pytest.raises(InputError, match="`crop_size`"):
        sample_placement(np.random.default_rng(0), image_size=(10, 10), crop_size=(0, 8))


def test_eval_placement_pads_or_resizes():
    p = eval_placement(image_size=(1024, 2048))
    assert p.out_size == (1024, 2048) and p.scaled_size == (1024, 2048)
    p = eval_placement(image_size=(20, 30), pad_multiple=32)
    assert p.out_size == (32, 32) and p.valid_box() == (0, 20, 0, 30)
    p = eval_placement(image_size=(480, 600), longer_side=640, pad_multiple=32)
    assert p.scaled_size == (512, 640) and p.out_size == (512, 640)


def test_normalize_image():
    img = np.zeros((2, 3, 3), dtype=np.uint8)
    img[..., 0] = 255
    out = normalize_image(img)
    assert out.shape == (3, 2, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out[0], (1 - IMAGENET_MEAN[0]) / IMAGENET_STD[0], rtol=1e-6)
    np.testing.assert_allclose(out[1], -IMAGENET_MEAN[1] / IMAGENET_STD[1], rtol=1e-6)
    pad = normalize_image(np.array(PAD_COLOR, dtype=np.uint8).reshape(1, 1, 3))
    assert np.abs(pad).max() < 0.01


@pytest.fixture(scope="module")
def coco_reader(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco")
    write_coco(root, "val2017")
    return open_reader("coco", root, "val2017")


def _dataset(reader, **kw):
    args = dict(distances=(1, 2), crop_size=(16, 16), scale_range=(0.75, 1.5), stride=4,
                small_area=64, seed=3)
    args.update(kw)
    return PanopticDataset(reader, **args)


def _equal(a, b):
    return all(torch.equal(a[k], b[k]) for k in ("image", "semantic", "semantic_weights",
                                                   "affinity", "affinity_weights", "panoptic"))


def test_training_items_shapes_and_reproducibility(coco_reader):
    ds = _dataset(coco_reader)
    item = ds[(0, 1)]
    assert item["image"].shape == (3, 16, 16) and item["image"].dtype == torch.float32
    assert item["semantic"].shape == (4, 4) and item["semantic"].dtype == torch.int64
    assert item["affinity"].shape == (4, 4, 4) and item["affinity_weights"].shape == (4, 4, 4)
    assert item["panoptic"].shape == (4, 4)
    segs = item["segments"]
    assert set(segs) == {"ids", "classes", "iscrowd", "area", "area_input"}
    assert set(segs["ids"].tolist()) == set(item["panoptic"].unique().tolist()) - {0}
    assert _equal(item, ds[(0, 1)])
    assert _equal(item, _dataset(coco_reader)[(0, 1)])          # a fresh dataset object
    ds.set_epoch(0)
    assert _equal(item, ds[1])
    differs = [not _equal(ds[(e, 1)], item) for e in range(1, 6)]
    assert any(differs)                                          # epochs draw new augmentations
    assert not _equal(_dataset(coco_reader, seed=4)[(0, 1)], item) or \
        not _equal(_dataset(coco_reader, seed=5)[(0, 1)], item)


def test_eval_items_are_whole_padded_images_and_collate_pads(coco_reader):
    ds = _dataset(coco_reader, train=False, eval_pad_multiple=32)
    items = [ds[0], ds[1]]
    sizes = {it["image_id"]: tuple(it["image"].shape[1:]) for it in items}
    assert sizes == {139: (32, 32), 285: (32, 32)}
    ds8 = _dataset(coco_reader, train=False, eval_pad_multiple=8)
    a, b = ds8[0], ds8[1]
    assert a["image"].shape[1:] != b["image"].shape[1:]
    batch = collate_panoptic([a, b])
    assert batch["image"].shape == (2, 3, 24, 32)
    assert batch["semantic"].shape == (2, 6, 8) and batch["affinity"].shape == (2, 4, 6, 8)
    # Padding carries no loss: ignore label and zero weights.
    assert a["semantic"].shape == (6, 8) and b["semantic"].shape == (6, 4)  # 20x30, 24x16
    assert (batch["semantic"][1, :, 4:] == 255).all()
    assert (batch["semantic_weights"][1, :, 4:] == 0).all()
    assert (batch["affinity_weights"][1, :, :, 4:] == 0).all()
    assert (batch["panoptic"][1, :, 4:] == 0).all()
    assert torch.equal(batch["affinity"][1, :, :, :4], b["affinity"])
    assert batch["index"].tolist() == [0, 1] and len(batch["segments"]) == 2
    assert batch["meta"][0]["orig_size"] == (20, 30)


def test_dataloader_workers_give_the_same_samples(coco_reader):
    ds = _dataset(coco_reader)
    keys = [(0, 0), (0, 1), (1, 0), (1, 1)]
    loader = torch.utils.data.DataLoader(ds, batch_size=2, sampler=keys, num_workers=2,
                                         collate_fn=collate_panoptic)
    batches = list(loader)
    direct = collate_panoptic([ds[k] for k in keys[:2]])
    assert torch.equal(batches[0]["image"], direct["image"])
    assert torch.equal(batches[0]["affinity_weights"], direct["affinity_weights"])
    assert torch.equal(batches[1]["semantic"], collate_panoptic([ds[k] for k in keys[2:]])["semantic"])


def test_sampler_resume_and_shards():
    s = TrainSampler(5, seed=1)
    it = iter(s)
    stream = [next(it) for _ in range(12)]
    assert sorted(i for e, i in stream[:5]) == list(range(5))   # each epoch a permutation
    assert [e for e, _ in stream] == [0] * 5 + [1] * 5 + [2] * 2
    assert s.permutation(0).tolist() != s.permutation(1).tolist()
    resumed = iter(TrainSampler(5, seed=1, start=7))
    assert [next(resumed) for _ in range(5)] == stream[7:12]
    r0, r1 = iter(TrainSampler(5, seed=1, world_size=2, rank=0)), iter(TrainSampler(5, seed=1, world_size=2, rank=1))
    assert [next(r0) for _ in range(3)] == stream[0:6:2]
    assert [next(r1) for _ in range(3)] == stream[1:6:2]
    assert s.key_at(7) == stream[7]
    assert [i for _, i in [next(iter(TrainSampler(3, shuffle=False, start=k))) for k in range(3)]] == [0, 1, 2]
    with pytest.raises(InputError, match="`rank`"):
        TrainSampler(5, rank=2, world_size=2)
    with pytest.raises(InputError, match="`size`"):
        TrainSampler(0)


def test_bad_file_found_in_a_worker_keeps_its_one_line_message(tmp_path):
    from copsctl.data.loader import WorkerInputError

    write_coco(tmp_path, "val2017")
    victim = tmp_path / "annotations" / "panoptic_val2017" / "000000000285.png"
    victim.write_bytes(b"not a png")
    ds = _dataset(open_reader("coco", tmp_path, "val2017"))
    loader = torch.utils.data.DataLoader(ds, batch_size=1, sampler=[(0, 1)], num_workers=1,
                                         collate_fn=collate_panoptic)
    with pytest.raises(InputError) as info:
        list(loader)
    assert isinstance(info.value, WorkerInputError)
    assert str(info.value).startswith(f"{victim}: not a readable PNG")
    assert "\n" not in str(info.value)
