"""Resale: a relay sells downstream only what it has bought upstream.

A relay is a seller (downstream) and a buyer (upstream) in one node.  ``Resale`` ties the
two engines together, sans-IO:

- it is the upstream quote source of the relay's ``RelayPricer`` (protocol/relay_pricer.py):
  for a destination D it offers the upstream contract's price and chain, capped at the
  upstream quota not yet sold; with no upstream contract it answers PENDING and buys one
  (a REQUEST from the relay's ``Buyer`` at the next ``poll``); with a no-deal upstream,
  or no upstream gateway, "no upstream for D" (the seller says NO_DEAL with it);
- from the engines' events (``on_events``) it keeps, per D, the downstream contracts sold
  and the money (``ResaleLedger``), and calls the seller back when an upstream answer comes
  (``upstream_ready`` / ``upstream_failed``);
- ``poll(now)`` keeps the upstream quota ahead of what was sold (``ResalePolicy``): it buys
  when the bytes left upstream (in contracts that do not expire within ``ahead_s``) fall
  below the bytes left downstream plus ``ahead_kb``, and gives up on an upstream buy not
  answered within ``wait_s``; a buy the upstream may have ignored (a seller does not answer
  a REQUEST while contracts queue behind its current one) is asked again when that queue
  moves, so the upstream's refusal (REJECT with no counter-offer, NO_DEAL, the relay's own
  policy or wallet declining) fails the waiting downstream flows at once, with its reason;
- when the upstream for D ends (its last contract used up, expired or revoked with no new
  one coming, or the gateway gone: ``upstream_gone``) it stops every contract sold for D
  with that reason (``Seller.stop_destination``: the buyer sees a REVOKE; unforwarded bytes
  of paid contracts are refunded as credit).

Destinations are the seller's (its scope); the upstream is asked for the same prefix, so a
relay prices with the scope its upstream gateways use.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from tunnelgate import packet as pk
from tunnelgate.money import BYTES_PER_KB
from tunnelgate.protocol import events as E
from tunnelgate.protocol.contract import Contract, State
from tunnelgate.protocol.pricer import PENDING, Answer, Offer, Unavailable
from tunnelgate.protocol.resale_ledger import ResaleLedger
from tunnelgate.protocol.seller_upstream import no_upstream

SUPPLYING = frozenset({State.ACCEPTED, State.GRACE, State.PAID})
ENDED = (E.Exhausted, E.Expired, E.Revoked)
# the upstream refused (or the relay's own policy or wallet refused the upstream's terms)
REFUSED = (E.NoDeal, E.Declined, E.BudgetExceeded, E.NoFunds)


@dataclass(frozen=True)
class ResalePolicy:
    ahead_kb: int = 1000       # upstream quota kept beyond what was sold downstream
    ahead_s: float = 30.0      # upstream contracts expiring sooner than this do not count
    buy_kb: int = 10_000       # the least asked for in one upstream buy
    wait_s: float = 10.0       # an upstream buy not answered within this has failed

    def shortfall_kb(self, supply: int, sold: int) -> int:
        """KB to buy upstream now (0: none), from bytes left upstream and sold downstream."""
        need = sold + self.ahead_kb * BYTES_PER_KB - supply
        return 0 if need <= 0 else max(self.buy_kb, -(-need // BYTES_PER_KB))

    @staticmethod
    def available_kb(supply: int, sold: int) -> int:
        """What may still be sold downstream, whole KB."""
        return max(0, supply - sold) // BYTES_PER_KB


class Dest:
    """One destination the relay resells."""
    __slots__ = ("destination", "net", "sold", "wanted", "asked_at", "reask", "unconnected_at")

    def __init__(self, destination: str):
        self.destination = destination
        self.net = pk.parse_prefix(destination)
        self.sold: dict[tuple[bytes, str], Contract] = {}    # (buyer, id) -> downstream contract
        self.wanted = 0             # KB to buy upstream at the next poll
        self.asked_at: float | None = None   # an upstream buy out, not answered yet
        self.reask = False          # the last buy may have been ignored: ask even if just asked
        self.unconnected_at: float | None = None   # needs an upstream and none is connected since


def _left(c: Contract) -> int:
    return max(0, c.limit_bytes - c.used)


class Resale:
    """``buyer``: the relay's upstream ``Buyer``; ``gateway_for(key) -> public key | None``: the
    upstream seller to buy D from now (the relay's market choice; None: none connected).  The
    relay's ``Seller`` prices through ``RelayPricer(this)`` and is given by ``attach``."""

    def __init__(self, buyer, gateway_for: Callable[[bytes], bytes | None],
                 policy: ResalePolicy = ResalePolicy()):
        self.seller = None
        self.buyer, self.gateway_for, self.policy = buyer, gateway_for, policy
        self.ledger = ResaleLedger()
        self.dests: dict[str, Dest] = {}
        # the last upstream price and chain per destination: a quote between two upstream
        # contracts (all sold, or the next one being bought) still shows what the relay pays
        self.last_price: dict[str, tuple[int, tuple]] = {}
        self._events: list[E.ContractEvent] = []

    def attach(self, seller) -> None:
        """The relay's seller; what it sold and has not ended is read from it (after a
        restart the engines are restored from their snapshots, the events are not replayed)."""
        self.seller = seller
        for c in seller.contract_list():
            if c.accepted_at is not None and c.state in SUPPLYING:
                self._dest(c.destination).sold[(c.peer, c.contract_id)] = c

    # --- the upstream quote source (RelayPricer) ----------------------------------------

    def offer(self, key: bytes, want_kb: int = 0) -> Answer:
        return self._answer(key, True, want_kb)

    def peek(self, key: bytes) -> Answer:
        return self._answer(key, False)

    def _answer(self, key: bytes, buy: bool, want_kb: int = 0) -> Answer:
        if self.seller is None:     # the seller restoring its flows before attach(): no sale yet
            return Unavailable("the relay is starting: ask again", upstream=True)
        dest = pk.prefix_text(key, self.seller.meter.plen(key))
        gw = self.gateway_for(key)
        if gw is None:
            return Unavailable(no_upstream(dest, "no upstream gateway connected"), upstream=True)
        supply = self._supply(gw, dest)
        d = self.dests.get(dest)
        sold = sum(_left(c) for c in d.sold.values()) if d is not None else 0
        have = sum(_left(c) for c in supply)
        # what the buyer asked for (a fast flow asks for bigger contracts), at least the
        # seller's contract: bought upstream in one go, so contracts grow through a relay as
        # they do at a gateway (at 10 MB each, two hops spent a fifth of their CPU on contracts)
        need = max(want_kb, self.seller.pricing.contract_kb) * BYTES_PER_KB
        if supply:
            c = supply[0]
            self.last_price[dest] = (c.price, c.terms.chain)
            avail = self.policy.available_kb(have, sold)
            if avail:
                if buy and avail * BYTES_PER_KB < need:     # this one gets what is left; buy the next
                    d = self._dest(dest)
                    d.wanted = max(d.wanted, self.policy.shortfall_kb(have, sold + need))
                return Offer(c.price, c.terms.chain, limit_kb=avail)
        f = self._upstream_flow(gw, dest)
        if f is not None and f.nodeal_until:        # all sold, and the upstream will not sell more
            return Unavailable(no_upstream(dest, f.nodeal_reason or "the upstream said no deal"), upstream=True,
                               retry_at=f.nodeal_until)
        if not buy:
            known = self.last_price.get(dest)
            if known is not None:       # a quote: the price it buys at, though none is in stock now
                return Offer(known[0], known[1], limit_kb=0)
            return Unavailable(f"upstream price for {dest} not known yet: the relay buys it with the first packet")
        d = self._dest(dest)
        d.wanted = max(d.wanted, self.policy.shortfall_kb(have, sold + need))     # one more contract
        return PENDING

    def _upstream_flow(self, gw: bytes, dest: str):
        b = self.buyer.books.get(gw)
        return b.flows.get(dest) if b is not None else None

    def _supply(self, gw: bytes | None, dest: str, until: float | None = None) -> list[Contract]:
        """The upstream contracts for dest with bytes left, current first; with ``until``, only
        those not expiring before it."""
        f = self._upstream_flow(gw, dest) if gw is not None else None
        if f is None:
            return []
        cs = ([f.current] if f.current is not None else []) + list(f.queue)
        return [c for c in cs if c.state in SUPPLYING and _left(c) > 0
                and (until is None or c.expires_at is None or c.expires_at >= until)]

    # --- events of the two engines -----------------------------------------------------

    def on_events(self, seller_events, buyer_events, now: float) -> None:
        """Every event the relay's seller and buyer emitted (the daemon still logs and acts on
        them as for any gateway or client)."""
        for ev in seller_events:
            t = type(ev)
            if t is E.Accepted:
                d = self._dest(ev.destination)
                c = self.seller.find(ev.contract_id, ev.counterpart)
                if c is not None:
                    d.sold[(ev.counterpart, ev.contract_id)] = c
            elif t in ENDED:
                d = self.dests.get(ev.destination)
                if d is not None:
                    d.sold.pop((ev.counterpart, ev.contract_id), None)
            elif t is E.Paid:
                self.ledger.sold(ev.destination, ev.amount_msat)
            elif t is E.Refunded:
                self.ledger.refunded(ev.destination, ev.amount_msat)
        for ev in buyer_events:
            t = type(ev)
            if t is E.Paid:
                self.ledger.bought(ev.destination, ev.amount_msat)
            elif t is E.Accepted:
                for d in self._under(ev.destination):
                    d.asked_at, d.wanted = None, 0
                self.seller.upstream_ready(ev.destination, now)
            elif (t in REFUSED or (t is E.Rejected and ev.counter_price is None)) and ev.destination:
                # refused for good (a REJECT with a counter-offer waits for the seller's answer)
                for d in self._under(ev.destination):
                    self._failed(d, ev.reason or t.kind, now)
            elif t in ENDED or t is E.Activated:
                for d in self._under(ev.destination):
                    if d.asked_at is not None:
                        # The upstream's queue for D moved.  A seller ignores a REQUEST while
                        # contracts queue behind the current one, so the buy out may never be
                        # answered: ask again now, so that a refusal (a price risen above the
                        # relay's policy) reaches the waiting buyers at once, not after wait_s.
                        d.asked_at, d.reask = None, True
                    elif t is not E.Activated and not self._supply(self.gateway_for(d.net[0]), d.destination):
                        self._lose(d, self._ended_reason(d, ev), now)

    def _ended_reason(self, d: Dest, ev) -> str:
        """Why what was sold for d stops when its last upstream contract ended: the upstream's
        refusal to sell more, if it refused, else the contract's end."""
        gw = self.gateway_for(d.net[0])
        f = self._upstream_flow(gw, d.destination) if gw is not None else None
        if f is not None and f.nodeal_until and f.nodeal_reason:
            return no_upstream(d.destination, f"{f.nodeal_reason} (its last contract {ev.kind})")
        return f"upstream contract {ev.kind}: {ev.reason}"

    def upstream_gone(self, gateway: bytes, reason: str, now: float) -> None:
        """The upstream gateway is gone (session lost, `kill -9`): what was bought from it is
        lost with it."""
        for d in list(self.dests.values()):
            if self.gateway_for(d.net[0]) in (gateway, None):
                self._failed(d, f"upstream gateway gone: {reason}", now, force=True)

    def _failed(self, d: Dest, reason: str, now: float, force: bool = False) -> None:
        d.asked_at, d.wanted = None, 0
        gw = self.gateway_for(d.net[0])
        f = self._upstream_flow(gw, d.destination) if gw is not None else None
        # the upstream's own back-off, if it said no deal: the buyers need not ask before
        retry_at = f.nodeal_until if f is not None and f.nodeal_until > now else None
        self.seller.upstream_failed(d.destination, reason, now, retry_at)
        if force or not self._supply(gw, d.destination):
            self._lose(d, no_upstream(d.destination, reason), now)

    def _lose(self, d: Dest, reason: str, now: float) -> None:
        if not d.sold:
            return
        stopped = self.seller.stop_destination(d.destination, reason, now)
        self._events.append(E.UpstreamLost(E.SELLER, None, None, d.destination, reason, stopped=tuple(stopped)))

    def _dest(self, destination: str) -> Dest:
        d = self.dests.get(destination)
        if d is None:
            d = self.dests[destination] = Dest(destination)
        return d

    def _under(self, destination: str) -> list[Dest]:
        """The destinations resold within an upstream contract's prefix."""
        key, plen = pk.parse_prefix(destination)
        return [d for d in self.dests.values()
                if len(d.net[0]) == len(key) and d.net[1] >= plen and pk.mask(d.net[0], plen) == key]

    # --- timers ----------------------------------------------------------------------------

    def poll(self, now: float) -> None:
        """Buys what is wanted or running low upstream; fails buys unanswered for too long."""
        p = self.policy
        for d in list(self.dests.values()):
            if d.asked_at is not None and now - d.asked_at >= p.wait_s:
                self._failed(d, f"the upstream did not answer within {p.wait_s:g} s", now)
                continue                    # asked again on the next poll, if still wanted
            gw = self.gateway_for(d.net[0])
            supply = sum(_left(c) for c in self._supply(gw, d.destination, now + p.ahead_s))
            sold = sum(_left(c) for c in d.sold.values())
            want = max(d.wanted, p.shortfall_kb(supply, sold) if d.sold else 0)
            if want and d.asked_at is None:
                if gw is None:
                    # What was sold waits wait_s for a connection (after a restart the upstream
                    # contracts on disk are good once the handshake is done: stopping at the
                    # first tick refunded paid contracts the relay could still serve); a
                    # gateway found dead stops them at once (upstream_gone).
                    if d.unconnected_at is None:
                        d.unconnected_at = now
                    if not d.sold or now - d.unconnected_at >= p.wait_s:
                        d.unconnected_at = None
                        self._failed(d, "no upstream gateway connected", now)
                    continue
                d.unconnected_at = None
                self._buy(d, gw, want, supply, sold, now)
            elif not want and not d.sold and d.asked_at is None:
                del self.dests[d.destination]       # nothing sold, nothing asked: forget it

    def _buy(self, d: Dest, gw: bytes, want: int, supply: int, sold: int, now: float) -> None:
        # d.wanted stays until the buy is answered (Accepted) or fails: what to ask again
        again, d.reask = d.reask, False
        if not self.buyer.buy(gw, d.destination, now, want, again=again):
            f = self._upstream_flow(gw, d.destination)
            if f is not None and f.nodeal_until > now:
                return self._failed(d, f.nodeal_reason or "the upstream said no deal", now)
            # a request of the buyer's own (its renewal) is out: wait for its answer as ours
        d.asked_at = now
        self._events.append(E.UpstreamRenewalDue(E.BUYER, gw, None, d.destination,
                                                 "upstream quota below what was sold" if d.sold
                                                 else "a first packet: buying upstream",
                                                 limit_kb=want, sold_bytes=sold, supply_bytes=supply))

    def next_deadline(self) -> float | None:
        """When ``poll`` has something to do for sure (an upstream buy's time out, or a buy
        wanted now); quota falling low is seen on the poll after traffic (the daemon's tick)."""
        ds = [t + self.policy.wait_s for d in self.dests.values() for t in (d.asked_at, d.unconnected_at)
              if t is not None]
        if any(d.wanted and d.asked_at is None for d in self.dests.values()):
            ds.append(0.0)
        return min(ds) if ds else None

    # --- outputs ---------------------------------------------------------------------------

    def take_events(self) -> list[E.ContractEvent]:
        out, self._events = self._events, []
        return out

    def status(self, now: float) -> dict:
        """Per destination: bytes left sold downstream and bought upstream, a buy in progress;
        and the money (ResaleLedger.view)."""
        dests = {}
        for d in self.dests.values():
            gw = self.gateway_for(d.net[0])
            dests[d.destination] = {
                "sold_bytes_left": sum(_left(c) for c in d.sold.values()),
                "upstream_bytes_left": sum(_left(c) for c in self._supply(gw, d.destination)),
                "buying_for_s": None if d.asked_at is None else max(0, int(now - d.asked_at)),
                "downstream_contracts": len(d.sold)}
        return {"destinations": dests, "money": self.ledger.view()}
