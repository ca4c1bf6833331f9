"""The seller's side of resale: proposing and quoting through a pricer that may have to buy
upstream first, the cost chain in each proposal and quote, the upstream cost as the
counter-offer floor, and stopping what was sold for a destination when its upstream ends.  A mixin of ``Seller``
(protocol/seller.py); a plain gateway (``StaticPricer``) never waits and never stops.

Waiting: a pricer answering ``PENDING`` (protocol/pricer.py) leaves the flow waiting, its
packets held as for any proposal, and counted as an open proposal of its peer (so one peer
cannot make the relay buy upstream for unbounded destinations).  The relay's glue calls
``upstream_ready(dest)`` when the upstream answer arrived (the flow asks the pricer again and
proposes) or ``upstream_failed(dest, reason)`` (NO_DEAL "no upstream for D: reason", held
packets dropped, the buyer told to ask again after ``no_upstream_backoff_s``: an upstream
that is unreachable now may be back in seconds).  The seller has no timer of its own for
this: the glue bounds the upstream purchase (protocol/resale.py ``Resale.poll``) and fails
the flows at once on the upstream's refusal (``Resale.on_events``)."""

from __future__ import annotations

import math

from tunnelgate import packet as pk
from tunnelgate.meter import Flow
from tunnelgate.money import BYTES_PER_KB, cost_msat
from tunnelgate.protocol import chain as ch
from tunnelgate.protocol import events as E
from tunnelgate.protocol import messages as m
from tunnelgate.protocol.contract import FORWARDING, Contract, State
from tunnelgate.protocol.pricer import Offer, Pending, Unavailable, offer, peek


def no_upstream(destination: str, reason: str) -> str:
    return f"no upstream for {destination}: {reason}"


def _under(key: bytes, net: tuple[bytes, int]) -> bool:
    nkey, plen = net
    return len(key) == len(nkey) and pk.mask(key, plen) == nkey


class SellerUpstream:
    def _init_upstream(self, own_key: bytes) -> None:
        self.own_key = own_key
        self._waiting: dict[Flow, tuple[int, int]] = {}    # flow -> (limit_kb, time_s) to propose

    def _open(self, f: Flow, now: float, limit_kb: int, time_s: int) -> bool:
        """A first proposal for f at the pricer's offer, or wait for it; False: no deal (none
        to be had: NO_DEAL sent, nothing to hold)."""
        if f in self._waiting:
            return True
        a = offer(self.pricer, f.key, limit_kb)
        if isinstance(a, Offer):
            f.list_price = a.price
            if a.limit_kb is not None:      # never sell more than the upstream quota left
                limit_kb = min(limit_kb, a.limit_kb)
            self._propose(f, now, 1, a.price, limit_kb, time_s, a.upstream)
        elif isinstance(a, Pending):
            self._waiting[f] = (limit_kb, time_s)
            self.books[f.peer].proposals += 1
            self._emit(E.UpstreamWait, None, f=f, reason="buying upstream before proposing")
        else:
            self._no_deal(f, None, a.reason, now, self._upstream_backoff(now, a.retry_at) if a.upstream else None)
            return False
        return True

    def _upstream_backoff(self, now: float, retry_at: float | None = None) -> int:
        """Seconds a NO_DEAL caused by the upstream keeps the buyer away: no_upstream_backoff_s,
        or until the upstream's own back-off ends if later (asking sooner only meets the same
        refusal); never beyond what a NO_DEAL can carry."""
        backoff = self.pricing.no_upstream_backoff_s
        if retry_at is not None:
            backoff = max(backoff, math.ceil(retry_at - now))
        return min(backoff, m.MAX_U32)

    def _on_quote(self, peer: bytes, msg: m.QuoteRequest, now: float) -> None:
        """The terms a proposal would carry now, its chain included; nothing bought, no state."""
        addr, _ = pk.parse_prefix(msg.destination)
        key, plen = self.meter.key(addr), self.meter.plen(addr)
        price, upstream, reason, retry = self._quote_price(key, now)
        b = self.books[peer]
        f = b.flows.get(key)
        if f is not None and f.nodeal_until > now:
            left = int(f.nodeal_until - now) + 1
            retry = max(retry or 0, left)
            if not reason:
                reason = f"no deal for {left} s: {f.nodeal_reason}"[:m.MAX_TEXT]
        if not reason and price == 0:
            reason = "free destination: no contract needed"
        pr = self.pricing
        grace = self._grace_left(b, now) > 0
        self._out.append((peer, m.Quote(pk.prefix_text(key, plen), price, pr.contract_kb, pr.contract_time_s,
                                        pr.payment_methods, pr.grace_time_s if grace else 0,
                                        pr.grace_kb if grace else 0, reason,
                                        self._chain(upstream, price) or None, retry)))

    def _quote_price(self, key: bytes, now: float) -> tuple[int, tuple, str | None, int | None]:
        """(price, upstream chain, reason, retry_after_s) a QUOTE shows, with nothing bought: a
        relay that has no upstream price yet says so and quotes its list price without a chain;
        one that has no upstream for it says when to ask again (a REQUEST would get NO_DEAL)."""
        a = peek(self.pricer, key)
        if isinstance(a, Offer):
            return a.price, a.upstream, None, None
        if isinstance(a, Unavailable):
            retry = self._upstream_backoff(now, a.retry_at) if a.upstream else None
            return self.pricer.price(key), None, a.reason[:m.MAX_TEXT], retry
        return self.pricer.price(key), None, "upstream price not known yet: ask again", None

    def _chain(self, upstream: tuple | None, price: int) -> tuple:
        if not self.own_key or upstream is None:
            return ()
        return ch.extend(upstream, self.own_key, price)

    @staticmethod
    def _upstream_cost(c: Contract) -> int:
        """What this seller pays upstream per KB for what it sold in c (0: its own uplink)."""
        chain = c.terms.chain
        return chain[-2][1] if len(chain) >= 2 else 0

    def _waiting_under(self, destination: str) -> list[Flow]:
        net = pk.parse_prefix(destination)
        return [f for f in self._waiting if _under(f.key, net)]

    def _unwait(self, f: Flow) -> tuple[int, int] | None:
        sized = self._waiting.pop(f, None)
        if sized is not None:
            self.books[f.peer].proposals -= 1
            if self.books[f.peer].flows.get(f.key) is not f:
                return None                 # pruned meanwhile: nothing to propose to
        return sized

    def upstream_ready(self, destination: str, now: float) -> None:
        """The upstream answer for destination (a prefix; covers the flows under it) arrived:
        the flows waiting for it ask the pricer again."""
        for f in self._waiting_under(destination):
            sized = self._unwait(f)
            if sized is not None:
                self._open(f, now, *sized)

    def upstream_failed(self, destination: str, reason: str, now: float, retry_at: float | None = None) -> None:
        """No upstream for destination: the flows waiting for it get NO_DEAL with the reason
        (``retry_at``: when the upstream's own back-off ends, if it said no deal)."""
        for f in self._waiting_under(destination):
            if self._unwait(f) is not None:
                self._no_deal(f, None, no_upstream(f.destination, reason), now, self._upstream_backoff(now, retry_at))

    def stop_destination(self, destination: str, reason: str, now: float) -> list[str]:
        """The upstream for destination ended: every contract sold for it (current, queued,
        proposed) ends now with ``reason`` (REVOKE, which the client sees), flows waiting get
        NO_DEAL.  A paid contract's unused bytes are not charged: a ``Refunded`` event carries
        what the daemon credits back to the peer; an unpaid one is revoked, so its buyer does
        not pay it.  Walks every peer's flows: called once per upstream loss, not per packet.
        Returns the ids ended."""
        self.upstream_failed(destination, reason, now)
        net = pk.parse_prefix(destination)
        stopped = []
        for b in list(self.books.values()):
            for f in [f for f in b.flows.values() if _under(f.key, net)]:
                if f.proposal is not None:
                    stopped.append(f.proposal.contract_id)
                    self._no_deal(f, f.proposal, reason, now, self._upstream_backoff(now))
                for c in [*f.queue, *([f.current] if f.current is not None else [])]:
                    if c.state not in FORWARDING and c.state is not State.ACCEPTED:
                        continue
                    stopped.append(c.contract_id)
                    refund = self._refund(c)
                    self._revoke(f, c, reason, now)
                    if refund:
                        self._emit(E.Refunded, c, reason=f"not forwarded: {reason}", amount_msat=refund,
                                   used=c.used)
        return stopped

    @staticmethod
    def _refund(c: Contract) -> int:
        """What a paid contract's buyer paid for bytes it will not get."""
        if not c.paid:
            return 0
        used_kb = -(-c.used // BYTES_PER_KB)
        return max(0, c.cost_msat - cost_msat(c.price, min(used_kb, c.limit_kb)))
