"""The engine as the daemon runs it: decode limits and pipeline shaped by the RAM plan.

Without a budget it is the configured pipeline. With one, the plan sets the decode size, the
detector's tile area (its scale is kept), the recogniser's line and batch width, and the largest
decode a file may make; an image smaller than the largest the plan assumed gets larger tiles and
wider lines, by its size alone. The plan is made once at start and kept, so the same image reads
the same whatever came before it. The decoder's scratch is handed back before the stages run, and
the peak is read after each frame: only a peak within reach of the budget steps the plan down,
and that is logged and shown in health.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Optional, Union

import numpy as np

from edge.config import ImagesConfig, OcrConfig
from edge.daemon import allocator, budget
from edge.daemon.budget import BoxMemory, MemoryReading, Planner
from edge.frames import DecodedImage, OcrResult
from edge.models.factory import LoadedModels, MemoryCaps, assemble
from edge.ocr.imageio import ImageLimits, decode_bytes, from_pixels

log = logging.getLogger(__name__)

_MB = 1024 * 1024


@dataclass(frozen=True)
class MemoryStatus:
    """Memory as health reports it."""

    rss_mb: float
    peak_mb: float
    budget_mb: int
    degraded: bool
    plan: Optional[str]


class DaemonEngine:
    """Decode and read one frame at a time within the plan; watch RSS after each."""

    def __init__(self, models: LoadedModels, ocr: OcrConfig, images: ImagesConfig,
                 planner: Optional[Planner] = None, box: Optional[BoxMemory] = None) -> None:
        self.models = models
        self._ocr = ocr
        self._images = images
        self._planner = planner
        self.plan = planner.plan() if planner is not None else None
        self.degraded = False
        self._peak_acted_on = 0.0
        self._guard, self._guard_pixels = None, 0
        if planner is None and box is not None:
            self._guard_pixels = _decode_pixels(box.limit_mb - budget.read_memory().rss_mb)
            self._guard = (f"auto: images decoded up to {self._guard_pixels / 1e6:.0f} MP "
                           f"({box.limit_mb} MB, {box.source})")
        self._apply()

    def decode(self, raw: Union[bytes, np.ndarray]) -> DecodedImage:
        """Encoded bytes or camera pixels as engine input, within the decode limits (under a
        budget, the plan's: JPEGs are decoded at the reduction that fits)."""
        if self.plan is None:
            return _decode(raw, self._limits)
        limits = self._limits
        if not isinstance(raw, np.ndarray):
            limits = replace(limits, max_decode_pixels=self.plan.max_decode_pixels(len(raw)))
        image = _decode(raw, limits)
        # the decoder's scratch (a JPEG decoded at a reduced scale, then resized) would otherwise
        # stay resident under the stages' own peak: measured +15 MB on an A4 scan, for a trim
        # of about 3.5 ms
        allocator.release_free_memory()
        return image

    def __call__(self, image: DecodedImage) -> OcrResult:
        """Read one image (under a budget, with detector tiles sized for it)."""
        if self.plan is not None and not self.degraded:
            self._fit_stages(image)
        return self._pipeline(image)

    def warm_up(self) -> None:
        """Read one rendered page, so the first real frame does not pay for lazy set-up."""
        from edge.models.calibration import render_page

        page = render_page(0, lines=4).image
        self(DecodedImage(page, page.shape[1], page.shape[0]))
        self.after_frame()

    def after_frame(self) -> MemoryReading:
        """Read RSS; under a budget, return freed heap to the kernel first and step the plan
        down if the peak came close. (Without one the heap is kept: handing it back costs
        page faults on the next frame.)"""
        if self.plan is not None:
            allocator.release_free_memory()
        reading = budget.read_memory()
        if self.plan is None or reading.peak_mb <= self._peak_acted_on:
            return reading  # the peak only ever grows: nothing new to learn
        self._peak_acted_on = reading.peak_mb
        if reading.peak_mb > self.plan.budget_mb * budget.DEGRADE_AT:
            self._step_down(reading)
        return reading

    def memory(self) -> MemoryStatus:
        """RSS, peak and the plan, for health."""
        reading = budget.read_memory()
        plan = (f"{self.plan.describe()}; {self._planner.in_words(self.plan)}" if self.plan
                else self._guard)
        return MemoryStatus(reading.rss_mb, reading.peak_mb,
                            self.plan.budget_mb if self.plan else 0, self.degraded, plan)

    @property
    def guard(self) -> Optional[str]:
        """Without a budget, what `memory_mb: auto` holds the decode to, in words."""
        return self._guard

    def _fit_stages(self, image: DecodedImage) -> None:
        """Detector tiles and recogniser batches as large as this image leaves room for: a
        function of its size alone, so the same image reads the same every time."""
        width, height = self._pipeline.detector.input_size(image.pixels)
        image_bytes = image.pixels.nbytes
        caps = MemoryCaps(self._planner.tile_pixels(self.plan, image_bytes, width * height),
                          *self._planner.line_widths(self.plan, image_bytes))
        if caps != self._stage_caps:
            self._stage_caps = caps
            self._pipeline = assemble(self.models, self._ocr, caps)

    def _step_down(self, reading: MemoryReading) -> None:
        smaller = budget.step_down(self.plan)
        if smaller is None or smaller == self.plan:
            return
        log.warning("peak RSS %.0f MB is within %.0f%% of the %d MB budget: stepping down to %s",
                    reading.peak_mb, (1 - budget.DEGRADE_AT) * 100, self.plan.budget_mb,
                    smaller.describe())
        self.plan, self.degraded = smaller, True
        self._apply()

    def _apply(self) -> None:
        caps, limits = MemoryCaps(), image_limits(self._images)
        if self.plan is not None:
            caps = MemoryCaps(self.plan.det_max_pixels, self.plan.rec_max_width,
                              self.plan.rec_max_columns)
            self._stage_caps = caps
            limits = replace(limits, max_side=min(limits.max_side, self.plan.image_max_side))
        elif self._guard is not None:
            limits = replace(limits, max_decode_pixels=self._guard_pixels)
        self._limits = limits
        self._pipeline = assemble(self.models, self._ocr, caps)


def image_limits(images: ImagesConfig) -> ImageLimits:
    """Decoder limits from the config's images section."""
    return ImageLimits(max_bytes=int(images.max_file_mb * 1024 * 1024),
                       max_pixels=int(images.max_megapixels * 1_000_000), max_side=images.max_side,
                       grey=images.grey)


def _decode_pixels(room_mb: float) -> int:
    """The most pixels a decode can fill in `room_mb` of memory."""
    return max(1, int(room_mb * _MB / budget.DECODE_BYTES_PER_PIXEL))


def _decode(raw: Union[bytes, np.ndarray], limits: ImageLimits) -> DecodedImage:
    if isinstance(raw, np.ndarray):
        return from_pixels(raw, limits)
    return decode_bytes(raw, limits)
