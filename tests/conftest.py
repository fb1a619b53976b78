"""Shared test set-up."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Every test module runs torch on one thread: the networks here are tiny, one thread is
    many times faster than several on a shared machine, and bit-identical resumes need a
    fixed reduction order."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """The tiny pre-trained model the tests that need a trained one share: the
    ``synthetic_tiny`` recipe (4 iterations) on a 4 + 2 image, 64x64 synthetic dataset
    (seed 3), pre-trained once per session. Returns ``(data root, run folder)``; tests read
    both and write elsewhere."""
    from typer.testing import CliRunner

    from copsctl.cli import app
    from copsctl.data.synthetic import make_synthetic

    root = tmp_path_factory.mktemp("tiny_run")
    data, run = root / "data", root / "run"
    make_synthetic(data, train=4, val=2, size=(64, 64), seed=3)
    # Session fixtures are set up before the module-scoped one-thread fixture above.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        res = CliRunner().invoke(app, ["pretrain", "--recipe", "synthetic_tiny", "--out",
                                       str(run), "--set", f"data.root={data}"])
    finally:
        torch.set_num_threads(threads)
    assert res.exit_code == 0, res.output
    return data, run
