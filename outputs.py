"""Where the commands write: checked before any work is done, so that an hour of profiling never
ends in "cannot write", and cleared of an earlier run's outputs so that a folder never mixes two.

- :func:`check_out_file` (``profile --out``, ``--plot``): not a folder, its folder exists and
  takes a new file, a name the file system accepts;
- :func:`check_out_dir` (``exec`` / ``evaluate --out``): not a file nor under one, the nearest
  existing folder takes a new entry, names the file system accepts;
- :func:`clear_earlier_outputs`: removes what an earlier ``exec`` or ``evaluate`` wrote into a
  folder (only the names they write), so the new run's files are the only ones there.

No heavy imports: every stage may use it (like ``errors``).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

from .errors import UserError

__all__ = ["check_out_dir", "check_out_file", "clear_earlier_outputs"]


def _name_max(folder: Path) -> int:
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def _probe(folder: Path, *, flag: str, out: str) -> None:
    """Create and remove one temporary entry in ``folder``: the only test of "writable" that holds
    for root, read-only mounts and pseudo file systems alike."""
    try:
        fd, name = tempfile.mkstemp(prefix=".parastep-probe-", dir=folder)
    except OSError as exc:
        raise UserError(f"{flag} {out}: cannot write into {folder} ({exc.strerror or exc}); pass a writable {flag} path") from None
    os.close(fd)
    try:
        os.unlink(name)
    except OSError:
        pass


def _check_names(path: Path, existing: Path, *, flag: str, out: str) -> None:
    limit = _name_max(existing)
    for part in path.relative_to(existing).parts if path != existing else ():
        if len(os.fsencode(part)) > limit:
            raise UserError(f"{flag} {out}: the name '{part[:40]}...' is {len(os.fsencode(part))} bytes, longer than the "
                            f"{limit} this file system allows; pass a shorter {flag} path")


def _kind(path: Path) -> str:
    """'dir', 'file' or 'none' (missing, or a name the system will not even look up: too long)."""
    try:
        return "dir" if path.is_dir() else "file" if path.exists() else "none"
    except OSError:
        return "none"


def check_out_file(out: str, *, flag: str = "--out") -> None:
    """Refuse, in one line, a file path the command could not write at its end."""
    path = Path(out)
    folder = path.parent
    kind = _kind(folder)
    if kind == "none":
        raise UserError(f"{flag} {out}: folder {folder} does not exist; create it or pass another path")
    if kind == "file":
        raise UserError(f"{flag} {out}: {folder} is a file, not a folder; pass another path")
    _check_names(path, folder, flag=flag, out=out)
    if _kind(path) == "dir":
        raise UserError(f"{flag} {out}: is a folder; pass a file path, e.g. {path / 'out.yaml'}")
    _probe(folder, flag=flag, out=out)


def check_out_dir(out: str, *, flag: str = "--out") -> None:
    """Refuse, in one line, an output folder that is a file (or under one), or that could not be
    created or written."""
    path = Path(out)
    for p in (path, *path.parents):       # ends at '.' or '/', which exist
        kind = _kind(p)
        if kind == "file":
            raise UserError(f"{flag} {out}: {p} is an existing file, not a folder; choose another {flag} folder")
        if kind == "dir":
            _check_names(path, p, flag=flag, out=out)
            _probe(p, flag=flag, out=out)
            return


# what exec and evaluate write (executor.media.write_media, report.json, quality.json, sequential/)
_MEDIA = re.compile(r"(image|video)_\d{3,}\.(png|gif)")
_VIDEO_DIR = re.compile(r"video_\d{3,}")
_FRAME = re.compile(r"frame_\d{3,}\.png")


def _clear_media(folder: Path) -> int:
    removed = 0
    if not folder.is_dir():
        return 0
    for entry in folder.iterdir():
        if entry.is_file() and (_MEDIA.fullmatch(entry.name) or entry.name in ("report.json", "quality.json")):
            entry.unlink()
            removed += 1
        elif entry.is_dir() and _VIDEO_DIR.fullmatch(entry.name):
            frames = [f for f in entry.iterdir() if f.is_file() and _FRAME.fullmatch(f.name)]
            for f in frames:
                f.unlink()
            removed += len(frames)
            if not any(entry.iterdir()):
                entry.rmdir()
    return removed


def clear_earlier_outputs(folder: Path) -> int:
    """Remove an earlier exec/evaluate run's outputs from ``folder`` (images, videos and their
    frames, ``report.json``, ``quality.json``, the ``sequential/`` outputs); other files stay.
    Returns how many files were removed."""
    removed = _clear_media(folder)
    seq = folder / "sequential"
    if seq.is_dir():
        removed += _clear_media(seq)
        if not any(seq.iterdir()):
            shutil.rmtree(seq, ignore_errors=True)
    return removed
