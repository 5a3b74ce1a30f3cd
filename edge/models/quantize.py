"""Build the int8 (CPU) and fp16 (GPU) variants of a pulled pack, and measure them against fp32.

int8: the detector gets static QDQ quantization (converted to opset 17 and rewritten by
`edge.models.rewrite` first, per-channel int8 weights, uint8 activations, MinMax calibration;
the activations a pack's manifest names under `quantization.clipped` span the percentiles
`quantization.clip_percentile` of their values instead), is rewritten again once quantized,
and then takes its input already quantized, in 2x2 pixel blocks (`edge.models.detinput`). The
recogniser and classifier stay fp32, and the int8 variant reuses their files; on x86 only the
recogniser's class layer runs in int8, quantized when the served recogniser is derived from the
file (`edge.models.rechead`). The whole recogniser quantized dynamically measured slower and less
accurate, statically 1.5x faster but 3 points of words F1 lower (even with its stem,
squeeze-excite branches and attention neck left in fp32); the classifier quantized statically
measured twice as slow.

fp16: every model converted to float16 with float32 inputs and outputs kept, for CUDA.

Each variant records what it was calibrated on and how closely it agrees with fp32 on images it
was not calibrated on: the share of detector probability-map pixels on the same side of the
threshold, and the share of text lines read identically by the whole pipeline.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import onnx
from onnx import TensorProto, helper, version_converter

from edge.config import OcrConfig
from edge.errors import ModelError
from edge.frames import DecodedImage
from edge.models.calibration import folder_images, rendered_images
from edge.models.detinput import take_pixel_blocks, take_quantized_input
from edge.models.factory import build_pipeline, detector_settings
from edge.models.rechead import quantized_head_here
from edge.models.rewrite import rewrite_for_int8, rewrite_quantized
from edge.models.store import ModelStore, Variant, write_variant
from edge.ocr.detector import Detector
from edge.ocr.imageio import ImageLimits
from edge.ocr.pipeline import OcrPipeline
from edge.ocr.session import calibration_session

log = logging.getLogger(__name__)

CALIBRATION_IMAGES = 16
CHECK_IMAGES = 8
CHECK_SEED = 1000
QUANTIZED_OPS = None  # every op type ORT can run quantized
# How each variant is built; a variant built by an older recipe is rebuilt by --if-missing.
RECIPES = {"int8": 11, "fp16": 1}
# The detector input normalisation an int8 variant was calibrated for is recorded under this key;
# once the manifest's differs, the variant is rebuilt by --if-missing like an older recipe.
DET_INPUT = "det_input"


@dataclass(frozen=True)
class Clipping:
    """Activations quantized over the range between two percentiles of their calibration values
    (rare outliers otherwise stretch the range, and every value is rounded more coarsely)."""

    tensors: tuple[str, ...] = ()
    percentiles: tuple[float, float] = (0.0, 100.0)

    @classmethod
    def of(cls, quantization: dict) -> "Clipping":
        """From a pack manifest's `quantization` section (nothing clipped without one)."""
        low, high = quantization.get("clip_percentile", (0.0, 100.0))
        return cls(tuple(quantization.get("clipped", ())), (float(low), float(high)))


@dataclass(frozen=True)
class CalibrationSet:
    """Images to calibrate on, images to check agreement on, and how to describe them."""

    calibrate: list[DecodedImage]
    check: list[DecodedImage]
    description: dict


def rendered_set(count: int = CALIBRATION_IMAGES) -> CalibrationSet:
    """Calibrate on rendered pages with seeds 0.., check on pages with seeds 1000.."""
    return CalibrationSet(list(rendered_images(count, seed=0)),
                          list(rendered_images(CHECK_IMAGES, seed=CHECK_SEED)),
                          {"source": "rendered", "images": count, "seed": 0})


def folder_set(folder: Path, limits: ImageLimits,
               count: int = CALIBRATION_IMAGES) -> CalibrationSet:
    """Calibrate on a user's frames (decoded within `limits`, as the engine decodes them); check on
    the next frames of the folder, or rendered pages."""
    images = folder_images(folder, count + CHECK_IMAGES, limits)
    calibrate, check = images[:count], images[count:]
    if not check:
        check = list(rendered_images(CHECK_IMAGES, seed=CHECK_SEED))
    return CalibrationSet(calibrate, check, {"source": "folder", "path": str(folder.resolve()),
                                             "images": len(calibrate)})


def build_int8(store: ModelStore, pack: str, calibration: CalibrationSet) -> Variant:
    """Quantize the detector statically; keep the fp32 recogniser (its class layer is quantized
    where it is derived) and classifier."""
    fp32 = store.variant(pack, "fp32")
    spec = store.spec(pack)
    detector = Detector(lambda x: x, detector_settings(OcrConfig(pack=pack), spec.preprocess,
                                                      spec.postprocess))
    inputs = [detector.preprocess(image.pixels)[0] for image in calibration.calibrate]
    pack_dir = store.pack_dir(pack)
    det_out = pack_dir / "int8" / "det.onnx"
    clipping = Clipping.of(spec.quantization)
    _quantize_static(fp32.files["det"], det_out, inputs, clipping)
    files = dict(fp32.files, det=det_out)
    quantized = ["det", "rec class layer"] if quantized_head_here("int8") else ["det"]
    write_variant(pack_dir, "int8", files, {"calibration": calibration.description,
                                            "clipped": list(clipping.tensors),
                                            "quantized": quantized,
                                            "recipe": RECIPES["int8"],
                                            DET_INPUT: det_input(spec.preprocess),
                                            "agreement": None})
    return _record_agreement(store, pack, "int8", calibration.check)


def build_fp16(store: ModelStore, pack: str, check: list[DecodedImage]) -> Variant:
    """Convert every model to float16 (float32 inputs and outputs kept), for CUDA."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    fp32 = store.variant(pack, "fp32")
    pack_dir = store.pack_dir(pack)
    files = dict(fp32.files)
    for role, path in fp32.files.items():
        if path.suffix == ".onnx":
            model = convert_float_to_float16(onnx.load(str(path)), keep_io_types=True)
            files[role] = _save(model, pack_dir / "fp16" / path.name)
    write_variant(pack_dir, "fp16", files, {"calibration": None, "recipe": RECIPES["fp16"],
                                            "agreement": None})
    return _record_agreement(store, pack, "fp16", check)


def is_current(variant: Variant, preprocess: dict | None = None) -> bool:
    """True when the variant was built by this version's recipe (variants without one: 1) and,
    given the pack's `preprocess`, a quantized detector was calibrated for its normalisation."""
    if variant.info.get("recipe", 1) != RECIPES.get(variant.precision, 1):
        return False
    if preprocess is None or "det" not in variant.info.get("quantized", ()):
        return True
    return variant.info.get(DET_INPUT) == det_input(preprocess)


def det_input(preprocess: dict) -> dict:
    """The detector input normalisation of a pack's `preprocess`, as variant.json records it."""
    return {"mean": [float(v) for v in preprocess["det_mean"]],
            "std": [float(v) for v in preprocess["det_std"]]}


def pre_process(source: Path, folder: Path) -> Path:
    """Opset 17, then ONNX Runtime's pre-processing (shapes inferred, biases folded into Conv);
    written into `folder`."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    converted = _save(version_converter.convert_version(onnx.load(str(source)), 17),
                      folder / "opset17.onnx")
    prepared = folder / "prepared.onnx"
    quant_pre_process(str(converted), str(prepared), skip_symbolic_shape=True)
    return prepared


def prepare_for_int8(source: Path, folder: Path) -> Path:
    """The float model as it goes into quantization: pre-processed, then `rewrite_for_int8`."""
    prepared = pre_process(source, folder)
    return _save(rewrite_for_int8(onnx.load(str(prepared))), prepared)


def _quantize_static(source: Path, dest: Path, inputs: list[np.ndarray],
                     clipping: Clipping = Clipping()) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    with tempfile.TemporaryDirectory(prefix="edge-ocr-quant-") as tmp:
        prepared = prepare_for_int8(source, Path(tmp))
        ranges = _activation_ranges(prepared, inputs, Path(tmp))
        clipped = percentile_ranges(prepared, inputs, clipping)
        overrides = {name: [{"rmin": np.float32(low), "rmax": np.float32(high)}]
                     for name, (low, high) in clipped.items()}
        staged = Path(tmp) / "int8.onnx"
        quantize_static(str(prepared), str(staged), None, quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                        op_types_to_quantize=QUANTIZED_OPS, calibration_cache_path=str(ranges),
                        extra_options={"TensorQuantOverrides": overrides})
        _save(taken_as_fed(rewrite_quantized(onnx.load(str(staged)))), dest)


def _activation_ranges(model: Path, inputs: list[np.ndarray], folder: Path) -> Path:
    """Each tensor's minimum and maximum over `inputs`, written into `folder` as the
    calibration cache `quantize_static` reads.

    ONNX Runtime's calibration model reads every tensor through a ReduceMin and a ReduceMax.
    Run in its default order, every tensor stayed held to the end of the run: building the
    small detector's int8 variant peaked at 1.9 GB (tiny 1.2 GB), beyond a 1 GB board. In
    priority-based order each tensor is reduced and freed as it is made."""
    from onnxruntime.quantization.calibrate import (
        CalibrationMethod,
        create_calibrator,
        save_tensors_data,
    )

    calibrator = create_calibrator(model, QUANTIZED_OPS, str(folder / "ranges.onnx"),
                                   calibrate_method=CalibrationMethod.MinMax)
    calibrator.infer_session = calibration_session(Path(calibrator.augmented_model_path))
    input_name = calibrator.infer_session.get_inputs()[0].name

    class Reader:
        def __init__(self) -> None:
            self._items = iter([{input_name: tensor} for tensor in inputs])

        def get_next(self):
            return next(self._items, None)

    calibrator.collect_data(Reader())
    ranges = folder / "ranges.json"
    save_tensors_data(calibrator.compute_data(), ranges)
    return ranges


def percentile_ranges(model: Path, inputs: list[np.ndarray], clipping: Clipping,
                      kept: int = 250_000) -> dict[str, tuple[float, float]]:
    """Each of `clipping.tensors`' (low, high) percentiles over `inputs` (widened to hold 0, as
    uint8 quantization must), from at most `kept` evenly spaced values per tensor and input.
    A name the model does not have is a ModelError: the manifest was written for another file."""
    if not clipping.tensors:
        return {}
    graph = onnx.load(str(model))
    made = {name for node in graph.graph.node for name in node.output}
    missing = [name for name in clipping.tensors if name not in made]
    if missing:
        raise ModelError(f"the manifest clips tensors the detector does not have: {missing}",
                         "reinstall edge-ocr: its manifest does not match the pulled model")
    graph.graph.output.extend(helper.make_tensor_value_info(name, TensorProto.FLOAT, None)
                              for name in clipping.tensors)
    with tempfile.TemporaryDirectory(prefix="edge-ocr-clip-") as tmp:
        session = calibration_session(_save(graph, Path(tmp) / "clip.onnx"))
        del graph
        input_name = session.get_inputs()[0].name
        values: dict[str, list[np.ndarray]] = {name: [] for name in clipping.tensors}
        for tensor in inputs:
            outputs = session.run(list(clipping.tensors), {input_name: tensor})
            for name, output in zip(clipping.tensors, outputs):
                flat = output.ravel()
                values[name].append(flat[::max(1, flat.size // kept)].copy())
    low, high = clipping.percentiles
    return {name: (min(float(np.percentile(np.concatenate(parts), low)), 0.0),
                   max(float(np.percentile(np.concatenate(parts), high)), 0.0))
            for name, parts in values.items()}


def taken_as_fed(model: onnx.ModelProto) -> onnx.ModelProto:
    """A quantized detector made to take its input as the caller feeds it: quantized, in 2x2
    pixel blocks (see `edge.models.detinput`); changed in place and returned."""
    return take_pixel_blocks(take_quantized_input(model))


def _save(model: onnx.ModelProto, dest: Path) -> Path:
    """Write beside the destination, then rename: a running daemon never loads half a model."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    staged = dest.with_name(f".{dest.name}.tmp")
    onnx.save(model, str(staged))
    staged.chmod(0o644)
    staged.replace(dest)
    return dest


def _record_agreement(store: ModelStore, pack: str, precision: str,
                      images: list[DecodedImage]) -> Variant:
    """Run fp32 and the new variant side by side on `images`; store the figures in variant.json.
    The fp16 variant runs where it is meant to, on CUDA, when this machine has it."""
    base = build_pipeline(OcrConfig(pack=pack, precision="fp32"), store)
    device = "auto" if precision == "fp16" else "cpu"
    new = build_pipeline(OcrConfig(pack=pack, precision=precision, device=device), store)
    agreement = {
        "images": len(images),
        "device": new.device,
        "det_pixels": round(_pixel_agreement(base.pipeline.detector, new.pipeline.detector,
                                             images), 5),
        "lines_text": round(_text_agreement(base.pipeline, new.pipeline, images), 5),
    }
    variant = store.variant(pack, precision)
    info = dict(variant.info, agreement=agreement)
    info.pop("precision", None)
    write_variant(store.pack_dir(pack), precision, variant.files, info)
    log.debug("%s %s agrees with fp32: %s", pack, precision, agreement)
    return store.variant(pack, precision)


def _pixel_agreement(base: Detector, new: Detector, images: Iterable[DecodedImage]) -> float:
    same = total = 0
    for image in images:
        a, b = base.probability(image.pixels), new.probability(image.pixels)
        threshold = base.threshold
        same += int(np.count_nonzero((a > threshold) == (b > threshold)))
        total += a.size
    return same / total if total else 1.0


def _text_agreement(base: OcrPipeline, new: OcrPipeline, images: Iterable[DecodedImage]) -> float:
    same = total = 0
    for image in images:
        expected = [line.text for line in base(image).lines]
        got = set(line.text for line in new(image).lines)
        same += sum(text in got for text in expected)
        total += len(expected)
    return same / total if total else 1.0
