"""The seller's timers: proposal timeouts, grace ends (revoke, or a payment still due),
expiries, USAGE reports (one per peer per usage interval), no-deal back-off ends, the
suppressed-proposals report.  Each is filed in its counterpart's book (protocol/book.py),
so ``poll`` costs what is due.  A mixin of ``Seller`` (protocol/seller.py)."""

from __future__ import annotations

from tunnelgate.meter import Flow
from tunnelgate.protocol import events as E
from tunnelgate.protocol import messages as m
from tunnelgate.protocol.contract import FORWARDING, Contract, Ev, State

T_PROPOSAL, T_GRACE, T_EXPIRE, T_USAGE, T_NODEAL, T_SUPPRESSED = range(6)
PRUNE_FLOWS = 4096   # a peer with this many flows has its idle ones dropped


class SellerTimers:
    def _sched(self, f: Flow, c: Contract, now: float) -> None:
        """Timers of a contract that became (or stays) current: its expiry, and the peer's
        USAGE reports while it forwards."""
        if f.current is not c:
            return
        b = self.books[c.peer]
        if c.expires_at is not None:
            self._at(b, c.expires_at, T_EXPIRE, c)
        if c.state in FORWARDING:
            mt = self._metered.get(c.peer)
            if mt is None:
                mt = self._metered[c.peer] = {}
            mt[c.contract_id] = c
            if c.peer not in self._usage_due:
                self._usage_due.add(c.peer)
                self._at(b, now, T_USAGE, c.peer)

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

    def _stale(self, b, when: float, kind: int, obj) -> bool:
        """A timer its poll would skip, whatever happens next (a contract that comes back
        to life, e.g. paid after waiting, files new timers)."""
        if kind == T_EXPIRE:
            return when != obj.expires_at or obj.state not in FORWARDING
        if kind == T_GRACE:
            # a paid contract's grace end only settles (a no-op unless it is still unpaid)
            return b.unpaid.get(obj.contract_id) is not obj if obj.paid else when != obj.grace_until
        if kind == T_PROPOSAL:
            return obj.state is not State.PROPOSED or b.live.get(obj.contract_id) is not obj
        if kind == T_NODEAL:
            return obj not in self._nodeal or when != obj.nodeal_until
        return False

    def poll(self, now: float) -> None:
        """Runs what is due (timers set while this runs wait for the next poll)."""
        for b, when, kind, obj in self._due(now):
            if kind == T_USAGE:
                self._usage_tick(obj, now)
            elif self._stale(b, when, kind, obj):
                continue
            elif kind == T_EXPIRE:
                c = obj
                f = b.flows.get(c.key)
                if f is None or f.current is not c:
                    continue
                self._usable(f, now)                # ends on expiry, starts the next
                if f.current is not c and f.current is not None:
                    self._release(f, now)
            elif kind == T_GRACE:
                self._grace_end(b, obj, when, now)
            elif kind == T_PROPOSAL:
                c = obj
                f = b.flows[c.key]
                self._close(c, Ev.WITHDRAW, "no answer to the proposal", now)
                if f.proposal is c:
                    self._set_proposal(f, None)
                self._emit(E.Withdrawn, c, reason=c.reason)
                self._drop_held(f, "no answer to the proposal")
            elif kind == T_NODEAL:
                f = obj
                self._nodeal.discard(f)
                f.nodeal_until = 0.0
                self._emit(E.NoDealExpired, None, f=f, reason=f.nodeal_reason)
            elif kind == T_SUPPRESSED:
                self._report_suppressed(b, now)
        if self._prune_due:
            self._prune()

    def _grace_end(self, b, c: Contract, when: float, now: float) -> None:
        if c.paid:
            b.settle(c)
            return
        if when != c.grace_until:
            return
        cid = c.contract_id
        if b.live.get(cid) is c:
            if c.state is State.PROPOSED:
                return
            b.settle(c)
            b.no_grace = True
            self._revoke(b.flows[c.key], c, "payment not confirmed within the grace period", now)
        elif b.unpaid.get(cid) is c:
            b.settle(c)
            b.no_grace = True
            reason = "payment not confirmed within the grace period (the contract had ended)"
            self._out.append((c.peer, m.PaymentFailed(cid, reason)))
            self._emit(E.PaymentFailed, c, reason=reason)

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
                self._at(self.books[peer], now + self.pricing.usage_interval_s, T_USAGE, peer)
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
