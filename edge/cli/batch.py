"""Run the engine over files and folders: the shared loop of `ocr`, `bench` and `eval`."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, Iterator, Optional, Protocol, Sequence

from edge.errors import ConfigError, EdgeError, ImageError, ImageUnreadableError
from edge.frames import DecodedImage, OcrResult
from edge.models.calibration import IMAGE_SUFFIXES


class Engine(Protocol):
    """What the runner needs: decode within the limits (and the RAM plan), read, tidy up."""

    def decode(self, raw: bytes) -> DecodedImage: ...

    def __call__(self, image: DecodedImage) -> OcrResult: ...

    def after_frame(self) -> object: ...


@dataclass(frozen=True)
class ImageOutcome:
    """One input file: its result (and the image it was read from) or the error that stopped
    it, and the seconds it took."""

    path: Path
    seconds: float
    result: Optional[OcrResult] = None
    error: Optional[EdgeError] = None
    image: Optional[DecodedImage] = None


def collect_images(paths: Sequence[Path]) -> list[Path]:
    """Files as given, folders expanded to their images (not recursive), in name order."""
    found = []
    for path in paths:
        if path.is_dir():
            found += sorted(p for p in path.iterdir()
                            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.exists():
            found.append(path)
        else:
            raise ConfigError(f"{path} does not exist")
    if not found:
        raise ImageError(f"no images in {', '.join(map(str, paths))}",
                         f"images end in {', '.join(sorted(IMAGE_SUFFIXES))}")
    return found


class BatchRunner:
    """Decodes and reads each file in turn; a bad file becomes an outcome, never an exception."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def __call__(self, files: Iterable[Path]) -> Iterator[ImageOutcome]:
        """Yield one outcome per file, in order."""
        for path in files:
            yield self.read(path)

    def read(self, path: Path) -> ImageOutcome:
        """Decode and read one file; `seconds` covers decode to result."""
        started = time.perf_counter()
        try:
            image = self._engine.decode(_read(path))
            decoded = time.perf_counter()
            result = self._engine(image)
        except EdgeError as exc:
            return ImageOutcome(path, time.perf_counter() - started, error=exc)
        finally:
            self._engine.after_frame()
        finished = time.perf_counter()
        timings = {"decode": round((decoded - started) * 1000.0, 2), **result.timings_ms,
                   "total": round((finished - started) * 1000.0, 2)}
        return ImageOutcome(path, finished - started, replace(result, timings_ms=timings),
                            image=image)

    def warm_up(self, image: DecodedImage) -> None:
        """Run once so the first real image does not pay for lazy initialisation."""
        self._engine(image)
        self._engine.after_frame()


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ImageUnreadableError(f"cannot read {path}: {exc.strerror or exc}") from exc
