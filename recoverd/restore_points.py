"""Which of a level's good backups a restore or a drill may take without being told.

Every succeeded backup is a restore point the engineer can name (``--snapshot ID``). The
default is stricter: it is never the image of a wiped device. Images recorded before the image
sanity check existed have no ``all_zeros`` in their stats; for them, losing the file system
that the image before had is what gives a wiped disk away.
"""

from __future__ import annotations

from typing import Any


def default_restore_points(good: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Given a level's succeeded backup runs oldest first (the log's views), return those that
    may be a default restore point, oldest first.

    Left out: an image whose stream was all zeros, and an image without a file system where
    the newest image kept before it had one, unless the engineer accepted that change
    (``--accept-change``) and the image is not all zeros.
    """
    kept = []
    had_fs = False
    for view in good:
        stats = view.get("stats") or {}
        if "image_format" not in stats:  # not an image: every good backup is a restore point
            kept.append(view)
            continue
        if stats.get("all_zeros") is True:
            continue
        has_fs = bool(stats.get("fs_type"))
        if had_fs and not has_fs and not stats.get("accepted_change"):
            continue
        had_fs = has_fs
        kept.append(view)
    return kept
