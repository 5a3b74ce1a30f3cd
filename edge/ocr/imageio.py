"""Safe image decoding: size probed from the header before any pixel is decoded.

OpenCV picks the codec by magic bytes and checks only the *reduced* size when asked for a reduced
decode, so a tiny file whose header claims 60000x60000 pixels would still allocate a huge buffer.
Here the header is read first, bombs are refused, and large JPEGs are decoded reduced (the codec
skips the work) instead of decoded in full and shrunk afterwards.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge.errors import ImageTooLargeError, ImageUnreadableError
from edge.frames import DecodedImage

# OpenCV logs its own warnings for bad image data; the errors raised here say the same, once, with
# the file's name and a code.
cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)

_REDUCED_JPEG_FLAGS = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2,
                       4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}
_REDUCED_GREY_FLAGS = {1: cv2.IMREAD_GRAYSCALE, 2: cv2.IMREAD_REDUCED_GRAYSCALE_2,
                       4: cv2.IMREAD_REDUCED_GRAYSCALE_4, 8: cv2.IMREAD_REDUCED_GRAYSCALE_8}
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


@dataclass(frozen=True)
class ImageLimits:
    """What the decoder accepts and how far it shrinks.

    `max_pixels` refuses bombs outright; `max_side` is the longest side worth decoding (larger
    JPEGs are decoded at 1/2, 1/4 or 1/8 size, others are resized after decoding). Their defaults
    are the config's (`edge.daemon.budgeted_engine.image_limits` builds the limits from its
    images section). `grey` decodes to one channel: a third of the memory, and the stages
    read it as they read colour.
    """

    max_bytes: int
    max_pixels: int
    max_side: int
    max_decode_pixels: int = 0  # largest buffer the decoder may fill (a RAM budget); 0 = any
    grey: bool = False


@dataclass(frozen=True)
class ImageHeader:
    """Format and dimensions as the file's header states them."""

    format: str
    width: int
    height: int


def probe(data: bytes) -> ImageHeader:
    """Read format and dimensions from the header; raise ImageUnreadableError if unknown."""
    if not data:
        raise ImageUnreadableError("the file is empty")
    for prober in (_probe_png, _probe_jpeg, _probe_bmp, _probe_webp, _probe_tiff):
        header = prober(data)
        if header is not None:
            if header.width <= 0 or header.height <= 0:
                raise ImageUnreadableError(f"{header.format} header states no pixels")
            return header
    raise ImageUnreadableError("not a supported image (JPEG, PNG, BMP, WebP or TIFF)")


def looks_complete(head: bytes, tail: bytes, size: int) -> bool:
    """Whether a file whose first and last bytes are `head` and `tail` (of `size` bytes in all)
    holds a whole image: a JPEG ends with its EOI marker, a PNG with its IEND chunk, a BMP and
    a WebP are as long as their headers say. Other formats cannot tell and count as whole."""
    if head.startswith(b"\xff\xd8"):
        return b"\xff\xd9" in tail
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return b"IEND" in tail
    if head.startswith(b"BM") and len(head) >= 6:
        return size >= struct.unpack("<I", head[2:6])[0]
    if head.startswith(b"RIFF") and len(head) >= 12 and head[8:12] == b"WEBP":
        return size >= struct.unpack("<I", head[4:8])[0] + 8
    return True


def decode_file(path: Path, limits: ImageLimits) -> DecodedImage:
    """Read and decode an image file within `limits`."""
    try:
        size = path.stat().st_size
        if size > limits.max_bytes:
            raise ImageTooLargeError(f"file is {size} bytes, over the {limits.max_bytes}-byte limit")
        data = path.read_bytes()
    except OSError as exc:
        raise ImageUnreadableError(f"cannot read {path}: {exc.strerror or exc}") from exc
    return decode_bytes(data, limits)


def decode_bytes(data: bytes, limits: ImageLimits) -> DecodedImage:
    """Decode image bytes within `limits`: probe, refuse bombs, reduce, check completeness."""
    if len(data) > limits.max_bytes:
        raise ImageTooLargeError(f"file is {len(data)} bytes, over the {limits.max_bytes}-byte "
                                 "limit")
    header = probe(data)
    pixels = header.width * header.height
    if pixels > limits.max_pixels:
        raise ImageTooLargeError(
            f"{header.format} header claims {header.width}x{header.height} pixels, "
            f"over the {limits.max_pixels}-pixel limit")
    if header.format == "jpeg" and not _jpeg_is_complete(data):
        raise ImageUnreadableError("truncated JPEG: no end-of-image marker")
    factor = (jpeg_reduction(header.width, header.height, limits)
              if header.format == "jpeg" else 1)
    decoded_pixels = (header.width // factor) * (header.height // factor)
    if limits.max_decode_pixels and decoded_pixels > limits.max_decode_pixels:
        raise ImageTooLargeError(
            f"{header.format} {header.width}x{header.height} would decode to {decoded_pixels} "
            f"pixels, over the {limits.max_decode_pixels} the memory budget allows",
            "send a smaller image, a JPEG (decoded reduced), or raise resources.memory_mb")
    flags = (_REDUCED_GREY_FLAGS if limits.grey else _REDUCED_JPEG_FLAGS)[factor]
    image = _imdecode(data, flags)
    width, height = _upright_size(header, image)
    image = _shrink_to(image, limits.max_side)
    return DecodedImage(image, width, height, width / image.shape[1])


def _imdecode(data: bytes, flags: int) -> np.ndarray:
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    except cv2.error as exc:
        raise ImageUnreadableError(f"the decoder refused the image: {exc.err}") from exc
    if image is None or image.size == 0:
        raise ImageUnreadableError("the image data is corrupt or truncated")
    if image.ndim == 2 and flags not in _REDUCED_GREY_FLAGS.values():
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    return image


def _upright_size(header: ImageHeader, image: np.ndarray) -> tuple[int, int]:
    """The header's size, turned when the decoder turned the image upright (EXIF orientation),
    so that boxes are in the pixels of the picture as people see it."""
    height, width = image.shape[:2]
    turned = abs(width * header.width - height * header.height)
    kept = abs(width * header.height - height * header.width)
    return (header.height, header.width) if turned < kept else (header.width, header.height)


def jpeg_reduction(width: int, height: int, limits: ImageLimits) -> int:
    """Largest JPEG reduction (1, 2, 4, 8) that keeps the longest side at or above max_side,
    raised further while the decoded pixels would exceed the decode cap."""
    longest, pixels = max(width, height), width * height
    factor = 1
    while factor < 8 and longest // (factor * 2) >= limits.max_side:
        factor *= 2
    while factor < 8 and limits.max_decode_pixels and pixels / factor ** 2 > limits.max_decode_pixels:
        factor *= 2
    return factor


def _shrink_to(image: np.ndarray, max_side: int) -> np.ndarray:
    height, width = image.shape[:2]
    longest = max(height, width)
    if longest <= max_side:
        return image
    ratio = max_side / longest
    size = (max(1, round(width * ratio)), max(1, round(height * ratio)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def _jpeg_is_complete(data: bytes) -> bool:
    return data.rstrip(b"\x00\r\n ").endswith(b"\xff\xd9")


def _probe_png(data: bytes) -> ImageHeader | None:
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        return None
    if len(data) < 24 or data[12:16] != b"IHDR":
        raise ImageUnreadableError("PNG without an IHDR header")
    width, height = struct.unpack(">II", data[16:24])
    return ImageHeader("png", width, height)


def _probe_jpeg(data: bytes) -> ImageHeader | None:
    if not data.startswith(b"\xff\xd8"):
        return None
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            pos += 1
            continue
        marker = data[pos + 1]
        if marker in (0xFF, 0x01) or 0xD0 <= marker <= 0xD7:
            pos += 1 if marker == 0xFF else 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2:pos + 4])
        if marker in _JPEG_SOF and pos + 9 <= len(data):
            height, width = struct.unpack(">HH", data[pos + 5:pos + 9])
            return ImageHeader("jpeg", width, height)
        pos += 2 + length
    raise ImageUnreadableError("JPEG without a frame header (truncated or corrupt)")


def _probe_bmp(data: bytes) -> ImageHeader | None:
    if not data.startswith(b"BM") or len(data) < 26:
        return None
    width, height = struct.unpack("<ii", data[18:26])
    return ImageHeader("bmp", abs(width), abs(height))


def _probe_webp(data: bytes) -> ImageHeader | None:
    if len(data) < 30 or data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        return None
    chunk = data[12:16]
    if chunk == b"VP8 ":
        width, height = struct.unpack("<HH", data[26:30])
        return ImageHeader("webp", width & 0x3FFF, height & 0x3FFF)
    if chunk == b"VP8L":
        bits = int.from_bytes(data[21:25], "little")
        return ImageHeader("webp", (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)
    if chunk == b"VP8X":
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        return ImageHeader("webp", width, height)
    raise ImageUnreadableError("WebP with an unknown chunk layout")


def _probe_tiff(data: bytes) -> ImageHeader | None:
    order = {b"II*\x00": "<", b"MM\x00*": ">"}.get(data[:4])
    if order is None:
        return None
    try:
        (ifd,) = struct.unpack(order + "I", data[4:8])
        (count,) = struct.unpack(order + "H", data[ifd:ifd + 2])
        dims = {}
        for i in range(count):
            entry = data[ifd + 2 + 12 * i: ifd + 14 + 12 * i]
            tag, kind = struct.unpack(order + "HH", entry[:4])
            if tag in (256, 257):
                fmt = order + ("H" if kind == 3 else "I")
                dims[tag] = struct.unpack(fmt, entry[8:8 + struct.calcsize(fmt)])[0]
    except struct.error as exc:
        raise ImageUnreadableError("TIFF header is truncated") from exc
    if 256 not in dims or 257 not in dims:
        raise ImageUnreadableError("TIFF without image dimensions")
    return ImageHeader("tiff", dims[256], dims[257])


def from_pixels(pixels: np.ndarray, limits: ImageLimits) -> DecodedImage:
    """A camera frame as engine input, shrunk to `limits.max_side` like a decoded file."""
    height, width = pixels.shape[:2]
    if pixels.ndim == 2 and not limits.grey:
        pixels = cv2.cvtColor(pixels, cv2.COLOR_GRAY2BGR)
    elif pixels.ndim == 3 and limits.grey:
        pixels = cv2.cvtColor(pixels, cv2.COLOR_BGR2GRAY)
    image = _shrink_to(pixels, limits.max_side)
    return DecodedImage(image, width, height, width / image.shape[1])
