"""Client side of contract negotiation, metering and renewal (sans-IO).

The client never holds packets (it sends; the gateway holds).  The daemon calls
``outbound(dst, length, now)`` / ``inbound(src, length, now)`` per packet (metering
only), ``on_message`` per decoded control message, ``poll(now)`` every
~0.1-0.25 s, and drains ``take_outgoing`` / ``take_events``.  For every
``payment_due`` event it asks its payment backend for a proof and calls
``paid(contract_id, method, proof)`` (which emits PAY), or ``payment_error``.

``now`` is wall-clock seconds: budgets per hour/day are rolling windows over it.

Over 600 lines: the buyer carries its own copy of the contract lifecycle until the shared
book of issue 22 (item 1) takes it; then this keeps only policy, budgets and renewal.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from tunnelgate import packet as pk
from tunnelgate.meter import ClientMeter, Flow, usage_disagrees
from tunnelgate.money import BYTES_PER_KB, PRICE_SCALE, cost_msat, format_msat, format_price, parse_fraction
from tunnelgate.protocol import messages as m
from tunnelgate.protocol.contract import FORWARDING, Contract, Ev, Event, State

METERED, UNMETERED = 1, 0

EV_ACCEPTED = "accepted"
EV_REJECTED = "rejected"                  # rejected with a counter-offer
EV_BUDGET_EXCEEDED = "budget_exceeded"
EV_QUOTE = "quote"                        # the gateway's answer to request_quote
EV_DECLINED = "declined"                  # a proposal left unanswered: buying is paused
EV_PAYMENT_DUE = "payment_due"            # daemon: pay amount_msat, then call paid()
EV_PAID = "paid"
EV_PAYMENT_FAILED = "payment_failed"
EV_REVOKED = "revoked"
EV_NO_DEAL = "no_deal"
EV_ACTIVATED = "activated"
EV_EXHAUSTED = "exhausted"
EV_EXPIRED = "expired"
EV_RENEWAL_REQUESTED = "renewal_requested"
EV_USAGE_MISMATCH = "usage_mismatch"
EV_PROTOCOL = "protocol_violation"
EV_NO_FUNDS = "no_funds"                  # the wallet cannot pay a contract: buying stops
EV_FUNDS_OK = "funds_restored"            # ...and resumes

# changes the daemon writes through (whole snapshot) before sending what makes them count
DURABLE = frozenset({EV_ACCEPTED, EV_PAYMENT_DUE, EV_PAID, EV_PAYMENT_FAILED, EV_REVOKED, EV_ACTIVATED,
                     EV_EXHAUSTED, EV_EXPIRED})

HOUR, DAY = 3600, 86400
REQUEST_RETRY_S = 10
NEVER = 1 << 62          # renew_at when data_renewal_kb = 0: no renewal on data
RENEW_LEAD_S = 5         # renew when this long is left at the last contract's rate
FAST_S = 2               # a contract exhausted faster than this makes renewal start at activation
# A sized REQUEST asks for CONTRACT_FOR_S of traffic at the flow's rate, at most GROWTH times
# the contract it renews. What a transfer leaves unused when it stops is the rest of the
# current contract and the one queued behind it (bought at half of the current one): about
# CONTRACT_FOR_S of traffic once grown, at most GROWTH times the current contract while
# growing; it stays usable by later traffic to that destination until it expires.
CONTRACT_FOR_S = 1
GROWTH = 2
USAGE_SETTLE_S = 2       # after a final USAGE, packets still in flight arrive within this


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


class ClientEngine:
    def __init__(self, policy: ClientPolicy):
        self.policy = policy
        self._frac = parse_fraction(policy.counter_fraction, "counter_fraction")
        self._tol = parse_fraction(policy.usage_tolerance, "usage_tolerance")
        # longest prefix first: the first match is the longest (_max_price)
        self._max = sorted(((*pk.parse_prefix(p), price) for p, price in policy.prefix_max_prices),
                           key=lambda t: -t[1])
        self.meter = ClientMeter()
        self._flows: dict[str, Flow] = {}
        self._contracts: dict[str, Contract] = {}
        self._history: list[Contract] = []
        self.paused = False
        self._own_at_usage: dict[str, int] = {}
        self._final_checks: dict[str, tuple[float, Contract]] = {}
        self._spend: list[tuple[float, int]] = []      # (time, msat) within the last day
        self.spent_total = 0
        self.unmetered_bytes = 0
        self.budget_reason = ""
        # payments: set by the daemon.  funds_msat: what the wallet can spend (None: not known
        # yet, so proposals are not refused for it); credit_msat: our prepaid credit at the
        # gateway as it last said (PAID), less the contracts accepted from it since;
        # prepay_msat: pay at least this much per payment, the surplus staying as credit.
        self.funds_msat: int | None = None
        self.credit_msat = 0
        self.prepay_msat = 0
        self.no_funds_reason = ""
        self._no_funds_at = 0
        # set by the daemon when the gateway's handshake listed wire.FEATURE_SIZED
        self.sized_requests = False
        self._out: list[m.Message] = []
        self._events: list[Event] = []
        self.durable_seq = 0        # bumped by every change in DURABLE (see daemon.market.Saver)
        self._unsaved = False       # such a change not yet taken by snapshot()

    # --- hot path --------------------------------------------------------------------------

    def outbound(self, dst: bytes, length: int, now: float) -> int:
        f = self.meter.find(dst)
        if f is not None:
            c = f.current
            if c is not None and c.used < c.stop_bytes and now < c.stop_at:
                c.used += length
                c.up += length
                if c.used >= c.renew_at and not c.renew_asked:
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
        the data path meters it packet by packet, so the client switches contracts on the same
        packet as the gateway and their per-contract counts agree."""
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
                if c.used >= c.renew_at and not c.renew_asked:
                    self._renew_point(f, c, now)
                return METERED
            if self._usable(f, now):
                return self.inbound(src, length, now)
        self.unmetered_bytes += length
        return UNMETERED

    # --- contracts ---------------------------------------------------------------------------

    def _usable(self, f: Flow, now: float) -> bool:
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
                    return True
                f.current = None
            if not f.queue:
                return False
            self._activate(f, f.queue.popleft(), now)

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
            c.renew_at = c.renew_final = NEVER  # data_renewal_kb = 0: never renew on data

    def _renew_point(self, f: Flow, c: Contract, now: float) -> None:
        """c.used reached c.renew_at: the renewal point, or a quarter or half of the contract.
        At half, the rate over the last quarter says whether the rest lasts RENEW_LEAD_S;
        if not, renew now (a fixed margin is milliseconds once a flow runs at Gbit/s)."""
        if c.renew_at < c.renew_final:
            quarter = c.limit_bytes // 4
            if c.quarter_at is None:
                c.quarter_at = now
                c.renew_at = min(2 * quarter, c.renew_final)
                if c.used < c.renew_at:
                    return
            if (c.limit_bytes - c.used) * (now - c.quarter_at) >= (c.used - quarter) * RENEW_LEAD_S:
                c.renew_at = c.renew_final
                if c.used < c.renew_at:
                    return
        self._renew(f, c, now)

    def _activate(self, f: Flow, c: Contract, now: float) -> None:
        f.current = c
        c.activated_at, c.expires_at = now, now + c.time_s
        c.apply(Ev.ACTIVATE)
        self._arm(c, f)
        self._emit(EV_ACTIVATED, c)
        if c.renew_at == 0 or (self.policy.time_renewal_s and c.time_s <= self.policy.time_renewal_s) \
                or (f.fast and c.renew_at != NEVER):
            self._renew(f, c, now)

    def _end(self, f: Flow, c: Contract, ev: Ev, reason: str, now: float) -> None:
        # A contract used up within FAST_S: at this rate the renewal margin is shorter than a
        # negotiation, so the next contract is asked for as soon as the one after it starts.
        # (Sized contracts last CONTRACT_FOR_S and renew at half with the rate measured:
        # no need to buy further ahead, which would only leave more unused at the end.)
        f.fast = (not self.sized_requests and ev is Ev.EXHAUST and c.activated_at is not None
                  and now - c.activated_at < FAST_S)
        if ev is Ev.EXHAUST and c.activated_at is not None:
            f.rate = int(c.used / (now - c.activated_at)) if now > c.activated_at else 0
        c.apply(ev)
        c.disarm()
        c.reason = reason
        if f.current is c:
            f.current = None
        elif c in f.queue:
            f.queue.remove(c)
        self._retire(c, now)
        kind = {Ev.EXHAUST: EV_EXHAUSTED, Ev.EXPIRE: EV_EXPIRED, Ev.REVOKE: EV_REVOKED}[ev]
        self._emit(kind, c, reason=reason, data={"up": c.up, "down": c.down,
                                                  "gateway_up": c.gw_up, "gateway_down": c.gw_down})

    def _retire(self, c: Contract, now: float) -> None:
        c.ended_at = now
        self._contracts.pop(c.contract_id, None)
        self._history.append(c)
        if len(self._history) > 1024:
            del self._history[:256]

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
        want = self._want_kb(f, c, now) if self.sized_requests else None
        self._out.append(m.Request(f.destination, want))
        self._emit(EV_RENEWAL_REQUESTED, c, data={"limit_kb": want} if want else None)

    def _want_kb(self, f: Flow, c: Contract, now: float) -> int | None:
        """The size to ask the gateway for: CONTRACT_FOR_S of traffic at the flow's rate,
        so a fast flow needs a negotiation and a payment about once a second rather than
        dozens of times. Growing at most GROWTH times per contract (a burst does not buy a
        large contract at once) and within the budgets and the wallet at this contract's
        price. None: nothing to go by (the gateway's default)."""
        rate = f.rate
        if c.activated_at is not None and now > c.activated_at:
            rate = max(rate, c.used / (now - c.activated_at))
        if c.quarter_at is not None and now > c.quarter_at:       # the recent rate
            rate = max(rate, (c.used - c.limit_bytes // 4) / (now - c.quarter_at))
        want = min(int(rate * CONTRACT_FOR_S) // BYTES_PER_KB, GROWTH * c.limit_kb)
        room = self._budget_room(now)
        if room is not None and c.price:
            want = min(want, room * PRICE_SCALE // c.price)     # so that cost_msat(price, want) <= room
        return want if want > 0 else None

    def _budget_room(self, now: float) -> int | None:
        """msat the budgets and the wallet (with our credit) still allow (None: no limit known)."""
        p, s = self.policy, self.spend(now)
        rooms = [limit - used for limit, used in ((p.max_spend_per_hour, s["hour"]),
                                                  (p.max_spend_per_day, s["day"]),
                                                  (p.max_spend_total, s["total"])) if limit is not None]
        if self.funds_msat is not None:
            rooms.append(self.funds_msat + self.credit_msat)
        return max(0, min(rooms)) if rooms else None

    def _flow(self, destination: str) -> Flow:
        f = self._flows.get(destination)
        if f is None:
            key, plen = pk.parse_prefix(destination)
            f = self._flows[destination] = Flow(b"", key, plen, destination)
            self.meter.table(len(key), plen)[key] = f
        return f

    def _max_price(self, key: bytes) -> int:
        for pkey, plen, price in self._max:
            if len(key) == len(pkey) and pk.mask(key, plen) == pkey:
                return price
        return self.policy.max_price

    def set_policy(self, **changes) -> None:
        """Live settings (the control socket's `set`): max_price, budgets; None lifts a budget."""
        self.policy = replace(self.policy, **changes)

    # --- budgets -----------------------------------------------------------------------------

    def spend(self, now: float) -> dict:
        """msat committed (accepted contracts) in the last hour, day, and in total."""
        hour = sum(a for t, a in self._spend if t > now - HOUR)
        day = sum(a for t, a in self._spend if t > now - DAY)
        return {"hour": hour, "day": day, "total": self.spent_total}

    def _budget_problem(self, cost: int, now: float) -> str:
        p = self.policy
        s = self.spend(now)
        for name, limit, used in (("hourly", p.max_spend_per_hour, s["hour"]),
                                  ("daily", p.max_spend_per_day, s["day"]),
                                  ("total", p.max_spend_total, s["total"])):
            if limit is not None and used + cost > limit:
                return (f"{name} budget: contract costs {format_msat(cost)}, {format_msat(used)} of "
                        f"{format_msat(limit)} already spent")
        return ""

    # --- control messages --------------------------------------------------------------------

    def on_message(self, msg: m.Message, now: float) -> None:
        if isinstance(msg, m.Propose):
            return self._on_propose(msg, now)
        if isinstance(msg, m.Quote):
            key, _ = pk.parse_prefix(msg.destination)
            maxp = self._max_price(key)
            self._emit(EV_QUOTE, None, destination=msg.destination, reason=msg.reason or "",
                       amount_msat=cost_msat(msg.price, msg.limit_kb),
                       data={"price": msg.price, "limit_kb": msg.limit_kb, "time_s": msg.time_s,
                             "methods": list(msg.methods), "grace_s": msg.grace_s, "grace_kb": msg.grace_kb,
                             "max_price": maxp, "acceptable": msg.price <= maxp})
            return
        if isinstance(msg, m.NoDeal):
            f = self._flow(msg.destination)
            f.nodeal_until = now + msg.retry_after_s
            f.nodeal_reason = f.reason = msg.reason
            f.requested_at = None
            if f.proposal is not None and f.proposal.contract_id == msg.contract_id:
                f.proposal = None
            self._emit(EV_NO_DEAL, msg.contract_id, destination=msg.destination, reason=msg.reason,
                       data={"retry_after_s": msg.retry_after_s})
            return
        if isinstance(msg, m.Usage):
            for cid, up, down, final in msg.items:
                c = self._find(cid)
                if c is None:
                    self._violation(msg, f"unknown contract id {cid}"[:m.MAX_TEXT])
                    continue
                self._on_usage(self._flows[c.destination], c, up, down, final, now)
            return
        c = self._contracts.get(getattr(msg, "contract_id", None))
        if c is None:
            c = next((h for h in reversed(self._history)
                      if h.contract_id == getattr(msg, "contract_id", None)), None)
            if c is None:
                return self._violation(msg, "unknown contract id")
        f = self._flows[c.destination]
        if isinstance(msg, m.Paid):
            if c.state is State.PROPOSED or c.state is State.REJECTED or c.state is State.NO_DEAL:
                return self._violation(msg, f"contract is {c.state.value}")
            if msg.credit_msat is not None:
                # the gateway's word (if it had not yet seen an ACCEPT from credit of ours, the
                # next PAID corrects it; a credit that falls short is answered PAYMENT_FAILED)
                self.credit_msat = msg.credit_msat
            if not c.paid:
                c.apply(Ev.PAID)
                c.paid = True
                self._emit(EV_PAID, c, amount_msat=c.cost_msat,
                           data={"credit_msat": msg.credit_msat, "from_credit": c.credit})
            return
        if isinstance(msg, m.PaymentFailed):
            if c.state in (State.ACCEPTED, State.GRACE) or c.state in (State.EXPIRED, State.EXHAUSTED,
                                                                       State.REVOKED):
                c.apply(Ev.PAYMENT_FAILED)
                self._emit(EV_PAYMENT_FAILED, c, reason=msg.reason, amount_msat=c.cost_msat)
                if c.credit and not c.paid:
                    # the credit did not cover it after all: pay it the ordinary way, in grace
                    c.credit = False
                    self.credit_msat = 0
                    self._payment_due(c)
            return
        if isinstance(msg, m.Revoke):
            if c.state in (State.ACCEPTED, State.GRACE, State.PAID):
                self._end(f, c, Ev.REVOKE, msg.reason, now)
            return
        return self._violation(msg, "not a message a gateway sends")

    def _on_propose(self, msg: m.Propose, now: float) -> None:
        if msg.contract_id in self._contracts or msg.limit_kb == 0 or msg.time_s == 0:
            return self._violation(msg, "duplicate id or empty contract")
        f = self._flow(msg.destination)
        c = Contract(msg.contract_id, b"", f.key, f.plen, msg.destination, msg.price, msg.limit_kb,
                     msg.time_s, msg.methods, msg.account, msg.round, msg.grace_s, msg.grace_kb, now)
        f.requested_at = None
        if f.proposal is not None and f.proposal.state is State.PROPOSED:
            f.proposal.apply(Ev.WITHDRAW)
            self._retire(f.proposal, now)
        f.proposal = None
        if self.paused:
            # the user paused buying: no answer, so no no-deal back-off outlives the pause
            c.apply(Ev.REJECT)
            c.reason = f.reason = "buying paused"
            self._retire(c, now)
            self._emit(EV_DECLINED, c, reason="buying paused")
            return
        maxp = self._max_price(f.key)
        if msg.price > maxp:
            counter = min((msg.price * self._frac[0]) // self._frac[1], maxp)
            reason = f"price {format_price(msg.price)} is above my maximum {format_price(maxp)}"
            c.apply(Ev.REJECT)
            c.reason = f.reason = reason
            self._retire(c, now)
            self._out.append(m.Reject(c.contract_id, reason, price=counter))
            self._emit(EV_REJECTED, c, reason=reason, data={"counter_price": counter})
            return
        cost = cost_msat(msg.price, msg.limit_kb)
        problem = self._budget_problem(cost, now)
        if problem:
            c.apply(Ev.REJECT)
            c.reason = f.reason = self.budget_reason = problem
            self._retire(c, now)
            self._out.append(m.Reject(c.contract_id, problem[:m.MAX_TEXT]))
            self._emit(EV_BUDGET_EXCEEDED, c, reason=problem, amount_msat=cost)
            return
        self.budget_reason = ""
        from_credit = self.credit_msat >= cost > 0
        if not from_credit and self.no_funds_reason and (self.funds_msat is None or self.funds_msat < cost):
            # a payment failed for lack of funds: no answer (as when paused), so the gateway
            # withdraws the offer and proposes again on a later packet; buying resumes as soon
            # as the wallet holds more (set_funds)
            c.apply(Ev.REJECT)
            c.reason = f.reason = self.no_funds_reason
            self._retire(c, now)
            self._emit(EV_DECLINED, c, reason=self.no_funds_reason, amount_msat=cost)
            return
        self._spend.append((now, cost))
        self.spent_total += cost
        self._contracts[c.contract_id] = c
        c.accepted_at = now
        f.reason = ""
        f.nodeal_until, f.nodeal_reason = 0.0, ""
        if f.current is not None and f.current.state in FORWARDING and self._usable(f, now):
            c.apply(Ev.ACCEPT_WAIT)
            f.queue.append(c)
        elif f.queue:
            c.apply(Ev.ACCEPT_WAIT)
            f.queue.append(c)
        else:
            c.apply(Ev.ACCEPT_ACTIVE)
            f.current = c
            c.activated_at, c.expires_at = now, now + c.time_s
            self._arm(c, f)
        c.credit = from_credit
        self._out.append(m.Accept(c.contract_id, True if from_credit else None))
        self._emit(EV_ACCEPTED, c, amount_msat=cost, data={"queued": f.current is not c,
                                                             "from_credit": from_credit})
        if f.fast and f.current is not None and f.current is not c and len(f.queue) < 2:
            self._renew(f, f.current, now)
        if from_credit:
            self.credit_msat -= cost          # the gateway takes it at ACCEPT and says so in PAID
        else:
            self._payment_due(c)

    def _payment_due(self, c: Contract) -> None:
        cost = c.cost_msat
        amount = max(cost, self.prepay_msat)
        if self.funds_msat is not None:
            if amount > self.funds_msat:
                amount = cost                 # cannot prepay now: pay this contract only
            self.funds_msat = max(0, self.funds_msat - amount)
        self._emit(EV_PAYMENT_DUE, c, amount_msat=cost,
                   data={"methods": list(c.methods), "account": c.account, "pay_msat": amount})

    def payment_impossible(self, contract_id: str, reason: str, funds_msat: int | None) -> None:
        """The wallet could not pay (insufficient funds): stop buying, say so once."""
        self.funds_msat = funds_msat
        self._no_funds_at = funds_msat or 0
        if not self.no_funds_reason:
            self._emit(EV_NO_FUNDS, contract_id, reason=f"stopped buying: {reason}",
                       data={"funds_msat": funds_msat, "credit_msat": self.credit_msat})
        self.no_funds_reason = f"wallet: insufficient funds ({format_msat(funds_msat or 0)}): fund it; " \
                               "buying resumes when it holds more"

    def set_funds(self, funds_msat: int | None, now: float) -> None:
        """The wallet's spendable balance (the daemon checks it every few seconds)."""
        self.funds_msat = funds_msat
        if self.no_funds_reason and funds_msat is not None and funds_msat > self._no_funds_at:
            # buying resumes; a contract still too dear is declined again (with a new event)
            self._emit(EV_FUNDS_OK, None, reason=f"wallet holds {format_msat(funds_msat)}: buying resumes",
                       data={"funds_msat": funds_msat})
            self.no_funds_reason = ""
            for f in self._flows.values():
                if f.reason.startswith("wallet:"):
                    f.reason = ""

    def _find(self, contract_id: str) -> Contract | None:
        c = self._contracts.get(contract_id)
        if c is None:
            c = next((h for h in reversed(self._history) if h.contract_id == contract_id), None)
        return c

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
            self._emit(EV_USAGE_MISMATCH, c, reason=f"gateway metered {theirs} bytes, I metered {own}",
                       data={"own": own, "gateway": theirs, "own_up": c.up, "own_down": c.down,
                             "gateway_up": c.gw_up, "gateway_down": c.gw_down})
        c.mismatch = bad

    def _violation(self, msg: m.Message, why: str) -> None:
        self._emit(EV_PROTOCOL, getattr(msg, "contract_id", None), reason=f"{msg.TYPE}: {why}")

    # --- payments ----------------------------------------------------------------------------

    def paid(self, contract_id: str, method: str, proof: str, amount_msat: int | None = None) -> None:
        """The payment backend produced a proof: send PAY."""
        c = self._contracts.get(contract_id)
        if c is None:
            # a contract may run out (a tiny one at full speed) before its payment is ready:
            # it was accepted and used, so it is paid all the same
            c = next((h for h in reversed(self._history)
                      if h.contract_id == contract_id and h.accepted_at is not None), None)
        if c is None:
            raise KeyError(f"no accepted contract {contract_id!r}")
        self._out.append(m.Pay(contract_id, c.cost_msat if amount_msat is None else amount_msat,
                               method, proof))

    def unpaid(self) -> list[str]:
        """Accepted contracts (live or ended) not confirmed paid, to be paid from a proof."""
        cs = list(self._contracts.values()) + self._history[-64:]
        return [c.contract_id for c in cs if c.accepted_at is not None and not c.paid and not c.credit
                and c.state is not State.REVOKED]

    def request_quote(self, destination: str) -> None:
        """Ask the gateway's terms for a destination without buying (answered by an EV_QUOTE)."""
        self._out.append(m.QuoteRequest(destination))

    def request_usage(self, contract_id: str) -> None:
        self._out.append(m.UsageRequest(contract_id))

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
        p = self.policy
        for f in self._flows.values():
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
        for cid, (due, c) in list(self._final_checks.items()):
            if due <= now:
                del self._final_checks[cid]
                self._own_at_usage.pop(cid, None)
                self._compare_usage(c)
        cut = now - DAY
        if self._spend and self._spend[0][0] <= cut:
            self._spend = [(t, a) for t, a in self._spend if t > cut]

    # --- outputs / status --------------------------------------------------------------------

    def _emit(self, kind: str, c: Contract | str | None = None, destination: str | None = None,
              reason: str = "", amount_msat: int = 0, data=None) -> None:
        if kind in DURABLE:
            self.durable_seq += 1
            self._unsaved = True
        if isinstance(c, Contract):
            self._events.append(Event(kind, c.contract_id, None, c.destination, reason, amount_msat,
                                      data or {}))
        else:
            self._events.append(Event(kind, c, None, destination, reason, amount_msat, data or {}))

    @property
    def has_output(self) -> bool:
        """Messages wait to be sent (the data path wakes the control thread for a renewal),
        or a contract ended on the data path and is to be saved."""
        return bool(self._out) or self._unsaved

    def take_outgoing(self) -> list[m.Message]:
        out, self._out = self._out, []
        return out

    def take_events(self) -> list[Event]:
        out, self._events = self._events, []
        return out

    def contract_list(self, history: bool = False) -> list[Contract]:
        """The contracts, copied: taken under the engine lock, viewed outside it
        (as GatewayEngine.contract_list)."""
        return list(self._contracts.values()) + (self._history if history else [])

    def contracts(self, now: float = 0.0, history: bool = False) -> list[dict]:
        return [c.view(now) for c in self.contract_list(history)]

    def status_snapshot(self, now: float) -> tuple[dict, list[Contract]]:
        """What status() reads: the figures per destination (a few ints each)
        and the contracts, copied, not yet viewed (as GatewayEngine's)."""
        return ({"spend": self.spend(now), "budget_reason": self.budget_reason,
                 "credit_msat": self.credit_msat, "no_funds_reason": self.no_funds_reason,
                 "prepay_msat": self.prepay_msat,
                 "unmetered_bytes": self.unmetered_bytes,
                 "destinations": {d: {"contract": f.current.contract_id if f.current else None,
                                      "queued": [c.contract_id for c in f.queue],
                                      "no_deal_reason": f.nodeal_reason if f.nodeal_until > now else "",
                                      "retry_in_s": max(0, int(f.nodeal_until - now)),
                                      "reason": f.reason}
                                  for d, f in self._flows.items()}},
                self.contract_list())

    def status(self, now: float, snapshot: tuple[dict, list[Contract]] | None = None) -> dict:
        """status_snapshot() (taken under the engine lock, or now) with the
        contracts' views, built outside that lock."""
        st, contracts = snapshot if snapshot is not None else self.status_snapshot(now)
        return {**st, "contracts": [c.view(now) for c in contracts]}

    # --- persistence -------------------------------------------------------------------------

    def snapshot(self) -> dict:
        """The live contracts, and the ended ones still owing their payment (a restart pays
        them with the stored proof), with the flows and the spending."""
        self._unsaved = False
        owing = [c for c in self._history[-64:] if c.accepted_at is not None and not c.paid
                 and not c.credit and c.state is not State.REVOKED]
        return {"version": 1, "spent_total": self.spent_total, "spend": [list(x) for x in self._spend],
                "credit_msat": self.credit_msat,
                "contracts": [c.to_dict() for c in self._contracts.values()],
                "owing": [c.to_dict() for c in owing],
                "flows": [{"destination": d, "current": f.current.contract_id if f.current else None,
                           "queue": [c.contract_id for c in f.queue], "nodeal_until": f.nodeal_until,
                           "nodeal_reason": f.nodeal_reason} for d, f in self._flows.items()]}

    def restore(self, snap: dict, now: float) -> None:
        self.spent_total = snap["spent_total"]
        self.credit_msat = snap.get("credit_msat", 0)
        self._spend = [(t, a) for t, a in snap["spend"]]
        byid = {}
        for d in snap["contracts"]:
            c = Contract.from_dict(d)
            c.peer = b""
            byid[c.contract_id] = self._contracts[c.contract_id] = c
        for d in snap.get("owing", ()):
            c = Contract.from_dict(d)
            c.peer = b""
            self._history.append(c)
        for d in snap["flows"]:
            f = self._flow(d["destination"])
            f.current = byid.get(d["current"]) if d["current"] else None
            f.queue.extend(byid[i] for i in d["queue"] if i in byid)
            f.nodeal_until, f.nodeal_reason = d["nodeal_until"], d["nodeal_reason"]
            if f.current is not None and f.current.state in FORWARDING:
                self._arm(f.current, f)
        # a contract accepted but not yet paid when we stopped: pay it again (the daemon re-sends
        # the proof it stored before sending, so this never pays twice)
        for c in [*byid.values(), *self._history]:
            if not c.paid and c.state is not State.REVOKED and c.accepted_at is not None and not c.credit:
                self._emit(EV_PAYMENT_DUE, c, amount_msat=c.cost_msat,
                           data={"methods": list(c.methods), "account": c.account,
                                 "pay_msat": c.cost_msat})
