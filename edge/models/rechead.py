"""The recogniser as the engine runs it: derived once from the pack's model file.

The CTC head of a PP-OCR recogniser ends in a MatMul over every class of its dictionary (18710
for the small pack), a bias Add and a Softmax, and the engine needs only the best class at each
time step and its probability. The derived model computes just those two: the MatMul and its
bias become one Gemm over the flattened time steps, and a TopK of 1 after the Softmax gives the
best class and its probability in one pass, so the batch x steps x classes floats (15 MB each
for a batch of 1600 columns) are neither added to a bias in a pass of their own nor returned to
be searched. The same results: 40 receipts read with identical text, the recognition stage
1.02x faster per receipt, and the recogniser's peak at 800 columns 44-63 MB in the memory probe
against 79-123 MB before (small pack). ONNX Runtime's ReduceLogSumExp in place of the Softmax
measured slower: it is not vectorised.

In the int8 variant on x86 the Gemm is quantized instead (`_quantized_class_layer`): weights
in int8 with a scale per class, each batch's hidden features quantized to uint8 as it runs, one
DynamicQuantizeMatMul of ONNX Runtime. Measured against the float layer (small pack, all
characters; AMD Zen 4, 2 cores): recognition 1.04x faster summed over 40 receipts (median per
receipt 1.07x) and the model 6.7 MB smaller in memory once loaded, both with 8-bit weights (the
7-bit ones are the same op and file size); words F1 with 7-bit weights 0.9009 against 0.9016
on 100 receipts, 0.9455 against 0.9465 on 10 A4 scans, 0.936 on 40 street scenes either way,
and 0.8394 against 0.8356 with the tiny pack's Latin set on the receipts.

With a character set (`ocr.charset`), the head is first cut to the set's classes: that layer
is then proportionally cheaper, and characters outside the set (CJK look-alikes of `1` or `-`)
can no longer be chosen. The probabilities are then over the kept set only.

The rewrite runs once per model file and charset, in a child process, so the `onnx` package (and
its memory) never enters the process that serves; later starts load the cached file directly.
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from edge.errors import ModelError
from edge.models.derived import derive_in_child
from edge.ocr.charset import CHARSETS

# outputs of the derived model, each one value per time step of the batch (batch x steps)
BEST_CLASS, BEST_PROBABILITY = "best_class", "best_probability"
# in the derived file's name: changed whenever the rewrite changes, so older files are remade;
# the second is the int8 variant's, its class layer quantized
HEAD_FORMAT, QUANTIZED_HEAD_FORMAT = "steps", "steps-int8"
_QUANTIZED_FLAG = "--quantized-head"
_CONTRIB = "com.microsoft"
# the quantized class layer's weights use 7 bits, as ONNX Runtime's quantization guide advises
# (reduce_range) for uint8 x int8 on x86 without VNNI, where pairs of 8-bit products summed in
# 16 bits can saturate. On 100 receipts 7 bits read as well as 8 (words F1 0.9009 and 0.9008)
HEAD_WEIGHT_LEVELS = 63
# where the quantized class layer runs: on arm64 (an arm64 Debian under qemu-user emulation)
# ONNX Runtime's DynamicQuantizeMatMul chose wrong classes, "ç6çç0ç00.ç6çç7ç" for "607.67
# 35993", so arm64 keeps the float layer
QUANTIZED_HEAD_ARCHES = ("x86_64", "AMD64")


def quantized_head_here(precision: str, arch: str | None = None) -> bool:
    """Whether a `precision` variant's recogniser runs its class layer in int8 on this machine
    (or on `arch`, a `platform.machine()` name)."""
    return precision == "int8" and (arch or platform.machine()) in QUANTIZED_HEAD_ARCHES


def serving_recognizer(rec: Path, dictionary: Path, charset: str, quantized_head: bool = False
                       ) -> tuple[Path, list[str]]:
    """The derived recogniser for `charset` ("all" or a name in CHARSETS) and the characters it
    outputs, its class layer quantized if `quantized_head`; made beside `rec` on first use and
    whenever `rec` is newer (the model directory must be writable then)."""
    model, chars = derived_paths(rec, charset, quantized_head)
    derive_in_child(rec, (chars, model), "edge.models.rechead",
                    [str(rec), str(dictionary), charset,
                     *([_QUANTIZED_FLAG] if quantized_head else [])],
                    f"reading ({charset} charset)")
    return model, chars.read_text(encoding="utf-8").split("\n")


def derived_paths(rec: Path, charset: str, quantized_head: bool = False) -> tuple[Path, Path]:
    """Where the derived model and its character list are kept."""
    head = QUANTIZED_HEAD_FORMAT if quantized_head else HEAD_FORMAT
    return rec.with_name(f"rec.{charset}.{head}.onnx"), rec.with_name(f"rec.{charset}.{head}.txt")


def derive(model, charset: Sequence[str], keep: frozenset[str] | None,
           quantized_head: bool = False) -> list[str]:
    """Rewrite the onnx `model` in place: its head cut to `keep` (None keeps every class), then
    reduced to the best class and its probability per time step, its class layer quantized if
    `quantized_head`. Returns the characters the model now outputs."""
    graph = model.graph
    weights = {init.name: init for init in graph.initializer}
    matmul, bias_add = _head(graph, weights, len(charset) + 2)
    kept = list(charset)
    if keep is not None:
        kept = _cut(weights, matmul, bias_add, charset, keep)
    _best_class_head(model, weights, matmul, bias_add, quantized_head)
    return kept


def _head(graph, weights: dict, classes: int):
    """The MatMul whose weight has one column per class, and the Add of its bias."""
    for node in graph.node:
        if (node.op_type == "MatMul" and node.input[1] in weights
                and weights[node.input[1]].dims[-1] == classes):
            adds = [n for n in graph.node if n.op_type == "Add" and node.output[0] in n.input
                    and any(i in weights for i in n.input)]
            if adds:
                return node, adds[0]
    raise ModelError(f"cannot find the {classes}-class output layer of the recogniser",
                     "run 'edge-ocr models pull' to fetch the pack again")


def _cut(weights: dict, matmul, bias_add, charset: Sequence[str], keep: frozenset[str]
         ) -> list[str]:
    """Keep the blank, the characters in `keep` and the trailing space; return the kept
    characters."""
    from onnx import numpy_helper

    classes = [0] + [i + 1 for i, ch in enumerate(charset) if ch in keep] + [len(charset) + 1]
    for name, axis in ((matmul.input[1], 1), (_bias_name(bias_add, weights), 0)):
        array = np.take(numpy_helper.to_array(weights[name]), classes, axis=axis)
        weights[name].CopyFrom(numpy_helper.from_array(array, name))
    return [charset[i - 1] for i in classes[1:-1]]


def _best_class_head(model, weights: dict, matmul, bias_add, quantized: bool) -> None:
    """Replace MatMul, bias Add, Softmax (and the Cast to float32 of an fp16 model) with a Gemm
    (or its quantized form) over the flattened time steps and the two reductions the engine
    reads."""
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    tail = _tail(graph, bias_add)
    hidden = weights[matmul.input[1]].dims[0]
    shape, one = _unique(graph, "head_shape"), _unique(graph, "head_one")
    graph.initializer.extend([numpy_helper.from_array(np.array([-1, hidden], np.int64), shape),
                              numpy_helper.from_array(np.array([1], np.int64), one)])
    flat, logits, probabilities = (_unique(graph, name) for name in (
        "head_flat", "head_logits", "head_probabilities"))
    probability = BEST_PROBABILITY if tail[-1].op_type != "Cast" else _unique(graph, "head_p")
    nodes = [helper.make_node("Reshape", [matmul.input[0], shape], [flat]),
             (_quantized_class_layer(model, weights, matmul, bias_add, flat, logits) if quantized
              else helper.make_node("Gemm", [flat, matmul.input[1],
                                             _bias_name(bias_add, weights)], [logits])),
             helper.make_node("Softmax", [logits], [probabilities], axis=1),
             helper.make_node("TopK", [probabilities, one], [probability, BEST_CLASS], axis=1)]
    if probability != BEST_PROBABILITY:  # an fp16 model hands out float32
        nodes.append(helper.make_node("Cast", [probability], [BEST_PROBABILITY],
                                      to=TensorProto.FLOAT))
    for node in [matmul, bias_add, *tail]:
        graph.node.remove(node)
    graph.node.extend(nodes)
    del graph.output[:]
    del graph.value_info[:]
    graph.output.extend([helper.make_tensor_value_info(BEST_CLASS, TensorProto.INT64, [None, 1]),
                         helper.make_tensor_value_info(BEST_PROBABILITY, TensorProto.FLOAT,
                                                       [None, 1])])


def _quantized_class_layer(model, weights: dict, matmul, bias_add, features: str, logits: str):
    """ONNX Runtime's DynamicQuantizeMatMul in place of the class layer: weights in int8 with a
    scale per class (symmetric, within HEAD_WEIGHT_LEVELS), the features quantized per batch."""
    from onnx import helper, numpy_helper

    graph = model.graph
    kernel = numpy_helper.to_array(weights[matmul.input[1]]).astype(np.float32)
    scale = np.abs(kernel).max(axis=0) / HEAD_WEIGHT_LEVELS
    scale[scale == 0] = 1.0
    levels = np.clip(np.rint(kernel / scale), -HEAD_WEIGHT_LEVELS, HEAD_WEIGHT_LEVELS)
    names = [_unique(graph, name) for name in ("head_kernel_int8", "head_kernel_scale",
                                               "head_kernel_zero_point")]
    graph.initializer.extend([
        numpy_helper.from_array(levels.astype(np.int8), names[0]),
        numpy_helper.from_array(scale.astype(np.float32), names[1]),
        numpy_helper.from_array(np.zeros(scale.shape, np.int8), names[2])])
    graph.initializer.remove(weights.pop(matmul.input[1]))
    if not any(entry.domain == _CONTRIB for entry in model.opset_import):
        model.opset_import.append(helper.make_opsetid(_CONTRIB, 1))
    return helper.make_node("DynamicQuantizeMatMul",
                            [features, *names, _bias_name(bias_add, weights)], [logits],
                            domain=_CONTRIB)


def _tail(graph, bias_add) -> list:
    """The nodes from the bias Add to the graph's output: Identity nodes, the Softmax, and an
    fp16 model's Cast."""
    outputs = {output.name for output in graph.output}
    tail, tensor = [], bias_add.output[0]
    while tensor not in outputs:
        following = [n for n in graph.node if tensor in n.input]
        if len(following) != 1 or following[0].op_type not in ("Identity", "Softmax", "Cast"):
            raise ModelError("the recogniser's output layer is not MatMul, Add, Softmax",
                             "run 'edge-ocr models pull' to fetch the pack again")
        tail.append(following[0])
        tensor = following[0].output[0]
    if not any(node.op_type == "Softmax" for node in tail):
        raise ModelError("the recogniser's output is not a softmax",
                         "run 'edge-ocr models pull' to fetch the pack again")
    return tail


def _bias_name(bias_add, weights: dict) -> str:
    return next(name for name in bias_add.input if name in weights)


def _unique(graph, name: str) -> str:
    taken = {t for node in graph.node for t in node.output} | {i.name for i in graph.initializer}
    while name in taken:
        name += "_"
    return name


def _write(rec: Path, dictionary: Path, charset: str, quantized_head: bool) -> None:
    import onnx

    model = onnx.load(str(rec))
    chars = derive(model, dictionary.read_text(encoding="utf-8").splitlines(),
                   None if charset == "all" else CHARSETS[charset], quantized_head)
    target_model, target_chars = derived_paths(rec, charset, quantized_head)
    for target, data in ((target_model, model.SerializeToString()),
                         (target_chars, "\n".join(chars).encode("utf-8"))):
        staged = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        staged.write_bytes(data)
        staged.chmod(0o644)
        os.replace(staged, target)
    for earlier in (rec.with_name(f"rec.{charset}.onnx"), rec.with_name(f"rec.{charset}.txt")):
        earlier.unlink(missing_ok=True)  # a cut of an earlier release, with the Softmax output


if __name__ == "__main__":
    _write(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], _QUANTIZED_FLAG in sys.argv[4:])
