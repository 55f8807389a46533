"""How long the daemon takes to look at its schedules with a long maintenance log.

Builds a state directory with MACHINES machines of four levels each (nightly, weekly, monthly,
every 4 hours) and DAYS days of succeeded runs with their retention, then times
``recoverd status``'s full look at every level and the daemon's first and next ticks (the next
one reads the log only for machines that fell due). The log uses the real SQLite store; only the
history is written without fsync, to build it quickly.

    .venv/bin/python bench/bench_due.py [MACHINES] [DAYS]     # default 50 365
"""

from __future__ import annotations

import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from recoverd.actions.daemon import Daemon
from recoverd.actions.due import duties
from recoverd.clock import FakeClock, use_clock
from recoverd.controller import Controller

LEVELS = {
    "nightly": "day at 01:30",
    "weekly": "sunday at 03:00",
    "monthly": "month on day 1 at 05:00",
    "hourly": "4 hours",
}


def build(root: Path, machines: int, days: int, now: datetime) -> None:
    """Write the policy and ``days`` days of history before ``now``."""
    (root / "policies").mkdir(parents=True)
    text = '[client]\nname = "Bench"\ntimezone = "Asia/Shanghai"\n'
    text += '[repositories.nas]\nurl = "/nonexistent"\npassword = "env:HOME"\n'
    for m in range(machines):
        text += f'[machines.m{m}]\ntransport = "local"\n'
        for name, every in LEVELS.items():
            text += f'[[machines.m{m}.levels]]\nname = "{name}"\nkind = "files"\n'
            text += f'repository = "nas"\npaths = ["/srv"]\nevery = "{every}"\n'
    (root / "policies" / "bench.toml").write_text(text)
    ctl = Controller(root / "policies", root / "state")
    ctl.log.store._db.execute("PRAGMA synchronous=OFF")
    with ctl.log.store.transaction():
        for d in range(days):
            day = now - timedelta(days=days - d)
            runs = [("nightly", day), *(("hourly", day + timedelta(hours=4 * k)) for k in range(6))]
            if day.weekday() == 6:
                runs.append(("weekly", day))
            if day.day == 1:
                runs.append(("monthly", day))
            for m in range(machines):
                for level, at in runs:
                    for action in ("backup", "prune"):
                        run = ctl.log.start(
                            client="bench",
                            machine=f"m{m}",
                            level=level,
                            kind="files",
                            action=action,
                            at=at,
                        )
                        ctl.log.finish(run, "succeeded", at=at)


def main() -> None:
    machines = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    days = int(sys.argv[2]) if len(sys.argv) > 2 else 365
    now = datetime(2026, 11, 26, 0, 10, tzinfo=UTC)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        started = time.monotonic()
        build(root, machines, days, now)
        print(f"history: {machines} machines x {days} days in {time.monotonic() - started:.1f}s")
        ctl = Controller(root / "policies", root / "state")
        print(f"runs in the log: {len(ctl.log.store.run_ids())}")
        started = time.monotonic()
        found = duties(ctl, now)
        took = time.monotonic() - started
        print(f"status (every level, full look): {len(found)} levels in {took:.2f}s")
        with use_clock(FakeClock(now)) as clock:
            daemon = Daemon(ctl, tick_seconds=3600)
            daemon._dispatch = lambda *args: False  # type: ignore[method-assign]  # look only
            timed(daemon, "first tick (everything due, nothing started)")
            for duty in found:  # as if the due levels had run
                if duty.runnable:
                    m, level = duty.machine, duty.level
                    run = ctl.log.start(
                        client=m.client, machine=m.name, level=level.name, kind="files",
                        action="backup",
                    )  # fmt: skip
                    ctl.log.finish(run, "succeeded")
                    daemon._ended.add(m.qualified_name)
            timed(daemon, "tick after every machine's run ended")
            timed(daemon, "next tick, nothing due")
            clock.advance(timedelta(hours=5))
            timed(daemon, "tick 5 hours later (every machine's 4-hour level due)")


def timed(daemon: Daemon, label: str) -> None:
    started = time.monotonic()
    daemon.tick()
    print(f"daemon {label}: {time.monotonic() - started:.3f}s")


if __name__ == "__main__":
    main()
