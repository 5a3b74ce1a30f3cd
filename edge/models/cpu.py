"""What this CPU is and which of its features decide how fast the int8 and fp32 models run.

On arm64 the features come from the kernel's hardware capability words (`getauxval`), which are
what the process may really use (and what an emulator reports for the CPU it emulates);
/proc/cpuinfo's `Features` line is the fallback. On x86 they come from /proc/cpuinfo's `flags`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
from dataclasses import dataclass
from pathlib import Path

AT_HWCAP, AT_HWCAP2 = 16, 26
# Bits of AT_HWCAP / AT_HWCAP2 on arm64 (linux/arch/arm64/include/uapi/asm/hwcap.h), named as
# /proc/cpuinfo names them.
ARM64_HWCAP = {0: "fp", 1: "asimd", 9: "fphp", 10: "asimdhp", 20: "asimddp", 22: "sve"}
ARM64_HWCAP2 = {1: "sve2", 13: "i8mm", 14: "bf16"}
# The features that matter to the engine, in the order they are reported, with their meaning.
ARM64_NOTABLE = {"asimd": "NEON", "asimddp": "dot product", "i8mm": "int8 matrix multiply",
                 "asimdhp": "fp16 arithmetic", "bf16": "bfloat16", "sve": "SVE", "sve2": "SVE2"}
X86_NOTABLE = {"avx2": "AVX2", "fma": "FMA", "avx512f": "AVX-512", "avx512_vnni": "AVX-512 VNNI",
               "avx_vnni": "AVX-VNNI", "avx512_bf16": "AVX-512 BF16", "amx_int8": "AMX int8"}


@dataclass(frozen=True)
class CpuInfo:
    """This machine's architecture, CPU model, core count and notable features."""

    arch: str
    model: str
    cores: int
    features: tuple[str, ...]

    @property
    def is_arm64(self) -> bool:
        """True on 64-bit Arm (aarch64)."""
        return self.arch in ("aarch64", "arm64")

    def has(self, feature: str) -> bool:
        """Whether the CPU has a feature, by its /proc/cpuinfo name (e.g. `asimddp`)."""
        return feature in self.features

    def described(self) -> str:
        """The notable features by name, e.g. `NEON (asimd), dot product (asimddp)`."""
        notable = ARM64_NOTABLE if self.is_arm64 else X86_NOTABLE
        return ", ".join(f"{label} ({name})" for name, label in notable.items()
                         if name in self.features) or "none of note"

    def fingerprint(self) -> dict:
        """What identifies this machine for a speed measurement."""
        return {"arch": self.arch, "model": self.model, "cores": self.cores,
                "features": list(self.features)}


def cpu_info(cpuinfo: Path = Path("/proc/cpuinfo"), hwcaps: tuple[int, int] | None = None,
             arch: str | None = None) -> CpuInfo:
    """This machine's CPU (`cpuinfo`, `hwcaps` and `arch` may be given, for tests)."""
    arch = arch or platform.machine()
    fields = _cpuinfo_fields(cpuinfo)
    if arch in ("aarch64", "arm64"):
        words = hwcaps if hwcaps is not None else _hwcaps()
        features = _arm64_features(*words) if words != (0, 0) else \
            set(fields.get("features", "").split())
        notable = ARM64_NOTABLE
        model = _arm64_model(fields)
    else:
        features = set(fields.get("flags", "").split())
        notable = X86_NOTABLE
        model = fields.get("model name", "")
    return CpuInfo(arch, model, os.cpu_count() or 1,
                   tuple(name for name in notable if name in features))


def _arm64_features(hwcap: int, hwcap2: int) -> set[str]:
    found = {name for bit, name in ARM64_HWCAP.items() if hwcap >> bit & 1}
    return found | {name for bit, name in ARM64_HWCAP2.items() if hwcap2 >> bit & 1}


def _hwcaps() -> tuple[int, int]:
    """AT_HWCAP and AT_HWCAP2 from the C library; (0, 0) where they cannot be read."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        getauxval = libc.getauxval
    except (OSError, AttributeError):
        return 0, 0
    getauxval.restype = ctypes.c_ulong
    getauxval.argtypes = [ctypes.c_ulong]
    return int(getauxval(AT_HWCAP)), int(getauxval(AT_HWCAP2))


def _cpuinfo_fields(cpuinfo: Path) -> dict[str, str]:
    """The first value of each key in /proc/cpuinfo, keys lower-cased."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip().lower(), value.strip())
    return fields


def _arm64_model(fields: dict[str, str]) -> str:
    """`Model` (Raspberry Pi kernels name the board there), else the CPU part number."""
    if fields.get("model", "").strip() and not fields["model"].isdigit():
        return fields["model"]
    part = fields.get("cpu part")
    return f"arm cpu part {part}" if part else ""
