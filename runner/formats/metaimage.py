"""MetaImage (``.mha`` with inline data, ``.mhd`` with a detached data file): the completeness proof.

The header is text (``Key = Value`` lines, ``ElementDataFile`` last).  It is
parsed here, by hand, because SimpleITK does not say where the data starts nor
how many compressed bytes there are, and reading the voxels through it loads
the whole image (and hides a cut stream behind zeros); the geometry for the
estimate comes from SimpleITK (:mod:`runner.formats.headers`).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

from runner.errors import DamagedFileError
from runner.formats.streams import StreamError, inflated_size

_HEADER_LIMIT = 1 << 16
ELEMENT_SIZES = {"MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
                 "MET_LONG": 4, "MET_ULONG": 4, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4,
                 "MET_DOUBLE": 8}


@dataclass(frozen=True)
class MetaHeader:
    fields: dict[str, str]
    data_offset: int           # where the data starts in the header file (LOCAL) or -1
    data_file: str | None      # the detached data file (None: LOCAL)
    expected_bytes: int        # DimSize x channels x element size
    compressed: bool
    compressed_size: int | None
    header_size: int           # HeaderSize of a detached file (-1: the data is at its end)


def parse_header(raw: bytes, path) -> MetaHeader:
    """Parse the text header in ``raw`` (the first bytes of the file)."""
    fields: dict[str, str] = {}
    offset = 0
    data_file = None
    while True:
        end = raw.find(b"\n", offset)
        if end < 0:
            raise DamagedFileError(path, "not a MetaImage file (no ElementDataFile line in the header)")
        line = raw[offset:end].decode("latin-1").strip()
        offset = end + 1
        if not line:
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise DamagedFileError(path, f"not a MetaImage file (header line {line[:40]!r})")
        fields[key.strip()] = value.strip()
        if key.strip() == "ElementDataFile":
            data_file = value.strip()
            break
    try:
        ndims = int(fields.get("NDims", "0"))
        dims = [int(v) for v in fields["DimSize"].split()]
        channels = int(fields.get("ElementNumberOfChannels", "1"))
        element = fields["ElementType"]
    except (KeyError, ValueError):
        raise DamagedFileError(path, "MetaImage header lacks a valid NDims/DimSize/ElementType") from None
    if element not in ELEMENT_SIZES:
        raise DamagedFileError(path, f"MetaImage element type {element!r} is not supported")
    if ndims and len(dims) != ndims or not dims or any(d <= 0 for d in dims):
        raise DamagedFileError(path, f"MetaImage DimSize {dims} does not fit NDims {ndims}")
    compressed = fields.get("CompressedData", "False").lower() == "true"
    csize = fields.get("CompressedDataSize")
    local = data_file is not None and data_file.upper() == "LOCAL"
    return MetaHeader(fields=fields, data_offset=offset if local else -1,
                      data_file=None if local else data_file,
                      expected_bytes=math.prod(dims) * channels * ELEMENT_SIZES[element], compressed=compressed,
                      compressed_size=int(csize) if csize and csize.isdigit() else None,
                      header_size=int(fields.get("HeaderSize", "0") or 0))


def check_complete(path) -> MetaHeader:
    """Prove ``path`` (and its detached data file) holds all the data its header promises."""
    try:
        with open(path, "rb") as f:
            raw = f.read(_HEADER_LIMIT)
    except OSError as e:
        raise DamagedFileError(path, f"cannot read: {e.strerror or e}") from None
    if not raw:
        raise DamagedFileError(path, "empty file")
    header = parse_header(raw, path)
    if header.data_file is None:
        data_path, start = str(path), header.data_offset
    else:
        name = header.data_file
        if name.upper().startswith("LIST") or "%" in name or " " in name:
            # file lists / patterns: every listed slice file must exist (sizes are checked by SimpleITK's reader)
            return header
        data_path = os.path.join(os.path.dirname(str(path)), name)
        if not os.path.isfile(data_path):
            raise DamagedFileError(path, f"its data file {name} is missing")
        start = max(0, header.header_size)
    try:
        size = os.path.getsize(data_path)
        if not header.compressed:
            have = size - start if header.header_size >= 0 or header.data_file is None else size
            if have < header.expected_bytes:
                raise DamagedFileError(data_path, f"truncated: data has {max(0, have)} bytes, header says "
                                                  f"{header.expected_bytes}")
            return header
        if header.compressed_size is not None and size - start < header.compressed_size:
            raise DamagedFileError(data_path, f"truncated: {max(0, size - start)} compressed bytes, header says "
                                              f"CompressedDataSize {header.compressed_size}")
        with open(data_path, "rb") as f:
            f.seek(start)
            got = inflated_size(f, limit=header.compressed_size)
    except StreamError as e:
        raise DamagedFileError(data_path, f"{e} (header says {header.expected_bytes} bytes)") from None
    except OSError as e:
        raise DamagedFileError(data_path, f"cannot read: {e.strerror or e}") from None
    if got < header.expected_bytes:
        raise DamagedFileError(data_path, f"truncated: decompressed {got} bytes, header says {header.expected_bytes}")
    return header
