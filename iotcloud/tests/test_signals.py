"""set_on_stop_signals: a stop signal sets the event, even one that lands while the main thread waits on it."""

import os
import signal
import threading

from iotcloud.signals import set_on_stop_signals


def test_signals_arriving_while_the_main_thread_waits_on_the_event_set_it():
    stop = threading.Event()
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    set_on_stop_signals(stop)
    try:
        sender = threading.Timer(0.05, lambda: [os.kill(os.getpid(), signal.SIGTERM) for _ in range(20)])
        sender.start()
        assert stop.wait(5), "the event was not set"  # the main thread inside Event.wait, as a bridge is
        sender.join()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
