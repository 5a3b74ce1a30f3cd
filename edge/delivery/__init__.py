"""How results leave the box: the durable SQLite outbox, the paho MQTT link, the message shape
(only `payload.py` builds JSON) and the sink that turns results into outbox rows. It may use the
base only, never ocr, models, sources, the daemon or the CLI."""
