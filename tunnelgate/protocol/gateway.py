"""Gateway side of contract negotiation and enforcement (sans-IO).

The daemon calls, per packet, ``outbound`` (client -> internet) / ``inbound``
(internet -> client); per decoded control message ``on_message``; every ~0.1-0.25 s
``poll(now)``; and after each of these drains ``take_outgoing`` (messages per peer,
to encode and send on that peer's control channel), ``take_released`` (held
packets to write to the TUN now) and ``take_events``.  Payment verification is
outside: a ``payment_received`` event carries method/proof/amount, the daemon
verifies and calls ``payment_confirmed`` or ``payment_failed``.

``now`` is wall-clock seconds (time.time()) so that snapshots stay meaningful
after a restart.  Ids come from ``new_id`` (the daemon passes a random one, e.g.
``lambda: secrets.token_hex(8)``); the default is a counter, deterministic for tests.

Over 600 lines: the seller carries its own copy of the contract lifecycle, holding and the
per-peer bounds until the shared book of issue 22 (item 1) takes the lifecycle.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, replace
from typing import Callable

from tunnelgate import packet as pk
from tunnelgate.meter import DROP, FORWARD, HELD, MISS, Flow, GatewayMeter
from tunnelgate.money import BYTES_PER_KB, format_price
from tunnelgate.protocol import messages as m
from tunnelgate.protocol.contract import FORWARDING, TERMINAL, Contract, Ev, Event, State, allowed

ENDED_AFTER_ACCEPT = frozenset({State.EXHAUSTED, State.EXPIRED, State.REVOKED})

HISTORY_KEPT = 1024   # ended contracts kept in memory (late payments, USAGE requests)
MAX_QUEUED = 3   # accepted contracts waiting behind the current one, per destination
PRUNE_FLOWS = 4096   # a peer with this many flows has its idle ones dropped
# A peer over its open-proposal limit hears once, then at most every this many seconds,
# how many packets to new destinations were dropped (one event, not one per destination).
SUPPRESSED_REPORT_S = 10

# timer kinds (see GatewayEngine.poll)
T_PROPOSAL, T_GRACE, T_EXPIRE, T_USAGE, T_NODEAL, T_SUPPRESSED = range(6)

# event kinds
EV_PROPOSED = "proposed"
EV_ACCEPTED = "accepted"
EV_REJECTED = "rejected"
EV_NO_DEAL = "no_deal"
EV_NO_DEAL_EXPIRED = "no_deal_expired"
EV_WITHDRAWN = "withdrawn"
EV_ACTIVATED = "activated"
EV_PAYMENT_RECEIVED = "payment_received"     # daemon: verify data["proof"] then confirm/fail
EV_PAID = "paid"
EV_PAYMENT_FAILED = "payment_failed"
EV_EXHAUSTED = "exhausted"
EV_EXPIRED = "expired"
EV_REVOKED = "revoked"
EV_HELD_DROPPED = "held_dropped"
EV_PROTOCOL = "protocol_violation"
EV_PROPOSALS_SUPPRESSED = "proposals_suppressed"


@dataclass(frozen=True)
class Pricing:
    """Gateway pricing policy.  Prices in price units (micro-msat per KB, see money.py;
    parse config strings with money.parse_price)."""
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


def _plen(scope: str | int, bits: int) -> int:
    if scope == "host":
        return bits
    if isinstance(scope, bool) or not isinstance(scope, int) or not 0 <= scope <= bits:
        raise ValueError(f"scope must be 'host' or a prefix length 0..{bits}, got {scope!r}")
    return scope


class _Peer:
    __slots__ = ("no_grace", "held_packets", "held_bytes", "drops_held", "drops_no_deal",
                 "drops_no_contract_in", "paid_contracts", "no_account", "credit_contracts",
                 "proposals", "drops_proposals", "suppressed", "suppress_timer", "unpaid")

    def __init__(self):
        self.no_grace = False
        self.held_packets = self.held_bytes = 0
        self.drops_held = self.drops_no_deal = self.drops_no_contract_in = 0
        self.paid_contracts = 0
        self.no_account = 0
        self.credit_contracts = 0
        self.proposals = 0          # open proposals (flows with f.proposal set)
        self.drops_proposals = 0    # packets dropped: too many open proposals
        self.suppressed = 0         # of those, not yet reported in an event
        self.suppress_timer = False
        self.unpaid: set[str] = set()   # ids of accepted contracts whose payment is still due


class MemoryCredit:
    """Prepaid credit per peer, in memory (tests; the daemon keeps it in the payment journal).

    The engine calls ``balance(peer)`` (status) and ``spend(peer, msat, contract_id)`` at an
    ACCEPT that asks to be paid from credit: the remaining balance, or None (not enough; nothing
    taken).  Spending twice for the same contract takes once."""

    def __init__(self, balances: dict[bytes, int] | None = None):
        self.balances: dict[bytes, int] = dict(balances or {})
        self.spent: dict[str, int] = {}

    def balance(self, peer: bytes) -> int:
        return self.balances.get(peer, 0)

    def spend(self, peer: bytes, msat: int, contract_id: str) -> int | None:
        if contract_id in self.spent:
            return self.balance(peer)
        have = self.balance(peer)
        if have < msat:
            return None
        self.balances[peer] = have - msat
        self.spent[contract_id] = msat
        return self.balances[peer]

    def add(self, peer: bytes, msat: int) -> int:
        self.balances[peer] = self.balance(peer) + msat
        return self.balances[peer]


class GatewayEngine:
    """``account_for(contract_id) -> str | None``: the payment account advertised in a
    PROPOSE (e.g. a fresh bitcoin address per contract); None = none available right now (no
    proposal; the next packet or REQUEST tries again).  Default: ``pricing.account``.
    ``credit``: prepaid credit per peer (see MemoryCredit); default: an empty MemoryCredit."""

    def __init__(self, pricing: Pricing, new_id: Callable[[], str] | None = None,
                 account_for: Callable[[str], str | None] | None = None, credit=None):
        self.pricing = pricing
        self.account_for = account_for
        self.credit = credit if credit is not None else MemoryCredit()
        self._seq = 0
        self._new_id = new_id or self._counter_id
        self.meter = GatewayMeter(_plen(pricing.scope, 32), _plen(pricing.scope6, 128))
        # longest prefix first: the first match is the longest (_price_for)
        self._prices = sorted(((*pk.parse_prefix(p), price) for p, price in pricing.prefix_prices),
                              key=lambda t: -t[1])
        self._peers: dict[bytes, _Peer] = {}
        self._contracts: dict[str, Contract] = {}      # live + proposed, by id
        self._history: list[Contract] = []             # ended, most recent last (bounded)
        self._nodeal: set[Flow] = set()
        self._unpaid: dict[str, Contract] = {}         # ended in grace, payment still due
        # Timers: a heap of (when, n, kind, object), invalidated lazily (an entry whose
        # deadline no longer matches the object's is skipped), so poll costs what is due.
        self._timers: list[tuple[float, int, int, object]] = []
        self._tn = itertools.count()
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
        # bumped when a contract ends (exhausted, expired, revoked): the daemon writes the
        # changed records through before it forwards anything more (see snapshot_changes),
        # so an ended contract cannot come back to life after a crash
        self.durable_seq = 0
        self._out: list[tuple[bytes, m.Message]] = []
        self._released: list[tuple[bytes, bytes]] = []
        self._events: list[Event] = []
        self.held_total_bytes = 0                      # all peers' held packets

    def _counter_id(self) -> str:
        self._seq += 1
        return f"c{self._seq}"

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
        self._peer(peer).drops_no_contract_in += 1
        return DROP

    # --- slow path -------------------------------------------------------------------------

    def _peer(self, peer: bytes) -> _Peer:
        p = self._peers.get(peer)
        if p is None:
            p = self._peers[peer] = _Peer()
        return p

    def set_prices(self, **changes) -> None:
        """Live settings: default_price, floor_price. Flows already priced get the new list
        price for their next proposal; running contracts keep the price they were sold at."""
        self.pricing = replace(self.pricing, **changes)
        for flows in self.meter.peers.values():
            for f in flows.values():
                f.list_price = self._price_for(f.key)
                f.free = f.list_price == 0

    def _price_for(self, key: bytes) -> int:
        for pkey, plen, price in self._prices:
            if len(key) == len(pkey) and pk.mask(key, plen) == pkey:
                return price
        return self.pricing.default_price

    def _flow(self, peer: bytes, addr: bytes, now: float) -> Flow:
        key = self.meter.key(addr)
        flows = self.meter.peers.get(peer)
        if flows is None:
            flows = self.meter.peers[peer] = {}
            self._peer(peer)
        f = flows.get(key)
        if f is None:
            plen = self.meter.plen(addr)
            f = flows[key] = Flow(peer, key, plen, pk.prefix_text(key, plen))
            f.list_price = self._price_for(key)
            f.free = f.list_price == 0
            self._prune_due.add(peer)        # poll drops idle flows if it has too many
        return f

    def _usable(self, f: Flow, now: float) -> bool:
        """Ends a spent current contract, activates the queued one; True if traffic may pass."""
        while True:
            c = f.current
            if c is not None:
                if c.state in FORWARDING:
                    if c.used >= c.limit_bytes:
                        self._end(f, c, Ev.EXHAUST, "data limit reached", now)
                        continue
                    if now >= c.expires_at:
                        self._end(f, c, Ev.EXPIRE, "time limit reached", now)
                        continue
                    return c.used < c.stop_bytes and now < c.stop_at
                if c.state is State.ACCEPTED:
                    return False           # waiting for payment (no grace)
                f.current = None
                self._dirty_flows.add(f)
            if not f.queue:
                return f.free
            self._activate(f, f.queue.popleft(), now)

    def _slow_out(self, peer: bytes, dst: bytes, length: int, packet: bytes, now: float) -> int:
        flows = self.meter.peers.get(peer)
        f = flows.get(self.meter.key(dst)) if flows is not None else None
        if f is None or (f.proposal is None and f.current is None and not f.queue
                         and f.nodeal_until <= now):
            p = self._peers.get(peer)
            if p is not None and self._saturated(p) and not (
                    f.free if f is not None else self._price_for(self.meter.key(dst)) == 0):
                # a new destination while many proposals are open: no flow, no proposal,
                # nothing held, so one peer spraying destinations costs a counter
                self._suppress(p, peer, now)
                if f is not None:
                    f.dropped += 1
                return DROP
        if f is None:
            f = self._flow(peer, dst, now)
        if self._usable(f, now):
            return self.meter.up(peer, dst, length, now)
        p = self._peers[peer]
        if f.nodeal_until > now:
            p.drops_no_deal += 1
            f.dropped += 1
            return DROP
        if f.proposal is None and f.current is None and not f.queue:
            self._propose(f, now, 1, f.list_price, self.pricing.contract_kb, self.pricing.contract_time_s)
        pr = self.pricing
        if (p.held_packets >= pr.held_max_packets
                or p.held_bytes + len(packet) > pr.held_max_bytes
                or len(f.held) >= pr.held_max_flow_packets
                or self.held_total_bytes + len(packet) > pr.held_total_max_bytes):
            p.drops_held += 1
            f.dropped += 1
            return DROP
        f.held.append(packet)
        f.held_bytes += len(packet)
        p.held_packets += 1
        p.held_bytes += len(packet)
        self.held_total_bytes += len(packet)
        return HELD

    def _saturated(self, p: _Peer) -> bool:
        """Too much is open for this peer to be offered another contract now."""
        return (p.proposals >= self.pricing.max_pending_proposals
                or len(p.unpaid) >= self.pricing.max_unpaid_contracts)

    def _suppress(self, p: _Peer, peer: bytes, now: float) -> None:
        p.drops_proposals += 1
        p.suppressed += 1
        if not p.suppress_timer:       # the first of a burst is told now, the rest by the timer
            self._report_suppressed(p, peer, now)

    def _report_suppressed(self, p: _Peer, peer: bytes, now: float) -> None:
        if not p.suppressed:
            p.suppress_timer = False
            return
        n, p.suppressed = p.suppressed, 0
        pr = self.pricing
        self._emit(EV_PROPOSALS_SUPPRESSED, peer=peer,
                   reason=f"{n} packet(s) to new destinations dropped: the peer had "
                          f"{pr.max_pending_proposals} open proposals or {pr.max_unpaid_contracts} "
                          "unpaid contracts (the limits)",
                   data={"dropped": n, "open_proposals": p.proposals, "unpaid": len(p.unpaid)})
        p.suppress_timer = True
        self._at(now + SUPPRESSED_REPORT_S, T_SUPPRESSED, peer)

    def _set_proposal(self, f: Flow, c: Contract | None) -> None:
        """Every change of f.proposal goes here, so the peer's count of open ones stays true."""
        p = self._peers[f.peer]
        p.proposals += (c is not None) - (f.proposal is not None)
        f.proposal = c

    def _release(self, f: Flow, now: float) -> None:
        """Held packets go out now, metered, while the contract allows; the rest are dropped."""
        if not f.held:
            return
        held, f.held = f.held, []
        p = self._peers[f.peer]
        p.held_packets -= len(held)
        p.held_bytes -= f.held_bytes
        self.held_total_bytes -= f.held_bytes
        f.held_bytes = 0
        for i, pkt in enumerate(held):
            hdr = pk.dst_and_length(pkt)
            length = hdr[1] if hdr else len(pkt)
            if self.meter.up(f.peer, hdr[0] if hdr else f.key, length, now) == FORWARD:
                self._released.append((f.peer, pkt))
            elif self._usable(f, now) and self.meter.up(f.peer, hdr[0] if hdr else f.key,
                                                         length, now) == FORWARD:
                self._released.append((f.peer, pkt))
            else:                                      # keep the rest held (e.g. grace bytes used)
                for rest in held[i:]:
                    f.held.append(rest)
                    f.held_bytes += len(rest)
                p.held_packets += len(f.held)
                p.held_bytes += f.held_bytes
                self.held_total_bytes += f.held_bytes
                return

    def _drop_held(self, f: Flow, reason: str) -> None:
        if not f.held:
            return
        p = self._peers[f.peer]
        n = len(f.held)
        p.held_packets -= n
        p.held_bytes -= f.held_bytes
        self.held_total_bytes -= f.held_bytes
        p.drops_held += n
        f.dropped += n
        f.held, f.held_bytes = [], 0
        self._emit(EV_HELD_DROPPED, f=f, reason=reason, data={"packets": n})

    # --- negotiation -------------------------------------------------------------------------

    def _propose(self, f: Flow, now: float, rnd: int, price: int, limit_kb: int, time_s: int) -> None:
        pr = self.pricing
        cid = self._new_id()
        account = pr.account
        if self.account_for is not None:
            account = self.account_for(cid)
            if account is None:          # no account to give right now: propose on the next try
                self._peers[f.peer].no_account += 1
                return
        grace = not self._peers[f.peer].no_grace
        c = Contract(cid, f.peer, f.key, f.plen, f.destination, price, limit_kb, time_s,
                     pr.payment_methods, account, rnd, pr.grace_time_s if grace else 0,
                     pr.grace_kb if grace else 0, now)
        self._contracts[cid] = c
        self._set_proposal(f, c)
        self._at(c.created_at + pr.proposal_timeout_s, T_PROPOSAL, c)
        self._out.append((f.peer, m.Propose(cid, f.destination, price, limit_kb, time_s,
                                            pr.payment_methods, account, rnd, c.grace_s, c.grace_kb)))
        self._emit(EV_PROPOSED, c, data={"price": price, "round": rnd})

    def _no_deal(self, f: Flow, c: Contract | None, reason: str, now: float) -> None:
        backoff = self.pricing.no_deal_backoff_s
        if c is not None and c.state is State.PROPOSED:
            c.apply(Ev.NO_DEAL)
            c.reason = reason
            self._retire(c, now)
        self._set_proposal(f, None)
        f.nodeal_until = now + backoff
        f.nodeal_reason = f.reason = reason
        self._nodeal.add(f)
        self._at(f.nodeal_until, T_NODEAL, f)
        self._out.append((f.peer, m.NoDeal(f.destination, reason[:m.MAX_TEXT], backoff,
                                           c.contract_id if c else None)))
        self._emit(EV_NO_DEAL, c, f=f, reason=reason, data={"retry_after_s": backoff})
        self._drop_held(f, "no deal: " + reason)

    def _on_reject(self, f: Flow, c: Contract, msg: m.Reject, now: float) -> None:
        c.apply(Ev.REJECT)
        c.reason = msg.reason
        self._retire(c, now)
        self._set_proposal(f, None)
        self._emit(EV_REJECTED, c, reason=msg.reason,
                   data={"counter_price": msg.price, "counter_kb": msg.limit_kb, "counter_s": msg.time_s})
        if msg.price is None and msg.limit_kb is None and msg.time_s is None:
            return self._no_deal(f, c, f"client declined: {msg.reason}", now)
        if c.round >= self.pricing.max_rounds:
            return self._no_deal(f, c, f"no agreement after {c.round} rounds", now)
        floor = min(self.pricing.floor_price, f.list_price)
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
        self._propose(f, now, c.round + 1, price, limit_kb, time_s)

    def _on_accept(self, f: Flow, c: Contract, now: float) -> None:
        p = self._peers[f.peer]
        self._set_proposal(f, None)
        c.accepted_at = now
        c.grace_until = now + self.pricing.grace_time_s     # payment deadline
        p.unpaid.add(c.contract_id)
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
        elif p.no_grace:
            c.apply(Ev.ACCEPT_WAIT)
            f.current = c
            c.activated_at, c.expires_at = now, now + c.time_s
        else:
            c.apply(Ev.ACCEPT_ACTIVE)
            f.current = c
            c.activated_at, c.expires_at = now, now + c.time_s
            c.arm(True)
        self._emit(EV_ACCEPTED, c, data={"queued": c in f.queue})
        self._at(c.grace_until, T_GRACE, c)
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
            self._emit(EV_PAYMENT_FAILED, c, reason=reason, data={"credit_msat": have})
            return
        c.credit = True
        self._peers[c.peer].credit_contracts += 1
        self.payment_confirmed(c.contract_id, now, credit_msat=left)

    def _activate(self, f: Flow, c: Contract, now: float) -> None:
        f.current = c
        c.activated_at, c.expires_at = now, now + c.time_s
        if c.state is State.PAID:
            c.apply(Ev.ACTIVATE)
            c.arm(True)
        elif not self._peers[f.peer].no_grace:
            c.apply(Ev.ACTIVATE)
            c.arm(True)
        # else: stays ACCEPTED until paid (no grace for this peer)
        c.last_usage_sent = -1
        self._emit(EV_ACTIVATED, c, data={"state": c.state.value})
        self._sched(f, c, now)

    def _end(self, f: Flow, c: Contract, ev: Ev, reason: str, now: float) -> None:
        c.apply(ev)
        c.disarm()
        c.reason = reason
        f.current = None
        mt = self._metered.get(c.peer)
        if mt is not None:
            mt.pop(c.contract_id, None)
        self._usage_final(c)
        c.last_usage_sent = c.used
        self._retire(c, now)
        if not c.paid and ev is not Ev.REVOKE and c.grace_until is not None:
            self._unpaid[c.contract_id] = c       # still owes its payment by grace_until
        kind = {Ev.EXHAUST: EV_EXHAUSTED, Ev.EXPIRE: EV_EXPIRED, Ev.REVOKE: EV_REVOKED}[ev]
        self._emit(kind, c, reason=reason, data={"up": c.up, "down": c.down})

    def _retire(self, c: Contract, now: float) -> None:
        c.ended_at = now
        if c.accepted_at is not None:
            self.durable_seq += 1
        self._contracts.pop(c.contract_id, None)
        self._history.append(c)
        if len(self._history) > HISTORY_KEPT:
            del self._history[:256]

    def _revoke(self, f: Flow, c: Contract, reason: str, now: float) -> None:
        self._out.append((c.peer, m.Revoke(c.contract_id, reason[:m.MAX_TEXT])))
        if c in f.queue:
            f.queue.remove(c)
            c.apply(Ev.REVOKE)
            c.reason = reason
            self._retire(c, now)
            self._emit(EV_REVOKED, c, reason=reason)
        else:
            self._end(f, c, Ev.REVOKE, reason, now)
            self._drop_held(f, "contract revoked")

    # --- control messages --------------------------------------------------------------------

    def on_message(self, peer: bytes, msg: m.Message, now: float) -> None:
        self._peer(peer)
        if isinstance(msg, m.QuoteRequest):
            return self._on_quote(peer, msg, now)
        if isinstance(msg, m.Request):
            return self._on_request(peer, msg, now)
        cid = getattr(msg, "contract_id", None)
        c = self._contracts.get(cid) if cid else None
        if c is None or c.peer != peer:
            if isinstance(msg, m.Pay):
                old = next((h for h in reversed(self._history)
                            if h.contract_id == cid and h.peer == peer), None)
                if old is not None and old.paid:
                    self._out.append((peer, m.Paid(cid, self.credit.balance(peer))))
                    return
                # a contract that ran out (or was revoked) before its payment arrived: the
                # client used it in grace and owes it; take the payment
                if old is not None and old.accepted_at is not None and old.state in ENDED_AFTER_ACCEPT:
                    return self._on_pay(peer, old, msg)
                if old is None and c is None:
                    # a contract we do not know (lost in a crash before it was saved): the
                    # payment is taken as the peer's credit (the daemon verifies it; a proof
                    # pays once), the contract id is revoked so the client moves on
                    reason = "unknown contract (the gateway restarted?): a valid payment is kept as credit"
                    self._out.append((peer, m.Revoke(cid, reason)))
                    self._emit(EV_PAYMENT_RECEIVED, cid, peer=peer, amount_msat=msg.amount_msat, reason=reason,
                               data={"method": msg.method, "proof": msg.proof, "cost_msat": 0, "account": "",
                                     "unknown": True})
                    return
            if isinstance(msg, m.UsageRequest):
                old = next((h for h in reversed(self._history)
                            if h.contract_id == cid and h.peer == peer), None)
                if old is not None:
                    self._out.append((peer, m.Usage.one(cid, old.up, old.down, True)))
                    return
            return self._violation(peer, msg, "unknown contract id")
        f = self.meter.peers[peer][c.key]
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
        self._emit(EV_PAYMENT_RECEIVED, c, amount_msat=msg.amount_msat,
                   data={"method": msg.method, "proof": msg.proof, "cost_msat": c.cost_msat,
                         "account": c.account})

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
        if f.proposal is not None or len(f.queue) >= MAX_QUEUED or (
                f.current is not None and f.current.state is State.ACCEPTED):
            return      # a proposal is on its way / the next contracts are already queued
        p = self._peers[peer]
        if self._saturated(p):
            return self._suppress(p, peer, now)    # the client asks again later
        pr = self.pricing
        limit_kb = pr.contract_kb
        if msg.limit_kb:
            # a fast flow asks for bigger contracts: fewer negotiations and payments per second
            limit_kb = max(pr.contract_kb, min(msg.limit_kb, pr.max_contract_kb))
        self._propose(f, now, 1, f.list_price, limit_kb, pr.contract_time_s)

    def _on_quote(self, peer: bytes, msg: m.QuoteRequest, now: float) -> None:
        addr, _ = pk.parse_prefix(msg.destination)
        key, plen = self.meter.key(addr), self.meter.plen(addr)
        price = self._price_for(key)
        flows = self.meter.peers.get(peer)
        f = flows.get(key) if flows else None
        reason = None
        if price == 0:
            reason = "free destination: no contract needed"
        elif f is not None and f.nodeal_until > now:
            reason = f"no deal for {int(f.nodeal_until - now) + 1} s: {f.nodeal_reason}"[:m.MAX_TEXT]
        pr, p = self.pricing, self._peers.get(peer)
        grace = p is None or not p.no_grace
        self._out.append((peer, m.Quote(pk.prefix_text(key, plen), price, pr.contract_kb, pr.contract_time_s,
                                        pr.payment_methods, pr.grace_time_s if grace else 0,
                                        pr.grace_kb if grace else 0, reason)))

    def _violation(self, peer: bytes, msg: m.Message, why: str) -> None:
        self._emit(EV_PROTOCOL, getattr(msg, "contract_id", None), peer=peer, reason=f"{msg.TYPE}: {why}")

    # --- payment backend inputs ------------------------------------------------------------

    def payment_confirmed(self, contract_id: str, now: float, credit_msat: int | None = None) -> None:
        """The contract's payment is final.  ``credit_msat``: the peer's prepaid credit after it
        (sent in PAID; None: the engine asks ``credit.balance``)."""
        c = self._contracts.get(contract_id)
        if c is None:
            c = next((h for h in reversed(self._history) if h.contract_id == contract_id), None)
            if c is None or c.paid:
                return
        if c.state is State.PROPOSED or c.state is State.REJECTED or c.state is State.NO_DEAL:
            return self._violation(c.peer, m.Paid(contract_id), f"payment for a {c.state.value} contract")
        c.apply(Ev.PAID)
        c.paid = True
        p = self._peers[c.peer]
        p.unpaid.discard(contract_id)
        p.no_grace = False
        p.paid_contracts += 1
        if credit_msat is None:
            credit_msat = self.credit.balance(c.peer)
        self._out.append((c.peer, m.Paid(contract_id, credit_msat)))
        self._emit(EV_PAID, c, amount_msat=c.cost_msat,
                   data={"credit_msat": credit_msat, "from_credit": c.credit})
        f = self.meter.peers.get(c.peer, {}).get(c.key)
        if f is not None and f.current is c:
            if c.state is State.PAID and c.activated_at is not None:
                if c.expires_at is None:
                    c.expires_at = now + c.time_s
                c.apply(Ev.ACTIVATE)
                c.arm(True)
                self._sched(f, c, now)
                self._release(f, now)

    def find(self, contract_id: str) -> Contract | None:
        """A contract this run knows (live, or ended and still in the history)."""
        c = self._contracts.get(contract_id)
        if c is None:
            c = next((h for h in reversed(self._history) if h.contract_id == contract_id), None)
        return c

    def payment_failed(self, contract_id: str, reason: str, now: float) -> None:
        c = self._contracts.get(contract_id)
        if c is None:
            c = next((h for h in reversed(self._history) if h.contract_id == contract_id), None)
        if c is None or c.state is State.PROPOSED or not allowed(c.state, Ev.PAYMENT_FAILED):
            return
        c.apply(Ev.PAYMENT_FAILED)
        self._out.append((c.peer, m.PaymentFailed(contract_id, reason[:m.MAX_TEXT])))
        self._emit(EV_PAYMENT_FAILED, c, reason=reason)

    # --- timers ------------------------------------------------------------------------------

    def _at(self, when: float, kind: int, obj) -> None:
        heapq.heappush(self._timers, (when, next(self._tn), kind, obj))

    def _sched(self, f: Flow, c: Contract, now: float) -> None:
        """Timers of a contract that became (or stays) current: its expiry, and the peer's
        USAGE reports while it forwards."""
        if f.current is not c:
            return
        if c.expires_at is not None:
            self._at(c.expires_at, T_EXPIRE, c)
        if c.state in FORWARDING:
            mt = self._metered.get(c.peer)
            if mt is None:
                mt = self._metered[c.peer] = {}
            mt[c.contract_id] = c
            if c.peer not in self._usage_due:
                self._usage_due.add(c.peer)
                self._at(now, T_USAGE, c.peer)

    def _usage_final(self, c: Contract) -> None:
        """A final USAGE, now; consecutive finals to one peer share a message."""
        item = (c.contract_id, c.up, c.down, True)
        out = self._out
        if out:
            peer, last = out[-1]
            if peer == c.peer and type(last) is m.Usage and len(last.items) < m.MAX_USAGE_ITEMS:
                out[-1] = (peer, m.Usage(last.items + (item,)))
                return
        out.append((c.peer, m.Usage((item,))))

    def poll(self, now: float) -> None:
        """Runs what is due: proposal timeouts, grace ends (revoke / unpaid), expiries, USAGE
        reports (one per peer per usage interval), no-deal back-off ends."""
        h = self._timers
        first_new = next(self._tn)      # timers set while this runs wait for the next poll
        later = []
        while h and h[0][0] <= now:
            entry = heapq.heappop(h)
            when, n, kind, obj = entry
            if n > first_new:
                later.append(entry)
                continue
            if kind == T_USAGE:
                self._usage_tick(obj, now)
            elif kind == T_EXPIRE:
                c = obj
                if when != c.expires_at or c.state not in FORWARDING:
                    continue
                f = self.meter.peers.get(c.peer, {}).get(c.key)
                if f is None or f.current is not c:
                    continue
                self._usable(f, now)                # ends on expiry, starts the next
                if f.current is not c and f.current is not None:
                    self._release(f, now)
            elif kind == T_GRACE:
                self._grace_end(obj, when, now)
            elif kind == T_PROPOSAL:
                c = obj
                if c.state is not State.PROPOSED or self._contracts.get(c.contract_id) is not c:
                    continue
                f = self.meter.peers[c.peer][c.key]
                c.apply(Ev.WITHDRAW)
                c.reason = "no answer to the proposal"
                self._retire(c, now)
                if f.proposal is c:
                    self._set_proposal(f, None)
                self._emit(EV_WITHDRAWN, c, reason=c.reason)
                self._drop_held(f, "no answer to the proposal")
            elif kind == T_NODEAL:
                f = obj
                if f not in self._nodeal or when != f.nodeal_until:
                    continue
                self._nodeal.discard(f)
                f.nodeal_until = 0.0
                self._emit(EV_NO_DEAL_EXPIRED, f=f, reason=f.nodeal_reason)
            elif kind == T_SUPPRESSED:
                p = self._peers.get(obj)
                if p is not None:
                    self._report_suppressed(p, obj, now)
        for entry in later:
            heapq.heappush(h, entry)
        if self._prune_due:
            self._prune()

    def _grace_end(self, c: Contract, when: float, now: float) -> None:
        if c.paid:
            self._unpaid.pop(c.contract_id, None)
            return
        if when != c.grace_until:
            return
        p = self._peers.get(c.peer)
        if p is not None:
            p.unpaid.discard(c.contract_id)
        cid = c.contract_id
        if self._contracts.get(cid) is c:
            if c.state is State.PROPOSED:
                return
            self._peers[c.peer].no_grace = True
            self._revoke(self.meter.peers[c.peer][c.key], c,
                         "payment not confirmed within the grace period", now)
        elif self._unpaid.get(cid) is c:
            del self._unpaid[cid]
            self._peers[c.peer].no_grace = True
            reason = "payment not confirmed within the grace period (the contract had ended)"
            self._out.append((c.peer, m.PaymentFailed(cid, reason)))
            self._emit(EV_PAYMENT_FAILED, c, reason=reason)

    def _usage_tick(self, peer: bytes, now: float) -> None:
        """One USAGE for the peer's contracts whose count moved since the last; a contract
        that reached its limit with no packet since ends here (its final USAGE goes out)."""
        self._usage_due.discard(peer)
        mt = self._metered.get(peer)
        flows = self.meter.peers.get(peer)
        if not mt or flows is None:
            self._metered.pop(peer, None)
            return
        items = []
        for cid, c in list(mt.items()):
            f = flows.get(c.key)
            if f is None or f.current is not c or c.state not in FORWARDING:
                del mt[cid]
                continue
            if c.used >= c.limit_bytes or now >= c.expires_at:
                self._usable(f, now)
                if f.current is not c:
                    mt.pop(cid, None)
                    if f.current is not None:
                        self._release(f, now)
                    continue
            if c.used != c.last_usage_sent:
                items.append((cid, c.up, c.down, False))
                c.last_usage_sent, c.last_usage_at = c.used, now
        step = m.MAX_USAGE_ITEMS
        for i in range(0, len(items), step):
            self._out.append((peer, m.Usage(tuple(items[i:i + step]))))
        if mt:
            if peer not in self._usage_due:     # (a contract started here may have set one)
                self._usage_due.add(peer)
                self._at(now + self.pricing.usage_interval_s, T_USAGE, peer)
        else:
            del self._metered[peer]

    def _prune(self) -> None:
        due, self._prune_due = self._prune_due, set()
        for peer in due:
            flows = self.meter.peers.get(peer)
            if flows is None or len(flows) < PRUNE_FLOWS:
                continue
            for k in [k for k, f in flows.items() if f.current is None and not f.queue and not f.held
                      and f.proposal is None and f.nodeal_until == 0.0]:
                del flows[k]

    # --- outputs -----------------------------------------------------------------------------

    def _emit(self, kind: str, c: Contract | str | None = None, f: Flow | None = None,
              peer: bytes | None = None, reason: str = "", amount_msat: int = 0, data=None) -> None:
        # every change of a contract, flow or peer standing comes with an event: mark it for
        # the next incremental save (its state is read then, so later changes are included)
        if f is not None:
            self._dirty_flows.add(f)
        if isinstance(c, Contract):
            self._dirty.add(c)
            self._dirty_peers.add(c.peer)
            flows = self.meter.peers.get(c.peer)
            cf = flows.get(c.key) if flows else None
            if cf is not None:
                self._dirty_flows.add(cf)
            self._events.append(Event(kind, c.contract_id, c.peer, c.destination, reason,
                                      amount_msat, data or {}))
        elif f is not None:
            self._events.append(Event(kind, None, f.peer, f.destination, reason, amount_msat, data or {}))
        else:
            self._events.append(Event(kind, c, peer, None, reason, amount_msat, data or {}))

    def take_outgoing(self) -> list[tuple[bytes, m.Message]]:
        out, self._out = self._out, []
        return out

    def take_released(self) -> list[tuple[bytes, bytes]]:
        out, self._released = self._released, []
        return out

    def take_events(self) -> list[Event]:
        out, self._events = self._events, []
        return out

    # --- status ------------------------------------------------------------------------------

    def contract_list(self, peer: bytes | None = None, history: bool = False) -> list[Contract]:
        """The live contracts (with `history` also the ended ones this run
        remembers), copied. Cheap enough to take under the daemon's engine lock,
        so that the views, O(contracts), are built outside it: the data path
        meters under that lock (10,000 contracts' views take ≈ 17 ms)."""
        cs = list(self._contracts.values()) + (self._history if history else [])
        return cs if peer is None else [c for c in cs if c.peer == peer]

    def contracts(self, peer: bytes | None = None, now: float = 0.0, history: bool = False) -> list[dict]:
        return [c.view(now) for c in self.contract_list(peer, history)]

    def status_snapshot(self) -> tuple[list, list[Contract]]:
        """What status() reads, copied (see contract_list): peers with their
        flows, and the live contracts."""
        flows_of = self.meter.peers
        return ([(peer, p, list(flows_of.get(peer, {}).values())) for peer, p in self._peers.items()],
                self.contract_list())

    def status(self, now: float, snapshot: tuple[list, list[Contract]] | None = None) -> dict:
        """Peers' standing and the live contracts' views, from `snapshot`
        (status_snapshot(), taken under the engine lock) or from the engine."""
        peer_flows, contracts = snapshot if snapshot is not None else self.status_snapshot()
        peers = {}
        for peer, p, flows in peer_flows:
            peers[peer.hex()] = {
                "grace": not p.no_grace, "paid_contracts": p.paid_contracts,
                "credit_msat": self.credit.balance(peer), "credit_contracts": p.credit_contracts,
                "no_account": p.no_account,
                "held_packets": p.held_packets, "held_bytes": p.held_bytes,
                "drops_held": p.drops_held, "drops_no_deal": p.drops_no_deal,
                "open_proposals": p.proposals, "unpaid_contracts": len(p.unpaid),
                "drops_proposal_limit": p.drops_proposals,
                "drops_inbound_no_contract": p.drops_no_contract_in,
                "no_deal": {f.destination: {"reason": f.nodeal_reason,
                                            "retry_in_s": max(0, int(f.nodeal_until - now))}
                            for f in flows if f.nodeal_until > now},
                "free_bytes": sum(f.free_bytes for f in flows),
            }
        return {"peers": peers, "contracts": [c.view(now) for c in contracts]}

    def why(self, peer: bytes, dst: bytes | str, now: float) -> str:
        """Why traffic from peer to dst is (not) forwarded, for `status`."""
        dst = pk.addr_bytes(dst)
        f = self.meter.peers.get(peer, {}).get(self.meter.key(dst))
        if f is None:
            return "no contract yet"
        if f.free:
            return "free destination"
        if f.nodeal_until > now:
            return f"no deal: {f.nodeal_reason} (retry in {int(f.nodeal_until - now)} s)"
        c = f.current
        if c is None:
            return "negotiating" if f.proposal else "no contract"
        return f"contract {c.contract_id} {c.state.value}"

    # --- persistence -------------------------------------------------------------------------

    @staticmethod
    def _flow_record(f: Flow) -> dict | None:
        if f.current is None and not f.queue and f.nodeal_until == 0.0:
            return None
        return {"peer": f.peer.hex(), "key": f.key.hex(), "plen": f.plen,
                "current": f.current.contract_id if f.current else None,
                "queue": [c.contract_id for c in f.queue],
                "nodeal_until": f.nodeal_until, "nodeal_reason": f.nodeal_reason}

    @staticmethod
    def flow_id(peer_hex: str, key_hex: str) -> str:
        return f"{peer_hex}/{key_hex}"

    @property
    def has_changes(self) -> bool:
        """Records changed since the last snapshot_changes() (the daemon writes them through)."""
        return bool(self._dirty or self._dirty_flows or self._dirty_peers)

    def snapshot_changes(self, counters: bool = True) -> dict:
        """What changed since the last call (or restore), cheap enough to run under the engine
        lock: full records of the contracts, flows and peers whose state changed, the counters
        (used, up, down) of the running contracts that moved (with ``counters``: the daemon
        batches those, once a second), and the ids of records to delete.  A proposal has a
        record (an ACCEPT that crosses a restart finds it); a contract that was accepted keeps
        its record when it ends (state EXHAUSTED/EXPIRED/REVOKED: a tombstone, so it never
        comes back and the payment journal finds it); a proposal that came to nothing loses
        its record.  ``restore`` takes the saved records back (as a ``snapshot()``)."""
        contracts, removed = [], []
        live = self._contracts
        for c in self._dirty:
            cid = c.contract_id
            if live.get(cid) is c or c.accepted_at is not None:
                contracts.append(c.to_dict())
                c.saved_used = c.used
                self._persisted.add(cid)
            elif cid in self._persisted:
                self._persisted.discard(cid)
                removed.append(cid)
        self._dirty = set()
        counters_out = []
        for mt in (self._metered.values() if counters else ()):
            for cid, c in mt.items():
                if c.used != c.saved_used and cid in self._persisted:
                    counters_out.append((cid, c.used, c.up, c.down))
                    c.saved_used = c.used
        flows, flows_removed = [], []
        for f in self._dirty_flows:
            rec = self._flow_record(f)
            fid = self.flow_id(f.peer.hex(), f.key.hex())
            if rec is not None:
                flows.append((fid, rec))
                self._saved_flows.add(f)
            elif f in self._saved_flows:
                self._saved_flows.discard(f)
                flows_removed.append(fid)
        self._dirty_flows = set()
        peers = {}
        for k in self._dirty_peers:
            p = self._peers.get(k)
            if p is not None:
                peers[k.hex()] = {"no_grace": p.no_grace, "paid_contracts": p.paid_contracts}
        self._dirty_peers = set()
        if self._retry_removed[0] or self._retry_removed[1]:
            (rc, rf), self._retry_removed = self._retry_removed, ([], [])
            removed = [i for i in rc if i not in self._persisted] + removed
            flows_removed = rf + flows_removed
        return {"version": 2, "seq": self._seq, "contracts": contracts, "counters": counters_out,
                "removed": removed, "flows": flows, "flows_removed": flows_removed, "peers": peers}

    def save_failed(self, changes: dict) -> None:
        """The store did not take ``changes``: the next snapshot_changes() has everything."""
        self._retry_removed = (self._retry_removed[0] + changes["removed"],
                               self._retry_removed[1] + changes["flows_removed"])
        self.mark_all_dirty()

    def mark_all_dirty(self) -> None:
        """The next snapshot_changes() has every record (a first save, or after a failed one)."""
        self._dirty.update(self._contracts.values())
        # ended ones too: a tombstone lost with a failed save must not leave the contract live
        self._dirty.update(c for c in self._history if c.accepted_at is not None)
        self._persisted.update(self._contracts)      # old records of gone contracts: deleted
        for fl in self.meter.peers.values():
            self._dirty_flows.update(fl.values())
        self._saved_flows.update(self._dirty_flows)
        self._dirty_peers.update(self._peers)

    def snapshot(self) -> dict:
        """JSON-able state: live contracts (not proposals), metered bytes, peer standing,
        no-deal back-offs.  Persist at least every second and on stop (or incrementally:
        snapshot_changes)."""
        flows = []
        for peer, fl in self.meter.peers.items():
            for f in fl.values():
                rec = self._flow_record(f)
                if rec is not None:
                    flows.append(rec)
        return {"version": 1, "seq": self._seq,
                "contracts": [c.to_dict() for c in self._contracts.values()]
                + [c.to_dict() for c in self._history if c.accepted_at is not None],
                "flows": flows,
                "peers": {k.hex(): {"no_grace": p.no_grace, "paid_contracts": p.paid_contracts}
                          for k, p in self._peers.items()}}

    def restore(self, snap: dict, now: float) -> None:
        """Resume from ``snapshot()`` (or the records snapshot_changes wrote); contracts whose
        time ran out meanwhile end at the next poll/packet.  Bytes metered after the last save
        of the counters are lost (in the client's favour); state changes were written through,
        so an ended contract stays ended, a proposal can still be accepted, and an ended one
        still owing its payment takes it within its grace."""
        self._seq = snap["seq"]
        for k, d in snap["peers"].items():
            p = self._peer(bytes.fromhex(k))
            p.no_grace, p.paid_contracts = d["no_grace"], d["paid_contracts"]
        byid = {}
        ended = []
        for d in snap["contracts"]:
            c = Contract.from_dict(d)
            c.saved_used = c.used
            self._persisted.add(c.contract_id)
            if c.state in TERMINAL:
                ended.append(c)
                continue
            byid[c.contract_id] = c
            self._contracts[c.contract_id] = c
        ended.sort(key=lambda c: c.ended_at or 0.0)
        for c in ended[-HISTORY_KEPT:]:
            self._history.append(c)
            if not c.paid and c.state is not State.REVOKED and c.grace_until is not None:
                self._unpaid[c.contract_id] = c
                self._at(c.grace_until, T_GRACE, c)
        for c in byid.values():
            if c.state is State.PROPOSED:
                f = self._flow(c.peer, c.key, now)
                if f.proposal is None or f.proposal.created_at < c.created_at:
                    f.proposal = c
                self._at(c.created_at + self.pricing.proposal_timeout_s, T_PROPOSAL, c)
        for d in snap["flows"]:
            peer, key = bytes.fromhex(d["peer"]), bytes.fromhex(d["key"])
            f = self._flow(peer, key, now)
            self._saved_flows.add(f)
            cur = byid.get(d["current"]) if d["current"] else None
            f.current = cur
            f.queue.extend(byid[i] for i in d["queue"] if i in byid)
            f.nodeal_until, f.nodeal_reason = d["nodeal_until"], d["nodeal_reason"]
            if f.nodeal_until:
                self._nodeal.add(f)
                self._at(f.nodeal_until, T_NODEAL, f)
            if cur is not None and cur.state in FORWARDING:
                cur.arm(not self._peers[peer].no_grace or cur.state is State.PAID)
            if cur is not None:
                self._sched(f, cur, now)
        placed = set()
        for flows in self.meter.peers.values():
            for f in flows.values():
                placed.update(id(c) for c in f.queue)
                if f.current is not None:
                    placed.add(id(f.current))
        for c in sorted(byid.values(), key=lambda c: c.accepted_at or 0.0):
            if c.accepted_at is None or id(c) in placed:
                continue
            # accepted but in no flow (a record older than its flow's): queue it, so every
            # contract paid for is served
            f = self._flow(c.peer, c.key, now)
            if f.current is None and c.activated_at is not None:
                f.current = c
                if c.state in FORWARDING:
                    c.arm(not self._peers[c.peer].no_grace or c.state is State.PAID)
                self._sched(f, c, now)
            else:
                f.queue.append(c)
            self._dirty_flows.add(f)
        for c in byid.values():
            if c.grace_until is not None and not c.paid:
                self._at(c.grace_until, T_GRACE, c)
                self._peer(c.peer).unpaid.add(c.contract_id)
