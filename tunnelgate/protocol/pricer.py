"""Prices per destination.

``Pricer`` is the seam a seller prices through: a static table today (``StaticPricer``, the
configured default price and priced prefixes); a relay's will be an upstream quote plus a
margin.  ``PriceTable`` is the longest-prefix lookup both sides use (the seller's list
prices, the buyer's maximum prices)."""

from __future__ import annotations

from typing import Protocol

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


class Pricer(Protocol):
    def price(self, key: bytes) -> int:
        """The list price (price units, see money.py) of a destination key; 0: free."""


class StaticPricer:
    """The configured default price and priced prefixes (price 0: free)."""

    def __init__(self, default_price: int, prefix_prices: tuple[tuple[str, int], ...] = ()):
        self.table = PriceTable(default_price, prefix_prices)

    def price(self, key: bytes) -> int:
        return self.table.lookup(key)
