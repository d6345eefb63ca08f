"""Stop requests that arrive before the supervisor is running.

The entry point installs these handlers before importing anything heavy, so SIGTERM
during start-up (imports, connecting to NATS) becomes a clean stop instead of death by
the default handler. Only the standard library is imported here for that reason.
"""

from __future__ import annotations

import signal

_received: list[str] = []


def catch_early_signals() -> None:
    def remember(signum: int, _frame: object) -> None:
        _received.append(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, remember)
    signal.signal(signal.SIGINT, remember)


def early_signal() -> str | None:
    return _received[0] if _received else None
