"""The monthly report's boot drills: each one's verdict, boot time, time against the restore SLA
and console screenshot (embedded in the HTML report, read from the state directory)."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from recoverd.actions.report import MachineReport, Timed
from recoverd.text import html_text as escape

SCREENSHOT_LIMIT = 4 << 20
"""A screenshot larger than this is linked by its path, not embedded."""
PNG = b"\x89PNG\r\n\x1a\n"
HEADERS = ["Started", "Level", "Verdict", "Evidence", "Boot", "Drill time", "SLA", "Screenshot"]


def boot_drills(machine: MachineReport) -> list[Timed]:
    """The machine's drills of the month that booted a restored disk."""
    return [t for t in machine.drills if (t.view["stats"] or {}).get("boot_result")]


def _stats(t: Timed) -> dict[str, Any]:
    return t.view["stats"] or {}


def rows(machine: MachineReport, when: Any, duration: Any, sla_text: Any) -> list[list[str]]:
    """Table rows, one per boot drill; ``when``, ``duration`` and ``sla_text`` format as the
    other tables do."""
    out = []
    for t in boot_drills(machine):
        stats = _stats(t)
        probes = stats.get("boot_probes") or {}
        verdict = stats["boot_result"] + "".join(
            f", {name} {outcome.split(':')[0]}" for name, outcome in probes.items()
        )
        out.append(
            [
                when(t.view["started_at"]),
                t.view["level"] or "-",
                verdict,
                "; ".join(stats.get("boot_evidence") or []) or "-",
                duration(stats.get("boot_s")),
                duration(t.seconds),
                sla_text(t),
                stats.get("boot_screenshot") or "not kept",
            ]
        )
    return out


def screenshot_html(t: Timed) -> str:
    """The drill's screenshot as an ``<img>`` with the verdict as its caption ("" if none)."""
    stats = _stats(t)
    path = stats.get("boot_screenshot")
    if not path:
        return ""
    caption = f"{t.view['level']} {t.view['started_at'][:16]}: {stats['boot_result']}"
    try:
        data = Path(path).read_bytes()
    except OSError:
        return f"<p>{escape(caption)}: screenshot {escape(path)} is no longer there</p>"
    if data[:8] != PNG or len(data) > SCREENSHOT_LIMIT:
        return f"<p>{escape(caption)}: screenshot {escape(path)}</p>"
    encoded = base64.b64encode(data).decode("ascii")
    return (
        f'<figure class="boot-shot"><img alt="{escape(caption)}" style="max-width:640px" '
        f'src="data:image/png;base64,{encoded}"><figcaption>{escape(caption)}</figcaption>'
        "</figure>"
    )


def data(machine: MachineReport) -> list[dict[str, Any]]:
    """The boot drills as plain data (``recoverd report --json``)."""
    return [
        {
            "run": t.view["id"],
            "level": t.view["level"],
            "state": t.view["state"],
            "boot_result": _stats(t).get("boot_result"),
            "boot_s": _stats(t).get("boot_s"),
            "probes": _stats(t).get("boot_probes") or {},
            "seconds": t.seconds,
            "within_sla": t.within_sla,
            "screenshot": _stats(t).get("boot_screenshot"),
        }
        for t in boot_drills(machine)
    ]
