"""The systemd notify protocol, spoken directly over its datagram socket.

Under `Type=notify` systemd sets `NOTIFY_SOCKET` (a path, or `@name` for the abstract
namespace) and, with `WatchdogSec=`, `WATCHDOG_USEC`. Without them every call is a no-op.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger("ssmd.notify")


class Notifier:
    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        self._address: str | bytes | None = None
        if address.startswith("@"):
            self._address = b"\0" + address[1:].encode()
        elif address.startswith("/"):
            self._address = address
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        watchdog_for_us = not pid or pid == str(os.getpid())
        self.watchdog_interval: float | None = (
            int(usec) / 1e6 / 2 if usec.isdigit() and int(usec) > 0 and watchdog_for_us else None
        )

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def send(self, *states: str) -> None:
        if self._address is None:
            return
        message = "\n".join(states).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto(message, self._address)
        except OSError as exc:
            log.warning("cannot notify systemd (%s): %s", message.decode(), exc)

    def ready(self, status: str = "") -> None:
        self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    def stopping(self, status: str = "") -> None:
        self.send("STOPPING=1", *([f"STATUS={status}"] if status else []))
