"""Throughput of ``copsctl predict``: images per second and where the time goes.

Run as::

    PYTHONPATH=. python -m copsctl.benchmarks.predict_throughput [--preset cityscapes|coco]
        [--images N] [--batch-size B] [--workers W] [--device cpu|cuda] [--run RUN]

The model: without ``--run``, the network of the preset's recipe (``cityscapes_pretrain``:
ResNet-50, 19 classes, inputs resized to a longer side of 1024, i.e. 512 x 1024;
``coco_pretrain``: ResNet-50, 133 classes, 640) with random weights (``model.pretrained
= none``), written as a model file; the network's time does not depend on the weights,
the solver's does (an untrained network's costs are not a trained one's). With
``--run``, that run's model at the same input size. Inputs: ``N`` synthetic scenes
(``copsctl make-synthetic``) of the input size, as JPEG files.

Printed per run (all from :func:`copsctl.panoptic.images.predict_images`): images/s over
the whole call (model loading included), and per image the reading (decode, resize,
normalise; reader thread), the network (main thread), the solver with post-processing
and the PNG writing (summed over the solver threads, so they may exceed the wall time
per image when threads overlap).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from ..cpus import available_cpus

PRESETS = {"cityscapes": ("cityscapes_pretrain", (512, 1024)),
           "coco": ("coco_pretrain", (640, 640))}


def _model_file(preset: str, folder: Path) -> Path:
    """A model file of the preset's recipe with random weights and the preset's classes."""
    from ..config import load_recipe
    from ..data.categories import ClassTable
    from ..model import PanopticModel
    from ..costs.synthetic import cityscapes_categories, coco_like_categories
    from ..train.checkpoint import MODEL_KIND, save_checkpoint

    recipe, _ = PRESETS[preset]
    cfg = load_recipe(recipe, ["model.pretrained=none"])
    cats = cityscapes_categories() if preset == "cityscapes" else coco_like_categories()
    table = ClassTable.from_json([c.to_json() for c in cats])
    model = PanopticModel.from_config(cfg, table.num_classes, from_checkpoint=True)
    path = folder / f"{preset}.pt"
    save_checkpoint(path, {"kind": MODEL_KIND, "iteration": 0, "model": model.state_dict(),
                           "recipe": cfg.dump(), "categories": table.to_json()})
    return path


def _images(size: tuple[int, int], n: int, folder: Path) -> Path:
    from PIL import Image

    from ..data.synthetic import make_synthetic

    make_synthetic(folder / "syn", train=0, val=n, size=size, seed=11)
    out = folder / "images"
    out.mkdir()
    for p in sorted((folder / "syn" / "val2017").iterdir()):
        Image.open(p).convert("RGB").save(out / f"{p.stem}.jpg", quality=90)
    return out


def main(argv=None) -> None:
    from ..panoptic.images import predict_images

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", action="append", choices=sorted(PRESETS),
                        help="input size and network (repeatable); default both")
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2, help="solver threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--run", type=Path, help="a trained run instead of random weights")
    args = parser.parse_args(argv)
    if args.images < 1:
        parser.error("--images must be at least 1")
    import torch

    print(f"# copsctl predict throughput\n\n{time.strftime('%Y-%m-%d %H:%M')}, "
          f"{available_cpus()} CPUs available, torch {torch.__version__} with "
          f"{torch.get_num_threads()} threads, load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}\n")
    print("| input | model | device | images | batch | solver threads | images/s | read s/img | "
          "network s/img | solve s/img | write s/img |\n|---|---|---|---|---|---|---|---|---|---|---|")
    for preset in args.preset or list(PRESETS):
        size = PRESETS[preset][1]
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            model = None if args.run else _model_file(preset, tmp)
            images = _images(size, args.images, tmp)
            s = predict_images([images], tmp / "pred", run=args.run, weights=model,
                               size=max(size), batch_size=args.batch_size, device=args.device,
                               workers=args.workers)
            n = s["images"]
            what = str(args.run) if args.run else f"{PRESETS[preset][0]} (random weights)"
            print(f"| {size[0]}x{size[1]} | {what} | {s['device']} | {n} | {args.batch_size} | "
                  f"{s['workers']} | {s['images_per_s']:.3f} | {s['seconds_read'] / n:.3f} | "
                  f"{s['seconds_network'] / n:.3f} | {s['seconds_solve'] / n:.3f} | "
                  f"{s['seconds_write'] / n:.3f} |", flush=True)
    print(f"\nload average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    from . import run

    run(main)
