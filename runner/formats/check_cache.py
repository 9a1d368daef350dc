"""The pre-flight file check, done once per file version.

Reading every image and label to the end finds truncated downloads and
incomplete copies before a container starts, but it costs a full
decompression of the dataset on every run (0.7 s for the benchmark's 80 MB
dataset; minutes for a large one).  A file that was read to the end and found
complete stays complete as long as it is not changed, so this module remembers
the files that passed, keyed by what any change to a file changes: size,
modification time, inode-change time (``st_ctime``, which no user can set
back), inode and device.  Later runs (a retry, a resume, another
configuration, a shard) read only files that are new or changed.

The record lives in the user's cache (``~/.cache/nnrun/checked-files/``), one
JSON file per raw dataset folder; losing it only means reading the files
again.  Files that failed are never recorded.

With each file the record keeps what the check saw of its voxels (NIfTI: the
nonzero bounding box and count, ``runner.formats.check.check_one``), so the
memory estimate can use the crop and the foreground fraction of every case
without reading anything again (:func:`case_data_stats`).
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from runner.formats.check import check_files
from runner.rundir import write_json_atomic

# 2: the proof covers every format (version 1 recorded .mha, .nrrd, .png, .tif files that were only
# found to exist and be non-empty): records of version 1 are dropped, their files read again.
# 3: each file's record is {"key": [...], "stats": {...} | null} (the voxel statistics for the estimate).
CACHE_VERSION = 3


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "nnrun" / "checked-files"


@functools.lru_cache(maxsize=65536)
def _real(path: str) -> str:
    """``Path(path).resolve()`` as a string, once per file and process: the check and the estimate both look
    every file up (five resolutions a file, ~0.15 s on a 500-case dataset)."""
    return os.path.realpath(path)


def _key(path: Path) -> list | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


def cache_file(paths: list[Path], cache_dir: Path) -> Path:
    """One record per folder that holds the files (a raw dataset folder)."""
    common = os.path.commonpath([os.path.dirname(_real(str(p))) for p in paths]) if paths else ""
    return Path(cache_dir) / (hashlib.sha256(common.encode()).hexdigest()[:24] + ".json")


def _load(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
        if data.get("version") == CACHE_VERSION and isinstance(data.get("files"), dict):
            return data["files"]
    except (OSError, ValueError, AttributeError):
        pass
    return {}


def _save(path: Path, files: dict) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, {"version": CACHE_VERSION, "files": files}, indent=None)
    except OSError:
        pass          # a read-only home: the files are simply read again next time


def check_files_once(paths: Iterable, workers: int = 2, progress: Callable[[int, int], None] | None = None,
                     cache_dir: Path | None = None) -> list:
    """``runner.formats.check.check_files`` for the files not verified complete before in this very version."""
    paths = [Path(p) for p in paths]
    if not paths:
        return check_files(paths, workers=workers, progress=progress)
    record = cache_file(paths, cache_dir or default_cache_dir())
    known = _load(record)
    names = {p: _real(str(p)) for p in paths}
    keys = {names[p]: _key(p) for p in paths}
    todo = [p for p in paths if keys[names[p]] is None or _recorded_key(known, names[p]) != keys[names[p]]]
    skipped = len(paths) - len(todo)

    def shifted(done: int, total: int) -> None:
        if progress is not None:
            progress(skipped + done, skipped + total)

    if skipped and progress is not None:
        progress(skipped, len(paths))
    stats: dict = {}
    problems = check_files(todo, workers=workers, progress=shifted, stats=stats) if todo else []
    if any(getattr(p, "path", None) is None for p in problems):
        return problems                   # cannot tell which file failed: record nothing
    bad = {_real(str(p.path)) for p in problems}
    if todo:
        for p in todo:
            name = names[p]
            if name not in bad and keys[name] is not None and _key(p) == keys[name]:
                known[name] = {"key": keys[name], "stats": stats.get(str(p))}
        for name in bad:
            known.pop(name, None)
        _save(record, known)
    return problems


def _recorded_key(known: dict, name: str) -> list | None:
    entry = known.get(name)
    return entry.get("key") if isinstance(entry, dict) else None


def cached_stats(paths: Iterable, cache_dir: Path | None = None) -> dict[str, dict | None]:
    """The voxel statistics recorded for the files whose current version was checked (others: absent)."""
    paths = [Path(p) for p in paths]
    if not paths:
        return {}
    known = _load(cache_file(paths, cache_dir or default_cache_dir()))
    out: dict[str, dict | None] = {}
    for p in paths:
        name = _real(str(p))
        key = _key(p)
        if key is not None and _recorded_key(known, name) == key:
            entry = known[name]
            out[str(p)] = entry.get("stats") if isinstance(entry.get("stats"), dict) else None
    return out


def combine_case_stats(images: list[dict | None], label: dict | None) -> tuple[tuple[int, ...], float] | None:
    """(crop shape in x, y, z, foreground fraction) of one case from its files' statistics; None: unknown.

    The crop is nnU-Net's ``crop_to_nonzero``: the bounding box of "any channel
    is nonzero" = the union of the channels' boxes (its hole filling never
    changes a bounding box).  The foreground fraction is the label's nonzero
    voxels over the voxels of that box (labels outside the box are cut off by
    nnU-Net; they are assumed inside: an upper bound).  An all-zero image
    (nothing to crop to) is unknown.
    """
    if not images or any(s is None for s in images) or label is None:
        return None
    shapes = {tuple(s["shape"]) for s in images if s is not None} | {tuple(label["shape"])}
    if len(shapes) != 1:
        return None
    boxes = [s["bbox"] for s in images if s is not None and s.get("bbox")]
    if not boxes:
        return None
    lo = [min(b[a][0] for b in boxes) for a in range(3)]
    hi = [max(b[a][1] for b in boxes) for a in range(3)]
    shape = tuple(int(h - lo_) for lo_, h in zip(lo, hi))
    voxels = 1
    for n in shape:
        voxels *= n
    fg = min(1.0, int(label.get("nonzero") or 0) / max(1, voxels))
    return shape, fg


def case_data_stats(dataset, cache_dir: Path | None = None) -> dict[str, tuple[tuple[int, ...], float]]:
    """``{case_id: (crop shape x, y, z, foreground fraction)}`` for the cases the file check has seen in full.

    Reads only the check's record (nothing when the files were never checked
    or changed since): cases missing here are estimated from their headers.
    """
    files = [Path(f) for f in dataset.all_files()]
    stats = cached_stats(files, cache_dir)
    # With an ignore label nnU-Net samples locations of every label incl. background (and -1): all voxels.
    labels = (getattr(dataset, "dataset_json", None) or {}).get("labels") or {}
    every_voxel = isinstance(labels, dict) and "ignore" in labels
    out: dict[str, tuple[tuple[int, ...], float]] = {}
    for case in dataset.cases:
        if case.label is None:
            continue
        imgs = [stats.get(str(Path(p))) for p in case.images]
        got = combine_case_stats(imgs, stats.get(str(Path(case.label))))
        if got is not None:
            out[case.case_id] = (got[0], 1.0) if every_voxel else got
    return out
