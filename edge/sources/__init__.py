"""Frame sources: spool folders and cameras. Each owns its threads and its stop event."""
