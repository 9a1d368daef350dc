"""The pre-flight completeness proof for every file ending nnU-Net 2.8.1 reads, dispatched by file name.

A cut or damaged file is a :class:`~runner.errors.DamagedFileError` naming it;
a valid file always passes.  Compressed data is read to its end in constant
memory; :func:`check_files` checks many files in parallel threads.

While NIfTI voxels stream past, :func:`check_one` also returns their nonzero
bounding box and count (``nifti.NonzeroScan``): what nnU-Net's crop to the
nonzero region and its foreground sampling depend on, for the memory
estimate.  Other formats return None ("unknown": the estimate stays
header-only for them).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from runner.errors import DamagedFileError
from runner.formats import metaimage, nifti, nrrd, png, tiff


def check_one(path) -> dict | None:
    """Prove ``path`` complete (else DamagedFileError); its voxel statistics when the format gives them."""
    name = str(path).lower()
    p = Path(path)
    if not p.is_file():
        raise DamagedFileError(path, "missing or not a regular file")
    if p.stat().st_size == 0:
        raise DamagedFileError(path, "empty file")
    if nifti.is_nifti_name(name):
        return nifti.check_file_complete_with_stats(path)[1]
    if name.endswith((".mha", ".mhd")):
        metaimage.check_complete(path)
    elif name.endswith((".nrrd", ".nhdr")):
        nrrd.check_complete(path)
    elif name.endswith(".png"):
        png.check_png(path)
    elif name.endswith(".bmp"):
        png.check_bmp(path)
    elif name.endswith((".tif", ".tiff")):
        tiff.check_tiff(path)
    elif name.endswith(".gipl"):
        _check_gipl(path)
    else:
        nifti.check_other_file(path)
    return None


def _check_gipl(path) -> None:
    """GIPL: a 256-byte header, then the raw voxels; SimpleITK reads the header (size and type)."""
    from runner.formats.headers import SIMPLEITK, read_info
    info = read_info(path, SIMPLEITK)
    expected = 256 + info.shape[0] * info.shape[1] * info.shape[2] * info.itemsize * info.components
    size = Path(path).stat().st_size
    if size < expected:
        raise DamagedFileError(path, f"truncated: {size} bytes, header and data need {expected}")


def check_files(paths: Iterable, workers: int = 2,
                progress: Callable[[int, int], None] | None = None,
                stats: dict | None = None) -> list[DamagedFileError]:
    """Every problem found, in input order (threads: zlib and bz2 release the GIL).

    ``stats``: filled with ``{str(path): check_one's statistics or None}`` for the files that passed.
    """
    if stats is None:
        return nifti.check_files(paths, workers=workers, progress=progress, check=check_one)
    out = stats

    def one(path) -> None:
        out[str(path)] = check_one(path)      # a dict item assignment: safe across the check's threads
    return nifti.check_files(paths, workers=workers, progress=progress, check=one)
