"""Check the maintenance log's integrity: the hash chain, the signatures, the signed head.

:func:`verify_chain` walks the entries in log order and stops at the first one that is not
what was written, saying which kind of tampering most likely explains it:

- **edited** — the entry's content no longer gives its stored hash;
- **removed** — an entry is missing (a gap in the sequence, or a link to a hash nowhere in the
  log), or entries are missing at the end (the signed head names a later entry);
- **reordered** — the entry is chained to an entry that now stands after it;
- **forged** (inserted, or rewritten with a recomputed hash) — hash and chain are consistent
  but the signature is not the key's.

What is checked by default (``recoverd log verify``): every entry's hash and its link to the
entry before it, the signed head, and the signature of the *last* entry. That is enough: each
hash covers the entry and the previous hash, so one valid signature on the last hash proves,
given SHA-256, that the whole chain up to it is as the key holder wrote it. Only when that
signature (or the one before a broken link) fails are the entries' own signatures checked, to
name the first forged entry. With ``signatures=True`` (``recoverd log verify --signatures``)
every entry's signature is checked as well: the slow, thorough mode (about 110 µs per entry).

:func:`verify_chain` can also start at a later entry (``first_seq``): the report checks the
entries from its month to the end of the log that way, and says so.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from recoverd.log.anchors import AnchorCheck
from recoverd.log.record import GENESIS, Entry, entry_hash, parse_body
from recoverd.log.signing import Head, entry_message, verify_signature

TAMPERING = ("edited", "removed", "inserted", "reordered", "forged")

Row = tuple[int, str, str, str, str, str, str, str | None, str | None, str | None, int]
"""A stored entry as the chain walk reads it: seq, run_id, type, at, body (the stored JSON
text), prev_hash, hash, signature, the client and machine index columns, and a flag set when
those columns differ from the body's ``client``/``machine``."""


class ChainSource(Protocol):
    """One consistent snapshot of a log store, as :func:`verify_chain` reads it."""

    def chain(self, first_seq: int = 1) -> Iterator[Row]:
        """Yield the entries from ``first_seq`` on, in log order."""
        ...

    def seq_of_hash(self, digest: str) -> int | None:
        """Return the seq of the entry whose hash is ``digest`` (on the failure path only)."""
        ...

    def hash_at(self, seq: int) -> str | None:
        """Return the hash of entry ``seq``, or None if there is none."""
        ...


@dataclass(frozen=True)
class Finding:
    """The first problem found: where, what most likely happened, and the details."""

    seq: int | None
    kind: str
    """One of :data:`TAMPERING`."""
    message: str


@dataclass(frozen=True)
class Verdict:
    """What ``recoverd log verify`` found."""

    entries: int
    """Entries checked (all of them, unless the check started at a later entry)."""
    runs: int
    """Runs started among the entries checked."""
    first: Entry | None
    last: Entry | None
    head: Head | None
    problem: Finding | None
    every_signature: bool = False
    """True if every entry's signature was checked, not only the last one's."""
    anchors: tuple[AnchorCheck, ...] = ()
    """The anchors checked (given, the key's record, the witnesses' heads)."""
    warnings: tuple[str, ...] = ()
    """What could not be checked (a witness that could not be reached)."""

    @property
    def intact(self) -> bool:
        return self.problem is None and all(check.ok for check in self.anchors)

    @property
    def failed_anchors(self) -> list[AnchorCheck]:
        return [check for check in self.anchors if not check.ok]


def _entry(row: Row) -> Entry:
    seq, run_id, type_, at, body, prev, digest, signature = row[:8]
    return Entry(seq, run_id, type_, at, parse_body(body), prev, digest, signature)


def _describe(row: Row) -> str:
    return f"entry {row[0]} ({row[2]} of run {row[1]}, {row[3]})"


def _span(first: int, last: int) -> str:
    """Return ``entry 5 was`` or ``entries 5..7 were``."""
    return f"entry {first} was" if first == last else f"entries {first}..{last} were"


def _hash_matches(row: Row) -> bool:
    """Return True if the entry's content gives its stored hash.

    The hashed material is the canonical JSON of {at, body, prev, run_id, seq, type}. The store
    keeps the body as its canonical JSON text, so the material is built from that text without
    parsing it. This is exact when the other text fields need no JSON escaping: then the
    material can be split into its fields in one way only, and a match proves every field,
    the body text included, is what was hashed. Otherwise (or on a mismatch) the body is
    parsed and the material made canonically before the entry is called edited.
    """
    seq, run_id, type_, at, body, prev, digest = row[:7]
    try:
        plain = at + run_id + type_ + prev
        if '"' not in plain and "\\" not in plain and plain.isprintable():
            material = (
                f'{{"at":"{at}","body":{body},"prev":"{prev}","run_id":"{run_id}",'
                f'"seq":{seq},"type":"{type_}"}}'
            )
            if hashlib.sha256(material.encode()).hexdigest() == digest:
                return True
        return entry_hash(seq, run_id, type_, at, parse_body(body), prev) == digest
    except TypeError:  # a column edited to hold a blob: nothing the store ever wrote
        return False


def _signed(row: Row, key: Ed25519PublicKey) -> bool:
    return verify_signature(key, row[7], entry_message(row[6]))


def _link_finding(row: Row, expected_seq: int, source: ChainSource) -> Finding:
    """Return what explains an entry whose ``prev_hash`` is not the hash before it."""
    chained_to = source.seq_of_hash(row[5])
    if chained_to is not None and chained_to > row[0]:
        return Finding(
            row[0],
            "reordered",
            f"{_describe(row)} was written after entry {chained_to} but now stands "
            "before it: entries were reordered",
        )
    if row[0] != expected_seq:
        return Finding(
            expected_seq,
            "removed",
            f"{_span(expected_seq, row[0] - 1)} removed: the log goes from entry "
            f"{expected_seq - 1} to {_describe(row)}",
        )
    return Finding(
        row[0],
        "removed",
        f"{_describe(row)} is chained to an entry that is not in the log: the entry "
        "before it was removed (and the rest renumbered) or replaced",
    )


def _index_finding(row: Row) -> Finding:
    """Return the finding for an entry whose query columns disagree with its body."""
    body = parse_body(row[4])
    said = (body.get("client"), body.get("machine"))
    return Finding(
        row[0],
        "edited",
        f"{_describe(row)} is filed under client/machine {row[8]}/{row[9]} but its "
        f"signed content says {said[0]}/{said[1]}: the store's index columns were edited "
        "(this hides the run from per-client views, reports and exports)",
    )


def _signature_finding(row: Row, head_seq: int | None) -> Finding:
    state = "has no signature" if not row[7] else "has an invalid signature"
    if head_seq is not None and row[0] > head_seq:
        kind, how = "inserted", f"appended after the signed head (entry {head_seq})"
    else:
        kind, how = "forged", "inserted, or rewritten with a recomputed hash"
    return Finding(
        row[0],
        kind,
        f"{_describe(row)} {state} although its hash is consistent: it was written by "
        f"someone without the signing key — {how}",
    )


def _first_unsigned(
    source: ChainSource, first_seq: int, before: int | None, key: Ed25519PublicKey
) -> Row | None:
    """Return the first entry from ``first_seq`` (up to ``before``) whose signature fails."""
    for row in source.chain(first_seq):
        if before is not None and row[0] >= before:
            return None
        if not _signed(row, key):
            return row
    return None


def _count_if_none_signed(source: ChainSource, first_seq: int, key: Ed25519PublicKey) -> int | None:
    """Return the number of entries from ``first_seq`` if none of their signatures verifies
    with ``key``; return None as soon as one does."""
    count = 0
    for row in source.chain(first_seq):
        if _signed(row, key):
            return None
        count += 1
    return count


def _head_finding(
    head: Head | None, head_valid: bool, last: Row | None, source: ChainSource
) -> Finding | None:
    """Return what is wrong at the end of the log according to the signed head, or None."""
    if head is None:
        if last is None:
            return None
        return Finding(
            None,
            "removed",
            "the signed head file is missing: entries removed from the end of the log could "
            f"not be detected (the log ends at {_describe(last)})",
        )
    if not head_valid:
        return Finding(
            head.seq, "forged", "the head file's signature is invalid: the head was forged"
        )
    if last is None or head.seq > last[0]:
        end = f"ends at entry {last[0]}" if last else "is empty"
        first_missing = last[0] + 1 if last else 1
        return Finding(
            first_missing,
            "removed",
            f"the log {end} but the signed head names entry {head.seq}: "
            f"{_span(first_missing, head.seq)} removed from the end",
        )
    if source.hash_at(head.seq) != head.hash:
        return Finding(
            head.seq,
            "edited",
            f"the signed head names entry {head.seq} with hash {head.hash[:16]}..., but the "
            "log's entry there differs: it was replaced",
        )
    # A head behind the last entry is no problem: the chain and the last signature already
    # prove the entries past it were written with the key (the head lags only after a crash).
    return None


def verify_chain(
    source: ChainSource,
    key: Ed25519PublicKey,
    head: Head | None,
    *,
    first_seq: int = 1,
    signatures: bool = False,
) -> Verdict:
    """Given a snapshot of the log, the public key and the signed head, return the verdict.

    The entries from ``first_seq`` to the end are checked (the link of entry ``first_seq`` to
    the one before it is taken as stored). With ``signatures`` every entry's signature is
    checked; otherwise only the last entry's, and the others only to locate a forgery.

    The first problem found is reported; entries after it are not judged (one tampering
    breaks the links of everything after it).
    """
    head_valid = head is not None and head.valid(key)
    head_seq = head.seq if head is not None and head_valid else None
    problem: Finding | None = None
    first: Row | None = None
    previous: Row | None = None
    consistent: Row | None = None
    expected_seq = first_seq
    expected_prev: str | None = GENESIS if first_seq == 1 else None
    count = runs = 0
    for row in source.chain(first_seq):
        if first is None:
            first = row
            expected_prev = row[5] if expected_prev is None else expected_prev
        if row[5] != expected_prev:
            problem = _link_finding(row, expected_seq, source)
        elif not _hash_matches(row):
            problem = Finding(
                row[0],
                "edited",
                f"{_describe(row)} does not match its hash: its content was edited after it "
                "was written",
            )
        elif signatures and not _signed(row, key):
            problem = _signature_finding(row, head_seq)
        elif row[10]:
            problem = _index_finding(row)
            consistent = row  # its hash and link are right: its signature can vouch for it
        if problem:
            break
        count += 1
        runs += row[2] == "start"
        previous = row
        expected_seq = row[0] + 1
        expected_prev = row[6]
    consistent = consistent or previous
    if not signatures and consistent is not None and not _signed(consistent, key):
        # The chain up to `consistent` holds together but its last hash is not the key's:
        # find the first entry whose signature fails (it comes before any other problem).
        forged = _first_unsigned(source, first_seq, consistent[0] + 1, key)
        problem = _signature_finding(forged, head_seq) if forged else problem
    if problem and problem.kind in ("forged", "inserted") and first and problem.seq == first[0]:
        unsigned = _count_if_none_signed(source, first_seq, key)
        if unsigned is not None:
            problem = Finding(
                problem.seq,
                "forged",
                f"no entry of the log verifies with this public key ({unsigned} entries): the "
                "key is not this log's (check --pubkey), or the whole log was re-signed",
            )
    problem = problem or _head_finding(head, head_valid, previous, source)
    return Verdict(
        entries=count,
        runs=runs,
        first=_entry(first) if first else None,
        last=_entry(previous) if previous else None,
        head=head,
        problem=problem,
        every_signature=signatures,
    )
