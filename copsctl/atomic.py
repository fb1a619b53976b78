"""Outputs that are never half-written, never lost, and never written over an input.

Every result file and folder copsctl writes goes through :func:`atomic_paths` (or its
one-output form :func:`atomic_path`); only a run's logs are appended to in place
(:mod:`copsctl.train.logging`, which drops what a resumed run writes again):

1. The output is built under a temporary name beside its final path,
   ``.NAME.<pid>-<random>.tmp`` (the caller writes a file or a folder there).
2. Only when every output of the ``with`` block is complete are they published, one
   after the other: a file by one ``os.replace``; a folder by swapping it with the old
   one in a single atomic exchange (Linux ``renameat2(RENAME_EXCHANGE)``; elsewhere the
   old folder is renamed aside to ``.NAME.<pid>-<random>.old`` and the new one renamed
   in), and only then is the old folder deleted.
3. On an error nothing is published and the temporaries are removed.

So at every moment the final path holds either the whole old result or the whole new
one, also under SIGKILL. What a killed process leaves behind carries its recognisable
name; the next writer of the same path (:func:`recover`) puts a folder renamed aside
back when the final path is missing and deletes the rest, but never touches a leftover
of a process that is still running.

Nothing is deleted that copsctl did not create: a file output refuses a path that names
a folder, and a folder output replaces an existing folder only after its command checked
that the folder is its own earlier output (:func:`check_output_folder`, recognised by the
manifest :data:`MANIFEST` it writes) or the user passed ``--overwrite``.
:func:`check_output` refuses, before any work, an output that is also one of the
command's inputs, and a location that cannot be written.

Fault injection: with ``COPSCTL_FAULT=<point>:<n>`` in the environment the process kills
itself with SIGKILL the ``n``-th time it reaches ``<point>`` (:func:`fault_point`), so
tests can stop a write inside its critical window.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import re
import secrets
import shutil
import signal
from pathlib import Path
from typing import Iterator, Mapping, Sequence

from .errors import InputError

__all__ = ["MANIFEST", "atomic_path", "atomic_paths", "write_json", "write_text", "recover",
           "is_leftover", "remove_leftovers", "check_output", "check_output_folder",
           "write_manifest", "fault_point", "damaged_zip_member"]

MANIFEST = ".copsctl-output.json"
"""The file in an output folder naming the command that wrote it and every file it wrote."""

# ---------------------------------------------------------------------------- fault points

_FAULT_COUNTS: dict[str, int] = {}


def fault_point(name: str) -> None:
    """SIGKILL this process here when ``COPSCTL_FAULT`` says so (``name:n``, n-th visit)."""
    spec = os.environ.get("COPSCTL_FAULT")
    if not spec:
        return
    point, _, nth = spec.rpartition(":")
    if point != name:
        return
    _FAULT_COUNTS[name] = _FAULT_COUNTS.get(name, 0) + 1
    if _FAULT_COUNTS[name] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)


# ---------------------------------------------------------------------------- leftovers

# .NAME.<pid>-<8 random>.tmp|old[.suffix]; the pid-less form is what earlier versions
# (tempfile.mkstemp) left behind.
_LEFTOVER = r"\.(?P<name>.+)\.(?:(?P<pid>\d+)-)?[a-z0-9_]{8}\.(?P<kind>tmp|old)(?:\.[A-Za-z0-9]+)?"
_LEFTOVER_RE = re.compile(_LEFTOVER)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _leftover_match(name: str):
    return _LEFTOVER_RE.fullmatch(name)


def _leftover_of(name: str) -> tuple[str, str, bool] | None:
    """``(output name, kind, writer still running)`` of a leftover's name, else None.

    A writer may itself write to a temporary path (a cost file inside a multi-output
    write), so a leftover's name may wrap another one's; it belongs to the innermost.
    """
    m = _leftover_match(name)
    if m is None:
        return None
    kind, alive = m["kind"], False
    while m is not None:
        alive = alive or (m["pid"] is not None and _pid_alive(int(m["pid"])))
        name = m["name"]
        m = _leftover_match(name)
    return name, kind, alive


def is_leftover(name: str) -> bool:
    """Whether a file name is a temporary of this module (of any output)."""
    return _leftover_match(name) is not None


def _own_leftovers(path: Path) -> list[tuple[Path, str]]:
    """Leftovers of ``path`` beside it, of processes no longer running: ``(path, kind)``."""
    parent = path.parent
    if not parent.is_dir():
        return []
    found = []
    for entry in parent.iterdir():
        of = _leftover_of(entry.name)
        if of is not None and of[0] == path.name and not of[2]:
            found.append((entry, of[1]))
    return sorted(found, key=lambda e: e[0].name)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def recover(path: str | os.PathLike) -> None:
    """Clean up what an interrupted write of ``path`` left behind.

    When ``path`` is missing and an old version was renamed aside, that version is put
    back; every other leftover (an unfinished new version, an old one already replaced)
    is deleted.
    """
    path = Path(path)
    found = _own_leftovers(path)
    if not os.path.lexists(path):
        aside = [p for p, kind in found if kind == "old"]
        if aside:
            os.replace(aside[-1], path)
            found = [(p, k) for p, k in found if p != aside[-1]]
    for p, _ in found:
        _remove(p)


def remove_leftovers(folder: str | os.PathLike) -> list[str]:
    """Run :func:`recover` for every output in ``folder`` with leftovers; return their names."""
    folder = Path(folder)
    names = sorted({of[0] for e in folder.iterdir()
                    if (of := _leftover_of(e.name)) is not None and not of[2]}) \
        if folder.is_dir() else []
    for name in names:
        recover(folder / name)
    return names


# ---------------------------------------------------------------------------- checks


def _shown(option: str | None, path: Path) -> str:
    return f"{option} {path}" if option else str(path)


def _writable_dir(path: Path, shown: str) -> None:
    """``path``'s folder can be created and written (probed by creating a file in it)."""
    folder = path.parent
    probe_in = folder
    while not probe_in.exists():
        if probe_in.parent == probe_in:
            break
        probe_in = probe_in.parent
    if not probe_in.is_dir():
        raise InputError(f"{shown}: cannot be created, {probe_in} is not a folder")
    try:
        probe = probe_in / f".copsctl-probe.{os.getpid()}-{secrets.token_hex(4)}"
        probe.touch(exist_ok=False)
        probe.unlink()
    except OSError as exc:
        raise InputError(f"{shown}: cannot write in {probe_in} "
                         f"({exc.strerror or type(exc).__name__})") from None


_Paths = Mapping[str, "str | os.PathLike | Sequence[str | os.PathLike] | None"]


def _named_paths(paths: _Paths | None) -> Iterator[tuple[str, str | os.PathLike]]:
    for name, value in (paths or {}).items():
        if value is None:
            continue
        yield from ((name, v) for v in ([value] if isinstance(value, (str, os.PathLike))
                                        else value))


def check_output(path: str | os.PathLike | None, option: str | None = None, *,
                 inputs: _Paths | None = None, within: _Paths | None = None,
                 folder: bool = False) -> Path | None:
    """Refuse a bad output location before any work is done; return the path.

    Parameters
    ----------
    path
        The output (None: nothing to check).
    option
        How the user named it (``"--json"``), for the message.
    inputs
        ``{option: path or paths}`` of the command's inputs and other outputs: the output
        must not be one of them, and a folder output must not hold one (replacing it would
        delete the input).
    within
        ``{option: folder or folders}`` whose content the command reads or writes as a
        whole (a PNG folder, an output folder): the output must not lie inside one.
    folder
        The output is a folder (else a file: an existing folder there is refused).

    Raises
    ------
    InputError
        A file output naming an existing folder (or the reverse), an output that is an
        input or lies inside such a folder, or a location that cannot be written.
    """
    if path is None:
        return None
    path = Path(path)
    shown = _shown(option, path)
    if not folder and path.is_dir():
        raise InputError(f"{shown}: is an existing folder; give a file path (nothing was "
                         "written)")
    if folder and path.exists() and not path.is_dir():
        raise InputError(f"{shown}: exists and is not a folder")
    resolved = path.resolve()
    for name, inp in _named_paths(inputs):
        inp_resolved = Path(inp).resolve()
        if inp_resolved == resolved or (folder and inp_resolved.is_relative_to(resolved)):
            what = "is also" if inp_resolved == resolved else "holds"
            raise InputError(f"{shown}: {what} {name} {inp}; an output must not overwrite "
                             "the command's inputs or other outputs (choose another path)")
    for name, inside in _named_paths(within):
        if resolved.is_relative_to(Path(inside).resolve()):
            raise InputError(f"{shown}: must not lie inside {name} {inside}, whose files the "
                             "command reads or writes as a whole (choose a path outside it)")
    _writable_dir(path, shown)
    return path


def _manifest_files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                  if not p.is_dir() and p.name != MANIFEST)


def write_manifest(folder: str | os.PathLike, command: str) -> None:
    """Record in ``folder`` (being built) that ``command`` wrote it and which files."""
    folder = Path(folder)
    with open(folder / MANIFEST, "w") as f:
        json.dump({"command": command, "files": _manifest_files(folder)}, f, indent=1)
        f.write("\n")


def check_output_folder(path: str | os.PathLike, option: str, command: str, *,
                        overwrite: bool = False,
                        inputs: Mapping[str, str | os.PathLike | None] | None = None) -> Path:
    """Check a folder output: absent, empty, ``command``'s own earlier output, or ``overwrite``.

    A folder is ``command``'s own output when its manifest names ``command`` and every
    file in it is listed there, so replacing it deletes nothing the user put there.
    """
    path = check_output(path, option, inputs=inputs, folder=True)
    if overwrite or not path.is_dir():
        return path
    entries = [e for e in path.iterdir() if not is_leftover(e.name)]
    if not entries:
        return path
    manifest = path / MANIFEST
    try:
        record = json.loads(manifest.read_text())
        listed = set(record["files"]) if record.get("command") == command else None
    except (OSError, ValueError, TypeError, KeyError):
        listed = None
    if listed is None:
        raise InputError(f"{option} {path}: folder is not empty and is not an earlier output of "
                         f"copsctl {command}; pass --overwrite to replace it, or choose a new "
                         "folder")
    foreign = [f for f in _manifest_files(path) if f not in listed]
    if foreign:
        raise InputError(f"{option} {path}: holds {foreign[0]!r}, which copsctl {command} did "
                         "not write; pass --overwrite to replace the folder anyway, or move "
                         "the file")
    return path


# ---------------------------------------------------------------------------- writing

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
_renameat2 = None


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux); False where the system cannot."""
    global _renameat2
    if _renameat2 is None:
        try:
            fn = ctypes.CDLL(None, use_errno=True).renameat2
            fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                           ctypes.c_uint]
            _renameat2 = fn
        except (AttributeError, OSError):
            _renameat2 = False
    if _renameat2 is False:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(a))


def _temp_name(path: Path, kind: str, suffix: str = "") -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.{kind}{suffix}")


def _publish(tmp: Path, path: Path) -> None:
    if not os.path.lexists(tmp):
        raise RuntimeError(f"nothing was written at {tmp}")
    if tmp.is_dir() and not tmp.is_symlink():
        if not path.exists():
            os.replace(tmp, path)
            return
        if not path.is_dir():
            raise InputError(f"{path}: exists and is not a folder; not replaced")
        if _exchange(tmp, path):
            old = tmp            # the exchange left the old folder under the temporary name
        else:
            old = _temp_name(path, "old")
            os.replace(path, old)
            fault_point("atomic.aside")
            os.replace(tmp, path)
        fault_point("atomic.swapped")
        _remove(old)
        return
    if path.is_dir() and not path.is_symlink():
        raise InputError(f"{path}: is an existing folder; give a file path (nothing was "
                         "written)")
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


@contextlib.contextmanager
def atomic_paths(paths: Sequence[str | os.PathLike],
                 suffixes: Sequence[str] | None = None) -> Iterator[list[Path]]:
    """Yield one temporary path per output; publish them all only once the block succeeds.

    The caller creates a file or a folder at each temporary path. Leftovers of earlier
    interrupted writes of the same outputs are cleaned up first (:func:`recover`). A
    ``suffix`` ends the temporary's name (e.g. ``".png"`` for writers that go by it).
    """
    paths = [Path(p) for p in paths]
    suffixes = list(suffixes) if suffixes is not None else [""] * len(paths)
    tmps: list[Path] = []
    try:
        for path, suffix in zip(paths, suffixes):
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                recover(path)
                tmp = _temp_name(path, "tmp", suffix)
                tmp.touch(exist_ok=False)
                tmp.unlink()
            except OSError as exc:
                raise InputError(f"{path}: cannot write there "
                                 f"({exc.strerror or type(exc).__name__})") from None
            tmps.append(tmp)
        yield list(tmps)
        fault_point("atomic.written")
        for i, (tmp, path) in enumerate(zip(tmps, paths)):
            if i:
                fault_point("atomic.between")
            _publish(tmp, path)
    finally:
        for tmp in tmps:
            if os.path.lexists(tmp):
                _remove(tmp)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """:func:`atomic_paths` for one output: yield its temporary path."""
    with atomic_paths([path], [suffix]) as (tmp,):
        yield tmp


def write_json(path: str | os.PathLike, obj, indent: int | None = 2) -> None:
    """Write ``obj`` as JSON to ``path`` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=indent)
            f.write("\n")


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)


# ---------------------------------------------------------------------------- reading back

def damaged_zip_member(path: str | os.PathLike) -> str | None:
    """Why the zip archive that ``torch.save`` wrote (a checkpoint, a weights file) fails
    its own CRC-32 checks, or None.

    torch's reader does not check them: a flipped byte inside a tensor loaded as a wrong
    weight. Files that are not zip archives (torch's legacy format) are left to
    ``torch.load``.
    """
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except zipfile.BadZipFile:  # not a zip archive, or its directory damaged: torch.load says
        return None
    except Exception as exc:  # a member cut short, garbled compressed data, encryption
        return f"its archive cannot be read ({type(exc).__name__})"
    # members are named ROOT/data/7 after the file the archive was written as
    return f"member {bad.split('/', 1)[-1]!r} fails its CRC-32 check" if bad is not None else None
