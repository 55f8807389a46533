"""Text from outside (machines, users, policies) made safe for each output recoverd writes.

File names, remote error messages, symptoms and policy strings may hold anything: escape
sequences that rewrite a terminal, a ``\\r`` or ``\\n`` that forges a table row or a heading,
HTML, a spreadsheet formula. Every output puts such text through one helper of this module:

- :func:`visible`: one line for a terminal (a table cell, a field in a message); every control
  or invisible formatting character is shown escaped, as ``\\x1b``, ``\\r``, ``\\u202e``.
- :func:`visible_lines`: the same for a whole message, keeping its line breaks.
- :func:`markdown_text`: inline Markdown; HTML, Markdown structure and control characters
  stay literal text.
- :func:`html_text`: HTML text or attribute value, control characters shown escaped.
- :func:`csv_cell`: a CSV cell that no spreadsheet runs as a formula.
- :func:`json_text`: JSON with the characters terminals interpret escaped as ``\\uXXXX``; it
  decodes to exactly the same data.
"""

from __future__ import annotations

import csv
import html
import json
import re
from typing import IO, Any

_INVISIBLE = (
    "\u00ad\u061c\u180e\u200b-\u200f\u2028-\u202e\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb"
)
"""Characters that reorder or hide text (bidi controls, zero-width characters, line and
paragraph separators): a name that shows as another name."""
_UNSAFE = re.compile(f"[\x00-\x1f\x7f-\x9f{_INVISIBLE}\ud800-\udfff]")
_UNSAFE_BUT_NEWLINE = re.compile(f"[\x00-\x09\x0b-\x1f\x7f-\x9f{_INVISIBLE}\ud800-\udfff]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match[0]
    code = ord(char)
    if char in _NAMED:
        return _NAMED[char]
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape): show the byte
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def visible(text: object) -> str:
    """Return ``text`` as one line a terminal shows as it is: control characters (``\\n``,
    ``\\r``, ``\\t``, ESC, C1), bidi and zero-width characters and undecodable bytes escaped."""
    return _UNSAFE.sub(_escape, str(text))


def visible_lines(text: object) -> str:
    """Return ``text`` like :func:`visible`, but keep its line breaks (a message of lines)."""
    return _UNSAFE_BUT_NEWLINE.sub(_escape, str(text))


_MARKDOWN_INLINE = re.compile(r"([\\`*_\[\]<>|~&$])")
"""Characters that Markdown (CommonMark, GitHub's tables, strikethrough and math) may read as
structure anywhere in a line: escaped with a backslash, which before ASCII punctuation always
means the character itself."""
_MARKDOWN_LINE_START = re.compile(r"^(?:(>|([#+=-])(?=[ \t]|$|\2))|(\d{1,9})([.)])(?=[ \t]|$))")
"""What starts a heading, quote, list or setext underline when it begins a line."""


def markdown_text(text: object) -> str:
    """Return ``text`` as inline Markdown that renders as the same text: one line (a ``\\r``
    or ``\\n`` cannot start a heading or a table row), no HTML, no emphasis, link, code or
    table cell boundary. Control characters show escaped (``\\x1b``) as on a terminal."""
    # visible() writes its escapes with a backslash; the Markdown escape below doubles it, so
    # they render as the text `\x1b`.
    line = _MARKDOWN_INLINE.sub(r"\\\1", visible(text))
    return _MARKDOWN_LINE_START.sub(
        lambda m: "\\" + m[1] if m[1] else m[3] + "\\" + m[4], line, count=1
    )


def html_text(text: object) -> str:
    """Return ``text`` escaped for HTML text and quoted attribute values, control characters
    shown escaped (``\\x1b``) rather than passed to the browser."""
    return html.escape(visible(text), quote=True)


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
"""A cell starting with one of these is a formula (or becomes one) in Excel, LibreOffice and
Google Sheets: ``=HYPERLINK(...)``, ``+cmd|...``, ``@SUM(...)``."""


def csv_cell(value: object) -> object:
    """Return a CSV cell that a spreadsheet shows as text: a string starting with ``=``,
    ``+``, ``-``, ``@``, tab or CR gets a leading ``'`` (OWASP's advice). Numbers stay
    numbers; ``None`` is an empty cell."""
    if value is None:
        return ""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


class CSVWriter:
    """A ``csv.writer`` whose every cell goes through :func:`csv_cell`."""

    def __init__(self, out: IO[str]) -> None:
        self._writer = csv.writer(out, lineterminator="\n")

    def writerow(self, row: list[Any]) -> None:
        self._writer.writerow([csv_cell(v) for v in row])


_JSON_UNSAFE = re.compile(f"[\x7f-\x9f{_INVISIBLE}\ud800-\udfff]")


def json_text(obj: Any, **options: Any) -> str:
    """Return ``obj`` as JSON (``json.dumps`` with ``options``) that decodes to the same data
    and shows nothing a terminal interprets: beyond what JSON escapes itself (``\\u001b``),
    DEL, C1 controls, bidi and zero-width characters are written as ``\\uXXXX``, and so are
    the bytes of a file name that is not UTF-8 (lone surrogates, which no stream can encode)."""
    text = json.dumps(obj, **options)
    # Outside strings JSON is plain ASCII: every match is inside a string, where \\uXXXX is
    # the same character.
    return _JSON_UNSAFE.sub(lambda m: f"\\u{ord(m[0]):04x}", text)
