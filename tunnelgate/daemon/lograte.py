"""Rate limit for repeated log lines, so that a peer that triggers the same
warning thousands of times a second costs a few lines, not megabytes.

Per key, the first ``burst`` lines of each ``interval_s`` window pass; the rest
are counted, and the next line that passes (or ``drain``, called periodically)
says how many were suppressed.
"""

from __future__ import annotations

import logging

BURST = 10
INTERVAL_S = 10.0
MAX_KEYS = 4096       # keys are per peer at most; a flood of new keys resets the table


class LogLimiter:
    def __init__(self, burst: int = BURST, interval_s: float = INTERVAL_S):
        self.burst, self.interval_s = burst, interval_s
        # key -> [window start, lines passed in it, suppressed not yet reported]
        self._keys: dict[object, list] = {}

    def allow(self, key, now: float) -> int | None:
        """None: suppress this line.  Otherwise the count of lines suppressed before it
        (to append as "(N more suppressed)")."""
        st = self._keys.get(key)
        if st is None:
            if len(self._keys) >= MAX_KEYS:
                self._keys.clear()
            st = self._keys[key] = [now, 0, 0]
        if now - st[0] >= self.interval_s:
            st[0], st[1] = now, 0
        if st[1] >= self.burst:
            st[2] += 1
            return None
        st[1] += 1
        n, st[2] = st[2], 0
        return n

    def drain(self, now: float) -> list[tuple[object, int]]:
        """(key, suppressed) for keys whose window ended with lines still unreported;
        keys idle for a whole window are forgotten."""
        out = []
        for key, st in list(self._keys.items()):
            if now - st[0] < self.interval_s:
                continue
            if st[2]:
                out.append((key, st[2]))
                st[0], st[1], st[2] = now, 0, 0
            else:
                del self._keys[key]
        return out

    def log(self, logger: logging.Logger, level: int, key, now: float, msg: str, *args) -> None:
        n = self.allow(key, now)
        if n is None:
            return
        if n:
            logger.log(level, msg + " (%d more suppressed)", *args, n)
        else:
            logger.log(level, msg, *args)

