"""Graph rewrites around int8: the detector reads alike after each, and all of them apply."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

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
                                         rewrite.widen_narrow_convs,
                                         rewrite.strided_convs_split_at_concats])
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


def test_head_upsamplings_become_one_shuffle_of_the_map(detector_case, tmp_path):
    path, tensor = detector_case
    model = _pre_processed(path, tmp_path)
    expected, adds = _run(model, tensor), _ops(model)["Add"]
    rewrite.pixel_shuffle_transposed_convs(model)
    assert rewrite.fold_shuffle_biases(model) == 2
    assert rewrite.merge_pixel_shuffles(model) == 1
    onnx.checker.check_model(model)
    assert _ops(model)["Add"] == adds - 2
    assert _blocksizes(model) == [4]
    assert float(np.abs(_run(model, tensor) - expected).max()) < 1e-4


@pytest.mark.parametrize("rewrite_one, count", [(rewrite.global_average_pools, 5),
                                                (rewrite.fold_residual_gates, 8)])
def test_pooling_and_gate_rewrites_keep_the_probability_map(detector_case, tmp_path,
                                                             rewrite_one, count):
    path, tensor = detector_case
    model = _pre_processed(path, tmp_path)
    expected = _run(model, tensor)
    assert rewrite_one(model) == count
    onnx.checker.check_model(model)
    got = _run(model, tensor)  # the same sums in another order: float rounding only
    assert float(np.abs(got - expected).mean()) < 1e-4
    assert _agreement(expected, got) > 0.9999


def test_prepared_model_has_no_slow_patterns_left(detector_case, tmp_path):
    path, tensor = detector_case
    prepared = prepare_for_int8(path, tmp_path)
    ops = _ops(onnx.load(str(prepared)))
    assert ops["ConvTranspose"] == 0 and ops["Erf"] == 0 and ops["ReduceMean"] == 0
    assert ops["DepthToSpace"] == 1
    assert _agreement(_run(str(path), tensor), _run(str(prepared), tensor)) > 0.995


def test_sigmoid_reads_its_scaled_input_through_the_dequantization(tmp_path):
    model = _quantized_gelu(tmp_path)
    tensor = np.random.default_rng(3).normal(size=(1, 8, 6, 6)).astype(np.float32)
    expected = _run(model, tensor)
    assert _ops(model)["Mul"] == 2
    assert rewrite.fold_sigmoid_input_scales(model) == 1
    rewrite.rewrite_quantized(model)
    onnx.checker.check_model(model)
    assert _ops(model)["Mul"] == 1
    step = float(np.abs(expected).max()) / 127
    assert float(np.abs(_run(model, tensor) - expected).max()) <= 3 * step


def test_nearest_upsamplings_become_copies_of_the_8_bit_tensor(tmp_path):
    model = _quantized_upsampling(tmp_path, factor=4)
    tensor = np.random.default_rng(4).normal(size=(1, 8, 6, 10)).astype(np.float32)
    expected = _run(model, tensor)
    assert rewrite.nearest_upsamples_as_copies(model) == 1
    rewrite.rewrite_quantized(model)
    onnx.checker.check_model(model)
    assert _ops(model)["Resize"] == 0 and _ops(model)["Expand"] == 1
    got = _run(model, tensor)
    assert got.shape == (1, 8, 24, 40) and np.array_equal(got, expected)


def test_a_concatenated_input_is_quantized_at_the_concatenations_scale(tmp_path):
    model = _quantized_concat(tmp_path)
    tensor = np.random.default_rng(5).normal(size=(1, 8, 6, 6)).astype(np.float32)
    expected = _run(model, tensor)
    assert rewrite.concat_inputs_at_output_scale(model) == 1  # the pooled input keeps its own
    onnx.checker.check_model(model)
    assert _concat_input_scales(model) == [False, True]
    step = float(np.abs(expected).max()) / 127
    assert float(np.abs(_run(model, tensor) - expected).max()) <= 3 * step


def test_a_gate_is_multiplied_channels_last_along_rows(tmp_path):
    model = _quantized_gate(tmp_path)
    tensor = np.random.default_rng(6).normal(size=(1, 8, 6, 10)).astype(np.float32)
    expected = _run(model, tensor)
    assert rewrite.gates_multiplied_along_rows(model) == 1
    rewrite.rewrite_quantized(model)
    onnx.checker.check_model(model)
    assert np.array_equal(_run(model, tensor), expected)
    optimized = _optimized(model, tmp_path)
    multiply = next(node for node in optimized.graph.node if node.op_type == "QLinearMul")
    neighbours = [node.op_type for node in optimized.graph.node
                  if multiply.input[0] in node.output or multiply.output[0] in node.input]
    assert neighbours and "Transpose" not in neighbours  # ONNX Runtime's layout took them up
    assert any(node.op_type == "Expand" and node.output[0] in multiply.input
               for node in optimized.graph.node)  # the gate is read as a row


def test_built_int8_detectors_multiply_gates_along_rows(store):
    for pack in ("ppocr-v6-small", "ppocr-v6-tiny"):
        model = onnx.load(str(store.variant(pack, "int8").files["det"]))
        rows = [node for node in model.graph.node if node.op_type == "Expand"
                and node.name.endswith(".rows_gate_row_Expand")]
        assert len(rows) >= 8, pack
        assert rewrite.gates_multiplied_along_rows(model) == 0, pack


def test_built_int8_detectors_concatenate_without_requantizing(store):
    for pack in ("ppocr-v6-small", "ppocr-v6-tiny"):
        model = onnx.load(str(store.variant(pack, "int8").files["det"]))
        assert any(all(same) for same in _concat_input_scales(model, every=True)), pack


def test_built_int8_detectors_have_no_resize_left(store):
    for pack in ("ppocr-v6-small", "ppocr-v6-tiny"):
        model = onnx.load(str(store.variant(pack, "int8").files["det"]))
        assert _ops(model)["Resize"] == 0 and _ops(model)["Expand"] > 0, pack


def _quantized_gelu(tmp_path) -> onnx.ModelProto:
    """Conv then x * sigmoid(1.702 x), quantized to QDQ as the detector is."""
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.normal(size=(8, 8, 1, 1)).astype(np.float32), "w")
    scale = numpy_helper.from_array(np.array(rewrite.GELU_SIGMOID_SCALE, np.float32), "k")
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"]),
             helper.make_node("Mul", ["y", "k"], ["scaled"]),
             helper.make_node("Sigmoid", ["scaled"], ["gate"]),
             helper.make_node("Mul", ["y", "gate"], ["out"])]
    return _quantized(tmp_path, "gelu", nodes, [weight, scale], (1, 8, 6, 6))


def _quantized_upsampling(tmp_path, factor: int) -> onnx.ModelProto:
    """Conv then a nearest-neighbour upsampling by `factor` as the detector's neck has it, then
    Conv, quantized to QDQ as the detector is."""
    rng = np.random.default_rng(1)
    weights = [numpy_helper.from_array(rng.normal(size=(8, 8, 1, 1)).astype(np.float32), name)
               for name in ("w1", "w2")]
    scales = numpy_helper.from_array(np.array([1, 1, factor, factor], np.float32), "scales")
    nodes = [helper.make_node("Conv", ["x", "w1"], ["y"]),
             helper.make_node("Resize", ["y", "", "scales"], ["up"], mode="nearest",
                              coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
             helper.make_node("Conv", ["up", "w2"], ["out"])]
    return _quantized(tmp_path, "upsampling", nodes, [*weights, scales], (1, 8, 6, 10))


def _quantized_gate(tmp_path) -> onnx.ModelProto:
    """Conv, a squeeze-excite gate on it (pool, Conv, HardSigmoid), the product, then Conv;
    QDQ."""
    rng = np.random.default_rng(3)
    weights = [numpy_helper.from_array(rng.normal(size=shape).astype(np.float32), name)
               for name, shape in (("w1", (8, 8, 1, 1)), ("w2", (8, 8, 1, 1)),
                                   ("w3", (8, 8, 1, 1)))]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["y"]),
             helper.make_node("GlobalAveragePool", ["y"], ["mean"]),
             helper.make_node("Conv", ["mean", "w2"], ["logit"]),
             helper.make_node("HardSigmoid", ["logit"], ["gate"]),
             helper.make_node("Mul", ["y", "gate"], ["gated"], name="gate_mul"),
             helper.make_node("Conv", ["gated", "w3"], ["out"])]
    return _quantized(tmp_path, "gate", nodes, weights, (1, 8, 6, 10), as_the_detector=True)


def _optimized(model: onnx.ModelProto, tmp_path) -> onnx.ModelProto:
    """The graph ONNX Runtime runs for `model` on this CPU, all optimizations on."""
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    options.log_severity_level = 3
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return onnx.load(options.optimized_model_filepath)


def _quantized_concat(tmp_path) -> onnx.ModelProto:
    """Two convolutions, the max-pooled one of the wider range, concatenated, then Conv; QDQ."""
    rng = np.random.default_rng(2)
    weights = [numpy_helper.from_array(rng.normal(size=shape).astype(np.float32) * gain, name)
               for name, shape, gain in (("w1", (8, 8, 1, 1), 4.0), ("w2", (8, 8, 1, 1), 1.0),
                                         ("w3", (8, 16, 1, 1), 1.0))]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"]),
             helper.make_node("MaxPool", ["a"], ["pooled"], kernel_shape=[2, 2],
                              pads=[0, 0, 1, 1]),
             helper.make_node("Conv", ["x", "w2"], ["b"]),
             helper.make_node("Concat", ["pooled", "b"], ["both"], axis=1),
             helper.make_node("Conv", ["both", "w3"], ["out"])]
    return _quantized(tmp_path, "concat", nodes, weights, (1, 8, 6, 6))


def _concat_input_scales(model: onnx.ModelProto, every: bool = False) -> list:
    """For the (first, or `every`) quantized Concat: whether each input is read at the scale
    and zero point its output is written at."""
    graph = model.graph
    values = {init.name: numpy_helper.to_array(init).tolist() for init in graph.initializer}
    producers = {name: node for node in graph.node for name in node.output}
    readers = {name: node for node in graph.node for name in node.input}
    found = []
    for concat in (node for node in graph.node if node.op_type == "Concat"
                   and readers[node.output[0]].op_type == "QuantizeLinear"):
        written = [values[name] for name in readers[concat.output[0]].input[1:3]]
        found.append([[values[name] for name in producers[tensor].input[1:3]] == written
                      for tensor in concat.input])
    return found if every else found[0]


def _quantized(tmp_path, name: str, nodes: list, initializers: list,
               shape: tuple[int, ...], as_the_detector: bool = False) -> onnx.ModelProto:
    """The float graph of `nodes` from x to out, quantized statically to QDQ on random input
    (`as_the_detector`: 8-bit unsigned activations and weights per channel, as the int8
    detector is built)."""
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static)

    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], initializers)
    float_model = tmp_path / f"{name}.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]),
              str(float_model))

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._items = iter([{"x": rng.normal(size=shape).astype(np.float32)}
                                for _ in range(4)])

        def get_next(self):
            return next(self._items, None)

    quantized = tmp_path / f"{name}.int8.onnx"
    options = dict(per_channel=True, activation_type=QuantType.QUInt8,
                   weight_type=QuantType.QInt8) if as_the_detector else {}
    quantize_static(str(float_model), str(quantized), Reader(), quant_format=QuantFormat.QDQ,
                    **options)
    return onnx.load(str(quantized))


def _ops(model: onnx.ModelProto) -> collections.Counter:
    return collections.Counter(node.op_type for node in model.graph.node)


def _blocksizes(model: onnx.ModelProto) -> list[int]:
    return [attr.i for node in model.graph.node if node.op_type == "DepthToSpace"
            for attr in node.attribute if attr.name == "blocksize"]
