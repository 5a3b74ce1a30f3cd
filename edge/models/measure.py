"""Time each CPU variant of a pack on this box and record which one `precision: auto` should run.

Each variant's whole pipeline reads one rendered page once to warm up (its lines and detector
map are compared with fp32's), then the variants read it `runs` times each, in turns; the
fastest detector and recogniser times are recorded (the least disturbed by other work). The
record's format and the rule that reads it are in `edge.models.choice`.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from edge.config import OcrConfig
from edge.frames import DecodedImage
from edge.models.calibration import render_page
from edge.models.choice import (BOUND, FILENAME, SCHEMA, Measurement, applies, pick,
                                read_measurement, this_machine)
from edge.models.factory import LoadedEngine, build_pipeline
from edge.models.store import ModelStore

log = logging.getLogger(__name__)

PAGE = {"seed": 4000, "width": 960, "height": 720, "lines": 10}
RUNS = 3
CPU_PRECISIONS = ("fp32", "int8")


def is_measured(store: ModelStore, pack: str) -> bool:
    """True when the pack has a measurement that counts on this machine."""
    measurement = read_measurement(store.pack_dir(pack))
    recipes = {name: v.info.get("recipe", 1) for name, v in store.variants(pack).items()}
    return measurement is not None and not applies(measurement, recipes, this_machine())


def measure(store: ModelStore, pack: str, config: OcrConfig = OcrConfig(),
            runs: int = RUNS) -> Measurement:
    """Time the pack's CPU variants on a rendered page, compare them with fp32, and record the
    result in `<pack>/measurement.json`."""
    page = render_page(PAGE["seed"], PAGE["width"], PAGE["height"], PAGE["lines"]).image
    image = DecodedImage(page, page.shape[1], page.shape[0])
    present = store.variants(pack)
    engines = {precision: build_pipeline(config.model_copy(update={
        "pack": pack, "precision": precision, "device": "cpu"}), store)
               for precision in CPU_PRECISIONS if precision in present}
    reference = _read(engines["fp32"], image)
    timed = _time(engines, image, runs)
    variants = {}
    for precision, engine in engines.items():
        figures = {"recipe": present[precision].info.get("recipe", 1), **timed[precision]}
        if precision != "fp32":
            figures.update(_agreement(reference, _read(engine, image), engines["fp32"]))
        variants[precision] = figures
    record = {"schema": SCHEMA, "pack": pack,
              "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "machine": this_machine(), "threads": config.threads, "page": PAGE, "runs": runs,
              "bound": BOUND, "variants": variants}
    measurement = Measurement(pack, record["machine"], variants, BOUND, record)
    record["choice"] = pick(measurement, set(present))
    _write(store.pack_dir(pack) / FILENAME, record)
    log.debug("%s measured: %s", pack, record)
    return read_measurement(store.pack_dir(pack)) or measurement


def _read(engine: LoadedEngine, image: DecodedImage) -> tuple[np.ndarray, list[str]]:
    """The detector's probability map and the lines read (the warm-up run)."""
    pipeline = engine.pipeline
    return pipeline.detector.probability(image.pixels), [l.text for l in pipeline(image).lines]


def _time(engines: dict[str, LoadedEngine], image: DecodedImage, runs: int
          ) -> dict[str, dict[str, float]]:
    """Fastest detector and recogniser milliseconds of each engine over `runs` reads, taken in
    turns so that other load on the box falls on every variant alike."""
    timings: dict[str, list[dict]] = {precision: [] for precision in engines}
    for _ in range(runs):
        for precision, engine in engines.items():
            timings[precision].append(engine.pipeline(image).timings_ms)
    return {precision: {"det_ms": round(min(t["detect"] for t in taken), 2),
                        "rec_ms": round(min(t["recognize"] for t in taken), 2)}
            for precision, taken in timings.items()}


def _agreement(reference: tuple[np.ndarray, list[str]], other: tuple[np.ndarray, list[str]],
               base: LoadedEngine) -> dict[str, float]:
    """Share of detector pixels on the same side of the threshold, share of fp32's lines read
    identically."""
    (map_a, lines_a), (map_b, lines_b) = reference, other
    threshold = base.pipeline.detector.threshold
    pixels = float(np.mean((map_a > threshold) == (map_b > threshold))) if map_a.shape == \
        map_b.shape else 0.0
    read = set(lines_b)
    lines = sum(text in read for text in lines_a) / len(lines_a) if lines_a else 1.0
    return {"det_pixels": round(pixels, 5), "lines_text": round(lines, 5)}


def _write(path: Path, record: dict) -> None:
    staged = path.with_name(f".{path.name}.tmp")
    staged.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    staged.chmod(0o644)
    staged.replace(path)
