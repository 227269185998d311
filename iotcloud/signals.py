"""Stopping a long-running command on SIGINT/SIGTERM without deadlocking it."""

from __future__ import annotations

import signal
import threading


def set_on_stop_signals(event: threading.Event) -> None:
    """Set `event` on SIGINT or SIGTERM. Not from the handler itself: it runs in the main thread, which
    may be holding that Event's lock at that moment (inside its wait()), and Event.set() there would
    wait for the lock forever (seen with a second signal arriving during the first). A thread sets it."""

    def handler(signum, frame):
        threading.Thread(target=event.set, name="stop-signal", daemon=True).start()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
