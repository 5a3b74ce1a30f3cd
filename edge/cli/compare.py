"""`edge-ocr bench --against PEER FOLDER...`: this engine and another, side by side.

Both run as child processes over the same images, on the same machine, in turns: each round
runs every folder once with each system, and the order of the systems flips from one round to the
next, so a machine that slows down or speeds up during the run weighs on both alike. Each system
prints one JSON line per image (`edge-ocr ocr --format jsonl`; the peer's runner prints the same)
with the seconds from decode to result, measured in its own process. Per folder the table gives
the median over the images of each image's fastest round, the ratio of the two, the peak RSS
of each whole process (from the kernel, at exit), and, where ground truth is given, words F1
computed the way `edge-ocr eval` does.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Callable, Optional, Sequence

from edge import __version__
from edge.cli.batch import collect_images
from edge.cli.evaluate import Tally, find_ground_truth, read_ground_truth
from edge.cli.peers import PEERS, peer_command
from edge.config import EdgeConfig
from edge.errors import ConfigError, PeerError
from edge.frames import OcrResult, TextLine


@dataclass(frozen=True)
class System:
    """A system under test: its name in the table and its command (image files are appended)."""

    name: str
    command: tuple[str, ...]


@dataclass(frozen=True)
class Run:
    """One system over one folder, once."""

    seconds: dict[str, float]
    lines: dict[str, list[dict]]
    peak_rss_mb: float


@dataclass(frozen=True)
class Row:
    """One folder's figures, per system (in the order the systems were given)."""

    folder: str
    images: int
    median_s: tuple[float, ...]
    words_f1: tuple[Optional[float], ...]
    scored: int
    peak_rss_mb: tuple[float, ...]


def bench_against(args: argparse.Namespace, config: EdgeConfig) -> int:
    """Run the comparison the command line asks for and print its table."""
    if args.rounds < 1:
        raise ConfigError("--rounds must be at least 1")
    folders = [(_label(path), collect_images([path])) for path in _folders(args.paths)]
    systems = [System("edge-ocr", _own_command(args)), _peer(args, config)]
    rows = compare(systems, folders, args.rounds, args.gt or [], _progress)
    print(describe_run(systems, args, config))
    print()
    print(format_table(systems, rows))
    return 0


def compare(systems: Sequence[System], folders: Sequence[tuple[str, list[Path]]], rounds: int,
            truth: Sequence[Path], progress: Callable[[str], None]) -> list[Row]:
    """Run every system over every folder `rounds` times, in turns; one row per folder."""
    runs: dict[tuple[int, int], list[Run]] = {}
    for round_no in range(rounds):
        order = list(enumerate(systems))
        if round_no % 2:
            order.reverse()
        for index, (label, files) in enumerate(folders):
            for which, system in order:
                run = run_once(system, files)
                runs.setdefault((index, which), []).append(run)
                progress(f"round {round_no + 1}/{rounds} · {label} · {system.name}: "
                         f"{_median(run.seconds.values()):.3f} s per image")
    return [_row(label, files, [runs[(index, which)] for which in range(len(systems))], truth)
            for index, (label, files) in enumerate(folders)]


def run_once(system: System, files: Sequence[Path]) -> Run:
    """Run one system over the files; its peak RSS comes from the kernel when it exits."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        process = subprocess.Popen([*system.command, *map(str, files)], stdout=out, stderr=err)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        records = [json.loads(line) for line in out.read().decode().splitlines() if line.strip()]
        err.seek(0)
        problem = err.read().decode(errors="replace").strip().splitlines()[-3:]
    by_name = {record["image"]: record for record in records}
    missing = [path.name for path in files if path.name not in by_name]
    if missing:
        raise PeerError(f"{system.name} exited {process.returncode} without reading "
                        f"{len(missing)} of {len(files)} images ({missing[0]}, ...): "
                        + " / ".join(problem))
    return Run({name: float(r["seconds"]) for name, r in by_name.items()},
               {name: r.get("lines", []) for name, r in by_name.items()},
               usage.ru_maxrss / 1024.0)


def describe_run(systems: Sequence[System], args: argparse.Namespace, config: EdgeConfig) -> str:
    """What ran, and where: the lines that go above the table."""
    ocr = config.ocr
    settings = (f"config {args.config or 'defaults'}: {ocr.pack}, precision {ocr.precision}, "
                f"charset {ocr.charset}, {ocr.threads} threads")
    rounds = f"{args.rounds} round{'s' if args.rounds > 1 else ''}"
    return (f"{' vs '.join(s.name for s in systems)}, {rounds} in turns; CPU: "
            f"{machine()}; onnxruntime {metadata.version('onnxruntime')}; edge-ocr "
            f"{__version__}, {settings}.")


def format_table(systems: Sequence[System], rows: Sequence[Row]) -> str:
    """A Markdown table: seconds per image, the ratio, words F1 and peak RSS per system."""
    mine, peer = systems[0].name, systems[1].name
    head = ["folder", "images", f"{mine} s/image", f"{peer} s/image", "speed-up",
            f"{mine} words F1", f"{peer} words F1", f"{mine} peak RSS", f"{peer} peak RSS"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row.folder, str(row.images), f"{row.median_s[0]:.3f}", f"{row.median_s[1]:.3f}",
                 f"{row.median_s[1] / row.median_s[0]:.2f}x",
                 *(_f1(value, row) for value in row.words_f1[:2]),
                 *(f"{mb:.0f} MB" for mb in row.peak_rss_mb[:2])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def machine() -> str:
    """This CPU in words: model, family and model numbers, cores, the int8 extension."""
    info: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
    except OSError:
        return f"{os.cpu_count()} cores"
    flags = info.get("flags", "").split()
    parts = [info.get("model name", "unknown CPU")]
    if "cpu family" in info:
        parts[0] += f" (family {info['cpu family']} model {info.get('model', '?')})"
    parts.append(f"{os.cpu_count()} cores")
    if "avx512_vnni" in flags:
        parts.append("AVX-512 VNNI")
    elif "avx_vnni" in flags:
        parts.append("AVX-VNNI")
    if "hypervisor" in flags:
        parts.append("virtual machine")
    return ", ".join(parts)


def _row(label: str, files: list[Path], runs: list[list[Run]], truth: Sequence[Path]) -> Row:
    medians = tuple(_median(min(run.seconds[p.name] for run in system) for p in files)
                    for system in runs)
    scored = [(p.name, gt) for p in files
              if (gt := next((g for d in truth if (g := find_ground_truth(d, p.name))), None))]
    f1 = tuple(_words_f1(system[0], scored) for system in runs)
    return Row(label, len(files), medians, f1, len(scored),
               tuple(max(run.peak_rss_mb for run in system) for system in runs))


def _words_f1(run: Run, scored: list[tuple[str, Path]]) -> Optional[float]:
    """Words F1 over the images with ground truth; an image it could not read counts as empty."""
    if not scored:
        return None
    tally = Tally()
    for name, truth in scored:
        lines = tuple(TextLine(tuple(tuple(point) for point in line["box"]), line["text"],
                               float(line.get("score", 1.0))) for line in run.lines[name])
        tally.add(OcrResult(0, 0, lines), read_ground_truth(truth))
    return tally.scores()["words_F1"]


def _f1(value: Optional[float], row: Row) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if row.scored == row.images else f"{value:.4f} ({row.scored} images)"


def _median(values) -> float:
    return statistics.median(list(values))


def _own_command(args: argparse.Namespace) -> tuple[str, ...]:
    """`edge-ocr ocr --format jsonl` with the engine options given to `bench`."""
    command = [sys.executable, "-m", "edge", "ocr", "--format", "jsonl"]
    for option in ("config", "pack", "precision", "device", "threads", "memory_mb"):
        value = getattr(args, option, None)
        if value is not None:
            command += [f"--{option.replace('_', '-')}", str(value)]
    return tuple(command)


def _peer(args: argparse.Namespace, config: EdgeConfig) -> System:
    if args.peer_command:
        command = tuple(shlex.split(args.peer_command))
        if not command:
            raise ConfigError("--peer-command is empty")
        return System(args.peer_name or Path(command[0]).name, command)
    spec = PEERS[args.against]
    return System(args.peer_name or spec.name, tuple(peer_command(spec, config.ocr.threads)))


def _folders(paths: Sequence[Path]) -> list[Path]:
    not_folders = [str(path) for path in paths if not path.is_dir()]
    if not_folders:
        raise ConfigError(f"bench --against takes folders: {', '.join(not_folders)} is not one",
                          "each folder is one row of the table")
    return list(paths)


def _label(path: Path) -> str:
    """The folder's name; with its parent's when it is called `images`."""
    path = path.resolve()
    return f"{path.parent.name}/{path.name}" if path.name == "images" else path.name


def _progress(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)
