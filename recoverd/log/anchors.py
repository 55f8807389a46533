"""Anchors: copies of the signed head kept outside the controller, and their check.

The hash chain and the signatures prove that the log is as the key holder wrote it; they cannot
prove that the key holder did not rewrite it, roll it back to an old copy, or wipe it. An
*anchor* — the seq and hash of an entry, written down somewhere the controller cannot reach (a
report the customer keeps, an export, a witness machine, a paper print-out) — can: a later log
must still hold that entry with that hash, and, since the chain is checked from the first entry
to the last, every later entry extends it.

An anchor is written as one line of text, the same in every place it appears::

    log head 1234:<64 hex digits> signed <128 hex digits>

so that any file that contains one (a report in any format, an export, the output of
``recoverd log head``, a witness's file of heads) is itself an anchor file.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from recoverd.errors import UsageError
from recoverd.log.signing import Head, head_message, verify_signature

ANCHOR_TEXT = re.compile(r"log head (\d{1,18}):([0-9a-f]{64})(?: signed ([0-9a-f]{128}))?")
_ARGUMENT = re.compile(r"(\d{1,18}):([0-9a-f]{64})")
MAX_FILE = 64 * 1024 * 1024
"""Bytes of an anchor file read (a witness file of ten years of heads is a few MB)."""


@dataclass(frozen=True)
class Anchor:
    """An entry's seq and hash as recorded outside the log, and where it was found."""

    seq: int
    hash: str
    signature: str | None
    source: str
    """Where the anchor comes from, for messages: a file, a witness, the command line."""


@dataclass(frozen=True)
class AnchorCheck:
    """One anchor and what the log says about it."""

    anchor: Anchor
    ok: bool
    kind: str | None
    """None when ``ok``; else ``removed`` (rolled back or wiped), ``edited`` (rewritten) or
    ``forged`` (the anchor's signature is not the log's key's)."""
    message: str


class HashSource(Protocol):
    def hash_at(self, seq: int) -> str | None: ...

    def last_seq(self) -> int | None: ...


def anchor_text(head: Head) -> str:
    """Return the one-line text form of a signed head (see the module docstring)."""
    return f"log head {head.seq}:{head.hash} signed {head.signature}"


def anchors_in_text(text: str, source: str) -> list[Anchor]:
    """Return every anchor written in ``text``, in order, without repeats."""
    found: dict[tuple[int, str], Anchor] = {}
    for match in ANCHOR_TEXT.finditer(text):
        seq, digest, signature = int(match[1]), match[2], match[3]
        known = found.get((seq, digest))
        if known is None or (signature and not known.signature):
            found[(seq, digest)] = Anchor(seq, digest, signature, source)
    return list(found.values())


def parse_anchor(argument: str) -> list[Anchor]:
    """Given ``SEQ:HASH`` or the path of a file holding anchors, return its anchors.

    Raise UsageError if it is neither, or the file holds none.
    """
    match = _ARGUMENT.fullmatch(argument.strip())
    if match:
        return [Anchor(int(match[1]), match[2], None, f"anchor {argument.strip()[:24]}...")]
    path = Path(argument)
    try:
        with path.open("rb") as f:
            data = f.read(MAX_FILE)
    except OSError as exc:
        raise UsageError(
            f"--anchor {argument}: neither SEQ:HASH (e.g. 1234:<64 hex digits>) nor a readable "
            f"file ({exc.strerror or exc})"
        ) from None
    anchors = anchors_in_text(data.decode("utf-8", "replace"), f"anchor file {path}")
    if not anchors:
        raise UsageError(
            f"--anchor {argument}: the file holds no 'log head SEQ:HASH' line (a report, an "
            "export, or the output of `recoverd log head`)"
        )
    return anchors


def check_anchor(
    source: HashSource, key: Ed25519PublicKey, anchor: Anchor, *, signature: bool = True
) -> AnchorCheck:
    """Return whether the log still holds ``anchor``'s entry with its hash (and, with
    ``signature``, whether the anchor's signature is the key's).

    That the entries after it extend it is the chain walk's part (`log verify`).
    """
    where = f"{anchor.source} (entry {anchor.seq}, hash {anchor.hash[:16]}...)"
    if (
        signature
        and anchor.signature
        and not verify_signature(key, anchor.signature, head_message(anchor.seq, anchor.hash))
    ):
        return AnchorCheck(
            anchor,
            False,
            "forged",
            f"{where} was signed by another key than the one this log is checked with: the "
            "signing key was replaced and the log re-signed (or the anchor is from another log)",
        )
    digest = source.hash_at(anchor.seq)
    if digest is None:
        last = source.last_seq()
        now = f"ends at entry {last}" if last else "is empty"
        return AnchorCheck(
            anchor,
            False,
            "removed",
            f"{where}: the log now {now}; it was rolled back or wiped after this anchor",
        )
    if digest != anchor.hash:
        return AnchorCheck(
            anchor,
            False,
            "edited",
            f"{where}: the log's entry {anchor.seq} now has another hash; the log was rewritten "
            "after this anchor",
        )
    return AnchorCheck(anchor, True, None, f"{where}: held unchanged")


def check_anchors(
    source: HashSource, key: Ed25519PublicKey, anchors: Iterable[Anchor]
) -> list[AnchorCheck]:
    """Return the check of each anchor, in order.

    Of the anchors from one source only the newest one's signature is checked (a witness
    holds a head per run, years of them; each one's hash is still compared): the chain from
    its entry back vouches for the older ones.
    """
    anchors = list(anchors)
    newest: dict[str, int] = {}
    for anchor in anchors:
        if anchor.signature:
            newest[anchor.source] = max(newest.get(anchor.source, 0), anchor.seq)
    return [check_anchor(source, key, a, signature=newest.get(a.source) == a.seq) for a in anchors]
