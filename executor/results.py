"""Where ``exec`` and ``evaluate`` write their results into ``--out`` (docs/design.md §8).

Media (``executor.media``: PNGs, per video PNG frames and a GIF) go into a temporary folder first
and are moved in file by file, so a failed run leaves no half-written output; an earlier exec or
evaluate run's outputs there are removed first (``outputs.clear_earlier_outputs``), with a note
(:func:`note_replaced`), so the folder never mixes two runs. JSON reports are written atomically.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

from ..outputs import clear_earlier_outputs


def note_replaced(folder: Path, removed: int) -> None:
    """The note that ``removed`` output files of an earlier run were cleared from ``folder``."""
    if removed:
        print(f"parastep: note: removed {removed} output file(s) of an earlier run from {folder}; it now holds this run's only",
              file=sys.stderr)


def write_exec_outputs(out_dir: Path, images_np, report: dict) -> None:
    """``exec``'s outputs: PNG per image (per video: PNG frames + a GIF) and report.json (``report``
    gains ``images`` and ``frames``); written into a temp folder, then moved in (report last)."""
    from .media import frame_count, write_media

    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".parastep-tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    names = write_media(tmp, images_np)
    report["images"] = names
    report["frames"] = frame_count(images_np)     # frames per video; null for images
    (tmp / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    note_replaced(out_dir, clear_earlier_outputs(out_dir))
    for name in names + ["report.json"]:
        (out_dir / name).parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp / name, out_dir / name)
    shutil.rmtree(tmp, ignore_errors=True)


def write_json_atomically(path: Path, data: dict) -> None:
    """``data`` as indented JSON at ``path``, through a temporary file renamed over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.parastep-tmp-{os.getpid()}"
    try:
        tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_evaluate_outputs(folder: Path, out, ref) -> tuple[list[str], "int | None"]:
    """The schedule's outputs into ``folder`` and the sequential ones into ``folder/sequential``,
    through a temporary folder moved in file by file; returns each sample's file and the frames."""
    from .media import frame_count, write_media

    arr, ref_arr = out.numpy(), ref.numpy()
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".parastep-tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        names = write_media(tmp, arr)
        ref_names = ["sequential/" + n for n in write_media(tmp / "sequential", ref_arr)]
        note_replaced(folder, clear_earlier_outputs(folder))
        for name in names + ref_names:
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp / name, folder / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    frames = frame_count(arr)
    per_sample = [n for n in names if n.endswith(".gif")] if frames is not None else names
    return per_sample, frames
