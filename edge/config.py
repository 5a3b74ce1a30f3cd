"""Typed configuration, validated in one place.

Every field is documented with its bounds; unknown keys are refused with their path, so a typo is
an error at start, never a silently ignored setting. Stages never read this file directly: the
factories turn these sections into each stage's own frozen settings.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal, Optional, Union

import yaml
from pydantic import (BaseModel, ConfigDict, Field, ValidationError, field_validator,
                      model_validator)

from edge.errors import ConfigError

ENV_MODEL_DIR = "EDGE_OCR_MODEL_DIR"
ENV_CONFIG = "EDGE_OCR_CONFIG"
ENV_CREDENTIALS = "CREDENTIALS_DIRECTORY"
NAME_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"  # device ids and camera names: safe inside a topic


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*", mode="after")
    @classmethod
    def _expand_home(cls, value: object) -> object:
        """`~` in any path setting means the daemon user's home."""
        return value.expanduser() if isinstance(value, Path) else value


class OcrConfig(_Section):
    """The OCR engine: which models, where they run, and how eagerly they report text."""

    pack: str = Field("ppocr-v6-small", description="model pack from models/manifest.yaml")
    precision: Literal["auto", "int8", "fp16", "fp32"] = Field(
        "auto", description="model variant; auto = on CPU the one measured fastest here within "
                            "the agreement bound (int8 until measured), fp16 on CUDA, else fp32")
    device: Literal["cpu", "cuda", "auto"] = Field("cpu", description="where the models run")
    threads: int = Field(2, ge=1, le=64, description="ONNX Runtime intra-op threads")
    charset: Literal["all", "latin"] = Field(
        "all", description="characters the recogniser may output; latin is faster and cannot "
                           "confuse digits with look-alikes of other scripts; all = whole dictionary")
    classifier: bool = Field(True, description="turn upside-down pages (packs that have one)")
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
    max_side: int = Field(2048, ge=256, le=16384,
                          description="decode larger images reduced to about this longest side")
    max_file_mb: float = Field(64.0, gt=0, le=4096, description="refuse larger files")
    grey: bool = Field(False, description="decode to one channel (documents): a third of the "
                                          "memory per image and line crop; colour is not read")


class ModelsConfig(_Section):
    """Where model packs live."""

    dir: Optional[Path] = Field(
        None, description=f"model directory (${ENV_MODEL_DIR} overrides it); null = per-user cache")


class FolderSource(_Section):
    """A spool folder: images written or moved into it are read, then released."""

    path: Path = Field(description="folder to watch (not recursive)")
    settle_seconds: float = Field(
        2.0, ge=0, le=3600, description="a file is taken once its size and mtime held still this "
                                        "long (network shares send no close-write event)")


MAX_FRAME_SIDE = 16384  # pixels; no camera frame is wider or taller
Pixel = Annotated[int, Field(ge=0, le=MAX_FRAME_SIDE)]


class CameraRegion(_Section):
    """The part of a camera's frame that is read, in pixels of the full frame: a rectangle
    (`x`, `y`, `width`, `height`) or a `polygon`. Only this part is watched for change and read;
    boxes are still reported in full-frame pixels."""

    x: Optional[Pixel] = Field(None, description="rectangle: left edge, pixels from the left")
    y: Optional[Pixel] = Field(None, description="rectangle: top edge, pixels from the top")
    width: Optional[int] = Field(None, ge=8, le=MAX_FRAME_SIDE, description="rectangle: width")
    height: Optional[int] = Field(None, ge=8, le=MAX_FRAME_SIDE, description="rectangle: height")
    polygon: Optional[list[tuple[Pixel, Pixel]]] = Field(
        None, max_length=64, description="or 3-64 [x, y] corners, in order around the area; "
                                         "what lies outside it is hidden before reading")

    @field_validator("polygon")
    @classmethod
    def _is_an_area(cls, value: Optional[list[tuple[int, int]]]):
        if value is None:
            return value
        if len(value) < 3:
            raise ValueError(f"a polygon needs at least 3 [x, y] points, not {len(value)}")
        if polygon_area(value) < 1.0:
            raise ValueError("the polygon's points enclose no area (all on one line?)")
        return value

    @model_validator(mode="after")
    def _one_shape(self) -> "CameraRegion":
        given = [name for name in ("x", "y", "width", "height") if getattr(self, name) is not None]
        if self.polygon is not None and given:
            raise ValueError("give either x, y, width and height (a rectangle) or polygon, "
                             f"not both (found polygon and {', '.join(given)})")
        if self.polygon is None and len(given) < 4:
            missing = [name for name in ("x", "y", "width", "height") if name not in given]
            raise ValueError("a rectangle needs x, y, width and height (missing "
                             f"{', '.join(missing)}); or give polygon: [[x, y], ...]")
        return self

    def corners(self) -> list[tuple[int, int]]:
        """The region as a polygon: the rectangle's four corners, or the polygon's points."""
        if self.polygon is not None:
            return list(self.polygon)
        right, bottom = self.x + self.width, self.y + self.height
        return [(self.x, self.y), (right, self.y), (right, bottom), (self.x, bottom)]


def polygon_area(points: list[tuple[int, int]]) -> float:
    """The area a polygon encloses (shoelace formula), in square pixels."""
    twice = sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(points, points[1:] + points[:1]))
    return abs(twice) / 2.0


class CameraSource(_Section):
    """A camera or stream, read every `interval_seconds`."""

    name: str = Field(pattern=NAME_PATTERN, description="names the camera in messages and health")
    url: Union[int, str] = Field(
        description="device index (0), V4L2 path (/dev/video0), rtsp:// or http:// URL, or a "
                    "video file")
    interval_seconds: float = Field(1.0, ge=0, le=86400, description="time between frames read")
    change_threshold: float = Field(
        0.02, ge=0, le=1, description="frames whose mean grey-level change is below this "
                                      "fraction are skipped without OCR")
    heartbeat_seconds: float = Field(
        60.0, ge=1, le=86400, description="publish an unchanged text again after this long")
    open_timeout_seconds: float = Field(10.0, gt=0, le=300, description="give up opening after")
    read_timeout_seconds: float = Field(5.0, gt=0, le=300, description="give up a read after")
    reconnect_max_seconds: float = Field(
        60.0, ge=1, le=3600, description="longest wait between reconnects (back-off doubles)")
    loop: bool = Field(False, description="video files only: start again at the end")
    rtsp_transport: Literal["tcp", "udp"] = Field(
        "tcp", description="rtsp:// only: RTP over the RTSP connection (tcp) or over UDP")
    region: Optional[CameraRegion] = Field(
        None, description="read only this part of the frame: {x, y, width, height} or "
                          "{polygon: [[x, y], ...]}, full-frame pixels, clipped to the frame; "
                          "null = the whole frame")


class SourcesConfig(_Section):
    """Where images come from."""

    folders: list[FolderSource] = Field(default_factory=list, description="spool folders")
    cameras: list[CameraSource] = Field(default_factory=list, description="cameras and streams")


class SpoolConfig(_Section):
    """What happens to spool files after they are read."""

    after: Literal["delete", "move"] = Field(
        "delete", description="delete a file once its result is queued, or move it to done_dir")
    done_dir: Optional[Path] = Field(None, description="null = <state_dir>/done")
    failed_dir: Optional[Path] = Field(None, description="null = <state_dir>/failed")
    done_max_age_days: float = Field(7.0, gt=0, le=3650, description="older done files go")
    done_max_mb: float = Field(1024.0, gt=0, le=10**7, description="oldest done files go past this")
    reconcile_seconds: float = Field(
        30.0, ge=1, le=86400, description="full scan that catches events the kernel dropped")
    ignore_suffixes: list[str] = Field(
        [".tmp", ".part", ".partial", ".crdownload", ".download", ".swp", "~"],
        description="names ending so are partial downloads and are never taken; dot-files never")


class ResourcesConfig(_Section):
    """RAM budget and the frame queue."""

    memory_mb: Union[Literal["auto"], int] = Field(
        "auto", description="peak RSS the daemon stays inside (MB); the planner picks decode "
                            "reduction, detector side and batch to fit; 0 = no budget; auto = no "
                            "planner, but no image is decoded larger than half of this box's "
                            "memory (or its cgroup limit) allows")
    queue_size: int = Field(4, ge=1, le=1000, description="frames waiting for the worker")

    @field_validator("memory_mb")
    @classmethod
    def _budget_in_range(cls, value: Union[str, int]) -> Union[str, int]:
        if value != "auto" and not 0 <= value <= 65536:
            raise ValueError("should be auto, or a number of MB from 0 (no budget) to 65536")
        return value


class TlsConfig(_Section):
    """TLS to the broker. Relative paths are looked up in $CREDENTIALS_DIRECTORY when set."""

    ca_file: Optional[Path] = Field(None, description="CA bundle; null = the system's")
    cert_file: Optional[Path] = Field(None, description="client certificate (PEM)")
    key_file: Optional[Path] = Field(None, description="client key (PEM)")


class MqttConfig(_Section):
    """The broker the results go to."""

    host: str = Field("localhost", min_length=1, description="broker host name or address")
    port: int = Field(1883, ge=1, le=65535, description="broker port (8883 for TLS)")
    protocol: Literal["5", "3.1.1"] = Field(
        "5", description="MQTT version; 5 reports refusals in PUBACK, 3.1.1 cannot")
    client_id: Optional[str] = Field(None, description="null = edge-ocr-<device_id>")
    topic_prefix: str = Field("edge-ocr", pattern=r"^[A-Za-z0-9_/-]{1,128}$",
                              description="topics are <prefix>/<device_id>/...")
    username: Optional[str] = Field(None, description="user name, if the broker wants one")
    password_file: Optional[Path] = Field(
        None, description="file holding the password; relative = in $CREDENTIALS_DIRECTORY")
    tls: Optional[TlsConfig] = Field(None, description="null = plain TCP")
    keepalive_seconds: int = Field(30, ge=5, le=3600, description="MQTT keep-alive")
    inflight: int = Field(20, ge=1, le=1000, description="results awaiting PUBACK at once")

    @field_validator("protocol", mode="before")
    @classmethod
    def _protocol_as_text(cls, value: object) -> object:
        return str(value) if isinstance(value, (int, float)) else value


class OutboxConfig(_Section):
    """The on-disk queue between the worker and the broker."""

    path: Optional[Path] = Field(None, description="SQLite file; null = <state_dir>/outbox.db")
    max_mb: float = Field(256.0, gt=0, le=10**6, description="oldest messages dropped past this")
    max_age_hours: float = Field(168.0, gt=0, le=87600, description="older messages are dropped")


class HealthConfig(_Section):
    """The retained health message."""

    interval_seconds: float = Field(30.0, ge=1, le=3600, description="how often it is published")


class HomeAssistantConfig(_Section):
    """Home Assistant MQTT discovery: this box as one device with its sensors and buttons."""

    discovery: bool = Field(
        False, description="publish retained discovery configs; once turned off, the configs "
                           "published before are cleared at the next start")
    prefix: str = Field(
        "homeassistant", pattern=r"^[A-Za-z0-9_-]{1,64}(/[A-Za-z0-9_-]{1,64}){0,3}$",
        description="Home Assistant's discovery prefix (1-4 topic levels); its birth message "
                    "comes on <prefix>/status")


class HttpConfig(_Section):
    """The local status page: read-only, off unless `listen` is set."""

    listen: Optional[str] = Field(
        None, pattern=r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):[0-9]{1,5}$",
        description="host:port to serve it on, e.g. 127.0.0.1:8080 (this box only); null = off")
    recent: int = Field(5, ge=1, le=50, description="last results shown, each with its image")
    image_side: int = Field(640, ge=160, le=2048,
                            description="longest side of the copy kept of each shown image, px")
    refresh_seconds: int = Field(10, ge=0, le=3600,
                                 description="the page reloads itself this often; 0 = never")

    @field_validator("listen")
    @classmethod
    def _port_in_range(cls, value: Optional[str]) -> Optional[str]:
        if value is not None and not 1 <= int(value.rsplit(":", 1)[1]) <= 65535:
            raise ValueError("the port should be 1-65535")
        return value

    def address(self) -> tuple[str, int]:
        """`listen` as (host, port); brackets around an IPv6 address removed."""
        host, port = self.listen.rsplit(":", 1)
        return host.strip("[]"), int(port)


Level = Literal["debug", "info", "warning", "error"]


class LoggingConfig(_Section):
    """How much the daemon logs (to the journal under systemd, else stderr)."""

    level: Level = Field("info", description="level of edge-ocr's own loggers")
    modules: dict[str, Level] = Field(
        default_factory=dict, description="per-module levels, e.g. {edge.delivery.mqtt: debug}")


class PathsConfig(_Section):
    """Where the daemon keeps its state and its temporary files."""

    state_dir: Optional[Path] = Field(
        None, description="null = $STATE_DIRECTORY, else ~/.local/state/edge-ocr")
    runtime_dir: Optional[Path] = Field(
        None, description="private temp folder, emptied at start and after every frame; "
                          "null = $RUNTIME_DIRECTORY, else $XDG_RUNTIME_DIR/edge-ocr, else /tmp")


class EdgeConfig(_Section):
    """The whole configuration file."""

    device_id: str = Field("edge-ocr-1", pattern=NAME_PATTERN,
                           description="names this box in topics and messages")
    sources: SourcesConfig = SourcesConfig()
    ocr: OcrConfig = OcrConfig()
    images: ImagesConfig = ImagesConfig()
    resources: ResourcesConfig = ResourcesConfig()
    mqtt: MqttConfig = MqttConfig()
    outbox: OutboxConfig = OutboxConfig()
    spool: SpoolConfig = SpoolConfig()
    health: HealthConfig = HealthConfig()
    homeassistant: HomeAssistantConfig = HomeAssistantConfig()
    http: HttpConfig = HttpConfig()
    logging: LoggingConfig = LoggingConfig()
    paths: PathsConfig = PathsConfig()
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


def secret_path(path: Path) -> Path:
    """A secret's file: relative paths are looked up in $CREDENTIALS_DIRECTORY (systemd) if set."""
    if not path.is_absolute() and os.environ.get(ENV_CREDENTIALS):
        return Path(os.environ[ENV_CREDENTIALS]) / path
    return path


def read_secret(path: Path) -> str:
    """The first line of a secret file, without its line end."""
    resolved = secret_path(path)
    try:
        return resolved.read_text(encoding="utf-8").splitlines()[0] if resolved.stat().st_size else ""
    except OSError as exc:
        raise ConfigError(f"cannot read secret {resolved}: {exc.strerror}",
                          f"create it, or set ${ENV_CREDENTIALS}") from exc


def state_dir(config: EdgeConfig) -> Path:
    """Outbox, done and failed folders: the setting, $STATE_DIRECTORY, or ~/.local/state."""
    if config.paths.state_dir is not None:
        return config.paths.state_dir
    if os.environ.get("STATE_DIRECTORY"):
        return Path(os.environ["STATE_DIRECTORY"].split(":")[0])
    return Path.home() / ".local" / "state" / "edge-ocr"


def runtime_dir(config: EdgeConfig) -> Path:
    """The private temp folder: the setting, $RUNTIME_DIRECTORY, $XDG_RUNTIME_DIR, or /tmp."""
    if config.paths.runtime_dir is not None:
        return config.paths.runtime_dir
    if os.environ.get("RUNTIME_DIRECTORY"):
        return Path(os.environ["RUNTIME_DIRECTORY"].split(":")[0])
    if os.environ.get("XDG_RUNTIME_DIR"):
        return Path(os.environ["XDG_RUNTIME_DIR"]) / "edge-ocr"
    return Path("/tmp") / f"edge-ocr-{os.getuid()}"
