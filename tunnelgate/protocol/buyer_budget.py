"""The buyer's budgets: what it committed in the last hour, day and in total, what a new
contract may still cost, and how big a renewal to ask for.  A mixin of ``Buyer``
(protocol/buyer.py); budgets are the buyer's, over all its counterparts."""

from __future__ import annotations

from tunnelgate.meter import Flow
from tunnelgate.money import BYTES_PER_KB, PRICE_SCALE, format_msat
from tunnelgate.protocol.contract import Contract

HOUR, DAY = 3600, 86400
# A sized REQUEST asks for CONTRACT_FOR_S of traffic at the flow's rate, at most GROWTH times
# the contract it renews. What a transfer leaves unused when it stops is the rest of the
# current contract and the one queued behind it (bought at half of the current one): about
# CONTRACT_FOR_S of traffic once grown, at most GROWTH times the current contract while
# growing; it stays usable by later traffic to that destination until it expires.
CONTRACT_FOR_S = 1
GROWTH = 2


class Budgets:
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

    def _budget_room(self, counterpart: bytes, now: float) -> int | None:
        """msat the budgets and the wallet (with our credit at this counterpart) still allow
        (None: no limit known)."""
        p, s = self.policy, self.spend(now)
        rooms = [limit - used for limit, used in ((p.max_spend_per_hour, s["hour"]),
                                                  (p.max_spend_per_day, s["day"]),
                                                  (p.max_spend_total, s["total"])) if limit is not None]
        if self.funds_msat is not None:
            rooms.append(self.funds_msat + self.books[counterpart].credit_msat)
        return max(0, min(rooms)) if rooms else None

    def _want_kb(self, f: Flow, c: Contract, now: float) -> int | None:
        """The size to ask the seller for: CONTRACT_FOR_S of traffic at the flow's rate,
        so a fast flow needs a negotiation and a payment about once a second rather than
        dozens of times. Growing at most GROWTH times per contract (a burst does not buy a
        large contract at once) and within the budgets and the wallet at this contract's
        price. None: nothing to go by (the seller's default)."""
        rate = f.rate
        if c.activated_at is not None and now > c.activated_at:
            rate = max(rate, c.used / (now - c.activated_at))
        if c.quarter_at is not None and now > c.quarter_at:       # the recent rate
            rate = max(rate, (c.used - c.limit_bytes // 4) / (now - c.quarter_at))
        # grown from what was asked last, not from what was sold: a seller that had less in
        # stock (a relay whose upstream quota lags) must not set the growth back each time
        want = min(int(rate * CONTRACT_FOR_S) // BYTES_PER_KB, GROWTH * max(c.limit_kb, f.asked_kb))
        room = self._budget_room(c.peer, now)
        if room is not None and c.price:
            want = min(want, room * PRICE_SCALE // c.price)     # so that cost_msat(price, want) <= room
        return want if want > 0 else None

    def _forget_spend(self, now: float) -> None:
        cut = now - DAY
        if self._spend and self._spend[0][0] <= cut:
            self._spend = [(t, a) for t, a in self._spend if t > cut]
