"""The detector runs with each pack's manifest settings, and reads tilted, foreshortened and
faint lines whole: their first and last characters included."""

from __future__ import annotations

from dataclasses import replace

import cv2
import numpy as np
import pytest

from conftest import PACKS, decoded
from edge.config import OcrConfig
from edge.models.factory import build_pipeline
from edge.models.quantize import det_input, is_current
from edge.ocr.detector import DetectorSettings, pixel_blocks

SIZE = (1280, 720)
DARK = ((40, 40, 40), (230, 230, 230), (90, 90, 90))  # ink, plate, background
FAINT = ((150, 150, 150), (190, 190, 190), (120, 120, 120))


@pytest.fixture(scope="module")
def fp32_pipelines(store):
    return {pack: build_pipeline(OcrConfig(pack=pack, precision="fp32"), store).pipeline
            for pack in PACKS}


@pytest.mark.parametrize("pack", PACKS)
@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_detector_runs_with_the_pack_settings_of_the_manifest(store, pack, precision):
    spec = store.spec(pack)
    settings = build_pipeline(OcrConfig(pack=pack, precision=precision),
                              store).pipeline.detector.settings
    assert settings.mean == tuple(spec.preprocess["det_mean"])
    assert settings.std == tuple(spec.preprocess["det_std"])
    assert settings.multiple == spec.preprocess["det_multiple"]
    for key in ("thresh", "box_thresh", "unclip_ratio"):
        assert getattr(settings, key) == spec.postprocess[key], key
    for key in ("end_pad", "end_pad_tilt"):  # optional in the manifest
        assert getattr(settings, key) == spec.postprocess.get(key, getattr(DetectorSettings, key))


@pytest.mark.parametrize("pack", PACKS)
def test_int8_detector_was_calibrated_for_the_manifest_normalisation(store, pack):
    spec = store.spec(pack)
    variant = store.variant(pack, "int8")
    assert variant.info["det_input"] == det_input(spec.preprocess)
    assert is_current(variant, spec.preprocess)
    detector = build_pipeline(OcrConfig(pack=pack, precision="int8"), store).pipeline.detector
    scale, zero_point = detector.settings.input_quantization
    ramp = np.tile(np.arange(256, dtype=np.uint8), (32, 1))
    image = cv2.merge([ramp, ramp, ramp])
    mean = np.array(spec.preprocess["det_mean"], np.float32)
    std = np.array(spec.preprocess["det_std"], np.float32)
    normalised = (image.astype(np.float32) / 255.0 - mean) / std
    expected = np.clip(np.rint(normalised / np.float32(scale)) + zero_point, 0, 255)
    got = detector.preprocess(image)[0].astype(np.float32)  # in pixel blocks, as it takes them
    assert np.abs(got - pixel_blocks(expected)).max() <= 1  # float32 rounding of exact halves


def test_int8_calibrated_for_another_normalisation_is_rebuilt(store):
    spec = store.spec("ppocr-v6-small")
    variant = store.variant("ppocr-v6-small", "int8")
    other = dict(spec.preprocess, det_mean=[0.485, 0.456, 0.406], det_std=[0.229, 0.224, 0.225])
    if det_input(other) == variant.info["det_input"]:
        other = dict(other, det_mean=[0.5, 0.5, 0.5], det_std=[0.5, 0.5, 0.5])
    assert not is_current(variant, other)
    assert not is_current(replace(variant, info={k: v for k, v in variant.info.items()
                                                 if k != "det_input"}), spec.preprocess)


def render_sign(text: str, angle: float, shear: float = 0.0, foreshorten: float = 0.0,
                colours=DARK) -> np.ndarray:
    """A line on a plate, turned by `angle` degrees, sheared, and narrowed towards its right end
    by `foreshorten` of the frame height (a sign seen at an angle), slightly blurred."""
    width, height = SIZE
    ink, plate, background = colours
    image = np.full((height, width, 3), background, np.uint8)
    font = cv2.FONT_HERSHEY_SIMPLEX
    (text_w, text_h), base = cv2.getTextSize(text, font, 1.2, 2)
    x, y = (width - text_w) // 2, (height + text_h) // 2
    cv2.rectangle(image, (x - 12, y - text_h - 10), (x + text_w + 12, y + base + 8), plate, -1)
    cv2.putText(image, text, (x, y), font, 1.2, ink, 2, cv2.LINE_AA)
    corners = np.float32([[0, 0], [width, 0], [width, height], [0, height]])
    centre = np.float32([width / 2, height / 2])
    turn = np.deg2rad(angle)
    linear = np.float32([[np.cos(turn), np.sin(turn)], [-np.sin(turn), np.cos(turn)]]) @ \
        np.float32([[1, shear], [0, 1]])
    target = (corners - centre) @ linear.T + centre
    target[1, 1] += foreshorten * height
    target[2, 1] -= foreshorten * height
    matrix = cv2.getPerspectiveTransform(corners, target.astype(np.float32))
    image = cv2.warpPerspective(image, matrix, SIZE, borderValue=background)
    return cv2.GaussianBlur(image, (5, 5), 1.2)


SIGNS = [  # (angle, shear, foreshorten, colours)
    (5, 0.0, 0.0, DARK), (20, 0.0, 0.0, FAINT), (35, 0.0, 0.0, DARK),
    (5, 0.3, 0.25, FAINT), (15, 0.3, 0.25, FAINT), (20, 0.0, 0.3, FAINT), (35, 0.0, 0.3, DARK),
]
# The tiny pack, without end_pad (it measured no better there), reads the last L of this one as I.
TINY_CUT = pytest.mark.xfail(reason="tiny pack: last character cut", strict=True)


def _cases():
    for pack in PACKS:
        for sign in SIGNS:
            marks = TINY_CUT if pack == "ppocr-v6-tiny" and sign == SIGNS[3] else ()
            yield pytest.param(pack, *sign, marks=marks)


@pytest.mark.parametrize("pack,angle,shear,foreshorten,colours", list(_cases()))
def test_tilted_foreshortened_and_faint_lines_are_read_whole(fp32_pipelines, pack, angle, shear,
                                                             foreshorten, colours):
    text = "PERSONNEL BANK TOLL"  # first and last characters differ from their neighbours
    image = render_sign(text, angle, shear, foreshorten, colours)
    lines = [line.text for line in fp32_pipelines[pack](decoded(image)).lines]
    assert len(lines) == 1, lines
    assert lines[0].replace(" ", "") == text.replace(" ", "")
