"""Render a monthly :class:`~recoverd.actions.report.Report` as HTML, Markdown or CSV.

The HTML is one self-contained, printable file: inline CSS, an inline SVG calendar (machine ×
day, coloured by outcome), no script and no external resource, so it can be mailed, archived
and printed as it is.
"""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from recoverd.actions import report_boot
from recoverd.actions.report import MachineReport, Report, Timed, plain_reason
from recoverd.output import human_bytes, local_time
from recoverd.text import CSVWriter, markdown_text
from recoverd.text import html_text as escape  # every HTML text field goes through it

FORMATS = ("html", "md", "csv")

COLOURS = {
    "succeeded": "#2e9d4a",
    "partial": "#e0a100",
    "retried": "#9ccf6b",
    "failed": "#d0312d",
    "none": "#d9d9d9",
    "future": "#f4f4f4",
}
LEGEND = {
    "succeeded": "all runs succeeded",
    "partial": "partial (some files unreadable)",
    "retried": "a failure retried into success",
    "failed": "a run failed or was interrupted",
    "none": "no run",
    "future": "after the report date",
}


def human_duration(value: float | timedelta | None) -> str:
    """Return seconds or a timedelta as ``3 d 4 h``, ``2 h 05 min``, ``42 s``; ``-`` if None."""
    if value is None:
        return "-"
    seconds = int(value.total_seconds() if isinstance(value, timedelta) else value)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min {secs:02d} s"
    return f"{secs} s"


def _sla_text(timed: Timed) -> str:
    return {True: "within SLA", False: "OVER SLA", None: "-"}[timed.within_sla]


def _pct(report: Report) -> str:
    return "-" if report.coverage_pct is None else f"{report.coverage_pct:.1f} %"


def _devices(report: Report) -> str:
    return ", ".join(f"{count} {role}(s)" for role, count in report.devices.items()) or "none"


def _oldest(report: Report) -> str:
    machine = report.oldest_last_good
    if machine is None:
        return "-"
    age = human_duration(machine.last_good_age) if machine.last_good_age else "never backed up"
    return f"{machine.name}: {age}"


def _sla_summary(report: Report) -> str:
    timed = [t for t in report.timed if t.within_sla is not None]
    if report.sla is None:
        return "no restore_sla in the policy"
    within = sum(1 for t in timed if t.within_sla)
    return f"{within} of {len(timed)} within {human_duration(report.sla)}"


def _head(report: Report) -> str:
    verdict = report.log_check
    head = getattr(verdict, "head", None)
    if head is None:
        return "-"
    return f"entry {head.seq}, hash {head.hash[:16]}... (full anchor at the end)"


def summary_rows(report: Report) -> list[tuple[str, str, str]]:
    """Return the summary as (id, label, value) rows, shared by every format."""
    missing_drill = report.without_passed_drill
    verdicts = Counter(m.verdict[0] for m in report.machines)
    return [
        (
            "verdict",
            "Machines",
            ", ".join(f"{verdicts[v]} {v}" for v in VERDICTS if verdicts[v]) or "none",
        ),
        (
            "coverage",
            "Backup coverage",
            f"{_pct(report)} ({report.covered} of {report.scheduled} scheduled backups succeeded)",
        ),
        (
            "retried",
            "Failures retried into success",
            str(report.retried),
        ),
        (
            "no-drill",
            "Machines without a passed drill this month",
            f"{len(missing_drill)}" + (f": {', '.join(missing_drill)}" if missing_drill else ""),
        ),
        ("oldest", "Oldest last good backup", _oldest(report)),
        ("sla", "Restores and drills within the restore SLA", _sla_summary(report)),
        ("devices", "Devices", _devices(report)),
        ("head", "Head of the signed log", _head(report)),
    ]


VERDICTS = ("at risk", "attention", "good")
VERDICT_HEADERS = ["Machine", "Verdict", "Why", "Last good backup"]


def verdict_rows(report: Report) -> list[list[str]]:
    """Return one row per machine, the machines at risk first."""
    order = {v: i for i, v in enumerate(VERDICTS)}
    machines = sorted(report.machines, key=lambda m: order[m.verdict[0]])
    return [
        [
            m.name,
            m.verdict[0],
            m.verdict[1],
            human_duration(m.last_good_age) + " ago" if m.last_good_age is not None else "never",
        ]
        for m in machines
    ]


TREND_HEADERS = ["Month", "Backup runs good", "Failed", "Success rate", "Data stored"]


def trend_rows(report: Report) -> list[list[str]]:
    return [
        [
            t.month,
            str(t.good),
            str(t.bad),
            "-" if t.success_pct is None else f"{t.success_pct:.1f} %",
            human_bytes(t.stored),
        ]
        for t in report.trends
    ]


def _when(report: Report, iso_text: str | None) -> str:
    return local_time(iso_text, report.client.timezone)


def level_rows(report: Report, machine: MachineReport) -> list[list[str]]:
    return [
        [
            lv.name,
            lv.kind,
            lv.every or "-",
            str(lv.scheduled),
            str(lv.succeeded),
            str(lv.partial),
            str(lv.failed),
            str(lv.missed),
            str(lv.runs),
            str(lv.retried),
        ]
        for lv in machine.levels
    ]


LEVEL_HEADERS = [
    "Level",
    "Kind",
    "Schedule",
    "Scheduled",
    "Succeeded",
    "Partial",
    "Failed",
    "Missed",
    "Runs",
    "Retried",
]
FAILURE_HEADERS = ["Time", "Action", "Level", "State", "Reason", "RPO then"]
ACCEPTANCE_HEADERS = ["Run", "Action", "Level", "Accepted by", "When", "Note"]
DRILL_HEADERS = ["Time", "Level", "Result", "Files verified", "Mismatches", "Time", "SLA"]
RESTORE_HEADERS = ["Time", "Symptom", "Reported by", "Engineer", "Result", "Time to restore", "SLA"]
STORAGE_HEADERS = ["Repository", "Added this month", "Added to date", "Protected", "Snapshots"]


def failure_rows(report: Report, machine: MachineReport) -> list[list[str]]:
    return [
        [
            _when(report, f.view["started_at"]),
            f.view["action"],
            f.view["level"] or "-",
            f.view["state"]
            + (
                f" (retried: succeeded {_when(report, f.retried_by['started_at'])})"
                if f.retried_by
                else ""
            ),
            f.reason,
            human_duration(f.rpo) if f.rpo is not None else "no restore point",
        ]
        for f in machine.failures
    ]


def drill_rows(report: Report, machine: MachineReport) -> list[list[str]]:
    rows = []
    for t in machine.drills:
        stats = t.view["stats"] or {}
        result = t.view["state"] + (f": {plain_reason(t.view)}" if t.view["error"] else "")
        rows.append(
            [
                _when(report, t.view["started_at"]),
                t.view["level"] or "-",
                result,
                str(stats.get("files_verified", "-")),
                str(stats.get("mismatches", "-")),
                human_duration(t.seconds),
                _sla_text(t),
            ]
        )
    return rows


def restore_rows(report: Report, machine: MachineReport) -> list[list[str]]:
    return [
        [
            _when(report, t.view["started_at"]),
            t.view["symptom"] or "-",
            t.view["reported_by"] or "-",
            t.view["engineer"] or "-",
            t.view["state"] + (f": {plain_reason(t.view)}" if t.view["error"] else ""),
            human_duration(t.seconds),
            _sla_text(t),
        ]
        for t in machine.restores
    ]


def acceptance_rows(report: Report, machine: MachineReport) -> list[list[str]]:
    return [
        [
            a["run"],
            a["action"],
            a["level"] or "-",
            a["by"] or "-",
            _when(report, a["at"]),
            a["note"] or "-",
        ]
        for a in machine.acceptances
    ]


def _bytes(value: int | None) -> str:
    return "- (copies: restic copy reports no size)" if value is None else human_bytes(value)


def storage_rows(report: Report) -> list[list[str]]:
    return [
        [
            r.name,
            _bytes(r.added_in_month),
            _bytes(r.added_to_date),
            human_bytes(r.protected),
            str(r.snapshots_in_month),
        ]
        for r in report.repositories
    ]


def _last_good(report: Report, machine: MachineReport) -> str:
    if machine.last_good is None:
        return "never"
    view = machine.last_good
    return (
        f"{_when(report, view['finished_at'])} ({view['level']}, "
        f"snapshot {view['snapshot'] or '-'}), {human_duration(machine.last_good_age)} old"
    )


NOTICE_HEADERS = ["Time", "Level", "Notice", "Details"]


def _share(value: Any) -> str:
    return f"{float(value) * 100:.0f}%"


def notice_rows(report: Report, machine: MachineReport) -> list[list[str]]:
    """Skipped offline runs and anomalies: what did not fail but needs a look."""
    rows = []
    for view in machine.notices:
        stats = view["stats"] or {}
        when, level = _when(report, view["started_at"]), view["level"] or "-"
        if stats.get("offline"):
            detail = (
                f"unreachable, skipped; offline since {_when(report, stats.get('offline_since'))}"
                f" ({human_duration(stats.get('offline_for_s') or 0)})"
            )
            if stats.get("offline_alert"):
                detail += f", longer than alert_after ({human_duration(stats['alert_after_s'])})"
            rows.append([when, level, "offline", detail])
        anomaly = stats.get("anomaly") or {}
        if "changed" in anomaly:
            c = anomaly["changed"]
            rows.append(
                [
                    when,
                    level,
                    "anomaly: mass change",
                    f"{c['files']} of {c['of']} files new or changed ({_share(c['share'])}, "
                    f"limit {_share(c['limit'])}): ransomware?",
                ]
            )
        if "shrunk" in anomaly:
            d = anomaly["shrunk"]
            rows.append(
                [
                    when,
                    level,
                    "anomaly: snapshot shrank",
                    f"{d['files']} files, {human_bytes(d['bytes'])} against {d['files_before']} "
                    f"files, {human_bytes(d['bytes_before'])} before (-{_share(d['share'])}, "
                    f"limit {_share(d['limit'])}): mass deletion?",
                ]
            )
    return rows


MACHINE_TABLES: list[tuple[str, list[str], Callable[[Report, MachineReport], list[list[str]]]]] = [
    ("Runs per level", LEVEL_HEADERS, level_rows),
    ("Failures", FAILURE_HEADERS, failure_rows),
    ("Offline and anomalies", NOTICE_HEADERS, notice_rows),
    ("Restore drills", DRILL_HEADERS, drill_rows),
    ("Restores", RESTORE_HEADERS, restore_rows),
    ("Acceptances", ACCEPTANCE_HEADERS, acceptance_rows),
]


def _boot_rows(report: Report, machine: MachineReport) -> list[list[str]]:
    return report_boot.rows(machine, lambda t: _when(report, t), human_duration, _sla_text)


def _boot_html(report: Report, machine: MachineReport) -> str:
    """Boot drills: the table, then each screenshot with its verdict."""
    if not report_boot.boot_drills(machine):
        return ""
    shots = "".join(report_boot.screenshot_html(t) for t in report_boot.boot_drills(machine))
    return (
        f"<h3>Boot drills</h3>{_html_table(report_boot.HEADERS, _boot_rows(report, machine))}"
        + shots
    )


# --- HTML ------------------------------------------------------------------------------------

CSS = """
body { font: 13px/1.4 system-ui, sans-serif; color: #222; margin: 24px; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 22px 0 6px; }
h3 { font-size: 14px; margin: 12px 0 4px; }
.meta { color: #555; }
table { border-collapse: collapse; margin: 4px 0 10px; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
dl.summary { display: grid; grid-template-columns: max-content auto; gap: 4px 16px; }
dl.summary dt { font-weight: 600; } dl.summary dd { margin: 0; }
.over { color: #d0312d; font-weight: 600; }
.legend span { display: inline-block; width: 11px; height: 11px; margin: 0 4px 0 12px; }
section.machine { break-inside: avoid; }
td.v-good { color: #2e7d32; font-weight: 600; } td.v-attention { color: #b26a00; font-weight: 600; }
td.v-at-risk { color: #d0312d; font-weight: 700; }
.trends { display: flex; gap: 24px; flex-wrap: wrap; }
.anchor { font: 10px/1.3 ui-monospace, monospace; word-break: break-all; color: #555; }
@page { size: A4; margin: 14mm; }
@media print {
  body { margin: 0; font-size: 11px; } section { break-inside: avoid; }
  section.machine { break-before: auto; } h2 { break-after: avoid; }
  th { background: #eee !important; -webkit-print-color-adjust: exact; print-color-adjust: exact; }
  svg rect { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
}
"""


def _cell(c: str) -> str:
    if c == "OVER SLA":
        return f'<td class="over">{escape(c)}</td>'
    if c in VERDICTS:
        return f'<td class="v-{c.replace(" ", "-")}">{escape(c)}</td>'
    return f"<td>{escape(c)}</td>"


def _html_table(headers: list[str], rows: list[list[str]]) -> str:
    if not rows:
        return "<p>none</p>"
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(_cell(c) for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def calendar_svg(report: Report) -> str:
    """Return the machine × day grid as inline SVG; each cell's colour is the day's outcome."""
    days = report.month.days
    label, cell, gap, top = 130, 18, 2, 18
    width = label + len(days) * (cell + gap)
    height = top + max(1, len(report.machines)) * (cell + gap)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" id="calendar" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="outcome per machine and day">'
    ]
    for i, day in enumerate(days):
        x = label + i * (cell + gap) + cell / 2
        parts.append(f'<text x="{x}" y="12" font-size="10" text-anchor="middle">{day.day}</text>')
    for row, machine in enumerate(report.machines):
        y = top + row * (cell + gap)
        parts.append(f'<text x="0" y="{y + 13}" font-size="12">{escape(machine.name)}</text>')
        for i, day in enumerate(days):
            outcome = machine.days[day]
            x = label + i * (cell + gap)
            parts.append(
                f'<rect class="day {outcome}" x="{x}" y="{y}" width="{cell}" height="{cell}" '
                f'fill="{COLOURS[outcome]}" data-machine="{escape(machine.name)}" '
                f'data-day="{day.isoformat()}" data-outcome="{outcome}">'
                f"<title>{escape(machine.name)} {day.isoformat()}: {LEGEND[outcome]}</title></rect>"
            )
    parts.append("</svg>")
    return "".join(parts)


def trend_svg(report: Report, what: str) -> str:
    """Return one trend chart of the last 12 months as inline SVG: ``success`` (backup runs
    that succeeded, percent) or ``storage`` (data stored by backups, cumulative)."""
    trends = report.trends
    width, height, left, bottom, top = 360, 150, 44, 24, 12
    bar = (width - left) / max(1, len(trends))
    values = [(t.success_pct if what == "success" else float(t.stored)) for t in trends]
    peak = 100.0 if what == "success" else max((v or 0 for v in values), default=0) or 1.0
    title = "Backup success rate" if what == "success" else "Data stored (before pruning)"
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" id="trend-{what}" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{escape(title)}, last 12 months">'
        f'<text x="{left}" y="10" font-size="11" font-weight="600">{escape(title)}</text>'
        f'<line x1="{left}" y1="{height - bottom}" x2="{width}" y2="{height - bottom}" '
        'stroke="#999"/>'
        f'<text x="{left - 4}" y="{top + 8}" font-size="9" text-anchor="end">'
        f"{'100 %' if what == 'success' else escape(human_bytes(int(peak)))}</text>"
    ]
    usable = height - bottom - top
    for i, (t, value) in enumerate(zip(trends, values, strict=True)):
        x = left + i * bar + 2
        label = t.month[2:].replace("-", "/")
        parts.append(
            f'<text x="{x + (bar - 4) / 2:.1f}" y="{height - 10}" font-size="8" '
            f'text-anchor="middle">{escape(label)}</text>'
        )
        if value is None:
            continue
        h = usable * value / peak
        colour = "#2e9d4a" if what == "storage" or value >= 99 else "#e0a100"
        if what == "success" and value < 90:
            colour = "#d0312d"
        shown = f"{value:.1f} %" if what == "success" else human_bytes(int(value))
        parts.append(
            f'<rect class="trend" x="{x:.1f}" y="{height - bottom - h:.1f}" '
            f'width="{bar - 4:.1f}" height="{h:.1f}" fill="{colour}" '
            f'data-month="{t.month}" data-value="{value}">'
            f"<title>{escape(t.month)}: {escape(shown)}</title></rect>"
        )
    parts.append("</svg>")
    return "".join(parts)


def render_html(report: Report, integrity: str | None = None) -> str:
    """Return the report as one self-contained HTML document."""
    client = report.client
    title = f"Backup and recovery report — {client.name} — {report.month}"
    summary = "".join(
        f'<dt>{escape(label)}</dt><dd id="{key}">{escape(value)}</dd>'
        for key, label, value in summary_rows(report)
    )
    legend = "".join(
        f'<span style="background:{COLOURS[k]}"></span>{escape(text)}' for k, text in LEGEND.items()
    )
    machines = []
    for m in report.machines:
        tables = "".join(
            f"<h3>{escape(name)}</h3>{_html_table(headers, rows(report, m))}"
            for name, headers, rows in MACHINE_TABLES
        )
        machines.append(
            f'<section class="machine" id="machine-{escape(m.name)}">'
            f"<h2>{escape(m.name)} <small class=meta>({escape(m.role)}"
            f"{', ' + escape(m.asset_tag) if m.asset_tag else ''})</small></h2>"
            f"<p>Last good backup: {escape(_last_good(report, m))}</p>{tables}"
            f"{_boot_html(report, m)}</section>"
        )
    footer = f'<p class="meta anchor" id="integrity">{escape(integrity)}</p>' if integrity else ""
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title><style>{CSS}</style></head><body>"
        f"<h1>{escape(title)}</h1>"
        f'<p class="meta">Client {escape(client.id)} · times in {escape(client.timezone)} · '
        f"figures as of {escape(_when(report, report.as_of.isoformat()))}"
        f"{' · restore SLA ' + escape(client.restore_sla) if client.restore_sla else ''}</p>"
        f'<section id="summary"><h2>Summary</h2><dl class="summary">{summary}</dl>'
        f'<div id="verdicts">{_html_table(VERDICT_HEADERS, verdict_rows(report))}</div>'
        "</section>"
        f'<section id="trends"><h2>Last 12 months</h2><div class="trends">'
        f"{trend_svg(report, 'success')}{trend_svg(report, 'storage')}</div></section>"
        f'<section id="grid"><h2>Calendar</h2>{calendar_svg(report)}'
        f'<p class="legend">{legend}</p></section>'
        + "".join(machines)
        + '<section id="storage"><h2>Storage per repository</h2>'
        + _html_table(STORAGE_HEADERS, storage_rows(report))
        + "<p class=meta>Added: new data stored by backups (after deduplication and "
        "compression, before pruning). Protected: source size of each level's newest good "
        "snapshot.</p></section>" + footer + "</body></html>\n"
    )


# --- Markdown --------------------------------------------------------------------------------

MARKS = {
    "succeeded": "o",
    "retried": "r",
    "partial": "~",
    "failed": "X",
    "none": ".",
    "future": " ",
}


def _md_cell(text: str) -> str:
    return markdown_text(text)


def _md_table(headers: list[str], rows: list[list[str]]) -> str:
    if not rows:
        return "none\n"
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def render_markdown(report: Report, integrity: str | None = None) -> str:
    """Return the report as Markdown (the calendar as a text grid)."""
    client = report.client
    out = [
        f"# Backup and recovery report — {_md_cell(client.name)} — {report.month}\n",
        f"Client {_md_cell(client.id)}, times in {_md_cell(client.timezone)}, figures as of "
        f"{_when(report, report.as_of.isoformat())}.\n",
        "## Summary\n",
        *(f"- **{label}:** {_md_cell(value)}" for _, label, value in summary_rows(report)),
        "",
        _md_table(VERDICT_HEADERS, verdict_rows(report)),
        "## Last 12 months\n",
        _md_table(TREND_HEADERS, trend_rows(report)),
        "## Calendar\n",
        "```",
        " " * 14 + "".join(str(d.day % 10) for d in report.month.days),
        *(
            f"{m.name[:13]:<14}" + "".join(MARKS[m.days[d]] for d in report.month.days)
            for m in report.machines
        ),
        "```",
        "o succeeded, r failure retried into success, ~ partial, X failed, . no run\n",
    ]
    for m in report.machines:
        out.append(f"## {_md_cell(m.name)} ({_md_cell(m.role)})\n")
        out.append(f"Last good backup: {_md_cell(_last_good(report, m))}\n")
        for name, headers, rows in MACHINE_TABLES:
            out.append(f"### {name}\n")
            out.append(_md_table(headers, rows(report, m)))
        if report_boot.boot_drills(m):
            out.append("### Boot drills\n")
            out.append(_md_table(report_boot.HEADERS, _boot_rows(report, m)))
    out.append("## Storage per repository\n")
    out.append(_md_table(STORAGE_HEADERS, storage_rows(report)))
    if integrity:
        out.append(_md_cell(integrity) + "\n")
    return "\n".join(out)


# --- CSV -------------------------------------------------------------------------------------

CSV_HEADERS = [
    "client",
    "month",
    "machine",
    "role",
    "level",
    "kind",
    "scheduled",
    "succeeded",
    "partial",
    "failed",
    "missed",
    "runs",
    "retried",
    "bytes_added",
    "drills_passed",
    "drills_failed",
    "restores",
]
"""The level section: one row per machine and level; every figure is the level's own, so a
column's sum is the client's total (scheduled = succeeded + partial + failed + missed)."""

CSV_MACHINE_HEADERS = [
    "client",
    "month",
    "machine",
    "role",
    "asset_tag",
    "verdict",
    "why",
    "last_good_at",
    "last_good_age_h",
    "restores",
    "slowest_restore_s",
    "restore_sla_s",
]
"""The machine section: one row per machine (figures of the machine as a whole)."""


def render_csv(report: Report, integrity: str | None = None) -> str:
    """Return the report as CSV: the level section (one row per machine and level), a blank
    line, the machine section (one row per machine), then the integrity line."""
    out = io.StringIO()
    writer = CSVWriter(out)  # a cell like "=HYPERLINK(...)" stays text in a spreadsheet
    writer.writerow(CSV_HEADERS)
    client, month = report.client.id, str(report.month)
    for m in report.machines:
        for lv in m.levels:
            drills = [d for d in m.drills if d.view["level"] == lv.name]
            restores = [t for t in m.restores if t.view["level"] == lv.name]
            writer.writerow(
                [
                    client,
                    month,
                    m.name,
                    m.role,
                    lv.name,
                    lv.kind,
                    lv.scheduled,
                    lv.succeeded,
                    lv.partial,
                    lv.failed,
                    lv.missed,
                    lv.runs,
                    lv.retried,
                    lv.bytes_added,
                    sum(1 for d in drills if d.view["state"] == "succeeded"),
                    sum(1 for d in drills if d.view["state"] != "succeeded"),
                    len(restores),
                ]
            )
    out.write("\n")
    writer.writerow(CSV_MACHINE_HEADERS)
    sla = int(report.sla.total_seconds()) if report.sla else ""
    for m in report.machines:
        age = round(m.last_good_age.total_seconds() / 3600, 1) if m.last_good_age else ""
        restore_times = [t.seconds for t in m.restores if t.seconds is not None]
        writer.writerow(
            [
                client,
                month,
                m.name,
                m.role,
                m.asset_tag or "",
                *m.verdict,
                m.last_good["finished_at"] if m.last_good else "",
                age,
                len(m.restores),
                max(restore_times) if restore_times else "",
                sla,
            ]
        )
    if integrity:
        # Last, in the first column, so that the file is an anchor and sums stay right.
        out.write("\n")
        writer.writerow([f"# {integrity}"])
    return out.getvalue()


def report_data(report: Report) -> dict[str, Any]:
    """Return the report's figures as plain data (``recoverd report --json``)."""

    def timed(t: Timed) -> dict[str, Any]:
        return {
            "run": t.view["id"],
            "state": t.view["state"],
            "seconds": t.seconds,
            "within_sla": t.within_sla,
        }

    return {
        "client": report.client.id,
        "month": str(report.month),
        "as_of": report.as_of.isoformat(),
        "restore_sla_s": report.sla.total_seconds() if report.sla else None,
        "coverage_pct": report.coverage_pct,
        "scheduled": report.scheduled,
        "covered": report.covered,
        "retried": report.retried,
        "trends": [
            {"month": t.month, "good": t.good, "bad": t.bad, "stored": t.stored}
            for t in report.trends
        ],
        "without_passed_drill": report.without_passed_drill,
        "devices": report.devices,
        "machines": [
            {
                "machine": m.name,
                "role": m.role,
                "levels": [
                    {
                        "level": lv.name,
                        "kind": lv.kind,
                        "scheduled": lv.scheduled,
                        "succeeded": lv.succeeded,
                        "partial": lv.partial,
                        "failed": lv.failed,
                        "missed": lv.missed,
                        "runs": lv.runs,
                        "retried": lv.retried,
                        "bytes_added": lv.bytes_added,
                    }
                    for lv in m.levels
                ],
                "verdict": m.verdict[0],
                "why": m.verdict[1],
                "onboarded": m.onboarded.isoformat() if m.onboarded else None,
                "acceptances": m.acceptances,
                "last_good_run": m.last_good["id"] if m.last_good else None,
                "last_good_age_s": m.last_good_age.total_seconds() if m.last_good_age else None,
                "failures": [
                    {
                        "run": f.view["id"],
                        "state": f.view["state"],
                        "error": f.view["error"],
                        "reason": f.reason,
                        "retried_by": f.retried_by["id"] if f.retried_by else None,
                        "rpo_s": f.rpo.total_seconds() if f.rpo is not None else None,
                    }
                    for f in m.failures
                ],
                "drills": [timed(t) for t in m.drills],
                "restores": [timed(t) for t in m.restores],
                "boot_drills": report_boot.data(m),
            }
            for m in report.machines
        ],
        "repositories": [
            {
                "repository": r.name,
                "added_in_month": r.added_in_month,
                "added_to_date": r.added_to_date,
                "protected": r.protected,
                "snapshots_in_month": r.snapshots_in_month,
            }
            for r in report.repositories
        ],
    }


RENDERERS: dict[str, Callable[..., str]] = {
    "html": render_html,
    "md": render_markdown,
    "csv": render_csv,
}


def render(report: Report, fmt: str, integrity: str | None = None) -> str:
    """Return ``report`` in format ``fmt`` (one of :data:`FORMATS`)."""
    return RENDERERS[fmt](report, integrity)
