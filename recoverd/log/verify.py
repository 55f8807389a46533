"""Check the maintenance log's integrity: the hash chain, every signature, the signed head.

:func:`verify_entries` walks the entries in log order and stops at the first one that is not
what was written, saying which kind of tampering most likely explains it:

- **edited** — the entry's content no longer gives its stored hash;
- **removed** — an entry is missing (a gap in the sequence, or a link to a hash nowhere in the
  log), or entries are missing at the end (the signed head names a later entry);
- **reordered** — the entry is chained to an entry that now stands after it;
- **forged** (inserted, or rewritten with a recomputed hash) — hash and chain are consistent
  but the signature is not the key's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from recoverd.log.record import GENESIS, Entry, entry_hash
from recoverd.log.signing import Head, entry_message, verify_signature

TAMPERING = ("edited", "removed", "inserted", "reordered", "forged")


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
    runs: int
    first: Entry | None
    last: Entry | None
    head: Head | None
    problem: Finding | None

    @property
    def intact(self) -> bool:
        return self.problem is None


def _describe(entry: Entry) -> str:
    return f"entry {entry.seq} ({entry.type} of run {entry.run_id}, {entry.at})"


def _span(first: int, last: int) -> str:
    """Return ``entry 5 was`` or ``entries 5..7 were``."""
    return f"entry {first} was" if first == last else f"entries {first}..{last} were"


def _check_entry(
    entry: Entry,
    previous: Entry | None,
    by_hash: dict[str, Entry],
    key: Ed25519PublicKey,
    head_seq: int | None,
) -> Finding | None:
    """Return what is wrong with ``entry`` given the entry before it, or None.

    ``head_seq`` is the last entry the (valid) signed head names, if any.
    """
    expected_seq = previous.seq + 1 if previous else 1
    expected_prev = previous.hash if previous else GENESIS
    if entry.prev_hash != expected_prev:
        chained_to = by_hash.get(entry.prev_hash)
        if chained_to is not None and chained_to.seq > entry.seq:
            return Finding(
                entry.seq,
                "reordered",
                f"{_describe(entry)} was written after entry {chained_to.seq} but now stands "
                "before it: entries were reordered",
            )
        if entry.seq != expected_seq:
            return Finding(
                expected_seq,
                "removed",
                f"{_span(expected_seq, entry.seq - 1)} removed: the log goes from entry "
                f"{expected_seq - 1} to {_describe(entry)}",
            )
        return Finding(
            entry.seq,
            "removed",
            f"{_describe(entry)} is chained to an entry that is not in the log: the entry "
            "before it was removed (and the rest renumbered) or replaced",
        )
    if entry.hash != entry_hash(
        entry.seq, entry.run_id, entry.type, entry.at, entry.body, entry.prev_hash
    ):
        return Finding(
            entry.seq,
            "edited",
            f"{_describe(entry)} does not match its hash: its content was edited after it "
            "was written",
        )
    if not verify_signature(key, entry.signature, entry_message(entry.hash)):
        state = "has no signature" if not entry.signature else "has an invalid signature"
        if head_seq is not None and entry.seq > head_seq:
            kind, how = "inserted", f"appended after the signed head (entry {head_seq})"
        else:
            kind, how = "forged", "inserted, or rewritten with a recomputed hash"
        return Finding(
            entry.seq,
            kind,
            f"{_describe(entry)} {state} although its hash is consistent: it was written by "
            f"someone without the signing key — {how}",
        )
    return None


def _check_index(entry: Entry, columns: tuple[str | None, str | None] | None) -> Finding | None:
    """Return a finding if the store's query columns do not say what the entry's body says."""
    body = (entry.body.get("client"), entry.body.get("machine"))
    if columns is None or columns == body:
        return None
    return Finding(
        entry.seq,
        "edited",
        f"{_describe(entry)} is filed under client/machine {columns[0]}/{columns[1]} but its "
        f"signed content says {body[0]}/{body[1]}: the store's index columns were edited "
        "(this hides the run from per-client views, reports and exports)",
    )


def _check_head(
    entries: Sequence[Entry], head: Head | None, key: Ed25519PublicKey
) -> Finding | None:
    """Return what is wrong at the end of the log according to the signed head, or None."""
    last = entries[-1] if entries else None
    if head is None:
        if last is None:
            return None
        return Finding(
            None,
            "removed",
            "the signed head file is missing: entries removed from the end of the log could "
            f"not be detected (the log ends at {_describe(last)})",
        )
    if not head.valid(key):
        return Finding(
            head.seq, "forged", "the head file's signature is invalid: the head was forged"
        )
    if last is None or head.seq > last.seq:
        end = f"ends at entry {last.seq}" if last else "is empty"
        first_missing = last.seq + 1 if last else 1
        return Finding(
            first_missing,
            "removed",
            f"the log {end} but the signed head names entry {head.seq}: "
            f"{_span(first_missing, head.seq)} removed from the end",
        )
    named = next((e for e in entries if e.seq == head.seq), None)
    if named is None or named.hash != head.hash:
        return Finding(
            head.seq,
            "edited",
            f"the signed head names entry {head.seq} with hash {head.hash[:16]}..., but the "
            "log's entry there differs: it was replaced",
        )
    # A head behind the last entry is no problem: the chain and signatures already prove the
    # entries past it were written with the key (the head lags only after a crash).
    return None


def verify_entries(
    entries: Sequence[Entry],
    key: Ed25519PublicKey,
    head: Head | None,
    index: Mapping[int, tuple[str | None, str | None]] | None = None,
) -> Verdict:
    """Given every entry in log order, the public key and the signed head, return the verdict.

    ``index`` holds the store's query columns (client, machine) per seq, if it keeps any:
    they are not hashed, so they are compared with each entry's body.

    The first problem found is reported; entries after it are not judged (one tampering
    breaks the links of everything after it).
    """
    by_hash = {e.hash: e for e in entries}
    head_seq = head.seq if head and head.valid(key) else None
    problem = None
    previous = None
    for entry in entries:
        problem = _check_entry(entry, previous, by_hash, key, head_seq)
        if problem is None and index is not None:
            problem = _check_index(entry, index.get(entry.seq))
        if problem:
            break
        previous = entry
    if (
        problem
        and problem.kind in ("forged", "inserted")
        and not any(verify_signature(key, e.signature, entry_message(e.hash)) for e in entries)
    ):
        problem = Finding(
            problem.seq,
            "forged",
            f"no entry of the log verifies with this public key ({len(entries)} entries): the "
            "key is not this log's (check --pubkey), or the whole log was re-signed",
        )
    problem = problem or _check_head(entries, head, key)
    return Verdict(
        entries=len(entries),
        runs=len({e.run_id for e in entries if e.type == "start"}),
        first=entries[0] if entries else None,
        last=entries[-1] if entries else None,
        head=head,
        problem=problem,
    )
