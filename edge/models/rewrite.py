"""Graph rewrites applied to a float model before it is quantized, and to the quantized model,
so that int8 runs fast on CPU.

Each rewrite replaces a pattern ONNX Runtime runs slowly once quantized by one it runs fast:

- `pixel_shuffle_transposed_convs`: a 2x2, stride-2 transposed convolution becomes a 1x1
  convolution to four times the channels followed by DepthToSpace. Exact; the 1x1 convolution
  quantizes, the transposed one ran in float.
- `fold_shuffle_biases` and `merge_pixel_shuffles`: the DB head's two upsamplings (each a
  shuffle followed by a bias Add) become one 1x1 convolution, a second one on the same
  low-resolution grid, and a single DepthToSpace 4 of the one-channel map: the 24-channel tensor
  at half the input resolution is never made. Exact.
- `global_average_pools`: ReduceMean over H and W becomes GlobalAveragePool, which runs on
  8-bit tensors (ReduceMean made ONNX Runtime dequantize its full-size input). Exact.
- `fold_residual_gates`: x + x * g (a squeeze-excite gate g per channel) becomes x * (g + 1),
  one full-size pass instead of two. Exact in float.
- `sigmoid_gelu`: GELU written out with Erf (Div, Erf, Add, Mul, Mul: five float passes between
  quantize and dequantize nodes) becomes x * sigmoid(1.702 x), which runs on 8-bit tensors.
  Approximate: the two differ by at most 0.02 per activation; on rendered pages the float
  probability map changes side of the threshold on 0.03-0.3% of pixels, about what int8 itself
  changes. On sroie-dev words F1 went 0.9018 -> 0.9034 and detection H-mean 0.822 -> 0.814.
- `widen_narrow_convs`: a convolution with fewer than 16 output channels (12 in the small
  detector's stem) falls off the fast int8 kernel: measured 38 ms at 640x368 against 2 ms once
  widened to 16 with zero weights. Exact.
- `strided_convs_split_at_concats`: a strided convolution over a concatenation of two
  tensors becomes one convolution over each and an Add. Quantized, the Concat ran channels-last
  on 8-bit tensors, interleaving every pixel's channels and requantizing the input written at
  another scale: 1.83 ms at 352x640x48 in the small detector's stem, ahead of a 1.01 ms
  convolution; the two convolutions and the Add of their quarter-size outputs ran 0.66, 0.66
  and 0.14 ms. Exact in float; quantized, each part is rounded before they are added, and the
  MaxPool branch is no longer requantized to the concatenation's scale. A 1280x704 frame ran
  1.04x (small) and 1.06x (tiny) faster; the small int8 detector's pixel agreement with fp32
  rose (rendered pages 99.78 -> 99.81 %, street scenes 99.93 -> 99.95 %, receipts 99.685 ->
  99.688 %), its words F1 moved by about the noise of any requantization (street scenes
  0.9423 -> 0.9402, receipts 0.9102 -> 0.9104, A4 scans 0.9502 -> 0.9469).
- `fold_sigmoid_input_scales` (on the quantized model): the 1.702 x of the GELU is read by
  the Sigmoid through a dequantization with 1.702 times the scale, and its Mul is gone.
- `nearest_upsamples_as_copies` (on the quantized model): the neck's nearest-neighbour
  upsamplings by 2, 4 and 8 become plain copies of the 8-bit tensor, each pixel repeated.
  ONNX Runtime runs Resize on channels-last 8-bit tensors by a general path (4.6-8.6 ms at
  176x320x96 against 0.6 ms for the copy). Exact: the probability map is bit-identical, and a
  1280x704 frame ran 1.10x (small) and 1.11x (tiny) faster.
- `concat_inputs_at_output_scale` (on the quantized model): an input of a Concat quantized only
  to be concatenated is written at the Concat's own scale, so it is copied into place, not
  requantized value by value. The small detector's neck Concat at 1280x704 went from 1.40 to
  0.43 ms; of the lines fp32 reads on 40 street scenes and 100 receipts, the int8 pipeline read
  as many identically (small 94.90 and 93.63 % against 94.90 and 93.57 %, tiny 85.99 and
  84.82 % against 84.71 and 84.82 %).
- `gates_multiplied_along_rows` (on the quantized model): x * g, with g one value per channel
  (a squeeze-excite gate), is multiplied channels-last against g repeated along a row. ONNX
  Runtime multiplies channels-last either way; broadcast against one value per channel it
  multiplies C values at a time (1.20 ms at 176x320x24), against a row W x C at a time
  (0.25 ms). Exact: the probability map is bit-identical, and a 1280x704 frame ran 1.04x
  faster (small and tiny).

They run on the model after ONNX Runtime's pre-processing (biases already folded into Conv).
Measured on the small detector at 1280x736: 18-26% less time per frame (two runs), and working
memory at 1280x896 from 155 to 96 MB (tiny detector: 115 to 65 MB); the head, pooling, gate and
sigmoid-scale rewrites took a further 1280x704 frame about 1.2x faster (small and tiny).
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import onnx
from onnx import helper, numpy_helper

GELU_SIGMOID_SCALE = 1.702
_GRAPH_OUTPUT = SimpleNamespace(op_type="graph output", input=[])
_COPY_OPS = {"Transpose", "Unsqueeze", "Expand", "Reshape"}  # move 8-bit values, change none
# ops ONNX Runtime runs on 8-bit tensors writing any output scale (MaxPool, for one, keeps its
# input's, so the scale of what it writes cannot be chosen alone)
_REQUANTIZING = {"Conv", "Add", "Mul"}


def rewrite_for_int8(model: onnx.ModelProto) -> onnx.ModelProto:
    """Apply every float rewrite below; the model is changed in place and returned."""
    pixel_shuffle_transposed_convs(model)
    fold_shuffle_biases(model)
    merge_pixel_shuffles(model)
    global_average_pools(model)
    fold_residual_gates(model)
    sigmoid_gelu(model)
    strided_convs_split_at_concats(model)
    widen_narrow_convs(model)
    _drop_unused_initializers(model.graph)
    del model.graph.value_info[:]  # shapes of widened tensors changed; the quantizer infers anew
    return model


def rewrite_quantized(model: onnx.ModelProto) -> onnx.ModelProto:
    """Apply the rewrites of a quantized (QDQ) model; changed in place and returned."""
    fold_sigmoid_input_scales(model)
    nearest_upsamples_as_copies(model)
    _drop_unused_nodes(model.graph)  # the copies' sources are read by nothing else from here
    concat_inputs_at_output_scale(model)
    gates_multiplied_along_rows(model)
    _drop_unused_nodes(model.graph)  # the dequantizations the gates' multiplies read before
    _drop_unused_initializers(model.graph)
    return model


def fold_sigmoid_input_scales(model: onnx.ModelProto) -> int:
    """In a QDQ model, Sigmoid(k * x) with x quantized reads x through a DequantizeLinear whose
    scale is k times x's: the Mul by k (a full pass on 8-bit tensors, with its own rounding)
    is gone. Exact up to the rounding the Mul did; the 1.702 x of `sigmoid_gelu`."""
    graph, weights = model.graph, _initializers(model.graph)
    count = 0
    for sigmoid in list(graph.node):
        match = sigmoid.op_type == "Sigmoid" and _match_scaled_input(graph, sigmoid, weights)
        if not match:
            continue
        source, factor, dead = match
        scale = numpy_helper.to_array(weights[source.input[1]]) * factor
        name = f"{sigmoid.name}.input"
        inputs = [source.input[0], _add_initializer(graph, f"{name}_scale", scale),
                  *source.input[2:]]
        reader = helper.make_node("DequantizeLinear", inputs, [f"{name}_dequantized"],
                                  name=f"{name}_DequantizeLinear")
        sigmoid.input[0] = reader.output[0]
        graph.node.insert(list(graph.node).index(sigmoid), reader)
        for node in dead:
            graph.node.remove(node)
        count += 1
    return count


def _match_scaled_input(graph, sigmoid, weights: dict):
    """(x's DequantizeLinear, k, nodes made unused) for Sigmoid <- DQ <- Q <- Mul(DQ(x), k)."""
    consumers = _consumers(graph)
    chain, tensor = [], sigmoid.input[0]
    for op_type in ("DequantizeLinear", "QuantizeLinear", "Mul"):
        node = _producer(graph, tensor)
        if node is None or node.op_type != op_type or len(consumers.get(node.output[0], [])) != 1:
            return None
        chain.append(node)
        tensor = node.input[0]
    mul = chain[-1]
    readers = [_producer(graph, name) for name in mul.input]
    if any(node is None or node.op_type != "DequantizeLinear" for node in readers):
        return None
    for source, constant in (readers, readers[::-1]):
        factor = _dequantized_constant(constant, weights)
        if (factor is not None and factor > 0 and source.input[0] not in weights
                and _scalar_initializer(weights, source.input[1])
                and (len(source.input) < 3 or _scalar_initializer(weights, source.input[2]))):
            return source, np.float32(factor), chain
    return None


def _dequantized_constant(node, weights: dict):
    """The value a DequantizeLinear of scalar initializers gives, else None."""
    names = [name for name in node.input if name]
    if not all(_scalar_initializer(weights, name) for name in names):
        return None
    values = [numpy_helper.to_array(weights[name]).astype(np.float64) for name in names]
    zero_point = values[2] if len(values) > 2 else 0.0
    return float((values[0] - zero_point) * values[1])


def _scalar_initializer(weights: dict, name: str) -> bool:
    return name in weights and int(np.prod(weights[name].dims)) == 1


def nearest_upsamples_as_copies(model: onnx.ModelProto) -> int:
    """In a QDQ model, a nearest-neighbour Resize by a whole factor k, read through a
    DequantizeLinear and written through a QuantizeLinear of the same scale and zero point,
    becomes a copy of the 8-bit tensor with each pixel repeated k x k times: channels-last
    (ONNX Runtime cancels these transposes against its own channels-last layout), a unit axis
    after each of H and W, Expand to k along both, Reshape to (kH, kW), channels-first again."""
    graph, weights = model.graph, _initializers(model.graph)
    consumers = _consumers(graph)
    count = 0
    for resize in list(graph.node):
        match = resize.op_type == "Resize" and _match_quantized_upsample(graph, resize, consumers,
                                                                        weights)
        if not match:
            continue
        source, quantize, factor = match
        at = list(graph.node).index(resize)
        graph.node.remove(resize)
        graph.node.remove(quantize)
        for offset, node in enumerate(_repeated_pixels(graph, resize.name, source,
                                                       quantize.output[0], factor)):
            graph.node.insert(at + offset, node)
        count += 1
    return count


def _match_quantized_upsample(graph, resize, consumers: dict, weights: dict):
    """(the 8-bit input, the QuantizeLinear after, k) for DQ -> Resize(nearest, x k) -> Q with
    equal quantization on both sides; None otherwise."""
    attributes = _attributes(resize)
    if (attributes.get("mode", b"nearest") != b"nearest"
            or attributes.get("coordinate_transformation_mode") != b"asymmetric"
            or attributes.get("nearest_mode") != b"floor"
            or len(resize.input) < 3 or resize.input[2] not in weights
            or (len(resize.input) > 3 and resize.input[3])):
        return None
    scales = numpy_helper.to_array(weights[resize.input[2]])
    factor = int(scales[-1]) if scales.shape == (4,) else 0
    if factor < 2 or not np.array_equal(scales, np.array([1, 1, factor, factor], scales.dtype)):
        return None
    dequantize = _producer(graph, resize.input[0])
    quantize = _only_consumer(consumers, resize.output[0], "QuantizeLinear")
    if (dequantize is None or dequantize.op_type != "DequantizeLinear" or quantize is None
            or not _same_quantization(dequantize, quantize, weights)):
        return None
    return dequantize.input[0], quantize, factor


def _same_quantization(dequantize, quantize, weights: dict) -> bool:
    """Both nodes have constant scales and zero points, and the same ones."""
    if len(dequantize.input) != 3 or len(quantize.input) != 3:
        return False
    for read, written in zip(dequantize.input[1:], quantize.input[1:]):
        if read not in weights or written not in weights:
            return False
        before, after = (numpy_helper.to_array(weights[name]) for name in (read, written))
        if before.dtype != after.dtype or not np.array_equal(before, after):
            return False
    return True


def _repeated_pixels(graph, name: str, source: str, output: str, factor: int) -> list:
    """The nodes that write `source` (N, C, H, W) to `output` with each pixel repeated
    `factor` x `factor` times."""
    def constant(suffix: str, values: list[int]) -> str:
        graph.initializer.append(numpy_helper.from_array(np.array(values, np.int64),
                                                         f"{name}_{suffix}"))
        return f"{name}_{suffix}"

    def node(op_type: str, inputs: list[str], **attributes):
        out = f"{name}_{op_type.lower()}"
        return helper.make_node(op_type, inputs, [out], name=f"{name}_{op_type}", **attributes)

    channels_last = node("Transpose", [source], perm=[0, 2, 3, 1])
    unit_axes = node("Unsqueeze", [channels_last.output[0], constant("axes", [2, 4])])
    repeated = node("Expand", [unit_axes.output[0], constant("repeats", [1, 1, factor, 1,
                                                                         factor, 1])])
    shape = node("Shape", [channels_last.output[0]])
    size = node("Mul", [shape.output[0], constant("factors", [1, factor, factor, 1])])
    merged = node("Reshape", [repeated.output[0], size.output[0]])
    channels_first = helper.make_node("Transpose", [merged.output[0]], [output],
                                      perm=[0, 3, 1, 2], name=f"{name}_Transpose_back")
    return [channels_last, unit_axes, repeated, shape, size, merged, channels_first]


def concat_inputs_at_output_scale(model: onnx.ModelProto) -> int:
    """In a QDQ model, an input of a Concat that is quantized only to be concatenated (Q, then
    8-bit copies such as `nearest_upsamples_as_copies` writes, then DQ, each read by nothing
    else) is quantized straight to the Concat's output scale and zero point. ONNX Runtime then
    copies it into place instead of requantizing every value, and each value is rounded once
    where it was rounded twice: the Concat's output is quantized to that scale anyway."""
    graph, weights = model.graph, _initializers(model.graph)
    consumers = _consumers(graph)
    count = 0
    for concat in graph.node:
        written = (_only_consumer(consumers, concat.output[0], "QuantizeLinear")
                   if concat.op_type == "Concat" else None)
        if written is None or len(written.input) != 3:
            continue
        for tensor in concat.input:
            pair = _quantized_only_to_concat(graph, tensor, consumers, weights)
            if pair and not _same_quantization(pair[1], written, weights):
                for node in pair:
                    node.input[1:3] = written.input[1:3]
                count += 1
    return count


def _quantized_only_to_concat(graph, tensor: str, consumers: dict, weights: dict):
    """(Q, DQ) for DQ(tensor) <- 8-bit copies <- Q of one quantization <- an op that can write
    any scale, each tensor on the way read only by the next (a Shape aside); None otherwise."""
    dequantize = _producer(graph, tensor)
    if (dequantize is None or dequantize.op_type != "DequantizeLinear"
            or _readers(consumers, tensor) != 1):
        return None
    node = _producer(graph, dequantize.input[0])
    while node is not None and node.op_type in _COPY_OPS:
        if _readers(consumers, node.output[0]) != 1:
            return None
        node = _producer(graph, node.input[0])
    if (node is None or node.op_type != "QuantizeLinear"
            or _readers(consumers, node.output[0]) != 1
            or not _same_quantization(dequantize, node, weights)):
        return None
    source = _producer(graph, node.input[0])
    return (node, dequantize) if source is not None and source.op_type in _REQUANTIZING else None


def _readers(consumers: dict, tensor: str) -> int:
    """How many nodes read the values of `tensor` (a Shape reads only its shape)."""
    return sum(node.op_type != "Shape" for node in consumers.get(tensor, []))


def gates_multiplied_along_rows(model: onnx.ModelProto) -> int:
    """In a QDQ model, DQ(x) * DQ(g) -> Q, with g of shape (N, C, 1, 1), becomes the same
    multiply channels-last: x as (N, H, W, C) times g repeated along a row, (N, 1, W, C), and
    the 8-bit result channels-first again. ONNX Runtime cancels the transposes of x and of the
    result against its own channels-last layout; only the gate's row is made anew. Exact."""
    graph = model.graph
    weights = _initializers(graph)
    gates = _per_channel_tensors(model)
    consumers = _consumers(graph)
    count = 0
    for mul in list(graph.node):
        match = mul.op_type == "Mul" and _match_quantized_gate(graph, mul, gates, consumers,
                                                               weights)
        if not match:
            continue
        features, gate, quantize = match
        nodes, (features_last, gate_row) = _rows_of_gate(graph, mul.name, features, gate)
        at = list(graph.node).index(mul)
        for offset, node in enumerate(nodes):
            graph.node.insert(at + offset, node)
        mul.input[:] = [features_last if name == features.output[0] else gate_row
                        for name in mul.input]
        result = quantize.output[0]
        quantize.output[0] = f"{mul.name}.rows_result"
        graph.node.insert(list(graph.node).index(quantize) + 1, helper.make_node(
            "Transpose", [quantize.output[0]], [result], perm=[0, 3, 1, 2],
            name=f"{mul.name}.rows_Transpose_back"))
        count += 1
    if count:
        del graph.value_info[:]  # the multiplies' tensors are channels-last now
    return count


def _per_channel_tensors(model: onnx.ModelProto) -> set:
    """Names of the 4-D tensors whose two spatial axes are 1, by ONNX shape inference."""
    return {name for name, dims in _4d_shapes(model).items() if dims[2:] == [1, 1]}


def _match_quantized_gate(graph, mul, gates: set, consumers: dict, weights: dict):
    """(DQ of x, DQ of g, the Q after) for DQ(x) * DQ(g) -> Q with g per channel and x not,
    each quantized per tensor; None otherwise."""
    if len(mul.input) != 2:
        return None
    dequantized = [_producer(graph, name) for name in mul.input]
    if any(node is None or node.op_type != "DequantizeLinear"
           or not _scalar_initializer(weights, node.input[1]) for node in dequantized):
        return None
    per_channel = [name in gates for name in mul.input]
    quantize = _only_consumer(consumers, mul.output[0], "QuantizeLinear")
    if per_channel.count(True) != 1 or quantize is None:
        return None
    gate = dequantized[per_channel.index(True)]
    features = dequantized[per_channel.index(False)]
    return features, gate, quantize


def _rows_of_gate(graph, name: str, features, gate) -> tuple[list, tuple[str, str]]:
    """The nodes that dequantize x channels-last and g repeated along a row of x, and the names
    of those two float tensors."""
    def node(op_type: str, inputs: list[str], suffix: str, **attributes):
        return helper.make_node(op_type, inputs, [f"{name}.rows_{suffix}"],
                                name=f"{name}.rows_{suffix}_{op_type}", **attributes)

    ones, one = "gate_rows.ones", "gate_rows.one"  # shared by every gate's row shape
    if ones not in _initializers(graph):
        graph.initializer.extend([numpy_helper.from_array(np.array([1, 1], np.int64), ones),
                                  numpy_helper.from_array(np.array([1], np.int64), one)])
    x_last = node("Transpose", [features.input[0]], "x", perm=[0, 2, 3, 1])
    x_float = node("DequantizeLinear", [x_last.output[0], *features.input[1:]], "x_float")
    g_last = node("Transpose", [gate.input[0]], "gate", perm=[0, 2, 3, 1])
    width = node("Shape", [x_last.output[0]], "width", start=2, end=3)
    size = node("Concat", [ones, width.output[0], one], "size", axis=0)
    row = node("Expand", [g_last.output[0], size.output[0]], "gate_row")
    row_float = node("DequantizeLinear", [row.output[0], *gate.input[1:]], "gate_float")
    nodes = [x_last, x_float, g_last, width, size, row, row_float]
    return nodes, (x_float.output[0], row_float.output[0])


def pixel_shuffle_transposed_convs(model: onnx.ModelProto) -> int:
    """Turn 2x2 stride-2 unpadded transposed convolutions into Conv 1x1 + DepthToSpace."""
    graph, weights = model.graph, _initializers(model.graph)
    count = 0
    for node in list(graph.node):
        attrs = _attributes(node)
        if (node.op_type != "ConvTranspose" or list(attrs.get("kernel_shape", [])) != [2, 2]
                or list(attrs.get("strides", [])) != [2, 2] or attrs.get("group", 1) != 1
                or any(attrs.get("pads", [0])) or any(attrs.get("output_padding", [0]))
                or list(attrs.get("dilations", [1, 1])) != [1, 1]
                or any(name not in weights for name in node.input[1:] if name)):
            continue
        kernel = numpy_helper.to_array(weights[node.input[1]])  # [in, out, 2, 2]
        inputs, outputs = kernel.shape[:2]
        # output channel c*4 + i*2 + j holds tap (i, j) of channel c: DepthToSpace's CRD order
        pointwise = kernel.transpose(1, 2, 3, 0).reshape(outputs * 4, inputs, 1, 1)
        conv_inputs = [node.input[0], _add_initializer(graph, f"{node.name}.pointwise", pointwise)]
        if len(node.input) > 2 and node.input[2]:
            bias = numpy_helper.to_array(weights[node.input[2]])
            conv_inputs.append(_add_initializer(graph, f"{node.name}.bias", np.repeat(bias, 4)))
        shuffled = f"{node.name}.shuffled"
        conv = helper.make_node("Conv", conv_inputs, [shuffled], name=f"{node.name}.conv",
                                kernel_shape=[1, 1])
        shuffle = helper.make_node("DepthToSpace", [shuffled], list(node.output),
                                   name=f"{node.name}.shuffle", blocksize=2, mode="CRD")
        position = list(graph.node).index(node)
        graph.node.remove(node)
        graph.node.insert(position, shuffle)
        graph.node.insert(position, conv)
        count += 1
    return count


def fold_shuffle_biases(model: onnx.ModelProto) -> int:
    """Move a per-channel constant Add after Conv -> DepthToSpace into the Conv's bias. Exact:
    the Add ran on the large shuffled tensor, the bias costs nothing."""
    graph, weights = model.graph, _initializers(model.graph)
    consumers = _consumers(graph)
    count = 0
    for shuffle in list(graph.node):
        conv = _crd_shuffle_after_conv(graph, shuffle, consumers, weights)
        add = conv and _only_consumer(consumers, shuffle.output[0], "Add")
        other = add and [name for name in add.input if name != shuffle.output[0]]
        if not other or len(other) != 1 or other[0] not in weights:
            continue
        channels = numpy_helper.to_array(weights[conv.input[1]]).shape[0]
        block = _attributes(shuffle)["blocksize"] ** 2
        bias = _per_channel(numpy_helper.to_array(weights[other[0]]), channels // block)
        if bias is None:
            continue
        total = _bias(weights, conv, channels) + np.repeat(bias, block)
        name = _add_initializer(graph, f"{conv.name}.folded_bias", total)
        conv.input[:] = [conv.input[0], conv.input[1], name]
        shuffle.output[0] = add.output[0]
        graph.node.remove(add)
        count += 1
    return count


def merge_pixel_shuffles(model: onnx.ModelProto) -> int:
    """Conv 1x1 -> DepthToSpace 2 -> [Relu] -> Conv 1x1 -> DepthToSpace 2 becomes
    Conv 1x1 -> [Relu] -> Conv 1x1 -> DepthToSpace 4. Exact: the second convolution reads each
    of the four sub-pixel planes where the first shuffle put them, so the tensor between the two
    is never spread to twice the resolution (the DB head's last two upsamplings)."""
    graph, weights = model.graph, _initializers(model.graph)
    count = 0
    for second_shuffle in list(graph.node):
        consumers = _consumers(graph)
        match = _match_double_shuffle(graph, second_shuffle, consumers, weights)
        if match is None:
            continue
        first_shuffle, relu, conv = match
        kernel = numpy_helper.to_array(weights[conv.input[1]])[:, :, 0, 0]  # [4 * out, in]
        merged, bias = _merged_pointwise(kernel, _bias(weights, conv, kernel.shape[0]))
        conv.input[:] = [conv.input[0], _add_initializer(graph, f"{conv.name}.merged", merged),
                         _add_initializer(graph, f"{conv.name}.merged_bias", bias)]
        start = first_shuffle.input[0]
        if relu is not None:
            relu.input[0] = start
            start = relu.output[0]
        conv.input[0] = start
        graph.node.remove(first_shuffle)
        for attr in second_shuffle.attribute:
            if attr.name == "blocksize":
                attr.i = 4
        count += 1
    return count


def _match_double_shuffle(graph, shuffle, consumers: dict, weights: dict):
    """(first shuffle, relu or None, second conv) when `shuffle` ends the pattern above."""
    conv = _crd_shuffle_after_conv(graph, shuffle, consumers, weights, blocksize=2)
    if conv is None or not _is_pointwise(conv):
        return None
    producer = _producer(graph, conv.input[0])
    relu = producer if producer is not None and producer.op_type == "Relu" else None
    if relu is not None:
        if len(consumers.get(relu.output[0], [])) != 1:
            return None
        producer = _producer(graph, relu.input[0])
    first_conv = producer and _crd_shuffle_after_conv(graph, producer, consumers, weights,
                                                      blocksize=2)
    if first_conv is None or not _is_pointwise(first_conv):
        return None
    if len(consumers.get(producer.output[0], [])) != 1:
        return None
    return producer, relu, conv


def _merged_pointwise(kernel: np.ndarray, bias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weights of the 1x1 convolution that, read by DepthToSpace 4, does what the second 1x1
    convolution did between two DepthToSpace 2 (CRD order throughout)."""
    outputs, inputs = kernel.shape[0] // 4, kernel.shape[1]
    merged = np.zeros((outputs * 16, inputs * 4), np.float32)
    merged_bias = np.zeros(outputs * 16, np.float32)
    for m, i, j, p, q in np.ndindex(outputs, 2, 2, 2, 2):
        row = m * 16 + (2 * i + p) * 4 + (2 * j + q)
        merged[row, i * 2 + j::4] = kernel[m * 4 + p * 2 + q]
        merged_bias[row] = bias[m * 4 + p * 2 + q]
    return merged.reshape(outputs * 16, inputs * 4, 1, 1), merged_bias


def _crd_shuffle_after_conv(graph, shuffle, consumers: dict, weights: dict, blocksize=None):
    """The Conv feeding DepthToSpace `shuffle` (CRD) alone, with constant weights; else None."""
    attrs = _attributes(shuffle)
    if (shuffle.op_type != "DepthToSpace" or attrs.get("mode", b"DCR") not in (b"CRD", "CRD")
            or (blocksize is not None and attrs.get("blocksize") != blocksize)):
        return None
    conv = _producer(graph, shuffle.input[0])
    if (conv is None or conv.op_type != "Conv" or _attributes(conv).get("group", 1) != 1
            or len(consumers.get(conv.output[0], [])) != 1
            or any(name not in weights for name in conv.input[1:] if name)):
        return None
    return conv


def _per_channel(array: np.ndarray, channels: int):
    """The constant as one value per channel of an NCHW tensor, or None if it is not one."""
    if array.size == 1:
        return np.full(channels, float(array.reshape(())), np.float32)
    if array.ndim == 4 and array.shape == (1, channels, 1, 1):
        return array.reshape(channels).astype(np.float32)
    return None


def _is_pointwise(conv) -> bool:
    attrs = _attributes(conv)
    return (list(attrs.get("kernel_shape", [])) == [1, 1]
            and list(attrs.get("strides", [1, 1])) == [1, 1] and not any(attrs.get("pads", [0])))


def _bias(weights: dict, conv, channels: int) -> np.ndarray:
    if len(conv.input) > 2 and conv.input[2]:
        return numpy_helper.to_array(weights[conv.input[2]])
    return np.zeros(channels, np.float32)


def global_average_pools(model: onnx.ModelProto) -> int:
    """ReduceMean over both spatial axes of a 4-D tensor (keeping them) becomes
    GlobalAveragePool. Exact; ONNX Runtime runs the pool on 8-bit tensors, while ReduceMean
    made it dequantize the whole full-size input to float first."""
    ranks = {info.name: len(info.type.tensor_type.shape.dim)
             for info in (*model.graph.value_info, *model.graph.input)}
    count = 0
    for node in model.graph.node:
        attrs = _attributes(node)
        if (node.op_type != "ReduceMean" or len(node.input) != 1
                or ranks.get(node.input[0]) != 4 or attrs.get("keepdims", 1) != 1
                or sorted(axis % 4 for axis in attrs.get("axes", [])) != [2, 3]):
            continue
        node.op_type = "GlobalAveragePool"
        del node.attribute[:]
        count += 1
    return count


def fold_residual_gates(model: onnx.ModelProto) -> int:
    """x + x * g, with g one value per channel (a squeeze-excite gate), becomes x * (g + 1):
    the Add moves from the full-size tensor to the per-channel one. Exact in float."""
    graph = model.graph
    gates = {info.name for info in graph.value_info
             if [dim.dim_value for dim in info.type.tensor_type.shape.dim][2:] == [1, 1]}
    one = "residual_gate.one"
    consumers = _consumers(graph)  # each fold rewires only its own Mul and Add
    count = 0
    for add in list(graph.node):
        match = _match_residual_gate(graph, add, gates, consumers)
        if match is None:
            continue
        mul, gate = match
        if one not in _initializers(graph):
            _add_initializer(graph, one, np.array(1.0))
        shifted = helper.make_node("Add", [gate, one], [f"{mul.name}.gate_plus_one"],
                                   name=f"{mul.name}.plus_one")
        mul.input[:] = [name if name != gate else shifted.output[0] for name in mul.input]
        mul.output[0] = add.output[0]
        graph.node.insert(list(graph.node).index(mul), shifted)
        graph.node.remove(add)
        count += 1
    return count


def _match_residual_gate(graph, add, gates: set, consumers: dict):
    """(Mul, gate tensor) when `add` is Add(x, Mul(x, gate)) and the Mul feeds only it."""
    if add.op_type != "Add" or len(add.input) != 2:
        return None
    for source, product in (add.input, add.input[::-1]):
        mul = _producer(graph, product)
        if (mul is None or mul.op_type != "Mul" or source not in mul.input
                or len(consumers.get(product, [])) != 1):
            continue
        gate = [name for name in mul.input if name != source]
        if len(gate) == 1 and gate[0] in gates:
            return mul, gate[0]
    return None


def widen_narrow_convs(model: onnx.ModelProto, channels: int = 16) -> int:
    """Widen Conv -> Relu -> Conv chains with fewer than `channels` channels to that many.

    The extra output channels have zero weights and bias (so they stay 0 through Relu), and the
    next convolution reads them with zero weights. Exact.
    """
    graph, weights = model.graph, _initializers(model.graph)
    consumers = _consumers(graph)
    count = 0
    for conv in list(graph.node):
        if conv.op_type != "Conv" or _attributes(conv).get("group", 1) != 1:
            continue
        relu = _only_consumer(consumers, conv.output[0], "Relu")
        after = relu and _only_consumer(consumers, relu.output[0], "Conv")
        if (after is None or _attributes(after).get("group", 1) != 1 or len(conv.input) < 3
                or any(name not in weights for name in (*conv.input[1:3], after.input[1]))):
            continue
        kernel = numpy_helper.to_array(weights[conv.input[1]])
        extra = channels - kernel.shape[0]
        if extra <= 0:
            continue
        bias = numpy_helper.to_array(weights[conv.input[2]])
        following = numpy_helper.to_array(weights[after.input[1]])
        _replace(weights, conv.input[1], np.pad(kernel, [(0, extra)] + [(0, 0)] * 3))
        _replace(weights, conv.input[2], np.pad(bias, (0, extra)))
        _replace(weights, after.input[1], np.pad(following, [(0, 0), (0, extra), (0, 0), (0, 0)]))
        count += 1
    return count


def strided_convs_split_at_concats(model: onnx.ModelProto) -> int:
    """Conv(Concat(a, b)) with a stride above 1 becomes Conv(a) + Conv(b), each with its input's
    part of the kernel (the first with the bias); return how many. Exact in float."""
    graph, weights = model.graph, _initializers(model.graph)
    consumers = _consumers(graph)
    channels = _channel_counts(model)
    count = 0
    for concat in list(graph.node):
        conv = _strided_conv_over(concat, consumers, channels, weights)
        if conv is None:
            continue
        kernel = numpy_helper.to_array(weights[conv.input[1]])
        at = list(graph.node).index(concat)
        graph.node.remove(concat)
        graph.node.remove(conv)
        parts, start = [], 0
        for index, source in enumerate(concat.input):
            name, end = f"{conv.name}.part{index}", start + channels[source]
            inputs = [source, _add_initializer(graph, f"{name}.weight", kernel[:, start:end])]
            part = helper.make_node("Conv", inputs + [conv.input[2]] * (index == 0), [name],
                                    name=name)
            part.attribute.extend(conv.attribute)
            graph.node.insert(at + index, part)
            parts.append(name)
            start = end
        graph.node.insert(at + len(parts), helper.make_node("Add", parts, [conv.output[0]],
                                                            name=f"{conv.name}.parts"))
        count += 1
    return count


def _strided_conv_over(concat, consumers: dict, channels: dict, weights: dict):
    """The Conv reading a two-input channel Concat alone, at a stride above 1, ungrouped,
    with a constant kernel and bias, when both inputs' channels are known; else None."""
    if (concat.op_type != "Concat" or len(concat.input) != 2
            or _attributes(concat).get("axis") != 1
            or any(name not in channels for name in concat.input)):
        return None
    conv = _only_consumer(consumers, concat.output[0], "Conv")
    if conv is None or conv.input[0] != concat.output[0] or len(conv.input) < 3:
        return None
    attributes = _attributes(conv)
    if (attributes.get("group", 1) != 1 or max(attributes.get("strides", [1])) < 2
            or any(name not in weights for name in conv.input[1:3])):
        return None
    return conv


def _channel_counts(model: onnx.ModelProto) -> dict:
    """Channels (axis 1) of each 4-D tensor whose count ONNX shape inference knows."""
    return {name: dims[1] for name, dims in _4d_shapes(model).items() if dims[1] is not None}


def _4d_shapes(model: onnx.ModelProto) -> dict:
    """Each 4-D tensor's dimensions by ONNX shape inference, None where one is not known."""
    shapes = {}
    for info in onnx.shape_inference.infer_shapes(model).graph.value_info:
        dims = info.type.tensor_type.shape.dim
        if len(dims) == 4:
            shapes[info.name] = [dim.dim_value if dim.HasField("dim_value") else None
                                 for dim in dims]
    return shapes


def _replace(weights: dict, name: str, array: np.ndarray) -> None:
    weights[name].CopyFrom(numpy_helper.from_array(array.astype(np.float32), name))


def sigmoid_gelu(model: onnx.ModelProto) -> int:
    """Replace Erf-based GELU subgraphs by x * sigmoid(1.702 x); return how many."""
    graph = model.graph
    weights = _initializers(graph)
    constants = {**{name: numpy_helper.to_array(t) for name, t in weights.items()},
                 **_constant_nodes(graph)}
    consumers = _consumers(graph)
    scale = "gelu.sigmoid_scale"
    count = 0
    for div in list(graph.node):
        match = _match_gelu(div, consumers, constants)
        if match is None:
            continue
        if not count:
            _add_initializer(graph, scale, np.array(GELU_SIGMOID_SCALE))
        source, nodes, output = match
        position = list(graph.node).index(div)
        for node in nodes:
            graph.node.remove(node)
        name = div.name
        replacement = [
            helper.make_node("Mul", [source, scale], [f"{name}.scaled"], name=f"{name}.scale"),
            helper.make_node("Sigmoid", [f"{name}.scaled"], [f"{name}.gate"],
                             name=f"{name}.sigmoid"),
            helper.make_node("Mul", [source, f"{name}.gate"], [output], name=f"{name}.gelu"),
        ]
        for offset, node in enumerate(replacement):
            graph.node.insert(position + offset, node)
        count += 1
    return count


def _match_gelu(div, consumers: dict, constants: dict):
    """(x, nodes, output) when `div` starts Div(x, sqrt 2) -> Erf -> Add 1 -> Mul x -> Mul 0.5."""
    if div.op_type != "Div" or not _is_constant(constants, div.input[1], math.sqrt(2.0)):
        return None
    source = div.input[0]
    erf = _only_consumer(consumers, div.output[0], "Erf")
    add = erf and _only_consumer(consumers, erf.output[0], "Add")
    if add is None or not _other_is_constant(add, erf.output[0], constants, 1.0):
        return None
    mul = _only_consumer(consumers, add.output[0], "Mul")
    if mul is None or source not in mul.input:
        return None
    half = _only_consumer(consumers, mul.output[0], "Mul")
    if half is None or not _other_is_constant(half, mul.output[0], constants, 0.5):
        return None
    return source, [div, erf, add, mul, half], half.output[0]


def _producer(graph, tensor: str):
    return next((node for node in graph.node if tensor in node.output), None)


def _only_consumer(consumers: dict, tensor: str, op_type: str):
    users = consumers.get(tensor, [])
    return users[0] if len(users) == 1 and users[0].op_type == op_type else None


def _other_is_constant(node, tensor: str, constants: dict, value: float) -> bool:
    others = [name for name in node.input if name != tensor]
    return len(others) == 1 and _is_constant(constants, others[0], value)


def _is_constant(constants: dict, name: str, value: float) -> bool:
    array = constants.get(name)
    return array is not None and array.size == 1 and abs(float(array.reshape(())) - value) < 1e-4


def _consumers(graph) -> dict:
    users: dict = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    for output in graph.output:
        users.setdefault(output.name, []).append(_GRAPH_OUTPUT)
    return users


def _constant_nodes(graph) -> dict:
    found = {}
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    found[node.output[0]] = numpy_helper.to_array(attr.t)
    return found


def _drop_unused_nodes(graph) -> None:
    """Remove nodes none of whose outputs is read, until none is left."""
    while True:
        consumers = _consumers(graph)
        unused = [node for node in graph.node
                  if not any(consumers.get(name) for name in node.output)]
        if not unused:
            return
        for node in unused:
            graph.node.remove(node)


def _drop_unused_initializers(graph) -> None:
    used = {name for node in graph.node for name in node.input}
    used.update(output.name for output in graph.output)
    unused = [init for init in graph.initializer if init.name not in used]
    for init in unused:
        graph.initializer.remove(init)


def _initializers(graph) -> dict:
    return {init.name: init for init in graph.initializer}


def _add_initializer(graph, name: str, array: np.ndarray) -> str:
    graph.initializer.append(numpy_helper.from_array(array.astype(np.float32), name))
    return name


def _attributes(node) -> dict:
    return {attr.name: helper.get_attribute_value(attr) for attr in node.attribute}

