"""The maintenance-log store: entries in an embedded SQLite database (WAL) in the state directory.

Entries are only ever inserted. Each insert runs in an ``IMMEDIATE`` transaction that reads the
last hash, writes the next entry with the Ed25519 signature of its hash, and replaces the signed
head file, so concurrent recoverd processes extend one signed chain.

Schema versions: databases made before signing have no ``signature`` column; opening one adds
it and, if the chain is intact at that moment, signs the existing entries (the signature then
attests the log as found at the upgrade).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import recoverd
from recoverd.errors import RecoverdError
from recoverd.log.record import GENESIS, Entry, canonical, entry_hash, parse_body
from recoverd.log.signing import (
    Head,
    LogKey,
    entry_message,
    key_fingerprint,
    verify_signature,
)
from recoverd.log.verify import Row

COLUMNS = "seq, run_id, type, at, body, prev_hash, hash, signature"

SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    seq       INTEGER PRIMARY KEY,
    run_id    TEXT NOT NULL,
    type      TEXT NOT NULL,
    at        TEXT NOT NULL,
    client    TEXT,
    machine   TEXT,
    body      TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash      TEXT NOT NULL,
    signature TEXT
);
CREATE INDEX IF NOT EXISTS entries_run ON entries (run_id, type);
CREATE INDEX IF NOT EXISTS entries_machine ON entries (client, machine, seq);
CREATE INDEX IF NOT EXISTS entries_machine_at ON entries (machine, type, at);
CREATE INDEX IF NOT EXISTS entries_type_at ON entries (type, at);
CREATE INDEX IF NOT EXISTS entries_level ON entries (
    client, machine, json_extract(body, '$.level'), seq
) WHERE type = 'start';
CREATE TABLE IF NOT EXISTS marks (name TEXT PRIMARY KEY, seq INTEGER NOT NULL);
"""
MAX_VARIABLES = 30_000
"""Run ids bound in one query (SQLite allows 32,766 variables per statement)."""

ENDED_UP_TO = "ended_up_to"
"""The mark (in table ``marks``) below which every run has an end entry: the search for open
runs starts above it. It is derived from the entries, not part of the record: an index for the
search, which `log verify` does not need."""

# The start entries of a machine's level, newest first along entries_level (an index on the
# hashed body's level). Its retention runs share the level's name; the action tells them apart.
_LEVEL_START = (
    "type = 'start' AND client = :client AND machine = :machine "
    "AND json_extract(body, '$.level') = :level"
)
_ACTION = "json_extract(body, '$.action') = :action"
# The state of run s is that of its last end entry (an end is never edited, only added).
_STATE = (
    "(SELECT json_extract(e.body, '$.state') FROM entries e "
    "WHERE e.run_id = s.run_id AND e.type = 'end' ORDER BY e.seq DESC LIMIT 1)"
)

# The report's queries (see SQLiteStore.runs_started_rows, last_good_backup_id and
# bytes_added_by_repository); module constants so that tests can check their query plans.
RUNS_STARTED = (
    "SELECT s.run_id, (SELECT count(*) FROM entries x WHERE x.run_id = s.run_id), "
    "s.seq, s.at, s.body, s.hash, s.prev_hash, "
    "e.seq, e.at, e.body, e.hash, e.prev_hash "
    "FROM entries s LEFT JOIN entries e ON e.run_id = s.run_id AND e.type = 'end' "
    "WHERE s.type = 'start' AND s.client = ? AND s.at >= ? AND s.at < ? ORDER BY s.seq"
)

# Start entries s joined to their run's last end entry e: a run's view shows that end's state
# and stats (an end is never edited, only added). The index entries_run ends in seq, so max is
# one probe.
_LAST_END = (
    "FROM entries s JOIN entries e ON e.seq = (SELECT max(x.seq) "
    "FROM entries x WHERE x.run_id = s.run_id AND x.type = 'end') "
)

LAST_GOOD_BACKUP = (
    "SELECT s.run_id " + _LAST_END +
    # `+` keeps the planner off the (machine, type, at) index: that reads every start
    # before the instant and sorts them, where this reads backwards from it.
    "WHERE s.client = ? AND s.machine = ? AND +s.type = 'start' AND +s.at < ? "
    "AND json_extract(s.body, '$.action') = 'backup' "
    "AND (? IS NULL OR json_extract(s.body, '$.level') = ?) "
    # The state a run's view shows is its last end entry's.
    "AND json_extract(e.body, '$.state') = 'succeeded' "
    "ORDER BY s.seq DESC LIMIT 1"
)

BYTES_ADDED = (
    "SELECT json_extract(s.body, '$.repository'), sum(CASE WHEN "
    "json_type(e.body, '$.stats.bytes_added') IN ('integer', 'real') "
    "THEN CAST(json_extract(e.body, '$.stats.bytes_added') AS INTEGER) ELSE 0 END) " + _LAST_END +
    # `+`: through the client's rows (client, machine, seq), not every client's starts.
    "WHERE s.client = ? AND +s.type = 'start' AND +s.at < ? "
    "AND json_extract(s.body, '$.action') = 'backup' "
    "GROUP BY 1"
)


def backup_history_query(boundaries: int) -> str:
    """The query of :meth:`SQLiteStore.backup_history` for ``boundaries`` month starts: the
    client's backup runs before the last boundary, grouped by repository, month bucket (-1
    before the first boundary, then 0, 1, ...) and final state; one pass through the client's
    rows, as BYTES_ADDED."""
    bucket = " ".join(f"WHEN s.at < ? THEN {i - 1}" for i in range(boundaries - 1))
    return (
        "SELECT json_extract(s.body, '$.repository'), "
        f"CASE {bucket} ELSE {boundaries - 2} END, json_extract(e.body, '$.state'), count(*), "
        "sum(CASE WHEN json_type(e.body, '$.stats.bytes_added') IN ('integer', 'real') "
        "THEN CAST(json_extract(e.body, '$.stats.bytes_added') AS INTEGER) ELSE 0 END) "
        + _LAST_END
        + "WHERE s.client = ? AND +s.type = 'start' AND +s.at < ? "
        "AND json_extract(s.body, '$.action') = 'backup' "
        "GROUP BY 1, 2, 3"
    )


_body = parse_body


class SQLiteStore:
    """The default store of the maintenance log (``maintenance.db`` in the state directory)."""

    def __init__(self, state_dir: Path) -> None:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = state_dir / "maintenance.db"
        if not self.path.exists():
            # Create it 0600 before SQLite opens it: the log names clients and machines.
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA busy_timeout=30000")
            self._db.executescript(SCHEMA)
        except sqlite3.Error as exc:
            raise RecoverdError(f"cannot open the maintenance log {self.path}: {exc}") from None
        self._lock = threading.RLock()
        self._depth = 0
        self.key = LogKey(state_dir)
        self._vouched = -1
        """The last entry known to be signed with our key (see _refuse_other_key)."""
        self._migrate()

    def _migrate(self) -> None:
        """Add the ``signature`` column to a database from before signing, and sign it."""
        with self.transaction():
            columns = [r[1] for r in self._db.execute("PRAGMA table_info(entries)")]
            if "signature" in columns:
                return
            self._db.execute("ALTER TABLE entries ADD COLUMN signature TEXT")
            entries = list(self.entries())
            prev = GENESIS
            for e in entries:
                if e.prev_hash != prev or e.hash != entry_hash(
                    e.seq, e.run_id, e.type, e.at, e.body, e.prev_hash
                ):
                    # Never sign a broken chain: `log verify` shows these entries unsigned.
                    return
                prev = e.hash
            for e in entries:
                self._db.execute(
                    "UPDATE entries SET signature = ? WHERE seq = ?",
                    (self.key.sign_entry(e.hash), e.seq),
                )
            if entries:
                self.key.write_head(entries[-1].seq, entries[-1].hash)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Hold the write lock of the database for the block (nested blocks join the outer)."""
        with self._lock:
            self._depth += 1
            try:
                if self._depth == 1:
                    self._db.execute("BEGIN IMMEDIATE")
                yield
                if self._depth == 1:
                    self._db.execute("COMMIT")
            except BaseException:
                if self._depth == 1:
                    self._db.execute("ROLLBACK")
                    self._rewrite_head()
                raise
            finally:
                self._depth -= 1

    def write(self, run_id: str, type_: str, at: str, body: dict[str, Any]) -> Entry:
        """Append one entry at the end of the chain and return it as stored."""
        body = json.loads(canonical(body))  # what is hashed is exactly what is read back
        with self.transaction():
            row = self._db.execute("SELECT seq, hash FROM entries ORDER BY seq DESC LIMIT 1")
            last = row.fetchone()
            seq, prev = (last[0] + 1, last[1]) if last else (1, GENESIS)
            digest = entry_hash(seq, run_id, type_, at, body, prev)
            self._refuse_new_key_for_signed_log()
            self._refuse_other_key(last)
            signature = self.key.sign_entry(digest)
            self._db.execute(
                "INSERT INTO entries VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    seq,
                    run_id,
                    type_,
                    at,
                    body.get("client"),
                    body.get("machine"),
                    canonical(body),
                    prev,
                    digest,
                    signature,
                ),
            )
            # Inside the transaction: heads are replaced in the order entries are committed.
            self.key.write_head(seq, digest)
            self._vouched = seq
        return Entry(seq, run_id, type_, at, body, prev, digest, signature)

    def _refuse_new_key_for_signed_log(self) -> None:
        """Raise RecoverdError if the key is gone but entries were signed with it.

        A silently made new key would leave every earlier signature unverifiable.
        """
        if self.key.exists:
            return
        query = "SELECT 1 FROM entries WHERE signature IS NOT NULL LIMIT 1"
        if self._db.execute(query).fetchone():
            raise RecoverdError(
                f"the log signing key {self.key.path} is missing, but the maintenance log has "
                "entries signed with it: restore that file from your backup of the state "
                "directory (nothing is written to the log until then)"
            )

    def _refuse_other_key(self, last: tuple[int, str] | None) -> None:
        """Raise RecoverdError if the last entry was signed with another key than ours.

        A key swapped in the state directory would otherwise extend the log with signatures
        that no auditor's public key verifies. Checked once per process and again whenever
        another process wrote last (one signature check, about 0.1 ms).
        """
        if (last[0] if last else 0) == self._vouched:
            return
        self._refuse_log_behind_record(last)
        if last is None:
            return
        row = self._db.execute("SELECT signature FROM entries WHERE seq = ?", (last[0],))
        signature = row.fetchone()[0]
        if signature is None:  # an entry from before signing that was never signed
            return
        public = self.key.private().public_key()
        if not verify_signature(public, signature, entry_message(last[1])):
            raise RecoverdError(
                f"the log signing key {self.key.path} ({key_fingerprint(public)}) is not the key "
                f"this maintenance log was signed with (entry {last[0]} does not verify with "
                "it): restore the log's own key, or point RECOVERD_LOG_KEY_FILE at it; nothing "
                "is written to the log until then"
            )
        self._vouched = last[0]

    def _refuse_log_behind_record(self, last: tuple[int, str] | None) -> None:
        """Raise RecoverdError if the key's record names an entry this log does not hold.

        Extending a log that was rolled back or wiped (a copy of the state directory put
        back) would otherwise bury the evidence under new entries.
        """
        record = self.key.read_record()
        if record is None:
            return
        row = self._db.execute("SELECT hash FROM entries WHERE seq = ?", (record.seq,))
        found = row.fetchone()
        if found is None or found[0] != record.hash:
            now = f"ends at entry {last[0]}" if last else "is empty"
            raise RecoverdError(
                f"the maintenance log {self.path} {now}, but its signing key's record "
                f"{self.key.record_path} names entry {record.seq}: the log was rolled back, "
                "wiped or replaced; put the log that goes with this key back (nothing is "
                "written to the log until then)"
            )

    def _rewrite_head(self) -> None:
        """Point the head back at the last committed entry (after a rolled-back write)."""
        last = self._db.execute("SELECT seq, hash FROM entries ORDER BY seq DESC LIMIT 1")
        row = last.fetchone()
        if row and self.key.exists:
            self.key.write_head(row[0], row[1])

    def entries(self, run_ids: list[str] | None = None) -> Iterator[Entry]:
        """Yield every entry in log order, or only those of ``run_ids``."""
        query = f"SELECT {COLUMNS} FROM entries"
        with self._lock:
            if run_ids is None:
                rows = self._db.execute(query + " ORDER BY seq").fetchall()
            else:
                rows = []
                for first in range(0, len(run_ids), MAX_VARIABLES):
                    chunk = run_ids[first : first + MAX_VARIABLES]
                    where = f" WHERE run_id IN ({','.join('?' * len(chunk))})"
                    rows += self._db.execute(query + where, chunk).fetchall()
                rows.sort()  # by seq, the first column
        for seq, run_id, type_, at, body, prev, digest, signature in rows:
            yield Entry(seq, run_id, type_, at, _body(body), prev, digest, signature)

    @contextmanager
    def snapshot(self) -> Iterator[LogSnapshot]:
        """Hold one consistent view of the entries and the signed head for the block.

        The view is a read transaction on a second connection, begun while this one holds
        the write lock (so the head file matches it); writers are not held up while it is
        read, which for `log verify` of a large log takes seconds.
        """
        reader = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            with self.transaction():
                reader.execute("BEGIN")
                reader.execute("SELECT seq FROM entries ORDER BY seq DESC LIMIT 1").fetchall()
                head = self.key.read_head()
            yield LogSnapshot(reader, head)
            reader.execute("COMMIT")
        finally:
            reader.close()

    def run_ids(
        self,
        client: str | None = None,
        machine: str | None = None,
        since: str | None = None,
    ) -> list[str]:
        """Return the ids of runs started by matching start entries, oldest first."""
        query = "SELECT run_id FROM entries WHERE type = 'start'"
        params: list[Any] = []
        for column, value in (("client", client), ("machine", machine)):
            if value is not None:
                query += f" AND {column} = ?"
                params.append(value)
        if since is not None:
            query += " AND at >= ?"
            params.append(since)
        with self._lock:
            return [r[0] for r in self._db.execute(query + " ORDER BY seq", params)]

    def runs_started_rows(self, client: str, since: str, until: str) -> list[tuple[Any, ...]]:
        """Return the client's runs whose start entry is dated in [``since``, ``until``)
        (ISO 8601, UTC), in log order, one row per start and end entry pair:

        run_id, number of entries of the run, then seq, at, body, hash and prev_hash of the
        start and of an end entry (None if it has none). Runs with more than these two
        entries (accepted, or ended twice) have a row per end entry.
        """
        with self._lock:
            return self._db.execute(RUNS_STARTED, (client, since, until)).fetchall()

    def last_good_backup_id(
        self, client: str, machine: str, level: str | None, before: str
    ) -> str | None:
        """Return the id of the newest (in log order) succeeded backup run of a machine (of
        ``level``, if given) that started before ``before`` (ISO 8601, UTC), or None.

        The machine's entries are read backwards through the (client, machine, seq) index,
        so this costs about as many rows as the machine has after the instant.
        """
        with self._lock:
            row = self._db.execute(
                LAST_GOOD_BACKUP, (client, machine, before, level, level)
            ).fetchone()
        return row[0] if row else None

    def first_start_at(self, client: str, machine: str) -> str | None:
        """Return the time of the machine's first start entry (the (client, machine, seq)
        index: one probe), or None."""
        query = (
            "SELECT at FROM entries WHERE client = ? AND machine = ? AND type = 'start' "
            "ORDER BY seq LIMIT 1"
        )
        with self._lock:
            row = self._db.execute(query, (client, machine)).fetchone()
        return row[0] if row else None

    def bytes_added_by_repository(self, client: str, before: str) -> dict[str | None, int]:
        """Return, per repository, the sum of ``stats.bytes_added`` of the client's backup runs
        started before ``before`` (ISO 8601, UTC): one aggregate over that whole history, on
        a connection of its own (SQLite runs it without Python's GIL, so a thread can do it
        while the caller works on)."""
        db = sqlite3.connect(self.path, check_same_thread=False)
        try:
            # The client's rows are spread over the whole table and visited machine by machine:
            # mapped pages are revisited without a read() each time (a third less CPU).
            db.execute("PRAGMA mmap_size = 2147418112")
            return dict(db.execute(BYTES_ADDED, (client, before)).fetchall())
        finally:
            db.close()

    def backup_history(
        self, client: str, boundaries: list[str]
    ) -> list[tuple[str | None, int, str | None, int, int]]:
        """Given month starts (ISO 8601, UTC, ascending; the last one is the end of the
        newest month), return the client's backup runs started before the last one as rows
        (repository, bucket, state, runs, bytes added): bucket -1 is before the first
        boundary, bucket i the month from boundary i. One aggregate over the client's whole
        history, on a connection of its own (see bytes_added_by_repository)."""
        db = sqlite3.connect(self.path, check_same_thread=False)
        try:
            db.execute("PRAGMA mmap_size = 2147418112")
            query = backup_history_query(len(boundaries))
            return db.execute(query, (*boundaries[:-1], client, boundaries[-1])).fetchall()
        finally:
            db.close()

    def open_runs(self) -> list[Entry]:
        """Return the start entries of runs that have no end entry yet, oldest first.

        Every open of the log asks this, so the search starts above the mark ENDED_UP_TO, which
        it then moves up to just below the oldest run still open (or to the last entry). A
        log without the mark (new, or from before it) is searched whole once.
        """
        query = (
            # NOT INDEXED: walk the entries above the mark by seq, not every start by type.
            f"SELECT {COLUMNS} FROM entries AS s NOT INDEXED "
            "WHERE seq > ? AND type = 'start' AND NOT EXISTS "
            "(SELECT 1 FROM entries e WHERE e.run_id = s.run_id AND e.type = 'end') "
            "ORDER BY seq"
        )
        with self.transaction():
            row = self._db.execute("SELECT seq FROM marks WHERE name = ?", (ENDED_UP_TO,))
            mark = (row.fetchone() or (0,))[0]
            rows = self._db.execute(query, (mark,)).fetchall()
            if rows:
                ended_up_to = rows[0][0] - 1
            else:
                last = self._db.execute("SELECT max(seq) FROM entries").fetchone()[0]
                ended_up_to = last or 0
            if ended_up_to != mark:
                self._db.execute(
                    "INSERT OR REPLACE INTO marks (name, seq) VALUES (?, ?)",
                    (ENDED_UP_TO, ended_up_to),
                )
        return [Entry(r[0], r[1], r[2], r[3], _body(r[4]), *r[5:]) for r in rows]

    def level_run_ids(
        self,
        client: str,
        machine: str,
        level: str,
        action: str,
        since: str,
        good_states: tuple[str, ...],
    ) -> list[str]:
        """Return the ids of the runs a level's schedule depends on, oldest first: the level's
        newest run, its newest run that ended in one of ``good_states`` (however old), and
        every run of it started at or after ``since``.

        Index walks from the newest start of the level (entries_level) and a search by date
        (entries_machine_at), however long the history.
        """
        states = {f"s{i}": state for i, state in enumerate(good_states)}
        good = ", ".join(f":{name}" for name in states) or "NULL"
        query = f"""
            SELECT run_id, seq FROM (
                SELECT run_id, seq FROM entries WHERE {_LEVEL_START} AND {_ACTION}
                ORDER BY seq DESC LIMIT 1
            )
            UNION
            SELECT run_id, seq FROM (
                SELECT run_id, seq FROM entries s
                WHERE {_LEVEL_START} AND {_ACTION} AND {_STATE} IN ({good})
                ORDER BY seq DESC LIMIT 1
            )
            UNION
            SELECT run_id, seq FROM entries WHERE {_LEVEL_START} AND {_ACTION} AND at >= :since
            ORDER BY seq
        """
        params = {
            "client": client,
            "machine": machine,
            "level": level,
            "action": action,
            "since": since,
            **states,
        }
        with self._lock:
            return [r[0] for r in self._db.execute(query, params)]

    def newest_level_run_id(
        self,
        client: str,
        machine: str,
        level: str,
        state: str | tuple[str, ...] | None = None,
        action: str | None = None,
    ) -> str | None:
        """Return the id of the newest run of a machine's level (of ``action``, if given, else
        any), or of the newest in ``state`` (one, or any of several); None if there is none.
        An index walk from the newest start."""
        states = (state,) if isinstance(state, str) else state
        params: dict[str, Any] = {"client": client, "machine": machine, "level": level}
        if states is None:
            condition = "1"
        elif states == ("running",):
            condition = (
                "NOT EXISTS (SELECT 1 FROM entries e WHERE e.run_id = s.run_id AND e.type = 'end')"
            )
        else:
            params.update({f"s{i}": name for i, name in enumerate(states)})
            condition = f"{_STATE} IN ({', '.join(f':s{i}' for i in range(len(states)))})"
        if action is not None:
            condition += f" AND {_ACTION}"
            params["action"] = action
        query = (
            f"SELECT run_id FROM entries s WHERE {_LEVEL_START} AND {condition} "
            "ORDER BY seq DESC LIMIT 1"
        )
        with self._lock:
            row = self._db.execute(query, params).fetchone()
        return row[0] if row else None

    def close(self) -> None:
        with self._lock:
            self._db.close()


class LogSnapshot:
    """A read-only view of the store at one moment, with the signed head of that moment (the
    :class:`recoverd.log.verify.ChainSource` that `log verify` walks)."""

    # The index columns are copies of the body's fields for queries, not hashed: the walk
    # flags each entry whose columns disagree with its body (json_extract, so no parsing in
    # Python; a body that is no JSON must have empty columns, as it has no client).
    CHAIN = (
        "SELECT seq, run_id, type, at, body, prev_hash, hash, signature, client, machine, "
        "CASE WHEN json_valid(body) THEN client IS NOT json_extract(body, '$.client') "
        "OR machine IS NOT json_extract(body, '$.machine') "
        "ELSE client IS NOT NULL OR machine IS NOT NULL END "
        "FROM entries WHERE seq >= ? ORDER BY seq"
    )

    def __init__(self, db: sqlite3.Connection, head: Head | None) -> None:
        self._db = db
        self.head = head

    def chain(self, first_seq: int = 1) -> Iterator[Row]:
        """Yield the entries from ``first_seq`` on in log order, streamed from the database."""
        yield from self._db.execute(self.CHAIN, (first_seq,))

    def seq_of_hash(self, digest: str) -> int | None:
        row = self._db.execute("SELECT seq FROM entries WHERE hash = ?", (digest,)).fetchone()
        return row[0] if row else None

    def hash_at(self, seq: int) -> str | None:
        row = self._db.execute("SELECT hash FROM entries WHERE seq = ?", (seq,)).fetchone()
        return row[0] if row else None

    def at_of(self, seq: int) -> str | None:
        """Return the time of entry ``seq``, or None if there is none."""
        row = self._db.execute("SELECT at FROM entries WHERE seq = ?", (seq,)).fetchone()
        return row[0] if row else None

    def last_seq(self) -> int | None:
        """Return the seq of the last entry, or None if the log is empty."""
        return self._db.execute("SELECT max(seq) FROM entries").fetchone()[0]

    def first_seq_since(self, at: str) -> int | None:
        """Return the first entry (in log order) dated ``at`` (ISO 8601, UTC) or later."""
        query = "SELECT min(seq) FROM entries WHERE type IN ('start', 'end', 'accept') AND at >= ?"
        return self._db.execute(query, (at,)).fetchone()[0]


@recoverd.hookimpl
def recoverd_add_log_sinks(register: Any) -> None:
    register.add("sqlite", SQLiteStore)
