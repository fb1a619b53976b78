"""Open every image and label of a dataset once, before anything is written.

A corrupt or mis-sized file found only when training samples it, mid-run, costs the
run (and leaves checkpoints of a run that cannot go on); found up front it is one
line naming the file. ``copsctl pretrain`` and ``copsctl finetune`` run this check on
the splits they use before they write anything, and ``copsctl check-data`` runs it
for users.

Each sample is read exactly as training reads it (:meth:`PanopticReader.__getitem__`):
the image decoded, the panoptic PNG decoded, their sizes compared, every PNG segment id
looked up in the JSON's segment table. Threads read in parallel (image decoding
releases the GIL).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

from ..cpus import available_cpus
from .datasets import PanopticReader

__all__ = ["check_readers", "check_output_beside_data"]


def check_output_beside_data(path, option: str, readers: dict[str, PanopticReader], *,
                             inputs: dict | None = None) -> None:
    """:func:`copsctl.atomic.check_output` of an output file of a command that reads
    ``readers`` (``{split name: reader}``): it must not be a split's panoptic JSON, nor lie
    inside its panoptic PNG or image folder; ``inputs``: the command's other inputs and
    outputs."""
    from ..atomic import check_output

    check_output(path, option,
                 inputs={**(inputs or {}),
                         **{f"the {n} ground truth": r.json_path for n, r in readers.items()}},
                 within={**{f"the {n} panoptic PNGs": r.png_dir for n, r in readers.items()},
                         **{f"the {n} images": r.image_dir for n, r in readers.items()}})


def _open(item: tuple[PanopticReader, int]) -> None:
    reader, index = item
    reader[index]


def check_readers(readers: dict[str, PanopticReader], *, workers: int | None = None,
                  progress: Callable[[int, int], None] | None = None) -> dict:
    """Read every sample of every reader once; raise on the first bad one.

    Parameters
    ----------
    readers : dict
        ``{split name: PanopticReader}``, checked in this order.
    workers : int, optional
        Reading threads (default :func:`copsctl.cpus.available_cpus`).
    progress : callable, optional
        ``progress(done, total)`` after each sample.

    Returns
    -------
    dict
        ``images`` per split, ``total`` and ``seconds`` (wall time of the check).

    Raises
    ------
    InputError
        The first broken sample in split order, naming its file: unreadable or missing
        image or PNG, label size different from the image, a PNG segment id the JSON
        does not list.
    """
    workers = available_cpus() if workers is None else int(workers)
    items: Sequence[tuple[PanopticReader, int]] = [
        (reader, i) for reader in readers.values() for i in range(len(reader))]
    total = len(items)
    t0 = time.perf_counter()
    pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="check-data")
    try:
        # map() yields in order, so the error raised is the first bad sample's, whatever
        # the threads' timing.
        for done, _ in enumerate(pool.map(_open, items), start=1):
            if progress is not None:
                progress(done, total)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return {"images": {name: len(r) for name, r in readers.items()}, "total": total,
            "seconds": time.perf_counter() - t0}
