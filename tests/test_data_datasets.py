"""Readers on tiny datasets in the exact Cityscapes and COCO panoptic layouts."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from copsctl.data.datasets import open_reader, read_image, semantic_from_panoptic
from copsctl.errors import InputError
from panoptic_fixtures import (COCO_CONTIGUOUS, cityscapes_expected_semantic, write_cityscapes,
                               write_coco)


@pytest.fixture(scope="module")
def cityscapes_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cityscapes")
    scenes = write_cityscapes(root, "val")
    return root, scenes


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco")
    expected = write_coco(root, "val2017")
    return root, expected


def _copy(src, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(src, dst)
    return dst


def test_cityscapes_reader_matches_the_converter_output(cityscapes_root):
    root, scenes = cityscapes_root
    reader = open_reader("cityscapes", root, "val")
    assert reader.class_table.num_classes == 19
    assert sorted(reader.image_ids) == sorted(scenes)
    for i in range(len(reader)):
        s = reader[i]
        inst = scenes[s.image_id]
        city = s.image_id.split("_")[0]
        assert s.image_path == root / "leftImg8bit" / "val" / city / f"{s.image_id}_leftImg8bit.png"
        assert s.image.shape == inst.shape + (3,) and s.image.dtype == np.uint8
        np.testing.assert_array_equal(s.image, np.asarray(Image.open(s.image_path)))
        np.testing.assert_array_equal(s.semantic, cityscapes_expected_semantic(inst))
        # Ignored labels (unlabeled, parking, ego vehicle, static) are void in the id map.
        label = np.where(inst >= 1000, inst // 1000, inst)
        assert (s.panoptic[np.isin(label, [0, 1, 4, 9])] == 0).all()
        assert (s.panoptic[~np.isin(label, [0, 1, 4, 9])] != 0).all()
    first = reader[reader.image_ids.index("aachen_000000_000019")]
    by_id = {seg.id: seg for seg in first.segments}
    assert by_id[26].iscrowd and by_id[26].category_id == 26  # car pixels without instance
    assert not by_id[24000].iscrowd and by_id[24000].area == 60
    assert first.segment_iscrowd[list(first.segment_ids).index(26)]
    # "train" (label id 31) occurs in no image but keeps its index.
    assert reader.class_table.index_of(31) == 16


def test_coco_reader_jpeg_contiguous_classes_crowd_and_absent_category(coco_root):
    root, expected = coco_root
    reader = open_reader("coco", root, "val2017")
    assert reader.class_table.category_ids == tuple(sorted(COCO_CONTIGUOUS))
    assert reader.class_table.index_of(18) == 2  # "dog": absent from every image
    assert reader.class_table.thing_mask.tolist() == [True, True, True, False, False, False]
    for i in range(len(reader)):
        s = reader[i]
        exp = expected[s.image_id]
        assert s.image_path.suffix == ".jpg"
        assert s.image.shape[:2] == exp["map"].shape
        np.testing.assert_array_equal(s.panoptic, exp["map"])
        np.testing.assert_array_equal(s.semantic, exp["semantic"])
        got = {seg.id: (seg.category_id, int(seg.iscrowd)) for seg in s.segments}
        assert got == exp["segments"]
        for sid, cls, crowd in zip(s.segment_ids, s.segment_classes, s.segment_iscrowd):
            assert COCO_CONTIGUOUS[exp["segments"][sid][0]] == cls
            assert bool(exp["segments"][sid][1]) == crowd
    assert (reader[reader.image_ids.index(139)].semantic == 255).sum() == 8  # the void corner


def test_reader_accepts_png_images_in_coco_layout(coco_root, tmp_path):
    root = _copy(coco_root[0], tmp_path)
    data = json.loads((root / "annotations" / "panoptic_val2017.json").read_text())
    for entry in data["images"]:
        jpg = root / "val2017" / entry["file_name"]
        Image.open(jpg).save(jpg.with_suffix(".png"))
        jpg.unlink()
        entry["file_name"] = jpg.with_suffix(".png").name
    (root / "annotations" / "panoptic_val2017.json").write_text(json.dumps(data))
    reader = open_reader("synthetic", root, "val")
    assert reader[0].image_path.suffix == ".png"


def test_missing_image_is_reported_at_construction(cityscapes_root, tmp_path):
    root = _copy(cityscapes_root[0], tmp_path)
    victim = root / "leftImg8bit" / "val" / "bochum" / "bochum_000000_000313_leftImg8bit.png"
    victim.unlink()
    with pytest.raises(InputError, match=f"{victim}: image file does not exist"):
        open_reader("cityscapes", root, "val")


def test_missing_label_png_is_reported(coco_root, tmp_path):
    root = _copy(coco_root[0], tmp_path)
    victim = root / "annotations" / "panoptic_val2017" / "000000000285.png"
    victim.unlink()
    with pytest.raises(InputError, match=f"{victim}: panoptic PNG does not exist"):
        open_reader("coco", root, "val2017")


def test_corrupt_png_names_the_file(coco_root, tmp_path):
    root = _copy(coco_root[0], tmp_path)
    victim = root / "annotations" / "panoptic_val2017" / "000000000139.png"
    victim.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    reader = open_reader("coco", root, "val2017")
    with pytest.raises(InputError, match=f"{victim}: not a readable PNG"):
        reader[reader.image_ids.index(139)]


def test_corrupt_image_names_the_file(coco_root, tmp_path):
    root = _copy(coco_root[0], tmp_path)
    victim = root / "val2017" / "000000000139.jpg"
    victim.write_bytes(b"\xff\xd8\xff garbage")
    reader = open_reader("coco", root, "val2017")
    with pytest.raises(InputError, match=f"{victim}: not a readable image"):
        reader[reader.image_ids.index(139)]


def test_corrupt_json_names_the_file(cityscapes_root, tmp_path):
    root = _copy(cityscapes_root[0], tmp_path)
    victim = root / "gtFine" / "cityscapes_panoptic_val.json"
    victim.write_text('{"annotations": [')
    with pytest.raises(InputError, match=f"{victim}: not valid JSON"):
        open_reader("cityscapes", root, "val")


def test_image_size_differing_from_label_names_both_files(cityscapes_root, tmp_path):
    root = _copy(cityscapes_root[0], tmp_path)
    img = root / "leftImg8bit" / "val" / "aachen" / "aachen_000000_000019_leftImg8bit.png"
    Image.new("RGB", (40, 24)).save(img)
    reader = open_reader("cityscapes", root, "val")
    with pytest.raises(InputError, match=r"aachen_000000_000019_gtFine_panoptic.png: label size "
                                         r"24x48 \(HxW\) differs from the image size 24x40"):
        reader[reader.image_ids.index("aachen_000000_000019")]


def test_unknown_category_id_names_json_image_and_segment(coco_root, tmp_path):
    root = _copy(coco_root[0], tmp_path)
    path = root / "annotations" / "panoptic_val2017.json"
    data = json.loads(path.read_text())
    data["annotations"][1]["segments_info"][0]["category_id"] = 99
    path.write_text(json.dumps(data))
    sid = data["annotations"][1]["segments_info"][0]["id"]
    with pytest.raises(InputError, match=f"{path}: image 285: segment {sid} has unknown "
                                         "category id 99"):
        open_reader("coco", root, "val2017")


def test_cityscapes_json_with_a_foreign_category_is_rejected(cityscapes_root, tmp_path):
    root = _copy(cityscapes_root[0], tmp_path)
    path = root / "gtFine" / "cityscapes_panoptic_val.json"
    data = json.loads(path.read_text())
    data["categories"].append({"id": 9, "name": "parking", "isthing": 0, "color": [0, 0, 0]})
    path.write_text(json.dumps(data))
    with pytest.raises(InputError, match="category id 9 .* is not one of the 19 classes"):
        open_reader("cityscapes", root, "val")


def test_png_id_missing_from_segments_info(coco_root, tmp_path):
    root = _copy(coco_root[0], tmp_path)
    path = root / "annotations" / "panoptic_val2017.json"
    data = json.loads(path.read_text())
    dropped = data["annotations"][0]["segments_info"].pop()
    path.write_text(json.dumps(data))
    reader = open_reader("coco", root, "val2017")
    with pytest.raises(InputError, match=rf"000000000139.png: segment ids \[{dropped['id']}\] "
                                         "in the PNG are not listed"):
        reader[reader.image_ids.index(139)]


def test_bad_dataset_name_and_root():
    with pytest.raises(InputError, match="`dataset` must be one of"):
        open_reader("kitti", "/nonexistent", "val")
    with pytest.raises(InputError, match="/nonexistent/cs: Cityscapes root folder does not exist"):
        open_reader("cityscapes", "/nonexistent/cs", "val")


def test_read_image_expands_grey_and_semantic_map_of_void_only(tmp_path):
    Image.fromarray(np.full((3, 4), 77, dtype=np.uint8), mode="L").save(tmp_path / "g.png")
    img = read_image(tmp_path / "g.png")
    assert img.shape == (3, 4, 3) and (img == 77).all()
    sem = semantic_from_panoptic(np.zeros((2, 2), dtype=np.int64), np.zeros(0), np.zeros(0))
    assert (sem == 255).all()
