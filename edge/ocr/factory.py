"""Wires an `OcrPipeline` from the typed config and a model store: the one place that does."""

from __future__ import annotations

from dataclasses import dataclass

from edge.config import OcrConfig
from edge.modelstore import ModelStore, Variant
from edge.ocr.charset import CHARSETS, restrict_recognizer
from edge.ocr.classifier import Classifier, ClassifierSettings
from edge.ocr.detector import Detector, DetectorSettings
from edge.ocr.pipeline import OcrPipeline
from edge.ocr.recognizer import Recognizer, RecognizerSettings
from edge.ocr.session import ModelSession, SessionSettings, resolve_device


@dataclass(frozen=True)
class LoadedEngine:
    """A ready pipeline and what it was built from (for logs, messages and reports)."""

    pipeline: OcrPipeline
    variant: Variant
    device: str
    providers: tuple[str, ...]


def build_pipeline(config: OcrConfig, store: ModelStore) -> LoadedEngine:
    """Load the models the config asks for and connect the stages."""
    device = resolve_device(config.device)
    variant = store.choose(config.pack, config.precision, device)
    spec = store.spec(config.pack)
    session_settings = SessionSettings(device=device, threads=config.threads)
    det_model = ModelSession(variant.files["det"], session_settings)
    detector = Detector(det_model, detector_settings(config, spec.preprocess, spec.postprocess))
    recognizer = _recognizer(config, variant, spec.preprocess, session_settings)
    classifier = None
    if config.classifier and "cls" in variant.files:
        height, width = spec.preprocess["cls_shape"]
        classifier = Classifier(ModelSession(variant.files["cls"], session_settings),
                                ClassifierSettings(height=height, width=width))
    pipeline = OcrPipeline(detector, recognizer, classifier, min_score=config.min_score)
    return LoadedEngine(pipeline, variant, device, tuple(det_model.providers))


def _recognizer(config: OcrConfig, variant: Variant, preprocess: dict,
                session_settings: SessionSettings) -> Recognizer:
    charset, model = variant.charset, None
    if config.charset != "all":
        model, charset = restrict_recognizer(variant.files["rec"], charset, CHARSETS[config.charset])
    session = ModelSession(variant.files["rec"], session_settings, model)
    settings = RecognizerSettings(height=preprocess["rec_height"], batch_size=config.rec_batch)
    return Recognizer(session, charset, settings)


def detector_settings(config: OcrConfig, preprocess: dict, postprocess: dict) -> DetectorSettings:
    """Detector settings: the config's thresholds where set, else the pack's defaults."""
    def pick(value, key):
        return postprocess[key] if value is None else value

    return DetectorSettings(
        mean=tuple(preprocess["det_mean"]), std=tuple(preprocess["det_std"]),
        multiple=preprocess["det_multiple"], min_side=config.det_min_side,
        limit_side=config.det_limit_side,
        thresh=pick(config.det_thresh, "thresh"), box_thresh=pick(config.box_thresh, "box_thresh"),
        unclip_ratio=pick(config.unclip_ratio, "unclip_ratio"))
