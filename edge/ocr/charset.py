"""Character sets the recogniser can be cut to (`ocr.charset`; `edge.models.rechead` cuts it)."""

from __future__ import annotations

LATIN = frozenset(
    [chr(c) for c in range(0x20, 0x7F)]          # ASCII
    + [chr(c) for c in range(0xA0, 0x250)]      # Latin-1 supplement, Latin extended A and B
    + list("×÷±€£¥°•–—‘’‚“”„…√№™"))
CHARSETS = {"latin": LATIN}
