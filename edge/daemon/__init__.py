"""The daemon behind `edge-ocr run`: `wiring.py` builds it from the config; the service loop takes
frames from the bounded queue to the one worker and on to the outbox; the engine under the RAM
plan (`budgeted_engine.py`, `budget.py`, `memprobe.py`, `allocator.py`); MQTT commands; the
runtime folder; systemd notify and logging. It may use models, sources, ocr, delivery and the
base, never the CLI."""
