"""The seller side of contracts (sans-IO): proposes, holds packets, grants grace, verifies
payments (through its daemon), queues renewals, enforces on the data path; for many
counterparts, one ``Book`` each (protocol/book.py), on the lifecycle both sides share
(protocol/lifecycle.py).

The daemon calls, per packet, ``outbound`` (counterpart -> internet) / ``inbound``
(internet -> counterpart); per decoded control message ``on_message``; ``poll(now)`` when
``next_deadline()`` is due (or on its tick); and after each of these drains
``take_outgoing`` (messages per counterpart, to encode and send on its control channel),
``take_released`` (held packets to write to the TUN now) and ``take_events`` (typed,
protocol/events.py).  Payment verification is outside: a ``PaymentReceived`` event carries
method/proof/amount, the daemon verifies and calls ``payment_confirmed`` or ``payment_failed``.

``now`` is wall-clock seconds (time.time()) so that snapshots stay meaningful after a
restart.  Ids come from ``new_id`` (the daemon passes a random one, e.g.
``lambda: secrets.token_hex(8)``); the default is a counter, deterministic for tests.
Holding packets and the per-counterpart bounds are in seller_hold.py, grace in grace.py, the
store's records in seller_store.py.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

from tunnelgate import packet as pk
from tunnelgate.meter import DROP, HELD, MISS, Flow, GatewayMeter
from tunnelgate.money import BYTES_PER_KB, format_price
from tunnelgate.protocol import events as E
from tunnelgate.protocol import messages as m
from tunnelgate.protocol.book import Book
from tunnelgate.protocol.contract import FORWARDING, Contract, Ev, State, allowed
from tunnelgate.protocol.credit import MemoryCredit
from tunnelgate.protocol.grace import Grace, StrangersBudget, strangers_bytes_per_min
from tunnelgate.protocol.lifecycle import Lifecycle
from tunnelgate.protocol.pricer import Pricer, StaticPricer
from tunnelgate.protocol.seller_hold import Holding
from tunnelgate.protocol.seller_store import SellerStore
from tunnelgate.protocol.seller_timers import T_GRACE, T_NODEAL, T_PROPOSAL, SellerTimers
from tunnelgate.protocol.seller_view import SellerView
from tunnelgate.protocol.seller_upstream import SellerUpstream
from tunnelgate.protocol.terms import Terms

ENDED_AFTER_ACCEPT = frozenset({State.EXHAUSTED, State.EXPIRED, State.REVOKED})

HISTORY_KEPT = 1024   # ended contracts kept in memory (late payments, USAGE requests)
MAX_QUEUED = 3   # accepted contracts waiting behind the current one, per destination


@dataclass(frozen=True)
class Pricing:
    """Seller policy.  Prices in price units (micro-msat per KB, see money.py; parse config
    strings with money.parse_price)."""
    default_price: int
    floor_price: int
    prefix_prices: tuple[tuple[str, int], ...] = ()   # (prefix, price); price 0 = free
    contract_kb: int = 10_000
    max_contract_kb: int = 1_000_000      # the most a client's REQUEST limit_kb can get
    contract_time_s: int = 3600
    grace_time_s: int = 30
    grace_kb: int = 1000
    scope: str | int = "host"          # IPv4: "host" or a prefix length (contract = dst/len)
    scope6: str | int = "host"         # IPv6: same
    payment_methods: tuple[str, ...] = ("dummy",)
    account: str = ""
    max_rounds: int = 3
    no_deal_backoff_s: int = 60
    # a relay's NO_DEAL because of its upstream (unreachable, refused): that passes, so the
    # buyer asks again soon instead of losing the destination for no_deal_backoff_s
    no_upstream_backoff_s: int = 5
    proposal_timeout_s: int = 10
    usage_interval_s: float = 1.0
    held_max_packets: int = 64                  # per peer
    held_max_bytes: int = 256 * BYTES_PER_KB    # per peer
    held_max_flow_packets: int = 16             # per destination: one flow cannot take them all
    held_total_max_bytes: int = 32 * 1024 * BYTES_PER_KB   # all peers together
    # open proposals (contracts in PROPOSED state) per peer; beyond it, packets to
    # destinations without one are dropped and counted, nothing is held or proposed
    max_pending_proposals: int = 64
    # accepted contracts not yet paid (in grace, or waiting for payment) per peer; beyond it,
    # likewise no new proposals: grace lets a peer that never pays hold many at once
    max_unpaid_contracts: int = 256
    strangers_kb_per_min: int | None = None    # all strangers' grace a minute; None: 4 x grace_kb


def _plen(scope: str | int, bits: int) -> int:
    if scope == "host":
        return bits
    if isinstance(scope, bool) or not isinstance(scope, int) or not 0 <= scope <= bits:
        raise ValueError(f"scope must be 'host' or a prefix length 0..{bits}, got {scope!r}")
    return scope


class SellerContract(Contract):
    """A contract as the seller keeps it: its USAGE reports and incremental saves."""
    __slots__ = ("last_usage_sent", "last_usage_at", "saved_used", "grace_end")

    def __init__(self, terms: Terms, peer: bytes, created_at: float = 0.0):
        super().__init__(terms, peer, created_at)
        self.last_usage_sent = -1
        self.last_usage_at = 0.0
        self.saved_used = -1            # ``used`` as last persisted (incremental saves)
        self.grace_end = -1             # ``used`` up to which grace was booked (-1: none; grace.py)


class SellerBook(Book):
    """One buyer's contracts, and its standing with this seller."""
    __slots__ = ("no_grace", "held_packets", "held_bytes", "drops_held", "drops_no_deal",
                 "drops_no_contract_in", "paid_contracts", "no_account", "credit_contracts",
                 "proposals", "drops_proposals", "suppressed", "suppress_timer", "grace_used",
                 "grace_from", "has_credit", "credit_at")

    def __init__(self, counterpart: bytes, tombstones=None, flows: dict | None = None):
        super().__init__(counterpart, tombstones, flows)
        self.no_grace = False
        self.held_packets = self.held_bytes = 0
        self.drops_held = self.drops_no_deal = self.drops_no_contract_in = 0
        self.paid_contracts = self.no_account = self.credit_contracts = 0
        self.proposals = 0          # open proposals (flows with f.proposal set)
        self.drops_proposals = 0    # packets dropped: too many open proposals
        self.suppressed = 0         # of those, not yet reported in an event
        self.suppress_timer = False
        # grace granted since the last payment, bytes and since when; credit seen (grace.py)
        self.grace_used, self.grace_from, self.has_credit, self.credit_at = 0, None, False, None


class Seller(Grace, Holding, SellerTimers, SellerStore, SellerView, SellerUpstream, Lifecycle):
    """``account_for(contract_id) -> str | None``: the payment account advertised in a
    PROPOSE (e.g. a fresh bitcoin address per contract); None = none available right now (no
    proposal; the next packet or REQUEST tries again).  Default: ``pricing.account``.
    ``credit``: prepaid credit per peer (see MemoryCredit); default: an empty MemoryCredit.
    ``pricer``: list prices (protocol/pricer.py); default: ``pricing``'s static table.  ``own_key``:
    this node's hop in the cost chain of each PROPOSE/QUOTE (protocol/chain.py); empty: no chain."""

    SIDE = E.SELLER
    BOOK = SellerBook
    CONTRACT = SellerContract

    def __init__(self, pricing: Pricing, new_id: Callable[[], str] | None = None,
                 account_for: Callable[[str], str | None] | None = None, credit=None,
                 pricer: Pricer | None = None, own_key: bytes = b""):
        super().__init__(HISTORY_KEPT)
        self._init_upstream(own_key)
        self.pricing = pricing
        self.pricer = pricer if pricer is not None else StaticPricer(pricing.default_price, pricing.prefix_prices)
        self._own_pricer = pricer is None
        self.account_for = account_for
        self.credit = credit if credit is not None else MemoryCredit()
        self._seq = 0
        self._new_id = new_id or self._counter_id
        self.meter = GatewayMeter(_plen(pricing.scope, 32), _plen(pricing.scope6, 128))
        self._nodeal: set[Flow] = set()
        # peer -> its current forwarding contracts (the meter moves their counters); a
        # USAGE timer per peer (in _usage_due) reports the ones that moved
        self._metered: dict[bytes, dict[str, Contract]] = {}
        self._usage_due: set[bytes] = set()
        self._prune_due: set[bytes] = set()
        # incremental persistence (snapshot_changes): what changed since the last save
        self._dirty: set[Contract] = set()
        self._dirty_flows: set[Flow] = set()
        self._dirty_peers: set[bytes] = set()
        self._persisted: set[str] = set()          # contract ids with a saved record
        self._saved_flows: set[Flow] = set()       # flows with a saved record
        self._retry_removed: tuple[list, list] = ([], [])   # deletions of a failed save
        self._out: list[tuple[bytes, m.Message]] = []
        self._released: list[tuple[bytes, bytes]] = []
        self.held_total_bytes = 0                      # all peers' held packets
        self.strangers = StrangersBudget(strangers_bytes_per_min(pricing))

    def _counter_id(self) -> str:
        self._seq += 1
        return f"c{self._seq}"

    def _book(self, peer: bytes) -> SellerBook:
        b = self.books.get(peer)
        if b is None:
            # the book's flows are the meter's table of this peer: one dict for both
            flows = self.meter.peers.get(peer)
            if flows is None:
                flows = self.meter.peers[peer] = {}
            b = self.books[peer] = SellerBook(peer, self.tombstones, flows)
        return b

    # --- hot path --------------------------------------------------------------------------

    def outbound(self, peer: bytes, dst: bytes | str, length: int, packet: bytes, now: float) -> int:
        """Client -> internet.  FORWARD (metered), HELD (kept, released later via
        take_released) or DROP."""
        if type(dst) is not bytes:
            dst = pk.addr_bytes(dst)
        r = self.meter.up(peer, dst, length, now)
        if r != MISS:
            return r
        return self._slow_out(peer, dst, length, packet, now)

    def outbound_burst(self, peer: bytes, dst: bytes, total_len: int, n_packets: int, now: float) -> int:
        """Meter a coalesced burst of packets to one destination at once: FORWARD only if
        the whole burst fits in the contract, else DROP without metering anything, and the
        caller decides packet by packet with ``outbound`` (which may hold or end contracts)."""
        r = self.meter.up(peer, dst, total_len, now, True)
        if r != MISS:
            return r
        flows = self.meter.peers.get(peer)
        f = flows.get(self.meter.key(dst)) if flows else None
        if f is not None and self._usable(f, now):     # a new destination: outbound decides
            r = self.meter.up(peer, dst, total_len, now, True)
            if r != MISS:
                return r
        return DROP

    def inbound_burst(self, peer: bytes, src: bytes, total_len: int, now: float) -> int:
        """Internet -> client burst: FORWARD if all of it fits in the contract, else DROP
        without metering (then decide per packet with ``inbound``)."""
        r = self.meter.down(peer, src, total_len, now, True)
        if r != MISS:
            return r
        flows = self.meter.peers.get(peer)
        f = flows.get(self.meter.key(src)) if flows else None
        if f is not None and self._usable(f, now):
            r = self.meter.down(peer, src, total_len, now, True)
            if r != MISS:
                return r
        return DROP

    def inbound(self, peer: bytes, src: bytes | str, length: int, now: float) -> int:
        """Internet -> client.  FORWARD (metered) or DROP."""
        if type(src) is not bytes:
            src = pk.addr_bytes(src)
        r = self.meter.down(peer, src, length, now)
        if r != MISS:
            return r
        flows = self.meter.peers.get(peer)
        f = flows.get(self.meter.key(src)) if flows else None
        if f is not None and self._usable(f, now):
            return self.meter.down(peer, src, length, now)
        self._book(peer).drops_no_contract_in += 1
        return DROP

    # --- slow path -------------------------------------------------------------------------

    def set_prices(self, **changes) -> None:
        """Live settings: default_price, floor_price. Flows already priced get the new list
        price for their next proposal; running contracts keep the price they were sold at."""
        self.pricing = replace(self.pricing, **changes)
        if self._own_pricer:
            self.pricer = StaticPricer(self.pricing.default_price, self.pricing.prefix_prices)
        for b in self.books.values():
            for f in b.flows.values():
                f.list_price = self.pricer.price(f.key)
                f.free = f.list_price == 0

    def _flow(self, peer: bytes, addr: bytes, now: float) -> Flow:
        key = self.meter.key(addr)
        flows = self._book(peer).flows
        f = flows.get(key)
        if f is None:
            plen = self.meter.plen(addr)
            f = flows[key] = Flow(peer, key, plen, pk.prefix_text(key, plen))
            f.list_price = self.pricer.price(key)
            f.free = f.list_price == 0
            self._prune_due.add(peer)        # poll drops idle flows if it has too many
        return f

    def _slow_out(self, peer: bytes, dst: bytes, length: int, packet: bytes, now: float) -> int:
        flows = self.meter.peers.get(peer)
        f = flows.get(self.meter.key(dst)) if flows is not None else None
        if f is None or (f.proposal is None and f.current is None and not f.queue
                         and f.nodeal_until <= now):
            b = self.books.get(peer)
            if b is not None and self._saturated(b) and not (
                    f.free if f is not None else self.pricer.price(self.meter.key(dst)) == 0):
                # a new destination while many proposals are open: no flow, no proposal,
                # nothing held, so one peer spraying destinations costs a counter
                self._suppress(b, now)
                if f is not None:
                    f.dropped += 1
                return DROP
        if f is None:
            f = self._flow(peer, dst, now)
        if self._usable(f, now):
            return self.meter.up(peer, dst, length, now)
        b = self.books[peer]
        if f.nodeal_until > now:
            b.drops_no_deal += 1
            f.dropped += 1
            return DROP
        if f.proposal is None and f.current is None and not f.queue:
            if not self._open(f, now, self.pricing.contract_kb, self.pricing.contract_time_s):
                return DROP                  # no upstream: NO_DEAL sent
        return HELD if self._hold(f, packet) else DROP

    # --- negotiation -------------------------------------------------------------------------

    def _propose(self, f: Flow, now: float, rnd: int, price: int, limit_kb: int, time_s: int,
                 upstream: tuple = ()) -> None:
        pr = self.pricing
        b = self.books[f.peer]
        cid = self._new_id()
        account = pr.account
        if self.account_for is not None:
            account = self.account_for(cid)
            if account is None:          # no account to give right now: propose on the next try
                b.no_account += 1
                return
        grace = self._grace_left(b, now) > 0
        t = Terms(cid, f.destination, f.key, f.plen, price, limit_kb, time_s, pr.payment_methods, account,
                  rnd, pr.grace_time_s if grace else 0, pr.grace_kb if grace else 0, self._chain(upstream, price))
        c = SellerContract(t, f.peer, now)
        b.add(c)
        self._set_proposal(f, c)
        self._at(b, c.created_at + pr.proposal_timeout_s, T_PROPOSAL, c)
        self._out.append((f.peer, m.Propose(cid, f.destination, price, limit_kb, time_s, pr.payment_methods,
                                            account, rnd, t.grace_s, t.grace_kb, t.chain or None)))
        self._emit(E.Proposed, c, price=price, round=rnd)

    def _no_deal(self, f: Flow, c: Contract | None, reason: str, now: float, backoff: int | None = None) -> None:
        if backoff is None:
            backoff = self.pricing.no_deal_backoff_s
        if c is not None and c.state is State.PROPOSED:
            self._close(c, Ev.NO_DEAL, reason, now)
        self._set_proposal(f, None)
        f.nodeal_until = now + backoff
        f.nodeal_reason = f.reason = reason
        self._nodeal.add(f)
        self._at(self.books[f.peer], f.nodeal_until, T_NODEAL, f)
        self._out.append((f.peer, m.NoDeal(f.destination, reason[:m.MAX_TEXT], backoff,
                                           c.contract_id if c else None)))
        if c is not None:
            self._emit(E.NoDeal, c, f=f, reason=reason, retry_after_s=backoff)
        else:
            self._emit(E.NoDeal, None, f=f, reason=reason, retry_after_s=backoff)
        self._drop_held(f, "no deal: " + reason)

    def _on_reject(self, f: Flow, c: Contract, msg: m.Reject, now: float) -> None:
        self._close(c, Ev.REJECT, msg.reason, now)
        self._set_proposal(f, None)
        self._emit(E.Rejected, c, reason=msg.reason, counter_price=msg.price, counter_kb=msg.limit_kb,
                   counter_s=msg.time_s)
        if msg.price is None and msg.limit_kb is None and msg.time_s is None:
            return self._no_deal(f, c, f"client declined: {msg.reason}", now)
        if c.round >= self.pricing.max_rounds:
            return self._no_deal(f, c, f"no agreement after {c.round} rounds", now)
        # a relay meets a counter-offer no lower than what it pays upstream
        floor = max(min(self.pricing.floor_price, f.list_price), self._upstream_cost(c))
        price = c.price
        if msg.price is not None and msg.price < price:
            price = msg.price if msg.price >= floor else floor
        limit_kb = min(c.limit_kb, msg.limit_kb) if msg.limit_kb else c.limit_kb
        time_s = min(c.time_s, msg.time_s) if msg.time_s else c.time_s
        if (price, limit_kb, time_s) == (c.price, c.limit_kb, c.time_s):
            if msg.price is not None and msg.price < floor:
                why = (f"counter-offer {format_price(msg.price)} is below the floor price "
                       f"{format_price(floor)}")
            else:
                why = "counter-offer changes nothing"
            return self._no_deal(f, c, why, now)
        self._propose(f, now, c.round + 1, price, limit_kb, time_s, c.terms.chain[:-1])

    def _on_accept(self, f: Flow, c: Contract, now: float) -> None:
        b = self.books[f.peer]
        self._set_proposal(f, None)
        c.accepted_at = now
        c.grace_until = now + self.pricing.grace_time_s     # payment deadline
        b.owe(c)
        cur = f.current
        if cur is not None and cur.state in FORWARDING and (cur.used >= cur.limit_bytes
                                                             or now >= cur.expires_at):
            # used up (or run out of time) with no packet since: it ends here, with its final
            # USAGE, rather than be left live and in no flow
            self._usable(f, now)
            cur = f.current
        active = cur is not None and (cur.state is State.ACCEPTED or (
            cur.state in FORWARDING and cur.used < cur.limit_bytes and now < cur.expires_at))
        if active or f.queue:
            c.apply(Ev.ACCEPT_WAIT)
            f.queue.append(c)
        elif not self._grace_left(b, now):      # no grace (left): waits for its payment
            c.apply(Ev.ACCEPT_WAIT)
            f.current = c
            c.activated_at, c.expires_at = now, now + c.time_s
        else:
            c.apply(Ev.ACCEPT_ACTIVE)
            f.current = c
            c.activated_at, c.expires_at = now, now + c.time_s
            self._arm(c, f)
        self._emit(E.Accepted, c, queued=c in f.queue)
        self._at(b, c.grace_until, T_GRACE, c)
        self._sched(f, c, now)
        if f.current is c and c.state is State.GRACE:
            self._release(f, now)

    def _pay_from_credit(self, c: Contract, now: float) -> None:
        """ACCEPT with credit: take the cost from the peer's prepaid credit, or say it is not enough
        (the client then pays with PAY; grace runs as for any contract)."""
        left = self.credit.spend(c.peer, c.cost_msat, c.contract_id)
        if left is None:
            have = self.credit.balance(c.peer)
            reason = (f"not enough prepaid credit: {have} msat, the contract costs {c.cost_msat} msat; "
                      "pay it with PAY")
            self._out.append((c.peer, m.PaymentFailed(c.contract_id, reason)))
            self._emit(E.PaymentFailed, c, reason=reason, credit_msat=have)
            return
        c.credit = True
        self.books[c.peer].credit_contracts += 1
        self.payment_confirmed(c.contract_id, now, credit_msat=left, counterpart=c.peer)

    # --- lifecycle hooks (protocol/lifecycle.py) ---------------------------------------------

    def _activated(self, f: Flow, c: Contract, now: float) -> None:
        c.last_usage_sent = -1
        self._sched(f, c, now)

    def _ended(self, c: Contract) -> None:
        mt = self._metered.get(c.peer)
        if mt is not None:
            mt.pop(c.contract_id, None)
        self._usage_final(c)
        c.last_usage_sent = c.used

    def _emitted(self, ev, c: Contract | None, f: Flow | None) -> None:
        # every change of a contract, flow or peer standing comes with an event: mark it for
        # the next incremental save (its state is read then, so later changes are included)
        if f is not None:
            self._dirty_flows.add(f)
        if c is not None:
            self._dirty.add(c)
            self._dirty_peers.add(c.peer)
            flows = self.meter.peers.get(c.peer)
            cf = flows.get(c.key) if flows else None
            if cf is not None:
                self._dirty_flows.add(cf)

    def _revoke(self, f: Flow, c: Contract, reason: str, now: float) -> None:
        self._out.append((c.peer, m.Revoke(c.contract_id, reason[:m.MAX_TEXT])))
        if c in f.queue:
            f.queue.remove(c)
            self._close(c, Ev.REVOKE, reason, now)
            self.books[c.peer].settle(c)
            self._emit(E.Revoked, c, reason=reason, up=c.up, down=c.down)
        else:
            self._end(f, c, Ev.REVOKE, reason, now)
            self._drop_held(f, "contract revoked")

    # --- control messages --------------------------------------------------------------------

    def on_message(self, peer: bytes, msg: m.Message, now: float) -> None:
        b = self._book(peer)
        if isinstance(msg, m.QuoteRequest):
            return self._on_quote(peer, msg, now)
        if isinstance(msg, m.Request):
            return self._on_request(peer, msg, now)
        cid = getattr(msg, "contract_id", None)
        c = b.live.get(cid) if cid else None
        if c is None:
            old = b.ended.get(cid) if cid else None
            if isinstance(msg, m.Pay):
                if old is not None and old.paid:
                    self._out.append((peer, m.Paid(cid, self.credit.balance(peer))))
                    return
                # a contract that ran out (or was revoked) before its payment arrived: the
                # client used it in grace and owes it; take the payment
                if old is not None and old.accepted_at is not None and old.state in ENDED_AFTER_ACCEPT:
                    return self._on_pay(peer, old, msg)
                if old is None:
                    # a contract we do not know (lost in a crash before it was saved): the
                    # payment is taken as the peer's credit (the daemon verifies it; a proof
                    # pays once), the contract id is revoked so the client moves on
                    reason = "unknown contract (the gateway restarted?): a valid payment is kept as credit"
                    self._out.append((peer, m.Revoke(cid, reason)))
                    self._emit(E.PaymentReceived, cid, counterpart=peer, amount_msat=msg.amount_msat,
                               reason=reason, method=msg.method, proof=msg.proof, cost_msat=0,
                               account="", unknown=True)
                    return
            if isinstance(msg, m.UsageRequest) and old is not None:
                self._out.append((peer, m.Usage.one(cid, old.up, old.down, True)))
                return
            return self._violation(peer, msg, "unknown contract id")
        f = b.flows[c.key]
        if isinstance(msg, (m.Accept, m.Reject)):
            if c.state is not State.PROPOSED or f.proposal is not c:
                return self._violation(peer, msg, f"contract is {c.state.value}")
            if isinstance(msg, m.Accept):
                self._on_accept(f, c, now)
                if msg.credit:
                    self._pay_from_credit(c, now)
                return
            return self._on_reject(f, c, msg, now)
        if isinstance(msg, m.Pay):
            if c.state not in (State.ACCEPTED, State.GRACE, State.PAID):
                return self._violation(peer, msg, f"contract is {c.state.value}")
            return self._on_pay(peer, c, msg)
        if isinstance(msg, m.UsageRequest):
            self._out.append((peer, m.Usage.one(c.contract_id, c.up, c.down, c.state not in FORWARDING
                                                and c.state is not State.ACCEPTED)))
            return
        return self._violation(peer, msg, "not a message a client sends")

    def _on_pay(self, peer: bytes, c: Contract, msg: m.Pay) -> None:
        if c.paid:
            self._out.append((peer, m.Paid(c.contract_id, self.credit.balance(peer))))
            return
        if msg.method not in c.methods:
            self._out.append((peer, m.PaymentFailed(c.contract_id, f"method {msg.method!r} not accepted"[:200])))
            return
        if msg.amount_msat < c.cost_msat:
            self._out.append((peer, m.PaymentFailed(
                c.contract_id, f"amount {msg.amount_msat} msat is below the cost {c.cost_msat} msat")))
            return
        self._emit(E.PaymentReceived, c, amount_msat=msg.amount_msat, method=msg.method, proof=msg.proof,
                   cost_msat=c.cost_msat, account=c.account)

    def _on_request(self, peer: bytes, msg: m.Request, now: float) -> None:
        key, plen = pk.parse_prefix(msg.destination)
        if plen != self.meter.plen(key):
            self._out.append((peer, m.NoDeal(msg.destination, f"this gateway prices /{self.meter.plen(key)}"
                                             " destinations", 0)))
            return
        f = self._flow(peer, key, now)
        if f.free:
            self._out.append((peer, m.NoDeal(f.destination, "free destination: no contract needed", 0)))
            return
        if f.nodeal_until > now:
            self._out.append((peer, m.NoDeal(f.destination, f.nodeal_reason[:m.MAX_TEXT],
                                             int(f.nodeal_until - now) + 1)))
            return
        # The client asks when its own queue is empty; ours may still hold the contract it
        # just started (the two meters switch a few packets apart), so allow one more.
        if f.proposal is not None or f in self._waiting or len(f.queue) >= MAX_QUEUED or (
                f.current is not None and f.current.state is State.ACCEPTED):
            return      # a proposal is on its way / the next contracts are already queued
        b = self.books[peer]
        if self._saturated(b):
            return self._suppress(b, now)    # the client asks again later
        pr = self.pricing
        limit_kb = pr.contract_kb
        if msg.limit_kb:
            # a fast flow asks for bigger contracts: fewer negotiations and payments per second
            limit_kb = max(pr.contract_kb, min(msg.limit_kb, pr.max_contract_kb))
        self._open(f, now, limit_kb, pr.contract_time_s)

    def _violation(self, peer: bytes, msg: m.Message, why: str) -> None:
        self._emit(E.ProtocolViolation, getattr(msg, "contract_id", None), counterpart=peer,
                   reason=f"{msg.TYPE}: {why}")

    # --- payment backend inputs ------------------------------------------------------------

    def payment_confirmed(self, contract_id: str, now: float, credit_msat: int | None = None,
                          counterpart: bytes | None = None) -> None:
        """The contract's payment is final.  ``credit_msat``: the peer's prepaid credit after it
        (sent in PAID; None: the engine asks ``credit.balance``)."""
        c = self.find(contract_id, counterpart)
        if c is None or (c.paid and c.ended_at is not None):
            return
        if c.state is State.PROPOSED or c.state is State.REJECTED or c.state is State.NO_DEAL:
            return self._violation(c.peer, m.Paid(contract_id), f"payment for a {c.state.value} contract")
        c.apply(Ev.PAID)
        c.paid = True
        b = self.books[c.peer]
        b.settle(c)
        self._grace_renewed(b, c)
        b.paid_contracts += 1
        if credit_msat is None:
            credit_msat = self.credit.balance(c.peer)
        self._out.append((c.peer, m.Paid(contract_id, credit_msat)))
        self._emit(E.Paid, c, amount_msat=c.cost_msat, credit_msat=credit_msat, from_credit=c.credit)
        f = b.flows.get(c.key)
        if f is not None and f.current is c:
            if c.state is State.PAID and c.activated_at is not None:
                if c.expires_at is None:
                    c.expires_at = now + c.time_s
                c.apply(Ev.ACTIVATE)
                c.arm(True)
                self._sched(f, c, now)
                self._release(f, now)

    def payment_failed(self, contract_id: str, reason: str, now: float, counterpart: bytes | None = None) -> None:
        c = self.find(contract_id, counterpart)
        if c is None or c.state is State.PROPOSED or not allowed(c.state, Ev.PAYMENT_FAILED):
            return
        c.apply(Ev.PAYMENT_FAILED)
        self._out.append((c.peer, m.PaymentFailed(contract_id, reason[:m.MAX_TEXT])))
        self._emit(E.PaymentFailed, c, reason=reason)

    # --- outputs -----------------------------------------------------------------------------

    def take_outgoing(self) -> list[tuple[bytes, m.Message]]:
        out, self._out = self._out, []
        return out

    def take_released(self) -> list[tuple[bytes, bytes]]:
        out, self._released = self._released, []
        return out
