"""The process's malloc: tcmalloc for the batch commands where it is installed, glibc's otherwise.

ONNX Runtime, with its memory arena off, mallocs and frees every tensor of every run. glibc's
malloc keeps the freed blocks as a fragmented heap: the peak RSS of `edge-ocr ocr` over 100
receipts (small pack, images decoded to 4096 px) came out anywhere between 295 and 352 MB from run
to run (eight runs), and 270-301 MB under tcmalloc (19 runs), with a quarter of the page faults
and medians within 6% of glibc's either way. The glibc settings that hand the memory back doubled
the time instead.

The daemon keeps glibc's malloc. Under a RAM budget it hands the heap back after every frame,
and at rest glibc then holds less than tcmalloc does: the tiny pack's measured base was 122.6 MB
under glibc and 131.5 MB under tcmalloc, and with 160 MB the daemon then refused the A4 scans and
photos it could no longer afford to decode.

A malloc must be in place before the interpreter's first allocation, so the console script
re-executes itself once with the library in LD_PRELOAD. `EDGE_OCR_MALLOC=system` keeps glibc's.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys
from typing import Callable, Optional

TCMALLOC = "libtcmalloc_minimal.so.4"
_SWITCH = "EDGE_OCR_MALLOC"  # tcmalloc (default) | system


def preload_tcmalloc() -> None:
    """Re-execute this command under tcmalloc, when it is installed and not yet in use; return
    (and go on with glibc's malloc) in every other case."""
    if os.environ.get(_SWITCH, "tcmalloc") == "system" or active() != "glibc":
        return
    preload = os.environ.get("LD_PRELOAD", "")
    if TCMALLOC in preload or ctypes.util.find_library("tcmalloc_minimal") is None:
        return  # asked for once already, or not installed
    env = dict(os.environ, LD_PRELOAD=f"{TCMALLOC} {preload}".strip())
    try:
        os.execve(sys.executable, [sys.executable, "-m", "edge", *sys.argv[1:]], env)
    except OSError:
        return


def active() -> str:
    """`tcmalloc` or `glibc`: the malloc this process runs on."""
    return "tcmalloc" if _tcmalloc() is not None else "glibc"


def release_free_memory() -> None:
    """Hand the heap's free pages back to the kernel (both mallocs keep them otherwise)."""
    release = _releaser()
    if release is not None:
        release()


@functools.cache
def _releaser() -> Optional[Callable[[], object]]:
    """The running malloc's call that returns free pages, looked up once (it cannot change)."""
    lib = _tcmalloc()
    try:
        if lib is not None:
            return lib.MallocExtension_ReleaseFreeMemory
        return functools.partial(ctypes.CDLL("libc.so.6").malloc_trim, 0)
    except (OSError, AttributeError):
        return None


def _tcmalloc() -> Optional[ctypes.CDLL]:
    """The loaded tcmalloc, or None; never loads it (a malloc swapped mid-process crashes)."""
    try:
        return ctypes.CDLL(TCMALLOC, mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
    except OSError:
        return None
