"""edge-ocr: an OCR daemon for small Linux boxes."""

__version__ = "0.1.0"
