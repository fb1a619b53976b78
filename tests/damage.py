"""Damage a file the way a disk or a copy does, for the tests of the readers' checks."""

from __future__ import annotations

import zipfile
from pathlib import Path


def flip_member_byte(src: Path, dst: Path, suffix: str, at: int = 10) -> None:
    """Write ``src`` (a zip archive, as ``torch.save`` writes) to ``dst`` with one bit of
    byte ``at`` of the data of the member whose name ends in ``suffix`` flipped: the
    archive stays readable, only that member's CRC-32 no longer fits."""
    data = bytearray(src.read_bytes())
    with zipfile.ZipFile(src) as archive:
        member = next(i for i in archive.infolist() if i.filename.endswith(suffix))
    h = member.header_offset   # the local header: its name and extra field lengths
    start = h + 30 + int.from_bytes(data[h + 26: h + 28], "little") \
        + int.from_bytes(data[h + 28: h + 30], "little")
    data[start + at] ^= 0x40
    dst.write_bytes(bytes(data))
