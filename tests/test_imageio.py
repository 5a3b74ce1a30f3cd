"""Safe decoding: every bad input gives the documented error before pixels are allocated."""

from __future__ import annotations

import struct
from dataclasses import replace

import cv2
import numpy as np
import pytest

from conftest import png_header, with_exif_orientation
from edge.config import ImagesConfig
from edge.daemon.budgeted_engine import image_limits
from edge.errors import ImageTooLargeError, ImageUnreadableError
from edge.models.calibration import render_page
from edge.ocr.imageio import decode_bytes, decode_file, from_pixels, probe

LIMITS = image_limits(ImagesConfig())  # the decoder limits of the default config


def _jpeg(width: int, height: int, quality: int = 90) -> bytes:
    image = np.full((height, width, 3), 200, np.uint8)
    cv2.putText(image, "edge", (5, height // 2), cv2.FONT_HERSHEY_SIMPLEX, 1, (0, 0, 0), 2)
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return data.tobytes()


def _with_jpeg_size(data: bytes, width: int, height: int) -> bytes:
    """Rewrite the frame header of a JPEG to claim another size."""
    sof = data.index(b"\xff\xc0")
    return data[:sof + 5] + struct.pack(">HH", height, width) + data[sof + 9:]


def test_empty_file_is_unreadable(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    with pytest.raises(ImageUnreadableError, match="empty"):
        decode_file(path, LIMITS)


def test_text_file_named_jpg_is_unreadable(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("this is not an image\n")
    with pytest.raises(ImageUnreadableError, match="not a supported image"):
        decode_file(path, LIMITS)


def test_truncated_jpeg_is_refused():
    data = _jpeg(400, 300)
    with pytest.raises(ImageUnreadableError):
        decode_bytes(data[: len(data) // 2], LIMITS)


def test_png_claiming_60000_square_is_refused_from_the_header():
    with pytest.raises(ImageTooLargeError, match="60000x60000"):
        decode_bytes(png_header(60000, 60000) + b"\x00" * 64, LIMITS)


def test_jpeg_claiming_60000_square_is_refused_from_the_header():
    with pytest.raises(ImageTooLargeError, match="60000x60000"):
        decode_bytes(_with_jpeg_size(_jpeg(64, 64), 60000, 60000), LIMITS)


def test_probe_reads_dimensions_of_each_format():
    image = np.zeros((37, 91, 3), np.uint8)
    for ext in (".png", ".jpg", ".bmp", ".webp", ".tiff"):
        ok, data = cv2.imencode(ext, image)
        assert ok
        header = probe(data.tobytes())
        assert (header.width, header.height) == (91, 37), ext


def test_large_jpeg_is_decoded_reduced_with_the_scale_back_to_original():
    data = _jpeg(4000, 1000)
    image = decode_bytes(data, replace(LIMITS, max_side=1000))
    assert image.pixels.shape[:2] == (250, 1000)
    assert (image.original_width, image.original_height) == (4000, 1000)
    assert image.scale == pytest.approx(4.0)


def test_exif_orientation_is_applied_and_the_size_follows_it():
    data = with_exif_orientation(_jpeg(4000, 1000), 6)
    image = decode_bytes(data, replace(LIMITS, max_side=1000))
    assert image.pixels.shape[:2] == (1000, 250)
    assert (image.original_width, image.original_height) == (1000, 4000)
    assert image.scale == pytest.approx(4.0)


def test_file_over_the_byte_limit_is_refused(tmp_path):
    path = tmp_path / "big.jpg"
    path.write_bytes(_jpeg(200, 200))
    with pytest.raises(ImageTooLargeError, match="byte limit"):
        decode_file(path, replace(LIMITS, max_bytes=100))


def test_grey_png_decodes_to_three_channels():
    ok, data = cv2.imencode(".png", np.full((20, 30), 128, np.uint8))
    image = decode_bytes(data.tobytes(), LIMITS)
    assert image.pixels.shape == (20, 30, 3)


def test_grey_decodes_one_channel_reduced_and_reads_the_same_as_colour(small_int8):
    page = render_page(41, width=1600, height=1200, lines=8)
    data = cv2.imencode(".jpg", page.image, [cv2.IMWRITE_JPEG_QUALITY, 92])[1].tobytes()
    limits = replace(LIMITS, max_side=800)
    colour, grey = decode_bytes(data, limits), decode_bytes(data, replace(limits, grey=True))
    assert grey.pixels.shape == colour.pixels.shape[:2] == (600, 800)
    assert grey.scale == colour.scale == pytest.approx(2.0)
    read = small_int8(grey).text
    assert read == small_int8(colour).text
    assert sum(line.text in read for line in page.lines) >= len(page.lines) - 1


def test_a_colour_camera_frame_is_made_grey_when_asked():
    frame = np.full((720, 1280, 3), (10, 200, 30), np.uint8)
    image = from_pixels(frame, replace(LIMITS, max_side=640, grey=True))
    assert image.pixels.shape == (360, 640) and image.scale == pytest.approx(2.0)
