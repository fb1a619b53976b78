"""The shared training pieces: schedule, checkpoints, metrics log and the generic loop."""

from __future__ import annotations

import json
import random
import signal

import numpy as np
import pytest
import torch

from copsctl.errors import InputError
from copsctl.train.checkpoint import (load_checkpoint, rng_state, save_checkpoint,
                                      set_rng_state)
from copsctl.train.distributed import DistContext, resolve_device
from copsctl.train.logging import METRICS_NAME, MetricsLogger, read_metrics
from copsctl.train.loop import TrainLoop
from copsctl.train.schedule import WarmupPolySchedule

# ------------------------------------------------------------------------------ schedule


def test_schedule_warmup_then_poly():
    s = WarmupPolySchedule(base_lr=1e-3, iterations=100, warmup_iters=10, warmup_factor=0.01,
                           poly_power=0.9)
    assert s.lr(0) == pytest.approx(1e-3 * 0.01)
    # halfway through warm-up: linear between warmup_factor and 1, times the decay
    assert s.lr(5) == pytest.approx(1e-3 * (0.01 * 0.5 + 0.5) * (1 - 5 / 100) ** 0.9)
    assert s.lr(10) == pytest.approx(1e-3 * (1 - 10 / 100) ** 0.9)
    assert s.lr(60) == pytest.approx(1e-3 * 0.4 ** 0.9)
    assert s.lr(100) == 0.0
    lrs = [s.lr(i) for i in range(10, 100)]
    assert all(a > b for a, b in zip(lrs, lrs[1:]))


def test_schedule_apply_sets_every_group_with_its_scale():
    w = torch.nn.Parameter(torch.zeros(2))
    v = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.Adam([{"params": [w]}, {"params": [v], "lr_scale": 0.1}], lr=1.0)
    s = WarmupPolySchedule(base_lr=2e-3, iterations=10, warmup_iters=0, poly_power=1.0)
    assert s.apply(opt, 5) == pytest.approx(1e-3)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([1e-3, 1e-4])


@pytest.mark.parametrize("kwargs, word", [({"base_lr": 0}, "base_lr"), ({"iterations": 0}, "iterations"),
                                          ({"warmup_iters": 11}, "warmup_iters"),
                                          ({"warmup_factor": 0}, "warmup_factor"),
                                          ({"poly_power": -1}, "poly_power")])
def test_schedule_rejects_bad_settings(kwargs, word):
    args = {"base_lr": 1e-3, "iterations": 10} | kwargs
    with pytest.raises(InputError, match=word):
        WarmupPolySchedule(**args)


# ------------------------------------------------------------------------------ checkpoints


def test_rng_state_round_trip_through_a_checkpoint(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    random.random(), np.random.normal(), torch.rand(1)  # leave the fresh states
    save_checkpoint(tmp_path / "c.pt", {"kind": "test", "rng": [rng_state()]})
    expected = (random.random(), np.random.normal(), np.random.rand(3).tolist(), torch.rand(4))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    set_rng_state(load_checkpoint(tmp_path / "c.pt")["rng"][0])
    got = (random.random(), np.random.normal(), np.random.rand(3).tolist(), torch.rand(4))
    assert got[:3] == expected[:3] and torch.equal(got[3], expected[3])


def test_checkpoint_is_written_atomically_and_checked(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"kind": "test", "iteration": 3})
    assert load_checkpoint(path)["iteration"] == 3
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temporary left behind
    with pytest.raises(InputError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="junk.pt: not a readable copsctl checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"w": torch.zeros(1)}, tmp_path / "sd.pt")
    with pytest.raises(InputError, match="not a readable copsctl checkpoint .*without the entry "
                                         "format='copsctl-checkpoint'"):
        load_checkpoint(tmp_path / "sd.pt")
    assert set(load_checkpoint(tmp_path / "sd.pt", allow_state_dict=True)["model"]) == {"w"}
    torch.save({"format": "copsctl-checkpoint", "version": 99}, tmp_path / "v.pt")
    with pytest.raises(InputError, match="version 99"):
        load_checkpoint(tmp_path / "v.pt")


def test_damaged_or_foreign_checkpoints_are_one_line_naming_the_file(tmp_path):
    """Random bytes, a file cut short or garbled, a pickle torch trips over (it said
    "KeyError: 174812789"), a torch file of another object and a copsctl mapping holding
    the wrong kinds of entries: each one InputError line, no torch warning."""
    import warnings

    from copsctl.train.checkpoint import load_model

    good = tmp_path / "good.pt"
    save_checkpoint(good, {"kind": "pretrain", "iteration": 2,
                           "model": {f"w{i}": torch.full((64,), float(i)) for i in range(40)},
                           "categories": [{"id": 1, "name": "a", "isthing": True}]})
    data = good.read_bytes()
    rng = np.random.default_rng(0)
    garbled = bytearray(data)
    garbled[len(data) // 3: len(data) // 3 + 4096] = rng.bytes(4096)  # spans zip headers
    files = {"random": rng.bytes(2048), "empty": b"", "cut": data[: len(data) // 2],
             "garbled": bytes(garbled), "memo": b"\x80\x02j\x35\x6a\x6b\x0a."}
    for name, content in files.items():
        (tmp_path / f"{name}.pt").write_bytes(content)
    torch.save([1, 2], tmp_path / "list.pt")
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    ckpt = load_checkpoint(good)
    entries = {"model": "weights", "iteration": "2", "categories": [{"id": "a"}],
               "rng": ["x"], "optimizer": {"state": []}, "recipe": 5, "world_size": 0}
    for key, value in entries.items():
        torch.save({**ckpt, key: value}, tmp_path / f"bad_{key}.pt")
        files[f"bad_{key}"] = None
    torch.save({k: v for k, v in ckpt.items() if k != "model"}, tmp_path / "no_model.pt")
    for name in [*files, "list", "tensor", "no_model"]:
        path = tmp_path / f"{name}.pt"
        for read in (lambda: load_checkpoint(path, needs=("model",)), lambda: load_model(path)):
            with warnings.catch_warnings(record=True) as caught, \
                    pytest.raises(InputError) as info:
                warnings.simplefilter("always")
                read()
            message = str(info.value)
            assert message.startswith(f"{path}: not a readable copsctl checkpoint ("), message
            assert "\n" not in message and not caught, (message, caught)
    assert "(it holds no `model` entry)" in str(pytest.raises(
        InputError, load_checkpoint, tmp_path / "no_model.pt", needs=("model",)).value)
    assert "its `iteration` entry is not a whole number" in str(pytest.raises(
        InputError, load_checkpoint, tmp_path / "bad_iteration.pt").value)
    assert load_checkpoint(good, needs=("model", "iteration"))["iteration"] == 2
    # One byte flipped inside a tensor's data: torch.load read it as a wrong weight; the
    # archive's CRC-32 of that member tells.
    from damage import flip_member_byte

    flip_member_byte(good, tmp_path / "flipped.pt", "/data/5")
    message = str(pytest.raises(InputError, load_checkpoint, tmp_path / "flipped.pt").value)
    assert message == (f"{tmp_path / 'flipped.pt'}: not a readable copsctl checkpoint (damaged: "
                       "member 'data/5' fails its CRC-32 check)"), message


# ------------------------------------------------------------------------------ metrics log


def test_metrics_log_jsonl_tensorboard_and_resume_truncation(tmp_path):
    with MetricsLogger(tmp_path) as log:
        for it in (1, 2, 3, 4):
            log.log(it, {"loss": 1.0 / it})
        log.log(4, {"PQ": 50.0}, group="val")
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    with open(tmp_path / METRICS_NAME, "a") as f:
        f.write('{"iteration": 5, "gro')  # a line cut short by a crash
    records = read_metrics(tmp_path / METRICS_NAME)
    assert [(r["iteration"], r["group"]) for r in records] == [(1, "train"), (2, "train"),
                                                               (3, "train"), (4, "train"),
                                                               (4, "val")]
    assert read_metrics(tmp_path / METRICS_NAME, group="val")[0]["PQ"] == 50.0
    # resuming from iteration 2 drops what the interrupted run logged after it
    with MetricsLogger(tmp_path, resume_iteration=2, tensorboard=False) as log:
        log.log(3, {"loss": 0.3})
    lines = (tmp_path / METRICS_NAME).read_text().splitlines()
    assert [json.loads(x)["iteration"] for x in lines] == [1, 2, 3]
    assert json.loads(lines[-1])["loss"] == 0.3


# ------------------------------------------------------------------------------ the loop


def _toy(start: int = 0, iterations: int = 6, progress=None, loop_state=None, model=None,
         opt=None, **kw):
    """A linear regression trained by TrainLoop; batches are a function of the iteration."""
    torch.manual_seed(0)
    model = model or torch.nn.Linear(3, 1)
    opt = opt or torch.optim.Adam(model.parameters(), lr=0.1)
    saved, validated = [], []

    def batches():
        it = start
        while True:
            g = torch.Generator().manual_seed(it)
            x = torch.randn(4, 3, generator=g)
            yield x, x.sum(1, keepdim=True)
            it += 1

    def step_fn(batch, iteration):
        x, y = batch
        loss = ((model(x) - y) ** 2).mean()
        return loss, {"mae": (model(x) - y).abs().mean().detach()}

    loop = TrainLoop(model=model, optimizer=opt,
                     schedule=WarmupPolySchedule(base_lr=0.1, iterations=iterations, warmup_iters=2),
                     step_fn=step_fn, batches=batches(), ctx=DistContext(), iterations=iterations,
                     start_iteration=start, images_per_step=4,
                     save_fn=lambda it, state: saved.append((it, state)),
                     validate_fn=lambda it: validated.append(it) or {"score": float(it)},
                     progress=progress, loop_state=loop_state, **kw)
    return loop, model, opt, saved, validated


def test_loop_cadence_and_logged_metrics(tmp_path):
    events = []
    with MetricsLogger(tmp_path, tensorboard=False) as log:
        loop, model, _, saved, validated = _toy(iterations=7, log_every=3, checkpoint_every=2,
                                                validate_every=4, logger=log,
                                                progress=events.append)
        before = model.weight.detach().clone()
        result = loop.run()
    assert result.iteration == 7 and not result.interrupted
    assert not torch.equal(before, model.weight)
    assert [it for it, _ in saved] == [2, 4, 6, 7]
    assert validated == [4, 7]
    records = read_metrics(tmp_path / METRICS_NAME)
    assert [(r["iteration"], r["group"]) for r in records] == [
        (3, "train"), (4, "val"), (6, "train"), (7, "train"), (7, "val")]
    first = records[0]
    assert {"loss", "mae", "lr", "seconds_per_iter", "data_seconds", "images_per_s"} <= set(first)
    assert first["lr"] == pytest.approx(0.1 * (1 - 2 / 7) ** 0.9)  # lr of the step that closed it
    kinds = [e.kind for e in events]
    assert kinds[0] == "start" and kinds[-1] == "end" and kinds.count("step") == 7
    assert result.val_metrics == {"score": 7.0}


def test_loop_stops_cleanly_on_sigint_and_resumes_identically():
    # Whatever handler was installed (a background job inherits SIG_IGN) comes back.
    before = signal.getsignal(signal.SIGINT)
    full, model_a, *_ = _toy(iterations=6, log_every=4, checkpoint_every=100)
    full.run()

    def interrupt(event):
        if event.kind == "step" and event.iteration == 3:
            signal.raise_signal(signal.SIGINT)

    part, model_b, opt_b, saved, _ = _toy(iterations=6, log_every=4, checkpoint_every=100,
                                          progress=interrupt)
    result = part.run()
    assert result.interrupted and result.iteration == 3
    assert [it for it, _ in saved] == [3]  # Ctrl-C saved the completed iterations
    # the open log window (3 steps) travels in the loop state
    assert saved[0][1]["window"]["count"] == 3
    rest, model_b, *_ = _toy(start=3, iterations=6, log_every=4, checkpoint_every=100,
                             loop_state=saved[0][1], model=model_b, opt=opt_b)
    assert rest.run().iteration == 6
    assert torch.equal(model_a.weight, model_b.weight) and torch.equal(model_a.bias, model_b.bias)
    assert signal.getsignal(signal.SIGINT) is before  # handler restored


@pytest.mark.parametrize("at", [4, 6])
def test_a_validation_cut_short_by_ctrl_c_is_done_on_resume(tmp_path, at):
    """The checkpoint is written before the validation; a Ctrl-C inside it (the validation
    gives up: None) stops the run there, also at the last iteration, and the resumed run
    validates that iteration first: the log ends as the uninterrupted run's."""
    with MetricsLogger(tmp_path / "a", tensorboard=False) as log:
        full, model_a, *_ = _toy(iterations=6, checkpoint_every=2, validate_every=4, logger=log)
        full.run()
    want = [(r["iteration"], r["group"], r.get("score")) for r in
            read_metrics(tmp_path / "a" / METRICS_NAME)]
    with MetricsLogger(tmp_path / "b", tensorboard=False) as log:
        part, model_b, opt_b, saved, _ = _toy(iterations=6, checkpoint_every=2,
                                              validate_every=4, logger=log)

        def cut_short(it):
            if it == at:
                signal.raise_signal(signal.SIGINT)
                return None
            return {"score": float(it)}

        part.validate_fn = cut_short
        result = part.run()
    assert result.interrupted and result.iteration == at
    assert saved[-1][0] == at and saved[-1][1]["validation_due"]
    with MetricsLogger(tmp_path / "b", resume_iteration=at, tensorboard=False) as log:
        rest, model_b, _, _, validated = _toy(start=at, iterations=6, checkpoint_every=2,
                                              validate_every=4, logger=log, model=model_b,
                                              opt=opt_b, loop_state=saved[-1][1])
        assert not rest.run().interrupted
    assert validated[0] == at
    got = [(r["iteration"], r["group"], r.get("score")) for r in
           read_metrics(tmp_path / "b" / METRICS_NAME)]
    assert got == want
    assert torch.equal(model_a.weight, model_b.weight)
    # resumed again from the same checkpoint, the logged validation is not repeated
    with MetricsLogger(tmp_path / "b", resume_iteration=6, tensorboard=False) as log:
        again, *_, validated = _toy(start=6, iterations=6, logger=log,
                                    loop_state={"validation_due": True})
        again.run()
    assert validated == []


def test_loop_rejects_bad_cadence():
    with pytest.raises(InputError, match="log_every"):
        _toy(log_every=0)
    with pytest.raises(InputError, match="start_iteration"):
        _toy(start=7, iterations=6)


def test_resolve_device():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(InputError, match="device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="CUDA is not available"):
            resolve_device("cuda")


def test_resolve_device_names_the_setting_as_given(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(InputError, match="^`device` = cuda: CUDA is not available"):
        resolve_device("cuda")  # the library's own argument, called directly
    with pytest.raises(InputError, match="^--device cuda: CUDA is not available"):
        resolve_device("cuda", option="--device")
    with pytest.raises(InputError, match="^`train.device` = cuda:1: CUDA is not available"):
        resolve_device("cuda:1", option="`train.device`")
    with pytest.raises(InputError, match="^--device must be auto, cpu or cuda, got 'tpu'"):
        resolve_device("tpu", option="--device")


def test_load_model_from_a_bare_state_dict_needs_a_fitting_recipe(tmp_path):
    import warnings

    from copsctl.config import load_recipe
    from copsctl.model import PanopticModel
    from copsctl.train.checkpoint import load_model

    cfg = load_recipe("synthetic_tiny")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random initialisation
        model = PanopticModel.from_config(cfg, 5)
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    loaded, ckpt, recipe = load_model(tmp_path / "sd.pt", recipe=cfg)
    assert recipe is cfg and not loaded.training and loaded.num_classes == 5  # K from the weights
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    with pytest.raises(InputError, match="holds no recipe"):
        load_model(tmp_path / "sd.pt")
    with pytest.raises(InputError, match="sd.pt: weights do not fit"):
        load_model(tmp_path / "sd.pt", recipe=cfg.replace(["model.distances=[1,2]"]))


def test_poly_decay_planned_beyond_the_run():
    """The authors' fine-tuning: decay planned over 20000 steps, stopped at 3000."""
    from copsctl.train.schedule import WarmupPolySchedule

    s = WarmupPolySchedule(base_lr=1e-3, iterations=3000, warmup_iters=500, decay_iters=20_000)
    assert s.factor(3000) == pytest.approx((1 - 3000 / 20_000) ** 0.9)
    assert WarmupPolySchedule(base_lr=1e-3, iterations=3000).factor(3000) == 0
    with pytest.raises(InputError, match="decay_iters"):
        WarmupPolySchedule(base_lr=1e-3, iterations=3000, decay_iters=100)
