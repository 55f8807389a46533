"""What the CLI prints: JSON lines, tables, sizes, local times and one-line run summaries."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo


def human_bytes(size: int | float | None) -> str:
    """Return ``size`` in bytes as ``1.2 MiB``; ``-`` when unknown."""
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Return rows as left-aligned columns under a header line; None shows as ``-``."""
    cells = [[("-" if c is None else str(c)).replace("\n", " ") for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    lines = [headers, *cells]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines
    )


def emit_json(obj: Any) -> None:
    """Print ``obj`` as one line of JSON."""
    print(json.dumps(obj, ensure_ascii=False, sort_keys=False))


def json_time(moment: datetime | str | None, zone: str) -> str | None:
    """Return a time as ``--json`` prints it everywhere: ISO 8601 to the second, in the
    client's time zone, with its offset (``2026-11-27T01:30:00+08:00``)."""
    if moment is None:
        return None
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment)
    return moment.astimezone(ZoneInfo(zone)).isoformat(timespec="seconds")


def local_time(iso_text: str | None, zone: str) -> str:
    """Return an ISO timestamp as ``YYYY-MM-DD HH:MM +08`` in the client's time zone."""
    if not iso_text:
        return "-"
    moment = datetime.fromisoformat(iso_text).astimezone(ZoneInfo(zone))
    return moment.strftime("%Y-%m-%d %H:%M %z")[:-2]


def run_result(view: dict[str, Any]) -> str:
    """Return a one-line summary of a run for tables."""
    if view.get("error"):
        return view["error"]
    stats = view.get("stats") or {}
    if view.get("action") == "backup" and "files_new" in stats:
        return (
            f"snapshot {view.get('snapshot')}: {stats['files_new']} new, "
            f"{stats['files_changed']} changed, {human_bytes(stats.get('bytes_added'))} added"
        )
    if view.get("action") == "copy" and "snapshots_copied" in stats:
        return (
            f"{stats['snapshots_copied']} snapshot(s) copied to {view.get('repository')}, "
            f"{stats.get('snapshots_already_copied', 0)} there already"
        )
    if view.get("action") == "backup" and "image_sha256" in stats:
        rate = human_bytes(stats.get("throughput_bytes_s"))
        return (
            f"snapshot {view.get('snapshot')}: image {human_bytes(stats['image_size'])} "
            f"({stats['image_format']}, {stats.get('consistency')}), {rate}/s, "
            f"sha256 {stats['image_sha256'][:12]}"
        )
    if view.get("action") == "restore" and "verification" in stats:
        return (
            f"snapshot {view.get('snapshot')} -> {stats.get('destination')}: "
            f"{human_bytes(stats.get('bytes_restored'))} in {stats.get('time_to_restore_s')} s, "
            f"verification {stats['verification']} ({stats.get('files_verified')} checked)"
        )
    if view.get("action") == "verify" and "files_verified" in stats:
        return (
            f"drill of snapshot {view.get('snapshot')}: {stats['files_verified']} of "
            f"{stats.get('files_in_snapshot')} file(s) verified, {stats.get('mismatches')} "
            f"mismatch(es), {human_bytes(stats.get('bytes_restored'))} restored in "
            f"{stats.get('time_to_restore_s')} s, check {stats.get('check_subset', '-')} "
            f"{stats.get('check', '-')}"
        )
    if view.get("action") == "prune" and "snapshots_removed" in stats:
        pruned = ", repository pruned" if stats.get("pruned") else ""
        return f"{stats['snapshots_removed']} snapshot(s) forgotten{pruned}"
    return ""
