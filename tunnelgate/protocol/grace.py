"""Grace, the seller's trust before payment: one allowance per peer, and one shared by all
strangers, so that neither many destinations nor many keys multiply it.

The rule (docs/contracts.md, "Grace"):

- A peer's grace is one pool of ``grace_kb`` bytes and ``grace_time_s`` seconds (counted
  from the first byte it is granted) shared by all its unpaid contracts, up and down.
- A confirmed payment renews it (pool full again, the clock stopped until the next grace),
  so a paying peer gets a fresh grace for each round of new contracts; a peer that never
  pays gets one in its life.  A grace that ends unpaid (a contract revoked at its payment
  deadline) leaves the peer with none (``no_grace``) until its next confirmed payment.
- A *stranger* (no paid contract ever, no contract paid from credit, no prepaid credit)
  also draws every grace byte from a gateway-wide token bucket, ``strangers_kb_per_min``
  (default 4 x ``grace_kb``) a minute, at most a minute's worth at once; so rotating keys
  buys nothing beyond it.  A peer that has paid never draws from it.

On the data path nothing changes: a contract in grace is armed (``stop_bytes``) only up to
a *slice* of the pool; when the slice is used the meter misses, and the slow path
(``_usable``) takes the next slice from the peer's pool (and the strangers' bucket), or
holds the packets (bounded, seller_hold.py) until the contract is paid.  A slice's unused
part goes back to the pool when its contract ends; a packet that overshot a slice is charged.

A mixin of ``Seller`` (protocol/seller.py); sans-IO: ``now`` is a parameter.
"""

from __future__ import annotations

from collections import deque

from tunnelgate.meter import Flow
from tunnelgate.money import BYTES_PER_KB
from tunnelgate.protocol.contract import Contract, Ev, State

SLICE_MIN = 4 * BYTES_PER_KB
SLICE_MAX = 64 * BYTES_PER_KB
CREDIT_RECHECK_S = 1.0     # a stranger's credit balance is asked at most this often
WINDOW_S = 60              # the strangers' budget is per minute


def slice_bytes(grace_bytes: int) -> int:
    """How much of a pool one contract is armed with at a time: small enough that twenty
    destinations share it, large enough that the slow path runs once per many packets."""
    return max(SLICE_MIN, min(SLICE_MAX, grace_bytes // 16))


def strangers_bytes_per_min(pricing) -> int:
    kb = pricing.strangers_kb_per_min
    return (4 * pricing.grace_kb if kb is None else kb) * BYTES_PER_KB


class StrangersBudget:
    """A token bucket of unpaid bytes shared by all strangers: ``per_min`` bytes a minute,
    at most ``per_min`` at once (it starts full).  ``take`` grants what it can; ``charge``
    books bytes already forwarded (a packet past its slice), which may leave it in debt."""

    __slots__ = ("per_min", "tokens", "at", "_bins")

    def __init__(self, per_min: int):
        self.per_min = per_min
        self.tokens = float(per_min)
        self.at: float | None = None
        self._bins: deque[list] = deque()     # [second, bytes] granted, the last minute

    def _refill(self, now: float) -> None:
        if self.at is not None and now > self.at:
            self.tokens = min(float(self.per_min), self.tokens + (now - self.at) * self.per_min / WINDOW_S)
        if self.at is None or now > self.at:
            self.at = now

    def take(self, want: int, now: float) -> int:
        self._refill(now)
        n = max(0, min(want, int(self.tokens)))
        if n:
            self.charge(n, now)
        return n

    def charge(self, n: int, now: float) -> None:
        self._refill(now)
        self.tokens -= n
        sec = int(now)
        bins = self._bins
        if bins and bins[-1][0] == sec:
            bins[-1][1] += n
        else:
            bins.append([sec, n])
        while bins and bins[0][0] <= sec - WINDOW_S:
            bins.popleft()

    def copy(self) -> "StrangersBudget":
        other = StrangersBudget(self.per_min)
        other.tokens, other.at, other._bins = self.tokens, self.at, deque(list(b) for b in self._bins)
        return other

    def left(self, now: float) -> int:
        """What strangers may still be granted now (nothing changes)."""
        t = self.tokens
        if self.at is not None and now > self.at:
            t = min(float(self.per_min), t + (now - self.at) * self.per_min / WINDOW_S)
        return max(0, int(t))

    def used_last_min(self, now: float) -> int:
        sec = int(now)
        return sum(n for s, n in self._bins if s > sec - WINDOW_S)


class Grace:
    """The seller's grace: the hooks of the lifecycle that arm a contract in grace, the
    slow-path refill, the renewal on payment and what status shows of it."""

    def _payer(self, b, now: float) -> bool:
        """Has the peer earned its own grace (not a stranger)?"""
        if b.paid_contracts or b.credit_contracts or b.has_credit:
            return True
        if b.credit_at is None or not 0 <= now - b.credit_at < CREDIT_RECHECK_S:
            b.credit_at = now
            b.has_credit = self.credit.balance(b.counterpart) > 0
        return b.has_credit

    def _grace_left(self, b, now: float) -> int:
        """Bytes of grace the peer may still be granted now."""
        pr = self.pricing
        if b.no_grace or (b.grace_from is not None and now >= b.grace_from + pr.grace_time_s):
            return 0
        return max(0, pr.grace_kb * BYTES_PER_KB - b.grace_used)

    def _grace_book(self, b, c: Contract, now: float) -> None:
        """Books what the contract's last slice really carried: its unused part back to the
        pool, a packet past its end charged (to the strangers' bucket too, for a stranger)."""
        if c.grace_end < 0:
            return
        delta = c.used - c.grace_end
        c.grace_end = c.used
        if delta:
            b.grace_used = max(0, b.grace_used + delta)
            self._dirty_peers.add(b.counterpart)
            if delta > 0 and not self._payer(b, now):
                self.strangers.charge(delta, now)

    def _regrace(self, f: Flow, c: Contract, now: float) -> bool:
        """The contract in grace used its slice (or its time): arm the next one, if the
        peer's pool (and for a stranger, the strangers' bucket) has any."""
        b = self.books[f.peer]
        self._grace_book(b, c, now)
        want = min(self._grace_left(b, now), slice_bytes(self.pricing.grace_kb * BYTES_PER_KB),
                   c.limit_bytes - c.used)
        if want <= 0:
            return False
        start = now if b.grace_from is None else b.grace_from
        stop_at = min(c.expires_at, c.grace_until, start + self.pricing.grace_time_s)
        if now >= stop_at:
            return False
        if not self._payer(b, now):
            want = self.strangers.take(want, now)
            if want <= 0:
                return False
        b.grace_from, c.stop_at = start, stop_at
        b.grace_used += want
        c.grace_end = c.stop_bytes = c.used + want
        self._dirty_peers.add(f.peer)
        return True

    def _grace_renewed(self, b, c: Contract) -> None:
        """A payment was confirmed: the peer's grace is whole again."""
        c.grace_end = -1
        b.no_grace = False
        b.grace_used = 0
        b.grace_from = None

    # --- lifecycle hooks (protocol/lifecycle.py) ---------------------------------------------

    def _usable(self, f: Flow, now: float) -> bool:
        if super()._usable(f, now):
            return True
        c = f.current
        if c is None or c.state is not State.GRACE or not self._regrace(f, c, now):
            return False
        if f.held:
            self._release(f, now)      # what waited for this slice goes first
        return c.used < c.stop_bytes and now < c.stop_at

    def _may_forward(self, f: Flow, c: Contract) -> bool:
        return c.state is State.PAID or not self.books[f.peer].no_grace

    def _arm(self, c: Contract, f: Flow) -> None:
        if c.state is State.GRACE:
            c.disarm()                 # armed slice by slice, by _regrace on the first packet
        else:
            c.arm(True)

    def _ending(self, f: Flow, c: Contract, ev: Ev, now: float) -> None:
        if c.state is State.GRACE:
            self._grace_book(self.books[c.peer], c, now)
        c.grace_end = -1

    # --- status ------------------------------------------------------------------------------

    def grace_status(self, now: float, contracts, strangers: StrangersBudget) -> dict:
        """The budgets and their use; ``strangers``: a copy of the bucket (taken under the
        daemon's engine lock, as the contracts)."""
        pr = self.pricing
        return {"per_peer_kb": pr.grace_kb, "per_peer_s": pr.grace_time_s,
                "strangers_kb_per_min": strangers.per_min // BYTES_PER_KB,
                "strangers_used_kb_last_min": strangers.used_last_min(now) // BYTES_PER_KB,
                "strangers_left_kb": strangers.left(now) // BYTES_PER_KB,
                "peers_in_grace": len({c.peer for c in contracts if c.state is State.GRACE})}
