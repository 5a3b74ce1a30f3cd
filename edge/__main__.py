"""`python -m edge`: the same as the `edge-ocr` command."""

from edge.cli.main import entry

entry()
