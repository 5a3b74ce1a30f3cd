"""Wires an `OcrPipeline` from the typed config and a model store: the one place that does."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

import numpy as np

from edge.config import OcrConfig
from edge.models.detgates import GIVEN, USE_GIVEN, split_detector
from edge.models.rechead import quantized_head_here, serving_recognizer
from edge.models.store import ModelStore, Variant
from edge.ocr.classifier import Classifier, ClassifierSettings
from edge.ocr.detector import (
    Detector,
    DetectorSettings,
    GlobalMeans,
    input_blocks,
    input_quantization,
)
from edge.ocr.pipeline import OcrPipeline
from edge.ocr.recognizer import Recognizer, RecognizerSettings
from edge.ocr.session import ModelSession, SessionSettings, resolve_device


_TRUE = np.array(True)


@dataclass(frozen=True)
class LoadedModels:
    """The model sessions of one pack variant, ready to be wired (cheaply, more than once)."""

    variant: Variant
    device: str
    det: ModelSession
    rec: ModelSession
    charset: tuple[str, ...]
    cls: Optional[ModelSession]
    preprocess: dict
    postprocess: dict
    det_means: tuple[str, ...] = ()  # the detector's global means, where it returns them


@dataclass(frozen=True)
class LoadedEngine:
    """A ready pipeline and what it was built from (for logs, messages and reports)."""

    pipeline: OcrPipeline
    variant: Variant
    device: str
    providers: tuple[str, ...]


def build_pipeline(config: OcrConfig, store: ModelStore) -> LoadedEngine:
    """Load the models the config asks for and connect the stages."""
    models = load_models(config, store)
    return LoadedEngine(assemble(models, config), models.variant, models.device,
                        tuple(models.det.providers))


def load_models(config: OcrConfig, store: ModelStore, tiled: bool = False) -> LoadedModels:
    """Open a session for each model of the chosen variant (the slow, memory-heavy part);
    `tiled` (a RAM budget) opens the detector that returns its global means and can take them,
    so tiles run with the whole input's (`edge.models.detgates`), for a pack whose manifest
    asks for it."""
    device = resolve_device(config.device)
    variant = store.choose(config.pack, config.precision, device)
    spec = store.spec(config.pack)
    settings = SessionSettings(device=device, threads=config.threads)
    rec, charset = serving_recognizer(variant.files["rec"], variant.files["dict"], config.charset,
                                      quantized_head_here(variant.precision))
    cls = None
    if config.classifier and "cls" in variant.files:
        cls = ModelSession(variant.files["cls"], settings)
    det, det_means = variant.files["det"], ()
    if tiled and spec.postprocess.get("tiles_take_whole_means", False):
        det, det_means = split_detector(det)
    return LoadedModels(variant, device, ModelSession(det, settings), ModelSession(rec, settings),
                        tuple(charset), cls, spec.preprocess, spec.postprocess, tuple(det_means))


@dataclass(frozen=True)
class MemoryCaps:
    """Limits a RAM budget puts on the stages' working memory; zeros mean none."""

    det_max_pixels: int = 0
    rec_max_width: int = 0
    rec_max_columns: int = 0


def assemble(models: LoadedModels, config: OcrConfig, caps: MemoryCaps = MemoryCaps()
             ) -> OcrPipeline:
    """Wire the stages around loaded sessions with the config's thresholds, side limit and batch,
    within `caps`."""
    det_settings = detector_settings(config, models.preprocess, models.postprocess)
    detector = Detector(models.det, replace(
        det_settings, max_pixels=caps.det_max_pixels,
        input_quantization=input_quantization(models.det.metadata),
        input_blocks=input_blocks(models.det.metadata)), _global_means(models))
    rec_settings = RecognizerSettings(height=models.preprocess["rec_height"],
                                      batch_size=config.rec_batch)
    if caps.rec_max_columns:  # a RAM budget's plan, made from measurements: it governs
        rec_settings = replace(rec_settings, max_columns=caps.rec_max_columns)
    if caps.rec_max_width:
        rec_settings = replace(rec_settings, max_width=caps.rec_max_width)
    recognizer = Recognizer(models.rec.outputs, models.charset, rec_settings)
    classifier = None
    if models.cls is not None:
        height, width = models.preprocess["cls_shape"]
        classifier = Classifier(models.cls, ClassifierSettings(height=height, width=width),
                                reader=recognizer)
    return OcrPipeline(detector, recognizer, classifier, min_score=config.min_score)


def _global_means(models: LoadedModels) -> Optional[GlobalMeans]:
    """The detector's two passes over tiles, where it returns and takes its means."""
    if not models.det_means:
        return None
    names = [name + GIVEN for name in models.det_means]

    def given(tensor: np.ndarray, means: list[np.ndarray]) -> np.ndarray:
        return models.det.outputs(tensor, {USE_GIVEN: _TRUE, **dict(zip(names, means))})[0]

    return GlobalMeans(measure=lambda tensor: models.det.outputs(tensor)[1:], given=given)


def detector_settings(config: OcrConfig, preprocess: dict, postprocess: dict) -> DetectorSettings:
    """Detector settings: the config's thresholds where set, else the pack's defaults."""
    def pick(value, key):
        return postprocess[key] if value is None else value

    return DetectorSettings(
        mean=tuple(preprocess["det_mean"]), std=tuple(preprocess["det_std"]),
        multiple=preprocess["det_multiple"], min_side=config.det_min_side,
        limit_side=config.det_limit_side,
        thresh=pick(config.det_thresh, "thresh"), box_thresh=pick(config.box_thresh, "box_thresh"),
        unclip_ratio=pick(config.unclip_ratio, "unclip_ratio"),
        end_pad=postprocess.get("end_pad", 0.0),
        end_pad_tilt=postprocess.get("end_pad_tilt", DetectorSettings.end_pad_tilt))
