"""Restricting the recogniser to a character set by cutting its output layer.

The CTC head ends in a MatMul over every character of the dictionary (18710 classes for the
small pack); keeping only the columns of the wanted characters makes that layer and the softmax
after it proportionally cheaper, and characters outside the set (CJK look-alikes of `1` or `-`)
can no longer be chosen. The probabilities are then over the kept set only.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from edge.errors import ModelError

LATIN = frozenset(
    [chr(c) for c in range(0x20, 0x7F)]          # ASCII
    + [chr(c) for c in range(0xA0, 0x250)]      # Latin-1 supplement, Latin extended A and B
    + list("×÷±€£¥°•–—‘’‚“”„…√№™"))
CHARSETS = {"latin": LATIN}


def restrict_recognizer(path: Path, charset: Sequence[str], keep: frozenset[str]) -> tuple[bytes, list[str]]:
    """Return the model with its head cut to `keep`, and the characters it now outputs."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    classes = [0] + [i + 1 for i, ch in enumerate(charset) if ch in keep] + [len(charset) + 1]
    weights = {init.name: init for init in model.graph.initializer}
    matmul, bias_add = _head(model.graph, weights, len(charset) + 2)
    for name, axis in ((matmul.input[1], 1), (next(i for i in bias_add.input if i in weights), 0)):
        array = np.take(numpy_helper.to_array(weights[name]), classes, axis=axis)
        weights[name].CopyFrom(numpy_helper.from_array(array, name))
    del model.graph.value_info[:]
    for output in model.graph.output:
        dims = output.type.tensor_type.shape.dim
        dims[len(dims) - 1].Clear()
    kept = [charset[i - 1] for i in classes[1:-1]]
    return model.SerializeToString(), kept


def _head(graph, weights: dict, classes: int):
    """The MatMul whose weight has one column per class, and the Add of its bias."""
    for node in graph.node:
        if (node.op_type == "MatMul" and node.input[1] in weights
                and weights[node.input[1]].dims[-1] == classes):
            adds = [n for n in graph.node if n.op_type == "Add" and node.output[0] in n.input]
            if adds:
                return node, adds[0]
    raise ModelError(f"cannot find the {classes}-class output layer of the recogniser",
                     "set ocr.charset to all for this pack")


def restricted_recognizer(rec: Path, dictionary: Path, name: str) -> tuple[Path, list[str]]:
    """The recogniser cut to charset `name`, cached beside the model as rec.<name>.onnx.

    The cut runs once, in a child process, so the `onnx` package (and its memory) never enters
    the process that serves; later starts load the cached file directly.
    """
    model, chars = rec.with_name(f"rec.{name}.onnx"), rec.with_name(f"rec.{name}.txt")
    if not (model.exists() and chars.exists()):
        done = subprocess.run([sys.executable, "-m", "edge.ocr.charset", str(rec),
                               str(dictionary), name], capture_output=True, text=True)
        if done.returncode != 0:
            raise ModelError(f"cannot cut {rec} to the {name} charset: "
                             f"{done.stderr.strip()[-300:]}",
                             "check that the model directory is writable")
    return model, chars.read_text(encoding="utf-8").split("\n")


def _write_restricted(rec: Path, dictionary: Path, name: str) -> None:
    charset = dictionary.read_text(encoding="utf-8").splitlines()
    model, kept = restrict_recognizer(rec, charset, CHARSETS[name])
    for suffix, data in ((".onnx", model), (".txt", "\n".join(kept).encode("utf-8"))):
        target = rec.with_name(f"rec.{name}{suffix}")
        temp = target.with_name(target.name + ".tmp")
        temp.write_bytes(data)
        temp.chmod(0o644)
        os.replace(temp, target)


if __name__ == "__main__":
    _write_restricted(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3])
