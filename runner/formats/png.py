"""PNG and BMP: the completeness proof (nnU-Net's NaturalImage2DIO reads them with skimage).

PNG is walked chunk by chunk here, by hand, because Pillow decodes the whole
image into memory to notice a cut stream: every chunk's CRC is checked to
IEND, the IDAT stream is inflated in bounded chunks and its size compared with
what IHDR's width, height, bit depth, colour type and interlacing need.  BMP
has no compression nnU-Net users meet: Pillow reads the header and the pixel
data must fit in the file (Pillow decodes it: 2D images are small).
"""
from __future__ import annotations

import struct
import zlib

from runner.errors import DamagedFileError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
_PASSES = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
_READ = 1 << 20
_OUT = 4 << 20


def png_decoded_size(width: int, height: int, bit_depth: int, colour: int, interlace: int) -> int:
    """Bytes of the filtered scanlines IDAT must inflate to."""
    bits = bit_depth * _CHANNELS[colour]

    def rows(w: int, h: int) -> int:
        return 0 if w == 0 or h == 0 else h * (1 + (w * bits + 7) // 8)

    if not interlace:
        return rows(width, height)
    return sum(rows((width - x0 + dx - 1) // dx, (height - y0 + dy - 1) // dy) for x0, y0, dx, dy in _PASSES)


def check_png(path) -> tuple[int, int]:
    """Every chunk and CRC to IEND, IDAT inflated to exactly its decoded size.  Returns (width, height)."""
    def bad(reason: str) -> DamagedFileError:
        return DamagedFileError(path, reason)

    try:
        f = open(path, "rb")
    except OSError as e:
        raise bad(f"cannot read: {e.strerror or e}") from None
    with f:
        if f.read(8) != PNG_SIGNATURE:
            raise bad("not a PNG file (signature missing)")
        header = None
        d = zlib.decompressobj()
        inflated = 0
        while True:
            head = f.read(8)
            if len(head) < 8:
                raise bad("truncated: the file ends before the IEND chunk")
            length, ctype = struct.unpack(">I4s", head)
            crc = zlib.crc32(ctype)
            left = length
            while left:
                piece = f.read(min(_READ, left))
                if not piece:
                    raise bad(f"truncated: chunk {ctype.decode('latin-1')} ends early")
                left -= len(piece)
                crc = zlib.crc32(piece, crc)
                if ctype == b"IHDR":
                    header = struct.unpack(">IIBBBBB", piece[:13])
                elif ctype == b"IDAT":
                    if header is None:
                        raise bad("IDAT before IHDR")
                    try:
                        out = d.decompress(piece, _OUT)
                        inflated += len(out)
                        while d.unconsumed_tail:
                            out = d.decompress(d.unconsumed_tail, _OUT)
                            inflated += len(out)
                    except zlib.error as e:
                        raise bad(f"corrupt: image data is damaged ({e})") from None
            stored = f.read(4)
            if len(stored) < 4:
                raise bad(f"truncated: chunk {ctype.decode('latin-1')} has no CRC")
            if struct.unpack(">I", stored)[0] != crc & 0xFFFFFFFF:
                raise bad(f"corrupt: CRC of chunk {ctype.decode('latin-1')} does not match")
            if ctype == b"IEND":
                break
        if header is None:
            raise bad("no IHDR chunk")
        width, height, depth, colour, _c, _f, interlace = header
        if colour not in _CHANNELS:
            raise bad(f"invalid colour type {colour}")
        expected = png_decoded_size(width, height, depth, colour, interlace)
        if not d.eof or inflated != expected:
            raise bad(f"truncated or damaged: image data inflates to {inflated} bytes, "
                      f"{width}x{height} needs {expected}")
        return int(width), int(height)


def check_bmp(path) -> tuple[int, int]:
    """Pillow decodes the BMP (it raises on missing pixel data)."""
    try:
        from PIL import Image
        with Image.open(path) as im:
            if im.format != "BMP":
                raise DamagedFileError(path, f"not a BMP file ({im.format})")
            im.load()
            return im.size
    except DamagedFileError:
        raise
    except Exception as e:  # noqa: BLE001 - Pillow's errors for a cut or garbled file vary
        raise DamagedFileError(path, f"cannot decode: {' '.join(str(e).split())[:160]}") from None
