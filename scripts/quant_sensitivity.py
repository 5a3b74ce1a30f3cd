#!/usr/bin/env python3
"""Which activations of a pack's int8 detector cost the most agreement with fp32.

For every activation the built int8 detector quantizes, a copy of it reads that one activation
in float (its QuantizeLinear and DequantizeLinear bypassed) and reads rendered calibration
pages; the table lists the share of probability-map pixels on the same side of the threshold
as fp32's, highest first. The activations at the top are the candidates for a pack manifest's
`quantization.clipped`. Run after scripts/setup.sh:

usage: scripts/quant_sensitivity.py PACK [--pages N] [--seed S] [--top K]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge.config import OcrConfig, default_model_dir  # noqa: E402
from edge.models.calibration import rendered_images  # noqa: E402
from edge.models.factory import build_pipeline  # noqa: E402
from edge.models.store import ModelStore  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pack")
    parser.add_argument("--pages", type=int, default=8, help="rendered pages read (8)")
    parser.add_argument("--seed", type=int, default=0,
                        help="first page's seed (0: the calibration pages)")
    parser.add_argument("--top", type=int, default=15, help="rows printed (15)")
    args = parser.parse_args()

    store = ModelStore(default_model_dir())
    fp32 = build_pipeline(OcrConfig(pack=args.pack, precision="fp32", device="cpu"), store)
    int8 = build_pipeline(OcrConfig(pack=args.pack, precision="int8", device="cpu"), store)
    reference, detector = fp32.pipeline.detector, int8.pipeline.detector
    pages = [image.pixels for image in rendered_images(args.pages, seed=args.seed)]
    expected = [reference.probability(page) > reference.threshold for page in pages]
    tensors = [detector.preprocess(page)[0] for page in pages]

    model = onnx.load(str(store.variant(args.pack, "int8").files["det"]))

    def agreement() -> float:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 2
        options.log_severity_level = 3
        session = ort.InferenceSession(model.SerializeToString(), options,
                                       providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        same = total = 0
        for tensor, wanted in zip(tensors, expected):
            got = session.run(None, {name: tensor})[0][0, 0] > detector.threshold
            same += int(np.count_nonzero(got == wanted))
            total += wanted.size
        return same / total

    print(f"{args.pack} int8 as built: {agreement():.5f}", flush=True)
    rows = []
    for quantize, readers in _activation_pairs(model.graph):
        rewired = [(node, index, node.input[index]) for dequantize in readers
                   for node in model.graph.node for index, name in enumerate(node.input)
                   if name == dequantize.output[0]]
        for node, index, _ in rewired:
            node.input[index] = quantize.input[0]
        rows.append((agreement(), quantize.input[0]))
        for node, index, name in rewired:
            node.input[index] = name
    for share, name in sorted(rows, reverse=True)[:args.top]:
        print(f"{share:.5f}  {name}")
    return 0


def _activation_pairs(graph) -> list:
    """(QuantizeLinear, its DequantizeLinear readers) for each activation read only through
    dequantization (weights and the graph input excluded)."""
    constants = {init.name for init in graph.initializer}
    inputs = {value.name for value in graph.input}
    readers: dict = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    pairs = []
    for node in graph.node:
        if (node.op_type != "QuantizeLinear" or node.input[0] in constants
                or node.input[0] in inputs):
            continue
        found = readers.get(node.output[0], [])
        if found and all(reader.op_type == "DequantizeLinear" for reader in found):
            pairs.append((node, found))
    return pairs


if __name__ == "__main__":
    sys.exit(main())
