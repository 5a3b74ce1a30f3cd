"""The engine: safe image decoding, DB text detection, crops, the orientation classifier and CTC
recognition, joined by `pipeline.py`. `session.py` alone imports onnxruntime. It may use the
base only (config, errors, frames)."""
