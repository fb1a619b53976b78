"""A trained model on plain images: images -> network -> solver -> COCO panoptic folder.

The library side of ``copsctl predict``. No dataset, no ground truth and no cost cache:
every input image goes through the evaluation transform of :mod:`copsctl.data` (resize
so the longer side has ``size`` pixels, pad to a multiple of 32), the network gives its
costs (:func:`copsctl.costs.network.batch_costs`, with the model's cost transform), the
solver partitions them and :func:`copsctl.panoptic.solve.scored_prediction` maps the solution to
the input's own size, exactly as ``copsctl solve`` does. Output folder::

    OUT/panoptic_pred.json     images, annotations (segments_info with score), categories,
                               info.copsctl_predict (the settings, checked on a rerun)
    OUT/panoptic_pred/<stem>.png   RGB-encoded segment ids at the input's size
    OUT/overlays/<stem>.png    with overlay=True: the image, its segments, contours, names
    OUT/summary.json           timings of the last run

Image ids and file names come from the input names: the id of ``000000139.jpg`` is the
integer 139 (the COCO convention), the id of
``frankfurt_000000_000294_leftImg8bit.png`` is ``"frankfurt_000000_000294"`` (the
Cityscapes convention), so ``copsctl evaluate`` matches either ground truth; the id of
``street.jpg`` is the string ``"street"``.

**Small segments.** The recipe's thresholds (``data.thing_area_threshold``,
``data.stuff_area_threshold``) are areas at the resolution the network sees; an input
resized by a factor ``s`` gets thresholds multiplied by its area ratio ``1 / s**2`` (both
thresholds, in the input's own pixels), so a photo ten times the recipe's size loses
the same segments as one at the recipe's size.

**Streaming.** A reader thread decodes the next images while the network runs on the
device; each image's solve, post-processing and PNG writing runs in a pool of
``workers`` solver threads (the compiled solver releases the GIL), which consumes the
network's batches while the next one is computed. At most ``2 * workers + batch_size``
images wait for a solver thread, so memory stays bounded.

**What survives.** Every PNG is written under a temporary name and renamed; the JSON is
rewritten (atomically) every few seconds and whenever the run ends, also on Ctrl-C and on
an error. An image counts as finished when the JSON lists it and its PNG exists; a rerun
into the same folder skips finished images, and refuses a folder made with another
model or other settings.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import sys
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..atomic import atomic_path, check_output, is_leftover, write_json
from ..cpus import available_cpus, check_workers
from ..errors import InputError
from .format import Annotation, Category, PanopticWriter, Segment, image_entry

__all__ = ["IMAGE_SUFFIXES", "InputImage", "collect_inputs", "predict_images", "overlay_image",
           "PRED_JSON", "PRED_DIR", "OVERLAY_DIR", "SUMMARY_JSON"]

PRED_JSON = "panoptic_pred.json"
PRED_DIR = "panoptic_pred"
OVERLAY_DIR = "overlays"
SUMMARY_JSON = "summary.json"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
"""Suffixes (any case) of the images taken from a folder or a glob pattern."""
_CITYSCAPES_SUFFIX = "_leftImg8bit"

_FLUSH_SECONDS = 5.0
_INFO_KEY = "copsctl_predict"


# ---------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class InputImage:
    """One input: its path, its image id and the stem of its output PNGs."""

    path: Path
    stem: str

    @property
    def image_id(self) -> int | str:
        """The COCO id of a digits-only stem, else the stem without Cityscapes'
        ``_leftImg8bit`` (the ids of the two datasets' ground truth)."""
        if self.stem.isascii() and self.stem.isdigit():
            return int(self.stem)
        return self.stem.removesuffix(_CITYSCAPES_SUFFIX) or self.stem


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES


def collect_inputs(inputs: Sequence[str | os.PathLike]) -> list[InputImage]:
    """Expand image files, folders and glob patterns into the list of input images.

    A file is taken as given (its content decides whether it is an image); a folder gives
    its JPEG and PNG files (not recursing; not hidden ones, whose names start with ``.``,
    as a pattern skips them), sorted by name; a pattern with ``*``, ``?`` or ``[`` gives
    its matching image files, sorted (``**`` recurses). An input is given once even when
    named twice.

    Raises
    ------
    InputError
        No inputs, a path that does not exist, a folder or pattern without images, or two
        inputs with the same stem (their outputs would have the same name) or the same
        image id (``1.jpg`` and ``0001.jpg``).
    """
    if not inputs:
        raise InputError("give at least one INPUT (image file, folder or glob pattern)")
    paths: list[Path] = []
    for item in inputs:
        text = str(item)
        path = Path(text)
        if path.is_dir():
            found = sorted(p for p in path.iterdir()
                           if not p.name.startswith(".") and _is_image(p))
            if not found:
                raise InputError(f"{path}: folder holds no JPEG or PNG image")
        elif path.is_file():
            found = [path]
        elif any(c in text for c in "*?["):
            found = sorted(Path(p) for p in glob.glob(text, recursive=True) if _is_image(Path(p)))
            if not found:
                raise InputError(f"{text}: pattern matches no JPEG or PNG image")
        else:
            raise InputError(f"{path}: no such file or folder")
        paths.extend(found)
    images, by_stem, by_id = [], {}, {}
    for path in paths:
        key = path.resolve()
        image = InputImage(path=path, stem=path.stem)
        if image.stem in by_stem:
            if by_stem[image.stem] == key:
                continue
            raise InputError(f"{path}: has the same name stem {image.stem!r} as "
                             f"{by_stem[image.stem]} (outputs are named by the stem; rename one "
                             "of them)")
        if image.image_id in by_id:
            raise InputError(f"{path}: has the same image id {image.image_id!r} as "
                             f"{by_id[image.image_id]} (ids come from the names; rename one of "
                             "them)")
        by_stem[image.stem], by_id[image.image_id] = key, path
        images.append(image)
    return images


def _image_size(path: Path) -> tuple[int, int] | None:
    """(height, width) from an image's header, None when it cannot be read."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.height, im.width
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return None


# ---------------------------------------------------------------------------- output folder


def _holds_files(entry: Path) -> bool:
    """An entry of an output folder without its JSON is something: not a leftover, nor
    an empty (or leftovers-only) PNG or overlay folder."""
    if is_leftover(entry.name):
        return False
    if entry.name in (PRED_DIR, OVERLAY_DIR) and entry.is_dir():
        return any(not is_leftover(q.name) for q in entry.iterdir())
    return True


class _PredictionFolder:
    """The prediction folder: what is finished, and the JSON that lists it."""

    def __init__(self, out: Path, settings: dict, categories: Sequence[Category]):
        self.out = out
        self.settings = settings
        self.created = not out.exists()
        json_path = out / PRED_JSON
        earlier = []
        if json_path.is_file():
            earlier = self._load(json_path)
        elif out.is_dir() and any(_holds_files(p) for p in out.iterdir()):
            raise InputError(f"--out {out}: folder is not empty and holds no {PRED_JSON}; "
                             "refusing to write into it")
        self.writer = PanopticWriter(json_path, out / PRED_DIR, categories,
                                     info={_INFO_KEY: settings}, atomic=True)
        for entry, annotation in earlier:
            self.writer.record(entry, annotation)
        # Listed before the first PNG is written: a folder of PNGs without the JSON is never
        # one of predict's (it is refused above), also after a SIGKILL.
        self.flush()

    def _load(self, json_path: Path) -> list[tuple[dict, dict]]:
        """The finished images an earlier run listed: ``(images entry, annotation)``."""
        try:
            data = json.loads(json_path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputError(f"{json_path}: not valid JSON ({exc}); remove the folder or use "
                             "another --out") from None
        stored = data.get("info", {}).get(_INFO_KEY) if isinstance(data, dict) else None
        if not isinstance(stored, dict):
            raise InputError(f"{json_path}: was not written by copsctl predict; use another --out")
        for key, value in self.settings.items():
            if stored.get(key) != value:
                raise InputError(f"--out {self.out}: holds predictions made with {key} = "
                                 f"{stored.get(key)!r}, this run has {value!r}; use another "
                                 "--out or remove it")
        by_name = {a.get("file_name"): a for a in data.get("annotations", [])}
        earlier = []
        for entry in data.get("images", []):
            stem = Path(str(entry.get("file_name", ""))).stem
            ann = by_name.get(f"{stem}.png")
            if ann is not None and (self.out / PRED_DIR / f"{stem}.png").is_file():
                earlier.append((entry, ann))
        return earlier

    def finished(self, image: InputImage, overlay: bool) -> bool:
        """The image is listed, from a file of the same name and size, with its PNGs."""
        name = f"{image.stem}.png"
        if name not in self.writer:
            return False
        entry = self.writer.images[name]
        if entry.get("file_name") != image.path.name or (
                (entry.get("height"), entry.get("width")) != _image_size(image.path)):
            return False
        return not overlay or (self.out / OVERLAY_DIR / name).is_file()

    def add(self, entry: dict, annotation: dict) -> None:
        """List an image whose PNG is written; rewrite the JSON every few seconds."""
        self.writer.record(entry, annotation)
        self._dirty = True
        if time.monotonic() - self._last_flush > _FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        """Rewrite the JSON (atomically) with every finished image."""
        self.writer.write_json()
        self._last_flush = time.monotonic()
        self._dirty = False


# ---------------------------------------------------------------------------- overlays


def overlay_image(image: np.ndarray, ids: np.ndarray, segments: Sequence[Segment],
                  categories: Sequence[Category]) -> np.ndarray:
    """The image with its panoptic labelling, instance contours and class names.

    Colours and contours are those of :func:`copsctl.visualize.overlay.panoptic_overlay`;
    each segment covering at least 0.2 % of the image is labelled with its class name
    (and score, when it has one) at a pixel inside it.

    Parameters
    ----------
    image : (H, W, 3) uint8 ndarray
    ids : (H, W) integer ndarray
        Segment ids, 0 = void.
    segments : sequence of Segment
        The segment table of ``ids``.
    categories : sequence of Category

    Returns
    -------
    (H, W, 3) uint8 ndarray
    """
    from PIL import Image, ImageDraw

    from ..visualize.overlay import panoptic_overlay

    painted = panoptic_overlay(ids, segments, categories, image=image, alpha=0.5)
    H, W = ids.shape
    names = {int(c.id): c.name for c in categories}
    canvas = Image.fromarray(painted)
    draw = ImageDraw.Draw(canvas)
    min_area = 0.002 * H * W
    for s in segments:
        if s.area < min_area:
            continue
        x, y, bw, bh = s.bbox
        # A pixel of the segment near the middle of its bounding box: the median row of the
        # box's pixels of that segment, then the median column on that row.
        box = ids[y:y + bh, x:x + bw] == s.id
        rows = np.flatnonzero(box.any(axis=1))
        row = rows[len(rows) // 2]
        cols = np.flatnonzero(box[row])
        px, py = x + int(cols[len(cols) // 2]), y + int(row)
        label = names.get(int(s.category_id), str(s.category_id))
        if s.score is not None:
            label = f"{label} {s.score:.2f}"
        draw.text((px, py), label, fill=(255, 255, 255), anchor="mm", stroke_width=1,
                  stroke_fill=(0, 0, 0))
    return np.asarray(canvas)


# ---------------------------------------------------------------------------- the run


@dataclass
class _Solved:
    image_entry: dict
    annotation: dict
    solve_seconds: float
    write_seconds: float


def _solve_one(image: InputImage, node: np.ndarray, edge: np.ndarray, rgb: np.ndarray | None,
               image_size: tuple[int, int], area_scale: float, *, distances, partitionable,
               categories, thing_area: float, stuff_area: float, options,
               writer: PanopticWriter, out: Path) -> _Solved:
    from ..costs.cache import solver_problem
    from .solve import scored_prediction
    from ..solver import solve_amwc

    t0 = time.perf_counter()
    problem = solver_problem(node, edge, distances, partitionable)
    result = solve_amwc(*problem, options=options)
    pred = scored_prediction(result, node, categories, image_size,
                             thing_area=thing_area * area_scale,
                             stuff_area=stuff_area * area_scale)
    t1 = time.perf_counter()
    name = f"{image.stem}.png"
    writer.write_png(name, pred.ids)
    if rgb is not None:
        from PIL import Image

        picture = overlay_image(rgb, pred.ids, pred.segments, categories)
        with atomic_path(out / OVERLAY_DIR / name, suffix=".png") as tmp:
            Image.fromarray(picture).save(tmp, format="PNG", compress_level=1)
    return _Solved(image_entry=image_entry(image.image_id, image.path.name, image_size),
                   annotation=Annotation(image.image_id, name, pred.segments).to_json(),
                   solve_seconds=t1 - t0, write_seconds=time.perf_counter() - t1)


def _network_input(rgb: np.ndarray, longer_side: int, pad_multiple: int):
    """Evaluation transform of :class:`copsctl.data.loader.PanopticDataset` for one image:
    (3, h, w) float32 normalised canvas and the scaled image size."""
    from ..data.transforms import apply_placement, eval_placement, normalize_image

    placement = eval_placement(image_size=rgb.shape[:2], longer_side=longer_side,
                               pad_multiple=pad_multiple)
    canvas, _ = apply_placement(rgb, np.zeros(rgb.shape[:2], dtype=np.uint8), placement)
    return normalize_image(canvas), placement.scaled_size


def _weights_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def predict_images(inputs: Sequence[str | os.PathLike], out: str | os.PathLike, *,
                   run: str | os.PathLike | None = None,
                   weights: str | os.PathLike | None = None, size: int | None = None,
                   batch_size: int = 4, device: str = "auto", workers: int | None = None,
                   overlay: bool = False, skip_bad: bool = False, amp: bool = True,
                   json_out: str | os.PathLike | None = None,
                   progress: Callable[[int, int], None] | None = None) -> dict:
    """Predict the panoptic segmentation of plain images with a trained model.

    Parameters
    ----------
    inputs : sequence of str or path-like
        Image files, folders and glob patterns (:func:`collect_inputs`).
    out : path-like
        The prediction folder (module docstring); a rerun skips finished images.
    run, weights : path-like
        A run folder of ``copsctl pretrain`` / ``finetune``, or a checkpoint or model file
        (``copsctl export``); exactly one.
    size : int, optional
        Resize so the longer side has this many pixels (default: the recipe's
        ``data.val_size``, else the longer side of ``data.crop_size``).
    batch_size : int
        Images per forward pass.
    device : {"auto", "cpu", "cuda"}
    workers : int, optional
        Solver threads (default: the recipe's ``solver.workers`` when positive, else all
        CPUs).
    overlay : bool
        Also write ``OUT/overlays/<stem>.png``.
    skip_bad : bool
        Go on past unreadable images (listed in the result) instead of stopping.
    amp : bool
        float16 autocast on CUDA.
    json_out : path-like, optional
        Where the caller will write the summary (``--json``): checked against the inputs
        and ``out`` before any work, not written here.
    progress : callable, optional
        ``progress(done, total)`` after each finished image (``total``: the images this
        run has to do).

    Returns
    -------
    dict
        ``out``, ``pred_json``, ``inputs``, ``images`` (finished in this run),
        ``skipped`` (already finished), ``bad`` (unreadable files, with ``skip_bad``),
        ``seconds``, ``images_per_s``, ``seconds_read`` / ``seconds_network`` (main and
        reader thread), ``seconds_solve`` / ``seconds_write`` (summed over solver
        threads), ``size``, ``workers``, ``batch_size``, ``device``, ``weights``.

    Raises
    ------
    InputError
        Bad arguments, a model file that cannot be read, or (without ``skip_bad``) an
        unreadable image; finished images are kept and listed either way.
    """
    import torch

    from ..costs.network import batch_costs
    from ..data.datasets import read_image
    from ..train.checkpoint import checkpoint_class_table, resolve_model, run_inputs
    from ..train.distributed import resolve_device

    t_start = time.perf_counter()
    out = Path(out)
    if batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {batch_size}")
    workers = check_workers(workers)
    if size is not None and size < 32:
        raise InputError(f"--size must be at least 32 pixels, got {size}")
    images = collect_inputs(inputs)
    named = {"INPUT": [im.path for im in images], "--run": run_inputs(run), "--weights": weights}
    check_output(json_out, "--json", inputs=named, within={"--out": out})
    check_output(out, "--out", folder=True, inputs=named)
    dev = resolve_device(device, option="--device")
    model, ckpt, cfg, path = resolve_model(run, weights, device=dev)
    table = checkpoint_class_table(ckpt)
    if table is None:
        raise InputError(f"{path}: holds no class table (a bare state dict); predict needs the "
                         "class names: use a checkpoint of copsctl pretrain/finetune or a model "
                         "file of copsctl export")
    categories = table.to_categories()
    if size is None:
        size = int(cfg.data.val_size or max(cfg.data.crop_size))
    options = cfg.solver.options()
    if workers is None:
        workers = cfg.solver.workers or available_cpus()
    workers = int(workers)
    thing_area = float(cfg.data.thing_area_threshold)
    stuff_area = float(cfg.data.stuff_area_threshold)
    settings = {"model": _weights_digest(path), "recipe": cfg.hash(), "size": int(size),
                "thing_area_threshold": thing_area, "stuff_area_threshold": stuff_area}
    folder = _PredictionFolder(out, settings, categories)
    if overlay:
        (out / OVERLAY_DIR).mkdir(exist_ok=True)
    todo = [im for im in images if not folder.finished(im, overlay)]
    solve_kwargs = dict(distances=model.distances,
                        partitionable=np.array([c.isthing for c in categories], dtype=bool),
                        categories=categories, thing_area=thing_area, stuff_area=stuff_area,
                        options=options, writer=folder.writer, out=out)
    pad_multiple, stride = 32, 4  # the evaluation transform of PanopticDataset

    def decode(image: InputImage):
        t0 = time.perf_counter()
        try:
            rgb = read_image(image.path)
        except InputError as exc:
            return image, None, None, None, str(exc), time.perf_counter() - t0
        x, scaled = _network_input(rgb, size, pad_multiple)
        return image, rgb, x, scaled, None, time.perf_counter() - t0

    stats = {"read": 0.0, "network": 0.0, "solve": 0.0, "write": 0.0}
    bad: list[str] = []
    done = 0
    pending: deque[Future] = deque()
    max_pending = 2 * workers + batch_size
    error: InputError | None = None

    def collect(future: Future, report: bool = True) -> None:
        nonlocal done
        solved = future.result()
        folder.add(solved.image_entry, solved.annotation)
        stats["solve"] += solved.solve_seconds
        stats["write"] += solved.write_seconds
        done += 1
        if progress is not None and report:
            progress(done, len(todo))

    def run_batch(batch: list) -> None:
        t0 = time.perf_counter()
        hmax = max(x.shape[1] for _, _, x, _ in batch)
        wmax = max(x.shape[2] for _, _, x, _ in batch)
        # Padding to the largest canvas with 0 (the normalised mean), as collate_panoptic does.
        stacked = np.zeros((len(batch), 3, hmax, wmax), dtype=np.float32)
        for b, (_, _, x, _) in enumerate(batch):
            stacked[b, :, :x.shape[1], :x.shape[2]] = x
        with torch.inference_mode():
            node, edge = batch_costs(model, torch.from_numpy(stacked), device=dev, amp=amp)
        stats["network"] += time.perf_counter() - t0
        for b, (image, rgb, _, (sh, sw)) in enumerate(batch):
            h, w = -(-sh // stride), -(-sw // stride)
            H, W = rgb.shape[:2]
            while len(pending) >= max_pending:
                collect(pending.popleft())
            pending.append(pool.submit(
                _solve_one, image, np.ascontiguousarray(node[b, :, :h, :w]),
                np.ascontiguousarray(edge[b, :, :h, :w]), rgb if overlay else None, (H, W),
                (H * W) / (sh * sw), **solve_kwargs))

    reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="copsctl-read")
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="copsctl-solve")
    queue = iter(todo)
    ahead: deque[Future] = deque()

    def read_ahead() -> None:
        # Two batches of images decode in the reader thread while the network runs.
        while len(ahead) < 2 * batch_size:
            image = next(queue, None)
            if image is None:
                return
            ahead.append(reader.submit(decode, image))

    try:
        read_ahead()
        batch: list = []
        while ahead:
            image, rgb, x, scaled, message, seconds = ahead.popleft().result()
            read_ahead()
            stats["read"] += seconds
            if message is None:
                if batch and x.shape != batch[0][2].shape:
                    # Only images of one padded size share a batch: padding them to a
                    # common size would make an image's costs depend on its neighbours.
                    run_batch(batch)
                    batch = []
                batch.append((image, rgb, x, scaled))
            elif skip_bad:
                bad.append(message)
            else:
                error = InputError(message)
            if batch and (len(batch) == batch_size or not ahead or error is not None):
                run_batch(batch)
                batch = []
            if error is not None:
                break
        while pending:
            collect(pending.popleft())
    finally:
        for f in pending:
            f.cancel()
        reader.shutdown(wait=True, cancel_futures=True)
        pool.shutdown(wait=True, cancel_futures=True)
        # Keep what the solver threads finished before an error or Ctrl-C ended the run;
        # a folder this run made and finished nothing in is removed.
        for f in pending:
            if f.done() and not f.cancelled() and f.exception() is None:
                collect(f, report=False)
        if folder.created and not len(folder.writer) and (
                error is not None or sys.exc_info()[0] is not None):
            shutil.rmtree(out, ignore_errors=True)
        else:
            folder.flush()
    if error is not None:
        raise error
    seconds = time.perf_counter() - t_start
    summary = {"out": str(out), "pred_json": str(out / PRED_JSON), "inputs": len(images),
               "images": done, "skipped": len(images) - len(todo), "bad": bad,
               "seconds": seconds, "images_per_s": done / seconds if seconds > 0 else 0.0,
               "seconds_read": stats["read"], "seconds_network": stats["network"],
               "seconds_solve": stats["solve"], "seconds_write": stats["write"],
               "size": int(size), "workers": workers, "batch_size": int(batch_size),
               "device": str(dev), "weights": str(path)}
    write_json(out / SUMMARY_JSON, summary)
    return summary

