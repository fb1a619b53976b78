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
