"""The OCR engine: detector, optional classifier, recogniser, wired by `build_pipeline`."""
