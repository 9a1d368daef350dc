"""Constant-memory reading of a compressed stream to its end (the completeness proofs of every format).

Why by hand: the readers (SimpleITK, Pillow, tifffile) decode a whole image
into memory, and SimpleITK fills a cut stream with zeros without an error;
counting the bytes a deflate/bzip2 stream really holds, in bounded chunks,
proves the file complete in constant memory (zlib and bz2 release the GIL, so
the check's threads run in parallel).
"""
from __future__ import annotations

import bz2
import zlib

READ_CHUNK = 1 << 20
MAX_OUT_CHUNK = 4 << 20


class StreamError(Exception):
    """A compressed stream that is cut or damaged; the caller adds the path."""


def inflated_size(f, *, wbits: int = zlib.MAX_WBITS, limit: int | None = None) -> int:
    """Decompress one zlib (``wbits`` 15), raw deflate (-15) or gzip (31) stream from ``f`` to its end marker.

    Returns the number of decompressed bytes.  Raises :class:`StreamError` when
    the stream ends before its end marker or is corrupt.  ``limit``: stop
    reading compressed bytes after this many (a stream stored with its size).
    """
    d = zlib.decompressobj(wbits)
    total = 0
    consumed = 0
    pending = b""
    while not d.eof:
        if not pending:
            want = READ_CHUNK if limit is None else min(READ_CHUNK, limit - consumed)
            pending = f.read(want) if want > 0 else b""
            consumed += len(pending)
            if not pending:
                # drain what zlib still holds back, then decide
                try:
                    out = d.decompress(b"", MAX_OUT_CHUNK)
                except zlib.error as e:
                    raise StreamError(f"corrupt: compressed data is damaged ({e})") from None
                total += len(out)
                if out:
                    pending = d.unconsumed_tail
                    continue
                raise StreamError(f"truncated: the compressed stream ends early (decompressed {total} bytes)")
        try:
            out = d.decompress(pending, MAX_OUT_CHUNK)
        except zlib.error as e:
            raise StreamError(f"corrupt: compressed data is damaged ({e})") from None
        total += len(out)
        pending = d.unconsumed_tail
    return total


def bunzipped_size(f) -> int:
    """Like :func:`inflated_size` for one bzip2 stream."""
    d = bz2.BZ2Decompressor()
    total = 0
    while not d.eof:
        data = b"" if d.needs_input is False else f.read(READ_CHUNK)
        if d.needs_input and not data:
            raise StreamError(f"truncated: the bzip2 stream ends early (decompressed {total} bytes)")
        try:
            total += len(d.decompress(data, MAX_OUT_CHUNK))
        except (OSError, EOFError) as e:
            raise StreamError(f"corrupt: bzip2 data is damaged ({e})") from None
    return total
