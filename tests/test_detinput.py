"""The int8 detector's input as the caller feeds it: quantized, in 2x2 pixel blocks."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from edge.config import OcrConfig
from edge.models.detinput import take_pixel_blocks, take_quantized_input
from edge.models.factory import assemble, load_models
from edge.ocr.detector import INPUT_BLOCKS, pixel_blocks
from test_rewrite import _quantized


def test_pixel_blocks_stack_each_2x2_block_by_row_then_column_then_channel():
    image = np.random.default_rng(1).integers(0, 256, (6, 8, 3), dtype=np.uint8)
    blocks = pixel_blocks(image)
    assert blocks.shape == (1, 3, 4, 12)
    for row, column, in_row, in_column, channel in np.ndindex(3, 4, 2, 2, 3):
        assert (blocks[0, row, column, in_row * 6 + in_column * 3 + channel]
                == image[2 * row + in_row, 2 * column + in_column, channel])


def test_a_stem_reading_pixel_blocks_draws_the_same_output_bit_for_bit(tmp_path):
    model = take_quantized_input(_stem(tmp_path, strides=[2, 2]))
    image = np.random.default_rng(2).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    planes = _run(model, np.ascontiguousarray(image.transpose(2, 0, 1))[np.newaxis])
    take_pixel_blocks(model)
    conv = next(node for node in model.graph.node if node.op_type == "Conv")
    assert [helper.get_attribute_value(a) for a in conv.attribute if a.name == "kernel_shape"] \
        == [[2, 2]]
    assert {prop.key: prop.value for prop in model.metadata_props}[INPUT_BLOCKS] == "2"
    blocks = _run(model, pixel_blocks(image))
    assert planes.shape == blocks.shape == (1, 8, 24, 32)
    assert np.array_equal(planes, blocks) and planes.std() > 0


def test_a_model_whose_first_convolution_is_not_a_stride_2_stem_keeps_its_planes(tmp_path):
    model = take_quantized_input(_stem(tmp_path, strides=[1, 1]))
    before = model.SerializeToString()
    take_pixel_blocks(model)
    assert model.SerializeToString() == before


@pytest.mark.parametrize("pack", ["ppocr-v6-small", "ppocr-v6-tiny"])
def test_built_int8_detectors_take_their_input_in_pixel_blocks(store, pack):
    config = OcrConfig(pack=pack, precision="int8")
    models = load_models(config, store)
    assert models.det.metadata[INPUT_BLOCKS] == "2"
    detector = assemble(models, config).detector
    tensor = detector.preprocess(np.full((100, 150, 3), 200, np.uint8))[0]
    assert tensor.dtype == np.uint8 and tensor.shape[0] == 1 and tensor.shape[3] == 12
    fp32 = OcrConfig(pack=pack, precision="fp32")
    assert INPUT_BLOCKS not in load_models(fp32, store).det.metadata


def _stem(tmp_path, strides: list[int]) -> onnx.ModelProto:
    """A quantized 3x3 convolution over 3 channels (padded by 1) and a Relu."""
    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.normal(size=(8, 3, 3, 3)).astype(np.float32), "w"),
               numpy_helper.from_array(rng.normal(size=8).astype(np.float32), "b")]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], kernel_shape=[3, 3],
                              strides=strides, pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["out"])]
    return _quantized(tmp_path, f"stem{strides[0]}", nodes, weights, (1, 3, 48, 64),
                      as_the_detector=True)


def _run(model: onnx.ModelProto, tensor: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    return session.run(None, {"x": tensor})[0]
