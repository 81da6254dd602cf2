"""A tiny, dependency-free PNG encoder for solid-colour images.

The fake provider in :mod:`banana_async.testing` serves these images as the
"generated" results, so downloads in tests and demos return real, decodable
PNG files without shipping binary fixtures.
"""

from __future__ import annotations

import functools
import struct
import zlib

__all__ = ["PNG_SIGNATURE", "make_png"]

#: The eight bytes every PNG file starts with.
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

_MAX_SIDE = 16384


def _chunk(kind: bytes, data: bytes) -> bytes:
    """Frame one PNG chunk: length, type, data and the CRC of type + data."""
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


@functools.lru_cache(maxsize=256)
def make_png(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """Encode a solid-colour, 8-bit RGB, non-interlaced PNG image.

    Results are cached by arguments, so repeated calls are cheap.

    Args:
        width: Image width in pixels, 1 to 16384.
        height: Image height in pixels, 1 to 16384.
        rgb: The fill colour as ``(red, green, blue)``, each 0 to 255.

    Returns:
        The complete PNG file (signature, ``IHDR``, ``IDAT`` and ``IEND``).

    Raises:
        ValueError: If a dimension or a colour component is out of range.
    """
    if not (1 <= width <= _MAX_SIDE and 1 <= height <= _MAX_SIDE):
        msg = f"PNG dimensions must be between 1 and {_MAX_SIDE}, got {width}x{height}"
        raise ValueError(msg)
    if any(not 0 <= c <= 255 for c in rgb):
        msg = f"rgb must be three integers between 0 and 255, got {rgb!r}"
        raise ValueError(msg)
    # Bit depth 8, colour type 2 (truecolour), deflate, adaptive filtering, no interlace.
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    # Each scanline starts with its filter type byte (0 = None).
    scanline = b"\x00" + bytes(rgb) * width
    pixels = zlib.compress(scanline * height, 9)
    return PNG_SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", pixels) + _chunk(b"IEND", b"")
