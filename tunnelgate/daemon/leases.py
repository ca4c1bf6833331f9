"""The gateway's address leases: which peer key holds which tunnel address, for how long.

A key's address is a lease. Authenticated traffic renews it; it is reclaimed when the key
has been idle for ``lease_idle_s`` ([network] in the gateway config). A key with a live
paid contract or prepaid credit ("protected") is never reclaimed.

When a new key handshakes and the pool is full, the longest-idle unprotected lease that is
idle *on demand* goes at once, so a paying client is not refused while such leases exist.
Idle on demand means: nothing authenticated from the key for RECLAIM_IDLE_S (longer than a
client's 10 s keepalive, so a connected client is never taken), or, for a key that never
sent a datagram after its latest handshake (a real client confirms its handshake at once),
for RECLAIM_UNCONFIRMED_S.

Renewal costs the data path nothing: the daemon samples each session's receive counter
once a second (``tick``) and this module keeps last-seen times in memory, writing them to
the store in one transaction every SAVE_EVERY_S, so leases survive restarts as they were
and keep expiring across them (wall-clock last-seen times).

Pure logic over the store: every time is a parameter; the daemon supplies ``protected``,
the keys that may not be reclaimed, and the activity signatures of its sessions.
"""

from __future__ import annotations

import ipaddress
import threading
from typing import Callable

RECLAIM_IDLE_S = 15.0           # on demand: a confirmed key silent this long
RECLAIM_UNCONFIRMED_S = 2.0     # on demand: a key that sent nothing after its handshake
SAVE_EVERY_S = 60.0             # last-seen times to disk
EXPIRE_EVERY_S = 5.0            # look for leases idle beyond lease_idle_s
CANDIDATES = 256                # leases examined per on-demand reclaim / expiry round


class Leases:
    def __init__(self, store, network: ipaddress.IPv4Interface, idle_s: float):
        self.store, self.network, self.idle_s = store, network, idle_s
        self.seen: dict[str, float] = {}          # key -> latest authenticated contact (wall)
        self._dirty: set[str] = set()             # seen entries newer than the store's
        self.unconfirmed: set[str] = set()        # handshook, no datagram since
        self._signatures: dict[str, object] = {}  # key -> its session's receive signature
        self._saved_at: float | None = None
        self._expired_at: float | None = None
        # this run's on-demand reclaims (the total since the pool began is in the store)
        self.on_demand = 0
        # acquire() runs on the handshake worker, tick()/save() on the control loop
        self._lock = threading.RLock()

    @property
    def pool_size(self) -> int:
        net = self.network.network
        return net.num_addresses - 3         # network, broadcast and the gateway's own

    def _acquire_locked(self, key: str, now: float, handshake_ts: int | None,
                protected: Callable[[], set[str]]) -> tuple[str | None, list[str]]:
        """A handshake from ``key``: its address (None when every lease is held by a
        protected or active key) and the keys whose leases were reclaimed for it."""
        addr = self.store.assign_address(key, self.network, handshake_ts, now)
        reclaimed: list[str] = []
        if addr is None:
            victim = self._victim(now, protected())
            if victim is not None:
                self._release([victim])
                reclaimed.append(victim)
                self.on_demand += 1
                addr = self.store.assign_address(key, self.network, handshake_ts, now)
        if addr is not None:
            self.seen[key] = now        # the store row has it already
            self._dirty.discard(key)
            self.unconfirmed.add(key)
            self._signatures.pop(key, None)
        return addr, reclaimed

    def _last(self, key: str, stored: float) -> float:
        return max(stored, self.seen.get(key, stored))

    def _victim(self, now: float, protected: set[str]) -> str | None:
        best, best_last = None, None
        for key, _addr, stored in self.store.leases_by_age(now - RECLAIM_UNCONFIRMED_S, CANDIDATES):
            if key in protected:
                continue
            last = self._last(key, stored)
            wait = RECLAIM_UNCONFIRMED_S if key in self.unconfirmed else RECLAIM_IDLE_S
            if now - last >= wait and (best_last is None or last < best_last):
                best, best_last = key, last
        return best

    def _tick_locked(self, now: float, signatures: dict[str, object],
             protected: Callable[[], set[str]]) -> list[str]:
        """Once a second or so: ``signatures`` is key -> a value that changes whenever the
        key's session opens a datagram (None: no usable session). Renews the leases of keys
        that sent something, saves last-seen times every SAVE_EVERY_S and reclaims leases
        idle beyond idle_s; returns the keys reclaimed."""
        for key, sig in signatures.items():
            if sig is not None and self._signatures.get(key) != sig:
                self.seen[key] = now
                self._dirty.add(key)
                self.unconfirmed.discard(key)
            self._signatures[key] = sig
        if self._saved_at is None or now - self._saved_at >= SAVE_EVERY_S:
            self.save(now)
        if self._expired_at is not None and now - self._expired_at < EXPIRE_EVERY_S:
            return []
        self._expired_at = now
        return self.expire(now, protected)

    def _expire_locked(self, now: float, protected: Callable[[], set[str]]) -> list[str]:
        """Reclaims the leases idle beyond idle_s (of unprotected keys)."""
        rows = self.store.leases_by_age(now - self.idle_s, CANDIDATES)
        if not rows:
            return []
        keep = protected()
        gone = [key for key, _addr, stored in rows
                if key not in keep and now - self._last(key, stored) >= self.idle_s]
        self._release(gone)
        return gone

    def _release(self, keys: list[str]) -> None:
        if not keys:
            return
        self.store.release_leases(keys)
        for key in keys:
            self.seen.pop(key, None)
            self._dirty.discard(key)
            self.unconfirmed.discard(key)
            self._signatures.pop(key, None)

    def _save_locked(self, now: float) -> None:
        """Writes the last-seen times that changed since the last save."""
        self._saved_at = now
        if self._dirty:
            self.store.touch_leases({k: self.seen[k] for k in self._dirty if k in self.seen})
            self._dirty.clear()

    def status(self) -> dict:
        return {"pool": self.pool_size, "used": self.store.lease_count(),
                "reclaimed": self.store.leases_reclaimed(), "reclaimed_on_demand": self.on_demand,
                "idle_s": self.idle_s}

    def acquire(self, key: str, now: float, handshake_ts: int | None,
                protected: Callable[[], set[str]]) -> tuple[str | None, list[str]]:
        with self._lock:
            return self._acquire_locked(key, now, handshake_ts, protected)

    def tick(self, now: float, signatures: dict[str, object], protected: Callable[[], set[str]]) -> list[str]:
        with self._lock:
            return self._tick_locked(now, signatures, protected)

    def expire(self, now: float, protected: Callable[[], set[str]]) -> list[str]:
        with self._lock:
            return self._expire_locked(now, protected)

    def save(self, now: float) -> None:
        with self._lock:
            self._save_locked(now)
