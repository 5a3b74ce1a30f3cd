"""The process's malloc: the batch commands run under tcmalloc (installed by the set-up), and
freed heap goes back to the kernel when asked."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import run_cli


def test_batch_commands_run_under_tcmalloc_unless_told_not_to(page_files, store):
    folder, _ = page_files
    args = ("bench", str(folder), "--pack", "ppocr-v6-tiny")
    assert "(malloc: tcmalloc)" in run_cli(*args).stdout
    assert "(malloc: glibc)" in run_cli(*args, env={"EDGE_OCR_MALLOC": "system"}).stdout


def test_release_free_memory_hands_tcmallocs_free_pages_back():
    code = (
        "import numpy as np\n"
        "from edge.daemon import allocator, budget\n"
        "assert allocator.active() == 'tcmalloc'\n"
        "blocks = [np.ones(256 * 1024, np.uint8) for _ in range(800)]  # 200 MB, touched\n"
        "del blocks\n"
        "before = budget.read_memory().rss_mb\n"
        "allocator.release_free_memory()\n"
        "print(before - budget.read_memory().rss_mb)\n")
    env = dict(os.environ, LD_PRELOAD="libtcmalloc_minimal.so.4")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          check=True)
    assert float(done.stdout) > 100
