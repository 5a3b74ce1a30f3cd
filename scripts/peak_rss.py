#!/usr/bin/env python3
"""Run a command and print its peak resident set size (the largest of its process tree), in MB.

usage: scripts/peak_rss.py COMMAND [ARG...]   (the command's stdout is discarded)
"""
import resource
import subprocess
import sys
import time

started = time.perf_counter()
status = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode
seconds = time.perf_counter() - started
peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
print(f"peak_rss_mb={peak_mb:.0f} seconds={seconds:.1f} status={status}")
sys.exit(status)
