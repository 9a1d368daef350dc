"""NIfTI-1 / NIfTI-2 header inspection and integrity checks, without nibabel or SimpleITK.

Why this exists: SimpleITK (nnU-Net's default reader) silently reads a
truncated ``.nii.gz`` and fills the missing voxels with zeros, and nnU-Net then
preprocesses the damaged case and exits 0.  nnrun therefore checks every input
file itself, before starting the container:

* :func:`read_header` parses only the header (the first 348 / 540 bytes of the
  decompressed stream).  It is cheap and is used for memory estimates on big
  datasets.  It cannot detect truncation: the header of a cut file still parses.
* :func:`check_file_complete` streams the whole file in fixed-size chunks
  (constant memory) and proves that the gzip stream is intact and that it holds
  as many bytes as the header promises.
* :func:`check_files` runs the latter over many files in a thread pool (zlib
  releases the GIL, so threads really run in parallel).
* :func:`write_nifti` writes small, valid NIfTI-1 files (synthetic data, tests).

Reading needs only the standard library; numpy is imported lazily by
:func:`write_nifti`.
"""
from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from runner.errors import DamagedFileError

if TYPE_CHECKING:  # numpy is only needed by write_nifti
    import numpy

NIFTI1_HEADER_SIZE = 348
NIFTI2_HEADER_SIZE = 540
# NIfTI-1 single files: 348-byte header + 4-byte extension flag, data at 352.
NIFTI1_VOX_OFFSET = 352

GZIP_MAGIC = b"\x1f\x8b"
# Compressed bytes read per step.  Decompressed output per step is capped too
# (deflate can expand ~1000x, e.g. all-zero label maps).
_READ_CHUNK = 1 << 20
_MAX_OUT_CHUNK = 4 << 20

# NIfTI datatype code -> (numpy kind + item size without byte order, bits per voxel).
_DATATYPES: dict[int, tuple[str, int]] = {
    2: ("u1", 8),        # DT_UINT8
    4: ("i2", 16),       # DT_INT16
    8: ("i4", 32),       # DT_INT32
    16: ("f4", 32),      # DT_FLOAT32
    32: ("c8", 64),      # DT_COMPLEX64
    64: ("f8", 64),      # DT_FLOAT64
    128: ("V3", 24),     # DT_RGB24 (3 x uint8 per voxel)
    256: ("i1", 8),      # DT_INT8
    512: ("u2", 16),     # DT_UINT16
    768: ("u4", 32),     # DT_UINT32
    1024: ("i8", 64),    # DT_INT64
    1280: ("u8", 64),    # DT_UINT64
    1792: ("c16", 128),  # DT_COMPLEX128
    2304: ("V4", 32),    # DT_RGBA32 (4 x uint8 per voxel)
}
# numpy dtype (byte order stripped) -> NIfTI datatype code, for writing.
_WRITE_CODES: dict[str, int] = {
    "u1": 2, "i2": 4, "i4": 8, "f4": 16, "f8": 64,
    "i1": 256, "u2": 512, "u4": 768, "i8": 1024, "u8": 1280,
}


@dataclass(frozen=True)
class ImageHeader:
    """What the header of one NIfTI file says.

    ``bitpix`` is derived from ``datatype`` (readers such as ITK trust the
    datatype, not the header's bitpix field).  ``vox_offset`` is where the
    data starts in the (decompressed) stream; like niftilib, an offset smaller
    than the header is read as "right after the header".  ``byte_order`` is
    ``"little"`` or ``"big"``.
    """

    path: str
    nifti_version: int
    shape: tuple[int, ...]
    spacing: tuple[float, ...]
    dtype: str
    bitpix: int
    vox_offset: int
    data_bytes: int
    byte_order: str

    @property
    def expected_size(self) -> int:
        """Bytes the (decompressed) file must hold at least: header, extensions, data."""
        return self.vox_offset + self.data_bytes


def is_gzip_name(path) -> bool:
    return str(path).lower().endswith(".gz")


def is_nifti_name(path) -> bool:
    name = str(path).lower()
    return name.endswith(".nii") or name.endswith(".nii.gz")


# --------------------------------------------------------------------------- reading

def read_header(path) -> ImageHeader:
    """Parse the NIfTI header of ``path`` without reading the image data.

    For ``.nii.gz`` only the first few kilobytes are decompressed.  Raises
    :class:`DamagedFileError` if the file is unreadable, not gzip although
    named ``.gz``, too short, not NIfTI, or has an unsupported datatype or
    non-positive dimensions.
    """
    try:
        if is_gzip_name(path):
            raw = _read_gzip_prefix(path, NIFTI2_HEADER_SIZE)
        else:
            with open(path, "rb") as f:
                raw = f.read(NIFTI2_HEADER_SIZE)
    except OSError as e:
        raise DamagedFileError(path, f"cannot read: {e.strerror or e}") from None
    return parse_header(raw, path)


def parse_header(raw: bytes, path="<bytes>") -> ImageHeader:
    """Parse the first bytes of a (decompressed) NIfTI stream."""
    if not raw:
        raise DamagedFileError(path, "empty file")
    if len(raw) < 4:
        raise DamagedFileError(path, f"too short for a NIfTI header ({len(raw)} bytes)")
    version, endian = _detect_version(raw, path)
    needed = NIFTI1_HEADER_SIZE if version == 1 else NIFTI2_HEADER_SIZE
    if len(raw) < needed:
        raise DamagedFileError(path, f"too short: NIfTI-{version} header needs {needed} bytes, file has {len(raw)}")
    if version == 1:
        fields = _parse_nifti1(raw, endian)
    else:
        fields = _parse_nifti2(raw, endian)
    return _header_from_fields(path, version, endian, needed, *fields)


def _detect_version(raw: bytes, path) -> tuple[int, str]:
    """NIfTI version and struct byte-order char, from sizeof_hdr and magic."""
    if raw[:2] == GZIP_MAGIC and not is_gzip_name(path):
        raise DamagedFileError(path, "not a NIfTI file: it is gzip-compressed but its name does not end in .gz")
    for endian in ("<", ">"):
        sizeof_hdr = struct.unpack(endian + "i", raw[:4])[0]
        if sizeof_hdr == NIFTI1_HEADER_SIZE:
            magic = raw[344:348]
            if len(raw) >= NIFTI1_HEADER_SIZE and magic in (b"n+1\0", b"ni1\0"):
                if magic == b"ni1\0":
                    raise DamagedFileError(path, "NIfTI-1 pair header (magic 'ni1'): the data is in a "
                                                 "separate .img file; a single-file .nii/.nii.gz is needed")
                return 1, endian
            if len(raw) >= NIFTI1_HEADER_SIZE:
                raise DamagedFileError(path, "not a NIfTI file (sizeof_hdr is 348 but the NIfTI-1 magic "
                                             "is missing: Analyze 7.5 or damaged header)")
            return 1, endian  # too short: parse_header reports it
        if sizeof_hdr == NIFTI2_HEADER_SIZE:
            magic = raw[4:8]
            if magic == b"n+2\0":
                return 2, endian
            if magic == b"ni2\0":
                raise DamagedFileError(path, "NIfTI-2 pair header (magic 'ni2'): the data is in a "
                                             "separate .img file; a single-file .nii/.nii.gz is needed")
            if len(raw) >= 8:
                raise DamagedFileError(path, "not a NIfTI file (sizeof_hdr is 540 but the NIfTI-2 magic is missing)")
            return 2, endian
    raise DamagedFileError(path, "not a NIfTI file (sizeof_hdr is neither 348 nor 540)")


def _parse_nifti1(raw: bytes, e: str):
    dim = struct.unpack_from(e + "8h", raw, 40)
    datatype = struct.unpack_from(e + "h", raw, 70)[0]
    pixdim = struct.unpack_from(e + "8f", raw, 76)
    vox_offset = struct.unpack_from(e + "f", raw, 108)[0]
    return dim, datatype, pixdim, vox_offset


def _parse_nifti2(raw: bytes, e: str):
    datatype = struct.unpack_from(e + "h", raw, 12)[0]
    dim = struct.unpack_from(e + "8q", raw, 16)
    pixdim = struct.unpack_from(e + "8d", raw, 104)
    vox_offset = struct.unpack_from(e + "q", raw, 168)[0]
    return dim, datatype, pixdim, vox_offset


def _header_from_fields(path, version: int, endian: str, header_size: int,
                        dim, datatype: int, pixdim, vox_offset) -> ImageHeader:
    ndim = dim[0]
    if not 1 <= ndim <= 7:
        raise DamagedFileError(path, f"invalid header: dim[0] (number of dimensions) is {ndim}, must be 1..7")
    shape = tuple(int(d) for d in dim[1:ndim + 1])
    if any(d <= 0 for d in shape):
        raise DamagedFileError(path, f"invalid header: dimensions {shape} must all be positive")
    if datatype not in _DATATYPES:
        raise DamagedFileError(path, f"unsupported NIfTI datatype code {datatype}")
    kind, bitpix = _DATATYPES[datatype]
    itemsize = bitpix // 8
    order_char = "|" if itemsize == 1 or kind.startswith("V") else endian
    if not (isinstance(vox_offset, int) or math.isfinite(vox_offset)):
        raise DamagedFileError(path, f"invalid header: vox_offset is {vox_offset}")
    # niftilib: a single-file offset inside the header means "right after it".
    offset = max(int(vox_offset), header_size)
    return ImageHeader(
        path=str(path),
        nifti_version=version,
        shape=shape,
        spacing=tuple(float(p) for p in pixdim[1:ndim + 1]),
        dtype=order_char + kind,
        bitpix=bitpix,
        vox_offset=offset,
        data_bytes=math.prod(shape) * itemsize,
        byte_order="little" if endian == "<" else "big",
    )


# --------------------------------------------------------------------------- gzip streaming

class _StreamError(Exception):
    """A gzip-level problem; converted to DamagedFileError with the path."""


def _iter_gzip(f, *, allow_trailing_zeros: bool = True) -> Iterator[bytes]:
    """Decompress gzip stream ``f`` in bounded chunks, checking CRC and length.

    Handles multi-member files (valid gzip).  Raises :class:`_StreamError` for a
    stream that ends before its end marker, corrupt deflate data, CRC/length
    mismatches and non-zero bytes after the last member.  Trailing zero bytes
    are accepted, as Python's gzip module does (tape padding).
    """
    first = f.read(_READ_CHUNK)
    if first[:2] != GZIP_MAGIC:
        raise _StreamError("not a gzip file (the name ends in .gz)" if first else "empty file")
    pending = first
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)  # gzip wrapper: zlib verifies CRC32 and ISIZE
    at_eof = False
    while True:
        if not pending and not at_eof:
            pending = f.read(_READ_CHUNK)
            at_eof = not pending
        try:
            # With no input left this still drains output zlib holds back.
            out = d.decompress(pending, _MAX_OUT_CHUNK)
        except zlib.error as e:
            raise _StreamError(_describe_zlib_error(e)) from None
        pending = d.unconsumed_tail
        if out:
            yield out
        if d.eof:
            rest = d.unused_data + pending
            while len(rest) < 2 and not at_eof:
                more = f.read(_READ_CHUNK)
                at_eof = not more
                rest += more
            if not rest:
                return
            if rest[:2] == GZIP_MAGIC:  # another member follows
                d = zlib.decompressobj(16 + zlib.MAX_WBITS)
                pending = rest
                continue
            _check_trailing(rest, f, allow_trailing_zeros)
            return
        if not out and not pending and at_eof:
            raise _StreamError("truncated: gzip stream ends early")


def _check_trailing(rest: bytes, f, allow_zeros: bool) -> None:
    total = 0
    while rest:
        total += len(rest)
        if not allow_zeros or rest.strip(b"\0"):
            # count the remaining bytes for the message, still in chunks
            while True:
                more = f.read(_READ_CHUNK)
                if not more:
                    break
                total += len(more)
            raise _StreamError(f"trailing garbage: {total} bytes after the end of the gzip stream")
        rest = f.read(_READ_CHUNK)


def _describe_zlib_error(e: zlib.error) -> str:
    text = str(e)
    if "incorrect data check" in text:
        return "corrupt: gzip CRC check failed (data differs from what was compressed)"
    if "incorrect length check" in text:
        return "corrupt: gzip length check failed"
    if "incorrect header check" in text or "unknown compression method" in text:
        return f"corrupt: invalid gzip header ({text})"
    return f"corrupt: compressed data is damaged ({text})"


def _read_gzip_prefix(path, n: int) -> bytes:
    """The first ``n`` decompressed bytes (fewer if the stream is shorter).

    Decompresses only as much as needed; a stream cut after its first ``n``
    bytes is *not* detected here (that is check_file_complete's job).
    """
    with open(path, "rb") as f:
        head = f.read(64 * 1024)
        if head[:2] != GZIP_MAGIC:
            raise DamagedFileError(path, "not a gzip file (the name ends in .gz)" if head else "empty file")
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        out = b""
        pending = head
        at_eof = False
        while len(out) < n and not d.eof:
            if not pending and not at_eof:
                pending = f.read(64 * 1024)
                at_eof = not pending
            try:
                piece = d.decompress(pending, n - len(out))
            except zlib.error as e:
                raise DamagedFileError(path, _describe_zlib_error(e)) from None
            pending = d.unconsumed_tail
            out += piece
            if not piece and not pending and at_eof:
                break  # cut short; the caller decides whether enough bytes arrived
        return out


# --------------------------------------------------------------------------- voxel statistics

def _read_scaling(path, header: ImageHeader) -> tuple[float, float]:
    """(scl_slope, scl_inter) as ITK and nibabel apply them: slope 0 or not finite means no scaling."""
    try:
        if is_gzip_name(path):
            raw = _read_gzip_prefix(path, NIFTI2_HEADER_SIZE)
        else:
            with open(path, "rb") as f:
                raw = f.read(NIFTI2_HEADER_SIZE)
        e = "<" if header.byte_order == "little" else ">"
        if header.nifti_version == 1:
            slope, inter = struct.unpack_from(e + "2f", raw, 112)
        else:
            slope, inter = struct.unpack_from(e + "2d", raw, 176)
    except (OSError, struct.error, DamagedFileError):
        return 1.0, 0.0
    if slope == 0 or not math.isfinite(slope):
        return 1.0, 0.0
    return float(slope), (float(inter) if math.isfinite(inter) else 0.0)


class NonzeroScan:
    """The nonzero bounding box and count of one image, fed its voxel bytes in stream order.

    NIfTI stores voxels in Fortran order (x fastest), so the stream is a
    sequence of x rows; each whole row block is viewed with numpy (no copy of
    the chunk) and only row/column ``any`` reductions are kept: memory is
    bounded by the chunk size.  A voxel counts as nonzero when its *scaled*
    value (``raw * scl_slope + scl_inter``, what SimpleITK and nibabel return)
    is not 0; NaN is nonzero, as in nnU-Net's ``data != 0``.

    :meth:`result` gives ``{"shape": [x, y, z], "bbox": [[lo, hi], ...] | None,
    "nonzero": count}`` (``hi`` exclusive, file axes x, y, z; ``bbox`` None when
    every voxel is zero).
    """

    def __init__(self, header: ImageHeader, dtype, zero: float):
        import numpy as np
        shape = tuple(header.shape[:3]) + (1,) * (3 - min(3, len(header.shape)))
        self.shape = shape
        self.dtype = np.dtype(dtype)
        self.zero = zero
        self.row_bytes = shape[0] * self.dtype.itemsize
        self.skip = header.vox_offset          # stream bytes before the voxels
        self.left = header.data_bytes          # voxel bytes still to come
        self.tail = b""                        # an incomplete row carried to the next chunk
        self.row = 0                           # rows (y, z) seen so far
        self.lo = [shape[0], shape[1], shape[2]]
        self.hi = [-1, -1, -1]
        self.count = 0

    @classmethod
    def for_header(cls, header: ImageHeader, scaling: tuple[float, float] = (1.0, 0.0)) -> NonzeroScan | None:
        if len(header.shape) > 3 and math.prod(header.shape[3:]) > 1:
            return None                        # a 4-D series: not one image per file
        kind = header.dtype.lstrip("<>|")
        if kind.startswith(("V", "c")):
            return None                        # RGB or complex voxels: no scalar "nonzero"
        slope, inter = scaling
        return cls(header, header.dtype, -inter / slope if inter else 0.0)

    def feed_stream(self, chunk: bytes) -> None:
        """Bytes of the decompressed file from its start (header included), in order."""
        view = memoryview(chunk)
        if self.skip:
            n = min(self.skip, len(view))
            self.skip -= n
            view = view[n:]
        self.feed_data(view)

    def feed_data(self, data) -> None:
        """Voxel bytes only, in order; bytes beyond the header's data size are ignored."""
        view = memoryview(data)[:max(0, self.left)]
        self.left -= len(view)
        if self.tail:
            need = self.row_bytes - len(self.tail)
            self.tail += bytes(view[:need])
            view = view[need:]
            if len(self.tail) < self.row_bytes:
                return
            self._rows(memoryview(self.tail))
            self.tail = b""
        whole = len(view) // self.row_bytes * self.row_bytes
        if whole:
            self._rows(view[:whole])
        if whole < len(view):
            self.tail = bytes(view[whole:])

    def _rows(self, view) -> None:
        import numpy as np
        nx, ny = self.shape[0], self.shape[1]
        a = np.frombuffer(view, dtype=self.dtype).reshape(-1, nx)
        mask = a != self.zero
        rows = np.flatnonzero(mask.any(axis=1))
        if rows.size:
            self.count += int(np.count_nonzero(mask))
            cols = np.flatnonzero(mask.any(axis=0))
            self.lo[0] = min(self.lo[0], int(cols[0]))
            self.hi[0] = max(self.hi[0], int(cols[-1]))
            r = rows + self.row
            ys = r % ny
            self.lo[1] = min(self.lo[1], int(ys.min()))
            self.hi[1] = max(self.hi[1], int(ys.max()))
            self.lo[2] = min(self.lo[2], int(r[0] // ny))
            self.hi[2] = max(self.hi[2], int(r[-1] // ny))
        self.row += a.shape[0]

    def result(self) -> dict:
        bbox = None if self.count == 0 else [[lo, hi + 1] for lo, hi in zip(self.lo, self.hi)]
        return {"shape": list(self.shape), "bbox": bbox, "nonzero": self.count}


# --------------------------------------------------------------------------- full checks

def check_file_complete(path) -> ImageHeader:
    """Read ``path`` to the end and verify it holds everything its header promises.

    ``.nii.gz``: the whole gzip stream is decompressed in chunks (constant
    memory) so that early ends, CRC/length errors and trailing garbage are
    found, and the decompressed size is compared with vox_offset + data size.
    ``.nii``: the file size is compared with vox_offset + data size.  Bytes
    beyond the data are accepted in both cases; only "too short" is an error.
    Returns the header; raises :class:`DamagedFileError` naming the problem.
    """
    return _check_complete(path, None)


def check_file_complete_with_stats(path) -> tuple[ImageHeader, dict | None]:
    """:func:`check_file_complete`, also returning the voxel statistics of :class:`NonzeroScan`.

    The statistics come from the same pass over the decompressed stream
    (``.nii.gz``); a ``.nii`` file's voxels are read once in chunks for them.
    None when they cannot be computed (a datatype without a scalar value, more
    than 3 dimensions with more than one volume).
    """
    header = read_header(path)
    scan = NonzeroScan.for_header(header, _read_scaling(path, header))
    _check_complete(path, scan, header)
    return header, (scan.result() if scan is not None else None)


def _check_complete(path, scan: NonzeroScan | None, header: ImageHeader | None = None) -> ImageHeader:
    header = header or read_header(path)
    if not is_gzip_name(path):
        try:
            size = os.path.getsize(path)
        except OSError as e:
            raise DamagedFileError(path, f"cannot read: {e.strerror or e}") from None
        _check_size(path, header, size)
        if scan is not None:
            try:
                with open(path, "rb") as f:
                    f.seek(header.vox_offset)
                    left = header.data_bytes
                    while left > 0:
                        piece = f.read(min(_READ_CHUNK, left))
                        if not piece:
                            break
                        left -= len(piece)
                        scan.feed_data(piece)
            except OSError as e:
                raise DamagedFileError(path, f"cannot read: {e.strerror or e}") from None
        return header
    total = 0
    try:
        with open(path, "rb") as f:
            for chunk in _iter_gzip(f):
                total += len(chunk)
                if scan is not None:
                    scan.feed_stream(chunk)
    except _StreamError as e:
        reason = str(e)
        if reason.startswith("truncated"):
            reason += f" (decompressed {total} of {header.expected_size} bytes)"
        raise DamagedFileError(path, reason) from None
    except OSError as e:
        raise DamagedFileError(path, f"cannot read: {e.strerror or e}") from None
    _check_size(path, header, total)
    return header


def _check_size(path, header: ImageHeader, size: int) -> None:
    if size < header.expected_size:
        have = max(0, size - header.vox_offset)
        raise DamagedFileError(path, f"truncated: data has {have} bytes, header says {header.data_bytes} "
                                     f"(shape {'x'.join(map(str, header.shape))}, {header.dtype})")


def check_other_file(path) -> None:
    """The only check for non-NIfTI files: exists, is a file, is non-empty, can be read."""
    p = Path(path)
    try:
        if not p.is_file():
            raise DamagedFileError(path, "missing or not a regular file")
        if p.stat().st_size == 0:
            raise DamagedFileError(path, "empty file")
        with open(p, "rb") as f:
            f.read(1)
    except OSError as e:
        raise DamagedFileError(path, f"cannot read: {e.strerror or e}") from None


def check_one(path) -> None:
    """check_file_complete for .nii/.nii.gz, check_other_file for any other ending."""
    if is_nifti_name(path):
        check_file_complete(path)
    else:
        check_other_file(path)


def check_files(paths: Iterable, workers: int = 2,
                progress: Callable[[int, int], None] | None = None,
                check: Callable[[str], object] | None = None) -> list[DamagedFileError]:
    """Check many files in parallel; return every problem found, in input order.

    ``.nii`` / ``.nii.gz`` files get the full :func:`check_file_complete`; files
    with any other ending only get an "exists, non-empty, readable" check
    here; ``check`` replaces :func:`check_one` (the pre-flight passes
    ``runner.formats.check.check_one``, which proves every format complete).
    ``progress(done, total)`` is called from the calling thread after each file.
    """
    paths = list(paths)
    total = len(paths)
    problems: list[DamagedFileError | None] = [None] * total
    if total == 0:
        return []
    with ThreadPoolExecutor(max_workers=max(1, int(workers)), thread_name_prefix="nnrun-check") as pool:
        futures = {pool.submit(_check_collect, p, check or check_one): i for i, p in enumerate(paths)}
        for done, fut in enumerate(as_completed(futures), start=1):
            problems[futures[fut]] = fut.result()
            if progress is not None:
                progress(done, total)
    return [p for p in problems if p is not None]


def _check_collect(path, check: Callable[[str], object]) -> DamagedFileError | None:
    try:
        check(path)
    except DamagedFileError as e:
        return e
    return None


# --------------------------------------------------------------------------- writing

def write_nifti(path, array: numpy.ndarray, spacing: tuple[float, ...]) -> None:
    """Write ``array`` as a little-endian NIfTI-1 single file (gzip if the name ends in .gz).

    ``array`` is indexed (x, y, z, ...) as NIfTI stores it; the data is written
    in Fortran order.  qform and sform both hold the diagonal affine
    diag(spacing) with zero origin, so SimpleITK / nibabel / nnU-Net read the
    spacing.  bool arrays are written as uint8.
    """
    import numpy as np

    arr = np.asarray(array)
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    key = arr.dtype.str[1:]
    if key not in _WRITE_CODES:
        raise ValueError(f"write_nifti: unsupported dtype {arr.dtype}")
    if not 1 <= arr.ndim <= 7:
        raise ValueError(f"write_nifti: arrays must have 1..7 dimensions, got {arr.ndim}")
    if len(spacing) != arr.ndim:
        raise ValueError(f"write_nifti: spacing {spacing} does not match array shape {arr.shape}")
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    header = nifti1_header_bytes(arr.shape, _WRITE_CODES[key], arr.dtype.itemsize * 8, spacing)
    opener = _open_gzip_for_writing if is_gzip_name(path) else (lambda p: open(p, "wb"))
    with opener(path) as f:
        f.write(header)
        f.write(b"\0\0\0\0")  # extension flag: no extensions
        if arr.ndim >= 2:
            # One slab per index of the last axis: Fortran order of the whole array
            # is the concatenation of the slabs' Fortran orders.  Avoids a full copy.
            for k in range(arr.shape[-1]):
                f.write(arr[..., k].tobytes(order="F"))
        else:
            f.write(arr.tobytes(order="F"))


def _open_gzip_for_writing(path):
    raw = open(path, "wb")
    # mtime=0 and no file name in the gzip header: same input gives identical bytes.
    gz = gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=1, mtime=0)
    return _ClosingBoth(gz, raw)


class _ClosingBoth:
    """Context manager closing the GzipFile and then the underlying file."""

    def __init__(self, gz, raw):
        self.gz, self.raw = gz, raw

    def write(self, data):
        return self.gz.write(data)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        try:
            self.gz.close()
        finally:
            self.raw.close()


def nifti1_header_bytes(shape: tuple[int, ...], datatype: int, bitpix: int,
                        spacing: tuple[float, ...]) -> bytes:
    """A 348-byte little-endian NIfTI-1 header for a single file (vox_offset 352)."""
    ndim = len(shape)
    dim = [ndim, *shape] + [1] * (7 - ndim)
    # pixdim[0] is qfac (+1: right-handed); unused trailing pixdims are 1 like nibabel writes.
    pixdim = [1.0, *(float(s) for s in spacing)] + [1.0] * (7 - ndim)
    sp3 = [float(s) for s in spacing[:3]] + [1.0] * (3 - min(3, ndim))
    hdr = bytearray(NIFTI1_HEADER_SIZE)
    struct.pack_into("<i", hdr, 0, NIFTI1_HEADER_SIZE)              # sizeof_hdr
    struct.pack_into("<8h", hdr, 40, *dim)                          # dim
    struct.pack_into("<hhh", hdr, 68, 0, datatype, bitpix)         # intent_code, datatype, bitpix
    struct.pack_into("<8f", hdr, 76, *pixdim)                      # pixdim
    struct.pack_into("<fff", hdr, 108, float(NIFTI1_VOX_OFFSET), 1.0, 0.0)  # vox_offset, scl_slope, scl_inter
    struct.pack_into("<B", hdr, 123, 2)                            # xyzt_units: NIFTI_UNITS_MM
    hdr[148:148 + 5] = b"nnrun"                                    # descrip
    struct.pack_into("<hh", hdr, 252, 1, 1)                        # qform_code, sform_code: scanner
    struct.pack_into("<6f", hdr, 256, 0, 0, 0, 0, 0, 0)            # quatern b,c,d (identity), qoffset
    struct.pack_into("<4f", hdr, 280, sp3[0], 0, 0, 0)             # srow_x
    struct.pack_into("<4f", hdr, 296, 0, sp3[1], 0, 0)             # srow_y
    struct.pack_into("<4f", hdr, 312, 0, 0, sp3[2], 0)             # srow_z
    hdr[344:348] = b"n+1\0"                                        # magic: single file
    return bytes(hdr)
