"""The int8 detector's input, taken in the form the caller can hand over cheapest.

- `take_quantized_input`: the caller quantizes the image (a table look-up per channel), not the
  model (a float copy of the image four times its size, then a pass over it).
- `take_pixel_blocks`: the stem's 3x3, stride-2 convolution over 3 channels reads the image in
  2x2 pixel blocks, 12 channels, channels-last. ONNX Runtime's int8 convolution over 3 input
  channels ran at 3.0 ms on a 1280x704 frame, after a 0.34 ms transpose of the image to
  channels-last; over the 12 channels of blocks it ran at 1.2 ms, with no transpose. The
  caller quantizes and lays out the blocks (`edge.ocr.detector.pixel_blocks`) in 0.89 ms, the
  planes took 0.51 ms: the detector ran a frame 1.05x faster. Exact: the probability map is
  bit-identical.

Each records what the caller must do in the model's metadata, which `edge.ocr.detector` reads.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edge.ocr.detector import INPUT_BLOCKS, INPUT_QUANTIZATION

BLOCK = 2  # pixels along each side of a block


def take_quantized_input(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop the QuantizeLinear on the graph input: the input becomes the uint8 tensor it made,
    and the model's metadata names its scale and zero point, so the caller quantizes instead
    (changed in place and returned). A model whose input is not quantized is returned as is."""
    graph = model.graph
    source = graph.input[0]
    readers = _readers(graph, source.name)
    if len(readers) != 1 or readers[0].op_type != "QuantizeLinear":
        return model
    quantizer = readers[0]
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    params = [numpy_helper.to_array(initializers[name]) for name in quantizer.input[1:3]
              if name in initializers]
    if len(params) != 2 or any(param.size != 1 for param in params):
        return model  # only a per-tensor quantizer with constant parameters can be taken out
    scale, zero_point = params
    for node in graph.node:
        node.input[:] = [source.name if name == quantizer.output[0] else name
                         for name in node.input]
    graph.node.remove(quantizer)
    source.type.tensor_type.elem_type = TensorProto.UINT8
    _add_metadata(model, INPUT_QUANTIZATION, f"{float(scale)!r} {int(zero_point)}")
    return model


def take_pixel_blocks(model: onnx.ModelProto) -> onnx.ModelProto:
    """A model whose quantized (N, C, H, W) input is read only by a 3x3, stride-2 convolution
    padded by 1 takes it as (N, H/2, W/2, 4C): each 2x2 block of pixels stacked along the
    channels, by block row, then block column, then channel. The convolution becomes a 2x2,
    stride-1 one over blocks, padded by one block before: a 3x3 window at stride 2 starts one
    pixel before a block, so it lies within a 4x4 window of 2x2 blocks whose first row and
    column it never reads (zero weights). Changed in place and returned; any other model is
    returned as is."""
    graph = model.graph
    match = _stem_convolution(graph)
    if match is None:
        return model
    dequantize, conv, kernel = match
    source = graph.input[0]
    channels = kernel.dims[1]
    padded = np.zeros((kernel.dims[0], channels, 2 * BLOCK, 2 * BLOCK), np.int8)
    padded[:, :, 1:, 1:] = numpy_helper.to_array(kernel)
    # (out, channel, block row, row in block, block column, column in block) ->
    # (out, row in block, column in block, channel, block row, block column)
    blocked = padded.reshape(-1, channels, BLOCK, BLOCK, BLOCK, BLOCK).transpose(0, 3, 5, 1, 2, 4)
    kernel.CopyFrom(numpy_helper.from_array(
        np.ascontiguousarray(blocked).reshape(-1, BLOCK * BLOCK * channels, BLOCK, BLOCK),
        kernel.name))
    del conv.attribute[:]
    conv.attribute.extend([helper.make_attribute("kernel_shape", [BLOCK, BLOCK]),
                           helper.make_attribute("strides", [1, 1]),
                           helper.make_attribute("pads", [1, 1, 0, 0])])
    planes = f"{source.name}.planes"
    dequantize.input[0] = planes
    graph.node.insert(0, helper.make_node("Transpose", [source.name], [planes], name=planes,
                                          perm=[0, 3, 1, 2]))
    batch = source.type.tensor_type.shape.dim[0]
    source.CopyFrom(helper.make_tensor_value_info(
        source.name, TensorProto.UINT8,
        [batch.dim_param or batch.dim_value or None, None, None, BLOCK * BLOCK * channels]))
    _add_metadata(model, INPUT_BLOCKS, str(BLOCK))
    return model


def _stem_convolution(graph):
    """(input's DequantizeLinear, Conv, its int8 kernel initializer) when the graph's uint8
    input is dequantized for one 3x3, stride-2, pad-1 convolution alone; else None."""
    source = graph.input[0]
    readers = _readers(graph, source.name)
    if (source.type.tensor_type.elem_type != TensorProto.UINT8 or len(readers) != 1
            or readers[0].op_type != "DequantizeLinear"):
        return None
    dequantize = readers[0]
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    scale = initializers.get(dequantize.input[1])
    if scale is None or numpy_helper.to_array(scale).size != 1:
        return None  # blocks mix the channels: one scale must serve them all
    convs = _readers(graph, dequantize.output[0])
    if len(convs) != 1 or convs[0].op_type != "Conv" or convs[0].input[0] != dequantize.output[0]:
        return None
    conv = convs[0]
    attributes = {attr.name: helper.get_attribute_value(attr) for attr in conv.attribute}
    if (attributes.get("kernel_shape") != [3, 3] or attributes.get("strides") != [2, 2]
            or attributes.get("pads") != [1, 1, 1, 1] or attributes.get("group", 1) != 1
            or attributes.get("dilations", [1, 1]) != [1, 1]
            or attributes.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET")):
        return None
    weights = next((node for node in graph.node if conv.input[1] in node.output), None)
    if (weights is None or weights.op_type != "DequantizeLinear"
            or weights.input[0] not in initializers
            or initializers[weights.input[0]].data_type != TensorProto.INT8
            or len(_readers(graph, weights.input[0])) != 1):
        return None
    return dequantize, conv, initializers[weights.input[0]]


def _readers(graph, tensor: str) -> list:
    return [node for node in graph.node if tensor in node.input]


def _add_metadata(model: onnx.ModelProto, key: str, value: str) -> None:
    helper.set_model_props(model, {**{prop.key: prop.value for prop in model.metadata_props},
                                   key: value})
