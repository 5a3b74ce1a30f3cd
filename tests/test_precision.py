"""`precision: auto` chooses by a measurement taken on the box; doctor shows the CPU and choice."""

from __future__ import annotations

import json
import shutil

from conftest import run_cli
from edge.cli.doctor import check_cpu, check_precision
from edge.config import EdgeConfig, parse_config
from edge.models.choice import BOUND, Measurement, applies, pick, this_machine
from edge.models.cpu import CpuInfo, cpu_info
from edge.models.quantize import RECIPES
from edge.models.store import ModelStore

PI4_HWCAP = 0b1000_1000_0111  # fp asimd evtstrm crc32 cpuid: Cortex-A72
PI5_HWCAP = PI4_HWCAP | 1 << 9 | 1 << 10 | 1 << 20 | 1 << 8  # + fphp asimdhp asimddp atomics


def measured(int8_det: float, pixels: float = 1.0, lines: float = 1.0,
             machine: dict | None = None) -> Measurement:
    variants = {"fp32": {"recipe": 1, "det_ms": 100.0, "rec_ms": 50.0},
                "int8": {"recipe": RECIPES["int8"], "det_ms": int8_det, "rec_ms": 50.0,
                         "det_pixels": pixels, "lines_text": lines}}
    return Measurement("ppocr-v6-tiny", machine or {}, variants, dict(BOUND), {})


def test_pick_takes_the_faster_variant_only_within_the_agreement_bound():
    assert pick(measured(40.0), {"fp32", "int8"}) == "int8"
    assert pick(measured(120.0), {"fp32", "int8"}) == "fp32"  # int8 slower here
    assert pick(measured(95.0), {"fp32", "int8"}) == "fp32"  # 1.03x: under min_gain
    assert pick(measured(40.0, pixels=0.95), {"fp32", "int8"}) == "fp32"
    assert pick(measured(40.0, lines=0.5), {"fp32", "int8"}) == "fp32"
    assert pick(measured(40.0), {"fp32"}) == "fp32"  # not built


def test_a_measurement_counts_only_on_its_machine_and_its_variants():
    here = {"arch": "aarch64", "model": "", "cores": 4, "features": ["asimd"], "onnxruntime": "1"}
    record = measured(40.0, machine=here)
    current = {"fp32": 1, "int8": RECIPES["int8"]}
    assert applies(record, current, here) == ""
    assert applies(record, current, {**here, "cores": 2}) == "measured on another machine"
    assert applies(record, {**current, "int8": RECIPES["int8"] + 1}, here) == \
        "the int8 variant was rebuilt since"


def write_record(folder, pack: str, int8_det: float, machine: dict) -> None:
    record = measured(int8_det, machine=machine)
    (folder / pack / "measurement.json").write_text(json.dumps(
        {"schema": 1, "pack": pack, "machine": machine, "variants": record.variants,
         "bound": record.bound, "choice": "recorded"}))


def copy_pack(store: ModelStore, folder, pack: str = "ppocr-v6-tiny") -> ModelStore:
    for variant in ("fp32", "int8"):
        shutil.copytree(store.pack_dir(pack) / variant, folder / pack / variant)
    return ModelStore(folder)


def test_auto_follows_the_recorded_measurement_of_this_machine(store, tmp_path):
    copy = copy_pack(store, tmp_path)
    write_record(tmp_path, "ppocr-v6-tiny", 120.0, this_machine())
    assert copy.auto_precision("ppocr-v6-tiny", "cpu") == ("fp32", "measured on this machine")
    assert copy.choose("ppocr-v6-tiny", "auto", "cpu").precision == "fp32"
    assert copy.choose("ppocr-v6-tiny", "int8", "cpu").precision == "int8"  # set, not auto
    write_record(tmp_path, "ppocr-v6-tiny", 40.0, this_machine())
    assert copy.choose("ppocr-v6-tiny", "auto", "cpu").precision == "int8"
    write_record(tmp_path, "ppocr-v6-tiny", 120.0, {**this_machine(), "arch": "elsewhere"})
    assert copy.auto_precision("ppocr-v6-tiny", "cpu") == \
        ("int8", "default (measured on another machine)")


def test_models_measure_records_timings_and_agreement_and_doctor_shows_them(store, tmp_path):
    copy_pack(store, tmp_path)
    done = run_cli("models", "measure", "ppocr-v6-tiny", env={"EDGE_OCR_MODEL_DIR": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    record = json.loads((tmp_path / "ppocr-v6-tiny" / "measurement.json").read_text())
    assert record["machine"] == this_machine() and record["bound"] == BOUND
    assert set(record["variants"]) == {"fp32", "int8"}
    assert all(v["det_ms"] > 0 and v["rec_ms"] > 0 for v in record["variants"].values())
    assert 0.9 <= record["variants"]["int8"]["det_pixels"] <= 1.0
    assert record["choice"] in ("fp32", "int8")
    assert f"precision auto runs {record['choice']}" in done.stdout
    config = parse_config({"models": {"dir": str(tmp_path)}, "ocr": {"pack": "ppocr-v6-tiny"}},
                          source="test")
    finding = check_precision(config)
    assert finding.level == "ok" and finding.seen.startswith(
        f"ppocr-v6-tiny {record['choice']} on cpu, auto: measured on this machine; fp32 det ")


def test_cpu_features_of_arm64_come_from_the_hardware_capabilities(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nFeatures\t: fp asimd\nCPU part\t: 0xd08\n"
                       "Model\t\t: Raspberry Pi 4 Model B Rev 1.4\n")
    pi4 = cpu_info(cpuinfo, (PI4_HWCAP, 0), "aarch64")
    assert pi4.features == ("asimd",) and pi4.model == "Raspberry Pi 4 Model B Rev 1.4"
    pi5 = cpu_info(cpuinfo, (PI5_HWCAP, 0), "aarch64")
    assert pi5.features == ("asimd", "asimddp", "asimdhp")
    assert cpu_info(cpuinfo, (PI5_HWCAP, 1 << 13), "aarch64").has("i8mm")
    assert cpu_info(cpuinfo, (0, 0), "aarch64").features == ("asimd",)  # from /proc/cpuinfo


def test_doctor_names_neon_and_dot_product_and_warns_without_it():
    pi5 = CpuInfo("aarch64", "", 4, ("asimd", "asimddp", "asimdhp"))
    finding = check_cpu(EdgeConfig(), pi5)
    assert finding.level == "ok"
    assert finding.seen == ("aarch64, 4 cores: NEON (asimd), dot product (asimddp), "
                            "fp16 arithmetic (asimdhp): int8 runs on the dot-product instructions")
    pi4 = check_cpu(EdgeConfig(), CpuInfo("aarch64", "", 4, ("asimd",)))
    assert pi4.level == "warn" and "no dot product" in pi4.seen
    assert pi4.fix.startswith("edge-ocr models measure ppocr-v6-small")
    assert check_cpu(EdgeConfig(), CpuInfo("aarch64", "", 4, ())).level == "fail"
