"""A health snapshot in words: the rows both the status page and `edge-ocr status` show.

A row is (label, value in words). What a technician should look at first comes from `verdict`.
"""

from __future__ import annotations

from typing import Any, Optional

Row = tuple[str, str]


def verdict(snapshot: dict[str, Any]) -> tuple[bool, str]:
    """(healthy, in words): a broken link, paused intake, a degraded plan, a camera down."""
    problems = []
    mqtt = snapshot["mqtt"]
    if not mqtt["connected"]:
        problems.append("broker disconnected"
                        + (f" ({mqtt['last_error']})" if mqtt["last_error"] else ""))
    if snapshot["intake"]["state"] != "open":
        problems.append(f"intake paused ({snapshot['intake'].get('reason')})")
    if snapshot["memory"]["degraded"]:
        problems.append("RAM plan degraded")
    for name, source in snapshot["sources"].items():
        if source.get("type") == "camera" and source.get("state") != "streaming":
            problems.append(f"camera {name} {source.get('state')}")
    return (not problems, "; ".join(problems) or "working")


def summary(snapshot: dict[str, Any]) -> str:
    """Uptime and the models, in one line."""
    models = snapshot["models"]
    return (f"up {duration(snapshot['uptime_s'])} · {models['pack']} {models['variant']} on "
            f"{models['device']}")


def health_rows(snapshot: dict[str, Any]) -> list[Row]:
    """Counters, queue, outbox, latency, the daemon's broker link and intake."""
    outbox, latency, mqtt = snapshot["outbox"], snapshot["latency_ms"], snapshot["mqtt"]
    broker = ("connected" if mqtt["connected"] else "disconnected") + \
        f", {mqtt['reconnects']} reconnects" + \
        (f", last error: {mqtt['last_error']}" if mqtt["last_error"] else "")
    return [
        ("frames read", str(snapshot["processed"])),
        ("frames failed", str(snapshot["failed"])),
        ("queue", f"{snapshot['queue']['depth']} waiting, {snapshot['queue']['dropped']} dropped"),
        ("outbox", f"{outbox['depth']} messages ({outbox['bytes']} bytes), {outbox['inflight']} "
                   f"in flight, oldest {outbox['oldest_age_s']} s, {outbox['dropped']} dropped, "
                   f"{outbox['rejected']} rejected"),
        ("latency", f"p50 {_ms(latency['p50'])}, p95 {_ms(latency['p95'])}"),
        ("broker", broker),
        ("intake", _intake(snapshot["intake"])),
    ]


def memory_rows(memory: dict[str, Any]) -> list[Row]:
    """RSS and peak, the budget, and the plan the engine runs under."""
    budget = f"{memory['budget_mb']} MB" if memory["budget_mb"] else "none set"
    return [("RSS", f"{memory['rss_mb']:.0f} MB (peak {memory['peak_mb']:.0f} MB)"),
            ("budget", budget + (", plan degraded" if memory["degraded"] else "")),
            ("plan", memory["plan"] or "none")]


def source_rows(sources: dict[str, dict[str, Any]]) -> list[Row]:
    """One row per spool folder or camera: its state and counters."""
    rows = []
    for name, source in sources.items():
        details = ", ".join(f"{key.replace('_', ' ')} {value}" for key, value in source.items()
                            if key != "type" and value is not None)
        rows.append((f"{source.get('type', 'source')} {name}", details))
    return rows


def duration(seconds: float) -> str:
    """`[D d ]HH:MM:SS`."""
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    return (f"{days} d " if days else "") + f"{hours:02d}:{minutes:02d}:{secs:02d}"


def _ms(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.0f} ms"


def _intake(intake: dict[str, Any]) -> str:
    if intake["state"] == "open":
        return "open"
    return (f"paused: {intake.get('reason')} ({intake.get('message')}), next look in "
            f"{intake.get('retry_in_s')} s")
