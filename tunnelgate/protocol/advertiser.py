"""The gateway's side of adverts (sans-IO): its signed advert from its terms, in the
two forms it is published in, and its answers to ADVERT_REQUEST.

The whole advert names every priced prefix that fits ``advert.MAX_ADVERT`` and an
ADVERT message; it is served over the authenticated control channel only. What is
announced over mDNS must fit ``txt_budget``: when the whole one does not, the
announced one is the same advert (same ``seq``) without priced prefixes and with
``more`` set, which tells a client to ask for the whole one after its handshake.

Sequence numbers are the caller's (the daemon persists them, see daemon/advertise.py);
``now`` is a parameter. Re-signing is due at half the lifetime, so a client always
holds an advert that has not expired while the gateway runs.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, replace

from tunnelgate.ratelimit import TokenBuckets

from . import advert as A
from . import messages as msgs

REQUEST_RATE_S = 0.1        # ADVERT_REQUESTs answered per peer per second, after the burst
REQUEST_BURST = 3


@dataclass(frozen=True)
class Published:
    """One signing of the advert: both forms and what status shows of them."""
    whole: A.Advert
    whole_raw: bytes            # served as ADVERT
    announced_raw: bytes        # what mDNS carries: whole_raw, or the reduced form
    reduced: bool
    priced_left_out: int        # priced prefixes of the config not even in the whole advert
    signed_at: float

    @property
    def seq(self) -> int:
        return self.whole.seq

    @property
    def expires(self) -> int:
        return self.whole.expires


class AdvertTooLarge(ValueError):
    pass


class Advertiser:
    """``template``: the advert without price, seq and expiry (those change at run time);
    ``prices`` in it are every priced prefix the config has; when they do not all fit,
    the most specific are kept (a client learns the others' prices from QUOTE)."""

    def __init__(self, private_key: bytes, template: A.Advert, lifetime_s: int, txt_budget: int,
                 rate: float = REQUEST_RATE_S, burst: int = REQUEST_BURST) -> None:
        if A.sign_public(private_key) != template.sign_key:
            raise ValueError("the template's sign_key is not this private key's")
        self.private_key, self.template = private_key, template
        self.lifetime_s, self.txt_budget = lifetime_s, txt_budget
        self.buckets = TokenBuckets(rate=rate, burst=burst, max_keys=4096)
        self.current: Published | None = None
        self.stats = {"signed": 0, "requests_answered": 0, "requests_limited": 0}

    def sign(self, price: int, seq: int, now: float) -> Published:
        """A new signing at ``price`` with ``seq`` (strictly above the last one: the caller's
        duty, as it persists them). Raises AdvertTooLarge if not even the reduced form fits."""
        if self.current is not None and seq <= self.current.seq:
            raise ValueError(f"advert sequence {seq} is not after {self.current.seq}")
        ad = replace(self.template, price=price, seq=seq, expires=int(now) + self.lifetime_s)
        prices = ad.prices
        while True:
            whole = replace(ad, prices=prices)
            raw = _fits(whole, self.private_key) if len(prices) <= A.MAX_PRICED else None
            if raw is not None:
                break
            if prices is ad.prices:     # not all fit: the most specific are kept, in that order
                prices = tuple(sorted(ad.prices, key=lambda pv: -_prefix_len(pv[0])))[: A.MAX_PRICED]
                continue
            if not prices:
                raise AdvertTooLarge("the advert does not fit even without priced prefixes: "
                                     "name fewer [advertise] endpoints or payment mints")
            prices = prices[: len(prices) * 3 // 4]     # least specific (broadest) go first
        announced, reduced = raw, False
        if len(raw) > self.txt_budget:
            small = replace(whole, prices=(), more=True)
            announced, reduced = A.encode(small, self.private_key), True
            if len(announced) > self.txt_budget:
                small = replace(small, methods=small.methods[:1], endpoints=small.endpoints[:2])
                announced = A.encode(small, self.private_key)
            if len(announced) > self.txt_budget:
                raise AdvertTooLarge(f"the reduced advert is {len(announced)} bytes, more than the "
                                     f"{self.txt_budget} an mDNS announcement carries: shorten the "
                                     "[advertise] label, endpoints or the payment mints' URLs")
        self.current = Published(whole, raw, announced, reduced, len(ad.prices) - len(prices), now)
        self.stats["signed"] += 1
        return self.current

    def due(self) -> float | None:
        """When the advert must be signed again (half its lifetime after the last signing)."""
        if self.current is None:
            return None
        return self.current.signed_at + self.lifetime_s / 2

    def on_request(self, peer: bytes, now: float) -> msgs.AdvertMessage | None:
        """An ADVERT_REQUEST from an authenticated peer: the whole advert, or None (rate
        limited, or none signed yet), counted."""
        if self.current is None or not self.buckets.allow(peer, now):
            self.stats["requests_limited"] += 1
            return None
        self.stats["requests_answered"] += 1
        return msgs.AdvertMessage(self.current.whole_raw.decode("ascii"))


def _prefix_len(prefix: str) -> int:
    return ipaddress.ip_network(prefix, strict=False).prefixlen


def _fits(ad: A.Advert, private_key: bytes) -> bytes | None:
    """The signed encoding if it fits an advert and an ADVERT message, else None."""
    try:
        raw = A.encode(ad, private_key)
        msgs.encode(msgs.AdvertMessage(raw.decode("ascii")))
    except (ValueError, msgs.ProtocolError):
        return None
    return raw
