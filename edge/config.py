"""Typed configuration, validated in one place.

Every field is documented with its bounds; unknown keys are refused with their path, so a typo is
an error at start, never a silently ignored setting. Stages never read this file directly: the
factories turn these sections into each stage's own frozen settings.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edge.errors import ConfigError

ENV_MODEL_DIR = "EDGE_OCR_MODEL_DIR"
ENV_CONFIG = "EDGE_OCR_CONFIG"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OcrConfig(_Section):
    """The OCR engine: which models, where they run, and how eagerly they report text."""

    pack: str = Field("ppocr-v6-small", description="model pack from models/manifest.yaml")
    precision: Literal["auto", "int8", "fp16", "fp32"] = Field(
        "auto", description="model variant; auto = int8 on CPU, fp16 on CUDA, else fp32")
    device: Literal["cpu", "cuda", "auto"] = Field("cpu", description="where the models run")
    threads: int = Field(2, ge=1, le=64, description="ONNX Runtime intra-op threads")
    charset: Literal["all", "latin"] = Field(
        "all", description="characters the recogniser may output; latin is faster and cannot "
                           "confuse digits with look-alikes of other scripts; all = whole dictionary")
    classifier: bool = Field(True, description="turn upside-down lines (packs that have one)")
    det_min_side: int = Field(0, ge=0, le=4096,
                              description="upscale so the shorter side reaches this; 0 = never")
    det_limit_side: int = Field(1280, ge=128, le=4096,
                                description="longest side fed to the detector, pixels")
    det_thresh: Optional[float] = Field(None, gt=0, lt=1,
                                        description="binarisation threshold; null = pack default")
    box_thresh: Optional[float] = Field(None, gt=0, lt=1,
                                        description="minimum mean box probability; null = pack default")
    unclip_ratio: Optional[float] = Field(None, ge=1.0, le=4.0,
                                          description="box growth factor; null = pack default")
    min_score: float = Field(0.5, ge=0, le=1, description="lines scoring lower are dropped")
    rec_batch: int = Field(4, ge=1, le=64, description="line crops per recogniser run")


class ImagesConfig(_Section):
    """What the decoder accepts."""

    max_megapixels: float = Field(100.0, gt=0, le=1000,
                                  description="refuse images whose header claims more")
    max_side: int = Field(4096, ge=256, le=16384,
                          description="decode larger images reduced to about this longest side")
    max_file_mb: float = Field(64.0, gt=0, le=4096, description="refuse larger files")


class ModelsConfig(_Section):
    """Where model packs live."""

    dir: Optional[Path] = Field(
        None, description=f"model directory (${ENV_MODEL_DIR} overrides it); null = per-user cache")


class EdgeConfig(_Section):
    """The whole configuration file."""

    ocr: OcrConfig = OcrConfig()
    images: ImagesConfig = ImagesConfig()
    models: ModelsConfig = ModelsConfig()


def load_config(path: Path | None) -> EdgeConfig:
    """Load and validate a YAML config file: `path`, else $EDGE_OCR_CONFIG, else the defaults."""
    if path is None and os.environ.get(ENV_CONFIG):
        path = Path(os.environ[ENV_CONFIG])
    if path is None:
        return EdgeConfig()
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {path} is not valid YAML: {exc}") from exc
    return parse_config(raw, source=str(path))


def parse_config(raw: object, source: str = "config") -> EdgeConfig:
    """Validate a mapping; errors name the key path and what is allowed."""
    try:
        return EdgeConfig.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top)'}: {err['msg']}"
            for err in exc.errors())
        raise ConfigError(f"{source}: {problems}", "see config/edge-ocr.yaml") from exc


def with_overrides(config: EdgeConfig, section: str, **values: object) -> EdgeConfig:
    """Return a copy with command-line values (those not None) applied to one section."""
    given = {k: v for k, v in values.items() if v is not None}
    if not given:
        return config
    merged = getattr(config, section).model_dump() | given
    return parse_config(config.model_dump() | {section: merged}, source="command line")


def default_model_dir() -> Path:
    """$EDGE_OCR_MODEL_DIR, else $XDG_CACHE_HOME/edge-ocr/models, else ~/.cache/edge-ocr/models."""
    if os.environ.get(ENV_MODEL_DIR):
        return Path(os.environ[ENV_MODEL_DIR])
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "edge-ocr" / "models"


def model_dir(config: EdgeConfig) -> Path:
    """The model directory: $EDGE_OCR_MODEL_DIR overrides the config's setting; else the cache."""
    if os.environ.get(ENV_MODEL_DIR) or config.models.dir is None:
        return default_model_dir()
    return config.models.dir
