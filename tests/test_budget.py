"""The RAM planner on measured-style models, a real measurement, and the decoder's budget cap."""

from __future__ import annotations

import collections
import json
import math
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edge.config import ImagesConfig, OcrConfig
from conftest import png_header
from daemon_kit import Daemon, Subscriber, wait_for
from edge.daemon import allocator
from edge.daemon.budget import (
    DET_MIN_PIXELS,
    HEADROOM,
    MEASUREMENTS,
    MEASUREMENTS_BEFORE_REFUSING,
    REC_MIN_WIDTH,
    SIDE_STEP,
    WORKING_MARGIN,
    BoxMemory,
    Measurement,
    MemoryModel,
    Planner,
    box_memory,
    fitted_model,
    measured_model,
    read_memory,
    step_down,
)
from edge.daemon.budgeted_engine import DaemonEngine, image_limits
from edge.errors import ConfigError, ImageTooLargeError, ModelError
from edge.frames import DecodedImage
from edge.models.calibration import render_page
from edge.models.detgates import GIVEN, USE_GIVEN, split_detector
from edge.models.factory import MemoryCaps, assemble, load_models
from edge.ocr.detector import TILE_MARGIN, _spans, largest_tile, tile_count
from edge.ocr.imageio import decode_bytes

SMALL = MemoryModel(base_mb=149.0, det_fixed_mb=5.0, det_mb_per_mpx=140.0,
                    rec_points=((0.4, 24.6), (0.8, 38.2), (1.6, 65.4)))


def test_plan_fits_the_budget_and_shrinks_with_it():
    roomy = Planner(SMALL, 640, 1280, 4, 4096).plan()
    tight = Planner(SMALL, 256, 1280, 4, 4096).plan()
    for plan in (roomy, tight):
        assert plan.predicted_mb <= plan.budget_mb * HEADROOM
    assert roomy.det_max_pixels == 1280 * 1280 and roomy.rec_max_columns == 4 * 1600
    assert tight.det_max_pixels < roomy.det_max_pixels
    assert tight.rec_max_columns < roomy.rec_max_columns
    assert tight.image_max_side <= roomy.image_max_side
    # the recogniser runs beside the decoded image and a page's line crops (up to its size)
    image_mb = tight.image_max_side ** 2 * 0.75 * 3 / 2**20
    assert (SMALL.base_mb + 2 * image_mb + SMALL.recognizer_mb(tight.rec_max_columns)
            <= tight.budget_mb * HEADROOM)


def test_a_tight_budget_keeps_the_resolution_and_tiles_the_detector_instead():
    roomy = Planner(SMALL, 1024, 1280, 4, 2048).plan()
    tight = Planner(SMALL, 260, 1280, 4, 2048).plan()
    assert roomy.image_max_side == tight.image_max_side == 2048
    assert roomy.det_max_pixels == 1280 * 1280 and tight.det_max_pixels <= 400_000
    assert tight.rec_max_width >= 960 and tight.predicted_mb <= 260 * HEADROOM
    words = Planner(SMALL, 260, 1280, 4, 2048).in_words(tight)
    assert "1/1 scale to 2048 px tall and detected in 4 tile(s)" in words and "capitals" in words


def test_a_budget_that_cannot_keep_the_wanted_size_decodes_as_large_as_it_fits():
    # the tiny pack at 160 MB with grey pages, as measured on one box: the recogniser's room
    # beside a 1700 px page falls short by about a megabyte
    tiny = MemoryModel(base_mb=124.4, det_fixed_mb=3.5, det_mb_per_mpx=70.67,
                       rec_points=((0.4, 16.4), (0.8, 17.4), (1.2, 22.9), (1.6, 25.7)))
    planner = Planner(tiny, 160, 1280, 2, 1700, channels=1)
    plan = planner.plan()
    assert 1280 < plan.image_max_side < 1700
    assert plan.predicted_mb <= 160 * HEADROOM and plan.rec_max_width >= REC_MIN_WIDTH
    larger = Planner(tiny, 160, 1280, 2, plan.image_max_side + SIDE_STEP, channels=1).plan()
    assert larger.image_max_side == plan.image_max_side  # one step larger does not fit


def test_grey_documents_leave_the_recogniser_more_room():
    colour = Planner(SMALL, 260, 1280, 4, 2048).plan()
    grey = Planner(SMALL, 260, 1280, 4, 2048, channels=1).plan()
    assert grey.image_max_side == colour.image_max_side
    assert grey.rec_max_columns > colour.rec_max_columns
    assert grey.predicted_mb <= 260 * HEADROOM


def test_a_smaller_image_leaves_the_recogniser_wider_lines_within_the_budget():
    planner = Planner(SMALL, 256, 1280, 4, 2048)
    plan = planner.plan()
    largest = int(plan.image_max_side ** 2 * 0.75 * 3)  # as the plan counts the largest
    assert planner.line_widths(plan, largest) == (plan.rec_max_width, plan.rec_max_columns)
    frame = 1280 * 720 * 3
    width, columns = planner.line_widths(plan, frame)
    assert width > plan.rec_max_width and columns >= width
    # the frame, its line crops and the wider batch still fit as the plan counts them
    working = 2 * frame / 2**20 + SMALL.recognizer_mb(columns)
    assert SMALL.base_mb + WORKING_MARGIN * working <= plan.budget_mb * HEADROOM
    assert planner.line_widths(plan, frame // 4)[0] >= width


def test_the_model_keeps_the_detectors_middle_and_the_recognisers_highest_peaks():
    def measured(det, rec):
        return Measurement(150.0, ((0.2, det), (0.8, det + 60.0)), rec)

    model = fitted_model([measured(30.0, ((0.4, 57.0), (0.8, 115.0), (1.2, 144.0), (1.6, 135.0))),
                          measured(50.0, ((0.4, 34.0), (0.8, 91.0), (1.2, 159.0), (1.6, 141.0))),
                          measured(40.0, ((0.4, 50.0), (0.8, 79.0), (1.2, 130.0), (1.6, 132.0)))])
    assert model.detector_mb_at(200_000) == pytest.approx(40.0)
    assert model.detector_mb_at(800_000) == pytest.approx(100.0)
    assert model.rec_points == ((0.4, 57.0), (0.8, 115.0), (1.2, 159.0), (1.6, 159.0))
    assert model.recognizer_mb(320) == 57.0
    assert model.recognizer_mb(600) == pytest.approx(86.0)
    assert model.recognizer_mb(2000) > 159.0
    for room in (57.0, 86.0, 100.0, 159.0, 200.0):
        columns = model.recognizer_columns(room)
        assert model.recognizer_mb(columns) <= room + 1e-6 < model.recognizer_mb(columns + 8)
    assert model.recognizer_columns(56.9) == 0


def test_of_children_measured_again_one_alone_does_not_set_the_recognisers_peaks():
    def measured(rec_at_400):
        return Measurement(126.0, ((0.2, 20.0), (0.8, 60.0)),
                           ((0.4, rec_at_400), (0.8, rec_at_400 + 4.0)))

    usual = [measured(mb) for mb in (11.5, 12.0, 12.7, 13.4, 14.6)]
    assert fitted_model([measured(21.2), *usual]).rec_points == ((0.4, 14.6), (0.8, 18.6))
    assert fitted_model([measured(21.2), *usual[:2]]).rec_points == ((0.4, 21.2), (0.8, 25.2))


def test_a_budget_below_the_pack_is_refused_with_what_it_needs():
    with pytest.raises(ConfigError, match=r"memory_mb 160 is too small.*needs about \d+ MB"):
        Planner(SMALL, 160, 1280, 4, 4096).plan()


def test_step_down_reaches_a_floor():
    plan = Planner(SMALL, 256, 1280, 4, 4096).plan()
    steps = 0
    while (smaller := step_down(plan)) is not None:
        assert smaller.det_max_pixels <= plan.det_max_pixels
        assert smaller.rec_max_width <= plan.rec_max_width <= plan.rec_max_columns
        plan, steps = smaller, steps + 1
    assert 0 < steps < 50
    assert (plan.det_max_pixels, plan.rec_max_width) == (DET_MIN_PIXELS, REC_MIN_WIDTH)


def test_jpeg_is_decoded_further_reduced_to_fit_the_decode_cap():
    image = np.full((3000, 4000, 3), 200, np.uint8)
    data = cv2.imencode(".jpg", image)[1].tobytes()
    limits = replace(image_limits(ImagesConfig(max_side=1024)), max_decode_pixels=1_000_000)
    decoded = decode_bytes(data, limits)
    assert decoded.pixels.shape[0] * decoded.pixels.shape[1] <= 1_000_000
    assert decoded.original_width == 4000
    png = cv2.imencode(".png", image)[1].tobytes()
    with pytest.raises(ImageTooLargeError, match="memory budget"):
        decode_bytes(png, limits)


def test_under_a_budget_the_decoders_scratch_is_handed_back_before_the_stages_run(store):
    ocr, images = OcrConfig(pack="ppocr-v6-tiny"), ImagesConfig(max_side=1024)
    model = MemoryModel(base_mb=read_memory().rss_mb, det_fixed_mb=5.0, det_mb_per_mpx=70.0,
                        rec_points=((0.4, 12.4), (1.6, 19.6)))
    engine = DaemonEngine(load_models(ocr, store), ocr, images,
                          Planner(model, 1024, ocr.det_limit_side, ocr.rec_batch, 1024))
    # an A4 scan: decoded at half scale inside the JPEG decoder, then resized to 1024
    page = render_page(703, width=2480, height=3508, lines=12).image
    data = cv2.imencode(".jpg", page)[1].tobytes()
    for _ in range(3):  # once the allocator keeps large freed blocks, they stay resident
        before = read_memory().rss_mb
        image = engine.decode(data)
        grown = read_memory().rss_mb - before
        assert image.pixels.shape[:2] == (1024, 724)
        assert grown < image.pixels.nbytes / 2**20 + 3.0
        del image


def measurements_logged(caplog) -> list[str]:
    return [r.message for r in caplog.records if r.message.startswith("measured: ")]


def test_measured_model_sees_the_recognisers_width_and_is_cached_per_model_files(
        store, tmp_path, caplog):
    caplog.set_level("INFO", logger="edge.daemon.budget")
    settings = OcrConfig(pack="ppocr-v6-tiny").model_dump_json()
    cache = tmp_path / "memory-model.json"
    model = measured_model(settings, store.root, cache)
    # the output layer alone holds batch x width/8 x 6906 floats: ~14 MB per 1000 columns
    assert model.recognizer_mb(1600) - model.recognizer_mb(400) > 6 and model.det_mb_per_mpx > 10
    assert len(measurements_logged(caplog)) == MEASUREMENTS
    assert measured_model(settings, store.root, cache) == model
    assert len(measurements_logged(caplog)) == MEASUREMENTS  # the second came from the cache
    assert json.loads(cache.read_text())["key"]["models"]  # variant files are part of the key


def test_a_pack_that_does_not_fit_the_budget_is_measured_again_before_it_is_refused(
        store, tmp_path, caplog):
    caplog.set_level("INFO", logger="edge.daemon.budget")
    settings = OcrConfig(pack="ppocr-v6-tiny").model_dump_json()
    measured_model(settings, store.root, tmp_path / "memory-model.json", fits=lambda model: False)
    # as many as fit in the time a measurement is given (a busy machine may stop early)
    assert MEASUREMENTS < len(measurements_logged(caplog)) <= MEASUREMENTS_BEFORE_REFUSING


# --- memory_mb: auto ---------------------------------------------------------------------------

def write_box(root, total_kb: int, cgroup: str = "", limits: dict | None = None):
    """A /proc and /sys/fs/cgroup of a box with `total_kb` of memory, as real files."""
    proc, cgroups = root / "proc", root / "cgroup"
    (proc / "self").mkdir(parents=True)
    (proc / "meminfo").write_text(f"MemTotal:       {total_kb} kB\nMemFree:  1000 kB\n")
    (proc / "self" / "cgroup").write_text(f"0::/{cgroup}\n")
    for folder, value in (limits or {}).items():
        (cgroups / folder).mkdir(parents=True, exist_ok=True)
        (cgroups / folder / "memory.max").write_text(value + "\n")
    cgroups.mkdir(exist_ok=True)
    return proc, cgroups


def test_auto_takes_half_of_the_box_or_of_the_tightest_cgroup_limit(tmp_path):
    pi = write_box(tmp_path / "pi", 1024 * 1024, "system.slice/edge-ocr.service",
                   {"system.slice/edge-ocr.service": "max", "system.slice": "max"})
    assert box_memory(*pi) == BoxMemory(512, "half of MemTotal 1024 MB")
    capped = write_box(tmp_path / "capped", 4 * 1024 * 1024, "system.slice/edge-ocr.service",
                       {"system.slice/edge-ocr.service": str(300 * 2**20),
                        "system.slice": str(1024 * 2**20)})
    assert box_memory(*capped) == BoxMemory(150, "half of the cgroup's memory.max 300 MB")


def test_auto_refuses_an_image_whose_decode_would_take_the_box_down(store):
    config = OcrConfig(pack="ppocr-v6-tiny", precision="int8")
    models = load_models(config, store)
    box = BoxMemory(read_memory().rss_mb + 300, "half of a 1 GB box")  # 300 MB to spare
    engine = DaemonEngine(models, config, ImagesConfig(), box=box)
    assert engine.guard.startswith("auto: images decoded up to 4") and "half of a 1 GB box" \
        in engine.guard
    with pytest.raises(ImageTooLargeError):
        engine.decode(png_header(9000, 9000) + bytes(64))  # 81 MP, refused before any pixel
    page = render_page(3, lines=3)
    small = cv2.imencode(".png", page.image)[1].tobytes()
    assert engine.decode(small).pixels.shape == page.image.shape
    unguarded = DaemonEngine(models, config, ImagesConfig())
    assert unguarded.guard is None and unguarded.memory().plan is None


# --- tiles instead of blur ---------------------------------------------------------------------

def one_line_page(text: str, width: int = 960, height: int = 720, row: int = 190) -> np.ndarray:
    page = np.full((height, width, 3), 235, np.uint8)
    cv2.putText(page, text, (40, row), cv2.FONT_HERSHEY_SIMPLEX, 1.3, (20, 20, 20), 2,
                cv2.LINE_AA)
    return page


@pytest.mark.parametrize("tile", [960 * 256, 65_536])  # strips cut across it, squares along it
def test_a_line_that_crosses_tile_borders_is_read_once_and_whole(store, tile):
    config = OcrConfig(pack="ppocr-v6-tiny", precision="int8", charset="latin")
    models = load_models(config, store)
    text = "TOTAL AMOUNT DUE 1234.56 EUR PAID BY CARD"
    page = one_line_page(text)
    image = DecodedImage(page, page.shape[1], page.shape[0])
    tiled = assemble(models, config, MemoryCaps(det_max_pixels=tile))
    assert tiled.detector.tiles(page) > 3
    whole = assemble(models, config)(image)
    assert [line.text for line in whole.lines] == [text]
    assert [line.text for line in tiled(image).lines] == [text]


@pytest.mark.parametrize("length, tile", [(704, 352), (704, 448), (1280, 832), (2016, 160),
                                          (1216, 480), (736, 704)])
def test_tiles_are_the_fewest_of_one_size_that_cover_the_input_with_their_margins(length, tile):
    spans = _spans(length, tile, 32)
    size = spans[0][1] - spans[0][0]
    assert all(end - start == size for start, end, _ in spans) and size <= tile and size % 32 == 0
    assert len(spans) == math.ceil((length - 2 * TILE_MARGIN) / (tile - 2 * TILE_MARGIN))
    assert len(_spans(length, size - 32, 32)) > len(spans)  # no smaller size covers with as few
    assert spans[0][2][0] == 0 and spans[-1][2][1] == length  # kept parts: the whole input, once
    assert all(a[2][1] == b[2][0] for a, b in zip(spans, spans[1:]))
    for start, end, (first, last) in spans:  # each kept part has context on its cut sides
        assert (start == 0 or first - start >= TILE_MARGIN) and (
            end == length or end - last >= TILE_MARGIN)


def test_a_detector_file_that_cannot_be_split_is_a_clear_error(tmp_path):
    det = tmp_path / "det.onnx"
    det.write_bytes(b"not a model")
    with pytest.raises(ModelError, match="tiled detection") as raised:
        split_detector(det)
    assert "writable" in raised.value.fix
    assert not list(tmp_path.glob("det.means*"))  # nothing half-written left beside it


def test_the_split_detector_draws_the_models_own_map(store):
    config = OcrConfig(pack="ppocr-v6-small", precision="int8")
    models, plain = load_models(config, store, tiled=True), load_models(config, store)
    tensor = assemble(models, config).detector.preprocess(render_page(5).image)[0]
    expected = plain.det(tensor)
    outputs = models.det.outputs(tensor)
    assert len(models.det_means) == len(outputs) - 1 >= 8  # the squeeze-excite gates
    assert np.array_equal(outputs[0], expected)
    given = [name + GIVEN for name in models.det_means]
    fed = models.det.outputs(tensor, {USE_GIVEN: np.array(True), **dict(zip(given, outputs[1:]))})
    assert np.array_equal(fed[0], expected)  # its own means given back: the same map
    other = [mean * 0.5 for mean in outputs[1:]]
    halved = models.det.outputs(tensor, {USE_GIVEN: np.array(True), **dict(zip(given, other))})
    assert not np.array_equal(halved[0], expected)  # and the means given are the ones used


def test_the_split_int8_detector_still_pools_its_means_on_8_bit_tensors(store, tmp_path):
    det = store.variant("ppocr-v6-small", "int8").files["det"]
    derived, means = split_detector(det)
    pooled = [_optimized_ops(path, tmp_path)["QLinearGlobalAveragePool"] for path in (det, derived)]
    assert pooled[0] == pooled[1] == len(means)  # no mean dequantizes its full-size input


def _optimized_ops(model: Path, folder: Path) -> collections.Counter:
    """Op types of the graph ONNX Runtime runs for `model` on this CPU."""
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(folder / f"{model.stem}.optimized.onnx")
    options.log_severity_level = 3
    ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    return collections.Counter(node.op_type for node in
                               onnx.load(options.optimized_model_filepath).graph.node)


def test_only_a_pack_whose_manifest_asks_runs_tiles_with_the_whole_inputs_means(store):
    for pack, split in (("ppocr-v6-small", True), ("ppocr-v6-tiny", False)):
        models = load_models(OcrConfig(pack=pack, precision="int8"), store, tiled=True)
        assert bool(models.det_means) == split, pack
        assert not load_models(OcrConfig(pack=pack, precision="int8"), store).det_means


def test_tiles_run_with_the_whole_inputs_means_draw_the_whole_inputs_map(store):
    config = OcrConfig(pack="ppocr-v6-small", precision="int8")
    text = render_page(12, width=960, height=600, lines=10).image
    page = np.vstack([text, np.full((1200, 960, 3), 235, np.uint8)])  # then blank paper
    whole = assemble(load_models(config, store), config).detector
    caps = MemoryCaps(det_max_pixels=960 * 320)
    own = assemble(load_models(config, store), config, caps).detector
    given = assemble(load_models(config, store, tiled=True), config, caps).detector
    assert own.tiles(page) == given.tiles(page) >= 4
    expected = whole.probability(page) > whole.threshold
    text = round(600 * expected.shape[0] / page.shape[0])  # map rows of the text part
    moved_own, moved_given = (
        np.count_nonzero(((d.probability(page) > d.threshold) != expected)[:text])
        for d in (own, given))
    # with their own means, tiles drew the text part 4142 pixels off the whole input's map,
    # with its means 1218 (88231 against 1948 over the whole page, blank strips lit up, before
    # the manifest clipped five of the detector's activations). Below it, the int8 detector run
    # on the whole page lights 3760 pixels of the blank paper that no tiling draws, with either
    # means (fp32 lights none); they are left out of both counts.
    assert moved_given * 2 < moved_own


def test_a_frame_in_three_strips_runs_smaller_strips_than_its_cap():
    cap = 490_000  # strips of up to 352 rows of a 1280x704 input
    assert tile_count(1280, 704, cap) == 3
    assert largest_tile(1280, 704, cap) == 1280 * 288  # 3 x 288 rows, not 3 x 352


def test_the_same_images_read_the_same_in_any_order_under_a_budget(store):
    files = {seed: cv2.imencode(".jpg", render_page(seed, width=w, height=h, lines=8).image
                                )[1].tobytes()
             for seed, (w, h) in {31: (960, 720), 32: (2480, 3508), 33: (1280, 2600)}.items()}
    ocr, images = OcrConfig(pack="ppocr-v6-tiny", charset="latin"), ImagesConfig(max_side=1700)
    models = load_models(ocr, store)
    allocator.release_free_memory()
    Path("/proc/self/clear_refs").write_text("5")  # this process's peak so far is not the plan's
    model = MemoryModel(base_mb=read_memory().rss_mb, det_fixed_mb=1.3, det_mb_per_mpx=69.6,
                        rec_points=((0.4, 6.7), (1.6, 15.5)))  # the tiny pack's, measured
    # 90 MB of working memory: the pytest process's heap, after the tests before this one,
    # takes more than a daemon's (at 70 its peak came within 2% of the budget in some runs)
    engine = DaemonEngine(models, ocr, images,
                          Planner(model, int((model.base_mb + 90) / HEADROOM), 1280, 2, 1700))
    assert engine.plan.det_max_pixels < 905 * 1280  # the A4 page is detected in tiles

    def read(order):
        texts = {}
        for seed in order:
            texts[seed] = engine(engine.decode(files[seed])).text
            engine.after_frame()
        return texts

    first = read([31, 32, 33])
    assert read([33, 32, 31, 31]) == first and read([32, 32, 33, 31]) == first
    assert not engine.degraded  # the plan made at start held


def test_a_large_page_of_small_print_is_read_under_a_160_mb_budget(tmp_path, broker):
    words = ["INVOICE", "NUMBER", "4711", "DELIVERY", "ADDRESS", "HARBOUR", "STREET", "TOTAL",
             "AMOUNT", "PAYABLE", "WITHIN", "THIRTY", "DAYS", "THANK", "YOU"]
    page = np.full((7000, 5000, 3), 240, np.uint8)
    for row, start in enumerate(range(0, len(words), 3)):
        cv2.putText(page, " ".join(words[start:start + 3]), (300, 800 + row * 1100),
                    cv2.FONT_HERSHEY_SIMPLEX, 3.0, (30, 30, 30), 6, cv2.LINE_AA)
    subscriber = Subscriber(broker.port)
    daemon = Daemon(tmp_path / "daemon", broker.port, {
        "ocr": {"pack": "ppocr-v6-tiny", "charset": "latin"},
        "images": {"max_side": 1700, "grey": True},  # as config/examples/pi-low-memory.yaml
        "resources": {"memory_mb": 160}}).start()
    try:
        daemon.wait_ready(subscriber)
        daemon.drop("a4-scan.jpg", cv2.imencode(".jpg", page, [cv2.IMWRITE_JPEG_QUALITY, 85]
                                                )[1].tobytes())
        body = wait_for(lambda: subscriber.results_by_item().get("a4-scan.jpg"), 120,
                        "the page's result")
        read = set(body["text"].split())
        assert len(read & set(words)) >= len(words) - 2, body["text"]
        assert body["image"]["decoded_scale"] < 0.5
        assert daemon.peak_rss_mb() <= 160
    finally:
        daemon.kill()
