"""Recipes: defaults, inheritance, overrides, errors naming key and file, dump and hash."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from copsctl.config import (FINETUNE_PARTS, Recipe, describe_keys, load_recipe, parse_override,
                            recipe_from_dict, recipe_names, save_recipe)
from copsctl.errors import InputError
from copsctl.solver import SolverOptions

REPO = Path(__file__).resolve().parents[1]


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


def test_defaults_are_the_paper_settings():
    r = load_recipe()
    assert r == Recipe()
    assert r.model.depth == 50 and r.model.pretrained == "imagenet" and r.model.output_stride == 16
    assert r.model.aspp_rates == (6, 12, 18)
    assert (r.loss.semantic_top_k, r.loss.affinity_top_k, r.loss.affinity_weight) == (0.2, 0.25, 0.25)
    assert (r.loss.thing_edge_weight, r.loss.small_instance_weight) == (4.0, 3.0)
    assert r.data.small_instance_area == 64 * 64
    assert (r.train.lr, r.train.poly_power) == (1e-3, 0.9)
    assert r.finetune.num_perturbations == 5
    assert set(r.finetune.trainable) <= set(FINETUNE_PARTS)
    assert r.solver.options() == SolverOptions()


def test_every_key_has_a_default_type_and_comment():
    rows = describe_keys()
    keys = [k for k, *_ in rows]
    assert len(keys) == len(set(keys)) > 40
    for key, default, type_name, comment in rows:
        assert comment and "\n" not in comment, key
        assert type_name, key
        assert load_recipe().get(key) == default


def test_base_inheritance_and_override_order(tmp_path):
    write(tmp_path / "base.yaml", """
        model:
          depth: 34
          distances: [1, 3]
        train:
          lr: 5e-4
          batch_size: 4
    """)
    write(tmp_path / "mid.yaml", """
        _BASE_: base.yaml
        train:
          batch_size: 6
    """)
    child = write(tmp_path / "child.yaml", """
        _BASE_: mid.yaml
        train:
          iterations: 100
          warmup_iters: 10
    """)
    r = load_recipe(child)
    assert r.model.depth == 34 and r.model.distances == (1, 3)
    assert r.train.lr == 5e-4 and isinstance(r.train.lr, float)
    assert r.train.batch_size == 6 and r.train.iterations == 100
    assert r.data == Recipe().data  # untouched sections keep the code defaults
    r = load_recipe(child, ["train.batch_size=2", "model.pretrained=none", "train.lr=1", "data.crop_size=[64, 32]"])
    assert r.train.batch_size == 2 and r.model.pretrained == "none"
    assert r.train.lr == 1.0 and isinstance(r.train.lr, float)
    assert r.data.crop_size == (64, 32)


def test_packaged_recipe_by_name_and_path():
    by_name = load_recipe("synthetic_pretrain")
    assert by_name == load_recipe("synthetic_pretrain.yaml") == load_recipe(REPO / "recipes" / "synthetic_pretrain.yaml")
    assert by_name.data.dataset == "synthetic" and by_name.model.depth == 18
    with pytest.raises(InputError, match="recipe 'nope' not found: give a YAML file or one of .*synthetic_pretrain"):
        load_recipe("nope")


@pytest.mark.parametrize("name", recipe_names())
def test_every_shipped_recipe_resolves_and_round_trips(name, tmp_path):
    r = load_recipe(name)
    path = tmp_path / "resolved.yaml"
    save_recipe(r, path)
    assert load_recipe(path) == r
    assert load_recipe(path).hash() == r.hash()


def test_shipped_recipes_carry_the_paper_settings():
    cs, coco = load_recipe("cityscapes_pretrain"), load_recipe("coco_pretrain")
    assert (cs.train.batch_size, cs.train.iterations, cs.data.crop_size) == (12, 250_000, (512, 1024))
    assert (coco.train.batch_size, coco.train.iterations, coco.data.crop_size) == (48, 240_000, (640, 640))
    assert cs.model.distances == (1, 4, 16, 32, 64, 128) and coco.model.distances == (1, 4, 16, 32, 64)
    assert (cs.data.thing_area_threshold, cs.data.stuff_area_threshold) == (200, 2048)
    assert (coco.data.thing_area_threshold, coco.data.stuff_area_threshold) == (200, 4096)
    assert cs.train.lr == coco.train.lr == 1e-3
    # Fine-tuning: the paper's batch, iterations and N, and the authors' released settings.
    for name, iterations, lr, weight, lam in (("cityscapes_finetune", 3000, 1e-3, 10, 1.0),
                                              ("coco_finetune", 10_000, 1e-4, 100, 1000.0)):
        ft = load_recipe(name)
        f = ft.finetune
        assert (ft.train.batch_size, ft.train.iterations, f.num_perturbations) == (24, iterations, 5)
        assert (f.lambda_min, f.lambda_max, f.loss_weight, ft.train.lr) == (lam, 5000.0, weight, lr)
        assert (ft.train.warmup_iters, ft.train.decay_iters) == (500, 20_000)
        assert f.trainable == ("semantic_head", "affinity_head") and f.learn_cost_scale and f.learn_cost_offset
        assert (f.surrogate_gate, f.surrogate_form, f.surrogate_eps, f.cost_dropout,
                f.min_instance_size) == ("official", "official", 0.1, 0.1, 3)
        assert (f.surrogate_matching, f.gradient_weights, f.two_sided) == ("all", True, False)
    syn = load_recipe("synthetic_pretrain")
    assert syn.model.depth == 18 and syn.model.pretrained == "none" and syn.data.crop_size == (128, 128)


@pytest.mark.parametrize("override, message", [
    ("train.lr=fast", r"--set: `train.lr` must be a number, got 'fast' \(str\)"),
    ("train.batch_size=2.5", r"--set: `train.batch_size` must be an int, got 2.5"),
    ("train.amp=1", r"--set: `train.amp` must be a bool, got 1"),
    ("data.crop_size=[64, 64, 3]", r"`data.crop_size` must be a list of 2 ints"),
    ("data.crop_size=[64, 66]", r"`data.crop_size` must hold positive multiples of 4"),
    ("model.distances=[1, 1]", r"`model.distances` must hold distinct positive integers"),
    ("model.depth=20", r"`model.depth` must be one of 18, 34, 50, 101; got 20"),
    ("loss.semantic_top_k=0", r"`loss.semantic_top_k` must lie in \(0, 1\]"),
    ("finetune.trainable=[backbone, decoder]", r"`finetune.trainable` must name parts among .* \(not 'decoder'\)"),
    ("train.batchsize=2", r"--set: unknown recipe key 'train.batchsize'"),
    ("optim.lr=2", r"--set: unknown recipe key 'optim.lr'"),
    ("lr=2", r"--set: key 'lr' must have the form section.key"),
    ("train.lr", r"--set: override 'train.lr' must have the form section.key=value"),
    ("train.lr=[1", r"--set train.lr: not valid YAML"),
    ("model.aspp_dropout=1", r"`model.aspp_dropout` must lie in \[0, 1\)"),
    ("train.seed=9223372036854775808", r"`train.seed` must lie in \[0, 2\*\*63\)"),
    ("solver.boundary_moves=3000000000", r"`solver.boundary_moves` must be <= 2147483647"),
    ("train.iterations=1:30", r"`train.iterations` must be an int, got '1:30'"),
    ("model.aspp_rates=[]", r"`model.aspp_rates` must name at least one rate; got \[\]"),
    ("model.aspp_rates=[6, 0]", r"`model.aspp_rates` must hold positive values only"),
    ("finetune.num_perturbations=100000000000",
     r"`finetune.num_perturbations` must lie in \[1, 2\*\*31 - 1\]; got 100000000000"),
    ("finetune.num_perturbations=0", r"`finetune.num_perturbations` must lie in \[1, 2\*\*31 - 1\]"),
    # counts beyond int32 reached a C-integer library call (a traceback) or no sane run
    ("train.batch_size=100000000000000000000",
     r"`train.batch_size` must be <= 2147483647 \(2\*\*31 - 1: .*\); got 100000000000000000000"),
    ("train.iterations=2147483648", r"`train.iterations` must be <= 2147483647"),
    ("data.crop_size=[64, 4294967296]", r"`data.crop_size` must be <= 2147483647 .*; got 4294967296"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(InputError, match=message):
        load_recipe("synthetic_tiny", [override])


def test_bad_files_name_the_file_and_key(tmp_path):
    base = write(tmp_path / "base.yaml", """
        train:
          lr: 1e-3
          warmup: 10
    """)
    child = write(tmp_path / "child.yaml", "_BASE_: base.yaml\n")
    with pytest.raises(InputError, match=rf"{base}: unknown recipe key 'train.warmup'"):
        load_recipe(child)
    bad_type = write(tmp_path / "bad_type.yaml", "model:\n  depth: fifty\n")
    with pytest.raises(InputError, match=rf"{bad_type}: `model.depth` must be an int, got 'fifty'"):
        load_recipe(bad_type)
    bad_section = write(tmp_path / "bad_section.yaml", "optimizer:\n  lr: 1\n")
    with pytest.raises(InputError, match=rf"{bad_section}: unknown recipe section 'optimizer'"):
        load_recipe(bad_section)
    not_mapping = write(tmp_path / "list.yaml", "- a\n- b\n")
    with pytest.raises(InputError, match="must be a mapping of sections"):
        load_recipe(not_mapping)
    bad_yaml = write(tmp_path / "broken.yaml", "train: [1,\n")
    with pytest.raises(InputError, match=r"broken.yaml: not valid YAML \(line"):
        load_recipe(bad_yaml)
    missing_base = write(tmp_path / "orphan.yaml", "_BASE_: gone.yaml\n")
    with pytest.raises(InputError, match=r"orphan.yaml: `_BASE_` file 'gone.yaml' not found"):
        load_recipe(missing_base)
    write(tmp_path / "a.yaml", "_BASE_: b.yaml\n")
    write(tmp_path / "b.yaml", "_BASE_: a.yaml\n")
    with pytest.raises(InputError, match="inheritance forms a cycle"):
        load_recipe(tmp_path / "a.yaml")


def test_rules_between_keys():
    with pytest.raises(InputError, match="`data.min_scale` .* must not exceed `data.max_scale`"):
        load_recipe(None, ["data.min_scale=2.0", "data.max_scale=1.5"])
    with pytest.raises(InputError, match="`finetune.cost_norm` .* and `finetune.scale_invariant` "
                                         "are two ways to scale the costs; set one"):
        load_recipe(None, ["finetune.cost_norm=10", "finetune.scale_invariant=true"])
    assert load_recipe(None, ["finetune.cost_norm=10"]).finetune.cost_norm == 10
    assert load_recipe(None, ["finetune.scale_invariant=true"]).finetune.scale_invariant
    with pytest.raises(InputError, match="`finetune.lambda_min` .* must not exceed"):
        load_recipe(None, ["finetune.lambda_min=10", "finetune.lambda_max=5"])
    with pytest.raises(InputError, match="`train.warmup_iters` .* must not exceed"):
        load_recipe("synthetic_tiny", ["train.warmup_iters=10"])
    with pytest.raises(InputError, match="two_sided.*backward_reference"):
        load_recipe(None, ["finetune.two_sided=true", "finetune.backward_reference=lifted"])


def test_integers_are_read_as_yaml_1_2_and_keys_given_twice_are_errors(tmp_path):
    """PyYAML's YAML 1.1 reads 010 as 8 and 1:30 as 90; a repeated section would silently
    drop the first one."""
    assert parse_override("train.iterations=010") == ("train.iterations", 10)
    assert parse_override("data.crop_size=[0640, 0640]") == ("data.crop_size", [640, 640])
    assert parse_override("train.seed=0x10") == ("train.seed", 16)
    assert parse_override("train.seed=0o17") == ("train.seed", 15)
    assert parse_override("train.iterations=1:30") == ("train.iterations", "1:30")
    twice = write(tmp_path / "twice.yaml", """
        _BASE_: synthetic_tiny.yaml
        train:
          lr: 0.1
        model:
          depth: 34
        train:
          iterations: 5
    """)
    with pytest.raises(InputError, match=r"twice.yaml: not valid YAML \(line 7, .*key 'train' "
                                         r"given twice"):
        load_recipe(twice)
    bare = write(tmp_path / "bare.yaml", "_BASE_: synthetic_tiny\ntrain:\n  lr: 0.5\n")
    assert load_recipe(bare).train.lr == 0.5  # a packaged base by name, as --recipe takes it
    key_twice = write(tmp_path / "key_twice.yaml", "train:\n  lr: 0.1\n  lr: 0.5\n")
    with pytest.raises(InputError, match=r"key 'lr' given twice"):
        load_recipe(key_twice)


def test_string_keys_in_a_file_take_the_text_as_set_does(tmp_path):
    """`root: 123` was refused as an int while --set data.root=123 was the folder 123."""
    f = write(tmp_path / "r.yaml", """
        data:
          root: &n 123
          train_split: 007
          val_json: true
          val_images:
          train_images: "0x10"
        train:
          seed: *n
    """)
    r = load_recipe(f)
    same = load_recipe(None, ["data.root=123", "data.train_split=007", "data.val_json=true",
                              "data.val_images=", "data.train_images=0x10", "train.seed=123"])
    assert r == same
    assert (r.data.root, r.data.train_split, r.data.val_json) == ("123", "007", "true")
    assert r.train.seed == 123  # the alias of the same scalar stays an int for an int key
    listed = write(tmp_path / "list.yaml", "data:\n  root: [a]\n")
    with pytest.raises(InputError, match=r"list.yaml: `data.root` must be a string, got \['a'\]"):
        load_recipe(listed)


def test_parse_override_reads_yaml_types():
    assert parse_override("train.lr=1e-4") == ("train.lr", 1e-4)
    assert parse_override("model.distances=[1, 2]") == ("model.distances", [1, 2])
    assert parse_override("model.pretrained=/tmp/x=y.pth") == ("model.pretrained", "/tmp/x=y.pth")
    assert parse_override("train.amp=false") == ("train.amp", False)
    assert parse_override("data.root=") == ("data.root", "")


def test_recipe_is_immutable_and_replace_makes_a_new_one():
    r = load_recipe("synthetic_tiny")
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.train.lr = 1.0  # type: ignore[misc]
    r2 = r.replace({"train.lr": 0.01, "model.distances": [1, 5]})
    assert r2.train.lr == 0.01 and r2.model.distances == (1, 5) and r.train.lr == 1e-3
    assert r.replace(["train.seed=3"]).train.seed == 3
    with pytest.raises(InputError, match="overrides: `train.lr` must be a number"):
        r.replace({"train.lr": "x"})
    assert recipe_from_dict({"train": {"seed": 4}}).train.seed == 4


def test_hash_is_stable_and_sensitive():
    r = load_recipe("synthetic_pretrain")
    assert r.hash() == load_recipe("synthetic_pretrain").hash()
    assert len(r.hash()) == 16
    assert r.replace(["train.seed=1"]).hash() != r.hash()
    # Equal values reached differently hash equally; float vs int input does not matter.
    assert r.replace(["train.lr=0.001"]).hash() == r.replace(["train.lr=1e-3"]).hash() == r.hash()
    # Stage hashes only see their sections.
    ft = r.replace(["finetune.lambda_max=100"])
    assert ft.hash(["data", "model", "loss", "train"]) == r.hash(["data", "model", "loss", "train"])
    assert ft.hash() != r.hash()
    with pytest.raises(InputError, match="`sections`"):
        r.hash(["optimizer"])


def test_hash_is_the_same_in_a_fresh_process():
    """No dependence on Python's per-process hash randomisation."""
    code = "from copsctl.config import load_recipe; print(load_recipe('synthetic_pretrain').hash())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=REPO, env={"PYTHONPATH": str(REPO), "PYTHONHASHSEED": "123"})
    assert out.stdout.strip() == load_recipe("synthetic_pretrain").hash()


def test_dump_lists_every_key_with_its_comment():
    text = load_recipe("coco_pretrain").dump()
    assert "  distances: [1, 4, 16, 32, 64]  # edge distances in output pixels" in text
    assert "  lr: 0.001  # Adam learning rate after warm-up" in text
    assert text.count("\n") == len(describe_keys()) + 7  # one header line per section
    assert load_recipe("coco_pretrain").dump(comments=False).count("#") == 0


def test_recipes_found_in_a_plain_checkout(monkeypatch):
    """Without the installed package ``copsctl.recipes``, names resolve from ./recipes."""
    import importlib.resources

    def not_installed(name):
        raise ModuleNotFoundError(name)

    monkeypatch.setattr(importlib.resources, "files", not_installed)
    assert "synthetic_pretrain" in recipe_names()
    assert load_recipe("synthetic_pretrain").model.depth == 18


def test_solver_section_declares_every_solver_option():
    """A new SolverOptions field must get its recipe key (and SolverConfig.options() passes it)."""
    from copsctl.config import SolverConfig

    option_names = {f.name for f in dataclasses.fields(SolverOptions)}
    assert option_names <= {f.name for f in dataclasses.fields(SolverConfig)}
    r = load_recipe(None, ["solver.precluster_max_size=1", "solver.improve=false"])
    assert r.solver.options() == SolverOptions(precluster_max_size=1, improve=False)
