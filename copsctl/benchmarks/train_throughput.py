"""Pre-training throughput: images per second of one optimizer step, and peak memory.

Run as ``python -m copsctl.benchmarks.train_throughput`` for the CPU figure at the
synthetic recipe's size (128x128 crops, batch 8, ResNet-18), or, on a GPU machine, ::

    python -m copsctl.benchmarks.train_throughput --device cuda --crop 512x1024 --batch 12 --amp

for the Cityscapes crop with the paper's network (``cityscapes_pretrain``: ResNet-50 at
output stride 16, six distances, 19 classes) in mixed precision. The recipe defaults to
``synthetic_pretrain`` on CPU and ``cityscapes_pretrain`` on CUDA; ``--recipe`` picks
another.

What is timed is exactly a step of ``copsctl pretrain``'s loop
(:class:`copsctl.train.loop.TrainLoop` with the pre-training step function): the learning
rate update, forward pass, :class:`~copsctl.model.PretrainLoss` (top-k cross-entropies),
backward pass through the AMP scaler and the Adam step, on a fixed batch of random
images with random targets of the right shapes (top-k mining costs the same whatever the
values). Data loading is not included: it runs in DataLoader workers beside the step
(``data_seconds`` in a run's ``metrics.jsonl`` shows whether it keeps up). The backbone
starts from random weights (no download).

Reported: seconds per step (median of ``--iterations`` timed steps after ``--warmup``
untimed ones), images per second, and peak memory: ``torch.cuda.max_memory_allocated``
on CUDA, the process's peak resident set size on CPU. On CPU also the process's CPU
seconds per step (``time.process_time``, all threads): on a machine shared with other
jobs the wall time depends on their load, the CPU time much less, and CPU seconds
divided by the core count bounds what an idle machine would take.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import time

# As the CLI does (copsctl.cli): OpenMP threads that sleep instead of spinning when they
# wait, so a busy machine does not multiply the step time. Must precede importing torch.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from ..config import load_recipe
from ..errors import InputError

_NUM_CLASSES = {"synthetic": 8, "cityscapes": 19, "coco": 133}


def _parse_crop(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise InputError(f"--crop must be HxW, e.g. 512x1024, got {text!r}") from None
    return h, w


def random_batch(*, batch: int, crop: tuple[int, int], num_classes: int, channels: int,
                 device: torch.device, seed: int = 0) -> dict:
    """Images (B, 3, H, W) and targets at 1/4 resolution as copsctl.data delivers them."""
    g = torch.Generator().manual_seed(seed)
    H, W = crop
    h, w = H // 4, W // 4
    b = {"image": torch.randn(batch, 3, H, W, generator=g),
         "semantic": torch.randint(0, num_classes, (batch, h, w), generator=g),
         "semantic_weights": torch.ones(batch, h, w),
         "affinity": torch.randint(0, 2, (batch, channels, h, w), generator=g).float(),
         "affinity_weights": torch.ones(batch, channels, h, w)}
    return {k: v.to(device) for k, v in b.items()}


def measure(*, recipe: str, device: str = "auto", crop: tuple[int, int] | None = None,
            batch: int | None = None, amp: bool | None = None, iterations: int = 10,
            warmup: int = 3, threads: int | None = None, overrides: tuple[str, ...] = ()) -> dict:
    """Time pre-training steps; return the settings and figures (module notes)."""
    from ..model import PanopticModel, PretrainLoss, total_loss
    from ..train.distributed import DistContext, resolve_device
    from ..train.loop import TrainLoop
    from ..train.schedule import WarmupPolySchedule

    if threads:
        torch.set_num_threads(int(threads))
    dev = resolve_device(device)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as copsctl pretrain does on CUDA
    overrides = ["model.pretrained=none", *overrides]
    if crop is not None:
        overrides.append(f"data.crop_size=[{crop[0]},{crop[1]}]")
    if batch is not None:
        overrides.append(f"train.batch_size={batch}")
    if amp is not None:
        overrides.append(f"train.amp={str(amp).lower()}")
    cfg = load_recipe(recipe, overrides)
    crop, batch = cfg.data.crop_size, cfg.train.batch_size
    use_amp = cfg.train.amp and dev.type == "cuda"
    K = _NUM_CLASSES[cfg.data.dataset]
    torch.manual_seed(0)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random initialisation is intended here
        model = PanopticModel.from_config(cfg, K).to(dev)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
    loss_fn = PretrainLoss.from_config(cfg)
    data = random_batch(batch=batch, crop=crop, num_classes=K,
                        channels=2 * len(cfg.model.distances), device=dev)

    def step_fn(b, iteration):
        losses = loss_fn(model(b["image"]), b)
        return total_loss(losses), {}

    def batches():
        while True:
            yield data

    total = warmup + iterations
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    stamps, cpu = [], []

    def progress(event):
        if event.kind == "step":
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            stamps.append(time.perf_counter())
            cpu.append(time.process_time())

    loop = TrainLoop(model=model, optimizer=optimizer,
                     schedule=WarmupPolySchedule(base_lr=cfg.train.lr, iterations=total),
                     step_fn=step_fn, batches=batches(), ctx=DistContext(device=dev),
                     iterations=total, log_every=total, checkpoint_every=total,
                     images_per_step=batch, amp=use_amp, progress=progress)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    stamps.append(time.perf_counter())
    cpu.append(time.process_time())
    loop.run()
    steps = [b - a for a, b in zip(stamps, stamps[1:])][warmup:]
    cpu_steps = [b - a for a, b in zip(cpu, cpu[1:])][warmup:]
    sec = statistics.median(steps)
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated(dev) / 2 ** 30
        peak_what = "torch.cuda.max_memory_allocated"
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
        peak_what = "peak RSS of the process"
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    return {"recipe": recipe, "device": str(dev), "device_name": name,
            "threads": torch.get_num_threads(), "crop": list(crop), "batch": batch,
            "amp": use_amp, "depth": cfg.model.depth, "distances": list(cfg.model.distances),
            "classes": K, "iterations": iterations, "seconds_per_step": sec,
            "seconds_per_step_min": min(steps), "images_per_s": batch / sec,
            "cpu_seconds_per_step": statistics.median(cpu_steps),
            "peak_memory_gib": peak, "peak_memory_is": peak_what}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipe", default=None,
                    help="recipe (default: synthetic_pretrain on CPU, cityscapes_pretrain on CUDA)")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    ap.add_argument("--crop", type=_parse_crop, default=None, help="HxW (default: the recipe's)")
    ap.add_argument("--batch", type=int, default=None, help="images per step (default: the recipe's)")
    ap.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                    help="mixed precision on CUDA (default: the recipe's train.amp)")
    ap.add_argument("--iterations", type=int, default=10, help="timed steps")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--set", dest="overrides", action="append", default=[],
                    help="recipe override section.key=value (repeatable)")
    ap.add_argument("--json", default=None, help="also write the figures here")
    args = ap.parse_args(argv)
    from ..train.distributed import resolve_device

    recipe = args.recipe or ("cityscapes_pretrain" if resolve_device(args.device).type == "cuda"
                             else "synthetic_pretrain")
    r = measure(recipe=recipe, device=args.device, crop=args.crop, batch=args.batch, amp=args.amp,
                iterations=args.iterations, warmup=args.warmup, threads=args.threads,
                overrides=tuple(args.overrides))
    with open("/proc/loadavg") as f:
        r["loadavg"] = f.read().split()[:3]
    print(f"recipe {r['recipe']}: ResNet-{r['depth']}, crop {r['crop'][0]}x{r['crop'][1]}, "
          f"batch {r['batch']}, {r['classes']} classes, distances {r['distances']}, "
          f"amp {r['amp']}")
    print(f"device {r['device_name']} ({r['threads']} CPU threads), load average "
          f"{' '.join(r['loadavg'])}")
    print(f"{r['seconds_per_step']:.3f} s/step (median of {r['iterations']}, best "
          f"{r['seconds_per_step_min']:.3f}) -> {r['images_per_s']:.2f} images/s; peak memory "
          f"{r['peak_memory_gib']:.2f} GiB ({r['peak_memory_is']})")
    if r["device"] == "cpu":
        print(f"CPU time {r['cpu_seconds_per_step']:.3f} s/step over {r['threads']} thread(s) -> "
              f"{r['batch'] / r['cpu_seconds_per_step']:.2f} images per CPU-second")
    if args.json:
        from ..atomic import write_json

        write_json(args.json, r)


if __name__ == "__main__":
    from . import run

    run(main)
