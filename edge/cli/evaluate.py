"""Accuracy against ICDAR-style ground truth: bag-of-words F1 and detection H-mean.

Ground truth: one file per image (`<stem>.csv`, `<stem>.txt` or `gt_<stem>.txt`), each line
`x1,y1,x2,y2,x3,y3,x4,y4,text`; text `###` marks a don't-care region. Words are compared
case-insensitively with punctuation stripped, order-free, each CJK character a word of its own.
Predicted lines lying on a don't-care region (IoU > 0.5) are left out of both measures; a
detection matches a ground-truth line one-to-one, greedily, at IoU >= 0.5.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import cv2
import numpy as np

from edge.frames import OcrResult

DONT_CARE = "###"
MATCH_IOU = 0.5
_CJK = re.compile(r"([\u3400-\u9fff\uf900-\ufaff\u3040-\u30ff\uac00-\ud7af])")
_NOT_WORD = re.compile(r"[^\w]")


@dataclass(frozen=True)
class GroundTruthLine:
    """One annotated line."""

    box: np.ndarray
    text: str


@dataclass
class Tally:
    """Running counts over a set of images."""

    images: int = 0
    word_hits: int = 0
    word_predicted: int = 0
    word_expected: int = 0
    box_hits: int = 0
    box_predicted: int = 0
    box_expected: int = 0

    def add(self, result: OcrResult, truth: Sequence[GroundTruthLine]) -> None:
        """Count one image."""
        care = [g for g in truth if g.text.strip() != DONT_CARE]
        ignored = [g.box for g in truth if g.text.strip() == DONT_CARE]
        kept = [(np.array(line.box, np.float32), line.text) for line in result.lines
                if not any(polygon_iou(np.array(line.box, np.float32), d) > MATCH_IOU
                           for d in ignored)]
        expected = Counter(w for g in care for w in words(g.text))
        predicted = Counter(w for _, text in kept for w in words(text))
        self.images += 1
        self.word_hits += sum((expected & predicted).values())
        self.word_predicted += sum(predicted.values())
        self.word_expected += sum(expected.values())
        self.box_hits += _matched_boxes([g.box for g in care], [box for box, _ in kept])
        self.box_predicted += len(kept)
        self.box_expected += len(care)

    def scores(self) -> dict[str, float]:
        """Words precision/recall/F1 and detection precision/recall/H-mean."""
        wp, wr = _ratio(self.word_hits, self.word_predicted), _ratio(self.word_hits, self.word_expected)
        dp, dr = _ratio(self.box_hits, self.box_predicted), _ratio(self.box_hits, self.box_expected)
        return {"images": self.images, "words_P": wp, "words_R": wr, "words_F1": _harmonic(wp, wr),
                "det_P": dp, "det_R": dr, "det_H": _harmonic(dp, dr)}


def words(text: str) -> list[str]:
    """Lower-cased words with punctuation stripped; each CJK character is a word."""
    out = []
    for token in _CJK.sub(r" \1 ", text).lower().split():
        token = _NOT_WORD.sub("", token)
        if token:
            out.append(token)
    return out


def find_ground_truth(folder: Path, image_name: str) -> Optional[Path]:
    """The ground-truth file of an image, if the folder has one."""
    stem = Path(image_name).stem
    for name in (f"gt_{stem}.txt", f"{stem}.txt", f"{stem}.csv"):
        if (folder / name).is_file():
            return folder / name
    return None


def read_ground_truth(path: Path) -> list[GroundTruthLine]:
    """Parse one ground-truth file; malformed lines are skipped."""
    lines = []
    for raw in path.read_text(encoding="utf-8-sig", errors="replace").splitlines():
        parts = raw.strip().split(",", 8)
        if len(parts) < 9:
            continue
        try:
            coords = np.array([float(p) for p in parts[:8]], np.float32).reshape(4, 2)
        except ValueError:
            continue
        lines.append(GroundTruthLine(coords, parts[8]))
    return lines


def polygon_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of the convex hulls of two polygons."""
    hull_a, hull_b = cv2.convexHull(a), cv2.convexHull(b)
    try:
        inter, _ = cv2.intersectConvexConvex(hull_a, hull_b)
    except cv2.error:
        return 0.0
    union = cv2.contourArea(hull_a) + cv2.contourArea(hull_b) - inter
    return float(inter / union) if union > 0 else 0.0


def _matched_boxes(truth: list[np.ndarray], predicted: list[np.ndarray]) -> int:
    used: set[int] = set()
    for gt_box in truth:
        best, best_index = 0.0, -1
        for j, box in enumerate(predicted):
            if j not in used:
                iou = polygon_iou(gt_box, box)
                if iou > best:
                    best, best_index = iou, j
        if best >= MATCH_IOU:
            used.add(best_index)
    return len(used)


def _ratio(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


def _harmonic(a: float, b: float) -> float:
    return 2 * a * b / (a + b) if a + b else 0.0
