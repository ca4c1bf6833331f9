"""Prices per destination.

``Pricer`` is the seam a seller prices through: a static table (``StaticPricer``, the
configured default price and priced prefixes), or a relay's upstream quote plus a margin
(``RelayPricer``, protocol/relay_pricer.py).  ``price(key)`` is the list price the seller shows
and decides "free" by; a pricer that may not know its price at once (a relay that must buy
upstream first) also has ``offer(key)``: an ``Offer``, ``PENDING`` (ask again when
``Seller.upstream_ready`` is called) or ``Unavailable`` (the seller says NO_DEAL with the
reason).  ``PriceTable`` is the longest-prefix lookup both sides use (the seller's list
prices, the buyer's maximum prices)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Union

from tunnelgate import packet as pk


class PriceTable:
    """(prefix text, price) pairs and a default; ``lookup`` takes a destination key."""

    __slots__ = ("default", "_rows")

    def __init__(self, default: int, prefixes: tuple[tuple[str, int], ...] = ()):
        self.default = default
        # longest prefix first: the first match is the longest
        self._rows = sorted(((*pk.parse_prefix(p), price) for p, price in prefixes), key=lambda t: -t[1])

    def lookup(self, key: bytes) -> int:
        for pkey, plen, price in self._rows:
            if len(key) == len(pkey) and pk.mask(key, plen) == pkey:
                return price
        return self.default


@dataclass(frozen=True, slots=True)
class Offer:
    """What to propose for a destination: the price, and the cost chain bought upstream (empty
    for a seller with its own uplink; the seller adds its own hop; the hop before it is the
    relay's cost, below which it meets no counter-offer); ``limit_kb``: the most it may sell
    now (a relay's upstream quota not yet sold; None: any)."""
    price: int
    upstream: tuple[tuple[bytes, int], ...] = ()
    limit_kb: int | None = None


@dataclass(frozen=True, slots=True)
class Pending:
    """The price is not known yet (a relay is buying upstream): hold, and ask again."""


@dataclass(frozen=True, slots=True)
class Unavailable:
    """No offer. ``upstream``: the relay's upstream is why (none connected, it refused, the
    relay is starting), which passes: the buyer is told to come back soon
    (``Pricing.no_upstream_backoff_s``), or at ``retry_at`` (when the upstream's own back-off
    ends, on the seller's clock) if that is later."""
    reason: str
    upstream: bool = False
    retry_at: float | None = None


PENDING = Pending()
Answer = Union[Offer, Pending, Unavailable]


class Pricer(Protocol):
    def price(self, key: bytes) -> int:
        """The list price (price units, see money.py) of a destination key; 0: free."""


def offer(pricer: Pricer, key: bytes, want_kb: int = 0) -> Answer:
    """The pricer's offer for key; a pricer with only ``price`` always knows it at once.
    ``want_kb``: the contract size the buyer asked for (a relay buys upstream for it)."""
    ask = getattr(pricer, "offer", None)
    return ask(key, want_kb) if ask is not None else Offer(pricer.price(key))


def peek(pricer: Pricer, key: bytes) -> Answer:
    """As ``offer``, with nothing started (a QUOTE buys nothing): ``peek`` if the pricer has one."""
    ask = getattr(pricer, "peek", None)
    return ask(key) if ask is not None else offer(pricer, key)


class StaticPricer:
    """The configured default price and priced prefixes (price 0: free)."""

    def __init__(self, default_price: int, prefix_prices: tuple[tuple[str, int], ...] = ()):
        self.table = PriceTable(default_price, prefix_prices)

    def price(self, key: bytes) -> int:
        return self.table.lookup(key)
