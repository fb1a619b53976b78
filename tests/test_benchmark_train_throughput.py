"""The pre-training throughput benchmark runs the real step and reports its figures."""

from __future__ import annotations

import torch

from copsctl.benchmarks.train_throughput import main, measure, random_batch


def test_random_batch_has_the_shapes_of_copsctl_data():
    b = random_batch(batch=2, crop=(64, 96), num_classes=5, channels=6, device=torch.device("cpu"))
    assert b["image"].shape == (2, 3, 64, 96)
    assert b["semantic"].shape == (2, 16, 24) and int(b["semantic"].max()) < 5
    assert b["affinity"].shape == b["affinity_weights"].shape == (2, 6, 16, 24)


def test_measure_on_cpu_with_the_tiny_recipe(tmp_path, capsys):
    threads = torch.get_num_threads()
    try:
        r = measure(recipe="synthetic_tiny", device="cpu", batch=2, iterations=2, warmup=1,
                    threads=1)
        assert (r["crop"], r["batch"], r["classes"], r["amp"]) == ([64, 64], 2, 8, False)
        assert r["seconds_per_step"] > 0 and r["images_per_s"] == 2 / r["seconds_per_step"]
        assert r["peak_memory_gib"] > 0 and "RSS" in r["peak_memory_is"]
        main(["--recipe", "synthetic_tiny", "--crop", "32x32", "--iterations", "1", "--warmup",
              "0", "--threads", "1", "--json", str(tmp_path / "t.json")])
    finally:
        torch.set_num_threads(threads)
    assert "crop 32x32, batch 2" in capsys.readouterr().out
    assert (tmp_path / "t.json").is_file()
