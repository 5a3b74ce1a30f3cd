"""The `edge-ocr` command: argument parsing, one module per subcommand family, and the batch
runner, progress, output formats, drawings, `bench` and `eval` behind `ocr`, `bench` and `eval`.
The only place an `EdgeError` becomes an exit code (`main.py`). It may use every other part; no
other part imports it."""
