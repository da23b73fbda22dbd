"""Rendering: HTML pages (jinja2, everything autoescaped), _status.json and _STATUS.txt from cards."""

from __future__ import annotations

import json
import time
from datetime import datetime
from typing import Any
from urllib.parse import quote

import jinja2

from vidrop.daemon.gallery.cards import Card
from vidrop.daemon.names import json_text, name_bytes, shown

PARAMETER_LABELS = {
    "num_frames": "{} frames",
    "fps": "{} fps",
    "steps": "{} steps",
    "guidance_scale": "guidance {}",
    "seed": "seed {}",
    "format": "{}",
}


def duration(seconds: float | None) -> str:
    """Seconds in plain words: "12 s", "about 3 min", "about 1 h 5 min"."""
    if seconds is None:
        return "unknown"
    seconds = max(0, round(seconds))
    if seconds < 90:
        return f"{seconds} s"
    minutes = round(seconds / 60)
    if minutes < 90:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60} min"


def href(name: str) -> str:
    """A relative link to a file in the same folder: percent-encoded, so no name can become a scheme or a query."""
    return "./" + quote(name_bytes(name), safe="/")  # the name's own bytes: a link to it opens it


def local(iso: str, fmt: str = "%Y-%m-%d %H:%M") -> str:
    """An ISO timestamp (as the ledger's times are written) in the server's local time zone with the zone's
    name, as people on the share read times: "2026-01-31 15:05 CET"."""
    return local_time(datetime.fromisoformat(iso).timestamp(), fmt)


ALIVE_SCRIPT = "_alive.js"


def local_time(epoch: float, fmt: str = "%H:%M") -> str:
    """A time in the server's local time zone, with the zone's name: "14:05 CET"."""
    return time.strftime(f"{fmt} %Z", time.localtime(epoch))


def alive_script(now: float, lease_seconds: float) -> str:
    """_alive.js: the last heartbeat, for each page's own check (a page from a dead instance cannot update)."""
    facts = {"heartbeat": now, "lease": lease_seconds, "local": local_time(now)}
    return f"vidropAlive({json.dumps(facts)});\n"


def heartbeat_line(heartbeat: tuple[float, float]) -> str:
    at, lease = heartbeat
    return (
        f"Last heartbeat: {local_time(at, '%Y-%m-%d %H:%M:%S')}. If that is more than {lease:g} s ago, "
        f"vidrop is not running since then (`vidrop status` tells for sure)."
    )


def with_heartbeat(text: str, heartbeat: tuple[float, float]) -> str:
    """_STATUS.txt as another instance of the fleet may have written it, with this heartbeat's line instead of
    the one there: what the file says of the queue stays the last full writer's (who read the ledger last)."""
    lines = text.splitlines()
    fresh = heartbeat_line(heartbeat)
    for number, line in enumerate(lines):
        if line.startswith("Last heartbeat: "):
            lines[number] = fresh
            return "\n".join(lines) + "\n"
    return "\n".join([*lines[:2], fresh, "", *lines[2:]]) + "\n"


def parameters(values: dict[str, Any]) -> str:
    """Key parameters in one line: "model svd · 64×64 · 9 frames · 8 fps · 2 steps · seed 7 · mp4"."""
    parts = [f"model {values['model']}"] if "model" in values else []
    if "width" in values and "height" in values:
        parts.append(f"{values['width']}×{values['height']}")
    parts += [label.format(values[key]) for key, label in PARAMETER_LABELS.items() if key in values]
    return " · ".join(parts)


_environment = jinja2.Environment(loader=jinja2.PackageLoader("vidrop.daemon.gallery", "templates"), autoescape=True)
_environment.filters.update(duration=duration, href=href, local=local, parameters=parameters)


def render_page(**context: Any) -> str:
    """One gallery page; every value shown is escaped by the template engine."""
    return shown(_environment.get_template("folder.html").render(**context))


def status_json(document: dict[str, Any]) -> str:
    """_status.json: the same facts as the page, for tools."""
    return json_text(document, default=_card_json) + "\n"  # no indent: the C encoder is 5× faster


def status_text(
    *,
    updated_at: str,
    queue_length: int,
    drain_seconds: float | None,
    running: Card | None,
    counts: dict[str, int],
    failures: list[Card],
    notice: str | None = None,
    heartbeat: tuple[float, float] | None = None,
    held: str | None = None,
) -> str:
    """_STATUS.txt: for people without a browser; notice says why nothing moves (the ledger is unavailable)."""
    lines = [f"vidrop status, updated {local(updated_at, '%Y-%m-%d %H:%M:%S')}", ""]
    if heartbeat is not None:
        lines += [heartbeat_line(heartbeat), ""]
    if notice:
        lines += [f"Paused: {notice}", ""]
    if held:  # the fleet's queue control (`vidrop pause`, `drain`)
        lines += [f"Held: {held}", ""]
    if not queue_length:
        drain = ""
    elif drain_seconds is None:  # no job finished yet to time the rest by: say so, never "about unknown"
        drain = ", time to finish not known until a job is done"
    else:
        drain = f", all done in about {duration(drain_seconds)}"
    lines.append(f"Queue: {queue_length} waiting{drain}")
    if running is None:
        lines.append("Running now: nothing")
    else:
        step = "" if running.step is None else f", step {running.step} of {running.total_steps}"
        left = "" if running.seconds_left is None else f", about {duration(running.seconds_left)} left"
        lines.append(f"Running now: {running.input}{step}{left}")
    lines.append(f"Done: {counts['done']}, failed: {counts['failed']}")
    if failures:
        lines += ["", "Latest failures:"]
        for card in failures:
            lines.append(f"  {card.input} ({local(card.finished_at or card.created_at)}): {card.error}")
            if card.what_to_do:
                lines.append(f"    what to do: {card.what_to_do}")
    return shown("\n".join(lines) + "\n")


def _card_json(value: Any) -> Any:
    if isinstance(value, Card):
        return value.to_json()
    raise TypeError(f"cannot write {type(value).__name__} to _status.json")
