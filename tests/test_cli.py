"""`edge-ocr` as a user runs it: output formats, the jsonl contract, errors and exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import png_header, run_cli
from edge.config import load_config, parse_config, read_secret
from edge.errors import ConfigError

JSONL_KEYS = {"image", "seconds", "lines"}


def test_jsonl_holds_the_contract_for_every_image(page_files, store):
    folder, pages = page_files
    done = run_cli("ocr", str(folder), "--format", "jsonl")
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["image"] for r in records] == sorted(pages)
    for record in records:
        assert JSONL_KEYS <= set(record)
        assert isinstance(record["seconds"], float) and record["seconds"] > 0
        for line in record["lines"]:
            assert len(line["box"]) == 4 and all(len(p) == 2 for p in line["box"])
            assert all(isinstance(v, float) for p in line["box"] for v in p)
            assert isinstance(line["text"], str) and isinstance(line["score"], float)
        expected = {g.text for g in pages[record["image"]].lines}
        got = {line["text"] for line in record["lines"]}
        assert len(expected & got) >= len(expected) - 1


def test_text_format_prints_a_header_per_image(page_files, store):
    folder, pages = page_files
    done = run_cli("ocr", str(folder))
    assert done.returncode == 0, done.stderr
    for name in pages:
        assert f"== {name} ==" in done.stdout
    assert pages["page8.png"].lines[0].text in done.stdout


def test_json_format_is_one_array(page_files, store):
    folder, pages = page_files
    done = run_cli("ocr", str(folder / "page8.png"), "--format", "json", "--pack", "ppocr-v6-tiny")
    records = json.loads(done.stdout)
    assert len(records) == 1 and records[0]["image"] == "page8.png"


def test_bad_files_are_reported_and_the_others_still_read(page_files, store):
    folder, _ = page_files
    bad = {"empty.jpg": (b"", "image_unreadable", "empty"),
           "notes.jpg": (b"not a picture\n", "image_unreadable", "not a supported image"),
           "cut.jpg": ((folder / "page7.jpg").read_bytes()[:3000], "image_unreadable", "truncated"),
           "huge.png": (png_header(60000, 60000) + bytes(64), "image_too_large", "60000x60000")}
    for name, (data, _, _) in bad.items():
        (folder / name).write_bytes(data)
    done = run_cli("ocr", str(folder), "--format", "jsonl")
    assert done.returncode == 4
    records = {json.loads(line)["image"]: json.loads(line) for line in done.stdout.splitlines()}
    for name, (_, code, words) in bad.items():
        assert records[name]["error"]["code"] == code
        assert records[name]["lines"] == []
        assert f"{name}: " in done.stderr and words in records[name]["error"]["message"]
    assert records["page7.jpg"]["lines"]
    assert "Traceback" not in done.stderr


def test_a_folder_without_images_is_a_clear_error(tmp_path):
    (tmp_path / "notes.txt").write_text("no images here")
    done = run_cli("ocr", str(tmp_path))
    assert done.returncode == 4 and "no images in" in done.stderr


def test_draw_writes_annotated_images(page_files, store, tmp_path):
    import cv2

    folder, _ = page_files
    out = tmp_path / "drawn"
    done = run_cli("ocr", str(folder / "page7.jpg"), "--draw", str(out))
    assert done.returncode == 0, done.stderr
    drawn = cv2.imread(str(out / "page7.ocr.jpg"))
    original = cv2.imread(str(folder / "page7.jpg"))
    assert drawn.shape == original.shape
    assert (abs(drawn.astype(int) - original.astype(int)).sum(axis=2) > 100).mean() > 0.005


def test_draw_into_a_file_is_a_clear_error(page_files, store, tmp_path):
    folder, _ = page_files
    taken = tmp_path / "taken"
    taken.write_text("a file, not a folder")
    done = run_cli("ocr", str(folder / "page7.jpg"), "--draw", str(taken))
    assert done.returncode == 74
    assert "cannot write" in done.stderr and "Traceback" not in done.stderr


def test_missing_models_name_the_command_to_run(page_files, tmp_path):
    folder, _ = page_files
    done = run_cli("ocr", str(folder), env={"EDGE_OCR_MODEL_DIR": str(tmp_path / "empty")})
    assert done.returncode == 3
    assert "edge-ocr models pull ppocr-v6-small" in done.stderr
    assert "Traceback" not in done.stderr


def test_missing_input_is_a_clear_error(tmp_path):
    done = run_cli("ocr", str(tmp_path / "nowhere.jpg"))
    assert done.returncode == 78 and "does not exist" in done.stderr


@pytest.mark.parametrize("content, fragment", [
    ("ocr:\n  threads: 0\n", "ocr.threads"),
    ("ocr:\n  thresholds: 1\n", "ocr.thresholds"),
    ("ocr:\n  precision: int4\n", "ocr.precision"),
])
def test_check_config_names_the_bad_key(tmp_path, content, fragment):
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    done = run_cli("check-config", str(path))
    assert done.returncode == 78
    assert fragment in done.stderr


def test_bench_prints_stage_medians_and_peak_rss(page_files, store):
    folder, _ = page_files
    done = run_cli("bench", str(folder), "--pack", "ppocr-v6-tiny")
    assert done.returncode == 0, done.stderr
    for label in ("decode", "detect", "recognize", "total", "images/s", "peak RSS"):
        assert label in done.stdout


def test_eval_scores_against_ground_truth(page_files, store, tmp_path):
    folder, pages = page_files
    gt = tmp_path / "gt"
    gt.mkdir()
    for name, page in pages.items():
        rows = [",".join(str(v) for point in g.box for v in point) + "," + g.text
                for g in page.lines]
        (gt / f"{name.rsplit('.', 1)[0]}.txt").write_text("\n".join(rows) + "\n")
    done = run_cli("eval", str(folder), "--gt", str(gt))
    assert done.returncode == 0, done.stderr
    scores = json.loads(done.stdout)
    assert scores["images"] == 3
    assert scores["words_F1"] >= 0.85
    assert scores["det_H"] >= 0.8
    # an image that cannot be read still counts: its words are missed, as score.py counts them
    (folder / "page7.jpg").write_bytes(b"")
    done = run_cli("eval", str(folder), "--gt", str(gt))
    assert done.returncode == 0, done.stderr
    unreadable = json.loads(done.stdout)
    assert unreadable["images"] == 3
    assert unreadable["words_R"] < scores["words_R"] - 0.2
    assert unreadable["words_P"] == pytest.approx(scores["words_P"], abs=0.05)


def test_models_list_shows_verified_packs_and_variants(store):
    done = run_cli("models", "list")
    assert done.returncode == 0, done.stderr
    assert "ppocr-v6-small: verified" in done.stdout
    assert "int8" in done.stdout and "agrees with fp32" in done.stdout


def test_config_from_the_environment_selects_the_pack(page_files, store, tmp_path):
    folder, _ = page_files
    config = tmp_path / "tiny.yaml"
    config.write_text("ocr:\n  pack: ppocr-v6-tiny\n  precision: fp32\n")
    done = run_cli("-v", "ocr", str(folder / "page7.jpg"), env={"EDGE_OCR_CONFIG": str(config)})
    assert done.returncode == 0, done.stderr
    assert "pack ppocr-v6-tiny, fp32 variant" in done.stderr


def test_progress_bar_only_when_stderr_is_a_terminal(page_files, store):
    import fcntl
    import os
    import pty
    import select
    import struct
    import subprocess
    import sys
    import termios

    folder, _ = page_files
    command = [sys.executable, "-m", "edge", "ocr", str(folder), "--format", "jsonl",
               "--pack", "ppocr-v6-tiny"]
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=slave)
    seen = b""
    while child.poll() is None or select.select([master], [], [], 0.3)[0]:
        if select.select([master], [], [], 0.1)[0]:
            seen += os.read(master, 4096)
    os.close(master)
    os.close(slave)
    # a bar for 3 images; tqdm may skip the last refresh of a fast run before it clears the bar
    assert b"/3 [" in seen and b"img/s" in seen
    assert "img/s" not in run_cli(*command[3:]).stderr


@pytest.mark.parametrize("name", ["edge-ocr.yaml", "examples/kiosk-camera.yaml",
                                  "examples/scanner-spool.yaml", "examples/pi-low-memory.yaml",
                                  "examples/tls-broker.yaml", "examples/fleet-device.yaml",
                                  "examples/latin-documents.yaml", "examples/pi-tiny.yaml",
                                  "examples/home-assistant.yaml"])
def test_shipped_configs_are_valid(name):
    path = Path(__file__).resolve().parents[1] / "config" / name
    done = run_cli("check-config", str(path))
    assert done.returncode == 0, done.stderr


def test_documented_config_holds_every_default_but_the_spool_folder():
    documented = load_config(Path(__file__).resolve().parents[1] / "config" / "edge-ocr.yaml")
    assert documented.model_dump(exclude={"sources"}) == parse_config({}).model_dump(
        exclude={"sources"})
    assert documented.images.max_side == 2048


def test_check_config_gives_the_allowed_range(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("resources:\n  memory_mb: -5\nsources:\n  cameras:\n    - name: a/b\n      url: 0\n")
    done = run_cli("check-config", str(path))
    assert done.returncode == 78
    assert "resources.memory_mb: Value error, should be auto, or a number of MB from 0 (no " \
        "budget) to 65536" in done.stderr
    assert "sources.cameras.0.name" in done.stderr


def test_secrets_are_read_from_the_credentials_directory(tmp_path, monkeypatch):
    (tmp_path / "mqtt-password").write_text("s3cret\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    assert read_secret(Path("mqtt-password")) == "s3cret"
    with pytest.raises(ConfigError, match="cannot read secret"):
        read_secret(Path("missing"))
