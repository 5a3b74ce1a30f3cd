"""The only importer of onnxruntime: session options, providers, and error translation.

Options are set explicitly rather than left to defaults: the CPU memory arena is off because it
never returns memory and grows with every new input shape; memory patterns are off because one is
cached per input shape (measured: peak RSS over 100 receipts 353 MB with them, 286 MB without, at
the same speed); thread counts come from settings so a daemon sharing a box does not take every
core; and idle worker threads block instead of spinning. The engine runs three sessions one after
another, each with its own thread pool, and each pool's threads spun on after its run, taking the
cores from the next session and from the Python work between them. Measured in one process on
an AMD EPYC (Zen 5, 2 cores; small pack, medians per image, spinning against not): 40 street
scenes 126 against 72 ms, 40 camera frames 55 against 45 ms, 100 receipts 350 against 332 ms.
Idle, the process also no longer spends CPU after each frame: 32-35 ms of it in the half second
after a page with spinning, 0.1 ms without.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from edge.errors import ConfigError, InferenceError, ModelError

ort.set_default_logger_severity(3)

_CUDA = "CUDAExecutionProvider"
_CPU = "CPUExecutionProvider"


@dataclass(frozen=True)
class SessionSettings:
    """How every model session of one pipeline is created."""

    device: str = "cpu"  # cpu | cuda | auto
    threads: int = 2


def cuda_available() -> bool:
    """True when this onnxruntime build can run on an NVIDIA GPU."""
    return _CUDA in ort.get_available_providers()


def resolve_device(device: str) -> str:
    """Turn `auto` into `cuda` or `cpu`; refuse `cuda` where this build has no CUDA provider."""
    if device == "auto":
        return "cuda" if cuda_available() else "cpu"
    if device == "cuda" and not cuda_available():
        raise ConfigError("device 'cuda' asked for, but onnxruntime has no CUDA provider here",
                          "install onnxruntime-gpu, or set ocr.device to cpu or auto")
    return device


class ModelSession:
    """One loaded ONNX model with a single input, run on numpy arrays."""

    def __init__(self, path: Path, settings: SessionSettings, model: bytes | None = None) -> None:
        """Load `path`, or the serialized `model` when given (`path` then names it in errors)."""
        self.path = path
        self._session = _load(model if model is not None else str(path), settings, path)
        self._input = self._session.get_inputs()[0].name
        self.metadata = dict(self._session.get_modelmeta().custom_metadata_map)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """Run the model on one input tensor and return its first output."""
        return self.outputs(batch)[0]

    def outputs(self, batch: np.ndarray, more: dict[str, np.ndarray] | None = None
                ) -> list[np.ndarray]:
        """Run the model on one input tensor (and the named inputs in `more`, for a model that
        takes several) and return every output, in the model's order."""
        try:
            return self._session.run(None, {self._input: batch, **(more or {})})
        except (ort.capi.onnxruntime_pybind11_state.Fail,
                ort.capi.onnxruntime_pybind11_state.RuntimeException,
                ort.capi.onnxruntime_pybind11_state.InvalidArgument) as exc:
            raise InferenceError(f"{self.path.name} failed on input {batch.shape}: {exc}") from exc

    @property
    def providers(self) -> list[str]:
        """The execution providers this session actually uses, best first."""
        return self._session.get_providers()


def calibration_session(path: Path) -> ort.InferenceSession:
    """A CPU session for quantization's calibration model: no graph optimization (every tensor
    it reads must stay as named), run in priority-based order, which frees each tensor once its
    readers have run instead of holding most of them to the end of the run."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.execution_order = ort.ExecutionOrder.PRIORITY_BASED
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=[_CPU])
    except Exception as exc:  # onnxruntime raises several unrelated pybind types here
        raise ModelError(f"cannot load calibration model {path}: {exc}",
                         "run 'edge-ocr models pull' to fetch the pack again") from exc


def _load(source: str | bytes, settings: SessionSettings, path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.enable_cpu_mem_arena = False
    options.enable_mem_pattern = False
    options.intra_op_num_threads = settings.threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    providers = [_CUDA, _CPU] if resolve_device(settings.device) == "cuda" else [_CPU]
    try:
        return ort.InferenceSession(source, sess_options=options, providers=providers)
    except Exception as exc:  # onnxruntime raises several unrelated pybind types here
        raise ModelError(f"cannot load model {path}: {exc}",
                         "run 'edge-ocr models pull' to fetch the pack again") from exc
