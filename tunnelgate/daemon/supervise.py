"""Keep a data-path thread running: whatever it raises is logged (with its
traceback, at most once per LOG_EVERY_S per thread) and the loop restarted,
because one thread's death would stop the daemon for every peer. A thread
failing again and again backs off instead of spinning a CPU on it."""

from __future__ import annotations

import logging
import time
from collections import deque

log = logging.getLogger("tunnelgate")

BURST = 5               # failures within WINDOW_S restarted at once ...
WINDOW_S = 10.0
BACKOFF_S = 0.1         # ... past that, sleep before restarting: doubling up to BACKOFF_MAX_S
BACKOFF_MAX_S = 5.0
LOG_EVERY_S = 10.0


def supervise(target, running, stats, name: str, recover=None,
              sleep=time.sleep, clock=time.monotonic) -> None:
    """Run target() until it returns or running() is false, restarting it
    after any exception. stats["thread_restarts"] and
    stats["thread_restarts_<name>"] count restarts (`tunnelgate status`
    shows them). recover(): undo what a failure mid-batch may have left
    (held wakeups), called before each restart."""
    failures: deque[float] = deque()
    last_log = None
    unlogged = 0
    backoff = BACKOFF_S
    while running():
        try:
            target()
            return
        except Exception:
            now = clock()
            stats["thread_restarts"] += 1
            stats[f"thread_restarts_{name}"] += 1
            if last_log is None or now - last_log >= LOG_EVERY_S:
                log.exception("data path thread %s failed; restarting it%s", name,
                              f" ({unlogged} more failures since the last report)" if unlogged else "")
                last_log, unlogged = now, 0
            else:
                unlogged += 1
            failures.append(now)
            while failures and now - failures[0] > WINDOW_S:
                failures.popleft()
        if recover is not None:
            try:
                recover()
            except Exception:
                log.exception("data path thread %s: recovering after a failure failed", name)
        if len(failures) > BURST:
            sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX_S)
        else:
            backoff = BACKOFF_S
