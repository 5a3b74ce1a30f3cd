"""Quantized variants: int8 agrees with fp32, and records what it was calibrated on."""

from __future__ import annotations

import collections
import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import decoded
from edge.config import ImagesConfig, OcrConfig
from edge.daemon.budgeted_engine import image_limits
from edge.errors import ModelError
from edge.models.calibration import render_page, rendered_images
from edge.models.detinput import take_pixel_blocks, take_quantized_input
from edge.models.factory import assemble, build_pipeline, load_models
from edge.models.quantize import (
    RECIPES,
    Clipping,
    _quantize_static,
    build_fp16,
    build_int8,
    folder_set,
    is_current,
    percentile_ranges,
    prepare_for_int8,
    rendered_set,
    taken_as_fed,
)
from edge.models.rewrite import rewrite_quantized
from edge.models.store import ModelStore
from edge.ocr.detector import (
    INPUT_BLOCKS,
    INPUT_QUANTIZATION,
    Detector,
    DetectorSettings,
    input_quantization,
    pixel_blocks,
)
from edge.ocr.session import ModelSession, SessionSettings, resolve_device

PEAK_RSS = Path(__file__).resolve().parents[1] / "scripts" / "peak_rss.py"


@pytest.mark.parametrize("pack", ["ppocr-v6-small", "ppocr-v6-tiny"])
def test_installed_int8_agrees_with_fp32_on_the_same_images(store, pack):
    int8 = build_pipeline(OcrConfig(pack=pack, precision="int8"), store).pipeline
    fp32 = build_pipeline(OcrConfig(pack=pack, precision="fp32"), store).pipeline
    same = total = 0
    for seed in range(200, 206):
        image = decoded(render_page(seed).image)
        expected = [line.text for line in fp32(image).lines]
        got = set(line.text for line in int8(image).lines)
        same += sum(text in got for text in expected)
        total += len(expected)
    assert total > 30
    assert same / total >= 0.95


@pytest.mark.parametrize("pack", ["ppocr-v6-small", "ppocr-v6-tiny"])
def test_installed_int8_records_its_calibration_and_agreement(store, pack):
    info = store.variant(pack, "int8").info
    assert info["calibration"]["source"] in ("rendered", "folder")
    assert info["agreement"]["det_pixels"] >= 0.99
    assert info["agreement"]["lines_text"] >= 0.9


@pytest.mark.parametrize("pack", ["ppocr-v6-small", "ppocr-v6-tiny"])
def test_int8_detector_input_is_quantized_by_the_caller_exactly_as_the_model_did(store, pack):
    int8_config, fp32_config = (OcrConfig(pack=pack, precision=p) for p in ("int8", "fp32"))
    int8, fp32 = load_models(int8_config, store), load_models(fp32_config, store)
    scale, zero_point = input_quantization(int8.det.metadata)
    assert INPUT_QUANTIZATION not in fp32.det.metadata
    page = render_page(11).image
    float_input = assemble(fp32, fp32_config).detector.preprocess(page)[0]
    quantized = assemble(int8, int8_config).detector.preprocess(page)[0]
    assert float_input.dtype == np.float32 and quantized.dtype == np.uint8
    expected = _quantize_linear(scale, zero_point)(float_input)[0].transpose(1, 2, 0)
    assert np.array_equal(pixel_blocks(np.ascontiguousarray(expected)), quantized)


@pytest.mark.parametrize("pack", ["ppocr-v6-small", "ppocr-v6-tiny"])
def test_installed_int8_detector_runs_no_full_size_glue_the_rewrites_remove(store, pack):
    graph = onnx.load(str(store.variant(pack, "int8").files["det"])).graph
    ops = collections.Counter(node.op_type for node in graph.node)
    assert ops["ReduceMean"] == 0 and ops["DepthToSpace"] == 1
    producers = {name: node for node in graph.node for name in node.output}

    def upstream(node, steps):  # Sigmoid <- DequantizeLinear <- QuantizeLinear <- what
        for _ in range(steps):
            node = node and producers.get(node.input[0])
        return node

    sigmoid_inputs = [upstream(node, 3) for node in graph.node if node.op_type == "Sigmoid"]
    assert sigmoid_inputs and not any(node is not None and node.op_type == "Mul"
                                      for node in sigmoid_inputs)


def test_a_model_whose_input_is_not_quantized_keeps_its_float_input(store):
    model = onnx.load(str(store.variant("ppocr-v6-tiny", "fp32").files["det"]))
    nodes = len(model.graph.node)
    take_pixel_blocks(take_quantized_input(model))
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert len(model.graph.node) == nodes
    assert not {INPUT_QUANTIZATION, INPUT_BLOCKS} & {prop.key for prop in model.metadata_props}


def _initializers(model: onnx.ModelProto) -> dict:
    return {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}


def _quantize_linear(scale: float, zero_point: int) -> ModelSession:
    """ONNX Runtime's QuantizeLinear alone, as the int8 detector began before it was rewritten."""
    graph = helper.make_graph(
        [helper.make_node("QuantizeLinear", ["x", "scale", "zero_point"], ["q"])], "quantize",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("q", TensorProto.UINT8, None)],
        [helper.make_tensor("scale", TensorProto.FLOAT, [], [scale]),
         helper.make_tensor("zero_point", TensorProto.UINT8, [], [zero_point])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return ModelSession(Path("quantize_linear.onnx"), SessionSettings(),
                        model=model.SerializeToString())


@pytest.fixture
def tiny_copy(store, tmp_path):
    """A private model directory holding only the tiny pack's fp32 files."""
    source = store.pack_dir("ppocr-v6-tiny")
    shutil.copytree(source / "fp32", tmp_path / "ppocr-v6-tiny" / "fp32")
    return ModelStore(tmp_path, store.manifest)


def test_site_calibration_from_a_folder_of_frames(tiny_copy, tmp_path):
    frames = tmp_path / "frames"
    frames.mkdir()
    for seed in range(300, 310):
        cv2.imwrite(str(frames / f"frame{seed}.png"), render_page(seed).image)
    (frames / "broken.jpg").write_bytes(b"not an image")
    calibration = folder_set(frames, image_limits(ImagesConfig()), count=6)
    variant = build_int8(tiny_copy, "ppocr-v6-tiny", calibration)
    recorded = json.loads((tmp_path / "ppocr-v6-tiny" / "int8" / "variant.json").read_text())
    assert recorded["calibration"] == {"source": "folder", "path": str(frames.resolve()),
                                       "images": 6}
    assert recorded["agreement"]["images"] == 4  # the frames not used to calibrate
    assert variant.info["agreement"]["det_pixels"] >= 0.98
    assert variant.files["det"].parent.name == "int8"
    assert variant.files["rec"].parent.name == "fp32"


def test_calibration_gives_the_model_onnx_runtimes_own_calibration_gives(store, tmp_path):
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    source = store.variant("ppocr-v6-tiny", "fp32").files["det"]
    preprocess = Detector(lambda x: x, DetectorSettings(mean=(0.5,) * 3, std=(0.5,) * 3))
    inputs = [preprocess.preprocess(image.pixels)[0] for image in rendered_images(3, seed=40)]
    _quantize_static(source, tmp_path / "ours.onnx", inputs)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._items = iter([{"x": tensor} for tensor in inputs])

        def get_next(self):
            return next(self._items, None)

    prepared = prepare_for_int8(source, tmp_path)
    quantize_static(str(prepared), str(tmp_path / "theirs.onnx"), Reader(),
                    quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    theirs = taken_as_fed(rewrite_quantized(onnx.load(str(tmp_path / "theirs.onnx"))))
    ours = onnx.load(str(tmp_path / "ours.onnx"))
    assert _initializers(ours).keys() == _initializers(theirs).keys()
    assert all(np.array_equal(_initializers(ours)[name], value)
               for name, value in _initializers(theirs).items())


def test_the_small_int8_detector_clips_what_its_manifest_names_and_agrees_on_995(store):
    info = store.variant("ppocr-v6-small", "int8").info
    assert info["clipped"] == store.spec("ppocr-v6-small").quantization["clipped"]
    assert info["agreement"]["det_pixels"] >= 0.995  # 0.9946 with every range MinMax


def test_a_clipped_activation_spans_its_percentiles_not_its_extremes(store, tmp_path):
    source = store.variant("ppocr-v6-tiny", "fp32").files["det"]
    preprocess = Detector(lambda x: x, DetectorSettings(mean=(0.5,) * 3, std=(0.5,) * 3))
    inputs = [preprocess.preprocess(image.pixels)[0] for image in rendered_images(2, seed=50)]
    _quantize_static(source, tmp_path / "plain.onnx", inputs)
    plain = _activation_scales(onnx.load(str(tmp_path / "plain.onnx")))
    prepared = onnx.load(str(prepare_for_int8(source, tmp_path)))
    first_conv = next(node.output[0] for node in prepared.graph.node
                      if node.op_type == "Conv" and node.output[0] in plain)
    clipping = Clipping((first_conv,), (1.0, 99.0))
    _quantize_static(source, tmp_path / "clipped.onnx", inputs, clipping)
    clipped = _activation_scales(onnx.load(str(tmp_path / "clipped.onnx")))
    low, high = _percentiles(source, tmp_path, inputs, clipping)[first_conv]
    assert clipped[first_conv] < plain[first_conv]
    assert clipped[first_conv] == pytest.approx((high - low) / 255, rel=1e-4)
    assert {name: scale for name, scale in clipped.items() if name != first_conv} == \
        {name: scale for name, scale in plain.items() if name != first_conv}


def test_a_manifest_clipping_a_tensor_the_model_lacks_is_a_clear_error(store, tmp_path):
    source = store.variant("ppocr-v6-tiny", "fp32").files["det"]
    with pytest.raises(ModelError, match="no.such.tensor"):
        _percentiles(source, tmp_path, [], Clipping(("no.such.tensor",)))


def _percentiles(source: Path, folder: Path, inputs: list, clipping: Clipping) -> dict:
    return percentile_ranges(prepare_for_int8(source, folder), inputs, clipping)


def _activation_scales(model: onnx.ModelProto) -> dict[str, float]:
    """Each quantized activation's scale, by the name of the tensor quantized."""
    values = _initializers(model)
    return {node.input[0]: float(values[node.input[1]]) for node in model.graph.node
            if node.op_type == "QuantizeLinear" and node.input[0] not in values}


def test_building_the_int8_detector_fits_a_board_with_1_gb(tiny_copy, tmp_path):
    # ONNX Runtime's calibration session held every tensor of a run: the tiny pack peaked at
    # 1.26 GB, the small one at 1.9 GB
    peak = subprocess.run(
        [sys.executable, str(PEAK_RSS), sys.executable, "-m", "edge", "models",
         "quantize", "ppocr-v6-tiny", "--precision", "int8", "--no-measure"],
        env=dict(os.environ, EDGE_OCR_MODEL_DIR=str(tmp_path)), capture_output=True, text=True,
        check=True).stdout
    assert (tmp_path / "ppocr-v6-tiny" / "int8" / "det.onnx").is_file()
    assert int(peak.split("peak_rss_mb=")[1].split()[0]) < 800


def test_calibration_frames_are_decoded_within_the_configured_limits(tmp_path):
    page = render_page(300).image
    cv2.imwrite(str(tmp_path / "frame.png"), page)
    calibration = folder_set(tmp_path, image_limits(ImagesConfig(max_side=512)), count=1)
    assert max(page.shape[:2]) > 512
    assert max(calibration.calibrate[0].pixels.shape[:2]) <= 512


def test_fp16_variant_agrees_with_fp32(tiny_copy):
    variant = build_fp16(tiny_copy, "ppocr-v6-tiny", rendered_set(count=1).check[:3])
    assert variant.info["agreement"]["det_pixels"] >= 0.999
    assert variant.info["agreement"]["lines_text"] >= 0.95
    assert variant.info["agreement"]["device"] == resolve_device("auto")  # CUDA where there is one
    engine = build_pipeline(OcrConfig(pack="ppocr-v6-tiny", precision="fp16"), tiny_copy)
    assert engine.variant.precision == "fp16"


def test_variants_of_an_older_recipe_are_not_current(store):
    installed = store.variant("ppocr-v6-small", "int8")
    assert installed.info["recipe"] == RECIPES["int8"] and is_current(installed)
    older = replace(installed, info={k: v for k, v in installed.info.items() if k != "recipe"})
    assert not is_current(older)
