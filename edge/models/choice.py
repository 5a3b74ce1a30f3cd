"""Which variant `precision: auto` runs on a CPU: the record of a speed measurement taken on this
box, and the rule that reads it.

`edge-ocr models quantize` times each variant's detector and recogniser on a rendered page and
writes `<pack>/measurement.json` beside the variants (see `edge.models.measure`):

    {"schema": 1, "pack": "ppocr-v6-tiny", "measured_at": "2025-01-01T12:00:00Z",
     "machine": {"arch": "aarch64", "model": "Raspberry Pi 5 Model B Rev 1.0", "cores": 4,
                 "features": ["asimd", "asimddp", "asimdhp"], "onnxruntime": "1.20.1"},
     "page": {"seed": 4000, "width": 640, "height": 480, "lines": 8}, "runs": 3,
     "bound": {"det_pixels": 0.98, "lines_text": 0.8, "min_gain": 1.05},
     "variants": {"fp32": {"recipe": 1, "det_ms": 210.0, "rec_ms": 300.0},
                  "int8": {"recipe": 3, "det_ms": 120.0, "rec_ms": 300.0,
                           "det_pixels": 0.996, "lines_text": 1.0}},
     "choice": "int8"}

The rule: a variant other than fp32 is used when it agrees with fp32 on that page within the
recorded bound (share of detector pixels on the same side of the threshold, share of lines read
identically) and its detector plus recogniser run at least `min_gain` times faster than fp32's;
of several, the fastest. A record taken on another machine, with another ONNX Runtime, or of
variants since rebuilt does not count: then int8 is used where it is built.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Optional

from edge.models.cpu import cpu_info

FILENAME = "measurement.json"
SCHEMA = 1
BOUND = {"det_pixels": 0.98, "lines_text": 0.8, "min_gain": 1.05}


@dataclass(frozen=True)
class Measurement:
    """One pack's speed and agreement measurement, as recorded."""

    pack: str
    machine: dict
    variants: dict[str, dict]
    bound: dict
    record: dict

    def total_ms(self, precision: str) -> float:
        """Detector plus recogniser time of a variant on the measured page."""
        figures = self.variants[precision]
        return float(figures["det_ms"]) + float(figures["rec_ms"])

    def agrees(self, precision: str) -> bool:
        """Whether a variant agrees with fp32 within the recorded bound (fp32 always does)."""
        if precision == "fp32":
            return True
        figures = self.variants[precision]
        return all(float(figures.get(key, 0.0)) >= float(self.bound[key])
                   for key in ("det_pixels", "lines_text"))

    def gain(self, precision: str) -> float:
        """How many times faster than fp32 a variant ran."""
        return self.total_ms("fp32") / max(self.total_ms(precision), 1e-9)


def this_machine() -> dict:
    """What a measurement must have been taken on to count here."""
    try:
        runtime = metadata.version("onnxruntime")
    except metadata.PackageNotFoundError:
        runtime = ""
    return {**cpu_info().fingerprint(), "onnxruntime": runtime}


def read_measurement(pack_dir: Path) -> Optional[Measurement]:
    """The pack's recorded measurement; None when there is none or it cannot be read."""
    try:
        record = json.loads((pack_dir / FILENAME).read_text(encoding="utf-8"))
        return Measurement(record["pack"], record["machine"], record["variants"],
                           record["bound"], record)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def applies(measurement: Measurement, recipes: dict[str, int], machine: dict) -> str:
    """'' when the measurement counts here; else why not. `recipes`: the present variants'."""
    if measurement.machine != machine:
        return "measured on another machine"
    if "fp32" not in measurement.variants:
        return "fp32 was not measured"
    for precision, figures in measurement.variants.items():
        if precision in recipes and figures.get("recipe") != recipes[precision]:
            return f"the {precision} variant was rebuilt since"
    return ""


def pick(measurement: Measurement, present: set[str]) -> str:
    """The measured variant to use among `present`: the fastest that agrees with fp32 within the
    bound and gains at least the bound's `min_gain`; else fp32."""
    best, best_ms = "fp32", measurement.total_ms("fp32")
    for precision in measurement.variants:
        if precision == "fp32" or precision not in present or not measurement.agrees(precision):
            continue
        if (measurement.gain(precision) >= float(measurement.bound["min_gain"])
                and measurement.total_ms(precision) < best_ms):
            best, best_ms = precision, measurement.total_ms(precision)
    return best


def explain(measurement: Measurement) -> str:
    """One line: each variant's time, gain and agreement, and the choice."""
    parts = []
    for precision, figures in measurement.variants.items():
        text = f"{precision} det {figures['det_ms']:.0f} ms + rec {figures['rec_ms']:.0f} ms"
        if precision != "fp32":
            text += (f" ({measurement.gain(precision):.2f}x; agrees {figures['det_pixels']:.1%} "
                     f"of pixels, {figures['lines_text']:.0%} of lines"
                     f"{'' if measurement.agrees(precision) else ', outside the bound'})")
        parts.append(text)
    bound = measurement.bound
    return (f"{'; '.join(parts)}; bound: pixels >= {bound['det_pixels']:.0%}, "
            f"lines >= {bound['lines_text']:.0%}, >= {bound['min_gain']}x faster")
