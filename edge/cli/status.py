"""`edge-ocr status`: how the daemon is, in a terminal, from what it answers over MQTT.

The same rows as the status page. When the daemon does not answer, the broker's retained
messages still say whether it went offline or was stopped, and what its last health said.
"""

from __future__ import annotations

from typing import Any

from edge.daemon import statusview
from edge.delivery.query import StatusAnswer


def report(device: str, answer: StatusAnswer, timeout: float) -> tuple[str, bool]:
    """The text to print, and whether the daemon answered with nothing wrong."""
    snapshot = answer.live or answer.health
    lines = [_headline(device, answer, timeout)]
    if snapshot is None:
        lines.append("no health message on the broker: the daemon has not run against it")
        return "\n".join(lines), False
    healthy, words = statusview.verdict(snapshot)
    if answer.live is None:
        lines.append(f"its last health message ({snapshot.get('at', 'undated')}):")
    lines += [words, statusview.summary(snapshot), ""]
    lines += _block(statusview.health_rows(snapshot))
    lines += ["", "memory"] + _block(statusview.memory_rows(snapshot["memory"]), indent=2)
    lines += ["", "sources"] + _block(statusview.source_rows(snapshot["sources"]), indent=2)
    return "\n".join(lines), answer.live is not None and healthy


def _headline(device: str, answer: StatusAnswer, timeout: float) -> str:
    if answer.live is not None:
        return f"{device}: online, answered now"
    status: dict[str, Any] = answer.status or {}
    state, at = status.get("state"), status.get("at", "?")
    if state == "online":
        return f"{device}: online since {at}, but gave no answer within {timeout:.0f} s"
    if state == "stopped":
        return f"{device}: stopped at {at}"
    if state == "offline":
        return f"{device}: offline (its connection to the broker was lost)"
    return f"{device}: unknown to the broker (no retained status)"


def _block(rows: list[statusview.Row], indent: int = 0) -> list[str]:
    width = max((len(label) for label, _ in rows), default=0) + 2
    return [f"{' ' * indent}{label:<{width}}{value}" for label, value in rows]
