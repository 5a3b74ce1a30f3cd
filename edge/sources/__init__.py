"""Where frames come from: spool folders (with their claims) and cameras, each source owning its
threads and stop events, and the bounded queue that sources put jobs into and the worker takes
them from. It may use ocr, delivery and the base, never the daemon or the CLI."""
