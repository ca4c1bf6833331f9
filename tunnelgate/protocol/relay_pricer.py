"""A relay's prices: what its upstream charges for a destination, plus a margin.

``RelayPricer`` is a ``Pricer`` (protocol/pricer.py) over an upstream quote source: anything
with ``offer(key)`` and ``peek(key)`` answering, for the upstream, an ``Offer`` (its price and
its whole cost chain, the upstream seller last), ``PENDING`` or ``Unavailable`` -- the relay's
``Resale`` (protocol/resale.py) is one, over the relay's own ``Buyer``.  The downstream price
is ``ceil(upstream × (1 + margin)) + fee``, never below the floor, never 0 (a relay pays for
what it forwards, so nothing through it is free); the chain is the upstream's, to which the
seller adds its own hop, and the hop before it is the least the relay takes in a counter-offer
(its upstream price; protocol/seller_upstream.py).
All integer: the margin is an exact fraction, rounded up once."""

from __future__ import annotations

from typing import Protocol

from tunnelgate.money import parse_fraction
from tunnelgate.protocol.pricer import Answer, Offer


class UpstreamQuotes(Protocol):
    def offer(self, key: bytes, want_kb: int = 0) -> Answer:
        """The upstream's price and chain for a destination key; PENDING starts buying it
        (enough for a contract of want_kb, when more than the seller's contract_kb)."""

    def peek(self, key: bytes) -> Answer:
        """As offer, buying nothing (for a QUOTE)."""


class RelayPricer:
    def __init__(self, upstream: UpstreamQuotes, margin: str = "0.25", floor: int = 1, fee: int = 0):
        """``margin``: a decimal string ("0.25": 25 % over the upstream price); ``floor``: the
        least price per KB (price units); ``fee``: price units per KB added after the margin."""
        self.upstream = upstream
        self.margin = parse_fraction(margin, "margin")
        if fee < 0 or floor < 0:
            raise ValueError(f"fee and floor must not be negative, got fee={fee}, floor={floor}")
        self.floor, self.fee = floor, fee

    def mark_up(self, upstream_price: int) -> int:
        num, den = self.margin
        return max(self.floor, 1, -(-upstream_price * (den + num) // den) + self.fee)

    def _resell(self, a: Answer) -> Answer:
        if isinstance(a, Offer):
            return Offer(self.mark_up(a.price), a.upstream, a.limit_kb)
        return a

    def offer(self, key: bytes, want_kb: int = 0) -> Answer:
        return self._resell(self.upstream.offer(key, want_kb))

    def peek(self, key: bytes) -> Answer:
        return self._resell(self.upstream.peek(key))

    def price(self, key: bytes) -> int:
        """The list price shown: the marked-up upstream price if known, else the floor (not free:
        the relay proposes once it has bought upstream)."""
        a = self.upstream.peek(key)
        return self.mark_up(a.price) if isinstance(a, Offer) else max(self.floor, 1)
