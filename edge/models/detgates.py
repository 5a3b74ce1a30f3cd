"""The detector as tiles run it: its global means as outputs, and as inputs that can replace them.

The DB detector averages some of its features over its whole input (squeeze-excite gates in
its backbone and neck: a mean per channel, scaling that channel everywhere). Run tile by tile
under a RAM budget, each tile took its own means, so a strip of a receipt saw its text a little
differently from the whole (joined neighbouring words, split others), and a strip of blank
paper lit up as text. The derived model, `det.means4.onnx`, returns every such mean beside the
probability map, and takes optional inputs (`<mean>.given`, and the flag `USE_GIVEN`) that
replace them. A first pass over the tiles collects the means, each weighted by the part of the
input the tile is kept for; the second runs each tile with the whole input's. Fed only the
image, the model is the original.

One session serves both passes: a second one, for the model that takes the means, added 9 MB to
the small pack's resting memory in the memory probe (153.3 against 144.2 MB), and the 256 MB
plan made from that probe gave tiles of 0.38 MP and lines of 488 px.

Measured (small pack, int8, the daemon at 256 MB, words F1): 100 receipts 0.9108 against
0.9006 with each tile's own means and 0.9102 without a budget. Every tiled image costs a second
detector run per tile.

Like the served recogniser, the model is written beside the original in a child process
(`edge.models.derived`).
"""

from __future__ import annotations

import sys
from pathlib import Path

from edge.models.derived import derive_in_child

FORMAT = 4  # raised whenever the derived model changes: files of another format are not read
MEANS_SUFFIX, NAMES_SUFFIX = f".means{FORMAT}.onnx", f".means{FORMAT}.txt"
USE_GIVEN = "edge-ocr.use_given_means"  # bool input: take the `<mean>.given` inputs
GIVEN = ".given"


def split_detector(det: Path) -> tuple[Path, list[str]]:
    """(the model returning its means and taking them as optional inputs, the means' names),
    derived beside `det` on first use and whenever `det` is newer."""
    model, names = _derived_paths(det)
    derive_in_child(det, (model, names), "edge.models.detgates", [str(det)], "tiled detection")
    return model, names.read_text(encoding="utf-8").split()


def global_means(model) -> list:
    """The nodes of an onnx `model` that average a tensor over its height and width."""
    from onnx import helper

    found = []
    for node in model.graph.node:
        attributes = {attr.name: helper.get_attribute_value(attr) for attr in node.attribute}
        if node.op_type == "GlobalAveragePool" or (
                node.op_type == "ReduceMean" and list(attributes.get("axes", [])) == [2, 3]
                and attributes.get("keepdims", 1) == 1 and len(node.input) == 1):
            found.append(node)
    return found


def _write(det: Path) -> None:
    import numpy as np
    import onnx
    from onnx import TensorProto, numpy_helper

    model_path, names_path = _derived_paths(det)
    model = onnx.load(str(det))
    graph = model.graph
    _optional_input(graph, numpy_helper.from_array(np.array(False), USE_GIVEN), TensorProto.BOOL,
                    [])
    readers: dict = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    names = []
    for node in global_means(model):
        names.append(node.output[0])
        quantize = readers.get(node.output[0], [])
        if len(quantize) == 1 and quantize[0].op_type == "QuantizeLinear":
            _replaceable_quantized_mean(graph, node, quantize[0])
        else:
            _replaceable_mean(graph, node)
    staged = model_path.with_name(f".{model_path.name}.tmp")
    onnx.save(model, str(staged))
    staged.replace(model_path)
    names_path.write_text("\n".join(names), encoding="utf-8")


def _replaceable_mean(graph, mean) -> None:
    """The mean becomes a graph output, and `USE_GIVEN` picks `<mean>.given` in its place."""
    from onnx import helper

    name = mean.output[0]
    mean.output[0] = f"{name}.computed"
    _given_and_returned(graph, name)
    graph.node.insert(list(graph.node).index(mean) + 1, helper.make_node(
        "Where", [USE_GIVEN, name + GIVEN, mean.output[0]], [name], name=f"{name}.choice"))


def _replaceable_quantized_mean(graph, mean, quantize) -> None:
    """For a mean quantized right away (an int8 model): the choice is made between 8-bit
    values, after the QuantizeLinear, so that ONNX Runtime still runs the pool on 8-bit
    tensors; the mean is output dequantized, and a given one quantized the same way. Fed back
    its own means, the model draws its own map."""
    from onnx import helper

    name = mean.output[0]
    mean.output[0] = quantize.input[0] = f"{name}.pooled"
    quantized = quantize.output[0]
    quantize.output[0] = f"{name}.computed"
    _given_and_returned(graph, name)
    at = list(graph.node).index(quantize) + 1
    nodes = [
        helper.make_node("QuantizeLinear", [name + GIVEN, *quantize.input[1:]],
                         [f"{name}.given_quantized"], name=f"{name}.given_QuantizeLinear"),
        helper.make_node("Where", [USE_GIVEN, f"{name}.given_quantized", quantize.output[0]],
                         [quantized], name=f"{name}.choice"),
        helper.make_node("DequantizeLinear", [quantize.output[0], *quantize.input[1:]],
                         [name], name=f"{name}.output_DequantizeLinear"),
    ]
    for offset, node in enumerate(nodes):
        graph.node.insert(at + offset, node)


def _given_and_returned(graph, name: str) -> None:
    """The optional float input `<name>.given` (zeros unless fed), and `name` as an output."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    zero = numpy_helper.from_array(np.zeros((1, 1, 1, 1), np.float32), name + GIVEN)
    _optional_input(graph, zero, TensorProto.FLOAT, [1, None, 1, 1])
    graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))


def _optional_input(graph, default, elem_type: int, shape: list) -> None:
    """A graph input that takes `default` (an initializer of its name) unless it is fed. Its
    rank is declared: ONNX Runtime lays the gates out channels-last only where the ranks of
    what they read are known (without, the derived small detector ran 1.5x slower)."""
    from onnx import helper

    graph.initializer.append(default)
    graph.input.append(helper.make_tensor_value_info(default.name, elem_type, shape))


def _derived_paths(det: Path) -> tuple[Path, Path]:
    stem = det.with_suffix("")
    return stem.with_name(stem.name + MEANS_SUFFIX), stem.with_name(stem.name + NAMES_SUFFIX)


if __name__ == "__main__":
    _write(Path(sys.argv[1]))
