"""What the CLI prints: JSON lines, tables, sizes, local times and one-line run summaries."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from datetime import datetime
from typing import Any, TextIO
from zoneinfo import ZoneInfo

from recoverd.text import json_text, visible, visible_lines


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
    """Return rows as left-aligned columns under a header line; None shows as ``-``.

    Cells show control characters escaped (:func:`recoverd.text.visible`): a file name or an
    error from a machine cannot add a row, move the cursor or recolour the terminal.
    """
    cells = [["-" if c is None else visible(c) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    lines = [headers, *cells]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines
    )


def emit_json(obj: Any) -> None:
    """Print ``obj`` as one line of JSON (exact data; nothing in it a terminal interprets)."""
    write_data(json_text(obj, ensure_ascii=False, sort_keys=False) + "\n")


class TerminalText:
    """A text stream for what people read (the CLI's stdout and stderr): whatever is written
    shows control characters escaped, except line breaks (:func:`recoverd.text.visible_lines`).

    The net under every message: a remote error or a file name cannot send an escape
    sequence to the terminal, whichever code printed it. Data (``--json``, exports, reports)
    goes out exact through :func:`write_data`; the progress line writes its own control
    sequences to :attr:`stream`.
    """

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        self.stream.write(visible_lines(text))
        return len(text)

    def write_data(self, text: str) -> None:
        # Exact when piped or redirected; on a terminal it is read, so it is shown like text.
        self.stream.write(visible_lines(text) if self.stream.isatty() else text)

    def __getattr__(self, name: str) -> Any:  # flush, isatty, fileno, encoding...
        return getattr(self.stream, name)


def write_data(text: str) -> None:
    """Write data (JSON lines, CSV, a report, a key) to stdout exactly as it is."""
    out = sys.stdout
    if isinstance(out, TerminalText):
        out.write_data(text)
    else:
        out.write(text)


def raw_stream(stream: TextIO) -> TextIO:
    """Return the stream under a :class:`TerminalText` (for our own control sequences)."""
    return stream.stream if isinstance(stream, TerminalText) else stream


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


def shorten(text: str, width: int) -> str:
    """Return ``text`` cut to at most ``width`` characters at a word boundary, with ``…``
    where something was left out."""
    if len(text) <= width:
        return text
    cut = text[: width - 1]
    space = cut.rfind(" ")
    if space > width // 2:
        cut = cut[:space]
    return cut.rstrip(" ,;:/") + "…"


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
