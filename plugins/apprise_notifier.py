"""The built-in notifier: any service Apprise knows (mailto://, json://, ntfy://, slack://, ...).

Apprise is imported at the first message, never by commands that send none (``status``, ``log``).
It reports a failed delivery by its return value, not an exception: that value is what
:meth:`AppriseNotifier.send` returns, so the outbox retries it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import recoverd
from recoverd.notify import Message, Notifier
from recoverd.plugins import lazy_import

apprise = lazy_import("apprise")

log = logging.getLogger(__name__)


class AppriseNotifier(Notifier):
    """Delivers messages through Apprise, one service per URL."""

    name = "apprise"
    schemes = ("*",)

    def send(self, urls: Sequence[str], message: Message) -> bool:
        sender = apprise.Apprise()
        for index, url in enumerate(urls):
            if not sender.add(url):
                # The URL holds a token or a password: say which one, never what it is.
                log.error("URL %d of the route is not an Apprise URL (see `apprise --help`)", index)
                return False
        result = sender.notify(
            body=message.body,
            title=message.title,
            notify_type=apprise.NotifyType(message.severity),
            body_format=apprise.NotifyFormat.TEXT,
        )
        return bool(result)


@recoverd.hookimpl
def recoverd_add_notifiers(register: Any) -> None:
    register.add("apprise", AppriseNotifier)
