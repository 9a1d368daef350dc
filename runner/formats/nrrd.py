"""NRRD (``.nrrd``, attached or detached data; raw, gzip and bzip2 encodings): the completeness proof.

The header (``NRRD000X`` then ``field: value`` lines up to a blank line) is
parsed here, by hand, because SimpleITK does not tell where the data starts or
how it is encoded, and reading the voxels through it loads the whole image; the
geometry for the estimate comes from SimpleITK (:mod:`runner.formats.headers`).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

from runner.errors import DamagedFileError
from runner.formats.streams import StreamError, bunzipped_size, inflated_size

_HEADER_LIMIT = 1 << 16
_TYPE_SIZES = {
    1: ("signed char", "int8", "int8_t", "uchar", "unsigned char", "uint8", "uint8_t"),
    2: ("short", "short int", "signed short", "signed short int", "int16", "int16_t", "ushort",
        "unsigned short", "unsigned short int", "uint16", "uint16_t"),
    4: ("int", "signed int", "int32", "int32_t", "uint", "unsigned int", "uint32", "uint32_t", "float"),
    8: ("longlong", "long long", "long long int", "signed long long", "signed long long int", "int64",
        "int64_t", "ulonglong", "unsigned long long", "unsigned long long int", "uint64", "uint64_t", "double"),
}
TYPE_SIZES = {name: size for size, names in _TYPE_SIZES.items() for name in names}


@dataclass(frozen=True)
class NrrdHeader:
    fields: dict[str, str]
    data_offset: int          # end of the header in the .nrrd file
    data_file: str | None     # detached data file (None: attached)
    encoding: str             # raw, gzip, bzip2, ascii, hex
    expected_bytes: int       # product of sizes x type size (decoded)
    byte_skip: int


def parse_header(raw: bytes, path) -> NrrdHeader:
    if not raw.startswith(b"NRRD000"):
        raise DamagedFileError(path, "not a NRRD file (no NRRD000X magic)")
    fields: dict[str, str] = {}
    offset = raw.find(b"\n") + 1
    while True:
        end = raw.find(b"\n", offset)
        if end < 0:
            raise DamagedFileError(path, "NRRD header has no end (blank line) in its first 64 KiB")
        line = raw[offset:end].decode("latin-1").rstrip("\r")
        offset = end + 1
        if not line:
            break
        if line.startswith("#") or ":=" in line:
            continue
        key, sep, value = line.partition(": ")
        if sep:
            fields[key.strip().lower()] = value.strip()
            if key.strip().lower() in ("data file", "datafile"):
                break               # a detached header may end here (no blank line before EOF)
    try:
        sizes = [int(s) for s in fields["sizes"].split()]
        kind = fields["type"].lower()
        encoding = fields["encoding"].lower()
    except (KeyError, ValueError):
        raise DamagedFileError(path, "NRRD header lacks valid sizes/type/encoding") from None
    if kind == "block":
        itemsize = int(fields.get("blocksize", fields.get("block size", "1")))
    elif kind in TYPE_SIZES:
        itemsize = TYPE_SIZES[kind]
    else:
        raise DamagedFileError(path, f"NRRD type {kind!r} is not supported")
    encoding = {"gz": "gzip", "bz2": "bzip2", "txt": "ascii", "text": "ascii"}.get(encoding, encoding)
    return NrrdHeader(fields=fields, data_offset=offset, data_file=fields.get("data file", fields.get("datafile")),
                      encoding=encoding, expected_bytes=math.prod(sizes) * itemsize,
                      byte_skip=int(fields.get("byte skip", fields.get("byteskip", "0"))))


def check_complete(path) -> NrrdHeader:
    """Prove ``path`` (or its detached data file) holds all the voxels its header promises."""
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
            return header        # lists and patterns of slice files: not proven here
        data_path, start = os.path.join(os.path.dirname(str(path)), name), 0
        if not os.path.isfile(data_path):
            raise DamagedFileError(path, f"its data file {name} is missing")
    try:
        size = os.path.getsize(data_path)
        if header.encoding == "raw":
            have = size if header.byte_skip < 0 else size - start - header.byte_skip
            if have < header.expected_bytes:
                raise DamagedFileError(data_path, f"truncated: data has {max(0, have)} bytes, header says "
                                                  f"{header.expected_bytes}")
            return header
        if header.encoding not in ("gzip", "bzip2"):
            return header       # ascii / hex text: nothing to count without parsing every number
        with open(data_path, "rb") as f:
            f.seek(start)
            got = inflated_size(f, wbits=31) if header.encoding == "gzip" else bunzipped_size(f)
    except StreamError as e:
        raise DamagedFileError(data_path, f"{e} (header says {header.expected_bytes} bytes)") from None
    except OSError as e:
        raise DamagedFileError(data_path, f"cannot read: {e.strerror or e}") from None
    if got - max(0, header.byte_skip) < header.expected_bytes:
        raise DamagedFileError(data_path, f"truncated: decompressed {got} bytes, header says {header.expected_bytes}")
    return header
