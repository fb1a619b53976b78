"""The COPS network: shapes, backbone dilation and weights, the affinity branch, freezing, costs."""

from __future__ import annotations

import urllib.error
import warnings

import numpy as np
import pytest
import torch
import torchvision

from copsctl.config import load_recipe
from copsctl.errors import InputError
from copsctl.model import (PanopticModel, PretrainLoss, freeze_for_finetuning, total_loss,
                           trainable_parameter_names)
from copsctl.model.backbone import ResNetBackbone, _dilate_stage
from copsctl.model.heads import EdgePredictor, endpoint_difference
from copsctl.solver.grid import grid_edge_mask, grid_edges, maps_to_edge_values


K = 5
DISTANCES = (1, 2, 4)


def tiny_model(**kwargs) -> PanopticModel:
    args = dict(num_classes=K, distances=DISTANCES, depth=18, pretrained="none", aspp_rates=(1, 2, 3),
                aspp_channels=16, project_channels=(8, 8), semantic_decoder_channels=16,
                semantic_head_channels=16, affinity_decoder_channels=16, affinity_feature_channels=8,
                affinity_predictor_channels=4)
    args.update(kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return PanopticModel(**args)


def tiny_targets(batch: int, h: int, w: int, generator: torch.Generator) -> dict:
    m = 2 * len(DISTANCES)
    return {"semantic": torch.randint(0, K, (batch, h, w), generator=generator),
            "semantic_weights": torch.ones(batch, h, w),
            "affinity": torch.randint(0, 2, (batch, m, h, w), generator=generator).float(),
            "affinity_weights": torch.from_numpy(
                np.broadcast_to(grid_edge_mask(h, w, DISTANCES), (batch, m, h, w)).astype(np.float32))}


@pytest.fixture(scope="module")
def model() -> PanopticModel:
    torch.manual_seed(0)
    return tiny_model()


def test_output_shapes_at_quarter_resolution(model):
    images = torch.randn(2, 3, 64, 48)
    out = model(images)
    assert out["semantic_logits"].shape == (2, K, 16, 12)
    assert out["affinity_logits"].shape == (2, 2 * len(DISTANCES), 16, 12)
    assert all(torch.isfinite(v).all() for v in out.values())


@pytest.mark.parametrize("output_stride, res5_size", [(8, 8), (16, 4), (32, 2)])
def test_backbone_strides(output_stride, res5_size):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        backbone = ResNetBackbone(depth=18, output_stride=output_stride, pretrained="none")
    feats = backbone(torch.randn(1, 3, 64, 64))
    assert feats["res2"].shape == (1, 64, 16, 16)
    assert feats["res3"].shape == (1, 128, 8, 8)
    assert feats["res5"].shape == (1, 512, res5_size, res5_size)


def test_dilation_matches_torchvision_for_bottleneck():
    """Our in-place dilation gives torchvision's replace_stride_with_dilation network exactly."""
    torch.manual_seed(0)
    ours = torchvision.models.resnet50(weights=None)
    ref = torchvision.models.resnet50(weights=None, replace_stride_with_dilation=[False, False, True])
    ref.load_state_dict(ours.state_dict())
    _dilate_stage(ours.layer4, dilation=2, previous_dilation=1)
    for (name, a), b in zip(ours.layer4.named_modules(), ref.layer4.modules()):
        if isinstance(a, torch.nn.Conv2d):
            assert (a.stride, a.dilation, a.padding) == (b.stride, b.dilation, b.padding), name
    ours.eval(), ref.eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours.layer4(ours.layer3(ours.layer2(ours.layer1(ours.maxpool(ours.relu(ours.bn1(ours.conv1(x)))))))),
                                   ref.layer4(ref.layer3(ref.layer2(ref.layer1(ref.maxpool(ref.relu(ref.bn1(ref.conv1(x)))))))))


def test_images_must_be_multiple_of_four_and_float(model):
    with pytest.raises(InputError, match="divisible by 4"):
        model(torch.randn(1, 3, 62, 64))
    with pytest.raises(InputError, match=r"\(B, 3, H, W\)"):
        model(torch.randn(1, 1, 64, 64))
    with pytest.raises(InputError, match="float"):
        model(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))


def test_random_init_warns():
    with pytest.warns(UserWarning, match="random weights"):
        ResNetBackbone(depth=18, pretrained="none")


def test_pretrained_from_local_state_dict(tmp_path):
    torch.manual_seed(1)
    ref = torchvision.models.resnet18(weights=None)
    path = tmp_path / "r18.pth"
    torch.save({"state_dict": ref.state_dict()}, path)
    backbone = ResNetBackbone(depth=18, pretrained=str(path))
    torch.testing.assert_close(backbone.layer3[0].conv1.weight, ref.layer3[0].conv1.weight)
    torch.testing.assert_close(backbone.stem[1].running_var, ref.bn1.running_var)


def test_pretrained_bad_files(tmp_path):
    with pytest.raises(InputError, match="not imagenet, none or an existing file"):
        ResNetBackbone(depth=18, pretrained=str(tmp_path / "missing.pth"))
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="corrupt.pth: cannot read a state dict"):
        ResNetBackbone(depth=18, pretrained=str(corrupt))
    # one flipped byte in a weight: torch.load read it as another weight
    from damage import flip_member_byte

    good = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), good)
    flip_member_byte(good, tmp_path / "flipped.pth", "/data/0")
    with pytest.raises(InputError, match=r"flipped.pth: cannot read a state dict \(damaged: "
                                         r"member 'data/0' fails its CRC-32 check\)"):
        ResNetBackbone(depth=18, pretrained=str(tmp_path / "flipped.pth"))
    other = tmp_path / "r34.pth"
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), other)
    with pytest.raises(InputError, match="not a ResNet-18 state dict"):
        ResNetBackbone(depth=18, pretrained=str(other))


def test_imagenet_offline_names_the_fix(monkeypatch):
    def offline(self, *args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(type(torchvision.models.ResNet18_Weights.IMAGENET1K_V1), "get_state_dict", offline)
    with pytest.raises(InputError, match=r"--set model.pretrained=/path/to/resnet18-.*\.pth"):
        ResNetBackbone(depth=18, pretrained="imagenet")


def test_endpoint_difference_by_hand():
    f = torch.arange(2 * 5 * 6, dtype=torch.float32).reshape(1, 2, 5, 6) ** 1.5
    h, v = endpoint_difference(f, 2)
    for y in range(5):
        for x in range(6):
            exp_h = f[0, :, y, x + 2] - f[0, :, y, x] if x + 2 < 6 else torch.zeros(2)
            exp_v = f[0, :, y + 2, x] - f[0, :, y, x] if y + 2 < 5 else torch.zeros(2)
            torch.testing.assert_close(h[0, :, y, x], exp_h)
            torch.testing.assert_close(v[0, :, y, x], exp_v)
    h, v = endpoint_difference(f, 6)  # no edge of length 6 fits a 5x6 map
    assert h.shape == v.shape == f.shape and not h.any() and not v.any()
    h, v = endpoint_difference(f, 5)
    assert not v.any() and h.any()


def test_long_range_predictor_reads_only_endpoint_differences():
    """d > 1: a constant shift of the features changes nothing; a row-only change only
    moves vertical logits (horizontal differences are unchanged)."""
    torch.manual_seed(0)
    pred = EdgePredictor(in_channels=3, channels=4, distance=2).eval()
    f = torch.randn(1, 3, 7, 8)
    with torch.no_grad():
        base = pred(f)
        torch.testing.assert_close(pred(f + 5.0), base)
        rows = torch.randn(1, 3, 7, 1).expand(1, 3, 7, 8)
        moved = pred(f + rows)
    torch.testing.assert_close(moved[:, 0], base[:, 0])
    assert not torch.allclose(moved[:, 1], base[:, 1])


def test_affinity_channels_follow_grid_layout(model):
    """Predictor i writes channel 2i (horizontal d_i) and 2i+1 (vertical d_i)."""
    m = tiny_model()
    with torch.no_grad():
        for i, pred in enumerate(m.affinity_head.predictors):
            assert pred.distance == DISTANCES[i]
            pred.predictor.weight.zero_()
            pred.predictor.bias.copy_(torch.tensor([10.0 * i + 1, 10.0 * i + 2]))
        out = m.eval()(torch.randn(1, 3, 32, 32))["affinity_logits"]
    for i in range(len(DISTANCES)):
        assert torch.all(out[0, 2 * i] == 10.0 * i + 1)
        assert torch.all(out[0, 2 * i + 1] == 10.0 * i + 2)
    edges = maps_to_edge_values(out[0].numpy(), DISTANCES)
    assert edges.shape == (grid_edges(8, 8, DISTANCES).shape[0],)


def test_affinity_loss_does_not_reach_semantic_branch():
    torch.manual_seed(0)
    m = tiny_model().train()
    out = m(torch.randn(2, 3, 32, 32))
    losses = PretrainLoss(distances=DISTANCES)(out, tiny_targets(2, 8, 8, torch.Generator().manual_seed(0)))
    losses["loss_affinity"].backward()
    semantic = list(m.semantic_decoder.parameters()) + list(m.semantic_head.parameters())
    assert all(p.grad is None for p in semantic)
    assert all(p.grad is not None for p in m.affinity_head.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.backbone.parameters())


def test_affinity_branch_does_read_the_semantic_costs():
    torch.manual_seed(0)
    m = tiny_model().eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        before = m(x)["affinity_logits"]
        m.semantic_head.predictor.bias[0] += 3.0
        after = m(x)["affinity_logits"]
    assert not torch.allclose(before, after)


def test_costs_sign_convention_and_transform(model):
    out = model.eval()(torch.randn(1, 3, 32, 32))
    costs = model.costs(out)
    node, edge = costs["node_costs"], costs["edge_costs"]
    torch.testing.assert_close(torch.exp(-node).sum(dim=1), torch.ones(1, 8, 8))
    assert (node >= 0).all()
    torch.testing.assert_close(edge, out["affinity_logits"])
    m = tiny_model()
    out = m.eval()(torch.randn(1, 3, 32, 32))
    with torch.no_grad():
        m.cost_transform.log_edge_scale.fill_(np.log(2.0))
        m.cost_transform.edge_offset[1] = -1.0
        m.cost_transform.node_offset[2] = 0.5
    costs = m.costs(out)
    expected = 2.0 * out["affinity_logits"]
    expected[:, 1] -= 1.0
    torch.testing.assert_close(costs["edge_costs"], expected)
    torch.testing.assert_close(costs["node_costs"][:, 2], -torch.log_softmax(out["semantic_logits"], 1)[:, 2] + 0.5)


def test_cost_transform_is_frozen_outside_finetuning(model):
    names = trainable_parameter_names(model)
    assert not any(n.startswith("cost_transform.") for n in names)


def test_freeze_selects_exactly_the_paper_parts():
    m = tiny_model()
    names = freeze_for_finetuning(m)
    bn_params = {f"{mod_name}.{p}" for mod_name, mod in m.named_modules()
                 if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm) for p, _ in mod.named_parameters()}
    prefixes = ("semantic_head.", "affinity_head.", "semantic_decoder.fuse4.", "affinity_decoder.fuse4.")
    expected = [n for n, _ in m.named_parameters() if n.startswith(prefixes) and n not in bn_params]
    assert names == expected
    assert "semantic_head.predictor.weight" in names and "affinity_head.predictors.2.predictor.bias" in names
    assert "affinity_decoder.fuse4.3.weight" in names  # the pointwise conv of the last fusion layer
    assert not any(n.startswith(("backbone.", "cost_transform.", "semantic_decoder.aspp")) for n in names)

    with_costs = freeze_for_finetuning(m, learn_cost_scale=True, learn_cost_offset=True)
    assert sorted(set(with_costs) - set(names)) == ["cost_transform.edge_offset", "cost_transform.log_edge_scale",
                                                    "cost_transform.log_node_scale", "cost_transform.node_offset"]
    with pytest.raises(InputError, match="`trainable` must name parts"):
        freeze_for_finetuning(m, trainable=("decoder",))


def test_frozen_batchnorm_statistics_stay_fixed_in_training():
    torch.manual_seed(0)
    m = tiny_model()
    freeze_for_finetuning(m)
    m.train()
    bns = [mod for mod in m.modules() if isinstance(mod, torch.nn.BatchNorm2d)]
    assert bns and all(not bn.training for bn in bns)
    assert m.semantic_head.training  # dropout etc. still in training mode
    before = [bn.running_mean.clone() for bn in bns]
    opt = torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=1e-2)
    out = m(torch.randn(2, 3, 32, 32))
    loss = total_loss(PretrainLoss(distances=DISTANCES)(out, tiny_targets(2, 8, 8, torch.Generator().manual_seed(1))))
    loss.backward()
    grads = {n for n, p in m.named_parameters() if p.grad is not None}
    assert grads == set(trainable_parameter_names(m))
    opt.step()
    assert all(torch.equal(b, bn.running_mean) for b, bn in zip(before, bns))


def test_from_config_uses_every_model_key():
    cfg = load_recipe("synthetic_tiny", ["model.distances=[1, 3]", "model.depth=34", "model.output_stride=8"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = PanopticModel.from_config(cfg, num_classes=3)
    assert m.distances == (1, 3)
    assert len(m.backbone.layer3) == 6  # ResNet-34
    assert m.affinity_head.predictors[1].conv.out_channels == 2 * cfg.model.affinity_predictor_channels
    assert m.semantic_decoder.out_channels == cfg.model.semantic_decoder_channels
    out = m.eval()(torch.randn(1, 3, 32, 32))
    assert out["semantic_logits"].shape == (1, 3, 8, 8)
    assert out["affinity_logits"].shape == (1, 4, 8, 8)


def test_from_checkpoint_skips_backbone_weights_without_warning(recwarn):
    cfg = load_recipe("synthetic_tiny", ["model.pretrained=imagenet"])  # would need the network
    torch.manual_seed(0)
    trained = PanopticModel.from_config(cfg, num_classes=2, from_checkpoint=True)
    assert not [w for w in recwarn if "random weights" in str(w.message)]
    restored = PanopticModel.from_config(cfg, num_classes=2, from_checkpoint=True)
    restored.load_state_dict(trained.state_dict())
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        a, b = trained.eval()(x), restored.eval()(x)
    torch.testing.assert_close(a["affinity_logits"], b["affinity_logits"])
