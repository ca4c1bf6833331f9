"""A thread's wait for a readable fd that another thread can keep asleep.

Each daemon has two data-path threads, one per direction, and each direction
makes work for the other fd: a TUN write produces replies (TCP ACKs, pings
answered) queued on the TUN, a burst sent to the peer brings its ACKs back on
the UDP socket. Waking the other thread for each of them costs, on a VM,
far more CPU than the thread that is busy anyway spends handling them itself
(measured: 3000 wake-ups/s, 0.16 CPU for the gateway's ACKs during an upload).
So the busy thread holds the other's wakeups, handles what its work brought,
and releases them; whatever is still queued then wakes the waiter at once.

One-shot epoll: wait() arms and blocks; hold() disarms, so a waiter already
blocked stays asleep; release() re-arms, and epoll reports what is already
readable, so nothing queued meanwhile is left unseen. A waiter that arms
during a hold is merely woken as it would have been without one.

Warmth says how long an idle thread waits before it looks again (see there).
"""

from __future__ import annotations

import select

_ARMED = select.EPOLLIN | select.EPOLLONESHOT


class Wakeups:
    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._ep = select.epoll()
        self._ep.register(fd, 0)

    def wait(self, timeout: float) -> bool:
        """Block up to `timeout` s until the fd is readable; False on timeout,
        or when the fd or this object is closed."""
        try:
            self._ep.modify(self._fd, _ARMED)
            return bool(self._ep.poll(max(0.0, timeout)))
        except (OSError, ValueError):
            return False

    def hold(self) -> None:
        try:
            self._ep.modify(self._fd, 0)
        except (OSError, ValueError):
            pass

    def release(self) -> None:
        try:
            self._ep.modify(self._fd, _ARMED)
        except (OSError, ValueError):
            pass

    def close(self) -> None:
        self._ep.close()


KEEP_WARM_S = 10.0      # after the last packet forwarded, the data threads stay warm this long
                        # (the default of [session] keep_warm_s; 0: never)
WARM_WAIT_S = 0.02      # ... waking at least this often
IDLE_WAIT_S = 0.5       # then only this often (to see the daemon stopping)


class Warmth:
    """The wait timeout of a daemon's two data-path threads. A packet that
    finds its thread asleep for long pays for the cold: the interpreter's
    code and data evicted, on a VM a halted vCPU. Measured against
    wireguard-go in the same runs, pings 50 ms, 137 ms, 310 ms and 1 s
    apart took 0.04-0.08 ms longer through threads that slept up to 0.5 s
    than through ones that woke every 20 ms. So while traffic flows the threads wake every
    WARM_WAIT_S (≈ 0.5 % of a CPU per daemon), and keep_s after the last
    packet forwarded they go back to sleeping long: an idle gateway stays
    idle. What counts is the daemon's packet counters (rx_packets +
    tx_packets), not every wake-up: the kernel's own router solicitations
    and MLD reports on the TUN, dropped, and control messages keep nobody
    warm. Shared by both threads, so traffic either way keeps both warm; read
    once per wait, never per packet."""

    __slots__ = ("_stats", "_keep_s", "_seen", "until")

    def __init__(self, stats, keep_s: float = KEEP_WARM_S) -> None:
        self._stats = stats
        self._keep_s = keep_s
        self._seen = 0
        self.until = 0.0

    def timeout(self, now: float) -> float:
        """Seconds a data-path thread that found nothing to do waits now."""
        moved = self._stats["rx_packets"] + self._stats["tx_packets"]
        if moved != self._seen:
            self._seen = moved
            self.until = now + self._keep_s
        return WARM_WAIT_S if now < self.until else IDLE_WAIT_S
