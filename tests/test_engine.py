"""The real models read text the tests render themselves, with boxes where the text is."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest

from conftest import decoded, with_exif_orientation
from edge.cli.evaluate import polygon_iou
from edge.config import ImagesConfig, OcrConfig
from edge.daemon.budgeted_engine import image_limits
from edge.models.calibration import render_page
from edge.models.factory import MemoryCaps, assemble, load_models
from edge.models.rechead import quantized_head_here, serving_recognizer
from edge.ocr.classifier import Classifier, ClassifierSettings
from edge.ocr.crops import crop_quad, pack_batch, scaled_width, split_wide, turned
from edge.ocr.imageio import decode_bytes
from edge.ocr.pipeline import reading_order
from edge.ocr.session import ModelSession, SessionSettings


def _read_fraction(pipeline, seeds, lines=8):
    hits = total = 0
    for seed in seeds:
        page = render_page(seed, lines=lines)
        got = [line.text for line in pipeline(decoded(page.image)).lines]
        hits += sum(expected.text in got for expected in page.lines)
        total += len(page.lines)
    return hits / total


def _boxes_on_the_text(result, page, factor: float = 1.0) -> int:
    """Check that each line read with a rendered line's exact text has its box on that line
    (IoU > 0.5, the truth scaled by `factor`); returns how many lines were checked."""
    matched = 0
    for line in result.lines:
        truth = next((g for g in page.lines if g.text == line.text), None)
        if truth is not None:
            true_box = np.array(truth.box, np.float32) * factor
            iou = polygon_iou(np.array(line.box, np.float32), true_box)
            assert iou > 0.5, (line.text, line.box, truth.box)
            matched += 1
    return matched


def test_small_int8_reads_rendered_lines(small_int8):
    assert _read_fraction(small_int8, range(100, 106)) >= 0.85


def test_tiny_int8_reads_rendered_lines(tiny_int8):
    assert _read_fraction(tiny_int8, range(100, 106)) >= 0.75


def test_lines_come_in_reading_order_with_boxes_on_the_text(small_int8):
    page = render_page(42, lines=8)
    result = small_int8(decoded(page.image))
    texts = [line.text for line in result.lines]
    expected = [line.text for line in page.lines if line.text in texts]
    assert len(expected) >= 6
    assert [t for t in texts if t in expected] == expected  # top to bottom
    _boxes_on_the_text(result, page)


def test_result_carries_size_scores_and_stage_timings(small_int8):
    page = render_page(3)
    result = small_int8(decoded(page.image))
    assert (result.width, result.height) == (page.image.shape[1], page.image.shape[0])
    assert all(0.5 <= line.score <= 1.0 for line in result.lines)
    assert {"detect", "recognize"} <= set(result.timings_ms)
    assert result.text.splitlines() == [line.text for line in result.lines]


def test_boxes_are_in_original_pixels_after_a_reduced_decode(small_int8):
    page = render_page(11, lines=5)
    big = cv2.resize(page.image, None, fx=4, fy=4, interpolation=cv2.INTER_CUBIC)
    ok, data = cv2.imencode(".jpg", big, [cv2.IMWRITE_JPEG_QUALITY, 92])
    image = decode_bytes(data.tobytes(), image_limits(ImagesConfig(max_side=1000)))
    assert image.pixels.shape[1] == 1000
    assert image.scale == pytest.approx(big.shape[1] / 1000)
    result = small_int8(image)
    assert (result.width, result.height) == (big.shape[1], big.shape[0])
    assert _boxes_on_the_text(result, page, factor=4) >= 3


def test_vertical_line_is_turned_before_recognition(small_int8):
    canvas = np.full((120, 700, 3), 240, np.uint8)
    cv2.putText(canvas, "SERIAL 48213", (20, 80), cv2.FONT_HERSHEY_DUPLEX, 1.6, (10, 10, 10), 2,
                cv2.LINE_AA)
    vertical = cv2.rotate(canvas, cv2.ROTATE_90_COUNTERCLOCKWISE)
    texts = [line.text for line in small_int8(decoded(vertical)).lines]
    assert "SERIAL 48213" in texts


def test_upside_down_line_is_read_the_right_way_up(small_int8):
    canvas = np.full((140, 800, 3), 235, np.uint8)
    cv2.putText(canvas, "Delivery 20931", (30, 90), cv2.FONT_HERSHEY_DUPLEX, 1.6, (10, 10, 10), 2,
                cv2.LINE_AA)
    texts = [line.text for line in small_int8(decoded(cv2.rotate(canvas, cv2.ROTATE_180))).lines]
    assert "Delivery 20931" in texts


def test_an_upside_down_page_is_read_the_right_way_up_in_reading_order(small_int8):
    page = render_page(42, lines=8)
    turned = np.ascontiguousarray(page.image[::-1, ::-1])
    texts = [line.text for line in small_int8(decoded(turned)).lines]
    expected = [line.text for line in page.lines if line.text in texts]
    assert len(expected) >= 6
    assert [t for t in texts if t in expected] == expected  # the page's first line first


@pytest.fixture(scope="module")
def small_classifier_model(store):
    """The small pack's page classifier model and its input shape, loaded once for the module."""
    models = load_models(OcrConfig(precision="int8"), store)
    return models.cls, models.preprocess["cls_shape"]


def _page_crops(seed: int, lines: int, upright: int) -> list[np.ndarray]:
    """The line crops of a rendered page, all but the first `upright` turned upside down."""
    page = render_page(seed, lines=lines)
    crops = [crop_quad(page.image, np.array(line.box, np.float32)) for line in page.lines]
    return crops[:upright] + [turned(crop) for crop in crops[upright:]]


@pytest.mark.parametrize("upright, upside_down", [(8, False), (5, False), (3, True), (0, True)])
def test_a_page_is_upside_down_when_most_of_its_widest_lines_are(small_classifier_model,
                                                                   upright, upside_down):
    model, shape = small_classifier_model
    classifier = Classifier(model, ClassifierSettings(*shape))
    assert classifier(_page_crops(61, 8, upright)) is upside_down


class _CountedReader:
    """The real recogniser, with a count of the lines it was asked to read."""

    def __init__(self, recognizer) -> None:
        self.recognizer, self.lines = recognizer, 0

    def __call__(self, crops):
        self.lines += len(crops)
        return self.recognizer(crops)


@pytest.mark.parametrize("upright, upside_down", [(3, False), (0, True)])
def test_an_unsure_vote_is_settled_by_how_the_lines_read_both_ways(
        small_classifier_model, small_int8, upright, upside_down):
    model, shape = small_classifier_model
    reader = _CountedReader(small_int8.recognizer)
    never_sure = Classifier(model, ClassifierSettings(*shape, sure=float("inf")), reader=reader)
    assert never_sure(_page_crops(62, 3, upright)) is upside_down
    assert reader.lines == 6  # each line once each way


def test_a_sure_vote_reads_no_line(small_classifier_model, small_int8):
    model, shape = small_classifier_model
    reader = _CountedReader(small_int8.recognizer)
    classifier = Classifier(model, ClassifierSettings(*shape), reader=reader)
    assert classifier(_page_crops(61, 8, 0)) is True
    assert reader.lines == 0


_IDLE_CPU_MS = """
import resource, sys, time
from pathlib import Path
from edge.config import OcrConfig
from edge.frames import DecodedImage
from edge.models.calibration import render_page
from edge.models.factory import build_pipeline
from edge.models.store import ModelStore

pipeline = build_pipeline(OcrConfig(), ModelStore(Path(sys.argv[1]))).pipeline
page = render_page(3, lines=6).image
for _ in range(3):
    pipeline(DecodedImage(page, page.shape[1], page.shape[0]))
    before = resource.getrusage(resource.RUSAGE_SELF)
    time.sleep(0.5)
    after = resource.getrusage(resource.RUSAGE_SELF)
    print(1000 * (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime))
"""


def test_the_engine_takes_no_cpu_while_it_waits_for_the_next_image(store):
    """Its thread pools block once a run ends: spinning ones took 32-35 ms of CPU in the half
    second after each image (and the cores from the session that ran next)."""
    child = subprocess.run([sys.executable, "-c", _IDLE_CPU_MS, str(store.root)], text=True,
                           capture_output=True, check=True, timeout=300)
    idle_ms = [float(value) for value in child.stdout.split()]
    assert len(idle_ms) == 3 and min(idle_ms) < 5.0, idle_ms


def test_blank_image_gives_no_lines(small_int8):
    assert small_int8(decoded(np.full((300, 400, 3), 255, np.uint8))).lines == ()


def test_reading_order_groups_rows_then_left_to_right():
    def box(x, y, w=50, h=20):
        return [[x, y], [x + w, y], [x + w, y + h], [x, y + h]]

    quads = np.array([box(300, 102), box(10, 100), box(10, 200), box(150, 98)], np.float32)
    ordered = reading_order(quads)
    assert [int(q[0][0]) for q in ordered] == [10, 150, 300, 10]


def test_latin_charset_reads_rendered_text_with_latin_characters_only(store):
    from edge.config import OcrConfig
    from edge.models.factory import build_pipeline
    from edge.ocr.charset import LATIN

    latin = build_pipeline(OcrConfig(charset="latin"), store).pipeline
    assert _read_fraction(latin, range(100, 104)) >= 0.85
    canvas = np.full((120, 600, 3), 240, np.uint8)
    cv2.putText(canvas, "Lot 1-1 Total", (20, 80), cv2.FONT_HERSHEY_PLAIN, 3.0, (0, 0, 0), 3)
    text = latin(decoded(canvas)).text
    assert text and set(text) <= LATIN


def _rendered_line_crops(seed: int) -> list[np.ndarray]:
    """The lines of a rendered page, cropped at their boxes."""
    page = render_page(seed, lines=6)
    return [page.image[box[0][1]:box[2][1], box[0][0]:box[2][0]]
            for box in (line.box for line in page.lines)]


def _rendered_line_batch(seed: int) -> np.ndarray:
    """The lines of a rendered page, cropped at their boxes and packed as one batch."""
    crops = _rendered_line_crops(seed)
    width = max(scaled_width(crop, 48, 1600) for crop in crops)
    return pack_batch(crops, 48, (width + 7) // 8 * 8)


@pytest.mark.parametrize("pack, precision", [("ppocr-v6-small", "fp32"), ("ppocr-v6-tiny", "fp16")])
def test_the_served_recogniser_gives_the_best_class_and_probability_of_the_pack_model(
        store, pack, precision):
    variant = store.variant(pack, precision)
    served, chars = serving_recognizer(variant.files["rec"], variant.files["dict"], "all")
    assert chars == variant.charset
    batch = _rendered_line_batch(5)
    probabilities = ModelSession(variant.files["rec"], SessionSettings())(batch)
    best, probability = (values.reshape(len(batch), -1)
                         for values in ModelSession(served, SessionSettings()).outputs(batch))
    assert best.shape == probabilities.shape[:2]
    np.testing.assert_array_equal(best, probabilities.argmax(axis=2))
    np.testing.assert_allclose(probability, probabilities.max(axis=2),
                               atol=1e-5 if precision == "fp32" else 2e-3)


@pytest.mark.parametrize("pack", ["ppocr-v6-small", "ppocr-v6-tiny"])
def test_the_int8_variant_reads_with_a_quantized_class_layer_that_agrees_with_fp32(store, pack):
    variant = store.variant(pack, "int8")
    assert load_models(OcrConfig(pack=pack, precision="int8"), store).rec.path == \
        serving_recognizer(variant.files["rec"], variant.files["dict"], "all",
                           quantized_head_here("int8"))[0]
    served, chars = serving_recognizer(variant.files["rec"], variant.files["dict"], "all",
                                       quantized_head=True)
    assert chars == variant.charset
    batch = _rendered_line_batch(7)
    probabilities = ModelSession(variant.files["rec"], SessionSettings())(batch)
    best, probability = (values.reshape(len(batch), -1)
                         for values in ModelSession(served, SessionSettings()).outputs(batch))
    read = probabilities.argmax(axis=2)
    assert (read > 0).mean() > 0.1  # the rendered lines are read, not only blanks
    assert (best == read).mean() >= 0.99
    top_two = np.sort(probabilities, axis=2)[:, :, -2:]
    assert np.all((best == read) | (top_two[:, :, 1] - top_two[:, :, 0] < 0.5))
    difference = np.abs(probability - probabilities.max(axis=2))
    assert difference.max() < 0.15 and difference.mean() < 0.005


def test_the_class_layer_is_quantized_for_the_int8_variant_on_x86_only():
    assert quantized_head_here("int8", "x86_64")
    assert not quantized_head_here("int8", "aarch64")
    assert not quantized_head_here("fp32", "x86_64") and not quantized_head_here("fp16", "x86_64")


def test_the_latin_recogniser_chooses_among_the_latin_classes_only(store):
    from edge.ocr.charset import LATIN

    variant = store.variant("ppocr-v6-small", "fp32")
    served, chars = serving_recognizer(variant.files["rec"], variant.files["dict"], "latin")
    assert set(chars) <= LATIN and 90 < len(chars) < len(variant.charset) / 10
    kept = [0] + [i + 1 for i, ch in enumerate(variant.charset) if ch in LATIN] + \
        [len(variant.charset) + 1]
    batch = _rendered_line_batch(6)
    probabilities = ModelSession(variant.files["rec"], SessionSettings())(batch)
    best = ModelSession(served, SessionSettings()).outputs(batch)[0].reshape(len(batch), -1)
    assert best.max() > 0  # the rendered text is read, not only blanks
    np.testing.assert_array_equal(best, probabilities[:, :, kept].argmax(axis=2))


def test_the_served_recogniser_is_made_again_when_the_pack_model_is_newer(store, tmp_path):
    variant = store.variant("ppocr-v6-tiny", "fp32")
    rec, dictionary = tmp_path / "rec.onnx", tmp_path / "dict.txt"
    shutil.copy(variant.files["rec"], rec)
    shutil.copy(variant.files["dict"], dictionary)
    served, _ = serving_recognizer(rec, dictionary, "latin")
    made = served.stat().st_mtime_ns
    assert serving_recognizer(rec, dictionary, "latin")[0].stat().st_mtime_ns == made
    os.utime(rec, ns=(made + 10**9, made + 10**9))  # the pack's file replaced
    assert serving_recognizer(rec, dictionary, "latin")[0].stat().st_mtime_ns > made


def test_boxes_of_a_photo_taken_sideways_are_in_the_upright_picture(small_int8):
    page = render_page(12, lines=5)
    sideways = np.ascontiguousarray(np.rot90(page.image))  # stored turned, shown upright
    ok, data = cv2.imencode(".jpg", sideways, [cv2.IMWRITE_JPEG_QUALITY, 92])
    result = small_int8(decode_bytes(with_exif_orientation(data.tobytes(), 6),
                                     image_limits(ImagesConfig())))
    assert (result.width, result.height) == (page.image.shape[1], page.image.shape[0])
    assert _boxes_on_the_text(result, page) >= 3


def _mean_area(lines) -> float:
    return float(np.mean([cv2.contourArea(np.array(line.box, np.float32)) for line in lines]))


def test_thresholds_and_the_side_limit_follow_the_config(store):
    models = load_models(OcrConfig(precision="int8"), store)
    image = decoded(render_page(21, lines=8).image)

    def read(**settings):
        return assemble(models, OcrConfig(precision="int8", **settings))(image).lines

    default = read()
    assert len(default) == 8
    confident = read(min_score=0.99)
    assert 0 < len(confident) < len(default)
    assert all(line.score >= 0.99 for line in confident)
    assert not read(box_thresh=0.9)
    assert _mean_area(read(det_thresh=0.9)) < _mean_area(default)
    tight, loose = read(unclip_ratio=1.2), read(unclip_ratio=2.5)
    assert _mean_area(tight) < _mean_area(default) < _mean_area(loose)
    detector = assemble(models, OcrConfig(precision="int8", det_limit_side=320)).detector
    assert max(detector.input_size(image.pixels)) <= 320


def test_a_line_wider_than_the_recogniser_takes_is_read_whole_in_pieces(store):
    models = load_models(OcrConfig(precision="int8"), store)
    text = "ORDER 4471 PAID BY CARD TOTAL 1234.56 THANK YOU COME AGAIN"
    line = np.full((64, 1500, 3), 245, np.uint8)
    cv2.putText(line, text, (10, 44), cv2.FONT_HERSHEY_DUPLEX, 1.0, (15, 15, 15), 2, cv2.LINE_AA)
    # at the recogniser's 48 rows the line is 1125 columns: pieces of at most 320
    narrow = assemble(models, OcrConfig(precision="int8"),
                      MemoryCaps(rec_max_width=320, rec_max_columns=640)).recognizer
    assert len(split_wide(line, 48, 320, 48)) > 4
    assert [r.text for r in narrow([line, line[:, :400]])] == [text, "ORDER 4471 PAID BY CARD"]


def test_pieces_of_a_wide_line_are_cut_in_gaps_and_keep_every_column_once():
    line = np.full((48, 1000), 255, np.uint8)
    for left in range(0, 1000, 42):
        line[10:38, left:left + 30] = 0  # letters 30 columns wide, gaps of 12
    pieces = split_wide(line, 48, 320, 48)
    kept = [column for piece in pieces
            for column in range(piece.keep_from, piece.keep_to)]
    assert all(piece.pixels.shape[1] <= 320 for piece in pieces)
    starts = np.cumsum([0] + [p.keep_to - p.keep_from for p in pieces])
    assert starts[-1] == len(kept) == 1000
    for cut in starts[1:-1]:
        assert line[24, cut - 12:cut].min() == 255 and line[24, cut] == 0  # a whole gap before


def test_no_character_is_lost_or_doubled_where_a_line_is_cut_into_pieces(store):
    models = load_models(OcrConfig(precision="int8"), store)
    whole = assemble(models, OcrConfig(precision="int8")).recognizer
    narrow = assemble(models, OcrConfig(precision="int8"),
                      MemoryCaps(rec_max_width=320, rec_max_columns=640)).recognizer
    text = "Invoice #: OR18040302160397 Facebook.com/BarWangRice"
    for left in (4, 8, 12):  # shifts the cuts against the letters
        line = np.full((60, 1400, 3), 245, np.uint8)
        cv2.putText(line, text, (left, 42), cv2.FONT_HERSHEY_DUPLEX, 0.9, (15, 15, 15), 2,
                    cv2.LINE_AA)
        read_whole, read_in_pieces = whole([line])[0].text, narrow([line])[0].text
        # this font draws O and 0 alike: the model may read either, in a piece or whole
        assert read_in_pieces.replace("0", "O") == read_whole.replace("0", "O"), left


@pytest.mark.parametrize("engine", ["small_int8", "tiny_int8"])
def test_a_line_reads_the_same_whatever_lines_are_read_with_it(request, engine):
    recognizer = request.getfixturevalue(engine).recognizer
    crops = _rendered_line_crops(7)
    alone = [recognizer([crop])[0] for crop in crops]
    together = recognizer(crops)
    assert len({scaled_width(crop, 48, 1600) for crop in crops}) > 1  # padding would differ
    assert [r.text for r in together] == [r.text for r in alone]
    assert [r.score for r in together] == pytest.approx([r.score for r in alone], abs=1e-5)
