"""A run's lifecycle: a start entry, the work, exactly one end entry.

:func:`recorded_run` wraps the work of one run; whatever happens inside — a result, a
foreseeable error, Ctrl-C, a bug — the run ends in exactly one state in the maintenance log.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recoverd.engine import Outcome
from recoverd.errors import Interrupted, RecoverdError, Stalled, unexpected
from recoverd.log import MaintenanceLog

_log = logging.getLogger(__name__)

EXIT_BY_STATE = {"succeeded": 0, "skipped": 0, "partial": 3, "failed": 1, "interrupted": 130}


@dataclass
class RunHandle:
    """The run being recorded: set ``outcome`` inside the block; ``view`` is set after it."""

    id: str
    outcome: Outcome | None = None
    view: dict[str, Any] = field(default_factory=dict)


@contextmanager
def recorded_run(log: MaintenanceLog, **start: Any) -> Iterator[RunHandle]:
    """Record a run around the block; ``start`` holds the start entry's fields.

    A RecoverdError inside the block ends the run ``failed`` with its message and is not
    re-raised (the caller reads ``view``); so does any other exception (a library's own, a
    bug), with its type and message, and where it was raised in the stats. Ctrl-C and
    Interrupted end it ``interrupted`` and are re-raised, as is what is no Exception
    (SystemExit).
    """
    handle = RunHandle(log.start(**start))
    try:
        yield handle
    except (KeyboardInterrupt, Interrupted) as exc:
        # An Interrupted says what became of the work (e.g. the process stopped on the machine).
        error = str(exc) if isinstance(exc, Interrupted) else "stopped by the operator"
        handle.view = log.finish(handle.id, "interrupted", error=error)
        raise
    except RecoverdError as exc:
        # The daemon retries a transient failure (host down, lock held) and waits for the
        # next slot after a permanent one: the log, not memory, tells which it was.
        stats: dict[str, Any] = {"transient": True} if exc.transient else {}
        if isinstance(exc, Stalled):
            stats["stalled"] = True  # what a `stalled` alert looks for
        handle.view = log.finish(handle.id, "failed", error=str(exc), stats=stats)
    except Exception as exc:
        # As a foreseen error: the run ends failed with the reason and the command goes on to
        # its next run (and exits 1). The traceback goes to the debug log.
        _log.debug("run %s failed", handle.id, exc_info=True)
        error = unexpected(exc, "internal error")
        handle.view = log.finish(handle.id, "failed", error=str(error), stats=_raised_at(exc))
    except BaseException as exc:
        handle.view = log.finish(handle.id, "failed", error=f"internal error: {exc!r}")
        raise
    else:
        outcome = handle.outcome or Outcome("failed", error="the run produced no result")
        handle.view = log.finish(
            handle.id,
            outcome.state,
            snapshot=outcome.snapshot,
            stats=outcome.stats,
            error=outcome.error,
        )


def _raised_at(exc: BaseException) -> dict[str, Any]:
    """Return where ``exc`` was raised (``file.py:123 in function``), for the run's stats."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return {}
    last = frames[-1]
    return {"raised_at": f"{Path(last.filename).name}:{last.lineno} in {last.name}"}


def exit_code(views: list[dict[str, Any]]) -> int:
    """Return the command's exit code for the runs it did: the worst of their states."""
    codes = [EXIT_BY_STATE.get(v.get("state") or "failed", 1) for v in views]
    for code in (130, 1, 3):
        if code in codes:
            return code
    return 0
