"""The gateway's handshake worker: key exchanges off the forwarding thread.

The UDP receive thread only checks an INIT's type, length and MAC1 (one
BLAKE2s, session.Responder.initiation) and hands it here with submit(): a
bounded queue, dropped and counted when full, so a flood of initiations can
never hold up forwarding. This thread then, per INIT:

1. under load, wants a valid MAC2 (a cookie bound to the source address and
   port, tunnelgate/cookie.py) and otherwise answers with a COOKIE reply and
   does no key exchange: a spoofed source never gets one;
2. rate-limits key exchanges per source address (ratelimit.TokenBuckets);
3. does the key exchange (Responder.handshake) and hands the result to the
   daemon (GatewayDaemon._handshake: address lease, SQLite write, RESP).

"Under load": LOAD_QUEUE initiations waiting, or LOAD_RATE arriving per
second, and for LOAD_HOLD_S after either (docs/protocol.md).
"""

from __future__ import annotations

import ctypes
import logging
import os
import queue
import threading
import time
from collections import Counter

from ..cookie import REPLY_RAND, needs_cookie, source_bytes
from ..ratelimit import TokenBuckets

log = logging.getLogger("tunnelgate.gateway")

QUEUE_MAX = 1024        # initiations waiting for the worker (WireGuard: 1024 too)
LOAD_QUEUE = 32         # under load from this many waiting ...
LOAD_RATE = 50          # ... or this many arriving per second (each costs ~0.3 ms of DH + a write)
LOAD_HOLD_S = 1.0       # ... and for this long after
RATE_PER_SOURCE = 10    # key exchanges per second and source address ([session] handshakes_per_source_s),
BURST_PER_SOURCE = 5    # in bursts of this many (or a quarter of a higher rate)
SOURCES_MAX = 4096
THREAD_NAME = "tg-handshakes"   # the OS name of the thread (/proc/PID/task/TID/comm), for per-thread CPU


def name_os_thread(name: str) -> None:
    # Python 3.11 names threads for itself only; the kernel's name lets tools
    # (top -H, the flood benchmark) tell this thread's CPU from the others'
    try:
        ctypes.CDLL(None, use_errno=True).prctl(15, name.encode()[:15], 0, 0, 0)   # PR_SET_NAME
    except (OSError, AttributeError):
        pass


class Handshakes:
    """submit() from the receive thread; run(running) is the worker thread's body
    (run under daemon/supervise.py like the data threads). accept(hs, now): the
    daemon's handling of a Handshake; send(datagram, addr): the socket's sendto."""

    def __init__(self, responder, accept, send, clock=time.monotonic, per_source: int = RATE_PER_SOURCE) -> None:
        self.responder, self.accept, self.send, self.clock = responder, accept, send, clock
        self.queue: queue.Queue = queue.Queue(QUEUE_MAX)
        self.limiter = TokenBuckets(per_source, max(BURST_PER_SOURCE, per_source // 4), SOURCES_MAX)
        self.counts: Counter[str] = Counter()
        self.arrived = 0
        self._window_at = clock()
        self._window_arrived = 0
        self._rate = 0.0
        self._loaded_until = float("-inf")
        self.native_id: int | None = None

    def submit(self, init) -> None:
        """Queue an Initiation (MAC1 checked) for the worker; never blocks."""
        self.arrived += 1
        try:
            self.queue.put_nowait(init)
        except queue.Full:
            self.counts["queue_full"] += 1

    def under_load(self, now: float) -> bool:
        elapsed = now - self._window_at
        if elapsed >= 1.0:
            self._rate = (self.arrived - self._window_arrived) / elapsed
            self._window_at, self._window_arrived = now, self.arrived
        if self.queue.qsize() >= LOAD_QUEUE or self._rate >= LOAD_RATE:
            self._loaded_until = now + LOAD_HOLD_S
        return now < self._loaded_until

    def run(self, running) -> None:
        self.native_id = threading.get_native_id()
        name_os_thread(THREAD_NAME)
        get = self.queue.get
        while running():
            try:
                init = get(timeout=0.5)
            except queue.Empty:
                continue
            self.process(init, self.clock())

    def process(self, init, now: float) -> None:
        datagram, addr = init
        src = source_bytes(addr)
        checker = self.responder.cookies
        if needs_cookie(checker, datagram, src, now, self.under_load(now)):
            self.counts["cookie_sent"] += 1
            self._send(checker.reply(datagram, src, now, os.urandom(REPLY_RAND)), addr)
            return
        if not self.limiter.allow(addr[0], now):
            self.counts["rate_limited"] += 1
            return
        self.counts["key_exchanges"] += 1
        hs = self.responder.handshake(init)
        if hs is not None:
            self.accept(hs, now)

    def _send(self, datagram: bytes, addr) -> None:
        try:
            self.send(datagram, addr)
        except OSError as e:
            self.counts["send_errors"] += 1
            log.debug("cookie reply to %s failed: %s", addr, e)

    def status(self) -> dict:
        """The `flood` block of `tunnelgate status`: handshakes dropped by reason."""
        return {"bad_mac1": self.responder.stats["bad_mac1"],
                "rate_limited": self.counts["rate_limited"],
                "queue_full": self.counts["queue_full"],
                "cookie_sent": self.counts["cookie_sent"],
                "key_exchanges": self.counts["key_exchanges"],
                "queued": self.queue.qsize(),
                "under_load": self.clock() < self._loaded_until,
                "worker_tid": self.native_id}
