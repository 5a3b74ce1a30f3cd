"""The one error tree of edge-ocr.

Every error a user can meet is an `EdgeError`: it carries a stable machine-readable `code`, the
process exit code the CLI uses for it, and a `fix` that tells the user what to do next. Library
errors (onnxruntime, OpenCV, pip) are translated into these where that library is imported.
"""

from __future__ import annotations


class EdgeError(Exception):
    """Base class: a failure with a code, an exit status and a fix-it hint."""

    code = "edge_error"
    exit_code = 1

    def __init__(self, message: str, fix: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix

    def __str__(self) -> str:
        return f"{self.message} ({self.fix})" if self.fix else self.message


class ConfigError(EdgeError):
    """The configuration file or a command-line option is invalid."""

    code = "config_invalid"
    exit_code = 78  # EX_CONFIG


class ModelError(EdgeError):
    """A model pack is missing, damaged, or cannot be loaded."""

    code = "model_error"
    exit_code = 3


class ModelMissingError(ModelError):
    """A pack or variant is not in the model directory."""

    code = "model_missing"


class ModelHashError(ModelError):
    """A downloaded wheel or an extracted file does not match its pinned sha256."""

    code = "model_hash_mismatch"


class FetchError(ModelError):
    """The registry could not be reached or refused the download."""

    code = "model_fetch_failed"


class ImageError(EdgeError):
    """An input image cannot be read. Per image: the others go on."""

    code = "image_error"
    exit_code = 4


class ImageUnreadableError(ImageError):
    """Empty, truncated, or not an image at all."""

    code = "image_unreadable"


class ImageTooLargeError(ImageError):
    """The header claims more pixels than the configured limit (a decompression bomb)."""

    code = "image_too_large"


class InferenceError(EdgeError):
    """ONNX Runtime failed while running a model."""

    code = "inference_failed"
    exit_code = 5


class OutboxError(EdgeError):
    """The outbox file cannot be opened or written (disk full, permissions, corruption)."""

    code = "outbox_failed"
    exit_code = 74  # EX_IOERR


class DiskFullError(OutboxError):
    """The outbox's file system is full: nothing more can be stored until space returns."""

    code = "disk_full"


class DrawingError(EdgeError):
    """An annotated copy (`--draw DIR`) cannot be written."""

    code = "draw_failed"
    exit_code = 74  # EX_IOERR


class BrokerError(EdgeError):
    """The MQTT settings cannot be used (TLS files, client options)."""

    code = "broker_config"
    exit_code = 78


class BrokerUnreachableError(EdgeError):
    """The broker cannot be reached or refused the connection (`edge-ocr status`)."""

    code = "broker_unreachable"
    exit_code = 69  # EX_UNAVAILABLE


class PeerError(EdgeError):
    """The benchmark's peer cannot be installed or failed while reading."""

    code = "peer_failed"
    exit_code = 69  # EX_UNAVAILABLE


class SpoolError(EdgeError):
    """A spool file is refused before decoding: a link, a FIFO, a device, too big, gone."""

    code = "spool_refused"
    exit_code = 4


class CameraError(EdgeError):
    """A camera cannot be opened or stopped delivering frames."""

    code = "camera_failed"
    exit_code = 6


class CommandError(EdgeError):
    """An MQTT command is malformed or unknown."""

    code = "bad_command"
    exit_code = 2


class InternalError(EdgeError):
    """A bug: an unexpected exception while handling one frame (the daemon goes on)."""

    code = "internal_error"
    exit_code = 70
