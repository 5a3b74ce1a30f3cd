"""Model packs: pull and verify them from the package registry (`store.py`), build their int8
and fp16 variants (`rewrite.py`, `calibration.py`, `quantize.py`), and assemble a pipeline from
a variant (`factory.py`). It may use ocr and the base, never sources, delivery, the daemon or
the CLI."""
