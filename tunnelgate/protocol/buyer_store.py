"""What the buyer shows (its contracts, per destination its standing) and saves (one
snapshot, written through on every money change).  A mixin of ``Buyer`` (protocol/buyer.py).

Snapshot version 2 names each contract's and flow's seller (``peer``) and keeps the credit
per seller; version 1 (one seller, before books) is read as the book of
``legacy_counterpart``."""

from __future__ import annotations

from tunnelgate.protocol import events as E
from tunnelgate.protocol.contract import Contract, State


class BuyerStore:
    def contract_list(self, history: bool = False) -> list[Contract]:
        """The contracts, copied: taken under the engine lock, viewed outside it
        (as Seller.contract_list)."""
        cs = [c for b in self.books.values() for c in b.live.values()]
        return cs + list(self.tombstones.contracts()) if history else cs

    def contracts(self, now: float = 0.0, history: bool = False) -> list[dict]:
        return [c.view(now) for c in self.contract_list(history)]

    def status_snapshot(self, now: float) -> tuple[dict, list[Contract]]:
        """What status() reads: the figures per destination (a few ints each)
        and the contracts, copied, not yet viewed (as Seller's)."""
        return ({"spend": self.spend(now), "budget_reason": self.budget_reason,
                 "credit_msat": self.credit_msat, "no_funds_reason": self.no_funds_reason,
                 "prepay_msat": self.prepay_msat,
                 "unmetered_bytes": self.unmetered_bytes,
                 # proposals refused because their cost chain did not add up (chain.py)
                 "chain_rejected": sum(b.chain_rejected for b in self.books.values()),
                 "destinations": {d: {"contract": f.current.contract_id if f.current else None,
                                      "queued": [c.contract_id for c in f.queue],
                                      "no_deal_reason": f.nodeal_reason if f.nodeal_until > now else "",
                                      "retry_in_s": max(0, int(f.nodeal_until - now)),
                                      "reason": f.reason}
                                  for b in self.books.values() for d, f in b.flows.items()}},
                self.contract_list())

    def status(self, now: float, snapshot: tuple[dict, list[Contract]] | None = None) -> dict:
        """status_snapshot() (taken under the engine lock, or now) with the
        contracts' views, built outside that lock."""
        st, contracts = snapshot if snapshot is not None else self.status_snapshot(now)
        return {**st, "contracts": [c.view(now) for c in contracts]}

    def snapshot(self) -> dict:
        """The live contracts, and the ended ones still owing their payment (a restart pays
        them with the stored proof), with the flows, the credit per seller and the spending."""
        self._unsaved = False
        return {"version": 2, "spent_total": self.spent_total, "spend": [list(x) for x in self._spend],
                "books": {k.hex(): {"credit_msat": b.credit_msat} for k, b in self.books.items()},
                "contracts": [c.to_dict() for c in self.contract_list()],
                "owing": [c.to_dict() for c in self._owing() if c.ended_at is not None],
                "flows": [rec for b in self.books.values() for f in b.flows.values()
                          if (rec := self._flow_record(f)) is not None]}

    def _restored(self, d: dict) -> Contract:
        c = self.CONTRACT.from_dict(d)
        if not c.peer:                        # version 1: the one seller of that time
            c.peer = self.legacy_counterpart
        return c

    def restore(self, snap: dict, now: float) -> None:
        self.spent_total = snap["spent_total"]
        self._spend = [(t, a) for t, a in snap["spend"]]
        if snap.get("version", 1) == 1:
            self._book(self.legacy_counterpart).credit_msat = snap.get("credit_msat", 0)
        for k, d in snap.get("books", {}).items():
            self._book(bytes.fromhex(k)).credit_msat = d["credit_msat"]
        byid = {}
        for d in snap["contracts"]:
            c = self._restored(d)
            self._book(c.peer).add(c)
            byid[(c.peer, c.contract_id)] = c
        owing = []
        for d in snap.get("owing", ()):
            c = self._restored(d)
            self.tombstones.add(self._book(c.peer), c)
            owing.append(c)
        for d in snap["flows"]:
            peer = bytes.fromhex(d["peer"]) if d.get("peer") else self.legacy_counterpart
            f = self._flow(peer, d["destination"])
            self._restore_flow(f, d, {cid: c for (p, cid), c in byid.items() if p == peer})
        # a contract accepted but not yet paid when we stopped: pay it again (the daemon re-sends
        # the proof it stored before sending, so this never pays twice)
        for c in [*byid.values(), *owing]:
            if not c.paid and c.state is not State.REVOKED and c.accepted_at is not None and not c.credit:
                self.books[c.peer].owe(c)
                self._emit(E.PaymentDue, c, amount_msat=c.cost_msat, methods=tuple(c.methods),
                           account=c.account, pay_msat=c.cost_msat)
