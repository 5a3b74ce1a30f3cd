"""`edge-ocr bench --against`: the side-by-side benchmark, run for real. The peer here is
edge-ocr itself with the tiny pack, through `--peer-command` (the documented way to compare
with any command that prints `edge-ocr ocr --format jsonl` lines), so the test needs no
download; `--against rapidocr` differs only in installing its peer first."""

from __future__ import annotations

import json
import re
import shlex
import sys

import cv2
import pytest

from conftest import run_cli
from edge.models.calibration import render_page

PEER = f"{shlex.quote(sys.executable)} -m edge ocr --format jsonl --pack ppocr-v6-tiny"


@pytest.fixture
def folders(tmp_path):
    """Three rendered pages with ground truth, and two frames without."""
    pages, truth, frames = tmp_path / "pages", tmp_path / "gt", tmp_path / "frames"
    for folder in (pages, truth, frames):
        folder.mkdir()
    for seed in (61, 62, 63):
        page = render_page(seed, lines=6)
        cv2.imwrite(str(pages / f"p{seed}.jpg"), page.image)
        (truth / f"p{seed}.txt").write_text("".join(
            ",".join(f"{x},{y}" for x, y in line.box) + f",{line.text}\n" for line in page.lines))
    for seed in (64, 65):
        cv2.imwrite(str(frames / f"f{seed}.jpg"), render_page(seed, 640, 360, lines=3).image)
    return pages, truth, frames


def table_rows(stdout: str) -> dict[str, list[str]]:
    rows = [line.strip("|").split("|") for line in stdout.splitlines() if line.startswith("| ")]
    return {cells[0].strip(): [c.strip() for c in cells] for cells in rows[1:]}


def test_side_by_side_in_turns_with_medians_ratio_f1_and_peak_rss(folders):
    pages, truth, frames = folders
    done = run_cli("bench", str(pages), str(frames), "--peer-command", PEER, "--peer-name", "tiny",
                   "--gt", str(truth), "--rounds", "2")
    assert done.returncode == 0, done.stderr
    assert re.search(r"edge-ocr vs tiny, 2 rounds in turns; CPU: .+, \d+ cores", done.stdout)
    assert "| folder | images | edge-ocr s/image | tiny s/image | speed-up |" in done.stdout
    rows = table_rows(done.stdout)
    _, images, mine_s, peer_s, ratio, mine_f1, peer_f1, mine_rss, peer_rss = rows["pages"]
    assert images == "3"
    # the table's ratio is of the unrounded medians: allow for the seconds' three decimals
    mine, peer = float(mine_s), float(peer_s)
    slack = peer / mine * (0.0005 / peer + 0.0005 / mine) + 0.005
    assert float(ratio.rstrip("x")) == pytest.approx(peer / mine, abs=slack)
    assert 0.8 < float(mine_f1) <= 1 and 0.5 < float(peer_f1) <= 1
    # each process's own peak: the tiny pack's is lower, both hold models and runtime
    assert 100 < float(peer_rss.split()[0]) < float(mine_rss.split()[0])
    assert rows["frames"][1] == "2" and rows["frames"][5:7] == ["-", "-"]  # no ground truth

    runs = re.findall(r"round (\d)/2 · (\w+) · ([\w-]+): [0-9.]+ s per image", done.stderr)
    assert runs == [("1", "pages", "edge-ocr"), ("1", "pages", "tiny"),
                    ("1", "frames", "edge-ocr"), ("1", "frames", "tiny"),
                    ("2", "pages", "tiny"), ("2", "pages", "edge-ocr"),
                    ("2", "frames", "tiny"), ("2", "frames", "edge-ocr")]

    scored = run_cli("eval", str(pages), "--gt", str(truth))  # the same words F1 as `eval`
    assert float(mine_f1) == pytest.approx(json.loads(scored.stdout)["words_F1"], abs=1e-4)


def test_a_peer_that_fails_or_a_file_instead_of_a_folder_is_reported(folders):
    pages, truth, _ = folders
    done = run_cli("bench", str(pages), "--peer-command", "false", "--rounds", "1")
    assert done.returncode == 69
    assert "false exited 1 without reading 3 of 3 images" in done.stderr
    done = run_cli("bench", str(pages / "p61.jpg"), "--against", "rapidocr")
    assert done.returncode == 78 and "bench --against takes folders" in done.stderr
