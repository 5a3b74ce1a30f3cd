"""Graph rewrites before int8: the float detector reads alike after each, and all of them apply."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edge.config import OcrConfig
from edge.models import rewrite
from edge.models.calibration import render_page
from edge.models.factory import detector_settings
from edge.models.quantize import pre_process, prepare_for_int8
from edge.ocr.detector import Detector


@pytest.fixture(scope="module", params=("ppocr-v6-small", "ppocr-v6-tiny"))
def detector_case(request, store):
    """(fp32 detector file, a rendered page as the detector's input tensor) for each pack."""
    pack = request.param
    spec = store.spec(pack)
    detector = Detector(lambda x: x, detector_settings(OcrConfig(pack=pack), spec.preprocess,
                                                      spec.postprocess))
    tensor = detector.preprocess(render_page(7).image)[0]
    return store.variant(pack, "fp32").files["det"], tensor


def _run(model: onnx.ModelProto | str, tensor: np.ndarray) -> np.ndarray:
    source = model if isinstance(model, str) else model.SerializeToString()
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: tensor})[0]


def _pre_processed(path, tmp_path) -> onnx.ModelProto:
    """The detector as the rewrites get it: pre-processed for quantization, not yet rewritten."""
    return onnx.load(str(pre_process(path, tmp_path)))


def _agreement(expected: np.ndarray, got: np.ndarray, threshold: float = 0.3) -> float:
    """Share of probability-map pixels on the same side of the detector's threshold."""
    return float(np.mean((expected > threshold) == (got > threshold)))


@pytest.mark.parametrize("rewrite_one", [rewrite.pixel_shuffle_transposed_convs,
                                         rewrite.widen_narrow_convs])
def test_exact_rewrites_keep_the_probability_map(detector_case, tmp_path, rewrite_one):
    path, tensor = detector_case
    model = _pre_processed(path, tmp_path)
    expected = _run(model, tensor)
    assert rewrite_one(model) > 0
    onnx.checker.check_model(model)
    got = _run(model, tensor)
    assert got.shape == expected.shape
    assert float(np.abs(got - expected).max()) < 1e-4


def test_sigmoid_gelu_moves_few_pixels_across_the_threshold(detector_case, tmp_path):
    path, tensor = detector_case
    model = _pre_processed(path, tmp_path)
    expected = _run(model, tensor)
    assert rewrite.sigmoid_gelu(model) == 13
    onnx.checker.check_model(model)
    assert _agreement(expected, _run(model, tensor)) > 0.995


def test_prepared_model_has_no_slow_patterns_left(detector_case, tmp_path):
    path, tensor = detector_case
    prepared = prepare_for_int8(path, tmp_path)
    ops = collections.Counter(node.op_type for node in onnx.load(str(prepared)).graph.node)
    assert ops["ConvTranspose"] == 0 and ops["Erf"] == 0
    assert ops["DepthToSpace"] == 2
    assert _agreement(_run(str(path), tensor), _run(str(prepared), tensor)) > 0.995
