"""The status page as HTML: health, the RAM plan, each source, and the last outcomes.

Plain HTML with a little inline CSS and no script: it renders in any browser, including a
kiosk's. Every value that comes from outside (file names, text read, error messages) is escaped.
"""

from __future__ import annotations

import time
from html import escape
from typing import Any, Iterable

from edge.daemon import statusview
from edge.daemon.recent import Outcome

STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;max-width:70em}
h1{font-size:1.4em;margin:0 0 .2em}h2{font-size:1.1em;margin:1.4em 0 .4em}
table{border-collapse:collapse}td,th{padding:.15em .8em .15em 0;text-align:left;vertical-align:top}
th{font-weight:600;color:#555}.ok{color:#17702d}.bad{color:#b3261e;font-weight:600}
.outcome{border-top:1px solid #ccc;padding:.8em 0}
.read{display:flex;flex-wrap:wrap;gap:1em;align-items:flex-start}
.read img{max-width:min(100%,40em);border:1px solid #999}
pre{background:#f4f4f4;padding:.5em;white-space:pre-wrap;margin:0;flex:1 1 20em;
max-height:40em;overflow:auto}
.muted{color:#666}code{background:#f4f4f4;padding:0 .2em}
"""


def render(device: str, snapshot: dict[str, Any], outcomes: Iterable[Outcome],
           refresh_seconds: int, command_prefix: str) -> str:
    """The whole page."""
    refresh = (f'<meta http-equiv="refresh" content="{refresh_seconds}">'
               if refresh_seconds else "")
    body = "".join([
        _headline(device, snapshot),
        _section("Health", statusview.health_rows(snapshot)),
        _section("Memory", statusview.memory_rows(snapshot["memory"])),
        _section("Sources", statusview.source_rows(snapshot["sources"])),
        _outcomes(list(outcomes)), _commands(command_prefix)])
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">{refresh}'
            f"<title>edge-ocr {escape(device)}</title><style>{STYLE}</style></head>"
            f"<body>{body}</body></html>")


def _headline(device: str, snapshot: dict[str, Any]) -> str:
    healthy, words = statusview.verdict(snapshot)
    return (f"<h1>edge-ocr · {escape(device)}</h1>"
            f'<p class="{"ok" if healthy else "bad"}" id="verdict">{escape(words)}</p>'
            f'<p class="muted">{escape(statusview.summary(snapshot))} · page built '
            f'{time.strftime("%H:%M:%S")}</p>')


def _section(title: str, rows: list[statusview.Row]) -> str:
    if not rows:
        return f"<h2>{escape(title)}</h2><p>none</p>"
    cells = "".join(f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in rows)
    return f"<h2>{escape(title)}</h2><table>{cells}</table>"


def _outcomes(outcomes: list[Outcome]) -> str:
    if not outcomes:
        return "<h2>Last results</h2><p>Nothing read yet.</p>"
    return "<h2>Last results</h2>" + "".join(_outcome(o) for o in outcomes)


def _outcome(outcome: Outcome) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(outcome.at))
    source = outcome.source
    head = (f'<p><b>{escape(source.item)}</b> <span class="muted">{escape(source.kind)} '
            f"{escape(source.name)} · {when}</span></p>")
    if outcome.result is None:
        return (f'<div class="outcome" id="outcome-{outcome.number}">{head}<p class="bad">'
                f"{escape(outcome.error_code or '')}: {escape(outcome.error_message or '')}"
                "</p></div>")
    result = outcome.result
    ms = result.timings_ms.get("total") or sum(result.timings_ms.values())
    facts = f"{len(result.lines)} lines, {result.width}x{result.height} px, {ms:.0f} ms"
    text = escape(result.text) if result.lines else '<span class="muted">(no text)</span>'
    return (f'<div class="outcome" id="outcome-{outcome.number}">{head}'
            f'<p class="muted">{facts}</p><div class="read">'
            f'<img src="image/{outcome.number}.jpg" alt="{escape(source.item)}, annotated">'
            f'<pre class="text">{text}</pre></div></div>')


def _commands(prefix: str) -> str:
    return ('<h2>Commands</h2><p class="muted">This page changes nothing. Commands go over MQTT, '
            f"e.g. <code>mosquitto_pub -t {escape(prefix)}/cmd/rescan -m '{{}}'</code> "
            f"(also <code>retry-failed</code>, <code>status</code>).</p>")
