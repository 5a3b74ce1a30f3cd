"""RAM budget: a memory model measured on the pack, a plan that fits the budget, an RSS watch.

The model is measured, not guessed, by a child process (`edge.daemon.memprobe`). The planner then
caps the detector's tile area, the recogniser's line and batch width and the decode size so
that the predicted peak fits; the engine steps the plan down only when a real peak comes close.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from edge.daemon import allocator
from edge.errors import ConfigError
from edge.ocr.detector import tile_count
from edge.ocr.imageio import ImageLimits, jpeg_reduction

log = logging.getLogger(__name__)

HEADROOM = 0.95  # plan for this share of the budget; the rest is for the file being read
# measured: on real pages the daemon's working memory above its rest came to up to 1.4 times
# what the probe predicted (tiny pack 27 MB for 19, small pack 106 MB for 79), so working memory
# is planned at this factor
WORKING_MARGIN = 1.4
DEGRADE_AT = 0.98  # a peak above this share of the budget steps the plan down
DECODE_SHARE = 0.90  # a decode (measured per pixel, nothing else running) may reach this share
REC_FULL_WIDTH = 1600  # the recogniser's widest line at full quality
# the recogniser reads a line wider than its cap in pieces; measured on 100 receipts (small
# pack): words F1 0.900 with lines up to 1600 px, 0.906 in pieces of 328 (0.842 with lines
# squeezed to 320 instead)
REC_MIN_WIDTH = 320
DET_MIN_PIXELS = 64_000  # the smallest detector tile (about 250x250) worth a model run
IMAGE_ASPECT = 0.75  # images are planned as 4:3 at their longest side (a square one takes more)
MAP_BYTES = 2  # per detector-input pixel of a whole tiled image: the stitched map and its bitmap
# memprobe measures the detector tiling a 4:3 page this wide, so the stitched map of an input up
# to that size is in the measured working memory; only a larger input's map is added
PROBE_SIDE = 1600
# the decode sides tried below the wanted one, largest first: steps this fine keep a plan that
# cannot have the wanted size close to it (the tiny pack at 160 MB on A4 scans: 1408 px read
# at 0.907 words F1, where the next coarser step, 1280 px, read at 0.868)
SIDE_STEP = 128
SMALLEST_SIDE = 1024
_MB = 1024 * 1024
MEASURE_TIMEOUT_S = 240  # all measurements together; below the unit's TimeoutStartSec
MEASUREMENTS = 3
# more while the model still cannot plan the budget: on a busy box one measurement in four of
# the tiny pack refused 160 MB that the others planned
MEASUREMENTS_BEFORE_REFUSING = 6
MEASURE_METHOD = 14  # raised whenever memprobe or the engine it measures changes (cache redone)


@dataclass(frozen=True)
class MemoryModel:
    """Measured cost of one pack variant in MB: the process at rest with the models loaded, the
    working memory of the detector (a line: per megapixel of its input), and that of the
    recogniser at the batch widths measured (thousand columns of a 48-pixel-high batch, MB),
    non-decreasing. The recogniser's is not a line: its peaks rise unevenly with the width, and
    a line above every point over-counts the narrow batches that tight budgets plan for."""

    base_mb: float
    det_fixed_mb: float
    det_mb_per_mpx: float
    rec_points: tuple[tuple[float, float], ...]

    @classmethod
    def from_dict(cls, data: dict) -> MemoryModel:
        """A model as `asdict` wrote it (to the cache)."""
        return cls(**dict(data, rec_points=tuple(tuple(point) for point in data["rec_points"])))

    def detector_mb_at(self, pixels: int) -> float:
        """Peak working memory of the detector on an input of `pixels` pixels."""
        return self.det_fixed_mb + self.det_mb_per_mpx * pixels / 1e6

    def recognizer_mb(self, columns: int) -> float:
        """Peak working memory of the recogniser on a batch `columns` wide in all: as measured
        at the narrowest width below it, between the widths measured, and beyond the widest
        at the slope from the narrowest to the widest."""
        kcol, first = columns / 1000.0, self.rec_points[0][0]
        last, highest = self.rec_points[-1]
        if kcol >= last:
            return highest + self._rec_slope() * (kcol - last)
        return float(np.interp(max(kcol, first), *zip(*self.rec_points)))

    def recognizer_columns(self, room_mb: float) -> int:
        """The widest batch (columns) whose working memory fits in `room_mb`; 0 if none."""
        if room_mb < self.rec_points[0][1]:
            return 0
        for (x0, y0), (x1, y1) in zip(self.rec_points, self.rec_points[1:]):
            if room_mb < y1:
                return int((x0 + (room_mb - y0) / (y1 - y0) * (x1 - x0)) * 1000)
        last, highest = self.rec_points[-1]
        return int((last + (room_mb - highest) / max(self._rec_slope(), 1e-6)) * 1000)

    def _rec_slope(self) -> float:
        (first, lowest), (last, highest) = self.rec_points[0], self.rec_points[-1]
        return (highest - lowest) / (last - first) if last > first else 0.0


@dataclass(frozen=True)
class Plan:
    """What the planner chose: the decode size, the detector's tile area (the detector keeps
    its scale and runs over tiles of at most this area), the recogniser's line and batch
    width, and the largest decode the budget allows."""

    budget_mb: int
    det_max_pixels: int
    det_side: int
    rec_max_width: int
    rec_max_columns: int
    image_max_side: int
    decode_room_mb: float
    predicted_mb: float

    def describe(self) -> str:
        """One line for the start-up log and health."""
        return (f"budget {self.budget_mb} MB: images decoded to {self.image_max_side} px, "
                f"detector tiles up to {self.det_max_pixels / 1e6:.2f} MP, lines up to "
                f"{self.rec_max_width} px wide, {self.rec_max_columns} columns per recogniser "
                f"batch, predicted peak {self.predicted_mb:.0f} MB")

    def max_decode_pixels(self, file_bytes: int) -> int:
        """The most pixels a decode of a `file_bytes` file may fill (its scratch included)."""
        room = self.decode_room_mb - file_bytes / _MB
        return max(1, int(room * _MB / DECODE_BYTES_PER_PIXEL))


DECODE_BYTES_PER_PIXEL = 7.0  # measured: 4.5-6.3 per decoded pixel (JPEG, PNG) plus the file


def plan(model: MemoryModel, budget_mb: int, wanted_side: int, wanted_batch: int,
         wanted_image_side: int, channels: int = 3) -> Plan:
    """The most accurate settings whose predicted peak fits `budget_mb` with HEADROOM to spare,
    working memory counted at WORKING_MARGIN times the measured.

    Resolution comes first: the largest decode size for which a detector tile and a recogniser
    piece of useful size still fit. The detector keeps its scale and runs over tiles, and the
    recogniser reads long lines in pieces, so the budget costs speed before it costs text.
    `channels` is the decoded image's (1 when documents are decoded grey).
    """
    usable = _working_room(model, budget_mb)
    sides = (wanted_image_side, *range((wanted_image_side - 1) // SIDE_STEP * SIDE_STEP,
                                       SMALLEST_SIDE - 1, -SIDE_STEP))
    for side in sides:
        image_mb = _image_mb(side, channels)
        stages = _stages(model, usable - image_mb, image_mb, wanted_side, wanted_batch)
        if stages is not None:
            det_pixels, rec_width, columns, stage_mb = stages
            decode_room = budget_mb * DECODE_SHARE - model.base_mb
            return Plan(budget_mb, det_pixels, wanted_side, rec_width, columns, side,
                        round(decode_room, 1),
                        round(model.base_mb + (image_mb + stage_mb) * WORKING_MARGIN, 1))
    need = model.base_mb + WORKING_MARGIN * (
        _image_mb(SMALLEST_SIDE, channels) + _map_mb(wanted_side)
        + max(model.detector_mb_at(DET_MIN_PIXELS), model.recognizer_mb(REC_MIN_WIDTH)))
    raise ConfigError(f"resources.memory_mb {budget_mb} is too small for this pack: it needs "
                      f"about {need / HEADROOM:.0f} MB",
                      "raise resources.memory_mb, or choose a smaller ocr.pack")


def _working_room(model: MemoryModel, budget_mb: int) -> float:
    """MB the decoded image and the stages may take, before WORKING_MARGIN."""
    return (budget_mb * HEADROOM - model.base_mb) / WORKING_MARGIN


def _line_caps(rec_columns: int, wanted_batch: int) -> tuple[int, int]:
    """The widest line (a multiple of 8, at most REC_FULL_WIDTH) and the batch width that
    `rec_columns` of room allow."""
    width = min(REC_FULL_WIDTH, rec_columns // 8 * 8)
    return width, max(width, min(wanted_batch * width, rec_columns))


def _stages(model: MemoryModel, room: float, crops_mb: float, wanted_side: int,
            wanted_batch: int) -> Optional[tuple[int, int, int, float]]:
    """Detector tile area, line width, batch columns and their peak in `room` MB; None when
    the tile would fall below DET_MIN_PIXELS or the line width below REC_MIN_WIDTH. The
    recogniser shares the room with the line crops (`crops_mb`: at most a copy of the image)."""
    whole = wanted_side * wanted_side
    det_pixels = min(whole, int((room - model.det_fixed_mb) / max(model.det_mb_per_mpx, 1e-6)
                                * 1e6))
    if det_pixels < whole:  # tiled: the stitched map of the whole input is held as well
        det_pixels = int((room - _map_mb(wanted_side) - model.det_fixed_mb)
                         / max(model.det_mb_per_mpx, 1e-6) * 1e6)
    rec_width, columns = _line_caps(model.recognizer_columns(room - crops_mb), wanted_batch)
    if det_pixels < DET_MIN_PIXELS or rec_width < REC_MIN_WIDTH:
        return None
    det_mb = model.detector_mb_at(det_pixels) + (_map_mb(wanted_side) if det_pixels < whole
                                                 else 0.0)
    return det_pixels, rec_width, columns, max(det_mb, crops_mb + model.recognizer_mb(columns))


@dataclass(frozen=True)
class Planner:
    """The measured model and what the config wants."""

    model: MemoryModel
    budget_mb: int
    wanted_side: int
    wanted_batch: int
    wanted_image_side: int
    channels: int = 3

    def plan(self) -> Plan:
        """The plan for the budget, made once at start."""
        return plan(self.model, self.budget_mb, self.wanted_side, self.wanted_batch,
                    self.wanted_image_side, self.channels)

    def fits(self) -> bool:
        """Whether a plan fits the budget at all."""
        try:
            self.plan()
        except ConfigError:
            return False
        return True

    def tile_pixels(self, plan: Plan, image_bytes: int, input_pixels: int) -> int:
        """The detector's tile area for one image: the whole input if it fits beside the
        decoded image, else what is left once the image and the stitched map are held (never
        less than the plan's, which assumed the largest image)."""
        room = _working_room(self.model, self.budget_mb) - image_bytes / _MB
        if self.model.detector_mb_at(input_pixels) <= room:
            return input_pixels
        room -= _beyond_probe_mb(input_pixels) + self.model.det_fixed_mb
        return max(plan.det_max_pixels, int(room / max(self.model.det_mb_per_mpx, 1e-6) * 1e6))

    def line_widths(self, plan: Plan, image_bytes: int) -> tuple[int, int]:
        """The recogniser's line width and batch columns for one image: wider than the plan's
        where the image and its line crops (at most a copy of it) leave more room than the
        largest image the plan assumed; never narrower."""
        room = _working_room(self.model, self.budget_mb) - 2 * image_bytes / _MB
        width, columns = _line_caps(self.model.recognizer_columns(room), self.wanted_batch)
        if width <= plan.rec_max_width:
            return plan.rec_max_width, plan.rec_max_columns
        return width, columns

    def in_words(self, plan: Plan) -> str:
        """What the plan costs, for people: an A4 page scanned at 300 dpi (a 1.5 MB JPEG of
        2480x3508), how it is decoded and tiled, and the print the detector can still see
        (capitals MIN_CAPITAL_PX tall at its input)."""
        page_w, page_h = 2480, 3508
        limits = ImageLimits(max_bytes=0, max_pixels=0, max_side=plan.image_max_side,
                             max_decode_pixels=plan.max_decode_pixels(A4_JPEG_BYTES))
        reduction = jpeg_reduction(page_w, page_h, limits)
        decoded_h = min(plan.image_max_side, page_h // reduction)
        decoded_w = round(page_w * decoded_h / page_h)
        det_scale = min(1.0, plan.det_side / page_h)
        det_w, det_h = (max(32, round(side * det_scale / 32) * 32) for side in (page_w, page_h))
        tile = self.tile_pixels(plan, decoded_w * decoded_h * self.channels, det_w * det_h)
        capital = MIN_CAPITAL_PX / det_scale  # page pixels at 300 dpi
        return (f"an A4 page at 300 dpi is decoded at 1/{reduction} scale to {decoded_h} px "
                f"tall and detected in {tile_count(det_w, det_h, tile)} tile(s); capitals under "
                f"about {capital:.0f} px on the page (about {capital / 300 * 72 / 0.7:.0f} pt "
                "type) may be missed")


def step_down(current: Plan) -> Optional[Plan]:
    """The next smaller plan (a fifth less detector tile area, line width and batch width; the
    decode size is kept), or None at the floor."""
    pixels = max(DET_MIN_PIXELS, int(current.det_max_pixels * 0.8))
    width = max(REC_MIN_WIDTH, int(current.rec_max_width * 0.8) // 8 * 8)
    columns = max(width, int(current.rec_max_columns * 0.8))
    if (pixels, width, columns) == (current.det_max_pixels, current.rec_max_width,
                                    current.rec_max_columns):
        return None
    return replace(current, det_max_pixels=pixels, rec_max_width=width, rec_max_columns=columns)


# measured: capitals 8 px tall at the detector's input were read exactly in 5 of 6 rendered
# lines (tiny pack) and 6 of 6 (small); at 7 px, 4 of 6
MIN_CAPITAL_PX = 8
A4_JPEG_BYTES = 1_500_000


def _image_mb(side: int, channels: int = 3) -> float:
    return side * side * IMAGE_ASPECT * channels / _MB


def _map_mb(side: int) -> float:
    return _beyond_probe_mb(int(side * side * IMAGE_ASPECT))


def _beyond_probe_mb(input_pixels: int) -> float:
    """The stitched map's MB for an input of `input_pixels`, beyond what the probe measured."""
    return max(0, input_pixels - PROBE_SIDE * PROBE_SIDE * IMAGE_ASPECT) * MAP_BYTES / _MB


# --- without a budget: a share of the box --------------------------------------------------

AUTO_SHARE = 0.5  # of MemTotal (or of the cgroup's limit) that one image may take decoded


@dataclass(frozen=True)
class BoxMemory:
    """What `memory_mb: auto` guards: MB of memory one image's decode may not push past, and
    where that figure came from."""

    limit_mb: int
    source: str


def box_memory(proc: Path = Path("/proc"), cgroups: Path = Path("/sys/fs/cgroup")) -> BoxMemory:
    """Half of MemTotal, or half of the tightest memory.max of this process's cgroup v2 and
    its parents when that is lower."""
    total = _meminfo_mb(proc / "meminfo")
    limit, source = total, f"MemTotal {total} MB"
    for folder in _own_cgroups(proc / "self" / "cgroup", cgroups):
        cap = _cgroup_max_mb(folder / "memory.max")
        if cap is not None and cap < limit:
            limit, source = cap, f"the cgroup's memory.max {cap} MB"
    return BoxMemory(int(limit * AUTO_SHARE), f"half of {source}")


def _meminfo_mb(path: Path) -> int:
    try:
        text = path.read_text()
    except OSError:  # hidden under the unit's ProcSubset=pid: the kernel's sysinfo says the same
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // (1024 * 1024)
    for line in text.splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise ConfigError(f"{path} gives no MemTotal", "set resources.memory_mb to a number")


def _own_cgroups(own: Path, root: Path) -> list[Path]:
    """This process's cgroup v2 folder and every parent up to the root."""
    try:
        line = next(entry for entry in own.read_text().splitlines() if entry.startswith("0::"))
    except (OSError, StopIteration):
        return []
    folder = root / line[3:].strip().lstrip("/")
    return [folder, *[p for p in folder.parents if p.is_relative_to(root)]]


def _cgroup_max_mb(path: Path) -> Optional[int]:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) // _MB if text.isdigit() else None


# --- measuring (in a child process) ---------------------------------------------------------

@dataclass(frozen=True)
class Measurement:
    """What one child measured, in MB over the process at rest: (tile MP, peak) of the
    detector and (thousand columns, peak) of the recogniser."""

    base_mb: float
    detector: tuple[tuple[float, float], ...]
    recognizer: tuple[tuple[float, float], ...]

    @classmethod
    def from_json(cls, text: str) -> Measurement:
        """The measurement a child printed."""
        data = json.loads(text)
        return cls(data["base_mb"], *(tuple(tuple(point) for point in data[stage])
                                      for stage in ("detector", "recognizer")))


def fitted_model(measurements: list[Measurement]) -> MemoryModel:
    """The memory model of the children's peaks: for the detector, a line above the middle peak
    at each size (the upper one of an even count), since the heap's fragmentation moves one
    child's peak at a size by tens of MB and a line above one child's points carries its worst
    point into every size; for the recogniser, the highest peak at each width, since it runs
    tens of batches per page, one after another, and meets the heap's bad cases that one child
    in three measures (small pack, 30 receipts in turn at 256 MB: at most 102-109 MB above rest
    planned from the middle peaks, stepping the plan down, against 70-86 MB from the highest).
    Of more than MEASUREMENTS children (measured again because the first refused the budget)
    the recogniser's second highest peak counts: a bad case met by one child in three shows in
    two of them, while one child alone was seen 7-9 MB over the other five at every width (the
    tiny pack: 21.2 MB at 400 columns against 11.5-14.6), refusing a 160 MB budget that the
    daemon's pages peak within (146-155 MB) however often it measured again."""
    def middle(values: list[float]) -> float:
        return sorted(values)[len(values) // 2]

    def upper(values: list[float]) -> float:  # the highest, or of more children the second
        return sorted(values)[-2 if len(values) > MEASUREMENTS else -1]

    def peaks(stage: str, pick: Callable[[list[float]], float]) -> list[tuple[float, float]]:
        runs = [getattr(measurement, stage) for measurement in measurements]
        return [(size, pick([run[i][1] for run in runs])) for i, (size, _) in enumerate(runs[0])]

    det_fixed, det_slope = _line_fit(peaks("detector", middle))
    widths, rec_mb = zip(*peaks("recognizer", upper))
    rising = tuple(zip(widths, (round(mb, 1) for mb in itertools.accumulate(rec_mb, max))))
    return MemoryModel(round(middle([m.base_mb for m in measurements]), 1), round(det_fixed, 1),
                       round(det_slope, 2), rising)


def _line_fit(points: list[tuple[float, float]]) -> tuple[float, float]:
    """A line above every point: the least-squares slope (not below zero), with the intercept
    raised until no point lies over it."""
    xs, ys = np.array(points).T
    slope = max(0.0, float(np.polyfit(xs, ys, 1)[0]))
    return max(0.0, float((ys - slope * xs).max())), slope


def measured_model(ocr_json: str, model_dir: Path, cache: Path,
                   fits: Callable[[MemoryModel], bool] = lambda model: True) -> MemoryModel:
    """The memory model for these OCR settings and model files: from the cache, else measured
    MEASUREMENTS times, each in a child of its own, and fitted by `fitted_model` (measured
    again, up to MEASUREMENTS_BEFORE_REFUSING times, while the model does not `fits` the
    budget: one in four measurements of the tiny pack would have refused a 160 MB budget that
    the other three plan for, and the cache would have kept the refusal)."""
    key = {"ocr": ocr_json, "models": _models_fingerprint(model_dir), "malloc": allocator.active(),
           "method": MEASURE_METHOD}
    if cache.exists():
        cached = json.loads(cache.read_text(encoding="utf-8"))
        if cached.get("key") == key:
            return MemoryModel.from_dict(cached["model"])
    log.info("measuring the memory model of the pack (once; cached in %s)", cache)
    model = fitted_model(_measurements(ocr_json, model_dir, fits))
    log.info("memory model, from the children's peaks: %s", model)
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({"key": key, "model": asdict(model)}), encoding="utf-8")
    return model


def _measurements(ocr_json: str, model_dir: Path,
                  fits: Callable[[MemoryModel], bool]) -> list[Measurement]:
    """The measurements made while they fit in MEASURE_TIMEOUT_S altogether (a slow box keeps
    its first)."""
    started = time.monotonic()
    done = [_measure_in_child(ocr_json, model_dir, MEASURE_TIMEOUT_S)]
    while _wanted(done, fits):
        spent = time.monotonic() - started
        if spent * (len(done) + 1) / len(done) > MEASURE_TIMEOUT_S:
            break
        try:
            done.append(_measure_in_child(ocr_json, model_dir, MEASURE_TIMEOUT_S - spent))
        except ConfigError as exc:  # out of time, or the child failed: what was measured stands
            log.warning("a further measurement of the pack's memory was not kept: %s", exc)
            break
    return done


def _wanted(done: list[Measurement], fits: Callable[[MemoryModel], bool]) -> bool:
    """Whether to measure once more."""
    if len(done) < MEASUREMENTS:
        return True
    return len(done) < MEASUREMENTS_BEFORE_REFUSING and not fits(fitted_model(done))


def _measure_in_child(ocr_json: str, model_dir: Path, timeout: float) -> Measurement:
    try:
        child = [sys.executable, "-m", "edge.daemon.memprobe", ocr_json, str(model_dir)]
        done = subprocess.run(child, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise ConfigError(f"measuring the pack's memory use took over {timeout:.0f} s",
                          "retry on a less busy machine, or set resources.memory_mb: 0") from exc
    if done.returncode != 0:
        raise ConfigError(f"measuring the pack's memory use failed: {done.stderr.strip()[-400:]}",
                          "check `edge-ocr models list`")
    measurement = Measurement.from_json(done.stdout.splitlines()[-1])
    log.info("measured: %s", fitted_model([measurement]))
    return measurement


def _models_fingerprint(model_dir: Path) -> list[str]:
    """Changes whenever a variant is built again (its variant.json is rewritten)."""
    return sorted(f"{path.relative_to(model_dir)}@{path.stat().st_mtime_ns}"
                  for path in model_dir.glob("*/*/variant.json"))


# --- watching ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class MemoryReading:
    """Resident memory now and at its highest, in MB."""

    rss_mb: float
    peak_mb: float


def read_memory(status: Path = Path("/proc/self/status")) -> MemoryReading:
    """VmRSS and VmHWM of a process (this one by default); zeros where /proc has neither."""
    values = {"VmRSS": 0.0, "VmHWM": 0.0}
    try:
        for line in status.read_text().splitlines():
            key = line.split(":", 1)[0]
            if key in values:
                values[key] = int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return MemoryReading(round(values["VmRSS"], 1), round(values["VmHWM"], 1))

