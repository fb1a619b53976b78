"""The HDF5 cost cache: round trips, lazy per-image reads, atomic writes, bad files."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from copsctl.config import Recipe, recipe_from_dict
from copsctl.costs.cache import FORMAT, QUANTIZED, VERSION, CostFile, CostWriter, solver_problem
from copsctl.errors import InputError
from copsctl.panoptic.format import Category
from copsctl.solver.grid import grid_edge_mask, grid_edges

CATEGORIES = [Category(7, "road", False, (128, 64, 128)),
              Category(23, "sky", False, (70, 130, 180)), Category(26, "car", True, (0, 0, 142))]
DISTANCES = (1, 2)
K, M2 = len(CATEGORIES), 2 * len(DISTANCES)


def _image(rng, h=4, w=6):
    nc = rng.standard_normal((K, h, w)).astype(np.float32)
    em = rng.standard_normal((M2, h, w)).astype(np.float32)
    em[~grid_edge_mask(h, w, DISTANCES)] = 0.0
    return nc, em


def _write(path, images, recipe=None, dtype="float32"):
    with CostWriter(path, CATEGORIES, DISTANCES, recipe=recipe, dtype=dtype) as w:
        for nc, em, image_id, name, size in images:
            w.add(nc, em, image_id=image_id, file_name=name, image_size=size)


@pytest.fixture
def three_images():
    rng = np.random.default_rng(0)
    out = []
    for i, (image_id, size) in enumerate([(17, (16, 24)), ("frankfurt_000001", (17, 23)),
                                          ("17", (4, 6))]):
        h, w = (4, 6) if i != 1 else (5, 3)
        nc, em = _image(rng, h, w)
        out.append((nc, em, image_id, f"img{i}.jpg", size))
    return out


def test_round_trip(tmp_path, three_images):
    path = tmp_path / "costs.h5"
    recipe = recipe_from_dict({"data": {"thing_area_threshold": 100,
                                        "stuff_area_threshold": 900},
                               "model": {"distances": list(DISTANCES)}})
    _write(path, three_images, recipe=recipe)
    with CostFile(path) as cf:
        assert len(cf) == 3
        # an int id and the string "17" stay distinct
        assert cf.image_ids == [17, "frankfurt_000001", "17"]
        assert cf.file_names == ["img0.jpg", "img1.jpg", "img2.jpg"]
        assert cf.image_sizes.tolist() == [[16, 24], [17, 23], [4, 6]]
        assert cf.cost_sizes.tolist() == [[4, 6], [5, 3], [4, 6]]
        assert cf.distances == DISTANCES
        assert cf.categories == CATEGORIES
        assert cf.partitionable.tolist() == [False, False, True]
        assert cf.recipe == recipe
        for i, (nc, em, image_id, name, size) in enumerate(three_images):
            rnc, rem, meta = cf.read(i)
            assert rnc.dtype == np.float32 and rem.dtype == np.float32
            assert np.array_equal(rnc, nc) and np.array_equal(rem, em)
            assert meta == {"index": i, "image_id": image_id, "file_name": name,
                            "image_size": size, "cost_size": nc.shape[1:]}


def test_schema_attributes(tmp_path, three_images):
    path = tmp_path / "costs.h5"
    recipe = Recipe().replace({"model.distances": list(DISTANCES)})
    _write(path, three_images, recipe=recipe)
    with h5py.File(path, "r") as f:
        assert f.attrs["format"] == FORMAT and int(f.attrs["version"]) == VERSION == 2
        assert f.attrs["distances"].tolist() == list(DISTANCES)
        assert f.attrs["recipe"] == recipe.dump()
        assert "synthetic" not in f.attrs  # only make-costs files have it
        assert f["classes/category_id"][()].tolist() == [7, 23, 26]
        assert f["classes/isthing"][()].tolist() == [0, 0, 1]
        assert f["images/000001/node_costs"].shape == (K, 5, 3)
        assert f["images/000001/edge_costs"].shape == (M2, 5, 3)
        # contiguous and uncompressed, as documented
        assert f["images/000000/node_costs"].chunks is None
        assert f["images/000000/node_costs"].compression is None


def test_defaults_and_no_recipe(tmp_path):
    rng = np.random.default_rng(1)
    nc, em = _image(rng)
    path = tmp_path / "c.h5"
    with CostWriter(path, CATEGORIES, DISTANCES) as w:
        assert w.add(nc, em, image_id=3) == 0
        assert len(w) == 1
    with CostFile(path) as cf:
        assert cf.recipe is None and cf.recipe_text == ""
        assert cf.file_names == ["3.png"]
        assert cf.image_sizes.tolist() == [[4, 6]]


def test_edge_positions_without_an_edge_are_stored_as_zero(tmp_path):
    rng = np.random.default_rng(2)
    nc, em = _image(rng)
    mask = grid_edge_mask(4, 6, DISTANCES)
    em_nan = em.copy()
    em_nan[~mask] = np.nan  # not an edge: ignored, not an error
    path = tmp_path / "c.h5"
    with CostWriter(path, CATEGORIES, DISTANCES) as w:
        w.add(nc, em_nan, image_id=0)
    with CostFile(path) as cf:
        _, rem, _ = cf.read(0)
    assert np.array_equal(rem[mask], em[mask]) and (rem[~mask] == 0).all()


def test_float16_storage_reads_back_as_float32(tmp_path, three_images):
    path = tmp_path / "c16.h5"
    _write(path, three_images, dtype="float16")
    with h5py.File(path, "r") as f:
        assert f["images/000000/node_costs"].dtype == np.float16
    with CostFile(path) as cf:
        nc, em, _ = cf.read(0)
    assert nc.dtype == np.float32
    np.testing.assert_allclose(nc, three_images[0][0], rtol=1e-3, atol=1e-3)


def test_reading_one_image_does_not_read_the_others(tmp_path, three_images):
    path = tmp_path / "costs.h5"
    _write(path, three_images)
    # Overwrite the stored bytes of images 0 and 2 with NaN: image 1 must still read,
    # so its read touches only its own datasets (and opening reads no image data).
    with h5py.File(path, "r") as f:
        spans = [(f[f"images/{i:06d}/{n}"].id.get_offset(),
                  f[f"images/{i:06d}/{n}"].id.get_storage_size())
                 for i in (0, 2) for n in ("node_costs", "edge_costs")]
    nan = np.full(1, np.nan, dtype=np.float32).tobytes()
    with open(path, "r+b") as raw:
        for offset, size in spans:
            raw.seek(offset)
            raw.write(nan * (size // 4))
    with CostFile(path) as cf:
        nc, em, meta = cf.read(1)
        assert np.array_equal(nc, three_images[1][0]) and meta["image_id"] == "frankfurt_000001"
        with pytest.raises(InputError,
                           match=r"image 17: 'images/000000/node_costs' must be finite"):
            cf.read(0)


def test_writer_is_atomic(tmp_path, three_images):
    path = tmp_path / "costs.h5"
    _write(path, three_images[:1])
    before = path.read_bytes()
    with pytest.raises(RuntimeError, match="boom"):
        with CostWriter(path, CATEGORIES, DISTANCES) as w:
            nc, em, *_ = three_images[2]
            w.add(nc, em, image_id=5)
            raise RuntimeError("boom")
    assert path.read_bytes() == before          # the old file is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["costs.h5"]  # no temporaries

    new = tmp_path / "new.h5"
    with pytest.raises(InputError):
        with CostWriter(new, CATEGORIES, DISTANCES) as w:
            w.add(np.zeros((K + 1, 4, 6), np.float32), np.zeros((M2, 4, 6), np.float32), 1)
    assert not new.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["costs.h5"]


@pytest.mark.parametrize("change, match", [
    (lambda nc, em: (nc[:2], em), r"`node_costs` \(shape \(2, 4, 6\)"),
    (lambda nc, em: (nc.astype(np.int32), em),
     r"`node_costs` \(shape \(3, 4, 6\), dtype int32\) must be a float array"),
    (lambda nc, em: (nc, em[:3]), r"`edge_maps` \(shape \(3, 4, 6\)"),
    (lambda nc, em: (nc, em[:, :3]), r"`edge_maps` \(shape \(4, 3, 6\)"),
    (lambda nc, em: (np.where(np.arange(6) == 2, np.nan, nc).astype(np.float32), em),
     r"`node_costs` must be finite"),
    (lambda nc, em: (nc, np.where(np.arange(6) == 0, np.inf, em).astype(np.float32)),
     r"`edge_maps` must be finite"),
])
def test_writer_rejects_bad_arrays(tmp_path, change, match):
    nc, em = _image(np.random.default_rng(3))
    nc, em = change(nc, em)
    with CostWriter(tmp_path / "c.h5", CATEGORIES, DISTANCES) as w:
        with pytest.raises(InputError, match=r"^image 'a': " + match):
            w.add(nc, em, image_id="a")
        assert len(w) == 0


def test_writer_rejects_bad_ids_and_sizes(tmp_path):
    nc, em = _image(np.random.default_rng(4))
    with CostWriter(tmp_path / "c.h5", CATEGORIES, DISTANCES) as w:
        w.add(nc, em, image_id=1)
        with pytest.raises(InputError, match=r"`image_id` 1 is already in"):
            w.add(nc, em, image_id=1)
        w.add(nc, em, image_id="1")  # a string id is a different id
        with pytest.raises(InputError, match="`image_id` must be an int or a str"):
            w.add(nc, em, image_id=1.5)
        with pytest.raises(InputError, match="`image_size` must be positive"):
            w.add(nc, em, image_id=2, image_size=(0, 4))
        with pytest.raises(InputError, match=r"`image_size` must be \(H, W\)"):
            w.add(nc, em, image_id=2, image_size=5)


def test_writer_rejects_bad_settings(tmp_path):
    with pytest.raises(InputError, match="`categories` must hold at least one class"):
        CostWriter(tmp_path / "c.h5", [], DISTANCES)
    with pytest.raises(InputError, match="distinct ids"):
        CostWriter(tmp_path / "c.h5", CATEGORIES + [Category(7, "again", False)], DISTANCES)
    with pytest.raises(InputError, match="`distances`"):
        CostWriter(tmp_path / "c.h5", CATEGORIES, (1, 1))
    with pytest.raises(InputError, match="`dtype`"):
        CostWriter(tmp_path / "c.h5", CATEGORIES, DISTANCES, dtype="float64")
    with pytest.raises(InputError, match="`recipe`"):
        CostWriter(tmp_path / "c.h5", CATEGORIES, DISTANCES, recipe=3)
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- bad files


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match=r"nope\.h5: cost file does not exist"):
        CostFile(tmp_path / "nope.h5")


def test_truncated_file(tmp_path, three_images):
    path = tmp_path / "costs.h5"
    _write(path, three_images)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"costs\.h5: not a readable HDF5 file \(truncated or "
                                         r"corrupt\?\)"):
        CostFile(path)


def test_not_hdf5_at_all(tmp_path):
    path = tmp_path / "costs.h5"
    path.write_text("hello\n")
    with pytest.raises(InputError, match="not a readable HDF5 file"):
        CostFile(path)


def test_foreign_hdf5_file(tmp_path):
    path = tmp_path / "foreign.h5"
    with h5py.File(path, "w") as f:
        f["data"] = np.zeros(3)
    with pytest.raises(InputError, match=r"foreign\.h5: not a copsctl cost file \(no 'format' "
                                         r"attribute"):
        CostFile(path)
    with h5py.File(path, "a") as f:
        f.attrs["format"] = "something-else"
    with pytest.raises(InputError, match=r"not a copsctl cost file \(format='something-else', "
                                         r"expected 'copsctl-costs'\)"):
        CostFile(path)


def test_wrong_version(tmp_path, three_images):
    path = tmp_path / "costs.h5"
    _write(path, three_images)
    with h5py.File(path, "a") as f:
        f.attrs["version"] = 3
    with pytest.raises(InputError, match=r"costs\.h5: cost file schema version 3 is not "
                                         r"supported \(this copsctl reads versions 1, 2\)"):
        CostFile(path)
    with h5py.File(path, "a") as f:
        del f.attrs["version"]
    with pytest.raises(InputError, match="no valid 'version' attribute"):
        CostFile(path)


def test_incomplete_and_inconsistent_files(tmp_path, three_images):
    path = tmp_path / "costs.h5"
    _write(path, three_images)
    with h5py.File(path, "a") as f:
        del f["index/file_name"]
    with pytest.raises(InputError, match="dataset 'index/file_name' is missing"):
        CostFile(path)

    _write(path, three_images)
    with h5py.File(path, "a") as f:
        del f["images/000001/edge_costs"]
    with CostFile(path) as cf:
        cf.read(0)
        with pytest.raises(InputError, match=r"image 'frankfurt_000001': dataset "
                                             r"'images/000001/edge_costs' is missing"):
            cf.read(1)

    _write(path, three_images)
    with h5py.File(path, "a") as f:
        del f["images/000002/node_costs"]
        f["images/000002/node_costs"] = np.zeros((K, 3, 3), np.float32)
    with CostFile(path) as cf:
        with pytest.raises(InputError, match=r"image '17': 'images/000002/node_costs' \(shape "
                                             r"\(3, 3, 3\)"):
            cf.read(2)
        with pytest.raises(InputError, match=r"image index 3 out of range \[0, 3\)"):
            cf.read(3)


def _with_recipe_text(path, images, text):
    _write(path, images)
    with h5py.File(path, "r+") as f:
        f.attrs["recipe"] = text


@pytest.mark.parametrize("text, rule", [
    ("a: [1, 2\n", "'recipe' attribute: not valid YAML"),
    ("[1, 2]\n", "'recipe' attribute: a recipe must be a mapping of sections"),
    ("train:\n  nope: 1\n", "'recipe' attribute: unknown recipe key 'train.nope'"),
    ("data:\n  thing_area_threshold: -1\n", "`data.thing_area_threshold` must be >= 0"),
])
def test_bad_recipe_text(tmp_path, three_images, text, rule):
    path = tmp_path / "costs.h5"
    _with_recipe_text(path, three_images, text)
    with CostFile(path) as cf:
        with pytest.raises(InputError, match=rule) as info:
            cf.recipe
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_an_older_make_costs_recipe_reads_as_a_recipe(tmp_path, three_images):
    """make-costs stored a partial recipe with a `synthetic` section before it stored a
    resolved one; such a file reads as the Recipe of its keys over the code defaults."""
    import yaml

    path = tmp_path / "old.h5"
    _with_recipe_text(path, three_images, yaml.safe_dump(
        {"synthetic": {"preset": "tiny", "num_images": 3, "seed": 5, "difficulty": 0.0},
         "data": {"thing_area_threshold": 16, "stuff_area_threshold": 64},
         "model": {"distances": list(DISTANCES)}}, sort_keys=False))
    with CostFile(path) as cf:
        recipe = cf.recipe
        assert cf.synthetic is None
    assert isinstance(recipe, Recipe)
    assert recipe == Recipe().replace({"data.thing_area_threshold": 16,
                                       "data.stuff_area_threshold": 64,
                                       "model.distances": list(DISTANCES)})


# ----------------------------------------------------------------------------- solver input


def test_solver_problem_layout():
    rng = np.random.default_rng(5)
    nc, em = _image(rng, 3, 5)
    part = np.array([False, False, True])
    nodes, edges, ec, pa, local = solver_problem(nc, em, DISTANCES, part)
    assert nodes.shape == (15, K) and nodes.dtype == np.float64
    for y, x, k in [(0, 0, 0), (2, 4, 1), (1, 3, 2)]:
        assert nodes[y * 5 + x, k] == nc[k, y, x]
    assert np.array_equal(edges, grid_edges(3, 5, DISTANCES))
    assert not edges.flags.writeable  # cached and shared between calls
    # The edge (y, x)-(y + 2, x) has the cost of channel 3 at (y, x).
    e = int(np.flatnonzero((edges[:, 0] == 0 * 5 + 4) & (edges[:, 1] == 2 * 5 + 4))[0])
    assert ec[e] == em[3, 0, 4]
    assert pa.tolist() == part.tolist()
    # pre-clustering may use the edges of the smallest distance only
    dist = np.repeat([d for d in DISTANCES for _ in (0, 1)],
                     [int(m.sum()) for m in grid_edge_mask(3, 5, DISTANCES)])
    assert np.array_equal(local, dist == min(DISTANCES))
    with pytest.raises(InputError, match="`edge_maps`"):
        solver_problem(nc, em[:, :2], DISTANCES, part)


def test_version_1_files_stay_readable(tmp_path, three_images):
    """A version 1 file is a version 2 file with float storage; only the number differs."""
    path = tmp_path / "costs.h5"
    _write(path, three_images, dtype="float16")
    with h5py.File(path, "a") as f:
        f.attrs["version"] = 1
    with CostFile(path) as cf:
        for i, (nc, em, *_rest) in enumerate(three_images):
            rnc, rem, _ = cf.read(i)
            assert np.array_equal(rnc, nc.astype(np.float16).astype(np.float32))
            assert np.array_equal(rem, em.astype(np.float16).astype(np.float32))


def test_quantized_storage_error_bounds_and_clip(tmp_path):
    rng = np.random.default_rng(4)
    h, w = 6, 9
    # -log softmax of random logits: costs from ~0 to well above the clip.
    logits = 4 * rng.standard_normal((K, h, w))
    nc = (np.log(np.exp(logits).sum(0)) - logits).astype(np.float32)
    em = (5 * rng.standard_normal((M2, h, w))).astype(np.float32)
    em[~grid_edge_mask(h, w, DISTANCES)] = 0.0
    path = tmp_path / "costs.h5"
    _write(path, [(nc, em, 1, "a.jpg", (24, 36))], dtype="quantized")
    step, clip, edge_step = QUANTIZED["node_step"], QUANTIZED["node_clip"], QUANTIZED["edge_step"]
    with CostFile(path) as cf:
        rnc, rem, meta = cf.read(0)
        assert rnc.dtype == np.float32 and rem.dtype == np.float32 and meta["cost_size"] == (h, w)
    best = nc.min(axis=0)
    near = nc - best <= clip - step
    assert near.mean() < 1 and (~near).any()  # the test exercises both cases
    # Within the clip every cost is off by at most half a step (plus float32 rounding) ...
    assert np.abs(rnc - nc)[near].max() <= step / 2 + 1e-5
    # ... beyond it a cost reads as `clip` above the (quantized) cheapest class.
    np.testing.assert_allclose(rnc[~near] - rnc.min(axis=0)[np.nonzero(~near)[1:]], clip,
                               atol=step)
    assert (np.argmin(rnc, axis=0) == np.argmin(nc, axis=0)).mean() > 0.95
    assert np.abs(rem - em).max() <= edge_step / 2 + 1e-6
    assert np.all(rem[~grid_edge_mask(h, w, DISTANCES)] == 0)
    with h5py.File(path, "r") as f:
        g = f["images/000000"]
        assert g["node_costs"].dtype == np.uint8 and g["edge_costs"].dtype == np.int16
        # Deflate for the node costs of few classes (K = 3 here); lzf above 32 classes.
        assert g["node_offset"].dtype == np.int32 and g["node_costs"].compression == "gzip"
        assert g["edge_costs"].compression == "gzip" and g["edge_costs"].shuffle
        assert g["node_costs"].attrs["step"] == step and g["edge_costs"].attrs["step"] == edge_step
        assert int(f.attrs["version"]) == 2


def test_quantized_storage_rejects_what_does_not_fit(tmp_path):
    nc = np.zeros((K, 2, 3), np.float32)
    em = np.zeros((M2, 2, 3), np.float32)
    em[0, 0, 0] = 1e5
    with pytest.raises(InputError, match=r"image 5: edge costs beyond .* quantized storage"):
        _write(tmp_path / "c.h5", [(nc, em, 5, "a.jpg", (2, 3))], dtype="quantized")
    assert not (tmp_path / "c.h5").exists()


def test_quantized_file_with_a_missing_offset_fails_in_one_line(tmp_path, three_images):
    path = tmp_path / "costs.h5"
    _write(path, three_images, dtype="quantized")
    with h5py.File(path, "a") as f:
        del f["images/000001/node_offset"]
    with CostFile(path) as cf:
        cf.read(0)
        with pytest.raises(InputError, match=r"image 'frankfurt_000001': dataset "
                                             r"'images/000001/node_offset' is missing"):
            cf.read(1)


def test_quantized_node_costs_of_many_classes_use_lzf(tmp_path):
    cats = [Category(i + 1, f"c{i}", i % 2 == 0) for i in range(40)]
    rng = np.random.default_rng(2)
    nc = rng.uniform(0, 3, (40, 3, 5)).astype(np.float32)
    em = np.zeros((M2, 3, 5), np.float32)
    with CostWriter(tmp_path / "c.h5", cats, DISTANCES, dtype="quantized") as w:
        w.add(nc, em, image_id=1)
    with h5py.File(tmp_path / "c.h5", "r") as f:
        assert f["images/000000/node_costs"].compression == "lzf"
    with CostFile(tmp_path / "c.h5") as cf:
        assert np.abs(cf.read(0)[0] - nc).max() <= QUANTIZED["node_step"] / 2 + 1e-6
