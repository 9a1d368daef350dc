"""TIFF (``.tif``/``.tiff``): the completeness proof, with tifffile.

Every strip or tile of every page must lie inside the file (tifffile reads a
strip cut by the end of the file as a short buffer and may zero-fill it) and
must decode; segments are decoded one at a time, so memory stays at one strip.
"""
from __future__ import annotations

import logging
import os
import threading

from runner.errors import DamagedFileError


class _ThreadErrors(logging.Handler):
    """tifffile's errors logged by this thread (a page chain cut by the end of the file is only logged)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.thread = threading.get_ident()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread:
            self.messages.append(record.getMessage())


def check_tiff(path) -> int:
    """Returns the number of pages."""
    import tifffile
    errors = _ThreadErrors()
    log = logging.getLogger("tifffile")
    log.addHandler(errors)
    try:
        return _check(path, tifffile, errors)
    finally:
        log.removeHandler(errors)


def _check(path, tifffile, errors: _ThreadErrors) -> int:
    try:
        size = os.path.getsize(path)
        with tifffile.TiffFile(path) as tif:
            pages = 0
            for page in tif.pages:
                pages += 1
                for offset, count in zip(page.dataoffsets, page.databytecounts):
                    if offset + count > size:
                        raise DamagedFileError(path, f"truncated: page {pages} needs bytes up to "
                                                     f"{offset + count}, the file has {size}")
                for _segment in page.segments():
                    pass
            if errors.messages:
                text = " ".join(errors.messages[0].split())
                raise DamagedFileError(path, f"truncated or damaged: {text[:160]}")
            if pages == 0:
                raise DamagedFileError(path, "a TIFF without pages")
            return pages
    except DamagedFileError:
        raise
    except Exception as e:  # noqa: BLE001 - tifffile and its codecs raise many kinds
        raise DamagedFileError(path, f"not a readable TIFF: {' '.join(str(e).split())[:160]}") from None
