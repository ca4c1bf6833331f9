"""The buyer side of contracts (sans-IO): accepts, counters, keeps budgets, renews, pays;
for many counterparts (sellers, by public key), one ``Book`` each (protocol/book.py), on the
lifecycle both sides share (protocol/lifecycle.py).

The buyer never holds packets (it sends; the seller holds).  The daemon calls
``outbound(dst, length, now)`` / ``inbound(src, length, now)`` per packet (metering
only), ``on_message(counterpart, msg, now)`` per decoded control message, ``poll(now)``
when ``next_deadline()`` is due, and drains ``take_outgoing`` ((counterpart, message) pairs) and
``take_events`` (typed, protocol/events.py).  ``next_deadline()`` is when ``poll`` next has
work: each flow files one timer in its book, at the earliest of what can change it with no
packet (its contract's expiry, the time-renewal point, a REQUEST's retry, a no-deal back-off's
end); what traffic changes (a renewal point reached, a contract used up) the data path sees
as it meters, and ``has_output`` tells the daemon to wake its control thread.  For every
``PaymentDue`` it asks its payment
backend for a proof and calls ``paid(counterpart, contract_id, method, proof)`` (which sends
PAY), or ``payment_impossible``.  Prepaid credit is kept per counterpart (its book).

``now`` is wall-clock seconds: budgets per hour/day are rolling windows over it
(protocol/buyer_budget.py).

Over 600 lines: answering a proposal, renewing, paying and crediting read and change the
same flow and book state in one order; budgets, the snapshot and the hot path's metering
already live apart (buyer_budget.py, buyer_store.py); splitting the rest would pass that
state around instead of keeping it in one place.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from tunnelgate import packet as pk
from tunnelgate.meter import BuyerFlow, ClientMeter, Flow, usage_disagrees
from tunnelgate.money import BYTES_PER_KB, cost_msat, format_msat, format_price, parse_fraction
from tunnelgate.protocol import chain as ch
from tunnelgate.protocol import events as E
from tunnelgate.protocol import messages as m
from tunnelgate.protocol.book import Book
from tunnelgate.protocol.buyer_budget import Budgets
from tunnelgate.protocol.buyer_store import BuyerStore
from tunnelgate.protocol.contract import FORWARDING, Contract, Ev, State
from tunnelgate.protocol.lifecycle import Lifecycle
from tunnelgate.protocol.pricer import PriceTable
from tunnelgate.protocol.terms import Terms

METERED, UNMETERED = 1, 0

# changes the daemon writes through (whole snapshot) before sending what makes them count
DURABLE = frozenset({E.Accepted, E.PaymentDue, E.Paid, E.PaymentFailed, E.Revoked, E.Activated,
                     E.Exhausted, E.Expired})

REQUEST_RETRY_S = 10
NEVER = 1 << 62          # renew_at when data_renewal_kb = 0: no renewal on data
RENEW_LEAD_S = 5         # renew when this long is left at the last contract's rate
FAST_S = 2               # a contract exhausted faster than this makes renewal start at activation
USAGE_SETTLE_S = 2       # after a final USAGE, packets still in flight arrive within this
# A proposal that the surplus of a prepayment still being confirmed would pay waits this long
# for that surplus to land as credit (cashu, Lightning: a second or so), then is paid from the
# wallet as without it (a payment waiting for a block is not waited for). Below the seller's
# proposal timeout (10 s by default), so the proposal is still open when answered.
CREDIT_WAIT_S = 5
CHECKS = 32              # past half, the data path looks at the rate every 1/CHECKS of a contract
# timer kinds: look at a flow; compare a final USAGE; answer proposals waiting for credit
T_FLOW, T_FINAL, T_CREDIT = range(3)


@dataclass(frozen=True)
class ClientPolicy:
    """Prices in price units (micro-msat/KB), budgets in msat (None: no limit);
    fractions as exact decimal strings."""
    max_price: int
    prefix_max_prices: tuple[tuple[str, int], ...] = ()
    counter_fraction: str = "0.8"
    data_renewal_kb: int = 1000
    time_renewal_s: int = 60
    max_spend_per_hour: int | None = None
    max_spend_per_day: int | None = None
    max_spend_total: int | None = None
    usage_tolerance: str = "0.02"
    usage_slack_bytes: int = 16_000


class BuyerContract(Contract):
    """A contract as the buyer keeps it: the seller's counts and the renewal points."""
    __slots__ = ("gw_up", "gw_down", "renew_asked", "renew_at", "renew_final", "quarter_at", "mismatch")
    _SIDE = ("gw_up", "gw_down")

    def __init__(self, terms: Terms, peer: bytes, created_at: float = 0.0):
        super().__init__(terms, peer, created_at)
        self.gw_up = self.gw_down = 0
        self.renew_asked = False
        self.renew_at = 0               # used bytes at which to renew, or to look again
        self.renew_final = 0            # the renewal point by margin (see Buyer._arm)
        self.quarter_at = None          # when a quarter of the contract was used
        self.mismatch = False


class BuyerBook(Book):
    """One seller's contracts, and what the buyer knows of that seller."""
    __slots__ = ("credit_msat", "sized_requests", "chain_rejected", "credit_due", "awaiting")

    def __init__(self, counterpart: bytes, tombstones=None, flows: dict | None = None):
        super().__init__(counterpart, tombstones, flows)
        # our prepaid credit at this seller as it last said (PAID), less the contracts
        # accepted from it since
        self.credit_msat = 0
        # contract id -> the surplus of its prepayment, sent (or being made) but not yet PAID:
        # credit on its way (not saved: after a restart nothing waits for it)
        self.credit_due: dict[str, int] = {}
        # proposals waiting for that credit: contract id -> (answer by, flow, contract)
        self.awaiting: dict[str, tuple[float, Flow, Contract]] = {}
        # the seller's handshake listed wire.FEATURE_SIZED: REQUESTs may ask for a size
        self.sized_requests = False
        self.chain_rejected = 0     # proposals refused: their cost chain did not add up


class Buyer(Budgets, BuyerStore, Lifecycle):
    SIDE = E.BUYER
    BOOK = BuyerBook
    CONTRACT = BuyerContract

    def __init__(self, policy: ClientPolicy, legacy_counterpart: bytes = b"", own_key: bytes = b""):
        super().__init__()
        self.policy = policy
        # this node's public key: a cost chain through it is a loop (protocol/chain.py)
        self.own_key = own_key
        # the seller of a snapshot written before books had counterparts
        self.legacy_counterpart = legacy_counterpart
        self._frac = parse_fraction(policy.counter_fraction, "counter_fraction")
        self._tol = parse_fraction(policy.usage_tolerance, "usage_tolerance")
        self._max = PriceTable(policy.max_price, policy.prefix_max_prices)
        self.meter = ClientMeter()
        self._own_at_usage: dict[str, int] = {}
        self._final_checks: dict[str, tuple[float, Contract]] = {}
        self._spend: list[tuple[float, int]] = []      # (time, msat) within the last day
        self.spent_total = 0
        self.unmetered_bytes = 0
        self.budget_reason = ""
        # payments: set by the daemon.  funds_msat: what the wallet can spend (None: not known
        # yet, so proposals are not refused for it); prepay_msat: pay at least this much per
        # payment, the surplus staying as credit at that seller.
        self.funds_msat: int | None = None
        self.prepay_msat = 0
        self.no_funds_reason = ""
        self._no_funds_at = 0
        self._out: list[tuple[bytes, m.Message]] = []
        self._unsaved = False       # a DURABLE change not yet taken by snapshot()
        self._kick = False          # the data path filed a timer due now: poll soon
        self._paused = False

    @property
    def paused(self) -> bool:
        return self._paused

    @paused.setter
    def paused(self, value: bool) -> None:
        """The user pauses buying (renewals stop) or resumes it (every flow is looked at
        again at the next poll, which renews what is due)."""
        if self._paused and not value:
            self._check_all()
        self._paused = value

    def _check_all(self) -> None:
        for b in self.books.values():
            for f in b.flows.values():
                self._check_at(f, 0.0)

    def book(self, counterpart: bytes) -> BuyerBook:
        return self._book(counterpart)

    @property
    def credit_msat(self) -> int:
        """Our prepaid credit at all sellers together."""
        return sum(b.credit_msat for b in self.books.values())

    # --- hot path --------------------------------------------------------------------------
    # outbound() and inbound() are written out twice on purpose (as meter.GatewayMeter's up and
    # down): a shared helper taking the counter's name costs a call and a getattr per packet.

    def outbound(self, dst: bytes, length: int, now: float) -> int:
        f = self.meter.find(dst)
        if f is not None:
            c = f.current
            if c is not None and c.used < c.stop_bytes and now < c.stop_at:
                c.used += length
                c.up += length
                if c.used >= c.renew_at:
                    self._renew_point(f, c, now)
                return METERED
            if self._usable(f, now):
                return self.outbound(dst, length, now)
        self.unmetered_bytes += length
        return UNMETERED

    def outbound_burst(self, dst: bytes, total_len: int, n_packets: int, now: float) -> int:
        return self.outbound(dst, total_len, now)

    def fits(self, addr: bytes, total_len: int, now: float) -> bool:
        """Whether a burst to/from addr fits whole in the current contract.  When it does not,
        the data path meters it packet by packet, so the buyer switches contracts on the same
        packet as the seller and their per-contract counts agree."""
        f = self.meter.find(addr)
        c = f.current if f is not None else None
        return c is None or (c.used + total_len <= c.stop_bytes and now < c.stop_at)

    def inbound(self, src: bytes, length: int, now: float) -> int:
        f = self.meter.find(src)
        if f is not None:
            c = f.current
            if c is not None and c.used < c.stop_bytes and now < c.stop_at:
                c.used += length
                c.down += length
                if c.used >= c.renew_at:
                    self._renew_point(f, c, now)
                return METERED
            if self._usable(f, now):
                return self.inbound(src, length, now)
        self.unmetered_bytes += length
        return UNMETERED

    # --- lifecycle hooks (protocol/lifecycle.py) and renewal ---------------------------------

    def _arm(self, c: Contract, f: Flow) -> None:
        c.stop_at, c.stop_bytes = c.expires_at, c.limit_bytes
        if self.policy.data_renewal_kb:
            # renew when data_renewal_kb is left, or RENEW_LEAD_S of traffic at the rate the
            # last contract was used at (at most half the contract: a burst must not buy ahead),
            # whichever comes first: a fixed margin is milliseconds at Gbit/s, shorter than a
            # negotiation, and packets would wait for the contract
            margin = max(self.policy.data_renewal_kb * BYTES_PER_KB,
                         min(f.rate * RENEW_LEAD_S, c.limit_bytes // 2))
            c.renew_final = max(0, c.limit_bytes - margin)
            # before that, look at a quarter and at half: a flow that speeds up (the first
            # contract of a transfer, bought by its first packet) renews at half in time
            quarter = c.limit_bytes // 4
            c.renew_at = quarter if 0 < quarter < c.renew_final else c.renew_final
            c.quarter_at = None
        else:
            # data_renewal_kb = 0: never renew on data; the data path still looks at the end
            c.renew_final, c.renew_at = NEVER, c.limit_bytes
        self._check_at(f, c.activated_at or 0.0)

    def _activated(self, f: Flow, c: Contract, now: float) -> None:
        if c.renew_at == 0 or (self.policy.time_renewal_s and c.time_s <= self.policy.time_renewal_s) \
                or (f.fast and c.renew_final != NEVER):
            self._renew(f, c, now)

    def _ending(self, f: Flow, c: Contract, ev: Ev, now: float) -> None:
        # A contract used up within FAST_S: at this rate the renewal margin is shorter than a
        # negotiation, so the next contract is asked for as soon as the one after it starts.
        # (Sized contracts last CONTRACT_FOR_S and renew at half with the rate measured:
        # no need to buy further ahead, which would only leave more unused at the end.)
        f.fast = (not self.books[c.peer].sized_requests and ev is Ev.EXHAUST and c.activated_at is not None
                  and now - c.activated_at < FAST_S)
        if ev is Ev.EXHAUST and c.activated_at is not None:
            f.rate = int(c.used / (now - c.activated_at)) if now > c.activated_at else 0

    def _ended_counts(self, c: Contract) -> dict:
        return {"up": c.up, "down": c.down, "gateway_up": c.gw_up, "gateway_down": c.gw_down}

    def _emitted(self, ev, c, f) -> None:
        if type(ev) in DURABLE:
            self.durable_seq += 1
            self._unsaved = True

    def _renew_point(self, f: Flow, c: Contract, now: float) -> None:
        """c.used reached c.renew_at: the renewal point, or a quarter or half of the contract,
        or, past half, one of CHECKS points, or (renewal asked) the end.
        At half, the rate over the last quarter says whether the rest lasts RENEW_LEAD_S;
        if not, renew now (a fixed margin is milliseconds once a flow runs at Gbit/s); at the
        later points, the rate since the contract started (_running_out), as poll does. At
        the end, the control thread is asked to end the contract (and start the next) if no
        packet comes to do it."""
        if c.used >= c.limit_bytes:
            c.renew_at = NEVER
            self._check_at(f, now)
            self._kick = True
            if not c.renew_asked and c.renew_final != NEVER:
                self._renew(f, c, now)
            return
        if c.renew_asked:
            c.renew_at = c.limit_bytes
            return
        if c.renew_at < c.renew_final:
            quarter = c.limit_bytes // 4
            if c.quarter_at is None:
                c.quarter_at = now
                c.renew_at = min(2 * quarter, c.renew_final)
                if c.used < c.renew_at:
                    return
            lasts = c.renew_at > 2 * quarter or \
                (c.limit_bytes - c.used) * (now - c.quarter_at) >= (c.used - quarter) * RENEW_LEAD_S
            if lasts and not self._running_out(c, now):
                c.renew_at = min(c.renew_final, c.used + max(1, c.limit_bytes // CHECKS))
                if c.used < c.renew_at:
                    return
        self._renew(f, c, now)

    def _renew(self, f: Flow, c: Contract, now: float) -> None:
        if self.paused:
            return
        c.renew_asked = True
        # at a fast rate keep two contracts queued, so one lost message costs no gap
        if len(f.queue) >= (2 if f.fast else 1) or f.proposal is not None or f.nodeal_until > now:
            return
        if f.requested_at is not None and now - f.requested_at < REQUEST_RETRY_S:
            return
        f.requested_at = now
        self._check_at(f, now + REQUEST_RETRY_S)
        want = self._want_kb(f, c, now) if self.books[c.peer].sized_requests else None
        f.asked_kb = want or 0
        self._out.append((c.peer, m.Request(f.destination, want)))
        self._emit(E.RenewalRequested, c, limit_kb=want or None)

    def _flow(self, counterpart: bytes, destination: str) -> Flow:
        b = self._book(counterpart)
        f = b.flows.get(destination)
        if f is None:
            key, plen = pk.parse_prefix(destination)
            f = b.flows[destination] = BuyerFlow(counterpart, key, plen, destination)
            self.meter.table(len(key), plen)[key] = f
        return f

    def use_seller(self, counterpart: bytes, destination: str) -> bool:
        """The client routes ``destination`` to ``counterpart`` from now on: its meter counts
        on that seller's flow for it, if the seller's book has one (a contract bought there
        before, used again), else on none until a contract there is accepted."""
        b = self.books.get(counterpart)
        f = b.flows.get(destination) if b is not None else None
        key, plen = pk.parse_prefix(destination)
        table = self.meter.table(len(key), plen)
        if f is None:
            table.pop(key, None)
            return False
        table[key] = f
        return True

    def set_policy(self, **changes) -> None:
        """Live settings (the control socket's `set`): max_price, budgets; None lifts a budget."""
        self.policy = replace(self.policy, **changes)
        self._max = PriceTable(self.policy.max_price, self.policy.prefix_max_prices)
        self._check_all()          # (the time-renewal point may have moved)

    # --- control messages --------------------------------------------------------------------

    def on_message(self, counterpart: bytes, msg: m.Message, now: float) -> None:
        b = self._book(counterpart)
        if isinstance(msg, m.Propose):
            return self._on_propose(b, msg, now)
        if isinstance(msg, m.Quote):
            key, _ = pk.parse_prefix(msg.destination)
            maxp = self._max.lookup(key)
            chain = msg.chain or ()
            bad = ch.problem(chain, msg.price, counterpart, self.own_key) if chain else ""
            self._emit(E.Quote, None, counterpart=counterpart, destination=msg.destination,
                       reason=msg.reason or "", amount_msat=cost_msat(msg.price, msg.limit_kb),
                       price=msg.price, limit_kb=msg.limit_kb, time_s=msg.time_s, methods=tuple(msg.methods),
                       grace_s=msg.grace_s, grace_kb=msg.grace_kb, max_price=maxp,
                       acceptable=msg.price <= maxp and not bad,
                       chain=tuple((ch.b64(k), p) for k, p in chain), chain_problem=bad,
                       retry_after_s=msg.retry_after_s or 0)
            return
        if isinstance(msg, m.NoDeal):
            f = self._flow(counterpart, msg.destination)
            f.nodeal_until = now + msg.retry_after_s
            f.nodeal_reason = f.reason = msg.reason
            f.requested_at = None
            self._check_at(f, f.nodeal_until)
            if f.proposal is not None and f.proposal.contract_id == msg.contract_id:
                f.proposal = None
            self._emit(E.NoDeal, msg.contract_id, counterpart=counterpart, destination=msg.destination,
                       reason=msg.reason, retry_after_s=msg.retry_after_s)
            return
        if isinstance(msg, m.Usage):
            for cid, up, down, final in msg.items:
                c = b.find(cid)
                if c is None:
                    self._violation(counterpart, msg, f"unknown contract id {cid}"[:m.MAX_TEXT])
                    continue
                self._on_usage(b.flows[c.destination], c, up, down, final, now)
            return
        c = b.find(getattr(msg, "contract_id", None))
        if c is None:
            return self._violation(counterpart, msg, "unknown contract id")
        f = b.flows[c.destination]
        if isinstance(msg, m.Paid):
            if c.state is State.PROPOSED or c.state is State.REJECTED or c.state is State.NO_DEAL:
                return self._violation(counterpart, msg, f"contract is {c.state.value}")
            if msg.credit_msat is not None:
                # the seller's word (if it had not yet seen an ACCEPT from credit of ours, the
                # next PAID corrects it; a credit that falls short is answered PAYMENT_FAILED)
                b.credit_msat = msg.credit_msat
            if not c.paid:
                c.apply(Ev.PAID)
                c.paid = True
                b.settle(c)
                self._emit(E.Paid, c, amount_msat=c.cost_msat, credit_msat=msg.credit_msat, from_credit=c.credit)
            self._credit_landed(b, c.contract_id, now)
            return
        if isinstance(msg, m.PaymentFailed):
            if c.state in (State.ACCEPTED, State.GRACE) or c.state in (State.EXPIRED, State.EXHAUSTED,
                                                                       State.REVOKED):
                c.apply(Ev.PAYMENT_FAILED)
                self._emit(E.PaymentFailed, c, reason=msg.reason, amount_msat=c.cost_msat)
                self._credit_landed(b, c.contract_id, now)      # none will
                if c.credit and not c.paid:
                    # the credit did not cover it after all: pay it the ordinary way, in grace
                    c.credit = False
                    b.credit_msat = 0
                    b.owe(c)
                    self._payment_due(c)
            return
        if isinstance(msg, m.Revoke):
            if c.state in (State.ACCEPTED, State.GRACE, State.PAID):
                self._end(f, c, Ev.REVOKE, msg.reason, now)
            self._credit_landed(b, c.contract_id, now)          # none will, for this contract
            return
        return self._violation(counterpart, msg, "not a message a seller sends")

    def _refuse(self, f: Flow, c: Contract, reason: str, now: float) -> None:
        self._close(c, Ev.REJECT, reason, now)
        f.reason = reason

    def _on_propose(self, b: BuyerBook, msg: m.Propose, now: float) -> None:
        peer = b.counterpart
        if msg.contract_id in b.live or msg.limit_kb == 0 or msg.time_s == 0:
            return self._violation(peer, msg, "duplicate id or empty contract")
        f = self._flow(peer, msg.destination)
        chain = msg.chain if msg.chain is not None else ch.implied(peer, msg.price)
        c = BuyerContract(Terms(msg.contract_id, msg.destination, f.key, f.plen, msg.price, msg.limit_kb,
                                msg.time_s, tuple(msg.methods), msg.account, msg.round, msg.grace_s,
                                msg.grace_kb, chain), peer, now)
        f.requested_at = None
        if f.proposal is not None and f.proposal.state is State.PROPOSED:
            self._close(f.proposal, Ev.WITHDRAW, f.proposal.reason, now)
        f.proposal = None
        self._answer(b, f, c, now, now + CREDIT_WAIT_S)

    def _answer(self, b: BuyerBook, f: Flow, c: Contract, now: float, wait_until: float) -> None:
        """ACCEPT or REJECT a proposal, or (until ``wait_until``) leave it open while credit is
        on its way that would pay it."""
        peer = b.counterpart
        waited = b.awaiting.pop(c.contract_id, None) is not None
        if f.proposal is c:
            f.proposal = None
        if self.paused:
            # the user paused buying: no answer, so no no-deal back-off outlives the pause
            self._refuse(f, c, "buying paused", now)
            self._emit(E.Declined, c, reason="buying paused")
            return
        bad = ch.problem(c.terms.chain, c.price, peer, self.own_key)
        if bad:
            # a chain that does not add up is no deal at any price: no counter-offer
            b.chain_rejected += 1
            self._refuse(f, c, bad, now)
            self._out.append((peer, m.Reject(c.contract_id, bad[:m.MAX_TEXT])))
            self._emit(E.Rejected, c, reason=bad)
            return
        maxp = self._max.lookup(f.key)
        if c.price > maxp:
            counter = min((c.price * self._frac[0]) // self._frac[1], maxp)
            reason = f"price {format_price(c.price)} is above my maximum {format_price(maxp)}"
            self._refuse(f, c, reason, now)
            self._out.append((peer, m.Reject(c.contract_id, reason, price=counter)))
            self._emit(E.Rejected, c, reason=reason, counter_price=counter)
            return
        cost = c.cost_msat
        problem = self._budget_problem(cost, now)
        if problem:
            self._refuse(f, c, problem, now)
            self.budget_reason = problem
            self._out.append((peer, m.Reject(c.contract_id, problem[:m.MAX_TEXT])))
            self._emit(E.BudgetExceeded, c, reason=problem, amount_msat=cost)
            return
        self.budget_reason = ""
        from_credit = b.credit_msat >= cost > 0
        due = sum(b.credit_due.values())
        if not from_credit and now < wait_until and cost > 0 and b.credit_msat + due >= cost:
            f.proposal = c           # no REQUEST for this flow meanwhile (see _renew)
            f.reason = "waiting for the prepaid credit of a payment being confirmed"
            b.awaiting[c.contract_id] = (wait_until, f, c)
            self._at(b, wait_until, T_CREDIT, c.contract_id)
            if not waited:
                self._emit(E.AwaitingCredit, c, amount_msat=cost, credit_msat=b.credit_msat, due_msat=due)
            return
        if not from_credit and self.no_funds_reason and (self.funds_msat is None or self.funds_msat < cost):
            # a payment failed for lack of funds: no answer (as when paused), so the seller
            # withdraws the offer and proposes again on a later packet; buying resumes as soon
            # as the wallet holds more (set_funds)
            self._refuse(f, c, self.no_funds_reason, now)
            self._emit(E.Declined, c, reason=self.no_funds_reason, amount_msat=cost)
            return
        self._spend.append((now, cost))
        self.spent_total += cost
        b.add(c)
        c.accepted_at = now
        f.reason = ""
        f.nodeal_until, f.nodeal_reason = 0.0, ""
        if (f.current is not None and f.current.state in FORWARDING and self._usable(f, now)) or f.queue:
            c.apply(Ev.ACCEPT_WAIT)
            f.queue.append(c)
        else:
            c.apply(Ev.ACCEPT_ACTIVE)
            f.current = c
            c.activated_at, c.expires_at = now, now + c.time_s
            self._arm(c, f)
        c.credit = from_credit
        self._out.append((peer, m.Accept(c.contract_id, True if from_credit else None)))
        self._emit(E.Accepted, c, amount_msat=cost, queued=f.current is not c, from_credit=from_credit)
        if f.fast and f.current is not None and f.current is not c and len(f.queue) < 2:
            self._renew(f, f.current, now)
        if from_credit:
            b.credit_msat -= cost          # the seller takes it at ACCEPT and says so in PAID
        else:
            b.owe(c)
            self._payment_due(c)

    def _credit_landed(self, b: BuyerBook, contract_id: str, now: float) -> None:
        """The prepayment of ``contract_id`` is settled (its surplus now in ``credit_msat``)
        or will not be: the proposals waiting for credit are answered now."""
        if b.credit_due.pop(contract_id, None) is not None and b.awaiting:
            self._answer_awaiting(b, now)

    def _answer_awaiting(self, b: BuyerBook, now: float) -> None:
        for until, f, c in list(b.awaiting.values()):
            if f.proposal is c and c.state is State.PROPOSED:
                self._answer(b, f, c, now, until)      # still waits if credit is still due
            else:
                del b.awaiting[c.contract_id]         # withdrawn meanwhile (a newer PROPOSE, NO_DEAL)

    def _payment_due(self, c: Contract) -> None:
        cost = c.cost_msat
        amount = max(cost, self.prepay_msat)
        if self.funds_msat is not None:
            if amount > self.funds_msat:
                amount = cost                 # cannot prepay now: pay this contract only
            self.funds_msat = max(0, self.funds_msat - amount)
        if amount > cost:
            self.books[c.peer].credit_due[c.contract_id] = amount - cost
        self._emit(E.PaymentDue, c, amount_msat=cost, methods=tuple(c.methods), account=c.account,
                   pay_msat=amount)

    def payment_impossible(self, counterpart: bytes, contract_id: str, reason: str,
                           funds_msat: int | None) -> None:
        """The wallet could not pay (insufficient funds): stop buying, say so once."""
        self.funds_msat = funds_msat
        self._no_funds_at = funds_msat or 0
        b = self.books.get(counterpart)
        if b is not None:
            b.credit_due.pop(contract_id, None)     # proposals waiting for it: answered by poll
        if not self.no_funds_reason:
            self._emit(E.NoFunds, contract_id, counterpart=counterpart, reason=f"stopped buying: {reason}",
                       funds_msat=funds_msat, credit_msat=self._book(counterpart).credit_msat)
        self.no_funds_reason = f"wallet: insufficient funds ({format_msat(funds_msat or 0)}): fund it; " \
                               "buying resumes when it holds more"

    def set_funds(self, funds_msat: int | None, now: float) -> None:
        """The wallet's spendable balance (the daemon checks it every few seconds)."""
        self.funds_msat = funds_msat
        if self.no_funds_reason and funds_msat is not None and funds_msat > self._no_funds_at:
            # buying resumes; a contract still too dear is declined again (with a new event)
            self._emit(E.FundsRestored, None, reason=f"wallet holds {format_msat(funds_msat)}: buying resumes",
                       funds_msat=funds_msat)
            self.no_funds_reason = ""
            for b in self.books.values():
                for f in b.flows.values():
                    if f.reason.startswith("wallet:"):
                        f.reason = ""

    def _on_usage(self, f: Flow, c: Contract, up: int, down: int, final: bool, now: float) -> None:
        c.gw_up, c.gw_down = up, down
        own = c.up + c.down
        # While traffic flows, both counts move and packets are in flight (socket buffers hold
        # megabytes): compare only when our count stood still since the last report, or, for
        # the final report, once in-flight packets had time to arrive.
        if own == self._own_at_usage.get(c.contract_id):
            self._compare_usage(c)
        self._own_at_usage[c.contract_id] = own
        if final:
            self._final_checks[c.contract_id] = (now + USAGE_SETTLE_S, c)
            self._at(self.books[c.peer], now + USAGE_SETTLE_S, T_FINAL, c.contract_id)
        if final and c.state in FORWARDING:
            if up + down >= c.limit_bytes:
                self._end(f, c, Ev.EXHAUST, "data limit reached (gateway)", now)
            else:
                self._end(f, c, Ev.EXPIRE, "ended by the gateway", now)
            self._usable(f, now)

    def _compare_usage(self, c: Contract) -> None:
        own, theirs = c.up + c.down, c.gw_up + c.gw_down
        bad = usage_disagrees(own, theirs, self._tol[0], self._tol[1], self.policy.usage_slack_bytes)
        if bad and not c.mismatch:
            self._emit(E.UsageMismatch, c, reason=f"gateway metered {theirs} bytes, I metered {own}",
                       own=own, gateway=theirs, own_up=c.up, own_down=c.down,
                       gateway_up=c.gw_up, gateway_down=c.gw_down)
        c.mismatch = bad

    def _violation(self, counterpart: bytes, msg: m.Message, why: str) -> None:
        self._emit(E.ProtocolViolation, getattr(msg, "contract_id", None), counterpart=counterpart,
                   reason=f"{msg.TYPE}: {why}")

    # --- payments ----------------------------------------------------------------------------

    def paid(self, counterpart: bytes, contract_id: str, method: str, proof: str,
             amount_msat: int | None = None) -> None:
        """The payment backend produced a proof: send PAY."""
        b = self.books.get(counterpart)
        c = b.find(contract_id) if b is not None else None
        # a contract may run out (a tiny one at full speed) before its payment is ready:
        # it was accepted and used, so it is paid all the same
        if c is None or c.accepted_at is None:
            raise KeyError(f"no accepted contract {contract_id!r}")
        if amount_msat is not None and contract_id in b.credit_due:
            if amount_msat > c.cost_msat:
                b.credit_due[contract_id] = amount_msat - c.cost_msat
            else:                                   # the wallet could not prepay: no credit coming
                del b.credit_due[contract_id]
        self._out.append((counterpart, m.Pay(contract_id, c.cost_msat if amount_msat is None else amount_msat,
                                             method, proof)))

    def _owing(self) -> list[Contract]:
        return [c for b in self.books.values() for c in b.unpaid.values()
                if c.accepted_at is not None and not c.paid and not c.credit and c.state is not State.REVOKED]

    def unpaid(self) -> list[tuple[bytes, str]]:
        """(counterpart, id) of the accepted contracts (live or ended) not confirmed paid, to be
        paid from a stored proof."""
        return [(c.peer, c.contract_id) for c in self._owing()]

    def buy(self, counterpart: bytes, destination: str, now: float, limit_kb: int | None = None,
            again: bool = False) -> bool:
        """Ask a seller for a contract now, before any traffic (a relay buys upstream before it
        proposes downstream): a REQUEST, answered by PROPOSE or NO_DEAL.  False: not sent (a
        proposal is open, one was asked for within REQUEST_RETRY_S, a no-deal back-off runs,
        or buying is paused).  ``again``: ask even if one was asked for lately (a seller
        ignores a REQUEST while contracts queue behind its current one; the caller saw the
        queue move)."""
        f = self._flow(counterpart, destination)
        if self.paused or f.proposal is not None or f.nodeal_until > now or (
                not again and f.requested_at is not None and now - f.requested_at < REQUEST_RETRY_S):
            return False
        f.requested_at = now
        sized = self.books[counterpart].sized_requests
        self._out.append((counterpart, m.Request(destination, limit_kb if sized else None)))
        return True

    def request_quote(self, counterpart: bytes, destination: str) -> None:
        """Ask a seller's terms for a destination without buying (answered by a Quote event)."""
        self._out.append((counterpart, m.QuoteRequest(destination)))

    def request_usage(self, counterpart: bytes, contract_id: str) -> None:
        self._out.append((counterpart, m.UsageRequest(contract_id)))

    # --- timers ------------------------------------------------------------------------------

    @staticmethod
    def _running_out(c: Contract, now: float) -> bool:
        """Half used, and less than RENEW_LEAD_S of traffic left at the rate this contract is
        being used at (covers a flow's first contract, whose margin no earlier rate could size;
        a short burst early in a contract buys nothing ahead)."""
        elapsed = now - c.activated_at if c.activated_at is not None else 0
        return (elapsed > 0 and 2 * c.used >= c.limit_bytes
                and (c.limit_bytes - c.used) * elapsed < c.used * RENEW_LEAD_S)

    def poll(self, now: float) -> None:
        """Runs what is due: the flows whose timer came (see _check), the final USAGE
        comparisons; timers set meanwhile wait for the next poll."""
        self._kick = False
        for b, when, kind, obj in self._due(now):
            if kind == T_FLOW:
                if when == obj.check_at:
                    obj.check_at = None
                    self._check(obj, now)
            elif kind == T_FINAL:
                entry = self._final_checks.get(obj)
                if entry is not None and entry[0] <= now:
                    del self._final_checks[obj]
                    self._own_at_usage.pop(obj, None)
                    self._compare_usage(entry[1])
            elif kind == T_CREDIT:
                if b.awaiting:
                    self._answer_awaiting(b, now)
        self._forget_spend(now)

    def _check(self, f: Flow, now: float) -> None:
        """What poll did for every flow on every tick, for one flow: end its contract when
        its time (or, with no packet since, its data) ran out, start the next; renew by
        time, by data, or again after REQUEST_RETRY_S; end a no-deal back-off. Then files
        the flow's next timer."""
        p = self.policy
        c = f.current
        if c is not None and c.state in FORWARDING:
            self._usable(f, now)
            c = f.current
        if c is not None and c.state in FORWARDING and not f.queue:
            if c.used >= c.renew_at and c.renew_at < c.renew_final and not c.renew_asked:
                self._renew_point(f, c, now)         # a checkpoint the data path did not reach
            elif ((p.time_renewal_s and c.expires_at - now < p.time_renewal_s) or c.used >= c.renew_final
                    or (p.data_renewal_kb and self._running_out(c, now))) and (
                    not c.renew_asked or f.requested_at is None
                    or now - f.requested_at >= REQUEST_RETRY_S):
                self._renew(f, c, now)
        if f.nodeal_until and f.nodeal_until <= now:
            f.nodeal_until = 0.0
        self._check_next(f, now)

    def _check_next(self, f: Flow, now: float) -> None:
        """The flow's next timer: the earliest time after now at which _check could act
        with no packet (a contract's expiry or time-renewal point, a REQUEST's retry, the
        end of a no-deal back-off)."""
        when = None
        c = f.current
        if c is not None and c.state in FORWARDING and c.expires_at is not None:
            when = c.expires_at
            if self.policy.time_renewal_s:
                # the first instant at which less than time_renewal_s is left
                t = math.nextafter(c.expires_at - self.policy.time_renewal_s, math.inf)
                if t > now:
                    when = t
        for t in (f.requested_at + REQUEST_RETRY_S if f.requested_at is not None else None,
                  f.nodeal_until or None):
            if t is not None and t > now and (when is None or t < when):
                when = t
        if when is not None and when > now:
            self._check_at(f, when)

    def _check_at(self, f: Flow, when: float) -> None:
        """A timer for f at `when`, unless one at or before it is pending (later ones
        become stale: poll skips a timer that is not the flow's check_at)."""
        if f.check_at is None or when < f.check_at:
            f.check_at = when
            self._at(self.books[f.peer], when, T_FLOW, f)

    def _stale(self, b, when: float, kind: int, obj) -> bool:
        if kind == T_FLOW:
            return when != obj.check_at
        if kind == T_CREDIT:
            return obj not in b.awaiting
        entry = self._final_checks.get(obj)
        return entry is None or entry[0] != when

    # --- outputs -----------------------------------------------------------------------------

    @property
    def has_output(self) -> bool:
        """Messages wait to be sent (the data path wakes the control thread for a renewal),
        a contract ended on the data path and is to be saved, or one was used up and its
        timer is due now (the control thread ends it if no packet does)."""
        return bool(self._out) or self._unsaved or self._kick

    def take_outgoing(self) -> list[tuple[bytes, m.Message]]:
        out, self._out = self._out, []
        return out
